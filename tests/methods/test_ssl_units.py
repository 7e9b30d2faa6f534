"""SimSiam / DSF-WSI / HookNet pieces, each checked against an independent computation."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from pathseg.losses.simsiam import STAGE_WEIGHTS, dense_simsiam_loss, negative_cosine, simsiam_loss
from pathseg.methods import METHODS
from pathseg.errors import ConfigError
from pathseg.methods.ssl import DSF, PredictionMLP, ProjectionMLP, draw_jigsaw, kept_targets, masked_jigsaw, scaled_lr
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
def test_masked_jigsaw_keeps_half_and_moves_whole_vectors(m):
    g = torch.Generator().manual_seed(3)
    B, C = 6, 5
    idx = draw_jigsaw(B, m, 0.5, generator=g)
    assert idx.shape == (B, m // 2) and kept_targets(m, 0.5) == m // 2  # floor(m (1 - 0.5)) kept, every sample
    assert all(len(set(r.tolist())) == m // 2 and 0 <= min(r) and max(r) < m for r in idx)  # distinct targets
    assert any(r.tolist() != sorted(r.tolist()) for r in idx)  # jigsaw: the kept ones come in a shuffled order
    t = torch.randn(B, m, C, generator=g)
    out = masked_jigsaw(t, idx)
    t2 = torch.randn(B, m, 3, generator=g)
    out2 = masked_jigsaw(t2, idx)  # the same draw on a stage of another width moves the same targets
    for b in range(B):
        for k in range(m // 2):
            assert torch.equal(out[b, k], t[b, idx[b, k]]) and torch.equal(out2[b, k], t2[b, idx[b, k]])
    assert [kept_targets(16, r) for r in (0.0, 0.25, 0.7)] == [16, 12, 4]  # the authors' int(m (1 - r))
    with pytest.raises(ConfigError, match="keeps no target"):
        kept_targets(4, 0.9)


def test_masking_only_keeps_the_targets_in_spatial_order(monkeypatch):
    g = torch.Generator().manual_seed(4)
    idx = draw_jigsaw(50, 16, 0.5, jigsaw=False, generator=g)
    assert idx.shape == (50, 8)
    assert all(r.tolist() == sorted(r.tolist()) for r in idx)  # no shuffle ...
    assert len({tuple(r.tolist()) for r in idx}) > 1  # ... but a random subset each time
    m = DSF(create_model("unet", encoder="resnet18"), class_names=["a", "b"], targets_per_context=4, jigsaw=False)
    assert m.jigsaw is False and "jigsaw" in DSF.param_names()
    import pathseg.methods.ssl.dsf as dsf_module

    seen = []

    def spy(*a, **kw):
        seen.append(kw.get("jigsaw"))
        return draw_jigsaw(*a, **kw)

    monkeypatch.setattr(dsf_module, "draw_jigsaw", spy)
    torch.manual_seed(0)
    m.training_losses({"context": torch.randn(2, 2, 3, 32, 32), "targets": torch.randn(2, 2, 4, 3, 32, 32)})
    assert seen == [False, False]  # one draw per view, both without the shuffle


def test_ctfm_projects_the_concatenation_directly_unless_asked_to_narrow():
    m = DSF(create_model("unet", encoder="resnet18"), class_names=["a", "b"], targets_per_context=16, mask_ratio=0.5)
    chans = [64, 128, 256, 512]
    n_keep = 8  # 16 targets, half masked
    for ctfm, head, c in zip(m.ctfm, m.fusion_heads, chans):
        assert not any(isinstance(x, torch.nn.Linear) for x in ctfm.modules())  # no layer between concat and head
        assert ctfm.in_channels == ctfm.out_channels == (1 + n_keep) * c
        assert head.projector[0].in_features == (1 + n_keep) * c  # the fusion projector takes the concatenation
    # the fused vector is [context ; the kept targets in slot order], nothing else
    g = torch.Generator().manual_seed(5)
    ctx, tg = torch.randn(3, 64, generator=g), torch.randn(3, 16, 64, generator=g)
    idx = draw_jigsaw(3, 16, 0.5, generator=g)
    ref = torch.stack([torch.cat([ctx[b]] + [tg[b, int(k)] for k in idx[b]]) for b in range(3)])
    assert torch.equal(m.ctfm[0](ctx, tg, idx), ref)
    narrow = DSF(create_model("unet", encoder="resnet18"), class_names=["a", "b"], targets_per_context=16,
                 ctfm_narrow=True)
    for ctfm, head, c in zip(narrow.ctfm, narrow.fusion_heads, chans):
        lin = [x for x in ctfm.modules() if isinstance(x, torch.nn.Linear)]
        assert [(x.in_features, x.out_features) for x in lin] == [((1 + n_keep) * c, c)]
        assert head.projector[0].in_features == c


def test_lr_scales_with_the_square_root_of_the_batch():
    def lr(**kw):
        m = METHODS.get("simsiam")(create_model("unet", encoder="resnet18"), class_names=["a", "b"],
                                   optim={"name": "adam", "lr": 1e-3}, **kw)
        return m.configure_optimizers()["optimizer"].param_groups[0]["lr"]

    assert lr(batch_size=4) == pytest.approx(1e-3 * math.sqrt(4 / 32), rel=1e-12)  # 3.536e-4
    assert lr(batch_size=4) == pytest.approx(3.5355339e-4, rel=1e-6)
    assert lr(batch_size=32) == pytest.approx(1e-3, rel=1e-12)
    assert lr(batch_size=128) == pytest.approx(2e-3, rel=1e-12)
    assert lr(batch_size=4, lr_scaling="none") == pytest.approx(1e-3, rel=1e-12)
    assert scaled_lr(1e-3, 8) == pytest.approx(5e-4)
    with pytest.raises(ConfigError, match="lr_scaling"):
        lr(batch_size=4, lr_scaling="linear")


def test_heads_with_a_batch_norm_batch_below_8_warn():
    m = DSF(create_model("unet", encoder="resnet18"), class_names=["a", "b"], targets_per_context=4)
    batch = {"context": torch.zeros(2, 2, 3, 32, 32), "targets": torch.zeros(2, 2, 4, 3, 32, 32)}
    with pytest.warns(UserWarning, match=r"fewer than 8 samples a step \(context heads 2, fusion heads 2\)"):
        counts = m.warn_small_head_batches(batch)
    assert counts == {"context": 2, "target": 8, "fusion": 2}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        big = {"context": torch.zeros(8, 2, 3, 32, 32), "targets": torch.zeros(8, 2, 4, 3, 32, 32)}
        assert m.warn_small_head_batches(big) == {"context": 8, "target": 32, "fusion": 8}
    s = METHODS.get("simsiam")(create_model("unet", encoder="resnet18"), class_names=["a", "b"], branch="context")
    with pytest.warns(UserWarning, match="context heads 2"):
        s.warn_small_head_batches(batch)


def test_logged_spread_is_the_std_of_l2_normalised_head_outputs():
    from pathseg.methods.ssl.simsiam import pooled_stages

    torch.manual_seed(0)
    batch = {"context": torch.randn(3, 2, 3, 32, 32), "targets": torch.randn(3, 2, 4, 3, 32, 32)}

    def ref_spread(z):
        z = z.detach().double().numpy()
        zn = z / np.linalg.norm(z, axis=1, keepdims=True)
        return float(zn.std(axis=0, ddof=1).mean())

    m = METHODS.get("simsiam")(create_model("unet", encoder="resnet18"), class_names=["a", "b"], channels_last=False)
    out = m.training_losses(batch)
    x1 = batch["targets"][:, 0].flatten(0, 1)
    z1 = m.heads[0].projector(pooled_stages(m.model.encoder, x1)[-1])  # train mode: the same batch statistics
    assert float(out["spread/target"]) == pytest.approx(ref_spread(z1), abs=1e-6)
    assert 0.0 < float(out["spread/target"]) < 1.0

    d = DSF(create_model("unet", encoder="resnet18"), class_names=["a", "b"], targets_per_context=4,
            channels_last=False)
    out = {k: v.detach() for k, v in d.training_losses(batch).items()}
    z1 = d.context_heads[1].projector(pooled_stages(d.context_encoder, batch["context"][:, 0])[1])
    assert float(out["spread/context/stage2"]) == pytest.approx(ref_spread(z1), abs=1e-6)
    # and each loss term is logged: per stage, unweighted, and the weighted branch totals
    for br in ("context", "target", "fusion"):
        per = [float(out[f"loss/{br}/stage{s}"]) for s in range(1, 5)]
        assert float(out[f"loss/{br}"]) == pytest.approx(sum(w * p for w, p in zip(STAGE_WEIGHTS, per)), abs=1e-5)
    assert float(out["loss"]) == pytest.approx(sum(float(out[f"loss/{b}"]) for b in ("context", "target", "fusion")),
                                               abs=1e-5)


def test_dsf_and_simsiam_steps_give_finite_losses_and_gradients():
    torch.manual_seed(0)
    batch = {"context": torch.randn(2, 2, 3, 32, 32), "targets": torch.randn(2, 2, 4, 3, 32, 32)}
    for name, params in (("dsf", {"targets_per_context": 4}), ("simsiam", {})):
        m = METHODS.get(name)(create_model("unet", encoder="resnet18"), class_names=["a", "b"], **params)
        out = m.training_losses(batch)
        out["loss"].backward()
        assert torch.isfinite(out["loss"])
        assert m.model.encoder.conv1.weight.grad is not None
    assert set(out) == {"loss", "loss/target", "spread/target"}


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


def test_hook_concatenates_straight_into_the_target_decoder():
    torch.manual_seed(0)
    net = HookNet("resnet18", num_classes=2, ratio=4).eval()
    assert net.hook is None
    assert not any(isinstance(x, torch.nn.Conv2d) and x.kernel_size == (1, 1) and x.in_channels == 512 + 128
                   for x in net.modules())
    # the target decoder's first block takes bottleneck (512) + hooked context map (128 at stride 8) + skip (256)
    assert net.decoder.blocks[0][0].in_channels == 512 + 128 + 256
    seen = {}
    net.decoder.register_forward_pre_hook(lambda mod, args: seen.__setitem__("bottleneck", args[1]))  # returns None
    tgt, ctx = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        net(tgt, ctx)
        s, start, size = hook_box(64, 64, 4)
        cmap = net.context_decoder(net.context_encoder(ctx))[STRIDES.index(s)]
        ref = torch.cat([net.encoder(tgt)[-1], centre_crop(cmap, start, size)], 1)
    assert torch.equal(seen["bottleneck"], ref)  # the concatenation itself, no layer in between


def test_hook_conv_option_keeps_the_old_layer_and_old_checkpoints_still_load(tmp_path):
    from pathseg.models.checkpoint import load_model, save_model_checkpoint

    torch.manual_seed(0)
    old = create_model("hooknet", encoder="resnet18", num_classes=2, ratio=4, tile=64, hook_conv=True)
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in old.hook.modules()
            if isinstance(c, torch.nn.Conv2d)] == [(512 + 128, 512, (1, 1))]
    assert old.decoder.blocks[0][0].in_channels == 512 + 256
    assert old.build_options["hook_conv"] is True  # saved in checkpoints, so load_model rebuilds it
    # a checkpoint from before issue 15: the 1x1 conv in its weights, no hook_conv among its options
    del old.build_options["hook_conv"]
    ckpt = save_model_checkpoint(tmp_path / "old.ckpt", old, ["a", "b"], mpp=0.5)
    loaded, info = load_model(ckpt)
    assert "hook_conv" not in info["options"] and loaded.hook is not None
    assert loaded.build_options["hook_conv"] is True
    old.eval()
    x, c = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(old(x, c)["target"], loaded(x, c)["target"])
    new = create_model("hooknet", encoder="resnet18", num_classes=2, ratio=4, tile=64).eval()
    loaded.load_state_dict(new.state_dict())  # and back to the published layout
    assert loaded.hook is None and loaded.build_options["hook_conv"] is False
    with torch.no_grad():
        assert torch.equal(new(x, c)["target"], loaded(x, c)["target"])


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
