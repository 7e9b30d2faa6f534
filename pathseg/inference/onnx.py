"""ONNX export of a trained SegModel, self-describing for deployment, and the ONNX Runtime session it runs in.

The graph takes normalised float32 images ``(N, 3, H, W)`` (dynamic N, H, W; H and W multiples of 32
for U-Net/ResNet encoders) and returns class probabilities (softmax included). The checkpoint's
``pathseg`` info (class names, colours, MPP, mean/std, the stain normaliser's state, and for a quantised
graph ``precision: "int8"`` with its calibration) is stored as JSON in the model's metadata under the
key ``pathseg``, so an .onnx file is enough to run ``pathseg predict --checkpoint model.onnx``.

This module is the lower of the two ONNX modules of :mod:`pathseg.inference`: :mod:`.quantize` and
:mod:`.backends` import it, it imports neither. It imports torch and the ``onnx`` package only inside the
functions that export (a prediction from an .onnx needs neither: :func:`open_session` reads the metadata
through ONNX Runtime).

Session settings (:class:`SessionSettings`) are the ones measured fastest on the benchmark machine
(benchmarks/results/wsi_inference.md, "ONNX Runtime session options"), not assumed.

Example:
    >>> export_onnx("model.ckpt", "model.onnx")
    >>> read_onnx_info("model.onnx")["class_names"]
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pathseg.errors import ConfigError, DataError
from pathseg.io.files import atomic_path

ONNX_OPSET = 17
META_KEY = "pathseg"


def cpu_threads() -> int:
    """Cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# ------------------------------------------------------------------------------------------------
# models that read each tile's context (HookNet) cannot be exported: one input only
# ------------------------------------------------------------------------------------------------

def context_ratio_of(model: Any) -> int | None:
    """r for a model that also takes each tile's context at r x the MPP (HookNet), else None."""
    return int(model.ratio) if getattr(model, "context_from_image", False) else None


class NeedsContextError(ConfigError):
    """The model reads each tile's context (HookNet), which an ONNX graph of one input cannot take."""


def refuse_context_models(model: Any) -> None:
    """Raise for a model that needs the context around each tile (HookNet): an ONNX graph takes tiles only."""
    if context_ratio_of(model):
        raise NeedsContextError(
            f"{getattr(model, 'name', type(model).__name__)}: ONNX export is not supported for a model that reads "
            "the context around each tile (two inputs); run it with --backend torch (the default for it)"
        )


# ------------------------------------------------------------------------------------------------
# export
# ------------------------------------------------------------------------------------------------

def _with_softmax(model: Any) -> Any:
    import torch

    class WithSoftmax(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.model = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.model(x), dim=1)

    return WithSoftmax(model.eval().cpu()).eval()


def export_model_onnx(model: Any, info: dict[str, Any], path: str | os.PathLike, *, tile: int = 512,
                      opset: int = ONNX_OPSET, check: bool = True) -> Path:
    """Export ``model`` (with softmax) to ``path`` atomically; ``info`` goes into the metadata.

    With ``check``, ONNX Runtime's output on a random tile is compared to PyTorch's (max abs diff
    1e-4 on probabilities) before the file is kept.
    """
    import onnx
    import torch

    refuse_context_models(model)
    path = Path(path)
    wrapped = _with_softmax(model)
    x = torch.rand(1, 3, tile, tile)
    info = {**info, "precision": info.get("precision", "fp32")}
    with atomic_path(path) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # legacy-exporter deprecation and tracer notes
            torch.onnx.export(
                wrapped, (x,), str(tmp), dynamo=False, opset_version=opset, input_names=["image"],
                output_names=["probabilities"],
                dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"},
                              "probabilities": {0: "batch", 2: "height", 3: "width"}},
            )
        proto = onnx.load(str(tmp))
        set_info(proto, info)
        proto.producer_name = "pathseg"
        onnx.save(proto, str(tmp))
        if check:
            import onnxruntime as ort

            sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            got = sess.run(None, {"image": x.numpy()})[0]
            with torch.inference_mode():
                want = wrapped(x).numpy()
            err = float(abs(got - want).max())
            if err > 1e-4:
                raise DataError(
                    f"ONNX export of {info.get('model')} differs from PyTorch by {err:.2e} (> 1e-4); not kept")
    return path


def export_onnx(checkpoint: str | os.PathLike, path: str | os.PathLike, *, tile: int = 512,
                opset: int = ONNX_OPSET) -> Path:
    """Export a pathseg checkpoint to ONNX (see the module docstring)."""
    from pathseg.models.checkpoint import load_model

    model, info = load_model(checkpoint)
    return export_model_onnx(model, dict(info), path, tile=tile, opset=opset)


