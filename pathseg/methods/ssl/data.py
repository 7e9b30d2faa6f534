"""Unlabelled multi-resolution pairs for pretraining: slides and plain images, read by MPP, labels never read.

A *source* is a whole-slide file, a plain image, or a folder of either, optionally with an MPP for files
that do not record one (MoNuSeg tiles: 0.25, GlaS: 0.62)::

    sources: ["../shared/data/slides", {path: "../shared/data/monuseg2018/train/images", mpp: 0.25}]

Each item is one :class:`pathseg.io.tiling.PairSpec` pair (a context patch at ``context_mpp`` and its
``per_side**2`` target patches at ``target_mpp``), read with :func:`pathseg.io.tiling.read_pair`. Pairs are
drawn from :func:`pathseg.io.tiling.paired_grid` (restricted to tissue on slides, via
:func:`pathseg.io.tissue.detect_tissue`) and shifted by a random offset of up to half a block (kept inside
the image), then every patch is augmented twice with SimSiam's default augmentations:
random resized crop (scale 0.2-1), flip, colour jitter (0.4, 0.4, 0.4, 0.1) with p 0.8, greyscale p 0.2,
Gaussian blur p 0.5.

Shape: item ``{"context": (2, 3, Sc, Sc), "targets": (2, m, 3, St, St)}`` float32, ImageNet-normalised.

Fine-tuning should read a dataset at the resolution its encoder learned from: every source is resampled
to ``target_mpp`` (and ``context_mpp``) here, whatever its own MPP, so fine-tune at that MPP too.
:func:`finetune_scale` gives the resize factor for a dataset (GlaS, 0.62 µm/px, at 0.5: x1.24), and
:func:`check_resolution` compares a fine-tuning MPP with a pretraining record (``encoder.json``).
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pathseg.errors import DataError
from pathseg.io.slides import SMALL_LEVEL_PIXELS
from pathseg.io.tiling import PairSpec, TilePair, paired_grid, read_pair

#: SimSiam's default colour augmentations, in pathseg transform names (the crop and flip are done here)
SIMSIAM_AUGMENT: list[dict[str, Any]] = [
    {"name": "color_jitter", "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1, "p": 0.8},
    {"name": "grayscale", "p": 0.2},
    {"name": "blur", "p": 0.5, "sigma": [0.1, 2.0]},
]
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: Readers kept open: this many slides, and small images up to this many pixels in all (~0.8 GB decoded).
OPEN_SLIDES = 5
OPEN_IMAGE_PIXELS = 256 * 1024 * 1024


def expand_sources(sources: list[str | dict[str, Any]]) -> list[dict[str, Any]]:
    """``[{"path": file, "mpp": float | None}]`` for every file named or inside a named folder (sorted)."""
    from pathseg.io.slides import OPENSLIDE_SUFFIXES

    out: list[dict[str, Any]] = []
    for s in sources:
        spec = {"path": s} if isinstance(s, (str, os.PathLike)) else dict(s)
        if "path" not in spec:
            raise DataError(f"pretraining source {s!r}: expected a path or {{path: ..., mpp: ...}}")
        path = Path(spec["path"]).expanduser()
        if not path.exists():
            raise DataError(f"pretraining source {path}: not found; pass slides, images or folders of them")
        files = [path] if path.is_file() else sorted(
            p for p in path.iterdir() if p.name.lower().endswith(_IMAGE_SUFFIXES + OPENSLIDE_SUFFIXES)
            and not p.name.startswith(".") and not p.stem.endswith("_anno"))
        out += [{"path": str(f), "mpp": spec.get("mpp")} for f in files]
    if not out:
        raise DataError(f"no slides or images in the pretraining sources {sources}")
    return out


def pretrained_mpp(record: str | os.PathLike | dict[str, Any], branch: str = "target") -> float:
    """The µm/px a branch was pretrained at: ``trained_on.pair.<branch>_mpp`` of ``encoder.json`` (path or dict)."""
    import json

    rec = record if isinstance(record, dict) else json.loads(Path(record).read_text())
    try:
        return float(rec["trained_on"]["pair"][f"{branch}_mpp"])
    except (KeyError, TypeError) as e:
        raise DataError(f"pretraining record: no trained_on.pair.{branch}_mpp ({e}); pass the encoder.json "
                        "that `pathseg pretrain` wrote beside the weights") from e


def finetune_scale(native_mpp: float, pretrained: float) -> float:
    """Resize factor that brings images at ``native_mpp`` µm/px to ``pretrained`` µm/px: native / pretrained.

    Example:
        >>> round(finetune_scale(0.62, 0.5), 4), finetune_scale(0.25, 0.5)   # GlaS; MoNuSeg (40x)
        (1.24, 0.5)
    """
    if not (native_mpp > 0 and pretrained > 0):
        raise DataError(f"resolutions must be positive µm/px, got native {native_mpp}, pretrained {pretrained}")
    return float(native_mpp) / float(pretrained)


def check_resolution(record: str | os.PathLike | dict[str, Any], mpp: float, *, branch: str = "target",
                     rtol: float = 0.05) -> None:
    """Raise unless ``mpp`` (the fine-tuning resolution) is within ``rtol`` of the branch's pretraining MPP."""
    from pathseg.errors import ConfigError

    want = pretrained_mpp(record, branch)
    if abs(float(mpp) - want) > rtol * want:
        raise ConfigError(f"fine-tuning at {mpp:g} µm/px an encoder pretrained at {want:g} µm/px ({branch} branch); "
                          f"resize the images by x{finetune_scale(mpp, want):.3g} "
                          "(pathseg.methods.ssl.data.finetune_scale) so both read the tissue at the same resolution")


