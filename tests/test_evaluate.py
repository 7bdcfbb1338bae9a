import dataclasses
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from clr_lib import evaluate as E
from clr_lib.augment import normalize
from clr_lib.checkpoint import CheckpointError, save_checkpoint
from clr_lib.config import UserError, get_config
from clr_lib.data import DatasetError
from clr_lib.models import build_model


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLR_CACHE_DIR", str(tmp_path / "cache"))


# ----------------------------------------------------------------------------- features

def test_features_are_taken_in_eval_mode_whatever_the_batch():
    torch.manual_seed(0)
    model = build_model(get_config("smoke", width=4, proj_dim=8)).train()
    images = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8)
    h1, z1 = E.extract_features(model, images, batch_size=1, with_z=True)
    h7 = E.extract_features(model, images, batch_size=7)
    assert h1.shape == (7, 32) and z1.shape == (7, 8)
    assert torch.allclose(h1, h7, atol=1e-5)  # in train mode BatchNorm would mix the batch
    assert model.training  # the mode is restored
    with torch.no_grad():
        assert torch.allclose(z1, model.eval().head(h1), atol=1e-5)
    with pytest.raises(ValueError, match="SimCLR model"):
        E.extract_features(model.encoder, images, with_z=True)
    h_bf16 = E.extract_features(model, images, bf16=True)
    assert h_bf16.dtype == torch.float32 and not torch.equal(h_bf16, h1)
    assert F.cosine_similarity(h_bf16, h1).min() > 0.99


def test_features_at_another_size_are_those_of_the_resized_images():
    torch.manual_seed(0)
    model = build_model(get_config("smoke", width=4, proj_dim=8)).eval()
    images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        for size in (24, 40):
            resized = F.interpolate(normalize(images), size=(size, size), mode="bilinear",
                                    antialias=True)
            h = E.extract_features(model, images, batch_size=2, size=size)
            assert torch.allclose(h, model(resized)[0], atol=1e-5)
        assert not torch.allclose(E.extract_features(model, images, size=24),
                                  E.extract_features(model, images), atol=1e-3)
        assert torch.equal(E.extract_features(model, images, size=32),
                           E.extract_features(model, images))  # already that size: untouched
    for bad in (0, 4, -28, 28.0, "28", True):
        with pytest.raises(UserError, match=re.escape(f"size is {bad!r}: give a whole number "
                                                      "of pixels >= 8")):
            E.extract_features(model, images, size=bad)
    assert E.extract_features(model, images, size=8).shape == (5, 32)  # the smallest allowed


# ----------------------------------------------------------------------------- kNN

def knn_reference(bank, bank_labels, queries, num_classes, k, t):
    """Brute force, float64, one query at a time: Wu et al.'s weighted vote."""
    preds = []
    for q in queries.double():
        sims = [(F.cosine_similarity(q, b.double(), dim=0).item(), int(label))
                for b, label in zip(bank, bank_labels)]
        votes = [0.0] * num_classes
        for sim, label in sorted(sims, reverse=True)[:k]:
            votes[label] += np.exp(sim / t)
        preds.append(int(np.argmax(votes)))
    return torch.tensor(preds)


@pytest.mark.parametrize("k, t", [(1, 0.1), (5, 0.1), (12, 0.5), (500, 0.07)])
def test_knn_matches_brute_force(k, t):
    g = torch.Generator().manual_seed(k)
    bank, queries = torch.randn(60, 5, generator=g), torch.randn(25, 5, generator=g)
    labels = torch.randint(0, 4, (60,), generator=g)
    pred = E.knn_predict(bank, labels, queries, 4, k=k, t=t, chunk=7)  # several chunks
    assert torch.equal(pred, knn_reference(bank, labels, queries, 4, k, t))


def test_knn_weights_close_neighbours_more_than_many_far_ones():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0], [-0.1, 1.0]])
    labels = torch.tensor([0, 1, 1, 1])
    query = torch.tensor([[1.0, 0.05]])
    assert E.knn_predict(bank, labels, query, 2, k=4, t=0.1).item() == 0  # exp(10) wins
    assert E.knn_predict(bank, labels, query, 2, k=4, t=100.0).item() == 1  # a plain vote
    held_out = torch.tensor([[0.9, -0.2], [-0.3, 1.0], [0.2, 2.0]])  # not in the bank
    assert E.knn_predict(bank, labels, held_out, 2, k=1).tolist() == [0, 1, 1]
    assert E.knn_accuracy(bank, labels, held_out, torch.tensor([0, 1, 1]), k=1) == 1.0


