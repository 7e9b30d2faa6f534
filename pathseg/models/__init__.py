"""Segmentation models: one factory (``create_model``) over one registry of decoders and encoders.

Importing this package registers every model family, so any checkpoint can be rebuilt by name.
"""

from pathseg.models.factory import DECODERS, ENCODERS, SegModel, create_model, load_encoder_weights
from pathseg.models import cam, segcls  # noqa: F401,E402  (register "cam", "<decoder>_gated", "segcls")

__all__ = ["DECODERS", "ENCODERS", "SegModel", "create_model", "load_encoder_weights"]