class RandomResizedCrop:
    """SimSiam's crop: area fraction in ``scale``, aspect ratio in ``ratio`` (log-uniform), resized to ``size``."""

    def __init__(self, size: int, scale: tuple[float, float] = (0.2, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)):
        self.size, self.scale, self.ratio = int(size), scale, ratio

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        import cv2

        h, w = img.shape[:2]
        for _ in range(10):
            area = h * w * rng.uniform(*self.scale)
            ar = float(np.exp(rng.uniform(np.log(self.ratio[0]), np.log(self.ratio[1]))))
            cw, ch = int(round(np.sqrt(area * ar))), int(round(np.sqrt(area / ar)))
            if 0 < cw <= w and 0 < ch <= h:
                x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                break
        else:
            cw, ch, x, y = w, h, 0, 0
        return cv2.resize(img[y:y + ch, x:x + cw], (self.size, self.size), interpolation=cv2.INTER_LINEAR)


class UnlabeledPairs(Dataset):
    """Random context/target pairs from unlabelled slides and images, two augmented views of every patch.

    Args:
        sources: see the module docstring.
        spec: context/target sizes and resolutions (``PairSpec``), or a dict of its fields.
        length: items per pass (the loader draws ``max_steps * batch_size``).
        augment: colour transforms (pathseg names) after the crop and flip; default :data:`SIMSIAM_AUGMENT`.
        crop_scale: the random resized crop's area range.
    """

    def __init__(self, sources: list[str | dict[str, Any]], spec: PairSpec | dict[str, Any], *, length: int = 1000,
                 augment: list[dict[str, Any]] | None = None, crop_scale: tuple[float, float] = (0.2, 1.0),
                 tissue: str = "saturation") -> None:
        from pathseg.io.slides import is_slide_file
        from pathseg.io.tissue import detect_tissue
        from pathseg.transforms import build_transforms

        self.spec = spec if isinstance(spec, PairSpec) else PairSpec(**spec)
        self.files = expand_sources(sources)
        self.length = int(length)
        self.colour = build_transforms(SIMSIAM_AUGMENT if augment is None else augment)
        self.crop_t = RandomResizedCrop(self.spec.target_size, tuple(crop_scale))
        self.crop_c = RandomResizedCrop(self.spec.context_size, tuple(crop_scale))
        self._readers: dict[int, Any] = {}
        self.pairs: list[list[TilePair]] = []
        self.extent: list[tuple[float, float, float]] = []  # (w0, h0, block in level-0 px)
        for i, f in enumerate(self.files):
            slide = self._reader(i)
            mask = detect_tissue(slide, tissue) if is_slide_file(f["path"]) else None
            pairs = paired_grid(slide, self.spec, tissue=mask)
            self.pairs.append(pairs)
            w0, h0 = slide.dimensions
            self.extent.append((w0, h0, self.spec.block_um / slide.mpp))
            f["mpp_from"] = "config" if f.get("mpp") else "metadata"
            f["pairs"], f["mpp"], f["size"] = len(pairs), float(slide.mpp), [int(w0), int(h0)]
        self.weights = np.array([len(p) for p in self.pairs], dtype=np.float64)
        if self.weights.sum() == 0:
            raise DataError(f"no tissue pairs of {self.spec.block_um:g} µm in the pretraining sources; lower "
                            "data.options.pair.min_tissue or use smaller patches")
        self.weights /= self.weights.sum()

    def _reader(self, i: int):
        from pathseg.io.slides import open_slide

        if i not in self._readers:
            f = self.files[i]
            self._readers[i] = open_slide(f["path"], mpp_override=f.get("mpp"))
            self._evict(keep=i)
        return self._readers[i]

    def _evict(self, keep: int) -> None:
        """Close the oldest readers beyond :data:`OPEN_SLIDES` slides, or beyond :data:`OPEN_IMAGE_PIXELS` of
        small images (those stay decoded in memory, so a folder of tiles is decoded once, not once a draw)."""
        def pixels(k: int) -> int:
            w, h = self._readers[k].dimensions
            return int(w) * int(h)

        small = [k for k in self._readers if k != keep and pixels(k) <= SMALL_LEVEL_PIXELS]
        large = [k for k in self._readers if k != keep and k not in small]
        for k in large[:max(0, len(large) - OPEN_SLIDES + 1)]:
            self._readers.pop(k).close()
        total = sum(pixels(k) for k in small)
        for k in small:
            if total <= OPEN_IMAGE_PIXELS:
                break
            total -= pixels(k)
            self._readers.pop(k).close()

    def record(self) -> dict[str, Any]:
        """What these pairs come from: files (path, MPP, size, pairs) and the pair geometry."""
        return {"files": [{k: f[k] for k in ("path", "mpp", "mpp_from", "size", "pairs")} for f in self.files],
                "pair": asdict(self.spec)}

    def __len__(self) -> int:
        return self.length

    def draw(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One raw pair (uint8) at a random tissue position: ``{"context", "targets", "offsets"}``."""
        i = int(rng.choice(len(self.files), p=self.weights))
        pair = self.pairs[i][int(rng.integers(len(self.pairs[i])))]
        w0, h0, block = self.extent[i]
        bx, by = pair.target_origins[0]
        nx = float(np.clip(bx + rng.uniform(-0.5, 0.5) * block, 0, max(0.0, w0 - block)))
        ny = float(np.clip(by + rng.uniform(-0.5, 0.5) * block, 0, max(0.0, h0 - block)))
        dx, dy = nx - bx, ny - by
        shifted = TilePair(pair.index, (pair.context_origin[0] + dx, pair.context_origin[1] + dy),
                           tuple((x + dx, y + dy) for x, y in pair.target_origins), pair.target_offsets)
        return read_pair(self._reader(i), self.spec, shifted)

    def _views(self, patch: np.ndarray, crop: RandomResizedCrop, rng: np.random.Generator) -> list[torch.Tensor]:
        from pathseg.transforms import to_tensor

        out = []
        for _ in range(2):
            img = crop(patch, rng)
            if rng.random() < 0.5:
                img = img[:, ::-1]
            out.append(to_tensor(self.colour({"image": np.ascontiguousarray(img)}, rng))["image"])
        return out

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, ()).item()))
        raw = self.draw(rng)
        ctx = torch.stack(self._views(raw["context"], self.crop_c, rng))
        tg = [self._views(t, self.crop_t, rng) for t in raw["targets"]]
        targets = torch.stack([torch.stack([v[k] for v in tg]) for k in (0, 1)])
        return {"context": ctx, "targets": targets}

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers reopen files themselves
        state = dict(self.__dict__)
        state["_readers"] = {}
        return state
