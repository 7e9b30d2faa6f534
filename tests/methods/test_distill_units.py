"""Háberová et al. building blocks against independent computations: Dice loss by hand, instances and the
watershed split on hand-made masks, QuPath GeoJSON import/matching/export round trip, RCCNet's size."""

import json
import math

import numpy as np
import pytest
import torch

from pathseg.losses.dice import dice_loss
from pathseg.methods.distill.cells import balanced_subset, classification_metrics
from pathseg.methods.distill.instances import instance_centroids, label_instances, nucleus_patches
from pathseg.methods.distill.matching import cells_to_features, match_cells, read_cells
from pathseg.methods.distill.rccnet import RCCNet, SmallResNet18

CLASSES = ["background", "tumour", "lymphocyte"]


# ---------------------------------------------------------------------------------------------- Dice loss
def _logits_p1(p1: float) -> torch.Tensor:
    """(1, 2, 2, 2) logits whose softmax gives nucleus probability p1 at every pixel."""
    z = torch.zeros(1, 2, 2, 2)
    z[:, 1] = math.log(p1 / (1 - p1))
    return z


def test_dice_loss_matches_hand_computation():
    target = torch.tensor([[[1, 0], [1, 1]]])
    # p1 = 0.75 everywhere: foreground Dice = 2·(3·0.75) / (4·0.75 + 3) = 4.5 / 6
    assert dice_loss(_logits_p1(0.75), target, smooth=0.0).item() == pytest.approx(1 - 4.5 / 6)
    # background: 2·0.25 / (4·0.25 + 1) = 0.25; mean over both classes
    assert dice_loss(_logits_p1(0.75), target, smooth=0.0, classes="all").item() == pytest.approx(1 - (0.75 + 0.25) / 2)
    # smoothing s = 1: (4.5 + 1) / (6 + 1)
    assert dice_loss(_logits_p1(0.75), target, smooth=1.0).item() == pytest.approx(1 - 5.5 / 7)
    # an ignored pixel leaves every sum: 2·(2·0.75) / (3·0.75 + 2)
    ign = torch.tensor([[[255, 0], [1, 1]]])
    assert dice_loss(_logits_p1(0.75), ign, smooth=0.0).item() == pytest.approx(1 - 3 / 4.25)
    z = _logits_p1(0.75).requires_grad_()
    dice_loss(z, target).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_nuclei_dice_method_and_tconv_models():
    import pathseg.methods  # noqa: F401
    from pathseg.methods.base import METHODS
    from pathseg.models import create_model

    model = create_model("unet_tconv", num_classes=2)
    assert any(isinstance(m, torch.nn.ConvTranspose2d) for m in model.modules())
    method = METHODS.get("nuclei_dice")(model, class_names=["background", "nucleus"], channels_last=False)
    losses = method.training_losses({"image": torch.randn(2, 3, 64, 64), "mask": torch.randint(0, 2, (2, 64, 64))})
    assert set(losses) == {"loss", "loss/dice"} and 0 <= losses["loss"].item() <= 1
    m2 = create_model("unetplusplus_tconv", num_classes=2).eval()
    assert m2(torch.zeros(1, 3, 64, 64)).shape == (1, 2, 64, 64)


@pytest.mark.parametrize("config, name", [("nuclei_unet.yaml", "unet_tconv"),
                                          ("nuclei_unetplusplus.yaml", "unetplusplus_tconv")])
def test_nuclei_configs_build_transposed_conv_decoders(config, name):
    import pathseg.methods  # noqa: F401  (registers the _tconv models)
    from pathseg.engine.config import load_config
    from pathseg.models import create_model

    cfg = load_config(f"configs/distill/{config}")
    assert (cfg.model.name, cfg.model.encoder) == (name, "resnet18")
    model = create_model(cfg.model.name, encoder=cfg.model.encoder, num_classes=2, **cfg.model.options).eval()
    tconv = [m for m in model.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert tconv and all(m.stride == (2, 2) for m in tconv)
    calls = []
    for m in tconv:
        m.register_forward_hook(lambda mod, args, out: calls.append(mod))
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 2, 64, 64)
    assert {id(m) for m in calls} == {id(m) for m in tconv}  # every decoder block upsamples through one


def test_nuclei_patches_tiles_without_overlap_zero_padded():
    from pathseg.methods.distill.nuclei import NucleiPatches

    ds = NucleiPatches(sources=[{"dataset": "synthetic", "options": {"task": "nuclei", "n_images": 1, "size": 80}}],
                       patch=64)
    assert len(ds) == 4  # 80 px -> 2 x 2 tiles of 64
    full = ds.datasets[0][0]
    last = ds[3]
    assert (last["image"][:16, :16] == full["image"][64:, 64:]).all()
    assert (last["image"][16:] == 0).all() and (last["mask"][:, 16:] == 0).all()


