"""Encoder weights out of a pretraining run: safetensors files plus a JSON record of what they learned from.

``export_encoders(method, out, record)`` writes, for a :class:`pathseg.methods.ssl.simsiam.SSLMethod`,
one file per branch in ``method.encoders()``:

    out/encoder.safetensors           the target branch's state dict, plain keys (``conv1.weight``,
                                      ``layer1.0.bn1.running_mean``, ...): pass it as
                                      ``model.weights=out/encoder.safetensors`` to any pathseg model
                                      (DSF-WSI, and SimSiam with branch=target)
    out/context_encoder.safetensors   the context branch (HookNet's ``model.options.context_weights``):
                                      DSF-WSI's context encoder, or SimSiam's with branch=context
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


def encoder_file(branch: str) -> str:
    """``encoder.safetensors`` for the target branch, ``<branch>_encoder.safetensors`` for any other."""
    return "encoder.safetensors" if branch == "target" else f"{branch}_encoder.safetensors"


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
    """Write the method's encoders and ``encoder.json``.

    Returns ``{"target": path, "context": path, "record": path}``, with only the branches the method has.
    """
    out = Path(out)
    name = method.model.encoder_name
    kind = type(method).__name__.lower()
    paths = {branch: save_encoder(enc, out / encoder_file(branch), encoder_name=name, branch=branch, method=kind)
             for branch, enc in method.encoders().items()}
    import torch

    if "target" in paths:
        use = f"model.encoder={name} model.weights={paths['target']}"
    else:
        use = f"model.name=hooknet model.encoder={name} model.options.context_weights={paths['context']}"

    full = {
        "format": FORMAT,
        "encoder": name,
        "method": kind,
        "weights": {b: {"file": p.name, "sha256": _sha256(p)} for b, p in paths.items()},
        "use": use,
        **record,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "software": {"torch": torch.__version__, "python": platform.python_version()},
    }
    paths["record"] = write_json(out / "encoder.json", full)
    return paths
