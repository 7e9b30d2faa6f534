"""``pathseg segcls-patches``: show (and optionally write) the segmentation and classification patches a
segcls config trains on, before spending hours training on them.

Example:
    pathseg segcls-patches -c configs/segcls/glas.yaml data.options.seg_fraction=0.1 --write runs/patches
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    from pathseg.cli.common import console, friendly

    @app.command("segcls-patches")
    @friendly
    def segcls_patches(
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="a segcls config (see configs/segcls/)"),
        write: Optional[Path] = typer.Option(None, help="also write images/, masks/ and labels.csv here"),
        overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides, e.g. data.options.regime=S"),
    ) -> None:
        """Count (and write) the centred segmentation patches and classification patches of a config."""
        import json

        from pathseg.engine.config import load_config
        from pathseg.errors import ConfigError

        cfg = load_config(config, overrides)
        if cfg.data.dataset != "segcls_patches":
            raise ConfigError(f"data.dataset is {cfg.data.dataset!r}; segcls-patches needs data.dataset=segcls_patches")
        from pathseg.engine.data import build_dataset
        import pathseg.data.patches  # noqa: F401  (registers the dataset)

        ds = build_dataset(cfg, cfg.data.train_split)
        summary = {**ds.summary(), "seg_ids": ds.seg_ids, "cls_ids": ds.cls_ids, "test_ids": ds.test_ids}
        if write is not None:
            _write(ds, write)
            console.print(f"{len(ds)} patches written to {write}")
        typer.echo(json.dumps(summary))


def _write(ds, out: Path) -> None:
    import csv
    import io

    import numpy as np

    from pathseg.io.files import write_image, write_text

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "kind", "image", "y", "x", "class"])
    seen = set()
    for i, (kind, sid, box, cls) in enumerate(ds.items):
        if (kind, sid, box) in seen:  # repeated by seg_share
            continue
        seen.add((kind, sid, box))
        s = ds[i]
        name = s["meta"]["id"].replace("@", "_").replace(":", "_")
        write_image(out / "images" / f"{name}.png", s["image"])
        write_image(out / "masks" / f"{name}.png", s["mask"].astype(np.uint8))
        w.writerow([name, kind, sid, box[0], box[1], ds.class_names[cls] if cls >= 0 else ""])
    write_text(out / "labels.csv", buf.getvalue())
