"""Supervised baseline on real MoNuSeg 2018: train on the 30 training images, score the 14 test images.

Scale-down for a 2-core CPU (written into the results): U-Net/ResNet-18 from scratch (no pretrained
weights), images at half scale, 256 px crops, batch 8, Adam 2e-3 with poly decay. The metrics are the
2-class means (background, nucleus) that CRCFP's Table 2 reports.

    python benchmarks/monuseg_supervised.py [--steps 600] [--seed 0] [key=value ...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_rows, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _cpu_seconds() -> float:
    """CPU time used by this process (all threads): on a shared machine, wall time overstates the cost."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="run folder (default: runs/bench_monuseg_supervised_<steps>)")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()

    from pathseg.engine.config import load_config
    from pathseg.engine.train import evaluate, train

    args.out = args.out or f"runs/bench_monuseg_supervised_{args.steps}"
    cfg = load_config(ROOT / "configs/monuseg_supervised.yaml", [
        f"trainer.max_steps={args.steps}", f"trainer.seed={args.seed}", f"trainer.out={args.out}",
        "trainer.resume=false", *args.overrides,
    ])
    t0, c0 = time.time(), _cpu_seconds()
    res = train(cfg)
    train_s, cpu_s = time.time() - t0, _cpu_seconds() - c0
    m = evaluate(res["checkpoint"], cfg, "test")
    row = {
        "method": "SupOnly", "dataset": "monuseg2018", "fraction": 1.0, "seed": args.seed,
        "metrics": {"mIoU": m["mIoU"], "Dice": m["Dice"], "accuracy": m["accuracy"],
                    "IoU/nucleus": m["IoU/nucleus"], "Dice/nucleus": m["Dice/nucleus"]},
        "seconds": round(train_s, 1),
        "cpu_seconds": round(cpu_s, 1),
        "checkpoint": res["checkpoint"],
        "steps": args.steps,
    }
    scale = "U-Net/ResNet-18 from scratch, images at 0.5 scale, 256 px crops, batch 8, Adam 2e-3 poly"
    # one row per (seed, steps): re-running a setting replaces its row, other settings are kept
    rows = [r for r in load_rows("monuseg_supervised") if (r["seed"], r.get("steps")) != (args.seed, args.steps)]
    rows = sorted(rows + [row], key=lambda r: (r.get("steps", 0), r["seed"]))
    md = (
        "# MoNuSeg 2018 supervised baseline (30 train / 14 test images)\n\n"
        f"Scale-down: {scale}. 2-class means (background, nucleus) on the 14 official test images.\n"
        "Train CPU s counts all threads of the process; wall time is longer when the machine is shared.\n\n"
        "| method | fraction | steps | seed | mIoU | Dice | accuracy | nucleus IoU | train wall s | train CPU s |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    for r in rows:
        x = r["metrics"]
        md += (f"| {r['method']} | 1/1 | {r.get('steps')} | {r['seed']} | {x['mIoU']:.4f} | {x['Dice']:.4f} "
               f"| {x['accuracy']:.4f} | {x['IoU/nucleus']:.4f} | {r['seconds']:.0f} | {r.get('cpu_seconds', 0):.0f} |\n")
    path = write_results("monuseg_supervised", rows, md, scale_down=scale)
    print(md)
    print(f"results: {path}; checkpoint: {res['checkpoint']}")


if __name__ == "__main__":
    main()
