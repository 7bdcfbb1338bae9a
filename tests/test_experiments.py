import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from clr_lib import experiments as E
from clr_lib.augment import SimCLRAugment, normalize, two_views
from clr_lib.config import UserError, get_config


@pytest.fixture
def synthetic(monkeypatch, tmp_path):
    """Cells of the smoke grid on the synthetic set, whatever data/ holds; results in
    tmp_path."""
    monkeypatch.delenv("CLR_DATA_DIR", raising=False)
    monkeypatch.setitem(E.GRIDS["smoke"], "base", dict(dataset="synthetic"))
    monkeypatch.setitem(E.GRIDS["smoke"], "train_images", 300)  # of 900: quicker cells
    return tmp_path / "results"


def is_share_of(value, n):
    """value is k / n for a whole number k: a share of n images."""
    return 0 <= value <= 1 and value * n == pytest.approx(round(value * n), abs=1e-4)


def test_the_laptop_grids():
    aug = E.grid("augmentations", "laptop")
    ops = E.GRIDS["laptop"]["ops"]
    n_pairs = len(ops) * (len(ops) + 1) // 2
    assert len(aug) == 1 + n_pairs + len(E.GRIDS["laptop"]["strengths"])
    assert aug[0].name == "random_init" and aug[0].overrides == {"num_epochs": 0}
    crop_color = next(c for c in aug if c.name == "crop+color")
    on = {k for k, v in crop_color.overrides.items() if k in E.ALL_OFF and v != E.ALL_OFF[k]}
    assert on == {"crop_scale", "crop_ratio", "color_p"}  # exactly the two ops, nothing else
    assert next(c for c in aug if c.name == "rotate").overrides["rotate_p"] > 0
    head = E.grid("head", "laptop")
    assert {c.overrides["head"] for c in head} == {"none", "linear", "nonlinear"}
    temp = E.grid("temperature", "laptop")
    assert any(c.overrides.get("l2_normalize") is False for c in temp)
    assert all("contrastive" in c.measure for c in temp)
    batch = E.grid("batch_size", "laptop")
    assert {c.kind for c in batch} == {"simclr", "supervised"}
    assert len(batch) == 2 * len(E.GRIDS["laptop"]["batches"]) * len(
        E.GRIDS["laptop"]["batch_epochs"])
    for finding in E.FINDINGS:  # every cell builds a valid config, and names are unique
        cells = E.grid(finding, "laptop")
        assert len({c.name for c in cells}) == len(cells)
        for c in cells:
            E.base_config("laptop", **c.overrides)


def test_the_committed_laptop_results_match_the_grid_as_it_is_now():
    """results/ holds one record per laptop cell, each made with today's grid and profile
    (retuning the laptop profile must pin the old values in GRIDS["laptop"]["base"])."""
    results = Path(__file__).parents[1] / "results"
    for finding in E.FINDINGS:
        cells = E.grid(finding, "laptop")
        assert sorted(E.load_results(results, finding)) == sorted(c.name for c in cells)
        for cell in cells:
            E._check_record(E.cell_path(results, cell), cell, "laptop")


def test_unknown_finding_or_profile():
    with pytest.raises(UserError, match="^unknown finding 'colour': choose one of augmentations, "
                                        "head, temperature, batch_size, or all"):
        E.grid("colour")
    with pytest.raises(UserError, match="^there is no grid for profile 'tiny': choose one of "
                                        "gpu, laptop, smoke"):
        E.grid("head", "tiny")


def test_a_grid_runs_from_the_cli_writes_one_json_per_cell_and_resumes(synthetic, monkeypatch,
                                                                         capsys):
    E.main(["head", "--profile", "smoke", "--out", str(synthetic)])
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    cells = E.grid("head", "smoke")
    assert line["finding"] == "head" and line["cells"] == len(cells)
    assert line["minutes_all_cells"] > 0
    records = list(E.load_results(synthetic, "head").values())
    assert sorted(r["cell"] for r in records) == sorted(c.name for c in cells)
    for cell in cells:  # the JSON schema
        r = json.loads(E.cell_path(synthetic, cell).read_text())
        assert r["finding"] == "head" and r["profile"] == "smoke" and r["diverged"] is None
        for key in ("linear_top1", "linear_top1_z", "knn_top1", "knn_top1_z"):
            assert is_share_of(r["metrics"][key], r["val_images"]), (key, r["metrics"])
        assert r["val_images"] == 100 and r["train_images"] == 300  # 30 and 10 a class
        assert r["steps"] == 300 // 128  # one epoch
        assert r["seconds"]["train"] > 0 and r["seconds"]["measure"] >= 0
        assert {"cpu", "cores", "torch", "device"} <= set(r["machine"])
        assert r["config"]["head"] == cell.overrides["head"] and r["seed"] == 0
    none = json.loads(E.cell_path(synthetic, cells[0]).read_text())["metrics"]
    assert cells[0].overrides["head"] == "none"  # z is h: the same features, the same scores
    assert (none["knn_top1"], none["linear_top1"]) == (none["knn_top1_z"], none["linear_top1_z"])
    ran = []

    def stub(cell, *args, **kwargs):
        ran.append(cell.name)
        raise RuntimeError("stub")

    monkeypatch.setattr(E, "run_cell", stub)
    again = E.run_grid("head", "smoke", synthetic, progress=False)  # all finished: skipped
    assert ran == [] and sorted(again, key=str) == sorted(records, key=str)
    E.cell_path(synthetic, cells[1]).unlink()  # one lost cell is run again, only that one
    with pytest.raises(RuntimeError, match="stub"):
        E.run_grid("head", "smoke", synthetic, progress=False)
    assert ran == [cells[1].name]


