"""Dataset base class and registry. Every adapter returns :class:`pathseg.sample.Sample` dicts."""

from __future__ import annotations

import os
from pathlib import Path

from pathseg.errors import DatasetNotFoundError
from pathseg.registry import Registry
from pathseg.sample import Sample

DATASETS: Registry = Registry("dataset")


def shared_data_root() -> Path:
    """Where pathseg looks for public datasets by default: $PATHSEG_DATA, else ../shared/data next to the checkout."""
    env = os.environ.get("PATHSEG_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


class SegmentationDataset:
    """A list of samples with a class map.

    Subclasses set ``name``, ``class_names``, ``download_hint`` and fill ``self.ids`` in ``__init__``,
    and implement ``load(i) -> Sample``.
    """

    name: str = ""
    class_names: list[str] = []
    download_hint: str = ""
    default_subdir: str = ""  # under shared_data_root()

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else shared_data_root() / self.default_subdir
        if not self.root.exists():
            raise DatasetNotFoundError(
                f"{self.name} dataset not found at {self.root}. {self.download_hint} "
                f"Then pass root=/path/to/{self.name} (or set PATHSEG_DATA)."
            )
        self.ids: list[str] = []

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Sample:
        return self.load(i)

    def load(self, i: int) -> Sample:
        raise NotImplementedError

    def subset(self, ids: list[str]) -> "SegmentationDataset":
        """A view restricted to ``ids`` (in that order); unknown ids raise a clear error."""
        import copy

        from pathseg.errors import DataError

        unknown = sorted(set(ids) - set(self.ids))
        if unknown:
            raise DataError(f"{self.name}: split lists ids not in the dataset at {self.root}: {unknown[:5]}")
        if not ids:
            raise DataError(f"{self.name}: the split is empty; check the split file or the label fraction")
        view = copy.copy(self)
        view._index = {sid: self._index_of(sid) for sid in ids}  # type: ignore[attr-defined]
        view.ids = list(ids)
        base_load = self.load

        def load(i: int) -> Sample:
            return base_load(view._index[view.ids[i]])  # type: ignore[attr-defined]

        view.load = load  # type: ignore[method-assign]
        return view

    def _index_of(self, sid: str) -> int:
        return self.ids.index(sid)
