import os
import re
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clr_lib import data
from clr_lib.config import UserError, get_config
from clr_lib.data import (DatasetError, ImageData, atomic_write, balanced_subset, load_dataset,
                          load_splits, make_synthetic)


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


def val_mask_before_the_refactor(labels, fraction, seed, num_classes):
    """The validation split as data.stratified_mask drew it before balanced_subset took over:
    one generator, the classes in order, a random permutation of each, its first
    round(len * fraction) images, clamped to [1, len - 1] for a class of two or more."""
    g = torch.Generator().manual_seed(seed)
    held = torch.zeros(len(labels), dtype=torch.bool)
    for c in range(num_classes):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n = int(round(len(idx) * fraction))
        if len(idx) >= 2:
            n = min(max(n, 1), len(idx) - 1)
        held[idx[:n]] = True
    return held


def tagged(labels):
    """ImageData whose image k is the number k, so a split says which images it holds."""
    return ImageData(torch.arange(len(labels)).view(-1, 1, 1, 1), labels, [str(c) for c in
                                                                          range(10)])


@pytest.mark.parametrize("sizes", [[100] * 10, [1, 2, 3, 5, 9, 10, 14, 15, 26, 40]],
                         ids=["balanced", "uneven"])
def test_val_split_is_the_same_images_as_before_the_refactor(sizes):
    labels = torch.arange(10).repeat_interleave(torch.tensor(sizes))
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(9))]
    train, val = data.stratified_split(tagged(labels), 0.1, seed=0)
    expected = torch.nonzero(val_mask_before_the_refactor(labels, 0.1, 0, 10)).flatten()
    assert torch.equal(val.images.flatten(), expected)
    assert torch.equal(train.images.flatten(),
                       torch.nonzero(~val_mask_before_the_refactor(labels, 0.1, 0, 10)).flatten())


def test_synthetic_val_split_is_the_same_images_as_before_the_refactor():
    splits = load_dataset("synthetic", max_per_class=30, seed=0)
    full = make_synthetic(300, seed=0)  # what load_dataset draws for 30 per class
    held = val_mask_before_the_refactor(full.labels, 0.1, 0, 10)
    assert torch.equal(splits.val.images, full.images[held])
    assert torch.equal(splits.train.labels, full.labels[~held])


# ----------------------------------------------------------------------------- balanced_subset

def shuffled_labels(sizes, seed=5):
    """Labels of len(sizes) classes, sizes[c] images of class c, in a random order."""
    labels = torch.arange(len(sizes)).repeat_interleave(torch.tensor(sizes))
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]


def counts(labels, index, classes=10):
    return torch.bincount(labels[index], minlength=classes).tolist()


def test_balanced_subset_takes_a_fraction_or_a_number_of_every_class():
    labels = shuffled_labels(range(10, 110, 10))  # 10, 20, ..., 100 images per class
    assert counts(labels, balanced_subset(labels, 0.1)) == list(range(1, 11))
    assert counts(labels, balanced_subset(labels, 0.5)) == list(range(5, 55, 5))
    assert counts(labels, balanced_subset(labels, 3)) == [3] * 10
    assert counts(labels, balanced_subset(labels, 15)) == [10] + [15] * 9  # class 0 has 10
    assert torch.equal(balanced_subset(labels, 1.0), torch.arange(len(labels)))
    index = balanced_subset(labels, 0.3, seed=2)
    assert index.dtype == torch.int64 and torch.equal(index, index.unique())  # sorted, distinct


def test_balanced_subset_at_least_one_but_below_1_never_all_of_a_class():
    labels = shuffled_labels([1, 2, 3, 10])
    assert counts(labels, balanced_subset(labels, 0.01), 4) == [0, 1, 1, 1]  # one left out
    assert counts(labels, balanced_subset(labels, 0.9), 4) == [0, 1, 2, 9]
    assert counts(labels, balanced_subset(labels, 0.99), 4) == [0, 1, 2, 9]
    assert counts(labels, balanced_subset(labels, 1.0), 4) == [1, 2, 3, 10]
    assert counts(labels, balanced_subset(labels, 2), 4) == [1, 2, 2, 2]


