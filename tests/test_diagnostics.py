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
