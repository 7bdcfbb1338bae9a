import json
import signal
import time
import math
import subprocess
import sys

import pytest
import torch
from torch import nn

from clr_lib import train as T
from clr_lib.checkpoint import CHECKPOINT, load_checkpoint, model_from_checkpoint
from clr_lib.config import get_config
from clr_lib.data import load_dataset


def tiny_cfg(**kw):
    base = dict(dataset="synthetic", max_per_class=16, batch_size=32, width=8, num_epochs=2,
                knn_k=10)
    return get_config("smoke", **{**base, **kw})


@pytest.fixture(scope="module")
def splits():
    return load_dataset("synthetic", max_per_class=16)


def test_warmup_then_cosine_to_zero():
    lrs = [T.lr_at(s, 100, 10, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert T.lr_at(100, 100, 10, 1.0) == pytest.approx(0.0)
    assert T.lr_at(55, 100, 10, 1.0) == pytest.approx(0.5)


def test_warmup_then_linear_decay_to_zero():
    lrs = [T.lr_at(s, 110, 10, 1.0, "linear") for s in range(111)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.5) and lrs[110] == pytest.approx(0.0)
    steps = [a - b for a, b in zip(lrs[10:], lrs[11:])]  # a straight line: equal steps down
    assert max(steps) - min(steps) < 1e-9 and min(steps) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="choose one of \\('cosine', 'linear'\\)"):
        T.lr_at(0, 100, 10, 1.0, "step")


def test_the_run_follows_the_schedule_it_is_given(splits):
    cfg = tiny_cfg(num_epochs=2, warmup_epochs=0.0, lr_schedule="linear")
    history = T.train(cfg, splits, progress=False)
    total = history["total_steps"]
    assert history["lr"] == [T.lr_at(s, total, 0, T.peak_lr(cfg), "linear") for s in range(total)]
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        T.train(tiny_cfg(lr_schedule="cos"), splits, progress=False)


def test_linear_scaling_rule():
    assert T.peak_lr(get_config("gpu", lr=0.3, batch_size=4096)) == pytest.approx(4.8)


def test_biases_and_batchnorm_are_excluded_from_decay_and_adaptation():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    decay, rest = T.param_groups(model, 1e-4)
    assert {p.ndim for p in decay["params"]} == {2, 4} and decay["lars"]
    assert all(p.ndim == 1 for p in rest["params"]) and rest["weight_decay"] == 0
    assert not rest["lars"]


def test_lars_step_matches_the_formula():
    w = nn.Parameter(torch.tensor([3.0, 4.0]))  # ||w|| = 5
    b = nn.Parameter(torch.tensor([1.0]))
    opt = T.LARS([dict(params=[w], weight_decay=0.1, lars=True),
                  dict(params=[b], weight_decay=0.0, lars=False)], lr=0.5, eta=0.01)
    w.grad, b.grad = torch.tensor([1.0, 0.0]), torch.tensor([2.0])
    opt.step()
    d = torch.tensor([1.0, 0.0]) + 0.1 * torch.tensor([3.0, 4.0])
    expected = torch.tensor([3.0, 4.0]) - 0.5 * (0.01 * 5 / d.norm()) * d
    assert torch.allclose(w, expected) and torch.allclose(b, torch.tensor([0.0]))


@pytest.mark.parametrize("shape", [(48, 200), (200, 48)])
def test_orthogonalize_keeps_the_singular_vectors_and_evens_the_singular_values(shape):
    torch.manual_seed(0)
    k = min(shape)
    u, _ = torch.linalg.qr(torch.randn(shape[0], k))
    v, _ = torch.linalg.qr(torch.randn(shape[1], k))
    m = u @ torch.diag(torch.logspace(-2, 0, k)) @ v.T  # singular values 0.01 ... 1
    out = T.orthogonalize(m)
    assert out.shape == m.shape and out.dtype == torch.float32
    s = torch.linalg.svdvals(out)
    assert s.min() > 0.5 and s.max() < 1.3, s  # the 100-fold spread is gone
    core = u.T @ out @ v  # diagonal if out has m's singular vectors
    off = core - torch.diag(torch.diagonal(core))
    assert off.abs().max() < 0.05


def test_muon_step_matches_the_formula_and_adamw_for_the_rest():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(4, 3, 3, 3).contiguous(memory_format=torch.channels_last))
    b = nn.Parameter(torch.randn(4))
    b_ref = nn.Parameter(b.detach().clone())
    opt = T.Muon([dict(params=[w], weight_decay=0.5, muon=True),
                  dict(params=[b], weight_decay=0.0, muon=False)], lr=0.01, muon_lr=0.1,
                 momentum=0.9)
    ref = torch.optim.AdamW([b_ref], lr=0.01, weight_decay=0.0)
    w0 = w.detach().clone()
    for step in range(2):
        gw, gb = torch.randn(4, 3, 3, 3), torch.randn(4)
        w.grad, b.grad, b_ref.grad = gw, gb, gb.clone()
        opt.step()
        ref.step()
        if step == 0:  # momentum buffer = g, Nesterov direction g + 0.9 g
            update = T.orthogonalize((1.9 * gw).reshape(4, 27)).view(4, 3, 3, 3)
            expected = w0 * (1 - 0.1 * 0.5) - 0.1 * update  # 4 rows < 27 columns: scale 1
            assert torch.allclose(w.detach(), expected, atol=1e-5)
        assert torch.allclose(b, b_ref, atol=1e-6)


