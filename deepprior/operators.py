"""Linear forward models ``y = A x`` for image recovery.

Every operator maps an image ``x`` of shape ``(1, C, H, W)`` to measurements ``y`` of shape
``(1, *measurement_shape)`` and provides the adjoint ``A_adjoint``. Operators are
:class:`torch.nn.Module` subclasses whose random parts (sensing matrix, signs, row subset, mask)
are buffers built once from a seeded :class:`torch.Generator` on the CPU, so ``.to(device)`` and
``.to(torch.float64)`` move them and the same seed gives the same operator on every device.

What lives here
---------------
- :class:`LinearOperator`: the base class (shapes, input checks, ``describe``, ``restrict``).
- :class:`Identity`: denoising, ``y = x``.
- :class:`GaussianSensing`: dense compressive sensing with i.i.d. ``N(0, 1/m)`` entries.
- :class:`FastSensing`: structured compressive sensing (random signs, orthonormal DCT or
  Walsh-Hadamard transform, random subset of coefficients), ``O(n)`` memory, ``O(n log n)`` time.
- :class:`Mask`: inpainting (keep a subset of pixels).
- :class:`RestrictedOperator`: a subset of another operator's measurements (hold-out splits),
  returned by :meth:`LinearOperator.restrict`.
- :func:`adjointness_error`: numerical check of ``<A x, y> = <x, A^T y>``.
- :func:`operator_from_description`: rebuild an operator from :meth:`LinearOperator.describe`.
"""

from __future__ import annotations

import copy
import math
import numbers
import operator as _operator
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "FastSensing",
    "GaussianSensing",
    "Identity",
    "LinearOperator",
    "Mask",
    "RestrictedOperator",
    "adjointness_error",
    "operator_from_description",
]

_MB = 1_000_000
# Explicit masks with at most this many entries are stored in ``describe()`` as nested lists.
_MAX_DESCRIBED_MASK_ENTRIES = 16_384
_TRANSFORMS = ("dct", "hadamard")


# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------
def _as_int(value: Any, name: str) -> int:
    """Return ``value`` as a Python int, or raise TypeError (bools are rejected)."""
    if isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be an integer, got the bool {value!r}.")
    try:
        return _operator.index(value)
    except TypeError:
        raise TypeError(
            f"{name} must be an integer, got {value!r} of type {type(value).__name__}."
        ) from None


def _validate_image_shape(image_shape: Any) -> tuple[int, int, int]:
    """Check that ``image_shape`` is ``(C, H, W)`` with three positive integers."""
    if isinstance(image_shape, str | bytes) or not isinstance(image_shape, Sequence | torch.Size):
        raise TypeError(
            "image_shape must be a sequence of three positive integers (C, H, W), "
            f"got {image_shape!r}."
        )
    if len(image_shape) != 3:
        raise ValueError(
            "image_shape must have exactly three entries (C, H, W), "
            f"got {len(image_shape)}: {tuple(image_shape)!r}."
        )
    dims = tuple(_as_int(d, "image_shape entries") for d in image_shape)
    if any(d < 1 for d in dims):
        raise ValueError(f"image_shape entries (C, H, W) must all be >= 1, got {dims!r}.")
    return dims  # type: ignore[return-value]


def _validate_seed(seed: Any) -> int:
    seed = _as_int(seed, "seed")
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed}.")
    return seed


def _validate_num_measurements(num_measurements: Any, image_shape: tuple[int, int, int]) -> int:
    m = _as_int(num_measurements, "num_measurements")
    _, height, width = image_shape
    n = height * width
    if not 1 <= m <= n:
        raise ValueError(
            f"num_measurements must be in [1, {n}] for image_shape {image_shape} "
            f"(n = H*W = {n} pixels per channel), got {m}."
        )
    return m


def _generator(seed: int) -> torch.Generator:
    generator = torch.Generator(device="cpu")
    generator.manual_seed(seed)
    return generator


