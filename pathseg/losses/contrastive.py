"""Directional context-aware contrastive loss (CAC, Lai et al. 2021; CRCFP eqs. 3-8) and its memory bank.

Two overlapping crops of one unlabelled image are encoded and projected per pixel (φ_1, φ_2). At each
position of the overlap the less confident feature (the *anchor*) is pulled towards the more confident
one at the same image location (the *positive*, stop-gradient), and pushed away from negatives whose
pseudo-label differs from the anchor's:

    r(s, t)  = exp(cos(s, t) / τ)                                                         (eq. 3)
    ℓ_p      = -log[ r(a_p, t_p) / (r(a_p, t_p) + Σ_n M_n(p, n) · r(a_p, φ_n)) ]           (eq. 4)
    M_n(p,n) = 1{ŷ(a_p) ≠ ŷ(φ_n)}                                                          (eq. 5)
    M_d(p)   = 1{conf(a_p) < conf(t_p)} · 1{conf(t_p) > λ}                                 (eqs. 6-7)
    l_dc(a, t) = Σ_p M_d(p) · ℓ_p / Σ_p M_d(p)          mean over the active anchors
    L_cont   = l_dc(φ_1, φ_2) + l_dc(φ_2, φ_1)                                             (eq. 8)

where conf = max_k softmax(C_f(f))_k and ŷ = argmax_k C_f(f) of the pixel classifier. Negatives are
detached: only the anchor receives gradient. Normalisation: l_dc divides by the number of active anchors
(positions where M_d is on), as both reference implementations do; with no active anchor it is 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def directional_contrastive_loss(
    anchor: torch.Tensor,
    target: torch.Tensor,
    anchor_conf: torch.Tensor,
    target_conf: torch.Tensor,
    anchor_label: torch.Tensor,
    negatives: torch.Tensor,
    negative_label: torch.Tensor,
    *,
    temperature: float = 0.1,
    threshold: float = 0.75,
    max_anchors: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One direction of the directional contrastive loss, l_dc(anchor -> target).

    Shape:
        anchor, target: (N, C) features at the same N overlap positions (target is detached here).
        anchor_conf, target_conf: (N,) classifier confidence; anchor_label: (N,) int64 pseudo-labels of
        the anchor crop, which pick the negatives (eq. 5).
        negatives: (M, C), negative_label: (M,) int64 (M may be 0).
        Returns a scalar: the mean of ℓ_p over the active anchors (M_d on), 0 when there are none.

    ``max_anchors`` caps the number of active anchors evaluated (a uniform random subset, whose mean is an
    unbiased estimate of the mean over all of them); ``None`` evaluates all of them.

    Example:
        >>> a, t = torch.randn(5, 8), torch.randn(5, 8)
        >>> c = torch.full((5,), 0.9)
        >>> loss = directional_contrastive_loss(a, t, c - 0.1, c, torch.zeros(5, dtype=torch.long),
        ...                                     torch.randn(3, 8), torch.ones(3, dtype=torch.long))
        >>> loss.shape
        torch.Size([])
    """
    if anchor.shape[0] == 0:
        return anchor.sum() * 0.0
    mask = (anchor_conf < target_conf) & (target_conf > threshold)  # M_d, eqs. 6-7
    idx = mask.nonzero(as_tuple=True)[0]
    if max_anchors is not None and idx.numel() > max_anchors:
        keep = torch.randperm(idx.numel(), generator=generator, device="cpu")[:max_anchors].to(idx.device)
        idx = idx[keep]
    if idx.numel() == 0:
        return anchor.sum() * 0.0
    a = F.normalize(anchor[idx], dim=1)
    t = F.normalize(target[idx].detach(), dim=1)
    pos = (a * t).sum(1, keepdim=True) / temperature  # log r(a, t), eq. 3
    if negatives.shape[0] > 0:
        neg = a @ F.normalize(negatives.detach(), dim=1).t() / temperature  # log r(a, φ_n)
        keep_neg = anchor_label[idx, None] != negative_label[None, :]  # M_n, eq. 5: the anchor's pseudo-label
        neg = neg.masked_fill(~keep_neg, float("-inf"))
        logits = torch.cat([pos, neg], dim=1)
    else:
        logits = pos
    per_anchor = torch.logsumexp(logits, dim=1) - pos[:, 0]  # ℓ_p = -log(r_pos / (r_pos + Σ M_n r_neg)), eq. 4
    return per_anchor.mean()  # Σ_p M_d ℓ_p / Σ_p M_d


class MemoryBank(nn.Module):
    """First-in-first-out store of recent (detached) features and their pseudo-labels, used as negatives.

    Shape: ``push(features (M, C), labels (M,))``; ``contents()`` -> ((≤size, C), (≤size,)), oldest first.

    Example:
        >>> bank = MemoryBank(dim=4, size=3)
        >>> bank.push(torch.randn(5, 4), torch.arange(5))
        >>> bank.contents()[1].tolist()  # the 3 most recent, oldest first
        [2, 3, 4]
    """

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        self.size = int(size)
        self.register_buffer("features", torch.zeros(self.size, dim), persistent=False)
        self.register_buffer("labels", torch.zeros(self.size, dtype=torch.long), persistent=False)
        self.ptr = 0  # next slot to write
        self.count = 0  # how many slots hold data

    def __len__(self) -> int:
        return self.count

    @torch.no_grad()
    def push(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Append the newest features; under data-parallel training those of every rank, in rank order."""
        from pathseg.collectives import all_gather_cat

        features, labels = all_gather_cat(features), all_gather_cat(labels)
        if self.size == 0 or features.shape[0] == 0:
            return
        features, labels = features[-self.size:], labels[-self.size:]
        m = features.shape[0]
        slots = (self.ptr + torch.arange(m, device=self.features.device)) % self.size
        self.features[slots] = features.to(self.features.dtype)
        self.labels[slots] = labels.to(torch.long)
        self.ptr = (self.ptr + m) % self.size
        self.count = min(self.size, self.count + m)

    def contents(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.count < self.size:
            return self.features[: self.count], self.labels[: self.count]
        order = (self.ptr + torch.arange(self.size, device=self.features.device)) % self.size
        return self.features[order], self.labels[order]


class Projector(nn.Module):
    """The per-pixel non-linear projector of CAC: FC(dim) -> ReLU -> FC(dim), as 1x1 convolutions.

    Shape: (B, D, h, w) -> (B, dim, h, w).
    """

    def __init__(self, in_channels: int, dim: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_channels, dim, 1), nn.ReLU(inplace=True), nn.Conv2d(dim, dim, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)
