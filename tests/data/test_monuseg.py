"""MoNuSeg adapter and the Aperio XML reader, checked against the released binary masks in ../shared."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pathseg.data import DATASETS
from pathseg.data.monuseg import MONUSEG_NOMINAL_MPP, MoNuSeg, tcga_site
from pathseg.errors import DataError, DatasetNotFoundError
from pathseg.io.annotations import rasterize_polygons, read_aperio_xml


@pytest.fixture(scope="module")
def monuseg(shared_dataset) -> Path:
    return shared_dataset("monuseg2018")


def _released_mask(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 0  # PROVENANCE: convert('L') gives 0/255


def test_xml_matches_released_masks_on_all_test_images(monuseg):
    xmls = sorted((monuseg / "test" / "annotations").glob("*.xml"))
    assert len(xmls) == 14
    total_regions = 0
    for xml in xmls:
        # independent count: Region elements exactly where the format puts them
        root = ET.parse(xml).getroot()
        n_regions = len(root.findall("./Annotation/Regions/Region"))
        total_regions += n_regions
        polys, mpp = read_aperio_xml(xml)
        assert len(polys) == n_regions, xml.name
        assert 0.24 < mpp < 0.26
        ref = _released_mask(monuseg / "test" / "binary_masks" / f"{xml.stem}.png")
        inst = rasterize_polygons(polys, ref.shape)
        pred = inst > 0
        iou = (pred & ref).sum() / (pred | ref).sum()
        assert iou >= 0.99, f"{xml.name}: IoU {iou:.4f}"
        ids = np.unique(inst[inst > 0])
        # ids are 1..K; K counts Regions that kept at least one pixel (a Region fully covered by later ones,
        # or too thin to raster, may vanish) so K <= Regions, and at most a handful vanish
        assert ids.tolist() == list(range(1, len(ids) + 1))
        assert n_regions - 5 <= len(ids) <= n_regions, xml.name
    assert total_regions == 6697  # PROVENANCE.md: 6,697 nucleus polygons in total


def test_adapter_test_split_sample(monuseg):
    ds = MoNuSeg(monuseg, split="test")
    assert len(ds) == 14 and ds.class_names == ["background", "nucleus"]
    i = ds.ids.index("TCGA-2Z-A9J9-01A-01-TS1")
    s = ds[i]
    assert s["image"].shape == (1000, 1000, 3) and s["image"].dtype == np.uint8
    assert s["meta"]["source"] == "2Z"
    assert s["meta"]["mpp"] == pytest.approx(0.2527)  # the XML's MicronsPerPixel="0.252700"
    assert np.array_equal(s["mask"], (s["instances"] > 0).astype(np.int64))
    assert s["instances"].max() == 575


def test_train_falls_back_to_binary_mask_and_scale(monuseg):
    ds = DATASETS.get("monuseg")(monuseg, split="train", scale=0.5)
    assert len(ds) == 30
    name = "TCGA-18-5592-01Z-00-DX1"
    i = ds.ids.index(name)
    ref = _released_mask(monuseg / "train" / "binary_masks" / f"{name}.png")
    s = ds[i]
    if not (monuseg / "train" / "annotations" / f"{name}.xml").exists():  # training XMLs may be added later
        assert s["instances"] is None
    assert s["image"].shape == (500, 500, 3) and s["mask"].shape == (500, 500)
    assert np.array_equal(s["mask"], ref[::2, ::2])  # nearest on an exact 2x grid picks every other pixel
    assert s["meta"]["mpp"] == pytest.approx(MONUSEG_NOMINAL_MPP / 0.5)
    assert s["meta"]["source"] == "18"


def _write_xml(path: Path, regions: list[list[tuple[float, float]]], mpp: str | None) -> None:
    attr = f' MicronsPerPixel="{mpp}"' if mpp is not None else ""
    body = "".join(
        '<Region Id="%d"><Attributes/><Vertices>%s</Vertices></Region>'
        % (k, "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in r))
        for k, r in enumerate(regions, start=1)
    )
    path.write_text(
        f"<Annotations{attr}><Annotation Id='1'><Regions><RegionAttributeHeaders>"
        "<AttributeHeader Id='9999' Name='Region'/></RegionAttributeHeaders>"
        f"{body}</Regions></Annotation></Annotations>"
    )


def test_xml_reader_overlap_later_wins_missing_mpp(tmp_path):
    a = [(1, 1), (5, 1), (5, 5), (1, 5)]
    b = [(3.5, 3.5), (7.5, 3.5), (7.5, 7.5), (3.5, 7.5)]  # non-integer vertices
    hidden = [(4, 4), (5, 4), (5, 5), (4, 5)]  # drawn first, then fully covered by b
    xml = tmp_path / "x.xml"
    _write_xml(xml, [hidden, a, b], mpp=None)
    polys, mpp = read_aperio_xml(xml)
    assert mpp is None and len(polys) == 3
    inst = rasterize_polygons(polys, (10, 10))
    # hidden vanished; a -> 1, b -> 2; b (later) owns the shared pixel block
    assert sorted(np.unique(inst).tolist()) == [0, 1, 2]
    assert inst[4, 4] == 2 and inst[5, 5] == 2 and inst[1, 1] == 1 and inst[2, 2] == 1
    assert inst[7, 7] == 2 and inst[8, 8] == 0


def test_synthetic_root_prefers_xml_and_reports_missing_labels(tmp_path):
    for sub in ("images", "annotations", "binary_masks"):
        (tmp_path / "train" / sub).mkdir(parents=True)
    img = np.full((12, 12, 3), 200, np.uint8)
    Image.fromarray(img).save(tmp_path / "train" / "images" / "TCGA-AB-0001-01Z-00-DX1.tif")
    Image.fromarray(img).save(tmp_path / "train" / "images" / "TCGA-CD-0002-01Z-00-DX1.tif")
    xml = tmp_path / "train" / "annotations" / "TCGA-AB-0001-01Z-00-DX1.xml"
    _write_xml(xml, [[(2, 2), (6, 2), (6, 6), (2, 6)]], "0.5")
    ds = MoNuSeg(tmp_path, split="train")
    s = ds[0]
    assert s["meta"]["mpp"] == 0.5 and s["meta"]["source"] == "AB"
    assert s["mask"].sum() == 25 and s["instances"].max() == 1
    with pytest.raises(DataError, match="TCGA-CD-0002-01Z-00-DX1"):
        ds[1]
    with pytest.raises(DataError, match="unknown split"):
        MoNuSeg(tmp_path, split="val")


def test_missing_root_says_where_to_get_data(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="monuseg.grand-challenge.org"):
        MoNuSeg(tmp_path / "nope")


def test_tcga_site():
    assert tcga_site("TCGA-A1-A0SK-DX1_xmin1") == "A1" and tcga_site("slide_7") == ""
