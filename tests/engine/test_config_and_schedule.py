"""Config checking, overrides, and the poly learning-rate schedule against its formula."""

import pytest
import torch

from pathseg.engine.config import load_config
from pathseg.errors import ConfigError
from pathseg.methods import METHODS
from pathseg.models import create_model


def test_overrides_use_dotted_paths_and_yaml_values(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model: {name: deeplabv3plus}\noptim: {lr: 0.1}\n")
    cfg = load_config(f, ["optim.lr=0.001", "data.options={scale: 0.5}", "trainer.devices=2"])
    assert cfg.model.name == "deeplabv3plus" and cfg.optim.lr == 0.001
    assert cfg.data.options == {"scale": 0.5} and cfg.trainer.devices == 2


def test_include_merges_shared_defaults(tmp_path):
    (tmp_path / "base.yaml").write_text("optim: {lr: 0.5, momentum: 0.8}\nmodel: {encoder: resnet34}\n")
    (tmp_path / "exp.yaml").write_text("include: base.yaml\noptim: {lr: 0.1}\n")
    cfg = load_config(tmp_path / "exp.yaml")
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.model.encoder) == (0.1, 0.8, "resnet34")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.lrr=1", "Did you mean 'lr'"),
        ("trainr.seed=1", "Did you mean 'trainer'"),
        ("trainer.max_steps=ten", "expected an integer"),
        ("optim.lr=fast", "expected a number"),
        ("trainer.resume=maybe", "expected true or false"),
        ("nonsense", "expected key=value"),
    ],
)
def test_bad_config_values_are_reported(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_yaml_file_names_the_file(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(f)


def test_unknown_method_parameter_lists_valid_ones():
    with pytest.raises(ConfigError, match="unknown parameter 'foo'"):
        METHODS.get("supervised")(create_model("unet"), class_names=["a", "b"], foo=1)


def test_poly_schedule_matches_formula():
    method = METHODS.get("supervised")(create_model("unet"), class_names=["a", "b"],
                                       optim={"name": "sgd", "lr": 0.01, "poly_power": 0.9}, max_steps=100)
    conf = method.configure_optimizers()
    opt, sched = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    assert conf["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(101):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    for t in (0, 1, 50, 99, 100):
        assert lrs[t] == pytest.approx(0.01 * (1 - t / 100) ** 0.9)


def test_optimisers_by_name():
    for name, cls in (("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)):
        m = METHODS.get("supervised")(create_model("unet"), class_names=["a", "b"], optim={"name": name})
        assert isinstance(m.configure_optimizers()["optimizer"], cls)
    with pytest.raises(ConfigError, match="sgd, adam, adamw"):
        METHODS.get("supervised")(create_model("unet"), class_names=["a", "b"], optim={"name": "lbfgs"}).configure_optimizers()


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_fused_adam_makes_the_hand_computed_first_step(name):
    """Step 1 of Adam (bias-corrected m = g, v = g^2): p -= lr * g / (|g| + eps), with g += wd * p for Adam's L2
    and p *= 1 - lr * wd for AdamW's decoupled decay; a parameter without a gradient stays put."""
    lr, wd, eps = 0.01, 0.1, 1e-8
    m = METHODS.get("supervised")(create_model("unet"), class_names=["a", "b"],
                                  optim={"name": name, "lr": lr, "weight_decay": wd})
    opt = m.configure_optimizers()["optimizer"]
    assert opt.defaults["fused"] is True
    params = [p for p in m.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]
    torch.manual_seed(0)
    for p in params[1:]:  # params[0] gets no gradient this step
        p.grad = torch.randn_like(p)
    opt.step()
    assert torch.equal(params[0], before[0])
    for p, p0 in zip(params[1:], before[1:]):
        g = p.grad + wd * p0 if name == "adam" else p.grad
        want = (p0 * (1 - lr * wd) if name == "adamw" else p0) - lr * g / (g.abs() + eps)
        torch.testing.assert_close(p.detach(), want, rtol=1e-5, atol=1e-6)


def test_model_options_reach_the_builder_and_the_checkpoint(tmp_path):
    from pathseg.models.checkpoint import load_model, save_model_checkpoint
    from pathseg.engine.train import build_method

    cfg = load_config(None, ["model.options={decoder_channels: [64, 32, 16, 16, 8]}"])
    method = build_method(cfg, ["a", "b"], mpp=0.5)
    assert method.model.feature_channels == 8
    save_model_checkpoint(tmp_path / "m.ckpt", method.model, ["a", "b"], mpp=0.5)
    model, info = load_model(tmp_path / "m.ckpt")
    assert info["options"] == {"decoder_channels": [64, 32, 16, 16, 8]}
    for a, b in zip(model.state_dict().values(), method.model.state_dict().values()):
        assert torch.equal(a, b)
