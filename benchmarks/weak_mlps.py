"""MLPS (Han et al., MedIA 2022) by the evidence protocol (docs/evidence.md): the paper's Table III rows, on CPU.

Rows per dataset and seed (the seed fixes every model's initialisation and batch order):
  phase 1: the classifier with no attention, constant dropout attention (DA, mu 0.7) and progressive dropout
           attention (PDA), scored by its CAMs of the predicted classes (as the authors' test phase);
  pseudo masks: the PDA classifier's Grad-CAM masks of each layer (mid, late, final) against the true masks of
           the training patches (what phase 2 learns from);
  phase 2: DeepLabV3+ on one layer's masks (mid, late, final), on all three (MLPS, 0.2/0.2/0.6), and MLPS with
           the classification gate (eps 0.1);
  ceiling: the same DeepLabV3+ on the true masks of the same patches.
Every model: ResNet-18 without pretrained weights, ``--steps`` Adam steps (1e-3, poly 0.9) of batch ``--batch``,
flips and turns, one thread; the 20 PDA "epochs" are ``steps / 20`` steps each.

Data (patch labels from the masks: a class is present when it covers >= ``min_fraction`` of a patch; weak rows
never see a training mask):
  synthetic  5-class synthetic tissue (``pathseg synth``), 96 px patches of 192 px images, 5% threshold,
             its own test images.
  glas       GlaS binary view (background / gland), all 85 training images at half scale, 64 px patches, 20%
             threshold; whole patients held out (3 of the 15 of Grade.csv, seeded once: ``glas_test_patients``),
             so no patient is on both sides.

Run as two processes; rows are appended under a lock as they finish and skipped when present:

    python benchmarks/weak_mlps.py --shard 0/2 &  python benchmarks/weak_mlps.py --shard 1/2
    python benchmarks/weak_mlps.py --report-only
    PATHSEG_BENCH_RESULTS=/tmp/r python benchmarks/weak_mlps.py --steps 2 --seeds 0 --out /tmp/bench_weak  # smallest
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import RESULTS, command, machine  # noqa: E402
from evidence import RowStore, by_seed, cell, comparison, parse_seeds, pyplot, save_figure, shard  # noqa: E402

NAME = "weak_mlps"
DATASETS = {
    "synthetic": {"dataset": "synthetic", "options": {"task": "tissue", "n_images": 12, "size": 192}, "patch": 96,
                  "min_fraction": 0.05},
    "glas": {"dataset": "glas", "options": {"view": "binary"}, "scale": 0.5, "patch": 64, "min_fraction": 0.2},
}
GLAS_HELD_PATIENTS = 3
PHASE1 = {"phase1: no attention": "none", "phase1: DA (mu 0.7)": "da", "phase1: PDA": "pda"}
PHASE2 = {"phase2: mid layer": [1, 0, 0], "phase2: late layer": [0, 1, 0], "phase2: final layer": [0, 0, 1],
          "phase2: MLPS": [0.2, 0.2, 0.6]}
GATE, CEILING = "phase2: MLPS + gate (eps 0.1)", "fully supervised (ceiling)"
LAYERS = ("mid", "late", "final")
METHODS = [*PHASE1, *(f"pseudo masks: {la}" for la in LAYERS), *PHASE2, GATE, CEILING]


def _flow(d: dict) -> str:
    return json.dumps(d)  # JSON is YAML flow syntax


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in s).strip("_").lower()


def glas_test_patients() -> tuple[list[str], list[str]]:
    """(held-out patients, their images): GLAS_HELD_PATIENTS of Grade.csv's patients, seeded once."""
    from pathseg.data.glas import GlaS

    ds = GlaS(split="train")
    patients = sorted(set(ds.patients), key=lambda p: (len(p), p))
    rng = np.random.default_rng(2022)
    held = sorted(patients[i] for i in rng.choice(len(patients), size=GLAS_HELD_PATIENTS, replace=False))
    return held, [i for i, p in zip(ds.ids, ds.patients) if p in held]


def data_options(name: str, **extra) -> dict:
    d = dict(DATASETS[name])
    if name == "glas":
        d["test_ids"] = glas_test_patients()[1]
    return {**d, **extra}


