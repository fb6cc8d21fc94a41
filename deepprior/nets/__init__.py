"""Untrained generator networks and :func:`build_net`, the registry that makes them by name.

Every network maps a fixed random input ``z`` to an image tensor ``(1, C, H, W)`` of exactly the
requested size, with values in ``[0, 1]`` when its output has a sigmoid:

========================  ===============================================================
name                      network
========================  ===============================================================
``"deep_decoder"``        :class:`DeepDecoder` (Heckel & Hand, ICLR 2019)
``"dip"`` (``"skip"``)    :class:`SkipNet`, Deep Image Prior's "skip" net (Ulyanov et al. 2018)
``"conv_decoder"``        :class:`ConvDecoder` (Darestani & Heckel 2021)
``"conv_generator"``      :class:`ConvGenerator`, the channel-norm study net (Dai & Heckel 2019)
========================  ===============================================================
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch

from deepprior.nets.conv_decoder import ConvDecoder, ConvGenerator
from deepprior.nets.deep_decoder import DeepDecoder
from deepprior.nets.dip import SkipNet
from deepprior.nets.layers import (
    INPUT_SCALE,
    NORMS,
    ChannelNorm,
    GeneratorNet,
    check_choice,
    check_positive_int,
    make_norm,
)

__all__ = [
    "NORMS",
    "ChannelNorm",
    "ConvDecoder",
    "ConvGenerator",
    "DeepDecoder",
    "GeneratorNet",
    "SkipNet",
    "available_nets",
    "build_net",
    "make_norm",
]

_NETS: dict[str, type[GeneratorNet]] = {
    "deep_decoder": DeepDecoder,
    "dip": SkipNet,
    "conv_decoder": ConvDecoder,
    "conv_generator": ConvGenerator,
}
_ALIASES: dict[str, str] = {"skip": "dip"}


def available_nets() -> tuple[str, ...]:
    """The names :func:`build_net` accepts (without aliases: ``"skip"`` is ``"dip"``)."""
    return tuple(_NETS)


def build_net(
    name: str,
    image_shape: Sequence[int],
    *,
    norm: str = "channel",
    seed: int = 0,
    **options: object,
) -> tuple[GeneratorNet, torch.Tensor]:
    """Build a network and its fixed input, reproducibly from ``seed``.

    Parameters
    ----------
    name : str
        One of :func:`available_nets`: ``"deep_decoder"``, ``"dip"`` (alias ``"skip"``),
        ``"conv_decoder"``, ``"conv_generator"``.
    image_shape : tuple of int
        ``(C, H, W)`` of the image to produce (``image.shape[1:]`` for a ``(1, C, H, W)`` tensor).
    norm : {"channel", "batch", "none"}, optional
        Normalisation layer, by default ``"channel"`` (:class:`ChannelNorm`).
    seed : int, optional
        Seeds the weights and ``z``; by default 0.
    **options
        Options of the chosen network (e.g. ``channels``, ``num_layers``); see its class.

    Returns
    -------
    net : GeneratorNet
        The network on the CPU, float32; ``net(z)`` has shape ``(1, *image_shape)``.
    z : torch.Tensor
        Its fixed input, float32 on the CPU, uniform in ``[0, 0.1)``, of shape
        ``net.input_shape``.

    Raises
    ------
    ValueError
        Unknown ``name`` or ``norm``; an image too small for the network; an option out of range.
    TypeError
        An option the network does not have, or of the wrong type.

    Warns
    -----
    UserWarning
        When the image size does not fit the network's strides: the network then generates the
        next fitting size up and its output is centre-cropped back to the image size.

    Notes
    -----
    The weights (PyTorch's default initialisation) and ``z`` are drawn from the global RNG
    inside ``torch.random.fork_rng`` after ``torch.manual_seed(seed)``: the same seed gives
    identical weights and ``z``, and the caller's global RNG state is restored afterwards.

    Examples
    --------
    >>> net, z = build_net("deep_decoder", (3, 64, 64), channels=16)
    >>> tuple(net(z).shape)
    (1, 3, 64, 64)
    """
    cls = _lookup(name)
    _check_options(name, cls, options)
    check_choice("norm", norm, NORMS)
    check_positive_int("seed", seed, minimum=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = cls(image_shape, norm=norm, **options).to(torch.float32)
        z = INPUT_SCALE * torch.rand(net.input_shape, dtype=torch.float32)
    return net, z


def _lookup(name: str) -> type[GeneratorNet]:
    if not isinstance(name, str):
        raise TypeError(f"the network name must be a string, got {name!r}")
    canonical = _ALIASES.get(name, name)
    if canonical not in _NETS:
        names = ", ".join(
            n + "".join(f" (alias {a})" for a, t in _ALIASES.items() if t == n) for n in _NETS
        )
        raise ValueError(f"unknown network {name!r}; use one of: {names}")
    return _NETS[canonical]


def _check_options(name: str, cls: type[GeneratorNet], options: dict[str, object]) -> None:
    parameters = inspect.signature(cls.__init__).parameters
    valid = [p for p, v in parameters.items() if v.kind is v.KEYWORD_ONLY and p != "norm"]
    unknown = [o for o in options if o not in valid]
    if unknown:
        raise TypeError(
            f"unknown option {', '.join(map(repr, unknown))} for network {name!r}; "
            f"its options are: {', '.join(valid)}"
        )
