"""MLPS (Han et al., MedIA 2022) ablation in the layout of the paper's Table III, on CPU, from scratch.

Rows per dataset: phase 1 alone (no attention / DA / PDA: CAMs of the classes the classifier predicts,
as the authors' test phase scores them), phase 2 trained on the PDA classifier's pseudo masks of one
layer (mid, late, final), of all three (MLPS, 0.2/0.2/0.6), MLPS + classification gate (eps 0.1), and a
fully supervised DeepLabV3+ with the same network, steps and batch as the ceiling.

Data (patch labels derived from the masks, a class present at >= 5% of the patch; training never sees
a mask except in the supervised ceiling):
  glas       GlaS 3-class grade view, the 20 staged train images at 0.5 scale, 112 px patches;
             6 images held out for scoring (3 benign, 3 malignant), 14 for training.
  synthetic  synthetic tissue (5 classes), 96 px patches of 192 px images, its own test split.

Scale-down (to fit ~30 min of one shared CPU thread for everything): ResNet-18 encoders without
pretrained weights (paper: ResNet-38 / DeepLabV3+ from ImageNet), STEPS steps of batch BATCH per model,
Adam 1e-3, flips + 90° rotations only; the PDA schedule's 20 "epochs" are compressed into STEPS steps
(epoch = STEPS/20 steps, warm-up 3 epochs, σ 0.985, floor 0.65).

Resumable: finished rows are kept in results/weak_mlps.json; runs resume from their checkpoints.
Usage: python benchmarks/weak_mlps.py [--datasets glas,synthetic] [--steps 80] [--out runs/bench_weak]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import load_rows, write_results  # noqa: E402

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
    import lightning as L

    from pathseg.engine.config import load_config
    from pathseg.engine.data import build_dataset
    from pathseg.engine.train import evaluate, train
    from pathseg.methods.weak.mlps import gate_checkpoint
    from pathseg.methods.weak.pseudo import write_pseudo_masks
    from pathseg.metrics import SegmentationMetrics

    torch.set_num_threads(1)
    name = args.name
    rows = load_rows(name) if not args.fresh else []
    extra = {"scale_down": {}, "pseudo_mask_quality": []}
    prev = Path(__file__).resolve().parent / "results" / f"{name}.json"
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
            L.seed_everything(0, verbose=False)
            cfg = load_config(None, base_overrides(steps, batch, root / _slug(method)) + overrides)
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
            from pathseg.io.files import read_image

            for layer in ("mid", "late", "final"):
                m = SegmentationMetrics(len(class_names), class_names=class_names)
                for i in range(len(train_ds)):
                    s = train_ds[i]
                    m.update(s["mask"], read_image(pm / layer / f"{s['meta']['id']}.png", mode=None))
                r = m.compute()
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


FINDINGS = """
How these were run: `python benchmarks/weak_mlps.py --datasets glas --steps 400 --name weak_glas_400 --fresh`
and the same with `--datasets synthetic --name weak_syn_400`, as two processes (one torch thread each, beside
other benchmarks on the 2 shared cores, so the `s` column includes contention), merged with
`python benchmarks/weak_mlps.py --fresh --merge weak_glas_400,weak_syn_400`. Every model gets 400 Adam steps
(lr 1e-3, poly decay 0.9) of batch 8, the ceiling included; the 20 PDA "epochs" are 20 steps each, so μ falls
to 0.77 by the end, not to the floor 0.65. One seed. The previous version of this table ran 40-60 steps.

**The paper's finding (MLPS + gate within about 2 mIoU points of full supervision) does not hold here**: the
gap is 20 points on the synthetic set and larger on GlaS (table above).

Synthetic tissue, 5 classes, where the method works as a method:
- *Phase 2 reproduces its pseudo masks and does not get past them.* The final-layer Grad-CAM masks score 0.79
  mIoU against the true masks of the training patches, and phase 2 trained on them scores 0.80 on the test
  images. The ceiling learns from exact masks and reaches 0.94. The 15-20 point gap is the quality of the
  Grad-CAM masks: CAMs at 1/8 resolution, upsampled bilinearly, blur class borders on 96 px patches.
- *MLPS (0.74) is below its best single layer (final, 0.80) here.* It gives weight 0.2 to the late layer,
  whose masks are the worst of the three (0.66), and 0.2 to the mid layer (0.77). The paper's premise is that
  the layers' errors are complementary; here the best layer is the deepest, and mixing in the others costs 5
  points.
- *The gate changes nothing* (0.737 against 0.741): with 5 classes spread over 192 px images, most test
  patches hold most classes, so few probabilities fall below ε = 0.1.
- *Phase 1: PDA beats constant dropout attention and loses to no attention* (CAM mIoU 0.69 against 0.59 and
  0.75; classifier per-label accuracy on the held-out patches 0.53, 0.48 and 0.80). Erasing the most
  discriminative regions slows the classifier; in 400 steps it has not caught up.

GlaS, 3-class grade view (background / benign gland / malignant gland): the weak path fails.
- *The phase-1 classifiers never learn the grade.* Their per-label accuracy on the held-out patches is
  0.54-0.62 (exact label-set match 0.22-0.36), and every phase-1 row segments everything as background (mIoU
  0.138 = background IoU 0.413 / 3). Grade is a property of the gland's shape and the whole image; a 112 px
  patch at half resolution seen 400 times, with 14 training images, does not teach a ResNet-18 from scratch to
  tell benign from malignant glands.
- *The pseudo masks localise anyway, because they use the true patch labels.* Grad-CAM is restricted to the
  classes in the label, so the masks reach mIoU 0.30 (mid), 0.44 (late) and 0.21 (final) on the training
  patches. Phase 2 on the late-layer masks gives 0.24 and on the mid-layer masks 0.20, with the malignant
  class at IoU 0.30-0.41.
- *The final layer's masks are mostly background, and training on them collapses.* That holds for the final
  layer alone and for MLPS, which gives the final layer weight 0.6: both segment everything as background
  (0.138), so the gate has nothing left to remove.
- *The ceiling is low too* (0.395; benign gland 0.31, malignant 0.44): with exact masks and the same 400
  steps, telling the grades apart is the hard part of this view. The best weak row (late layer, 0.236)
  is 16 points below it, MLPS + gate 26.

What would test the claim: an ImageNet or self-supervised encoder (the paper used ResNet-38 from ImageNet),
epochs rather than hundreds of steps, and, for GlaS, tissue classes that a patch can show (LUAD-HistoSeg /
BCSS-WSSS, whose readers exist) rather than a grade.
"""


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
    if FINDINGS:
        lines += ["## Findings", "", FINDINGS.strip(), ""]
    return "\n".join(lines)


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
