"""Early-stopping rules: when to stop a fit and which iterate to return.

An untrained network fitted to one corrupted observation first reproduces the image and later
the noise, so the iterate to return lies somewhere in the middle of the run. A *policy* watches
the run one iteration at a time; the loop asks it, it never runs the loop.

A policy is any object with (see :class:`StoppingPolicy`)

- ``update(step, loss, output) -> bool``: called once per iteration (``step`` 1-based,
  ``loss`` the training MSE, ``output`` the detached candidate ``(1, C, H, W)`` on the fitting
  device); True stops the fit;
- ``best_step``: the iteration whose output to return (0 before the first update);
- ``reason``: a sentence saying why it stopped and which iterate it returns;

and optionally ``candidates`` (the steps whose outputs the loop must keep; ``{best_step}`` when
absent), ``finalize(last_step)`` (called when the loop ends for another reason, to update
``reason``), ``needs_unperturbed_output`` (True asks for the output from the network's
unperturbed input; the Deep Image Prior perturbs its input at every iteration, and that output
costs the loop one more forward pass; it is the network's raw output, where the loop keeps
and returns its moving average when ``ema`` is set. Without a perturbation the policy reads
the output the loop keeps, the average where there is one) and ``every`` (the policy reads
the output only at iterations that are multiples of ``every``; the loop then computes the
unperturbed output only there and passes ``None`` as ``output`` in between). In a group
(:class:`FirstOf`, :class:`Shadow`) each policy gets the output it asks for (:func:`feed`).

The built-in rules (REFERENCES §4), written as text specs such as
``"wmv:window=100,patience=1000"``, ``"fixed:3000"``, ``"holdout:fraction=0.1,patience=200"``
or ``"discrepancy+fixed:2000"`` (the first of several to fire), and built by
:func:`make_policy`:

=================  ==========================================================  ==============
name               rule                                                        needs
=================  ==========================================================  ==============
``fixed``          a fixed number of iterations                                —
``patience``       no new minimum of the training loss for ``patience`` steps  —
``wmv``            ES-WMV: windowed moving variance of the outputs (Wang et al.) —
``emv``            ES-EMV: exponential moving variance of the outputs          —
``discrepancy``    Morozov's discrepancy principle ‖y − A f‖² ≤ τ·m·σ²          σ
``holdout``        loss on held-out measurements (Yaman et al.)                a data split
``oracle``         PSNR against the clean image (benchmarking only)            ground truth
=================  ==========================================================  ==============

:class:`Shadow` runs several rules alongside one fit without letting them stop it (studies of
the rules). This module imports no other deepprior module except :mod:`deepprior.checks`;
operators are any objects with ``A`` (and ``restrict`` for the hold-out split).
"""

from __future__ import annotations

import inspect
import math
import os
import re
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

from .checks import check_float, check_int
from .noise import SIGMA_FLOOR

__all__ = [
    "EMV",
    "RULES",
    "WMV",
    "Discrepancy",
    "FirstOf",
    "Fixed",
    "Holdout",
    "Oracle",
    "Patience",
    "Shadow",
    "StoppingPolicy",
    "holds_out",
    "make_policy",
    "parse_stop",
]

#: Share of the measurements (pixels for denoising) the ``holdout`` rule holds out by default.
HOLDOUT_FRACTION = 0.1

#: The data a rule's constructor may take from the caller, and how to provide it.
CONTEXT = {
    "operator": "the forward operator",
    "y": "the observation",
    "sigma": "the noise level: pass sigma=... (CLI: --sigma, or --noise-sigma for measurements)",
    "ground_truth": "the clean image: pass ground_truth=... (CLI: --add-noise or --clean)",
}


class StoppingPolicy(Protocol):
    """What the fitting loop needs from a stopping policy (see the module docstring)."""

    best_step: int
    reason: str

    def update(self, step: int, loss: float, output: Tensor) -> bool: ...


