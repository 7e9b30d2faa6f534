"""HookNet fine-tuning through the loop: concentric pair geometry, the model registry, checkpoints, the CLI.

Geometry is checked against an independent computation (``numpy.pad`` and block means on an image whose
pixel values are its own coordinates); the CLI run fine-tunes from a DSF-WSI export on synthetic data.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pathseg.data.context import ContextView, cut_pair, parse_context
from pathseg.sample import IGNORE_INDEX
from pathseg.models.checkpoint import load_model, save_model_checkpoint
from pathseg.errors import ConfigError
from pathseg.models import create_model
from pathseg.models.hooknet import HookNet

torch.set_num_threads(1)

T, R = 64, 4


def coordinate_image(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB = (row, column, row + column) mod 256, and a mask that changes from each pixel to the next."""
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    img = np.stack([yy, xx, (yy + xx) % 256], -1).astype(np.uint8)
    return img, ((7 * yy + 3 * xx) % 5).astype(np.int64)


def block_mean(a: np.ndarray, r: int) -> np.ndarray:
    n = a.shape[0] // r
    return a.astype(np.float64).reshape(n, r, n, r, -1).mean(axis=(1, 3))


def centre(context: np.ndarray, size: int = T, r: int = R) -> np.ndarray:
    lo = size // 2 - size // (2 * r)
    return context[lo:lo + size // r, lo:lo + size // r]


# -- (a) geometry ---------------------------------------------------------------------------------

def test_context_centre_covers_exactly_the_target_crop_inside_the_image():
    img, mask = coordinate_image(256, 256)
    y0, x0 = 96, 80  # context rows 0..255, columns -16..239 (16 mirrored columns on the left)
    p = cut_pair(img, mask, y0, x0, T, R)
    tgt = img[y0:y0 + T, x0:x0 + T]
    assert np.array_equal(p["image"], tgt) and np.array_equal(p["mask"], mask[y0:y0 + T, x0:x0 + T])
    # the centre T/r context pixels are the r x r block means of the target crop (rounded to uint8) ...
    assert np.array_equal(centre(p["context"]), np.rint(block_mean(tgt, R)).astype(np.uint8))
    assert np.array_equal(centre(p["context_mask"]), p["mask"][R // 2::R, R // 2::R])  # label at each block centre
    # ... and upsampled by r they give the target back within the interpolation error ((r - 1) / 2 + rounding)
    up = np.repeat(np.repeat(centre(p["context"]).astype(float), R, 0), R, 1)
    assert np.abs(up[..., :2] - tgt[..., :2]).max() <= (R - 1) / 2 + 0.5
    # the context pixel k covers rows c0 + 4k .. c0 + 4k + 3 with c0 = y0 + T/2 - T*R/2 = 0
    rows = p["context"][:, 20, 0].astype(float)
    assert np.allclose(rows, 4 * np.arange(T) + 1.5, atol=0.5)


@pytest.mark.parametrize("y0,x0", [(0, 0), (-10, 70), (100, 100)])
def test_context_is_reflect_padded_and_masks_ignored_outside_the_image(y0, x0):
    img, mask = coordinate_image(128, 160)
    p = cut_pair(img, mask, y0, x0, T, R)
    pad = T * R  # enough for any of these crops
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    padded_mask = np.pad(mask, pad, mode="constant", constant_values=IGNORE_INDEX)
    c0y, c0x = y0 + T // 2 - T * R // 2 + pad, x0 + T // 2 - T * R // 2 + pad
    region = padded[c0y:c0y + T * R, c0x:c0x + T * R]
    assert np.array_equal(p["context"], np.rint(block_mean(region, R)).astype(np.uint8))
    assert np.array_equal(p["image"], padded[y0 + pad:y0 + pad + T, x0 + pad:x0 + pad + T])
    assert np.array_equal(p["mask"], padded_mask[y0 + pad:y0 + pad + T, x0 + pad:x0 + pad + T])
    # the context label is the pixel at the centre of each block (offset r // 2), ignore outside the image
    lab = padded_mask[c0y + R // 2:c0y + T * R:R, c0x + R // 2:c0x + T * R:R]
    assert np.array_equal(p["context_mask"], lab)
    assert (p["context_mask"] == IGNORE_INDEX).any()


def test_training_pairs_stay_concentric_through_flips_and_turns():
    img, mask = coordinate_image(256, 256)
    sample = {"image": img, "mask": mask, "meta": {"id": "x"}}
    tf = [{"name": "random_crop", "size": T}, {"name": "flip"}, {"name": "rotate90"}]
    view = ContextView([sample], tf, {"ratio": R})
    turned = set()
    for seed in range(8):
        target, context = view.pair(dict(sample), np.random.default_rng(seed))
        assert np.abs(centre(context["image"])[..., :2] - block_mean(target["image"], R)[..., :2]).max() <= 0.5
        # each centre context label is one of the labels of the r x r target block it covers
        blocks = target["mask"].reshape(T // R, R, T // R, R).transpose(0, 2, 1, 3).reshape(T // R, T // R, -1)
        assert (blocks == centre(context["mask"])[..., None]).any(-1).all()
        turned.add(bool(target["image"][0, 0, 0] > target["image"][-1, 0, 0]) or
                   bool(target["image"][0, 0, 1] > target["image"][0, -1, 1]))
    assert turned == {True, False}  # some draws did flip or turn the pair
    item = view[(0, 3)]
    assert item["image"].shape == item["context"].shape == (3, T, T) and int(item["context_ratio"]) == R


def test_centre_position_pairs_a_tile_with_the_window_around_it():
    # a labelled T px tile in the middle of its R*T px context window, labels only on the tile
    img, mask = coordinate_image(T * R, T * R)
    lo = (T * R - T) // 2
    tile_mask = np.full_like(mask, IGNORE_INDEX)
    tile_mask[lo:lo + T, lo:lo + T] = mask[lo:lo + T, lo:lo + T]
    view = ContextView([{"image": img, "mask": tile_mask, "meta": {}}], [{"name": "random_crop", "size": T}],
                       {"ratio": R, "position": "center"})
    for seed in range(3):  # the same pair whatever the draw
        target, context = view.pair({"image": img, "mask": tile_mask, "meta": {}}, np.random.default_rng(seed))
        assert np.array_equal(target["image"], img[lo:lo + T, lo:lo + T])
        assert np.array_equal(target["mask"], mask[lo:lo + T, lo:lo + T])  # every target pixel labelled
        # the context is the whole window at 1/R (block means): no reflected pixels
        assert np.array_equal(context["image"], np.rint(block_mean(img, R)).astype(np.uint8))
    with pytest.raises(ConfigError, match="position"):
        parse_context({"ratio": 2, "position": "middle"}, [{"name": "random_crop", "size": 64}])


def test_monuseg_config_builds_pairs_the_model_accepts():
    from pathseg.engine.config import load_config

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "configs" / "ssl" / "hooknet_monuseg.yaml",
                      ["model.weights=null", "model.options.context_weights=null"])
    ratio, size, pre, post = parse_context(cfg.data.context, cfg.data.train_transforms)
    assert (ratio, size, pre) == (cfg.model.options["ratio"], cfg.model.options["tile"], [])
    assert [t["name"] for t in post] == ["flip", "rotate90", "hed_jitter", "color_jitter"]
    assert (cfg.model.name, cfg.method.name, cfg.data.options) == ("hooknet", "hooknet", {"scale": 0.5})


def test_context_options_are_checked():
    with pytest.raises(ConfigError, match="Did you mean 'ratio'"):
        parse_context({"ratoi": 4}, [{"name": "random_crop", "size": 64}])
    with pytest.raises(ConfigError, match="multiple of 64"):
        parse_context({"ratio": 4}, [{"name": "random_crop", "size": 96}])
    with pytest.raises(ConfigError, match="one of 2, 4, 8, 16"):
        parse_context({"ratio": 3, "size": 64}, [])
    assert parse_context({"ratio": 2}, [{"name": "flip"}, {"name": "random_crop", "size": 128}, {"name": "rotate90"}]) \
        == (2, 128, [{"name": "flip"}], [{"name": "rotate90"}])
    view = ContextView([{"image": np.zeros((70, 70, 3), np.uint8), "mask": None, "meta": {}}],
                       [{"name": "random_crop", "size": 64}, {"name": "scale", "range": [2, 2]}], {"ratio": 2})
    with pytest.raises(ConfigError, match="size-preserving"):
        view[(0, 0)]


def test_whole_image_inference_feeds_the_training_geometry_to_every_tile():
    """HookNet.segment's (target, context) per tile equal cut_pair's on the same image (independent of the net)."""

    class Recorder:
        segment = HookNet.segment

        def __init__(self):
            self.tile, self.ratio, self.num_classes, self.calls = T, R, 1, []

        def __call__(self, tgt, ctx):
            self.calls += list(zip(tgt, ctx))
            return {"target": tgt[:, :1]}

    img, _ = coordinate_image(100, 150)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    rec = Recorder()
    out = rec.segment(x)
    assert out.shape == (1, 1, 100, 150) and torch.equal(out[0, 0], x[0, 0])  # tiles go back where they came from
    boxes = [(y, xx) for y in (0, 64) for xx in (0, 64, 128)]
    assert len(rec.calls) == len(boxes)
    for (y, xx), (tgt, ctx) in zip(boxes, rec.calls):
        ref = cut_pair(img, None, y, xx, T, R)
        assert np.array_equal(tgt.permute(1, 2, 0).numpy(), ref["image"])
        assert np.abs(ctx.permute(1, 2, 0).numpy() - ref["context"]).max() <= 0.5


# -- (b) registry and checkpoints -----------------------------------------------------------------

def _export(tmp_path):
    """A DSF-WSI export (encoder.safetensors + context_encoder.safetensors), weights moved off a fresh init."""
    from pathseg.methods.ssl import DSF
    from pathseg.methods.ssl.export import export_encoders

    torch.manual_seed(1)
    m = DSF(create_model("unet", encoder="resnet18"), class_names=["a", "b"], targets_per_context=4,
            channels_last=False)
    with torch.no_grad():
        for i, enc in enumerate((m.model.encoder, m.context_encoder)):
            for p in enc.parameters():
                p.add_(0.01 * (i + 1))
    return export_encoders(m, tmp_path / "dsf", {"steps": 0})


def _assert_encoders_equal(net, paths):
    from safetensors.torch import load_file

    for enc, key in ((net.encoder, "target"), (net.context_encoder, "context")):
        ref = load_file(str(paths[key]))
        own = enc.state_dict()
        assert set(ref) == set(own)
        for k, v in ref.items():
            assert torch.equal(own[k], v), (key, k)


def test_create_model_and_load_model_round_trip(tmp_path):
    paths = _export(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing encoder key would warn
        net = create_model("hooknet", encoder="resnet18", num_classes=3, weights=str(paths["target"]), ratio=R,
                           context_weights=str(paths["context"]), tile=T)
    assert isinstance(net, HookNet)
    assert (net.name, net.encoder_name, net.num_classes, net.ratio, net.tile) == ("hooknet", "resnet18", 3, R, T)
    _assert_encoders_equal(net, paths)
    ckpt = save_model_checkpoint(tmp_path / "hn.ckpt", net, ["a", "b", "c"], mpp=0.5)
    paths["context"].unlink()  # the checkpoint does not need the file: the state dict has the weights
    loaded, info = load_model(ckpt)
    assert info["model"] == "hooknet" and info["options"] == {"ratio": R, "tile": T}
    net.eval()
    torch.manual_seed(0)
    tgt, ctx, whole = torch.randn(2, 3, T, T), torch.randn(2, 3, T, T), torch.randn(1, 3, 90, 130)
    with torch.no_grad():
        assert torch.equal(net(tgt, ctx)["target"], loaded(tgt, ctx)["target"])
        assert torch.equal(net(whole), loaded(whole))
    with pytest.raises(ConfigError, match="Did you mean 'ratio'"):
        create_model("hooknet", ratoi=4)
    with pytest.raises(ConfigError, match="ONNX export is not supported"):  # two inputs; slides run it in torch
        from pathseg.inference.onnx import export_model_onnx

        export_model_onnx(loaded, info, tmp_path / "hn.onnx", tile=T)


# -- (c, d) pathseg train / evaluate / predict, fine-tuning from a DSF export ---------------------

def _train_args(out, paths):
    return [
        "data.dataset=synthetic", "data.options={n_images: 2, size: 128, task: nuclei}",
        f"data.train_transforms=[{{name: random_crop, size: {T}}}, {{name: flip}}, {{name: rotate90}}]",
        f"data.context={{ratio: {R}}}", "data.batch_size=2",
        "model.name=hooknet", "model.encoder=resnet18", f"model.weights={paths['target']}",
        f"model.options={{ratio: {R}, tile: {T}, context_weights: {paths['context']}}}",
        "method.name=hooknet", "optim.name=adam", "optim.lr=0.0001", "trainer.max_steps=2", "trainer.val_every=2",
        "trainer.log_every=1", "trainer.threads=1", "trainer.progress=false", f"trainer.out={out}",
    ]


def test_cli_fine_tunes_hooknet_from_a_dsf_export_then_evaluates_and_predicts(tmp_path):
    from pathseg.cli.main import app
    from pathseg.engine.config import load_config
    from pathseg.engine.train import build_method

    paths = _export(tmp_path)
    out = tmp_path / "ft"
    args = _train_args(out, paths)
    # what `pathseg train` builds loads the exported encoders before any step
    method = build_method(load_config(None, args), ["background", "nucleus"], 0.5)
    _assert_encoders_equal(method.model, paths)
    assert method.hparams["pathseg"]["options"] == {"ratio": R, "tile": T}

    res = CliRunner().invoke(app, ["train", *args])
    assert res.exit_code == 0, res.output + repr(res.exception)
    rows = json.loads((out / "metrics.json").read_text())
    assert rows[-1]["step"] == 2 and 0.0 <= rows[-1]["mIoU"] <= 1.0
    assert "train/loss/target" in (out / "logs" / "metrics.csv").read_text().splitlines()[0]
    ckpt = torch.load(out / "model.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["pathseg"]["model"] == "hooknet" and ckpt["pathseg"]["options"] == {"ratio": R, "tile": T}
    from safetensors.torch import load_file

    for key, prefix in (("target", "encoder."), ("context", "context_encoder.")):  # fine-tuned from the export
        w0 = load_file(str(paths[key]))["layer4.1.conv2.weight"]
        w1 = ckpt["state_dict"][prefix + "layer4.1.conv2.weight"]
        assert not torch.equal(w0, w1) and (w1 - w0).abs().max() < 0.05 * w0.abs().max()

    ev = CliRunner().invoke(app, ["evaluate", "--checkpoint", str(out / "model.ckpt"),
                                  "--out", str(tmp_path / "ev.json"), "data.dataset=synthetic",
                                  "data.options={n_images: 2, size: 128, task: nuclei}", "trainer.threads=1"])
    assert ev.exit_code == 0, ev.output + repr(ev.exception)
    scores = json.loads((tmp_path / "ev.json").read_text())
    assert scores["pixels"] == 2 * 128 * 128  # whole test images, tiled with their contexts
    assert abs(scores["mIoU"] - rows[-1]["mIoU"]) < 1e-6  # the same weights score the same as the last validation

    from pathseg.data.synth import SyntheticHE
    from pathseg.inference.images import predict_images
    from pathseg.io.files import write_image

    img = SyntheticHE(n_images=1, size=96, task="nuclei", split="test")[0]["image"]
    write_image(tmp_path / "tile.png", img)
    rec = predict_images([tmp_path / "tile.png"], out / "model.ckpt", tmp_path / "pred")
    assert "error" not in rec[0] and (tmp_path / "pred" / "tile.png").is_file()


def test_hooknet_method_says_what_is_missing():
    from pathseg.methods import METHODS

    with pytest.raises(ConfigError, match="model.name=hooknet"):
        METHODS.get("hooknet")(create_model("unet"), class_names=["a", "b"])
    net = HookNet("resnet18", num_classes=2, ratio=R, tile=T)
    m = METHODS.get("hooknet")(net, class_names=["a", "b"])
    batch = {"image": torch.randn(2, 3, T, T), "mask": torch.zeros(2, T, T, dtype=torch.long)}
    with pytest.raises(ConfigError, match=r"data.context=\{ratio: 4\}"):
        m.training_losses(batch)
    with pytest.raises(ConfigError, match="data.context.ratio=2"):
        m.training_losses({**batch, "context": batch["image"], "context_ratio": torch.tensor([2, 2])})
    with pytest.raises(ConfigError, match="method.name=hooknet"):
        net.train()(batch["image"])  # one input trains nothing: the pairs are the point
