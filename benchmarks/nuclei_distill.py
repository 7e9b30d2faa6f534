"""Háberová et al. by the evidence protocol (docs/evidence.md), on a CPU budget (issue 20, table 3):

1. Cell classification from weak labels by distillation (the paper's Tables 4-6 setting), on synthetic cells:
   * cells: every nucleus of synthetic tissue images (``render_region``), classes tumour, lymphocyte,
     fibroblast, 32 px patches; images are drawn until each class has enough nuclei
     (:func:`pathseg.methods.distill.synthetic.cell_population`): the weak set from the train band, the expert
     images from the val band (expert pool ``--expert-per-class`` cells per class, at least 2,000), the test
     cells from the test band (a balanced subset, truth labels);
   * weak labels by appearance, for every nucleus of the weak and expert images: a QuPath-style linear
     discriminant on nucleus measurements (area, eccentricity, hematoxylin OD mean and std), fitted on
     ``--clicks`` clicked cells per class from one stain centre
     (:func:`pathseg.methods.distill.synthetic.tool_labels`); its confusion matrix is in the results;
   * sparse expert annotation: the expert labels a balanced ``--expert-per-class`` of the expert images'
     nuclei, every other nucleus is unknown (-1), never a fine-tuning target;
   * per seed (the seed fixes the expert picks, the held-out expert cells and every initialisation; the weak
     labels are the same tool's for every seed): teacher (ResNet-18, weak labels) -> student (RCCNet, the
     teacher's hard labels on every cell) -> the student fine-tuned on n expert cells per class for n in
     100, 500, 1,000, 1,500, 1,900 (grid point chosen on held-out expert cells, never the test cells), by
     :func:`pathseg.engine.distill.run_distill` on configs/distill/cells.yaml; baselines: weak-direct (RCCNet on
     the weak labels, the student's steps), expert-only (RCCNet from scratch on the same n expert cells) and
     the ceiling, truth-direct (RCCNet on the true labels of every bank cell, the student's steps).
   Claim: the fine-tuned student beats both the weak-label model and the student before fine-tuning from
   about 1,500 cells per class.
2. Nuclei segmentation (the paper's Table 2 setting): U-Net and U-Net++ with transposed-convolution
   upsampling (``unet_tconv``, ``unetplusplus_tconv``, as published) on MoNuSeg at half scale, seeds paired,
   scored on the 14 test images. Claim: U-Net and U-Net++ are close (the paired difference's 95% interval
   inside +-0.02 Dice).

Every model is trained by the library's driver (:func:`pathseg.engine.train.train`). Run as two processes on
two cores; rows are appended under a lock as they finish and skipped when present (resumable):

    python benchmarks/nuclei_distill.py --shard 0/2 &  python benchmarks/nuclei_distill.py --shard 1/2
    python benchmarks/nuclei_distill.py --report-only
    PATHSEG_BENCH_RESULTS=/tmp/r python benchmarks/nuclei_distill.py --smoke     # every path at toy size
"""

from __future__ import annotations

import argparse
import json
import math
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
from evidence import RowStore, by_seed, cell, comparison, comparison_lines, parse_seeds, seed_plot, shard  # noqa: E402

NAME = "nuclei_distill"
CELL_DATASET = "synthetic-cells"
NUCLEI_DATASET = "monuseg2018"
NUCLEI_MODELS = ("unet_tconv", "unetplusplus_tconv")
COUNTS = (100, 500, 1000, 1500, 1900)
CLOSE = 0.02  # "close": the paired difference's 95% interval inside +-CLOSE Dice

CELLS: dict[str, Any] = dict(image_size=512, patch=32, weak_per_class=2000, expert_per_class=2400,
                             test_per_class=1000, clicks=20, teacher_epochs=1, student_epochs=2,
                             ft_lr=(1e-4, 1e-3), ft_dropout=(0.5,), ft_epochs=6, expert_only=(100, 1900),
                             expert_only_epochs=20)
