"""Commands of weakly supervised segmentation (MLPS): ``pathseg pseudo-masks`` and ``pathseg gate``.

The whole path, each step by configuration (configs/weak/)::

    pathseg train -c configs/weak/glas_phase1.yaml                       # classifier (patch labels only)
    pathseg pseudo-masks -c configs/weak/glas_phase1.yaml \\
        --checkpoint runs/weak/glas_phase1/model.ckpt --out runs/weak/glas_pseudo
    pathseg train -c configs/weak/glas_phase2.yaml                       # segmenter on the pseudo masks
    pathseg gate --segmenter runs/weak/glas_phase2/model.ckpt \\
        --classifier runs/weak/glas_phase1/model.ckpt --out runs/weak/glas_gated.ckpt
    pathseg evaluate -c configs/weak/glas_phase1.yaml --checkpoint runs/weak/glas_gated.ckpt
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    from pathseg.cli.common import console, friendly

    @app.command("pseudo-masks")
    @friendly
    def pseudo_masks(
        checkpoint: Path = typer.Option(..., "--checkpoint", help="phase-1 classifier model.ckpt (model cam)"),
        out: Path = typer.Option(..., "--out", help="output folder (mid/, late/, final/ label PNGs)"),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="config naming the patch dataset"),
        split: Optional[str] = typer.Option(None, help="dataset split (default: data.train_split)"),
        batch_size: int = typer.Option(16, "--batch-size"),
        white_threshold: Optional[int] = typer.Option(
            None, "--white-threshold", help="pixels with every RGB channel >= this become ignore (LUAD: 230)"),
        overwrite: bool = typer.Option(False, help="rewrite masks that exist (default: resume)"),
        overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides"),
    ) -> None:
        """Write Grad-CAM pseudo masks of three classifier layers for every training patch (resumable)."""
        import pathseg.methods  # noqa: F401  (registers models and datasets)
        from pathseg.engine.config import load_config
        from pathseg.engine.data import build_dataset
        from pathseg.engine.train import set_threads
        from pathseg.methods.weak.pseudo import write_pseudo_masks

        cfg = load_config(config, overrides)
        set_threads(cfg.trainer.threads)
        ds = build_dataset(cfg, split or cfg.data.train_split)
        res = write_pseudo_masks(checkpoint, ds, out, batch_size=batch_size, white_threshold=white_threshold,
                                 overwrite=overwrite)
        console.print(f"pseudo masks: {res['written']} written, {res['skipped']} kept, layers "
                      f"{', '.join(res['layers'])} in {res['out']}")

    @app.command("gate")
    @friendly
    def gate(
        segmenter: Path = typer.Option(..., "--segmenter", help="phase-2 model.ckpt"),
        classifier: Path = typer.Option(..., "--classifier", help="phase-1 classifier model.ckpt"),
        out: Path = typer.Option(..., "--out", help="gated model checkpoint to write"),
        eps: float = typer.Option(0.1, help="a class with classifier probability <= eps is removed"),
    ) -> None:
        """Combine segmenter and classifier into one gated model for evaluate/predict/slides."""
        import pathseg.methods  # noqa: F401
        from pathseg.methods.weak.mlps import gate_checkpoint

        path = gate_checkpoint(segmenter, classifier, out, eps=eps)
        console.print(f"gated model: {path}")
