"""Inference backends: a callable from a batch of uint8 tiles to class probabilities.

``torch`` runs the SegModel in inference mode, channels_last on CPU, on CUDA when present (fp16 or bf16
autocast there, tiles copied from pinned memory). ``onnx`` runs an exported graph
(:mod:`pathseg.inference.onnx`), fp32 or INT8 (:mod:`pathseg.inference.quantize`), with ONNX Runtime on
CPU; ``openvino`` compiles the same graph with OpenVINO (fp32 at f32, INT8 on its int8 kernels). All
normalise with the checkpoint's mean/std and apply softmax, so they are interchangeable.
A checkpoint trained on stain-normalised images carries the fitted normaliser (``info["stain"]``);
both backends then normalise each tile to the training reference first (``stain_norm=False``: off),
leaving tiles with too little tissue, or one colour only, unchanged.

A call is two steps, so the slide predictor can run them on different threads: :meth:`Backend.prepare`
(stain normalisation and the model's input; numpy, thread-safe, run by the tile reader while the model
works on the batch before) and :meth:`Backend.run` (the model). ``backend(batch)`` does both.

Precision (``precision=``; the run record names it): "fp32"; "fp16" and "bf16" (autocast, CUDA only);
"int8" (ONNX Runtime static quantisation, CPU; the INT8 graph runs in ONNX Runtime or OpenVINO); "auto":
fp16 on CUDA, else fp32, or what an .onnx file says it is.

A model that reads the context around each tile (HookNet, ``context_from_image``) runs in torch only:
its backend has ``context_ratio`` r set, and each call takes the tiles' *contexts* too -- the
``r·tile`` px region around each tile's centre at r× the MPP (what
:class:`pathseg.inference.predictor.TileDataset` reads). ``backend="auto"`` picks torch for it; ONNX
export is refused (one input only).

Pick one with :func:`load_backend` (``backend="auto"`` takes :data:`DEFAULT_CPU_BACKEND` on CPU, the one
that was faster on the benchmark machine, see benchmarks/results/wsi_inference.md; if OpenVINO cannot
compile a graph, "auto" runs it in ONNX Runtime with a warning). Torch is imported only by the torch
backend (and by an export), so predicting from an exported graph does not pay for it.

Example:
    >>> be = load_backend("model.ckpt", backend="torch")
    >>> probs = be(np.zeros((2, 512, 512, 3), np.uint8))   # (2, K, 512, 512) float32

Shape:
    __call__((N, H, W, 3) uint8) -> (N, K, H, W) float32 probabilities summing to 1 over K.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from pathseg.errors import ConfigError, DataError
from pathseg.inference.onnx import (  # noqa: F401  (context helpers and cpu_threads: their old home was here)
    InputNormaliser,
    NeedsContextError,
    SessionSettings,
    cached_export,
    context_ratio_of,
    cpu_threads,
    file_digest,
    open_session,
    refuse_context_models,
)
from pathseg.registry import Registry

BACKENDS: Registry = Registry("inference backend")

#: The default for backend="auto" on CPU: OpenVINO where it is installed (a dependency of pathseg), else ONNX
#: Runtime; both were measured faster than PyTorch on CPU here, and OpenVINO faster than ONNX Runtime in fp32
#: and INT8 (benchmarks/results/wsi_inference.md). On CUDA machines "auto" means torch.
DEFAULT_CPU_BACKEND = "openvino" if importlib.util.find_spec("openvino") is not None else "onnx"

#: The backends that run an exported ONNX graph (fp32 or INT8): ONNX Runtime and OpenVINO.
GRAPH_BACKENDS = ("onnx", "openvino")

#: OpenVINO streams (each with its share of the threads) that the tiles are run on; measured on the 2-core
#: benchmark machine when each batch was split in one part per stream (wsi_inference.md, "OpenVINO streams"),
#: U-Net at batch 8 beside a thread keeping a fifth of a core busy: 6.13 tiles/s with 2 streams of 1 thread,
#: 5.90 with 1 stream of 2 (alone: 6.73 and 6.56).
OPENVINO_STREAMS = 2

#: OpenVINO requests queued per stream: one running, one ready to start the moment it ends (fed one tile at a
#: time, the same U-Net at 6.13-6.22 tiles/s beside a busy thread, against 5.82-5.84 with each batch split
#: in one part per stream and 6.05 with one request per stream; measured here, model alone).
OPENVINO_REQUESTS_PER_STREAM = 2

#: What ``precision=`` takes (see the module docstring).
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")


def cuda_available() -> bool:
    """Whether torch sees a CUDA device, without importing torch on a machine that has no NVIDIA driver."""
    if "torch" not in sys.modules:
        if sys.platform == "darwin":
            return False
        if sys.platform.startswith("linux") and not (os.path.exists("/proc/driver/nvidia/version")
                                                     or os.path.exists("/dev/nvidia0")):
            return False
        if sys.platform == "win32" and not os.path.exists(os.path.join(os.environ.get("SystemRoot", r"C:\Windows"),
                                                                        "System32", "nvcuda.dll")):
            return False
    import torch

    return bool(torch.cuda.is_available())


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


class Backend:
    name = "base"
    info: dict[str, Any]
    device: str = "cpu"
    precision: str = "fp32"
    load_s: float | None = None  # seconds load_backend took (export, quantisation, session), for the run record
    stain: Any = None  # the checkpoint's fitted stain normaliser, applied to each tile first; None: off
    context_ratio: int | None = None  # r: the model also takes each tile's context at r x the MPP; None: tiles only

    def prepare(self, batch: np.ndarray, context: np.ndarray | None = None) -> Any:
        """The model's input for ``batch`` (and ``context``): stain normalisation and conversion. Thread-safe."""
        return self.model_input(self._stain_normalise(batch),
                                None if context is None else self._stain_normalise(context))

    def model_input(self, batch: np.ndarray, context: np.ndarray | None = None) -> Any:
        """:meth:`prepare` without the stain normalisation (tiles already normalised)."""
        raise NotImplementedError

    def run(self, prepared: Any) -> np.ndarray:
        """Probabilities (N, K, H, W) float32 for what :meth:`prepare` returned."""
        raise NotImplementedError

    def __call__(self, batch: np.ndarray | None = None, context: np.ndarray | None = None, *,
                 prepared: Any = None) -> np.ndarray:
        """Probabilities for ``batch`` (and ``context``), or for what :meth:`prepare` returned (``prepared``)."""
        return self.run(self.prepare(batch, context) if prepared is None else prepared)

    def map(self, items: Iterable[tuple[Any, Any]]) -> Iterator[tuple[Any, np.ndarray | None]]:
        """``(key, run(prepared))`` for each ``(key, prepared)`` of ``items``, in their order (``prepared`` None:
        ``(key, None)``). A backend that can start the next batch while finishing this one (OpenVINO) does so;
        here, one batch after another."""
        for key, prepared in items:
            yield key, None if prepared is None else self.run(prepared)

    def _load_stain(self, source: Any, enabled: bool) -> None:
        from pathseg.transforms.stain import normalizer_from_state

        self.stain = normalizer_from_state(self.info.get("stain"), source, fallback="identity") if enabled else None

    def _stain_normalise(self, batch: Any) -> np.ndarray:
        """Each (H, W, 3) uint8 tile of the batch recoloured to the training reference (unchanged when off)."""
        batch = np.asarray(batch)
        if self.stain is None:
            return batch
        return np.stack([self.stain.transform(tile) for tile in batch])

    @property
    def num_classes(self) -> int:
        return int(self.info["num_classes"]) if "num_classes" in self.info else len(self.info["class_names"])


