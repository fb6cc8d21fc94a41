"""``deepprior superres`` and ``deepprior deblur``: the classic linear inverse problems.

Both take IMAGE as the corrupted observation (a low-resolution or a blurred image), or, with
``--simulate``, as the clean image to corrupt first (then PSNR/SSIM are reported). Without IMAGE
they run a demo on the bundled camera image (``--simulate`` implied).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

import deepprior
from deepprior.io import load_samples

from .common import (
    FitOptions,
    check_size,
    choices_enum,
    epilog,
    error_funnel,
    fit_options,
    pixel_noise,
    shape_text,
)
from .fitting import Builder, Task, chw, default_output, image_bits, run_task, to_measurements

#: Side length of the bundled camera image in the demos.
DEMO_SIZE = 128

SimulateFlag = Annotated[
    bool, typer.Option("--simulate", help="Treat IMAGE as the clean image: corrupt it first "
                       "and report PSNR/SSIM against it.")
]
NoiseSigma = Annotated[
    float | None,
    typer.Option("--noise-sigma", help="Noise std, 0-255 units (the measurements are pixels): "
                 "added with --simulate; otherwise the known noise level of IMAGE."),
]
AddNoise = Annotated[
    float | None, typer.Option("--add-noise", help="With --simulate: same as --noise-sigma.")
]
UNITS = "Units: --noise-sigma and --add-noise are stds in 0-255 units."

KernelName = choices_enum("KernelName", ("bicubic", "box", "gaussian"))
BICUBIC = KernelName("bicubic")

SUPERRES_EPILOG = epilog(
    "deepprior superres small.png --factor 4",
    "deepprior superres photo.png --factor 4 --simulate --kernel box",
    "deepprior superres small.png --factor 2 --clean truth.png --stop oracle",
    units=UNITS,
)
DEBLUR_EPILOG = epilog(
    "deepprior deblur blurry.png --kernel gaussian:2.0",
    "deepprior deblur photo.png --kernel motion:15,30 --simulate --add-noise 2",
    "deepprior deblur blurry.png --kernel psf.png --noise-sigma 1",
    units=UNITS,
)


def _observation(image: Path | None, simulate: bool, options: FitOptions):
    """(image, source, simulate): IMAGE loaded, or the demo camera image (simulated)."""
    if image is None:
        clean = deepprior.sample_image("camera", size=DEMO_SIZE)
        return clean, f"sample image camera resized to {DEMO_SIZE}x{DEMO_SIZE}", True
    return deepprior.load_image(image, max_pixels=options.max_pixels, unclipped=not simulate), \
        str(image), simulate


# --------------------------------------------------------------------------- superres

Factor = Annotated[int, typer.Option("--factor", "-f", min=2, help="Upscaling factor.")]
Kernel = Annotated[
    KernelName,
    typer.Option("--kernel", help="Anti-aliasing filter of the downsampling model "
                 "(bicubic: MATLAB imresize)."),
]


@fit_options
def superres(
    image: Annotated[
        Path | None,
        typer.Argument(help="The low-resolution image (the output is --factor times larger); "
                       "with --simulate, the high-resolution truth. Default: a demo on the "
                       "bundled camera image."),
    ] = None,
    factor: Factor = 4,
    kernel: Kernel = BICUBIC,
    simulate: SimulateFlag = False,
    noise_sigma: NoiseSigma = None,
    add_noise: AddNoise = None,
    *,
    options: FitOptions,
) -> None:
    """Super-resolution: a low-resolution image in, one --factor times larger out."""
    with error_funnel(options.debug):
        build = prepare_superres(factor, kernel, simulate, noise_sigma, add_noise, options,
                                 demo=image is None)
        run_task(build(image, options.seed), options)


def prepare_superres(factor: int, kernel: KernelName, simulate: bool, noise_sigma: float | None,
                     add_noise: float | None, options: FitOptions, *,
                     demo: bool = False) -> Builder:
    """Check the options once; the builder makes the Task of one image (None: the demo).

    ``seed`` seeds the simulated noise; images of one shape share one operator.
    """
    kernel_name = KernelName(kernel).value
    sigma = pixel_noise(noise_sigma, add_noise, simulating=simulate or demo,
                        simulate_how="--simulate")
    operators: dict[tuple[int, int, int], deepprior.Downsample] = {}

    def operator_for(shape: tuple[int, ...]) -> deepprior.Downsample:
        if chw(shape) not in operators:
            operators[chw(shape)] = deepprior.Downsample(factor, chw(shape), kernel_name)
        return operators[chw(shape)]

    def build(image: Path | None, seed: int, *, quiet: bool = False) -> Task:
        loaded, source, simulated = _observation(image, simulate, options)
        height, width = loaded.shape[:2]
        notes = []
        if simulated:
            cropped = (height - height % factor, width - width % factor)
            check_size(cropped, f"IMAGE {source} cropped to a multiple of --factor {factor}")
            if cropped != (height, width):  # in a batch too (quiet), where it names the input
                notes.append(f"{'IMAGE' if image is None else image} is {height}x{width}, not "
                             f"a multiple of --factor {factor}: cropped to "
                             f"{cropped[0]}x{cropped[1]} (top left)")
            clean = loaded[: cropped[0], : cropped[1]]
            operator = operator_for(clean.shape)
            y, _ = deepprior.simulate_measurements(operator, clean, sigma=sigma, seed=seed)
            shape = clean.shape
        else:
            clean = None
            shape = (height * factor, width * factor, *loaded.shape[2:])
            check_size(shape, f"IMAGE {source} upscaled by --factor {factor}")
            operator = operator_for(shape)
            y = to_measurements(loaded)
        low = y.shape[1:]
        return Task(
            command="superres",
            observation=np.asarray(y, dtype=np.float32),
            image_shape=shape,
            default_output=default_output(image, f"x{factor}"),
            source=source,
            operator=operator,
            sigma=sigma,
            clean=clean,
            clean_from="--simulate (or the demo) makes IMAGE the clean image",
            inputs=(image,),
            bits=image_bits(image),
            headline=(f"super-resolving {source}: {low[0]}x{low[1]} -> {shape_text(shape[:2])} "
                      f"(x{factor}, {kernel_name} kernel)"),
            notes=tuple(notes),
            report={"factor": factor, "kernel": kernel_name, "simulated": simulated,
                    "low_resolution_shape": list(low),
                    "noise_sigma_255": None if sigma is None else sigma * 255},
        )

    return build


# --------------------------------------------------------------------------- deblur

BlurKernel = Annotated[
    str,
    typer.Option("--kernel", "-k", help="The blur: gaussian:STD (pixels), motion:LENGTH,"
                 "ANGLE (pixels, degrees), or a kernel file (.png, .tif, .npy; normalised to "
                 "sum 1). Circular boundary: edges of real photos may show artefacts."),
]


@fit_options
def deblur(
    image: Annotated[
        Path | None,
        typer.Argument(help="The blurred image; with --simulate, the sharp truth. Default: a "
                       "demo on the bundled camera image."),
    ] = None,
    kernel: BlurKernel = "gaussian:2.0",
    simulate: SimulateFlag = False,
    noise_sigma: NoiseSigma = None,
    add_noise: AddNoise = None,
    *,
    options: FitOptions,
) -> None:
    """Deblurring: a blurred image in, a sharp one out."""
    with error_funnel(options.debug):
        build = prepare_deblur(kernel, simulate, noise_sigma, add_noise, options,
                               demo=image is None)
        run_task(build(image, options.seed), options)


def prepare_deblur(kernel: str, simulate: bool, noise_sigma: float | None,
                   add_noise: float | None, options: FitOptions, *,
                   demo: bool = False) -> Builder:
    """Check the options and read the kernel once; the builder makes the Task of one image.

    ``seed`` seeds the simulated noise; images of one shape share one operator.
    """
    sigma = pixel_noise(noise_sigma, add_noise, simulating=simulate or demo,
                        simulate_how="--simulate")
    psf, kernel_path, notes = read_kernel(kernel, options.max_pixels)  # in every Task
    operators: dict[tuple[int, int, int], deepprior.Blur] = {}

    def build(image: Path | None, seed: int, *, quiet: bool = False) -> Task:
        loaded, source, simulated = _observation(image, simulate, options)
        check_size(loaded.shape, f"IMAGE {source}")
        if psf.shape[0] > loaded.shape[0] or psf.shape[1] > loaded.shape[1]:
            raise ValueError(f"--kernel {kernel} is {shape_text(psf.shape)}, larger than the "
                             f"image ({shape_text(loaded.shape[:2])})")
        shape = chw(loaded.shape)
        if shape not in operators:
            operators[shape] = deepprior.Blur(psf, shape)
        operator = operators[shape]
        if simulated:
            y, _ = deepprior.simulate_measurements(operator, loaded, sigma=sigma, seed=seed)
        else:
            y = to_measurements(loaded)
        return Task(
            command="deblur",
            observation=np.asarray(y, dtype=np.float32),
            image_shape=loaded.shape,
            default_output=default_output(image, "deblurred"),
            source=source,
            operator=operator,
            sigma=sigma,
            clean=loaded if simulated else None,
            clean_from="--simulate (or the demo) makes IMAGE the clean image",
            inputs=(image, kernel_path),
            bits=image_bits(image),
            headline=(f"deblurring {source} ({shape_text(loaded.shape)}), kernel {kernel} "
                      f"({shape_text(psf.shape)})"),
            notes=tuple(notes),
            report={"kernel": kernel, "kernel_shape": list(psf.shape), "simulated": simulated,
                    "boundary": "circular",
                    "noise_sigma_255": None if sigma is None else sigma * 255},
        )

    return build


_NUMBER = r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*"


def read_kernel(spec: str, max_pixels: int) -> tuple[np.ndarray, Path | None, list[str]]:
    """--kernel gaussian:STD | motion:LENGTH[,ANGLE] | FILE → (kernel summing to 1, file,
    notes to print), all-zero borders trimmed evenly (it stays centred)."""
    notes = []
    path = None
    if spec.lower().startswith("gaussian:"):
        match = re.fullmatch(_NUMBER, spec[len("gaussian:"):])
        std = float(match[1]) if match else math.nan
        if not (math.isfinite(std) and 0 < std <= 100):
            raise ValueError(f"--kernel {spec}: expected gaussian:STD with a std in pixels in "
                             "(0, 100], e.g. gaussian:2.0")
        psf = deepprior.gaussian_kernel(std).astype(np.float64)
    elif spec.lower().startswith("motion:"):
        match = re.fullmatch(_NUMBER + f"(?:,{_NUMBER})?", spec[len("motion:"):])
        length = float(match[1]) if match else math.nan
        angle = float(match[2]) if match and match[2] else 0.0
        if not (math.isfinite(length) and 1 <= length <= 1000 and math.isfinite(angle)):
            raise ValueError(f"--kernel {spec}: expected motion:LENGTH,ANGLE with a length in "
                             "pixels >= 1 and an angle in degrees, e.g. motion:15,30")
        psf = deepprior.motion_kernel(length, angle).astype(np.float64)
    else:
        path = Path(spec)
        if not path.exists():
            raise ValueError(f"--kernel {spec}: not gaussian:STD, motion:LENGTH,ANGLE or an "
                             "existing kernel file")
        if path.suffix.lower() in (".npy", ".npz", ".mat", ".txt", ".csv"):
            psf = np.asarray(deepprior.load_array(
                path, names=("kernel", "psf"),
                choose="a file holding the kernel alone, or one named 'kernel' or 'psf'"),
                dtype=np.float64)
        else:
            # as stored: a PSF's scale is its own (photon counts, a peak of 1); it is normalised
            psf = load_samples(path, max_pixels=max_pixels).astype(np.float64)
            if psf.ndim == 3 and np.ptp(psf, axis=2).max() == 0:  # grey saved as RGB
                psf = psf[:, :, 0]
            if psf.ndim == 3:
                raise ValueError(f"--kernel {spec} is a colour image with different channels; "
                                 "a blur kernel is grayscale")
    if psf.ndim != 2:
        raise ValueError(f"--kernel {spec}: a kernel must be a 2-D array, got shape {psf.shape}")
    total = float(psf.sum())
    if total <= 0:
        raise ValueError(f"--kernel {spec}: the kernel sums to {total:g}; a blur kernel's "
                         "weights sum to a positive total")
    if abs(total - 1) > 1e-3:
        notes.append(f"--kernel {spec} sums to {total:.4g}; normalised to sum 1")
    if psf.min() < 0:
        notes.append(f"--kernel {spec} has negative weights (down to {psf.min() / total:.3g} "
                     "after normalising); used as given")
    for axis in (0, 1):  # zero rows (columns) cut from both sides alike: the centre stays
        nonzero = np.flatnonzero(np.any(psf != 0, axis=1 - axis))
        cut = min(nonzero[0], psf.shape[axis] - 1 - nonzero[-1])
        psf = psf[cut:psf.shape[0] - cut] if axis == 0 else psf[:, cut:psf.shape[1] - cut]
    if path is not None:  # the built-in kernels sum to 1 as they are
        psf = psf / total
    return psf.astype(np.float32), path, notes
