"""Paired transforms keep image, mask and instances aligned; checked against a coordinate-encoding sample."""

from __future__ import annotations

import numpy as np
import pytest

from pathseg.sample import IGNORE_INDEX
from pathseg.errors import ConfigError, UnknownNameError
from pathseg.transforms import (
    TRANSFORMS,
    CenterCrop,
    Compose,
    RandomCrop,
    RandomFlip,
    RandomRotate90,
    RandomScale,
    Resize,
    build_transforms,
    to_tensor,
)

H, W, SLOPE = 40, 48, 5  # image R = 5·x, G = 5·y: a linear ramp, so bilinear sampling is exact inside


def coord_sample() -> dict:
    """image encodes the source pixel (x, y); instances = 1 + y·W + x (one id per pixel); mask a class of it."""
    y, x = np.mgrid[:H, :W]
    image = np.stack([SLOPE * x, SLOPE * y, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    instances = (1 + y * W + x).astype(np.int32)
    mask = ((x // 3 + y // 4) % 5).astype(np.int64)
    return {"image": image, "mask": mask, "instances": instances, "labels": np.ones(5, np.float32), "meta": {"id": "c"}}


def check_aligned(src: dict, out: dict, tol: float) -> int:
    """Every labelled output pixel: mask/instances name the same source pixel, and the image colour
    decodes to a source position within ``tol`` px of it. Returns the number of pixels checked."""
    img, mask, inst = out["image"], out["mask"], out["instances"]
    assert img.shape[:2] == mask.shape == inst.shape
    assert img.dtype == np.uint8 and mask.dtype == np.int64 and inst.dtype == np.int32
    pad = inst == 0
    assert (mask[pad] == IGNORE_INDEX).all() and (mask[~pad] != IGNORE_INDEX).all()
    src_idx = inst[~pad].astype(np.int64) - 1
    np.testing.assert_array_equal(mask[~pad], src["mask"].ravel()[src_idx])
    # interior pixels only: bilinear clamps at the image border and blends with padding
    valid = ~pad
    inner = valid.copy()
    inner[1:-1, 1:-1] = valid[1:-1, 1:-1] & valid[:-2, 1:-1] & valid[2:, 1:-1] & valid[1:-1, :-2] & valid[1:-1, 2:]
    inner[[0, -1], :] = False
    inner[:, [0, -1]] = False
    sx, sy = (inst[inner] - 1) % W, (inst[inner] - 1) // W
    ok = (sx > 0) & (sx < W - 1) & (sy > 0) & (sy < H - 1)
    dx = img[inner][:, 0] / SLOPE - sx
    dy = img[inner][:, 1] / SLOPE - sy
    assert np.abs(dx[ok]).max() <= tol and np.abs(dy[ok]).max() <= tol
    return int(ok.sum())


@pytest.mark.parametrize(
    "transform, tol",
    [
        (RandomFlip(), 0.0),
        (RandomRotate90(), 0.0),
        (RandomCrop(32), 0.0),
        (RandomCrop((56, 30)), 0.0),  # taller than the image: padded with ignore
        (CenterCrop(64), 0.0),
        (RandomScale((0.6, 1.7)), 0.5 + 0.5 / SLOPE + 1e-6),
        (Resize(scale=0.5), 0.5 + 0.5 / SLOPE + 1e-6),
        (Resize(scale=1.6), 0.5 + 0.5 / SLOPE + 1e-6),
        (Resize(size=(31, 57)), 0.5 + 0.5 / SLOPE + 1e-6),
    ],
    ids=lambda t: repr(t) if not isinstance(t, float) else "",
)
def test_geometry_keeps_image_and_labels_aligned(transform, tol):
    src = coord_sample()
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(12):
        out = transform(src, rng)
        checked += check_aligned(src, out, tol)
        assert out["labels"] is src["labels"] and out["meta"] is src["meta"]
    assert checked > 0
    np.testing.assert_array_equal(src["instances"], coord_sample()["instances"])  # input untouched


def test_a_half_pixel_nearest_shift_would_be_caught():
    """The alignment check is strict enough to see cv2's INTER_NEAREST (corner-aligned) on a 1.6x resize."""
    import cv2

    src = coord_sample()
    out = Resize(scale=1.6)(src, np.random.default_rng(0))
    bad = dict(out)
    bad["instances"] = cv2.resize(src["instances"], out["image"].shape[1::-1], interpolation=cv2.INTER_NEAREST)
    bad["mask"] = src["mask"].ravel()[bad["instances"].astype(np.int64) - 1]
    with pytest.raises(AssertionError):
        check_aligned(src, bad, 0.5 + 0.5 / SLOPE + 1e-6)


def test_full_pipeline_alignment():
    src = coord_sample()
    pipe = build_transforms([
        {"name": "scale", "range": [0.8, 1.25]}, {"name": "random_crop", "size": 36},
        {"name": "flip"}, {"name": "rotate90"},
    ])
    rng = np.random.default_rng(1)
    for _ in range(10):
        check_aligned(src, pipe(src, rng), 0.5 + 0.5 / SLOPE + 1e-6)


def test_rotate_four_times_and_flip_twice_are_identity():
    src = coord_sample()
    rng = np.random.default_rng(0)
    for k in (1, 2, 3):
        out = src
        for _ in range(4):
            out = RandomRotate90(k=k)(out, rng)
        for key in ("image", "mask", "instances"):
            np.testing.assert_array_equal(out[key], src[key])
    once = RandomRotate90(k=1)(src, rng)
    assert once["image"].shape == (W, H, 3)
    np.testing.assert_array_equal(once["mask"], np.rot90(src["mask"]))
    flip = RandomFlip(horizontal=1.0, vertical=1.0)
    out = flip(flip(src, rng), rng)
    for key in ("image", "mask", "instances"):
        np.testing.assert_array_equal(out[key], src[key])
    np.testing.assert_array_equal(flip(src, rng)["mask"], src["mask"][::-1, ::-1])


def test_crop_is_a_window_of_every_key():
    src = coord_sample()
    rng = np.random.default_rng(3)
    for _ in range(10):
        out = RandomCrop((20, 24))(src, rng)
        y, x = divmod(int(out["instances"][0, 0]) - 1, W)
        for key in ("image", "mask", "instances"):
            np.testing.assert_array_equal(out[key], src[key][y : y + 20, x : x + 24])
    # larger than the image: the image sits whole inside, surrounded by fill / ignore / 0
    out = RandomCrop(64, fill=255)(src, rng)
    ys, xs = np.nonzero(out["instances"])
    y0, x0 = ys.min(), xs.min()
    np.testing.assert_array_equal(out["image"][y0 : y0 + H, x0 : x0 + W], src["image"])
    assert (out["mask"] == IGNORE_INDEX).sum() == 64 * 64 - H * W
    outside = out["instances"] == 0
    assert (out["image"][outside] == 255).all()


def test_missing_keys_are_skipped_and_mask_only_works():
    rng = np.random.default_rng(0)
    s = {"image": np.zeros((10, 12, 3), np.uint8), "mask": None, "instances": None}
    out = Compose([RandomScale((2, 2)), RandomCrop(8)])(s, rng)
    assert out["image"].shape == (8, 8, 3) and out["mask"] is None
    m = {"mask": np.arange(20).reshape(4, 5)}
    assert Resize(scale=2.0)(m, rng)["mask"].shape == (8, 10)


def test_build_transforms_and_registry_errors():
    cfg = [
        {"name": "random_crop", "size": 32}, {"name": "flip"}, {"name": "rotate90"},
        {"name": "scale", "range": [0.8, 1.25]},
        {"name": "color_jitter", "brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.05},
        {"name": "blur", "p": 0.3}, {"name": "grayscale", "p": 0.2}, {"name": "hed_jitter", "sigma": 0.05},
        {"name": "resize", "scale": 0.5},
    ]
    pipe = build_transforms(cfg)
    assert len(pipe) == len(cfg)
    out = pipe(coord_sample(), np.random.default_rng(0))
    assert out["image"].dtype == np.uint8 and out["mask"].shape == out["image"].shape[:2]
    with pytest.raises(UnknownNameError, match="Did you mean 'rotate90'.*Valid transform names: .*random_crop"):
        build_transforms([{"name": "rotate9O"}])
    with pytest.raises(ConfigError, match="flip"):
        build_transforms([{"name": "flip", "angle": 3}])
    with pytest.raises(ConfigError):
        Resize()
    assert {"flip", "rotate90", "random_crop", "scale", "resize", "color_jitter", "blur", "grayscale", "hed_jitter"} <= set(TRANSFORMS)


def test_to_tensor():
    import torch

    s = coord_sample()
    s["image"][0, 0] = np.rint(255 * np.array([0.485, 0.456, 0.406]))
    t = to_tensor(s)
    assert t["image"].shape == (3, H, W) and t["image"].dtype == torch.float32
    assert torch.allclose(t["image"][:, 0, 0], torch.zeros(3), atol=0.01)  # the ImageNet mean maps to 0
    want = (s["image"][5, 7, 0] / 255 - 0.485) / 0.229
    assert t["image"][0, 5, 7].item() == pytest.approx(want, abs=1e-5)
    assert t["mask"].dtype == torch.int64 and t["instances"].dtype == torch.int64
    assert t["labels"].dtype == torch.float32 and t["meta"] == {"id": "c"}
    assert "instances" not in to_tensor({"image": s["image"], "instances": None})
    assert "meta" not in to_tensor(s, keep_meta=False)


def test_colour_transforms_touch_the_image_only():
    src = coord_sample()
    rng = np.random.default_rng(0)
    for name, kw in [("color_jitter", dict(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1)),
                     ("blur", dict(p=1.0)), ("grayscale", dict(p=1.0)), ("hed_jitter", dict(sigma=0.1))]:
        out = TRANSFORMS.get(name)(**kw)(src, rng)
        assert out["image"].shape == src["image"].shape and out["image"].dtype == np.uint8
        assert out["mask"] is src["mask"] and out["instances"] is src["instances"]
        assert not np.array_equal(out["image"], src["image"]), name
    g = TRANSFORMS.get("grayscale")(p=1.0)(src, rng)["image"]
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    same = TRANSFORMS.get("color_jitter")()(src, rng)["image"]
    np.testing.assert_array_equal(same, src["image"])
    flat = {"image": np.full((9, 9, 3), 77, np.uint8)}
    np.testing.assert_array_equal(TRANSFORMS.get("blur")(p=1.0)(flat, rng)["image"], flat["image"])
