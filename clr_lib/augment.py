"""The SimCLR view generator: a family T of random augmentations, two views x_i, x_j per image.

Introduced in chapter 01. SimCLR (Chen et al., 2020, Sec. 2.1) uses "a stochastic data
augmentation module that transforms any given data example randomly resulting in two correlated
views of the same example, denoted x_i and x_j". Appendix A describes the family T, in this order:

1. random resized crop: "The crop of random size (uniform from 0.08 to 1.0 in area) of the
   original size and a random aspect ratio (default: of 3/4 to 4/3) of the original aspect ratio
   is made. This crop is finally resized to the original size", "always followed by a random
   horizontal/left-to-right flip with 50% probability";
2. colour distortion of strength s: ``ColorJitter(0.8*s, 0.8*s, 0.8*s, 0.2*s)`` applied with
   p=0.8, then ``RandomGrayscale(p=0.2)``;
3. Gaussian blur "50% of the time", sigma in [0.1, 2.0], "kernel size ... 10% of the image
   height/width"; the paper leaves it out on CIFAR-10 (low resolution, Appendix B.9).

Two implementations of the same T:

- ``reference_transform(aug)``: torchvision.transforms.v2, one image at a time. Readable, but
  Python runs once per image, and on a batch tensor v2 draws *one* set of parameters for all.
- ``augment_batch(images, aug, generator)``: a whole uint8 batch at once, on any device, every
  image with its own parameters t ~ T. Crop, resize and flip are one einsum with two small
  matrices per image (antialiased, as torchvision's resize); jitter, grayscale and blur are
  tensor maths with torchvision's formulas. **Training calls
  ``two_views(images, aug, generator)``**, which is ``augment_batch`` on the batch twice over.

The jitter order is random for every image (a permutation of brightness, contrast, saturation,
hue), as in the paper's code and torchvision's ColorJitter. ``sample_params`` draws t from the
same law as torchvision's ``make_params`` and ``apply_params`` equals torchvision's functional ops
given the same t (tests/test_augment.py checks both). On a CPU the batched version is more
than ten times faster (``python benchmarks/augment_throughput.py``; docs/record.md).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # per-channel mean of the train pixels, in [0, 1]
CIFAR10_STD = (0.2470, 0.2435, 0.2616)  # per-channel std (not the often copied 0.2023, ...)
LUMA = (0.2989, 0.587, 0.114)  # ITU-R 601 grey weights, as torchvision's rgb_to_grayscale
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")  # the codes 0..3 of ``order``


@dataclass(frozen=True)
class SimCLRAugment:
    """The family T of augmentations (paper Appendix A). Every op can be switched off:
    ``crop=False``, ``flip_p=0``, ``color_p=0``, ``gray_p=0``, ``blur_p=0``.
    ``rotate_p`` and ``cutout_p`` are two ops the paper studies (Fig. 4 and 5) but leaves out
    of T; they are off by default and used by chapter 07's grid of pairs."""

    size: int = 32  # output side in pixels; CIFAR-10 32, paper 224 on ImageNet
    crop: bool = True  # random resized crop; False: the whole image, resized to size
    crop_scale: tuple[float, float] = (0.08, 1.0)  # area fraction; paper (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio w/h; paper (3/4, 4/3)
    flip_p: float = 0.5  # horizontal flip probability; paper 0.5
    color_strength: float = 0.5  # s; paper 1.0 on ImageNet, 0.5 on CIFAR-10
    color_p: float = 0.8  # probability of colour jitter; paper 0.8
    gray_p: float = 0.2  # probability of grayscale; paper 0.2
    blur_p: float = 0.0  # probability of Gaussian blur; paper 0.5 on ImageNet, off on CIFAR-10
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # blur std in pixels; paper (0.1, 2.0)
    rotate_p: float = 0.0  # probability of a rotation by 90, 180 or 270 degrees (paper Fig. 4)
    cutout_p: float = 0.0  # probability of a cutout: a square of half the side, mean colour
    normalize: bool = True  # return (x - CIFAR10_MEAN) / CIFAR10_STD; False: pixels in [0, 1]

    @classmethod
    def from_config(cls, cfg) -> "SimCLRAugment":
        """The family T of a ``clr_lib.config.Config`` (its augmentation fields)."""
        return cls(size=cfg.view_size or cfg.image_size, crop_scale=tuple(cfg.crop_scale),
                   crop_ratio=tuple(cfg.crop_ratio), flip_p=cfg.flip_p,
                   color_strength=cfg.color_strength, color_p=cfg.color_p, gray_p=cfg.gray_p,
                   blur_p=0.5 if cfg.blur else 0.0, rotate_p=cfg.rotate_p,
                   cutout_p=cfg.cutout_p)

    def replace(self, **changes) -> "SimCLRAugment":
        return dataclasses.replace(self, **changes)

    def jitter_ranges(self) -> dict[str, tuple[float, float]]:
        """The uniform ranges of the four jitter factors, as torchvision's ColorJitter."""
        b, h = 0.8 * self.color_strength, min(0.2 * self.color_strength, 0.5)
        return dict(brightness=(max(0.0, 1 - b), 1 + b), contrast=(max(0.0, 1 - b), 1 + b),
                    saturation=(max(0.0, 1 - b), 1 + b), hue=(-h, h))

    @property
    def blur_kernel(self) -> int:
        """10% of the side, rounded down to odd, at least 3 (3 at 32 px, 23 at 224 px)."""
        return max(3, int(0.1 * self.size) // 2 * 2 + 1)


def reference_transform(aug: SimCLRAugment | None = None):
    """The per-image pipeline in torchvision v2 (a ``v2.Compose``): input one uint8 image
    (3, H, W), output a float view (3, size, size). The colour part is the paper's PyTorch
    pseudo-code (Appendix A)."""
    from torchvision.transforms import v2  # imported here: ~1 s, and training never needs it
    aug = aug or SimCLRAugment()
    if aug.rotate_p or aug.cutout_p:
        raise ValueError("reference_transform covers the paper's T only; rotate_p and "
                         "cutout_p (chapter 07's extra ops) exist in augment_batch alone.")
    s = aug.color_strength
    crop = (v2.RandomResizedCrop(aug.size, scale=aug.crop_scale, ratio=aug.crop_ratio)
            if aug.crop else v2.Resize(aug.size))
    ops = [v2.ToDtype(torch.float32, scale=True),  # uint8 -> float in [0, 1] first, as the batch
           crop,
           v2.RandomHorizontalFlip(p=aug.flip_p),
           v2.RandomApply([v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, min(0.2 * s, 0.5))],
                          p=aug.color_p),
           v2.RandomGrayscale(p=aug.gray_p),
           v2.RandomApply([v2.GaussianBlur(aug.blur_kernel, aug.blur_sigma)], p=aug.blur_p)]
    if aug.normalize:
        ops.append(v2.Normalize(CIFAR10_MEAN, CIFAR10_STD))
    return v2.Compose(ops)


