"""Phases II-IV of Háberová et al.: per-nucleus patches, teacher, student, expert fine-tuning.

The **cell bank** (:class:`CellBank`, one ``.npz``) holds, for every segmented nucleus of a set of
images: its patches (``size`` px at each of ``scales``), the image id, centroid, and up to three
label vectors, each -1 where unknown: ``weak`` (from a tool, e.g. a QuPath classifier), ``expert``
(few, trusted) and ``truth`` (for evaluation only: synthetic data or a fully checked test set).
:func:`build_cell_bank` makes one from images, instance maps and QuPath GeoJSON exports
(:mod:`.matching`: a nucleus nobody annotated is unknown, -1, never a target of the teacher or the
fine-tuning; the student still sees its patch, labelled by the teacher). Nuclei are
segmented by :class:`NucleusSegmenter`, which applies the checkpoint's stain normalisation as
``pathseg predict`` does; patches are cut from the original image.

:func:`run_distill` then trains, each step resumable from its file in ``out``:

* phase II  teacher (``resnet18_small``) with cross-entropy on the weak labels  -> ``teacher.pt``
* the teacher labels every bank patch                                      -> ``teacher_labels.npy``
* phase III student (``rccnet``) on the teacher's hard labels (as published), or on its softened
  probabilities ``softmax(z/T)`` with ``T² · KL`` (``student.soft: true``)   -> ``student.pt``
* phase IV  the student fine-tuned on expert labels, ``n`` cells per class for each ``n`` of
  ``finetune.counts``, over the grid ``finetune.lr`` x ``finetune.dropout``; the grid point is
  chosen on held-out expert cells (never the evaluation set)          -> ``finetune/n<n>.pt``

and scores each model on an evaluation bank (F1, accuracy, precision, recall: weighted, macro and
per class) into ``metrics.json``. Training is a small plain-torch loop: Adam, cross-entropy, random
flips and 90° rotations of the patches, a fixed number of epochs; Lightning's
:class:`~pathseg.methods.base.Method` is built for pixel segmentation and adds nothing here.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pathseg.errors import ConfigError, DataError
from pathseg.transforms.paired import IMAGENET_MEAN, IMAGENET_STD

from .rccnet import create_classifier


# ------------------------------------------------------------------------------------------------
# the cell bank


@dataclass
class CellBank:
    """Per-nucleus patches and labels (see the module docstring).

    Shape:
        patches uint8 (N, len(scales), size, size, 3); weak/expert/truth int64 (N,) (-1 = unknown);
        image_ids (N,) str; nucleus_ids int64 (N,) (ids in that image's instance map); centroids (N, 2).
    """

    patches: np.ndarray
    class_names: list[str]
    scales: list[float]
    image_ids: np.ndarray
    nucleus_ids: np.ndarray
    centroids: np.ndarray
    weak: np.ndarray
    expert: np.ndarray
    truth: np.ndarray

    def __len__(self) -> int:
        return int(self.patches.shape[0])

    def save(self, path: str | Path) -> Path:
        from pathseg.io.files import atomic_path

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, patches=self.patches, class_names=np.array(self.class_names),
                                    scales=np.array(self.scales, np.float64), image_ids=self.image_ids.astype(str),
                                    nucleus_ids=self.nucleus_ids, centroids=self.centroids, weak=self.weak,
                                    expert=self.expert, truth=self.truth)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "CellBank":
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: cell bank not found; build one with `pathseg cell-bank`")
        z = np.load(path, allow_pickle=False)
        return cls(patches=z["patches"], class_names=[str(c) for c in z["class_names"]],
                   scales=[float(s) for s in z["scales"]], image_ids=z["image_ids"], nucleus_ids=z["nucleus_ids"],
                   centroids=z["centroids"], weak=z["weak"], expert=z["expert"], truth=z["truth"])

    @classmethod
    def concat(cls, banks: Sequence["CellBank"]) -> "CellBank":
        b0 = banks[0]
        cat = lambda k: np.concatenate([getattr(b, k) for b in banks])  # noqa: E731
        return cls(patches=cat("patches"), class_names=b0.class_names, scales=b0.scales, image_ids=cat("image_ids"),
                   nucleus_ids=cat("nucleus_ids"), centroids=cat("centroids"), weak=cat("weak"),
                   expert=cat("expert"), truth=cat("truth"))

    def subset(self, idx: np.ndarray) -> "CellBank":
        return CellBank(patches=self.patches[idx], class_names=self.class_names, scales=self.scales,
                        image_ids=self.image_ids[idx], nucleus_ids=self.nucleus_ids[idx],
                        centroids=self.centroids[idx], weak=self.weak[idx], expert=self.expert[idx],
                        truth=self.truth[idx])

    def scale_index(self, scale: float) -> int:
        for i, s in enumerate(self.scales):
            if abs(s - scale) < 1e-9:
                return i
        raise ConfigError(f"the cell bank has patches at scales {self.scales}, not {scale}; rebuild it with that "
                          "scale or pick one of those")


def bank_from_instances(
    items: Sequence[tuple[str, np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    *,
    weak: dict[str, np.ndarray] | None = None,
    expert: dict[str, np.ndarray] | None = None,
    truth: dict[str, np.ndarray] | None = None,
    size: int = 32,
    scales: Sequence[float] = (1.0, 0.5, 0.25),
) -> CellBank:
    """A bank from ``(image id, RGB image, instance map)`` triples and per-image label vectors.

    ``weak[id]`` etc. give the class index of each nucleus 1..N of that image's map (-1 = unknown).
    """
    from .instances import instance_centroids, nucleus_patches

    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("patches", "ids", "nuc", "cent", "weak", "expert", "truth")}
    for image_id, image, inst in items:
        cent = instance_centroids(inst)
        n = len(cent)
        parts["patches"].append(nucleus_patches(image, cent, size=size, scales=scales))
        parts["ids"].append(np.array([image_id] * n, dtype=str))
        parts["nuc"].append(np.arange(1, n + 1, dtype=np.int64))
        parts["cent"].append(cent)
        for key, src in (("weak", weak), ("expert", expert), ("truth", truth)):
            v = (src or {}).get(image_id)
            if v is not None and len(v) != n:
                raise DataError(f"{image_id}: {len(v)} {key} labels for {n} nuclei")
            parts[key].append(np.full(n, -1, np.int64) if v is None else np.asarray(v, np.int64))
    if not parts["patches"]:
        raise DataError("no images given to build a cell bank from")
    return CellBank(patches=np.concatenate(parts["patches"]), class_names=list(class_names), scales=list(scales),
                    image_ids=np.concatenate(parts["ids"]), nucleus_ids=np.concatenate(parts["nuc"]),
                    centroids=np.concatenate(parts["cent"]).reshape(-1, 2), weak=np.concatenate(parts["weak"]),
                    expert=np.concatenate(parts["expert"]), truth=np.concatenate(parts["truth"]))


class NucleusSegmenter:
    """A phase-I nuclei checkpoint used as ``pathseg predict`` uses it.

    Each image is recoloured with the checkpoint's fitted stain normaliser (``info["stain"]``, tiles
    with too little tissue left unchanged; ``stain_norm=False`` or a checkpoint without one: off),
    normalised with the checkpoint's mean/std, and segmented; nuclei are the components of the
    class-1 (nucleus) pixels of the argmax, optionally split by watershed (:func:`.instances.label_instances`).

    Shape:
        __call__(image (H, W, 3) uint8) -> int32 (H, W), 0 = background, 1..N.

    Example:
        >>> seg = NucleusSegmenter.load("runs/distill/nuclei_unet/model.ckpt")  # doctest: +SKIP
        >>> inst = seg(image, split_touching=True)                               # doctest: +SKIP
    """

    def __init__(self, model: torch.nn.Module, info: dict[str, Any], *, stain: Any = None) -> None:
        self.model, self.info, self.stain = model, info, stain

    @classmethod
    def load(cls, checkpoint: str | Path, *, stain_norm: bool = True) -> "NucleusSegmenter":
        from pathseg.models.checkpoint import load_model
        from pathseg.transforms.stain import normalizer_from_state

        model, info = load_model(checkpoint)
        stain = normalizer_from_state(info.get("stain"), checkpoint, fallback="identity") if stain_norm else None
        return cls(model, info, stain=stain)

    def model_input(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (1, 3, H, W) float32: stain-normalised (when on), scaled to 0..1, mean/std."""
        if self.stain is not None:
            image = self.stain.transform(image)
        mean = torch.tensor(self.info.get("mean", IMAGENET_MEAN), dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.info.get("std", IMAGENET_STD), dtype=torch.float32).view(3, 1, 1)
        x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1).div_(255.0)
        return ((x - mean) / std)[None]

    def __call__(self, image: np.ndarray, *, split_touching: bool = False, min_size: int = 4) -> np.ndarray:
        from pathseg.methods.base import predict_logits

        from .instances import label_instances

        with torch.inference_mode():
            pred = predict_logits(self.model, self.model_input(image), channels_last=False).argmax(1)[0].numpy()
        return label_instances(pred == 1, split_touching=split_touching, min_size=min_size)


