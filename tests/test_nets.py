"""Tests for deepprior.nets: layers, the four networks and build_net."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from skimage import data
from torch import nn

import deepprior
from deepprior.nets import (
    ChannelNorm,
    ConvDecoder,
    ConvGenerator,
    DeepDecoder,
    SkipNet,
    available_nets,
    build_net,
    make_norm,
)

# small option sets that keep every network fast on a CPU
SMALL = {
    "deep_decoder": {"channels": 8},
    "dip": {"channels": 8, "skip_channels": 2, "input_channels": 4},
    "conv_decoder": {"channels": 8},
    "conv_generator": {"channels": 8, "num_layers": 3},
}



def build_quiet(name: str, image_shape: tuple[int, int, int], **kwargs):
    """build_net without the crop warning (tested on its own below)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return build_net(name, image_shape, **{**SMALL[name], **kwargs})


def num_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# --- ChannelNorm and make_norm ---------------------------------------------------------------


def test_channel_norm_gives_zero_mean_unit_variance_channels_before_the_affine():
    x = 3.0 + 5.0 * torch.randn(2, 4, 23, 17, generator=torch.Generator().manual_seed(0))
    y = ChannelNorm(4)(x)  # scale 1, shift 0 at initialisation
    assert y.mean(dim=(2, 3)).abs().max() < 1e-5
    var = y.var(dim=(2, 3), unbiased=False)
    # biased variance over H*W, then eps=1e-5 in the denominator
    expected = x.var(dim=(2, 3), unbiased=False) / (x.var(dim=(2, 3), unbiased=False) + 1e-5)
    torch.testing.assert_close(var, expected, rtol=1e-4, atol=1e-5)


def test_channel_norm_matches_its_formula_with_learned_scale_and_shift():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 9, 7, generator=gen)
    norm = ChannelNorm(3)
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([0.5, 2.0, -1.0]))
        norm.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(2, 3), keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-5) * norm.weight.view(1, 3, 1, 1)
    expected = expected + norm.bias.view(1, 3, 1, 1)
    torch.testing.assert_close(norm(x), expected, rtol=1e-5, atol=1e-5)
    assert [p.shape for p in norm.parameters()] == [torch.Size([3]), torch.Size([3])]


def test_channel_norm_is_the_same_in_train_and_eval_unlike_batch_norm():
    x = torch.rand(1, 4, 11, 13, generator=torch.Generator().manual_seed(2))
    for norm_name, same in [("channel", True), ("batch", False)]:
        norm = make_norm(norm_name, 4)
        norm.train()
        in_train = norm(x)
        norm.eval()
        in_eval = norm(x)
        assert torch.allclose(in_train, in_eval) is same, norm_name


def test_make_norm_builds_each_kind_and_rejects_unknown_names():
    assert isinstance(make_norm("channel", 5), ChannelNorm)
    assert isinstance(make_norm("batch", 5), nn.BatchNorm2d)
    assert isinstance(make_norm("none", 5), nn.Identity)
    with pytest.raises(ValueError, match="norm must be one of channel, batch, none; got 'group'"):
        make_norm("group", 5)


# --- parameter counts and layouts --------------------------------------------------------------


@pytest.mark.parametrize(
    ("channels", "image_channels", "expected"),
    [(64, 3, 25_536), (128, 3, 100_224), (32, 1, 6_560)],
)
def test_deep_decoder_has_6k2_plus_12k_plus_kc_parameters(channels, image_channels, expected):
    net, z = build_net("deep_decoder", (image_channels, 512, 512), channels=channels)
    assert num_parameters(net) == expected
    assert expected == 6 * channels**2 + 12 * channels + channels * image_channels
    assert tuple(z.shape) == (1, channels, 16, 16)  # H/32 x W/32


def test_deep_decoder_variants_share_the_parameter_count_and_input():
    for upsample_first in (False, True):
        net, z = build_net("deep_decoder", (1, 128, 96), channels=8, upsample_first=upsample_first)
        assert tuple(z.shape) == (1, 8, 4, 3)
        assert num_parameters(net) == 6 * 64 + 12 * 8 + 8
        assert tuple(net(z).shape) == (1, 1, 128, 96)
    upsamplings = [m for m in net.modules() if isinstance(m, nn.Upsample)]
    assert len(upsamplings) == 5


