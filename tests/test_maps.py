import numpy as np
import pytest
import torch

from clr_lib import maps


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLR_CACHE_DIR", str(tmp_path / "cache"))


def clusters(n=150, dims=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    centres = torch.randn(3, dims, generator=g) * 3
    return centres[labels] + torch.randn(n, dims, generator=g) * 0.5, labels


def leave_one_out_knn(points, labels, k=5):
    """Each point's class by a majority of its k nearest *other* points (Euclidean: the map's
    distances), so a point never votes for itself."""
    dist = torch.cdist(points.double(), points.double())
    dist.fill_diagonal_(float("inf"))
    votes = labels[dist.topk(k, largest=False).indices]  # (N, k)
    return torch.mode(votes, dim=1).values


def test_leave_one_out_knn_is_not_fooled_by_the_point_itself():
    points = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.0, 0.1], [5.0, 5.0], [0.05, 0.05]])
    labels = torch.tensor([0, 0, 0, 1, 1])  # point 4 sits among class 0
    assert leave_one_out_knn(points, labels, k=3).tolist() == [0, 0, 0, 0, 0]


def test_pca_matches_scikit_learn_and_fixes_signs():
    x = torch.randn(80, 6, generator=torch.Generator().manual_seed(1)) * torch.arange(1, 7.0)
    coords, explained = maps.pca(x, 3)
    from sklearn.decomposition import PCA
    ref = PCA(3).fit(x.numpy())
    assert np.allclose(explained.numpy(), ref.explained_variance_ratio_, atol=1e-5)
    assert np.allclose(coords.abs().numpy(), np.abs(ref.transform(x.numpy())), atol=1e-4)
    assert torch.equal(coords, maps.pca(x, 3)[0])
    assert torch.equal(maps.pca(-x, 3)[0], -coords)  # signs follow the loadings
    assert explained[0] == pytest.approx(36 / 91, abs=0.1)  # scales 1..6: variances 1..36


def test_pca_map_of_normalised_features():
    x, _ = clusters()
    out = maps.map_2d(x, "pca")
    assert out.shape == (150, 2) and out.dtype == torch.float32
    assert torch.allclose(out, maps.map_2d(3 * x, "pca"), atol=1e-5)  # scale-free (cosine)
    with pytest.raises(ValueError, match="'umap' or 'pca'"):
        maps.map_2d(x, "tsne")


def test_umap_keeps_clusters_apart_and_is_cached(tmp_path, monkeypatch):
    x, labels = clusters()
    out = maps.map_2d(x, "umap", pca_dim=10, seed=0)
    assert out.shape == (150, 2) and torch.isfinite(out).all()
    assert torch.equal(leave_one_out_knn(out, labels), labels)  # in 2-D, neighbours agree
    shuffled = labels[torch.randperm(150, generator=torch.Generator().manual_seed(0))]
    assert (leave_one_out_knn(out, shuffled) == shuffled).float().mean() < 0.6  # control
    assert len(list((tmp_path / "cache").glob("map2d-*.npy"))) == 1

    def no_umap(*args):
        raise AssertionError("UMAP ran again although the map was cached")

    monkeypatch.setattr(maps, "_umap", no_umap)
    assert torch.equal(maps.map_2d(x, "umap", pca_dim=10, seed=0), out)
    with pytest.raises(AssertionError, match="cached"):  # other features: another key
        maps.map_2d(x + 1, "umap", pca_dim=10, seed=0)
