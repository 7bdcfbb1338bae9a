"""Evaluating a representation: features in eval mode, weighted kNN, the linear probe, a CLI.

Introduced in chapter 04 (the kNN monitor) and chapter 05 (evaluation). The paper judges f by
"the widely used linear evaluation protocol ..., where a linear classifier is trained on top
of the frozen base network, and test accuracy is used as a proxy for representation quality"
(Chen et al., 2020, Section 2.3). Three rules, each a pitfall of public SimCLR code:

- features in eval mode: in train mode BatchNorm normalises with the batch's own statistics,
  so h of an image depends on its batch-mates (and the running statistics get overwritten);
- a frozen encoder: features are computed once, so no gradient can reach f;
- hyperparameters (the probe's L2 penalty) chosen on a split that is not reported: on val
  when test is reported, on a part of train held out when val is reported.

    python -m clr_lib.evaluate runs/smoke/checkpoint.pt --data-dir DIR --split test
    python -m clr_lib.evaluate runs/laptop/checkpoint.pt --split val   # no test split in DIR

Fine-tuning and the supervised baseline are in ``clr_lib.finetune``; 2-D maps in ``clr_lib.maps``.
"""

from __future__ import annotations

import argparse
import json
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from clr_lib.augment import normalize
from clr_lib.checkpoint import load_checkpoint, model_from_checkpoint
from clr_lib.cli import ArgumentParser, optional_int, run
from clr_lib.config import UserError
from clr_lib.data import DatasetError, Splits, balanced_subset, load_splits
from clr_lib.device import pick_device
from clr_lib.models import build_model