def normalize(images: Tensor) -> Tensor:
    """uint8 (B, 3, H, W) or float in [0, 1] -> float32 (x - CIFAR10_MEAN) / CIFAR10_STD.
    What evaluation feeds the encoder: the same normalisation, no augmentation."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    mean = torch.tensor(CIFAR10_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def denormalize(x: Tensor) -> Tensor:
    """Inverse of ``normalize``, clamped to [0, 1]: views back to pixels for plotting."""
    mean = torch.tensor(CIFAR10_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD, device=x.device).view(1, 3, 1, 1)
    return (x * std + mean).clamp(0, 1)


def sample_params(n: int, aug: SimCLRAugment, height: int = 32, width: int = 32,
                  generator: torch.Generator | None = None, device=None) -> dict[str, Tensor]:
    """Draw t ~ T independently for n images of height x width: all the randomness of a view.

    Same law as torchvision v2's ``make_params`` (crop: ten tries of area and log-ratio, the
    first box that fits, else a central crop). Draws on the generator's device, else ``device``.

    Returns (n,) tensors: ``top, left, height, width`` (crop box, pixels), ``flip, jitter,
    gray, blur`` (bool), ``brightness, contrast, saturation, hue`` (jitter factors), ``sigma``
    (blur std) and ``order`` (n, 4), each row a permutation of 0..3 (``JITTER_OPS``).
    With ``aug.rotate_p`` or ``aug.cutout_p`` above 0, also ``rotate`` (quarter turns, 0 for
    none) or ``cutout`` (bool) and ``cut_y, cut_x`` (square centre, in [0, 1) of the view).
    """
    device = generator.device if generator is not None else torch.device(device or "cpu")

    def u(*shape, lo=0.0, hi=1.0):  # uniform on [lo, hi)
        return torch.rand(shape, generator=generator, device=device) * (hi - lo) + lo

    H, W = float(height), float(width)
    if aug.crop:
        target = H * W * u(n, 10, lo=aug.crop_scale[0], hi=aug.crop_scale[1])  # (n, 10) areas
        ratio = u(n, 10, lo=math.log(aug.crop_ratio[0]), hi=math.log(aug.crop_ratio[1])).exp()
        w, h = (target * ratio).sqrt().round(), (target / ratio).sqrt().round()
        fits = (w > 0) & (w <= W) & (h > 0) & (h <= H)  # (n, 10)
        first = fits.float().argmax(1, keepdim=True)  # the first try that fits, as v2's loop
        fh, fw = _central_box(height, width, aug.crop_ratio)
        any_fit = fits.any(1)
        h = torch.where(any_fit, h.gather(1, first)[:, 0], float(fh))
        w = torch.where(any_fit, w.gather(1, first)[:, 0], float(fw))
        top = torch.where(any_fit, (u(n) * (H - h + 1)).floor(), ((H - h) // 2))
        left = torch.where(any_fit, (u(n) * (W - w + 1)).floor(), ((W - w) // 2))
    else:
        top, left = torch.zeros(n, device=device), torch.zeros(n, device=device)
        h, w = torch.full((n,), H, device=device), torch.full((n,), W, device=device)
    r = aug.jitter_ranges()
    extra = {}  # drawn only when asked for, so the views of T itself stay as they were
    if aug.rotate_p:
        extra["rotate"] = torch.where(u(n) < aug.rotate_p, (u(n) * 3).long() + 1, 0)
    if aug.cutout_p:
        extra.update(cutout=u(n) < aug.cutout_p, cut_y=u(n), cut_x=u(n))
    return extra | dict(top=top.long(), left=left.long(), height=h.long(), width=w.long(),
                        flip=u(n) < aug.flip_p,
                        jitter=u(n) < aug.color_p,
                        brightness=u(n, lo=r["brightness"][0], hi=r["brightness"][1]),
                        contrast=u(n, lo=r["contrast"][0], hi=r["contrast"][1]),
                        saturation=u(n, lo=r["saturation"][0], hi=r["saturation"][1]),
                        hue=u(n, lo=r["hue"][0], hi=r["hue"][1]),
                        order=u(n, 4).argsort(1),  # a uniform random permutation per image
                        gray=u(n) < aug.gray_p,
                        blur=u(n) < aug.blur_p,
                        sigma=u(n, lo=aug.blur_sigma[0], hi=aug.blur_sigma[1]))


def apply_params(images: Tensor, t: dict[str, Tensor], aug: SimCLRAugment) -> Tensor:
    """Apply drawn parameters t (from ``sample_params``) to a batch, all images at once.

    Args:
        images: (B, 3, H, W) uint8, or float in [0, 1], on any device.
        t: the dict of ``sample_params(B, aug, H, W)``; moved to the images' device.
        aug: the family T (output size, blur kernel, normalisation).
    Returns:
        (B, 3, size, size) float32 views, normalised if ``aug.normalize``.
    """
    t = {k: v.to(images.device) for k, v in t.items()}
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    x = _crop_flip(x, t, aug.size)  # (B, 3, size, size) in [0, 1]
    on_cpu = _computes_selected_only(x.device)
    for quarter_turns in (1, 2, 3) if "rotate" in t else ():
        x = _on(t["rotate"] == quarter_turns, x, on_cpu,
                lambda y: torch.rot90(y, quarter_turns, (2, 3)))
    factors = torch.stack([t[k] for k in JITTER_OPS], 1).view(-1, 4, 1, 1, 1)  # (B, 4, 1, 1, 1)
    for step in range(4):  # a loop over the 4 positions of the order, not over images
        for k, op in enumerate((_brightness, _contrast, _saturation, _hue)):
            m = t["jitter"] & (t["order"][:, step] == k)  # images whose step-th op is k
            x = _on(m, x, on_cpu, op, factors[:, k])
    x = torch.where(t["gray"].view(-1, 1, 1, 1), _gray(x).expand_as(x), x)
    if aug.blur_p > 0 and (not on_cpu or t["blur"].any()):  # off on CIFAR-10
        x = _on(t["blur"], x, on_cpu, lambda y, s: _blur(y, s, aug.blur_kernel), t["sigma"])
    if "cutout" in t:
        x = _cutout(x, t)
    return normalize(x) if aug.normalize else x


def _computes_selected_only(device: torch.device) -> bool:
    """On a CPU an op runs on the images it applies to only. On an accelerator it runs on
    all of them and ``torch.where`` keeps its result where it applies: indexing with a
    boolean mask would wait for the device to say how many images the mask selects."""
    return device.type == "cpu"


def _on(m: Tensor, x: Tensor, selected_only: bool, op, *per_image: Tensor) -> Tensor:
    """x with ``op(x, *per_image)`` applied to the images the (B,) mask m selects."""
    if selected_only:
        x[m] = op(x[m], *(a[m] for a in per_image))
        return x
    return torch.where(m.view(-1, 1, 1, 1), op(x, *per_image), x)


def augment_batch(images: Tensor, aug: SimCLRAugment | None = None,
                  generator: torch.Generator | None = None, return_params: bool = False):
    """One view t(x) of every image, with its own t ~ T: the batched SimCLR augmentation.

    Args:
        images: (B, 3, H, W) uint8 (or float in [0, 1]) on any device (CPU, CUDA, MPS).
        aug: the family T; default ``SimCLRAugment()``, the paper's CIFAR-10 recipe.
        generator: a seeded ``torch.Generator`` makes the views reproducible.
        return_params: also return the drawn parameters t (see ``sample_params``).
    Returns:
        (B, 3, size, size) float32 views, or (views, t).
    """
    aug = aug or SimCLRAugment()
    device = generator.device if generator is not None else images.device
    t = sample_params(images.shape[0], aug, images.shape[-2], images.shape[-1], generator, device)
    views = apply_params(images, t, aug)
    return (views, t) if return_params else views


def two_views(images: Tensor, aug: SimCLRAugment | None = None,
              generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """The positive pairs: x_i = t(x), x_j = t'(x) with t, t' ~ T drawn independently.

    Args:
        images: (N, 3, H, W) uint8 batch on the training device.
    Returns:
        x_i, x_j: (N, 3, size, size) float32 each; row k of both comes from image k.
    """
    x_i, x_j = make_views(images, 2, aug, generator)
    return x_i, x_j


def make_views(images: Tensor, count: int, aug: SimCLRAugment | None = None,
               generator: torch.Generator | None = None) -> list[Tensor]:
    """``count`` views of every image, each with its own t ~ T (``two_views`` is count=2).

    Returns:
        ``count`` tensors (N, 3, size, size); row k of each comes from image k.
    """
    views = augment_batch(images.repeat(count, 1, 1, 1), aug, generator)  # one call: (cN, ...)
    return list(views.chunk(count))


# --- the ops, batched: x (B, 3, H, W) in [0, 1], factor f (B, 1, 1, 1) -----------------------

def _central_box(height: int, width: int, ratio: tuple[float, float]) -> tuple[int, int]:
    """torchvision's fallback after ten failed tries: the largest central box within ratio."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        return int(round(width / min(ratio))), width
    if in_ratio > max(ratio):
        return height, int(round(height * max(ratio)))
    return height, width


