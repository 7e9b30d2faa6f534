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


def test_the_benchmark_fine_tunes_each_dataset_at_the_pretraining_resolution(shared_dataset, tmp_path):
    from pathseg.methods.ssl.data import check_resolution

    bench = _benchmark()
    pair = load_config(ROOT / "configs" / "ssl" / "bench_cpu.yaml", []).data.options["pair"]
    assert bench.FT_MPP == pair["target_mpp"] == 0.5
    assert bench.HOOK_RATIO == pair["context_mpp"] / pair["target_mpp"] == 2
    scales = bench.finetune_scales(0.5)
    assert scales["glas"] == pytest.approx(0.62 / 0.5) and scales["monuseg"] == pytest.approx(0.25 / 0.5)
    shared_dataset("glas")
    glas = bench.load_images("glas", tmp_path)
    assert glas["train"]["mpp"] == pytest.approx(0.5) and glas["test"]["mpp"] == pytest.approx(0.5)
    h, w = glas["train"]["images"][0].shape[:2]
    from pathseg.data.glas import GlaS

    ds = GlaS(split="train")
    h0, w0 = ds[ds.ids.index(glas["train"]["ids"][0])]["image"].shape[:2]
    assert (h, w) == (round(h0 * 1.24), round(w0 * 1.24))  # 0.62 µm/px enlarged to 0.5, as pretraining reads it
    assert glas["train"]["masks"][0].shape == (h, w)
    record = {"trained_on": {"pair": dict(pair)}}
    check_resolution(record, glas["train"]["mpp"])
    with pytest.raises(ConfigError, match="pretrained at 0.5"):
        check_resolution(record, 1.24)  # the resolution this benchmark fine-tuned GlaS at before issue 15
