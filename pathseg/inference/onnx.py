"""ONNX export of a trained SegModel, self-describing for deployment.

The graph takes normalised float32 images ``(N, 3, H, W)`` (dynamic N, H, W; H and W multiples of 32
for U-Net/ResNet encoders) and returns class probabilities (softmax included). The checkpoint's
``pathseg`` info (class names, colours, MPP, mean/std, the stain normaliser's state) is stored as JSON
in the model's metadata under the key ``pathseg``, so an .onnx file is enough to run
``pathseg predict --checkpoint model.onnx``.

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
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pathseg.errors import DataError
from pathseg.io.files import atomic_path

ONNX_OPSET = 17
META_KEY = "pathseg"


class _WithSoftmax(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def export_model_onnx(model: nn.Module, info: dict[str, Any], path: str | os.PathLike, *, tile: int = 512,
                      opset: int = ONNX_OPSET, check: bool = True) -> Path:
    """Export ``model`` (with softmax) to ``path`` atomically; ``info`` goes into the metadata.

    With ``check``, ONNX Runtime's output on a random tile is compared to PyTorch's (max abs diff
    1e-4 on probabilities) before the file is kept.
    """
    import onnx

    from pathseg.inference.backends import refuse_context_models

    refuse_context_models(model)
    path = Path(path)
    wrapped = _WithSoftmax(model.eval().cpu()).eval()
    x = torch.rand(1, 3, tile, tile)
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
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_KEY, json.dumps(info)
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
    from pathseg.engine.checkpoint import load_model

    model, info = load_model(checkpoint)
    return export_model_onnx(model, dict(info), path, tile=tile, opset=opset)


def read_onnx_info(path: str | os.PathLike) -> dict[str, Any]:
    """The ``pathseg`` info stored in an exported model (class names, colours, MPP, mean/std, stain)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: ONNX model not found")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise DataError(f"{path}: not a readable ONNX model ({e})") from e
    for p in proto.metadata_props:
        if p.key == META_KEY:
            return json.loads(p.value)
    raise DataError(f"{path}: this ONNX model has no pathseg metadata; export it with `pathseg export-onnx CKPT`")


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


def cached_export(checkpoint: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None,
                  tile: int = 512) -> Path:
    """Export ``checkpoint`` once and reuse the .onnx (keyed by the checkpoint's content hash).

    Where: ``cache_dir`` if given, else one cache per user (:func:`user_cache_dir`), else the system's
    temporary folder; an export already beside the checkpoint is used too.
    """
    checkpoint = Path(checkpoint)
    digest = file_digest(checkpoint)
    candidates = [Path(cache_dir)] if cache_dir is not None else []
    candidates += [user_cache_dir() / "onnx", Path(tempfile.gettempdir()) / "pathseg-onnx"]
    beside = checkpoint.parent / f"{checkpoint.stem}-{digest}.onnx"
    if cache_dir is None and beside.is_file():
        return beside
    for folder in candidates:
        target = folder / f"{checkpoint.stem}-{digest}.onnx"
        if target.is_file():
            return target
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if os.access(folder, os.W_OK):
                return export_onnx(checkpoint, target, tile=tile)
        except OSError:
            continue
    raise DataError(f"{checkpoint}: no writable folder for the ONNX export; pass cache_dir or use --backend torch")
