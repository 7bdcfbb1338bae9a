"""Checkpoints and run folders: written atomically, read with ``weights_only=True``, checked.

Introduced in chapter 04. A checkpoint is a plain dict of tensors, numbers and strings, so
``torch.load(..., weights_only=True)`` reads it without running any code from the file:
    model, optimizer   state dicts
    config             the Config as a dict (``dataclasses.asdict``)
    classes            the class names of the training set
    step, total_steps, elapsed, history, rng, torch_rng   what ``train(resume=True)`` needs
``save_run`` writes one after every epoch; ``resumable`` checks that a Config may continue it
(the fields that set the weights' shapes, the data or its order may not change), and
``restore`` loads it back into the run. Runs live in ``runs/`` of the course checkout
(``runs_dir()``): chapter 04 writes ``runs/<profile>/`` and chapters 05-08 read it there.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from pathlib import Path

import torch

from clr_lib.config import Config, UserError
from clr_lib.data import atomic_write, project_dir
from clr_lib.models import SimCLR, build_model

CHECKPOINT = "checkpoint.pt"  # the file name inside a run folder


class CheckpointError(UserError):
    """A file is missing or is not a checkpoint this course wrote; the message says what to do."""


def runs_dir() -> Path:
    """Where runs are saved: ``$CLR_RUNS_DIR``, else ``runs/`` in the course checkout (the
    folder of pyproject.toml, else the working directory)."""
    return Path(os.environ.get("CLR_RUNS_DIR") or project_dir() / "runs")


def save_checkpoint(path: str | os.PathLike, **state) -> None:
    """``torch.save(state)``, atomically: a crash never leaves half a checkpoint."""
    atomic_write(path, lambda f: torch.save(state, f))


def save_json(path: str | os.PathLike, obj, indent: int | None = None) -> None:
    """JSON, atomically (history.json, chapter 07's cell records)."""
    text = json.dumps(obj, indent=indent) + ("\n" if indent is not None else "")
    atomic_write(path, lambda f: f.write(text.encode()))


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint written by ``train`` (a file, or its run folder), loaded with
    ``weights_only=True``: no code in the file runs."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"there is no checkpoint at {path}: train one first with "
                              "python -m clr_lib.train --out DIR (it writes DIR/checkpoint.pt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many kinds for a file that is not its own
        if isinstance(e, pickle.UnpicklingError) and "Unsupported global" in str(e):
            raise CheckpointError(f"{path} holds objects a clr_lib checkpoint never holds, "
                                  "which torch.load could only read by running code from the "
                                  "file: load only checkpoint.pt files written by python -m "
                                  "clr_lib.train") from None  # and never retry without it
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (torch.load cannot read "
                              "it): pass the checkpoint.pt of a run folder") from None
    if not isinstance(state, dict) or not {"model", "config", "classes"} <= set(state):
        raise CheckpointError(f"{path} is a PyTorch file but not a clr_lib checkpoint (it "
                              "lacks model, config or classes): pass the checkpoint.pt that "
                              "python -m clr_lib.train wrote")
    return state


def model_from_checkpoint(state: dict) -> tuple[SimCLR, Config]:
    """Rebuild the network and its Config from a loaded checkpoint."""
    cfg = Config.from_dict(state["config"])
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    return model, cfg


# ----------------------------------------------------------------------------- a run's state

def save_run(run_dir, model, optimizer, rng: dict, cfg: Config, splits, step: int,
             history: dict, elapsed: float) -> None:
    """Everything ``train(resume=True)`` needs to continue a run bit for bit, in
    RUN_DIR/checkpoint.pt, and the history as RUN_DIR/history.json (both atomic)."""
    save_checkpoint(Path(run_dir) / CHECKPOINT, model=model.state_dict(),
                    optimizer=optimizer.state_dict(), config=dataclasses.asdict(cfg),
                    classes=splits.classes, train_images=len(splits.train), step=step,
                    total_steps=history["total_steps"], elapsed=elapsed, history=history,
                    rng={k: g.get_state() for k, g in rng.items()},
                    torch_rng=torch.get_rng_state())
    save_json(Path(run_dir) / "history.json", history)


# Fields a resumed run may not change: they set the weights' shapes, the data and its order,
# or the run's length. FREE ones may change freely; any other needs apply_changes=True.
FIXED_ON_RESUME = ("profile", "encoder", "width", "feature_dim", "head", "proj_hidden_dim",
                   "proj_dim", "dataset", "image_size", "max_per_class", "val_fraction",
                   "seed", "batch_size", "n_views", "optimizer", "budget_minutes")
FREE_ON_RESUME = ("num_epochs", "eval_every", "device", "num_threads", "data_dir",
                  "download", "compile")


def resumable(run_dir, cfg: Config, apply_changes: bool = False) -> dict:
    """The checkpoint in ``run_dir``, once ``cfg`` is known to allow continuing it (see
    FIXED_ON_RESUME); ``state["changed"]`` names the fields that differ: {name: [then, now]}."""
    if run_dir is None:
        raise UserError("resume=True needs the run_dir of the run to continue: pass run_dir")
    if not (Path(run_dir) / CHECKPOINT).is_file():
        raise CheckpointError(f"there is no run to resume in {run_dir}: drop --resume to "
                              "start one there, or name the run's folder with --out")
    state = load_checkpoint(run_dir)
    then, now = dataclasses.asdict(Config.from_dict(state["config"])), dataclasses.asdict(cfg)
    changed = [k for k in now if then[k] != now[k] and k not in FREE_ON_RESUME]
    fixed = [k for k in changed if k in FIXED_ON_RESUME]
    said = ", ".join(f"{k} {then[k]!r} -> {now[k]!r}" for k in (fixed or changed))
    if fixed:
        raise UserError(f"the run in {run_dir} cannot continue with other {said}: these set "
                        "the weights' shapes, the data or the run's length; resume with the "
                        "run's own values (and its --profile), or start a new run with "
                        "another --out")
    if changed and not apply_changes:
        raise UserError(f"the run in {run_dir} was made with other values ({said}): resume "
                        "with the run's own options, start a new run with another --out, or "
                        "add --apply-changes to continue with the new values (the history "
                        "records them)")
    state["changed"] = {k: [then[k], now[k]] for k in changed}
    return state


def restore(state: dict, cfg: Config, model, optimizer, rng: dict, apply_changes: bool,
            total: int) -> tuple[int, float, int, dict]:
    """Load a ``resumable`` checkpoint's weights, optimiser, random streams and history into
    a run; returns (step, elapsed seconds, total steps, history)."""
    fresh = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
    except (KeyError, ValueError, RuntimeError) as e:  # another layout of weights or state
        raise CheckpointError(f"the checkpoint's weights or optimiser state do not fit this "
                              f"version of clr_lib ({type(e).__name__}): start a new run with "
                              "another --out") from None
    history = state["history"]
    if apply_changes and state["changed"]:  # the Config's values, not the checkpoint's
        for group, values in zip(optimizer.param_groups, fresh):
            group.update(values)
        history.setdefault("changes", []).append(dict(step=state["step"],
                                                      changes=state["changed"]))
    for k, g in rng.items():
        g.set_state(state["rng"][k])
    torch.set_rng_state(state["torch_rng"])
    # a budgeted run keeps its length; an epoch-based one may be extended
    total = state["total_steps"] if cfg.budget_minutes else total
    return state["step"], state["elapsed"], total, history
