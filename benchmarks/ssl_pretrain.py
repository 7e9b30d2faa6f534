"""DSF-WSI on MoNuSeg 2018 by the evidence protocol (docs/evidence.md): the paper's Table IV setting, scaled down.

1. Pretraining without labels, through ``pathseg.engine.pretrain.pretrain`` (configs/ssl/bench_cpu.yaml: 2:1
   pairs, a 64 px context at 1.0 µm/px around 2x2 targets of 64 px at 0.5 µm/px), on the three slides in
   ../shared/data/slides, the 30 MoNuSeg training images and the GlaS training images (never a MoNuSeg test
   image, never a label): DSF-WSI (both branches), SimSiam on the target patches, and SimSiam on the context
   patches (the paper's baseline for HookNet: two backbones pretrained separately). ``--pretrain-steps`` steps
   (>= 1000) of ``--pretrain-batch`` contexts (>= 8), encoders snapshotted every 250 steps, losses logged.
2. Frozen-encoder probe (``pathseg.methods.ssl.probe``): for random init and every snapshot of the two target
   encoders, a linear pixel classifier on the frozen features (strides 4-32, 960 channels), fitted on the
   labelled tiles of a draw, scored on the 14 test images; 10 draws per fraction, paired by draw. Separates
   features that are poor from features that fine-tuning overwrites.
3. HookNet fine-tuning through the one driver (``pathseg.engine.train.train`` / ``evaluate``): target encoder
   and context encoder from random init, from the two SimSiam backbones, or from DSF-WSI's two branches
   (the last snapshot: no checkpoint selection), at 1% and 10% of the training *tiles* (as the authors
   sample tiles, not images), ``--seeds`` seeds (a seed fixes the tile draw and the initialisation),
   ``--ft-steps`` steps for every row; the ceiling is random init on every tile, same recipe and budget.

Tiles: each training image at 0.5 µm/px (500 px) is cut into 64 px tiles on a grid whose 128 px context
window (2:1) lies inside the image: 36 tiles an image, 1080 in all. A labelled tile is staged as its window
with labels on the tile only, and trained with ``data.context.position=center``, so every pair is the tile
and its true context. Scoring: whole test images (HookNet with its context; the probe on its stride-4 grid,
upsampled), foreground F1 (pixel Dice of nucleus) and accuracy, pooled over the 14 images.

Run as two processes on two cores; rows are appended under a lock as they finish and skipped when present:

    python benchmarks/ssl_pretrain.py --shard 0/2 &  python benchmarks/ssl_pretrain.py --shard 1/2
    python benchmarks/ssl_pretrain.py --report-only
    PATHSEG_BENCH_RESULTS=/tmp/r python benchmarks/ssl_pretrain.py --pretrain-steps 4 --snapshot-every 2 \\
        --ft-steps 2 --seeds 0 --draws 1 --work /tmp/ssl_smoke                  # smallest run
"""

from __future__ import annotations

import argparse
import csv
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
from evidence import (RowStore, by_seed, cell, claim_part, comparison, comparison_lines, fraction_label, parse_seeds,  # noqa: E402
                      pyplot, save_figure, seed_plot, shard)

NAME = "ssl_pretrain"
DATASET = "monuseg2018"
BENCH_CONFIG = ROOT / "configs/ssl/bench_cpu.yaml"
TILE, RATIO, MPP = 64, 2, 0.5  # the pretraining pair geometry (bench_cpu.yaml): 64 px targets at 0.5 µm/px, 2:1
WINDOW = TILE * RATIO
FRACTIONS = (0.01, 0.1)
INITS = ("random", "simsiam", "dsf")  # fine-tuning rows; the claim: dsf > simsiam > random, largest at 1%
PAIRS = [("random", "simsiam"), ("random", "dsf"), ("simsiam", "dsf")]
#: pretraining run -> (method.name, extra overrides, branch it exports)
PRETRAININGS = {"dsf": ("dsf", [], "target"), "simsiam": ("simsiam", [], "target"),
                "simsiam_context": ("simsiam", ["method.params.branch=context"], "context")}
LOSS_KEYS = {"dsf": "loss", "simsiam": "loss", "simsiam_context": "loss"}


