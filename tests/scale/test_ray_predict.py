"""Whole-slide inference on a local Ray instance (pathseg.scale.ray_predict): the same files as a local run,
a corrupt slide reported while the others finish, the `--ray` CLI hook, and no Ray import without it.

One local Ray instance (2 CPUs) serves the module; each predict_slides_ray call starts its own actors
(~5-10 s here: a fresh process imports torch and loads the model)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason='Ray is not installed: pip install "pathseg[ray]" (it is in the dev extra)')

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS / "io"))
sys.path.insert(0, str(TESTS / "inference"))
from wsi_fixtures import synthetic_slide  # noqa: E402
from wsi_helpers import tiny_checkpoint  # noqa: E402

from pathseg.cli.slides import predict_slides  # noqa: E402
from pathseg.errors import ConfigError  # noqa: E402
from pathseg.scale.ray_predict import connect, predict_slides_ray  # noqa: E402

#: run.json fields that differ between two runs of the same slide: where the outputs went and how long
#: it took. Everything else in it (settings, key, model, class pixels, versions) must match.
VOLATILE = ("outputs", "timings", "tiles_per_s", "run_id")
TILE = 128  # 1024 px slides at 0.5 µm/px, model at 2 µm/px: 256 px output, 5-9 tiles per slide


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance (2 CPUs, no dashboard) for the whole module; predict_slides_ray reuses it."""
    started = connect(None, num_cpus=2)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("ray-slides")
    return [synthetic_slide(folder, 1024, seed=s, truth=False)[0] for s in range(1, 5)]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("ray-model") / "m.ckpt", mpp=2.0)


@pytest.fixture(scope="module")
def onnx_model(ckpt) -> Path:
    """The checkpoint exported once (what backend "auto" runs on CPU), so no run repeats the export."""
    from pathseg.inference.onnx import export_onnx

    return export_onnx(ckpt, ckpt.with_suffix(".onnx"), tile=TILE)


def _files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}


def _stable(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in VOLATILE}


def test_ray_outputs_identical_to_local(ray_local, slides, onnx_model, tmp_path):
    # the default CPU backend, ONNX Runtime, with 2 threads locally and 1 per Ray worker
    local = predict_slides(slides, onnx_model, tmp_path / "local", tile=TILE, show_progress=False)
    remote = predict_slides_ray(slides, onnx_model, tmp_path / "ray", workers=2, tile=TILE, show_progress=False)

    assert [r["status"] for r in local] == ["done"] * 4
    assert [r["slide"] for r in remote] == [str(s) for s in slides]  # input order
    assert [(r["status"], r["attempts"]) for r in remote] == [("done", 1)] * 4
    assert len({r["worker"] for r in remote}) == 2  # both actors got slides
    for a, b in zip(local, remote):
        assert _stable(a) == {k: v for k, v in _stable(b).items() if k not in ("attempts", "worker")}

    files_local, files_ray = _files(tmp_path / "local"), _files(tmp_path / "ray")
    assert files_local.keys() == files_ray.keys()
    assert sum(k.endswith(".labels.tif") for k in files_local) == 4
    for name, path in files_local.items():
        if name.endswith(".run.json"):
            assert _stable(json.loads(path.read_text())) == _stable(json.loads(files_ray[name].read_text())), name
        elif name.endswith((".geojson", ".composition.csv")):  # the same but for each run's own id
            a = _without_run_id(path.read_text(), _record(path)["run_id"])
            b = _without_run_id(files_ray[name].read_text(), _record(files_ray[name])["run_id"])
            assert a == b, name
        else:  # label pyramid, overlay, tissue mask
            assert path.read_bytes() == files_ray[name].read_bytes(), name


def _record(output: Path) -> dict:
    """The run record beside a slide output."""
    return json.loads(next(output.parent.glob("*.run.json")).read_text())


def _without_run_id(text: str, run_id: str) -> str:
    assert text.count(run_id) >= 1  # every output of a run carries its id
    return text.replace(run_id, "RUN")