def test_balanced_subset_nests_for_one_seed_and_follows_the_seed():
    labels = shuffled_labels(range(10, 110, 10))
    one, ten, half = (set(balanced_subset(labels, f, seed=0).tolist()) for f in (0.01, 0.1, 0.5))
    assert one < ten < half  # 1% inside 10% inside 50%
    assert set(balanced_subset(labels, 3).tolist()) < set(balanced_subset(labels, 15).tolist())
    assert torch.equal(balanced_subset(labels, 1), balanced_subset(labels, 0.01))  # 1 a class
    assert torch.equal(balanced_subset(labels, 0.1, seed=0), balanced_subset(labels, 0.1, seed=0))
    assert not torch.equal(balanced_subset(labels, 0.1, seed=0),
                           balanced_subset(labels, 0.1, seed=1))


def test_balanced_subset_of_a_number_is_max_per_class_as_before_the_refactor():
    labels = shuffled_labels(range(10, 110, 10))
    g = torch.Generator().manual_seed(4)  # data._random_per_class, as it was
    before = [torch.nonzero(labels == c).flatten() for c in labels.unique()]
    before = torch.cat([i[torch.randperm(len(i), generator=g)[:12]] for i in before]).sort().values
    assert torch.equal(balanced_subset(labels, 12, seed=4), before)


@pytest.mark.parametrize("share", [0.0, -0.1, 1.5, 2.0, float("nan"), 0, -3, True, "0.1", None])
def test_balanced_subset_refuses_a_bad_share(share):
    with pytest.raises(UserError, match="share is .*fraction in \\(0, 1\\] or a whole number"):
        balanced_subset(torch.tensor([0, 0, 1, 1]), share)


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
    with pytest.raises(DatasetError, match="does not exist.*CLR_DATA_DIR") as e:
        load_dataset("folder", tmp_path / "nowhere")
    assert isinstance(e.value, UserError)  # the CLIs print it as one line, exit 2


def test_empty_folder(tmp_path):
    with pytest.raises(DatasetError, match="no train/ folder.*train/<class>/"):
        load_dataset("folder", tmp_path)


def test_folder_without_class_subfolders(tmp_path):
    (tmp_path / "train").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "train" / "loose.png")
    with pytest.raises(DatasetError, match="no class subfolders.*<class name>/image.jpg"):
        load_dataset("folder", tmp_path)


def test_a_class_folder_without_files_is_named(tmp_path):
    root = write_folder(tmp_path, classes=("cat",), per_class=3)
    (root / "train" / "dog").mkdir()
    (root / "train" / "dog" / ".DS_Store").write_bytes(b"")  # hidden files do not count
    with pytest.raises(DatasetError, match="hold no files") as e:
        load_dataset("folder", root)
    assert str(root / "train" / "dog") in str(e.value)
    assert str(root / "train" / "cat") not in str(e.value)


def test_corrupt_and_non_image_files_are_skipped_and_counted(tmp_path):
    root = write_folder(tmp_path, per_class=5)
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    (root / "train" / "dog" / "notes.txt").write_text("hello")
    with pytest.warns(UserWarning, match="Skipped 2 file"):
        splits = load_dataset("folder", root, val_fraction=0.2)
    assert len(splits.train) + len(splits.val) == 10


def test_a_class_folder_of_unreadable_files_is_named(tmp_path):
    root = write_folder(tmp_path, classes=("cat",), per_class=3)
    (root / "train" / "dog").mkdir()
    (root / "train" / "dog" / "a.jpg").write_bytes(b"nope")
    (root / "train" / "dog" / "b.png").write_text("not a png")
    with pytest.warns(UserWarning, match="Skipped 2 file"), \
            pytest.raises(DatasetError, match="no readable image in the class folder") as e:
        load_dataset("folder", root)
    assert str(root / "train" / "dog") in str(e.value)
    assert str(root / "train" / "cat") not in str(e.value)


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
    with pytest.raises(DatasetError, match=f"offline.*cifar-10-python.tar.gz.*{tmp_path}"):
        load_dataset("cifar10", tmp_path, download=True)


def test_cifar10_missing_without_download(tmp_path):
    with pytest.raises(DatasetError, match="CIFAR-10 is not in .*cifar-10-python.tar.gz"):
        load_dataset("cifar10", tmp_path, download=False)


@pytest.fixture
def no_download(monkeypatch):
    import torchvision.datasets.cifar as cifar
    monkeypatch.setattr(cifar, "download_and_extract_archive",
                        lambda *a, **k: pytest.fail("the smoke profile tried to download"))


