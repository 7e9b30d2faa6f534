"""Phase 2 of MLPS: a segmenter trained on the pseudo masks of three layers, and the inference gate.

Han et al. 2022, Sec. 3.3-3.4. With P the segmenter's logits (DeepLabV3+ in the paper) and
Y_mid, Y_late, Y_final the pseudo masks of the classifier's three layers (b4_3, b5_2, bn7):

    L = λ_mid · CE(P, Y_mid) + λ_late · CE(P, Y_late) + λ_final · CE(P, Y_final),
    (λ_mid, λ_late, λ_final) = (0.2, 0.2, 0.6)                       ``method.params.layer_weights``

Single-layer ablations are ``layer_weights: [0, 0, 1]`` etc.; a layer with weight 0 is not computed.
Batches come from the ``pseudo_masks`` dataset (masks packed, :func:`~pathseg.methods.weak.pseudo.unpack_masks`).

Gate (inference): with q_k the phase-1 classifier's probability for the patch,

    p'_k(x) = p_k(x) · [q_k > ε],   prediction = argmax_k p'_k(x),   ε = 0.1

:func:`apply_gate` is the formula; :func:`gate_checkpoint` writes one ``<decoder>_gated`` model
(:mod:`pathseg.models.cam`) that applies it inside the network, so ``pathseg evaluate``, ``pathseg
predict`` and the whole-slide engine (tiles with overlap, probabilities averaged) use it unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from pathseg.errors import ConfigError
from pathseg.methods.base import METHODS, Method
from pathseg.methods.weak.gradcam import LAYERS
from pathseg.methods.weak.pseudo import unpack_masks
from pathseg.models import SegModel, create_model
from pathseg.models.cam import DEFAULT_GATE_EPS

DEFAULT_LAYER_WEIGHTS = (0.2, 0.2, 0.6)


def multi_layer_loss(logits: torch.Tensor, masks: dict[str, torch.Tensor], weights: dict[str, float],
                     ignore_index: int = 255) -> dict[str, torch.Tensor]:
    """Σ_l λ_l · CE(logits, Y_l) over layers with λ_l > 0; returns the total and each term.

    Shape: logits (B, K, H, W); masks {layer: (B, H, W) int64} -> {"loss", "loss/<layer>"} scalars.
    """
    out: dict[str, torch.Tensor] = {}
    total = logits.new_zeros(())
    for layer, w in weights.items():
        if w <= 0:
            continue
        term = F.cross_entropy(logits, masks[layer], ignore_index=ignore_index)
        out[f"loss/{layer}"] = term
        total = total + w * term
    out["loss"] = total
    return out


@METHODS.register("mlps")
class MLPS(Method):
    """Phase 2: segmentation with multi-layer pseudo-supervision (see the module docstring)."""

    def __init__(self, model, *, layer_weights: list[float] = DEFAULT_LAYER_WEIGHTS, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        w = [float(v) for v in layer_weights]
        if len(w) != len(LAYERS) or min(w) < 0 or sum(w) <= 0:
            raise ConfigError(f"method.params.layer_weights: three weights >= 0 for {', '.join(LAYERS)} "
                              f"(not all 0) expected, got {layer_weights}")
        self.layer_weights = dict(zip(LAYERS, w))

    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        masks = unpack_masks(batch["mask"], self.ignore_index)
        return multi_layer_loss(self(batch["image"]), masks, self.layer_weights, self.ignore_index)


def apply_gate(seg_probs: torch.Tensor, class_probs: torch.Tensor, eps: float = DEFAULT_GATE_EPS) -> torch.Tensor:
    """Zero the probability maps of classes the classifier gives <= ``eps``.

    Shape: seg_probs (B, K, H, W); class_probs (B, K) -> (B, K, H, W).
    """
    return seg_probs * (class_probs > eps).to(seg_probs.dtype)[..., None, None]


def gate_checkpoint(segmenter: str | os.PathLike, classifier: str | os.PathLike, out: str | os.PathLike,
                    eps: float = DEFAULT_GATE_EPS) -> Path:
    """Combine a phase-2 segmenter and a phase-1 classifier into one gated model checkpoint.

    Both must predict the same classes and use the same encoder name.
    """
    from pathseg.models.checkpoint import load_model, save_model_checkpoint

    seg, seg_info = load_model(segmenter)
    cls, cls_info = load_model(classifier)
    if cls_info["model"] != "cam":
        raise ConfigError(f"{classifier}: the gate needs the phase-1 classifier (model cam), not {cls_info['model']!r}")
    if seg_info["model"] == "cam" or seg_info["model"].endswith("_gated"):
        raise ConfigError(f"{segmenter}: expected a phase-2 segmenter, got model {seg_info['model']!r}")
    if seg_info["class_names"] != cls_info["class_names"]:
        raise ConfigError(f"segmenter classes {seg_info['class_names']} differ from classifier classes "
                          f"{cls_info['class_names']}")
    if seg_info["encoder"] != cls_info["encoder"]:
        raise ConfigError(f"a gated model holds one encoder name: segmenter uses {seg_info['encoder']!r}, classifier "
                          f"{cls_info['encoder']!r}; train both with the same model.encoder")
    gated = build_gated_model(seg, cls, eps)
    extra = {k2: v for k2, v in seg_info.items() if k2 not in ("model", "encoder", "num_classes", "class_names", "mpp")}
    extra.update(gate={"eps": eps, "segmenter": str(segmenter), "classifier": str(classifier)})
    return save_model_checkpoint(out, gated, seg_info["class_names"], mpp=seg_info.get("mpp"), **extra)


def build_gated_model(seg: SegModel, cls: SegModel, eps: float = DEFAULT_GATE_EPS) -> SegModel:
    """One ``<decoder>_gated`` model holding ``seg`` and the ``cam`` classifier ``cls`` (weights copied).

    Its logits are the segmenter's, minus ``GATE_OFFSET`` for classes with classifier probability <= eps:
    ``argmax(model(x)) == argmax(apply_gate(softmax(seg(x)), q, eps))``.
    """
    if not 0 <= eps < 1:
        raise ConfigError(f"gate eps must be in [0, 1), got {eps}")
    if cls.name != "cam" or seg.num_classes != cls.num_classes or seg.encoder_name != cls.encoder_name:
        raise ConfigError(f"gate: need a cam classifier with the segmenter's classes and encoder; got {cls.name!r} "
                          f"({cls.num_classes} classes, {cls.encoder_name}) for {seg.name!r} "
                          f"({seg.num_classes} classes, {seg.encoder_name})")
    k = seg.num_classes
    gated = create_model(f"{seg.name}_gated", encoder=seg.encoder_name, num_classes=k)
    enc = gated.encoder
    enc.seg.load_state_dict(seg.encoder.state_dict())
    gated.decoder.seg.load_state_dict(seg.decoder.state_dict())
    enc.cls_encoder.load_state_dict(cls.encoder.state_dict())
    enc.cls_head.load_state_dict(cls.decoder.state_dict())
    enc.cls_fc.load_state_dict(cls.classifier.state_dict())
    enc.gate_eps.fill_(eps)
    with torch.no_grad():
        d = seg.feature_channels
        gated.classifier.weight.zero_()
        gated.classifier.weight[:, :d] = seg.classifier.weight
        gated.classifier.weight[:, d:] = torch.eye(k)[..., None, None]
        gated.classifier.bias.copy_(seg.classifier.bias)
    return gated.eval()
