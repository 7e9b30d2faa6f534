"""The named pathology ViTs: architecture, token layout, input normalisation, MPP and where the weights are.

Each :class:`VitSpec` holds the exact keyword arguments of timm's ``VisionTransformer`` that reproduce
the published network, so a checkpoint's tensors fit it one for one. Every number carries its source
(model card, config file or the authors' code); re-check them there when a new release appears.

=========== ============ ===== ============= ================== ===== ====================================
name        architecture patch prefix tokens normalisation      MPP   weights
=========== ============ ===== ============= ================== ===== ====================================
uni         ViT-L/16     16    cls           ImageNet           0.5   MahmoodLab/UNI (gated)
uni2        ViT-H/14     14    cls + 8 reg   ImageNet           0.5   MahmoodLab/UNI2-h (gated)
virchow2    ViT-H/14     14    cls + 4 reg   ImageNet           0.5*  paige-ai/Virchow2 (gated)
hoptimus    ViT-g/14     14    cls + 4 reg   H-optimus-0's own  0.5   bioptimus/H-optimus-0 (gated)
phikon      ViT-B/16     16    cls           ImageNet           0.5   owkin/phikon (HF ViT keys)
phikon2     ViT-L/16     16    cls           ImageNet           0.5   owkin/phikon-v2 (HF DINOv2 keys)
conch       ViT-B/16     16    cls           OpenAI CLIP        0.5   MahmoodLab/CONCH (gated, visual.trunk)
=========== ============ ===== ============= ================== ===== ====================================

(*) Virchow2 was trained on tiles at 5x, 10x, 20x and 40x (2.0-0.25 µm/px); 0.5 is its 20x setting.

Any other timm ViT (``vit_small_patch16_224``, ``vit_base_patch14_dinov2``, ...) is built by its timm name,
with timm's own normalisation and patch size (:func:`resolve_spec`).

Example:
    >>> spec = resolve_spec("uni2")
    >>> spec.patch_size, spec.num_prefix_tokens, spec.mean
    (14, 9, (0.485, 0.456, 0.406))
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from pathseg.errors import UnknownNameError
from pathseg.registry import Registry, did_you_mean
from pathseg.transforms.paired import IMAGENET_MEAN, IMAGENET_STD  # pathseg's input normalisation, defined once

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CONCH conch/open_clip_custom/constants.py
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)  # bioptimus/H-optimus-0 model card, transforms.Normalize
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)


@dataclass(frozen=True)
class VitSpec:
    """One ViT encoder: how to build it (timm ``VisionTransformer`` kwargs) and how to feed and load it.

    Attributes:
        name: the registered name (``uni``) or a timm model name.
        arch: short label, e.g. "ViT-L/16".
        vit_kwargs: ``VisionTransformer`` keyword arguments (without num_classes / dynamic_img_size).
        timm_name: for plain timm ViTs, the timm model to create (vit_kwargs are then overrides).
        mean, std: the input normalisation the weights were trained with (RGB in [0, 1]).
        mpp: the resolution (µm/px) the weights expect, None when unknown.
        key_format: the checkpoint's key layout: "timm", "hf_vit" (transformers ViTModel), "hf_dinov2"
            (transformers Dinov2Model) or "conch" (timm trunk under ``visual.trunk.``).
        hub_id, hub_files: Hugging Face repository and the file names to try, in order.
        source: where the weights come from, in words (licence, gate), for messages and ``pathseg encoders``.
        gated: the hub repository needs a licence click (and a token) before downloading.
    """

    name: str
    arch: str
    vit_kwargs: dict[str, Any] = field(default_factory=dict)
    timm_name: str | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    mpp: float | None = None
    key_format: str = "timm"
    hub_id: str | None = None
    hub_files: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
    source: str = ""
    gated: bool = False

    @property
    def patch_size(self) -> int:
        return int(self.vit_kwargs.get("patch_size", 16))

    @property
    def img_size(self) -> int:
        return int(self.vit_kwargs.get("img_size", 224))

    @property
    def num_reg_tokens(self) -> int:
        return int(self.vit_kwargs.get("reg_tokens", 0))

    @property
    def num_prefix_tokens(self) -> int:
        """Class token (when present) plus register tokens: the tokens that are not image patches."""
        return int(self.vit_kwargs.get("class_token", True)) + self.num_reg_tokens

    def with_overrides(self, **vit_kwargs: Any) -> VitSpec:
        """The same spec with some ``VisionTransformer`` arguments replaced (e.g. a tiny test variant)."""
        return replace(self, vit_kwargs={**self.vit_kwargs, **vit_kwargs}) if vit_kwargs else self


def _swiglu() -> dict[str, Any]:
    from timm.layers import SwiGLUPacked

    # SwiGLUPacked == GluMlp(act_layer=SiLU, gate_last=False): fc1 holds [gate, value] packed in one Linear
    return {"mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU}


VIT_ENCODERS: Registry[VitSpec] = Registry("ViT encoder")


def _register(spec: VitSpec) -> None:
    VIT_ENCODERS.register(spec.name, spec)


# UNI (Chen et al. 2024). huggingface.co/MahmoodLab/UNI model card: timm.create_model("vit_large_patch16_224",
# img_size=224, patch_size=16, init_values=1e-5, num_classes=0, dynamic_img_size=True); Normalize(ImageNet).
# vit_large_patch16_224: embed_dim 1024, depth 24, heads 16 (timm). 20x tiles (Mass-100K) -> 0.5 µm/px.
_register(VitSpec(
    name="uni", arch="ViT-L/16",
    vit_kwargs=dict(img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0,
                    init_values=1e-5),
    mpp=0.5, key_format="timm", hub_id="MahmoodLab/UNI", hub_files=("pytorch_model.bin",),
    gated=True,
    source="huggingface.co/MahmoodLab/UNI (gated: accept CC-BY-NC-ND-4.0), file pytorch_model.bin"))

# UNI2-h. huggingface.co/MahmoodLab/UNI2-h model card timm_kwargs: img_size 224, patch_size 14, depth 24,
# num_heads 24, init_values 1e-5, embed_dim 1536, mlp_ratio 2.66667*2, no_embed_class True,
# mlp_layer SwiGLUPacked, act_layer SiLU, reg_tokens 8; ImageNet normalisation (its pretrained_cfg).
_register(VitSpec(
    name="uni2", arch="ViT-H/14",
    vit_kwargs=dict(img_size=224, patch_size=14, embed_dim=1536, depth=24, num_heads=24, mlp_ratio=2.66667 * 2,
                    init_values=1e-5, no_embed_class=True, reg_tokens=8, **_swiglu()),
    mpp=0.5, key_format="timm", hub_id="MahmoodLab/UNI2-h", hub_files=("pytorch_model.bin",),
    gated=True,
    source="huggingface.co/MahmoodLab/UNI2-h (gated: accept CC-BY-NC-ND-4.0), file pytorch_model.bin"))

# Virchow2 (Zimmermann et al. 2024). huggingface.co/paige-ai/Virchow2 config.json: architecture
# vit_huge_patch14_224 (embed_dim 1280, depth 32, heads 16), model_args img_size 224, init_values 1e-5,
# reg_tokens 4, mlp_ratio 5.3375, global_pool ""; model card adds mlp_layer SwiGLUPacked, act_layer SiLU;
# pretrained_cfg mean/std ImageNet. Trained at 5x/10x/20x/40x (paper), 20x = 0.5 µm/px.
_register(VitSpec(
    name="virchow2", arch="ViT-H/14",
    vit_kwargs=dict(img_size=224, patch_size=14, embed_dim=1280, depth=32, num_heads=16, mlp_ratio=5.3375,
                    init_values=1e-5, reg_tokens=4, **_swiglu()),
    mpp=0.5, key_format="timm", hub_id="paige-ai/Virchow2",
    gated=True,
    source="huggingface.co/paige-ai/Virchow2 (gated: accept CC-BY-NC-ND-4.0), file model.safetensors "
           "or pytorch_model.bin"))

# H-optimus-0. github.com/bioptimus/releases models/h-optimus/v0 README params: patch_size 14, embed_dim 1536,
# depth 40, num_heads 24, init_values 1e-05, mlp_ratio 5.33334, mlp_layer GluMlp(SiLU, gate_last=False)
# (= SwiGLUPacked), act_layer SiLU, reg_tokens 4, no_embed_class True, img_size 224; Normalize(mean=(0.707223,
# 0.578729, 0.703617), std=(0.211883, 0.230117, 0.177517)); "224x224, extracted at 0.5 microns per pixel".
_register(VitSpec(
    name="hoptimus", arch="ViT-g/14",
    vit_kwargs=dict(img_size=224, patch_size=14, embed_dim=1536, depth=40, num_heads=24, mlp_ratio=5.33334,
                    init_values=1e-5, no_embed_class=True, reg_tokens=4, **_swiglu()),
    mean=HOPTIMUS_MEAN, std=HOPTIMUS_STD,
    mpp=0.5, key_format="timm", hub_id="bioptimus/H-optimus-0",
    gated=True,
    source="huggingface.co/bioptimus/H-optimus-0 (gated: accept the terms), file model.safetensors or "
           "pytorch_model.bin; or checkpoint.pth linked from github.com/bioptimus/releases"))

# Phikon (Filiot et al. 2023, iBOT). huggingface.co/owkin/phikon config.json: ViTModel, hidden_size 768,
# num_hidden_layers 12, num_attention_heads 12, intermediate_size 3072 (mlp_ratio 4), patch_size 16,
# image_size 224, qkv_bias true, layer_norm_eps 1e-12; preprocessor: ImageNet mean/std. 20x = 0.5 µm/px.
_register(VitSpec(
    name="phikon", arch="ViT-B/16",
    vit_kwargs=dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0,
                    norm_layer=functools.partial(nn.LayerNorm, eps=1e-12)),
    mpp=0.5, key_format="hf_vit", hub_id="owkin/phikon",
    source="huggingface.co/owkin/phikon (open, Owkin non-commercial licence), file model.safetensors or "
           "pytorch_model.bin (transformers ViTModel keys, converted here)"))

# Phikon-v2 (Filiot et al. 2024, DINOv2). Model card: "ViT-L/16 via DINOv2", transformers Dinov2Model
# (hidden 1024, 24 layers, 16 heads, mlp_ratio 4, layer-scale in every block, layer_norm_eps 1e-6, no
# registers); 224 px tiles at 20x (0.5 µm/px); ImageNet mean/std (its preprocessor_config.json).
_register(VitSpec(
    name="phikon2", arch="ViT-L/16",
    vit_kwargs=dict(img_size=224, patch_size=16, embed_dim=1024, depth=24, num_heads=16, mlp_ratio=4.0,
                    init_values=1e-5),
    mpp=0.5, key_format="hf_dinov2", hub_id="owkin/phikon-v2", hub_files=("model.safetensors",),
    source="huggingface.co/owkin/phikon-v2 (open, Owkin non-commercial licence), file model.safetensors "
           "(transformers Dinov2Model keys, converted here)"))

# CONCH's image tower (Lu et al. 2024). github.com/mahmoodlab/CONCH coca_model.py _build_vision_tower:
# VisionTransformer(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4, img_size=448, patch_size=16,
# num_classes=0, dynamic_img_size=True) as visual.trunk; model_configs/conch_ViT-B-16.json image_size 448;
# factory.py normalises with OPENAI_DATASET_MEAN/STD.
_register(VitSpec(
    name="conch", arch="ViT-B/16",
    vit_kwargs=dict(img_size=448, patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0),
    mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD,
    mpp=0.5, key_format="conch", hub_id="MahmoodLab/CONCH", hub_files=("pytorch_model.bin",),
    gated=True,
    source="huggingface.co/MahmoodLab/CONCH (gated: accept CC-BY-NC-ND-4.0), file pytorch_model.bin "
           "(the image tower visual.trunk.* is taken, the text tower left out)"))


@functools.lru_cache(maxsize=1)
def _timm_vit_names() -> frozenset[str]:
    import timm

    return frozenset(timm.list_models(module="vision_transformer"))


def is_vit_encoder(name: str) -> bool:
    """True for a registered pathology ViT (``uni``, ...) or a timm model built by timm's VisionTransformer."""
    if not isinstance(name, str):
        return False
    return name in VIT_ENCODERS or name.split(".")[0] in _timm_vit_names()