def recipe(args: argparse.Namespace) -> dict[str, Any]:
    return {"pretrain_steps": args.pretrain_steps, "pretrain_batch": args.pretrain_batch,
            "snapshot_every": args.snapshot_every, "ft_steps": args.ft_steps, "ft_batch": args.ft_batch,
            "lr": args.lr, "tile": TILE, "ratio": RATIO, "mpp": MPP}


# ----------------------------------------------------------------------------------------------- data
def load_monuseg(work: Path) -> dict[str, dict[str, list]]:
    """MoNuSeg 2018 at 0.5 µm/px (x0.5): {"train"|"test": {"ids", "images", "masks"}}, cached."""
    from pathseg.data.monuseg import MONUSEG_NOMINAL_MPP, MoNuSeg
    from pathseg.methods.ssl.data import finetune_scale

    path = work / "cache" / f"monuseg_{MPP:g}um.npz"
    if path.exists():
        return np.load(path, allow_pickle=True)["data"].item()
    out = {}
    for split in ("train", "test"):
        ds = MoNuSeg(split=split, scale=finetune_scale(MONUSEG_NOMINAL_MPP, MPP))
        s = [ds[i] for i in range(len(ds))]
        out[split] = {"ids": list(ds.ids), "images": [x["image"] for x in s], "masks": [x["mask"] for x in s]}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, data=np.array(out, dtype=object))
    return out


def tile_grid(shape: tuple[int, int]) -> list[tuple[int, int]]:
    """(y, x) of every tile's top-left corner: windows of WINDOW px, stride TILE, inside the image; the tile
    sits in the middle of its window."""
    h, w = shape
    off = (WINDOW - TILE) // 2
    return [(y + off, x + off) for y in range(0, h - WINDOW + 1, TILE) for x in range(0, w - WINDOW + 1, TILE)]


def all_tiles(data: dict) -> list[str]:
    """Tile ids ``<image>_y<Y>_x<X>`` over the training images (1080 for MoNuSeg at 500 px)."""
    return [f"{i}_y{y}_x{x}" for i, img in zip(data["train"]["ids"], data["train"]["images"])
            for y, x in tile_grid(img.shape[:2])]


def parse_tile(tile: str) -> tuple[str, int, int]:
    stem, y, x = tile.rsplit("_", 2)
    return stem, int(y[1:]), int(x[1:])


def draw_tiles(tiles: list[str], fraction: float, seed: int) -> list[str]:
    """The labelled tiles of a draw: round(fraction · N) of them (at least 1), seeded."""
    if fraction >= 1:
        return list(tiles)
    k = max(1, int(round(fraction * len(tiles))))
    rng = np.random.default_rng(10_000 + seed)
    return sorted(tiles[i] for i in rng.choice(len(tiles), size=k, replace=False))


def stage(data: dict, work: Path) -> Path:
    """A ``folder`` dataset: train/ holds every tile's window with labels on the tile only (IGNORE_INDEX
    around it); test/ the whole test images. Written once."""
    from pathseg.io.files import write_image
    from pathseg.sample import IGNORE_INDEX

    root = work / "ft_data"
    if (root / ".complete").exists():
        return root
    for split in ("train", "test"):
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
    off = (WINDOW - TILE) // 2
    for i, img, msk in zip(data["train"]["ids"], data["train"]["images"], data["train"]["masks"]):
        for y, x in tile_grid(img.shape[:2]):
            wy, wx = y - off, x - off
            m = np.full((WINDOW, WINDOW), IGNORE_INDEX, np.uint8)
            m[off:off + TILE, off:off + TILE] = msk[y:y + TILE, x:x + TILE]
            write_image(root / "train" / "images" / f"{i}_y{y}_x{x}.png", img[wy:wy + WINDOW, wx:wx + WINDOW])
            write_image(root / "train" / "masks" / f"{i}_y{y}_x{x}.png", m)
    for i, img, msk in zip(data["test"]["ids"], data["test"]["images"], data["test"]["masks"]):
        write_image(root / "test" / "images" / f"{i}.png", img)
        write_image(root / "test" / "masks" / f"{i}.png", np.asarray(msk, np.uint8))
    (root / ".complete").touch()
    return root


# ------------------------------------------------------------------------------------------ pretraining
def pretrain_dir(work: Path, run: str) -> Path:
    return work / f"pretrain_{run}"