class TorchBackend(Backend):
    """A SegModel in eval + inference mode; channels_last on CPU; on CUDA (when available) with fp16 or bf16
    autocast and tiles copied from pinned host memory, uint8 (4x less to copy than float32)."""

    name = "torch"

    def __init__(self, model: Any, info: dict[str, Any], *, device: str | None = None,
                 threads: int | None = None, stain_norm: bool = True, source: Any = "the checkpoint",
                 precision: str = "auto") -> None:
        import torch

        self.info = info
        self.context_ratio = context_ratio_of(model)
        self._load_stain(source, stain_norm)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        cuda = self.device.startswith("cuda")
        precision = check_precision(precision)
        if precision == "auto":
            precision = "fp16" if cuda else "fp32"
        if precision == "int8":
            raise ConfigError("int8 runs in ONNX Runtime or OpenVINO: use --backend onnx or openvino (or auto) with "
                              "--precision int8")
        if precision in ("fp16", "bf16") and not cuda:
            raise ConfigError(f"{precision} autocast is for CUDA devices; on CPU use --precision fp32, or int8 "
                              "(ONNX Runtime)")
        self.precision = precision
        self._autocast = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        if self.device == "cpu":
            torch.set_num_threads(threads or cpu_threads())
        self.model = model.eval().to(self.device).to(memory_format=torch.channels_last)

        def stat(key: str, default: float) -> torch.Tensor:
            v = torch.tensor(info.get(key, (default,) * 3), dtype=torch.float32, device=self.device)
            return v.view(1, 3, 1, 1) * 255

        self.mean, self.std = stat("mean", 0.0), stat("std", 1.0)

    def _host(self, batch: Any) -> Any:
        import torch

        x = torch.as_tensor(np.asarray(batch))
        if self.device.startswith("cuda"):
            x = x.pin_memory()  # torch's caching host allocator reuses the pinned blocks batch after batch
        return x

    def model_input(self, batch: Any, context: Any | None = None) -> tuple[Any, Any]:
        return self._host(batch), None if context is None else self._host(context)

    def _input(self, x: Any) -> Any:
        import torch

        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    def run(self, prepared: tuple[Any, Any]) -> np.ndarray:
        import torch

        x, context = prepared
        if self.context_ratio and context is None:
            raise ConfigError(f"{self.info.get('model')}: this model needs each tile's context (at "
                              f"{self.context_ratio}x the MPP) as well as the tile")
        with torch.inference_mode(), torch.autocast("cuda", dtype=self._autocast or torch.float16,
                                                    enabled=self._autocast is not None):
            xi = self._input(x)
            logits = self.model(xi, self._input(context))["target"] if self.context_ratio else self.model(xi)
            return torch.softmax(logits.float(), dim=1).cpu().numpy()


