"""Datasets in memory: uint8 images ``(N, 3, H, W)``, int64 labels and class names.

Introduced in chapter 00. The training loop augments whole batches of these tensors on the
device (chapter 01), so no per-image PIL pipeline sits on the hot path: an image is decoded
once, here, and then lives in memory.

Sources, chosen by ``dataset=``:
    cifar10    the official CIFAR-10 through torchvision, in ``data/`` (downloaded when allowed).
    folder     any ImageFolder root: ``root/train/<class>/*.jpg``, optionally
               ``root/test/<class>/...``. Decoded images are cached under ``data/cache/``.
    synthetic  procedurally drawn 32x32 shapes and textures in 10 classes, for offline runs.
    auto       what is on disk: CIFAR-10, else an ImageFolder, else (only if downloads are
               not allowed) the synthetic set; with downloads allowed, CIFAR-10 is fetched.

Where the data lives: the ``data_dir`` argument, else ``$CLR_DATA_DIR``, else ``data/`` in the
project. A folder that was named (argument or variable) must exist and hold a dataset; the
synthetic set stands in only when no folder was named and ``data/`` holds nothing. A
validation split is always held out from train (stratified, deterministic by seed): tune on
it, and look at the test split, when there is one, only at the very end.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from clr_lib.config import UserError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


class DatasetError(UserError):
    """A dataset could not be loaded; the message says what is wrong and what to do."""


@dataclass
class ImageData:
    """One split in memory."""

    images: torch.Tensor  # (N, 3, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    classes: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> "ImageData":
        """The images at ``index`` (int64 positions), in that order."""
        return ImageData(self.images.index_select(0, index), self.labels[index], self.classes)


@dataclass
class Splits:
    """train / val (held out from train) / test (None when the source has none)."""

    train: ImageData
    val: ImageData
    test: ImageData | None
    source: str  # "cifar10" | "folder" | "synthetic"
    description: str  # where the data came from, in words

    @property
    def classes(self) -> list[str]:
        return self.train.classes


# ----------------------------------------------------------------------------- locations

def project_dir() -> Path:
    """The course checkout (where pyproject.toml sits), else the working directory."""
    here = Path(__file__).resolve().parents[1]
    return here if (here / "pyproject.toml").exists() else Path.cwd()


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The explicit argument, else ``$CLR_DATA_DIR``, else ``data/`` in the project."""
    return _data_root(data_dir)[0]


def _data_root(data_dir) -> tuple[Path, bool]:
    """(the data folder, whether the user named it). A relative folder is read from the
    working directory, else from the course folder: a chapter's kernel runs in notebooks/,
    while ``CLR_DATA_DIR=../shared/...`` was typed in the course folder."""
    named = data_dir or os.environ.get("CLR_DATA_DIR")
    if not named:
        return project_dir() / "data", False
    path = Path(named).expanduser()
    if not path.is_absolute() and not path.exists() and (project_dir() / path).exists():
        path = project_dir() / path
    return path, True


def cache_dir() -> Path:
    return Path(os.environ.get("CLR_CACHE_DIR") or project_dir() / "data" / "cache")


# ----------------------------------------------------------------------------- loading

def load_splits(cfg) -> Splits:
    """The splits a Config asks for (fields dataset, data_dir, image_size, max_per_class,
    val_fraction, seed, download)."""
    return load_dataset(cfg.dataset, cfg.data_dir, image_size=cfg.image_size,
                        max_per_class=cfg.max_per_class, val_fraction=cfg.val_fraction,
                        seed=cfg.seed, download=cfg.download)


