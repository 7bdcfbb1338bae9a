"""Time the chapters as a learner's kernel runs them, in the laptop profile, and record it.

    python tools/time_chapters.py --data-dir DIR --runs-dir runs --case with
    python tools/time_chapters.py --data-dir DIR --runs-dir /tmp/empty --case without 04 05

Each chapter runs headless (``jupyter nbconvert --execute``) with ``CLR_PROFILE=laptop``, the
given data and folder of runs: ``--case with`` expects chapter 04's checkpoint (and chapter
05's baselines) in it, ``--case without`` an empty one, made anew for each chapter. The wall
time of each chapter goes to results/learner_times.json, which the chapters' Time lines and
the README's table quote (tests/test_record.py checks them). Run it alone on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "results" / "learner_times.json"


def minutes(seconds: float) -> str:
    """A learner's reading of a duration: '40 s', '4.7 min', '17.4 min'."""
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def run(chapter: Path, env: dict) -> float:
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook",
                        "--execute", "--ExecutePreprocessor.timeout=3600", "--output-dir", out,
                        str(chapter)], cwd=chapter.parent, env=env, check=True,
                       capture_output=True)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="*", help="chapter numbers (default: all)")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--runs-dir", required=True)
    parser.add_argument("--case", choices=("with", "without"), required=True)
    args = parser.parse_args()
    chapters = [p for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
                if not args.chapters or p.name[:2] in args.chapters]
    record = json.loads(RECORD.read_text()) if RECORD.exists() else {
        "about": "wall time of each chapter in the laptop profile, run headless as a "
                 "learner's kernel runs it (python tools/time_chapters.py)", "chapters": {}}
    for chapter in chapters:
        runs = Path(args.runs_dir)
        if args.case == "without":
            shutil.rmtree(runs, ignore_errors=True)
            runs.mkdir(parents=True)
        env = {**os.environ, "CLR_PROFILE": "laptop", "CLR_DATA_DIR": args.data_dir,
               "CLR_RUNS_DIR": str(runs.resolve()), "MPLBACKEND": "agg"}
        env.pop("CLR_BUDGET_MINUTES", None)
        seconds = run(chapter, env)
        entry = record["chapters"].setdefault(chapter.stem, {})
        entry[f"{args.case}_checkpoint"] = minutes(seconds)
        entry[f"{args.case}_checkpoint_s"] = round(seconds)
        print(f"{chapter.stem}: {seconds:.0f} s ({args.case} chapter 04's checkpoint)", flush=True)
        RECORD.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
