"""What every command writes, and the rules for writing it.

Outputs are checked before any fitting starts (:func:`check_outputs`: not a directory, free or
``--overwrite``, never an input file, the folder writable) and written all or none
(:func:`all_or_none`: every file goes to a hidden temporary next to its destination, then all
are moved into place; on any failure, Ctrl-C included, what was written is removed and replaced
files are restored).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

import deepprior

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".npy")


# --------------------------------------------------------------------------- checks


def check_outputs(paths: dict[str, Path], *, overwrite: bool, inputs: Iterable[Path] = (),
                  option: str = "--overwrite") -> None:
    """Refuse outputs that cannot or must not be written, before any fit.

    ``paths`` maps a role ("image", "report", ...) to a path. Each must not be a directory,
    must be free unless ``overwrite`` (the command's ``option``), must never be one of
    ``inputs`` (even with ``overwrite``), must differ from the others, and its folder must be
    writable (or creatable inside a writable folder).
    """
    inputs = [Path(p) for p in inputs if p is not None]
    seen: dict[Path, str] = {}
    for role, path in paths.items():
        resolved = path.resolve()
        if resolved in seen:
            raise ValueError(f"{path} would be both the {seen[resolved]} and the {role}; choose "
                             "another name")
        seen[resolved] = role
        if path.is_dir():
            raise ValueError(f"{path} (the {role} output) is a directory; give a file name, e.g. "
                             f"-o {path / 'result.png'}")
        for source in inputs:
            if _same_file(path, source):
                raise ValueError(f"{path} (the {role} output) is the input file {source}; choose "
                                 f"another output name (inputs are never overwritten, even with "
                                 f"{option})")
        if not overwrite and (path.exists() or path.is_symlink()):
            raise FileExistsError(f"{path} already exists; pass {option} to replace it")
        check_writable_folder(path.parent)


def _same_file(a: Path, b: Path) -> bool:
    if not (a.exists() and b.exists()):
        return False
    return os.path.samefile(a, b)


def _nearest_existing(folder: Path) -> Path:
    """The folder, or its nearest ancestor that exists (missing folders are created there); a
    link counts as existing, so that one to a missing folder is refused, not created over."""
    existing = folder.absolute()
    while not (existing.exists() or existing.is_symlink()) and existing != existing.parent:
        existing = existing.parent
    return existing


def folds_case(folder: Path) -> bool:
    """Whether the folder's file system takes names that differ only in case for one file
    (macOS and Windows by default): a probe file in lower case, looked up in upper case. The
    folder (or its nearest existing ancestor) must be writable: :func:`check_writable_folder`."""
    handle, probe = tempfile.mkstemp(prefix=".deepprior-case-", dir=_nearest_existing(folder))
    os.close(handle)
    try:
        return os.path.exists(os.path.join(os.path.dirname(probe), os.path.basename(probe).upper()))
    finally:
        os.unlink(probe)


def check_writable_folder(folder: Path) -> None:
    """The folder, or its nearest existing ancestor (missing folders are created), is a
    writable directory: its permissions allow it and a file can be made there (a probe, made
    and removed at once, catches what permissions do not say: read-only or special file
    systems, a network share that maps root to nobody)."""
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise ValueError(f"cannot create the folder {folder}: {existing} is "
                         + (f"a link to {os.readlink(existing)}, which does not exist"
                            if existing.is_symlink() and not existing.exists() else "a file"))
    reason = None if os.access(existing, os.W_OK | os.X_OK) else "permission denied"
    if reason is None:
        try:
            handle, probe = tempfile.mkstemp(prefix=".deepprior-probe-", dir=existing)
        except OSError as error:
            reason = (error.strerror or str(error)).lower()
        else:
            os.close(handle)
            os.unlink(probe)
    if reason is not None:
        raise ValueError(f"cannot write to the folder {existing} ({reason}); choose another "
                         "output folder with -o")


# --------------------------------------------------------------------------- all or none


class Staging:
    """Files staged next to their destinations, moved into place together by :meth:`commit`."""

    def __init__(self, *, overwrite: bool, option: str = "--overwrite"):
        self.overwrite, self.option = overwrite, option
        self.staged: list[tuple[Path, Path]] = []  # (temporary, destination)
        self.created: list[Path] = []  # folders made for the outputs, outermost first

    def add(self, path: Path, write: Callable[[Path], object]) -> None:
        """Stage ``path``: ``write(temporary)`` writes the content to a file with its suffix."""
        path = Path(os.path.normpath(path))  # "new/../out/x.png": out/x.png, no folder new
        self._make_folder(path.parent)
        # a short name: the file system's limit is the output's, not the output's plus ours
        temporary = path.with_name(f".{path.stem[:32]}.{secrets.token_hex(4)}.part{path.suffix}")
        self.staged.append((temporary, path))
        write(temporary)

    def add_bytes(self, path: Path, write: Callable[[Any], object]) -> None:
        """Stage ``path``: ``write(handle)`` writes the content to a binary file object."""
        self.add(path, lambda temporary: deepprior.write_atomic(temporary, write))

    def commit(self) -> list[Path]:
        """Move every staged file into place; on failure undo the moves (restoring replaced
        files) and re-raise."""
        moved: list[Path] = []
        backups: list[tuple[Path, Path]] = []
        try:
            for temporary, path in self.staged:
                if path.is_dir():
                    raise IsADirectoryError(f"{path} became a directory during the fit; nothing "
                                            "was written")
                if path.exists() or path.is_symlink():
                    if not self.overwrite:
                        raise FileExistsError(f"{path} appeared during the fit; nothing was "
                                              f"written (pass {self.option} to replace it)")
                    backup = path.with_name(f".{path.stem[:32]}.{secrets.token_hex(4)}"
                                            f".backup{path.suffix}")  # short, as above
                    os.replace(path, backup)
                    backups.append((backup, path))
                os.replace(temporary, path)
                moved.append(path)
        except BaseException:
            for path in moved:
                path.unlink(missing_ok=True)
            for backup, path in backups:
                os.replace(backup, path)
            raise
        for backup, _ in backups:
            backup.unlink(missing_ok=True)
        self.staged = []
        return moved

    def discard(self) -> None:
        """Remove the temporaries and the folders made for them."""
        for temporary, _ in self.staged:
            temporary.unlink(missing_ok=True)
        self.staged = []
        for folder in reversed(self.created):
            with contextlib.suppress(OSError):
                folder.rmdir()
        self.created = []

    def _make_folder(self, folder: Path) -> None:
        missing = []
        while not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for path in reversed(missing):
            path.mkdir()
            self.created.append(path)


@contextlib.contextmanager
def all_or_none(*, overwrite: bool, option: str = "--overwrite") -> Iterator[Staging]:
    """Stage files in the block; they are all moved into place at its end, or none is."""
    staging = Staging(overwrite=overwrite, option=option)
    try:
        yield staging
        staging.commit()
    except BaseException:
        staging.discard()
        raise


# --------------------------------------------------------------------------- the three outputs


class Outputs:
    """The image, the JSON report and the plot of a run (and any extra file), checked at once.

    Parameters
    ----------
    image_path : Path
        The output image; the report is ``NAME.json`` and the plot ``NAME_curve.png`` beside it.
    overwrite : bool
        Replace existing files (never an input).
    inputs : iterable of Path
        The run's input files, which no output may be; the image is written with the colour
        profile the first one (the observed image) embeds, if any.
    extra : dict of role → Path
        Further files of the run (e.g. saved measurements), checked and written with the rest.
    option : str
        The command's option that allows replacing files, named in the errors (``batch``:
        ``--force``).
    """

    def __init__(self, image_path: Path, *, overwrite: bool, inputs: Iterable[Path] = (),
                 extra: dict[str, Path] | None = None, option: str = "--overwrite"):
        if image_path.is_dir():
            raise ValueError(f"{image_path} (the image output) is a directory; give a file "
                             f"name, e.g. -o {image_path / 'result.png'}")
        if image_path.suffix.lower() not in IMAGE_SUFFIXES or not image_path.stem:
            raise ValueError(f"output {image_path} must be a file name ending in "
                             f"{', '.join(IMAGE_SUFFIXES)}")
        self.image = image_path
        self.report = image_path.with_suffix(".json")
        self.plot = image_path.with_name(image_path.stem + "_curve.png")
        self.extra = dict(extra or {})
        self.overwrite, self.option = overwrite, option
        inputs = list(inputs)
        check_outputs({"image": self.image, "report": self.report, "plot": self.plot,
                       **self.extra}, overwrite=overwrite, inputs=inputs, option=option)
        observed = inputs[0] if inputs else None
        self.icc_profile = deepprior.image_icc_profile(observed) if observed else None

    def write(self, image: np.ndarray, report: dict[str, Any], result, *, bits: int = 8,
              extra: dict[str, Callable[[Any], object]] | None = None) -> None:
        """Write everything, all or none; ``extra`` maps a role to a writer of a binary handle."""
        text = json.dumps(deepprior.jsonable(report), indent=2)
        with all_or_none(overwrite=self.overwrite, option=self.option) as staging:
            staging.add(self.image, lambda t: deepprior.save_image(
                t, image, bits=bits, icc_profile=self.icc_profile))
            staging.add_bytes(self.report, lambda f: f.write(text.encode()))
            staging.add_bytes(self.plot, lambda f: plot_fit(result, f))
            for role, write in (extra or {}).items():
                staging.add_bytes(self.extra[role], write)

    def names(self) -> str:
        """The files written, for the summary line."""
        return ", ".join([str(self.image), self.report.name, self.plot.name,
                          *(str(p) for p in self.extra.values())])


def build_report(result, *, extra: dict[str, Any]) -> dict[str, Any]:
    """The JSON report of a run: configuration, stop, time and metrics."""
    spread = getattr(result, "spread", None)
    return {
        "deepprior_version": deepprior.__version__,
        **extra,
        "num_iter": result.num_iter,
        "num_steps": result.num_steps,
        "stop_reason": result.stop_reason,
        "elapsed_s": round(result.elapsed, 3),
        "seconds_per_iter": round(result.elapsed / max(result.num_steps, 1), 5),
        "device": result.device,
        "final_loss": float(result.history["loss"][-1]) if len(result.history["loss"]) else None,
        # the loss of the iterate returned (num_iter; final_loss is the last step's)
        "returned_iterate_loss": float(result.history["loss"][result.num_iter - 1])
        if 0 < result.num_iter <= len(result.history["loss"]) else None,
        "psnr": result.psnr,
        "ssim": result.ssim,
        # several fits averaged: how much they differ per pixel (std; intensities in [0, 1])
        "spread": None if spread is None else {"mean": float(spread.mean()),
                                               "max": float(spread.max())},
        "config": result.config,
    }


def plot_fit(result, handle) -> None:
    """Loss (and PSNR when known) against iteration, the returned iterate marked; for an
    average of several fits, each member's curves and returned iterate, and beside them the
    fits' per-pixel spread (``result.spread``): where they disagree."""
    from matplotlib.figure import Figure

    history = result.history
    config = result.config if isinstance(result.config, dict) else {}
    members = config.get("members") or [{  # one fit; of a mix, the one without the penalty
        "regularizer_weight": 0 if config.get("regularizer") == "mix"
        else config.get("regularizer_weight"), "num_iter": result.num_iter}]
    losses = history.get("member_loss", [history["loss"]])
    psnrs = history.get("member_psnr", [history["psnr"]] if "psnr" in history else None)
    several = len(losses) > 1
    spread = getattr(result, "spread", None)
    figure = Figure(figsize=(6 if spread is None else 9.6, 3.6), dpi=100, layout="constrained")
    ax, *side = figure.subplots(1, 1 if spread is None else 2, squeeze=False,
                                width_ratios=None if spread is None else (3, 2))[0]
    if spread is not None:  # one map: a colour image's channels as their mean
        shown = side[0].imshow(spread if spread.ndim == 2 else spread.mean(axis=2),
                               cmap="magma", vmin=0, interpolation="nearest")
        figure.colorbar(shown, ax=side[0], shrink=0.85)
        side[0].set_title(f"spread of the {len(result.members)} fits (std per pixel; "
                          f"mean {float(spread.mean()):.3g})", fontsize=9)
        side[0].set_axis_off()
    twin = ax.twinx() if psnrs is not None else None
    penalized = False
    for k, (member, loss) in enumerate(zip(members, losses, strict=True)):
        steps = np.arange(1, len(loss) + 1)
        style = {"lw": 1, "ls": ("-", "--", ":", "-.")[k % 4]}
        weight = member.get("regularizer_weight")
        penalized |= weight not in (None, 0, 0.0)
        label = f"fit {k + 1}" + (f", TV λ={weight:.2g}" if weight else "") if several else None
        ax.semilogy(steps, np.where(np.isfinite(loss) & (loss > 0), loss, np.nan),
                    color="tab:blue", label=label, **style)
        if twin is not None:
            twin.plot(steps, psnrs[k], color="tab:red", **style)
        if member.get("num_iter", 0) > 0:
            ax.axvline(member["num_iter"], color="k", lw=1, ls=style["ls"],
                       label=f"returned{f' (fit {k + 1})' if several else ''}: "
                             f"{member['num_iter']}")
    ax.set_xlabel("iteration")
    penalty = (" + penalty where λ > 0" if several else " + penalty") if penalized else ""
    ax.set_ylabel(f"training loss (MSE{penalty})", color="tab:blue")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize=8)
    if twin is not None:
        if several and result.psnr is not None:
            twin.axhline(result.psnr, color="tab:red", lw=0.8, alpha=0.5)
            twin.annotate(f"average: {result.psnr:.2f} dB", (0.01, result.psnr),
                          xycoords=("axes fraction", "data"), color="tab:red", fontsize=8,
                          va="bottom")
        twin.set_ylabel("PSNR to ground truth (dB)", color="tab:red")
    status = result.stop_reason.split(":")[0] if result.stop_reason.startswith(
        ("diverged", "interrupted")) else ""
    title = f"{config.get('net')} · norm={config.get('norm')}" + (
        f" · average of {len(losses)} fits" if several else "")
    ax.set_title(f"{title} · {status.upper()}" if status else title, fontsize=10)
    figure.savefig(handle, format="png")
