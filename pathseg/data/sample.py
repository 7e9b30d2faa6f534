"""Moved: the sample contract is :mod:`pathseg.sample` (beside errors and registry, below every layer that uses it).

This name stays for old imports (``from pathseg.data.sample import IGNORE_INDEX``).
"""

from pathseg.sample import IGNORE_INDEX, Meta, Sample, collate, make_sample  # noqa: F401

__all__ = ["IGNORE_INDEX", "Meta", "Sample", "collate", "make_sample"]
