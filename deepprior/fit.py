"""The fitting loop: Adam on ‖A·net(z) − y‖², asking a stopping policy when to stop.

The loop knows no network by name. It sees a module, its fixed input ``z``, the observation
``y``, a linear operator with ``A`` and a stopping policy (see :mod:`deepprior.stopping`), and
returns the iterate the policy selects together with the history of the run.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .checks import check_choice
from .metrics import psnr_tensor

__all__ = ["PRECISIONS", "FitResult", "FitState", "fit", "resolve_device"]

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
        Wall time of the loop in seconds.
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


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"`` into CUDA, else Apple MPS, else CPU; validate anything else.

    Raises
    ------
    ValueError
        If the device string is malformed or names a backend that is not available.
    """
    if isinstance(device, torch.device):
        return device
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
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available; use 'cpu'")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r} was requested but MPS is not available; use 'cpu'")
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
        self.net.load_state_dict(self.state[0])
        self.optimizer.load_state_dict(self.state[1])
        for group in self.optimizer.param_groups:
            group["lr"] *= 0.5
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
    progress: bool = False,
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
        Multiply the learning rate by ``factor`` every ``every`` iterations.
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
    progress : bool
        Show a tqdm progress bar.
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
        the same. Iterations computed after the stop are discarded. None: 1 on the CPU (a sync
        costs nothing there) and with a callback, 8 on a GPU.
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

    Notes
    -----
    Minimises ``mean((A f_θ(z) − y)²)`` (plus ``penalty(f_θ(z))``) over θ with Adam. The loss
    (stacked with the PSNR when a ground truth is tracked) is read from the device once per
    ``sync_every`` iterations; rules that measure the output (discrepancy, hold-out, WMV,
    oracle) read one more scalar each when they learn of an iteration. The kept iterates stay
    on the device.
    """
    if max_num_iter < 1:
        raise ValueError(f"max_num_iter must be >= 1, got {max_num_iter}")
    check_choice("precision", precision, PRECISIONS)
    device = resolve_device(device)

    def forward(net_input: torch.Tensor) -> torch.Tensor:
        """The network in the chosen precision; its output in float32 either way."""
        if precision == "fp32":
            return net(net_input)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return net(net_input).float()

    net = net.to(device).train()
    operator = operator.to(device)
    z = z.to(device)
    y = y.to(device)
    gt = ground_truth.to(device) if ground_truth is not None else None
    optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate)
    scheduler = (
        torch.optim.lr_scheduler.StepLR(optimizer, step_size=lr_decay[1], gamma=lr_decay[0])
        if lr_decay is not None
        else None
    )
    generator = torch.Generator(device=device).manual_seed(seed)
    guard = _Guard(net, optimizer, max_restarts)
    kept_average: torch.Tensor | None = None
    if sync_every is None:  # a callback reads the live network: it must see every iteration
        sync_every = 1 if device.type == "cpu" or callback is not None else 8
    if callback is not None and sync_every != 1:
        raise ValueError("a callback needs sync_every=1: it reads the network of its iteration")
    wants_clean = bool(getattr(policy, "needs_unperturbed_output", False)) and reg_noise_std > 0
    every = int(getattr(policy, "every", 1))  # the policy reads outputs at multiples of this

    losses: list[float] = []
    psnrs: list[float] = []
    kept: dict[int, torch.Tensor] = {}
    average: torch.Tensor | None = None
    reason: str | None = None
    last: tuple[int, torch.Tensor] | None = None  # the last accepted iterate
    step = done = 0  # iterations computed / processed (given to the policy)
    pending: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []
    bar = _progress_bar(max_num_iter, progress)
    start = time.perf_counter()
    try:
        while step < max_num_iter and reason is None:
            step += 1
            optimizer.zero_grad(set_to_none=True)
            net_input = z
            if reg_noise_std > 0:
                noise = torch.randn(z.shape, generator=generator, device=device, dtype=z.dtype)
                net_input = z + reg_noise_std * noise
            out = forward(net_input)
            loss = torch.mean((operator.A(out) - y) ** 2)
            if penalty is not None:
                loss = loss + penalty(out)
            loss.backward()

            out = out.detach()
            candidate = out if ema is None or average is None else average.lerp(out, 1 - ema)
            seen = candidate
            if wants_clean:  # one more forward pass, only where the policy reads it
                seen = None
                if step % every == 0:
                    with torch.no_grad():
                        seen = forward(z)
            scalars = [loss.detach()]
            if gt is not None:
                scalars.append(psnr_tensor(gt, candidate))
            pending.append((step, torch.stack(scalars), candidate, seen))
            if ema is not None:
                average = candidate
            if len(pending) < sync_every and step < max_num_iter:
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                continue

            # the host reads the scalars of the pending iterations at once (one sync) and the
            # policy learns of them in order; the live weights are those of the last one
            values = torch.stack([item[1] for item in pending]).tolist()
            snapshot_due = False
            for (at, _, candidate, seen), (loss_value, *psnr) in zip(pending, values,
                                                                     strict=True):
                losses.append(loss_value)
                psnrs.extend(psnr)
                done = at
                if guard.is_bad(loss_value, at):
                    step, average = at, kept_average  # drop what followed the bad iteration
                    if not guard.restore():
                        reason = (f"diverged: loss {loss_value:.3g} at iteration {at} after "
                                  f"{guard.num_restarts} restarts with halved learning rate")
                    break
                snapshot_due = guard.accept(loss_value, at, snapshot_every) or snapshot_due
                if snapshot_due and at == pending[-1][0]:  # the live weights made this output
                    guard.snapshot(loss_value)
                kept_average = candidate if ema is not None else None
                last = (at, candidate)
                stop = bool(policy.update(at, loss_value, seen))
                candidates = getattr(policy, "candidates", (policy.best_step,))
                if at in candidates:
                    kept[at] = candidate
                for old in [s for s in kept if s not in candidates]:
                    del kept[old]
                if callback is not None and callback(
                    FitState(at, net, z, y, operator, loss_value, candidate, optimizer)
                ):
                    reason = f"stopped by the callback at iteration {at}"
                    stop = True
                _update_bar(bar, at, loss_value, psnrs)
                if stop:
                    reason = reason or policy.reason
                    break
            else:  # every pending iteration accepted
                if reason is None:
                    optimizer.step()
                    if scheduler is not None:
                        scheduler.step()
            pending.clear()
    except KeyboardInterrupt:
        reason = f"interrupted at iteration {done}"
    finally:
        if bar is not None:
            bar.close()
    step = done
    elapsed = time.perf_counter() - start

    if reason is None:
        _finalize(policy, step)
        reason = policy.reason
    elif reason.startswith(("interrupted", "diverged")):
        _finalize(policy, step)
        reason = f"{reason}; {policy.reason}" if policy.reason else reason

    best_step = policy.best_step
    if best_step in kept:
        output = kept[best_step]
    elif last is not None:  # the policy chose none (one reading every k-th iteration ended
        best_step, output = last  # before the k-th): the last accepted iterate
        reason = "; ".join(filter(None, [reason, f"returning the last iterate (iteration "
                                                 f"{best_step})"]))
    else:  # nothing accepted yet (interrupted or diverged at once): the current output
        with torch.no_grad():
            output = forward(z)
        best_step = 0
    return FitResult(
        output=output.detach().cpu(),
        best_step=best_step,
        num_steps=step,
        stop_reason=reason,
        loss=np.asarray(losses, dtype=np.float64),
        psnr=np.asarray(psnrs, dtype=np.float64) if gt is not None else None,
        elapsed=elapsed,
        num_restarts=guard.num_restarts,
        final_learning_rate=optimizer.param_groups[0]["lr"],
    )


def _finalize(policy, last_step: int) -> None:
    finalize = getattr(policy, "finalize", None)
    if finalize is not None:
        finalize(last_step)


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="it", leave=False, dynamic_ncols=True)


def _update_bar(bar, step: int, loss: float, psnrs: list[float]) -> None:
    if bar is None:
        return
    bar.update(1)
    if step % 10 == 0:
        postfix = {"loss": f"{loss:.3e}"}
        if psnrs:
            postfix["psnr"] = f"{psnrs[-1]:.2f}"
        bar.set_postfix(postfix, refresh=False)
