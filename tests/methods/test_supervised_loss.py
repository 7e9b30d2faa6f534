"""The supervised method's loss: cross-entropy, plus the soft Dice term when dice_weight > 0, written out here."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pathseg.errors import ConfigError
from pathseg.methods import METHODS
from pathseg.models import create_model
from pathseg.sample import IGNORE_INDEX

torch.set_num_threads(1)


def _method(**params):
    torch.manual_seed(0)
    model = create_model("unet", encoder="resnet18", num_classes=2)
    return METHODS.get("supervised")(model, class_names=["background", "nucleus"], channels_last=False, **params)


def test_ce_plus_dice_is_the_sum_written_out():
    torch.manual_seed(1)
    batch = {"image": torch.randn(2, 3, 64, 64), "mask": torch.randint(0, 2, (2, 64, 64))}
    batch["mask"][0, :8] = IGNORE_INDEX
    plain, both = _method(), _method(dice_weight=0.5)
    logits = plain(batch["image"])
    keep = batch["mask"] != IGNORE_INDEX
    ce = F.cross_entropy(logits, batch["mask"], ignore_index=IGNORE_INDEX)
    p = logits.softmax(1)[:, 1][keep]  # the nucleus probability on the scored pixels
    g = (batch["mask"][keep] == 1).float()
    dice = 1 - (2 * (p * g).sum() + 1) / (p.sum() + g.sum() + 1)  # smooth 1, foreground class only
    out_plain, out_both = plain.training_losses(batch), both.training_losses(batch)
    assert torch.allclose(out_plain["loss"], ce, atol=1e-6) and "loss/dice" not in out_plain
    assert torch.allclose(out_both["loss/dice"], dice, atol=1e-5)
    assert torch.allclose(out_both["loss"], ce + 0.5 * dice, atol=1e-5)
    with pytest.raises(ConfigError, match="dice_weight"):
        _method(dice_weight=-1)
