"""U-Net / U-Net++ with learned upsampling: models ``unet_tconv`` and ``unetplusplus_tconv``.

segmentation_models_pytorch's U-Net and U-Net++ whose decoder blocks upsample with a learned 2x2
stride-2 transposed convolution instead of nearest interpolation -- the option "upsampling by transposed
convolution" of Háberová et al.'s nuclei segmenter (``configs/distill/nuclei_*.yaml``). Registered in
``DECODERS`` when :mod:`pathseg.models` is imported, so checkpoints of these models load without the
training methods. segmentation_models_pytorch is imported when a model is built, not before.

Example:
    >>> m = create_model("unet_tconv", encoder="resnet18", num_classes=2).eval()
    >>> any(isinstance(x, torch.nn.ConvTranspose2d) for x in m.decoder.modules())
    True
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pathseg.models.factory import DECODERS


class _TConvUp(nn.Module):
    """Learned 2x upsampling (2x2 transposed conv, stride 2), resized to the skip's size when odd.

    Shape: (B, C, H, W) -> (B, C, 2H, 2W), or ``size`` when given.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        y = self.conv(x)
        if size is not None and tuple(y.shape[-2:]) != tuple(size):
            y = F.interpolate(y, size=size, mode="nearest")
        return y


def _with_transposed_upsampling(net: nn.Module) -> nn.Module:
    """Give every smp U-Net / U-Net++ decoder block a transposed-conv ``up`` and use it in ``forward``."""
    from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoderBlock
    from segmentation_models_pytorch.decoders.unetplusplus.decoder import DecoderBlock as UppBlock

    unet_block, upp_block = _block_classes()
    blocks = [m for m in net.decoder.modules() if isinstance(m, (UnetDecoderBlock, UppBlock))]
    blocks = [b for b in blocks if getattr(b, "conv1", None) is not None]
    channels: dict[int, int] = {}
    hooks = [b.register_forward_pre_hook(lambda m, args, kw=None: channels.__setitem__(id(m), int(args[0].shape[1])))
             for b in blocks]
    was = net.training
    net.eval()
    with torch.no_grad():
        net(torch.zeros(1, 3, 64, 64))
    net.train(was)
    for h in hooks:
        h.remove()
    for b in blocks:
        b.up = _TConvUp(channels[id(b)])
        b.__class__ = unet_block if isinstance(b, UnetDecoderBlock) else upp_block
    return net


def _unet_block_forward(self, feature_map, target_height, target_width, skip_connection=None):
    feature_map = self.up(feature_map, (target_height, target_width))
    if skip_connection is not None:
        feature_map = torch.cat([feature_map, skip_connection], dim=1)
        feature_map = self.attention1(feature_map)
    return self.attention2(self.conv2(self.conv1(feature_map)))


def _upp_block_forward(self, x, skip=None):
    x = self.up(x, None if skip is None else tuple(skip.shape[-2:]))
    if skip is not None:
        x = torch.cat([x, skip], dim=1)
        x = self.attention1(x)
    return self.attention2(self.conv2(self.conv1(x)))


@functools.cache
def _block_classes() -> tuple[type, type]:
    """The smp decoder block classes with a learned ``up`` (built once, when the first model is)."""
    from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoderBlock
    from segmentation_models_pytorch.decoders.unetplusplus.decoder import DecoderBlock as UppBlock

    a = type("UnetTConvBlock", (UnetDecoderBlock,), {"forward": _unet_block_forward, "__module__": __name__})
    b = type("UnetPlusPlusTConvBlock", (UppBlock,), {"forward": _upp_block_forward, "__module__": __name__})
    return a, b


def _smp_tconv(kind: str):
    def build(**kw: Any) -> nn.Module:
        import segmentation_models_pytorch as smp

        return _with_transposed_upsampling((smp.Unet if kind == "unet" else smp.UnetPlusPlus)(**kw))

    return build


DECODERS.register("unet_tconv", _smp_tconv("unet"))
DECODERS.register("unetplusplus_tconv", _smp_tconv("unetplusplus"))
