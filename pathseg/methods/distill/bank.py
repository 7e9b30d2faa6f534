"""Building the cell bank (:class:`pathseg.data.cell_bank.CellBank`) from images, nuclei and QuPath exports.

A cell bank (one ``.npz``) holds, for every segmented nucleus of a set of images: its patches
(``size`` px at each of ``scales``), the image id, centroid, and up to three label vectors, each -1 where
unknown: ``weak`` (from a tool, e.g. a QuPath classifier), ``expert`` (few, trusted) and ``truth`` (for
evaluation only: synthetic data or a fully checked test set). :func:`build_cell_bank` makes one from
images, instance maps and QuPath GeoJSON exports (:mod:`.matching`: a nucleus nobody annotated is unknown,
-1, never a target of the teacher or the fine-tuning; the student still sees its patch, labelled by the
teacher). Nuclei are segmented by :class:`NucleusSegmenter`, which applies the checkpoint's stain
normalisation as ``pathseg predict`` does; patches are cut from the original image.
:class:`~pathseg.data.cell_bank.CellBankDataset` serves a bank to the training driver.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pathseg.data.cell_bank import CellBank
from pathseg.errors import DataError
from pathseg.transforms.paired import IMAGENET_MEAN, IMAGENET_STD


def bank_from_instances(
    items: Sequence[tuple[str, np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    *,
    weak: dict[str, np.ndarray] | None = None,
    expert: dict[str, np.ndarray] | None = None,
    truth: dict[str, np.ndarray] | None = None,
    size: int = 32,
    scales: Sequence[float] = (1.0, 0.5, 0.25),
) -> CellBank:
    """A bank from ``(image id, RGB image, instance map)`` triples and per-image label vectors.

    ``weak[id]`` etc. give the class index of each nucleus 1..N of that image's map (-1 = unknown).
    """
    from .instances import instance_centroids, nucleus_patches

    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("patches", "ids", "nuc", "cent", "weak", "expert", "truth")}
    for image_id, image, inst in items:
        cent = instance_centroids(inst)
        n = len(cent)
        parts["patches"].append(nucleus_patches(image, cent, size=size, scales=scales))
        parts["ids"].append(np.array([image_id] * n, dtype=str))
        parts["nuc"].append(np.arange(1, n + 1, dtype=np.int64))
        parts["cent"].append(cent)
        for key, src in (("weak", weak), ("expert", expert), ("truth", truth)):
            v = (src or {}).get(image_id)
            if v is not None and len(v) != n:
                raise DataError(f"{image_id}: {len(v)} {key} labels for {n} nuclei")
            parts[key].append(np.full(n, -1, np.int64) if v is None else np.asarray(v, np.int64))
    if not parts["patches"]:
        raise DataError("no images given to build a cell bank from")
    return CellBank(patches=np.concatenate(parts["patches"]), class_names=list(class_names), scales=list(scales),
                    image_ids=np.concatenate(parts["ids"]), nucleus_ids=np.concatenate(parts["nuc"]),
                    centroids=np.concatenate(parts["cent"]).reshape(-1, 2), weak=np.concatenate(parts["weak"]),
                    expert=np.concatenate(parts["expert"]), truth=np.concatenate(parts["truth"]))


class NucleusSegmenter:
    """A phase-I nuclei checkpoint used as ``pathseg predict`` uses it.

    Each image is recoloured with the checkpoint's fitted stain normaliser (``info["stain"]``, tiles
    with too little tissue left unchanged; ``stain_norm=False`` or a checkpoint without one: off),
    normalised with the checkpoint's mean/std, and segmented; nuclei are the components of the
    class-1 (nucleus) pixels of the argmax, optionally split by watershed (:func:`.instances.label_instances`).

    Shape:
        __call__(image (H, W, 3) uint8) -> int32 (H, W), 0 = background, 1..N.

    Example:
        >>> seg = NucleusSegmenter.load("runs/distill/nuclei_unet/model.ckpt")  # doctest: +SKIP
        >>> inst = seg(image, split_touching=True)                               # doctest: +SKIP
    """

    def __init__(self, model: torch.nn.Module, info: dict[str, Any], *, stain: Any = None) -> None:
        self.model, self.info, self.stain = model, info, stain

    @classmethod
    def load(cls, checkpoint: str | Path, *, stain_norm: bool = True) -> "NucleusSegmenter":
        from pathseg.models.checkpoint import load_model
        from pathseg.transforms.stain import normalizer_from_state

        model, info = load_model(checkpoint)
        stain = normalizer_from_state(info.get("stain"), checkpoint, fallback="identity") if stain_norm else None
        return cls(model, info, stain=stain)

    def model_input(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (1, 3, H, W) float32: stain-normalised (when on), scaled to 0..1, mean/std."""
        from pathseg.models.predict import to_model_input

        if self.stain is not None:
            image = self.stain.transform(image)
        return to_model_input(image, self.info.get("mean", IMAGENET_MEAN), self.info.get("std", IMAGENET_STD))

    def __call__(self, image: np.ndarray, *, split_touching: bool = False, min_size: int = 4) -> np.ndarray:
        from pathseg.methods.base import predict_logits

        from .instances import label_instances

        with torch.inference_mode():
            pred = predict_logits(self.model, self.model_input(image), channels_last=False).argmax(1)[0].numpy()
        return label_instances(pred == 1, split_touching=split_touching, min_size=min_size)


