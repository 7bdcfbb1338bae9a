"""Images per second of the two SimCLR augmentations: per-image torchvision v2 vs batched.

    python benchmarks/augment_throughput.py [--batch-size 512] [--repeats 7] [--blur]

Both make one view of every image of the same batch of 32x32 uint8 images (real CIFAR-10 from
$CLR_DATA_DIR when present, else the synthetic set), with the paper's CIFAR-10 recipe: crop,
flip, colour distortion s=0.5 (p=0.8), grayscale (p=0.2), no blur unless --blur. The per-image
pipeline is timed as a data loader would run it: a Python loop, then ``torch.stack``. The
figure is the median over repeats, after a warm-up. The course's target: batched >= 10x on a
CPU. Measured figures, with the machine: docs/record.md.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from clr_lib.augment import SimCLRAugment, augment_batch, reference_transform
from clr_lib.data import DatasetError, load_dataset, make_synthetic


def load_batch(n: int) -> tuple[torch.Tensor, str]:
    try:
        splits = load_dataset("folder", max_per_class=n // 9 + 8)  # 90% of it is train
        return splits.train.images[:n], splits.description
    except DatasetError:
        return make_synthetic(n, seed=0).images, "synthetic (no ImageFolder at $CLR_DATA_DIR)"


def median_seconds(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up: first calls allocate and pick kernels
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--blur", action="store_true", help="Gaussian blur on (p=0.5)")
    args = parser.parse_args()
    aug = SimCLRAugment(blur_p=0.5 if args.blur else 0.0)
    images, source = load_batch(args.batch_size)
    n = len(images)
    blur = "on" if args.blur else "off"
    print(f"data: {source}; batch {tuple(images.shape)} uint8; blur {blur}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        x = images.to(device)
        reference = reference_transform(aug)
        generator = torch.Generator(device).manual_seed(0)
        torch.manual_seed(0)
        per_image = median_seconds(lambda: torch.stack([reference(im) for im in x]),
                                   max(3, args.repeats // 2), device)
        batched = median_seconds(lambda: augment_batch(x, aug, generator), 4 * args.repeats,
                                 device)
        print(f"{device.type:4s}  per-image v2: {n / per_image:10,.0f} images/s   "
              f"batched: {n / batched:10,.0f} images/s   ratio: {per_image / batched:5.1f}x")


if __name__ == "__main__":
    main()
