"""Inference backends: a callable from a batch of uint8 tiles to class probabilities.

``torch`` runs the SegModel in inference mode, channels_last on CPU, on CUDA when present (fp16
autocast there). ``onnx`` runs an exported graph (:mod:`pathseg.inference.onnx`) with ONNX Runtime on
CPU. Both normalise with the checkpoint's mean/std and apply softmax, so they are interchangeable.
A checkpoint trained on stain-normalised images carries the fitted normaliser (``info["stain"]``);
both backends then normalise each tile to the training reference first (``stain_norm=False``: off),
leaving tiles with too little tissue, or one colour only, unchanged.

A model that reads the context around each tile (HookNet, ``context_from_image``) runs in torch only:
its backend has ``context_ratio`` r set, and each call takes the tiles' *contexts* too -- the
``r·tile`` px region around each tile's centre at r× the MPP (what
:class:`pathseg.inference.predictor.TileDataset` reads). ``backend="auto"`` picks torch for it; ONNX
export is refused (one input only).

Pick one with :func:`load_backend` (``backend="auto"`` takes :data:`DEFAULT_BACKEND`, the one that was
faster on the benchmark machine, see benchmarks/results/wsi_inference.md).

Example:
    >>> be = load_backend("model.ckpt", backend="torch")
    >>> probs = be(np.zeros((2, 512, 512, 3), np.uint8))   # (2, K, 512, 512) float32

Shape:
    __call__((N, H, W, 3) uint8) -> (N, K, H, W) float32 probabilities summing to 1 over K.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pathseg.errors import ConfigError, DataError
from pathseg.registry import Registry

BACKENDS: Registry = Registry("inference backend")

#: The default for backend="auto": ONNX Runtime, measured faster than PyTorch on CPU here
#: (benchmarks/results/wsi_inference.md); on CUDA machines "auto" means torch.
DEFAULT_CPU_BACKEND = "onnx"


def cpu_threads() -> int:
    """Cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Backend:
    name = "base"
    info: dict[str, Any]
    device: str = "cpu"
    stain: Any = None  # the checkpoint's fitted stain normaliser, applied to each tile first; None: off
    context_ratio: int | None = None  # r: the model also takes each tile's context at r x the MPP; None: tiles only

    def __call__(self, batch: np.ndarray, context: np.ndarray | None = None) -> np.ndarray:
        raise NotImplementedError

    def _load_stain(self, source: Any, enabled: bool) -> None:
        from pathseg.transforms.stain import normalizer_from_state

        self.stain = normalizer_from_state(self.info.get("stain"), source, fallback="identity") if enabled else None

    def _stain_normalise(self, batch: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Each (H, W, 3) uint8 tile of the batch recoloured to the training reference (unchanged when off)."""
        if self.stain is None:
            return batch
        return np.stack([self.stain.transform(tile) for tile in np.asarray(batch)])

    @property
    def num_classes(self) -> int:
        return int(self.info["num_classes"]) if "num_classes" in self.info else len(self.info["class_names"])


def context_ratio_of(model: torch.nn.Module) -> int | None:
    """r for a model that also takes each tile's context at r x the MPP (HookNet), else None."""
    return int(model.ratio) if getattr(model, "context_from_image", False) else None


class NeedsContextError(ConfigError):
    """The model reads each tile's context (HookNet), which an ONNX graph of one input cannot take."""


def refuse_context_models(model: torch.nn.Module) -> None:
    """Raise for a model that needs the context around each tile (HookNet): an ONNX graph takes tiles only."""
    if context_ratio_of(model):
        raise NeedsContextError(
            f"{getattr(model, 'name', type(model).__name__)}: ONNX export is not supported for a model that reads "
            "the context around each tile (two inputs); run it with --backend torch (the default for it)"
        )


class TorchBackend(Backend):
    """A SegModel in eval + inference mode; channels_last on CPU; CUDA (fp16 autocast) when available."""

    name = "torch"

    def __init__(self, model: torch.nn.Module, info: dict[str, Any], *, device: str | None = None,
                 threads: int | None = None, stain_norm: bool = True, source: Any = "the checkpoint") -> None:
        self.info = info
        self.context_ratio = context_ratio_of(model)
        self._load_stain(source, stain_norm)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if self.device == "cpu":
            torch.set_num_threads(threads or cpu_threads())
        self.model = model.eval().to(self.device).to(memory_format=torch.channels_last)
        def stat(key: str, default: float) -> torch.Tensor:
            v = torch.tensor(info.get(key, (default,) * 3), dtype=torch.float32, device=self.device)
            return v.view(1, 3, 1, 1) * 255

        self.mean, self.std = stat("mean", 0.0), stat("std", 1.0)

    def _input(self, batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(self._stain_normalise(batch)).to(self.device, non_blocking=True)
        x = x.permute(0, 3, 1, 2).float()
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    def __call__(self, batch: np.ndarray | torch.Tensor, context: np.ndarray | torch.Tensor | None = None) -> np.ndarray:
        if self.context_ratio and context is None:
            raise ConfigError(f"{self.info.get('model')}: this model needs each tile's context (at "
                              f"{self.context_ratio}x the MPP) as well as the tile")
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16,
                                                    enabled=self.device.startswith("cuda")):
            x = self._input(batch)
            logits = self.model(x, self._input(context))["target"] if self.context_ratio else self.model(x)
            return torch.softmax(logits.float(), dim=1).cpu().numpy()


class OnnxBackend(Backend):
    """An exported ONNX graph (normalisation outside, softmax inside) run by ONNX Runtime on CPU."""

    name = "onnx"

    def __init__(self, onnx_path: str | os.PathLike, *, threads: int | None = None, stain_norm: bool = True,
                 source: Any = None) -> None:
        import onnxruntime as ort

        from pathseg.inference.onnx import read_onnx_info

        self.path = Path(onnx_path)
        self.info = read_onnx_info(self.path)
        self._load_stain(source or self.path, stain_norm)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or cpu_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.enable_cpu_mem_arena = False  # measured: U-Net batch 4 at 512 px peaks at 0.6 GB instead of 1.05 GB
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise DataError(f"{self.path}: ONNX Runtime cannot load this model ({e}); "
                            f"re-export it with `pathseg export-onnx`") from e
        self.input_name = self.session.get_inputs()[0].name
        self.mean = (np.asarray(self.info.get("mean", (0, 0, 0)), np.float32) * 255).reshape(1, 3, 1, 1)
        self.inv_std = (1.0 / (np.asarray(self.info.get("std", (1, 1, 1)), np.float32) * 255)).reshape(1, 3, 1, 1)

    def __call__(self, batch: np.ndarray | torch.Tensor, context: np.ndarray | None = None) -> np.ndarray:
        x = np.asarray(self._stain_normalise(batch)).transpose(0, 3, 1, 2).astype(np.float32)
        x = np.ascontiguousarray((x - self.mean) * self.inv_std)
        return self.session.run(None, {self.input_name: x})[0]


BACKENDS.register("torch", TorchBackend)
BACKENDS.register("onnx", OnnxBackend)


def resolve_backend_name(backend: str) -> str:
    if backend == "auto":
        return "torch" if torch.cuda.is_available() else DEFAULT_CPU_BACKEND
    BACKENDS.get(backend)  # raises with the valid names
    return backend


def load_backend(checkpoint: str | os.PathLike, *, backend: str = "auto", cache_dir: str | os.PathLike | None = None,
                 tile: int = 512, device: str | None = None, threads: int | None = None,
                 stain_norm: bool = True) -> Backend:
    """A backend for ``checkpoint`` (.ckpt/.pt pathseg checkpoint, or an exported .onnx).

    With ``backend="onnx"`` and a torch checkpoint, the model is exported once to
    ``cache_dir/<checkpoint stem>-<hash>.onnx`` (default: the user's cache, see
    :func:`pathseg.inference.onnx.cached_export`).
    ``backend="auto"``: ONNX Runtime on CPU (``device="cpu"``, or no CUDA), torch on CUDA and for models
    that read each tile's context. ``stain_norm=False`` skips the checkpoint's stain normalisation.
    """
    checkpoint = Path(checkpoint)
    name = DEFAULT_CPU_BACKEND if backend == "auto" and device == "cpu" else resolve_backend_name(backend)
    if checkpoint.suffix == ".onnx":
        if name != "onnx":
            if backend != "auto":
                raise ConfigError(f"{checkpoint}: an .onnx model runs only with backend 'onnx', not {backend!r}")
            name = "onnx"
        return OnnxBackend(checkpoint, threads=threads, stain_norm=stain_norm)
    if name == "onnx":
        from pathseg.inference.onnx import cached_export

        try:  # a cached export is used without loading the checkpoint
            return OnnxBackend(cached_export(checkpoint, cache_dir=cache_dir, tile=tile), threads=threads,
                               stain_norm=stain_norm, source=checkpoint)
        except NeedsContextError:
            if backend != "auto":
                raise
            # the ONNX graph takes the tile only; a context model (HookNet) runs in torch
    from pathseg.engine.checkpoint import load_model

    model, info = load_model(checkpoint)
    return TorchBackend(model, info, device=device, threads=threads, stain_norm=stain_norm, source=checkpoint)
