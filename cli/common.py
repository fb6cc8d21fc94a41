"""Pieces every command shares: the fitting options (defined once), the error funnel, exit
codes, unit conversion and small input helpers."""

from __future__ import annotations

import contextlib
import enum
import functools
import inspect
import math
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer

import deepprior

KNOWN_ERRORS = (ValueError, TypeError, OSError, KeyError)

#: Exit codes: documented in ``deepprior --help`` and on every fitting command's help.
EXIT_ERROR = 1  # a known error: one line "error: ..." on stderr, nothing written
EXIT_USAGE = 2  # typer's own validation of the command line
EXIT_DIVERGED = 3  # the fit diverged: outputs hold the last good iterate, a warning says so
EXIT_INTERRUPTED = 130  # Ctrl-C: best iterate so far written (during a fit) or nothing
EXIT_CODES = (
    "Exit codes: 0 done; 1 error (one line on stderr, nothing written; a value checked after "
    "parsing, e.g. --lr 0, is one); 2 the command line does not parse (an unknown option, a value "
    "of the wrong type, below an option's minimum, e.g. --iters 0, or not among its choices); 3 "
    "the fit diverged (outputs hold the "
    "last good iterate, a warning says so); 130 interrupted by Ctrl-C (during a fit: the best "
    "iterate so far is written)."
)
#: Smallest image side any built-in network reconstructs ...
MIN_SIDE = 4
#: ... and ConvDecoder's, whose default input grid is 8x8 (no CLI option changes it).
CONV_DECODER_MIN_SIDE = 8
#: load_image's default pixel limit.
MAX_PIXELS = 64_000_000

FIT_PANEL = "Fitting and output options (every command)"

def _load_plugins() -> None:
    """Networks other packages register for the command line: entry points of the group
    ``deepprior.nets``, each ``name = package.module:factory`` (see deepprior.register_net)."""
    from importlib.metadata import entry_points

    for entry in entry_points(group="deepprior.nets"):
        try:
            if entry.name in (*deepprior.nets.BUILT_IN, "skip"):
                raise ValueError("a built-in network has that name")
            deepprior.register_net(entry.name, entry.load(), replace=True)
        except Exception as exc:  # a broken plugin must not break the command
            typer.echo(f"warning: network plugin {entry.name!r} ({entry.value}) was not "
                       f"loaded: {exc}", err=True)


_load_plugins()


def _check_net(value: str | None) -> str | None:
    """--net: a network registered now (built-in, plugin, or registered by the caller)."""
    if value is not None and value not in deepprior.available_nets() and value != "skip":
        raise typer.BadParameter(f"{value!r} is not one of "
                                 f"{', '.join(map(repr, deepprior.available_nets()))}")
    return value


def choices_enum(name: str, values) -> type[enum.Enum]:
    """A string enum of the values, as typer shows choices."""
    return enum.Enum(name, {value: value for value in values}, type=str)


NormName = choices_enum("NormName", deepprior.NORMS)
Net = Annotated[
    str | None,
    typer.Option("--net", callback=_check_net, metavar="NET",
                 help=f"Network: {', '.join(deepprior.available_nets())}, or one registered "
                 "with deepprior.register_net or by a package's 'deepprior.nets' entry point "
                 "(deep_decoder: Heckel & Hand 2019; dip: Ulyanov et al. 2018; conv_decoder: "
                 "Darestani & Heckel 2021). Default: per problem, dip for denoise and cs "
                 "(better; on a CPU about 3-8x slower per fit when denoising, at 64 channels, "
                 "9-24x in cs, at 128; cs with fewer measurements than pixels), "
                 "deep_decoder for the others.",
                 show_default=False, rich_help_panel=FIT_PANEL),
]
Norm = Annotated[NormName, typer.Option("--norm", help="Normalization after each layer.",
                                        rich_help_panel=FIT_PANEL)]
