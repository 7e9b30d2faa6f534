"""Self-supervised pretraining on unlabelled tissue: ``simsiam`` and ``dsf`` (DSF-WSI), plus HookNet fine-tuning.

    pathseg pretrain -c configs/ssl/dsf.yaml           # -> runs/ssl/dsf/encoder.safetensors + encoder.json
    pathseg train -c ... model.weights=runs/ssl/dsf/encoder.safetensors

Importing this package registers ``simsiam``, ``dsf`` and ``hooknet`` in ``METHODS``.
"""

from pathseg.methods.ssl.dsf import CTFM, DSF, draw_jigsaw, kept_targets, masked_jigsaw
from pathseg.methods.ssl.hooknet import HookNetMethod
from pathseg.methods.ssl.simsiam import (PredictionMLP, ProjectionMLP, SimSiam, SimSiamHead, SSLMethod,
                                         scaled_lr)

__all__ = ["CTFM", "DSF", "HookNetMethod", "PredictionMLP", "ProjectionMLP", "SSLMethod", "SimSiam", "SimSiamHead",
           "draw_jigsaw", "kept_targets", "masked_jigsaw", "scaled_lr"]
