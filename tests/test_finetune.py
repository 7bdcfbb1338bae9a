import pytest
import torch

from clr_lib import finetune as FT
from clr_lib.config import get_config
from clr_lib.data import ImageData, make_synthetic
from clr_lib.models import build_encoder


@pytest.fixture(scope="module")
def data():
    return make_synthetic(64, seed=0, image_size=16)


def encoder():
    torch.manual_seed(0)
    return build_encoder("convnet", width=4)


def test_finetuning_lowers_the_loss_and_leaves_the_encoder_alone(data):
    two = data.subset(torch.nonzero(data.labels < 2).flatten())  # discs vs squares
    two = ImageData(two.images, two.labels, data.classes[:2])
    f = encoder()
    before = {k: v.clone() for k, v in f.state_dict().items()}
    model, history = FT.finetune(f, two, steps=40, lr=3e-3, batch_size=16, progress=False)
    losses = history["loss"]
    assert len(losses) == 40 and history["step"][-1] == 40
    assert sum(losses[-8:]) / 8 < 0.85 * sum(losses[:8]) / 8
    assert not model.training and model.fc.out_features == 2
    assert all(torch.equal(v, f.state_dict()[k]) for k, v in before.items())  # a copy trained
    assert any(not torch.equal(v, model.encoder.state_dict()[k]) for k, v in before.items())


def test_finetuning_is_deterministic_by_seed(data):
    runs = [FT.finetune(encoder(), data, steps=3, batch_size=8, seed=s, progress=False)[1]["loss"]
            for s in (1, 1, 2)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_a_budget_sets_the_number_of_steps_from_the_first_10(data, monkeypatch):
    timed = []

    def steps_in_budget(steps, seconds, budget_s):
        timed.append((list(steps), list(seconds), budget_s))
        return 25  # as if 25 steps fitted in the budget
    monkeypatch.setattr(FT, "steps_in_budget", steps_in_budget)
    _, history = FT.finetune(encoder(), data, budget_minutes=0.5, batch_size=8, progress=False)
    seconds = history["seconds"]
    assert timed == [([1, 10], [seconds[0], seconds[9]], 30.0)]  # once, after 10 steps
    assert history["step"] == list(range(1, 26))
    with pytest.raises(ValueError, match="either steps or budget_minutes"):
        FT.finetune(encoder(), data, progress=False)
    with pytest.raises(ValueError, match="either steps or budget_minutes"):
        FT.finetune(encoder(), data, steps=3, budget_minutes=1.0, progress=False)


def test_supervised_baseline_gets_the_pretraining_budget(data):
    cfg = get_config("smoke", width=4, batch_size=16, num_epochs=2, image_size=16)
    model, history = FT.train_supervised(cfg, data, progress=False)
    assert len(history["step"]) == 2 * (64 // 16)
    assert model.fc.out_features == len(data.classes)


def test_a_saved_supervised_baseline_loads_into_supervised_classifier(data):
    cfg = get_config("smoke", width=4, feature_dim=24, batch_size=16, num_epochs=1,
                     image_size=16)
    trained, _ = FT.train_supervised(cfg, data, progress=False)
    fresh = FT.supervised_classifier(cfg, len(data.classes))
    fresh.load_state_dict(trained.state_dict())  # the same shapes: h of 24, not 8 x width
    assert fresh.feature_dim == trained.feature_dim == 24


def test_crop_and_flip_only_for_finetuning():
    aug = FT.finetune_augment(get_config("smoke"))
    assert aug.color_p == 0 and aug.gray_p == 0 and aug.blur_p == 0 and aug.crop
    assert aug.size == 32 and aug.flip_p == 0.5


class Brightness(torch.nn.Module):
    """A 'classifier' of images by brightness: dark 0, grey 1, bright 2."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))  # extract_features looks for a device

    def forward(self, x):
        m = x.mean((1, 2, 3))  # normalised pixels: about -1.9, 0.0 and 2.0
        return torch.nn.functional.one_hot((m > -1).long() + (m > 1).long(), 3).float()


def test_classifier_accuracy_counts_hits():
    labels = torch.tensor([0, 1, 2, 0])
    images = torch.tensor([0, 128, 255, 255], dtype=torch.uint8).view(4, 1, 1, 1).expand(
        4, 3, 2, 2)
    assert FT.classifier_accuracy(Brightness(), ImageData(images, labels, list("abc"))) == 0.75


def test_classifier_accuracy_at_another_size():
    sizes = []

    class Recording(Brightness):
        def forward(self, x):
            sizes.append(tuple(x.shape[-2:]))
            return super().forward(x)
    labels = torch.tensor([0, 1, 2, 0])
    images = torch.tensor([0, 128, 255, 255], dtype=torch.uint8).view(4, 1, 1, 1).expand(
        4, 3, 2, 2)
    data = ImageData(images, labels, list("abc"))
    assert FT.classifier_accuracy(Recording(), data, size=8) == 0.75  # flat images stay flat
    assert FT.classifier_accuracy(Recording(), data) == 0.75
    assert sizes == [(8, 8), (2, 2)]
