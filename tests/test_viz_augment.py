"""Tests for the chapter 01 plotting functions in clr_lib/viz.py (pure: tensors in, Figure out)."""

import matplotlib

matplotlib.use("agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from clr_lib.viz import plot_param_laws, plot_view_grid  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_view_grid_draws_every_image_with_its_pixels():
    views = torch.randint(0, 256, (2, 3, 3, 8, 8), dtype=torch.uint8)  # 2 rows, 3 views
    fig = plot_view_grid(views, row_titles=["a", "b"], col_titles=["x", "x_i", "x_j"])
    axes = fig.axes
    assert len(axes) == 6
    assert [ax.get_title() for ax in axes[:3]] == ["x", "x_i", "x_j"]
    assert axes[3].get_ylabel() == "b"
    shown = axes[4].images[0].get_array()  # row 1, view 1
    assert np.allclose(shown, views[1, 1].permute(1, 2, 0).numpy() / 255)


def test_view_grid_takes_one_row_and_float_pixels_clamped():
    views = torch.linspace(-0.5, 1.5, 4 * 3 * 4 * 4).view(4, 3, 4, 4)  # float, out of range
    fig = plot_view_grid(views, title="one row")
    assert len(fig.axes) == 4 and fig._suptitle.get_text() == "one row"
    shown = fig.axes[0].images[0].get_array()
    assert shown.min() >= 0 and shown.max() <= 1


def test_param_laws_one_panel_per_key_and_counts_add_up():
    rng = np.random.default_rng(0)
    ref = {"area": rng.uniform(0, 1, 500).tolist(), "ratio": rng.uniform(1, 2, 500).tolist()}
    ours = {"area": rng.uniform(0, 1, 300).tolist(), "ratio": rng.uniform(1, 2, 300).tolist()}
    fig = plot_param_laws(ref, ours, bins=10)
    assert len(fig.axes) == 2 and fig.axes[1].get_xlabel() == "ratio"
    bars = [p.get_height() for p in fig.axes[0].patches[:10]]  # the reference's 10 bars
    assert sum(bars) == 500
