"""Weakly supervised segmentation from patch-level labels: MLPS (Han et al., MedIA 2022).

Phase 1 ``mlps_classifier`` (:mod:`.classifier`: multi-label CAM classifier with progressive dropout
attention) -> ``pathseg pseudo-masks`` (:mod:`.gradcam`, :mod:`.pseudo`: Grad-CAM at three depths,
label maps on disk) -> phase 2 ``mlps`` (:mod:`.mlps`: segmenter on the three layers' pseudo masks)
-> ``pathseg gate`` (one model with the classification gate) -> ``pathseg evaluate`` / ``predict``.

Importing this package registers the methods, the ``cam`` / ``<decoder>_gated`` models and the
``patch_labels`` / ``pseudo_masks`` datasets.
"""

import pathseg.data.patch_labels  # noqa: F401  (registers patch_labels)
import pathseg.models.cam  # noqa: F401  (registers cam, <decoder>_gated)
from pathseg.methods.weak.classifier import MLPSClassifier, dropout_attention, mu_schedule
from pathseg.methods.weak.gradcam import grad_cam, layer_grad_cams
from pathseg.methods.weak.mlps import MLPS, apply_gate, gate_checkpoint, multi_layer_loss
from pathseg.methods.weak.pseudo import PseudoMaskDataset, pack_masks, unpack_masks, write_pseudo_masks

__all__ = [
    "MLPS", "MLPSClassifier", "PseudoMaskDataset", "apply_gate", "dropout_attention", "gate_checkpoint",
    "grad_cam", "layer_grad_cams", "mu_schedule", "multi_layer_loss", "pack_masks", "unpack_masks",
    "write_pseudo_masks",
]