def set_info(proto: Any, info: dict[str, Any]) -> None:
    """Store ``info`` as the model's ``pathseg`` metadata (replacing an earlier entry)."""
    for i in reversed(range(len(proto.metadata_props))):
        if proto.metadata_props[i].key == META_KEY:
            del proto.metadata_props[i]
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(info)


def _varint(buf: Any, i: int) -> tuple[int, int]:
    """The protobuf base-128 varint at ``buf[i]``, and the offset after it."""
    shift = out = 0
    while True:
        b = buf[i]
        i += 1
        out |= (b & 0x7F) << shift
        if b < 0x80:
            return out, i
        shift += 7


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX model, read from the file's top-level protobuf fields (memory-mapped:
    the graph's bytes are stepped over, never read) without the ``onnx`` package, whose import costs more
    than the whole read.

    ModelProto's field 14 is ``repeated StringStringEntryProto metadata_props``; an entry has ``key`` (1)
    and ``value`` (2), both length-delimited strings (onnx.proto3).
    """
    import mmap

    path = Path(path)
    meta: dict[str, str] = {}
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise DataError(f"{path}: empty file, not an ONNX model; export it with `pathseg export-onnx CKPT`")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            try:
                i = 0
                while i < len(buf):
                    tag, i = _varint(buf, i)
                    field, wire = tag >> 3, tag & 7
                    if wire == 0:
                        _, i = _varint(buf, i)
                    elif wire in (1, 5):
                        i += 8 if wire == 1 else 4
                    elif wire == 2:
                        n, i = _varint(buf, i)
                        if field == 14:
                            kv, e, end = {}, i, i + n
                            while e < end:
                                t, e = _varint(buf, e)
                                ln, e = _varint(buf, e)
                                kv[t >> 3] = bytes(buf[e:e + ln]).decode("utf-8")
                                e += ln
                            meta[kv.get(1, "")] = kv.get(2, "")
                        i += n
                    else:
                        raise ValueError(f"protobuf wire type {wire}")
                if i > len(buf):
                    raise IndexError("past the end")
            except (IndexError, ValueError) as e:  # UnicodeDecodeError is a ValueError
                raise DataError(f"{path}: not a readable ONNX model ({e}); export it with "
                                "`pathseg export-onnx CKPT`") from e
    return meta


def read_onnx_info(path: str | os.PathLike) -> dict[str, Any]:
    """The ``pathseg`` info stored in an exported model (class names, colours, MPP, mean/std, stain, precision),
    read by :func:`read_onnx_metadata` (no graph loaded, no ``onnx`` import)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: ONNX model not found")
    meta = read_onnx_metadata(path)
    if META_KEY not in meta:
        raise DataError(f"{path}: this ONNX model has no pathseg metadata; export it with `pathseg export-onnx CKPT`")
    return json.loads(meta[META_KEY])


# ------------------------------------------------------------------------------------------------
# ONNX Runtime sessions
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SessionSettings:
    """ONNX Runtime CPU session options, as measured (benchmarks/wsi_inference.py ``--plan session-options``).

    Args:
        threads: intra-op threads (None: the cores this process may use).
        arena: ONNX Runtime's CPU memory arena. On: buffers are reused between batches (no page faults on
            every batch's activations); off: each run allocates and frees them.
        mem_pattern: ONNX Runtime's memory pattern (one block planned per input shape). With the arena it
            holds that block beside the arena's own chunks: on the U-Net at batch 8, 1.98 GB peak against
            1.28 GB with the arena alone (measured); so off by default.
        spinning: intra-op threads spin while waiting for work. Off leaves the cores to the tile reader and
            stitcher threads between operators; None keeps ONNX Runtime's default (on).
        affinity: pin the intra-op threads to cores (``session.intra_op_thread_affinities``).
    """

    threads: int | None = None
    arena: bool = True
    mem_pattern: bool = False
    spinning: bool | None = None
    affinity: bool = False

    def options(self) -> Any:
        import onnxruntime as ort

        threads = self.threads or cpu_threads()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.enable_cpu_mem_arena = self.arena
        opts.enable_mem_pattern = self.mem_pattern
        if self.spinning is not None:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.spinning else "0")
        if self.affinity and threads > 1:
            try:
                cores = sorted(os.sched_getaffinity(0))
            except AttributeError:
                cores = list(range(os.cpu_count() or threads))
            # thread 0 is the caller's; the others get one core each (1-based logical processor ids)
            opts.add_session_config_entry("session.intra_op_thread_affinities",
                                          ";".join(str(c + 1) for c in cores[1:threads]))
        return opts


