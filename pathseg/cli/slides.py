"""Whole-slide commands: ``pathseg tissue-mask``, ``pathseg tile``, ``pathseg export-onnx``, and the slide
half of ``pathseg predict`` (:func:`predict_slides`, called by the lead's ``predict`` command).

Every command handles slides one at a time and catches errors per slide, so one bad slide does not
sink the batch; a summary table is printed at the end.

Example:
    pathseg tissue-mask slides/ --out masks/
    pathseg tile slide.svs --out tiles/ --mpp 0.5 --tile 512 --min-tissue 0.5
    pathseg export-onnx model.ckpt --out model.onnx
    pathseg predict slides/ --checkpoint model.ckpt --out preds/ --overlap 0.5
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from pathseg.errors import DataError, PathsegError
from pathseg.io.slides import OPENSLIDE_SUFFIXES, PILLOW_SUFFIXES, TIFF_SUFFIXES, is_slide_file

console = Console(stderr=True)

SLIDE_SUFFIXES = OPENSLIDE_SUFFIXES + TIFF_SUFFIXES


def is_slide(path: str | os.PathLike) -> bool:
    """True for SVS/NDPI/MRXS/SCN/... and pyramidal or large TIFFs; False for small PNG/JPG/TIFF tiles."""
    return is_slide_file(path)


def expand_slides(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given; folders expanded to the slide files inside (sorted, not recursive)."""
    out: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                          and f.name.lower().endswith(SLIDE_SUFFIXES + PILLOW_SUFFIXES))
        else:
            out.append(p)
    return out


def check_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and prove it is writable; raise :class:`DataError` saying why not."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".pathseg-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DataError(f"{folder}: output folder is not writable ({e.strerror or e}); pick another --out or fix "
                        f"its permissions") from e
    return folder


def _failure(path: Path, e: BaseException) -> dict[str, Any]:
    if isinstance(e, PathsegError):
        msg = str(e)
    elif isinstance(e, OSError):
        msg = f"{path}: cannot write or read a file ({e}); check free disk space and folder permissions"
    else:
        msg = f"{path}: unexpected {type(e).__name__}: {e}"
    return {"slide": str(path), "status": "failed", "error": msg, "traceback": _trace_summary(e)}


def _trace_summary(e: BaseException, frames: int = 4, limit: int = 2000) -> str:
    """The last ``frames`` frames of the exception's traceback, at most ``limit`` characters."""
    import traceback

    text = "".join(traceback.format_exception(type(e), e, e.__traceback__, limit=-frames))
    return text if len(text) <= limit else "..." + text[-limit:]


def _summary_table(rows: list[dict[str, Any]], title: str) -> Table:
    t = Table(title=title, show_header=True)
    for col, just in (("slide", "left"), ("status", "left"), ("tiles", "right"), ("tiles/s", "right"),
                      ("seconds", "right"), ("note", "left")):
        t.add_column(col, justify=just, overflow="fold")
    for r in rows:
        status = r.get("status", "?")
        color = {"done": "green", "skipped": "cyan", "failed": "red"}.get(status, "yellow")
        tiles = r.get("tiles", {})
        tiles_s = str(tiles.get("run", "")) if isinstance(tiles, dict) else str(tiles)
        tps = r.get("tiles_per_s")
        secs = (r.get("timings") or {}).get("total_s")
        note = r.get("error") or "; ".join(r.get("warnings") or [])
        if status == "skipped":
            note = "already done with the same settings"
        t.add_row(Path(r.get("slide", "?")).name, f"[{color}]{status}[/]", tiles_s,
                  f"{tps:.2f}" if isinstance(tps, (int, float)) else "", f"{secs:.1f}" if secs else "", note[:300])
    return t


