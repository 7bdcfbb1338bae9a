"""Strip notebook outputs before committing, keeping only cells marked NBVAL_CHECK_OUTPUT.

    python tools/strip_outputs.py notebooks/*.ipynb             # strip only
    python tools/strip_outputs.py --execute notebooks/03_*.ipynb  # run (smoke profile), then strip

With --execute the notebook is run in the smoke profile first, so that the cells marked
``# NBVAL_CHECK_OUTPUT`` store the text that nbval will compare. Image outputs are never kept.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import nbformat

MARK = "NBVAL_CHECK_OUTPUT"


def strip(path: str) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        keep = MARK in cell.source
        if keep:
            cell.outputs = [o for o in cell.outputs
                            if not any(k.startswith("image/") for k in o.get("data", {}))]
        else:
            cell.outputs = []
            cell.execution_count = None
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    nb.metadata.get("language_info", {}).pop("version", None)
    nbformat.write(nb, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--execute", action="store_true", help="run in the smoke profile first")
    args = parser.parse_args()
    for path in args.paths:
        if args.execute:
            env = {**os.environ, "CLR_PROFILE": "smoke", "MPLBACKEND": "agg"}
            subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook",
                            "--execute", "--inplace", "--ExecutePreprocessor.timeout=600",
                            path], check=True, env=env)
        strip(path)
        print("stripped", path)


if __name__ == "__main__":
    main()