class OnnxBackend(Backend):
    """An exported ONNX graph, fp32 or INT8 (normalisation outside, softmax inside), run by ONNX Runtime on CPU."""

    name = "onnx"

    def __init__(self, onnx_path: str | os.PathLike, *, threads: int | None = None, stain_norm: bool = True,
                 source: Any = None, settings: SessionSettings | None = None) -> None:
        self.path = Path(onnx_path)
        self.settings = settings or SessionSettings(threads=threads)
        self.session, self.info = open_session(self.path, self.settings)
        self.precision = str(self.info.get("precision", "fp32"))
        self._load_stain(source or self.path, stain_norm)
        self.input_name = self.session.get_inputs()[0].name
        self._normalise = InputNormaliser(self.info.get("mean", (0, 0, 0)), self.info.get("std", (1, 1, 1)))

    def model_input(self, batch: Any, context: Any | None = None) -> np.ndarray:
        return self._normalise(np.asarray(batch))

    def run(self, prepared: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: prepared})[0]


class OpenVinoBackend(OnnxBackend):
    """The same exported ONNX graph, fp32 or INT8 (QDQ), compiled by OpenVINO for the CPU.

    An fp32 graph is compiled with ``INFERENCE_PRECISION_HINT=f32``: on a CPU with AMX or AVX-512 BF16,
    OpenVINO's own default would compute in bf16, which is not the fp32 the run record names. An INT8 graph
    keeps its quantize/dequantize pairs, which OpenVINO runs as int8 kernels (VNNI, and AMX where the CPU
    has it). The graph ends in softmax. Stain normalisation is the ONNX backend's (numpy, before the model).

    Input normalisation is part of the compiled graph (OpenVINO's preprocessing): the model takes the uint8
    tiles (N, H, W, 3) as they are read and computes ``(x - 255·mean) / (255·std)`` in NCHW itself, so
    :meth:`model_input` only checks the batch, and no float copy of it is made on the tile reader's thread.

    With two or more threads the graph runs as ``streams`` streams (default :data:`OPENVINO_STREAMS`; OpenVINO's
    name for independent executors, each with its share of the threads), fed one tile at a time from a queue of
    ``2 x streams`` requests (:data:`OPENVINO_REQUESTS_PER_STREAM`): a stream takes the next tile as soon as it is
    done with one, also across batches in :meth:`map`, so no stream waits at a batch's end for the other, and
    a thread of the tile reader or the stitcher taking a core delays one tile, not the whole batch. Each tile
    gets the same arithmetic whichever stream runs it, so the same probabilities. The compiled graph is kept in
    OpenVINO's model cache (``<user cache>/openvino``), so a second run of the same model skips compilation.
    """

    name = "openvino"

    def __init__(self, onnx_path: str | os.PathLike, *, threads: int | None = None, stain_norm: bool = True,
                 source: Any = None, settings: SessionSettings | None = None, streams: int | None = None) -> None:
        from pathseg.inference.onnx import read_onnx_info, user_cache_dir

        try:
            import openvino as ov
        except ImportError as e:
            raise ConfigError("--backend openvino needs the openvino package: pip install openvino") from e
        self._ov = ov
        self.path = Path(onnx_path)
        self.settings = settings or SessionSettings(threads=threads)
        self.info = read_onnx_info(self.path)
        self.precision = str(self.info.get("precision", "fp32"))
        n_threads = self.settings.threads or cpu_threads()
        self.streams = max(1, min(OPENVINO_STREAMS if streams is None else streams, n_threads))
        config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": str(n_threads),
                  "NUM_STREAMS": str(self.streams),
                  "PERFORMANCE_HINT": "THROUGHPUT" if self.streams > 1 else "LATENCY"}
        core = ov.Core()
        cache = user_cache_dir() / "openvino"
        try:
            cache.mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(cache)})
        except (OSError, RuntimeError):
            pass  # no writable cache: compile every time
        try:
            model = self._with_input_normalisation(core.read_model(str(self.path)))
            self.session = core.compile_model(model, "CPU", config)
        except Exception as e:
            raise DataError(f"{self.path}: OpenVINO cannot compile this model ({e}); re-export it with "
                            "`pathseg export-onnx`, or use --backend onnx") from e
        self.requests = self.streams * OPENVINO_REQUESTS_PER_STREAM
        self._load_stain(source or self.path, stain_norm)

    def _with_input_normalisation(self, model: Any) -> Any:
        """``model`` taking uint8 NHWC tiles: converted to float32, ``- 255·mean``, ``/ 255·std``, to NCHW."""
        from openvino.preprocess import PrePostProcessor

        ov = self._ov
        mean = (np.asarray(self.info.get("mean", (0, 0, 0)), np.float32) * 255).reshape(3)
        std = (np.asarray(self.info.get("std", (1, 1, 1)), np.float32) * 255).reshape(3)
        ppp = PrePostProcessor(model)
        inp = ppp.input()
        inp.tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
        inp.model().set_layout(ov.Layout("NCHW"))
        inp.preprocess().convert_element_type(ov.Type.f32).mean(mean.tolist()).scale(std.tolist())
        return ppp.build()

    def model_input(self, batch: Any, context: Any | None = None) -> np.ndarray:
        """The uint8 tiles themselves (N, H, W, 3), C-contiguous: the graph normalises them."""
        batch = np.asarray(batch)
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[-1] != 3:
            raise DataError(f"model input: expected uint8 tiles (N, H, W, 3), got {batch.dtype} {batch.shape}")
        return np.ascontiguousarray(batch)

    def run(self, prepared: np.ndarray) -> np.ndarray:
        return next(self.map([(None, prepared)]))[1]

    def map(self, items: Iterable[tuple[Any, Any]]) -> Iterator[tuple[Any, np.ndarray | None]]:
        """As :meth:`Backend.map`, each batch's tiles queued one by one on the streams as soon as the batch is
        taken from ``items``, while earlier tiles still run; a batch is yielded, in order, once all its tiles
        are done (seen between two tiles queued, or when the next batch is asked for). On leaving (also
        early), the tiles still running are waited for."""
        queue = self._ov.AsyncInferQueue(self.session, self.requests)
        errors: list[BaseException] = []

        def done(request: Any, slot: tuple[np.ndarray, int, list[int]]) -> None:  # on an OpenVINO thread
            out, i, count = slot
            try:
                out[i] = request.get_output_tensor(0).data[0]  # copied: a request reuses its output buffer
            except BaseException as e:  # noqa: BLE001  (raised in the caller below)
                errors.append(e)
            count[0] += 1

        queue.set_callback(done)
        waiting: list[tuple[Any, np.ndarray | None, list[int]]] = []  # (key, probabilities, tiles done)

        def front_done() -> bool:
            _, out, count = waiting[0]
            if errors:
                raise errors[0]
            return out is None or count[0] == len(out)

        try:
            for key, prepared in items:
                if prepared is None:  # no tile of the batch could be read
                    waiting.append((key, None, [0]))
                    continue
                x = np.asarray(prepared)
                out = np.empty((len(x), self.num_classes, x.shape[1], x.shape[2]), np.float32)
                count = [0]
                waiting.append((key, out, count))
                for i in range(len(x)):
                    while waiting[0][1] is not out and front_done():  # earlier batches finished meanwhile
                        key0, out0, _ = waiting.pop(0)
                        yield key0, out0
                    queue.start_async({0: x[i:i + 1]}, (out, i, count))  # waits while every request is busy
            queue.wait_all()
            while waiting and front_done():
                key0, out0, _ = waiting.pop(0)
                yield key0, out0
        finally:
            queue.wait_all()


