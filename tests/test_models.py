"""clr_lib.models: encoders f, projection heads g, and SimCLR returning (h, z)."""

import pytest
import torch
from torch import nn

from clr_lib.config import get_config
from clr_lib.models import (Conv3x3, ConvNet, ProjectionHead, ResNetEncoder, SimCLR,
                            build_encoder, build_model, conv3x3_weight_grad, count_parameters,
                            projection_head)


@pytest.fixture
def x():
    torch.manual_seed(0)
    return torch.randn(4, 3, 32, 32)


@pytest.mark.parametrize("name, dim", [("convnet", 8 * 16), ("resnet18", 512),
                                       ("resnet50", 2048)])
def test_encoders_return_h_of_feature_dim(name, dim, x):
    f = build_encoder(name, width=16)
    h = f(x)
    assert h.shape == (4, dim) and f.feature_dim == dim


def _layer1_size(stem, x):
    f = ResNetEncoder(18, stem=stem)
    sizes = []
    f.net.layer1.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[-2:])))
    f(x)
    return sizes[0]


def test_cifar_stem_keeps_32x32_and_imagenet_stem_shrinks_to_8x8(x):
    assert _layer1_size("cifar", x) == (32, 32)
    assert _layer1_size("imagenet", x) == (8, 8)
    cifar = ResNetEncoder(18, "cifar").net
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, nn.Identity) and isinstance(cifar.fc, nn.Identity)


def test_resnet18_parameter_count_is_torchvisions_minus_the_classifier():
    # torchvision's ResNet-18 has 11,689,512 parameters; the 1000-way fc has 513,000 and the
    # 7x7 stem conv 9,408, replaced by a 3x3 conv of 1,728.
    assert count_parameters(ResNetEncoder(18)) == 11_689_512 - 513_000 - 9_408 + 1_728


def test_convnet_width_and_memory_layout_do_not_change_the_result(x):
    f = ConvNet(width=8).eval()
    assert f.feature_dim == 64
    assert torch.allclose(f(x), f(x.contiguous(memory_format=torch.channels_last)), atol=1e-6)


@pytest.mark.parametrize("kind, n_linear, out_dim", [("none", 0, 64), ("linear", 1, 128),
                                                    ("nonlinear", 2, 128)])
def test_projection_head_kinds(kind, n_linear, out_dim):
    g = projection_head(kind, in_dim=64)
    linears = [m for m in g.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == n_linear and g.out_dim == out_dim
    h = torch.randn(5, 64)
    z = g(h)
    assert z.shape == (5, out_dim)
    if kind == "none":
        assert torch.equal(z, h)
    if kind == "nonlinear":  # z = W2 relu(BN(W1 h)), hidden width = width of h (paper)
        assert linears[0].out_features == 64
        assert any(isinstance(m, nn.ReLU) for m in g.modules())
        assert any(isinstance(m, nn.BatchNorm1d) for m in g.modules())


def test_projection_head_depth_and_hidden_dim():
    g = ProjectionHead(32, hidden_dim=48, out_dim=16, num_layers=3, batch_norm=False)
    dims = [(m.in_features, m.out_features) for m in g.modules() if isinstance(m, nn.Linear)]
    assert dims == [(32, 48), (48, 48), (48, 16)]
    assert not any(isinstance(m, nn.BatchNorm1d) for m in g.modules())


@pytest.mark.parametrize("head", ["none", "linear", "nonlinear"])
def test_build_model_from_smoke_config_returns_h_and_z(head, x):
    cfg = get_config("smoke", head=head)
    model = build_model(cfg)
    h, z = model(x)
    assert h.shape == (4, model.feature_dim) and model.feature_dim == 8 * cfg.width
    assert z.shape == (4, model.out_dim)
    assert model.out_dim == (model.feature_dim if head == "none" else cfg.proj_dim)


def test_feature_dim_sets_the_size_of_h(x):
    f = ConvNet(8, feature_dim=96)
    assert f(x).shape == (4, 96) and f.feature_dim == 96
    model = build_model(get_config("smoke", width=8, feature_dim=96))
    assert model(x)[0].shape == (4, 96) and model.head.in_dim == 96


def test_gradient_of_z_reaches_every_parameter(x):
    model = SimCLR(ConvNet(8), projection_head("nonlinear", 64, out_dim=16))
    _, z = model(x)
    z.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("side", [1, 2, 4, 5])
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv3x3_weight_grad_is_the_gemm_of_patches_and_output_grads(side, channels_last):
    torch.manual_seed(0)
    x = torch.randn(3, 5, side, side, dtype=torch.float64)
    w = torch.randn(7, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 7, side, side, dtype=torch.float64)
    torch.nn.functional.conv2d(x, w, padding=1).backward(g)
    if channels_last:
        x, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, g))
    assert torch.allclose(conv3x3_weight_grad(x, g), w.grad, rtol=1e-10, atol=1e-10)


def _bf16_grads(conv, x):
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    y.float().pow(2).sum().backward()
    return y, x.grad, conv.weight.grad


@pytest.mark.parametrize("side, fast", [(2, True), (5, True), (6, False)])
def test_conv3x3_in_bf16_matches_nn_conv2d_and_takes_the_gemm_on_small_maps(side, fast):
    torch.manual_seed(0)
    conv = Conv3x3(16, 32).to(memory_format=torch.channels_last)
    plain = nn.Conv2d(16, 32, 3, padding=1, bias=False)
    plain.weight = nn.Parameter(conv.weight.detach().clone())
    x = torch.randn(8, 16, side, side).contiguous(memory_format=torch.channels_last)
    y, gx, gw = _bf16_grads(conv, x)
    y_ref, gx_ref, gw_ref = _bf16_grads(plain, x)
    assert (type(y.grad_fn).__name__ == "_SmallMapConvBackward") == fast  # <= 5x5 only
    assert y.dtype == y_ref.dtype == torch.bfloat16 and torch.equal(y, y_ref)  # same forward
    assert gw.dtype == torch.float32
    for mine, ref in ((gx, gx_ref), (gw, gw_ref)):  # both rounded to bf16 on the way
        assert ((mine - ref).norm() / ref.norm()) < 1e-2


def test_conv3x3_without_autocast_is_nn_conv2d():
    torch.manual_seed(0)
    conv = Conv3x3(3, 4)
    x = torch.randn(2, 3, 4, 4)
    assert type(conv(x).grad_fn).__name__ == "ConvolutionBackward0"
    assert torch.equal(conv(x), torch.nn.functional.conv2d(x, conv.weight, padding=1))


def test_unknown_names_raise_with_the_choices():
    with pytest.raises(ValueError, match="resnet18"):
        build_encoder("vit")
    with pytest.raises(ValueError, match="nonlinear"):
        projection_head("mlp", 8)
    with pytest.raises(ValueError, match="cifar"):
        ResNetEncoder(18, stem="tiny")
    with pytest.raises(ValueError, match="18 or 50"):
        ResNetEncoder(34)
