"""How long does evaluation take on this machine? Prints figures; asserts nothing.

    python benchmarks/evaluate_speed.py            # random features of the laptop sizes
    python benchmarks/evaluate_speed.py --small    # the smoke sizes (900 x 128), seconds

1. extract_features: h of 5,000 images by the laptop ConvNet (width 32), eval mode.
2. The weighted kNN (k = 200) of 5,000 queries against a bank of 45,000 features.
3. The linear probe (``linear_probe``: seven penalties by L-BFGS, 200 iterations each at most)
   on 45,000 x 1,024 features and on a fiftieth of them, with one CPU thread and with torch's
   default number, alternated: clr_lib fits probes under ``evaluate.SMALL_PROBE`` feature
   values on one thread.
4. UMAP (clr_lib.maps.map_2d) of 1,000 and 5,000 points: the first call compiles numba code.

Run it alone: other jobs on the same cores change every figure, the threaded fits most.
Figures measured with it are in docs/record.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone, uninstalled
from clr_lib import evaluate  # noqa: E402
from clr_lib.evaluate import extract_features, knn_accuracy, linear_probe  # noqa: E402
from clr_lib.models import build_encoder  # noqa: E402


def timed(label: str, fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    print(f"{label:48s} {time.perf_counter() - t0:7.2f} s")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="smoke sizes: seconds")
    args = parser.parse_args()
    n_bank, n_query, dim, n_images = (900, 100, 128, 1000) if args.small else (
        45_000, 5_000, 1024, 5_000)
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads")
    g = torch.Generator().manual_seed(0)

    torch.manual_seed(0)
    f = build_encoder("convnet", 16 if args.small else 32)
    images = torch.randint(0, 256, (n_images, 3, 32, 32), dtype=torch.uint8, generator=g)
    timed(f"extract_features, {n_images} images", extract_features, f, images)

    bank = torch.randn(n_bank, dim, generator=g)
    labels = torch.randint(0, 10, (n_bank,), generator=g)
    queries = torch.randn(n_query, dim, generator=g)
    timed(f"kNN, {n_query} queries x {n_bank} bank", knn_accuracy, bank, labels, queries,
          labels[:n_query], 200, 0.1)
    # class structure, so that L-BFGS has a real optimum to walk to
    x = bank + 0.5 * torch.randn(10, dim, generator=g)[labels]
    for size in (n_bank, n_bank // 50):  # above clr_lib's SMALL_PROBE, and below it
        seconds = {1: [], torch.get_num_threads(): []}
        for _ in range(2):  # alternated, so that neither setting always runs first
            for threads in seconds:
                evaluate.SMALL_PROBE = 10**12 if threads == 1 else 0  # always / never 1 thread
                t0 = time.perf_counter()
                linear_probe(x[:size], labels[:size])
                seconds[threads].append(time.perf_counter() - t0)
        for threads, s in seconds.items():
            print(f"{f'linear probe, {size} x {dim}, {threads} thread(s)':48s} "
                  f"{min(s):7.2f} s (best of 2)")

    from clr_lib.maps import map_2d
    for n in ((300, 900) if args.small else (1000, 5000)):
        pts = torch.randn(n, dim, generator=g) + 2 * torch.randn(10, dim, generator=g)[
            torch.arange(n) % 10]
        timed(f"UMAP, {n} points (cache off)", map_2d, pts, "umap", cache=False)


if __name__ == "__main__":
    main()
