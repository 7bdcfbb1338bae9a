"""NT-Xent, the normalized temperature-scaled cross-entropy loss of SimCLR.

Introduced in chapter 03. Chen et al. (2020), Section 2.1, Eq. (1): for a positive pair of
examples (i, j),

    l(i, j) = -log  exp(sim(z_i, z_j) / tau) / sum_{k=1..2N, k != i} exp(sim(z_i, z_k) / tau)

with sim(u, v) = u.v / (|u| |v|). "The final loss is computed across all positive pairs, both
(i, j) and (j, i), in a mini-batch"; Algorithm 1 writes it out:
L = 1/(2N) sum_k [l(2k-1, 2k) + l(2k, 2k-1)].

Vectorised, this is one cross-entropy over the rows of the 2N x 2N matrix of cosine
similarities divided by tau, with the diagonal (each view's similarity to itself) masked
out and the target of row k being the column of its other view, k + N or k - N. At 2N = 512
on 2 CPU cores busy with other jobs, benchmarks/loss_speed.py timed it at 80 ms against 5.5 s
for Algorithm 1's loops over pairs (69x); on idle cores it takes about 2 ms.

``nt_xent_views`` is the same loss for V >= 2 views of each image: every view is an anchor
whose positives are the other V - 1 views of its image; ``nt_xent(z_i, z_j)`` is V = 2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def _check_inputs(z_i: torch.Tensor, z_j: torch.Tensor, temperature: float) -> None:
    """Raise a ValueError that names the fix for inputs NT-Xent cannot use."""
    if z_i.ndim != 2 or z_j.ndim != 2:
        raise ValueError(f"z_i and z_j must be 2-D, (N, d), got shapes {tuple(z_i.shape)} and "
                         f"{tuple(z_j.shape)}: flatten the projections with z.flatten(1).")
    if z_i.shape != z_j.shape:
        raise ValueError(f"z_i and z_j must have the same shape (N, d), got {tuple(z_i.shape)} "
                         f"and {tuple(z_j.shape)}: pass the projections of the two views of the "
                         "same N images, in the same order.")
    _check_temperature(temperature)


def _check_temperature(temperature: float) -> None:
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
            and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}: "
                         "the paper uses 0.5 on CIFAR-10 and 0.1 on ImageNet.")


def nt_xent(z_i: torch.Tensor, z_j: torch.Tensor, temperature: float = 0.5,
            distributed: bool = False, normalize: bool = True) -> torch.Tensor:
    """NT-Xent loss of a batch of N positive pairs, averaged over all 2N anchors.

    Args:
        z_i: (N, d) projections of the first view of each image.
        z_j: (N, d) projections of the second view, row k of z_j pairing with row k of z_i.
            Neither needs to be normalised: the loss normalises them.
        temperature: tau > 0 (paper: 0.5 on CIFAR-10, 0.1 on ImageNet).
        distributed: gather z from every process of the default torch.distributed group, so
            that each anchor meets the negatives of the whole global batch, as the paper does
            across TPU cores. Each process passes its own z_i, z_j and gets the mean over its
            own anchors; gradients flow back through the gather, so averaging gradients
            across processes (as DistributedDataParallel does) gives the gradient of the
            loss of the global batch (tests/test_distributed.py checks 2 gloo processes
            against one process holding the whole batch). Every process must pass the
            same N (use drop_last=True).
        normalize: l2-normalise z first, so that similarities are cosines (the paper's
            choice). False uses raw dot products, the ablation of the paper's Table 5.
    Returns:
        A scalar float32 tensor (float64 if z is float64), even under autocast.

    Raises ValueError for z_i and z_j of different shapes, fewer than 2 pairs in the (global)
    batch, temperature <= 0, and NaN or inf in z.
    """
    return nt_xent_views([z_i, z_j], temperature, distributed, normalize)  # checks them too


def nt_xent_views(views: Sequence[torch.Tensor], temperature: float = 0.5,
                  distributed: bool = False, normalize: bool = True) -> torch.Tensor:
    """NT-Xent for V >= 2 views of each of N images; with V = 2 it is ``nt_xent(z_i, z_j)``.

    Each of the VN views is an anchor; its positives are the V - 1 other views of its image,
    its negatives the V(N - 1) views of the other images, and its loss is the mean over its
    positives of -log(softmax over the VN - 1 other views). More views give every image more
    positive pairs for the same number of views a step (the laptop profile: 8 views of 64
    images rather than 2 of 256; the paper uses 2; chapter 04 measures it).

    Args:
        views: V tensors (N, d), row k of each from image k.
        temperature, distributed, normalize: as in ``nt_xent``.
    """
    if len(views) < 2:
        raise ValueError(f"NT-Xent needs at least 2 views of each image, got {len(views)}.")
    for z in views[1:]:
        _check_inputs(views[0], z, temperature)
    rank, world = 0, 1
    if distributed:
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("distributed=True needs torch.distributed.init_process_group() "
                             "first; for a single process pass distributed=False.")
        rank, world = dist.get_rank(), dist.get_world_size()
    v, n = len(views), views[0].shape[0]  # views, images on this process
    if n * world < 2:
        raise ValueError("NT-Xent needs at least 2 pairs per batch (a batch of one has no "
                         "negatives): raise batch_size, or pass drop_last=True to the "
                         "DataLoader so that no last batch of one is left.")
    # Half precision would round similarities/tau (up to 1/tau = 10) to 3 digits and the
    # exp of 2N of them can overflow float16, so the loss is always computed in float32.
    with torch.autocast(device_type=views[0].device.type, enabled=False):
        dtype = torch.float64 if views[0].dtype == torch.float64 else torch.float32
        z = torch.cat(list(views)).to(dtype)  # (vn, d): view 0 of every image, then view 1...
        if not torch.isfinite(z).all():
            raise ValueError("z contains NaN or inf: training diverged before the loss; lower "
                             "the learning rate or check the inputs and model.")
        if normalize:
            z = F.normalize(z, dim=1)  # unit rows, so z @ z.T holds cosine similarities
        if distributed:  # every process's views, in the same view-major order: (vN, d)
            candidates = torch.cat(_all_gather(z.view(v, n, -1)), dim=1).flatten(0, 1)
        else:
            candidates = z
        big_n = n * world
        logits = z @ candidates.T / temperature  # (vn, vN)
        mine = torch.arange(n, device=z.device) + rank * n  # global index of my images
        cols = torch.arange(v, device=z.device)[:, None] * big_n + mine  # (v, n): view a, image k
        rows = torch.arange(v * n, device=z.device)  # my anchors, in the order of cols
        logits[rows, cols.flatten()] = float("-inf")  # k != i: a view is not its own negative
        positives = torch.cat([cols[[b for b in range(v) if b != a]].T for a in range(v)])
        return -logits.log_softmax(dim=1).gather(1, positives).mean()  # positives: (vn, v-1)


class _AllGather(torch.autograd.Function):
    """all_gather that lets gradients flow back: each process receives, for its own slice,
    the sum of the gradients that every process's loss sends to it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> torch.Tensor:
        grad = torch.stack(grads)  # (world, n, d): this process's loss w.r.t. every slice
        dist.all_reduce(grad)  # summed over processes; z is small, so all_reduce is cheap
        return grad[dist.get_rank()]


def _all_gather(x: torch.Tensor) -> list[torch.Tensor]:
    return list(_AllGather.apply(x))


class NTXentLoss(nn.Module):
    """nt_xent as a module, for code that wants ``criterion = NTXentLoss(0.5)``."""

    def __init__(self, temperature: float = 0.5, distributed: bool = False,
                 normalize: bool = True):
        super().__init__()
        _check_temperature(temperature)
        self.temperature, self.distributed, self.normalize = temperature, distributed, normalize

    def forward(self, z_i: torch.Tensor, z_j: torch.Tensor) -> torch.Tensor:
        return nt_xent(z_i, z_j, self.temperature, self.distributed, self.normalize)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, distributed={self.distributed}"
