"""Commands of nuclei segmentation and cell classification by distillation (Háberová et al.).

The whole path (configs/distill/)::

    pathseg train -c configs/distill/nuclei_unet.yaml                     # phase I: nuclei segmenter
    pathseg cell-bank images/ --checkpoint runs/distill/nuclei_unet/model.ckpt \\
        --weak qupath_tool/ --expert qupath_expert/ --out runs/distill/bank.npz
    pathseg distill --bank runs/distill/bank.npz --eval-bank runs/distill/test_bank.npz \\
        -c configs/distill/cells.yaml --out runs/distill/cells            # phases II-IV
    pathseg cells images/ --segmenter runs/distill/nuclei_unet/model.ckpt \\
        --classifier runs/distill/cells/finetune/n1900.pt --out runs/distill/geojson   # QuPath GeoJSON

Both ``cell-bank`` and ``cells`` segment nuclei with the segmenter's stain normalisation, as
``pathseg predict`` does (``--no-stain-norm``: off).

``pathseg synth-cells`` writes synthetic images with QuPath cell exports (truth, weak, expert) to try it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def _images(inputs: list[Path]) -> list[Path]:
    """The plain images among ``inputs`` (folders expanded as ``pathseg predict`` expands them)."""
    from pathseg.errors import PathsegError
    from pathseg.inference.batch import expand_inputs

    found = expand_inputs(inputs)
    if found.slides:
        raise PathsegError(f"{found.slides[0]}: a whole slide; these commands read plain images (tiles, ROIs), "
                           "export regions as images first")
    if not found.images:
        raise PathsegError(f"no images found in {', '.join(map(str, inputs))}")
    return found.images


def register(app: typer.Typer) -> None:
    from pathseg.cli.common import console, friendly

    @app.command("synth-cells")
    @friendly
    def synth_cells(
        out: Path = typer.Argument(..., help="output folder (images/, instances/, truth/, weak/, expert/)"),
        n: int = typer.Option(4, help="number of images"),
        size: int = typer.Option(256, help="image side in px"),
        seed: int = typer.Option(0),
        split: str = typer.Option("train", help="train | val | test (disjoint regions)"),
        weak_rate: float = typer.Option(0.2, "--weak-rate", help="share of weak labels changed by class confusion"),
        expert_fraction: float = typer.Option(0.3, "--expert-fraction", help="share of cells an expert labels"),
        points: bool = typer.Option(False, help="weak labels as point annotations instead of outlines"),
        weak_clicks: Optional[int] = typer.Option(
            None, "--weak-clicks", help="weak labels by appearance instead: a QuPath-style classifier on nucleus "
            "measurements fitted on this many clicked cells per class of stain centre 0 (--weak-rate is then unused)"),
    ) -> None:
        """Write synthetic H&E images with QuPath GeoJSON cell exports (truth, weak, expert)."""
        from pathseg.methods.distill.synthetic import write_synthetic_cells

        if weak_clicks is not None and weak_clicks < 1:
            raise typer.BadParameter(f"--weak-clicks {weak_clicks}: needs at least 1 clicked cell per class")
        res = write_synthetic_cells(out, n, size, seed=seed, split=split, weak_rate=weak_rate,
                                    expert_fraction=expert_fraction, points=points, weak_clicks=weak_clicks)
        tool = f"; the tool's weak labels are wrong for {res['weak_error']:.1%} of the cells" if "weak_error" in res else ""
        console.print(f"{n} images with cell annotations written to {res['out']} (classes {', '.join(res['classes'])})"
                      + tool)

    @app.command("cell-bank")
    @friendly
    def cell_bank(
        inputs: list[Path] = typer.Argument(..., help="images or folders of images"),
        checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="phase-I nuclei model.ckpt (`pathseg train`)"),
        instances: Optional[Path] = typer.Option(None, help="folder of <image>.png instance maps used instead of "
                                                 "segmenting (e.g. reference nuclei)"),
        out: Path = typer.Option(..., "--out", help="cell bank .npz to write"),
        classes: str = typer.Option("background,tumour,lymphocyte,fibroblast",
                                    help="comma-separated cell classes of the annotations; a nucleus no "
                                    "annotation covers is unknown (not trained on), never background"),
        weak: Optional[Path] = typer.Option(None, help="folder of <image>.geojson weak labels (a tool's)"),
        expert: Optional[Path] = typer.Option(None, help="folder of <image>.geojson expert labels"),
        truth: Optional[Path] = typer.Option(None, help="folder of <image>.geojson reference labels (evaluation)"),
        size: int = typer.Option(32, help="patch side in px (16 or 32)"),
        split_touching: bool = typer.Option(False, "--split-touching", help="watershed split of touching nuclei"),
        stain_norm: bool = typer.Option(True, "--stain-norm/--no-stain-norm",
                                        help="segment with the stain normalisation the checkpoint was "
                                        "trained with, if any"),
        threads: Optional[int] = typer.Option(None, help="torch threads"),
    ) -> None:
        """Segment nuclei, cut per-nucleus patches (1, 1/2, 1/4 resolution) and match QuPath cell labels."""
        import torch

        import pathseg.methods  # noqa: F401
        from pathseg.inference.batch import stain_note
        from pathseg.methods.distill.cells import NucleusSegmenter, build_cell_bank

        if threads:
            torch.set_num_threads(threads)
        files = _images(inputs)
        seg = NucleusSegmenter.load(checkpoint, stain_norm=stain_norm) if checkpoint is not None else None
        if seg is not None and seg.stain is not None:
            console.print(stain_note(seg.info["stain"]))
        bank = build_cell_bank(files, seg, [c.strip() for c in classes.split(",")], instances_dir=instances,
                               weak_dir=weak, expert_dir=expert, truth_dir=truth, size=size,
                               split_touching=split_touching)
        bank.save(out)
        known = {k: int((getattr(bank, k) >= 0).sum()) for k in ("weak", "expert", "truth")}
        console.print(f"{len(bank)} nuclei from {len(files)} images -> {out}; labelled: "
                      + ", ".join(f"{k} {v}" for k, v in known.items()))

    @app.command("distill")
    @friendly
    def distill(
        bank: Path = typer.Option(..., "--bank", help="training cell bank (`pathseg cell-bank`)"),
        out: Path = typer.Option(..., "--out", help="output folder (teacher.pt, student.pt, finetune/, metrics.json)"),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML (see configs/distill/cells.yaml)"),
        eval_bank: Optional[Path] = typer.Option(None, "--eval-bank", help="cell bank to score every model on"),
        stage: str = typer.Option("all", help="teacher | student | finetune | all (earlier stages are resumed)"),
        overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides, e.g. teacher.epochs=5"),
    ) -> None:
        """Teacher (ResNet-18, weak labels) -> student (RCCNet) -> expert fine-tuning; resumable."""
        from pathseg.errors import ConfigError
        from pathseg.engine.distill import CellBank, DistillConfig, run_distill

        order = ["teacher", "student", "finetune"]
        if stage != "all" and stage not in order:
            raise ConfigError(f"--stage: expected one of teacher, student, finetune, all; got {stage!r}")
        stages = order if stage == "all" else order[: order.index(stage) + 1]
        cfg = DistillConfig.load(config, overrides)
        res = run_distill(CellBank.load(bank), out, cfg, eval_bank=CellBank.load(eval_bank) if eval_bank else None,
                          stages=stages, log=console.print)
        rows = {k: v["eval"] for k, v in res.items() if isinstance(v, dict) and v.get("eval")}
        if rows:
            from pathseg.cli.common import metrics_table

            console.print(metrics_table(rows, keys=("F1", "accuracy", "precision", "recall")))
        console.print(f"models and metrics.json in {out}")

    @app.command("cells")
    @friendly
    def cells(
        inputs: list[Path] = typer.Argument(..., help="images or folders of images"),
        segmenter: Path = typer.Option(..., "--segmenter", help="phase-I nuclei model.ckpt"),
        classifier: Path = typer.Option(..., "--classifier", help="cell classifier .pt (`pathseg distill`)"),
        out: Path = typer.Option(..., "--out", help="output folder: <image>.geojson per image"),
        split_touching: bool = typer.Option(False, "--split-touching", help="watershed split of touching nuclei"),
        include_background: bool = typer.Option(False, help="also write nuclei classified as the class named "
                                                "background"),
        stain_norm: bool = typer.Option(True, "--stain-norm/--no-stain-norm",
                                        help="segment with the stain normalisation the segmenter was "
                                        "trained with, if any"),
    ) -> None:
        """Segment and classify nuclei; write them as QuPath GeoJSON detections with their classes."""
        import numpy as np

        import pathseg.methods  # noqa: F401
        from pathseg.inference.batch import stain_note
        from pathseg.inference.writers import write_geojson
        from pathseg.io.files import read_image
        from pathseg.methods.distill.cells import (NucleusSegmenter, load_classifier, patches_to_tensor,
                                                   predict_logits_cells)
        from pathseg.methods.distill.instances import instance_centroids, nucleus_patches
        from pathseg.methods.distill.matching import cells_to_features

        seg = NucleusSegmenter.load(segmenter, stain_norm=stain_norm)
        if seg.stain is not None:
            console.print(stain_note(seg.info["stain"]))
        clf, info = load_classifier(classifier)
        names = info["class_names"]
        files = _images(inputs)
        total = 0
        for path in files:
            image = read_image(path)
            inst = seg(image, split_touching=split_touching)  # patches below come from the original image
            cent = instance_centroids(inst)
            patches = nucleus_patches(image, cent, size=int(info.get("size", 32)), scales=(float(info.get("scale", 1.0)),))
            prob = predict_logits_cells(clf, patches_to_tensor(patches[:, 0])).softmax(1).numpy()
            cls = prob.argmax(1) if len(prob) else np.zeros(0, np.int64)
            feats = cells_to_features(inst, cls, names, probabilities=prob.max(1) if len(prob) else None,
                                      include_background=include_background, id_prefix=path.stem)
            write_geojson(out / f"{path.stem}.geojson", feats)
            total += len(feats)
        console.print(f"{total} cells from {len(files)} images written to {out}")
