"""Early-stopping policies for the fitting loop: when to stop and which iterate to return.

An untrained network fitted to one corrupted observation first reproduces the image and later
the noise, so the iterate to return lies somewhere in the middle of the run. A *policy* watches
the run one iteration at a time and answers three questions: stop now?  which iterate is best?
why?  The loop asks the policy; the policy never runs the loop.

The interface (:class:`StoppingPolicy`) is what :func:`deepprior.fit.fit` relies on:

- ``update(step, loss, output) -> bool`` once per iteration (``step`` is 1-based and increasing,
  ``loss`` the training MSE as a float, ``output`` the detached candidate ``(1, C, H, W)`` on the
  fitting device); ``True`` means stop now.
- ``best_step``: the iteration whose output to return (0 before the first update).
- ``candidates``: the steps whose outputs the loop must keep (a frozenset that always contains
  ``best_step``; usually just ``{best_step}``). A policy only ever moves ``best_step`` to the
  current step or to a step it kept as a candidate, so the loop always holds the output it needs.
- ``reason``: a human-readable sentence, e.g. ``"no new minimum of the output variance for 1000
  iterations (WMV); best at iteration 812"``.
- ``finalize(last_step)``: called when the loop ends for another reason (iteration limit,
  interrupt) so that ``reason`` says which iterate is returned and by which rule.
- optional ``needs_unperturbed_output``: ``True`` asks the loop for the output computed from the
  unperturbed network input (Deep Image Prior perturbs its input at every iteration).

The rules (see REFERENCES §4):

====================  ==========================================================  ==============
name                  rule                                                        needs
====================  ==========================================================  ==============
``fixed``             a fixed number of iterations                                 —
``patience``          no decrease of the training loss for ``patience`` steps      —
``wmv``               ES-WMV: windowed moving variance of the outputs (Wang et al.) —
``emv``               ES-EMV: exponential moving variance of the outputs           —
``discrepancy``       Morozov's discrepancy principle ‖y − A f‖² ≤ τ·m·σ²           σ
``holdout``           validation loss on held-out measurements (Yaman et al.)      a data split
``oracle``            PSNR against the clean image (benchmarking only)             ground truth
====================  ==========================================================  ==============

Rules are written as text specs (``"wmv:window=100,patience=1000"``, ``"fixed:3000"``,
``"wmv+discrepancy"`` for the first of several to fire), parsed by :func:`parse_policy` into
:class:`PolicySpec` objects and built by :func:`build_policy`.

This module is a leaf: it imports no other ``deepprior`` module. Operators are any objects with
a method ``A(x)``.
"""

from __future__ import annotations

import abc
import inspect
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "CONTEXT_ARGS",
    "EMV",
    "HOLDOUT_FRACTION",
    "POLICIES",
    "WMV",
    "Discrepancy",
    "FirstOf",
    "Fixed",
    "Holdout",
    "Oracle",
    "Patience",
    "Policy",
    "PolicySpec",
    "StoppingPolicy",
    "build_policy",
    "parse_policy",
]

#: Default fraction of the measurements the caller holds out for the ``holdout`` rule when the
#: spec gives none (about 10% of the pixels for denoising, as in ZS-SSL's denoising setting).
HOLDOUT_FRACTION = 0.1

#: Constructor arguments that come from the caller's context, never from a text spec.
CONTEXT_ARGS: Mapping[str, str] = MappingProxyType(
    {
        "ground_truth": "the clean image, a tensor (1, C, H, W)",
        "operator": "the forward operator (an object with a method A)",
        "y": "the observation, a tensor of the operator's output shape",
        "sigma": "the noise level σ on the [0, 1] scale",
    }
)


# --------------------------------------------------------------------------- interface


@runtime_checkable
class StoppingPolicy(Protocol):
    """What the fitting loop needs from a stopping policy (see the module docstring)."""

    @property
    def best_step(self) -> int:
        """The 1-based iteration whose output to return (0 before the first update)."""
        ...

    @property
    def reason(self) -> str:
        """Why the policy stopped (or, after :meth:`finalize`, which iterate it returns)."""
        ...

    @property
    def candidates(self) -> frozenset[int]:
        """Steps whose outputs the loop must keep; always contains ``best_step``."""
        ...

    def update(self, step: int, loss: float, output: Tensor) -> bool:
        """Record iteration ``step``; return ``True`` to stop now."""
        ...

    def finalize(self, last_step: int) -> None:
        """Set ``reason`` when the loop ends without the policy firing."""
        ...


# --------------------------------------------------------------------------- validation


