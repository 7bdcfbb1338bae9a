"""Every chapter runs to the end in the laptop profile, the one a CPU learner gets by default,
on the real CIFAR-10 images, as a kernel runs it: headless, with ``jupyter nbconvert --execute``.

nbval runs the chapters in the smoke profile (``pytest --nbval``); this test runs them again
with ``CLR_PROFILE=laptop`` and a training budget of seconds (``CLR_BUDGET_MINUTES``, the one
override, which changes nothing else), in order, in a folder of runs of their own: chapter
04's checkpoint is the one chapters 05-08 find. It needs the images: ``CLR_DATA_DIR`` must
name a folder that holds CIFAR-10 or an ImageFolder; without one it is skipped (CI, which has
them, sets ``CLR_LAPTOP_REQUIRED=1`` and fails instead).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
BUDGET_MINUTES = "0.3"


def _data_dir() -> str | None:
    named = os.environ.get("CLR_DATA_DIR")
    if named and ((Path(named) / "train").is_dir() or any(Path(named).glob("cifar-10*"))):
        return named
    return None


@pytest.fixture(scope="module")
def laptop_env(tmp_path_factory):
    data = _data_dir()
    if data is None:
        if os.environ.get("CLR_LAPTOP_REQUIRED") == "1":
            pytest.fail("CLR_LAPTOP_REQUIRED=1 but CLR_DATA_DIR names no dataset")
        pytest.skip("the laptop chapters need the real images: set CLR_DATA_DIR")
    runs = tmp_path_factory.mktemp("laptop-runs")
    return {**os.environ, "CLR_PROFILE": "laptop", "CLR_BUDGET_MINUTES": BUDGET_MINUTES,
            "CLR_DATA_DIR": data, "CLR_RUNS_DIR": str(runs), "MPLBACKEND": "agg"}


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_runs_headless_in_the_laptop_profile(chapter, laptop_env, tmp_path):
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
         "--ExecutePreprocessor.timeout=900", "--output-dir", str(tmp_path), str(chapter)],
        cwd=chapter.parent, env=laptop_env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-4000:]
    print(f"{chapter.stem}: {time.perf_counter() - start:.0f} s in the laptop profile")
