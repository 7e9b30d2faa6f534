"""Whole-slide inference benchmark: pathseg against TIAToolbox and MONAI, same model, tiles and slides, interleaved.

    python benchmarks/wsi_inference.py --anchors-python /work/anchors-venv/bin/python     # the interleaved run
    python benchmarks/wsi_inference.py --plan session-options                           # ONNX Runtime options
    python benchmarks/wsi_inference.py --plan quick                                     # 4k, pathseg only

The model: a randomly initialised U-Net/ResNet-18, 3 classes (seed 0), 512 px tiles at 0.5 µm/px, no
overlap, batch 8, fp32 unless said, as many threads as cores. The slides: ``pathseg synth --slide --seed 1``
at 4096 and 8192 px (pyramidal BigTIFF, 0.5 µm/px); the 32k memory slide repeats the 4k one (JPEG q90
tiles), because rendering 1 gigapixel takes longer than the whole benchmark.

Methods (each run is a fresh process, timed from its start to its exit by this script):

* ``pathseg-onnx``: ``pathseg predict SLIDE --checkpoint unet.ckpt --backend onnx --overlap 0 --batch-size 8``,
  the command a user types (the ONNX export is in the user cache already, as on any run but the first);
* ``pathseg-torch``: the same with ``--backend torch``;
* ``pathseg-int8``: the same with ``--checkpoint unet.int8.onnx``, written beforehand by ``pathseg export-onnx
  --precision int8 --calibration synthetic-4096.tiff`` (ONNX Runtime static quantisation; the time it took is
  in the results' ``preparation``);
* ``tiatoolbox``: TIAToolbox 2.1.3 ``SemanticSegmentor`` (auto tissue mask, zarr output), same model;
* ``monai``: MONAI 1.6.1 ``sliding_window_inference`` over level 0 (read whole with tifffile), every window,
  then the label map written as a TIFF;
* ``pathseg-memory``: ``pathseg predict`` of the whole pipeline with a cheap ONNX model (16 px block means),
  for the peak-memory growth from 4k to 32k px.
* ``pathseg-before`` (``--before-root``): the ``pathseg-onnx`` command with an earlier copy of the package,
  for the stage breakdown before and after.

TIAToolbox and MONAI run in their own venv (``--anchors-python``, built as docs/anchors.md says) on a
TorchScript trace of the same model, so that venv needs no pathseg; their per-batch work is pathseg's
(uint8 -> float, normalise, channels_last, softmax).

Per row: wall seconds, peak RSS of the process tree (sampled every 20 ms, all descendants summed), tiles,
tiles/s (over the wall time), the matmul limit measured right before the run in its own process (float32
2048², best of 5, same threads) and the end-to-end fraction of it (tiles x GFLOP per tile / limit / wall
seconds), the time to the first tile out of the model (pathseg: from the run record), the stage timings
of pathseg's run record, and the load average. Runs go A B C D E per slide size and then E D C B A, so
drift of the machine falls on every method alike; rows are written as they finish (``--resume`` keeps them).
Results: benchmarks/results/wsi_inference.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TILE = 512
BATCH = 8
SEED = 1
METHODS = ("pathseg-onnx", "pathseg-openvino", "pathseg-torch", "pathseg-int8", "pathseg-openvino-int8", "tiatoolbox",
           "monai")
FP32_METHODS = ("pathseg-onnx", "pathseg-openvino")  # pathseg fp32 on an exported graph: the targets' rows
INT8_METHODS = ("pathseg-int8", "pathseg-openvino-int8")
#: the backend of each pathseg method (``pathseg predict --backend``)
BACKEND_OF = {"pathseg-torch": "torch", "pathseg-openvino": "openvino", "pathseg-openvino-int8": "openvino"}
ANCHORS = ("tiatoolbox", "monai")


# ------------------------------------------------------------------------------------------------
# inputs: slides, model, exports
# ------------------------------------------------------------------------------------------------

def pathseg_cmd() -> list[str]:
    """``pathseg`` as a user runs it (this venv's interpreter; the package from the working directory)."""
    return [sys.executable, "-m", "pathseg.cli.main"]


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc); the anchors' children have no pathseg to ask."""
    try:
        with open("/proc/self/stat") as f:
            start = float(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            return float(f.read().split()[0]) - start / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def make_slide(workdir: Path, size: int) -> Path:
    """synthetic-4k/8k: ``pathseg synth --slide --seed 1``; 32k: the 4k slide repeated (JPEG q90 tiles)."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"synthetic-{size}.tiff"
    if path.exists():
        return path
    if size <= 8192:
        subprocess.run(pathseg_cmd() + ["synth", str(path), "--slide", "--seed", str(SEED), "--size", str(size)],
                       check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        return path
    import cv2
    import numpy as np
    import tifffile

    from pathseg.io.pyramid import write_pyramid

    base = make_slide(workdir, 4096)
    with tifffile.TiffFile(base) as tif:
        block = tif.series[0].levels[0].asarray()
    mpp = 0.5
    shapes, blocks = [], [block]  # level k: the block shrunk k times (INTER_AREA), repeated to the level's size
    while True:
        n = size >> len(shapes)
        shapes.append((n, n))
        if n // 2 < 1024:
            break
        lb = blocks[-1].shape[0]
        blocks.append(cv2.resize(blocks[-1], (max(lb // 2, 1),) * 2, interpolation=cv2.INTER_AREA))

    def render(level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        b = blocks[level]
        return b[np.ix_((y + np.arange(h)) % b.shape[0], (x + np.arange(w)) % b.shape[1])]

    # the Aperio layout (no level marked reduced, a thumbnail page after level 0), as `pathseg synth --slide`: with
    # levels marked reduced behind an Aperio description, tifffile (and so pathseg) sees level 0 only
    write_pyramid(path, render, mpp=mpp, tile=TILE, shapes=shapes, channels=3, compression="jpeg",
                  compression_level=90, layout="aperio", thumbnail=render(len(shapes) - 1, 0, 0, *shapes[-1]),
                  thumbnail_description="Aperio Image Library v12.0.0 thumbnail",
                  description=f"Aperio Image Library v12.0.0 pathseg benchmark: the synthetic 4k block repeated|MPP = {mpp}")
    return path


def unet_checkpoint(workdir: Path) -> Path:
    import torch

    from pathseg.models import create_model
    from pathseg.models.checkpoint import save_model_checkpoint

    path = workdir / "unet-resnet18.ckpt"
    if not path.exists():
        torch.manual_seed(0)
        save_model_checkpoint(path, create_model("unet", encoder="resnet18", num_classes=3), ["bg", "a", "b"], mpp=0.5)
    return path


def cheap_onnx(workdir: Path) -> Path:
    """A cheap, smooth fixed model (16 px block means, brightness thresholds glass / light / dark, nearest
    upsampling) as a pathseg .onnx, so the label map has regions rather than pixel noise."""
    import torch
    from torch import nn

    from pathseg.inference.onnx import export_model_onnx

    path = workdir / "cheap.onnx"
    if path.exists():
        return path
    net = nn.Sequential(nn.AvgPool2d(16), nn.Conv2d(3, 3, 1), nn.Upsample(scale_factor=16, mode="nearest"))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[4 / 3] * 3, [0.0] * 3, [-4 / 3] * 3]).view(3, 3, 1, 1))
        net[1].bias.copy_(torch.tensor([-4.8, 0.0, -0.8]))
    info = {"model": "cheap", "encoder": "none", "num_classes": 3, "class_names": ["bg", "a", "b"],
            "colors": [[230, 230, 230], [220, 40, 60], [60, 160, 60]], "mpp": 0.5, "mean": [0.5] * 3,
            "std": [0.25] * 3}
    return export_model_onnx(net, info, path, tile=TILE)


def torchscript_model(workdir: Path) -> Path:
    """The U-Net traced to TorchScript, for the anchors' venv (which has no pathseg)."""
    import torch

    from pathseg.models.checkpoint import load_model

    path = workdir / "unet-resnet18.ts"
    if not path.exists():
        model, info = load_model(unet_checkpoint(workdir))
        with torch.inference_mode():
            ts = torch.jit.trace(model.eval(), torch.zeros(1, 3, TILE, TILE), check_trace=False)
        ts.save(str(path))
        (workdir / "unet-resnet18.json").write_text(json.dumps({"mean": info["mean"], "std": info["std"]}))
    return path


def model_gflops_per_tile(ckpt: Path) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from pathseg.models.checkpoint import load_model

    model, _ = load_model(ckpt)
    with FlopCounterMode(display=False) as fc, torch.inference_mode():
        model(torch.zeros(1, 3, TILE, TILE))
    return fc.get_total_flops() / 1e9


def matmul_gflops(threads: int | None = None, n: int = 2048, reps: int = 5) -> float:
    import torch

    torch.set_num_threads(threads or os.cpu_count() or 1)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def measure_matmul() -> float:
    """The matmul limit, in its own process (so no method's process pays for torch)."""
    out = subprocess.run([sys.executable, __file__, "--matmul"], capture_output=True, text=True, cwd=ROOT)
    return float(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------
# one run: a process, its wall time and its tree's peak RSS
# ------------------------------------------------------------------------------------------------

def _tree_rss_kb(pid: int) -> int:
    """RSS (kB) of ``pid`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/statm") as f:
                rss[int(d)] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total


def run_process(cmd: list[str], *, env: dict | None = None, cwd: Path = ROOT, timeout: float = 1800) -> dict:
    """Run ``cmd``; wall seconds from just before the process is started to its exit, peak tree RSS."""
    peak = [0]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss_kb(proc.pid))
            done.wait(0.02)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    seconds = time.perf_counter() - t
    done.set()
    th.join()
    return {"seconds": seconds, "peak_rss_mb": peak[0] / 1024, "returncode": proc.returncode, "stdout": out,
            "stderr": err}


def pathseg_run(method: str, slide: Path, workdir: Path, *, before_root: Path | None = None) -> dict:
    out = workdir / f"out-{method}-{slide.stem}"
    shutil.rmtree(out, ignore_errors=True)
    int8 = workdir / "unet-resnet18.int8.onnx"
    ckpt = {"pathseg-onnx": unet_checkpoint(workdir), "pathseg-before": unet_checkpoint(workdir),
            "pathseg-torch": unet_checkpoint(workdir), "pathseg-openvino": unet_checkpoint(workdir),
            "pathseg-int8": int8, "pathseg-openvino-int8": int8, "pathseg-memory": workdir / "cheap.onnx"}[method]
    backend = BACKEND_OF.get(method, "onnx")
    env = dict(os.environ, PATHSEG_CACHE=str(workdir / "cache"))
    if before_root is not None:
        env["PYTHONPATH"] = str(before_root)
    cmd = pathseg_cmd() + ["predict", str(slide), "--checkpoint", str(ckpt), "--out", str(out), "--tile", str(TILE),
                           "--overlap", "0", "--batch-size", str(BATCH), "--backend", backend]
    res = run_process(cmd, env=env, cwd=before_root or ROOT)
    rec_path = out / slide.stem / f"{slide.stem}.run.json"
    if res["returncode"] != 0 or not rec_path.exists():
        raise RuntimeError(f"{method} failed ({res['returncode']}): {res['stderr'][-3000:]}")
    rec = json.loads(rec_path.read_text())
    tim = rec.get("timings", {})
    agreement = label_agreement(method, out / slide.stem, slide.stem, workdir)
    shutil.rmtree(out, ignore_errors=True)
    return {**res, "tiles": rec["tiles"]["run"], "timings_s": {k: round(v, 3) for k, v in tim.items()},
            "agreement_with_onnx_fp32": agreement,
            "precision": rec.get("precision", "fp32"), "backend": rec.get("backend"),
            "first_tile_s": tim.get("first_tile_s"), "model_tiles_per_s": rec["tiles"]["run"] / tim["model_s"]
            if tim.get("model_s") else None}


def label_agreement(method: str, folder: Path, stem: str, workdir: Path) -> dict | None:
    """After the run (outside its timing): the labels of ``pathseg-onnx`` (fp32, ONNX Runtime) are kept as the
    slide's reference; another method's labels are compared with them, over all pixels and over the pixels of
    the run's tissue mask (``<stem>.tissue.png``, scaled up to the label map by nearest neighbour)."""
    import numpy as np
    import tifffile
    from PIL import Image

    labels_path, ref_path = folder / f"{stem}.labels.tif", workdir / f"reference-labels-{stem}.npy"
    if method == "pathseg-onnx":
        np.save(ref_path, tifffile.imread(labels_path))
        return None
    if method in ("pathseg-memory", "pathseg-before") or not ref_path.exists():
        return None
    got, ref = tifffile.imread(labels_path), np.load(ref_path)
    tissue = np.asarray(Image.open(folder / f"{stem}.tissue.png")) > 0
    rows = np.arange(ref.shape[0]) * tissue.shape[0] // ref.shape[0]
    cols = np.arange(ref.shape[1]) * tissue.shape[1] // ref.shape[1]
    same = got == ref
    mask = tissue[rows[:, None], cols[None, :]]
    return {"all_pixels": round(float(same.mean()), 5), "tissue_pixels": round(float(same[mask].mean()), 5),
            "tissue_fraction": round(float(mask.mean()), 4)}


def anchor_run(method: str, slide: Path, workdir: Path, python: str) -> dict:
    cmd = [python, __file__, "--anchor-child", method, "--slide", str(slide), "--workdir", str(workdir)]
    res = run_process(cmd, env=dict(os.environ, PYTHONPATH=""))
    got = next((json.loads(line[7:]) for line in res["stdout"].splitlines() if line.startswith("RESULT ")), None)
    if res["returncode"] != 0 or got is None:
        raise RuntimeError(f"{method} failed ({res['returncode']}): {res['stderr'][-3000:]}")
    return {**res, **got}


# ------------------------------------------------------------------------------------------------
# the anchors (run with the anchors venv's python; no pathseg imports)
# ------------------------------------------------------------------------------------------------

def anchor_child(args: argparse.Namespace) -> None:
    import torch

    workdir, slide = Path(args.workdir), Path(args.slide)
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    net = torch.jit.load(str(workdir / "unet-resnet18.ts")).eval()
    norm = json.loads((workdir / "unet-resnet18.json").read_text())
    mean = torch.tensor(norm["mean"]).view(1, 3, 1, 1) * 255
    std = torch.tensor(norm["std"]).view(1, 3, 1, 1) * 255
    counter = {"tiles": 0, "model_s": 0.0, "first_tile_s": None}

    def forward(x_nhwc: torch.Tensor) -> torch.Tensor:  # same per-batch work as pathseg's TorchBackend
        t = time.perf_counter()
        x = x_nhwc.to(torch.float32).permute(0, 3, 1, 2)
        x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            p = torch.softmax(net(x), 1)
        counter["tiles"] += len(p)
        counter["model_s"] += time.perf_counter() - t
        if counter["first_tile_s"] is None:
            counter["first_tile_s"] = process_age_s()
        return p

    out = workdir / f"out-{args.anchor_child}-{slide.stem}"
    shutil.rmtree(out, ignore_errors=True)
    if args.anchor_child == "tiatoolbox":
        from tiatoolbox.models.engine.io_config import IOSegmentorConfig
        from tiatoolbox.models.engine.semantic_segmentor import SemanticSegmentor
        from tiatoolbox.models.models_abc import ModelABC

        class TiaUnet(ModelABC):
            def __init__(self) -> None:
                super().__init__()
                self.net = net

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.net(x)

            @staticmethod
            def infer_batch(model, batch_data, *, device: str):
                return forward(torch.as_tensor(batch_data)).permute(0, 2, 3, 1).cpu().numpy()

        res = [{"units": "mpp", "resolution": 0.5}]
        ioconfig = IOSegmentorConfig(input_resolutions=res, output_resolutions=res, patch_input_shape=(TILE, TILE),
                                     patch_output_shape=(TILE, TILE), stride_shape=(TILE, TILE),
                                     save_resolution=res[0])
        seg = SemanticSegmentor(model=TiaUnet(), batch_size=BATCH, num_workers=0, device="cpu", verbose=False)
        seg.model.eval()
        seg.run([slide], patch_mode=False, ioconfig=ioconfig, save_dir=out, output_type="zarr", auto_get_mask=True,
                overwrite=True)
    else:  # monai
        import tifffile
        from monai.inferers import sliding_window_inference

        with tifffile.TiffFile(slide) as tif:
            image = tif.series[0].levels[0].asarray()  # (H, W, 3) uint8
        # MONAI's output buffer takes the input's dtype: float32 in (0..255), normalised per window below
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float()  # (1, 3, H, W)
        del image

        def predictor(w: torch.Tensor) -> torch.Tensor:
            return forward(w.permute(0, 2, 3, 1))

        with torch.inference_mode():
            probs = sliding_window_inference(x, roi_size=(TILE, TILE), sw_batch_size=BATCH, predictor=predictor,
                                             overlap=0.0, mode="constant", progress=False)
            labels = probs[0].argmax(0).to(torch.uint8).numpy()
        del probs
        out.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(out / f"{slide.stem}.labels.tif", labels, tile=(TILE, TILE), compression="zlib")
    shutil.rmtree(out, ignore_errors=True)
    print("RESULT " + json.dumps({"tiles": counter["tiles"], "first_tile_s": counter["first_tile_s"],
                                  "model_tiles_per_s": counter["tiles"] / counter["model_s"] if counter["model_s"]
                                  else None, "timings_s": {"model_s": round(counter["model_s"], 2)}}))


# ------------------------------------------------------------------------------------------------
# ONNX Runtime session options, model alone
# ------------------------------------------------------------------------------------------------

SESSION_VARIANTS = [
    # name, SessionSettings, batch, io_binding
    ("arena off, pattern on (before)", {"arena": False, "mem_pattern": True}, 8, False),
    ("arena on, pattern on", {"arena": True, "mem_pattern": True}, 8, False),
    ("arena on, pattern off (default)", {}, 8, False),
    ("arena off, pattern off", {"arena": False}, 8, False),
    ("default, no spinning", {"spinning": False}, 8, False),
    ("default, affinity", {"affinity": True}, 8, False),
    ("default, I/O binding", {}, 8, True),
    ("default, batch 4", {}, 4, False),
    ("default, batch 16", {}, 16, False),
    ("int8, default", {}, 8, False),
]


def session_child(args: argparse.Namespace) -> None:
    import resource

    import numpy as np

    from pathseg.inference.onnx import SessionSettings, open_session

    name, opts, batch, binding = SESSION_VARIANTS[args.variant]
    workdir = Path(args.workdir)
    model = workdir / ("unet-resnet18.int8.onnx" if name.startswith("int8") else "cache/onnx/fp32.onnx")
    session, _ = open_session(model, SessionSettings(**opts))
    x = np.random.default_rng(0).standard_normal((batch, 3, TILE, TILE)).astype(np.float32)
    name_in = session.get_inputs()[0].name
    if binding:
        io = session.io_binding()
        out = np.empty((batch, 3, TILE, TILE), np.float32)
        io.bind_cpu_input(name_in, x)
        io.bind_output("probabilities", "cpu", 0, np.float32, list(out.shape), out.ctypes.data)
        def run() -> None:
            session.run_with_iobinding(io)
    else:
        def run() -> None:
            session.run(None, {name_in: x})
    run()
    n = max(2, 24 // batch)
    t = time.perf_counter()
    for _ in range(n):
        run()
    tps = n * batch / (time.perf_counter() - t)
    print("RESULT " + json.dumps({"tiles_per_s": round(tps, 3), "peak_rss_mb": round(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


# ------------------------------------------------------------------------------------------------
# INT8 on trained models: agreement with fp32 and the change in test Dice
# ------------------------------------------------------------------------------------------------

REAL_SLIDES = ("CMU-1-Small-Region.svs", "TCGA-CR-7395-01A-01-TS1.svs", "kidney-48-5.tif")


def _study_data(kind: str) -> tuple[list, list]:
    """(train images, test samples) of the data a study model was trained on, at its training scale."""
    from pathseg.data import DATASETS

    if kind == "monuseg":
        train = [DATASETS.get("monuseg")(split="train", scale=0.5)[i]["image"] for i in range(30)]
        test = DATASETS.get("monuseg")(split="test", scale=0.5)
    else:  # the demo's synthetic tissue (pathseg.cli.demo.demo_config)
        train = [s["image"] for s in DATASETS.get("synthetic")(split="train", task="tissue", n_images=32, size=256)]
        test = DATASETS.get("synthetic")(split="test", task="tissue", n_images=32, size=256)
    return train, [test[i] for i in range(len(test))]


def _run_padded(run, image):
    """Labels of one whole image: reflect-padded to a multiple of 32, as pathseg's image prediction does."""
    import numpy as np

    h, w = image.shape[:2]
    ph, pw = -h % 32, -w % 32
    x = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="reflect")[None]
    return run(x)[0, :, :h, :w].argmax(0)


def _graph_runner(path: Path, runtime: str):
    """``run(uint8 tiles) -> probabilities`` of an exported graph in ONNX Runtime or OpenVINO, as pathseg's
    backends run it (normalisation included; stain normalisation off)."""
    from pathseg.inference.backends import OnnxBackend, OpenVinoBackend

    return {"openvino": OpenVinoBackend, "onnx": OnnxBackend}[runtime](path, stain_norm=False)


def int8_study(workdir: Path, models: list[str], runtime: str = "onnx") -> list[dict]:
    """For each ``name=checkpoint:data`` (data: monuseg | synthetic): INT8 calibrated on 24 training tiles; label
    agreement with fp32 on those tiles, over tissue pixels of the real slides in ../shared/data/slides, and on
    the test set; test Dice fp32 vs INT8; model-alone tiles/s of both. ``runtime``: what runs both graphs
    (onnx: ONNX Runtime; openvino). The quantiser's own check (``calibration.agreement``) is always ONNX
    Runtime's; ``calibration_agreement_runtime`` is the same comparison in ``runtime``."""
    import warnings

    import numpy as np

    from pathseg.data.base import shared_data_root
    from pathseg.inference.onnx import cached_export, open_session
    from pathseg.inference.quantize import QuantizeConfig, label_agreement, quantize_onnx, tissue_pixels
    from pathseg.io.slides import open_slide
    from pathseg.io.tiling import TilingConfig, grid_tiles
    from pathseg.io.tissue import detect_tissue
    from pathseg.metrics.confusion import SegmentationMetrics

    out = []
    for spec in models:
        name, rest = spec.split("=", 1)
        ckpt, kind = rest.rsplit(":", 1)
        fp32 = cached_export(Path(ckpt), cache_dir=workdir / "study", tile=TILE)
        _, info = open_session(fp32)
        train, test = _study_data(kind)
        tile = 256
        tiles = []
        for img in train:  # the top-left 256 px of each training image (tissue tiles only)
            t = np.ascontiguousarray(img[:tile, :tile, :3])
            if tissue_pixels(t[None]).mean() >= 0.5:
                tiles.append(t)
        tiles = np.stack(tiles[:24])
        t0 = time.perf_counter()
        int8, report = quantize_onnx(fp32, workdir / "study" / f"{name}.int8.onnx", tiles,
                                     config=QuantizeConfig(tiles=len(tiles)), on_low="warn",
                                     sources=[f"{kind} train, {len(tiles)} tiles of {tile} px"])
        quant_s = time.perf_counter() - t0
        rf, rq = _graph_runner(fp32, runtime), _graph_runner(int8, runtime)
        cal_runtime = label_agreement(rf(tiles).argmax(1), rq(tiles).argmax(1), tissue_pixels(tiles))
        # test set: Dice of each, agreement
        K = len(info["class_names"])
        mf, mq = SegmentationMetrics(K, info["class_names"]), SegmentationMetrics(K, info["class_names"])
        same = total = 0
        for smp in test:
            lf, lq = _run_padded(rf, smp["image"]), _run_padded(rq, smp["image"])
            mf.update(smp["mask"], lf)
            mq.update(smp["mask"], lq)
            same += int((lf == lq).sum())
            total += lf.size
        df, dq = mf.compute(), mq.compute()
        # real slides: tissue tiles at the model's MPP (0.5 when the checkpoint records none)
        mpp = float(info.get("mpp") or 0.5)
        slides = {}
        for sname in REAL_SLIDES:
            path = shared_data_root() / "slides" / sname
            if not path.exists():
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with open_slide(path, mpp_override=None if sname.startswith("CMU") else 0.5) as sl:
                    # kidney-48-5 holds one small fragment: no tile is 25% tissue, so then any tile that holds some
                    for method, least in (("saturation", 0.25), ("otsu", 0.25), ("otsu", 0.005)):
                        grid = grid_tiles(sl, TilingConfig(tile=512, overlap=0.0, mpp=mpp, min_tissue=least),
                                          tissue=detect_tissue(sl, method))
                        if grid:
                            break
                    spread = np.unique(np.linspace(0, len(grid) - 1, min(12, len(grid))).round()) if grid else []
                    pick = [grid[int(i)] for i in spread]
                    imgs = np.stack([sl.read_region(t.x0, t.y0, 512, 512, mpp=mpp) for t in pick]) if pick else None
            if imgs is None:
                continue
            x = imgs
            lf = np.concatenate([rf(x[i:i + 4]).argmax(1) for i in range(0, len(x), 4)])
            lq = np.concatenate([rq(x[i:i + 4]).argmax(1) for i in range(0, len(x), 4)])
            mask = tissue_pixels(imgs)
            if mask.mean() < 0.05:  # pale: tissue pixels by the Otsu rule of the slide's tissue detector
                from pathseg.io.tissue import OtsuTissueDetector

                mask = np.stack([OtsuTissueDetector().threshold(np.ascontiguousarray(t)) for t in imgs])
            slides[sname] = {"tiles": len(imgs), "tissue_pixels": int(mask.sum()), "tissue_method": method,
                             "min_tissue": least,
                             "agreement": round(label_agreement(lf, lq, mask), 5)}
        speed = {}
        xb = np.random.default_rng(0).integers(0, 256, (BATCH, 512, 512, 3), dtype=np.uint8)
        for label, run in (("fp32", rf), ("int8", rq)):
            run(xb)
            t = time.perf_counter()
            for _ in range(2):
                run(xb)
            speed[label] = round(2 * BATCH / (time.perf_counter() - t), 3)
        row = {"model": name, "checkpoint": str(ckpt), "data": kind, "runtime": runtime,
               "quantise_s": round(quant_s, 1), "calibration_agreement_runtime": round(cal_runtime, 5),
               "calibration": {k: report[k] for k in ("agreement", "agreement_all_pixels", "tiles", "sources",
                                                      "int8_instructions", "format")},
               "test": {"images": len(test), "Dice_fp32": round(df["Dice"], 4), "Dice_int8": round(dq["Dice"], 4),
                        "Dice_change": round(dq["Dice"] - df["Dice"], 4), "mIoU_fp32": round(df["mIoU"], 4),
                        "mIoU_int8": round(dq["mIoU"], 4), "agreement_all_pixels": round(same / total, 5)},
               "slides": slides, "model_tiles_per_s": speed, "load_avg": round(os.getloadavg()[0], 2)}
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


# ------------------------------------------------------------------------------------------------
# parent
# ------------------------------------------------------------------------------------------------

def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions(python: str | None) -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for d in ("torch", "onnxruntime", "numpy", "zarr", "tifffile"):
        try:
            out[d] = md.version(d)
        except md.PackageNotFoundError:
            pass
    if python and Path(python).exists():
        got = subprocess.run([python, "-c", "import importlib.metadata as m, json; print(json.dumps({d: m.version(d) "
                                            "for d in ('tiatoolbox', 'monai', 'torch')}))"],
                             capture_output=True, text=True)
        if got.returncode == 0:
            out["anchors"] = json.loads(got.stdout)
    return out


def prepare(workdir: Path, sizes: list[int], methods: list[str], python: str | None) -> dict:
    """Slides, checkpoint, the ONNX export (in the cache the runs use), the INT8 model, the anchors' model."""
    prep: dict = {}
    workdir.mkdir(parents=True, exist_ok=True)
    for size in sorted(set(sizes) | ({4096} if "pathseg-int8" in methods else set())):
        t = time.perf_counter()
        make_slide(workdir, size)
        prep[f"slide_{size}_s"] = round(time.perf_counter() - t, 1)
    ckpt = unet_checkpoint(workdir)
    from pathseg.inference.onnx import cached_export

    t = time.perf_counter()
    env_cache = workdir / "cache"
    os.environ["PATHSEG_CACHE"] = str(env_cache)
    fp32 = cached_export(ckpt, tile=TILE)
    link = env_cache / "onnx" / "fp32.onnx"
    if not link.exists():
        shutil.copyfile(fp32, link)
    prep["onnx_export_s"] = round(time.perf_counter() - t, 1)
    if "pathseg-int8" in methods:
        int8 = workdir / "unet-resnet18.int8.onnx"
        if not int8.exists():
            t = time.perf_counter()
            res = run_process(pathseg_cmd() + ["export-onnx", str(ckpt), "--out", str(int8), "--precision", "int8",
                                               "--calibration", str(workdir / "synthetic-4096.tiff")],
                              env=dict(os.environ))
            if res["returncode"] != 0:
                raise RuntimeError(f"INT8 export failed: {res['stderr'][-3000:]}")
            prep["int8_export_s"] = round(time.perf_counter() - t, 1)
            prep["int8_export_output"] = res["stderr"].strip()[-600:]
        from pathseg.inference.onnx import read_onnx_info

        prep["int8_calibration"] = read_onnx_info(int8).get("calibration")
    if "pathseg-memory" in methods:
        cheap_onnx(workdir)
    if any(m in ANCHORS for m in methods) and python:
        torchscript_model(workdir)
    prep["gflops_per_tile"] = round(model_gflops_per_tile(ckpt), 2)
    return prep


def plan_rows(plan: str, methods: list[str], before: bool, sizes: tuple[int, ...] = (4096, 8192),
              memory_sizes: tuple[int, ...] = (4096, 8192, 32768)) -> list[tuple[str, int, int]]:
    """(method, size, pass) in run order."""
    if plan == "quick":
        return [(m, 4096, 1) for m in ("pathseg-onnx", "pathseg-int8")]
    if plan == "memory":
        return [("pathseg-memory", s, 1) for s in (4096, 8192, 32768)]
    if plan in ("session-options", "int8-study", "openvino-streams"):
        return []
    rows: list[tuple[str, int, int]] = []
    for size in sizes:
        if before:
            rows.append(("pathseg-before", size, 1))
        rows += [(m, size, 1) for m in methods] + [(m, size, 2) for m in reversed(methods)]
    rows += [("pathseg-memory", s, 1) for s in memory_sizes]
    return rows


def parent(args: argparse.Namespace) -> None:
    from pathseg.io.files import write_json

    workdir = Path(args.workdir)
    out_json = Path(args.out)
    methods = [m for m in METHODS if not args.only or m in args.only.split(",")]
    if not (args.anchors_python and Path(args.anchors_python).exists()):
        if any(m in ANCHORS for m in methods):
            print(f"no anchors venv ({args.anchors_python}): TIAToolbox and MONAI rows are left out", flush=True)
        methods = [m for m in methods if m not in ANCHORS]
    result = json.loads(out_json.read_text()) if args.resume and out_json.exists() else {}
    rows = result.get("rows", [])
    done = {(r["method"], r["dataset"], r["pass"]) for r in rows}
    result.update({
        "benchmark": "wsi_inference",
        "command": "python benchmarks/wsi_inference.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count()},
        "versions": versions(args.anchors_python),
        "rows": rows,
    })
    if args.wait_quiet:
        waited = wait_for_quiet(args.wait_quiet, args.quiet_load)
        result["waited_for_quiet"] = waited
    sizes_arg = tuple(int(x) for x in args.sizes.split(","))
    mem_arg = tuple(int(x) for x in args.memory_sizes.split(",")) if args.memory_sizes else ()
    planned = plan_rows(args.plan, methods, bool(args.before_root), sizes_arg, mem_arg)
    sizes = sorted({size for _, size, _ in planned} | {4096})
    result["preparation"] = {**result.get("preparation", {}),
                             **prepare(workdir, sizes, methods + ["pathseg-memory", "pathseg-int8"],
                                       args.anchors_python)}
    gflops = result["preparation"]["gflops_per_tile"]
    for method, size, npass in planned:
        dataset = f"synthetic-{size // 1024}k"
        if (method, dataset, npass) in done:
            continue
        slide = make_slide(workdir, size)
        limit = measure_matmul()
        load0 = os.getloadavg()[0]
        print(f"[{dataset}] {method} pass {npass} (matmul {limit:.0f} GFLOP/s, load {load0:.2f})", flush=True)
        try:
            if method in ANCHORS:
                res = anchor_run(method, slide, workdir, args.anchors_python)
            else:
                res = pathseg_run(method, slide, workdir,
                                  before_root=Path(args.before_root) if method == "pathseg-before" else None)
        except RuntimeError as e:
            print(e, file=sys.stderr, flush=True)
            continue
        arith = res["tiles"] * gflops / limit if method != "pathseg-memory" else None
        row = {
            "method": method, "dataset": dataset, "pass": npass, "overlap": 0.0, "batch": BATCH,
            "precision": res.get("precision", "fp32"),
            "seconds": round(res["seconds"], 2), "peak_rss_mb": round(res["peak_rss_mb"], 1), "tiles": res["tiles"],
            "tiles_per_s": round(res["tiles"] / res["seconds"], 3),
            "model_tiles_per_s": None if res.get("model_tiles_per_s") is None else round(res["model_tiles_per_s"], 3),
            "matmul_gflops": round(limit, 1),
            "flops_fraction": None if arith is None else round(arith / res["seconds"], 3),
            "first_tile_s": None if res.get("first_tile_s") is None else round(res["first_tile_s"], 2),
            "agreement_with_onnx_fp32": res.get("agreement_with_onnx_fp32"),
            "timings_s": res.get("timings_s", {}),
            "load_avg_start": round(load0, 2), "load_avg_end": round(os.getloadavg()[0], 2),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
        write_json(out_json, result)
        write_markdown(out_json.with_suffix(".md"), result)
    if args.plan == "session-options":
        result["session_options"] = session_options(workdir)
    if args.plan == "int8-study":
        key = "int8_study" if args.runtime == "onnx" else f"int8_study_{args.runtime}"
        result[key] = int8_study(workdir, args.models, args.runtime)
        result[f"{key}_command"] = "python benchmarks/wsi_inference.py " + " ".join(sys.argv[1:])
    if args.plan == "openvino-streams":
        result["openvino_streams"] = openvino_streams(workdir)
        result["openvino_streams_command"] = "python benchmarks/wsi_inference.py " + " ".join(sys.argv[1:])
    write_json(out_json, result)
    write_markdown(out_json.with_suffix(".md"), result)


def openvino_streams(workdir: Path, seconds: float = 8.0) -> list[dict]:
    """OpenVINO, model alone (the fp32 U-Net export, batch 8 of 512 px): 1 stream of all threads against
    OPENVINO_STREAMS streams with the batch split between them, each alone and beside a thread that keeps a
    fifth of a core busy with numpy (20 ms of work every 100 ms: about what the tile reader, normaliser and
    stitcher take beside the model). Interleaved, two rounds, the second in reverse order."""
    import numpy as np

    from pathseg.inference.backends import OpenVinoBackend

    fp32 = workdir / "cache" / "onnx" / "fp32.onnx"
    x = np.random.default_rng(0).integers(0, 256, (BATCH, TILE, TILE, 3), dtype=np.uint8)
    backends = {streams: OpenVinoBackend(fp32, streams=streams) for streams in (1, 2)}
    prepared = backends[1].prepare(x)
    same = float(np.abs(backends[1].run(prepared) - backends[2].run(prepared)).max())
    stop, busy = threading.Event(), threading.Event()

    def noise() -> None:
        y = np.ones((3, 512, 512), np.float32)
        while not stop.is_set():
            if busy.is_set():
                t = time.perf_counter()
                while time.perf_counter() - t < 0.02:
                    y = y * 1.0001
                time.sleep(0.08)
            else:
                time.sleep(0.01)

    threading.Thread(target=noise, daemon=True).start()
    res: dict[tuple[int, bool], list[float]] = {}
    for rnd in range(2):
        order = [(st, noisy) for noisy in (False, True) for st in (1, 2)]
        for st, noisy in (order if rnd == 0 else order[::-1]):
            (busy.set if noisy else busy.clear)()
            be = backends[st]
            be.run(prepared)
            t, n = time.perf_counter(), 0
            while time.perf_counter() - t < seconds:
                be.run(prepared)
                n += BATCH
            res.setdefault((st, noisy), []).append(round(n / (time.perf_counter() - t), 3))
    stop.set()
    return [{"streams": st, "beside_busy_thread": noisy, "tiles_per_s": v, "max_abs_difference_to_1_stream": same}
            for (st, noisy), v in sorted(res.items())]


def session_options(workdir: Path) -> list[dict]:
    out = []
    for i, (name, opts, batch, binding) in enumerate(SESSION_VARIANTS):
        got = subprocess.run([sys.executable, __file__, "--session-child", str(i), "--workdir", str(workdir)],
                             capture_output=True, text=True, cwd=ROOT)
        res = next((json.loads(line[7:]) for line in got.stdout.splitlines() if line.startswith("RESULT ")), None)
        if res is None:
            print(got.stderr[-2000:], file=sys.stderr)
            continue
        row = {"variant": name, "batch": batch, "io_binding": binding, **opts, **res,
               "load_avg": round(os.getloadavg()[0], 2)}
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def wait_for_quiet(minutes: float, below: float) -> dict:
    t = time.time()
    while time.time() - t < minutes * 60:
        load = os.getloadavg()[0]
        if load < below:
            return {"quiet": True, "load": load, "waited_s": round(time.time() - t)}
        print(f"load {load:.2f} >= {below}: waiting", flush=True)
        time.sleep(60)
    return {"quiet": False, "load": os.getloadavg()[0], "waited_s": round(time.time() - t)}


# ------------------------------------------------------------------------------------------------
# results
# ------------------------------------------------------------------------------------------------

def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def summary(rows: list[dict]) -> dict:
    """Per (method, dataset): mean of the passes' seconds, peak RSS, fraction; ratios to the anchors."""
    by: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        by.setdefault((r["method"], r["dataset"]), []).append(r)
    out: dict = {}
    for (m, d), rs in by.items():
        out.setdefault(d, {})[m] = {
            "seconds": round(_mean([r["seconds"] for r in rs]), 2),
            "seconds_passes": [r["seconds"] for r in sorted(rs, key=lambda r: r["pass"])],
            "peak_rss_mb": round(max(r["peak_rss_mb"] for r in rs), 1),
            "tiles": rs[0]["tiles"],
            "flops_fraction": None if rs[0].get("flops_fraction") is None else
            round(_mean([r["flops_fraction"] for r in rs]), 3),
            "first_tile_s": None if rs[0].get("first_tile_s") is None else
            round(max(r["first_tile_s"] for r in rs), 2),
        }
    for d, ms in out.items():
        for m, v in ms.items():
            for anchor in ANCHORS:
                if anchor in ms and m not in (anchor, "pathseg-memory"):  # the memory rows run another model
                    v[f"speedup_vs_{anchor}"] = round(ms[anchor]["seconds"] / v["seconds"], 2)
    return out


STAGES = ["startup_s", "backend_load_s", "open_s", "tissue_s", "inference_s", "read_s", "stain_s", "normalise_s",
          "model_s", "stitch_s", "wait_read_s", "wait_stitch_s", "first_tile_s", "write_labels_s", "write_geojson_s",
          "write_overlay_s", "write_tissue_s", "write_composition_s", "write_s", "total_s"]


def write_markdown(path: Path, result: dict) -> None:
    rows = result["rows"]
    s = summary(rows)
    result["summary"] = s
    v = result.get("versions", {})
    lines = [
        "# Whole-slide inference benchmark", "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores; torch {v.get('torch')}, "
        f"onnxruntime {v.get('onnxruntime')}; anchors venv: {v.get('anchors', 'not run')}.  ",
        f"Quiet machine: {result.get('waited_for_quiet', 'not checked')}.", "",
        f"Model: U-Net/ResNet-18, random weights (seed 0), 3 classes, {result['preparation'].get('gflops_per_tile')} "
        f"GFLOP per 512 px tile; 512 px tiles at 0.5 µm/px, overlap 0, batch {BATCH}, as many threads as cores. "
        "Slides: `pathseg synth --slide --seed 1` (4k, 8k); 32k = the 4k slide repeated. "
        + ("Memory rows only (`--plan memory`: the cheap model, one slide after another, one pass each); their "
           "peak RSS is the measurement, their seconds are not compared with anything."
           if rows and all(r["method"] == "pathseg-memory" for r in rows) else
           "All rows come from one interleaved run (per slide: A B C D E, then E D C B A); seconds are the mean "
           "of the two passes."), "",
        "| method | slide | precision | seconds (passes) | tiles | tiles/s | peak RSS MB | fraction of matmul limit "
        "| first tile s | vs TIAToolbox | vs MONAI |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {m: i for i, m in enumerate(("pathseg-openvino", "pathseg-onnx", "pathseg-openvino-int8", "pathseg-int8",
                                         "pathseg-torch", "tiatoolbox", "monai", "pathseg-before", "pathseg-memory"))}
    for d in sorted(s, key=lambda d: int(d.split("-")[1][:-1])):
        for m in sorted(s[d], key=lambda m: order.get(m, 9)):
            e = s[d][m]
            prec = next(r["precision"] for r in rows if r["method"] == m and r["dataset"] == d)
            passes = " / ".join(f"{x:.1f}" for x in e["seconds_passes"])
            ff = "" if e["flops_fraction"] is None else f"{e['flops_fraction']:.2f}"
            ft = "" if e["first_tile_s"] is None else f"{e['first_tile_s']:.1f}"
            lines.append(f"| {m} | {d} | {prec} | {e['seconds']:.1f} ({passes}) | {e['tiles']} | "
                         f"{e['tiles'] / e['seconds']:.2f} | {e['peak_rss_mb']:.0f} | {ff} | {ft} | "
                         f"{e.get('speedup_vs_tiatoolbox', '')} | {e.get('speedup_vs_monai', '')} |")
    lines += ["", "Stage breakdown of pathseg's run records (seconds; pass 1; read/stain/stitch run on their own "
                  "threads beside the model, so they overlap it):", ""]
    stage_rows = [r for r in rows if r["method"].startswith("pathseg") and r["pass"] == 1 and r.get("timings_s")]
    if stage_rows:
        lines.append("| stage | " + " | ".join(f"{r['method']} {r['dataset']}" for r in stage_rows) + " |")
        lines.append("|---" * (len(stage_rows) + 1) + "|")
        lines.append("| wall (command start to exit) | " + " | ".join(f"{r['seconds']:.2f}" for r in stage_rows) + " |")
        lines.append("| wall - total_s (interpreter, imports, model load; exit) | " + " | ".join(
            f"{r['seconds'] - r['timings_s'].get('total_s', 0):.2f}" for r in stage_rows) + " |")
        for st in STAGES:
            if any(st in r["timings_s"] for r in stage_rows):
                lines.append(f"| {st} | " + " | ".join(
                    "" if st not in r["timings_s"] else f"{r['timings_s'][st]:.2f}" for r in stage_rows) + " |")
        def reading(t: dict) -> float:
            return t.get("inference_s", 0) - t.get("model_s", 0) - t.get("stitch_s", 0)

        lines.append("| inference_s - model_s - stitch_s (before: reading in the loop) | " + " | ".join(
            f"{reading(r['timings_s']):.2f}" if r["method"] == "pathseg-before" else "" for r in stage_rows) + " |")
    if result.get("session_options"):
        lines += ["", "ONNX Runtime session options, model alone (U-Net, 512 px, tiles/s; peak RSS of the process):",
                  "", "| variant | batch | tiles/s | peak RSS MB | load avg |", "|---|---|---|---|---|"]
        for r in result["session_options"]:
            lines.append(f"| {r['variant']} | {r['batch']} | {r['tiles_per_s']:.2f} | {r['peak_rss_mb']:.0f} | "
                         f"{r['load_avg']:.2f} |")
    if result.get("openvino_streams"):
        lines += ["", f"OpenVINO streams, model alone (U-Net fp32, batch {BATCH}, tiles/s of two interleaved rounds; "
                      "busy thread: 20 ms of numpy every 100 ms beside the model; "
                      f"`{result.get('openvino_streams_command', '')}`):", "",
                  "| streams | beside a busy thread | tiles/s (rounds) | max abs difference to 1 stream |",
                  "|---|---|---|---|"]
        for r in result["openvino_streams"]:
            lines.append(f"| {r['streams']} | {'yes' if r['beside_busy_thread'] else 'no'} | "
                         f"{' / '.join(f'{v:.2f}' for v in r['tiles_per_s'])} | "
                         f"{r['max_abs_difference_to_1_stream']:.1e} |")
    for key, runtime in (("int8_study", "ONNX Runtime"), ("int8_study_openvino", "OpenVINO")):
        if not result.get(key):
            continue
        cmd = result.get(f"{key}_command")
        lines += ["", f"INT8 on trained models, both graphs run by {runtime} (calibrated on 24 training tiles; "
                      "agreement = share of pixels labelled as by fp32; calibration agreement: the quantiser's check, "
                      f"in ONNX Runtime, and the same tiles in {runtime}; slides: tissue pixels of up to 12 tissue "
                      "tiles of each real slide in ../shared/data/slides"
                      + (f"; `{cmd}`" if cmd else "") + "):", "",
                  "| model | calibration agreement (tissue; quantiser / this runtime) | test Dice fp32 | test Dice INT8 "
                  "| change | test agreement | " + " | ".join(f"{n.split('.')[0]} agreement" for n in REAL_SLIDES) +
                  " | model tiles/s fp32 / INT8 |",
                  "|---|---|---|---|---|---|" + "---|" * len(REAL_SLIDES) + "---|"]
        for r in result[key]:
            t = r["test"]
            sl = " | ".join(f"{r['slides'][n]['agreement']:.2%}" if n in r["slides"] else "" for n in REAL_SLIDES)
            own = r.get("calibration_agreement_runtime")
            lines.append(f"| {r['model']} | {r['calibration']['agreement']:.2%}"
                         + ("" if own is None else f" / {own:.2%}") + f" | {t['Dice_fp32']:.4f} | "
                         f"{t['Dice_int8']:.4f} | {t['Dice_change']:+.4f} | {t['agreement_all_pixels']:.2%} | {sl} | "
                         f"{r['model_tiles_per_s']['fp32']:.2f} / {r['model_tiles_per_s']['int8']:.2f} |")
    agree = [r for r in rows if r.get("agreement_with_onnx_fp32")]
    if agree:
        lines += ["", "Label agreement with pathseg-onnx (fp32, ONNX Runtime) on the same slide, computed after each "
                      "run from its label map (tissue: the run's own tissue mask):", "",
                  "| method | slide | pass | precision | all pixels | tissue pixels | tissue share |", "|---|---|---|---|---|---|---|"]
        for r in sorted(agree, key=lambda r: (r["dataset"], order.get(r["method"], 9), r["pass"])):
            a = r["agreement_with_onnx_fp32"]
            lines.append(f"| {r['method']} | {r['dataset']} | {r['pass']} | {r['precision']} | {a['all_pixels']:.3%} | "
                         f"{a['tissue_pixels']:.3%} | {a['tissue_fraction']:.1%} |")
    tt = targets(result)
    if tt:
        lines += ["", "Targets of issue 18 on the 8k slide (fp32, overlap 0), computed from the rows above:", "",
                  "| target | measured | |", "|---|---|---|"]
        lines += [f"| {name} | {measured} | {'met' if ok else 'not met'} |" for name, measured, ok in tt]
    lines += ["", *result.get("notes", [])]
    path.write_text("\n".join(lines) + "\n")


def targets(result: dict) -> list[tuple[str, str, bool]]:
    """(target, what was measured, met) for each of issue 18's targets that the rows can answer, for each pathseg
    fp32 method (ONNX Runtime, OpenVINO) and each INT8 one."""
    s = summary(result["rows"])
    e8 = s.get("synthetic-8k", {})
    out: list[tuple[str, str, bool]] = []
    for m in FP32_METHODS:
        p = e8.get(m)
        if p is None:
            continue
        for anchor, need in (("tiatoolbox", 1.6), ("monai", 2.0)):
            if anchor in e8:
                r = e8[anchor]["seconds"] / p["seconds"]
                out.append((f"{m}: wall <= 1/{need:g} of {anchor}",
                            f"{p['seconds']:.1f} s vs {e8[anchor]['seconds']:.1f} s: {r:.2f}x", r >= need))
        out.append((f"{m}: end to end >= 60% of the matmul limit", f"{p['flops_fraction']:.3f}",
                    p["flops_fraction"] >= 0.6))
        out.append((f"{m}: first tile within 4 s of the command's start", f"{p['first_tile_s']:.1f} s (slowest pass)",
                    p["first_tile_s"] <= 4.0))
        out.append((f"{m}: peak RSS <= 2 GB", f"{p['peak_rss_mb']:.0f} MB", p["peak_rss_mb"] <= 2048))
    if "pathseg-torch" in e8:
        t = e8["pathseg-torch"]
        out.append(("pathseg-torch: peak RSS <= 2 GB", f"{t['peak_rss_mb']:.0f} MB", t["peak_rss_mb"] <= 2048))
    mem = {d: ms["pathseg-memory"]["peak_rss_mb"] for d, ms in s.items() if "pathseg-memory" in ms}
    if "synthetic-4k" in mem and "synthetic-32k" in mem:
        g = mem["synthetic-32k"] / mem["synthetic-4k"] - 1
        out.append(("peak RSS within +10% from 4k to 32k (memory rows)",
                    f"{mem['synthetic-4k']:.0f} -> {mem['synthetic-32k']:.0f} MB: {g:+.1%}", g <= 0.10))
    for m in INT8_METHODS:
        q = e8.get(m)
        if q is None or "tiatoolbox" not in e8:
            continue
        r = e8["tiatoolbox"]["seconds"] / q["seconds"]
        out.append((f"{m}: wall <= 1/2.5 of tiatoolbox", f"{q['seconds']:.1f} s vs {e8['tiatoolbox']['seconds']:.1f} s: "
                    f"{r:.2f}x", r >= 2.5))
        agr = [r["agreement_with_onnx_fp32"]["tissue_pixels"] for r in result["rows"]
               if r["method"] == m and r["dataset"] == "synthetic-8k" and r.get("agreement_with_onnx_fp32")]
        if agr:
            out.append((f"{m}: >= 99% label agreement with fp32 (8k slide, tissue pixels)", f"{min(agr):.2%}",
                        min(agr) >= 0.99))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", default="interleaved",
                    choices=["interleaved", "quick", "memory", "session-options", "int8-study",
                             "openvino-streams"])
    ap.add_argument("--models", nargs="*", default=[], help="int8-study: name=checkpoint:data (monuseg | synthetic)")
    ap.add_argument("--runtime", default="onnx", choices=["onnx", "openvino"], help="int8-study: what runs the graphs")
    ap.add_argument("--only", default="", help="comma-separated methods to run")
    ap.add_argument("--workdir", default="/tmp/pathseg-bench")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "wsi_inference.json"))
    ap.add_argument("--resume", action="store_true", help="keep rows already in --out and run the rest")
    ap.add_argument("--sizes", default="4096,8192", help="slide sides of the interleaved rows")
    ap.add_argument("--memory-sizes", default="4096,8192,32768", help="slide sides of the pathseg-memory rows")
    ap.add_argument("--anchors-python", default="/work/anchors-venv/bin/python",
                    help="python of the TIAToolbox + MONAI venv (docs/anchors.md)")
    ap.add_argument("--before-root", default="", help="folder holding an earlier pathseg package, for the "
                                                      "'pathseg-before' rows")
    ap.add_argument("--wait-quiet", type=float, default=0.0, help="wait up to this many minutes for a quiet machine")
    ap.add_argument("--quiet-load", type=float, default=0.7, help="1-minute load average that counts as quiet")
    ap.add_argument("--matmul", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--anchor-child", help=argparse.SUPPRESS)
    ap.add_argument("--session-child", type=int, dest="variant", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--slide", help=argparse.SUPPRESS)
    ap.add_argument("--render", action="store_true", help="rewrite the markdown from --out's JSON, run nothing")
    args = ap.parse_args()
    if args.render:
        out = Path(args.out)
        result = json.loads(out.read_text())
        write_markdown(out.with_suffix(".md"), result)
        from pathseg.io.files import write_json

        write_json(out, result)
    elif args.matmul:
        print(matmul_gflops())
    elif args.anchor_child:
        anchor_child(args)
    elif args.variant is not None:
        session_child(args)
    else:
        parent(args)


if __name__ == "__main__":
    main()