NUCLEI: dict[str, Any] = dict(scale=0.5, patch=256, steps=300, batch=4, lr=1e-3)
SMOKE_CELLS = dict(image_size=128, weak_per_class=12, expert_per_class=10, test_per_class=6, clicks=3,
                   teacher_epochs=1, student_epochs=1, ft_lr=(1e-3,), ft_epochs=1, expert_only=(2,),
                   expert_only_epochs=1)
SMOKE_COUNTS = (2, 4)
SMOKE_NUCLEI = dict(steps=2, batch=2, patch=64)


def scale_text(counts: tuple[int, ...]) -> str:
    c, n = CELLS, NUCLEI
    return (
        "CPU scale-down (2 cores, one thread per process). Cells: synthetic tissue at 0.5 µm/px, "
        f"{c['image_size']} px images, {c['patch']} px patches at full resolution; weak set: every nucleus of the "
        f"train-band images it takes for {c['weak_per_class']} of each class, expert images likewise for "
        f"{c['expert_per_class']} of each class (the expert labels exactly that many per class, the rest unknown), "
        f"test: {c['test_per_class']} cells per class from the test band. Weak labels: a linear discriminant on "
        f"area, eccentricity and hematoxylin OD mean/std, fitted on {c['clicks']} clicked cells per class of stain "
        f"centre 0. Teacher ResNet-18 (3x3 stride-1 stem, stem max-pool kept for CPU) {c['teacher_epochs']} "
        f"epochs, student RCCNet {c['student_epochs']} epochs on the teacher's hard labels of every cell, "
        f"fine-tuning at {', '.join(map(str, counts))} expert cells per class over lr {list(c['ft_lr'])} x "
        f"dropout {list(c['ft_dropout'])}, {c['ft_epochs']} epochs, grid point chosen on 20% held-out expert "
        f"cells; weak-direct / truth-direct (the ceiling): RCCNet on the weak / true labels of every bank cell, the "
        f"student's epochs; expert-only: "
        f"RCCNet from scratch on the same expert cells, {c['expert_only_epochs']} epochs. An epoch is "
        "floor(cells / batch) steps of batches drawn with replacement (paper: tens of epochs on a GPU). "
        f"Nuclei: MoNuSeg at {n['scale']} scale (~0.5 µm/px), {n['patch']} px tiles, {n['steps']} Adam steps of batch "
        f"{n['batch']} (lr {n['lr']}, poly decay), Dice loss, ResNet-18 encoder from scratch (no ImageNet weights "
        "offline), scored on the 14 test images; pixel metrics of the nucleus class."
    )


