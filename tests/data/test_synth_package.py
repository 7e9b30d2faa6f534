"""pathseg.data.synth as a package: every name callers import from ``pathseg.data.synth`` is still there, and the
renders are the ones the single-module generator made before the split (SHA-256 of its outputs, stored here;
computed from ``git show d4c74e8:pathseg/data/synth.py``)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile

import pathseg.data.synth as synth

ROOT = Path(__file__).resolve().parents[2]

# what the pre-split module rendered, as sha256 of the arrays' bytes (dtype and shape checked beside)
RENDERS = {
    "region-0.5": "29f66160129ee2e0806b17f06163b398af3680cbb87e3404be58d470969011f0",
    "region-4.0": "bd45d3fe40633efa16e59a6bfaa46f947c69ef8aa6bce49954916c50a5eaa769",
    "dataset-nuclei": "327556a7c2ff137e941b91ab1c168f8ab72b87895a0f026112b46f10d9002154",
    "slide-level1": "de9d4168fadb810ce83b25f5f538a761d9de80a503f13345ebfd97c1edf8bb9f",
}


def _digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def test_every_name_callers_import_is_exported():
    names: set[str] = set()
    for folder in ("pathseg", "tests", "benchmarks", "scripts"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            for m in re.finditer(r"from pathseg\.data\.synth import (\([^)]*\)|[^\n]*)", text):
                body = re.sub(r"#[^\n]*", "", m.group(1)).strip("()")
                names |= {n.strip().split(" as ")[0] for n in body.replace("\n", ",").split(",") if n.strip()}
            if "from pathseg.data import synth as S" in text:
                names |= set(re.findall(r"\bS\.([A-Za-z_]\w*)", text))
    assert {"render_region", "write_synthetic_slide", "write_synthetic_images", "SyntheticHE", "CLASS_NAMES",
            "NUCLEI_MAX_MPP"} <= names
    missing = sorted(n for n in names if not hasattr(synth, n))
    assert not missing, f"pathseg.data.synth no longer exports {missing}"
    assert set(synth.__all__) <= set(dir(synth))


def test_renders_match_the_pre_split_generator(tmp_path):
    r = synth.render_region(1000, 3000, 200, 150, seed=1, centre=1, mpp=0.5, return_concentrations=True)
    assert _digest(r["image"], r["mask"], r["instances"], r["nuclei_type"], r["concentrations"]) == \
        RENDERS["region-0.5"]
    r = synth.render_region(20, 40, 180, 120, seed=2, centre=2, mpp=4.0)
    assert _digest(r["image"], r["mask"]) == RENDERS["region-4.0"]
    ds = synth.SyntheticHE(n_images=3, size=96, seed=1, task="nuclei", split="test")
    assert _digest(*(ds[i][k] for i in range(3) for k in ("image", "mask", "instances", "labels"))) == \
        RENDERS["dataset-nuclei"]
    path = synth.write_synthetic_slide(tmp_path / "s.tif", (1500, 1100), mpp=0.5, seed=1, tile=256)
    with tifffile.TiffFile(path) as tif:
        assert [lv.shape for lv in tif.series[0].levels] == [(1100, 1500, 3), (550, 750, 3)]
        assert _digest(tif.series[0].levels[1].asarray()) == RENDERS["slide-level1"]


@pytest.mark.parametrize("module", ["noise", "tissue", "stains", "nuclei", "render", "dataset", "slide"])
def test_the_package_is_split_by_concern(module):
    import importlib

    m = importlib.import_module(f"pathseg.data.synth.{module}")
    assert m.__doc__ and len(Path(m.__file__).read_text().splitlines()) < 400
