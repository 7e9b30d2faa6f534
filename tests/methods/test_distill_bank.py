"""The cell bank against values known by construction: sparse expert outlines leave uncovered nuclei
unknown (and fine-tuning trains on the covered ones only), and nuclei are segmented from the image
the checkpoint's stain normaliser produces, computed here independently."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from pathseg.io.files import write_image

CLASSES = ["background", "tumour", "lymphocyte", "fibroblast"]


def _box(x0, y0, x1, y1):
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


def _write_cells(path, boxes_and_names):
    feats = [{"type": "Feature", "geometry": _box(*b),
              "properties": {"objectType": "detection", "classification": {"name": n}}} for b, n in boxes_and_names]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))


def test_nuclei_no_expert_outline_covers_are_unknown_and_not_fine_tuned_on(tmp_path):
    from pathseg.engine.distill import run_distill
    from pathseg.methods.distill.cells import DistillConfig, build_cell_bank

    torch.set_num_threads(1)
    # 8 nuclei, 6x6 px each, on a 2 x 4 grid; ids 1..8 in raster order of their first pixel
    inst = np.zeros((48, 96), np.uint16)
    boxes = []
    for r in range(2):
        for c in range(4):
            y, x = 8 + 24 * r, 8 + 24 * c
            inst[y:y + 6, x:x + 6] = len(boxes) + 1
            boxes.append((x, y, x + 6, y + 6))
    rng = np.random.default_rng(0)
    write_image(tmp_path / "images" / "t.png", rng.integers(0, 255, (48, 96, 3), dtype=np.uint8))
    write_image(tmp_path / "instances" / "t.png", inst)
    weak = [CLASSES[1 + j % 3] for j in range(8)]
    _write_cells(tmp_path / "weak" / "t.geojson", list(zip(boxes, weak)))
    covered = {1: "tumour", 4: "lymphocyte", 6: "background"}  # nucleus id -> expert class (background on purpose)
    _write_cells(tmp_path / "expert" / "t.geojson", [(boxes[j - 1], n) for j, n in covered.items()])

    bank = build_cell_bank([tmp_path / "images" / "t.png"], None, CLASSES, instances_dir=tmp_path / "instances",
                           weak_dir=tmp_path / "weak", expert_dir=tmp_path / "expert", size=32, scales=(1.0,))
    want = [CLASSES.index(covered[j]) if j in covered else -1 for j in range(1, 9)]
    assert bank.nucleus_ids.tolist() == list(range(1, 9))
    assert bank.expert.tolist() == want
    assert int((bank.expert == -1).sum()) == 5 and int((bank.expert == 0).sum()) == 1  # only the annotated one
    assert bank.weak.tolist() == [CLASSES.index(n) for n in weak]

    cfg = DistillConfig.load(None, ["teacher.epochs=1", "teacher.batch_size=4", "student.epochs=1",
                                    "student.batch_size=4", "finetune.counts=[100]", "finetune.lr=[1.0e-3]",
                                    "finetune.dropout=[0.0]", "finetune.epochs=1", "finetune.batch_size=3",
                                    "finetune.holdout=0.0", "threads=1"])
    metrics = run_distill(bank, tmp_path / "run", cfg, log=lambda *_: None)
    assert metrics["student+finetune-100"]["train_cells"] == len(covered)  # the 5 unknown nuclei are not targets


@pytest.fixture(scope="module")
def stain_setup(tmp_path_factory):
    """A random tiny U-Net saved with a fitted Macenko state, an image of another centre, a cell classifier."""
    from pathseg.data.synth import render_region
    from pathseg.models.checkpoint import save_model_checkpoint
    from pathseg.models import create_model
    from pathseg.transforms.stain import MacenkoNormalizer

    d = tmp_path_factory.mktemp("distill_stain")
    norm = MacenkoNormalizer(fallback="identity").fit(render_region(20000, 500, 128, 128, seed=0, centre=2)["image"],
                                                      reference="centre-2 tile")
    torch.manual_seed(0)
    model = create_model("unet", encoder="resnet18", num_classes=2).eval()
    ckpt = save_model_checkpoint(d / "seg.ckpt", model, ["background", "nucleus"], mpp=0.5, stain=norm.state())
    image = render_region(2000, 3000, 64, 64, seed=0, centre=0)["image"]
    write_image(d / "images" / "img.png", image)
    clf = d / "clf.pt"
    save_model_checkpoint(clf, create_model("rccnet", num_classes=len(CLASSES), in_size=16), CLASSES)
    return d, ckpt, clf, image, norm


def _expected_input(image):
    """The segmenter's input computed by hand: /255, then the checkpoint's (ImageNet) mean and std."""
    x = torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    return ((x - mean) / std)[None]


@pytest.fixture
def seen(monkeypatch):
    """Every image tensor the nuclei segmenter is run on."""
    import pathseg.methods.base as base

    inputs: list[torch.Tensor] = []
    real = base.predict_logits

    def spy(model, x, **kw):
        inputs.append(x.clone())
        return real(model, x, **kw)

    monkeypatch.setattr(base, "predict_logits", spy)
    return inputs


def test_cell_bank_and_cells_export_segment_the_stain_normalised_image(stain_setup, seen):
    from pathseg.cli.main import app
    from pathseg.methods.distill.cells import build_cell_bank

    torch.set_num_threads(1)
    d, ckpt, clf, image, norm = stain_setup
    normalised = norm.transform(image)
    assert np.abs(normalised.astype(int) - image.astype(int)).mean() > 5  # the normaliser does change this image
    want, plain = _expected_input(normalised), _expected_input(image)

    build_cell_bank([d / "images" / "img.png"], ckpt, CLASSES, size=16, scales=(1.0,))
    assert len(seen) == 1 and torch.allclose(seen[0], want, atol=1e-5)

    runner = CliRunner()
    res = runner.invoke(app, ["cell-bank", str(d / "images"), "--checkpoint", str(ckpt), "--out", str(d / "b.npz"),
                              "--size", "16"])
    assert res.exit_code == 0, res.output
    assert "stain normalisation: macenko" in res.output
    assert len(seen) == 2 and torch.allclose(seen[1], want, atol=1e-5)
    res = runner.invoke(app, ["cells", str(d / "images"), "--segmenter", str(ckpt), "--classifier", str(clf),
                              "--out", str(d / "gj")])
    assert res.exit_code == 0, res.output
    assert "stain normalisation: macenko" in res.output
    assert len(seen) == 3 and torch.allclose(seen[2], want, atol=1e-5)
    res = runner.invoke(app, ["cells", str(d / "images"), "--segmenter", str(ckpt), "--classifier", str(clf),
                              "--out", str(d / "gj_off"), "--no-stain-norm"])
    assert res.exit_code == 0, res.output
    assert len(seen) == 4 and torch.allclose(seen[3], plain, atol=1e-5)
