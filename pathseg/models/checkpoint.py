"""Model checkpoints: save and load beside the models, so predicting never imports the training stack.

A pathseg checkpoint is a torch file with ``state_dict`` (SegModel weights) and ``pathseg`` (what is
needed to rebuild and use the model: model name, encoder, class names, colours, the MPP it was trained
at, the input normalisation and, when training normalised stains, the fitted normaliser's state under
``stain``; see :func:`pathseg.transforms.stain.normalizer_from_state`). Lightning checkpoints written by
``pathseg train`` carry the same ``pathseg`` entry, so either kind loads here.

Every model family registers itself in :mod:`pathseg.models` (imported before this module), so
:func:`load_model` rebuilds any checkpoint by name without importing Lightning or a training method.

Example:
    >>> model = create_model("unet", encoder="resnet18", num_classes=2)
    >>> save_model_checkpoint("model.ckpt", model, ["background", "tumour"], mpp=0.5)  # doctest: +SKIP
    >>> model, info = load_model("model.ckpt")                                       # doctest: +SKIP
    >>> info["class_names"], info["mpp"]                                             # doctest: +SKIP
    (['background', 'tumour'], 0.5)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pathseg.errors import DataError
from pathseg.io.files import atomic_path
from pathseg.models.factory import SegModel, create_model
from pathseg.transforms.paired import IMAGENET_MEAN, IMAGENET_STD


def model_info(model: SegModel, class_names: list[str], *, mpp: float | None = None,
               colors: list[list[int]] | None = None, stain: dict[str, Any] | None = None,
               **extra: Any) -> dict[str, Any]:
    """The ``pathseg`` entry of a checkpoint; ``stain`` is a fitted stain normaliser's ``state()`` or None."""
    return {
        "model": model.name,
        "encoder": model.encoder_name,
        "options": rebuild_options(model),
        "num_classes": model.num_classes,
        "class_names": list(class_names),
        "colors": colors or default_colors(len(class_names)),
        "mpp": mpp,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "stain": stain,
        **extra,
    }


def rebuild_options(model: SegModel) -> dict[str, Any]:
    """The builder options saved with a model (``model.build_options``), less those that only initialise it.

    A model lists in ``init_only_options`` the options that name weight files read when it is first built
    (HookNet: ``context_weights``); the state dict holds those weights, so a checkpoint loads without them.
    """
    skip = set(getattr(model, "init_only_options", ()))
    return {k: v for k, v in dict(getattr(model, "build_options", {})).items() if k not in skip}


def save_model_checkpoint(path: str | Path, model: SegModel, class_names: list[str], *, mpp: float | None = None,
                          **extra: Any) -> Path:
    """Write ``{"state_dict", "pathseg"}`` atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"state_dict": model.state_dict(), "pathseg": model_info(model, class_names, mpp=mpp, **extra)}, tmp)
    return path


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[SegModel, dict[str, Any]]:
    """Rebuild a :class:`SegModel` from a pathseg or Lightning checkpoint; returns (model in eval mode, info)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found; pass the .ckpt written by `pathseg train` (see its output folder)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise DataError(f"{path}: cannot read this checkpoint ({e}); it may be truncated or not a torch file") from e
    info = ckpt.get("pathseg") if isinstance(ckpt, dict) else None
    if info is None and isinstance(ckpt, dict):
        info = (ckpt.get("hyper_parameters") or {}).get("pathseg")
    if info is None:
        raise DataError(f"{path}: not a pathseg checkpoint (no 'pathseg' entry); train with `pathseg train`")
    model = create_model(info["model"], encoder=info["encoder"], num_classes=info["num_classes"],
                         **info.get("options", {}))
    state = ckpt["state_dict"]
    if any(k.startswith("model.") for k in state):  # Lightning: the method holds the model as .model
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    model.load_state_dict(state)
    model.eval()
    return model, info


def default_colors(n: int) -> list[list[int]]:
    """Distinct RGB colours for n classes; class 0 (background) is a light grey."""
    base = [[230, 230, 230], [220, 40, 60], [60, 160, 60], [40, 90, 220], [240, 170, 30], [150, 60, 200],
            [30, 190, 200], [240, 110, 180], [130, 90, 40], [120, 120, 120]]
    return [base[i % len(base)] for i in range(n)]
