"""Háberová et al., "Weakly Supervised Semantic Cell Segmentation Using Knowledge Distillation".

Phase I   nuclei segmentation, Dice loss, U-Net / U-Net++   :mod:`.nuclei` (method ``nuclei_dice``)
          instances (components + watershed), patches      :mod:`.instances`
          QuPath cells -> nuclei, GeoJSON export           :mod:`.matching`
          the cell bank, built from images and exports     :mod:`.bank` (dataset ``cell_bank``:
                                                           :mod:`pathseg.data.cell_bank`)
Phase II  teacher ResNet-18 on weak labels                 method ``cell_classifier`` (:mod:`.method`),
Phase III student RCCNet on the teacher's labels           models :mod:`pathseg.models.cells`, the pipeline
Phase IV  expert fine-tuning over a grid                   :func:`pathseg.engine.distill.run_distill`
          (configuration :mod:`.config`, a trained classifier in use :mod:`.classifier`; all under :mod:`.cells`)
Commands: ``pathseg train`` (phase I), ``pathseg cell-bank``, ``pathseg distill``, ``pathseg cells``
(:mod:`pathseg.cli.distill`).
"""

from pathseg.methods.distill import method, nuclei  # noqa: F401  (register cell_classifier, nuclei_dice)
from pathseg.methods.distill.rccnet import CLASSIFIERS, RCCNet, SmallResNet18, create_classifier

__all__ = ["CLASSIFIERS", "RCCNet", "SmallResNet18", "create_classifier"]
