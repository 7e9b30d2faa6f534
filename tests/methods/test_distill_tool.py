"""The synthetic cells' appearance-based weak labels: QuPath-style measurements, the linear discriminant, the
tool's confusion, and the cell population (pathseg.methods.distill.synthetic)."""

import numpy as np
import pytest

from pathseg.methods.distill.synthetic import (CELL_CLASSES, MEASUREMENTS, ToolClassifier,
                                               cell_population, fit_tool, nucleus_measurements, synthetic_cells,
                                               tool_labels)


def test_measurements_of_a_drawn_ellipse_match_its_geometry_and_colour():
    yy, xx = np.mgrid[0:80, 0:80]
    a, b = 20.0, 10.0  # semi-axes in px
    inst = (((xx - 40) / a) ** 2 + ((yy - 40) / b) ** 2 <= 1).astype(np.int32)
    rgb = np.array([90, 60, 140], np.uint8)
    image = np.full((80, 80, 3), 255, np.uint8)
    image[inst == 1] = rgb
    m = nucleus_measurements(image, inst, mpp=0.5)
    assert m.shape == (1, len(MEASUREMENTS))
    area, ecc, h_mean, h_std = m[0]
    assert area == pytest.approx(np.pi * a * b * 0.25, rel=0.01)  # µm² at 0.5 µm/px
    assert ecc == pytest.approx(np.sqrt(1 - (b / a) ** 2), abs=0.01)  # covariance eigenvalues a²/4, b²/4
    # colour deconvolution written out: OD = -ln(I / 255) = C @ M, M's rows Ruifrok & Johnston's unit H, E, DAB vectors
    M = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
    M /= np.linalg.norm(M, axis=1, keepdims=True)
    od = -np.log(rgb.astype(float) / 255)
    assert h_mean == pytest.approx(float(np.linalg.solve(M.T, od)[0]), rel=1e-9)
    assert h_std == pytest.approx(0.0, abs=1e-6)


def test_the_discriminant_is_the_pooled_covariance_lda_written_out():
    rng = np.random.default_rng(0)
    cov = np.array([[1.0, 0.6], [0.6, 2.0]])
    L = np.linalg.cholesky(cov)
    mus = {1: np.array([0.0, 0.0]), 2: np.array([3.0, 1.0]), 3: np.array([-1.0, 4.0])}
    X = np.concatenate([rng.standard_normal((200, 2)) @ L.T + m for m in mus.values()])
    y = np.repeat(list(mus), 200)
    tool = ToolClassifier(ridge=0.0).fit(X, y)
    # reference: the same rule computed directly in the standardised space
    Z = (X - X.mean(0)) / X.std(0)
    means = np.stack([Z[y == c].mean(0) for c in mus])
    R = np.concatenate([Z[y == c] - means[k] for k, c in enumerate(mus)])
    S = R.T @ R / (len(R) - 3)
    Si = np.linalg.inv(S)
    Q = rng.standard_normal((50, 2)) * 3
    Zq = (Q - X.mean(0)) / X.std(0)
    ref = np.array(list(mus))[np.argmax(Zq @ Si @ means.T - 0.5 * np.einsum("cd,de,ce->c", means, Si, means), 1)]
    assert (tool.predict(Q) == ref).all()
    assert (tool.predict(X) == y).mean() > 0.9


def test_tool_labels_come_from_appearance_and_their_confusion_counts_every_nucleus():
    items = synthetic_cells(6, 256, seed=0, split="train")
    tool = fit_tool(items, clicks=8, seed=0)
    weak, info = tool_labels(items, tool)
    truth = np.concatenate([c for *_, c in items])
    w = np.concatenate([weak[i] for i, *_ in items])
    conf = np.array(info["confusion"])
    assert conf.sum() == truth.size and conf.shape == (len(CELL_CLASSES) - 1, len(CELL_CLASSES))
    assert (conf.sum(1) == np.bincount(truth, minlength=len(CELL_CLASSES))[1:]).all()
    assert info["error"] == pytest.approx(float((w != truth).mean()))
    assert set(np.unique(w)) <= {1, 2, 3}  # a nucleus is never called background
    # the tool is better than chance on every class, yet not the truth: its errors are those of a classifier
    assert 0.0 < info["error"] < 0.6
    assert (np.diag(conf[:, 1:]) / conf.sum(1) > 1 / 3).all()
    # the same cells measured again give the same labels (no label is drawn at random)
    again, _ = tool_labels(items, tool)
    assert all((again[i] == weak[i]).all() for i in weak)


