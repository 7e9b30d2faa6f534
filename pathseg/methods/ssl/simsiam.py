"""SimSiam (Chen & He, CVPR 2021) as a pretraining method, and the heads DSF-WSI reuses.

    f: the encoder (the SegModel's), globally average-pooled stage features
    g: projection MLP, 3 layers, hidden = output = input width d (BN on every layer, the last without affine)
    h: prediction MLP, 2 layers d -> d/4 -> d
    z_i = g(f(x_i)),  p_i = h(z_i),  L = ½ D(p1, sg(z2)) + ½ D(p2, sg(z1))      (pathseg.losses.simsiam)

Batches come from :class:`pathseg.methods.ssl.data.UnlabeledPairs`: ``{"context": (B, 2, 3, Sc, Sc),
"targets": (B, 2, m, 3, St, St)}``, two augmented views of each patch. ``branch="target"`` (default) trains
on the m target patches of each pair, the B*m patches being SimSiam's batch; ``branch="context"`` trains
on the B context patches. DSF-WSI's SimSiam baseline pretrains two backbones separately, one per patch
kind: run ``simsiam`` once with each branch (``configs/ssl/simsiam.yaml`` and ``simsiam_context.yaml``);
the first exports ``encoder.safetensors``, the second ``context_encoder.safetensors`` (HookNet's two
branches). With ``dense=True`` it puts one head on each ResNet stage, weighted as DSF-WSI does.

Learning rate (:class:`SSLMethod`): ``optim.lr`` is quoted for 32 pairs a step and scaled as in the
DSF-WSI authors' code, ``lr · sqrt(B / 32)`` with B the global batch of pairs (:func:`scaled_lr`).

Example:
    >>> m = SimSiam(create_model("unet", encoder="resnet18"), class_names=["bg", "tissue"])  # doctest: +SKIP
    >>> m.training_losses({"targets": torch.randn(2, 2, 4, 3, 64, 64)})["loss"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pathseg.errors import ConfigError
from pathseg.losses.simsiam import STAGE_WEIGHTS, dense_simsiam_loss, output_spread, simsiam_loss
from pathseg.methods.base import METHODS, Method

#: the four ResNet stages (layer1..layer4) in a pathseg encoder's feature list ([x, stem, s1, s2, s3, s4])
NUM_STAGES = 4
#: the batch (pairs a step) at which ``optim.lr`` is quoted: the DSF-WSI authors' ``lr * sqrt(B / 32)``
LR_REFERENCE_BATCH = 32
#: a head whose batch norm sees fewer samples than this a step gets a warning (noisy batch statistics)
MIN_BN_BATCH = 8
LR_SCALINGS = ("sqrt", "none")
BRANCHES = ("target", "context")


def scaled_lr(lr: float, batch: int, reference: int = LR_REFERENCE_BATCH) -> float:
    """``lr · sqrt(batch / reference)``: the rate for ``batch`` pairs a step, ``lr`` being quoted at ``reference``.

    Example:
        >>> round(scaled_lr(1e-3, 8), 6)   # a quarter of the batch: half the rate
        0.0005
    """
    if batch < 1:
        raise ConfigError(f"learning-rate scaling: the batch must be at least 1 pair, got {batch}")
    return float(lr) * math.sqrt(batch / reference)


class ProjectionMLP(nn.Sequential):
    """g: three Linear layers of width ``dim`` (hidden = output = input), BN+ReLU between, BN (no affine) last.

    Shape: (N, dim) -> (N, dim).
    """

    def __init__(self, dim: int, layers: int = 3) -> None:
        mods: list[nn.Module] = []
        for i in range(layers):
            mods += [nn.Linear(dim, dim, bias=False)]
            mods += [nn.BatchNorm1d(dim), nn.ReLU(inplace=True)] if i < layers - 1 else [nn.BatchNorm1d(dim, affine=False)]
        super().__init__(*mods)


class PredictionMLP(nn.Sequential):
    """h: Linear(dim, dim/4) + BN + ReLU + Linear(dim/4, dim), the bottleneck a quarter of the width.

    Shape: (N, dim) -> (N, dim).
    """

    def __init__(self, dim: int, bottleneck: int | None = None) -> None:
        b = bottleneck or max(1, dim // 4)
        super().__init__(nn.Linear(dim, b, bias=False), nn.BatchNorm1d(b), nn.ReLU(inplace=True), nn.Linear(b, dim))


class SimSiamHead(nn.Module):
    """Projector g and predictor h of one feature width; ``forward(f1, f2) -> (p1, p2, z1, z2)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.projector = ProjectionMLP(dim)
        self.predictor = PredictionMLP(dim)

    def forward(self, f1: torch.Tensor, f2: torch.Tensor) -> tuple[torch.Tensor, ...]:
        z1, z2 = self.projector(f1), self.projector(f2)
        return self.predictor(z1), self.predictor(z2), z1, z2


