"""Tests for clr_lib.viz.sliders: controls that redraw a pure plotting function's figure."""

import base64

import matplotlib

matplotlib.use("agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from ipywidgets import FloatSlider, IntSlider, Output  # noqa: E402

from clr_lib.viz import sliders  # noqa: E402


def test_sliders_redraw_the_figure_with_the_controls_values():
    calls = []

    def plot(a, b):
        calls.append((a, b))
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.plot([0, a], [0, b])
        return fig

    open_before = set(plt.get_fignums())  # other tests may leave figures open
    a, b = FloatSlider(value=1.0, min=0, max=2), IntSlider(value=3, min=0, max=5)
    box = sliders(plot, a=a, b=b)
    assert list(box.children[:2]) == [a, b] and isinstance(box.children[2], Output)
    first = box.children[2].outputs
    assert calls == [(1.0, 3)] and len(first) == 1
    png = base64.b64decode(first[0]["data"]["image/png"])
    assert png.startswith(b"\x89PNG")
    b.value = 4  # a change of any control redraws, with every control's value
    assert calls == [(1.0, 3), (1.0, 4)]
    assert box.children[2].outputs[0]["data"]["image/png"] != first[0]["data"]["image/png"]
    assert set(plt.get_fignums()) == open_before  # each figure is closed once drawn: none piles up


def test_sliders_show_an_error_of_the_first_draw():
    def broken(x):
        raise ValueError("bad x")

    with pytest.raises(ValueError, match="bad x"):
        sliders(broken, x=IntSlider(value=0))