def build_cell_bank(
    images: Sequence[Path],
    checkpoint: "str | Path | NucleusSegmenter | None",
    class_names: Sequence[str],
    *,
    instances_dir: Path | None = None,
    weak_dir: Path | None = None,
    expert_dir: Path | None = None,
    truth_dir: Path | None = None,
    size: int = 32,
    scales: Sequence[float] = (1.0, 0.5, 0.25),
    split_touching: bool = False,
    min_overlap: float = 0.3,
    max_distance: float = 6.0,
    stain_norm: bool = True,
) -> CellBank:
    """Segment each image with a phase-I checkpoint, cut nucleus patches, match QuPath labels.

    ``checkpoint`` is a phase-I checkpoint path or a loaded :class:`NucleusSegmenter`. Segmentation
    applies the checkpoint's stain normalisation (``stain_norm=False``: off, for a path); patches are
    cut from the original image, as ``pathseg cells`` cuts them.
    Label folders hold ``<image stem>.geojson`` (a missing file leaves that image's labels unknown);
    a nucleus no annotation in the file claims is unknown too (-1, :func:`.matching.match_cells`).
    ``instances_dir`` (``<image stem>.png``, 16-bit ids) replaces the segmentation where a file exists,
    e.g. to build a bank on reference nuclei; ``checkpoint`` may then be None.
    """
    from pathseg.io.files import read_image

    from .matching import match_cells, read_cells

    segmenter = (checkpoint if isinstance(checkpoint, NucleusSegmenter) or checkpoint is None
                 else NucleusSegmenter.load(checkpoint, stain_norm=stain_norm))
    items, labels = [], {"weak": {}, "expert": {}, "truth": {}}
    for path in images:
        image = read_image(path)
        given = Path(instances_dir) / f"{path.stem}.png" if instances_dir is not None else None
        if given is not None and given.is_file():
            from .instances import _clean

            inst = _clean(np.asarray(read_image(given, mode=None)).astype(np.int32), 1)
        elif segmenter is None:
            raise DataError(f"{path.stem}: no instance map in {instances_dir} and no segmenter checkpoint given")
        else:
            inst = segmenter(image, split_touching=split_touching)
        items.append((path.stem, image, inst))
        for key, folder in (("weak", weak_dir), ("expert", expert_dir), ("truth", truth_dir)):
            if folder is None:
                continue
            gj = Path(folder) / f"{path.stem}.geojson"
            if gj.is_file():
                labels[key][path.stem] = match_cells(inst, read_cells(gj), class_names, min_overlap=min_overlap,
                                                     max_distance=max_distance)
    return bank_from_instances(items, class_names, size=size, scales=scales, **labels)


