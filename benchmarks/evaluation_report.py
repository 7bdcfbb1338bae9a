"""The numbers of chapter 05's closing note for one checkpoint, in one go. Prints a table.

    python benchmarks/evaluation_report.py runs/laptop --data-dir ../shared/data/cifar10-jpeg
    python benchmarks/evaluation_report.py runs/smoke --data-dir ../shared/data/cifar10-jpeg \\
        --finetune-steps 20                                   # a check that it runs: ~1 min

On the validation split (or --split test), with the checkpoint's own train/val split:
1. kNN and linear top-1 of h and of z, for SimCLR and for the same network at random init;
2. the supervised baseline (``finetune.train_supervised``: the encoder from scratch with all
   labels, SimCLR's augmentations and the checkpoint's budget), probed the same way, and its
   own classifier; saved to RUN_DIR/supervised.pt, the file chapter 05 reuses (1 and 2 see
   the images at the checkpoint's eval_size: the supervised encoder trains on SimCLR's views);
3. fine-tuning SimCLR's f and a random f on 1% and 10% of the labels (``--fractions``),
   class-balanced, --finetune-steps steps each (chapter 05's laptop value: 300).
Expect, for a 15-minute laptop checkpoint on 2 CPU cores: ~15 minutes of supervised training,
then ~10 more. Every line is printed as soon as it is measured.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a clone, uninstalled
from clr_lib.checkpoint import (load_checkpoint, model_from_checkpoint,  # noqa: E402
                                save_checkpoint)
from clr_lib.config import pick_device  # noqa: E402
from clr_lib.data import load_dataset  # noqa: E402
from clr_lib.evaluate import balanced_subset, evaluate_model  # noqa: E402
from clr_lib.finetune import (classifier_accuracy, finetune, finetune_augment,  # noqa: E402
                              supervised_classifier, train_supervised)
from clr_lib.models import build_model  # noqa: E402
from clr_lib.train import use_bf16  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1])
    args = parser.parse_args()
    run_dir, t_start = Path(args.run_dir), time.perf_counter()
    state = load_checkpoint(run_dir)
    model, cfg = model_from_checkpoint(state)
    splits = load_dataset(cfg.dataset, args.data_dir or cfg.data_dir, image_size=cfg.image_size,
                          max_per_class=cfg.max_per_class, val_fraction=cfg.val_fraction,
                          seed=cfg.seed, download=cfg.download)
    if splits.classes != state["classes"]:
        sys.exit("error: the data's classes differ from the checkpoint's; pass --data-dir.")
    device = pick_device(cfg.device)
    bf16 = use_bf16(cfg, device)
    data = getattr(splits, args.split)
    print(f"{run_dir}: {state['step']} steps, {state.get('elapsed', 0) / 60:.1f} min, "
          f"{cfg.encoder} width {cfg.width}; {splits.description}; report {args.split} "
          f"({len(data)} images), bf16 {bf16}", flush=True)

    def row(name: str, values: dict) -> None:
        cells = "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in values.items())
        print(f"| {name:28s} | {cells} |   [{(time.perf_counter() - t_start) / 60:.1f} min]",
              flush=True)

    def knn_linear(net, z: bool) -> dict:
        r = evaluate_model(net.to(device), splits, args.split, cfg.knn_k, cfg.knn_t, device,
                           bf16=bf16, size=cfg.eval_size)
        keys = ["knn_top1", "linear_top1"] + (["knn_top1_z", "linear_top1_z"] if z else [])
        return {k: r[k] for k in keys}

    row("SimCLR (h, and z)", knn_linear(model, z=True))
    torch.manual_seed(cfg.seed)
    random_model = build_model(cfg)
    row("random init (h, and z)", knn_linear(random_model, z=True))

    sup_path = run_dir / "supervised.pt"
    sup = torch.load(sup_path, weights_only=True) if sup_path.is_file() else None
    supervised = supervised_classifier(cfg, len(splits.classes))
    if sup is not None and sup["classes"] == splits.classes and sup["step"] == state["step"]:
        supervised.load_state_dict(sup["model"])
        how = "loaded"
    else:
        supervised, history = train_supervised(cfg, splits.train, progress=False)
        save_checkpoint(sup_path, model=supervised.state_dict(), classes=splits.classes,
                        step=state["step"])
        how = f"{len(history['step'])} steps, {history['seconds'][-1] / 60:.1f} min"
    own = classifier_accuracy(supervised.to(device), data, size=cfg.eval_size)  # SimCLR's views
    row(f"supervised h ({how})", {**knn_linear(supervised.encoder, z=False), "own classifier": own})

    for fraction in args.fractions:
        subset = splits.train.subset(balanced_subset(splits.train.labels, fraction, cfg.seed))
        accs = {}
        for name, f in (("SimCLR", model.encoder), ("from scratch", random_model.encoder)):
            clf, _ = finetune(f, subset, args.finetune_steps, aug=finetune_augment(cfg),
                              batch_size=cfg.pair_batch_size, seed=cfg.seed, device=device,
                              bf16=bf16, progress=False)
            accs[name] = classifier_accuracy(clf, data)
        row(f"fine-tuned, {fraction:.0%} labels ({len(subset)})", accs)


if __name__ == "__main__":
    main()
