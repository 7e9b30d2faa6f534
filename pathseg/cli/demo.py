"""`pathseg demo`: the whole path on the embedded synthetic default, in a few minutes on a CPU.

Trains U-Net/ResNet-18 on synthetic 5-class H&E tissue, evaluates on held-out synthetic images from
the same centres, and writes ``metrics.md``, ``metrics.json`` and ``overlay.png`` (image | truth |
prediction for four test images). Run again on the same folder, it resumes (``--steps`` more than the
model has: trains the rest; fewer: trains nothing), and ``metrics.md`` reports the model's own steps and
training time over every run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pathseg.engine.config import load_config
from pathseg.io.files import write_image, write_json, write_text


def demo_config(out: Path, steps: int, seed: int):
    return load_config(None, [
        "data.dataset=synthetic",
        "data.options={task: tissue, n_images: 32, size: 256}",
        "data.train_transforms=[{name: random_crop, size: 192}, {name: flip}, {name: rotate90}]",
        "data.batch_size=8",
        "model.name=unet",
        "model.encoder=resnet18",
        "optim.name=adam",
        "optim.lr=0.002",
        "optim.weight_decay=0.0",
        f"trainer.max_steps={steps}",
        f"trainer.val_every={max(1, steps // 3)}",
        f"trainer.seed={seed}",
        f"trainer.out={out}",
    ])


def column_titles(grid: np.ndarray, titles: tuple[str, ...]) -> np.ndarray:
    """``grid`` with a white title row naming each of its equal-width columns."""
    import cv2

    band = np.full((24, grid.shape[1], 3), 255, np.uint8)
    w = grid.shape[1] // len(titles)
    for i, t in enumerate(titles):
        cv2.putText(band, t, (i * w + 6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([band, grid], axis=0)


def demo_row(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, colors) -> np.ndarray:
    """image | truth | prediction side by side: the truth in flat class colours, the prediction drawn as
    ``pathseg predict`` draws its overlays (:func:`pathseg.inference.writers.overlay_image`, the same blend).

    Shape:
        image (H, W, 3) uint8, truth and pred (H, W) class indices -> (H, 3 W, 3) uint8.
    """
    from pathseg.inference.writers import colorize, overlay_image

    return np.concatenate([image, colorize(truth, colors), overlay_image(image, pred, colors)], axis=1)


def run_demo(out: Path, *, steps: int = 200, seed: int = 0, console=None) -> dict:
    from pathseg.cli.common import metrics_markdown, metrics_table
    from pathseg.engine.checkpoint import load_model
    from pathseg.engine.data import build_dataset
    from pathseg.engine.train import describe_training, evaluate, per_class, train
    from pathseg.inference.writers import with_legend
    from pathseg.models.predict import predict_logits, to_model_input

    cfg = demo_config(out, steps, seed)
    res = train(cfg)
    metrics = evaluate(res["checkpoint"], cfg)
    model, info = load_model(res["checkpoint"])
    test = build_dataset(cfg, "test")
    rows = []
    for i in range(min(4, len(test))):
        s = test[i]
        with torch.inference_mode():
            pred = predict_logits(model, to_model_input(s["image"], info["mean"], info["std"])).argmax(1)[0].numpy()
        truth = np.where(s["mask"] == 255, 0, s["mask"])
        rows.append(demo_row(s["image"], truth, pred, info["colors"]))
    grid = np.concatenate(rows, axis=0)
    write_image(out / "overlay.png", with_legend(column_titles(grid, ("image", "truth", "prediction")),
                                                 info["class_names"], info["colors"]))
    classes = per_class(metrics)
    md = ["# pathseg demo: U-Net/ResNet-18 on synthetic H&E tissue (5 classes)", "",
          f"Trained {describe_training(res)}; test = held-out synthetic images.", "",
          metrics_markdown({"test": metrics}), "| class | IoU | Dice |", "|---|---|---|"]
    md += [f"| {n} | {v['IoU']:.4f} | {v['Dice']:.4f} |" for n, v in classes.items()]
    write_text(out / "metrics.md", "\n".join(md) + "\n")
    write_json(out / "metrics.json", {"test": metrics, "train_steps": res["steps"],
                                      "train_seconds": res["total_seconds"], "train_runs": res["runs"],
                                      "resumed_from": res["resumed_from"], "this_run_seconds": res["seconds"],
                                      "checkpoint": res["checkpoint"]})
    if console is not None:
        console.print(metrics_table({"test": metrics}))
        console.print(f"wrote {out / 'metrics.md'}, {out / 'overlay.png'}, model {res['checkpoint']}")
    return metrics