# ------------------------------------------------------------------------------------------------
# training and scoring


def patches_to_tensor(patches: np.ndarray) -> torch.Tensor:
    """uint8 (N, S, S, 3) -> float32 (N, 3, S, S), ImageNet-normalised."""
    x = torch.from_numpy(np.ascontiguousarray(patches)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    k = int(torch.randint(0, 4, (), generator=g))
    x = torch.rot90(x, k, (2, 3))
    if torch.rand((), generator=g) < 0.5:
        x = x.flip(3)
    return x


def train_classifier(
    model: torch.nn.Module,
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    epochs: int = 10,
    lr: float = 1e-3,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    temperature: float = 1.0,
    seed: int = 0,
    augment: bool = True,
    max_seconds: float | None = None,
) -> dict[str, Any]:
    """Adam on cross-entropy: hard labels ``target`` (N,) int64, or soft targets (N, C) probabilities.

    With soft targets the loss is ``T² · KL(target || softmax(z / T))`` (Hinton et al. 2015), with
    ``target`` already softened by the caller. Returns ``{"losses": per-epoch means, "seconds"}``.

    Shape:
        x (N, 3, S, S) float; target (N,) int64 or (N, C) float.
    """
    if len(x) == 0:
        raise DataError("train_classifier: no training patches (are any labels known?)")
    g = torch.Generator().manual_seed(seed)
    from pathseg.methods.base import fused_capable

    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused_capable(params))
    soft = target.ndim == 2
    losses: list[float] = []
    t0 = time.time()
    model.train()
    bs = min(batch_size, len(x))
    for _ in range(max(1, epochs)):
        order = torch.randperm(len(x), generator=g)
        total, count = 0.0, 0
        for s in range(0, len(x) - bs + 1, bs):  # drop the last partial batch (batch norm)
            idx = order[s:s + bs]
            xb = _augment(x[idx], g) if augment else x[idx]
            logits = model(xb)
            if soft:
                loss = F.kl_div(F.log_softmax(logits / temperature, 1), target[idx], reduction="batchmean")
                loss = loss * temperature**2
            else:
                loss = F.cross_entropy(logits, target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + loss.item() * len(idx), count + len(idx)
        losses.append(total / max(1, count))
        if max_seconds is not None and time.time() - t0 > max_seconds:
            break
    model.eval()
    return {"losses": losses, "seconds": time.time() - t0}


@torch.inference_mode()
def predict_logits_cells(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Logits (N, C) for patches (N, 3, S, S), in eval mode."""
    model.eval()
    out = [model(x[s:s + batch_size]) for s in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, getattr(model, "num_classes", 1))


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy and precision / recall / F1: weighted by support, macro, and per class.

    Classes absent from both ``y_true`` and ``y_pred`` are left out of the macro mean; a class never
    predicted has precision 0 (as scikit-learn's ``zero_division=0``).

    Example:
        >>> m = classification_metrics(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), ["a", "b"])
        >>> round(m["F1"], 4), m["accuracy"]
        (0.7333, 0.75)
    """
    k = len(class_names)
    y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
    cm = np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k).astype(np.float64)
    tp = np.diag(cm)
    support = cm.sum(1)
    predicted = cm.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(predicted > 0, tp / predicted, 0.0)
        rec = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)
    n = support.sum()
    w = support / n if n else support
    present = (support + predicted) > 0
    out: dict[str, Any] = {
        "F1": float((w * f1).sum()), "precision": float((w * prec).sum()), "recall": float((w * rec).sum()),
        "accuracy": float(tp.sum() / n) if n else float("nan"),
        "F1_macro": float(f1[present].mean()) if present.any() else float("nan"),
        "n": int(n),
    }
    for i, name in enumerate(class_names):
        out[f"F1/{name}"] = float(f1[i])
        out[f"precision/{name}"] = float(prec[i])
        out[f"recall/{name}"] = float(rec[i])
    return out


