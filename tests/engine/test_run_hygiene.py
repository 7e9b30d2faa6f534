"""What a training run leaves behind, and what it says, when it is resumed, refused, interrupted or mistyped.

Each test states the behaviour a user sees (files on disk, the exit code and message of `pathseg ...`) and
checks it against records the test keeps itself (the steps it asked for, the files before a refused run).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from importlib.metadata import version

import pytest
import torch
from typer.testing import CliRunner

from pathseg.cli.main import app
from pathseg.engine import train as train_mod
from pathseg.engine.checkpoint import load_model
from pathseg.engine.config import load_config
from pathseg.errors import ConfigError

runner = CliRunner()

TINY = [
    "data.dataset=synthetic", "data.options={n_images: 2, size: 32}", "data.val_split=val",
    "data.train_transforms=[{name: flip}]", "data.batch_size=2", "model.name=unet", "model.encoder=resnet18",
    "optim.name=sgd", "optim.lr=0.05", "trainer.val_every=1", "trainer.threads=1", "trainer.progress=false",
    "trainer.log_every=1",
]


def tiny(out, *extra):
    return load_config(None, [*TINY, f"trainer.out={out}", *extra])


def csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def one_line_error(res) -> str:
    """The CLI's message when it is a one-line error (exit 2, no traceback); fails the test otherwise."""
    assert res.exit_code == 2, (res.exit_code, res.output)
    assert "Traceback" not in res.output
    assert res.output.startswith("error:") and res.output.count("error:") == 1, res.output
    return " ".join(res.output.split())  # the message, unwrapped from the terminal's width


# -- item 7: resume --------------------------------------------------------------------------------------------

def test_resume_appends_to_metrics_and_logs_and_adds_up_steps_and_time(tmp_path):
    first = train_mod.train(tiny(tmp_path, "trainer.max_steps=2"))
    logged_first = csv_rows(tmp_path / "logs" / "metrics.csv")
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    clock = ckpt["callbacks"].get("RunClock", {})  # the first run's time up to the checkpoint resumed from
    second = train_mod.train(tiny(tmp_path, "trainer.max_steps=4"))

    assert [r["step"] for r in json.loads((tmp_path / "metrics.json").read_text())] == [1, 2, 3, 4]
    assert [int(r["step"]) for r in csv_rows(tmp_path / "metrics.csv")] == [1, 2, 3, 4]
    logged = csv_rows(tmp_path / "logs" / "metrics.csv")
    assert len(logged) > len(logged_first) and max(int(r["step"]) for r in logged_first) == 1
    for kept, was in zip(logged, logged_first):  # the first run's rows (steps 0-1), then the second's
        assert {k: v for k, v in kept.items() if v != ""} == {k: v for k, v in was.items() if v != ""}
    assert {int(r["step"]) for r in logged[len(logged_first):]} == {2, 3}

    assert (first["steps"], first["resumed_from"], first["runs"]) == (2, None, 1)
    assert (second["steps"], second["resumed_from"], second["runs"]) == (4, 2, 2)
    assert ckpt["global_step"] == 2 and clock["runs"] == 1 and 0 < clock["seconds"] <= first["total_seconds"]
    assert clock["seconds"] < second["total_seconds"] <= clock["seconds"] + second["seconds"]
    _, info = load_model(tmp_path / "model.ckpt")
    assert info["training"]["steps"] == 4 and info["training"]["runs"] == 2
    assert "resumed at step 2" in train_mod.describe_training(second)


def test_resume_with_another_model_is_refused_before_anything_is_written(tmp_path):
    train_mod.train(tiny(tmp_path, "trainer.max_steps=1"))
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    config = (tmp_path / "config.yaml").read_text()

    with pytest.raises(ConfigError) as e:
        train_mod.train(tiny(tmp_path, "trainer.max_steps=3", "model.encoder=resnet34", "optim.name=adam"))
    msg = str(e.value)
    assert "model.encoder: 'resnet18' there, 'resnet34' now" in msg
    assert "optim.name: 'sgd' there, 'adam' now" in msg
    assert "trainer.max_steps" not in msg and "trainer.resume=false" in msg
    assert (tmp_path / "config.yaml").read_text() == config
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == before

    res = runner.invoke(app, ["train", *TINY, f"trainer.out={tmp_path}", "data.options={n_images: 3, size: 32}"])
    assert "data.options.n_images: 2 there, 3 now" in one_line_error(res)


