"""Phase I of Háberová et al.: nuclei segmentation with U-Net / U-Net++ and a Dice loss.

Three pieces, each registered so a YAML config picks them by name (``configs/distill/``):

* method ``nuclei_dice``: ``L = L_dice (+ ce_weight · L_ce)``, with dropout (p = ``dropout``, 0.3 as
  published) on the decoder's feature map before the 1x1 classifier during training only;
* models ``unet_tconv`` and ``unetplusplus_tconv`` (:mod:`pathseg.models.tconv`, registered with every model
  family): smp U-Net / U-Net++ whose decoder blocks upsample with a learned 2x2 stride-2 transposed
  convolution instead of nearest interpolation (the published option "upsampling by transposed convolution");
* dataset ``nuclei_patches`` (:mod:`pathseg.data.nuclei_patches`): several nuclei datasets trained together (e.g. MoNuSeg and the
  synthetic set), each image cut into ``patch`` x ``patch`` tiles without overlap, the last row/column
  zero-padded (image 0, mask background; ``pad_mask_ignore`` scores the padding as ignore instead),
  optionally Macenko-normalised to a target image.

Example config (``pathseg train -c configs/distill/nuclei_unet.yaml``)::

    model: {name: unet_tconv}
    method: {name: nuclei_dice, params: {dropout: 0.3}}
    optim: {name: adam, lr: 1.0e-4, weight_decay: 0}
    data: {dataset: nuclei_patches, options: {patch: 512, sources: [{dataset: monuseg}, ...]}}
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from pathseg.data.nuclei_patches import NucleiPatches  # noqa: F401  (the dataset lives in the data layer)
from pathseg.errors import ConfigError
from pathseg.losses.dice import dice_loss
from pathseg.methods.base import METHODS, Method


@METHODS.register("nuclei_dice")
class NucleiDice(Method):
    """Dice-loss segmentation (Háberová et al. phase I); logs ``loss/dice`` and, when used, ``loss/ce``."""

    def __init__(self, model, *, dropout: float = 0.3, ce_weight: float = 0.0, smooth: float = 1.0,
                 dice_classes: str = "foreground", **kw: Any) -> None:
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"method nuclei_dice: dropout must be in [0, 1), got {dropout}")
        super().__init__(model, **kw)
        self.dropout, self.ce_weight, self.smooth, self.dice_classes = float(dropout), float(ce_weight), smooth, dice_classes

    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        x = self._fmt(batch["image"])
        z = self.model.decode(self.model.encode(x))
        z = F.dropout2d(z, self.dropout, training=self.training)
        logits = self.model.classify(z)
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        dice = dice_loss(logits, batch["mask"], smooth=self.smooth, classes=self.dice_classes,
                         ignore_index=self.ignore_index)
        out = {"loss/dice": dice}
        total = dice
        if self.ce_weight:
            ce = self.supervised_loss(logits, batch["mask"])
            out["loss/ce"] = ce
            total = total + self.ce_weight * ce
        out["loss"] = total
        return out
