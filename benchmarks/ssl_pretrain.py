"""Self-supervised pretraining benchmark (DSF-WSI Table IV layout), scaled down to a shared 2-core CPU.

1. Pretrain a ResNet-18 encoder without labels on real tissue -- the slides in ../shared/data/slides,
   the MoNuSeg training images and the GlaS images not held out (their labels are never read) -- with
   SimSiam (target patches only) and DSF-WSI (context + target branches, CTFM, dense stages), through
   the same code as `pathseg pretrain` (configs/ssl/bench_cpu.yaml). "random" is no pretraining. For
   HookNet (`--model hooknet`) the SimSiam baseline is two backbones pretrained separately, as in the
   paper: one on the target patches, one on the context patches (`simsiam_context`).
2. Fine-tune the same segmentation model (U-Net, ResNet-18) from each encoder on MoNuSeg (nuclei) and
   GlaS (glands), both read at the pretraining's target MPP (bench_cpu.yaml: 0.5 µm/px, so MoNuSeg x0.5
   and GlaS x1.24), with 1%, 10%, 50% of the training images labelled (pathseg.data.splits.make_split, by
   image, seeded), and score pixel F1 (foreground Dice) and accuracy on held-out images: the official
   MoNuSeg test images; for GlaS (only its training set is staged here) a fixed seeded hold-out of
   the training images, which pretraining never sees.

Resumable: pretraining resumes from its checkpoint and is skipped when its encoder exists; finished rows
are kept in results/ssl_pretrain.json and skipped. Run:

    nice -n 10 python benchmarks/ssl_pretrain.py                # everything (about 25 min on 2 shared cores)
    nice -n 10 python benchmarks/ssl_pretrain.py --seeds 0      # fewer rows
    PATHSEG_BENCH_RESULTS=/tmp/r python benchmarks/ssl_pretrain.py --datasets monuseg --seeds 0 --pretrain-steps 2 \
        --ft-steps 2 --work /tmp/ssl_smoke --fresh                  # smallest run, results under /tmp/r

Pretraining goes through the library (pathseg.engine.pretrain.pretrain), fine-tuning and scoring through the one
training driver (pathseg.engine.train.train and evaluate) on the images staged as a ``folder`` dataset. The findings prose of each table is
benchmarks/notes/<results name>.md (see benchmarks/common.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import load_rows, with_notes, write_results  # noqa: E402

NAME = "ssl_pretrain"
METHODS = ("random", "simsiam", "dsf")
FRACTIONS = (0.01, 0.1, 0.5)
GLAS_HOLDOUT = 12
MODEL_TEXT = {"unet": "U-Net/ResNet-18",
              "hooknet": "HookNet/ResNet-18 (target encoder from the export; context encoder from DSF-WSI's context "
                         "branch, or from the SimSiam baseline's second backbone, pretrained on the context patches; "
                         "2:1 context, target loss only, hook concatenated straight into the decoder)"}
BENCH_CONFIG = ROOT / "configs/ssl/bench_cpu.yaml"


def bench_pair() -> dict:
    """The pretraining pair geometry of the benchmark (configs/ssl/bench_cpu.yaml's data.options.pair)."""
    from pathseg.engine.config import load_config

    return dict(load_config(BENCH_CONFIG, []).data.options["pair"])


def finetune_scales(target_mpp: float) -> dict[str, float]:
    """Resize factor of each dataset's images so fine-tuning reads them at ``target_mpp``, as pretraining did."""
    from pathseg.data.glas import GLAS_NOMINAL_MPP
    from pathseg.data.monuseg import MONUSEG_NOMINAL_MPP
    from pathseg.methods.ssl.data import finetune_scale

    return {"monuseg": finetune_scale(MONUSEG_NOMINAL_MPP, target_mpp),
            "glas": finetune_scale(GLAS_NOMINAL_MPP, target_mpp)}


PAIR = bench_pair()
FT_MPP = float(PAIR["target_mpp"])  # fine-tuning resolution = the pretraining target resolution
HOOK_RATIO = int(round(PAIR["context_mpp"] / PAIR["target_mpp"]))  # context : target MPP of the pretraining pairs


def load_images(dataset: str, cache: Path, mpp: float = FT_MPP) -> dict[str, dict[str, list]]:
    """{"train": {"ids", "images", "masks", "mpp"}, "test": {...}} read at ``mpp`` µm/px (the pretraining's
    target MPP by default): MoNuSeg (0.25 µm/px) x0.5, GlaS (0.62 µm/px) x1.24 at 0.5 µm/px."""
    from pathseg.data.glas import GlaS
    from pathseg.data.monuseg import MoNuSeg, resize_sample_arrays
    from pathseg.data.splits import make_split

    scale = finetune_scales(mpp)[dataset]
    path = cache / f"{dataset}_{mpp:g}um.npz"
    if path.exists():
        z = np.load(path, allow_pickle=True)
        return z["data"].item()
    out: dict[str, dict[str, list]] = {}
    if dataset == "monuseg":
        for split in ("train", "test"):
            ds = MoNuSeg(split=split, scale=scale)
            s = [ds[i] for i in range(len(ds))]
            out[split] = {"ids": list(ds.ids), "images": [x["image"] for x in s], "masks": [x["mask"] for x in s],
                          "mpp": float(np.mean([x["meta"]["mpp"] for x in s]))}
    else:
        ds = GlaS(split="train")
        hold = make_split(ds.ids, GLAS_HOLDOUT / len(ds.ids), seed=1234)["labeled"]
        for split, ids in (("train", [i for i in ds.ids if i not in hold]), ("test", hold)):
            s = [ds[ds.ids.index(i)] for i in ids]
            resized = [resize_sample_arrays(x["image"], x["mask"], None, scale)[:2] for x in s]
            out[split] = {"ids": ids, "images": [r[0] for r in resized], "masks": [r[1] for r in resized],
                          "mpp": float(np.mean([x["meta"]["mpp"] for x in s])) / scale}
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(path, data=np.array(out, dtype=object))
    return out


#: pretraining runs: name -> (method.name, method.params overrides, branch whose file the run exports)
PRETRAININGS = {"simsiam": ("simsiam", [], "target"), "dsf": ("dsf", [], "target"),
                "simsiam_context": ("simsiam", ["method.params.branch=context"], "context")}


def encoder_paths(work: Path, args) -> dict[str, dict[str, str]]:
    """{method: {"target": file, ["context": file]}}: the encoders each table row fine-tunes from.

    DSF-WSI: both files of its one run. SimSiam: the target backbone's run, and for HookNet the separately
    pretrained context backbone (``simsiam_context``); never the target weights in the context branch.
    """
    from pathseg.methods.ssl.export import encoder_file

    out = {"simsiam": {"target": str(work / "pretrain_simsiam" / encoder_file("target"))},
           "dsf": {"target": str(work / "pretrain_dsf" / encoder_file("target"))}}
    if args.model == "hooknet":
        out["simsiam"]["context"] = str(work / "pretrain_simsiam_context" / encoder_file("context"))
        out["dsf"]["context"] = str(work / "pretrain_dsf" / encoder_file("context"))
    return out


def pretrain_encoders(args, work: Path, glas_train_files: list[str]) -> dict[str, dict[str, str]]:
    from pathseg.data.base import shared_data_root
    from pathseg.data.glas import GLAS_NOMINAL_MPP
    from pathseg.data.monuseg import MONUSEG_NOMINAL_MPP
    from pathseg.engine.config import load_config
    from pathseg.methods.ssl.export import encoder_file
    from pathseg.engine.pretrain import pretrain

    data = shared_data_root()
    # the two slides without MPP metadata are taken as 20x (0.5 µm/px), an assumption
    sources = [str(data / "slides/CMU-1-Small-Region.svs"),
               {"path": str(data / "slides/TCGA-CR-7395-01A-01-TS1.svs"), "mpp": 0.5},
               {"path": str(data / "slides/kidney-48-5.tif"), "mpp": 0.5},
               {"path": str(data / "monuseg2018/train/images"), "mpp": MONUSEG_NOMINAL_MPP}]
    sources += [{"path": f, "mpp": GLAS_NOMINAL_MPP} for f in glas_train_files]
    runs = ["simsiam", "dsf"] + (["simsiam_context"] if args.model == "hooknet" else [])
    for run in runs:
        method, extra, branch = PRETRAININGS[run]
        out = work / f"pretrain_{run}"
        if args.pretrain_only and run != args.pretrain_only:
            continue
        if not (out / encoder_file(branch)).exists():
            cfg = load_config(BENCH_CONFIG, [
                f"method.name={method}", *extra, f"trainer.max_steps={args.pretrain_steps}", f"trainer.out={out}",
                f"data.batch_size={args.pretrain_batch}"])
            cfg.data.options["sources"] = sources
            t0 = time.time()
            pretrain(cfg)
            print(f"pretrained {run}: {time.time() - t0:.0f} s", flush=True)
    return encoder_paths(work, args)


def stage_folder(data: dict, dataset: str, work: Path) -> Path:
    """The images and masks of ``data`` (as :func:`load_images` read them) as a ``folder`` dataset,
    ``<work>/ft_data/<dataset>/{train,test}/{images,masks}/<id>.png``, written once; returns its root."""
    from pathseg.io.files import write_image

    root = work / "ft_data" / f"{dataset}_{FT_MPP:g}um"
    done = root / ".complete"
    if done.exists():
        return root
    for split in ("train", "test"):
        d = data[split]
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for i, img, msk in zip(d["ids"], d["images"], d["masks"]):
            write_image(root / split / "images" / f"{i}.png", img)
            write_image(root / split / "masks" / f"{i}.png", np.asarray(msk, np.uint8))
    done.touch()
    return root


def fine_tune(weights: dict[str, str] | None, data: dict, labeled: list[str], seed: int, args,
              dataset: str = "monuseg") -> tuple[dict, float]:
    """Fine-tune ``args.model`` from ``weights`` (None: random init) on the labelled images through the one
    training driver (:func:`pathseg.engine.train.train`), then score the held-out images with
    :func:`pathseg.engine.train.evaluate`.

    unet: U-Net over the pretrained target encoder ``weights["target"]``, on random ``crop`` px crops.
    hooknet: HookNet with the target encoder from ``weights["target"]`` and the context encoder from
    ``weights["context"]`` (DSF-WSI's context branch, or SimSiam's context backbone), on concentric
    target/context pairs at the pretraining's ratio (``data.context``), target loss only; scored on each
    whole held-out image, as every pathseg evaluation.
    """
    import json

    from pathseg.engine.config import load_config
    from pathseg.engine.train import evaluate, train

    t0 = time.time()
    work = Path(args.work)
    root = stage_folder(data, dataset, work)
    split = work / "ft_data" / "splits" / f"{dataset}_{len(labeled)}_seed{seed}.json"
    split.parent.mkdir(parents=True, exist_ok=True)
    rest = sorted(set(data["train"]["ids"]) - set(labeled))
    split.write_text(json.dumps({"labeled": sorted(labeled), "unlabeled": rest, "test": list(data["test"]["ids"])}))
    c = args.crop
    target = None if weights is None else weights["target"]
    overrides = [
        "data.dataset=folder", f"data.root={root}", "data.options.class_names=[background, foreground]",
        f"data.options.mpp={data['train']['mpp']}", f"data.split_file={split}", "data.val_split=test",
        f"data.batch_size={args.ft_batch}", "optim.name=adam", f"optim.lr={args.lr}", "optim.weight_decay=0.0001",
        "optim.poly_power=0.9", f"trainer.max_steps={args.ft_steps}", f"trainer.val_every={args.ft_steps}",
        f"trainer.seed={seed}", "trainer.resume=false", "trainer.progress=false", "trainer.threads=1",
        f"trainer.out={work / 'ft_runs' / f'{args.model}_{dataset}_{len(labeled)}_{seed}_{time.time_ns()}'}",
        f"model.name={args.model}", "model.encoder=resnet18", f"model.weights={target or 'null'}",
    ]
    if args.model == "hooknet":
        ctx = None if weights is None else weights["context"]  # KeyError rather than target weights in the context
        overrides += [f"model.options.ratio={HOOK_RATIO}", f"model.options.tile={c}",
                      f"model.options.context_weights={ctx or 'null'}", f"data.context={{ratio: {HOOK_RATIO}}}",
                      "method.name=hooknet", "method.params={context_weight: 0.0}"]
    cfg = load_config(None, overrides)
    cfg.data.train_transforms = [{"name": "random_crop", "size": c}, {"name": "flip"}, {"name": "rotate90"}]
    res = train(cfg)
    m = evaluate(res["checkpoint"], cfg, "test")
    return {"F1": float(m["Dice/foreground"]), "accuracy": float(m["accuracy"])}, time.time() - t0


def labelled_counts(rows: list[dict], dataset: str) -> str:
    """"1, 7, 36 at 1%, 10%, 50%": the labelled images of each fraction in the rows of ``dataset``."""
    counts = {f: sorted({r.get("labeled_images", len(r.get("labeled", []))) for r in rows
                         if r["dataset"] == dataset and r["fraction"] == f}) for f in FRACTIONS}
    shown = [(f, c) for f, c in counts.items() if c]
    return (", ".join("/".join(map(str, c)) for _, c in shown) + " at "
            + ", ".join(f"{int(f * 100)}%" for f, _ in shown)) if shown else "no rows yet"


def markdown(rows: list[dict], args, pre_seconds: dict) -> str:
    from pathseg.methods.ssl.dsf import kept_targets

    title = {"unet": "U-Net", "hooknet": "HookNet"}[args.model]
    lines = [f"# Self-supervised pretraining (DSF-WSI Table IV layout), CPU scale: fine-tuning {title}", "",
             "F1 (foreground pixel Dice) and pixel accuracy on held-out images, mean ± std over the seeds run "
             "(n = seeds). Fraction = share of training images labelled.", ""]
    head = "| Pretraining | " + " | ".join(f"MoNuSeg {int(f * 100)}% F1 | acc" for f in FRACTIONS) + " | " + \
           " | ".join(f"GlaS {int(f * 100)}% F1 | acc" for f in FRACTIONS) + " |"
    lines += [head, "|---" * (1 + 4 * len(FRACTIONS)) + "|"]
    for meth in METHODS:
        cells = []
        for ds in ("monuseg", "glas"):
            for f in FRACTIONS:
                sel = [r for r in rows if r["method"] == meth and r["dataset"] == ds and r["fraction"] == f]
                for key in ("F1", "accuracy"):
                    v = np.array([r["metrics"][key] for r in sel])
                    cells.append(f"{v.mean():.3f} ± {v.std():.3f} (n={len(v)})" if len(v) else "–")
        lines.append(f"| {meth} | " + " | ".join(cells) + " |")
    lines += ["", "Ranking by mean F1 (the paper's claim: dsf > simsiam > random, gap largest at 1%):", ""]
    for ds in ("monuseg", "glas"):
        for f in FRACTIONS:
            means = {}
            for meth in METHODS:
                v = [r["metrics"]["F1"] for r in rows if (r["method"], r["dataset"], r["fraction"]) == (meth, ds, f)]
                if v:
                    means[meth] = float(np.mean(v))
            if means:
                order = " > ".join(f"{m} {means[m]:.3f}" for m in sorted(means, key=means.get, reverse=True))
                lines.append(f"- {ds} {int(f * 100)}%: {order}")
    lines += ["", "Paired by fine-tuning seed (same labelled images, same decoder init), F1 minus random's F1: mean ± std "
              "(per-seed values):", ""]
    for ds in ("monuseg", "glas"):
        for f in FRACTIONS:
            cells = []
            for meth in METHODS[1:]:
                d = []
                for seed in sorted({r["seed"] for r in rows}):
                    a = [r["metrics"]["F1"] for r in rows if (r["method"], r["dataset"], r["fraction"], r["seed"])
                         == (meth, ds, f, seed)]
                    b = [r["metrics"]["F1"] for r in rows if (r["method"], r["dataset"], r["fraction"], r["seed"])
                         == ("random", ds, f, seed)]
                    if a and b:
                        d.append(a[0] - b[0])
                if d:
                    cells.append(f"{meth} {np.mean(d):+.3f} ± {np.std(d):.3f} ({', '.join(f'{x:+.3f}' for x in d)})")
            if cells:
                lines.append(f"- {ds} {int(f * 100)}%: " + "; ".join(cells))
    lines += ["", "## Scale (everything here is far below the paper's)", "",
              f"- Pretraining: ResNet-18, {args.pretrain_steps} steps, batch {args.pretrain_batch} context patches "
              f"(64 px at 1.0 µm/px) x 4 target patches (64 px at 0.5 µm/px, 2:1, 2x2 per context), Adam 1e-3 "
              f"x sqrt({args.pretrain_batch}/32) = {1e-3 * (args.pretrain_batch / 32) ** 0.5:.2e} (the authors' "
              f"rule), 1 thread; DSF-WSI trains both branches + CTFM (mask 0.5, [context ; "
              f"{kept_targets(int(PAIR['per_side']) ** 2, 0.5)} kept targets] straight into the fusion heads) + 12 "
              "heads; SimSiam trains one head on "
              f"the same target patches (batch {4 * args.pretrain_batch})"
              + (", and a second backbone on the context patches (simsiam_context)" if args.model == "hooknet" else "")
              + f". Seconds: {pre_seconds}. "
              "The paper: 4:1 (16 targets), batch 32, hundreds of epochs over many WSIs.",
              "- Unlabelled data: 3 slides in ../shared/data/slides (two without MPP metadata, taken as 0.5 µm/px), "
              f"30 MoNuSeg training images, the {args.glas_train} GlaS training images (not the {GLAS_HOLDOUT} "
              "held out).",
              f"- Labelled images: MoNuSeg 30 training images -> 1, 3, 15 at 1%, 10%, 50%; GlaS "
              f"({args.glas_train + GLAS_HOLDOUT} images: {args.glas_train} train, {GLAS_HOLDOUT} held out) -> "
              f"{labelled_counts(rows, 'glas')}. Where two fractions give the same split, the row is one run "
              "reported twice (same_split_as).",
              f"- Fine-tuning: {MODEL_TEXT[args.model]} (same for all), {args.ft_steps} Adam steps (lr {args.lr}, poly decay 0.9), batch "
              f"{args.ft_batch} random {args.crop} px crops + flips/rot90; both datasets at {FT_MPP:g} µm/px, the "
              f"pretraining's target MPP (MoNuSeg x{finetune_scales(FT_MPP)['monuseg']:.3g}, GlaS "
              f"x{finetune_scales(FT_MPP)['glas']:.3g}). Pretraining seed 0 only; fine-tune seeds vary the labelled "
              "split and the init "
              "of the decoder (and of the encoder for random).",
              f"- Time: {sum(r['seconds'] for r in rows) / 60:.0f} min of fine-tuning rows + "
              f"{sum(pre_seconds.values()) / 60:.0f} min pretraining, wall clock of one-thread processes that ran "
              "side by side with other benchmarks on the 2 shared cores (contention included).",
              "- Evaluation: each whole held-out image through pathseg's evaluate"
              + (" (HookNet segments the whole image with its context)" if args.model == "hooknet" else "")
              + f" (MoNuSeg: 14 official test "
              f"images; GlaS: {GLAS_HOLDOUT} seeded held-out training images), pixel metrics pooled over the set.",
              ""]
    return with_notes(NAME if args.model == "unet" else f"{NAME}_hooknet", "\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--datasets", default="monuseg,glas")
    ap.add_argument("--pretrain-steps", type=int, default=500)
    ap.add_argument("--pretrain-batch", type=int, default=4)
    ap.add_argument("--ft-steps", type=int, default=300)
    ap.add_argument("--ft-batch", type=int, default=4)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--work", default=str(ROOT / "runs/bench/ssl_pretrain"))
    ap.add_argument("--name", default=NAME, help="results file: benchmarks/results/<name>.json")
    ap.add_argument("--pretrain-only", choices=tuple(PRETRAININGS), default=None,
                    help="pretrain this encoder and stop (run them in parallel, then the script without it; "
                    "simsiam_context is pretrained for --model hooknet only)")
    ap.add_argument("--model", choices=("unet", "hooknet"), default="unet",
                    help="the segmentation model fine-tuned from each encoder (hooknet: both DSF-WSI branches)")
    ap.add_argument("--merge", default="", help="comma-separated results names whose rows to take in "
                    "(e.g. the same benchmark run as parallel processes)")
    ap.add_argument("--fresh", action="store_true", help="start a new table instead of adding to the results file")
    ap.add_argument("--budget-min", type=float, default=27.0, help="stop starting new rows after this many minutes")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import pathseg.methods  # noqa: F401
    from pathseg.data.splits import make_split

    t_start = time.time()
    work = Path(args.work)
    data = {d: load_images(d, work / "cache") for d in args.datasets.split(",")}
    glas = data.get("glas") or load_images("glas", work / "cache")
    from pathseg.data.base import shared_data_root

    args.glas_train = len(glas["train"]["ids"])
    glas_files = [str(shared_data_root() / "glas/train/images" / f"{i}.bmp") for i in glas["train"]["ids"]]
    weights = pretrain_encoders(args, work, glas_files)
    if args.pretrain_only:  # e.g. the two pretrainings as two processes, then one run for the rows
        return
    import json

    from pathseg.methods.ssl.data import check_resolution

    pre_seconds = {}
    for m, files in weights.items():
        for branch, w in files.items():
            rec = json.loads(Path(w).with_name("encoder.json").read_text())
            pre_seconds[Path(w).parent.name.removeprefix("pretrain_")] = rec["seconds"]
            for ds, d in data.items():  # fine-tuning reads each dataset at the resolution the branch learned
                check_resolution(rec, d["train"]["mpp"] if branch == "target" else d["train"]["mpp"] * HOOK_RATIO,
                                 branch=branch)
    rows = [] if args.fresh else load_rows(args.name)
    if any(r.get("evaluation") != "whole image" for r in rows):  # rows scored on a centre crop, by the old loop
        print(f"{args.name}: dropping {sum(r.get('evaluation') != 'whole image' for r in rows)} rows scored on a "
              "centre crop by the earlier fine-tuning loop; they are not comparable with the driver's rows", flush=True)
        rows = [r for r in rows if r.get("evaluation") == "whole image"]
    for other in filter(None, args.merge.split(",")):
        keys = {(r["method"], r["dataset"], r["fraction"], r["seed"]) for r in rows}
        rows += [r for r in load_rows(other) if (r["method"], r["dataset"], r["fraction"], r["seed"]) not in keys]
    for r in rows:  # rows from an earlier version of this script: add the labelled ids, mark repeated splits
        if "labeled" not in r and r["dataset"] in data:
            r["labeled"] = make_split(data[r["dataset"]]["train"]["ids"], r["fraction"], r["seed"])["labeled"]
    for r in rows:
        first = min((q["fraction"] for q in rows if (q["method"], q["dataset"], q["seed"]) ==
                     (r["method"], r["dataset"], r["seed"]) and q.get("labeled") == r.get("labeled")), default=None)
        if first is not None and first < r["fraction"]:
            r["same_split_as"] = first
    done = {(r["method"], r["dataset"], r["fraction"], r["seed"]) for r in rows}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for ds, d in data.items():
            for f in FRACTIONS:
                labeled = make_split(d["train"]["ids"], f, seed)["labeled"]
                for meth in METHODS:
                    if (meth, ds, f, seed) in done:
                        continue
                    same = [r for r in rows if (r["method"], r["dataset"], r["seed"]) == (meth, ds, seed)
                            and r.get("labeled") == labeled]
                    if same:  # the same labelled images and seed: the run would be identical
                        rows.append({**same[0], "fraction": f, "same_split_as": same[0]["fraction"]})
                        write_results(args.name, rows, markdown(rows, args, pre_seconds))
                        continue
                    if (time.time() - t_start) / 60 > args.budget_min:
                        print("time budget reached; rerun to add the remaining rows", flush=True)
                        write_results(args.name, rows, markdown(rows, args, pre_seconds))
                        return
                    metrics, sec = fine_tune(None if meth == "random" else weights[meth], d, labeled, seed, args, ds)
                    rows.append({"method": meth, "dataset": ds, "fraction": f, "seed": seed, "metrics": metrics,
                                 "evaluation": "whole image",
                                 "seconds": round(sec, 1), "labeled_images": len(labeled), "labeled": labeled})
                    print(f"{meth:8s} {ds:8s} {f:<5} seed {seed}: F1 {metrics['F1']:.3f} acc "
                          f"{metrics['accuracy']:.3f} ({sec:.0f} s)", flush=True)
                    write_results(args.name, rows, markdown(rows, args, pre_seconds))
    write_results(args.name, rows, markdown(rows, args, pre_seconds))


if __name__ == "__main__":
    main()
