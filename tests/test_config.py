import dataclasses

import pytest
import torch

from clr_lib.config import (ENCODERS, HEADS, OPTIMIZERS, PROFILES, SCHEDULES, Config, UserError,
                            default_profile, get_config)


def test_profiles_differ_where_they_should():
    smoke, laptop, gpu = (get_config(p) for p in PROFILES)
    assert smoke.max_per_class is not None and not smoke.download
    assert laptop.encoder == "convnet" and laptop.budget_minutes == 15.0
    assert gpu.encoder == "resnet18" and gpu.num_epochs >= 500


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_builds(profile):
    cfg = get_config(profile)
    assert isinstance(cfg, Config) and cfg.profile == profile
    assert Config.from_dict(dataclasses.asdict(cfg)) == cfg  # and survives a checkpoint


def test_the_default_config_is_the_papers_recipe():
    cfg = Config()
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum) == ("lars", 0.3, 1e-6, 0.9)
    assert cfg.temperature == 0.5 and cfg.l2_normalize
    assert cfg.crop_scale == (0.08, 1.0) and cfg.crop_ratio == (3 / 4, 4 / 3)
    assert cfg.head == "nonlinear" and cfg.proj_dim == 128 and cfg.n_views == 2
    assert cfg.lr_schedule == "cosine" and cfg.color_strength == 0.5 and not cfg.blur


# The values the tests and notebooks were written against; the second edition moved the
# paper's recipe into the defaults, so the smoke preset now names its optimiser itself.
SMOKE = dict(max_per_class=100, download=False, width=16, batch_size=128, optimizer="adamw",
             lr=2e-3, weight_decay=1e-4, num_epochs=1, eval_every=0, knn_k=20, warmup_epochs=0.0,
             temperature=0.5, crop_scale=(0.08, 1.0), n_views=2, encoder="convnet",
             feature_dim=None, eval_size=None, view_size=None, lr_schedule="cosine",
             budget_minutes=None, momentum=0.9)
LAPTOP = dict(encoder="convnet", width=32, feature_dim=1024, view_size=16, eval_size=28,
              crop_scale=(0.2, 1.0), temperature=0.2, batch_size=64, n_views=8, optimizer="muon",
              lr=8e-3, muon_lr=0.05, ns_steps=3, momentum=0.95, weight_decay=0.05,
              lr_schedule="linear", warmup_epochs=0.25, budget_minutes=15.0, eval_every=3,
              max_per_class=None, download=True, proj_dim=128, knn_k=200)
GPU = dict(encoder="resnet18", batch_size=512, optimizer="lars", lr=0.3, weight_decay=1e-6,
           temperature=0.5, num_epochs=800, warmup_epochs=10.0, eval_every=10, compile=True)


@pytest.mark.parametrize("profile, values", [("smoke", SMOKE), ("laptop", LAPTOP), ("gpu", GPU)])
def test_the_presets_are_unchanged(profile, values):
    cfg = dataclasses.asdict(get_config(profile))
    assert {k: cfg[k] for k in values} == values


def test_profile_from_environment(monkeypatch):
    monkeypatch.setenv("CLR_PROFILE", "laptop")
    assert get_config().profile == "laptop"
    monkeypatch.setenv("CLR_PROFILE", "fast")
    with pytest.raises(UserError, match="^unknown profile 'fast': choose one of smoke, laptop, "
                                        "gpu.*CLR_PROFILE"):
        get_config()
    monkeypatch.delenv("CLR_PROFILE")
    assert default_profile() == ("gpu" if torch.cuda.is_available() else "laptop")


def test_overrides_and_unknown_names():
    assert get_config("smoke", temperature=0.2).temperature == 0.2
    with pytest.raises(UserError, match="^Config has no field temprature: the fields are "
                                        "profile, dataset, "):
        get_config("smoke", temprature=0.2)
    with pytest.raises(UserError, match="^Config has no field temprature"):
        Config().replace(temprature=0.2)
    with pytest.raises(UserError, match="^unknown profile 'fast': choose one of smoke, laptop, "
                                        "gpu"):
        get_config("fast")


def test_replace_keeps_the_original():
    cfg = Config()
    assert cfg.replace(batch_size=64).batch_size == 64 and cfg.batch_size == 256


def test_from_dict_reads_a_saved_config():
    saved = {**dataclasses.asdict(get_config("smoke")), "crop_scale": [0.2, 1.0],  # from JSON
             "a_field_since_removed": 3}
    del saved["n_views"]  # a field the record predates keeps its default
    cfg = Config.from_dict(saved)
    assert cfg == get_config("smoke", crop_scale=(0.2, 1.0))
    with pytest.raises(UserError, match="^temperature is 0"):
        Config.from_dict({**saved, "temperature": 0})


