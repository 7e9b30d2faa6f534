"""Slides per minute of whole-slide inference on Ray: a local sequential run vs 1 and 2 Ray workers.

    python benchmarks/scale.py                                  # 8 slides of 2048 px, ~5-8 min on 2 cores
    python benchmarks/scale.py --slides 2 --size 1024 --results /tmp/scale.json   # smoke test, ~1 min

What it runs, in this process (the Ray driver), one after the other on the same slides:

* ``local``: :func:`pathseg.cli.slides.predict_slides`, the local loop (one process, the model on
  all cores: ONNX Runtime with 2 threads here).
* ``ray`` with K = 1, 2 workers: a fresh local Ray instance with K CPUs (``ray.init``), K actors
  of 1 CPU each (1 model thread each, at normal priority), then the slides. The start-up (ray.init
  + actor creation with the model load) is timed apart from the slides.

Model: U-Net ResNet-18, random weights (seed 0, 3 classes; the checkpoint of
benchmarks/wsi_inference.py), exported to ONNX once beforehand so no run includes the export;
predicted at ``--mpp`` (1.0 µm/px: 2x below the slides' 0.5) in ``--tile`` px tiles without overlap,
to fit 3 x 8 slides in a few minutes on 2 cores. Slides: ``pathseg.data.synth`` pyramidal BigTIFFs
(seeds 1..N). Every Ray run's outputs are compared with the local run's, byte for byte (all files
but ``run.json``): ``identical_to_local``.

Metrics per row: ``slides_per_minute`` (the slides phase; start-up excluded), ``slides_per_minute_total``
(start-up included), ``startup_s`` (Ray: ``ray_init_s`` + ``actors_s``; local: model load and the rest
of the run outside the slides), ``per_slide_s`` (mean time one worker spends on one slide, from the run
records), ``dispatch_s_per_slide`` (slides-phase wall x workers / slides - per_slide_s: Ray's own cost
per slide). The markdown adds the fitted scaling model and a projection to 10,000 slides.
Results: benchmarks/results/scale.json and scale.md (or ``--results``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import RESULTS, command, machine  # noqa: E402


def make_slides(workdir: Path, n: int, size: int) -> list[Path]:
    from pathseg.data.synth import write_synthetic_slide

    folder = workdir / f"slides-{size}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"synth-{size}-s{i + 1}.tiff"
        if not path.exists():
            write_synthetic_slide(path, size, mpp=0.5, seed=i + 1, tile=512)
        paths.append(path)
    return paths


def model(workdir: Path, tile: int) -> Path:
    """The ONNX export of wsi_inference.py's U-Net ResNet-18 checkpoint (made once, cached)."""
    from wsi_inference import unet_checkpoint

    from pathseg.inference.onnx import cached_export

    return cached_export(unet_checkpoint(workdir), cache_dir=workdir, tile=tile)


def outputs(root: Path) -> dict[str, bytes]:
    """Every output file's bytes but the run records', with each slide's run id (a fresh one per run, written into
    its GeoJSON and composition CSV) replaced by a placeholder, so two runs of the same slides compare equal."""
    ids = {rec.parent: json.loads(rec.read_text()).get("run_id", "").encode() for rec in root.rglob("*.run.json")}
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.endswith(".run.json"):
            data, rid = p.read_bytes(), ids.get(p.parent, b"")
            out[str(p.relative_to(root))] = data.replace(rid, b"<run id>") if rid else data
    return out


def summarise(records: list[dict[str, Any]], n: int, workers: int, slides_s: float, startup_s: float) -> dict:
    done = [r for r in records if r.get("status") == "done"]
    per_slide = sum(r["timings"]["total_s"] for r in done) / max(len(done), 1)
    return {
        "slides_per_minute": round(60 * n / slides_s, 3),
        "slides_per_minute_total": round(60 * n / (slides_s + startup_s), 3),
        "startup_s": round(startup_s, 2),
        "per_slide_s": round(per_slide, 2),
        "dispatch_s_per_slide": round(slides_s * workers / n - per_slide, 2),
        "slides_s": round(slides_s, 2),
        "slides": n,
        "failed": n - len(done),
        "workers": workers,
        "tiles": sum(r["tiles"]["run"] for r in done),
    }


