"""Segmentation models: one factory (``create_model``) over one registry of decoders and encoders.

Importing this package registers every model family (smp decoders, ``cam`` and ``<decoder>_gated``,
``segcls``, ``unet_tconv``/``unetplusplus_tconv``, ``hooknet``, the ``vit`` encoder family), whatever module
was imported first, so any checkpoint can be rebuilt by name (:mod:`pathseg.models.checkpoint`) without
importing a training method.
"""

from pathseg.models.factory import DECODERS, ENCODERS, NETWORKS, SegModel, create_model, load_encoder_weights
from pathseg.models import cam, cells, segcls, tconv  # noqa: F401,E402  (register cam, cells, <decoder>_gated, segcls, *_tconv)
from pathseg.models.hooknet import build_hooknet  # noqa: E402

NETWORKS.register("hooknet", build_hooknet)

from pathseg.models.factory import ENCODER_FAMILIES  # noqa: E402
from pathseg.models.vit import VIT_FAMILY  # noqa: E402

ENCODER_FAMILIES.register("vit", VIT_FAMILY)

from pathseg.models.checkpoint import load_model, save_model_checkpoint  # noqa: E402

__all__ = ["DECODERS", "ENCODERS", "NETWORKS", "SegModel", "create_model", "load_encoder_weights", "load_model",
           "save_model_checkpoint"]