def load_dataset(dataset: str = "auto", data_dir: str | os.PathLike | None = None, *,
                 image_size: int = 32, max_per_class: int | None = None,
                 val_fraction: float = 0.1, seed: int = 0, download: bool = True) -> Splits:
    """Load a dataset into memory and hold out a stratified validation split.

    Args:
        dataset: ``auto``, ``cifar10``, ``folder`` or ``synthetic`` (see the module docstring).
        data_dir: folder to read; None means ``$CLR_DATA_DIR``, else ``data/``.
        image_size: side in pixels; images of another size are resized (said once).
        max_per_class: keep at most this many training images per class (quick runs).
        val_fraction: share of train held out, per class, for validation.
        download: may torchvision download CIFAR-10 if it is not on disk?
    """
    root, named = _data_root(data_dir)
    if named and not root.is_dir():
        raise DatasetError(f"the data folder {root} does not exist: name a folder that holds "
                           "CIFAR-10 or train/<class>/ images (--data-dir or CLR_DATA_DIR)")
    if dataset == "auto":
        dataset = _detect(root, download, named)
    if dataset == "cifar10":
        train, test, desc = _load_cifar10(root, download)
    elif dataset == "folder":
        train, test, desc = _load_folder(root, image_size, max_per_class)
    elif dataset == "synthetic":
        per_class = max_per_class or 500
        train = make_synthetic(per_class * 10, seed=seed, image_size=image_size)
        test = make_synthetic(max(per_class // 5, 10) * 10, seed=seed + 10_000,
                              image_size=image_size)
        desc = f"synthetic shapes ({len(train)} train images, seed {seed})"
    else:
        raise DatasetError(f"Unknown dataset {dataset!r}: use 'auto', 'cifar10', 'folder' or "
                           "'synthetic'.")
    if max_per_class is not None and dataset == "cifar10":
        train = train.subset(balanced_subset(train.labels, max_per_class, seed))
    train, val = stratified_split(train, val_fraction, seed)
    return Splits(train, val, test, dataset, desc)


def _detect(root: Path, download: bool, named: bool) -> str:
    if (root / "cifar-10-batches-py").is_dir() or (root / "cifar-10-python.tar.gz").is_file():
        return "cifar10"
    if (root / "train").is_dir():
        return "folder"
    if download:
        return "cifar10"
    if named:
        raise DatasetError(f"{root} holds neither CIFAR-10 nor a train/ folder: put "
                           f"cifar-10-python.tar.gz or train/<class>/*.jpg there, or name "
                           "another folder")
    warnings.warn(f"No CIFAR-10 or ImageFolder found in {root}; using the synthetic dataset. "
                  "Set CLR_DATA_DIR to a folder holding CIFAR-10 or train/<class>/ images.")
    return "synthetic"


def stratified_split(data: ImageData, val_fraction: float, seed: int = 0
                     ) -> tuple[ImageData, ImageData]:
    """Hold out ``val_fraction`` of every class, the same images for the same seed."""
    if not 0.0 < val_fraction < 1.0:
        raise DatasetError(f"val_fraction is {val_fraction}: it takes a number between 0 and 1")
    is_val = torch.zeros(len(data), dtype=torch.bool)
    is_val[balanced_subset(data.labels, val_fraction, seed)] = True
    return data.subset(torch.nonzero(~is_val).flatten()), data.subset(torch.nonzero(is_val).flatten())


def balanced_subset(labels: torch.Tensor, share: float | int, seed: int = 0) -> torch.Tensor:
    """Sorted indices of a class-balanced random subset, the same for the same seed: a
    fraction ``share`` of every class (at least one image, but below 1 never all of a
    class), or ``share`` images of every class when it is a whole number.

    Every class is shuffled once, in class order, and its first images are taken, so for one
    seed a smaller subset lies inside a larger one (1% of the labels inside 10%). The
    validation split, the probe's holdout, ``max_per_class`` and chapter 05's label
    fractions all come from here (scikit-learn's StratifiedShuffleSplit draws anew for every
    size, so its subsets do not nest)."""
    if isinstance(share, bool) or not (isinstance(share, int) and share >= 1
                                       or isinstance(share, float) and 0.0 < share <= 1.0):
        raise UserError(f"share is {share!r}: give a fraction in (0, 1] or a whole number of "
                        "images per class")
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in labels.unique().tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n = share if isinstance(share, int) else max(1, round(len(idx) * share))
        if isinstance(share, float) and share < 1.0:
            n = min(n, len(idx) - 1)  # a share below 1 leaves one image or more out
        keep.append(idx[:n])
    return torch.cat(keep).sort().values


# ----------------------------------------------------------------------------- CIFAR-10

def _load_cifar10(root: Path, download: bool) -> tuple[ImageData, ImageData, str]:
    from torchvision.datasets import CIFAR10

    def one(train: bool) -> ImageData:
        tarball = (root / "cifar-10-python.tar.gz").is_file()  # unpacked without network
        ds = CIFAR10(str(root), train=train, download=not _has_cifar(root) and (download or tarball))
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32)
        return ImageData(images, torch.tensor(ds.targets, dtype=torch.int64), list(ds.classes))

    try:
        train, test = one(True), one(False)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted"
        raise DatasetError(
            f"CIFAR-10 is not in {root} ({e}): allow the download (download=True, on the "
            f"command line --download true), or put cifar-10-python.tar.gz ({CIFAR10_URL}) "
            f"in {root} and load again") from e
    except OSError as e:  # no network: URLError, socket errors
        raise DatasetError(
            f"could not download CIFAR-10 into {root} ({e}): offline? Download "
            f"cifar-10-python.tar.gz from {CIFAR10_URL} on a machine with internet, put it in "
            f"{root}, and load again (it is unpacked from there); or point CLR_DATA_DIR at an "
            "ImageFolder; with no folder named, CLR_PROFILE=smoke uses synthetic images") from e
    return train, test, f"CIFAR-10 (torchvision) in {root}"


