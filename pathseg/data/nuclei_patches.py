"""Dataset ``nuclei_patches``: several nuclei datasets trained together, tiled without overlap.

Used by phase I of Háberová et al. (:mod:`pathseg.methods.distill.nuclei`, method ``nuclei_dice``); it lives
in the data layer so the dataset registry lists it whatever was imported first. Each image is cut into
``patch`` x ``patch`` tiles without overlap, the last row/column zero-padded (image 0, mask background;
``pad_mask_ignore`` scores the padding as ignore instead), optionally Macenko-normalised to a target image.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pathseg.data.base import DATASETS, SegmentationDataset
from pathseg.errors import ConfigError
from pathseg.sample import IGNORE_INDEX, Sample, make_sample


@DATASETS.register("nuclei_patches")
class NucleiPatches(SegmentationDataset):
    """Binary nuclei masks from several datasets, cut into non-overlapping zero-padded tiles.

    Options:
        sources: list of ``{dataset: name, options: {...}}``; every one must be a nuclei dataset
            (classes background, nucleus). ``split`` is passed to each.
        patch: tile side in px (512 as published); 0 keeps whole images.
        macenko: path to a target image to Macenko-normalise every image to (None = off).
        pad_mask_ignore: padded pixels get ``IGNORE_INDEX`` instead of background.
        keep_instances: pass instance maps on (only when every source has them; MoNuSeg train has
            binary masks only), else ``instances`` is None.

    Example:
        >>> ds = NucleiPatches(sources=[{"dataset": "synthetic", "options": {"task": "nuclei", "n_images": 1,
        ...                              "size": 80}}], patch=64)
        >>> len(ds), ds[3]["image"].shape
        (4, (64, 64, 3))
    """

    name = "nuclei_patches"
    class_names = ["background", "nucleus"]

    def __init__(self, root: Any = None, split: str = "train", *, sources: list[dict[str, Any]] | None = None,
                 patch: int = 512, macenko: str | None = None, pad_mask_ignore: bool = False,
                 keep_instances: bool = False) -> None:
        self.root = None  # type: ignore[assignment]
        if not sources:
            raise ConfigError("nuclei_patches: give data.options.sources, e.g. [{dataset: monuseg}, "
                              "{dataset: synthetic, options: {task: nuclei}}]")
        if patch < 0:
            raise ConfigError(f"nuclei_patches: patch must be ≥ 0 px, got {patch}")
        self.patch, self.pad_mask_ignore, self.split = int(patch), bool(pad_mask_ignore), split
        self.keep_instances = bool(keep_instances)
        self.datasets: list[SegmentationDataset] = []
        for src in sources:
            if not isinstance(src, dict) or "dataset" not in src:
                raise ConfigError(f"nuclei_patches: each source needs a 'dataset' key, got {src!r}")
            ds = DATASETS.get(src["dataset"])(split=split, **dict(src.get("options") or {}))
            if len(ds.class_names) != 2:
                raise ConfigError(f"nuclei_patches: source {src['dataset']!r} has classes {ds.class_names}; expected "
                                  "a binary nuclei dataset (background, nucleus), e.g. synthetic with task: nuclei")
            self.datasets.append(ds)
        self.stain_normalizer = None  # saved in checkpoints, so prediction normalises the same way
        if macenko:
            from pathseg.io.files import read_image
            from pathseg.transforms.stain import MacenkoNormalizer

            self.stain_normalizer = MacenkoNormalizer().fit(read_image(macenko), reference=str(macenko))
        self.index: list[tuple[int, int, int, int]] = []  # (dataset, image, y, x)
        self.ids = []
        self._last: tuple[tuple[int, int], Sample] | None = None
        for d, ds in enumerate(self.datasets):
            for i in range(len(ds)):
                h, w = self._size(ds, i)
                step_h, step_w = (self.patch or h), (self.patch or w)
                for y in range(0, h, step_h):
                    for x in range(0, w, step_w):
                        self.index.append((d, i, y, x))
                        self.ids.append(f"{ds.name}:{ds.ids[i]}:{y}:{x}")

    def _size(self, ds: SegmentationDataset, i: int) -> tuple[int, int]:
        size = getattr(ds, "size", None)
        if isinstance(size, int):
            return size, size
        s = self._image(ds, i)
        return s["image"].shape[:2]

    def _image(self, ds: SegmentationDataset, i: int) -> Sample:
        key = (id(ds), i)
        if self._last is None or self._last[0] != key:
            self._last = (key, ds[i])
        return self._last[1]

    def load(self, k: int) -> Sample:
        d, i, y, x = self.index[k]
        s = self._image(self.datasets[d], i)
        img, mask, inst = s["image"], s["mask"], s["instances"]
        if self.stain_normalizer is not None:
            img = self.stain_normalizer.transform(img)
        if self.patch:
            p = self.patch
            fill = IGNORE_INDEX if self.pad_mask_ignore else 0
            out_img = np.zeros((p, p, 3), np.uint8)
            out_mask = np.full((p, p), fill, np.int64)
            out_inst = np.zeros((p, p), np.int32) if inst is not None else None
            h, w = min(p, img.shape[0] - y), min(p, img.shape[1] - x)
            out_img[:h, :w] = img[y:y + h, x:x + w]
            out_mask[:h, :w] = mask[y:y + h, x:x + w]
            if inst is not None:
                out_inst[:h, :w] = inst[y:y + h, x:x + w]
            img, mask, inst = out_img, out_mask, out_inst
        meta = s["meta"]
        # instances only when every source has them (mixed batches must collate)
        return make_sample(img, mask, id=self.ids[k], instances=inst if self.keep_instances else None, source=meta.get("source", ""),
                           mpp=meta.get("mpp"), num_classes=2)
