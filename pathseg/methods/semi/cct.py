"""CCT: cross-consistency training (Ouali et al. 2020), the L_cross term of CRCFP.

    L = L_sup + weight_cross · L_cross

L_cross (CRCFP eq. 9): the semantic feature s of the unlabelled image (``SegModel.decode_with_semantic``,
on the unsupervised grid ``grid_stride``, see :mod:`.base`) is perturbed by each perturbation type
(feature noise, feature dropout, spatial dropout; :mod:`pathseg.models.perturb`); each type has K =
``draws`` independent auxiliary 1x1 classifiers (12 with the defaults), head k reading its own perturbed
copy, and each auxiliary prediction is pulled towards the main prediction (detached, pooled to the same grid) by
the MSE of class probabilities (:func:`pathseg.losses.consistency.softmax_mse`), averaged over the
perturbation types and their K heads.

Weight: CCT's paper uses 30 with a sigmoid ramp-up on the same mean-reduced MSE; pathseg's CCT default is
a constant 1.0 after ``warmup_steps``, CRCFP uses the 0.01 of Bashir et al.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pathseg.losses.consistency import softmax_mse
from pathseg.methods.base import METHODS
from pathseg.methods.semi.base import SemiMethod
from pathseg.models.perturb import AuxiliaryHeads


class CrossConsistency(nn.Module):
    """The L_cross term: perturb s, classify with the auxiliary heads, MSE to the main probabilities.

    Shape: ``forward(s (B, D, h, w), main_logits (B, K, h, w))`` -> scalar; both on the same grid.
    """

    def __init__(self, in_channels: int, num_classes: int, *, draws: int = 4, noise_radius: float = 0.3,
                 drop_gamma: tuple[float, float] = (0.75, 0.9), spatial_drop: float = 0.5) -> None:
        super().__init__()
        self.aux = AuxiliaryHeads(
            in_channels, num_classes, draws=draws,
            options={"noise": {"radius": noise_radius}, "feature_drop": {"gamma": tuple(drop_gamma)},
                     "spatial_drop": {"p": spatial_drop}},
        )

    def forward(self, s: torch.Tensor, main_logits: torch.Tensor) -> torch.Tensor:
        outs = self.aux(s)  # {type: (K·B, classes, h, w)}; the mean over a type's rows is the mean over its K heads
        return torch.stack([softmax_mse(o, main_logits) for o in outs.values()]).mean()


@METHODS.register("cct")
class CCT(SemiMethod):
    """Cross-consistency training: L = L_sup + weight_cross · L_cross.

    Parameters (``method.params``): ``weight_cross`` (1.0), ``draws`` K auxiliary heads per perturbation
    type (4), ``noise_radius`` (0.3), ``drop_gamma`` range of γ, the feature-dropout threshold as a
    fraction of the maximum ([0.75, 0.9]), ``spatial_drop`` δ (0.5), and the shared ``grid_stride``,
    ``warmup_steps``, ``joint_forward`` and ``view_transforms`` of :class:`SemiMethod`.
    """

    def __init__(
        self,
        model,
        *,
        weight_cross: float = 1.0,
        draws: int = 4,
        noise_radius: float = 0.3,
        drop_gamma: tuple[float, float] | list[float] = (0.75, 0.9),
        spatial_drop: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.weight_cross = float(weight_cross)
        if self.weight_cross > 0:
            self.cross = CrossConsistency(self.semantic_channels, model.num_classes, draws=draws,
                                          noise_radius=noise_radius, drop_gamma=tuple(drop_gamma),
                                          spatial_drop=spatial_drop)
