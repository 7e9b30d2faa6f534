"""Joint segmentation + classification (Ciga & Martel, "Learning to segment images with classification
labels", Medical Image Analysis 68, 2021):

    L = weight_seg · L_seg + weight_cls · L_cls

* L_seg: pixel cross-entropy of the segmentation output (nearest-upsampled to the patch) on the
  segmentation samples, weighted per class by the inverse pixel frequency of the training masks
  (``class_weights="auto"``: w_c = N / (K' · n_c), n_c pixels of class c, N = Σ n_c, over the K'
  classes present; 1 for absent classes).
* L_cls: cross-entropy of the image class vector (computed from the segmentation output, see
  :mod:`pathseg.models.segcls`) on the classification samples, so it trains the segmentation path;
  weighted per class the same way by the inverse label frequency of the training set's
  classification samples (``cls_class_weights="auto"``: n_c = classification samples whose target
  is c). The authors' code weights both losses by inverse frequency (it scales the weights to a
  maximum of 1; a weighted-mean cross-entropy does not change with that scale).

Both weights are computed once, when training starts, from the training dataset behind the
trainer's loader (``pixel_class_counts()`` / ``label_class_counts()`` when the dataset has them,
else by reading every sample); ``pixel_counts`` and ``label_counts`` keep the counts used.

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
    """Segmentation + classification labels through one network (model ``segcls``).

    Parameters:
        class_weights: weights of L_seg per class: ``"auto"`` (inverse pixel frequency of the training
            masks, set when training starts), ``"none"``/``None`` (all 1) or a list of ``num_classes`` numbers.
        cls_class_weights: weights of L_cls per class, the same choices; ``"auto"`` uses the inverse
            label frequency of the training set's classification samples.
        weight_seg, weight_cls: the factors of L_seg and L_cls in the total loss.
    """

    def __init__(
        self,
        model,
        *,
        class_weights: str | list[float] | None = "auto",
        cls_class_weights: str | list[float] | None = "auto",
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
        for key, value in (("class_weights", class_weights), ("cls_class_weights", cls_class_weights)):
            if isinstance(value, str) and value not in ("auto", "none"):
                raise ConfigError(f"method.params.{key}: 'auto', 'none', null or a list of {k} numbers; got {value!r}")
            if isinstance(value, (list, tuple)) and len(value) != k:
                raise ConfigError(f"method.params.{key}: expected {k} numbers (one per class), got {value}")
        if weight_seg < 0 or weight_cls < 0:
            raise ConfigError(f"method.params.weight_seg/weight_cls must be >= 0, got {weight_seg}, {weight_cls}")
        self.class_weights_mode, self.cls_class_weights_mode = class_weights, cls_class_weights
        self.weight_seg, self.weight_cls = float(weight_seg), float(weight_cls)
        for buf, value in (("seg_weights", class_weights), ("cls_weights", cls_class_weights)):
            init = value if isinstance(value, (list, tuple)) else [1.0] * k
            self.register_buffer(buf, torch.tensor(init, dtype=torch.float32), persistent=False)
        self.pixel_counts: list[int] | None = None
        self.label_counts: list[int] | None = None

    # -- class weights from the training set ------------------------------------------------------
    def on_train_start(self) -> None:
        want_pixels = self.class_weights_mode == "auto"
        want_labels = self.cls_class_weights_mode == "auto"
        if not (want_pixels or want_labels):
            return
        counts = _training_counts(self.trainer.train_dataloader, self.model.num_classes, self.ignore_index,
                                  pixels=want_pixels, labels=want_labels)
        if counts is None:
            return
        pixels, labels = counts
        if pixels is not None:
            self.seg_weights.copy_(torch.as_tensor(inverse_frequency_weights(pixels), dtype=torch.float32))
            self.pixel_counts = pixels.tolist()
        if labels is not None:
            self.cls_weights.copy_(torch.as_tensor(inverse_frequency_weights(labels), dtype=torch.float32))
            self.label_counts = labels.tolist()

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
            l_cls = F.cross_entropy(cls_logits[is_cls], target, weight=self.cls_weights.to(cls_logits.dtype))
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


def _training_counts(
    loader: Any, k: int, ignore_index: int, *, pixels: bool = True, labels: bool = True
) -> tuple[np.ndarray | None, np.ndarray | None] | None:
    """Pixel class counts of the training masks and label counts of the classification samples.

    The dataset is the one behind a (Combined)DataLoader (its labelled loader), unwrapped through
    ``.dataset`` views. Its ``pixel_class_counts()`` / ``label_class_counts()`` are used when present;
    otherwise every sample is read once. A classification sample is one with no labelled pixel and a
    non-zero ``labels`` vector of length ``k`` (as in :meth:`SegCls.training_losses`); its class is the
    argmax. Returns ``(pixels, labels)``, each (k,) int64 or None when not asked for; None when no
    dataset is reachable.
    """
    ds = getattr(loader, "dataset", None)
    if ds is None:  # CombinedLoader: the labelled loader
        its = getattr(loader, "iterables", None)
        its = its.get("labeled") if isinstance(its, dict) else its
        ds = getattr(its, "dataset", None)
    while ds is not None and not hasattr(ds, "pixel_class_counts") and hasattr(ds, "dataset"):
        ds = ds.dataset  # TensorView -> the adapter
    if ds is None:
        return None
    pix = np.asarray(ds.pixel_class_counts(), dtype=np.int64)[:k] if pixels and hasattr(ds, "pixel_class_counts") else None
    lab = np.asarray(ds.label_class_counts(), dtype=np.int64)[:k] if labels and hasattr(ds, "label_class_counts") else None
    need_pix, need_lab = pixels and pix is None, labels and lab is None
    if need_pix or need_lab:
        pix_acc, lab_acc = np.zeros(k, np.int64), np.zeros(k, np.int64)
        for i in range(len(ds)):
            s = ds[i]
            m = s.get("mask")
            if m is None:
                continue
            m = np.asarray(m)
            scored = m != ignore_index
            if need_pix:
                pix_acc += np.bincount(m[scored].ravel(), minlength=k)[:k]
            y = s.get("labels")
            if need_lab and y is not None and not scored.any():
                y = np.asarray(y).reshape(-1)
                if len(y) == k and y.sum() > 0:  # other lengths: training_losses raises its own error
                    lab_acc[int(np.argmax(y))] += 1
        pix = pix_acc if need_pix else pix
        lab = lab_acc if need_lab else lab
    return pix, lab