def balanced_subset(labels: np.ndarray, per_class: int, *, classes: Sequence[int] | None = None,
                    seed: int = 0) -> np.ndarray:
    """Indices of ``per_class`` random cells of each class (all of a class when it has fewer).

    Shape:
        labels (N,) int (-1 = unknown) -> int64 indices (≤ per_class · classes,), sorted.
    """
    rng = np.random.default_rng(seed)
    classes = sorted(set(int(c) for c in labels if c >= 0)) if classes is None else list(classes)
    picks = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        picks.append(rng.permutation(idx)[:per_class])
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, np.int64)


# ------------------------------------------------------------------------------------------------
# the distillation run


@dataclass
class StageConfig:
    model: str = "rccnet"
    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 64
    weight_decay: float = 0.0
    dropout: float = 0.5
    soft: bool = False  # student only: distil softened probabilities instead of hard labels
    temperature: float = 4.0
    options: dict[str, Any] = field(default_factory=dict)  # extra model arguments, e.g. {stem_pool: true}


@dataclass
class FinetuneConfig:
    counts: list[int] = field(default_factory=lambda: [100, 500, 1000, 1900])  # expert cells per class
    lr: list[float] = field(default_factory=lambda: [5e-5, 1e-4, 1e-3])
    dropout: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5])
    epochs: int = 20
    batch_size: int = 32
    holdout: float = 0.2  # fraction of expert cells kept aside to choose the grid point


