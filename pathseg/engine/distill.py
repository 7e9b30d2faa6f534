"""``run_distill``: Háberová et al. phases II-IV, each classifier trained by the one driver (:func:`train`).

Every stage is an ordinary training run (method ``cell_classifier``, dataset ``cell_bank``, a classifier
model; :func:`stage_config` writes its config from the :class:`~pathseg.methods.distill.config.DistillConfig`),
in its own folder under ``out/runs/``, and resumable like every run. In ``out``:

* phase II  teacher (``resnet18_small``) with cross-entropy on the weak labels          -> ``teacher.pt``
* the teacher labels every bank patch                                                 -> ``teacher_logits.npy``
* phase III student (``rccnet``) on the teacher's hard labels (as published), or on its softened
  probabilities ``softmax(z/T)`` with ``T² · KL`` (``student.soft: true``)           -> ``student.pt``
* phase IV  the student fine-tuned on expert labels, ``n`` cells per class for each ``n`` of
  ``finetune.counts``, over the grid ``finetune.lr`` x ``finetune.dropout``, each grid point a run that
  starts from ``student.pt``; the point is chosen by the weighted F1 on held-out expert cells (never the
  evaluation set)                                                                     -> ``finetune/n<n>.pt``

Each model is a pathseg model checkpoint (:func:`pathseg.models.checkpoint.load_model`,
:func:`pathseg.methods.distill.classifier.load_classifier`). ``metrics.json`` holds each model's scores on
the evaluation bank (F1, accuracy, precision, recall: weighted, macro and per class), from the stage's
validation (teacher, student), and for the chosen fine-tuned model from the same scoring run again on its
checkpoint (:func:`_evaluate`: :meth:`CellClassifier.evaluate_model` over the ``eval`` split).

A stage trains ``epochs · ⌊cells / batch⌋`` steps of Adam at a constant rate, each batch drawn by the
driver's sampler (with replacement, every patch rotated by k·90° and flipped at random); a stage whose
model file exists is skipped. Once a stage's model file is written, its run's ``checkpoints/`` (there to
resume an interrupted stage) are removed, as are the model files of the grid points not chosen.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from pathseg.engine.config import Config, _build, check_values
from pathseg.errors import ConfigError, DataError
from pathseg.data.cell_bank import CellBank
from pathseg.methods.distill.bank import balanced_subset
from pathseg.methods.distill.classifier import load_classifier, patches_to_tensor, predict_logits_cells
from pathseg.methods.distill.config import DistillConfig, StageConfig

#: the patch augmentation of every stage (the 8 symmetries of the square)
AUGMENT = [{"name": "rotate90"}, {"name": "flip", "horizontal": 0.5, "vertical": 0.0}]


def stage_steps(n_cells: int, epochs: int, batch_size: int) -> tuple[int, int]:
    """``(steps, batch)`` of a stage: ``epochs`` passes of ``⌊n / batch⌋`` batches (at least one step).

    Example:
        >>> stage_steps(1000, 10, 64), stage_steps(20, 3, 64)
        ((150, 64), (3, 20))
    """
    bs = max(1, min(int(batch_size), int(n_cells)))
    return max(1, int(epochs)) * max(1, int(n_cells) // bs), bs


def stage_config(cfg: DistillConfig, sc: StageConfig, out: str | Path, data: dict[str, Any], *, steps: int,
                 batch_size: int, size: int, val_split: str = "eval", weights: str | Path | None = None,
                 dropout: float | None = None, lr: float | None = None, weight_decay: float | None = None,
                 soft: bool = False, temperature: float = 1.0) -> Config:
    """The driver's config of one stage: ``data`` are the ``cell_bank`` options (bank, labels, cells, ...);
    ``weights``, ``dropout``, ``lr``, ``weight_decay`` replace the stage's own (fine-tuning).

    Example:
        >>> c = stage_config(DistillConfig(), StageConfig(), "runs/x", {"bank": "b.npz"}, steps=10, batch_size=8,
        ...                  size=32, val_split="train")
        >>> c.model.name, c.model.options, c.method.name, c.optim.name, c.trainer.max_steps
        ('rccnet', {'dropout': 0.5, 'in_size': 32}, 'cell_classifier', 'adam', 10)
    """
    raw = {
        "data": {"dataset": "cell_bank", "options": {"scale": cfg.scale, **data}, "train_split": "train",
                 "val_split": val_split, "train_transforms": AUGMENT, "batch_size": int(batch_size),
                 "cache": True},
        "model": {"name": sc.model, "weights": None if weights is None else str(weights),
                  "options": {"dropout": float(sc.dropout if dropout is None else dropout), "in_size": int(size),
                              **sc.options}},
        "method": {"name": "cell_classifier", "params": {"soft": bool(soft), "temperature": float(temperature)}},
        "optim": {"name": "adam", "lr": float(sc.lr if lr is None else lr),
                  "weight_decay": float(sc.weight_decay if weight_decay is None else weight_decay), "poly_power": 0.0},
        "trainer": {"max_steps": int(steps), "val_every": int(steps), "seed": int(cfg.seed), "out": str(out),
                    "threads": cfg.threads, "channels_last": False, "progress": False,
                    "log_every": max(1, min(50, int(steps))), **cfg.trainer},
    }
    return check_values(_build(Config, raw, ""))


def _labels_or_fail(v: np.ndarray, what: str) -> np.ndarray:
    idx = np.flatnonzero(v >= 0)
    if idx.size == 0:
        raise DataError(f"the cell bank has no {what} labels; build it with --{what} <folder of QuPath GeoJSON>")
    return idx


def _fingerprint(bank: CellBank) -> str:
    h = hashlib.sha1()
    for a in (bank.patches, bank.weak, bank.expert, bank.truth, np.array(bank.scales), np.array(bank.class_names)):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _bank_file(bank: CellBank | str | Path, path: Path) -> Path:
    """A bank as a file the ``cell_bank`` dataset reads: its own path, or ``path`` written from memory."""
    if not isinstance(bank, CellBank):
        return Path(bank)
    fp, stamp = _fingerprint(bank), path.with_suffix(".sha1")
    if not (path.is_file() and stamp.is_file() and stamp.read_text() == fp):
        bank.save(path)
        stamp.write_text(fp)
    return path


def _train(cfg: Config) -> dict[str, Any]:
    from pathseg.engine.train import train

    with warnings.catch_warnings():  # a cell bank records no µm/px: nothing to predict slides with
        warnings.filterwarnings("ignore", ".*records no resolution.*")
        return train(cfg)


def _evaluate(checkpoint: Path, cfg: Config) -> dict[str, Any]:
    """A classifier's scores on the split ``eval``, scored as the stage's validation scores it."""
    from pathseg.engine.data import build_val_loader
    from pathseg.engine.train import set_threads
    from pathseg.methods.distill.method import CellClassifier

    set_threads(cfg.trainer.threads)
    model, info = load_classifier(checkpoint)
    loader, ds = build_val_loader(cfg, "eval")
    return CellClassifier.evaluate_model(model, loader, list(ds.class_names))


def _keep_model(run: Path, dst: Path) -> None:
    """The run's model.ckpt becomes ``dst``; the run's training checkpoints go."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(run / "model.ckpt", dst)
    shutil.rmtree(run / "checkpoints", ignore_errors=True)


