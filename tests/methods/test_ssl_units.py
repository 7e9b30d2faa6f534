"""SimSiam / DSF-WSI / HookNet pieces, each checked against an independent computation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from pathseg.losses.simsiam import STAGE_WEIGHTS, dense_simsiam_loss, negative_cosine, simsiam_loss
from pathseg.methods import METHODS
from pathseg.methods.ssl import DSF, PredictionMLP, ProjectionMLP, draw_jigsaw, masked_jigsaw
from pathseg.models import create_model
from pathseg.models.hooknet import STRIDES, HookNet, centre_crop, create_hooknet, hook_box

torch.set_num_threads(1)


def _np_negcos(p, z):
    p, z = np.asarray(p, np.float64), np.asarray(z, np.float64)
    return float(np.mean(-(p * z).sum(1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(z, axis=1))))


def test_simsiam_loss_matches_reference_formula():
    g = torch.Generator().manual_seed(0)
    p1, p2, z1, z2 = (torch.randn(5, 7, generator=g) for _ in range(4))
    ref = 0.5 * _np_negcos(p1, z2) + 0.5 * _np_negcos(p2, z1)
    assert float(simsiam_loss(p1, p2, z1, z2)) == pytest.approx(ref, abs=1e-6)
    assert float(simsiam_loss(p1, p1, p1, p1)) == pytest.approx(-1.0, abs=1e-6)


def test_stop_gradient_no_gradient_reaches_the_target_of_each_term():
    g = torch.Generator().manual_seed(1)
    p1, p2, z1, z2 = (torch.randn(4, 6, generator=g).requires_grad_() for _ in range(4))
    simsiam_loss(p1, p2, z1, z2).backward()
    assert z1.grad is None and z2.grad is None  # sg(z): no gradient through the target branch
    # the gradient on p1 is that of -½ mean cos(p1, z2) with z2 constant (by hand: (ẑ - (p̂·ẑ) p̂) / |p|)
    P, Z = p1.detach().double(), z2.detach().double()
    pn, zn = P / P.norm(dim=1, keepdim=True), Z / Z.norm(dim=1, keepdim=True)
    grad = -0.5 / 4 * (zn - (pn * zn).sum(1, keepdim=True) * pn) / P.norm(dim=1, keepdim=True)
    assert torch.allclose(p1.grad.double(), grad, atol=1e-6)
    # when z comes from the same network as p, only the p path carries gradient
    w = torch.randn(6, 6, requires_grad=True)
    x = torch.randn(4, 6)
    negative_cosine(x @ w, (x @ w)).backward()
    g_sg = w.grad.clone()
    w.grad = None
    (-torch.nn.functional.cosine_similarity(x @ w, (x @ w).detach().clone(), dim=-1).mean()).backward()
    assert torch.allclose(g_sg, w.grad)


def test_dense_loss_weights_the_four_stages():
    g = torch.Generator().manual_seed(2)
    stages = [tuple(torch.randn(3, c, generator=g) for _ in range(4)) for c in (4, 8, 16, 32)]
    total, per = dense_simsiam_loss(stages)
    refs = [0.5 * _np_negcos(s[0], s[3]) + 0.5 * _np_negcos(s[1], s[2]) for s in stages]
    assert STAGE_WEIGHTS == (0.1, 0.4, 0.7, 1.0)
    assert float(total) == pytest.approx(sum(w * r for w, r in zip(STAGE_WEIGHTS, refs)), abs=1e-6)
    assert [float(p) for p in per] == pytest.approx(refs, abs=1e-6)


def test_heads_widths_and_dsf_has_twelve_projectors_and_predictors():
    proj, pred = ProjectionMLP(64), PredictionMLP(64)
    lin = [m for m in proj if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lin] == [(64, 64)] * 3
    assert [(m.in_features, m.out_features) for m in pred if isinstance(m, torch.nn.Linear)] == [(64, 16), (16, 64)]
    m = DSF(create_model("unet", encoder="resnet18"), class_names=["a", "b"], targets_per_context=4)
    assert sum(isinstance(x, ProjectionMLP) for x in m.modules()) == 12
    assert sum(isinstance(x, PredictionMLP) for x in m.modules()) == 12
    assert m.stage_weights == [0.1, 0.4, 0.7, 1.0]
    assert m.context_encoder is not m.model.encoder
    assert not torch.equal(m.context_encoder.conv1.weight, m.model.encoder.conv1.weight)  # separate weights


@pytest.mark.parametrize("m", [4, 16])
def test_masked_jigsaw_masks_half_and_moves_whole_vectors(m):
    g = torch.Generator().manual_seed(3)
    B, C = 6, 5
    perm, keep = draw_jigsaw(B, m, 0.5, generator=g)
    assert (keep == 0).sum(1).tolist() == [m // 2] * B  # exactly the ratio masked, every sample
    assert all(sorted(p.tolist()) == list(range(m)) for p in perm)  # a permutation
    t = torch.randn(B, m, C, generator=g)
    out = masked_jigsaw(t, perm, keep)
    for b in range(B):
        for k in range(m):
            expect = t[b, perm[b, k]] if keep[b, k] else torch.zeros(C)
            assert torch.equal(out[b, k], expect)
    # the same permutation applied to two stages of different widths moves the same targets
    t2 = torch.randn(B, m, 3, generator=g)
    out2 = masked_jigsaw(t2, perm, keep)
    inv = torch.argsort(perm, 1)
    back, back2 = out.gather(1, inv[..., None].expand_as(out)), out2.gather(1, inv[..., None].expand_as(out2))
    kept = keep.gather(1, inv).bool()
    assert torch.equal(back[kept], t[kept]) and torch.equal(back2[kept], t2[kept])
    assert torch.count_nonzero(back[~kept]) == 0 and torch.count_nonzero(back2[~kept]) == 0


def test_dsf_and_simsiam_steps_give_finite_losses_and_gradients():
    torch.manual_seed(0)
    batch = {"context": torch.randn(2, 2, 3, 32, 32), "targets": torch.randn(2, 2, 4, 3, 32, 32)}
    for name, params in (("dsf", {"targets_per_context": 4}), ("simsiam", {})):
        m = METHODS.get(name)(create_model("unet", encoder="resnet18"), class_names=["a", "b"], **params)
        out = m.training_losses(batch)
        out["loss"].backward()
        assert torch.isfinite(out["loss"])
        assert m.model.encoder.conv1.weight.grad is not None
    assert set(out) == {"loss", "loss/simsiam"}


@pytest.mark.parametrize("ratio,ctx,tgt", [(4, 128, 128), (2, 128, 128), (4, 256, 128), (8, 128, 256)])
def test_hooknet_crop_covers_exactly_the_target_field_of_view(ratio, ctx, tgt):
    """Maps of physical x/y coordinates (µm) at both resolutions, pooled to the hooked strides, must agree."""
    t_mpp = 0.5
    c_mpp = ratio * t_mpp
    centre = 1000.0

    def coords(size, mpp):  # pixel-centre coordinates of a patch centred on `centre`
        a = centre + (np.arange(size) + 0.5 - size / 2) * mpp
        yy, xx = np.meshgrid(a, a, indexing="ij")
        return torch.tensor(np.stack([xx, yy])[None], dtype=torch.float64)

    s, start, size = hook_box(ctx, tgt, ratio)
    assert s * ratio == 32  # the hooked map has the target bottleneck's µm per pixel
    hooked = centre_crop(torch.nn.functional.avg_pool2d(coords(ctx, c_mpp), s), start, size)
    bottleneck = torch.nn.functional.avg_pool2d(coords(tgt, t_mpp), 32)
    assert hooked.shape == bottleneck.shape == (1, 2, tgt // 32, tgt // 32)
    assert torch.allclose(hooked, bottleneck, atol=1e-9)
    assert STRIDES[[16, 8, 4, 2].index(s)] == s


def test_hooknet_uses_the_hook_and_fine_tunes_one_step():
    torch.manual_seed(0)
    net = HookNet("resnet18", num_classes=2, ratio=4)
    m = METHODS.get("hooknet")(net, class_names=["bg", "fg"], optim={"name": "adam", "lr": 1e-3})
    batch = {"image": torch.randn(2, 3, 64, 64), "context": torch.randn(2, 3, 64, 64),
             "mask": torch.randint(0, 2, (2, 64, 64))}
    out = m.training_losses(batch)
    out["loss"].backward()
    assert set(out) == {"loss", "loss/target"}  # context weight 0: only the target loss counts
    assert net.context_encoder.conv1.weight.grad is not None  # context reaches the target through the hook
    net.eval()
    a = net(batch["image"], batch["context"])["target"]
    b = net(batch["image"], torch.randn(2, 3, 64, 64))["target"]
    assert not torch.allclose(a, b)


def test_exported_weights_load_into_the_registered_encoder_without_missing_keys(tmp_path):
    from pathseg.methods.ssl.export import export_encoders

    m = DSF(create_model("unet", encoder="resnet18"), class_names=["a", "b"], targets_per_context=4)
    with torch.no_grad():
        m.model.encoder.conv1.weight.add_(1.0)
    paths = export_encoders(m, tmp_path, {"steps": 0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing key would warn
        for name in ("unet",):
            model = create_model(name, encoder="resnet18", num_classes=3, weights=paths["target"])
            for k, v in m.model.encoder.state_dict().items():
                assert torch.equal(model.encoder.state_dict()[k], v), k
        hn = create_hooknet("resnet18", weights=paths["target"], context_weights=paths["context"])
    assert torch.equal(hn.context_encoder.conv1.weight, m.context_encoder.conv1.weight)
    assert torch.equal(hn.encoder.conv1.weight, m.model.encoder.conv1.weight)
    from safetensors.torch import load_file

    assert set(load_file(str(paths["target"]))) == set(create_model("unet").encoder.state_dict())
