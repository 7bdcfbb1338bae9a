"""Pretraining SimCLR: the loop, LARS and Muon, warmup + cosine (or linear) decay, time budgets,
checkpoints, torchrun.

Introduced in chapter 04. One step walks the data path of the paper's Algorithm 1:

    uint8 batch -> two_views -> x_i, x_j -> f -> h -> g -> z -> NT-Xent -> optimiser step

(with ``n_views`` V > 2, V views of each image and the NT-Xent of ``loss.nt_xent_views``).

    python -m clr_lib.train --profile laptop --budget-minutes 15 --out runs/laptop
    python -m clr_lib.train --profile gpu --out runs/gpu            # ResNet-18, 800 epochs
    torchrun --nproc_per_node 4 -m clr_lib.train --profile gpu      # 4 GPUs, same global batch
    python -m clr_lib.train --profile laptop --out runs/laptop --resume   # continue a run

Every Config field is also an option (``--temperature 0.2``, ``--crop-scale 0.2 1.0``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from clr_lib.augment import SimCLRAugment, make_views
from clr_lib.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint, save_json_atomic
from clr_lib.config import Config, get_config, pick_device
from clr_lib.data import Splits, load_splits
from clr_lib.evaluate import check_eval_size, extract_features, knn_accuracy
from clr_lib.loss import nt_xent_views
from clr_lib.models import SimCLR, build_model

# ----------------------------------------------------------------------------- optimisation

class LARS(torch.optim.Optimizer):
    """SGD with momentum and Layer-wise Adaptive Rate Scaling (You et al., 2017).

    The paper: "we use LARS optimizer for all batch sizes" (Section B.1); as in its code, the
    groups with ``lars=False`` (biases and BatchNorm) get neither weight decay nor the
    trust-ratio adaptation. For the others, the update direction d = grad + wd * w is scaled
    by eta * ||w|| / ||d|| before the momentum.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad.add(p, alpha=group["weight_decay"]) if group["lars"] else p.grad
                if group["lars"]:
                    w_norm, d_norm = p.norm(), d.norm()
                    trust = torch.where((w_norm > 0) & (d_norm > 0),
                                        group["eta"] * w_norm / d_norm, torch.ones_like(w_norm))
                    d = d.mul(trust)
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(d)
                p.add_(buf, alpha=-group["lr"])


class Muon(torch.optim.Optimizer):
    """Muon (Jordan et al., 2024) for the weight matrices, AdamW for biases and BatchNorm.

    Not in the paper (2020): the laptop profile uses it because in the same 15 minutes it
    learns more than AdamW (about a point of kNN accuracy; config.py has the figures). For
    each weight matrix W (a conv's (C_out, C_in, 3, 3) read as (C_out, 9 C_in)), its Nesterov
    momentum M is replaced by the nearest semi-orthogonal matrix, U V^T of M = U S V^T, so
    that the step moves W by the same amount along every direction M points in, the rare
    ones as much as the dominant ones:

        W <- W (1 - lr wd) - lr sqrt(max(1, rows / cols)) U V^T

    U V^T comes from ``ns_steps`` Newton-Schulz iterations in bfloat16 (``orthogonalize``;
    Jordan et al. use five, the laptop profile three): a few matrix products, no SVD. The
    groups with ``muon=False`` (1-d parameters) take plain AdamW steps (betas 0.9, 0.999) at
    the schedule's learning rate; the matrices' learning rate is that times ``muon_lr / lr``,
    so warmup and decay shape both.
    """

    def __init__(self, params, lr: float, muon_lr: float = 0.05, momentum: float = 0.95,
                 weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, ns_steps: int = 5):
        super().__init__(params, dict(lr=lr, lr_ratio=muon_lr / lr, momentum=momentum,
                                      weight_decay=weight_decay, betas=betas, eps=eps,
                                      muon=True, ns_steps=ns_steps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    (self._muon if group["muon"] else self._adamw)(p, group)

    def _muon(self, p: torch.Tensor, group: dict) -> None:
        lr, mu = group["lr"] * group["lr_ratio"], group["momentum"]
        grad = p.grad.reshape(len(p), -1)  # (rows, cols)
        buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(grad))
        buf.mul_(mu).add_(grad)
        steps = group.get("ns_steps", 5)  # a checkpoint saved before the option had 5
        update = orthogonalize(grad.add(buf, alpha=mu), steps)  # Nesterov momentum
        p.mul_(1 - lr * group["weight_decay"])
        p.add_(update.view(p.shape), alpha=-lr * max(1.0, grad.shape[0] / grad.shape[1]) ** 0.5)

    def _adamw(self, p: torch.Tensor, group: dict) -> None:
        state, (b1, b2) = self.state[p], group["betas"]
        if not state:
            state.update(step=torch.zeros(()), exp_avg=torch.zeros_like(p),
                         exp_avg_sq=torch.zeros_like(p))
        state["step"] += 1
        t = state["step"].item()
        state["exp_avg"].lerp_(p.grad, 1 - b1)
        state["exp_avg_sq"].mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
        denom = (state["exp_avg_sq"] / (1 - b2 ** t)).sqrt_().add_(group["eps"])
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - b1 ** t))


