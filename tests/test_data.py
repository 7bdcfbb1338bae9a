import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clr_lib import data
from clr_lib.config import get_config
from clr_lib.data import DatasetError, load_dataset, load_splits, make_synthetic


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLR_CACHE_DIR", str(tmp_path / "cache"))


def write_folder(root: Path, classes=("cat", "dog"), per_class=6, size=32, split="train"):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / split / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / split / c / f"{i:03d}.png")
    return root


# ----------------------------------------------------------------------------- synthetic

def test_synthetic_is_deterministic_and_balanced():
    a, b, c = make_synthetic(200, seed=1), make_synthetic(200, seed=1), make_synthetic(200, seed=2)
    assert a.images.shape == (200, 3, 32, 32) and a.images.dtype == torch.uint8
    assert a.labels.dtype == torch.int64 and len(a.classes) == 10
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert torch.bincount(a.labels).tolist() == [20] * 10


def test_synthetic_colour_says_nothing_about_the_class():
    """Mean colour must not give the class away: features have to see shape and texture."""
    train, test = make_synthetic(2000, seed=0), make_synthetic(1000, seed=1)
    def mean_rgb(d):
        return d.images.float().mean((2, 3))
    centroids = torch.stack([mean_rgb(train)[train.labels == k].mean(0) for k in range(10)])
    pred = torch.cdist(mean_rgb(test), centroids).argmin(1)
    assert (pred == test.labels).float().mean() < 0.2  # chance is 0.1


def test_synthetic_splits_come_with_a_test_set():
    splits = load_dataset("synthetic", max_per_class=30)
    assert len(splits.train) + len(splits.val) == 300 and splits.test is not None
    assert splits.source == "synthetic"


# ----------------------------------------------------------------------------- splits

def test_stratified_split_is_deterministic_disjoint_and_stratified():
    d = make_synthetic(1000, seed=0)
    d.images[:, 0, 0, 0] = torch.arange(1000) % 256  # tag images to check disjointness
    d.images[:, 0, 0, 1] = torch.arange(1000) // 256
    tr, va = data.stratified_split(d, 0.1, seed=3)
    tr2, va2 = data.stratified_split(d, 0.1, seed=3)
    assert torch.equal(va.images, va2.images)
    assert torch.bincount(va.labels).tolist() == [10] * 10
    tag = lambda x: set((x.images[:, 0, 0, 0].int() + 256 * x.images[:, 0, 0, 1].int()).tolist())
    assert not tag(tr) & tag(va) and len(tag(tr) | tag(va)) == 1000
    with pytest.raises(DatasetError, match="val_fraction"):
        data.stratified_split(d, 0.0)


# ----------------------------------------------------------------------------- ImageFolder

def test_image_folder_loads_and_caches(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "pets", per_class=10)
    write_folder(root, per_class=3, split="test")
    first = load_dataset("folder", root, val_fraction=0.2)
    assert first.classes == ["cat", "dog"] and first.source == "folder"
    assert len(first.train) == 16 and len(first.val) == 4 and len(first.test) == 6
    assert first.train.images.shape[1:] == (3, 32, 32)
    assert any(Path(os.environ["CLR_CACHE_DIR"]).glob("*.images.npy"))

    def no_decoding(*args):
        raise AssertionError("the second load must come from the cache")
    monkeypatch.setattr(data, "_decode", no_decoding)
    second = load_dataset("folder", root, val_fraction=0.2)
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.test.labels, second.test.labels)


def test_max_per_class_decodes_only_the_first_files(tmp_path):
    root = write_folder(tmp_path / "pets", per_class=10)
    splits = load_dataset("folder", root, max_per_class=5, val_fraction=0.2)
    assert len(splits.train) + len(splits.val) == 10


def test_data_dir_argument_then_environment_then_default(tmp_path, monkeypatch):
    monkeypatch.setenv("CLR_DATA_DIR", str(tmp_path / "env"))
    assert data.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert data.resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("CLR_DATA_DIR")
    assert data.resolve_data_dir() == data.project_dir() / "data"