# ------------------------------------------------------------------------------------------------ cells
def build_banks(work: Path) -> dict[str, Any]:
    """The weak+expert training bank and the test bank (once; every seed shares them), and the tool's report."""
    from pathseg.io.files import write_json
    from pathseg.methods.distill.cells import CellBank, balanced_subset, bank_from_instances
    from pathseg.methods.distill.synthetic import CELL_CLASSES, cell_population, fit_tool, tool_labels

    info_file = work / "banks.json"
    if info_file.exists():
        return json.loads(info_file.read_text())
    c = CELLS
    t0 = time.time()
    weak_items = cell_population(c["weak_per_class"], size=c["image_size"], split="train")
    expert_items = cell_population(c["expert_per_class"], size=c["image_size"], split="val")
    test_items = cell_population(c["test_per_class"], size=c["image_size"], split="test")
    # the tool is fitted on clicks from the weak images' centre 0 and labels every nucleus of both sets
    fitted = fit_tool(weak_items, clicks=c["clicks"], seed=0)
    weak_w, tool = tool_labels(weak_items, fitted)
    weak_x, tool_x = tool_labels(expert_items, fitted)
    weak_e = {**weak_w, **weak_x}
    truth = {i: cls for i, _, _, cls in weak_items + expert_items + test_items}
    kw = dict(size=c["patch"], scales=(1.0,))
    bank_w = bank_from_instances([(i, im, inst) for i, im, inst, _ in weak_items], CELL_CLASSES,
                                 weak=weak_e, truth=truth, **kw)
    bank_e = bank_from_instances([(i, im, inst) for i, im, inst, _ in expert_items], CELL_CLASSES,
                                 weak=weak_e, truth=truth, **kw)
    # sparse expert annotation: a balanced subset of the expert images' nuclei, every other one unknown
    pick = balanced_subset(bank_e.truth, c["expert_per_class"], classes=range(1, len(CELL_CLASSES)), seed=0)
    bank_e.expert = np.full(len(bank_e), -1, np.int64)
    bank_e.expert[pick] = bank_e.truth[pick]
    bank = CellBank.concat([bank_w, bank_e])
    bank.save(work / "bank.npz")
    test = bank_from_instances([(i, im, inst) for i, im, inst, _ in test_items], CELL_CLASSES, truth=truth, **kw)
    test = test.subset(np.sort(balanced_subset(test.truth, c["test_per_class"], classes=range(1, len(CELL_CLASSES)),
                                               seed=0)))
    test.save(work / "test.npz")
    w_all = bank.weak[bank.weak >= 0]
    t_all = bank.truth[bank.weak >= 0]
    info = {"weak_images": len(weak_items), "expert_images": len(expert_items), "test_images": len(test_items),
            "bank_cells": len(bank), "bank_per_class": np.bincount(bank.truth, minlength=4)[1:].tolist(),
            "expert_per_class": np.bincount(bank.expert[bank.expert >= 0], minlength=4)[1:].tolist(),
            "test_per_class": np.bincount(test.truth, minlength=4)[1:].tolist(),
            "tool": {**tool, "error_all_cells": float((w_all != t_all).mean()),
                     "confusion_expert_images": tool_x["confusion"]}, "seconds": round(time.time() - t0, 1)}
    write_json(info_file, info)
    return info


def cell_config(seed: int, counts: tuple[int, ...]):
    from pathseg.methods.distill.cells import DistillConfig

    c = CELLS
    return DistillConfig.load(ROOT / "configs/distill/cells.yaml", [
        f"teacher.epochs={c['teacher_epochs']}", "teacher.options={stem_pool: true}",
        f"student.epochs={c['student_epochs']}", f"finetune.counts={list(counts)}",
        f"finetune.lr={list(c['ft_lr'])}", f"finetune.dropout={list(c['ft_dropout'])}",
        f"finetune.epochs={c['ft_epochs']}", "finetune.batch_size=32", "finetune.holdout=0.2", f"seed={seed}",
        "threads=1", "trainer.channels_last=true"])


METRIC_KEYS = ("F1", "accuracy", "precision", "recall", "F1_macro")


def kept(m: dict[str, Any]) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in m.items()
            if k in METRIC_KEYS or (k.startswith("F1/") and not k.endswith("background"))}


def distill_rows(work: Path, seed: int, counts: tuple[int, ...]) -> list[dict[str, Any]]:
    """Teacher, student and every fine-tuned student of one seed (one run_distill), with the teacher labels'
    error against the truth on the bank's cells (what the student learns from)."""
    from pathseg.engine.distill import run_distill
    from pathseg.methods.distill.cells import CellBank

    out = work / f"seed{seed}"
    t0 = time.time()
    metrics = run_distill(work / "bank.npz", out, cell_config(seed, counts), eval_bank=work / "test.npz",
                          log=lambda s: print(f"seed {seed}", s, flush=True))
    bank = CellBank.load(work / "bank.npz")
    tlab = np.load(out / "teacher_logits.npy").argmax(1)
    weak_cells = bank.weak >= 0
    extra = {"teacher_label_error": round(float((tlab != bank.truth).mean()), 4),
             "weak_label_error": round(float((bank.weak[weak_cells] != bank.truth[weak_cells]).mean()), 4)}
    rows = []
    for key in ["teacher", "student", *[f"student+finetune-{n}" for n in counts]]:
        m = metrics[key]
        rows.append({"method": key, "dataset": CELL_DATASET, "fraction": 1.0, "seed": seed,
                     "metrics": kept(m["eval"]), "seconds": round(float(m.get("seconds", time.time() - t0)), 1),
                     **extra, **{k: m[k] for k in ("lr", "dropout", "holdout_F1", "train_cells", "steps") if k in m}})
    return rows


