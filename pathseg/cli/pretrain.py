"""``pathseg pretrain``: self-supervised encoder pretraining on unlabelled slides and images (SimSiam, DSF-WSI).

    pathseg pretrain -c configs/ssl/dsf.yaml trainer.max_steps=2000
    pathseg pretrain -c configs/ssl/simsiam_context.yaml     # SimSiam baseline's context backbone (HookNet)
    pathseg train -c configs/monuseg_supervised.yaml model.weights=runs/ssl/dsf/encoder.safetensors
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    from pathseg.cli.common import console, friendly

    @app.command("pretrain")
    @friendly
    def pretrain(
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (see configs/ssl/)"),
        overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides, e.g. trainer.max_steps=100"),
    ) -> None:
        """Pretrain encoders without labels and write their .safetensors + encoder.json; rerun to resume."""
        import pathseg.methods  # noqa: F401  (registers the methods)
        from pathseg.engine.config import load_config
        from pathseg.engine.pretrain import pretrain as run_pretrain

        cfg = load_config(config, overrides)
        res = run_pretrain(cfg)
        if res.get("rank", 0) != 0:  # data-parallel: rank 0 reports
            return
        for branch, path in res["paths"].items():
            console.print(f"{branch}: {path}")
        console.print(f"snapshots every {cfg.trainer.val_every} steps: {res['out']}/checkpoints/step_*/")
        console.print(f"use with: pathseg train ... {res['use']}  ({res['seconds']:.0f} s)")