BACKENDS.register("torch", TorchBackend)
BACKENDS.register("onnx", OnnxBackend)
BACKENDS.register("openvino", OpenVinoBackend)


def resolve_backend_name(backend: str, precision: str = "auto") -> str:
    if backend == "auto":
        if precision == "int8":
            return DEFAULT_CPU_BACKEND
        if precision in ("fp16", "bf16"):
            return "torch"
        return "torch" if cuda_available() else DEFAULT_CPU_BACKEND
    BACKENDS.get(backend)  # raises with the valid names
    return backend


def load_backend(checkpoint: str | os.PathLike, *, backend: str = "auto", cache_dir: str | os.PathLike | None = None,
                 tile: int = 512, device: str | None = None, threads: int | None = None,
                 stain_norm: bool = True, precision: str = "auto",
                 calibration: list[str | os.PathLike] | None = None, mpp_override: float | None = None,
                 settings: SessionSettings | None = None, log: Any = None) -> Backend:
    """A backend for ``checkpoint`` (.ckpt/.pt pathseg checkpoint, or an exported .onnx, fp32 or INT8).

    With ``backend="onnx"`` and a torch checkpoint, the model is exported once to
    ``cache_dir/<checkpoint stem>-<hash>.onnx`` (default: the user's cache, see
    :func:`pathseg.inference.onnx.cached_export`).
    ``backend="auto"``: ONNX Runtime on CPU (``device="cpu"``, or no CUDA), torch on CUDA and for models
    that read each tile's context. ``stain_norm=False`` skips the checkpoint's stain normalisation.

    ``precision="int8"``: an INT8 .onnx runs as it is; a checkpoint or an fp32 .onnx is quantised once,
    calibrated on tissue tiles of ``calibration`` (slides, training images or folders; see
    :func:`pathseg.inference.quantize.cached_quantize`), with a warning when its agreement with fp32 is
    below 99%. ``settings``: ONNX Runtime session options (default :class:`SessionSettings`).
    """
    t = time.perf_counter()
    be = _load_backend(Path(checkpoint), backend=backend, cache_dir=cache_dir, tile=tile, device=device,
                       threads=threads, stain_norm=stain_norm, precision=check_precision(precision),
                       calibration=calibration, mpp_override=mpp_override, settings=settings, log=log)
    be.load_s = time.perf_counter() - t  # the run record's backend_load_s
    return be


