"""MLPS (Han et al., MedIA 2022) ablation in the layout of the paper's Table III, on CPU, from scratch.

Rows per dataset: phase 1 alone (no attention / DA / PDA: CAMs of the classes the classifier predicts,
as the authors' test phase scores them), phase 2 trained on the PDA classifier's pseudo masks of one
layer (mid, late, final), of all three (MLPS, 0.2/0.2/0.6), MLPS + classification gate (eps 0.1), and a
fully supervised DeepLabV3+ with the same network, steps and batch as the ceiling.

Data (patch labels derived from the masks, a class present at >= 5% of the patch; training never sees
a mask except in the supervised ceiling):
  glas       GlaS 3-class grade view, the 85 training images at 0.5 scale, 112 px patches;
             6 fixed images held out for scoring (3 benign, 3 malignant), 79 for training (the committed
             table ran on the earlier 20-image set: 14 for training).
  synthetic  synthetic tissue (5 classes), 96 px patches of 192 px images, its own test split.

Scale-down (to fit ~30 min of one shared CPU thread for everything): ResNet-18 encoders without
pretrained weights (paper: ResNet-38 / DeepLabV3+ from ImageNet), STEPS steps of batch BATCH per model,
Adam 1e-3, flips + 90° rotations only; the PDA schedule's 20 "epochs" are compressed into STEPS steps
(epoch = STEPS/20 steps, warm-up 3 epochs, σ 0.985, floor 0.65).

Every model is a config and a call to the library's driver (pathseg.engine.train.train); the gated model is
scored by pathseg.engine.train.evaluate and the pseudo masks by pathseg.data.pseudo_masks.score_pseudo_masks.
Resumable: finished rows are kept in results/weak_mlps.json; runs resume from their checkpoints. The findings
prose is benchmarks/notes/weak_mlps.md (see benchmarks/common.py).
Usage: python benchmarks/weak_mlps.py [--datasets glas,synthetic] [--steps 80] [--out runs/bench_weak]
Smallest: PATHSEG_BENCH_RESULTS=/tmp/r python benchmarks/weak_mlps.py --datasets synthetic --steps 2 --fresh \
          --out /tmp/bench_weak
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, load_rows, with_notes, write_results  # noqa: E402

NAME = "weak_mlps"
GLAS_TEST = ["train_8", "train_15", "train_22", "train_5", "train_11", "train_16"]
DATASETS = {
    "glas": {"dataset": "glas", "options": {"view": "grade"}, "scale": 0.5, "patch": 112, "min_fraction": 0.05,
             "test_ids": GLAS_TEST},
    "synthetic": {"dataset": "synthetic", "options": {"task": "tissue", "n_images": 12, "size": 192}, "patch": 96,
                  "min_fraction": 0.05},
}
PHASE2 = {"phase2: mid layer": [1, 0, 0], "phase2: late layer": [0, 1, 0], "phase2: final layer": [0, 0, 1],
          "phase2: multi-layer (MLPS)": [0.2, 0.2, 0.6]}


ALL_ROWS = ["phase1: no attention", "phase1: DA (mu 0.7)", "phase1: PDA", *PHASE2, "phase2: MLPS + gate (eps 0.1)",
            "fully supervised (ceiling)"]


def _flow(d: dict) -> str:
    return json.dumps(d)  # JSON is YAML flow syntax


def base_overrides(steps: int, batch: int, out: Path) -> list[str]:
    return [
        "data.train_transforms=[{name: flip}, {name: rotate90}]", f"data.batch_size={batch}",
        "model.encoder=resnet18", "optim.name=adam", "optim.lr=0.001", "optim.weight_decay=0.0001",
        f"trainer.max_steps={steps}", f"trainer.val_every={steps}", "trainer.threads=1", "trainer.progress=false",
        "trainer.log_every=10", f"trainer.out={out}",
    ]


def patch_data(name: str, **extra) -> list[str]:
    return ["data.dataset=patch_labels", f"data.options={_flow({**DATASETS[name], **extra})}"]


def row(method: str, dataset: str, metrics: dict, seconds: float, class_names: list[str]) -> dict:
    keep = {k: float(metrics[k]) for k in ("mIoU", "FwIoU", "accuracy")}
    keep.update({f"IoU/{c}": float(metrics[f"IoU/{c}"]) for c in class_names})
    return {"method": method, "dataset": dataset, "fraction": 1.0, "seed": 0, "metrics": keep,
            "seconds": round(seconds, 1)}


def run(args) -> None:
    from pathseg.data.pseudo_masks import score_pseudo_masks
    from pathseg.engine.config import load_config
    from pathseg.engine.data import build_dataset
    from pathseg.engine.train import evaluate, train
    from pathseg.methods.weak.mlps import gate_checkpoint
    from pathseg.methods.weak.pseudo import write_pseudo_masks

    torch.set_num_threads(1)
    name = args.name
    rows = load_rows(name) if not args.fresh else []
    extra = {"scale_down": {}, "pseudo_mask_quality": []}
    prev = RESULTS / f"{name}.json"
    if prev.exists() and not args.fresh:
        old = json.loads(prev.read_text())
        extra["pseudo_mask_quality"] = old.get("pseudo_mask_quality", [])
        extra["scale_down"] = old.get("scale_down", {})
    for other in args.merge:  # rows of runs written under another name (e.g. run in parallel)
        o = json.loads((prev.parent / f"{other}.json").read_text())
        have = {(r["dataset"], r["method"]) for r in rows}
        rows += [r for r in o["rows"] if (r["dataset"], r["method"]) not in have]
        extra["pseudo_mask_quality"] += [q for q in o.get("pseudo_mask_quality", [])
                                         if q not in extra["pseudo_mask_quality"]]
        extra["scale_down"].update(o.get("scale_down", {}))
    done = {(r["dataset"], r["method"]) for r in rows}

    def save():
        write_results(name, rows, markdown(rows, extra), **extra)

    for ds in args.datasets:
        if all((ds, m) in done for m in ALL_ROWS):
            continue
        steps, batch = args.steps, args.batch
        root = Path(args.out) / ds
        extra["scale_down"][ds] = {"steps": steps, "batch": batch, "encoder": "resnet18 (no pretraining)",
                                   "optimiser": "adam 1e-3, poly decay 0.9", "threads": 1, "data": DATASETS[ds],
                                   "pda_epoch_steps": max(1, steps // 20)}
        ep = max(1, steps // 20)

        def fit(method: str, overrides: list[str]) -> dict:
            cfg = load_config(None, base_overrides(steps, batch, root / _slug(method)) + overrides)  # seed 0
            t0 = time.time()
            res = train(cfg)
            res["wall"] = time.time() - t0
            return res

        test_cfg = load_config(None, base_overrides(steps, batch, root / "eval") + patch_data(ds))
        class_names = build_dataset(test_cfg, "test").class_names

        def add(method: str, metrics: dict, seconds: float) -> None:
            rows.append(row(method, ds, metrics, seconds, class_names))
            done.add((ds, method))
            save()
            print(f"{ds:9s} {method:32s} mIoU {metrics['mIoU']:.3f}  ({seconds:.0f} s)", flush=True)

        # phase 1: three classifiers (validation = CAM segmentation of the held-out patches)
        for att, label in (("none", "phase1: no attention"), ("da", "phase1: DA (mu 0.7)"), ("pda", "phase1: PDA")):
            ckpt = root / _slug(label) / "model.ckpt"
            if (ds, label) in done and (att != "pda" or ckpt.exists()):
                continue
            params = {"attention": att, "warmup_epochs": 3, "epoch_steps": ep}
            res = fit(label, patch_data(ds, train_masks=False) + [
                "model.name=cam", "method.name=mlps_classifier", f"method.params={_flow(params)}"])
            if (ds, label) not in done:
                add(label, res["metrics"], res["wall"])
        cls_ckpt = root / _slug("phase1: PDA") / "model.ckpt"

        # pseudo masks of the PDA classifier, and how good they are against the real training masks
        pm = root / "pseudo"
        t0 = time.time()
        train_ds = build_dataset(load_config(None, base_overrides(steps, batch, root) + patch_data(ds)), "train")
        write_pseudo_masks(cls_ckpt, train_ds, pm, batch_size=16)
        pm_seconds = time.time() - t0
        if not any(q["dataset"] == ds for q in extra["pseudo_mask_quality"]):
            for layer, r in score_pseudo_masks(train_ds, pm).items():
                extra["pseudo_mask_quality"].append({"dataset": ds, "layer": layer, "mIoU": r["mIoU"],
                                                      "accuracy": r["accuracy"], "seconds": round(pm_seconds, 1)})
            save()

        # phase 2: single layers and MLPS
        data2 = {"masks": str(pm), "dataset": "patch_labels", "options": DATASETS[ds]}
        for label, weights in PHASE2.items():
            ckpt = root / _slug(label) / "model.ckpt"
            if (ds, label) in done and (not label.endswith("(MLPS)") or ckpt.exists()):
                continue
            res = fit(label, ["data.dataset=pseudo_masks", f"data.options={_flow(data2)}", "model.name=deeplabv3plus",
                              "method.name=mlps", f"method.params={_flow({'layer_weights': weights})}"])
            if (ds, label) not in done:
                add(label, res["metrics"], res["wall"])

        # MLPS + gate: one gated model scored by the engine's evaluate
        label = "phase2: MLPS + gate (eps 0.1)"
        if (ds, label) not in done:
            t0 = time.time()
            gated = gate_checkpoint(root / _slug("phase2: multi-layer (MLPS)") / "model.ckpt", cls_ckpt,
                                    root / "gated.ckpt", eps=0.1)
            add(label, evaluate(gated, test_cfg, "test"), time.time() - t0)

        # ceiling: the same DeepLabV3+ trained on the real masks of the same patches
        label = "fully supervised (ceiling)"
        if (ds, label) not in done:
            res = fit(label, patch_data(ds) + ["model.name=deeplabv3plus", "method.name=supervised"])
            add(label, res["metrics"], res["wall"])
    save()


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in s).strip("_").lower()


def markdown(rows: list[dict], extra: dict) -> str:
    lines = ["# MLPS ablation (Han et al. 2022, Table III layout), scaled down to one CPU thread", ""]
    for ds in ("glas", "synthetic"):
        rs = [r for r in rows if r["dataset"] == ds]
        if not rs:
            continue
        classes = [k[4:] for k in rs[0]["metrics"] if k.startswith("IoU/")]
        lines += [f"## {ds}", "", f"Scale-down: {json.dumps(extra['scale_down'].get(ds, {}))}", "",
                  "| method | " + " | ".join(classes) + " | mIoU | FwIoU | accuracy | s |",
                  "|---" * (len(classes) + 5) + "|"]
        for r in rs:
            m = r["metrics"]
            cells = [f"{m[f'IoU/{c}']:.3f}" for c in classes] + [f"{m[k]:.3f}" for k in ("mIoU", "FwIoU", "accuracy")]
            lines.append(f"| {r['method']} | " + " | ".join(cells) + f" | {r['seconds']:.0f} |")
        q = [x for x in extra.get("pseudo_mask_quality", []) if x["dataset"] == ds]
        if q:
            lines += ["", "Pseudo masks of the PDA classifier vs the real masks of the training patches: "
                      + ", ".join(f"{x['layer']} mIoU {x['mIoU']:.3f} (acc {x['accuracy']:.3f})" for x in q)]
        ceil = next((r for r in rs if r["method"].startswith("fully")), None)
        gate = next((r for r in rs if "gate" in r["method"]), None)
        if ceil and gate:
            lines += ["", f"MLPS + gate vs full supervision: {100 * (gate['metrics']['mIoU'] - ceil['metrics']['mIoU']):+.1f} "
                      "mIoU points (paper: within about 2)."]
        lines.append("")
    return with_notes(NAME, "\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", default="glas,synthetic")
    p.add_argument("--steps", type=int, default=80)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--out", default="runs/bench_weak")
    p.add_argument("--fresh", action="store_true", help="ignore rows already in the results file")
    p.add_argument("--name", default=NAME, help="results file name (results/<name>.json)")
    p.add_argument("--merge", default="", help="comma-separated results names whose rows to take in")
    args = p.parse_args()
    args.datasets = [d for d in args.datasets.split(",") if d]
    args.merge = [m for m in args.merge.split(",") if m]
    unknown = set(args.datasets) - set(DATASETS)
    if unknown:
        p.error(f"unknown datasets {sorted(unknown)}; choose from {', '.join(DATASETS)}")
    run(args)


if __name__ == "__main__":
    main()
