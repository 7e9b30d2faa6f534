"""Your own data: an image folder with index masks (``folder``) or QuPath GeoJSON (``qupath``).

``folder`` layout (``root/<split>/...`` is used when it exists, else ``root/...``)::

    root/images/<stem>.<png|jpg|tif|bmp>
    root/masks/<stem>.<png|tif|bmp>       single-channel; value = class index, 255 = ignore

``qupath`` layout::

    root/images/<stem>.<ext>
    root/annotations/<stem>.geojson       QuPath "Export objects as GeoJSON", coordinates in image pixels

Every mask value must be a class index (``0..len(class_names)-1``) or 255, else loading raises a
:class:`DataError` naming the mask file. Images without a mask raise at construction unless
``allow_unlabeled=True`` (then their samples have ``mask=None``: unlabelled data for semi-supervision).

Example:
    >>> ds = FolderDataset("my_tiles", class_names=["background", "tumour", "stroma"])  # doctest: +SKIP
    >>> qp = QuPathDataset("my_tiles", class_names=["background", "Tumor"], background=255)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pathseg.data.base import DATASETS, SegmentationDataset
from pathseg.errors import DatasetNotFoundError, DataError
from pathseg.io.annotations import rasterize_geojson, read_geojson
from pathseg.io.files import IMAGE_SUFFIXES, list_images, read_image
from pathseg.sample import IGNORE_INDEX, Sample, make_sample


def read_index_mask(path: Path) -> np.ndarray:
    """A single-channel label map (palette PNGs give indices; grey RGB is accepted, colour RGB is not)."""
    arr = read_image(path, mode=None)
    if arr.ndim == 3:
        if arr.shape[2] in (3, 4) and (np.any(arr[..., 0] != arr[..., 1]) or np.any(arr[..., 0] != arr[..., 2])):
            raise DataError(
                f"{path}: colour RGB mask; expected one channel whose value is the class index "
                "(save as 8-bit grey or palette PNG)"
            )
        arr = arr[..., 0]
    return arr


class _ImageFolder(SegmentationDataset):
    """Common part: image list under ``root[/split]/images`` and the class map option."""

    def __init__(
        self,
        root: str | os.PathLike | None,
        split: str,
        class_names: Sequence[str] | None,
        mpp: float | None,
    ) -> None:
        if root is None:
            raise DatasetNotFoundError(
                f"{self.name}: pass root=/path/to/folder (with images/ inside). {self.download_hint}"
            )
        super().__init__(root)
        if not class_names:
            raise DataError(f"{self.name}: pass class_names=[...] (index = mask value), e.g. ['background', 'tumour']")
        self.class_names = list(class_names)
        self.mpp = mpp
        self.split = split
        base = self.root / split if (self.root / split / "images").is_dir() else self.root
        self.base = base
        img_dir = base / "images"
        if not img_dir.is_dir():
            raise DataError(f"{self.name}: {img_dir} not found; {self.download_hint}")
        self._images = list_images(img_dir)
        stems = [p.stem for p in self._images]
        dup = sorted({s for s in stems if stems.count(s) > 1})
        if dup:
            raise DataError(f"{img_dir}: several images share the stem(s) {dup[:5]}; keep one file per stem")
        if not self._images:
            raise DataError(f"{img_dir}: no images ({', '.join(IMAGE_SUFFIXES)})")
        self.ids = stems
        self.sources = [""] * len(self.ids)


@DATASETS.register("folder")
class FolderDataset(_ImageFolder):
    """Images and index masks matched by file stem.

    Options:
        class_names: names in mask-value order (required).
        allow_unlabeled: images without a mask give ``mask=None`` instead of an error.
        mpp: resolution to report in ``meta`` (µm/px), if known.
    """

    name = "folder"
    download_hint = "Expected root/images/* and root/masks/* with matching file stems."

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "train",
        *,
        class_names: Sequence[str] | None = None,
        allow_unlabeled: bool = False,
        mpp: float | None = None,
    ) -> None:
        super().__init__(root, split, class_names, mpp)
        mask_dir = self.base / "masks"
        masks = {p.stem: p for p in list_images(mask_dir)} if mask_dir.is_dir() else {}
        orphans = sorted(set(masks) - set(self.ids))
        if orphans:
            raise DataError(
                f"{masks[orphans[0]]}: mask has no image (expected {self.base / 'images' / orphans[0]}.*); "
                f"{len(orphans)} mask(s) without an image; add the images or remove the masks"
            )
        self._masks = [masks.get(i) for i in self.ids]
        missing = [img for img, m in zip(self._images, self._masks) if m is None]
        if missing and not allow_unlabeled:
            raise DataError(
                f"{missing[0]}: no mask {mask_dir / missing[0].stem}.png ({len(missing)} image(s) without a mask); "
                "add the masks or pass allow_unlabeled=True"
            )

    def load(self, i: int) -> Sample:
        img_path, mask_path = self._images[i], self._masks[i]
        image = read_image(img_path)
        mask = None
        if mask_path is not None:
            mask = read_index_mask(mask_path)
            if mask.shape != image.shape[:2]:
                raise DataError(
                    f"{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} does not match image {img_path.name} "
                    f"({image.shape[1]}x{image.shape[0]}); check that the mask belongs to this image"
                )
            bad = np.setdiff1d(np.unique(mask), np.r_[np.arange(self.num_classes), IGNORE_INDEX])
            if bad.size:
                raise DataError(
                    f"{mask_path}: mask values {bad.tolist()[:10]} are outside the class map "
                    f"{self.class_names} (0..{self.num_classes - 1}, {IGNORE_INDEX} = ignore); "
                    "fix the mask or the class_names option"
                )
        return make_sample(image, mask, id=self.ids[i], mpp=self.mpp, path=str(img_path), num_classes=self.num_classes)


@DATASETS.register("qupath")
class QuPathDataset(_ImageFolder):
    """Images with one QuPath GeoJSON per image (same stem), rasterised to masks on load.

    Options:
        class_names: names in mask-value order (required); features are matched by QuPath class name.
        background: value of unannotated pixels: 0 (class 0) for exhaustive annotations, 255 for sparse.
        downsample: annotation coordinates are divided by this (e.g. 4 when the images were exported
            at 1/4 of the resolution the objects were drawn on).
        skip_unknown: ignore features whose class is not in ``class_names`` instead of raising.
        allow_unlabeled: images without a GeoJSON give ``mask=None``.
    """

    name = "qupath"
    download_hint = (
        "Expected root/images/* and root/annotations/<stem>.geojson (QuPath: File > Export objects as GeoJSON)."
    )

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "train",
        *,
        class_names: Sequence[str] | None = None,
        background: int = 0,
        downsample: float = 1.0,
        skip_unknown: bool = False,
        allow_unlabeled: bool = False,
        mpp: float | None = None,
    ) -> None:
        super().__init__(root, split, class_names, mpp)
        self.background, self.downsample, self.skip_unknown = background, downsample, skip_unknown
        ann_dir = self.base / "annotations"
        self._annotations: list[Path | None] = []
        for img in self._images:
            cands = [ann_dir / f"{img.stem}{s}" for s in (".geojson", ".json")]
            self._annotations.append(next((c for c in cands if c.is_file()), None))
        missing = [img for img, a in zip(self._images, self._annotations) if a is None]
        if missing and not allow_unlabeled:
            raise DataError(
                f"{missing[0]}: no annotation {ann_dir / missing[0].stem}.geojson "
                f"({len(missing)} image(s) without one); "
                "export them from QuPath or pass allow_unlabeled=True"
            )

    def load(self, i: int) -> Sample:
        img_path, ann_path = self._images[i], self._annotations[i]
        image = read_image(img_path)
        mask = None
        if ann_path is not None:
            feats = read_geojson(ann_path)
            mask = rasterize_geojson(
                feats, image.shape[:2], self.class_names, self.downsample, self.background,
                skip_unknown=self.skip_unknown, source=ann_path,
            )  # fmt: skip
        return make_sample(image, mask, id=self.ids[i], mpp=self.mpp, path=str(img_path), num_classes=self.num_classes)