def _load_backend(checkpoint: Path, *, backend: str, cache_dir: str | os.PathLike | None, tile: int,
                  device: str | None, threads: int | None, stain_norm: bool, precision: str,
                  calibration: list[str | os.PathLike] | None, mpp_override: float | None,
                  settings: SessionSettings | None, log: Any) -> Backend:
    if backend == "auto" and device == "cpu" and precision not in ("fp16", "bf16"):
        name = DEFAULT_CPU_BACKEND
    else:
        name = resolve_backend_name(backend, precision)
    if precision == "int8" and name not in GRAPH_BACKENDS:
        raise ConfigError(f"--precision int8 runs an ONNX graph; use --backend onnx, openvino or auto, not "
                          f"{backend!r}")
    if precision in ("fp16", "bf16") and name != "torch":
        raise ConfigError(f"--precision {precision} is torch autocast on CUDA; use --backend torch or auto")
    settings = settings or SessionSettings(threads=threads)
    graph = _graph_opener(name, auto=backend == "auto")  # what runs an exported graph
    if checkpoint.suffix == ".onnx":
        if name not in GRAPH_BACKENDS and backend != "auto":
            raise ConfigError(f"{checkpoint}: an .onnx model runs with backend 'onnx' or 'openvino', not "
                              f"{backend!r}")
        be = graph(checkpoint, stain_norm=stain_norm, settings=settings)
        if precision == "int8" and be.precision != "int8":
            return _int8(checkpoint, be.info, calibration, tile, cache_dir, mpp_override, stain_norm, settings,
                         source=checkpoint, log=log, graph=graph)
        if precision == "fp32" and be.precision != "fp32":
            raise ConfigError(f"{checkpoint} is a {be.precision} model; pass its fp32 export (or the checkpoint) "
                              "for --precision fp32")
        return be
    if name in GRAPH_BACKENDS:
        try:  # a cached export is used without loading the checkpoint
            fp32 = cached_export(checkpoint, cache_dir=cache_dir, tile=tile)
        except NeedsContextError:
            if backend != "auto" or precision == "int8":
                raise
            # the ONNX graph takes the tile only; a context model (HookNet) runs in torch
        else:
            if precision == "int8":
                from pathseg.inference.onnx import read_onnx_info

                return _int8(fp32, read_onnx_info(fp32), calibration, tile, cache_dir, mpp_override, stain_norm,
                             settings, source=checkpoint, log=log, graph=graph)
            return graph(fp32, stain_norm=stain_norm, source=checkpoint, settings=settings)
    from pathseg.models.checkpoint import load_model

    model, info = load_model(checkpoint)
    return TorchBackend(model, info, device=device, threads=threads, stain_norm=stain_norm, source=checkpoint,
                        precision="auto" if precision == "int8" else precision)


