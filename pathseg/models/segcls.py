"""Joint segmentation + classification network (Ciga & Martel, "Learning to segment images with
classification labels", Medical Image Analysis 68, 2021).

The published network, the default here::

    encoder   ResNet-18 cut after its third stage (layer3: 256 channels, stride 16)
    decoder   3x3 conv 256->64 (no bias), batch norm, ReLU, x2 upsampling           -> z   (B, 64, H/8, W/8)
    C_f       1x1 conv 64->C (bias)                                                  -> s   (B, C, H/8, W/8)
    output    nearest interpolation of s to the input size                           -> (B, C, H, W)
    image     on s, BEFORE the interpolation: adaptive average pool to 1x1,
              1x1 conv C->8 (no bias), batch norm, ReLU, 1x1 conv 8->C (no bias)    -> (B, C)

The image-level class vector is computed from the segmentation output, so a classification loss
reaches the pixel classifier, the decoder and the encoder: classification labels correct the
segmentation.

How it fits :class:`pathseg.models.SegModel` (so ``create_model("segcls", ...)``, checkpoints and
``load_model`` work unchanged): the registered builder returns an smp-like net whose ``decoder``
holds the decoder block and the image head (:class:`SegClsDecoder`); ``SegModel`` adds the 1x1
pixel classifier C_f (64->C with bias, exactly the published layer). ``decoder(features)`` returns z
nearest-upsampled to the input size; since C_f is a 1x1 convolution it commutes with nearest
upsampling, so ``model(x) = C_f(nearest(z)) = nearest(C_f(z))`` is the published output. Training
uses the low-resolution path (:func:`segcls_forward`), which never builds full-size 64-channel maps.

Options of the builder (``create_model("segcls", encoder=..., num_classes=C, **options)``):
``depth`` (encoder stages kept, 4 = cut after ResNet layer3), ``decoder_channels`` (64),
``upsample`` (2), ``head_channels`` (8).

Example:
    >>> from pathseg.models import create_model
    >>> m = create_model("segcls", encoder="resnet18", num_classes=3)
    >>> seg, cls = segcls_forward(m, torch.zeros(2, 3, 64, 64))
    >>> tuple(seg.shape), tuple(cls.shape), tuple(m(torch.zeros(1, 3, 64, 64)).shape)
    ((2, 3, 64, 64), (2, 3), (1, 3, 64, 64))
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pathseg.errors import ConfigError
from pathseg.models.factory import DECODERS

__all__ = ["ImageHead", "SegClsDecoder", "SegClsNet", "build_segcls", "is_segcls", "segcls_forward"]


class ImageHead(nn.Module):
    """Classification module on the (low-resolution) segmentation output.

    Global average pool, 1x1 conv C->hidden, batch norm, ReLU, 1x1 conv hidden->C; neither conv has a
    bias (Table A.2 of the paper).

    Shape:
        seg (B, C, h, w) -> class logits (B, C).
    """

    def __init__(self, num_classes: int, hidden: int = 8) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(num_classes, hidden, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, num_classes, kernel_size=1, bias=False)

    def forward(self, seg: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.bn(self.fc1(self.pool(seg))))).flatten(1)


class SegClsDecoder(nn.Module):
    """3x3 conv (no bias) + BN + ReLU + upsampling on the deepest encoder feature; holds the image head.

    ``low(features)`` gives z at the decoder's own resolution (stride ``2**(depth-1) / upsample``);
    ``forward(features)`` gives z nearest-upsampled to the input size (``features[0]`` is the input).

    Shape:
        features: the encoder pyramid, features[-1] (B, C_in, H/16, W/16) -> (B, D, H, W).
    """

    def __init__(self, in_channels: int, num_classes: int, *, channels: int = 64, upsample: int = 2,
                 head_channels: int = 8) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        )
        self.upsample = int(upsample)
        self.image_head = ImageHead(num_classes, head_channels)

    def low(self, features: list[torch.Tensor]) -> torch.Tensor:
        z = self.block(features[-1])
        if self.upsample > 1:
            z = F.interpolate(z, scale_factor=self.upsample, mode="nearest")
        return z

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        z = self.low(features)
        size = features[0].shape[-2:]
        return F.interpolate(z, size=size, mode="nearest") if z.shape[-2:] != size else z


class SegClsNet(nn.Module):
    """The smp-like pair (``encoder``, ``decoder``) that :class:`pathseg.models.SegModel` wraps."""

    def __init__(self, encoder: nn.Module, decoder: SegClsDecoder) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder


def build_segcls(
    *,
    encoder_name: str = "resnet18",
    encoder_weights: str | None = None,
    classes: int = 2,
    depth: int = 4,
    decoder_channels: int = 64,
    upsample: int = 2,
    head_channels: int = 8,
    **unknown: Any,
) -> SegClsNet:
    """Builder registered as ``DECODERS["segcls"]`` (called by :func:`pathseg.models.create_model`)."""
    if unknown:
        raise ConfigError(
            f"model segcls: unknown option(s) {sorted(unknown)}; "
            "valid: depth, decoder_channels, upsample, head_channels"
        )
    if not 1 <= depth <= 5 or upsample < 1 or decoder_channels < 1 or head_channels < 1:
        raise ConfigError(
            f"model segcls: need 1 <= depth <= 5 and positive widths/upsample; got depth={depth}, "
            f"decoder_channels={decoder_channels}, upsample={upsample}, head_channels={head_channels}"
        )
    import segmentation_models_pytorch as smp

    enc = smp.encoders.get_encoder(encoder_name, in_channels=3, depth=depth, weights=encoder_weights)
    _drop_unused_stages(enc, depth)
    dec = SegClsDecoder(enc.out_channels[-1], classes, channels=decoder_channels, upsample=upsample,
                        head_channels=head_channels)
    return SegClsNet(enc, dec)


def _drop_unused_stages(enc: nn.Module, depth: int) -> None:
    """Delete the ResNet stages after ``depth`` (smp keeps them, unused), so they are not saved or optimised.

    Full-depth state dicts (e.g. ImageNet weights) still load: keys of the removed stages are skipped.
    """
    removed = [f"layer{i}" for i in range(depth, 5) if isinstance(getattr(enc, f"layer{i}", None), nn.Module)]
    if not removed:
        return
    for name in removed:
        delattr(enc, name)
    load = enc.load_state_dict
    prefixes = tuple(f"{n}." for n in removed)

    def load_state_dict(state_dict, *args: Any, **kwargs: Any):
        return load({k: v for k, v in state_dict.items() if not k.startswith(prefixes)}, *args, **kwargs)

    enc.load_state_dict = load_state_dict  # type: ignore[method-assign]


DECODERS.register("segcls", build_segcls)


def is_segcls(model: nn.Module) -> bool:
    """True when ``model`` is a SegModel built with ``create_model("segcls", ...)``."""
    return isinstance(getattr(model, "decoder", None), SegClsDecoder)


def segcls_forward(model: nn.Module, x: torch.Tensor, *, full_size: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Segmentation logits and the image class vector from one pass.

    The class vector is computed from the segmentation output before its final interpolation.

    Shape:
        x (B, 3, H, W) -> seg (B, C, H, W) (``full_size=False``: (B, C, h, w) before the
        interpolation), class logits (B, C).
    """
    if not is_segcls(model):
        raise ConfigError(
            f"model {getattr(model, 'name', type(model).__name__)!r} has no image classification module; "
            "joint segmentation + classification needs model.name=segcls"
        )
    feats = model.encode(x)
    seg = model.classify(model.decoder.low(feats))
    cls = model.decoder.image_head(seg)
    if full_size and seg.shape[-2:] != x.shape[-2:]:
        seg = F.interpolate(seg, size=x.shape[-2:], mode="nearest")
    return seg, cls
