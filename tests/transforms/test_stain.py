"""Colour deconvolution, HED jitter and stain normalisation, checked against Beer–Lambert and synthetic centres."""

from __future__ import annotations

import numpy as np
import pytest

from pathseg.data.synth import centre_stains, render_region
from pathseg.errors import ConfigError, DataError, UnknownNameError
from pathseg.transforms import (
    RUIFROK_HED,
    STAIN_NORMALIZERS,
    HEDJitter,
    MacenkoNormalizer,
    ReinhardNormalizer,
    build_transforms,
    create_stain_normalizer,
    hed_to_rgb,
    rgb_to_hed,
)
from pathseg.transforms.stain import MIN_TISSUE_PIXELS


def test_ruifrok_matrix_is_the_published_one_normalised():
    raw = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
    for row, want in zip(RUIFROK_HED, raw):
        assert np.linalg.norm(row) == pytest.approx(1.0)
        np.testing.assert_allclose(row, want / np.sqrt((want**2).sum()))


def test_deconvolution_round_trip_and_a_known_pixel():
    rng = np.random.default_rng(0)
    img = rng.integers(1, 256, size=(32, 32, 3)).astype(np.uint8)
    back = hed_to_rgb(rgb_to_hed(img))
    assert np.abs(back.astype(int) - img).max() <= 1
    # a pixel made of 0.8 hematoxylin and 0.3 eosin by hand: I = 255 exp(-(0.8 v_H + 0.3 v_E))
    vh = np.array([0.65, 0.70, 0.29]) / np.linalg.norm([0.65, 0.70, 0.29])
    ve = np.array([0.07, 0.99, 0.11]) / np.linalg.norm([0.07, 0.99, 0.11])
    pix = np.rint(255 * np.exp(-(0.8 * vh + 0.3 * ve))).astype(np.uint8)
    c = rgb_to_hed(pix[None, None])[0, 0]
    np.testing.assert_allclose(c, [0.8, 0.3, 0.0], atol=0.03)


def test_hed_jitter():
    rng = np.random.default_rng(0)
    img = render_region(0, 0, 48, 48, seed=2)["image"]
    s = {"image": img, "mask": np.zeros((48, 48), np.int64)}
    same = HEDJitter(sigma=0.0)(s, rng)
    assert np.abs(same["image"].astype(int) - img).max() <= 1
    moved = HEDJitter(sigma=0.2)(s, rng)
    assert np.abs(moved["image"].astype(int) - img).mean() > 1
    assert moved["mask"] is s["mask"]
    with pytest.raises(ConfigError):
        HEDJitter(sigma=-1)


def _angle_ok(est: np.ndarray, true: np.ndarray, cos_min: float = 0.97) -> bool:
    return float(est @ true / np.linalg.norm(est) / np.linalg.norm(true)) > cos_min


@pytest.mark.parametrize("src_centre, tgt_centre", [(0, 1), (2, 0), (3, 1)])
def test_macenko_moves_a_centre_toward_another(src_centre, tgt_centre):
    target = render_region(20000, 500, 256, 256, seed=0, centre=tgt_centre)["image"]  # other tissue
    src = render_region(2000, 3000, 192, 192, seed=0, centre=src_centre)["image"]
    ref = render_region(2000, 3000, 192, 192, seed=0, centre=tgt_centre)["image"]  # same tissue, target stains
    norm = MacenkoNormalizer().fit(target)
    true = centre_stains(tgt_centre)[0]
    assert _angle_ok(norm.stain_matrix_[0], true[0]) and _angle_ok(norm.stain_matrix_[1], true[1])
    out = norm.transform(src)
    assert out.shape == src.shape and out.dtype == np.uint8
    before = np.abs(src.astype(float) - ref).mean()
    after = np.abs(out.astype(float) - ref).mean()
    assert after < 0.7 * before, (before, after)


