"""Segmentation from few masks + many classification labels (Ciga & Martel 2021, Fig. 3 setting) on GlaS, by the
evidence protocol (docs/evidence.md).

GlaS grade view (background / benign gland / malignant gland), all 85 training images. The held-out test images
rotate over 4 patient-grouped folds (Grade.csv's patients, balanced over grades: ``patient_folds``); of each
fold's training images, ⌈s·n⌉ (at least one per grade) keep their masks, for s in {5, 10, 25, 50, 100}%:

* ``S``: the segmentation images only;
* ``S+C``: plus classification patches (label = the image grade) from the other training images;
* ``S+C*``: plus classification patches from every training image.

Equal segmentation exposure: every row takes ``--steps`` steps with ``--seg-batch`` segmentation patches a step;
S+C and S+C* add as many classification patches (batch 2 x seg-batch, ``seg_share`` 0.5: each kind repeated to
half the pool), so S and S+C see the same number of segmentation passes. At s = 100% no classification image
is left for S+C, which is then the S run (recorded once, copied with a note).

A row is a config and two library calls: configs/segcls/glas_bench.yaml with the row's overrides, trained by
pathseg.engine.train.train, scored by pathseg.engine.train.evaluate with the paper's metrics
(pathseg.metrics.segcls: F1 macro and micro, foreground accuracy, BACH-style score) on the fold's whole
held-out images. A pair is (fold, seed): the seed fixes the segmentation images and the initialisation.

    python benchmarks/segcls_glas.py --shard 0/2 &  python benchmarks/segcls_glas.py --shard 1/2
    python benchmarks/segcls_glas.py --report-only
    PATHSEG_BENCH_RESULTS=/tmp/r python benchmarks/segcls_glas.py --steps 2 --seeds 0 --folds 0 --fractions 0.05 \\
        --out /tmp/bench_segcls                                                       # smallest run
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import RESULTS, command, machine  # noqa: E402
from evidence import RowStore, cell, parse_seeds, pyplot, save_figure, shard  # noqa: E402

NAME = "segcls_glas"
FOLDS = 4
METHODS = ("S", "S+C", "S+C*")
FRACTIONS = (0.05, 0.1, 0.25, 0.5, 1.0)
METRICS = ("F1_macro", "F1_micro", "foreground_accuracy", "BACH", "IoU", "accuracy")
REGIME = {"S": "S", "S+C": "S+C", "S+C*": "S+C*"}


def patient_folds(k: int = FOLDS) -> list[list[str]]:
    """GlaS training images in ``k`` folds of whole patients, each fold near n/k images and balanced over grades
    (patients sorted by size, each to the fold with the fewest images of its majority grade)."""
    from pathseg.data.glas import GlaS

    ds = GlaS(split="train", view="grade")
    by_patient: dict[str, list[str]] = {}
    for i, p in zip(ds.ids, ds.patients):
        by_patient.setdefault(p, []).append(i)
    grade = {i: ds.grade(n) for n, i in enumerate(ds.ids)}
    folds: list[list[str]] = [[] for _ in range(k)]
    for p in sorted(by_patient, key=lambda p: (-len(by_patient[p]), p)):
        imgs = by_patient[p]
        major = max(set(grade[i] for i in imgs), key=lambda g: sum(grade[i] == g for i in imgs))
        f = min(range(k), key=lambda j: (sum(grade[i] == major for i in folds[j]), len(folds[j]), j))
        folds[f] += imgs
    return [sorted(f, key=ds.ids.index) for f in folds]


def pair_id(fold: int, seed: int) -> int:
    return 100 * fold + seed


def run_row(method: str, fraction: float, fold: int, seed: int, test_ids: list[str], args) -> dict[str, Any]:
    from pathseg.data.patches import SegClsPatches
    from pathseg.engine.config import load_config
    from pathseg.engine.train import evaluate, train
    from pathseg.metrics.segcls import segcls_metrics

    out = Path(args.out) / f"{method.replace('+', 'p').replace('*', 'star')}_{fraction:g}_fold{fold}_seed{seed}"
    batch = args.seg_batch if method == "S" else 2 * args.seg_batch
    share = "null" if method == "S" else 0.5
    cfg = load_config(ROOT / "configs/segcls/glas_bench.yaml", [
        f"data.options.regime={REGIME[method]}", f"data.options.seg_fraction={fraction}",
        f"data.options.split_seed={seed}", f"data.options.seg_share={share}", f"data.options.patch_size={args.patch}",
        f"data.options.cls_stride={args.patch * 3 // 4}", f"data.options.test_ids={json.dumps(test_ids)}",
        "data.options.holdout=0", f"data.batch_size={batch}", f"trainer.seed={seed}",
        f"trainer.max_steps={args.steps}", f"trainer.val_every={args.steps}", f"optim.lr={args.lr}",
        "optim.poly_power=0.9", f"trainer.out={out}", "trainer.resume=false", "trainer.threads=1"])
    t0 = time.time()
    res = train(cfg)
    train_s = time.time() - t0
    # BACH-style score: the challenge's ordered-class score with background < benign < malignant (K = 3)
    m = evaluate(res["checkpoint"], cfg, "test", metrics=functools.partial(segcls_metrics, bach=True))
    ds = SegClsPatches(split="train", **dict(cfg.data.options))
    summary = ds.summary()
    return {"method": method, "dataset": "glas_grade_85", "fraction": float(fraction), "seed": pair_id(fold, seed),
            "fold": fold, "init_seed": seed,
            "metrics": {k: round(float(m[k]), 4) for k in METRICS if k in m},
            "seg_images": len(ds.seg_ids), "cls_images": len(ds.cls_ids), "test_images": len(test_ids),
            "patches": summary, "seconds": round(time.time() - t0, 1), "train_seconds": round(train_s, 1),
            "steps": args.steps, "batch": batch}


def by_pair(rows, method: str, fraction: float, metric: str) -> dict[int, float]:
    return {int(r["seed"]): float(r["metrics"][metric]) for r in rows
            if r["method"] == method and abs(float(r["fraction"]) - fraction) < 1e-9 and metric in r["metrics"]}


def share_of_full(rows, method: str, fraction: float, metric: str = "F1_macro") -> dict[int, float]:
    """Per pair: the method's metric at s over S's at s = 100% of the same fold (mean over its seeds)."""
    full: dict[int, list[float]] = {}
    for r in rows:
        if r["method"] == "S" and float(r["fraction"]) == 1.0:
            full.setdefault(r["fold"], []).append(float(r["metrics"][metric]))
    out = {}
    for r in rows:
        if r["method"] == method and abs(float(r["fraction"]) - fraction) < 1e-9 and r["fold"] in full:
            out[int(r["seed"])] = float(r["metrics"][metric]) / statistics.fmean(full[r["fold"]])
    return out


def markdown(result: dict[str, Any]) -> str:
    rows, rec = result["rows"], result["recipe"]
    lines = ["# Segmentation + classification labels (Ciga & Martel 2021, Fig. 3 setting) on GlaS, by the protocol",
             "", f"Made by `{result['command']}` on {result['machine']}.", "",
             f"GlaS grade view, 85 images, 4 patient-grouped folds (held-out patients rotate; fold sizes "
             f"{rec['fold_sizes']}). Patches {rec['patch']} px at quarter scale, {rec['steps']} Adam steps (lr "
             f"{rec['lr']}, poly 0.9), {rec['seg_batch']} segmentation patches a step for every row (S+C and S+C*: as "
             "many classification patches beside them), one thread. A pair is (fold, seed). Share of full = the "
             "metric over S at s = 100% of the same fold.", "",
             "| s | method | F1 macro mean (sd) | F1 micro | foreground acc | BACH score | share of full F1 | pairs |",
             "|---|---|---|---|---|---|---|---|"]
    for f in FRACTIONS:
        for m in METHODS:
            v = by_pair(rows, m, f, "F1_macro")
            if not v:
                continue
            cells = [cell(list(by_pair(rows, m, f, k).values()), 3) for k in ("F1_micro", "foreground_accuracy",
                                                                                "BACH")]
            sh = share_of_full(rows, m, f)
            lines.append(f"| {f:.0%} | {m} | {cell(list(v.values()), 3)} | " + " | ".join(cells)
                         + f" | {cell(list(sh.values()), 3)} | {len(v)} |")
    lines += ["", "## Claim: S+C at small s reaches a larger share of full F1 than S", "",
              "Paired by (fold, seed): share of full F1 (macro), method − S, mean [95% t interval], pairs where the "
              "method is higher.", ""]
    for f in FRACTIONS[:-1]:
        for m in ("S+C", "S+C*"):
            r = comparison_of(share_of_full(rows, "S", f), share_of_full(rows, m, f))
            if r["n"] >= 2:
                lo, hi = r["ci_t"]
                lines.append(f"- s = {f:.0%}, {m} − S: {r['mean_diff']:+.3f} [{lo:+.3f}, {hi:+.3f}], "
                             f"{r['wins']}/{r['n']}: **{r['verdict']}**.")
    if result.get("notes"):
        lines += ["", "## Notes", "", result["notes"]]
    return "\n".join(lines) + "\n"


def comparison_of(base: dict[int, float], meth: dict[int, float]) -> dict[str, Any]:
    from pathseg.metrics.paired import paired

    return paired(base, meth)


def plot(result: dict[str, Any], path: Path) -> None:
    """Share of full F1 against s, one line per method (mean over pairs, bars: sd); the paper's bands at 5%."""
    plt = pyplot()
    if plt is None:
        return

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for m in METHODS:
        pts = [(f, list(share_of_full(rows, m, f).values())) for f in FRACTIONS]
        pts = [(f, v) for f, v in pts if v]
        if pts:
            ax.errorbar([100 * f for f, _ in pts], [statistics.fmean(v) for _, v in pts],
                        yerr=[statistics.stdev(v) if len(v) > 1 else 0 for _, v in pts], marker="o", capsize=3,
                        label=m)
    ax.axhspan(0.85, 0.90, xmin=0, xmax=0.08, color="tab:blue", alpha=0.15, label="paper S+C at 5%")
    ax.axhspan(0.55, 0.70, xmin=0, xmax=0.08, color="tab:red", alpha=0.15, label="paper S at 5%")
    ax.set_xscale("log"), ax.set_xlabel("s (% of training images with masks)"), ax.set_ylabel("share of full F1")
    ax.grid(alpha=0.3), ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def render(result: dict[str, Any], path: Path) -> None:
    from pathseg.io.files import write_text

    write_text(path.with_suffix(".md"), markdown(result))
    plot(result, path.with_suffix(".png"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seg-batch", type=int, default=10, help="segmentation patches a step, every row")
    ap.add_argument("--patch", type=int, default=96, help="patch px at quarter scale")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seeds", default="0-2")
    ap.add_argument("--folds", default="0-3")
    ap.add_argument("--fractions", default=",".join(map(str, FRACTIONS)))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--shard", default="0/1")
    ap.add_argument("--out", default="runs/bench_segcls_glas")
    ap.add_argument("--results", type=Path, default=RESULTS / f"{NAME}.json")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    folds = patient_folds()
    store = RowStore(args.results, {"benchmark": NAME, "command": command(), "machine": machine(), "recipe": {
        "steps": args.steps, "seg_batch": args.seg_batch, "patch": args.patch, "lr": args.lr,
        "fold_sizes": [len(f) for f in folds]}})
    if args.report_only:
        render(json.loads(args.results.read_text()), args.results)
        return
    fracs = [float(f) for f in args.fractions.split(",")]
    methods = args.methods.split(",")
    jobs = [(m, f, k, s) for f in fracs for k in parse_seeds(args.folds) for s in parse_seeds(args.seeds)
            for m in methods]
    for m, f, k, s in shard(jobs, args.shard):
        key = (m, "glas_grade_85", round(f, 6), pair_id(k, s))
        if store.has(key):
            continue
        if m == "S+C" and f == 1.0:  # no classification image left: the S run
            src = next((r for r in store.rows() if r["method"] == "S" and r["fraction"] == 1.0
                        and r["seed"] == pair_id(k, s)), None)
            if src is None:
                src = run_row("S", 1.0, k, s, folds[k], args)
                store.add(src, lambda result: render(result, args.results))
            row = {**src, "method": "S+C", "seconds": 0.0, "note": "same run as S: no classification image left"}
        else:
            row = run_row(m, f, k, s, folds[k], args)
        store.add(row, lambda result: render(result, args.results))
        print(f"{m} s={f:g} fold {k} seed {s}: " + ", ".join(f"{a} {b:.3f}" for a, b in row["metrics"].items()),
              flush=True)


if __name__ == "__main__":
    main()