def test_corrupt_slide_is_reported_and_the_others_finish(ray_local, slides, onnx_model, tmp_path):
    bad = tmp_path / "corrupt.svs"
    bad.write_bytes(bytes(range(256)) * 64)  # not a TIFF at all
    # 1 worker: each actor start costs seconds here, and the retry logic is the same for any number
    recs = predict_slides_ray([slides[0], bad, slides[1]], onnx_model, tmp_path / "out", workers=1, retries=1,
                              tile=TILE, show_progress=False)

    assert [r["status"] for r in recs] == ["done", "failed", "done"]
    assert [r["attempts"] for r in recs] == [1, 2, 1]
    failed = recs[1]
    assert failed["slide"] == str(bad) and "corrupt.svs" in failed["error"]
    assert failed["errors"] == [failed["error"]] * 2  # one message per attempt
    assert "Traceback" in failed["traceback"]
    for s in slides[:2]:
        assert (tmp_path / "out" / s.stem / f"{s.stem}.labels.tif").is_file()
    assert not (tmp_path / "out" / "corrupt").exists()


def test_predict_command_hands_slides_to_ray(monkeypatch, slides, ckpt, tmp_path):
    """The `--ray` hook only forwards (the Ray runs themselves are the tests above; starting actors again
    here would add ~15 s); a failed record makes the command exit 1 as a local run does."""
    from typer.testing import CliRunner

    import pathseg.scale.ray_predict as rp
    from pathseg.cli.main import app

    calls = []

    def fake(paths, checkpoint, out, **kw):
        calls.append((list(paths), checkpoint, out, kw))
        return [{"slide": str(p), "status": "failed" if i else "done"} for i, p in enumerate(paths)]

    monkeypatch.setattr(rp, "predict_slides_ray", fake)
    r = CliRunner().invoke(app, ["predict", str(slides[0]), str(slides[1]), "--checkpoint", str(ckpt), "--out",
                                 str(tmp_path), "--tile", str(TILE), "--workers", "1", "--ray", "auto",
                                 "--ray-workers", "3", "--ray-gpus", "0.5"])
    assert r.exit_code == 1, r.output  # the second slide "failed"
    (paths, checkpoint, out, kw), = calls
    assert paths == slides[:2] and checkpoint == ckpt and out == tmp_path
    assert kw["address"] == "auto" and kw["workers"] == 3 and kw["gpus_per_worker"] == 0.5
    assert kw["loader_workers"] == 1 and kw["tile"] == TILE and kw["backend"] == "auto"


def test_missing_ray_names_the_extra(monkeypatch, slides, ckpt, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    with pytest.raises(ConfigError, match=r'pip install "pathseg\[ray\]"'):
        predict_slides_ray(slides[:1], ckpt, tmp_path)


def test_local_predict_does_not_import_ray(slides, ckpt, tmp_path):
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from pathseg.cli.main import app\n"
        f"r = CliRunner().invoke(app, ['predict', {str(slides[3])!r}, '--checkpoint', {str(ckpt)!r}, '--out', "
        f"{str(tmp_path)!r}, '--tile', '{TILE}', '--backend', 'torch'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.strip().splitlines()[-1] == "[]"
    assert (tmp_path / slides[3].stem / f"{slides[3].stem}.labels.tif").is_file()


def test_a_worker_that_dies_is_restarted_and_its_slide_retried(ray_local, tmp_path):
    """A process killed mid-slide (as by the OOM killer): the slide is retried and recorded as failed after its
    attempts, the restarted worker goes on with the other slides. A stand-in worker (no model) keeps it fast."""
    from pathseg.scale.ray_predict import MAX_RESTARTS, run_on_workers, stop_workers

    class Crashing:  # defined here, so Ray ships the class itself (tests/ is not importable in a worker)
        def predict(self, path, mpp_override=None, name=None, overwrite=False):
            import os

            if "crash" in path:
                os._exit(1)
            return {"slide": path, "status": "done"}

    actor = ray.remote(Crashing).options(num_cpus=1, max_restarts=MAX_RESTARTS, max_task_retries=0).remote()
    try:
        recs = run_on_workers([actor], ["a.svs", "crash.svs", "b.svs"], retries=1)
    finally:
        stop_workers([actor])
    assert [(r["status"], r["attempts"]) for r in recs] == [("done", 1), ("failed", 2), ("done", 1)]
    assert len(recs[1]["errors"]) == 2 and "worker predicting it died" in recs[1]["error"]
