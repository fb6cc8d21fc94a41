"""Building blocks shared by the untrained generator networks.

What lives here:

- :class:`ChannelNorm`, the per-image, per-channel normalisation of Dai & Heckel (2019), and
  :func:`make_norm`, which turns a norm name (``"channel"``, ``"batch"``, ``"none"``) into a layer;
- :func:`conv2d` (a size-preserving convolution, reflection padding by default) and the small
  ``conv → activation → norm`` sequences the networks are made of;
- :func:`output_head`, the final 1×1 convolution with its optional sigmoid;
- :class:`GeneratorNet`, the base class of every network in :mod:`deepprior.nets`: it records the
  requested image shape, the size the network actually generates, the shape of its fixed input,
  and centre-crops the generated image back to the requested size (with a warning at construction
  time, never silently).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from deepprior.checks import check_choice, check_float, check_image_shape, check_int

NORMS: tuple[str, ...] = ("channel", "batch", "none")
"""Valid values of the ``norm`` argument of every network."""

OUTPUT_ACTIVATIONS: tuple[str, ...] = ("sigmoid", "none")
"""Valid values of the ``output_activation`` argument."""

INPUT_SCALE = 0.1
"""The fixed input ``z`` of every network is uniform in ``[0, INPUT_SCALE)``."""

GENERATED_SIDE_LIMIT = 1024
"""The largest side a network may generate beyond 4 times the image's (then cropped)."""

PaddingMode = Literal["reflect", "zeros"]


