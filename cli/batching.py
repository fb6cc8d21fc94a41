"""``deepprior batch``'s engine room: :func:`run_batch`.

The inputs are expanded (files, folders, globs, ``@list.txt``) and named by their stems; every
input is built into a :class:`~deepprior_cli.fitting.Task` by the single-image command's own
builder, with the seed :func:`deepprior.item_seed` gives its name; its outputs are checked.
All of that happens before the first fit: an input that cannot be read or built is recorded as
failed, an input whose image output exists is skipped (``--force`` redoes it). Then
:func:`deepprior.reconstruct_many` fits the rest on worker processes or Ray tasks, and each image's
outputs (image, report, plot, all or none) are written as soon as its fit finishes. The summary
(``summary.csv``, ``summary.json``) is written at the end, after Ctrl-C too.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import importlib.util
import io
import json
import os
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import typer

import deepprior

from .common import (
    EXIT_DIVERGED,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    KNOWN_ERRORS,
    FitOptions,
    cli_words,
    note,
    one_line,
)
from .fitting import (
    Builder,
    Task,
    check_fit_options,
    check_net_size,
    check_regularizer,
    check_stop,
    clean_image,
    fit_kwargs,
    output_bits,
    short_reason,
    status_of,
    task_report,
)
from .outputs import Outputs, check_outputs, check_writable_folder, folds_case

#: Files a folder or a glob contributes: images (denoise, inpaint, superres, deblur) ...
IMAGE_INPUTS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp", ".webp", ".pgm", ".ppm", ".pnm",
                ".npy")
#: ... or measurements (cs).
MEASUREMENT_INPUTS = (".npy", ".npz", ".mat", ".txt", ".csv")
SUMMARY_CSV, SUMMARY_JSON = "summary.csv", "summary.json"
CSV_COLUMNS = ("name", "status", "num_iter", "num_steps", "stop", "seconds", "psnr", "ssim",
               "input", "output", "error")
#: --stop oracle in a batch: where the clean images come from.
BATCH_ORACLE_HINT = ("simulate the corruption from clean INPUTS (denoise --add-noise, superres/"
                     "deblur --simulate, inpaint without --mask) or pass a folder of clean "
                     "images with --clean DIR")


@dataclass(frozen=True)
class EngineOptions:
    """Where the fits of a batch run, and what happens to existing outputs."""

    workers: int | None = None
    ray: str | None = None
    gpus_per_fit: float | None = None
    force: bool = False
    ext: str = "png"

    @property
    def engine(self) -> str:
        """``"ray"`` with ``--ray``, else ``"local"``."""
        return "local" if self.ray is None else "ray"

    @property
    def address(self) -> str | None:
        """The Ray address for :func:`deepprior.reconstruct_many` (None: a local cluster)."""
        return None if self.ray in (None, "local") else self.ray


@dataclass
class Row:
    """One input's line in the summary."""

    name: str
    input: str
    status: str = "pending"  # done | diverged | failed | skipped | interrupted
    num_iter: int | None = None
    num_steps: int | None = None
    stop: str | None = None
    stop_reason: str | None = None
    seconds: float | None = None
    psnr: float | None = None
    ssim: float | None = None
    output: str | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class _Fitting:
    """How long the fits took, and where they ran."""

    seconds: float = 0.0
    devices: set[str] = field(default_factory=set)


@dataclass
class _Item:
    """An input on its way through the batch."""

    row: Row
    path: Path
    seed: int
    image: Path  # its output image
    task: Task | None = None
    outputs: Outputs | None = None
    clean: np.ndarray | None = None
    clean_path: Path | None = None
    bits: int = 8
    bits_note: str | None = None


