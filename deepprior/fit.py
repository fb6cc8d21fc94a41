"""The fitting loop: Adam on ‖A·net(z) − y‖², asking a stopping policy when to stop.

The loop knows no network by name. It sees a module, its fixed input ``z``, the observation
``y``, a linear operator with ``A`` and a stopping policy (see :mod:`deepprior.stopping`), and
returns the iterate the policy selects together with the history of the run.
:func:`fit_many` runs K such fits of one architecture as one batch, each with its own
observation, operator, policy and stopping state.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, vmap

from .checks import check_choice, check_float, check_int, check_lr_decay
from .metrics import psnr_tensor
from .stopping import FirstOf, Shadow, _check_policy, _finalize, feed

__all__ = ["PRECISIONS", "FitResult", "FitState", "fit", "fit_many", "resolve_device"]

#: Arithmetic of the network's forward and backward passes: ``"fp32"``, or ``"bf16"``
#: (``torch.autocast`` to bfloat16: convolutions and matrix products in bfloat16, weights, Adam,
#: the loss and the returned images in float32).
PRECISIONS = ("fp32", "bf16")

#: A loss above this factor times the lowest loss since the last snapshot counts as a jump
#: (5 dB, the Deep Image Prior code's "backtracking" threshold) ...
JUMP_FACTOR = 10 ** (5 / 10)
#: ... if it is also above this fraction of the first iteration's loss. Near an exact fit
#: (noiseless compressive sensing, super-resolution, inpainting drive the loss toward 0)
#: Adam's ordinary spikes are large relative to the current loss but small against the loss
#: the fit started from, and must not count: at 1e-2, a Deep Decoder fitting a ×2
#: super-resolution of camera 64² was stopped as "diverged" at iteration 343 by a spike from
#: 0.0005 to 0.0015 (first loss 0.10). A fit that truly diverges loses most of its progress.
JUMP_FLOOR = 0.1
#: ... and if the fit is past its first iterations: Adam's start-up transient is no divergence.
#: A Deep Image Prior fitting a flat 64² image (an output near its first one) rose from a loss of
#: 0.0076 to 0.063 at iteration 4 and was at 0.0005 by iteration 8; counted, it stopped as
#: "diverged" at iteration 8, where unguarded it converged. A non-finite loss always counts.
JUMP_WARMUP = 20


@dataclass
class FitState:
    """What a callback sees after each iteration's backward pass (gradients are populated).

    The callback may read anything but must not modify the network or the optimizer.
    """

    step: int
    net: nn.Module
    z: torch.Tensor
    y: torch.Tensor
    operator: Any
    loss: float
    output: torch.Tensor
    optimizer: torch.optim.Optimizer

    def __repr__(self) -> str:
        return short_repr(self)

    def loss_fn(self, out: torch.Tensor) -> torch.Tensor:
        """The fit's data term as a function of the network output, ``mean((A·out − y)²)``
        (without a ``penalty``)."""
        return torch.mean((self.operator.A(out) - self.y) ** 2)


@dataclass(frozen=True)
class FitResult:
    """Outcome of :func:`fit`.

    Attributes
    ----------
    output : torch.Tensor
        The selected iterate, (1, C, H, W), on the CPU.
    best_step : int
        1-based iteration whose output is returned: the policy's choice, or the last
        iteration where the policy chose none (a rule reading every k-th iteration in a
        budget shorter than k); 0 only when no iteration was accepted.
    num_steps : int
        Iterations run.
    stop_reason : str
        Why the loop stopped and which iterate it returns.
    loss : np.ndarray
        Training loss per iteration (iterations rolled back by the divergence guard included).
    psnr : np.ndarray | None
        PSNR of each iterate against the ground truth, when one was given.
    elapsed : float
        Wall time of the loop in seconds (:func:`fit_many`: from its start to this fit's stop).
    num_restarts : int
        How often the divergence guard restored earlier weights.
    final_learning_rate : float
        Learning rate at the end (halved at each restart, decayed by the schedule).
    """

    output: torch.Tensor
    best_step: int
    num_steps: int
    stop_reason: str
    loss: np.ndarray
    psnr: np.ndarray | None
    elapsed: float
    num_restarts: int
    final_learning_rate: float

    def __repr__(self) -> str:
        return short_repr(self)


def short_repr(result: Any) -> str:
    """A dataclass in one line that a notebook can show: arrays and tensors as their dtype and
    shape, floats to four digits, long dicts cut after two entries, multi-line objects (a
    network, an optimizer) as their type."""
    def brief(value: Any) -> str:
        if isinstance(value, (np.ndarray, torch.Tensor)):
            return f"{str(value.dtype).removeprefix('torch.')}{tuple(value.shape)}"
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, dict):
            items = [f"{key!r}: {brief(item)}" for key, item in value.items()]
            return "{" + ", ".join(items if len(items) <= 3 else items[:2] + ["…"]) + "}"
        text = repr(value)  # a network or an optimizer: its type, not its pages
        return f"<{type(value).__name__}>" if "\n" in text else text

    shown = ", ".join(f"{f.name}={brief(getattr(result, f.name))}" for f in fields(result))
    return f"{type(result).__name__}({shown})"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"`` into CUDA, else Apple MPS, else CPU; validate anything else.

    Raises
    ------
    ValueError
        If the device string is malformed or names a backend that is not available.
    """
    if isinstance(device, torch.device):  # checked as its name is
        device = str(device)
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}"
        ) from exc
    if resolved.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got "
                         f"{device!r}")
    if resolved.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise ValueError(f"CUDA is not available here, so device={device!r} cannot be used; "
                             "use 'cpu' or 'auto'")
        if resolved.index is not None and resolved.index >= count:
            raise ValueError(f"device={device!r}: this machine has {count} CUDA device(s), "
                             f"cuda:0 to cuda:{count - 1}")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"Apple's MPS is not available here, so device={device!r} cannot be "
                         "used; use 'cpu' or 'auto'")
    return resolved


