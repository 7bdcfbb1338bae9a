"""The paper's four findings as small grids of short runs (chapter 07).

    python -m clr_lib.experiments augmentations --profile laptop --out results/
    python -m clr_lib.experiments all --profile laptop --out results/     # the four, in order

Each finding is a grid of cells defined below; a cell is one short run and writes one JSON
file, OUT/FINDING/CELL.json, with its metrics, its config, the seconds it took, the seed and
the machine. A cell whose file exists is skipped, so a stopped grid resumes where it was.

- augmentations (paper Fig. 5, Table 1): SimCLR with two ops of T (or one), and colour
  strength s; scored by the kNN top-1 of h.
- head (Fig. 8): no head, a linear or a nonlinear g; the linear top-1 of h and of z.
- temperature (Table 5): tau, with and without l2-normalisation; the linear top-1 of h and
  the contrastive accuracy (the pretext task's top-1).
- batch_size (Fig. 9): batch size x epochs, SimCLR (linear top-1 of h) and the same encoder
  trained with labels (its own top-1).

Every cell trains on the same class-balanced subset of train (``GRIDS[profile]``: 10,000
images in the laptop profile) and is scored on the whole validation split; the test split is
never read. The paper trains ResNet-50 for 100+ epochs on ImageNet; a laptop cell trains a
small ConvNet for one to two minutes, so read the directions, not the numbers. Each record
keeps the seconds its cell took and the machine (chapter 07 sums them).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from clr_lib.augment import SimCLRAugment, two_views
from clr_lib.checkpoint import save_json
from clr_lib.cli import ArgumentParser, run
from clr_lib.config import PROFILES, Config, UserError, default_profile, get_config
from clr_lib.data import Splits, balanced_subset, load_splits
from clr_lib.device import pick_device, use_bf16
from clr_lib.evaluate import evaluate_model
from clr_lib.finetune import classifier_accuracy, train_supervised
from clr_lib.loss import positive_index
from clr_lib.models import build_model
from clr_lib.train import train

FINDINGS = ("augmentations", "head", "temperature", "batch_size")

# The grid's base: a profile, the training subset, and the lengths of the cells. A cell's
# length is in epochs over the subset (steps = epochs x images / batch size).
GRIDS = {
    # base: values pinned for the grid, so that results/ stays reproducible when the laptop
    # profile is retuned (the grid was run with tau 0.5, the paper's crop scale, h of 8w,
    # AdamW with weight decay 1e-4 and the paper's two views of 256 images a step at lr 2e-3,
    # decayed along the cosine, evaluated on 32-pixel images)
    "laptop": dict(base=dict(temperature=0.5, crop_scale=(0.08, 1.0), feature_dim=None,
                             optimizer="adamw", momentum=0.9, weight_decay=1e-4, n_views=2,
                             batch_size=256, lr=2e-3, warmup_epochs=1.0, lr_schedule="cosine",
                             ns_steps=5, eval_size=None),
                   train_images=10_000,
                   epochs=dict(augmentations=6, head=8, temperature=8),
                   batch_epochs=(2, 8), batches=(64, 256, 1024), head_seeds=(0, 1, 2),
                   ops=("crop", "color", "gray", "blur", "flip", "rotate", "cutout"),
                   strengths=(0.0, 0.5, 1.0),
                   taus_l2=(0.05, 0.1, 0.2, 0.5, 1.0), taus_dot=(1.0, 10.0, 100.0)),
    "smoke": dict(train_images=300, epochs=dict(augmentations=1, head=1, temperature=1),
                  batch_epochs=(1, 2), batches=(64,), head_seeds=(0,),
                  ops=("crop", "color"), strengths=(0.5,),
                  taus_l2=(0.1, 0.5), taus_dot=(10.0,)),
}
# the same cells with the gpu profile's own values (ResNet-18, LARS, tau 0.5, the paper's crops)
GRIDS["gpu"] = dict(GRIDS["laptop"], base={})

# Every op of the augmentations grid off, then each op's setting when it is on.
ALL_OFF = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, color_p=0.0,
               gray_p=0.0, blur=False, rotate_p=0.0, cutout_p=0.0)
OPS = dict(crop=dict(crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3)), color=dict(color_p=0.8),
           gray=dict(gray_p=0.2), blur=dict(blur=True), flip=dict(flip_p=0.5),
           rotate=dict(rotate_p=0.5), cutout=dict(cutout_p=0.5))

# What the paper reports (ResNet-50 on ImageNet, linear evaluation), for direction only.
PAPER = dict(
    augmentations="Fig. 5: no single op learns good representations; crop + colour is the "
                  "composition that stands out (Sec. 3.1). Tab. 1: stronger colour "
                  "distortion helps SimCLR (s = 1/8: 59.6%, 1/4: 61.0%, 1/2: 62.6%, 1: 63.2%) "
                  "but not supervised training (77.0, 76.7, 76.5, 75.7%).",
    head="Fig. 8: a nonlinear head beats a linear one by ~3 points and no head by >10 points; "
         "h (before g) beats z = g(h) by >10 points.",
    temperature="Tab. 5 (linear top-1 / contrastive acc.): l2-normalised, tau 0.05: 59.7 / "
                "90.5, 0.1: 64.4 / 87.8, 0.5: 60.7 / 68.2, 1: 58.0 / 59.1; dot product, tau "
                "10: 57.2 / 91.7, 100: 57.0 / 92.1. Without normalisation the pretext task is "
                "solved better but the representation is worse.",
    batch_size="Fig. 9: bigger batches help most when training is short (batch 256 -> 8192 "
               "gains several points at 100 epochs); with longer training the gap closes. "
               "Sec. 5.2: contrastive learning gains more from bigger batches and longer "
               "training than supervised learning.",
)


@dataclass
class Cell:
    """One run of a grid: a name, the config changes, what is trained and what measured."""
    finding: str
    name: str  # the file name: OUT/finding/name.json
    overrides: dict = field(default_factory=dict)  # Config fields changed from the base
    kind: str = "simclr"  # simclr | supervised
    measure: tuple[str, ...] = ("knn",)  # knn | linear | contrastive


def grid(finding: str, profile: str = "laptop") -> list[Cell]:
    """The cells of one finding for a profile's grid (``GRIDS[profile]``)."""
    g = _grid_settings(profile)
    if finding == "augmentations":
        ep, ops = g["epochs"]["augmentations"], g["ops"]
        pairs = [(a, b) for i, a in enumerate(ops) for b in ops[i:]]
        cells = [Cell(finding, a if a == b else f"{a}+{b}",
                      {**ALL_OFF, **OPS[a], **OPS[b], "num_epochs": ep}) for a, b in pairs]
        return ([Cell(finding, "random_init", {"num_epochs": 0})] + cells  # the floor: no training
                + [Cell(finding, f"strength_{s:g}", {"color_strength": s, "num_epochs": ep})
                   for s in g["strengths"]])  # the profile's full T, s varied
    if finding == "head":
        ep, both = g["epochs"]["head"], ("linear",)
        cells = [Cell(finding, f"{head}", {"head": head, "num_epochs": ep}, measure=both)
                 for head in ("none", "linear")]
        return cells + [Cell(finding, f"nonlinear_seed{s}", {"head": "nonlinear", "seed": s,
                                                             "num_epochs": ep}, measure=both)
                        for s in g["head_seeds"]]
    if finding == "temperature":
        ep, m = g["epochs"]["temperature"], ("linear", "contrastive")
        return ([Cell(finding, f"l2_tau{t:g}", {"temperature": t, "num_epochs": ep}, measure=m)
                 for t in g["taus_l2"]]
                + [Cell(finding, f"dot_tau{t:g}", {"temperature": t, "l2_normalize": False,
                                                   "num_epochs": ep}, measure=m)
                   for t in g["taus_dot"]])
    if finding == "batch_size":
        return [Cell(finding, f"{kind}_b{b}_e{e}", {"batch_size": b, "num_epochs": e},
                     kind=kind, measure=("linear",) if kind == "simclr" else ("top1",))
                for kind in ("simclr", "supervised") for b in g["batches"]
                for e in g["batch_epochs"]]
    raise UserError(f"unknown finding {finding!r}: choose one of {', '.join(FINDINGS)}, or all")


