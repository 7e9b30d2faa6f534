"""Replay what a hostile tester does to `pathseg`, one line per case: bad files, concurrent runs, out = in,
kills mid-run, same-named slides, QuPath validity, file modes, messages instead of tracebacks.

    .venv/bin/python scripts/hostile_cases.py [--work /tmp/pathseg-hostile]

Every case runs the installed `pathseg` command in a subprocess, on temporary copies (the real slides in
../shared/data/slides are only read). Prints ``PASS|FAIL  case: what happened`` and exits 1 if any case failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "slides"
PY = sys.executable
FAILED: list[str] = []


def pathseg(*args: object, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200")
    return subprocess.run([PY, "-m", "pathseg.cli.main", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, **kw)


def report(case: str, ok: bool, detail: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'}  {case}: {' '.join(detail.split())[:220]}", flush=True)
    if not ok:
        FAILED.append(case)


def one_line(r: subprocess.CompletedProcess) -> bool:
    """A message, not a traceback."""
    return "Traceback" not in r.stdout + r.stderr


def last_error(r: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (r.stderr + r.stdout).splitlines() if "error" in ln.lower() or "failed" in ln.lower()]
    return lines[-1] if lines else (r.stderr + r.stdout).strip().splitlines()[-1:][0] if (r.stderr + r.stdout).strip() else ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/pathseg-hostile"))
    args = ap.parse_args()
    w = args.work
    shutil.rmtree(w, ignore_errors=True)
    w.mkdir(parents=True)
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch

    from pathseg.data.synth import write_synthetic_slide
    from pathseg.models.checkpoint import save_model_checkpoint
    from pathseg.io.files import write_image
    from pathseg.models import create_model

    torch.manual_seed(0)
    ckpt = save_model_checkpoint(w / "m.ckpt", create_model("unet", encoder="resnet18", num_classes=2),
                                 ["background", "tissue"], mpp=2.0)
    slide = write_synthetic_slide(w / "synth.tiff", 2048, mpp=0.5, seed=1)
    fast = ["--tile", "256", "--backend", "torch", "--overlap", "0"]
    coarse = [*fast, "--mpp", "8", "--min-tissue", "0.001"]  # real slides at 8 µm/px: a few tiles each

    # -- inputs ------------------------------------------------------------------------------------------
    r = pathseg("predict", SHARED, "--checkpoint", ckpt, "--out", w / "real", "--slide-mpp", "4", *coarse)
    n = len(list((w / "real").glob("*/*.run.json")))
    report("folder of the three real slides", r.returncode == 0 and n == 3 and "SHA256SUMS" in r.stderr,
           f"rc {r.returncode}, {n} slides done, skipped listed: {'SHA256SUMS' in r.stderr}")
    svs = w / "svs-only"
    svs.mkdir()
    for f in SHARED.glob("*.svs"):
        os.symlink(f, svs / f.name)
    r = pathseg("predict", svs, "--checkpoint", ckpt, "--out", w / "svs-out", "--slide-mpp", "4", *coarse)
    report("folder of only SVS", r.returncode == 0 and len(list((w / "svs-out").glob("*/*.run.json"))) == 2,
           f"rc {r.returncode}: {last_error(r) or 'both predicted'}")
    r = pathseg("predict", SHARED / "kidney-48-5.tif", "--checkpoint", ckpt, "--out", w / "kid", "--slide-mpp", "4",
                *coarse)
    report("kidney TIFF given --slide-mpp is a slide", (w / "kid/kidney-48-5/kidney-48-5.labels.tif").is_file(),
           f"rc {r.returncode}")
    tiles = w / "tiles"
    for i in range(3):
        write_image(tiles / f"t{i}.png", np.random.default_rng(i).integers(0, 255, (96, 96, 3), dtype=np.uint8))
    r = pathseg("predict", tiles, "--checkpoint", ckpt, "--out", w / "t-out", "--tile", "256")
    report("slide option on plain images", r.returncode == 2 and one_line(r), last_error(r))
    before = {p.name: p.read_bytes() for p in tiles.iterdir()}
    r = pathseg("predict", tiles, "--checkpoint", ckpt, "--out", tiles)
    same = before == {p.name: p.read_bytes() for p in tiles.iterdir()}
    report("--out equal to the input folder", r.returncode == 2 and same, f"inputs intact: {same}; {last_error(r)}")
    for d in ("a", "b"):
        (w / d).mkdir()
        shutil.copy(slide, w / d / "x.tiff")
    r = pathseg("predict", w / "a/x.tiff", w / "b/x.tiff", "--checkpoint", ckpt, "--out", w / "ab", *fast)
    both = sorted(p.name for p in (w / "ab").iterdir())
    report("two slides of one name", r.returncode == 0 and both == ["a-x", "b-x"], f"output folders {both}")

    # -- bad files ---------------------------------------------------------------------------------------
    bad = w / "bad"
    bad.mkdir()
    shutil.copy(slide, bad / "good.tiff")
    (bad / "empty.svs").write_bytes(b"")
    (bad / "garbage.svs").write_bytes(os.urandom(4096))
    data = slide.read_bytes()
    (bad / "truncated.tiff").write_bytes(data[: len(data) // 3])
    r = pathseg("predict", bad, "--checkpoint", ckpt, "--out", w / "bad-out", *fast)
    done = json.loads((w / "bad-out/good/good.run.json").read_text())["status"] if (w / "bad-out/good").is_dir() else "-"
    report("empty, garbage and truncated slides beside a good one", r.returncode == 1 and done == "done" and one_line(r),
           f"rc {r.returncode}, good slide {done}, failures: {r.stderr.count('failed ')}")
    (w / "junk.ckpt").write_bytes(b"not a checkpoint")
    r = pathseg("predict", slide, "--checkpoint", w / "junk.ckpt", "--out", w / "junk-out")
    report("garbage checkpoint", r.returncode == 2 and one_line(r), last_error(r))
    r = pathseg("predict", slide, "--checkpoint", w / "typo.ckpt", "--out", w / "typo-out")
    report("mistyped --checkpoint on a slide", r.returncode == 2 and one_line(r) and not (w / "typo-out").exists(),
           f"out folder created: {(w / 'typo-out').exists()}; {last_error(r)}")
    r = pathseg("predict", tiles / "t0.png", "--checkpoint", ckpt, "--out", tiles / "t1.png")
    report("a file as --out", r.returncode == 2 and one_line(r), last_error(r))
    r = pathseg("export-onnx", ckpt, "--out", w)
    report("export-onnx --out FOLDER", r.returncode == 0 and (w / "m.onnx").is_file(), f"rc {r.returncode}")
    r = pathseg("predict", tiles, "--checkpoint", w / "m.onnx", "--out", w / "onnx-out")
    report("an exported .onnx on images", r.returncode == 0 and (w / "onnx-out/t0.png").is_file(), f"rc {r.returncode}")

    # -- concurrency, interruption, records ---------------------------------------------------------------
    cmd = [PY, "-m", "pathseg.cli.main", "predict", str(slide), "--checkpoint", str(ckpt), "--out", str(w / "cc"),
           "--mpp", "1", *fast]
    env = dict(os.environ, OMP_NUM_THREADS="1", COLUMNS="200")
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    refused = any("another pathseg run" in o for o in outs)
    skipped = any("already done" in o for o in outs)
    report("two runs at once on one --out", refused or skipped,
           f"exit codes {[p.returncode for p in procs]}; second run {'refused' if refused else 'skipped'}")

    # a 4096 px slide at 0.5 µm/px: 256 tiles, so resume checkpoints (every 64 tiles) come before the end
    big = write_synthetic_slide(w / "big.tiff", 4096, mpp=0.5, seed=2)
    cmd = [PY, "-m", "pathseg.cli.main", "predict", str(big), "--checkpoint", str(ckpt), "--out", str(w / "cc"),
           "--mpp", "0.5", *fast]
    slide = big
    p = subprocess.Popen(cmd[:-2] + ["--out", str(w / "kill"), "--overlap", "0"], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=env)
    work = w / "kill" / slide.stem / f".{slide.stem}.work"
    t = time.time()

    def done_tiles() -> int:
        try:
            return int(json.loads((work / "stitch.zarr.progress.json").read_text())["n_done"])
        except (OSError, ValueError, KeyError):
            return 0

    while done_tiles() < 64 and time.time() - t < 600 and p.poll() is None:
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    r = pathseg(*cmd[3:-2], "--out", w / "kill", "--overlap", "0")
    ref = pathseg(*cmd[3:-2], "--out", w / "ref", "--overlap", "0")
    import tifffile

    def labels(root: Path):
        with tifffile.TiffFile(root / slide.stem / f"{slide.stem}.labels.tif") as tif:
            return tif.series[0].levels[0].asarray()

    rec = json.loads((w / "kill" / slide.stem / f"{slide.stem}.run.json").read_text())
    equal = ref.returncode == 0 and bool((labels(w / "kill") == labels(w / "ref")).all())
    tmp_left = [q.name for q in (w / "kill" / slide.stem).iterdir() if ".tmp" in q.name or q.name.endswith(".lock")]
    report("SIGKILL mid-slide, then the same command", r.returncode == 0 and rec["tiles"]["resumed"] and equal
           and not tmp_left, f"resumed {rec['tiles']['resumed']}, identical to one run {equal}, left over {tmp_left}")

    p = subprocess.Popen(cmd[:-2] + ["--out", str(w / "kill"), "--overlap", "0.5", "--overwrite"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    t = time.time()
    record = w / "kill" / slide.stem / f"{slide.stem}.run.json"
    while record.exists() and time.time() - t < 120:
        time.sleep(0.05)
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    p.wait()
    r = pathseg(*cmd[3:-2], "--out", w / "kill", "--overlap", "0")
    rec = json.loads(record.read_text()) if record.exists() else {}
    report("interrupted rerun with other settings, then the first settings",
           rec.get("config", {}).get("overlap") == 0.0 and "already done" not in r.stderr,
           f"rc of the interrupted run {p.returncode}; rerun recomputed: {'already done' not in r.stderr}")

    modes = {oct(q.stat().st_mode & 0o777) for q in (w / "ref" / slide.stem).iterdir() if q.is_file()}
    report("file modes under umask 022", modes == {"0o644"}, f"modes {sorted(modes)}")

    from shapely.geometry import shape

    # a model that splits CMU-1-Small-Region about in half (its class-1 bias shifted by the median logit gap), so
    # the GeoJSON has ragged real-tissue regions to polygonise
    from pathseg.io.files import read_image
    from pathseg.models.checkpoint import load_model
    from pathseg.models.predict import predict_logits, to_model_input

    model, _ = load_model(ckpt)
    thumb = read_image(SHARED / "CMU-1-Small-Region.svs")[::16, ::16]
    with torch.no_grad():
        logits = predict_logits(model.eval(), to_model_input(thumb))
        model.classifier.bias[1] += (logits[0, 0] - logits[0, 1]).median()
    half = save_model_checkpoint(w / "half.ckpt", model, ["background", "tissue"], mpp=2.0)
    r = pathseg("predict", SHARED / "CMU-1-Small-Region.svs", "--checkpoint", half, "--out", w / "geo", *coarse,
                "--min-area", "0")
    gj = json.loads((w / "geo/CMU-1-Small-Region/CMU-1-Small-Region.geojson").read_text())
    geoms = [shape(f["geometry"]) for f in gj["features"]]
    bad_g = sum(not g.is_valid or g.is_empty or g.area == 0 for g in geoms)
    report("GeoJSON of CMU-1-Small-Region", len(geoms) > 0 and bad_g == 0,
           f"{len(geoms)} features, {bad_g} invalid or empty")

    # -- training and small commands (messages, not tracebacks) ----------------------------------------------
    base = ["train", "data.dataset=synthetic", "data.options={task: tissue, n_images: 4, size: 64}",
            "data.batch_size=2", "trainer.max_steps=2", "trainer.val_every=2", f"trainer.out={w / 'run'}"]
    for case, extra in (("data.options typo", ["data.options.scael=2"]), ("optim.lr=-1", ["optim.lr=-1"]),
                        ("trainer.max_steps=0", ["trainer.max_steps=0"])):
        r = pathseg(*base, *extra)
        report(case, r.returncode == 2 and one_line(r), last_error(r))
    r = pathseg("splits", "monuseg", "--seeds", "a", "--out", w / "splits")
    report("splits --seeds a", r.returncode == 2 and one_line(r), last_error(r))
    r = pathseg("--version")
    report("pathseg --version", r.returncode == 0 and r.stdout.strip() != "", r.stdout.strip())
    print(f"{len(FAILED)} failed" + (f": {', '.join(FAILED)}" if FAILED else ""))
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