RegularizerName = choices_enum("RegularizerName", ("default", "none", "tv", "auto", "mix"))
Regularizer = Annotated[
    RegularizerName, typer.Option("--regularizer", help="A penalty added to the loss: tv "
                                  "(total variation; helps piecewise-smooth images, see the "
                                  "README), auto (tv or none, whichever predicts 10% held-out "
                                  "pixels/measurements better, averaged with a fit to all "
                                  "the data, and with the other's fit where the held-out "
                                  "data cannot tell them apart: three fits; four in "
                                  "compressive sensing without σ), mix (the average of a "
                                  "fit without and one with tv; --ensemble K: K fits taking "
                                  "turns), none, or default: mix for dip when denoising "
                                  "with the automatic stop; for "
                                  "dip in cs tv when the noise level is given, auto when it "
                                  "is not (with the automatic stop); else none (measured, "
                                  "see the README).",
                                  rich_help_panel=FIT_PANEL)
]
RegularizerWeight = Annotated[
    float | None, typer.Option("--regularizer-weight", min=0.0, metavar="W", help="Its weight "
                               "(default when denoising and in compressive sensing: "
                               "proportional to the noise level; in compressive sensing "
                               "without it, two weights chosen on held-out measurements).",
                               rich_help_panel=FIT_PANEL)
]
PrecisionName = choices_enum("PrecisionName", deepprior.PRECISIONS)
Precision = Annotated[
    PrecisionName, typer.Option("--precision", help="bf16: the network in bfloat16 mixed "
                                "precision (faster on CPUs with AMX and recent GPUs, above all "
                                "for dip; see the README).", rich_help_panel=FIT_PANEL)
]
Iters = Annotated[
    int | None, typer.Option("--iters", min=1, help="Maximum iterations (default: per network; "
                             "DIP's denoising budget grows with the image beyond 128²).",
                             rich_help_panel=FIT_PANEL)
]
Lr = Annotated[
    float | None, typer.Option("--lr", help="Adam learning rate > 0 (default: per network).",
                               rich_help_panel=FIT_PANEL)
]
LrDecay = Annotated[
    str | None, typer.Option("--lr-decay", metavar="FACTOR,EVERY", help="Multiply the learning "
                             "rate by FACTOR (0 < FACTOR <= 1) every EVERY iterations, e.g. "
                             "0.5,1500; none: a constant rate (default: per network; constant "
                             "for every built-in one).", rich_help_panel=FIT_PANEL)
]
Stop = Annotated[
    str,
    typer.Option(
        "--stop",
        help="Stopping rule: auto, wmv, emv, discrepancy, holdout, patience, fixed:N, oracle, "
        "with parameters as in wmv:window=100,patience=1000; join rules with '+'.",
        rich_help_panel=FIT_PANEL,
    ),
]
Seed = Annotated[int, typer.Option("--seed", min=0, help="Seed of everything random.",
                                   rich_help_panel=FIT_PANEL)]
Device = Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N or mps.",
                                     rich_help_panel=FIT_PANEL)]
Output = Annotated[
    Path | None,
    typer.Option("--output", "-o", help="Output image (.png, .tif, .jpg, .npy; 16 bits in a "
                 "TIFF or grey PNG when the input has more than 8); the report and the plot go "
                 "next to it (NAME.json, NAME_curve.png).", rich_help_panel=FIT_PANEL),
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace existing outputs (never "
                                         "the input).", rich_help_panel=FIT_PANEL)]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar, summary or notes "
                                     "(warnings still go to stderr).", rich_help_panel=FIT_PANEL)]
JsonOut = Annotated[bool, typer.Option("--json", help="Print the JSON report to stdout (implies "
                                       "--quiet).", rich_help_panel=FIT_PANEL)]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.",
                                     rich_help_panel=FIT_PANEL)]
