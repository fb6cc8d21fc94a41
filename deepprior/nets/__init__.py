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
from collections.abc import Callable, Sequence

import torch
from torch import nn

from deepprior.checks import check_choice, check_image_shape, check_int
from deepprior.nets.conv_decoder import ConvDecoder, ConvGenerator
from deepprior.nets.deep_decoder import DeepDecoder
from deepprior.nets.dip import SkipNet
from deepprior.nets.layers import (
    INPUT_SCALE,
    NORMS,
    ChannelNorm,
    GeneratorNet,
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
    "add_net",
    "available_nets",
    "build_net",
    "make_norm",
]

#: Network factories by name: ``factory(image_shape, norm=..., **options)`` returns a module
#: with an ``input_shape`` attribute (the shape of its fixed input ``z``).
_NETS: dict[str, Callable[..., nn.Module]] = {
    "deep_decoder": DeepDecoder,
    "dip": SkipNet,
    "conv_decoder": ConvDecoder,
    "conv_generator": ConvGenerator,
}
_ALIASES: dict[str, str] = {"skip": "dip"}
#: The networks deepprior defines (a factory of another package's gets its output checked).
BUILT_IN: dict[str, Callable[..., nn.Module]] = dict(_NETS)


def is_built_in(name: str) -> bool:
    """Whether the network registered as ``name`` is deepprior's own (not added or replaced)."""
    return name in BUILT_IN and _NETS.get(name) is BUILT_IN[name]


def available_nets() -> tuple[str, ...]:
    """The names :func:`build_net` accepts (without aliases: ``"skip"`` is ``"dip"``)."""
    return tuple(_NETS)


def add_net(name: str, factory: Callable[..., nn.Module], *, replace: bool = False) -> None:
    """Add a network factory to the registry (see :func:`deepprior.register_net`)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a network name must be an identifier such as 'my_net', got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory must be callable, got {type(factory).__name__}")
    if name in _ALIASES:
        raise ValueError(f"{name!r} is another name of {_ALIASES[name]!r}; choose another name")
    if name in _NETS and not replace:
        raise ValueError(f"a network named {name!r} exists already; pass replace=True")
    _NETS[name] = factory


def canonical_name(name: str) -> str:
    """``name`` with aliases resolved; ``ValueError`` listing the valid names if unknown."""
    if not isinstance(name, str):
        raise TypeError(f"the network name must be a string, got {name!r}")
    canonical = _ALIASES.get(name, name)
    if canonical not in _NETS:
        raise ValueError(f"unknown network {name!r}; use one of: {', '.join(_NETS)} "
                         f"(alias: {', '.join(f'{a}={t}' for a, t in _ALIASES.items())})")
    return canonical


def build_net(
    name: str,
    image_shape: Sequence[int],
    *,
    norm: str = "channel",
    seed: int = 0,
    **options: object,
) -> tuple[nn.Module, torch.Tensor]:
    """Build a network and its fixed input, reproducibly from ``seed``.

    Parameters
    ----------
    name : str
        One of :func:`available_nets` (built-in: ``"deep_decoder"``, ``"dip"`` (alias
        ``"skip"``), ``"conv_decoder"``, ``"conv_generator"``) or a registered network.
    image_shape : (H, W) or (C, H, W)
        Shape of the image to produce.
    norm : {"channel", "batch", "none"}, optional
        Normalisation layer, by default ``"channel"`` (:class:`ChannelNorm`).
    seed : int, optional
        Seeds the weights and ``z``; by default 0.
    **options
        Options of the chosen network (e.g. ``channels``, ``num_layers``); see its class.

    Returns
    -------
    net : nn.Module
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
    The weights (PyTorch's default initialisation) and ``z`` are drawn from the global CPU
    generator inside ``torch.random.fork_rng``, seeded with ``seed``: the same seed gives
    identical weights and ``z``, and the caller's generator state is restored afterwards (a
    GPU's generators are not touched).

    Examples
    --------
    >>> net, z = build_net("deep_decoder", (3, 64, 64), channels=16)
    >>> tuple(net(z).shape)
    (1, 3, 64, 64)
    """
    name = canonical_name(name)
    factory = _NETS[name]
    check_choice("norm", norm, NORMS)
    seed = check_int("seed", seed, minimum=0)
    if seed >= 2**64:
        raise ValueError(f"seed must be below 2**64 (a torch seed), got {seed}")
    parameters = inspect.signature(factory).parameters
    open_ended = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    valid = [p for i, (p, v) in enumerate(parameters.items()) if p != "norm" and (
        v.kind is v.KEYWORD_ONLY or (i > 0 and v.kind is v.POSITIONAL_OR_KEYWORD))]
    unknown = [o for o in options if o not in parameters or o == "norm"]
    if unknown and not open_ended:
        raise TypeError(f"unknown option {', '.join(map(repr, unknown))} for network {name!r}; "
                        f"its options are: {', '.join(valid) or 'none'}")
    if "norm" in parameters or open_ended:
        options["norm"] = norm
    elif norm != "channel":
        raise ValueError(f"network {name!r} has no norm option; leave norm at its default")
    with torch.random.fork_rng(devices=[]):  # restores the CPU generator, the one seeded
        torch.random.default_generator.manual_seed(seed)  # (torch.manual_seed: GPUs' too)
        net = factory(check_image_shape(image_shape), **options)
        if not isinstance(net, nn.Module) or not hasattr(net, "input_shape"):
            raise TypeError(f"the factory of network {name!r} must return an nn.Module with an "
                            "input_shape attribute (the shape of its fixed input z)")
        net = net.to(torch.float32)
        z = INPUT_SCALE * torch.rand(tuple(net.input_shape), dtype=torch.float32)
        if not is_built_in(name):  # another package's factory: its output must be the image
            training = net.training  # (the loss would broadcast a wrong one); probed in eval
            with torch.no_grad():  # mode, here: no batch-norm statistics, no random draw
                shape = tuple(net.eval()(z).shape)
            net.train(training)
            if shape != (1, *check_image_shape(image_shape)):
                raise ValueError(f"network {name!r} made an output of shape {shape} for an "
                                 f"image of shape {(1, *check_image_shape(image_shape))}")
    return net, z