def test_skip_net_matches_the_official_denoising_configuration():
    net, z = build_net("dip", (3, 64, 64), norm="batch")
    # official skip net: 128 down/up channels, 4 skip channels, 5 scales, 32 input channels
    assert num_parameters(net) == 2_217_831
    assert tuple(z.shape) == (1, 32, 64, 64)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 5 * 5 + 1  # per scale: 2 down, 1 skip, 3x3 up, 1x1 up; plus output
    assert all(c.bias is not None for c in convs)
    assert all(c.padding_mode == "reflect" for c in convs if c.kernel_size == (3, 3))
    assert sum(c.stride == (2, 2) for c in convs) == 5
    # with channel norm: the same number of learned parameters and no running statistics
    channel_net, _ = build_net("dip", (3, 64, 64))
    assert num_parameters(channel_net) == 2_217_831
    assert not any(isinstance(m, nn.BatchNorm2d) for m in channel_net.modules())


def test_conv_decoder_grows_geometrically_to_exactly_the_image_size():
    net, z = build_net("conv_decoder", (3, 256, 256), channels=8)
    assert tuple(z.shape) == (1, 8, 8, 8)
    sizes = [m.size for m in net.modules() if isinstance(m, nn.Upsample)]
    assert sizes == [(16, 16), (32, 32), (64, 64), (128, 128), (256, 256)]
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 3)] * 6 + [(1, 1)]
    assert all(c.bias is None for c in convs)
    # default input grid: 8 on the short side, long side after the aspect ratio
    _, z = build_quiet("conv_decoder", (1, 512, 384))
    assert tuple(z.shape[2:]) == (11, 8)
    _, z = build_quiet("conv_decoder", (1, 20, 40), input_size=(3, 5))
    assert tuple(z.shape[2:]) == (3, 5)


def test_conv_generator_is_the_papers_network():
    net, z = build_net("conv_generator", (1, 23, 17))
    assert tuple(z.shape) == (1, 32, 23, 17)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size for c in convs] == [(3, 3)] * 6 + [(1, 1)]
    assert all(c.bias is None for c in convs)
    assert not any(isinstance(m, (nn.Upsample, nn.Sigmoid)) for m in net.modules())


# --- shapes, ranges, crops ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["deep_decoder", "dip", "conv_decoder", "conv_generator"])
@pytest.mark.parametrize("image_shape", [(1, 23, 17), (3, 23, 17), (1, 64, 48), (3, 64, 48)])
def test_every_network_returns_exactly_the_requested_shape(name, image_shape):
    net, z = build_quiet(name, image_shape)
    out = net(z)
    assert tuple(out.shape) == (1, *image_shape)
    assert net.output_shape == image_shape
    assert tuple(z.shape) == net.input_shape


def test_build_net_returns_a_float32_net_and_input_on_the_cpu():
    net, z = build_quiet("deep_decoder", (1, 64, 64))
    assert {p.dtype for p in net.parameters()} == {z.dtype} == {torch.float32}
    assert {p.device.type for p in net.parameters()} == {z.device.type} == {"cpu"}


@pytest.mark.parametrize("name", ["deep_decoder", "dip", "conv_decoder", "conv_generator"])
def test_sigmoid_outputs_lie_in_the_unit_interval(name):
    options = {"output_activation": "sigmoid"} if name == "conv_generator" else {}
    net, z = build_quiet(name, (3, 23, 17), **options)
    with torch.no_grad():
        out = net(100.0 * z)  # a large input pushes the output towards the sigmoid's ends
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert isinstance(list(net.modules())[-1], nn.Sigmoid)


def test_linear_output_is_available_and_leaves_the_unit_interval():
    net, z = build_quiet("conv_generator", (1, 23, 17))  # the paper's linear output
    with torch.no_grad():
        assert net(z).min() < 0.0
    net, _ = build_quiet("conv_decoder", (1, 23, 17), output_activation="none")
    assert not any(isinstance(m, nn.Sigmoid) for m in net.modules())


