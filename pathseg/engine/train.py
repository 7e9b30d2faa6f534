"""The training loop (Lightning), evaluation, and what they write.

``train(cfg)`` writes into ``cfg.trainer.out``:
    config.yaml            the resolved configuration
    checkpoints/last.ckpt  Lightning checkpoint (resume: run the same command again)
    model.ckpt             the final model for `pathseg predict` / `evaluate`
    metrics.csv, metrics.json  one row per validation ("epoch" = trainer.val_every steps)
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
from pathseg.engine.data import build_train_loaders, build_val_loader, build_dataset
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


def build_method(cfg: Config, class_names: list[str], mpp: float | None) -> Method:
    method_cls = METHODS.get(cfg.method.name)
    model = create_model(cfg.model.name, encoder=cfg.model.encoder, num_classes=len(class_names),
                         weights=cfg.model.weights, **cfg.model.options)
    model.build_options = dict(cfg.model.options)  # saved in checkpoints so load_model rebuilds the same shape
    return method_cls(
        model,
        class_names=class_names,
        optim={k: v for k, v in vars(cfg.optim).items()},
        max_steps=cfg.trainer.max_steps,
        mpp=mpp,
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
    quiet_lightning()
    set_threads(cfg.trainer.threads)
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    out = Path(cfg.trainer.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return out


def train(cfg: Config) -> dict[str, Any]:
    """Train as configured; returns {"out", "checkpoint", "metrics" (last validation), "seconds"}."""
    out = prepare_run(cfg)

    method_cls = METHODS.get(cfg.method.name)
    train_loader = build_train_loaders(cfg, with_unlabeled=method_cls.needs_unlabeled)
    val_loader, val_ds = build_val_loader(cfg)
    mpp = _dataset_mpp(val_ds)
    method = build_method(cfg, val_ds.class_names, mpp)

    ckpt_dir = out / "checkpoints"
    callbacks: list[L.Callback] = [
        L.pytorch.callbacks.ModelCheckpoint(dirpath=ckpt_dir, filename="step{step}", save_last=True,
                                            every_n_train_steps=cfg.trainer.val_every, save_top_k=1,
                                            monitor=None),
        MetricsWriter(out),
    ]
    if cfg.trainer.progress:
        callbacks.append(L.pytorch.callbacks.TQDMProgressBar(refresh_rate=max(1, cfg.trainer.log_every)))
    trainer = L.Trainer(
        max_steps=cfg.trainer.max_steps,
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        precision=cfg.trainer.precision,
        check_val_every_n_epoch=1,
        num_sanity_val_steps=0,
        log_every_n_steps=cfg.trainer.log_every,
        logger=L.pytorch.loggers.CSVLogger(str(out), name="logs", version=""),
        callbacks=callbacks,
        enable_progress_bar=cfg.trainer.progress,
        enable_model_summary=False,
        default_root_dir=str(out),
        deterministic=False,
    )
    resume = ckpt_dir / "last.ckpt"
    ckpt_path = str(resume) if cfg.trainer.resume and resume.exists() else None
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*exists and is not empty.*")
        trainer.fit(method, train_dataloaders=train_loader, val_dataloaders=val_loader, ckpt_path=ckpt_path)
        if not method.history:  # resumed a finished run: nothing was validated in this call
            trainer.validate(method, dataloaders=val_loader, verbose=False)
    seconds = time.time() - t0
    final = save_model_checkpoint(out / "model.ckpt", method.model, val_ds.class_names, mpp=mpp,
                                  config=cfg.to_dict())
    last = method.history[-1] if method.history else {}
    return {"out": str(out), "checkpoint": str(final), "metrics": last, "seconds": seconds}


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