def _graph_opener(name: str, *, auto: bool) -> Any:
    """The backend class (or, for "auto", a callable) that opens an exported graph: OpenVINO or ONNX Runtime.
    Under "auto" a graph that OpenVINO cannot compile runs in ONNX Runtime, with a warning."""
    cls = BACKENDS.get(name) if name in GRAPH_BACKENDS else OnnxBackend
    if not (auto and cls is OpenVinoBackend):
        return cls

    def open_graph(path: str | os.PathLike, **kw: Any) -> OnnxBackend:
        try:
            return OpenVinoBackend(path, **kw)
        except DataError as e:
            if not Path(path).is_file():
                raise
            import warnings

            warnings.warn(f"{e}: running it in ONNX Runtime instead", stacklevel=3)
            return OnnxBackend(path, **kw)

    return open_graph


def _int8(fp32: Path, info: dict[str, Any], calibration: list[str | os.PathLike] | None, tile: int,
          cache_dir: str | os.PathLike | None, mpp_override: float | None, stain_norm: bool,
          settings: SessionSettings, *, source: Path, log: Any, graph: Any = OnnxBackend) -> OnnxBackend:
    from pathseg.inference.quantize import cached_quantize

    if not calibration:
        raise ConfigError(f"{source}: --precision int8 needs calibration tiles: pass slides or training images to "
                          "calibrate on (pathseg predict calibrates on the slides it predicts), or an INT8 .onnx "
                          "written by `pathseg export-onnx --precision int8 --calibration ...`")
    if not info.get("mpp"):
        raise ConfigError(f"{source}: the model does not record its MPP, which calibration tiles are read at")
    path = cached_quantize(fp32, list(calibration), tile=tile, mpp=float(info["mpp"]), cache_dir=cache_dir,
                           mpp_override=mpp_override, log=log)
    return graph(path, stain_norm=stain_norm, source=source, settings=settings)


__all__ = ["BACKENDS", "DEFAULT_CPU_BACKEND", "GRAPH_BACKENDS", "PRECISIONS", "Backend", "NeedsContextError",
           "OnnxBackend", "OpenVinoBackend", "TorchBackend", "check_precision", "context_ratio_of", "cpu_threads", "cuda_available", "load_backend",
           "refuse_context_models", "resolve_backend_name"]
