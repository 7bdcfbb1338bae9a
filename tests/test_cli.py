"""The command lines: every mistake of the user's is ONE line on stderr, ``error: <what is
wrong>: <how to fix it>``, exit status 2, no traceback, and nothing written.

The CLIs run as real processes (``python -m clr_lib.train`` etc.). Starting one costs seconds
(importing torch), so every case is prepared and started at once by the module's fixture, a
few at a time, and each test then reads its own case's outcome.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clr_lib import cli
from clr_lib.config import UserError, get_config

# the options of the run the resume and evaluate cases start from (4 steps, a few seconds)
RUN = ["--dataset", "synthetic", "--max-per-class", "16", "--batch-size", "32", "--width", "8",
       "--knn-k", "10", "--epochs", "1"]


def cifar_host_reachable() -> bool:
    try:
        socket.create_connection(("www.cs.toronto.edu", 443), timeout=3).close()
        return True
    except OSError:
        return False


class Gadget:
    """An object no clr_lib checkpoint holds: torch.load could only rebuild it by running code."""


def image_folder(root: Path, classes: dict[str, int]) -> Path:
    """root/train/<class>/<i>.png: 32x32 random images, classes[name] of them (0: empty)."""
    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / "train" / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "train" / name / f"{i}.png")
    return root


def state_of(path: Path):
    """What is at path: None, a file's (size, mtime), or a folder's files with theirs."""
    if not path.exists():
        return None
    if path.is_file():
        return (path.stat().st_size, path.stat().st_mtime_ns)
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(path.rglob("*")) if p.is_file()}


@dataclass
class Case:
    module: str  # train | evaluate | experiments
    args: list  # the command line
    words: tuple  # what the one line must say
    watched: list  # paths that must be as they were (absent ones stay absent)


# Each case: (needs the trained run?, a function (case folder, run folder) -> Case).
def missing_data_dir(d, run):
    return Case("train", ["--data-dir", "/no/such/dir", "--out", str(d / "out")],
                ("the data folder /no/such/dir does not exist", "--data-dir"), [d / "out"])


def batch_larger_than_the_folder(d, run):
    data = image_folder(d / "data", dict(a=8, b=8, c=8))  # 7 of each class train, 1 val
    return Case("train", ["--data-dir", str(data), "--out", str(d / "out")],
                ("batch_size 128 is larger than the 21 training images: lower --batch-size",),
                [d / "out"])


def negative_temperature(d, run):
    return Case("train", ["--dataset", "synthetic", "--temperature", "-1", "--out",
                          str(d / "out")], ("temperature is -1.0: it takes a number > 0",),
                [d / "out"])


def unknown_optimizer(d, run):
    return Case("train", ["--dataset", "synthetic", "--optimizer", "adam", "--out",
                          str(d / "out")],
                ("optimizer is 'adam'", "choose one of adamw, sgd, lars, muon"), [d / "out"])


def width_not_a_number(d, run):
    return Case("train", ["--width", "x", "--out", str(d / "out")],
                ("argument --width", "'x'", "see python -m clr_lib.train --help"), [d / "out"])


def empty_class_folder(d, run):
    data = image_folder(d / "data", dict(a=8, b=0))
    return Case("train", ["--data-dir", str(data), "--batch-size", "4", "--out", str(d / "out")],
                (f"the class folder(s) {data / 'train' / 'b'} hold no files",
                 "add the class's images, or remove the folder"), [d / "out"])


def offline_download(d, run):
    (d / "data").mkdir()
    return Case("train", ["--dataset", "cifar10", "--data-dir", str(d / "data"), "--download",
                          "true", "--out", str(d / "out")],
                (f"could not download CIFAR-10 into {d / 'data'}", "cifar-10-python.tar.gz",
                 f"put it in {d / 'data'}"), [d / "out", d / "data"])


def apply_changes_without_resume(d, run):
    return Case("train", [*RUN, "--lr", "0.01", "--apply-changes", "--out", str(d / "out")],
                ("--apply-changes goes with --resume: add --resume, or drop it",), [d / "out"])


def resume_in_an_empty_folder(d, run):
    (d / "out").mkdir()
    return Case("train", [*RUN, "--resume", "--out", str(d / "out")],
                (f"there is no run to resume in {d / 'out'}", "drop --resume"), [d / "out"])


def copy_of(run, d):
    shutil.copytree(run, d / "run")
    return d / "run"


def over_an_existing_run(d, run):
    out = copy_of(run, d)
    return Case("train", [*RUN, "--out", str(out)],
                (f"{out / 'checkpoint.pt'} exists", "add --resume", "another --out"), [out])


def resume_with_another_lr(d, run):
    out = copy_of(run, d)
    return Case("train", [*RUN, "--lr", "0.01", "--resume", "--out", str(out)],
                (f"the run in {out} was made with other values (lr 0.002 -> 0.01)",
                 "another --out", "--apply-changes"), [out])


def resume_with(option, value, said):
    def case(d, run):
        out = copy_of(run, d)
        return Case("train", [*RUN, option, value, "--resume", "--out", str(out)],
                    (f"the run in {out} cannot continue with other {said}", "another --out"),
                    [out])
    return case


def evaluate_a_text_file(d, run):
    (d / "notes.txt").write_text("these are my notes, not a checkpoint\n")
    return Case("evaluate", [str(d / "notes.txt")],
                (f"{d / 'notes.txt'} is not a PyTorch checkpoint",), [d])


def evaluate_a_dict_without_the_keys(d, run):
    torch.save({"weights": torch.zeros(2)}, d / "foreign.pt")
    return Case("evaluate", [str(d / "foreign.pt")],
                (f"{d / 'foreign.pt'} is a PyTorch file but not a clr_lib checkpoint",
                 "model, config or classes"), [d])


def evaluate_a_pickled_object(d, run):
    torch.save({"model": Gadget(), "config": {}, "classes": []}, d / "gadget.pt")
    return Case("evaluate", [str(d / "gadget.pt")],
                (f"{d / 'gadget.pt'} holds objects a clr_lib checkpoint never holds",
                 "checkpoint.pt files written by python -m clr_lib.train"), [d])


def evaluate_a_missing_path(d, run):
    return Case("evaluate", [str(d / "nothing" / "checkpoint.pt")],
                (f"there is no checkpoint at {d / 'nothing' / 'checkpoint.pt'}",
                 "python -m clr_lib.train --out DIR"), [d / "nothing"])


def evaluate_at_2_pixels(d, run):
    return Case("evaluate", [str(run), "--eval-size", "2"],
                ("eval_size is 2: it takes a whole number >= 8",), [run])


def evaluate_a_test_split_that_is_not_there(d, run):
    data = image_folder(d / "data", dict(a=4, b=4, c=4))  # no test/ folder
    state = torch.load(run / "checkpoint.pt", weights_only=True)  # the run, as if trained there
    state["classes"], state["config"]["dataset"] = ["a", "b", "c"], "folder"
    torch.save(state, d / "checkpoint.pt")
    return Case("evaluate", [str(d / "checkpoint.pt"), "--data-dir", str(data), "--split",
                             "test"],
                (f"ImageFolder {data}", "has no test split", "--split val"), [d])


def experiments_missing_data_dir(d, run):
    return Case("experiments", ["head", "--profile", "smoke", "--out", str(d / "results"),
                                "--data-dir", "/no/such/dir"],
                ("the data folder /no/such/dir does not exist",), [d / "results"])


def zero_epochs(d, run):
    return Case("train", [*RUN, "--epochs", "0", "--out", str(d / "out")],
                ("--epochs is 0, so nothing would train: give 1 or more",), [d / "out"])


def out_is_a_file(d, run):
    (d / "out").write_text("a file, not a folder\n")
    return Case("train", [*RUN, "--out", str(d / "out")],
                (f"--out {d / 'out'} is a file: name a folder for the run",), [d / "out"])


def evaluate_on_an_unknown_device(d, run):
    return Case("evaluate", [str(run), "--split", "val", "--device", "gpu"],
                ("device 'gpu' is not a device name: use auto, cpu, cuda, cuda:N or mps",),
                [run])


def evaluate_with_zero_images_a_class(d, run):
    return Case("evaluate", [str(run), "--split", "val", "--max-per-class", "0"],
                ("--max-per-class is 0: give 2 or more images per class",), [run])


CASES = {
    "train: --epochs 0": (False, zero_epochs),
    "train: --out names a file": (False, out_is_a_file),
    "evaluate: --device gpu": (True, evaluate_on_an_unknown_device),
    "evaluate: --max-per-class 0": (True, evaluate_with_zero_images_a_class),
    "train: --data-dir that does not exist": (False, missing_data_dir),
    "train: the smoke batch on a small ImageFolder": (False, batch_larger_than_the_folder),
    "train: --temperature -1": (False, negative_temperature),
    "train: --optimizer adam": (False, unknown_optimizer),
    "train: --width x": (False, width_not_a_number),
    "train: an empty class folder": (False, empty_class_folder),
    "train: CIFAR-10 offline": (False, offline_download),
    "train: --apply-changes without --resume": (False, apply_changes_without_resume),
    "train: --resume in an empty folder": (False, resume_in_an_empty_folder),
    "train: over an existing run": (True, over_an_existing_run),
    "train: --resume --lr": (True, resume_with_another_lr),
    "train: --resume --proj-dim": (True, resume_with("--proj-dim", "64", "proj_dim 128 -> 64")),
    "train: --resume --proj-hidden-dim": (True, resume_with("--proj-hidden-dim", "32",
                                                            "proj_hidden_dim None -> 32")),
    "train: --resume --seed": (True, resume_with("--seed", "1", "seed 0 -> 1")),
    "train: --resume --batch-size": (True, resume_with("--batch-size", "16",
                                                       "batch_size 32 -> 16")),
    "evaluate: a text file": (False, evaluate_a_text_file),
    "evaluate: a dict without the keys": (False, evaluate_a_dict_without_the_keys),
    "evaluate: a pickled object": (False, evaluate_a_pickled_object),
    "evaluate: a missing path": (False, evaluate_a_missing_path),
    "evaluate: --eval-size 2": (True, evaluate_at_2_pixels),
    "evaluate: --split test without one": (True, evaluate_a_test_split_that_is_not_there),
    "experiments: --data-dir that does not exist": (False, experiments_missing_data_dir),
}


@dataclass
class Outcome:
    case: Case
    proc: subprocess.CompletedProcess
    before: list
    after: list


def run_cli(module, args, env, cwd):
    return subprocess.run([sys.executable, "-m", f"clr_lib.{module}", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def env(root):
    """The smoke profile; no data folder named; caches and runs in the test's folder."""
    env = {k: v for k, v in os.environ.items() if k != "CLR_DATA_DIR"}
    return {**env, "CLR_PROFILE": "smoke", "CLR_CACHE_DIR": str(root / "cache"),
            "CLR_RUNS_DIR": str(root / "runs")}