def test_the_crop_warning_says_what_is_generated_and_the_crop_is_centred():
    with pytest.warns(
        UserWarning,
        match=r"image size 23x17 is not a multiple of 32 .*the network generates 64x64 and its "
        r"output is cropped back to 23x17",
    ):
        net, z = build_net("deep_decoder", (1, 23, 17), channels=8)
    assert net.generated_shape == (1, 64, 64)
    with torch.no_grad():
        full = net.body(z)
        assert tuple(full.shape) == (1, 1, 64, 64)
        top, left = (64 - 23) // 2, (64 - 17) // 2
        torch.testing.assert_close(net(z), full[..., top : top + 23, left : left + 17])
    with pytest.warns(UserWarning, match=r"image size 100x64 is not a multiple of 32; .*128x64"):
        build_net("dip", (1, 100, 64), **SMALL["dip"])


def test_fitting_sizes_build_without_any_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name, shape in [
            ("deep_decoder", (3, 64, 96)),
            ("dip", (1, 128, 64)),
            ("conv_decoder", (1, 23, 17)),
            ("conv_generator", (3, 23, 17)),
        ]:
            net, _ = build_net(name, shape, **SMALL[name])
            assert net.generated_shape == shape


def test_too_small_images_raise_and_state_the_minimum():
    with pytest.raises(
        ValueError,
        match=r"image size 5x7 is smaller than ConvDecoder's default"
        r" 8x8 input grid \(it needs at least 8 px per side\); pass input_size",
    ):
        build_net("conv_decoder", (1, 5, 7))
    net, _ = build_net("conv_decoder", (1, 5, 7), channels=4, input_size=(2, 3))
    assert net.output_shape == (1, 5, 7)
    with pytest.raises(ValueError, match=r"input_size 8x8 does not fit image size 5x7"):
        build_net("conv_decoder", (1, 5, 7), input_size=(8, 8))
    with pytest.raises(TypeError, match=r"input_size must be a pair of integers"):
        build_net("conv_decoder", (1, 5, 7), input_size=4)
    with pytest.raises(
        ValueError,
        match=r"image size 1x9 is too small for ConvGenerator: it "
        r"needs at least 2 px per side",
    ):
        build_net("conv_generator", (1, 1, 9))


# --- build_net: seeds, RNG, errors -------------------------------------------------------------


@pytest.mark.parametrize("name", ["deep_decoder", "dip", "conv_decoder", "conv_generator"])
def test_same_seed_gives_identical_weights_and_input(name):
    net_a, z_a = build_quiet(name, (1, 23, 17), seed=3)
    net_b, z_b = build_quiet(name, (1, 23, 17), seed=3)
    net_c, z_c = build_quiet(name, (1, 23, 17), seed=4)
    assert torch.equal(z_a, z_b) and not torch.equal(z_a, z_c)
    assert 0.0 <= z_a.min() and z_a.max() < 0.1
    state_a, state_b = net_a.state_dict(), net_b.state_dict()
    assert all(torch.equal(state_a[key], state_b[key]) for key in state_a)
    pairs = zip(net_b.parameters(), net_c.parameters(), strict=True)
    assert any(not torch.equal(b, c) for b, c in pairs)
    torch.testing.assert_close(net_a(z_a), net_b(z_b), rtol=0, atol=0)


def test_build_net_leaves_the_global_rng_untouched():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    build_quiet("dip", (1, 23, 17), seed=7)
    build_quiet("deep_decoder", (3, 64, 48), seed=8)
    assert torch.equal(torch.get_rng_state(), state)
    after = torch.rand(5)
    torch.manual_seed(123)
    assert torch.equal(after, torch.rand(5))


def test_build_net_seeds_only_the_cpu_generator(monkeypatch):
    """The weights are drawn on the CPU; a GPU's generators belong to the caller (torch's
    manual_seed would reseed them all, and fork_rng(devices=[]) restores only the CPU's)."""
    calls = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: calls.append(seed))
    monkeypatch.setattr(torch.mps, "manual_seed", lambda seed: calls.append(seed))
    build_quiet("deep_decoder", (1, 64, 64), seed=5)
    assert calls == []
    torch.manual_seed(5)  # the check itself: this one would have been seen
    assert calls