def run_batch(command: str, build: Builder, inputs: list[str], options: FitOptions,
              engine: EngineOptions, *, suffixes: tuple[str, ...] = IMAGE_INPUTS,
              task_files: tuple[str | Path | None, ...] = ()) -> None:
    """Check everything, fit what is left to fit, write outputs as fits finish, summarise, exit.

    ``task_files``: the task's own files (a --mask, --kernel or --matrix), never taken as
    inputs from a folder or a glob that holds them.

    Exit code: 130 after Ctrl-C, else 1 when an input failed, else 3 when a fit diverged, else 0.
    """
    started = time.perf_counter()
    _check_engine(engine)
    names = check_fit_options(options, cluster=engine.address is not None)
    if engine.gpus_per_fit is not None and engine.address is None and \
            deepprior.resolve_device(options.device).type != "cuda":
        raise ValueError(f"--gpus-per-fit needs a CUDA device, and the fits would run on "
                         f"{deepprior.resolve_device(options.device)} (--device "
                         f"{options.device}): leave it out")
    outdir = _check_outdir(options.output)
    own = {Path(f).expanduser().resolve() for f in task_files if f is not None
           and Path(f).expanduser().is_file()}
    items = _items(expand_inputs(inputs, suffixes, skip=own), outdir, options, engine)
    cleans = _clean_index(options.clean, [item.row.name for item in items], outdir, options)
    for item in items:
        _prepare(item, build, names, options, engine, cleans, sigma_per_input=command == "cs")
    todo = [item for item in items if item.task is not None]
    sigma = _shared_sigma(todo)
    _say_plan(command, items, todo, outdir, options, engine)
    fitting = _Fitting()
    interrupted = False
    try:
        if todo:
            interrupted = _fit_all(todo, sigma, options, engine, fitting)
    except Exception:  # after some fits finished, the summary says what is done
        if any(item.row.seconds is not None for item in todo):
            _finish_summary(command, items, outdir, options, engine, started, fitting,
                            interrupted=True, code=EXIT_ERROR)
        raise
    counts = Counter(item.row.status for item in items)
    code = (EXIT_INTERRUPTED if interrupted else EXIT_ERROR if counts["failed"]
            else EXIT_DIVERGED if counts["diverged"] else 0)
    summary = _finish_summary(command, items, outdir, options, engine, started, fitting,
                              interrupted=interrupted, code=code)
    _say_done(summary, outdir, options, interrupted)
    if code:
        raise typer.Exit(code=code)


# --------------------------------------------------------------------------- inputs


def expand_inputs(specs: list[str], suffixes: tuple[str, ...] = IMAGE_INPUTS, *,
                  skip: set[Path] = frozenset()) -> list[Path]:
    """INPUTS → files: a file as is, a folder's files with ``suffixes`` (sorted, not hidden),
    a glob's matching files with ``suffixes`` (sorted; for a quoted glob), ``@list.txt``: each
    line (blank lines and ``#`` comments skipped) taken as an input, relative to the current
    folder. A file named twice counts once; a folder's or a glob's files in ``skip`` (resolved
    paths) are left out. Raises ValueError for a name that matches nothing."""
    paths: list[Path] = []
    for spec in specs:
        if spec.startswith("@"):
            for line in _read_list(Path(spec[1:])):
                paths += _expand(line, suffixes, f" (listed in {spec[1:]})", skip)
        else:
            paths += _expand(spec, suffixes, "", skip)
    unique: dict[Path, Path] = {}
    for path in paths:
        unique.setdefault(path.resolve(), path)
    if not unique:
        raise ValueError("INPUTS name no file")
    return list(unique.values())