@pytest.fixture(scope="module")
def outcomes(root, env):
    """Train one tiny run, and run every case, three processes at a time."""
    online = cifar_host_reachable()  # then the offline case would download 170 MB: skipped

    def train_the_run():
        proc = run_cli("train", [*RUN, "--out", str(root / "run")], env, root)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return root / "run"

    def one(name, needs_run, make):
        run = trained.result() if needs_run else None
        folder = root / f"case{list(CASES).index(name)}"
        folder.mkdir()
        case = make(folder, run)
        before = [state_of(p) for p in case.watched]
        proc = run_cli(case.module, case.args, env, folder)
        return Outcome(case, proc, before, [state_of(p) for p in case.watched])

    def apply_changes():
        out = root / "applied"
        shutil.copytree(trained.result(), out)
        return out, run_cli("train", [*RUN, "--epochs", "2", "--lr", "0.01", "--resume",
                                      "--apply-changes", "--out", str(out)], env, root)

    with ThreadPoolExecutor(max_workers=3) as pool:
        trained = pool.submit(train_the_run)
        futures = {name: pool.submit(one, name, needs_run, make)
                   for name, (needs_run, make) in sorted(CASES.items(), key=lambda c: c[1][0])
                   if not (online and make is offline_download)}
        futures["apply changes"] = pool.submit(apply_changes)
        yield dict(futures, trained=trained)


