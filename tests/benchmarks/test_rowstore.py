"""benchmarks/evidence.py's RowStore: rows appended by two processes, resumed, and never mixed across recipes."""

import importlib.util
import json
import multiprocessing as mp
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _evidence():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_evidence", ROOT / "benchmarks" / "evidence.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _append(path: str, seeds: list[int]) -> None:
    ev = _evidence()
    store = ev.RowStore(Path(path), {"benchmark": "t", "recipe": {"steps": 3}})
    for s in seeds:
        store.add({"method": "m", "dataset": "d", "fraction": 0.5, "seed": s, "metrics": {"x": s}})


def test_two_processes_append_without_losing_rows_and_a_row_is_replaced_not_doubled(tmp_path):
    path = tmp_path / "r.json"
    procs = [mp.get_context("spawn").Process(target=_append, args=(str(path), list(range(k, 40, 2)))) for k in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    rows = json.loads(path.read_text())["rows"]
    assert sorted(r["seed"] for r in rows) == list(range(40))
    ev = _evidence()
    store = ev.RowStore(path, {"benchmark": "t", "recipe": {"steps": 3}})
    assert store.has(("m", "d", 0.5, 7)) and not store.has(("m", "d", 0.25, 7))
    store.add({"method": "m", "dataset": "d", "fraction": 0.5, "seed": 7, "metrics": {"x": -1}})
    rows = store.rows()
    assert len(rows) == 40 and [r["metrics"]["x"] for r in rows if r["seed"] == 7] == [-1]


def test_rows_of_another_recipe_or_of_an_older_script_are_refused(tmp_path):
    ev = _evidence()
    path = tmp_path / "r.json"
    ev.RowStore(path, {"benchmark": "t", "recipe": {"steps": 3}}).add(
        {"method": "m", "dataset": "d", "fraction": 1.0, "seed": 0, "metrics": {}})
    with pytest.raises(SystemExit, match="recipe"):
        ev.RowStore(path, {"benchmark": "t", "recipe": {"steps": 4}})
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"benchmark": "t", "rows": [{"method": "m", "dataset": "d", "fraction": 1.0,
                                                            "seed": 0, "metrics": {}}]}))
    with pytest.raises(SystemExit, match="older version"):
        ev.RowStore(old, {"benchmark": "t", "recipe": {"steps": 3}})
