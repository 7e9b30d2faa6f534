"""Seeded label-fraction splits, written as committed JSON so a table row can be re-run exactly.

A split file ``splits/<dataset>/<a-b>_seed<s>.json`` (``1-8_seed0.json`` = fraction 1/8, seed 0) holds::

    {"dataset": "monuseg", "fraction": 0.125, "seed": 0, "by": "image",
     "labeled": [ids...], "unlabeled": [ids...], "test": [ids...]}

``labeled`` and ``unlabeled`` partition the training ids (each list sorted); ``test`` is the
dataset's held-out split (never drawn from). Draws use Python's :class:`random.Random`, whose
``shuffle`` is stable across Python versions, over the *sorted* ids, so a split depends only on the id
set, the fraction and the seed.

* ``by="image"``: ``round(n * fraction)`` images labelled (half rounds up), at least 1.
* ``by="source"`` (groups): whole groups (e.g. BCSS TCGA sites, GlaS patients) are labelled or not.
  Groups are taken in seeded order while that brings the labelled image count closer to
  ``n * fraction``; at least one group is labelled.

Example:
    >>> s = make_split([f"im{i}" for i in range(30)], "1/8", seed=0)
    >>> len(s["labeled"]), len(s["unlabeled"])
    (4, 26)
"""

from __future__ import annotations

import json
import math
import numbers
import os
import random
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

from pathseg.errors import DataError
from pathseg.io.files import write_json

SPLITS_DIR = Path(__file__).resolve().parents[2] / "splits"
"""The committed split files of this checkout (``<repo>/splits``)."""

STANDARD_FRACTIONS = (Fraction(1), Fraction(1, 2), Fraction(1, 4), Fraction(1, 8), Fraction(1, 16), Fraction(1, 32))
MONUSEG_FRACTIONS = (Fraction(1), Fraction(1, 8), Fraction(1, 16), Fraction(1, 32))
MONUSEG_SEEDS = (0, 1, 2)


def as_fraction(fraction: float | str | Fraction) -> Fraction:
    """``0.125``, ``"1/8"``, ``"1-8"`` or ``Fraction(1, 8)`` → ``Fraction(1, 8)``; must lie in (0, 1]."""
    try:
        f = Fraction(str(fraction).replace("-", "/")).limit_denominator(1024)
    except (ValueError, ZeroDivisionError) as e:
        raise DataError(f"label fraction {fraction!r} is not a number like 1/8 or 0.125") from e
    if not 0 < f <= 1:
        raise DataError(f"label fraction {fraction!r} must be in (0, 1], e.g. one of 1, 1/2, 1/4, 1/8, 1/16, 1/32")
    return f


