"""Grad-CAM at several depths of a CAM classifier (the three layers MLPS takes pseudo masks from).

For a feature map A (B, C, h, w) and class scores y (B, K) computed from it (Selvaraju et al. 2017):

    α_kc = (1/hw) Σ_ij ∂y_k/∂A_cij          (per image)
    G_k  = Σ_c α_kc A_c                      (B, K, h, w)

The maps are returned signed: the authors' pseudo-mask code takes the argmax of the (jointly
min-max normalised) signed maps over the patch's labelled classes, and a common affine normalisation
does not change that argmax; apply ``relu`` for the usual Grad-CAM picture.

Layers of a ``cam`` model (:mod:`pathseg.models.cam`), the analogues of the paper's b4_3, b5_2, bn7:

    ``mid``:   encoder stage 4 (features[-2], 1/8 resolution with the dilated encoder)
    ``late``:  encoder stage 5 (features[-1])
    ``final``: the head's features ("bn7"), which the CAM layer reads

Example:
    >>> maps = layer_grad_cams(model, x)          # doctest: +SKIP
    >>> {k: tuple(v.shape) for k, v in maps.items()}  # doctest: +SKIP
    {'mid': (2, 3, 14, 14), 'late': (2, 3, 14, 14), 'final': (2, 3, 14, 14)}
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pathseg.models import SegModel
from pathseg.models.cam import class_logits

from pathseg.data.pseudo_masks import LAYERS  # noqa: E402  (the three depths; also the mask folders)


def grad_cam(activations: Sequence[torch.Tensor], scores: torch.Tensor,
             classes: Sequence[int] | None = None) -> list[torch.Tensor]:
    """Grad-CAM maps of every activation for every class, one backward pass per class.

    ``activations`` must be in the autograd graph of ``scores`` (which must not mix images of the
    batch, e.g. BN in eval mode), so the gradient of Σ_b y_bk is the per-image gradient.

    Shape: activations [(B, C_l, h_l, w_l)], scores (B, K) -> [(B, K, h_l, w_l)] (classes not in
    ``classes`` are zero).
    """
    k_all = scores.shape[1]
    todo = list(range(k_all)) if classes is None else list(classes)
    out = [a.new_zeros(a.shape[0], k_all, *a.shape[2:]) for a in activations]
    for n, k in enumerate(todo):
        grads = torch.autograd.grad(scores[:, k].sum(), list(activations), retain_graph=n < len(todo) - 1)
        for o, a, g in zip(out, activations, grads):
            alpha = g.mean((2, 3), keepdim=True)  # (B, C, 1, 1)
            o[:, k] = (alpha * a).sum(1).detach()
    return out


def layer_grad_cams(model: SegModel, x: torch.Tensor, layers: Sequence[str] = LAYERS,
                    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Grad-CAMs of a ``cam`` model at the named layers, and its class probabilities.

    Runs the model in eval mode (no attention, no dropout: the classifier as used for inference).

    Shape: x (B, 3, H, W) -> ({layer: (B, K, h, w)}, probabilities (B, K)).
    """
    unknown = set(layers) - set(LAYERS)
    if unknown:
        from pathseg.errors import ConfigError

        raise ConfigError(f"Grad-CAM layers {sorted(unknown)} unknown; choose from {', '.join(LAYERS)}")
    was = model.training
    model.eval()
    try:
        with torch.enable_grad():
            feats = model.encode(x)
            acts = {"mid": feats[-2], "late": feats[-1]}
            acts["final"] = model.decode(feats)
            scores = class_logits(model.classify(acts["final"]))
            maps = grad_cam([acts[n] for n in layers], scores)
    finally:
        model.train(was)
    return dict(zip(layers, maps)), torch.sigmoid(scores.detach())