def test_a_record_of_another_grid_stops_with_a_clear_error(synthetic):
    cell = E.grid("head", "smoke")[0]
    path = E.cell_path(synthetic, cell)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(dict(profile="laptop", overrides=cell.overrides)))
    with pytest.raises(ValueError, match="made by another grid"):
        E.run_grid("head", "smoke", synthetic, progress=False)
    config = E._jsonable(dataclasses.asdict(E.base_config("smoke", **cell.overrides)))
    path.write_text(json.dumps(dict(profile="smoke", overrides=cell.overrides,
                                    config={**config, "width": 999, "data_dir": "/elsewhere"})))
    with pytest.raises(ValueError, match=r"other settings of \['width'\]"):  # not data_dir
        E.run_grid("head", "smoke", synthetic, progress=False)
    del config["max_per_class"]  # a field the record predates had its default (None), not 100
    path.write_text(json.dumps(dict(profile="smoke", overrides=cell.overrides, config=config)))
    with pytest.raises(ValueError, match=r"other settings of \['max_per_class'\]"):
        E.run_grid("head", "smoke", synthetic, progress=False)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a readable cell record"):
        E.run_grid("head", "smoke", synthetic, progress=False)


def contrastive_recount(model, images, cfg, seed=0):
    """The share of anchors whose most similar other view is their positive, over up to 8
    batches of cfg.batch_size images, similarities in float64: the paper's contrastive acc."""
    gen, aug = torch.Generator().manual_seed(seed), SimCLRAugment.from_config(cfg)
    n = min(cfg.batch_size, len(images))
    hits = count = 0
    with torch.no_grad():
        for b in range(min(len(images) // n, 8)):
            x_i, x_j = two_views(images[b * n:(b + 1) * n], aug, gen)  # the same draws
            z = model(torch.cat([x_i, x_j]))[1].double()  # (2n, d)
            if cfg.l2_normalize:
                z = z / z.norm(dim=1, keepdim=True)
            sim = z @ z.T
            sim.fill_diagonal_(-float("inf"))
            partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])  # k <-> k + n
            hits += int((sim.argmax(1) == partner).sum())
            count += 2 * n
    return hits, count


def test_supervised_and_temperature_cells(synthetic, monkeypatch):
    built, trained = [], []
    real_build, real_supervised = E.build_model, E.train_supervised
    monkeypatch.setattr(E, "build_model", lambda cfg: built.append(real_build(cfg)) or built[-1])
    monkeypatch.setattr(E, "train_supervised", lambda *a, **k: trained.append(
        real_supervised(*a, **k)) or trained[-1])
    splits = E.grid_splits("smoke")
    val = splits.val
    sup = next(c for c in E.grid("batch_size", "smoke") if c.kind == "supervised")
    r = E.run_cell(sup, "smoke", splits)
    assert r["config"]["batch_size"] == sup.overrides["batch_size"] and r["diverged"] is None
    model = trained[0][0].eval()
    with torch.no_grad():
        hits = int((model(normalize(val.images)).argmax(1) == val.labels).sum())
    assert r["metrics"]["top1"] == pytest.approx(hits / len(val), abs=1e-6)  # a float32 mean

    dot = next(c for c in E.grid("temperature", "smoke") if not c.overrides.get(
        "l2_normalize", True))
    r = E.run_cell(dot, "smoke", splits)
    assert r["config"]["l2_normalize"] is False and r["diverged"] is None
    cfg = E.base_config("smoke", **dot.overrides)
    hits, count = contrastive_recount(built[0], val.images, cfg)
    assert count == 200  # one batch of the 100 validation images, two views each
    assert r["metrics"]["contrastive_top1"] == pytest.approx(hits / count, abs=1e-12)


class _Echo(nn.Module):
    """z = the view itself, flattened."""

    def forward(self, x):
        z = x.flatten(1)
        return z, z


class _Projection(nn.Module):
    """z = a fixed random projection of the view."""

    def __init__(self, pixels: int, dim: int = 16):
        super().__init__()
        self.w = torch.randn(pixels, dim, generator=torch.Generator().manual_seed(1))

    def forward(self, x):
        z = x.flatten(1) @ self.w
        return z, z


@pytest.mark.parametrize("l2", [True, False])
def test_contrastive_accuracy(l2):
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    cfg = get_config("smoke", batch_size=32, image_size=8, l2_normalize=l2, **E.ALL_OFF)
    # identical views (every op off): each anchor's nearest other view is its positive
    assert E.contrastive_accuracy(_Echo(), images, cfg, "cpu") == 1.0
    # real augmentations and a fixed projection: the share a float64 recount finds
    cfg = get_config("smoke", batch_size=32, image_size=8, l2_normalize=l2)
    model = _Projection(3 * 8 * 8)
    hits, count = contrastive_recount(model, images, cfg)
    assert count == 128 and 0 < hits < count  # two batches of 32 images, two views each
    assert E.contrastive_accuracy(model, images, cfg, "cpu") == pytest.approx(hits / count,
                                                                              abs=1e-9)
