"""Tissue detection: against the synthetic truth, on blank glass, holes, and on the real slides."""

from __future__ import annotations

import numpy as np
import pytest
from wsi_fixtures import blank_slide, real_slide, synthetic_slide

from pathseg.errors import UnknownNameError
from pathseg.io.slides import open_slide
from pathseg.io.tissue import TISSUE_DETECTORS, SaturationTissueDetector, detect_tissue


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return synthetic_slide(tmp_path_factory.mktemp("tissue"), 1024, seed=1)


@pytest.mark.parametrize("method,min_iou", [("saturation", 0.8), ("otsu", 0.6)])
def test_mask_matches_synthetic_tissue(synth, method, min_iou):
    import cv2

    path, truth_path = synth
    truth = np.load(truth_path) > 0  # class 0 is glass or fat
    with open_slide(path) as s:
        tm = detect_tissue(s, method)
    t = cv2.resize(truth.astype(np.uint8), tm.mask.shape[::-1], interpolation=cv2.INTER_AREA) > 0
    iou = (tm.mask & t).sum() / (tm.mask | t).sum()
    assert iou > min_iou, iou
    assert tm.box_fraction(0, 0, 1024, 1024) == pytest.approx(tm.fraction, abs=1e-6)
    assert tm.box_fraction(5000, 5000, 100, 100) == 0  # outside the slide is glass


@pytest.mark.parametrize("method", ["saturation", "otsu"])
def test_blank_glass_has_no_tissue(tmp_path, method):
    with open_slide(blank_slide(tmp_path / "blank.tiff")) as s:
        assert detect_tissue(s, method).fraction == 0


def test_saturation_threshold_fills_holes_and_opens():
    img = np.full((200, 200, 3), 250, np.uint8)
    yy, xx = np.mgrid[:200, :200]
    r = np.hypot(yy - 100, xx - 100)
    img[(r > 30) & (r < 70)] = (200, 80, 160)  # a pink ring around glass
    img[5, 5] = (200, 80, 160)  # a speck
    img[150:152, 10:12] = (250, 240, 250)  # saturation 4%: background
    mask = SaturationTissueDetector(opening_um=4, min_area_um2=0)(img, mpp=1.0)
    assert mask[100, 100] and mask[100, 40]  # hole filled
    assert not mask[5, 5]  # opened away
    assert not mask[150, 10]


def test_unknown_detector_suggests():
    with pytest.raises(UnknownNameError, match="Did you mean 'otsu'"):
        TISSUE_DETECTORS.get("ostu")


@pytest.mark.parametrize("key,override,lo,hi", [("cmu", None, 0.2, 0.6), ("tcga", 0.5, 0.4, 0.85),
                                                ("kidney", 4.0, 1e-3, 0.02)])
def test_real_slides_tissue(shared_data, key, override, lo, hi):
    with open_slide(real_slide(shared_data, key), mpp_override=override) as s:
        for method in ("saturation", "otsu"):
            assert lo < detect_tissue(s, method).fraction < hi
