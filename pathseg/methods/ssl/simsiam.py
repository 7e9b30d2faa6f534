"""SimSiam (Chen & He, CVPR 2021) as a pretraining method, and the heads DSF-WSI reuses.

    f: the encoder (the SegModel's), globally average-pooled stage features
    g: projection MLP, 3 layers, hidden = output = input width d (BN on every layer, the last without affine)
    h: prediction MLP, 2 layers d -> d/4 -> d
    z_i = g(f(x_i)),  p_i = h(z_i),  L = ½ D(p1, sg(z2)) + ½ D(p2, sg(z1))      (pathseg.losses.simsiam)

Batches come from :class:`pathseg.methods.ssl.data.UnlabeledPairs`: ``{"targets": (B, 2, m, 3, H, W), ...}``,
two augmented views of each of the m target patches; SimSiam treats the B*m patches as its batch.
With ``dense=True`` it puts one head on each ResNet stage, weighted as DSF-WSI does (single branch).

Example:
    >>> m = SimSiam(create_model("unet", encoder="resnet18"), class_names=["bg", "tissue"])  # doctest: +SKIP
    >>> m.training_losses({"targets": torch.randn(2, 2, 4, 3, 64, 64)})["loss"]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pathseg.losses.simsiam import STAGE_WEIGHTS, dense_simsiam_loss, simsiam_loss
from pathseg.methods.base import METHODS, Method

#: the four ResNet stages (layer1..layer4) in a pathseg encoder's feature list ([x, stem, s1, s2, s3, s4])
NUM_STAGES = 4


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


class SSLMethod(Method):
    """Shared pieces of the pretraining methods: the model's encoder is the (target) branch to export."""

    sync_batchnorm = True  # SimSiam's projector and predictor normalise over the whole (global) batch

    #: names of extra encoders to export beside ``model.encoder`` (``{"context": module}``)
    def extra_encoders(self) -> dict[str, nn.Module]:
        return {}

    def stage_channels(self) -> list[int]:
        return list(self.model.encoder_channels[-NUM_STAGES:])

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:  # pretraining has no labels
        return None

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        # the base step reads the batch size from batch["image"]; pair batches carry "targets" (B, 2, m, ...)
        return super().training_step({**batch, "image": batch["targets"]}, batch_idx)


@METHODS.register("simsiam")
class SimSiam(SSLMethod):
    """SimSiam on the target patches; ``dense=True`` adds a head per stage (weights ``stage_weights``)."""

    def __init__(self, model, *, dense: bool = False, stage_weights: Sequence[float] = STAGE_WEIGHTS,
                 **kw: Any) -> None:
        super().__init__(model, **kw)
        self.dense = bool(dense)
        self.stage_weights = [float(w) for w in stage_weights]
        chans = self.stage_channels()
        self.heads = nn.ModuleList([SimSiamHead(c) for c in (chans if self.dense else chans[-1:])])

    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        views = batch["targets"]  # (B, 2, m, 3, H, W)
        x1, x2 = views[:, 0].flatten(0, 1), views[:, 1].flatten(0, 1)
        f1 = pooled_stages(self.model.encoder, self._fmt(x1))
        f2 = pooled_stages(self.model.encoder, self._fmt(x2))
        if not self.dense:
            loss = simsiam_loss(*self.heads[0](f1[-1], f2[-1]))
            return {"loss": loss, "loss/simsiam": loss}
        total, per = dense_simsiam_loss([h(a, b) for h, a, b in zip(self.heads, f1, f2)], self.stage_weights)
        return {"loss": total, **{f"loss/stage{i + 1}": l for i, l in enumerate(per)}}
