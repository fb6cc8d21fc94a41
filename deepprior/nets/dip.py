"""The "skip" encoder–decoder of Deep Image Prior (Ulyanov, Vedaldi & Lempitsky, CVPR 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from deepprior.checks import check_int
from deepprior.nets.layers import (
    GeneratorNet,
    conv_norm_lrelu,
    make_norm,
    output_head,
    upsample2x,
)


class SkipNet(GeneratorNet):
    r"""Deep Image Prior's "skip" network in its denoising configuration.

    Parameters
    ----------
    image_shape : tuple of int
        ``(C, H, W)`` of the image to produce.
    norm : {"channel", "batch", "none"}, optional
        Normalisation after every convolution and after each concatenation, by default
        ``"channel"``. The original code uses ``"batch"`` (BatchNorm on a batch of one, which
        changes its output after ``eval()``).
    channels : int, optional
        Channels of the down and up branches at every scale, by default 128.
    skip_channels : int, optional
        Channels of each skip connection, by default 4.
    num_scales : int, optional
        Number of scales (stride-2 downsamplings), by default 5.
    input_channels : int, optional
        Channels of the input noise ``z``, by default 32.

    Notes
    -----
    With :math:`x_0 = z` and :math:`x_{i+1} = D_i(x_i)` (resolution :math:`H/2^{i+1}`), the
    scales are assembled from the coarsest, :math:`u_L = x_L` (``L = num_scales``), to the finest:

    .. math::

        u_i = \mathrm{Up}_i\big(\,[\,S_i(x_i),\; \uparrow_2 u_{i+1}\,]\,\big), \qquad
        x = \mathrm{sigmoid}\big(C_{out}\, u_0\big),

    with the down block :math:`D_i` = 3×3 conv stride 2 → N → LReLU → 3×3 conv → N → LReLU, the
    skip :math:`S_i` = 1×1 conv → N → LReLU, :math:`\uparrow_2` bilinear ×2 upsampling, the up
    block :math:`\mathrm{Up}_i` = N → 3×3 conv → N → LReLU → 1×1 conv → N → LReLU applied to the
    concatenation (skip channels first), and :math:`C_{out}` a 1×1 convolution to ``C``
    channels. All convolutions have biases and reflection padding; LReLU has slope 0.2. The
    input is :math:`z \sim U[0, 0.1)` with ``input_channels`` channels at full resolution. With
    the defaults and ``norm="batch"`` this is the layout of the official ``skip`` network
    (``skip_n33d = skip_n33u = 128``, ``skip_n11 = 4``, 5 scales, bilinear upsampling,
    reflection padding): 2,217,831 parameters for a colour image. Ulyanov, Vedaldi & Lempitsky,
    "Deep Image Prior", CVPR 2018.

    Sides are generated as multiples of ``2^num_scales`` (32) and at least twice that (64):
    the coarsest feature map must be at least 2 px per side for its reflection-padded 3×3
    convolution. Other sizes are generated larger and centre-cropped back (with a warning).
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        *,
        norm: str = "channel",
        channels: int = 128,
        skip_channels: int = 4,
        num_scales: int = 5,
        input_channels: int = 32,
    ) -> None:
        channels, skip_channels, num_scales, input_channels = (
            check_int(name, value, minimum=1) for name, value in [
                ("channels", channels), ("skip_channels", skip_channels),
                ("num_scales", num_scales), ("input_channels", input_channels)])
        stride = 2**num_scales
        super().__init__(
            image_shape,
            multiple=stride,
            minimum=2 * stride,
            reason="its coarsest scale, 1/2^num_scales of the size, needs 2 px for the "
            "reflection padding of a 3x3 convolution",
        )
        image_channels, gen_h, gen_w = self.generated_shape
        self.input_shape = (1, input_channels, gen_h, gen_w)
        self.body = nn.Sequential(
            _SkipScales(norm, channels, skip_channels, num_scales, input_channels),
            output_head(channels, image_channels, bias=True),
        )


class _SkipScales(nn.Module):
    """The recursive encoder–decoder of :class:`SkipNet`: ``num_scales`` scales, finest first."""

    def __init__(
        self, norm: str, channels: int, skip_channels: int, num_scales: int, input_channels: int
    ) -> None:
        super().__init__()
        self.down = nn.ModuleList()
        self.skip = nn.ModuleList()
        self.up = nn.ModuleList()
        for i in range(num_scales):
            in_channels = input_channels if i == 0 else channels
            self.down.append(
                nn.Sequential(
                    conv_norm_lrelu(in_channels, channels, 3, norm, stride=2),
                    conv_norm_lrelu(channels, channels, 3, norm),
                )
            )
            self.skip.append(conv_norm_lrelu(in_channels, skip_channels, 1, norm))
            self.up.append(
                nn.Sequential(
                    make_norm(norm, skip_channels + channels),
                    conv_norm_lrelu(skip_channels + channels, channels, 3, norm),
                    conv_norm_lrelu(channels, channels, 1, norm),
                )
            )
        self.upsample = upsample2x()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self._scale(0, z)

    def _scale(self, i: int, x: torch.Tensor) -> torch.Tensor:
        deeper = self.down[i](x)
        if i + 1 < len(self.down):
            deeper = self._scale(i + 1, deeper)
        joined = torch.cat([self.skip[i](x), self.upsample(deeper)], dim=1)
        return self.up[i](joined)
