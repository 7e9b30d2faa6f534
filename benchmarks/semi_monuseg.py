"""Semi-supervised label-fraction benchmark on real MoNuSeg 2018 (CRCFP's Table 2 setting, scaled down for a CPU).

Rows: SupOnly, CCT, CAC and CRCFP with 1/8 of the 30 training images labelled (committed splits
``splits/monuseg/1-8_seed{0,1,2}.json``), the other 7/8 unlabelled, scored on the 14 official test
images; plus SupOnly with every image labelled (1/1) as the ceiling. Every row uses the same recipe,
``configs/semi/monuseg_cpu.yaml`` (the lead's supervised MoNuSeg recipe: U-Net/ResNet-18 from scratch,
half-scale images, 256 px crops, batch 8 labelled (+ 8 unlabelled), Adam 2e-3 poly), so rows differ only
in the method and its published loss weights. The semi-supervised methods train with L_sup only for the
first ``--warmup`` fraction of the steps (CRCFP: 5 "epochs"; here an epoch is not defined by the data, see
configs/semi/crcfp.yaml).

Writes ``--results`` (default benchmarks/results/semi_monuseg.json) after every row, and the markdown table
beside it (same name, .md). Resumable: rows already in the results file (same method, fraction, seed) are
skipped, so running the same command again continues; the scale of the rows (``recipe``) is fixed by
the first run. ``--time-steps N`` first measures the time per training step of CRCFP and SupOnly side by
side (interleaved, same process, real data loaders) and stores it under ``step_times``; with
``--time-only`` it adds a measurement at another scale (e.g. ``--crop 256 data.batch_size=8``) and
trains nothing.

    python benchmarks/semi_monuseg.py --steps 600 --seeds 0,1,2 [--methods SupOnly,CCT,CAC,CRCFP]
        [--fractions 1/8,1] [--scale 0.5] [--crop 256] [--time-steps 10] [--results PATH] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import RESULTS, command, machine  # noqa: E402
BASE = ROOT / "configs/semi/monuseg_cpu.yaml"
NAME = "semi_monuseg"
# table name -> (registered method, method.params); weights as published (CRCFP: 0.1 / 0.01 / 0.01)
METHODS: dict[str, tuple[str, dict[str, Any]]] = {
    "SupOnly": ("supervised", {}),
    "CCT": ("cct", {"weight_cross": 1.0}),
    "CAC": ("cac", {"weight_cont": 0.1}),
    "CRCFP": ("crcfp", {"weight_cont": 0.1, "weight_cross": 0.01, "weight_ent": 0.01}),
}


FINDINGS = """## Findings (400 steps per row, 3 seeds; the seed also picks the 1/8 split)

**The paper's ordering holds in the means, but the gaps are within seed noise.** At 1/8 (4 labelled
images), the mIoU order is CRCFP 0.7414 > CAC 0.7385 > CCT 0.7376 > SupOnly 0.7294, and Dice and accuracy give the
same order. Each gap is smaller than one standard deviation (0.013-0.023). Paired by seed (same split), the mIoU
gain over SupOnly is:

- CRCFP: -0.003, +0.015, +0.024 (mean +0.012);
- CAC: +0.002, +0.025, +0.000 (mean +0.009);
- CCT: -0.011, +0.018, +0.017 (mean +0.008).

CRCFP is ahead in 2 of 3 seeds, and so is CAC. Three seeds cannot separate CRCFP from CAC (+0.003).

**"CRCFP close to full supervision" holds.** CRCFP at 1/8 is 0.009 mIoU below SupOnly with every image labelled
(0.7507), and in seed 2 it is above it (0.7556 against 0.7506). This is weaker evidence than it looks, because the
headroom is small here: SupOnly at 1/8 is itself only 0.021 below the ceiling. At this scale (half-scale images,
128 px crops, 400 steps from scratch), the ceiling is set by the training budget more than by the labels. The
paper's gaps come from ImageNet-pretrained DeepLabV3 trained to convergence.

**The unsupervised terms were active, not silently off.** Over the last 100 steps, 76-89% of the overlap cells
were above the confidence threshold λ = 0.75 with a less confident partner, so L_cont had anchors. L_cont was
0.28-1.35 and L_cross 0.013-0.016. L_ent was about 0.24, an entropy that is still high: the predictions on
unlabelled images were far from confident.

