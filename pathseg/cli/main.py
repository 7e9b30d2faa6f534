"""The `pathseg` command: one typer app; every command reports PathsegError as a message, not a traceback."""

from __future__ import annotations

import sys
from fractions import Fraction
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from pathseg.cli.common import console, friendly, metrics_markdown, metrics_table  # noqa: F401
from pathseg.errors import PathsegError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="pathseg: label-efficient segmentation of H&E histology, from tiles to whole slides.")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"pathseg {version('pathseg')}")
        except PackageNotFoundError:  # a source checkout that is not installed
            from pathseg import __version__

            typer.echo(f"pathseg {__version__} (not installed)")
        raise typer.Exit()


@app.callback()
def _app(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                      help="print the installed version and exit")) -> None:
    pass


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
    from pathseg.engine.train import TrainingInterrupted, describe_training
    from pathseg.engine.train import train as run_train

    flags = {"trainer.devices": devices, "trainer.num_nodes": num_nodes, "trainer.strategy": strategy}
    cfg = load_config(config, list(overrides or []) + [f"{k}={v}" for k, v in flags.items() if v is not None])
    try:
        res = run_train(cfg)
    except TrainingInterrupted as e:
        from rich.markup import escape

        console.print(f"[yellow]interrupted[/]: {escape(str(e))}", highlight=False, soft_wrap=True)
        raise typer.Exit(130)
    if res.get("rank", 0) != 0:  # data-parallel: rank 0 reports
        return
    console.print(metrics_table({"validation": res["metrics"]}))
    console.print(f"model: {res['checkpoint']}  ({describe_training(res)})")


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
    from pathseg.engine.train import per_class
    from pathseg.io.files import write_json

    cfg = load_config(config, overrides)
    res = run_eval(checkpoint, cfg, split)
    console.print(metrics_table({split or cfg.data.val_split: res}))
    classes = Table(show_header=True)
    for name, justify in (("class", "left"), ("IoU", "right"), ("Dice", "right")):
        classes.add_column(name, justify=justify)
    for name, m in per_class(res).items():
        classes.add_row(name, *(f"{m[k]:.4f}" for k in ("IoU", "Dice")))
    console.print(classes)
    if out:
        write_json(out, res)
    typer.echo(__import__("json").dumps({k: v for k, v in res.items()}, default=float))