def _acc(device: torch.device) -> torch.dtype:
    """float64 for running sums, except on Apple's MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


class _Minimum:
    """The step of the smallest value so far, with patience and a relative ``min_delta``."""

    def __init__(self, patience: int | None = None, min_delta: float = 0.0) -> None:
        self.patience, self.min_delta = patience, min_delta
        self.value, self.step = math.inf, 0

    def update(self, step: int, value: float) -> None:
        threshold = self.value
        if math.isfinite(threshold):
            threshold -= self.min_delta * abs(threshold)
        if self.step == 0 or value < threshold:
            self.value, self.step = value, step

    def exhausted(self, step: int) -> bool:
        return self.patience is not None and step - self.step >= self.patience


class Rule:
    """Bookkeeping shared by the built-in rules: ``best_step``, ``reason``, ``finalize``.

    A subclass implements ``_update`` (set ``best_step``; set ``reason`` and return True to
    stop) and names itself with ``label`` and ``criterion`` (used in reasons). A rule whose
    ``every`` is k > 1 sees only the iterations that are multiples of k (``update`` returns
    False on the others without calling ``_update``). A rule with
    ``needs_unperturbed_output`` gets the output from the unperturbed input, which the loop
    computes only at the iterations it reads (see :func:`feed`).
    """

    label: ClassVar[str] = ""
    criterion: ClassVar[str] = ""
    needs_unperturbed_output: ClassVar[bool] = False
    every: int = 1

    def __init__(self) -> None:
        self.best_step, self.reason, self.stopped = 0, "", False
        self.last_step = 0  # the last iteration offered: a rule serves one fit

    @property
    def candidates(self) -> frozenset[int]:
        return frozenset((self.best_step,))

    def update(self, step: int, loss: float, output: Tensor) -> bool:
        """Record iteration ``step``; True to stop now."""
        self.last_step = step
        if step % self.every:
            return False
        stop = bool(self._update(step, float(loss), output))
        self.stopped = self.stopped or stop
        return stop

    def _update(self, step: int, loss: float, output: Tensor) -> bool:
        raise NotImplementedError

    def finalize(self, last_step: int) -> None:
        """Say which iterate is returned when the loop ended without this rule firing."""
        if not self.stopped:
            self.reason = f"the {self.label} rule did not fire by iteration {last_step}; " + (
                self._final_choice() if self.best_step else "no iterate was recorded"
            )

    def _final_choice(self) -> str:
        return f"best iterate by {self.criterion} at iteration {self.best_step}"

    @property
    def first_reading(self) -> int:
        """The first iteration at which the rule has a value to stop on."""
        return self.every

    def __repr__(self) -> str:
        names = [p for p in inspect.signature(type(self)).parameters if p not in CONTEXT]
        return f"{type(self).__name__}({', '.join(f'{n}={getattr(self, n)!r}' for n in names)})"


def _smoothed(previous: float | None, value: float, weight: float) -> float:
    """An exponential average: ``weight`` on the past, ``value`` itself at the start."""
    return value if previous is None else weight * previous + (1 - weight) * value


def _min_delta(value: float) -> float:
    return check_float("min_delta", value, low=0.0, high=1.0, high_open=True)


class Fixed(Rule):
    """Stop after ``num_iter`` iterations and return the last iterate.

    Examples
    --------
    >>> policy = Fixed(3)
    >>> [policy.update(step, 0.1, torch.zeros(1)) for step in (1, 2, 3)]
    [False, False, True]
    """

    label = criterion = "fixed"

    def __init__(self, num_iter: int) -> None:
        super().__init__()
        self.num_iter = check_int("num_iter", num_iter, minimum=1)

    def _update(self, step: int, loss: float, output: Tensor) -> bool:
        self.best_step = step
        if step >= self.num_iter:
            self.reason = f"reached num_iter={self.num_iter} (fixed); returning the last iterate"
        return step >= self.num_iter

    def _final_choice(self) -> str:
        return f"returning the last iterate (iteration {self.best_step})"


class Patience(Rule):
    """Stop when the training loss has no new minimum for ``patience`` iterations.

    ``min_delta`` is relative: a loss counts as a new minimum only below ``best·(1 − min_delta)``.
    The best iterate is the one with the lowest training loss, so this rule detects
    convergence, not overfitting: it suits problems where fitting the data is the goal
    (noiseless compressive sensing). Modelled on Lightning's ``EarlyStopping``.
    """

    label = "patience"
    criterion = "lowest training loss"

    def __init__(self, patience: int = 500, min_delta: float = 0.0) -> None:
        super().__init__()
        self.patience = check_int("patience", patience, minimum=1)
        self.min_delta = _min_delta(min_delta)
        self._min = _Minimum(self.patience, self.min_delta)

    def _update(self, step: int, loss: float, output: Tensor) -> bool:
        self._min.update(step, loss)
        self.best_step = self._min.step
        if not math.isfinite(loss):
            self.reason = f"non-finite loss at iteration {step}; best at iteration {self.best_step}"
            return True
        if self._min.exhausted(step):
            self.reason = (f"no decrease of the training loss for {self.patience} iterations "
                           f"(patience); best at iteration {self.best_step}")
            return True
        return False


class Oracle(Rule):
    """The iterate with the highest PSNR against the clean image. **Benchmarking only.**

    ``patience`` None (default) never stops: the run goes to its budget.
    """

    label = "oracle"
    criterion = "highest PSNR against the ground truth"

    def __init__(self, ground_truth: Tensor, patience: int | None = None) -> None:
        super().__init__()
        self.ground_truth = ground_truth.detach()
        self.patience = None if patience is None else check_int("patience", patience, minimum=1)
        self._min = _Minimum(self.patience)
        self.psnr_history: list[float] = []

    @property
    def best_psnr(self) -> float:
        return -self._min.value

    def _update(self, step: int, loss: float, output: Tensor) -> bool:
        acc = _acc(output.device)
        truth = self.ground_truth.to(output.device, acc)
        mse = float(torch.mean((output.to(acc) - truth) ** 2))
        if math.isnan(mse):  # a NaN output: never the best
            psnr = -math.inf
        else:
            psnr = 10 * math.log10(1 / mse) if mse > 0 else math.inf
        self.psnr_history.append(psnr)
        self._min.update(step, -psnr)
        self.best_step = self._min.step
        if self._min.exhausted(step):
            self.reason = (f"no new PSNR maximum for {self.patience} iterations (oracle); best "
                           f"{self.best_psnr:.2f} dB at iteration {self.best_step}")
            return True
        return False


class _VarianceRule(Rule):
    """Shared part of WMV and EMV: track the minimum of a variance after a warm-up."""

    def __init__(self, patience: int, min_delta: float) -> None:
        super().__init__()
        self.patience = check_int("patience", patience, minimum=1)
        self.min_delta = _min_delta(min_delta)
        self._min = _Minimum(self.patience, self.min_delta)
        self.last_variance: float | None = None

    def _final_choice(self) -> str:
        if self._min.step == 0:
            return f"it never left its warm-up; returning the last iterate ({self.best_step})"
        return super()._final_choice()

    def _track(self, step: int, variance: float | None, name: str) -> bool:
        if variance is None:  # still warming up: the latest output is the best available
            self.best_step = step
            return False
        self.last_variance = variance
        self._min.update(step, variance)
        self.best_step = self._min.step
        if self._min.exhausted(step):
            self.reason = (f"no new minimum of the {name} for {self.patience} iterations "
                           f"({self.label}); best at iteration {self.best_step}")
            return True
        return False


def _physical_memory() -> int | None:
    """This machine's memory in bytes (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # Windows has no sysconf
        return None


