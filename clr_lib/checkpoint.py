"""Checkpoints: written atomically, read with ``weights_only=True``, checked on the way in.

Introduced in chapter 04. A checkpoint is a plain dict of tensors, numbers and strings, so
``torch.load(..., weights_only=True)`` reads it without running any code from the file:
    model, optimizer   state dicts
    config             the Config as a dict (``dataclasses.asdict``)
    classes            the class names of the training set
    step, total_steps, elapsed, history, generator   what ``train(resume=True)`` needs
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from clr_lib.config import Config
from clr_lib.models import SimCLR, build_model

CHECKPOINT = "checkpoint.pt"  # the file name inside a run directory


def save_checkpoint(path: Path, **state) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves half a checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def save_json_atomic(path: Path, obj, indent: int | None = None) -> None:
    """json.dumps to a temporary file, then rename (history.json, chapter 07's cell records)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=indent) + ("\n" if indent is not None else ""))
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A checkpoint written by ``train``, loaded with ``weights_only=True`` (no code runs)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}. Train one first: "
                                "python -m clr_lib.train --run-dir DIR (it writes DIR/checkpoint.pt).")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable PyTorch checkpoint ({e}).") from e
    if not isinstance(state, dict) or not {"model", "config", "classes"} <= set(state):
        raise ValueError(f"{path} is not a clr_lib checkpoint (it needs the keys model, config "
                         "and classes); was it written by python -m clr_lib.train?")
    return state


def model_from_checkpoint(state: dict) -> tuple[SimCLR, Config]:
    """Rebuild the network and its Config from a loaded checkpoint."""
    cfg = Config.from_dict(state["config"])
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    return model, cfg
