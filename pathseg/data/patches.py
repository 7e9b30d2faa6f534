"""Patches for joint segmentation + classification (Ciga & Martel 2021): centred ground-truth
extraction, foreground filtering, and a dataset that mixes segmentation and classification patches.

Data preparation, as published:

* **Foreground**: HSV saturation under 10% of the maximum is background; holes are filled and the mask
  is opened (:class:`pathseg.io.tissue.SaturationTissueDetector`). A patch with under 75% foreground
  is dropped (:func:`foreground_mask`, ``min_foreground``).
* **Centred ground-truth extraction** (:func:`component_centres`): one patch centred on each labelled
  connected component (every non-background class, 8-connected). A component that does not fit in the
  patch (bounding box wider or taller than Δ, the patch side) is split by k-means on its pixel
  coordinates into ``k = ⌈1 + area / Δ²⌉`` parts (:func:`split_count`), one patch centred on each.
* **Classification patches** tile the classification images on a grid (stride ``cls_stride``); each
  takes the image-level class.
* **Stain**: every image is Macenko-normalised to one reference image from the training set.

:class:`SegClsPatches` (dataset ``"segcls_patches"``) wraps any registered dataset and gives

* ``split="train"``: segmentation patches (``mask`` = the pixel labels, ``labels`` = zeros) and, for the
  regimes with classification data, classification patches (``mask`` = all ``IGNORE_INDEX``,
  ``labels`` = one-hot image class over the segmentation classes);
* ``split="test"``: the held-out whole images (scaled and normalised like the training images).

Regimes (``regime``): ``S`` segmentation patches only; ``S+C`` segmentation images (a fraction
``seg_fraction`` of the training images) plus classification patches from all the others; ``S+C*``
segmentation images plus classification patches from every training image.

Example:
    >>> ds = SegClsPatches(base="synthetic", base_options={"n_images": 8, "size": 96}, patch_size=48,
    ...                    regime="S+C", seg_fraction=0.25, holdout=2)
    >>> s = ds[0]; s["image"].shape, s["meta"]["kind"]
    ((48, 48, 3), 'seg')
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from typing import Any

import numpy as np

from pathseg.data.base import DATASETS, SegmentationDataset
from pathseg.errors import ConfigError, DataError
from pathseg.sample import IGNORE_INDEX, Sample, make_sample

__all__ = [
    "REGIMES",
    "SegClsPatches",
    "component_centres",
    "crop",
    "foreground_mask",
    "grid_boxes",
    "holdout_ids",
    "kmeans",
    "patch_box",
    "segmentation_ids",
    "split_count",
]

REGIMES = ("S", "S+C", "S+C*")


# ---------------------------------------------------------------------------------------------
# centred ground-truth extraction


def split_count(area: int, size: int) -> int:
    """Number of patches for a component larger than the patch: ``⌈1 + area / Δ²⌉``.

    Example:
        >>> split_count(1200, 16)   # 1 + 1200/256 = 5.69
        6
    """
    return int(math.ceil(1 + area / float(size * size)))


def kmeans(points: np.ndarray, k: int, *, seed: int = 0, iters: int = 100,
           max_points: int | None = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding (deterministic for a seed).

    With more than ``max_points`` points the centres are fitted on a seeded sample of that many (the
    centres of pixel blobs barely move), and every point is then assigned to its nearest centre.

    Shape:
        points (N, D) -> centres (k, D) float64, assignment (N,) int64. ``k`` is capped at N.
    """
    all_pts = np.asarray(points, dtype=np.float64)
    n = len(all_pts)
    if n == 0:
        raise ValueError("kmeans: no points")
    k = max(1, min(int(k), n))
    rng = np.random.default_rng(seed)
    pts = all_pts
    if max_points is not None and n > max_points:
        pts = all_pts[np.sort(rng.choice(n, size=max_points, replace=False))]
        n = max_points
    centres = [pts[rng.integers(n)]]
    d2 = ((pts - centres[0]) ** 2).sum(1)
    for _ in range(1, k):
        total = d2.sum()
        i = int(rng.choice(n, p=d2 / total)) if total > 0 else int(rng.integers(n))
        centres.append(pts[i])
        d2 = np.minimum(d2, ((pts - pts[i]) ** 2).sum(1))
    c = np.stack(centres)
    sq = (pts**2).sum(1)[:, None]
    assign = np.full(n, -1, dtype=np.int64)
    for _ in range(iters):
        new = (sq - 2.0 * pts @ c.T + (c**2).sum(1)[None]).argmin(1)
        if np.array_equal(new, assign):
            break
        assign = new
        size = np.bincount(assign, minlength=k)
        for d in range(pts.shape[1]):
            tot = np.bincount(assign, weights=pts[:, d], minlength=k)
            c[:, d] = np.where(size > 0, tot / np.maximum(size, 1), c[:, d])
    if pts is not all_pts:
        assign = ((all_pts[:, None, :] - c[None]) ** 2).sum(-1).argmin(1)
    return c, assign