# L2 penalties tried by the probe, strongest first (each fit warm-starts the next). The
# paper's L-BFGS protocol tries "45 logarithmically spaced values between 10^-6 and 10^5"
# (Appendix B.8.1); on standardised features the best lies within these seven.
WEIGHT_DECAYS = (1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


# ----------------------------------------------------------------------------- features

@torch.no_grad()
def extract_features(encoder: nn.Module, images: torch.Tensor, batch_size: int = 512,
                     device: torch.device | str | None = None, *, with_z: bool = False,
                     progress: bool = False, bf16: bool = False, size: int | None = None):
    """h = f(x) for every image, in eval mode, batched.

    Args:
        encoder: f, or a ``SimCLR`` model (then h, the output before the head, is returned).
        images: (N, 3, H, W) uint8 on any device.
        batch_size: images per forward pass.
        device: where to run f; default the device of its parameters.
        with_z: also return z = g(h) (``encoder`` must be a ``SimCLR`` model).
        progress: show a tqdm bar.
        bf16: bfloat16 autocast, as training uses on CUDA and AMX CPUs (``device.use_bf16``),
            faster there (docs/record.md).
        size: resize the images to size x size pixels before f (bilinear, antialiased, as
            torchvision's Resize); None keeps them. ``Config.eval_size``: the laptop encoder
            trains on 16-pixel views and is evaluated at 28 pixels (chapter 08).
    Returns:
        (N, feature_dim) float32 features h on the CPU, or (h, z) with ``with_z``.
    """
    if size is not None and not (isinstance(size, int) and size >= 8):
        raise UserError(f"size is {size!r}: give a whole number of pixels >= 8, or None to "
                        "keep the images as they are")
    device = torch.device(device or next(encoder.parameters()).device)
    was_training = encoder.training
    encoder.eval()  # BatchNorm's running statistics: h of an image depends on it alone
    hs, zs = [], []
    starts = range(0, len(images), batch_size)
    for start in tqdm(starts, desc="features", disable=not progress, leave=False):
        x = normalize(images[start:start + batch_size].to(device))
        if size is not None and x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = encoder(x)
        h, z = out if isinstance(out, tuple) else (out, None)  # SimCLR returns (h, z)
        hs.append(h.float().cpu())
        if with_z:
            if z is None:
                raise ValueError("with_z=True needs a SimCLR model (f and g), not an encoder.")
            zs.append(z.float().cpu())
    encoder.train(was_training)
    return (torch.cat(hs), torch.cat(zs)) if with_z else torch.cat(hs)


# ----------------------------------------------------------------------------- kNN

@torch.no_grad()
def nearest_neighbours(bank: torch.Tensor, queries: torch.Tensor, k: int,
                       chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """The k most cosine-similar bank rows of every query: (similarities, indices), (Q, k)."""
    bank = F.normalize(bank.float(), dim=1)
    k = min(k, len(bank))
    sims, idxs = [], []
    for start in range(0, len(queries), chunk):
        q = F.normalize(queries[start:start + chunk].float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)  # (q, k), most similar first
        sims.append(sim)
        idxs.append(idx)
    return torch.cat(sims), torch.cat(idxs)


@torch.no_grad()
def knn_predict(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor,
                num_classes: int, k: int = 200, t: float = 0.1, chunk: int = 1024) -> torch.Tensor:
    """Weighted kNN on cosine similarity (Wu et al., 2018, as used by the SimCLR literature).

    Each of the k nearest bank features votes for its class with weight exp(sim / t).

    Args:
        bank: (M, D) features of labelled images; bank_labels (M,) int64.
        queries: (Q, D) features to classify.
        k: neighbours (200); t: temperature of the votes (0.1).
    Returns:
        (Q,) predicted labels.
    """
    sim, idx = nearest_neighbours(bank, queries, k, chunk)  # (Q, k) each
    votes = torch.zeros(len(queries), num_classes, device=sim.device)
    votes.scatter_add_(1, bank_labels.to(sim.device)[idx], (sim / t).exp())
    return votes.argmax(1)


def knn_accuracy(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor,
                 query_labels: torch.Tensor, k: int = 200, t: float = 0.1) -> float:
    """Top-1 accuracy (a fraction) of ``knn_predict`` on labelled queries."""
    num_classes = int(max(bank_labels.max(), query_labels.max())) + 1
    pred = knn_predict(bank, bank_labels, queries, num_classes, k, t)
    return (pred == query_labels.to(pred.device)).float().mean().item()


# ----------------------------------------------------------------------------- linear probe

class LinearProbe(nn.Module):
    """A linear classifier on standardised frozen features: logits = W (h - mean) / std + b."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, num_classes: int):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = nn.Linear(len(mean), num_classes, dtype=mean.dtype)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.linear((feats.to(self.mean.dtype) - self.mean) / self.std)  # (N, classes)


def fit_linear_probe(feats: torch.Tensor, labels: torch.Tensor, num_classes: int,
                     weight_decay: float, max_iter: int = 200,
                     init: LinearProbe | None = None) -> LinearProbe:
    """Multinomial logistic regression on standardised features, by L-BFGS.

    The paper has two linear protocols: its ImageNet linear evaluation trains the classifier
    with Nesterov-momentum SGD for 90 epochs on augmented crops (Appendix B.6), and its
    transfer experiments fit "an l2-regularized multinomial logistic regression classifier on
    features extracted from the frozen pretrained network. We used L-BFGS to optimize the
    softmax cross-entropy objective and we did not apply data augmentation" (Appendix
    B.8.1). The course follows the second: on frozen features the problem is convex, so
    L-BFGS solves it to the optimum in seconds on a CPU, with no learning rate or number of
    epochs to tune, and the penalty is the one choice left (``linear_probe``).

    Minimises mean cross-entropy + weight_decay / 2 * |W|^2 (the bias is not penalised).
    Args: feats (N, D) and labels (N,); ``init`` warm-starts from another probe's weights.
    """
    mean, std = feats.mean(0), feats.std(0).clamp_min(1e-6)  # statistics of train only
    probe = LinearProbe(mean, std, num_classes)
    if init is not None:
        probe.linear.load_state_dict(init.linear.state_dict())
    x = (feats.to(mean.dtype) - mean) / std  # standardise once, not at every iteration
    opt = torch.optim.LBFGS(probe.linear.parameters(), lr=1, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-9, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(probe.linear(x), labels)
        loss = loss + weight_decay / 2 * probe.linear.weight.square().sum()
        loss.backward()
        return loss

    with _threads_for(x.numel()):
        opt.step(closure)
    return probe.requires_grad_(False)


@torch.no_grad()
def accuracy(model: nn.Module, feats: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy (a fraction) of a classifier of features."""
    return (model(feats).argmax(1) == labels).float().mean().item()


@dataclass
class ProbeResult:
    probe: LinearProbe  # fitted on the training features with the chosen weight decay
    weight_decay: float  # the L2 penalty chosen
    selection: dict[float, float]  # weight decay -> accuracy on the selection split
    selected_on: str  # "val", "train holdout", or "none (...)" when too few labels


def linear_probe(train_feats: torch.Tensor, train_labels: torch.Tensor,
                 select_feats: torch.Tensor | None = None,
                 select_labels: torch.Tensor | None = None,
                 weight_decays: tuple[float, ...] = WEIGHT_DECAYS, holdout: float = 0.2,
                 seed: int = 0) -> ProbeResult:
    """Fit a linear probe for every weight decay and keep the best on a selection split.

    Pass the validation features as the selection split when the test split is reported.
    Without one, ``holdout`` of every class of train (never its last image) is held out to
    choose, and the chosen penalty is refit on all of train: the reported split is never used
    to choose. With one image per class nothing can be held out, and the middle of
    ``weight_decays`` is used.
    Args: train_feats (N, D), train_labels (N,); select_feats (M, D), select_labels (M,).
    """
    num_classes = int(train_labels.max()) + 1
    fit_x, fit_y, where = train_feats, train_labels, "val"
    if select_feats is None:
        held = torch.zeros(len(train_labels), dtype=torch.bool)
        held[balanced_subset(train_labels, holdout, seed)] = True
        if not held.any():
            wd = weight_decays[len(weight_decays) // 2]
            probe = fit_linear_probe(train_feats, train_labels, num_classes, wd)
            return ProbeResult(probe, wd, {}, "none (too few labels to hold any out)")
        fit_x, fit_y, where = train_feats[~held], train_labels[~held], "train holdout"
        select_feats, select_labels = train_feats[held], train_labels[held]
    probe, scores, fits = None, {}, {}
    for wd in weight_decays:  # strongest penalty first: each solution warm-starts the next
        probe = fit_linear_probe(fit_x, fit_y, num_classes, wd, init=probe)
        scores[wd], fits[wd] = accuracy(probe, select_feats, select_labels), probe
    best = max(scores, key=lambda wd: (scores[wd], wd))  # ties: the stronger penalty
    probe = fits[best]
    if where == "train holdout":
        probe = fit_linear_probe(train_feats, train_labels, num_classes, best, init=probe)
    return ProbeResult(probe, best, scores, where)


SMALL_PROBE = 2_000_000  # feature values below which a probe is fitted on one CPU thread


@contextmanager
def _threads_for(values: int):
    """A small probe's L-BFGS is a chain of tiny matrix products, which one CPU thread runs
    faster than several that wait on each other, on a busy CPU most of all; a large one (all of
    CIFAR-10's train) is faster on torch's threads. Measured figures: docs/record.md."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if values < SMALL_PROBE else threads)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- a whole model

def evaluate_model(model: nn.Module, splits: Splits, split: str = "val", k: int = 200,
                   t: float = 0.1, device: torch.device | str | None = None,
                   progress: bool = False, bf16: bool = False, size: int | None = None) -> dict:
    """kNN and linear top-1 of h and of z on ``split`` ("val" or "test"); train is the kNN
    bank and the probe's training set; f sees the images at ``size`` (``extract_features``).
    Returns a flat dict of fractions and the chosen weight decays (keys knn_top1,
    linear_top1 for h; knn_top1_z, linear_top1_z for z, only when ``model`` is a SimCLR model
    with a head, not an encoder alone)."""
    data = getattr(splits, split)
    if data is None:
        raise ValueError(f"This dataset has no {split} split; use split='val'.")
    with_z = hasattr(model, "head")
    feats = {name: extract_features(model, getattr(splits, name).images, device=device,
                                    with_z=with_z, progress=progress, bf16=bf16, size=size)
             for name in dict.fromkeys(("train", "val", split))}  # (h, z) or h per split
    feats = {name: f if with_z else (f,) for name, f in feats.items()}
    out = {}
    for i, space in enumerate(("h", "z")[:1 + with_z]):
        suffix = "" if space == "h" else "_z"
        bank, queries = feats["train"][i], feats[split][i]
        out["knn_top1" + suffix] = knn_accuracy(bank, splits.train.labels, queries,
                                                data.labels, k, t)
        select = (feats["val"][i], splits.val.labels) if split == "test" else (None, None)
        res = linear_probe(bank, splits.train.labels, *select)
        out["linear_top1" + suffix] = accuracy(res.probe, queries, data.labels)
        out["linear_weight_decay" + suffix] = res.weight_decay
    out["selected_on"] = res.selected_on
    return out


# ----------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m clr_lib.evaluate",
                            description="kNN and linear evaluation of a SimCLR checkpoint "
                            "(chapter 05); prints one JSON object.")
    parser.add_argument("checkpoint", help="RUN_DIR/checkpoint.pt (or RUN_DIR)")
    parser.add_argument("--data-dir", default=None, help="dataset folder (default: as trained)")
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help="the split to report; --split val when DIR has no test split")
    parser.add_argument("--dataset", default=None, choices=("auto", "cifar10", "folder",
                                                            "synthetic"))
    parser.add_argument("--max-per-class", type=optional_int, default=None,
                        help="training images per class (default: as trained)")
    parser.add_argument("--random-init", action="store_true", help="evaluate the checkpoint's "
                        "network with random weights instead: the floor pretraining must beat")
    parser.add_argument("--eval-size", type=optional_int, default=argparse.SUPPRESS,
                        metavar="PIXELS", help="side of the images f sees (default: the "
                        "checkpoint's eval_size; none: as they are)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 features: faster on "
                        "CUDA and AMX CPUs; accuracies can move by an image or two")
    args = parser.parse_args(argv)
    print(json.dumps(_evaluate_cli(args)))


def _evaluate_cli(args: argparse.Namespace) -> dict:
    if args.max_per_class is not None and args.max_per_class < 2:
        raise UserError(f"--max-per-class is {args.max_per_class}: give 2 or more images per "
                        "class (val holds out a share of them), or none for all")
    device = pick_device(args.device)
    state = load_checkpoint(args.checkpoint)
    model, cfg = model_from_checkpoint(state)
    size = getattr(args, "eval_size", cfg.eval_size)
    cfg = cfg.replace(eval_size=size)  # checks it before any data is read
    if args.random_init:
        torch.manual_seed(cfg.seed)
        model = build_model(cfg)
    # The checkpoint's seed, val_fraction and max_per_class give the train/val split it saw.
    splits = load_splits(cfg.replace(
        dataset=args.dataset or cfg.dataset, data_dir=args.data_dir or cfg.data_dir,
        max_per_class=cfg.max_per_class if args.max_per_class is None else args.max_per_class))
    if splits.classes != state["classes"]:
        raise DatasetError(f"the dataset's classes {splits.classes} differ from the "
                           f"checkpoint's {state['classes']}: evaluate on the data it was "
                           "trained on (--data-dir)")
    if args.split == "test" and splits.test is None:
        raise DatasetError(f"{splits.description} has no test split (an ImageFolder keeps it "
                           "in test/<class>/): report the validation split with --split val")
    for name in dict.fromkeys(("train", "val", args.split)):  # val: reported or selects
        if len(getattr(splits, name)) == 0:
            raise DatasetError(f"the {name} split of {splits.description} is empty: give "
                               "every class two images or more (val holds out a share)")
    result = evaluate_model(model.to(device), splits, args.split, cfg.knn_k, cfg.knn_t, device,
                            bf16=args.bf16, size=size)
    sizes = {name: len(d) for name, d in (("train", splits.train), ("val", splits.val),
                                          ("test", splits.test)) if d is not None}
    return dict(checkpoint=str(args.checkpoint), weights="random" if args.random_init else
                "trained", data=splits.description, split=args.split, sizes=sizes,
                num_classes=len(splits.classes), step=state.get("step"),
                eval_size=size or cfg.image_size, knn_k=cfg.knn_k,
                **{k: round(v, 4) if "top1" in k else v for k, v in result.items()})


if __name__ == "__main__":
    run(main)