def _check_int(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(
            f"{name} must be an integer >= {minimum}, got {value!r} ({type(value).__name__})"
        )
    if value < minimum:
        raise ValueError(f"{name} must satisfy {name} >= {minimum}; got {value}")
    return int(value)


def _check_float(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite real number within [low, high] (ends open as asked), as a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    lower = "" if low is None else f"{low:g} {'<' if low_open else '<='} "
    upper = "" if high is None else f" {'<' if high_open else '<='} {high:g}"
    inside = math.isfinite(value)
    if inside and low is not None:
        inside = value > low if low_open else value >= low
    if inside and high is not None:
        inside = value < high if high_open else value <= high
    if not inside:
        condition = f"{lower}{name}{upper}" if lower or upper else f"{name} finite"
        raise ValueError(f"{name} must satisfy {condition}; got {value!r}")
    return value


def _check_min_delta(value: object) -> float:
    return _check_float("min_delta", value, low=0.0, high=1.0, high_open=True)


def _check_operator(operator: object) -> None:
    if not callable(getattr(operator, "A", None)):
        raise TypeError(
            "operator must be an object with a method A(x) (the forward model), "
            f"got {type(operator).__name__}"
        )


def _check_tensor(name: str, value: object) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    return value.detach()


def _accumulator_dtype(device: torch.device) -> torch.dtype:
    """float64 for running sums, except on Apple's MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


# --------------------------------------------------------------------------- bookkeeping


def _improves(value: float, best: float, min_delta: float) -> bool:
    """Whether ``value`` is a new minimum: below ``best − min_delta·|best|`` (NaN never is)."""
    if math.isnan(value):
        return False
    if math.isnan(best):
        return True
    if min_delta == 0.0 or math.isinf(best):
        return value < best
    return value < best - min_delta * abs(best)


class _MinTracker:
    """Track the step of the smallest value seen, with patience and a relative ``min_delta``.

    The first value always becomes the best (even a non-finite one, so that some iterate is
    always selected); afterwards a value must beat :func:`_improves`.
    """

    def __init__(self, patience: int | None, min_delta: float) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.best_value = math.inf
        self.best_step = 0

    def update(self, step: int, value: float) -> bool:
        """Record ``value`` at ``step``; return whether it became the new best."""
        if self.best_step == 0 or _improves(value, self.best_value, self.min_delta):
            self.best_value = value
            self.best_step = step
            return True
        return False

    def exhausted(self, step: int) -> bool:
        """True once ``patience`` steps have passed since the best one."""
        return self.patience is not None and step - self.best_step >= self.patience


class Policy(abc.ABC):
    """Common bookkeeping of the stopping policies.

    Subclasses implement :meth:`_update` (the rule) and set ``best_step`` and, when they stop,
    ``reason``. The base class validates the step numbers, keeps ``candidates = {best_step}``
    and writes the reason of :meth:`finalize`.

    Class attributes describe the rule for :func:`parse_policy` and :func:`build_policy`:
    ``name`` (the spec name), ``label`` (used in reasons), ``spec_params`` (constructor
    parameters settable in a spec, with their types), ``context_args`` (constructor arguments
    that come from the caller, see :data:`CONTEXT_ARGS`), ``caller_params`` (spec parameters
    consumed by the caller, not by the class) and ``positional_param`` (the parameter a bare
    value sets, as in ``"fixed:3000"``).
    """

    name: ClassVar[str] = ""
    label: ClassVar[str] = ""
    criterion: ClassVar[str] = ""
    spec_params: ClassVar[Mapping[str, type]] = MappingProxyType({})
    context_args: ClassVar[tuple[str, ...]] = ()
    caller_params: ClassVar[Mapping[str, type]] = MappingProxyType({})
    positional_param: ClassVar[str | None] = None
    needs_unperturbed_output: ClassVar[bool] = False

    @classmethod
    def check_caller_params(cls, params: Mapping[str, float | int]) -> None:
        """Validate the spec parameters consumed by the caller (none by default)."""
        return None

    def __init__(self) -> None:
        self.best_step = 0
        self.reason = ""
        self.last_step = 0
        self.stopped = False

    @property
    def candidates(self) -> frozenset[int]:
        """Steps whose outputs the loop must keep: ``{best_step}``."""
        return frozenset((self.best_step,))

    def update(self, step: int, loss: float, output: Tensor) -> bool:
        """Record iteration ``step`` and return ``True`` to stop now.

        Parameters
        ----------
        step : int
            1-based iteration number, larger than at the previous call.
        loss : float
            Training loss (MSE) of this iteration.
        output : torch.Tensor
            The candidate reconstruction (1, C, H, W), detached, on the fitting device.

        Returns
        -------
        bool
            Whether the loop should stop now.

        Raises
        ------
        TypeError
            If ``step`` is not an integer or ``output`` not a tensor.
        ValueError
            If ``step`` is not larger than the previous step.
        """
        if isinstance(step, bool) or not isinstance(step, numbers.Integral):
            raise TypeError(f"step must be an integer, got {step!r} ({type(step).__name__})")
        if step <= self.last_step:
            raise ValueError(f"step must be increasing and >= 1: got {step} after {self.last_step}")
        if not isinstance(output, Tensor):
            raise TypeError(f"output must be a torch.Tensor, got {type(output).__name__}")
        self.last_step = int(step)
        stop = bool(self._update(int(step), float(loss), output.detach()))
        self.stopped = self.stopped or stop
        return stop

    @abc.abstractmethod
    def _update(self, step: int, loss: float, output: Tensor) -> bool:
        """The rule: update ``best_step`` (and ``reason`` when stopping); return stop?"""

    def finalize(self, last_step: int) -> None:
        """Set ``reason`` when the loop ends without this policy firing.

        Parameters
        ----------
        last_step : int
            The last iteration the loop ran (iteration limit or interrupt).
        """
        if self.stopped:
            return
        prefix = f"the {self.label} rule did not fire by iteration {last_step}"
        if self.best_step == 0:
            self.reason = f"{prefix}; no iterate was recorded"
        else:
            self.reason = f"{prefix}; {self._final_choice()}"

    def _final_choice(self) -> str:
        return f"best iterate by {self.label} ({self.criterion}) at iteration {self.best_step}"

    def __repr__(self) -> str:
        params = ", ".join(f"{key}={getattr(self, key)!r}" for key in self.spec_params)
        return f"{type(self).__name__}({params})"


# --------------------------------------------------------------------------- rules


class Fixed(Policy):
    """Stop after a fixed number of iterations and return the last iterate.

    Parameters
    ----------
    num_iter : int
        Number of iterations, >= 1.

    Raises
    ------
    ValueError
        If ``num_iter < 1``.

    Notes
    -----
    The protocol of the Deep Decoder and Deep Image Prior papers (e.g. 1,900 to 3,000
    iterations for denoising); the right number depends on the image, the noise and the
    network, which is what the other rules estimate.

    Examples
    --------
    >>> import torch
    >>> policy = Fixed(3)
    >>> [policy.update(step, 0.1, torch.zeros(1, 1, 2, 2)) for step in (1, 2, 3)]
    [False, False, True]
    >>> policy.best_step
    3
    """

    name = "fixed"
    label = "fixed"
    spec_params = MappingProxyType({"num_iter": int})
    positional_param = "num_iter"

    def __init__(self, num_iter: int) -> None:
        super().__init__()
        self.num_iter = _check_int("num_iter", num_iter, minimum=1)

    def _update(self, step: int, loss: float, output: Tensor) -> bool:
        self.best_step = step
        if step >= self.num_iter:
            self.reason = f"reached num_iter={self.num_iter} (fixed); returning the last iterate"
            return True
        return False

    def finalize(self, last_step: int) -> None:
        """Set ``reason`` when the loop ends before ``num_iter`` iterations."""
        if self.stopped:
            return
        self.reason = (
            f"stopped at iteration {last_step} before num_iter={self.num_iter} (fixed); "
            f"returning the last iterate (iteration {self.best_step})"
        )


class Patience(Policy):
    """Stop when the training loss has not decreased for ``patience`` iterations.

    Parameters
    ----------
    patience : int
        Iterations without a new minimum of the loss before stopping, >= 1.
    min_delta : float
        *Relative* improvement that counts as a new minimum: a loss counts only if it is below
        ``best · (1 − min_delta)``. 0 (default) accepts any strict decrease; 0.001 asks for
        0.1%. Relative, so the same value works whatever the scale of the data. In [0, 1).
    check_finite : bool
        Stop at once, with reason "non-finite loss", when the loss is NaN or infinite.

    Raises
    ------
    ValueError
        If ``patience < 1`` or ``min_delta`` is outside [0, 1).

    Notes
    -----
    The best iterate is the one with the lowest training loss (what the official Deep Decoder
    code keeps). The training loss keeps decreasing while the network fits the noise, so this
    rule detects convergence, a plateau or a divergence — not overfitting; it suits problems
    where fitting the data is the goal (compressive sensing with m < n). Modelled on
    Lightning's ``EarlyStopping`` (patience, min_delta, check_finite).
    """

    name = "patience"
    label = "patience"
    criterion = "lowest training loss"
    spec_params = MappingProxyType({"patience": int, "min_delta": float})
    positional_param = "patience"

    def __init__(
        self, patience: int = 500, min_delta: float = 0.0, *, check_finite: bool = True
    ) -> None:
        super().__init__()
        self.patience = _check_int("patience", patience, minimum=1)
        self.min_delta = _check_min_delta(min_delta)
        self.check_finite = bool(check_finite)
        self._tracker = _MinTracker(self.patience, self.min_delta)

    @property
    def best_loss(self) -> float:
        """The lowest training loss so far (inf before the first update)."""
        return self._tracker.best_value

    def _update(self, step: int, loss: float, output: Tensor) -> bool:
        self._tracker.update(step, loss)
        self.best_step = self._tracker.best_step
        if self.check_finite and not math.isfinite(loss):
            self.reason = (
                f"non-finite loss ({loss}) at iteration {step}; best at iteration {self.best_step}"
            )
            return True
        if self._tracker.exhausted(step):
            self.reason = (
                f"no decrease of the training loss for {self.patience} iterations (patience); "
                f"best at iteration {self.best_step}"
            )
            return True
        return False


class Oracle(Policy):
    """Select the iterate with the highest PSNR against the clean image.

    **Benchmarking only**: it needs the ground truth, which a user never has. It measures how
    far a real rule is from the best iterate of the same run.

    Parameters
    ----------
    ground_truth : torch.Tensor
        The clean image, same shape as the outputs, values in [0, 1].
    patience : int or None
        Stop after ``patience`` iterations without a new PSNR maximum; ``None`` (default)
        never stops, so the run goes to the iteration limit and the best iterate is returned.

    Raises
    ------
    TypeError
        If ``ground_truth`` is not a floating-point tensor.
    ValueError
        If ``patience < 1``; in :meth:`update`, if the output's shape differs.

    Notes
    -----
    PSNR = 10·log10(1 / mean((f_t − x)²)) with peak 1. One device→host read per iteration.

    Attributes
    ----------
    best_psnr : float
        Highest PSNR so far (−inf before the first update).
    psnr_history : list[float]
        PSNR of every iterate seen, in order.
    """

    name = "oracle"
    label = "oracle"
    criterion = "highest PSNR against the ground truth"
    spec_params = MappingProxyType({"patience": int})
    context_args = ("ground_truth",)
    positional_param = "patience"

    def __init__(self, ground_truth: Tensor, patience: int | None = None) -> None:
        super().__init__()
        self._ground_truth = _check_tensor("ground_truth", ground_truth)
        self.patience = None if patience is None else _check_int("patience", patience, minimum=1)
        self._tracker = _MinTracker(self.patience, 0.0)
        self.psnr_history: list[float] = []

    @property
    def best_psnr(self) -> float:
        """Highest PSNR so far in dB (−inf before the first update)."""
        return -self._tracker.best_value

    def _update(self, step: int, loss: float, output: Tensor) -> bool:
        if output.shape != self._ground_truth.shape:
            raise ValueError(
                f"output shape {tuple(output.shape)} differs from the ground truth's "
                f"{tuple(self._ground_truth.shape)}"
            )
        if self._ground_truth.device != output.device:
            self._ground_truth = self._ground_truth.to(output.device)
        acc = _accumulator_dtype(output.device)
        mse = float(torch.mean((output.to(acc) - self._ground_truth.to(acc)) ** 2))
        psnr = 10.0 * math.log10(1.0 / mse) if mse > 0 else math.inf
        self.psnr_history.append(psnr)
        self._tracker.update(step, -psnr)
        self.best_step = self._tracker.best_step
        if self._tracker.exhausted(step):
            self.reason = (
                f"no new PSNR maximum for {self.patience} iterations (oracle, uses the ground "
                f"truth); best {self.best_psnr:.2f} dB at iteration {self.best_step}"
            )
            return True
        return False

    def _final_choice(self) -> str:
        return (
            f"best iterate by the oracle (highest PSNR against the ground truth, "
            f"{self.best_psnr:.2f} dB) at iteration {self.best_step}"
        )


class WMV(Policy):
    """ES-WMV: stop when the windowed moving variance of the outputs stops decreasing.

    Parameters
    ----------
    window : int
        W, the number of recent outputs whose variance is measured, >= 2 (the variance of a
        single output is 0).
    patience : int
        P, iterations without a new minimum of the variance before stopping, >= 1.
    min_delta : float
        Relative decrease that counts as a new minimum (see :class:`Patience`), in [0, 1).

    Raises
    ------
    ValueError
        If a parameter is out of range; in :meth:`update`, if the output size changes.

    Notes
    -----
    Wang, Li, Zhuang, Chen, Liang & Sun, "Early Stopping for Deep Image Prior" (TMLR 2023).
    With x_t the output at iteration t, N its number of elements and x̄ the mean of the
    last W outputs,

        VAR_t = (1/W) Σ_{i=t−W+1..t} ‖x_i − x̄‖² / N,   t ≥ W.

    The variance is U-shaped: high while the image is being fitted, lowest near the best
    iterate, rising again as the network fits the noise. The rule tracks argmin_t VAR_t, stops
    after P iterations without a new minimum and returns the output at the argmin (the latest
    output of that window, i.e. iteration t). Before the window fills, the latest output is the
    best available.

    Cost: the W outputs live in a ring buffer on the output's device (W·N floats of the
    output's dtype: W=100 and a 512×512 RGB image take 315 MB) plus a running mean (N float64).
    The running mean and sum of squared deviations are updated in O(N) per iteration
    (sliding-window Welford update in float64; float32 on MPS) and recomputed exactly from the
    buffer every W iterations, so rounding cannot accumulate. One device→host read per
    iteration once the window is full.
    """

    name = "wmv"
    label = "WMV"
    criterion = "minimum windowed output variance"
    spec_params = MappingProxyType({"window": int, "patience": int, "min_delta": float})

    def __init__(self, window: int = 100, patience: int = 1000, min_delta: float = 0.0) -> None:
        super().__init__()
        self.window = _check_int("window", window, minimum=2)
        self.patience = _check_int("patience", patience, minimum=1)
        self.min_delta = _check_min_delta(min_delta)
        self._tracker = _MinTracker(self.patience, self.min_delta)
        # Allocated at the first update, on the output's device:
        self._buffer = torch.empty(0, 0)  # (W, N) ring buffer of the last W outputs
        self._mean = torch.empty(0, dtype=torch.float64)  # (N,) mean of the buffered outputs
        self._m2 = torch.zeros((), dtype=torch.float64)  # sum of squared deviations from the mean
        self._count = 0
        self.last_variance: float | None = None

    @property
    def best_variance(self) -> float:
        """The smallest VAR_t so far (inf before the window fills)."""
        return self._tracker.best_value

    def _update(self, step: int, loss: float, output: Tensor) -> bool:
        x = output.reshape(-1)
        self._push(x)
        if self._count < self.window:
            self.best_step = step
            return False
        self.last_variance = max(float(self._m2), 0.0) / (self.window * x.numel())
        self._tracker.update(step, self.last_variance)
        self.best_step = self._tracker.best_step
        if self._tracker.exhausted(step):
            self.reason = (
                f"no new minimum of the output variance for {self.patience} iterations (WMV, "
                f"window={self.window}); best at iteration {self.best_step}"
            )
            return True
        return False

    def _push(self, x: Tensor) -> None:
        """Add ``x`` to the window, replacing the oldest output once the window is full."""
        if self._count == 0:
            acc = _accumulator_dtype(x.device)
            self._buffer = torch.empty((self.window, x.numel()), dtype=x.dtype, device=x.device)
            self._mean = torch.zeros(x.numel(), dtype=acc, device=x.device)
            self._m2 = torch.zeros((), dtype=acc, device=x.device)
        elif x.numel() != self._buffer.shape[1]:
            raise ValueError(
                f"output size changed from {self._buffer.shape[1]} to {x.numel()} elements; "
                "WMV needs outputs of one shape"
            )
        mean, slot = self._mean, self._count % self.window
        new = x.to(mean.dtype)
        if self._count < self.window:  # filling: Welford's update
            delta = new - mean
            mean.add_(delta, alpha=1.0 / (self._count + 1))
            self._m2 += torch.dot(delta, new - mean)
        else:  # sliding: replace the oldest output
            old = self._buffer[slot].to(mean.dtype)
            change = new - old
            old_mean = mean.clone()
            mean.add_(change, alpha=1.0 / self.window)
            self._m2 += torch.dot(change, (new - mean) + (old - old_mean))
        self._buffer[slot].copy_(x)
        self._count += 1
        if self._count % self.window == 0:
            self._recompute()

    def _recompute(self) -> None:
        """Exact mean and squared deviations from the buffer (one pass per row, O(W·N))."""
        self._mean.zero_()
        for row in self._buffer:
            self._mean.add_(row.to(self._mean.dtype))
        self._mean.div_(self.window)
        self._m2.zero_()
        for row in self._buffer:
            deviation = row.to(self._mean.dtype) - self._mean
            self._m2 += torch.dot(deviation, deviation)

    def _final_choice(self) -> str:
        if self._tracker.best_step == 0:
            return (
                f"the window (window={self.window}) never filled; returning the last iterate "
                f"(iteration {self.best_step})"
            )
        return super()._final_choice()


class EMV(Policy):
    """ES-EMV: stop when the exponential moving variance of the outputs stops decreasing.

    Parameters
    ----------
    alpha : float
        Smoothing weight α of the moving average and variance, 0 < α < 1.
    patience : int
        P, iterations without a new minimum before stopping, >= 1.
    burn_in : int or None
        Iterations before the minimum is tracked (the first values are biased low by the
        initialisation EMV = 0). ``None`` (default) uses ⌈10/α⌉, after which the weight of the
        initialisation, (1 − α)^burn_in ≤ e^−10, is negligible. >= 0.
    min_delta : float
        Relative decrease that counts as a new minimum (see :class:`Patience`), in [0, 1).

    Raises
    ------
    ValueError
        If a parameter is out of range; in :meth:`update`, if the output size changes.

    Notes
    -----
    Wang et al. (TMLR 2023), the memory-light variant of ES-WMV. With EMA_1 = x_1, EMV_1 = 0:

        EMA_t = EMA_{t−1} + α (x_t − EMA_{t−1})
        EMV_t = (1 − α) (EMV_{t−1} + α ‖x_t − EMA_{t−1}‖² / N)

    The rule tracks argmin EMV_t over t > burn_in, stops after P iterations without a new
    minimum and returns the output at the argmin. Memory is O(N) (one running average, in
    float64 except on MPS) whatever the number of iterations; one device→host read per
    iteration after the burn-in.
    """

    name = "emv"
    label = "EMV"
    criterion = "minimum exponential moving variance of the output"
    spec_params = MappingProxyType(
        {"alpha": float, "patience": int, "burn_in": int, "min_delta": float}
    )

    def __init__(
        self,
        alpha: float = 0.1,
        patience: int = 1000,
        burn_in: int | None = None,
        min_delta: float = 0.0,
    ) -> None:
        super().__init__()
        self.alpha = _check_float("alpha", alpha, low=0.0, high=1.0, low_open=True, high_open=True)
        self.patience = _check_int("patience", patience, minimum=1)
        self.burn_in = (
            math.ceil(10.0 / self.alpha)
            if burn_in is None
            else _check_int("burn_in", burn_in, minimum=0)
        )
        self.min_delta = _check_min_delta(min_delta)
        self._tracker = _MinTracker(self.patience, self.min_delta)
        self._ema = torch.empty(0)  # running average EMA_t (allocated at the first update)
        self._emv = torch.zeros((), dtype=torch.float64)  # EMV_t
        self._count = 0
        self.last_variance: float | None = None

    @property
    def best_variance(self) -> float:
        """The smallest EMV_t after the burn-in (inf before)."""
        return self._tracker.best_value

    def _update(self, step: int, loss: float, output: Tensor) -> bool:
        x = output.reshape(-1).to(_accumulator_dtype(output.device))
        if self._count == 0:
            self._ema = x.clone()
            self._emv = torch.zeros((), dtype=x.dtype, device=x.device)
        elif x.numel() != self._ema.numel():
            raise ValueError(
                f"output size changed from {self._ema.numel()} to {x.numel()} elements; "
                "EMV needs outputs of one shape"
            )
        else:
            delta = x - self._ema
            self._ema.add_(delta, alpha=self.alpha)
            innovation = torch.dot(delta, delta) / x.numel()
            self._emv = (1 - self.alpha) * (self._emv + self.alpha * innovation)
        self._count += 1
        if self._count <= self.burn_in:
            self.best_step = step
            return False
        self.last_variance = float(self._emv)
        self._tracker.update(step, self.last_variance)
        self.best_step = self._tracker.best_step
        if self._tracker.exhausted(step):
            self.reason = (
                f"no new minimum of the exponential moving variance for {self.patience} "
                f"iterations (EMV, alpha={self.alpha:g}); best at iteration {self.best_step}"
            )
            return True
        return False

    def _final_choice(self) -> str:
        if self._tracker.best_step == 0:
            return (
                f"the burn-in (burn_in={self.burn_in}) did not end; returning the last iterate "
                f"(iteration {self.best_step})"
            )
        return super()._final_choice()


class Discrepancy(Policy):
    """Morozov's discrepancy principle: stop once the data residual reaches the noise level.

    Parameters
    ----------
    operator : object with a method ``A``
        The forward operator of the data the loop fits.
    y : torch.Tensor
        That data, shaped like ``operator.A(output)``.
    sigma : float
        Standard deviation σ of the noise on ``y`` (on the [0, 1] scale), > 0.
    tau : float
        Safety factor τ > 0 on the level (τ = 1: the expected residual of the clean image).
    smoothing : float
        Weight s of the past in the exponential moving average of the residual,
        r̄_t = s·r̄_{t−1} + (1 − s)·r_t with r̄_1 = r_1; 0 disables smoothing. In [0, 1). The
        average lags the residual by about 1/(1 − s) iterations (10 for the default 0.9).

    Raises
    ------
    TypeError
        If ``operator`` has no method ``A`` or ``y`` is not a floating-point tensor.
    ValueError
        If ``sigma``, ``tau`` or ``smoothing`` is out of range; in :meth:`update`, if
        ``operator.A(output)`` and ``y`` differ in shape.

    Notes
    -----
    Morozov (1966). With m = operator.num_measurements (the observed entries; y.numel() for an
    operator without it) and r_t = ‖y − A f_t‖², the rule stops at the first
    iteration t where r̄_t ≤ τ·m·σ² — the residual a reconstruction equal to the clean image
    would have — and returns the iterate f_t. Fitting beyond that level means fitting the
    noise. If the level is never reached, the iterate with the smallest residual r_t is
    returned and the reason says the level was not reached.

    The residual is computed on the output from the unperturbed network input
    (``needs_unperturbed_output = True``): Deep Image Prior's input noise makes the training
    loss jumpy. One device→host read per iteration.
    """

    name = "discrepancy"
    label = "discrepancy principle"
    criterion = "smallest residual"
    spec_params = MappingProxyType({"tau": float, "smoothing": float})
    context_args = ("operator", "y", "sigma")
    needs_unperturbed_output = True

    def __init__(
        self,
        operator: Any,
        y: Tensor,
        sigma: float,
        tau: float = 1.0,
        smoothing: float = 0.9,
    ) -> None:
        super().__init__()
        self._residual = _Residual(operator, y)
        self.operator = operator
        self.sigma = _check_float("sigma", sigma, low=0.0, low_open=True)
        self.tau = _check_float("tau", tau, low=0.0, low_open=True)
        self.smoothing = _check_float("smoothing", smoothing, low=0.0, high=1.0, high_open=True)
        # m: the operator's count of real measurements (a Mask's y also holds zeros at the
        # unobserved pixels, which carry no noise)
        m = getattr(operator, "num_measurements", self._residual.y.numel())
        self.level = self.tau * m * self.sigma**2
        self._tracker = _MinTracker(None, 0.0)
        self.last_residual: float | None = None
        self.smoothed_residual: float | None = None

    @property
    def best_residual(self) -> float:
        """The smallest residual ‖y − A f_t‖² so far (inf before the first update)."""
        return self._tracker.best_value

    def _update(self, step: int, loss: float, output: Tensor) -> bool:
        residual = self._residual(output)
        self.last_residual = residual
        previous = self.smoothed_residual
        self.smoothed_residual = (
            residual
            if previous is None
            else self.smoothing * previous + (1.0 - self.smoothing) * residual
        )
        self._tracker.update(step, residual)
        if self.smoothed_residual <= self.level:
            self.best_step = step
            self.reason = (
                f"residual ‖y − A f‖² = {self.smoothed_residual:.4g} (smoothed) reached the "
                f"noise level τ·m·σ² = {self.level:.4g} at iteration {step} (discrepancy "
                "principle)"
            )
            return True
        self.best_step = self._tracker.best_step
        return False

    def _final_choice(self) -> str:
        return (
            f"the noise level τ·m·σ² = {self.level:.4g} was not reached (smallest residual "
            f"{self.best_residual:.4g}); returning the iterate with the smallest residual "
            f"(iteration {self.best_step})"
        )


class Holdout(Policy):
    """Stop on the loss of held-out measurements, with patience; return the best iterate.

    The caller splits the data: the loop fits one part, this policy gets the other.

    Parameters
    ----------
    operator : object with a method ``A``
        Forward operator of the held-out measurements only.
    y : torch.Tensor
        The held-out measurements, shaped like ``operator.A(output)``.
    patience : int
        Iterations without a new minimum of the validation loss before stopping, >= 1.
    min_delta : float
        Relative decrease that counts as a new minimum (see :class:`Patience`), in [0, 1).

    Raises
    ------
    TypeError
        If ``operator`` has no method ``A`` or ``y`` is not a floating-point tensor.
    ValueError
        If a parameter is out of range; in :meth:`update`, if ``operator.A(output)`` and ``y``
        differ in shape.

    Notes
    -----
    Zero-shot self-supervised validation (Yaman, Hosseini & Akçakaya, ICLR 2022): hold out
    ~20% of the measurements (~10% of the pixels for denoising; the spec parameter
    ``fraction``, default :data:`HOLDOUT_FRACTION`, is consumed by the caller's split). The
    network never sees them, so the validation loss L_t = mean((A f_t − y)²) tracks the error
    on unseen data: it falls while the image is fitted and rises once the noise of the fitted
    part is. Needs no σ. Computed on the output from the unperturbed network input
    (``needs_unperturbed_output = True``). One device→host read per iteration.
    """

    name = "holdout"
    label = "hold-out"
    criterion = "lowest hold-out loss"
    spec_params = MappingProxyType({"patience": int, "min_delta": float})
    context_args = ("operator", "y")
    caller_params = MappingProxyType({"fraction": float})
    positional_param = "patience"
    needs_unperturbed_output = True

    def __init__(
        self, operator: Any, y: Tensor, patience: int = 300, min_delta: float = 0.0
    ) -> None:
        super().__init__()
        self._residual = _Residual(operator, y)
        self.operator = operator
        if self._residual.y.numel() == 0:
            raise ValueError("y (the held-out measurements) is empty; hold out a larger fraction")
        self.patience = _check_int("patience", patience, minimum=1)
        self.min_delta = _check_min_delta(min_delta)
        self._tracker = _MinTracker(self.patience, self.min_delta)
        self.last_loss: float | None = None

    @property
    def best_loss(self) -> float:
        """The lowest validation loss so far (inf before the first update)."""
        return self._tracker.best_value

    @classmethod
    def check_caller_params(cls, params: Mapping[str, float | int]) -> None:
        """Validate ``fraction`` (0 < fraction < 1) when a spec gives it."""
        if "fraction" in params:
            _check_float(
                "fraction", params["fraction"], low=0.0, high=1.0, low_open=True, high_open=True
            )

    def _update(self, step: int, loss: float, output: Tensor) -> bool:
        self.last_loss = self._residual(output) / self._residual.y.numel()
        self._tracker.update(step, self.last_loss)
        self.best_step = self._tracker.best_step
        if self._tracker.exhausted(step):
            self.reason = (
                f"no new minimum of the hold-out loss for {self.patience} iterations "
                f"(hold-out); best at iteration {self.best_step}"
            )
            return True
        return False


class _Residual:
    """‖operator.A(output) − y‖² as a float, accumulated in float64 (float32 on MPS).

    ``y`` is converted once to the output's device and the accumulator dtype, then cached.
    """

    def __init__(self, operator: Any, y: Tensor) -> None:
        _check_operator(operator)
        self.operator = operator
        self.y = _check_tensor("y", y)
        self._y_acc = self.y

    def __call__(self, output: Tensor) -> float:
        predicted = self.operator.A(output)
        if predicted.shape != self.y.shape:
            raise ValueError(
                f"operator.A(output) has shape {tuple(predicted.shape)} but y has shape "
                f"{tuple(self.y.shape)}; pass the y that matches the operator"
            )
        acc = _accumulator_dtype(predicted.device)
        if self._y_acc.device != predicted.device or self._y_acc.dtype != acc:
            self._y_acc = self.y.to(device=predicted.device, dtype=acc)
        difference = predicted.to(acc) - self._y_acc
        return float(torch.dot(difference.reshape(-1), difference.reshape(-1)))


class FirstOf:
    """Combine policies: stop as soon as the first of them fires.

    Every sub-policy sees every iteration. When one or more fire at the same iteration, the
    first in the given order wins and its ``best_step`` and ``reason`` are returned. Before
    any fires, ``best_step`` and ``reason`` are the first policy's. ``candidates`` is the union
    of the sub-policies' candidates, so the loop keeps the best iterate of each.

    Parameters
    ----------
    *policies : StoppingPolicy
        At least one policy.

    Raises
    ------
    ValueError
        If no policy is given.
    TypeError
        If an argument is not a stopping policy.

    Notes
    -----
    ``needs_unperturbed_output`` is true if any sub-policy needs it (all then see the output
    from the unperturbed input).
    """

    def __init__(self, *policies: StoppingPolicy) -> None:
        if not policies:
            raise ValueError("FirstOf needs at least one stopping policy, got none")
        for policy in policies:
            if not isinstance(policy, StoppingPolicy):
                raise TypeError(
                    "FirstOf takes stopping policies (objects with update, best_step, "
                    f"candidates, reason and finalize), got {type(policy).__name__}"
                )
        self.policies: tuple[StoppingPolicy, ...] = tuple(policies)
        self.fired: StoppingPolicy | None = None
        self.needs_unperturbed_output = any(
            getattr(policy, "needs_unperturbed_output", False) for policy in policies
        )

    @property
    def best_step(self) -> int:
        """The firing policy's best step, else the first policy's."""
        return (self.fired or self.policies[0]).best_step

    @property
    def reason(self) -> str:
        """The firing policy's reason, else the first policy's."""
        return (self.fired or self.policies[0]).reason

    @property
    def candidates(self) -> frozenset[int]:
        """Union of the sub-policies' candidates."""
        return frozenset().union(*(policy.candidates for policy in self.policies))

    def update(self, step: int, loss: float, output: Tensor) -> bool:
        """Update every sub-policy; return ``True`` when at least one fires."""
        fired = [policy.update(step, loss, output) for policy in self.policies]
        if self.fired is None and any(fired):
            self.fired = self.policies[fired.index(True)]
        return any(fired)

    def finalize(self, last_step: int) -> None:
        """Finalize every sub-policy (the reason becomes the first policy's)."""
        if self.fired is not None:
            return
        for policy in self.policies:
            policy.finalize(last_step)

    def __repr__(self) -> str:
        return f"FirstOf({', '.join(map(repr, self.policies))})"


# --------------------------------------------------------------------------- specs

#: The policies by spec name.
POLICIES: Mapping[str, type[Policy]] = MappingProxyType(
    {
        "fixed": Fixed,
        "patience": Patience,
        "wmv": WMV,
        "emv": EMV,
        "discrepancy": Discrepancy,
        "holdout": Holdout,
        "oracle": Oracle,
    }
)


@dataclass(frozen=True)
class PolicySpec:
    """One parsed rule of a stopping spec: a policy name and the parameters the spec gave.

    Attributes
    ----------
    name : str
        A key of :data:`POLICIES`.
    params : Mapping[str, float | int]
        Every parameter given in the spec, ints as ``int`` and the others as ``float``
        (defaults are not filled in).
    """

    name: str
    params: Mapping[str, float | int] = field(default_factory=dict)

    @property
    def policy_params(self) -> dict[str, float | int]:
        """The parameters the policy's constructor takes."""
        spec_params = POLICIES[self.name].spec_params
        return {key: value for key, value in self.params.items() if key in spec_params}

    @property
    def caller_params(self) -> dict[str, float | int]:
        """The parameters the caller consumes (e.g. ``fraction`` of ``holdout``)."""
        caller = POLICIES[self.name].caller_params
        return {key: value for key, value in self.params.items() if key in caller}

    def __str__(self) -> str:
        if not self.params:
            return self.name
        items = ",".join(f"{key}={value}" for key, value in self.params.items())
        return f"{self.name}:{items}"


def _describe_params(cls: type[Policy]) -> str:
    defaults = inspect.signature(cls).parameters
    parts = []
    for key, kind in cls.spec_params.items():
        default = defaults[key].default
        shown = "" if default is inspect.Parameter.empty else f", default {default}"
        parts.append(f"{key} ({kind.__name__}{shown})")
    for key, kind in cls.caller_params.items():
        parts.append(f"{key} ({kind.__name__}, used by the caller)")
    return ", ".join(parts)


def _parse_number(policy: str, key: str, raw: str, kind: type) -> float | int:
    try:
        value: float | int = int(raw)
    except ValueError:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(
                f"parameter {key!r} of stopping policy {policy!r} must be a number, got {raw!r}"
            ) from None
    if not math.isfinite(value):
        raise ValueError(
            f"parameter {key!r} of stopping policy {policy!r} must be finite, got {raw!r}"
        )
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise ValueError(
                f"parameter {key!r} of stopping policy {policy!r} must be an integer, got {raw!r}"
            )
        return int(value)
    return float(value)


def _parse_one(text: str, spec: str) -> PolicySpec:
    valid_names = ", ".join(POLICIES)
    if not text:
        raise ValueError(
            f"empty rule in stopping spec {spec!r}: '+' must join two rules; valid names: "
            f"{valid_names}"
        )
    raw_name, colon, arg_text = text.partition(":")
    name = raw_name.strip().lower()
    if name not in POLICIES:
        raise ValueError(
            f"unknown stopping policy {raw_name.strip()!r} in {spec!r}; valid names: {valid_names}"
        )
    cls = POLICIES[name]
    accepted = {**cls.spec_params, **cls.caller_params}
    params: dict[str, float | int] = {}
    for index, item in enumerate(arg_text.split(",") if colon else []):
        key, equals, raw = (part.strip() for part in item.partition("="))
        if not equals and index == 0 and cls.positional_param is not None and key:
            key, raw = cls.positional_param, key
        elif not equals or not key or not raw:
            raise ValueError(
                f"bad parameter {item.strip()!r} in stopping spec {spec!r}: expected "
                f"key=value; valid parameters of {name!r}: {_describe_params(cls)}"
            )
        key = key.lower()
        if key not in accepted:
            raise ValueError(
                f"unknown parameter {key!r} for stopping policy {name!r}; valid parameters: "
                f"{_describe_params(cls)}"
            )
        if key in params:
            raise ValueError(f"parameter {key!r} given twice for stopping policy {name!r}")
        params[key] = _parse_number(name, key, raw, accepted[key])
    cls.check_caller_params(params)
    return PolicySpec(name, params)


def parse_policy(spec: str) -> list[PolicySpec]:
    """Parse a stopping spec such as ``"wmv:window=100,patience=1000"``.

    Parameters
    ----------
    spec : str
        One rule ``name[:key=value,...]`` or several joined by ``+`` (the first to fire stops
        the run, see :class:`FirstOf`). The rule names are the keys of :data:`POLICIES`.
        ``fixed`` and ``patience`` (and ``holdout``, ``oracle``: their patience) accept a bare
        first value: ``"fixed:3000"``. Names and keys are case-insensitive; spaces are ignored.
        Values are numbers: integer parameters take integers (``1e3`` is accepted as 1000),
        the others any finite number.

    Returns
    -------
    list[PolicySpec]
        One spec per rule, in the given order.

    Raises
    ------
    TypeError
        If ``spec`` is not a string.
    ValueError
        On bad syntax, an unknown rule or parameter name, a non-numeric or non-integral value,
        a parameter given twice, or a ``fraction`` outside (0, 1). The message lists the
        valid names or the rule's valid parameters.

    Examples
    --------
    >>> parse_policy("fixed:3000")
    [PolicySpec(name='fixed', params={'num_iter': 3000})]
    >>> [str(rule) for rule in parse_policy("WMV: window=50 + fixed:3000")]
    ['wmv:window=50', 'fixed:num_iter=3000']
    >>> parse_policy("holdout:fraction=0.2")[0].caller_params
    {'fraction': 0.2}
    """
    if not isinstance(spec, str):
        raise TypeError(f"a stopping spec must be a string, got {type(spec).__name__}")
    if not spec.strip():
        raise ValueError(
            "empty stopping spec; expected e.g. 'wmv:window=100,patience=1000'; valid names: "
            f"{', '.join(POLICIES)}"
        )
    return [_parse_one(part.strip(), spec) for part in spec.split("+")]


def build_policy(spec: PolicySpec | str, **context: Any) -> Policy:
    """Build the policy of one parsed rule, taking its data arguments from ``context``.

    Parameters
    ----------
    spec : PolicySpec or str
        A rule from :func:`parse_policy`, or a one-rule spec string.
    **context
        The data arguments the rule needs (keys of :data:`CONTEXT_ARGS`): ``ground_truth``
        for ``oracle``; ``operator``, ``y``, ``sigma`` for ``discrepancy`` (the data the loop
        fits); ``operator``, ``y`` for ``holdout`` (the *held-out* part, after the caller's
        split). Arguments the rule does not need are ignored.

    Returns
    -------
    Policy
        The policy, with the spec's parameters and defaults for the others.

    Raises
    ------
    TypeError
        If a context key is not one of :data:`CONTEXT_ARGS`.
    ValueError
        If the rule needs a context argument that is missing or ``None``, if a string spec
        holds several rules, or as the policy's constructor does.

    Examples
    --------
    >>> build_policy("wmv:window=50")
    WMV(window=50, patience=1000, min_delta=0.0)
    """
    unknown = sorted(set(context) - set(CONTEXT_ARGS))
    if unknown:
        raise TypeError(
            f"unknown context argument(s) {', '.join(unknown)}; valid: {', '.join(CONTEXT_ARGS)}"
        )
    if isinstance(spec, str):
        specs = parse_policy(spec)
        if len(specs) != 1:
            raise ValueError(
                f"build_policy builds one rule, got {len(specs)} in {spec!r}; wrap the built "
                "policies in FirstOf"
            )
        spec = specs[0]
    cls = POLICIES[spec.name]
    kwargs: dict[str, Any] = dict(spec.policy_params)
    signature = inspect.signature(cls).parameters
    for key in cls.spec_params:
        if key not in kwargs and signature[key].default is inspect.Parameter.empty:
            raise ValueError(
                f"stopping policy {spec.name!r} needs the parameter {key}, e.g. "
                f"'{spec.name}:{key}=...'; valid parameters: {_describe_params(cls)}"
            )
    for arg in cls.context_args:
        if context.get(arg) is None:
            raise ValueError(
                f"stopping policy {spec.name!r} needs {arg} ({CONTEXT_ARGS[arg]}); pass it or "
                "choose another rule"
            )
        kwargs[arg] = context[arg]
    return cls(**kwargs)