class _Guard:
    """Divergence guard: snapshots of the last good weights, restored on a NaN or a jump."""

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer, max_restarts: int):
        self.net = net
        self.optimizer = optimizer
        self.max_restarts = max_restarts
        self.num_restarts = 0
        self.reference = math.inf  # lowest loss since the last snapshot
        self.floor = 0.0  # JUMP_FLOOR times the first loss
        self._snapshot()

    def _snapshot(self) -> None:
        self.state = (
            copy.deepcopy(self.net.state_dict()),
            copy.deepcopy(self.optimizer.state_dict()),
        )

    def is_bad(self, loss: float, step: int) -> bool:
        if not math.isfinite(loss):
            return True
        return step > JUMP_WARMUP and loss > JUMP_FACTOR * self.reference and loss > self.floor

    def accept(self, loss: float, step: int, every: int) -> bool:
        """Record an accepted loss; True when a snapshot is due (taken by :meth:`snapshot`)."""
        if self.floor == 0.0:
            self.floor = JUMP_FLOOR * loss
        self.reference = min(self.reference, loss)
        return step % every == 0

    def snapshot(self, loss: float) -> None:
        self._snapshot()
        self.reference = loss

    def restore(self) -> bool:
        """Restore the snapshot and halve the learning rate; False once restarts are used up."""
        if self.num_restarts >= self.max_restarts:
            return False
        self.num_restarts += 1
        rates = [group["lr"] for group in self.optimizer.param_groups]  # the run's, not the
        self.net.load_state_dict(self.state[0])  # snapshot's: each restart halves it again
        # the optimizer would take the snapshot's moment tensors as they are and update them in
        # place, so a second restart from this snapshot would load the diverged run's moments
        self.optimizer.load_state_dict(copy.deepcopy(self.state[1]))
        for group, rate in zip(self.optimizer.param_groups, rates, strict=True):
            group["lr"] = 0.5 * rate
        return True


