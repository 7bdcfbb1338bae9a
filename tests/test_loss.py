"""clr_lib.loss: NT-Xent against a naive copy of the paper's Algorithm 1, and its properties."""

import math
import re

import pytest
import torch

from clr_lib.config import UserError
from clr_lib.loss import NTXentLoss, nt_xent, nt_xent_views, positive_index


def test_positive_index_by_hand():
    # 3 images, 2 views: rows [x_i of 0, 1, 2; x_j of 0, 1, 2]; row k pairs with k +- 3
    assert positive_index(3, 2).tolist() == [[3], [4], [5], [0], [1], [2]]
    # 2 images, 3 views: rows [v0 of 0, 1; v1 of 0, 1; v2 of 0, 1], positives in view order
    assert positive_index(2, 3).tolist() == [[2, 4], [3, 5], [0, 4], [1, 5], [0, 2], [1, 3]]
    assert positive_index(3).dtype == torch.int64  # views=2 by default


def test_positive_index_has_the_other_views_of_the_same_image():
    for n, v in ((1, 2), (4, 2), (5, 4), (3, 8)):
        index = positive_index(n, v)
        assert index.shape == (v * n, v - 1)
        for row in range(v * n):
            expected = [b * n + row % n for b in range(v) if b != row // n]
            assert index[row].tolist() == expected


def algorithm_1(z_i, z_j, tau):
    """Chen et al. (2020), Algorithm 1, in float64 loops: views interleaved as z_{2k-1}, z_{2k}."""
    n = z_i.shape[0]
    z = [None] * (2 * n)
    for k in range(n):
        z[2 * k], z[2 * k + 1] = z_i[k].double(), z_j[k].double()

    def s(a, b):  # cosine similarity
        return (z[a] @ z[b] / (z[a].norm() * z[b].norm())).item()

    def l(a, b):
        den = sum(math.exp(s(a, k) / tau) for k in range(2 * n) if k != a)
        return -math.log(math.exp(s(a, b) / tau) / den)

    return sum(l(2 * k, 2 * k + 1) + l(2 * k + 1, 2 * k) for k in range(n)) / (2 * n)


def test_equals_algorithm_1_over_random_shapes_and_temperatures():
    gen = torch.Generator().manual_seed(0)
    for _ in range(30):
        n = int(torch.randint(2, 13, (1,), generator=gen))
        d = int(torch.randint(1, 20, (1,), generator=gen))
        tau = float(10 ** torch.empty(1).uniform_(-1.3, 0.3, generator=gen))  # 0.05 .. 2
        z_i, z_j = torch.randn(2, n, d, generator=gen, dtype=torch.float64)
        expected = algorithm_1(z_i, z_j, tau)
        assert nt_xent(z_i, z_j, tau).item() == pytest.approx(expected, rel=1e-10)
        assert nt_xent(z_i.float(), z_j.float(), tau).item() == pytest.approx(expected, rel=1e-4)


def multi_view_loops(views, tau):
    """NT-Xent of V views in float64 loops: each of the V*N views is an anchor, its loss the
    mean over its V - 1 positives of -log(exp(s/tau) / sum over the other V*N - 1 views)."""
    z = [v[k].double() for v in views for k in range(len(views[0]))]
    image = [k for _ in views for k in range(len(views[0]))]

    def s(a, b):
        return (z[a] @ z[b] / (z[a].norm() * z[b].norm())).item()

    total = 0.0
    for a in range(len(z)):
        den = sum(math.exp(s(a, k) / tau) for k in range(len(z)) if k != a)
        pos = [p for p in range(len(z)) if p != a and image[p] == image[a]]
        total += sum(-math.log(math.exp(s(a, p) / tau) / den) for p in pos) / len(pos)
    return total / len(z)


@pytest.mark.parametrize("v", [2, 3, 4, 6])
def test_views_version_equals_the_loops(v):
    gen = torch.Generator().manual_seed(v)
    for _ in range(5):
        n = int(torch.randint(2, 7, (1,), generator=gen))
        views = list(torch.randn(v, n, 4, generator=gen, dtype=torch.float64))
        tau = float(torch.empty(1).uniform_(0.1, 1.0, generator=gen))
        expected = multi_view_loops(views, tau)
        assert nt_xent_views(views, tau).item() == pytest.approx(expected, rel=1e-10)
        if v == 2:  # and then it is the paper's loss
            assert expected == pytest.approx(algorithm_1(*views, tau), rel=1e-12)
            assert nt_xent_views(views, tau).item() == pytest.approx(algorithm_1(*views, tau),
                                                                     rel=1e-10)


def test_views_version_errors():
    with pytest.raises(ValueError, match="at least 2 views"):
        nt_xent_views([torch.ones(4, 8)])
    with pytest.raises(ValueError, match="all of one shape"):
        nt_xent_views([torch.ones(4, 8), torch.ones(4, 8), torch.ones(3, 8)])


def test_a_value_worked_by_hand():
    # Two orthogonal images, each view equal to its partner: s(i,j) = 1, every negative 0.
    z = torch.eye(2)
    tau = 0.5
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 2))
    assert nt_xent(z, z.clone(), tau).item() == pytest.approx(expected, rel=1e-6)


def test_symmetric_in_the_two_views():
    torch.manual_seed(1)
    z_i, z_j = torch.randn(2, 16, 8)
    assert torch.allclose(nt_xent(z_i, z_j), nt_xent(z_j, z_i), atol=1e-6)


