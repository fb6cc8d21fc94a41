"""``deepprior cs``: compressive sensing, from simulated measurements or from your own.

Three sources of data:

- ``cs IMAGE -m M``: simulate ``y = A x (+ noise)`` with a built-in random operator (IMAGE is
  the ground truth; PSNR/SSIM are reported);
- ``cs --measurements-file y.npz``: a file written by ``--save-measurements`` (the operator is
  rebuilt from its description);
- ``cs --matrix A --measurements-file y [--shape HxW[xC]]``: your own matrix and measurements
  (``.npy``, ``.npz`` dense or ``scipy.sparse.save_npz``, MATLAB ``.mat`` up to v7, ``.txt``).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

import deepprior
from deepprior.api import check_noise_level

from .common import (
    FitOptions,
    check_size,
    epilog,
    error_funnel,
    fit_options,
    image_or_demo,
    measurement_sigma_from_cli,
    parse_shape,
)
from .fitting import Builder, Task, chw, default_output, image_bits, run_task

#: Side length of the bundled camera image when no IMAGE is given.
DEMO_SIZE = 64
#: Conventional names of the matrix and of the measurements in a container file.
MATRIX_NAMES = ("A", "matrix")
MEASUREMENT_NAMES = ("y", "measurements")
#: A dense Gaussian matrix up to this size for --operator auto.
AUTO_DENSE_BYTES = 64 * 2**20

EPILOG = epilog(
    "deepprior cs --measurements 500",
    "deepprior cs scene.png -m 4000 --operator fast --noise 30 --save-measurements y.npz",
    "deepprior cs --measurements-file y.npz",
    "deepprior cs --matrix A.mat --measurements-file y.txt --shape 64x48 --noise-sigma 0.01",
    units="Units: --noise is an SNR in dB; --noise-sigma is a std in the measurements' own "
    "units (not 0-255).",
)


Matrix = Annotated[
    Path | None,
    typer.Option("--matrix", help="Your sensing matrix A (m x n; .npy, .npz dense or "
                 "scipy.sparse.save_npz, .mat up to v7): y = A vec(x), vec over (C, H, W) "
                 "in C order. An A with n = H*W columns and y of shape (C, m) is applied "
                 "to each channel."),
]
Shape = Annotated[
    str | None,
    typer.Option("--shape", help="Image shape HxW or HxWxC for --matrix (optional when n "
                 "is a perfect square: a square grayscale image)."),
]
Key = Annotated[
    str | None,
    typer.Option("--key", help="Name of y in a measurements file holding several arrays "
                 "(default: the only one, else 'y' or 'measurements')."),
]
MatrixKey = Annotated[
    str | None,
    typer.Option("--matrix-key", help="Name of A in a --matrix file holding several "
                 "arrays (default: the only one, else 'A' or 'matrix')."),
]


@fit_options
def cs(
    image: Annotated[
        Path | None,
        typer.Argument(help="Ground-truth image to measure (simulation). Default: camera at "
                       "64x64."),
    ] = None,
    measurements: Annotated[
        int | None, typer.Option("--measurements", "-m", min=1,
                                 help="Number of simulated measurements m (per channel).")
    ] = None,
    operator_kind: Annotated[
        str,
        typer.Option("--operator", help="Simulated operator: gaussian (dense N(0,1/m) matrix), "
                     "fast (random signs, DCT, random rows) or auto (gaussian while the matrix "
                     "is small)."),
    ] = "auto",
    noise: Annotated[
        float | None,
        typer.Option("--noise", help="Simulation: add Gaussian noise to the measurements at "
                     "this SNR in dB (any number, 0 dB included)."),
    ] = None,
    noise_sigma: Annotated[
        float | None,
        typer.Option("--noise-sigma", help="Noise std in the measurements' own units: added to "
                     "simulated measurements; for given measurements, their known level (feeds "
                     "--stop discrepancy)."),
    ] = None,
    save_measurements: Annotated[
        Path | None,
        typer.Option("--save-measurements", help="Simulation: also write y, the operator and "
                     "(gaussian) the dense matrix under the key 'matrix' to this .npz."),
    ] = None,
    measurements_file: Annotated[
        Path | None,
        typer.Option("--measurements-file", help="Reconstruct from these measurements: a file "
                     "from --save-measurements, or with --matrix your own y (.npy, .npz, .mat, "
                     ".txt)."),
    ] = None,
    matrix: Matrix = None,
    shape: Shape = None,
    key: Key = None,
    matrix_key: MatrixKey = None,
    *,
    options: FitOptions,
) -> None:
    """Compressive sensing: recover an image from m < n linear measurements."""
    with error_funnel(options.debug):
        if measurements_file is None:
            task = _simulated(image, measurements, operator_kind, noise, noise_sigma,
                              save_measurements, given=(matrix, shape, key, matrix_key),
                              options=options)
        else:
            _refuse_simulation_options(image, measurements, operator_kind, noise,
                                       save_measurements)
            build = prepare_measurements(matrix, shape, key, matrix_key, noise_sigma, options)
            task = build(measurements_file, options.seed)
        run_task(task, options)


def prepare_measurements(matrix: Path | None, shape: str | None, key: str | None,
                         matrix_key: str | None, noise_sigma: float | None,
                         options: FitOptions) -> Builder:
    """Given measurements: check the options and read --matrix once; the builder makes the
    Task of one measurement file (``seed`` is unused: nothing is simulated).

    Without --matrix each file must be one written by --save-measurements (it describes its
    operator); files with the same description share one operator.
    """
    sigma = measurement_sigma_from_cli(noise_sigma, "--noise-sigma")
    operators: dict[Any, Any] = {}
    if matrix is None:
        if shape is not None or key is not None or matrix_key is not None:
            raise ValueError("--shape, --key and --matrix-key go with --matrix")

        def build_saved(path: Path, seed: int = 0, *, quiet: bool = False) -> Task:
            return _saved(path, sigma, operators)

        return build_saved
    array = _read_matrix(matrix, matrix_key)

    def build_given(path: Path, seed: int = 0, *, quiet: bool = False) -> Task:
        return _given(matrix, array, path, shape, key, sigma, operators,
                      replace(options, quiet=options.quiet or quiet))

    return build_given


# --------------------------------------------------------------------------- simulated


def _simulated(image, measurements, operator_kind, noise, noise_sigma, save_measurements, *,
               given: tuple, options: FitOptions) -> Task:
    if any(value is not None for value in given):
        raise ValueError("--matrix, --shape, --key and --matrix-key describe given "
                         "measurements: pass them with --measurements-file")
    if measurements is None:
        raise ValueError("--measurements M is required (or --measurements-file FILE)")
    if noise is not None and noise_sigma is not None:
        raise ValueError("give the simulated noise as --noise (SNR in dB) or --noise-sigma "
                         "(std), not both")
    if noise is not None and not math.isfinite(noise):
        raise ValueError(f"--noise must be a finite SNR in dB, got {noise}")
    std = measurement_sigma_from_cli(noise_sigma, "--noise-sigma")
    if save_measurements is not None and save_measurements.suffix.lower() != ".npz":
        raise ValueError(f"--save-measurements must end in .npz, got {save_measurements}")
    clean, source = image_or_demo(image, DEMO_SIZE, options.max_pixels)
    operator = _make_operator(operator_kind, measurements, clean, options.seed)
    y, sigma = deepprior.simulate_measurements(operator, clean, snr_db=noise, sigma=std,
                                               seed=options.seed)
    sigma = sigma or None
    extra = {}
    if save_measurements is not None:
        extra["measurements"] = (save_measurements, _measurement_writer(operator, y, sigma))
    c, h, w = operator.image_shape
    return Task(
        command="cs",
        observation=y,
        image_shape=clean.shape,
        default_output=default_output(image, "cs"),
        source=source,
        operator=operator,
        sigma=sigma,
        clean=clean,
        clean_from="cs IMAGE simulates the measurements from IMAGE, the clean image",
        inputs=(image,),
        bits=image_bits(image),
        headline=(f"reconstructing {source} ({h}x{w}x{c}) from {operator.num_measurements} "
                  f"measurements ({operator.describe()['kind']})"),
        report=_report(operator, snr_db=noise, sigma=sigma),
        summary=_summary(operator),
        extra_outputs=extra,
    )


def _make_operator(kind: str, m: int, clean: np.ndarray, seed: int):
    shape = chw(clean.shape)
    if kind not in ("auto", "gaussian", "fast"):
        raise ValueError(f"--operator must be gaussian, fast or auto, got {kind!r}")
    n = shape[1] * shape[2]  # a colour image is measured channel by channel
    if not 1 <= m <= n:  # said with the option's name, not the library's (num_measurements)
        per = ", measured per channel" if shape[0] > 1 else ""
        raise ValueError(f"-m/--measurements must be in [1, {n}], the image's {n} pixels "
                         f"({shape[1]}x{shape[2]}{per}), got {m}")
    if kind == "auto":
        kind = "gaussian" if 4 * m * shape[1] * shape[2] <= AUTO_DENSE_BYTES else "fast"
    if kind == "gaussian":
        return deepprior.GaussianSensing(m, shape, seed=seed)
    return deepprior.FastSensing(m, shape, seed=seed)


def _measurement_writer(operator, y: np.ndarray, sigma: float | None):
    """The writer of a --save-measurements file, prepared before the fit (which may move the
    operator to another device)."""
    arrays: dict[str, Any] = {
        "y": y,
        "operator": json.dumps(operator.describe()),
        "sigma": np.nan if sigma is None else sigma,
    }
    if isinstance(operator, deepprior.GaussianSensing):
        arrays["matrix"] = operator.matrix.cpu().numpy().astype(np.float32)  # (m, H*W)

    def write(handle) -> None:
        np.savez(handle, **arrays)

    return write


# --------------------------------------------------------------------------- given


def _refuse_simulation_options(image, measurements, operator_kind, noise, save) -> None:
    if image is not None or measurements is not None:
        raise ValueError("--measurements-file replaces IMAGE and --measurements; give one or "
                         "the other (the clean image for PSNR goes to --clean)")
    if operator_kind != "auto":
        raise ValueError("--operator chooses a simulated operator; with --measurements-file "
                         "the operator comes from the file or from --matrix")
    if noise is not None:
        raise ValueError("--noise simulates noise; for the noise level of given measurements "
                         "pass --noise-sigma (a std in their units)")
    if save is not None:
        raise ValueError("--save-measurements saves simulated measurements; with "
                         "--measurements-file they are saved already")


def _saved(path: Path, sigma: float | None, operators: dict[Any, Any]) -> Task:
    """A file written by --save-measurements: y, the operator's description, sigma."""
    y = deepprior.load_array(path, names=MEASUREMENT_NAMES, choose="--key NAME")
    npz = path.suffix.lower() == ".npz"
    description, saved_sigma = _description(path) if npz else (None, None)
    if description is None:
        raise ValueError(f"{path} holds no operator description (it was not written by "
                         "--save-measurements); pass your sensing matrix with --matrix A.npy")
    described = json.dumps(description, sort_keys=True)
    if described not in operators:
        operators[described] = deepprior.operator_from_description(description)
    operator = operators[described]
    if sigma is not None:  # --noise-sigma: the library's check, with the option's name
        check_noise_level(sigma, operator, y, "compressive_sensing", option="--noise-sigma")
    sigma = saved_sigma if sigma is None else sigma
    c, h, w = operator.image_shape
    return Task(
        command="cs",
        observation=np.asarray(y, dtype=np.float32),
        image_shape=(h, w) if c == 1 else (h, w, c),
        default_output=default_output(path, "cs"),
        source=str(path),
        operator=operator,
        sigma=sigma,
        inputs=(path,),
        bits=32,  # float measurements: no 8-bit image behind them
        headline=(f"reconstructing {h}x{w}x{c} from {operator.num_measurements} measurements "
                  f"in {path} ({description.get('kind')})"),
        report=_report(operator, snr_db=None, sigma=sigma),
        summary=_summary(operator),
    )


