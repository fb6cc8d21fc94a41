"""Convolutional generators: ConvDecoder (Darestani & Heckel 2021) and the plain ConvGenerator.

:class:`ConvDecoder` upsamples a small fixed input to the image size through 3×3 convolutions.
:class:`ConvGenerator` is the network of Dai & Heckel's channel-normalisation experiment: 3×3
convolutions at full resolution and no upsampling; it exists to study normalisation and
gradient flow (``benchmarks/channel_norm.py``, the diagnostics), not as an image prior.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from deepprior.checks import check_int
from deepprior.nets.layers import (
    GeneratorNet,
    conv_relu_norm,
    output_head,
)

DEFAULT_INPUT_SIDE = 8
"""Short side of ConvDecoder's default input grid."""


class ConvDecoder(GeneratorNet):
    r"""ConvDecoder: nearest-neighbour upsampling and 3×3 convolutions from a small input grid.

    Parameters
    ----------
    image_shape : tuple of int
        ``(C, H, W)`` of the image to produce.
    norm : {"channel", "batch", "none"}, optional
        Normalisation after each hidden layer, by default ``"channel"``.
    channels : int, optional
        Channels ``k`` of every hidden layer and of the input ``z``, by default 64.
    num_layers : int, optional
        Number of 3×3 convolution layers ``d >= 2``, by default 6; the first ``d - 1`` upsample.
    input_size : tuple of int or None, optional
        ``(h0, w0)`` of the input grid, each between 2 and the image side. By default the short
        side is 8 and the long side follows the aspect ratio (8×8 for a square image, 11×8 for
        512×384).
    output_activation : {"sigmoid", "none"}, optional
        ``"sigmoid"`` (default here) keeps the output in ``[0, 1]``, as natural images are;
        ``"none"`` is the paper's linear output (MRI magnitudes are not bounded by 1).

    Raises
    ------
    ValueError
        If the image is smaller than the input grid (8 px per side by default), or
        ``input_size`` is not two integers between 2 and the image sides.

    Notes
    -----
    The layer sizes grow geometrically from :math:`(h_0, w_0)` to :math:`(H, W)`:
    :math:`s_n = \lceil h_0 r^n \rceil` with :math:`r = (H/h_0)^{1/(d-1)}`, the last one exactly
    :math:`H` (same for widths), so no crop is ever needed. Layer :math:`n < d` is
    nearest upsampling to :math:`s_n` → 3×3 conv → ReLU → norm, layer :math:`d` is
    3×3 conv → ReLU → norm, then a 1×1 convolution to ``C`` channels. Convolutions have no bias
    and zero padding, as in the official code; :math:`z \sim U[0, 0.1)` of shape
    ``(1, k, h0, w0)``. Darestani & Heckel, "Accelerated MRI with Un-trained Neural Networks",
    IEEE TCI 2021 (their MRI setting: 8 layers, 160 channels, input 8×4, linear output).

    The defaults here (6 layers, 64 channels, 8×8 input) suit natural images on a CPU: for a
    256×256 image every layer upsamples by exactly 2, the same five doublings as the Deep
    Decoder, with 3×3 instead of 1×1 convolutions (about 222 k parameters).
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        *,
        norm: str = "channel",
        channels: int = 64,
        num_layers: int = 6,
        input_size: tuple[int, int] | None = None,
        output_activation: str = "sigmoid",
    ) -> None:
        channels = check_int("channels", channels, minimum=1)
        num_layers = check_int("num_layers", num_layers, minimum=2)
        super().__init__(
            image_shape,
            minimum=2,
            pad_to_minimum=False,
            reason="its input grid needs at least 2x2 pixels",
        )
        image_channels, height, width = self.output_shape
        input_h, input_w = _input_grid(input_size, height, width)
        self.input_shape = (1, channels, input_h, input_w)

        sizes = list(
            zip(
                _geometric_sizes(input_h, height, num_layers - 1),
                _geometric_sizes(input_w, width, num_layers - 1),
                strict=True,
            )
        )
        layers: list[nn.Module] = [
            nn.Sequential(
                nn.Upsample(size=size, mode="nearest"),
                *conv_relu_norm(channels, channels, 3, norm, padding_mode="zeros"),
            )
            for size in sizes
        ]
        layers.append(conv_relu_norm(channels, channels, 3, norm, padding_mode="zeros"))
        layers.append(
            output_head(channels, image_channels, bias=False, activation=output_activation)
        )
        self.body = nn.Sequential(*layers)


def _input_grid(input_size: tuple[int, int] | None, height: int, width: int) -> tuple[int, int]:
    """The input grid ``(h0, w0)``: given, or 8 on the short side and the image's aspect ratio."""
    if input_size is None:
        if min(height, width) < DEFAULT_INPUT_SIDE:
            raise ValueError(
                f"image size {height}x{width} is smaller than ConvDecoder's default "
                f"{DEFAULT_INPUT_SIDE}x{DEFAULT_INPUT_SIDE} input grid (it needs at least "
                f"{DEFAULT_INPUT_SIDE} px per side); pass input_size=(h0, w0) with "
                f"2 <= h0 <= {height} and 2 <= w0 <= {width}"
            )
        short = DEFAULT_INPUT_SIDE
        if height >= width:
            return min(height, round(short * height / width)), short
        return short, min(width, round(short * width / height))
    if not isinstance(input_size, Sequence) or len(input_size) != 2:
        raise TypeError(f"input_size must be a pair of integers (h0, w0), got {input_size!r}")
    input_h, input_w = (check_int("input_size", v, minimum=1) for v in input_size)
    if not (2 <= input_h <= height and 2 <= input_w <= width):
        raise ValueError(
            f"input_size {input_h}x{input_w} does not fit image size {height}x{width}; "
            f"pass input_size=(h0, w0) with 2 <= h0 <= {height} and 2 <= w0 <= {width}"
        )
    return input_h, input_w