def single_row(work: Path, seed: int, method: str, data: dict[str, Any], epochs: int, batch: int,
               n_cells: int) -> dict[str, Any]:
    """One RCCNet with the student's settings, from scratch, trained by the driver and scored on the test bank."""
    from pathseg.engine.distill import stage_config, stage_steps
    from pathseg.engine.train import train

    cfg = cell_config(seed, COUNTS)
    steps, bs = stage_steps(n_cells, epochs, batch)
    t0 = time.time()
    res = train(stage_config(cfg, cfg.student, work / f"seed{seed}" / method,
                             {**data, "eval_bank": str(work / "test.npz")}, steps=steps, batch_size=bs,
                             size=CELLS["patch"], val_split="eval"))
    return {"method": method, "dataset": CELL_DATASET, "fraction": 1.0, "seed": seed, "metrics": kept(res["metrics"]),
            "seconds": round(time.time() - t0, 1), "train_cells": int(n_cells), "steps": steps}


# ------------------------------------------------------------------------------------------------ nuclei
def nuclei_row(work: Path, model: str, seed: int, smoke: bool) -> dict[str, Any]:
    from pathseg.engine.config import load_config
    from pathseg.engine.train import evaluate, train
    from pathseg.metrics import metrics_from_confusion
    from pathseg.metrics.classification import precision_recall_f1

    def nucleus_metrics(cm: np.ndarray, names: list[str]) -> dict:
        m = metrics_from_confusion(cm, names)
        prec, rec, _ = precision_recall_f1(cm)
        return {"Dice": m["Dice/nucleus"], "IoU": m["IoU/nucleus"], "precision": float(prec[1]),
                "recall": float(rec[1]), "accuracy": m["accuracy"]}

    n = NUCLEI
    if smoke:
        sources = "[{dataset: synthetic, options: {task: nuclei, n_images: 2, size: 64}}]"
    else:
        sources = f"[{{dataset: monuseg, options: {{scale: {n['scale']}}}}}]"
    run = work / f"nuclei_{model}_seed{seed}"
    cfg = load_config(ROOT / "configs/distill/nuclei_unet.yaml", [
        f"model.name={model}", f"data.options.sources={sources}", f"data.options.patch={n['patch']}",
        "data.train_transforms=[{name: flip}, {name: rotate90}]", f"data.batch_size={n['batch']}",
        "data.mpp=0.5", f"optim.lr={n['lr']}", "optim.poly_power=0.9", f"trainer.max_steps={n['steps']}",
        f"trainer.val_every={n['steps']}", "trainer.threads=1", "trainer.channels_last=true",
        "trainer.progress=false", f"trainer.seed={seed}", f"trainer.out={run}", "trainer.resume=false"])
    t0 = time.time()
    res = train(cfg)
    ecfg = cfg if smoke else load_config(None, ["data.dataset=monuseg", f"data.options={{scale: {n['scale']}}}",
                                                "trainer.threads=1"])
    m = evaluate(res["checkpoint"], ecfg, "test", metrics=nucleus_metrics)
    return {"method": model, "dataset": NUCLEI_DATASET, "fraction": 1.0, "seed": seed,
            "metrics": {k: round(float(v), 4) for k, v in m.items()}, "seconds": round(time.time() - t0, 1),
            "steps": res["steps"], "scored_on": "synthetic nuclei test tiles" if smoke else "14 MoNuSeg test images"}