def encoder_at(work: Path, run: str, step: int | None = None) -> Path:
    """The exported encoder of ``run`` (its branch's file) at snapshot ``step`` (None: the final export)."""
    from pathseg.engine.pretrain import snapshot_dir
    from pathseg.methods.ssl.export import encoder_file

    branch = PRETRAININGS[run][2]
    d = pretrain_dir(work, run) if step is None else snapshot_dir(pretrain_dir(work, run), step)
    return d / encoder_file(branch)


def run_pretraining(run: str, args: argparse.Namespace) -> dict[str, Any]:
    from pathseg.data.base import shared_data_root
    from pathseg.data.glas import GLAS_NOMINAL_MPP
    from pathseg.data.monuseg import MONUSEG_NOMINAL_MPP
    from pathseg.engine.config import load_config
    from pathseg.engine.pretrain import pretrain

    data = shared_data_root()
    # the two slides without MPP metadata are taken as 20x (0.5 µm/px), an assumption
    sources = [str(data / "slides/CMU-1-Small-Region.svs"),
               {"path": str(data / "slides/TCGA-CR-7395-01A-01-TS1.svs"), "mpp": 0.5},
               {"path": str(data / "slides/kidney-48-5.tif"), "mpp": 0.5},
               {"path": str(data / "monuseg2018/train/images"), "mpp": MONUSEG_NOMINAL_MPP},
               {"path": str(data / "glas/train/images"), "mpp": GLAS_NOMINAL_MPP}]
    method, extra, _ = PRETRAININGS[run]
    out = pretrain_dir(Path(args.work), run)
    cfg = load_config(BENCH_CONFIG, [
        f"method.name={method}", *extra, f"trainer.max_steps={args.pretrain_steps}", f"trainer.out={out}",
        f"trainer.val_every={args.snapshot_every}", f"data.batch_size={args.pretrain_batch}", "trainer.seed=0",
        "trainer.resume=true", "trainer.log_every=10"])
    cfg.data.options["sources"] = sources
    t0 = time.time()
    res = pretrain(cfg)
    curve = loss_curve(out)
    return {"method": f"pretrain:{run}", "dataset": "unlabelled", "fraction": 0.0, "seed": 0,
            "metrics": {"loss_first": curve[0][1] if curve else None, "loss_last": curve[-1][1] if curve else None,
                        "steps": args.pretrain_steps},
            "seconds": round(time.time() - t0, 1), "pretrain_seconds": res["seconds"], "curve": curve,
            "record": json.loads(Path(res["record"]).read_text())["trained_on"]}


def loss_curve(out: Path) -> list[tuple[int, float]]:
    """(step, train/loss) from a pretraining run's logs/metrics.csv."""
    path = out / "logs" / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    pts = {}
    for r in rows:
        if r.get("train/loss") not in (None, ""):
            pts[int(float(r["step"]))] = float(r["train/loss"])
    return sorted(pts.items())


# ---------------------------------------------------------------------------------------------- probe
def probe_encoders(args: argparse.Namespace) -> list[tuple[str, str, int | None]]:
    """(label, pretraining run or "random", snapshot step) of every probed encoder."""
    steps = list(range(args.snapshot_every, args.pretrain_steps + 1, args.snapshot_every))
    return [("random", "random", None)] + [(f"{run}@{s}", run, s) for run in ("simsiam", "dsf") for s in steps]


_FEATURES: dict[str, Any] = {}


def features_of(label: str, run: str, step: int | None, data: dict, args: argparse.Namespace) -> dict[str, list]:
    """Stride-4 frozen features of every training and test image for one encoder (kept for the next draw)."""
    import torch

    from pathseg.methods.ssl.probe import dense_features
    from pathseg.models import create_model

    if label in _FEATURES:
        return _FEATURES[label]
    _FEATURES.clear()
    torch.manual_seed(0)  # random init: the same network for every draw
    weights = None if run == "random" else str(encoder_at(Path(args.work), run, step))
    model = create_model("unet", encoder="resnet18", num_classes=2, weights=weights)
    _FEATURES[label] = {s: [dense_features(model, im).half() for im in data[s]["images"]] for s in ("train", "test")}
    return _FEATURES[label]