def run_local(slides: list[Path], onnx: Path, out: Path, cfg: dict) -> tuple[dict, float]:
    from pathseg.cli.slides import predict_slides

    t = time.perf_counter()
    recs = predict_slides(slides, onnx, out, show_progress=False, **cfg)
    wall = time.perf_counter() - t
    slides_s = sum(r["timings"]["total_s"] for r in recs if "timings" in r)
    m = summarise(recs, len(slides), 1, slides_s, wall - slides_s)
    from pathseg.inference.backends import cpu_threads

    m["threads_per_worker"] = cpu_threads()
    return m, wall


def run_ray(slides: list[Path], onnx: Path, out: Path, cfg: dict, workers: int) -> tuple[dict, float]:
    import ray

    from pathseg.inference.predictor import PredictConfig
    from pathseg.scale.ray_predict import connect, run_on_workers, start_workers, stop_workers

    t0 = time.perf_counter()
    assert connect(None, num_cpus=workers), "this process was already connected to Ray"
    t1 = time.perf_counter()
    config = PredictConfig(tile=cfg["tile"], overlap=cfg["overlap"], mpp=cfg["mpp"], batch_size=cfg["batch_size"])
    actors, _ = start_workers(onnx, out, config, workers=workers, cpus_per_worker=1)
    t2 = time.perf_counter()
    try:
        recs = run_on_workers(actors, slides, retries=0)
        t3 = time.perf_counter()
    finally:
        stop_workers(actors)
        ray.shutdown()
    m = summarise(recs, len(slides), workers, t3 - t2, t2 - t0)
    m.update(ray_init_s=round(t1 - t0, 2), actors_s=round(t2 - t1, 2), threads_per_worker=1)
    return m, time.perf_counter() - t0


