"""The ``deepprior`` command: thin commands over the public deepprior API.

Every command funnels known errors to one line ``error: …`` on stderr with exit code 1
(``--debug`` shows the traceback); typer's own validation exits with 2.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

import deepprior

from .common import (
    Debug,
    Device,
    Iters,
    JsonOut,
    Lr,
    Net,
    Norm,
    Output,
    Overwrite,
    Quiet,
    Seed,
    Stop,
    Width,
    error_funnel,
    image_or_demo,
    sigma_from_cli,
)
from .outputs import Outputs, build_report

app = typer.Typer(
    name="deepprior",
    help="Recover an image from one corrupted observation with an untrained neural network.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

#: Side length the bundled camera image is resized to for the argument-free demos.
DENOISE_DEMO_SIZE = 128
CS_DEMO_SIZE = 64


def _version(value: bool) -> None:
    if value:
        typer.echo(f"deepprior {deepprior.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Recover an image from one corrupted observation with an untrained neural network."""


def _fit(
    observation,
    operator,
    *,
    net: str,
    norm: str,
    iters: int | None,
    lr: float | None,
    stop: str,
    sigma: float | None,
    ground_truth,
    seed: int,
    device: str,
    quiet: bool,
    channels: int | None,
):
    return deepprior.reconstruct(
        observation,
        operator,
        net=net,
        norm=norm,
        max_num_iter=iters,
        learning_rate=lr,
        stop=stop,
        sigma=sigma,
        ground_truth=ground_truth,
        seed=seed,
        device=device,
        progress=not quiet,
        net_options={"channels": channels} if channels else None,
    )


def _finish(
    result,
    outputs: Outputs,
    report: dict,
    *,
    quiet: bool,
    as_json: bool,
    summary: Callable[[], str],
) -> None:
    outputs.write(result.image, report, result)
    if as_json:
        typer.echo(json.dumps(json.loads(outputs.report.read_text()), indent=2))
    elif not quiet:
        typer.echo(summary())
        typer.echo(f"stopped: {result.stop_reason}")
        typer.echo(
            f"time: {result.elapsed:.1f} s for {result.num_steps} iterations on {result.device}"
        )
        typer.echo(f"wrote {outputs.image}, {outputs.report.name}, {outputs.plot.name}")


def _default_output(image: Path | None, demo_name: str, suffix: str) -> Path:
    if image is None:
        return Path(f"{demo_name}_{suffix}.png")
    return image.with_name(f"{image.stem}_{suffix}.png")


# --------------------------------------------------------------------------- denoise


@app.command()
def denoise(
    image: Annotated[
        Path | None,
        typer.Argument(help="Noisy image (PNG, TIFF, JPEG, .npy). Default: a noisy demo image."),
    ] = None,
    sigma: Annotated[
        float | None,
        typer.Option("--sigma", help="Known noise std in 0-255 units (estimated when omitted)."),
    ] = None,
    add_noise: Annotated[
        float | None,
        typer.Option(
            "--add-noise",
            help="Treat IMAGE as clean: add Gaussian noise of this std (0-255 units) and "
            "report PSNR/SSIM against it.",
        ),
    ] = None,
    net: Net = "deep_decoder",
    norm: Norm = "channel",
    channels: Width = None,
    iters: Iters = None,
    lr: Lr = None,
    stop: Stop = "auto",
    seed: Seed = 0,
    device: Device = "auto",
    output: Output = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    as_json: JsonOut = False,
    debug: Debug = False,
) -> None:
    """Denoise a photo: a noisy image in, a clean one out."""
    quiet = quiet or as_json
    with error_funnel(debug):
        noise_sigma = sigma_from_cli(add_noise, "--add-noise")
        known_sigma = sigma_from_cli(sigma, "--sigma")
        loaded, source = image_or_demo(image, DENOISE_DEMO_SIZE)
        if image is None:
            noise_sigma = 25 / 255 if noise_sigma is None else noise_sigma
        clean = loaded if noise_sigma is not None else None
        outputs = Outputs(output or _default_output(image, "camera", "denoised"),
                          overwrite=overwrite)
        if clean is not None:
            noisy = deepprior.add_gaussian_noise(clean, noise_sigma, seed=seed)
            known_sigma = noise_sigma if known_sigma is None else known_sigma
        else:
            noisy = loaded
        if known_sigma is None:
            known_sigma = deepprior.estimate_sigma(noisy)
            if not quiet:
                typer.echo(f"estimated noise level: sigma = {known_sigma * 255:.1f} (0-255 units)")
        if not quiet:
            typer.echo(f"denoising {source} ({_shape_text(noisy)}) with {net}, norm={norm}")
        result = _fit(
            noisy, None, net=net, norm=norm, iters=iters, lr=lr, stop=stop,
            sigma=known_sigma, ground_truth=clean, seed=seed, device=device, quiet=quiet,
            channels=channels,
        )
        noisy_psnr = deepprior.psnr(clean, np.clip(noisy, 0, 1)) if clean is not None else None
        report = build_report(result, extra={
            "command": "denoise",
            "input": source,
            "simulated_noise_sigma_255": None if clean is None else noise_sigma * 255,
            "sigma_255": known_sigma * 255,
            "noisy_psnr": noisy_psnr,
        })

        def summary() -> str:
            if result.psnr is None:
                return f"returned iteration {result.num_iter}"
            return (f"PSNR {noisy_psnr:.2f} dB (noisy) -> {result.psnr:.2f} dB "
                    f"(+{result.psnr - noisy_psnr:.2f} dB), SSIM {result.ssim:.3f}, "
                    f"iteration {result.num_iter}")

        _finish(result, outputs, report, quiet=quiet, as_json=as_json, summary=summary)


