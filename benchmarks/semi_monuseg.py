"""CRCFP on MoNuSeg 2018 by the evidence protocol (docs/evidence.md): CRCFP's Table 2 setting, scaled down for a CPU.

Rows, at each label fraction (1/32, 1/16, 1/8: the committed splits ``splits/monuseg/<f>_seed<k>.json``; the
seed also fixes the initialisation), every method on the same seeds:

* ``SupOnly``: the labelled images only;
* ``Control``: CRCFP's forward passes (labelled, unlabelled and both crops, auxiliary heads) with no
  unsupervised term in the loss (``method.params.control=true``): what the extra views do to batch norm alone;
* ``CCT`` (weight_cross 1), ``CAC`` (weight_cont 0.1), ``CRCFP`` (0.1 / 0.01 / 0.01): the published weights;
* ``SupOnly`` with every image labelled: the ceiling, same recipe and budget.

Recipe (every row): ``configs/semi/monuseg_cpu.yaml`` (U-Net/ResNet-18 from scratch, half-scale images, Adam
2e-3 poly, the supervised MoNuSeg augmentation on labelled crops), then the scale-down below, stated in the
results: ``--crop`` px crops for labelled and unlabelled images (unlabelled: geometric augmentation in the
loader; the methods draw their own photometric augmentation per view), ``--batch`` labelled + ``--batch``
unlabelled images, ``--steps`` optimiser steps for every row (equal budget), L_sup only for the first
``--warmup`` of them, one thread per process. No checkpoint or recipe choice: the weights after the last step
are scored once on the 14 official test images (2-class means, CRCFP's metrics).

Run as two processes on two cores (``--shard 0/2`` and ``--shard 1/2``): rows are appended to
``--results`` under a lock as they finish, skipped when present (resumable), and the report (.md, .png) is
rewritten from all rows after each one.

    python benchmarks/semi_monuseg.py [--steps 300] [--seeds 0-4] [--fractions 1/32,1/16,1/8]
        [--methods SupOnly,Control,CCT,CAC,CRCFP] [--crop 128] [--batch 8] [--shard 0/2] [--report-only]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import RESULTS, command, machine  # noqa: E402
from evidence import (RowStore, by_seed, cell, claim_part, comparison, comparison_lines, fraction_label,  # noqa: E402
                      parse_fraction, parse_seeds, seed_plot, shard, train_log_means)

BASE = ROOT / "configs/semi/monuseg_cpu.yaml"
NAME = "semi_monuseg"
DATASET = "monuseg2018"
# table name -> (registered method, method.params); weights as published (CRCFP: 0.1 / 0.01 / 0.01)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "SupOnly": ("supervised", {}),
    "Control": ("crcfp", {"weight_cont": 0.1, "weight_cross": 0.01, "weight_ent": 0.01, "control": True}),
    "CCT": ("cct", {"weight_cross": 1.0}),
    "CAC": ("cac", {"weight_cont": 0.1}),
    "CRCFP": ("crcfp", {"weight_cont": 0.1, "weight_cross": 0.01, "weight_ent": 0.01}),
}
# (baseline, method) pairs of the report; the paper's claim is CRCFP > CAC > SupOnly, largest at 1/32
PAIRS = [("SupOnly", "Control"), ("SupOnly", "CCT"), ("SupOnly", "CAC"), ("SupOnly", "CRCFP"),
         ("CAC", "CRCFP"), ("Control", "CRCFP")]
LATE = ("CCT",)  # run after the rows of the claim
LOSS_KEYS = ("loss/sup", "loss/cont", "loss/cross", "loss/ent", "cont/active", "cont/overlap")


def recipe(args: argparse.Namespace) -> dict[str, Any]:
    """The scale every row of a results file shares."""
    return {"base": str(BASE.relative_to(ROOT)), "scale": args.scale, "crop": args.crop, "steps": args.steps,
            "batch": args.batch, "unlabeled_batch": args.batch, "warmup": args.warmup, "threads": args.threads,
            "overrides": list(args.overrides)}


def make_config(method: str, fraction: float, seed: int, args: argparse.Namespace, out: Path):
    """The configuration of one row: the recipe plus the method, its split and its seed."""
    from pathseg.engine.config import load_config

    name, params = METHODS[method]
    split = [] if fraction == 1 else [
        f"data.split_file={ROOT / 'splits/monuseg' / (fraction_label(fraction).replace('/', '-') + f'_seed{seed}.json')}"]
    cfg = load_config(BASE, [
        f"method.name={name}", *split, f"data.options.scale={args.scale}",
        f"data.batch_size={args.batch}", f"data.unlabeled_batch_size={args.batch}",
        f"trainer.max_steps={args.steps}", f"trainer.val_every={args.steps}",  # one validation, at the end
        f"trainer.seed={seed}", f"trainer.out={out}", f"trainer.threads={args.threads}",
        "trainer.resume=false", "trainer.progress=false", "trainer.log_every=5",
        *args.overrides,
    ])
    if fraction == 1:
        cfg.data.split_file = None
    cfg.data.train_transforms = [dict(t, size=args.crop) if t["name"] == "random_crop" else dict(t)
                                 for t in cfg.data.train_transforms]
    # unlabelled images: geometric only in the loader; the methods augment each view photometrically
    cfg.data.unlabeled_transforms = [{"name": "random_crop", "size": args.crop}, {"name": "flip"},
                                     {"name": "rotate90"}]
    p = dict(params)
    if name != "supervised":
        p["warmup_steps"] = int(round(args.warmup * args.steps))
    cfg.method.params = {**p, **cfg.method.params}
    return cfg


def run_row(method: str, fraction: float, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    from pathseg.engine.train import evaluate, train

    out = Path(args.out) / f"{method}_{fraction_label(fraction).replace('/', '-')}_seed{seed}"
    cfg = make_config(method, fraction, seed, args, out)
    t0 = time.time()
    res = train(cfg)
    train_s = time.time() - t0
    m = evaluate(res["checkpoint"], cfg, "test")
    return {
        "method": method, "dataset": DATASET, "fraction": float(fraction), "seed": seed,
        "metrics": {k: m[k] for k in ("mIoU", "Dice", "accuracy", "IoU/nucleus", "Dice/nucleus") if k in m},
        "seconds": round(time.time() - t0, 1), "train_seconds": round(train_s, 1),
        "step_seconds": round(train_s / args.steps, 3), "steps": args.steps,
        "params": cfg.method.params,
        # what the losses did over the last fifth of training (L_cont's share of active anchors included)
        "losses_end": train_log_means(out, LOSS_KEYS, last=max(1, args.steps // 5)),
    }


def markdown(result: dict[str, Any]) -> str:
    rows, rec = result["rows"], result["recipe"]
    fractions = sorted({float(r["fraction"]) for r in rows if float(r["fraction"]) < 1})
    ceiling = by_seed(rows, "SupOnly", 1.0, "mIoU")
    ceil_dice = by_seed(rows, "SupOnly", 1.0, "Dice")
    lines = [
        "# CRCFP on MoNuSeg 2018: paired seeds, intervals, ceiling and control (CRCFP Table 2 setting, CPU "
        "scale-down)", "",
        f"Made by `{result['command']}` on {result['machine']}.", "",
        f"Recipe: `{rec['base']}` (U-Net/ResNet-18 from scratch, Adam 2e-3 poly), images at scale {rec['scale']}, "
        f"{rec['crop']} px crops, batch {rec['batch']} labelled + {rec['unlabeled_batch']} unlabelled, "
        f"{rec['steps']} optimiser steps for every row, L_sup only for the first {rec['warmup']:.0%} of them, "
        f"{rec['threads']} thread per process; overrides {rec['overrides'] or 'none'}. "
        "Scale-down against the paper (DeepLabV3/ResNet-50 from ImageNet, 256-px crops, 80 epochs on a GPU): "
        "from scratch, smaller crops, a few hundred steps, so absolute numbers are lower and the question is "
        "the paired difference at equal budget. The seed fixes the labelled subset and the initialisation; "
        "the last weights are scored once on the 14 official test images (no checkpoint selection). "
        "Metrics: means over background and nucleus.", "",
        f"Ceiling (SupOnly, all 30 images labelled, same recipe and budget): mIoU {cell(list(ceiling.values()))}, "
        f"Dice {cell(list(ceil_dice.values()))}, {len(ceiling)} seeds.", "",
        "| fraction | method | mIoU mean (sd) | Dice mean (sd) | below ceiling (mIoU) | seeds | s / step |",
        "|---|---|---|---|---|---|---|",
    ]
    cmean = sum(ceiling.values()) / len(ceiling) if ceiling else None
    for f in fractions:
        for m in METHODS:
            v = by_seed(rows, m, f, "mIoU")
            if not v:
                continue
            d = by_seed(rows, m, f, "Dice")
            steps = [r["step_seconds"] for r in rows if r["method"] == m and abs(r["fraction"] - f) < 1e-9]
            gap = f"{cmean - sum(v.values()) / len(v):.4f}" if cmean is not None else ""
            lines.append(f"| {fraction_label(f)} | {m} | {cell(list(v.values()))} | {cell(list(d.values()))} | "
                         f"{gap} | {len(v)} | {sum(steps) / len(steps):.2f} |")
    lines += ["", "Paired differences (method − baseline on the same seeds; 95% t interval; paired t and Wilcoxon "
              "signed-rank p; seeds where the method is higher):", ""]
    lines += comparison_lines(rows, fractions, "mIoU", PAIRS)
    lines += ["", "## Claims", ""] + claims(rows, fractions)
    lines += ["", "## What the unsupervised terms did (mean over the last fifth of training, over seeds)", "",
              "| fraction | method | L_sup | L_cont | L_cross | L_ent | active anchors | crop overlap |",
              "|---|---|---|---|---|---|---|---|"]
    for f in fractions:
        for m in METHODS:
            rs = [r for r in rows if r["method"] == m and abs(r["fraction"] - f) < 1e-9]
            if not rs or m == "SupOnly":
                continue
            vals = []
            for k in LOSS_KEYS:
                xs = [r.get("losses_end", {}).get(k) for r in rs]
                xs = [x for x in xs if x is not None]
                vals.append(f"{sum(xs) / len(xs):.3f}" if xs else "")
            lines.append(f"| {fraction_label(f)} | {m} | " + " | ".join(vals) + " |")
    if result.get("notes"):
        lines += ["", "## Notes", "", result["notes"]]
    lines += ["", "Plot: the .png beside this file (one line per seed across methods, per fraction; dashed: the ceiling)."]
    return "\n".join(lines) + "\n"


def claims(rows: list[dict[str, Any]], fractions: list[float]) -> list[str]:
    """The paper's claim, CRCFP > CAC > SupOnly and largest at the smallest fraction, in the protocol's words."""
    out = []
    for f in fractions:
        parts = []
        for base, meth in (("SupOnly", "CRCFP"), ("CAC", "CRCFP"), ("SupOnly", "CAC"), ("Control", "CRCFP")):
            if (part := claim_part(rows, f, "mIoU", base, meth)) is not None:
                parts.append(part)
        if parts:
            out.append(f"- {fraction_label(f)}: " + "; ".join(parts) + ".")
    gains = {f: comparison(rows, f, "mIoU", "SupOnly", "CRCFP") for f in fractions}
    gains = {f: g for f, g in gains.items() if g["n"] >= 2}
    if len(gains) >= 2:
        small = min(gains)
        largest = max(gains, key=lambda f: gains[f]["mean_diff"])
        listed = ", ".join(f"{fraction_label(f)}: {g['mean_diff']:+.4f}" for f, g in sorted(gains.items()))
        out.append(f"- Largest at the smallest fraction: the mean CRCFP − SupOnly gain is largest at "
                   f"{fraction_label(largest)} ({listed}); "
                   f"**{'holds in the means' if largest == small else 'does not hold'}** (the intervals above say "
                   "whether each gain is distinguishable from 0).")
    return out


def render(result: dict[str, Any], path: Path = RESULTS / f"{NAME}.json") -> None:
    """The .md and .png beside the results file ``path``, from all its rows."""
    from pathseg.io.files import write_text

    write_text(path.with_suffix(".md"), markdown(result))
    rows = result["rows"]
    seed_plot(rows, path.with_suffix(".png"), methods=list(METHODS),
              fractions=sorted({float(r["fraction"]) for r in rows if float(r["fraction"]) < 1}), metric="mIoU",
              ceiling=by_seed(rows, "SupOnly", 1.0, "mIoU"),
              title="MoNuSeg 2018, CRCFP and its parts, paired seeds")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300, help="optimiser steps per row (every row the same)")
    ap.add_argument("--seeds", default="0-4", help="e.g. 0-4 or 0,1,2")
    ap.add_argument("--ceiling-seeds", default=None, help="seeds of the all-labelled ceiling [default: --seeds]")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {', '.join(METHODS)}")
    ap.add_argument("--fractions", default="1/32,1/16,1/8")
    ap.add_argument("--scale", type=float, default=0.5, help="MoNuSeg image scale (0.5 -> 500 px images)")
    ap.add_argument("--crop", type=int, default=128, help="training crop size (px), labelled and unlabelled")
    ap.add_argument("--batch", type=int, default=8, help="labelled images per step (and as many unlabelled)")
    ap.add_argument("--warmup", type=float, default=0.1, help="fraction of the steps with L_sup only")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--shard", default="0/1", help="i/n: run every n-th row from the i-th (two processes: 0/2, 1/2)")
    ap.add_argument("--results", type=Path, default=RESULTS / f"{NAME}.json")
    ap.add_argument("--out", default="runs/bench_semi_monuseg", help="training run folders")
    ap.add_argument("--report-only", action="store_true", help="rewrite the .md and .png from the rows")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides for every row")
    args = ap.parse_args()
    methods = args.methods.split(",")
    unknown = set(methods) - set(METHODS)
    if unknown:
        ap.error(f"unknown method(s) {sorted(unknown)}; valid: {', '.join(METHODS)}")
    store = RowStore(args.results, {"benchmark": NAME, "command": command(), "machine": machine(),
                                    "recipe": recipe(args)})
    if args.report_only:
        import json

        render(json.loads(args.results.read_text()), args.results)
        return
    seeds = parse_seeds(args.seeds)
    ceiling_seeds = parse_seeds(args.ceiling_seeds) if args.ceiling_seeds else seeds
    # ceiling first (every fraction's headroom needs it), then the smallest fraction, seed by seed; CCT, which
    # the claim does not name, after every fraction of the others (a session that stops early has the claim)
    jobs = [("SupOnly", 1.0, s) for s in ceiling_seeds] if "SupOnly" in methods else []
    fracs = [float(parse_fraction(f)) for f in args.fractions.split(",")]
    jobs += [(m, f, s) for f in fracs for s in seeds for m in methods if m not in LATE]
    jobs += [(m, f, s) for f in fracs for s in seeds for m in methods if m in LATE]
    for method, fraction, seed in shard(jobs, args.shard):
        if store.has((method, DATASET, round(fraction, 6), seed)):
            print(f"skip {method} {fraction_label(fraction)} seed {seed}: in {args.results}", flush=True)
            continue
        row = run_row(method, fraction, seed, args)
        store.add(row, lambda result: render(result, args.results))
        x = row["metrics"]
        print(f"{method} {fraction_label(fraction)} seed {seed}: mIoU {x['mIoU']:.4f} Dice {x['Dice']:.4f} "
              f"({row['step_seconds']:.2f} s/step, {row['seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