def orthogonalize(m: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """About U V^T for m = U S V^T by ``steps`` quintic Newton-Schulz iterations of Muon, in
    bfloat16; returns float32 of m's shape. Five push every singular value to 0.7-1.2; three
    do that too where m's singular values are not too small, but leave the weakest directions
    of a near-square matrix short (a random 1024 x 1152 matrix: 0.08-1.2 after three)."""
    x = m.bfloat16()
    wide = x.shape[0] <= x.shape[1]
    x = x if wide else x.T  # iterate on the wide form: x @ x.T is the small product
    x = x / (x.norm() + 1e-7)  # singular values <= 1, where the iteration converges
    a, b, c = 3.4445, -4.7750, 2.0315
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x if wide else x.T).float()


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weights of convs and linears decay; biases and BatchNorm parameters (1-d) do not."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [dict(params=decay, weight_decay=weight_decay, lars=True),
            dict(params=rest, weight_decay=0.0, lars=False)]


def peak_lr(cfg: Config) -> float:
    """The linear scaling rule of the paper: LR = lr x batch_size / 256 (Section B.1)."""
    return cfg.lr * cfg.batch_size / 256


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    groups, lr = param_groups(model, cfg.weight_decay), peak_lr(cfg)
    if cfg.optimizer == "adamw":
        for g in groups:
            g.pop("lars")
        return torch.optim.AdamW(groups, lr=lr)
    if cfg.optimizer == "sgd":
        for g in groups:
            g.pop("lars")
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum)
    if cfg.optimizer == "lars":
        return LARS(groups, lr=lr, momentum=cfg.momentum)
    if cfg.optimizer == "muon":
        for g in groups:
            g["muon"] = g.pop("lars")
        return Muon(groups, lr=lr, muon_lr=cfg.muon_lr, momentum=cfg.momentum,
                    ns_steps=cfg.ns_steps)
    raise ValueError(f"Unknown optimizer {cfg.optimizer!r}: choose 'adamw', 'sgd', 'lars' or "
                     "'muon'.")


