"""Image measures: mean squared error, PSNR and SSIM (peak value 1), and total variation.

The numpy functions are what users and benchmarks call; :func:`psnr_tensor` is the same PSNR on
torch tensors, used inside the fitting loop so that tracking it costs no device-to-host copy.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import structural_similarity

from .checks import check_float, check_image_array

__all__ = ["mse", "psnr", "psnr_tensor", "ssim", "total_variation"]


def _pair(reference: np.ndarray, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    reference = np.asarray(reference, dtype=np.float64)
    image = np.asarray(image, dtype=np.float64)
    if reference.shape != image.shape:
        raise ValueError(
            f"reference and image must have the same shape, got {reference.shape} and {image.shape}"
        )
    if reference.size == 0:
        raise ValueError(f"reference and image are empty (shape {reference.shape})")
    return reference, image


def _images(reference: np.ndarray, image: np.ndarray, data_range: float
            ) -> tuple[np.ndarray, np.ndarray, float]:
    """The pair, with a reference on the ``[0, data_range]`` scale: a PSNR or SSIM of 8-bit data
    read as [0, 1] is a number, and a wrong one (the image, a reconstruction, may overshoot)."""
    reference, image = _pair(reference, image)
    data_range = check_float("data_range", data_range, low=0.0, low_open=True)
    check_image_array("reference", reference, peak=data_range, layout=False,
                      hint="pass data_range=255 for 8-bit data (65535 for 16-bit), or divide "
                           "it by 255")
    return reference, image, data_range


def mse(reference: np.ndarray, image: np.ndarray) -> float:
    """Mean squared error between two arrays of the same shape."""
    reference, image = _pair(reference, image)
    return float(np.mean((reference - image) ** 2))


def psnr(reference: np.ndarray, image: np.ndarray, *, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range² / MSE)``.

    Parameters
    ----------
    reference, image : np.ndarray
        Arrays of the same shape, (H, W) or (H, W, C), values nominally in [0, data_range].
    data_range : float
        Peak value; 1 for the library's [0, 1] images.

    Returns
    -------
    float
        PSNR in dB; ``inf`` when the arrays are identical, NaN where either holds NaN.

    Raises
    ------
    ValueError
        Shapes that differ, empty arrays, or a reference with values beyond twice
        ``data_range`` (8-bit data with the default ``data_range=1``; the image, a
        reconstruction that may have diverged, is not bounded).

    Examples
    --------
    >>> import numpy as np
    >>> round(psnr(np.zeros((4, 4)), np.full((4, 4), 0.1)), 2)
    20.0
    """
    reference, image, data_range = _images(reference, image, data_range)
    err = float(np.mean((reference - image) ** 2))
    if err == 0:
        return float("inf")
    return float(10.0 * np.log10(data_range**2 / err))


def psnr_tensor(reference: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """PSNR in dB (peak 1) of two tensors of the same shape, as a 0-d tensor on their device
    (no host sync)."""
    if reference.shape != image.shape:
        raise ValueError(f"reference and image must have the same shape, got "
                         f"{tuple(reference.shape)} and {tuple(image.shape)}")
    err = torch.mean((reference - image) ** 2)
    return -10.0 * torch.log10(err)


def ssim(reference: np.ndarray, image: np.ndarray, *, data_range: float = 1.0) -> float:
    """Structural similarity (scikit-image's implementation, Gaussian-free 7×7 window).

    Colour images (H, W, 3) are compared channel by channel and averaged. Images smaller than
    7 pixels per side use the largest odd window that fits. Raises ``ValueError`` as
    :func:`psnr` does, and for arrays that are not (H, W) or (H, W, C) images (a (C, H, W)
    array would be compared along the wrong axes).
    """
    reference, image, data_range = _images(reference, image, data_range)
    check_image_array("reference", reference, peak=np.inf)
    channel_axis = -1 if reference.ndim == 3 else None
    side = min(reference.shape[:2])
    win = min(7, side if side % 2 == 1 else side - 1)
    if win < 3:
        raise ValueError(f"SSIM needs images of at least 3x3 pixels, got {reference.shape[:2]}")
    return float(
        structural_similarity(
            reference, image, data_range=data_range, channel_axis=channel_axis, win_size=win
        )
    )


def total_variation(image: torch.Tensor) -> torch.Tensor:
    r"""Isotropic total variation per pixel of images ``(N, C, H, W)``, differentiable.

    .. math::

        \mathrm{TV}(x) = \frac{1}{NCHW} \sum_{n,c,i,j}
            \sqrt{(x_{i+1,j} - x_{i,j})^2 + (x_{i,j+1} - x_{i,j})^2 + \epsilon}

    with forward differences (zero across the last row and column) and
    :math:`\epsilon = 10^{-8}`, which keeps the gradient finite where the image is flat.

    Examples
    --------
    >>> import torch
    >>> ramp = torch.arange(4.0).repeat(1, 1, 4, 1) / 10  # +0.1 per column
    >>> round(float(total_variation(ramp)), 4)
    0.075
    """
    dy = torch.nn.functional.pad(image[..., 1:, :] - image[..., :-1, :], (0, 0, 0, 1))
    dx = torch.nn.functional.pad(image[..., :, 1:] - image[..., :, :-1], (0, 1))
    return torch.mean(torch.sqrt(dx**2 + dy**2 + 1e-8))
