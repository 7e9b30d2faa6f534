"""MLPS pieces against independent computations: PDA and its μ schedule on hand-made CAMs, Grad-CAM
against per-image autograd, the gate, the multi-layer loss weights, pseudo-mask packing, patch labels."""

import numpy as np
import pytest
import torch
from torch import nn

from pathseg.methods.weak.classifier import cam_label_map, dropout_attention, mu_schedule
from pathseg.methods.weak.gradcam import grad_cam, layer_grad_cams
from pathseg.methods.weak.mlps import apply_gate, build_gated_model, multi_layer_loss
from pathseg.methods.weak.pseudo import pack_masks, pseudo_label_map, unpack_masks
from pathseg.data.patch_labels import PatchLabelDataset, grid_starts, presence_labels
from pathseg.models import create_model


# -- PDA ------------------------------------------------------------------------------------------
def test_mu_schedule_by_hand():
    assert [mu_schedule(e) for e in range(3)] == [1.0, 1.0, 1.0]  # warm-up: attention off
    assert mu_schedule(3) == pytest.approx(0.985)
    assert mu_schedule(5) == pytest.approx(0.985 * 0.985 * 0.985)
    # 0.985^n falls below 0.65 at n = 29 (0.985^28 = 0.655, 0.985^29 = 0.645): clamped from epoch 31
    assert mu_schedule(30) == pytest.approx(0.985**28)
    assert mu_schedule(31) == 0.65 and mu_schedule(1000) == 0.65
    assert mu_schedule(4, warmup_epochs=0, sigma=0.5, mu_min=0.01) == pytest.approx(0.5**5)


def test_dropout_attention_on_hand_made_cams():
    # identity CAM weights: the CAMs are the feature channels themselves
    cams = torch.tensor([[[[1.0, 5.0], [10.0, -2.0]],     # class 0: max 10
                          [[4.0, 3.0], [0.0, 2.0]]]])     # class 1: max 4
    a = dropout_attention(cams, torch.eye(2), mu=0.5)
    # class 0: ReLU -> [1,5,10,0], threshold 5 -> drop 10 (5 is not > 5) -> [1,5,0,0]
    # class 1: threshold 2 -> drop 4, 3 -> [0,0,0,2]; mean over the 2 classes:
    assert torch.equal(a, torch.tensor([[[[0.5, 2.5], [0.0, 1.0]]]]))
    # mu = 1: nothing dropped, A = mean of ReLU'd CAMs
    assert torch.equal(dropout_attention(cams, torch.eye(2), 1.0), torch.tensor([[[[2.5, 4.0], [5.0, 1.0]]]]))
    # CAMs through real weights (K=1, D=2): M = 2 f0 - f1
    f = torch.tensor([[[[1.0, 2.0, 3.0]], [[0.0, 1.0, 0.0]]]])  # M = [2, 3, 6]
    assert torch.equal(dropout_attention(f, torch.tensor([[2.0, -1.0]]), 0.6), torch.tensor([[[[2.0, 3.0, 0.0]]]]))


def test_cam_label_map_keeps_chosen_classes():
    cams = torch.zeros(1, 3, 2, 2)
    cams[0, 0] = 1.0
    cams[0, 1] = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    cams[0, 2] = 5.0
    pred = cam_label_map(cams, torch.tensor([[True, True, False]]), (2, 2))
    assert pred.tolist() == [[[1, 0], [0, 1]]]


# -- Grad-CAM -------------------------------------------------------------------------------------
class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.c2, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 5, 3, padding=1), nn.Conv2d(5, 3, 1)

    def acts(self, x):
        a1 = torch.tanh(self.c1(x))
        a2 = torch.tanh(self.c2(a1))
        return a1, a2, self.fc(a2).mean((2, 3))


