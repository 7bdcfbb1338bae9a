"""Figures never go stale: every measured figure the README or a chapter quotes in prose comes
from a committed record (results/), and every figure attributed to the paper is one of the
paper's (with where it stands).

A percentage with a decimal point ("70.8%") in README.md or in a chapter's markdown must be a
figure of results/laptop_profile.json, of chapter 07's grids in results/, or of PAPER below.
The chapters' "Time" lines and the README's table of learner times must be those of
results/learner_times.json.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECORD = json.loads((ROOT / "results" / "laptop_profile.json").read_text())
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

# Figures of Chen et al. (2020) that the course quotes, and where they stand in the paper.
PAPER = {
    "69.3": "Table 6, SimCLR ResNet-50, linear top-1",
    "74.2": "Table 6, SimCLR ResNet-50 (2x)",
    "76.5": "Table 6, SimCLR ResNet-50 (4x); Tables 1 and B.3, supervised ResNet-50",
    "85.8": "Table 7, ResNet-50 (4x), top-5 with 1% of the labels",
    "75.5": "Table 7, ResNet-50, top-5 with 1% of the labels",
    "48.3": "Table B.4, ResNet-50, top-1 with 1% of the labels",
    "65.6": "Table B.4, ResNet-50, top-1 with 10% of the labels",
    "63.0": "Table B.4, ResNet-50 (4x), top-1 with 1% of the labels",
    "25.4": "Table B.4, supervised ResNet-50, top-1 with 1% of the labels",
    "57.5": "Table B.1, batch 256, 100 epochs, linear learning-rate scaling",
    "64.8": "Table B.1, batch 8192, 100 epochs, linear learning-rate scaling",
    "87.8": "Table 7, ResNet-50, top-5 with 10%; Table 5, tau 0.1, contrastive accuracy",
    "94.0": "Section B.9, CIFAR-10 linear evaluation, ResNet-50",
    "95.1": "Section B.9, CIFAR-10 supervised baseline",
    "63.2": "Table 1 and Appendix A, colour strength 1 without blur",
    "64.5": "Table 1 and Appendix A, colour strength 1 with blur",
    "63.4": "Appendix A, without the flip",
    "59.6": "Table 1, strength 1/8; Table 3, corrupted, g(h)",
    "61.0": "Table 1, strength 1/4",
    "62.6": "Table 1, strength 1/2",
    "77.0": "Table 1, supervised, strength 1/8",
    "76.7": "Table 1, supervised, strength 1/4",
    "75.7": "Table 1, supervised, strength 1",
    "59.7": "Table 5, tau 0.05",
    "64.4": "Table 5, tau 0.1",
    "60.7": "Table 5, tau 0.5",
    "58.0": "Table 5, tau 1",
    "57.2": "Table 5, dot product, tau 10",
    "57.0": "Table 5, dot product, tau 100",
    "90.5": "Table 5, tau 0.05, contrastive accuracy",
    "68.2": "Table 5, tau 0.5, contrastive accuracy",
    "59.1": "Table 5, tau 1, contrastive accuracy",
    "91.7": "Table 5, dot product tau 10, contrastive accuracy",
    "92.1": "Table 5, dot product tau 100, contrastive accuracy",
    "99.3": "Table 3, colour vs grayscale from h",
    "97.4": "Table 3, colour vs grayscale from g(h)",
    "67.6": "Table 3, rotation from h",
    "25.6": "Table 3, rotation from g(h)",
    "99.5": "Table 3, corrupted from h",
    "96.6": "Table 3, Sobel from h",
    "56.3": "Table 3, Sobel from g(h)",
    "76.3": "Section B.8.1, supervised ResNet-50 baseline",
    "78.3": "Section B.8.1, supervised ResNet-50 (4x) baseline",
}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def record_figures() -> set[str]:
    """Every figure the committed records hold, as a percentage with one decimal."""
    found: set[str] = set()

    def walk(obj):
        if isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)
        elif isinstance(obj, float) and 0 <= obj <= 1:
            found.add(_pct(obj))

    walk(RECORD)
    runs = [r["knn_top1"] for r in RECORD["profile"]["runs"]]
    found |= {_pct(sum(runs) / len(runs)), _pct(min(runs)), _pct(max(runs))}
    for path in (ROOT / "results").glob("*/*.json"):  # chapter 07's grids
        walk(json.loads(path.read_text())["metrics"])
    for text in re.findall(r"\d+\.\d%", " ".join(d["evidence"] for d in RECORD["departures"])):
        found.add(text[:-1])  # the evidence lines of the departures are part of the record
    return found


def prose() -> list[tuple[str, str]]:
    """(where, text) of the README and of every chapter's markdown cells."""
    out = [("README.md", (ROOT / "README.md").read_text())]
    for path in NOTEBOOKS:
        cells = json.loads(path.read_text())["cells"]
        out += [(f"{path.name} cell {i}", "".join(c["source"]))
                for i, c in enumerate(cells) if c["cell_type"] == "markdown"]
    return out


def test_the_record_is_complete():
    runs = RECORD["profile"]["runs"]
    assert len({r["seed"] for r in runs}) == len(runs) >= 3
    assert all(0.3 < r["knn_top1"] < 1 and r["steps"] > 0 for r in runs)
    assert {d["name"] for d in RECORD["departures"]} >= {"16-pixel views", "Muon"}


def unrecorded(text: str, allowed: set[str]) -> list[str]:
    """The decimal percentages of ``text`` ("70.8%", "70.8 %") that ``allowed`` lacks."""
    return [m for m in re.findall(r"(\d+\.\d)\s?%", text) if m not in allowed]


def test_every_decimal_percentage_in_the_prose_is_a_recorded_or_a_paper_figure():
    allowed = record_figures() | set(PAPER)
    stale = [f"{where}: {m}%" for where, text in prose() for m in unrecorded(text, allowed)]
    assert not stale, ("figures in prose that no record holds (print them from "
                       f"results/laptop_profile.json, or add the paper's to PAPER): {stale}")


def test_the_check_catches_a_stale_figure():
    text = "kNN 70.8% after 15 minutes (64.9 % a month ago); 45,000 images, 10% of them"
    assert unrecorded(text, {"70.8"}) == ["64.9"]
    assert unrecorded(text, {"70.8", "64.9"}) == []


TIMES = ROOT / "results" / "learner_times.json"


@pytest.mark.skipif(not TIMES.exists(), reason="results/learner_times.json not recorded yet")
def test_time_lines_are_the_measured_ones():
    times = json.loads(TIMES.read_text())["chapters"]
    readme = (ROOT / "README.md").read_text()
    for path in NOTEBOOKS:
        t = times[path.stem]
        header = "".join(json.loads(path.read_text())["cells"][0]["source"])
        assert t["with_checkpoint"] in header, f"{path.name}: its Time line lacks {t}"
        if "without_checkpoint" in t:
            assert t["without_checkpoint"] in header, f"{path.name}: its Time line lacks {t}"
        else:  # a chapter that does not read chapter 04's checkpoint
            assert "does not read chapter 04's checkpoint" in header, path.name
        row = (f"| `{path.stem}` | {t['with_checkpoint']} | "
               f"{t.get('without_checkpoint', 'the same: it does not read it')} |")
        assert row in readme, f"README: the row of {path.stem} should read {row!r}"