def cosine_clusters(n_per_class, seed, classes=4, dims=8):
    """Points around ``classes`` orthogonal directions (far apart in cosine similarity)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat(n_per_class)
    points = torch.eye(classes, dims)[labels] * 5 + torch.randn(len(labels), dims, generator=g)
    return points, labels


@pytest.mark.parametrize("k", [1, 5, 20])
def test_knn_classifies_fresh_points_of_the_clusters(k):
    bank, bank_labels = cosine_clusters(15, seed=0)
    queries, query_labels = cosine_clusters(10, seed=1)  # held out: none of them in the bank
    assert E.knn_accuracy(bank, bank_labels, queries, query_labels, k=k) == 1.0
    # the votes come from the bank's labels: relabel the bank and every answer moves with it
    assert E.knn_accuracy(bank, (bank_labels + 1) % 4, queries, query_labels, k=k) == 0.0
    assert torch.equal(E.knn_predict(bank, (bank_labels + 1) % 4, queries, 4, k=k),
                       (query_labels + 1) % 4)


def devices():
    out = ["cpu", "meta"]  # meta: shapes and devices without data, so without a GPU
    return out + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", devices())
def test_knn_votes_are_built_on_the_features_device(device):
    """The labels may sit on the CPU (splits keep them there); the votes and the prediction
    are on the features' device. On meta the former CPU-built votes gave a CPU answer."""
    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(30, 6, generator=g), torch.randn(7, 6, generator=g)
    labels = torch.randint(0, 3, (30,), generator=g)
    pred = E.knn_predict(bank.to(device), labels, queries.to(device), 3, k=5, chunk=4)
    assert pred.device.type == device and pred.shape == (7,) and pred.dtype == torch.int64
    if device != "meta":
        assert torch.equal(pred.cpu(), knn_reference(bank, labels, queries, 3, 5, 0.1))


def test_nearest_neighbours_are_sorted_by_cosine_similarity():
    bank = torch.tensor([[1.0, 0.0], [3.0, 3.0], [0.0, -2.0]])
    sim, idx = E.nearest_neighbours(bank, torch.tensor([[2.0, 1.0]]), k=3)
    assert idx.tolist() == [[1, 0, 2]]
    assert sim[0, 0].item() == pytest.approx(3 / np.sqrt(10))


# ----------------------------------------------------------------------------- linear probe

def blobs(n_per_class, seed, dims=6, classes=3, spread=0.3):
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(classes, dims) * 4 + 10  # far apart, and far from the origin
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[labels] + spread * torch.randn(len(labels), dims, generator=g), labels


def test_probe_separates_a_separable_toy_set():
    x, y = blobs(30, seed=0)
    x_test, y_test = blobs(30, seed=1)
    probe = E.fit_linear_probe(x, y, 3, weight_decay=1e-4)
    assert E.accuracy(probe, x, y) == 1.0 and E.accuracy(probe, x_test, y_test) == 1.0


def test_probe_reaches_the_optimum_of_its_objective():
    x, y = blobs(40, seed=2, spread=3.0)  # overlapping classes: a finite, unique optimum
    x = x.double()
    wd = 1e-2
    probe = E.fit_linear_probe(x, y, 3, weight_decay=wd)
    w = probe.linear.weight.detach().clone().requires_grad_(True)
    b = probe.linear.bias.detach().clone().requires_grad_(True)
    xs = (x - probe.mean) / probe.std
    loss = F.cross_entropy(xs @ w.T + b, y) + wd / 2 * w.square().sum()
    gw, gb = torch.autograd.grad(loss, (w, b))
    assert gw.abs().max() < 1e-6 and gb.abs().max() < 1e-6  # the gradient vanishes
    # the same optimum as scikit-learn's (C = 1 / (N * wd) for a mean loss)
    from sklearn.linear_model import LogisticRegression
    ref = LogisticRegression(C=1 / (len(y) * wd), tol=1e-10, max_iter=10_000).fit(
        xs.numpy(), y.numpy())
    ours = torch.softmax(probe(x), 1).numpy()
    assert np.allclose(ours, ref.predict_proba(xs.numpy()), atol=1e-5)
    assert probe.std.min() > 0 and torch.allclose(probe.mean, x.mean(0))


