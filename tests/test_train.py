"""clr_lib.train: the loop (schedule, budget, losses read back, NaN stop), checkpoints that
resume bit for bit, what a resume refuses, and two processes under torchrun. The optimisers
and the schedule themselves are tested in test_optim.py, the command lines' errors in
test_cli.py."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from clr_lib import optim as O
from clr_lib import train as T
from clr_lib.checkpoint import CHECKPOINT, CheckpointError, load_checkpoint, model_from_checkpoint
from clr_lib.config import UserError, get_config
from clr_lib.data import load_dataset
from clr_lib.models import build_model

STEPS_PER_EPOCH = 4  # 140 training images of the synthetic set at 16 per class, batch 32


def tiny_cfg(**kw):
    base = dict(dataset="synthetic", max_per_class=16, batch_size=32, width=8, num_epochs=2,
                knn_k=10)
    return get_config("smoke", **{**base, **kw})


@pytest.fixture(scope="module")
def splits():
    s = load_dataset("synthetic", max_per_class=16)
    assert len(s.train) // 32 == STEPS_PER_EPOCH
    return s


def files(folder):
    """Every file under folder with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- the loop

def test_the_run_follows_the_schedule_it_is_given(splits, monkeypatch):
    """Every group's lr is its peak_lr x the schedule: Muon's matrices at muon_lr, AdamW's
    1-d parameters at lr x batch / 256, a linear decay from the first step (no warmup)."""
    seen = []

    def spying(cfg, model):
        opt = O.build_optimizer(cfg, model)
        real = opt.step
        opt.step = lambda: seen.append([g["lr"] for g in opt.param_groups]) or real()
        return opt
    monkeypatch.setattr(T, "build_optimizer", spying)
    cfg = tiny_cfg(num_epochs=2, warmup_epochs=0.0, lr_schedule="linear", optimizer="muon",
                   lr=0.004, muon_lr=0.02)
    history = T.train(cfg, splits, progress=False)
    total = 2 * STEPS_PER_EPOCH
    assert history["total_steps"] == total and history["step"] == list(range(1, total + 1))
    adamw_peak = 0.004 * 32 / 256
    assert history["lr"] == pytest.approx([adamw_peak * (1 - s / total) for s in range(total)])
    assert [len(lrs) for lrs in seen] == [2] * total  # Muon's group, then AdamW's
    assert [lrs[0] for lrs in seen] == pytest.approx([0.02 * (1 - s / total)
                                                      for s in range(total)])
    assert [lrs[1] for lrs in seen] == pytest.approx([adamw_peak * (1 - s / total)
                                                      for s in range(total)])


def test_muon_takes_the_newton_schulz_iterations_it_is_given(splits, monkeypatch):
    seen = []
    real = O.orthogonalize
    monkeypatch.setattr(O, "orthogonalize", lambda m, steps=5: seen.append(steps) or real(m, steps))
    cfg = tiny_cfg(num_epochs=1, optimizer="muon", ns_steps=3)
    T.train(cfg, splits, progress=False)
    matrices = sum(p.ndim > 1 for p in build_model(cfg).parameters())
    assert seen == [3] * (STEPS_PER_EPOCH * matrices)  # every matrix, every step, 3 iterations


