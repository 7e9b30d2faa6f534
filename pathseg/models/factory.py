"""One factory over one registry: decoders from segmentation_models_pytorch, encoders by name.

Every model is a :class:`SegModel` that exposes the three stages the methods need:

    features = model.encode(x)        # encoder pyramid h(x), list of (B, C_i, H/2^i, W/2^i)
    z        = model.decode(features) # decoder feature map g(h(x)), (B, D, h, w)
    logits   = model.classify(z)      # pixel classifier C_f, a 1x1 conv: (B, K, h, w)

``model(x)`` runs all three and upsamples the logits to the input size (bilinear).

Semantic feature tap: ``z, s = model.decode_with_semantic(features)`` runs the decoder once and also
returns ``s``, a decoder map at stride 4-8 with >= 64 channels, the level at which feature-space methods
(contrastive and perturbation consistency, :mod:`pathseg.methods.semi`) work. It is chosen once per
model, by probing the decoder, as the decoder output when that is at stride >= 4, otherwise the finest
decoder block at stride 4-8 (the last one run, among blocks of >= 64 channels where there are any):

=============== ============================ ===================================================
family          semantic feature s           with the default smp decoder settings
=============== ============================ ===================================================
deeplabv3       the decoder output (= z)     256 channels, stride 8
deeplabv3plus   the decoder output (= z)     256 channels, stride 4
unet            ``decoder.blocks.2``         64 channels, stride 4 (z: 16 channels, stride 1)
unetplusplus    ``decoder.blocks.x_0_2``     64 channels, stride 4 (z: 16 channels, stride 1)
=============== ============================ ===================================================

``model.semantic_tap`` names the decoder submodule ("" for the decoder output), ``semantic_channels`` and
``semantic_stride`` describe s, ``feature_stride`` the stride of z. Whole networks in ``NETWORKS`` (HookNet)
have no such tap.

Networks that are not a :class:`SegModel` (HookNet takes two inputs) register a whole-model builder in
``NETWORKS`` instead: ``builder(encoder=, num_classes=, weights=, **options) -> nn.Module`` with ``name``,
``encoder_name`` and ``num_classes`` attributes; ``create_model`` and checkpoints find them by name too.

Encoder weights: ``weights=None`` (from scratch), a local file (``.pth``/``.pt``/``.safetensors``,
a plain state dict of the encoder, optionally under "state_dict"/"model" and/or prefixed "encoder."),
or ``"imagenet"`` (smp downloads from the hub, needs the internet).

Example:
    >>> m = create_model("unet", encoder="resnet18", num_classes=2)
    >>> m(torch.zeros(1, 3, 64, 64)).shape
    torch.Size([1, 2, 64, 64])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pathseg.errors import UnknownNameError, WeightsError
from pathseg.registry import Registry, did_you_mean

DECODERS: Registry = Registry("model")
ENCODERS: Registry = Registry("encoder")
#: Encoder families built outside smp (``vit``: pathology foundation models); each has ``handles(name)`` and
#: ``create_model(name, encoder=..., num_classes=..., weights=..., **options)``.
ENCODER_FAMILIES: Registry = Registry("encoder family")
NETWORKS: Registry = Registry("model")
"""Whole-model builders for networks that are not a SegModel (e.g. ``hooknet``); names shared with DECODERS."""

for _enc in ("resnet18", "resnet34", "resnet50", "resnet101"):
    ENCODERS.register(_enc, _enc)


def _smp():
    import segmentation_models_pytorch as smp

    return smp


DECODERS.register("deeplabv3", lambda **kw: _smp().DeepLabV3(**kw))
DECODERS.register("deeplabv3plus", lambda **kw: _smp().DeepLabV3Plus(**kw))
DECODERS.register("unet", lambda **kw: _smp().Unet(**kw))
DECODERS.register("unetplusplus", lambda **kw: _smp().UnetPlusPlus(**kw))


class SegModel(nn.Module):
    """Encoder h, decoder g and 1x1 pixel classifier C_f, with the stages exposed separately."""

    def __init__(self, net: nn.Module, num_classes: int, name: str, encoder: str) -> None:
        super().__init__()
        self.encoder = net.encoder
        self.decoder = net.decoder
        self.name, self.encoder_name, self.num_classes = name, encoder, num_classes
        blocks: list[tuple[str, int, int]] = []  # (submodule name, channels, stride) in the order they run

        def record(name: str):
            return lambda _m, _i, out: blocks.append((name, int(out.shape[1]), 64 // int(out.shape[-1])))

        hooks = [mod.register_forward_hook(record(n)) for n, mod in _decoder_blocks(self.decoder)]
        with torch.no_grad():
            probe = torch.zeros(1, 3, 64, 64)
            was = self.encoder.training, self.decoder.training
            self.encoder.eval(), self.decoder.eval()
            try:
                z = self.decoder(self.encoder(probe))
            finally:
                for h in hooks:
                    h.remove()
            self.encoder.train(was[0]), self.decoder.train(was[1])
        self.feature_channels = int(z.shape[1])
        self.feature_stride = max(1, 64 // int(z.shape[-1]))
        self.semantic_tap, self.semantic_channels, self.semantic_stride = _pick_semantic(
            blocks, (int(z.shape[1]), self.feature_stride))
        self.encoder_channels = list(self.encoder.out_channels)
        self.classifier = nn.Conv2d(self.feature_channels, num_classes, kernel_size=1)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder(x)

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        return self.decoder(features)

    def decode_with_semantic(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder map z and the semantic feature s (see the module docstring), from one decoder pass.

        Shape: encoder pyramid -> z (B, feature_channels, H/feature_stride, W/feature_stride) and
        s (B, semantic_channels, H/semantic_stride, W/semantic_stride); s is z when ``semantic_tap`` is "".
        """
        if not self.semantic_tap:
            z = self.decoder(features)
            return z, z
        seen: list[torch.Tensor] = []
        hook = self.decoder.get_submodule(self.semantic_tap).register_forward_hook(lambda _m, _i, o: seen.append(o))
        try:
            z = self.decoder(features)
        finally:
            hook.remove()
        return z, seen[-1]

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        return self.classifier(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classify(self.decode(self.encode(x)))
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return logits


def _decoder_blocks(decoder: nn.Module) -> list[tuple[str, nn.Module]]:
    """The named stages of a decoder that has a ``blocks`` container (U-Net, U-Net++); none otherwise."""
    blocks = getattr(decoder, "blocks", None)
    if not isinstance(blocks, (nn.ModuleList, nn.ModuleDict)):
        return []
    return [(f"blocks.{n}", m) for n, m in blocks.named_children()]


def _pick_semantic(blocks: list[tuple[str, int, int]], output: tuple[int, int]) -> tuple[str, int, int]:
    """(tap name, channels, stride) of the semantic feature: the decoder output when at stride >= 4, else
    the finest block at stride 4-8, the last run among those with >= 64 channels where there are any."""
    if output[1] >= 4 or not blocks:
        return "", output[0], output[1]
    mid = [b for b in blocks if 4 <= b[2] <= 8]
    if not mid:
        return "", output[0], output[1]
    wide = [b for b in mid if b[1] >= 64] or mid
    finest = min(b[2] for b in wide)
    return [b for b in wide if b[2] == finest][-1]


def create_model(
    name: str = "unet",
    *,
    encoder: str = "resnet18",
    num_classes: int = 2,
    weights: str | None = None,
    **kwargs: Any,
) -> SegModel:
    """Build a registered decoder over a registered encoder (or a registered whole network, see ``NETWORKS``).

    Args:
        name: one of ``DECODERS.names()`` (deeplabv3, deeplabv3plus, unet, unetplusplus, ...) or
            ``NETWORKS.names()`` (hooknet).
        encoder: one of ``ENCODERS.names()``, or a name an encoder family handles (``pathseg encoders``
            lists the ViT foundation models: uni, uni2, virchow2, hoptimus, phikon, phikon2, conch).
        num_classes: K, the classifier's output channels.
        weights: None, a local weights file, or "imagenet" (needs the internet).
    """
    if name in NETWORKS:
        ENCODERS.get(encoder)
        net = NETWORKS.get(name)(encoder=encoder, num_classes=num_classes, weights=weights, **kwargs)
        net.build_options = dict(kwargs)  # saved in checkpoints, so load_model rebuilds the same shape
        return net
    if name not in DECODERS:
        names = sorted(set(DECODERS.names()) | set(NETWORKS.names()))
        raise UnknownNameError(f"unknown model {name!r}.{did_you_mean(name, names)} "
                               f"Valid model names: {', '.join(names)}")
    family = next((f for f in map(ENCODER_FAMILIES.get, ENCODER_FAMILIES.names()) if f.handles(encoder)), None)
    if family is not None and encoder not in ENCODERS:
        return family.create_model(name, encoder=encoder, num_classes=num_classes, weights=weights, **kwargs)
    builder = DECODERS.get(name)
    smp_encoder = ENCODERS.get(encoder)
    net = builder(encoder_name=smp_encoder, encoder_weights=None, classes=num_classes, **kwargs)
    model = SegModel(net, num_classes, name=name, encoder=encoder)
    model.build_options = dict(kwargs)
    if weights is not None:
        load_encoder_weights(model, weights)
    return model


def load_encoder_weights(model: SegModel, weights: str | Path) -> None:
    """Load encoder weights from a local file, or from the hub for ``"imagenet"``."""
    if str(weights) == "imagenet":
        try:
            smp = _smp()
            enc = smp.encoders.get_encoder(model.encoder_name, weights="imagenet")
        except Exception as e:  # network errors surface as many different types
            raise WeightsError(
                f"could not download ImageNet weights for encoder {model.encoder_name!r} ({type(e).__name__}: {e}). "
                "Offline, download them once elsewhere and pass the file: weights=/path/to/encoder.pth "
                "(a torch or safetensors state dict of the encoder)."
            ) from e
        model.encoder.load_state_dict(enc.state_dict())
        return
    path = Path(weights)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found; pass an existing .pth/.pt/.safetensors file, or weights=null")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(f"{path}: cannot read weights ({e}); expected a torch or safetensors state dict") from e
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    prefixes = ("model.encoder.", "encoder.", "model.")
    cleaned = {}
    for k, v in state.items():
        for p in prefixes:
            if k.startswith(p):
                k = k[len(p):]
                break
        cleaned[k] = v
    own = model.encoder.state_dict()
    matching = {k: v for k, v in cleaned.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
    if not matching:
        raise WeightsError(
            f"{path}: none of its {len(cleaned)} tensors match encoder {model.encoder_name!r} "
            f"(first keys: {list(cleaned)[:3]}); is it a weights file for this encoder?"
        )
    missing = sorted(set(own) - set(matching))
    if missing:
        import warnings

        warnings.warn(f"{path}: {len(missing)} encoder tensors not in the file keep their initial values "
                      f"(first: {missing[:3]})", stacklevel=2)
    own.update(matching)
    torch.nn.Module.load_state_dict(model.encoder, own)
