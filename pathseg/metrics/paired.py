"""Paired comparisons over seeds: what a table of "method vs baseline" needs to say whether a method helps.

A seed fixes the labelled subset and the initialisation, and every method of a table runs on the same seeds,
so the unit of evidence is the per-seed difference ``d_s = method_s - baseline_s``. :func:`paired` reports

* the mean paired difference and its 95% interval from Student's t with n - 1 degrees of freedom,
  ``mean(d) ± t_{0.975, n-1} · sd(d) / sqrt(n)`` (``sd`` with ddof = 1);
* a bootstrap percentile interval of the mean difference (seeded, 10,000 resamples), which does not assume
  normal differences;
* the two-sided paired t-test and the Wilcoxon signed-rank test (exact for small n, as scipy computes it);
* the number of seeds where the method wins (``d_s > 0``; for a lower-is-better metric pass ``higher=False``);
* a verdict in the protocol's words: "holds (significant)" when the whole t interval lies on the claimed side,
  "same direction, not significant" when only the mean does, else "does not hold".

Example:
    >>> r = paired({0: 0.70, 1: 0.72, 2: 0.69}, {0: 0.74, 1: 0.75, 2: 0.73})
    >>> round(r["mean_diff"], 4), r["wins"], r["verdict"]
    (0.0367, 3, 'holds (significant)')
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; NaN for fewer than 2 values)."""
    a = np.asarray(values, np.float64)
    return float(a.mean()) if a.size else math.nan, float(a.std(ddof=1)) if a.size > 1 else math.nan


def paired(baseline: Mapping[Any, float], method: Mapping[Any, float], *, higher: bool = True,
           level: float = 0.95, bootstrap: int = 10_000, seed: int = 0) -> dict[str, Any]:
    """Compare ``method`` against ``baseline`` on the seeds both have (see the module docstring).

    Args:
        baseline, method: seed -> metric value.
        higher: True when a larger metric is better (Dice, mIoU); the verdict and ``wins`` follow it.

    Shape:
        two mappings -> dict with n, seeds, mean_diff, sd_diff, ci_t, ci_boot, p_t, p_wilcoxon, wins, verdict.
    """
    from scipy import stats

    seeds = sorted(set(baseline) & set(method), key=str)
    d = np.asarray([method[s] - baseline[s] for s in seeds], np.float64)
    n = d.size
    out: dict[str, Any] = {"n": n, "seeds": seeds, "diffs": d.tolist()}
    if n == 0:
        return dict(out, mean_diff=math.nan, verdict="no paired seeds")
    sign = 1.0 if higher else -1.0
    mean, sd = float(d.mean()), float(d.std(ddof=1)) if n > 1 else math.nan
    out.update(mean_diff=mean, sd_diff=sd, wins=int((sign * d > 0).sum()))
    if n < 2:
        return dict(out, ci_t=[math.nan, math.nan], ci_boot=[math.nan, math.nan], p_t=math.nan, p_wilcoxon=math.nan,
                    verdict="one seed: no interval")
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    out["ci_t"] = [mean - half, mean + half]
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, n, size=(bootstrap, n))].mean(1)
    out["ci_boot"] = [float(np.quantile(boots, (1 - level) / 2)), float(np.quantile(boots, (1 + level) / 2))]
    out["p_t"] = float(stats.ttest_rel(list(method[s] for s in seeds), list(baseline[s] for s in seeds)).pvalue) \
        if sd > 1e-12 * max(1.0, abs(mean)) else (0.0 if mean != 0 else 1.0)
    out["p_wilcoxon"] = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else 1.0
    lo, hi = sorted(sign * np.asarray(out["ci_t"]))
    out["verdict"] = ("holds (significant)" if lo > 0 else
                      "same direction, not significant" if sign * mean > 0 else "does not hold")
    return out


def format_diff(r: Mapping[str, Any], digits: int = 3) -> str:
    """``+0.012 [−0.004, +0.028], p_t 0.12, p_W 0.19, 4/5 wins`` for a table cell."""
    if r.get("n", 0) < 2:
        return r.get("verdict", "")
    f = f"{{:+.{digits}f}}"
    lo, hi = r["ci_t"]
    return (f"{f.format(r['mean_diff'])} [{f.format(lo)}, {f.format(hi)}], p_t {r['p_t']:.2g}, "
            f"p_W {r['p_wilcoxon']:.2g}, {r['wins']}/{r['n']} wins")


__all__ = ["format_diff", "mean_std", "paired"]
