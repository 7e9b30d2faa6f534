"""Unlabelled pretraining pairs: how many files stay open (and decoded) while pairs are drawn."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import pathseg.methods.ssl.data as ssl_data
from pathseg.methods.ssl.data import UnlabeledPairs

SPEC = dict(context_size=32, context_mpp=1.0, target_size=16, target_mpp=0.5, per_side=2, min_tissue=0.0)
H, W = 96, 128


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for k in range(6):
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(tmp_path / f"img{k}.png")
    return tmp_path


def open_after_draws(folder, n: int = 80) -> int:
    ds = UnlabeledPairs([{"path": str(folder), "mpp": 0.5}], SPEC, length=4)
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(n):
        raw = ds.draw(rng)
        assert raw["context"].shape == (32, 32, 3) and raw["targets"].shape == (4, 16, 16, 3)
        seen |= set(ds._readers)
    assert len(seen) == 6  # every image was drawn from
    return len(ds._readers)


def test_small_images_stay_open_within_the_pixel_budget(folder, monkeypatch):
    assert open_after_draws(folder) == 6  # small images: all kept, so each is decoded once
    monkeypatch.setattr(ssl_data, "OPEN_IMAGE_PIXELS", 2 * H * W)
    assert open_after_draws(folder) == 3  # two within the budget + the one just opened


def test_slides_are_capped(folder, monkeypatch):
    monkeypatch.setattr(ssl_data, "SMALL_LEVEL_PIXELS", 0)  # every file counts as a slide
    monkeypatch.setattr(ssl_data, "OPEN_SLIDES", 2)
    assert open_after_draws(folder) == 2
