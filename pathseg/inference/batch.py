"""Runs over many inputs: the "folder of slides, record failures, keep going" part of prediction.

The CLI, the Ray runner and a notebook all go through these functions:

- :func:`expand_inputs` turns files and folders into slides and images **by content** (a pyramidal or
  large TIFF is a slide, a small one an image; SVS/NDPI/MRXS/... are slides), and lists what it skipped
  and why, so no file is dropped silently;
- :func:`output_names` gives each input a unique output name (two ``a.svs`` from different folders do
  not share ``out/a/``);
- :func:`refuse_replacing_inputs` stops a run whose outputs would overwrite one of its inputs;
- :class:`SlideLock` (from :mod:`pathseg.inference.locks`) keeps two runs from writing the same slide's outputs at once;
- :func:`predict_one` runs one slide and turns its failure into a record; :func:`predict_slides` is the
  local loop over a batch (the Ray loop is :func:`pathseg.scale.ray_predict.predict_slides_ray`).

Example:
    >>> from pathseg.inference.batch import expand_inputs, predict_slides
    >>> inputs = expand_inputs(["slides/"])
    >>> records = predict_slides(inputs.slides, "model.ckpt", "results/")
    >>> [(r["slide"], r["status"], r.get("error")) for r in records]
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pathseg.errors import DataError, PathsegError
from pathseg.inference.locks import SlideBusyError, SlideLock
from pathseg.io.slides import OPENSLIDE_SUFFIXES, PILLOW_SUFFIXES, TIFF_SUFFIXES, is_slide_file

#: Companion files of slide formats, skipped without a note (MIRAX data folders, thumbnails).
_QUIET_SKIP = (".dat", ".ini", ".xml", ".txt", ".md", ".csv", ".json", ".geojson")


@dataclass
class Inputs:
    """What :func:`expand_inputs` found: slides, images, and ``(path, reason)`` for everything skipped."""

    slides: list[Path] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.slides or self.images)


def classify(path: Path, *, as_slide: bool | None = None, slide_options: bool = False) -> tuple[str | None, str]:
    """``("slide" | "image", why)`` for a file, or ``(None, reason)`` when it is neither.

    ``as_slide`` True/False forces the decision for formats that can be either (TIFF, PNG/JPEG);
    ``slide_options`` (the user passed options only slides take) makes a single-level TIFF a slide.
    """
    name = path.name.lower()
    if name.endswith(OPENSLIDE_SUFFIXES):
        if as_slide is False:
            raise DataError(f"{path}: a whole-slide format cannot be read as a plain image; drop --as-image")
        return "slide", "whole-slide format"
    if name.endswith(TIFF_SUFFIXES):
        if as_slide is not None:
            return ("slide" if as_slide else "image"), "--as-slide" if as_slide else "--as-image"
        if is_slide_file(path):
            return "slide", "pyramidal or large TIFF"
        if slide_options:
            return "slide", "TIFF given slide options"
        return "image", "small single-level TIFF"
    if name.endswith(PILLOW_SUFFIXES):
        return ("slide", "--as-slide") if as_slide else ("image", "image format")
    if name.endswith(_QUIET_SKIP):
        return None, "not an image or slide file"
    return None, ("not an image or slide format (slides: " + ", ".join(OPENSLIDE_SUFFIXES + TIFF_SUFFIXES)
                  + "; images: " + ", ".join(PILLOW_SUFFIXES + TIFF_SUFFIXES) + ")")


def expand_inputs(inputs: Iterable[str | os.PathLike], *, as_slide: bool | None = None,
                  slide_options: bool = False) -> Inputs:
    """Files as given and the files inside folders (sorted, not recursive), sorted into slides and images.

    Raises :class:`DataError` for a path that does not exist. Hidden files are ignored; everything else
    that is neither an image nor a slide is listed in ``skipped`` with the reason, as are sub-folders.
    """
    found = Inputs()
    for p in map(Path, inputs):
        if not p.exists():
            raise DataError(f"{p}: not found; pass existing images, slides or folders")
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if not f.name.startswith("."))
            mrxs = {f.stem for f in files if f.suffix.lower() == ".mrxs"}
            for f in files:
                if f.is_dir():
                    if f.name not in mrxs:  # a MIRAX slide's data folder goes with its .mrxs
                        found.skipped.append((f, "a folder inside a folder (not searched; pass it explicitly)"))
                    continue
                _add(found, f, as_slide, slide_options, quiet=True)
        else:
            _add(found, p, as_slide, slide_options, quiet=False)
    return found


def _add(found: Inputs, f: Path, as_slide: bool | None, slide_options: bool, *, quiet: bool) -> None:
    kind, why = classify(f, as_slide=as_slide, slide_options=slide_options)
    if kind == "slide":
        found.slides.append(f)
    elif kind == "image":
        found.images.append(f)
    elif not (quiet and f.name.lower().endswith(_QUIET_SKIP)):
        found.skipped.append((f, why))


def output_names(paths: Sequence[Path]) -> dict[Path, str]:
    """A unique output name per input: its stem, or ``<parent>-<stem>`` (more folders as needed) where two
    inputs share a stem. The same input list always gives the same names."""
    paths = list(dict.fromkeys(Path(p) for p in paths))
    names = {p: p.stem for p in paths}
    depth = 1
    while True:
        by_name: dict[str, list[Path]] = {}
        for p, n in names.items():
            by_name.setdefault(n, []).append(p)
        clashes = [ps for ps in by_name.values() if len(ps) > 1]
        if not clashes:
            return names
        for ps in clashes:
            for p in ps:
                parents = [q.name for q in p.resolve().parents][:depth][::-1]
                names[p] = "-".join([x for x in parents if x] + [p.stem]) if parents else p.stem
        depth += 1
        if depth > 64:  # the same file twice under different spellings; resolved paths are equal
            raise DataError(f"{clashes[0][0]} is given more than once; pass each input once")


def renamed(names: dict[Path, str]) -> list[str]:
    """One note per input whose output name is not its plain stem."""
    return [f"{p}: outputs named {n!r} (another input has the same name)" for p, n in names.items() if n != p.stem]


def refuse_replacing_inputs(inputs: Iterable[Path], planned: Iterable[Path], out: Path) -> None:
    """Raise :class:`DataError` when an output would replace an input, or ``out`` is a folder of inputs
    (the outputs would be taken for inputs by the next run)."""
    inputs = [Path(p) for p in inputs]
    resolved = {p.resolve(): p for p in inputs}
    out_r = Path(out).resolve()
    folders = {p.resolve().parent for p in inputs}
    if out_r in folders:
        raise DataError(f"--out {out} is the folder that holds the inputs: outputs would sit among them, and "
                        f"replace inputs of the same name; pick another --out")
    for q in planned:
        src = resolved.get(Path(q).resolve())
        if src is not None:
            raise DataError(f"{q}: this output would replace the input {src}; pick another --out")


def check_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and prove it is writable; raise :class:`DataError` saying why not."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{folder}: --out must be a folder, and this is a file; pick a folder name")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".pathseg-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DataError(f"{folder}: output folder is not writable ({e.strerror or e}); pick another --out or fix "
                        f"its permissions") from e
    return folder


def failure_record(path: Path, e: BaseException) -> dict[str, Any]:
    """The record of a slide that failed: its message (one line for pathseg errors) and the last frames."""
    if isinstance(e, PathsegError):
        msg = str(e)
    elif isinstance(e, OSError):
        msg = f"{path}: cannot write or read a file ({e}); check free disk space and folder permissions"
    else:
        msg = f"{path}: unexpected {type(e).__name__}: {e}"
    return {"slide": str(path), "status": "failed", "error": msg, "traceback": _trace_summary(e)}


def _trace_summary(e: BaseException, frames: int = 4, limit: int = 2000) -> str:
    import traceback

    text = "".join(traceback.format_exception(type(e), e, e.__traceback__, limit=-frames))
    return text if len(text) <= limit else "..." + text[-limit:]


def predict_one(predictor: Any, path: Path, out: Path, *, mpp_override: float | None = None,
                name: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """One slide through ``predictor`` into ``out/<name>``: its record, with the warnings it raised; a failure
    is recorded, not raised (one bad slide must not sink the batch). Local and Ray runs both go through here."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rec = predictor.predict(path, out, mpp_override=mpp_override, name=name, overwrite=overwrite)
        for w in caught:
            if str(w.message) not in rec.get("warnings", []):
                rec.setdefault("warnings", []).append(str(w.message))
        return rec
    except KeyboardInterrupt:
        raise
    except Exception as e:
        return failure_record(path, e)