def _read_list(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"@{path}: no such list file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"@{path}: cannot read the list ({one_line(exc)})") from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise ValueError(f"@{path}: the list names no file (one path per line)")
    return lines


def _expand(spec: str, suffixes: tuple[str, ...], where: str, skip: set[Path]) -> list[Path]:
    path = Path(spec).expanduser()
    kinds = ", ".join(suffixes)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in
                       suffixes and not p.name.startswith(".") and p.resolve() not in skip)
        if not found:
            raise ValueError(f"{spec}{where}: the folder holds no input files ({kinds})")
        return found
    if path.exists() or path.is_symlink():
        return [path]
    if any(char in spec for char in "*?["):
        found = sorted(Path(m) for m in glob.glob(os.path.expanduser(spec))
                       if Path(m).is_file() and Path(m).suffix.lower() in suffixes
                       and Path(m).resolve() not in skip)
        if not found:
            raise ValueError(f"{spec}{where} matches no input file ({kinds})")
        return found
    raise ValueError(f"{spec}{where}: no such file or folder")


def _items(paths: list[Path], outdir: Path, options: FitOptions,
           engine: EngineOptions) -> list[_Item]:
    """Each input named by its stem, with its seed and output image; clashes refused (names
    that differ only in case too, where the output folder's file system takes them for one)."""
    same: Callable[[str], str] = str.casefold if folds_case(outdir) else str
    by_name: dict[str, list[Path]] = {}
    for path in paths:
        by_name.setdefault(same(path.stem), []).append(path)
    clashes = [found for found in by_name.values() if len(found) > 1]
    if clashes:
        found = clashes[0]
        raise ValueError(f"{len(clashes)} output name(s) are taken by several inputs, e.g. "
                         f"{', '.join(map(str, found))} would all write "
                         f"{outdir / found[0].stem}.{engine.ext}; rename them or run them "
                         "separately")
    writers: dict[str, Path | None] = {same(SUMMARY_CSV): None, same(SUMMARY_JSON): None}
    for (path,) in by_name.values():  # every file of every item: image, report, plot
        for file in (f"{path.stem}.{engine.ext}", f"{path.stem}.json", f"{path.stem}_curve.png"):
            other = writers.setdefault(same(file), path)
            if other is None:
                raise ValueError(f"the input {path} would write {outdir / file}, the batch's "
                                 "summary; rename it")
            if other != path:  # e.g. X_curve.png: X's plot and the image of input X_curve
                raise ValueError(f"the inputs {other} and {path} would both write "
                                 f"{outdir / file}; rename one or run them separately")
    resolved = outdir.resolve()
    for path in paths:
        if path.resolve().parent == resolved:
            raise ValueError(f"-o {outdir} holds the input {path}; write the outputs to "
                             "another folder")
    return [_Item(Row(path.stem, str(path)), path, deepprior.item_seed(options.seed, path.stem),
                  outdir / f"{path.stem}.{engine.ext}") for path in paths]


def _clean_index(folder: Path | None, names: list[str], outdir: Path,
                 options: FitOptions) -> dict[str, list[Path]]:
    """--clean DIR: the clean images of each name (DIR/NAME.*); a note for names without."""
    if folder is None:
        return {}
    if not folder.is_dir():
        raise ValueError(f"--clean {folder}: not a folder; in a batch --clean names a folder of "
                         "clean images with the inputs' names (DIR/NAME.png, ...)")
    if folder.resolve() == outdir.resolve():
        raise ValueError(f"--clean {folder} is the output folder -o {outdir}; the outputs would "
                         "take the clean images' names")
    found: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_INPUTS:
            found.setdefault(path.stem, []).append(path)
    missing = [name for name in names if name not in found]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        note(f"--clean {folder} has no image for {len(missing)} of {len(names)} inputs "
             f"({shown}): no PSNR/SSIM for them", options)
    return found


# --------------------------------------------------------------------------- checks


def _check_engine(engine: EngineOptions) -> None:
    if engine.gpus_per_fit is not None and not 0 < engine.gpus_per_fit <= 1:
        raise ValueError(f"--gpus-per-fit is the share of a GPU one fit takes, in (0, 1] (0.25: "
                         f"four fits per GPU), got {engine.gpus_per_fit:g}")
    if engine.ray is not None and not engine.ray.strip():
        raise ValueError("--ray needs local, auto or the cluster's address HOST:PORT")
    if engine.ray is not None and importlib.util.find_spec("ray") is None:
        raise ValueError('--ray needs Ray, an optional dependency: pip install "deepprior[ray]"')


