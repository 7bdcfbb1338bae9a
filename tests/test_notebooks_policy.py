"""Notebooks are committed with outputs stripped, except small deterministic text outputs in
cells marked ``# NBVAL_CHECK_OUTPUT``; never images. ``python tools/strip_outputs.py`` fixes
what this test finds."""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
MAX_CHECKED_OUTPUT_CHARS = 2000


def test_the_course_has_chapters():
    assert NOTEBOOKS, "no notebooks found in notebooks/"
    assert NOTEBOOKS[0].name.startswith("00_")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_outputs_are_stripped_except_checked_text(path):
    nb = json.loads(path.read_text())
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        outputs = cell.get("outputs", [])
        if "NBVAL_CHECK_OUTPUT" not in source:
            assert not outputs and cell.get("execution_count") is None, (
                f"{path.name} cell {i}: outputs committed in a cell not marked "
                "NBVAL_CHECK_OUTPUT; run python tools/strip_outputs.py")
            continue
        for out in outputs:
            assert not any(k.startswith("image/") for k in out.get("data", {})), (
                f"{path.name} cell {i}: an image output is committed")
        text = json.dumps(outputs)
        assert len(text) < MAX_CHECKED_OUTPUT_CHARS, f"{path.name} cell {i}: output too large"
        if outputs:
            assert cell.get("execution_count") is not None, (
                f"{path.name} cell {i}: nbval compares only cells with an execution count")