def test_available_nets_and_the_skip_alias():
    assert available_nets() == ("deep_decoder", "dip", "conv_decoder", "conv_generator")
    classes = [DeepDecoder, SkipNet, ConvDecoder, ConvGenerator]
    for name, cls in zip(available_nets(), classes, strict=True):
        net, _ = build_quiet(name, (1, 23, 17))
        assert isinstance(net, cls)
    net, _ = build_net("skip", (1, 64, 64), **SMALL["dip"])
    assert isinstance(net, SkipNet)


def test_unknown_network_name_lists_the_valid_ones():
    with pytest.raises(
        ValueError,
        match=r"unknown network 'unet'; use one of: deep_decoder, dip, conv_decoder, "
        r"conv_generator \(alias: skip=dip\)",
    ):
        build_net("unet", (1, 64, 64))
    with pytest.raises(TypeError, match="the network name must be a string"):
        build_net(None, (1, 64, 64))


def test_unknown_option_is_named_and_the_valid_ones_listed():
    with pytest.raises(
        TypeError,
        match=r"unknown option 'width' for network 'deep_decoder'; its options are: channels, "
        r"num_layers, upsample_first",
    ):
        build_net("deep_decoder", (1, 64, 64), width=3)
    with pytest.raises(
        TypeError,
        match=r"unknown option 'upsample_first' for network 'dip'; its"
        r" options are: channels, skip_channels, num_scales, input_channels",
    ):
        build_net("dip", (1, 64, 64), upsample_first=True)


def test_invalid_norm_option_values_and_shapes_are_refused():
    with pytest.raises(ValueError, match="norm must be one of channel, batch, none; got 'layer'"):
        build_net("dip", (1, 64, 64), norm="layer")
    with pytest.raises(TypeError, match=r"channels must be an integer, got 8.5"):
        build_net("deep_decoder", (1, 64, 64), channels=8.5)
    with pytest.raises(ValueError, match="num_layers must be an integer >= 2, got 1"):
        build_net("conv_decoder", (1, 64, 64), num_layers=1)
    with pytest.raises(ValueError, match="output_activation must be one of sigmoid, none"):
        build_net("conv_decoder", (1, 64, 64), output_activation="tanh")
    with pytest.raises(TypeError, match="upsample_first must be True or False"):
        build_net("deep_decoder", (1, 64, 64), upsample_first="yes")
    with pytest.raises(
        ValueError,
        match=r"image_shape must be \(H, W\) or \(C, H, W\), got \(1, 1, 64, 64\)",
    ):
        build_net("deep_decoder", (1, 1, 64, 64))
    with pytest.raises(ValueError, match="image_shape entries must be an integer >= 1, got 0"):
        build_net("deep_decoder", (1, 0, 64))
    with pytest.raises(TypeError, match=r"image_shape must be \(H, W\) or \(C, H, W\)"):
        build_net("deep_decoder", 64)
    # a depth far beyond the image: refused, not a forward pass that exhausts the memory
    for name, option in (("deep_decoder", "num_layers"), ("dip", "num_scales")):
        with pytest.raises(ValueError, match=r"would generate \d+x\d+ for a 64x64 image"):
            build_net(name, (1, 64, 64), **{option: 12})
    with pytest.raises(ValueError, match="eps must satisfy 0 < eps, got -1.0"):
        deepprior.nets.ChannelNorm(3, eps=-1.0)
    with pytest.raises(ValueError, match=r"seed must be below 2\*\*64"):
        build_net("deep_decoder", (1, 64, 64), seed=2**64)
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        build_net("deep_decoder", (1, 64, 64), seed=-1)
    # numpy integers (e.g. from an array's shape) are fine
    net, _ = build_net("deep_decoder", tuple(np.zeros((1, 64, 64)).shape), channels=4)
    assert net.output_shape == (1, 64, 64)


# --- the channel-normalisation finding (Dai & Heckel 2019), small and fast ------------------


def _fit_conv_generator(norm: str, image: torch.Tensor, steps: int) -> tuple[list[float], float]:
    net, z = build_net("conv_generator", tuple(image.shape[1:]), norm=norm, channels=16)
    first_weight = next(net.parameters())
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    losses, first_grad = [], 0.0
    for step in range(steps):
        optimizer.zero_grad()
        loss = torch.mean((net(z) - image) ** 2)
        loss.backward()
        if step == 0:
            first_grad = first_weight.grad.norm().item()
        losses.append(loss.item())
        optimizer.step()
    return losses, first_grad


