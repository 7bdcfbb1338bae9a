"""Where the work runs: the device, and whether bfloat16 is worth it there.

Introduced in chapter 00. ``pick_device`` turns a Config's ``device`` into a torch device
(``auto``: CUDA, then Apple's MPS, then the CPU); ``use_bf16`` says whether training and
evaluation run under bfloat16 autocast. Several processes (torchrun) take their device from
``distributed.rank_device`` instead.
"""

from __future__ import annotations

import torch

from clr_lib.config import Config, UserError


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; a named device must exist."""
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"device {name!r} is not a device name: use auto, cpu, cuda, cuda:N "
                        "or mps") from None
    if ((device.type == "cuda" and not (torch.cuda.is_available() and
                                         (device.index or 0) < torch.cuda.device_count()))
            or (device.type == "mps" and not mps)):
        raise UserError(f"device {name!r} is not available here: use device 'auto' or 'cpu'")
    return device


def use_bf16(cfg: Config, device: torch.device) -> bool:
    """bf16 autocast on CUDA, and on CPUs with AMX tiles, where oneDNN runs bf16 convolutions
    several times faster than float32 (docs/record.md); other CPUs stay in float32.
    ``cfg.bf16`` overrides."""
    if cfg.bf16 is not None:
        return cfg.bf16
    return device.type == "cuda" or (device.type == "cpu" and torch.cpu._is_amx_tile_supported())
