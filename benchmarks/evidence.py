"""The evidence protocol's shared parts (docs/evidence.md): a row store two processes can append to, job
sharding, paired-seed comparison cells, claim verdicts and the one-line-per-seed plot.

Every evidence benchmark (``semi_monuseg.py``, ...) states its config, trains and scores each row through the
library's driver (:func:`pathseg.engine.train.train` / :func:`~pathseg.engine.train.evaluate`) and uses this
module for the bookkeeping and the report; the statistics are :mod:`pathseg.metrics.paired`'s.
"""

from __future__ import annotations

import csv
import fcntl
import json
import math
import os
import statistics
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from pathseg.metrics.paired import format_diff, mean_std, paired


# ---------------------------------------------------------------------------------------------- rows
class RowStore:
    """``results/<name>.json``'s rows, shared by the processes of one table.

    ``add`` takes an exclusive lock (``<json>.lock``), re-reads the file, appends and rewrites it atomically,
    so two shards running at once never lose each other's rows. ``header`` is what the file carries beside
    ``rows`` (benchmark, command, machine, recipe, ...); a file made with another ``recipe``, or by an older
    script that recorded none, is refused.
    """

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path, self.header = Path(path), dict(header)
        self.lock = self.path.with_name(self.path.name + ".lock")
        with self._locked():
            prev = self._read()
            if prev.get("rows") and "recipe" not in prev:
                raise SystemExit(f"{self.path} holds rows of an older version of this benchmark (no recipe recorded), "
                                 "which this version's rows would be mixed with: move it aside (git rm it, the history "
                                 "keeps it) or pass another --results file")
            if prev.get("rows") and prev.get("recipe") != header.get("recipe"):
                raise SystemExit(f"{self.path} holds rows made with recipe {prev['recipe']}; these arguments give "
                                 f"{header.get('recipe')}: pass the same settings, or another --results file")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock, "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _read(self) -> dict[str, Any]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def rows(self) -> list[dict[str, Any]]:
        return list(self._read().get("rows", []))

    def has(self, key: tuple) -> bool:
        return any(row_key(r) == key for r in self.rows())

    def add(self, row: dict[str, Any], render: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Append ``row`` (replacing a row with the same key) and rewrite the file; ``render(result)`` then
        writes the report from the whole file, under the same lock."""
        from pathseg.io.files import write_json

        with self._locked():
            prev = self._read()
            rows = [r for r in prev.get("rows", []) if row_key(r) != row_key(row)] + [row]
            result = {**prev, **self.header, "command": prev.get("command", self.header.get("command")),
                      "rows": rows}
            write_json(self.path, result)
            if render is not None:
                render(result)


def row_key(r: dict[str, Any]) -> tuple:
    return (r["method"], r["dataset"], round(float(r["fraction"]), 6), int(r["seed"]))


def shard(jobs: Sequence[Any], spec: str) -> list[Any]:
    """Every n-th job from the i-th (``spec`` = "i/n", 0-based): two shards run a table on two cores."""
    i, n = (int(x) for x in spec.split("/"))
    if not 0 <= i < n:
        raise SystemExit(f"--shard {spec}: expected i/n with 0 <= i < n")
    return [j for k, j in enumerate(jobs) if k % n == i]


def parse_fraction(s: str) -> Fraction:
    return Fraction(s.replace("-", "/"))


def fraction_label(f: float) -> str:
    fr = Fraction(f).limit_denominator(256)
    return "1/1" if fr == 1 else f"{fr.numerator}/{fr.denominator}"


def parse_seeds(s: str) -> list[int]:
    """"0-4" or "0,1,2"."""
    if "-" in s and "," not in s:
        a, b = (int(x) for x in s.split("-"))
        return list(range(a, b + 1))
    return [int(x) for x in s.split(",") if x != ""]


def train_log_means(run_dir: Path, keys: Iterable[str], last: int) -> dict[str, float]:
    """Mean of each ``train/<key>`` column over the last ``last`` logged steps of ``run_dir/logs/metrics.csv``
    (what the losses did at the end of training)."""
    path = Path(run_dir) / "logs" / "metrics.csv"
    if not path.exists():
        return {}
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out: dict[str, float] = {}
    for k in keys:
        col = f"train/{k}"
        vals = [(int(float(r["step"])), float(r[col])) for r in rows if r.get(col) not in (None, "")]
        if not vals:
            continue
        top = max(s for s, _ in vals)
        tail = [v for s, v in vals if s > top - last]
        out[k] = round(statistics.fmean(tail), 5)
    return out


# ---------------------------------------------------------------------------------------------- report
def by_seed(rows: Sequence[dict[str, Any]], method: str, fraction: float, metric: str) -> dict[int, float]:
    return {int(r["seed"]): float(r["metrics"][metric]) for r in rows
            if r["method"] == method and math.isclose(float(r["fraction"]), fraction) and metric in r["metrics"]}


def cell(values: Sequence[float], digits: int = 4) -> str:
    if not values:
        return ""
    m, sd = mean_std(values)
    return f"{m:.{digits}f}" if len(values) == 1 else f"{m:.{digits}f} ({sd:.{digits}f})"


def comparison(rows: Sequence[dict[str, Any]], fraction: float, metric: str, baseline: str, method: str,
               ) -> dict[str, Any]:
    """:func:`pathseg.metrics.paired.paired` of ``method`` against ``baseline`` at ``fraction``."""
    return paired(by_seed(rows, baseline, fraction, metric), by_seed(rows, method, fraction, metric))


def comparison_lines(rows: Sequence[dict[str, Any]], fractions: Sequence[float], metric: str,
                     pairs: Sequence[tuple[str, str]]) -> list[str]:
    """A markdown table: one line per (fraction, method - baseline) with the paired difference cell."""
    lines = [f"| fraction | comparison | paired difference in {metric}, mean [95% t interval], tests, wins | "
             "bootstrap 95% interval | verdict |", "|---|---|---|---|---|"]
    for f in fractions:
        for base, meth in pairs:
            r = comparison(rows, f, metric, base, meth)
            if r["n"] == 0:
                continue
            boot = r.get("ci_boot")
            b = f"[{boot[0]:+.3f}, {boot[1]:+.3f}]" if boot and not math.isnan(boot[0]) else ""
            lines.append(f"| {fraction_label(f)} | {meth} − {base} | {format_diff(r)} | {b} | {r['verdict']} |")
    return lines


def seed_plot(rows: Sequence[dict[str, Any]], path: Path, *, methods: Sequence[str], fractions: Sequence[float],
              metric: str, ceiling: dict[int, float] | None = None, title: str = "") -> Path | None:
    """One panel per fraction, methods on the x axis, one line per seed (so the pairing is seen), the
    ceiling's mean as a dashed line. Written atomically as PNG; None without matplotlib."""
    plt = pyplot()
    if plt is None:
        return None
    fracs = [f for f in fractions if any(math.isclose(float(r["fraction"]), f) for r in rows)]
    if not fracs:
        return None
    fig, axes = plt.subplots(1, len(fracs), figsize=(4.2 * len(fracs), 3.6), squeeze=False, sharey=True)
    seeds = sorted({int(r["seed"]) for r in rows})
    cmap = plt.get_cmap("tab10")
    for ax, f in zip(axes[0], fracs):
        present = [m for m in methods if by_seed(rows, m, f, metric)]
        for k, s in enumerate(seeds):
            ys = [by_seed(rows, m, f, metric).get(s, math.nan) for m in present]
            ax.plot(range(len(present)), ys, "-o", color=cmap(k % 10), ms=3, lw=1, label=f"seed {s}")
        if ceiling:
            ax.axhline(statistics.fmean(ceiling.values()), ls="--", color="k", lw=1, label="ceiling (mean)")
        ax.set_xticks(range(len(present)), present, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"{fraction_label(f)} labelled", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric)
    axes[0][-1].legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    return path


__all__ = ["RowStore", "by_seed", "cell", "comparison", "comparison_lines", "fraction_label", "parse_fraction",
           "parse_seeds", "row_key", "seed_plot", "shard", "train_log_means"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, or None where matplotlib is not installed (no plot then)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(fig: Any, path: Path, dpi: int = 110) -> Path:
    """``fig`` as a PNG at ``path``, written atomically (a temporary file, then a rename), and closed."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def claim_part(rows: Sequence[dict[str, Any]], fraction: float, metric: str, base: str, method: str) -> str | None:
    """``"<method> > <base>: +d [lo, hi], w/n seeds, **verdict**"``, one claim of a table in the protocol's
    words, or None with fewer than two paired seeds."""
    r = comparison(rows, fraction, metric, base, method)
    if r["n"] < 2:
        return None
    lo, hi = r["ci_t"]
    return (f"{method} > {base}: {r['mean_diff']:+.4f} [{lo:+.4f}, {hi:+.4f}], {r['wins']}/{r['n']} seeds, "
            f"**{r['verdict']}**")