def test_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="does not exist.*CLR_DATA_DIR"):
        load_dataset("folder", tmp_path / "nowhere")


def test_empty_folder(tmp_path):
    with pytest.raises(DatasetError, match="no train/ folder.*train/<class>/"):
        load_dataset("folder", tmp_path)


def test_folder_without_class_subfolders(tmp_path):
    (tmp_path / "train").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "train" / "loose.png")
    with pytest.raises(DatasetError, match="no class subfolders.*<class name>/image.jpg"):
        load_dataset("folder", tmp_path)


def test_class_folders_without_files(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no files in them"):
        load_dataset("folder", tmp_path)


def test_corrupt_and_non_image_files_are_skipped_and_counted(tmp_path):
    root = write_folder(tmp_path, per_class=5)
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (root / "train" / "dog" / "notes.txt").write_text("hello")
    with pytest.warns(UserWarning, match="Skipped 2 file"):
        splits = load_dataset("folder", root, val_fraction=0.2)
    assert len(splits.train) + len(splits.val) == 10


def test_only_corrupt_files(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "a.jpg").write_bytes(b"nope")
    with pytest.warns(UserWarning), pytest.raises(DatasetError, match="No readable images"):
        load_dataset("folder", tmp_path)


def test_mixed_sizes_are_resized_and_said_once(tmp_path):
    root = write_folder(tmp_path, per_class=4)
    write_folder(tmp_path / "big", per_class=3, size=48)
    for p in (tmp_path / "big" / "train" / "cat").iterdir():
        p.rename(root / "train" / "cat" / f"big_{p.name}")
    with pytest.warns(UserWarning, match="3 image.*resized to 32x32") as record:
        splits = load_dataset("folder", root, val_fraction=0.2)
    assert sum("resized" in str(w.message) for w in record) == 1
    assert splits.train.images.shape[1:] == (3, 32, 32)


def test_test_split_with_other_classes(tmp_path):
    root = write_folder(tmp_path, classes=("cat", "dog"))
    write_folder(root, classes=("cat", "cow"), split="test")
    with pytest.raises(DatasetError, match="same class subfolders"):
        load_dataset("folder", root)


def test_unknown_dataset_name():
    with pytest.raises(DatasetError, match="Unknown dataset 'imagenet'"):
        load_dataset("imagenet")


# ----------------------------------------------------------------------------- CIFAR-10

def test_cifar10_download_failing_offline_says_where_to_put_the_archive(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    with pytest.raises(DatasetError, match=f"Offline.*cifar-10-python.tar.gz.*{tmp_path}"):
        load_dataset("cifar10", tmp_path, download=True)


def test_cifar10_missing_without_download(tmp_path):
    with pytest.raises(DatasetError, match="CIFAR-10 is not in .*cifar-10-python.tar.gz"):
        load_dataset("cifar10", tmp_path, download=False)


def test_auto_without_data_and_without_download_uses_synthetic(tmp_path):
    with pytest.warns(UserWarning, match="using the synthetic dataset"):
        splits = load_dataset("auto", tmp_path, download=False, max_per_class=20)
    assert splits.source == "synthetic"


def test_smoke_profile_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("CLR_DATA_DIR", str(tmp_path))
    import torchvision.datasets.cifar as cifar
    monkeypatch.setattr(cifar, "download_and_extract_archive",
                        lambda *a, **k: pytest.fail("the smoke profile tried to download"))
    with pytest.warns(UserWarning, match="synthetic"):
        assert load_splits(get_config("smoke")).source == "synthetic"


@pytest.mark.skipif(not (data.resolve_data_dir() / "train").is_dir(),
                    reason="no ImageFolder at $CLR_DATA_DIR (CI sets it to the CIFAR-10 JPEGs)")
def test_real_image_folder_in_the_smoke_profile():
    splits = load_splits(get_config("smoke"))
    assert splits.source == "folder" and len(splits.classes) >= 2
    assert splits.train.images.dtype == torch.uint8 and splits.train.images.shape[1] == 3