def fit(
    net: nn.Module,
    z: torch.Tensor,
    y: torch.Tensor,
    operator,
    *,
    policy,
    max_num_iter: int,
    learning_rate: float = 0.01,
    lr_decay: tuple[float, int] | None = None,
    reg_noise_std: float = 0.0,
    ema: float | None = None,
    ground_truth: torch.Tensor | None = None,
    device: str | torch.device = "auto",
    seed: int = 0,
    progress: bool | str = False,
    callback: Callable[[FitState], bool | None] | None = None,
    max_restarts: int = 3,
    snapshot_every: int = 50,
    sync_every: int | None = None,
    precision: str = "fp32",
    penalty: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> FitResult:
    """Fit ``net(z)`` to the observation ``y`` through ``operator`` until ``policy`` stops.

    Parameters
    ----------
    net : nn.Module
        Generator; ``net(z)`` is an image (1, C, H, W).
    z : torch.Tensor
        Its fixed input.
    y : torch.Tensor
        Observation, shape (1, *operator.measurement_shape).
    operator
        Linear operator with ``A`` (see :mod:`deepprior.operators`) and ``to(device)``.
    policy
        Stopping policy (see :mod:`deepprior.stopping`): ``update(step, loss, output) -> bool``,
        ``best_step``, ``reason``, and optionally ``candidates``, ``finalize(last_step)``,
        ``needs_unperturbed_output`` and ``every``.
    max_num_iter : int
        Hard limit on iterations.
    learning_rate : float
        Adam step size.
    lr_decay : (factor, every) or None
        Multiply the learning rate by ``factor`` (``0 < factor <= 1``) every ``every``
        iterations; None keeps it constant.
    reg_noise_std : float
        Standard deviation of the Gaussian perturbation added to ``z`` at each iteration
        (Deep Image Prior's input regularisation); 0 disables it.
    ema : float or None
        Return an exponential moving average of the outputs, ``avg ← ema·avg + (1−ema)·out``
        (0.99 in the Deep Image Prior code); None returns the raw outputs.
    ground_truth : torch.Tensor or None
        Clean image; when given the PSNR of every iterate is recorded (never used to fit).
    device : str or torch.device
        ``"auto"`` (CUDA, else MPS, else CPU), or an explicit device.
    seed : int
        Seed of the input perturbation.
    progress : bool or str
        Show a tqdm progress bar; a string shows it with that label (``reconstruct`` names
        each of its fits: ``"fit 2/4 (held out, λ=0.21)"``).
    callback : callable or None
        Called with a :class:`FitState` after each backward pass; returning True stops the fit.
        Raising ``KeyboardInterrupt`` ends it like Ctrl-C.
    max_restarts : int
        How often the divergence guard may restore the last good weights (halving the learning
        rate each time) before stopping with reason "diverged". The guard acts on a non-finite
        loss, or on a jump above 5 dB over the lowest loss since the last snapshot that is also
        above 10 % of the first loss (so spikes near an exact fit are left alone), after the
        first 20 iterations (Adam's start-up transient is left alone too).
    snapshot_every : int
        Iterations between snapshots of the weights for the divergence guard.
    sync_every : int or None
        Read the losses to the host every this many iterations (one device→host sync for all
        of them); the policy then learns of each iteration in order, up to ``sync_every − 1``
        iterations late, and the iterates it may select are kept, so the returned iterate is
        the same (unless the divergence guard restores weights: the iterations computed after
        the bad one have advanced the input noise and the schedule). Iterations computed after
        the stop are discarded. None: 1 on the CPU (a sync costs nothing there) and with a
        callback, 8 on a GPU.
    precision : {"fp32", "bf16"}
        ``"bf16"`` runs the network under ``torch.autocast`` with bfloat16 (mixed precision:
        weights, optimizer state, loss and outputs stay float32). Worth it where the hardware
        has bfloat16 matrix units (recent Xeon CPUs with AMX, Ampere and later GPUs) and for
        networks dominated by 3×3 convolutions (the Deep Image Prior); benchmarks/RESULTS.md
        gives its speed and PSNR cost.
    penalty : callable or None
        A scalar function of the network output added to the loss (explicit regularisation,
        e.g. ``λ · total_variation``); the stopping rules see the total loss.

    Returns
    -------
    FitResult

    Raises
    ------
    ValueError, TypeError
        Before the first iteration: ``z``, ``y`` or ``ground_truth`` not a floating-point
        tensor or not finite, a ``y`` or ``ground_truth`` whose shape is not the operator's, an
        operator without ``A``/``to`` (wrap others with :func:`deepprior.as_operator`), a seed
        that is not an integer in [0, 2**64), a policy without ``update``/``best_step``/
        ``reason``, a penalty or callback that is not callable, a learning rate, input noise,
        EMA factor or interval out of range.

    Notes
    -----
    The network is trained in place: it is left in training mode, on ``device``, at its last
    weights, with the last gradients.

    Minimises ``mean((A f_θ(z) − y)²)`` (plus ``penalty(f_θ(z))``) over θ with Adam. The loss
    (stacked with the PSNR when a ground truth is tracked) is read from the device once per
    ``sync_every`` iterations; rules that measure the output (discrepancy, hold-out, WMV,
    oracle) read one more scalar each when they learn of an iteration. The kept iterates stay
    on the device.
    """
    max_num_iter = check_int("max_num_iter", max_num_iter, minimum=1)
    learning_rate, reg_noise_std, ema, snapshot_every, max_restarts = _check_settings(
        learning_rate, reg_noise_std, ema, snapshot_every, max_restarts)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    seed = _check_member(net, z, y, operator, policy, penalty, ground_truth, seed)
    check_choice("precision", precision, PRECISIONS)
    lr_decay = check_lr_decay(lr_decay)
    device = resolve_device(device)
    if sync_every is None:  # a callback reads the live network: it must see every iteration
        sync_every = 1 if device.type == "cpu" or callback is not None else 8
    sync_every = check_int("sync_every", sync_every, minimum=1)
    if callback is not None and sync_every != 1:
        raise ValueError("a callback needs sync_every=1: it reads the network of its iteration")
    member = _Member(net, z, y, operator, policy, budget=max_num_iter, penalty=penalty,
                     ground_truth=ground_truth, seed=seed, device=device,
                     learning_rate=learning_rate, lr_decay=lr_decay,
                     reg_noise_std=reg_noise_std, ema=ema, max_restarts=max_restarts,
                     forward=_forward(precision, device))
    _run([member], sync_every=sync_every,
         snapshot_every=snapshot_every, progress=progress, callback=callback)
    return member.result()


def fit_many(
    nets: Sequence[nn.Module],
    zs: Sequence[torch.Tensor],
    ys: Sequence[torch.Tensor],
    operators: Sequence[Any],
    *,
    policies: Sequence[Any],
    max_num_iter: int | Sequence[int],
    learning_rate: float = 0.01,
    lr_decay: tuple[float, int] | None = None,
    reg_noise_std: float = 0.0,
    ema: float | None = None,
    ground_truths: Sequence[torch.Tensor | None] | None = None,
    penalties: Sequence[Callable[[torch.Tensor], torch.Tensor] | None] | None = None,
    seeds: Sequence[int] | None = None,
    device: str | torch.device = "auto",
    progress: bool = False,
    max_restarts: int = 3,
    snapshot_every: int = 50,
    sync_every: int | None = None,
    precision: str = "fp32",
) -> list[FitResult]:
    """Fit K networks of one architecture at once: one forward and one backward pass a step.

    Member ``k`` fits ``nets[k](zs[k])`` to ``ys[k]`` through ``operators[k]`` until
    ``policies[k]`` stops it, as :func:`fit` would, with its own Adam, divergence guard,
    learning-rate schedule, input perturbation (seeded by ``seeds[k]``), penalty and budget.
    Each iteration runs the K networks as one batch (``torch.func.vmap`` over their stacked
    weights, :func:`torch.func.functional_call`) and back-propagates the sum of their losses,
    whose gradient in each member's weights is that member's own. A member that stops leaves
    the batch; the others go on.

    Parameters
    ----------
    nets, zs, ys, operators, policies : sequences of length K
        Per member, as ``net``, ``z``, ``y``, ``operator`` and ``policy`` of :func:`fit`. The
        networks must have the same type and the same parameter and buffer shapes, and the
        inputs one shape; the observations and operators may differ.
    max_num_iter : int or sequence of K ints
        Iterations at most, for every member or per member.
    ground_truths, penalties, seeds : sequences of length K, optional
        Per member, as ``ground_truth``, ``penalty`` and ``seed`` of :func:`fit` (seeds: by
        default ``0 … K−1``).
    learning_rate, lr_decay, reg_noise_std, ema, device, progress, max_restarts, \
snapshot_every, sync_every, precision
        As in :func:`fit`, the same for every member (``sync_every``: one device→host read for
        the K members' losses). There is no ``callback``: it reads one live network. No
        ``"bf16"`` for K > 1: autocast does not reach into the batched (``vmap``) forward, so
        the members would train in float32 until one was left; fit them in turn instead.

    Returns
    -------
    list of FitResult
        Member by member; ``elapsed`` is the wall time from the start to the member's stop.
        Each is the fit :func:`fit` runs for that member, but batched arithmetic orders the
        floating-point operations differently and a fit amplifies that: close to ``fit``'s
        result after a few iterations, after hundreds as far from it as the same fit run on
        another CPU (benchmarks/RESULTS.md §5).

    Raises
    ------
    ValueError
        If the sequences differ in length, a policy object serves two networks, a budget is
        below 1, or the networks or inputs do not share one architecture and shape.

    Notes
    -----
    Whether a batch of K fits is faster than K fits in turn depends on the hardware: one small
    fit leaves most of a GPU idle, while on a CPU thread the convolutions still run member by
    member and the batch measured 1.35–2.25× the time of the same fits in turn (Deep Decoder
    and DIP, 64²–256², K = 2–8; benchmarks/RESULTS.md §3).
    """
    k = len(nets)
    per_member = {"zs": zs, "ys": ys, "operators": operators, "policies": policies,
                  "ground_truths": [None] * k if ground_truths is None else ground_truths,
                  "penalties": [None] * k if penalties is None else penalties,
                  "seeds": range(k) if seeds is None else seeds,
                  "max_num_iter": [max_num_iter] * k if np.ndim(max_num_iter) == 0
                  else list(max_num_iter)}
    if k < 1:
        raise ValueError("fit_many needs at least one network")
    lengths = {name: len(value) for name, value in per_member.items()}
    if any(n != k for n in lengths.values()):
        raise ValueError(f"fit_many needs one entry per network ({k} networks), got "
                         + ", ".join(f"{name}: {n}" for name, n in lengths.items() if n != k))
    if len({id(policy) for policy in policies}) < k:
        raise ValueError("fit_many needs one policy object per network (a policy keeps its "
                         "fit's state): pass [Fixed(50) for _ in range(k)], not [Fixed(50)] * k")
    budgets = [check_int("max_num_iter", b, minimum=1) for b in per_member["max_num_iter"]]
    learning_rate, reg_noise_std, ema, snapshot_every, max_restarts = _check_settings(
        learning_rate, reg_noise_std, ema, snapshot_every, max_restarts)
    shared_nets = {id(p) for net in nets for p in net.parameters()}
    if len({id(net) for net in nets}) < k or len(shared_nets) < sum(
            1 for net in nets for _ in net.parameters()):
        raise ValueError("fit_many needs one network per fit, sharing no parameter: build each "
                         "(build_net(..., seed=k)), not [net] * k")
    rules = [id(rule) for policy in policies for rule in _rules(policy)]
    if len(set(rules)) < len(rules):
        raise ValueError("fit_many needs its own stopping rules per fit: a rule appears in the "
                         "policies of two members (inside a FirstOf or a Shadow)")
    seeds = [_check_member(net, z, y, operator, policy, penalty, truth, seed, f" of fit {i}")
             for i, (net, z, y, operator, policy, truth, penalty, seed) in enumerate(zip(
                 nets, zs, ys, operators, policies, per_member["ground_truths"],
                 per_member["penalties"], per_member["seeds"], strict=True))]
    layout = _layout(nets[0])
    for i, net in enumerate(nets):
        if type(net) is not type(nets[0]) or _layout(net) != layout:
            raise ValueError(f"fit_many fits networks of one architecture: network {i} "
                             f"({type(net).__name__}) differs from network 0 "
                             f"({type(nets[0]).__name__}) in its type or parameter shapes")
        if tuple(zs[i].shape) != tuple(zs[0].shape):
            raise ValueError(f"fit_many needs inputs of one shape: zs[{i}] is "
                             f"{tuple(zs[i].shape)}, zs[0] {tuple(zs[0].shape)}")
    check_choice("precision", precision, PRECISIONS)
    if precision == "bf16" and k > 1:
        raise ValueError("fit_many runs K > 1 members in float32: autocast does not reach into "
                         "its batched (vmap) forward; pass precision='fp32', or fit the members "
                         "in turn with fit(..., precision='bf16')")
    lr_decay = check_lr_decay(lr_decay)
    device = resolve_device(device)
    if sync_every is None:
        sync_every = 1 if device.type == "cpu" else 8
    sync_every = check_int("sync_every", sync_every, minimum=1)
    forward = _forward(precision, device)
    members = [
        _Member(net, z, y, operator, policy, budget=budget, penalty=penalty, ground_truth=truth,
                seed=seed, device=device, learning_rate=learning_rate, lr_decay=lr_decay,
                reg_noise_std=reg_noise_std, ema=ema, max_restarts=max_restarts,
                forward=forward)
        for net, z, y, operator, policy, truth, penalty, seed, budget in zip(
            nets, zs, ys, operators, policies, per_member["ground_truths"],
            per_member["penalties"], seeds, budgets, strict=True)
    ]
    _run(members, sync_every=sync_every,
         snapshot_every=snapshot_every, progress=progress, callback=None)
    return [member.result() for member in members]


def _check_settings(learning_rate: Any, reg_noise_std: Any, ema: Any, snapshot_every: Any,
                    max_restarts: Any) -> tuple[float, float, float | None, int, int]:
    """The optimiser's settings, checked before the first iteration."""
    return (check_float("learning_rate", learning_rate, low=0.0, low_open=True),
            check_float("reg_noise_std", reg_noise_std, low=0.0),
            None if ema is None else check_float("ema", ema, low=0.0, high=1.0, high_open=True),
            check_int("snapshot_every", snapshot_every, minimum=1),
            check_int("max_restarts", max_restarts, minimum=0))


def check_trainable(net: nn.Module, name: str = "net") -> None:
    """Refuse a module with no parameter to train (none, or all frozen), which Adam cannot fit."""
    parameters = list(net.parameters())
    if not any(p.requires_grad for p in parameters):
        state = "all are frozen: module.requires_grad_(True)" if parameters else "it has none"
        raise ValueError(f"{name} has no trainable parameters ({state}); the fit trains the "
                         "network's weights")


def _check_member(net: Any, z: Any, y: Any, operator: Any, policy: Any, penalty: Any,
                  truth: Any, seed: Any, where: str = "") -> int:
    """One fit's network, input, data, operator, policy, penalty and seed, checked before the
    first iteration; the seed as an int."""
    if torch.is_inference_mode_enabled():
        raise RuntimeError("a fit trains its network: call it outside torch.inference_mode()")
    if not isinstance(net, nn.Module):
        raise TypeError(f"net{where} must be an nn.Module, got {type(net).__name__}")
    check_trainable(net, f"net{where}")
    seed = check_int(f"seed{where}", seed, minimum=0)
    if seed >= 2**64:
        raise ValueError(f"seed{where} must be below 2**64 (a torch seed), got {seed}")
    if not (callable(getattr(operator, "A", None)) and callable(getattr(operator, "to", None))):
        raise TypeError(f"operator{where} must be a deepprior operator (A, A_adjoint, to), got "
                        f"{type(operator).__name__}: wrap a function or matrix with "
                        "deepprior.as_operator")
    for name, value in (("z", z), ("y", y), ("ground_truth", truth)):
        if value is not None and not (torch.is_tensor(value) and value.is_floating_point()):
            raise TypeError(f"{name}{where} must be a floating-point torch.Tensor, got "
                            f"{type(value).__name__} (torch.from_numpy(a).float()[None])")
    if not bool(torch.isfinite(z).all()):
        raise ValueError(f"z{where} holds NaN or infinite values")
    _check_policy(policy)
    if penalty is not None and not callable(penalty):
        raise TypeError(f"penalty{where} must be a function of the image, got "
                        f"{type(penalty).__name__}")
    for name, value, shape in (("y", y, getattr(operator, "measurement_shape", None)),
                               ("ground_truth", truth, getattr(operator, "image_shape", None))):
        if value is not None and shape is not None and tuple(value.shape) != (1, *shape):
            raise ValueError(f"{name}{where} has shape {tuple(value.shape)}; the operator "
                             f"needs {(1, *shape)} (a batch axis of 1, then "
                             f"{'its measurements' if name == 'y' else 'the image'})")
        if value is not None and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name}{where} holds NaN or infinite values")
    return seed


