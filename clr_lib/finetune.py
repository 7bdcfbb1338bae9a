"""Fine-tuning f with a fraction of the labels, and the supervised baseline from scratch.

Introduced in chapter 05. Besides the linear probe on a frozen f, the paper fine-tunes the
whole network, f and a new linear layer on h, with 1% or 10% of ImageNet's labels (Section 6,
Table 7), in class-balanced subsets (``evaluate.balanced_subset``). Its recipe (Appendix
B.5): "Only random cropping (with random left-to-right flipping and resizing to 224x224) is
used for preprocessing. We do not use any regularization (including weight decay)."

Two baselines use the same code, so that only the starting point differs:
    random init + ``finetune``   the same recipe from random weights: the label-fraction curve.
    ``train_supervised``         the encoder trained from scratch with all labels, with
                                 SimCLR's augmentations and the pretraining budget (epochs or
                                 minutes) of its Config: the supervised row of chapter 05.
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from clr_lib.augment import SimCLRAugment, augment_batch
from clr_lib.config import Config, pick_device
from clr_lib.data import ImageData
from clr_lib.evaluate import extract_features
from clr_lib.models import build_encoder
from clr_lib.train import lr_at, use_bf16

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
        bf16: bfloat16 autocast (CUDA, and CPUs with AMX; see ``train.use_bf16``).
    Returns:
        the classifier (in eval mode) and its history: step, loss, seconds (lists).
    """
    if (steps is None) == (budget_minutes is None):
        raise ValueError("Give finetune either steps or budget_minutes.")
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
            pace = (history["seconds"][-1] - history["seconds"][0]) / (_PROBE - 1)
            total = step + int(max(0.0, budget_minutes * 60 - history["seconds"][-1]) / pace)
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
