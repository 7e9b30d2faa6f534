"""Pseudo masks: from Grad-CAMs to label maps on disk, and back into training as a dataset.

Writing (``pathseg pseudo-masks``, :func:`write_pseudo_masks`): for every training patch, the Grad-CAM
of each layer (:mod:`~pathseg.methods.weak.gradcam`) is upsampled bilinearly to the patch size and
turned into a label map: the argmax over the classes present in the patch's label (a patch with one
class is that class everywhere). Optionally, white glass (every RGB channel >= ``white_threshold``,
the authors' LUAD-HistoSeg step) becomes ``IGNORE_INDEX``. Files::

    out/<layer>/<patch id>.png     8-bit label map (class index; 255 = ignore), layer in mid/late/final
    out/pseudo_masks.json          class names, layers, classifier checkpoint, count

Reading (dataset ``pseudo_masks``, :class:`~pathseg.data.pseudo_masks.PseudoMaskDataset`, in the data
layer so every dataset registers together): wraps the dataset the masks were
written from; its training split returns the patch with the three layers' masks packed into the one
``mask`` array (so every paired transform moves them together, nearest-neighbour):

    packed = final + 256 · late + 65536 · mid            (:func:`pack_masks` / :func:`unpack_masks`)

A pixel that is ``IGNORE_INDEX`` in the final layer is ignored in all three (white glass is shared,
and a crop's padding fills ``IGNORE_INDEX`` = 255 + 0 + 0). Other splits pass through unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pathseg.data.base import SegmentationDataset
from pathseg.data.pseudo_masks import INDEX_FILE, PseudoMaskDataset, pack_masks, unpack_masks  # noqa: F401
from pathseg.errors import ConfigError, DataError
from pathseg.methods.weak.gradcam import LAYERS, layer_grad_cams
from pathseg.sample import IGNORE_INDEX


# -- label maps -----------------------------------------------------------------------------------
def pseudo_label_map(maps: torch.Tensor, labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Argmax of the bilinearly upsampled maps over each patch's labelled classes.

    A patch whose label is empty falls back to all classes.

    Shape: maps (B, K, h, w); labels (B, K) 0/1 -> (B, H, W) int64.
    """
    up = F.interpolate(maps.float(), size=tuple(size), mode="bilinear", align_corners=False)
    present = labels > 0.5
    present = torch.where(present.any(1, keepdim=True), present, torch.ones_like(present))
    up = up.masked_fill(~present[..., None, None], float("-inf"))
    return up.argmax(1)


def white_mask(image: np.ndarray, threshold: int | None) -> np.ndarray | None:
    """Boolean (H, W): pixels whose every channel is >= ``threshold`` (None: no white handling)."""
    if threshold is None:
        return None
    return (np.asarray(image) >= threshold).all(-1)


# -- writing --------------------------------------------------------------------------------------
def write_pseudo_masks(
    checkpoint: str | os.PathLike,
    dataset: SegmentationDataset,
    out: str | os.PathLike,
    *,
    batch_size: int = 16,
    white_threshold: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Write the three layers' pseudo masks of every patch of ``dataset`` (which must carry labels).

    Resumable: patches whose three files exist are skipped unless ``overwrite``.
    Returns ``{"out", "written", "skipped", "layers"}``.
    """
    from pathseg.models.checkpoint import load_model
    from pathseg.io.files import write_image, write_json
    from pathseg.transforms import to_tensor

    model, info = load_model(checkpoint)
    if info["model"] != "cam":
        raise ConfigError(f"{checkpoint}: pseudo masks need the phase-1 classifier (model cam), not {info['model']!r}")
    if list(info["class_names"]) != list(dataset.class_names):
        raise ConfigError(f"{checkpoint}: classifier classes {info['class_names']} differ from the dataset's "
                          f"{dataset.class_names}; write pseudo masks with the dataset it was trained on")
    out = Path(out)
    written = skipped = 0
    todo = [i for i in range(len(dataset))
            if overwrite or not all((out / layer / f"{dataset.ids[i]}.png").exists() for layer in LAYERS)]
    skipped = len(dataset) - len(todo)
    for start in range(0, len(todo), batch_size):
        idx = todo[start:start + batch_size]
        samples = [dataset[i] for i in idx]
        if any(s["labels"] is None for s in samples):
            raise DataError(f"{dataset.name}: patch {samples[0]['meta']['id']} has no labels; pseudo masks need "
                            "patch-level labels (bcss_wsss, luad_histoseg, patch_labels)")
        sizes = {s["image"].shape[:2] for s in samples}
        groups = [[k for k, s in enumerate(samples) if s["image"].shape[:2] == hw] for hw in sizes]
        for g in groups:
            x = torch.stack([to_tensor({"image": samples[k]["image"]})["image"] for k in g])
            y = torch.stack([torch.as_tensor(samples[k]["labels"]) for k in g])
            maps, _ = layer_grad_cams(model, x)
            label_maps = {n: pseudo_label_map(m, y, x.shape[-2:]).numpy().astype(np.uint8) for n, m in maps.items()}
            for b, k in enumerate(g):
                s = samples[k]
                white = white_mask(s["image"], white_threshold)
                for layer in LAYERS:
                    lm = label_maps[layer][b]
                    if white is not None:
                        lm = np.where(white, IGNORE_INDEX, lm).astype(np.uint8)
                    write_image(out / layer / f"{s['meta']['id']}.png", lm)
                written += 1
        if progress:
            print(f"pseudo masks: {min(start + batch_size, len(todo))}/{len(todo)}", flush=True)
    write_json(out / INDEX_FILE, {"class_names": list(dataset.class_names), "layers": list(LAYERS),
                                  "checkpoint": str(checkpoint), "patches": len(dataset),
                                  "white_threshold": white_threshold})
    return {"out": str(out), "written": written, "skipped": skipped, "layers": list(LAYERS)}
