"""HookNet (van Rijthoven et al., MedIA 2021): a context and a target encoder-decoder, hooked at matching resolution.

Inputs are two concentric patches of the same pixel size: the *target* at fine ``t`` µm/px and the
*context* at coarse ``r·t`` µm/px (``ratio`` r, a power of two), both centred on the same point. The
target branch's bottleneck has stride 32, i.e. 32·t µm per pixel. The context decoder produces maps at
strides 16, 8, 4, 2 (``s·r·t`` µm per pixel); the *hook* takes the one with s = 32 / r -- the same µm
per pixel as the target bottleneck -- and centre-crops it to the target's field of view
(target_size / 32 pixels), which is then concatenated to the target bottleneck before the target decoder:

    hook     = crop_centre(D_c[s = 32/r](E_c(context)), H_t / 32)
    logits_t = C_t(D_t(E_t(target)[:-1] ++ [[E_t(target)[-1] ; hook]]))
    logits_c = C_c(D_c(E_c(context)))
    L        = CE(logits_t, y_t) + λ_c · CE(logits_c, y_c),     λ_c = 0 by default (only the target counts)

As published (and in the DSF-WSI authors' HookNet), the concatenation goes straight into the target
decoder, whose first block then takes C_bottleneck + C_hook channels. ``hook_conv=True`` puts a
1x1 conv + BN + ReLU back to C_bottleneck in between (not in the paper; the layout before issue 15).
Weights of the other layout given to :meth:`HookNet.load_state_dict` (e.g. a checkpoint written before
issue 15, whose options do not name ``hook_conv``) switch the model to their layout before loading.

:func:`hook_box` gives the crop in hooked-map pixels and :func:`centre_crop` applies it. HookNet takes two
inputs, so it does not fit :class:`SegModel`; :func:`create_hooknet` builds it, with encoder weights from
a pretraining export (``weights`` for the target branch, ``context_weights`` for the context branch), and
the ``hooknet`` method (:mod:`pathseg.methods.ssl.hooknet`) fine-tunes it on ``{"image": target, "context":
context, "mask": ...}`` batches.

In the model registry (``create_model("hooknet", encoder=, num_classes=, weights=, ratio=, context_weights=,
tile=, hook_conv=)``, i.e. ``model.name=hooknet`` with ``model.options``), so ``pathseg train`` / ``evaluate`` and
checkpoints handle it like any model; training pairs come from ``data.context`` (:mod:`pathseg.data.context`).
``context_weights`` only initialises the context encoder: checkpoints do not keep it (the state dict holds
the weights), so they load without the file.

With one input in eval mode, ``model(image)`` keeps the SegModel contract (whole-image logits, what
validation, ``pathseg evaluate`` and ``pathseg predict`` on images call): :meth:`HookNet.segment` tiles the
image into ``tile`` px targets and cuts each one's context from the same image. On whole slides,
:mod:`pathseg.inference` reads each tile's context from the slide at ``ratio`` x the MPP and calls
``model(tile, context)`` (torch backend; ONNX export is refused: the graph would take two inputs).

Example:
    >>> net = create_hooknet("resnet18", num_classes=2, ratio=4)
    >>> net(torch.zeros(1, 3, 128, 128), torch.zeros(1, 3, 128, 128))["target"].shape
    torch.Size([1, 2, 128, 128])
    >>> net.eval()(torch.zeros(1, 3, 100, 150)).shape   # one whole image: tiled, contexts cut from it
    torch.Size([1, 2, 100, 150])
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pathseg.errors import ConfigError

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
    """Context and target U-Nets over two encoders of one registered name; see the module docstring.

    ``tile``: the target patch size (px, a multiple of 64) of whole-image inference (:meth:`segment`).
    ``hook_conv``: False (as published) concatenates the hook straight into the target decoder; True adds
    the 1x1 conv (``self.hook``, None otherwise).
    """

    init_only_options = ("context_weights",)  # builder options not saved in checkpoints (see rebuild_options)
    context_from_image = True  # needs the image around each tile: slide prediction reads it (inference)

    def __init__(self, encoder: str = "resnet18", num_classes: int = 2, ratio: int = 4, tile: int = 256,
                 hook_conv: bool = False) -> None:
        super().__init__()
        from pathseg.models.factory import create_model

        hook_box(64, 64, ratio)  # validates ratio
        if int(tile) < 64 or int(tile) % 64:
            raise ConfigError(f"hooknet: tile (the inference patch size) must be a multiple of 64 px, got {tile}")
        self.name, self.encoder_name, self.num_classes, self.ratio = "hooknet", encoder, num_classes, int(ratio)
        self.tile = int(tile)
        self.encoder = create_model("unet", encoder=encoder, num_classes=1).encoder  # target branch
        self.context_encoder = create_model("unet", encoder=encoder, num_classes=1).encoder
        chans = list(self.encoder.out_channels)
        self.context_decoder = PyramidDecoder(chans)
        self._build_hook(bool(hook_conv))
        self.classifier = nn.Conv2d(self.decoder.out_channels, num_classes, 1)
        self.context_classifier = nn.Conv2d(self.context_decoder.out_channels, num_classes, 1)

    def _build_hook(self, hook_conv: bool) -> None:
        """(Re)build the hook and the target decoder for ``hook_conv`` (fresh weights)."""
        chans = list(self.encoder.out_channels)
        hooked = DECODER_CHANNELS[STRIDES.index(32 // self.ratio)]
        self.hook: nn.Module | None = None
        if hook_conv:
            self.hook = nn.Sequential(nn.Conv2d(chans[-1] + hooked, chans[-1], 1, bias=False),
                                      nn.BatchNorm2d(chans[-1]), nn.ReLU(inplace=True))
        self.decoder = PyramidDecoder(chans, bottleneck=chans[-1] if hook_conv else chans[-1] + hooked)

    def forward(self, target: torch.Tensor, context: torch.Tensor | None = None) -> Any:
        """Shape: target, context (B, 3, H, W), H a multiple of 64 -> {"target", "context"}: (B, K, H, W) logits.

        In eval mode, ``model(image)`` alone returns whole-image logits (B, K, H, W) from :meth:`segment`.
        """
        if context is None:
            if self.training:
                raise ConfigError("hooknet trains on two inputs, model(target, context) with the context at ratio x "
                                  "the MPP: use method.name=hooknet with data.context={ratio: ...}")
            return self.segment(target)
        s, start, size = hook_box(context.shape[-1], target.shape[-1], self.ratio)
        cmaps = self.context_decoder(self.context_encoder(context))
        hook = centre_crop(cmaps[STRIDES.index(s)], start, size)
        tfeats = self.encoder(target)
        bottleneck = torch.cat([tfeats[-1], hook], 1)
        if self.hook is not None:
            bottleneck = self.hook(bottleneck)
        tmap = self.decoder(tfeats, bottleneck)[-1]
        return {"target": self.classifier(tmap), "context": self.context_classifier(cmaps[-1])}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict``; weights of the other hook layout (with / without the 1x1 hook conv)
        first rebuild the hook and target decoder to theirs, and ``build_options["hook_conv"]`` follows."""
        has_conv = any(k.startswith("hook.") for k in state_dict)
        if has_conv != (self.hook is not None):
            device = next(self.encoder.parameters()).device
            self._build_hook(has_conv)
            for mod in (self.hook, self.decoder):
                if mod is not None:
                    mod.to(device).train(self.training)  # fresh modules: the model's device and mode
            if isinstance(getattr(self, "build_options", None), dict):
                self.build_options["hook_conv"] = has_conv
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def segment(self, image: torch.Tensor) -> torch.Tensor:
        """Whole-image logits: non-overlapping ``tile`` px target tiles, each with its context from the same image.

        The geometry is that of training pairs (:func:`pathseg.data.context.cut_pair`): the context is the
        ``ratio·tile`` px region around the tile's centre, reflect-padded beyond the image and averaged over
        ``ratio × ratio`` blocks; tiles past the image's bottom/right edge are reflect-padded and cropped away.
        All tiles' context blocks lie on one lattice (tile origins differ by ``tile``, a multiple of ``ratio``),
        so the image is pooled once (memory: the image grown by ``(ratio - 1)·tile`` px per side).

        Shape: image (B, 3, H, W) normalised, any H, W -> (B, K, H, W).
        """
        from pathseg.io.tiling import context_start, reflect_index

        b, _, h, w = image.shape
        t, r = self.tile, self.ratio
        ny, nx = -(-h // t), -(-w // t)

        def gather(x: torch.Tensor, rows: np.ndarray, cols: np.ndarray) -> torch.Tensor:
            x = x.index_select(2, torch.as_tensor(reflect_index(rows, h), device=x.device))
            return x.index_select(3, torch.as_tensor(reflect_index(cols, w), device=x.device))

        lo = context_start(0, t, r)  # the context of the tile at (y, x) starts at (lo + y, lo + x): pooled (y/r, x/r)
        pooled = F.avg_pool2d(gather(image, np.arange(lo, lo + (ny - 1) * t + r * t),
                                     np.arange(lo, lo + (nx - 1) * t + r * t)), r)
        padded = gather(image, np.arange(ny * t), np.arange(nx * t))
        boxes = [(i * t, j * t) for i in range(ny) for j in range(nx)]
        out = image.new_empty(b, self.num_classes, ny * t, nx * t)
        chunk = max(1, 8 // b)  # tiles per forward pass
        for k in range(0, len(boxes), chunk):
            part = boxes[k:k + chunk]
            tgt = torch.cat([padded[..., y:y + t, x:x + t] for y, x in part])
            ctx = torch.cat([pooled[..., y // r:y // r + t, x // r:x // r + t] for y, x in part])
            logits = self(tgt, ctx)["target"]
            for n, (y, x) in enumerate(part):
                out[..., y:y + t, x:x + t] = logits[n * b:(n + 1) * b]
        return out[..., :h, :w]


def create_hooknet(encoder: str = "resnet18", *, num_classes: int = 2, ratio: int = 4, tile: int = 256,
                   weights: str | Path | None = None, context_weights: str | Path | None = None,
                   hook_conv: bool = False) -> HookNet:
    """HookNet with optional encoder weights: ``weights`` (target branch), ``context_weights`` (context branch).

    A DSF-WSI export gives both: ``encoder.safetensors`` and ``context_encoder.safetensors``. The SimSiam
    baseline gives them from two runs: ``simsiam`` with branch=target (``encoder.safetensors``) and with
    branch=context (``context_encoder.safetensors``).
    """
    from pathseg.models.factory import load_encoder_weights

    net = HookNet(encoder, num_classes, ratio, tile, hook_conv=bool(hook_conv))
    if weights is not None:
        load_encoder_weights(net, weights)  # duck-typed: uses .encoder and .encoder_name
    if context_weights is not None:
        load_encoder_weights(types.SimpleNamespace(encoder=net.context_encoder, encoder_name=encoder),  # type: ignore[arg-type]
                             context_weights)
    return net


def build_hooknet(*, encoder: str = "resnet18", num_classes: int = 2, weights: str | Path | None = None,
                  **options: Any) -> HookNet:
    """The ``create_model("hooknet", ...)`` builder; ``options``: ratio, context_weights, tile, hook_conv."""
    from pathseg.registry import did_you_mean

    valid = ["ratio", "context_weights", "tile", "hook_conv"]
    for key in options:
        if key not in valid:
            raise ConfigError(f"model hooknet: unknown option {key!r}.{did_you_mean(key, valid)} "
                              f"Valid options: {', '.join(valid)}")
    return create_hooknet(encoder, num_classes=num_classes, weights=weights, **options)