def predict_one(predictor: Any, path: Path, out: Path, *, mpp_override: float | None = None) -> dict[str, Any]:
    """One slide through ``predictor`` into ``out``: its record, with the warnings it raised; a failure is
    recorded, not raised (one bad slide must not sink the batch). Local and Ray runs both go through here."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            rec = predictor.predict(path, out, mpp_override=mpp_override)
        for w in caught:
            if str(w.message) not in rec.get("warnings", []):
                rec.setdefault("warnings", []).append(str(w.message))
        return rec
    except KeyboardInterrupt:
        raise
    except Exception as e:
        return _failure(path, e)


def predict_slides(paths: list[Path], checkpoint: Path, out: Path, *, mpp: float | None = None,
                   mpp_override: float | None = None, tile: int = 512, overlap: float = 0.5, workers: int = 0,
                   batch_size: int = 8, backend: str = "auto", probabilities: bool = False, blend: str = "mean",
                   min_tissue: float = 0.05, tissue_method: str = "saturation", stain_norm: bool = True,
                   show_progress: bool = True, out_console: Console | None = None) -> list[dict[str, Any]]:
    """Predict each slide into ``out/<stem>/``; returns one record per slide (status done/skipped/failed).

    ``stain_norm=False`` skips the stain normalisation a checkpoint may carry (see
    :mod:`pathseg.inference.backends`).

    Errors of one slide (unreadable, no MPP, no tissue, a write failure) are recorded and the run goes
    on; settings errors, a bad checkpoint or an unwritable ``out`` stop the run before any slide.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from pathseg.inference.backends import load_backend
    from pathseg.inference.onnx import file_digest
    from pathseg.inference.predictor import PredictConfig, SlidePredictor

    con = out_console or console
    out = check_writable(out)
    cfg = PredictConfig(tile=tile, overlap=overlap, mpp=mpp, batch_size=batch_size, workers=workers,
                        probabilities=probabilities, blend=blend, min_tissue=min_tissue, tissue_method=tissue_method)
    checkpoint = Path(checkpoint)
    be = load_backend(checkpoint, backend=backend, cache_dir=out / ".onnx-cache", tile=tile, stain_norm=stain_norm)
    if be.stain is not None:
        from pathseg.engine.predict_images import stain_note

        con.print(stain_note(be.info["stain"]))
    model_id = f"{checkpoint.name}:{file_digest(checkpoint)}" if checkpoint.is_file() else str(checkpoint)
    rows: list[dict[str, Any]] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=con, disable=not show_progress, transient=False) as progress:
        tasks: dict[str, Any] = {}

        def on_progress(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = progress.add_task(name, total=total)
            progress.update(tasks[name], completed=done, total=total)

        predictor = SlidePredictor(be, cfg, model_id=model_id, progress=on_progress)
        for path in map(Path, paths):
            rows.append(predict_one(predictor, path, out, mpp_override=mpp_override))
    done = sum(r["status"] in ("done", "skipped") for r in rows)
    con.print(_summary_table(rows, f"{done}/{len(rows)} slides predicted into {out} (backend {be.name})"))
    return rows


# ------------------------------------------------------------------------------------------------
# commands
# ------------------------------------------------------------------------------------------------

def _each_slide(slides: list[Path], title: str, work: Callable[[Path], dict[str, Any]]) -> None:
    """Run ``work`` on every slide; one failure is recorded and the rest still run; summary table; exit 1 on failure."""
    rows = []
    for path in expand_slides(slides):
        t = time.perf_counter()
        try:
            rows.append({"slide": str(path), "status": "done", **work(path),
                         "timings": {"total_s": time.perf_counter() - t}})
        except Exception as e:
            rows.append(_failure(path, e))
    console.print(_summary_table(rows, title))
    if any(r.get("status") == "failed" for r in rows):
        raise typer.Exit(1)


def tissue_mask_command(
    slides: list[Path] = typer.Argument(..., help="slides or folders of slides"),
    out: Path = typer.Option(..., "--out", help="output folder for <stem>.tissue.png"),
    method: str = typer.Option("saturation", help="saturation | otsu"),
    mask_mpp: Optional[float] = typer.Option(None, "--mask-mpp",
                                             help="mask resolution in µm/px (default 8, finer for small slides)"),
    slide_mpp: Optional[float] = typer.Option(None, "--slide-mpp", help="override the slides' own MPP"),
) -> None:
    """Detect tissue at low resolution and write one binary mask PNG per slide (255 = tissue)."""
    from pathseg.io.files import write_image, write_json
    from pathseg.io.slides import open_slide
    from pathseg.io.tissue import detect_tissue

    out = check_writable(out)

    def work(path: Path) -> dict[str, Any]:
        with open_slide(path, mpp_override=slide_mpp) as s:
            tm = detect_tissue(s, method, mpp=mask_mpp)
        write_image(out / f"{path.stem}.tissue.png", tm.mask.astype("uint8") * 255)
        write_json(out / f"{path.stem}.tissue.json", {"slide": str(path), "method": method, "mask_mpp": tm.mpp,
                                                      "level0_px_per_mask_px": tm.scale, "fraction": tm.fraction})
        return {"warnings": [f"tissue {tm.fraction:.1%}"]}

    _each_slide(slides, f"tissue masks in {out}", work)


def tile_command(
    slides: list[Path] = typer.Argument(..., help="slides or folders of slides"),
    out: Path = typer.Option(..., "--out", help="output folder: <stem>/<stem>_x<X>_y<Y>.png and tiles.csv"),
    mpp: float = typer.Option(0.5, help="tile resolution in µm/px"),
    tile: int = typer.Option(512, help="tile size in px"),
    overlap: float = typer.Option(0.0, help="overlap fraction between tiles"),
    min_tissue: float = typer.Option(0.5, "--min-tissue", help="keep tiles with at least this tissue fraction"),
    method: str = typer.Option("saturation", help="tissue detector: saturation | otsu"),
    slide_mpp: Optional[float] = typer.Option(None, "--slide-mpp", help="override the slides' own MPP"),
    limit: Optional[int] = typer.Option(None, help="at most this many tiles per slide"),
    fmt: str = typer.Option("png", "--format", help="png | jpg"),
) -> None:
    """Cut slides into tissue tiles at a fixed MPP (names carry level-0 coordinates)."""
    import csv
    import io

    from pathseg.io.files import write_image, write_text
    from pathseg.io.slides import open_slide
    from pathseg.io.tiling import TilingConfig, grid_tiles
    from pathseg.io.tissue import detect_tissue

    if fmt not in ("png", "jpg"):
        raise typer.BadParameter("--format must be png or jpg")
    cfg = TilingConfig(tile=tile, overlap=overlap, mpp=mpp, min_tissue=min_tissue)
    out = check_writable(out)

    def work(path: Path) -> dict[str, Any]:
        with open_slide(path, mpp_override=slide_mpp) as s:
            tiles = grid_tiles(s, cfg, tissue=detect_tissue(s, method))
            if limit is not None:
                tiles = tiles[:limit]
            folder = out / path.stem
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(["file", "x0", "y0", "level0_size", "mpp", "tile"])
            for tl in tiles:
                name = f"{path.stem}_x{int(round(tl.x0))}_y{int(round(tl.y0))}.{fmt}"
                write_image(folder / name, s.read_region(tl.x0, tl.y0, tile, tile, mpp=mpp))
                w.writerow([name, f"{tl.x0:.1f}", f"{tl.y0:.1f}", f"{tile * mpp / s.mpp:.1f}", mpp, tile])
            write_text(folder / "tiles.csv", buf.getvalue())
        return {"tiles": len(tiles)}

    _each_slide(slides, f"tiles in {out}", work)


def export_onnx_command(
    checkpoint: Path = typer.Argument(..., help="model.ckpt written by `pathseg train`"),
    out: Path = typer.Option(..., "--out", help="the .onnx file to write"),
    tile: int = typer.Option(512, help="tile size used to trace and check the export"),
) -> None:
    """Export a trained model to ONNX (softmax and class metadata included) for ONNX Runtime."""
    from pathseg.inference.onnx import export_onnx

    path = export_onnx(checkpoint, out, tile=tile)
    console.print(f"ONNX model written: {path} ({path.stat().st_size / 1e6:.1f} MB); "
                  f"run it with `pathseg predict ... --checkpoint {path}`")


def register(app: typer.Typer) -> None:
    """Add ``tissue-mask``, ``tile`` and ``export-onnx`` to the pathseg app."""
    from pathseg.cli.main import friendly  # imported here: main imports this module

    app.command("tissue-mask")(friendly(tissue_mask_command))
    app.command("tile")(friendly(tile_command))
    app.command("export-onnx")(friendly(export_onnx_command))
