"""How long does evaluation take on this machine? Prints figures; asserts nothing.

    python benchmarks/evaluate_speed.py            # random features of the laptop sizes
    python benchmarks/evaluate_speed.py --small    # the smoke sizes (900 x 128), seconds

1. extract_features: h of 5,000 images by the laptop ConvNet (width 32), eval mode.
2. The weighted kNN (k = 200) of 5,000 queries against a bank of 45,000 features.
3. One linear probe fit (L-BFGS, 200 iterations at most) on 45,000 x 256 features, with one
   CPU thread (what clr_lib.evaluate uses) and with torch's default number of threads.
4. UMAP (clr_lib.maps.map_2d) of 1,000 and 5,000 points: the first call compiles numba code.

Measured on 2 CPU cores shared with other jobs (load average 3-5, so pessimistic; torch
2.14.1, umap-learn 0.5.12, numba 0.68.1, seed 0, 2 threads):
    extract_features, 5000 images (width 32)            17.06 s
    kNN, 5000 queries x 45000 bank                       4.96 s
    linear probe fit, 45000 x 256, 1 thread              2.70 s
    linear probe fit, 45000 x 256, 2 threads             4.80 s
    UMAP, 1000 points (first call: compiles)            23.70 s
    UMAP, 5000 points                                   18.53 s
and with --small: probe fit 900 x 128, 1 thread 0.12 s, 2 threads 2.46 s (the threads wait
on each other); UMAP first call (300 points) 15.3 s, then 900 points 3.0 s. Idle, the same
machine gave: UMAP first call ~8 s, 1,000 points 1.6 s, 5,000 points 8.6 s.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone, uninstalled
from clr_lib import evaluate  # noqa: E402
from clr_lib.evaluate import extract_features, fit_linear_probe, knn_accuracy  # noqa: E402
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
        45_000, 5_000, 256, 5_000)
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
    timed(f"linear probe fit, {n_bank} x {dim}, 1 thread", fit_linear_probe, x, labels, 10, 1e-4)
    evaluate._one_thread = nullcontext  # what the fit costs without clr_lib's one-thread pin
    timed(f"linear probe fit, {n_bank} x {dim}, {torch.get_num_threads()} threads",
          fit_linear_probe, x, labels, 10, 1e-4)

    from clr_lib.maps import map_2d
    for n in ((300, 900) if args.small else (1000, 5000)):
        pts = torch.randn(n, dim, generator=g) + 2 * torch.randn(10, dim, generator=g)[
            torch.arange(n) % 10]
        timed(f"UMAP, {n} points (cache off)", map_2d, pts, "umap", cache=False)


if __name__ == "__main__":
    main()