def _check_outdir(outdir: Path) -> Path:
    if outdir.exists() and not outdir.is_dir():
        raise ValueError(f"-o {outdir} is a file; a batch writes into a folder (created when "
                         "missing)")
    check_writable_folder(outdir)
    check_outputs({"summary": outdir / SUMMARY_CSV, "summary report": outdir / SUMMARY_JSON},
                  overwrite=True)
    return outdir


def _prepare(item: _Item, build: Builder, names: list[str], options: FitOptions,
             engine: EngineOptions, cleans: dict[str, list[Path]], *,
             sigma_per_input: bool = False) -> None:
    """Skip the item, or build its Task and check its outputs; a failure is the item's.

    Raises ValueError for what is wrong with the options rather than with the input (the same
    for every input): nothing has been fitted or written then. ``sigma_per_input``: the noise
    level comes with each input (saved measurements), so an input without one fails alone.
    """
    row = item.row
    if not engine.force and (item.image.exists() or item.image.is_symlink()):
        _skip(item)
        return
    try:
        task = build(item.path, item.seed, quiet=True)
    except KNOWN_ERRORS as exc:
        row.status, row.error = "failed", one_line(exc)
        return
    if options.clean is not None and task.clean is not None:
        raise ValueError(f"--clean is not needed: {task.clean_from}")
    rules = names if options.clean is None else [n for n in names if n != "oracle"]
    own = ["discrepancy"] if sigma_per_input and task.sigma is None else []  # the input's σ
    check_stop(task, [n for n in rules if n not in own], task.clean,
               oracle_hint=BATCH_ORACLE_HINT)
    try:
        check_stop(task, [n for n in rules if n in own], task.clean)
    except ValueError as exc:
        row.status, row.error = "failed", f"{item.path.name} holds no noise level: {exc}"
        return
    check_regularizer(task, options)
    try:  # what is wrong with this input alone: it fails alone
        check_net_size(task, options)
        clean_path = _clean_path(row.name, cleans, options)
        if "oracle" in names and clean_path is None and task.clean is None:
            raise ValueError(f"--stop oracle needs the clean image: no {row.name}.* in "
                             f"--clean {options.clean}")
        clean = clean_image(task, clean_path, options)
        outputs = Outputs(item.image, overwrite=engine.force,
                          inputs=(*task.inputs, clean_path), option="--force")
        item.bits, item.bits_note = output_bits(item.image, task.bits, task.image_shape)
    except KNOWN_ERRORS as exc:
        row.status, row.error = "failed", one_line(exc)
        return
    item.task, item.outputs, item.clean, item.clean_path = task, outputs, clean, clean_path


def _clean_path(name: str, cleans: dict[str, list[Path]], options: FitOptions) -> Path | None:
    found = cleans.get(name, [])
    if len(found) > 1:
        raise ValueError(f"--clean {options.clean} has several images named {name}: "
                         f"{', '.join(p.name for p in found)}; keep one")
    return found[0] if found else None


def _skip(item: _Item) -> None:
    """An input whose output image exists: skipped, with the numbers of its report."""
    row = item.row
    row.status, row.output = "skipped", str(item.image)
    with contextlib.suppress(OSError, ValueError):
        report = json.loads(item.image.with_suffix(".json").read_text())
        if not isinstance(report, dict):  # another program's JSON beside the image
            return
        row.num_iter, row.num_steps = report.get("num_iter"), report.get("num_steps")
        row.stop_reason = report.get("stop_reason")
        row.stop = short_reason(row.stop_reason) if isinstance(row.stop_reason, str) else None
        row.psnr, row.ssim = report.get("psnr"), report.get("ssim")
        batch = report.get("batch")  # the seconds a done row gave: reading and fitting
        batch = batch if isinstance(batch, dict) else {}  # (reports from before: the fit's)
        row.seconds = batch.get("seconds", report.get("elapsed_s"))