# (field, a bad value, what the message says after "<field> is <value>: ")
BAD = [
    ("temperature", -1, "it takes a number > 0; the paper uses 0.5"),
    ("temperature", 0.0, "it takes a number > 0"),
    ("temperature", float("nan"), "it takes a number > 0"),
    ("temperature", "0.5", "it takes a number > 0"),
    ("lr", 0, "it takes a number > 0"),
    ("muon_lr", float("inf"), "it takes a number > 0"),
    ("crop_scale", (0.5, 0.2), "it takes two numbers, min <= max, each in (0, 1]"),
    ("crop_scale", (0.0, 1.0), "it takes two numbers, min <= max, each in (0, 1]"),
    ("crop_scale", (0.2, 1.5), "it takes two numbers, min <= max, each in (0, 1]"),
    ("crop_ratio", (1.0,), "it takes two numbers, min <= max, each in (0, inf]"),
    ("batch_size", 1, "it takes a whole number >= 2"),
    ("batch_size", 32.0, "it takes a whole number >= 2"),
    ("batch_size", True, "it takes a whole number >= 2"),
    ("n_views", 1, "it takes a whole number >= 2"),
    ("width", 0, "it takes a whole number >= 1"),
    ("ns_steps", 0, "it takes a whole number >= 1"),
    ("num_epochs", -1, "it takes a whole number >= 0"),
    ("seed", -1, "it takes a whole number >= 0"),
    ("image_size", 4, "it takes a whole number >= 8"),
    ("eval_size", 4, "it takes a whole number >= 8 or None"),
    ("eval_size", 28.5, "it takes a whole number >= 8 or None"),
    ("eval_size", "28", "it takes a whole number >= 8 or None"),
    ("max_per_class", 0, "it takes a whole number >= 1 or None"),
    ("proj_hidden_dim", 0, "it takes a whole number >= 1 or None"),
    ("optimizer", "adam", "choose one of adamw, sgd, lars, muon"),
    ("lr_schedule", "cos", "choose one of cosine, linear"),
    ("encoder", "resnet34", "choose one of convnet, resnet18, resnet50"),
    ("head", "mlp", "choose one of none, linear, nonlinear"),
    ("dataset", "imagenet", "choose one of auto, cifar10, folder, synthetic"),
    ("device", "gpu", "choose auto, cpu, cuda, cuda:N or mps"),
    ("val_fraction", 1.0, "it takes a number between 0 and 1"),
    ("val_fraction", 0.0, "it takes a number between 0 and 1"),
    ("momentum", 1.0, "it takes a number from 0 to 0.999"),
    ("flip_p", 1.5, "it takes a number from 0 to 1"),
    ("weight_decay", -1e-4, "it takes a number from 0 to inf"),
    ("budget_minutes", 0, "it takes minutes > 0, or None"),
    ("download", "no", "it takes True or False"),
    ("bf16", "yes", "it takes True, False or None"),
]


@pytest.mark.parametrize("field, bad, how", BAD, ids=[f"{f}={b!r}" for f, b, _ in BAD])
def test_every_field_is_checked_and_the_message_names_it(field, bad, how):
    with pytest.raises(UserError) as error:
        get_config("smoke", **{field: bad})
    assert str(error.value).startswith(f"{field} is {bad!r}: {how}")
    with pytest.raises(UserError, match=f"^{field} is "):
        Config().replace(**{field: bad})  # a copy is checked too
    with pytest.raises(UserError, match=f"^{field} is "):
        Config(**{field: bad})


@pytest.mark.parametrize("field, choices", [("optimizer", OPTIMIZERS), ("encoder", ENCODERS),
                                            ("head", HEADS), ("lr_schedule", SCHEDULES)])
def test_every_choice_is_accepted(field, choices):
    for choice in choices:
        assert getattr(get_config("smoke", **{field: choice}), field) == choice


def test_good_edge_values_are_accepted():
    cfg = get_config("smoke", batch_size=2, n_views=2, eval_size=8, num_epochs=0, momentum=0.0,
                     crop_scale=(1.0, 1.0), flip_p=1.0, weight_decay=0.0, budget_minutes=0.5,
                     device="cuda:1", bf16=None, val_fraction=0.5, max_per_class=None)
    assert cfg.crop_scale == (1.0, 1.0) and cfg.device == "cuda:1"
    assert get_config("smoke", crop_scale=[0.2, 1.0]).crop_scale == (0.2, 1.0)  # a list: a tuple