def pooled_stages(encoder: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Global-average-pooled features of the four ResNet stages.

    Shape: x (N, 3, H, W) -> 4 tensors (N, C_s), C = (64, 128, 256, 512) for resnet18/34.
    """
    feats = encoder(x)[-NUM_STAGES:]
    return [F.adaptive_avg_pool2d(f, 1).flatten(1) for f in feats]


def head_terms(name: str, outputs: Sequence[tuple[torch.Tensor, ...]], weights: Sequence[float] | None
               ) -> dict[str, torch.Tensor]:
    """The loss and spread entries of one branch's heads (one head, or one per stage weighted by ``weights``).

    One head: ``{"loss/<name>": L, "spread/<name>": s}``. Per stage: ``{"loss/<name>": Σ w_s L_s,
    "loss/<name>/stage<s>": L_s, "spread/<name>/stage<s>": s_s}``; s is :func:`output_spread` of the
    first view's projector output z1.
    """
    if weights is None:
        return {f"loss/{name}": simsiam_loss(*outputs[0]), f"spread/{name}": output_spread(outputs[0][2])}
    total, per = dense_simsiam_loss(list(outputs), weights)
    out = {f"loss/{name}": total}
    for i, (loss, o) in enumerate(zip(per, outputs)):
        out[f"loss/{name}/stage{i + 1}"] = loss
        out[f"spread/{name}/stage{i + 1}"] = output_spread(o[2])
    return out


class SSLMethod(Method):
    """Shared pieces of the pretraining methods: encoders to export, the learning-rate rule, head batch checks.

    Args:
        batch_size: pairs a step per process (``data.batch_size``; :func:`pathseg.engine.pretrain.pretrain`
            passes it). With ``lr_scaling="sqrt"`` the optimiser runs at ``scaled_lr(optim.lr, batch_size x
            world size)``; None (a method built by hand) leaves ``optim.lr`` as given.
        lr_scaling: ``"sqrt"`` (default, the DSF-WSI authors' rule ``lr · sqrt(B / 32)``) or ``"none"``
            (``optim.lr`` at any batch, the behaviour before issue 15).
    """

    sync_batchnorm = True  # SimSiam's projector and predictor normalise over the whole (global) batch

    def __init__(self, model, *, batch_size: int | None = None, lr_scaling: str = "sqrt", **kw: Any) -> None:
        super().__init__(model, **kw)
        if lr_scaling not in LR_SCALINGS:
            raise ConfigError(f"lr_scaling: expected one of {', '.join(LR_SCALINGS)}, got {lr_scaling!r}")
        self.batch_size = None if batch_size is None else int(batch_size)
        self.lr_scaling = lr_scaling
        self.base_lr = float(self.optim["lr"])
        self._bn_checked = False

    def encoders(self) -> dict[str, nn.Module]:
        """The encoders to export, by branch: ``{"target": model.encoder}`` here; DSF-WSI adds ``"context"``."""
        return {"target": self.model.encoder}

    def head_batches(self, pairs: int, m: int) -> dict[str, int]:
        """Samples each branch's heads normalise a step (one process), for ``pairs`` pairs of ``m`` targets."""
        raise NotImplementedError

    def stage_channels(self) -> list[int]:
        return list(self.model.encoder_channels[-NUM_STAGES:])

    def _world_size(self) -> int:
        trainer = getattr(self, "_trainer", None)
        return int(trainer.world_size) if trainer is not None else 1

    def effective_lr(self) -> float:
        """The learning rate the optimiser uses: ``optim.lr`` scaled by ``sqrt(B / 32)`` (see the class docstring)."""
        if self.lr_scaling == "none" or self.batch_size is None:
            return self.base_lr
        return scaled_lr(self.base_lr, self.batch_size * self._world_size())

    def configure_optimizers(self):
        self.optim["lr"] = self.effective_lr()
        return super().configure_optimizers()

    def warn_small_head_batches(self, batch: dict[str, Any]) -> dict[str, int]:
        """Warn for every branch whose heads normalise fewer than :data:`MIN_BN_BATCH` samples; returns the counts.

        Counts are per process, times the world size when the heads' batch norm is synchronised (SyncBatchNorm).
        """
        pairs, m = int(batch["targets"].shape[0]), int(batch["targets"].shape[2])
        synced = any(isinstance(mod, nn.SyncBatchNorm) for mod in self.modules())
        counts = {k: n * (self._world_size() if synced else 1) for k, n in self.head_batches(pairs, m).items()}
        small = {k: n for k, n in counts.items() if n < MIN_BN_BATCH}
        if small:
            listed = ", ".join(f"{k} heads {n}" for k, n in small.items())
            warnings.warn(f"{type(self).__name__.lower()}: batch norm in the projector/predictor sees fewer than "
                          f"{MIN_BN_BATCH} samples a step ({listed}), so its statistics are noisy and the heads may "
                          f"not train; raise data.batch_size (now {pairs} pairs; the lr follows it as "
                          "lr·sqrt(B/32))", stacklevel=2)
        return counts

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:  # pretraining has no labels
        return None

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if not self._bn_checked:
            self._bn_checked = True
            self.warn_small_head_batches(batch)
        # the base step reads the batch size from batch["image"]; pair batches carry "targets" (B, 2, m, ...)
        return super().training_step({**batch, "image": batch["targets"]}, batch_idx)


@METHODS.register("simsiam")
class SimSiam(SSLMethod):
    """SimSiam on one patch kind: ``branch`` "target" (default) or "context"; ``dense=True`` adds a head per stage.

    The trained encoder is exported as the ``branch``'s file: ``encoder.safetensors`` (target) or
    ``context_encoder.safetensors`` (context). ``stage_weights`` weight the stages when ``dense``.
    """

    def __init__(self, model, *, dense: bool = False, stage_weights: Sequence[float] = STAGE_WEIGHTS,
                 branch: str = "target", **kw: Any) -> None:
        super().__init__(model, **kw)
        if branch not in BRANCHES:
            raise ConfigError(f"simsiam: branch must be one of {', '.join(BRANCHES)} (the patches it trains on), "
                              f"got {branch!r}")
        self.dense, self.branch = bool(dense), branch
        self.stage_weights = [float(w) for w in stage_weights]
        chans = self.stage_channels()
        self.heads = nn.ModuleList([SimSiamHead(c) for c in (chans if self.dense else chans[-1:])])

    def encoders(self) -> dict[str, nn.Module]:
        return {self.branch: self.model.encoder}

    def head_batches(self, pairs: int, m: int) -> dict[str, int]:
        return {self.branch: pairs * m if self.branch == "target" else pairs}

    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if self.branch == "target":
            views = batch["targets"]  # (B, 2, m, 3, H, W)
            x1, x2 = views[:, 0].flatten(0, 1), views[:, 1].flatten(0, 1)
        else:
            views = batch["context"]  # (B, 2, 3, H, W)
            x1, x2 = views[:, 0], views[:, 1]
        f1 = pooled_stages(self.model.encoder, self._fmt(x1))
        f2 = pooled_stages(self.model.encoder, self._fmt(x2))
        if not self.dense:
            terms = head_terms(self.branch, [self.heads[0](f1[-1], f2[-1])], None)
        else:
            terms = head_terms(self.branch, [h(a, b) for h, a, b in zip(self.heads, f1, f2)], self.stage_weights)
        return {"loss": terms[f"loss/{self.branch}"], **terms}
