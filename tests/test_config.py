import pytest
import torch

from clr_lib.config import PROFILES, Config, default_profile, get_config, pick_device


def test_profiles_differ_where_they_should():
    smoke, laptop, gpu = (get_config(p) for p in PROFILES)
    assert smoke.max_per_class is not None and not smoke.download
    assert laptop.encoder == "convnet" and laptop.budget_minutes == 15.0
    assert gpu.encoder == "resnet18" and gpu.num_epochs >= 500


def test_profile_from_environment(monkeypatch):
    monkeypatch.setenv("CLR_PROFILE", "laptop")
    assert get_config().profile == "laptop"
    monkeypatch.delenv("CLR_PROFILE")
    assert default_profile() == ("gpu" if torch.cuda.is_available() else "laptop")


def test_overrides_and_unknown_names():
    assert get_config("smoke", temperature=0.2).temperature == 0.2
    with pytest.raises(TypeError, match="no field.*temprature"):
        get_config("smoke", temprature=0.2)
    with pytest.raises(ValueError, match="Unknown profile 'fast'.*CLR_PROFILE"):
        get_config("fast")


def test_replace_keeps_the_original():
    cfg = Config()
    assert cfg.replace(batch_size=64).batch_size == 64 and cfg.batch_size == 256


def test_pick_device():
    assert pick_device("cpu").type == "cpu"
    assert pick_device().type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            pick_device("cuda")
