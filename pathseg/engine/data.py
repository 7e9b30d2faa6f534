"""From a config to DataLoaders: dataset adapters -> paired transforms -> tensors.

Training loaders sample with replacement, so one loop "epoch" is ``trainer.val_every`` steps whatever
the dataset size; validation runs on whole images, one at a time (sizes differ). Each training sample
carries its own augmentation seed (:class:`~pathseg.engine.distributed.GlobalBatchSampler`), so a run
is the same whatever the number of loader workers or data-parallel processes; ``data.batch_size`` is
per process (global batch = batch_size × devices × nodes).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch.utils.data import DataLoader

from pathseg.data.base import DATASETS, SegmentationDataset
from pathseg.data.views import TensorView  # noqa: F401  (re-exported: the training loaders' view)
from pathseg.sample import collate
from pathseg.engine.config import Config
from pathseg.engine.distributed import GlobalBatchSampler, ShardSampler
from pathseg.errors import ConfigError, DataError
from pathseg.registry import did_you_mean


def check_dataset_options(cfg: Config) -> type[SegmentationDataset]:
    """The configured adapter class, once ``data.dataset`` and every ``data.options`` key are known to it.

    Raises :class:`~pathseg.errors.ConfigError` with a "did you mean" and the valid options for a key the
    adapter's constructor does not take (an adapter taking ``**kwargs`` accepts any).
    """
    import pathseg.data  # noqa: F401  (registers adapters)

    cls = DATASETS.get(cfg.data.dataset)
    if not isinstance(cfg.data.options, dict):
        raise ConfigError(f"data.options: expected a mapping of {cfg.data.dataset} options, got {cfg.data.options!r}")
    params = inspect.signature(cls).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return cls
    valid = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "split"]
    for key in cfg.data.options:
        if key == "split":
            raise ConfigError("data.options.split: the split is data.train_split / data.val_split; "
                              "remove split from data.options")
        if key not in valid:
            raise ConfigError(f"data.options: dataset {cfg.data.dataset!r} has no option {key!r}."
                              f"{did_you_mean(str(key), valid)} Valid options: {', '.join(valid) or '(none)'}")
    return cls


def build_dataset(cfg: Config, split: str) -> SegmentationDataset:
    """Instantiate the configured dataset adapter for ``split`` (options checked by :func:`check_dataset_options`).

    ``split="val"`` with a ``data.split_file`` that lists ``"val"`` ids: those images of the training split, a
    validation set drawn from the training images (for recipe and checkpoint choice without the test images).
    """
    if split == "val" and cfg.data.split_file:
        from pathseg.data.splits import read_split

        held = read_split(cfg.data.split_file).get("val")
        if held is not None:
            return build_dataset(cfg, cfg.data.train_split).subset(list(held))
    cls = check_dataset_options(cfg)
    kwargs = dict(cfg.data.options)
    if cfg.data.root is not None:
        kwargs["root"] = cfg.data.root
    return cls(split=split, **kwargs)


def _loader(ds: Dataset, batch: int, workers: int, sampler: GlobalBatchSampler) -> DataLoader:
    return DataLoader(
        ds,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        drop_last=True,
        persistent_workers=workers > 0,
    )


def split_labeled(cfg: Config, train: SegmentationDataset) -> tuple[SegmentationDataset, SegmentationDataset | None]:
    """The labelled and unlabelled parts of the training set, from ``data.split_file`` when given."""
    if not cfg.data.split_file:
        return train, None
    from pathseg.data.splits import read_split

    split = read_split(cfg.data.split_file)
    labeled = train.subset(list(split["labeled"]))
    unlabeled = train.subset(list(split["unlabeled"])) if split.get("unlabeled") else None
    return labeled, unlabeled


def build_train_loaders(cfg: Config, *, with_unlabeled: bool, rank: int = 0, world_size: int = 1) -> Any:
    """The training loader: labelled batches, or ``{"labeled", "unlabeled"}`` pairs for semi-supervised methods.

    ``rank``/``world_size``: this process's slice of every global batch under data-parallel training.
    """
    from pathseg.transforms import build_transforms

    d = cfg.data
    train = build_dataset(cfg, d.train_split)
    labeled, unlabeled = split_labeled(cfg, train)
    if len(labeled) == 0:
        raise DataError(f"{cfg.data.dataset}: the labelled training split is empty; check data.split_file")
    steps = max(1, cfg.trainer.val_every)
    def sampler(n: int, batch: int, stream: int) -> GlobalBatchSampler:
        return GlobalBatchSampler(n, batch, steps, seed=cfg.trainer.seed, stream=stream, rank=rank,
                                  world_size=world_size)

    if d.context is not None:  # concentric target/context pairs (HookNet), see pathseg.data.context
        from pathseg.data.context import ContextView

        view: Dataset = ContextView(labeled, d.train_transforms, d.context, cache=d.cache)
    else:
        view = TensorView(labeled, build_transforms(d.train_transforms), cache=d.cache)
    sup = _loader(view, d.batch_size, d.workers, sampler(len(labeled), d.batch_size, 0))
    if not with_unlabeled:
        return sup
    if unlabeled is None or len(unlabeled) == 0:
        raise DataError(
            f"{cfg.data.dataset}: this method needs unlabelled images, but the split has none; pass "
            "data.split_file=splits/<dataset>/<fraction>_seed<k>.json (see `pathseg splits`)"
        )
    tf = build_transforms(d.unlabeled_transforms if d.unlabeled_transforms is not None else d.train_transforms)
    unsup = _loader(TensorView(unlabeled, tf, keep_mask=False, cache=d.cache), d.unlabeled_batch_size, d.workers,
                    sampler(len(unlabeled), d.unlabeled_batch_size, 1))
    from lightning.pytorch.utilities import CombinedLoader

    return CombinedLoader({"labeled": sup, "unlabeled": unsup}, mode="max_size_cycle")


def build_val_loader(cfg: Config, split: str | None = None, *, rank: int = 0, world_size: int = 1,
                     dataset: SegmentationDataset | None = None) -> tuple[DataLoader, SegmentationDataset]:
    """Whole images one at a time, or ``dataset.eval_batch_size`` items a batch where a dataset of fixed-size items
    sets it (patches, cells); under data-parallel training each rank scores its own shard.

    ``dataset``: the split's dataset when the caller has already built it.
    """
    ds = dataset if dataset is not None else build_dataset(cfg, split or cfg.data.val_split)
    if len(ds) == 0:
        raise DataError(f"{cfg.data.dataset}: split {split or cfg.data.val_split!r} is empty")
    view = TensorView(ds, None, cache=cfg.data.cache)
    return DataLoader(view, batch_size=getattr(ds, "eval_batch_size", 1),
                      sampler=ShardSampler(len(ds), rank, world_size), num_workers=0, collate_fn=collate), ds