@pytest.mark.parametrize("name", list(CASES))
def test_a_user_error_is_one_line_exit_2_and_writes_nothing(outcomes, name):
    if name not in outcomes:
        pytest.skip("the CIFAR-10 host is reachable from here: the offline case cannot be made")
    o = outcomes[name].result()
    out, err = o.proc.stdout, o.proc.stderr
    assert "Traceback" not in out + err, err[-3000:]
    assert err.splitlines() == [err.rstrip("\n")] and err.startswith("error: "), err
    assert o.proc.returncode == 2, err
    for words in o.case.words:
        assert words in err, (words, err)
    assert out == ""
    assert o.after == o.before  # nothing written, nothing changed
    if name.startswith("evaluate: a pickled"):
        assert "weights_only" not in err  # never the advice to load it by running its code


def test_resume_with_apply_changes_continues_and_records_them(outcomes):
    out, proc = outcomes["apply changes"].result()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["steps"] == 8
    history = json.loads((out / "history.json").read_text())
    assert history["changes"] == [dict(step=4, changes=dict(lr=[0.002, 0.01]))]
    assert history["step"] == list(range(1, 9))
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert [g["peak_lr"] for g in state["optimizer"]["param_groups"]] == \
        pytest.approx([0.01 * 32 / 256] * 2)
    assert state["config"]["lr"] == 0.01


