"""clr_lib.diagnostics: alignment, uniformity, std of normalised embeddings, positive rank."""

import math

import pytest
import torch

from clr_lib.diagnostics import (alignment, anchor_softmax, embedding_report, embedding_std,
                                 hard_negative_share, positive_rank, positive_topk, uniformity)
from clr_lib.loss import nt_xent


@pytest.fixture
def z():
    torch.manual_seed(0)
    return torch.randn(256, 512)


def test_alignment_is_0_for_equal_pairs_and_4_for_opposite_ones(z):
    assert alignment(z, 2 * z) == pytest.approx(0, abs=1e-6)  # scale does not matter
    assert alignment(z, -z) == pytest.approx(4, rel=1e-6)
    assert alignment(z, z.roll(1, 0)) == pytest.approx(2, abs=0.1)  # random pairs: ~2


def test_uniformity_is_0_when_collapsed_and_about_minus_4_when_spread(z):
    assert uniformity(torch.ones(10, 3)) == pytest.approx(0, abs=1e-6)
    two_poles = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # |u - v|^2 = 4
    assert uniformity(two_poles) == pytest.approx(-8, rel=1e-6)
    assert -4.1 < uniformity(z) < -3.8


def test_embedding_std_is_0_when_collapsed_and_1_over_sqrt_d_when_spread(z):
    assert embedding_std(torch.ones(10, 3) * torch.rand(10, 1)) == pytest.approx(0, abs=1e-6)
    assert embedding_std(z) == pytest.approx(1 / math.sqrt(512), rel=0.05)


def test_positive_rank_by_hand():
    # pairs (a, a'), (b, b'), (c, c'): a' is closer to b and b' (0.8) than to a (0.6), so
    # anchor a' ranks its positive third; every other anchor ranks its own first.
    z_i = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    z_j = torch.tensor([[0.6, 0.8], [0.0, 1.0], [-1.0, 0.0]])
    rank = positive_rank(z_i, z_j)
    assert rank.tolist() == [0, 0, 0, 2, 0, 0]
    assert positive_topk(z_i, z_j, ks=(1, 3)) == {"top1": pytest.approx(5 / 6), "top3": 1.0}


def cosines(z_i, z_j):
    """The (2N, 2N) cosine similarities of [z_i; z_j] in float64, entry by entry."""
    z = torch.cat([z_i, z_j]).double()
    return [[(a @ b / (a.norm() * b.norm())).item() for b in z] for a in z]


def positive_rank_reference(z_i, z_j):
    """For each anchor a, the candidates c (not a, not its positive p) at least as similar
    to a as p is."""
    n, sim = len(z_i), cosines(z_i, z_j)
    ranks = []
    for a in range(2 * n):
        p = (a + n) % (2 * n)
        ranks.append(sum(sim[a][c] >= sim[a][p] for c in range(2 * n) if c not in (a, p)))
    return ranks


def hard_negative_share_reference(z_i, z_j, tau, fraction):
    """Per anchor: softmax(sim / tau) over its 2N - 2 negatives, the weight of its
    round(fraction (2N - 2)) heaviest (at least one); the mean over the 2N anchors."""
    n, sim = len(z_i), cosines(z_i, z_j)
    k = max(1, round(fraction * (2 * n - 2)))
    shares = []
    for a in range(2 * n):
        neg = [math.exp(sim[a][c] / tau) for c in range(2 * n) if c not in (a, (a + n) % (2 * n))]
        shares.append(sum(sorted(neg, reverse=True)[:k]) / sum(neg))
    return sum(shares) / len(shares)


@pytest.mark.parametrize("noise", [0.1, 1.0, 3.0])
def test_positive_rank_matches_a_loop_over_the_candidates(noise):
    g = torch.Generator().manual_seed(int(noise * 10))
    z_i = torch.randn(12, 6, generator=g)
    z_j = z_i + noise * torch.randn(12, 6, generator=g)
    rank = positive_rank(z_i, z_j)
    expected = positive_rank_reference(z_i, z_j)
    assert rank.tolist() == expected
    assert positive_topk(z_i, z_j, ks=(1, 3)) == {
        "top1": pytest.approx(sum(r < 1 for r in expected) / 24),
        "top3": pytest.approx(sum(r < 3 for r in expected) / 24)}


@pytest.mark.parametrize("tau, fraction", [(0.05, 0.1), (0.5, 0.1), (5.0, 0.3), (0.2, 0.01)])
def test_hard_negative_share_matches_a_loop_over_the_anchors(tau, fraction):
    g = torch.Generator().manual_seed(11)
    z_i = torch.randn(10, 5, generator=g)
    z_j = z_i + 0.5 * torch.randn(10, 5, generator=g)
    expected = hard_negative_share_reference(z_i, z_j, tau, fraction)
    assert hard_negative_share(z_i, z_j, tau, fraction) == pytest.approx(expected, rel=1e-5)


def test_positive_rank_is_0_for_perfect_pairs_and_last_when_collapsed(z):
    assert positive_rank(z, z).eq(0).all()
    ones = torch.ones(8, 4)
    assert positive_rank(ones, ones).eq(2 * 8 - 2).all()  # ties count against the positive
    assert positive_topk(ones, ones) == {"top1": 0.0, "top5": 0.0}


def test_anchor_softmax_gives_back_the_loss():
    torch.manual_seed(1)
    z_i, z_j = torch.randn(2, 6, 5)
    per_anchor = []
    for a, b in ((z_i, z_j), (z_j, z_i)):
        for k in range(6):
            sim, p, pos = anchor_softmax(a, b, 0.4, anchor=k)
            assert sim.shape == (11,) and p.sum().item() == pytest.approx(1, rel=1e-6)
            assert sim[pos].item() == pytest.approx(torch.cosine_similarity(a[k], b[k], 0).item(),
                                                    rel=1e-5)
            per_anchor.append(-p[pos].log())
    assert torch.stack(per_anchor).mean().item() == pytest.approx(nt_xent(z_i, z_j, 0.4).item(),
                                                                  rel=1e-5)


def test_hard_negative_share_rises_from_fraction_to_1_as_tau_falls(z):
    z_i, z_j = z[:64], z[64:128]
    shares = [hard_negative_share(z_i, z_j, t, fraction=0.1) for t in (100.0, 1.0, 0.1, 0.01)]
    assert shares == sorted(shares)
    assert shares[0] == pytest.approx(13 / 126, rel=0.02)  # round(0.1 * 126) = 13 negatives
    assert shares[-1] > 0.9


def test_embedding_report_keys(z):
    report = embedding_report(z[:8], z[8:16])
    assert set(report) == {"alignment", "uniformity", "std", "top1", "top5"}
    assert all(isinstance(v, float) for v in report.values())
