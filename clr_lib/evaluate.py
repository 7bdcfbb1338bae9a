"""Evaluating a representation: features in eval mode, and the weighted kNN classifier.

Introduced in chapter 04 (the kNN monitor) and chapter 05 (evaluation). Features are always
taken with the encoder in eval mode (BatchNorm's running statistics, no augmentation): in
train mode each image's h would depend on the rest of its batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clr_lib.augment import normalize


@torch.no_grad()
def extract_features(encoder: nn.Module, images: torch.Tensor, batch_size: int = 512,
                     device: torch.device | str | None = None) -> torch.Tensor:
    """h = f(x) for every image, in eval mode, batched.

    Args:
        encoder: f, or a ``SimCLR`` model (then h, the output before the head, is returned).
        images: (N, 3, H, W) uint8 on any device.
        batch_size: images per forward pass.
        device: where to run f; default the device of its parameters.
    Returns:
        (N, feature_dim) float32 features on the CPU.
    """
    device = device or next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    feats = []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start:start + batch_size].to(device))
        out = encoder(x)
        h = out[0] if isinstance(out, tuple) else out  # SimCLR returns (h, z)
        feats.append(h.float().cpu())
    encoder.train(was_training)
    return torch.cat(feats)


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
    bank = F.normalize(bank.float(), dim=1)
    k = min(k, len(bank))
    preds = []
    for start in range(0, len(queries), chunk):
        q = F.normalize(queries[start:start + chunk].float(), dim=1)
        sim, idx = (q @ bank.T).topk(k, dim=1)  # (q, k)
        votes = torch.zeros(len(q), num_classes)
        votes.scatter_add_(1, bank_labels[idx], (sim / t).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def knn_accuracy(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor,
                 query_labels: torch.Tensor, k: int = 200, t: float = 0.1) -> float:
    """Top-1 accuracy (a fraction) of ``knn_predict`` on labelled queries."""
    num_classes = int(max(bank_labels.max(), query_labels.max())) + 1
    pred = knn_predict(bank, bank_labels, queries, num_classes, k, t)
    return (pred == query_labels).float().mean().item()
