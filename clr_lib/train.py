"""Pretraining SimCLR: the loop of the paper's Algorithm 1, with a time budget, a kNN monitor
and checkpoints that resume exactly.

Introduced in chapter 04. One step walks the data path:

    uint8 batch -> make_views -> x_i, x_j -> f -> h -> g -> z -> NT-Xent -> optimiser step

(with ``n_views`` V > 2, V views of each image and the NT-Xent of ``loss.nt_xent_views``).

    python -m clr_lib.train --profile laptop --budget-minutes 15 --out runs/laptop
    python -m clr_lib.train --profile laptop --out runs/laptop --resume   # continue a run
    python -m clr_lib.train --profile gpu --out runs/gpu                  # ResNet-18, 800 epochs
    torchrun --nproc_per_node 4 -m clr_lib.train --profile gpu            # 4 GPUs, same batch

Every Config field is also an option (``--temperature 0.2``, ``--crop-scale 0.2 1.0``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from clr_lib import distributed
from clr_lib.augment import SimCLRAugment, make_views
from clr_lib.checkpoint import (CHECKPOINT, load_checkpoint, restore, resumable, runs_dir,
                                save_run)
from clr_lib.cli import config_from_args, config_parser, run
from clr_lib.config import Config, UserError
from clr_lib.data import Splits, load_splits
from clr_lib.device import pick_device, use_bf16
from clr_lib.evaluate import extract_features, knn_accuracy
from clr_lib.loss import nt_xent_views
from clr_lib.models import SimCLR, build_model
from clr_lib.optim import build_optimizer, lr_at, peak_lr, steps_in_budget

# The losses are read back from the device every SYNC_EVERY steps (and after an epoch), not
# every step: on a GPU each read waits for the queue to drain. A budgeted run sets its
# length after 10 steps, then re-times its pace every RETIME_EVERY steps and after every
# epoch, since a shared CPU's pace drifts within a run.
SYNC_EVERY, FIRST_TIMING, RETIME_EVERY = 10, 10, 100


def train(cfg: Config, splits: Splits | None = None, run_dir: str | os.PathLike | None = None,
          resume: bool = False, callback: Callable[[dict], None] | None = None,
          model: SimCLR | None = None, progress: bool = True,
          apply_changes: bool = False) -> dict:
    """Pretrain SimCLR as ``cfg`` says; return the history (loss, lr, seconds, kNN top-1).

    With ``cfg.budget_minutes`` the number of steps is set from the measured pace so that
    warmup + decay end within the budget. After every epoch a checkpoint and history.json
    go to ``run_dir``; ``resume=True`` continues from there, bit for bit as if never stopped
    (same machine), and refuses a Config that differs from the run's unless
    ``apply_changes`` (then the new values apply from here on, and the history records
    them). ``callback(history)`` runs after every epoch (chapter 04's live plot). Pass
    ``model`` to train a network you hold, in place.
    """
    rank, world = distributed.init()
    device = pick_device(cfg.device) if world == 1 else distributed.rank_device()
    saved = resumable(run_dir, cfg, apply_changes) if resume else None  # before the data
    torch.manual_seed(cfg.seed)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    splits = splits or load_splits(cfg)  # training reads train (and val for the monitor)
    steps_per_epoch = len(splits.train) // cfg.batch_size
    if steps_per_epoch == 0:
        raise UserError(f"batch_size {cfg.batch_size} is larger than the {len(splits.train)} "
                        "training images: lower --batch-size, or add images")
    if len(splits.val) == 0:
        raise UserError(f"the validation split of {splits.description} is empty, and the kNN "
                        "monitor needs it: give every class two images or more")
    if saved and (saved["classes"], saved.get("train_images", len(splits.train))) != \
            (splits.classes, len(splits.train)):
        raise UserError(f"the run in {run_dir} was trained on other data ({len(saved['classes'])}"
                        f" classes, {saved.get('train_images')} images): resume on the same "
                        "data, or start a new run with another --out")
    images = splits.train.images.to(device)  # uint8 in memory, augmented a batch at a time
    model = (model or build_model(cfg)).to(device)
    net = distributed.wrap(model, device) if world > 1 else model
    if cfg.compile and device.type == "cuda":  # fuses the small ops; model keeps the weights
        net = torch.compile(net)
    aug = SimCLRAugment.from_config(cfg)  # small views first (cheap), full size at the end
    aug_full = aug.replace(size=cfg.image_size)
    optimizer = build_optimizer(cfg, model)
    rng = dict(views=torch.Generator(device=device).manual_seed(cfg.seed + rank),  # per rank
               order=torch.Generator().manual_seed(cfg.seed))  # the same batches on every rank
    local_batch = cfg.batch_size // world
    warmup, total = int(cfg.warmup_epochs * steps_per_epoch), cfg.num_epochs * steps_per_epoch
    history = dict(step=[], loss=[], lr=[], seconds=[], knn_step=[], knn_top1=[],
                   images_per_s=[], total_steps=total)
    step, elapsed = 0, 0.0
    if saved:
        step, elapsed, total, history = restore(saved, cfg, model, optimizer, rng,
                                                apply_changes, total)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(cfg, device))
    budget = (cfg.budget_minutes or 0) * 60
    bar = tqdm(total=total, initial=step, desc="SimCLR", disable=not progress or rank > 0)
    start = time.perf_counter() - elapsed
    pending, synced, full_from = [], [], None  # unread losses; (step, seconds) read back

    model.train()
    while step < total:
        epoch, t_epoch = step // steps_per_epoch, time.perf_counter()
        perm = torch.randperm(len(images), generator=rng["order"]).to(device)  # once an epoch
        for b in range(step % steps_per_epoch, steps_per_epoch):
            idx = perm[b * cfg.batch_size + rank * local_batch:][:local_batch]
            factor = lr_at(step, total, warmup, 1.0, cfg.lr_schedule)  # warmup, then decay
            full = step >= (1 - cfg.full_size_fraction) * total
            if full and full_from is None:
                full_from, synced = step, []  # full-size views from here: a slower pace
            views = make_views(images[idx], cfg.n_views, aug_full if full else aug,
                               rng["views"])  # V x (N, 3, S, S)
            with autocast:
                _, z = net(torch.cat(views))  # (VN, d_z)
            loss = nt_xent_views(z.float().chunk(cfg.n_views), cfg.temperature, world > 1,
                                 cfg.l2_normalize)
            for g in optimizer.param_groups:
                g["lr"] = g["peak_lr"] * factor
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            pending.append(loss.detach())
            for key, value in (("step", step), ("lr", peak_lr(cfg) * factor),
                               ("seconds", time.perf_counter() - start)):
                history[key].append(value)
            if step % SYNC_EVERY == 0 or step == 1 or b + 1 == steps_per_epoch or step == total:
                _read_losses(history, pending, run_dir, bar)
                synced.append((step, time.perf_counter() - start))
            since = step - (full_from or 0)
            if budget and (since == FIRST_TIMING or since % RETIME_EVERY == 0):
                total = _budget_steps(synced, budget, step, total, world, device, bar)
            if step >= total:
                break
        if pending:  # the budget ended the run between two reads
            _read_losses(history, pending, run_dir, bar)
        history["images_per_s"].append(
            (step - epoch * steps_per_epoch) * cfg.batch_size / (time.perf_counter() - t_epoch))
        if rank == 0 and cfg.eval_every and (epoch + 1) % cfg.eval_every == 0 and step < total:
            _monitor(model, splits, cfg, device, step, history)
        if budget and step < total:
            total = _budget_steps(synced, budget, step, total, world, device, bar)
        history["total_steps"] = total
        if rank == 0 and run_dir:
            save_run(run_dir, model, optimizer, rng, cfg, splits, step, history,
                     time.perf_counter() - start)
        if callback and rank == 0:
            callback(history)
    bar.close()
    if rank == 0:
        _monitor(model, splits, cfg, device, step, history)
        if run_dir:
            save_run(run_dir, model, optimizer, rng, cfg, splits, step, history,
                     time.perf_counter() - start)
    return history


def _read_losses(history: dict, pending: list, run_dir, bar) -> None:
    """Read the losses of the last steps back from the device; stop at the first that is not
    finite, before it can reach a checkpoint."""
    losses = torch.stack(pending).tolist()
    for k, loss in enumerate(losses):
        if loss != loss or abs(loss) == float("inf"):
            first, lr = history["step"][k - len(losses)], history["lr"][k - len(losses)]
            raise FloatingPointError(
                f"the loss became {loss} at step {first} (lr {lr:.3g}), and training "
                f"stopped; the last good checkpoint is in {run_dir or '(no run_dir given)'}: "
                "try a lower --lr, a higher --temperature or more --warmup-epochs")
    history["loss"] += losses
    pending.clear()
    bar.update(len(losses))
    bar.set_postfix(loss=f"{losses[-1]:.3f}", lr=f"{history['lr'][-1]:.2g}")


def _budget_steps(synced: list, budget_s: float, step: int, total: int, world: int, device,
                  bar) -> int:
    """The run's length in steps from the pace of its last (up to 200) steps at this size
    of views, measured where the losses were read back (and the device had caught up); the
    length planned so far while fewer than two such points exist (just after a resume)."""
    window = [(s, t) for s, t in synced if s > step - 200]
    if len(window) >= 2:
        total = max(step, steps_in_budget(*zip(*window), budget_s))
    if world > 1:  # every rank must stop at the same step
        total = distributed.all_min(total, device)
    bar.total = total
    bar.refresh()
    return total


def _monitor(model, splits, cfg, device, step, history) -> None:
    """kNN top-1 of h on the validation split, the training images as the bank, f seeing
    them at cfg.eval_size, in bf16 where training is."""
    bf16, size = use_bf16(cfg, device), cfg.eval_size
    bank = extract_features(model.encoder, splits.train.images, device=device, bf16=bf16,
                            size=size)
    queries = extract_features(model.encoder, splits.val.images, device=device, bf16=bf16,
                               size=size)
    acc = knn_accuracy(bank, splits.train.labels, queries, splits.val.labels, cfg.knn_k, cfg.knn_t)
    history["knn_step"].append(step)
    history["knn_top1"].append(acc)
    model.train()


def load_or_train(cfg: Config, splits: Splits, short_minutes: float = 3.0
                  ) -> tuple[dict, Path]:
    """The checkpoint chapter 04 saved for cfg's profile, ``runs/<profile>/``, if it was
    trained on these classes; else a short run trained now into
    ``runs/<profile>-short-<source>/`` (all of it in ``smoke``; otherwise ``short_minutes``,
    or cfg's budget when that is shorter). Says which happened. Returns the loaded
    checkpoint and its run folder (chapters 05-07)."""
    candidates = [runs_dir() / cfg.profile, runs_dir() / f"{cfg.profile}-short-{splits.source}"]
    for run_dir in candidates:
        if (run_dir / CHECKPOINT).is_file():
            state = load_checkpoint(run_dir)
            if state["classes"] == splits.classes:
                print(f"Loaded {run_dir / CHECKPOINT}: {state['step']} steps, "
                      f"{state.get('elapsed', 0) / 60:.1f} minutes of training.")
                return state, run_dir
            print(f"Skipped {run_dir / CHECKPOINT}: trained on other classes.")
    minutes = min(short_minutes, cfg.budget_minutes or short_minutes)
    short = cfg if cfg.profile == "smoke" else cfg.replace(budget_minutes=minutes)
    print(f"No checkpoint for these classes: training a short {cfg.profile} run now into "
          f"{candidates[1]} (chapter 04 trains the real one).")
    train(short, splits, run_dir=candidates[1])
    return load_checkpoint(candidates[1]), candidates[1]


def main(argv: list[str] | None = None) -> None:
    parser = config_parser("python -m clr_lib.train",
                           "Pretrain SimCLR (chapter 04). Every Config field is an option.")
    parser.add_argument("--out", "--run-dir", dest="out", default=None,
                        help="run folder for checkpoint.pt and history.json (runs/<profile>)")
    parser.add_argument("--epochs", dest="num_epochs", type=int, default=argparse.SUPPRESS,
                        help="same as --num-epochs")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--apply-changes", action="store_true", help="with --resume: continue "
                        "with options that differ from the run's (recorded in its history)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    out = Path(args.out) if args.out else runs_dir() / cfg.profile
    if args.apply_changes and not args.resume:
        raise UserError("--apply-changes goes with --resume: add --resume, or drop it")
    if cfg.num_epochs == 0:
        raise UserError("--epochs is 0, so nothing would train: give 1 or more")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: name a folder for the run")
    if not args.resume and (out / CHECKPOINT).exists():
        raise UserError(f"{out / CHECKPOINT} exists: add --resume to continue it, or choose "
                        "another --out")
    history = train(cfg, run_dir=out, resume=args.resume, apply_changes=args.apply_changes)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(dict(out=str(out), steps=history["step"][-1] if history["step"] else 0,
                              minutes=round(history["seconds"][-1] / 60, 2),
                              final_loss=round(history["loss"][-1], 4),
                              knn_top1_val=round(history["knn_top1"][-1], 4))))
    distributed.close()


if __name__ == "__main__":
    run(main)
