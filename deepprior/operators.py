"""Linear forward models ``y = A x``, and the adapter that turns the user's own into one.

An operator maps an image ``x`` of shape ``(1, C, H, W)`` to measurements ``y`` of shape
``(1, *measurement_shape)``. The engine needs only ``A`` (it differentiates through it);
``A_adjoint`` is derived with autograd when an operator does not define it (as deepinv does).
Operators are :class:`torch.nn.Module` subclasses: their random parts (sensing matrix, signs,
row subset, mask) are buffers drawn once from a seeded :class:`torch.Generator` on the CPU, so
``.to(device)`` moves them and the same seed gives the same operator on every device.

What lives here
---------------
- :class:`LinearOperator`: the base class (shapes, autograd adjoint, ``restrict``, ``describe``).
- :class:`Identity` (denoising), :class:`GaussianSensing` (dense compressive sensing),
  :class:`FastSensing` (random signs, fast orthonormal transform, random rows), :class:`Mask`
  (inpainting), :class:`Downsample` (super-resolution), :class:`Blur` (deblurring, FFT-based),
  :class:`RestrictedOperator` (a subset of measurements, for hold-out splits);
  :func:`gaussian_kernel`, :func:`motion_kernel` and :func:`downsampling_kernel` make kernels.
- :class:`MatrixOperator` (a dense or ``scipy.sparse`` matrix) and :class:`FunctionOperator`
  (callables, or any object with ``A``/``A_adjoint`` such as deepinv's ``LinearPhysics``).
- :func:`as_operator`: any of the above → a :class:`LinearOperator`; :func:`check_operator`:
  the probe run before a fit (shapes, finiteness, linearity, adjointness);
  :func:`adjointness_error`, :func:`linearity_error`;
  :func:`operator_from_description` (rebuild a built-in operator from :meth:`describe`).

No operator validates its input inside ``A``: shapes are checked once, at entry, by
:func:`check_operator`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from .checks import check_choice, check_float, check_image_shape, check_int

__all__ = [
    "FastSensing",
    "FunctionOperator",
    "GaussianSensing",
    "Identity",
    "LinearOperator",
    "Mask",
    "MatrixOperator",
    "RestrictedOperator",
    "Blur",
    "Downsample",
    "adjointness_error",
    "linearity_error",
    "downsampling_kernel",
    "gaussian_kernel",
    "motion_kernel",
    "as_operator",
    "check_operator",
    "operator_from_description",
]

#: Relative error of ⟨A x, v⟩ = ⟨x, Aᵀ v⟩ above which :func:`check_operator` refuses an adjoint.
ADJOINT_TOLERANCE = 1e-3
#: Relative error of ``A(x + 2u) = A(x) + 2·A(u)`` (:func:`linearity_error`) above which
#: :func:`check_operator` refuses an operator: a linear ``A`` computed in bfloat16 rounds to
#: 2e-3–3e-3 (Gaussian matrices of 100 × 256 and 40 × 391), float16 to 4e-4; a square, a
#: modulus or an offset of 0.1 is above 1e-2.
LINEARITY_TOLERANCE = 1e-2
#: Why a complex forward model is refused, and what to do instead.
_COMPLEX_HINT = ("{name}(x) returns complex values ({dtype}); the fit compares real "
                 "measurements: return the real and imaginary parts as real numbers (e.g. "
                 "torch.view_as_real(...)), and give y the same layout")
# Explicit masks with at most this many entries are stored in ``describe()`` as nested lists.
_MAX_DESCRIBED_MASK_ENTRIES = 16_384


def _generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(check_int("seed", seed, minimum=0))


class LinearOperator(torch.nn.Module):
    """Base class of the forward models.

    A subclass sets :attr:`image_shape` and :attr:`measurement_shape` (through
    ``super().__init__``) and implements :meth:`A`; it may implement :meth:`A_adjoint` (else
    autograd derives it) and :meth:`describe` (only needed to save measurements and rebuild the
    operator later).

    Parameters
    ----------
    image_shape : (H, W) or (C, H, W)
        Shape of ``x`` without the batch axis.
    measurement_shape : tuple of int
        Shape of ``y`` without the batch axis.

    Attributes
    ----------
    problem : str
        The problem kind whose defaults :func:`deepprior.reconstruct` uses for this operator
        (``"generic"`` unless a subclass says otherwise).
    """

    problem: ClassVar[str] = "generic"

    def __init__(self, image_shape: Sequence[int], measurement_shape: Sequence[int]) -> None:
        super().__init__()
        self.image_shape = check_image_shape(image_shape)
        self.measurement_shape = tuple(int(s) for s in measurement_shape)

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802 - mathematical name
        """Apply the forward model to ``x`` of shape ``(1, *image_shape)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement A(x)")

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        """Apply the adjoint to ``y`` of shape ``(1, *measurement_shape)``.

        The default is exact for a linear ``A``: the vector–Jacobian product of ``A`` at 0
        (:func:`torch.func.vjp`).
        """
        zero = y.new_zeros((1, *self.image_shape))
        try:
            _, pullback = torch.func.vjp(self.A, zero)
            return pullback(y)[0]
        except RuntimeError as exc:  # an autograd.Function of the old style (forward(ctx, x))
            if "setup_context" not in str(exc):  # works with autograd, not torch.func
                raise
        with torch.enable_grad():
            zero.requires_grad_()
            return torch.autograd.grad(self.A(zero), zero, grad_outputs=y)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`A`."""
        return self.A(x)

    @property
    def observed(self) -> torch.Tensor | None:
        """Boolean ``measurement_shape``: the entries of ``y`` that carry data (None: all)."""
        return None

    @property
    def num_measurements(self) -> int:
        """Number of entries of ``y`` that carry data (the ``m`` of the discrepancy rule)."""
        observed = self.observed
        return math.prod(self.measurement_shape) if observed is None else int(observed.sum())

    @property
    def device(self) -> torch.device:
        """Device of the operator's buffers (CPU when it has none)."""
        tensor = next(iter(self.buffers()), None)
        return tensor.device if tensor is not None else torch.device("cpu")

    @property
    def has_adjoint(self) -> bool:
        """Whether :meth:`A_adjoint` is written out (False: derived by autograd)."""
        return type(self).A_adjoint is not LinearOperator.A_adjoint

    def restrict(self, keep: torch.Tensor) -> RestrictedOperator:
        """The operator keeping only the measurements where the boolean ``keep`` is True."""
        return RestrictedOperator(self, keep)

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description; built-in operators can be rebuilt from theirs."""
        return {
            "kind": "custom",
            "type": type(self).__name__,
            "image_shape": list(self.image_shape),
            "measurement_shape": list(self.measurement_shape),
        }

    def extra_repr(self) -> str:
        return f"image_shape={self.image_shape}, measurement_shape={self.measurement_shape}"


class Identity(LinearOperator):
    """``y = x``: denoising.

    Examples
    --------
    >>> Identity((5, 7)).measurement_shape
    (1, 5, 7)
    """

    problem = "denoise"

    def __init__(self, image_shape: Sequence[int]) -> None:
        shape = check_image_shape(image_shape)
        super().__init__(shape, shape)

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return x

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return y

    def describe(self) -> dict[str, Any]:
        return {"kind": "identity", "image_shape": list(self.image_shape)}


def _sensing_shape(num_measurements: int, image_shape: Sequence[int]) -> tuple:
    shape = check_image_shape(image_shape)
    n = shape[1] * shape[2]
    m = check_int("num_measurements", num_measurements, minimum=1)
    if m > n:
        raise ValueError(
            f"num_measurements must be in [1, {n}] for image_shape {shape} "
            f"(n = H*W = {n} pixels per channel), got {m}"
        )
    return shape, m, n


class GaussianSensing(LinearOperator):
    """Dense compressive sensing, ``y_c = A x_c`` per channel with i.i.d. ``N(0, 1/m)`` entries.

    Parameters
    ----------
    num_measurements : int
        Rows ``m``, ``1 <= m <= n = H·W``.
    image_shape : (H, W) or (C, H, W)
        Colour images are measured channel by channel with the same matrix: ``y`` is ``(C, m)``.
    seed : int
        Seed of the matrix (drawn on the CPU).
    max_bytes : int
        Largest float32 matrix allowed (default 512 MiB); use :class:`FastSensing` beyond.

    Notes
    -----
    ``E[AᵀA] = I``: the measurement model of Heckel & Hand (ICLR 2019) and Heckel &
    Soltanolkotabi (ICLR 2020). A dense ``A`` for 256² with ``m = n/4`` takes 4.3 GB.

    Examples
    --------
    >>> GaussianSensing(100, (3, 23, 17), seed=0).A(torch.zeros(1, 3, 23, 17)).shape
    torch.Size([1, 3, 100])
    """

    problem = "compressive_sensing"
    matrix: torch.Tensor

    def __init__(
        self,
        num_measurements: int,
        image_shape: Sequence[int],
        *,
        seed: int = 0,
        max_bytes: int = 512 * 2**20,
    ) -> None:
        shape, m, n = _sensing_shape(num_measurements, image_shape)
        max_bytes = check_int("max_bytes", max_bytes, minimum=1)
        if 4 * m * n > max_bytes:
            raise ValueError(
                f"GaussianSensing with m = {m} and n = {n} needs a dense float32 matrix of "
                f"{4 * m * n / 1e6:.1f} MB, more than max_bytes = {max_bytes / 1e6:.1f} MB; use "
                "FastSensing (CLI: --operator fast), which needs O(n) memory, or raise max_bytes"
            )
        super().__init__(shape, (shape[0], m))
        self.seed, self.max_bytes = check_int("seed", seed, minimum=0), max_bytes
        matrix = torch.randn((m, n), generator=_generator(seed)).div_(math.sqrt(m))  # one copy
        self.register_buffer("matrix", matrix)

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        # (1, C, H, W) -> (1, C, n) @ (n, m) -> (1, C, m)
        return x.flatten(-2) @ self.matrix.to(x.dtype).T

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return (y @ self.matrix.to(y.dtype)).reshape(1, *self.image_shape)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "gaussian",
            "image_shape": list(self.image_shape),
            "num_measurements": self.measurement_shape[1],
            "seed": self.seed,
            "max_bytes": self.max_bytes,
        }


# --------------------------------------------------------------------------- fast transforms


def _dct_last(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal DCT-II along the last axis with one FFT (Makhoul 1980)."""
    n = x.shape[-1]
    order = torch.cat((torch.arange(0, n, 2), torch.arange(1, n, 2).flip(0))).to(x.device)
    spectrum = torch.fft.fft(x.index_select(-1, order), dim=-1)
    angle = torch.arange(n, dtype=x.dtype, device=x.device) * (-math.pi / (2 * n))
    coeffs = spectrum.real * torch.cos(angle) - spectrum.imag * torch.sin(angle)
    return coeffs * _dct_scale(n, x)


