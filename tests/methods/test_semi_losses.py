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


def reference_l_dc(anchor, target, conf_a, conf_t, lab_a, negs, lab_n, tau, lam) -> float:
    """Eqs. 3-7 written out position by position, negative by negative (plain Python floats); the mean over
    the active anchors, with negatives filtered by the anchor's pseudo-label."""
    anchor, target, negs = anchor.tolist(), target.tolist(), negs.tolist()
    total, active = 0.0, 0
    for p in range(len(anchor)):
        m_d = 1.0 if (conf_a[p] < conf_t[p] and conf_t[p] > lam) else 0.0  # directional mask
        if m_d == 0.0:
            continue
        active += 1
        r_pos = math.exp(_cos(anchor[p], target[p]) / tau)  # eq. 3
        r_neg = 0.0
        for n in range(len(negs)):
            m_n = 1.0 if int(lab_a[p]) != int(lab_n[n]) else 0.0  # eq. 5: the anchor's pseudo-label
            r_neg += m_n * math.exp(_cos(anchor[p], negs[n]) / tau)
        total += m_d * -math.log(r_pos / (r_pos + r_neg))  # eq. 4
    return total / active if active else 0.0


def _case(seed: int, n: int = 9, m: int = 7, c: int = 5):
    g = torch.Generator().manual_seed(seed)
    return dict(
        anchor=torch.randn(n, c, generator=g, dtype=torch.float64),
        target=torch.randn(n, c, generator=g, dtype=torch.float64),
        conf_a=torch.rand(n, generator=g, dtype=torch.float64),
        conf_t=torch.rand(n, generator=g, dtype=torch.float64) * 0.5 + 0.5,
        lab_a=torch.randint(0, 3, (n,), generator=g),
        lab_t=torch.randint(0, 3, (n,), generator=g),
        negs=torch.randn(m, c, generator=g, dtype=torch.float64),
        lab_n=torch.randint(0, 3, (m,), generator=g),
    )


def _dc(k, swap=False, **kw):
    a, t, ca, ct, la = (k["target"], k["anchor"], k["conf_t"], k["conf_a"], k["lab_t"]) if swap else \
        (k["anchor"], k["target"], k["conf_a"], k["conf_t"], k["lab_a"])
    return directional_contrastive_loss(a, t, ca, ct, la, k["negs"], k["lab_n"], **kw)


def _ref(k, swap=False, tau=0.1, lam=0.75):
    a, t, ca, ct, la = (k["target"], k["anchor"], k["conf_t"], k["conf_a"], k["lab_t"]) if swap else \
        (k["anchor"], k["target"], k["conf_a"], k["conf_t"], k["lab_a"])
    return reference_l_dc(a, t, ca, ct, la, k["negs"], k["lab_n"], tau, lam)


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
    loss = directional_contrastive_loss(a, t, k["conf_a"], conf_t, k["lab_a"], negs, k["lab_n"])
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


def test_l_cont_is_the_mean_over_active_anchors_hand_computed():
    """Issue 15 item 2: divide by the number of active anchors (M_d on), not by all overlap positions."""
    anchor = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    target = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    conf_a = torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64)
    conf_t = torch.tensor([0.9, 0.8, 0.6], dtype=torch.float64)  # the third is below λ: 2 active of 3
    negs, lab_n = torch.tensor([[-1.0, 0.0]], dtype=torch.float64), torch.tensor([1])
    got = directional_contrastive_loss(anchor, target, conf_a, conf_t, torch.zeros(3, dtype=torch.long), negs, lab_n,
                                       temperature=1.0, threshold=0.75)
    # τ = 1: position 0: cos(a, t) = 1, cos(a, n) = -1 -> log(1 + e^-2); position 1: both cosines 0 -> log 2
    want = (math.log(1 + math.exp(-2)) + math.log(2)) / 2
    assert got.item() == pytest.approx(want, rel=1e-12)


def test_negatives_are_filtered_by_the_anchor_label_hand_computed():
    """Issue 15 item 4 (eq. 5): a negative counts when its pseudo-label differs from the anchor's."""
    anchor, target = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    conf_a, conf_t = torch.tensor([0.5]), torch.tensor([0.9])
    anchor_label = torch.tensor([0])  # the positive (target crop) would say class 1
    negs = torch.tensor([[-1.0, 0.0], [1.0, 0.0]])
    lab_n = torch.tensor([0, 1])  # the first shares the anchor's label: not a negative; the second is one
    got = directional_contrastive_loss(anchor, target, conf_a, conf_t, anchor_label, negs, lab_n,
                                       temperature=1.0, threshold=0.75)
    # τ = 1: r_pos = e^0 = 1, the one negative has cos = 1: ℓ = -log(1 / (1 + e))
    assert got.item() == pytest.approx(math.log(1 + math.e), rel=1e-6)


@pytest.mark.parametrize("flip1", [False, True])
def test_cac_term_filters_negatives_by_the_anchor_crop_hand_computed(flip1):
    """Issue 15 items 4 and 3 through the L_cont module: the anchor crop's pseudo-label picks the negatives,
    and a flipped crop's maps are flipped back before the overlap is compared.

    One image; crop 1 is a 1 x 2 grid (w, a), crop 2 a 1 x 3 grid (t, v, u); a and t are the same location.
    a = (1, 0), confidence 0.6, label 0 (the anchor); t = (0, 1), 0.9, label 1; v = (-1, 0), label 1;
    u = (0, -1), label 0; w = (0.6, 0.8). Negatives of direction 1 -> 2 are crop 2's cells (bank empty).
    """
    from pathseg.methods.semi.cac import ContextAwareConsistency, CropViews
    from pathseg.methods.semi.overlap import CropPair

    cont = ContextAwareConsistency(2, projector_dim=2, temperature=1.0, confidence=0.75, crop_negatives=3,
                                   max_anchors=None)
    cont.projector = torch.nn.Identity()
    s1 = torch.tensor([[0.6, 0.8], [1.0, 0.0]]).t().reshape(1, 2, 1, 2)  # cells w, a
    s2 = torch.tensor([[0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]).t().reshape(1, 2, 1, 3)  # cells t, v, u
    probs = lambda *p: torch.tensor(p).t().log().reshape(1, 2, 1, len(p))  # class probabilities per cell -> logits
    l1 = probs((0.7, 0.3), (0.6, 0.4))
    l2 = probs((0.1, 0.9), (0.2, 0.8), (0.7, 0.3))
    if flip1:  # what the network gives for a mirrored crop 1
        s1, l1 = s1.flip(-1), l1.flip(-1)
    pair = CropPair((0, 0, 1, 2), (0, 1, 1, 3), slice(0, 1), slice(1, 2), slice(0, 1), slice(0, 1))
    crops = CropViews(torch.zeros(1), torch.zeros(1), [pair], [flip1], [False])
    loss, stats = cont(s1, s2, l1, l2, crops)
    # only direction 1 -> 2 is active; t and v have a label (1) other than the anchor's (0), so with τ = 1:
    # ℓ = -log(r(a, t) / (r(a, t) + r(a, t) + r(a, v))) = log(2 + e^-1).
    # (Filtering by the positive's label would keep u instead: log 2; comparing w, the cell that sits there
    # in the mirrored map, with t: log(2 + e^-1.4).)
    assert loss.item() == pytest.approx(math.log(2 + math.exp(-1)), rel=1e-6)
    assert stats["cont/active"].item() == 1.0


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
