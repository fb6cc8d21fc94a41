"""Sample images for demos and benchmarks, from the data bundled with scikit-image.

No download happens: ``camera`` and ``astronaut`` ship inside the scikit-image wheel. The copies
in the repository's ``sample_images/`` folder are written from the same source.
"""

from __future__ import annotations

import numbers

import numpy as np

from .checks import check_image_shape, check_int

__all__ = ["SAMPLE_IMAGES", "random_mask", "sample_image", "text_mask"]

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
        shape = _height_width(size if not isinstance(size, numbers.Number) else (size, size),
                              "size", given=size)
        image = resize(image, shape + image.shape[2:], anti_aliasing=True, order=1)
        image = np.clip(image, 0.0, 1.0).astype(np.float32)
    return image


def random_mask(shape: tuple[int, int], missing: float, *, seed: int = 0) -> np.ndarray:
    """A boolean (H, W) mask, True = known, with a ``missing`` fraction of pixels removed
    (exactly ``round(missing·H·W)``, drawn from ``seed``, an integer >= 0; at most all pixels
    but one, so that there is something to fit).

    Examples
    --------
    >>> int((~random_mask((10, 10), 0.3)).sum())
    30
    """
    from .checks import check_float

    height, width = _height_width(shape)
    missing = check_float("missing", missing, low=0.0, high=1.0, high_open=True)
    seed = check_int("seed", seed, minimum=0)
    mask = np.ones(height * width, dtype=bool)
    count = min(round(missing * mask.size), mask.size - 1)  # at least one pixel stays known
    mask[np.random.default_rng(seed).permutation(height * width)[:count]] = 0
    return mask.reshape(height, width)


def text_mask(shape: tuple[int, int], text: str = "deep image prior", *,
              lines: int = 0) -> np.ndarray:
    """A boolean (H, W) mask, True = known, with ``text`` written over the image in thick
    strokes (the classic text-removal inpainting demo), repeated on ``lines`` rows (0: enough
    rows to cover the image). Uses Pillow's built-in font: no download.

    Examples
    --------
    >>> mask = text_mask((64, 64))
    >>> mask.dtype, bool(0.05 < 1 - mask.mean() < 0.5)
    (dtype('bool'), True)
    """
    from PIL import Image, ImageDraw, ImageFont

    height, width = _height_width(shape)
    lines = check_int("lines", lines, minimum=0)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty string, got {text!r}")
    size = max(8, min(height, width) // 8)
    font = ImageFont.load_default(size=size)
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    rows = lines or max(1, height // (2 * size))
    for row in range(rows):
        top = (row + 0.5) * height / rows - size / 2
        draw.text((size // 4, top), text, fill=255, font=font, stroke_width=max(1, size // 10),
                  stroke_fill=255)
    mask = np.asarray(canvas) == 0
    if mask.all():
        raise ValueError(f"the text mask of a {height}x{width} image covers no pixel: the image "
                         "is too narrow for its letters")
    return mask


def _height_width(shape: object, name: str = "shape", given: object = None) -> tuple[int, int]:
    """``(H, W)`` of positive integers (an image's ``.shape[:2]``); ``given``: what the user
    passed, where ``shape`` was made from it (``size=64`` → ``(64, 64)``)."""
    if isinstance(shape, tuple | list) and len(shape) == 3:
        raise ValueError(f"{name} must be (height, width), got {tuple(shape)}: pass "
                         "image.shape[:2] for an image")
    wanted = "a positive int or (height, width)" if given is not None else "(height, width)"
    if not isinstance(shape, tuple | list):
        raise TypeError(f"{name} must be {wanted}, got {given if given is not None else shape!r}")
    try:
        _, height, width = check_image_shape(shape, name)
    except TypeError:  # a number of the wrong kind
        raise TypeError(f"{name} must be {wanted} of positive integers, got "
                        f"{given if given is not None else shape!r}") from None
    return height, width
