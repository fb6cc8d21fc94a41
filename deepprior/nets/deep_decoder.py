"""The Deep Decoder of Heckel & Hand (ICLR 2019): 1×1 convolutions, upsampling, channel norm."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from deepprior.checks import check_int
from deepprior.nets.layers import (
    GeneratorNet,
    conv2d,
    make_norm,
    output_head,
    upsample2x,
)


class DeepDecoder(GeneratorNet):
    r"""Deep Decoder: an underparameterised image generator without convolutions wider than 1×1.

    Parameters
    ----------
    image_shape : tuple of int
        ``(C, H, W)`` of the image to produce.
    norm : {"channel", "batch", "none"}, optional
        Normalisation after each hidden layer, by default ``"channel"`` (as in the paper).
    channels : int, optional
        Channels ``k`` of every hidden layer and of the input ``z``, by default 64.
    num_layers : int, optional
        Number of hidden layers ``d``, by default 6; the first ``d - 1`` upsample by 2.
    upsample_first : bool, optional
        ``False`` (default): each layer is ``1×1 conv → upsample → ReLU → norm``; ``True``:
        ``upsample → 1×1 conv → ReLU → norm`` (no upsampling in the first layer instead of the
        last), the variant used in the paper's best denoising runs. The flag says what it
        does here; the authors' code names the two the other way round (its
        ``upsample_first=False`` is this ``True``).

    Notes
    -----
    With :math:`U` bilinear ×2 upsampling (``align_corners=False``), :math:`C_i` 1×1 convolutions
    :math:`k\to k` without bias and :math:`N` channel normalisation, the network is

    .. math::

        x = \mathrm{sigmoid}(C_{out}\, B_d \cdots B_1 z), \qquad
        B_i = N \circ \mathrm{ReLU} \circ U \circ C_i \; (B_d \text{ without } U),

    with a fixed input :math:`z \sim U[0, 0.1)` of shape ``(1, k, H/2^{d-1}, W/2^{d-1})`` and a
    1×1 output convolution :math:`k \to C` without bias. With channel norm it has
    :math:`d k^2 + 2 d k + k C` parameters (25,536 for ``k=64, C=3``). Heckel & Hand, "Deep
    Decoder: Concise Image Representations from Untrained Non-convolutional Networks", ICLR 2019.

    Sides are generated as multiples of ``2^{d-1}`` (32 by default) and at least twice that (64):
    from a 1×1 input every layer would be constant and so would the image. Other sizes are
    generated larger and centre-cropped back (with a warning).
    """

    def __init__(
        self,
        image_shape: Sequence[int],
        *,
        norm: str = "channel",
        channels: int = 64,
        num_layers: int = 6,
        upsample_first: bool = False,
    ) -> None:
        channels = check_int("channels", channels, minimum=1)
        num_layers = check_int("num_layers", num_layers, minimum=1)
        if not isinstance(upsample_first, bool):
            raise TypeError(f"upsample_first must be True or False, got {upsample_first!r}")
        stride = 2 ** (num_layers - 1)
        super().__init__(
            image_shape,
            multiple=stride,
            minimum=2 * stride,
            reason=f"the input z must be at least 2x2 after {num_layers - 1} upsamplings",
        )
        image_channels, gen_h, gen_w = self.generated_shape
        self.input_shape = (1, channels, gen_h // stride, gen_w // stride)

        layers: list[nn.Module] = []
        for i in range(num_layers):
            conv = conv2d(channels, channels, 1, bias=False)
            if upsample_first:
                steps = [conv] if i == 0 else [upsample2x(), conv]
            else:
                steps = [conv] if i == num_layers - 1 else [conv, upsample2x()]
            layers.append(nn.Sequential(*steps, nn.ReLU(), make_norm(norm, channels)))
        layers.append(output_head(channels, image_channels, bias=False))
        self.body = nn.Sequential(*layers)