def resolve_spec(name: str, **vit_kwargs: Any) -> VitSpec:
    """The :class:`VitSpec` of a registered name or of a timm ViT name, with optional kwargs overrides.

    Raises:
        UnknownNameError: neither a registered name nor a timm VisionTransformer; lists the registered ones.
    """
    if name in VIT_ENCODERS:
        return VIT_ENCODERS.get(name).with_overrides(**vit_kwargs)
    if is_vit_encoder(name):
        import timm

        try:
            with torch.device("meta"):
                probe = timm.create_model(name, pretrained=False, num_classes=0, **vit_kwargs)
            cfg = probe.pretrained_cfg
        except Exception as e:  # a bad override (e.g. heads not dividing the width)
            raise UnknownNameError(f"timm ViT {name!r} cannot be built with {vit_kwargs}: {e}") from e
        patch = int(probe.patch_embed.patch_size[0])
        img = int(probe.patch_embed.img_size[0]) if probe.patch_embed.img_size else 224
        kwargs = {"patch_size": patch, "img_size": img, "reg_tokens": int(getattr(probe, "num_reg_tokens", 0)),
                  "class_token": probe.cls_token is not None, **vit_kwargs}
        mean = tuple(float(v) for v in (cfg or {}).get("mean", IMAGENET_MEAN))
        std = tuple(float(v) for v in (cfg or {}).get("std", IMAGENET_STD))
        depth, dim = len(probe.blocks), int(probe.embed_dim)
        return VitSpec(name=name, arch=f"timm ViT ({dim}-d, {depth} blocks, /{patch})", vit_kwargs=kwargs,
                       timm_name=name, mean=mean, std=std, mpp=None, key_format="timm", hub_id=None,
                       source=f"timm pretrained weights for {name} (weights='hub', needs the internet)")
    names = VIT_ENCODERS.names()
    raise UnknownNameError(f"unknown ViT encoder {name!r}.{did_you_mean(name, names)} Valid names: "
                           f"{', '.join(names)}, or any timm ViT name such as vit_small_patch16_224")