# ----------------------------------------------------------------------------- in-process

def test_cli_options_come_from_the_config():
    args = cli.config_parser("x", "a test").parse_args(
        ["--profile", "smoke", "--crop-scale", "0.2", "1", "--budget-minutes", "2.5",
         "--max-per-class", "none", "--blur", "true", "--temperature", "0.2", "--bf16", "false",
         "--eval-size", "28", "--proj-hidden-dim", "None"])
    cfg = cli.config_from_args(args)
    assert cfg.crop_scale == (0.2, 1.0) and cfg.budget_minutes == 2.5
    assert cfg.max_per_class is None and cfg.blur is True and cfg.temperature == 0.2
    assert cfg.bf16 is False and cfg.eval_size == 28 and cfg.proj_hidden_dim is None
    assert cfg.width == get_config("smoke").width  # not given: the profile's


@pytest.mark.parametrize("argv, words", [
    (["--blur", "maybe"], "argument --blur: takes true or false, not 'maybe'"),
    (["--eval-size", "28.5"], "argument --eval-size: takes a whole number or none, not '28.5'"),
    (["--profile", "fast"], "argument --profile: invalid choice: 'fast'"),
    (["--crop-scale", "0.2"], "argument --crop-scale: expected 2 arguments"),
])
def test_a_bad_option_is_one_line(capsys, argv, words):
    with pytest.raises(SystemExit) as stop:
        cli.config_parser("prog", "a test").parse_args(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.splitlines() == [err.rstrip("\n")]
    assert err.startswith(f"error: {words}") and err.endswith(": see prog --help\n")


def test_run_turns_errors_into_one_line(capsys):
    def user_error(argv):
        raise UserError("the thing is wrong:\n   fix it\tlike so")

    def diverged(argv):
        raise FloatingPointError("the loss became nan at step 3: try a lower --lr")

    with pytest.raises(SystemExit) as stop:
        cli.run(user_error, [])
    assert stop.value.code == 2
    assert capsys.readouterr().err == "error: the thing is wrong: fix it like so\n"
    with pytest.raises(SystemExit) as stop:
        cli.run(diverged, [])
    assert stop.value.code == 1
    assert capsys.readouterr().err == "error: the loss became nan at step 3: try a lower --lr\n"
    with pytest.raises(KeyError):  # a bug of ours is not a user error: it keeps its traceback
        cli.run(lambda argv: {}["missing"], [])
