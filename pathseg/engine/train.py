"""The training loop (Lightning), evaluation, and what they write.

``train(cfg)`` writes into ``cfg.trainer.out``:
    config.yaml            the resolved configuration
    checkpoints/last.ckpt  Lightning checkpoint (resume: run the same command again)
    checkpoints/best.ckpt  with ``trainer.best_metric``: the Lightning checkpoint of the best validation so far
    model.ckpt             the model for `pathseg predict` / `evaluate`: the weights at the end of training, or
                           with ``trainer.best_metric`` those of best.ckpt; its ``pathseg`` entry then records
                           the choice under ``selection`` ({metric, mode, value, step, epoch})
    metrics.csv, metrics.json  one row per validation ("epoch" = trainer.val_every steps)

Best-checkpoint selection (``trainer.best_metric: val/mIoU``, ``trainer.best_mode: max``) works for every
method: it monitors a metric the method logs at validation (``val/mIoU``, ``val/Dice``, ``val/IoU/<class>``,
a method's own such as ``val/cls_accuracy``) with Lightning's ModelCheckpoint. A name that is not logged
stops the run at the first validation with the list of logged names. Only validations during training
compete: when a run ends between two validations, its last steps are not kept, and when none ran during
training (``max_steps < val_every``), model.ckpt holds the final weights and a warning says so.

Data-parallel training (``trainer.devices``, ``trainer.num_nodes``, ``trainer.strategy=ddp``) is
Lightning's; what the methods' own state needs is in :mod:`pathseg.engine.distributed`. Every file
above is written by global rank 0 only, and a run resumes on any number of devices.
"""

from __future__ import annotations

import csv
import io
import os
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml

from pathseg.engine.checkpoint import load_model, save_model_checkpoint
from pathseg.engine.config import Config
from pathseg.engine.data import build_dataset, build_train_loaders, build_val_loader
from pathseg.engine.distributed import AllReduceBatchNormSync
from pathseg.io.files import write_json, write_text
from pathseg.metrics import SegmentationMetrics
from pathseg.methods import METHODS, Method
from pathseg.methods.base import predict_logits
from pathseg.models import create_model


def set_threads(threads: int | None) -> None:
    torch.set_num_threads(threads or os.cpu_count() or 1)


