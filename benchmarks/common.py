"""Helpers shared by the benchmark scripts: machine description and the results-file format."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), python {platform.python_version()}"


def command() -> str:
    return "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:])


def load_rows(name: str) -> list[dict[str, Any]]:
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return []
    return json.loads(path.read_text()).get("rows", [])


def write_results(name: str, rows: list[dict[str, Any]], markdown: str, *, command_line: str | None = None,
                  **extra: Any) -> Path:
    """Write results/<name>.json ({benchmark, command, machine, rows}) and results/<name>.md atomically.

    ``command_line``: the command that produced the rows, when this call only rewrites the report.
    """
    from pathseg.io.files import write_json, write_text

    path = write_json(RESULTS / f"{name}.json", {"benchmark": name, "command": command_line or command(),
                                                 "machine": machine(), **extra, "rows": rows})
    write_text(RESULTS / f"{name}.md", markdown)
    return path