def test_muon_trains_and_resumes_exactly(tmp_path, splits):
    cfg = tiny_cfg(optimizer="muon", momentum=0.95, weight_decay=0.05)
    unbroken = T.train(cfg, splits, run_dir=tmp_path / "a", progress=False)
    assert all(math.isfinite(x) for x in unbroken["loss"])

    class Stop(Exception):
        pass

    def stop(history):
        raise Stop  # after the first epoch's checkpoint, as a kill would

    with pytest.raises(Stop):
        T.train(cfg, splits, run_dir=tmp_path / "b", callback=stop, progress=False)
    assert load_checkpoint(tmp_path / "b")["step"] == STEPS_PER_EPOCH
    T.train(cfg, splits, run_dir=tmp_path / "b", resume=True, progress=False)
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert a["step"] == b["step"] == 2 * STEPS_PER_EPOCH
    assert a["history"]["loss"] == b["history"]["loss"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_a_budgeted_run_sets_its_length_after_10_steps_then_every_100_and_every_epoch(
        splits, monkeypatch):
    timed = []

    def budget_steps(synced, budget_s, step, total, world, device, bar):
        timed.append((step, [s for s, _ in synced]))
        assert budget_s == 60.0 and world == 1
        return 250  # as if 250 steps fitted in the budget

    monkeypatch.setattr(T, "_budget_steps", budget_steps)
    small = load_dataset("synthetic", max_per_class=16, image_size=16)  # 250 cheap steps
    cfg = tiny_cfg(budget_minutes=1.0, num_epochs=100, batch_size=8, image_size=16)
    history = T.train(cfg, small, progress=False)
    per_epoch = 140 // 8  # 17
    assert history["step"][-1] == 250 and history["total_steps"] == 250
    assert [s for s, _ in timed] == sorted([10, 100, 200] + list(range(per_epoch, 250, per_epoch)))
    # timed from the steps whose losses were read back: 1 and 10, then also 17 (an epoch's end)
    assert timed[0] == (10, [1, 10]) and timed[1] == (17, [1, 10, 17])


def test_losses_are_read_back_every_10_steps_and_at_the_end_of_every_epoch(monkeypatch):
    splits = load_dataset("synthetic", max_per_class=32)  # 288 training images
    reads = []
    real = T._read_losses

    def spying(history, pending, run_dir, bar):
        reads.append((history["step"][-1], len(pending)))
        real(history, pending, run_dir, bar)
    monkeypatch.setattr(T, "_read_losses", spying)
    history = T.train(tiny_cfg(max_per_class=32, batch_size=16, num_epochs=2), splits,
                      progress=False)
    # 18 steps an epoch: step 1, every 10th, and the ends of the epochs (18, 36)
    assert reads == [(1, 1), (10, 9), (18, 8), (20, 2), (30, 10), (36, 6)]
    assert len(history["loss"]) == len(history["step"]) == 36
    assert all(math.isfinite(x) for x in history["loss"])


def test_training_runs_checkpoints_and_resumes(tmp_path, splits):
    cfg = tiny_cfg()
    history = T.train(cfg, splits, run_dir=tmp_path, progress=False)
    assert history["step"][-1] == 2 * STEPS_PER_EPOCH
    assert all(math.isfinite(x) for x in history["loss"]) and len(history["knn_top1"]) == 1
    state = load_checkpoint(tmp_path / CHECKPOINT)
    model, loaded_cfg = model_from_checkpoint(state)
    assert loaded_cfg == cfg and state["classes"] == splits.classes
    assert state["train_images"] == len(splits.train) == 140
    assert json.loads((tmp_path / "history.json").read_text())["loss"] == history["loss"]

    more = T.train(cfg.replace(num_epochs=3), splits, run_dir=tmp_path, resume=True,
                   progress=False)
    assert more["step"][-1] == 3 * STEPS_PER_EPOCH
    assert more["loss"][:len(history["loss"])] == history["loss"]


def test_loss_falls_over_a_short_run(splits):
    history = T.train(tiny_cfg(num_epochs=4, lr=3e-3), splits, progress=False)
    first, last = history["loss"][:3], history["loss"][-3:]
    assert sum(last) / 3 < sum(first) / 3


def test_more_views_per_image_train_on_every_view(splits, monkeypatch):
    seen = []
    real = T.nt_xent_views
    monkeypatch.setattr(T, "nt_xent_views",
                        lambda z, *a: seen.append([tuple(v.shape) for v in z]) or real(z, *a))
    history = T.train(tiny_cfg(num_epochs=1, n_views=4), splits, progress=False)
    assert seen == [[(32, 128)] * 4] * STEPS_PER_EPOCH  # 4 views of the 32 images, z of 128
    assert len(history["loss"]) == STEPS_PER_EPOCH and math.isfinite(history["loss"][-1])


@pytest.mark.parametrize("bf16", [False, True])
def test_knn_monitor_runs_in_the_precision_of_training(splits, monkeypatch, bf16):
    seen = []
    real = T.extract_features

    def recording(*args, **kwargs):
        seen.append((kwargs.get("bf16", False), kwargs.get("size")))
        return real(*args, **kwargs)
    monkeypatch.setattr(T, "extract_features", recording)
    history = T.train(tiny_cfg(num_epochs=1, bf16=bf16), splits, progress=False)
    assert seen == [(bf16, None)] * 2  # bank, queries
    hits = history["knn_top1"][0] * len(splits.val)  # a share of the 20 validation images
    assert history["knn_step"] == [STEPS_PER_EPOCH] and hits == pytest.approx(round(hits))
    seen.clear()
    T.train(tiny_cfg(num_epochs=1, bf16=bf16, eval_size=24), splits, progress=False)
    assert seen == [(bf16, 24)] * 2  # f sees the images at the configured size


@pytest.mark.parametrize("bad", [0, 4, 28.5, "28"])
def test_a_bad_eval_size_stops_before_the_first_step(bad):
    # the Config refuses it, so no run (nor data loading) can start with it
    with pytest.raises(UserError, match=f"^eval_size is {bad!r}: it takes a whole number >= 8"):
        tiny_cfg(eval_size=bad)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, splits, monkeypatch):
    cfg = tiny_cfg(num_epochs=3)
    calls = {"n": 0}
    real = T.nt_xent_views

    def breaks_in_epoch_two(views, temperature, distributed=False, normalize=True):
        calls["n"] += 1
        loss = real(views, temperature, distributed, normalize)
        return loss * float("nan") if calls["n"] > STEPS_PER_EPOCH else loss
    monkeypatch.setattr(T, "nt_xent_views", breaks_in_epoch_two)
    with pytest.raises(FloatingPointError, match=f"^the loss became nan at step "
                       f"{STEPS_PER_EPOCH + 1} .*last good checkpoint is in {tmp_path}: try "):
        T.train(cfg, splits, run_dir=tmp_path, progress=False)
    state = load_checkpoint(tmp_path)
    assert state["step"] == STEPS_PER_EPOCH
    assert all(math.isfinite(x) for x in state["history"]["loss"])
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert json.loads((tmp_path / "history.json").read_text())["step"][-1] == STEPS_PER_EPOCH


