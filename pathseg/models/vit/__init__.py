"""The ``vit`` encoder family: pathology foundation-model ViTs (and any timm ViT) under pathseg's decoders.

A lab with a few labelled images fine-tunes a segmentation model on UNI, UNI2-h, Virchow2, H-optimus-0,
Phikon, Phikon-v2, CONCH's image tower or any timm ViT:

    model = create_vit_model("unet", encoder="uni", num_classes=3, weights="/data/uni/pytorch_model.bin",
                             mode="lora")                     # or via create_model once hooked (see below)

* :mod:`~pathseg.models.vit.specs`: the architectures by name (``VIT_ENCODERS``), each with its published
  normalisation, patch size, token layout (class, register tokens), expected MPP and where its weights are.
* :mod:`~pathseg.models.vit.weights`: built without weights, then loaded from a local file (safetensors or
  torch, the checkpoint's own key names: timm, transformers ViT/DINOv2, CONCH's CoCa) or from the hub.
* :mod:`~pathseg.models.vit.pyramid`: 4 intermediate blocks -> strides 4/8/16/32 (ViTDet simple feature
  pyramid) as an smp encoder, so U-Net, U-Net++, DeepLabV3(+) and the methods' semantic taps work unchanged.
* :mod:`~pathseg.models.vit.tuning`: modes ``full``/``frozen``/``last_n``/``lora`` (peft), layer-wise LR decay
  (:func:`param_groups_lld`), activation checkpointing.

Options of :func:`create_vit_model` (``model.options`` in a config; saved with checkpoints so
``load_model`` rebuilds the same network): ``mode``, ``trainable_blocks``, ``lora_rank``, ``lora_alpha``,
``lora_dropout``, ``checkpointing``, ``feature_indices``, ``vit_kwargs`` (timm overrides, e.g. a tiny test ViT),
and the decoder's own options (``decoder_channels``, ...).

Example:
    >>> m = create_vit_model("unet", encoder="vit_small_patch16_224", num_classes=2, mode="frozen")
    >>> m(torch.zeros(1, 3, 224, 224)).shape
    torch.Size([1, 2, 224, 224])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from pathseg.errors import ConfigError
from pathseg.models.factory import DECODERS, SegModel
from pathseg.models.vit.pyramid import DEFAULT_CHANNELS, PYRAMID_STRIDES, SmpVitEncoder, VitPyramid, default_indices
from pathseg.models.vit.specs import (IMAGENET_MEAN, IMAGENET_STD, VIT_ENCODERS, VitSpec, build_vit,
                                      count_parameters, describe_encoders, is_vit_encoder, resolve_spec)
from pathseg.models.vit.tuning import (LORA_TARGETS, MODES, apply_mode, lora_parameters, merge_lora,
                                       param_groups_lld, set_checkpointing, vit_layer_id)
from pathseg.models.vit.weights import (convert_hf_state_dict, load_vit_state_dict, load_vit_weights,
                                        read_state_dict, to_timm_state_dict, where_to_get)

STAND_IN_ENCODER = "resnet18"
"""smp encoder whose widths (3, 64, 64, 128, 256, 512) the ViT pyramid reproduces; the decoder is built for it."""


def build_vit_encoder(name: str | VitSpec, weights: str | None = None, *, mode: str = "full",
                      out_channels: Sequence[int] = DEFAULT_CHANNELS, output_stride: int = 32,
                      feature_indices: Sequence[int] | None = None, checkpointing: bool = False,
                      trainable_blocks: int = 4, lora_rank: int = 8, lora_alpha: float | None = None,
                      lora_dropout: float = 0.0, lora_targets: Sequence[str] = LORA_TARGETS,
                      vit_kwargs: dict[str, Any] | None = None,
                      input_mean: Sequence[float] = IMAGENET_MEAN,
                      input_std: Sequence[float] = IMAGENET_STD) -> VitPyramid:
    """A ViT with its feature pyramid: built, weights loaded, training mode applied.

    Args:
        name: a registered name (``VIT_ENCODERS.names()``), a timm ViT name, or a :class:`VitSpec`.
        weights: None (random init), a local file, ``"hub"`` or ``"hf-hub:owner/name"``.
        mode: ``full``, ``frozen``, ``last_n`` or ``lora`` (see :mod:`~pathseg.models.vit.tuning`).
        out_channels: widths of the 4 levels; output_stride: 32, or 16/8 to keep coarse levels finer.
        feature_indices: the 4 tapped blocks (default: ends of the four quarters).
        checkpointing: activation checkpointing of the ViT blocks.
        vit_kwargs: timm ``VisionTransformer`` overrides (e.g. ``depth=4, embed_dim=64`` for tests).
        input_mean, input_std: the normalisation inputs arrive in (pathseg: ImageNet).

    Shape:
        (B, 3, H, W) -> 4 maps (B, out_channels[i], H/s_i, W/s_i), s = ``reductions`` (4, 8, 16, 32).
    """
    spec = name.with_overrides(**(vit_kwargs or {})) if isinstance(name, VitSpec) else \
        resolve_spec(name, **(vit_kwargs or {}))
    timm_hub = weights is not None and str(weights) == "hub" and spec.timm_name is not None
    if timm_hub:
        try:
            vit = build_vit(spec, init=False, pretrained_timm=True)
        except Exception as e:  # offline / unknown pretrained tag
            from pathseg.errors import WeightsError

            raise WeightsError(f"{spec.name}: could not download timm's pretrained weights ({type(e).__name__}: "
                               f"{e}). " + where_to_get(spec)) from e
    else:
        vit = build_vit(spec, init=weights is None)
        if weights is not None:
            load_vit_weights(vit, spec, weights)
    apply_mode(vit, mode, trainable_blocks=trainable_blocks, lora_rank=lora_rank, lora_alpha=lora_alpha,
               lora_dropout=lora_dropout, lora_targets=lora_targets)
    if checkpointing:
        set_checkpointing(vit, True)
    return VitPyramid(vit, spec, out_channels=out_channels, output_stride=output_stride, indices=feature_indices,
                      input_mean=input_mean, input_std=input_std)


ENCODER_OPTIONS = ("mode", "feature_indices", "checkpointing", "trainable_blocks", "lora_rank", "lora_alpha",
                   "lora_dropout", "lora_targets", "vit_kwargs")


def create_vit_model(name: str = "unet", *, encoder: str, num_classes: int = 2, weights: str | None = None,
                     **kwargs: Any) -> SegModel:
    """A registered smp-style decoder (unet, unetplusplus, deeplabv3, deeplabv3plus) over a ViT encoder.

    The decoder is built exactly as ``create_model`` builds it over ResNet-18, then ResNet-18 is replaced by
    the ViT pyramid (same widths and output stride), so decoders, semantic taps and checkpoints are unchanged.

    Args:
        name: a decoder in ``DECODERS`` whose net has an smp encoder.
        encoder: a ViT name (``is_vit_encoder``).
        weights: the ViT's weights (see :func:`build_vit_encoder`); not saved in ``build_options``.
        **kwargs: ``ENCODER_OPTIONS`` for the encoder, the rest for the decoder builder.
    """
    if not is_vit_encoder(encoder):
        raise ConfigError(f"encoder {encoder!r} is not a ViT; valid: {', '.join(VIT_ENCODERS.names())} or a timm "
                          f"ViT name")
    enc_opts = {k: kwargs[k] for k in ENCODER_OPTIONS if k in kwargs}
    dec_opts = {k: v for k, v in kwargs.items() if k not in enc_opts}
    net = DECODERS.get(name)(encoder_name=STAND_IN_ENCODER, encoder_weights=None, classes=num_classes, **dec_opts)
    slots = [(parent, key, mod) for parent in net.modules() for key, mod in parent.named_children()
             if hasattr(mod, "output_stride") and hasattr(mod, "out_channels") and not isinstance(mod, SmpVitEncoder)]
    if not slots:
        raise ConfigError(f"model {name!r} does not take a ViT encoder (it has no smp encoder to replace); use "
                          f"unet, unetplusplus, deeplabv3(plus), their _gated forms, cam or segcls")
    for parent, key, stand_in in slots:  # every smp encoder inside (gated models have two)
        channels = list(stand_in.out_channels)
        levels = len(channels) - 2  # smp features: image, stride 2, then one per level
        widths = channels[2:] + [channels[-1]] * (4 - levels)  # the pyramid always builds 4 levels
        pyramid = build_vit_encoder(encoder, weights, out_channels=widths,
                                    output_stride=int(stand_in.output_stride), **enc_opts)
        setattr(parent, key, SmpVitEncoder(pyramid, stem_channels=channels[1], levels=levels))
    model = SegModel(net, num_classes, name=name, encoder=encoder)
    model.build_options = dict(kwargs)
    return model


class VitFamily:
    """The hook object ``create_model`` consults for encoder names outside ``ENCODERS``."""

    name = "vit"

    @staticmethod
    def handles(encoder: str) -> bool:
        return is_vit_encoder(encoder)

    @staticmethod
    def create_model(name: str, *, encoder: str, num_classes: int = 2, weights: str | None = None,
                     **kwargs: Any) -> SegModel:
        return create_vit_model(name, encoder=encoder, num_classes=num_classes, weights=weights, **kwargs)

    @staticmethod
    def names() -> list[str]:
        return VIT_ENCODERS.names()


VIT_FAMILY = VitFamily()


def vit_of(model: nn.Module) -> nn.Module | None:
    """The timm ViT inside a model built here (or None)."""
    for mod in model.modules():
        if isinstance(mod, VitPyramid):
            return mod.vit
    return None


__all__ = ["VIT_ENCODERS", "VIT_FAMILY", "VitSpec", "VitPyramid", "SmpVitEncoder", "MODES", "LORA_TARGETS",
           "PYRAMID_STRIDES", "build_vit", "build_vit_encoder", "create_vit_model", "resolve_spec",
           "is_vit_encoder", "count_parameters", "describe_encoders", "load_vit_weights", "load_vit_state_dict",
           "read_state_dict",
           "to_timm_state_dict", "convert_hf_state_dict", "where_to_get", "apply_mode", "merge_lora",
           "lora_parameters", "param_groups_lld", "set_checkpointing", "vit_layer_id", "default_indices", "vit_of"]