def test_demo_reports_the_models_steps_after_a_rerun(tmp_path, monkeypatch):
    from pathseg.cli import demo

    def small(out, steps, seed):
        return load_config(None, [*TINY[:-4], "data.options={n_images: 2, size: 32}", f"trainer.max_steps={steps}",
                                  "trainer.val_every=2", "trainer.threads=1", "trainer.progress=false",
                                  f"trainer.out={out}"])

    monkeypatch.setattr(demo, "demo_config", small)
    demo.run_demo(tmp_path, steps=4)
    demo.run_demo(tmp_path, steps=2)  # a rerun with fewer steps trains nothing: the model still has 4
    md = (tmp_path / "metrics.md").read_text()
    assert "4 steps" in md and "2 training steps" not in md and "trained nothing more" in md
    rec = json.loads((tmp_path / "metrics.json").read_text())
    assert rec["train_steps"] == 4 and rec["resumed_from"] == 4 and rec["train_runs"] == 1
    assert rec["train_seconds"] is not None and rec["train_seconds"] > 0


# -- item 11: one-line messages -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("override", "message"), [
    ("data.options={n_images: 2, sizee: 32}", "dataset 'synthetic' has no option 'sizee'. Did you mean 'size'?"),
    ("optim.lr=-1", "optim.lr: expected a value > 0, got -1.0"),
    ("trainer.max_steps=0", "trainer.max_steps: expected a value ≥ 1, got 0"),
])
def test_bad_values_are_one_line_errors_and_write_nothing(tmp_path, override, message):
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", *TINY, "trainer.max_steps=1", f"trainer.out={out}", override])
    assert message in one_line_error(res)
    assert not out.exists()


def test_splits_with_a_bad_seed_is_a_one_line_error(tmp_path):
    res = runner.invoke(app, ["splits", "synthetic", "--seeds", "a", "--out", str(tmp_path)])
    assert "seeds 'a': expected comma-separated integers" in one_line_error(res)


# -- item 13: Ctrl-C --------------------------------------------------------------------------------------------

def test_ctrl_c_in_train_says_what_was_kept_and_exits_130(tmp_path, monkeypatch):
    def ctrl_c_at_step_3(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_mod.MetricsWriter, "on_train_batch_end", ctrl_c_at_step_3, raising=False)
    handler = signal.getsignal(signal.SIGINT)
    res = runner.invoke(app, ["train", *TINY, "trainer.max_steps=10", "trainer.val_every=2",
                              f"trainer.out={tmp_path}"])
    assert res.exit_code == 130, res.output
    text = " ".join(res.output.split())
    assert "interrupted" in text and "stopped at step 3" in text
    assert f"kept {tmp_path / 'checkpoints' / 'last.ckpt'} (step 2)" in text and "resume from step 2" in text
    assert not (tmp_path / "model.ckpt").exists()
    assert signal.getsignal(signal.SIGINT) == handler  # Ctrl-C works again afterwards (Lightning ignores it)