Width = Annotated[
    int | None, typer.Option("--channels", min=1, help="Network width k (default: per network).",
                             rich_help_panel=FIT_PANEL)
]
MaxPixels = Annotated[
    int, typer.Option("--max-pixels", min=1, help="Refuse input images with more pixels (H*W).",
                      rich_help_panel=FIT_PANEL)
]
Clean = Annotated[
    Path | None,
    typer.Option("--clean", help="The clean image, for PSNR/SSIM (and --stop oracle) when the "
                 "input is already corrupted.", rich_help_panel=FIT_PANEL),
]
Ensemble = Annotated[
    int | None, typer.Option(
        "--ensemble", min=1, metavar="K", help="Fit K networks (seeds SEED to SEED+K-1; "
        "denoising: also the 8 flips/rotations of the image) and return their average; costs "
        "K fits. With a hold-out stop, fits 2..K use all the data, to the iteration the first "
        "chose. Default: 1, except for DIP: denoising 2 (--regularizer mix: one fit without "
        "and one with TV); compressive sensing without σ, the held-out fit --regularizer auto "
        "chose (with any near-tied weight's) and 1 refit of all the measurements, averaged.",
        rich_help_panel=FIT_PANEL)
]
Threads = Annotated[
    int | None, typer.Option("--threads", min=1, metavar="N", help="Torch CPU threads for the "
                             "fit (default: torch's own choice).", rich_help_panel=FIT_PANEL)
]

BATCH_PANEL = "Fitting and output options (every batch task)"

#: The options of ``deepprior batch TASK`` that differ from the single-image commands'.
OutputFolder = Annotated[
    Path, typer.Option("--output", "-o", metavar="OUTDIR", help="Output folder: NAME.EXT, "
                       "NAME.json and NAME_curve.png per input (NAME: its file name without "
                       "suffix), summary.csv and summary.json.", rich_help_panel=BATCH_PANEL)
]
CleanFolder = Annotated[
    Path | None,
    typer.Option("--clean", metavar="DIR", help="Folder of clean images, matched by name "
                 "(DIR/NAME.*): PSNR/SSIM per image (and --stop oracle).",
                 rich_help_panel=BATCH_PANEL),
]
SummaryJson = Annotated[bool, typer.Option("--json", help="Print the summary JSON to stdout "
                                           "(implies --quiet).", rich_help_panel=BATCH_PANEL)]
ThreadsPerFit = Annotated[
    int | None, typer.Option("--threads", min=1, metavar="N", help="Torch CPU threads per fit "
                             "(default 1; the CPUs a Ray task asks for).",
                             rich_help_panel=BATCH_PANEL)
]


@dataclass(frozen=True)
class FitOptions:
    """The options every fitting command takes, as one object."""

    net: str | None = None  # None: the problem kind's default (deepprior.DEFAULT_NETS)
    norm: str = "channel"
    channels: int | None = None
    iters: int | None = None
    lr: float | None = None
    lr_decay: str | None = None  # "FACTOR,EVERY" or "none"; None: the default
    stop: str = "auto"
    seed: int = 0
    device: str = "auto"
    output: Path | None = None
    overwrite: bool = False
    quiet: bool = False
    json: bool = False
    debug: bool = False
    max_pixels: int = MAX_PIXELS
    clean: Path | None = None
    ensemble: int | None = None
    threads: int | None = None
    precision: str = "fp32"
    regularizer: str = "default"
    regularizer_weight: float | None = None

    @property
    def silent(self) -> bool:
        """No progress bar, summary or notes (``--quiet`` or ``--json``)."""
        return self.quiet or self.json


#: Each FitOptions field: its command-line annotation (the defaults are FitOptions').
_ANNOTATIONS: dict[str, Any] = {
    "net": Net, "norm": Norm, "channels": Width, "iters": Iters, "lr": Lr,
    "lr_decay": LrDecay, "stop": Stop,
    "seed": Seed, "device": Device, "output": Output, "overwrite": Overwrite, "quiet": Quiet,
    "json": JsonOut, "debug": Debug, "max_pixels": MaxPixels, "clean": Clean,
    "ensemble": Ensemble, "threads": Threads, "precision": Precision,
    "regularizer": Regularizer, "regularizer_weight": RegularizerWeight,
}
#: Defaults typer needs as enum members.
_CLI_DEFAULTS: dict[str, Any] = {"net": None, "norm": NormName("channel"),
                                 "precision": PrecisionName("fp32"),
                                 "regularizer": RegularizerName("default")}