def test_cell_population_stops_once_every_class_has_enough():
    items = cell_population(15, size=128, seed=0, split="val", max_images=200)
    counts = np.bincount(np.concatenate([c for *_, c in items]), minlength=4)[1:]
    assert counts.min() >= 15
    fewer = np.bincount(np.concatenate([c for *_, c in items[:-1]]), minlength=4)[1:]
    assert fewer.min() < 15  # one image fewer would not do
    # the same images as synthetic_cells (ids and pixels)
    ref = synthetic_cells(len(items), 128, seed=0, split="val")
    assert [i for i, *_ in items] == [i for i, *_ in ref]
    assert np.array_equal(items[-1][1], ref[-1][1])
    from pathseg.errors import DataError

    with pytest.raises(DataError, match="raise max_images"):
        cell_population(10_000, size=64, seed=0, split="val", max_images=2)


def test_the_benchmark_banks_have_sparse_balanced_expert_labels_and_tool_labels_on_every_cell(tmp_path):
    import importlib.util
    from pathlib import Path

    from pathseg.methods.distill.cells import CellBank

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("bench_nuclei_distill", root / "benchmarks" / "nuclei_distill.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.CELLS.update(bench.SMOKE_CELLS)
    info = bench.build_banks(tmp_path)
    bank, test = CellBank.load(tmp_path / "bank.npz"), CellBank.load(tmp_path / "test.npz")
    e = bank.expert >= 0
    # the expert labelled exactly expert_per_class of each class, with the true class; every other nucleus unknown
    assert np.bincount(bank.expert[e], minlength=4)[1:].tolist() == [bench.CELLS["expert_per_class"]] * 3
    assert (bank.expert[e] == bank.truth[e]).all()
    assert (~e).sum() > 0 and (bank.expert[~e] == -1).all()
    # expert labels only on the expert images, the tool's labels on every cell
    expert_images = {i for i in bank.image_ids[e]}
    assert all(i.startswith("synthetic-val-") for i in expert_images)
    assert (bank.weak >= 0).all() and (bank.truth >= 1).all()
    assert info["tool"]["error_all_cells"] == pytest.approx(float((bank.weak != bank.truth).mean()))
    # balanced test cells from the test band, truth only
    assert np.bincount(test.truth, minlength=4)[1:].tolist() == [bench.CELLS["test_per_class"]] * 3
    assert all(i.startswith("synthetic-test-") for i in test.image_ids)
    assert not set(test.image_ids) & set(bank.image_ids)


def test_synth_cells_weak_clicks_writes_the_tools_labels(tmp_path):
    from typer.testing import CliRunner

    from pathseg.cli.main import app
    from pathseg.methods.distill.cells import CellBank

    out = tmp_path / "cells"
    res = CliRunner().invoke(app, ["synth-cells", str(out), "--n", "3", "--size", "128", "--weak-clicks", "5"])
    assert res.exit_code == 0, res.output
    assert "the tool's weak labels are wrong for" in " ".join(res.output.split())
    bank = tmp_path / "bank.npz"
    res = CliRunner().invoke(app, ["cell-bank", str(out / "images"), "--instances", str(out / "instances"),
                                   "--weak", str(out / "weak"), "--truth", str(out / "truth"), "--out", str(bank),
                                   "--size", "32"])
    assert res.exit_code == 0, res.output
    b = CellBank.load(bank)
    # the same labels as the tool gives on the same images (read back through GeoJSON and the bank's matching)
    items = synthetic_cells(3, 128, seed=0, split="train")
    weak, info = tool_labels(items, fit_tool(items, clicks=5, seed=0))
    for image_id, _, inst, _ in items:  # the bank numbers its nuclei anew: match them by centroid
        sel = np.flatnonzero(b.image_ids == image_id)
        cy, cx = np.round(b.centroids[sel]).astype(int).T
        ids = inst[cy, cx]
        assert (ids > 0).all() and len(set(ids)) == len(ids) == len(weak[image_id])
        assert (b.weak[sel] == weak[image_id][ids - 1]).all()
    assert float((b.weak != b.truth).mean()) == pytest.approx(info["error"])
    res = CliRunner().invoke(app, ["synth-cells", str(out), "--weak-clicks", "0"])
    assert res.exit_code != 0 and "--weak-clicks 0" in res.output