# --------------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------------
class LinearOperator(torch.nn.Module):
    """Base class of the linear forward models ``y = A x``.

    Subclasses set :attr:`image_shape` and :attr:`measurement_shape` and implement ``_A`` and
    ``_A_adjoint`` on validated inputs. The public :meth:`A` and :meth:`A_adjoint` check the
    input's type, shape and device first. The output has the dtype of the input (float32 or
    float64); buffers are cast on the fly when their dtype differs.

    Attributes
    ----------
    image_shape : tuple of int
        ``(C, H, W)`` of ``x``; ``x`` has shape ``(1, C, H, W)``.
    measurement_shape : tuple of int
        Shape of ``y`` without the leading batch dimension 1.
    """

    image_shape: tuple[int, int, int]
    measurement_shape: tuple[int, ...]

    # -- public interface -------------------------------------------------------------------
    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802 - mathematical name
        """Apply the forward model.

        Parameters
        ----------
        x : torch.Tensor
            Image of shape ``(1, *image_shape)``, float32 or float64.

        Returns
        -------
        torch.Tensor
            Measurements of shape ``(1, *measurement_shape)``, same dtype as ``x``.

        Raises
        ------
        TypeError
            If ``x`` is not a floating-point tensor.
        ValueError
            If ``x`` has the wrong shape or lives on another device than the operator.
        """
        self._check_input(x, self.image_shape, "x", "A")
        return self._A(x)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802 - mathematical name
        """Apply the adjoint (transpose) of the forward model.

        Parameters
        ----------
        y : torch.Tensor
            Measurements of shape ``(1, *measurement_shape)``, float32 or float64.

        Returns
        -------
        torch.Tensor
            Image-shaped tensor ``(1, *image_shape)``, same dtype as ``y``.

        Raises
        ------
        TypeError
            If ``y`` is not a floating-point tensor.
        ValueError
            If ``y`` has the wrong shape or lives on another device than the operator.
        """
        self._check_input(y, self.measurement_shape, "y", "A_adjoint")
        return self._A_adjoint(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`A`."""
        return self.A(x)

    @property
    def num_measurements(self) -> int:
        """Total number of entries of ``y`` (the product of :attr:`measurement_shape`)."""
        return math.prod(self.measurement_shape)

    @property
    def device(self) -> torch.device:
        """Device of the operator's buffers (CPU when it has none)."""
        buffer = next(self.buffers(), None)
        return buffer.device if buffer is not None else torch.device("cpu")

    def describe(self) -> dict[str, Any]:
        """Return a JSON-serialisable description from which the operator can be rebuilt.

        Returns
        -------
        dict
            Plain ints, floats, strings and lists, with a ``"kind"`` key; see
            :func:`operator_from_description`.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement describe().")

    def restrict(self, keep: torch.Tensor | np.ndarray) -> RestrictedOperator:
        """Keep a subset of the measurements (e.g. to hold some out for validation).

        Parameters
        ----------
        keep : torch.Tensor or numpy.ndarray
            Boolean array of shape :attr:`measurement_shape`; ``True`` marks the entries kept.

        Returns
        -------
        RestrictedOperator
            The operator ``x -> A(x)[..., keep]`` with output shape ``(1, k)``,
            ``k = keep.sum()``, and adjoint "scatter back into zeros, then ``A_adjoint``".

        Raises
        ------
        TypeError
            If ``keep`` is not a boolean array.
        ValueError
            If ``keep`` has the wrong shape or keeps nothing.

        Notes
        -----
        The restricted operator is not rebuildable from its description, because the kept
        entries are not stored; see :meth:`RestrictedOperator.describe`.
        """
        return RestrictedOperator(self, keep)

    # -- helpers for subclasses -------------------------------------------------------------
    def _A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        raise NotImplementedError

    def _A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        raise NotImplementedError

    def _check_input(self, t: Any, shape: tuple[int, ...], name: str, method: str) -> None:
        if not isinstance(t, torch.Tensor):
            raise TypeError(
                f"{type(self).__name__}.{method} expects a torch.Tensor {name}, "
                f"got {type(t).__name__}."
            )
        if not t.is_floating_point():
            raise TypeError(
                f"{type(self).__name__}.{method} expects a floating-point {name} "
                f"(float32 or float64), got dtype {t.dtype}."
            )
        expected = (1, *shape)
        if tuple(t.shape) != expected:
            raise ValueError(
                f"{type(self).__name__}.{method} expects {name} of shape {expected}, "
                f"got {tuple(t.shape)}."
            )
        buffer = next(self.buffers(), None)
        if buffer is not None and buffer.device != t.device:
            raise ValueError(
                f"{name} is on {t.device} but {type(self).__name__}'s buffers are on "
                f"{buffer.device}; move the operator with .to({str(t.device)!r})."
            )

    def _shape_repr(self) -> str:
        return f"image_shape={self.image_shape}, measurement_shape={self.measurement_shape}"


# --------------------------------------------------------------------------------------------
# Identity
# --------------------------------------------------------------------------------------------
class Identity(LinearOperator):
    """Identity forward model, ``y = x`` (denoising).

    Parameters
    ----------
    image_shape : sequence of int
        ``(C, H, W)`` of the image.

    Raises
    ------
    TypeError, ValueError
        If ``image_shape`` is not three positive integers.

    Notes
    -----
    ``A`` and ``A_adjoint`` return their (validated) input itself, not a copy.

    Examples
    --------
    >>> op = Identity((1, 5, 7))
    >>> op.measurement_shape, op.num_measurements
    ((1, 5, 7), 35)
    """

    def __init__(self, image_shape: Sequence[int]) -> None:
        super().__init__()
        self.image_shape = _validate_image_shape(image_shape)
        self.measurement_shape = self.image_shape

    def _A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return x

    def _A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return y

    def describe(self) -> dict[str, Any]:
        """Return ``{"kind": "identity", "image_shape": [C, H, W]}``."""
        return {"kind": "identity", "image_shape": list(self.image_shape)}

    def extra_repr(self) -> str:
        return self._shape_repr()


# --------------------------------------------------------------------------------------------
# Dense Gaussian sensing
# --------------------------------------------------------------------------------------------
class GaussianSensing(LinearOperator):
    """Dense compressive sensing with a Gaussian matrix, ``y_c = A x_c`` for each channel ``c``.

    ``A`` is ``m x n`` with ``n = H * W`` and i.i.d. entries ``N(0, 1/m)``, drawn from a
    ``torch.Generator`` seeded with ``seed`` on the CPU and stored as a float32 buffer.
    Colour images are measured channel by channel with the **same** matrix: ``y`` has shape
    ``(1, C, m)`` and ``y[0, c] = A @ x[0, c].flatten()``.

    Parameters
    ----------
    num_measurements : int
        Number of rows ``m``, ``1 <= m <= n``.
    image_shape : sequence of int
        ``(C, H, W)`` of the image.
    seed : int, optional
        Seed of the matrix; the same seed gives the same matrix. Default 0.
    max_bytes : int, optional
        Largest float32 matrix allowed, in bytes (default 512 MiB). Larger problems should use
        :class:`FastSensing`.

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If ``num_measurements`` is outside ``[1, n]``, ``image_shape`` is invalid, or the matrix
        would exceed ``max_bytes``.

    Notes
    -----
    With ``N(0, 1/m)`` entries, ``E[A^T A] = I``, so ``E ||A x||^2 = ||x||^2``. This is the
    measurement model of Heckel & Hand (ICLR 2019) and Heckel & Soltanolkotabi (ICLR 2020) for
    compressive sensing with the Deep Decoder. A dense ``A`` for a 256 x 256 image with
    ``m = n / 4`` takes 4.3 GB; :class:`FastSensing` has the same ``E[A^T A] = I`` with ``O(n)``
    memory.

    Examples
    --------
    >>> op = GaussianSensing(100, (3, 23, 17), seed=0)
    >>> op.A(torch.zeros(1, 3, 23, 17)).shape
    torch.Size([1, 3, 100])
    """

    matrix: torch.Tensor

    def __init__(
        self,
        num_measurements: int,
        image_shape: Sequence[int],
        *,
        seed: int = 0,
        max_bytes: int = 512 * 2**20,
    ) -> None:
        super().__init__()
        self.image_shape = _validate_image_shape(image_shape)
        m = _validate_num_measurements(num_measurements, self.image_shape)
        self.seed = _validate_seed(seed)
        max_bytes = _as_int(max_bytes, "max_bytes")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be a positive integer, got {max_bytes}.")
        self.max_bytes = max_bytes
        channels, height, width = self.image_shape
        n = height * width
        nbytes = 4 * m * n
        if nbytes > max_bytes:
            raise ValueError(
                f"GaussianSensing with num_measurements={m} and n = H*W = {n} needs a dense "
                f"float32 matrix of {nbytes / _MB:.1f} MB, more than max_bytes={max_bytes} "
                f"({max_bytes / _MB:.1f} MB). Use FastSensing (CLI: --operator fast), which "
                "needs O(n) memory, or pass a larger max_bytes."
            )
        matrix = torch.randn((m, n), generator=_generator(self.seed), dtype=torch.float32)
        self.register_buffer("matrix", matrix.div_(math.sqrt(m)))
        self.measurement_shape = (channels, m)

    def _A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        channels, height, width = self.image_shape
        matrix = self.matrix.to(x.dtype)
        # (1, C, H, W) -> (C, n) @ (n, m) -> (1, C, m)
        return (x.reshape(channels, height * width) @ matrix.T).unsqueeze(0)

    def _A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        matrix = self.matrix.to(y.dtype)
        # (1, C, m) -> (C, m) @ (m, n) -> (1, C, H, W)
        return (y[0] @ matrix).reshape(1, *self.image_shape)

    def describe(self) -> dict[str, Any]:
        """Return kind, image_shape, num_measurements, seed and max_bytes."""
        return {
            "kind": "gaussian",
            "image_shape": list(self.image_shape),
            "num_measurements": int(self.measurement_shape[1]),
            "seed": self.seed,
            "max_bytes": self.max_bytes,
        }

    def extra_repr(self) -> str:
        return f"{self._shape_repr()}, seed={self.seed}"


# --------------------------------------------------------------------------------------------
# Fast structured sensing
# --------------------------------------------------------------------------------------------
def _dct_perm(n: int, device: torch.device) -> torch.Tensor:
    """Makhoul's reordering: even samples, then odd samples in reverse order."""
    return torch.cat(
        (torch.arange(0, n, 2, device=device), torch.arange(1, n, 2, device=device).flip(0))
    )


def _dct_scale(n: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Orthonormal DCT-II scaling: sqrt(1/n) for k = 0, sqrt(2/n) otherwise."""
    scale = torch.full((n,), math.sqrt(2.0 / n), dtype=dtype, device=device)
    scale[0] = math.sqrt(1.0 / n)
    return scale


def _dct_last(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal DCT-II along the last dimension, via one FFT (Makhoul 1980)."""
    n = x.shape[-1]
    v = x.index_select(-1, _dct_perm(n, x.device))
    spectrum = torch.fft.fft(v, dim=-1)
    angle = torch.arange(n, dtype=x.dtype, device=x.device) * (-math.pi / (2 * n))
    # X_k = Re(exp(-i pi k / 2n) V_k)
    coeffs = spectrum.real * torch.cos(angle) - spectrum.imag * torch.sin(angle)
    return coeffs * _dct_scale(n, x.dtype, x.device)


def _idct_last(coeffs: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_dct_last` (orthonormal DCT-III) along the last dimension."""
    n = coeffs.shape[-1]
    unscaled = coeffs / _dct_scale(n, coeffs.dtype, coeffs.device)
    # W_k = X_k - i X_{n-k} (X_n = 0); V_k = exp(i pi k / 2n) W_k; v = ifft(V).
    mirrored = torch.cat((torch.zeros_like(unscaled[..., :1]), unscaled[..., 1:].flip(-1)), dim=-1)
    angle = torch.arange(n, dtype=coeffs.dtype, device=coeffs.device) * (math.pi / (2 * n))
    cos, sin = torch.cos(angle), torch.sin(angle)
    spectrum = torch.complex(unscaled * cos + mirrored * sin, unscaled * sin - mirrored * cos)
    v = torch.fft.ifft(spectrum, dim=-1).real
    inverse_perm = torch.argsort(_dct_perm(n, coeffs.device))
    return v.index_select(-1, inverse_perm)


def _dct2(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal 2-D DCT-II over the last two dimensions (any sizes)."""
    return _dct_last(_dct_last(x).transpose(-1, -2)).transpose(-1, -2)


def _idct2(x: torch.Tensor) -> torch.Tensor:
    """Inverse (and adjoint) of :func:`_dct2`."""
    return _idct_last(_idct_last(x).transpose(-1, -2)).transpose(-1, -2)


def _fwht(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal fast Walsh-Hadamard transform (Sylvester order) along the last dimension.

    The length must be a power of two. The transform is symmetric and its own inverse.
    """
    n = x.shape[-1]
    lead = x.shape[:-1]
    out = x
    half = 1
    while half < n:
        # (..., n) -> (..., n / 2h, 2, h): butterflies between the two halves of each block
        out = out.reshape(*lead, n // (2 * half), 2, half)
        first, second = out[..., 0, :], out[..., 1, :]
        out = torch.stack((first + second, first - second), dim=-2)
        half *= 2
    return out.reshape(*lead, n) / math.sqrt(n)


class FastSensing(LinearOperator):
    """Structured compressive sensing: random signs, fast orthonormal transform, random rows.

    ``A x = sqrt(n/m) * P T D x`` for each channel, where ``D`` flips the sign of each pixel
    (Rademacher, seeded), ``T`` is an orthonormal 2-D transform of the ``H x W`` image and ``P``
    keeps a random subset of ``m`` of the ``n = H * W`` coefficients (seeded, in increasing
    order). Colour images are measured channel by channel with the **same** operator: ``y`` has
    shape ``(1, C, m)``. No dense matrix is stored: memory ``O(n)``, cost ``O(n log n)``.

    Parameters
    ----------
    num_measurements : int
        Number of measurements ``m`` per channel, ``1 <= m <= n``.
    image_shape : sequence of int
        ``(C, H, W)`` of the image.
    seed : int, optional
        Seed of the signs and of the coefficient subset. Default 0.
    transform : {"dct", "hadamard"}, optional
        ``"dct"`` (default): orthonormal 2-D DCT-II, any ``H`` and ``W``, computed with
        ``torch.fft`` (Makhoul's algorithm); its adjoint is the inverse DCT (DCT-III).
        ``"hadamard"``: fast Walsh-Hadamard transform of the flattened image; ``H * W`` must be
        a power of two.

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If ``num_measurements`` is outside ``[1, n]``, ``image_shape`` is invalid, ``transform``
        is unknown, or ``transform="hadamard"`` with ``H * W`` not a power of two.

    Notes
    -----
    Since ``T D`` is orthogonal, ``E[A^T A] = (n/m) T^T D E[P^T P] D T = (n/m)(m/n) I = I``,
    the same normalisation as :class:`GaussianSensing` with ``N(0, 1/m)`` entries. The random
    signs spread every image's energy over all coefficients, so that a random subset of them
    behaves like random Gaussian measurements (the structured random matrices used for
    compressive sensing at scale; Heckel & Soltanolkotabi, ICLR 2020, use dense Gaussian
    matrices on small images). For ``m = n`` the operator is orthogonal.

    Examples
    --------
    >>> op = FastSensing(100, (1, 23, 17), seed=0)
    >>> y = op.A(torch.ones(1, 1, 23, 17))
    >>> y.shape, op.A_adjoint(y).shape
    (torch.Size([1, 1, 100]), torch.Size([1, 1, 23, 17]))
    """

    signs: torch.Tensor
    indices: torch.Tensor

    def __init__(
        self,
        num_measurements: int,
        image_shape: Sequence[int],
        *,
        seed: int = 0,
        transform: str = "dct",
    ) -> None:
        super().__init__()
        self.image_shape = _validate_image_shape(image_shape)
        m = _validate_num_measurements(num_measurements, self.image_shape)
        self.seed = _validate_seed(seed)
        if not isinstance(transform, str) or transform not in _TRANSFORMS:
            raise ValueError(f"transform must be one of {list(_TRANSFORMS)}, got {transform!r}.")
        channels, height, width = self.image_shape
        n = height * width
        if transform == "hadamard" and n & (n - 1) != 0:
            raise ValueError(
                f"transform='hadamard' needs H*W to be a power of two, got H*W = "
                f"{height}*{width} = {n}; use transform='dct', which works for any size."
            )
        self.transform = transform
        generator = _generator(self.seed)
        signs = torch.randint(0, 2, (height, width), generator=generator, dtype=torch.int64)
        self.register_buffer("signs", (2 * signs - 1).to(torch.float32))
        chosen = torch.randperm(n, generator=generator)[:m]
        self.register_buffer("indices", torch.sort(chosen).values)
        self.scale = math.sqrt(n / m)
        self.measurement_shape = (channels, m)

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        if self.transform == "dct":
            return _dct2(x)
        return _fwht(x.flatten(-2)).reshape(x.shape)

    def _transform_adjoint(self, x: torch.Tensor) -> torch.Tensor:
        if self.transform == "dct":
            return _idct2(x)
        return _fwht(x.flatten(-2)).reshape(x.shape)

    def _A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        # (1, C, H, W) -> signs -> transform -> (1, C, n) -> keep m -> (1, C, m)
        coeffs = self._transform(x * self.signs.to(x.dtype)).flatten(-2)
        return coeffs.index_select(-1, self.indices) * self.scale

    def _A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        channels, height, width = self.image_shape
        # (1, C, m) -> scatter into zeros (1, C, n) -> (1, C, H, W) -> transform^T -> signs
        coeffs = y.new_zeros(1, channels, height * width).index_copy(
            -1, self.indices, y * self.scale
        )
        image = self._transform_adjoint(coeffs.reshape(1, channels, height, width))
        return image * self.signs.to(y.dtype)

    def describe(self) -> dict[str, Any]:
        """Return kind, image_shape, num_measurements, seed and transform."""
        return {
            "kind": "fast",
            "image_shape": list(self.image_shape),
            "num_measurements": int(self.measurement_shape[1]),
            "seed": self.seed,
            "transform": self.transform,
        }

    def extra_repr(self) -> str:
        return f"{self._shape_repr()}, seed={self.seed}, transform={self.transform!r}"


# --------------------------------------------------------------------------------------------
# Mask (inpainting)
# --------------------------------------------------------------------------------------------
def _mask_to_tensor(mask: Any, image_shape: tuple[int, int, int]) -> torch.Tensor:
    """Validate an explicit mask and return it as a bool tensor of shape (1, C' , H, W)."""
    if isinstance(mask, torch.Tensor):
        if mask.dtype != torch.bool:
            raise TypeError(
                f"mask must be a boolean array, got a tensor of dtype {mask.dtype}; "
                "pass mask > 0 (or mask.bool())."
            )
        tensor = mask.detach().to("cpu").clone()
    elif isinstance(mask, np.ndarray):
        if mask.dtype != np.bool_:
            raise TypeError(
                f"mask must be a boolean array, got an array of dtype {mask.dtype}; "
                "pass mask > 0 (or mask.astype(bool))."
            )
        tensor = torch.from_numpy(np.ascontiguousarray(mask).copy())
    else:
        raise TypeError(
            f"mask must be a boolean numpy.ndarray or torch.Tensor, got {type(mask).__name__}."
        )
    channels, height, width = image_shape
    shape = tuple(tensor.shape)
    if shape == (height, width):
        tensor = tensor.reshape(1, 1, height, width)
    elif len(shape) == 3 and shape[1:] == (height, width) and shape[0] in (1, channels):
        tensor = tensor.unsqueeze(0)
    else:
        raise ValueError(
            f"mask must have shape (H, W) = {(height, width)} or (C, H, W) = "
            f"{(channels, height, width)}, got {shape}."
        )
    if not bool(tensor.any()):
        raise ValueError("mask keeps no pixel (all False); at least one must be True.")
    return tensor


class Mask(LinearOperator):
    """Keep a subset of the pixels, zero the others (inpainting; hold-out splits).

    ``A x = x * mask`` with ``y`` of the same shape as ``x`` (zeros where a pixel is missing);
    ``A`` is a diagonal 0/1 matrix, so ``A_adjoint = A``.

    Parameters
    ----------
    image_shape : sequence of int
        ``(C, H, W)`` of the image.
    keep : float, optional
        Fraction of pixels kept, in ``(0, 1]``. Exactly ``max(1, round(keep * H * W))`` pixel
        positions are drawn without replacement (seeded) and kept in all channels.
    mask : numpy.ndarray or torch.Tensor, optional
        Boolean array of shape ``(H, W)`` (the same pixels in every channel) or ``(C, H, W)``;
        ``True`` marks an observed entry.
    seed : int, optional
        Seed of the random mask (used only with ``keep``). Default 0.

    Raises
    ------
    TypeError
        If ``mask`` is not a boolean array or ``keep`` is not a number.
    ValueError
        If not exactly one of ``keep`` and ``mask`` is given, ``keep`` is outside ``(0, 1]``,
        ``mask`` has the wrong shape or keeps nothing.

    Notes
    -----
    ``y`` has the image's shape with zeros at missing pixels, but :attr:`num_measurements`
    counts only the entries actually observed: the ``m`` of a discrepancy principle
    ``||y - A x||^2 <= tau * m * sigma^2``.

    Examples
    --------
    >>> op = Mask((3, 23, 17), keep=0.5, seed=0)
    >>> op.num_measurements
    588
    """

    mask: torch.Tensor

    def __init__(
        self,
        image_shape: Sequence[int],
        *,
        keep: float | None = None,
        mask: np.ndarray | torch.Tensor | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.image_shape = _validate_image_shape(image_shape)
        self.measurement_shape = self.image_shape
        self.seed = _validate_seed(seed)
        if (keep is None) == (mask is None):
            raise ValueError(
                "Mask needs exactly one of keep (a fraction in (0, 1]) or mask "
                f"(a boolean array); got keep={keep!r} and mask="
                f"{'None' if mask is None else 'an array'}."
            )
        _, height, width = self.image_shape
        if keep is not None:
            if isinstance(keep, bool | np.bool_) or not isinstance(keep, numbers.Real):
                raise TypeError(f"keep must be a number in (0, 1], got {keep!r}.")
            keep = float(keep)
            if not 0.0 < keep <= 1.0:
                raise ValueError(f"keep must be in (0, 1], got {keep}.")
            n = height * width
            count = max(1, round(keep * n))
            chosen = torch.randperm(n, generator=_generator(self.seed))[:count]
            flat = torch.zeros(n, dtype=torch.bool)
            flat[chosen] = True
            tensor = flat.reshape(1, 1, height, width)
            self.keep: float | None = keep
            self._explicit = False
        else:
            tensor = _mask_to_tensor(mask, self.image_shape)
            self.keep = None
            self._explicit = True
        self.register_buffer("mask", tensor)

    @property
    def num_measurements(self) -> int:
        """Number of entries of ``y`` actually observed (``True`` in the mask, all channels)."""
        channels = self.image_shape[0]
        per_channel = self.mask.sum(dim=(-2, -1))  # (1, C') with C' in {1, C}
        total = int(per_channel.sum())
        return total * channels if self.mask.shape[1] == 1 else total

    def _A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return x * self.mask

    def _A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return y * self.mask

    def describe(self) -> dict[str, Any]:
        """Describe the mask.

        Returns
        -------
        dict
            ``{"kind": "mask", "image_shape", "keep", "seed"}`` for a random mask;
            ``{"kind": "mask", "image_shape", "mask"}`` with a nested list of 0/1 for an explicit
            mask of at most 16,384 entries. A larger explicit mask is not stored:
            ``"mask"`` is ``None`` and ``"num_measurements"`` is given, and
            :func:`operator_from_description` refuses to rebuild it.
        """
        desc: dict[str, Any] = {"kind": "mask", "image_shape": list(self.image_shape)}
        if not self._explicit:
            desc["keep"] = self.keep
            desc["seed"] = self.seed
            return desc
        stored = self.mask[0]  # (C', H, W)
        if stored.shape[0] == 1:
            stored = stored[0]
        if stored.numel() <= _MAX_DESCRIBED_MASK_ENTRIES:
            desc["mask"] = stored.to(device="cpu", dtype=torch.int64).tolist()
        else:
            desc["mask"] = None
            desc["num_measurements"] = self.num_measurements
        return desc

    def extra_repr(self) -> str:
        source = "explicit" if self._explicit else f"keep={self.keep}, seed={self.seed}"
        return f"{self._shape_repr()}, {source}"


# --------------------------------------------------------------------------------------------
# Restriction to a subset of measurements
# --------------------------------------------------------------------------------------------
class RestrictedOperator(LinearOperator):
    """The entries ``keep`` of another operator's measurements, flattened.

    ``A_sub x = A(x)[..., keep]`` with shape ``(1, k)``, ``k = keep.sum()``; the adjoint writes
    ``y_sub`` back into a zero measurement at the kept positions and applies ``A_adjoint``.
    Used to split the data into a fitting set and a held-out validation set.

    Parameters
    ----------
    base : LinearOperator
        The operator to restrict (kept as a submodule, so ``.to`` moves it too).
    keep : torch.Tensor or numpy.ndarray
        Boolean array of shape ``base.measurement_shape``.

    Raises
    ------
    TypeError
        If ``base`` is not a LinearOperator or ``keep`` is not boolean.
    ValueError
        If ``keep`` has the wrong shape or keeps nothing.
    """

    indices: torch.Tensor

    def __init__(self, base: LinearOperator, keep: torch.Tensor | np.ndarray) -> None:
        super().__init__()
        if not isinstance(base, LinearOperator):
            raise TypeError(f"base must be a LinearOperator, got {type(base).__name__}.")
        if isinstance(keep, np.ndarray):
            if keep.dtype != np.bool_:
                raise TypeError(
                    f"keep must be a boolean array, got dtype {keep.dtype}; pass keep > 0."
                )
            keep = torch.from_numpy(np.ascontiguousarray(keep))
        if not isinstance(keep, torch.Tensor) or keep.dtype != torch.bool:
            if isinstance(keep, torch.Tensor):
                detail = f"dtype {keep.dtype}"
            else:
                detail = type(keep).__name__
            raise TypeError(f"keep must be a boolean tensor, got {detail}.")
        if tuple(keep.shape) != tuple(base.measurement_shape):
            raise ValueError(
                f"keep must have the measurement shape {tuple(base.measurement_shape)}, "
                f"got {tuple(keep.shape)}."
            )
        indices = keep.detach().to("cpu").flatten().nonzero().squeeze(1)
        if indices.numel() == 0:
            raise ValueError("keep selects no measurement (all False); keep at least one.")
        self.base = base
        self.image_shape = base.image_shape
        self.measurement_shape = (int(indices.numel()),)
        self.register_buffer("indices", indices.to(base.device))

    def _A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        # (1, *base.measurement_shape) -> (1, M) -> (1, k)
        return self.base.A(x).reshape(1, -1).index_select(1, self.indices)

    def _A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        full = y.new_zeros(1, self.base.num_measurements).index_copy(1, self.indices, y)
        return self.base.A_adjoint(full.reshape(1, *self.base.measurement_shape))

    def describe(self) -> dict[str, Any]:
        """Return ``{"kind": "restricted", "base": base.describe(), "num_kept": k}``.

        Notes
        -----
        Not rebuildable: the kept positions are not stored, and
        :func:`operator_from_description` raises ValueError on this kind.
        """
        return {
            "kind": "restricted",
            "base": self.base.describe(),
            "num_kept": int(self.measurement_shape[0]),
        }

    def extra_repr(self) -> str:
        return f"num_kept={self.measurement_shape[0]} of {self.base.num_measurements}"


# --------------------------------------------------------------------------------------------
# Module functions
# --------------------------------------------------------------------------------------------
def adjointness_error(
    op: LinearOperator, *, seed: int = 0, dtype: torch.dtype = torch.float64
) -> float:
    """Relative error of the adjoint identity ``<A x, y> = <x, A^T y>``.

    Parameters
    ----------
    op : LinearOperator
        The operator to check; it is not modified (a copy is cast to ``dtype``).
    seed : int, optional
        Seed of the random ``x`` and ``y`` (standard normal). Default 0.
    dtype : torch.dtype, optional
        Floating dtype of the computation. Default ``torch.float64``.

    Returns
    -------
    float
        ``|<A x, y> - <x, A^T y>| / |<A x, y>|``; about 1e-15 in float64 for a correct adjoint.

    Raises
    ------
    TypeError
        If ``op`` is not a LinearOperator or ``dtype`` is not a floating dtype.
    """
    if not isinstance(op, LinearOperator):
        raise TypeError(f"op must be a LinearOperator, got {type(op).__name__}.")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}.")
    seed = _validate_seed(seed)
    op_copy = copy.deepcopy(op).to(dtype)
    generator = _generator(seed)
    x = torch.randn((1, *op.image_shape), generator=generator, dtype=dtype).to(op_copy.device)
    y = torch.randn((1, *op.measurement_shape), generator=generator, dtype=dtype)
    y = y.to(op_copy.device)
    with torch.no_grad():
        lhs = float(torch.sum(op_copy.A(x) * y))
        rhs = float(torch.sum(x * op_copy.A_adjoint(y)))
    return abs(lhs - rhs) / max(abs(lhs), torch.finfo(dtype).tiny)


_REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "identity": ("image_shape",),
    "gaussian": ("image_shape", "num_measurements", "seed"),
    "fast": ("image_shape", "num_measurements", "seed"),
    "mask": ("image_shape",),
}


def operator_from_description(desc: dict[str, Any]) -> LinearOperator:
    """Rebuild an operator from :meth:`LinearOperator.describe`.

    Parameters
    ----------
    desc : dict
        A description, e.g. ``{"kind": "gaussian", "image_shape": [1, 64, 64],
        "num_measurements": 1000, "seed": 0}``. Known kinds: ``"identity"``, ``"gaussian"``
        (optional ``"max_bytes"``), ``"fast"`` (optional ``"transform"``, default ``"dct"``) and
        ``"mask"`` (``"keep"`` and optional ``"seed"``, or ``"mask"`` as a nested list of 0/1).

    Returns
    -------
    LinearOperator
        An operator with the same ``A`` as the described one.

    Raises
    ------
    TypeError
        If ``desc`` is not a dict.
    ValueError
        On an unknown kind, missing keys, a ``"restricted"`` description or an explicit mask that
        was too large to be stored; invalid values raise as in the constructors.

    Examples
    --------
    >>> op = FastSensing(50, (1, 9, 11), seed=3)
    >>> operator_from_description(op.describe()).describe() == op.describe()
    True
    """
    if not isinstance(desc, dict):
        raise TypeError(f"desc must be a dict from describe(), got {type(desc).__name__}.")
    kind = desc.get("kind")
    if kind == "restricted":
        raise ValueError(
            "a 'restricted' operator cannot be rebuilt from its description: the kept "
            "measurement positions are not stored; rebuild desc['base'] and call "
            ".restrict(keep) with the same keep."
        )
    if kind not in _REQUIRED_KEYS:
        raise ValueError(
            f"unknown operator kind {kind!r}; expected one of {sorted(_REQUIRED_KEYS)}."
        )
    missing = [key for key in _REQUIRED_KEYS[kind] if key not in desc]
    if missing:
        raise ValueError(
            f"description of kind {kind!r} is missing key(s) {missing}; "
            f"it needs {list(_REQUIRED_KEYS[kind])}."
        )
    image_shape = desc["image_shape"]
    if kind == "identity":
        return Identity(image_shape)
    if kind == "gaussian":
        extra = {"max_bytes": desc["max_bytes"]} if "max_bytes" in desc else {}
        return GaussianSensing(desc["num_measurements"], image_shape, seed=desc["seed"], **extra)
    if kind == "fast":
        return FastSensing(
            desc["num_measurements"],
            image_shape,
            seed=desc["seed"],
            transform=desc.get("transform", "dct"),
        )
    return _mask_from_description(desc)


def _mask_from_description(desc: dict[str, Any]) -> Mask:
    has_keep = desc.get("keep") is not None
    if "mask" in desc and desc["mask"] is None and not has_keep:
        raise ValueError(
            "this Mask description has no stored mask (the explicit mask was too large to "
            "describe); rebuild it with Mask(image_shape, mask=...) from the original array."
        )
    has_mask = desc.get("mask") is not None
    if has_keep == has_mask:
        raise ValueError(
            "a 'mask' description needs exactly one of 'keep' (with 'seed') or 'mask' "
            f"(a nested list of 0/1); got keys {sorted(desc)}."
        )
    if has_keep:
        return Mask(desc["image_shape"], keep=desc["keep"], seed=desc.get("seed", 0))
    array = np.asarray(desc["mask"])
    if array.dtype != np.bool_:
        if not np.isin(array, (0, 1)).all():
            raise ValueError("the 'mask' entry must contain only 0/1 or true/false values.")
        array = array.astype(bool)
    return Mask(desc["image_shape"], mask=array)