def _resize_weights(start: Tensor, length: Tensor, size: int, n: int) -> Tensor:
    """(B, size, n) weights that resize the span [start, start + length) of n pixels to size
    pixels, one row per output pixel: torch's antialiased bilinear resize (the PIL filter that
    torchvision's Resize uses). Output pixel o is centred at c = (o + 0.5) * length / size in
    the span; input pixel k (its centre k + 0.5) weighs max(0, 1 - |k + 0.5 - c| / s) with
    s = max(1, length / size), normalised to sum to 1. Upsampling (s = 1) this is plain
    bilinear interpolation; downsampling, the triangle widens to s input pixels each side, so
    every pixel of the span counts (no aliasing)."""
    length = length[:, None, None].float()  # (B, 1, 1)
    scale = length / size
    centre = (torch.arange(size, device=length.device) + 0.5)[None, :, None] * scale  # (1|B, s, 1)
    support = scale.clamp(min=1.0)
    k = torch.arange(n, device=length.device)[None, None, :] - start[:, None, None]  # (B, 1, n)
    w = (1 - (k + 0.5 - centre).abs() / support).clamp(min=0)
    w = w * ((k >= 0) & (k < length))  # only the pixels of the span
    return w / w.sum(2, keepdim=True)  # (B, size, n)


