"""What a new user and a hostile tester hit: folders of real slides, outputs that would replace inputs, two
runs on one slide, stale records, same-named slides, QuPath-valid polygons, file modes, resolution of images."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
from wsi_fixtures import real_slide, synthetic_slide  # noqa: E402
from wsi_helpers import tiny_checkpoint  # noqa: E402

from pathseg.cli.main import app  # noqa: E402
from pathseg.inference.backends import Backend, load_backend  # noqa: E402
from pathseg.inference.batch import (  # noqa: E402
    SlideBusyError,
    SlideLock,
    expand_inputs,
    output_names,
    predict_one,
)
from pathseg.inference.predictor import PredictConfig, SlidePredictor  # noqa: E402
from pathseg.io.files import read_image, write_image, write_json  # noqa: E402

TILE = ["--tile", "256", "--backend", "torch"]
COARSE = [*TILE, "--mpp", "8", "--min-tissue", "0.001"]  # the real slides at 8 µm/px: a few tiles each


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("hostile-model") / "m.ckpt", mpp=2.0)


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> Path:
    return synthetic_slide(tmp_path_factory.mktemp("hostile-slide"), 1024, seed=2, truth=False)[0]


@pytest.fixture(scope="module")
def predictor(ckpt) -> SlidePredictor:
    return SlidePredictor(load_backend(ckpt, backend="torch"), PredictConfig(tile=256, overlap=0.0))


# -- 1. folders expand by content; nothing is dropped silently ------------------------------------------

def test_a_folder_of_real_slides_predicts_every_slide_and_lists_what_it_skipped(shared_data, ckpt, tmp_path):
    folder = shared_data / "slides"
    found = expand_inputs([folder], slide_options=True)
    names = sorted(p.name for p in found.slides)
    assert names == ["CMU-1-Small-Region.svs", "TCGA-CR-7395-01A-01-TS1.svs", "kidney-48-5.tif"]
    assert [p.name for p, _ in found.skipped] == ["SHA256SUMS"]  # PROVENANCE.md is a known companion file

    # kidney-48-5 records no MPP; at 4 µm/px its one fragment of tissue is large enough to be found. Output at
    # 8 µm/px keeps the run small (the model's own 2 µm/px would upsample the 4 µm/px slides twofold)
    r = invoke("predict", folder, "--checkpoint", ckpt, "--out", tmp_path / "out", "--slide-mpp", "4", *COARSE)
    assert r.exit_code == 0, r.output
    assert "3/3 slides predicted" in r.output and "SHA256SUMS" in r.output
    for stem in ("CMU-1-Small-Region", "TCGA-CR-7395-01A-01-TS1", "kidney-48-5"):
        assert json.loads((tmp_path / "out" / stem / f"{stem}.run.json").read_text())["status"] == "done"


def test_a_folder_of_only_svs_is_not_no_images_found(shared_data, tmp_path):
    for name in ("CMU-1-Small-Region.svs", "TCGA-CR-7395-01A-01-TS1.svs"):
        os.symlink(shared_data / "slides" / name, tmp_path / name)
    found = expand_inputs([tmp_path])
    assert len(found.slides) == 2 and not found.images and not found.skipped


def test_tissue_mask_and_predict_expand_a_folder_the_same_way(shared_data, tmp_path):
    r = invoke("tissue-mask", shared_data / "slides", "--out", tmp_path / "m", "--slide-mpp", "0.5")
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "m").glob("*.tissue.png"))) == 3 and "SHA256SUMS" in r.output


# -- 5. a TIFF given slide options is a slide; options that apply to nothing are errors ---------------------

def test_the_kidney_tiff_with_slide_options_is_predicted_as_a_slide(shared_data, ckpt, tmp_path):
    kidney = real_slide(shared_data, "kidney")
    r = invoke("predict", kidney, "--checkpoint", ckpt, "--out", tmp_path / "o", "--slide-mpp", "4", *COARSE)
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "o" / "kidney-48-5" / "kidney-48-5.run.json").read_text())
    assert rec["slide_info"]["mpp_override"] == 4 and rec["config"]["tile"] == 256
    assert (tmp_path / "o" / "kidney-48-5" / "kidney-48-5.labels.tif").is_file()
    # --as-image decides otherwise; then the slide options apply to nothing and are refused
    r = invoke("predict", kidney, "--checkpoint", ckpt, "--out", tmp_path / "i", "--as-image", "--slide-mpp", "0.5")
    assert r.exit_code == 2 and "--slide-mpp" in r.output and "apply to whole slides only" in r.output
    r = invoke("predict", kidney, "--checkpoint", ckpt, "--out", tmp_path / "i", "--as-image")
    assert r.exit_code == 0, r.output
    assert read_image(tmp_path / "i" / "kidney-48-5.png", mode=None).shape == (901, 1493)


def test_an_image_option_on_slides_only_is_an_error(slide, ckpt, tmp_path):
    r = invoke("predict", slide, "--checkpoint", ckpt, "--out", tmp_path / "o", "--scale", "0.5")
    assert r.exit_code == 2 and "--scale" in r.output and "plain images only" in r.output
    assert not (tmp_path / "o").exists()


# -- 3. an output that would replace an input is refused --------------------------------------------------

def test_out_equal_to_the_input_folder_is_refused_and_the_tiles_survive(ckpt, tmp_path):
    rng = np.random.default_rng(0)
    for i in range(2):
        write_image(tmp_path / f"tile{i}.png", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    r = invoke("predict", tmp_path, "--checkpoint", ckpt, "--out", tmp_path)
    assert r.exit_code == 2 and "holds the inputs" in r.output
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # a file as --out: a message, not a traceback
    r = invoke("predict", tmp_path / "tile0.png", "--checkpoint", ckpt, "--out", tmp_path / "tile1.png")
    assert r.exit_code == 2 and "must be a folder" in r.output and r.exception.__class__ is SystemExit


# -- 4. two slides of one name from two folders ------------------------------------------------------------

def test_two_slides_with_one_name_get_two_output_folders(slide, ckpt, tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        shutil.copy(slide, tmp_path / d / "x.tiff")
    names = output_names([tmp_path / "a" / "x.tiff", tmp_path / "b" / "x.tiff"])
    assert sorted(names.values()) == ["a-x", "b-x"]
    r = invoke("predict", tmp_path / "a" / "x.tiff", tmp_path / "b" / "x.tiff", "--checkpoint", ckpt,
               "--out", tmp_path / "out", *TILE)
    assert r.exit_code == 0, r.output
    assert "2/2 slides predicted" in r.output and "another input has the same name" in r.output
    for n in ("a-x", "b-x"):
        assert json.loads((tmp_path / "out" / n / f"{n}.run.json").read_text())["slide"].endswith(f"{n[0]}/x.tiff")


# -- 2. a second run on a slide in progress is refused; stale locks are taken over ------------------------

def test_a_slide_being_written_by_another_live_run_is_refused(predictor, slide, tmp_path):
    lock = SlideLock(tmp_path / slide.stem, slide.stem)
    with lock:
        # what another process's lock looks like: a live pid (this test's parent) on this host
        data = json.loads(lock.path.read_text())
        lock.path.write_text(json.dumps(dict(data, pid=os.getppid())))
        rec = predict_one(predictor, slide, tmp_path)
        assert rec["status"] == "failed" and "another pathseg run" in rec["error"] and str(lock.path) in rec["error"]
        with pytest.raises(SlideBusyError):
            SlideLock(tmp_path / slide.stem, slide.stem).acquire()
    assert not lock.path.exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(predictor, slide, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / slide.stem / f".{slide.stem}.lock"
    lock.parent.mkdir(parents=True)
    lock.write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "started": "earlier"}))
    rec = predict_one(predictor, slide, tmp_path)
    assert rec["status"] == "done", rec.get("error")
    assert any("stale lock" in w for w in rec["warnings"]) and not lock.exists()


def test_two_cli_runs_at_once_on_one_out_do_not_both_write_a_slide(slide, ckpt, tmp_path):
    """Two real processes: the one that finds the slide locked records it as failed; the outputs that
    remain are one run's, identical to a single run's."""
    cmd = [sys.executable, "-m", "pathseg.cli.main", "predict", str(slide), "--checkpoint", str(ckpt),
           "--out", str(tmp_path / "out"), "--tile", "256", "--overlap", "0", "--backend", "torch"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    codes = sorted(p.returncode for p in procs)
    single = invoke("predict", slide, "--checkpoint", ckpt, "--out", tmp_path / "single", "--tile", "256",
                    "--overlap", "0", "--backend", "torch")
    assert single.exit_code == 0
    a = read_tif(tmp_path / "out" / slide.stem / f"{slide.stem}.labels.tif")
    np.testing.assert_array_equal(a, read_tif(tmp_path / "single" / slide.stem / f"{slide.stem}.labels.tif"))
    # either the runs did not overlap (second skipped) or one was refused
    assert codes == [0, 0] and any("skipped" in o or "already done" in o for o in outs) or \
        codes == [0, 1] and any("another pathseg run" in o for o in outs), outs


def read_tif(path: Path) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return tif.series[0].levels[0].asarray()


# -- 6. records: removed first, written last; one run id; --overwrite --------------------------------------

def test_an_interrupted_rerun_with_other_settings_leaves_no_done_record(ckpt, slide, tmp_path):
    be = load_backend(ckpt, backend="torch")
    a = SlidePredictor(be, PredictConfig(tile=256, overlap=0.0))
    b = SlidePredictor(be, PredictConfig(tile=256, overlap=0.5))
    first = a.predict(slide, tmp_path)
    assert first["status"] == "done"
    rec_path = tmp_path / slide.stem / f"{slide.stem}.run.json"
    part = b.predict(slide, tmp_path, stop_after=1)
    assert part["status"] == "interrupted" and not rec_path.exists()  # nothing vouches for mixed outputs
    again = a.predict(slide, tmp_path)
    assert again["status"] == "done" and again["run_id"] != first["run_id"]  # recomputed, not "skipped"
    gj = json.loads((tmp_path / slide.stem / f"{slide.stem}.geojson").read_text())
    csv = (tmp_path / slide.stem / f"{slide.stem}.composition.csv").read_text()
    assert gj["properties"]["pathseg_run_id"] == again["run_id"] and again["run_id"] in csv
    assert a.predict(slide, tmp_path)["status"] == "skipped"
    forced = a.predict(slide, tmp_path, overwrite=True)
    assert forced["status"] == "done" and any("--overwrite" in w for w in forced["warnings"])
    other = b.predict(slide, tmp_path)
    assert any("replacing the outputs of run" in w and "other settings" in w for w in other["warnings"])


# -- 13. an interrupted slide keeps its progress; no hidden temporary survives ---------------------------

class _InterruptAfter:
    """A backend whose model raises KeyboardInterrupt on run ``n`` (as Ctrl-C would, mid-slide)."""

    map = Backend.map  # the predictor's loop, over this wrapper's run

    def __init__(self, be, n: int) -> None:
        self.be, self.n, self.calls = be, n, 0

    def __getattr__(self, k):
        return getattr(self.be, k)

    def run(self, prepared):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.be.run(prepared)


def test_ctrl_c_mid_slide_keeps_the_tiles_done_and_a_rerun_resumes(ckpt, slide, tmp_path):
    be = load_backend(ckpt, backend="torch")
    # no overlap: each tile is its own zarr chunk, so a resumed run redoes none of the tiles done before
    cfg = PredictConfig(tile=256, overlap=0.0, mpp=0.5, batch_size=2, checkpoint_every=10_000)
    with pytest.raises(KeyboardInterrupt):
        SlidePredictor(_InterruptAfter(be, 5), cfg).predict(slide, tmp_path / "cut")  # 4 calls: 1 + 2 + 2 + 2 tiles
    stale = tmp_path / "cut" / slide.stem / f".{slide.stem}.geojson.k3j2h1.tmp.geojson"  # as a killed writer leaves
    stale.write_text("{")
    rec = SlidePredictor(be, cfg).predict(slide, tmp_path / "cut")
    assert rec["status"] == "done" and rec["tiles"]["resumed"]
    assert rec["tiles"]["run"] == rec["tiles"]["grid_with_tissue"] - 7
    whole = SlidePredictor(be, cfg).predict(slide, tmp_path / "whole")
    np.testing.assert_array_equal(read_tif(Path(rec["outputs"]["labels"])), read_tif(Path(whole["outputs"]["labels"])))
    assert not stale.exists() and not list((tmp_path / "cut" / slide.stem).glob(".*.lock"))


# -- 8. files honour the umask ----------------------------------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_written_files_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        p = write_json(tmp_path / "r.json", {"a": 1})
        q = write_image(tmp_path / "l.png", np.zeros((4, 4), np.uint8))
    finally:
        os.umask(old)
    assert p.stat().st_mode & 0o777 == mode and q.stat().st_mode & 0o777 == mode


# -- 9. QuPath GeoJSON: valid, non-empty, areas as the label map ----------------------------------------

def test_geojson_of_a_real_slide_is_valid_non_empty_and_keeps_the_areas(shared_data, ckpt, tmp_path):
    from shapely.geometry import shape

    from pathseg.inference.writers import label_polygons

    cmu = real_slide(shared_data, "cmu")
    img = read_image(cmu)  # level 0 (2220 x 2967), Pillow/tifffile
    # a label map with real tissue's ragged edges and 1-px strands: three bands of haematoxylin darkness
    grey = img.astype(np.float32).mean(2)
    labels = np.digitize(grey, [120, 170, 215]).astype(np.uint8)  # 0 darkest ... 3 glass
    labels = 3 - labels  # 0 = glass ("background")
    names, colors = ["background", "dark", "mid", "light"], [[0, 0, 0], [200, 0, 0], [0, 200, 0], [0, 0, 200]]
    feats = label_polygons(labels, names, colors, scale=1.0)
    geoms = [shape(f["geometry"]) for f in feats]
    assert len(geoms) > 500
    assert all(g.is_valid for g in geoms) and not any(g.is_empty or g.area == 0 for g in geoms)
    for k in (1, 2, 3):
        area = sum(g.area for g, f in zip(geoms, feats) if f["properties"]["classification"]["name"] == names[k])
        assert area == pytest.approx((labels == k).sum(), rel=0.01), names[k]
    # --min-area leaves the specks out; one MultiPolygon per class on request
    big = label_polygons(labels, names, colors, min_area=50.0)
    assert len(big) < len(feats) and all(shape(f["geometry"]).area >= 50 for f in big)
    multi = label_polygons(labels, names, colors, multipolygon=True)
    assert [f["geometry"]["type"] for f in multi] == ["MultiPolygon"] * 3
    simple = label_polygons(labels, names, colors, simplify=1.0)
    assert all(shape(f["geometry"]).is_valid for f in simple)
    assert sum(len(json.dumps(f)) for f in simple) < sum(len(json.dumps(f)) for f in feats)


def test_slide_geojson_features_are_valid_and_cells_are_detections(shared_data, ckpt, tmp_path):
    from shapely.geometry import shape

    from wsi_helpers import colour_backend

    cmu = real_slide(shared_data, "cmu")
    # the brightness model: glass against tissue with the ragged edges of a real slide, at 1 µm/px
    rec = SlidePredictor(colour_backend(mpp=1.0), PredictConfig(tile=256, overlap=0.0, min_area_um2=0.0)).predict(
        cmu, tmp_path)
    gj = json.loads((tmp_path / cmu.stem / f"{cmu.stem}.geojson").read_text())
    geoms = [shape(f["geometry"]) for f in gj["features"]]
    assert len(geoms) > 20 and all(g.is_valid and not g.is_empty for g in geoms)
    level0_px = sum(g.area for g in geoms)
    map_px = rec["class_pixels"]["tissue"] * (rec["output_mpp"] / rec["slide_info"]["mpp"]) ** 2
    assert level0_px == pytest.approx(map_px, rel=0.01)
    assert {f["properties"]["objectType"] for f in gj["features"]} == {"annotation"}
    cells = SlidePredictor(_Named(load_backend(ckpt, backend="torch"), ["background", "nucleus"]))
    assert cells.object_type() == "detection"


class _Named:
    def __init__(self, be, names):
        self.be, self.info = be, dict(be.info, class_names=names)

    def __getattr__(self, k):
        return getattr(self.be, k)


# -- 10. overlays carry a legend ---------------------------------------------------------------------------

def test_overlays_have_a_class_colour_legend(ckpt, tmp_path):
    write_image(tmp_path / "in" / "t.png", np.full((64, 96, 3), 200, np.uint8))
    r = invoke("predict", tmp_path / "in", "--checkpoint", ckpt, "--out", tmp_path / "o")
    assert r.exit_code == 0, r.output
    ov = read_image(tmp_path / "o" / "t_overlay.png")
    assert ov.shape[0] > 64 and ov.shape[1] >= 240  # the legend strip below the image
    strip = ov[64:]
    from pathseg.models.checkpoint import load_model

    info = load_model(ckpt)[1]
    for color in info["colors"]:  # each class has its swatch
        assert (strip == np.asarray(color[:3], np.uint8)).all(-1).sum() >= 100, color


# -- 12, 14. options the messages point to exist; an exported .onnx predicts images; one ONNX cache per user --

def test_onnx_model_predicts_images_and_the_export_cache_is_per_user(ckpt, slide, tmp_path, monkeypatch):
    monkeypatch.setenv("PATHSEG_CACHE", str(tmp_path / "cache"))
    img = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    write_image(tmp_path / "in" / "t.png", img)
    r = invoke("export-onnx", ckpt, "--out", tmp_path)  # a folder: <stem>.onnx inside
    assert r.exit_code == 0, r.output
    onnx = tmp_path / "m.onnx"
    r = invoke("predict", tmp_path / "in", "--checkpoint", onnx, "--out", tmp_path / "via-onnx")
    assert r.exit_code == 0, r.output
    r = invoke("predict", tmp_path / "in", "--checkpoint", ckpt, "--out", tmp_path / "via-torch")
    a = read_image(tmp_path / "via-onnx" / "t.png", mode=None)
    b = read_image(tmp_path / "via-torch" / "t.png", mode=None)
    assert (a == b).mean() > 0.999
    r = invoke("predict", slide, "--checkpoint", ckpt, "--out", tmp_path / "s", "--tile", "256", "--backend", "onnx",
               "--min-tissue", "0.2", "--tissue-method", "saturation")
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "s" / slide.stem / f"{slide.stem}.run.json").read_text())
    assert rec["config"]["min_tissue"] == 0.2 and rec["config"]["tissue_method"] == "saturation"
    assert list((tmp_path / "cache" / "onnx").glob("m-*.onnx")) and not list((tmp_path / "s").rglob("*.onnx"))


# -- 15. image prediction uses resolution ------------------------------------------------------------------

def test_an_image_that_records_its_mpp_is_resized_to_the_models(ckpt, tmp_path):
    import tifffile

    from pathseg.inference.images import predict_images

    img = np.random.default_rng(2).integers(0, 255, (128, 160, 3), dtype=np.uint8)
    tif = tmp_path / "in" / "x40.tif"
    tif.parent.mkdir()
    # 0.5 µm/px in the tags; the model was trained at 2.0 µm/px: a quarter of the size goes in
    tifffile.imwrite(tif, img, photometric="rgb", resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    auto = predict_images([tif], ckpt, tmp_path / "auto")[0]
    assert auto["scale"] == pytest.approx(0.25) and "resolution tags" in auto["scale_from"]
    given = predict_images([tif], ckpt, tmp_path / "given", scale=0.25)[0]
    np.testing.assert_array_equal(read_image(auto["labels"], mode=None), read_image(given["labels"], mode=None))
    assert read_image(auto["labels"], mode=None).shape == (128, 160)
    same = predict_images([tif], ckpt, tmp_path / "same", image_mpp_override=2.0)[0]
    assert same["scale"] == 1.0
    png = write_image(tmp_path / "in2" / "x.png", img)  # no MPP recorded: as it is
    assert predict_images([png], ckpt, tmp_path / "png")[0]["scale"] == 1.0


def test_a_mistyped_checkpoint_on_a_slide_is_one_line_and_creates_nothing(slide, tmp_path):
    r = invoke("predict", slide, "--checkpoint", tmp_path / "typo.ckpt", "--out", tmp_path / "out")
    assert r.exit_code == 2 and "typo.ckpt: checkpoint not found" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "out").exists()
