"""Checkpoints and run folders: written atomically, read with ``weights_only=True``, checked.

Introduced in chapter 04. A checkpoint is a plain dict of tensors, numbers and strings, so
``torch.load(..., weights_only=True)`` reads it without running any code from the file:
    model, optimizer   state dicts
    config             the Config as a dict (``dataclasses.asdict``)
    classes            the class names of the training set
    step, total_steps, elapsed, history, rng, torch_rng   what ``train(resume=True)`` needs
Runs live in ``runs/`` of the course checkout (``runs_dir()``): chapter 04 writes
``runs/<profile>/`` and chapters 05-07 read it from there.
"""

from __future__ import annotations

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