def test_too_little_tissue():
    blank = np.full((40, 40, 3), 250, np.uint8)
    blank[:3, :3] = (90, 60, 150)  # 9 tissue pixels < MIN_TISSUE_PIXELS
    assert 9 < MIN_TISSUE_PIXELS
    with pytest.raises(DataError, match=f"only 9 tissue pixels.*at least {MIN_TISSUE_PIXELS}.*fallback='identity'"):
        MacenkoNormalizer().fit(blank)
    tissue = render_region(2000, 3000, 96, 96, seed=0, centre=1)["image"]
    with pytest.raises(DataError, match="tissue pixels"):
        MacenkoNormalizer().fit(tissue).transform(blank)
    kept = MacenkoNormalizer(fallback="identity").fit(tissue).transform(blank)
    np.testing.assert_array_equal(kept, blank)
    with pytest.raises(ConfigError, match="before fit"):
        MacenkoNormalizer().transform(tissue)
    with pytest.raises(ConfigError):
        MacenkoNormalizer(fallback="skip")


def test_registry_and_sample_transform():
    assert {"macenko", "reinhard"} <= set(STAIN_NORMALIZERS)
    assert isinstance(create_stain_normalizer("reinhard"), ReinhardNormalizer)
    with pytest.raises(UnknownNameError, match="Did you mean 'macenko'"):
        create_stain_normalizer("macenco")
    target = render_region(20000, 500, 128, 128, seed=0, centre=2)["image"]
    pipe = build_transforms([{"name": "stain_normalize", "method": "macenko", "target": target}])
    s = {"image": render_region(2000, 3000, 96, 96, seed=0, centre=0)["image"], "mask": np.zeros((96, 96), np.int64)}
    out = pipe(s, np.random.default_rng(0))
    assert out["image"].shape == (96, 96, 3) and out["mask"] is s["mask"]
    assert not np.array_equal(out["image"], s["image"])


def test_macenko_state_round_trip_transforms_identically():
    import json

    target = render_region(20000, 500, 128, 128, seed=0, centre=2)["image"]
    src = render_region(2000, 3000, 96, 96, seed=0, centre=0)["image"]
    norm = MacenkoNormalizer(beta=0.2, alpha=2.0, fallback="identity").fit(target, reference="centre-2 tile")
    state = json.loads(json.dumps(norm.state()))  # as stored in ONNX metadata
    back = MacenkoNormalizer.from_state(state)
    assert state["method"] == "macenko" and back.reference == "centre-2 tile"
    assert (back.beta, back.alpha, back.fallback) == (0.2, 2.0, "identity")
    np.testing.assert_array_equal(back.transform(src), norm.transform(src))
    with pytest.raises(ConfigError, match="before fit"):
        MacenkoNormalizer().state()
    with pytest.raises(DataError, match="written by MacenkoNormalizer.state"):
        MacenkoNormalizer.from_state({"method": "macenko", "stain_matrix": [[1, 0, 0]]})


def test_macenko_state_round_trip_on_a_real_image(shared_dataset):
    from pathseg.io.files import read_image

    files = sorted((shared_dataset("glas") / "train" / "images").iterdir())
    norm = MacenkoNormalizer(fallback="identity").fit(read_image(files[0]))
    tile = read_image(files[1])[:128, :128]
    np.testing.assert_array_equal(MacenkoNormalizer.from_state(norm.state()).transform(tile), norm.transform(tile))


@pytest.mark.parametrize("tile", ["white", "black", "uniform", "grey noise"])
def test_macenko_leaves_blank_and_one_colour_tiles_unchanged(tile):
    # one colour only: the two estimated stains coincide and least squares would blow up (1e7 concentrations)
    rng = np.random.default_rng(0)
    image = {"white": np.full((64, 64, 3), 255, np.uint8), "black": np.zeros((64, 64, 3), np.uint8),
             "uniform": np.full((64, 64, 3), (200, 120, 180), np.uint8),
             "grey noise": np.clip(rng.normal(230, 6, (128, 128, 3)), 0, 255).astype(np.uint8)}[tile]
    target = render_region(20000, 500, 128, 128, seed=0, centre=1)["image"]
    with np.errstate(all="raise"):
        out = MacenkoNormalizer(fallback="identity").fit(target).transform(image)
    np.testing.assert_array_equal(out, image)
    if tile != "white":
        with pytest.raises(DataError, match="cannot be told apart.*fallback=.identity."):
            MacenkoNormalizer().fit(target).transform(image)