class WMV(_VarianceRule):
    """ES-WMV (Wang et al., TMLR 2023): stop when the windowed output variance stops falling.

    ``VAR_t = (1/W) Σ_{i=t−W+1..t} ‖x_i − x̄‖² / N`` over the last ``window`` outputs; the rule
    tracks its argmin, stops after ``patience`` iterations without a new minimum and returns the
    output at the argmin. Memory: ``window`` outputs on the output's device. The window sums are
    kept in float64 (float32 on MPS) and recomputed exactly every ``window`` iterations.
    """

    label = "WMV"
    criterion = "minimum windowed output variance"

    def __init__(self, window: int = 100, patience: int = 1000, min_delta: float = 0.0) -> None:
        super().__init__(patience, min_delta)
        self.window = check_int("window", window, minimum=2)
        self._count = 0

    @property
    def first_reading(self) -> int:
        return self.window

    def check_memory(self, pixels: int) -> None:
        """Refuse a window whose outputs would not fit in this machine's memory, at 4 bytes
        per pixel (the fit's device may have less: then the first iteration says so)."""
        need, have = 4 * self.window * pixels, _physical_memory()
        if have and need > have:
            raise ValueError(f"wmv:window={self.window} keeps {self.window} outputs of {pixels:,}"
                             f" values, {need / 2**30:.3g} GiB, more than this machine's "
                             f"{have / 2**30:.3g} GiB: use a smaller window (default 100)")

    def _update(self, step: int, loss: float, output: Tensor) -> bool:
        x = output.reshape(-1)
        if self._count == 0:
            try:
                self._buffer = x.new_empty((self.window, x.numel()))
            except (RuntimeError, MemoryError) as exc:  # torch's out-of-memory, any device
                raise MemoryError(f"WMV's window of {self.window} outputs of {x.numel():,} "
                                  f"values does not fit on {x.device} ({exc}); use a smaller "
                                  "window") from exc
            self._mean = torch.zeros(x.numel(), dtype=_acc(x.device), device=x.device)
            self._m2 = torch.zeros((), dtype=self._mean.dtype, device=x.device)
        slot, new, mean = self._count % self.window, x.to(self._mean.dtype), self._mean
        if self._count < self.window:  # filling: Welford's update
            delta = new - mean
            mean += delta / (self._count + 1)
            self._m2 += delta.dot(new - mean)
        else:  # sliding: replace the oldest output (deviations, not raw sums: no cancellation)
            old = self._buffer[slot].to(mean.dtype)
            old_mean = mean.clone()
            mean += (new - old) / self.window
            self._m2 += (new - old).dot(new - mean + old - old_mean)
        self._buffer[slot] = x
        self._count += 1
        if self._count % self.window == 0:  # exact recomputation: no drift
            full = self._buffer.to(mean.dtype)
            mean.copy_(full.mean(0))
            self._m2 = ((full - mean) ** 2).sum()
        variance = None
        if self._count >= self.window:
            variance = max(float(self._m2), 0.0) / (self.window * x.numel())
        return self._track(step, variance, "output variance")


class EMV(_VarianceRule):
    """ES-EMV (Wang et al., TMLR 2023): the memory-light, exponential variant of WMV.

    ``EMA_t = EMA_{t−1} + α (x_t − EMA_{t−1})``, ``EMV_t = (1 − α)(EMV_{t−1} + α‖x_t −
    EMA_{t−1}‖²/N)``; the minimum is tracked after ``burn_in`` iterations (default ⌈10/α⌉,
    when the weight of the initialisation EMV = 0 has fallen below e⁻¹⁰).
    """

    label = "EMV"
    criterion = "minimum exponential moving variance of the output"

    def __init__(self, alpha: float = 0.1, patience: int = 1000, burn_in: int | None = None,
                 min_delta: float = 0.0) -> None:
        super().__init__(patience, min_delta)
        self.alpha = check_float("alpha", alpha, low=0, high=1, low_open=True, high_open=True)
        self.burn_in = math.ceil(10 / self.alpha) if burn_in is None else check_int(
            "burn_in", burn_in, minimum=1)  # the first iterate has no variance yet (0)
        self._count, self._emv = 0, 0.0

    @property
    def first_reading(self) -> int:
        return self.burn_in + 1

    def _update(self, step: int, loss: float, output: Tensor) -> bool:
        x = output.reshape(-1).to(_acc(output.device))
        if self._count == 0:
            self._ema = x.clone()
        else:
            delta = x - self._ema
            self._ema += self.alpha * delta
            self._emv = (1 - self.alpha) * (self._emv + self.alpha * delta.dot(delta) / x.numel())
        self._count += 1
        variance = float(self._emv) if self._count > self.burn_in else None
        return self._track(step, variance, "exponential moving variance")