def _crop_flip(x: Tensor, t: dict[str, Tensor], size: int) -> Tensor:
    """Resize each crop box to size x size (mirrored where ``flip``), as torchvision's
    ``resized_crop(..., antialias=True)`` does. The resize is separable: one (size x H) matrix
    R_y for the rows and one (size x W) matrix R_x for the columns of each image, and the
    view is R_y x R_x^T, one einsum for the whole batch, with no loop over images or crop
    sizes. A mirror reads the columns backwards: R_x's rows reversed."""
    r_y = _resize_weights(t["top"], t["height"], size, x.shape[2])  # (B, size, H)
    r_x = _resize_weights(t["left"], t["width"], size, x.shape[3])  # (B, size, W)
    r_x = torch.where(t["flip"][:, None, None], r_x.flip(1), r_x)
    return torch.einsum("bsh,bchw,btw->bcst", r_y, x, r_x)  # (B, 3, size, size)


def _gray(x: Tensor) -> Tensor:  # (B, 3, H, W) -> (B, 1, H, W)
    return LUMA[0] * x[:, 0:1] + LUMA[1] * x[:, 1:2] + LUMA[2] * x[:, 2:3]


def _blend(a: Tensor, b: Tensor, f: Tensor) -> Tensor:
    return torch.lerp(b, a, f).clamp_(0, 1)  # f * a + (1 - f) * b, kept in [0, 1]


