"""Using a trained cell classifier: load it, turn patches into its input, predict.

A cell classifier checkpoint is an ordinary pathseg model checkpoint (:mod:`pathseg.models.checkpoint`),
written by the training driver for a ``cell_classifier`` run (``pathseg distill`` writes ``teacher.pt``,
``student.pt``, ``finetune/n<n>.pt``); the classifier families are registered with every other model
(:mod:`pathseg.models.cells`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from pathseg.errors import DataError
from pathseg.transforms.paired import IMAGENET_MEAN, IMAGENET_STD


def patches_to_tensor(patches: np.ndarray) -> torch.Tensor:
    """uint8 (N, S, S, 3) -> float32 (N, 3, S, S), ImageNet-normalised (as the training samples are)."""
    x = torch.from_numpy(np.ascontiguousarray(patches)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.inference_mode()
def predict_logits_cells(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits (N, C) for patches (N, 3, S, S), in eval mode."""
    model.eval()
    out = [model(x[s:s + batch_size]) for s in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, getattr(model, "num_classes", 1))


def load_classifier(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A cell classifier checkpoint; returns (model in eval mode, info).

    ``info`` is the checkpoint's ``pathseg`` entry plus ``size`` (the patch side it takes) and ``scale``
    (the bank scale it was trained on, from the recorded config; 1.0 when none is recorded).
    """
    from pathseg.models.cells import CLASSIFIERS
    from pathseg.models.checkpoint import load_model

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: cell classifier not found; train one with `pathseg distill`")
    try:
        model, info = load_model(path)
    except DataError:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        if isinstance(ckpt, dict) and "pathseg_cells" in ckpt:
            raise DataError(f"{path}: a cell classifier in the format of an older pathseg; run `pathseg distill` "
                            "again to retrain it as a pathseg model checkpoint") from None
        raise
    if info["model"] not in CLASSIFIERS:
        raise DataError(f"{path}: a {info['model']!r} model, not a cell classifier "
                        f"({', '.join(CLASSIFIERS.names())}); pass a model written by `pathseg distill`")
    options = (((info.get("config") or {}).get("data") or {}).get("options") or {})
    info = {**info, "size": int(info.get("options", {}).get("in_size", 32)),
            "scale": float(options.get("scale", 1.0))}
    return model, info


__all__ = ["load_classifier", "patches_to_tensor", "predict_logits_cells"]