def _rules(policy: Any) -> Any:
    """A policy and every rule inside it, through nested :class:`FirstOf` and ``Shadow``."""
    yield policy
    inner = policy.policies if isinstance(policy, FirstOf | Shadow) else ()
    for rule in inner.values() if isinstance(inner, dict) else inner:
        yield from _rules(rule)


def _layout(net: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """The names and shapes of a network's parameters and buffers."""
    return [(name, tuple(t.shape)) for name, t in [*net.named_parameters(),
                                                   *net.named_buffers()]]


def _forward(precision: str, device: torch.device) -> Callable:
    """``forward(net, x)``: the network in the chosen precision, its output in float32."""
    def forward(net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        if precision == "fp32":
            return net(x)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return net(x).float()
    return forward


class _Member:
    """One fit in the loop: its network, optimizer, guard, policy and history."""

    def __init__(self, net, z, y, operator, policy, *, budget, penalty, ground_truth, seed,
                 device, learning_rate, lr_decay, reg_noise_std, ema, max_restarts, forward):
        self.net = net.to(device).train()
        self.operator = operator.to(device)
        self.z, self.y = z.detach().to(device), y.detach().to(device)
        self.gt = ground_truth.detach().to(device) if ground_truth is not None else None
        self.policy, self.budget, self.penalty = policy, budget, penalty
        self.reg_noise_std, self.ema = reg_noise_std, ema
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=learning_rate)
        self.scheduler = (
            torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=lr_decay[1],
                                            gamma=lr_decay[0])
            if lr_decay is not None
            else None
        )
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self.guard = _Guard(self.net, self.optimizer, max_restarts)
        self.wants_clean = bool(getattr(policy, "needs_unperturbed_output", False)) \
            and reg_noise_std > 0
        self.every = int(getattr(policy, "every", 1))  # the policy reads outputs at multiples
        self.losses: list[float] = []
        self.psnrs: list[float] = []
        self.kept: dict[int, torch.Tensor] = {}
        self.average: torch.Tensor | None = None
        self.kept_average: torch.Tensor | None = None
        self.reason: str | None = None
        self.last: tuple[int, torch.Tensor] | None = None  # the last accepted iterate
        self.step = self.done = 0  # iterations computed / processed (given to the policy)
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor | None,
                                 float]] = []
        self.stop_learning_rate: float | None = None  # the rate at a stop before the last
        self.elapsed = 0.0
        self.forward = forward  # forward(net, x): the network in the fit's precision

    @property
    def running(self) -> bool:
        return self.reason is None and self.step < self.budget

    def begin(self) -> torch.Tensor:
        """Start the next iteration: the network's input (``z``, perturbed where asked)."""
        self.step += 1
        self.optimizer.zero_grad(set_to_none=True)
        if self.reg_noise_std > 0:
            noise = torch.randn(self.z.shape, generator=self.generator, device=self.z.device,
                                dtype=self.z.dtype)
            return self.z + self.reg_noise_std * noise
        return self.z

    def loss(self, out: torch.Tensor) -> torch.Tensor:
        shape = getattr(self.operator, "image_shape", None)
        if shape is not None and tuple(out.shape) != (1, *shape):  # before any update
            raise ValueError(f"the network's output has shape {tuple(out.shape)}; the operator "
                             f"takes images of {(1, *shape)}: build the network for that image")
        loss = torch.mean((self.operator.A(out) - self.y) ** 2)
        if self.penalty is None:
            return loss
        value = self.penalty(out)
        if not torch.is_tensor(value) or value.numel() != 1:
            raise ValueError("the penalty must return one number (a tensor of one element), "
                             f"got {tuple(value.shape) if torch.is_tensor(value) else value!r}")
        return loss + value.reshape(())

    def record(self, out: torch.Tensor, loss: torch.Tensor) -> None:
        """Keep the iteration's output (its moving average) and scalars until the next read."""
        candidate = out if self.ema is None or self.average is None else \
            self.average.lerp(out, 1 - self.ema)
        seen = candidate
        if self.wants_clean:  # one more forward pass, only where the policy reads it
            seen = None
            if self.step % self.every == 0:
                with torch.no_grad():
                    seen = self.forward(self.net, self.z)
        scalars = [loss.detach()]
        if self.gt is not None:
            scalars.append(psnr_tensor(self.gt, candidate))
        self.pending.append((self.step, torch.stack(scalars), candidate, seen,
                             self.optimizer.param_groups[0]["lr"]))
        if self.ema is not None:
            self.average = candidate

    def optimizer_step(self) -> None:
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()

    def process(self, values: list[list[float]], snapshot_every: int, callback, bar) -> None:
        """The policy learns of the pending iterations in order (``values``: their loss and
        PSNR, read from the device); the live weights are those of the last one."""
        guard, policy = self.guard, self.policy
        snapshot_due = False
        for (at, _, candidate, seen, rate), (loss_value, *psnr) in zip(self.pending, values,
                                                                       strict=True):
            self.losses.append(loss_value)
            self.psnrs.extend(psnr)
            self.done = at
            if guard.is_bad(loss_value, at):
                self.step, self.average = at, self.kept_average  # drop what followed it
                if not guard.restore():
                    self.reason = (f"diverged: loss {loss_value:.3g} at iteration {at} after "
                                   f"{guard.num_restarts} restarts with halved learning rate")
                break
            snapshot_due = guard.accept(loss_value, at, snapshot_every) or snapshot_due
            if snapshot_due and at == self.pending[-1][0]:  # the live weights made this output
                guard.snapshot(loss_value)
            self.kept_average = candidate if self.ema is not None else None
            self.last = (at, candidate)
            stop = feed(policy, at, loss_value, candidate, seen)  # each rule the one it reads
            candidates = getattr(policy, "candidates", (policy.best_step,))
            if at in candidates:
                self.kept[at] = candidate
            for old in [s for s in self.kept if s not in candidates]:
                del self.kept[old]
            if callback is not None and callback(
                FitState(at, self.net, self.z, self.y, self.operator, loss_value, candidate,
                         self.optimizer)
            ):
                self.reason = f"stopped by the callback at iteration {at}"
                stop = True
            _update_bar(bar, at, loss_value, self.psnrs)
            if stop:  # the rate of this iteration: the schedule has stepped for later pending
                self.reason = self.reason or _said(policy) or (  # ones, which are discarded
                    f"stopped by {type(policy).__name__} at iteration {at}")
                self.stop_learning_rate = rate
                break
        else:  # every pending iteration accepted; none after the budget's last
            if self.reason is None and self.step < self.budget:
                self.optimizer_step()
        self.pending.clear()

    def result(self) -> FitResult:
        """The iterate the policy selects, and the history."""
        policy, reason = self.policy, self.reason
        if reason is None:
            _finalize(policy, self.done)
            reason = _said(policy) or f"reached max_num_iter={self.budget}"
        elif reason.startswith(("interrupted", "diverged", "stopped by the callback")):
            _finalize(policy, self.done)
            reason = f"{reason}; {_said(policy)}" if _said(policy) else reason
        best_step = policy.best_step
        with contextlib.suppress(TypeError, ValueError, RuntimeError):  # a user's policy may
            best_step = int(best_step)  # hold a numpy or 0-d torch integer (dict keys: int)
        if best_step in self.kept:
            output = self.kept[best_step]
        elif self.last is not None:  # the policy chose none (one reading every k-th iteration
            best_step, output = self.last  # ended before the k-th): the last accepted iterate
            reason = "; ".join(filter(None, [reason, f"returning the last iterate (iteration "
                                                     f"{best_step})"]))
        else:  # nothing accepted yet (interrupted or diverged at once): the current output
            with torch.no_grad():
                output = self.forward(self.net, self.z)
            best_step = 0
        return FitResult(
            output=output.detach().cpu().clone(memory_format=torch.contiguous_format),
            best_step=best_step,
            num_steps=self.done,
            stop_reason=reason,
            loss=np.asarray(self.losses, dtype=np.float64),
            psnr=np.asarray(self.psnrs, dtype=np.float64) if self.gt is not None else None,
            elapsed=self.elapsed,
            num_restarts=self.guard.num_restarts,
            final_learning_rate=self.optimizer.param_groups[0]["lr"]
            if self.stop_learning_rate is None else self.stop_learning_rate,
        )


