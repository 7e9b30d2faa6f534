"""BCSS-WSSS and LUAD-HistoSeg: 224 px patches with image-level multi-labels for training.

Both from Han et al., "Multi-layer pseudo-supervision for histopathology tissue semantic segmentation
using patch-level classification labels", Medical Image Analysis 80, 2022 (github.com/ChuHan89/WSSS-Tissue).

Layout (``training/`` as named here; the release calls it ``train/``, both are accepted)::

    root/training/<name>[...].png    patch; the bracket holds the multi-label vector
    root/val/img/*.png,  root/val/mask/*.png     pixel masks (palette/index PNG, value = class)
    root/test/img/*.png, root/test/mask/*.png

Training patch names, as released (the datasets' readme files and ``tool/GenDataset.py`` of the
authors' code); both forms are accepted for either dataset:

* LUAD-HistoSeg: ``'patient_ID'-'x'-'y'-[a b c d].png``, digits separated by single spaces,
  e.g. ``1031280-2300-27920-[1 0 0 1].png``.
* BCSS-WSSS: ``'BCSS image name'+'index'[abcd].png``, digits side by side,
  e.g. ``TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500+0[1101].png``.

Class orders (as published; index = mask value = position in the bracket vector):

* BCSS-WSSS: ``[TUM, STR, LYM, NEC]`` (tumour, stroma, lymphocytic infiltrate, necrosis).
* LUAD-HistoSeg: ``[TE, NEC, LYM, TAS]`` (tumour epithelium, necrosis, lymphocyte, tumour-associated stroma).

Mask value 4 is the white background / unlabelled area in both releases; it is not a scored class, so
it becomes 255 (ignore). Any other value outside 0..3 raises :class:`DataError`.

Training samples have ``mask=None`` and ``labels`` = the bracket vector; val/test samples have a mask
and ``labels`` = the classes present in it.

Example:
    >>> parse_multilabel("TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500+0[1101].png")
    [1, 1, 0, 1]
    >>> parse_multilabel("1031280-2300-27920-[1 0 0 1].png")
    [1, 0, 0, 1]
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from pathseg.data.base import DATASETS, SegmentationDataset
from pathseg.data.bcss import parse_bcss_name
from pathseg.errors import DataError
from pathseg.io.files import list_images, read_image
from pathseg.sample import IGNORE_INDEX, Sample, make_sample

# the trailing bracket of a training patch name: "[1101]" (BCSS-WSSS) or "[1 0 0 1]" (LUAD-HistoSeg)
_LABELS = re.compile(r"\[([01]+|[01](?: [01])+)\]$")
_FORMS = "'...-[1 0 0 1].png' (LUAD-HistoSeg) or '...+0[1101].png' (BCSS-WSSS)"
BACKGROUND_VALUE = 4
"""Mask value of the white background / unlabelled area in both releases (mapped to ignore)."""

_HAN_2022 = (
    "Han et al., 'Multi-layer pseudo-supervision for histopathology tissue semantic segmentation using "
    "patch-level classification labels', Medical Image Analysis 80, 2022"
)


def parse_multilabel(name: str, num_classes: int | None = None) -> list[int]:
    """The 0/1 vector in the trailing ``[...]`` of a patch file name (suffix optional).

    The digits stand side by side (``[0110]``, BCSS-WSSS) or are separated by single spaces
    (``[0 1 1 0]``, LUAD-HistoSeg). Raises :class:`DataError` naming the file when the name ends in
    neither form or the vector's length is not ``num_classes``.

    Example:
        >>> parse_multilabel("patch_17[0110].png", 4)
        [0, 1, 1, 0]
        >>> parse_multilabel("385277-44539-46781-[0 1 1 0].png", 4)
        [0, 1, 1, 0]
    """
    stem = Path(name).stem if Path(name).suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".bmp") else name
    m = _LABELS.search(stem)
    if not m:
        raise DataError(
            f"{name}: training patch name has no label vector of 0/1 digits in brackets before the suffix; "
            f"expected a name like {_FORMS}, as in the released datasets"
        )
    vec = [int(c) for c in m.group(1).replace(" ", "")]
    if num_classes is not None and len(vec) != num_classes:
        raise DataError(f"{name}: label vector [{m.group(1)}] has {len(vec)} entries, expected {num_classes}")
    return vec


class PatchWSSSDataset(SegmentationDataset):
    """Shared reader for the two Han et al. 2022 patch datasets (see the module docstring)."""

    splits = ("train", "val", "test")
    mpp: float | None = None  # the patches do not record it (the name's MPP is the source ROI's)

    def __init__(self, root: str | os.PathLike | None = None, split: str = "train") -> None:
        super().__init__(root)
        if split not in self.splits:
            raise DataError(f"{self.name}: unknown split {split!r}; use one of {', '.join(self.splits)}")
        self.split = split
        self._masks: list[Path] | None
        if split == "train":
            folder = next((self.root / d for d in ("training", "train") if (self.root / d).is_dir()), None)
            if folder is None:
                raise DataError(f"{self.name}: {self.root}/training not found. {self.download_hint}")
            self._images = list_images(folder)
            self._masks = None
            self._labels = [parse_multilabel(str(p), self.num_classes) for p in self._images]
        else:
            img_dir, mask_dir = self.root / split / "img", self.root / split / "mask"
            if not img_dir.is_dir():
                raise DataError(
                    f"{self.name}: {img_dir} not found; expected {split}/img and {split}/mask. {self.download_hint}"
                )
            self._images = list_images(img_dir)
            self._masks = [mask_dir / f"{p.stem}.png" for p in self._images]
        if not self._images:
            raise DataError(f"{self.name}: no patches for split {split!r} under {self.root}")
        self.ids = [p.stem for p in self._images]
        self.sources = [parse_bcss_name(i)[0] for i in self.ids]

    def load(self, i: int) -> Sample:
        img_path = self._images[i]
        image = read_image(img_path)
        if self._masks is None:
            return make_sample(
                image, None, id=self.ids[i], labels=np.asarray(self._labels[i], np.float32),
                source=self.sources[i], mpp=self.mpp, path=str(img_path),
            )  # fmt: skip
        mask_path = self._masks[i]
        raw = read_image(mask_path, mode=None)
        if raw.ndim != 2:
            raise DataError(
                f"{mask_path}: expected a palette/index PNG (one value per pixel = class), got shape {raw.shape}; "
                "use the masks of the original release"
            )
        bad = np.setdiff1d(np.unique(raw), np.arange(self.num_classes + 1))
        if bad.size:
            raise DataError(
                f"{mask_path}: mask values {bad.tolist()[:10]} are not classes 0..{self.num_classes - 1} "
                f"or background {BACKGROUND_VALUE}"
            )
        mask = raw.astype(np.int64)
        mask[mask == BACKGROUND_VALUE] = IGNORE_INDEX
        if mask.shape != image.shape[:2]:
            raise DataError(f"{mask_path}: mask size {mask.shape[::-1]} does not match image {img_path.name}")
        present = np.zeros(self.num_classes, np.float32)
        present[np.unique(mask[mask != IGNORE_INDEX])] = 1
        return make_sample(
            image, mask, id=self.ids[i], labels=present, source=self.sources[i], mpp=self.mpp,
            path=str(img_path), num_classes=self.num_classes,
        )  # fmt: skip


@DATASETS.register("bcss_wsss")
class BCSSWSSS(PatchWSSSDataset):
    """BCSS-WSSS (breast, patches cut from BCSS ROIs); classes ``[TUM, STR, LYM, NEC]``."""

    name = "bcss_wsss"
    class_names = ["tumour", "stroma", "lymphocytic_infiltrate", "necrosis"]
    default_subdir = "bcss_wsss"
    download_hint = (
        "Get BCSS-WSSS from the WSSS-Tissue release page (https://github.com/ChuHan89/WSSS-Tissue, "
        f"{_HAN_2022}) and arrange it as root/training/*.png, root/val/{{img,mask}}, root/test/{{img,mask}}."
    )


@DATASETS.register("luad_histoseg")
class LUADHistoSeg(PatchWSSSDataset):
    """LUAD-HistoSeg (lung adenocarcinoma); classes ``[TE, NEC, LYM, TAS]``."""

    name = "luad_histoseg"
    class_names = ["tumour_epithelium", "necrosis", "lymphocyte", "tumour_associated_stroma"]
    default_subdir = "luad_histoseg"
    download_hint = (
        "Get LUAD-HistoSeg from its release page (https://github.com/ChuHan89/WSSS-Tissue, "
        f"{_HAN_2022}) and arrange it as root/training/*.png, root/val/{{img,mask}}, root/test/{{img,mask}}."
    )
