"""Moved: image prediction is :mod:`pathseg.inference.images` (this name stays for old imports)."""

from pathseg.inference.batch import stain_note  # noqa: F401
from pathseg.inference.images import predict_images  # noqa: F401
