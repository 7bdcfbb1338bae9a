"""The chapter 05 and 06 figures of clr_lib.viz: bars, label fractions, confusion matrix,
2-D maps and retrieval grids."""

import matplotlib.pyplot as plt  # the root conftest.py sets MPLBACKEND=agg
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba

from clr_lib.viz import (class_colours, confusion_matrix, plot_accuracy_bars,
                         plot_confusion_matrix, plot_embedding_maps, plot_label_fractions,
                         plot_retrieval)


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_accuracy_bars_have_the_values_and_a_legend_of_metrics():
    table = {"random init": {"kNN": 0.3, "linear": 0.35}, "SimCLR h": {"kNN": 0.7, "linear": 0.8},
             "supervised": {"linear": 0.9}}
    fig = plot_accuracy_bars(table, chance=0.1)
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert heights == pytest.approx([0.3, 0.7, 0.35, 0.8, 0.9])  # kNN bars, then linear
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["chance", "kNN", "linear"]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(table)
    assert "0.80" in [t.get_text() for t in ax.texts]


def test_label_fraction_curves():
    fig = plot_label_fractions([0.01, 0.1, 1.0], {"SimCLR": [0.5, 0.7, 0.9],
                                                  "from scratch": [0.2, 0.5, 0.9]})
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert ax.lines[1].get_ydata().tolist() == [0.2, 0.5, 0.9]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1%", "10%", "100%"]


def test_confusion_matrix_counts_and_row_shares():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    preds = torch.tensor([0, 0, 1, 1, 1, 0])
    counts = confusion_matrix(labels, preds, 3)
    assert counts.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    fig = plot_confusion_matrix(labels, preds, ["a", "b", "c"])
    shown = fig.axes[0].images[0].get_array()
    assert np.allclose(shown, [[2 / 3, 1 / 3, 0], [0, 1, 0], [1, 0, 0]])
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["a", "b", "c"]
    assert fig.axes[0].get_title() == "accuracy 0.67"


def test_confusion_matrix_with_a_class_never_predicted_and_one_never_present():
    # 5 classes: 2 is never predicted, 3 never present (but predicted), 4 neither
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 0])
    preds = torch.tensor([0, 3, 1, 1, 1, 0, 3, 3, 0])
    counts = confusion_matrix(labels, preds, 5)
    assert counts.tolist() == [[2, 1, 0, 1, 0],  # true 0: two right, one as 1, one as 3
                               [0, 2, 0, 0, 0],
                               [1, 0, 0, 2, 0],  # true 2: never right
                               [0, 0, 0, 0, 0],  # 3 never present: an empty row
                               [0, 0, 0, 0, 0]]
    assert counts.dtype == torch.int64
    fig = plot_confusion_matrix(labels, preds, ["a", "b", "c", "d", "e"])
    shown = fig.axes[0].images[0].get_array()
    assert np.allclose(shown, [[0.5, 0.25, 0, 0.25, 0], [0, 1, 0, 0, 0], [1 / 3, 0, 0, 2 / 3, 0],
                               [0] * 5, [0] * 5])  # an empty row shows zeros, not NaN
    assert fig.axes[0].get_title() == "accuracy 0.44"  # 4 of 9


def test_embedding_maps_side_by_side_with_a_legend_of_class_names():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 1, 2, 1, 0, 2, 2])
    maps = {"h": torch.randn(7, 2, generator=g), "z": torch.randn(7, 2, generator=g),
            "before": torch.randn(7, 2, generator=g)}
    fig = plot_embedding_maps(maps, labels, ["cat", "dog", "ship"], ncols=2)
    panels = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title() for ax in panels] == ["h", "z", "before"]
    assert len(fig.axes) == 4 and not fig.axes[3].axison  # a 2 x 2 grid, one left empty
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["cat", "dog", "ship"]
    ships = panels[1].collections[2]  # class 2 in the z panel
    assert np.allclose(ships.get_offsets(), maps["z"][labels == 2].numpy())
    assert np.allclose(ships.get_facecolor()[0], to_rgba(class_colours(3)[2]))


def test_retrieval_frames_right_neighbours_green_and_wrong_ones_red():
    queries = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    neighbours = torch.randint(0, 256, (2, 3, 3, 8, 8), dtype=torch.uint8)
    fig = plot_retrieval(queries, neighbours, torch.tensor([0, 1]),
                         torch.tensor([[0, 1, 0], [1, 1, 1]]), ["cat", "dog"])
    assert len(fig.axes) == 8
    green, red = to_rgba("tab:green"), to_rgba("tab:red")
    frames = [fig.axes[i].spines["top"].get_edgecolor() for i in (1, 2, 3, 5, 6, 7)]
    assert frames == [green, red, green, green, green, green]
    assert fig.axes[0].get_title() == "query: cat" and fig.axes[2].get_title() == "dog"
    assert fig.axes[0].get_ylabel() == "2/3 right" and fig.axes[4].get_ylabel() == "3/3 right"
    assert np.allclose(fig.axes[5].images[0].get_array(),
                       neighbours[1, 0].permute(1, 2, 0).numpy() / 255)
