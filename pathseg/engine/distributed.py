"""What the methods' own state needs under data-parallel training (Lightning DDP, any number of processes).

Lightning owns the processes, the gradient all-reduce and rank-zero checkpointing. Three things are
pathseg's, because they live outside the parameters:

- the training samplers: every rank draws the same global sequence of (image, augmentation seed) and
  takes its own slice of each global batch (:class:`GlobalBatchSampler`), so N processes with per-device
  batch B see exactly the samples, in the same order and with the same augmentations, that one process
  with batch N·B sees;
- validation is sharded without padding (:class:`ShardSampler`) and the confusion matrices are summed
  across ranks (:func:`~pathseg.collectives.all_reduce_sum`): one matrix, never a mean of per-rank metrics;
- memory banks push the features of every rank (:func:`~pathseg.collectives.all_gather_cat`), as MoCo-style queues do;
- batch-norm statistics over the global batch on CPU processes too (:class:`AllReduceBatchNorm`;
  PyTorch's SyncBatchNorm accepts GPU tensors only).

Outside a process group every function here is the identity, so single-process code pays nothing.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.plugins.layer_sync import LayerSync
from torch import nn
from torch.utils.data import Sampler

from pathseg.collectives import all_gather_cat, all_reduce_sum, rank_world  # noqa: F401  (re-exported)


class GlobalBatchSampler(Sampler):
    """Training samples with replacement, as (index, augmentation seed) pairs, identical under any world size.

    Every rank draws the same sequence of ``steps × batch_size × world_size`` pairs for an epoch
    (``np.random.SeedSequence([seed, stream, epoch])``); rank r takes items ``[r·B, (r+1)·B)`` of each
    global batch of ``B·world_size``. ``stream`` separates the loaders of one run (labelled 0, unlabelled 1).
    Lightning calls :meth:`set_epoch` before each epoch, so epochs (and resumed runs) draw fresh samples.
    """

    def __init__(self, n: int, batch_size: int, steps: int, *, seed: int = 0, stream: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        self.n, self.batch_size, self.steps = int(n), int(batch_size), int(steps)
        self.seed, self.stream, self.rank, self.world_size = int(seed), int(stream), int(rank), int(world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps * self.batch_size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.stream, self.epoch]))
        total = self.steps * self.batch_size * self.world_size
        index = rng.integers(0, self.n, size=total)
        seeds = rng.integers(0, 2**31 - 1, size=total)
        global_batch = self.batch_size * self.world_size
        for b in range(self.steps):
            start = b * global_batch + self.rank * self.batch_size
            for j in range(start, start + self.batch_size):
                yield int(index[j]), int(seeds[j])


class ShardSampler(Sampler):
    """Indices ``rank, rank + W, rank + 2W, ...``: each item on exactly one rank, no padding (no double counting)."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.rank, self.world_size = int(n), int(rank), int(world_size)

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))


class AllReduceBatchNorm(nn.BatchNorm2d):
    """Batch norm whose training statistics are those of the global batch, over any process group (gloo too).

    Per channel c, with sums over every rank's pixels (N in all):
        μ_c = Σ x / N,   σ²_c = Σ x² / N − μ_c²,   y = (x − μ_c) / sqrt(σ²_c + ε) · γ_c + β_c
    The sums travel through a differentiable all-reduce, so each rank's gradient includes the other
    ranks' losses, as in one process holding the whole batch. Running statistics use the unbiased
    variance, like :class:`torch.nn.BatchNorm2d`. Same parameters and buffers as BatchNorm2d (checkpoints
    are interchangeable); outside a process group, or in eval mode, it *is* BatchNorm2d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, world = rank_world()
        if not self.training or world == 1:
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        local = torch.cat([x.sum(dims), (x * x).sum(dims), x.new_tensor([x.numel() // c])])
        total = all_reduce(local.double(), op=dist.ReduceOp.SUM)
        n = total[-1]
        mean = total[:c] / n
        var = (total[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean.to(self.running_mean.dtype))
                unbiased = var * n / (n - 1).clamp_min(1)
                self.running_var.mul_(1 - m).add_(m * unbiased.to(self.running_var.dtype))
        shape = (1, c) + (1,) * (x.dim() - 2)
        scale = torch.rsqrt(var + self.eps).to(x.dtype)
        y = (x - mean.to(x.dtype).view(shape)) * scale.view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


class AllReduceBatchNormSync(LayerSync):
    """Lightning layer-sync plugin: every BatchNorm2d becomes :class:`AllReduceBatchNorm` while fitting."""

    def apply(self, model: nn.Module) -> nn.Module:
        for m in model.modules():
            if type(m) is nn.BatchNorm2d:
                m.__class__ = AllReduceBatchNorm
        return model

    def revert(self, model: nn.Module) -> nn.Module:
        for m in model.modules():
            if type(m) is AllReduceBatchNorm:
                m.__class__ = nn.BatchNorm2d
        return model