def _shared_sigma(todo: list[_Item]) -> float | dict[str, float | None] | None:
    """The noise level of the batch: one for every item, or each item's own where they
    differ (files saved with different levels; an estimate is left to reconstruct)."""
    given = {item.row.name: item.task.sigma for item in todo if not item.task.sigma_estimated}
    if len(set(given.values())) > 1:
        return given
    return next(iter(given.values()), None)


# --------------------------------------------------------------------------- fitting


def _fit_all(todo: list[_Item], sigma: float | dict[str, float | None] | None,
             options: FitOptions, engine: EngineOptions, fitting: _Fitting) -> bool:
    """Run the fits, write each image's outputs as it finishes; True after Ctrl-C."""
    from tqdm import tqdm

    by_name = {item.row.name: item for item in todo}
    operators = {id(item.task.operator) for item in todo}
    shared = todo[0].task.operator if len(operators) == 1 else None
    items = [(item.row.name, item.task.observation if len(operators) == 1
              else (item.task.observation, item.task.operator)) for item in todo]
    truth = {item.row.name: item.clean for item in todo if item.clean is not None}
    start = time.perf_counter()
    results = deepprior.reconstruct_many(
        items, engine=engine.engine, workers=engine.workers, address=engine.address,
        gpus_per_fit=engine.gpus_per_fit, cpus_per_fit=options.threads or 1, seed=options.seed,
        operator=shared, sigma=sigma, ground_truth=truth or None, **fit_kwargs(options))
    bar = tqdm(total=len(todo), unit="image", desc="fits", disable=options.silent,
               file=sys.stderr, dynamic_ncols=True, leave=False)

    shown: set[str] = set()

    def handle(result) -> None:
        item = by_name[result.name]
        _finish(item, result, options, engine)
        if result.ok:
            fitting.devices.add(result.result.device)
        bar.update(1)
        _say_warnings(caught, result, shown)
        _say_item(item.row, options)

    # The library re-issues each fit's warnings; they are shown here, once, with the name.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return consume(results, handle)
        finally:
            bar.close()
            _say_warnings(caught, None, shown)
            fitting.seconds = time.perf_counter() - start
            for item in todo:
                if item.row.status == "pending":
                    item.row.status = "interrupted"
                    item.row.error = "not finished: the batch was stopped"


def consume(results: Iterator[Any], handle: Callable[[Any], None]) -> bool:
    """Hand each result of :func:`deepprior.reconstruct_many` to ``handle``; True after Ctrl-C.

    Ctrl-C while the batch waits for fits: reconstruct_many stops scheduling, yields what had
    finished, then raises. Ctrl-C in ``handle`` (writing an image): it is thrown into the
    batch, which does the same. Either way every finished fit is handed over, and the
    iterator is closed (worker processes, a Ray cluster started for the batch) at the end.
    """
    interrupted = False
    with contextlib.closing(results):
        advance: Callable[[], Any] = results.__next__
        while True:
            try:
                result = advance()
            except StopIteration:
                return interrupted
            except KeyboardInterrupt:
                return True
            advance = results.__next__
            try:
                handle(result)
            except KeyboardInterrupt:
                interrupted = True
                advance = _thrower(results)


def _thrower(results: Iterator[Any]) -> Callable[[], Any]:
    """Once: throw KeyboardInterrupt into the generator (it stops and yields what finished)."""
    return lambda: results.throw(KeyboardInterrupt)


