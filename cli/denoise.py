"""``deepprior denoise``: a noisy photo in, a clean one out."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import numpy as np
import typer

import deepprior
from deepprior.noise import SIGMA_FLOOR, estimate_noise_level

from .common import FitOptions, epilog, error_funnel, fit_options, image_or_demo, shape_text
from .common import sigma_from_cli as sigma_255
from .fitting import Builder, Task, default_output, image_bits, run_task

#: Side length the bundled camera image is resized to when no IMAGE is given.
DEMO_SIZE = 128

EPILOG = epilog(
    "deepprior denoise photo.png",
    "deepprior denoise photo.png --sigma 15 -o clean.tif",
    "deepprior denoise clean.png --add-noise 25 --stop oracle",
    units="Units: --sigma and --add-noise are noise stds in 0-255 units, > 0 and <= 255.",
)


Sigma = Annotated[
    float | None,
    typer.Option("--sigma", help="Known noise std of IMAGE, 0-255 units (estimated when "
                 "omitted)."),
]
AddNoise = Annotated[
    float | None,
    typer.Option("--add-noise", help="Treat IMAGE as clean: add Gaussian noise of this std "
                 "(0-255 units) and report PSNR/SSIM against it."),
]


@fit_options
def denoise(
    image: Annotated[
        Path | None,
        typer.Argument(help="Noisy image (PNG, TIFF, JPEG, .npy). Default: the bundled camera "
                       "image with noise of std 25 added."),
    ] = None,
    sigma: Sigma = None,
    add_noise: AddNoise = None,
    *,
    options: FitOptions,
) -> None:
    """Denoise a photo: a noisy image in, a clean one out."""
    with error_funnel(options.debug):
        run_task(prepare(sigma, add_noise, options)(image, options.seed), options)


def prepare(sigma: float | None, add_noise: float | None, options: FitOptions) -> Builder:
    """Check the options once; the builder makes the Task of one image (None: the demo).

    ``seed`` seeds the simulated noise (``--add-noise``); ``quiet`` silences the note of an
    estimated noise level.
    """
    noise = sigma_255(add_noise, "--add-noise")
    known = sigma_255(sigma, "--sigma")
    if noise is not None and known is not None:  # as --add-noise and --noise-sigma elsewhere
        raise ValueError("--add-noise sets the noise level it adds; --sigma is for an image "
                         "already noisy: give one")

    def build(image: Path | None, seed: int, *, quiet: bool = False) -> Task:
        if image is None and noise is None and known is not None:
            raise ValueError("the demo adds noise of std 25 and knows it: --sigma is for an "
                             "IMAGE already noisy (--add-noise N sets the demo's level)")
        loaded, source = image_or_demo(image, DEMO_SIZE, options.max_pixels,
                                       observed=noise is None)
        added = 25 / 255 if image is None and noise is None else noise
        clean = loaded if added is not None else None
        noisy = loaded if clean is None else deepprior.add_gaussian_noise(clean, added, seed=seed)
        level = known if known is not None else added
        notes = []
        if level is None:
            level = estimate_noise_level(noisy, advice="pass --sigma N if it is noise")
            if not quiet:
                notes.append("the image looks noiseless (its estimated noise level is 0)"
                             if level <= SIGMA_FLOOR else
                             f"estimated noise level: --sigma {level * 255:.1f} (0-255 units)")

        def metrics(truth: np.ndarray) -> dict:
            return {"noisy_psnr": deepprior.psnr(truth, np.clip(noisy, 0, 1))}

        return Task(
            command="denoise",
            observation=noisy,
            image_shape=noisy.shape,
            default_output=default_output(image, "denoised"),
            source=source,
            sigma=level,
            sigma_estimated=known is None and added is None,
            sigma_option="--sigma",
            clean=clean,
            clean_from="--add-noise (or the demo) makes IMAGE the clean image",
            inputs=(image,),
            bits=image_bits(image),
            headline=f"denoising {source} ({shape_text(noisy.shape)})",
            notes=tuple(notes),
            report={
                "simulated_noise_sigma_255": None if added is None else added * 255,
                "sigma_255": level * 255,
                "sigma_estimated": known is None and added is None,
            },
            metrics=metrics,
            summary=_summary,
        )

    return build


def _summary(result, report: dict) -> str:
    if result.psnr is None:
        return f"returned iteration {result.num_iter}"
    before = report["noisy_psnr"]
    return (f"PSNR {before:.2f} dB (noisy) -> {result.psnr:.2f} dB "
            f"({result.psnr - before:+.2f} dB), SSIM {result.ssim:.3f}, "
            f"iteration {result.num_iter}")