def squared_errors(operator: Any, y: Tensor, output: Tensor) -> Tensor:
    """(operator.A(output) − y)² per measurement, flat, in float64 (float32 on MPS)."""
    acc = _acc(output.device)
    return (operator.A(output).to(acc) - y.to(output.device, acc)).reshape(-1).square()


def residual(operator: Any, y: Tensor, output: Tensor) -> float:
    """‖operator.A(output) − y‖², accumulated in float64 (float32 on MPS)."""
    return float(squared_errors(operator, y, output).sum())


class Discrepancy(Rule):
    """Morozov's discrepancy principle: stop once the residual reaches the noise level.

    Stops at the first iteration where the residual ``r_t = ‖y − A f_t‖²``, smoothed by an
    exponential average with weight ``smoothing`` on the past, falls to ``τ·m·σ²`` (the
    residual of the clean image; ``m`` = ``operator.num_measurements``, the observed entries)
    and returns that iterate; if it never does, the iterate with the smallest residual. The
    residual is computed on the output from the unperturbed input. Needs σ, in the units of
    ``y``. ``every`` = k > 1 looks only at every k-th iteration (the average then weighs the
    past by ``smoothing``ᵏ, as k iterations would): with the Deep Image Prior's perturbed
    input the loop computes the unperturbed output only there, a forward pass saved on the
    other k − 1; the fit itself does not change, only where the rule can stop.

    ``margin`` > 0 lowers the level to ``τ·m·(σ − margin)²``: the residual's root mean square
    must fall ``margin`` below σ (0 once ``margin`` ≥ σ, a level the rule never reaches).
    ``τ`` is then a fraction of σ² that grows with σ: with ``margin`` = 0.01 (images on
    [0, 1]) it is 0.81 at σ = 25/255 and 0.90 at σ = 50/255, near the Deep Image Prior's
    best iterate at 128² and σ = 50 (benchmarks/results/stopping_photos.md).
    """

    label = "discrepancy principle"
    criterion = "smallest residual"
    needs_unperturbed_output = True

    def __init__(self, operator: Any, y: Tensor, sigma: float, tau: float = 1.0,
                 smoothing: float = 0.9, every: int = 1, margin: float = 0.0) -> None:
        super().__init__()
        self.operator, self.y = operator, y.detach()
        self.sigma = check_float("sigma", sigma, low=0.0, low_open=True)
        self.tau = check_float("tau", tau, low=0.0, low_open=True)
        self.smoothing = check_float("smoothing", smoothing, low=0, high=1, high_open=True)
        self.every = check_int("every", every, minimum=1)
        self.margin = check_float("margin", margin, low=0.0)
        m = getattr(operator, "num_measurements", self.y.numel())
        self.level = self.tau * m * max(self.sigma - self.margin, 0.0)**2
        self._level = f"{'τ·m·(σ − margin)²' if self.margin else 'τ·m·σ²'} = {self.level:.4g}"
        self._min = _Minimum()
        self.smoothed_residual: float | None = None

    def _update(self, step: int, loss: float, output: Tensor) -> bool:
        value = residual(self.operator, self.y, output)
        self.smoothed_residual = _smoothed(self.smoothed_residual, value,
                                           self.smoothing**self.every)
        self._min.update(step, value)
        if self.smoothed_residual <= self.level:
            self.best_step = step
            smoothed = " (smoothed)" if self.smoothing else ""
            self.reason = (f"residual ‖y − A f‖² = {self.smoothed_residual:.4g}{smoothed} "
                           f"reached the noise level {self._level} at iteration "
                           f"{step} (discrepancy principle)")
            return True
        self.best_step = self._min.step
        return False

    def _final_choice(self) -> str:
        return (f"the noise level {self._level} was not reached; returning the "
                f"iterate with the smallest residual ({self._min.value:.4g}, iteration "
                f"{self.best_step})")


