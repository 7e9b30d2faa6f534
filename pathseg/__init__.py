"""pathseg: label-efficient semantic segmentation of H&E histology, from tiles to whole slides."""

__version__ = "0.1.0"
