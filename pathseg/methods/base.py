"""The one training step every method extends.

:class:`Method` owns the model, the optimiser, the poly learning-rate schedule, validation metrics and
logging. A method only says what its loss terms are, by implementing :meth:`Method.training_losses`,
which returns a dict such as ``{"loss": total, "loss/sup": ..., "loss/cont": ...}``; the loop logs
whatever it gets.

Batches: a supervised method receives ``{"image": (B,3,H,W) float, "mask": (B,H,W) int64, ...}``.
A method with ``needs_unlabeled = True`` receives ``{"labeled": <that>, "unlabeled": {"image": ...}}``.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from pathseg.metrics import SegmentationMetrics
from pathseg.models import SegModel
from pathseg.models.checkpoint import model_info
from pathseg.models.predict import predict_logits  # noqa: F401  (re-exported: methods validate with it)
from pathseg.registry import Registry
from pathseg.sample import IGNORE_INDEX

METHODS: Registry = Registry("method")


class Method(L.LightningModule):
    needs_unlabeled: bool = False
    # synchronise batch-norm statistics across data-parallel processes unless trainer.sync_batchnorm says otherwise
    sync_batchnorm: bool = False
    # parameters a step may leave unused (heads off during a warm-up, one batch kind per step): DDP must look
    # for them; a method whose every step uses every parameter sets False and saves that graph walk
    ddp_find_unused_parameters: bool = True

    def __init__(
        self,
        model: SegModel,
        *,
        class_names: list[str],
        optim: dict[str, Any] | None = None,
        max_steps: int = 1000,
        mpp: float | None = None,
        stain: dict[str, Any] | None = None,
        channels_last: bool = True,
        ignore_index: int = IGNORE_INDEX,
        **params: Any,
    ) -> None:
        super().__init__()
        self.model = model
        self.class_names = list(class_names)
        self.optim = {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4, "poly_power": 0.9, **(optim or {})}
        self.max_steps = max_steps
        self.mpp = mpp
        self.use_channels_last = channels_last
        self.ignore_index = ignore_index
        if params:
            from pathseg.errors import ConfigError
            from pathseg.registry import did_you_mean

            key = next(iter(params))
            raise ConfigError(
                f"method {type(self).__name__}: unknown parameter {key!r}.{did_you_mean(key, self.param_names())} "
                f"Valid parameters: {', '.join(self.param_names()) or '(none)'}"
            )
        self.val_metrics = SegmentationMetrics(model.num_classes, class_names=self.class_names, ignore_index=ignore_index)
        self.history: list[dict[str, Any]] = []
        self.save_hyperparameters({"pathseg": model_info(model, self.class_names, mpp=mpp, stain=stain)},
                                  logger=False)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    # -- what a method provides -------------------------------------------------------------------
    @classmethod
    def param_names(cls) -> list[str]:
        """The method's own constructor parameters (for config errors)."""
        import inspect

        names: list[str] = []
        for klass in cls.__mro__:
            if klass in (Method, L.LightningModule) or "__init__" not in vars(klass):
                continue
            sig = inspect.signature(klass.__init__)
            names += [p.name for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY]
        return sorted(set(names) - {"class_names", "optim", "max_steps", "mpp", "stain", "channels_last",
                                        "ignore_index"})

    def training_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # -- shared pieces ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self._fmt(x))

    def _fmt(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.use_channels_last else x

    def supervised_loss(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """L_sup: pixel-wise cross-entropy, ignoring unlabelled pixels.

        Shape: logits (B, K, H, W); mask (B, H, W) int64 with ``ignore_index`` for unlabelled pixels.
        """
        return F.cross_entropy(logits, mask, ignore_index=self.ignore_index)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self.training_losses(batch)
        bs = _batch_size(batch)
        logged = {f"train/{k}": v.detach() for k, v in losses.items() if torch.is_tensor(v)}
        # sync_dist: under DDP the logged curve is the mean over ranks, i.e. the loss of the global batch
        self.log_dict(logged, on_step=True, on_epoch=False, batch_size=bs, sync_dist=True)
        self.log("loss", losses["loss"].detach(), prog_bar=True, on_step=True, on_epoch=False, logger=False,
                 batch_size=bs, sync_dist=True)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=False, on_step=True, batch_size=bs)
        return losses["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = predict_logits(self.model, batch["image"], channels_last=self.use_channels_last)
        self.val_metrics.update(batch["mask"], logits.argmax(1), batch.get("valid"))

    def on_validation_epoch_start(self) -> None:
        self.val_metrics.reset()

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        from pathseg.collectives import all_reduce_sum

        self.val_metrics.cm = all_reduce_sum(self.val_metrics.cm)  # one confusion matrix over every rank's shard
        res = self.val_metrics.compute()
        scalar = {f"val/{k}": float(v) for k, v in res.items() if isinstance(v, float) and k not in ("pixels", "mIoU")}
        self.log_dict(scalar, prog_bar=False)
        self.log("val/mIoU", float(res["mIoU"]), prog_bar=True)
        self.history.append({"step": int(self.global_step), "epoch": int(self.current_epoch), **res})

    def configure_optimizers(self):
        o = self.optim
        params: list = [p for p in self.parameters() if p.requires_grad]
        flat = params
        if o.get("layer_decay"):  # layer-wise lr decay over every ViT inside (heads and decoders at lr)
            from pathseg.models.vit import param_groups_lld

            params = param_groups_lld(self, o["lr"], float(o["layer_decay"]), weight_decay=o["weight_decay"])
            flat = [p for g in params for p in g["params"]]
        name = o["name"].lower()
        if name == "sgd":  # not fused: torch's fused SGD fails once a parameter gets its first gradient late
            opt = torch.optim.SGD(params, lr=o["lr"], momentum=o["momentum"], weight_decay=o["weight_decay"])
        elif name in ("adam", "adamw"):
            # fused: one kernel per step instead of ~10 per tensor, the same update; measured 4x faster over
            # a U-Net/ResNet-18 on this CPU (0.24 -> 0.06 s a step)
            cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
            opt = cls(params, lr=o["lr"], weight_decay=o["weight_decay"], fused=fused_capable(flat))
        else:
            from pathseg.errors import ConfigError

            raise ConfigError(f"optim.name: unknown optimiser {o['name']!r}; valid: sgd, adam, adamw")
        total, power = max(1, self.max_steps), o["poly_power"]
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: max(0.0, 1.0 - min(t, total) / total) ** power)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def fused_capable(params: list[torch.Tensor]) -> bool | None:
    """True when torch's fused optimiser kernels can take ``params`` (floating point, on CPU or CUDA)."""
    ok = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return True if ok else None


def _batch_size(batch: dict[str, Any]) -> int:
    b = batch.get("labeled", batch)
    return int(b["image"].shape[0])
