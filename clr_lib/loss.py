"""NT-Xent, the normalized temperature-scaled cross-entropy loss of SimCLR.

Introduced in chapter 03. Chen et al. (2020), Section 2.1, Eq. (1): for a positive pair of
examples (i, j),

    l(i, j) = -log  exp(sim(z_i, z_j) / tau) / sum_{k=1..2N, k != i} exp(sim(z_i, z_k) / tau)

with sim(u, v) = u.v / (|u| |v|). "The final loss is computed across all positive pairs, both
(i, j) and (j, i), in a mini-batch"; Algorithm 1 writes it out:
L = 1/(2N) sum_k [l(2k-1, 2k) + l(2k, 2k-1)].

Vectorised, this is one cross-entropy over the rows of the 2N x 2N matrix of cosine
similarities divided by tau, with the diagonal (each view's similarity to itself) masked
out and the target of row k being the column of its other view, k + N or k - N
(``positive_index``). ``nt_xent_views`` is the same loss for V >= 2 views of each image:
every view is an anchor whose positives are the other V - 1 views of its image;
``nt_xent(z_i, z_j)`` is V = 2.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from clr_lib.config import UserError


def positive_index(n: int, views: int = 2, device=None) -> torch.Tensor:
    """The columns of each anchor's positives when V views of N images are stacked view by
    view, [z of view 0 of images 0..N-1; view 1 ...; ...]: row a N + k (view a of image k)
    has its positives at b N + k for the V - 1 views b != a. Returns (V N, V - 1) int64; for
    V = 2 the column of row k is (k + N) mod 2N."""
    image = torch.arange(n, device=device).repeat(views)  # (VN,) the image of each row
    view = torch.arange(views, device=device).repeat_interleave(n)  # (VN,) its view
    others = torch.arange(views, device=device)[None, :].expand(views * n, views)
    others = others[others != view[:, None]].view(views * n, views - 1)  # views b != a
    return others * n + image[:, None]


def _check_temperature(temperature: float) -> None:
    if isinstance(temperature, bool) or not (isinstance(temperature, (int, float))
                                             and 0 < temperature < float("inf")):
        raise UserError(f"temperature is {temperature!r}: it takes a number > 0; the paper "
                        "uses 0.5 on CIFAR-10 and 0.1 on ImageNet")


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

    Raises a ValueError for z_i and z_j of different shapes, fewer than 2 pairs in the
    (global) batch, or temperature <= 0. NaN in z gives a NaN loss, which the training loop
    stops on; checking z here would cost a host synchronisation every step on a GPU.
    """
    return nt_xent_views([z_i, z_j], temperature, distributed, normalize)  # checks them too


def nt_xent_views(views: Sequence[torch.Tensor], temperature: float = 0.5,
                  distributed: bool = False, normalize: bool = True) -> torch.Tensor:
    """NT-Xent for V >= 2 views of each of N images; with V = 2 it is ``nt_xent(z_i, z_j)``.

    Each of the VN views is an anchor; its positives are the V - 1 other views of its image,
    its negatives the V(N - 1) views of the other images, and its loss is the mean over its
    positives of -log(softmax over the VN - 1 other views). More views give every image more
    positive pairs for the same number of views a step (the laptop profile: 8 views of 64
    images rather than 2 of 256; the paper uses 2; chapter 08 measures it).

    Args:
        views: V tensors (N, d), row k of each from image k.
        temperature, distributed, normalize: as in ``nt_xent``.
    """
    if len(views) < 2:
        raise ValueError(f"NT-Xent needs at least 2 views of each image, got {len(views)}.")
    if any(z.ndim != 2 or z.shape != views[0].shape for z in views):
        raise ValueError(f"every view's z must be (N, d), all of one shape, got "
                         f"{[tuple(z.shape) for z in views]}: pass the projections of the "
                         "views of the same N images, in the same order (z.flatten(1))")
    _check_temperature(temperature)
    rank, world = 0, 1
    if distributed:
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("distributed=True needs torch.distributed.init_process_group() "
                             "first; for a single process pass distributed=False.")
        rank, world = dist.get_rank(), dist.get_world_size()
    v, n = len(views), views[0].shape[0]  # views, images on this process
    if n * world < 2:
        raise ValueError("NT-Xent needs at least 2 images per batch (a batch of one has no "
                         "negatives): raise batch_size, or pass drop_last=True to the "
                         "DataLoader so that no last batch of one is left.")
    # Half precision would round similarities/tau (up to 1/tau = 10) to 3 digits and the
    # exp of 2N of them can overflow float16, so the loss is always computed in float32.
    with torch.autocast(device_type=views[0].device.type, enabled=False):
        dtype = torch.float64 if views[0].dtype == torch.float64 else torch.float32
        z = torch.cat(list(views)).to(dtype)  # (vn, d): view 0 of every image, then view 1...
        if normalize:
            z = F.normalize(z, dim=1)  # unit rows, so z @ z.T holds cosine similarities
        candidates = z
        if distributed:  # every process's views, view by view: (v, world n, d) -> (vN, d)
            gathered = _AllGather.apply(z.view(v, n, -1))  # gradients flow back to each
            candidates = torch.cat(gathered, dim=1).flatten(0, 1)
        logits = z @ candidates.T / temperature  # (vn, vN)
        def global_column(col):  # view b of local image k -> its column among all vN
            return col // n * (n * world) + rank * n + col % n

        rows = torch.arange(v * n, device=z.device)
        logits[rows, global_column(rows)] = float("-inf")  # k != i: not its own negative
        positives = global_column(positive_index(n, v, z.device))  # (vn, v-1)
        return -logits.log_softmax(dim=1).gather(1, positives).mean()


class _AllGather(torch.autograd.Function):
    """all_gather that lets gradients flow back: each process receives, for its own slice,
    the sum of the gradients that every process's loss sends to it. (torch 2.14 deprecates
    ``torch.distributed.nn.functional.all_gather``, which did this, for a private module.)"""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> torch.Tensor:
        grad = torch.stack(grads)  # (world, ...): this process's loss w.r.t. every slice
        dist.all_reduce(grad)  # summed over processes; z is small, so all_reduce is cheap
        return grad[dist.get_rank()]


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
