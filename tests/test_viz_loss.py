"""The chapter-03 figures of clr_lib.viz: masks, similarity heatmap, temperature slider."""

import math

import matplotlib.pyplot as plt  # the root conftest.py sets MPLBACKEND=agg
import pytest
import torch

from clr_lib.loss import nt_xent
from clr_lib.viz import (plot_alignment_uniformity, plot_similarity_matrix, plot_temperature,
                         similarity_masks)


@pytest.fixture
def pairs():
    torch.manual_seed(0)
    z_i = torch.randn(6, 8)
    return z_i, z_i + 0.3 * torch.randn(6, 8)


def test_masks_partition_the_matrix():
    self_mask, pos, neg = similarity_masks(3)
    assert (self_mask.long() + pos.long() + neg.long()).eq(1).all()
    assert pos.sum(1).eq(1).all() and neg.sum(1).eq(2 * 3 - 2).all()
    assert pos[0, 3] and pos[3, 0] and pos[2, 5] and not pos[0, 1]


def test_similarity_heatmap_shows_cosine_similarities_with_the_diagonal_removed(pairs):
    z_i, z_j = pairs
    fig = plot_similarity_matrix(z_i, z_j)
    shown = torch.as_tensor(fig.axes[0].images[0].get_array().filled(float("nan")))
    assert shown.shape == (12, 12) and shown.diagonal().isnan().all()
    expected = torch.cosine_similarity(z_i[1], z_j[1], 0)
    assert shown[1, 6 + 1].item() == pytest.approx(expected.item(), rel=1e-5)
    plt.close(fig)


def test_temperature_figure_marks_the_loss_at_tau(pairs):
    z_i, z_j = pairs
    fig = plot_temperature(z_i, z_j, temperature=0.2, anchor=2)
    assert len(fig.axes) == 3
    weights = [c.get_offsets()[:, 1] for c in fig.axes[0].collections]
    assert sum(w.sum() for w in weights) == pytest.approx(1, rel=1e-5)  # a softmax
    marker = fig.axes[1].lines[1].get_ydata()[0]
    assert marker == pytest.approx(nt_xent(z_i, z_j, 0.2).item(), rel=1e-6)
    assert fig.axes[1].lines[2].get_ydata()[0] == pytest.approx(math.log(11))
    plt.close(fig)


def test_alignment_uniformity_figure_needs_2d_embeddings(pairs):
    z = torch.randn(5, 2)
    fig = plot_alignment_uniformity({"random": (z, torch.randn(5, 2)), "aligned": (z, z)})
    assert len(fig.axes) == 3
    plt.close(fig)
    with pytest.raises(ValueError, match="2-D"):
        plot_alignment_uniformity({"high-d": pairs})
