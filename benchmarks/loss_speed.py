"""How fast are NT-Xent and the encoders on this machine? Prints figures; asserts nothing.

    python benchmarks/loss_speed.py             # loss at 2N = 512, then the three encoders
    python benchmarks/loss_speed.py --no-encoders

1. NT-Xent at 2N = 512 views of d = 128 (256 images, two views each), forward only:
   - the paper's Algorithm 1 written as loops over pairs (one cosine similarity per (i, j),
     one l(i, j) per view), as a learner first writes it;
   - a loop over the 2N anchors, each vectorised over its candidates;
   - clr_lib.loss.nt_xent: one (2N, 2N) matrix product and one cross-entropy.
2. Forward + backward images per second of each encoder f at batch 256 in train mode (the
   laptop ConvNet at width 32, ResNet-18 and ResNet-50 with the CIFAR stem). ResNet-50 is
   measured at a smaller batch on a CPU (a batch of 256 takes about a minute) and says so.

Run it alone: other jobs on the same cores change every figure. Figures measured with it, with
the machine: docs/record.md.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone, uninstalled
from clr_lib.loss import nt_xent  # noqa: E402
from clr_lib.models import build_encoder  # noqa: E402


def algorithm_1_loops(z_i: torch.Tensor, z_j: torch.Tensor, tau: float) -> float:
    """Chen et al. (2020), Algorithm 1, one pair at a time; views interleaved as the paper."""
    n = len(z_i)
    z = [v for k in range(n) for v in (z_i[k], z_j[k])]  # z_{2k-1}, z_{2k}
    s = [[(z[a] @ z[b] / (z[a].norm() * z[b].norm())).item() for b in range(2 * n)]
         for a in range(2 * n)]

    def l(a: int, b: int) -> float:
        den = sum(math.exp(s[a][k] / tau) for k in range(2 * n) if k != a)
        return -math.log(math.exp(s[a][b] / tau) / den)

    return sum(l(2 * k, 2 * k + 1) + l(2 * k + 1, 2 * k) for k in range(n)) / (2 * n)


def anchor_loop(z_i: torch.Tensor, z_j: torch.Tensor, tau: float) -> float:
    """One anchor at a time, each vectorised over its 2N candidates."""
    n = len(z_i)
    z = torch.nn.functional.normalize(torch.cat([z_i, z_j]), dim=1)
    total = 0.0
    for a in range(2 * n):
        logits = z @ z[a] / tau  # (2N,)
        logits[a] = float("-inf")
        total += (torch.logsumexp(logits, 0) - logits[(a + n) % (2 * n)]).item()
    return total / (2 * n)


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_loss(n: int = 256, d: int = 128, tau: float = 0.5) -> None:
    gen = torch.Generator().manual_seed(0)
    z_i, z_j = torch.randn(2, n, d, generator=gen)
    ref = algorithm_1_loops(z_i.double(), z_j.double(), tau)
    assert abs(nt_xent(z_i, z_j, tau).item() - ref) < 1e-4 * ref  # same number, then time it
    nt_xent(z_i, z_j, tau)  # warm-up
    t_pairs = median_seconds(lambda: algorithm_1_loops(z_i, z_j, tau), 3)
    t_anchor = median_seconds(lambda: anchor_loop(z_i, z_j, tau), 5)
    t_vec = median_seconds(lambda: nt_xent(z_i, z_j, tau), 50)
    za, zb = z_i.clone().requires_grad_(), z_j.clone().requires_grad_()
    t_vec_bwd = median_seconds(lambda: nt_xent(za, zb, tau).backward(), 50)
    print(f"NT-Xent, 2N = {2 * n}, d = {d}, forward, median time:")
    print(f"  Algorithm 1, loops over pairs   {t_pairs * 1e3:10.1f} ms  (3 runs)")
    print(f"  loop over anchors, vectorised   {t_anchor * 1e3:10.1f} ms  (5 runs)")
    print(f"  clr_lib.loss.nt_xent            {t_vec * 1e3:10.3f} ms  (50 runs; "
          f"{t_vec_bwd * 1e3:.3f} ms with backward)")
    print(f"  speed-up of nt_xent: {t_pairs / t_vec:,.0f}x over the pair loops, "
          f"{t_anchor / t_vec:,.0f}x over the anchor loop")


def bench_encoder(name: str, batch: int, repeats: int, width: int = 32) -> None:
    torch.manual_seed(0)
    f = build_encoder(name, width=width).train()
    x = torch.randn(batch, 3, 32, 32)

    def step():
        f.zero_grad(set_to_none=True)
        f(x).sum().backward()

    step()  # warm-up: allocations, oneDNN kernel choice
    seconds = median_seconds(step, repeats)
    label = f"{name} (width {width})" if name == "convnet" else f"{name}, CIFAR stem"
    print(f"  {label:22s} batch {batch:3d}: {batch / seconds:8.1f} images/s "
          f"({seconds:.2f} s per step, median of {repeats})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-encoders", action="store_true", help="only the loss")
    parser.add_argument("--resnet50-batch", type=int, default=32,
                        help="measured batch of ResNet-50 (256 takes minutes on a CPU)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")
    bench_loss()
    if args.no_encoders:
        return
    print("Encoders f, forward + backward, train mode, 32x32 inputs:")
    bench_encoder("convnet", 256, repeats=5)
    bench_encoder("resnet18", 256, repeats=2)
    bench_encoder("resnet50", args.resnet50_batch, repeats=2)
    if args.resnet50_batch != 256:
        print(f"  (resnet50 measured at batch {args.resnet50_batch}, not 256, to keep the "
              "run short: pass --resnet50-batch 256 for the full batch)")


if __name__ == "__main__":
    main()