def _grid_settings(profile: str) -> dict:
    if profile not in GRIDS:
        raise UserError(f"there is no grid for profile {profile!r}: choose one of "
                        f"{', '.join(sorted(GRIDS))}")
    return GRIDS[profile]


def base_config(profile: str, **overrides) -> Config:
    """The profile's config for short fixed-length cells: the grid's pinned ``base`` values,
    no time budget, no kNN monitor during training, one warmup epoch at most."""
    pinned = _grid_settings(profile).get("base", {})
    cfg = get_config(profile, budget_minutes=None, eval_every=0, **{**pinned, **overrides})
    return cfg.replace(warmup_epochs=min(cfg.warmup_epochs, 1.0))


def grid_splits(profile: str, data_dir: str | None = None) -> Splits:
    """The splits every cell of a profile uses: train cut to a class-balanced subset of
    ``GRIDS[profile]["train_images"]``, the whole validation split, no test split."""
    cfg = base_config(profile, **({"data_dir": data_dir} if data_dir else {}))
    splits = load_splits(cfg)
    n = _grid_settings(profile)["train_images"]
    train_set = splits.train
    if n and n < len(train_set):
        train_set = train_set.subset(balanced_subset(train_set.labels, n / len(train_set),
                                                     seed=cfg.seed))
    return Splits(train_set, splits.val, None, splits.source,
                  f"{splits.description}; grid: {len(train_set)} train, {len(splits.val)} val")


