"""The networks of SimCLR: the base encoder f, the projection head g, and the pair of them.

Introduced in chapter 02. SimCLR (Chen et al., 2020, Section 2.1) learns

    h_i = f(x_i)    "a neural network base encoder f(.) that extracts representation
                     vectors from augmented data examples ... h_i = f(x_i) = ResNet(x_i)
                     where h_i is the output after the average pooling layer"
    z_i = g(h_i)    "a small neural network projection head g(.) that maps representations
                     to the space where contrastive loss is applied ... z_i = g(h_i) =
                     W(2) relu(W(1) h_i)"

and keeps h (not z) for downstream tasks (Section 4.2, Figure 8).

Encoders, all taking (B, 3, 32, 32) and returning h of shape (B, feature_dim):
    convnet   a small plain ConvNet for CPU learners, its width a parameter.
    resnet18  torchvision's ResNet-18 (512-d h), with the CIFAR stem by default.
    resnet50  torchvision's ResNet-50 (2048-d h), with the CIFAR stem by default.

The CIFAR stem (paper Appendix B.9: "we replace the first 7x7 Conv of stride 2 with 3x3
Conv of stride 1, and also remove the first max pooling operation") keeps 32x32 feature
maps in the first stage; the ImageNet stem shrinks a 32x32 image to 8x8 before the first
residual block. Chapter 02 measures both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from clr_lib.config import ENCODERS, HEADS

HEAD_LAYERS = dict(zip(HEADS, (0, 1, 2)))  # head kind -> number of linear layers


class Conv3x3(nn.Conv2d):
    """A 3x3 convolution, stride 1, padding 1, no bias, whose weight gradient on small maps
    is one matrix product.

    On a CPU in bf16, oneDNN computes the weight gradient of a conv on small maps several
    times slower than the conv itself (``python benchmarks/conv_weight_grad.py``). Yet that
    gradient is a plain
    product: every output pixel p of every image adds g_p P_p^T to dL/dW, where g_p holds
    the pixel's C_out output gradients and P_p the 3 x 3 x C_in input patch under the kernel
    (the "im2col" columns). Stacking all B x H x W pixels as rows,

        dL/dW = G^T P      G: (B*H*W, C_out),  P: (B*H*W, 9*C_in)

    one GEMM. It wins on maps of up to 5x5 pixels (the laptop ConvNet's last two convs on
    16-pixel views; chapter 08 and docs/record.md have the figures); on larger maps the
    patches cost more memory traffic than they save, and in float32 oneDNN is fast already:
    there, and on CUDA, this is ``nn.Conv2d``. The weights and the forward pass are
    ``nn.Conv2d``'s.
    """

    def __init__(self, c_in: int, c_out: int):
        super().__init__(c_in, c_out, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and x.shape[-2] * x.shape[-1] <= 25
                and torch.is_autocast_enabled("cpu")
                and torch.get_autocast_dtype("cpu") == torch.bfloat16):
            return _SmallMapConv.apply(x.bfloat16(), self.weight.bfloat16())
        return super().forward(x)


class _SmallMapConv(torch.autograd.Function):
    """conv2d(x, w, padding=1); backward: oneDNN's input gradient, the GEMM weight gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, w)
        return F.conv2d(x, w, padding=1)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        x, w = ctx.saved_tensors
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)  # as x: oneDNN's fast
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(  # what autograd calls for conv2d
                grad_out, x, w, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                [True, False, False])[0]
        return grad_x, conv3x3_weight_grad(x, grad_out)


