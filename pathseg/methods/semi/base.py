"""The semi-supervised step every method in :mod:`pathseg.methods.semi` shares.

A :class:`SemiMethod` computes

    L = L_sup + weight_cont · L_cont + weight_cross · L_cross + weight_ent · L_ent

where each unsupervised term is provided by a mixin (:class:`~pathseg.methods.semi.cac.CAC` adds the
context-aware contrastive term, :class:`~pathseg.methods.semi.cct.CCT` the cross-consistency term,
:class:`~pathseg.methods.semi.crcfp.CRCFP` both plus entropy). A term whose weight is 0 is neither
built nor computed, so the ablation schemes are pure configuration.

Control (``control=True``): the confound control of the evidence protocol (docs/evidence.md). Every
configured term is built, computed and logged exactly as in the method, so the step runs the method's
forward passes (the unlabelled views pass through the model in training mode and move its batch-norm
statistics, the auxiliary heads run), but no term enters the loss: the gradient is L_sup's alone. A table
row "CRCFP, control" then separates what the extra views do from what the new losses do.

Warm-up: for the first ``warmup_steps`` optimiser steps only L_sup is computed (the unlabelled batch
is not even encoded). The papers count the warm-up in epochs (CRCFP: 5); pathseg's loop counts an
"epoch" as ``trainer.val_every`` steps, so ``warmup_steps = 5 * trainer.val_every`` reproduces it.

Views and batch norm: the labelled batch, the unlabelled batch (for L_cross / L_ent) and the two crops
of the unlabelled batch (for L_cont) are the *views* of a step. By default each view goes through
encoder and decoder in its own forward pass, so batch-norm statistics are those of one view's batch,
as in both reference implementations (CAC, CRCFP), and the batch-norm batch does not grow with the
method (SupOnly, CCT, CAC and CRCFP all normalise over one view's B images). ``joint_forward=True``
instead runs the views of one size as one batch (shared statistics over up to four views; fewer, larger
convolutions), which the papers do not do.

Unlabelled views are augmented per view inside the step (:mod:`pathseg.methods.semi.views`,
``view_transforms``): the full unlabelled image and each crop get their own photometric draw, as in the
authors' loaders; keep ``data.unlabeled_transforms`` geometric (``configs/semi/monuseg_base.yaml``).

Feature grid: L_cont and L_cross act on the model's *semantic feature* s
(:meth:`pathseg.models.SegModel.decode_with_semantic`: the 256-channel DeepLab decoder output, a
64-channel U-Net decoder stage at stride 4), average-pooled to stride ``grid_stride`` (8, the output
stride of the paper's DeepLabV3) when it is finer; a feature at that stride or coarser is read as is.
The main prediction on that grid (confidence and pseudo-labels for L_cont, the target of L_cross) is
the pixel classifier's logits average-pooled to the same grid; for DeepLab, where s is the map C_f reads
and C_f is a 1x1 convolution, that is C_f(pool(s)). L_sup and L_ent use the full-resolution output.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

from pathseg.losses.consistency import entropy_loss
from pathseg.methods.base import Method
from pathseg.methods.semi.views import DEFAULT_VIEW_TRANSFORMS, ViewAugment


class SemiMethod(Method):
    """Base of the semi-supervised methods: supervised step, warm-up, and the weighted unsupervised terms.

    Shared parameters (``method.params``): ``warmup_steps`` (0), ``grid_stride`` (8), ``joint_forward``
    (False: one forward pass per view, as the papers), ``control`` (False: True computes every term but
    adds none to the loss, see the module docstring), ``view_transforms`` (the photometric per-view
    augmentation of the authors' loaders, :data:`~pathseg.methods.semi.views.DEFAULT_VIEW_TRANSFORMS`;
    ``[]`` for none).
    """

    needs_unlabeled = True
    sync_batchnorm = True  # each view's batch-norm statistics are taken over that view on every rank (SyncBN)
    weight_cont: float = 0.0
    weight_cross: float = 0.0
    weight_ent: float = 0.0

    def __init__(
        self,
        model,
        *,
        warmup_steps: int = 0,
        grid_stride: int = 8,
        joint_forward: bool = False,
        control: bool = False,
        view_transforms: Sequence[dict[str, Any]] = DEFAULT_VIEW_TRANSFORMS,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        from pathseg.errors import ConfigError

        if warmup_steps < 0:
            raise ConfigError(f"method.params.warmup_steps must be >= 0, got {warmup_steps}")
        if grid_stride < 1:
            raise ConfigError(f"method.params.grid_stride must be >= 1, got {grid_stride}")
        self.warmup_steps = int(warmup_steps)
        self.joint_forward = bool(joint_forward)
        self.control = bool(control)
        self.view_transforms = [dict(t) for t in view_transforms]
        self.augment = ViewAugment(self.view_transforms)  # the full unlabelled view: photometric only
        self.feature_stride, self.semantic_stride, self.semantic_channels = feature_strides(model)
        sem_pool = max(1, int(grid_stride) // self.semantic_stride)
        self.grid_stride = self.semantic_stride * sem_pool  # input pixels per cell of the unsupervised grid
        self.grid_pool = sem_pool  # semantic feature -> grid
        self.logit_pool = max(1, self.grid_stride // self.feature_stride)  # main logits -> grid
        self.cont = None  # ContextAwareConsistency, set by CAC when weight_cont > 0
        self.cross = None  # CrossConsistency, set by CCT when weight_cross > 0

    def to_grid(self, s: torch.Tensor) -> torch.Tensor:
        """The semantic feature on the unsupervised grid. Shape: (B, D, h, w) -> (B, D, h/p, w/p)."""
        return F.avg_pool2d(s, self.grid_pool) if self.grid_pool > 1 else s

    def logits_to_grid(self, logits: torch.Tensor) -> torch.Tensor:
        """The main prediction (logits at the decoder's stride) on the unsupervised grid. Shape: (B, K, ., .)."""
        return F.avg_pool2d(logits, self.logit_pool) if self.logit_pool > 1 else logits

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
        crops = None
        if terms:
            xu = batch["unlabeled"]["image"]
            if "cross" in terms or "ent" in terms:
                views["unlabeled"] = self.augment(xu)[0]
            if "cont" in terms:
                crops = self.cont.views(xu, tuple(xl.shape[-2:]), self.grid_stride)
                views["crop1"], views["crop2"] = crops.x1, crops.x2
        dec = self.decode_views(views)  # {view: (z, s)}

        logits_l = self.model.classify(dec["labeled"][0])
        if logits_l.shape[-2:] != yl.shape[-2:]:
            logits_l = F.interpolate(logits_l, size=yl.shape[-2:], mode="bilinear", align_corners=False)
        sup = self.supervised_loss(logits_l, yl)
        out: dict[str, torch.Tensor] = {"loss/sup": sup}
        total = sup
        zero = sup.detach() * 0.0
        logits_u = self.model.classify(dec["unlabeled"][0]) if "unlabeled" in dec else None  # main prediction
        for name in ("cont", "cross", "ent"):
            if getattr(self, f"weight_{name}") <= 0:
                continue
            if name not in terms:  # warm-up: log a stable set of keys
                out[f"loss/{name}"] = zero
                continue
            if name == "cont":
                (z1, s1), (z2, s2) = dec["crop1"], dec["crop2"]
                value, stats = self.cont(
                    self.to_grid(s1), self.to_grid(s2),
                    self.logits_to_grid(self.model.classify(z1)), self.logits_to_grid(self.model.classify(z2)),
                    crops,
                )
                out.update(stats)
            elif name == "cross":
                value = self.cross(self.to_grid(dec["unlabeled"][1]), self.logits_to_grid(logits_u))
            else:
                value = entropy_loss(logits_u)
            out[f"loss/{name}"] = value
            if not self.control:
                total = total + terms[name] * value
        out["loss"] = total
        return out

    def decode_views(self, views: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Decoder map z and semantic feature s of every view: one forward pass per view, or (with
        ``joint_forward``) one per group of views of the same size.

        Shape: ``{name: (B_i, 3, H_i, W_i)}`` -> ``{name: (z (B_i, D, h_i, w_i), s (B_i, D_s, h'_i, w'_i))}``.
        """
        if not self.joint_forward:
            return {n: self._decode(x) for n, x in views.items()}
        groups: dict[tuple[int, int], list[str]] = {}
        for name, x in views.items():
            groups.setdefault(tuple(x.shape[-2:]), []).append(name)
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for names in groups.values():
            z, s = self._decode(torch.cat([views[n] for n in names]))
            sizes = [views[n].shape[0] for n in names]
            for n, zp, sp in zip(names, z.split(sizes), s.split(sizes)):
                out[n] = (zp, sp)
        return out

    def _decode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.encode(self._fmt(x))
        if hasattr(self.model, "decode_with_semantic"):
            return self.model.decode_with_semantic(features)
        z = self.model.decode(features)  # a model without a semantic tap: s is the decoder map
        return z, z


def feature_strides(model) -> tuple[int, int, int]:
    """(stride of z, stride of s, channels of s): from the model's attributes, or measured once with a
    64 px probe (model mode restored) for a model that lacks them."""
    if all(hasattr(model, a) for a in ("feature_stride", "semantic_stride", "semantic_channels")):
        return int(model.feature_stride), int(model.semantic_stride), int(model.semantic_channels)
    was = model.training
    model.eval()
    with torch.no_grad():
        z = model.decode(model.encode(torch.zeros(1, 3, 64, 64)))
    model.train(was)
    stride = max(1, 64 // int(z.shape[-1]))
    return stride, stride, int(z.shape[1])
