"""Optimisation: the learning-rate schedule, LARS, Muon, and the length of a time budget.

Introduced in chapter 04 (the paper's recipe) and chapter 08 (the laptop profile's). SimCLR
(Chen et al., 2020) uses "the LARS optimizer ... for all batch sizes" (Section 2.2), "with
learning rate of 4.8 (= 0.3 x BatchSize/256) and weight decay of 10^-6", and "linear warmup
for the first 10 epochs, and decay the learning rate with the cosine decay schedule without
restarts" (Section 2.3, "Default setting"). Appendix B.1 adds that with LARS a square-root
scaling, LR = 0.075 x sqrt(BatchSize), suits small batches better; the course keeps the
linear rule.

Every parameter group carries its ``peak_lr``; the training loop sets each group's ``lr``
to ``peak_lr x lr_at(step, ..., peak=1)``, so warmup and decay shape every group alike.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from clr_lib.config import SCHEDULES, Config, UserError


def peak_lr(cfg: Config) -> float:
    """The paper's linear scaling rule: LR = lr x batch_size / 256 (Section 2.3)."""
    return cfg.lr * cfg.batch_size / 256


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float,
          schedule: str = "cosine") -> float:
    """Linear warmup to ``peak``, then decay to zero at ``total_steps``: along a half cosine
    (the paper's) or a straight line (``schedule="linear"``, the laptop profile's: lower than
    the cosine in the first half, higher in the second)."""
    if schedule not in SCHEDULES:
        raise UserError(f"lr_schedule is {schedule!r}: choose one of {', '.join(SCHEDULES)}")
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        return peak * (1 - progress)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


def steps_in_budget(steps: list[int], seconds: list[float], budget_s: float) -> int:
    """The step at which a run that reached ``steps[-1]`` after ``seconds[-1]`` must stop to
    end within ``budget_s``, at its pace: the median of the seconds per step between the
    points measured. The median leaves out the odd slow stretch (a kNN check, a first step
    that warms up) whose time is spent all the same. Training and fine-tuning both use it."""
    pace = [(t1 - t0) / (s1 - s0) for s0, s1, t0, t1
            in zip(steps, steps[1:], seconds, seconds[1:]) if s1 > s0]
    if not pace:
        return steps[-1]
    per_step = sorted(pace)[len(pace) // 2]
    return steps[-1] + int(max(0.0, budget_s - seconds[-1]) / max(per_step, 1e-9))


# ----------------------------------------------------------------------------- optimisers

def param_groups(model: nn.Module, weight_decay: float, lr: float) -> list[dict]:
    """Weights of convs and linears (``decay``) decay and adapt; biases and BatchNorm
    parameters (1-d) do not, as in the paper's code."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [dict(params=[p for p in params if p.ndim > 1], weight_decay=weight_decay,
                 peak_lr=lr, lr=lr, decay=True),
            dict(params=[p for p in params if p.ndim <= 1], weight_decay=0.0, peak_lr=lr,
                 lr=lr, decay=False)]


class LARS(torch.optim.Optimizer):
    """SGD with momentum and Layer-wise Adaptive Rate Scaling (You et al., 2017).

    For the groups with ``decay`` (weight matrices), the update direction d = grad + wd * w
    is scaled by the trust ratio eta * ||w|| / ||d|| before the momentum; as in the paper's
    code, biases and BatchNorm parameters (``decay=False``) get neither weight decay nor the
    trust ratio, plain momentum SGD.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      eta=eta, decay=True))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if group["decay"]:
                    d = d.add(p, alpha=group["weight_decay"])
                    w_norm, d_norm = p.norm(), d.norm()
                    trust = torch.where((w_norm > 0) & (d_norm > 0),
                                        group["eta"] * w_norm / d_norm, torch.ones_like(w_norm))
                    d = d.mul(trust)
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(d)
                p.add_(buf, alpha=-group["lr"])


def orthogonalize(m: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """About U V^T for m = U S V^T, by ``steps`` quintic Newton-Schulz iterations in bfloat16
    (Jordan et al., 2024); returns float32 of m's shape. Five push every singular value into
    about 0.7-1.2; three leave the weakest directions of a near-square matrix short."""
    x = m.bfloat16()
    wide = x.shape[0] <= x.shape[1]
    x = x if wide else x.T  # iterate on the wide form: x @ x.T is the small product
    x = x / (x.norm() + 1e-7)  # singular values <= 1, where the iteration converges
    a, b, c = 3.4445, -4.7750, 2.0315
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x if wide else x.T).float()


class Muon(torch.optim.Optimizer):
    """Muon (Jordan et al., 2024) for weight matrices: a conv's (C_out, C_in, k, k) weights
    are read as a (C_out, C_in k k) matrix W, and its Nesterov momentum M = U S V^T is
    replaced by U V^T, so that a step moves W as far along every direction M points in:

        W <- W (1 - lr wd) - lr sqrt(max(1, rows / cols)) U V^T

    Not in the paper (2020); chapter 08 teaches it. ``torch.optim.Muon`` takes 2-d parameters
    only, hence this class for conv weights. Pair it with AdamW for the 1-d parameters
    (``MuonWithAdamW``)."""

    def __init__(self, params, lr: float = 0.05, momentum: float = 0.95,
                 weight_decay: float = 0.0, ns_steps: int = 5):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      ns_steps=ns_steps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, mu = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.reshape(len(p), -1)  # (rows, cols)
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(grad))
                buf.mul_(mu).add_(grad)
                update = orthogonalize(grad.add(buf, alpha=mu), group["ns_steps"])  # Nesterov
                p.mul_(1 - lr * group["weight_decay"])
                scale = max(1.0, grad.shape[0] / grad.shape[1]) ** 0.5
                p.add_(update.view(p.shape), alpha=-lr * scale)


class MuonWithAdamW:
    """Muon for the weight matrices and ``torch.optim.AdamW`` for biases and BatchNorm,
    stepped together: one optimiser to the training loop (param_groups, zero_grad, step,
    state_dict, load_state_dict)."""

    def __init__(self, muon: Muon, adamw: torch.optim.AdamW):
        self.muon, self.adamw = muon, adamw

    @property
    def param_groups(self) -> list[dict]:
        return self.muon.param_groups + self.adamw.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def step(self) -> None:
        self.muon.step()
        self.adamw.step()

    def state_dict(self) -> dict:
        return dict(muon=self.muon.state_dict(), adamw=self.adamw.state_dict())

    def load_state_dict(self, state: dict) -> None:
        self.muon.load_state_dict(state["muon"])
        self.adamw.load_state_dict(state["adamw"])


def build_optimizer(cfg: Config, model: nn.Module):
    """The optimiser ``cfg.optimizer`` names, with the paper's parameter groups; every group
    starts at its ``peak_lr``."""
    decay, rest = param_groups(model, cfg.weight_decay, peak_lr(cfg))
    if cfg.optimizer == "lars":
        return LARS([decay, rest], lr=peak_lr(cfg), momentum=cfg.momentum)
    if cfg.optimizer == "muon":
        decay.update(lr=cfg.muon_lr, peak_lr=cfg.muon_lr)
        return MuonWithAdamW(Muon([decay], momentum=cfg.momentum, ns_steps=cfg.ns_steps),
                             torch.optim.AdamW([rest]))
    if cfg.optimizer == "sgd":
        return torch.optim.SGD([decay, rest], lr=peak_lr(cfg), momentum=cfg.momentum)
    return torch.optim.AdamW([decay, rest], lr=peak_lr(cfg))
