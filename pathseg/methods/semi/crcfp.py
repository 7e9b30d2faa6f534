"""CRCFP (Bashir et al.): CAC + CCT + entropy minimisation, with the paper's weights.

    L = 1 · L_sup + 0.1 · L_cont + 0.01 · L_cross + 0.01 · L_ent

The class is the two methods it is built from plus one term: L_cont comes from :class:`CAC`, L_cross
from :class:`CCT`, L_ent = mean pixel entropy of the main prediction on the unlabelled image
(:func:`pathseg.losses.consistency.entropy_loss`); :class:`SemiMethod` sums them. The paper's ablation
schemes are configurations (``method.params``):

    Sup only            weight_cont=0   weight_ent=0    weight_cross=0
    + cont              weight_cont=0.1 weight_ent=0    weight_cross=0
    + cont + ent        weight_cont=0.1 weight_ent=0.01 weight_cross=0
    + cont + ent + cross (CRCFP, the defaults)

CRCFP trains with L_sup only for its first 5 epochs: set ``warmup_steps = 5 * trainer.val_every``.
"""

from __future__ import annotations

from typing import Any

from pathseg.methods.base import METHODS
from pathseg.methods.semi.cac import CAC
from pathseg.methods.semi.cct import CCT


@METHODS.register("crcfp")
class CRCFP(CAC, CCT):
    """CAC's L_cont + CCT's L_cross + entropy; every parameter of :class:`CAC` and :class:`CCT` applies."""

    def __init__(self, model, *, weight_cont: float = 0.1, weight_cross: float = 0.01, weight_ent: float = 0.01,
                 **kwargs: Any) -> None:
        super().__init__(model, weight_cont=weight_cont, weight_cross=weight_cross, **kwargs)
        self.weight_ent = float(weight_ent)