class MetricsWriter(L.Callback):
    """Writes per-validation metrics as CSV and JSON (atomically) after every validation."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_validation_end(self, trainer: L.Trainer, pl_module: Method) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not pl_module.history:
            return
        rows = pl_module.history
        write_json(self.out / "metrics.json", rows)
        keys = list(rows[0])
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        write_text(self.out / "metrics.csv", buf.getvalue())

    def state_dict(self) -> dict[str, Any]:
        return {}


BEST_MODES = ("max", "min")


class BestCheckpoint(L.pytorch.callbacks.ModelCheckpoint):
    """Lightning's ModelCheckpoint keeping ``best.ckpt`` by ``metric`` (``mode`` max or min), overwriting it.

    At every validation it first checks that ``metric`` is logged, and raises :class:`ConfigError` with a
    "did you mean" and the list of logged metrics if not.
    """

    def __init__(self, dirpath: Path, metric: str, mode: str) -> None:
        from pathseg.errors import ConfigError

        if mode not in BEST_MODES:
            raise ConfigError(f"trainer.best_mode: {mode!r} is not one of {', '.join(BEST_MODES)}")
        if not isinstance(metric, str) or not metric:
            raise ConfigError(f"trainer.best_metric: expected a logged metric name such as val/mIoU, got {metric!r}")
        super().__init__(dirpath=dirpath, filename="best", monitor=metric, mode=mode, save_top_k=1,
                         save_last=False, save_on_train_epoch_end=False, auto_insert_metric_name=False,
                         enable_version_counter=False)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and self.monitor not in trainer.callback_metrics:
            from pathseg.errors import ConfigError
            from pathseg.registry import did_you_mean

            logged = sorted(trainer.callback_metrics, key=lambda k: (not k.startswith("val/"), k))
            hint = did_you_mean(self.monitor, logged)
            raise ConfigError(f"trainer.best_metric: {self.monitor!r} is not a metric this run logs.{hint} "
                              f"Logged metrics: {', '.join(logged) or '(none)'}")
        super().on_validation_end(trainer, pl_module)


def best_selection(cb: BestCheckpoint) -> dict[str, Any] | None:
    """What ``best.ckpt`` holds, read from the file itself: {metric, mode, value, step, epoch, checkpoint}.

    None when no validation during training saved one.
    """
    path = Path(cb.best_model_path) if cb.best_model_path else None
    if path is None or not path.is_file():
        return None
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    state = next((v for k, v in ckpt.get("callbacks", {}).items() if k == cb.state_key), {})
    score = state.get("best_model_score", cb.best_model_score)
    return {"metric": cb.monitor, "mode": cb.mode, "value": None if score is None else float(score),
            "step": int(ckpt["global_step"]), "epoch": int(ckpt["epoch"]), "checkpoint": str(path),
            "state_dict": ckpt["state_dict"]}


def build_method(cfg: Config, class_names: list[str], mpp: float | None,
                 stain: dict[str, Any] | None = None) -> Method:
    method_cls = METHODS.get(cfg.method.name)
    model = create_model(cfg.model.name, encoder=cfg.model.encoder, num_classes=len(class_names),
                         weights=cfg.model.weights, **cfg.model.options)
    return method_cls(
        model,
        class_names=class_names,
        optim={k: v for k, v in vars(cfg.optim).items()},
        max_steps=cfg.trainer.max_steps,
        mpp=mpp,
        stain=stain,
        channels_last=cfg.trainer.channels_last,
        **cfg.method.params,
    )


def quiet_lightning() -> None:
    """Keep Lightning's start-up banners (GPU available, tips) out of the user's terminal."""
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*is smaller than the logging interval.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")


def prepare_run(cfg: Config) -> Path:
    """What every run does first: quiet logs, threads, seed, the output folder and its resolved config.yaml."""
    from lightning.pytorch.utilities import rank_zero_only

    quiet_lightning()
    set_threads(cfg.trainer.threads)
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    out = Path(cfg.trainer.out)
    out.mkdir(parents=True, exist_ok=True)
    if rank_zero_only.rank == 0:
        write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return out


def trainer_options(cfg: Config, method_cls: type[Method], out: Path) -> dict[str, Any]:
    """The ``L.Trainer`` arguments every run shares: devices, nodes, strategy, batch-norm sync, logging.

    Batch norm is synchronised across processes when ``trainer.sync_batchnorm`` says so, or by default
    when the method needs it (``Method.sync_batchnorm``): PyTorch's SyncBatchNorm on GPUs,
    :class:`~pathseg.engine.distributed.AllReduceBatchNorm` on CPU processes.
    """
    t = cfg.trainer
    sync = method_cls.sync_batchnorm if t.sync_batchnorm is None else bool(t.sync_batchnorm)
    opts: dict[str, Any] = dict(
        max_steps=t.max_steps, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=t.strategy, precision=t.precision, num_sanity_val_steps=0, log_every_n_steps=t.log_every,
        logger=L.pytorch.loggers.CSVLogger(str(out), name="logs", version=""), enable_progress_bar=t.progress,
        enable_model_summary=False, default_root_dir=str(out),
    )
    if t.strategy == "ddp" and method_cls.ddp_find_unused_parameters:
        opts["strategy"] = "ddp_find_unused_parameters_true"
    on_gpu = t.accelerator in ("gpu", "cuda") or (t.accelerator == "auto" and torch.cuda.is_available())
    if sync and on_gpu:
        opts["sync_batchnorm"] = True
    elif sync:
        opts["plugins"] = [AllReduceBatchNormSync()]
    return opts


class TrainData(L.LightningDataModule):
    """The run's loaders, built in each process once Lightning knows its rank and the world size."""

    def __init__(self, cfg: Config, with_unlabeled: bool, val_ds) -> None:
        super().__init__()
        self.cfg, self.with_unlabeled, self.val_ds = cfg, with_unlabeled, val_ds

    def train_dataloader(self) -> Any:
        return build_train_loaders(self.cfg, with_unlabeled=self.with_unlabeled, rank=self.trainer.global_rank,
                                   world_size=self.trainer.world_size)

    def val_dataloader(self) -> Any:
        return build_val_loader(self.cfg, rank=self.trainer.global_rank, world_size=self.trainer.world_size,
                                dataset=self.val_ds)[0]