#: ``deepprior batch TASK``: -o is a folder (required), --clean a folder, --threads per fit;
#: --overwrite is left out (batch has --force).
_BATCH_ANNOTATIONS: dict[str, Any] = {
    **{name: annotation for name, annotation in _ANNOTATIONS.items() if name != "overwrite"},
    "output": OutputFolder, "clean": CleanFolder, "threads": ThreadsPerFit, "json": SummaryJson,
}
_REQUIRED = inspect.Parameter.empty


def option_group(cls: type, keyword: str, annotations: dict[str, Any], *,
                 defaults: dict[str, Any] | None = None) -> Callable[[Callable], Callable]:
    """A decorator adding the fields of the dataclass ``cls`` named in ``annotations`` to a
    command as options; the command receives them as one ``cls`` in the keyword ``keyword``.

    The command declares its own parameters and ``keyword``; the decorator publishes a
    signature with the options appended (typer reads the signature). Fields left out of
    ``annotations`` keep their dataclass defaults; ``defaults`` overrides the published ones
    (``inspect.Parameter.empty``: a required option). Decorators stack.
    """
    names = list(annotations)
    prefix = f"{keyword}_"
    defaults = {**{f.name: f.default for f in fields(cls)}, **_CLI_DEFAULTS, **(defaults or {})}

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != keyword]
        added = [inspect.Parameter(prefix + name, inspect.Parameter.KEYWORD_ONLY,
                                   default=defaults[name], annotation=annotations[name])
                 for name in names]

        @functools.wraps(command)
        def wrapper(**kwargs: Any) -> None:
            values = {name: kwargs.pop(prefix + name) for name in names}
            values = {k: v.value if isinstance(v, enum.Enum) else v for k, v in values.items()}
            return command(**kwargs, **{keyword: cls(**values)})

        del wrapper.__wrapped__  # typer must see the published signature, not the command's
        wrapper.__signature__ = signature.replace(parameters=[*own, *added])  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in [*own, *added]}
        return wrapper

    return decorate


#: Add the shared fitting options to a command; it receives them as ``options: FitOptions``.
fit_options = option_group(FitOptions, "options", _ANNOTATIONS)
#: The same for a ``deepprior batch`` task (-o OUTDIR required, --clean DIR, no --overwrite).
batch_fit_options = option_group(FitOptions, "options", _BATCH_ANNOTATIONS,
                                 defaults={"output": _REQUIRED})


# --------------------------------------------------------------------------- errors


@contextlib.contextmanager
def error_funnel(debug: bool) -> Iterator[None]:
    """Known errors → ``error: …`` on stderr and exit 1; Ctrl-C → one line and exit 130.

    Tracebacks only with ``--debug``; warnings are printed as ``warning: …``, each text once
    (the library builds a network per fit, and any filter change resets Python's own record).
    """
    shown: set[str] = set()

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        if str(message) not in shown:
            shown.add(str(message))
            typer.echo(f"warning: {cli_words(str(message))}", err=True)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = show_warning
            yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        if debug:
            raise
        typer.echo("interrupted (Ctrl-C); nothing was written", err=True)
        raise typer.Exit(code=EXIT_INTERRUPTED) from None
    except KNOWN_ERRORS as exc:
        if debug:
            raise
        typer.echo(f"error: {one_line(exc)}", err=True)
        raise typer.Exit(code=EXIT_ERROR) from None
    except (MemoryError, RuntimeError) as exc:  # torch's allocators say so in a RuntimeError
        if debug or not isinstance(exc, MemoryError | torch.OutOfMemoryError) and \
                "allocate" not in str(exc):
            raise
        typer.echo(f"error: out of memory ({one_line(exc)}); try a smaller image, "
                   "--channels or --device cpu", err=True)
        raise typer.Exit(code=EXIT_ERROR) from None