def run_probe(label: str, run: str, step: int | None, fraction: float, draw: int, data: dict,
              args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from pathseg.methods.ssl.probe import fit_linear_probe, grid_labels, probe_predict
    from pathseg.metrics.confusion import confusion_matrix, metrics_from_confusion
    from pathseg.sample import IGNORE_INDEX

    t0 = time.time()
    feats = features_of(label, run, step, data, args)
    tiles = draw_tiles(all_tiles(data), fraction, draw)
    index = {i: k for k, i in enumerate(data["train"]["ids"])}
    xs, ys = [], []
    for t in tiles:  # the grid pixels inside each labelled tile
        stem, y, x = parse_tile(t)
        k = index[stem]
        f = feats["train"][k]
        lab = grid_labels(data["train"]["masks"][k], 4)
        gy, gx = slice(y // 4, (y + TILE) // 4), slice(x // 4, (x + TILE) // 4)
        xs.append(f[:, gy, gx].reshape(f.shape[0], -1).T.float())
        ys.append(torch.from_numpy(lab[gy, gx].reshape(-1).astype(np.int64)))
    x, y = torch.cat(xs), torch.cat(ys)
    keep = y != IGNORE_INDEX
    head = fit_linear_probe(x[keep], y[keep], num_classes=2)
    cm = np.zeros((2, 2), np.int64)
    for f, m in zip(feats["test"], data["test"]["masks"]):
        pred = probe_predict(head, f.float(), m.shape)
        cm += confusion_matrix(m, pred, 2)
    met = metrics_from_confusion(cm, ["background", "nucleus"])
    return {"method": f"probe:{label}", "dataset": DATASET, "fraction": float(fraction), "seed": draw,
            "metrics": {"F1": float(met["Dice/nucleus"]), "accuracy": float(met["accuracy"]),
                        "mIoU": float(met["mIoU"]), "train_loss": head.loss},
            "labeled_tiles": len(tiles), "encoder": label, "seconds": round(time.time() - t0, 1)}


# ---------------------------------------------------------------------------------------------- fine-tune
def run_finetune(init: str, fraction: float, seed: int, data: dict, args: argparse.Namespace) -> dict[str, Any]:
    from pathseg.engine.config import load_config
    from pathseg.engine.train import evaluate, train

    work = Path(args.work)
    root = stage(data, work)
    tiles = draw_tiles(all_tiles(data), fraction, seed)
    split = work / "ft_splits" / f"{fraction_label(fraction).replace('/', '-')}_seed{seed}.json"
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text(json.dumps({"labeled": tiles, "unlabeled": [], "test": list(data["test"]["ids"])}))
    target = {"random": None, "simsiam": encoder_at(work, "simsiam"), "dsf": encoder_at(work, "dsf")}[init]
    context = {"random": None, "simsiam": encoder_at(work, "simsiam_context"),
               "dsf": pretrain_dir(work, "dsf") / "context_encoder.safetensors"}[init]
    out = work / "ft_runs" / f"{init}_{fraction_label(fraction).replace('/', '-')}_seed{seed}"
    cfg = load_config(None, [
        "data.dataset=folder", f"data.root={root}", "data.options.class_names=[background, nucleus]",
        f"data.options.mpp={MPP}", f"data.split_file={split}", "data.val_split=test",
        f"data.batch_size={args.ft_batch}", "optim.name=adam", f"optim.lr={args.lr}", "optim.weight_decay=0.0001",
        "optim.poly_power=0.9", f"trainer.max_steps={args.ft_steps}", f"trainer.val_every={args.ft_steps}",
        f"trainer.seed={seed}", "trainer.resume=false", "trainer.progress=false", "trainer.threads=1",
        f"trainer.out={out}", "model.name=hooknet", "model.encoder=resnet18", f"model.weights={target or 'null'}",
        f"model.options.ratio={RATIO}", f"model.options.tile={TILE}",
        f"model.options.context_weights={context or 'null'}",
        f"data.context={{ratio: {RATIO}, position: center}}", "method.name=hooknet",
        "method.params={context_weight: 0.0}"])
    cfg.data.train_transforms = [{"name": "random_crop", "size": TILE}, {"name": "flip"}, {"name": "rotate90"}]
    t0 = time.time()
    res = train(cfg)
    train_s = time.time() - t0
    m = evaluate(res["checkpoint"], cfg, "test")
    return {"method": init, "dataset": DATASET, "fraction": float(fraction), "seed": seed,
            "metrics": {"F1": float(m["Dice/nucleus"]), "accuracy": float(m["accuracy"]), "mIoU": float(m["mIoU"])},
            "labeled_tiles": len(tiles), "seconds": round(time.time() - t0, 1), "train_seconds": round(train_s, 1),
            "steps": args.ft_steps}


# ---------------------------------------------------------------------------------------------- report
def markdown(result: dict[str, Any]) -> str:
    rows, rec = result["rows"], result["recipe"]
    ft = [r for r in rows if r["method"] in INITS]
    probes = [r for r in rows if r["method"].startswith("probe:")]
    pre = {r["method"].split(":", 1)[1]: r for r in rows if r["method"].startswith("pretrain:")}
    ceiling = by_seed(ft, "random", 1.0, "F1")
    n_tiles = next((r["labeled_tiles"] for r in ft if r["fraction"] == 1.0), None)
    lines = [
        "# DSF-WSI on MoNuSeg 2018: pretraining, frozen probe and HookNet fine-tuning (DSF-WSI Table IV setting, "
        "CPU scale-down)", "",
        f"Made by `{result['command']}` on {result['machine']}.", "",
        f"Pretraining (no labels; slides, MoNuSeg training and GlaS training images): ResNet-18, "
        f"{rec['pretrain_steps']} steps of {rec['pretrain_batch']} contexts (64 px at 1.0 µm/px) x 4 targets (64 px "
        f"at 0.5 µm/px), Adam 1e-3 x sqrt({rec['pretrain_batch']}/32), snapshots every {rec['snapshot_every']} "
        "steps, one thread. The paper: 4:1 pairs (16 targets), batch 32, hundreds of epochs on a GPU.",
        f"Fine-tuning: HookNet (ResNet-18 target and context encoders, 2:1, target loss only), {rec['ft_steps']} "
        f"Adam steps (lr {rec['lr']}, poly 0.9) of {rec['ft_batch']} labelled tiles (64 px, flips, turns) with their "
        "true context, for every row; the weights after the last step are scored once on the 14 official test "
        "images (no checkpoint selection). 1% / 10% = 11 / 108 of the 1080 training tiles; a seed fixes the tile "
        "draw and the initialisation. F1 = pixel Dice of the nucleus class, pooled over the test images.", "",
    ]
    if pre:
        lines += ["## Pretraining", "", "| run | steps | loss, first logged | loss, last logged | seconds |",
                  "|---|---|---|---|---|"]
        for run, r in pre.items():
            m = r["metrics"]
            first, last = (f"{m[k]:.4f}" if m[k] is not None else "-" for k in ("loss_first", "loss_last"))
            lines.append(f"| {run} | {m['steps']} | {first} | {last} | {r['pretrain_seconds']:.0f} |")
        lines += ["", "Loss curves: `ssl_pretrain_loss.png` (SimSiam's loss is the negative cosine, -1 at best; "
                  "DSF-WSI's sums its heads' terms).", ""]
    if ft:
        lines += ["## HookNet fine-tuning", "",
                  f"Ceiling (random init, all {n_tiles or 1080} tiles labelled, same recipe and budget): F1 "
                  f"{cell(list(ceiling.values()))}, {len(ceiling)} seeds.", "",
                  "| fraction | init | F1 mean (sd) | accuracy mean (sd) | below ceiling (F1) | seeds |",
                  "|---|---|---|---|---|---|"]
        cmean = statistics.fmean(ceiling.values()) if ceiling else None
        for f in FRACTIONS:
            for m in INITS:
                v = by_seed(ft, m, f, "F1")
                if not v:
                    continue
                a = by_seed(ft, m, f, "accuracy")
                gap = f"{cmean - statistics.fmean(v.values()):.4f}" if cmean is not None else ""
                lines.append(f"| {fraction_label(f)} | {m} | {cell(list(v.values()))} | {cell(list(a.values()))} | "
                             f"{gap} | {len(v)} |")
        lines += ["", "Paired differences (same seeds):", ""] + comparison_lines(ft, FRACTIONS, "F1", PAIRS)
        lines += ["", "## Claims", ""] + claims(ft)
    if probes:
        labels = sorted({r["encoder"] for r in probes}, key=lambda s: (s != "random", s.split("@")[0],
                                                                       int(s.split("@")[1]) if "@" in s else 0))
        lines += ["", "## Frozen-encoder linear probe", "",
                  "A linear pixel classifier on the frozen encoder features (strides 4, 8, 16, 32, resized to "
                  "stride 4), fitted by L-BFGS on the labelled tiles of a draw, scored on the 14 test images; "
                  "mean (sd) over the draws.", "",
                  "| encoder | " + " | ".join(f"{fraction_label(f)} F1" for f in FRACTIONS) + " | draws |",
                  "|---|" + "---|" * len(FRACTIONS) + "---|"]
        for lab in labels:
            vals = [by_seed(probes, f"probe:{lab}", f, "F1") for f in FRACTIONS]
            lines.append(f"| {lab} | " + " | ".join(cell(list(v.values())) for v in vals) + " | "
                         f"{max(len(v) for v in vals)} |")
        last = max((int(s.split("@")[1]) for s in labels if "@" in s), default=None)
        if last is not None:
            pp = [("probe:random", f"probe:simsiam@{last}"), ("probe:random", f"probe:dsf@{last}"),
                  (f"probe:simsiam@{last}", f"probe:dsf@{last}")]
            lines += ["", f"Paired by draw, final snapshot (step {last}):", ""]
            lines += comparison_lines(probes, FRACTIONS, "F1", pp)
    if result.get("notes"):
        lines += ["", "## Notes", "", result["notes"]]
    lines += ["", "Plots: `ssl_pretrain.png` (fine-tuning, one line per seed across inits; dashed: the ceiling), "
              "`ssl_pretrain_loss.png` (pretraining losses, probe F1 by snapshot)."]
    return "\n".join(lines) + "\n"


def claims(ft: list[dict[str, Any]]) -> list[str]:
    """The paper's claim, DSF-WSI > SimSiam > random with the gap largest at 1%, in the protocol's words."""
    out = []
    for f in FRACTIONS:
        parts = []
        for base, meth in (("random", "dsf"), ("simsiam", "dsf"), ("random", "simsiam")):
            if (part := claim_part(ft, f, "F1", base, meth)) is not None:
                parts.append(part)
        if parts:
            out.append(f"- {fraction_label(f)}: " + "; ".join(parts) + ".")
    g = {f: comparison(ft, f, "F1", "random", "dsf") for f in FRACTIONS}
    if all(x["n"] >= 2 for x in g.values()):
        a, b = g[FRACTIONS[0]]["mean_diff"], g[FRACTIONS[1]]["mean_diff"]
        verdict = ("does not hold (no positive gap at 1%)" if a <= 0 else
                   "holds in the means" if a > b else "does not hold")
        out.append(f"- Gap largest at 1%: dsf − random {a:+.4f} at 1% vs {b:+.4f} at 10%; **{verdict}** (each "
                   "gap's interval is above).")
    return out


def loss_plot(result: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return

    rows = result["rows"]
    pre = [r for r in rows if r["method"].startswith("pretrain:")]
    probes = [r for r in rows if r["method"].startswith("probe:")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for r in pre:
        pts = r.get("curve") or []
        if pts:
            s, v = zip(*pts)
            k = max(1, len(v) // 40)  # a running mean over ~1/40 of the run
            sm = np.convolve(v, np.ones(k) / k, mode="valid")
            axes[0].plot(s[k - 1:], sm, label=r["method"].split(":", 1)[1])
    axes[0].set_xlabel("pretraining step"), axes[0].set_ylabel("train loss (running mean)")
    axes[0].legend(fontsize=8), axes[0].grid(alpha=0.3)
    for run, style in (("simsiam", "-o"), ("dsf", "-s")):
        for f in FRACTIONS:
            pts = []
            for lab in sorted({r["encoder"] for r in probes if r["encoder"].startswith(run + "@")},
                              key=lambda s: int(s.split("@")[1])):
                v = list(by_seed(probes, f"probe:{lab}", f, "F1").values())
                if v:
                    pts.append((int(lab.split("@")[1]), statistics.fmean(v)))
            rnd = list(by_seed(probes, "probe:random", f, "F1").values())
            if rnd:
                pts = [(0, statistics.fmean(rnd))] + pts
            if pts:
                s, v = zip(*pts)
                axes[1].plot(s, v, style, ms=3, label=f"{run} {fraction_label(f)}")
    axes[1].set_xlabel("pretraining step (0 = random init)"), axes[1].set_ylabel("probe F1 (mean over draws)")
    axes[1].legend(fontsize=8), axes[1].grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def render(result: dict[str, Any], path: Path) -> None:
    from pathseg.io.files import write_text

    write_text(path.with_suffix(".md"), markdown(result))
    ft = [r for r in result["rows"] if r["method"] in INITS]
    seed_plot(ft, path.with_suffix(".png"), methods=list(INITS), fractions=list(FRACTIONS), metric="F1",
              ceiling=by_seed(ft, "random", 1.0, "F1"), title="MoNuSeg 2018, HookNet from each pretraining")
    loss_plot(result, path.with_name(path.stem + "_loss.png"))


# ---------------------------------------------------------------------------------------------- jobs
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pretrain-steps", type=int, default=1000)
    ap.add_argument("--pretrain-batch", type=int, default=8, help="contexts a step (x4 targets)")
    ap.add_argument("--snapshot-every", type=int, default=250)
    ap.add_argument("--ft-steps", type=int, default=300)
    ap.add_argument("--ft-batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seeds", default="0-5", help="fine-tuning seeds (tile draw and init)")
    ap.add_argument("--ceiling-seeds", default="0-2")
    ap.add_argument("--draws", type=int, default=10, help="label draws per fraction for the probe")
    ap.add_argument("--parts", default="pretrain,probe,finetune")
    ap.add_argument("--shard", default="0/1")
    ap.add_argument("--work", default=str(ROOT / "runs/bench/ssl_pretrain"))
    ap.add_argument("--results", type=Path, default=RESULTS / f"{NAME}.json")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    store = RowStore(args.results, {"benchmark": NAME, "command": command(), "machine": machine(),
                                    "recipe": recipe(args)})
    if args.report_only:
        render(json.loads(args.results.read_text()), args.results)
        return
    parts = set(args.parts.split(","))
    work = Path(args.work)
    data = load_monuseg(work)
    seeds, cseeds = parse_seeds(args.seeds), parse_seeds(args.ceiling_seeds)
    # jobs in an order that never waits long: random-init rows need no pretraining
    pre_jobs = [("pretrain", run) for run in PRETRAININGS] if "pretrain" in parts else []
    now, later = [], []
    if "finetune" in parts:
        now += [("finetune", "random", 1.0, s) for s in cseeds]
        now += [("finetune", "random", f, s) for f in FRACTIONS for s in seeds]
        later += [("finetune", i, f, s) for f in FRACTIONS for s in seeds for i in INITS[1:]]
    if "probe" in parts:
        for lab, run, step in probe_encoders(args):
            (now if run == "random" else later).extend(
                ("probe", lab, run, step, f, d) for f in FRACTIONS for d in range(args.draws))
    mine = shard(pre_jobs, args.shard) + shard(now, args.shard) + shard(later, args.shard)

    def key(job) -> tuple:
        if job[0] == "pretrain":
            return (f"pretrain:{job[1]}", "unlabelled", 0.0, 0)
        if job[0] == "finetune":
            return (job[1], DATASET, round(job[2], 6), job[3])
        return (f"probe:{job[1]}", DATASET, round(job[4], 6), job[5])

    def ready(job) -> bool:
        if job[0] == "probe":
            return job[2] == "random" or encoder_at(work, job[2], job[3]).exists()
        if job[0] == "finetune" and job[1] != "random":
            runs = ("dsf",) if job[1] == "dsf" else ("simsiam", "simsiam_context")
            return all(encoder_at(work, r).exists() for r in runs) and (
                job[1] != "dsf" or (pretrain_dir(work, "dsf") / "context_encoder.safetensors").exists())
        return True

    pending = [j for j in mine if not store.has(key(j))]
    while pending:
        job = next((j for j in pending if ready(j)), None)
        if job is None:
            print("waiting for the other shard's pretraining ...", flush=True)
            time.sleep(60)
            continue
        pending.remove(job)
        if store.has(key(job)):
            continue
        if job[0] == "pretrain":
            row = run_pretraining(job[1], args)
        elif job[0] == "finetune":
            row = run_finetune(job[1], job[2], job[3], data, args)
        else:
            row = run_probe(job[1], job[2], job[3], job[4], job[5], data, args)
        store.add(row, lambda result: render(result, args.results))
        m = row["metrics"]
        print(f"{row['method']} {fraction_label(row['fraction']) if row['fraction'] else ''} seed {row['seed']}: "
              + ", ".join(f"{k} {v:.4f}" for k, v in m.items() if isinstance(v, float) and not math.isnan(v))
              + f" ({row['seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