SCHEDULES = ("cosine", "linear")


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float,
          schedule: str = "cosine") -> float:
    """Linear warmup to ``peak``, then decay to zero at ``total_steps``: along a half cosine
    (the paper's) or a straight line (``schedule="linear"``: lower than the cosine in the
    first half, higher in the second; the laptop profile's, config.py has the figures)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"Unknown lr_schedule {schedule!r}: choose one of {SCHEDULES}.")
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        return peak * (1 - progress)
    return peak * 0.5 * (1 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- the loop

def train(cfg: Config, splits: Splits | None = None, run_dir: str | os.PathLike | None = None,
          resume: bool = False, callback: Callable[[dict], None] | None = None,
          model: SimCLR | None = None, progress: bool = True) -> dict:
    """Pretrain SimCLR as ``cfg`` says; return the history (loss, lr, throughput, kNN).

    With ``cfg.budget_minutes`` the loop times its first steps and sets the number of steps
    so that warmup + decay ends within the budget (re-estimated every 100 steps and after
    every epoch).
    After every epoch a checkpoint and history.json go to ``run_dir``; ``resume=True``
    continues from there, bit for bit as if never stopped (same seed, same machine).
    ``callback(history)`` runs after every epoch (chapter 04 draws its live plot there).
    Pass ``model`` to train a network you hold (in place); by default one is built from cfg.
    """
    rank, world = _init_distributed()
    device = pick_device(cfg.device) if world == 1 else _rank_device()
    torch.manual_seed(cfg.seed)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    splits = splits or load_splits(cfg)  # training reads train (and val for the monitor) only
    images = splits.train.images.to(device)  # uint8 in memory: augmented a batch at a time
    model = (model or build_model(cfg)).to(device)
    net = _wrap_distributed(model, device) if world > 1 else model
    if cfg.compile and device.type == "cuda":  # fuses the small ops; model keeps the weights
        net = torch.compile(net)
    aug = SimCLRAugment.from_config(cfg)  # small views first (cheap), full size at the end
    aug_full = aug.replace(size=cfg.image_size)
    optimizer = build_optimizer(cfg, model)
    rng = dict(views=torch.Generator(device=device).manual_seed(cfg.seed + rank),  # per rank
               order=torch.Generator().manual_seed(cfg.seed))  # same batches on every rank
    local_batch, steps_per_epoch = cfg.batch_size // world, len(images) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {cfg.batch_size} is larger than the {len(images)} "
                         "training images; lower --batch-size.")
    if not (isinstance(cfg.n_views, int) and cfg.n_views >= 2):
        raise ValueError(f"n_views must be a whole number >= 2 (views of each image per step; "
                         f"the paper uses 2), got {cfg.n_views!r}.")
    if cfg.lr_schedule not in SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {SCHEDULES}, got {cfg.lr_schedule!r}.")
    if cfg.optimizer == "muon" and not (isinstance(cfg.ns_steps, int) and cfg.ns_steps >= 1):
        raise ValueError(f"ns_steps must be a whole number >= 1 (Newton-Schulz iterations of "
                         f"Muon; 3-5 work), got {cfg.ns_steps!r}.")
    check_eval_size(cfg.eval_size)  # the kNN monitor's, checked before the first step
    warmup, total = int(cfg.warmup_epochs * steps_per_epoch), cfg.num_epochs * steps_per_epoch
    history = dict(step=[], loss=[], lr=[], seconds=[], knn_step=[], knn_top1=[],
                   images_per_s=[], total_steps=total)
    step, elapsed, run_dir = 0, 0.0, Path(run_dir) if run_dir else None
    full_from = 0  # step where the views grew to full size (cfg.full_size_fraction); 0: not yet
    if resume:  # a budgeted run keeps its length; an epoch-based one may be extended
        step, elapsed, saved_total, history = _resume(run_dir, model, optimizer, rng, cfg)
        total = saved_total if cfg.budget_minutes else total
    autocast, budget = _autocast(cfg, device), (cfg.budget_minutes or 0) * 60
    bar = tqdm(total=total, initial=step, desc="SimCLR", disable=not progress or rank > 0)
    start = time.perf_counter() - elapsed

    model.train()
    while step < total:
        epoch, t_epoch = step // steps_per_epoch, time.perf_counter()
        perm = torch.randperm(len(images), generator=rng["order"])
        for b in range(step % steps_per_epoch, steps_per_epoch):
            idx = perm[b * cfg.batch_size + rank * local_batch:][:local_batch].to(device)
            lr = lr_at(step, total, warmup, peak_lr(cfg), cfg.lr_schedule)
            full = step >= (1 - cfg.full_size_fraction) * total
            full_from = step if full and not full_from else full_from
            t = aug_full if full else aug
            views = make_views(images[idx], cfg.n_views, t, rng["views"])  # V x (N, 3, S, S)
            with autocast:
                h, z = net(torch.cat(views))  # (VN, d_h), (VN, d_z)
            z_views = z.float().chunk(cfg.n_views)  # (z_i, z_j) for the paper's V = 2
            loss = nt_xent_views(z_views, cfg.temperature, world > 1, cfg.l2_normalize)
            _stop_if_not_finite(loss, step, lr, run_dir)
            for g in optimizer.param_groups:
                g["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            _log(history, step, loss.item(), lr, time.perf_counter() - start, bar)
            since = step - full_from  # steps at this size of views
            if budget and (since == _FIRST_TIMING or since % _RETIME_EVERY == 0):
                total = _steps_in_budget(history, budget, step, world, bar, since=full_from)
            if step >= total:
                break
        history["images_per_s"].append(
            (step - epoch * steps_per_epoch) * cfg.batch_size / (time.perf_counter() - t_epoch))
        if rank == 0 and cfg.eval_every and (epoch + 1) % cfg.eval_every == 0 and step < total:
            _monitor(model, splits, cfg, device, step, history)
        if budget and step < total:
            total = _steps_in_budget(history, budget, step, world, bar, since=full_from)
        history["total_steps"] = total
        if rank == 0 and run_dir:
            _save(run_dir, model, optimizer, rng, cfg, splits, step, total, history, start)
        if callback and rank == 0:
            callback(history)
    bar.close()
    if rank == 0:
        _monitor(model, splits, cfg, device, step, history)
        if run_dir:
            _save(run_dir, model, optimizer, rng, cfg, splits, step, total, history, start)
    return history


# A budgeted run sets its length after 10 steps, then again every 100 steps and after every
# epoch (its kNN check takes time too): this shared CPU's pace drifts within a run (laptop:
# 10 steps once planned 7,240 where 4,457 fitted; re-timed only every epoch of 703 steps, a
# run ended 50 s past its 15 minutes).
_FIRST_TIMING, _RETIME_EVERY = 10, 100


def _log(history: dict, step: int, loss: float, lr: float, seconds: float, bar) -> None:
    for key, value in zip(("step", "loss", "lr", "seconds"), (step, loss, lr, seconds)):
        history[key].append(value)
    bar.update(1)
    if step % 10 == 0:
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2g}")


def _stop_if_not_finite(loss: torch.Tensor, step: int, lr: float, run_dir) -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"The loss became {loss.item()} at step {step} (lr {lr:.3g}). Training stopped; "
            f"the last good checkpoint is in {run_dir or '(no run_dir given)'}. Try a lower "
            "--lr, a higher --temperature or more --warmup-epochs, then --resume or restart.")


def _steps_in_budget(history: dict, budget_s: float, step: int, world: int, bar=None,
                     since: int = 0) -> int:
    """Steps that fit in the budget, from the median time of the last (up to 200) steps
    after step ``since`` (where the views grew to full size: those steps are slower): the
    first step (one-off warm-up costs) and a kNN monitor between two steps do not count
    towards the pace, though the time they took is spent."""
    secs = torch.tensor(history["seconds"][max(0, since - 1, step - 201):step],
                        dtype=torch.float64)
    pace = (secs.diff().median() if len(secs) > 1 else secs[0]).item()  # seconds per step
    estimate = step + int(max(0.0, budget_s - secs[-1]) / pace)
    if world > 1:  # every rank must stop at the same step
        t = torch.tensor([estimate], device=_rank_device())
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        estimate = int(t.item())
    if bar is not None:
        bar.total = max(step, estimate)
        bar.refresh()
    return max(step, estimate)


def _monitor(model, splits, cfg, device, step, history) -> None:
    """kNN top-1 of h on the validation split, the training images as the bank, f seeing
    them at cfg.eval_size; in bf16 where training is, as chapter 05 evaluates (2-core AMX
    CPU, laptop profile: ~30 s instead of ~70 s in float32; kNN of one checkpoint 67.40% vs
    67.28% in float32)."""
    bf16, size = use_bf16(cfg, device), cfg.eval_size
    bank = extract_features(model.encoder, splits.train.images, device=device, bf16=bf16,
                            size=size)
    queries = extract_features(model.encoder, splits.val.images, device=device, bf16=bf16,
                               size=size)
    acc = knn_accuracy(bank, splits.train.labels, queries, splits.val.labels, cfg.knn_k, cfg.knn_t)
    history["knn_step"].append(step)
    history["knn_top1"].append(acc)
    model.train()


def _save(run_dir, model, optimizer, rng, cfg, splits, step, total, history, start) -> None:
    save_checkpoint(Path(run_dir) / CHECKPOINT, model=model.state_dict(),
                    optimizer=optimizer.state_dict(), config=dataclasses.asdict(cfg),
                    classes=splits.classes, step=step, total_steps=total,
                    elapsed=time.perf_counter() - start, history=history,
                    rng={k: g.get_state() for k, g in rng.items()},
                    torch_rng=torch.get_rng_state())
    save_json_atomic(Path(run_dir) / "history.json", history)


def _resume(run_dir, model, optimizer, rng, cfg):
    if run_dir is None:
        raise ValueError("resume=True needs the run_dir of the run to continue.")
    state = load_checkpoint(run_dir)
    saved = Config.from_dict(state["config"])
    keys = ("encoder", "width", "feature_dim", "head")  # what decides the weights' shapes
    made = [f"{k}={getattr(saved, k)}" for k in keys]
    asked = [f"{k}={getattr(cfg, k)}" for k in keys]
    if made != asked:
        raise ValueError(f"The checkpoint in {run_dir} was made with {', '.join(made)}, not the "
                         f"{', '.join(asked)} asked for; use the same profile and options, or "
                         "another --out.")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    for k, g in rng.items():
        g.set_state(state["rng"][k])
    torch.set_rng_state(state["torch_rng"])
    return state["step"], state["elapsed"], state["total_steps"], state["history"]


def use_bf16(cfg: Config, device: torch.device) -> bool:
    """bf16 autocast on CUDA (the paper trains in bf16 on TPUs), and on CPUs with AMX tiles,
    where oneDNN runs bf16 convolutions 2-3x faster than float32 (measured on a 2-core Xeon:
    ConvNet width 32, 32x32 views, 204 -> 587 images/s). Other CPUs stay in float32."""
    if cfg.bf16 is not None:
        return cfg.bf16
    if device.type == "cuda":
        return True
    return device.type == "cpu" and torch.cpu._is_amx_tile_supported()


def _autocast(cfg: Config, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(cfg, device))


# ----------------------------------------------------------------------------- torchrun

def _init_distributed() -> tuple[int, int]:
    """(rank, world size); starts the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _rank_device() -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def _wrap_distributed(model: nn.Module, device: torch.device) -> nn.Module:
    """Global BatchNorm across processes, as the paper's (Section B.1), and DDP."""
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model) if device.type == "cuda" else model
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


