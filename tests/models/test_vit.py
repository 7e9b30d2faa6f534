"""The ``vit`` encoder family: real checkpoint layouts load exactly, the pyramid's shapes and strides, training
modes (frozen / last-N / LoRA / full) with layer-wise LR decay, checkpointing, ONNX export of a ViT-S U-Net.

The checkpoint layouts are made independently of pathseg's specs: timm models built with the keyword
arguments the model cards give (on the meta device: shapes only), and the transformers 4.x key lists the
Phikon checkpoints were saved with. Training tests use tiny ViTs (4 blocks, 64 wide).
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pathseg.errors import ConfigError, UnknownNameError, WeightsError
from pathseg.models.vit import (VIT_ENCODERS, build_vit, build_vit_encoder, create_vit_model, describe_encoders,
                                load_vit_state_dict, merge_lora, param_groups_lld, resolve_spec,
                                vit_of)

torch.set_num_threads(1)

TINY = dict(depth=4, embed_dim=64, num_heads=2, mlp_ratio=4.0)


def _meta(shape) -> torch.Tensor:
    return torch.empty(tuple(shape), device="meta")


# ---- the published checkpoints' key names and shapes, made as their model cards make them -------------------

def _timm_state(factory) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        return dict(factory().state_dict())


def _uni():  # huggingface.co/MahmoodLab/UNI
    import timm
    return timm.create_model("vit_large_patch16_224", img_size=224, patch_size=16, init_values=1e-5, num_classes=0,
                             dynamic_img_size=True, weight_init="skip")


def _uni2():  # huggingface.co/MahmoodLab/UNI2-h timm_kwargs (architecture vit_giant_patch14_224 in its config)
    import timm
    return timm.create_model("vit_giant_patch14_224", pretrained=False, img_size=224, patch_size=14, depth=24,
                             num_heads=24, init_values=1e-5, embed_dim=1536, mlp_ratio=2.66667 * 2, num_classes=0,
                             no_embed_class=True, mlp_layer=timm.layers.SwiGLUPacked, act_layer=nn.SiLU,
                             reg_tokens=8, dynamic_img_size=True, weight_init="skip")


def _virchow2():  # huggingface.co/paige-ai/Virchow2 config.json + model card
    import timm
    return timm.create_model("vit_huge_patch14_224", pretrained=False, img_size=224, init_values=1e-5,
                             num_classes=0, reg_tokens=4, mlp_ratio=5.3375, global_pool="", dynamic_img_size=True,
                             mlp_layer=timm.layers.SwiGLUPacked, act_layer=nn.SiLU, weight_init="skip")


def _hoptimus():  # github.com/bioptimus/releases models/h-optimus/v0 README
    import timm
    params = {"patch_size": 14, "embed_dim": 1536, "depth": 40, "num_heads": 24, "init_values": 1e-05,
              "mlp_ratio": 5.33334, "mlp_layer": functools.partial(timm.layers.mlp.GluMlp, act_layer=nn.SiLU,
                                                                   gate_last=False),
              "act_layer": nn.SiLU, "reg_tokens": 4, "no_embed_class": True, "img_size": 224, "num_classes": 0,
              "in_chans": 3}
    return timm.models.VisionTransformer(**params, weight_init="skip")


def _conch_state() -> dict[str, torch.Tensor]:  # github.com/mahmoodlab/CONCH coca_model.py: visual.trunk + the rest
    from timm.models.vision_transformer import VisionTransformer
    trunk = _timm_state(lambda: VisionTransformer(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4, img_size=448,
                                                  patch_size=16, num_classes=0, dynamic_img_size=True,
                                                  weight_init="skip"))
    state = {f"visual.trunk.{k}": v for k, v in trunk.items()}
    for k, shape in {"visual.attn_pool_contrast.query": (1, 512), "visual.ln_contrast.weight": (512,),
                     "visual.proj_contrast": (512, 512), "visual.attn_pool_caption.query": (256, 768),
                     "visual.ln_caption.weight": (768,), "text.token_embedding.weight": (32007, 768),
                     "text_decoder.resblocks.0.attn.in_proj_weight": (2304, 768), "logit_scale": ()}.items():
        state[k] = _meta(shape)
    return state


def _hf4_layout(hidden: int, layers: int, mlp: int, grid: int, patch: int, dinov2: bool) -> dict[str, torch.Tensor]:
    """transformers 4.x ViTModel / Dinov2Model key names (modeling_vit.py / modeling_dinov2.py, the layout of
    owkin/phikon and owkin/phikon-v2's files)."""
    s = {"embeddings.cls_token": (1, 1, hidden), "embeddings.position_embeddings": (1, 1 + grid * grid, hidden),
         "embeddings.patch_embeddings.projection.weight": (hidden, 3, patch, patch),
         "embeddings.patch_embeddings.projection.bias": (hidden,),
         "layernorm.weight": (hidden,), "layernorm.bias": (hidden,)}
    if dinov2:
        s["embeddings.mask_token"] = (1, hidden)
    else:
        s.update({"pooler.dense.weight": (hidden, hidden), "pooler.dense.bias": (hidden,)})
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for qkv in ("query", "key", "value"):
            s[f"{p}attention.attention.{qkv}.weight"] = (hidden, hidden)
            s[f"{p}attention.attention.{qkv}.bias"] = (hidden,)
        s[f"{p}attention.output.dense.weight"] = (hidden, hidden)
        s[f"{p}attention.output.dense.bias"] = (hidden,)
        if dinov2:
            names = {"norm1": "norm1", "norm2": "norm2", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
            s[f"{p}layer_scale1.lambda1"] = (hidden,)
            s[f"{p}layer_scale2.lambda1"] = (hidden,)
        else:
            names = {"norm1": "layernorm_before", "norm2": "layernorm_after", "fc1": "intermediate.dense",
                     "fc2": "output.dense"}
        for n in ("norm1", "norm2"):
            s[f"{p}{names[n]}.weight"] = (hidden,)
            s[f"{p}{names[n]}.bias"] = (hidden,)
        s[f"{p}{names['fc1']}.weight"], s[f"{p}{names['fc1']}.bias"] = (mlp, hidden), (mlp,)
        s[f"{p}{names['fc2']}.weight"], s[f"{p}{names['fc2']}.bias"] = (hidden, mlp), (hidden,)
    return {k: _meta(v) for k, v in s.items()}


REAL_CHECKPOINTS = {
    "uni": (lambda: _timm_state(_uni), ()),
    "uni2": (lambda: _timm_state(_uni2), ()),
    "virchow2": (lambda: _timm_state(_virchow2), ()),
    "hoptimus": (lambda: _timm_state(_hoptimus), ()),
    "conch": (_conch_state, ("text.token_embedding.weight", "visual.ln_contrast.weight", "logit_scale")),
    "phikon": (lambda: {f"vit.{k}": v for k, v in _hf4_layout(768, 12, 3072, 14, 16, dinov2=False).items()},
               ("pooler.dense.weight",)),
    "phikon2": (lambda: _hf4_layout(1024, 24, 4096, 14, 16, dinov2=True), ("embeddings.mask_token",)),
}


def test_every_named_architecture_has_a_real_checkpoint_layout():
    assert sorted(REAL_CHECKPOINTS) == VIT_ENCODERS.names()


@pytest.mark.parametrize("name", sorted(REAL_CHECKPOINTS))
def test_real_checkpoint_layout_loads_without_missing_or_unexpected_keys(name):
    make, expect_dropped = REAL_CHECKPOINTS[name]
    state = make()
    spec = resolve_spec(name)
    with torch.device("meta"):
        vit = build_vit(spec, init=False)
    own = {k: tuple(v.shape) for k, v in vit.state_dict().items()}
    dropped = load_vit_state_dict(vit, state, spec)  # raises WeightsError on any missing/unexpected/misshapen key
    assert set(expect_dropped) <= set(dropped)
    assert {k: tuple(v.shape) for k, v in vit.state_dict().items()} == own
    assert vit.num_prefix_tokens == spec.num_prefix_tokens
    assert int(vit.patch_embed.patch_size[0]) == spec.patch_size


@pytest.mark.parametrize(("name", "published"), [("uni", 303.4e6), ("uni2", 681e6), ("virchow2", 632e6),
                                                 ("hoptimus", 1.1e9)])
def test_parameter_counts_match_the_published_sizes(name, published):
    params = next(r["params"] for r in describe_encoders([name]))
    assert abs(params - published) / published < (0.05 if published >= 1e9 else 0.005)


def test_a_checkpoint_of_another_model_is_refused_by_name():
    state = REAL_CHECKPOINTS["uni"][0]()  # ViT-L/16, cls only: not UNI2-h's ViT-H/14 with 8 registers
    spec = resolve_spec("uni2")
    with torch.device("meta"):
        vit = build_vit(spec, init=False)
    with pytest.raises(WeightsError, match=r"does not fit encoder 'uni2'.*missing \(reg_token.*shape mismatch.*"
                                           r"huggingface.co/MahmoodLab/UNI2-h"):
        load_vit_state_dict(vit, state, spec)


@pytest.mark.parametrize("kind", ["vit", "dinov2"])
def test_transformers_models_convert_to_identical_timm_outputs(kind):
    """A real (tiny, random) transformers ViT / DINOv2 and its converted timm twin give the same tokens."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "vit":
        cfg = transformers.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                                     image_size=64, patch_size=16, layer_norm_eps=1e-12)
        hf = transformers.ViTModel(cfg, add_pooling_layer=False).eval()
        spec = resolve_spec("phikon", depth=2, embed_dim=64, num_heads=2, img_size=64)
    else:
        cfg = transformers.Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=64,
                                        patch_size=16, layerscale_value=0.5)
        hf = transformers.Dinov2Model(cfg).eval()
        spec = resolve_spec("phikon2", depth=2, embed_dim=64, num_heads=2, img_size=64)
    vit = build_vit(spec, init=False).eval()
    load_vit_state_dict(vit, hf.state_dict(), spec)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(vit.forward_features(x), hf(pixel_values=x).last_hidden_state, atol=1e-5, rtol=1e-4)


def test_local_files_load_in_both_formats_and_bad_ones_say_what_to_do(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    spec = resolve_spec("uni", **TINY)
    src = build_vit(spec)
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "uni.bin")
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "uni.safetensors"))
    for f in ("uni.bin", "uni.safetensors"):
        enc = build_vit_encoder("uni", weights=str(tmp_path / f), vit_kwargs=TINY)
        torch.testing.assert_close(enc.vit.blocks[3].attn.qkv.weight, src.blocks[3].attn.qkv.weight, rtol=0, atol=0)
    with pytest.raises(WeightsError, match=r"not found.*MahmoodLab/UNI.*model\.weights=/path/to/pytorch_model\.bin"):
        build_vit_encoder("uni", weights=str(tmp_path / "missing.bin"), vit_kwargs=TINY)
    (tmp_path / "junk.bin").write_bytes(b"not a torch file")
    with pytest.raises(WeightsError, match="cannot read"):
        build_vit_encoder("uni", weights=str(tmp_path / "junk.bin"), vit_kwargs=TINY)

    import huggingface_hub

    def offline(*_a, **_k):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(WeightsError, match=r"MahmoodLab/UNI2-h.*model\.weights=/path/to/pytorch_model\.bin"):
        build_vit_encoder("uni2", weights="hub", vit_kwargs=TINY)


def test_unknown_names_and_options_are_clear():
    with pytest.raises(UnknownNameError, match="Did you mean 'virchow2'"):
        resolve_spec("virchow")
    with pytest.raises(ConfigError, match="mode 'lorra'.*Did you mean 'lora'"):
        build_vit_encoder("vit_small_patch16_224", mode="lorra", vit_kwargs=TINY)
    with pytest.raises(ConfigError, match="trainable_blocks 9"):
        build_vit_encoder("vit_small_patch16_224", mode="last_n", trainable_blocks=9, vit_kwargs=TINY)


# ---- the pyramid ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(REAL_CHECKPOINTS))
def test_pyramid_shapes_and_strides_for_224_and_512_px(name):
    """Every named token layout (patch 14/16, class and register tokens) gives strides 4/8/16/32 at 224 and 512."""
    torch.manual_seed(0)
    enc = build_vit_encoder(name, vit_kwargs=TINY).eval()
    assert enc.reductions == [4, 8, 16, 32] and enc.out_channels == [64, 128, 256, 512]
    assert enc.vit.num_prefix_tokens == resolve_spec(name).num_prefix_tokens
    for size in (224, 512):
        with torch.no_grad():
            feats = enc(torch.randn(1, 3, size, size))
        assert [tuple(f.shape) for f in feats] == [(1, c, size // s, size // s)
                                                   for c, s in zip(enc.out_channels, enc.reductions)]
        assert all(torch.isfinite(f).all() for f in feats)


@pytest.mark.parametrize("name", ["uni2", "virchow2", "conch"])
def test_pyramid_tokens_equal_timms_intermediates_at_the_pretraining_size(name):
    """The pyramid runs the ViT's own modules; at its pretraining grid that is timm's forward exactly."""
    torch.manual_seed(0)
    enc = build_vit_encoder(name, vit_kwargs=TINY).eval()
    size = resolve_spec(name).img_size
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        ours = enc._blocks(x * enc.in_scale + enc.in_shift if enc.renormalise else x, exporting=False)
        timms = enc.vit.forward_intermediates(x * enc.in_scale + enc.in_shift if enc.renormalise else x,
                                              indices=enc.indices, norm=True, intermediates_only=True)
    for a, b in zip(ours, timms):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_inputs_are_renormalised_and_resized_to_a_multiple_of_the_patch():
    enc = build_vit_encoder("hoptimus", vit_kwargs=TINY).eval()  # own mean/std, patch 14
    seen = []
    enc.vit.patch_embed.register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    img = torch.rand(1, 3, 224, 224)
    imagenet = (img - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / \
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        enc(imagenet)
        enc(torch.zeros(1, 3, 512, 512))
    own = (img - torch.tensor([0.707223, 0.578729, 0.703617]).view(1, 3, 1, 1)) / \
        torch.tensor([0.211883, 0.230117, 0.177517]).view(1, 3, 1, 1)
    torch.testing.assert_close(seen[0], own, atol=1e-5, rtol=1e-5)
    assert tuple(seen[1].shape[-2:]) == (518, 518)  # 37 patches of 14 px


@pytest.mark.parametrize(("decoder", "strides"), [("unet", [1, 2, 4, 8, 16, 32]),
                                                  ("deeplabv3plus", [1, 2, 4, 8, 16, 16]),
                                                  ("deeplabv3", [1, 2, 4, 8, 8, 8])])
def test_smp_decoders_sit_on_the_pyramid_with_their_semantic_taps(decoder, strides):
    m = create_vit_model(decoder, encoder="vit_small_patch16_224", num_classes=3, vit_kwargs=TINY).eval()
    assert m.encoder.reductions == strides and m.encoder.out_channels == [3, 64, 64, 128, 256, 512]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = m.encode(x)
        assert [f.shape[-1] for f in feats] == [64 // s for s in strides]
        z, s = m.decode_with_semantic(feats)
        assert s.shape[1] == m.semantic_channels and s.shape[-1] == 64 // m.semantic_stride
        assert m(x).shape == (1, 3, 64, 64)


# ---- training modes --------------------------------------------------------------------------------------

def _one_step(model, lr=1e-2):
    groups = param_groups_lld(model, lr=lr, decay=0.75, weight_decay=0.05)
    opt = torch.optim.AdamW(groups)
    x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return float(loss.detach())


@pytest.mark.parametrize("mode", ["full", "frozen", "last_n", "lora"])
def test_a_tiny_vit_unet_trains_one_step_under_each_mode(mode):
    torch.manual_seed(0)
    m = create_vit_model("unet", encoder="vit_small_patch16_224", num_classes=3, mode=mode, trainable_blocks=1,
                         lora_rank=4, vit_kwargs=TINY)
    vit = vit_of(m)
    base = {k: v.detach().clone() for k, v in vit.state_dict().items() if "lora_" not in k}
    cls = m.classifier.weight.detach().clone()
    assert torch.isfinite(torch.tensor(_one_step(m)))
    after = {k: v for k, v in vit.state_dict().items() if "lora_" not in k}
    changed = {k for k in base if not torch.equal(base[k], after[k])}
    assert not torch.equal(cls, m.classifier.weight), "the classifier trains in every mode"
    if mode == "full":
        assert "patch_embed.proj.weight" in changed and "blocks.0.attn.qkv.weight" in changed
    elif mode == "last_n":
        assert "blocks.3.attn.qkv.weight" in changed and "norm.weight" in changed
        assert not any(k.startswith(("blocks.0.", "blocks.1.", "blocks.2.", "patch_embed", "pos_embed", "cls_token"))
                       for k in changed)
    else:  # frozen, lora: the pretrained weights do not move
        assert changed == set()


def test_lora_leaves_frozen_weights_bit_identical_and_trains_only_adapters():
    torch.manual_seed(0)
    m = create_vit_model("unet", encoder="vit_small_patch16_224", num_classes=3, mode="lora", lora_rank=4,
                         vit_kwargs=TINY)
    vit = vit_of(m)
    trainable = [n for n, p in vit.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".")[3] for n in trainable} == {"qkv", "proj"}  # blocks.N.attn.{qkv,proj}.lora_*
    assert not any(n.startswith("patch_embed") for n in trainable)
    frozen = {n: p.detach().clone() for n, p in vit.named_parameters() if not p.requires_grad}
    lora_b = {n: p.detach().clone() for n, p in vit.named_parameters() if "lora_B" in n}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = m.eval()(x)
    m.train()
    for _ in range(2):
        _one_step(m)
    for n, p in vit.named_parameters():
        if n in frozen:
            assert torch.equal(frozen[n], p), f"{n} moved"
    assert any(not torch.equal(lora_b[n], p) for n, p in vit.named_parameters() if n in lora_b)
    m.eval()
    with torch.no_grad():
        adapted = m(x)
        assert not torch.allclose(before, adapted)
        merge_lora(vit)  # folded into the weights: same function, the checkpoint's own key names again
        torch.testing.assert_close(m(x), adapted, atol=5e-4, rtol=1e-3)  # float32 rounding of W + BA
    assert not any("lora_" in k or "base_layer" in k for k in vit.state_dict())


def test_layerwise_lr_decay_scales_by_depth():
    m = create_vit_model("unet", encoder="vit_small_patch16_224", num_classes=2, vit_kwargs=TINY)
    groups = param_groups_lld(m, lr=1.0, decay=0.5, weight_decay=0.05)
    scale = {n: g["lr"] for g in groups for n in g["names"]}
    wd = {n: g["weight_decay"] for g in groups for n in g["names"]}
    pre = "encoder.pyramid.vit."
    assert scale[pre + "patch_embed.proj.weight"] == 0.5 ** 5 and scale[pre + "pos_embed"] == 0.5 ** 5
    assert [scale[f"{pre}blocks.{i}.attn.qkv.weight"] for i in range(4)] == [0.5 ** 4, 0.5 ** 3, 0.5 ** 2, 0.5]
    assert scale[pre + "norm.weight"] == 1.0 and scale["classifier.weight"] == 1.0
    assert wd[pre + "blocks.0.attn.qkv.weight"] == 0.05 and wd[pre + "blocks.0.attn.qkv.bias"] == 0.0
    assert wd[pre + "cls_token"] == 0.0
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in m.parameters() if p.requires_grad)


def test_activation_checkpointing_gives_the_same_gradients_under_lora():
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        m = create_vit_model("unet", encoder="vit_small_patch16_224", num_classes=2, mode="lora", lora_rank=2,
                             checkpointing=ckpt, vit_kwargs=TINY)
        torch.manual_seed(1)
        for n, p in vit_of(m).named_parameters():  # non-zero B so that A gets a gradient too
            if "lora_B" in n:
                p.data.normal_(0, 0.1)
        x, y = torch.randn(2, 3, 64, 64), torch.randint(0, 2, (2, 64, 64))
        F.cross_entropy(m(x), y).backward()
        grads.append({n: p.grad.clone() for n, p in vit_of(m).named_parameters() if p.requires_grad})
    assert vit_of(m).grad_checkpointing
    assert grads[0].keys() == grads[1].keys() and all(g.abs().sum() > 0 for g in grads[1].values())
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=1e-6, rtol=1e-5)


def test_build_options_rebuild_the_same_network_for_checkpoints():
    torch.manual_seed(0)
    m = create_vit_model("deeplabv3plus", encoder="virchow2", num_classes=2, mode="lora", lora_rank=2,
                         vit_kwargs=TINY).eval()
    twin = create_vit_model("deeplabv3plus", encoder="virchow2", num_classes=2, **m.build_options).eval()
    twin.load_state_dict(m.state_dict())  # strict: same keys, LoRA layers included
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), m(x))


# ---- export and the CLI ----------------------------------------------------------------------------------

def test_vit_small_unet_exports_to_onnx_matching_torch(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    m = create_vit_model("unet", encoder="vit_small_patch16_224", num_classes=3).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref = m(x)
    assert ref.shape == (1, 3, 224, 224)
    path = tmp_path / "vit_s_unet.onnx"
    torch.onnx.export(m, (x,), str(path), dynamo=False, opset_version=17, input_names=["image"],
                      output_names=["logits"], dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                                                             "logits": {0: "batch", 2: "height", 3: "width"}})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"image": x.numpy()})[0]
    assert float((torch.from_numpy(out) - ref).abs().max()) < 1e-4
    x = torch.randn(2, 3, 256, 320)  # another tile: position embeddings resampled inside the graph
    with torch.no_grad():
        ref = m(x)
    out = sess.run(None, {"image": x.numpy()})[0]
    assert out.shape == (2, 3, 256, 320) and float((torch.from_numpy(out) - ref).abs().max()) < 1e-4


def test_a_patch14_register_vit_exports_with_dynamic_tile_sizes(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    m = create_vit_model("unet", encoder="uni2", num_classes=2, vit_kwargs=TINY).eval()
    path = tmp_path / "uni2_tiny.onnx"
    torch.onnx.export(m, (torch.randn(1, 3, 224, 224),), str(path), dynamo=False, opset_version=17,
                      input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {2: "height", 3: "width"}, "logits": {2: "height", 3: "width"}})
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for size in (224, 512):  # 512 is not a multiple of 14: resized to 518 inside the graph, as in torch
        x = torch.randn(1, 3, size, size)
        with torch.no_grad():
            ref = m(x)
        out = sess.run(None, {"image": x.numpy()})[0]
        assert float((torch.from_numpy(out) - ref).abs().max()) < 1e-4


def test_encoders_command_lists_names_params_patch_mpp_and_weights():
    import typer
    from typer.testing import CliRunner

    from pathseg.cli.encoders import register

    app = typer.Typer()
    register(app)

    @app.command("noop")
    def _noop() -> None:  # a second command, so typer keeps "encoders" as a named subcommand
        pass

    res = CliRunner().invoke(app, ["encoders", "--json"])
    assert res.exit_code == 0, res.output
    import json

    rows = {r["name"]: r for r in json.loads(res.output)}
    assert sorted(rows) == VIT_ENCODERS.names()
    assert rows["hoptimus"]["patch"] == 14 and rows["hoptimus"]["tokens"] == "cls + 4 reg"
    assert rows["uni2"]["tokens"] == "cls + 8 reg" and rows["conch"]["normalisation"] == "OpenAI CLIP"
    assert rows["uni"]["mpp"] == 0.5 and "MahmoodLab/UNI" in rows["uni"]["weights"] and rows["uni"]["gated"]
    assert not rows["phikon"]["gated"] and rows["phikon2"]["hub_id"] == "owkin/phikon-v2"
    res = CliRunner().invoke(app, ["encoders"])
    assert res.exit_code == 0 and "virchow2" in res.output


def test_a_vit_unet_quantises_to_int8_with_its_attention_matmuls_in_int8(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # ONNX Runtime's shape inference saves its partial graph to the cwd where it gives up
    import numpy as np
    import onnx
    import onnxruntime as ort

    from pathseg.inference.onnx import InputNormaliser, export_model_onnx, read_onnx_info
    from pathseg.inference.quantize import QuantizeConfig, quantize_onnx, tissue_pixels

    torch.manual_seed(0)
    m = create_vit_model("unet", encoder="vit_small_patch16_224", num_classes=2, vit_kwargs=TINY).eval()
    info = {"model": "unet", "encoder": "vit_small_patch16_224", "num_classes": 2, "class_names": ["a", "b"],
            "colors": [[0, 0, 0], [255, 0, 0]], "mpp": 0.5, "mean": [0.5] * 3, "std": [0.25] * 3}
    fp32 = export_model_onnx(m, info, tmp_path / "vit.onnx", tile=64)
    rng = np.random.default_rng(0)
    tiles = rng.integers(60, 200, (6, 64, 64, 3)).astype(np.uint8)
    # an untrained network's near-ties may fall below any threshold: keep the model, warn if so
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path, report = quantize_onnx(fp32, tmp_path / "vit.int8.onnx", tiles,
                                     config=QuantizeConfig(tiles=6, min_agreement=1.0), on_low="warn")
    assert read_onnx_info(path)["precision"] == "int8"
    assert not list(cwd.iterdir())  # nothing left in the user's folder
    graph = onnx.load(str(path)).graph
    producers = {o: nd for nd in graph.node for o in nd.output}
    matmuls = [nd for nd in graph.node if nd.op_type == "MatMul"]
    assert matmuls and all(producers[i].op_type == "DequantizeLinear" for nd in matmuls for i in nd.input
                           if i in producers)  # attention and MLP products read int8 operands
    # the report's agreement, recomputed from both graphs on the calibration tiles
    x = InputNormaliser(info["mean"], info["std"])(tiles)
    lab = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0].argmax(1)
           for p in (fp32, path)]
    mask = tissue_pixels(tiles)
    assert abs(float((lab[0] == lab[1])[mask].mean() if mask.any() else (lab[0] == lab[1]).mean())
               - report["agreement"]) < 1e-9