def _geometric_sizes(start: int, stop: int, count: int) -> list[int]:
    """``count`` sizes growing geometrically from ``start`` (excluded) to ``stop`` (the last)."""
    ratio = (stop / start) ** (1.0 / count)
    # the small tolerance keeps e.g. 8 * 2.0**3 from rounding up to 65 through float error
    return [math.ceil(start * ratio**n - 1e-9) for n in range(1, count)] + [stop]


class ConvGenerator(GeneratorNet):
    r"""The channel-normalisation study network: 3×3 convolutions at full resolution.

    Parameters
    ----------
    image_shape : tuple of int
        ``(C, H, W)`` of the image to produce; at least 2 px per side.
    norm : {"channel", "batch", "none"}, optional
        Normalisation after each hidden layer, by default ``"channel"``.
    channels : int, optional
        Channels ``k`` of every hidden layer and of the input ``z``, by default 32.
    num_layers : int, optional
        Number of hidden 3×3 convolution layers, by default 6.
    output_activation : {"none", "sigmoid"}, optional
        By default ``"none"``: a linear output, as in the paper's experiment.

    Raises
    ------
    ValueError
        If a side of the image is below 2 px.

    Notes
    -----
    Each hidden layer is 3×3 conv :math:`k \to k` (no bias, reflection padding) → ReLU → norm;
    the output is a 1×1 convolution :math:`k \to C` without bias; the input is
    :math:`z \sim U[0, 0.1)` of shape ``(1, k, H, W)``; nothing is upsampled. Fitted to one clean
    image with plain gradient descent, it trains with channel normalisation and stalls without
    it (vanishing gradients): Dai & Heckel, "Channel Normalization in Convolutional Neural
    Networks avoids Vanishing Gradients", ICML workshop 2019 (6 layers, ``k = 32``, 256×256,
    SGD with learning rate 0.1).
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        *,
        norm: str = "channel",
        channels: int = 32,
        num_layers: int = 6,
        output_activation: str = "none",
    ) -> None:
        channels = check_int("channels", channels, minimum=1)
        num_layers = check_int("num_layers", num_layers, minimum=1)
        super().__init__(
            image_shape,
            minimum=2,
            pad_to_minimum=False,
            reason="its 3x3 convolutions use reflection padding",
        )
        image_channels, height, width = self.output_shape
        self.input_shape = (1, channels, height, width)
        self.body = nn.Sequential(
            *(conv_relu_norm(channels, channels, 3, norm) for _ in range(num_layers)),
            output_head(channels, image_channels, bias=False, activation=output_activation),
        )