def scaling_model(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """T(N, K) = startup + N * c / (K * e): c from 1 worker, e (parallel efficiency) from 2 workers."""
    by = {r["method"]: r["metrics"] for r in rows}
    one, two = by.get("ray-1-worker"), by.get("ray-2-workers")
    if not one:
        return {}
    c = 60 / one["slides_per_minute"]  # wall seconds per slide for one worker, dispatch included
    e = (two["slides_per_minute"] / (2 * one["slides_per_minute"])) if two else None
    startup = (two or one)["startup_s"]
    ks = (1, 2, 8, 32, 128)
    ideal = {k: round((startup + 10_000 * c / k) / 3600, 2) for k in ks}
    shared = {k: round((startup + 10_000 * c / (k * (e if k > 1 else 1))) / 3600, 2) for k in ks} if e else None
    return {"startup_s": round(startup, 2), "seconds_per_slide_1_worker": round(c, 2),
            "efficiency_2_workers": round(e, 3) if e else None,
            "hours_for_10000_slides_by_workers": ideal, "hours_for_10000_slides_at_measured_efficiency": shared}


def markdown(result: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        "# Slide inference on Ray: slides per minute, 1 vs 2 workers", "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}.  ",
        f"Slides: {args.slides} synthetic pyramidal BigTIFFs of {args.size} x {args.size} px at 0.5 µm/px. Model: "
        f"U-Net ResNet-18 (random weights, ONNX Runtime on CPU), {args.tile} px tiles at {args.mpp} µm/px, no "
        f"overlap, batch {args.batch_size}.", "",
        "| method | workers x threads | slides/min | slides/min incl. start-up | start-up s (ray.init + actors) "
        "| per-slide s (in a worker) | Ray cost s/slide | speed-up vs 1 worker | identical to local | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = next((r["metrics"]["slides_per_minute"] for r in result["rows"] if r["method"] == "ray-1-worker"), None)
    for r in result["rows"]:
        m = r["metrics"]
        startup = f"{m['startup_s']:.1f}" + (f" ({m['ray_init_s']:.1f} + {m['actors_s']:.1f})" if "ray_init_s" in m
                                             else " (model load, outside the slides)")
        speed = f"{m['slides_per_minute'] / base:.2f}x" if base and r["method"].startswith("ray") else ""
        ident = "" if "identical_to_local" not in m else ("yes" if m["identical_to_local"] else "**no**")
        ray_cost = "" if r["method"] == "local" else f"{m['dispatch_s_per_slide']:.2f}"
        lines.append(f"| {r['method']} | {m['workers']} x {m['threads_per_worker']} | {m['slides_per_minute']:.2f} | "
                     f"{m['slides_per_minute_total']:.2f} | {startup} | {m['per_slide_s']:.2f} | {ray_cost} | "
                     f"{speed} | {ident} | {m['load_avg']} |")
    sm = result.get("scaling_model") or {}
    if sm:
        lines += [
            "", "## Scaling model", "",
            "Total time for N slides on K workers ≈ start-up + N x c / (K x e), with c the wall seconds per slide of "
            "one worker (dispatch included) and e the parallel efficiency.", "",
            f"- start-up (ray.init + actors loading the model): {sm['startup_s']} s",
            f"- c (1 worker, 1 CPU thread, this slide size): {sm['seconds_per_slide_1_worker']} s/slide",
            f"- e measured with 2 workers on 2 cores: {sm['efficiency_2_workers']}",
            "- projection for 10,000 such slides, K workers that share nothing (own cores or GPU, e = 1), hours: "
            + ", ".join(f"K={k}: {h}" for k, h in sm["hours_for_10000_slides_by_workers"].items()),
        ]
        if sm.get("hours_for_10000_slides_at_measured_efficiency"):
            lines.append("- the same at the efficiency measured here (workers sharing 2 cores with Ray and the "
                         "driver), hours: " + ", ".join(
                             f"K={k}: {h}" for k, h in sm["hours_for_10000_slides_at_measured_efficiency"].items()))
        lines += [
            "", "Per-slide cost grows with the tissue area at the prediction resolution (tiles) and with the "
            "model; on GPUs, c is the per-slide time of one GPU worker, measured the same way with "
            "`--ray-gpus 1`.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--slides", type=int, default=8)
    p.add_argument("--size", type=int, default=2048, help="slide side in px (level 0, 0.5 µm/px)")
    p.add_argument("--mpp", type=float, default=1.0, help="prediction resolution, µm/px")
    p.add_argument("--tile", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", default="1,2", help="Ray worker counts to run")
    p.add_argument("--no-local", action="store_true", help="skip the local sequential run")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/pathseg-bench-scale"))
    p.add_argument("--results", type=Path, default=RESULTS / "scale.json")
    args = p.parse_args()

    from pathseg.io.files import write_json, write_text

    args.workdir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    slides = make_slides(args.workdir, args.slides, args.size)
    onnx = model(args.workdir, args.tile)
    print(f"{len(slides)} slides and the model ready ({time.perf_counter() - t:.0f} s)", flush=True)
    cfg = {"tile": args.tile, "overlap": 0.0, "mpp": args.mpp, "batch_size": args.batch_size}
    dataset = f"synthetic-{args.size}px-x{args.slides}"
    result: dict[str, Any] = {"benchmark": "scale", "command": command(), "machine": machine(), "rows": []}
    runs: list[tuple[str, int]] = ([] if args.no_local else [("local", 1)]) + [
        ("ray-1-worker" if k == 1 else f"ray-{k}-workers", k) for k in map(int, args.workers.split(","))]
    reference = None
    for method, k in runs:
        out = args.workdir / f"out-{method}"
        shutil.rmtree(out, ignore_errors=True)
        load0 = os.getloadavg()[0]
        if method == "local":
            metrics, wall = run_local(slides, onnx, out, cfg)
            reference = outputs(out)
        else:
            metrics, wall = run_ray(slides, onnx, out, cfg, k)
            if reference is not None:
                metrics["identical_to_local"] = outputs(out) == reference
        metrics["load_avg"] = f"{load0:.1f}-{os.getloadavg()[0]:.1f}"
        row = {"method": method, "dataset": dataset, "fraction": None, "seed": 1, "metrics": metrics,
               "seconds": round(wall, 2)}
        print(row, flush=True)
        result["rows"].append(row)
    result["scaling_model"] = scaling_model(result["rows"])
    write_json(args.results, result)
    write_text(args.results.with_suffix(".md"), markdown(result, args))
    print(f"results: {args.results} and {args.results.with_suffix('.md')}")


if __name__ == "__main__":
    main()
