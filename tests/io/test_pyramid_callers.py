"""One pyramid-TIFF writer: the synthetic slide of ``pathseg synth --slide`` and the label pyramid of a slide
prediction are both written page by page by :func:`pathseg.io.pyramid.write_pyramid`, and read back with
tifffile (and OpenSlide) with the levels, tile size and MPP they should have; no other module in the package,
scripts/ or benchmarks/ writes TIFF pages itself."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inference"))
from wsi_helpers import colour_backend  # noqa: E402

from pathseg.cli.main import app  # noqa: E402
from pathseg.data.synth import render_region  # noqa: E402
from pathseg.inference import PredictConfig, SlidePredictor  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
WRITER = ROOT / "pathseg" / "io" / "pyramid.py"


@pytest.fixture
def tiff_pages(monkeypatch):
    """Every ``TiffWriter.write`` call from now on, as ``(calling file, page shape)``."""
    calls: list[tuple[Path, tuple]] = []
    real = tifffile.TiffWriter.write

    def spy(self, data=None, *args, **kwargs):
        caller = Path(sys._getframe(1).f_code.co_filename).resolve()
        calls.append((caller, tuple(kwargs.get("shape") or np.shape(data))))
        return real(self, data, *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffWriter, "write", spy)
    return calls


def _mpp(page) -> float:
    """µm/px from the page's resolution tags (pixels per centimetre)."""
    assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
    num, den = page.tags["XResolution"].value
    return 1e4 / (num / den)


def test_synth_slide_and_label_pyramid_come_from_the_one_writer(tmp_path, tiff_pages):
    import openslide

    # the slide: 1200 px at 0.5 µm/px halves once (1200 -> 600, under 1024), so two levels + a thumbnail page
    slide = tmp_path / "s.tif"
    res = CliRunner().invoke(app, ["synth", str(slide), "--slide", "--size", "1200", "--seed", "3", "--mpp", "0.5"])
    assert res.exit_code == 0, res.output
    assert [c for c, _ in tiff_pages] == [WRITER] * 3
    assert [s for _, s in tiff_pages] == [(1200, 1200, 3), (600, 600, 3), (600, 600, 3)]  # level 0, thumbnail, 1
    with tifffile.TiffFile(slide) as tif:
        levels = tif.series[0].levels
        assert [lv.shape for lv in levels] == [(1200, 1200, 3), (600, 600, 3)]
        assert [(p.tilewidth, p.tilelength) for p in (levels[0].pages[0], levels[1].pages[0])] == [(512, 512)] * 2
        assert [_mpp(lv.pages[0]) for lv in levels] == pytest.approx([0.5, 1.0])
        assert re.search(r"\|MPP = 0\.5\|", tif.pages[0].description)
        # level k is the renderer at mpp * 2^k (an independent reference: the renderer, not the writer)
        np.testing.assert_array_equal(levels[1].asarray()[100:228, 300:428],
                                      render_region(300, 100, 128, 128, seed=3, mpp=1.0)["image"])
        np.testing.assert_array_equal(levels[0].asarray()[700:764, 1100:1200],
                                      render_region(1100, 700, 100, 64, seed=3, mpp=0.5)["image"])
    s = openslide.OpenSlide(str(slide))
    assert s.properties["openslide.vendor"] == "aperio" and s.properties["openslide.mpp-x"] == "0.5"
    assert s.level_count == 2

    # the label pyramid of a slide prediction: 1200 -> 600 -> 300 (halved until one 512 px tile holds it)
    tiff_pages.clear()
    cfg = PredictConfig(tile=256, overlap=0.0, batch_size=4, min_tissue=0.0)
    rec = SlidePredictor(colour_backend(0.5), cfg).predict(slide, tmp_path / "out")
    assert rec["status"] == "done", rec
    labels_path = Path(rec["outputs"]["labels"])
    assert tiff_pages and {c for c, _ in tiff_pages} == {WRITER}
    assert [s for _, s in tiff_pages] == [(1200, 1200), (600, 600), (300, 300)]
    with tifffile.TiffFile(labels_path) as tif:
        levels = tif.series[0].levels
        assert [lv.shape for lv in levels] == [(1200, 1200), (600, 600), (300, 300)]
        pages = [lv.pages[0] for lv in levels]
        assert {(p.tilewidth, p.tilelength) for p in pages} == {(512, 512)}
        assert [_mpp(p) for p in pages] == pytest.approx([0.5, 1.0, 2.0])
        assert [p.subfiletype for p in pages] == [0, 1, 1]  # generic layout: reduced levels marked
        assert pages[0].photometric == tifffile.PHOTOMETRIC.PALETTE
        lab = levels[0].asarray()
        assert set(np.unique(lab)) <= {0, 1}
        np.testing.assert_array_equal(levels[2].asarray(), lab[::4, ::4])
    s = openslide.OpenSlide(str(labels_path))
    assert s.properties["openslide.mpp-x"] == "0.5" and s.level_count == 3


def test_the_writer_rejects_what_a_tiff_cannot_hold(tmp_path):
    from pathseg.errors import ConfigError
    from pathseg.io.pyramid import write_pyramid

    img = np.zeros((40, 40), np.uint8)
    with pytest.raises(ConfigError, match="multiple of 16"):
        write_pyramid(tmp_path / "a.tif", img, mpp=0.5, tile=24)
    with pytest.raises(ConfigError, match="needs shapes"):
        write_pyramid(tmp_path / "b.tif", lambda k, x, y, w, h: img[:h, :w], mpp=0.5)
    with pytest.raises(ConfigError, match="aperio"):
        write_pyramid(tmp_path / "c.tif", img, mpp=0.5, thumbnail=img)
    assert not list(tmp_path.iterdir())  # nothing half-written


# Writers of TIFF pages outside pathseg/io/pyramid.py that remain because the file is owned elsewhere; each says
# what removes it. The test fails when an entry is no longer needed, so the list only shrinks.
KNOWN_OTHER_WRITERS = {
    "benchmarks/wsi_inference.py":
        "the MONAI/TIAToolbox arms save their labels with tifffile.imwrite: they run in the anchors' venv, which has "
        "no pathseg (docs/anchors.md), so that writer stays.",
}


def test_no_other_module_writes_tiff_pages():
    pattern = re.compile(r"TiffWriter\(|tifffile\.imwrite\(|\bimwrite\(.*\.tif")
    found = set()
    for folder in ("pathseg", "scripts", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path != WRITER and pattern.search(path.read_text()):
                found.add(path.relative_to(ROOT).as_posix())
    assert found - set(KNOWN_OTHER_WRITERS) == set(), "write TIFF pages through pathseg.io.pyramid.write_pyramid"
    assert set(KNOWN_OTHER_WRITERS) - found == set(), "fixed: remove from KNOWN_OTHER_WRITERS"
