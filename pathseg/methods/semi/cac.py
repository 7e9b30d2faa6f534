"""CAC: directional context-aware consistency (Lai et al. 2021), the L_cont term of CRCFP.

    L = L_sup + weight_cont · L_cont

L_cont (see :mod:`pathseg.losses.contrastive` for eqs. 3-8): two overlapping crops of each unlabelled
image, with an IoU drawn from ``overlap`` ([0.1, 1.0], :mod:`pathseg.methods.semi.overlap`), are resized
to the training input size and augmented independently (their own horizontal flip with probability
``crop_flip`` and their own photometric draw, :mod:`pathseg.methods.semi.views`), then encoded, each in
its own forward pass. A per-pixel projector (FC 128 -> ReLU -> FC 128) maps each crop's semantic feature
on the contrastive grid to φ_1, φ_2; a flipped crop's maps are flipped back, and on the overlap each less
confident feature is pulled towards the more confident one at the same image location (confidence > λ),
against negatives whose pseudo-label differs from the anchor's, drawn from the other crop and from a
first-in-first-out memory bank (``crop_negatives`` + ``bank_size`` ≈ 1200 negatives).

The contrastive grid is the semantic feature pooled to stride ``grid_stride`` (see :mod:`.base`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pathseg.losses.contrastive import MemoryBank, Projector, directional_contrastive_loss
from pathseg.methods.base import METHODS
from pathseg.methods.semi.base import SemiMethod
from pathseg.methods.semi.overlap import CropPair, crop_pairs, gather_overlap, sample_crop_pairs, unflip
from pathseg.methods.semi.views import DEFAULT_VIEW_TRANSFORMS, ViewAugment


@dataclass
class CropViews:
    """The two augmented crops of an unlabelled batch, their geometry and which images were flipped."""

    x1: torch.Tensor
    x2: torch.Tensor
    pairs: list[CropPair]
    flip1: list[bool]
    flip2: list[bool]


class ContextAwareConsistency(nn.Module):
    """The L_cont term: crop geometry and augmentation, projector, memory bank and the two-way loss.

    ``views(x_u, out_hw, grid_stride)`` draws and augments the crop pairs; ``forward(s1, s2, logits1,
    logits2, crops)`` returns ``(L_cont, stats)`` from the two crops' semantic features and main logits.
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
        crop_flip: float = 0.5,
        view_transforms: tuple[dict, ...] | list[dict] = DEFAULT_VIEW_TRANSFORMS,
    ) -> None:
        super().__init__()
        self.augment = ViewAugment(view_transforms, flip=crop_flip)
        self.projector = Projector(in_channels, projector_dim)
        self.bank = MemoryBank(projector_dim, bank_size)
        self.temperature, self.confidence = float(temperature), float(confidence)
        self.overlap, self.crop_fraction = (float(overlap[0]), float(overlap[1])), float(crop_fraction)
        self.crop_negatives, self.max_anchors = int(crop_negatives), max_anchors

    def views(self, x_u: torch.Tensor, out_hw: tuple[int, int], grid_stride: int) -> CropViews:
        """Two overlapping crops of every unlabelled image, resized to ``out_hw`` and augmented each on its
        own; overlaps on a grid of ``grid_stride`` input pixels per cell.

        Shape: x_u (B, 3, H, W) -> x1, x2 (B, 3, *out_hw), B crop pairs and 2 x B flip flags.
        """
        grid = (out_hw[0] // grid_stride, out_hw[1] // grid_stride)
        pairs = sample_crop_pairs(x_u.shape[0], tuple(x_u.shape[-2:]), grid,
                                  crop_fraction=self.crop_fraction, overlap=self.overlap)
        x1, x2 = crop_pairs(x_u, pairs, out_hw)
        (x1, flip1), (x2, flip2) = self.augment(x1), self.augment(x2)  # independent draws per crop
        return CropViews(x1, x2, pairs, flip1, flip2)

    def forward(
        self,
        s1: torch.Tensor,
        s2: torch.Tensor,
        logits1: torch.Tensor,
        logits2: torch.Tensor,
        crops: CropViews,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """L_cont = l_dc(φ_1 -> φ_2) + l_dc(φ_2 -> φ_1) on the overlap (eq. 8).

        Shape: s1, s2 (B, D, h, w) semantic features and logits1, logits2 (B, K, h, w) main predictions of
        the two (augmented) crops, on the crops' grid.
        """
        pairs = crops.pairs
        with torch.no_grad():
            conf1, lab1 = logits1.detach().softmax(1).max(1)  # confidence and pseudo-label, (B, h, w)
            conf2, lab2 = logits2.detach().softmax(1).max(1)
        phi1, phi2 = self.projector(s1), self.projector(s2)
        # back to crop coordinates (a flipped crop's maps are flipped back), then the aligned overlap rows
        a1, a2 = gather_overlap(unflip(phi1, crops.flip1), unflip(phi2, crops.flip2), pairs)
        c1, c2 = gather_overlap(unflip(conf1[:, None], crops.flip1), unflip(conf2[:, None], crops.flip2), pairs)
        y1, y2 = gather_overlap(unflip(lab1[:, None], crops.flip1), unflip(lab2[:, None], crops.flip2), pairs)
        c1, c2, y1, y2 = c1[:, 0], c2[:, 0], y1[:, 0], y2[:, 0]

        n1, m1 = self._sample(phi1, lab1)  # current negatives from each crop
        n2, m2 = self._sample(phi2, lab2)
        bank_f, bank_y = self.bank.contents()
        kw = {"temperature": self.temperature, "threshold": self.confidence, "max_anchors": self.max_anchors}
        # anchor crop 1 (its pseudo-labels y1 filter the negatives, eq. 5), then anchor crop 2
        l12 = directional_contrastive_loss(a1, a2, c1, c2, y1, torch.cat([n2, bank_f]), torch.cat([m2, bank_y]), **kw)
        l21 = directional_contrastive_loss(a2, a1, c2, c1, y2, torch.cat([n1, bank_f]), torch.cat([m1, bank_y]), **kw)
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
    (0.75), ``overlap`` range of the IoU of the two crops ([0.1, 1.0]), ``crop_fraction`` crop side / image
    side (0.6), ``crop_flip`` probability of a horizontal flip per crop (0.5, the authors' loaders; 0: none),
    ``bank_size`` (1000) and ``crop_negatives`` (200) negatives, ``projector_dim`` (128), ``max_anchors``
    per direction (4096; null = all), and the shared ``grid_stride``, ``warmup_steps``, ``joint_forward``
    and ``view_transforms`` of :class:`SemiMethod`.
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
        crop_flip: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.weight_cont = float(weight_cont)
        if self.weight_cont > 0:
            self.cont = ContextAwareConsistency(
                self.semantic_channels, projector_dim=projector_dim, temperature=temperature,
                confidence=confidence, overlap=tuple(overlap), crop_fraction=crop_fraction, bank_size=bank_size,
                crop_negatives=crop_negatives, max_anchors=max_anchors, crop_flip=crop_flip,
                view_transforms=self.view_transforms,
            )
