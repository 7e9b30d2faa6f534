"""What every pathseg command shares: the console, error reporting, metric tables.

Command modules import from here, never from :mod:`pathseg.cli.main` (which imports them).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import typer
from rich.console import Console
from rich.table import Table

from pathseg.errors import PathsegError

console = Console(stderr=True)


def friendly(fn: Callable) -> Callable:
    """Print a PathsegError's message and exit 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PathsegError as e:
            from rich.markup import escape

            # one line, whatever the terminal width; names like "x-[1 0 0 1].png" are not rich markup
            console.print(f"[bold red]error:[/] {escape(str(e))}", soft_wrap=True)
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


__all__ = ["console", "friendly", "metrics_markdown", "metrics_table"]