def build_cell_bank(
    images: Sequence[Path],
    checkpoint: "str | Path | NucleusSegmenter | None",
    class_names: Sequence[str],
    *,
    instances_dir: Path | None = None,
    weak_dir: Path | None = None,
    expert_dir: Path | None = None,
    truth_dir: Path | None = None,
    size: int = 32,
    scales: Sequence[float] = (1.0, 0.5, 0.25),
    split_touching: bool = False,
    min_overlap: float = 0.3,
    max_distance: float = 6.0,
    stain_norm: bool = True,
) -> CellBank:
    """Segment each image with a phase-I checkpoint, cut nucleus patches, match QuPath labels.

    ``checkpoint`` is a phase-I checkpoint path or a loaded :class:`NucleusSegmenter`. Segmentation
    applies the checkpoint's stain normalisation (``stain_norm=False``: off, for a path); patches are
    cut from the original image, as ``pathseg cells`` cuts them.
    Label folders hold ``<image stem>.geojson`` (a missing file leaves that image's labels unknown);
    a nucleus no annotation in the file claims is unknown too (-1, :func:`.matching.match_cells`).
    ``instances_dir`` (``<image stem>.png``, 16-bit ids) replaces the segmentation where a file exists,
    e.g. to build a bank on reference nuclei; ``checkpoint`` may then be None.
    """
    from pathseg.io.files import read_image

    from .matching import match_cells, read_cells

    segmenter = (checkpoint if isinstance(checkpoint, NucleusSegmenter) or checkpoint is None
                 else NucleusSegmenter.load(checkpoint, stain_norm=stain_norm))
    items, labels = [], {"weak": {}, "expert": {}, "truth": {}}
    for path in images:
        image = read_image(path)
        given = Path(instances_dir) / f"{path.stem}.png" if instances_dir is not None else None
        if given is not None and given.is_file():
            from .instances import _clean

            inst = _clean(np.asarray(read_image(given, mode=None)).astype(np.int32), 1)
        elif segmenter is None:
            raise DataError(f"{path.stem}: no instance map in {instances_dir} and no segmenter checkpoint given")
        else:
            inst = segmenter(image, split_touching=split_touching)
        items.append((path.stem, image, inst))
        for key, folder in (("weak", weak_dir), ("expert", expert_dir), ("truth", truth_dir)):
            if folder is None:
                continue
            gj = Path(folder) / f"{path.stem}.geojson"
            if gj.is_file():
                labels[key][path.stem] = match_cells(inst, read_cells(gj), class_names, min_overlap=min_overlap,
                                                     max_distance=max_distance)
    return bank_from_instances(items, class_names, size=size, scales=scales, **labels)


def balanced_subset(labels: np.ndarray, per_class: int, *, classes: Sequence[int] | None = None,
                    seed: int = 0) -> np.ndarray:
    """Indices of ``per_class`` random cells of each class (all of a class when it has fewer).

    Shape:
        labels (N,) int (-1 = unknown) -> int64 indices (≤ per_class · classes,), sorted.
    """
    rng = np.random.default_rng(seed)
    classes = sorted(set(int(c) for c in labels if c >= 0)) if classes is None else list(classes)
    picks = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        picks.append(rng.permutation(idx)[:per_class])
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, np.int64)
