"""Supervised baseline on MoNuSeg 2018 by the evidence protocol (docs/evidence.md): the recipe chosen on a
validation split of the training images, then scored once on the test images.

1. Search: each candidate recipe (below) trains on 24 of the 30 training images and is scored on the other 6
   (``splits/monuseg/val6_seed0.json``, written by this script when missing; ``data.val_split=val``), with
   ``--search-seeds`` seeds. The recipe with the best mean validation Dice (2-class mean) is chosen; the test
   images play no part in the choice.
2. Final: the chosen recipe trains on all 30 training images with ``--seeds`` seeds and the weights after the
   last step are scored once on the 14 official test images: the ceiling and SupOnly rows for the other tables.

Every recipe: U-Net/ResNet-18 from scratch (no pretrained weights), images at half scale (~0.5 µm/px), batch 8,
Adam 2e-3 with poly decay, the augmentation of configs/monuseg_supervised.yaml, one thread per process; the
candidates differ in the loss, the crop and the steps (each within about 1 CPU-hour).

Run as two processes on two cores; rows are appended under a lock as they finish and skipped when present:

    python benchmarks/monuseg_supervised.py --shard 0/2 &  python benchmarks/monuseg_supervised.py --shard 1/2
    python benchmarks/monuseg_supervised.py --report-only
    python benchmarks/monuseg_supervised.py --shard 1/2 --speculate ce+dice-1000   # finals of a likely pick early
    PATHSEG_BENCH_RESULTS=/tmp/r python benchmarks/monuseg_supervised.py --steps-scale 0.005 --seeds 0 \\
        --search-seeds 0                                                           # smallest run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from collections.abc import Iterable
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import RESULTS, command, machine  # noqa: E402
from evidence import RowStore, cell, parse_seeds, pyplot, save_figure, train_log_means  # noqa: E402

NAME = "monuseg_supervised"
TARGET = 0.87  # issue 19 table 1: 2-class mean test Dice
DATASET = "monuseg2018"
BASE = ROOT / "configs/monuseg_supervised.yaml"
VAL_SPLIT = ROOT / "splits/monuseg/val6_seed0.json"
#: candidate -> (description, overrides); steps are scaled by --steps-scale for smoke runs
CANDIDATES: dict[str, tuple[str, dict[str, Any]]] = {
    "ce-600": ("cross-entropy, 256 px crops, 600 steps", {"steps": 600, "crop": 256, "dice": 0.0}),
    "ce+dice-600": ("cross-entropy + soft Dice (nucleus), 256 px crops, 600 steps",
                    {"steps": 600, "crop": 256, "dice": 1.0}),
    "ce+dice-1000": ("cross-entropy + soft Dice (nucleus), 256 px crops, 1000 steps",
                     {"steps": 1000, "crop": 256, "dice": 1.0}),
}
METRICS = ("mIoU", "Dice", "accuracy", "IoU/nucleus", "Dice/nucleus")


def write_val_split() -> Path:
    """24 training / 6 validation images, seeded; the test ids are MoNuSeg's official 14."""
    if VAL_SPLIT.exists():
        return VAL_SPLIT
    import numpy as np

    from pathseg.data.monuseg import MoNuSeg
    from pathseg.io.files import write_json

    train, test = list(MoNuSeg(split="train").ids), list(MoNuSeg(split="test").ids)
    rng = np.random.default_rng(0)
    val = sorted(train[i] for i in rng.choice(len(train), size=6, replace=False))
    write_json(VAL_SPLIT, {"labeled": sorted(set(train) - set(val)), "unlabeled": [], "test": test, "val": val})
    return VAL_SPLIT


