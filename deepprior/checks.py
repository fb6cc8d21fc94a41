"""Argument checks for the entry points: the one place that says what a valid value is.

Every public constructor and function that takes user input validates it here, once, at entry;
nothing in the fitting loop re-checks. Each check returns the value in its canonical form
(a Python ``int``, ``float``, ``(C, H, W)`` tuple, float32 array) or raises ``TypeError`` /
``ValueError`` naming the argument, the value received and what is valid.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["as_array", "check_choice", "check_float", "check_image_array", "check_int",
           "check_image_shape", "check_lr_decay"]


def check_int(name: str, value: object, *, minimum: int | None = None) -> int:
    """``value`` as an ``int`` (numpy integers and integral floats from specs accepted)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def check_float(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite ``float`` within ``[low, high]`` (either end open on request)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    ok = math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lower = "" if low is None else f"{low:g} {'<' if low_open else '<='} "
        upper = "" if high is None else f" {'<' if high_open else '<='} {high:g}"
        rule = f"{lower}{name}{upper}" if lower or upper else f"{name} finite"
        raise ValueError(f"{name} must satisfy {rule}, got {value!r}")
    return value


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else a ``ValueError`` listing them."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")
    return value


def check_lr_decay(value: object) -> tuple[float, int] | None:
    """A learning-rate schedule ``(factor, every)`` — the rate times ``factor`` every ``every``
    iterations, ``0 < factor <= 1``, ``every >= 1`` — as ``(float, int)``; None and ``"none"``
    (a constant rate) as None."""
    if value is None or (isinstance(value, str) and value == "none"):
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or len(value) != 2:
        raise TypeError(f"lr_decay must be a pair (factor, every), e.g. (0.5, 1500), got "
                        f"{value!r}")
    factor, every = value
    return (check_float("lr_decay factor", factor, low=0.0, high=1.0, low_open=True),
            check_int("lr_decay every", every, minimum=1))


def check_image_shape(shape: object, name: str = "image_shape") -> tuple[int, int, int]:
    """``(H, W)`` or ``(C, H, W)`` of positive integers → ``(C, H, W)``."""
    if isinstance(shape, str | bytes) or not isinstance(shape, Sequence | torch.Size):
        raise TypeError(f"{name} must be (H, W) or (C, H, W), got {shape!r}")
    if len(shape) not in (2, 3):
        raise ValueError(f"{name} must be (H, W) or (C, H, W), got {tuple(shape)}")
    dims = tuple(check_int(f"{name} entries", d, minimum=1) for d in shape)
    if len(dims) == 3 and dims[2] in (1, 3) and dims[0] not in (1, 3):
        raise ValueError(f"{name} {dims} looks like (H, W, C); deepprior's operators take "
                         f"(C, H, W): pass {(dims[2], dims[0], dims[1])}")
    return (1, *dims) if len(dims) == 2 else dims  # type: ignore[return-value]


def as_array(name: str, value: object, *, finite: bool = True, unit: bool = False) -> np.ndarray:
    """A real, non-empty numpy/torch array as float32 numpy; finite unless ``finite=False``
    (an observation whose unmeasured entries, a mask's holes, may hold NaN). ``unit``: an
    image on the [0, 1] scale, whose integers can only be 0 and 1 (a dark 8-bit frame, values
    0-2, passed the scale check of :func:`check_image_array` once it was float)."""
    if isinstance(value, torch.Tensor):
        if value.dtype in (torch.bfloat16, torch.float16):  # numpy has no bfloat16
            value = value.float()
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(value).__name__}")
    if value.dtype.kind not in "fiub":
        raise TypeError(f"{name} must hold real numbers, got dtype {value.dtype}")
    if value.size == 0:
        raise ValueError(f"{name} is empty (shape {value.shape})")
    if unit and value.dtype.kind in "iu" and int(value.max()) > 1:
        raise ValueError(f"{name} holds integers up to {int(value.max())}, and an image on the "
                         "[0, 1] scale holds 0 and 1 at most: divide 8-bit data by 255 (16-bit "
                         "by 65535)")
    array = value.astype(np.float32, copy=False)
    if finite and not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values; fill or remove them first")
    return array


def check_image_array(name: str, array: np.ndarray, *, peak: float = 1.0,
                      hint: str = "divide 8-bit data by 255 (16-bit by 65535)",
                      layout: bool = True) -> np.ndarray:
    """``array`` if it is an image ``(H, W)`` or ``(H, W, C)`` on the ``[0, peak]`` scale.

    Refuses deepprior's internal ``(C, H, W)`` layout (a first axis of 1-4 channels and a last
    that is no channel count) and values beyond twice ``peak`` (0-255 data read as [0, 1]):
    both would give a number, and a wrong one. ``layout=False``: the scale only, any shape.
    """
    if layout and array.ndim not in (2, 3):
        raise ValueError(f"{name} must be (H, W) or (H, W, C), got shape {array.shape}")
    if layout and array.ndim == 3 and array.shape[0] <= 4 < array.shape[2]:
        raise ValueError(f"{name} has shape {array.shape}, which looks like (C, H, W); images "
                         f"here are (H, W, C): pass np.moveaxis(image, 0, -1)")
    top = float(np.max(array)) if array.size else 0.0
    if top > 2 * peak:
        raise ValueError(f"{name} values go up to {top:.4g}, beyond the [0, {peak:g}] scale: "
                         f"{hint}")
    return array
