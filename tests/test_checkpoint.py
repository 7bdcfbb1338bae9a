"""clr_lib.checkpoint: atomic writes, run folders, and loading only what a run wrote."""

import dataclasses
import io
import json

import pytest
import torch

from clr_lib import checkpoint as C
from clr_lib.checkpoint import (CHECKPOINT, CheckpointError, load_checkpoint,
                                model_from_checkpoint, runs_dir, save_checkpoint, save_json)
from clr_lib.config import UserError, get_config
from clr_lib.models import build_model

CLASSES = ["cat", "dog", "frog"]


def small_config(**changes):
    return get_config("smoke", width=4, proj_dim=8, **changes)


def state_of(model, cfg, step=0):
    return dict(model=model.state_dict(), config=dataclasses.asdict(cfg), classes=CLASSES,
                step=step)


def files_in(folder):
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------- round trip

def test_model_from_checkpoint_gives_back_the_network_and_its_config(tmp_path):
    cfg = small_config(temperature=0.3, crop_scale=(0.2, 1.0))
    torch.manual_seed(0)
    model = build_model(cfg)
    path = tmp_path / "run" / CHECKPOINT  # the run folder does not exist yet
    save_checkpoint(path, **state_of(model, cfg, step=7))
    assert files_in(tmp_path / "run") == [CHECKPOINT]  # no temporary file left behind
    state = load_checkpoint(tmp_path / "run")  # the run folder stands for its checkpoint
    assert state["step"] == 7 and state["classes"] == CLASSES
    rebuilt, rebuilt_cfg = model_from_checkpoint(state)
    assert rebuilt_cfg == cfg
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(),
                                                 model.state_dict().values()))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        h, z = model.eval()(x)
        h2, z2 = rebuilt.eval()(x)
    assert torch.equal(h, h2) and torch.equal(z, z2)
    torch.manual_seed(1)
    other = build_model(cfg).eval()  # the control: the same shapes, other weights
    with torch.no_grad():
        assert not torch.allclose(other(x)[0], h)


# ----------------------------------------------------------------------------- atomic writes

def killed_half_way(monkeypatch):
    """torch.save that writes half of the file and is then killed (e.g. Ctrl-C)."""
    real_save = torch.save

    def save(obj, f):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])
        f.flush()
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", save)


def test_a_save_killed_half_way_leaves_the_old_checkpoint_and_no_temporary_file(tmp_path,
                                                                                  monkeypatch):
    cfg = small_config()
    model = build_model(cfg)
    path = tmp_path / CHECKPOINT
    save_checkpoint(path, **state_of(model, cfg, step=1))
    before = path.read_bytes()
    killed_half_way(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, **state_of(model, cfg, step=2))
    assert files_in(tmp_path) == [CHECKPOINT]
    assert path.read_bytes() == before
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1


def test_a_first_save_killed_half_way_leaves_nothing(tmp_path, monkeypatch):
    killed_half_way(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / CHECKPOINT, model={}, config={}, classes=[])
    assert files_in(tmp_path) == []


def test_save_json_is_readable_and_atomic(tmp_path):
    path = tmp_path / "history.json"
    record = {"loss": [4.1, 3.9], "knn": {"10": 0.31}, "note": "é"}
    save_json(path, record)
    assert json.loads(path.read_text()) == record
    save_json(path, record, indent=2)
    assert path.read_text() == json.dumps(record, indent=2) + "\n"
    with pytest.raises(TypeError):  # a set is not JSON: nothing is written
        save_json(path, {"classes": {"cat"}})
    assert json.loads(path.read_text()) == record
    assert files_in(tmp_path) == ["history.json"]


# ----------------------------------------------------------------------------- load errors

def test_a_missing_checkpoint_says_how_to_train_one(tmp_path):
    for where, named in ((tmp_path / "nope.pt", tmp_path / "nope.pt"),
                         (tmp_path, tmp_path / CHECKPOINT)):  # a run folder without one
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(where)
        assert str(e.value).startswith(f"there is no checkpoint at {named}: train one first")
        assert isinstance(e.value, UserError) and isinstance(e.value, ValueError)


@pytest.mark.parametrize("contents", [b"", b"PK\x03\x04 a zip that ends here"],
                         ids=["empty", "broken-zip"])
def test_a_file_torch_cannot_read_is_not_a_pytorch_checkpoint(tmp_path, contents):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(contents)
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint \\(torch.load cannot"):
        load_checkpoint(path)


def test_half_a_checkpoint_is_not_a_pytorch_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model={"w": torch.zeros(1000)}, config={}, classes=[])
    path.write_bytes(path.read_bytes()[:2000])  # what a writer killed without atomic_write left
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint"):
        load_checkpoint(path)


def test_a_text_file_is_not_a_pytorch_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("not a checkpoint")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert "is not a PyTorch checkpoint" in str(e.value)


@pytest.mark.parametrize("contents", [{"weights": torch.zeros(2)},
                                      {"model": {}, "config": {}},  # no classes
                                      torch.zeros(3), [1, 2, 3]],
                         ids=["other-keys", "no-classes", "a-tensor", "a-list"])
def test_a_pytorch_file_without_model_config_and_classes_is_not_a_clr_lib_checkpoint(
        tmp_path, contents):
    path = tmp_path / "foreign.pt"
    torch.save(contents, path)
    with pytest.raises(CheckpointError, match="is a PyTorch file but not a clr_lib checkpoint"):
        load_checkpoint(path)


CODE_RAN = []


def _record_that_code_ran(what):
    CODE_RAN.append(what)
    return what


class RunsCodeWhenLoaded:
    """Unpickling this calls _record_that_code_ran: what a malicious file would do."""

    def __reduce__(self):
        return _record_that_code_ran, ("code from the file ran",)


def test_a_file_that_needs_running_code_is_refused_without_running_it(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": RunsCodeWhenLoaded(), "config": {}, "classes": []}, path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    message = str(e.value)
    assert "holds objects a clr_lib checkpoint never holds" in message
    assert "running code from the file" in message
    assert "weights_only" not in message  # never a hint to load it unsafely
    assert e.value.__cause__ is None and e.value.__suppress_context__  # nor torch's own hint
    assert CODE_RAN == []
    torch.load(path, weights_only=False)  # the control: loading it unsafely runs the code
    assert CODE_RAN == ["code from the file ran"]
    CODE_RAN.clear()


# ----------------------------------------------------------------------------- runs_dir

def test_runs_dir_is_clr_runs_dir_else_runs_in_the_project(tmp_path, monkeypatch):
    monkeypatch.setenv("CLR_RUNS_DIR", str(tmp_path / "elsewhere"))
    assert runs_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("CLR_RUNS_DIR")
    monkeypatch.setattr(C, "project_dir", lambda: tmp_path / "course")
    assert runs_dir() == tmp_path / "course" / "runs"
