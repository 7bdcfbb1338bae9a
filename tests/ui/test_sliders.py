"""Chapters 01 and 03 in JupyterLab: run all cells, move a slider, see the figure change.

The learner's path, click for click: open the chapter, Run > Run All Cells, wait for the
widgets, press a key on the slider's handle, and compare the figure's PNG before and after.
A deliberately broken copy of chapter 01 (its slider no longer reaches the figure, see
``fixtures/broken_slider.json``) shows that the check fails when a slider is broken.
"""

from __future__ import annotations

import re
import time

import pytest

pytestmark = pytest.mark.ui

RUN_ALL_TIMEOUT_S = 240  # a whole chapter, smoke profile: 25-80 s on 2 busy cores
START_TIMEOUT_S = 30  # from Run All to the first cell queued
REDRAW_TIMEOUT_S = 30  # one redraw after a slider move


class SliderDidNotChangeFigure(AssertionError):
    pass


# ----------------------------------------------------------------------------- driving the page

def open_notebook(page, server, name: str) -> None:
    page.goto(server.lab_url(name, workspace=re.sub(r"\W", "-", name)))
    page.locator(".jp-NotebookPanel .jp-Cell").first.wait_for()
    # The notebook's kernel starts by itself; Run All before it is connected would only ask
    # for a kernel.
    wait_for_idle_kernel(page)


def wait_for_idle_kernel(page) -> None:
    """The status bar reads "Python 3 (ipykernel) | Idle"."""
    page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"\| Idle$")).first.wait_for()


def run_all_cells(page) -> None:
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-item[data-command='runmenu:run-all']").click()
    # Should JupyterLab still ask which kernel to use, answer as a learner would.
    dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
    try:
        dialog.wait_for(timeout=2000)
        dialog.locator(".jp-mod-accept").click()
    except Exception:  # no dialog: the usual case
        pass


_RUN_STATE_JS = """() => {
    const prompts = [...document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell .jp-InputArea .jp-InputPrompt')]
        .map(e => e.textContent.trim());
    const errors = [...document.querySelectorAll(
        '.jp-NotebookPanel .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
        .map(e => e.textContent).filter(t => t.includes('Traceback'));
    return {prompts, errors};
}"""


def wait_for_all_cells(page, name: str, unrun: list[str]) -> None:
    """Until every code cell shows an execution count ``[n]:``, or a cell raised.
    ``unrun``: the prompts before Run All, to notice a Run All that started nothing."""
    start = time.monotonic()
    deadline = start + RUN_ALL_TIMEOUT_S
    while True:
        state = page.evaluate(_RUN_STATE_JS)
        if state["prompts"] == unrun and time.monotonic() > start + START_TIMEOUT_S:
            raise AssertionError(f"{name}: Run > Run All Cells started no cell in "
                                 f"{START_TIMEOUT_S} s")
        busy = [p for p in state["prompts"] if "*" in p]
        if state["errors"] and not busy:
            raise AssertionError(f"{name}: a cell raised while running all cells:\n"
                                 + state["errors"][0][-3000:])
        if state["prompts"] and all(re.fullmatch(r"\[\d+\]:", p) for p in state["prompts"]):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{name}: not all cells ran in {RUN_ALL_TIMEOUT_S} s; "
                                 f"prompts {state['prompts']}")
        time.sleep(1)


def slider_cell(page, label: str):
    """The code cell whose output holds the slider described ``label``."""
    slider = page.locator(".jp-OutputArea .widget-slider", has=page.locator(
        ".widget-label", has_text=re.compile(rf"^{re.escape(label)}$")))
    slider.wait_for()
    cell = page.locator(".jp-CodeCell", has=slider)
    cell.scroll_into_view_if_needed()
    return cell, slider


def readout_text(readout, not_equal: str = "", timeout_s: float = 10) -> str:
    """The slider's value as its readout shows it, once it shows one (and a new one)."""
    deadline = time.monotonic() + timeout_s
    while (text := readout.inner_text().strip()) in ("", not_equal) and time.monotonic() < deadline:
        time.sleep(0.2)
    return text


