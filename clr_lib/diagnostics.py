"""Numbers that tell whether contrastive embeddings are healthy, without any labels.

Introduced in chapter 03, which measures them on a batch before and after a few steps.

- alignment and uniformity (Wang & Isola, 2020, "Understanding Contrastive Representation
  Learning through Alignment and Uniformity on the Hypersphere"): positive pairs
  should be close (alignment low, 0 at best), and all embeddings spread over the sphere
  (uniformity low; it is log E exp(-t |u - v|^2), at most 0, reached when all collapse).
- embedding_std: the standard deviation of l2-normalised embeddings per dimension, averaged
  (SimSiam, Chen & He, 2021, Section 4.1). Collapse shows as ~0; embeddings spread evenly
  over the sphere give ~1/sqrt(d).
- positive_rank / positive_topk: where the positive x_j ranks among the 2N-1 candidates of
  its anchor x_i by cosine similarity; top-1 is the accuracy of the "pretext task" that
  NT-Xent's cross-entropy trains.

All take z (or h) of shape (N, d), normalise it themselves, and run without gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from clr_lib.loss import positive_index


@torch.no_grad()
def alignment(z_i: torch.Tensor, z_j: torch.Tensor, alpha: float = 2.0) -> float:
    """E |f(x) - f(y)|^alpha over positive pairs, on unit vectors (Wang & Isola, 2020).

    Args: z_i, z_j (N, d), row k of each from the two views of image k.
    Range [0, 2^alpha]: 0 when every pair coincides, 2 (alpha=2) for random pairs in high d.
    """
    z_i, z_j = F.normalize(z_i.float(), dim=1), F.normalize(z_j.float(), dim=1)
    return (z_i - z_j).norm(dim=1).pow(alpha).mean().item()


@torch.no_grad()
def uniformity(z: torch.Tensor, t: float = 2.0) -> float:
    """log E exp(-t |f(x) - f(y)|^2) over all pairs of distinct rows (Wang & Isola, 2020).

    Args: z (M, d), M >= 2.
    0 when all rows coincide (collapse); lower is more uniform, down to about -t * 2 = -4 for
    points spread evenly on a high-dimensional sphere (t = 2).
    """
    z = F.normalize(z.float(), dim=1)
    return torch.pdist(z).pow(2).mul(-t).exp().mean().log().item()


@torch.no_grad()
def embedding_std(z: torch.Tensor) -> float:
    """Mean over dimensions of the std over the batch of l2-normalised z (M, d).

    ~0 means collapse (every input maps to one point); 1/sqrt(d) is the value for embeddings
    spread evenly over the unit sphere (SimSiam, Section 4.1).
    """
    return F.normalize(z.float(), dim=1).std(dim=0).mean().item()


@torch.no_grad()
def positive_rank(z_i: torch.Tensor, z_j: torch.Tensor) -> torch.Tensor:
    """Rank of each anchor's positive among its 2N-1 candidates, 0 = most similar.

    Args: z_i, z_j (N, d). Returns a (2N,) long tensor: rows 0..N-1 are the anchors z_i
    (positive z_j), rows N..2N-1 the anchors z_j. Ties count against the positive, so
    collapsed embeddings rank it last (2N-2), not first.
    """
    z = F.normalize(torch.cat([z_i, z_j]).float(), dim=1)  # (2N, d)
    n = z_i.shape[0]
    sim = z @ z.T  # (2N, 2N)
    rows = torch.arange(2 * n, device=z.device)
    pos = sim[rows, positive_index(n, 2, z.device)[:, 0]]  # (2N,) similarity to the other view
    sim[rows, rows] = float("-inf")  # the anchor itself is not a candidate
    return (sim >= pos[:, None]).sum(dim=1) - 1  # the positive is >= itself


@torch.no_grad()
def positive_topk(z_i: torch.Tensor, z_j: torch.Tensor,
                  ks: tuple[int, ...] = (1, 5)) -> dict[str, float]:
    """Share of the 2N anchors whose positive is among their k most similar candidates.

    Chance level is k / (2N - 1). Returns e.g. {"top1": 0.62, "top5": 0.91}.
    """
    rank = positive_rank(z_i, z_j)
    return {f"top{k}": (rank < k).float().mean().item() for k in ks}


def embedding_report(z_i: torch.Tensor, z_j: torch.Tensor) -> dict[str, float]:
    """All diagnostics of one batch of pairs, as a flat dict for a history log."""
    z = torch.cat([z_i, z_j])
    return {"alignment": alignment(z_i, z_j), "uniformity": uniformity(z),
            "std": embedding_std(z), **positive_topk(z_i, z_j)}


@torch.no_grad()
def anchor_softmax(z_i: torch.Tensor, z_j: torch.Tensor, temperature: float,
                   anchor: int = 0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """What NT-Xent does to one anchor: its similarities and softmax over the 2N-1 candidates.

    Args: z_i, z_j (N, d); temperature tau; anchor, a row of z_i (0 <= anchor < N).
    Returns (sim, p, pos): sim and p are (2N-1,) cosine similarities and softmax(sim / tau)
    weights, the anchor itself removed; pos is the index of the positive in them. The loss
    of this anchor is -log p[pos]; its gradient with respect to sim[k] of a negative is
    p[k] / tau, so p says how hard the loss pushes each negative away.
    """
    z = F.normalize(torch.cat([z_i, z_j]).float(), dim=1)  # (2N, d)
    n = z_i.shape[0]
    sim = z @ z[anchor]  # (2N,)
    keep = torch.arange(2 * n, device=z.device) != anchor
    sim = sim[keep]  # (2N-1,)
    return sim, torch.softmax(sim / temperature, dim=0), n + anchor - 1


@torch.no_grad()
def hard_negative_share(z_i: torch.Tensor, z_j: torch.Tensor, temperature: float,
                        fraction: float = 0.1) -> float:
    """Share of the total gradient on negatives that goes to the hardest ``fraction`` of them.

    For each anchor the gradient on negative k is p_k / tau (see anchor_softmax); the hardest
    negatives are those most similar to the anchor. Averaged over all 2N anchors. Equals
    ``fraction`` when tau is large (all negatives weigh the same) and tends to 1 as tau -> 0
    (Wang & Liu, 2021, "Understanding the Behaviour of Contrastive Loss").
    """
    z = F.normalize(torch.cat([z_i, z_j]).float(), dim=1)  # (2N, d)
    n = z_i.shape[0]
    sim = z @ z.T  # (2N, 2N)
    rows = torch.arange(2 * n, device=z.device)
    mask = torch.zeros_like(sim, dtype=torch.bool)
    mask[rows, rows] = True
    mask[rows, positive_index(n, 2, z.device)[:, 0]] = True
    neg = sim[~mask].view(2 * n, 2 * n - 2)  # (2N, 2N-2) similarities to negatives only
    w = torch.softmax(neg / temperature, dim=1)  # relative gradient weights of negatives
    k = max(1, round(fraction * (2 * n - 2)))
    return w.topk(k, dim=1).values.sum(dim=1).mean().item()
