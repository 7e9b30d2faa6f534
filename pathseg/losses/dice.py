"""Soft Dice loss (Milletari et al. 2016), as used for nuclei segmentation by Háberová et al.

For class probabilities ``p = softmax(logits)`` and one-hot targets ``g``, per class k over every
scored pixel i of the batch:

    Dice_k = (2 Σ_i p_ik g_ik + s) / (Σ_i p_ik + Σ_i g_ik + s)
    L      = 1 − mean_{k in classes} Dice_k

``s`` (``smooth``) keeps an empty class finite. Pixels equal to ``ignore_index`` are left out of
every sum. ``classes="foreground"`` averages over classes 1..K−1 only (for binary nuclei masks this
is the Dice of the nucleus class), ``"all"`` over every class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pathseg.sample import IGNORE_INDEX


def dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    smooth: float = 1.0,
    classes: str = "foreground",
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Soft Dice loss over a batch (sums over batch and pixels, then a mean over classes).

    Shape:
        logits (B, K, H, W) float; target (B, H, W) int64 class indices (``ignore_index`` = unscored).
        Returns a scalar.

    Example:
        >>> logits = torch.tensor([[[[0.0, 0.0]], [[10.0, -10.0]]]])  # (1, 2, 1, 2)
        >>> round(dice_loss(logits, torch.tensor([[[1, 0]]]), smooth=0.0).item(), 4)
        0.0
    """
    if classes not in ("foreground", "all"):
        raise ValueError(f"dice_loss: classes must be 'foreground' or 'all', got {classes!r}")
    if logits.ndim != 4 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"dice_loss: expected logits (B, K, H, W) and target (B, H, W); got {tuple(logits.shape)} "
                         f"and {tuple(target.shape)}")
    k = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1).to(logits.dtype)
    prob = logits.float().softmax(1) * valid
    onehot = F.one_hot(target.clamp(0, k - 1) * (target != ignore_index), k).permute(0, 3, 1, 2).to(prob.dtype) * valid
    dims = (0, 2, 3)
    inter = (prob * onehot).sum(dims)
    denom = prob.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + smooth) / (denom + smooth).clamp_min(1e-12)
    if classes == "foreground" and k > 1:
        dice = dice[1:]
    return 1.0 - dice.mean()