def _finish(item: _Item, result, options: FitOptions, engine: EngineOptions) -> None:
    """Record an item's result and write its outputs (a failure to write fails the item)."""
    row = item.row
    if not result.ok:
        row.status, row.error = "failed", result.error
        row.seconds = round(result.seconds, 3)
        return
    fit = result.result
    row.warnings = list(result.warnings)
    status = status_of(fit)
    if fit.num_iter == 0:  # no iterate accepted (a loss never finite; "done": the budget ran
        row.status, row.error = "failed", (  # out first): nothing to write, as single commands
            f"{'interrupted' if status == 'interrupted' else 'the fit diverged'} before any "
            "iteration was accepted; nothing was written")
        return
    report = task_report(item.task, fit, clean=item.clean, clean_path=item.clean_path,
                         output=item.image, bits=item.bits, status=status,
                         code=EXIT_DIVERGED if status == "diverged" else 0)
    report["batch"] = {"name": row.name, "seed": options.seed, "item_seed": result.seed,
                       "threads": options.threads or 1, "engine": engine.engine,
                       "seconds": round(result.seconds, 3)}
    try:
        item.outputs.write(fit.image, report, fit, bits=item.bits)
    except KNOWN_ERRORS as exc:
        row.status, row.error = "failed", f"writing the outputs: {one_line(exc)}"
        return
    row.seconds = round(result.seconds, 3)  # only once written: a Ctrl-C during the write
    row.status, row.output = status, str(item.image)  # leaves the item unfinished
    row.num_iter, row.num_steps = fit.num_iter, fit.num_steps
    row.stop_reason, row.stop = fit.stop_reason, short_reason(fit.stop_reason)
    row.psnr, row.ssim = fit.psnr, fit.ssim
    item.task = item.clean = None  # the arrays are not needed any more


# --------------------------------------------------------------------------- messages


def _say_plan(command: str, items: list[_Item], todo: list[_Item], outdir: Path,
              options: FitOptions, engine: EngineOptions) -> None:
    counts = Counter(item.row.status for item in items)
    for item in items:
        if item.row.status == "failed":
            typer.echo(f"failed: {item.row.name}: {item.row.error}", err=True)
    for text in dict.fromkeys(text for item in todo for text in item.task.notes):
        note(text, options)  # the inputs' notes (a kernel, a mask), each once
    noted = [item for item in todo if item.bits_note]
    if noted:
        kept = "keeps for grey images only" if engine.ext == "png" else "never keeps"
        note(f"{len(noted)} inputs have more than 8 bits per sample, which .{engine.ext} "
             f"{kept}: written with 8; --ext tif keeps 16 bits", options)
    if options.silent:
        return
    if engine.ray:
        where = f"as Ray tasks ({engine.ray})"
    elif engine.workers == 1:
        where = "in this process"
    else:
        where = (f"on {engine.workers} worker processes" if engine.workers
                 else "on worker processes (one per CPU, or per GPU)")
    typer.echo(f"batch {command}: {len(items)} inputs -> {outdir}: {len(todo)} to fit {where}, "
               f"{counts['skipped']} skipped (outputs exist; --force redoes them), "
               f"{counts['failed']} failed")


def _say_warnings(caught: list[warnings.WarningMessage], result, shown: set[str]) -> None:
    """A fit's warnings (``warning: NAME: ...``), and others raised meanwhile; each once."""
    from tqdm import tqdm

    named = set(result.warnings) if result is not None else set()
    lines = [f"warning: {result.name}: {cli_words(message)}" for message in
             (result.warnings if result is not None else ()) if message not in shown]
    lines += [f"warning: {cli_words(str(w.message))}" for w in caught
              if str(w.message) not in named and str(w.message) not in shown]
    shown.update(named, (str(w.message) for w in caught))
    caught.clear()
    for line in dict.fromkeys(lines):
        tqdm.write(line, file=sys.stderr)


