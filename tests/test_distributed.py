"""NT-Xent across processes: two gloo processes, each holding half the batch, must give the
loss and the gradients of one process holding the whole batch (the paper's global batch of
negatives across TPU cores). The same processes check clr_lib.distributed's helpers."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clr_lib import distributed
from clr_lib.loss import nt_xent, nt_xent_views

N, D, WORLD, TAU = 8, 5, 2, 0.3


def _rank(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    g = torch.Generator().manual_seed(0)
    z_i, z_j = torch.randn(N, D, generator=g), torch.randn(N, D, generator=g)
    n = N // WORLD
    mine_i = z_i[rank * n:(rank + 1) * n].clone().requires_grad_()
    mine_j = z_j[rank * n:(rank + 1) * n].clone().requires_grad_()
    loss = nt_xent(mine_i, mine_j, TAU, distributed=True)
    loss.backward()
    z_k = torch.randn(N, D, generator=g)  # a third view: nt_xent_views gathers each view
    mine = [z[rank * n:(rank + 1) * n].clone().requires_grad_() for z in (z_i, z_j, z_k)]
    loss3 = nt_xent_views(mine, TAU, distributed=True)
    loss3.backward()
    os.environ["WORLD_SIZE"] = str(WORLD)  # as torchrun sets it
    ranks = distributed.init()  # the group exists: init only reports it
    smallest = distributed.all_min(10 - 7 * rank, torch.device("cpu"))  # 10 and 3
    torch.save(dict(loss=loss.detach(), grad_i=mine_i.grad, grad_j=mine_j.grad,
                    loss3=loss3.detach(), grads3=torch.stack([z.grad for z in mine]),
                    ranks=torch.tensor(ranks), smallest=torch.tensor(smallest)),
               os.path.join(out_dir, f"rank{rank}.pt"))
    distributed.close()
    assert not dist.is_initialized()


def test_two_processes_equal_one_process_with_the_whole_batch(tmp_path):
    mp.spawn(_rank, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert [r["ranks"].tolist() for r in ranks] == [[0, WORLD], [1, WORLD]]
    assert [r["smallest"].item() for r in ranks] == [3, 3]  # every rank stops at one step

    g = torch.Generator().manual_seed(0)
    z_i = torch.randn(N, D, generator=g).requires_grad_()
    z_j = torch.randn(N, D, generator=g).requires_grad_()
    loss = nt_xent(z_i, z_j, TAU)
    loss.backward()

    # The global loss is the mean of the per-process losses; DistributedDataParallel averages
    # gradients over processes, so each process's gradient is WORLD x that of the global loss.
    assert torch.allclose(torch.stack([r["loss"] for r in ranks]).mean(), loss, atol=1e-6)
    grad_i = torch.cat([r["grad_i"] for r in ranks]) / WORLD
    grad_j = torch.cat([r["grad_j"] for r in ranks]) / WORLD
    assert torch.allclose(grad_i, z_i.grad, atol=1e-6)
    assert torch.allclose(grad_j, z_j.grad, atol=1e-6)

    z_k = torch.randn(N, D, generator=g).requires_grad_()  # three views, likewise
    loss3 = nt_xent_views([z_i, z_j, z_k], TAU)
    z_i.grad = z_j.grad = None
    loss3.backward()
    assert torch.allclose(torch.stack([r["loss3"] for r in ranks]).mean(), loss3, atol=1e-6)
    grads3 = torch.cat([r["grads3"] for r in ranks], dim=1) / WORLD  # (3, N, D)
    assert torch.allclose(grads3, torch.stack([z_i.grad, z_j.grad, z_k.grad]), atol=1e-6)


def test_a_single_process_starts_no_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init() == (0, 1) and not dist.is_initialized()
    distributed.close()  # nothing to close: no error
    if not torch.cuda.is_available():
        assert distributed.rank_device() == torch.device("cpu")
