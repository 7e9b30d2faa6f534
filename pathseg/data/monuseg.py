"""MoNuSeg 2018 nuclei (Kumar et al., IEEE TMI 2017 and 2020): 1000x1000 H&E tiles at 40x.

Layout (official split; file stems are TCGA ids shared by image, XML and mask)::

    root/train/images/<id>.tif        root/test/images/<id>.tif
    root/train/annotations/<id>.xml   root/test/annotations/<id>.xml      (optional per image)
    root/train/binary_masks/<id>.png  root/test/binary_masks/<id>.png     (optional per image)

Labels, in order of preference:

1. the Aperio XML (one ``Region`` per nucleus) → an instance map (later Region wins on overlap, ids
   renumbered 1..K in file order, see :func:`pathseg.io.annotations.rasterize_polygons`) and the binary
   mask ``instances > 0``;
2. otherwise the released binary mask PNG (mode ``LA``; channel 0 > 0 is nucleus), with ``instances=None``.

Resolution: the XML's ``MicronsPerPixel`` when present, else the nominal 40x value
:data:`MONUSEG_NOMINAL_MPP` = 0.25 µm/px (the XMLs that carry it say 0.246-0.253).
``meta["source"]`` is the TCGA tissue-source-site code (``TCGA-2Z-...`` → ``"2Z"``).

Example:
    >>> ds = MoNuSeg(split="test", scale=0.5)  # doctest: +SKIP
    >>> s = ds[0]; s["image"].shape, s["meta"]["mpp"]  # doctest: +SKIP
    ((500, 500, 3), 0.5054)
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from pathseg.data.base import DATASETS, SegmentationDataset
from pathseg.errors import DataError
from pathseg.io.annotations import rasterize_polygons, read_aperio_xml
from pathseg.io.files import list_images, read_image
from pathseg.sample import Sample, make_sample

MONUSEG_NOMINAL_MPP = 0.25
"""µm/px used when an image has no XML ``MicronsPerPixel`` (MoNuSeg tiles are 40x)."""

_TCGA_SITE = re.compile(r"TCGA-([A-Za-z0-9]{2})-")


def tcga_site(name: str) -> str:
    """Tissue-source-site code of a TCGA barcode (``"TCGA-A1-A0SK-DX1..."`` → ``"A1"``); ``""`` if none."""
    m = _TCGA_SITE.search(name)
    return m.group(1).upper() if m else ""


def resize_sample_arrays(
    image: np.ndarray, mask: np.ndarray | None, instances: np.ndarray | None, scale: float
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Resize by ``scale``: image area-averaged (shrink) or bilinear (enlarge); labels nearest.

    Shape:
        image (H, W, 3) → (round(H*scale), round(W*scale), 3); label maps likewise.
    """
    import cv2

    if scale == 1.0:
        return image, mask, instances
    h, w = image.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # cv2 wants (W, H)
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    image = cv2.resize(image, size, interpolation=interp)
    if mask is not None:
        mask = cv2.resize(mask.astype(np.int32), size, interpolation=cv2.INTER_NEAREST).astype(np.int64)
    if instances is not None:
        instances = cv2.resize(instances.astype(np.int32), size, interpolation=cv2.INTER_NEAREST)
    return image, mask, instances


@DATASETS.register("monuseg")
class MoNuSeg(SegmentationDataset):
    """MoNuSeg 2018, official train (30 staged) / test (14) split.

    Options:
        split: ``"train"``, ``"test"`` or ``"all"`` (train then test).
        scale: resize factor (0.5 → 500x500 at about 0.5 µm/px); MPP is divided by it.
        prefer_xml: use the XML polygons when present (default); ``False`` reads the binary masks.
    """

    name = "monuseg"
    class_names = ["background", "nucleus"]
    default_subdir = "monuseg2018"
    download_hint = (
        "Get MoNuSeg 2018 (train and test) from https://monuseg.grand-challenge.org "
        "(Kumar et al., IEEE TMI 2017; 2020) and arrange it as root/{train,test}/images/*.tif with "
        "root/{train,test}/annotations/*.xml and/or root/{train,test}/binary_masks/*.png."
    )
    splits = ("train", "test")

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "train",
        *,
        scale: float = 1.0,
        prefer_xml: bool = True,
    ) -> None:
        super().__init__(root)
        if split not in (*self.splits, "all"):
            raise DataError(f"monuseg: unknown split {split!r}; use one of {', '.join((*self.splits, 'all'))}")
        if not scale > 0:
            raise DataError(f"monuseg: scale must be > 0, got {scale}")
        self.split = split
        self.scale = float(scale)
        self.prefer_xml = prefer_xml
        self._dirs: list[Path] = []
        for sp in self.splits if split == "all" else (split,):
            folder = self.root / sp / "images"
            if not folder.is_dir():
                raise DataError(
                    f"monuseg: {folder} not found; expected root/{sp}/images/*.tif under {self.root}. "
                    f"{self.download_hint}"
                )
            for p in list_images(folder):
                self.ids.append(p.stem)
                self._dirs.append(p)
        if not self.ids:
            raise DataError(f"monuseg: no images in {self.root}/{split}/images; {self.download_hint}")
        self.sources = [tcga_site(i) for i in self.ids]

    def label_paths(self, i: int) -> tuple[Path, Path]:
        """The XML and binary-mask paths that would label image ``i`` (either may not exist)."""
        img = self._dirs[i]
        split_dir = img.parent.parent
        return split_dir / "annotations" / f"{img.stem}.xml", split_dir / "binary_masks" / f"{img.stem}.png"

    def load(self, i: int) -> Sample:
        img_path = self._dirs[i]
        image = read_image(img_path)
        h, w = image.shape[:2]
        xml, png = self.label_paths(i)
        instances = None
        mpp = None
        if xml.is_file() and (self.prefer_xml or not png.is_file()):
            polys, mpp = read_aperio_xml(xml)
            instances = rasterize_polygons(polys, (h, w))
            mask = (instances > 0).astype(np.int64)
        elif png.is_file():
            arr = read_image(png, mode=None)
            mask = ((arr[..., 0] if arr.ndim == 3 else arr) > 0).astype(np.int64)
            if mask.shape != (h, w):
                raise DataError(
                    f"{png}: mask size {mask.shape[1]}x{mask.shape[0]} does not match image {img_path.name} "
                    f"({w}x{h}); check that the mask belongs to this image"
                )
        else:
            raise DataError(
                f"{img_path}: no label found; expected {xml} (Aperio XML) or {png} (binary mask PNG)"
            )
        if mpp is None:
            mpp = MONUSEG_NOMINAL_MPP
        image, mask, instances = resize_sample_arrays(image, mask, instances, self.scale)
        return make_sample(
            image,
            mask,
            id=self.ids[i],
            instances=instances,
            source=self.sources[i],
            mpp=mpp / self.scale,
            path=str(img_path),
            num_classes=self.num_classes,
        )
