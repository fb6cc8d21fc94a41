"""Tests of deepprior.stopping: each rule on synthetic loss/output sequences, the loop contract
(``best_step`` always among the kept ``candidates``), FirstOf, finalize reasons, the spec parser
and the validation messages."""

import inspect
import math

import numpy as np
import pytest
import torch

from deepprior.stopping import (
    CONTEXT_ARGS,
    EMV,
    HOLDOUT_FRACTION,
    POLICIES,
    WMV,
    Discrepancy,
    FirstOf,
    Fixed,
    Holdout,
    Oracle,
    Patience,
    PolicySpec,
    StoppingPolicy,
    build_policy,
    parse_policy,
)

SHAPE = (1, 1, 7, 5)  # tiny odd-sized images keep the file fast


class RowOperator:
    """A toy linear operator: keep every other row and scale by 2."""

    def A(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * x[..., ::2, :]


class PickOperator:
    """A toy hold-out operator: the pixels at fixed flat indices."""

    def __init__(self, index: torch.Tensor) -> None:
        self.index = index

    def A(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1)[self.index]


def constant(value: float, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    return torch.full(shape, float(value))


def run_loop(policy, losses, outputs):
    """Drive ``policy`` the way the fitting loop does: keep only the outputs of the candidate
    steps and check after every update that the best step's output is among them.

    Returns (stop step or None, best step, the kept output at the best step)."""
    kept: dict[int, torch.Tensor] = {}
    step = 0
    for step, (loss, output) in enumerate(zip(losses, outputs, strict=True), start=1):
        stop = policy.update(step, loss, output)
        candidates = policy.candidates
        assert isinstance(candidates, frozenset)
        assert policy.best_step in candidates
        if step in candidates:
            kept[step] = output.clone()
        for old in [s for s in kept if s not in candidates]:
            del kept[old]
        assert policy.best_step in kept
        if stop:
            return step, policy.best_step, kept[policy.best_step]
    policy.finalize(step)
    return None, policy.best_step, kept[policy.best_step]


def first_stop(values, patience, *, start=1):
    """Reference: strict running argmin of ``values`` (indexed from ``start``) and the first
    step where ``patience`` steps passed without a new minimum."""
    best_value, best_step = math.inf, 0
    for step, value in enumerate(values, start=start):
        if best_step == 0 or value < best_value:
            best_value, best_step = value, step
        if step - best_step >= patience:
            return step, best_step
    return None, best_step


def drifting_outputs(num_steps: int, seed: int = 0) -> list[torch.Tensor]:
    """Outputs that converge toward a target, then drift away with growing noise."""
    generator = torch.Generator().manual_seed(seed)
    target = torch.rand(SHAPE, generator=generator)
    outputs = []
    for t in range(1, num_steps + 1):
        amplitude = 0.5 * math.exp(-t / 8) + 0.004 * t
        outputs.append(target + amplitude * torch.randn(SHAPE, generator=generator))
    return outputs


def wmv_reference(outputs: list[torch.Tensor], window: int) -> list[float]:
    """VAR_t for t = W, W+1, … by brute force in float64."""
    flat = np.stack([o.double().reshape(-1).numpy() for o in outputs])
    values = []
    for t in range(window, len(outputs) + 1):
        block = flat[t - window : t]
        values.append(float(((block - block.mean(axis=0)) ** 2).sum(axis=1).mean() / flat.shape[1]))
    return values


def emv_reference(outputs: list[torch.Tensor], alpha: float) -> list[float]:
    flat = [o.double().reshape(-1).numpy() for o in outputs]
    ema, emv, values = flat[0].copy(), 0.0, [0.0]
    for x in flat[1:]:
        delta = x - ema
        emv = (1 - alpha) * (emv + alpha * float(delta @ delta) / x.size)
        ema = ema + alpha * delta
        values.append(emv)
    return values


# --------------------------------------------------------------------------- interface


def make_all_policies():
    ground_truth = torch.rand(SHAPE, generator=torch.Generator().manual_seed(3))
    index = torch.tensor([0, 4, 9, 20, 33])
    return [
        Fixed(30),
        Patience(patience=5),
        Oracle(ground_truth, patience=6),
        WMV(window=4, patience=6),
        EMV(alpha=0.3, patience=6, burn_in=3),
        Discrepancy(RowOperator(), 2.0 * ground_truth[..., ::2, :], sigma=0.05, smoothing=0.5),
        Holdout(PickOperator(index), ground_truth.reshape(-1)[index], patience=6),
        FirstOf(WMV(window=3, patience=5), Holdout(PickOperator(index), torch.zeros(5))),
    ]


@pytest.mark.parametrize("policy", make_all_policies(), ids=lambda p: type(p).__name__)
def test_best_step_always_kept(policy):
    assert isinstance(policy, StoppingPolicy)
    assert policy.best_step == 0
    outputs = drifting_outputs(40, seed=1)
    losses = [float(torch.mean(o**2)) for o in outputs]
    stop, best, kept = run_loop(policy, losses, outputs)
    assert 1 <= best <= (stop or 40)
    torch.testing.assert_close(kept, outputs[best - 1])
    assert policy.reason


def test_step_validation():
    policy = Patience()
    with pytest.raises(ValueError, match="step must be increasing and >= 1: got 0 after 0"):
        policy.update(0, 1.0, constant(0))
    policy.update(2, 1.0, constant(0))
    with pytest.raises(ValueError, match="got 2 after 2"):
        policy.update(2, 1.0, constant(0))
    with pytest.raises(TypeError, match="step must be an integer"):
        policy.update(3.0, 1.0, constant(0))
    with pytest.raises(TypeError, match="step must be an integer"):
        policy.update(True, 1.0, constant(0))
    with pytest.raises(TypeError, match="output must be a torch.Tensor"):
        policy.update(3, 1.0, np.zeros(SHAPE))


def test_steps_may_skip_numbers():
    """The loop skips updates of iterations rolled back by its divergence guard; patience
    counts iterations, not updates."""
    policy = Patience(patience=3)
    for step, loss in [(1, 3.0), (2, 2.0), (4, 2.5)]:
        assert not policy.update(step, loss, constant(0))
    assert policy.update(5, 2.5, constant(0))
    assert policy.best_step == 2


# --------------------------------------------------------------------------- Fixed


def test_fixed_stops_at_num_iter_and_returns_last():
    policy = Fixed(5)
    stop, best, _ = run_loop(policy, [1.0] * 10, [constant(t) for t in range(10)])
    assert (stop, best) == (5, 5)
    assert policy.reason == "reached num_iter=5 (fixed); returning the last iterate"


def test_fixed_finalize_before_num_iter():
    policy = Fixed(50)
    stop, best, kept = run_loop(policy, [1.0] * 4, [constant(t) for t in range(4)])
    assert stop is None and best == 4
    assert float(kept.mean()) == 3.0
    assert policy.reason == (
        "stopped at iteration 4 before num_iter=50 (fixed); returning the last iterate "
        "(iteration 4)"
    )


# --------------------------------------------------------------------------- Patience

LOSSES = [5.0, 4.0, 3.0, 2.0, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]


def test_patience_stops_after_patience_steps_without_decrease():
    policy = Patience(patience=3)
    stop, best, kept = run_loop(policy, LOSSES, [constant(t) for t in range(1, 11)])
    assert (stop, best) == (8, 5)
    assert float(kept.mean()) == 5.0
    assert policy.best_loss == 1.0
    assert policy.reason == (
        "no decrease of the training loss for 3 iterations (patience); best at iteration 5"
    )


def test_patience_min_delta_is_relative():
    losses = [1.0, 0.995, 0.99, 0.985, 0.9, 0.89]
    policy = Patience(patience=10, min_delta=0.02)
    run_loop(policy, losses, [constant(0)] * len(losses))
    assert policy.best_step == 5  # 0.9 < 1.0·(1 − 0.02); 0.89 > 0.9·0.98
    scaled = Patience(patience=10, min_delta=0.02)
    run_loop(scaled, [1e-4 * v for v in losses], [constant(0)] * len(losses))
    assert scaled.best_step == 5  # the same decision at any scale


def test_patience_stops_on_non_finite_loss():
    policy = Patience(patience=100)
    stop, best, _ = run_loop(policy, [3.0, 2.0, math.nan, 1.0], [constant(0)] * 4)
    assert (stop, best) == (3, 2)
    assert policy.reason == "non-finite loss (nan) at iteration 3; best at iteration 2"
    policy = Patience(patience=100)
    assert run_loop(policy, [3.0, math.inf], [constant(0)] * 2)[:2] == (2, 1)


def test_patience_without_check_finite_skips_non_finite_losses():
    policy = Patience(patience=100, check_finite=False)
    stop, best, _ = run_loop(policy, [math.nan, 3.0, math.nan, 2.5, math.inf], [constant(0)] * 5)
    assert (stop, best) == (None, 4)
    assert "best iterate by patience (lowest training loss) at iteration 4" in policy.reason


def test_patience_finalize_reason():
    policy = Patience(patience=100)
    run_loop(policy, LOSSES, [constant(0)] * len(LOSSES))
    assert policy.reason == (
        "the patience rule did not fire by iteration 10; best iterate by patience "
        "(lowest training loss) at iteration 5"
    )


# --------------------------------------------------------------------------- Oracle


def test_oracle_tracks_highest_psnr():
    ground_truth = torch.rand(SHAPE, generator=torch.Generator().manual_seed(0))
    offsets = [0.1, 0.05, 0.02, 0.04, 0.08, 0.2]
    outputs = [ground_truth + c for c in offsets]
    policy = Oracle(ground_truth)
    stop, best, kept = run_loop(policy, [1.0] * 6, outputs)
    assert (stop, best) == (None, 3)  # never stops without patience
    np.testing.assert_allclose(policy.psnr_history, [-20 * math.log10(c) for c in offsets], 1e-5)
    assert policy.best_psnr == pytest.approx(-20 * math.log10(0.02), rel=1e-5)
    torch.testing.assert_close(kept, outputs[2])
    assert policy.reason.startswith("the oracle rule did not fire by iteration 6; best iterate")
    assert "highest PSNR against the ground truth, 33.98 dB) at iteration 3" in policy.reason


def test_oracle_with_patience_stops():
    ground_truth = torch.zeros(SHAPE)
    policy = Oracle(ground_truth, patience=2)
    stop, best, _ = run_loop(policy, [1.0] * 6, [constant(c) for c in [0.1, 0.05, 0.2, 0.3, 0.01]])
    assert (stop, best) == (4, 2)
    assert policy.reason == (
        "no new PSNR maximum for 2 iterations (oracle, uses the ground truth); best 26.02 dB at "
        "iteration 2"
    )


def test_oracle_exact_match_is_infinite_psnr():
    policy = Oracle(torch.zeros(SHAPE))
    policy.update(1, 0.0, constant(0.1))
    policy.update(2, 0.0, constant(0.0))
    assert policy.best_step == 2 and policy.best_psnr == math.inf


def test_oracle_validation():
    with pytest.raises(TypeError, match="ground_truth must be a torch.Tensor"):
        Oracle(np.zeros(SHAPE))
    with pytest.raises(TypeError, match="ground_truth must be a floating-point tensor"):
        Oracle(torch.zeros(SHAPE, dtype=torch.int64))
    with pytest.raises(ValueError, match="patience must satisfy patience >= 1; got 0"):
        Oracle(torch.zeros(SHAPE), patience=0)
    with pytest.raises(ValueError, match=r"output shape \(1, 1, 3, 3\) differs"):
        Oracle(torch.zeros(SHAPE)).update(1, 0.0, torch.zeros(1, 1, 3, 3))


# --------------------------------------------------------------------------- WMV


def test_wmv_by_hand():
    # W = 2, N = 1: VAR_t = (x_t − x_{t−1})² / 4.
    values = [0.0, 4.0, 6.0, 7.0, 7.5, 7.5, 8.0, 10.0, 13.0, 17.0]
    policy = WMV(window=2, patience=3)
    seen = []
    for step, value in enumerate(values, start=1):
        stop = policy.update(step, 0.0, torch.tensor([[[[value]]]]))
        seen.append(policy.last_variance)
        if stop:
            break
    assert seen[:6] == [None, 4.0, 1.0, 0.25, 0.0625, 0.0]
    assert (step, policy.best_step) == (9, 6)
    assert policy.best_variance == 0.0
    assert policy.reason == (
        "no new minimum of the output variance for 3 iterations (WMV, window=2); "
        "best at iteration 6"
    )


@pytest.mark.parametrize("window", [2, 3, 10])
def test_wmv_matches_brute_force(window):
    outputs = drifting_outputs(120, seed=window)
    reference = wmv_reference(outputs, window)
    patience = 15
    expected_stop, expected_best = first_stop(reference, patience, start=window)
    assert expected_stop is not None and expected_best > window  # a U-shaped variance
    policy = WMV(window=window, patience=patience)
    variances = []
    for step, output in enumerate(outputs, start=1):
        stop = policy.update(step, 0.0, output)
        if step >= window:
            variances.append(policy.last_variance)
        if stop:
            break
    np.testing.assert_allclose(variances, reference[: len(variances)], rtol=1e-10, atol=1e-15)
    assert (step, policy.best_step) == (expected_stop, expected_best)
    assert policy.best_variance == pytest.approx(min(reference[: len(variances)]), rel=1e-10)


def test_wmv_running_sums_stay_accurate_for_tiny_variances():
    """Many windows of outputs near 0.5 with variance 1e-10: cancellation would show."""
    generator = torch.Generator().manual_seed(7)
    base = torch.full(SHAPE, 0.5)
    outputs = [base + 1e-5 * torch.randn(SHAPE, generator=generator) for _ in range(200)]
    reference = wmv_reference(outputs, 7)
    policy = WMV(window=7, patience=1000)
    values = []
    for step, output in enumerate(outputs, start=1):
        policy.update(step, 0.0, output)
        if step >= 7:
            values.append(policy.last_variance)
    np.testing.assert_allclose(values, reference, rtol=1e-6)


def test_wmv_before_window_fills_returns_last():
    policy = WMV(window=5, patience=10)
    stop, best, kept = run_loop(policy, [0.0] * 3, [constant(t) for t in range(3)])
    assert (stop, best) == (None, 3)
    assert float(kept.mean()) == 2.0
    assert policy.reason == (
        "the WMV rule did not fire by iteration 3; the window (window=5) never filled; "
        "returning the last iterate (iteration 3)"
    )


def test_wmv_finalize_after_window():
    policy = WMV(window=2, patience=50)
    run_loop(policy, [0.0] * 4, [constant(v) for v in [0.0, 1.0, 1.5, 3.0]])
    assert policy.reason == (
        "the WMV rule did not fire by iteration 4; best iterate by WMV (minimum windowed output "
        "variance) at iteration 3"
    )


def test_wmv_validation():
    with pytest.raises(ValueError, match="window must satisfy window >= 2; got 1"):
        WMV(window=1)
    with pytest.raises(TypeError, match="window must be an integer >= 2, got 2.5"):
        WMV(window=2.5)
    with pytest.raises(ValueError, match="patience must satisfy patience >= 1; got -3"):
        WMV(patience=-3)
    with pytest.raises(ValueError, match="min_delta must satisfy 0 <= min_delta < 1; got nan"):
        WMV(min_delta=math.nan)
    policy = WMV(window=2)
    policy.update(1, 0.0, constant(0))
    with pytest.raises(ValueError, match="output size changed from 35 to 9 elements"):
        policy.update(2, 0.0, torch.zeros(1, 1, 3, 3))


# --------------------------------------------------------------------------- EMV


def test_emv_by_hand():
    policy = EMV(alpha=0.5, patience=10, burn_in=0)
    policy.update(1, 0.0, torch.tensor([[[[0.0]]]]))
    assert policy.last_variance == 0.0
    policy.update(2, 0.0, torch.tensor([[[[2.0]]]]))
    # EMV_2 = (1 − α)(0 + α·(2 − 0)²) = 1
    assert policy.last_variance == 1.0


def test_emv_matches_reference():
    outputs = drifting_outputs(150, seed=4)
    alpha, burn_in, patience = 0.2, 10, 12
    reference = emv_reference(outputs, alpha)
    expected_stop, expected_best = first_stop(reference[burn_in:], patience, start=burn_in + 1)
    assert expected_stop is not None and expected_best > burn_in + 1
    policy = EMV(alpha=alpha, patience=patience, burn_in=burn_in)
    stop, best, kept = run_loop(policy, [0.0] * len(outputs), outputs)
    assert (stop, best) == (expected_stop, expected_best)
    assert policy.last_variance == pytest.approx(reference[stop - 1], rel=1e-10)
    assert policy.best_variance == pytest.approx(reference[best - 1], rel=1e-10)
    torch.testing.assert_close(kept, outputs[best - 1])
    assert policy.reason == (
        f"no new minimum of the exponential moving variance for {patience} iterations "
        f"(EMV, alpha=0.2); best at iteration {expected_best}"
    )


def test_emv_burn_in():
    assert EMV(alpha=0.1).burn_in == 100
    assert EMV(alpha=0.3).burn_in == 34  # ⌈10/α⌉
    policy = EMV(alpha=0.5, burn_in=4)
    stop, best, _ = run_loop(policy, [0.0] * 3, [constant(t) for t in range(3)])
    assert (stop, best) == (None, 3)
    assert policy.last_variance is None
    assert "the burn-in (burn_in=4) did not end; returning the last iterate (iteration 3)" in (
        policy.reason
    )


def test_emv_validation():
    for alpha in (0.0, 1.0, -0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="alpha must satisfy 0 < alpha < 1"):
            EMV(alpha=alpha)
    with pytest.raises(TypeError, match="alpha must be a real number"):
        EMV(alpha="0.1")
    with pytest.raises(ValueError, match="patience must satisfy patience >= 1; got 0"):
        EMV(patience=0)
    with pytest.raises(ValueError, match="burn_in must satisfy burn_in >= 0; got -1"):
        EMV(burn_in=-1)
    with pytest.raises(ValueError, match="min_delta must satisfy 0 <= min_delta < 1; got 1.0"):
        EMV(min_delta=1.0)
    policy = EMV()
    policy.update(1, 0.0, constant(0))
    with pytest.raises(ValueError, match="output size changed from 35 to 9 elements"):
        policy.update(2, 0.0, torch.zeros(1, 1, 3, 3))


# --------------------------------------------------------------------------- Discrepancy


def discrepancy_data():
    clean = torch.rand(SHAPE, generator=torch.Generator().manual_seed(5))
    operator = RowOperator()
    return clean, operator, operator.A(clean)  # m = 4·5 = 20 measurements


def test_discrepancy_stops_at_first_step_below_level():
    clean, operator, y = discrepancy_data()
    # f_t = clean + 1/t: ‖y − A f_t‖² = m·(2/t)², level m·σ²; 2/t ≤ 0.095 first at t = 22.
    outputs = [clean + 1.0 / t for t in range(1, 40)]
    policy = Discrepancy(operator, y, sigma=0.095, smoothing=0.0)
    assert policy.needs_unperturbed_output
    assert policy.level == pytest.approx(20 * 0.095**2)
    stop, best, kept = run_loop(policy, [0.0] * len(outputs), outputs)
    assert (stop, best) == (22, 22)
    torch.testing.assert_close(kept, outputs[21])
    assert policy.last_residual == pytest.approx(20 * (2 / 22) ** 2, rel=1e-5)
    assert "reached the noise level τ·m·σ² = 0.1805 at iteration 22" in policy.reason


def test_discrepancy_smoothing_delays_the_stop():
    clean, operator, y = discrepancy_data()
    outputs = [clean + 1.0 / t for t in range(1, 60)]
    residuals = [20 * (2 / t) ** 2 for t in range(1, 60)]
    smoothing, level = 0.5, 20 * 0.095**2
    average, expected = None, None
    for t, r in enumerate(residuals, start=1):
        average = r if average is None else smoothing * average + (1 - smoothing) * r
        if average <= level:
            expected = t
            break
    assert expected is not None and expected > 22
    policy = Discrepancy(operator, y, sigma=0.095, tau=1.0, smoothing=smoothing)
    stop, best, _ = run_loop(policy, [0.0] * len(outputs), outputs)
    assert (stop, best) == (expected, expected)
    assert policy.smoothed_residual == pytest.approx(average, rel=1e-5)


def test_discrepancy_tau_scales_the_level():
    clean, operator, y = discrepancy_data()
    outputs = [clean + 1.0 / t for t in range(1, 40)]
    # 2/t ≤ 0.095·√4 = 0.19 first at t = 11.
    policy = Discrepancy(operator, y, sigma=0.095, tau=4.0, smoothing=0.0)
    assert run_loop(policy, [0.0] * len(outputs), outputs)[:2] == (11, 11)


def test_discrepancy_level_never_reached():
    clean, operator, y = discrepancy_data()
    offsets = [abs(t - 10) / 10 + 0.5 for t in range(1, 20)]  # smallest residual at t = 10
    policy = Discrepancy(operator, y, sigma=0.01)
    stop, best, kept = run_loop(policy, [0.0] * len(offsets), [clean + c for c in offsets])
    assert (stop, best) == (None, 10)
    assert policy.best_residual == pytest.approx(20 * 4 * 0.25, rel=1e-5)
    torch.testing.assert_close(kept, clean + 0.5)
    assert policy.reason == (
        "the discrepancy principle rule did not fire by iteration 19; the noise level "
        "τ·m·σ² = 0.002 was not reached (smallest residual 20); returning the iterate with the "
        "smallest residual (iteration 10)"
    )


def test_discrepancy_validation():
    _, operator, y = discrepancy_data()
    for sigma in (0.0, -0.1, math.nan):
        with pytest.raises(ValueError, match="sigma must satisfy 0 < sigma"):
            Discrepancy(operator, y, sigma=sigma)
    with pytest.raises(ValueError, match="tau must satisfy 0 < tau; got 0.0"):
        Discrepancy(operator, y, sigma=0.1, tau=0)
    for smoothing in (1.0, -0.1):
        with pytest.raises(ValueError, match="smoothing must satisfy 0 <= smoothing < 1"):
            Discrepancy(operator, y, sigma=0.1, smoothing=smoothing)
    with pytest.raises(TypeError, match="operator must be an object with a method A"):
        Discrepancy(object(), y, sigma=0.1)
    with pytest.raises(TypeError, match="y must be a torch.Tensor, got ndarray"):
        Discrepancy(operator, y.numpy(), sigma=0.1)
    with pytest.raises(TypeError, match="sigma must be a real number"):
        Discrepancy(operator, y, sigma=None)
    policy = Discrepancy(operator, y[..., :2, :], sigma=0.1)
    with pytest.raises(ValueError, match=r"operator.A\(output\) has shape \(1, 1, 4, 5\) but y"):
        policy.update(1, 0.0, constant(0))


# --------------------------------------------------------------------------- Holdout


def holdout_data():
    clean = torch.rand(SHAPE, generator=torch.Generator().manual_seed(6))
    index = torch.tensor([1, 5, 8, 13, 21, 34])
    return clean, PickOperator(index), clean.reshape(-1)[index]


def test_holdout_stops_with_patience_and_returns_best():
    clean, operator, y = holdout_data()
    offsets = [abs(t - 15) * 0.01 + 0.001 for t in range(1, 40)]  # validation loss = offset²
    policy = Holdout(operator, y, patience=5)
    assert policy.needs_unperturbed_output
    stop, best, kept = run_loop(policy, [0.0] * len(offsets), [clean + c for c in offsets])
    assert (stop, best) == (20, 15)
    torch.testing.assert_close(kept, clean + 0.001)
    assert policy.best_loss == pytest.approx(1e-6, rel=1e-4)
    assert policy.last_loss == pytest.approx(0.051**2, rel=1e-4)
    assert policy.reason == (
        "no new minimum of the hold-out loss for 5 iterations (hold-out); best at iteration 15"
    )


def test_holdout_min_delta_and_finalize():
    clean, operator, y = holdout_data()
    offsets = [1.0, 0.5, 0.499, 0.498, 0.4985]  # losses: squares, 1% below 0.25 is 0.2475
    policy = Holdout(operator, y, patience=10, min_delta=0.01)
    stop, best, _ = run_loop(policy, [0.0] * 5, [clean + c for c in offsets])
    assert (stop, best) == (None, 2)
    assert policy.reason == (
        "the hold-out rule did not fire by iteration 5; best iterate by hold-out "
        "(lowest hold-out loss) at iteration 2"
    )


def test_holdout_validation():
    _, operator, y = holdout_data()
    with pytest.raises(ValueError, match="patience must satisfy patience >= 1; got 0"):
        Holdout(operator, y, patience=0)
    with pytest.raises(ValueError, match="min_delta must satisfy 0 <= min_delta < 1; got -0.1"):
        Holdout(operator, y, min_delta=-0.1)
    with pytest.raises(ValueError, match="y .the held-out measurements. is empty"):
        Holdout(operator, y[:0])
    with pytest.raises(TypeError, match="operator must be an object with a method A"):
        Holdout(lambda x: x, y)
    with pytest.raises(TypeError, match="y must be a floating-point tensor"):
        Holdout(operator, torch.zeros(6, dtype=torch.int32))


# --------------------------------------------------------------------------- FirstOf


def test_first_of_stops_with_the_first_to_fire():
    policy = FirstOf(Fixed(100), Patience(patience=3))
    assert policy.best_step == 0
    stop, best, _ = run_loop(policy, LOSSES, [constant(t) for t in range(1, 11)])
    assert (stop, best) == (8, 5)
    assert policy.reason.startswith("no decrease of the training loss for 3 iterations")


@pytest.mark.parametrize(
    ("order", "expected_best", "reason_start"),
    [(("fixed", "patience"), 8, "reached num_iter=8"), (("patience", "fixed"), 5, "no decrease")],
)
def test_first_of_simultaneous_fire_goes_by_order(order, expected_best, reason_start):
    make = {"fixed": lambda: Fixed(8), "patience": lambda: Patience(patience=3)}
    policy = FirstOf(*(make[name]() for name in order))
    stop, best, _ = run_loop(policy, LOSSES, [constant(t) for t in range(1, 11)])
    assert (stop, best) == (8, expected_best)
    assert policy.reason.startswith(reason_start)


def test_first_of_candidates_are_the_union_and_best_is_the_first_policy():
    clean, operator, y = holdout_data()
    offsets = [0.3, 0.2, 0.1, 0.2, 0.3]  # hold-out best at 3
    losses = [5.0, 4.0, 3.0, 2.0, 1.0]  # training loss best at 5
    patience, holdout = Patience(patience=50), Holdout(operator, y, patience=50)
    policy = FirstOf(patience, holdout)
    assert policy.needs_unperturbed_output
    stop, best, kept = run_loop(policy, losses, [clean + c for c in offsets])
    assert policy.candidates == {5, 3}
    assert (stop, best) == (None, 5)
    torch.testing.assert_close(kept, clean + 0.3)
    # finalize delegates to every policy; the reason is the first one's
    assert policy.reason == patience.reason
    assert patience.reason.startswith("the patience rule did not fire by iteration 5")
    assert holdout.reason.endswith("at iteration 3")


def test_first_of_nested_and_validation():
    inner = FirstOf(Patience(patience=2), Fixed(50))
    policy = FirstOf(Fixed(60), inner)
    assert not policy.needs_unperturbed_output
    stop, best, _ = run_loop(policy, [1.0, 0.5, 0.7, 0.8, 0.9], [constant(0)] * 5)
    assert (stop, best) == (4, 2)
    with pytest.raises(ValueError, match="FirstOf needs at least one stopping policy"):
        FirstOf()
    with pytest.raises(TypeError, match="FirstOf takes stopping policies.*got object"):
        FirstOf(Fixed(3), object())


# --------------------------------------------------------------------------- common validation


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: Fixed(0), "num_iter must satisfy num_iter >= 1; got 0"),
        (lambda: Fixed(-5), "num_iter must satisfy num_iter >= 1; got -5"),
        (lambda: Patience(patience=0), "patience must satisfy patience >= 1; got 0"),
        (lambda: Patience(min_delta=1.0), "min_delta must satisfy 0 <= min_delta < 1; got 1.0"),
        (lambda: Patience(min_delta=-1e-3), "min_delta must satisfy 0 <= min_delta < 1"),
    ],
)
def test_range_validation(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_type_validation():
    with pytest.raises(TypeError, match="num_iter must be an integer >= 1, got 3000.0"):
        Fixed(3000.0)
    with pytest.raises(TypeError, match="num_iter must be an integer >= 1, got True"):
        Fixed(True)
    with pytest.raises(TypeError, match="min_delta must be a real number, got '0'"):
        Patience(min_delta="0")


# --------------------------------------------------------------------------- specs


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("wmv:window=100,patience=1000", [PolicySpec("wmv", {"window": 100, "patience": 1000})]),
        ("fixed:3000", [PolicySpec("fixed", {"num_iter": 3000})]),
        ("fixed:num_iter=3000", [PolicySpec("fixed", {"num_iter": 3000})]),
        ("patience", [PolicySpec("patience", {})]),
        (
            "patience:200,min_delta=0.001",
            [PolicySpec("patience", {"patience": 200, "min_delta": 1e-3})],
        ),
        (
            "holdout:fraction=0.1,patience=300",
            [PolicySpec("holdout", {"fraction": 0.1, "patience": 300})],
        ),
        ("wmv+discrepancy", [PolicySpec("wmv", {}), PolicySpec("discrepancy", {})]),
        (
            " WMV : Window = 50 + emv:alpha=2e-1 ",
            [PolicySpec("wmv", {"window": 50}), PolicySpec("emv", {"alpha": 0.2})],
        ),
        ("fixed:1e3", [PolicySpec("fixed", {"num_iter": 1000})]),
        (
            "discrepancy:tau=2,smoothing=0",
            [PolicySpec("discrepancy", {"tau": 2.0, "smoothing": 0.0})],
        ),
        ("oracle:patience=50", [PolicySpec("oracle", {"patience": 50})]),
    ],
)
def test_parse_policy_valid(spec, expected):
    parsed = parse_policy(spec)
    assert parsed == expected
    for got, want in zip(parsed, expected, strict=True):
        for key, value in want.params.items():
            assert type(got.params[key]) is type(value)  # ints stay ints, floats are floats
        assert parse_policy(str(got)) == [got]  # str() writes a spec that parses back