def test_probe_chooses_the_weight_decay_on_the_selection_split():
    x, y = blobs(30, seed=3, dims=20, spread=4.0)
    xv, yv = blobs(20, seed=4, dims=20, spread=4.0)
    res = E.linear_probe(x, y, xv, yv, weight_decays=(10.0, 1e-3))
    assert res.selected_on == "val" and set(res.selection) == {10.0, 1e-3}
    assert res.selection[res.weight_decay] == max(res.selection.values())
    assert res.selection[res.weight_decay] == E.accuracy(res.probe, xv, yv)
    held = E.linear_probe(x, y, weight_decays=(10.0, 1e-3))  # no val: part of train held out
    assert held.selected_on == "train holdout"
    assert torch.allclose(held.probe.mean, x.mean(0))  # refit on all of train
    one_each = E.linear_probe(x[::30], y[::30])  # one image per class: nothing to hold out
    assert one_each.selected_on.startswith("none") and one_each.weight_decay == 1e-3
    assert E.accuracy(one_each.probe, x[::30], y[::30]) == 1.0


# ----------------------------------------------------------------------------- CLI

CLASSES = ["cat", "dog", "frog"]


def write_folder(root, classes=CLASSES, per_class=10, splits=("train", "test")):
    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cfg = get_config("smoke", width=4, proj_dim=8, knn_k=5, max_per_class=None)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("run") / "checkpoint.pt"
    save_checkpoint(path, model=build_model(cfg).state_dict(), config=dataclasses.asdict(cfg),
                    classes=CLASSES, step=0)
    return path


def run_cli(capsys, *argv):
    E.main([str(a) for a in argv])
    return json.loads(capsys.readouterr().out)


def test_cli_prints_one_json_object_with_accuracies_and_sizes(tmp_path, checkpoint, capsys):
    data = write_folder(tmp_path / "data")
    out = run_cli(capsys, checkpoint, "--data-dir", data, "--split", "test")
    assert out["split"] == "test" and out["sizes"] == {"train": 27, "val": 3, "test": 30}
    for key in ("knn_top1", "linear_top1", "knn_top1_z", "linear_top1_z"):
        assert 0.0 <= out[key] <= 1.0
    assert out["selected_on"] == "val" and out["num_classes"] == 3
    val = run_cli(capsys, checkpoint, "--data-dir", data, "--split", "val")
    assert val["split"] == "val" and val["selected_on"] == "train holdout"
    assert val["weights"] == "trained"
    floor = run_cli(capsys, checkpoint, "--data-dir", data, "--split", "val", "--random-init")
    assert floor["weights"] == "random"
    # the fixture's weights are themselves torch.manual_seed(cfg.seed) + build_model: the same
    assert (floor["knn_top1"], floor["linear_top1"]) == (val["knn_top1"], val["linear_top1"])
    assert val["eval_size"] == 32  # the checkpoint's eval_size: None, the images as they are