@dataclass
class DistillConfig:
    teacher: StageConfig = field(default_factory=lambda: StageConfig(model="resnet18_small", epochs=10, lr=1e-3,
                                                                     dropout=0.0))
    student: StageConfig = field(default_factory=StageConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    scale: float = 1.0  # which of the bank's patch scales the classifiers see
    seed: int = 0
    threads: int | None = None

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: Sequence[str] | None = None) -> "DistillConfig":
        """From a YAML file (sections teacher, student, finetune) and ``key=value`` overrides."""
        import yaml

        from pathseg.engine.config import _build, _set_dotted, read_yaml  # upward: tests/test_layers.py ALLOWED_UPWARD

        raw = read_yaml(path) if path else {}
        for item in overrides or []:
            if "=" not in item:
                raise ConfigError(f"override {item!r}: expected key=value, e.g. teacher.epochs=5")
            key, value = item.split("=", 1)
            _set_dotted(raw, key.strip(), yaml.safe_load(value) if value != "" else None)
        cfg = cls()
        for key, val in raw.items():
            if key not in {f.name for f in fields(cls)}:
                from pathseg.registry import did_you_mean

                raise ConfigError(f"{path or 'config'}: unknown key {key!r}.{did_you_mean(key, [f.name for f in fields(cls)])}"
                                  " Valid keys: teacher, student, finetune, scale, seed, threads")
            cur = getattr(cfg, key)
            if is_dataclass(cur):
                if not isinstance(val, dict):
                    raise ConfigError(f"{key}: expected a mapping, got {val!r}")
                val = _build(type(cur), {**asdict(cur), **val}, key)
            else:
                val = _build(cls, {key: val}, "").__dict__[key]
            setattr(cfg, key, val)
        return cfg


def _save_classifier(path: Path, model: torch.nn.Module, name: str, class_names: list[str], **extra: Any) -> None:
    from pathseg.io.files import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"state_dict": model.state_dict(),
                    "pathseg_cells": {"model": name, "class_names": class_names, **extra}}, tmp)


