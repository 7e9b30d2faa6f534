"""Segmentation from few masks + many classification labels (Ciga & Martel 2021) on real GlaS.

Classes: background, benign gland, malignant gland (GlaS grade view); classification label of a
classification image: its GlaS grade. 6 of the 85 GlaS training images (balanced over grades, whole
patients where possible, holdout seed 0) are held out and scored; of the other 79, ⌈s·79⌉ are segmentation
images (s ∈ {5, 10, 25, 50, 100}%, drawn round-robin over grades per seed) and the rest classification images.
S trains on the segmentation images only, S+C also on the classification images. 3 seeds each. At
s = 100% no classification image is left, so S+C is the S run (recorded once, copied with a note).
The report states the image counts of the rows it holds (the committed table ran on the earlier 20-image set).

A row is a config and two library calls: configs/segcls/glas_bench.yaml with the row's overrides, trained by
pathseg.engine.train.train and scored by pathseg.engine.train.evaluate with the paper's metrics
(pathseg.metrics.segcls.segcls_metrics). CPU scale-down (written into the results): GlaS at 0.25 scale, 64 px
patches, classification grid stride 48, batch 20, one torch thread, model segcls from scratch (no ImageNet
weights offline), Adam at --lr (published 1e-4) for --steps steps.

    python benchmarks/segcls_glas.py [--steps 120] [--lr 1e-3] [--seeds 0,1,2] [--fractions 0.05,0.1,0.25,0.5,1]
    PATHSEG_BENCH_RESULTS=/tmp/r python benchmarks/segcls_glas.py --steps 2 --seeds 0 --fractions 1 --methods S
                                                                      # smallest run, results under /tmp/r

Resumable: rows already in benchmarks/results/segcls_glas.json are skipped; --plot-only redraws. The findings
prose is benchmarks/notes/segcls_glas.md (see benchmarks/common.py).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from common import RESULTS, with_notes, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NAME = "segcls_glas"
METRICS = ("F1_macro", "IoU", "accuracy", "foreground_accuracy")


def run_one(method: str, fraction: float, seed: int, args) -> dict:
    import torch

    from pathseg.engine.config import load_config
    from pathseg.engine.train import train

    torch.set_num_threads(1)
    out = ROOT / args.out / f"{method.replace('+', 'p')}_{fraction:g}_seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    regime = "S" if method == "S" else "S+C"
    share = "null" if args.seg_share is None or regime == "S" else args.seg_share
    cfg = load_config(ROOT / "configs/segcls/glas_bench.yaml", [
        f"data.options.regime={regime}", f"data.options.seg_fraction={fraction}", f"data.options.split_seed={seed}",
        f"data.options.seg_share={share}", f"trainer.seed={seed}", f"trainer.max_steps={args.steps}",
        f"trainer.val_every={args.steps}", f"optim.lr={args.lr}", f"optim.poly_power={args.poly_power}",
        f"trainer.out={out}", "trainer.resume=false",
    ])
    t0 = time.time()
    res = train(cfg)
    train_s = time.time() - t0
    metrics, summary = score(res["checkpoint"], cfg)
    return {
        "method": method, "dataset": f"glas_grade_{summary['train_images'] + summary['test_images']}",
        "fraction": fraction, "seed": seed,
        "metrics": metrics, "seconds": round(time.time() - t0, 1), "train_seconds": round(train_s, 1),
        "steps": args.steps, "data": summary,
    }


def score(checkpoint: str, cfg) -> tuple[dict, dict]:
    """Metrics of the paper on the held-out whole images, from one confusion matrix (the library's evaluate)."""
    from pathseg.data.patches import SegClsPatches
    from pathseg.engine.train import evaluate
    from pathseg.metrics.segcls import segcls_metrics

    m = evaluate(checkpoint, cfg, "test", metrics=segcls_metrics)
    keep = {k: round(float(m[k]), 4) for k in (*METRICS, "F1_micro", "precision_macro", "recall_macro",
                                              "IoU/benign_gland", "IoU/malignant_gland")}
    train_ds = SegClsPatches(split="train", **dict(cfg.data.options))
    summary = {**train_ds.summary(), "train_images": len(train_ds.train_ids),
               "seg_ids": train_ds.seg_ids, "test_ids": train_ds.test_ids}
    return keep, summary


# ---------------------------------------------------------------------------------------------
# report


def aggregate(rows: list[dict]) -> dict[tuple[str, float], dict[str, tuple[float, float, int]]]:
    groups: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], float(r["fraction"])), []).append(r)
    out = {}
    for key, rs in groups.items():
        out[key] = {m: (float(np.mean([r["metrics"][m] for r in rs])), float(np.std([r["metrics"][m] for r in rs])),
                        len(rs)) for m in METRICS}
    return out


