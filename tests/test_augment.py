"""Tests for clr_lib/augment.py: the batched view generator against torchvision's reference.

Agreement with torchvision is checked two ways:
- same maths: given the same drawn parameters t, ``apply_params`` equals torchvision's
  functional ops image by image (max abs difference < 1e-4);
- same law: over N_LAW draws, ``sample_params`` and torchvision v2's own ``make_params``
  give the same distributions. Continuous quantities: two-sample Kolmogorov-Smirnov test,
  rejected when p < ALPHA. Rates: exact binomial test of the count against p, rejected when
  p-value < ALPHA. The seeds are fixed, so the outcome is deterministic; the negative controls
  show that the same tests reject a family that is slightly wrong.
"""


import pytest
import torch
from scipy import stats
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from clr_lib.augment import (CIFAR10_MEAN, CIFAR10_STD, JITTER_OPS, SimCLRAugment, apply_params,
                             augment_batch, denormalize, make_views, normalize, reference_transform,
                             sample_params, two_views)

N_LAW = 4000  # draws per law test
ALPHA = 1e-3  # reject agreement when a p-value is below this
ALL_OFF = SimCLRAugment(crop=False, flip_p=0.0, color_p=0.0, gray_p=0.0, blur_p=0.0)
ALL_ON = SimCLRAugment(color_p=0.8, gray_p=0.3, blur_p=0.5)  # blur on to test it too


def images(n=8, seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- shapes, dtypes, ranges -------------------------------------------------------------------

def test_shapes_dtypes_and_ranges():
    x = images(8)
    v = augment_batch(x, ALL_ON, gen())
    assert v.shape == (8, 3, 32, 32) and v.dtype == torch.float32 and torch.isfinite(v).all()
    lo = (0 - torch.tensor(CIFAR10_MEAN)) / torch.tensor(CIFAR10_STD)
    hi = (1 - torch.tensor(CIFAR10_MEAN)) / torch.tensor(CIFAR10_STD)
    assert (v >= lo.view(1, 3, 1, 1) - 1e-5).all() and (v <= hi.view(1, 3, 1, 1) + 1e-5).all()
    raw = augment_batch(x, ALL_ON.replace(normalize=False), gen())
    assert raw.min() >= 0 and raw.max() <= 1
    assert augment_batch(x, ALL_ON.replace(size=24), gen()).shape == (8, 3, 24, 24)
    assert augment_batch(x.float() / 255, ALL_ON, gen()).shape == (8, 3, 32, 32)  # float input


def test_two_views_pairs_rows_of_the_same_images():
    x = images(6)
    x_i, x_j = two_views(x, SimCLRAugment(), gen())
    assert x_i.shape == x_j.shape == (6, 3, 32, 32)
    assert not torch.allclose(x_i, x_j)
    # With crop and flip only, the two views of image k have the same pixel histogram up to
    # interpolation: their means are far closer to each other than to other images' views.
    geo = SimCLRAugment(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), color_p=0, gray_p=0)
    a, b = two_views(x, geo, gen())
    assert torch.allclose(a.mean((1, 2, 3)), b.mean((1, 2, 3)), atol=1e-5)


def test_make_views_gives_count_views_and_two_of_them_are_two_views():
    x = images(5)
    views = make_views(x, 3, SimCLRAugment(), gen())
    assert len(views) == 3 and all(v.shape == (5, 3, 32, 32) for v in views)
    assert not torch.allclose(views[0], views[2])
    pair = make_views(x, 2, SimCLRAugment(), gen())
    assert all(torch.equal(a, b) for a, b in zip(pair, two_views(x, SimCLRAugment(), gen())))
    geo = SimCLRAugment(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), color_p=0, gray_p=0)
    means = torch.stack([v.mean((1, 2, 3)) for v in make_views(x, 4, geo, gen())])  # (4, 5)
    assert torch.allclose(means, means[:1].expand(4, -1), atol=1e-5)  # row k: image k