def one_line(exc: BaseException) -> str:
    """The first line of an error's message (its type's name when it has none), in the
    command line's words (:func:`cli_words`)."""
    text = str(exc).strip()
    message = text.splitlines()[0] if text else type(exc).__name__
    if isinstance(exc, KeyError):
        message = f"missing entry {message}"
    return cli_words(message)


#: reconstruct's arguments that the library's messages name, and the options that set them.
_OPTIONS = {"max_num_iter": "--iters", "stop": "--stop", "regularizer": "--regularizer",
            "regularizer_weight": "--regularizer-weight", "ensemble": "--ensemble",
            "learning_rate": "--lr", "precision": "--precision"}
_ARGUMENT = re.compile(r"(?<![\w.-])(" + "|".join(_OPTIONS) + r")=('[^']*'|[^\s,;:)]+)")


def cli_words(text: str) -> str:
    """A library message with its arguments named as the options that set them
    (``max_num_iter=20`` → ``--iters 20``, ``stop='fixed:50'`` → ``--stop fixed:50``); a
    request for ``sigma=...`` asks for the command's noise level option."""
    text = _ARGUMENT.sub(lambda m: f"{_OPTIONS[m[1]]} {m[2].strip(chr(39))}", text)
    return text.replace("pass sigma=...", "pass the noise level (--sigma, or --noise-sigma)")


#: The largest --lr taken (a rate of 1e38 overflowed Adam's float32 arithmetic after the
#: headline; 1e6 makes a fit diverge, which the divergence guard handles).
MAX_LR = 1e6


def check_lr(lr: float | None) -> None:
    """``--lr``: a number in (0, MAX_LR] (typer lets 0, negatives, nan and 1e38 through)."""
    if lr is not None and not (math.isfinite(lr) and 0 < lr <= MAX_LR):
        raise ValueError(f"--lr must be a number in (0, {MAX_LR:g}], got {lr:g}")


def note(text: str, options: FitOptions | None = None, *, quiet: bool = False) -> None:
    """An informative line on stderr (so that ``--json`` output stays clean), unless quiet."""
    if not (quiet or (options is not None and options.silent)):
        typer.echo(f"note: {text}", err=True)


# --------------------------------------------------------------------------- units


def sigma_from_cli(value: float | None, option: str) -> float | None:
    """A noise std in 0–255 units from the command line → the library's [0, 1] scale.

    One rule for every such option: a finite number in (0, 255]. Values below 1 are accepted
    with a warning (they look like the [0, 1] scale).
    """
    if value is None:
        return None
    if not math.isfinite(value) or not 0 < value <= 255:
        raise ValueError(f"{option} must be a noise std in 0-255 units, > 0 and <= 255 (e.g. "
                         f"{option} 25), got {value:g}")
    if value < 1:
        warnings.warn(
            f"{option} {value:g} is in 0-255 units, so this is very weak noise; "
            f"did you mean {option} {value * 255:.3g}?",
            UserWarning,
            stacklevel=2,
        )
    return value / 255.0


def measurement_sigma_from_cli(value: float | None, option: str) -> float | None:
    """A noise std in the measurements' own units: a finite number > 0, no upper bound."""
    if value is None:
        return None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{option} must be a noise std > 0 in the measurements' units, got "
                         f"{value:g}")
    return float(value)


def check_device(device: str) -> None:
    """Refuse ``--device`` here, before a fit, when this machine cannot run it."""
    try:
        deepprior.resolve_device(device)
    except ValueError as exc:
        raise ValueError(f"--device {device}: {exc}") from None


# --------------------------------------------------------------------------- inputs


