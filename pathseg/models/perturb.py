"""CCT feature perturbations (Ouali et al. 2020; CRCFP eqs. 9-14) and the auxiliary classifiers that read them.

Which feature is perturbed: the model's semantic feature s (``SegModel.decode_with_semantic``: the
256-channel DeepLab decoder output, a >= 64-channel U-Net decoder stage at stride 4), called z below,
shape (B, D, h, w).
In CCT the shared encoder output is perturbed before light auxiliary decoders; in pathseg the decoder
is shared and the auxiliary heads are 1x1 classifiers, so s plays the role of CCT's encoder output.

Perturbations, each drawing fresh randomness per call:

``noise``         z + z ⊙ Ω,  Ω ~ U(-r, r) element-wise, r = 0.3.
``feature_drop``  drop the most activated positions (eqs. 12-14): the attention map is the channel
                  mean of z, A = mean_c z; a threshold γ ~ U(0.75, 0.9) is drawn per image and the
                  positions with A >= γ · max(A) are zeroed. The dropped share depends on the features:
                  a peaked map loses a few positions, a flat one many.
``spatial_drop``  spatial (channel-wise) dropout: each channel of each image is kept with probability
                  1 - δ (δ = 0.5) and rescaled by 1 / (1 - δ), as ``torch.nn.Dropout2d``.

Auxiliary classifiers (eq. 9): K = ``draws`` independent heads per perturbation type (K = 4, so 12 in
CRCFP, section 5.4); head k of a type reads its own perturbed copy of z.

Example:
    >>> z = torch.randn(2, 16, 8, 8)
    >>> heads = AuxiliaryHeads(16, num_classes=3, draws=4)
    >>> sum(len(h) for h in heads.heads.values())
    12
    >>> [o.shape for o in heads(z).values()][0]
    torch.Size([8, 3, 8, 8])
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from pathseg.registry import Registry

PERTURBATIONS: Registry = Registry("perturbation")


@PERTURBATIONS.register("noise")
def feature_noise(z: torch.Tensor, *, radius: float = 0.3, generator: torch.Generator | None = None) -> torch.Tensor:
    """z + z ⊙ Ω with Ω ~ U(-radius, radius) per element. Shape: (B, D, h, w) -> same."""
    omega = (torch.rand(z.shape, generator=generator, device="cpu").to(z) * 2 - 1) * radius
    return z + z * omega


@PERTURBATIONS.register("feature_drop")
def feature_dropout(
    z: torch.Tensor, *, gamma: tuple[float, float] = (0.75, 0.9), generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero the positions whose channel-mean activation is at least γ times its maximum (eqs. 12-14).

    A = mean_c z (eq. 12); γ ~ U(gamma) per image (eq. 13); M = 1{A < γ · max A} (eq. 14); out = z ⊙ M.

    Shape: (B, D, h, w) -> same.
    """
    b = z.shape[0]
    att = z.detach().mean(1, keepdim=True)  # (B, 1, h, w), eq. 12
    g = torch.rand(b, generator=generator, device="cpu").to(att) * (gamma[1] - gamma[0]) + gamma[0]  # eq. 13
    thr = g.view(b, 1, 1, 1) * att.flatten(1).max(1).values.view(b, 1, 1, 1)
    return z * (att < thr).to(z.dtype)  # eq. 14


@PERTURBATIONS.register("spatial_drop")
def spatial_dropout(z: torch.Tensor, *, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Drop whole channels per image with probability p, rescale the rest by 1/(1-p). Shape: (B, D, h, w) -> same."""
    keep = (torch.rand(z.shape[:2], generator=generator, device="cpu") >= p).to(z)
    return z * keep[:, :, None, None] / (1.0 - p)


class AuxiliaryHeads(nn.Module):
    """K = ``draws`` independent auxiliary 1x1 classifiers per perturbation type (CRCFP eq. 9, section 5.4).

    ``forward(z)`` returns ``{type: logits}`` with logits (K·B, num_classes, h, w): z is perturbed K times
    (fresh randomness per copy) and copy k, rows k·B .. (k+1)·B - 1, is classified by ``heads[type][k]``.

    Args:
        in_channels: D, the channels of the perturbed feature (``model.semantic_channels``).
        num_classes: K classes of the pixel classifier.
        draws: auxiliary heads, and perturbed copies, per type (K = 4 in CCT/CRCFP).
        types: perturbation names from :data:`PERTURBATIONS`.
        options: per-type keyword arguments, e.g. ``{"noise": {"radius": 0.3}}``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        draws: int = 4,
        types: tuple[str, ...] = ("noise", "feature_drop", "spatial_drop"),
        options: dict[str, dict] | None = None,
    ) -> None:
        super().__init__()
        self.draws = int(draws)
        self.fns: dict[str, Callable[..., torch.Tensor]] = {t: PERTURBATIONS.get(t) for t in types}
        self.options = {t: dict((options or {}).get(t, {})) for t in types}
        self.heads = nn.ModuleDict({
            t: nn.ModuleList(nn.Conv2d(in_channels, num_classes, kernel_size=1) for _ in range(self.draws))
            for t in types
        })

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for t, fn in self.fns.items():
            perturbed = fn(z.repeat(self.draws, 1, 1, 1), **self.options[t]).split(z.shape[0])  # K copies
            out[t] = torch.cat([head(p) for head, p in zip(self.heads[t], perturbed)])
        return out