def test_build_optimizer_by_name():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    kinds = dict(adamw=torch.optim.AdamW, sgd=torch.optim.SGD, lars=T.LARS, muon=T.Muon)
    for name, kind in kinds.items():
        assert type(T.build_optimizer(tiny_cfg(optimizer=name), model)) is kind
    muon = T.build_optimizer(tiny_cfg(optimizer="muon", muon_lr=0.02, lr=0.004), model)
    matrices, rest = muon.param_groups
    assert matrices["muon"] and not rest["muon"] and matrices["lr_ratio"] == pytest.approx(40)
    with pytest.raises(ValueError, match="choose 'adamw', 'sgd', 'lars' or 'muon'"):
        T.build_optimizer(tiny_cfg(optimizer="adam"), model)


def test_muon_takes_the_newton_schulz_iterations_it_is_given(splits, monkeypatch):
    seen = []
    real = T.orthogonalize
    monkeypatch.setattr(T, "orthogonalize", lambda m, steps=5: seen.append(steps) or real(m, steps))
    T.train(tiny_cfg(num_epochs=1, optimizer="muon", ns_steps=3), splits, progress=False)
    assert seen and set(seen) == {3}
    with pytest.raises(ValueError, match="ns_steps must be a whole number >= 1"):
        T.train(tiny_cfg(optimizer="muon", ns_steps=0), splits, progress=False)


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
    T.train(cfg, splits, run_dir=tmp_path / "b", resume=True, progress=False)
    a, b = load_checkpoint(tmp_path / "a"), load_checkpoint(tmp_path / "b")
    assert a["step"] == b["step"] and a["history"]["loss"] == b["history"]["loss"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name


def test_steps_in_budget_from_the_measured_pace():
    history = dict(seconds=[1.0 + 0.5 * i for i in range(10)])  # 0.5 s a step after the first
    assert T._steps_in_budget(history, budget_s=60.0, step=10, world=1) == \
        10 + int((60 - 5.5) / 0.5)
    assert T._steps_in_budget(history, budget_s=2.0, step=10, world=1) == 10


def test_steps_in_budget_after_views_grow_uses_the_slower_pace():
    fast = [1.0 + 0.5 * i for i in range(100)]  # 100 steps of 0.5 s at small views ...
    history = dict(seconds=fast + [fast[-1] + 2.0 * (i + 1) for i in range(20)])  # ... 20 of 2 s
    spent = history["seconds"][-1]
    assert T._steps_in_budget(history, 600.0, step=120, world=1) == 120 + int((600 - spent) / 0.5)
    assert T._steps_in_budget(history, 600.0, step=120, world=1, since=100) == \
        120 + int((600 - spent) / 2.0)


def test_a_budgeted_run_sets_its_length_after_10_steps_then_every_100_and_every_epoch(
        splits, monkeypatch):
    timed = []

    def steps_in_budget(history, budget_s, step, *args, **kwargs):
        timed.append(step)
        return 250  # as if 250 steps fitted in the budget

    monkeypatch.setattr(T, "_steps_in_budget", steps_in_budget)
    cfg = tiny_cfg(budget_minutes=1.0, num_epochs=100, batch_size=16, eval_every=0)
    history = T.train(cfg, splits, progress=False)
    per_epoch = len(splits.train) // cfg.batch_size
    assert history["step"][-1] == 250 and history["total_steps"] == 250
    assert timed == sorted([10, 100, 200] + list(range(per_epoch, 250, per_epoch)))


def test_training_runs_checkpoints_and_resumes(tmp_path, splits):
    cfg = tiny_cfg()
    history = T.train(cfg, splits, run_dir=tmp_path)
    steps_per_epoch = len(splits.train) // cfg.batch_size
    assert history["step"][-1] == 2 * steps_per_epoch
    assert all(math.isfinite(x) for x in history["loss"]) and len(history["knn_top1"]) == 1
    state = load_checkpoint(tmp_path / CHECKPOINT)
    model, loaded_cfg = model_from_checkpoint(state)
    assert loaded_cfg == cfg and state["classes"] == splits.classes

    more = T.train(cfg.replace(num_epochs=3), splits, run_dir=tmp_path, resume=True)
    assert more["step"][-1] == 3 * steps_per_epoch
    assert more["loss"][:len(history["loss"])] == history["loss"]


def test_loss_falls_over_a_short_run(splits):
    history = T.train(tiny_cfg(num_epochs=4, lr=3e-3), splits)
    first, last = history["loss"][:3], history["loss"][-3:]
    assert sum(last) / 3 < sum(first) / 3


def test_more_views_per_image_train_on_every_view(splits, monkeypatch):
    seen = []
    real = T.nt_xent_views
    monkeypatch.setattr(T, "nt_xent_views", lambda z, *a: seen.append(len(z)) or real(z, *a))
    history = T.train(tiny_cfg(num_epochs=1, n_views=4), splits, progress=False)
    assert seen and set(seen) == {4} and math.isfinite(history["loss"][-1])
    with pytest.raises(ValueError, match="n_views must be a whole number >= 2"):
        T.train(tiny_cfg(n_views=1), splits, progress=False)


@pytest.mark.parametrize("bf16", [False, True])
def test_knn_monitor_runs_in_the_precision_of_training(splits, monkeypatch, bf16):
    seen = []
    real = T.extract_features

    def recording(*args, **kwargs):
        seen.append((kwargs.get("bf16", False), kwargs.get("size")))
        return real(*args, **kwargs)
    monkeypatch.setattr(T, "extract_features", recording)
    history = T.train(tiny_cfg(num_epochs=1, bf16=bf16), splits, progress=False)
    assert seen == [(bf16, None)] * 2 and 0 <= history["knn_top1"][0] <= 1  # bank, queries
    seen.clear()
    T.train(tiny_cfg(num_epochs=1, bf16=bf16, eval_size=24), splits, progress=False)
    assert seen == [(bf16, 24)] * 2  # f sees the images at the configured size


@pytest.mark.parametrize("bad", [0, 4, 28.5, "28"])
def test_a_bad_eval_size_stops_before_the_first_step(splits, monkeypatch, bad):
    monkeypatch.setattr(T, "make_views", lambda *a: pytest.fail("a step was taken"))
    with pytest.raises(ValueError, match="eval_size must be None .* whole number of pixels"):
        T.train(tiny_cfg(eval_size=bad), splits, progress=False)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, splits, monkeypatch):
    cfg = tiny_cfg(num_epochs=3)
    calls = {"n": 0}
    real = T.nt_xent_views

    def breaks_in_epoch_two(views, temperature, distributed=False, normalize=True):
        calls["n"] += 1
        loss = real(views, temperature, distributed, normalize)
        return loss * float("nan") if calls["n"] > len(splits.train) // cfg.batch_size else loss
    monkeypatch.setattr(T, "nt_xent_views", breaks_in_epoch_two)
    with pytest.raises(FloatingPointError, match=f"nan at step.*last good checkpoint.*{tmp_path}"):
        T.train(cfg, splits, run_dir=tmp_path)
    assert load_checkpoint(tmp_path)["step"] == len(splits.train) // cfg.batch_size


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint.*clr_lib.train"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a clr_lib checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "text.pt")


