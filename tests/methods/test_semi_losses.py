"""The directional contrastive loss against a loop-based evaluation of CRCFP eqs. 3-8; the memory bank;
the consistency and entropy terms against direct formulas."""

from __future__ import annotations

import math

import pytest
import torch

from pathseg.losses.consistency import entropy_loss, softmax_mse
from pathseg.losses.contrastive import MemoryBank, directional_contrastive_loss


def _cos(u: list[float], v: list[float]) -> float:
    dot = sum(a * b for a, b in zip(u, v))
    return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))


def reference_l_dc(anchor, target, conf_a, conf_t, lab_t, negs, lab_n, tau, lam) -> float:
    """Eqs. 3-7 written out position by position, negative by negative (plain Python floats)."""
    anchor, target, negs = anchor.tolist(), target.tolist(), negs.tolist()
    total = 0.0
    for p in range(len(anchor)):
        m_d = 1.0 if (conf_a[p] < conf_t[p] and conf_t[p] > lam) else 0.0  # eqs. 5-6
        if m_d == 0.0:
            continue
        r_pos = math.exp(_cos(anchor[p], target[p]) / tau)  # eq. 3
        r_neg = 0.0
        for n in range(len(negs)):
            m_n = 1.0 if int(lab_t[p]) != int(lab_n[n]) else 0.0  # eq. 7
            r_neg += m_n * math.exp(_cos(anchor[p], negs[n]) / tau)
        total += m_d * -math.log(r_pos / (r_pos + r_neg))  # eq. 4
    return total / len(anchor)


def _case(seed: int, n: int = 9, m: int = 7, c: int = 5):
    g = torch.Generator().manual_seed(seed)
    return dict(
        anchor=torch.randn(n, c, generator=g, dtype=torch.float64),
        target=torch.randn(n, c, generator=g, dtype=torch.float64),
        conf_a=torch.rand(n, generator=g, dtype=torch.float64),
        conf_t=torch.rand(n, generator=g, dtype=torch.float64) * 0.5 + 0.5,
        lab_t=torch.randint(0, 3, (n,), generator=g),
        negs=torch.randn(m, c, generator=g, dtype=torch.float64),
        lab_n=torch.randint(0, 3, (m,), generator=g),
    )


def _dc(k, swap=False, **kw):
    a, t, ca, ct = (k["target"], k["anchor"], k["conf_t"], k["conf_a"]) if swap else \
        (k["anchor"], k["target"], k["conf_a"], k["conf_t"])
    return directional_contrastive_loss(a, t, ca, ct, k["lab_t"], k["negs"], k["lab_n"], **kw)


def _ref(k, swap=False, tau=0.1, lam=0.75):
    a, t, ca, ct = (k["target"], k["anchor"], k["conf_t"], k["conf_a"]) if swap else \
        (k["anchor"], k["target"], k["conf_a"], k["conf_t"])
    return reference_l_dc(a, t, ca, ct, k["lab_t"], k["negs"], k["lab_n"], tau, lam)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tau,lam", [(0.1, 0.75), (0.5, 0.6)])
def test_directional_loss_matches_loop_reference(seed, tau, lam):
    k = _case(seed)
    got = _dc(k, temperature=tau, threshold=lam)
    want = _ref(k, tau=tau, lam=lam)
    assert want > 0  # the case exercises some masked-in positions
    assert got.item() == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_two_way_loss_is_sum_of_directions_eq8():
    k = _case(3, n=30)
    k["conf_t"] = torch.rand(30, generator=torch.Generator().manual_seed(7), dtype=torch.float64)  # either side
    assert _ref(k) > 0 and _ref(k, swap=True) > 0
    assert (_dc(k) + _dc(k, swap=True)).item() == pytest.approx(_ref(k) + _ref(k, swap=True), rel=1e-9)


def test_gradient_only_reaches_the_anchor_and_pulls_it_to_the_target():
    k = _case(4)
    a = k["anchor"].clone().requires_grad_(True)
    t = k["target"].clone().requires_grad_(True)
    negs = k["negs"].clone().requires_grad_(True)
    conf_t = torch.ones_like(k["conf_t"])  # every position confident: all anchors active
    loss = directional_contrastive_loss(a, t, k["conf_a"], conf_t, k["lab_t"], negs, k["lab_n"])
    loss.backward()
    assert t.grad is None and negs.grad is None
    assert a.grad.abs().sum() > 0
    # one small step against the gradient raises the anchor-target cosine similarity on average
    cos = lambda u: torch.nn.functional.cosine_similarity(u, t.detach(), dim=1).mean()
    assert cos(a.detach() - 0.01 * a.grad) > cos(a.detach())


def test_no_confident_positions_gives_zero_and_no_negatives_is_allowed():
    k = _case(5)
    low = torch.zeros_like(k["conf_t"])
    assert _dc({**k, "conf_t": low}).item() == 0.0
    empty = {**k, "negs": k["negs"][:0], "lab_n": k["lab_n"][:0]}
    assert _dc(empty).item() == pytest.approx(_ref(empty))


def test_max_anchors_subsample_is_unbiased():
    k = _case(6, n=40)
    k["conf_t"] = torch.ones_like(k["conf_t"])
    full = _dc(k)
    g = torch.Generator().manual_seed(0)
    est = torch.stack([_dc(k, max_anchors=10, generator=g) for _ in range(400)]).mean()
    assert est.item() == pytest.approx(full.item(), rel=0.05)


def test_memory_bank_is_fifo_with_fixed_size():
    bank = MemoryBank(dim=2, size=5)
    assert len(bank) == 0 and bank.contents()[0].shape == (0, 2)
    feats = lambda ids: torch.tensor([[float(i), -float(i)] for i in ids])
    bank.push(feats([0, 1, 2]), torch.tensor([0, 1, 2]))
    assert bank.contents()[1].tolist() == [0, 1, 2] and len(bank) == 3
    bank.push(feats([3, 4, 5, 6]), torch.tensor([3, 4, 5, 6]))  # wraps: 0 and 1 leave first
    f, y = bank.contents()
    assert y.tolist() == [2, 3, 4, 5, 6] and len(bank) == 5
    assert f[:, 0].tolist() == [2.0, 3.0, 4.0, 5.0, 6.0]
    bank.push(feats(range(7, 20)), torch.arange(7, 20))  # more than the size at once: the newest 5 stay
    assert bank.contents()[1].tolist() == [15, 16, 17, 18, 19] and len(bank) == 5


def test_softmax_mse_and_entropy_against_direct_formulas():
    g = torch.Generator().manual_seed(0)
    main = torch.randn(2, 3, 4, 4, generator=g)
    aux = torch.randn(6, 3, 4, 4, generator=g)  # 3 perturbed copies of the batch of 2
    p = main.softmax(1)
    want = sum(((aux[2 * k: 2 * k + 2].softmax(1) - p) ** 2).mean() for k in range(3)) / 3
    assert softmax_mse(aux, main).item() == pytest.approx(want.item(), rel=1e-6)
    ent = sum(-(p[b, :, i, j] * p[b, :, i, j].log()).sum() for b in range(2) for i in range(4) for j in range(4)) / 32
    assert entropy_loss(main).item() == pytest.approx(ent.item(), rel=1e-6)
    main.requires_grad_(True)
    aux.requires_grad_(True)
    softmax_mse(aux, main).backward()
    assert main.grad is None and aux.grad.abs().sum() > 0  # the main prediction is only the target
