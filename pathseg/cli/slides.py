"""Whole-slide commands: ``pathseg tissue-mask``, ``pathseg tile``, ``pathseg export-onnx``, and the slide
half of ``pathseg predict`` (:func:`predict_slides`: progress and summary around
:func:`pathseg.inference.batch.predict_slides`, or the Ray runner).

Every command handles slides one at a time and catches errors per slide, so one bad slide does not
sink the batch; a summary table is printed at the end.

Example:
    pathseg tissue-mask slides/ --out masks/
    pathseg tile slide.svs --out tiles/ --mpp 0.5 --tile 512 --min-tissue 0.5
    pathseg export-onnx model.ckpt --out model.onnx
    pathseg export-onnx model.ckpt --out model.int8.onnx --precision int8 --calibration train_images/
    pathseg predict slides/ --checkpoint model.ckpt --out preds/ --overlap 0.5
    pathseg predict slides/ --checkpoint model.ckpt --out preds/ --precision int8
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from pathseg.cli.common import console, friendly
from pathseg.errors import DataError
from pathseg.inference.batch import check_writable, expand_inputs, failure_record
from pathseg.io.slides import is_slide_file


def is_slide(path: str | os.PathLike) -> bool:
    """True for SVS/NDPI/MRXS/SCN/... and pyramidal or large TIFFs; False for small PNG/JPG/TIFF tiles."""
    return is_slide_file(path)


def expand_slides(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Slides and images (read as one-level slides) in ``inputs``; what is skipped, and why, is printed."""
    found = expand_inputs(inputs)
    for path, why in found.skipped:
        console.print(f"[yellow]skipped[/] {path}: {why}")
    return found.slides + found.images


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
            note = "already done with the same settings (--overwrite recomputes it)"
        t.add_row(Path(r.get("slide", "?")).name, f"[{color}]{status}[/]", tiles_s,
                  f"{tps:.2f}" if isinstance(tps, (int, float)) else "", f"{secs:.1f}" if secs else "", note[:300])
    return t


