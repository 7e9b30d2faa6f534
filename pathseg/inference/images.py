"""Prediction on plain images (tiles, ROIs): class-index label maps and overlays, on the slide engine's backends.

Whole slides go through :mod:`pathseg.inference.predictor` instead (tiling, stitching, pyramids).

Resolution: a checkpoint records the MPP it was trained at. An image that records its own MPP (TIFF
resolution tags in cm or inch, within the plausible range of microscopy) is resized by
``image MPP / model MPP`` before the model, so a 40x tile meets a 20x model at 20x; ``image_mpp``
overrides what the file says and ``scale`` sets the factor outright. Labels are resized back to the
image (nearest), so outputs always match the input pixel for pixel.

Example:
    >>> recs = predict_images([Path("tile.png")], Path("model.ckpt"), Path("preds/"))
    >>> recs[0]["labels"], recs[0]["fractions"]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pathseg.errors import ConfigError, PathsegError
from pathseg.inference.batch import refuse_replacing_inputs, stain_note
from pathseg.inference.writers import overlay_image, with_legend
from pathseg.io.files import read_image, write_image

#: Image sides are padded (reflect) to a multiple of this before the model, then cropped back.
PAD_MULTIPLE = 32


def image_mpp(path: Path) -> float | None:
    """The MPP a TIFF records in its resolution tags (None for other formats, unset or implausible tags)."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return None
    try:
        import tifffile

        from pathseg.io.slides import tiff_resolution_mpp

        with tifffile.TiffFile(path) as tif:
            return tiff_resolution_mpp(tif.pages[0])
    except Exception:
        return None


def input_scale(path: Path, model_mpp: float | None, *, scale: float | None = None,
                image_mpp_override: float | None = None) -> tuple[float | None, str]:
    """The resize factor for ``path`` before the model, and where it came from (for the record)."""
    if scale is not None:
        if not scale > 0:
            raise ConfigError(f"--scale must be > 0, got {scale}")
        return scale, "--scale"
    mpp = image_mpp_override if image_mpp_override is not None else image_mpp(path)
    if mpp is None or not model_mpp:
        return None, "none (the image or the model records no MPP)"
    src = "--image-mpp" if image_mpp_override is not None else "the image's resolution tags"
    factor = float(mpp) / float(model_mpp)
    return (None if abs(factor - 1) < 1e-3 else factor), f"{src}: {mpp:g} µm/px to the model's {model_mpp:g}"


def probabilities(backend: Any, image: np.ndarray) -> np.ndarray:
    """Class probabilities of a whole (H, W, 3) uint8 image through ``backend``: reflect-padded to a multiple
    of :data:`PAD_MULTIPLE`, run, cropped back. Shape: (H, W, 3) -> (K, H, W) float32."""
    h, w = image.shape[:2]
    stain = backend.stain
    if stain is not None:  # normalised before padding: the fit sees the image's own pixels only
        image = stain.transform(image)
    ph, pw = (-h) % PAD_MULTIPLE, (-w) % PAD_MULTIPLE
    x = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="reflect") if (ph or pw) else np.array(image)
    backend.stain = None
    try:
        if backend.context_ratio:  # HookNet: its context is read from the image itself
            return _context_model_probabilities(backend, x)[:, :h, :w]
        return backend(x[None])[0][:, :h, :w]
    finally:
        backend.stain = stain


def _context_model_probabilities(backend: Any, image: np.ndarray) -> np.ndarray:
    import torch

    x = backend._input(backend._host(image[None]))
    with torch.inference_mode():
        return torch.softmax(backend.model(x).float(), dim=1)[0].cpu().numpy()


def predict_images(paths: Sequence[Path], checkpoint: Path, out: Path, *, scale: float | None = None,
                   image_mpp_override: float | None = None, stain_norm: bool = True, backend: str = "torch",
                   inputs: Sequence[Path] | None = None,
                   log: Callable[[str], Any] | None = None) -> list[dict[str, Any]]:
    """Write ``out/<name>.png`` (class indices, uint8) and ``out/<name>_overlay.png`` (with a class legend) per
    image; ``<name>`` is the stem, with its folder where two inputs share one.

    ``checkpoint``: a pathseg .ckpt (torch) or an exported .onnx. A model trained on stain-normalised images
    sees each (resized) image normalised the same way, unless ``stain_norm=False``; overlays are drawn on
    the original image. ``inputs`` (all inputs of the run, default ``paths``) are never overwritten.
    Returns one record per image: path, written files, scale, or the error (a bad file does not stop the run).
    """
    import cv2

    from pathseg.inference.backends import load_backend
    from pathseg.inference.batch import check_writable, output_names, renamed

    paths = [Path(p) for p in paths]
    names = output_names(paths)
    planned = [out / f"{n}{suffix}" for n in names.values() for suffix in (".png", "_overlay.png")]
    refuse_replacing_inputs(inputs or paths, planned, out)
    checkpoint = Path(checkpoint)
    if checkpoint.suffix.lower() == ".onnx":
        backend = "onnx"
    be = load_backend(checkpoint, backend=backend, stain_norm=stain_norm)
    info = be.info
    if be.stain is not None and log is not None:
        log(stain_note(info["stain"]))
    out = check_writable(out)
    for note in renamed(names):
        if log is not None:
            log(note)
    records = []
    for path in paths:
        try:
            img = read_image(path)
            h, w = img.shape[:2]
            factor, why = input_scale(path, info.get("mpp"), scale=scale, image_mpp_override=image_mpp_override)
            x_img = (cv2.resize(img, (max(1, round(w * factor)), max(1, round(h * factor))),
                                interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
                     if factor else img)
            labels = probabilities(be, x_img).argmax(0).astype(np.uint8)
            if factor:
                labels = cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
            name = names[path]
            lab_path = write_image(out / f"{name}.png", labels)
            ov = with_legend(overlay_image(img, labels, info["colors"]), info["class_names"], info["colors"])
            ov_path = write_image(out / f"{name}_overlay.png", ov)
            counts = np.bincount(labels.ravel(), minlength=info["num_classes"])
            records.append({"path": str(path), "labels": str(lab_path), "overlay": str(ov_path),
                            "scale": factor or 1.0, "scale_from": why,
                            "fractions": {n: float(c / labels.size) for n, c in zip(info["class_names"], counts)}})
        except PathsegError as e:
            records.append({"path": str(path), "error": str(e)})
    return records


__all__ = ["image_mpp", "input_scale", "predict_images", "probabilities"]
