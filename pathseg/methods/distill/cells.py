"""Phases II-IV of Háberová et al., by concern (this module keeps the names importable from one place):

* the cell bank, nuclei segmentation for it, balanced expert subsets         :mod:`.bank`
* the bank as a dataset of the training driver (``cell_bank``)               :mod:`pathseg.data.cell_bank`
* the classifiers (RCCNet, the small-patch ResNet-18 teacher)                :mod:`pathseg.models.cells`
* loading a trained classifier, patches to tensors, prediction               :mod:`.classifier`
* the metrics (F1, precision, recall, accuracy from one confusion matrix)    :mod:`pathseg.metrics.classification`
* the training step of teacher, student and fine-tuning (``cell_classifier``)  :mod:`.method`
* the pipeline's configuration                                               :mod:`.config`
* the pipeline, each stage a run of the one training driver                  :func:`pathseg.engine.distill.run_distill`
"""

from pathseg.methods.distill.bank import (  # noqa: F401
    CellBank,
    NucleusSegmenter,
    balanced_subset,
    bank_from_instances,
    build_cell_bank,
)
from pathseg.methods.distill.classifier import load_classifier, patches_to_tensor, predict_logits_cells  # noqa: F401
from pathseg.methods.distill.config import DistillConfig, FinetuneConfig, StageConfig, TeacherConfig  # noqa: F401
from pathseg.data.cell_bank import CellBankDataset  # noqa: F401
from pathseg.methods.distill.method import CellClassifier  # noqa: F401
from pathseg.metrics.classification import classification_metrics  # noqa: F401

__all__ = ["CellBank", "CellBankDataset", "CellClassifier", "DistillConfig", "FinetuneConfig", "NucleusSegmenter",
           "StageConfig", "TeacherConfig", "balanced_subset", "bank_from_instances", "build_cell_bank",
           "classification_metrics", "load_classifier", "patches_to_tensor", "predict_logits_cells"]
