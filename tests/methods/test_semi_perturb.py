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


def test_feature_dropout_thresholds_at_gamma_times_the_maximum_hand_computed():
    """Issue 15 item 6 (eqs. 12-14): drop positions whose channel mean is >= γ · max; the share depends on z."""
    peaked = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 10.0]])
    flat = torch.full((3, 3), 5.0)
    flat[0, 0] = 5.5
    means = torch.stack([peaked, flat])  # (2, 3, 3) channel-mean maps
    # two channels with the given mean: c0 = 2m - 1, c1 = 1 (so mean_c = m, but channels differ)
    z = torch.stack([2 * means - 1, torch.ones_like(means)], dim=1)
    out = feature_dropout(z, gamma=(0.8, 0.8))
    dropped = (out == 0).all(1)
    # peaked: threshold 0.8 * 10 = 8 -> only the 10 goes (1/9; a top-20% rule would also drop the 7)
    assert dropped[0].tolist() == [[False] * 3, [False] * 3, [False, False, True]]
    # flat: threshold 0.8 * 5.5 = 4.4 -> every position goes
    assert dropped[1].all()
    keep = ~dropped[:, None]
    assert torch.equal(out[keep.expand_as(z)], z[keep.expand_as(z)])  # the rest untouched


def test_feature_dropout_draws_gamma_per_image():
    g = torch.Generator().manual_seed(3)
    z = torch.rand(4, 6, 8, 8, generator=torch.Generator().manual_seed(0))
    out = feature_dropout(z, gamma=(0.75, 0.9), generator=g)
    gamma = torch.rand(4, generator=torch.Generator().manual_seed(3)) * 0.15 + 0.75  # γ ~ U(0.75, 0.9), eq. 13
    att = z.mean(1)  # eq. 12
    want = z * (att < gamma.view(4, 1, 1) * att.flatten(1).max(1).values.view(4, 1, 1))[:, None]  # eq. 14
    assert torch.equal(out, want)


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


def test_auxiliary_heads_are_k_independent_classifiers_per_type():
    """Issue 15 item 5 (eq. 9, section 5.4): K = 4 heads per type, 12 in all, head k reads copy k."""
    heads = AuxiliaryHeads(16, 3, draws=4, options={"spatial_drop": {"p": 0.0}})  # p = 0: the identity
    convs = [h for t in heads.heads.values() for h in t]
    assert len(convs) == 12 and len({id(c.weight) for c in convs}) == 12
    assert sum(p.numel() for p in heads.parameters()) == 12 * (16 * 3 + 3)
    z = torch.randn(2, 16, 5, 5)
    out = heads(z)["spatial_drop"]
    for k, conv in enumerate(heads.heads["spatial_drop"]):
        assert torch.allclose(out[2 * k: 2 * k + 2], torch.nn.functional.conv2d(z, conv.weight, conv.bias), atol=1e-6)
    assert not torch.allclose(out[:2], out[2:4])  # the same input, different heads
