"""HookNet (van Rijthoven et al., MedIA 2021): a context and a target encoder-decoder, hooked at matching resolution.

Inputs are two concentric patches of the same pixel size: the *target* at fine ``t`` µm/px and the
*context* at coarse ``r·t`` µm/px (``ratio`` r, a power of two), both centred on the same point. The
target branch's bottleneck has stride 32, i.e. 32·t µm per pixel. The context decoder produces maps at
strides 16, 8, 4, 2 (``s·r·t`` µm per pixel); the *hook* takes the one with s = 32 / r -- the same µm
per pixel as the target bottleneck -- and centre-crops it to the target's field of view
(target_size / 32 pixels), which is then concatenated to the target bottleneck before the target decoder:

    hook     = crop_centre(D_c[s = 32/r](E_c(context)), H_t / 32)
    logits_t = C_t(D_t(E_t(target)[:-1] ++ [conv1x1([E_t(target)[-1] ; hook])]))
    logits_c = C_c(D_c(E_c(context)))
    L        = CE(logits_t, y_t) + λ_c · CE(logits_c, y_c),     λ_c = 0 by default (only the target counts)

:func:`hook_box` gives the crop in hooked-map pixels and :func:`centre_crop` applies it. HookNet takes two
inputs, so it does not fit :class:`SegModel`; :func:`create_hooknet` builds it, with encoder weights from
a pretraining export (``weights`` for the target branch, ``context_weights`` for the context branch), and
the ``hooknet`` method fine-tunes it on ``{"image": target, "context": context, "mask": ...}`` batches.

Example:
    >>> net = create_hooknet("resnet18", num_classes=2, ratio=4)
    >>> net(torch.zeros(1, 3, 128, 128), torch.zeros(1, 3, 128, 128))["target"].shape
    torch.Size([1, 2, 128, 128])
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pathseg.errors import ConfigError
from pathseg.methods.base import METHODS, Method

DECODER_CHANNELS = (256, 128, 64, 32)  # strides 16, 8, 4, 2
STRIDES = (16, 8, 4, 2)


def hook_box(context_size: int, target_size: int, ratio: int) -> tuple[int, int, int]:
    """(hook stride s, crop start, crop size) in pixels of the context map at stride s.

    The crop covers the target's field of view: ``target_size / ratio`` context-input pixels, centred.
    """
    if ratio not in (2, 4, 8, 16):
        raise ConfigError(f"hooknet: ratio (context MPP / target MPP) must be 2, 4, 8 or 16, got {ratio}")
    s = 32 // ratio
    if target_size % 32 or context_size % 32:
        raise ConfigError(f"hooknet: patch sizes must be multiples of 32, got context {context_size}, target {target_size}")
    size, full = target_size // 32, context_size // s
    if (full - size) % 2:
        raise ConfigError(f"hooknet: the target field of view ({size} px) cannot be centred exactly in the context "
                          f"map ({full} px); use patch sizes that are multiples of {2 * 32}")
    return s, (full - size) // 2, size


def centre_crop(x: torch.Tensor, start: int, size: int) -> torch.Tensor:
    """x[..., start:start+size, start:start+size]. Shape: (B, C, H, W) -> (B, C, size, size)."""
    return x[..., start:start + size, start:start + size]


class _Block(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class PyramidDecoder(nn.Module):
    """U-Net decoder that returns every stage: maps at strides 16, 8, 4, 2, then 1 (last = output features).

    Shape: encoder features [x, /2, /4, /8, /16, /32] with ``channels`` -> list of 5 maps.
    """

    def __init__(self, channels: list[int], bottleneck: int | None = None) -> None:
        super().__init__()
        c = [bottleneck or channels[-1]] + list(DECODER_CHANNELS)
        skips = list(reversed(channels[1:-1]))  # /16, /8, /4, /2
        self.blocks = nn.ModuleList([_Block(c[i] + skips[i], c[i + 1]) for i in range(4)])
        self.final = _Block(c[-1], 16)
        self.out_channels = 16

    def forward(self, feats: list[torch.Tensor], bottleneck: torch.Tensor | None = None) -> list[torch.Tensor]:
        x = feats[-1] if bottleneck is None else bottleneck
        skips = list(reversed(feats[1:-1]))
        maps = []
        for block, skip in zip(self.blocks, skips):
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = block(torch.cat([x, skip], 1))
            maps.append(x)
        maps.append(self.final(F.interpolate(x, scale_factor=2, mode="nearest")))
        return maps


class HookNet(nn.Module):
    """Context and target U-Nets over two encoders of one registered name; see the module docstring."""

    def __init__(self, encoder: str = "resnet18", num_classes: int = 2, ratio: int = 4) -> None:
        super().__init__()
        from pathseg.models import create_model

        hook_box(64, 64, ratio)  # validates ratio
        self.name, self.encoder_name, self.num_classes, self.ratio = "hooknet", encoder, num_classes, int(ratio)
        self.encoder = create_model("unet", encoder=encoder, num_classes=1).encoder  # target branch
        self.context_encoder = create_model("unet", encoder=encoder, num_classes=1).encoder
        chans = list(self.encoder.out_channels)
        self.context_decoder = PyramidDecoder(chans)
        hooked = DECODER_CHANNELS[STRIDES.index(32 // self.ratio)]
        self.hook = nn.Sequential(nn.Conv2d(chans[-1] + hooked, chans[-1], 1, bias=False), nn.BatchNorm2d(chans[-1]),
                                  nn.ReLU(inplace=True))
        self.decoder = PyramidDecoder(chans)
        self.classifier = nn.Conv2d(self.decoder.out_channels, num_classes, 1)
        self.context_classifier = nn.Conv2d(self.context_decoder.out_channels, num_classes, 1)

    def forward(self, target: torch.Tensor, context: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Shape: target, context (B, 3, H, W), H a multiple of 64 -> {"target", "context"}: (B, K, H, W) logits."""
        if context is None:
            raise ConfigError("hooknet needs two inputs: model(target, context) with the context at ratio x the MPP")
        s, start, size = hook_box(context.shape[-1], target.shape[-1], self.ratio)
        cmaps = self.context_decoder(self.context_encoder(context))
        hook = centre_crop(cmaps[STRIDES.index(s)], start, size)
        tfeats = self.encoder(target)
        bottleneck = self.hook(torch.cat([tfeats[-1], hook], 1))
        tmap = self.decoder(tfeats, bottleneck)[-1]
        return {"target": self.classifier(tmap), "context": self.context_classifier(cmaps[-1])}