def _said(policy: Any) -> str:
    """A policy's reason as text ('' for none; a user's may hold another type)."""
    reason = policy.reason
    return "" if reason is None else reason if isinstance(reason, str) else str(reason)


@torch.enable_grad()  # a caller's torch.no_grad() would leave nothing to step
def _run(members: list[_Member], *, sync_every: int, snapshot_every: int, progress: bool | str,
         callback) -> None:
    """Step the running members together until each has stopped or spent its budget."""
    forward = members[0].forward  # one precision and device for all
    bar = _progress_bar(sum(m.budget for m in members), progress)
    start = time.perf_counter()
    active = [m for m in members if m.running]
    try:
        while active:
            inputs = [m.begin() for m in active]
            if len(active) == 1:
                outputs = [forward(active[0].net, inputs[0])]
            else:
                outputs = list(_stacked(active, inputs, forward).unbind(0))
            losses = [m.loss(out) for m, out in zip(active, outputs, strict=True)]
            (losses[0] if len(losses) == 1 else torch.stack(losses).sum()).backward()
            for m, out, loss in zip(active, outputs, losses, strict=True):
                m.record(out.detach(), loss)
            if len(active[0].pending) < sync_every and all(m.step < m.budget for m in active):
                for m in active:
                    m.optimizer_step()
                continue
            # the host reads the scalars of every pending iteration of every member at once
            # (one sync); each policy learns of its member's iterations in order
            values = torch.cat([torch.stack([p[1] for p in m.pending]).flatten()
                                for m in active]).tolist()
            for m in active:
                width = 2 if m.gt is not None else 1
                mine, values = values[:len(m.pending) * width], values[len(m.pending) * width:]
                m.process([mine[i:i + width] for i in range(0, len(mine), width)],
                          snapshot_every, callback, bar)
            now = time.perf_counter() - start
            for m in active:
                m.elapsed = now
            active = [m for m in active if m.running]
    except KeyboardInterrupt:
        for m in active:
            if m.reason is None:  # a fit that had ended keeps its own reason
                m.reason = f"interrupted at iteration {m.done}"
                m.elapsed = time.perf_counter() - start
    finally:
        if bar is not None:
            bar.close()


