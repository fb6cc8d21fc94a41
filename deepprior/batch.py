"""Many independent reconstructions: local worker processes, or Ray tasks.

:func:`reconstruct_many` checks a whole batch before the first fit starts, runs one
:func:`deepprior.reconstruct` per item on the chosen engine and yields a :class:`BatchResult` per
item as it finishes. Each item's seed comes from the batch seed and the item's name
(:func:`item_seed`), so an image does not depend on the engine, the worker count or the order of
the items.

Engines
-------
``"local"``
    Worker processes (``concurrent.futures.ProcessPoolExecutor``, ``spawn`` context) with one
    torch thread each: as many as there are CPUs on a CPU, one per visible CUDA device on GPUs
    (several per device with ``gpus_per_fit < 1``). ``workers=1`` fits in the calling process.
``"ray"``
    One Ray task per item (``pip install "deepprior[ray]"``), with ``num_cpus=cpus_per_fit`` and
    fractional ``num_gpus=gpus_per_fit``; Ray is imported only when this engine is chosen.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import hashlib
import importlib.util
import inspect
import logging
import math
import multiprocessing
import os
import pickle
import re
import signal
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import nets
from .api import (
    DEFAULT_NETS,
    PROBLEMS,
    Reconstruction,
    _observation,
    check_sigma,
    dry_run,
    reconstruct,
    register_net,
)
from .checks import as_array, check_choice, check_float, check_int, check_lr_decay
from .fit import resolve_device
from .io import ARRAY_SUFFIXES, load_array, load_image
from .operators import as_operator
from .stopping import parse_stop

__all__ = ["ENGINES", "BatchResult", "item_seed", "reconstruct_many"]

#: The engines :func:`reconstruct_many` runs on.
ENGINES = ("local", "ray")

_RAY_HINT = 'engine="ray" needs Ray, an optional dependency: pip install "deepprior[ray]"'
_ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")  # in Ray's messages
_SEED_RANGE = 2**31  # item seeds fit every generator (torch, numpy, legacy 32-bit ones)
_RECONSTRUCT_OPTIONS = tuple(inspect.signature(reconstruct).parameters)[1:]  # all but observation


@dataclass(frozen=True)
class BatchResult:
    """The outcome of one item of :func:`reconstruct_many`.

    Attributes
    ----------
    name : str
        The item's name (given, the file's stem, or ``item<i>``).
    result : Reconstruction or None
        The reconstruction; None when the item failed.
    error : str or None
        Why the item failed, one line (``"ImageError: ...: the image data could not be
        decoded ..."``); None when it succeeded.
    seconds : float
        Wall time spent on the item: reading its files and fitting, not waiting in the queue.
    seed : int
        The seed the item was fitted with (:func:`item_seed`); ``reconstruct(..., seed=seed)``
        repeats the fit (on the CPU to the bit; see :func:`reconstruct_many`'s notes).
    warnings : tuple of str
        Warnings the item's fit raised (e.g. a size the network pads). They are also re-issued
        with :func:`warnings.warn` in this process, where the usual filters show a repeated
        message once.
    """

    name: str
    result: Reconstruction | None
    error: str | None
    seconds: float
    seed: int
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the item was reconstructed."""
        return self.error is None


def item_seed(seed: int, name: str) -> int:
    """The seed of the item called ``name`` in a batch run with base seed ``seed``.

    A BLAKE2b hash of both (not Python's per-process salted ``hash``): the same on every
    machine, engine, worker and run.

    Examples
    --------
    >>> item_seed(0, "camera") == item_seed(0, "camera") != item_seed(1, "camera")
    True
    """
    seed = check_int("seed", seed, minimum=0)
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    key = f"{seed}\0{name}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % _SEED_RANGE


def reconstruct_many(
    items: Iterable[Any],
    *,
    engine: str = "local",
    workers: int | None = None,
    address: str | None = None,
    gpus_per_fit: float | None = None,
    cpus_per_fit: float = 1,
    seed: int = 0,
    **reconstruct_kwargs: Any,
) -> Iterator[BatchResult]:
    """Reconstruct many images, each with its own fit, yielding results as they finish.

    Parameters
    ----------
    items : iterable
        Each item is one of

        - a path (``str`` or ``os.PathLike``) to an image file, read with
          :func:`deepprior.load_image` (float samples outside [0, 1] kept: ``unclipped``): a
          noisy image to denoise, or the measurements of the
          ``operator`` keyword when one is given — then also an array file (``.npy``,
          ``.npz``, ``.mat``, ``.txt``, ``.csv``: :func:`deepprior.load_array`), of any
          shape the operator's measurements take, flat too;
        - a numpy array (or torch tensor): the same, already in memory (an iterator's are
          copied as it yields them; a list's or mapping's are used as they are, without a
          copy: leave them unchanged until their results come);
        - a pair ``(measurements, operator)``: an item with its own forward model;
        - a pair ``(name, item)`` with ``name`` a string: any of the above, named.

        Names default to the file's stem for paths and to ``item<i>`` (``i`` the item's
        position) otherwise, and must be unique.
    engine : {"local", "ray"}
        Where the fits run (see Notes).
    workers : int, optional
        Local engine: fits at once. By default one per usable CPU (divided by ``cpus_per_fit``)
        on a CPU, ``devices / gpus_per_fit`` on CUDA; ``1`` fits in this process. Ray: the
        fits at once of the local cluster started when no ``address`` is given
        (``ray.init(num_cpus=workers * cpus_per_fit)``); with a cluster, at most ``2 * workers``
        items are submitted ahead.
    address : str, optional
        Ray only: the cluster to connect to (``"auto"``: the one running on this machine, or
        ``RAY_ADDRESS``); without it a local cluster is started, and shut down at the end.
        When Ray is initialised already, that connection is used and left open.
    gpus_per_fit : float in (0, 1], optional
        The share of a GPU one fit takes; ``0.25`` runs four fits per GPU. Local engine: needs
        a CUDA device (``device="cuda"``, or ``"auto"`` with CUDA). Ray: the tasks' ``num_gpus``;
        by default 1 with ``device="cuda"``, or with ``"auto"`` on a cluster that has GPUs.
    cpus_per_fit : float
        CPUs one fit takes: Ray's ``num_cpus`` per task, and the torch threads of each fit
        (``max(1, int(cpus_per_fit))``, both engines).
    seed : int
        Base seed; item ``name`` is fitted with ``item_seed(seed, name)``.
    **reconstruct_kwargs
        Passed on to :func:`deepprior.reconstruct` for every item (``net``, ``max_num_iter``,
        ``stop``, ``sigma``, ``operator``, ``net_options``, ``device``, ``callback``, ...),
        except

        - ``ground_truth``: a mapping name → clean image (an array or an image file), or a
          function ``name -> clean image or None``, for PSNR/SSIM per item. A mapping must
          only name items of the batch; a function is called in this process when the item is
          submitted (so ``clean.get`` suits a dict holding more images than the batch);
        - ``progress``: refused, a batch is silent; report progress from the loop;
        - ``sigma``: one noise level for every item, or a mapping name → σ (or None) for items
          whose levels differ; items it does not name are fitted without σ.

        A ``net`` module, a ``stop`` policy object and operators that are torch modules (the
        built-in ones) are copied for each fit; another operator object is shared by the fits
        of a process.
        With worker processes every option must pickle, and a ``callback`` runs in the worker.

    Returns
    -------
    iterator of BatchResult
        One per item, in the order the items finish. An item whose file cannot be read, whose
        ground truth cannot be had, whose fit raises or whose worker dies (twice) comes back
        with ``result=None`` and a one-line ``error``; the batch goes on.

    Raises
    ------
    ValueError, TypeError
        From the call itself, before any fit: an unknown option or engine, invalid
        ``workers``/``gpus_per_fit``/``cpus_per_fit``, duplicate names, a path that does not
        name a file, an array that is not finite or not an image, an operator that does not
        match its measurements, a ground truth for an unknown name, something that cannot be
        sent to the workers, a ``device`` with no such hardware. From the first ``next()``
        (Ray engine): a cluster without the GPUs ``gpus_per_fit`` asks for.
    ImportError
        ``engine="ray"`` without Ray installed.
    KeyboardInterrupt
        Re-raised after a Ctrl-C (see Notes).

    Notes
    -----
    **Reproducible.** Item ``name`` is fitted by ``reconstruct(..., seed=item_seed(seed, name))``
    with ``max(1, int(cpus_per_fit))`` torch threads (the caller's thread count is restored
    after an in-process fit), so on the CPU its image is bit-identical whatever the engine,
    the worker count or the items' order — for named items (a path's stem, a pair's name): an
    unnamed array is ``item<i>`` by its position. On a GPU it is close, not equal: CUDA sums some of
    a network's gradients (bilinear upsampling, reflection padding) in no fixed order, and a
    fit amplifies those last bits.

    **Checked first.** Every item and option is checked when ``reconstruct_many`` is called;
    files are read only when their item is submitted, and an unreadable or corrupt file becomes
    a failed result. Nothing runs until the iterator is advanced; worker processes and a Ray
    cluster started for the batch are stopped when it ends or is closed.

    **Ctrl-C.** A ``KeyboardInterrupt`` while the iterator waits for fits (and a fit that ends
    interrupted: Ctrl-C during an in-process fit, or a ``callback`` raising
    ``KeyboardInterrupt``) stops the batch: no further fit starts, fits not started are
    cancelled, running fits are stopped (worker processes terminated, Ray tasks cancelled) and
    their work discarded; the results that had finished are yielded, then the
    ``KeyboardInterrupt`` is raised. So a ``for`` loop sees every finished item exactly once,
    then the exception, and a rerun redoes only what is missing. Worker processes ignore
    SIGINT, so a terminal's Ctrl-C reaches only this process. A ``KeyboardInterrupt`` raised
    in the body of the caller's loop leaves the iterator suspended: close it (``closing()`` from
    :mod:`contextlib`, or ``.close()``) to stop the fits at once.

    **Local engine.** Worker processes are started with ``spawn``: a script that calls
    ``reconstruct_many`` needs the ``if __name__ == "__main__":`` guard, and networks added
    with :func:`deepprior.register_net` are registered in the workers too (their factory must
    pickle). A worker that dies (out of memory, a crash in native code) breaks its pool: the
    fits it held are retried once, one at a time in a fresh process, then reported failed.

    **Ray engine.** A task whose worker dies is retried once (``max_retries=1``), then reported
    failed; an exception raised by the fit is reported at once, never retried. Files are read
    by this process and sent to the tasks, so the cluster needs no shared file system, but
    ``deepprior`` must be installed on its nodes, and so must the modules your callbacks,
    operators or networks come from (or send them by value:
    ``ray.cloudpickle.register_pickle_by_value(module)``). Ray writes its own log lines to
    stderr, e.g. when a worker dies.

    Examples
    --------
    >>> from deepprior import add_gaussian_noise, reconstruct_many, sample_image
    >>> clean = {"camera": sample_image("camera", size=64),
    ...          "astronaut": sample_image("astronaut", size=64)}
    >>> noisy = [(name, add_gaussian_noise(image, 0.1, seed=0)) for name, image in clean.items()]
    >>> for item in reconstruct_many(noisy, workers=1, max_num_iter=10, stop="fixed:10",
    ...                              net_options={"channels": 8}, ground_truth=clean):
    ...     print(item.name, item.ok, item.result.image.shape)
    camera True (64, 64)
    astronaut True (64, 64, 3)
    """
    engine = check_choice("engine", engine, ENGINES)
    seed = check_int("seed", seed, minimum=0)
    workers = None if workers is None else check_int("workers", workers, minimum=1)
    cpus_per_fit = check_float("cpus_per_fit", cpus_per_fit, low=0, low_open=True)
    if gpus_per_fit is not None:
        gpus_per_fit = check_float("gpus_per_fit", gpus_per_fit, low=0, high=1, low_open=True)
    if address is not None and engine != "ray":
        raise ValueError(f"address={address!r} is for engine='ray'; the local engine needs none")
    if engine == "ray" and importlib.util.find_spec("ray") is None:
        raise ImportError(_RAY_HINT)
    truth_option = reconstruct_kwargs.pop("ground_truth", None)
    sigmas = reconstruct_kwargs.pop("sigma") if isinstance(
        reconstruct_kwargs.get("sigma"), Mapping) else None
    kwargs = _check_options(reconstruct_kwargs)
    parsed = _parse_items(items, kwargs.get("operator"), kwargs.get("image_shape"),
                          truth_option is not None)
    truth = _truth_source(truth_option, {item.name for item in parsed})
    images = {item.name for item in parsed if item.operator is None} if kwargs.get(
        "operator") is None and kwargs.get("problem") in (None, "denoise") else set()
    if kwargs.get("sigma") is not None:
        check_sigma("sigma", kwargs["sigma"], denoising=bool(images))
    levels = None if sigmas is None else _sigma_levels(sigmas, {item.name for item in parsed},
                                                       images)
    _dry_run(parsed, kwargs, None if truth_option is None else truth, levels)
    shared = _Shared(kwargs, max(1, int(cpus_per_fit)), _registration(kwargs.get("net")))
    parts = {**{f"option {k}": v for k, v in kwargs.items()},
             **{f"the operator of item {i.name!r}": i.operator for i in parsed
                if i.operator is not None},
             **{f"the network factory of {name!r}": factory
                for name, factory, _ in shared.registration}}
    device = kwargs.get("device", "auto")
    if engine == "ray":
        import ray.cloudpickle  # engine="ray" was chosen: Ray may be imported now

        _check_sendable(parts, ray.cloudpickle.dumps, "Ray tasks")
        gpu = _ray_gpu_request(device, gpus_per_fit)
        start = {"address": address, "workers": workers, "cpus_per_fit": cpus_per_fit, "gpu": gpu}
        return _stream(parsed, truth, levels, seed, lambda: _RayEngine(shared, **start))
    slots = _local_slots(device, workers, gpus_per_fit, cpus_per_fit)
    if sum(size for _, size in slots) == 1:
        return _stream(parsed, truth, levels, seed, lambda: _InProcess(shared, slots[0][0]))
    _check_sendable(parts, pickle.dumps, "worker processes")
    return _stream(parsed, truth, levels, seed, lambda: _LocalPool(shared, slots))


# --------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class _Item:
    """An item as parsed: its name and what to fit (a file to read, or an array)."""

    name: str
    path: Path | None = None
    array: np.ndarray | None = None
    operator: Any = None
    measurements: bool = False  # a file of an operator's measurements (.npy, .mat, ...)

    def observation(self) -> np.ndarray:
        """The array in memory, or the file read: measurements with :func:`load_array` (any
        shape, a flat vector too), an image with :func:`load_image`."""
        if self.array is not None:
            return self.array
        return load_array(self.path) if self.measurements else load_image(self.path,
                                                                          unclipped=True)


def _check_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The options for :func:`reconstruct`, checked as far as they can be without data."""
    for key in kwargs:
        if key == "observation":
            raise TypeError("reconstruct_many() takes the observations as items, not "
                            "observation=...")
        if key not in _RECONSTRUCT_OPTIONS:
            raise TypeError(f"reconstruct_many() got an unexpected keyword argument {key!r}; "
                            f"it passes these on to reconstruct(): "
                            f"{', '.join(o for o in _RECONSTRUCT_OPTIONS if o != 'seed')}")
    if kwargs.get("progress"):
        raise ValueError("progress=True is not available in a batch (bars of parallel fits "
                         "would interleave); report progress from the loop over the results")
    kwargs.pop("progress", None)
    if kwargs.get("max_num_iter") is not None:
        check_int("max_num_iter", kwargs["max_num_iter"], minimum=1)
    for key in ("sigma", "learning_rate"):
        if kwargs.get(key) is not None:
            check_float(key, kwargs[key], low=0.0, low_open=key == "learning_rate")
    check_lr_decay(kwargs.get("lr_decay"))
    net, options = kwargs.get("net"), kwargs.get("net_options")  # None: the problem's default
    if isinstance(net, str):
        nets.canonical_name(net)
    elif net is not None and not isinstance(net, nn.Module):
        raise TypeError(f"net must be a network name or an nn.Module, got {type(net).__name__}")
    elif net is not None and options:
        raise ValueError("net_options apply to named networks; configure your module directly")
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(f"net_options must be a mapping, got {type(options).__name__}")
    stop = kwargs.get("stop", "auto")
    if isinstance(stop, str):
        if stop != "auto":
            parse_stop(stop)
    elif not all(hasattr(stop, name) for name in ("update", "best_step", "reason")):
        raise TypeError(f"stop must be a spec or a policy with update(step, loss, output), "
                        f"best_step and reason; got {type(stop).__name__}")
    return kwargs


def _parse_items(items: Iterable[Any], operator: Any, image_shape: Any,
                 has_truth: bool) -> list[_Item]:
    """Every item named and checked; ValueError/TypeError on the first bad one."""
    if isinstance(items, str | os.PathLike | np.ndarray | torch.Tensor):
        raise TypeError(f"items must be an iterable of items, got a single "
                        f"{type(items).__name__}; wrap it in a list: [item]")
    # an iterator's arrays are copied as it yields them (a generator may reuse its buffer); a
    # list's or mapping's are the caller's, kept by reference (no second copy of a folder)
    copy = not isinstance(items, Sequence | Mapping)
    if isinstance(items, Mapping):  # name -> item, as sigma and ground_truth take them
        items = list(items.items())
    parsed, missing = [], []
    for index, raw in enumerate(items):
        name = None
        if isinstance(raw, tuple) and len(raw) == 2 and isinstance(raw[0], str):
            name, raw = raw
            if not name:
                raise ValueError(f"item {index} has an empty name")
        item = _parse_item(index, name, raw, copy)
        label = f"item {item.name!r}"
        if item.path is not None:
            if not item.path.is_file():
                missing.append(str(item.path))
            item = replace(item, measurements=operator is not None
                           and item.path.suffix.lower() in ARRAY_SUFFIXES)
        elif item.operator is not None and operator is not None:
            raise ValueError(f"{label} brings its own operator, and operator= is given too; "
                             "give the operator either per item or for the batch")
        else:
            _check_observation(label, item, operator, image_shape, has_truth)
        parsed.append(item)
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5
                                          else "")
        raise ValueError(f"{len(missing)} of {len(parsed)} items name no file: {shown}; check "
                         "the paths and the working folder")
    _check_unique([item.name for item in parsed])
    return parsed


def _parse_item(index: int, name: str | None, raw: Any, copy: bool) -> _Item:
    if isinstance(raw, str | os.PathLike):
        path = Path(os.fspath(raw))
        return _Item(name or path.stem, path=path)
    label = name or f"item{index}"
    pair = isinstance(raw, tuple) and len(raw) == 2 and isinstance(raw[0], np.ndarray
                                                                   | torch.Tensor)
    if pair or isinstance(raw, np.ndarray | torch.Tensor):
        array = as_array(f"item {label!r}", raw[0] if pair else raw, finite=False)
        return _Item(label, array=array.copy() if copy else array,
                     operator=raw[1] if pair else None)
    what = f"item {index}" + (f" ({name!r})" if name else "")
    raise TypeError(f"{what} must be a path, an array, a pair (measurements, operator) or a "
                    f"pair (name, item), got {type(raw).__name__}")


def _check_observation(label: str, item: _Item, operator: Any, image_shape: Any,
                       has_truth: bool) -> None:
    """What reconstruct checks of an observation: an image on the [0, 1] scale, at least 4×4,
    for denoising; as many entries as its operator gives, in its shape or flat."""
    operator = item.operator if item.operator is not None else operator
    if operator is not None:
        try:
            operator = as_operator(operator, image_shape)
        except ValueError as exc:
            if has_truth and image_shape is None:  # reconstruct takes it from the ground truth
                return
            raise ValueError(f"{label}: {exc}") from exc
        except TypeError as exc:
            raise TypeError(f"{label}: {exc}") from exc
    try:
        _observation(item.array, operator, None)
    except ValueError as exc:
        raise ValueError(f"{label}: {exc}") from exc


#: Items :func:`_dry_run` tries before it takes a failure for the call's, not the item's.
_DRY_RUN_TRIES = 8


def _dry_run(items: list[_Item], kwargs: dict[str, Any], truth: Callable[[str], Any] | None,
             levels: dict[str, float | None] | None) -> None:
    """reconstruct's own checks, up to its first fit (:func:`dry_run`), on an item, with its
    own σ and ground truth: the options whose errors only data shows (net_options, the
    penalty, the ensemble, σ's scale, an oracle stop) fail now rather than in every fit. An
    item that fails for its own data (its size against the network, a file that cannot be
    read, no ground truth where others have one) is left to fail alone and the next one is
    tried; the first item's error is raised only when none of the first
    :data:`_DRY_RUN_TRIES` passes. In-memory items are tried first; a file is read only when
    none is."""
    failures: list[tuple[str, Exception]] = []
    for item in sorted(items, key=lambda item: item.array is None):
        if len(failures) == _DRY_RUN_TRIES:
            break
        operator = item.operator if item.operator is not None else kwargs.get("operator")
        options = {**kwargs, "operator": operator, "device": "cpu"}  # engines check devices
        options.pop("on_start", None)  # the fits' own
        if levels is not None and levels[item.name] is not None:
            options["sigma"] = levels[item.name]
        with warnings.catch_warnings():  # the fits will say them
            warnings.simplefilter("ignore")
            try:
                observation = item.observation()
                clean = None if truth is None else _clean_image(item.name, truth)
            except Exception:  # noqa: BLE001 - its own failure, at its turn
                continue
            if truth is not None and clean is None:  # its fit says what that lacks
                continue
            try:
                dry_run(observation, ground_truth=clean, **options)
                return
            except (ValueError, TypeError) as exc:
                failures.append((item.name, exc))
    if failures:
        name, exc = failures[0]
        more = f" (and on the next {len(failures) - 1} items tried)" if len(failures) > 1 else ""
        raise type(exc)(f"checked on item {name!r}{more}: {exc}") from exc


def _check_unique(names: list[str]) -> None:
    seen: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        seen.setdefault(name, []).append(index)
    duplicates = {name: where for name, where in seen.items() if len(where) > 1}
    if duplicates:
        shown = "; ".join(f"{name!r} (items {', '.join(map(str, where))})"
                          for name, where in list(duplicates.items())[:5])
        raise ValueError(f"item names must be unique, found {shown}; name items with "
                         "(name, item) pairs")


def _sigma_levels(sigmas: Mapping[str, Any], names: set[str],
                  images: set[str]) -> dict[str, float | None]:
    """Each item's noise level from a ``sigma`` mapping, checked (unnamed items: None); for
    the ``images`` to denoise, on the [0, 1] scale."""
    unknown = sorted(str(key) for key in sigmas if key not in names)
    if unknown:
        raise ValueError(f"sigma names {len(unknown)} items that are not in the batch: "
                         f"{', '.join(unknown[:5])}")
    given = {name: None if value is None else check_sigma(f"sigma of {name!r}", value,
                                                          denoising=name in images)
             for name, value in sigmas.items()}
    return {name: given.get(name) for name in names}


def _truth_source(option: Any, names: set[str]) -> Callable[[str], Any]:
    """``name -> clean image, path or None`` from the ``ground_truth`` option, checked."""
    if option is None:
        return lambda name: None
    if isinstance(option, Mapping):
        unknown = sorted(str(key) for key in option if key not in names)
        if unknown:
            raise ValueError(f"ground_truth names {len(unknown)} items that are not in the "
                             f"batch: {', '.join(unknown[:5])}; pass a function such as "
                             "dict.get to look names up in a larger collection")
        for name, value in option.items():
            if isinstance(value, str | os.PathLike):
                if not Path(os.fspath(value)).is_file():
                    raise ValueError(f"ground_truth of {name!r}: no such file {value}")
            else:
                as_array(f"ground_truth of {name!r}", value)
        return option.get
    if callable(option):
        return option
    raise TypeError(f"ground_truth must map item names to clean images (arrays or files) or be "
                    f"a function name -> clean image, got {type(option).__name__}; for one "
                    "image use reconstruct(image, ground_truth=clean)")


def _registration(net: Any) -> tuple[tuple[str, Callable[..., nn.Module], dict[str, Any]], ...]:
    """What a fresh worker needs to build the batch's network as this process does: the one
    named, or (``net=None``) the problems' default networks that were registered anew."""
    if isinstance(net, str):
        names = [nets.canonical_name(net)]
    elif net is None:
        names = [name for name in dict.fromkeys(DEFAULT_NETS.values())
                 if not nets.is_built_in(name)]
    else:  # a module: sent as it is
        names = []
    return tuple((name, nets._NETS[name], {problem: row[name] for problem, row in
                                           PROBLEMS.items() if name in row}) for name in names)


def _register(shared: _Shared) -> None:
    """In a worker: the networks of the batch, registered as in the calling process."""
    for name, factory, rows in shared.registration:
        register_net(name, factory, defaults=rows, replace=True)


def _check_sendable(parts: Mapping[str, Any], dumps: Callable[[Any], bytes], where: str) -> None:
    """Every option, operator and network factory pickles (with ``dumps``)."""
    interactive = not hasattr(sys.modules.get("__main__"), "__file__")
    for label, value in parts.items():
        if value is None:
            continue
        defined = getattr(value, "__module__", None) or type(value).__module__
        if where == "worker processes" and interactive and defined == "__main__":
            raise ValueError(f"{label} is defined in an interactive session, which {where} "
                             "cannot import; move it into a module, or use workers=1 (fits in "
                             "this process) or engine='ray'")
        try:
            dumps(value)
        except Exception as exc:
            raise ValueError(f"{label} cannot be sent to {where} ({_one_line(exc)}); define it "
                             "at module level (not a lambda or a local function), or use "
                             "workers=1 (fits in this process)") from None


def _local_slots(device: Any, workers: int | None, gpus_per_fit: float | None,
                 cpus_per_fit: float) -> list[tuple[str, int]]:
    """``[(device, fits at once)]`` of the local engine: one entry per device used."""
    resolved = resolve_device(device)
    if resolved.type == "cuda":
        if resolved.index is not None:
            devices = [str(resolved)]
        else:
            devices = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        per_device = int(1 / (gpus_per_fit or 1.0) + 1e-9)
        capacity = len(devices) * per_device
        if workers is None:
            workers = capacity
        elif workers > capacity:
            raise ValueError(
                f"workers={workers} is more fits than {len(devices)} CUDA device(s) hold at "
                f"gpus_per_fit={gpus_per_fit or 1:g} ({capacity}); lower gpus_per_fit or workers")
        counts = [workers // len(devices) + (i < workers % len(devices))
                  for i in range(len(devices))]
        return [(name, count) for name, count in zip(devices, counts, strict=True) if count]
    if gpus_per_fit is not None:
        raise ValueError(f"gpus_per_fit={gpus_per_fit:g} needs a CUDA device, but the fits run "
                         f"on {resolved.type} (device={device!r}); leave gpus_per_fit unset")
    if resolved.type == "cpu" and workers is None:
        workers = max(1, int(_usable_cpus() / cpus_per_fit + 1e-9))
    return [(str(resolved), workers or 1)]


def _usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _ray_gpu_request(device: Any, gpus_per_fit: float | None) -> float | None:
    """The GPUs per task asked for: a share, 0 for none, None for "GPUs if the cluster has"."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"with engine='ray' device must be 'auto', 'cpu' or 'cuda' (Ray assigns "
                         f"the GPU), got {device!r}")
    if device == "cpu":
        if gpus_per_fit is not None:
            raise ValueError("gpus_per_fit asks for GPUs but device='cpu'; drop one of them")
        return 0.0
    if device == "cuda":
        return gpus_per_fit or 1.0
    return gpus_per_fit


def _one_line(exc: BaseException) -> str:
    text = " ".join(_ANSI_COLOUR.sub("", str(exc)).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --------------------------------------------------------------------------- one fit


@dataclass(frozen=True)
class _Shared:
    """What every fit of the batch shares: the options, the thread count, the network."""

    kwargs: dict[str, Any]
    threads: int
    registration: tuple[tuple[str, Callable[..., nn.Module], dict[str, Any]], ...]


@dataclass(frozen=True)
class _Task:
    """One fit to run: the data of one item, and the device it runs on."""

    name: str
    seed: int
    observation: np.ndarray
    operator: Any
    ground_truth: np.ndarray | None
    load_seconds: float
    device: str | None = None
    attempts: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # the item's own (its σ)


@dataclass(frozen=True)
class _Outcome:
    """What a fit sends back: a result or a one-line error, and its warnings."""

    result: Reconstruction | None = None
    error: str | None = None
    seconds: float = 0.0
    interrupted: bool = False
    warnings: tuple[tuple[str, type[Warning]], ...] = ()


_WORKER_SHARED: _Shared | None = None  # set in each worker process by _init_worker


def _init_worker(shared: _Shared) -> None:
    """Start of a worker process: ignore Ctrl-C (the parent handles it), threads, registry."""
    global _WORKER_SHARED
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(shared.threads)
    _register(shared)
    _WORKER_SHARED = shared


def _fit_one(task: _Task, shared: _Shared | None = None) -> _Outcome:
    """Run one fit; exceptions become a one-line error, warnings are recorded."""
    shared = shared or _WORKER_SHARED
    start = time.perf_counter()
    kwargs = dict(shared.kwargs)
    for key in ("net", "stop"):  # stateful objects: each fit starts from the caller's copy
        if key in kwargs and not isinstance(kwargs[key], str):
            kwargs[key] = copy.deepcopy(kwargs[key])
    if task.operator is not None:
        kwargs["operator"] = task.operator
    if isinstance(kwargs.get("operator"), nn.Module):  # fit moves it to the device in place
        kwargs["operator"] = copy.deepcopy(kwargs["operator"])
    if task.device is not None:
        kwargs["device"] = task.device
    kwargs.update(task.options)
    result = error = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = reconstruct(_writable(task.observation), seed=task.seed,
                                 ground_truth=_writable(task.ground_truth), **kwargs)
        except Exception as exc:  # reported as the item's error; the batch goes on
            error = _one_line(exc)
    seconds = task.load_seconds + time.perf_counter() - start
    interrupted = result is not None and result.stop_reason.startswith("interrupted")
    return _Outcome(None if interrupted else result, error, seconds, interrupted,
                    tuple((str(w.message), w.category) for w in caught))


def _writable(array: np.ndarray | None) -> np.ndarray | None:
    """A writable array (Ray hands tasks read-only views of its object store)."""
    if array is not None and not array.flags.writeable:
        return array.copy()
    return array


# --------------------------------------------------------------------------- engines


class _InProcess:
    """Fits one at a time in this process, with the batch's torch threads."""

    def __init__(self, shared: _Shared, device: str):
        self.shared, self.device, self.capacity = shared, device, 1
        self.pending: list[_Task] = []

    def submit(self, task: _Task) -> None:
        self.pending.append(replace(task, device=self.device))

    def wait(self) -> list[tuple[_Task, _Outcome]]:
        task = self.pending.pop(0)
        previous = torch.get_num_threads()
        torch.set_num_threads(self.shared.threads)
        try:
            return [(task, _fit_one(task, self.shared))]
        finally:
            torch.set_num_threads(previous)

    def stop(self) -> list[tuple[_Task, _Outcome]]:
        self.pending.clear()
        return []

    def close(self) -> None:
        self.pending.clear()


@dataclass
class _Slot:
    """The worker processes of one device: a pool, and a one-process pool for retries."""

    device: str
    size: int
    load: int = 0  # fits of this device not finished (running, queued or waiting to retry)
    pool: cf.ProcessPoolExecutor | None = None
    alone: cf.ProcessPoolExecutor | None = None
    retries: list[_Task] = field(default_factory=list)
    retrying: bool = False  # a retry runs in `alone`


class _LocalPool:
    """Worker processes (spawn), one pool per device.

    Each pool holds one fit more than it has workers, so that a worker that finishes starts
    the next fit without waiting for this process. A worker that dies breaks its pool, and
    with it every fit the pool held. Those fits are retried once, one after the other in a
    one-process pool, so that only the fit that killed its worker dies again; a fresh pool
    takes the new fits.
    """

    def __init__(self, shared: _Shared, slots: list[tuple[str, int]]):
        self.shared = shared
        self.slots = [_Slot(device, size) for device, size in slots]
        self.capacity = sum(slot.size + 1 for slot in self.slots)
        self.running: dict[cf.Future, tuple[_Task, _Slot, cf.ProcessPoolExecutor]] = {}

    def _executor(self, slot: _Slot, alone: bool) -> cf.ProcessPoolExecutor:
        executor = slot.alone if alone else slot.pool
        if executor is None:
            executor = cf.ProcessPoolExecutor(
                max_workers=1 if alone else slot.size,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker, initargs=(self.shared,))
            if alone:
                slot.alone = executor
            else:
                slot.pool = executor
        return executor

    def submit(self, task: _Task) -> None:
        slot = min(self.slots, key=lambda s: s.load / s.size)  # the least loaded device
        slot.load += 1
        task = replace(task, device=slot.device)
        executor = self._executor(slot, alone=False)
        self.running[executor.submit(_fit_one, task)] = (task, slot, executor)

    def _next_retry(self, slot: _Slot) -> None:
        if slot.retries and not slot.retrying:
            task = slot.retries.pop(0)
            executor = self._executor(slot, alone=True)
            self.running[executor.submit(_fit_one, task)] = (task, slot, executor)
            slot.retrying = True

    def wait(self) -> list[tuple[_Task, _Outcome]]:
        done, _ = cf.wait(list(self.running), return_when=cf.FIRST_COMPLETED)
        return [finished for future in done if (finished := self._collect(future))]

    def _collect(self, future: cf.Future) -> tuple[_Task, _Outcome] | None:
        task, slot, executor = self.running.pop(future)
        if task.attempts:
            slot.retrying = False
        try:
            outcome = future.result()
        except cf.BrokenExecutor as exc:
            self._discard(slot, executor)
            if task.attempts == 0:
                slot.retries.append(replace(task, attempts=1))
                self._next_retry(slot)
                return None
            outcome = _Outcome(
                error="the worker process died twice, the second time running this fit alone "
                      "(out of memory, a crash in native code, or a script calling "
                      "reconstruct_many without the if __name__ == '__main__': guard): "
                      f"{_one_line(exc)}",
                seconds=task.load_seconds)
        except Exception as exc:  # e.g. a result that cannot be sent back
            outcome = _Outcome(error=_one_line(exc), seconds=task.load_seconds)
        slot.load -= 1
        self._next_retry(slot)
        return task, outcome

    def _discard(self, slot: _Slot, executor: cf.ProcessPoolExecutor) -> None:
        """Forget a broken pool (a fresh one starts on the next submit)."""
        if slot.pool is executor:
            slot.pool = None
        elif slot.alone is executor:
            slot.alone = None
        executor.shutdown(wait=False, cancel_futures=True)

    def stop(self) -> list[tuple[_Task, _Outcome]]:
        finished = [(task, future.result()) for future, (task, _, _) in self.running.items()
                    if future.done() and not future.cancelled() and future.exception() is None]
        self.close()
        return finished

    def close(self) -> None:
        busy = bool(self.running)
        self.running.clear()
        for slot in self.slots:
            for executor in (slot.pool, slot.alone):
                if executor is None:
                    continue
                if busy:
                    _terminate(executor)
                else:
                    executor.shutdown(wait=True)
            slot.pool = slot.alone = None
            slot.retries.clear()


def _terminate(executor: cf.ProcessPoolExecutor) -> None:
    """Stop a pool now, killing the fits it runs; return once its workers are reaped.

    The pool's own thread reaps the workers it sees die; it is joined too, so that no worker
    it reaped still reads as alive here (two threads waiting on one child race for its status).
    """
    processes = list((getattr(executor, "_processes", None) or {}).values())
    thread = getattr(executor, "_executor_manager_thread", None)
    terminate = getattr(executor, "terminate_workers", None)  # Python >= 3.14
    if terminate is not None:
        terminate()
    else:
        for process in processes:
            if process.is_alive():
                process.terminate()
    executor.shutdown(wait=False, cancel_futures=True)
    if thread is not None:
        thread.join(timeout=10)
    for process in processes:
        process.join(timeout=10)


def _ray_fit(task: _Task, shared: _Shared) -> _Outcome:
    """The body of a Ray task (a plain function: ``ray.remote`` wraps it when chosen)."""
    torch.set_num_threads(shared.threads)
    _register(shared)
    return _fit_one(task, shared)


class _RayEngine:
    """One Ray task per item; the window of submitted tasks is twice the fits at once."""

    def __init__(self, shared: _Shared, *, address: str | None, workers: int | None,
                 cpus_per_fit: float, gpu: float | None):
        import ray

        self.ray = ray
        self.running: dict[Any, tuple[_Task, float]] = {}
        self.started = not ray.is_initialized()
        if self.started:
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                       "logging_level": logging.ERROR}
            if address is None and workers is not None:
                options["num_cpus"] = math.ceil(workers * cpus_per_fit)
            ray.init(address=address, **options)
        try:
            resources = ray.cluster_resources()
            gpu = self._gpus(resources, gpu)
            at_once = workers or max(1, int(resources.get("CPU", 1) / cpus_per_fit + 1e-9))
            if gpu:
                at_once = min(at_once, max(1, int(resources.get("GPU", 0) / gpu + 1e-9)))
        except BaseException:
            self.close()
            raise
        self.capacity = 2 * at_once
        self.device = "cuda" if gpu else "cpu"
        self.shared = ray.put(shared)
        self.remote = ray.remote(_ray_fit).options(
            num_cpus=cpus_per_fit, num_gpus=gpu or 0, max_retries=1, retry_exceptions=False)

    def _gpus(self, resources: Mapping[str, float], gpu: float | None) -> float:
        """The GPUs per task, checked against the cluster."""
        available = resources.get("GPU", 0)
        if gpu is None:  # device="auto": GPUs when the cluster has them
            return 1.0 if available else 0.0
        if gpu and available < gpu:
            message = (f"the Ray cluster has {available:g} GPUs, and each fit asks for "
                       f"{gpu:g} (gpus_per_fit / device='cuda')")
            if self.started and available == 0:
                raise ValueError(f"{message}; use device='cpu' or a cluster with GPUs")
            warnings.warn(f"{message}; tasks wait until GPUs join the cluster", stacklevel=5)
        return gpu

    def submit(self, task: _Task) -> None:
        task = replace(task, device=self.device)
        self.running[self.remote.remote(task, self.shared)] = (task, time.perf_counter())

    def wait(self) -> list[tuple[_Task, _Outcome]]:
        refs = list(self.running)
        ready, rest = self.ray.wait(refs, num_returns=1)
        if rest:
            ready += self.ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        return [self._collect(ref) for ref in ready]

    def _collect(self, ref: Any) -> tuple[_Task, _Outcome]:
        task, submitted = self.running.pop(ref)
        try:
            return task, self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:  # the worker died, and died on the retry
            seconds = task.load_seconds + time.perf_counter() - submitted
            return task, _Outcome(error=f"the Ray task failed: {_one_line(exc)}",
                                  seconds=seconds)

    def stop(self) -> list[tuple[_Task, _Outcome]]:
        refs = list(self.running)
        ready = self.ray.wait(refs, num_returns=len(refs), timeout=0)[0] if refs else []
        finished = [self._collect(ref) for ref in ready]
        self.close()
        return finished

    def close(self) -> None:
        for ref in self.running:
            self.ray.cancel(ref, force=True)
        self.running.clear()
        if self.started:
            self.ray.shutdown()
            self.started = False


# --------------------------------------------------------------------------- the loop


def _clean_image(name: str, truth: Callable[[str], Any]) -> np.ndarray | None:
    """An item's ground truth as float32 numpy (read when a file), or None."""
    clean = truth(name)
    if isinstance(clean, str | os.PathLike):
        return load_image(clean)
    # numpy float32, whatever came (bfloat16 tensors too)
    return None if clean is None else as_array(f"ground_truth of {name!r}", clean)


def _tasks(items: list[_Item], truth: Callable[[str], Any], seed: int,
           levels: dict[str, float | None] | None) -> Iterator[_Task | BatchResult]:
    """Read each item's files when it is due; a failure to do so is the item's result."""
    for item in items:
        start = time.perf_counter()
        item_seed_ = item_seed(seed, item.name)
        try:
            observation = item.observation()
            clean = _clean_image(item.name, truth)
        except Exception as exc:  # a corrupt file, a ground truth that cannot be had
            yield BatchResult(item.name, None, _one_line(exc), time.perf_counter() - start,
                              item_seed_)
            continue
        yield _Task(item.name, item_seed_, observation, item.operator, clean,
                    time.perf_counter() - start,
                    options={} if levels is None else {"sigma": levels[item.name]})


def _result(task: _Task, outcome: _Outcome, shown: set[tuple[str, type]]) -> BatchResult:
    """The item's result, its arrays writable (Ray's come read-only from its object store);
    its warnings re-issued here, each once per batch (``shown``: those issued so far). A
    warning the caller's filter turns into an error fails the item, not the batch."""
    result, error = outcome.result, outcome.error
    try:
        for message, category in outcome.warnings:
            if (message, category) not in shown:
                shown.add((message, category))
                warnings.warn(message, category, stacklevel=3)
    except Warning as exc:
        result, error = None, f"a warning the warnings filter makes an error: {_one_line(exc)}"
    if result is not None and not result.image.flags.writeable:
        result = replace(result, image=result.image.copy(), history={
            key: np.array(value) for key, value in result.history.items()},
            members=None if result.members is None else result.members.copy())
    return BatchResult(task.name, result, error, outcome.seconds, task.seed,
                       tuple(message for message, _ in outcome.warnings))


def _stream(items: list[_Item], truth: Callable[[str], Any],
            levels: dict[str, float | None] | None, seed: int,
            start_engine: Callable[[], Any]) -> Iterator[BatchResult]:
    """Keep the engine's capacity busy, yield results as they come; see reconstruct_many."""
    tasks = _tasks(items, truth, seed, levels)
    engine = None
    in_flight = 0
    ready: list[BatchResult] = []
    shown: set[tuple[str, type]] = set()  # the warnings issued, each once
    try:
        engine = start_engine() if items else None
        exhausted = engine is None
        while True:
            while not exhausted and in_flight < engine.capacity:
                task = next(tasks, None)
                if task is None:
                    exhausted = True
                elif isinstance(task, BatchResult):
                    ready.append(task)
                else:
                    engine.submit(task)
                    in_flight += 1
            while ready:
                yield ready.pop(0)
            if in_flight == 0:
                if exhausted:
                    return
                continue
            interrupted = False
            for task, outcome in engine.wait():
                in_flight -= 1
                interrupted = interrupted or outcome.interrupted
                if not outcome.interrupted:
                    ready.append(_result(task, outcome, shown))
            if interrupted:
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        finished = engine.stop() if engine is not None else []
        ready += [_result(task, outcome, shown) for task, outcome in finished
                  if not outcome.interrupted]
        while ready:
            yield ready.pop(0)
        raise
    finally:
        if engine is not None:
            engine.close()
