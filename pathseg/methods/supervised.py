"""Supervised baseline: L = L_sup (pixel cross-entropy on labelled images only), optionally + λ_Dice · L_Dice.

    L = CE(logits, mask) + dice_weight · (1 − mean_k Dice_k)

with the soft Dice of :func:`pathseg.losses.dice.dice_loss` (``dice_classes``: "foreground" averages over
classes 1..K−1, "all" over every class). ``dice_weight=0`` (the default) is plain cross-entropy.
"""

from __future__ import annotations

from typing import Any

import torch

from pathseg.errors import ConfigError
from pathseg.losses.dice import dice_loss
from pathseg.methods.base import METHODS, Method


@METHODS.register("supervised")
class Supervised(Method):
    ddp_find_unused_parameters = False  # every step uses the whole model

    def __init__(self, model, *, dice_weight: float = 0.0, dice_classes: str = "foreground", **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        if dice_weight < 0 or dice_classes not in ("foreground", "all"):
            raise ConfigError(f"method.params: dice_weight must be >= 0 and dice_classes 'foreground' or 'all', got "
                              f"{dice_weight!r}, {dice_classes!r}")
        self.dice_weight, self.dice_classes = float(dice_weight), dice_classes

    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits = self(batch["image"])
        sup = self.supervised_loss(logits, batch["mask"])
        out = {"loss/sup": sup}
        loss = sup
        if self.dice_weight:
            dice = dice_loss(logits, batch["mask"], classes=self.dice_classes, ignore_index=self.ignore_index)
            out["loss/dice"] = dice
            loss = sup + self.dice_weight * dice
        return {"loss": loss, **out}