def test_identity_when_every_op_is_off():
    x = images(8)
    assert torch.allclose(augment_batch(x, ALL_OFF, gen()), normalize(x), atol=1e-5)
    raw = augment_batch(x, ALL_OFF.replace(normalize=False), gen())
    assert torch.allclose(raw, x.float() / 255, atol=1e-5)
    assert torch.allclose(denormalize(normalize(x)), x.float() / 255, atol=1e-5)
    # a crop whose box is always the whole image is the identity too
    full = ALL_OFF.replace(crop=True, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    assert torch.allclose(augment_batch(x, full, gen()), normalize(x), atol=1e-5)


def test_reproducible_with_a_seeded_generator():
    x = images(16)
    assert torch.equal(augment_batch(x, ALL_ON, gen(3)), augment_batch(x, ALL_ON, gen(3)))
    assert not torch.allclose(augment_batch(x, ALL_ON, gen(3)), augment_batch(x, ALL_ON, gen(4)))


def test_every_image_gets_its_own_parameters():
    x = images(1).repeat(256, 1, 1, 1)  # one image, 256 times
    v, t = augment_batch(x, SimCLRAugment(), gen(), return_params=True)
    boxes = torch.stack([t["top"], t["left"], t["height"], t["width"]], 1)
    assert len(torch.unique(boxes, dim=0)) > 200
    assert 0 < t["flip"].sum() < 256 and 0 < t["gray"].sum() < 256
    assert len(torch.unique(t["brightness"])) == 256
    assert len(torch.unique(v.flatten(1), dim=0)) == 256  # all views differ
    # v2 on a batch tensor draws one set of parameters for all: the reason augment_batch exists
    same = v2.RandomResizedCrop(32)(x)
    assert torch.equal(same[0], same[-1])


def test_sample_params_are_valid():
    t = sample_params(2000, SimCLRAugment(), 32, 32, gen())
    assert (t["top"] >= 0).all() and (t["top"] + t["height"] <= 32).all()
    assert (t["left"] >= 0).all() and (t["left"] + t["width"] <= 32).all()
    assert (t["height"] > 0).all() and (t["width"] > 0).all()
    assert torch.equal(t["order"].sort(1).values, torch.arange(4).expand(2000, 4))
    for k, (lo, hi) in SimCLRAugment().jitter_ranges().items():
        assert (t[k] >= lo).all() and (t[k] <= hi).all()


def test_from_config():
    from clr_lib.config import get_config
    cfg = get_config("smoke")
    aug = SimCLRAugment.from_config(cfg)
    assert (aug.size, aug.crop_scale, aug.color_strength) == (32, (0.08, 1.0), 0.5)
    assert aug.blur_p == 0.0 and SimCLRAugment.from_config(cfg.replace(blur=True)).blur_p == 0.5
    assert aug.blur_kernel == 3 and aug.replace(size=224).blur_kernel == 23


# --- same maths as torchvision, given the same parameters --------------------------------------

def torchvision_view(image, t, b, aug):
    """Image b of the batch through torchvision's functional ops with the drawn parameters."""
    y = TF.resized_crop(image.float() / 255, int(t["top"][b]), int(t["left"][b]),
                        int(t["height"][b]), int(t["width"][b]), [aug.size, aug.size],
                        antialias=True)
    if t["flip"][b]:
        y = TF.horizontal_flip(y)
    if t["jitter"][b]:
        for k in t["order"][b].tolist():
            y = getattr(TF, "adjust_" + JITTER_OPS[k])(y, float(t[JITTER_OPS[k]][b]))
    if t["gray"][b]:
        y = TF.rgb_to_grayscale(y, num_output_channels=3)
    if t["blur"][b]:
        y = TF.gaussian_blur(y, [aug.blur_kernel] * 2, [float(t["sigma"][b])] * 2)
    return TF.normalize(y, CIFAR10_MEAN, CIFAR10_STD)


@pytest.mark.parametrize("aug", [ALL_ON, ALL_ON.replace(color_strength=1.5, size=40),
                                 ALL_ON.replace(size=16)],
                         ids=["cifar-with-blur", "strong-colour-resize-40", "downsample-16"])
def test_batched_equals_torchvision_given_the_same_parameters(aug):
    x = images(48)
    views, t = augment_batch(x, aug, gen(1), return_params=True)
    worst = max((torchvision_view(x[b], t, b, aug) - views[b]).abs().max().item()
                for b in range(len(x)))
    assert worst < 1e-4


CROP_ONLY = SimCLRAugment(color_p=0.0, gray_p=0.0, blur_p=0.0, normalize=False)


def torchvision_crops(x, t, size, antialias=True):
    """Every image's crop box resized by torchvision, one image at a time, mirrored where
    t["flip"]: (B, 3, size, size) in [0, 1]."""
    out = []
    for b in range(len(x)):
        y = TF.resized_crop(x[b].float() / 255, int(t["top"][b]), int(t["left"][b]),
                            int(t["height"][b]), int(t["width"][b]), [size, size],
                            antialias=antialias)
        out.append(TF.horizontal_flip(y) if t["flip"][b] else y)
    return torch.stack(out)


@pytest.mark.parametrize("size", [16, 24, 32, 40])
def test_crop_equals_torchvision_resized_crop_antialiased(size):
    """Crop + flip alone: image by image, torchvision's antialiased resized_crop. Below 32
    pixels most boxes are shrunk (where a resize without antialias differs), at 40 all grow."""
    aug = CROP_ONLY.replace(size=size)
    x = images(64, seed=size)
    views, t = augment_batch(x, aug, gen(size), return_params=True)
    if size < 32:  # the draws hold boxes both larger and smaller than the view
        assert (t["height"] > size).any() and (t["height"] < size).any()
    assert t["flip"].any() and not t["flip"].all()
    worst = (torchvision_crops(x, t, size) - views).abs().amax((1, 2, 3))  # (B,)
    assert worst.max().item() < 1e-5


def test_negative_control_a_resize_without_antialias_differs_from_the_views():
    """The tolerance above separates the two resizes: shrinking without antialias (what the
    crop did before, with grid_sample) is far from the views at 16 pixels."""
    aug = CROP_ONLY.replace(size=16)
    x = images(64, seed=16)
    views, t = augment_batch(x, aug, gen(16), return_params=True)
    plain = (torchvision_crops(x, t, 16, antialias=False) - views).abs().amax((1, 2, 3))
    shrunk = (t["height"] > 16) | (t["width"] > 16)
    assert plain[shrunk].min().item() > 1e-2  # every shrunk box: 1000x the tolerance
    assert plain.max().item() > 0.1
    assert plain[~shrunk].max().item() < 1e-5  # growing a box, the two resizes agree


# --- same law as torchvision's own parameter sampling ------------------------------------------

def make_params(transform, image):
    fn = getattr(transform, "make_params", None) or transform._get_params  # torchvision < 0.21
    return fn([image])


def reference_draws(aug, n=N_LAW, seed=0):
    """n parameter draws by torchvision v2's own sampling code."""
    torch.manual_seed(seed)
    image = torch.zeros(3, 32, 32)
    s = aug.color_strength
    crop = v2.RandomResizedCrop(32, scale=aug.crop_scale, ratio=aug.crop_ratio)
    jitter = v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
    blur = v2.GaussianBlur(aug.blur_kernel, aug.blur_sigma)
    out = {k: [] for k in ("area", "ratio", "centre", *JITTER_OPS, "sigma")}
    for _ in range(n):
        c, j = make_params(crop, image), make_params(jitter, image)
        out["area"].append(c["height"] * c["width"] / 1024)
        out["ratio"].append(c["width"] / c["height"])
        out["centre"].append(c["left"] + c["width"] / 2)
        for k in JITTER_OPS:
            out[k].append(j[k + "_factor"])
        out["sigma"].append(make_params(blur, image)["sigma"][0])
    return out


def our_draws(aug, n=N_LAW, seed=0):
    t = sample_params(n, aug, 32, 32, gen(seed))
    h, w = t["height"].double(), t["width"].double()
    return dict(area=(h * w / 1024).tolist(), ratio=(w / h).tolist(),
                centre=(t["left"] + w / 2).tolist(),
                **{k: t[k].tolist() for k in (*JITTER_OPS, "sigma")}), t


@pytest.fixture(scope="module")
def reference():
    return reference_draws(SimCLRAugment(blur_p=0.5))


@pytest.fixture(scope="module")
def ours():
    return our_draws(SimCLRAugment(blur_p=0.5), seed=1)


LAW_KEYS = ("area", "ratio", "centre", *JITTER_OPS, "sigma")


@pytest.mark.parametrize("key", LAW_KEYS)
def test_same_law_as_torchvision_ks(reference, ours, key):
    result = stats.ks_2samp(reference[key], ours[0][key])
    assert result.pvalue > ALPHA, f"{key}: KS D={result.statistic:.4f}, p={result.pvalue:.2g}"


@pytest.mark.parametrize("key,p", [("flip", 0.5), ("jitter", 0.8), ("gray", 0.2), ("blur", 0.5)])
def test_rates_binomial(ours, key, p):
    k = int(ours[1][key].sum())
    assert stats.binomtest(k, N_LAW, p).pvalue > ALPHA, f"{key}: {k}/{N_LAW} vs p={p}"


def test_jitter_order_is_a_uniform_permutation():
    _, t = our_draws(SimCLRAugment(), seed=3)
    codes = (t["order"] * torch.tensor([64, 16, 4, 1])).sum(1)  # one code per permutation
    counts = torch.bincount(torch.unique(codes, return_inverse=True)[1])
    assert len(counts) == 24 and stats.chisquare(counts.numpy()).pvalue > ALPHA


@pytest.mark.parametrize("wrong,key", [(dict(crop_scale=(0.2, 1.0)), "area"),
                                       (dict(crop_ratio=(0.6, 1.6)), "ratio"),
                                       (dict(color_strength=0.6), "hue")])
def test_negative_control_ks_rejects_a_slightly_wrong_family(reference, wrong, key):
    ours, _ = our_draws(SimCLRAugment(blur_p=0.5, **wrong), seed=1)
    assert stats.ks_2samp(reference[key], ours[key]).pvalue < ALPHA


def test_negative_control_binomial_rejects_a_wrong_rate():
    _, t = our_draws(SimCLRAugment(gray_p=0.25), seed=2)
    assert stats.binomtest(int(t["gray"].sum()), N_LAW, 0.2).pvalue < ALPHA


def test_views_have_the_same_law_end_to_end():
    """Whole pipelines on one image, 400 views each: view mean and contrast agree (KS)."""
    x = images(1, seed=5)
    torch.manual_seed(0)
    transform = reference_transform(SimCLRAugment())
    ref = torch.stack([transform(x[0]) for _ in range(400)])
    ours = augment_batch(x.repeat(400, 1, 1, 1), SimCLRAugment(), gen(6))
    for stat in (lambda v: v.mean((1, 2, 3)), lambda v: v.std((1, 2, 3))):
        assert stats.ks_2samp(stat(ref).numpy(), stat(ours).numpy()).pvalue > ALPHA


# --- devices ------------------------------------------------------------------------------------

def accelerators():
    out = ["cuda"] if torch.cuda.is_available() else []
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        out.append("mps")
    return out or [pytest.param("cuda", marks=pytest.mark.skip("no CUDA or MPS here"))]


@pytest.mark.parametrize("device", accelerators())
def test_same_views_on_an_accelerator(device):
    x = images(32)
    t = sample_params(32, ALL_ON, 32, 32, gen())
    cpu = apply_params(x, t, ALL_ON)
    dev = apply_params(x.to(device), t, ALL_ON)
    assert dev.device.type == device and torch.allclose(dev.cpu(), cpu, atol=1e-4)
    g = torch.Generator(device).manual_seed(0)
    assert two_views(x.to(device), ALL_ON, g)[0].device.type == device


# --- the two extra ops of chapter 07's grid (not in the paper's T) --------------------------

def _plain(**kw):
    return SimCLRAugment(size=16, crop=False, flip_p=0.0, color_p=0.0, gray_p=0.0,
                         normalize=False, **kw)


def test_extra_ops_are_off_by_default_and_leave_the_random_stream_alone():
    t = sample_params(8, SimCLRAugment(), generator=torch.Generator().manual_seed(0))
    assert "rotate" not in t and "cutout" not in t
    with pytest.raises(ValueError, match="rotate_p and cutout_p"):
        reference_transform(SimCLRAugment(rotate_p=0.5))


def test_rotation_by_quarter_turns():
    images = torch.randint(0, 256, (400, 3, 16, 16), dtype=torch.uint8)
    views, t = augment_batch(images, _plain(rotate_p=0.5), torch.Generator().manual_seed(0),
                             return_params=True)
    x = images.float() / 255
    for i in range(len(images)):
        assert torch.allclose(views[i], torch.rot90(x[i], int(t["rotate"][i]), (1, 2)), atol=1e-6)
    counts = torch.bincount(t["rotate"], minlength=4)  # 0: none, then 1, 2, 3 quarter turns
    assert 150 < counts[0] < 250 and all(40 < c < 95 for c in counts[1:])


def test_cutout_covers_a_half_side_square_with_the_mean_colour():
    images = torch.full((300, 3, 16, 16), 255, dtype=torch.uint8)
    views, t = augment_batch(images, _plain(cutout_p=0.5), torch.Generator().manual_seed(1),
                             return_params=True)
    cut = (views < 1).all(1)  # (B, 16, 16): pixels set to the mean colour (all below 1)
    assert torch.equal(cut.any((1, 2)), t["cutout"])
    assert 110 < int(t["cutout"].sum()) < 190
    rows, cols = cut.any(2).sum(1), cut.any(1).sum(1)  # the box's height and width
    assert rows[t["cutout"]].max() == 8 and cols[t["cutout"]].max() == 8  # side / 2, unclipped
    assert (rows[t["cutout"]] >= 4).all()  # clipped at the border to at least half the box
    mean = torch.tensor(CIFAR10_MEAN).view(3, 1)
    i = int(t["cutout"].nonzero()[0])
    assert torch.allclose(views[i][:, cut[i]], mean.expand(3, int(cut[i].sum())))


def test_an_accelerator_selects_with_where_and_gets_the_same_views(monkeypatch):
    """On an accelerator every op runs on the whole batch and torch.where keeps it where it
    applies (no host sync); on a CPU it runs on the selected images only. Same views."""
    import clr_lib.augment as A

    aug = SimCLRAugment(blur_p=0.5, rotate_p=0.5, cutout_p=0.5)
    images = torch.randint(0, 256, (48, 3, 32, 32), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    t = A.sample_params(48, aug, 32, 32, torch.Generator().manual_seed(1))
    assert t["blur"].any() and not t["blur"].all() and t["jitter"].any()
    selected = apply_params(images, t, aug)
    monkeypatch.setattr(A, "_computes_selected_only", lambda device: False)
    where = apply_params(images, t, aug)
    torch.testing.assert_close(where, selected, atol=1e-6, rtol=0)
