"""One dataclass of hyperparameters, and the three profiles of the course.

Introduced in chapter 00. Every field says its unit, and where SimCLR (Chen et al., 2020)
states a value, the paper's value beside the course's.

Profiles:
    smoke   seconds on any CPU: tests, CI, every notebook under nbval.
    laptop  a CPU learner with a 15-minute training budget (small ConvNet encoder).
    gpu     ResNet-18 with the CIFAR stem and the full recipe (paper Appendix B.9).

The profile comes from the argument, else the ``CLR_PROFILE`` environment variable, else
``gpu`` when CUDA is available and ``laptop`` otherwise.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch

PROFILES = ("smoke", "laptop", "gpu")


@dataclass
class Config:
    profile: str = "laptop"

    # data
    dataset: str = "auto"  # auto | cifar10 | folder | synthetic ("auto": what is on disk)
    data_dir: str | None = None  # None: $CLR_DATA_DIR, else data/ in the project
    image_size: int = 32  # pixels per side; CIFAR-10 is 32
    max_per_class: int | None = None  # images per class kept from train (None: all)
    val_fraction: float = 0.1  # stratified share of train held out for validation
    download: bool = True  # may torchvision download CIFAR-10?

    # augmentation, paper Appendix A (chapter 01)
    crop_scale: tuple[float, float] = (0.08, 1.0)  # area fraction; paper (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio; paper (3/4, 4/3)
    flip_p: float = 0.5  # horizontal flip probability; paper 0.5
    color_strength: float = 0.5  # s; paper 1.0 on ImageNet, 0.5 on CIFAR-10
    color_p: float = 0.8  # probability of colour jitter; paper 0.8
    gray_p: float = 0.2  # probability of grayscale; paper 0.2
    blur: bool = False  # Gaussian blur; paper: on for ImageNet, off for CIFAR-10
    view_size: int | None = None  # side of the training views x_i, x_j (None: image_size)
    # last share of the steps with views at image_size; with a time budget, a share of the
    # steps planned at the small views' pace: the slower full-size steps then end it sooner
    full_size_fraction: float = 0.0
    rotate_p: float = 0.0  # rotations by 90/180/270 degrees: studied in the paper, not in T
    cutout_p: float = 0.0  # cutout of a square of half the side: likewise (chapter 07)
    n_views: int = 2  # views of each image per step, V; paper 2. Each view's positives are
    # the V - 1 others (loss.nt_xent_views); a step sees batch_size x V views

    # model (chapter 02)
    encoder: str = "convnet"  # convnet | resnet18 | resnet50; paper ResNet-50
    width: int = 32  # channels of the first ConvNet stage (convnet only)
    feature_dim: int | None = None  # size of h, the last conv's channels (convnet; None: 8w)
    head: str = "nonlinear"  # none | linear | nonlinear; paper nonlinear
    proj_hidden_dim: int | None = None  # hidden units of g; None: the width of h (paper)
    proj_dim: int = 128  # size of z; paper 128

    # loss (chapter 03)
    temperature: float = 0.5  # tau; paper 0.5 on CIFAR-10 (Table B.9), 0.1 on ImageNet
    l2_normalize: bool = True  # cosine similarity in NT-Xent; False: dot product (Table 5)

    # optimisation (chapter 04)
    optimizer: str = "adamw"  # adamw | sgd | lars | muon; paper LARS
    batch_size: int = 256  # N images, 2N views; paper 4096 (ImageNet), 512-1024 (CIFAR-10)
    lr: float = 2e-3  # peak learning rate per 256 images: LR = lr x batch_size / 256
    weight_decay: float = 1e-4  # paper 1e-6 with LARS
    momentum: float = 0.9  # SGD, LARS and Muon
    muon_lr: float = 0.05  # Muon's peak LR for the weight matrices (lr is AdamW's for the rest)
    ns_steps: int = 5  # Muon's Newton-Schulz iterations (Jordan et al., 2024: 5)
    num_epochs: int = 30  # passes over train; paper 100-1000 on CIFAR-10
    budget_minutes: float | None = None  # wall-clock budget; sets the number of steps
    warmup_epochs: float = 1.0  # linear warmup; paper 10 epochs
    lr_schedule: str = "cosine"  # cosine | linear: decay to zero after warmup; paper cosine
    compile: bool = False  # torch.compile the network (CUDA only; first steps compile)
    bf16: bool | None = None  # bf16 autocast; None: on CUDA, and on CPUs with AMX tiles

    # evaluation (chapter 05)
    knn_k: int = 200  # neighbours in the kNN monitor; Wu et al. (2018) 200
    knn_t: float = 0.1  # temperature of the kNN votes
    eval_every: int = 5  # epochs between kNN checks (0: only at the end)
    # side of the images f sees when evaluated (kNN, linear probe, maps), resized from
    # image_size: an encoder trained on small crops sees best above its views' size (Touvron
    # et al., 2019, "Fixing the train-test resolution discrepancy"); None: image_size
    eval_size: int | None = None

    # bookkeeping
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | mps
    num_threads: int | None = None  # torch CPU threads (None: torch's default)

    @property
    def pair_batch_size(self) -> int:
        """Images a step at the same number of views a step, two views each: batch_size x
        n_views / 2 (laptop: 256). Fine-tuning and the supervised baseline use batches of it."""
        return self.batch_size * self.n_views // 2

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        """The Config a saved dict describes (a checkpoint's, or a result record's, read back
        from JSON): lists become tuples, fields the dict predates keep their defaults, and
        keys Config no longer has are dropped."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v
                      for k, v in values.items() if k in names})

    def replace(self, **changes) -> "Config":
        """A copy with some fields changed; unknown names raise a clear error."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"Config has no field(s) {sorted(unknown)}; fields: "
                            f"{[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **changes)


# Each profile states only what differs from the defaults above.
_PRESETS: dict[str, dict] = {
    "smoke": dict(max_per_class=100, download=False, width=16, batch_size=128,
                  num_epochs=1, eval_every=0, knn_k=20, warmup_epochs=0.0),
    # Views of 16x16 pixels cost a quarter of 32x32 ones: on a 2-core CPU (bf16 on AMX) the
    # ConvNet of width 32 steps on 2,258 images/s instead of 587 (the whole loop: ~1,100).
    # kNN is still measured on full 32x32 images (57.8% after 9 such epochs vs 53.7% at 16x16).
    # Temperature 0.2, chosen on val: 15 minutes here (seed 0, ~4,000 steps, 23 epochs) gave
    # kNN top-1 64.9% with tau 0.2, 64.4% with 0.1, 62.8% with 0.5 (3,524 steps; seed 1: 61.7%).
    # Crops of at least 20% of the image, chosen on val in 4-minute runs (seed 0, kNN top-1):
    # crop scale (0.2, 1) 60.6%, (0.3, 1) 60.4%, the paper's (0.08, 1) 59.3%. No gain there from
    # lr 4e-3 (59.2), weight decay 0.05 (60.5), batch 128 (58.6), projection width 1024 (57.9),
    # width 48 (58.4: 2.2x slower a step), views of 12 (56.7) or 20 pixels (58.3), the last
    # quarter at 32 pixels (60.2) or LARS at lr 1.0 (56.2). At the full 15 minutes the crop
    # minimum is a wash (seed 0: 64.9% either way); seeds 0, 1, 2 give 64.9%, 64.0%, 63.7%
    # (3,784, 3,223, 3,442 steps: this shared CPU's pace varies by the minute).
    # h of 512 (the last conv 16 x width wide: 0.83 M parameters, 0.17 GFLOPs per 32x32 image
    # instead of 0.54 M and 0.13), chosen at the full 15 minutes: seeds 0, 1, 2 give 65.8%,
    # 64.7%, 64.1% (3,144, 3,030, 3,175 steps, without the kNN check halfway; mean 64.9% vs
    # 64.2%, each seed higher; this profile, seed 0: 66.0%). No gain at 15 minutes from colour
    # strength 0.4 (65.7, 64.4, 63.3%) or batch 512 (seed 0: 65.8% with s = 0.4); a sixth conv
    # at 2x2 lost in 5-minute runs (57.9% vs 60.4%).
    # Conv3x3's GEMM weight gradient (models.py) then made steps faster (seed 0: 3,972 steps
    # in 15 minutes instead of 3,150) for no gain (66.1%): kNN had stopped rising after about
    # 2,600 steps (66.0% at step 2,625). Weight decay 0.5 lifted that ceiling: every decayed
    # weight sits before a BatchNorm or z's l2-normalisation, so decay sets the effective
    # learning rate (chapter 04). Seed 0 at the full 15 minutes: 67.3% with 0.5 (3,646 steps),
    # 66.1% with 1e-4, 66.2% with 2.0; seeds 0, 1, 2 with 0.5: 67.3%, 65.4%, 65.4% (3,646,
    # 3,598, 3,147 steps; mean 66.0% vs 64.9%). With decay 1e-4 there was no gain at 15 minutes
    # from views of 20 pixels (65.5%), conv4 twice as wide (65.4%) or the last 10% of the steps
    # at 32 pixels (63.7%: kNN fell from 65.9%).
    # The kNN monitor then ran in bf16 (30 s instead of 70 s), on a slower day of this CPU:
    # seeds 0, 1, 2 gave 66.7%, 65.4%, 64.6% (3,155, 3,315, 3,035 steps; mean 65.6%). All
    # ties on seed 0: lr 4e-3 67.2% (3,532 steps), colour strength 0.6 67.2% (3,563), and
    # temperature 0.3 66.7% against 0.2's 66.7% at the same 3,150 steps (18 epochs). Views
    # of 32 pixels for the last 10% of the steps hurt again: 63.7% (66.9% at step 2,625; the
    # budget, re-timed at the slower pace, left 75 of 2,875 steps at full size).
    # Then 8 views of 64 images a step instead of 2 of 256 (n_views; loss.nt_xent_views): the
    # same 512 views (a step of 210 ms against 203, side by side), but 28 positive pairs per
    # image instead of 1. At 15 minutes, seeds 0, 1, 2: 68.1%, 66.5%, 65.9% (4,169, 4,457,
    # 3,523 steps; mean 66.8%) against 2 x 256's 67.8%, 65.6%, 65.5% on the same day
    # (4,668, 4,277, 3,646 steps; mean 66.3%): higher on every seed, by 0.3-0.9 points. 4 views
    # of 128 images: 67.8% (seed 0, 3,629 steps). No gain from the decoupled contrastive loss
    # (the positive left out of the denominator; Yeh et al., 2022; seed 0: 66.4%), from kNN on
    # an exponential moving average of the weights (decay 0.99 to 0.998: 67.3-68.0% against
    # the weights' own 67.8-68.1%) or from torch.compile on the CPU (a 1.08x faster step after
    # 49 s of compiling). Another day, seeds 0, 1, 2: 67.3%, 66.2%, 66.2% (3,947, 4,171,
    # 3,532 steps; six runs: mean 66.7%). At a fixed 1,406 steps (2 epochs; seed 0):
    # temperature 0.1, 0.15, 0.2 give 64.0%, 63.6%, 64.0%; 16 views of 32 images 62.0%. In
    # 5-minute runs, 6 views plus 8 small ones of 8 pixels (multi-crop; Caron et al., 2020)
    # lost: 58.2% vs 62.3%.
    # Then Muon for the weight matrices (train.Muon; Jordan et al., 2024), AdamW at lr 8e-3
    # for biases and BatchNorm. 5-minute runs, seed 0, on one day: AdamW 64.4% (1,679 steps);
    # Muon at lr 0.02, 0.05, 0.1 with weight decay 0.05: 65.4%, 66.7%, 66.7% (1,386, 1,894,
    # 2,075 steps: this CPU's pace moved within the hour); at lr 0.05 with decay 0 and 0.2:
    # 66.4% and 66.1%. At 15 minutes, seeds 0, 1, 2: 69.9%, 66.9%, 67.6% (6,400, 4,000, 3,797
    # steps; mean 68.1%); AdamW that day, seed 0: 66.9% (3,540 steps). Against AdamW's
    # runs of similar length, seeds 1 and 2 gain 0.4-1.7 points. Orthogonalising costs
    # ~21 ms a step (5 Newton-Schulz iterations in bf16 over the 7 matrices; the step is
    # ~150-220 ms). Not tried with Muon: views of 12 pixels (with AdamW, 5 minutes: 59.1% vs
    # 64.4%, 62.6% when kNN looks at 20-pixel images).
    # Another day, a faster hour: seeds 0, 1, 2 gave 69.7%, 67.9%, 67.8% (5,835, 5,359, 5,530
    # steps; mean 68.4%; six Muon runs: mean 68.3%). At a fixed 1,406 steps (2 epochs, seed 0;
    # 65.9% as it is) nothing beat the profile beyond the scatter of single runs (a point):
    # temperature 0.1, 0.12, 0.15, 0.3 gave 66.1, 66.3, 66.9, 65.3%; Muon lr 0.1 66.1%,
    # momentum 0.9 66.3%, AdamW lr 0.016 for the 1-d parameters 65.9%, g's two matrices on
    # AdamW 66.2%; temperature 0.15 with Muon lr 0.1 or with g on AdamW 65.4% and 65.5%. At
    # 15 minutes temperature 0.15 tied (seed 0: 69.4% in 5,513 steps against 0.2's 69.7% in
    # 5,835, the same hour). BatchNorm statistics recomputed on clean 32-pixel training images
    # (training sees 16-pixel views) lowered kNN: 68.9% against 69.7% with the running ones.
    # Three Newton-Schulz iterations instead of five: 66.1% at 1,406 steps; at 15 minutes
    # (seed 0) 69.7% in 6,859 steps against five's 69.7% in 5,835: more steps, a tie.
    # Then h of 1024 (the last conv 32 x width wide: 1.42 M parameters, 0.25 GFLOPs per 32x32
    # image), the learning rate decayed linearly instead of along the cosine (lr_schedule), and
    # three Newton-Schulz iterations (ns_steps) to pay for the larger matrices. At a fixed 1,406
    # steps (seed 0; 65.9% as it was, a run of 3.5 minutes): h of 1024 67.0% (5.6 minutes),
    # with g's hidden layer kept at 512 66.6% (5.1 minutes); the linear decay 66.4% (3.3
    # minutes); both 66.6%, and with three iterations 67.8% (5.1 minutes against 5.5), with
    # temperature 0.15 too 67.4%; a sixth conv at 16x16 or at 8x8 pixels (after conv1 or
    # conv2) 66.0% and 66.1%, width 40 66.1% (4.4 minutes). At 15 minutes, seeds 0, 1, 2 with
    # all three changes: 70.2%, 68.2%, 68.3% (4,628, 4,263, 4,394 steps; mean 68.9%) against
    # 69.7%, 67.9%, 67.8% one to three hours before (5,835, 5,359, 5,530 steps): higher on
    # every seed, by 0.3-0.5 points (seed 2 had 68.4% at step 4,218 already: kNN levels off).
    # Seed 3 through the CLI, back to back: 69.6% (4,435 steps) against 68.6% for the profile
    # before (--feature-dim 512 --lr-schedule cosine --ns-steps 5; 6,834 steps). Four seeds:
    # mean 69.1% against 68.5%.
    # Then kNN with f seeing the images at 28 pixels a side (eval_size): the encoder trains on
    # 16-pixel views of crops and is tested on whole images, the train-test resolution
    # discrepancy of Touvron et al. (2019). The checkpoints of seeds 0-3 above, re-scored
    # (evaluate.extract_features, bilinear antialiased resizing): 71.1%, 70.5%, 69.8%, 70.8%
    # at 28 pixels against 70.2%, 68.2%, 68.3%, 69.6% at 32 (mean 70.5% vs 69.1%); at 26 and
    # 30 pixels, means of 70.1% and 69.6%; seed 3 at 24, 20 and 36 pixels: 70.3%, 68.8%, 69.2%.
    # The profile before (h of 512, cosine, five iterations) gains as much: 70.5%, 69.4%,
    # 69.7%, 70.4% (mean 70.0% vs 68.5%). Seeds 4 and 5, trained after the choice with the
    # profile as it is (python -m clr_lib.train --profile laptop --seed N): 70.4% and 72.1%
    # (4,617 and 4,532 steps; 69.5% and 70.2% at 32 pixels). Six seeds: 69.8-72.1%, mean
    # 70.8% (at 32 pixels: 69.3%). The linear probe gains less (seed 5, python -m
    # clr_lib.evaluate --split val --bf16: 78.5% at 28 pixels, 78.1% at 32).
    "laptop": dict(encoder="convnet", width=32, batch_size=64, n_views=8, lr=8e-3,
                   warmup_epochs=0.25, lr_schedule="linear", view_size=16,
                   crop_scale=(0.2, 1.0), optimizer="muon", muon_lr=0.05, ns_steps=3,
                   momentum=0.95, weight_decay=0.05, temperature=0.2, feature_dim=1024,
                   eval_size=28, budget_minutes=15.0, eval_every=3),
    # the paper's rule LR = 0.3 x batch_size / 256 (Section B.1) with LARS, weight decay 1e-6,
    # 10 warmup epochs; CIFAR-10 ResNet-18 runs of 800 epochs reach ~90% linear accuracy.
    # One H200: 2.3 s per epoch (19,560 images/s), so 800 epochs in about 35 minutes.
    "gpu": dict(encoder="resnet18", batch_size=512, optimizer="lars", lr=0.3,
                weight_decay=1e-6, temperature=0.5, num_epochs=800, warmup_epochs=10.0,
                eval_every=10, compile=True),
}


def default_profile() -> str:
    """``$CLR_PROFILE`` if set, else ``gpu`` with CUDA and ``laptop`` without."""
    name = os.environ.get("CLR_PROFILE")
    if name:
        return name
    return "gpu" if torch.cuda.is_available() else "laptop"


def get_config(profile: str | None = None, **overrides) -> Config:
    """The hyperparameters of a profile, with any field overridden by keyword.

    >>> get_config("smoke", temperature=0.2).temperature
    0.2
    """
    profile = profile or default_profile()
    if profile not in _PRESETS:
        raise ValueError(f"Unknown profile {profile!r}: choose one of {PROFILES} "
                         "(argument or the CLR_PROFILE environment variable).")
    return Config(profile=profile).replace(**{**_PRESETS[profile], **overrides})


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` picks cuda, then mps, then cpu; a named device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} but CUDA is not available here; use device='auto' "
                           "or 'cpu'.")
    if name == "mps" and not (getattr(torch.backends, "mps", None)
                              and torch.backends.mps.is_available()):
        raise RuntimeError("device='mps' but MPS is not available here; use 'auto' or 'cpu'.")
    return torch.device(name)