def train(cfg: Config) -> dict[str, Any]:
    """Train as configured; returns {"out", "checkpoint", "metrics", "selection", "seconds", "rank", "world_size"}.

    ``metrics``: the last validation, or with ``trainer.best_metric`` the validation of the chosen weights
    (only ``{"step"}`` when a resumed run did not log it again); ``selection``: what model.ckpt records
    under ``selection``, or None without ``trainer.best_metric``.
    """
    out = prepare_run(cfg)

    method_cls = METHODS.get(cfg.method.name)
    val_ds = build_dataset(cfg, cfg.data.val_split)
    mpp, stain = _dataset_mpp(val_ds), _dataset_stain(val_ds)
    method = build_method(cfg, val_ds.class_names, mpp, stain)
    data = TrainData(cfg, method_cls.needs_unlabeled, val_ds)

    ckpt_dir = out / "checkpoints"
    callbacks: list[L.Callback] = [
        L.pytorch.callbacks.ModelCheckpoint(dirpath=ckpt_dir, filename="step{step}", save_last=True,
                                            every_n_train_steps=cfg.trainer.val_every, save_top_k=1,
                                            monitor=None, auto_insert_metric_name=False),
        MetricsWriter(out),
    ]
    best_cb = None
    if cfg.trainer.best_metric is not None:
        best_cb = BestCheckpoint(ckpt_dir, cfg.trainer.best_metric, cfg.trainer.best_mode)
        callbacks.append(best_cb)
    if cfg.trainer.progress:
        callbacks.append(L.pytorch.callbacks.TQDMProgressBar(refresh_rate=max(1, cfg.trainer.log_every)))
    trainer = L.Trainer(**trainer_options(cfg, method_cls, out), check_val_every_n_epoch=1, callbacks=callbacks,
                        deterministic=False, use_distributed_sampler=False)
    resume = ckpt_dir / "last.ckpt"
    ckpt_path = str(resume) if cfg.trainer.resume and resume.exists() else None
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*exists and is not empty.*")
        trainer.fit(method, datamodule=data, ckpt_path=ckpt_path)
        if not method.history:  # resumed a finished run: nothing was validated in this call
            trainer.validate(method, datamodule=data, verbose=False)
    seconds = time.time() - t0
    final = out / "model.ckpt"
    selection = best_selection(best_cb) if best_cb is not None else None
    extra: dict[str, Any] = {}
    if selection is not None:
        state = selection.pop("state_dict")
        method.model.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
        extra["selection"] = selection
    elif best_cb is not None:
        warnings.warn(f"trainer.best_metric: no validation during training saved {ckpt_dir / 'best.ckpt'}; "
                      "model.ckpt holds the weights at the end of training", stacklevel=2)
    if trainer.is_global_zero:
        save_model_checkpoint(final, method.model, val_ds.class_names, mpp=mpp, stain=stain,
                              config=cfg.to_dict(), **extra)
    last = method.history[-1] if method.history else {}
    if selection is not None:  # the validation of the weights in model.ckpt, when this run logged it
        last = next((r for r in method.history if r["step"] == selection["step"]), {"step": selection["step"]})
    return {"out": str(out), "checkpoint": str(final), "metrics": last, "selection": selection,
            "seconds": seconds, "rank": trainer.global_rank, "world_size": trainer.world_size}


def evaluate(checkpoint: str | Path, cfg: Config, split: str | None = None) -> dict[str, Any]:
    """Score a checkpoint on a dataset split: every metric from one confusion matrix."""
    set_threads(cfg.trainer.threads)
    model, info = load_model(checkpoint)
    model.to(memory_format=torch.channels_last)
    ds = build_dataset(cfg, split or cfg.data.val_split)
    if ds.class_names != info["class_names"]:
        from pathseg.errors import ConfigError

        raise ConfigError(
            f"{checkpoint}: the model predicts classes {info['class_names']} but dataset {cfg.data.dataset!r} "
            f"has {ds.class_names}; evaluate on a dataset with the same class map"
        )
    metrics = SegmentationMetrics(len(ds.class_names), class_names=ds.class_names)
    loader, _ = build_val_loader(cfg, split)
    with torch.inference_mode():
        for batch in loader:
            pred = predict_logits(model, batch["image"]).argmax(1)
            metrics.update(batch["mask"], pred)
    return metrics.compute()


def _dataset_mpp(ds) -> float | None:
    try:
        return ds[0]["meta"].get("mpp")
    except Exception:
        return None


def _dataset_stain(ds) -> dict[str, Any] | None:
    """The state of the stain normaliser the dataset applies to every image (None: none), for prediction."""
    norm = getattr(ds, "stain_normalizer", None)
    return None if norm is None else norm.state()