def test_grad_cam_matches_per_image_autograd():
    net = Tiny().double()
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    a1, a2, s = net.acts(x)
    g1, g2 = grad_cam([a1, a2], s)
    for b in range(2):
        for k in range(3):
            # direct: the jacobian of image b's score k with respect to that image's first activation
            a1b = torch.tanh(net.c1(x[b:b + 1])).detach()
            jac = torch.autograd.functional.jacobian(lambda t: net.fc(torch.tanh(net.c2(t))).mean((2, 3))[0, k], a1b)
            expect = (jac.mean((2, 3), keepdim=True) * a1b).sum(1)[0]
            assert torch.allclose(g1[b, k], expect, atol=1e-10)
            # last layer before GAP + linear: alpha_kc = w_kc / (h w), analytically
            w = net.fc.weight[k, :, 0, 0]
            assert torch.allclose(g2[b, k], (w[:, None, None] * a2[b]).sum(0) / 30, atol=1e-10)
    t = a1.detach().requires_grad_()
    only = grad_cam([t], (t ** 2).sum((2, 3))[:, :3], classes=[1])[0]
    assert only[:, [0, 2]].abs().sum() == 0 and only[:, 1].abs().sum() > 0


def test_layer_grad_cams_of_a_cam_model():
    torch.manual_seed(0)
    m = create_model("cam", encoder="resnet18", num_classes=3).eval()
    x = torch.randn(2, 3, 48, 48)
    maps, probs = layer_grad_cams(m, x)
    assert set(maps) == {"mid", "late", "final"} and all(v.shape == (2, 3, 6, 6) for v in maps.values())
    with torch.no_grad():
        cams = m.classify(m.decode(m.encode(x)))
    # final layer: Grad-CAM = (CAM - bias) / (h w)
    assert torch.allclose(maps["final"], (cams - m.classifier.bias[None, :, None, None]) / 36, atol=1e-5)
    assert torch.allclose(probs, torch.sigmoid(cams.mean((2, 3))), atol=1e-6)


# -- pseudo masks ---------------------------------------------------------------------------------
def test_pseudo_label_map_uses_only_labelled_classes():
    maps = torch.tensor([[[[9.0, 0.0]], [[1.0, 2.0]], [[0.0, 3.0]]]])  # (1, 3, 1, 2)
    assert pseudo_label_map(maps, torch.tensor([[0.0, 1.0, 1.0]]), (1, 2)).tolist() == [[[1, 2]]]
    assert pseudo_label_map(maps, torch.tensor([[0.0, 1.0, 0.0]]), (1, 2)).tolist() == [[[1, 1]]]
    assert pseudo_label_map(maps, torch.zeros(1, 3), (1, 2)).tolist() == [[[0, 2]]]  # empty label: all


def test_pack_unpack_round_trip_and_padding():
    rng = np.random.default_rng(0)
    mid, late, final = (rng.integers(0, 5, (4, 4)) for _ in range(3))
    final[0, 0] = 255
    out = unpack_masks(torch.from_numpy(pack_masks(mid, late, final))[None])
    assert torch.equal(out["late"][0, 1:], torch.from_numpy(late)[1:])
    assert torch.equal(out["mid"][0, 2], torch.from_numpy(mid)[2])
    assert out["mid"][0, 0, 0] == out["late"][0, 0, 0] == out["final"][0, 0, 0] == 255
    padded = unpack_masks(torch.full((1, 1, 1), 255))  # a crop's fill value
    assert all(v.item() == 255 for v in padded.values())