def _say_item(row: Row, options: FitOptions) -> None:
    from tqdm import tqdm

    if row.status == "failed":
        tqdm.write(f"failed: {row.name}: {row.error}", file=sys.stderr)
        return
    if row.status == "diverged":
        tqdm.write(f"warning: {row.name}: the fit diverged; wrote the last good iterate "
                   f"(iteration {row.num_iter}); try a smaller --lr", file=sys.stderr)
    if not options.silent:
        psnr = "" if row.psnr is None else f", {row.psnr:.2f} dB"
        tqdm.write(f"{row.status} {row.name}: {row.stop}, iteration {row.num_iter}{psnr}, "
                   f"{row.seconds:.1f} s", file=sys.stdout)


def _say_done(summary: dict[str, Any], outdir: Path, options: FitOptions,
              interrupted: bool) -> None:
    if interrupted:
        kept = summary["done"] + summary["diverged"]
        typer.echo(f"interrupted (Ctrl-C): kept {kept} finished image{'s' * (kept != 1)}; "
                   f"{outdir / SUMMARY_CSV} lists what is left; the same command does the rest",
                   err=True)
    if options.json:
        typer.echo(json.dumps(summary, indent=2))
        return
    if options.quiet:
        return
    rate = summary["images_per_minute"]
    typer.echo(f"{summary['images']} images: {summary['done']} done, {summary['failed']} "
               f"failed, {summary['skipped']} skipped"
               + (f", {summary['diverged']} diverged" if summary["diverged"] else "")
               + (f", {summary['interrupted']} not finished" if summary["interrupted"] else "")
               + f" in {summary['seconds']:.1f} s"
               + ("" if rate is None else f" ({rate:.1f} images/min)"))
    typer.echo(f"wrote {outdir / SUMMARY_CSV}, {SUMMARY_JSON}")


# --------------------------------------------------------------------------- summary


def _finish_summary(command: str, items: list[_Item], outdir: Path, options: FitOptions,
                    engine: EngineOptions, started: float, fitting: _Fitting, *,
                    interrupted: bool, code: int) -> dict[str, Any]:
    """The summary of the batch, written to summary.csv and summary.json (atomically)."""
    rows = [item.row for item in items]
    counts = Counter(row.status for row in rows)
    fitted = counts["done"] + counts["diverged"]
    seconds = fitting.seconds
    summary = {
        "deepprior_version": deepprior.__version__,
        "command": f"batch {command}",
        "output_folder": str(outdir),
        "status": "interrupted" if interrupted else "done",
        "exit_code": code,
        "images": len(rows),
        **{status: counts[status]
           for status in ("done", "diverged", "failed", "skipped", "interrupted")},
        "seconds": round(time.perf_counter() - started, 3),
        "fit_seconds": round(seconds, 3),
        "images_per_minute": round(60 * fitted / seconds, 2) if fitted and seconds else None,
        "engine": engine.engine,
        "ray": engine.ray,
        "workers": engine.workers,
        "threads_per_fit": options.threads or 1,
        "gpus_per_fit": engine.gpus_per_fit,
        "devices": sorted(fitting.devices),
        "seed": options.seed,
        "fit_options": {key: getattr(options, key) for key in (
            "net", "norm", "channels", "iters", "lr", "lr_decay", "stop", "device", "ensemble",
            "precision", "regularizer", "regularizer_weight")},
        "items": [asdict(row) for row in rows],
    }
    summary = deepprior.jsonable(summary)
    table = io.StringIO()
    writer = csv.DictWriter(table, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in summary["items"]:
        writer.writerow({key: "" if row[key] is None else row[key] for key in CSV_COLUMNS})
    text = json.dumps(summary, indent=2)
    outdir.mkdir(parents=True, exist_ok=True)
    deepprior.write_atomic(outdir / SUMMARY_CSV,  # a name's undecodable bytes as they are
                           lambda f: f.write(table.getvalue().encode("utf-8", "surrogateescape")),
                           overwrite=True)
    deepprior.write_atomic(outdir / SUMMARY_JSON, lambda f: f.write(text.encode()),
                           overwrite=True)
    return summary