class Holdout(Rule):
    """Stop on the loss of held-out measurements, with patience; return the best iterate.

    :func:`make_policy` splits the data (``fraction`` of it held out, seeded) and gives this
    rule the held-out part; the fit never sees it, so its loss falls while the image is fitted
    and rises once the noise is (Yaman et al., ICLR 2022: ~20% of the measurements; ~10% of the
    pixels for denoising). Needs no σ. Computed on the output from the unperturbed input.
    ``smoothing`` > 0 tracks an exponential average of the hold-out loss (weight ``smoothing``
    on the past, as in :class:`Discrepancy`) instead of the loss itself: the Deep Image
    Prior's loss jitters from one iteration to the next, and a lucky dip of the raw loss can
    stop a fit early or restart its patience late. ``every`` as in :class:`Discrepancy`
    (``patience`` still counts iterations).
    """

    label = "hold-out"
    criterion = "lowest hold-out loss"
    needs_unperturbed_output = True

    def __init__(self, operator: Any, y: Tensor, patience: int = 300, min_delta: float = 0.0,
                 fraction: float = HOLDOUT_FRACTION, smoothing: float = 0.0,
                 every: int = 1) -> None:
        super().__init__()
        self.operator, self.y = operator, y.detach()
        self.patience = check_int("patience", patience, minimum=1)
        self.min_delta = _min_delta(min_delta)
        self.fraction = check_float("fraction", fraction, low=0, high=1, low_open=True,
                                    high_open=True)
        self.smoothing = check_float("smoothing", smoothing, low=0, high=1, high_open=True)
        self.every = check_int("every", every, minimum=1)
        self._min = _Minimum(self.patience, self.min_delta)
        self.last_loss: float | None = None
        self.smoothed_loss: float | None = None

    def _update(self, step: int, loss: float, output: Tensor) -> bool:
        self.last_loss = residual(self.operator, self.y, output) / self.y.numel()
        self.smoothed_loss = _smoothed(self.smoothed_loss, self.last_loss,
                                       self.smoothing**self.every)
        self._min.update(step, self.smoothed_loss)
        self.best_step = self._min.step
        if self._min.exhausted(step):
            averaged = "averaged " if self.smoothing else ""
            self.reason = (f"no new minimum of the {averaged}hold-out loss for {self.patience} "
                           f"iterations (hold-out); best at iteration {self.best_step}")
            return True
        return False

    def _final_choice(self) -> str:
        averaged = "averaged " if self.smoothing else ""
        return f"best iterate by lowest {averaged}hold-out loss at iteration {self.best_step}"


_SAME = object()  # feed's default: the unperturbed output is the output itself


class FirstOf:
    """Several policies at once: stop as soon as the first of them fires.

    Every policy sees every iteration; when several fire at once, the first in the given order
    wins and its ``best_step`` and ``reason`` are returned (before any fires: the first
    policy's). ``candidates`` is the union, so the loop keeps the best iterate of each.
    """

    def __init__(self, *policies: StoppingPolicy) -> None:
        if not policies:
            raise ValueError("FirstOf needs at least one stopping policy")
        if len({id(p) for p in policies}) < len(policies):
            raise ValueError("FirstOf got the same policy object twice: it would see every "
                             "iteration twice; make one per rule")
        self.policies = tuple(_check_policy(p) for p in policies)
        self.fired: Any = None
        self.needs_unperturbed_output = any(
            getattr(p, "needs_unperturbed_output", False) for p in policies)
        self.every = _common_every(self.policies)

    @property
    def best_step(self) -> int:
        return (self.fired or self.policies[0]).best_step

    @property
    def reason(self) -> str:
        return (self.fired or self.policies[0]).reason

    @property
    def candidates(self) -> frozenset[int]:
        return frozenset().union(*(_candidates(p) for p in self.policies))

    def update(self, step: int, loss: float, output: Tensor,
               unperturbed: Tensor | None | object = _SAME) -> bool:
        """Iteration ``step`` for every policy, each with the output it reads (see
        :func:`feed`)."""
        fired = [feed(p, step, loss, output, unperturbed) for p in self.policies]
        if self.fired is None and any(fired):
            self.fired = self.policies[fired.index(True)]
        return any(fired)

    def finalize(self, last_step: int) -> None:
        if self.fired is None:
            for policy in self.policies:
                _finalize(policy, last_step)

    def __repr__(self) -> str:
        return f"FirstOf({', '.join(map(repr, self.policies))})"


class Shadow:
    """Run stopping rules alongside a fit without letting any of them stop it.

    A rule does not change the trajectory (hold-out does, by removing data), so one long fit
    tells, for every rule, where it would have stopped (``stopped``), which iterate it would
    return (``chosen``) and why (``reasons``). Pass it as ``stop=`` and its ``candidates`` make
    the loop keep nothing extra; read the chosen iterates from a callback or the history.

    Parameters
    ----------
    policies : mapping of label → policy
    """

    def __init__(self, policies: dict[str, Any]) -> None:
        self.policies = {label: _check_policy(p) for label, p in policies.items()}
        self.stopped: dict[str, int] = {}
        self.chosen: dict[str, int] = {}
        self.reasons: dict[str, str] = {}
        self.needs_unperturbed_output = any(
            getattr(p, "needs_unperturbed_output", False) for p in self.policies.values())
        self.every = _common_every(self.policies.values())
        self.best_step = 0
        self.reason = "shadow run: every rule evaluated, none allowed to stop the fit"

    def update(self, step: int, loss: float, output: Tensor,
               unperturbed: Tensor | None | object = _SAME) -> bool:
        """Iteration ``step`` for every rule not stopped yet, each with the output it reads
        (see :func:`feed`); never stops the fit."""
        self.best_step = step
        for label, policy in self.policies.items():
            if label not in self.stopped and feed(policy, step, loss, output, unperturbed):
                self._record(label, step)
        return False

    def finalize(self, last_step: int) -> None:
        for label, policy in self.policies.items():
            if label not in self.stopped:
                _finalize(policy, last_step)
                self._record(label, last_step)

    def _record(self, label: str, step: int) -> None:
        policy = self.policies[label]
        self.stopped[label], self.chosen[label] = step, policy.best_step
        self.reasons[label] = policy.reason


