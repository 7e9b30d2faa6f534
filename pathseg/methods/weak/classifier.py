"""Phase 1 of MLPS: a multi-label patch classifier with progressive dropout attention (PDA).

Han et al., "Multi-layer pseudo-supervision for histopathology tissue semantic segmentation using
patch-level classification labels", Medical Image Analysis 80, 2022, Sec. 3.1.

With final features f (B, D, h, w) and CAM weights w_k (the 1x1 classifier ``fc8``):

    M_k = ReLU(Σ_d w_kd f_d)                     class activation map, per class k
    β_k = μ · max(M_k)                            per image and class
    M'_k = M_k where M_k <= β_k, else 0           the most discriminative part is dropped
    A = (1/K) Σ_k M'_k                            attention map (B, 1, h, w)
    s = fc8(GAP(Dropout2d(A ⊙ f)))                class scores; L = multilabel_soft_margin(s, y)

μ schedule (:func:`mu_schedule`): the attention is off for the first ``warmup_epochs`` (3) epochs, as
in the authors' code (``enable_PDA = ep > 2``; with μ = 1 nothing would be dropped), then
μ_t = max(l, σ · μ_{t-1}) with σ = 0.985, l = 0.65, i.e. μ(e) = max(l, σ^(e - warmup + 1)).
``attention="da"`` keeps μ constant (0.7) after the same warm-up; ``"none"`` never applies it.

An "epoch" is ``epoch_steps`` optimiser steps when set, else one loop epoch (``trainer.val_every``
steps), so a short run can compress the schedule.

Validation scores the CAM segmentation the authors' test phase scores: CAMs of the classes whose
probability exceeds ``cam_threshold`` (0.25), upsampled bilinearly, argmax.

Example:
    >>> mu_schedule(2), round(mu_schedule(3), 3), mu_schedule(200)
    (1.0, 0.985, 0.65)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from pathseg.errors import ConfigError
from pathseg.methods.base import METHODS, Method
from pathseg.models.cam import class_logits

ATTENTIONS = ("pda", "da", "none")


def mu_schedule(epoch: int, *, warmup_epochs: int = 3, sigma: float = 0.985, mu_min: float = 0.65) -> float:
    """μ at (0-based) ``epoch``: 1 during warm-up, then σ per epoch, bounded below by ``mu_min``."""
    if epoch < warmup_epochs:
        return 1.0
    return max(mu_min, sigma ** (epoch - warmup_epochs + 1))


def dropout_attention(features: torch.Tensor, cam_weight: torch.Tensor, mu: float) -> torch.Tensor:
    """The attention map A of PDA: mean over classes of the CAMs with their top part (> μ·max) zeroed.

    Shape: features (B, D, h, w); cam_weight (K, D) or (K, D, 1, 1) -> A (B, 1, h, w).

    Example:
        >>> f = torch.tensor([[[[1.0, 2.0, 4.0]]]])          # B=1, D=1, h=1, w=3
        >>> dropout_attention(f, torch.tensor([[1.0]]), 0.6)  # 4 > 0.6*4 is dropped
        tensor([[[[1., 2., 0.]]]])
    """
    w = cam_weight.reshape(cam_weight.shape[0], -1, 1, 1)
    cams = F.relu(F.conv2d(features, w))
    peak = cams.flatten(2).amax(-1)[..., None, None]
    kept = torch.where(cams > mu * peak, torch.zeros_like(cams), cams)
    return kept.mean(1, keepdim=True)


@METHODS.register("mlps_classifier")
class MLPSClassifier(Method):
    """Phase 1: ``model.name=cam``, batches with ``labels`` (B, K); L = multilabel soft margin."""

    def __init__(
        self,
        model,
        *,
        attention: str = "pda",
        warmup_epochs: int = 3,
        sigma: float = 0.985,
        mu_min: float = 0.65,
        mu_da: float = 0.7,
        epoch_steps: int | None = None,
        feature_dropout: float = 0.5,
        cam_threshold: float = 0.25,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        if getattr(model, "name", "") != "cam":
            raise ConfigError(f"method mlps_classifier needs model.name=cam (a CAM classifier), got {model.name!r}")
        if attention not in ATTENTIONS:
            raise ConfigError(f"method.params.attention: {attention!r} is not one of {', '.join(ATTENTIONS)}")
        if not 0 < sigma <= 1 or not 0 < mu_min <= 1 or not 0 < mu_da <= 1 or not 0 <= feature_dropout < 1:
            raise ConfigError("method.params: need 0 < sigma, mu_min, mu_da <= 1 and 0 <= feature_dropout < 1")
        if epoch_steps is not None and epoch_steps < 1:
            raise ConfigError(f"method.params.epoch_steps must be >= 1 (or null), got {epoch_steps}")
        self.attention, self.warmup_epochs, self.sigma, self.mu_min = attention, int(warmup_epochs), sigma, mu_min
        self.mu_da, self.epoch_steps, self.cam_threshold = mu_da, epoch_steps, cam_threshold
        self.dropout = torch.nn.Dropout2d(feature_dropout)
        self._cls_counts = torch.zeros(3)  # exact-match patches, patches, sum of per-patch label IoU

    # -- schedule ---------------------------------------------------------------------------------
    def schedule_epoch(self) -> int:
        if self.epoch_steps:
            return int(self.global_step) // self.epoch_steps
        return int(self.current_epoch)

    def current_mu(self) -> float | None:
        """μ for this step, or None while the attention is off."""
        e = self.schedule_epoch()
        if self.attention == "none" or e < self.warmup_epochs:
            return None
        if self.attention == "da":
            return self.mu_da
        return mu_schedule(e, warmup_epochs=self.warmup_epochs, sigma=self.sigma, mu_min=self.mu_min)

    # -- the step ---------------------------------------------------------------------------------
    def scores(self, x: torch.Tensor, mu: float | None = None) -> torch.Tensor:
        """Class logits s (B, K), with dropout attention at ``mu`` (None: plain GAP classifier)."""
        z = self.model.decode(self.model.encode(self._fmt(x)))
        if mu is not None:
            z = z * dropout_attention(z, self.model.classifier.weight, mu)
        z = self.dropout(z)
        return class_logits(self.model.classify(z))

    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if "labels" not in batch:
            raise ConfigError("mlps_classifier needs patch labels: use a dataset whose samples carry 'labels' "
                              "(bcss_wsss, luad_histoseg, patch_labels, synthetic)")
        mu = self.current_mu()
        s = self.scores(batch["image"], mu)
        loss = F.multilabel_soft_margin_loss(s, batch["labels"].to(s.dtype))
        out = {"loss": loss, "loss/cls": loss}
        out["mu"] = torch.tensor(1.0 if mu is None else mu)
        return out

    # -- validation: CAM segmentation + classification --------------------------------------------
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        x = batch["image"]
        cams = self.model.classify(self.model.decode(self.model.encode(self._fmt(x))))
        probs = torch.sigmoid(class_logits(cams))
        pred = cam_label_map(cams, probs > self.cam_threshold, x.shape[-2:])
        self.val_metrics.update(batch["mask"], pred, batch.get("valid"))
        if "labels" in batch:
            y, p = batch["labels"] > 0.5, probs > 0.5
            inter, union = (y & p).sum(1).float(), (y | p).sum(1).float()
            self._cls_counts += torch.stack([(y == p).all(1).sum().float().cpu(), torch.tensor(float(len(y))),
                                             torch.where(union > 0, inter / union.clamp(min=1), 1.0).sum().cpu()])

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._cls_counts = torch.zeros(3)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if self.trainer.sanity_checking or not self.history or self._cls_counts[1] == 0:
            return
        em, n, acc = self._cls_counts.tolist()
        self.history[-1].update({"cls_exact_match": em / n, "cls_accuracy": acc / n})
        self.log_dict({"val/cls_exact_match": em / n, "val/cls_accuracy": acc / n})


def cam_label_map(cams: torch.Tensor, keep: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Label map from CAMs: ReLU, keep the chosen classes, upsample bilinearly, argmax.

    Where no kept class is active the pixel takes class 0 (as the authors' code does).

    Shape: cams (B, K, h, w); keep (B, K) bool -> (B, H, W) int64.
    """
    m = F.relu(cams) * keep[..., None, None].to(cams.dtype)
    m = F.interpolate(m, size=tuple(size), mode="bilinear", align_corners=False)
    return m.argmax(1)
