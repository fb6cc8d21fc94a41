"""The one place a command's fit runs and its outputs are written: :func:`run_task`.

A command turns its options into a *builder*, ``build(image, seed, *, quiet=False) -> Task``:
the observation, the forward model, what it knows about the clean image and how to describe the
run. ``deepprior COMMAND IMAGE`` builds one :class:`Task` and hands it to :func:`run_task`, which
checks what is left to check (the clean image, the stopping rule, the outputs), fits, writes the
image, the report and the plot all or none, and exits with the documented code.
``deepprior batch COMMAND INPUTS`` builds one Task per input with the same builder and the same
checks and report (:mod:`deepprior_cli.batching`).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import typer

import deepprior
from deepprior.api import NEAR_TIE_Z
from deepprior.checks import check_lr_decay

from .common import (
    CONV_DECODER_MIN_SIDE,
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    MIN_SIDE,
    FitOptions,
    check_device,
    check_lr,
    load_image,
    note,
    shape_text,
    stop_names,
)
from .outputs import Outputs, build_report


@dataclass
class Task:
    """What a command prepared for :func:`run_task`.

    Attributes
    ----------
    command : str
        The command's name (for the report).
    observation : np.ndarray
        The noisy image (denoising) or the measurements, in the operator's measurement layout.
    image_shape : tuple
        ``(H, W)`` or ``(H, W, C)`` of the reconstruction.
    default_output : Path
        The output image when ``-o`` is not given.
    source : str
        Where the data came from, for the report and the first line printed.
    operator : optional
        The forward model (None: denoising).
    sigma : float, optional
        Noise std of the observation in library units ([0, 1] for images, else the
        measurements' own), for the discrepancy rule.
    sigma_estimated : bool
        ``sigma`` was estimated from the observation, not given (a batch leaves the estimate
        to :func:`deepprior.reconstruct`, which makes the same one when its rule needs it).
    sigma_option : str
        How a user gives that noise level on this command (named in error messages).
    clean : np.ndarray, optional
        The clean image when the command knows it (simulation); ``clean_from`` says how.
    inputs : tuple of Path
        Input files: no output may be one of them.
    bits : int
        Bits per sample of the input image (8, 16, or 32 for float): the output keeps 16 bits
        where its format allows.
    headline : str
        What is being done, printed before the fit.
    notes : tuple of str
        What the user should know about the input (an estimated noise level, a crop, a
        normalised kernel): printed with the headline, once every check has passed, so that
        an invalid command line says only its error.
    report : dict
        Command-specific report fields.
    metrics : callable, optional
        ``metrics(clean)`` → more report fields once the clean image is known (e.g. the noisy
        image's PSNR).
    summary : callable, optional
        ``summary(result, report)`` → the line printed after the fit (default: PSNR/SSIM).
    extra_outputs : dict
        role → (path, writer of a binary handle): more files written with the others.
    """

    command: str
    observation: np.ndarray
    image_shape: tuple[int, ...]
    default_output: Path
    source: str
    operator: Any = None
    sigma: float | None = None
    sigma_estimated: bool = False
    sigma_option: str = "--noise-sigma"
    clean: np.ndarray | None = None
    clean_from: str = ""
    inputs: tuple[Path | None, ...] = ()
    bits: int = 8
    headline: str = ""
    notes: tuple[str, ...] = ()
    report: dict[str, Any] = field(default_factory=dict)
    metrics: Callable[[np.ndarray], dict[str, Any]] | None = None
    summary: Callable[[Any, dict[str, Any]], str] | None = None
    extra_outputs: dict[str, tuple[Path, Callable[[Any], object]]] = field(default_factory=dict)


#: ``build(image, seed, *, quiet=False) -> Task``: a command's options turned into Tasks.
Builder = Callable[..., Task]


def run_task(task: Task, options: FitOptions) -> None:
    """Check what is left, fit, write the outputs all or none, print, exit with the code."""
    names = check_fit_options(options)
    clean = clean_image(task, options.clean, options)
    check_stop(task, names, clean)
    check_regularizer(task, options)
    check_net_size(task, options)
    output = options.output or task.default_output
    outputs = Outputs(output, overwrite=options.overwrite,
                      inputs=(*task.inputs, options.clean),
                      extra={role: path for role, (path, _) in task.extra_outputs.items()})
    bits, bits_note = output_bits(output, task.bits, task.image_shape)

    def announce(plan: dict[str, Any]) -> None:
        """The headline and, for a long CPU fit, the note on its time: once the library has
        checked the call, so that an invalid one says only its error."""
        if options.silent:
            return
        for text in task.notes:
            note(text, options)
        typer.echo(f"{task.headline} with {plan['net']}, norm={options.norm}")
        if plan["net"] != "dip" or plan["device"] != "cpu":
            return
        pixels = task.image_shape[0] * task.image_shape[1]
        fits, iters = plan["fits"], plan["max_num_iter"]
        if isinstance(plan["stop"], str):  # a fixed rule ends each fit by its count at latest
            iters = min([iters, *(params["num_iter"] for name, params in
                                  deepprior.parse_stop(plan["stop"]) if name == "fixed")])
        width = plan["net_options"].get("channels", 128) / 128  # the time: ~ width^1.5
        fast, slow = (fits * iters * seconds * width**1.5 * pixels / 60
                      / (DIP_BF16_SPEEDUP if options.precision == "bf16" else 1)
                      for seconds in DIP_CPU_SECONDS_PER_PIXEL)
        if slow >= 1:
            span = f"{max(fast, 1):.0f}-{slow:.0f}" if round(fast) < round(slow) \
                else f"{slow:.0f}"
            faster = ("; --precision bf16 is about 1.5x faster on this CPU"
                      if options.precision == "fp32" and cpu_has_bf16_units() else "")
            runs = f"{fits} fits of up to {iters:,} iterations" if fits > 1 else \
                f"up to {iters:,} iterations"
            low, high = (ratio * width**1.5 for ratio in DD_SPEEDUP)
            dd = (f"is about {low:.0f}-{high:.0f}x faster per fit and returns less"
                  if low >= 1 else "returns less")  # a narrow DIP is not slower than it
            note(f"the Deep Image Prior runs {runs}, about {span} min on one CPU core at "
                 f"this size (by the CPU; fewer when it stops early); --net deep_decoder {dd} "
                 f"(benchmarks/RESULTS.md §2, §5){faster}", options)

    with torch_threads(options.threads):
        result = deepprior.reconstruct(
            task.observation,
            task.operator,
            sigma=task.sigma,
            ground_truth=clean,
            seed=options.seed,
            progress=not options.silent,
            on_start=announce,
            **fit_kwargs(options),
        )
    status = status_of(result)
    code = {"done": 0, "diverged": EXIT_DIVERGED, "interrupted": EXIT_INTERRUPTED}[status]
    if result.num_iter == 0:  # no iterate accepted (a loss never finite): nothing to write
        if status == "done":  # the budget ran out before the divergence guard gave up
            status, code = "diverged", EXIT_DIVERGED
        _say_stopped(status, result, written=False)
        raise typer.Exit(code=code)
    report = task_report(task, result, clean=clean, clean_path=options.clean, output=output,
                         bits=bits, status=status, code=code)
    outputs.write(result.image, report, result, bits=bits,
                  extra={role: write for role, (_, write) in task.extra_outputs.items()})
    if options.json:
        typer.echo(json.dumps(deepprior.jsonable(report), indent=2))
    elif not options.quiet:
        typer.echo((task.summary or default_summary)(result, report) + ensemble_note(result))
        config = result.config if isinstance(result.config, dict) else {}
        choice = config.get("regularizer_choice", [])
        tied = averaged_trials(choice)  # members that are held-out fits, not refits
        if choice:
            typer.echo(choice_line(choice, len(config.get("members") or [None]) - 1 - tied,
                                   cut_short=status == "interrupted"))
        typer.echo(f"stopped: {result.stop_reason}")
        # member 0 and the near ties' fits are held-out fits, counted among the choice's
        fits = len(config.get("members", [None])) - tied + max(len(choice) - 1, 0)
        steps = (f"{fits} fits, {result.num_steps} iterations in all" if fits > 1
                 else f"{result.num_steps} iterations")
        typer.echo(f"time: {result.elapsed:.1f} s for {steps} on {result.device}")
        typer.echo(f"wrote {outputs.names()}")
    if bits_note:
        note(bits_note, options)
    if status != "done":
        _say_stopped(status, result, written=True)
    if code:
        raise typer.Exit(code=code)


def check_fit_options(options: FitOptions, *, cluster: bool = False) -> list[str]:
    """The checks of the fitting options that typer cannot make; the --stop rule names.

    ``cluster``: the fits run on a Ray cluster elsewhere, which has the devices (Ray assigns
    the GPU), so ``--device`` names a kind, not hardware of this machine."""
    check_lr(options.lr)
    lr_decay(options.lr_decay)
    if not cluster:
        check_device(options.device)
    elif options.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device {options.device}: with --ray it is auto, cpu or cuda (Ray "
                         "assigns each fit its GPU)")
    return stop_names(options.stop)


def lr_decay(text: str | None) -> tuple[float, int] | str | None:
    """``--lr-decay FACTOR,EVERY`` as reconstruct's ``lr_decay`` (``"none"`` as is)."""
    if text is None or text == "none":
        return text
    try:
        factor, every = text.split(",")
        return check_lr_decay((float(factor), int(every)))
    except (TypeError, ValueError):
        raise ValueError(f"--lr-decay must be FACTOR,EVERY with 0 < FACTOR <= 1 and EVERY an "
                         f"integer >= 1 (e.g. 0.5,1500) or none, got {text!r}") from None


def problem_of(task: Task) -> str:
    """The problem kind of a task (a key of deepprior.PROBLEMS)."""
    return "denoise" if task.operator is None else task.operator.problem


def network(task: Task, options: FitOptions) -> str:
    """The network the fit uses: ``--net``, else the problem kind's default."""
    return options.net or deepprior.DEFAULT_NETS[problem_of(task)]


def fit_kwargs(options: FitOptions) -> dict[str, Any]:
    """The options of :func:`deepprior.reconstruct` that come from the shared fitting options
    (the same for a single image and for each image of a batch)."""
    return {
        "net": options.net,
        "norm": options.norm,
        "max_num_iter": options.iters,
        "learning_rate": options.lr,
        "lr_decay": lr_decay(options.lr_decay),
        "stop": options.stop,
        "device": options.device,
        "net_options": {"channels": options.channels} if options.channels else None,
        "ensemble": options.ensemble,
        "precision": options.precision,
        "regularizer": None if options.regularizer == "default" else options.regularizer,
        "regularizer_weight": options.regularizer_weight,
    }


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` for the block (None: leave torch's setting)."""
    if threads is None:
        yield
        return
    import torch  # already imported by deepprior; the library has no threads option

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def task_report(task: Task, result, *, clean: np.ndarray | None, clean_path: Path | None,
                output: Path, bits: int, status: str, code: int) -> dict[str, Any]:
    """The JSON report of one fit of a task (the same for a single image and a batch)."""
    return build_report(result, extra={
        "command": task.command,
        "input": task.source,
        **task.report,
        **(task.metrics(clean) if task.metrics is not None and clean is not None else {}),
        "clean": None if clean_path is None else str(clean_path),
        "output_bits": 32 if output.suffix.lower() == ".npy" else bits,
        "status": status,
        "exit_code": code,
    })


def default_summary(result, report: dict[str, Any]) -> str:
    """PSNR/SSIM when the clean image is known, else the iteration returned."""
    if result.psnr is None:
        return f"returned iteration {result.num_iter}"
    return f"PSNR {result.psnr:.2f} dB, SSIM {result.ssim:.3f}, iteration {result.num_iter}"


def choice_line(choice: list[dict[str, Any]], refits: int = 1, *,
                cut_short: bool = False) -> str:
    """Which regularizer weight the held-out pixels/measurements chose, and the losses; its
    fit is averaged with ``refits`` fits to all the data. ``cut_short``: the call was stopped,
    perhaps before every weight was fitted."""
    def name(row):
        return "none" if row["weight"] == 0 else f"λ = {row['weight']:.4g}"
    chosen = next(row for row in choice if row["chosen"])
    losses = ", ".join(f"{name(row)} {row['holdout_loss']:.4g}" for row in choice)
    fitted = f" of the {len(choice)} weight(s) fitted before the stop" if cut_short else ""
    line = f"regularizer: {name(chosen)}, the lowest held-out loss{fitted} ({losses})"
    if refits:
        others = "a fit" if refits == 1 else f"{refits} fits"
        line += f"; its fit averaged with {others} to all the data"
    if any(row.get("margin_z") is None and not row["chosen"] for row in choice):
        line += "; one held-out value decided it: the choice is uncertain"
    for row in choice:  # the library says which it averaged in (a near tie, when not cut short)
        z = row.get("margin_z")
        if row["chosen"] or z is None or not (row.get("averaged") or z < NEAR_TIE_Z):
            continue
        line += (f"; a near tie: {name(row)} is only {z:.1f} standard errors behind, "
                 + ("so its fit is averaged in" if row.get("averaged")
                    else "so the choice is uncertain"))
    return line


def averaged_trials(choice: list[dict[str, Any]]) -> int:
    """How many members of the average are near-tied weights' held-out fits (not refits)."""
    return sum(bool(row.get("averaged")) and not row["chosen"] for row in choice)


def ensemble_note(result) -> str:
    """``", average of K fits"`` for an ensemble (saying which have TV when they mix), else
    nothing."""
    config = result.config if isinstance(result.config, dict) else {}
    members = config.get("members")
    if not members:
        return ""
    mixed = " (without and with TV in turn)" if config.get("regularizer") == "mix" else ""
    return f", average of {len(members)} fits{mixed}"


def status_of(result) -> str:
    """done, diverged or interrupted, from the stop reason."""
    if result.stop_reason.startswith("interrupted"):
        return "interrupted"
    if result.stop_reason.startswith("diverged"):
        return "diverged"
    return "done"


def short_reason(reason: str) -> str:
    """A stop reason in a word or two: ``fixed``, ``discrepancy``, ``patience``, ``budget``
    (the rule did not fire), ``diverged``, ``3 fits, first: fixed`` …"""
    head, _, first = reason.partition("; the first: ")
    if head.startswith("average of ") and first:
        return f"{head.removeprefix('average of ')}, first: {short_reason(first)}"
    clause = reason.split(";")[0].strip()
    if clause.startswith(("diverged", "interrupted")):
        return clause.split(":")[0].split()[0]
    if "did not fire" in clause:
        return "budget"
    named = re.search(r"\(([^()]+)\)$", clause)
    if named:
        return named[1].removesuffix(" principle")
    return " ".join(clause.split()[:4])


def _say_stopped(status: str, result, *, written: bool) -> None:
    """The line on stderr (even with --quiet) for a fit that did not end normally."""
    if status == "done":
        return
    kept = (f"wrote the best iterate so far (iteration {result.num_iter})" if written
            else "no iteration was accepted, nothing was written")
    if status == "interrupted":
        typer.echo(f"interrupted (Ctrl-C) after {result.num_steps} iterations; {kept}", err=True)
    else:
        why = result.stop_reason.split(";")[0] if result.stop_reason.startswith("diverged") \
            else f"no finite loss in {result.num_steps} iterations"
        typer.echo(f"warning: the fit diverged ({why}); "
                   f"{kept.replace('best iterate so far', 'last good iterate')}; "
                   "try a smaller --lr", err=True)


def clean_image(task: Task, path: Path | None, options: FitOptions) -> np.ndarray | None:
    """The clean image: the task's own, or the file ``path`` (--clean), loaded and checked
    against the reconstruction's shape."""
    if path is None:
        return task.clean
    if task.clean is not None:
        raise ValueError(f"--clean is not needed: {task.clean_from}")
    clean = load_image(path, options.max_pixels, what="--clean")
    if clean.shape != tuple(task.image_shape):
        raise ValueError(f"--clean {path} is {shape_text(clean.shape)} but the "
                         f"reconstruction is {shape_text(task.image_shape)} (HxW or HxWxC); they "
                         "must match")
    return clean


#: One iteration of the Deep Image Prior at 128 channels per scale on one CPU core, per pixel,
#: on the two CPUs measured (fast, slow): an AMD EPYC 0.21 s at 128², 1.11 s at 256²
#: (benchmarks/results/speed_variants_dip.json); an Intel Xeon 0.52 s at 128², 2.26 s at 256²
#: (benchmarks/RESULTS.md §3), 0.12-0.20 s at 64² (§2). At 64 / 32 channels an iteration takes
#: 0.38 / 0.16 of that at 128², 0.29 / 0.11 at 256² (speed_variants_dip.json), about
#: (channels / 128)^1.5.
DIP_CPU_SECONDS_PER_PIXEL = (1.3e-5, 3.4e-5)

#: How much faster the Deep Decoder's fit is than DIP's at 128 channels per scale on a CPU
#: (RESULTS.md §5); at another width, times (channels / 128)^1.5 as the time per iteration.
DD_SPEEDUP = (9, 24)

#: DIP's speed-up from bfloat16 on a CPU with AMX (RESULTS.md §3: 1.54x / 1.59x per step at
#: 64² / 128²; §5: 1.53x / 1.57x the time of the whole denoising fit).
DIP_BF16_SPEEDUP = 1.5


def cpu_has_bf16_units() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AMX or AVX-512 BF16; Linux only)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


#: How the user can give the clean image, in the --stop oracle error.
ORACLE_HINT = ("simulate the corruption from a clean IMAGE (denoise --add-noise, superres/deblur "
               "--simulate, cs IMAGE, inpaint without --mask) or pass it with --clean CLEAN")


def check_stop(task: Task, names: list[str], clean: np.ndarray | None, *,
               oracle_hint: str = ORACLE_HINT) -> None:
    """What the stopping rule needs (clean image, noise level) is there."""
    if "oracle" in names and clean is None:
        raise ValueError(f"--stop oracle needs the clean image: {oracle_hint}")
    if "discrepancy" in names and task.sigma is None and task.operator is not None:
        raise ValueError(f"--stop discrepancy needs the noise level of the measurements: pass "
                         f"{task.sigma_option}, or choose another --stop")


def check_net_size(task: Task, options: FitOptions) -> None:
    """Refuse an image below ``--net conv_decoder``'s 8x8 here (every image is at least
    4x4 already): the library's advice, ``input_size=...``, is no option of the command line."""
    height, width = task.image_shape[:2]
    if options.net == "conv_decoder" and min(height, width) < CONV_DECODER_MIN_SIDE:
        raise ValueError(f"the image is {height}x{width} pixels; --net conv_decoder reconstructs "
                         f"images of at least {CONV_DECODER_MIN_SIDE}x{CONV_DECODER_MIN_SIDE} "
                         f"(--net dip or deep_decoder from {MIN_SIDE}x{MIN_SIDE})")


def check_regularizer(task: Task, options: FitOptions) -> None:
    """``--regularizer-weight`` weighs a named penalty; ``--regularizer tv|auto|mix`` without a
    weight has one only for denoising and compressive sensing
    (``deepprior.api.TV_WEIGHT_PROBLEMS``); ``mix`` needs a member per weight, 0 included."""
    weight = options.regularizer_weight
    if weight is not None and not (math.isfinite(weight) and weight >= 0):
        raise ValueError(f"--regularizer-weight must be a finite number >= 0, got {weight:g}")
    if options.regularizer in ("default", "none") and options.regularizer_weight is not None:
        raise ValueError(f"--regularizer-weight needs the penalty it weighs: --regularizer tv, "
                         f"auto or mix (got {options.regularizer})")
    if options.regularizer in ("auto", "mix") and options.regularizer_weight == 0:
        raise ValueError(f"--regularizer {options.regularizer} pairs a fit without a penalty "
                         "with TV at --regularizer-weight W, so W must be > 0 (no penalty "
                         "alone: --regularizer none)")
    if options.regularizer == "mix" and options.ensemble is not None:
        members = deepprior.planned_fits(  # without --ensemble: one member per weight
            problem_of(task), network(task, options), sigma_known=task.sigma is not None,
            num_measurements=task.observation.size, regularizer="mix",
            regularizer_weight=options.regularizer_weight)
        if options.ensemble < members:
            raise ValueError(f"--regularizer mix gives its fits no penalty and each TV weight "
                             f"in turn: it needs --ensemble {members} or more, got "
                             f"{options.ensemble}")
    if (options.regularizer in ("tv", "auto", "mix") and options.regularizer_weight is None
            and problem_of(task) not in deepprior.api.TV_WEIGHT_PROBLEMS):
        raise ValueError(f"--regularizer {options.regularizer} needs --regularizer-weight W for "
                         f"{problem_of(task).replace('_', ' ')}: the automatic weight, "
                         "proportional to the noise level, is set for denoising and compressive "
                         "sensing only")


#: The largest side a JPEG holds (libjpeg's limit).
JPEG_MAX_SIDE = 65500


def output_bits(path: Path, input_bits: int, shape: tuple[int, ...]) -> tuple[int, str | None]:
    """Bits per sample of the output image of ``shape`` (H, W[, C]), and a note when the input
    had more; a JPEG output beyond :data:`JPEG_MAX_SIDE` is refused (before the fit).

    The rule: 8-bit input → 8-bit output. 16-bit or float input → 16 bits in a TIFF and in a
    grayscale PNG; a colour PNG or a JPEG stays 8-bit (Pillow writes no 16-bit colour PNG,
    JPEG has 8 bits) with a note suggesting ``.tif``; ``.npy`` is float32 anyway.
    """
    suffix, colour = path.suffix.lower(), len(shape) == 3
    if suffix in (".jpg", ".jpeg") and max(shape[:2]) > JPEG_MAX_SIDE:
        raise ValueError(f"{path.name}: a JPEG holds at most {JPEG_MAX_SIDE:,} pixels a side, "
                         f"and the result is {shape_text(shape)}; write a .png or .tif")
    if input_bits <= 8 or suffix == ".npy":
        return 8, None
    if suffix in (".tif", ".tiff") or (suffix == ".png" and not colour):
        return 16, None
    depth = "16-bit" if input_bits == 16 else "floating point"
    kind = "colour PNG" if suffix == ".png" else "JPEG"
    return 8, (f"input is {depth}; wrote an 8-bit {kind} ({path.name}); use "
               f"-o {path.with_suffix('.tif').name} for 16 bits")


def image_bits(path: Path | None) -> int:
    """Bits per sample of an input image file (8 for the bundled demo images)."""
    if path is None:
        return 8

    return deepprior.image_bit_depth(path)


def to_measurements(image: np.ndarray) -> np.ndarray:
    """An image (H, W) or (H, W, C) in the operators' measurement layout (C, H, W)."""
    return image[None] if image.ndim == 2 else np.ascontiguousarray(np.moveaxis(image, -1, 0))


def chw(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(H, W) or (H, W, C) → (C, H, W)."""
    return (1, *shape) if len(shape) == 2 else (shape[2], shape[0], shape[1])


def default_output(image: Path | None, suffix: str) -> Path:
    """``IMAGE_suffix.png`` next to the input (``camera_suffix.png`` for the demo)."""
    if image is None:
        return Path(f"camera_{suffix}.png")
    return image.with_name(f"{image.stem}_{suffix}.png")