def relative(rows: list[dict], metric: str) -> dict[tuple[str, float], tuple[float, float]]:
    """Mean and std over seeds of metric / (mean over seeds of S at s = 100%)."""
    full = [r["metrics"][metric] for r in rows if r["method"] == "S" and float(r["fraction"]) == 1.0]
    if not full:
        return {}
    ref = float(np.mean(full))
    out: dict[tuple[str, float], list[float]] = {}
    for r in rows:
        out.setdefault((r["method"], float(r["fraction"])), []).append(r["metrics"][metric] / ref)
    return {k: (float(np.mean(v)), float(np.std(v))) for k, v in out.items()}


def _table(rows: list[dict], methods: list[str]) -> list[str]:
    agg = aggregate(rows)
    rel_f1, rel_iou = relative(rows, "F1_macro"), relative(rows, "IoU")
    out = ["| method | s | seg images | " + " | ".join(METRICS)
           + " | IoU benign / malignant | F1 rel. to S@100% | IoU rel. to S@100% | seeds |",
           "|---|---|---|" + "---|" * (len(METRICS) + 4)]
    for f in sorted({k[1] for k in agg}):
        for method in methods:
            if (method, f) not in agg:
                continue
            a = agg[(method, f)]
            sel = [r for r in rows if r["method"] == method and float(r["fraction"]) == f]
            n_seg = sorted({r["data"]["seg_images"] for r in sel})
            ben = np.mean([r["metrics"].get("IoU/benign_gland", math.nan) for r in sel])
            mal = np.mean([r["metrics"].get("IoU/malignant_gland", math.nan) for r in sel])
            cells = [f"{a[m][0]:.3f} ± {a[m][1]:.3f}" for m in METRICS]
            rf = rel_f1.get((method, f), (math.nan, math.nan))
            ri = rel_iou.get((method, f), (math.nan, math.nan))
            out.append(f"| {method} | {f:.0%} | {'/'.join(map(str, n_seg))} | " + " | ".join(cells)
                       + f" | {ben:.3f} / {mal:.3f} | {rf[0]:.2f} ± {rf[1]:.2f} | {ri[0]:.2f} ± {ri[1]:.2f}"
                       + f" | {len(sel)} |")
    return out


def image_counts(rows: list[dict]) -> tuple[int, int]:
    """(training images, held-out images) of the GlaS split the rows were run on (from their data summaries)."""
    if not rows:
        return 0, 0
    d = rows[0]["data"]
    train = d.get("train_images") or max(r["data"]["seg_images"] + r["data"]["cls_images"] for r in rows)
    return int(train), int(d["test_images"])


def markdown(rows: list[dict], ablation: list[dict], command: str, scale: str) -> str:
    n_train, n_test = image_counts(rows)
    lines = [
        "# Segmentation + classification labels (Ciga & Martel 2021) on GlaS: S vs S+C",
        "",
        f"GlaS grade view (background / benign gland / malignant gland), {n_train + n_test} training images: "
        f"{n_test} held out (balanced over grades, whole patients) and scored as whole images; of the other "
        f"{n_train}, ⌈s·{n_train}⌉ are segmentation images, the rest classification images (label = grade). "
        "Mean ± std over seeds; "
        "'rel. to S@100%' divides by the mean of S at s = 100% (the paper's Figure 3 axis). At s = 100% no "
        "classification image is left, so the S+C row repeats the S runs.",
        "",
        f"Scale-down: {scale}.",
        "",
        f"Command: `{command}`",
        "",
        *_table(rows, ["S", "S+C"]),
        "",
        "![relative performance](segcls_glas.png)",
        "",
    ]
    if ablation:
        both = rows + ablation
        labels = sorted({r["method"] for r in ablation})
        shares = sorted({str(r["method"]).split("=")[-1] for r in ablation})
        lines += [
            "## Ablation: a fixed share of segmentation patches per batch",
            "",
            "Same runs as S+C, but segmentation patches repeated so they make about "
            f"{', '.join(shares)} of each batch instead of their pooled share (4-10% at s = 5%). "
            f"Command: `{command} --ablation --seg-share {shares[0]} --fractions 0.05,0.1`",
            "",
            *_table(both, labels),
            "",
        ]
    return with_notes(NAME, "\n".join(lines))


