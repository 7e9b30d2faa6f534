"""Whole-slide inference: backends (PyTorch, ONNX Runtime, OpenVINO), the slide predictor, stitching into zarr,
and the per-slide writers (label pyramid, GeoJSON, overlay, composition CSV, run record)."""

from pathseg.inference.backends import BACKENDS, Backend, OnnxBackend, OpenVinoBackend, TorchBackend, load_backend
from pathseg.inference.predictor import NoTissueError, PredictConfig, SlidePredictor
from pathseg.inference.stitch import BLENDS, Stitcher

__all__ = [
    "BACKENDS", "BLENDS", "Backend", "NoTissueError", "OnnxBackend", "OpenVinoBackend", "PredictConfig", "SlidePredictor",
    "Stitcher", "TorchBackend", "load_backend",
]