@pytest.mark.parametrize("n, tau", [(2, 0.5), (7, 0.1), (64, 1.0)])
def test_all_equal_embeddings_give_log_2n_minus_1(n, tau):
    z = torch.ones(n, 5)
    assert nt_xent(z, z.clone(), tau).item() == pytest.approx(math.log(2 * n - 1), rel=1e-6)


def test_invariant_to_rescaling_z():
    torch.manual_seed(2)
    z_i, z_j = torch.randn(2, 10, 6)
    scale = torch.rand(10, 1) * 10 + 0.1  # a different positive scale per row
    assert torch.allclose(nt_xent(3 * z_i, scale * z_j), nt_xent(z_i, z_j), atol=1e-5)


def test_gradcheck():
    torch.manual_seed(3)
    z_i, z_j = torch.randn(2, 5, 4, dtype=torch.float64).unbind(0)
    z_i.requires_grad_(), z_j.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.3), (z_i, z_j))


def test_loss_falls_after_a_few_sgd_steps_on_a_toy_problem():
    torch.manual_seed(4)
    x = torch.randn(32, 10)  # 32 "images"; their two views are noisy copies
    x_i, x_j = x + 0.3 * torch.randn_like(x), x + 0.3 * torch.randn_like(x)
    net = torch.nn.Linear(10, 8)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    losses = []
    for _ in range(20):
        loss = nt_xent(net(x_i), net(x_j), 0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3, losses


def test_float32_under_autocast():
    torch.manual_seed(5)
    z_i, z_j = torch.randn(2, 8, 16).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nt_xent(z_i, z_j)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(nt_xent(z_i.float(), z_j.float()).item(), rel=1e-6)


def test_module_equals_function():
    torch.manual_seed(6)
    z_i, z_j = torch.randn(2, 6, 3)
    assert torch.equal(NTXentLoss(0.2)(z_i, z_j), nt_xent(z_i, z_j, 0.2))


@pytest.mark.parametrize("z_i, z_j, match", [
    (torch.ones(4, 8), torch.ones(5, 8), "all of one shape"),
    (torch.ones(4, 8), torch.ones(4, 7), "all of one shape"),
    (torch.ones(8), torch.ones(8), "must be \\(N, d\\)"),
    (torch.ones(1, 8), torch.ones(1, 8), "at least 2 images per batch"),
])
def test_clear_errors(z_i, z_j, match):
    with pytest.raises(ValueError, match=match):
        nt_xent(z_i, z_j, 0.5)


@pytest.mark.parametrize("tau", [0.0, -0.5, float("nan"), float("inf"), True, "0.5", None])
def test_a_temperature_that_is_not_a_number_above_0_is_a_user_error(tau):
    z = torch.ones(4, 8)
    message = f"temperature is {tau!r}: it takes a number > 0; the paper uses 0.5 on CIFAR-10"
    with pytest.raises(UserError, match=re.escape(message)):
        nt_xent(z, z, tau)
    with pytest.raises(UserError, match="it takes a number > 0"):
        nt_xent_views([z, z, z], tau)
    with pytest.raises(UserError, match="it takes a number > 0"):
        NTXentLoss(tau)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_or_inf_in_z_gives_a_nan_loss(bad):
    """Documented: z is not checked (that would cost a host sync a step); the loss is NaN,
    and the training loop stops on it."""
    torch.manual_seed(8)
    z_i, z_j = torch.randn(2, 4, 8)
    z_i[2, 3] = bad  # one number of one image
    assert nt_xent(z_i, z_j, 0.5).isnan().item()
    assert nt_xent(z_j, z_i, 0.5).isnan().item()
    assert nt_xent_views([z_j, z_j, z_i], 0.5).isnan().item()
    assert nt_xent(z_i, z_j, 0.5, normalize=False).isnan().item()
    z_i[2, 3] = 0.0  # the same z without it: a finite loss
    assert nt_xent(z_i, z_j, 0.5).isfinite().item()


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="drop_last=True"):
        nt_xent(torch.ones(1, 8), torch.ones(1, 8))
    with pytest.raises(ValueError, match="0.5 on CIFAR-10"):
        NTXentLoss(0)
    with pytest.raises(ValueError, match="init_process_group"):
        nt_xent(torch.ones(4, 8), torch.ones(4, 8), distributed=True)


def test_distributed_mode_in_a_group_of_one_equals_the_plain_loss(tmp_path):
    # The multi-process check (each rank sees the global batch) belongs to the training issue;
    # here the gather path runs in a group of one and must agree, gradients included.
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        torch.manual_seed(7)
        z_i, z_j = torch.randn(2, 6, 4, dtype=torch.float64).unbind(0)
        a = z_i.clone().requires_grad_()
        b = z_i.clone().requires_grad_()
        nt_xent(a, z_j, 0.5).backward()
        nt_xent(b, z_j, 0.5, distributed=True).backward()
        assert torch.allclose(a.grad, b.grad)
    finally:
        dist.destroy_process_group()


def test_without_l2_normalisation_the_loss_uses_dot_products():
    torch.manual_seed(0)
    z_i, z_j = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    z = torch.cat([z_i, z_j])
    logits = z @ z.T / 2.0
    logits.fill_diagonal_(float("-inf"))
    target = torch.arange(12).roll(6)
    expected = torch.nn.functional.cross_entropy(logits, target)
    assert torch.allclose(nt_xent(z_i, z_j, 2.0, normalize=False), expected, atol=1e-12)
    assert not torch.allclose(nt_xent(z_i, z_j, 2.0), expected)  # the default normalises
    assert torch.allclose(NTXentLoss(2.0, normalize=False)(z_i, z_j), expected, atol=1e-12)
