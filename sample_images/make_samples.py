"""Write the sample images of ``deepprior`` from scikit-image's bundled data.

Both photographs ship inside the scikit-image package (``skimage.data``), so nothing is
downloaded. Run from anywhere::

    python sample_images/make_samples.py

It (re)writes ``camera.png`` (grayscale, 512 x 512) and ``astronaut.png`` (RGB, 512 x 512)
next to this script, as 8-bit PNGs with Pillow's ``optimize=True``. The pixels are exactly
those of ``skimage.data.camera()`` and ``skimage.data.astronaut()``.
"""

from __future__ import annotations

import pathlib

import numpy as np
import skimage.data
from PIL import Image

SAMPLES = {
    "camera.png": skimage.data.camera,
    "astronaut.png": skimage.data.astronaut,
}


def make_samples(folder: pathlib.Path) -> list[pathlib.Path]:
    """Write every sample image into `folder`; return the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, loader in SAMPLES.items():
        pixels = np.asarray(loader(), dtype=np.uint8)
        target = folder / name
        Image.fromarray(pixels).save(target, format="PNG", optimize=True)
        written.append(target)
    return written


def main() -> None:
    """Write the samples next to this script and print what was written."""
    for path in make_samples(pathlib.Path(__file__).resolve().parent):
        with Image.open(path) as im:
            size = path.stat().st_size
            print(f"{path.name}: {im.width} x {im.height}, mode {im.mode}, {size:,} bytes")


if __name__ == "__main__":
    main()
