"""Accuracy per minute: the laptop profile under a time budget, and its pipeline's speed.

    python benchmarks/time_to_accuracy.py --budget-minutes 15 --seeds 0 1
    python benchmarks/time_to_accuracy.py --throughput-only

1. Throughput, side by side in one run: the course's pipeline (uint8 images in memory,
   batched views on the device, ``two_views``) against a conventional one (torchvision v2
   per-image transforms in a Dataset, a DataLoader with the best worker count for this
   machine), both feeding the same encoder at the same batch size and precision.
2. For each seed: train the profile for the budget and print kNN top-1 on the validation
   split held out from train (never a test split).

Run it alone: two trainings at once on a small machine measure nothing.

Throughput is measured with pairs of views, as many a step as the profile takes (512: the
laptop profile's 8 views of 64 images become 2 views of 256), since the conventional pipeline
makes pairs. The figures measured so far, and the commands, are in docs/record.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.utils.data import DataLoader, Dataset

from clr_lib.augment import SimCLRAugment, reference_transform, two_views
from clr_lib.config import get_config
from clr_lib.device import pick_device, use_bf16
from clr_lib.data import load_splits
from clr_lib.loss import nt_xent
from clr_lib.models import build_model
from clr_lib.optim import build_optimizer
from clr_lib.train import train


class PairDataset(Dataset):
    """The conventional way: two per-image torchvision transforms of one image."""

    def __init__(self, images: torch.Tensor, aug: SimCLRAugment):
        self.images, self.transform = images, reference_transform(aug)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.transform(self.images[i])


def step_rate(cfg, batches, seconds: float) -> float:
    """Training images per second over ``seconds`` of steps (after two warm-up steps)."""
    device = pick_device(cfg.device)
    model = build_model(cfg).to(device)
    optimizer = build_optimizer(cfg, model)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(cfg, device))
    done, start = 0, None
    for i, (x_i, x_j) in enumerate(batches):
        with autocast:
            _, z = model(torch.cat([x_i, x_j]).to(device))
        loss = nt_xent(*z.float().chunk(2), cfg.temperature)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i == 1:
            start = time.perf_counter()
        elif i > 1:
            done += len(x_i)
            if time.perf_counter() - start > seconds:
                break
    return done / (time.perf_counter() - start)


def throughput(cfg, images: torch.Tensor, seconds: float) -> None:
    # pairs of views, as many views a step as the profile (which may take V > 2 of fewer images)
    cfg = cfg.replace(batch_size=cfg.pair_batch_size, n_views=2)
    aug = SimCLRAugment.from_config(cfg)
    gen = torch.Generator().manual_seed(0)

    def batched():
        while True:
            idx = torch.randint(len(images), (cfg.batch_size,), generator=gen)
            yield two_views(images[idx], aug, gen)

    ours = step_rate(cfg, batched(), seconds)
    conventional = {}
    for workers in (0, 1, 2):
        loader = DataLoader(PairDataset(images, aug), batch_size=cfg.batch_size, shuffle=True,
                            num_workers=workers, drop_last=True, persistent_workers=workers > 0)
        conventional[workers] = step_rate(cfg, (b for _ in range(100) for b in loader), seconds)
    best = max(conventional, key=conventional.get)
    print(f"throughput, {cfg.encoder} width {cfg.width}, batch {cfg.batch_size}, "
          f"views {aug.size}px, {torch.get_num_threads()} threads:")
    for workers, rate in conventional.items():
        print(f"  per-image v2 + DataLoader, {workers} workers: {rate:8.1f} images/s")
    print(f"  course pipeline (batched two_views):       {ours:8.1f} images/s")
    print(f"  ratio vs the best conventional ({best} workers): {ours / conventional[best]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="laptop")
    parser.add_argument("--budget-minutes", type=float, default=15.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--throughput-seconds", type=float, default=20.0)
    parser.add_argument("--throughput-only", action="store_true")
    args = parser.parse_args()
    cfg = get_config(args.profile, budget_minutes=args.budget_minutes)
    splits = load_splits(cfg)
    print(f"data: {splits.description}; train {len(splits.train)}, val {len(splits.val)}")
    throughput(cfg, splits.train.images, args.throughput_seconds)
    if args.throughput_only:
        return
    accs = []
    for seed in args.seeds:
        history = train(cfg.replace(seed=seed), splits, progress=False)
        accs.append(history["knn_top1"][-1])
        images_per_s = statistics.median(history["images_per_s"])
        print(json.dumps(dict(seed=seed, budget_minutes=args.budget_minutes,
                              steps=history["step"][-1],
                              train_minutes=round(history["seconds"][-1] / 60, 2),
                              images_per_s=round(images_per_s, 1),
                              views_per_s=round(images_per_s * cfg.n_views, 1),
                              knn_top1_val=round(accs[-1], 4))), flush=True)
    if len(accs) > 1:
        print(f"kNN top-1 on val over seeds {args.seeds}: mean {statistics.mean(accs):.4f}, "
              f"min {min(accs):.4f}, max {max(accs):.4f}")


if __name__ == "__main__":
    main()