def conv3x3_weight_grad(x: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """dL/dW of a 3x3 conv with padding 1 as G^T P (see ``Conv3x3``).

    Args:
        x: the conv's input (B, C_in, H, W); grad_out: dL/d(output) (B, C_out, H, W).
    Returns:
        (C_out, C_in, 3, 3), laid out channels_last like the ConvNet's weights.
    """
    B, C, H, W = x.shape
    padded = F.pad(x, (1, 1, 1, 1)).permute(0, 2, 3, 1)  # (B, H+2, W+2, C_in)
    patches = torch.stack([padded[:, dy:dy + H, dx:dx + W] for dy in range(3)
                           for dx in range(3)], 3)  # (B, H, W, 9, C_in): P, a row per pixel
    g = grad_out.permute(0, 2, 3, 1).reshape(B * H * W, -1)  # G: (B*H*W, C_out)
    grad_w = g.t() @ patches.reshape(B * H * W, 9 * C)  # (C_out, 9*C_in), in (dy, dx, c) order
    return grad_w.view(-1, 3, 3, C).permute(0, 3, 1, 2)  # (C_out, C_in, 3, 3)


def conv_bn_relu(c_in: int, c_out: int, pool: bool) -> nn.Sequential:
    """3x3 conv, optional 2x2 max-pool, BatchNorm, ReLU.

    Pooling before BatchNorm, as the fast CIFAR-10 trainer airbench does, makes BN and ReLU
    run on a quarter of the pixels.
    """
    layers: list[nn.Module] = [Conv3x3(c_in, c_out)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class ConvNet(nn.Module):
    """A small encoder f for CPUs: five 3x3 convs, three 2x2 max-pools, global average pool.

    Channels double as the resolution halves (width, 2, 4, 8 x width at 32, 16, 8, 4 pixels),
    so the convs after the first cost about the same FLOPs each, and h has 8 x width
    dimensions unless ``feature_dim`` widens the last conv (the laptop profile: 32 x width).
    Plain convs, no residuals: at five layers they are not needed, and each skip
    connection adds memory traffic. At width 32 it has 0.54 M parameters and does 0.13 GFLOPs
    per 32x32 image (with h of 512: 0.83 M and 0.17 GFLOPs; of 1024: 1.42 M and 0.25 GFLOPs;
    ResNet-18 with the CIFAR stem: 11.2 M, 1.1 GFLOPs). Weights and inputs are kept
    channels_last (NHWC), the layout oneDNN's CPU convolutions are fastest in (ResNet-18
    gained nothing from it, so it stays NCHW; docs/record.md).

    Args:
        width: channels of the first stage (course: 16 smoke, 32 laptop).
        feature_dim: channels of the last conv, so the size of h (None: 8 x width).
    Input (B, 3, H, W) floats, output h (B, feature_dim).
    """

    def __init__(self, width: int = 32, feature_dim: int | None = None):
        super().__init__()
        w, d = width, feature_dim or 8 * width
        self.features = nn.Sequential(
            conv_bn_relu(3, w, pool=False),  # (B, w, 32, 32)
            conv_bn_relu(w, 2 * w, pool=True),  # (B, 2w, 16, 16)
            conv_bn_relu(2 * w, 4 * w, pool=True),  # (B, 4w, 8, 8)
            conv_bn_relu(4 * w, 4 * w, pool=False),  # (B, 4w, 8, 8)
            conv_bn_relu(4 * w, d, pool=True),  # (B, d, 4, 4)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = d
        self.to(memory_format=torch.channels_last)  # .to(device) later keeps this layout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        return self.pool(self.features(x)).flatten(1)  # (B, d)


class ResNetEncoder(nn.Module):
    """torchvision's ResNet-18 or ResNet-50 without its classifier: h after average pooling.

    Args:
        depth: 18 or 50.
        stem: "cifar" (3x3 conv, stride 1, no max-pool; paper Appendix B.9) or "imagenet"
            (7x7 conv, stride 2, then a 3x3 max-pool of stride 2; He et al., 2016).
    Input (B, 3, H, W), output h (B, 512) for depth 18 and (B, 2048) for depth 50.
    Weights are random (``weights=None``): SimCLR trains f from scratch.
    """

    def __init__(self, depth: int = 18, stem: str = "cifar"):
        super().__init__()
        import torchvision  # imported here: a second of start-up the ConvNet does not need

        builders = {18: torchvision.models.resnet18, 50: torchvision.models.resnet50}
        if depth not in builders:
            raise ValueError(f"ResNet depth must be 18 or 50, got {depth}.")
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}.")
        net = builders[depth](weights=None)
        if stem == "cifar":
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        self.feature_dim = net.fc.in_features  # 512 or 2048
        net.fc = nn.Identity()  # torchvision's forward then ends at avgpool + flatten
        self.net = net
        self.stem = stem

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, feature_dim)


def build_encoder(name: str = "convnet", width: int = 32, stem: str = "cifar",
                  feature_dim: int | None = None) -> nn.Module:
    """The encoder f named ``name`` (one of ENCODERS); ``width`` and ``feature_dim`` are for
    the ConvNet only (a ResNet's h has a fixed size)."""
    if name == "convnet":
        return ConvNet(width, feature_dim)
    if name in ("resnet18", "resnet50"):
        return ResNetEncoder(int(name[len("resnet"):]), stem=stem)
    raise ValueError(f"Unknown encoder {name!r}: choose one of {ENCODERS}.")


class ProjectionHead(nn.Module):
    """The projection head g: an MLP from h to z (paper Section 2.1 and Figure 8).

    "We use a MLP with one hidden layer to obtain z_i = g(h_i) = W(2) relu(W(1) h_i)."
    The paper compares three heads (Section 4.2): none (identity, z = h), linear
    (z = W h), and nonlinear (one hidden layer with ReLU), which is best: "a nonlinear
    projection is better than a linear projection (+3%), and much better than no projection
    (>10%)". ``num_layers`` counts the linear layers: 0, 1 or 2 for
    those three; more gives a deeper MLP (SimCLRv2 uses 3).

    Args:
        in_dim: size of h.
        hidden_dim: width of the hidden layers (paper: the size of h, 2048 for ResNet-50).
        out_dim: size of z (paper: 128). Ignored when num_layers is 0.
        num_layers: number of linear layers.
        batch_norm: BatchNorm after each hidden linear layer, as in the paper's code.
    Input h (B, in_dim), output z (B, out_dim).
    """

    def __init__(self, in_dim: int, hidden_dim: int | None = None, out_dim: int = 128,
                 num_layers: int = 2, batch_norm: bool = True):
        super().__init__()
        if num_layers < 0:
            raise ValueError(f"num_layers must be >= 0, got {num_layers}.")
        hidden_dim = hidden_dim or in_dim
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):  # the hidden layers
            layers.append(nn.Linear(dim, hidden_dim, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            dim = hidden_dim
        if num_layers >= 1:
            layers.append(nn.Linear(dim, out_dim))
            dim = out_dim
        self.mlp = nn.Sequential(*layers)  # empty Sequential = identity
        self.in_dim, self.out_dim = in_dim, dim

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.mlp(h)  # (B, out_dim)


def projection_head(kind: str, in_dim: int, hidden_dim: int | None = None,
                    out_dim: int = 128, batch_norm: bool = True) -> ProjectionHead:
    """The head the paper calls ``kind``: "none", "linear" or "nonlinear"."""
    if kind not in HEAD_LAYERS:
        raise ValueError(f"Unknown head {kind!r}: choose one of {HEADS}.")
    return ProjectionHead(in_dim, hidden_dim, out_dim, HEAD_LAYERS[kind], batch_norm)


class SimCLR(nn.Module):
    """f followed by g: a batch of views x (B, 3, H, W) -> (h (B, feature_dim), z (B, out_dim)).

    The loss sees z; evaluation (chapter 05) uses h, "the output after the average pooling
    layer", which the paper finds better than z (Section 4.2).
    """

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder, self.head = encoder, head
        self.feature_dim: int = encoder.feature_dim
        self.out_dim: int = getattr(head, "out_dim", self.feature_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)  # (B, feature_dim)
        z = self.head(h)  # (B, out_dim)
        return h, z


def build_model(cfg) -> SimCLR:
    """The SimCLR network a Config describes (fields encoder, width, feature_dim, head,
    proj_hidden_dim, proj_dim)."""
    encoder = build_encoder(cfg.encoder, cfg.width, feature_dim=cfg.feature_dim)
    head = projection_head(cfg.head, encoder.feature_dim, cfg.proj_hidden_dim, cfg.proj_dim)
    return SimCLR(encoder, head)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