def test_resume_refuses_another_architecture(tmp_path, splits):
    T.train(tiny_cfg(num_epochs=1), splits, run_dir=tmp_path)
    with pytest.raises(ValueError, match="width=8, feature_dim=None, head=nonlinear, not the "
                                         "encoder=convnet, width=16"):
        T.train(tiny_cfg(num_epochs=2, width=16), splits, run_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="feature_dim=None, .* not the .*feature_dim=128"):
        T.train(tiny_cfg(num_epochs=2, feature_dim=128), splits, run_dir=tmp_path, resume=True)


def test_cli_options_come_from_the_config():
    args = T.config_parser("x").parse_args(
        ["--profile", "smoke", "--crop-scale", "0.2", "1", "--budget-minutes", "2.5",
         "--max-per-class", "none", "--blur", "true", "--temperature", "0.2", "--bf16", "false"])
    cfg = T.config_from_args(args)
    assert cfg.crop_scale == (0.2, 1.0) and cfg.budget_minutes == 2.5
    assert cfg.max_per_class is None and cfg.blur and cfg.temperature == 0.2
    assert cfg.bf16 is False and cfg.width == get_config("smoke").width


def test_torchrun_two_processes(tmp_path):
    """Two CPU processes (gloo) train together and write one checkpoint."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--standalone", "-m", "clr_lib.train", "--profile", "smoke",
           "--dataset", "synthetic", "--max-per-class", "16", "--batch-size", "32",
           "--width", "8", "--knn-k", "10", "--out", str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["steps"] == 4 and (tmp_path / CHECKPOINT).is_file()


def cli(out, *extra):
    return [sys.executable, "-m", "clr_lib.train", "--profile", "smoke", "--dataset", "synthetic",
            "--max-per-class", "32", "--batch-size", "32", "--width", "8", "--knn-k", "10",
            "--epochs", "6", "--seed", "3", "--out", str(out), *extra]


def test_a_killed_and_resumed_run_ends_with_the_same_weights(tmp_path):
    subprocess.run(cli(tmp_path / "unbroken"), check=True, capture_output=True, timeout=300)
    proc = subprocess.Popen(cli(tmp_path / "killed"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "killed" / CHECKPOINT
    deadline = time.time() + 120
    while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # no clean-up, no last save
    proc.wait()
    killed_at = load_checkpoint(checkpoint)["step"]
    total = load_checkpoint(tmp_path / "unbroken")["step"]
    assert 0 < killed_at < total, "the kill came too late to test resuming"

    subprocess.run(cli(tmp_path / "killed", "--resume"), check=True, capture_output=True,
                   timeout=300)
    a, b = load_checkpoint(tmp_path / "unbroken"), load_checkpoint(checkpoint)
    assert b["step"] == total
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert a["history"]["loss"] == b["history"]["loss"]
    assert json.loads((tmp_path / "killed" / "history.json").read_text())["step"][-1] == total


def test_cli_refuses_to_overwrite_a_run(tmp_path):
    (tmp_path / CHECKPOINT).write_bytes(b"")
    out = subprocess.run(cli(tmp_path), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "add --resume" in out.stderr