def make_config(candidate: str, stage: str, seed: int, args: argparse.Namespace, out: Path):
    from pathseg.engine.config import load_config

    c = CANDIDATES[candidate][1]
    steps = max(1, int(round(c["steps"] * args.steps_scale)))
    over = [f"trainer.max_steps={steps}", f"trainer.val_every={steps}", f"trainer.seed={seed}",
            f"trainer.out={out}", "trainer.threads=1", "trainer.resume=false", "trainer.progress=false",
            f"method.params={{dice_weight: {c['dice']}}}"]
    if stage == "search":
        over += [f"data.split_file={write_val_split()}", "data.val_split=val"]
    cfg = load_config(BASE, over)
    cfg.data.train_transforms = [dict(t, size=c["crop"]) if t["name"] == "random_crop" else dict(t)
                                 for t in cfg.data.train_transforms]
    return cfg, steps


def run_row(candidate: str, stage: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    from pathseg.engine.train import evaluate, train

    out = Path(args.out) / f"{stage}_{candidate}_seed{seed}"
    cfg, steps = make_config(candidate, stage, seed, args, out)
    t0 = time.time()
    res = train(cfg)
    train_s = time.time() - t0
    m = evaluate(res["checkpoint"], cfg, "val" if stage == "search" else "test")
    return {"method": candidate, "dataset": f"{DATASET}/{stage}", "fraction": 1.0, "seed": seed,
            "metrics": {k: float(m[k]) for k in METRICS if k in m},
            "scored_on": "6 validation images (of the 30 training)" if stage == "search" else "14 test images",
            "seconds": round(time.time() - t0, 1), "train_seconds": round(train_s, 1), "steps": steps,
            "step_seconds": round(train_s / steps, 3),
            "losses_end": train_log_means(out, ("loss/sup", "loss/dice"), last=max(1, steps // 5))}


def chosen(rows: list[dict[str, Any]], seeds: list[int], dropped: Iterable[str] = ()) -> str | None:
    """The candidate with the best mean validation Dice, once every candidate not ``dropped`` has every search
    seed."""
    means = {}
    for cand in (c for c in CANDIDATES if c not in set(dropped)):
        v = [r["metrics"]["Dice"] for r in rows if r["dataset"] == f"{DATASET}/search" and r["method"] == cand]
        if len(v) < len(seeds):
            return None
        means[cand] = statistics.fmean(v)
    return max(means, key=means.get)


def markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    search = [r for r in rows if r["dataset"] == f"{DATASET}/search"]
    dropped = result.get("dropped", {})
    pick = result.get("chosen") or chosen(rows, sorted({r["seed"] for r in search}), dropped)
    # final rows of a candidate that was not chosen (run by --speculate) are not reported
    final = [r for r in rows if r["dataset"] == f"{DATASET}/final" and r["method"] == pick]
    lines = ["# MoNuSeg 2018 supervised baseline: recipe chosen on validation, scored once on test", "",
             f"Made by `{result['command']}` on {result['machine']}.", "",
             "Every recipe: U-Net/ResNet-18 from scratch, images at half scale (~0.5 µm/px), batch 8, Adam 2e-3 "
             "poly, flips, turns, HED and colour jitter, one thread per process. Metrics: means over background "
             "and nucleus (CRCFP's Table 2 metrics); Dice = 2-class mean Dice.", "",
             "## 1. Search: 24 training images, scored on 6 held-out training images", "",
             "| candidate | recipe | val Dice mean (sd) | val mIoU mean (sd) | seeds | s / step |",
             "|---|---|---|---|---|---|"]
    for cand, (desc, _) in CANDIDATES.items():
        rs = [r for r in search if r["method"] == cand and cand not in dropped]
        if rs:
            lines.append(f"| {cand} | {desc} | {cell([r['metrics']['Dice'] for r in rs])} | "
                         f"{cell([r['metrics']['mIoU'] for r in rs])} | {len(rs)} | "
                         f"{statistics.fmean(r['step_seconds'] for r in rs):.2f} |")
    for cand, why in dropped.items():
        lines.append(f"| {cand} | {CANDIDATES[cand][0]} | dropped before its search ran: {why} | | 0 | |")
    lines += ["", f"Chosen (best mean validation Dice): **{pick}**." if pick else
              "Chosen: not yet (the search is incomplete).", ""]
    lines += ["## 2. Final: the chosen recipe on all 30 training images, scored once on the 14 test images", "",
              "| candidate | seed | mIoU | Dice | nucleus Dice | accuracy | train s |", "|---|---|---|---|---|---|---|"]
    for r in sorted(final, key=lambda r: (r["method"], r["seed"])):
        x = r["metrics"]
        lines.append(f"| {r['method']} | {r['seed']} | {x['mIoU']:.4f} | {x['Dice']:.4f} | {x['Dice/nucleus']:.4f} "
                     f"| {x['accuracy']:.4f} | {r['train_seconds']:.0f} |")
    if final:
        d = [r["metrics"]["Dice"] for r in final]
        m = [r["metrics"]["mIoU"] for r in final]
        text = f"Test, mean (sd) over {len(final)} seeds: Dice {cell(d)}, mIoU {cell(m)}. Target Dice >= {TARGET}: "
        if len(d) > 1:  # the 95% t interval of the mean test Dice against the target
            from scipy import stats

            half = float(stats.t.ppf(0.975, len(d) - 1)) * statistics.stdev(d) / len(d) ** 0.5
            lo, hi = statistics.fmean(d) - half, statistics.fmean(d) + half
            verdict = "met" if lo >= TARGET else "not met" if hi < TARGET else "not shown either way"
            text += f"**{verdict}** (95% t interval of the mean [{lo:.4f}, {hi:.4f}])."
        else:
            text += f"**{'met' if d[0] >= TARGET else 'not met'}** on one seed."
        lines += ["", text]
    if result.get("notes"):
        lines += ["", "## Notes", "", result["notes"]]
    return "\n".join(lines) + "\n"


def render(result: dict[str, Any], path: Path) -> None:
    from pathseg.io.files import write_text

    write_text(path.with_suffix(".md"), markdown(result))
    plot(result, path.with_suffix(".png"))


def plot(result: dict[str, Any], path: Path) -> None:
    """Validation Dice per candidate (one point per seed) and the final test Dice per seed."""
    plt = pyplot()
    if plt is None:
        return

    rows = result["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for k, cand in enumerate(CANDIDATES):
        v = [(r["seed"], r["metrics"]["Dice"]) for r in rows if r["dataset"].endswith("search") and r["method"] == cand]
        if v:
            axes[0].plot([k] * len(v), [d for _, d in v], "o", ms=4)
    axes[0].set_xticks(range(len(CANDIDATES)), list(CANDIDATES), rotation=20, fontsize=8)
    axes[0].set_ylabel("validation Dice"), axes[0].set_title("search (6 validation images)", fontsize=9)
    pick = result.get("chosen")
    fin = sorted((r["seed"], r["metrics"]["Dice"]) for r in rows if r["dataset"].endswith("final") and r["method"] == pick)
    if fin:
        axes[1].plot([s for s, _ in fin], [d for _, d in fin], "o-", ms=4)
        axes[1].axhline(TARGET, ls="--", color="k", lw=1, label=f"target {TARGET}")
        axes[1].legend(fontsize=8)
    axes[1].set_xlabel("seed"), axes[1].set_ylabel("test Dice"), axes[1].set_title("final (14 test images)", fontsize=9)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def balanced(jobs: list[tuple[str, int]], spec: str) -> list[tuple[str, int]]:
    """Shard ``i/n`` of the search jobs, longest first to the least loaded shard (the candidates' steps differ)."""
    i, n = (int(x) for x in spec.split("/"))
    load, mine = [0] * n, []
    for job in sorted(jobs, key=lambda j: -CANDIDATES[j[0]][1]["steps"]):
        k = load.index(min(load))
        load[k] += CANDIDATES[job[0]][1]["steps"]
        if k == i:
            mine.append(job)
    return mine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--search-seeds", default="0", help="seeds of each candidate on the validation split")
    ap.add_argument("--seeds", default="0-4", help="seeds of the chosen recipe on the test images")
    ap.add_argument("--steps-scale", type=float, default=1.0, help="multiply every candidate's steps (smoke runs)")
    ap.add_argument("--shard", default="0/1")
    ap.add_argument("--out", default="runs/bench_monuseg_supervised")
    ap.add_argument("--results", type=Path, default=RESULTS / f"{NAME}.json")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--drop", action="append", default=[], metavar="CANDIDATE=REASON",
                    help="leave a candidate out of the search before it runs (recorded with the reason, e.g. its run "
                         "exceeds the CPU budget on this machine); repeatable")
    ap.add_argument("--speculate", default=None, metavar="CANDIDATE",
                    help="run CANDIDATE's final seeds while the search is incomplete (kept only if it is chosen)")
    args = ap.parse_args()
    store = RowStore(args.results, {"benchmark": NAME, "command": command(), "machine": machine(),
                                    "recipe": {"base": str(BASE.relative_to(ROOT)), "steps_scale": args.steps_scale,
                                               "candidates": {k: v[1] for k, v in CANDIDATES.items()}}})
    if args.report_only:
        render(json.loads(args.results.read_text()), args.results)
        return
    search_seeds, seeds = parse_seeds(args.search_seeds), parse_seeds(args.seeds)
    given = dict(d.split("=", 1) if "=" in d else (d, "no reason given") for d in args.drop)
    unknown = [d for d in given if d not in CANDIDATES]
    if unknown:
        ap.error(f"--drop {', '.join(unknown)}: not among {', '.join(CANDIDATES)}")
    prev = json.loads(args.results.read_text()) if args.results.exists() else {}
    dropped = {**prev.get("dropped", {}), **given}  # a drop recorded by either process holds for both
    if dropped:
        store.header["dropped"] = dropped
    jobs = balanced([(c, s) for s in search_seeds for c in CANDIDATES if c not in dropped], args.shard)
    for cand, seed in jobs:
        if not store.has((cand, f"{DATASET}/search", 1.0, seed)):
            row = run_row(cand, "search", seed, args)
            store.add(row, lambda result: render(result, args.results))
            print(f"search {cand} seed {seed}: val Dice {row['metrics']['Dice']:.4f}", flush=True)
    if args.speculate:  # the final seeds of a likely pick while the other shard's search runs
        if args.speculate not in CANDIDATES:
            ap.error(f"--speculate {args.speculate}: not among {', '.join(CANDIDATES)}")
        run_finals(args.speculate, seeds, store, args, while_open=search_seeds, dropped=dropped)
    while (pick := chosen(store.rows(), search_seeds, dropped)) is None:  # the other shard's candidates
        print("waiting for the other shard's search rows ...", flush=True)
        time.sleep(60)
    store.header["chosen"] = pick
    run_finals(pick, seeds, store, args)


def run_finals(cand: str, seeds: list[int], store: RowStore, args: argparse.Namespace,
               while_open: list[int] | None = None, dropped: Iterable[str] = ()) -> None:
    """Train and score ``cand``'s final seeds that no process has done or claimed (a claim file per seed, taken
    with O_EXCL, so two processes share the seeds whatever their shards). With ``while_open`` (the search
    seeds), stop as soon as the search has chosen another candidate; rows of a candidate that is not chosen
    stay in the file and are not reported."""
    import os

    claims = Path(args.out) / "claims"
    claims.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        if while_open is not None and chosen(store.rows(), while_open, dropped) not in (None, cand):
            return
        if store.has((cand, f"{DATASET}/final", 1.0, seed)):
            continue
        claim = claims / f"final_{cand}_seed{seed}"
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            txt = claim.read_text().strip()
            if not txt:
                continue  # being written by the process that took it
            try:
                os.kill(int(txt), 0)
                continue  # another live process has it
            except (ProcessLookupError, ValueError):
                claim.unlink(missing_ok=True)  # its process died: take it over
                fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        row = run_row(cand, "final", seed, args)
        store.add(row, lambda result: render(result, args.results))
        claim.unlink(missing_ok=True)
        print(f"final {cand} seed {seed}: test Dice {row['metrics']['Dice']:.4f}", flush=True)


if __name__ == "__main__":
    main()