def build_vit(spec: VitSpec, *, init: bool = True, pretrained_timm: bool = False) -> nn.Module:
    """The timm ``VisionTransformer`` of a spec, without weights, taking any tile size (``dynamic_img_size``).

    ``init=False`` skips the random initialisation (the weights are about to be loaded, or the model is
    built on the meta device). ``pretrained_timm`` downloads timm's own weights (plain timm ViTs only).

    Example:
        >>> with torch.device("meta"):
        ...     vit = build_vit(resolve_spec("hoptimus"), init=False)
        >>> vit.reg_token.shape, vit.pos_embed.shape
        (torch.Size([1, 4, 1536]), torch.Size([1, 256, 1536]))
    """
    import timm
    from timm.models.vision_transformer import VisionTransformer

    common = {"num_classes": 0, "global_pool": "token", "dynamic_img_size": True}
    if not init:
        common["weight_init"] = "skip"
    if spec.timm_name is not None:
        extra = {k: v for k, v in spec.vit_kwargs.items() if k not in ("patch_size", "img_size", "reg_tokens",
                                                                       "class_token")}
        return timm.create_model(spec.timm_name, pretrained=pretrained_timm, **common, **extra)
    return VisionTransformer(**{**spec.vit_kwargs, **common})


def count_parameters(spec: VitSpec) -> int:
    """Parameters of the spec's ViT, counted on the meta device (no memory, no download)."""
    with torch.device("meta"):
        vit = build_vit(spec, init=False)
    return sum(p.numel() for p in vit.parameters())