@pytest.fixture
def empty_project(tmp_path, monkeypatch):
    """No folder named, and a project whose data/ folder holds nothing."""
    monkeypatch.delenv("CLR_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "project_dir", lambda: tmp_path / "project")
    return tmp_path / "project"


def test_auto_without_data_and_without_download_uses_synthetic(empty_project, no_download):
    assert data.resolve_data_dir() == empty_project / "data"
    with pytest.warns(UserWarning, match="using the synthetic dataset"):
        splits = load_dataset("auto", download=False, max_per_class=20)
    assert splits.source == "synthetic" and len(splits.train) + len(splits.val) == 200


def test_smoke_profile_never_downloads(empty_project, no_download):
    with pytest.warns(UserWarning, match="synthetic"):
        assert load_splits(get_config("smoke")).source == "synthetic"


@pytest.mark.parametrize("how", ["argument", "CLR_DATA_DIR"])
def test_a_named_data_folder_that_does_not_exist_is_an_error(tmp_path, monkeypatch, how,
                                                            no_download):
    missing = tmp_path / "nowhere"
    if how == "argument":
        cfg = get_config("smoke", data_dir=str(missing))
    else:
        monkeypatch.setenv("CLR_DATA_DIR", str(missing))
        cfg = get_config("smoke")
    assert cfg.download is False
    message = re.escape(f"the data folder {missing} does not exist: ")
    with pytest.raises(DatasetError, match=message):
        load_splits(cfg)  # not the synthetic set: the user meant a folder
    assert not missing.exists()


@pytest.mark.parametrize("how", ["argument", "CLR_DATA_DIR"])
def test_a_named_data_folder_without_a_dataset_is_an_error(tmp_path, monkeypatch, how,
                                                           no_download):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "cat.png").write_bytes(b"")  # images, but not in train/<class>/
    if how == "argument":
        cfg = get_config("smoke", data_dir=str(tmp_path / "images"))
    else:
        monkeypatch.setenv("CLR_DATA_DIR", str(tmp_path / "images"))
        cfg = get_config("smoke")
    with pytest.raises(DatasetError, match="holds neither CIFAR-10 nor a train/ folder"):
        load_splits(cfg)


@pytest.mark.skipif(not (data.resolve_data_dir() / "train").is_dir(),
                    reason="no ImageFolder at $CLR_DATA_DIR (CI sets it to the CIFAR-10 JPEGs)")
def test_real_image_folder_in_the_smoke_profile():
    splits = load_splits(get_config("smoke"))
    assert splits.source == "folder" and len(splits.classes) >= 2
    assert splits.train.images.dtype == torch.uint8 and splits.train.images.shape[1] == 3


# ----------------------------------------------------------------------------- atomic_write

def test_atomic_write_writes_the_file_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "sub" / "record.bin"  # its folder is created
    atomic_write(target, lambda f: f.write(b"new contents"))
    assert target.read_bytes() == b"new contents"
    assert [p.name for p in target.parent.iterdir()] == ["record.bin"]


@pytest.mark.parametrize("existing", [True, False], ids=["replacing", "new"])
def test_atomic_write_that_fails_leaves_the_old_file_and_no_temporary_file(tmp_path, existing):
    target = tmp_path / "checkpoint.pt"
    if existing:
        target.write_bytes(b"old contents")

    def killed_half_way(f):
        f.write(b"half of the new")
        f.flush()
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of torch.save

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, killed_half_way)
    assert [p.name for p in tmp_path.iterdir()] == (["checkpoint.pt"] if existing else [])
    if existing:
        assert target.read_bytes() == b"old contents"


def test_atomic_write_whose_rename_fails_leaves_the_old_file_and_no_temporary_file(
        tmp_path, monkeypatch):
    target = tmp_path / "history.json"
    target.write_bytes(b"old contents")

    def disk_error(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_error)
    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, lambda f: f.write(b"new contents"))
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]
    assert target.read_bytes() == b"old contents"


def test_a_relative_data_folder_is_found_from_the_course_folder_too(tmp_path, monkeypatch):
    """A chapter's kernel runs in notebooks/; CLR_DATA_DIR=data/x was typed in the course
    folder. The working directory wins when the folder is there too."""
    from clr_lib.data import project_dir, resolve_data_dir
    monkeypatch.chdir(tmp_path)
    assert resolve_data_dir("tests") == project_dir() / "tests"  # not in tmp_path
    (tmp_path / "tests").mkdir()
    assert resolve_data_dir("tests") == Path("tests")  # from the working directory
    assert resolve_data_dir("no/such/dir") == Path("no/such/dir")  # named, reported as typed