def feed(policy: Any, step: int, loss: float, output: Tensor,
         unperturbed: Tensor | None | object = _SAME) -> bool:
    """Give ``policy`` iteration ``step``: the output the loop keeps and returns (``output``),
    or, to a policy that asks for it (``needs_unperturbed_output``), the output from the
    unperturbed input (``unperturbed``; None where it was not computed, at iterations the
    policy does not read). :class:`FirstOf` and :class:`Shadow` get both and pass each of
    their policies its own. True to stop."""
    if unperturbed is _SAME:
        unperturbed = output
    if isinstance(policy, FirstOf | Shadow):
        return bool(policy.update(step, loss, output, unperturbed))
    wants = getattr(policy, "needs_unperturbed_output", False)
    return bool(policy.update(step, loss, unperturbed if wants else output))


def doubts(rule: Any, max_num_iter: int, *, perturbed_average: str | None = None) -> list[str]:
    """What keeps a built-in ``rule`` from stopping a fit of ``max_num_iter`` iterations, said
    before the fit: a warm-up or a reading interval beyond the budget, a discrepancy level of
    0 (never reached) or one a constant image meets (reached at the first reading), a variance
    rule shown the output average of a network whose input is perturbed, whose variance only
    falls (``perturbed_average`` names it, e.g. ``"dip returns (EMA 0.99)"``)."""
    said = []
    if isinstance(rule, Rule) and not isinstance(rule, Fixed) \
            and rule.first_reading > max_num_iter:
        said.append(f"the {rule.label} rule reads its first value at iteration "
                    f"{rule.first_reading}, after max_num_iter={max_num_iter}: it cannot stop "
                    "the fit, which returns its last iterate")
    if perturbed_average and isinstance(rule, _VarianceRule):
        said.append(f"WMV and EMV read the output average {perturbed_average}, whose variance "
                    "only falls: they did not fire on it in any fit measured "
                    "(benchmarks/results/stopping.md)")
    if isinstance(rule, Discrepancy):
        if rule.sigma <= SIGMA_FLOOR:
            said.append(f"σ = {rule.sigma:.3g}: the data look noiseless, and the discrepancy "
                        "rule stops at a noise level no fit reaches; the fit runs its whole "
                        "budget (pass sigma=..., or a stop that needs no σ: 'holdout')")
        elif rule.margin >= rule.sigma:
            said.append(f"the discrepancy rule's margin {rule.margin:g} is not below σ = "
                        f"{rule.sigma:.3g}: its noise level {rule._level} is one no fit "
                        "reaches, and the fit runs its whole budget")
        else:
            ones = torch.ones((1, *rule.operator.image_shape), device=rule.operator.device)
            with torch.no_grad():  # the grey level whose image fits y best, in [0, 1]
                flat = rule.operator.A(ones).to(_acc(ones.device)).reshape(-1)
                y = rule.y.to(flat.device, flat.dtype).reshape(-1)
                grey = float((y @ flat) / (flat @ flat)) if float(flat @ flat) > 0 else 0.0
                best = residual(rule.operator, rule.y, min(max(grey, 0.0), 1.0) * ones)
            if best <= rule.level:
                said.append(f"the discrepancy rule's noise level {rule._level} is met by a "
                            f"constant image (its residual {best:.4g}): the fit stops at its "
                            f"first reading, untrained; is σ = {rule.sigma:.3g} the noise's "
                            "std on the data's scale?")
    return said


def _check_policy(policy: Any) -> Any:
    if isinstance(policy, type):
        raise TypeError(f"stop={policy.__name__} is a class: pass an instance, "
                        f"{policy.__name__}(...)")
    missing = [m for m in ("update", "best_step", "reason") if not hasattr(policy, m)]
    if missing:
        raise TypeError(
            f"a stopping policy needs update(step, loss, output), best_step and reason; "
            f"{type(policy).__name__} lacks {', '.join(missing)}"
        )
    name = type(policy).__name__
    try:
        inspect.signature(policy.update).bind(1, 0.0, None)
    except TypeError:  # not callable, or not with (step, loss, output)
        raise TypeError(f"{name}.update must be callable as update(step, loss, output)") from None
    except ValueError:  # a builtin without a signature: called as it is
        pass
    candidates = getattr(policy, "candidates", ())
    if not isinstance(candidates, Iterable) or isinstance(candidates, str):
        raise TypeError(f"{name}.candidates must be a set of iterations, got "
                        f"{type(candidates).__name__}")
    every = getattr(policy, "every", 1)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"{name}.every must be an integer >= 1 (read every k-th iteration), "
                         f"got {every!r}")
    if _used(policy):
        raise ValueError(f"this {type(policy).__name__} has served a fit already and keeps its "
                         "state (its best iterate, its reason): make a new one for each fit, "
                         "or pass a spec string")
    return policy