def _norm_name(spec: VitSpec) -> str:
    for label, (m, s) in {"ImageNet": (IMAGENET_MEAN, IMAGENET_STD), "OpenAI CLIP": (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
                          "H-optimus-0": (HOPTIMUS_MEAN, HOPTIMUS_STD)}.items():
        if tuple(spec.mean) == m and tuple(spec.std) == s:
            return label
    return f"mean {tuple(round(v, 4) for v in spec.mean)} std {tuple(round(v, 4) for v in spec.std)}"


def describe_encoders(names: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per ViT encoder (default: every registered one): what ``pathseg encoders`` prints.

    Keys: name, arch, params (count), patch, tokens ("cls + 4 reg"), img_size (pretraining), mpp,
    normalisation, weights (where they come from, in words), hub_id, gated.
    """
    rows = []
    for name in names if names is not None else VIT_ENCODERS.names():
        spec = resolve_spec(name)
        cls = bool(spec.vit_kwargs.get("class_token", True))
        tokens = " + ".join(t for t in ("cls" if cls else "", f"{spec.num_reg_tokens} reg" if spec.num_reg_tokens
                                        else "") if t) or "none"
        rows.append({"name": spec.name, "arch": spec.arch, "params": count_parameters(spec), "patch": spec.patch_size,
                     "tokens": tokens, "img_size": spec.img_size, "mpp": spec.mpp, "normalisation": _norm_name(spec),
                     "weights": spec.source, "hub_id": spec.hub_id, "gated": spec.gated})
    return rows


__all__ = ["VitSpec", "VIT_ENCODERS", "describe_encoders", "IMAGENET_MEAN", "IMAGENET_STD", "is_vit_encoder",
           "resolve_spec",
           "build_vit", "count_parameters"]