**Step time, CRCFP against SupOnly.** The table's s / step column averages all rows. The seed-0 rows ran while tests
shared the machine, which is why its spread is large. In the rows run one after another on an otherwise idle machine (seed 1),
the step took 0.88 s against 0.29 s, which is 3.0×. Interleaved in one process, the ratio was 3.4× at the benchmark's
scale and 4.7× at 256 px crops with batch 8 + 8. The 3× target is therefore met only at the benchmark's scale, and
only in the sequential measurement. A CRCFP step encodes and decodes four batches of the same size (labelled,
unlabelled, and the two overlapping crops), against one for SupOnly, so ~4× the convolution work is inherent. It
comes under 4× only where the larger batch runs more efficiently. At 256 px × 32 images the activations no
longer fit the caches, and the cost rises above 4×. Computing L_cross and L_ent on the crops instead of the full
unlabelled image would remove one of the four passes. This issue asks for the full image, so it is not done.
"""


def _override(args: argparse.Namespace, key: str, default: object) -> str:
    """The value a ``key=value`` override gives every row, else the recipe's default (for the table text)."""
    vals = [o.split("=", 1)[1] for o in args.overrides if o.startswith(key + "=")]
    return vals[-1] if vals else str(default)


def _fraction(s: str) -> Fraction:
    return Fraction(s.replace("-", "/"))


def _tag(f: Fraction) -> str:
    return f"{f.numerator}-{f.denominator}"


def make_config(method: str, fraction: Fraction, seed: int, args: argparse.Namespace, out: Path):
    """The configuration of one table row."""
    from pathseg.engine.config import load_config

    name, params = METHODS[method]
    ov = [
        f"method.name={name}",
        f"data.split_file={ROOT / 'splits/monuseg' / f'{_tag(fraction)}_seed{seed}.json'}",
        f"data.options.scale={args.scale}",
        f"trainer.max_steps={args.steps}",
        f"trainer.val_every={args.steps}",  # validate once, at the end
        f"trainer.seed={seed}",
        f"trainer.out={out}",
        "trainer.resume=false",
        "trainer.progress=false",
    ]
    cfg = load_config(BASE, ov + list(args.overrides))
    cfg.data.train_transforms = [dict(t) for t in cfg.data.train_transforms]
    for t in cfg.data.train_transforms:
        if t["name"] == "random_crop":
            t["size"] = args.crop
    p = dict(params)
    if name != "supervised":
        p["warmup_steps"] = int(round(args.warmup * args.steps))
    cfg.method.params = {**p, **cfg.method.params}
    return cfg


def run_row(method: str, fraction: Fraction, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    from pathseg.engine.train import evaluate, train

    out = Path(args.out) / f"{method}_{_tag(fraction)}_seed{seed}"
    cfg = make_config(method, fraction, seed, args, out)
    t0 = time.time()
    res = train(cfg)
    train_s = time.time() - t0
    t1 = time.time()
    m = evaluate(res["checkpoint"], cfg, "test")
    eval_s = time.time() - t1
    # the fit includes one final validation on the test images, about as long as `evaluate`
    step_s = max(0.0, train_s - eval_s) / args.steps
    return {
        "method": method, "dataset": "monuseg2018", "fraction": float(fraction), "seed": seed,
        "metrics": {"mIoU": m["mIoU"], "Dice": m["Dice"], "accuracy": m["accuracy"], "step_seconds": round(step_s, 3),
                    "IoU/nucleus": m.get("IoU/nucleus"), "Dice/nucleus": m.get("Dice/nucleus")},
        "seconds": round(train_s + eval_s, 1),
        "steps": args.steps,
        "params": cfg.method.params,
    }


def time_steps(args: argparse.Namespace, n: int) -> dict[str, Any]:
    """Seconds per training step of CRCFP and SupOnly, interleaved step by step in one process."""
    import torch

    from pathseg.engine.data import build_train_loaders
    from pathseg.engine.train import build_method, set_threads

    fraction = Fraction(1, 8)
    runs = {}
    for method in ("SupOnly", "CRCFP"):
        cfg = make_config(method, fraction, 0, args, Path(args.out) / "timing")
        cfg.trainer.val_every = n + 1  # the loaders' length
        if "warmup_steps" in cfg.method.params:
            cfg.method.params["warmup_steps"] = 0  # time the full step
        set_threads(cfg.trainer.threads)
        torch.manual_seed(0)
        m = build_method(cfg, ["background", "nucleus"], None)
        loader = build_train_loaders(cfg, with_unlabeled=m.needs_unlabeled)
        if hasattr(loader, "iterables"):
            loader = {k: iter(v) for k, v in loader.iterables.items()}
            it = None
        else:
            it = iter(loader)
        opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
        runs[method] = (m, opt, loader, it)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for i in range(n + 1):  # the first step of each is a warm-up, not counted
        for method, (m, opt, loader, it) in runs.items():
            t0 = time.perf_counter()
            batch = next(it) if it is not None else {k: next(v) for k, v in loader.items()}
            out = m.training_losses(batch)
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            if i > 0:
                times[method].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "steps": n, "includes": "data loading + forward + backward + optimiser step", **recipe(args),
        "command": command(),
        "SupOnly_median_s": round(med["SupOnly"], 3), "CRCFP_median_s": round(med["CRCFP"], 3),
        "ratio": round(med["CRCFP"] / med["SupOnly"], 2),
        "SupOnly_s": [round(x, 3) for x in times["SupOnly"]], "CRCFP_s": [round(x, 3) for x in times["CRCFP"]],
    }