def _sigint_default() -> None:
    """In the child before exec: SIGINT as in a terminal's foreground command. A child inherits an ignored SIGINT
    (Python then installs no KeyboardInterrupt handler), and the suite's process holds it ignored whenever the suite
    is started as a background job of a non-interactive shell (``.ci/run &``: POSIX shells set SIGINT and SIGQUIT
    to SIG_IGN for such jobs; seen in fresh-clone runs, where the child trained on through 30 SIGINTs)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_sigint_to_the_train_command(tmp_path):
    """A real Ctrl-C (SIGINT) to `python -m pathseg.cli.main train`, once it has written a checkpoint."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-X", "faulthandler", "-m", "pathseg.cli.main", "train", *TINY,
                             "trainer.max_steps=100000",
                             f"trainer.out={tmp_path}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, preexec_fn=_sigint_default)
    last = tmp_path / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300  # a loaded machine takes long to start Lightning
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert last.exists(), "no checkpoint written within 300 s: cannot test the interrupt"
    time.sleep(0.5)
    for _ in range(30):  # Ctrl-C, and again if the first one landed where it is ignored (as a user would)
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=10)
            break
        except subprocess.TimeoutExpired:
            continue
    else:  # where it hangs: faulthandler prints every thread's stack on SIGABRT
        proc.send_signal(signal.SIGABRT)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        raise AssertionError("train did not stop after 30 Ctrl-C in 300 s; its stderr ends:\n" + err[-6000:])
    assert proc.returncode == 130, err
    text = " ".join(err.split())
    assert "interrupted" in text and f"kept {last} (step" in text and "Traceback" not in err


# -- item 14: keep_last, the per-class table, --version -------------------------------------------------------

def test_keep_last_keeps_the_latest_periodic_checkpoints(tmp_path):
    train_mod.train(tiny(tmp_path / "one", "trainer.max_steps=3"))
    assert sorted(p.name for p in (tmp_path / "one" / "checkpoints").iterdir()) == ["last.ckpt"]

    train_mod.train(tiny(tmp_path / "three", "trainer.max_steps=5", "trainer.keep_last=3"))
    ckpts = tmp_path / "three" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == [
        "last.ckpt", "step-000003.ckpt", "step-000004.ckpt", "step-000005.ckpt"]
    for name, step in (("step-000003.ckpt", 3), ("last.ckpt", 5)):
        assert torch.load(ckpts / name, map_location="cpu", weights_only=False)["global_step"] == step
    with pytest.raises(ConfigError, match="trainer.keep_last: expected a value ≥ 1"):
        tiny(tmp_path, "trainer.keep_last=0")


def test_evaluate_prints_iou_and_dice_per_class(tmp_path):
    train_mod.train(tiny(tmp_path, "trainer.max_steps=1"))
    res = runner.invoke(app, ["evaluate", "--checkpoint", str(tmp_path / "model.ckpt"), *TINY])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.output.strip().splitlines()[-1])
    rows = {}
    for line in res.output.splitlines():
        cells = [c.strip() for c in line.replace("│", "|").split("|") if c.strip()]
        if len(cells) == 3 and cells[0] != "class":
            rows[cells[0]] = cells[1:]
    from pathseg.data.synth import CLASS_NAMES

    assert set(rows) == set(CLASS_NAMES)
    for name in CLASS_NAMES:  # the table shows the same numbers as the JSON line
        assert rows[name] == [f"{printed[f'IoU/{name}']:.4f}", f"{printed[f'Dice/{name}']:.4f}"]


def test_version_prints_the_installed_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"pathseg {version('pathseg')}"


# -- the dataset's resolution ------------------------------------------------------------------------------------

def test_a_dataset_without_mpp_warns_and_data_mpp_states_it(tmp_path):
    from pathseg.data.synth import CLASS_NAMES, write_synthetic_images

    write_synthetic_images(tmp_path / "imgs", 2, 32, 0, "tissue")
    folder = ["data.dataset=folder", f"data.root={tmp_path / 'imgs'}",
              f"data.options={{class_names: [{', '.join(CLASS_NAMES)}]}}", "trainer.max_steps=1"]
    with pytest.warns(UserWarning, match=r"records no resolution.*set data.mpp="):
        train_mod.train(tiny(tmp_path / "a", *folder))
    assert load_model(tmp_path / "a" / "model.ckpt")[1]["mpp"] is None

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        train_mod.train(tiny(tmp_path / "b", *folder, "data.mpp=0.25"))
    assert not [w for w in seen if "resolution" in str(w.message)]
    assert load_model(tmp_path / "b" / "model.ckpt")[1]["mpp"] == 0.25
