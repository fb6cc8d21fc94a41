"""Sample images for demos and benchmarks, from the data bundled with scikit-image.

No download happens: ``camera`` and ``astronaut`` ship inside the scikit-image wheel. The copies
in the repository's ``sample_images/`` folder are written from the same source.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SAMPLE_IMAGES", "sample_image"]

SAMPLE_IMAGES = ("camera", "astronaut")


def sample_image(name: str = "camera", *, size: int | tuple[int, int] | None = None) -> np.ndarray:
    """Return a bundled sample photograph as float32 in [0, 1].

    Parameters
    ----------
    name : {"camera", "astronaut"}
        ``camera``: grayscale 512×512 (H, W); ``astronaut``: RGB 512×512 (H, W, 3).
    size : int or (int, int) or None
        Resize (with anti-aliasing) to this side length or (height, width).

    Returns
    -------
    np.ndarray

    Examples
    --------
    >>> sample_image("camera", size=64).shape
    (64, 64)
    """
    from skimage import data
    from skimage.transform import resize

    if name not in SAMPLE_IMAGES:
        raise ValueError(f"unknown sample image {name!r}; choose one of {', '.join(SAMPLE_IMAGES)}")
    image = getattr(data, name)().astype(np.float32) / 255.0
    if size is not None:
        shape = (size, size) if isinstance(size, int) else tuple(size)
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
        image = resize(image, shape + image.shape[2:], anti_aliasing=True, order=1)
        image = np.clip(image, 0.0, 1.0).astype(np.float32)
    return image
