"""``pathseg encoders``: the encoder names a model can be built on, with their size, patch, MPP and weights.

Example:
    pathseg encoders                 # every pathology ViT (uni, uni2, virchow2, hoptimus, phikon, phikon2, conch)
    pathseg encoders uni vit_small_patch16_224
    pathseg encoders --json
"""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def _params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def encoders_command(
    names: Optional[list[str]] = typer.Argument(None, help="encoders to describe (default: every pathology ViT); "
                                                          "any timm ViT name works too"),
    as_json: bool = typer.Option(False, "--json", help="print the rows as JSON"),
) -> None:
    """List the ViT encoders: parameters, patch size, prefix tokens, expected MPP and where the weights come from.

    Pass the weights with model.weights=/path/to/pytorch_model.bin (or model.weights=hub when online).
    """
    from pathseg.models import ENCODERS
    from pathseg.models.vit import describe_encoders

    rows = describe_encoders(list(names) if names else None)
    if as_json:
        typer.echo(json.dumps(rows, indent=1))
        return
    table = Table(show_header=True, title="ViT encoders (model.encoder=NAME)")
    for col, justify in (("name", "left"), ("arch", "left"), ("params", "right"), ("patch", "right"),
                         ("tokens", "left"), ("MPP", "right"), ("normalisation", "left"), ("weights", "left")):
        table.add_column(col, justify=justify, overflow="fold")
    for r in rows:
        hub = f"{r['hub_id']}" + (" (gated)" if r["gated"] else "") if r["hub_id"] else "timm"
        table.add_row(r["name"], r["arch"], _params(r["params"]), str(r["patch"]), r["tokens"],
                      "-" if r["mpp"] is None else f"{r['mpp']:g}", r["normalisation"], hub)
    console.print(table)
    console.print("Where the weights come from:")
    for r in rows:
        console.print(f"  {r['name']}: {r['weights']}")
    console.print(f"CNN encoders: {', '.join(ENCODERS.names())}; any timm ViT name (e.g. vit_small_patch16_224) "
                  f"also builds. Weights: model.weights=/path/to/pytorch_model.bin, or model.weights=hub when online.")


def register(app: typer.Typer) -> None:
    """Add ``encoders`` to the pathseg app."""
    from pathseg.cli.common import friendly

    app.command("encoders")(friendly(encoders_command))