# ----------------------------------------------------------------------------- CLI

def _parse_bool(text: str) -> bool:
    if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() in ("true", "1", "yes")


def _option(annotation: str) -> dict:
    """argparse keywords for a Config field annotated e.g. 'int | None' or 'tuple[float, float]'."""
    base = annotation.split("|")[0].strip()
    if base.startswith("tuple"):
        return dict(nargs=2, type=float)
    parse = {"int": int, "float": float, "bool": _parse_bool, "str": str}[base]
    if "None" in annotation:  # "none" switches an optional field off
        return dict(type=lambda text: None if text.lower() == "none" else parse(text))
    return dict(type=parse)


def config_parser(description: str) -> argparse.ArgumentParser:
    """--profile, plus one option per Config field (--batch-size 512, --crop-scale 0.2 1)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--profile", choices=("smoke", "laptop", "gpu"), default=None)
    for f in dataclasses.fields(Config):
        if f.name != "profile":
            parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name,
                                default=argparse.SUPPRESS, metavar=f.name.upper(),
                                **_option(str(f.type)))
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    fields = {f.name for f in dataclasses.fields(Config)} - {"profile"}
    overrides = {k: tuple(v) if isinstance(v, list) else v
                 for k, v in vars(args).items() if k in fields}
    return get_config(args.profile, **overrides)


def main(argv: list[str] | None = None) -> None:
    parser = config_parser("Pretrain SimCLR (chapter 04). Every Config field is an option.")
    parser.add_argument("--out", "--run-dir", dest="out", default=None,
                        help="run folder for checkpoint.pt and history.json (runs/<profile>)")
    parser.add_argument("--epochs", dest="num_epochs", type=int, default=argparse.SUPPRESS,
                        help="same as --num-epochs")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    out = Path(args.out or f"runs/{cfg.profile}")
    if not args.resume and (out / CHECKPOINT).exists():
        parser.error(f"{out / CHECKPOINT} exists: add --resume to continue it, or choose "
                     "another --out.")
    history = train(cfg, run_dir=out, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(dict(out=str(out), steps=history["step"][-1] if history["step"] else 0,
                              minutes=round(history["seconds"][-1] / 60, 2),
                              final_loss=round(history["loss"][-1], 4),
                              knn_top1_val=round(history["knn_top1"][-1], 4))))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
