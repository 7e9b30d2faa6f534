"""Small slide files for the tests/io and tests/inference tests (built once per session)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REAL_SLIDES = {
    "cmu": "CMU-1-Small-Region.svs",  # Aperio, JPEG, MPP 0.499
    "tcga": "TCGA-CR-7395-01A-01-TS1.svs",  # Aperio, JPEG 2000, no MPP
    "kidney": "kidney-48-5.tif",  # plain RGB TIFF, no MPP
}


def real_slide(shared_data: Path, key: str) -> Path:
    path = shared_data / "slides" / REAL_SLIDES[key]
    if not path.is_file():
        msg = f"real slide {path} not found"
        if os.environ.get("PATHSEG_REQUIRE_DATA") == "1":
            pytest.fail(f"PATHSEG_REQUIRE_DATA=1 but {msg}")
        pytest.skip(msg)
    return path


def synthetic_slide(folder: Path, size: int = 1024, *, seed: int = 1, mpp: float = 0.5, truth: bool = True,
                    tile: int = 256) -> tuple[Path, Path | None]:
    """A pyramidal BigTIFF from pathseg.data.synth (level 0 + halvings) and its truth map (.npy)."""
    from pathseg.data.synth import write_synthetic_slide

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"synth-{size}-s{seed}.tiff"
    truth_path = folder / f"synth-{size}-s{seed}.truth.npy" if truth else None
    if not path.exists():
        write_synthetic_slide(path, size, mpp=mpp, seed=seed, tile=tile, levels=3, truth_path=truth_path)
    return path, truth_path


def level_array(path: Path, level: int = 0) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return tif.series[0].levels[level].asarray()


def blank_slide(path: Path, size: int = 1024, mpp: float = 0.5) -> Path:
    """A tiled pyramidal TIFF of bare glass (no tissue)."""
    import tifffile

    img = np.full((size, size, 3), 245, np.uint8)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for k in range(2):
            tw.write(img[:: 2**k, :: 2**k], tile=(256, 256), photometric="rgb", compression="zlib",
                     resolution=(1e4 / (mpp * 2**k),) * 2, resolutionunit="CENTIMETER",
                     subfiletype=0 if k == 0 else 1, metadata=None)
    return path


def truncated_copy(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst
