"""Pieces every command shares: option types, the error funnel and unit conversion."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

import deepprior

KNOWN_ERRORS = (ValueError, TypeError, OSError, KeyError)

Net = Annotated[
    str,
    typer.Option("--net", help=f"Network: {', '.join(deepprior.available_nets())} "
                 "(and any registered with deepprior.register_net)."),
]
Norm = Annotated[str, typer.Option("--norm", help="Normalization: channel, batch or none.")]
Iters = Annotated[
    int | None, typer.Option("--iters", min=1, help="Maximum iterations (default: per network).")
]
Lr = Annotated[
    float | None, typer.Option("--lr", help="Adam learning rate (default: per network).")
]
Stop = Annotated[
    str,
    typer.Option(
        "--stop",
        help="Stopping rule: auto, wmv, emv, discrepancy, holdout, patience, fixed:N, oracle, "
        "with parameters as in wmv:window=100,patience=1000; join rules with '+'.",
    ),
]
Seed = Annotated[int, typer.Option("--seed", min=0, help="Seed of everything random.")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.")]
Output = Annotated[
    Path | None, typer.Option("--output", "-o", help="Output image (.png, .tif, .npy).")
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print the JSON report to stdout.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")]
Width = Annotated[
    int | None, typer.Option("--channels", min=1, help="Network width k (default: per network).")
]


@contextlib.contextmanager
def error_funnel(debug: bool) -> Iterator[None]:
    """Known errors → ``error: …`` on stderr and exit 1; tracebacks only with --debug."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning
            yield
    except typer.Exit:
        raise
    except KNOWN_ERRORS as exc:
        if debug:
            raise
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, KeyError):
            message = f"missing entry {message}"
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(code=1) from None


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    typer.echo(f"warning: {message}", err=True)


def sigma_from_cli(value: float | None, option: str) -> float | None:
    """0–255 units from the command line → the library's [0, 1] scale."""
    if value is None:
        return None
    if value < 0:
        raise ValueError(f"{option} must be >= 0 (in 0-255 units), got {value}")
    if 0 < value < 1:
        warnings.warn(
            f"{option} {value} is in 0-255 units, so this is very weak noise; "
            f"did you mean {option} {value * 255:.3g}?",
            UserWarning,
            stacklevel=2,
        )
    return value / 255.0




def image_or_demo(image: Path | None, demo_size: int) -> tuple[np.ndarray, str]:
    """The image at ``image``, or the bundled camera image at ``demo_size`` when none is given.

    Returns the image and a line saying where it came from (for the report).
    """
    if image is None:
        clean = deepprior.sample_image("camera", size=demo_size)
        return clean, f"sample image camera resized to {demo_size}x{demo_size}"
    return deepprior.load_image(image), str(image)