# ---------------------------------------------------------------------------------------------- instances
def _disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_connected_components_and_min_size():
    m = np.zeros((10, 12), bool)
    m[1:4, 1:4] = True  # 9 px
    m[6:9, 6:10] = True  # 12 px
    m[0, 11] = True  # 1 px: dropped
    inst = label_instances(m, min_size=2)
    assert inst.max() == 2 and (inst[1:4, 1:4] == 1).all() and (inst[6:9, 6:10] == 2).all() and inst[0, 11] == 0


def test_watershed_splits_touching_disks_only():
    m = _disk((40, 60), 20, 20, 9) | _disk((40, 60), 20, 36, 9)  # centres 16 px apart: a neck between them
    assert label_instances(m).max() == 1
    inst = label_instances(m, split_touching=True)
    assert inst.max() == 2
    assert inst[20, 20] != inst[20, 36] and inst[20, 20] > 0 and inst[20, 36] > 0
    assert (inst > 0).sum() == m.sum()  # the split keeps every pixel
    sizes = np.bincount(inst.ravel())[1:]
    assert abs(int(sizes[0]) - int(sizes[1])) <= 0.1 * sizes.sum()
    single = _disk((40, 40), 20, 20, 9)
    assert label_instances(single, split_touching=True).max() == 1  # one round nucleus stays one


def test_patches_at_three_resolutions():
    img = np.zeros((64, 64, 3), np.uint8)
    img[20, 30] = 255
    inst = np.zeros((64, 64), np.int32)
    inst[19:22, 29:32] = 1
    cent = instance_centroids(inst)
    assert cent.tolist() == [[20.0, 30.0]]
    p = nucleus_patches(img, cent, size=16)
    assert p.shape == (1, 3, 16, 16, 3)
    assert p[0, 0, 8, 8, 0] == 255 and p[0, 0].sum() == 255 * 3  # centroid at size // 2
    assert p[0, 1, 8, 8, 0] > 0 and p[0, 2, 8, 8, 0] > 0  # 1/2 and 1/4: the (averaged) nucleus still centred
    corner = nucleus_patches(np.full((8, 8, 3), 9, np.uint8), np.array([[0.0, 0.0]]), size=4, scales=(1.0,))
    assert (corner[0, 0, :2, :] == 0).all() and (corner[0, 0, 2:, 2:] == 9).all()  # zero padding outside


# ---------------------------------------------------------------------------------------------- GeoJSON
def _instances():
    inst = np.zeros((30, 40), np.int32)
    inst[2:8, 2:8] = 1
    inst[2:8, 20:26] = 2
    inst[15:22, 5:12] = 3
    inst[20:26, 30:36] = 4
    return inst


def _poly(x0, y0, x1, y1):
    return {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}


def test_read_qupath_cells_and_match(tmp_path):
    feats = [
        {"type": "Feature", "geometry": _poly(2, 2, 8, 8),
         "properties": {"objectType": "detection", "classification": {"name": "tumour", "color": [200, 0, 0]}}},
        # a QuPath cell: the boundary covers nuclei 2 and 3's neighbourhood, the nucleus geometry only nucleus 2
        {"type": "Feature", "geometry": _poly(0, 0, 40, 30), "nucleusGeometry": _poly(20, 2, 26, 8),
         "properties": {"objectType": "cell", "classification": {"name": "lymphocyte"}}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [8.5, 18.5]},
         "properties": {"objectType": "annotation", "classification": {"name": "tumour"}}},
        {"type": "Feature", "geometry": _poly(30, 20, 36, 26), "properties": {"objectType": "detection"}},  # no class
        {"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[0, 0], [5, 5]]},
         "properties": {"classification": {"name": "tumour"}}},
    ]
    path = tmp_path / "cells.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    cells = read_cells(path)
    assert [c.name for c in cells] == ["tumour", "lymphocyte", "tumour"]
    assert [c.geometry.geom_type for c in cells] == ["Polygon", "Polygon", "Point"]
    assert cells[1].geometry.bounds == (20.0, 2.0, 26.0, 8.0)  # nucleus geometry preferred
    labels = match_cells(_instances(), cells, CLASSES)
    assert labels.tolist() == [1, 2, 1, -1]  # nucleus 4: nobody annotated it -> unknown, not background
    # a point beside a nucleus matches the nearest centroid within max_distance, not beyond
    from shapely.geometry import Point

    from pathseg.methods.distill.matching import Cell

    near = [Cell("lymphocyte", Point(37.5, 23.0))]  # 3 px right of nucleus 4
    assert match_cells(_instances(), near, CLASSES).tolist() == [-1, -1, -1, 2]
    assert match_cells(_instances(), near, CLASSES, max_distance=2.0).tolist() == [-1, -1, -1, -1]
    # downsampled export: coordinates halve
    half = read_cells(path, downsample=2.0)
    assert half[0].geometry.bounds == (1.0, 1.0, 4.0, 4.0)
    with pytest.raises(Exception, match="not one of"):
        match_cells(_instances(), cells, ["background", "tumour"])


