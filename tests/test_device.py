import pytest
import torch

from clr_lib import device as D
from clr_lib.config import UserError, get_config
from clr_lib.device import pick_device, use_bf16


def test_pick_device():
    assert pick_device("cpu").type == "cpu"
    assert pick_device().type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="^device 'cuda' is not available here: use device "
                                            "'auto' or 'cpu'"):
            pick_device("cuda")


def test_use_bf16(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_bf16(get_config("smoke", bf16=True), cpu) is True
    assert use_bf16(get_config("smoke", bf16=False), cuda) is False
    assert use_bf16(get_config("smoke"), cuda) is True
    for amx in (True, False):  # on a CPU, where it has AMX tiles
        monkeypatch.setattr(D.torch.cpu, "_is_amx_tile_supported", lambda: amx)
        assert use_bf16(get_config("smoke"), cpu) is amx