def _idct_last(coeffs: torch.Tensor) -> torch.Tensor:
    """Inverse (and adjoint) of :func:`_dct_last`: orthonormal DCT-III."""
    n = coeffs.shape[-1]
    c = coeffs / _dct_scale(n, coeffs)
    mirrored = torch.cat((torch.zeros_like(c[..., :1]), c[..., 1:].flip(-1)), dim=-1)
    angle = torch.arange(n, dtype=c.dtype, device=c.device) * (math.pi / (2 * n))
    cos, sin = torch.cos(angle), torch.sin(angle)
    v = torch.fft.ifft(torch.complex(c * cos + mirrored * sin, c * sin - mirrored * cos)).real
    order = torch.cat((torch.arange(0, n, 2), torch.arange(1, n, 2).flip(0)))
    return v.index_select(-1, torch.argsort(order).to(c.device))


def _dct_scale(n: int, like: torch.Tensor) -> torch.Tensor:
    scale = torch.full((n,), math.sqrt(2.0 / n), dtype=like.dtype, device=like.device)
    scale[0] = math.sqrt(1.0 / n)
    return scale


def _dct2(x: torch.Tensor) -> torch.Tensor:
    return _dct_last(_dct_last(x).transpose(-1, -2)).transpose(-1, -2)


def _idct2(x: torch.Tensor) -> torch.Tensor:
    return _idct_last(_idct_last(x).transpose(-1, -2)).transpose(-1, -2)


