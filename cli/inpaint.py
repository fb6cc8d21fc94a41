"""``deepprior inpaint``: fill in the missing pixels of an image.

With ``--mask MASK`` IMAGE is the damaged photo and MASK says which pixels are known (white).
Without it the command is a demo: IMAGE (or the bundled camera image) is the clean image, a
seeded random mask (``--missing``) or a text overlay (``--text``) removes pixels, and PSNR/SSIM
are reported.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

import deepprior

from .common import (
    FitOptions,
    epilog,
    error_funnel,
    fit_options,
    image_or_demo,
    pixel_noise,
    shape_text,
)
from .fitting import Builder, Task, chw, default_output, image_bits, run_task, to_measurements

#: Side length of the bundled camera image when no IMAGE is given.
DEMO_SIZE = 128
DEFAULT_MISSING = 0.5

EPILOG = epilog(
    "deepprior inpaint damaged.png --mask known.png",
    "deepprior inpaint --missing 0.7 --noise-sigma 10",
    "deepprior inpaint photo.png --text",
    units="Units: --noise-sigma is a std in 0-255 units (the measurements are pixels, so "
    "measurement units are image units).",
)


MaskOption = Annotated[
    Path | None,
    typer.Option("--mask", help="Known pixels in white (any bit depth; grey levels are "
                 "thresholded at 0.5; PNG, TIFF, .npy), the size of IMAGE."),
]
Missing = Annotated[
    float | None,
    typer.Option("--missing", help=f"Demo: remove this fraction of the pixels at random "
                 f"(seeded by --seed; default {DEFAULT_MISSING})."),
]
TextFlag = Annotated[bool, typer.Option("--text", help="Demo: remove the pixels under a text "
                                        "overlay.")]
NoiseSigma = Annotated[
    float | None,
    typer.Option("--noise-sigma", help="Noise std of the known pixels, 0-255 units: added "
                 "in the demo; with --mask, the known noise level of IMAGE."),
]
AddNoise = Annotated[float | None, typer.Option("--add-noise", help="Demo: same as "
                                                "--noise-sigma.")]


@fit_options
def inpaint(
    image: Annotated[
        Path | None,
        typer.Argument(help="With --mask: the damaged image. Without: the clean image of the "
                       "demo (default: the bundled camera image at 128x128)."),
    ] = None,
    mask: MaskOption = None,
    missing: Missing = None,
    text: TextFlag = False,
    noise_sigma: NoiseSigma = None,
    add_noise: AddNoise = None,
    *,
    options: FitOptions,
) -> None:
    """Inpainting: recover the missing pixels of an image."""
    with error_funnel(options.debug):
        build = prepare(mask, missing, text, noise_sigma, add_noise, options)
        run_task(build(image, options.seed), options)


def prepare(mask: Path | None, missing: float | None, text: bool, noise_sigma: float | None,
            add_noise: float | None, options: FitOptions) -> Builder:
    """Check the options and read the mask once; the builder makes the Task of one image.

    ``seed`` seeds the demo's random mask and noise. Images of one shape share one operator.
    """
    demo = mask is None
    if not demo and (missing is not None or text):
        raise ValueError("--missing and --text make the demo's mask; with --mask they do "
                         "not apply")
    if missing is not None and text:
        raise ValueError("give --missing or --text, not both")
    if missing is not None and not 0 < missing < 1:
        raise ValueError(f"--missing is the fraction of pixels removed, between 0 and 1 "
                         f"(exclusive), got {missing:g}")
    sigma = pixel_noise(noise_sigma, add_noise, simulating=demo,
                        simulate_how="the demo, without --mask")
    given, notes = (None, ()) if demo else read_mask(mask, options)
    fraction = DEFAULT_MISSING if missing is None else missing
    operators: dict[tuple[int, int, int], deepprior.Mask] = {}

    def build(image: Path | None, seed: int, *, quiet: bool = False) -> Task:
        if not demo and image is None:
            raise ValueError("--mask needs IMAGE, the damaged photo whose pixels it marks "
                             "(without --mask the demo removes pixels from a sample image)")
        loaded, source = image_or_demo(image, DEMO_SIZE, options.max_pixels, observed=not demo)
        if demo:
            keep = (deepprior.text_mask(loaded.shape[:2]) if text else
                    deepprior.random_mask(loaded.shape[:2], fraction, seed=seed))
            mask_source = ("text overlay" if text else
                           f"random, {fraction:g} missing, seed {seed}")
            operator = deepprior.Mask(chw(loaded.shape), mask=keep)
            y, _ = deepprior.simulate_measurements(operator, loaded, sigma=sigma, seed=seed)
        else:
            keep, mask_source = given, str(mask)
            if keep.shape != loaded.shape[:2]:
                raise ValueError(f"--mask {mask} is {shape_text(keep.shape)} but IMAGE is "
                                 f"{shape_text(loaded.shape[:2])}; they must be the same size")
            shape = chw(loaded.shape)
            if shape not in operators:
                operators[shape] = deepprior.Mask(shape, mask=keep)
            operator = operators[shape]
            y = to_measurements(loaded) * keep
        known = int(keep.sum())
        return Task(
            command="inpaint",
            observation=np.asarray(y, dtype=np.float32),
            image_shape=loaded.shape,
            default_output=default_output(image, "inpainted"),
            source=source,
            operator=operator,
            sigma=sigma,
            clean=loaded if demo else None,
            clean_from="the demo (no --mask) uses IMAGE as the clean image",
            inputs=(image, mask),
            bits=image_bits(image),
            headline=(f"inpainting {source} ({shape_text(loaded.shape)}), "
                      f"{keep.size - known} of {keep.size} pixels missing ({mask_source})"),
            notes=notes,
            report={
                "mask": mask_source,
                "known_pixels": known,
                "missing_fraction": 1 - known / keep.size,
                "noise_sigma_255": None if sigma is None else sigma * 255,
            },
        )

    return build


def read_mask(path: Path, options: FitOptions) -> tuple[np.ndarray, tuple[str, ...]]:
    """A mask file as a boolean (H, W) array, True = known: white, thresholded at 0.5; and
    the notes on it for the Task."""
    alpha = None
    if path.suffix.lower() == ".npy":
        stored = np.asarray(deepprior.load_array(path))
        values = stored.astype(np.float64)
        if stored.dtype in (np.uint8, np.uint16) and values.max() > 1:  # 0/255, 0/65535
            values /= np.iinfo(stored.dtype).max
        if values.ndim == 3 and values.shape[2] == 1:
            values = values[:, :, 0]
        if values.ndim != 2:
            raise ValueError(f"--mask {path}: a .npy mask must be a 2-D array, got shape "
                             f"{values.shape}")
        if values.min() < 0 or values.max() > 1:
            raise ValueError(f"--mask {path}: a .npy mask holds values in [0, 1], booleans or "
                             f"uint8 / uint16 image values, got {stored.dtype} values in "
                             f"[{stored.min():g}, {stored.max():g}]")
    else:
        with warnings.catch_warnings():  # the alpha channel is read below
            warnings.filterwarnings("ignore", message=".*the alpha channel was dropped")
            values = deepprior.load_image(path, max_pixels=options.max_pixels)
        if values.ndim == 3:
            values = values.mean(axis=2)
        alpha = _alpha(path)
        if alpha is not None and alpha.shape == values.shape:  # holes erased in an editor
            values = np.minimum(values, alpha)
        else:
            alpha = None
    keep = values >= 0.5
    grey = int(np.count_nonzero((values > 0) & (values < 1)))
    known = "white and opaque = known" if alpha is not None else "white = known"
    notes = [f"--mask {path} has {grey} grey pixels; thresholded at 0.5 ({known})"] \
        if grey else []
    if alpha is not None:
        notes.append(f"--mask {path} has transparent pixels: they count as missing")
    if not keep.any():
        raise ValueError(f"--mask {path} marks no pixel as known (white = known, black = "
                         "missing); is it inverted?")
    if keep.all():
        notes.append(f"--mask {path} marks every pixel as known: nothing to inpaint")
    return keep, tuple(notes)


def _alpha(path: Path) -> np.ndarray | None:
    """A mask image's alpha channel in [0, 1], upright, where it is not constant (None
    otherwise, or for a file Pillow does not read)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            if image.mode not in ("RGBA", "LA", "PA", "La", "RGBa") \
                    and "transparency" not in image.info:
                return None
            alpha = np.asarray(ImageOps.exif_transpose(image).convert("RGBA").getchannel("A"))
    except (OSError, ValueError):
        return None
    return alpha / 255.0 if alpha.min() != alpha.max() else None
