"""``pretrain(cfg)``: self-supervised pretraining from a run configuration, then the encoder export.

The configuration is pathseg's ordinary :class:`pathseg.engine.config.Config` (so ``key=value``
overrides work), read this way:

    data.options.sources       slides / images / folders ({path, mpp}) -- see pathseg.methods.ssl.data
    data.options.pair          PairSpec fields: context_size, context_mpp, target_size, target_mpp, per_side,
                               min_tissue (per_side 4 = 16 targets per context at 4:1; 2 = 4 at 2:1)
    data.options.augment       colour transforms (default: SimSiam's); data.options.crop_scale
    data.batch_size, data.workers
    model.encoder              the registered encoder to pretrain (model.weights: optional start point)
    method.name                simsiam | dsf;  method.params: their parameters
    optim.*                    Adam, lr 1e-3 in the paper (poly_power 0 keeps it constant); optim.lr is the
                               rate at 32 pairs a step, run at lr·sqrt(B / 32) for a global batch of B pairs
                               (method.params.lr_scaling=none: as given; see pathseg.methods.ssl.simsiam)
    trainer.max_steps, trainer.seed, trainer.threads, trainer.out
    trainer.val_every          snapshot interval N: at steps N, 2N, ... the encoders are exported to
                               checkpoints/step_<step, 6 digits>/ (for model selection) and
                               checkpoints/last.ckpt is rewritten (to resume)

Writes into ``trainer.out``: config.yaml, logs/metrics.csv (every loss term and the spread of every head's
outputs, see :func:`pathseg.losses.simsiam.output_spread`), checkpoints/last.ckpt (run again to resume),
checkpoints/step_000250/ ... (encoders at each snapshot step), and the final encoder.safetensors and/or
context_encoder.safetensors with encoder.json (see :mod:`pathseg.methods.ssl.export`).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch

from pathseg.engine.config import Config
from pathseg.errors import ConfigError

SSL_METHODS = ("simsiam", "dsf")


def build_pretrain_method(cfg: Config):
    """The configured SSL method over a fresh model of ``model.encoder`` (targets_per_context from the pair spec,
    batch_size from ``data.batch_size``)."""
    from pathseg.methods import METHODS
    from pathseg.models import create_model

    if cfg.method.name not in SSL_METHODS:
        raise ConfigError(f"method.name: pretraining needs one of {', '.join(SSL_METHODS)}, got {cfg.method.name!r}")
    cls = METHODS.get(cfg.method.name)
    params = dict(cfg.method.params)
    if "batch_size" in params:
        raise ConfigError("method.params.batch_size: set data.batch_size instead (pairs a step per process; the "
                          "learning rate is scaled from it)")
    per_side = int(cfg.data.options.get("pair", {}).get("per_side", 2))
    if "targets_per_context" in cls.param_names():
        params.setdefault("targets_per_context", per_side * per_side)
    model = create_model("unet", encoder=cfg.model.encoder, num_classes=2, weights=cfg.model.weights)
    return cls(model, class_names=["background", "tissue"], optim=dict(vars(cfg.optim)), max_steps=cfg.trainer.max_steps,
               channels_last=cfg.trainer.channels_last, batch_size=cfg.data.batch_size, **params)


def build_pretrain_loader(cfg: Config):
    from torch.utils.data import DataLoader

    from pathseg.methods.ssl.data import UnlabeledPairs

    opts = dict(cfg.data.options)
    unknown = set(opts) - {"sources", "pair", "augment", "crop_scale", "tissue"}
    if unknown:
        raise ConfigError(f"data.options: unknown pretraining option(s) {sorted(unknown)}; valid: sources, pair, "
                          "augment, crop_scale, tissue")
    if not opts.get("sources"):
        raise ConfigError("data.options.sources: name the unlabelled slides/images, e.g. "
                          "data.options.sources=[../shared/data/slides]")
    ds = UnlabeledPairs(opts["sources"], opts.get("pair", {}), length=cfg.trainer.max_steps * cfg.data.batch_size,
                        augment=opts.get("augment"), crop_scale=tuple(opts.get("crop_scale", (0.2, 1.0))),
                        tissue=opts.get("tissue", "saturation"))
    loader = DataLoader(ds, batch_size=cfg.data.batch_size, shuffle=False, num_workers=cfg.data.workers,
                        drop_last=True, persistent_workers=cfg.data.workers > 0)
    return loader, ds


def snapshot_dir(out: str | Path, step: int) -> Path:
    """Where the encoders of step ``step`` are kept: ``out/checkpoints/step_000250``."""
    return Path(out) / "checkpoints" / f"step_{int(step):06d}"


class EncoderSnapshots(L.Callback):
    """Every ``every`` optimiser steps (rank 0), export the method's encoders to :func:`snapshot_dir`, so that a
    fine-tuning run can pick any of them (model selection); ``record`` is written beside them with the step."""

    def __init__(self, out: Path, every: int, record: dict[str, Any]) -> None:
        self.out, self.every, self.record = Path(out), max(1, int(every)), record

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        from pathseg.methods.ssl.export import export_encoders

        step = int(trainer.global_step)
        if step == 0 or step % self.every or not trainer.is_global_zero:
            return
        export_encoders(pl_module, snapshot_dir(self.out, step), {**self.record, "steps": step,
                                                                   "lr": lr_record(pl_module)})


def lr_record(method) -> dict[str, Any]:
    """What the optimiser ran at and why: ``{"base", "rule", "global_batch", "lr"}``."""
    world = method._world_size()
    return {"base": method.base_lr, "rule": "lr * sqrt(B / 32)" if method.lr_scaling == "sqrt" else "none",
            "global_batch": None if method.batch_size is None else method.batch_size * world,
            "lr": method.effective_lr()}


def pretrain(cfg: Config) -> dict[str, Any]:
    """Pretrain as configured and export; returns {"out", "weights", "use", "record", "paths", "seconds"}.

    ``weights`` is the target encoder's file, or the context encoder's for SimSiam with branch=context.
    """
    from pathseg.engine.train import prepare_run, trainer_options
    from pathseg.methods.ssl.export import export_encoders

    out = prepare_run(cfg)
    method = build_pretrain_method(cfg)
    loader, ds = build_pretrain_loader(cfg)
    ckpt_dir = out / "checkpoints"
    every = max(1, cfg.trainer.val_every)
    record = {
        "params": {k: v for k, v in cfg.method.params.items()},
        "batch_size": cfg.data.batch_size,
        "seed": cfg.trainer.seed,
        "optim": dict(vars(cfg.optim)),
        "trained_on": ds.record(),
        "labels_used": False,
        "config": cfg.to_dict(),
    }
    trainer = L.Trainer(
        **trainer_options(cfg, type(method), out), limit_val_batches=0,
        callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0, monitor=None,
                                                       every_n_train_steps=every),
                   EncoderSnapshots(out, every, record)],
    )
    resume = ckpt_dir / "last.ckpt"
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*exists and is not empty.*")
        warnings.filterwarnings("ignore", ".*val_dataloader.*")
        trainer.fit(method, train_dataloaders=loader,
                    ckpt_path=str(resume) if cfg.trainer.resume and resume.exists() else None)
    seconds = time.time() - t0
    record = {**record, "steps": int(trainer.global_step), "lr": lr_record(method), "seconds": round(seconds, 1)}
    if not trainer.is_global_zero:  # data-parallel: rank 0 exports
        return {"out": str(out), "rank": trainer.global_rank, "seconds": seconds}
    paths = export_encoders(method, out, record)
    torch.set_grad_enabled(True)
    weights = paths.get("target", paths.get("context"))
    import json

    use = json.loads(Path(paths["record"]).read_text())["use"]
    return {"out": str(out), "weights": str(weights), "use": use, "record": str(paths["record"]),
            "paths": {k: str(v) for k, v in paths.items()}, "seconds": seconds}