def recipe(args: argparse.Namespace) -> dict[str, Any]:
    """The scale every row of a run shares (stored in the results, read back by the table)."""
    return {"scale": args.scale, "crop": args.crop, "steps_per_row": args.steps, "warmup": args.warmup,
            "batch": int(_override(args, "data.batch_size", 8)),
            "unlabeled_batch": int(_override(args, "data.unlabeled_batch_size", 8))}


def markdown(rows: list[dict[str, Any]], step_times: list[dict[str, Any]], rec: dict[str, Any]) -> str:
    """Mean (std) over seeds per method and label fraction, in the layout of CRCFP's Table 2."""
    keys = ("mIoU", "Dice", "accuracy", "step_seconds")
    groups: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["fraction"], r["method"]), []).append(r)
    order = list(METHODS)
    lines = [
        "# Semi-supervised segmentation on MoNuSeg 2018 (CRCFP Table 2 setting, CPU scale-down)\n",
        f"Recipe: {BASE.relative_to(ROOT)} (U-Net/ResNet-18 from scratch), images at scale {rec['scale']}, "
        f"{rec['crop']} px crops, {rec['steps_per_row']} steps, batch {rec['batch']} labelled + "
        f"{rec['unlabeled_batch']} unlabelled, L_sup only for the first {rec['warmup']:.0%} of the steps. "
        "Test: the 14 official test images. mean (std) over seeds.\n",
        "| Method | Labelled | mIoU | Dice | Accuracy | s / step | seeds |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(vals: list[float], digits: int = 4) -> str:
        if len(vals) == 1:
            return f"{vals[0]:.{digits}f}"
        return f"{statistics.mean(vals):.{digits}f} ({statistics.stdev(vals):.{digits}f})"

    for (frac, method) in sorted(groups, key=lambda k: (k[0] == 1.0, k[0], order.index(k[1]) if k[1] in order else 99)):
        rs = groups[(frac, method)]
        f = Fraction(frac).limit_denominator(64)
        label = f"{f.numerator}/{f.denominator}"
        name = method + (" (ceiling)" if frac == 1.0 else "")
        vals = [cell([r["metrics"][k] for r in rs], 2 if k == "step_seconds" else 4) for k in keys]
        lines.append(f"| {name} | {label} | " + " | ".join(vals) + f" | {len(rs)} |")
    if step_times:
        lines += ["", "Time per training step, CRCFP against SupOnly, interleaved step by step in one process (median "
                  "over the steps; data loading + forward + backward + optimiser step; target <= 3x):", "",
                  "| crop | batch (labelled + unlabelled) | steps | SupOnly s | CRCFP s | ratio |", "|---|---|---|---|---|---|"]
        for t in step_times:
            lines.append(f"| {t.get('crop', rec['crop'])} px | {t.get('batch', rec['batch'])} + "
                         f"{t.get('unlabeled_batch', rec['unlabeled_batch'])} | {t['steps']} | "
                         f"{t['SupOnly_median_s']:.3f} | {t['CRCFP_median_s']:.3f} | {t['ratio']:.2f}x |")
    lines += ["", f"Machine: {machine()}", "", FINDINGS]
    return "\n".join(lines)


def write(path: Path, rows: list[dict[str, Any]], step_times: list[dict[str, Any]],
          rec: dict[str, Any], cmd: str) -> None:
    from pathseg.io.files import write_json, write_text

    write_json(path, {"benchmark": NAME, "command": cmd, "machine": machine(), "recipe": rec,
                      "step_times": step_times, "rows": rows})
    write_text(path.with_suffix(".md"), markdown(rows, step_times, rec))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=600, help="training steps per row")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {', '.join(METHODS)}")
    ap.add_argument("--fractions", default="1/8,1", help="1 runs SupOnly only (the ceiling)")
    ap.add_argument("--scale", type=float, default=0.5, help="MoNuSeg image scale (0.5 -> 500 px images)")
    ap.add_argument("--crop", type=int, default=256, help="training crop size (px)")
    ap.add_argument("--warmup", type=float, default=0.1, help="fraction of the steps with L_sup only (semi methods)")
    ap.add_argument("--time-steps", type=int, default=0, help="measure CRCFP vs SupOnly s/step over N steps first")
    ap.add_argument("--time-only", action="store_true",
                    help="only add a step-time measurement at the given --crop/batch (rows untouched)")
    ap.add_argument("--results", type=Path, default=RESULTS / f"{NAME}.json")
    ap.add_argument("--out", default="runs/bench_semi_monuseg", help="training run folders")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides for every row")
    args = ap.parse_args()
    unknown = set(args.methods.split(",")) - set(METHODS)
    if unknown:
        ap.error(f"unknown method(s) {sorted(unknown)}; valid: {', '.join(METHODS)}")

    prev: dict[str, Any] = json.loads(args.results.read_text()) if args.results.exists() else {}
    rows: list[dict[str, Any]] = list(prev.get("rows", []))
    rec = prev.get("recipe") or recipe(args)  # the rows' scale: fixed by the first run of this results file
    step_times: list[dict[str, Any]] = list(prev.get("step_times", []))
    if prev.get("step_time"):  # the first format: one measurement at the rows' scale
        step_times.insert(0, {**prev["step_time"], **{k: v for k, v in rec.items() if k in ("crop", "batch",
                                                                                          "unlabeled_batch")}})
    cmd = prev.get("command", command())
    if args.time_steps > 0 and (args.time_only or not step_times):
        t = time_steps(args, args.time_steps)
        step_times.append(t)
        print(f"step time: {json.dumps({k: v for k, v in t.items() if not k.endswith('_s')})}", flush=True)
        write(args.results, rows, step_times, rec, cmd)
    if args.time_only:
        print(markdown(rows, step_times, rec))
        return
    if rows and recipe(args) != rec:
        ap.error(f"{args.results} holds rows made with {rec}; these arguments give {recipe(args)}: pass the same "
                 "scale, or another --results file")
    cmd = command() if not rows else cmd
    done = {(r["method"], float(r["fraction"]), int(r["seed"])) for r in rows}
    for frac in [_fraction(f) for f in args.fractions.split(",")]:
        for seed in [int(s) for s in args.seeds.split(",")]:
            for method in args.methods.split(","):
                if frac == 1 and method != "SupOnly":
                    continue  # every image labelled: nothing left for the unlabelled branch
                if (method, float(frac), seed) in done:
                    print(f"skip {method} {frac} seed {seed}: already in {args.results}", flush=True)
                    continue
                row = run_row(method, frac, seed, args)
                rows.append(row)
                write(args.results, rows, step_times, rec, cmd)
                m = row["metrics"]
                print(f"{method} {frac} seed {seed}: mIoU {m['mIoU']:.4f} Dice {m['Dice']:.4f} "
                      f"({m['step_seconds']:.2f} s/step, {row['seconds']:.0f} s)", flush=True)
    write(args.results, rows, step_times, rec, cmd)
    print(markdown(rows, step_times, rec))
    print(f"results: {args.results}")


if __name__ == "__main__":
    main()