def _stacked(members: list[_Member], inputs: list[torch.Tensor], forward: Callable):
    """The members' networks on their inputs as one batch, (K, 1, C, H, W): ``vmap`` over
    their stacked weights (gradients flow back to each member's own); batch-norm running
    statistics are written back to each network."""
    base = members[0].net
    params = {name: torch.stack([m.net.get_parameter(name) for m in members])
              for name, _ in base.named_parameters()}
    buffers = {name: torch.stack([m.net.get_buffer(name) for m in members])
               for name, _ in base.named_buffers()}
    batched = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)))
    out = forward(lambda x: batched(params, buffers, x), torch.stack(inputs))
    with torch.no_grad():
        for name, stacked in buffers.items():
            for k, m in enumerate(members):
                m.net.get_buffer(name).copy_(stacked[k])
    return out


def _progress_bar(total: int, progress: bool | str):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=progress if isinstance(progress, str) else None, unit="it",
                leave=False, dynamic_ncols=True)


def _update_bar(bar, step: int, loss: float, psnrs: list[float]) -> None:
    if bar is None:
        return
    bar.update(1)
    if step % 10 == 0:
        postfix = {"loss": f"{loss:.3e}"}
        if psnrs:
            postfix["psnr"] = f"{psnrs[-1]:.2f}"
        bar.set_postfix(postfix, refresh=False)
