"""BCSS breast-cancer tissue regions (Amgad et al., Bioinformatics 2019), mapped to 5 broad classes.

Layout::

    root/images/<name>.png    RGB ROI, e.g. TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500.png
    root/masks/<name>.png     same name; 8-bit raw BCSS code per pixel (0..21)

The file name carries the TCGA id (→ ``meta["source"]`` = tissue-source site, ``"A1"``) and the MPP.

Raw codes (``meta/gtruth_codes.tsv`` of the official release) and the broad class each maps to:

====  ========================  =================
code  raw label                 broad class
====  ========================  =================
0     outside_roi               255 (ignore)
1     tumor                     0 tumour
2     stroma                    1 stroma
3     lymphocytic_infiltrate    2 inflammatory
4     necrosis_or_debris        3 necrosis
5     glandular_secretions      4 other
6     blood                     4 other
7     exclude                   4 other (255 with ``ignore_exclude=True``)
8     metaplasia_NOS            4 other
9     fat                       4 other
10    plasma_cells              2 inflammatory
11    other_immune_infiltrate   2 inflammatory
12    mucoid_material           4 other
13    normal_acinus_or_duct     4 other
14    lymphatics                4 other
15    undetermined              4 other
16    nerve                     4 other
17    skin_adnexa               4 other
18    blood_vessel              4 other
19    angioinvasion             0 tumour
20    dcis                      0 tumour
21    other                     4 other
====  ========================  =================

BCSS has no official train/test split: ``split="train"`` (or ``"all"``) gives every ROI unless
``test_sites`` is set, in which case ``"train"``/``"test"`` split by TCGA site. For label fractions,
split by site with :func:`pathseg.data.splits.make_split` (``groups=ds.sources``).

Example:
    >>> ds = BCSS("/data/bcss")  # doctest: +SKIP
    >>> ds[0]["meta"]["source"], ds[0]["meta"]["mpp"]  # doctest: +SKIP
    ('A1', 0.25)
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np

from pathseg.data.base import DATASETS, SegmentationDataset
from pathseg.data.monuseg import tcga_site
from pathseg.errors import DataError
from pathseg.io.files import list_images, read_image
from pathseg.sample import IGNORE_INDEX, Sample, make_sample

BCSS_RAW_CLASSES = [
    "outside_roi", "tumor", "stroma", "lymphocytic_infiltrate", "necrosis_or_debris", "glandular_secretions",
    "blood", "exclude", "metaplasia_NOS", "fat", "plasma_cells", "other_immune_infiltrate", "mucoid_material",
    "normal_acinus_or_duct", "lymphatics", "undetermined", "nerve", "skin_adnexa", "blood_vessel",
    "angioinvasion", "dcis", "other",
]  # fmt: skip
"""The 22 codes of BCSS ``gtruth_codes.tsv`` (index = code)."""

BCSS_BROAD_CLASSES = ["tumour", "stroma", "inflammatory", "necrosis", "other"]

_BROAD_OF_RAW = {
    "tumor": "tumour", "angioinvasion": "tumour", "dcis": "tumour",
    "stroma": "stroma",
    "lymphocytic_infiltrate": "inflammatory", "plasma_cells": "inflammatory", "other_immune_infiltrate": "inflammatory",
    "necrosis_or_debris": "necrosis",
}  # fmt: skip


def bcss_lut(ignore_exclude: bool = False) -> np.ndarray:
    """Look-up table raw BCSS code → broad class index (255 = ignore; codes > 21 map to 255 too).

    Shape:
        (256,) uint8; ``lut[raw_mask]`` gives the broad mask.
    """
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for code, raw in enumerate(BCSS_RAW_CLASSES):
        if raw == "outside_roi" or (ignore_exclude and raw == "exclude"):
            continue
        lut[code] = BCSS_BROAD_CLASSES.index(_BROAD_OF_RAW.get(raw, "other"))
    return lut


_MPP = re.compile(r"MPP-([0-9]*\.?[0-9]+)")


def parse_bcss_name(name: str) -> tuple[str, float | None]:
    """``"TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500"`` → ``("A1", 0.25)``; missing parts → ``""``/``None``."""
    m = _MPP.search(name)
    return tcga_site(name), (float(m.group(1)) if m else None)


@DATASETS.register("bcss")
class BCSS(SegmentationDataset):
    """BCSS ROIs with 5 broad classes (see the module table).

    Options:
        split: ``"train"``/``"all"`` (every ROI), or ``"test"`` (needs ``test_sites``).
        test_sites: TCGA site codes held out as the test set (e.g. ``["OL", "LL"]``).
        ignore_exclude: map raw code 7 ``exclude`` to ignore instead of ``other``.
    """

    name = "bcss"
    class_names = list(BCSS_BROAD_CLASSES)
    default_subdir = "bcss"
    download_hint = (
        "Get BCSS from https://github.com/PathologyDataScience/BCSS (Amgad et al., Bioinformatics 35(18), 2019) "
        "and arrange it as root/images/*.png with root/masks/*.png of the same names."
    )

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "train",
        *,
        test_sites: Sequence[str] = (),
        ignore_exclude: bool = False,
    ) -> None:
        super().__init__(root)
        if split not in ("train", "test", "all"):
            raise DataError(f"bcss: unknown split {split!r}; use train, test or all")
        img_dir, mask_dir = self.root / "images", self.root / "masks"
        if not img_dir.is_dir():
            raise DataError(
                f"bcss: {img_dir} not found; expected root/images/*.png and root/masks/*.png. {self.download_hint}"
            )
        sites = {s.upper() for s in test_sites}
        if split == "test" and not sites:
            raise DataError("bcss: BCSS has no official test split; pass test_sites=[...] or use a split file")
        self.lut = bcss_lut(ignore_exclude)
        self._images = []
        for p in list_images(img_dir):
            site, _ = parse_bcss_name(p.stem)
            if split == "all" or not sites or (site in sites) == (split == "test"):
                self._images.append(p)
        self._masks = [mask_dir / f"{p.stem}.png" for p in self._images]
        self.ids = [p.stem for p in self._images]
        self.sources = [parse_bcss_name(i)[0] for i in self.ids]
        if not self.ids:
            raise DataError(f"bcss: no images for split {split!r} in {img_dir}")

    def load(self, i: int) -> Sample:
        img_path, mask_path = self._images[i], self._masks[i]
        image = read_image(img_path)
        raw = read_image(mask_path, mode=None)
        if raw.ndim == 3:
            raw = raw[..., 0]
        if raw.dtype != np.uint8 or raw.max(initial=0) >= len(BCSS_RAW_CLASSES):
            bad = np.unique(raw[raw >= len(BCSS_RAW_CLASSES)])[:10].tolist()
            raise DataError(
                f"{mask_path}: expected 8-bit raw BCSS codes 0..{len(BCSS_RAW_CLASSES) - 1}, found {bad or raw.dtype}; "
                "use the masks of the official release"
            )
        if raw.shape != image.shape[:2]:
            raise DataError(
                f"{mask_path}: mask size {raw.shape[1]}x{raw.shape[0]} does not match image {img_path.name} "
                f"({image.shape[1]}x{image.shape[0]})"
            )
        _, mpp = parse_bcss_name(self.ids[i])
        return make_sample(
            image,
            self.lut[raw],
            id=self.ids[i],
            source=self.sources[i],
            mpp=mpp,
            path=str(img_path),
            num_classes=self.num_classes,
        )