def plot(rows: list[dict], path: Path, ablation: list[dict] | None = None) -> None:
    """Figure-3-style plot with Pillow: performance relative to S at s = 100% against s, S and S+C."""
    from PIL import Image, ImageDraw, ImageFont

    panels = [("F1_macro", "F1 (macro)"), ("IoU", "IoU (mean)")]
    W, H, pad_l, pad_r, pad_t, pad_b = 520, 400, 62, 18, 40, 58
    img = Image.new("RGB", (W * len(panels), H), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    colours = {"S": (200, 60, 50), "S+C": (40, 90, 200)}
    series = ["S", "S+C"]
    if ablation:
        rows = rows + ablation
        for name in sorted({r["method"] for r in ablation}):
            colours[name] = (40, 150, 70)
            series.append(name)
    fr = sorted({float(r["fraction"]) for r in rows})
    xs = {f: i for i, f in enumerate(fr)}
    for p, (metric, title) in enumerate(panels):
        rel = relative(rows, metric)
        if not rel:
            continue
        x0, x1, y0, y1 = p * W + pad_l, (p + 1) * W - pad_r, pad_t, H - pad_b
        vals = [v[0] + v[1] for v in rel.values()] + [v[0] - v[1] for v in rel.values()]
        lo, hi = min(0.0, math.floor(min(vals) * 10) / 10), max(1.1, math.ceil(max(vals) * 10) / 10)

        def X(f: float) -> float:
            return x0 + (x1 - x0) * (xs[f] + 0.5) / len(fr)

        def Y(v: float) -> float:
            return y1 - (y1 - y0) * (v - lo) / (hi - lo)

        # the paper's finding at 5-7.5% segmentation data: S+C 85-90% of full performance, S 55-70%
        if 0.05 in xs:
            d.rectangle([X(0.05) - 14, Y(0.90), X(0.05) + 14, Y(0.85)], fill=(205, 220, 250))
            d.rectangle([X(0.05) - 14, Y(0.70), X(0.05) + 14, Y(0.55)], fill=(250, 215, 210))
        d.rectangle([x0, y0, x1, y1], outline="black")
        t = lo
        while t <= hi + 1e-9:
            d.line([x0 - 4, Y(t), x0, Y(t)], fill="black")
            d.line([x0, Y(t), x1, Y(t)], fill=(230, 230, 230))
            d.text((x0 - 34, Y(t) - 6), f"{t:.1f}", fill="black", font=font)
            t = round(t + 0.1, 10) if hi - lo <= 1.2 else round(t + 0.2, 10)
        d.line([x0, Y(1.0), x1, Y(1.0)], fill=(120, 120, 120))
        for f in fr:
            d.text((X(f) - 10, y1 + 6), f"{f:.0%}", fill="black", font=font)
        d.text(((x0 + x1) / 2 - 110, y1 + 24), "s = share of training images with masks", fill="black", font=font)
        d.text((x0, 12), f"{title} relative to S at s = 100% (mean ± std, 3 seeds)", fill="black", font=font)
        for k, method in enumerate(series):
            pts = [(X(f), Y(rel[(method, f)][0]), rel[(method, f)][1]) for f in fr if (method, f) in rel]
            c = colours[method]
            off = 4 * k - 4
            for (ax, ay, _), (bx, by, _) in zip(pts, pts[1:]):
                d.line([ax + off, ay, bx + off, by], fill=c, width=2)
            for (ax, ay, sd), f in zip(pts, [f for f in fr if (method, f) in rel]):
                top, bot = Y(rel[(method, f)][0] + sd), Y(rel[(method, f)][0] - sd)
                d.line([ax + off, top, ax + off, bot], fill=c, width=1)
                d.ellipse([ax + off - 4, ay - 4, ax + off + 4, ay + 4], fill=c)
            d.line([x1 - 170, y1 - 56 + 16 * k, x1 - 150, y1 - 56 + 16 * k], fill=c, width=3)
            d.text((x1 - 144, y1 - 62 + 16 * k), method, fill="black", font=font)
        if 0.05 in xs:
            d.text((X(0.05) + 18, Y(0.875) - 6), "paper S+C", fill=(60, 80, 160), font=font)
            d.text((X(0.05) + 18, Y(0.625) - 6), "paper S", fill=(170, 60, 50), font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--poly-power", type=float, default=0.0,
                    help="lr_t = lr (1 - t/T)^power; 0 = constant (published)")
    ap.add_argument("--name", default=NAME, help="results file: benchmarks/results/<name>.json")
    ap.add_argument("--merge", default="", help="comma-separated results names whose rows to take in")
    ap.add_argument("--seg-share", type=float, default=None,
                    help="with --ablation: share of segmentation patches in S+C batches")
    ap.add_argument("--ablation", action="store_true",
                    help="run S+C with --seg-share into the results' 'ablation' rows (after the main table)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--fractions", default="0.05,0.1,0.25,0.5,1")
    ap.add_argument("--methods", default="S,S+C")
    ap.add_argument("--out", default="runs/bench_segcls_glas")
    ap.add_argument("--plot-only", action="store_true")
    args = ap.parse_args()
    if args.ablation and args.seg_share is None:
        ap.error("--ablation needs --seg-share")
    if args.ablation:
        args.out = f"{args.out}_share{args.seg_share:g}"
    else:
        args.seg_share = None  # the main table is the published pooled sampling

    path = RESULTS / f"{args.name}.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    rows, ablation = saved.get("rows", []), saved.get("ablation", [])
    for other in filter(None, args.merge.split(",")):  # rows run as other processes (e.g. one per seed)
        have = {(r["method"], float(r["fraction"]), int(r["seed"])) for r in rows}
        more = json.loads((RESULTS / f"{other}.json").read_text())["rows"]
        rows += [r for r in more if (r["method"], float(r["fraction"]), int(r["seed"])) not in have]
    steps = rows[0]["steps"] if rows else args.steps
    if not args.plot_only and {r["steps"] for r in rows} - {args.steps}:
        ap.error(f"{path} holds runs of {sorted({r['steps'] for r in rows})} steps, not {args.steps}: pass --name "
                 "for a new table, or the same --steps to add to it")
    scale = (f"GlaS at 0.25 scale (~2.5 µm/px), 64 px patches (160 µm; classification grid stride 48), model segcls "
             f"(ResNet-18 to layer3, published decoder and head) from scratch (no ImageNet weights offline), "
             f"batch 20, Adam lr {args.lr:g} " + ("constant" if not args.poly_power else f"with poly decay (power "
             f"{args.poly_power:g})") + f" (published 1e-4 constant; raised for {steps} steps from scratch), "
             f"{steps} steps per run, one torch thread, Macenko to train_1, S+C batches drawn from the pooled "
             f"patches (published); {image_counts(rows)[0] or 'the'} training / {image_counts(rows)[1] or 'held-out'} "
             "held-out images")

    main_cmd = f"python benchmarks/segcls_glas.py --steps {steps} --lr {args.lr:g} --poly-power {args.poly_power:g}"

    def save() -> None:
        extra = {"ablation": ablation,
                 "ablation_command": f"{main_cmd} --ablation --seg-share 0.5 --fractions 0.05,0.1"}
        write_results(args.name, rows, markdown(rows, ablation, main_cmd, scale), command=main_cmd, scale_down=scale,
                      **(extra if ablation else {}))
        plot(rows, RESULTS / f"{args.name}.png", ablation)

    fractions = [float(f) for f in args.fractions.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = ["S+C"] if args.ablation else args.methods.split(",")
    target = ablation if args.ablation else rows
    done = {(r["method"], float(r["fraction"]), int(r["seed"])) for r in target}
    for seed in [] if args.plot_only else seeds:
        for f in fractions:
            for method in methods:
                label = f"S+C seg_share={args.seg_share:g}" if args.ablation else method
                if (label, f, seed) in done or (args.ablation and f == 1.0):
                    continue
                if method == "S+C" and f == 1.0:
                    src = next((r for r in rows if r["method"] == "S" and float(r["fraction"]) == 1.0
                                and int(r["seed"]) == seed), None)
                    if src is None:
                        continue
                    row = {**src, "method": "S+C", "seconds": 0.0,
                           "note": "same run as S: at s = 100% no classification image is left"}
                else:
                    print(f"== {label} s={f:g} seed={seed}", flush=True)
                    row = {**run_one(method, f, seed, args), "method": label}
                    print({k: row["metrics"][k] for k in METRICS}, row["seconds"], "s", flush=True)
                target.append(row)
                done.add((label, f, seed))
                save()
    save()
    print(markdown(rows, ablation, main_cmd, scale))


if __name__ == "__main__":
    main()
