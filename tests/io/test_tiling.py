"""Tiling: the checked resolution config, grid coverage, tissue filtering and paired context/target sampling."""

from __future__ import annotations

import numpy as np
import pytest
from wsi_fixtures import synthetic_slide

from pathseg.errors import ConfigError
from pathseg.io.slides import open_slide
from pathseg.io.tiling import PairSpec, TilingConfig, axis_starts, grid_tiles, paired_grid, read_pair
from pathseg.io.tissue import TissueMask


@pytest.mark.parametrize("kw,msg", [
    (dict(overlap=1.0), "overlap must be a fraction in \\[0, 1\\)"),
    (dict(tile=8), "at least 16"),
    (dict(mpp=0), "positive number of microns"),
    (dict(min_tissue=2), "min_tissue"),
    (dict(tile=512, overlap=0.5, trim=200), "gaps between tiles.*\\[0, 128\\]"),
])
def test_config_is_checked_when_built(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        TilingConfig(**kw)


def test_stride_and_trim():
    c = TilingConfig(tile=512, overlap=0.5)
    assert c.stride == 256 and c.trim_px == 64
    assert TilingConfig(tile=512, overlap=0).trim_px == 0
    assert axis_starts(1000, 512, 256) == [0, 256, 488]
    assert axis_starts(300, 512, 256) == [0]


@pytest.mark.parametrize("size,tile,overlap", [((1000, 700), 256, 0.5), ((1024, 768), 256, 0.0), ((200, 90), 128, 0.25),
                                               ((1030, 515), 128, 0.75)])
def test_kept_boxes_cover_the_output_and_overlap_only_where_allowed(size, tile, overlap):
    cfg = TilingConfig(tile=tile, overlap=overlap, mpp=1.0, min_tissue=0)
    tiles = grid_tiles(None, cfg, slide_mpp=1.0, dimensions=size)
    cover = np.zeros(size[::-1], int)
    for t in tiles:
        x0, y0, x1, y1 = t.out_box
        assert t.x + t.size <= max(size[0], t.size) and t.y + t.size <= max(size[1], t.size)
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1
    if overlap == 0:
        assert cover.max() == 1


def test_grid_at_a_coarser_mpp_and_tissue_filter():
    tissue = TissueMask(np.zeros((64, 64), bool), mpp=8.0, scale=16.0, method="test")
    tissue.mask[:32, :32] = True  # top-left quarter of a 1024 px slide at 0.5 µm/px
    cfg = TilingConfig(tile=128, overlap=0.0, mpp=1.0, min_tissue=0.5)  # 512 x 512 output px
    all_tiles = grid_tiles(None, cfg, slide_mpp=0.5, dimensions=(1024, 1024))
    assert len(all_tiles) == 16 and all_tiles[5].x0 == 256 and all_tiles[5].y0 == 256
    kept = grid_tiles(None, cfg, slide_mpp=0.5, dimensions=(1024, 1024), tissue=tissue)
    assert [(t.x, t.y) for t in kept] == [(0, 0), (128, 0), (0, 128), (128, 128)]


def test_pair_spec_is_checked():
    with pytest.raises(ConfigError, match="use per_side <= 2"):
        PairSpec(context_size=256, context_mpp=1.0, target_size=256, target_mpp=0.5, per_side=4)
    with pytest.raises(ConfigError, match="coarser"):
        PairSpec(context_mpp=0.25, target_mpp=0.5)


@pytest.mark.parametrize("per_side", [2, 4])
def test_paired_tiles_are_aligned_and_padded(tmp_path, per_side):
    from pathseg.data.synth import render_region

    # the synthetic pyramid's level k is the virtual slide rendered at 0.5 * 2**k µm/px, so a tile read
    # at 1 or 2 µm/px must equal render_region at the same physical place: an exact alignment check
    path, _ = synthetic_slide(tmp_path, 1024, seed=1, truth=False)
    target = 64 if per_side == 4 else 128
    spec = PairSpec(context_size=256, context_mpp=2.0, target_size=target, target_mpp=1.0, per_side=per_side,
                    min_tissue=0)
    with open_slide(path) as s:
        pairs = paired_grid(s, spec)
        assert len(pairs) == 4 and all(len(p.target_origins) == per_side**2 for p in pairs)  # 256 µm blocks of 512 µm
        p = pairs[3]
        r = read_pair(s, spec, p)
        assert r["context"].shape == (256, 256, 3) and r["targets"].shape == (per_side**2, target, target, 3)
        cx, cy = p.context_origin  # level-0 px (0.5 µm/px)
        assert (cx, cy) == (256.0, 256.0)  # the 256 µm block at (512, 512) centred in a 512 µm context
        inside = render_region(64, 64, 192, 192, seed=1, mpp=2.0)["image"]  # the slide ends 192 context px in
        np.testing.assert_array_equal(r["context"][:192, :192], inside)
        assert (r["context"][192:] == 255).all() and (r["context"][:, 192:] == 255).all()
        for k, ((x, y), (ox, oy)) in enumerate(zip(p.target_origins, r["offsets"])):
            want = render_region(int(x) // 2, int(y) // 2, target, target, seed=1, mpp=1.0)["image"]
            np.testing.assert_array_equal(r["targets"][k], want)
            assert (ox, oy) == ((x - cx) / 4, (y - cy) / 4)  # level-0 px -> context px
        assert r["offsets"][0].tolist() == [64.0, 64.0]
        corner = read_pair(s, spec, pairs[0])["context"]  # context origin (-256, -256): padded white
        assert (corner[:64] == 255).all() and (corner[:, :64] == 255).all()
        np.testing.assert_array_equal(corner[64:, 64:], render_region(0, 0, 192, 192, seed=1, mpp=2.0)["image"])
