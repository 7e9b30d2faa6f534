"""The `pathseg` command: one typer app; every command reports PathsegError as a message, not a traceback."""

from __future__ import annotations

import functools
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from pathseg.errors import PathsegError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="pathseg: label-efficient segmentation of H&E histology, from tiles to whole slides.")
console = Console(stderr=True)


def friendly(fn: Callable) -> Callable:
    """Print a PathsegError's message and exit 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PathsegError as e:
            console.print(f"[bold red]error:[/] {e}")
            raise typer.Exit(2)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]: finished outputs are kept; run the same command again to resume")
            raise typer.Exit(130)

    return wrapper


def metrics_table(rows: dict[str, dict[str, Any]], keys: tuple[str, ...] = ("mIoU", "Dice", "accuracy", "FwIoU")) -> Table:
    t = Table(show_header=True)
    t.add_column("")
    for k in keys:
        t.add_column(k, justify="right")
    for name, m in rows.items():
        t.add_row(name, *(f"{m.get(k, float('nan')):.4f}" for k in keys))
    return t


def metrics_markdown(rows: dict[str, dict[str, Any]], keys: tuple[str, ...] = ("mIoU", "Dice", "accuracy", "FwIoU")) -> str:
    lines = ["| | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, m in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{m.get(k, float('nan')):.4f}" for k in keys) + " |")
    return "\n".join(lines) + "\n"


@app.command()
@friendly
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (see configs/)"),
    overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides, e.g. optim.lr=0.001"),
    devices: Optional[str] = typer.Option(None, "--devices", help="devices per node (trainer.devices): N or auto"),
    num_nodes: Optional[int] = typer.Option(None, "--num-nodes", help="nodes (trainer.num_nodes)"),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="trainer.strategy, e.g. ddp"),
) -> None:
    """Train a model as configured; running the same command again resumes (on any number of devices).

    Data-parallel: data.batch_size is per device; torchrun and SLURM launches work as Lightning documents.
    """
    from pathseg.engine.config import load_config
    from pathseg.engine.train import train as run_train

    flags = {"trainer.devices": devices, "trainer.num_nodes": num_nodes, "trainer.strategy": strategy}
    cfg = load_config(config, list(overrides or []) + [f"{k}={v}" for k, v in flags.items() if v is not None])
    res = run_train(cfg)
    if res.get("rank", 0) != 0:  # data-parallel: rank 0 reports
        return
    console.print(metrics_table({"validation": res["metrics"]}))
    console.print(f"model: {res['checkpoint']}  ({res['seconds']:.0f} s)")


@app.command()
@friendly
def evaluate(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="model.ckpt written by `pathseg train`"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="config naming the dataset"),
    split: Optional[str] = typer.Option(None, help="dataset split (default: data.val_split)"),
    out: Optional[Path] = typer.Option(None, help="write the metrics as JSON here"),
    overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides"),
) -> None:
    """Score a checkpoint on a dataset split (mIoU, Dice, accuracy, FwIoU, per class)."""
    from pathseg.engine.config import load_config
    from pathseg.engine.train import evaluate as run_eval
    from pathseg.io.files import write_json

    cfg = load_config(config, overrides)
    res = run_eval(checkpoint, cfg, split)
    console.print(metrics_table({split or cfg.data.val_split: res}))
    if out:
        write_json(out, res)
    typer.echo(__import__("json").dumps({k: v for k, v in res.items()}, default=float))


@app.command()
@friendly
def predict(
    inputs: list[Path] = typer.Argument(..., help="images, slides or folders of them"),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="model.ckpt written by `pathseg train`"),
    out: Path = typer.Option(..., "--out", help="output folder"),
    mpp: Optional[float] = typer.Option(None, help="slides: output resolution in µm/px (default: the model's)"),
    slide_mpp: Optional[float] = typer.Option(None, "--slide-mpp", help="slides: override the slides' own MPP"),
    tile: int = typer.Option(512, help="slides: tile size in px"),
    overlap: float = typer.Option(0.5, help="slides: tile overlap fraction (0.5 = published stitching protocol)"),
    workers: int = typer.Option(0, help="slides: DataLoader workers reading tiles"),
    batch_size: int = typer.Option(8, "--batch-size", help="slides: tiles per batch"),
    backend: str = typer.Option("auto", help="slides: torch | onnx | auto"),
    probabilities: bool = typer.Option(False, help="slides: also write per-class probability maps"),
    blend: str = typer.Option("mean", help="slides: mean | gaussian blending of overlapping tiles"),
    scale: Optional[float] = typer.Option(None, help="images: resize by this factor before the model"),
    ray: Optional[str] = typer.Option(None, "--ray", metavar="ADDRESS",
                                      help="slides: run on a Ray cluster: auto, HOST:6379, ray://HOST:10001, or "
                                           "'local' to start a local instance (needs pip install \"pathseg\\[ray]\")"),
    ray_workers: Optional[int] = typer.Option(None, "--ray-workers",
                                              help="with --ray: workers, each loading the model once (default: as "
                                                   "many as the cluster's CPUs, or GPUs with --ray-gpus)"),
    ray_gpus: float = typer.Option(0.0, "--ray-gpus", help="with --ray: GPUs per worker (0: CPU workers)"),
    stain_norm: bool = typer.Option(True, "--stain-norm/--no-stain-norm",
                                    help="apply the stain normalisation the model was trained with, if any"),
) -> None:
    """Label maps (<stem>.png, class indices) and overlays for images; full outputs for whole slides."""
    from pathseg.engine.predict_images import expand_inputs, predict_images

    files = expand_inputs(inputs)
    missing = [p for p in files if not p.exists()]
    if missing:
        raise PathsegError(f"{missing[0]}: not found; pass existing images, slides or folders")
    if not files:
        raise PathsegError(f"no images found in {', '.join(map(str, inputs))}")
    slides, images = _split_slides(files)
    failed = 0
    if images:
        recs = predict_images(images, checkpoint, out, scale=scale, stain_norm=stain_norm, log=console.print)
        for r in recs:
            if "error" in r:
                failed += 1
                console.print(f"[red]failed[/] {r['path']}: {r['error']}")
        console.print(f"{len(recs) - failed}/{len(recs)} images written to {out}")
    if slides:
        settings = dict(mpp=mpp, mpp_override=slide_mpp, tile=tile, overlap=overlap, batch_size=batch_size,
                        backend=backend, probabilities=probabilities, blend=blend, stain_norm=stain_norm)
        if ray:  # Ray is imported only here
            from pathseg.scale.ray_predict import predict_slides_ray

            summary = predict_slides_ray(slides, checkpoint, out, address=ray, workers=ray_workers,
                                         gpus_per_worker=ray_gpus, loader_workers=workers, **settings)
        else:
            from pathseg.cli.slides import predict_slides

            summary = predict_slides(slides, checkpoint, out, workers=workers, **settings)
        failed += sum(1 for r in (summary or []) if isinstance(r, dict) and r.get("status") == "failed")
    if failed:
        raise typer.Exit(1)


def _split_slides(files: list[Path]) -> tuple[list[Path], list[Path]]:
    try:
        from pathseg.cli.slides import is_slide
    except ImportError:  # whole-slide engine not installed
        return [], files
    slides = [f for f in files if is_slide(f)]
    return slides, [f for f in files if f not in slides]


@app.command()
@friendly
def synth(
    out: Path = typer.Argument(..., help="output folder (images) or .tif path (--slide)"),
    n: int = typer.Option(24, help="number of images"),
    size: int = typer.Option(256, help="image size in px; with --slide, the slide's side in px"),
    task: str = typer.Option("tissue", help="tissue (5 classes) | nuclei (2 classes + instances)"),
    seed: int = typer.Option(0),
    slide: bool = typer.Option(False, "--slide", help="write one pyramidal tiled TIFF slide of size x size px"),
    mpp: float = typer.Option(0.5, help="µm per pixel of the slide"),
    truth: Optional[Path] = typer.Option(None, help="with --slide: also write the ground-truth label map here"),
) -> None:
    """Write synthetic H&E (stain absorption model) with exact masks: images, or a whole slide."""
    from pathseg.data import synth as S

    if slide:
        path = S.write_synthetic_slide(out, size, mpp=mpp, seed=seed, truth_path=truth)
        console.print(f"slide written: {path}")
    else:
        S.write_synthetic_images(out, n, size, seed, task)
        console.print(f"{n} images written to {out}")


def _parse_fraction(s: str) -> float:
    try:
        return float(Fraction(s))
    except (ValueError, ZeroDivisionError):
        raise PathsegError(f"fraction {s!r}: expected e.g. 1, 1/8 or 0.125") from None


@app.command()
@friendly
def splits(
    dataset: str = typer.Argument(..., help="dataset name, e.g. monuseg"),
    root: Optional[Path] = typer.Option(None, help="dataset root (default: ../shared/data or $PATHSEG_DATA)"),
    fractions: str = typer.Option("1,1/8,1/16,1/32", help="comma-separated label fractions"),
    seeds: str = typer.Option("0,1,2", help="comma-separated seeds"),
    by: str = typer.Option("image", help="image | source (whole centres/sites labelled or not)"),
    out: Path = typer.Option(Path("splits"), help="output folder"),
) -> None:
    """Write seeded label-fraction split files (labelled / unlabelled / test ids)."""
    from pathseg.data.splits import make_split_files

    fr = [_parse_fraction(f) for f in fractions.split(",")]
    sd = [int(s) for s in seeds.split(",")]
    paths = make_split_files(dataset, root, fr, sd, out, by=by)
    for p in paths:
        console.print(str(p))


@app.command()
@friendly
def demo(
    out: Path = typer.Option(Path("runs/demo"), help="output folder"),
    steps: int = typer.Option(200, help="training steps"),
    seed: int = typer.Option(0),
) -> None:
    """Train a small model on synthetic H&E for a few minutes on CPU, evaluate it, write a table and overlays."""
    from pathseg.cli.demo import run_demo

    run_demo(out, steps=steps, seed=seed, console=console)


# Command groups owned by other parts of pathseg: each module exposes register(app).
PLUGIN_MODULES = ("slides", "weak", "segcls", "pretrain", "distill")


def _register_optional() -> None:
    import importlib

    for name in PLUGIN_MODULES:
        try:
            mod = importlib.import_module(f"pathseg.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"pathseg.cli.{name}":
                continue
            raise
        mod.register(app)


_register_optional()


def main() -> None:  # pragma: no cover
    app(prog_name="pathseg")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