def open_session(path: str | os.PathLike, settings: SessionSettings | None = None) -> tuple[Any, dict[str, Any]]:
    """An ONNX Runtime CPU session for ``path`` and the model's ``pathseg`` info (read through the session).

    Raises :class:`DataError` for a file that is missing, not ONNX, or lacks the pathseg metadata.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: ONNX model not found")
    settings = settings or SessionSettings()
    try:
        session = ort.InferenceSession(str(path), settings.options(), providers=["CPUExecutionProvider"])
    except Exception as e:
        raise DataError(f"{path}: ONNX Runtime cannot load this model ({e}); "
                        f"re-export it with `pathseg export-onnx`") from e
    meta = session.get_modelmeta().custom_metadata_map
    if META_KEY not in meta:
        raise DataError(f"{path}: this ONNX model has no pathseg metadata; export it with `pathseg export-onnx CKPT`")
    return session, json.loads(meta[META_KEY])


class InputNormaliser:
    """uint8 tiles (N, H, W, 3) -> the float32 model input (N, 3, H, W): ``(x - 255·mean) / (255·std)``.

    Done with one 256-entry table per channel (the same float32 arithmetic as the formula, so the same
    values), written straight into NCHW: one pass over the batch instead of transpose, cast, subtract and
    multiply. Thread-safe (the tile reader thread calls it).

    Shape:
        __call__((N, H, W, 3) uint8) -> (N, 3, H, W) float32, C-contiguous.
    """

    def __init__(self, mean: Any, std: Any) -> None:
        m = (np.asarray(mean, np.float32) * 255).reshape(3)
        inv = (1.0 / (np.asarray(std, np.float32) * 255)).reshape(3)
        v = np.arange(256, dtype=np.float32)
        self.tables = [((v - m[c]) * inv[c]).astype(np.float32) for c in range(3)]

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        if batch.dtype != np.uint8:
            raise DataError(f"model input: expected uint8 tiles, got {batch.dtype}")
        n, h, w, _ = batch.shape
        out = np.empty((n, 3, h, w), np.float32)
        for c in range(3):
            out[:, c] = self.tables[c][batch[..., c]]
        return out


# ------------------------------------------------------------------------------------------------
# caching
# ------------------------------------------------------------------------------------------------

def file_digest(path: str | os.PathLike, n: int = 12) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:n]


def user_cache_dir() -> Path:
    """``$PATHSEG_CACHE``, else ``$XDG_CACHE_HOME/pathseg``, else ``~/.cache/pathseg``."""
    if os.environ.get("PATHSEG_CACHE"):
        return Path(os.environ["PATHSEG_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "pathseg"


def cached_file(name: str, make: Callable[[Path], Path], *, cache_dir: str | os.PathLike | None = None,
                beside: Path | None = None) -> Path:
    """``name`` in the first of: ``beside`` (when no ``cache_dir`` is given), ``cache_dir``, the user's cache
    (:func:`user_cache_dir` ``/onnx``), the system's temporary folder; made with ``make(target)`` in the
    first writable one when none holds it."""
    if cache_dir is None and beside is not None and (beside / name).is_file():
        return beside / name
    candidates = [Path(cache_dir)] if cache_dir is not None else []
    candidates += [user_cache_dir() / "onnx", Path(tempfile.gettempdir()) / "pathseg-onnx"]
    for folder in candidates:
        target = folder / name
        if target.is_file():
            return target
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if os.access(folder, os.W_OK):
                return make(target)
        except OSError:
            continue
    raise DataError(f"{name}: no writable folder for the ONNX model; pass cache_dir or use --backend torch")


def cached_export(checkpoint: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                  tile: int = 512, digest: str | None = None) -> Path:
    """Export ``checkpoint`` once and reuse the .onnx (keyed by the checkpoint's content hash).

    Where: ``cache_dir`` if given, else one cache per user (:func:`user_cache_dir`), else the system's
    temporary folder; an export already beside the checkpoint is used too. ``digest``: the checkpoint's
    :func:`file_digest`, when the caller has it already.
    """
    checkpoint = Path(checkpoint)
    digest = digest or file_digest(checkpoint)
    return cached_file(f"{checkpoint.stem}-{digest}.onnx", lambda target: export_onnx(checkpoint, target, tile=tile),
                       cache_dir=cache_dir, beside=checkpoint.parent)


__all__ = ["META_KEY", "ONNX_OPSET", "InputNormaliser", "NeedsContextError", "SessionSettings", "cached_export",
           "cached_file", "context_ratio_of", "cpu_threads", "export_model_onnx", "export_onnx", "file_digest",
           "open_session", "read_onnx_info", "refuse_context_models", "set_info", "user_cache_dir"]