def test_channel_norm_avoids_vanishing_gradients_of_a_deep_conv_generator():
    # a clean 32x32 crop of camera; 6 layers of 3x3 convs, k=16, no upsampling, plain SGD lr 0.1
    crop = data.camera()[200:232, 220:252].astype(np.float32) / 255.0
    image = torch.from_numpy(crop)[None, None]
    with_cn, grad_cn = _fit_conv_generator("channel", image, steps=300)
    without, grad_none = _fit_conv_generator("none", image, steps=300)
    # measured (torch 2.13, CPU): loss 0.37 -> 2.7e-5 with channel norm, 0.08345 -> 0.08342
    # without; first-layer gradient norm 1.7 with, 1.6e-4 without
    assert min(with_cn[-10:]) < 1e-3 * with_cn[0]  # falls by more than 3 orders of magnitude
    assert without[-1] > 0.99 * without[0]  # barely moves
    assert grad_none < 1e-2 * grad_cn  # orders of magnitude smaller gradients


def test_a_registered_network_s_output_must_be_the_image(registry):
    from deepprior.nets import DeepDecoder

    deepprior.register_net("grey_only", lambda shape, norm="channel": DeepDecoder(
        (1, *shape[1:]), norm=norm, channels=4))
    assert deepprior.build_net("grey_only", (1, 16, 16))[0] is not None
    with pytest.raises(ValueError, match=r"network 'grey_only' made an output of shape "
                                         r"\(1, 1, 16, 16\) for an image of shape "
                                         r"\(1, 3, 16, 16\)"):
        deepprior.build_net("grey_only", (3, 16, 16))


def test_the_output_check_of_a_registered_network_leaves_its_state_and_the_callers_rng(
        registry):
    class Noisy(torch.nn.Module):  # dropout draws, batch norm keeps statistics in training
        def __init__(self, shape, norm="channel"):
            super().__init__()
            self.input_shape = (1, 2, *shape[1:])
            self.body = torch.nn.Sequential(torch.nn.Conv2d(2, shape[0], 1),
                                            torch.nn.BatchNorm2d(shape[0]), torch.nn.Dropout())

        def forward(self, z):
            return self.body(z)

    deepprior.register_net("noisy", Noisy)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    net, _ = deepprior.build_net("noisy", (1, 8, 8))
    assert torch.equal(torch.get_rng_state(), before)
    assert net.training and int(net.body[1].num_batches_tracked) == 0
    assert torch.equal(net.body[1].running_mean, torch.zeros(1))


def test_registering_an_alias_or_replacing_a_network_and_its_defaults(registry):
    from deepprior.nets import DeepDecoder

    factory = lambda shape, norm="channel": DeepDecoder(shape, norm=norm, channels=4)  # noqa: E731
    with pytest.raises(ValueError, match="'skip' is another name of 'dip'; choose another name"):
        deepprior.register_net("skip", factory, replace=True)
    deepprior.register_net("deep_decoder", factory, replace=True)  # the built-in's rows go
    assert "deep_decoder" not in deepprior.PROBLEMS["denoise"]
    result = deepprior.reconstruct(deepprior.sample_image("camera", size=16),
                                   net="deep_decoder", max_num_iter=2, stop="fixed:2")
    assert result.config["net_options"] == {}
    assert deepprior.problem_defaults("denoise", "skip") is deepprior.PROBLEMS["denoise"]["dip"]


def test_integral_floats_are_taken_as_the_integers_they_are():
    for name in ("deep_decoder", "dip", "conv_decoder"):
        net, z = deepprior.build_net(name, (1, 64, 64), channels=8.0)
        assert tuple(net(z).shape) == (1, 1, 64, 64)


def test_an_unknown_option_lists_the_factory_s_own(registry):
    from deepprior.nets import DeepDecoder

    deepprior.register_net("positional", lambda shape, norm="channel", channels=4: DeepDecoder(
        shape, norm=norm, channels=channels))
    with pytest.raises(TypeError, match="its options are: channels"):
        deepprior.build_net("positional", (1, 16, 16), widht=3)