def stain_note(state: dict[str, Any]) -> str:
    """One line telling the user that prediction applies the model's training-time stain normalisation."""
    return (f"stain normalisation: {state['method']} to the training reference {state.get('reference')!r}, as in "
            "training (--no-stain-norm switches it off)")


def predict_slides(paths: Sequence[str | os.PathLike], checkpoint: str | os.PathLike, out: str | os.PathLike, *,
                   mpp: float | None = None, mpp_override: float | None = None, tile: int = 512,
                   overlap: float = 0.5, workers: int = 0, batch_size: int = 8, backend: str = "auto",
                   probabilities: bool = False, blend: str = "mean", min_tissue: float = 0.05,
                   tissue_method: str = "saturation", stain_norm: bool = True, overwrite: bool = False,
                   precision: str = "auto", calibration: Sequence[str | os.PathLike] | None = None,
                   geojson: dict[str, Any] | None = None,
                   progress: Callable[[str, int, int], None] | None = None,
                   log: Callable[[str], Any] | None = None) -> list[dict[str, Any]]:
    """Predict each slide into ``out/<name>/`` (see :func:`output_names`); one record per slide, in input order.

    Errors of one slide (unreadable, no MPP, no tissue, busy, a write failure) are recorded and the run
    goes on; settings errors, a bad checkpoint or an unwritable ``out`` raise before any slide.
    ``overwrite`` recomputes slides that are already done. ``precision``: auto | fp32 | fp16 | bf16 | int8
    (:func:`pathseg.inference.backends.load_backend`); INT8 is calibrated once (cached) on tissue tiles of
    ``calibration``, by default the slides being predicted. ``geojson``: options of
    :func:`pathseg.inference.writers.label_polygons` (``min_area_um2``, ``simplify``, ``multipolygon``).
    ``progress(name, done, total)`` is called after each batch; ``log`` gets one-line notes.
    """
    from pathseg.inference.backends import load_backend
    from pathseg.inference.onnx import file_digest
    from pathseg.inference.predictor import PredictConfig, SlidePredictor

    paths = [Path(p) for p in paths]
    if not Path(checkpoint).is_file():  # before anything is created
        raise DataError(f"{checkpoint}: checkpoint not found; pass the model.ckpt written by `pathseg train` or an "
                        f"exported .onnx")
    out = check_writable(out)
    cfg = PredictConfig(tile=tile, overlap=overlap, mpp=mpp, batch_size=batch_size, workers=workers,
                        probabilities=probabilities, blend=blend, min_tissue=min_tissue, tissue_method=tissue_method,
                        **(geojson or {}))
    names = output_names(paths)
    for note in renamed(names):
        if log is not None:
            log(note)
    checkpoint = Path(checkpoint)
    be = load_backend(checkpoint, backend=backend, tile=tile, stain_norm=stain_norm, precision=precision,
                      calibration=list(calibration or paths) if precision == "int8" else None,
                      mpp_override=mpp_override, log=log)
    if be.stain is not None and log is not None:
        log(stain_note(be.info["stain"]))
    model_id = f"{checkpoint.name}:{file_digest(checkpoint)}" if checkpoint.is_file() else str(checkpoint)
    predictor = SlidePredictor(be, cfg, model_id=model_id, progress=progress)
    return [predict_one(predictor, p, out, mpp_override=mpp_override, name=names[p], overwrite=overwrite)
            for p in paths]


__all__ = ["Inputs", "SlideBusyError", "SlideLock", "check_writable", "classify", "expand_inputs",
           "failure_record", "output_names", "predict_one", "predict_slides", "refuse_replacing_inputs",
           "renamed", "stain_note"]
