"""The frozen-encoder linear probe: grid geometry by hand, the fit against its optimality condition, the
features against the encoder's own stage outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pathseg.errors import DataError
from pathseg.methods.ssl.probe import (LinearProbe, dense_features, fit_linear_probe, grid_labels, grid_pixels,
                                       probe_predict)
from pathseg.models import create_model
from pathseg.sample import IGNORE_INDEX

torch.set_num_threads(1)


def test_grid_labels_take_each_cells_centre_pixel():
    mask = np.arange(10 * 9).reshape(10, 9)
    g = grid_labels(mask, 4)
    # rows 2, 6, 9 (10 clipped to the last row); columns 2, 6, 8 (10 clipped)
    assert g.shape == (3, 3)
    assert g.tolist() == [[mask[r, c] for c in (2, 6, 8)] for r in (2, 6, 9)]


def test_dense_features_are_the_encoder_stages_at_stride_4():
    torch.manual_seed(0)
    model = create_model("unet", encoder="resnet18", num_classes=2)
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    f = dense_features(model, img)
    assert f.shape == (64 + 128 + 256 + 512, 16, 16)  # strides 4, 8, 16, 32
    from pathseg.transforms import to_tensor

    model.eval()
    with torch.no_grad():
        stages = model.encoder(to_tensor({"image": img})["image"][None])
    assert stages[2].shape[-2:] == (16, 16)  # stride 4: taken as it is
    assert torch.allclose(f[:64], stages[2][0], atol=1e-5)
    # stride 32 (2 x 2) bilinearly spread over the 16 x 16 grid
    want = F.interpolate(stages[5], size=(16, 16), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(f[-512:], want, atol=1e-5)
    # an image that is not a multiple of 32 is reflect-padded, and the grid cropped to ceil(H / 4) x ceil(W / 4)
    odd = dense_features(model, img[:50, :45])
    assert odd.shape[1:] == (13, 12)
    with pytest.raises(DataError, match="uint8"):
        dense_features(model, img.astype(np.float32))


def test_the_fit_meets_its_optimality_condition_and_separates_separable_pixels():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 5, generator=g) * torch.tensor([1.0, 3.0, 0.5, 2.0, 1.0]) + 2.0
    y = (x[:, 0] - 2.0 + 0.5 * (x[:, 1] - 2.0) > 0).long()
    l2 = 1e-2
    head = fit_linear_probe(x, y, 2, l2=l2)
    # gradient of mean CE(W z + b) + l2 ||W||^2 at the returned W, b is ~0 (written out, not via the fitter)
    z = (x - head.mean) / head.std
    w = head.weight.clone().requires_grad_(True)
    b = head.bias.clone().requires_grad_(True)
    loss = F.cross_entropy(z @ w.T + b, y) + l2 * (w * w).sum()
    gw, gb = torch.autograd.grad(loss, (w, b))
    assert gw.abs().max() < 1e-3 and gb.abs().max() < 1e-3
    assert abs(float(loss) - head.loss) < 1e-5
    pred = (z @ head.weight.T + head.bias).argmax(1)
    assert (pred == y).float().mean() > 0.97
    with pytest.raises(DataError, match="no labelled pixels"):
        fit_linear_probe(x[:0], y[:0], 2)


def test_grid_pixels_skip_ignored_labels_and_predictions_fill_the_image():
    feats = torch.zeros(1, 3, 4)
    feats[0, :, 2:] = 1.0  # the right half of the grid has feature 1
    mask = np.zeros((12, 16), np.int64)
    mask[:, 8:] = 1
    mask[:4] = IGNORE_INDEX  # the top grid row is unlabelled
    x, y = grid_pixels([feats], [mask])
    assert x.shape == (8, 1) and y.tolist() == [0, 0, 1, 1] * 2
    head = LinearProbe(torch.tensor([[-4.0], [4.0]]), torch.zeros(2), torch.tensor([0.5]), torch.tensor([0.5]), 0.0)
    pred = probe_predict(head, feats, (12, 16))
    assert pred.shape == (12, 16)
    assert (pred[:, :7] == 0).all() and (pred[:, 9:] == 1).all()  # the boundary lies between grid points 1 and 2