def _brightness(x: Tensor, f: Tensor) -> Tensor:
    return (f * x).clamp_(0, 1)  # blend with black


def _contrast(x: Tensor, f: Tensor) -> Tensor:
    return _blend(x, _gray(x).mean((1, 2, 3), keepdim=True), f)  # blend with the mean grey


def _saturation(x: Tensor, f: Tensor) -> Tensor:
    return _blend(x, _gray(x), f)  # blend with the grey image


def _hue(x: Tensor, f: Tensor) -> Tensor:
    """Rotate the hue by f turns: RGB -> HSV, h + f, HSV -> RGB, with torchvision's maths
    written in sixths of a turn. v = max, c = max - min (chroma); grey pixels (c = 0) stay."""
    v = x.amax(1, keepdim=True)  # (B, 1, H, W) value
    c = v - x.amin(1, keepdim=True)  # chroma
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    h = torch.where(v == r, g - b, torch.where(v == g, b - r + 2 * c, r - g + 4 * c))
    h = h / torch.where(c > 0, c, torch.ones_like(c)) + 6 * f  # (B, 1, H, W) hue, rotated
    k = (h + torch.tensor([5.0, 3.0, 1.0], device=x.device).view(1, 3, 1, 1)) % 6  # (B,3,H,W)
    return v - c * torch.minimum(k, 4 - k).clamp_(0, 1)


def _blur(x: Tensor, sigma: Tensor, k: int) -> Tensor:
    """Gaussian blur with one sigma per image: separable, reflect padding (as torchvision)."""
    B, C, H, W = x.shape
    d = torch.arange(k, device=x.device, dtype=x.dtype) - (k - 1) / 2  # (k,) tap offsets
    w = torch.exp(-0.5 * (d / sigma[:, None]) ** 2)  # (B, k)
    w = (w / w.sum(1, keepdim=True)).repeat_interleave(C, 0)  # (B*C, k): a kernel per channel
    y = F.pad(x.reshape(1, B * C, H, W), (k // 2,) * 4, mode="reflect")
    y = F.conv2d(y, w.view(B * C, 1, 1, k), groups=B * C)  # along each row
    y = F.conv2d(y, w.view(B * C, 1, k, 1), groups=B * C)  # along each column
    return y.view(B, C, H, W)


def _cutout(x: Tensor, t: dict[str, Tensor]) -> Tensor:
    """A square of half the side around (cut_y, cut_x), clipped at the border, set to the
    mean colour (DeVries & Taylor, 2017), where ``cutout``."""
    B, _, S, _ = x.shape
    pos = torch.arange(S, device=x.device)
    half = S // 4  # the square's side is S / 2
    cy, cx = (t["cut_y"] * S).long()[:, None], (t["cut_x"] * S).long()[:, None]
    rows = ((pos - cy).abs() < half) | ((pos - cy) == -half)  # (B, S): half rows each side
    cols = ((pos - cx).abs() < half) | ((pos - cx) == -half)
    box = rows[:, :, None] & cols[:, None, :] & t["cutout"][:, None, None]  # (B, S, S)
    mean = torch.tensor(CIFAR10_MEAN, device=x.device).view(1, 3, 1, 1)
    return torch.where(box[:, None], mean, x)
