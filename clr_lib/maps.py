"""2-D maps of a representation: PCA, and UMAP after PCA, subsampled and cached.

Introduced in chapter 06. A map puts every image's h (or z) at a point in the plane, so that
images the representation finds similar lie close together; colouring the points by class
shows whether those neighbourhoods are the classes. Features are l2-normalised first, since
SimCLR compares them by cosine similarity, then reduced by PCA.

UMAP (McInnes et al., 2018) is slow to start: umap-learn compiles its numba code on first use
in every new process, and for more than 4,096 points it builds its neighbour graph with
pynndescent, which compiles more. Here the exact neighbour graph is computed with one matrix
product in torch and handed to UMAP, and maps are cached under ``data/cache/`` keyed by the
features' bytes (timings: ``python benchmarks/evaluate_speed.py``; docs/record.md).
"""

from __future__ import annotations

import hashlib
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from clr_lib.data import cache_dir, save_array_atomic


def pca(x: torch.Tensor, dim: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Project the rows of x (N, D) on their first ``dim`` principal components.

    Returns (N, dim) coordinates and the share of the variance each component explains (dim,).
    Signs are fixed so that the largest loading of every component is positive.
    """
    x = x.double()
    x = x - x.mean(0)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)  # exact and deterministic
    vh = vh[:dim] * vh[:dim].gather(1, vh[:dim].abs().argmax(1, keepdim=True)).sign()
    explained = s.square() / s.square().sum()
    return (x @ vh.T).float(), explained[:dim].float()


def map_2d(features: torch.Tensor, method: str = "umap", pca_dim: int = 50,
           n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0,
           cache: bool = True) -> torch.Tensor:
    """A 2-D map of features (N, D): ``method`` "pca", or "umap" on the first ``pca_dim``
    principal components of the l2-normalised features. Returns (N, 2) float32.

    Subsample to a few thousand points first (``data.balanced_subset``): the layout costs
    time linear in N, the exact neighbour graph N^2 memory.
    """
    if method not in ("umap", "pca"):
        raise ValueError(f"method must be 'umap' or 'pca', got {method!r}.")
    x = F.normalize(features.float(), dim=1)
    if method == "pca":
        return pca(x, 2)[0]
    params = f"{method}-{pca_dim}-{n_neighbors}-{min_dist}-{seed}"
    key = hashlib.sha1(x.numpy().tobytes() + params.encode()).hexdigest()[:20]
    path = cache_dir() / f"map2d-{key}.npy"
    if cache and path.is_file():
        return torch.from_numpy(np.load(path))
    out = _umap(pca(x, min(pca_dim, *x.shape))[0], n_neighbors, min_dist, seed)
    if cache:
        save_array_atomic(path, out.numpy())
    return out


def _umap(x: torch.Tensor, n_neighbors: int, min_dist: float, seed: int) -> torch.Tensor:
    import umap  # imported here: ~2 s, and only chapter 06 needs it

    k = min(n_neighbors, len(x) - 1)
    dist, idx = torch.cdist(x, x).topk(k + 1, largest=False)  # (N, k+1), self first
    with warnings.catch_warnings():  # no search index (no .transform later) and one thread
        warnings.simplefilter("ignore")  # (the price of random_state): both intended
        reducer = umap.UMAP(n_components=2, n_neighbors=k + 1, min_dist=min_dist,
                            random_state=seed, precomputed_knn=(idx.numpy(), dist.numpy(), None))
        return torch.from_numpy(reducer.fit_transform(x.numpy())).float()