def figure_src(cell) -> str:
    img = cell.locator(".jp-OutputArea img").last
    img.wait_for()
    return img.get_attribute("src")


def move_slider_and_compare(page, name: str, label: str, presses: int,
                            artifacts) -> tuple[str, str]:
    """Press ArrowRight ``presses`` times on the slider's handle; return the readout before
    and after. Raises SliderDidNotChangeFigure when the figure is redrawn unchanged."""
    cell, slider = slider_cell(page, label)
    readout = slider.locator(".widget-readout")
    before_value, before_src = readout_text(readout), figure_src(cell)
    stem = name.removesuffix(".ipynb")
    cell.locator(".jp-OutputArea").first.screenshot(path=str(artifacts / f"{stem}-before.png"))

    # Mark the figure now on screen, so that a redraw (a new <img>) can be told from no redraw.
    cell.locator(".jp-OutputArea img").last.evaluate("img => img.dataset.clrOld = '1'")
    handle = slider.locator(".noUi-handle")
    handle.focus()
    for _ in range(presses):
        handle.press("ArrowRight")
    after_value = readout_text(readout, not_equal=before_value)
    assert after_value != before_value, (
        f"{name}: the {label!r} slider did not move ({before_value} -> {after_value})")

    new_img = cell.locator(".jp-OutputArea img:not([data-clr-old])").last
    try:
        new_img.wait_for(timeout=REDRAW_TIMEOUT_S * 1000)
    except Exception:
        raise SliderDidNotChangeFigure(
            f"{name}: no new figure {REDRAW_TIMEOUT_S} s after moving {label!r} "
            f"from {before_value} to {after_value}") from None
    wait_for_idle_kernel(page)
    after_src = figure_src(cell)
    cell.locator(".jp-OutputArea").first.screenshot(path=str(artifacts / f"{stem}-after.png"))
    if after_src == before_src:
        raise SliderDidNotChangeFigure(
            f"{name}: moving {label!r} from {before_value} to {after_value} redrew the "
            "figure, but the new PNG is identical to the old one: the slider does not reach it")
    return before_value, after_value


def run_chapter_and_move(page, server, name: str, label: str, presses: int, artifacts):
    start = time.monotonic()
    open_notebook(page, server, name)
    opened = time.monotonic()
    unrun = page.evaluate(_RUN_STATE_JS)["prompts"]
    run_all_cells(page)
    wait_for_all_cells(page, name, unrun)
    ran = time.monotonic()
    page.screenshot(path=str(artifacts / f"{name.removesuffix('.ipynb')}-ran.png"))
    values = move_slider_and_compare(page, name, label, presses, artifacts)
    print(f"{name}: opened in {opened - start:.0f} s, ran all cells in {ran - opened:.0f} s, "
          f"slider {label!r} {values[0]} -> {values[1]} redrew in {time.monotonic() - ran:.0f} s")
    return values


# ----------------------------------------------------------------------------- tests

def test_colour_strength_slider_redraws_the_views(page, lab_server, artifacts):
    before, after = run_chapter_and_move(page, lab_server, "01_augmentations.ipynb",
                                         "colour s", presses=5, artifacts=artifacts)
    assert float(after) > float(before)


def test_temperature_slider_redraws_the_softmax_weights(page, lab_server, artifacts):
    before, after = run_chapter_and_move(page, lab_server, "03_nt_xent.ipynb", "tau",
                                         presses=5, artifacts=artifacts)
    assert float(after) > float(before)


def test_a_broken_slider_fails_the_check(page, lab_server, broken_chapter, artifacts):
    # The same PNG again: the widget may show it as a new <img> ("identical") or not update at
    # all ("no new figure"); either way the check must fail.
    with pytest.raises(SliderDidNotChangeFigure, match="identical|no new figure"):
        run_chapter_and_move(page, lab_server, broken_chapter, "colour s", presses=5,
                             artifacts=artifacts)
