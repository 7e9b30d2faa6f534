"""CCT feature perturbations (Ouali et al. 2020) and the auxiliary classifiers that read them.

Which feature is perturbed: the decoder feature map z = g(h(x)), shape (B, D, h, w), i.e. the
representation the main 1x1 pixel classifier C_f reads. (In CCT the shared encoder output is perturbed
before light auxiliary decoders; in pathseg the decoder is shared and the auxiliary heads are 1x1
classifiers, so z plays the role of CCT's encoder output.)

Perturbations, each drawing fresh randomness per call:

``noise``         z + z ⊙ Ω,  Ω ~ U(-r, r) element-wise, r = 0.3.
``feature_drop``  drop the most activated positions. The activation map is the channel sum of z,
                  min-max normalised per image; a threshold γ ~ U(0.75, 0.9) is drawn per image and the
                  positions whose activation is at or above the γ-*quantile* of that map are zeroed, so
                  the top (1 - γ) = 10-25% most active positions are removed. (CRCFP's eq. 13 is garbled
                  and thresholding the normalised values at γ removes a data-dependent share that is
                  often ~0 for a peaked map; the quantile keeps the intent: remove the most active
                  region, about 10-30% of it.)
``spatial_drop``  spatial (channel-wise) dropout: each channel of each image is kept with probability
                  1 - δ (δ = 0.5) and rescaled by 1 / (1 - δ), as ``torch.nn.Dropout2d``.

Example:
    >>> z = torch.randn(2, 16, 8, 8)
    >>> heads = AuxiliaryHeads(16, num_classes=3, draws=4)
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
    """Zero the positions whose channel-summed activation is in the top (1 - γ) of the image, γ ~ U(gamma).

    Shape: (B, D, h, w) -> same.
    """
    b = z.shape[0]
    att = z.detach().sum(1).flatten(1)  # (B, h*w)
    lo, hi = att.min(1, keepdim=True).values, att.max(1, keepdim=True).values
    att = (att - lo) / (hi - lo).clamp_min(1e-12)  # min-max normalised
    g = torch.rand(b, generator=generator, device="cpu").to(att) * (gamma[1] - gamma[0]) + gamma[0]
    thr = torch.stack([torch.quantile(att[i], g[i]) for i in range(b)])[:, None]
    keep = (att < thr).to(z.dtype).view(b, 1, *z.shape[-2:])
    return z * keep


@PERTURBATIONS.register("spatial_drop")
def spatial_dropout(z: torch.Tensor, *, p: float = 0.5, generator: torch.Generator | None = None) -> torch.Tensor:
    """Drop whole channels per image with probability p, rescale the rest by 1/(1-p). Shape: (B, D, h, w) -> same."""
    keep = (torch.rand(z.shape[:2], generator=generator, device="cpu") >= p).to(z)
    return z * keep[:, :, None, None] / (1.0 - p)


class AuxiliaryHeads(nn.Module):
    """One auxiliary 1x1 classifier per perturbation type; each type perturbs z ``draws`` (K) times.

    ``forward(z)`` returns ``{type: logits}`` with logits (K·B, num_classes, h, w): the K perturbed copies
    are stacked along the batch (copy k holds rows k·B .. (k+1)·B - 1).

    Args:
        in_channels: D, the decoder feature channels (``model.feature_channels``).
        num_classes: K classes of the pixel classifier.
        draws: perturbed copies per type (K = 4 in CCT/CRCFP).
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
        self.heads = nn.ModuleDict({t: nn.Conv2d(in_channels, num_classes, kernel_size=1) for t in types})

    def forward(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        stacked = z.repeat(self.draws, 1, 1, 1)
        return {t: self.heads[t](fn(stacked, **self.options[t])) for t, fn in self.fns.items()}
