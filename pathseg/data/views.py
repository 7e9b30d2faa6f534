"""Dataset views: a dataset adapter's samples as tensors, with paired transforms drawn per call.

:class:`TensorView` is what the training loaders wrap every dataset in (:mod:`pathseg.engine.data`);
:class:`pathseg.data.context.ContextView` extends it with HookNet's target/context pairs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pathseg.data.base import SegmentationDataset


class TensorView(Dataset):
    """Applies paired transforms (fresh randomness per call) and converts a Sample to tensors.

    ``keep_mask=False`` drops the mask (unlabelled view). Decoded samples can be cached in memory.
    """

    def __init__(self, dataset: SegmentationDataset, transforms=None, *, keep_mask: bool = True, cache: bool = False):
        self.dataset, self.transforms, self.keep_mask = dataset, transforms, keep_mask
        self._cache: dict[int, dict[str, Any]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.dataset)

    def _sample(self, i: int) -> dict[str, Any]:
        if self._cache is None:
            return dict(self.dataset[i])
        if i not in self._cache:
            self._cache[i] = dict(self.dataset[i])
        return dict(self._cache[i])

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        """``item``: an index, or ``(index, augmentation seed)`` from :class:`GlobalBatchSampler`."""
        from pathseg.transforms import to_tensor

        i, seed = item if isinstance(item, tuple) else (item, None)
        s = self._sample(i)
        if not self.keep_mask:
            s["mask"] = None
        if self.transforms is not None:
            if seed is None:
                seed = int(torch.randint(0, 2**31 - 1, ()).item())
            rng = np.random.default_rng(seed)
            s = self.transforms(s, rng)
        t = to_tensor(s)
        out = {k: v for k, v in t.items() if torch.is_tensor(v)}
        if "mask" in out and not self.keep_mask:
            del out["mask"]
        out["index"] = torch.tensor(i)
        return out


__all__ = ["TensorView"]
