"""Supervised baseline: L = L_sup (pixel cross-entropy on labelled images only)."""

from __future__ import annotations

from typing import Any

import torch

from pathseg.methods.base import METHODS, Method


@METHODS.register("supervised")
class Supervised(Method):
    ddp_find_unused_parameters = False  # every step uses the whole model

    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        sup = self.supervised_loss(self(batch["image"]), batch["mask"])
        return {"loss": sup, "loss/sup": sup}