# ----------------------------------------------------------------------------- one cell

def run_cell(cell: Cell, profile: str, splits: Splits, data_dir: str | None = None) -> dict:
    """Train one cell and measure it on the validation split; returns the record that
    ``run_grid`` writes as the cell's JSON file."""
    cfg = base_config(profile, **({"data_dir": data_dir} if data_dir else {}),
                      **cell.overrides)
    device = pick_device(cfg.device)
    bf16 = use_bf16(cfg, device)
    t0 = time.perf_counter()
    metrics, diverged = {}, None
    try:
        if cell.kind == "supervised":
            model, _ = train_supervised(cfg, splits.train, progress=False)
            t1 = time.perf_counter()
            metrics["top1"] = classifier_accuracy(model, splits.val)
        else:
            model = build_model(cfg)
            history = train(cfg, splits, model=model, progress=False)  # trains model in place
            t1 = time.perf_counter()
            model.eval()
            if "knn" in cell.measure:  # the loop's last kNN check: bank train, queries val
                metrics["knn_top1"] = history["knn_top1"][-1]
            if "linear" in cell.measure:
                out = evaluate_model(model, splits, "val", cfg.knn_k, cfg.knn_t, device,
                                     bf16=bf16, size=cfg.eval_size)
                metrics.update({k: out[k] for k in ("knn_top1", "linear_top1", "knn_top1_z",
                                                    "linear_top1_z")})
            if "contrastive" in cell.measure:
                metrics["contrastive_top1"] = contrastive_accuracy(model, splits.val.images,
                                                                   cfg, device)
            metrics["final_loss"] = history["loss"][-1] if history["loss"] else None
    except FloatingPointError as exc:  # a diverged run is a result too
        t1, diverged = time.perf_counter(), str(exc)
    return dict(finding=cell.finding, cell=cell.name, kind=cell.kind, profile=profile,
                seed=cfg.seed, overrides=_jsonable(cell.overrides),
                steps=cfg.num_epochs * (len(splits.train) // cfg.batch_size),
                train_images=len(splits.train), val_images=len(splits.val),
                metrics=metrics, diverged=diverged,
                seconds=dict(train=round(t1 - t0, 1), measure=round(time.perf_counter() - t1, 1)),
                finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), machine=machine(),
                config=_jsonable(dataclasses.asdict(cfg)))


@torch.no_grad()
def contrastive_accuracy(model: torch.nn.Module, images: torch.Tensor, cfg: Config,
                         device, seed: int = 0) -> float:
    """The pretext task's top-1 (paper Table 5, "contrastive acc."): over up to 8 batches of
    ``cfg.batch_size`` images, two views each, the share of the 2N anchors whose most similar
    other view (cosine, or dot product without ``cfg.l2_normalize``) is their positive."""
    gen = torch.Generator(device=device).manual_seed(seed)
    aug, hits, count = SimCLRAugment.from_config(cfg), 0, 0
    n = min(cfg.batch_size, len(images))
    for start in range(0, min(len(images), 8 * n) - n + 1, n):  # at most 8 batches
        x_i, x_j = two_views(images[start:start + n].to(device), aug, gen)
        z = model(torch.cat([x_i, x_j]))[1].float()  # (2N, d)
        if cfg.l2_normalize:
            z = F.normalize(z, dim=1)
        sim = z @ z.T
        sim.fill_diagonal_(float("-inf"))  # a view is not its own candidate
        positive = positive_index(n, 2, z.device)[:, 0]  # row k pairs with k +- n
        hits += (sim.argmax(1) == positive).sum().item()
        count += 2 * n
    return hits / count


