"""Pathology foundation-model ViTs as U-Net encoders on this CPU: cost per architecture and mode, and one
learning curve with few labels.

The published weights cannot be downloaded here (no hub access), so every encoder is randomly initialised at
its published architecture: the speed and memory rows are what a user with the weights gets (the weights do
not change the arithmetic); the learning curve compares a randomly initialised ViT-S with the ResNet-18
baseline, which says nothing about what UNI or Virchow2 weights buy.

    python benchmarks/vit_encoders.py --part speed                  # forward per 512 px tile, train step per mode
    python benchmarks/vit_encoders.py --part curve --steps 600      # MoNuSeg 1/16: ViT-S vs ResNet-18

Each (architecture, mode) runs in its own process (peak RSS is that process's), one after another, 2 threads.
Rows are written as they finish; a rerun skips rows already in the results file (``--fresh`` starts over).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_rows, write_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NAME = "vit_encoders"
ARCHS = ("vit_small_patch16_224", "phikon", "conch", "uni", "phikon2", "virchow2", "uni2", "hoptimus")
MODES = ("forward", "frozen", "last_n", "lora", "full")
FORWARD_TILE, TRAIN_TILE = 512, 256
#: Full fine-tuning keeps weights, gradients and two Adam moments: 16 bytes per parameter before activations.
FULL_LIMIT_GB = 8.0
COMMANDS = ("python benchmarks/vit_encoders.py --part speed --fresh; "
            "python benchmarks/vit_encoders.py --part curve --steps 600 --threads 1")


def timed(call, *, calls: int = 3, budget_s: float = 30.0) -> tuple[float, int]:
    """Median seconds of up to ``calls`` calls after the warm-up, fewer where one call alone takes ``budget_s``."""
    times = []
    while len(times) < calls and sum(times) < budget_s:
        t = time.perf_counter()
        call()
        times.append(time.perf_counter() - t)
    return statistics.median(times), len(times)


def measure(arch: str, mode: str, threads: int) -> dict:
    """One (architecture, mode) in this process: seconds per forward (512 px) or per training step (256 px)."""
    import resource

    import torch

    from pathseg.models import create_model
    from pathseg.models.vit import count_parameters, resolve_spec

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    spec = resolve_spec(arch)
    params = count_parameters(spec)
    if mode == "full" and params * 16 / 1e9 > FULL_LIMIT_GB:
        return {"params_M": params / 1e6, "skipped": f"full fine-tuning needs >= {params * 16 / 1e9:.0f} GB for "
                                                     f"weights, gradients and Adam moments; not run on this 24 GB "
                                                     f"machine (limit {FULL_LIMIT_GB:g} GB)"}
    t0 = time.perf_counter()
    model = create_model("unet", encoder=arch, num_classes=3,
                         **({} if mode == "forward" else {"mode": mode}))
    build_s = time.perf_counter() - t0
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if mode == "forward":
        model.eval()
        x = torch.rand(1, 3, FORWARD_TILE, FORWARD_TILE)
        with torch.inference_mode():
            model(x)  # warm-up
            secs, calls = timed(lambda: model(x))
    else:
        # the training step `pathseg train` runs: the supervised method's loss and its own optimiser (fused AdamW)
        from pathseg.engine.config import OptimConfig
        from pathseg.methods import METHODS

        method = METHODS.get("supervised")(model, class_names=["a", "b", "c"], max_steps=100,
                                            optim=vars(OptimConfig(name="adamw", lr=1e-4)))
        method.train()
        opt = method.configure_optimizers()["optimizer"]
        batch = {"image": torch.rand(2, 3, TRAIN_TILE, TRAIN_TILE),
                 "mask": torch.randint(0, 3, (2, TRAIN_TILE, TRAIN_TILE))}

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            method.training_losses(batch)["loss"].backward()
            opt.step()

        step()  # warm-up (optimiser state allocated)
        secs, calls = timed(step)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return {"params_M": params / 1e6, "trainable_M": trainable / 1e6, "seconds_per_call": secs, "calls": calls,
            "build_s": build_s, "peak_rss_gb": peak_gb, "patch": spec.patch_size,
            "tile": FORWARD_TILE if mode == "forward" else TRAIN_TILE, "batch": 1 if mode == "forward" else 2}


def speed(args: argparse.Namespace, rows: list[dict]) -> list[dict]:
    done = {(r["method"], r["fraction"]) for r in rows if r["dataset"] == "speed"}
    for arch in args.archs.split(","):
        for mode in MODES:
            if (arch, mode) in done:
                continue
            t = time.perf_counter()
            p = subprocess.run([sys.executable, __file__, "--measure", arch, mode, "--threads", str(args.threads)],
                               capture_output=True, text=True, timeout=1800)
            try:
                metrics = json.loads(p.stdout.strip().splitlines()[-1])
            except (IndexError, ValueError):
                metrics = {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:300]}
            rows.append({"method": arch, "dataset": "speed", "fraction": mode, "seed": 0, "metrics": metrics,
                         "seconds": time.perf_counter() - t})
            print(arch, mode, metrics, flush=True)
            write(rows)
    return rows


def curve(args: argparse.Namespace, rows: list[dict]) -> list[dict]:
    from pathseg.engine.config import load_config
    from pathseg.engine.train import train

    split = ROOT / "splits" / "monuseg" / "1-16_seed0.json"
    for label, encoder, extra in (("resnet18", "resnet18", []), ("vit_small", "vit_small_patch16_224", [])):
        if any(r["method"] == label and r["dataset"] == "monuseg" for r in rows):
            continue
        out = Path(args.work) / f"curve_{label}"
        cfg = load_config(ROOT / "configs/monuseg_supervised.yaml", [
            f"model.encoder={encoder}", f"data.split_file={split}", f"trainer.max_steps={args.steps}",
            f"trainer.val_every={args.val_every}", "trainer.seed=0", f"trainer.out={out}", "trainer.progress=false",
            f"trainer.threads={args.threads}", "data.batch_size=4", *extra])
        t = time.perf_counter()
        res = train(cfg)
        hist = json.loads((out / "metrics.json").read_text())
        hist = hist if isinstance(hist, list) else hist.get("rows", hist.get("history", []))
        rows.append({"method": label, "dataset": "monuseg", "fraction": "1/16", "seed": 0,
                     "metrics": {"final": res["metrics"], "curve": hist}, "seconds": time.perf_counter() - t})
        write(rows)
    return rows


def collect(args: argparse.Namespace, rows: list[dict]) -> list[dict]:
    """Rows for curve runs that were stopped before their last step, from their metrics.json (equal steps compare)."""
    for label in ("resnet18", "vit_small"):
        path = Path(args.work) / f"curve_{label}" / "metrics.json"
        if any(r["method"] == label and r["dataset"] == "monuseg" for r in rows) or not path.is_file():
            continue
        hist = json.loads(path.read_text())
        rows.append({"method": label, "dataset": "monuseg", "fraction": "1/16", "seed": 0,
                     "metrics": {"final": hist[-1], "curve": hist, "stopped_at": hist[-1]["step"],
                                 "planned": args.steps}, "seconds": None})
    write(rows)
    return rows


def write(rows: list[dict]) -> None:
    lines = ["# ViT foundation-model encoders on this CPU", "",
             "Random initialisation at each published architecture (the hub is out of reach here, so the published "
             "weights could not be used): the rows give the cost a user with the weights pays, not what the weights "
             "buy. U-Net decoder over a 4-block ViTDet-style pyramid, 3 classes, 2 threads, one process per row "
             f"(peak RSS is that process's). Forward: batch 1 at {FORWARD_TILE} px in inference mode. Training step: "
             f"batch 2 at {TRAIN_TILE} px, AdamW, cross-entropy; modes as `model.options.mode`. Seconds are the "
             "median of 3 calls after a warm-up (fewer once 30 s of calls are spent: `calls`), with nothing else "
             "running on the machine. `trainable` counts decoder parameters too.", "",
             "| encoder | params (M) | mode | trainable (M) | s per call | calls | peak RSS (GB) | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["dataset"] != "speed":
            continue
        m = r["metrics"]
        note = m.get("skipped") or m.get("error") or ""
        spc = f"{m['seconds_per_call']:.2f}" if "seconds_per_call" in m else "-"
        lines.append(f"| {r['method']} | {m.get('params_M', float('nan')):.0f} | {r['fraction']} | "
                     f"{m.get('trainable_M', float('nan')):.1f} | {spc} | {m.get('calls', '-')} | "
                     f"{m.get('peak_rss_gb', float('nan')):.2f} | {note} |")
    curves = [r for r in rows if r["dataset"] == "monuseg"]
    if curves:
        lines += ["", "## Learning curve: MoNuSeg, 1/16 of the training images labelled (split 1-16_seed0)", "",
                  "U-Net, `configs/monuseg_supervised.yaml` recipe, batch 4, one seed: a ViT-S **from random "
                  "initialisation** against ResNet-18 from random initialisation. Validation on the 14 test images "
                  "(no checkpoint is selected on it; the last step is reported).", "",
                  "| encoder | step | mIoU | Dice |", "|---|---|---|---|"]
        for r in curves:
            for h in r["metrics"]["curve"]:
                if "mIoU" in h:
                    lines.append(f"| {r['method']} | {h.get('step')} | {h['mIoU']:.4f} | "
                                 f"{h.get('Dice', float('nan')):.4f} |")
        partial = [r for r in curves if r["metrics"].get("stopped_at")]
        for r in partial:
            lines += ["", f"{r['method']}: stopped at step {r['metrics']['stopped_at']} of {r['metrics']['planned']} "
                          "(session time ran out); compare the rows at equal steps."]
        final = {r["method"]: r["metrics"]["curve"][-1] for r in curves if r["metrics"]["curve"]}
        if {"resnet18", "vit_small"} <= final.keys():
            a, b = final["resnet18"], final["vit_small"]
            lines += ["", f"At step {b['step']}, the random-init ViT-S is {a['mIoU'] - b['mIoU']:.3f} mIoU and "
                          f"{a['Dice'] - b['Dice']:.3f} Dice behind ResNet-18 (one seed: no interval; the gap is "
                          "larger than the step-to-step wobble of either curve, about 0.01)."]
        lines += ["", "A user with UNI/Virchow2/H-optimus weights should run the same curve with "
                  "`model.encoder=uni model.weights=/path/to/pytorch_model.bin model.options.mode=lora` (or `frozen`): "
                  "that, not this random-init row, is where the foundation model's gain would show."]
    write_results(NAME, rows, "\n".join(lines) + "\n", command_line=COMMANDS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=("speed", "curve", "collect"), default="speed")
    ap.add_argument("--archs", default=",".join(ARCHS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--val-every", type=int, default=100)
    ap.add_argument("--work", default="runs/bench_vit")
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--measure", nargs=2, metavar=("ARCH", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure, args.threads)))
        return
    rows = load_rows(NAME)
    if args.fresh:  # start this part over, keep the other part's rows
        part = {"speed": {"speed"}, "curve": {"monuseg"}, "collect": {"monuseg"}}[args.part]
        rows = [r for r in rows if r["dataset"] not in part]
    {"speed": speed, "curve": curve, "collect": collect}[args.part](args, rows)


if __name__ == "__main__":
    main()
