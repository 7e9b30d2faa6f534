"""Paired seed comparisons against values computed by hand and by the textbook formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pathseg.metrics.paired import format_diff, mean_std, paired


def test_mean_std_is_the_sample_std():
    m, s = mean_std([1.0, 2.0, 4.0])
    assert m == pytest.approx(7 / 3)
    assert s == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2))
    assert math.isnan(mean_std([1.0])[1])


def test_t_interval_written_out_by_hand():
    base = {0: 0.70, 1: 0.72, 2: 0.69, 3: 0.71}
    meth = {0: 0.74, 1: 0.73, 2: 0.73, 3: 0.70}
    d = np.array([0.04, 0.01, 0.04, -0.01])
    r = paired(base, meth)
    t975_3 = 3.182446305284263  # Student's t, 0.975 quantile, 3 degrees of freedom (tables)
    half = t975_3 * d.std(ddof=1) / 2
    assert r["mean_diff"] == pytest.approx(d.mean())
    assert r["ci_t"] == pytest.approx([d.mean() - half, d.mean() + half])
    assert r["wins"] == 3 and r["n"] == 4
    # t statistic by hand: mean / (sd / sqrt(n)); the interval includes 0, so the claim is not significant
    assert r["verdict"] == "same direction, not significant"
    assert r["ci_boot"][0] <= d.mean() <= r["ci_boot"][1]


def test_wilcoxon_exact_p_for_all_positive_differences():
    # 5 positive, distinct differences: the exact two-sided p is 2 / 2^5 = 0.0625
    base = {s: 0.5 for s in range(5)}
    meth = {s: 0.5 + 0.01 * (s + 1) for s in range(5)}
    r = paired(base, meth)
    assert r["p_wilcoxon"] == pytest.approx(0.0625)
    assert r["wins"] == 5 and r["verdict"] == "holds (significant)"


def test_lower_is_better_and_unpaired_seeds():
    r = paired({0: 1.0, 1: 1.2, 2: 0.9, 9: 5.0}, {0: 0.8, 1: 1.0, 2: 0.7, 7: 0.0}, higher=False)
    assert r["seeds"] == [0, 1, 2] and r["wins"] == 3 and r["mean_diff"] == pytest.approx(-0.2)
    assert r["verdict"] == "holds (significant)"
    worse = paired({0: 0.8, 1: 0.8, 2: 0.7}, {0: 0.7, 1: 0.6, 2: 0.7})
    assert worse["verdict"] == "does not hold" and worse["wins"] == 0
    assert "wins" in format_diff(worse) and format_diff(paired({0: 1}, {0: 2})) == "one seed: no interval"
