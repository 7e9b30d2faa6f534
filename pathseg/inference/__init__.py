"""Whole-slide inference: backends (PyTorch, ONNX Runtime), the slide predictor, stitching into zarr,
and the per-slide writers (label pyramid, GeoJSON, overlay, composition CSV, run record)."""

from pathseg.inference.backends import BACKENDS, Backend, OnnxBackend, TorchBackend, load_backend
from pathseg.inference.predictor import NoTissueError, PredictConfig, SlidePredictor
from pathseg.inference.stitch import BLENDS, Stitcher

__all__ = [
    "BACKENDS", "BLENDS", "Backend", "NoTissueError", "OnnxBackend", "PredictConfig", "SlidePredictor",
    "Stitcher", "TorchBackend", "load_backend",
]
