"""Helpers shared by the benchmark scripts: machine description, the results-file format, and the notes.

Results go to ``benchmarks/results/<name>.json`` and ``.md``, or under ``$PATHSEG_BENCH_RESULTS`` when set (a
smoke run of a script writes there, not over the committed tables).

Notes: what a committed table shows (findings, how it was run, a "stale" banner) is prose written after the runs,
so it is not in the scripts. It lives in ``benchmarks/notes/<name>.md`` and :func:`with_notes` puts it into the
report each time the script writes it: the text above a line ``<!-- report -->`` goes above the generated report,
the rest below it (all of it below when there is no such line).
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(os.environ.get("PATHSEG_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")
NOTES = Path(__file__).resolve().parent / "notes"
REPORT_MARK = "<!-- report -->"


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


def notes(name: str) -> tuple[str, str]:
    """(above, below): the prose of ``benchmarks/notes/<name>.md`` around the generated report ("" when none)."""
    path = NOTES / f"{name}.md"
    if not path.is_file():
        return "", ""
    text = path.read_text()
    if REPORT_MARK in text:
        above, below = text.split(REPORT_MARK, 1)
        return above.strip(), below.strip()
    return "", text.strip()


def with_notes(name: str, report: str) -> str:
    """The generated ``report`` with the notes of ``name`` above and below it (see the module docstring)."""
    above, below = notes(name)
    parts = [p for p in (above, report.strip(), below) if p]
    return "\n\n".join(parts) + "\n"
