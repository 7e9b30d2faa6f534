"""Prediction on plain images (tiles, ROIs): class-index label maps and overlays.

Whole slides go through :mod:`pathseg.inference` instead (tiling, stitching, pyramids).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pathseg.engine.checkpoint import load_model
from pathseg.io.files import IMAGE_SUFFIXES, read_image, write_image
from pathseg.methods.base import predict_logits


def colorize(labels: np.ndarray, colors: list[list[int]]) -> np.ndarray:
    """Class-index map (H, W) -> RGB (H, W, 3) with one colour per class; 255 (ignore) is black."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(colors)] = np.asarray(colors, np.uint8)
    return lut[labels.astype(np.uint8)]


def overlay(image: np.ndarray, labels: np.ndarray, colors: list[list[int]], alpha: float = 0.45,
            skip_class: int | None = 0) -> np.ndarray:
    """Blend class colours over an RGB image; ``skip_class`` (background) stays unblended."""
    col = colorize(labels, colors).astype(np.float32)
    out = image.astype(np.float32)
    m = np.ones(labels.shape, bool) if skip_class is None else labels != skip_class
    out[m] = (1 - alpha) * out[m] + alpha * col[m]
    return out.clip(0, 255).astype(np.uint8)


def normalise(image: np.ndarray, mean: list[float], std: list[float]) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1).div(255)
    return ((x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]).unsqueeze(0)


def stain_note(state: dict[str, Any]) -> str:
    """One line telling the user that prediction applies the model's training-time stain normalisation."""
    return (f"stain normalisation: {state['method']} to the training reference {state.get('reference')!r}, as in "
            "training (--no-stain-norm switches it off)")


def expand_inputs(inputs: list[Path]) -> list[Path]:
    """Files as given; folders expand to the images inside them (sorted)."""
    files: list[Path] = []
    for p in inputs:
        if p.is_dir():
            files += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES and not q.name.startswith("."))
        else:
            files.append(p)
    return files


def predict_images(paths: list[Path], checkpoint: Path, out: Path, *, scale: float | None = None,
                   stain_norm: bool = True, log: Callable[[str], Any] | None = None) -> list[dict[str, Any]]:
    """Write ``out/<stem>.png`` (class indices, uint8) and ``out/<stem>_overlay.png`` for each image.

    ``scale`` resizes the input before the model (default: none); labels are resized back (nearest).
    A model trained on stain-normalised images sees each (resized) image normalised the same way,
    unless ``stain_norm=False``; overlays are drawn on the original image. ``log`` gets that note once.
    Returns one record per image: path, written files or the error message (a bad file does not stop the run).
    """
    import cv2

    from pathseg.errors import PathsegError
    from pathseg.transforms.stain import normalizer_from_state

    model, info = load_model(checkpoint)
    model.to(memory_format=torch.channels_last)
    stain = normalizer_from_state(info.get("stain"), checkpoint, fallback="identity") if stain_norm else None
    if stain is not None and log is not None:
        log(stain_note(info["stain"]))
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for path in paths:
        try:
            img = read_image(path)
            h, w = img.shape[:2]
            x_img = cv2.resize(img, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA) if scale else img
            if stain is not None:
                x_img = stain.transform(x_img)
            with torch.inference_mode():
                labels = predict_logits(model, normalise(x_img, info["mean"], info["std"])).argmax(1)[0].numpy()
            labels = labels.astype(np.uint8)
            if scale:
                labels = cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
            lab_path = write_image(out / f"{path.stem}.png", labels)
            ov_path = write_image(out / f"{path.stem}_overlay.png", overlay(img, labels, info["colors"]))
            counts = np.bincount(labels.ravel(), minlength=info["num_classes"])
            records.append({"path": str(path), "labels": str(lab_path), "overlay": str(ov_path),
                            "fractions": {n: float(c / labels.size) for n, c in zip(info["class_names"], counts)}})
        except PathsegError as e:
            records.append({"path": str(path), "error": str(e)})
    return records