# ----------------------------------------------------------------------------- resuming

@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory, splits):
    run = tmp_path_factory.mktemp("run")
    T.train(tiny_cfg(num_epochs=1), splits, run_dir=run, progress=False)
    return run


@pytest.mark.parametrize("field, value, old", [
    ("width", 16, 8), ("feature_dim", 128, None), ("proj_dim", 64, 128),
    ("proj_hidden_dim", 32, None), ("head", "linear", "nonlinear"),  # the weights' shapes
    ("seed", 1, 0), ("batch_size", 16, 32), ("n_views", 4, 2),  # the data and its order
    ("optimizer", "sgd", "adamw"), ("encoder", "resnet18", "convnet"),
    ("image_size", 24, 32), ("max_per_class", 8, 16), ("val_fraction", 0.2, 0.1),
    ("budget_minutes", 1.0, None)])
def test_resume_refuses_fields_that_set_shapes_data_or_order(one_epoch_run, splits, field,
                                                             value, old):
    before = files(one_epoch_run)
    cfg = tiny_cfg(num_epochs=2, **{field: value})
    with pytest.raises(UserError, match=f"cannot continue with other {field} {old!r} -> "
                                        f"{value!r}: .*another --out"):
        T.train(cfg, splits, run_dir=one_epoch_run, resume=True, apply_changes=True,
                progress=False)
    assert files(one_epoch_run) == before


def test_resume_refuses_a_changed_hyperparameter_unless_told_to_apply_it(one_epoch_run, splits,
                                                                         tmp_path):
    before = files(one_epoch_run)
    cfg = tiny_cfg(num_epochs=2, lr=0.01, temperature=0.2)  # num_epochs may change freely
    with pytest.raises(UserError, match=r"made with other values \(temperature 0.5 -> 0.2, "
                                        r"lr 0.002 -> 0.01\): .*--apply-changes"):
        T.train(cfg, splits, run_dir=one_epoch_run, resume=True, progress=False)
    assert files(one_epoch_run) == before

    run = tmp_path / "run"
    shutil.copytree(one_epoch_run, run)
    history = T.train(cfg, splits, run_dir=run, resume=True, apply_changes=True,
                      progress=False)
    assert history["changes"] == [dict(step=STEPS_PER_EPOCH,
                                       changes=dict(temperature=[0.5, 0.2], lr=[0.002, 0.01]))]
    assert history["step"][-1] == 2 * STEPS_PER_EPOCH
    # step 5 of 8 (no warmup, cosine): the new peak 0.01 x 32 / 256 at half the cosine
    assert history["lr"][STEPS_PER_EPOCH] == pytest.approx(0.01 * 32 / 256 * 0.5)
    state = load_checkpoint(run)
    assert [g["peak_lr"] for g in state["optimizer"]["param_groups"]] == \
        pytest.approx([0.00125, 0.00125])
    assert json.loads((run / "history.json").read_text())["changes"] == history["changes"]


