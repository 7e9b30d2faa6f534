"""The semi-supervised methods through the shared step: registration, warm-up switch, ablation by weights,
gradients reaching every trained part. One small subclass per registered method (STYLE.md #8)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from pathseg.errors import ConfigError
from pathseg.methods import METHODS
from pathseg.methods.semi import CAC, CCT, CRCFP, SemiMethod
from pathseg.models import create_model

SEMI = ["cct", "cac", "crcfp"]
TERMS = {"cct": {"cross"}, "cac": {"cont"}, "crcfp": {"cont", "cross", "ent"}}


def _method(name: str, arch: str = "deeplabv3plus", **params) -> SemiMethod:
    torch.manual_seed(0)
    model = create_model(arch, encoder="resnet18", num_classes=2)
    return METHODS.get(name)(model, class_names=["background", "nucleus"], max_steps=10, **params)


def _batch(size: int = 64, unlabeled_size: int | None = None) -> dict:
    g = torch.Generator().manual_seed(0)
    u = unlabeled_size or size
    return {
        "labeled": {
            "image": torch.rand(2, 3, size, size, generator=g),
            "mask": torch.randint(0, 2, (2, size, size), generator=g),
        },
        "unlabeled": {"image": torch.rand(2, 3, u, u, generator=g)},
    }


def _at_step(m: SemiMethod, step: int) -> None:
    m._trainer = SimpleNamespace(global_step=step)  # what Lightning's global_step property reads


def _spy_views(m: SemiMethod) -> list[list[str]]:
    seen: list[list[str]] = []
    orig = m.decode_views

    def spy(views):
        seen.append(list(views))
        return orig(views)

    m.decode_views = spy  # type: ignore[method-assign]
    return seen


def test_registered_and_composed():
    assert {"cct", "cac", "crcfp", "supervised"} <= set(METHODS.names())
    assert issubclass(CRCFP, CAC) and issubclass(CRCFP, CCT)  # CRCFP is CAC + CCT (+ entropy)
    assert all(METHODS.get(n).needs_unlabeled for n in SEMI)
    assert {"weight_cont", "weight_cross", "weight_ent", "warmup_steps"} <= set(CRCFP.param_names())
    assert "weight_cont" not in CCT.param_names() and "weight_cross" not in CAC.param_names()


@pytest.mark.parametrize("name", SEMI)
def test_losses_and_gradients(name):
    m = _method(name)
    out = m.training_losses(_batch())
    assert {f"loss/{t}" for t in TERMS[name]} | {"loss", "loss/sup"} <= set(out)
    assert all(torch.isfinite(v) for v in out.values())
    w = {"cont": m.weight_cont, "cross": m.weight_cross, "ent": m.weight_ent}
    want = out["loss/sup"] + sum(w[t] * out[f"loss/{t}"] for t in TERMS[name])
    assert out["loss"].item() == pytest.approx(want.item(), rel=1e-6)
    out["loss"].backward()
    assert m.model.encoder.conv1.weight.grad.abs().sum() > 0
    if "cross" in TERMS[name]:
        assert all(h.weight.grad is not None for hs in m.cross.aux.heads.values() for h in hs)
    if "cont" in TERMS[name]:
        assert len(m.cont.bank) > 0  # negatives pushed into the bank


def test_crcfp_defaults_are_the_papers_weights():
    m = _method("crcfp")
    assert (m.weight_cont, m.weight_cross, m.weight_ent) == (0.1, 0.01, 0.01)
    c = m.cont
    assert (c.temperature, c.confidence, c.overlap) == (0.1, 0.75, (0.1, 1.0))
    assert len(m.cross.aux.heads) == 3 and m.cross.aux.draws == 4
    assert sum(len(hs) for hs in m.cross.aux.heads.values()) == 12  # K = 4 heads per type
    assert m.cont.augment.flip == 0.5 and not m.joint_forward


def test_warmup_uses_only_the_supervised_loss():
    m = _method("crcfp", warmup_steps=3)
    seen = _spy_views(m)
    _at_step(m, 2)
    out = m.training_losses(_batch())
    assert seen[-1] == ["labeled"]  # the unlabelled batch is not even encoded
    assert out["loss"].item() == pytest.approx(out["loss/sup"].item())
    assert out["loss/cont"].item() == out["loss/cross"].item() == out["loss/ent"].item() == 0.0
    _at_step(m, 3)
    out = m.training_losses(_batch())
    assert seen[-1] == ["labeled", "unlabeled", "crop1", "crop2"]
    assert out["loss"].item() != pytest.approx(out["loss/sup"].item())


@pytest.mark.parametrize(
    "weights,terms,views",
    [
        ({"weight_cont": 0, "weight_ent": 0, "weight_cross": 0}, set(), ["labeled"]),  # Sup only
        ({"weight_ent": 0, "weight_cross": 0}, {"cont"}, ["labeled", "crop1", "crop2"]),  # + cont
        ({"weight_cross": 0}, {"cont", "ent"}, ["labeled", "unlabeled", "crop1", "crop2"]),  # + cont + ent
    ],
)
def test_ablation_schemes_by_configuration(weights, terms, views):
    m = _method("crcfp", **weights)
    seen = _spy_views(m)
    out = m.training_losses(_batch())
    assert {k.split("/")[1] for k in out if k.startswith("loss/")} - {"sup"} == terms
    assert seen[-1] == views
    assert (m.cont is None) == ("cont" not in terms) and (m.cross is None) == ("cross" not in terms)


def test_unlabeled_images_of_another_size_are_decoded_separately():
    m = _method("crcfp")
    out = m.training_losses(_batch(64, unlabeled_size=96))  # crops are resized to the labelled size
    assert torch.isfinite(out["loss"])


def test_unknown_parameter_names_the_valid_ones():
    with pytest.raises(ConfigError, match="weight_cont"):
        _method("crcfp", weight_contt=0.1)
    with pytest.raises(ConfigError, match="warmup_steps"):
        _method("cct", warmup_steps=-1)


def _spy_encode(m: SemiMethod) -> list[int]:
    sizes: list[int] = []
    orig = m.model.encode

    def spy(x):
        sizes.append(int(x.shape[0]))
        return orig(x)

    m.model.encode = spy  # type: ignore[method-assign]
    return sizes


def test_each_view_has_its_own_batch_norm_pass():
    """Issue 15 item 1: one forward pass per view, so batch-norm statistics are those of that view alone."""
    m = _method("crcfp", arch="unet")  # U-Net: no dropout, so the labelled pass is deterministic
    m.train()
    sizes = _spy_encode(m)
    batch = _batch()
    out = m.training_losses(batch)
    assert sizes == [2, 2, 2, 2]  # labelled, unlabelled, crop 1, crop 2: B = 2 images each
    # reference: the labelled batch alone through the model in training mode (batch statistics of 2 images)
    ref = torch.nn.functional.cross_entropy(m.model(batch["labeled"]["image"]), batch["labeled"]["mask"])
    assert out["loss/sup"].item() == pytest.approx(ref.item(), rel=1e-5)
    joint = _method("crcfp", arch="unet", joint_forward=True)  # the opt-in: one pass over all views of a size
    sizes = _spy_encode(joint)
    joint.training_losses(batch)
    assert sizes == [8]


@pytest.mark.parametrize(
    "arch,channels,stride,tap",
    [("unet", 64, 4, "blocks.2"), ("unetplusplus", 64, 4, "blocks.x_0_2"), ("deeplabv3", 256, 8, ""),
     ("deeplabv3plus", 256, 4, "")],
)
def test_semantic_feature_tap_per_model_family(arch, channels, stride, tap):
    """Issue 15 item 8: each family exposes a >= 64-channel feature at stride 4-8, read by a hook here."""
    torch.manual_seed(0)
    model = create_model(arch, encoder="resnet18", num_classes=2).eval()
    assert (model.semantic_tap, model.semantic_channels, model.semantic_stride) == (tap, channels, stride)
    x = torch.rand(2, 3, 64, 64)
    seen = []
    target = model.decoder.get_submodule(tap) if tap else model.decoder
    hook = target.register_forward_hook(lambda _m, _i, o: seen.append(o))
    with torch.no_grad():
        features = model.encode(x)
        z_ref = model.decode(features)
        z, s = model.decode_with_semantic(features)
    hook.remove()
    assert torch.equal(z, z_ref)
    assert torch.equal(s, seen[-1]) and s.shape == (2, channels, 64 // stride, 64 // stride)


def test_unet_terms_act_on_the_semantic_feature_not_the_last_16_channel_map():
    """Issue 15 item 8: for U-Net, L_cont's projector and L_cross's perturbations read the 64-channel
    stride-4 decoder stage, pooled 2x to the stride-8 grid (not the 16-channel stride-1 map pooled 8x)."""
    m = _method("crcfp", arch="unet")
    assert m.cont.projector.net[0].in_channels == 64
    assert all(h.in_channels == 64 for hs in m.cross.aux.heads.values() for h in hs)
    assert (m.grid_stride, m.grid_pool, m.logit_pool) == (8, 2, 8)
    seen = {}
    orig = m.cross.forward
    m.cross.forward = lambda s, logits: seen.setdefault("cross", (s.shape, logits.shape)) and orig(s, logits)
    out = m.training_losses(_batch())
    assert seen["cross"] == (torch.Size([2, 64, 8, 8]), torch.Size([2, 2, 8, 8]))
    assert torch.isfinite(out["loss"])


def test_control_runs_the_methods_forwards_but_trains_on_the_supervised_loss_alone():
    """The evidence protocol's control row: CRCFP's views and terms, none of them in the loss."""
    # U-Net: no dropout, so the labelled pass does not depend on the random draws of the unlabelled views
    ctrl = _method("crcfp", "unet", control=True)
    sup = _method("crcfp", "unet", weight_cont=0, weight_cross=0, weight_ent=0)  # same weights (seed 0), L_sup only
    sd_c, sd_s = ctrl.model.state_dict(), sup.model.state_dict()
    assert sd_c.keys() == sd_s.keys() and all(torch.equal(sd_c[k], sd_s[k]) for k in sd_c)
    seen = _spy_views(ctrl)
    out_c = ctrl.training_losses(_batch())
    out_s = sup.training_losses(_batch())
    assert seen == [["labeled", "unlabeled", "crop1", "crop2"]]  # the method's four forward passes
    assert all(torch.isfinite(out_c[f"loss/{t}"]) for t in ("cont", "cross", "ent"))  # computed and logged
    assert out_c["loss/cross"].item() > 0 and out_c["loss/ent"].item() > 0
    assert out_c["loss"].item() == out_c["loss/sup"].item() == pytest.approx(out_s["loss"].item(), rel=1e-6)
    out_c["loss"].backward()
    out_s["loss"].backward()
    grads_c = {n: p.grad for n, p in ctrl.model.named_parameters()}
    for n, p in sup.model.named_parameters():  # the gradient is L_sup's alone
        assert torch.allclose(grads_c[n], p.grad, atol=1e-6), n
    assert all(h.weight.grad is None for hs in ctrl.cross.aux.heads.values() for h in hs)  # no loss reaches them
    # but the unlabelled views moved the batch-norm statistics: the confound the control row carries
    bn_c, bn_s = ctrl.model.encoder.bn1.running_mean, sup.model.encoder.bn1.running_mean
    assert not torch.allclose(bn_c, bn_s)