# ------------------------------------------------------------------------------------------------ report
def claim_lines(rows: list[dict[str, Any]], counts: tuple[int, ...]) -> list[str]:
    cells = [r for r in rows if r["dataset"] == CELL_DATASET]
    lines = []
    big = [n for n in counts if n >= 1500] or list(counts[-1:])
    verdicts = []
    for n in counts:
        ft = f"student+finetune-{n}"
        parts = []
        for base in ("weak-direct", "student"):
            r = comparison(cells, 1.0, "F1", base, ft)
            if r["n"] == 0:
                continue
            parts.append(f"− {base} {r['mean_diff']:+.4f} [{r['ci_t'][0]:+.4f}, {r['ci_t'][1]:+.4f}] "
                         f"({r['wins']}/{r['n']} seeds), **{r['verdict']}**" if r["n"] > 1 else
                         f"− {base} {r['mean_diff']:+.4f} (one seed)")
            if n in big:
                verdicts.append(r["verdict"])
        if parts:
            lines.append(f"- fine-tuned at {n} per class: " + "; ".join(parts) + ".")
    if verdicts:
        allv = set(verdicts)
        v = ("holds (significant)" if allv == {"holds (significant)"} else
             "does not hold" if any(x == "does not hold" for x in allv) else "same direction, not significant")
        lines.append(f"- Claim (fine-tuned student > weak-label model and > student before fine-tuning, from about "
                     f"1,500 per class; read at {', '.join(map(str, big))}): **{v}**.")
    nuc = [r for r in rows if r["dataset"] == NUCLEI_DATASET]
    r = comparison(nuc, 1.0, "Dice", NUCLEI_MODELS[0], NUCLEI_MODELS[1])
    if r["n"] > 1:
        lo, hi = r["ci_t"]
        v = (f"holds (the interval is inside ±{CLOSE})" if -CLOSE < lo and hi < CLOSE else
             f"does not hold (the interval is outside ±{CLOSE})" if lo > CLOSE or hi < -CLOSE else
             f"not shown (the interval reaches past ±{CLOSE})")
        lines.append(f"- Claim (U-Net and U-Net++ close): U-Net++ − U-Net nucleus Dice {r['mean_diff']:+.4f} "
                     f"[{lo:+.4f}, {hi:+.4f}], {r['wins']}/{r['n']} seeds U-Net++ ahead: **{v}**.")
    return lines


def markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    counts = tuple(result.get("recipe", {}).get("counts", COUNTS))
    cells = [r for r in rows if r["dataset"] == CELL_DATASET]
    nuc = [r for r in rows if r["dataset"] == NUCLEI_DATASET]
    lines = ["# Nuclei segmentation and cell classification by distillation (Háberová et al., CPU scale-down)", "",
             f"Made by `{result['command']}` on {result['machine']}.", "", result.get("scale_down", ""), ""]
    banks = result.get("banks")
    if banks:
        tool = banks["tool"]
        names = ["tumour", "lymphocyte", "fibroblast"]
        conf = tool["confusion"]
        lines += ["## Cells and weak labels", "",
                  f"Weak images {banks['weak_images']}, expert images {banks['expert_images']}, test images "
                  f"{banks['test_images']}; bank {banks['bank_cells']} cells (tumour, lymphocyte, fibroblast: "
                  f"{banks['bank_per_class']}), expert labels {banks['expert_per_class']}, test cells "
                  f"{banks['test_per_class']}.", "",
                  f"The tool (linear discriminant on {', '.join(tool['features'])}; {tool['clicks']} clicks per class "
                  f"from centre {tool['train_centre']}) mislabels {tool['error']:.1%} of the weak images' nuclei "
                  f"({tool['error_all_cells']:.1%} over the whole bank). Its confusion on the weak images (rows: "
                  "truth, columns: weak label):", "", "| truth \\ weak | " + " | ".join(names) + " |",
                  "|---|---|---|---|"]
        for name, row in zip(names, conf):
            lines.append(f"| {name} | " + " | ".join(str(v) for v in row[1:]) + " |")
        lines.append("")
    if cells:
        order = ["truth-direct", "weak-direct", "teacher", "student", *[f"student+finetune-{n}" for n in counts],
                 *[f"expert-only-{n}" for n in sorted({int(r['method'].rsplit('-', 1)[1]) for r in cells
                                                       if r['method'].startswith('expert-only-')})]]
        lines += ["## Cell classification, balanced synthetic test cells (the paper's Tables 4-6 layout)", "",
                  "F1 weighted by support (= macro on the balanced test cells), per-class F1; mean (sd) over seeds.",
                  "", "| model | F1 | accuracy | F1 tumour | F1 lymphocyte | F1 fibroblast | seeds |",
                  "|---|---|---|---|---|---|---|"]
        for m in order:
            v = by_seed(cells, m, 1.0, "F1")
            if not v:
                continue
            col = [cell(list(by_seed(cells, m, 1.0, k).values())) for k in
                   ("accuracy", "F1/tumour", "F1/lymphocyte", "F1/fibroblast")]
            lines.append(f"| {m} | {cell(list(v.values()))} | " + " | ".join(col) + f" | {len(v)} |")
        te = [r.get("teacher_label_error") for r in cells if r["method"] == "student" and "teacher_label_error" in r]
        if te:
            we = cells[0].get("weak_label_error")
            lines += ["", f"Label error on the bank's cells against the truth: weak labels {we:.1%}; the teacher's "
                      f"labels (what the student learns) {statistics.fmean(te):.1%} (mean over seeds)."]
        pairs = [(b, f"student+finetune-{n}") for n in counts for b in ("weak-direct", "student")]
        pairs += [(f"expert-only-{n}", f"student+finetune-{n}") for n in counts if by_seed(cells, f"expert-only-{n}",
                                                                                           1.0, "F1")]
        lines += ["", "Paired differences (same seeds):", ""] + comparison_lines(cells, [1.0], "F1", pairs)
    if nuc:
        lines += ["", "## Nuclei segmentation, MoNuSeg test (the paper's Table 2 layout)", "",
                  "| model | Dice | IoU | precision | recall | accuracy | seeds |", "|---|---|---|---|---|---|---|"]
        for m in NUCLEI_MODELS:
            if by_seed(nuc, m, 1.0, "Dice"):
                lines.append(f"| {m} | " + " | ".join(cell(list(by_seed(nuc, m, 1.0, k).values())) for k in
                                                      ("Dice", "IoU", "precision", "recall", "accuracy"))
                             + f" | {len(by_seed(nuc, m, 1.0, 'Dice'))} |")
        lines += ["", "Paired differences (same seeds):", ""] + comparison_lines(nuc, [1.0], "Dice",
                                                                                  [NUCLEI_MODELS])
    claims = claim_lines(rows, counts)
    if claims:
        lines += ["", "## Claims", ""] + claims
    if result.get("notes"):
        lines += ["", "## Notes", "", result["notes"]]
    lines += ["", f"Plot: `{NAME}.png` (one line per seed across the cell models)."]
    return "\n".join(lines) + "\n"


def render(result: dict[str, Any], path: Path) -> None:
    from pathseg.io.files import write_text

    write_text(path.with_suffix(".md"), markdown(result))
    counts = tuple(result.get("recipe", {}).get("counts", COUNTS))
    cells = [r for r in result["rows"] if r["dataset"] == CELL_DATASET]
    if cells:
        seed_plot(cells, path.with_suffix(".png"), methods=["weak-direct", "teacher", "student",
                                                             *[f"student+finetune-{n}" for n in counts]],
                  fractions=[1.0], metric="F1", title="cell F1 (synthetic test cells)")


