"""Háberová et al. on a CPU budget: (1) nuclei segmentation on MoNuSeg test (paper Table 2 layout) and
(2) cell classification from weak labels by distillation on synthetic cells (paper Tables 4-6 layout).

    nice -n 10 python benchmarks/nuclei_distill.py [--part nuclei|cells|all] [--out runs/bench/nuclei_distill]
    python benchmarks/nuclei_distill.py --smoke      # the whole path at toy size, in a minute; no results written

Every model is trained by the library's driver (:func:`pathseg.engine.train.train`) from a config this script
states as overrides: phase I on configs/distill/nuclei_unet.yaml (U-Net and U-Net++ with transposed-convolution
upsampling, ``unet_tconv`` / ``unetplusplus_tconv``, as published), scored by
:func:`pathseg.engine.train.evaluate`; phases II-IV by :func:`pathseg.engine.distill.run_distill` on
configs/distill/cells.yaml; the weak-direct and expert-only baselines are single ``cell_classifier`` runs
(:func:`pathseg.engine.distill.stage_config`) on the same banks.

Scale-down (stated again in the results file): see scale_text() below. Resumable: every finished row is
kept in <out>/rows.json and skipped when the command runs again; the cell distillation steps resume from
their model files.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import with_notes, write_results  # noqa: E402

NUCLEI = dict(scale=0.5, patch=256, steps=300, batch=4, lr=1e-3, synth_images=4, threads=2)
NUCLEI_MPP = 0.5
NUCLEI_MODELS = ("unet_tconv", "unetplusplus_tconv")
CELLS = dict(train_images=28, expert_images=10, test_images=12, size=256, patch=32, max_train=1500,
             weak_rates=(0.15, 0.30), teacher_epochs=3, student_epochs=6, counts=(25, 100), ft_lr=(1e-4, 1e-3),
             ft_dropout=(0.5,), ft_epochs=12, expert_only_epochs=30)
# --smoke: every path at toy size (synthetic nuclei only, scored on their test split instead of MoNuSeg)
SMOKE_NUCLEI = dict(steps=2, batch=2, patch=64, synth_images=2, threads=1)
SMOKE_CELLS = dict(train_images=2, expert_images=2, test_images=2, size=96, max_train=60, weak_rates=(0.30,),
                   teacher_epochs=1, student_epochs=1, counts=(2,), ft_lr=(1e-3,), ft_dropout=(0.5,), ft_epochs=1,
                   expert_only_epochs=1)


def scale_text() -> str:
    return (
        f"CPU scale-down (2 shared cores). Nuclei ({NUCLEI['threads']} torch threads): MoNuSeg at 0.5 scale (~0.5 µm/px) with "
        f"{NUCLEI['patch']} px non-overlapping tiles (= the paper's 512 px at full resolution), plus {NUCLEI['synth_images']} "
        f"synthetic 256 px nuclei images; {NUCLEI['steps']} Adam steps of batch {NUCLEI['batch']} (lr {NUCLEI['lr']} with "
        "poly decay instead of the published constant 1e-4, picked for the very short schedule, not compared; "
        "trained by the library's driver, one validation at the end), "
        "U-Net / U-Net++ with transposed-convolution upsampling (unet_tconv, unetplusplus_tconv), "
        "ResNet-18 encoder from scratch (no ImageNet weights offline), dropout 0.3, Dice loss, no Macenko; scored on "
        "the 14 MoNuSeg test images at 0.5 scale, pixel metrics of the nucleus class over all test pixels. "
        f"Cells (1 torch thread): synthetic tissue (render_region), 3 classes (tumour, lymphocyte, fibroblast) on reference nuclei "
        f"instances (phase I is measured separately), 32 px patches at full resolution; {CELLS['max_train']} training "
        f"cells from {CELLS['train_images']} images, expert pool from {CELLS['expert_images']} other images, "
        f"test cells from {CELLS['test_images']} test-split images; weak labels = truth with "
        f"{', '.join(str(r) for r in CELLS['weak_rates'])} of labels changed by class confusion (fibroblast<->tumour "
        f"mostly); teacher ResNet-18 (3x3 stride-1 stem, stem max-pool kept for CPU) {CELLS['teacher_epochs']} epochs, "
        f"student RCCNet {CELLS['student_epochs']} epochs on the teacher's hard labels, fine-tuning at "
        f"{', '.join(map(str, CELLS['counts']))} expert cells per class (paper: 100-1900) over lr "
        f"{CELLS['ft_lr']} x dropout {CELLS['ft_dropout']}, {CELLS['ft_epochs']} epochs, grid point chosen on held-out "
        f"expert cells; weak-direct = RCCNet on the weak labels, {CELLS['student_epochs']} epochs; expert-only = RCCNet "
        f"from scratch on the same expert cells, {CELLS['expert_only_epochs']} epochs. An epoch is "
        "⌊cells / batch⌋ steps of batches the driver draws with replacement. One seed."
    )


# The findings prose is benchmarks/notes/nuclei_distill.md (benchmarks/common.py: with_notes).
ROWS_NAME = "rows.json"
RESULTS_FILE = Path(__file__).resolve().parent / "results" / "nuclei_distill.json"


def load_rows(out: Path) -> list[dict]:
    p = out / ROWS_NAME
    return json.loads(p.read_text()) if p.exists() else []


def save_rows(out: Path, rows: list[dict]) -> None:
    from pathseg.io.files import write_json

    write_json(out / ROWS_NAME, rows)


def have(rows: list[dict], method: str, dataset: str, fraction: float) -> bool:
    return any(r["method"] == method and r["dataset"] == dataset and abs(r["fraction"] - fraction) < 1e-9 for r in rows)


# ------------------------------------------------------------------------------------------------ nuclei


def nuclei_part(out: Path, rows: list[dict], models: tuple[str, ...] = NUCLEI_MODELS, *,
                smoke: bool = False) -> None:
    from pathseg.engine.config import load_config
    from pathseg.engine.train import evaluate, train
    from pathseg.metrics import metrics_from_confusion
    from pathseg.metrics.classification import precision_recall_f1

    def nucleus_metrics(cm: np.ndarray, names: list[str]) -> dict:
        m = metrics_from_confusion(cm, names)
        prec, rec, _ = precision_recall_f1(cm)
        return {"Dice": m["Dice/nucleus"], "IoU": m["IoU/nucleus"], "precision": float(prec[1]),
                "recall": float(rec[1]), "accuracy": m["accuracy"]}

    synth = "{dataset: synthetic, options: {task: nuclei, n_images: %d, size: %d}}" % (
        NUCLEI["synth_images"], NUCLEI["patch"] if smoke else 256)
    sources = f"[{synth}]" if smoke else f"[{{dataset: monuseg, options: {{scale: {NUCLEI['scale']}}}}}, {synth}]"
    scored_on = "synthetic-nuclei" if smoke else "monuseg"
    for model in models:
        if have(rows, model, scored_on, 1.0):
            continue
        t0 = time.time()
        run = out / f"nuclei_{model}_{NUCLEI['steps']}x{NUCLEI['batch']}"
        cfg = load_config("configs/distill/nuclei_unet.yaml", [
            f"model.name={model}", f"data.options.sources={sources}", f"data.options.patch={NUCLEI['patch']}",
            "data.train_transforms=[{name: flip}, {name: rotate90}]", f"data.batch_size={NUCLEI['batch']}",
            f"data.mpp={NUCLEI_MPP}", f"optim.lr={NUCLEI['lr']}", "optim.poly_power=0.9",
            f"trainer.max_steps={NUCLEI['steps']}", f"trainer.val_every={NUCLEI['steps']}",
            f"trainer.threads={NUCLEI['threads']}", "trainer.channels_last=false", "trainer.progress=false",
            f"trainer.out={run}",
        ])
        res = train(cfg)
        # scored on whole MoNuSeg test images at the training scale (smoke: the synthetic test tiles)
        ecfg = cfg if smoke else load_config(None, [
            "data.dataset=monuseg", f"data.options={{scale: {NUCLEI['scale']}}}",
            f"trainer.threads={NUCLEI['threads']}"])
        m = evaluate(res["checkpoint"], ecfg, "test", metrics=nucleus_metrics)
        rows.append({"method": model, "dataset": scored_on, "fraction": 1.0, "seed": 0,
                     "metrics": {k: round(float(v), 4) for k, v in m.items()}, "seconds": round(time.time() - t0, 1),
                     "steps": res["steps"]})
        save_rows(out, rows)
        print(model, rows[-1]["metrics"], flush=True)


# ------------------------------------------------------------------------------------------------ cells


def _bank(split: str, n: int, seed: int):
    from pathseg.methods.distill.cells import bank_from_instances
    from pathseg.methods.distill.synthetic import CELL_CLASSES, synthetic_cells

    items = synthetic_cells(n, CELLS["size"], seed=seed, split=split)
    truth = {i: c for i, _, _, c in items}
    return bank_from_instances([(i, im, inst) for i, im, inst, _ in items], CELL_CLASSES, truth=truth,
                               size=CELLS["patch"], scales=(1.0,))


METRIC_KEYS = ("F1", "accuracy", "precision", "recall", "F1_macro")


def _kept(m: dict) -> dict:
    return {k: round(v, 4) for k, v in m.items()
            if k in METRIC_KEYS or k.startswith("F1/") and not k.endswith("background")}


def cells_part(out: Path, rows: list[dict]) -> None:
    from pathseg.engine.distill import run_distill, stage_config, stage_steps
    from pathseg.engine.train import train
    from pathseg.methods.distill.cells import CellBank, DistillConfig
    from pathseg.methods.distill.synthetic import confuse

    cdir = out / "cells"
    if not (cdir / "banks.npz").exists():
        train_bank = _bank("train", CELLS["train_images"], 0)
        rng = np.random.default_rng(0)
        train_bank = train_bank.subset(np.sort(rng.permutation(len(train_bank))[: CELLS["max_train"]]))
        for b, p in ((train_bank, "train"), (_bank("val", CELLS["expert_images"], 0), "expert"),
                     (_bank("test", CELLS["test_images"], 0), "test")):
            b.save(cdir / f"{p}.npz")
        (cdir / "banks.npz").write_text("done")
    train_bank, expert = CellBank.load(cdir / "train.npz"), CellBank.load(cdir / "expert.npz")
    test_file = cdir / "test.npz"
    print("cells: train", np.bincount(train_bank.truth, minlength=4), "expert", np.bincount(expert.truth, minlength=4),
          "test", np.bincount(CellBank.load(test_file).truth, minlength=4), flush=True)
    # the config: configs/distill/cells.yaml with these overrides
    cfg = DistillConfig.load("configs/distill/cells.yaml", [
        f"teacher.epochs={CELLS['teacher_epochs']}", "teacher.options={stem_pool: true}",
        f"student.epochs={CELLS['student_epochs']}", f"finetune.counts={list(CELLS['counts'])}",
        f"finetune.lr={list(CELLS['ft_lr'])}", f"finetune.dropout={list(CELLS['ft_dropout'])}",
        f"finetune.epochs={CELLS['ft_epochs']}", "finetune.batch_size=32", "finetune.holdout=0.2", "seed=0",
        "threads=1"])

    def single(run: Path, data: dict, epochs: int, batch: int, n_cells: int) -> dict:
        """One RCCNet (the student's settings) trained by the driver, scored on the test bank."""
        steps, bs = stage_steps(n_cells, epochs, batch)
        res = train(stage_config(cfg, cfg.student, run, {**data, "eval_bank": str(test_file)}, steps=steps,
                                 batch_size=bs, size=CELLS["patch"], val_split="eval"))
        return res

    first_ds = None
    for rate in CELLS["weak_rates"]:
        weak = confuse(train_bank.truth, rate, seed=int(rate * 100))
        actual = float((weak != train_bank.truth).mean())
        ds = f"synthetic-cells-weak{int(rate * 100)}"
        first_ds = first_ds or ds
        # the training bank with weak labels; the expert bank is appended with expert labels only
        bank_file = cdir / ds / "bank.npz"
        if not bank_file.exists():
            tb = CellBank.concat([train_bank, expert])
            tb.weak = np.concatenate([weak, np.full(len(expert), -1)])
            tb.expert = np.concatenate([np.full(len(train_bank), -1), expert.truth])
            tb.save(bank_file)
        # the teacher learns from the weak-labelled cells; the student from the teacher's labels on every bank cell
        t0 = time.time()
        metrics = run_distill(bank_file, cdir / ds, cfg, eval_bank=test_file, log=lambda s: print(ds, s, flush=True))
        elapsed = time.time() - t0
        for key in ["teacher", "student", *[f"student+finetune-{n}" for n in CELLS["counts"]]]:
            if key in metrics and not have(rows, key, ds, rate):
                rows.append({"method": key, "dataset": ds, "fraction": rate, "seed": 0,
                             "metrics": _kept(metrics[key]["eval"]),
                             "seconds": round(metrics[key].get("seconds", elapsed), 1),
                             "weak_label_error": round(actual, 4),
                             **({k: metrics[key][k] for k in ("lr", "dropout") if k in metrics[key]})})
        save_rows(out, rows)
        if not have(rows, "weak-direct", ds, rate):
            t0 = time.time()
            res = single(cdir / ds / "weak_direct", {"bank": str(bank_file), "labels": "weak"},
                         CELLS["student_epochs"], cfg.student.batch_size, len(train_bank))
            rows.append({"method": "weak-direct", "dataset": ds, "fraction": rate, "seed": 0,
                         "metrics": _kept(res["metrics"]), "seconds": round(time.time() - t0, 1),
                         "weak_label_error": round(actual, 4)})
            save_rows(out, rows)
            print(ds, "weak-direct", rows[-1]["metrics"], flush=True)
    # expert only: from scratch on the same expert cells the fine-tuning saw (run_distill's pick of the first set)
    for n in CELLS["counts"]:
        key = f"expert-only-{n}"
        if have(rows, key, "synthetic-cells", 0.0):
            continue
        t0 = time.time()
        pick = cdir / first_ds / "finetune" / f"n{n}_cells.npy"
        res = single(cdir / f"expert_only_n{n}", {"bank": str(cdir / first_ds / "bank.npz"), "labels": "expert",
                                                   "cells": str(pick)},
                     CELLS["expert_only_epochs"], 32, int(np.load(pick).size))
        rows.append({"method": key, "dataset": "synthetic-cells", "fraction": 0.0, "seed": 0,
                     "metrics": _kept(res["metrics"]), "seconds": round(time.time() - t0, 1),
                     "train_cells": int(np.load(pick).size)})
        save_rows(out, rows)
        print(key, rows[-1]["metrics"], flush=True)


# ------------------------------------------------------------------------------------------------ report


def markdown(rows: list[dict]) -> str:
    lines = ["# Nuclei segmentation and cell classification by distillation (Háberová et al.)", "", scale_text(), "",
             "## Nuclei segmentation, MoNuSeg test (layout of the paper's Table 2)", "",
             "| model | Dice | IoU | precision | recall | accuracy | seconds |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["dataset"] in ("monuseg", "synthetic-nuclei"):
            m = r["metrics"]
            lines.append(f"| {r['method']} | {m['Dice']:.4f} | {m['IoU']:.4f} | {m['precision']:.4f} | "
                         f"{m['recall']:.4f} | {m['accuracy']:.4f} | {r['seconds']:.0f} |")
    lines += ["", "## Cell classification, synthetic test cells (layout of the paper's Tables 4-6)", "",
              "Weighted F1 / accuracy over tumour, lymphocyte, fibroblast; per-class F1.", "",
              "| weak labels | model | F1 | accuracy | F1 tumour | F1 lymphocyte | F1 fibroblast | seconds |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["dataset"].startswith("synthetic-cells"):
            m = r["metrics"]
            weak = (f"{r['fraction']:.0%} (actual {r.get('weak_label_error', 0):.1%})" if r["fraction"] else "none")
            lines.append(f"| {weak} | {r['method']} | {m['F1']:.4f} | {m['accuracy']:.4f} | "
                         f"{m.get('F1/tumour', float('nan')):.4f} | {m.get('F1/lymphocyte', float('nan')):.4f} | "
                         f"{m.get('F1/fibroblast', float('nan')):.4f} | {r['seconds']:.0f} |")
    return with_notes("nuclei_distill", "\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--part", default="all", choices=["nuclei", "cells", "all", "report"])
    ap.add_argument("--out", default=None, help="work folder (default runs/bench/nuclei_distill, with --smoke "
                    "runs/bench/nuclei_distill_smoke)")
    ap.add_argument("--models", default=",".join(NUCLEI_MODELS), help="nuclei models to run (comma-separated)")
    ap.add_argument("--merge", nargs="*", default=[], help="other --out folders whose rows join the results")
    ap.add_argument("--steps", type=int, default=NUCLEI["steps"], help="nuclei: training steps")
    ap.add_argument("--batch", type=int, default=NUCLEI["batch"], help="nuclei: batch size")
    ap.add_argument("--threads", type=int, default=NUCLEI["threads"], help="nuclei: torch threads (cells: 1)")
    ap.add_argument("--redo", action="store_true", help="nuclei: drop the finished nuclei rows of --models first")
    ap.add_argument("--smoke", action="store_true", help="every path at toy size (a minute on a CPU); the report "
                    "goes to <out>/results, not benchmarks/results")
    args = ap.parse_args()
    NUCLEI.update(steps=args.steps, batch=args.batch, threads=args.threads)
    out = Path(args.out or ("runs/bench/nuclei_distill_smoke" if args.smoke else "runs/bench/nuclei_distill"))
    if args.smoke:
        import benchmarks.common as common

        NUCLEI.update(SMOKE_NUCLEI)
        CELLS.update(SMOKE_CELLS)
        common.RESULTS = out / "results"  # never over the committed tables
    out.mkdir(parents=True, exist_ok=True)
    rows = load_rows(out)
    models = tuple(m for m in args.models.split(",") if m)
    unknown = [m for m in models if m not in NUCLEI_MODELS]
    if unknown:
        ap.error(f"--models: {', '.join(unknown)} not among {', '.join(NUCLEI_MODELS)}")
    if args.redo:
        rows = [r for r in rows if not (r["dataset"] in ("monuseg", "synthetic-nuclei") and r["method"] in models)]
        save_rows(out, rows)
    if args.part in ("cells", "all"):
        torch.set_num_threads(1)
        cells_part(out, rows)
    if args.part in ("nuclei", "all"):
        torch.set_num_threads(NUCLEI["threads"])
        nuclei_part(out, rows, models, smoke=args.smoke)
    rows = load_rows(out)
    for extra in args.merge:
        rows += [r for r in load_rows(Path(extra)) if not have(rows, r["method"], r["dataset"], r["fraction"])]
    order = {m: i for i, m in enumerate(NUCLEI_MODELS)}
    rows.sort(key=lambda r: (r["dataset"] not in ("monuseg", "synthetic-nuclei"), r["dataset"],
                             order.get(r["method"], 2)))
    cmd = None
    if args.part == "report":  # rows come from earlier commands: keep the one on record
        prev = RESULTS_FILE.read_text() if RESULTS_FILE.exists() else "{}"
        cmd = json.loads(prev).get("command")
    path = write_results("nuclei_distill", rows, markdown(rows), command_line=cmd, scale_down=scale_text())
    print("results:", path, flush=True)


if __name__ == "__main__":
    main()
