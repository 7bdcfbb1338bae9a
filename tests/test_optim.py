"""clr_lib.optim: the schedule, the length of a time budget, the parameter groups, LARS, Muon
and the optimiser each Config names. Every update is checked over several steps against the
formula written out here in float64, not against the code under test."""

import io
import math

import pytest
import torch
from torch import nn

from clr_lib import optim as O
from clr_lib.config import UserError, get_config


# ----------------------------------------------------------------------------- the schedule

def test_warmup_then_cosine_to_zero():
    lrs = [O.lr_at(s, 100, 10, 1.0) for s in range(101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[4] == pytest.approx(0.5)  # (s + 1) / 10
    assert lrs[9] == pytest.approx(1.0) and lrs[10] == pytest.approx(1.0)
    assert lrs[40] == pytest.approx(0.75)  # a third of the way: (1 + cos(pi / 3)) / 2
    assert lrs[55] == pytest.approx(0.5) and lrs[70] == pytest.approx(0.25)
    assert lrs[100] == pytest.approx(0.0, abs=1e-15)
    assert O.lr_at(150, 100, 10, 1.0) == pytest.approx(0.0, abs=1e-15)  # stays at zero after
    assert O.lr_at(55, 100, 10, 4.8) == pytest.approx(2.4)  # scales with the peak


def test_warmup_then_linear_decay_to_zero():
    lrs = [O.lr_at(s, 110, 10, 1.0, "linear") for s in range(111)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[35] == pytest.approx(0.75) and lrs[60] == pytest.approx(0.5)
    assert lrs[110] == pytest.approx(0.0, abs=1e-15)
    steps = [a - b for a, b in zip(lrs[10:], lrs[11:])]  # a straight line: equal steps down
    assert steps == pytest.approx([0.01] * 100)


def test_no_warmup_starts_at_the_peak():
    assert O.lr_at(0, 10, 0, 2.0) == 2.0
    assert O.lr_at(5, 10, 0, 2.0, "linear") == pytest.approx(1.0)


def test_an_unknown_schedule_is_a_user_error():
    with pytest.raises(UserError, match="^lr_schedule is 'step': choose one of cosine, linear"):
        O.lr_at(0, 100, 10, 1.0, "step")


def test_linear_scaling_rule():
    assert O.peak_lr(get_config("gpu", lr=0.3, batch_size=4096)) == pytest.approx(4.8)
    assert O.peak_lr(get_config("smoke", lr=0.004, batch_size=32)) == pytest.approx(0.0005)


# ----------------------------------------------------------------------------- the budget

def test_steps_in_budget_at_a_steady_pace():
    # step 1 after 2 s (the first step warms up), then 0.5 s a step
    steps, seconds = [1, 10, 20, 30], [2.0, 6.5, 11.5, 16.5]
    assert O.steps_in_budget(steps, seconds, 60.0) == 30 + 87  # (60 - 16.5) / 0.5 = 87 more


def test_steps_in_budget_ignores_a_slow_outlier():
    # 0.5 s a step, but a kNN check of 30 s between steps 20 and 30: the median pace is
    # still 0.5 s (the mean, 1.25 s, would stop the run at step 86)
    steps, seconds = [10, 20, 30, 40, 50], [5.0, 10.0, 45.0, 50.0, 55.0]
    assert O.steps_in_budget(steps, seconds, 100.0) == 50 + 90
    assert O.steps_in_budget(steps[:4], seconds[:4], 100.0) == 40 + 100  # even count: upper


def test_steps_in_budget_when_the_budget_is_spent():
    steps, seconds = [10, 20, 30, 40, 50], [5.0, 10.0, 45.0, 50.0, 55.0]
    assert O.steps_in_budget(steps, seconds, 50.0) == 50  # 55 s spent of 50: stop now
    assert O.steps_in_budget(steps, seconds, 55.0) == 50
    assert O.steps_in_budget([7], [3.0], 100.0) == 7  # one point: no pace to go by


# ----------------------------------------------------------------------------- the groups

def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def test_biases_and_batchnorm_are_excluded_from_decay_and_adaptation():
    model = small_net()
    model[1].bias.requires_grad_(False)  # a frozen parameter is in no group
    decay, rest = O.param_groups(model, 1e-4, 0.5)
    conv, bn, fc = model[0], model[1], model[3]
    assert [id(p) for p in decay["params"]] == [id(conv.weight), id(fc.weight)]
    assert [id(p) for p in rest["params"]] == [id(conv.bias), id(bn.weight), id(fc.bias)]
    assert decay["decay"] is True and decay["weight_decay"] == 1e-4
    assert rest["decay"] is False and rest["weight_decay"] == 0.0
    assert decay["peak_lr"] == decay["lr"] == rest["peak_lr"] == rest["lr"] == 0.5


# ----------------------------------------------------------------------------- LARS

def test_lars_over_several_steps_with_momentum():
    """d = g + wd w; trust = eta ||w|| / ||d||; buf = mu buf + trust d; w -= lr buf for a
    decayed matrix; a bias gets plain momentum SGD: buf = mu buf + g; w -= lr buf."""
    gen = torch.Generator().manual_seed(0)
    w0, b0 = torch.randn(6, 5, generator=gen), torch.randn(6, generator=gen)
    w, b = nn.Parameter(w0.clone()), nn.Parameter(b0.clone())
    wd, mu, eta = 0.05, 0.9, 0.02
    opt = O.LARS([dict(params=[w], weight_decay=wd, decay=True),
                  dict(params=[b], weight_decay=0.0, decay=False)], lr=1.0, momentum=mu,
                 eta=eta)
    w_ref, b_ref = w0.double(), b0.double()
    buf_w, buf_b = torch.zeros_like(w_ref), torch.zeros_like(b_ref)
    for lr in (0.5, 0.2, 0.8, 0.3):  # the loop changes lr every step: lr applies at the update
        gw, gb = torch.randn(6, 5, generator=gen), torch.randn(6, generator=gen)
        w.grad, b.grad = gw.clone(), gb.clone()
        for g in opt.param_groups:
            g["lr"] = lr
        opt.step()
        d = gw.double() + wd * w_ref
        trust = eta * w_ref.norm() / d.norm()
        buf_w = mu * buf_w + trust * d
        w_ref = w_ref - lr * buf_w
        buf_b = mu * buf_b + gb.double()  # no decay, no trust ratio
        b_ref = b_ref - lr * buf_b
        torch.testing.assert_close(w.detach().double(), w_ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(b.detach().double(), b_ref, rtol=1e-6, atol=1e-6)
    assert trust < 0.1  # far from 1: a step without the trust ratio would not pass


def test_lars_trust_ratio_is_one_for_zero_weights():
    w = nn.Parameter(torch.zeros(3, 2))  # ||w|| = 0: the paper's code uses a ratio of 1
    opt = O.LARS([dict(params=[w], weight_decay=0.1, decay=True)], lr=0.5, momentum=0.9)
    w.grad = torch.full((3, 2), 2.0)
    opt.step()
    assert torch.equal(w.detach(), torch.full((3, 2), -1.0))


# ----------------------------------------------------------------------------- Muon

def exact_orthogonalize(m: torch.Tensor) -> torch.Tensor:
    """U V^T of m = U S V^T, from the SVD in float64."""
    u, _, vh = torch.linalg.svd(m.double(), full_matrices=False)
    return u @ vh


def spread_matrix(shape, seed=0):
    """A matrix with singular values from 0.01 to 1, and its singular vectors."""
    gen = torch.Generator().manual_seed(seed)
    k = min(shape)
    u, _ = torch.linalg.qr(torch.randn(shape[0], k, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(shape[1], k, generator=gen, dtype=torch.float64))
    s = torch.logspace(-2, 0, k, dtype=torch.float64)
    return (u @ torch.diag(s) @ v.T).float(), u, v


@pytest.mark.parametrize("shape", [(200, 48), (48, 200), (64, 18), (18, 64)])
def test_orthogonalize_approaches_u_v_transpose(shape):
    m, u, v = spread_matrix(shape)
    out = O.orthogonalize(m, 5)
    assert out.shape == m.shape and out.dtype == torch.float32
    s = torch.linalg.svdvals(out.double())
    assert s.min() > 0.5 and s.max() < 1.3, s  # the 100-fold spread is gone
    core = u.T @ out.double() @ v  # diagonal if out has m's singular vectors
    off = core - torch.diag(torch.diagonal(core))
    assert off.abs().max() < 0.05
    assert torch.diagonal(core).min() > 0.5  # the same signs as U V^T: no direction flipped
    target = exact_orthogonalize(m)
    cosine = (out.double() * target).sum() / (out.double().norm() * target.norm())
    assert cosine > 0.97
    # fewer iterations leave the weakest directions short (the laptop profile's trade-off)
    assert torch.linalg.svdvals(O.orthogonalize(m, 3).double()).min() < 0.5


@pytest.mark.parametrize("shape", [(64, 18), (18, 64)])
def test_orthogonalize_of_a_gradient_like_matrix(shape):
    m = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    out, target = O.orthogonalize(m).double(), exact_orthogonalize(m)
    assert (out - target).norm() / target.norm() < 0.3  # bf16 Newton-Schulz: within ~20%
    s = torch.linalg.svdvals(out)
    assert s.min() > 0.5 and s.max() < 1.3, s


def test_muon_steps_follow_the_formula(monkeypatch):
    """W <- W (1 - lr wd) - lr sqrt(max(1, rows / cols)) O(M), M = g + mu buf (Nesterov),
    buf = mu buf + g, a conv weight read as (C_out, C_in k k); orthogonalize replaced by the
    exact U V^T so the step can be checked to float32 precision."""
    calls = []

    def exact(m, steps=5):
        calls.append((tuple(m.shape), steps))
        return exact_orthogonalize(m).float()
    monkeypatch.setattr(O, "orthogonalize", exact)

    gen = torch.Generator().manual_seed(0)
    tall0 = torch.randn(64, 2, 3, 3, generator=gen)  # 64 x 18: scale sqrt(64 / 18)
    wide0 = torch.randn(10, 32, generator=gen)  # 10 x 32: scale 1
    tall = nn.Parameter(tall0.clone().contiguous(memory_format=torch.channels_last))
    wide, idle = nn.Parameter(wide0.clone()), nn.Parameter(torch.ones(4, 4))  # idle: no grad
    mu, wd = 0.9, 0.1
    opt = O.Muon([dict(params=[tall, wide, idle])], lr=1.0, momentum=mu, weight_decay=wd,
                 ns_steps=3)
    ref = {"tall": (tall0.double().reshape(64, 18), torch.zeros(64, 18, dtype=torch.float64)),
           "wide": (wide0.double(), torch.zeros(10, 32, dtype=torch.float64))}
    for lr in (0.05, 0.02, 0.04, 0.01):
        grads = dict(tall=torch.randn(64, 2, 3, 3, generator=gen),
                     wide=torch.randn(10, 32, generator=gen))
        tall.grad = grads["tall"].contiguous(memory_format=torch.channels_last)
        wide.grad = grads["wide"].clone()
        opt.param_groups[0]["lr"] = lr
        opt.step()
        for name, (w, buf) in ref.items():
            g = grads[name].double().reshape(len(w), -1)
            buf = mu * buf + g
            scale = math.sqrt(max(1.0, w.shape[0] / w.shape[1]))
            w = w * (1 - lr * wd) - lr * scale * exact_orthogonalize(g + mu * buf)
            ref[name] = (w, buf)
        torch.testing.assert_close(tall.detach().double().reshape(64, 18), ref["tall"][0],
                                   rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(wide.detach().double(), ref["wide"][0], rtol=1e-6, atol=1e-6)
    assert calls == [((64, 18), 3), ((10, 32), 3)] * 4  # ns_steps reaches orthogonalize
    assert torch.equal(idle.detach(), torch.ones(4, 4))
    assert tall.is_contiguous(memory_format=torch.channels_last)  # its layout is kept


def test_muon_with_the_real_orthogonalize_stays_close_to_the_formula():
    gen = torch.Generator().manual_seed(0)
    w0, g = torch.randn(64, 18, generator=gen), torch.randn(64, 18, generator=gen)
    w = nn.Parameter(w0.clone())
    opt = O.Muon([dict(params=[w])], lr=0.1, momentum=0.95, weight_decay=0.0, ns_steps=5)
    w.grad = g
    opt.step()
    step = (w0 - w.detach()).double() / (0.1 * math.sqrt(64 / 18))
    target = exact_orthogonalize(1.95 * g)  # first step: buf = g, M = g + 0.95 g
    assert (step - target).norm() / target.norm() < 0.3


def two_kinds_of_parameter():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 6, 3), nn.BatchNorm2d(6), nn.Flatten(), nn.Linear(24, 4))


def fake_grads(model, step):
    gen = torch.Generator().manual_seed(100 + step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)


def test_muon_with_adamw_steps_the_1d_parameters_exactly_as_adamw():
    cfg = get_config("smoke", optimizer="muon", lr=0.016, batch_size=32, muon_lr=0.05)
    model = two_kinds_of_parameter()
    opt = O.build_optimizer(cfg, model)
    vectors = [p for p in model.parameters() if p.ndim == 1]
    clones = [nn.Parameter(p.detach().clone()) for p in vectors]
    ref = torch.optim.AdamW(clones, lr=0.016 * 32 / 256, weight_decay=0.0)
    for step, factor in enumerate((1.0, 0.5, 0.25, 0.75)):
        fake_grads(model, step)
        for c, p in zip(clones, vectors):
            c.grad = p.grad.clone()
        for g in opt.param_groups:
            g["lr"] = g["peak_lr"] * factor
        ref.param_groups[0]["lr"] = 0.016 * 32 / 256 * factor
        opt.step()
        ref.step()
        for c, p in zip(clones, vectors):
            assert torch.equal(c, p)
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_muon_with_adamw_state_dict_round_trip():
    cfg = get_config("smoke", optimizer="muon", lr=0.016, batch_size=32)
    a = two_kinds_of_parameter()
    opt_a = O.build_optimizer(cfg, a)
    for step in range(2):
        fake_grads(a, step)
        opt_a.step()
    state = opt_a.state_dict()
    assert set(state) == {"muon", "adamw"}
    saved = io.BytesIO()
    torch.save(state, saved)  # as a checkpoint holds it, read back with weights_only
    saved.seek(0)
    b = two_kinds_of_parameter()
    b.load_state_dict(a.state_dict())
    opt_b = O.build_optimizer(cfg, b)
    opt_b.load_state_dict(torch.load(saved, weights_only=True))
    fresh = two_kinds_of_parameter()  # the same weights without the optimiser's state
    fresh.load_state_dict(a.state_dict())
    opt_fresh = O.build_optimizer(cfg, fresh)
    for step in range(2, 4):
        for model, opt in ((a, opt_a), (b, opt_b), (fresh, opt_fresh)):
            fake_grads(model, step)
            opt.step()
    for name, p in a.named_parameters():
        assert torch.equal(p, b.get_parameter(name)), name
    assert any(not torch.equal(p, fresh.get_parameter(n)) for n, p in a.named_parameters())


# ----------------------------------------------------------------------------- by name

@pytest.mark.parametrize("name, kind", [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD),
                                        ("lars", O.LARS), ("muon", O.MuonWithAdamW)])
def test_build_optimizer_by_name(name, kind):
    cfg = get_config("smoke", optimizer=name, lr=0.004, batch_size=32, muon_lr=0.02,
                     weight_decay=0.01, momentum=0.8, ns_steps=4)
    model = small_net()
    matrices = [id(model[0].weight), id(model[3].weight)]
    vectors = [id(model[0].bias), id(model[1].weight), id(model[1].bias), id(model[3].bias)]
    opt = O.build_optimizer(cfg, model)
    assert type(opt) is kind
    first, rest = opt.param_groups
    assert [id(p) for p in first["params"]] == matrices
    assert [id(p) for p in rest["params"]] == vectors
    assert rest["peak_lr"] == rest["lr"] == pytest.approx(0.004 * 32 / 256)
    assert first["weight_decay"] == 0.01 and rest["weight_decay"] == 0.0
    if name == "muon":
        assert first["peak_lr"] == first["lr"] == 0.02  # Muon's own rate, not scaled
        assert first["momentum"] == 0.8 and first["ns_steps"] == 4
        assert type(opt.muon) is O.Muon and type(opt.adamw) is torch.optim.AdamW
    else:
        assert first["peak_lr"] == first["lr"] == pytest.approx(0.004 * 32 / 256)
    if name in ("sgd", "lars"):
        assert first["momentum"] == rest["momentum"] == 0.8
    if name == "lars":
        assert first["decay"] is True and rest["decay"] is False