def predict_slides(paths: list[Path], checkpoint: Path, out: Path, *, ray: str | None = None,
                   ray_workers: int | None = None, ray_gpus: float | None = None, show_progress: bool = True,
                   out_console: Console | None = None, **settings: Any) -> list[dict[str, Any]]:
    """:func:`pathseg.inference.batch.predict_slides` (or, with ``ray``, the Ray runner) with a progress bar
    and a summary table; returns one record per slide."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from pathseg.inference import batch

    con = out_console or console
    precision = settings.get("precision", "auto") or "auto"
    if ray and precision == "int8":  # quantised once here (cached); the workers run the INT8 .onnx as it is
        checkpoint = int8_model(checkpoint, paths, tile=settings.get("tile", 512),
                                mpp_override=settings.get("mpp_override"), backend=settings.get("backend", "auto"),
                                log=con.print)
        settings["backend"] = settings.get("backend") if settings.get("backend") in ("onnx", "openvino") else "auto"
        settings["precision"] = "auto"
    if ray:  # Ray is imported only here
        from pathseg.scale.ray_predict import predict_slides_ray

        settings["loader_workers"] = settings.pop("workers", 0)
        rows = predict_slides_ray(paths, checkpoint, out, address=ray, workers=ray_workers,
                                  gpus_per_worker=ray_gpus or 0.0, show_progress=show_progress, out_console=con,
                                  **settings)
        done = sum(r["status"] in ("done", "skipped") for r in rows)
        con.print(_summary_table(rows, f"{done}/{len(rows)} slides predicted into {out} on Ray"))
        print_failures(rows, con)
        return rows
    geojson = {k: settings.pop(k) for k in ("min_area", "simplify", "multipolygon") if k in settings}
    geo = {"min_area_um2": geojson.get("min_area"), "simplify": geojson.get("simplify"),
           "multipolygon": geojson.get("multipolygon")}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=con, disable=not show_progress, transient=False) as progress:
        tasks: dict[str, Any] = {}

        def on_progress(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = progress.add_task(name, total=total)
            progress.update(tasks[name], completed=done, total=total)

        rows = batch.predict_slides(paths, checkpoint, out, geojson={k: v for k, v in geo.items() if v is not None},
                                    progress=on_progress, log=con.print, **settings)
    done = sum(r["status"] in ("done", "skipped") for r in rows)
    backends = sorted({r.get("backend", "") for r in rows if r.get("backend")})
    con.print(_summary_table(rows, f"{done}/{len(rows)} slides predicted into {out}"
                                   + (f" (backend {', '.join(backends)})" if backends else "")))
    print_failures(rows, con)
    return rows


def int8_model(checkpoint: Path, calibration: list[Path], *, tile: int = 512, mpp_override: float | None = None,
               backend: str = "auto", log: Callable[[str], Any] | None = None) -> Path:
    """The INT8 .onnx of ``checkpoint`` (itself when it is one): exported and quantised once, calibrated on tissue
    tiles of ``calibration`` (:func:`pathseg.inference.quantize.cached_quantize`; below 99% agreement with fp32
    on those tiles it warns, and the warning goes into each run record)."""
    from pathseg.inference.onnx import cached_export, open_session
    from pathseg.inference.quantize import cached_quantize

    if backend not in ("auto", "onnx", "openvino"):
        raise DataError(f"--precision int8 runs an ONNX graph; drop --backend {backend} or pass --backend onnx or "
                        "openvino")
    if checkpoint.suffix.lower() == ".onnx":
        _, info = open_session(checkpoint)
        if info.get("precision") == "int8":
            return checkpoint
        fp32 = checkpoint
    else:
        if not checkpoint.is_file():
            raise DataError(f"{checkpoint}: checkpoint not found; pass the model.ckpt written by `pathseg train`")
        fp32 = cached_export(checkpoint, tile=tile)
        _, info = open_session(fp32)
    if not info.get("mpp"):
        raise DataError(f"{checkpoint}: the model does not record the MPP it was trained at, which calibration "
                        "tiles are read at; export it with --precision int8 --calibration ... --mpp")
    return cached_quantize(fp32, list(calibration), tile=tile, mpp=float(info["mpp"]), mpp_override=mpp_override,
                           on_low="warn", log=log)


def print_failures(rows: list[dict[str, Any]], con: Console) -> None:
    """Each failed slide's whole message on its own line (the table folds long notes)."""
    for r in rows:
        if r.get("status") == "failed":
            con.print(f"[red]failed[/] {r.get('error', '?')}", soft_wrap=True, markup=True, highlight=False)


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
            rows.append(failure_record(path, e))
    console.print(_summary_table(rows, title))
    print_failures(rows, console)
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
    tile: int = typer.Option(512, help="tile size used to trace and check the export (and to calibrate)"),
    precision: str = typer.Option("fp32", "--precision", help="fp32 | int8 (ONNX Runtime static quantisation)"),
    calibration: Optional[list[Path]] = typer.Option(
        None, "--calibration", help="int8: slides, training images or folders whose tissue tiles calibrate the "
                                    "quantisation (repeat the option for more)"),
    calibration_tiles: int = typer.Option(24, "--calibration-tiles", help="int8: calibration tiles"),
    min_agreement: float = typer.Option(0.99, "--min-agreement",
                                        help="int8: refuse a model whose labels agree with fp32 on fewer of the "
                                             "calibration tiles' tissue pixels than this"),
    mpp: Optional[float] = typer.Option(None, help="int8: read calibration slides at this µm/px [default: the "
                                                   "model's]"),
) -> None:
    """Export a trained model to ONNX (softmax and class metadata included) for ONNX Runtime, in fp32 or INT8."""
    from pathseg.inference.onnx import cached_export, export_onnx

    if out.is_dir():
        out = out / f"{checkpoint.stem}{'.int8' if precision == 'int8' else ''}.onnx"
    elif out.suffix.lower() != ".onnx":
        raise DataError(f"--out {out}: expected a .onnx file name or an existing folder")
    if not checkpoint.is_file():
        raise DataError(f"{checkpoint}: checkpoint not found; pass the model.ckpt written by `pathseg train`")
    if precision not in ("fp32", "int8"):
        raise DataError(f"--precision {precision}: export-onnx writes fp32 or int8 (fp16/bf16 are CUDA autocast "
                        "in `pathseg predict --backend torch`)")
    if precision == "fp32":
        if calibration:
            raise DataError("--calibration is for --precision int8")
        path = export_onnx(checkpoint, out, tile=tile)
        console.print(f"ONNX model written: {path} ({path.stat().st_size / 1e6:.1f} MB); "
                      f"run it with `pathseg predict ... --checkpoint {path}`")
        return
    from pathseg.inference.onnx import read_onnx_info
    from pathseg.inference.quantize import QuantizeConfig, quantize_onnx
    from pathseg.inference.quantize import calibration_tiles as read_tiles

    if not calibration:
        raise DataError("--precision int8 needs --calibration: slides, training images or folders of them whose "
                        "tissue tiles set the INT8 ranges (e.g. --calibration data/train/images)")
    fp32 = cached_export(checkpoint, tile=tile)
    info = read_onnx_info(fp32)
    read_mpp = mpp or info.get("mpp")
    if not read_mpp:
        raise DataError(f"{checkpoint}: the model does not record its MPP; pass --mpp to read calibration slides at")
    cfg = QuantizeConfig(tiles=calibration_tiles, min_agreement=min_agreement)
    tiles = read_tiles(list(calibration), tile=tile, mpp=float(read_mpp), n=cfg.tiles, min_tissue=cfg.min_tissue)
    console.print(f"calibrating on {len(tiles)} tissue tiles of {', '.join(map(str, calibration))}")
    path, report = quantize_onnx(fp32, out, tiles, config=cfg, sources=[str(c) for c in calibration])
    console.print(f"INT8 ONNX model written: {path} ({path.stat().st_size / 1e6:.1f} MB); label agreement with fp32 "
                  f"on the calibration tiles: {report['agreement']:.2%} of tissue pixels "
                  f"({report['agreement_all_pixels']:.2%} of all); int8 instructions: "
                  f"{', '.join(report['int8_instructions']) or 'none found (7-bit weights)'}; "
                  f"run it with `pathseg predict ... --checkpoint {path}`")


def register(app: typer.Typer) -> None:
    """Add ``tissue-mask``, ``tile`` and ``export-onnx`` to the pathseg app."""
    app.command("tissue-mask")(friendly(tissue_mask_command))
    app.command("tile")(friendly(tile_command))
    app.command("export-onnx")(friendly(export_onnx_command))
