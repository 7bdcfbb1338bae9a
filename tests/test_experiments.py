import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from clr_lib import experiments as E
from clr_lib.config import get_config


@pytest.fixture
def synthetic(monkeypatch, tmp_path):
    """Cells of the smoke grid on the synthetic set (no data folder), results in tmp_path."""
    monkeypatch.setenv("CLR_DATA_DIR", str(tmp_path / "no-data-here"))
    return tmp_path / "results"


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
    with pytest.raises(ValueError, match="Unknown finding 'colour'"):
        E.grid("colour")
    with pytest.raises(ValueError, match="No grid for profile 'tiny'"):
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
            assert 0.0 <= r["metrics"][key] <= 1.0
        assert r["steps"] > 0 and r["train_images"] > 0 and r["val_images"] > 0
        assert r["seconds"]["train"] > 0 and r["seconds"]["measure"] >= 0
        assert {"cpu", "cores", "torch", "device"} <= set(r["machine"])
        assert r["config"]["head"] == cell.overrides["head"] and r["seed"] == 0
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


def test_supervised_and_temperature_cells(synthetic):
    splits = E.grid_splits("smoke")
    sup = next(c for c in E.grid("batch_size", "smoke") if c.kind == "supervised")
    r = E.run_cell(sup, "smoke", splits)
    assert 0.0 <= r["metrics"]["top1"] <= 1.0
    assert r["config"]["batch_size"] == sup.overrides["batch_size"]
    dot = next(c for c in E.grid("temperature", "smoke") if not c.overrides.get(
        "l2_normalize", True))
    r = E.run_cell(dot, "smoke", splits)
    assert r["config"]["l2_normalize"] is False
    assert r["diverged"] or 0.0 <= r["metrics"]["contrastive_top1"] <= 1.0


class _Echo(nn.Module):
    """z = the view itself, flattened; or noise that ignores the view."""

    def __init__(self, noise: bool = False):
        super().__init__()
        self.noise = noise

    def forward(self, x):
        z = torch.randn(len(x), 64) if self.noise else x.flatten(1)
        return z, z


@pytest.mark.parametrize("l2", [True, False])
def test_contrastive_accuracy(l2):
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    cfg = get_config("smoke", batch_size=32, image_size=8, l2_normalize=l2, **E.ALL_OFF)
    # identical views (every op off): each anchor's nearest other view is its positive
    assert E.contrastive_accuracy(_Echo(), images, cfg, "cpu") == 1.0
    torch.manual_seed(0)  # embeddings that ignore the image: about 1 / (2N - 1)
    assert E.contrastive_accuracy(_Echo(noise=True), images, cfg, "cpu") < 0.2