def _has_cifar(root: Path) -> bool:
    return (root / "cifar-10-batches-py" / "batches.meta").is_file()


# ----------------------------------------------------------------------------- ImageFolder

def _load_folder(root: Path, image_size: int, max_per_class: int | None
                 ) -> tuple[ImageData, ImageData | None, str]:
    if not root.is_dir():
        raise DatasetError(f"the data folder {root} does not exist: create it with images in "
                           f"{root}/train/<class>/*.jpg, or name the right folder")
    if not (root / "train").is_dir():
        raise DatasetError(f"{root} has no train/ folder: put images in {root}/train/<class>/"
                           "*.jpg (one subfolder per class), optionally test/<class>/ too")
    train = _read_image_folder(root / "train", image_size, max_per_class)
    test = None
    if (root / "test").is_dir():
        test = _read_image_folder(root / "test", image_size, None)
        if test.classes != train.classes:
            raise DatasetError(f"{root}/test has classes {test.classes} but train has "
                               f"{train.classes}: give both the same class subfolders")
    return train, test, f"ImageFolder {root} ({len(train)} train images)"


def _list_image_folder(folder: Path) -> tuple[list[str], list[tuple[str, int]], list[int]]:
    """Class names, (path, label) pairs and each class folder's mtime (for the cache key)."""
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    if not classes:
        raise DatasetError(f"{folder} has no class subfolders: put each class's images in its "
                           f"own folder, {folder}/<class name>/image.jpg")
    files = []
    for label, name in enumerate(classes):
        names = sorted(e.name for e in os.scandir(folder / name)
                       if e.is_file() and not e.name.startswith("."))
        files += [(os.path.join(folder, name, n), label) for n in names]
    found = {label for _, label in files}
    empty = [name for label, name in enumerate(classes) if label not in found]
    if empty:
        raise DatasetError(f"the class folder(s) {', '.join(str(folder / n) for n in empty)} "
                           "hold no files: add the class's images, or remove the folder")
    mtimes = [(folder / name).stat().st_mtime_ns for name in classes]
    return classes, files, mtimes


def _read_image_folder(folder: Path, image_size: int, max_per_class: int | None) -> ImageData:
    classes, files, mtimes = _list_image_folder(folder)
    if max_per_class is not None:  # the first files of each class: a quick run decodes few
        files = [f for c in range(len(classes)) for f in
                 [f for f in files if f[1] == c][:max_per_class]]
    # Files added, removed or renamed change the key; to redo the decode, delete data/cache/.
    key = json.dumps([str(folder.resolve()), image_size, files, mtimes]).encode()
    cache = cache_dir() / f"{folder.parent.name}-{folder.name}-{hashlib.sha1(key).hexdigest()[:16]}"
    images_file, labels_file = cache.with_suffix(".images.npy"), cache.with_suffix(".labels.npy")
    if images_file.is_file() and labels_file.is_file():
        return ImageData(torch.from_numpy(np.load(images_file)),
                         torch.from_numpy(np.load(labels_file)), classes)
    images, labels, bad, resized = _decode(files, image_size)
    if bad:
        warnings.warn(f"Skipped {len(bad)} file(s) in {folder} that are not readable images "
                      f"(e.g. {bad[0]}). Remove them to silence this warning.")
    if resized:
        warnings.warn(f"{resized} image(s) in {folder} were not {image_size}x{image_size} and were "
                      f"resized to {image_size}x{image_size}.")
    read = set(labels)
    unreadable = [name for label, name in enumerate(classes) if label not in read]
    if unreadable:
        raise DatasetError(f"no readable image in the class folder(s) "
                           f"{', '.join(str(folder / n) for n in unreadable)}: put jpg or png "
                           "images there, or remove the folder")
    data = ImageData(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
                     torch.tensor(labels, dtype=torch.int64), classes)
    # labels first: the images file appearing last marks a complete cache entry
    save_array_atomic(labels_file, data.labels.numpy())
    save_array_atomic(images_file, data.images.numpy())
    return data


