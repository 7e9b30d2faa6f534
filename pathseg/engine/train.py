"""The training loop (Lightning), evaluation, and what they write.

``train(cfg)`` writes into ``cfg.trainer.out``:
    config.yaml            the resolved configuration
    checkpoints/last.ckpt  Lightning checkpoint (resume: run the same command again)
    checkpoints/step-XXXXXX.ckpt  with ``trainer.keep_last: N`` > 1: the N most recent periodic checkpoints
    checkpoints/best.ckpt  with ``trainer.best_metric``: the Lightning checkpoint of the best validation so far
    model.ckpt             the model for `pathseg predict` / `evaluate`: the weights at the end of training, or
                           with ``trainer.best_metric`` those of best.ckpt; its ``pathseg`` entry then records
                           the choice under ``selection`` ({metric, mode, value, step, epoch})
    metrics.csv, metrics.json  one row per validation ("epoch" = trainer.val_every steps), over every run
    logs/metrics.csv       Lightning's log of every logged value, over every run

Resuming (``trainer.resume``, the default, with ``checkpoints/last.ckpt`` present) continues the run: the
metrics files keep the rows of earlier runs up to the resumed step and append this run's; a config that
differs in a key of :data:`~pathseg.engine.config.RESUME_FIXED` (model, method, dataset and its options,
optimiser) is refused before anything is written. The total steps and training time over every run are
carried in the checkpoints and recorded in model.ckpt under ``training``. Ctrl-C stops a run with
:class:`TrainingInterrupted`, which says which checkpoint was kept (``pathseg train`` exits 130).

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
import numbers
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml

from pathseg.engine.checkpoint import load_model, save_model_checkpoint
from pathseg.engine.config import Config, check_resume, check_values
from pathseg.engine.data import build_dataset, build_train_loaders, build_val_loader, check_dataset_options
from pathseg.engine.distributed import AllReduceBatchNormSync
from pathseg.errors import ConfigError, DataError
from pathseg.io.files import write_json, write_text
from pathseg.metrics import SegmentationMetrics
from pathseg.methods import METHODS, Method
from pathseg.methods.base import predict_logits
from pathseg.models import create_model


def set_threads(threads: int | None) -> None:
    torch.set_num_threads(threads or os.cpu_count() or 1)


class MetricsWriter(L.Callback):
    """Writes per-validation metrics as CSV and JSON (atomically) after every validation.

    ``previous``: the rows of earlier runs that a resumed run keeps (a validation of this run at the same step
    replaces its row).
    """

    def __init__(self, out: Path, previous: list[dict[str, Any]] | None = None) -> None:
        self.out = out
        self.previous = list(previous or [])

    def rows(self, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
        new = {r["step"] for r in history}
        return [r for r in self.previous if r.get("step") not in new] + list(history)

    def on_validation_end(self, trainer: L.Trainer, pl_module: Method) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not pl_module.history:
            return
        rows = self.rows(pl_module.history)
        write_json(self.out / "metrics.json", rows)
        keys = list(dict.fromkeys(k for r in rows for k in r))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        write_text(self.out / "metrics.csv", buf.getvalue())

    def state_dict(self) -> dict[str, Any]:
        return {}


def previous_rows(out: Path, resume_step: int | None) -> list[dict[str, Any]]:
    """The rows of ``out/metrics.json`` up to ``resume_step`` (those a resumed run keeps); [] for a new run."""
    path = out / "metrics.json"
    if resume_step is None or not path.is_file():
        return []
    import json

    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        warnings.warn(f"{path}: unreadable ({e}); it restarts with this run's validations", stacklevel=2)
        return []
    return [r for r in rows if isinstance(r, dict) and isinstance(r.get("step"), int) and r["step"] <= resume_step]


class RunCSVLogger(L.pytorch.loggers.CSVLogger):
    """Lightning's CSVLogger in ``out/logs``; a resumed run keeps the rows logged before ``keep_before``.

    (Lightning's own deletes ``metrics.csv`` when it starts, so each resume would keep only its own rows.)
    """

    def __init__(self, out: Path, keep_before: int | None) -> None:
        super().__init__(str(out), name="logs", version="")
        self.keep_before = keep_before

    @property
    def experiment(self) -> Any:
        if self._experiment is not None:
            return self._experiment
        from lightning.pytorch.utilities import rank_zero_only

        path = Path(self.log_dir) / "metrics.csv"
        keys: list[str] = []
        rows: list[dict[str, str]] = []
        if self.keep_before is not None and rank_zero_only.rank == 0 and path.is_file():
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                keys = sorted(reader.fieldnames or [])
                rows = [r for r in reader if _int(r.get("step")) is not None and _int(r["step"]) < self.keep_before]
        exp = super().experiment  # removes the file
        if rows:
            exp.metrics_keys = keys
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
            write_text(path, buf.getvalue())
        return exp


def _int(v: Any) -> int | None:
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return None


class RunClock(L.Callback):
    """Training time over every run of an output folder, carried in its checkpoints.

    ``total()``: the seconds of the earlier runs up to the checkpoint this run resumed from, plus this run's;
    None when it resumed from a checkpoint that did not record them (written before pathseg kept time).
    """

    def __init__(self) -> None:
        self.before, self.runs_before, self.start = 0.0, 0, None
        self.resumed, self.loaded = False, False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.time()

    def elapsed(self) -> float:
        return self.before + (time.time() - self.start if self.start is not None else 0.0)

    def total(self, trained: bool = True) -> float | None:
        """Over every run; ``trained=False`` (this run resumed a finished one) adds nothing of this run's."""
        if self.resumed and not self.loaded:
            return None
        return self.elapsed() if trained else self.before

    def runs(self, trained: bool = True) -> int:
        return self.runs_before + (1 if trained else 0)

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.elapsed(), "runs": self.runs()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.before, self.runs_before, self.loaded = float(state.get("seconds", 0.0)), int(state.get("runs", 0)), True


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped :func:`train`; the message says which checkpoint was kept, to resume from.

    Attributes: ``step`` (reached), ``checkpoint`` (``checkpoints/last.ckpt`` or None), ``checkpoint_step``.
    """

    def __init__(self, message: str, *, step: int, checkpoint: Path | None, checkpoint_step: int | None) -> None:
        super().__init__(message)
        self.step, self.checkpoint, self.checkpoint_step = step, checkpoint, checkpoint_step

    def __str__(self) -> str:
        return str(self.args[0])


def checkpoint_step(path: Path) -> int:
    """The global step of a Lightning checkpoint, read without loading its tensors."""
    try:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except RuntimeError:  # not the zip format: no mmap
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        return int(ckpt["global_step"])
    except Exception as e:
        raise DataError(f"{path}: cannot read this checkpoint to resume from it ({type(e).__name__}: {e}); "
                        "delete it to train from step 0, or set trainer.resume=false") from e


def interrupted(out: Path, step: int, val_every: int) -> TrainingInterrupted:
    """The :class:`TrainingInterrupted` saying what a run stopped at ``step`` kept in ``out``."""
    last = out / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return TrainingInterrupted(
            f"stopped at step {step}, before the first checkpoint (one every trainer.val_every={val_every} steps): "
            f"nothing kept to resume from in {out}; run the same command again to start over",
            step=step, checkpoint=None, checkpoint_step=None)
    kept = checkpoint_step(last)
    lost = "" if step <= kept else f", step {step} is lost" if step == kept + 1 else \
        f", steps {kept + 1}-{step} are lost"
    return TrainingInterrupted(
        f"stopped at step {step}: kept {last} (step {kept}){lost}; model.ckpt was not written. "
        f"Run the same command again to resume from step {kept}",
        step=step, checkpoint=last, checkpoint_step=kept)


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
    """What every run does first: checks, quiet logs, threads, seed, the output folder and its config.yaml.

    Before anything is written: the values are checked (:func:`~pathseg.engine.config.check_values`) and, when
    the run will resume from ``checkpoints/last.ckpt``, compared with the run's config.yaml
    (:func:`~pathseg.engine.config.check_resume`); either raises :class:`ConfigError`.
    """
    from lightning.pytorch.utilities import rank_zero_only

    check_values(cfg)
    out = Path(cfg.trainer.out)
    if cfg.trainer.resume and (out / "checkpoints" / "last.ckpt").is_file():
        check_resume(out / "config.yaml", cfg)
    quiet_lightning()
    set_threads(cfg.trainer.threads)
    L.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    out.mkdir(parents=True, exist_ok=True)
    if rank_zero_only.rank == 0:
        write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return out


def resume_point(cfg: Config) -> tuple[Path | None, int | None]:
    """``(checkpoints/last.ckpt, its step)`` when the run resumes from it, else ``(None, None)``."""
    last = Path(cfg.trainer.out) / "checkpoints" / "last.ckpt"
    if not (cfg.trainer.resume and last.is_file()):
        return None, None
    return last, checkpoint_step(last)


def trainer_options(cfg: Config, method_cls: type[Method], out: Path) -> dict[str, Any]:
    """The ``L.Trainer`` arguments every run shares: devices, nodes, strategy, batch-norm sync, logging.

    Batch norm is synchronised across processes when ``trainer.sync_batchnorm`` says so, or by default
    when the method needs it (``Method.sync_batchnorm``): PyTorch's SyncBatchNorm on GPUs,
    :class:`~pathseg.engine.distributed.AllReduceBatchNorm` on CPU processes. A resumed run's
    ``logs/metrics.csv`` keeps the rows logged before the resumed step (:class:`RunCSVLogger`).
    """
    t = cfg.trainer
    sync = method_cls.sync_batchnorm if t.sync_batchnorm is None else bool(t.sync_batchnorm)
    opts: dict[str, Any] = dict(
        max_steps=t.max_steps, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=t.strategy, precision=t.precision, num_sanity_val_steps=0, log_every_n_steps=t.log_every,
        logger=RunCSVLogger(out, resume_point(cfg)[1]), enable_progress_bar=t.progress,
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
    """Train as configured; returns {"out", "checkpoint", "metrics", "selection", "seconds", "steps",
    "total_seconds", "runs", "resumed_from", "rank", "world_size"}.

    ``metrics``: the last validation, or with ``trainer.best_metric`` the validation of the chosen weights
    (only ``{"step"}`` when no run's metrics.json row has it); ``selection``: what model.ckpt records under
    ``selection``, or None without ``trainer.best_metric``. ``seconds``: this call's training time;
    ``steps``: the model's optimiser steps over every run; ``total_seconds``: the training time over every
    run (None when resumed from a checkpoint that did not record it); ``runs``: how many runs trained it;
    ``resumed_from``: the step this call resumed from, or None.

    Raises :class:`TrainingInterrupted` (a KeyboardInterrupt) on Ctrl-C, saying what was kept.
    """
    check_dataset_options(cfg)  # before config.yaml is written
    out = prepare_run(cfg)
    resume, resumed_from = resume_point(cfg)

    method_cls = METHODS.get(cfg.method.name)
    val_ds = build_dataset(cfg, cfg.data.val_split)
    mpp, stain = resolve_mpp(cfg, val_ds), _dataset_stain(val_ds)
    method = build_method(cfg, val_ds.class_names, mpp, stain)
    data = TrainData(cfg, method_cls.needs_unlabeled, val_ds)

    ckpt_dir = out / "checkpoints"
    writer, clock = MetricsWriter(out, previous_rows(out, resumed_from)), RunClock()
    clock.resumed = resume is not None
    callbacks: list[L.Callback] = [periodic_checkpoints(ckpt_dir, cfg.trainer.val_every, cfg.trainer.keep_last),
                                   writer, clock]
    best_cb = None
    if cfg.trainer.best_metric is not None:
        best_cb = BestCheckpoint(ckpt_dir, cfg.trainer.best_metric, cfg.trainer.best_mode)
        callbacks.append(best_cb)
    if cfg.trainer.progress:
        callbacks.append(L.pytorch.callbacks.TQDMProgressBar(refresh_rate=max(1, cfg.trainer.log_every)))
    trainer = L.Trainer(**trainer_options(cfg, method_cls, out), check_val_every_n_epoch=1, callbacks=callbacks,
                        deterministic=False, use_distributed_sampler=False)
    t0 = time.time()
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            warnings.filterwarnings("ignore", ".*exists and is not empty.*")
            trainer.fit(method, datamodule=data, ckpt_path=None if resume is None else str(resume))
            if not method.history:  # resumed a finished run: nothing was validated in this call
                trainer.validate(method, datamodule=data, verbose=False)
    except SystemExit:  # Lightning turns Ctrl-C into a clean shutdown and sys.exit(1)
        if not trainer.interrupted:
            raise
        raise interrupted(out, int(trainer.global_step), cfg.trainer.val_every) from None
    except RuntimeError as e:
        if resume is not None and "Error(s) in loading state_dict" in str(e):
            raise ConfigError(f"{resume}: its weights do not fit the configured model "
                              f"({cfg.model.name}/{cfg.model.encoder}, {len(val_ds.class_names)} classes; "
                              f"{str(e).splitlines()[0].rstrip(':')}). Resume with the run's model settings, "
                              "choose another trainer.out, or set trainer.resume=false") from None
        raise
    finally:
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) != sigint:
            signal.signal(signal.SIGINT, sigint)  # Lightning ignores further Ctrl-C while it shuts down
    seconds = time.time() - t0
    final = out / "model.ckpt"
    selection = best_selection(best_cb) if best_cb is not None else None
    trained = resumed_from is None or int(trainer.global_step) > resumed_from
    training = {"steps": int(trainer.global_step), "seconds": clock.total(trained), "runs": clock.runs(trained)}
    extra: dict[str, Any] = {"training": training}
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
    rows = writer.rows(method.history)
    last = rows[-1] if rows else {}
    if selection is not None:  # the validation of the weights in model.ckpt, when a run logged it
        last = next((r for r in rows if r["step"] == selection["step"]), {"step": selection["step"]})
    return {"out": str(out), "checkpoint": str(final), "metrics": last, "selection": selection,
            "seconds": seconds, "steps": training["steps"], "total_seconds": training["seconds"],
            "runs": training["runs"], "resumed_from": resumed_from,
            "rank": trainer.global_rank, "world_size": trainer.world_size}


def describe_training(res: dict[str, Any]) -> str:
    """One line on how a :func:`train` result's model was trained: its steps and time over every run.

    Example:
        >>> describe_training({"steps": 200, "seconds": 71.0, "total_seconds": 166.0, "runs": 2, "resumed_from": 50})
        '200 steps, 166 s over 2 runs; this run resumed at step 50 and trained 150 steps in 71 s'
    """
    steps, total, runs, start = res["steps"], res.get("total_seconds"), res.get("runs", 1), res.get("resumed_from")
    if start is None:
        return f"{steps} steps, {res['seconds']:.0f} s"
    earlier = "time of earlier runs not recorded" if total is None else \
        f"{total:.0f} s over {runs} run{'s' if runs != 1 else ''}"
    if steps <= start:
        return f"{steps} steps, {earlier}; this run resumed a finished run at step {start} and trained nothing more"
    more = steps - start
    return (f"{steps} steps, {earlier}; this run resumed at step {start} and trained {more} "
            f"step{'s' if more != 1 else ''} in {res['seconds']:.0f} s")


def periodic_checkpoints(ckpt_dir: Path, every: int, keep_last: int) -> L.pytorch.callbacks.ModelCheckpoint:
    """``last.ckpt`` every ``every`` steps; with ``keep_last`` N > 1 also the N latest as ``step-XXXXXX.ckpt``."""
    if keep_last > 1:
        return L.pytorch.callbacks.ModelCheckpoint(
            dirpath=ckpt_dir, filename="step-{step:06d}", save_last=True, every_n_train_steps=every,
            save_top_k=keep_last, monitor="step", mode="max", auto_insert_metric_name=False)
    return L.pytorch.callbacks.ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=every,
                                               save_top_k=0, monitor=None)


def evaluate(checkpoint: str | Path, cfg: Config, split: str | None = None, *,
             metrics: Callable[[np.ndarray, list[str]], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Score a checkpoint on a dataset split (default ``data.val_split``): every metric from one confusion matrix.

    Batched as validation scores them (:func:`~pathseg.engine.data.build_val_loader`): whole images one at a time,
    fixed-size patches and cells in batches.
    ``metrics(cm, class_names)`` reads another set of metrics from the same confusion matrix (e.g.
    :func:`pathseg.metrics.segcls.segcls_metrics`); the default is
    :func:`~pathseg.metrics.confusion.metrics_from_confusion` (mIoU, Dice, accuracy, per class).
    """
    set_threads(cfg.trainer.threads)
    model, info = load_model(checkpoint)
    model.to(memory_format=torch.channels_last)
    ds = build_dataset(cfg, split or cfg.data.val_split)
    if ds.class_names != info["class_names"]:
        raise ConfigError(
            f"{checkpoint}: the model predicts classes {info['class_names']} but dataset {cfg.data.dataset!r} "
            f"has {ds.class_names}; evaluate on a dataset with the same class map"
        )
    acc = SegmentationMetrics(len(ds.class_names), class_names=ds.class_names)
    loader, _ = build_val_loader(cfg, split, dataset=ds)
    with torch.inference_mode():
        for batch in loader:
            pred = predict_logits(model, batch["image"]).argmax(1)
            acc.update(batch["mask"], pred)
    return acc.compute() if metrics is None else metrics(acc.cm, list(ds.class_names))


def per_class(metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """``{class: {"IoU", "Dice"}}`` from the ``IoU/<class>`` and ``Dice/<class>`` entries of a metrics dict."""
    return {k[len("IoU/"):]: {"IoU": v, "Dice": metrics.get("Dice/" + k[len("IoU/"):], float("nan"))}
            for k, v in metrics.items() if k.startswith("IoU/")}


def resolve_mpp(cfg: Config, ds) -> float | None:
    """The resolution model.ckpt records (µm/px): ``data.mpp`` when set, else what the dataset's samples record.

    Reading the first sample's ``meta["mpp"]`` fails only as the dataset itself fails: the error is raised, as a
    :class:`DataError` naming the dataset when it is not already a pathseg error. ``data.mpp`` differing from the
    recorded value wins with a warning; neither of them (or a recorded value that is not a positive number) gives
    None, with a warning that slide prediction will then need ``--mpp`` (set ``data.mpp`` to record it).
    """
    from pathseg.errors import PathsegError

    stated = cfg.data.mpp
    recorded, odd = None, "records no resolution (µm/px)"
    if len(ds):
        try:
            sample = ds[0]
        except PathsegError:
            raise
        except Exception as e:
            raise DataError(f"dataset {cfg.data.dataset!r}: reading its first {cfg.data.val_split!r} sample, to record "
                            f"the resolution model.ckpt keeps, failed ({type(e).__name__}: {e}); fix the dataset's "
                            "files or data.options") from e
        meta = sample.get("meta") if isinstance(sample, dict) else None
        value = meta.get("mpp") if isinstance(meta, dict) else None
        recorded = float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) and value > 0 \
            else None
        if value is not None and recorded is None:
            odd = f"records mpp={value!r}, not a positive number of µm/px,"
    if stated is not None:
        if recorded is not None and abs(recorded - stated) > 0.01 * stated:
            warnings.warn(f"data.mpp={stated} overrides the {recorded} µm/px that dataset {cfg.data.dataset!r} "
                          "records; model.ckpt records data.mpp", stacklevel=2)
        return float(stated)
    if recorded is None:
        warnings.warn(
            f"dataset {cfg.data.dataset!r} {odd} for its images, so model.ckpt records "
            "mpp=None and `pathseg predict` on whole slides will ask for --mpp; set data.mpp=<µm per pixel> "
            "(e.g. 0.5 at 20x) to record it", stacklevel=2)
    return recorded


def _dataset_stain(ds) -> dict[str, Any] | None:
    """The state of the stain normaliser the dataset applies to every image (None: none), for prediction."""
    norm = getattr(ds, "stain_normalizer", None)
    return None if norm is None else norm.state()