def machine() -> dict:
    """Where a cell ran: processor, cores, threads, torch, device."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    device = pick_device()
    return dict(cpu=cpu, cores=os.cpu_count(), torch_threads=torch.get_num_threads(),
                torch=torch.__version__, device=str(device),
                gpu=torch.cuda.get_device_name() if device.type == "cuda" else None,
                python=platform.python_version())


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return [_jsonable(v) for v in obj]
    return obj


# ----------------------------------------------------------------------------- a grid

def cell_path(out: str | os.PathLike, cell: Cell) -> Path:
    return Path(out) / cell.finding / f"{cell.name}.json"


def run_grid(finding: str, profile: str = "laptop", out: str | os.PathLike = "results",
             data_dir: str | None = None, progress: bool = True) -> list[dict]:
    """Run every cell of a finding that has no JSON file in ``out`` yet; return all records.

    A finished cell is skipped if its file was made by the same cell (profile and config
    changes); a file from another grid stops the run with a clear error, so results of two
    profiles are never mixed in one folder."""
    cells = grid(finding, profile)
    to_run = [c for c in cells if not cell_path(out, c).exists()]
    splits = grid_splits(profile, data_dir) if to_run else None  # a bad folder stops here
    records, bar = [], tqdm(cells, desc=finding, disable=not progress)
    for cell in bar:
        path = cell_path(out, cell)
        if path.exists():
            records.append(_check_record(path, cell, profile))
            continue
        bar.set_postfix_str(cell.name)
        record = run_cell(cell, profile, splits, data_dir)
        save_json(path, record, indent=1)  # a killed run leaves no half-written cell
        records.append(record)
    return records


def _check_record(path: Path, cell: Cell, profile: str) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not a readable cell record ({exc}): delete it to rerun "
                        "that cell") from None
    if record.get("profile") != profile or record.get("overrides") != _jsonable(cell.overrides):
        raise UserError(f"{path} was made by another grid (profile {record.get('profile')!r}, "
                        f"changes {record.get('overrides')}), not by this cell (profile "
                        f"{profile!r}): use another --out, or delete the file to rerun it")
    now = _jsonable(dataclasses.asdict(base_config(profile, **cell.overrides)))
    then = _jsonable(dataclasses.asdict(Config.from_dict(record.get("config", {}))))
    changed = sorted(k for k in now.keys() - _MACHINE_FIELDS if then[k] != now[k])
    if changed:
        raise UserError(f"{path} was made with other settings of {changed} than this cell has "
                        "now (the profile or grid changed since): use another --out, or "
                        "delete the file to rerun it")
    return record


_MACHINE_FIELDS = {"data_dir", "device", "num_threads", "download"}  # not part of a cell


def load_results(out: str | os.PathLike, finding: str) -> dict[str, dict]:
    """The records of a finding in ``out``, by cell name ({} when none)."""
    folder = Path(out) / finding
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


# ----------------------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m clr_lib.experiments",
                            description="Run the grids of chapter 07: the paper's four "
                            "findings at small scale. Finished cells are skipped.")
    parser.add_argument("finding", choices=FINDINGS + ("all",))
    parser.add_argument("--profile", choices=PROFILES, default=None,
                        help="default: $CLR_PROFILE, else gpu with CUDA and laptop without")
    parser.add_argument("--out", default="results", help="folder of the JSON files")
    parser.add_argument("--data-dir", default=None, help="CIFAR-10 or an ImageFolder root")
    args = parser.parse_args(argv)
    for finding in FINDINGS if args.finding == "all" else (args.finding,):
        t0 = time.perf_counter()
        records = run_grid(finding, args.profile or default_profile(), args.out, args.data_dir)
        cpu_min = sum(r["seconds"]["train"] + r["seconds"]["measure"] for r in records) / 60
        print(json.dumps(dict(finding=finding, cells=len(records), out=str(args.out),
                              minutes_now=round((time.perf_counter() - t0) / 60, 1),
                              minutes_all_cells=round(cpu_min, 1))), flush=True)


if __name__ == "__main__":
    run(main)
