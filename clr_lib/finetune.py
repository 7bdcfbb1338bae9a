"""Fine-tuning f with a fraction of the labels, and the supervised baseline from scratch.

Introduced in chapter 05. Besides the linear probe on a frozen f, the paper fine-tunes the
whole network, f and a new linear layer on h, with 1% or 10% of ImageNet's labels (Section 6,
Tables 7 and B.4), in class-balanced subsets (``data.balanced_subset``). Its recipe (Appendix
B.5): "Only random cropping (with random left-to-right flipping and resizing to 224x224) is
used for preprocessing. We do not use any regularization (including weight decay)."

Two baselines use the same code, so that only the starting point differs:
    random init + ``finetune``   the same recipe from random weights: the label-fraction curve.
    ``train_supervised``         the encoder trained from scratch with all labels, with
                                 SimCLR's augmentations and the pretraining budget (epochs or
                                 minutes) of its Config: the supervised row of chapter 05.

``baselines`` trains both for a checkpoint once and saves them beside it, for chapter 05 to
load (the supervised network trains as long as the SimCLR run did, so they belong in a
terminal):

    python -m clr_lib.finetune runs/laptop            # writes supervised.pt, baselines.json
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from clr_lib.augment import SimCLRAugment, augment_batch
from clr_lib.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint, save_json
from clr_lib.cli import ArgumentParser, run
from clr_lib.config import Config, UserError
from clr_lib.data import DatasetError, ImageData, balanced_subset, load_splits
from clr_lib.device import pick_device, use_bf16
from clr_lib.evaluate import evaluate_model, extract_features
from clr_lib.models import build_encoder, build_model
from clr_lib.optim import lr_at, steps_in_budget

FINETUNE_LR = 1e-3  # AdamW, any batch size; the paper: Nesterov SGD at 0.05 x batch_size / 256


class Classifier(nn.Module):
    """f followed by a linear layer on h: images (B, 3, H, W) -> logits (B, num_classes)."""

    def __init__(self, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.fc = nn.Linear(encoder.feature_dim, num_classes)
        self.feature_dim = encoder.feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(x))  # (B, num_classes)


def finetune_augment(cfg: Config) -> SimCLRAugment:
    """Random resized crops and flips only, at the image size (paper Appendix B.5)."""
    return SimCLRAugment(size=cfg.image_size, crop_scale=tuple(cfg.crop_scale),
                         crop_ratio=tuple(cfg.crop_ratio), flip_p=cfg.flip_p, color_p=0.0,
                         gray_p=0.0)


def finetune(encoder: nn.Module, data: ImageData, steps: int | None = None, *,
             budget_minutes: float | None = None, aug: SimCLRAugment | None = None,
             lr: float = FINETUNE_LR, weight_decay: float = 0.0, batch_size: int = 256,
             seed: int = 0, device: torch.device | str | None = None, bf16: bool = False,
             progress: bool = True) -> tuple[Classifier, dict]:
    """Train a copy of f and a new linear layer on h with labels, every weight updated.

    Args:
        encoder: f (left unchanged: a copy is trained).
        data: the labelled images, e.g. ``train.subset(balanced_subset(train.labels, 0.01))``.
        steps: optimiser steps; or ``budget_minutes`` of wall clock (timed over the first steps).
        aug: default crops and flips at 32 pixels (``finetune_augment``).
        batch_size: images per step (fewer when ``data`` is smaller).
        bf16: bfloat16 autocast (CUDA, and CPUs with AMX; see ``device.use_bf16``).
    Returns:
        the classifier (in eval mode) and its history: step, loss, seconds (lists).
    """
    if (steps is None) == (budget_minutes is None):
        raise ValueError("Give finetune either steps or budget_minutes.")
    if steps is not None and steps < 1:
        raise UserError(f"fine-tuning for {steps} steps trains nothing: give 1 or more")
    device = torch.device(device) if device else pick_device()
    torch.manual_seed(seed)  # the new linear layer
    model = Classifier(copy.deepcopy(encoder), len(data.classes)).to(device).train()
    aug = aug or SimCLRAugment(color_p=0.0, gray_p=0.0)
    images, labels = data.images.to(device), data.labels.to(device)
    batch = min(batch_size, len(data))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    views_gen = torch.Generator(device=device).manual_seed(seed)
    order_gen = torch.Generator().manual_seed(seed)
    history, start = dict(step=[], loss=[], seconds=[]), time.perf_counter()
    order, step, total = torch.empty(0, dtype=torch.long), 0, steps or 10**9
    bar = tqdm(total=steps, desc="fine-tune", disable=not progress, leave=False)
    while step < total:
        if len(order) < batch:  # a new epoch: reshuffle
            order = torch.cat([order, torch.randperm(len(data), generator=order_gen)])
        idx, order = order[:batch].to(device), order[batch:]
        for g in opt.param_groups:  # cosine decay, no warmup (paper B.5: none)
            g["lr"] = lr_at(step, total, 0, lr)
        x = augment_batch(images[idx], aug, views_gen)  # (B, 3, S, S)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)  # (B, num_classes)
        loss = F.cross_entropy(logits.float(), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        for key, value in zip(history, (step, loss.item(), time.perf_counter() - start)):
            history[key].append(value)
        bar.update(1)
        if budget_minutes is not None and step == _PROBE:  # fix the length from the pace
            total = steps_in_budget([1, step], [history["seconds"][0], history["seconds"][-1]],
                                    budget_minutes * 60)
            bar.total = total
    bar.close()
    return model.eval(), history


_PROBE = 10  # steps timed before a budgeted run fixes its length


def train_supervised(cfg: Config, data: ImageData, *, progress: bool = True
                     ) -> tuple[Classifier, dict]:
    """The supervised baseline: cfg's encoder from random weights, trained with all labels,
    SimCLR's augmentations (``SimCLRAugment.from_config``), its precision (bf16 where
    pretraining uses it) and its budget: ``cfg.budget_minutes``, else ``cfg.num_epochs``
    passes over ``data``, in batches of ``cfg.pair_batch_size``. Without weight decay, as
    ``finetune``: ``cfg.weight_decay`` is tuned for the contrastive loss, where every decayed
    weight sits before a BatchNorm or z's l2-normalisation (chapter 04), unlike a
    classifier's last layer."""
    torch.manual_seed(cfg.seed)
    encoder = build_encoder(cfg.encoder, cfg.width, feature_dim=cfg.feature_dim)
    device = pick_device(cfg.device)
    batch = cfg.pair_batch_size
    steps = None if cfg.budget_minutes else cfg.num_epochs * max(1, len(data) // batch)
    return finetune(encoder, data, steps, budget_minutes=cfg.budget_minutes,
                    aug=SimCLRAugment.from_config(cfg), batch_size=batch,
                    seed=cfg.seed, device=device, bf16=use_bf16(cfg, device), progress=progress)


def supervised_classifier(cfg: Config, num_classes: int) -> Classifier:
    """The network ``train_supervised`` returns (cfg's encoder and a linear layer), with
    random weights: build one to load a saved baseline into (chapter 05)."""
    return Classifier(build_encoder(cfg.encoder, cfg.width, feature_dim=cfg.feature_dim),
                      num_classes)


@torch.no_grad()
def classifier_accuracy(model: nn.Module, data: ImageData, batch_size: int = 512,
                        size: int | None = None) -> float:
    """Top-1 accuracy (a fraction) of an image classifier on a split, in eval mode, the
    images resized to ``size`` (``extract_features``; None: as they are)."""
    logits = extract_features(model, data.images, batch_size, size=size)  # (N, num_classes)
    return (logits.argmax(1) == data.labels).float().mean().item()


BASELINES = "baselines.json"  # beside the checkpoint; supervised.pt holds the supervised network


def baselines(run_dir, data_dir: str | None = None, finetune_steps: int = 300,
              fractions: tuple[float, ...] = (0.01, 0.1, 1.0), supervised_minutes=None,
              progress: bool = True) -> dict:
    """Chapter 05's baselines for the checkpoint in ``run_dir``, trained once and saved there.

    On the split chapter 05 reports (test when the data has one, else val): kNN and linear
    top-1 of h for the network at random init and for the supervised baseline
    (``train_supervised``, cfg's budget unless ``supervised_minutes``; its network is saved
    as supervised.pt), the supervised network's own top-1, and fine-tuning SimCLR's f and a
    random f on each fraction of the labels, ``finetune_steps`` each. Returns the record that
    is written to RUN_DIR/baselines.json."""
    run_dir, start = Path(run_dir), time.perf_counter()
    state = load_checkpoint(run_dir)
    model, cfg = model_from_checkpoint(state)
    splits = load_splits(cfg.replace(data_dir=data_dir or cfg.data_dir))
    if splits.classes != state["classes"]:
        raise DatasetError(f"the data's classes differ from those of the checkpoint in "
                           f"{run_dir}: name the data it was trained on with --data-dir")
    device, report = pick_device(cfg.device), "test" if splits.test is not None else "val"
    bf16, data = use_bf16(cfg, device), getattr(splits, report)
    torch.manual_seed(cfg.seed)
    random_model = build_model(cfg)  # the same network and seed as chapter 05's random init
    sup_cfg = cfg.replace(budget_minutes=supervised_minutes or cfg.budget_minutes)
    supervised, history = train_supervised(sup_cfg, splits.train, progress=progress)
    save_checkpoint(run_dir / "supervised.pt", model=supervised.state_dict(),
                    classes=splits.classes, step=state["step"])
    table = {}
    for name, net in (("random init h", random_model), ("supervised h", supervised)):
        r = evaluate_model(net.encoder.to(device), splits, report, cfg.knn_k, cfg.knn_t, device,
                           bf16=bf16, size=cfg.eval_size)
        table[name] = {"kNN": r["knn_top1"], "linear": r["linear_top1"]}
    curves = {"SimCLR, fine-tuned": [], "from scratch": []}
    for fraction in fractions:
        subset = splits.train.subset(balanced_subset(splits.train.labels, fraction, cfg.seed))
        for name, f in (("SimCLR, fine-tuned", model.encoder),
                        ("from scratch", random_model.encoder)):
            clf, _ = finetune(f, subset, finetune_steps, aug=finetune_augment(cfg),
                              batch_size=cfg.pair_batch_size, seed=cfg.seed, device=device,
                              bf16=bf16, progress=progress)
            curves[name].append(classifier_accuracy(clf, data))
    record = dict(step=state["step"], split=report, eval_size=cfg.eval_size, table=table,
                  supervised=dict(steps=history["step"][-1],
                                  minutes=round(history["seconds"][-1] / 60, 2),
                                  own_top1=classifier_accuracy(supervised.to(device), data,
                                                               size=cfg.eval_size)),
                  fractions=list(fractions), finetune_steps=finetune_steps, curves=curves,
                  minutes=round((time.perf_counter() - start) / 60, 1))
    save_json(run_dir / BASELINES, record, indent=1)
    return record


def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m clr_lib.finetune",
                            description="Train chapter 05's baselines for a checkpoint and save "
                            "them beside it (supervised.pt, baselines.json).")
    parser.add_argument("run_dir", help="the run folder of a clr_lib.train checkpoint")
    parser.add_argument("--data-dir", default=None, help="dataset folder (default: as trained)")
    parser.add_argument("--finetune-steps", type=int, default=300,
                        help="steps of each fine-tuning run (default: 300)")
    parser.add_argument("--supervised-minutes", type=float, default=None,
                        help="budget of the supervised run (default: the SimCLR run's)")
    args = parser.parse_args(argv)
    if args.finetune_steps < 1 or (args.supervised_minutes is not None
                                   and args.supervised_minutes <= 0):
        parser.error("--finetune-steps and --supervised-minutes must be positive")
    record = baselines(args.run_dir, args.data_dir, args.finetune_steps,
                       supervised_minutes=args.supervised_minutes)
    print(json.dumps(record))


if __name__ == "__main__":
    run(main)
