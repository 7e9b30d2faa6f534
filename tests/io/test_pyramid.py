"""The label pyramid opens in OpenSlide (as QuPath does) with MPP and colours, and keeps class indices."""

from __future__ import annotations

import numpy as np
import pytest

from pathseg.io.pyramid import level_shapes, read_level0, write_label_pyramid
from pathseg.io.slides import open_slide


def test_label_pyramid_round_trip(tmp_path):
    import openslide
    import tifffile
    import zarr

    rng = np.random.default_rng(0)
    labels = np.kron(rng.integers(0, 3, (24, 35)), np.ones((50, 40), np.uint8)).astype(np.uint8)  # 1200 x 1400
    z = zarr.create_array(store=str(tmp_path / "l.zarr"), shape=labels.shape, chunks=(256, 256), dtype="u1")
    z[:] = labels
    colors = [[230, 230, 230], [220, 40, 60], [60, 160, 60]]
    path = write_label_pyramid(tmp_path / "labels.tif", z, mpp=0.5, colors=colors, class_names=["bg", "a", "b"],
                               tile=256)
    np.testing.assert_array_equal(read_level0(path), labels)
    assert level_shapes(1200, 1400, 256) == [(1200, 1400), (600, 700), (300, 350), (150, 175)]
    with tifffile.TiffFile(path) as tif:
        levels = tif.series[0].levels
        assert len(levels) == 4 and tif.pages[0].is_tiled
        np.testing.assert_array_equal(levels[2].asarray(), labels[::4, ::4])
    s = openslide.OpenSlide(str(path))
    assert s.properties["openslide.mpp-x"] == "0.5" and s.level_count == 4
    px = np.asarray(s.read_region((40 * 7 + 5, 50 * 3 + 5), 0, (1, 1)))[0, 0, :3]
    assert px.tolist() == colors[labels[50 * 3 + 5, 40 * 7 + 5]]
    with open_slide(path) as r:  # pathseg reads it back as a slide with its MPP
        assert r.mpp == pytest.approx(0.5) and r.level_count == 4