#: ``predict`` options that only slides take, with their defaults (None in the signature = not given).
SLIDE_DEFAULTS = {"mpp": None, "slide_mpp": None, "tile": 512, "overlap": 0.5, "workers": 0, "batch_size": 8,
                  "backend": "auto", "probabilities": False, "blend": "mean", "ray": None, "ray_workers": None,
                  "ray_gpus": None, "min_tissue": 0.05, "tissue_method": "saturation", "min_area": None,
                  "simplify": None, "multipolygon": None, "overwrite": None, "precision": "auto"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@app.command()
@friendly
def predict(
    inputs: list[Path] = typer.Argument(..., help="images, slides or folders of them"),
    checkpoint: Path = typer.Option(..., "--checkpoint", help="model.ckpt written by `pathseg train`, or an .onnx"),
    out: Path = typer.Option(..., "--out", help="output folder"),
    mpp: Optional[float] = typer.Option(None, help="slides: output resolution in µm/px (default: the model's)"),
    slide_mpp: Optional[float] = typer.Option(None, "--slide-mpp", help="slides: override the slides' own MPP"),
    tile: Optional[int] = typer.Option(None, help="slides: tile size in px [default: 512]"),
    overlap: Optional[float] = typer.Option(None, help="slides: tile overlap fraction [default: 0.5, the published "
                                                       "stitching protocol]"),
    workers: Optional[int] = typer.Option(None, help="slides: DataLoader workers reading tiles [default: 0]"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="slides: tiles per batch [default: 8]"),
    backend: Optional[str] = typer.Option(None, help="slides: torch | onnx | openvino | auto [default: auto: "
                                                     "openvino on CPU, torch on CUDA]"),
    probabilities: Optional[bool] = typer.Option(None, "--probabilities",
                                                 help="slides: also write per-class probability maps"),
    blend: Optional[str] = typer.Option(None, help="slides: mean | gaussian blending of overlapping tiles"),
    min_tissue: Optional[float] = typer.Option(None, "--min-tissue",
                                               help="slides: skip tiles with less tissue than this [default: 0.05]"),
    tissue_method: Optional[str] = typer.Option(None, "--tissue-method",
                                                help="slides: tissue detector, saturation | otsu"),
    min_area: Optional[float] = typer.Option(None, "--min-area", help="slides: leave GeoJSON regions under this "
                                                                      "many µm² out [default: 10]"),
    simplify: Optional[float] = typer.Option(None, "--simplify", help="slides: GeoJSON simplification tolerance in "
                                                                      "output px [default: 0, exact]"),
    multipolygon: Optional[bool] = typer.Option(None, "--multipolygon",
                                                help="slides: one GeoJSON MultiPolygon per class"),
    overwrite: Optional[bool] = typer.Option(None, "--overwrite", help="slides: recompute slides already done"),
    precision: Optional[str] = typer.Option(None, "--precision",
                                            help="slides: auto | fp32 | fp16 | bf16 | int8 [default: auto: fp32 on "
                                                 "CPU, fp16 autocast on CUDA]; int8 calibrates once on the slides' "
                                                 "tissue (cached) and runs in OpenVINO or ONNX Runtime"),
    scale: Optional[float] = typer.Option(None, help="images: resize by this factor before the model "
                                                     "[default: image MPP / model MPP when the image records one]"),
    image_mpp: Optional[float] = typer.Option(None, "--image-mpp", help="images: their resolution in µm/px "
                                                                        "(overrides the files' resolution tags)"),
    as_slide: Optional[bool] = typer.Option(None, "--as-slide/--as-image",
                                            help="treat TIFF/PNG/JPEG inputs as whole slides, or as plain images "
                                                 "[default: by content: pyramidal or large TIFFs are slides]"),
    ray: Optional[str] = typer.Option(None, "--ray", metavar="ADDRESS",
                                      help="slides: run on a Ray cluster: auto, HOST:6379, ray://HOST:10001, or "
                                           "'local' to start a local instance (needs pip install \"pathseg\\[ray]\")"),
    ray_workers: Optional[int] = typer.Option(None, "--ray-workers",
                                              help="with --ray: workers, each loading the model once (default: as "
                                                   "many as the cluster's CPUs, or GPUs with --ray-gpus)"),
    ray_gpus: Optional[float] = typer.Option(None, "--ray-gpus", help="with --ray: GPUs per worker (0: CPU workers)"),
    stain_norm: bool = typer.Option(True, "--stain-norm/--no-stain-norm",
                                    help="apply the stain normalisation the model was trained with, if any"),
) -> None:
    """Label maps (<stem>.png, class indices) and overlays for images; full outputs for whole slides.

    Folders are expanded by content: SVS/NDPI/MRXS/... and pyramidal or large TIFFs are slides, small
    images are images; anything else is listed as skipped. An option that applies to none of the inputs
    is an error.
    """
    from pathseg.inference.batch import expand_inputs

    given = dict(mpp=mpp, slide_mpp=slide_mpp, tile=tile, overlap=overlap, workers=workers, batch_size=batch_size,
                 backend=backend, probabilities=probabilities, blend=blend, ray=ray, ray_workers=ray_workers,
                 ray_gpus=ray_gpus, min_tissue=min_tissue, tissue_method=tissue_method, min_area=min_area,
                 simplify=simplify, multipolygon=multipolygon, overwrite=overwrite, precision=precision)
    slide_flags = [_flag(k) for k, v in given.items() if v is not None]
    found = expand_inputs(inputs, as_slide=as_slide, slide_options=bool(slide_flags))
    for path, why in found.skipped:
        console.print(f"[yellow]skipped[/] {path}: {why}")
    if not found:
        raise PathsegError(f"no images or slides found in {', '.join(map(str, inputs))}"
                           + (f" ({len(found.skipped)} file(s) skipped, listed above)" if found.skipped else ""))
    if slide_flags and not found.slides:
        raise PathsegError(f"{', '.join(slide_flags)} apply to whole slides only, and every input is a plain image "
                           f"({found.images[0]}{' ...' if len(found.images) > 1 else ''}); drop the option, or "
                           f"pass --as-slide to predict the images as slides")
    image_flags = [f for f, v in (("--scale", scale), ("--image-mpp", image_mpp)) if v is not None]
    if image_flags and not found.images:
        raise PathsegError(f"{', '.join(image_flags)} apply to plain images only, and every input is a whole slide "
                           f"({found.slides[0]}); slides are read at the model's MPP (--mpp to change it, "
                           f"--slide-mpp to override the slide's own)")
    if scale is not None and image_mpp is not None:
        raise PathsegError("pass --scale or --image-mpp, not both: --scale sets the resize factor outright")
    settings = {k: (SLIDE_DEFAULTS[k] if v is None else v) for k, v in given.items()}
    settings["mpp_override"] = settings.pop("slide_mpp")
    failed = 0
    if found.images:
        from pathseg.inference.images import predict_images

        recs = predict_images(found.images, checkpoint, out, scale=scale, image_mpp_override=image_mpp,
                              stain_norm=stain_norm,
                              inputs=found.slides + found.images, log=console.print)
        for r in recs:
            if "error" in r:
                failed += 1
                console.print(f"[red]failed[/] {r['path']}: {r['error']}")
        console.print(f"{len(recs) - failed}/{len(recs)} images written to {out}")
    if found.slides:
        from pathseg.cli.slides import predict_slides

        ray_opts = {k: settings.pop(k) for k in ("ray", "ray_workers", "ray_gpus")}
        summary = predict_slides(found.slides, checkpoint, out, stain_norm=stain_norm, **settings, **ray_opts)
        failed += sum(1 for r in (summary or []) if isinstance(r, dict) and r.get("status") == "failed")
    if failed:
        raise typer.Exit(1)


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
    from pathseg.data.splits import make_split_files, parse_seeds

    fr = [_parse_fraction(f) for f in fractions.split(",")]
    sd = parse_seeds(seeds)
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
PLUGIN_MODULES = ("slides", "weak", "segcls", "pretrain", "distill", "encoders")


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