def _used(policy: Any) -> bool:
    """Whether a built-in rule, or one in a group, has been offered an iteration."""
    inner = getattr(policy, "policies", None)
    if isinstance(policy, FirstOf | Shadow):
        return any(map(_used, inner.values() if isinstance(inner, dict) else inner))
    return isinstance(policy, Rule) and policy.last_step > 0


def _common_every(policies: Any) -> int:
    """The iterations at which a group's policies read the output from the unperturbed input,
    which the loop then computes: every k-th, k the greatest common divisor of the ``every``
    (1 when absent) of those that ask for it (the others read the output the loop keeps,
    there at every iteration)."""
    return math.gcd(*(int(getattr(p, "every", 1)) for p in policies
                      if getattr(p, "needs_unperturbed_output", False))) or 1


def _candidates(policy: Any) -> frozenset[int]:
    return frozenset(getattr(policy, "candidates", (policy.best_step,)))


def _finalize(policy: Any, last_step: int) -> None:
    finalize = getattr(policy, "finalize", None)
    if finalize is not None:
        finalize(last_step)


def members(policy: Any) -> Iterator[Any]:
    """The policy itself, or the members of a :class:`FirstOf`."""
    yield from policy.policies if isinstance(policy, FirstOf) else (policy,)


# --------------------------------------------------------------------------- specs

#: The built-in rules by spec name.
RULES: dict[str, type[Rule]] = {
    "fixed": Fixed,
    "patience": Patience,
    "wmv": WMV,
    "emv": EMV,
    "discrepancy": Discrepancy,
    "holdout": Holdout,
    "oracle": Oracle,
}


def _tunable(cls: type[Rule]) -> list[str]:
    return [p for p in inspect.signature(cls).parameters if p not in CONTEXT]


def _number(raw: str, where: str) -> int | float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{where} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{where} must be finite, got {raw!r}")
    return int(value) if value.is_integer() and "." not in raw and "e" not in raw.lower() \
        else value


def parse_stop(spec: str) -> list[tuple[str, dict[str, int | float]]]:
    """Parse a stopping spec into ``[(rule name, parameters), ...]``.

    Parameters
    ----------
    spec : str
        ``name[:key=value,...]``, several joined by ``+``. A bare first value sets the rule's
        first parameter (``"fixed:3000"``, ``"patience:200"``). Case and spaces are ignored.

    Raises
    ------
    ValueError
        On an unknown rule or parameter (the message lists the valid ones), bad syntax, a
        non-numeric value, a value out of its rule's range or a required parameter left out:
        everything but the data a rule needs, which :func:`make_policy` checks.

    Examples
    --------
    >>> parse_stop("fixed:3000")
    [('fixed', {'num_iter': 3000})]
    >>> parse_stop("WMV: window=50 + holdout:fraction=0.2")
    [('wmv', {'window': 50}), ('holdout', {'fraction': 0.2})]
    """
    if not isinstance(spec, str):
        raise TypeError(f"a stopping spec must be a string, got {type(spec).__name__}")
    rules = []
    for part in re.split(r"\+(?=\s*(?:[A-Za-z_]|$))", spec):  # a name (or nothing) follows a
        name, colon, args = (s.strip() for s in part.partition(":"))  # "+"; "1e+3" is a number
        name = name.lower()
        if name == "auto":
            raise ValueError(f"'auto' in {spec!r} is a spec of its own, written in lower case "
                             "and alone: pass stop='auto' (--stop auto), or name the rules")
        if name not in RULES:
            raise ValueError(
                f"unknown stopping rule {name!r} in {spec!r}; valid rules: {', '.join(RULES)}")
        tunable = _tunable(RULES[name])
        params: dict[str, int | float] = {}
        for index, item in enumerate(args.split(",") if colon else []):
            key, equals, raw = (s.strip() for s in item.partition("="))
            if not equals and index == 0 and key:
                key, raw = tunable[0], key
            key = key.lower()
            if key not in tunable or not raw or key in params:
                problem = "given twice" if key in params else "unknown or without a value"
                raise ValueError(
                    f"parameter {item.strip()!r} of stopping rule {name!r} is {problem}; its "
                    f"parameters: {', '.join(tunable)}")
            params[key] = _number(raw, f"parameter {key!r} of stopping rule {name!r}")
        _build(name, _STAND_INS, params)  # the rule's own checks of its values, on stand-in data
        rules.append((name, params))
    holdouts = sum(name == "holdout" for name, _ in rules)
    if holdouts > 1:  # one split of the data
        raise ValueError(f"at most one holdout rule per spec, got {holdouts} in {spec!r}")
    return rules


#: Data for :func:`parse_stop` to build a rule with, so that it checks the rule's values
#: before the real data exist; no rule's constructor reads more of them than this.
_STAND_INS: dict[str, Any] = {"operator": object(), "y": torch.zeros(1), "sigma": 1.0,
                              "ground_truth": torch.zeros(1)}