def _scores(row: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if row is None else {k: v for k, v in row.items() if k not in ("step", "epoch")}


def run_distill(
    bank: CellBank | str | Path,
    out: str | Path,
    cfg: DistillConfig,
    *,
    eval_bank: CellBank | str | Path | None = None,
    stages: Sequence[str] = ("teacher", "student", "finetune"),
    log: Any = print,
) -> dict[str, Any]:
    """Teacher -> student -> expert fine-tuning (see the module docstring); resumable, returns the metrics.

    ``bank``/``eval_bank``: cell banks or their ``.npz`` files (a bank in memory is written to
    ``out/banks/``). The evaluation bank is scored against its ``truth`` labels, else its ``expert`` labels.
    """
    from pathseg.io.files import write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train_file = _bank_file(bank, out / "banks" / "train.npz")
    eval_file = None if eval_bank is None else _bank_file(eval_bank, out / "banks" / "eval.npz")
    bank = bank if isinstance(bank, CellBank) else CellBank.load(train_file)
    names, k = bank.class_names, len(bank.class_names)
    si = bank.scale_index(cfg.scale)
    size = int(bank.patches.shape[2])
    val = "eval" if eval_file is not None else "train"
    base = {"bank": str(train_file), **({"eval_bank": str(eval_file)} if eval_file is not None else {})}
    metrics_path = out / "metrics.json"
    metrics: dict[str, Any] = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    metrics["config"] = asdict(cfg)

    def record(key: str, scores: dict[str, Any] | None, extra: dict[str, Any]) -> None:
        metrics[key] = {"eval": scores if eval_file is not None else None, **extra}
        write_json(metrics_path, metrics)
        m = metrics[key]["eval"]
        if m is not None:
            log(f"{key}: F1 {m['F1']:.4f}  accuracy {m['accuracy']:.4f}")

    # phase II: teacher on weak labels
    tpath = out / "teacher.pt"
    if not tpath.exists():
        idx = _labels_or_fail(bank.weak, "weak")
        steps, bs = stage_steps(idx.size, cfg.teacher.epochs, cfg.teacher.batch_size)
        run = out / "runs" / "teacher"
        res = _train(stage_config(cfg, cfg.teacher, run, {**base, "labels": "weak"}, steps=steps, batch_size=bs,
                                  size=size, val_split=val))
        _keep_model(run, tpath)
        record("teacher", _scores(res["metrics"]), {"train_cells": int(idx.size), "steps": res["steps"],
                                                   "seconds": res["seconds"]})
    # the teacher labels every patch of the bank
    lpath = out / "teacher_logits.npy"
    if not lpath.exists():
        teacher, _ = load_classifier(tpath)
        np.save(lpath, predict_logits_cells(teacher, patches_to_tensor(bank.patches[:, si])).numpy())
    if "student" not in stages and "finetune" not in stages:
        return metrics

    # phase III: student on the teacher's labels (hard: their argmax; soft: softmax(z / T))
    spath = out / "student.pt"
    if not spath.exists():
        sc = cfg.student
        steps, bs = stage_steps(len(bank), sc.epochs, sc.batch_size)
        run = out / "runs" / "student"
        res = _train(stage_config(cfg, sc, run, {**base, "labels": "teacher", "targets": str(lpath),
                                                 "temperature": sc.temperature if sc.soft else 1.0},
                                  steps=steps, batch_size=bs, size=size, val_split=val, soft=sc.soft,
                                  temperature=sc.temperature))
        _keep_model(run, spath)
        record("student", _scores(res["metrics"]), {"train_cells": len(bank), "soft": sc.soft,
                                                   "steps": res["steps"], "seconds": res["seconds"]})
    if "finetune" not in stages:
        return metrics

    # phase IV: fine-tune on n expert cells per class, grid chosen on held-out expert cells
    fc = cfg.finetune
    if not fc.lr or not fc.dropout:
        raise ConfigError(f"finetune.lr and finetune.dropout: the grid needs at least one value each, got "
                          f"lr={fc.lr}, dropout={fc.dropout}")
    eidx = _labels_or_fail(bank.expert, "expert")
    perm = np.random.default_rng(cfg.seed).permutation(eidx)
    n_hold = int(round(fc.holdout * len(perm))) if len(perm) > 1 else 0
    hold, pool = perm[:n_hold], perm[n_hold:]
    fdir = out / "finetune"
    fdir.mkdir(parents=True, exist_ok=True)
    hold_file = fdir / "holdout.npy"
    np.save(hold_file, np.sort(hold))
    for n in fc.counts:
        fpath = fdir / f"n{n}.pt"
        key = f"student+finetune-{n}"
        if fpath.exists() and key in metrics:
            continue
        pick = pool[balanced_subset(bank.expert[pool], n, classes=range(k), seed=cfg.seed + n)]
        pick_file = fdir / f"n{n}_cells.npy"
        np.save(pick_file, pick)
        data = {**base, "labels": "expert", "cells": str(pick_file)}
        if len(hold):
            data["holdout"] = str(hold_file)
        steps, bs = stage_steps(pick.size, fc.epochs, fc.batch_size)
        t0 = time.time()
        best: tuple[float, Path, Config, dict[str, Any]] | None = None
        runs = []
        for lr in fc.lr:
            for p in fc.dropout:
                run = fdir / f"n{n}" / f"lr{lr:g}_dropout{p:g}"
                c = stage_config(cfg, cfg.student, run, data, steps=steps, batch_size=bs, size=size,
                                 val_split="holdout" if len(hold) else "train", weights=spath, dropout=p, lr=lr,
                                 weight_decay=0.0)
                res = _train(c)
                runs.append(run)
                value = float(res["metrics"]["F1"]) if len(hold) else 0.0
                if best is None or value > best[0]:
                    best = (value, run, c, {"lr": lr, "dropout": p, "holdout_F1": value})
        _keep_model(best[1], fpath)
        for run in runs:  # the grid points not chosen: their metrics and logs stay, the weights go
            (run / "model.ckpt").unlink(missing_ok=True)
            shutil.rmtree(run / "checkpoints", ignore_errors=True)
        scores = _evaluate(fpath, best[2]) if eval_file is not None else None
        record(key, scores, {"train_cells": int(pick.size), "per_class": n, "steps": steps,
                             "seconds": time.time() - t0, **best[3]})
    return metrics


__all__ = ["AUGMENT", "CellBank", "DistillConfig", "run_distill", "stage_config", "stage_steps"]