def test_resume_refuses_other_data(one_epoch_run):
    more = load_dataset("synthetic", max_per_class=20)  # the same classes, 180 images
    before = files(one_epoch_run)
    with pytest.raises(UserError, match=r"was trained on other data \(10 classes, 140 images\)"):
        T.train(tiny_cfg(num_epochs=2), more, run_dir=one_epoch_run, resume=True,
                progress=False)
    assert files(one_epoch_run) == before


def test_resume_needs_a_run(tmp_path, splits):
    with pytest.raises(CheckpointError, match=f"^there is no run to resume in {tmp_path}"):
        T.train(tiny_cfg(), splits, run_dir=tmp_path, resume=True, progress=False)
    with pytest.raises(UserError, match="^resume=True needs the run_dir"):
        T.train(tiny_cfg(), splits, resume=True, progress=False)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- processes

def environment():
    env = {k: v for k, v in os.environ.items() if k != "CLR_DATA_DIR"}
    return {**env, "CLR_PROFILE": "smoke"}


def test_torchrun_two_processes(tmp_path):
    """Two CPU processes (gloo) train together and write one checkpoint."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--standalone", "-m", "clr_lib.train", "--profile", "smoke",
           "--dataset", "synthetic", "--max-per-class", "16", "--batch-size", "32",
           "--width", "8", "--knn-k", "10", "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=environment())
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["steps"] == STEPS_PER_EPOCH and (tmp_path / CHECKPOINT).is_file()
    assert math.isfinite(result["final_loss"])
    assert load_checkpoint(tmp_path)["step"] == STEPS_PER_EPOCH


def cli(out, *extra):
    return [sys.executable, "-m", "clr_lib.train", "--profile", "smoke", "--dataset", "synthetic",
            "--max-per-class", "16", "--batch-size", "32", "--width", "8", "--knn-k", "10",
            "--epochs", "4", "--seed", "3", "--out", str(out), *extra]


def test_a_killed_and_resumed_run_ends_with_the_same_weights(tmp_path):
    subprocess.run(cli(tmp_path / "unbroken"), check=True, capture_output=True, timeout=300,
                   env=environment())
    proc = subprocess.Popen(cli(tmp_path / "killed"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=environment())
    checkpoint = tmp_path / "killed" / CHECKPOINT
    while not checkpoint.exists() and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # no clean-up, no last save
    proc.wait()
    killed_at = load_checkpoint(checkpoint)["step"]
    total = load_checkpoint(tmp_path / "unbroken")["step"]
    assert 0 < killed_at < total == 4 * STEPS_PER_EPOCH, "the kill came too late"

    subprocess.run(cli(tmp_path / "killed", "--resume"), check=True, capture_output=True,
                   timeout=300, env=environment())
    a, b = load_checkpoint(tmp_path / "unbroken"), load_checkpoint(checkpoint)
    assert b["step"] == total
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["history"]["loss"] == b["history"]["loss"]
    assert json.loads((tmp_path / "killed" / "history.json").read_text())["step"][-1] == total


def test_the_budget_keeps_the_planned_length_until_two_points_are_measured():
    from tqdm import tqdm
    bar = tqdm(disable=True)
    cpu = torch.device("cpu")
    # one point (just after a resume, or after the views grew): nothing to measure a pace by
    assert T._budget_steps([(720, 7.3)], 15.0, 724, 1500, 1, cpu, bar) == 1500
    # two points 10 steps and 0.1 s apart: 7.7 s left at 0.01 s a step
    assert T._budget_steps([(710, 7.2), (720, 7.3)], 15.0, 724, 1500, 1, cpu, bar) == 1490