def _decode(files, image_size):
    from PIL import Image

    images, labels, bad, resized = [], [], [], 0
    for path, label in files:
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                if im.size != (image_size, image_size):
                    im = im.resize((image_size, image_size), Image.BILINEAR)
                    resized += 1
                images.append(np.asarray(im, dtype=np.uint8))
                labels.append(label)
        except Exception:  # PIL raises several types for non-images and truncated files
            bad.append(path)
    return images, labels, bad, resized


def atomic_write(path: str | os.PathLike, write) -> None:
    """Write a file whole or not at all: ``write(f)`` fills a temporary file beside ``path``
    (opened for binary writing), which is then renamed over it. A crash, a kill or a full
    disk never leaves half a checkpoint, record or cache behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_array_atomic(path: Path, array: np.ndarray) -> None:
    """A cache file, written atomically; a read-only checkout still works, without cache."""
    try:
        atomic_write(path, lambda f: np.save(f, array))
    except OSError as e:
        warnings.warn(f"Could not write the cache {path} ({e}); it will be computed again "
                      "next time. Set CLR_CACHE_DIR to a writable folder.")


# ----------------------------------------------------------------------------- synthetic

SYNTHETIC_CLASSES = ["disc", "square", "triangle", "cross", "ring",
                     "h-stripes", "v-stripes", "checker", "dots", "diagonal"]


def make_synthetic(n: int, seed: int = 0, image_size: int = 32) -> ImageData:
    """Procedurally drawn colour images in 10 classes, deterministic by seed.

    Classes are shapes (disc, square, triangle, cross, ring) and textures (stripes, checker,
    dots, diagonals); colours, positions, sizes, periods and backgrounds are random, and every
    image gets pixel noise and a background gradient. Colour carries no information about the
    class, so a network must learn shape and texture: what crops and colour jitter teach.
    """
    rng = np.random.default_rng(seed)
    s = image_size
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    yy, xx = np.meshgrid(np.arange(s) + 0.5, np.arange(s) + 0.5, indexing="ij")
    yy, xx = yy[None] / s, xx[None] / s  # (1, S, S) in [0, 1]
    cy, cx = rng.uniform(0.3, 0.7, (2, n, 1, 1))
    r = rng.uniform(0.15, 0.32, (n, 1, 1))  # shape size, fraction of the side
    angle = rng.uniform(0, np.pi, (n, 1, 1))
    period = rng.uniform(0.12, 0.3, (n, 1, 1))  # texture period, fraction of the side
    dy, dx = yy - cy, xx - cx
    # rotated coordinates, so squares, crosses and triangles come at any angle
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    dist = np.sqrt(dx**2 + dy**2)
    phase = rng.uniform(0, 1, (n, 1, 1))
    masks = {
        0: dist < r,
        1: np.maximum(abs(u), abs(v)) < r * 0.8,
        2: (v > -r * 0.6) & (abs(u) < (r * 0.9 - (v + r * 0.6) * 0.6)),
        3: ((abs(u) < r * 0.3) | (abs(v) < r * 0.3)) & (np.maximum(abs(u), abs(v)) < r),
        4: (dist < r) & (dist > r * 0.55),
        5: ((yy / period + phase) % 1) < 0.5,
        6: ((xx / period + phase) % 1) < 0.5,
        7: ((((yy / period + phase) % 1) < 0.5) ^ (((xx / period + phase) % 1) < 0.5)),
        8: (((yy / period + phase) % 1 - 0.5) ** 2 + ((xx / period + phase) % 1 - 0.5) ** 2)
           < 0.09,
        9: (((xx + yy) / period + phase) % 1) < 0.5,
    }
    mask = np.zeros((n, s, s), dtype=bool)
    for c, m in masks.items():
        mask |= (labels[:, None, None] == c) & np.broadcast_to(m, (n, s, s))
    fg = rng.uniform(0, 1, (n, 3, 1, 1))
    bg = rng.uniform(0, 1, (n, 3, 1, 1))
    too_close = np.abs(fg - bg).sum(1, keepdims=True) < 0.6  # keep the shape visible
    fg = np.where(too_close, 1 - bg, fg)
    grad = rng.uniform(-0.25, 0.25, (n, 3, 1, 1)) * (yy[:, None] - 0.5)
    img = np.where(mask[:, None], fg, bg + grad)  # (N, 3, S, S)
    img = img + rng.normal(0, 0.06, img.shape)
    images = torch.from_numpy((np.clip(img, 0, 1) * 255).round().astype(np.uint8))
    return ImageData(images, torch.from_numpy(labels.astype(np.int64)), list(SYNTHETIC_CLASSES))