def _build(name: str, context: dict[str, Any], params: dict[str, int | float]) -> Rule:
    """Rule ``name`` with its parameters and, from ``context``, the data it needs."""
    cls = RULES[name]
    signature = inspect.signature(cls).parameters
    needed = [k for k in signature if k in CONTEXT]
    for key in needed:
        if context[key] is None:
            raise ValueError(f"stopping rule {name!r} needs {CONTEXT[key]}")
    for key in _tunable(cls):
        if key not in params and signature[key].default is inspect.Parameter.empty:
            raise ValueError(f"stopping rule {name!r} needs its {key}, e.g. '{name}:{key}=…'")
    try:
        return cls(**{k: context[k] for k in needed}, **params)
    except (TypeError, ValueError) as exc:  # a value out of range or of the wrong kind
        raise ValueError(f"stopping rule {name!r}: {exc}") from None


def holds_out(stop: Any) -> bool:
    """Whether a stopping spec fits only part of the data (it has a ``holdout`` rule)."""
    return isinstance(stop, str) and any(name == "holdout" for name, _ in parse_stop(stop))


def make_policy(
    stop: str | Any,
    *,
    operator: Any = None,
    y: Tensor | None = None,
    sigma: float | None = None,
    ground_truth: Tensor | None = None,
    seed: int = 0,
) -> tuple[Any, Any, Tensor | None]:
    """Build the policy a spec names, with the data it needs; the one builder of policies.

    Parameters
    ----------
    stop : str or policy
        A spec (see :func:`parse_stop`) or a policy object, returned as it is (after checking
        it has ``update``, ``best_step`` and ``reason``).
    operator, y
        The forward model (a :class:`deepprior.operators.LinearOperator`) and the observation
        ``(1, *measurement_shape)`` the fit will see.
    sigma : float or None
        Noise level in the units of ``y`` (``discrepancy``).
    ground_truth : torch.Tensor or None
        Clean image ``(1, C, H, W)`` (``oracle``).
    seed : int
        Seed of the hold-out split.

    Returns
    -------
    policy, fit_operator, fit_y
        The policy, and the operator and data the loop must fit: with a ``holdout`` rule, the
        part not held out; else ``operator`` and ``y`` themselves.

    Raises
    ------
    ValueError
        On a bad spec, a rule whose data is missing (the message says what to pass), or a
        hold-out split that leaves one side empty.
    """
    if not isinstance(stop, str):
        return _check_policy(stop), operator, y
    rules = parse_stop(stop)
    context: dict[str, Any] = {"operator": operator, "y": y, "sigma": sigma,
                               "ground_truth": ground_truth}
    held: dict[str, Any] = {}
    holdout = next((params for name, params in rules if name == "holdout"), None)
    if holdout is not None:  # the only one, its fraction checked by parse_stop
        fraction = holdout.get("fraction", HOLDOUT_FRACTION)
        fit_op, fit_y, held["operator"], held["y"] = split_measurements(operator, y, fraction,
                                                                        seed)
        context.update(operator=fit_op, y=fit_y)
    policies = [_build(name, {**context, **held} if name == "holdout" else context, params)
                for name, params in rules]
    pixels = math.prod(getattr(operator, "image_shape", ()) or (0,))
    for rule in policies:
        if isinstance(rule, WMV):
            rule.check_memory(pixels)
    policy = policies[0] if len(policies) == 1 else FirstOf(*policies)
    return policy, context["operator"], context["y"]


def split_measurements(operator: Any, y: Tensor, fraction: float, seed: int):
    """Hold out ``round(fraction · m)`` of the ``m`` measurements, drawn at random (seeded by
    ``seed + 1``): as many for every seed, so that whether a split leaves data on both sides
    depends on ``m`` and ``fraction`` alone (a draw per entry held out 2 of 5 at one seed,
    none at another)."""
    if operator is None or y is None:
        raise ValueError(f"stopping rule 'holdout' needs {CONTEXT['operator']} and {CONTEXT['y']}")
    shape = tuple(operator.measurement_shape)
    generator = torch.Generator().manual_seed(seed + 1)
    observed = getattr(operator, "observed", None)  # entries that carry data (a Mask's pixels)
    observed = torch.ones(shape, dtype=torch.bool) if observed is None else observed.cpu()
    total = int(observed.sum())
    count = math.floor(fraction * total + 0.5)
    if not 0 < count < total:
        side = "holds out all of them, leaving none to fit: a smaller fraction" if count \
            else "holds out none: a larger fraction, more data or a rule that holds none out"
        raise ValueError(f"holdout fraction {fraction} leaves no data on one side of the split "
                         f"of {total} measurements ({fraction:g} × {total} rounds to {count}: "
                         f"it {side})")
    scores = torch.rand(shape, generator=generator).masked_fill(~observed, math.inf)
    held = torch.zeros(shape, dtype=torch.bool)
    held.view(-1)[scores.view(-1).argsort(stable=True)[:count]] = True  # the lowest scores
    keep = observed & ~held
    flat = y.reshape(shape)
    return (operator.restrict(keep), flat[keep.to(y.device)][None],
            operator.restrict(held), flat[held.to(y.device)][None])
