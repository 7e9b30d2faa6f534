"""pathseg: label-efficient semantic segmentation of H&E histology, from tiles to whole slides.

The common calls, importable from the top (each imports its layer only when called, so ``import pathseg``
loads neither torch nor Lightning)::

    pathseg.load_config(path, overrides)         a training/evaluation Config (YAML + key=value overrides)
    pathseg.train(cfg)                           the one training driver (what `pathseg train` runs)
    pathseg.evaluate(checkpoint, cfg)            every metric of a checkpoint on a split, from one confusion matrix
    pathseg.create_model(name, encoder=, ...)    a registered model, by name
    pathseg.load_model(checkpoint)               (model in eval mode, info) without the training stack
    pathseg.predict_slide(slide, checkpoint, out)     one whole slide -> label pyramid, GeoJSON, overlay, record
    pathseg.predict_slides(inputs, checkpoint, out)   files and folders of slides; one record per slide, failures
                                                      recorded and the run goes on

Example (the whole path on synthetic data, in a scratch folder):
    >>> import pathseg
    >>> cfg = pathseg.load_config(None, ["data.dataset=synthetic", "data.options={n_images: 2, size: 64}",
    ...     "data.val_split=val", "data.train_transforms=[{name: flip}]", "data.batch_size=2",
    ...     "trainer.max_steps=2", "trainer.val_every=2", "trainer.progress=false", "trainer.out=api_demo"])
    >>> res = pathseg.train(cfg)
    >>> res["steps"], res["checkpoint"]
    (2, 'api_demo/model.ckpt')
    >>> 0.0 <= pathseg.evaluate(res["checkpoint"], cfg)["mIoU"] <= 1.0
    True
    >>> from pathseg.data.synth import write_synthetic_slide
    >>> import os; os.makedirs("slides", exist_ok=True)
    >>> _ = write_synthetic_slide("slides/a.tif", 1024, mpp=0.5, seed=1, levels=2)   # a small pyramidal TIFF
    >>> records = pathseg.predict_slides("slides/", res["checkpoint"], "results/", tile=256)
    >>> [(r["slide"], r["status"]) for r in records]
    [('slides/a.tif', 'done')]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "evaluate", "load_config", "load_model", "predict_slide", "predict_slides",
           "train"]


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] | None = None) -> Any:
    """A checked :class:`~pathseg.engine.config.Config`: ``path`` (YAML; None = the defaults) with ``key=value``
    overrides. A path that is not a file is also looked up among the configs shipped with pathseg, so
    ``"configs/semi/cct.yaml"`` works from a checkout and from an installed wheel.

    Example:
        >>> cfg = load_config("configs/semi/cct.yaml", ["trainer.max_steps=10"])
        >>> cfg.method.name, cfg.trainer.max_steps
        ('cct', 10)
    """
    from pathseg.engine.config import load_config as _load
    from pathseg.engine.packaged import config_file

    return _load(None if path is None else config_file(path), list(overrides or []))


def train(cfg: Any) -> dict[str, Any]:
    """Train as configured, through the one driver (:func:`pathseg.engine.train.train`, Lightning); returns
    ``{"out", "checkpoint", "metrics", "steps", "seconds", ...}``. ``checkpoint`` is ``<trainer.out>/model.ckpt``.

    Example:
        >>> res = train(load_config(None, ["data.options={n_images: 2, size: 64}", "data.val_split=val",
        ...     "data.train_transforms=[{name: flip}]", "data.batch_size=2", "trainer.max_steps=1",
        ...     "trainer.val_every=1", "trainer.progress=false", "trainer.out=api_train"]))
        >>> res["steps"], {"Dice", "mIoU", "Dice/background"} <= set(res["metrics"])
        (1, True)
    """
    from pathseg.engine.train import train as _train

    return _train(cfg)


def evaluate(checkpoint: str | os.PathLike, cfg: Any, split: str | None = None, *, metrics: Any = None) -> dict[str, Any]:
    """Score a checkpoint on ``split`` (default ``cfg.data.val_split``) of the configured dataset: every metric from
    one confusion matrix (:func:`pathseg.engine.train.evaluate`; ``metrics``: another function of the confusion
    matrix and class names, e.g. :func:`pathseg.metrics.segcls.segcls_metrics`).

    Example:
        >>> cfg = load_config(None, ["data.options={n_images: 2, size: 64}", "data.val_split=val",
        ...     "data.train_transforms=[{name: flip}]", "data.batch_size=2", "trainer.max_steps=1",
        ...     "trainer.val_every=1", "trainer.progress=false", "trainer.out=api_eval"])
        >>> m = evaluate(train(cfg)["checkpoint"], cfg)
        >>> 0.0 <= m["mIoU"] <= 1.0 and 0.0 <= m["accuracy"] <= 1.0
        True
    """
    from pathseg.engine.train import evaluate as _evaluate

    return _evaluate(checkpoint, cfg, split, metrics=metrics)


def create_model(name: str = "unet", *, encoder: str = "resnet18", num_classes: int = 2, weights: str | None = None,
                 **options: Any) -> Any:
    """A registered model by name (:func:`pathseg.models.create_model`; ``pathseg.models.DECODERS.names()``,
    ``NETWORKS.names()``; ViT encoders by name, see ``pathseg encoders``).

    Example:
        >>> import torch
        >>> create_model("unet", encoder="resnet18", num_classes=3)(torch.zeros(1, 3, 64, 64)).shape
        torch.Size([1, 3, 64, 64])
    """
    from pathseg.models import create_model as _create

    return _create(name, encoder=encoder, num_classes=num_classes, weights=weights, **options)


def load_model(checkpoint: str | os.PathLike, map_location: str = "cpu") -> tuple[Any, dict[str, Any]]:
    """``(model in eval mode, info)`` from a checkpoint of ``pathseg train``; imports neither Lightning nor a training
    method (:func:`pathseg.models.checkpoint.load_model`). ``info``: model, encoder, class_names, mpp, ...

    Example:
        >>> import torch
        >>> from pathseg.models import save_model_checkpoint
        >>> _ = save_model_checkpoint("api_model.ckpt", create_model("unet", num_classes=2), ["background", "nucleus"],
        ...                           mpp=0.5)
        >>> model, info = load_model("api_model.ckpt")
        >>> info["class_names"], info["mpp"], model(torch.zeros(1, 3, 64, 64)).shape
        (['background', 'nucleus'], 0.5, torch.Size([1, 2, 64, 64]))
    """
    from pathseg.models.checkpoint import load_model as _load

    return _load(checkpoint, map_location=map_location)


def predict_slides(inputs: str | os.PathLike | Sequence[str | os.PathLike], checkpoint: str | os.PathLike,
                   out: str | os.PathLike, **options: Any) -> list[dict[str, Any]]:
    """Predict every slide in ``inputs`` (files and folders, expanded by content with
    :func:`pathseg.inference.batch.expand_inputs`) into ``out/<name>/``; one record per slide, in order. A slide
    that fails (unreadable, no MPP, no tissue, ...) gets ``{"status": "failed", "error": ...}`` and the run goes on.
    ``options``: those of :func:`pathseg.inference.batch.predict_slides` (tile, overlap, mpp, backend, precision,
    workers, ...); ``log`` (a callable) also hears of files that were skipped and why.

    Example (a notebook, for a folder of slides):
        >>> records = predict_slides("slides/", "model.ckpt", "results/")                     # doctest: +SKIP
        >>> [(r["slide"], r["status"], r.get("error")) for r in records if r["status"] != "done"]  # doctest: +SKIP
        []
    """
    from pathseg.inference.batch import expand_inputs
    from pathseg.inference.batch import predict_slides as _predict

    paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    found = expand_inputs(paths)
    log = options.get("log")
    if log is not None:
        for path, why in found.skipped:
            log(f"skipped {path}: {why}")
    return _predict(found.slides, checkpoint, out, **options)


def predict_slide(slide: str | os.PathLike, checkpoint: str | os.PathLike, out: str | os.PathLike,
                  **options: Any) -> dict[str, Any]:
    """Predict one whole slide into ``out/<slide name>/`` (label pyramid, GeoJSON, overlay, composition CSV, run
    record); returns its record. Unlike :func:`predict_slides` a failure raises, with the slide's message.

    Example:
        >>> from pathseg.models import save_model_checkpoint
        >>> from pathseg.data.synth import write_synthetic_slide
        >>> _ = save_model_checkpoint("api_slide.ckpt", create_model("unet", num_classes=2), ["background", "tissue"],
        ...                           mpp=0.5)
        >>> _ = write_synthetic_slide("api_slide.tif", 1024, mpp=0.5, seed=1, levels=2)
        >>> rec = predict_slide("api_slide.tif", "api_slide.ckpt", "api_out", tile=256)
        >>> rec["status"]
        'done'
    """
    from pathseg.errors import PathsegError
    from pathseg.inference.batch import predict_slides as _predict

    rec = _predict([slide], checkpoint, out, **options)[0]
    if rec.get("status") == "failed":
        raise PathsegError(rec["error"])
    return rec
