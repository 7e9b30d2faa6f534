"""Batches of slides through predict_slides: bad inputs fail alone with clear messages, good slides finish,
finished outputs survive; the three real slides run end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
from wsi_fixtures import blank_slide, real_slide, synthetic_slide, truncated_copy  # noqa: E402
from wsi_helpers import colour_backend, tiny_checkpoint  # noqa: E402

from pathseg.cli.slides import is_slide, predict_slides  # noqa: E402
from pathseg.errors import DataError  # noqa: E402
from pathseg.inference import PredictConfig, SlidePredictor  # noqa: E402
from pathseg.io.slides import TiffSlideReader  # noqa: E402


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt", mpp=2.0)


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    d = tmp_path_factory.mktemp("batch")
    good, _ = synthetic_slide(d, 1024, seed=1, truth=False)
    other, _ = synthetic_slide(d, 1024, seed=3, truth=False)
    bad = d / "random.svs"
    bad.write_bytes(np.random.default_rng(0).integers(0, 255, 4000, dtype=np.uint8).tobytes())
    (d / "notes.xyz").write_text("not a slide")
    return {"good": good, "other": other, "truncated": truncated_copy(good, d / "truncated.tiff", 0.5),
            "random": bad, "unsupported": d / "notes.xyz", "blank": blank_slide(d / "blank.tiff")}


def test_bad_slides_fail_alone_and_finished_outputs_survive(ckpt, slides, tmp_path):
    out = tmp_path / "out"
    first = predict_slides([slides["good"]], ckpt, out, tile=128, overlap=0.5, backend="torch", show_progress=False)
    assert first[0]["status"] == "done"
    labels = Path(first[0]["outputs"]["labels"])
    before = labels.read_bytes()
    (out / slides["other"].stem).write_text("a file where the slide's output folder should go")
    order = ["truncated", "random", "unsupported", "blank", "good", "other"]
    rows = predict_slides([slides[k] for k in order], ckpt, out, tile=128, overlap=0.5, backend="torch",
                          show_progress=False)
    st = {k: r for k, r in zip(order, rows)}
    assert st["good"]["status"] == "skipped" and labels.read_bytes() == before
    assert st["truncated"]["status"] == "failed" and "truncated or corrupt" in st["truncated"]["error"]
    assert st["random"]["status"] == "failed" and "cannot open this slide" in st["random"]["error"]
    assert st["unsupported"]["status"] == "failed" and "Supported formats" in st["unsupported"]["error"]
    assert st["blank"]["status"] == "failed" and "no tissue found" in st["blank"]["error"]
    assert st["other"]["status"] == "failed" and "cannot write" in st["other"]["error"]
    for k in ("truncated", "random", "blank"):  # a failed slide leaves no run record
        assert not (out / slides[k].stem / f"{slides[k].stem}.run.json").exists()


def test_unwritable_output_folder_is_refused_before_any_slide(ckpt, slides, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataError, match="output folder is not writable"):
        predict_slides([slides["good"]], ckpt, blocker / "out", show_progress=False)


def test_a_tile_that_cannot_be_read_is_left_out_and_reported(slides, tmp_path, monkeypatch):
    orig = TiffSlideReader._read_level

    def flaky(self, level, x, y, w, h):
        if level == 0 and (x, y) == (256, 256):
            raise ValueError("simulated decoder failure")
        return orig(self, level, x, y, w, h)

    monkeypatch.setattr(TiffSlideReader, "_read_level", flaky)
    pred = SlidePredictor(colour_backend(), PredictConfig(tile=256, overlap=0.0, min_tissue=0.0))
    rec = pred.predict(slides["good"], tmp_path)
    assert rec["status"] == "done" and rec["tiles"]["failed"] == 1
    assert "simulated decoder failure" in rec["failed_tiles"][0]["error"]
    assert any("could not be read" in w for w in rec["warnings"])
    assert sum(rec["class_pixels"].values()) == 1024 * 1024 - 256 * 256  # that tile's area is not counted


def test_is_slide(slides, tmp_path):
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "t.png")
    assert is_slide(slides["good"]) and is_slide(tmp_path / "a.ndpi") and is_slide(tmp_path / "a.mrxs")
    assert not is_slide(tmp_path / "t.png")


def test_real_slides_end_to_end(ckpt, shared_data, tmp_path):
    cmu, tcga, kidney = (real_slide(shared_data, k) for k in ("cmu", "tcga", "kidney"))
    refused = predict_slides([tcga], ckpt, tmp_path, tile=128, backend="torch", show_progress=False)
    assert refused[0]["status"] == "failed" and "--slide-mpp" in refused[0]["error"]
    rows = predict_slides([cmu, tcga], ckpt, tmp_path, mpp=4.0, mpp_override=0.5, tile=256, overlap=0.5,
                          backend="torch", show_progress=False)  # 4 µm/px keeps it small: 4 and 6 tiles
    rows += predict_slides([kidney], ckpt, tmp_path, mpp=4.0, mpp_override=4.0, tile=64, overlap=0.5,
                           backend="torch", show_progress=False)
    for r in rows:
        assert r["status"] == "done", r.get("error")
        rec = json.loads(Path(r["outputs"]["labels"]).with_name(f"{Path(r['slide']).stem}.run.json").read_text())
        assert rec["tiles"]["run"] > 0 and sum(rec["class_pixels"].values()) > 0
        for key in ("labels", "geojson", "overlay", "composition", "tissue"):
            assert Path(r["outputs"][key]).is_file()
    assert rows[0]["slide_info"]["metadata_mpp"] == pytest.approx(0.499)
    assert rows[1]["slide_info"]["metadata_mpp"] is None and rows[1]["slide_info"]["mpp"] == 0.5
    assert rows[2]["slide_info"]["backend"] == "tifffile"


def test_dataloader_workers_give_the_same_maps(slides, tmp_path):
    from pathseg.io.pyramid import read_level0

    recs = [SlidePredictor(colour_backend(), PredictConfig(tile=256, overlap=0.0, min_tissue=0.0, workers=w)).predict(
        slides["good"], tmp_path / f"w{w}") for w in (0, 1)]
    np.testing.assert_array_equal(read_level0(recs[0]["outputs"]["labels"]), read_level0(recs[1]["outputs"]["labels"]))
