"""SimSiam's symmetric negative-cosine loss with stop-gradient, and its dense multi-stage sum (DSF-WSI).

Chen & He, "Exploring Simple Siamese Representation Learning" (CVPR 2021), eqs. 1-4:

    D(p, z)  = - (p / ||p||) · (z / ||z||)                         negative cosine similarity
    L        = ½ D(p1, sg(z2)) + ½ D(p2, sg(z1))                   sg = stop-gradient (detach)

Wang et al., DSF-WSI (dense SimSiam): one projector/predictor pair per ResNet stage s = 1..4 and

    L_DSL    = Σ_s w_s · L_s,        w = (0.1, 0.4, 0.7, 1.0)

Collapse (SimSiam §4.1): ``output_spread(z)``, the per-channel standard deviation over the batch of
the l2-normalised outputs z/||z||, averaged over channels: 0 when every sample maps to one vector,
about 1/sqrt(D) when the outputs are spread like a Gaussian.

Shape:
    p1, p2, z1, z2: (N, D) -> scalar. ``dense_simsiam_loss`` takes lists of 4 such tuples.

Example:
    >>> p, z = torch.randn(8, 16), torch.randn(8, 16)
    >>> round(float(simsiam_loss(p, p, p, p)), 4)  # identical predictions and targets: the minimum, -1
    -1.0
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

STAGE_WEIGHTS: tuple[float, ...] = (0.1, 0.4, 0.7, 1.0)
"""DSF-WSI's weights of the four ResNet stages' SimSiam losses (shallow to deep)."""


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, sg(z)): mean over the batch of -cos(p_i, z_i); ``z`` is detached (no gradient reaches it).

    Shape: p, z (N, D) -> scalar.
    """
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """½ D(p1, sg(z2)) + ½ D(p2, sg(z1)); in [-1, 1].

    Shape: p1, p2, z1, z2 (N, D) -> scalar.
    """
    return 0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1)


def dense_simsiam_loss(
    stages: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    weights: Sequence[float] = STAGE_WEIGHTS,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Σ_s w_s · simsiam_loss(p1_s, p2_s, z1_s, z2_s); returns (total, per-stage losses unweighted).

    Shape: ``stages`` has one ``(p1, p2, z1, z2)`` per stage, each (N, D_s); len(weights) == len(stages).
    """
    if len(stages) != len(weights):
        raise ValueError(f"dense SimSiam: {len(stages)} stages but {len(weights)} weights; give one weight per stage")
    per = [simsiam_loss(*s) for s in stages]
    total = sum(w * l for w, l in zip(weights, per))
    return total, per


def output_spread(z: torch.Tensor) -> torch.Tensor:
    """mean_d std_n (z_n / ||z_n||)_d: the centred spread of a head's outputs (0 = collapsed), without gradient.

    The standard deviation is the unbiased one (``torch.std``, N - 1), over the batch, per channel.

    Shape: z (N, D), N >= 2 -> scalar.
    """
    with torch.no_grad():
        return F.normalize(z.detach().float(), dim=1).std(dim=0).mean()