def as_seed(seed: int | str) -> int:
    """``3`` or ``"3"`` → ``3``; anything else (``"a"``, ``1.5``, ``True``) raises :class:`DataError`."""
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return int(seed)
    if isinstance(seed, str):
        try:
            return int(seed.strip())
        except ValueError:
            pass
    raise DataError(f"seed {seed!r} is not an integer; give seeds like 0,1,2")


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` → ``[0, 1, 2]`` (a comma-separated list, as ``pathseg splits --seeds`` takes)."""
    items = [s.strip() for s in str(text).split(",")]
    if not any(items):
        raise DataError(f"seeds {text!r}: expected comma-separated integers, e.g. 0,1,2")
    try:
        return [as_seed(s) for s in items]
    except DataError:
        raise DataError(f"seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None


def fraction_tag(fraction: float | str | Fraction) -> str:
    """File-name form: ``1/8`` → ``"1-8"``, ``1`` → ``"1-1"``."""
    f = as_fraction(fraction)
    return f"{f.numerator}-{f.denominator}"


def split_path(dataset: str, fraction: float | str | Fraction, seed: int, root: str | os.PathLike = SPLITS_DIR) -> Path:
    """``root/<dataset>/<a-b>_seed<seed>.json``."""
    return Path(root) / dataset / f"{fraction_tag(fraction)}_seed{as_seed(seed)}.json"


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def make_split(
    ids: Sequence[str],
    fraction: float | str | Fraction,
    seed: int,
    groups: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Choose the labelled subset of ``ids`` (by image, or by whole group when ``groups`` is given).

    Shape:
        ``ids``: N unique strings; ``groups``: N group names aligned with ``ids`` (or None).
        Returns ``{"fraction": float, "seed": int, "by": "image"|"source", "labeled": [...], "unlabeled": [...]}``
        with both lists sorted and together equal to ``ids``.

    Example:
        >>> s = make_split(["a", "b", "c", "d"], 0.5, seed=1, groups=["x", "x", "y", "y"])
        >>> s["labeled"] in (["a", "b"], ["c", "d"])
        True
    """
    f = as_fraction(fraction)
    seed = as_seed(seed)
    ids = [str(i) for i in ids]
    if not ids:
        raise DataError("cannot split an empty id list; check the dataset root and split")
    if len(set(ids)) != len(ids):
        raise DataError("ids must be unique to split them")
    rng = random.Random(int(seed))
    n = len(ids)
    target = max(1, _round_half_up(n * float(f)))
    if groups is None:
        order = sorted(ids)
        rng.shuffle(order)
        labeled = set(order[:target])
        by = "image"
    else:
        if len(groups) != n:
            raise DataError(f"groups has {len(groups)} entries for {n} ids; give one group per id")
        members: dict[str, list[str]] = {}
        for i, g in zip(ids, groups):
            members.setdefault(str(g), []).append(i)
        names = sorted(members)
        rng.shuffle(names)
        labeled, count, goal = set(), 0, n * float(f)
        for g in names:
            size = len(members[g])
            if count and abs(count + size - goal) >= abs(count - goal):
                continue  # this group would move us away from the goal; try smaller ones
            labeled.update(members[g])
            count += size
        by = "source"
    return {
        "fraction": float(f),
        "seed": int(seed),
        "by": by,
        "labeled": sorted(labeled),
        "unlabeled": sorted(set(ids) - labeled),
    }


def write_split(path: str | os.PathLike, split: dict[str, Any]) -> Path:
    """Write a split dict atomically as JSON (keys in the documented order)."""
    keys = ("dataset", "fraction", "seed", "by", "labeled", "unlabeled", "test")
    missing = [k for k in keys if k not in split]
    if missing:
        raise DataError(f"split for {path} lacks {missing}; build it with make_split and add dataset/test")
    return write_json(path, {k: split[k] for k in keys})


def read_split(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a split file: lists of ids, labelled non-empty, no id on two sides.

    An optional ``"val"`` list holds training images kept out of training for validation
    (``data.val_split=val``, see :func:`pathseg.engine.data.build_dataset`)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split file not found; generate it with `pathseg splits` or make_split_files()")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e}); regenerate the split file") from e
    for k in ("labeled", "unlabeled", "test"):
        if not isinstance(data.get(k), list):
            raise DataError(f"{path}: key {k!r} must be a list of ids")
    if not data["labeled"]:
        raise DataError(f"{path}: no labelled ids; regenerate the split file")
    if "val" in data and not isinstance(data["val"], list):
        raise DataError(f"{path}: key 'val' must be a list of ids")
    sides = {k: set(data.get(k, [])) for k in ("labeled", "unlabeled", "test", "val")}
    both = sorted({i for k1 in sides for k2 in sides if k1 < k2 for i in sides[k1] & sides[k2]})
    if both:
        raise DataError(f"{path}: ids in two of labeled/unlabeled/test/val: {both[:5]}; regenerate the split file")
    return data


def make_split_files(
    dataset_name: str,
    root: str | os.PathLike | None,
    fractions: Iterable[float | str | Fraction],
    seeds: Iterable[int],
    out_dir: str | os.PathLike = SPLITS_DIR,
    by: str = "image",
    **options: Any,
) -> list[Path]:
    """Write ``out_dir/<dataset>/<a-b>_seed<s>.json`` for every fraction x seed; return the paths.

    The training ids come from ``DATASETS.get(dataset_name)(root, split="train", **options)``; the test
    ids from the same with ``split="test"`` when the dataset has one (else ``[]``). ``by="source"``
    groups images by ``meta["source"]`` (the dataset's ``sources`` list).

    Example:
        >>> make_split_files("monuseg", None, ["1/8"], [0], "splits")  # doctest: +SKIP
        [PosixPath('splits/monuseg/1-8_seed0.json')]
    """
    from pathseg.data.base import DATASETS

    if by not in ("image", "source"):
        raise DataError(f"by must be 'image' or 'source', got {by!r}")
    fractions, seeds = [as_fraction(f) for f in fractions], [as_seed(s) for s in seeds]
    cls = DATASETS.get(dataset_name)
    train = cls(root, split="train", **options)
    try:
        test_ids = list(cls(root, split="test", **options).ids)
    except DataError:
        test_ids = []
    groups = None
    if by == "source":
        groups = getattr(train, "sources", None)
        if groups is None:
            groups = [train.load(i)["meta"]["source"] for i in range(len(train))]
        if not any(groups):
            raise DataError(f"{dataset_name}: images carry no source/centre; split by='image' instead")
    paths = []
    for f in fractions:
        for s in seeds:
            split = make_split(train.ids, f, s, groups)
            split = {"dataset": dataset_name, **split, "test": sorted(test_ids)}
            paths.append(write_split(split_path(dataset_name, f, s, out_dir), split))
    return paths


def generate_monuseg_splits(
    out_dir: str | os.PathLike = SPLITS_DIR, root: str | os.PathLike | None = None
) -> list[Path]:
    """The committed MoNuSeg splits: fractions 1, 1/8, 1/16, 1/32 x seeds 0, 1, 2 over the 30 train ids."""
    return make_split_files("monuseg", root, MONUSEG_FRACTIONS, MONUSEG_SEEDS, out_dir, by="image")