def _description(path: Path) -> tuple[dict | None, float | None]:
    try:
        with np.load(path, allow_pickle=False) as data:
            if "operator" not in data.files:
                return None, None
            description = json.loads(str(data["operator"]))
            sigma = float(data["sigma"]) if "sigma" in data.files else math.nan
    except (OSError, ValueError, TypeError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: the operator description could not be read ({exc})") from None
    if not isinstance(description, dict):
        raise ValueError(f"{path}: the operator description is not a JSON object")
    return description, None if math.isnan(sigma) else sigma


def _read_matrix(matrix_path: Path, matrix_key: str | None):
    """--matrix: a 2-D dense or sparse matrix."""
    if matrix_key is None and matrix_path.suffix.lower() == ".npz":
        description = None
        with contextlib.suppress(ValueError):  # unreadable, or an "operator" of your own
            description = _description(matrix_path)[0]
        if description is not None:  # a Gaussian's saved file holds its matrix, a fast one's not
            with np.load(matrix_path, allow_pickle=False) as data:
                if not set(MATRIX_NAMES) & set(data.files):
                    raise ValueError(f"--matrix {matrix_path} was written by --save-measurements:"
                                     " it describes its operator and holds no matrix; pass it "
                                     f"alone, --measurements-file {matrix_path}")
    matrix = deepprior.load_array(matrix_path, key=matrix_key, names=MATRIX_NAMES,
                                  choose="--matrix-key NAME")
    if matrix.ndim != 2:
        raise ValueError(f"--matrix {matrix_path}: the matrix must be 2-D (m x n), got shape "
                         f"{matrix.shape}")
    return matrix


def _given(matrix_path: Path, matrix, y_path: Path, shape: str | None, key: str | None,
           sigma: float | None, operators: dict[Any, Any], options: FitOptions) -> Task:
    """Your own matrix and measurements, checked against each other and --shape."""
    y = deepprior.load_array(y_path, key=key, names=MEASUREMENT_NAMES, choose="--key NAME")
    from_option = sigma is not None  # --noise-sigma, checked against y below
    if sigma is None and y_path.suffix.lower() == ".npz":  # a --save-measurements file's σ
        with contextlib.suppress(ValueError):  # your own file's "operator" entry: not ours
            sigma = _description(y_path)[1]
    if not isinstance(y, np.ndarray):
        raise ValueError(f"the measurement file {y_path}: y is a sparse matrix; save it as a "
                         "dense vector")
    m, n = matrix.shape
    per_channel = y.size != m and y.ndim == 2 and y.shape[0] == 3 and y.shape[1] == m
    if y.size != m and not per_channel:
        raise ValueError(f"--matrix {matrix_path} has {m} rows but the measurement file {y_path} "
                         f"holds {y.size} measurements (shape {y.shape}); they must be equal "
                         "(or y of shape (3, m) for a colour image measured channel by channel)")
    channels, height, width = _image_shape(shape, n, per_channel)
    pixels = height * width * (1 if per_channel else channels)
    if pixels != n:
        raise ValueError(f"--matrix {matrix_path} has {n} columns but --shape {shape} has "
                         f"{pixels} pixels{' per channel' if per_channel else ''} (H*W"
                         f"{'' if per_channel else '*C'}); they must be equal")
    notes = [f"y has shape {y.shape}: A is applied to each of the 3 channels"] \
        if per_channel else []
    if m >= n:
        notes.append(f"--matrix {matrix_path} has {m} rows for {n} pixels, not fewer: this is "
                     "not compressive sensing, and the defaults are those of a generic linear "
                     "problem (the Deep Decoder, a hold-out stop)")
    if (channels, height, width, per_channel) not in operators:
        operators[channels, height, width, per_channel] = deepprior.as_operator(
            matrix, (channels, height, width))  # n = H*W: applied to each channel
    operator = operators[channels, height, width, per_channel]
    if from_option:  # the library's check, with the option's name
        check_noise_level(sigma, operator, y, "compressive_sensing", option="--noise-sigma")
    image_shape = (height, width) if channels == 1 else (height, width, channels)
    return Task(
        command="cs",
        observation=np.asarray(y, dtype=np.float32).reshape(-1),
        image_shape=image_shape,
        default_output=default_output(y_path, "cs"),
        source=f"{matrix_path} and {y_path}",
        operator=operator,
        sigma=sigma,
        inputs=(matrix_path, y_path),
        bits=32,  # float measurements: no 8-bit image behind them
        headline=(f"reconstructing {height}x{width}x{channels} from {y.size} measurements "
                  f"({y_path}) with the {m}x{n} matrix {matrix_path}"),
        notes=tuple(notes),
        report={**_report(operator, snr_db=None, sigma=sigma),
                "matrix": str(matrix_path), "measurements_file": str(y_path)},
        summary=_summary(operator),
    )


def _image_shape(shape: str | None, n: int, per_channel: bool) -> tuple[int, int, int]:
    channels = 3 if per_channel else 1
    if shape is not None:
        c, h, w = parse_shape(shape)
        if per_channel and c != 3 and len(re.split(r"[xX,]", shape)) == 3:  # HxWx1
            raise ValueError(f"y of shape (3, m) measures a colour image channel by channel, "
                             f"and --shape {shape} says {c} channel(s): give --shape {h}x{w} "
                             f"or {h}x{w}x3")
        return channels if per_channel else c, h, w
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"the matrix has n = {n} columns, not a square image; pass --shape HxW "
                         "(or HxWx3) with H*W(*C) = n")
    check_size((side, side), f"the image of the matrix's n = {n} columns")  # as --shape is
    return channels, side, side


# --------------------------------------------------------------------------- report


def _report(operator, *, snr_db: float | None, sigma: float | None) -> dict[str, Any]:
    c, h, w = operator.image_shape
    return {
        "num_measurements": operator.num_measurements,
        "num_pixels": c * h * w,
        "measurement_snr_db": snr_db,
        "measurement_noise_sigma": sigma,
    }


def _summary(operator):
    c, h, w = operator.image_shape
    ratio = operator.num_measurements / (c * h * w)

    def summary(result, report: dict) -> str:
        if result.psnr is None:
            return f"m/n = {ratio:.3f}; returned iteration {result.num_iter}"
        return (f"m/n = {ratio:.3f}: PSNR {result.psnr:.2f} dB, SSIM {result.ssim:.3f}, "
                f"iteration {result.num_iter}")

    return summary
