"""One dataclass of hyperparameters and the three profiles of the course.

Introduced in chapter 00. Every field says its unit and, where SimCLR (Chen et al., 2020)
states a value, the paper's value beside the course's. A Config checks itself when it is
made (``Config.__post_init__``), so a bad value stops every entry point (functions,
notebooks, CLIs) with the same message before any data is loaded or any step is taken.

Profiles: ``smoke`` (seconds on any CPU: tests, CI, every notebook under nbval), ``laptop``
(a CPU learner, a 15-minute budget, the small ConvNet) and ``gpu`` (ResNet-18 with the CIFAR
stem and the paper's recipe, Sections 2.3 and B.9). The profile comes from the argument, else
``$CLR_PROFILE``, else ``gpu`` when CUDA is available and ``laptop`` otherwise.
``$CLR_BUDGET_MINUTES`` sets every profile's training budget (``budget_minutes``) and nothing
else: CI runs the chapters in ``laptop`` with a budget of seconds.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import torch

PROFILES = ("smoke", "laptop", "gpu")
DATASETS = ("auto", "cifar10", "folder", "synthetic")
ENCODERS = ("convnet", "resnet18", "resnet50")
HEADS = ("none", "linear", "nonlinear")
OPTIMIZERS = ("adamw", "sgd", "lars", "muon")
SCHEDULES = ("cosine", "linear")
DEVICES = ("auto", "cpu", "cuda", "mps")


class UserError(ValueError):
    """Something the user asked for cannot work. The message says what is wrong, then how to
    fix it (``what: how``); the CLIs print it as one line, ``error: <message>``, and exit 2."""


@dataclass
class Config:
    profile: str = "laptop"  # smoke | laptop | gpu

    # data (chapter 00)
    dataset: str = "auto"  # auto | cifar10 | folder | synthetic ("auto": what is on disk)
    data_dir: str | None = None  # None: $CLR_DATA_DIR, else data/ in the project
    image_size: int = 32  # pixels per side; CIFAR-10 is 32
    max_per_class: int | None = None  # training images kept per class (None: all)
    val_fraction: float = 0.1  # stratified share of train held out for validation
    download: bool = True  # may torchvision download CIFAR-10?

    # augmentation T, paper Appendix A (chapter 01)
    crop_scale: tuple[float, float] = (0.08, 1.0)  # crop area fraction; paper (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio; paper (3/4, 4/3)
    flip_p: float = 0.5  # horizontal flip probability; paper 0.5
    color_strength: float = 0.5  # s; paper 1.0 on ImageNet, 0.5 on CIFAR-10
    color_p: float = 0.8  # probability of colour jitter; paper 0.8
    gray_p: float = 0.2  # probability of grayscale; paper 0.2
    blur: bool = False  # Gaussian blur; paper: on for ImageNet, off for CIFAR-10
    view_size: int | None = None  # side of the views x_i, x_j in pixels (None: image_size)
    full_size_fraction: float = 0.0  # last share of the steps with views of image_size
    rotate_p: float = 0.0  # rotations by quarter turns: studied in the paper, not in T
    cutout_p: float = 0.0  # cutout of a square of half the side: likewise (chapter 07)
    n_views: int = 2  # views of each image a step, V; paper 2 (chapter 08: more)

    # model (chapter 02)
    encoder: str = "convnet"  # convnet | resnet18 | resnet50; paper ResNet-50
    width: int = 32  # channels of the first ConvNet stage (convnet only)
    feature_dim: int | None = None  # size of h, the last conv's channels (convnet; None: 8w)
    head: str = "nonlinear"  # none | linear | nonlinear; paper nonlinear
    proj_hidden_dim: int | None = None  # hidden units of g; None: the size of h, as the paper
    proj_dim: int = 128  # size of z; paper 128

    # loss (chapter 03)
    temperature: float = 0.5  # tau; paper 0.5 on CIFAR-10 (Section B.9), 0.1 on ImageNet
    l2_normalize: bool = True  # cosine similarity in NT-Xent; False: dot product (Table 5)

    # optimisation (chapter 04)
    optimizer: str = "lars"  # adamw | sgd | lars | muon; paper LARS
    batch_size: int = 256  # N images a step; paper 4096 (ImageNet), 256-4096 (CIFAR-10)
    lr: float = 0.3  # peak learning rate per 256 images, LR = lr x batch_size / 256; paper 0.3
    weight_decay: float = 1e-6  # paper 1e-6
    momentum: float = 0.9  # SGD, LARS and Muon; paper 0.9 (LARS)
    muon_lr: float = 0.05  # Muon's peak learning rate for weight matrices (chapter 08)
    ns_steps: int = 5  # Muon's Newton-Schulz iterations (Jordan et al., 2024: 5)
    num_epochs: int = 30  # passes over train; paper 100-1000 on CIFAR-10
    budget_minutes: float | None = None  # wall-clock budget that sets the number of steps
    warmup_epochs: float = 1.0  # linear warmup; paper 10 epochs
    lr_schedule: str = "cosine"  # cosine | linear: decay to zero after warmup; paper cosine
    compile: bool = False  # torch.compile the network (CUDA only; the first steps compile)
    bf16: bool | None = None  # bf16 autocast; None: on CUDA, and on CPUs with AMX tiles

    # evaluation (chapter 05)
    knn_k: int = 200  # neighbours of the kNN monitor; Wu et al. (2018) 200
    knn_t: float = 0.1  # temperature of the kNN votes
    eval_every: int = 5  # epochs between kNN checks (0: only at the end)
    eval_size: int | None = None  # side f sees images at when evaluated (None: image_size)

    # bookkeeping
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | mps
    num_threads: int | None = None  # torch CPU threads (None: torch's default)

    def __post_init__(self):
        self.crop_scale, self.crop_ratio = tuple(self.crop_scale), tuple(self.crop_ratio)
        for problem in _problems(self):
            raise UserError(problem)

    @property
    def pair_batch_size(self) -> int:
        """Images a step at the same number of views, two views each: batch_size x n_views
        / 2. Fine-tuning and the supervised baseline use batches of it."""
        return self.batch_size * self.n_views // 2

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        """The Config a saved dict describes (a checkpoint's or a record's, read back from
        JSON): fields the dict predates keep their defaults, keys Config lacks are dropped."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def replace(self, **changes) -> "Config":
        """A copy with some fields changed; an unknown name is an error."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise UserError(f"Config has no field {', '.join(unknown)}: the fields are "
                            f"{', '.join(f.name for f in dataclasses.fields(self))}")
        return dataclasses.replace(self, **changes)


def _problems(c: Config):
    """What is wrong with a Config, one 'what: how' message at a time."""
    def number(x, lo=-math.inf, hi=math.inf, whole=False, lo_open=False):
        kind = int if whole else (int, float)
        ok = isinstance(x, kind) and not isinstance(x, bool) and math.isfinite(x)
        return ok and lo <= x <= hi and not (lo_open and x == lo)

    choices = dict(profile=PROFILES, dataset=DATASETS, encoder=ENCODERS, head=HEADS,
                   optimizer=OPTIMIZERS, lr_schedule=SCHEDULES)
    for name, allowed in choices.items():
        if getattr(c, name) not in allowed:
            yield f"{name} is {getattr(c, name)!r}: choose one of {', '.join(allowed)}"
    if not (c.device in DEVICES or str(c.device).startswith("cuda:")):
        yield f"device is {c.device!r}: choose auto, cpu, cuda, cuda:N or mps"
    at_least = dict(image_size=8, width=1, proj_dim=1, batch_size=2, n_views=2, ns_steps=1,
                    num_epochs=0, knn_k=1, eval_every=0, seed=0)
    optional = dict(max_per_class=1, view_size=8, feature_dim=1, proj_hidden_dim=1,
                    eval_size=8, num_threads=1)
    for name, lo in list(at_least.items()) + list(optional.items()):
        x = getattr(c, name)
        if not (name in optional and x is None) and not number(x, lo, whole=True):
            none = " or None" if name in optional else ""
            yield f"{name} is {x!r}: it takes a whole number >= {lo}{none}"
    for name in ("temperature", "lr", "muon_lr", "knn_t"):
        if not number(getattr(c, name), 0, lo_open=True):
            yield (f"{name} is {getattr(c, name)!r}: it takes a number > 0"
                   + ("; the paper uses 0.5 on CIFAR-10" if name == "temperature" else ""))
    for name, hi in (("flip_p", 1), ("color_p", 1), ("gray_p", 1), ("rotate_p", 1),
                     ("cutout_p", 1), ("full_size_fraction", 1), ("momentum", 0.999),
                     ("weight_decay", math.inf), ("color_strength", math.inf),
                     ("warmup_epochs", math.inf)):
        if not number(getattr(c, name), 0, hi):
            yield f"{name} is {getattr(c, name)!r}: it takes a number from 0 to {hi:g}"
    if not number(c.val_fraction, 0, 1, lo_open=True) or c.val_fraction == 1:
        yield f"val_fraction is {c.val_fraction!r}: it takes a number between 0 and 1"
    if c.budget_minutes is not None and not number(c.budget_minutes, 0, lo_open=True):
        yield f"budget_minutes is {c.budget_minutes!r}: it takes minutes > 0, or None"
    for name, (lo, hi) in (("crop_scale", (0, 1)), ("crop_ratio", (0, math.inf))):
        pair = getattr(c, name)
        if not (len(pair) == 2 and all(number(v, lo, hi, lo_open=True) for v in pair)
                and pair[0] <= pair[1]):
            yield f"{name} is {pair!r}: it takes two numbers, min <= max, each in ({lo}, {hi:g}]"
    for name in ("download", "blur", "l2_normalize", "compile"):
        if not isinstance(getattr(c, name), bool):
            yield f"{name} is {getattr(c, name)!r}: it takes True or False"
    if c.bf16 not in (None, True, False):
        yield f"bf16 is {c.bf16!r}: it takes True, False or None (None: where it is fast)"


# Each profile states only what differs from the defaults above.
_PRESETS: dict[str, dict] = {
    "smoke": dict(max_per_class=100, download=False, width=16, batch_size=128,
                  optimizer="adamw", lr=2e-3, weight_decay=1e-4, num_epochs=1, eval_every=0,
                  knn_k=20, warmup_epochs=0.0),
    # Each departure from the paper's recipe is one section of chapter 08 (docs/record.md).
    "laptop": dict(encoder="convnet", width=32, feature_dim=1024,  # h of 1024
                   view_size=16, eval_size=28,  # 16-pixel views, evaluated at 28 pixels
                   crop_scale=(0.2, 1.0), temperature=0.2,  # crops of >= 20%, tau 0.2
                   batch_size=64, n_views=8,  # 8 views of 64 images a step
                   optimizer="muon", lr=8e-3, muon_lr=0.05, ns_steps=3, momentum=0.95,
                   weight_decay=0.05,  # Muon; weight decay as an effective learning rate
                   lr_schedule="linear", warmup_epochs=0.25,  # a linear decay
                   budget_minutes=15.0, eval_every=3),
    # The paper's recipe (Sections 2.3 and B.9: LARS at LR = 0.3 x B / 256, weight decay 1e-6,
    # 10 warmup epochs, cosine decay, tau 0.5) with ResNet-18; docs/gpu.md: time and result.
    "gpu": dict(encoder="resnet18", batch_size=512, num_epochs=800, warmup_epochs=10.0,
                eval_every=10, compile=True),
}


# The paper's recipe (Sections 2.3, B.9) on the laptop network and budget, warmup a tenth of
# the run as the paper's 10 of 100 epochs: chapter 08 compares it with the laptop profile.
PAPER_RECIPE = dict(view_size=None, eval_size=None, crop_scale=(0.08, 1.0), temperature=0.5,
                    feature_dim=None, batch_size=256, n_views=2, optimizer="lars", lr=0.3,
                    weight_decay=1e-6, momentum=0.9, lr_schedule="cosine", warmup_epochs=0.5)


def default_profile() -> str:
    """``$CLR_PROFILE`` if set, else ``gpu`` with CUDA and ``laptop`` without."""
    return os.environ.get("CLR_PROFILE") or ("gpu" if torch.cuda.is_available() else "laptop")


def get_config(profile: str | None = None, **overrides) -> Config:
    """The hyperparameters of a profile, with any field overridden by keyword.

    >>> get_config("smoke", temperature=0.2).temperature
    0.2
    """
    profile = profile or default_profile()
    if profile not in _PRESETS:
        raise UserError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)} "
                        "(the argument, or the CLR_PROFILE environment variable)")
    budget = os.environ.get("CLR_BUDGET_MINUTES")
    if budget:
        try:
            overrides = {"budget_minutes": float(budget), **overrides}
        except ValueError:
            raise UserError(f"CLR_BUDGET_MINUTES is {budget!r}: set it to a number of minutes, "
                            "or unset it") from None
    return Config(profile=profile).replace(**{**_PRESETS[profile], **overrides})
