"""The ``hooknet`` training method: fine-tunes a :class:`~pathseg.models.hooknet.HookNet` on target/context pairs.

The network (two encoder-decoders hooked at matching resolution) is a model family,
:mod:`pathseg.models.hooknet`; this module holds only its loss:

    L = CE(logits_t, y_t) + λ_c · CE(logits_c, y_c),     λ_c = ``context_weight`` = 0 by default (as published)

Batches are ``{"image": target, "context": context, "mask": target mask, ["context_mask"], ["context_ratio"]}``
from ``data.context`` (:mod:`pathseg.data.context`).

Example config::

    model: {name: hooknet, encoder: resnet18, options: {ratio: 4}}
    method: {name: hooknet, params: {context_weight: 0.0}}
    data: {context: {ratio: 4}}
"""

from __future__ import annotations

from typing import Any

import torch

from pathseg.errors import ConfigError
from pathseg.methods.base import METHODS, Method
from pathseg.models.hooknet import HookNet


@METHODS.register("hooknet")
class HookNetMethod(Method):
    """Fine-tunes a :class:`HookNet` on ``{"image": target, "context": context, "mask": target mask,
    ["context_mask"]}``; ``context_weight`` λ_c = 0 (as published) counts only the target loss.

    Validation on whole images goes through ``model(image)`` (:meth:`HookNet.segment`); batches that carry
    their own ``context`` are scored on the pair.
    """

    def __init__(self, model: HookNet, *, context_weight: float = 0.0, **kw: Any) -> None:
        if not isinstance(model, HookNet):
            raise ConfigError(f"method hooknet fine-tunes a HookNet; set model.name=hooknet "
                              f"(got model {getattr(model, 'name', type(model).__name__)!r})")
        super().__init__(model, **kw)
        self.context_weight = float(context_weight)

    def _check_pairs(self, batch: dict[str, Any]) -> None:
        if "context" not in batch:
            raise ConfigError(f"method hooknet trains on target/context pairs: set data.context={{ratio: "
                              f"{self.model.ratio}}} (the model's ratio, model.options.ratio)")
        got = batch.get("context_ratio")
        if got is not None and int(got.reshape(-1)[0]) != self.model.ratio:
            raise ConfigError(f"data.context.ratio={int(got.reshape(-1)[0])} but the model was built with "
                              f"ratio={self.model.ratio} (model.options.ratio); set both to the same value")

    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        self._check_pairs(batch)
        out = self.model(self._fmt(batch["image"]), self._fmt(batch["context"]))
        lt = self.supervised_loss(out["target"], batch["mask"])
        res = {"loss/target": lt}
        total = lt
        if self.context_weight > 0 and "context_mask" in batch:
            lc = self.supervised_loss(out["context"], batch["context_mask"])
            res["loss/context"] = lc
            total = total + self.context_weight * lc
        return {"loss": total, **res}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if "context" not in batch:  # whole images: tiled by HookNet.segment through model(image)
            return super().validation_step(batch, batch_idx)
        logits = self.model(self._fmt(batch["image"]), self._fmt(batch["context"]))["target"]
        self.val_metrics.update(batch["mask"], logits.argmax(1), batch.get("valid"))
