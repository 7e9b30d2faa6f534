"""Háberová et al., "Weakly Supervised Semantic Cell Segmentation Using Knowledge Distillation".

Phase I   nuclei segmentation, Dice loss, U-Net / U-Net++   :mod:`.nuclei` (method ``nuclei_dice``)
          instances (components + watershed), patches      :mod:`.instances`
          QuPath cells -> nuclei, GeoJSON export           :mod:`.matching`
Phase II  teacher ResNet-18 on weak labels                 :mod:`.cells` (:func:`~.cells.run_distill`)
Phase III student RCCNet on the teacher's labels           :mod:`.rccnet`, :mod:`.cells`
Phase IV  expert fine-tuning over a grid                   :mod:`.cells`
Commands: ``pathseg train`` (phase I), ``pathseg cell-bank``, ``pathseg distill``, ``pathseg cells``
(:mod:`pathseg.cli.distill`).
"""

from pathseg.methods.distill import nuclei  # noqa: F401  (registers nuclei_dice, nuclei_patches)
from pathseg.methods.distill.rccnet import CLASSIFIERS, RCCNet, SmallResNet18, create_classifier

__all__ = ["CLASSIFIERS", "RCCNet", "SmallResNet18", "create_classifier"]