def load_classifier(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A cell classifier written by :func:`run_distill`; returns (model in eval mode, info)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: cell classifier not found; train one with `pathseg distill`")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    info = ckpt.get("pathseg_cells") if isinstance(ckpt, dict) else None
    if info is None:
        raise DataError(f"{path}: not a pathseg cell classifier (written by `pathseg distill`)")
    model = create_classifier(info["model"], len(info["class_names"]), in_size=int(info.get("size", 32)),
                              **dict(info.get("options") or {}))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, info


def _labels_or_fail(v: np.ndarray, what: str) -> np.ndarray:
    idx = np.flatnonzero(v >= 0)
    if idx.size == 0:
        raise DataError(f"the cell bank has no {what} labels; build it with --{what} <folder of QuPath GeoJSON>")
    return idx


def run_distill(
    bank: CellBank,
    out: str | Path,
    cfg: DistillConfig,
    *,
    eval_bank: CellBank | None = None,
    stages: Sequence[str] = ("teacher", "student", "finetune"),
    log: Any = print,
) -> dict[str, Any]:
    """Teacher -> student -> expert fine-tuning (see the module docstring); resumable, returns the metrics.

    The evaluation bank is scored against its ``truth`` labels, else its ``expert`` labels.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from pathseg.io.files import write_json

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    names = bank.class_names
    k = len(names)
    si = bank.scale_index(cfg.scale)
    size = int(bank.patches.shape[2])
    x = patches_to_tensor(bank.patches[:, si])
    metrics_path = out / "metrics.json"
    metrics: dict[str, Any] = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    metrics["config"] = asdict(cfg)

    ev = None
    if eval_bank is not None:
        ev_labels = eval_bank.truth if (eval_bank.truth >= 0).any() else eval_bank.expert
        keep = np.flatnonzero(ev_labels >= 0)
        ev = (patches_to_tensor(eval_bank.patches[keep][:, eval_bank.scale_index(cfg.scale)]), ev_labels[keep])

    def score(model: torch.nn.Module) -> dict[str, Any] | None:
        if ev is None:
            return None
        pred = predict_logits_cells(model, ev[0]).argmax(1).numpy()
        return classification_metrics(ev[1], pred, names)

    def stage_model(sc: StageConfig) -> torch.nn.Module:
        torch.manual_seed(cfg.seed)
        return create_classifier(sc.model, k, dropout=sc.dropout, in_size=size, **sc.options)

    def record(key: str, model: torch.nn.Module, extra: dict[str, Any]) -> None:
        metrics[key] = {"eval": score(model), **extra}
        write_json(metrics_path, metrics)
        m = metrics[key]["eval"]
        if m is not None:
            log(f"{key}: F1 {m['F1']:.4f}  accuracy {m['accuracy']:.4f}")

    # phase II: teacher on weak labels
    tpath = out / "teacher.pt"
    if "teacher" in stages or not tpath.exists():
        if tpath.exists():
            teacher, _ = load_classifier(tpath)
        else:
            idx = _labels_or_fail(bank.weak, "weak")
            teacher = stage_model(cfg.teacher)
            hist = train_classifier(teacher, x[idx], torch.from_numpy(bank.weak[idx]), epochs=cfg.teacher.epochs,
                                    lr=cfg.teacher.lr, batch_size=cfg.teacher.batch_size,
                                    weight_decay=cfg.teacher.weight_decay, seed=cfg.seed)
            _save_classifier(tpath, teacher, cfg.teacher.model, names, size=size, scale=cfg.scale,
                             options=cfg.teacher.options)
            record("teacher", teacher, {"train_cells": int(idx.size), "seconds": hist["seconds"]})
    else:
        teacher, _ = load_classifier(tpath)
    # the teacher labels every patch of the bank
    lpath = out / "teacher_logits.npy"
    if lpath.exists():
        t_logits = torch.from_numpy(np.load(lpath))
    else:
        t_logits = predict_logits_cells(teacher, x)
        np.save(lpath, t_logits.numpy())
    if "student" not in stages and "finetune" not in stages:
        return metrics

    # phase III: student on the teacher's labels
    spath = out / "student.pt"
    if spath.exists():
        student, _ = load_classifier(spath)
    else:
        student = stage_model(cfg.student)
        sc = cfg.student
        target = (t_logits / sc.temperature).softmax(1) if sc.soft else t_logits.argmax(1)
        hist = train_classifier(student, x, target, epochs=sc.epochs, lr=sc.lr, batch_size=sc.batch_size,
                                weight_decay=sc.weight_decay, temperature=sc.temperature, seed=cfg.seed)
        _save_classifier(spath, student, sc.model, names, size=size, scale=cfg.scale, options=sc.options)
        record("student", student, {"train_cells": len(x), "soft": sc.soft, "seconds": hist["seconds"]})
    if "finetune" not in stages:
        return metrics

    # phase IV: fine-tune on n expert cells per class, grid chosen on held-out expert cells
    fc = cfg.finetune
    eidx = _labels_or_fail(bank.expert, "expert")
    rng = np.random.default_rng(cfg.seed)
    perm = rng.permutation(eidx)
    n_hold = int(round(fc.holdout * len(perm))) if len(perm) > 1 else 0
    hold, pool = perm[:n_hold], perm[n_hold:]
    for n in fc.counts:
        fpath = out / "finetune" / f"n{n}.pt"
        key = f"student+finetune-{n}"
        if fpath.exists() and key in metrics:
            continue
        pick = pool[balanced_subset(bank.expert[pool], n, classes=range(k), seed=cfg.seed + n)]
        t0 = time.time()
        best: tuple[float, Any, dict[str, Any]] | None = None
        for lr in fc.lr:
            for p in fc.dropout:
                model = copy.deepcopy(student)
                if hasattr(model, "set_dropout"):
                    model.set_dropout(p)
                train_classifier(model, x[pick], torch.from_numpy(bank.expert[pick]), epochs=fc.epochs, lr=lr,
                                 batch_size=fc.batch_size, seed=cfg.seed)
                if len(hold):
                    pred = predict_logits_cells(model, x[hold]).argmax(1).numpy()
                    val = classification_metrics(bank.expert[hold], pred, names)["F1"]
                else:
                    val = 0.0
                if best is None or val > best[0]:
                    best = (val, model, {"lr": lr, "dropout": p, "holdout_F1": val})
        assert best is not None
        _save_classifier(fpath, best[1], cfg.student.model, names, size=size, scale=cfg.scale,
                         options=cfg.student.options, **best[2])
        record(key, best[1], {"train_cells": int(pick.size), "per_class": n, "seconds": time.time() - t0, **best[2]})
    return metrics