def create_hooknet(encoder: str = "resnet18", *, num_classes: int = 2, ratio: int = 4,
                   weights: str | Path | None = None, context_weights: str | Path | None = None) -> HookNet:
    """HookNet with optional encoder weights: ``weights`` (target branch), ``context_weights`` (context branch).

    A DSF-WSI export gives both: ``encoder.safetensors`` and ``context_encoder.safetensors``.
    """
    from pathseg.models.factory import load_encoder_weights

    net = HookNet(encoder, num_classes, ratio)
    if weights is not None:
        load_encoder_weights(net, weights)  # duck-typed: uses .encoder and .encoder_name
    if context_weights is not None:
        load_encoder_weights(types.SimpleNamespace(encoder=net.context_encoder, encoder_name=encoder),  # type: ignore[arg-type]
                             context_weights)
    return net


@METHODS.register("hooknet")
class HookNetMethod(Method):
    """Fine-tunes a :class:`HookNet` on ``{"image": target, "context": context, "mask": target mask,
    ["context_mask"]}``; ``context_weight`` λ_c = 0 (as published) counts only the target loss."""

    def __init__(self, model: HookNet, *, context_weight: float = 0.0, **kw: Any) -> None:
        super().__init__(model, **kw)
        self.context_weight = float(context_weight)

    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = self.model(self._fmt(batch["image"]), self._fmt(batch["context"]))
        lt = self.supervised_loss(out["target"], batch["mask"])
        res = {"loss/target": lt}
        total = lt
        if self.context_weight > 0 and "context_mask" in batch:
            lc = self.supervised_loss(out["context"], batch["context_mask"])
            res["loss/context"] = lc
            total = total + self.context_weight * lc
        return {"loss": total, **res}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self.model(self._fmt(batch["image"]), self._fmt(batch["context"]))["target"]
        self.val_metrics.update(batch["mask"], logits.argmax(1), batch.get("valid"))