def test_cli_evaluates_at_the_checkpoints_eval_size_unless_told(tmp_path, capsys, monkeypatch):
    cfg = get_config("smoke", width=4, proj_dim=8, knn_k=5, max_per_class=None, eval_size=24)
    torch.manual_seed(0)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model=build_model(cfg).state_dict(), config=dataclasses.asdict(cfg),
                    classes=CLASSES, step=0)
    data = write_folder(tmp_path / "data", per_class=4)
    sizes = []
    real = E.extract_features
    monkeypatch.setattr(E, "extract_features",
                        lambda *a, **kw: sizes.append(kw["size"]) or real(*a, **kw))
    assert run_cli(capsys, path, "--data-dir", data, "--split", "val")["eval_size"] == 24
    assert run_cli(capsys, path, "--data-dir", data, "--split", "val",
                   "--eval-size", "none")["eval_size"] == 32
    assert run_cli(capsys, path, "--data-dir", data, "--split", "val",
                   "--eval-size", "36")["eval_size"] == 36
    assert run_cli(capsys, path, "--data-dir", data, "--split", "val",
                   "--eval-size", "None")["eval_size"] == 32
    assert sizes == [24, 24, None, None, 36, 36, None, None]  # train, then val, each time
    message = cli_error(path, "--data-dir", data, "--split", "val", "--eval-size", "2")
    assert message.startswith("eval_size is 2: it takes a whole number >= 8")
    assert len(sizes) == 8  # refused before any feature was taken
    with pytest.raises(SystemExit) as e:
        E.main([str(path), "--data-dir", str(data), "--eval-size", "big"])
    assert e.value.code == 2
    assert capsys.readouterr().err == ("error: argument --eval-size: takes a whole "
                                       "number or none, not 'big': see python -m "
                                       "clr_lib.evaluate --help\n")


def cli_error(checkpoint, *argv, error=UserError) -> str:
    """The message of the UserError the CLI's main raises (cli.run prints it as one line)."""
    with pytest.raises(error) as e:
        E.main([str(checkpoint), *map(str, argv)])
    return str(e.value)


def test_evaluate_model_of_an_encoder_alone_reports_h_only():
    from clr_lib.data import load_dataset
    splits = load_dataset("synthetic", max_per_class=6)
    torch.manual_seed(0)
    model = build_model(get_config("smoke", width=4, proj_dim=8))
    both = E.evaluate_model(model, splits, "test", k=5)
    alone = E.evaluate_model(model.encoder, splits, "test", k=5)
    assert set(both) - set(alone) == {"knn_top1_z", "linear_top1_z", "linear_weight_decay_z"}
    assert alone["knn_top1"] == both["knn_top1"] and alone["selected_on"] == "val"


def test_cli_errors_say_what_is_wrong(tmp_path, checkpoint):
    data = write_folder(tmp_path / "data", splits=("train",))
    missing = tmp_path / "nope.pt"
    assert cli_error(missing, "--data-dir", data, error=CheckpointError).startswith(
        f"there is no checkpoint at {missing}: ")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    assert "is a PyTorch file but not a clr_lib checkpoint" in cli_error(
        foreign, "--data-dir", data, error=CheckpointError)
    garbage = tmp_path / "garbage.pt"  # half a checkpoint, as a killed writer once left
    garbage.write_bytes(checkpoint.read_bytes()[:2000])
    assert f"{garbage} is not a PyTorch checkpoint" in cli_error(garbage, "--data-dir", data,
                                                                 error=CheckpointError)
    assert "has no test split" in cli_error(checkpoint, "--data-dir", data, "--split", "test",
                                            error=DatasetError)
    assert "report the validation split with --split val" in cli_error(
        checkpoint, "--data-dir", data, "--split", "test")
    assert f"the data folder {tmp_path / 'missing'} does not exist" in cli_error(
        checkpoint, "--data-dir", tmp_path / "missing", error=DatasetError)
    other = write_folder(tmp_path / "other", classes=["ant", "bee", "cow"], splits=("train",))
    message = cli_error(checkpoint, "--data-dir", other, "--split", "val", error=DatasetError)
    assert "differ from the checkpoint's" in message and "'ant'" in message
    tiny = write_folder(tmp_path / "tiny", per_class=1, splits=("train",))  # val: 0 images
    message = cli_error(checkpoint, "--data-dir", tiny, "--split", "val", error=DatasetError)
    assert message.startswith("the val split of ") and " is empty: " in message


def test_cli_runs_as_a_module(tmp_path, checkpoint):
    data = write_folder(tmp_path / "data", per_class=4)
    run = subprocess.run([sys.executable, "-m", "clr_lib.evaluate", str(checkpoint),
                          "--data-dir", str(data), "--split", "val"],
                         capture_output=True, text=True, check=True)
    out = json.loads(run.stdout)  # exactly one JSON object on stdout
    assert out["split"] == "val" and out["sizes"]["val"] == 3