def component_centres(
    mask: np.ndarray,
    size: int,
    *,
    background: int | None = 0,
    ignore_index: int = IGNORE_INDEX,
    seed: int = 0,
) -> list[tuple[int, int, int]]:
    """Patch centres of centred ground-truth extraction: one per labelled connected component, or
    ``⌈1 + area/Δ²⌉`` k-means parts of a component that does not fit in a ``size`` x ``size`` patch.

    Components are 8-connected regions of one class; ``background`` and ``ignore_index`` pixels are
    not centred on. Centres are the (rounded) mean pixel coordinates of each component or part.

    Shape:
        mask (H, W) int -> list of ``(row, col, class)``, ordered by class, then component, then part.

    Example:
        >>> m = np.zeros((40, 40), int); m[2:6, 2:6] = 1; m[20:24, 30:34] = 2
        >>> component_centres(m, 16)
        [(4, 4, 1), (22, 32, 2)]
    """
    from scipy import ndimage

    mask = np.asarray(mask)
    out: list[tuple[int, int, int]] = []
    classes = [int(c) for c in np.unique(mask) if c != ignore_index and (background is None or c != background)]
    for cls in classes:
        lab, n = ndimage.label(mask == cls, structure=np.ones((3, 3), dtype=bool))
        if n == 0:
            continue
        slices = ndimage.find_objects(lab)
        for comp, sl in enumerate(slices, start=1):
            ys, xs = np.nonzero(lab[sl] == comp)
            ys, xs = ys + sl[0].start, xs + sl[1].start
            h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
            if h <= size and w <= size:
                out.append((int(round(ys.mean())), int(round(xs.mean())), cls))
                continue
            k = split_count(len(ys), size)
            centres, _ = kmeans(np.stack([ys, xs], 1), k, seed=seed + comp)
            out.extend((int(round(cy)), int(round(cx)), cls) for cy, cx in centres)
    return out


