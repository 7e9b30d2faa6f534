"""Joint segmentation + classification (Ciga & Martel, "Learning to segment images with classification
labels", Medical Image Analysis 68, 2021):

    L = weight_seg · L_seg + weight_cls · L_cls

* L_seg: pixel cross-entropy of the segmentation output (nearest-upsampled to the patch) on the
  segmentation samples, weighted per class by the inverse pixel frequency of the training masks
  (``class_weights="auto"``: w_c = N / (K' · n_c) over the K' classes present, 1 for absent classes).
* L_cls: cross-entropy of the image class vector (computed from the segmentation output, see
  :mod:`pathseg.models.segcls`) on the classification samples, so it trains the segmentation path.

A batch mixes both kinds. A **classification sample** has no labelled pixel (mask all
``IGNORE_INDEX``) and a non-zero ``labels`` vector over the segmentation classes (its argmax is the
target); every other sample is a segmentation sample. :class:`pathseg.data.patches.SegClsPatches`
(``data.dataset=segcls_patches``) produces such batches from any dataset and sets the regime
(S, S+C, S+C*); with a plain dataset every sample is a segmentation sample and this is regime S.

Published settings (``configs/segcls/``): ``model.name=segcls``, Adam (0.9, 0.999) at lr 1e-4 without
decay (``optim.poly_power=0``), batch 20, Macenko normalisation to one training image.

Example:
    >>> method = SegCls(create_model("segcls", num_classes=3), class_names=["bg", "a", "b"])  # doctest: +SKIP
    >>> method.training_losses(batch)["loss/cls"]                                             # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import pathseg.data.patches  # noqa: F401  (registers the "segcls_patches" dataset)
from pathseg.errors import ConfigError
from pathseg.methods.base import METHODS, Method
from pathseg.models.segcls import is_segcls, segcls_forward

__all__ = ["SegCls", "inverse_frequency_weights"]


def inverse_frequency_weights(counts: np.ndarray) -> np.ndarray:
    """Class weights ``N / (K' · n_c)`` for the K' classes with pixels, 1 for classes without.

    Example:
        >>> inverse_frequency_weights(np.array([300, 100, 0]))
        array([0.66666667, 2.        , 1.        ])
    """
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    w = np.ones_like(counts)
    if present.any():
        w[present] = counts.sum() / (present.sum() * counts[present])
    return w


@METHODS.register("segcls")
class SegCls(Method):
    """Segmentation + classification labels through one network (model ``segcls``)."""

    def __init__(
        self,
        model,
        *,
        class_weights: str | list[float] | None = "auto",
        weight_seg: float = 1.0,
        weight_cls: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        if not is_segcls(model):
            raise ConfigError(
                f"method segcls needs model.name=segcls (its classification module reads the segmentation "
                f"output); got model {getattr(model, 'name', '?')!r}"
            )
        k = model.num_classes
        if isinstance(class_weights, str) and class_weights not in ("auto", "none"):
            raise ConfigError(f"method.params.class_weights: 'auto', 'none', null or a list of {k} numbers; "
                              f"got {class_weights!r}")
        if isinstance(class_weights, (list, tuple)) and len(class_weights) != k:
            raise ConfigError(f"method.params.class_weights: expected {k} numbers (one per class), got {class_weights}")
        if weight_seg < 0 or weight_cls < 0:
            raise ConfigError(f"method.params.weight_seg/weight_cls must be >= 0, got {weight_seg}, {weight_cls}")
        self.class_weights_mode = class_weights
        self.weight_seg, self.weight_cls = float(weight_seg), float(weight_cls)
        init = class_weights if isinstance(class_weights, (list, tuple)) else [1.0] * k
        self.register_buffer("seg_weights", torch.tensor(init, dtype=torch.float32), persistent=False)

    # -- class weights from the training masks ----------------------------------------------------
    def on_train_start(self) -> None:
        if self.class_weights_mode != "auto":
            return
        counts = _pixel_counts(self.trainer.train_dataloader, self.model.num_classes, self.ignore_index)
        if counts is None:
            return
        w = inverse_frequency_weights(counts)
        self.seg_weights.copy_(torch.as_tensor(w, dtype=torch.float32))
        self.pixel_counts = counts.tolist()

    # -- the step ---------------------------------------------------------------------------------
    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        x, mask = batch["image"], batch["mask"]
        seg_low, cls_logits = segcls_forward(self.model, self._fmt(x), full_size=False)
        seg = F.interpolate(seg_low, size=mask.shape[-2:], mode="nearest")
        zero = seg_low.sum() * 0.0

        labelled = mask != self.ignore_index
        if labelled.any():
            l_seg = F.cross_entropy(seg, mask, weight=self.seg_weights.to(seg.dtype), ignore_index=self.ignore_index)
        else:
            l_seg = zero

        is_cls = ~labelled.flatten(1).any(1)
        labels = batch.get("labels")
        if labels is not None and is_cls.any():
            if labels.shape[1] != cls_logits.shape[1]:
                raise ConfigError(
                    f"classification samples carry {labels.shape[1]} labels but the model has {cls_logits.shape[1]} "
                    "classes; labels must be one-hot over the segmentation classes (use data.dataset=segcls_patches)"
                )
            is_cls = is_cls & (labels.sum(1) > 0)
        else:
            is_cls = torch.zeros_like(is_cls)
        if is_cls.any():
            target = labels[is_cls].argmax(1)
            l_cls = F.cross_entropy(cls_logits[is_cls], target)
            cls_acc = (cls_logits[is_cls].argmax(1) == target).float().mean()
        else:
            l_cls, cls_acc = zero, zero.detach()
        total = self.weight_seg * l_seg + self.weight_cls * l_cls
        return {
            "loss": total,
            "loss/seg": l_seg,
            "loss/cls": l_cls,
            "cls/accuracy": cls_acc.detach(),
            "batch/cls_share": is_cls.float().mean().detach(),
        }


def _pixel_counts(loader: Any, k: int, ignore_index: int) -> np.ndarray | None:
    """Pixel class counts of the training masks behind a (Combined)DataLoader, or None if not reachable."""
    ds = getattr(loader, "dataset", None)
    if ds is None:  # CombinedLoader: the labelled loader
        its = getattr(loader, "iterables", None)
        its = its.get("labeled") if isinstance(its, dict) else its
        ds = getattr(its, "dataset", None)
    while ds is not None and not hasattr(ds, "pixel_class_counts") and hasattr(ds, "dataset"):
        ds = ds.dataset  # TensorView -> the adapter
    if ds is None:
        return None
    if hasattr(ds, "pixel_class_counts"):
        return np.asarray(ds.pixel_class_counts(), dtype=np.int64)[:k]
    counts = np.zeros(k, np.int64)
    for i in range(len(ds)):
        m = ds[i].get("mask")
        if m is not None:
            m = np.asarray(m)
            counts += np.bincount(m[m != ignore_index].ravel(), minlength=k)[:k]
    return counts
