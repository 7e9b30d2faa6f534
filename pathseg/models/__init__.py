"""Segmentation models: one factory (``create_model``) over one registry of decoders and encoders.

Importing this package registers every model family, so any checkpoint can be rebuilt by name.
"""

from pathseg.models.factory import DECODERS, ENCODERS, NETWORKS, SegModel, create_model, load_encoder_weights
from pathseg.models import cam, segcls  # noqa: F401,E402  (register "cam", "<decoder>_gated", "segcls")


def _hooknet(**kw):  # imported when called: pathseg.models.hooknet also defines its method (pathseg.methods)
    from pathseg.models.hooknet import build_hooknet

    return build_hooknet(**kw)


NETWORKS.register("hooknet", _hooknet)

from pathseg.models.factory import ENCODER_FAMILIES  # noqa: E402
from pathseg.models.vit import VIT_FAMILY  # noqa: E402

ENCODER_FAMILIES.register("vit", VIT_FAMILY)

__all__ = ["DECODERS", "ENCODERS", "NETWORKS", "SegModel", "create_model", "load_encoder_weights"]
