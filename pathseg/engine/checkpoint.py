"""Moved: checkpoint save/load is :mod:`pathseg.models.checkpoint`, beside the models (this name stays for old imports).

Importing it no longer imports Lightning or the training methods.
"""

from pathseg.models.checkpoint import (  # noqa: F401
    default_colors,
    load_model,
    model_info,
    rebuild_options,
    save_model_checkpoint,
)

__all__ = ["default_colors", "load_model", "model_info", "rebuild_options", "save_model_checkpoint"]
