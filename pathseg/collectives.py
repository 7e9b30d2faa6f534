"""Collectives that work with or without a process group: rank and world size, gather, sum.

Plain ``torch.distributed`` (no Lightning), so the losses, metrics and methods that need them sit below the
training driver. Outside a process group every function here is the identity, so single-process code pays
nothing. The samplers and the batch-norm plugin that the driver adds are :mod:`pathseg.engine.distributed`.

Example:
    >>> rank_world()
    (0, 1)
    >>> all_reduce_sum(np.array([1, 2])).tolist()   # one process: unchanged
    [1, 2]
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


def rank_world() -> tuple[int, int]:
    """(global rank, world size) of this process; (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t`` (M_r, ...) from every rank along dim 0, in rank order; sizes M_r may differ.

    Shape: (M_r, *S) on rank r -> (Σ_r M_r, *S) on every rank. Detached (used for memory banks).
    """
    _, world = rank_world()
    if world == 1:
        return t.detach()
    t = t.detach().contiguous()
    sizes = [torch.zeros(1, dtype=torch.long, device=t.device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([t.shape[0]], dtype=torch.long, device=t.device))
    n = [int(s.item()) for s in sizes]
    pad = t.new_zeros((max(n) - t.shape[0], *t.shape[1:]))
    parts = [t.new_empty((max(n), *t.shape[1:])) for _ in range(world)]
    dist.all_gather(parts, torch.cat([t, pad]))
    return torch.cat([p[:k] for p, k in zip(parts, n)])


def all_reduce_sum(a: np.ndarray) -> np.ndarray:
    """Element-wise sum of an integer array over all ranks (e.g. confusion matrices)."""
    _, world = rank_world()
    if world == 1:
        return a
    t = torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float64 if a.dtype.kind == "f" else torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.numpy().astype(a.dtype)


__all__ = ["all_gather_cat", "all_reduce_sum", "rank_world"]
