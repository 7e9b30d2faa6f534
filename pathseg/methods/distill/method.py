"""The cell classifier's training step (Háberová et al. phases II-IV): one method for teacher, student and
fine-tuning, trained by the library's driver (:func:`pathseg.engine.train.train`).

Method ``cell_classifier`` over a classifier (``model.name: resnet18_small | rccnet``) and the ``cell_bank``
dataset (:mod:`.dataset`), whose samples carry a class target vector ``labels`` (C,):

* hard labels (``soft: false``): ``L = CE(z, argmax(labels))``, logged as ``loss/ce``; the teacher on weak
  labels, the student on the teacher's hard labels (as published), the fine-tuning on expert labels;
* soft labels (``soft: true``, the student only): ``L = T² · KL(labels || softmax(z / T))`` (Hinton et al.
  2015) with ``labels`` the teacher's ``softmax(z_teacher / T)``, logged as ``loss/kd``.

Validation scores the argmax class against ``argmax(labels)`` with one confusion matrix and logs
``val/F1`` (weighted by support), ``val/accuracy``, ``val/precision``, ``val/recall``, ``val/F1_macro`` and
per class ``val/F1/<class>`` (:mod:`pathseg.metrics.classification`); :meth:`CellClassifier.evaluate_model`
is the same scoring for ``pathseg evaluate``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F

from pathseg.errors import ConfigError
from pathseg.methods.base import METHODS, Method
from pathseg.metrics import SegmentationMetrics
from pathseg.metrics.classification import classification_metrics_from_confusion


@METHODS.register("cell_classifier")
class CellClassifier(Method):
    """Cross-entropy on one class per patch, or distillation of soft targets (see the module docstring)."""

    ddp_find_unused_parameters = False  # every step uses every parameter

    def __init__(self, model, *, soft: bool = False, temperature: float = 1.0, **kw: Any) -> None:
        if temperature <= 0:
            raise ConfigError(f"method cell_classifier: temperature must be > 0, got {temperature}")
        super().__init__(model, **kw)
        self.soft, self.temperature = bool(soft), float(temperature)

    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits = self(batch["image"])
        target = batch["labels"]
        if self.soft:
            t = self.temperature
            loss = F.kl_div(F.log_softmax(logits / t, 1), target, reduction="batchmean") * t**2
            return {"loss": loss, "loss/kd": loss}
        loss = F.cross_entropy(logits, target.argmax(1))
        return {"loss": loss, "loss/ce": loss}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.val_metrics.update(batch["labels"].argmax(1), self(batch["image"]).argmax(1))

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        from pathseg.collectives import all_reduce_sum

        self.val_metrics.cm = all_reduce_sum(self.val_metrics.cm)  # one confusion matrix over every rank's shard
        res = classification_metrics_from_confusion(self.val_metrics.cm, self.class_names)
        self.log_dict({f"val/{k}": float(v) for k, v in res.items() if k not in ("F1", "n")}, prog_bar=False)
        self.log("val/F1", float(res["F1"]), prog_bar=True)
        self.history.append({"step": int(self.global_step), "epoch": int(self.current_epoch), **res})

    @staticmethod
    def evaluate_model(model: torch.nn.Module, loader: Iterable[dict[str, Any]], class_names: list[str]
                       ) -> dict[str, Any]:
        """Score a classifier on a loader of ``cell_bank`` batches (the ``pathseg evaluate`` hook)."""
        cm = SegmentationMetrics(len(class_names), class_names=list(class_names))
        model.eval()
        with torch.inference_mode():
            for batch in loader:
                cm.update(batch["labels"].argmax(1), model(batch["image"]).argmax(1))
        return classification_metrics_from_confusion(cm.cm, class_names)


__all__ = ["CellClassifier"]