# ------------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0-2")
    ap.add_argument("--parts", default="cells,nuclei")
    ap.add_argument("--counts", default=",".join(map(str, COUNTS)), help="expert cells per class to fine-tune on")
    ap.add_argument("--expert-per-class", type=int, default=CELLS["expert_per_class"])
    ap.add_argument("--clicks", type=int, default=CELLS["clicks"], help="the tool's clicked cells per class")
    ap.add_argument("--nuclei-steps", type=int, default=NUCLEI["steps"])
    ap.add_argument("--shard", default="0/1")
    ap.add_argument("--work", default=str(ROOT / "runs/bench/nuclei_distill"))
    ap.add_argument("--results", type=Path, default=None)
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="every path at toy size; never the committed results")
    args = ap.parse_args()
    counts = tuple(int(x) for x in args.counts.split(",") if x)
    CELLS.update(expert_per_class=args.expert_per_class, clicks=args.clicks)
    NUCLEI.update(steps=args.nuclei_steps)
    if args.smoke:
        CELLS.update(SMOKE_CELLS)
        NUCLEI.update(SMOKE_NUCLEI)
        counts = SMOKE_COUNTS
        args.work = str(Path(args.work).with_name(Path(args.work).name + "_smoke"))
    if counts and max(counts) / 0.8 > CELLS["expert_per_class"]:
        ap.error(f"--counts up to {max(counts)} per class need an expert pool of at least {math.ceil(max(counts) / 0.8)} "
                 f"per class (20% is held out to choose the grid point); --expert-per-class is "
                 f"{CELLS['expert_per_class']}")
    results = args.results or (Path(args.work) / "results" / f"{NAME}.json" if args.smoke else RESULTS / f"{NAME}.json")
    import torch

    torch.set_num_threads(1)
    recipe = {"cells": {k: list(v) if isinstance(v, tuple) else v for k, v in CELLS.items()}, "nuclei": dict(NUCLEI),
              "counts": list(counts)}
    store = RowStore(results, {"benchmark": NAME, "command": command(), "machine": machine(), "recipe": recipe,
                               "scale_down": scale_text(counts)})
    if args.report_only:
        render(json.loads(results.read_text()), results)
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    seeds, parts = parse_seeds(args.seeds), set(args.parts.split(","))
    jobs: list[tuple] = []
    if "cells" in parts:
        jobs += [("distill", s) for s in seeds]
        jobs += [("weak-direct", s) for s in seeds] + [("truth-direct", s) for s in seeds]
        jobs += [("expert-only", n, s) for n in CELLS["expert_only"] for s in seeds]
    if "nuclei" in parts:
        jobs += [("nuclei", m, s) for s in seeds for m in NUCLEI_MODELS]
    mine = shard(jobs, args.shard)

    def done(job) -> bool:
        if job[0] == "distill":
            return store.has((f"student+finetune-{counts[-1]}", CELL_DATASET, 1.0, job[1]))
        if job[0] in ("weak-direct", "truth-direct"):
            return store.has((job[0], CELL_DATASET, 1.0, job[1]))
        if job[0] == "expert-only":
            return store.has((f"expert-only-{job[1]}", CELL_DATASET, 1.0, job[2]))
        return store.has((job[1], NUCLEI_DATASET, 1.0, job[2]))

    def add(row: dict[str, Any]) -> None:
        store.add(row, lambda result: render(result, results))
        print(row["method"], f"seed {row['seed']}", row["metrics"], flush=True)

    pending = [j for j in mine if not done(j)]
    if any(j[0] != "nuclei" for j in pending):
        import fcntl

        with open(work / "banks.lock", "w") as fh:  # one process builds the banks, the other waits for them
            fcntl.flock(fh, fcntl.LOCK_EX)
            store.header["banks"] = build_banks(work)
    for job in pending:
        if job[0] == "distill":
            for row in distill_rows(work, job[1], counts):
                add(row)
        elif job[0] in ("weak-direct", "truth-direct"):  # the weak-label model, and the ceiling: the same
            from pathseg.methods.distill.cells import CellBank  # cells and steps with their true labels

            n = int((CellBank.load(work / "bank.npz").weak >= 0).sum())
            add(single_row(work, job[1], job[0], {"bank": str(work / "bank.npz"),
                                                  "labels": "weak" if job[0] == "weak-direct" else "truth"},
                           CELLS["student_epochs"], 64, n))
        elif job[0] == "expert-only":
            n, seed = job[1], job[2]
            pick = work / f"seed{seed}" / "finetune" / f"n{n}_cells.npy"
            while not pick.exists():  # made by this seed's distillation (either process)
                print(f"expert-only-{n} seed {seed}: waiting for {pick}", flush=True)
                time.sleep(60)
            add(single_row(work, seed, f"expert-only-{n}", {"bank": str(work / "bank.npz"), "labels": "expert",
                                                              "cells": str(pick)},
                           CELLS["expert_only_epochs"], 32, int(np.load(pick).size)))
        else:
            add(nuclei_row(work, job[1], job[2], args.smoke))


if __name__ == "__main__":
    main()