def patch_box(cy: int, cx: int, size: int, h: int, w: int) -> tuple[int, int]:
    """Top-left ``(y, x)`` of a ``size`` patch centred at ``(cy, cx)``, shifted to stay inside an
    ``h`` x ``w`` image (an image smaller than the patch is centred and padded by :func:`crop`)."""

    def axis(c: int, n: int) -> int:
        if n <= size:
            return -((size - n) // 2)
        return int(min(max(c - size // 2, 0), n - size))

    return axis(cy, h), axis(cx, w)


def grid_boxes(h: int, w: int, size: int, stride: int | None = None) -> list[tuple[int, int]]:
    """Top-left corners of a grid of ``size`` patches covering an ``h`` x ``w`` image (the last row and
    column are shifted in to end at the border)."""
    stride = stride or size

    def axis(n: int) -> list[int]:
        if n <= size:
            return [-((size - n) // 2)]
        starts = list(range(0, n - size + 1, stride))
        if starts[-1] != n - size:
            starts.append(n - size)
        return starts

    return [(y, x) for y in axis(h) for x in axis(w)]


def crop(a: np.ndarray, y: int, x: int, size: int, fill: int) -> np.ndarray:
    """``a[y:y+size, x:x+size]``; parts outside the array get ``fill``."""
    out = np.full((size, size) + a.shape[2:], fill, dtype=a.dtype)
    h, w = a.shape[:2]
    y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + size, h), min(x + size, w)
    if y1 > y0 and x1 > x0:
        out[y0 - y:y1 - y, x0 - x:x1 - x] = a[y0:y1, x0:x1]
    return out


def foreground_mask(rgb: np.ndarray, *, threshold: float = 0.1, opening_px: int = 5) -> np.ndarray:
    """Tissue foreground as published: HSV saturation >= ``threshold`` x maximum, holes filled, opened
    with a disc of diameter ``opening_px`` (via :class:`pathseg.io.tissue.SaturationTissueDetector`).

    Shape:
        rgb (H, W, 3) uint8 -> (H, W) bool.
    """
    from pathseg.io.tissue import SaturationTissueDetector

    det = SaturationTissueDetector(threshold, opening_um=float(opening_px), min_area_um2=0.0, mpp=1.0)
    return det(rgb, 1.0)


# ---------------------------------------------------------------------------------------------
# which images are held out, segmentation images or classification images


def holdout_ids(ids: list[str], classes: list[int], groups: list[str] | None, n: int, seed: int = 0) -> list[str]:
    """``n`` images held out for testing, balanced over image classes, whole groups (patients) at a time.

    Groups are visited in seeded order and taken when they do not overshoot any class's quota
    (``n / number of classes``); if grouping makes a quota unreachable, single images fill it.
    """
    if n <= 0:
        return []
    if n >= len(ids):
        raise DataError(f"holdout={n} leaves no training images out of {len(ids)}; hold out fewer")
    rng = np.random.default_rng(seed)
    labels = sorted(set(classes))
    order = [labels[i] for i in rng.permutation(len(labels))]
    quota = {c: n // len(labels) + (1 if j < n % len(labels) else 0) for j, c in enumerate(order)}
    groups = [g or f"__{i}" for i, g in enumerate(groups)] if groups else [f"__{i}" for i in range(len(ids))]
    members: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    names = sorted(members)
    taken: list[int] = []
    count = {c: 0 for c in labels}
    for gi in rng.permutation(len(names)):
        idx = members[names[gi]]
        add = {c: sum(classes[i] == c for i in idx) for c in labels}
        if all(count[c] + add[c] <= quota[c] for c in labels):
            taken += idx
            for c in labels:
                count[c] += add[c]
        if all(count[c] == quota[c] for c in labels):
            break
    rest = [i for i in rng.permutation(len(ids)) if i not in taken]
    for i in rest:
        if count[classes[i]] < quota[classes[i]]:
            taken.append(int(i))
            count[classes[i]] += 1
    return sorted((ids[i] for i in taken), key=ids.index)


def segmentation_ids(ids: list[str], classes: list[int], fraction: float, seed: int = 0) -> list[str]:
    """The ``⌈fraction · n⌉`` (at least 1) training images that keep their masks, drawn in seeded order
    round-robin over image classes (so 2 images cover 2 classes; 1 image's class is drawn at random)."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"seg_fraction must be in (0, 1], got {fraction}")
    k = max(1, min(len(ids), int(math.ceil(fraction * len(ids) - 1e-9))))
    rng = np.random.default_rng(seed)
    labels = sorted(set(classes))
    labels = [labels[i] for i in rng.permutation(len(labels))]
    pools = {c: [i for i in rng.permutation(len(ids)) if classes[i] == c] for c in labels}
    chosen: list[int] = []
    while len(chosen) < k:
        for c in labels:
            if pools[c] and len(chosen) < k:
                chosen.append(int(pools[c].pop(0)))
    return sorted((ids[i] for i in chosen), key=ids.index)


# ---------------------------------------------------------------------------------------------
# the dataset

_PREPARED: OrderedDict = OrderedDict()  # a few prepared image sets, shared by the train and test views


@DATASETS.register("segcls_patches")
class SegClsPatches(SegmentationDataset):
    """Segmentation patches (centred extraction) mixed with classification patches, from any dataset.

    Options:
        base, base_options, base_split: the wrapped dataset (``DATASETS`` name), its options and split.
        regime: ``"S"``, ``"S+C"`` or ``"S+C*"``.
        seg_fraction: fraction of training images used as segmentation images (⌈fraction·n⌉, ≥ 1).
        split_seed: seed of the segmentation-image draw.
        holdout: images held out for ``split="test"`` (balanced over image classes, whole
            ``meta["source"]`` groups when possible); holdout_seed: its seed.
        seg_ids, cls_ids, test_ids: explicit id lists instead of the draws above.
        label_classes: class index of each entry of the base ``labels`` vector (GlaS grade view:
            ``[1, 2]``); ``None`` = the most frequent non-background class of the image's mask.
        patch_size (Δ), scale (resize factor applied first), cls_stride (grid stride of
            classification patches, default Δ), min_foreground (0.75), saturation (0.1), opening_px.
        stain: ``"macenko"`` or ``None``; stain_reference: id of the reference image (default: the
            first training image). The fitted normaliser is ``stain_normalizer`` (None when off).
        seg_share: ``None`` (published: batches draw uniformly from the pooled patches, so their mix
            follows the patch counts) or the expected share of segmentation patches in a batch, made by
            repeating the scarcer kind of patch a whole number of times.
    """

    name = "segcls_patches"
    download_hint = "segcls_patches wraps another dataset: set data.options.base to a dataset name."

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str = "train",
        *,
        base: str = "synthetic",
        base_options: dict[str, Any] | None = None,
        base_split: str = "train",
        regime: str = "S+C",
        seg_fraction: float = 1.0,
        split_seed: int = 0,
        holdout: int = 0,
        holdout_seed: int = 0,
        seg_ids: list[str] | None = None,
        cls_ids: list[str] | None = None,
        test_ids: list[str] | None = None,
        label_classes: list[int] | None = None,
        patch_size: int = 128,
        scale: float = 1.0,
        cls_stride: int | None = None,
        min_foreground: float = 0.75,
        saturation: float = 0.1,
        opening_px: int = 5,
        stain: str | None = "macenko",
        stain_reference: str | None = None,
        seg_share: float | None = None,
    ) -> None:
        if regime not in REGIMES:
            raise ConfigError(f"segcls_patches: regime must be one of {', '.join(REGIMES)}, got {regime!r}")
        if split not in ("train", "test", "val"):
            raise ConfigError(f"segcls_patches: split must be 'train' or 'test' (held-out images), got {split!r}")
        if patch_size < 8 or not scale > 0 or not 0 <= min_foreground <= 1:
            raise ConfigError(
                f"segcls_patches: need patch_size >= 8, scale > 0 and 0 <= min_foreground <= 1; got "
                f"{patch_size}, {scale}, {min_foreground}"
            )
        if seg_share is not None and not 0 < seg_share < 1:
            raise ConfigError(f"segcls_patches: seg_share must be in (0, 1) or null, got {seg_share}")
        if stain not in (None, "macenko", "none"):
            raise ConfigError(f"segcls_patches: stain must be 'macenko' or null, got {stain!r}")
        self.root = None  # type: ignore[assignment]
        self.split, self.regime, self.size = split, regime, int(patch_size)
        opts = dict(base_options or {})
        if root is not None:
            opts.setdefault("root", root)
        self.base = DATASETS.get(base)(split=base_split, **opts)
        self.class_names = list(self.base.class_names)
        self.label_classes = None if label_classes is None else [int(c) for c in label_classes]
        self.min_foreground, self.saturation = float(min_foreground), float(saturation)
        self.opening_px = int(opening_px)

        key = (base, repr(sorted(opts.items())), base_split, float(scale))
        raw = _cached(key, lambda: self._load_all(float(scale)))
        all_ids = list(raw)
        image_class = {sid: self._image_class(raw[sid]) for sid in all_ids}

        if test_ids is None:
            srcs = [raw[sid]["meta"].get("source", "") for sid in all_ids]
            test_ids = holdout_ids(all_ids, [image_class[s] for s in all_ids], srcs, int(holdout), holdout_seed)
        _check_ids(test_ids, all_ids, "test_ids")
        train_ids = [s for s in all_ids if s not in set(test_ids)]
        if seg_ids is None:
            seg_ids = segmentation_ids(train_ids, [image_class[s] for s in train_ids], seg_fraction, split_seed)
        _check_ids(seg_ids, train_ids, "seg_ids (must not be held out)")
        if cls_ids is None:
            cls_ids = [s for s in train_ids if s not in set(seg_ids)] if regime == "S+C" else list(train_ids)
        _check_ids(cls_ids, train_ids, "cls_ids (must not be held out)")
        if regime == "S":
            cls_ids = []
        self.test_ids, self.seg_ids, self.cls_ids = list(test_ids), list(seg_ids), list(cls_ids)
        self.train_ids = train_ids

        ref_id = stain_reference or train_ids[0]
        if ref_id not in raw:
            raise DataError(f"segcls_patches: stain_reference {ref_id!r} is not an image of {base}/{base_split}")
        self.stain_reference = ref_id if stain == "macenko" else None
        norm = None
        if self.stain_reference:
            from pathseg.transforms.stain import MacenkoNormalizer

            norm = MacenkoNormalizer(fallback="identity").fit(raw[ref_id]["image"], reference=f"{base}:{ref_id}")
        self.stain_normalizer = norm  # saved in checkpoints, so prediction normalises the same way
        stain_key = key + (self.stain_reference,)

        def prep(sid: str) -> dict[str, Any]:
            s = raw[sid]
            return {**s, "image": norm.transform(s["image"]) if norm is not None else s["image"]}

        images = _cached(stain_key, lambda: {})
        need = self.test_ids if split != "train" else sorted(set(self.seg_ids) | set(self.cls_ids), key=all_ids.index)
        for sid in need:
            if sid not in images:
                images[sid] = prep(sid)
        if split != "train":
            if not self.test_ids:
                raise DataError("segcls_patches: split 'test' holds the held-out images, but none are held out; "
                                "set data.options.holdout (e.g. 6) or test_ids")
            self.items = [("image", sid, None, None) for sid in self.test_ids]
        else:
            self.items = _rebalance(self._patches(images, image_class, int(cls_stride or patch_size)), seg_share)
            if not self.items:
                raise DataError(
                    f"segcls_patches: no patch of {patch_size} px has {min_foreground:.0%} foreground; lower "
                    "min_foreground or patch_size, or check the images"
                )
        self._images = images
        self.ids = [f"{sid}@{kind}:{i}" if kind != "image" else sid for i, (kind, sid, _, _) in enumerate(self.items)]

    # -- preparation ------------------------------------------------------------------------------
    def _load_all(self, scale: float) -> dict[str, dict[str, Any]]:
        from pathseg.transforms import resize_pair

        out: dict[str, dict[str, Any]] = {}
        for i in range(len(self.base)):
            s = dict(self.base[i])
            if scale != 1.0:
                h, w = s["image"].shape[:2]
                s = resize_pair({"image": s["image"], "mask": s["mask"], "labels": s.get("labels"), "meta": s["meta"]},
                                max(1, round(h * scale)), max(1, round(w * scale)))
            mpp = s["meta"].get("mpp")
            meta = {**s["meta"], "mpp": None if mpp is None else mpp / scale}
            out[s["meta"]["id"]] = {"image": s["image"], "mask": s["mask"], "labels": s.get("labels"), "meta": meta}
        return out

    def _image_class(self, s: dict[str, Any]) -> int:
        """The image-level class of a base sample (see ``label_classes``)."""
        if self.label_classes is not None:
            lab = s.get("labels")
            if lab is None or len(lab) != len(self.label_classes) or not np.any(lab > 0):
                raise DataError(
                    f"segcls_patches: image {s['meta']['id']} has labels {lab} but label_classes has "
                    f"{len(self.label_classes)} entries; set label_classes to match the dataset's labels"
                )
            return self.label_classes[int(np.argmax(lab))]
        m = s["mask"]
        counts = np.bincount(m[(m != IGNORE_INDEX)].ravel(), minlength=self.num_classes)
        counts[0] = 0
        return int(counts.argmax()) if counts.any() else 0

    def _patches(self, images: dict[str, dict[str, Any]], image_class: dict[str, int], stride: int) -> list:
        items: list[tuple[str, str, tuple[int, int], int]] = []
        fg_cache: dict[str, np.ndarray] = {}

        def fg_ok(sid: str, y: int, x: int) -> bool:
            if self.min_foreground <= 0:
                return True
            if sid not in fg_cache:
                fg_cache[sid] = foreground_mask(images[sid]["image"], threshold=self.saturation,
                                                opening_px=self.opening_px)
            return float(crop(fg_cache[sid], y, x, self.size, 0).mean()) >= self.min_foreground

        for sid in self.seg_ids:
            m = images[sid]["mask"]
            for cy, cx, _ in component_centres(m, self.size):
                y, x = patch_box(cy, cx, self.size, *m.shape)
                if fg_ok(sid, y, x):
                    items.append(("seg", sid, (y, x), -1))
        for sid in self.cls_ids:
            h, w = images[sid]["image"].shape[:2]
            for y, x in grid_boxes(h, w, self.size, stride):
                if fg_ok(sid, y, x):
                    items.append(("cls", sid, (y, x), image_class[sid]))
        return items

    # -- access -----------------------------------------------------------------------------------
    @property
    def kinds(self) -> list[str]:
        """``"seg"``, ``"cls"`` or ``"image"`` for each item."""
        return [k for k, _, _, _ in self.items]

    def load(self, i: int) -> Sample:
        kind, sid, box, cls = self.items[i]
        src = self._images[sid]
        meta = src["meta"]
        labels = np.zeros(self.num_classes, np.float32)
        if kind == "image":
            img, mask = src["image"], src["mask"]
        else:
            y, x = box
            img = crop(src["image"], y, x, self.size, 255)
            if kind == "seg":
                mask = crop(src["mask"], y, x, self.size, IGNORE_INDEX)
            else:
                mask = np.full((self.size, self.size), IGNORE_INDEX, np.int64)
                labels[cls] = 1.0
        s = make_sample(img, mask, id=self.ids[i], labels=labels, source=meta.get("source", ""),
                        mpp=meta.get("mpp"), path=meta.get("path", ""))
        s["meta"].update({"kind": kind, "image": sid, "box": box})  # type: ignore[typeddict-unknown-key]
        return s

    def pixel_class_counts(self) -> np.ndarray:
        """Pixels of each class over the segmentation patches (for class weights).

        Shape: (num_classes,) int64.
        """
        counts = np.zeros(self.num_classes, np.int64)
        for i, (kind, *_rest) in enumerate(self.items):
            if kind != "cls":
                m = self.load(i)["mask"]
                counts += np.bincount(m[m != IGNORE_INDEX].ravel(), minlength=self.num_classes)[: self.num_classes]
        return counts

    def summary(self) -> dict[str, Any]:
        """Counts of images and (distinct) patches; ``seg_share`` = segmentation share of the draws."""
        kinds = self.kinds
        return {"regime": self.regime, "seg_images": len(self.seg_ids), "cls_images": len(self.cls_ids),
                "test_images": len(self.test_ids), "seg_patches": len({it for it in self.items if it[0] == "seg"}),
                "cls_patches": len({it for it in self.items if it[0] == "cls"}),
                "seg_share": round(kinds.count("seg") / max(1, len(kinds)), 3), "stain_reference": self.stain_reference}


def _rebalance(items: list, seg_share: float | None) -> list:
    """Repeat the segmentation or the classification patches so segmentation makes ~``seg_share`` of draws."""
    seg = [it for it in items if it[0] == "seg"]
    cls = [it for it in items if it[0] == "cls"]
    if seg_share is None or not seg or not cls:
        return items
    r = seg_share * len(cls) / ((1 - seg_share) * len(seg))
    if r >= 1:
        return seg * int(round(r)) + cls
    return seg + cls * max(1, int(round(1 / r)))


def _check_ids(ids: list[str], valid: list[str], what: str) -> None:
    bad = sorted(set(ids) - set(valid))
    if bad:
        raise DataError(f"segcls_patches: {what} lists ids that are not available: {bad[:5]}")


def _cached(key: tuple, build) -> Any:
    if key not in _PREPARED:
        _PREPARED[key] = build()
        while len(_PREPARED) > 4:
            _PREPARED.popitem(last=False)
    _PREPARED.move_to_end(key)
    return _PREPARED[key]