def test_policy_spec_separates_caller_parameters():
    (spec,) = parse_policy("holdout:fraction=0.2,patience=30")
    assert spec.policy_params == {"patience": 30}
    assert spec.caller_params == {"fraction": 0.2}
    assert parse_policy("wmv:window=3")[0].caller_params == {}
    assert 0 < HOLDOUT_FRACTION < 1


VALID_NAMES = "valid names: fixed, patience, wmv, emv, discrepancy, holdout, oracle"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty stopping spec; expected e.g. 'wmv:window=100,patience=1000'; " + VALID_NAMES),
        ("   ", "empty stopping spec"),
        ("wmv+", "empty rule in stopping spec 'wmv\\+': '\\+' must join two rules; " + VALID_NAMES),
        ("+wmv", "empty rule in stopping spec"),
        ("foo", "unknown stopping policy 'foo' in 'foo'; " + VALID_NAMES),
        ("wmv+foo:x=1", "unknown stopping policy 'foo'"),
        (
            "wmv:windw=3",
            r"unknown parameter 'windw' for stopping policy 'wmv'; valid parameters: "
            r"window \(int, default 100\), patience \(int, default 1000\), "
            r"min_delta \(float, default 0.0\)",
        ),
        (
            "holdout:frac=0.1",
            r"valid parameters: patience \(int, default 300\), min_delta \(float, default 0.0\), "
            r"fraction \(float, used by the caller\)",
        ),
        (
            "wmv:window=abc",
            "parameter 'window' of stopping policy 'wmv' must be a number, got 'abc'",
        ),
        (
            "wmv:window=2.5",
            "parameter 'window' of stopping policy 'wmv' must be an integer, got '2.5'",
        ),
        ("emv:alpha=nan", "parameter 'alpha' of stopping policy 'emv' must be finite, got 'nan'"),
        ("wmv:window=inf", "must be finite, got 'inf'"),
        (
            "wmv:100",
            "bad parameter '100' in stopping spec 'wmv:100': expected key=value; "
            "valid parameters of 'wmv'",
        ),
        ("fixed:3000,4000", "bad parameter '4000'"),
        ("wmv:", "bad parameter ''"),
        ("wmv:window=", "bad parameter 'window='"),
        ("wmv:=3", "bad parameter '=3'"),
        ("wmv:window=3,,patience=4", "bad parameter ''"),
        ("wmv:window=3,window=4", "parameter 'window' given twice for stopping policy 'wmv'"),
        ("holdout:fraction=1.5", "fraction must satisfy 0 < fraction < 1; got 1.5"),
        ("holdout:fraction=0", "fraction must satisfy 0 < fraction < 1; got 0.0"),
    ],
)
def test_parse_policy_invalid(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_policy(spec)


def test_parse_policy_type_error():
    with pytest.raises(TypeError, match="a stopping spec must be a string, got int"):
        parse_policy(3000)


def test_build_policy():
    policy = build_policy(parse_policy("wmv:window=7")[0], sigma=0.1)  # unused context ignored
    assert isinstance(policy, WMV) and (policy.window, policy.patience) == (7, 1000)
    assert repr(policy) == "WMV(window=7, patience=1000, min_delta=0.0)"
    _, operator, y = holdout_data()
    holdout = build_policy("holdout:fraction=0.2,patience=5", operator=operator, y=y)
    assert isinstance(holdout, Holdout) and holdout.patience == 5  # fraction is the caller's
    clean, operator, y = discrepancy_data()
    discrepancy = build_policy("discrepancy:tau=2", operator=operator, y=y, sigma=0.1)
    assert isinstance(discrepancy, Discrepancy) and discrepancy.level == pytest.approx(0.4)
    oracle = build_policy("oracle", ground_truth=clean)
    assert isinstance(oracle, Oracle) and oracle.patience is None
    emv = build_policy(PolicySpec("emv", {"alpha": 0.5}))
    assert isinstance(emv, EMV) and emv.burn_in == 20


def test_build_policy_errors():
    with pytest.raises(ValueError, match="stopping policy 'fixed' needs the parameter num_iter"):
        build_policy("fixed")
    with pytest.raises(ValueError, match=r"'discrepancy' needs operator \(the forward operator"):
        build_policy("discrepancy")
    _, operator, y = discrepancy_data()
    with pytest.raises(ValueError, match=r"'discrepancy' needs sigma \(the noise level"):
        build_policy("discrepancy", operator=operator, y=y, sigma=None)
    with pytest.raises(ValueError, match="'oracle' needs ground_truth"):
        build_policy("oracle")
    with pytest.raises(TypeError, match="unknown context argument.s. foo; valid: ground_truth"):
        build_policy("wmv", foo=1)
    with pytest.raises(ValueError, match="build_policy builds one rule, got 2"):
        build_policy("wmv+emv")
    with pytest.raises(ValueError, match="window must satisfy window >= 2; got 0"):
        build_policy("wmv:window=0")


def test_registry_matches_the_constructors():
    for name, cls in POLICIES.items():
        assert cls.name == name
        parameters = inspect.signature(cls).parameters
        spec_and_context = set(cls.spec_params) | set(cls.context_args)
        assert spec_and_context <= set(parameters)
        assert set(cls.context_args) <= set(CONTEXT_ARGS)
        assert not set(cls.caller_params) & set(parameters)
        # every constructor argument is settable from a spec or the context, or keyword-only
        for key, parameter in parameters.items():
            assert key in spec_and_context or parameter.kind is parameter.KEYWORD_ONLY
        for key, kind in cls.spec_params.items():
            default = parameters[key].default
            if default is not inspect.Parameter.empty and default is not None:
                assert type(default) is kind


def test_discrepancy_level_counts_only_observed_entries_of_a_mask():
    from deepprior.operators import Mask

    op = Mask((1, 20, 10), keep=0.25, seed=0)
    y = op.A(torch.rand(1, 1, 20, 10))
    policy = Discrepancy(op, y, sigma=0.1)
    assert op.num_measurements == 50 and y.numel() == 200
    assert policy.level == pytest.approx(50 * 0.1**2)
