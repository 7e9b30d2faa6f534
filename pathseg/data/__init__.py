"""Dataset adapters (each registers itself in :data:`DATASETS`), the sample contract and splits.

Importing this package registers: ``monuseg``, ``glas``, ``bcss``, ``bcss_wsss``, ``luad_histoseg``,
``folder``, ``qupath``, ``synthetic``, ``patch_labels``, ``segcls_patches``, ``nuclei_patches`` and
``pseudo_masks``. Heavy readers (Pillow, OpenCV, shapely) load only when a file is read.

Example:
    >>> from pathseg.data import DATASETS
    >>> ds = DATASETS.get("monuseg")(split="test")  # doctest: +SKIP
"""

from pathseg.data import bcss, cell_bank, folder, glas, monuseg, nuclei_patches, patch_labels, patches, pseudo_masks, synth, wsss  # noqa: F401,E501  (register the adapters)
from pathseg.data.base import DATASETS, SegmentationDataset, shared_data_root
from pathseg.sample import IGNORE_INDEX, Sample, make_sample

__all__ = ["DATASETS", "IGNORE_INDEX", "Sample", "SegmentationDataset", "make_sample", "shared_data_root"]
