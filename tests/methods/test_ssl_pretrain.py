"""``pretrain`` end to end on a synthetic slide (a few steps): snapshots, logged terms, the lr rule, SimSiam's two
backbones feeding HookNet; and the benchmark reading each dataset at the pretraining resolution."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pathseg.data.synth import write_synthetic_slide
from pathseg.engine.config import load_config
from pathseg.errors import ConfigError
from pathseg.engine.pretrain import pretrain

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
PAIR = ("{context_size: 32, context_mpp: 1.0, target_size: 32, target_mpp: 0.5, per_side: 2, min_tissue: 0.0}")


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    return write_synthetic_slide(tmp_path_factory.mktemp("slide") / "slide.tif", 512, mpp=0.5, seed=0)


def run(slide, out, method, steps, every=1, params="{}"):
    cfg = load_config(None, [
        f"method.name={method}", f"method.params={params}", f"data.options={{sources: [{slide}], pair: {PAIR}}}",
        "data.batch_size=2", "data.workers=0", "model.encoder=resnet18", "optim.name=adam", "optim.lr=0.001",
        "optim.poly_power=0.0", f"trainer.max_steps={steps}", f"trainer.val_every={every}", "trainer.log_every=1",
        "trainer.threads=1", "trainer.progress=false", "trainer.seed=0", f"trainer.out={out}"])
    return pretrain(cfg)


def rows(out):
    with open(Path(out) / "logs" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_pretrain_keeps_snapshots_logs_every_term_and_runs_at_the_scaled_lr(slide, tmp_path):
    out = tmp_path / "dsf"
    with pytest.warns(UserWarning, match="fewer than 8 samples"):  # 2 pairs: the context/fusion heads see 2
        run(slide, out, "dsf", steps=4, every=2)
    snaps = {s: out / "checkpoints" / f"step_{s:06d}" for s in (2, 4)}
    for s, d in snaps.items():
        assert (d / "encoder.safetensors").is_file() and (d / "context_encoder.safetensors").is_file()
        assert json.loads((d / "encoder.json").read_text())["steps"] == s
    w2, w4 = load_file(str(snaps[2] / "encoder.safetensors")), load_file(str(snaps[4] / "encoder.safetensors"))
    final = load_file(str(out / "encoder.safetensors"))
    assert not torch.equal(w2["conv1.weight"], w4["conv1.weight"])  # two points of the run, not one file twice
    assert all(torch.equal(final[k], w4[k]) for k in final)  # the last snapshot is the final export
    assert not (out / "checkpoints" / "step_000001").exists() and not (out / "checkpoints" / "step_000003").exists()

    log = rows(out)
    head = set(log[0])
    for br in ("context", "target", "fusion"):
        assert f"train/loss/{br}" in head
        for s in range(1, 5):
            assert {f"train/loss/{br}/stage{s}", f"train/spread/{br}/stage{s}"} <= head
    spreads = [float(r["train/spread/fusion/stage4"]) for r in log if r.get("train/spread/fusion/stage4")]
    assert len(spreads) == 4 and all(0.0 <= v <= 1.0 for v in spreads)
    lrs = [float(r["lr"]) for r in log if r.get("lr")]
    assert len(lrs) == 4 and lrs == pytest.approx([1e-3 * math.sqrt(2 / 32)] * 4, rel=1e-6)  # 2.5e-4, B = 2 pairs
    rec = json.loads((out / "encoder.json").read_text())
    assert rec["lr"]["lr"] == pytest.approx(2.5e-4) and rec["lr"]["global_batch"] == 2 and rec["lr"]["base"] == 1e-3


@pytest.mark.filterwarnings("ignore:.*fewer than 8 samples")  # 2 context patches a step, on purpose
def test_simsiam_baseline_pretrains_a_context_backbone_that_hooknet_loads_in_its_context_branch(slide, tmp_path):
    from pathseg.models import create_model

    t = run(slide, tmp_path / "simsiam", "simsiam", steps=1)
    c = run(slide, tmp_path / "simsiam_context", "simsiam", steps=1, params="{branch: context}")
    assert Path(t["weights"]).name == "encoder.safetensors" and set(t["paths"]) == {"target", "record"}
    assert set(c["paths"]) == {"context", "record"}  # the context run exports only its context backbone
    assert not (tmp_path / "simsiam_context" / "encoder.safetensors").exists()
    ctx_file = tmp_path / "simsiam_context" / "context_encoder.safetensors"
    assert c["weights"] == str(ctx_file) and "context_weights=" in c["use"]
    tw, cw = load_file(t["weights"]), load_file(str(ctx_file))
    assert set(tw) == set(cw)
    assert not torch.equal(tw["conv1.weight"], cw["conv1.weight"])  # trained on other patches: other weights
    rec = json.loads((tmp_path / "simsiam_context" / "encoder.json").read_text())
    assert rec["params"] == {"branch": "context"} and set(rec["weights"]) == {"context"}

    net = create_model("hooknet", encoder="resnet18", num_classes=2, ratio=2, tile=64, weights=t["weights"],
                       context_weights=str(ctx_file))
    for enc, ref in ((net.encoder, tw), (net.context_encoder, cw)):
        own = enc.state_dict()
        assert all(torch.equal(own[k], v) for k, v in ref.items())
    assert not torch.equal(net.context_encoder.conv1.weight, net.encoder.conv1.weight)


def _benchmark():
    spec = importlib.util.spec_from_file_location("bench_ssl_pretrain", ROOT / "benchmarks" / "ssl_pretrain.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_benchmark_fine_tunes_tiles_with_their_true_context_at_the_pretraining_geometry(tmp_path):
    import numpy as np

    from pathseg.sample import IGNORE_INDEX

    bench = _benchmark()
    pair = load_config(ROOT / "configs" / "ssl" / "bench_cpu.yaml", []).data.options["pair"]
    assert (bench.TILE, bench.MPP) == (pair["target_size"], pair["target_mpp"]) == (64, 0.5)
    assert bench.RATIO == pair["context_mpp"] / pair["target_mpp"] == 2
    grid = bench.tile_grid((500, 500))  # a MoNuSeg image at 0.5 µm/px
    assert len(grid) == 36 and grid[0] == (32, 32) and grid[-1] == (352, 352)
    assert all(y - 32 >= 0 and y - 32 + bench.WINDOW <= 500 for y, _ in grid)  # every context window inside
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (500, 500, 3)).astype(np.uint8)
    msk = rng.integers(0, 2, (500, 500)).astype(np.uint8)
    data = {"train": {"ids": ["a"], "images": [img], "masks": [msk]},
            "test": {"ids": ["t"], "images": [img], "masks": [msk]}}
    tiles = bench.all_tiles(data)
    assert tiles[0] == "a_y32_x32" and bench.parse_tile("a_y96_x160") == ("a", 96, 160)
    assert bench.draw_tiles(tiles, 0.1, 3) == bench.draw_tiles(tiles, 0.1, 3) != bench.draw_tiles(tiles, 0.1, 4)
    assert len(bench.draw_tiles(tiles, 0.01, 0)) == 1 and len(bench.draw_tiles(tiles, 0.1, 0)) == 4
    root = bench.stage(data, tmp_path)
    from pathseg.io.files import read_image

    win = read_image(root / "train" / "images" / "a_y96_x160.png")
    lab = read_image(root / "train" / "masks" / "a_y96_x160.png", mode=None)
    assert np.array_equal(win, img[64:192, 128:256])  # the 128 px window around the tile
    assert np.array_equal(lab[32:96, 32:96], msk[96:160, 160:224])  # labels on the tile only
    outside = np.ones_like(lab, bool)
    outside[32:96, 32:96] = False
    assert (lab[outside] == IGNORE_INDEX).all()
