"""Is Conv3x3's GEMM weight gradient worth it here? Prints figures; asserts nothing.

    python benchmarks/conv_weight_grad.py

1. For each conv of the laptop ConvNet on 16x16 views (512 views, one step's), in
   bf16 channels_last: the forward pass, oneDNN's weight gradient and
   ``clr_lib.models.conv3x3_weight_grad`` (dL/dW = G^T P), with their relative difference.
2. One whole training step of the laptop profile (its views, f, g, NT-Xent, backward, its
   optimiser), with the library's Conv3x3 and with every conv swapped for a plain nn.Conv2d
   holding the same weights, alternating the two, in views per second.

Medians of repeated timings; this shared CPU's pace drifts, so compare the columns of one run.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone, uninstalled
from clr_lib.augment import SimCLRAugment, make_views  # noqa: E402
from clr_lib.config import get_config  # noqa: E402
from clr_lib.loss import nt_xent_views  # noqa: E402
from clr_lib.models import Conv3x3, build_model, conv3x3_weight_grad  # noqa: E402
from clr_lib.optim import build_optimizer  # noqa: E402


def median_ms(fn, repeats: int = 15) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def per_layer(batch: int = 512) -> None:
    print(f"bf16 channels_last, batch {batch} views: forward | oneDNN dL/dW | G^T P dL/dW")
    for c_in, c_out, side in [(3, 32, 16), (32, 64, 16), (64, 128, 8), (128, 128, 4),
                              (128, 512, 4)]:
        cl = dict(memory_format=torch.channels_last)
        x = torch.randn(batch, c_in, side, side, dtype=torch.bfloat16).contiguous(**cl)
        w = torch.randn(c_out, c_in, 3, 3, dtype=torch.bfloat16).contiguous(**cl)
        g = torch.randn(batch, c_out, side, side, dtype=torch.bfloat16).contiguous(**cl)

        def onednn():
            return torch.ops.aten.convolution_backward(
                g, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                [False, True, False])[1]

        ref, mine = onednn().float(), conv3x3_weight_grad(x, g).float()
        print(f"  {c_in:>3} -> {c_out:<3} at {side:>2}x{side:<2}: "
              f"{median_ms(lambda: F.conv2d(x, w, padding=1)):6.1f} ms | "
              f"{median_ms(onednn):6.1f} ms | {median_ms(lambda: conv3x3_weight_grad(x, g)):6.1f}"
              f" ms   (relative difference {((ref - mine).norm() / ref.norm()).item():.1e})")


def plain_copy(model: nn.Module) -> nn.Module:
    """The same network with every Conv3x3 an nn.Conv2d sharing its weight."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, Conv3x3):
                conv = nn.Conv2d(child.in_channels, child.out_channels, 3, padding=1, bias=False)
                conv.weight = child.weight
                setattr(parent, name, conv)
    return model


def whole_step(rounds: int = 4, steps: int = 12) -> None:
    cfg = get_config("laptop")
    images = torch.randint(0, 256, (10_000, 3, 32, 32), dtype=torch.uint8)
    aug = SimCLRAugment.from_config(cfg)
    runs = {}
    for name in ("Conv3x3 (library)", "nn.Conv2d"):
        torch.manual_seed(0)
        model = build_model(cfg)
        model = plain_copy(model) if name == "nn.Conv2d" else model
        runs[name] = (model, build_optimizer(cfg, model), torch.Generator().manual_seed(0), [])
    for _ in range(rounds):  # alternate, so both see the same drift of the machine
        for model, optimizer, gen, times in runs.values():
            for step in range(steps):
                start = time.perf_counter()
                batch = images[torch.randint(0, 10_000, (cfg.batch_size,))]
                views = make_views(batch, cfg.n_views, aug, gen)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    _, z = model(torch.cat(views))
                loss = nt_xent_views(z.float().chunk(cfg.n_views), cfg.temperature)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if step >= 2:
                    times.append(time.perf_counter() - start)
    print(f"laptop training step ({cfg.n_views} views of {cfg.batch_size} images, "
          f"{cfg.view_size}x{cfg.view_size} views, bf16), median:")
    views = cfg.batch_size * cfg.n_views
    rates = {name: views / statistics.median(r[3]) for name, r in runs.items()}
    for name, rate in rates.items():
        print(f"  {name:<18} {rate:7.0f} views/s")
    print(f"  ratio {rates['Conv3x3 (library)'] / rates['nn.Conv2d']:.2f}x")


if __name__ == "__main__":
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"AMX: {torch.cpu._is_amx_tile_supported()}")
    per_layer()
    whole_step()
