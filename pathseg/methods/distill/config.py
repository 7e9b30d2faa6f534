"""The configuration of the distillation pipeline (``pathseg distill -c configs/distill/cells.yaml``).

Sections ``teacher`` and ``student`` (:class:`StageConfig`), ``finetune`` (:class:`FinetuneConfig`), and
``scale`` (which bank scale the classifiers see), ``seed``, ``threads``, ``trainer`` (further ``trainer.*``
keys of every stage's run). Read with the shared YAML-to-dataclass machinery (:mod:`pathseg.configfile`):
``include:``, dotted ``key=value`` overrides, typed values and "did you mean" for unknown keys.
:func:`pathseg.engine.distill.stage_config` turns a stage into the training driver's config.

Example:
    >>> cfg = DistillConfig.load(None, ["teacher.epochs=5", "finetune.counts=[100, 500]"])
    >>> cfg.teacher.model, cfg.teacher.epochs, cfg.student.model, cfg.finetune.counts
    ('resnet18_small', 5, 'rccnet', [100, 500])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pathseg.configfile import load_dataclass


@dataclass
class StageConfig:
    """One classifier's training: ``epochs`` passes over its cells of ``batch_size`` (Adam, constant ``lr``)."""

    model: str = "rccnet"
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    dropout: float = 0.5
    soft: bool = False  # student only: distil softened probabilities instead of hard labels
    temperature: float = 4.0
    options: dict[str, Any] = field(default_factory=dict)  # extra model arguments, e.g. {stem_pool: true}


@dataclass
class TeacherConfig(StageConfig):
    """The teacher's defaults: the small-patch ResNet-18 without dropout."""

    model: str = "resnet18_small"
    dropout: float = 0.0


@dataclass
class FinetuneConfig:
    counts: list[int] = field(default_factory=lambda: [100, 500, 1000, 1900])  # expert cells per class
    lr: list[float] = field(default_factory=lambda: [5e-5, 1e-4, 1e-3])
    dropout: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5])
    epochs: int = 20
    batch_size: int = 32
    holdout: float = 0.2  # fraction of expert cells kept aside to choose the grid point


@dataclass
class DistillConfig:
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StageConfig = field(default_factory=StageConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    scale: float = 1.0  # which of the bank's patch scales the classifiers see
    seed: int = 0
    threads: int | None = None
    # further trainer.* settings of every stage's run (accelerator, precision, progress, log_every, ...)
    trainer: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: Sequence[str] | None = None) -> "DistillConfig":
        """From a YAML file (sections teacher, student, finetune) and ``key=value`` overrides."""
        return load_dataclass(cls, path, overrides, example="teacher.epochs=5")


__all__ = ["DistillConfig", "FinetuneConfig", "StageConfig", "TeacherConfig"]
