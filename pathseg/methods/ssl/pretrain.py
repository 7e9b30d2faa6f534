"""Moved: the pretraining driver is :mod:`pathseg.engine.pretrain` (it runs the Lightning trainer, so it sits in
the engine, above the methods it trains). This name stays for ``benchmarks/ssl_pretrain.py``; see
``tests/test_layers.py`` (ALLOWED_UPWARD) for when it goes.
"""

from pathseg.engine.pretrain import (  # noqa: F401
    SSL_METHODS,
    EncoderSnapshots,
    build_pretrain_loader,
    build_pretrain_method,
    lr_record,
    pretrain,
    snapshot_dir,
)

__all__ = ["SSL_METHODS", "EncoderSnapshots", "build_pretrain_loader", "build_pretrain_method", "lr_record",
           "pretrain", "snapshot_dir"]
