"""Each CCT perturbation does what it says: bounded noise, the most active region dropped, half the channels kept."""

from __future__ import annotations

import pytest
import torch

from pathseg.models.perturb import PERTURBATIONS, AuxiliaryHeads, feature_dropout, feature_noise, spatial_dropout


def test_noise_is_relative_and_bounded():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 8, 6, 6, generator=g)
    out = feature_noise(z, radius=0.3, generator=g)
    rel = (out - z) / z
    assert rel.abs().max() <= 0.3 + 1e-6
    assert rel.abs().max() > 0.25 and rel.std() > 0.1  # the whole range is used, not a constant
    assert torch.equal(feature_noise(torch.zeros(2, 3, 4, 4)), torch.zeros(2, 3, 4, 4))  # multiplicative


def test_feature_dropout_removes_the_most_active_region():
    g = torch.Generator().manual_seed(0)
    b, d, h, w = 3, 4, 10, 10
    # activation ramps over the image: the most active positions are known exactly
    ramp = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w)
    z = (ramp + torch.rand(b, d, h, w, generator=g) * 0.01).relu()
    out = feature_dropout(z, gamma=(0.75, 0.9), generator=g)
    for i in range(b):
        dropped = (out[i] == 0).all(0).flatten()
        act = z[i].sum(0).flatten()
        frac = dropped.float().mean().item()
        assert 0.09 <= frac <= 0.26  # the top (1 - γ) with γ in [0.75, 0.9]
        assert act[dropped].min() > act[~dropped].max()  # exactly the most active positions
        assert torch.equal(out[i][:, ~dropped.view(h, w)], z[i][:, ~dropped.view(h, w)])  # the rest untouched


def test_spatial_dropout_keeps_about_half_of_the_channels():
    g = torch.Generator().manual_seed(0)
    z = torch.rand(8, 256, 4, 4) + 0.5
    out = spatial_dropout(z, p=0.5, generator=g)
    kept = (out != 0).flatten(2).all(2)
    zeroed = (out == 0).flatten(2).all(2)
    assert torch.all(kept | zeroed)  # whole channels, not single pixels
    assert kept.float().mean().item() == pytest.approx(0.5, abs=0.05)
    assert torch.allclose(out[kept], (z * 2)[kept])  # survivors rescaled by 1 / (1 - p)


def test_auxiliary_heads_stack_draws_per_type():
    heads = AuxiliaryHeads(16, 3, draws=4)
    assert set(heads.heads) == set(PERTURBATIONS.names()) == {"noise", "feature_drop", "spatial_drop"}
    outs = heads(torch.randn(2, 16, 5, 5))
    assert all(o.shape == (8, 3, 5, 5) for o in outs.values())
    # draws differ from each other (fresh randomness per copy)
    n = outs["noise"]
    assert not torch.allclose(n[:2], n[2:4])
