"""Consistency losses on unlabelled predictions: CCT's softmax MSE and entropy minimisation.

    L_cross = (1 / A) Σ_a  mean_{pixels, classes} (softmax(ŷ_a) - softmax(ŷ).detach())²   (CCT, Ouali et al. 2020)
    L_ent   = mean_{pixels} -Σ_k p_k log p_k,   p = softmax(ŷ)                              (entropy minimisation)

where ŷ are the main classifier's logits on the unlabelled image and ŷ_a the A auxiliary outputs on
perturbed features (see :mod:`pathseg.models.perturb`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def softmax_mse(aux_logits: torch.Tensor, main_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared error between class probabilities; the main prediction is the (detached) target.

    Shape: aux_logits (A·B, K, h, w) or (B, K, h, w); main_logits (B, K, h, w), repeated A times to match
    when the auxiliary batch is a stack of A perturbed copies. Returns a scalar.

    Example:
        >>> softmax_mse(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)).item()
        0.0
    """
    target = main_logits.detach().softmax(1)
    if aux_logits.shape[0] != target.shape[0]:
        reps = aux_logits.shape[0] // target.shape[0]
        target = target.repeat(reps, 1, 1, 1)
    if aux_logits.shape[-2:] != target.shape[-2:]:
        aux_logits = F.interpolate(aux_logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return F.mse_loss(aux_logits.softmax(1), target)


def entropy_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean per-pixel Shannon entropy (nats) of the predicted class distribution.

    Shape: logits (B, K, h, w) -> scalar.

    Example:
        >>> round(entropy_loss(torch.zeros(1, 2, 1, 1)).item(), 4)  # uniform over 2 classes: log 2
        0.6931
    """
    logp = F.log_softmax(logits, dim=1)
    return -(logp.exp() * logp).sum(1).mean()
