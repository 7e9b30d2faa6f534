"""Encoder weights out of a pretraining run: safetensors files plus a JSON record of what they learned from.

``export_encoders(method, out, record)`` writes, for a :class:`pathseg.methods.ssl.simsiam.SSLMethod`:

    out/encoder.safetensors           the target branch = ``model.encoder`` state dict, plain keys
                                      (``conv1.weight``, ``layer1.0.bn1.running_mean``, ...): pass it as
                                      ``model.weights=out/encoder.safetensors`` to any pathseg model
    out/context_encoder.safetensors   DSF-WSI only: the context branch (HookNet's context encoder)
    out/encoder.json                  the record: encoder name, method, parameters, steps, data (files,
                                      MPP, pair geometry), seconds, sha256 of every weights file

Each safetensors file carries ``{"format": "pathseg-encoder", "encoder": name, "branch": ...}`` metadata.

Example:
    >>> paths = export_encoders(method, "runs/ssl/dsf", {"steps": 500})  # doctest: +SKIP
    >>> create_model("deeplabv3plus", encoder="resnet18", weights=paths["target"])  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import platform
import time
from pathlib import Path
from typing import Any

from torch import nn

from pathseg.io.files import atomic_path, write_json

FORMAT = "pathseg-encoder"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_encoder(encoder: nn.Module, path: str | Path, *, encoder_name: str, branch: str = "target",
                 method: str = "") -> Path:
    """Write one encoder's state dict (contiguous CPU tensors, plain keys) as safetensors, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    meta = {"format": FORMAT, "encoder": encoder_name, "branch": branch, "method": method}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return path


def export_encoders(method: Any, out: str | Path, record: dict[str, Any]) -> dict[str, Path]:
    """Write the method's encoders and ``encoder.json``; returns ``{"target": path, ["context": path,] "record": path}``."""
    out = Path(out)
    name = method.model.encoder_name
    kind = type(method).__name__.lower()
    paths = {"target": save_encoder(method.model.encoder, out / "encoder.safetensors", encoder_name=name,
                                    branch="target", method=kind)}
    for branch, enc in method.extra_encoders().items():
        paths[branch] = save_encoder(enc, out / f"{branch}_encoder.safetensors", encoder_name=name, branch=branch,
                                     method=kind)
    import torch

    full = {
        "format": FORMAT,
        "encoder": name,
        "method": kind,
        "weights": {b: {"file": p.name, "sha256": _sha256(p)} for b, p in paths.items()},
        "use": f"model.encoder={name} model.weights={paths['target']}",
        **record,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "software": {"torch": torch.__version__, "python": platform.python_version()},
    }
    paths["record"] = write_json(out / "encoder.json", full)
    return paths