class ChannelNorm(nn.Module):
    r"""Normalise every channel of every image over its pixels, then scale and shift.

    Parameters
    ----------
    num_channels : int
        Number of channels ``C`` of the input ``(N, C, H, W)``.
    eps : float, optional
        Added to the variance before the square root, by default ``1e-5``.

    Notes
    -----
    For image ``n`` and channel ``c`` with pixels ``x_{n,c}`` (``H·W`` values),

    .. math::

        y_{n,c} = \gamma_c \, \frac{x_{n,c} - \mu_{n,c}}{\sqrt{\sigma^2_{n,c} + \epsilon}}
                  + \beta_c,

    with :math:`\mu_{n,c}` the mean and :math:`\sigma^2_{n,c}` the biased variance over the
    ``H×W`` pixels; :math:`\gamma` (``weight``) and :math:`\beta` (``bias``) are learned and start
    at 1 and 0. This is channel normalisation as defined by Dai & Heckel, "Channel Normalization
    in Convolutional Neural Networks avoids Vanishing Gradients" (ICML workshop 2019), and the
    normalisation of the Deep Decoder (Heckel & Hand, ICLR 2019).

    The official code obtains it from ``BatchNorm2d`` on a batch of one, which agrees only in
    training mode: after ``eval()`` BatchNorm switches to running statistics. This layer keeps no
    running statistics, so ``train()`` and ``eval()`` give the same output.

    Examples
    --------
    >>> import torch
    >>> norm = ChannelNorm(4)
    >>> y = norm(torch.rand(1, 4, 5, 7))
    >>> bool(y.mean(dim=(2, 3)).abs().max() < 1e-6)
    True
    """

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_channels = check_int("num_channels", num_channels, minimum=1)
        self.eps = check_float("eps", eps, low=0.0, low_open=True)
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` of shape ``(N, C, H, W)``; returns the same shape."""
        # instance_norm without running statistics is exactly the formula above, in one fused op
        return F.instance_norm(x, weight=self.weight, bias=self.bias, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}"


def make_norm(norm: str, channels: int) -> nn.Module:
    """Return the normalisation layer called ``norm`` for ``channels`` channels.

    Parameters
    ----------
    norm : {"channel", "batch", "none"}
        ``"channel"``: :class:`ChannelNorm` (the default of every network here).
        ``"batch"``: ``nn.BatchNorm2d``, as the original Deep Image Prior code used it; on a batch
        of one it equals channel normalisation in training mode only.
        ``"none"``: ``nn.Identity``.
    channels : int
        Number of channels to normalise.

    Returns
    -------
    torch.nn.Module
        The layer.

    Raises
    ------
    ValueError
        If ``norm`` is not one of the names above.
    """
    check_choice("norm", norm, NORMS)
    if norm == "channel":
        return ChannelNorm(channels)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


def conv2d(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    *,
    stride: int = 1,
    bias: bool = True,
    padding_mode: PaddingMode = "reflect",
) -> nn.Conv2d:
    """A convolution with odd ``kernel_size`` that keeps the size (or divides it by ``stride``).

    The input is padded by ``(kernel_size - 1) // 2`` on each side, by reflection by default
    (Deep Image Prior, Deep Decoder) or with zeros (ConvDecoder). Reflection padding needs every
    side of the input to be larger than the padding, i.e. at least 2 px for a 3×3 kernel.
    """
    return nn.Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        stride=stride,
        padding=(kernel_size - 1) // 2,
        bias=bias,
        # A 1x1 kernel needs no padding: "zeros" with padding 0 skips the no-op reflection pad
        # (and its backward) that "reflect" still runs.
        padding_mode=padding_mode if kernel_size > 1 else "zeros",
    )


def conv_relu_norm(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    norm: str,
    *,
    padding_mode: PaddingMode = "reflect",
) -> nn.Sequential:
    """``conv (no bias) → ReLU → norm``: the layer of the Deep Decoder family of networks."""
    return nn.Sequential(
        conv2d(in_channels, out_channels, kernel_size, bias=False, padding_mode=padding_mode),
        nn.ReLU(),
        make_norm(norm, out_channels),
    )


def conv_norm_lrelu(
    in_channels: int, out_channels: int, kernel_size: int, norm: str, *, stride: int = 1
) -> nn.Sequential:
    """``conv (bias, reflection padding) → norm → LeakyReLU(0.2)``: the Deep Image Prior layer."""
    return nn.Sequential(
        conv2d(in_channels, out_channels, kernel_size, stride=stride),
        make_norm(norm, out_channels),
        nn.LeakyReLU(0.2),
    )


def output_head(
    in_channels: int,
    out_channels: int,
    *,
    bias: bool,
    activation: str = "sigmoid",
    kernel_size: int = 1,
) -> nn.Sequential:
    """The output layer: ``kernel_size`` conv to the image channels, then sigmoid or nothing."""
    check_choice("output_activation", activation, OUTPUT_ACTIVATIONS)
    layers: list[nn.Module] = [conv2d(in_channels, out_channels, kernel_size, bias=bias)]
    if activation == "sigmoid":
        layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


def upsample2x() -> nn.Upsample:
    """Bilinear ×2 upsampling with ``align_corners=False`` (Deep Decoder, Deep Image Prior)."""
    return nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)


def fitting_size(size: int, multiple: int, minimum: int) -> int:
    """The smallest integer ``>= max(size, minimum)`` that is a multiple of ``multiple``."""
    return max(minimum, multiple * math.ceil(size / multiple))


def center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop the last two dimensions of ``x`` to ``height × width`` around the centre."""
    top = (x.shape[-2] - height) // 2
    left = (x.shape[-1] - width) // 2
    return x[..., top : top + height, left : left + width]


class GeneratorNet(nn.Module):
    """Base class of the networks: fixed input ``z`` → image of exactly ``output_shape``.

    A subclass builds its layers in ``self.body`` and sets ``input_shape`` (the shape of ``z``).
    When the requested size does not fit the network (a side that is not a multiple of
    ``multiple``, or smaller than ``minimum`` with ``pad_to_minimum=True``), the network
    generates the next fitting size up, ``generated_shape``, and :meth:`forward` centre-crops
    its output back; the constructor warns (``UserWarning``) when that happens.

    Parameters
    ----------
    image_shape : tuple of int
        ``(C, H, W)`` of the image to produce.
    multiple : int, optional
        Every generated side is a multiple of this (the network's total stride), by default 1.
    minimum : int, optional
        Smallest side the network can generate, by default 1.
    pad_to_minimum : bool, optional
        What to do with a side below ``minimum``: generate ``minimum`` and crop (``True``,
        default) or raise ``ValueError`` (``False``).
    reason : str, optional
        Why ``minimum`` exists, quoted in the warning or the error.

    Attributes
    ----------
    output_shape : tuple of int
        ``(C, H, W)`` returned by ``forward`` (the requested shape).
    generated_shape : tuple of int
        ``(C, H', W')`` the network generates before the crop, ``H' >= H``, ``W' >= W``.
    input_shape : tuple of int
        Shape of the fixed input ``z``, ``(1, channels, h, w)``.

    Raises
    ------
    ValueError
        If a side is below ``minimum`` and ``pad_to_minimum`` is false, or the generated
        side would exceed :data:`GENERATED_SIDE_LIMIT` and 4 times the image's (a depth far
        beyond the image: a wasted, possibly memory-exhausting forward pass).
    """

    body: nn.Module
    input_shape: tuple[int, ...]

    def __init__(
        self,
        image_shape: Sequence[int],
        *,
        multiple: int = 1,
        minimum: int = 1,
        pad_to_minimum: bool = True,
        reason: str = "",
    ) -> None:
        super().__init__()
        channels, height, width = check_image_shape(image_shape)
        name = type(self).__name__
        if min(height, width) < minimum and not pad_to_minimum:
            raise ValueError(
                f"image size {height}x{width} is too small for {name}: it needs at least "
                f"{minimum} px per side ({reason})"
            )
        self.output_shape: tuple[int, int, int] = (channels, height, width)
        gen_h, gen_w = (fitting_size(s, multiple, minimum) for s in (height, width))
        if max(gen_h, gen_w) > max(GENERATED_SIDE_LIMIT, 4 * max(height, width)):
            raise ValueError(
                f"{name} would generate {gen_h}x{gen_w} for a {height}x{width} image ({reason});"
                " cropped away, those pixels cost memory and time only: use fewer layers "
                "(num_layers, num_scales)")
        self.generated_shape: tuple[int, int, int] = (channels, gen_h, gen_w)
        if (gen_h, gen_w) != (height, width):
            problems = []
            if height % multiple or width % multiple:
                problems.append(f"is not a multiple of {multiple}")
            if min(height, width) < minimum:
                problems.append(f"is below the {minimum} px per side {name} needs ({reason})")
            warnings.warn(
                f"image size {height}x{width} {' and '.join(problems)}; the network generates "
                f"{gen_h}x{gen_w} and its output is cropped back to {height}x{width} "
                "(centre crop)",
                UserWarning,
                stacklevel=3,
            )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Map the fixed input ``z`` of shape ``input_shape`` to an image ``(1, *output_shape)``."""
        _, height, width = self.output_shape
        return center_crop(self.body(z), height, width)
