"""How long loading an ImageFolder of CIFAR-10 JPEGs takes, first (decode) and cached.

    python benchmarks/load_data.py [DATA_DIR]   # default: $CLR_DATA_DIR

Target (foundation issue): 50k JPEGs in under 30 s the first time, under 1 s from the cache.
The first load runs with an empty temporary cache, so the figure is a true cold decode.
"""

import os
import statistics
import sys
import tempfile
import time

from clr_lib.data import load_dataset, resolve_data_dir


def timed(root):
    t = time.perf_counter()
    splits = load_dataset("folder", root)
    return time.perf_counter() - t, splits


def main() -> None:
    root = resolve_data_dir(sys.argv[1] if len(sys.argv) > 1 else None)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CLR_CACHE_DIR"] = tmp
        first, splits = timed(root)
        cached = [timed(root)[0] for _ in range(5)]
    n = len(splits.train) + len(splits.val)
    print(f"data: {splits.description}; {n} images {tuple(splits.train.images.shape[1:])}")
    print(f"first load (decode + cache write): {first:7.2f} s   ({n / first:,.0f} images/s)")
    print(f"cached load, median of 5:          {statistics.median(cached):7.3f} s")


if __name__ == "__main__":
    main()