def image_or_demo(image: Path | None, demo_size: int, max_pixels: int = MAX_PIXELS, *,
                  observed: bool = False) -> tuple[np.ndarray, str]:
    """The image at ``image``, or the bundled camera image at ``demo_size`` when none is given.

    Returns the image and a line saying where it came from (for the report). ``observed``:
    the image is the observation to reconstruct, whose float samples may lie outside [0, 1]
    (noise simulated without clipping), not a clean image.
    """
    if image is None:
        clean = deepprior.sample_image("camera", size=demo_size)
        return clean, f"sample image camera resized to {demo_size}x{demo_size}"
    return load_image(image, max_pixels, unclipped=observed), str(image)


def load_image(path: Path, max_pixels: int, *, what: str = "IMAGE",
               unclipped: bool = False) -> np.ndarray:
    """load_image with the pixel limit, and images smaller than the networks handle refused."""
    image = deepprior.load_image(path, max_pixels=max_pixels, unclipped=unclipped)
    check_size(image.shape, f"{what} {path}")
    return image


def check_size(shape: tuple[int, ...], what: str) -> None:
    """Refuse images with a side below :data:`MIN_SIDE` (the real minimum of the networks)."""
    if min(shape[:2]) < MIN_SIDE:
        raise ValueError(f"{what} is {shape[0]}x{shape[1]} pixels; deepprior reconstructs images "
                         f"of at least {MIN_SIDE}x{MIN_SIDE} ({CONV_DECODER_MIN_SIDE}x"
                         f"{CONV_DECODER_MIN_SIDE} with --net conv_decoder)")


def parse_shape(text: str) -> tuple[int, int, int]:
    """``HxW`` or ``HxWxC`` → ``(C, H, W)``."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*(?:[xX,]\s*(\d+)\s*)?", text)
    if not match:
        raise ValueError(f"--shape must look like HxW or HxWxC (e.g. 64x64 or 64x64x3), got "
                         f"{text!r}")
    height, width = int(match[1]), int(match[2])
    channels = int(match[3]) if match[3] else 1
    if channels not in (1, 3):
        raise ValueError(f"--shape {text}: the channel count must be 1 or 3, got {channels}")
    check_size((height, width), f"--shape {text}")
    return channels, height, width


def shape_text(shape: tuple[int, ...]) -> str:
    """``(H, W)`` or ``(H, W, C)`` → ``"HxW"`` / ``"HxWxC"``."""
    return "x".join(str(s) for s in shape)


def stop_names(stop: str) -> list[str]:
    """The rule names in a --stop spec (validated; a bad spec raises a one-line ValueError)."""
    if stop == "auto":  # the library picks a rule per problem and network; none needs more
        return ["auto"]
    try:
        return [name for name, _ in deepprior.parse_stop(stop)]
    except ValueError as exc:
        raise ValueError(f"--stop {stop}: {one_line(exc)}") from None


def epilog(*examples: str, units: str = "") -> str:
    """The text after a command's options: examples, the units rule, the exit codes."""
    lines = ["Examples:", *(f"  $ {example}" for example in examples)]
    if units:
        lines.append(units)
    lines.append(EXIT_CODES)
    return "\n\n".join(lines)


def pixel_noise(noise_sigma: float | None, add_noise: float | None, *, simulating: bool,
                simulate_how: str) -> float | None:
    """``--noise-sigma`` (or its alias ``--add-noise``) for measurements that are pixels.

    0-255 units. When the command simulates the observation it adds noise of this std; with a
    given observation it is the known noise level. ``--add-noise`` says "add", so it is refused
    when nothing is simulated (``simulate_how`` says how to simulate).
    """
    if add_noise is not None:
        if not simulating:
            raise ValueError(f"--add-noise adds noise to a simulated observation ({simulate_how})"
                             "; for the noise level of the image itself pass --noise-sigma")
        if noise_sigma is not None:
            raise ValueError("--add-noise and --noise-sigma both set the simulated noise; give one")
        return sigma_from_cli(add_noise, "--add-noise")
    return sigma_from_cli(noise_sigma, "--noise-sigma")
