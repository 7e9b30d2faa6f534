"""trainer.best_metric: model.ckpt holds the weights of the best validation, and says which one it was.

Independent records: a wrapper around the metrics writer copies the model's weights at every validation, and
the monitored metric is scripted, so the test knows which validation is best and its weights before looking
at what train() chose.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from pathseg.engine import train as train_mod
from pathseg.models.checkpoint import load_model
from pathseg.engine.config import load_config
from pathseg.errors import ConfigError
from pathseg.methods import METHODS

TINY = [
    "data.dataset=synthetic", "data.options={n_images: 2, size: 32}", "data.val_split=val",
    "data.train_transforms=[{name: flip}]", "data.batch_size=2", "model.name=unet", "model.encoder=resnet18",
    "optim.name=sgd", "optim.lr=0.05", "trainer.val_every=1", "trainer.threads=1", "trainer.progress=false",
    "trainer.log_every=1", "method.name=supervised",
]


@pytest.fixture
def weights_at_validations(monkeypatch):
    """{global step: state dict of the model} at every validation of the run."""
    seen: dict[int, dict[str, torch.Tensor]] = {}
    original = train_mod.MetricsWriter.on_validation_end

    def record(self, trainer, pl_module):
        if not trainer.sanity_checking:
            seen[int(trainer.global_step)] = copy.deepcopy(pl_module.model.state_dict())
        original(self, trainer, pl_module)

    monkeypatch.setattr(train_mod.MetricsWriter, "on_validation_end", record)
    return seen


# a metric the method logs at each validation, scripted so the best one is known before the run:
# max -> the 2nd validation (step 2), min -> the 3rd (step 3); neither the first nor the last
SCRIPT = [0.3, 0.9, 0.1, 0.7, 0.5]
BEST_STEP = {"max": 2, "min": 3}


@pytest.fixture
def scripted_metric(monkeypatch):
    cls = METHODS.get("supervised")
    original = cls.on_validation_epoch_end

    def with_script(self):
        original(self)
        if not self.trainer.sanity_checking:
            value = SCRIPT[len(self.history) - 1]
            self.history[-1]["scripted"] = value
            self.log("val/scripted", value)

    monkeypatch.setattr(cls, "on_validation_epoch_end", with_script)


@pytest.mark.parametrize("mode", ["max", "min"])
def test_model_ckpt_is_the_best_validation(tmp_path, weights_at_validations, scripted_metric, mode):
    cfg = load_config(None, [*TINY, "trainer.max_steps=5", f"trainer.out={tmp_path}",
                             "trainer.best_metric=val/scripted", f"trainer.best_mode={mode}"])
    res = train_mod.train(cfg)
    rows = json.loads((tmp_path / "metrics.json").read_text())
    assert [(r["step"], r["scripted"]) for r in rows] == list(zip([1, 2, 3, 4, 5], SCRIPT))
    assert sorted(weights_at_validations) == [1, 2, 3, 4, 5]
    step = BEST_STEP[mode]

    model, info = load_model(tmp_path / "model.ckpt")
    state = model.state_dict()
    for s, weights in weights_at_validations.items():  # equal to that validation's weights, and only to those
        assert state.keys() == weights.keys()
        assert all(torch.equal(v, weights[k]) for k, v in state.items()) == (s == step), s

    sel = info["selection"]
    assert (sel["metric"], sel["mode"], sel["step"]) == ("val/scripted", mode, step)
    assert sel["value"] == pytest.approx(SCRIPT[step - 1])
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()
    assert res["selection"]["step"] == step and res["metrics"]["step"] == step


def test_without_best_metric_model_ckpt_is_the_last_step(tmp_path, weights_at_validations):
    cfg = load_config(None, [*TINY, "trainer.max_steps=2", f"trainer.out={tmp_path}"])
    res = train_mod.train(cfg)
    model, info = load_model(tmp_path / "model.ckpt")
    last = weights_at_validations[2]
    assert all(torch.equal(v, last[k]) for k, v in model.state_dict().items())
    assert "selection" not in info and res["selection"] is None
    assert not (tmp_path / "checkpoints" / "best.ckpt").exists()


def test_unknown_best_metric_lists_the_logged_ones(tmp_path):
    cfg = load_config(None, [*TINY, "trainer.max_steps=1", f"trainer.out={tmp_path}",
                             "trainer.best_metric=val/miou"])
    listed = r"'val/miou' is not a metric.*Did you mean 'val/mIoU'.*Logged metrics: .*val/Dice"
    with pytest.raises(ConfigError, match=listed):
        train_mod.train(cfg)
    cfg = load_config(None, [*TINY, f"trainer.out={tmp_path / 'b'}", "trainer.best_metric=val/mIoU",
                             "trainer.best_mode=largest"])
    with pytest.raises(ConfigError, match="best_mode: 'largest' is not one of max, min"):
        train_mod.train(cfg)
