"""Run configuration: YAML files with typed sections, checked when loaded.

The YAML-to-dataclass machinery (``read_yaml``, overrides, typed building) is :mod:`pathseg.configfile`,
re-exported here. An unknown key is reported with a "did you mean"; ``key=value`` overrides use dotted paths
(``optim.lr=0.001``, ``method.params.lambda_cont=0.1``) and YAML values.

Example:
    >>> cfg = load_config(None, ["model.name=deeplabv3", "trainer.max_steps=10"])
    >>> cfg.model.name, cfg.trainer.max_steps
    ('deeplabv3', 10)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pathseg.configfile import _build, _check_type, _merge, _set_dotted, apply_overrides, read_yaml  # noqa: F401
from pathseg.errors import ConfigError


def default_train_transforms() -> list[dict[str, Any]]:
    return [{"name": "random_crop", "size": 256}, {"name": "flip"}, {"name": "rotate90"}]


@dataclass
class DataConfig:
    dataset: str = "synthetic"
    root: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # passed to the dataset constructor
    train_split: str = "train"
    val_split: str = "test"
    split_file: str | None = None  # a label-fraction split (pathseg splits); None = every train image labelled
    train_transforms: list[dict[str, Any]] = field(default_factory=default_train_transforms)
    unlabeled_transforms: list[dict[str, Any]] | None = None  # default: the same as train_transforms
    batch_size: int = 8
    unlabeled_batch_size: int = 8
    workers: int = 0
    cache: bool = True  # keep decoded images in memory (small datasets)
    # the images' resolution in µm/px, recorded in model.ckpt for slide prediction; None = what the dataset's
    # samples record (meta["mpp"]), with a warning when they record none
    mpp: float | None = None
    context: dict[str, Any] | None = None  # {ratio, size, position}: target/context training pairs (HookNet)


@dataclass
class ModelConfig:
    name: str = "unet"
    encoder: str = "resnet18"
    weights: str | None = None  # None, "imagenet" (online) or a local file
    options: dict[str, Any] = field(default_factory=dict)  # extra arguments of the model builder (widths, ...)


@dataclass
class MethodConfig:
    name: str = "supervised"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adam | adamw
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9  # lr_t = lr * (1 - t / T) ** power
    layer_decay: float | None = None  # ViT encoders: block l of d trains at lr * decay ** (d + 1 - l); None = off


@dataclass
class TrainerConfig:
    max_steps: int = 500
    val_every: int = 100  # steps between validations (one "epoch" of the loop)
    seed: int = 0
    out: str = "runs/default"
    threads: int | None = None  # torch threads; None = all cores
    accelerator: str = "auto"  # cpu | cuda | auto
    devices: int | str = 1  # per node; data.batch_size is per device
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_spawn | ... (Lightning's names)
    sync_batchnorm: bool | None = None  # None = the method's choice (semi-supervised and SSL methods: yes)
    precision: str = "32-true"
    channels_last: bool = True
    resume: bool = True  # continue from out/checkpoints/last.ckpt when present (see RESUME_FIXED)
    # training checkpoints kept: 1 = checkpoints/last.ckpt only; N > 1 also keeps the N most recent periodic
    # ones (every val_every steps) as checkpoints/step-XXXXXX.ckpt, the newest a copy of last.ckpt
    keep_last: int = 1
    log_every: int = 10
    progress: bool = True
    # keep the weights of the best validation: model.ckpt is written from checkpoints/best.ckpt, the validation
    # with the best value of this logged metric (e.g. val/mIoU); None = the weights at the end of training.
    # Off by default because data.val_split defaults to "test", and choosing on the test split biases its score;
    # MLPS (Han et al. 2022) keeps the best epoch by validation mIoU (configs/weak/luad_histoseg_phase*.yaml).
    best_metric: str | None = None
    best_mode: str = "max"  # max | min: whether a larger or a smaller best_metric is better


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: (key, lower bound, whether the bound itself is allowed) for every numeric key with a range; None values
#: (where a key allows None) are not checked. Checked by :func:`check_values` when a config is loaded.
RANGES: tuple[tuple[str, float, bool], ...] = (
    ("data.batch_size", 1, True), ("data.unlabeled_batch_size", 1, True), ("data.workers", 0, True),
    ("data.mpp", 0, False),
    ("optim.lr", 0, False), ("optim.momentum", 0, True), ("optim.weight_decay", 0, True),
    ("optim.poly_power", 0, True),
    ("trainer.max_steps", 1, True), ("trainer.val_every", 1, True), ("trainer.log_every", 1, True),
    ("trainer.num_nodes", 1, True), ("trainer.threads", 1, True), ("trainer.keep_last", 1, True),
)


_RANGE_HINTS = {
    "trainer.max_steps": " (the number of optimiser steps to train; resuming a run trains up to this total)",
    "optim.lr": " (the base learning rate, e.g. 0.01 for sgd, 0.001 for adam)",
    "data.mpp": " (µm per pixel of the images, e.g. 0.5 at 20x)",
}


def check_values(cfg: Config) -> Config:
    """Raise :class:`ConfigError` for a value out of its range (``optim.lr=-1``, ``trainer.max_steps=0``)."""
    for key, low, inclusive in RANGES:
        section, name = key.split(".")
        val = getattr(getattr(cfg, section), name)
        if val is None or isinstance(val, bool) or not isinstance(val, (int, float)):
            continue
        if val < low or (val == low and not inclusive):
            bound = f"≥ {low}" if inclusive else f"> {low}"
            raise ConfigError(f"{key}: expected a value {bound}, got {val!r}" + _RANGE_HINTS.get(key, ""))
    return cfg


#: Keys that decide what a run's checkpoint holds; resuming it (``trainer.resume`` with
#: ``checkpoints/last.ckpt`` present) with another value is refused, since the weights would not load or
#: the run would silently become another experiment. ``optim.lr``/``momentum``/``weight_decay`` are here
#: because the optimiser and schedule state restored from the checkpoint keep the old values. A key
#: covers every key under it (``model`` = ``model.*``). Everything else (``trainer.max_steps``, which may
#: grow, ``trainer.val_every``, ``trainer.devices``, batch sizes, transforms, ``optim.poly_power``...) may
#: change between runs.
RESUME_FIXED = ("model", "method", "data.dataset", "data.options", "data.split_file", "data.context",
                "optim.name", "optim.lr", "optim.momentum", "optim.weight_decay")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):  # an empty mapping adds no key: {} and a missing mapping compare equal
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _fixed(key: str) -> bool:
    return any(key == f or key.startswith(f + ".") for f in RESUME_FIXED)


def _same(key: str, a: Any, b: Any) -> bool:
    if a == b:
        return True
    if key == "data.split_file" and isinstance(a, str) and isinstance(b, str):
        pa, pb = Path(a), Path(b)  # the same split given by another path
        return pa.is_file() and pb.is_file() and pa.read_bytes() == pb.read_bytes()
    return False


def resume_differences(previous: dict[str, Any], cfg: Config) -> list[tuple[str, Any, Any]]:
    """``(key, previous value, new value)`` for every :data:`RESUME_FIXED` key that differs.

    ``previous``: the run's ``config.yaml`` as read; keys it lacks (written by an older pathseg) take their
    defaults. A key absent on one side shows as ``"(not set)"``.
    """
    try:
        prev = _build(Config, previous, "").to_dict()
    except ConfigError:  # written by another pathseg version: compare what is there
        prev = _merge(Config().to_dict(), previous)
    a, b = _flatten(prev), _flatten(cfg.to_dict())
    unset = "(not set)"
    keys = dict.fromkeys([*b, *a])  # in the config's order
    return [(k, a.get(k, unset), b.get(k, unset)) for k in keys
            if _fixed(k) and not _same(k, a.get(k, unset), b.get(k, unset))]


def check_resume(config_file: str | Path, cfg: Config) -> None:
    """Refuse to resume the run whose resolved config is ``config_file`` with other :data:`RESUME_FIXED` values.

    Raises :class:`ConfigError` naming each differing key with both values; nothing is written.
    """
    path = Path(config_file)
    if not path.is_file():
        return
    try:
        previous = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return
    if not isinstance(previous, dict):
        return
    diffs = resume_differences(previous, cfg)
    if diffs:
        listed = "; ".join(f"{k}: {a!r} there, {b!r} now" for k, a, b in diffs)
        raise ConfigError(
            f"trainer.out={cfg.trainer.out} holds a run to resume (checkpoints/last.ckpt) trained with other "
            f"settings ({path}): {listed}. Resuming needs the same values: pass those, choose another "
            f"trainer.out, or set trainer.resume=false to train from step 0 in this folder (its checkpoints and "
            f"metrics are overwritten)"
        )


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or defaults when ``path`` is None) and apply ``key=value`` overrides."""
    raw = apply_overrides(read_yaml(path) if path else {}, overrides, example="optim.lr=0.001")
    where = str(path) if path else "config"
    try:
        return check_values(_build(Config, raw, ""))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