def base_overrides(args: argparse.Namespace, seed: int, out: Path) -> list[str]:
    return ["data.train_transforms=[{name: flip}, {name: rotate90}]", f"data.batch_size={args.batch}",
            "model.encoder=resnet18", "optim.name=adam", "optim.lr=0.001", "optim.weight_decay=0.0001",
            "optim.poly_power=0.9", f"trainer.max_steps={args.steps}", f"trainer.val_every={args.steps}",
            "trainer.threads=1", "trainer.progress=false", "trainer.log_every=10", f"trainer.seed={seed}",
            "trainer.resume=false", f"trainer.out={out}"]


CLS_METRICS = ("cls_exact_match", "cls_accuracy")  # phase 1: patch labels predicted (score > 0.5) vs true


def metrics_of(m: dict, class_names: list[str]) -> dict[str, float]:
    keep = {k: float(m[k]) for k in ("mIoU", "accuracy", *CLS_METRICS) if k in m}
    keep.update({f"IoU/{c}": float(m[f"IoU/{c}"]) for c in class_names if f"IoU/{c}" in m})
    return keep


def run_unit(ds: str, seed: int, store: RowStore, args: argparse.Namespace) -> None:
    """Every row of one (dataset, seed), in dependency order, each stored as it finishes."""
    from pathseg.data.pseudo_masks import score_pseudo_masks
    from pathseg.engine.config import load_config
    from pathseg.engine.data import build_dataset
    from pathseg.engine.train import evaluate, train
    from pathseg.methods.weak.mlps import gate_checkpoint
    from pathseg.methods.weak.pseudo import write_pseudo_masks

    root = Path(args.out) / ds / f"seed{seed}"
    patch = ["data.dataset=patch_labels", f"data.options={_flow(data_options(ds))}"]
    test_cfg = load_config(None, base_overrides(args, seed, root / "eval") + patch)
    class_names = build_dataset(test_cfg, "test").class_names

    def have(method: str) -> bool:
        return store.has((method, ds, 1.0, seed))

    def add(method: str, metrics: dict, seconds: float, **more) -> None:
        store.add({"method": method, "dataset": ds, "fraction": 1.0, "seed": seed,
                   "metrics": metrics_of(metrics, class_names), "seconds": round(seconds, 1), **more},
                  lambda result: render(result, args.results))
        print(f"{ds} seed {seed} {method}: mIoU {metrics['mIoU']:.4f} ({seconds:.0f} s)", flush=True)

    def fit(method: str, overrides: list[str]) -> dict:
        cfg = load_config(None, base_overrides(args, seed, root / _slug(method)) + overrides)
        t0 = time.time()
        res = train(cfg)
        res["wall"] = time.time() - t0
        return res

    ep = max(1, args.steps // 20)
    cls_ckpt = root / _slug("phase1: PDA") / "model.ckpt"
    for label, att in PHASE1.items():
        if have(label) and (att != "pda" or cls_ckpt.exists()):
            continue
        params = {"attention": att, "warmup_epochs": 3, "epoch_steps": ep}
        res = fit(label, ["data.dataset=patch_labels", f"data.options={_flow(data_options(ds, train_masks=False))}",
                          "model.name=cam", "method.name=mlps_classifier", f"method.params={_flow(params)}"])
        if not have(label):
            add(label, res["metrics"], res["wall"])
    pm = root / "pseudo"
    train_ds = build_dataset(load_config(None, base_overrides(args, seed, root) + patch), "train")
    if not all(have(f"pseudo masks: {la}") for la in LAYERS) or not (pm / ".complete").exists():
        t0 = time.time()
        write_pseudo_masks(cls_ckpt, train_ds, pm, batch_size=16)
        (pm / ".complete").touch()
        for layer, r in score_pseudo_masks(train_ds, pm).items():
            if not have(f"pseudo masks: {layer}"):
                add(f"pseudo masks: {layer}", r, time.time() - t0, scored_on="training patches (true masks)")
    data2 = {"masks": str(pm), "dataset": "patch_labels", "options": data_options(ds)}
    mlps_ckpt = root / _slug("phase2: MLPS") / "model.ckpt"
    for label, weights in PHASE2.items():
        if have(label) and (label != "phase2: MLPS" or mlps_ckpt.exists()):
            continue
        res = fit(label, ["data.dataset=pseudo_masks", f"data.options={_flow(data2)}", "model.name=deeplabv3plus",
                          "method.name=mlps", f"method.params={_flow({'layer_weights': weights})}"])
        if not have(label):
            add(label, res["metrics"], res["wall"])
    if not have(GATE):
        t0 = time.time()
        gated = gate_checkpoint(mlps_ckpt, cls_ckpt, root / "gated.ckpt", eps=0.1)
        add(GATE, evaluate(gated, test_cfg, "test"), time.time() - t0)
    if not have(CEILING):
        res = fit(CEILING, patch + ["model.name=deeplabv3plus", "method.name=supervised"])
        add(CEILING, res["metrics"], res["wall"])


def backfill_classifier_metrics(result: dict[str, Any], out: Path) -> bool:
    """Phase-1 rows stored before their patch-label scores were kept: the scores from the same run's final
    validation record (``<out>/<dataset>/seed<k>/<row>/metrics.json``), where that run folder is still here."""
    changed = False
    for r in result["rows"]:
        if r["method"] not in PHASE1 or all(k in r["metrics"] for k in CLS_METRICS):
            continue
        rec = Path(out) / r["dataset"] / f"seed{r['seed']}" / _slug(r["method"]) / "metrics.json"
        if not rec.exists():
            continue
        last = json.loads(rec.read_text())[-1]
        if abs(float(last["mIoU"]) - r["metrics"]["mIoU"]) > 1e-9:  # not the run this row came from
            continue
        r["metrics"].update({k: float(last[k]) for k in CLS_METRICS if k in last})
        changed = True
    return changed


def markdown(result: dict[str, Any]) -> str:
    rows, rec = result["rows"], result["recipe"]
    lines = ["# MLPS by the evidence protocol (Han et al. 2022, Table III rows), CPU scale-down", "",
             f"Made by `{result['command']}` on {result['machine']}.", "",
             f"Every model: ResNet-18 from scratch, {rec['steps']} Adam steps (1e-3, poly 0.9) of batch "
             f"{rec['batch']}, flips and turns, one thread; seeds paired across rows (same seed, same data). "
             "Paper: ResNet-38 and DeepLabV3+ from ImageNet, 20 epochs on a GPU. mIoU over all classes of the "
             "test patches.", ""]
    for ds in DATASETS:
        rs = [r for r in rows if r["dataset"] == ds]
        if not rs:
            continue
        d = DATASETS[ds]
        held = (f"; held out: patients {', '.join(rec['glas_test_patients'])} ({rec['glas_test_images']} images)"
                if ds == "glas" and "glas_test_patients" in rec else "")
        lines += [f"## {ds}", "", f"Patches {d['patch']} px, presence threshold {d['min_fraction']:.0%}, "
                  f"scale {d.get('scale', 1)}{held}.", "",
                  "| row | mIoU mean (sd) | accuracy mean (sd) | below ceiling (mIoU) | patch labels: exact match "
                  "| patch labels: Jaccard | seeds |",
                  "|---|---|---|---|---|---|---|"]
        ceil = by_seed(rs, CEILING, 1.0, "mIoU")
        cm = statistics.fmean(ceil.values()) if ceil else None
        for m in METHODS:
            v = by_seed(rs, m, 1.0, "mIoU")
            if v:
                gap = f"{cm - statistics.fmean(v.values()):.4f}" if cm is not None and "pseudo" not in m else ""
                acc = cell(list(by_seed(rs, m, 1.0, "accuracy").values()))
                cls = [cell(list(by_seed(rs, m, 1.0, k).values())) if m in PHASE1 else "" for k in CLS_METRICS]
                lines.append(f"| {m} | {cell(list(v.values()))} | {acc} | {gap} | {' | '.join(cls)} | {len(v)} |")
        lines += ["", "Pseudo-mask rows are scored on the training patches (against their true masks), every other row "
                  "on the test patches. Patch labels (phase 1): the classifier's present classes (score > 0.5) "
                  "against the true patch labels of the test patches, exact match and mean per-patch Jaccard.", "",
                  "Claims (paired by seed; mean difference [95% t interval], seeds where the first is higher):", ""]
        for a, b, text in ((GATE, CEILING, "MLPS + gate within 2 points of full supervision"),
                           (GATE, "phase2: final layer", "MLPS + gate above the final layer"),
                           (GATE, "phase2: late layer", "MLPS + gate above the late layer"),
                           (GATE, "phase2: mid layer", "MLPS + gate above the mid layer"),
                           ("phase2: MLPS", "phase2: final layer", "MLPS above the final layer (no gate)"),
                           ("phase1: PDA", "phase1: no attention", "PDA above no attention (phase 1)")):
            r = comparison(rs, 1.0, "mIoU", b, a)
            if r["n"] < 2:
                continue
            lo, hi = r["ci_t"]
            if b == CEILING:  # "within 2 points": the interval of (gate − ceiling) lies above −0.02
                verdict = ("holds (significant)" if lo > -0.02 else "same direction, not significant"
                           if r["mean_diff"] > -0.02 else "does not hold")
            else:
                verdict = r["verdict"]
            lines.append(f"- {text}: {r['mean_diff']:+.4f} [{lo:+.4f}, {hi:+.4f}], {r['wins']}/{r['n']} seeds: "
                         f"**{verdict}**.")
        lines.append("")
    if result.get("notes"):
        lines += ["## Notes", "", result["notes"], ""]
    return "\n".join(lines)


def render(result: dict[str, Any], path: Path) -> None:
    from pathseg.io.files import write_text

    write_text(path.with_suffix(".md"), markdown(result))
    plot(result, path.with_suffix(".png"))


def plot(result: dict[str, Any], path: Path) -> None:
    """One panel per dataset: the rows on the x axis, one line per seed."""
    plt = pyplot()
    if plt is None:
        return

    rows = result["rows"]
    dss = [d for d in DATASETS if any(r["dataset"] == d for r in rows)]
    if not dss:
        return
    fig, axes = plt.subplots(1, len(dss), figsize=(6 * len(dss), 4), squeeze=False)
    for ax, ds in zip(axes[0], dss):
        rs = [r for r in rows if r["dataset"] == ds]
        present = [m for m in METHODS if by_seed(rs, m, 1.0, "mIoU")]
        for s in sorted({r["seed"] for r in rs}):
            ax.plot(range(len(present)), [by_seed(rs, m, 1.0, "mIoU").get(s, np.nan) for m in present], "-o", ms=3,
                    lw=1, label=f"seed {s}")
        ax.set_xticks(range(len(present)), [m.split(": ", 1)[-1] for m in present], rotation=40, ha="right",
                      fontsize=7)
        ax.set_title(ds, fontsize=9), ax.set_ylabel("mIoU"), ax.grid(alpha=0.3), ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="synthetic,glas")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seeds", default="0-2")
    ap.add_argument("--shard", default="0/1")
    ap.add_argument("--out", default="runs/bench_weak")
    ap.add_argument("--results", type=Path, default=RESULTS / f"{NAME}.json")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    datasets = [d for d in args.datasets.split(",") if d]
    unknown = set(datasets) - set(DATASETS)
    if unknown:
        ap.error(f"unknown datasets {sorted(unknown)}; choose from {', '.join(DATASETS)}")
    recipe = {"steps": args.steps, "batch": args.batch, "data": DATASETS}
    if "glas" in datasets:
        held, images = glas_test_patients()
        recipe["glas_test_patients"], recipe["glas_test_images"] = held, len(images)
    store = RowStore(args.results, {"benchmark": NAME, "command": command(), "machine": machine(), "recipe": recipe})
    if args.report_only:
        from pathseg.io.files import write_json

        with store._locked():  # beside shards still adding rows
            result = json.loads(args.results.read_text())
            if backfill_classifier_metrics(result, Path(args.out)):
                write_json(args.results, result)
        render(result, args.results)
        return
    for ds, seed in shard([(d, s) for s in parse_seeds(args.seeds) for d in datasets], args.shard):
        if all(store.has((m, ds, 1.0, seed)) for m in METHODS):
            continue
        run_unit(ds, seed, store, args)


if __name__ == "__main__":
    main()
