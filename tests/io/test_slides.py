"""Slide readers: level choice and resampling against the stored pyramid, the MPP policy, real slides, bad files."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from wsi_fixtures import level_array, real_slide, synthetic_slide, truncated_copy

from pathseg.errors import MPPError, SlideError
from pathseg.io.slides import is_slide_file, open_slide


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return synthetic_slide(tmp_path_factory.mktemp("slides"), 1024, truth=False)[0]


@pytest.mark.parametrize("backend", ["tifffile", "openslide"])
def test_reads_levels_exactly_at_their_mpp(synth, backend):
    lv0, lv1 = level_array(synth, 0), level_array(synth, 1)
    with open_slide(synth, backend=backend) as s:
        assert s.mpp == pytest.approx(0.5)
        assert s.level_count == 3 and s.dimensions == (1024, 1024)
        assert s.best_level(0.5) == 0 and s.best_level(1.0) == 1 and s.best_level(1.5) == 1 and s.best_level(9) == 2
        np.testing.assert_array_equal(s.read_region(96, 160, 200, 100, mpp=0.5), lv0[160:260, 96:296])
        # level-0 (200, 320) is level-1 (100, 160)
        np.testing.assert_array_equal(s.read_region(200, 320, 64, 48, mpp=1.0), lv1[160:208, 100:164])


def test_resamples_between_levels_and_pads_outside(synth):
    import cv2

    lv0 = level_array(synth, 0)
    with open_slide(synth) as s:
        got = s.read_region(0, 0, 512, 512, mpp=0.75)  # from level 0, shrunk by 1.5
        want = cv2.resize(lv0[:768, :768], (512, 512), interpolation=cv2.INTER_AREA)
        assert got.shape == (512, 512, 3)
        assert np.abs(got.astype(int) - want).mean() < 1.0
        corner = s.read_region(-100, 1000, 200, 100, mpp=0.5)
        assert (corner[:, :100] == 255).all() and (corner[24:] == 255).all()
        np.testing.assert_array_equal(corner[:24, 100:], lv0[1000:1024, :100])


def test_mpp_policy(synth, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert open_slide(synth, mpp_override=0.51).mpp == 0.51  # within 5%: silent
    with pytest.warns(UserWarning, match=r"differs from the metadata value 0.5 by 20%"):
        assert open_slide(synth, mpp_override=0.6).mpp == 0.6
    with pytest.raises(MPPError, match="positive"):
        open_slide(synth, mpp_override=-1)


def test_readers_survive_pickling(synth):
    import pickle

    with open_slide(synth, mpp_override=0.5) as s:
        s2 = pickle.loads(pickle.dumps(s))
        np.testing.assert_array_equal(s2.read_region(10, 10, 32, 32, mpp=0.5), s.read_region(10, 10, 32, 32, mpp=0.5))


def test_bad_files_get_clear_messages(synth, tmp_path):
    bad = tmp_path / "random.svs"
    bad.write_bytes(np.random.default_rng(0).integers(0, 255, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(SlideError, match="cannot open this slide.*Supported formats"):
        open_slide(bad)
    txt = tmp_path / "notes.txt"
    txt.write_text("not a slide")
    with pytest.raises(SlideError, match="Supported formats"):
        open_slide(txt)
    with pytest.raises(SlideError, match="not found"):
        open_slide(tmp_path / "missing.svs")
    cut = truncated_copy(synth, tmp_path / "cut.tiff", 0.5)
    with pytest.raises(SlideError, match="truncated or corrupt"):
        with open_slide(cut) as s:  # opens (the header is intact) but the tiles are gone
            s.read_region(0, 0, 1024, 1024, mpp=0.5)


def test_is_slide_file(synth, tmp_path):
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "tile.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "tile.tif")
    assert is_slide_file(synth)
    assert is_slide_file(tmp_path / "x.svs")  # by format
    assert not is_slide_file(tmp_path / "tile.png")
    assert not is_slide_file(tmp_path / "tile.tif")


# ---- the three real slides in ../shared/data/slides ------------------------------------------------

def test_real_svs_with_mpp(shared_data):
    with open_slide(real_slide(shared_data, "cmu")) as s:
        assert s.backend == "openslide" and s.mpp == pytest.approx(0.499) and s.dimensions == (2220, 2967)
        tile = s.read_region(1000, 1000, 256, 256, mpp=1.0)
        assert tile.shape == (256, 256, 3) and 50 < tile.mean() < 250


def test_real_jpeg2000_svs_without_mpp_is_refused_then_read_with_override(shared_data):
    path = real_slide(shared_data, "tcga")
    with pytest.raises(MPPError, match=r"no resolution.*--slide-mpp 0\.5.*mpp_override=0\.5"):
        open_slide(path)
    a = open_slide(path, mpp_override=0.5, backend="openslide")
    b = open_slide(path, mpp_override=0.5, backend="tifffile")  # imagecodecs' JPEG 2000
    assert a.level_count == 2 and a.mpp == 0.5 and a.metadata_mpp is None
    ta, tb = a.read_region(1000, 1000, 256, 256, mpp=0.5), b.read_region(1000, 1000, 256, 256, mpp=0.5)
    assert np.abs(ta.astype(int) - tb).max() <= 2 and ta.std() > 10  # same pixels, real content


def test_real_plain_tiff(shared_data):
    path = real_slide(shared_data, "kidney")
    with pytest.raises(MPPError):
        open_slide(path)
    with open_slide(path, mpp_override=4.0) as s:  # OpenSlide refuses plain TIFF; tifffile reads it
        assert s.backend == "tifffile" and s.dimensions == (1493, 901)
        assert s.read_all(8.0).shape == (451, 747, 3)


def test_big_shrinks_from_a_single_level_are_read_in_bands(tmp_path, monkeypatch):
    import tifffile

    import pathseg.io.slides as slides

    img = np.random.default_rng(0).integers(0, 255, (600, 900, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "plain.tif", img)
    with open_slide(tmp_path / "plain.tif", mpp_override=1.0) as s:
        whole = s.read_all(6.0)
        monkeypatch.setattr(slides, "MAX_SOURCE_PIXELS", 120 * 120)
        np.testing.assert_array_equal(s.read_all(6.0), whole)
        assert whole.shape == (100, 150, 3)


@pytest.mark.parametrize("real", [False, True])
def test_small_tiff_levels_read_whole_give_the_stored_pixels(tmp_path, monkeypatch, shared_data, real):
    """A small level is decoded once and sliced; a large one is read region by region: both give the file's pixels."""
    import tifffile

    import pathseg.io.slides as slides

    if real:  # MoNuSeg: 1000 x 1000 LZW strips of 2 rows
        path = sorted((shared_data / "monuseg2018" / "train" / "images").glob("*.tif"))[:1]
        if not path:
            pytest.skip("MoNuSeg not in ../shared")
        path = path[0]
    else:
        path = tmp_path / "strips.tif"
        tifffile.imwrite(path, np.random.default_rng(1).integers(0, 255, (300, 500, 3), dtype=np.uint8),
                         rowsperstrip=2, compression="zlib")
    stored = tifffile.imread(path)
    boxes = [(0, 0, 64, 64), (37, 101, 128, 96), (stored.shape[1] - 50, stored.shape[0] - 20, 50, 20)]
    for small in (slides.SMALL_LEVEL_PIXELS, 0):  # 0: every level counts as large
        monkeypatch.setattr(slides, "SMALL_LEVEL_PIXELS", small)
        with open_slide(path, mpp_override=0.25) as s:
            for x, y, w, h in boxes:
                np.testing.assert_array_equal(s.read_level_region(0, x, y, w, h), stored[y:y + h, x:x + w])
            assert bool(s._whole) == bool(small)