# --------------------------------------------------------------------------- cs


@app.command()
def cs(
    image: Annotated[
        Path | None,
        typer.Argument(help="Ground-truth image to measure. Default: camera at 64x64."),
    ] = None,
    measurements: Annotated[
        int | None, typer.Option("--measurements", "-m", min=1, help="Number of measurements m.")
    ] = None,
    operator_kind: Annotated[
        str,
        typer.Option(
            "--operator",
            help="gaussian (dense N(0,1/m) matrix), fast (random signs, DCT, random rows) or "
            "auto (gaussian while the matrix is small).",
        ),
    ] = "auto",
    noise: Annotated[
        float | None,
        typer.Option("--noise", help="Add Gaussian noise to the measurements at this SNR in dB."),
    ] = None,
    save_measurements: Annotated[
        Path | None,
        typer.Option("--save-measurements", help="Write y and the operator to this .npz file."),
    ] = None,
    measurements_file: Annotated[
        Path | None,
        typer.Option(
            "--measurements-file",
            help="Reconstruct from measurements saved with --save-measurements (no ground truth).",
        ),
    ] = None,
    net: Net = "deep_decoder",
    norm: Norm = "channel",
    channels: Width = None,
    iters: Iters = None,
    lr: Lr = None,
    stop: Stop = "auto",
    seed: Seed = 0,
    device: Device = "auto",
    output: Output = None,
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    as_json: JsonOut = False,
    debug: Debug = False,
) -> None:
    """Compressive sensing: recover an image from m < n random linear measurements."""
    quiet = quiet or as_json
    with error_funnel(debug):
        sigma = None
        if measurements_file is not None:
            if image is not None or measurements is not None:
                raise ValueError("--measurements-file replaces IMAGE and --measurements; "
                                 "give one or the other")
            operator, y, sigma = _load_measurements(measurements_file)
            clean, source = None, str(measurements_file)
            name_source = measurements_file
        else:
            if measurements is None:
                raise ValueError("--measurements M is required (or --measurements-file FILE)")
            clean, source = image_or_demo(image, CS_DEMO_SIZE)
            name_source = image
            operator = _make_operator(operator_kind, measurements, clean, seed)
            y, sigma = deepprior.simulate_measurements(operator, clean, snr_db=noise, seed=seed)
            sigma = sigma or None
        outputs = Outputs(output or _default_output(name_source, "camera", "cs"),
                          overwrite=overwrite)
        if save_measurements is not None:
            _save_measurements(save_measurements, operator, y, sigma, overwrite)
        c, h, w = operator.image_shape
        if not quiet:
            typer.echo(f"reconstructing {source} ({h}x{w}x{c}) from "
                       f"{operator.num_measurements} measurements "
                       f"({operator.describe()['kind']}) with {net}, norm={norm}")
        result = _fit(
            y, operator, net=net, norm=norm, iters=iters, lr=lr, stop=stop, sigma=sigma,
            ground_truth=clean, seed=seed, device=device, quiet=quiet, channels=channels,
        )
        report = build_report(result, extra={
            "command": "cs",
            "input": source,
            "num_measurements": operator.num_measurements,
            "num_pixels": c * h * w,
            "measurement_snr_db": noise,
            "measurement_noise_sigma": sigma,
        })

        def summary() -> str:
            ratio = operator.num_measurements / (c * h * w)
            if result.psnr is None:
                return f"m/n = {ratio:.3f}; returned iteration {result.num_iter}"
            return (f"m/n = {ratio:.3f}: PSNR {result.psnr:.2f} dB, SSIM {result.ssim:.3f}, "
                    f"iteration {result.num_iter}")

        _finish(result, outputs, report, quiet=quiet, as_json=as_json, summary=summary)


def _make_operator(kind: str, m: int, clean: np.ndarray, seed: int):
    shape = (1, *clean.shape) if clean.ndim == 2 else (clean.shape[2], *clean.shape[:2])
    if kind not in ("auto", "gaussian", "fast"):
        raise ValueError(f"--operator must be gaussian, fast or auto, got {kind!r}")
    if kind == "auto":
        dense_bytes = 4 * m * shape[1] * shape[2]
        kind = "gaussian" if dense_bytes <= 64 * 2**20 else "fast"
    if kind == "gaussian":
        return deepprior.GaussianSensing(m, shape, seed=seed)
    return deepprior.FastSensing(m, shape, seed=seed)


def _save_measurements(path: Path, operator, y: np.ndarray, sigma, overwrite: bool) -> None:
    if path.suffix != ".npz":
        raise ValueError(f"--save-measurements must end in .npz, got {path}")
    description = json.dumps(operator.describe())

    def write(handle) -> None:
        np.savez(handle, y=y, operator=description, sigma=np.nan if sigma is None else sigma)

    deepprior.write_atomic(path, write, overwrite=overwrite)


def _load_measurements(path: Path):
    if not path.is_file():
        raise ValueError(f"measurements file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            y = data["y"]
            description = json.loads(str(data["operator"]))
            sigma = float(data["sigma"]) if "sigma" in data else float("nan")
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{path} is not a measurements file written by --save-measurements "
                         f"({exc})") from None
    operator = deepprior.operator_from_description(description)
    return operator, y, None if np.isnan(sigma) else sigma


def _shape_text(image: np.ndarray) -> str:
    return "x".join(str(s) for s in image.shape)


from .analyze import analyze  # noqa: E402

app.command()(analyze)