def _fwht(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal Walsh–Hadamard transform (Sylvester order) of the last axis; self-inverse."""
    n, lead, half = x.shape[-1], x.shape[:-1], 1
    while half < n:
        # (..., n) -> (..., n / 2h, 2, h): butterflies between the two halves of each block
        x = x.reshape(*lead, n // (2 * half), 2, half)
        x = torch.stack((x[..., 0, :] + x[..., 1, :], x[..., 0, :] - x[..., 1, :]), dim=-2)
        half *= 2
    return x.reshape(*lead, n) / math.sqrt(n)


class FastSensing(LinearOperator):
    """Structured compressive sensing: ``A x = sqrt(n/m) · P T D x`` per channel.

    ``D`` flips the sign of each pixel (Rademacher, seeded), ``T`` is an orthonormal 2-D
    transform and ``P`` keeps a random subset of ``m`` of the ``n = H·W`` coefficients (seeded,
    increasing order). No dense matrix: ``O(n)`` memory, ``O(n log n)`` time.

    Parameters
    ----------
    num_measurements : int
        ``m`` per channel, ``1 <= m <= n``.
    image_shape : (H, W) or (C, H, W)
        Colour channels are measured with the same operator: ``y`` is ``(C, m)``.
    seed : int
        Seed of the signs and the subset.
    transform : {"dct", "hadamard"}
        Orthonormal 2-D DCT-II (any size, via FFT), or the Walsh–Hadamard transform of the
        flattened image (``H·W`` a power of two).

    Notes
    -----
    ``E[AᵀA] = (n/m) Tᵀ D E[PᵀP] D T = I``, the normalisation of :class:`GaussianSensing`; the
    random signs spread the energy over all coefficients so that a random subset behaves like
    random Gaussian measurements. For ``m = n`` the operator is orthogonal.

    Examples
    --------
    >>> op = FastSensing(100, (1, 23, 17), seed=0)
    >>> op.A_adjoint(op.A(torch.ones(1, 1, 23, 17))).shape
    torch.Size([1, 1, 23, 17])
    """

    problem = "compressive_sensing"
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
        shape, m, n = _sensing_shape(num_measurements, image_shape)
        self.transform = check_choice("transform", transform, ("dct", "hadamard"))
        if transform == "hadamard" and n & (n - 1):
            raise ValueError(
                f"transform='hadamard' needs H*W to be a power of two, got {shape[1]}*{shape[2]}"
                f" = {n}; use transform='dct', which works for any size"
            )
        super().__init__(shape, (shape[0], m))
        self.seed, self.scale = check_int("seed", seed, minimum=0), math.sqrt(n / m)
        generator = _generator(seed)
        signs = torch.randint(0, 2, shape[1:], generator=generator)
        self.register_buffer("signs", (2 * signs - 1).float())
        self.register_buffer("indices", torch.randperm(n, generator=generator)[:m].sort().values)

    def _transform(self, x: torch.Tensor, inverse: bool) -> torch.Tensor:
        if self.transform == "hadamard":
            return _fwht(x.flatten(-2)).reshape(x.shape)
        return _idct2(x) if inverse else _dct2(x)

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        # (1, C, H, W) -> signs -> transform -> (1, C, n) -> keep m -> (1, C, m)
        coeffs = self._transform(x * self.signs.to(x.dtype), inverse=False).flatten(-2)
        return coeffs.index_select(-1, self.indices) * self.scale

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        c, h, w = self.image_shape
        coeffs = y.new_zeros(1, c, h * w).index_copy(-1, self.indices, y * self.scale)
        image = self._transform(coeffs.reshape(1, c, h, w), inverse=True)
        return image * self.signs.to(y.dtype)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "fast",
            "image_shape": list(self.image_shape),
            "num_measurements": self.measurement_shape[1],
            "seed": self.seed,
            "transform": self.transform,
        }


class Mask(LinearOperator):
    """Keep a subset of the pixels, zero the others: inpainting. ``A = Aᵀ = diag(mask)``.

    Parameters
    ----------
    image_shape : (H, W) or (C, H, W)
    keep : float, optional
        Fraction of pixel positions kept, in (0, 1]: ``max(1, round(keep·H·W))`` positions drawn
        without replacement (seeded), kept in every channel.
    mask : array, optional
        Boolean ``(H, W)`` (same pixels in every channel) or ``(C, H, W)``; True = observed.
    seed : int
        Seed of the random mask (with ``keep``).

    Notes
    -----
    ``y`` has the image's shape with zeros at missing pixels; :attr:`num_measurements` counts
    only the observed entries (the ``m`` of the discrepancy rule).

    Examples
    --------
    >>> Mask((3, 23, 17), keep=0.5, seed=0).num_measurements
    588
    """

    problem = "inpainting"
    mask: torch.Tensor

    def __init__(
        self,
        image_shape: Sequence[int],
        *,
        keep: float | None = None,
        mask: np.ndarray | torch.Tensor | None = None,
        seed: int = 0,
    ) -> None:
        shape = check_image_shape(image_shape)
        super().__init__(shape, shape)
        if (keep is None) == (mask is None):
            raise ValueError("Mask needs exactly one of keep (a fraction) or mask (an array)")
        c, h, w = shape
        self.seed = check_int("seed", seed, minimum=0)
        if keep is not None:
            keep = check_float("keep", keep, low=0, high=1, low_open=True)
        self.keep = keep
        if keep is not None:
            count = max(1, round(self.keep * h * w))
            chosen = torch.randperm(h * w, generator=_generator(seed))[:count]
            tensor = torch.zeros(h * w, dtype=torch.bool)
            tensor[chosen] = True
            tensor = tensor.reshape(1, 1, h, w)
        else:
            tensor = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask)
            if tensor.dtype != torch.bool:
                raise TypeError(f"mask must be boolean (pass mask > 0), got dtype {tensor.dtype}")
            if tuple(tensor.shape) == (h, w):
                tensor = tensor.reshape(1, 1, h, w)
            elif tensor.ndim == 3 and tensor.shape[1:] == (h, w) and tensor.shape[0] in (1, c):
                tensor = tensor[None]
            else:
                raise ValueError(
                    f"mask must have shape (H, W) = {(h, w)} or (C, H, W) = {shape}, got "
                    f"{tuple(tensor.shape)}"
                )
            if not bool(tensor.any()):
                raise ValueError("mask keeps no pixel (all False); at least one must be True")
        self.register_buffer("mask", tensor.detach().cpu().clone())

    @property
    def observed(self) -> torch.Tensor:
        """Boolean ``measurement_shape``: the entries of ``y`` that carry data."""
        return self.mask[0].expand(self.measurement_shape)

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return x * self.mask

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return y * self.mask

    def describe(self) -> dict[str, Any]:
        """``keep`` and ``seed`` for a random mask; the mask itself when it is small."""
        desc: dict[str, Any] = {"kind": "mask", "image_shape": list(self.image_shape)}
        if self.keep is not None:
            return {**desc, "keep": self.keep, "seed": self.seed}
        stored = self.mask[0, 0] if self.mask.shape[1] == 1 else self.mask[0]
        if stored.numel() > _MAX_DESCRIBED_MASK_ENTRIES:
            return {**desc, "mask": None, "num_measurements": self.num_measurements}
        return {**desc, "mask": stored.to("cpu", torch.int64).tolist()}


# --------------------------------------------------------------------------- kernels


def gaussian_kernel(std: float, size: int | None = None) -> np.ndarray:
    """A normalised 2-D Gaussian kernel of standard deviation ``std`` pixels.

    ``size`` (odd) defaults to ``2·ceil(3·std) + 1``.

    Examples
    --------
    >>> gaussian_kernel(1.0).shape
    (7, 7)
    """
    std = check_float("std", std, low=0.0, low_open=True)
    size = 2 * math.ceil(3 * std) + 1 if size is None else check_int("size", size, minimum=1)
    if size % 2 == 0:  # a Blur centres a kernel on its middle pixel: an even one shifts by 1/2
        raise ValueError(f"size must be odd (the kernel's middle pixel is its centre), got "
                         f"{size}")
    t = np.arange(size) - (size - 1) / 2
    line = np.exp(-(t**2) / (2 * std**2))
    kernel = np.outer(line, line)
    return (kernel / kernel.sum()).astype(np.float32)


def motion_kernel(length: float, angle: float = 0.0) -> np.ndarray:
    """Linear motion blur: a line of ``length`` pixels at ``angle`` degrees (counter-clockwise
    from the x axis) through the centre, anti-aliased, normalised to sum 1.

    Examples
    --------
    >>> k = motion_kernel(5, 0)
    >>> k.shape, float(k.sum())
    ((5, 5), 1.0)
    """
    length = check_float("length", length, low=1.0)
    angle = math.radians(check_float("angle", angle))
    size = 2 * math.ceil(length / 2) + 1 if math.ceil(length) % 2 == 0 else math.ceil(length)
    kernel = np.zeros((size, size), dtype=np.float64)
    centre = (size - 1) / 2
    for s in np.linspace(-(length - 1) / 2, (length - 1) / 2, int(8 * length)):
        x, y = centre + s * math.cos(angle), centre - s * math.sin(angle)  # rows grow down
        x0, y0 = math.floor(x), math.floor(y)
        for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):  # bilinear splat
            weight = (1 - abs(x - x0 - dx)) * (1 - abs(y - y0 - dy))
            if 0 <= y0 + dy < size and 0 <= x0 + dx < size and weight > 0:
                kernel[y0 + dy, x0 + dx] += weight
    return (kernel / kernel.sum()).astype(np.float32)


def _cubic(t: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (bicubic interpolation, MATLAB imresize)."""
    t = np.abs(t)
    return np.where(t <= 1, 1.5 * t**3 - 2.5 * t**2 + 1,
                    np.where(t < 2, -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2, 0.0))


def downsampling_kernel(factor: int, kind: str = "bicubic") -> np.ndarray:
    """The anti-aliasing kernel of :class:`Downsample`, normalised to sum 1.

    ``"box"``: the ``factor×factor`` average. ``"bicubic"``: ``imresize``'s bicubic kernel
    stretched by ``factor`` (``4·factor`` taps). ``"gaussian"``: std ``factor/2`` pixels on the
    same ``4·factor`` taps (±4 std).
    """
    factor = check_int("factor", factor, minimum=1)
    kind = check_choice("kernel", kind, ("bicubic", "box", "gaussian"))
    if kind == "box" or factor == 1:
        return np.full((factor, factor), 1 / factor**2, dtype=np.float32)
    taps = 4 * factor
    offset = (taps - factor) // 2 + (factor - 1) / 2  # tap position of the output's centre
    d = (np.arange(taps) - offset) / factor
    line = _cubic(d) if kind == "bicubic" else np.exp(-(d**2) * 2)  # std factor/2 in pixels
    kernel = np.outer(line, line)
    return (kernel / kernel.sum()).astype(np.float32)


def _kernel_tensor(kernel: Any) -> torch.Tensor:
    array = np.asarray(kernel.detach().cpu() if torch.is_tensor(kernel) else kernel)
    if array.ndim != 2 or array.dtype.kind not in "fiu" or not np.isfinite(array).all():
        raise ValueError(f"a kernel must be a finite 2-D array, got shape {array.shape}")
    if abs(float(array.sum())) < 1e-12:
        raise ValueError("the kernel sums to 0; a blur or anti-aliasing kernel sums to 1")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


class Downsample(LinearOperator):
    """Super-resolution: anti-aliasing filter, then keep every ``factor``-th pixel.

    ``y = (k ∗ x)↓factor`` with ``y`` of shape ``(C, H/factor, W/factor)``: each output pixel is
    the kernel-weighted mean of the ``factor×factor`` block it covers (and its neighbours, for
    the bicubic and Gaussian kernels).

    Parameters
    ----------
    factor : int
        Downsampling factor; ``H`` and ``W`` must be divisible by it.
    image_shape : (H, W) or (C, H, W)
        Shape of the high-resolution image.
    kernel : {"bicubic", "box", "gaussian"} or 2-D array
        See :func:`downsampling_kernel`; an array is used as given (centred on each block).

    Notes
    -----
    Borders are extended by reflection. The adjoint is derived by autograd (exact).

    Examples
    --------
    >>> Downsample(4, (3, 32, 24)).measurement_shape
    (3, 8, 6)
    """

    problem = "super_resolution"
    kernel: torch.Tensor

    def __init__(self, factor: int, image_shape: Sequence[int],
                 kernel: str | np.ndarray = "bicubic") -> None:
        shape = check_image_shape(image_shape)
        self.factor = check_int("factor", factor, minimum=1)
        c, h, w = shape
        if h < self.factor or w < self.factor:
            raise ValueError(f"the image size {h}x{w} is smaller than the factor "
                             f"{self.factor} on a side")
        if h % self.factor or w % self.factor:
            raise ValueError(f"the image size {h}x{w} is not divisible by the factor "
                             f"{self.factor}; crop it to {h - h % self.factor}x"
                             f"{w - w % self.factor}")
        self.kernel_name = kernel if isinstance(kernel, str) else "array"
        tensor = _kernel_tensor(downsampling_kernel(self.factor, kernel)
                                if isinstance(kernel, str) else kernel)
        total = tensor.shape[0] - self.factor, tensor.shape[1] - self.factor
        if min(total) < 0:
            raise ValueError(f"the kernel {tuple(tensor.shape)} is smaller than the factor "
                             f"{self.factor}")
        self.pad = (total[1] // 2, total[1] - total[1] // 2,  # left, right, top, bottom
                    total[0] // 2, total[0] - total[0] // 2)
        if max(self.pad) >= min(h, w):
            raise ValueError(f"the kernel {tuple(tensor.shape)} is too large for a {h}x{w} "
                             "image (its reflection padding needs a larger image)")
        super().__init__(shape, (c, h // self.factor, w // self.factor))
        self.register_buffer("kernel", tensor)

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        c = x.shape[1]
        weight = self.kernel.to(x.dtype).expand(c, 1, *self.kernel.shape)
        padded = torch.nn.functional.pad(x, self.pad, mode="reflect") if any(self.pad) else x
        return torch.nn.functional.conv2d(padded, weight, stride=self.factor, groups=c)

    def describe(self) -> dict[str, Any]:
        desc = {"kind": "downsample", "image_shape": list(self.image_shape),
                "factor": self.factor, "kernel": self.kernel_name}
        return desc if self.kernel_name != "array" else {**desc, "kernel": self.kernel.tolist()}


class Blur(LinearOperator):
    """Deblurring: ``y = k ⊛ x``, circular convolution of every channel with a 2-D kernel.

    Computed with real FFTs; the adjoint multiplies by the conjugate spectrum (correlation).

    Parameters
    ----------
    kernel : 2-D array
        The point-spread function, centred (its middle pixel, or the one right/below the middle
        for even sizes, is the origin); see :func:`gaussian_kernel`, :func:`motion_kernel`.
        Used as given, not normalised: a kernel that sums to s scales a flat image by s
        (the built-in kernels sum to 1; ``deepprior deblur --kernel FILE`` normalises).
    image_shape : (H, W) or (C, H, W)

    Notes
    -----
    Boundary: **circular** (periodic) — the image wraps around, as in the FFT deconvolution
    literature; measured data blurred with another boundary differs from the model in a band
    of the kernel's radius along the edges.

    Examples
    --------
    >>> op = Blur(gaussian_kernel(1.0), (16, 16))
    >>> float(op.A(torch.ones(1, 1, 16, 16)).mean())
    1.0
    """

    problem = "deblurring"
    kernel: torch.Tensor

    def __init__(self, kernel: Any, image_shape: Sequence[int]) -> None:
        shape = check_image_shape(image_shape)
        tensor = _kernel_tensor(kernel)
        if tensor.shape[0] > shape[1] or tensor.shape[1] > shape[2]:
            raise ValueError(f"the kernel {tuple(tensor.shape)} is larger than the image "
                             f"{shape[1]}x{shape[2]}")
        super().__init__(shape, shape)
        self.register_buffer("kernel", tensor)

    def _spectrum(self, like: torch.Tensor) -> torch.Tensor:
        h, w = self.image_shape[1:]
        kh, kw = self.kernel.shape
        full = like.new_zeros(h, w)
        full[:kh, :kw] = self.kernel.to(like.dtype)
        full = torch.roll(full, shifts=(-(kh // 2), -(kw // 2)), dims=(0, 1))  # centre at (0, 0)
        return torch.fft.rfft2(full)

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return torch.fft.irfft2(torch.fft.rfft2(x) * self._spectrum(x), s=x.shape[-2:])

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return torch.fft.irfft2(torch.fft.rfft2(y) * self._spectrum(y).conj(), s=y.shape[-2:])

    def describe(self) -> dict[str, Any]:
        return {"kind": "blur", "image_shape": list(self.image_shape),
                "kernel": self.kernel.tolist()}


class RestrictedOperator(LinearOperator):
    """The entries ``keep`` of another operator's measurements, flattened to ``(1, k)``.

    The adjoint scatters ``y`` back into zeros at the kept positions and applies the base
    operator's adjoint. Used to split the data into a fitting and a held-out part.
    """

    indices: torch.Tensor

    def __init__(self, base: LinearOperator, keep: torch.Tensor) -> None:
        keep = torch.as_tensor(keep)
        if keep.dtype != torch.bool or tuple(keep.shape) != tuple(base.measurement_shape):
            raise ValueError(
                f"keep must be a boolean array of the measurement shape "
                f"{tuple(base.measurement_shape)}, got {keep.dtype} {tuple(keep.shape)}"
            )
        indices = keep.flatten().nonzero().squeeze(1).cpu()
        if indices.numel() == 0:
            raise ValueError("keep selects no measurement (all False)")
        super().__init__(base.image_shape, (indices.numel(),))
        self.base = base
        self.register_buffer("indices", indices)

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        out = self.base.A(x).reshape(1, -1)
        return out.index_select(1, self._indices(out))

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        full = y.new_zeros(1, math.prod(self.base.measurement_shape))
        full = full.index_copy(1, self._indices(y), y)
        return self.base.A_adjoint(full.reshape(1, *self.base.measurement_shape))

    def _indices(self, like: torch.Tensor) -> torch.Tensor:
        """The kept positions on ``like``'s device. The two parts of a split share their base:
        a fit moves its part, and with it the base, to the GPU, while the held-out part, which
        the fit never sees, keeps its positions where they were made; they follow, once."""
        if self.indices.device != like.device:
            self.indices = self.indices.to(like.device)
        return self.indices

    @property
    def device(self) -> torch.device:
        """The base's: its positions follow it only at the next call."""
        return self.base.device

    def describe(self) -> dict[str, Any]:
        return {"kind": "restricted", "base": self.base.describe(),
                "num_kept": self.indices.numel()}


# --------------------------------------------------------------------------- the user's own


class MatrixOperator(LinearOperator):
    """``y = M vec(x)``: a dense (numpy, torch) or sparse (``scipy.sparse``, torch) matrix of
    shape ``(m, n)``.

    ``vec`` flattens the ``(C, H, W)`` image in C order, so ``n = C·H·W``. A matrix with
    ``n = H·W`` columns and an image of ``C > 1`` channels is applied to each channel: ``y`` is
    ``(C, m)``, :attr:`measurement_shape` too.

    Parameters
    ----------
    matrix : array-like or scipy.sparse matrix
        The sensing matrix, stored as a float32 buffer (sparse matrices as sparse tensors).
    image_shape : (H, W) or (C, H, W), optional
        Needed unless ``n`` is a perfect square (then a square grayscale image is assumed).
    """

    matrix: torch.Tensor

    def __init__(self, matrix: Any, image_shape: Sequence[int] | None = None) -> None:
        if torch.is_tensor(matrix):
            if matrix.is_complex():
                raise TypeError(f"a sensing matrix must hold real numbers, got dtype "
                                f"{matrix.dtype}")
            matrix = matrix.detach().cpu()
            if matrix.layout != torch.strided:  # a torch sparse matrix, as scipy's
                import scipy.sparse

                coo = matrix.to_sparse_coo().coalesce()
                matrix = scipy.sparse.coo_array((coo.values().double().numpy(),
                                                 coo.indices().numpy()), shape=tuple(coo.shape))
            elif not matrix.is_floating_point() or matrix.dtype in (torch.bfloat16,
                                                                     torch.float16):
                matrix = matrix.float()  # float32, as it is stored (bool, int: exact enough)
        sparse = _is_scipy_sparse(matrix)
        kind = (matrix.dtype if sparse or not torch.is_tensor(matrix) else
                np.dtype(str(matrix.dtype).removeprefix("torch."))).kind
        if kind not in "fiub":
            raise TypeError(f"a sensing matrix must hold real numbers, got dtype {matrix.dtype}")
        if sparse:
            if matrix.ndim != 2:
                raise ValueError(f"a sensing matrix must be 2-D (m, n), got {matrix.shape}")
            coo = matrix.tocoo()
            tensor = torch.sparse_coo_tensor(
                np.vstack([coo.row, coo.col]), coo.data.astype(np.float32), coo.shape,
                check_invariants=True,
            ).coalesce()
            values = tensor.values()
        else:
            if not torch.is_tensor(matrix):
                matrix = np.asarray(matrix)
                if not matrix.dtype.isnative:  # e.g. a big-endian file: torch takes native only
                    matrix = matrix.astype(matrix.dtype.newbyteorder("="))
            tensor = torch.as_tensor(matrix)
            if tensor.ndim != 2:
                raise ValueError(f"a sensing matrix must be 2-D (m, n), got {tuple(tensor.shape)}")
            tensor = tensor.detach().to(torch.float32).cpu()
            values = tensor
        if not tensor.dtype.is_floating_point or not bool(torch.isfinite(values).all()):
            raise ValueError("the sensing matrix must hold finite real numbers")
        m, n = tensor.shape
        if image_shape is None:
            side = math.isqrt(n)
            if side * side != n:
                raise ValueError(
                    f"the matrix has n = {n} columns, which is not a square image; pass "
                    "image_shape=(H, W) or (C, H, W) with C·H·W = n"
                )
            image_shape = (side, side)
        shape = check_image_shape(image_shape)
        channels, height, width = shape
        per_channel = channels > 1 and n == height * width != math.prod(shape)
        if math.prod(shape) != n and not per_channel:
            raise ValueError(
                f"the matrix has {n} columns but image_shape {shape} has C·H·W = "
                f"{math.prod(shape)} pixels; they must be equal (or H·W = {height * width}, "
                "to apply the matrix to each channel)"
            )
        super().__init__(shape, (channels, m) if per_channel else (m,))
        self.register_buffer("matrix", tensor)

    @property
    def problem(self) -> str:  # type: ignore[override]
        m, n = self.matrix.shape
        return "compressive_sensing" if m < n else "generic"

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        flat = x.reshape(-1, self.matrix.shape[1])  # one row, or one per channel
        if self.matrix.is_sparse:
            out = torch.sparse.mm(self.matrix.to(x.dtype), flat.T).T
        else:
            out = flat @ self.matrix.to(x.dtype).T
        return out.reshape(1, *self.measurement_shape)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        flat = y.reshape(-1, self.matrix.shape[0])
        if self.matrix.is_sparse:
            back = torch.sparse.mm(self.matrix.to(y.dtype).t(), flat.T).T
        else:
            back = flat @ self.matrix.to(y.dtype)
        return back.reshape(1, *self.image_shape)

    def describe(self) -> dict[str, Any]:
        per_channel = len(self.measurement_shape) == 2
        return {"kind": "matrix", "image_shape": list(self.image_shape),
                "num_measurements": self.num_measurements,
                **({"per_channel": True} if per_channel else {})}


class FunctionOperator(LinearOperator):
    """An operator made of the user's callables (or of an object's ``A``/``A_adjoint``).

    Parameters
    ----------
    A : callable
        ``A(x) -> y`` on torch tensors, differentiable; ``x`` is ``(1, C, H, W)``.
    A_adjoint : callable or None
        ``A_adjoint(y) -> x``; None derives it with autograd.
    image_shape : (H, W) or (C, H, W)
    owner : torch.nn.Module or None
        The module the callables belong to (e.g. a deepinv physics), so that ``.to(device)``
        moves its buffers too.

    Notes
    -----
    The shape of ``y`` is read off two calls of ``A`` on random images (on ``owner``'s device,
    else the CPU). ``A`` may return ``(1, …)`` or drop the batch axis; :attr:`measurement_shape`
    is the shape without it. Entries that are 0 in both calls carry no data (a mask written as
    ``x * M``): :attr:`observed` leaves them out, so :attr:`num_measurements` (the discrepancy
    rule's ``m``) does not count them and a hold-out split holds none of them out. The fit
    calls ``A`` on its own device (CUDA or MPS when there is one):
    tensors the callables hold must follow their argument (``M.to(x.device)``) or be buffers
    of ``owner``. :func:`deepprior.reconstruct` calls ``A`` there once before the fit and says
    so if they do not.
    """

    def __init__(
        self,
        A: Callable[[torch.Tensor], torch.Tensor],  # noqa: N803
        A_adjoint: Callable[[torch.Tensor], torch.Tensor] | None = None,  # noqa: N803
        *,
        image_shape: Sequence[int],
        owner: torch.nn.Module | None = None,
    ) -> None:
        shape = check_image_shape(image_shape)
        probes = []
        for seed in (1, 2):
            image = torch.rand((1, *shape), generator=_generator(seed))
            with torch.no_grad():
                probes.append(_call_forward(A, image.to(_module_device(owner)),
                                            "the operator's A"))
        if probes[0].shape != probes[1].shape:
            raise ValueError(f"the operator's A returned shapes {tuple(probes[0].shape)} and "
                             f"{tuple(probes[1].shape)} for two images: its output must not "
                             "change shape")
        self._native = tuple(probes[0].shape)
        batched = probes[0].ndim > 1 and probes[0].shape[0] == 1
        super().__init__(shape, probes[0].shape[1:] if batched else probes[0].shape)
        self._A, self._A_adjoint, self.owner = A, A_adjoint, owner
        carries = ((probes[0] != 0) | (probes[1] != 0)).cpu()
        self._observed = None if bool(carries.all()) else carries.reshape(self.measurement_shape)

    @property
    def observed(self) -> torch.Tensor | None:
        return self._observed

    @property
    def has_adjoint(self) -> bool:
        return self._A_adjoint is not None

    def A(self, x: torch.Tensor) -> torch.Tensor:  # noqa: N802
        return self._A(x).reshape(1, *self.measurement_shape)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:  # noqa: N802
        if self._A_adjoint is None:
            return super().A_adjoint(y)
        return self._A_adjoint(y.reshape(self._native)).reshape(1, *self.image_shape)

    @property
    def device(self) -> torch.device:
        return _module_device(self.owner)


def _module_device(module: torch.nn.Module | None) -> torch.device:
    if module is not None:
        for tensor in (*module.parameters(), *module.buffers()):
            return tensor.device
    return torch.device("cpu")


def _is_scipy_sparse(value: Any) -> bool:
    try:
        import scipy.sparse
    except ImportError:  # pragma: no cover - scipy comes with scikit-image
        return False
    return scipy.sparse.issparse(value)


def as_operator(obj: Any, image_shape: Sequence[int] | None = None) -> LinearOperator:
    """Turn the user's forward model into a :class:`LinearOperator`.

    Parameters
    ----------
    obj
        A deepprior operator (returned as is); a dense matrix (numpy array, torch tensor) or a
        ``scipy.sparse`` matrix (→ :class:`MatrixOperator`); any object with a method ``A``
        and optionally ``A_adjoint`` working on ``(1, C, H, W)`` tensors, such as deepinv's
        ``LinearPhysics``; a pair ``(A, A_adjoint)`` of callables (``A_adjoint`` may be None);
        or a single callable ``A``. A missing adjoint is derived with autograd.
    image_shape : (H, W) or (C, H, W), optional
        Shape of the image. Needed for callables and objects without an ``image_shape``
        attribute, and for matrices whose column count is not a square.

    Returns
    -------
    LinearOperator

    Raises
    ------
    TypeError
        If ``obj`` is none of the above.
    ValueError
        If the image shape is missing or does not match the operator.

    Examples
    --------
    >>> import numpy as np
    >>> op = as_operator(np.ones((3, 16)))
    >>> op.image_shape, op.measurement_shape
    ((1, 4, 4), (3,))
    >>> as_operator((lambda x: 2 * x, lambda y: 2 * y), image_shape=(4, 5)).measurement_shape
    (1, 4, 5)
    """
    if isinstance(obj, LinearOperator):
        if image_shape is not None and check_image_shape(image_shape) != obj.image_shape:
            given = check_image_shape(image_shape)
            hint = (" (an image is (H, W, C), an operator's shape (C, H, W))"
                    if sorted(given) == sorted(obj.image_shape) else "")
            raise ValueError(f"image_shape {given} does not match the operator's "
                             f"{obj.image_shape}{hint}")
        return obj
    if isinstance(obj, np.ndarray | torch.Tensor) or _is_scipy_sparse(obj):
        return MatrixOperator(obj, image_shape)
    if callable(getattr(obj, "A", None)):
        shape = image_shape if image_shape is not None else _own_image_shape(obj)
        adjoint = getattr(obj, "A_adjoint", None)
        owner = obj if isinstance(obj, torch.nn.Module) else None
        return FunctionOperator(obj.A, adjoint if callable(adjoint) else None,
                                image_shape=_need_shape(shape, obj), owner=owner)
    if hasattr(obj, "matvec") and hasattr(obj, "rmatvec"):  # scipy's (or pylops') operators
        raise TypeError(f"a {type(obj).__name__} works on numpy vectors and the fit needs torch "
                        "tensors it can differentiate: pass its matrix (a numpy array or "
                        "scipy.sparse matrix) or write A with torch operations")
    if isinstance(obj, tuple | list) and len(obj) == 2 and callable(obj[0]) and (
            obj[1] is None or callable(obj[1])):
        return FunctionOperator(obj[0], obj[1], image_shape=_need_shape(image_shape, obj))
    if callable(obj):
        owner = obj if isinstance(obj, torch.nn.Module) else None
        return FunctionOperator(obj, image_shape=_need_shape(image_shape, obj), owner=owner)
    raise TypeError(
        "the operator must be a deepprior operator, a matrix (numpy, torch or scipy.sparse), an "
        "object with a method A(x) (and optionally A_adjoint), a pair (A, A_adjoint) of "
        f"functions or a function A; got {type(obj).__name__}"
    )


def _own_image_shape(obj: Any) -> Any:
    """The image shape an operator carries itself (deepinv's physics: ``img_size``), or None."""
    return next((s for s in (getattr(obj, "image_shape", None), getattr(obj, "img_size", None))
                 if s is not None), None)


def _need_shape(shape: Any, obj: Any) -> Sequence[int]:
    if shape is None:
        raise ValueError(
            f"the image shape of {type(obj).__name__} operator is unknown: pass "
            "image_shape=(H, W) or (C, H, W)"
        )
    return tuple(shape)


def adjointness_error(
    op: LinearOperator, *, seed: int = 0, dtype: torch.dtype | None = None
) -> float:
    """Relative error of ``⟨A x, v⟩ = ⟨x, Aᵀ v⟩`` for random ``x``, ``v`` (0 for an exact adjoint).

    Computed in ``dtype``, with the inner products accumulated in float64. By default float64
    (deepprior's own operators cast their buffers), or float32 for a :class:`FunctionOperator`
    whose code fails on float64 (a float32 tensor it holds, say).
    """
    if dtype is None:
        try:
            return adjointness_error(op, seed=seed, dtype=torch.float64)
        except RuntimeError:
            if not isinstance(op, FunctionOperator):
                raise
        dtype = torch.float32
    generator = _generator(seed)
    device = op.device
    if device.type == "mps":  # Apple's MPS has no float64 (the sums below run on the CPU)
        dtype = torch.float32
    x = torch.randn((1, *op.image_shape), generator=generator, dtype=dtype)
    v = torch.randn((1, *op.measurement_shape), generator=generator, dtype=dtype)
    with torch.no_grad():
        lhs = torch.sum(op.A(x.to(device)).cpu().double() * v.double())
        rhs = torch.sum(x.double() * op.A_adjoint(v.to(device)).cpu().double())
    return float(abs(lhs - rhs) / max(abs(float(lhs)), abs(float(rhs)), 1e-300))


def linearity_error(op: LinearOperator, *, seed: int = 0) -> float:
    """Relative error of ``A(x + 2u) = A(x) + 2·A(u)`` for random ``x``, ``u`` in float32 (about
    1e-7 for a linear ``A``; an offset, a square or a modulus shows as order 1)."""
    generator = _generator(seed + 1)
    x, u = (torch.rand((1, *op.image_shape), generator=generator).to(op.device)
            for _ in range(2))
    with torch.no_grad():
        ax, au, both = (op.A(v).double() for v in (x, u, x + 2 * u))
    scale = max(float(ax.norm() + 2 * au.norm()), 1e-300)
    return float((both - ax - 2 * au).norm()) / scale


def _call_forward(forward: Callable[[torch.Tensor], Any], x: torch.Tensor,
                  name: str, what: str = "a random image") -> torch.Tensor:
    """``forward(x)``, the user's code: a failure, whatever it raised, an output that is not a
    tensor or is complex, said in one ValueError naming ``name`` (and ``x``: ``what``)."""
    try:
        out = forward(x)
    except Exception as exc:
        raise ValueError(f"{name} failed on {what} of shape {tuple(x.shape)} "
                         f"({str(x.dtype).removeprefix('torch.')}): {type(exc).__name__}: "
                         f"{exc}") from exc
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"{name}(x) must return a torch tensor, got {type(out).__name__}")
    if out.is_complex():
        raise ValueError(_COMPLEX_HINT.format(name=name, dtype=out.dtype))
    return out


def check_operator(op: LinearOperator, y: torch.Tensor | None = None,
                   device: torch.device | None = None) -> None:
    """The probe run before every fit: one forward call, a linearity and an adjointness check.

    Raises ``ValueError`` (naming the problem) if ``A`` does not return a finite floating-point
    tensor of shape ``(1, *measurement_shape)``, if ``y`` has a different number of entries, if
    ``A`` is not linear (:func:`linearity_error` above :data:`LINEARITY_TOLERANCE`), or if a
    written-out adjoint disagrees with ``A`` by more than :data:`ADJOINT_TOLERANCE`. With
    ``device`` (the fit's, a GPU), the operator is moved there, as the fit moves it, and ``A``
    is called once more on an image there: tensors a user's ``A`` holds outside its module's
    buffers stay behind and would fail the fit's first iteration.
    """
    name = type(op).__name__
    if device is not None and device.type != "cpu":
        op.to(device)
        x = torch.zeros((1, *op.image_shape), device=device)
        try:
            with torch.no_grad():
                out = op.A(x)
        except Exception as exc:  # the user's code: say where it failed, whatever it raised
            raise ValueError(f"{name}.A failed on an image on {device}, where the fit runs: "
                             f"{type(exc).__name__}: {exc} (tensors A holds must follow its "
                             "argument, M.to(x.device), or be buffers of its torch module; or "
                             "pass device='cpu')") from exc
        if isinstance(out, torch.Tensor) and out.device != x.device:
            raise ValueError(f"{name}.A returned a tensor on {out.device} for an image on "
                             f"{x.device}, where the fit runs: it must stay on its argument's "
                             "device")
    x = torch.rand((1, *op.image_shape), generator=_generator(0)).to(op.device)
    out = _call_forward(op.A, x.requires_grad_(), f"{name}.A")
    if not out.is_floating_point():
        raise ValueError(f"{name}.A(x) must return a floating-point tensor, got {out.dtype}")
    if tuple(out.shape) != (1, *op.measurement_shape):
        raise ValueError(
            f"{name}.A(x) returned shape {tuple(out.shape)}, expected "
            f"{(1, *op.measurement_shape)}"
        )
    if not bool(torch.isfinite(out).all()):
        raise ValueError(f"{name}.A(x) returned NaN or infinite values for a finite image")
    if not out.requires_grad:
        raise ValueError(f"{name}.A is not differentiable by torch autograd (its output does not "
                         "depend on x through torch operations); the fit differentiates through "
                         "A: write it with torch operations, not numpy")
    if y is not None and y.numel() != out.numel():
        raise ValueError(
            f"the observation has {y.numel()} entries (shape {tuple(y.shape)}) but the operator "
            f"produces {out.numel()} measurements (shape {op.measurement_shape})"
        )
    error = linearity_error(op)
    if error > LINEARITY_TOLERANCE:
        raise ValueError(
            f"{name}.A is not linear: A(x + 2u) and A(x) + 2·A(u) differ by a relative "
            f"{error:.3g} for random images (tolerance {LINEARITY_TOLERANCE:g}); deepprior solves "
            "linear inverse problems y = A x (an offset b of A x + b belongs in y: pass y − b)")
    if op.has_adjoint:
        try:
            error = adjointness_error(op, dtype=torch.float32)
        except Exception as exc:  # the user's adjoint: say where it failed, as for A
            raise ValueError(f"{name}.A_adjoint failed on random measurements of shape "
                             f"{(1, *op.measurement_shape)}: {type(exc).__name__}: {exc} (leave "
                             "it out to have it derived by autograd)") from exc
        if error > ADJOINT_TOLERANCE:
            raise ValueError(
                f"{name}.A_adjoint is not the adjoint of A: ⟨Ax, v⟩ and ⟨x, Aᵀv⟩ differ by a "
                f"relative {error:.3g} (tolerance {ADJOINT_TOLERANCE:g}); fix A_adjoint or leave "
                "it out to have it derived by autograd"
            )


_KINDS = {
    "identity": lambda d: Identity(d["image_shape"]),
    "gaussian": lambda d: GaussianSensing(
        d["num_measurements"], d["image_shape"], seed=d["seed"],
        **({"max_bytes": d["max_bytes"]} if "max_bytes" in d else {}),
    ),
    "fast": lambda d: FastSensing(
        d["num_measurements"], d["image_shape"], seed=d["seed"], transform=d.get("transform", "dct")
    ),
    "downsample": lambda d: Downsample(d["factor"], d["image_shape"], (
        d["kernel"] if isinstance(d["kernel"], str) else np.asarray(d["kernel"]))),
    "blur": lambda d: Blur(np.asarray(d["kernel"], dtype=np.float32), d["image_shape"]),
    "mask": lambda d: (
        Mask(d["image_shape"], keep=d["keep"], seed=d.get("seed", 0))
        if d.get("keep") is not None
        else Mask(d["image_shape"], mask=_zero_one(d["mask"]))
    ),
}


def _zero_one(values: Any) -> np.ndarray:
    array = np.asarray(values)
    if not np.isin(array, (0, 1)).all():
        raise ValueError("a described mask must contain only 0/1 (or true/false)")
    return array.astype(bool)


def operator_from_description(desc: dict[str, Any]) -> LinearOperator:
    """Rebuild a built-in operator from its :meth:`~LinearOperator.describe` dictionary.

    Raises
    ------
    ValueError
        For a kind that cannot be rebuilt (a user's operator, a restricted operator, a large
        explicit mask that was not stored) or a description with missing keys.

    Examples
    --------
    >>> op = FastSensing(50, (1, 9, 11), seed=3)
    >>> operator_from_description(op.describe()).describe() == op.describe()
    True
    """
    if not isinstance(desc, dict):
        raise TypeError(f"desc must be a dict from describe(), got {type(desc).__name__}")
    kind = desc.get("kind")
    if kind not in _KINDS:
        raise ValueError(
            f"an operator of kind {kind!r} cannot be rebuilt from its description; rebuildable "
            f"kinds: {', '.join(_KINDS)}"
        )
    if kind == "mask" and desc.get("keep") is None and desc.get("mask") is None:
        raise ValueError("this mask description holds neither 'keep' nor the mask (a large "
                         "explicit mask is not stored); rebuild it with Mask(image_shape, "
                         "mask=...) from the original array")
    try:
        return _KINDS[kind](desc)
    except KeyError as exc:
        raise ValueError(f"description of kind {kind!r} is missing the key {exc}") from None


def rebuildable(op: LinearOperator) -> bool:
    """Whether :func:`operator_from_description` can rebuild ``op`` from its description."""
    desc = op.describe()
    return desc.get("kind") in _KINDS and not (
        desc["kind"] == "mask" and desc.get("keep") is None and desc.get("mask") is None
    )