# -- phase 2 --------------------------------------------------------------------------------------
def test_multi_layer_loss_weights():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4)
    masks = {k: torch.randint(0, 3, (2, 4, 4)) for k in ("mid", "late", "final")}
    masks["mid"][0, 0, 0] = 255
    out = multi_layer_loss(logits, masks, {"mid": 0.2, "late": 0.2, "final": 0.6})
    ce = {}
    for k, m in masks.items():  # cross-entropy written out
        logp = logits.log_softmax(1)
        keep = m != 255
        ce[k] = -(logp.gather(1, m.clamp(max=2)[:, None])[:, 0][keep]).mean()
    assert torch.allclose(out["loss"], 0.2 * ce["mid"] + 0.2 * ce["late"] + 0.6 * ce["final"], atol=1e-6)
    single = multi_layer_loss(logits, masks, {"mid": 0.0, "late": 0.0, "final": 1.0})
    assert set(single) == {"loss", "loss/final"} and torch.allclose(single["loss"], ce["final"], atol=1e-6)


def test_apply_gate_by_hand():
    p = torch.tensor([[0.5, 0.3, 0.2]])[..., None, None].expand(1, 3, 1, 2).clone()
    p[0, :, 0, 1] = torch.tensor([0.1, 0.2, 0.7])
    q = torch.tensor([[0.9, 0.1, 0.11]])  # class 1 has q <= 0.1: removed
    g = apply_gate(p, q, 0.1)
    assert torch.equal(g[0, 1], torch.zeros(1, 2)) and torch.equal(g[0, [0, 2]], p[0, [0, 2]])
    assert g.argmax(1).tolist() == [[[0, 2]]]


def test_gated_model_equals_separate_models():
    torch.manual_seed(1)
    seg = create_model("deeplabv3plus", encoder="resnet18", num_classes=3).eval()
    cls = create_model("cam", encoder="resnet18", num_classes=3).eval()
    with torch.no_grad():
        cls.classifier.bias.copy_(torch.tensor([3.0, -3.0, 0.0]))  # probabilities ~0.95, ~0.05, ~0.5
    gated = build_gated_model(seg, cls, eps=0.1)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        q = torch.sigmoid(cls.classify(cls.decode(cls.encode(x))).mean((2, 3)))
        expect = apply_gate(seg(x).softmax(1), q, 0.1).argmax(1)
        out = gated(x)
    assert (q[:, 1] <= 0.1).all() and (q[:, [0, 2]] > 0.1).all()
    assert torch.equal(out.argmax(1), expect)
    assert out.softmax(1)[:, 1].max() < 1e-6  # the gated class has no probability left


# -- patch labels ---------------------------------------------------------------------------------
def test_presence_labels_and_grid():
    m = np.array([[0, 0, 0, 0, 0, 0, 0, 0, 0, 1], [2, 2, 255, 255, 255, 255, 255, 255, 255, 255]])
    # labelled pixels: 9 x class 0, 1 x class 1, 2 x class 2 (12): fractions .75, .083, .167
    assert presence_labels(m, 4, 0.1).tolist() == [1, 0, 1, 0]
    assert presence_labels(m, 4, 1 / 12).tolist() == [1, 1, 1, 0]
    assert presence_labels(np.full((2, 2), 255), 2).tolist() == [0, 0]
    assert grid_starts(100, 40, 40) == [0, 40, 60] and grid_starts(30, 40, 40) == [0]


def test_patch_label_dataset_on_synthetic():
    opts = dict(dataset="synthetic", options={"n_images": 3, "size": 48}, patch=32, stride=16, min_fraction=0.1,
                holdout=0.34, seed=0)
    train = PatchLabelDataset(split="train", **opts)
    test = PatchLabelDataset(split="test", **opts)
    assert len(test.image_ids) == 1 and not set(test.image_ids) & set(train.image_ids)
    assert len(train) == 2 * 4  # starts 0, 16 per axis (16 + 32 = 48 ends at the border): 2 x 2 per image
    s = train[4]
    assert s["image"].shape == (32, 32, 3)
    assert s["labels"].tolist() == presence_labels(s["mask"], 5, 0.1).tolist()
    labels_only = PatchLabelDataset(split="train", train_masks=False, **opts)
    assert labels_only[4]["mask"] is None and labels_only[4]["labels"].tolist() == s["labels"].tolist()