def test_geojson_export_round_trip(tmp_path):
    from pathseg.inference.writers import write_geojson

    inst = _instances()
    classes = np.array([1, 2, 0, 2])
    feats = cells_to_features(inst, classes, CLASSES, probabilities=np.array([0.9, 0.8, 0.7, 0.6]))
    assert len(feats) == 3 and all(f["properties"]["objectType"] == "detection" for f in feats)
    assert feats[0]["properties"]["measurements"]["probability"] == 0.9
    path = write_geojson(tmp_path / "out.geojson", feats)
    back = match_cells(inst, read_cells(path), CLASSES)
    assert back.tolist() == [1, 2, -1, 2]  # the background nucleus was not written: it reads back unknown
    # scaled export (map px -> level-0 px) reads back with the same downsample
    feats2 = cells_to_features(inst, classes, CLASSES, scale=4.0)
    write_geojson(tmp_path / "x4.geojson", feats2)
    assert match_cells(inst, read_cells(tmp_path / "x4.geojson", downsample=4.0), CLASSES).tolist() == [1, 2, -1, 2]


def test_geojson_export_drops_the_class_named_background_not_index_0():
    names = ["other", "immune", "muscle", "background"]  # the paper's class order: background is index 3
    classes = np.array([0, 3, 1, -1])  # nucleus 4 unknown
    got = [f["properties"]["classification"]["name"] for f in cells_to_features(_instances(), classes, names)]
    assert got == ["other", "immune"]  # nucleus 1 ("other", index 0) kept; 2 (background) and 4 (unknown) not
    got = [f["properties"]["classification"]["name"]
           for f in cells_to_features(_instances(), classes, names, include_background=True)]
    assert got == ["other", "background", "immune"]  # unknown is never written


# ---------------------------------------------------------------------------------------------- classifiers
def test_rccnet_parameter_count_and_shapes():
    net = RCCNet(num_classes=4)
    assert sum(p.numel() for p in net.parameters()) == 1_512_868  # the published count
    assert sum(p.numel() for p in RCCNet(num_classes=3).parameters()) == 1_512_868 - 513
    net.eval()
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 4)
    teacher = SmallResNet18(num_classes=4).eval()
    assert teacher(torch.zeros(2, 3, 32, 32)).shape == (2, 4)
    assert teacher.net.conv1.stride == (1, 1) and teacher.net.conv1.kernel_size == (3, 3)


def test_classification_metrics_by_hand():
    y = np.array([0, 0, 1, 1, 1, 2])
    p = np.array([0, 1, 1, 1, 2, 2])
    m = classification_metrics(y, p, ["a", "b", "c"])
    # per class precision (1, 2/3, 1/2), recall (1/2, 2/3, 1), F1 (2/3, 2/3, 2/3); supports 2, 3, 1
    assert m["precision/a"] == pytest.approx(1.0) and m["recall/c"] == pytest.approx(1.0)
    assert m["F1"] == pytest.approx(2 / 3)
    assert m["precision"] == pytest.approx((2 * 1 + 3 * 2 / 3 + 1 * 0.5) / 6)
    assert m["accuracy"] == pytest.approx(4 / 6)


def test_balanced_subset_and_confusion_noise():
    from pathseg.methods.distill.synthetic import confuse

    labels = np.array([1] * 50 + [2] * 5 + [3] * 30 + [-1] * 4)
    idx = balanced_subset(labels, 10, classes=[1, 2, 3])
    assert np.bincount(labels[idx], minlength=4).tolist() == [0, 10, 5, 10]
    truth = np.repeat([1, 2, 3], 2000)
    weak = confuse(truth, 0.3, seed=0)
    assert abs((weak != truth).mean() - 0.3) < 0.03
    rate = [(weak[truth == c] != c).mean() for c in (1, 2, 3)]
    assert rate[2] > rate[0] > rate[1]  # not uniform: fibroblasts are mislabelled most
    assert (weak[truth == 3] == 1).sum() > 5 * (weak[truth == 3] == 2).sum()  # fibroblast -> tumour mostly
