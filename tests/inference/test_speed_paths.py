"""The fast paths of whole-slide inference give the results of the plain ones.

- the pipelined predictor (reader thread -> model -> stitcher thread) stitches what a plain loop over the tiles
  with a numpy accumulator gives (probabilities within 1e-6, labels equal), with the accumulator in memory and
  on disk, and with DataLoader reader processes;
- the table-driven Macenko transform and model-input normalisation equal the formulas they replace;
- an INT8 model of a small trained network agrees with fp32 as the quantiser reports, runs through the slide
  predictor with its precision in the run record, and a model below the agreement threshold is refused;
- ``pathseg predict`` imports neither Lightning nor torch for an ONNX model (``python -X importtime``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
from wsi_fixtures import synthetic_slide  # noqa: E402
from wsi_helpers import colour_backend  # noqa: E402

from pathseg.errors import ConfigError, DataError  # noqa: E402
from pathseg.inference.backends import OnnxBackend, TorchBackend, load_backend  # noqa: E402
from pathseg.inference.onnx import InputNormaliser, export_model_onnx, read_onnx_info  # noqa: E402
from pathseg.inference.predictor import PredictConfig, SlidePredictor, process_age_s  # noqa: E402
from pathseg.inference.stitch import BLENDS, Stitcher  # noqa: E402
from pathseg.io.slides import open_slide  # noqa: E402
from pathseg.io.tiling import TilingConfig, grid_tiles, output_size  # noqa: E402
from pathseg.io.tissue import detect_tissue  # noqa: E402

MPP = 0.5


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    return synthetic_slide(tmp_path_factory.mktemp("speed"), 1024, seed=1, truth=False)[0]


def plain_loop(backend, path: Path, cfg: PredictConfig) -> tuple[np.ndarray, np.ndarray]:
    """The stitching of earlier versions, written out: every tile read, run alone, weighted into one numpy
    accumulator over the whole slide, then sums / weights and argmax."""
    with open_slide(path) as s:
        tiles = grid_tiles(s, TilingConfig(tile=cfg.tile, overlap=cfg.overlap, mpp=MPP, min_tissue=cfg.min_tissue),
                           tissue=detect_tissue(s, cfg.tissue_method))
        W, H = output_size(s, MPP)
        K = backend.num_classes
        acc = np.zeros((K + 1, H, W), np.float32)
        weight = BLENDS.get(cfg.blend)(cfg.tile)
        for t in tiles:
            img = s.read_region(t.x0, t.y0, cfg.tile, cfg.tile, mpp=MPP)
            p = backend(img[None])[0]
            kx0, ky0, kx1, ky1 = t.keep
            x0, y0, x1, y1 = t.out_box
            w = weight[ky0:ky1, kx0:kx1]
            acc[:K, y0:y1, x0:x1] += p[:, ky0:ky1, kx0:kx1] * w
            acc[K, y0:y1, x0:x1] += w
    valid = acc[K] > 0
    probs = acc[:K] / np.where(valid, acc[K], 1.0)
    return probs, np.where(valid, probs.argmax(0), 0).astype(np.uint8)


def run_pipeline(backend, path: Path, out: Path, cfg: PredictConfig, **kw):
    import zarr

    rec = SlidePredictor(backend, cfg, **kw).predict(path, out)
    assert rec["status"] == "done", rec
    z = zarr.open_group(rec["outputs"]["zarr"], mode="r")
    return rec, z["probs"][:], z["labels"][:]


@pytest.mark.parametrize("overlap,blend,budget", [(0.5, "gaussian", None), (0.5, "mean", 0), (0.0, "mean", None)])
def test_pipelined_stitching_equals_a_plain_loop(slide, tmp_path, monkeypatch, overlap, blend, budget):
    """Same probabilities (1e-6) and labels as the plain loop; budget 0 puts the accumulator on disk."""
    from pathseg.inference import stitch

    if budget is not None:
        monkeypatch.setattr(stitch, "MEMORY_BUDGET", budget)
    backend = colour_backend()
    cfg = PredictConfig(tile=256, overlap=overlap, blend=blend, min_tissue=0.0, keep_zarr=True,
                        prob_dtype="float32", batch_size=3, checkpoint_every=5)
    rec, probs, labels = run_pipeline(backend, slide, tmp_path, cfg)
    want_p, want_l = plain_loop(backend, slide, cfg)
    np.testing.assert_allclose(probs, want_p, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(labels, want_l)
    t = rec["timings"]
    for stage in ("read_s", "stain_s", "normalise_s", "model_s", "stitch_s", "wait_read_s", "write_labels_s",
                  "write_geojson_s", "write_overlay_s", "write_composition_s", "first_tile_s", "startup_s"):
        assert stage in t and t[stage] >= 0, stage
    assert rec["precision"] == "fp32" and rec["tiles"]["run"] == rec["tiles"]["grid_with_tissue"]


def test_dataloader_reader_processes_give_the_same_labels(slide, tmp_path):
    backend = colour_backend()
    cfg = PredictConfig(tile=256, overlap=0.0, min_tissue=0.0, keep_zarr=True, prob_dtype="float32", batch_size=4,
                        workers=1)
    _, probs, labels = run_pipeline(backend, slide, tmp_path, cfg)
    want_p, want_l = plain_loop(backend, slide, cfg)
    np.testing.assert_allclose(probs, want_p, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(labels, want_l)


def test_batch_spans_start_with_one_tile_then_full_batches():
    from pathseg.inference.predictor import batch_spans

    assert batch_spans(20, 8) == [(0, 1), (1, 9), (9, 17), (17, 20)]
    assert batch_spans(1, 8) == [(0, 1)]
    assert batch_spans(0, 8) == []
    assert batch_spans(10, 4, first=4) == [(0, 4), (4, 8), (8, 10)]
    assert batch_spans(10, 4, first=0) == [(0, 4), (4, 8), (8, 10)]
    for n, b in [(0, 1), (7, 1), (33, 8), (64, 8)]:
        spans = batch_spans(n, b)
        assert [i for a, z in spans for i in range(a, z)] == list(range(n))  # every tile once, in order
        assert all(0 < z - a <= b for a, z in spans)


@pytest.mark.parametrize("workers", [0, 1])
def test_the_first_model_call_is_one_tile_and_the_maps_are_unchanged(slide, tmp_path, monkeypatch, workers):
    """The reader thread and the DataLoader both hand the model 1 tile, then full batches; the stitched
    probabilities equal the plain loop's, and those of a run whose first call is a full batch."""
    from pathseg.inference import predictor

    sizes: list[int] = []
    run = TorchBackend.run

    def counted(self, prepared):
        sizes.append(len(prepared[0]))  # prepared = (tiles, context)
        return run(self, prepared)

    monkeypatch.setattr(TorchBackend, "run", counted)
    backend = colour_backend()
    cfg = PredictConfig(tile=256, overlap=0.0, min_tissue=0.0, keep_zarr=True, prob_dtype="float32", batch_size=4,
                        workers=workers)
    rec, probs, labels = run_pipeline(backend, slide, tmp_path / "one", cfg)
    n = rec["tiles"]["run"]
    assert sizes == [z - a for a, z in predictor.batch_spans(n, 4)] and sizes[0] == 1 and n > 5
    want_p, want_l = plain_loop(backend, slide, cfg)
    np.testing.assert_allclose(probs, want_p, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(labels, want_l)
    sizes.clear()
    monkeypatch.setattr(predictor, "FIRST_BATCH", 4)
    _, probs4, labels4 = run_pipeline(backend, slide, tmp_path / "four", cfg)
    assert sizes[0] == 4
    np.testing.assert_allclose(probs4, probs, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(labels4, labels)


def test_an_interrupted_pipelined_run_resumes_to_the_same_result(slide, tmp_path):
    backend = colour_backend()
    cfg = PredictConfig(tile=256, overlap=0.5, min_tissue=0.0, keep_zarr=True, prob_dtype="float32", batch_size=2,
                        checkpoint_every=4)
    pred = SlidePredictor(backend, cfg)
    part = pred.predict(slide, tmp_path / "a", stop_after=10)
    assert part["status"] == "interrupted" and 0 < part["tiles_done"] < part["tiles_total"]
    _, probs, labels = run_pipeline(backend, slide, tmp_path / "a", cfg)
    want_p, want_l = plain_loop(backend, slide, cfg)
    np.testing.assert_allclose(probs, want_p, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(labels, want_l)


def test_a_failing_model_stops_the_pipeline_with_its_error(slide, tmp_path):
    class Broken(TorchBackend):
        calls = 0

        def run(self, prepared):
            Broken.calls += 1
            if Broken.calls == 3:
                raise RuntimeError("model exploded")
            return super().run(prepared)

    from wsi_helpers import ColourModel, colour_info

    be = Broken(ColourModel(), colour_info(), device="cpu", threads=1)
    with pytest.raises(RuntimeError, match="model exploded"):
        SlidePredictor(be, PredictConfig(tile=256, overlap=0.5, min_tissue=0.0, batch_size=2)).predict(
            slide, tmp_path)


def test_the_open_accumulator_is_counted_before_it_is_used(tmp_path):
    """Without overlap every chunk is one tile's: one chunk open at a time; with overlap about a row's worth."""
    W, H, K, T = 2048, 1024, 3, 256
    for overlap, most in ((0.0, 1), (0.5, 3 * (W // 128 + 1))):
        tiles = grid_tiles(None, TilingConfig(tile=T, overlap=overlap, mpp=1.0, min_tissue=0), slide_mpp=1.0,
                           dimensions=(W, H))
        chunk = max(64, min(int(T * (1 - overlap)), 512))
        st = Stitcher(tmp_path / f"s{overlap}.zarr", tiles, (W, H), K, tile=T, chunk=chunk, key="k")
        order = st.plan(0)
        n_open = st.peak_open_bytes(order) // ((K + 1) * chunk * chunk * 4)
        assert 1 <= n_open <= most, (overlap, n_open)
        assert st.in_memory


def test_macenko_transform_equals_the_least_squares_formula():
    """The table-driven transform against Macenko's steps written with lstsq on every pixel (the earlier code)."""
    from pathseg.data.synth import render_region
    from pathseg.transforms.stain import MacenkoNormalizer, _tissue_od, od_to_rgb

    norm = MacenkoNormalizer(fallback="identity").fit(render_region(20000, 500, 256, 256, seed=0, centre=2)["image"])

    def reference(image: np.ndarray) -> np.ndarray:
        od, tissue = _tissue_od(image, norm.beta)
        he = norm.stain_matrix(tissue)
        conc_t = np.linalg.lstsq(he.T, tissue.T, rcond=None)[0].T
        max_src = np.percentile(conc_t, norm.max_percentile, axis=0)
        conc = np.linalg.lstsq(he.T, od.T, rcond=None)[0].T * (norm.max_conc_ / max_src)
        return od_to_rgb(conc @ norm.stain_matrix_).reshape(image.shape)

    same = total = 0
    for i, centre in enumerate((0, 1, 3, 0)):
        tile = render_region(3000 + 700 * i, 2000, 192, 192, seed=i, centre=centre)["image"]
        got, want = norm.transform(tile), reference(tile)
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
        same += int((got == want).all(-1).sum())
        total += got.shape[0] * got.shape[1]
    assert same / total >= 0.9999, same / total
    glass = np.full((64, 64, 3), 240, np.uint8)
    np.testing.assert_array_equal(norm.transform(glass), glass)  # too little tissue: unchanged


def test_table_input_normalisation_equals_the_formula():
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (3, 40, 56, 3), dtype=np.uint8)
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    m = (np.asarray(mean, np.float32) * 255).reshape(1, 3, 1, 1)
    inv = (1.0 / (np.asarray(std, np.float32) * 255)).reshape(1, 3, 1, 1)
    want = (batch.transpose(0, 3, 1, 2).astype(np.float32) - m) * inv
    got = InputNormaliser(mean, std)(batch)
    assert got.flags.c_contiguous and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def test_precision_choices_are_checked():
    from wsi_helpers import ColourModel, colour_info

    with pytest.raises(ConfigError, match="CUDA"):
        TorchBackend(ColourModel(), colour_info(), device="cpu", precision="fp16")
    with pytest.raises(ConfigError, match="ONNX Runtime"):
        TorchBackend(ColourModel(), colour_info(), device="cpu", precision="int8")
    with pytest.raises(ConfigError, match="precision must be one of"):
        TorchBackend(ColourModel(), colour_info(), device="cpu", precision="fp8")
    assert TorchBackend(ColourModel(), colour_info(), device="cpu").precision == "fp32"
    age = process_age_s()
    assert age is None or 0 < age < 24 * 3600


# ---------------------------------------------------------------------------------------------- INT8
class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 12, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(12, 3, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


NAMES = ["background", "tumour", "other tissue"]
INFO = {"model": "tiny", "encoder": "none", "num_classes": 3, "class_names": NAMES,
        "colors": [[230, 230, 230], [220, 40, 60], [60, 160, 60]], "mpp": MPP, "mean": [0.5] * 3, "std": [0.25] * 3}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny conv net trained for 120 steps on synthetic H&E (background / tumour / other tissue), as .onnx."""
    from pathseg.data.synth import render_region

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = TinyNet()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    mean, std = torch.tensor(INFO["mean"]).view(1, 3, 1, 1), torch.tensor(INFO["std"]).view(1, 3, 1, 1)
    crops = [render_region(int(rng.integers(0, 6000)), int(rng.integers(0, 6000)), 64, 64, seed=1, mpp=MPP)
             for _ in range(24)]
    x = (torch.from_numpy(np.stack([c["image"] for c in crops])).permute(0, 3, 1, 2).float() / 255 - mean) / std
    y = torch.from_numpy(np.stack([np.minimum(c["mask"], 2) for c in crops]))
    for _ in range(120):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    return export_model_onnx(net.eval(), INFO, tmp_path_factory.mktemp("int8") / "tiny.onnx", tile=64)


def test_int8_agreement_is_measured_on_tissue_and_recorded(trained, slide, tmp_path):
    import onnxruntime as ort

    from pathseg.inference.quantize import QuantizeConfig, calibration_tiles, quantize_onnx, tissue_pixels

    tiles = calibration_tiles([slide], tile=64, mpp=MPP, n=12)
    assert tiles.shape[1:] == (64, 64, 3) and 1 < len(tiles) <= 12
    path, report = quantize_onnx(trained, tmp_path / "tiny.int8.onnx", tiles, config=QuantizeConfig(tiles=12))
    info = read_onnx_info(path)
    assert info["precision"] == "int8" and info["calibration"]["agreement"] == report["agreement"]
    assert report["agreement"] >= 0.99, report
    # independently: both graphs on the calibration tiles, labels compared over tissue pixels
    x = InputNormaliser(INFO["mean"], INFO["std"])(tiles)
    lab = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0].argmax(1)
           for p in (trained, path)]
    mask = tissue_pixels(tiles)
    assert abs(float((lab[0] == lab[1])[mask].mean()) - report["agreement"]) < 1e-9
    # the slide predictor runs it and names the precision
    be = load_backend(path)
    assert isinstance(be, OnnxBackend) and be.precision == "int8"
    rec = SlidePredictor(be, PredictConfig(tile=64, overlap=0.0, batch_size=8)).predict(slide, tmp_path / "run")
    assert rec["status"] == "done" and rec["precision"] == "int8" and rec["quantisation"]["agreement"] >= 0.99
    with pytest.raises(ConfigError, match="int8 model"):
        load_backend(path, precision="fp32")


def test_openvino_runs_the_exported_graph_at_fp32_as_onnx_runtime_does(trained, slide, tmp_path):
    """OpenVINO compiles the same graph at f32 (its own default on a CPU with AMX or AVX-512 BF16 is bf16):
    the same probabilities as ONNX Runtime within float32 rounding, the same labels on the slide, and the
    run record names the backend."""
    import openvino as ov

    from pathseg.inference.backends import OpenVinoBackend

    ovb, ortb = load_backend(trained, backend="openvino"), load_backend(trained, backend="onnx")
    assert isinstance(ovb, OpenVinoBackend) and ovb.precision == "fp32"
    assert ovb.session.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    tiles = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(ovb(tiles), ortb(tiles), atol=1e-5, rtol=0)
    first = ovb(tiles[:1])
    ovb(tiles[1:2])  # same shape: OpenVINO writes into the same output buffer
    np.testing.assert_allclose(first, ortb(tiles[:1]), atol=1e-5, rtol=0)
    cfg = PredictConfig(tile=64, overlap=0.0, batch_size=8, keep_zarr=True, prob_dtype="float32")
    rec, p_ov, l_ov = run_pipeline(ovb, slide, tmp_path / "ov", cfg)
    _, p_ort, l_ort = run_pipeline(ortb, slide, tmp_path / "ort", cfg)
    assert rec["backend"] == "openvino" and rec["precision"] == "fp32"
    np.testing.assert_allclose(p_ov, p_ort, atol=1e-5, rtol=0)
    assert (l_ov == l_ort).mean() > 0.9999  # only float32 near-ties may differ


def test_openvino_normalises_in_the_graph_and_streams_batches_in_order(trained):
    """The graph takes the uint8 tiles (normalisation compiled in, compared above with ONNX Runtime's numpy
    normalisation); ``map`` queues tile after tile across batches and gives each batch back, in order, with
    the probabilities ONNX Runtime gives that batch alone; a batch with no tiles passes through as None; leaving
    early waits for the queued tiles and leaves the backend usable."""
    from pathseg.inference.backends import OpenVinoBackend

    ovb, ortb = load_backend(trained, backend="openvino"), load_backend(trained, backend="onnx")
    assert isinstance(ovb, OpenVinoBackend) and ovb.requests == 2 * ovb.streams
    rng = np.random.default_rng(1)
    batches = [rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8) for n in (1, 5, 3, 7)]
    prepared = ovb.model_input(batches[1])
    assert prepared.dtype == np.uint8 and np.shares_memory(prepared, batches[1])  # no float copy
    with pytest.raises(DataError, match="uint8"):
        ovb.model_input(batches[1].astype(np.float32))
    items = [("a", batches[0]), ("b", batches[1]), ("none", None), ("c", batches[2]), ("d", batches[3])]
    got = list(ovb.map((k, ovb.model_input(x) if x is not None else None) for k, x in items))
    assert [k for k, _ in got] == ["a", "b", "none", "c", "d"] and got[2][1] is None
    for (_, x), (_, probs) in zip([i for i in items if i[1] is not None], [g for g in got if g[1] is not None]):
        assert probs.shape == (len(x), ortb.num_classes, 64, 64)
        np.testing.assert_allclose(probs, ortb(x), atol=1e-5, rtol=0)
    it = ovb.map((k, x) for k, x in items if x is not None)
    assert next(it)[0] == "a"
    it.close()  # tiles of "b" were queued: waited for, dropped
    np.testing.assert_allclose(ovb(batches[2]), ortb(batches[2]), atol=1e-5, rtol=0)


def test_openvino_runs_an_int8_graph_with_the_agreement_it_was_calibrated_for(trained, slide, tmp_path):
    """The QDQ graph from pathseg's quantiser, run by OpenVINO's int8 kernels: labels over the calibration tiles'
    tissue agree with fp32 at the 99% the quantiser checked with ONNX Runtime."""
    from pathseg.inference.backends import OpenVinoBackend
    from pathseg.inference.quantize import QuantizeConfig, calibration_tiles, quantize_onnx, tissue_pixels

    tiles = calibration_tiles([slide], tile=64, mpp=MPP, n=12)
    path, report = quantize_onnx(trained, tmp_path / "tiny.int8.onnx", tiles, config=QuantizeConfig(tiles=12))
    be = load_backend(path, backend="openvino")
    assert isinstance(be, OpenVinoBackend) and be.precision == "int8"
    fp32 = load_backend(trained, backend="onnx")
    mask = tissue_pixels(tiles)
    agree = float((be(tiles).argmax(1) == fp32(tiles).argmax(1))[mask].mean())
    assert agree >= 0.99, (agree, report["agreement"])
    rec = SlidePredictor(be, PredictConfig(tile=64, overlap=0.0, batch_size=8)).predict(slide, tmp_path / "run")
    assert rec["status"] == "done" and rec["backend"] == "openvino" and rec["precision"] == "int8"
    with pytest.raises(ConfigError, match="int8 model"):
        load_backend(path, backend="openvino", precision="fp32")


def test_int8_below_the_agreement_threshold_is_refused_or_warned(slide, tmp_path):
    from pathseg.inference.quantize import LowAgreementError, QuantizeConfig, calibration_tiles, quantize_onnx

    torch.manual_seed(3)
    untrained = export_model_onnx(TinyNet().eval(), INFO, tmp_path / "untrained.onnx", tile=64)  # near-ties
    tiles = calibration_tiles([slide], tile=64, mpp=MPP, n=6)
    out = tmp_path / "u.int8.onnx"
    with pytest.raises(LowAgreementError, match="no INT8 model written"):
        quantize_onnx(untrained, out, tiles, config=QuantizeConfig(tiles=6, min_agreement=1.0))
    assert not out.exists()
    with pytest.warns(UserWarning, match="calibrate on more"):
        _, report = quantize_onnx(untrained, out, tiles, config=QuantizeConfig(tiles=6, min_agreement=1.0),
                                  on_low="warn")
    assert out.exists() and report["agreement"] < 1.0 and "warning" in report


def test_predict_precision_int8_calibrates_on_the_slide_once(trained, slide, tmp_path, monkeypatch):
    from pathseg.cli.slides import int8_model

    monkeypatch.setenv("PATHSEG_CACHE", str(tmp_path / "cache"))
    first = int8_model(trained, [slide], tile=64)
    assert read_onnx_info(first)["precision"] == "int8"
    assert int8_model(trained, [slide], tile=64) == first  # cached
    assert int8_model(first, [slide], tile=64) == first  # an INT8 model is used as it is


def test_pathseg_predict_precision_int8_runs_the_calibrated_model_and_records_it(slide, tmp_path):
    from typer.testing import CliRunner
    from wsi_helpers import tiny_checkpoint

    from pathseg.cli.main import app

    ckpt = tiny_checkpoint(tmp_path / "m.ckpt", mpp=MPP, num_classes=3)
    env = {"PATHSEG_CACHE": str(tmp_path / "cache")}
    args = ["predict", str(slide), "--checkpoint", str(ckpt), "--tile", "64", "--overlap", "0"]
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o8"), "--precision", "int8"], env=env)
    assert r.exit_code == 0, r.output
    rec = json.loads(next((tmp_path / "o8").rglob("*.run.json")).read_text())
    assert rec["status"] == "done" and rec["precision"] == "int8" and rec["backend"] == "openvino"  # auto on CPU
    assert 0.0 <= rec["quantisation"]["agreement"] <= 1.0
    assert list((tmp_path / "cache").rglob("*int8*.onnx"))  # calibrated once, kept in the user cache
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "o32"), "--precision", "fp32"], env=env)
    assert r.exit_code == 0, r.output
    assert json.loads(next((tmp_path / "o32").rglob("*.run.json")).read_text())["precision"] == "fp32"
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "ox"), "--precision", "int8", "--backend", "torch"],
                           env=env)
    assert r.exit_code != 0 and "runs an ONNX graph" in r.output


def test_export_onnx_int8_command(tmp_path, slide):
    from typer.testing import CliRunner
    from wsi_helpers import tiny_checkpoint

    from pathseg.cli.main import app

    ckpt = tiny_checkpoint(tmp_path / "m.ckpt", mpp=MPP, num_classes=3)
    r = CliRunner().invoke(app, ["export-onnx", str(ckpt), "--out", str(tmp_path / "m.int8.onnx"), "--precision",
                                 "int8", "--calibration", str(slide), "--tile", "128", "--calibration-tiles", "4",
                                 "--min-agreement", "0"], env={"PATHSEG_CACHE": str(tmp_path / "cache")})
    assert r.exit_code == 0, r.output
    assert "agreement" in r.output and read_onnx_info(tmp_path / "m.int8.onnx")["precision"] == "int8"
    r = CliRunner().invoke(app, ["export-onnx", str(ckpt), "--out", str(tmp_path / "x.onnx"), "--precision", "int8"])
    assert r.exit_code == 2 and "--calibration" in r.output


# ---------------------------------------------------------------------------------------------- imports
@pytest.mark.parametrize("backend", ["auto", "onnx"])
def test_pathseg_predict_imports_no_lightning_and_no_torch_for_an_onnx_model(trained, slide, tmp_path, backend):
    cmd = [sys.executable, "-X", "importtime", "-m", "pathseg.cli.main", "predict", str(slide), "--checkpoint",
           str(trained), "--out", str(tmp_path / "o"), "--tile", "64", "--overlap", "0", "--backend", backend]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    modules = {line.split("|")[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    runtime = {"auto": "openvino", "onnx": "onnxruntime"}[backend]  # "auto" on CPU: OpenVINO (installed)
    assert runtime in modules  # the measurement sees the imports
    heavy = sorted(m for m in modules if m.split(".")[0] in ("lightning", "pytorch_lightning", "lightning_fabric",
                                                             "torch", "ray", "timm", "onnx")
                   or m.startswith(("pathseg.methods", "pathseg.engine")))
    assert heavy == [], heavy
    rec = json.loads(next((tmp_path / "o").rglob("*.run.json")).read_text())
    assert rec["status"] == "done" and rec["backend"] == {"auto": "openvino", "onnx": "onnx"}[backend]
    assert rec["timings"]["first_tile_s"] > 0
