"""The semi-supervised step every method in :mod:`pathseg.methods.semi` shares.

A :class:`SemiMethod` computes

    L = L_sup + weight_cont · L_cont + weight_cross · L_cross + weight_ent · L_ent

where each unsupervised term is provided by a mixin (:class:`~pathseg.methods.semi.cac.CAC` adds the
context-aware contrastive term, :class:`~pathseg.methods.semi.cct.CCT` the cross-consistency term,
:class:`~pathseg.methods.semi.crcfp.CRCFP` both plus entropy). A term whose weight is 0 is neither
built nor computed, so the ablation schemes are pure configuration.

Warm-up: for the first ``warmup_steps`` optimiser steps only L_sup is computed (the unlabelled batch
is not even encoded). The papers count the warm-up in epochs (CRCFP: 5); pathseg's loop counts an
"epoch" as ``trainer.val_every`` steps, so ``warmup_steps = 5 * trainer.val_every`` reproduces it.

Forward passes: the labelled batch, the unlabelled batch (for L_cross / L_ent) and the two crops of the
unlabelled batch (for L_cont) go through encoder and decoder together (one batch, shared batch-norm
statistics, as in CAC) when their sizes agree.

Feature grid: L_cont and L_cross read the decoder map average-pooled to stride ``grid_stride`` (8, the
output stride of the paper's DeepLabV3) when the decoder is finer (U-Net decodes at stride 1); a decoder
at that stride or coarser is read as is. This keeps anchors, perturbed copies and memory bounded; since
C_f is a 1x1 convolution, C_f(pool(z)) = pool(C_f(z)). L_sup and L_ent use the full-resolution output.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from pathseg.losses.consistency import entropy_loss
from pathseg.methods.base import Method


class SemiMethod(Method):
    """Base of the semi-supervised methods: supervised step, warm-up, and the weighted unsupervised terms."""

    needs_unlabeled = True
    sync_batchnorm = True  # labelled, unlabelled and crop views share batch-norm statistics (CAC), on every rank
    weight_cont: float = 0.0
    weight_cross: float = 0.0
    weight_ent: float = 0.0

    def __init__(self, model, *, warmup_steps: int = 0, grid_stride: int = 8, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        from pathseg.errors import ConfigError

        if warmup_steps < 0:
            raise ConfigError(f"method.params.warmup_steps must be >= 0, got {warmup_steps}")
        if grid_stride < 1:
            raise ConfigError(f"method.params.grid_stride must be >= 1, got {grid_stride}")
        self.warmup_steps = int(warmup_steps)
        self.feature_stride = decoder_stride(model)
        self.grid_pool = max(1, int(grid_stride) // self.feature_stride)
        self.grid_stride = self.feature_stride * self.grid_pool  # input pixels per cell of the unsupervised grid
        self.cont = None  # ContextAwareConsistency, set by CAC when weight_cont > 0
        self.cross = None  # CrossConsistency, set by CCT when weight_cross > 0

    def to_grid(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder map on the unsupervised feature grid. Shape: (B, D, h, w) -> (B, D, h/p, w/p)."""
        return F.avg_pool2d(z, self.grid_pool) if self.grid_pool > 1 else z

    # -- which terms run ------------------------------------------------------------------------------
    def active_terms(self) -> dict[str, float]:
        """``{term: weight}`` of the unsupervised terms that run at the current step."""
        if self.global_step < self.warmup_steps:
            return {}
        w = {"cont": self.weight_cont, "cross": self.weight_cross, "ent": self.weight_ent}
        return {k: float(v) for k, v in w.items() if v > 0}

    # -- the step -------------------------------------------------------------------------------------
    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        lab = batch["labeled"] if "labeled" in batch else batch
        xl, yl = lab["image"], lab["mask"]
        terms = self.active_terms() if "unlabeled" in batch else {}
        views = {"labeled": xl}
        pairs = None
        if terms:
            xu = batch["unlabeled"]["image"]
            if "cross" in terms or "ent" in terms:
                views["unlabeled"] = xu
            if "cont" in terms:
                x1, x2, pairs = self.cont.views(xu, tuple(xl.shape[-2:]), self.grid_stride)
                views["crop1"], views["crop2"] = x1, x2
        z = self.decode_views(views)

        logits_l = self.model.classify(z["labeled"])
        if logits_l.shape[-2:] != yl.shape[-2:]:
            logits_l = F.interpolate(logits_l, size=yl.shape[-2:], mode="bilinear", align_corners=False)
        sup = self.supervised_loss(logits_l, yl)
        out: dict[str, torch.Tensor] = {"loss/sup": sup}
        total = sup
        zero = sup.detach() * 0.0
        logits_u = self.model.classify(z["unlabeled"]) if "unlabeled" in z else None  # main prediction, (B, K, h, w)
        for name in ("cont", "cross", "ent"):
            if getattr(self, f"weight_{name}") <= 0:
                continue
            if name not in terms:  # warm-up: log a stable set of keys
                out[f"loss/{name}"] = zero
                continue
            if name == "cont":
                value, stats = self.cont(self.to_grid(z["crop1"]), self.to_grid(z["crop2"]), pairs, self.model.classify)
                out.update(stats)
            elif name == "cross":
                zu = self.to_grid(z["unlabeled"])
                value = self.cross(zu, self.model.classify(zu))
            else:
                value = entropy_loss(logits_u)
            out[f"loss/{name}"] = value
            total = total + terms[name] * value
        out["loss"] = total
        return out

    def decode_views(self, views: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Decoder feature maps z = g(h(x)) of every view, batched together where the sizes agree.

        Shape: ``{name: (B_i, 3, H_i, W_i)}`` -> ``{name: (B_i, D, h_i, w_i)}``.
        """
        groups: dict[tuple[int, int], list[str]] = {}
        for name, x in views.items():
            groups.setdefault(tuple(x.shape[-2:]), []).append(name)
        out: dict[str, torch.Tensor] = {}
        for names in groups.values():
            x = torch.cat([views[n] for n in names]) if len(names) > 1 else views[names[0]]
            z = self.model.decode(self.model.encode(self._fmt(x)))
            for n, part in zip(names, z.split([views[n].shape[0] for n in names])):
                out[n] = part
        return out


def decoder_stride(model) -> int:
    """Input pixels per decoder-feature cell, measured once with a 64 px probe (model mode restored)."""
    was = model.training
    model.eval()
    with torch.no_grad():
        z = model.decode(model.encode(torch.zeros(1, 3, 64, 64)))
    model.train(was)
    return max(1, 64 // int(z.shape[-1]))
