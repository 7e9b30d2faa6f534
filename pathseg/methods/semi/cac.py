"""CAC: directional context-aware consistency (Lai et al. 2021), the L_cont term of CRCFP.

    L = L_sup + weight_cont · L_cont

L_cont (see :mod:`pathseg.losses.contrastive` for the equations): two overlapping crops of each
unlabelled image (:mod:`pathseg.methods.semi.overlap`) are resized to the training input size and
encoded; a per-pixel projector (FC 128 -> ReLU -> FC 128) gives φ_1, φ_2 on the contrastive grid; on
the overlap, each less confident feature is pulled towards the more confident one at the same image
location (confidence > λ), against negatives with a different pseudo-label drawn from the other crop
and from a first-in-first-out memory bank (``crop_negatives`` + ``bank_size`` ≈ 1200 negatives).

The contrastive grid is the decoder map pooled to stride ``grid_stride`` (see :mod:`.base`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from pathseg.losses.contrastive import MemoryBank, Projector, directional_contrastive_loss
from pathseg.methods.base import METHODS
from pathseg.methods.semi.base import SemiMethod
from pathseg.methods.semi.overlap import CropPair, crop_pairs, gather_overlap, sample_crop_pairs


class ContextAwareConsistency(nn.Module):
    """The L_cont term: crop geometry, projector, memory bank and the two-way directional loss.

    ``views(x_u, out_hw)`` draws the crop pairs; ``forward(z1, z2, pairs, classify)`` returns
    ``(L_cont, stats)`` from the two crops' decoder maps.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        projector_dim: int = 128,
        temperature: float = 0.1,
        confidence: float = 0.75,
        overlap: tuple[float, float] = (0.1, 1.0),
        crop_fraction: float = 0.6,
        bank_size: int = 1000,
        crop_negatives: int = 200,
        max_anchors: int | None = 4096,
    ) -> None:
        super().__init__()
        self.projector = Projector(in_channels, projector_dim)
        self.bank = MemoryBank(projector_dim, bank_size)
        self.temperature, self.confidence = float(temperature), float(confidence)
        self.overlap, self.crop_fraction = (float(overlap[0]), float(overlap[1])), float(crop_fraction)
        self.crop_negatives, self.max_anchors = int(crop_negatives), max_anchors

    def views(
        self, x_u: torch.Tensor, out_hw: tuple[int, int], grid_stride: int
    ) -> tuple[torch.Tensor, torch.Tensor, list[CropPair]]:
        """Two overlapping crops of every unlabelled image, resized to ``out_hw``; overlaps on a grid of
        ``grid_stride`` input pixels per cell.

        Shape: x_u (B, 3, H, W) -> (B, 3, *out_hw) twice, and B crop pairs.
        """
        grid = (out_hw[0] // grid_stride, out_hw[1] // grid_stride)
        pairs = sample_crop_pairs(x_u.shape[0], tuple(x_u.shape[-2:]), grid,
                                  crop_fraction=self.crop_fraction, overlap=self.overlap)
        x1, x2 = crop_pairs(x_u, pairs, out_hw)
        return x1, x2, pairs

    def forward(
        self,
        z1: torch.Tensor,
        z2: torch.Tensor,
        pairs: list[CropPair],
        classify: Callable[[torch.Tensor], torch.Tensor],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_cont = l_dc(φ_1 -> φ_2) + l_dc(φ_2 -> φ_1) on the overlap (eq. 8).

        Shape: z1, z2 (B, D, h, w) decoder maps of the two crops on the pairs' grid; ``classify`` is C_f.
        """
        with torch.no_grad():
            conf1, lab1 = classify(z1).softmax(1).max(1)  # confidence and pseudo-label, (B, h, w)
            conf2, lab2 = classify(z2).softmax(1).max(1)
        phi1, phi2 = self.projector(z1), self.projector(z2)
        a1, a2 = gather_overlap(phi1, phi2, pairs)
        c1, c2 = gather_overlap(conf1[:, None], conf2[:, None], pairs)
        y1, y2 = gather_overlap(lab1[:, None], lab2[:, None], pairs)
        c1, c2, y1, y2 = c1[:, 0], c2[:, 0], y1[:, 0], y2[:, 0]

        n1, m1 = self._sample(phi1, lab1)  # current negatives from each crop
        n2, m2 = self._sample(phi2, lab2)
        bank_f, bank_y = self.bank.contents()
        kw = {"temperature": self.temperature, "threshold": self.confidence, "max_anchors": self.max_anchors}
        l12 = directional_contrastive_loss(a1, a2, c1, c2, y2, torch.cat([n2, bank_f]), torch.cat([m2, bank_y]), **kw)
        l21 = directional_contrastive_loss(a2, a1, c2, c1, y1, torch.cat([n1, bank_f]), torch.cat([m1, bank_y]), **kw)
        self.bank.push(torch.cat([n1, n2]), torch.cat([m1, m2]))
        with torch.no_grad():
            active = (((c1 < c2) & (c2 > self.confidence)) | ((c2 < c1) & (c1 > self.confidence))).float().mean()
            ratio = torch.tensor(a1.shape[0] / (phi1.shape[0] * phi1.shape[-2] * phi1.shape[-1]))
        return l12 + l21, {"cont/active": active, "cont/overlap": ratio}

    def _sample(self, phi: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to ``crop_negatives`` random (normalised, detached) features of one crop and their pseudo-labels."""
        flat = phi.detach().permute(0, 2, 3, 1).reshape(-1, phi.shape[1])
        lab = labels.reshape(-1)
        k = min(self.crop_negatives, flat.shape[0])
        idx = torch.randperm(flat.shape[0], device="cpu")[:k].to(flat.device)
        return F.normalize(flat[idx], dim=1), lab[idx]


@METHODS.register("cac")
class CAC(SemiMethod):
    """Directional context-aware consistency: L = L_sup + weight_cont · L_cont.

    Parameters (``method.params``): ``weight_cont`` (0.1), ``temperature`` τ (0.1), ``confidence`` λ
    (0.75), ``overlap`` range of the crop overlap ratio ([0.1, 1.0]), ``crop_fraction`` crop side / image
    side (0.6), ``bank_size`` (1000) and ``crop_negatives`` (200) negatives, ``projector_dim`` (128),
    ``max_anchors`` per direction (4096; null = all), and the shared ``grid_stride`` (8) and
    ``warmup_steps`` (0) of :class:`SemiMethod`.
    """

    def __init__(
        self,
        model,
        *,
        weight_cont: float = 0.1,
        temperature: float = 0.1,
        confidence: float = 0.75,
        overlap: tuple[float, float] | list[float] = (0.1, 1.0),
        crop_fraction: float = 0.6,
        bank_size: int = 1000,
        crop_negatives: int = 200,
        projector_dim: int = 128,
        max_anchors: int | None = 4096,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.weight_cont = float(weight_cont)
        if self.weight_cont > 0:
            self.cont = ContextAwareConsistency(
                model.feature_channels, projector_dim=projector_dim, temperature=temperature,
                confidence=confidence, overlap=tuple(overlap), crop_fraction=crop_fraction, bank_size=bank_size,
                crop_negatives=crop_negatives, max_anchors=max_anchors,
            )
