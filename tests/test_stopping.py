"""Tests of deepprior.stopping: each rule on synthetic loss/output sequences, the loop contract
(``best_step`` always among the kept ``candidates``), FirstOf, Shadow, finalize reasons, the
spec parser, the policy builder with its hold-out split, and the validation messages."""

import math

import numpy as np
import pytest
import torch

import deepprior as dp
from deepprior.stopping import (
    EMV,
    RULES,
    WMV,
    Discrepancy,
    FirstOf,
    Fixed,
    Holdout,
    Oracle,
    Patience,
    Shadow,
    make_policy,
    members,
    parse_stop,
)

SHAPE = (1, 1, 7, 5)  # tiny odd-sized images keep the file fast
IMAGE = SHAPE[1:]  # the operators' image_shape


def constant(value: float, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    return torch.full(shape, float(value))


class Minimal:
    """The least a policy needs: ``update``, ``best_step`` and ``reason``; stops at ``last``."""

    def __init__(self, last: int = 3) -> None:
        self.last, self.best_step, self.reason = last, 0, ""

    def update(self, step, loss, output):
        self.best_step = step
        if step >= self.last:
            self.reason = f"minimal stop at {step}"
        return step >= self.last


def run_loop(policy, losses, outputs):
    """Drive ``policy`` the way the fitting loop does: keep only the outputs of the candidate
    steps (``{best_step}`` when the policy has no ``candidates``), check after every update that
    the best step's output is among them, and call ``finalize`` (if any) when the data run out.

    Returns (stop step or None, best step, the kept output at the best step)."""
    kept: dict[int, torch.Tensor] = {}
    step = 0
    for step, (loss, output) in enumerate(zip(losses, outputs, strict=True), start=1):
        stop = policy.update(step, loss, output)
        candidates = frozenset(getattr(policy, "candidates", (policy.best_step,)))
        assert policy.best_step in candidates
        if step in candidates:
            kept[step] = output.clone()
        for old in [s for s in kept if s not in candidates]:
            del kept[old]
        assert policy.best_step in kept or policy.best_step == 0  # 0: nothing read yet
        if stop:
            return step, policy.best_step, kept[policy.best_step]
    finalize = getattr(policy, "finalize", None)
    if finalize is not None:
        finalize(step)
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


def held_out_data(seed: int = 6):
    """A clean image, an Identity restricted to 6 pixels (a held-out part) and its data."""
    clean = torch.rand(SHAPE, generator=torch.Generator().manual_seed(seed))
    keep = torch.zeros(IMAGE, dtype=torch.bool)
    keep.view(-1)[torch.tensor([1, 5, 8, 13, 21, 34])] = True
    operator = dp.Identity(IMAGE).restrict(keep)
    return clean, operator, operator.A(clean)


def discrepancy_data():
    clean = torch.rand(SHAPE, generator=torch.Generator().manual_seed(5))
    operator = dp.Identity(IMAGE)
    return clean, operator, operator.A(clean)  # m = 7·5 = 35 measurements


def index_image(shape: tuple[int, ...]) -> torch.Tensor:
    """``(1, *shape)`` holding 1, 2, …: an entry's value names it (0 means 'not observed')."""
    return torch.arange(1, math.prod(shape) + 1, dtype=torch.float32).reshape(1, *shape)


def values(tensor: torch.Tensor) -> set[int]:
    return {int(v) for v in tensor.reshape(-1).tolist()}


# --------------------------------------------------------------------------- the loop contract


def make_all_policies():
    ground_truth = torch.rand(SHAPE, generator=torch.Generator().manual_seed(3))
    _, held_op, held_y = held_out_data()
    return [
        Fixed(30),
        Patience(patience=5),
        Oracle(ground_truth, patience=6),
        WMV(window=4, patience=6),
        EMV(alpha=0.3, patience=6, burn_in=3),
        Discrepancy(dp.Identity(IMAGE), ground_truth, sigma=0.05, smoothing=0.5),
        Holdout(held_op, held_y, patience=6),
        FirstOf(WMV(window=3, patience=5), Holdout(held_op, torch.zeros(1, 6))),
        Minimal(last=20),
        Shadow({"wmv": WMV(window=3, patience=5), "fixed": Fixed(10)}),
    ]


@pytest.mark.parametrize("policy", make_all_policies(), ids=lambda p: type(p).__name__)
def test_best_step_always_kept(policy):
    assert policy.best_step == 0
    outputs = drifting_outputs(40, seed=1)
    losses = [float(torch.mean(o**2)) for o in outputs]
    stop, best, kept = run_loop(policy, losses, outputs)
    assert 1 <= best <= (stop or 40)
    torch.testing.assert_close(kept, outputs[best - 1])
    assert policy.reason


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
    assert "num_iter=5" in policy.reason and "last iterate" in policy.reason


def test_fixed_finalize_before_num_iter():
    policy = Fixed(50)
    stop, best, kept = run_loop(policy, [1.0] * 4, [constant(t) for t in range(4)])
    assert stop is None and best == 4
    assert float(kept.mean()) == 3.0
    assert "the fixed rule did not fire by iteration 4" in policy.reason
    assert "last iterate (iteration 4)" in policy.reason


# --------------------------------------------------------------------------- Patience

LOSSES = [5.0, 4.0, 3.0, 2.0, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]


def test_patience_stops_after_patience_steps_without_decrease():
    policy = Patience(patience=3)
    stop, best, kept = run_loop(policy, LOSSES, [constant(t) for t in range(1, 11)])
    assert (stop, best) == (8, 5)
    assert float(kept.mean()) == 5.0
    assert "for 3 iterations (patience)" in policy.reason
    assert policy.reason.endswith("best at iteration 5")


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
    assert "non-finite loss at iteration 3" in policy.reason
    assert policy.reason.endswith("best at iteration 2")
    policy = Patience(patience=100)
    assert run_loop(policy, [3.0, math.inf], [constant(0)] * 2)[:2] == (2, 1)


def test_patience_finalize_reason():
    policy = Patience(patience=100)
    run_loop(policy, LOSSES, [constant(0)] * len(LOSSES))
    assert "the patience rule did not fire by iteration 10" in policy.reason
    assert "lowest training loss at iteration 5" in policy.reason


# --------------------------------------------------------------------------- Oracle


def test_oracle_tracks_highest_psnr():
    ground_truth = torch.rand(SHAPE, generator=torch.Generator().manual_seed(0))
    offsets = [0.1, 0.05, 0.02, 0.04, 0.08, 0.2]
    outputs = [ground_truth + c for c in offsets]
    policy = Oracle(ground_truth)
    assert policy.patience is None
    stop, best, kept = run_loop(policy, [1.0] * 6, outputs)
    assert (stop, best) == (None, 3)  # never stops without patience
    np.testing.assert_allclose(policy.psnr_history, [-20 * math.log10(c) for c in offsets], 1e-5)
    assert policy.best_psnr == pytest.approx(-20 * math.log10(0.02), rel=1e-5)
    torch.testing.assert_close(kept, outputs[2])
    assert "the oracle rule did not fire by iteration 6" in policy.reason
    assert policy.reason.endswith("at iteration 3")


def test_oracle_with_patience_stops():
    policy = Oracle(torch.zeros(SHAPE), patience=2)
    stop, best, _ = run_loop(policy, [1.0] * 5, [constant(c) for c in [0.1, 0.05, 0.2, 0.3, 0.01]])
    assert (stop, best) == (4, 2)
    assert policy.best_psnr == pytest.approx(-20 * math.log10(0.05), rel=1e-5)
    assert "26.02 dB at iteration 2" in policy.reason


def test_oracle_never_chooses_a_nan_output():
    policy = Oracle(torch.zeros(SHAPE))
    policy.update(1, 0.0, constant(0.1))
    policy.update(2, 0.0, constant(float("nan")))  # scored +inf dB, and chosen, before
    assert policy.best_step == 1 and policy.best_psnr == pytest.approx(20.0)


def test_a_rule_serves_one_fit():
    for policy in (Patience(patience=5), Fixed(10), FirstOf(Patience(patience=5), Fixed(10)),
                   Shadow({"a": Patience(patience=5)})):
        assert make_policy(policy)[0] is policy  # fresh: taken
        policy.update(1, 1.0, constant(0.1))
        with pytest.raises(ValueError, match="has served a fit already and keeps its state"):
            make_policy(policy)


def test_oracle_exact_match_is_infinite_psnr():
    policy = Oracle(torch.zeros(SHAPE))
    policy.update(1, 0.0, constant(0.1))
    policy.update(2, 0.0, constant(0.0))
    assert policy.best_step == 2 and policy.best_psnr == math.inf


def test_oracle_validation():
    with pytest.raises(ValueError, match="patience must be an integer >= 1, got 0"):
        Oracle(torch.zeros(SHAPE), patience=0)


# --------------------------------------------------------------------------- WMV


def test_a_wmv_window_beyond_the_machines_memory_is_refused_before_the_fit(monkeypatch):
    operator = dp.Identity((3, 64, 64))
    monkeypatch.setattr("deepprior.stopping._physical_memory", lambda: 2**30)  # 1 GiB
    make_policy("wmv:window=100", operator=operator, y=torch.zeros(1, 3, 64, 64))  # 4.7 MiB
    with pytest.raises(ValueError, match=r"wmv:window=30000 keeps 30000 outputs of 12,288 "
                                         r"values, 1\.37 GiB, more than this machine's 1 GiB"):
        make_policy("wmv:window=30000+fixed:3", operator=operator, y=torch.zeros(1, 3, 64, 64))


def test_a_policy_class_instead_of_an_instance_is_refused():
    with pytest.raises(TypeError, match=r"stop=Patience is a class: pass an instance"):
        make_policy(Patience)


class _Protocol:
    best_step, reason = 0, ""

    def update(self, step, loss, output):
        return False


@pytest.mark.parametrize(("change", "error", "message"), [
    ({"update": lambda self, step, loss: False}, TypeError,
     r"Bad.update must be callable as update\(step, loss, output\)"),
    ({"update": None}, TypeError, r"Bad.update must be callable"),
    ({"candidates": None}, TypeError, "Bad.candidates must be a set of iterations, got NoneType"),
    ({"every": 0}, ValueError, r"Bad.every must be an integer >= 1 .*got 0"),
    ({"every": 2.5}, ValueError, r"Bad.every must be an integer >= 1 .*got 2.5"),
])
def test_a_user_policy_that_breaks_the_protocol_is_refused_before_the_fit(change, error,
                                                                          message):
    """These failed in the loop, after the first iteration, with Python's own errors
    (every = 0: a modulo by zero)."""
    bad = type("Bad", (_Protocol,), change)()
    with pytest.raises(error, match=message):
        make_policy(bad)
    make_policy(type("Good", (_Protocol,), {"candidates": frozenset({3}), "every": 4})())


def test_the_same_policy_twice_in_a_group_is_refused():
    rule = WMV(window=4, patience=3)
    with pytest.raises(ValueError, match="FirstOf got the same policy object twice"):
        FirstOf(rule, rule)


def test_an_averaged_hold_out_loss_is_named_so_when_the_rule_did_not_fire():
    operator = dp.Identity((1, 4, 4))
    y = torch.zeros(1, 1, 4, 4)
    for smoothing, said in ((0.0, "lowest hold-out loss"), (0.5, "lowest averaged hold-out loss")):
        policy = Holdout(operator, y, patience=50, smoothing=smoothing)
        for step in range(1, 4):
            policy.update(step, 0.0, torch.full((1, 1, 4, 4), 1.0 / step))
        policy.finalize(3)
        assert policy.reason.endswith(f"best iterate by {said} at iteration 3")


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
    assert "output variance for 3 iterations (WMV)" in policy.reason
    assert policy.reason.endswith("best at iteration 6")


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
    assert reference[expected_best - window] == pytest.approx(min(variances), rel=1e-10)


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
    assert policy.last_variance is None
    assert "the WMV rule did not fire by iteration 3" in policy.reason


def test_wmv_finalize_after_window():
    policy = WMV(window=2, patience=50)
    run_loop(policy, [0.0] * 4, [constant(v) for v in [0.0, 1.0, 1.5, 3.0]])
    assert policy.best_step == 3
    assert "the WMV rule did not fire by iteration 4" in policy.reason
    assert "minimum windowed output variance at iteration 3" in policy.reason


def test_wmv_validation():
    with pytest.raises(ValueError, match="window must be an integer >= 2, got 1"):
        WMV(window=1)
    with pytest.raises(TypeError, match="window must be an integer, got 2.5"):
        WMV(window=2.5)
    with pytest.raises(ValueError, match="patience must be an integer >= 1, got -3"):
        WMV(patience=-3)
    with pytest.raises(ValueError, match="min_delta must satisfy 0 <= min_delta < 1, got nan"):
        WMV(min_delta=math.nan)


# --------------------------------------------------------------------------- EMV


def test_emv_by_hand():
    policy = EMV(alpha=0.5, patience=10, burn_in=1)
    policy.update(1, 0.0, torch.tensor([[[[0.0]]]]))
    assert policy.last_variance is None  # one iterate: no variance yet
    policy.update(2, 0.0, torch.tensor([[[[2.0]]]]))
    # EMV_2 = (1 − α)(0 + α·(2 − 0)²) = 1
    assert policy.last_variance == 1.0
    with pytest.raises(ValueError, match="burn_in must be an integer >= 1"):
        EMV(burn_in=0)  # it would track the 0 it starts from, and always return iteration 1


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
    torch.testing.assert_close(kept, outputs[best - 1])
    assert f"exponential moving variance for {patience} iterations (EMV)" in policy.reason
    assert policy.reason.endswith(f"best at iteration {expected_best}")


def test_emv_burn_in():
    assert EMV(alpha=0.1).burn_in == 100
    assert EMV(alpha=0.3).burn_in == 34  # ⌈10/α⌉
    policy = EMV(alpha=0.5, burn_in=4)
    stop, best, _ = run_loop(policy, [0.0] * 3, [constant(t) for t in range(3)])
    assert (stop, best) == (None, 3)
    assert policy.last_variance is None
    assert "the EMV rule did not fire by iteration 3" in policy.reason


def test_emv_validation():
    for alpha in (0.0, 1.0, -0.1, math.nan, math.inf):
        with pytest.raises(ValueError, match="alpha must satisfy 0 < alpha < 1"):
            EMV(alpha=alpha)
    with pytest.raises(ValueError, match="alpha must satisfy 0 < alpha < 1, got 1.0"):
        EMV(alpha=1.0)
    with pytest.raises(TypeError, match="alpha must be a number, got '0.1'"):
        EMV(alpha="0.1")
    with pytest.raises(ValueError, match="patience must be an integer >= 1, got 0"):
        EMV(patience=0)
    with pytest.raises(ValueError, match="burn_in must be an integer >= 1, got -1"):
        EMV(burn_in=-1)
    with pytest.raises(ValueError, match="min_delta must satisfy 0 <= min_delta < 1, got 1.0"):
        EMV(min_delta=1.0)


# --------------------------------------------------------------------------- Discrepancy


def test_discrepancy_stops_at_first_step_below_level():
    clean, operator, y = discrepancy_data()
    # f_t = clean + 1/t: ‖y − A f_t‖² = m/t², level m·σ²; 1/t ≤ 0.047 first at t = 22.
    outputs = [clean + 1.0 / t for t in range(1, 40)]
    policy = Discrepancy(operator, y, sigma=0.047, smoothing=0.0)
    assert policy.needs_unperturbed_output
    assert policy.level == pytest.approx(35 * 0.047**2)
    stop, best, kept = run_loop(policy, [0.0] * len(outputs), outputs)
    assert (stop, best) == (22, 22)
    torch.testing.assert_close(kept, outputs[21])
    assert policy.smoothed_residual == pytest.approx(35 / 22**2, rel=1e-5)
    assert "reached the noise level" in policy.reason and "iteration 22" in policy.reason


def test_discrepancy_smoothing_delays_the_stop():
    clean, operator, y = discrepancy_data()
    outputs = [clean + 1.0 / t for t in range(1, 60)]
    residuals = [35 / t**2 for t in range(1, 60)]
    smoothing, level = 0.5, 35 * 0.047**2
    average, expected = None, None
    for t, r in enumerate(residuals, start=1):
        average = r if average is None else smoothing * average + (1 - smoothing) * r
        if average <= level:
            expected = t
            break
    assert expected is not None and expected > 22
    policy = Discrepancy(operator, y, sigma=0.047, tau=1.0, smoothing=smoothing)
    stop, best, _ = run_loop(policy, [0.0] * len(outputs), outputs)
    assert (stop, best) == (expected, expected)
    assert policy.smoothed_residual == pytest.approx(average, rel=1e-5)


def test_discrepancy_tau_scales_the_level():
    clean, operator, y = discrepancy_data()
    outputs = [clean + 1.0 / t for t in range(1, 40)]
    # 1/t ≤ 0.047·√4 = 0.094 first at t = 11.
    policy = Discrepancy(operator, y, sigma=0.047, tau=4.0, smoothing=0.0)
    assert policy.level == pytest.approx(4 * 35 * 0.047**2)
    assert run_loop(policy, [0.0] * len(outputs), outputs)[:2] == (11, 11)


def test_discrepancy_margin_lowers_the_level_below_the_noise_std():
    clean, operator, y = discrepancy_data()
    outputs = [clean + 1.0 / t for t in range(1, 60)]
    # level m·(σ − margin)²: the residual's rms 1/t must fall to 0.047 − 0.02 = 0.027, t = 38
    policy = Discrepancy(operator, y, sigma=0.047, margin=0.02, smoothing=0.0)
    assert policy.level == pytest.approx(35 * 0.027**2)
    assert run_loop(policy, [0.0] * len(outputs), outputs)[:2] == (38, 38)
    assert "τ·m·(σ − margin)² = 0.02551" in policy.reason
    assert Discrepancy(operator, y, sigma=0.01, margin=0.02).level == 0  # never reached
    # the Deep Image Prior's default: 0.8·m·σ² or m·(σ − 0.01)², whichever is reached first
    for sigma, tau in ((15 / 255, 0.8), (25 / 255, 0.806), (50 / 255, 0.900)):
        rule = make_policy("discrepancy:tau=0.8+discrepancy:margin=0.01", operator=operator,
                           y=y, sigma=sigma)[0]
        assert max(p.level for p in rule.policies) == pytest.approx(tau * 35 * sigma**2,
                                                                    rel=1e-3)


def test_discrepancy_level_never_reached():
    clean, operator, y = discrepancy_data()
    offsets = [abs(t - 10) / 10 + 0.5 for t in range(1, 20)]  # smallest residual at t = 10
    policy = Discrepancy(operator, y, sigma=0.01)
    stop, best, kept = run_loop(policy, [0.0] * len(offsets), [clean + c for c in offsets])
    assert (stop, best) == (None, 10)
    torch.testing.assert_close(kept, clean + 0.5)
    assert "the discrepancy principle rule did not fire by iteration 19" in policy.reason
    assert "was not reached" in policy.reason
    assert "(8.75, iteration 10)" in policy.reason  # the smallest residual, 35·0.5²


def test_discrepancy_level_counts_only_observed_entries_of_a_mask():
    op = dp.Mask((1, 20, 10), keep=0.25, seed=0)
    y = op.A(torch.rand(1, 1, 20, 10))
    policy = Discrepancy(op, y, sigma=0.1)
    assert op.num_measurements == 50 and y.numel() == 200
    assert policy.level == pytest.approx(50 * 0.1**2)


def test_discrepancy_validation():
    _, operator, y = discrepancy_data()
    for sigma in (0.0, -0.1, math.nan):
        with pytest.raises(ValueError, match="sigma must satisfy 0 < sigma"):
            Discrepancy(operator, y, sigma=sigma)
    with pytest.raises(ValueError, match="tau must satisfy 0 < tau, got 0.0"):
        Discrepancy(operator, y, sigma=0.1, tau=0)
    for smoothing in (1.0, -0.1):
        with pytest.raises(ValueError, match="smoothing must satisfy 0 <= smoothing < 1"):
            Discrepancy(operator, y, sigma=0.1, smoothing=smoothing)
    with pytest.raises(TypeError, match="sigma must be a number, got None"):
        Discrepancy(operator, y, sigma=None)
    with pytest.raises(ValueError, match="margin must satisfy 0 <= margin, got -0.01"):
        Discrepancy(operator, y, sigma=0.1, margin=-0.01)


# --------------------------------------------------------------------------- Holdout


def test_holdout_stops_with_patience_and_returns_best():
    clean, operator, y = held_out_data()
    offsets = [abs(t - 15) * 0.01 + 0.001 for t in range(1, 40)]  # hold-out loss = offset²
    policy = Holdout(operator, y, patience=5)
    assert policy.needs_unperturbed_output
    stop, best, kept = run_loop(policy, [0.0] * len(offsets), [clean + c for c in offsets])
    assert (stop, best) == (20, 15)
    torch.testing.assert_close(kept, clean + 0.001)
    assert policy.last_loss == pytest.approx(0.051**2, rel=1e-4)
    assert "hold-out loss for 5 iterations" in policy.reason
    assert policy.reason.endswith("best at iteration 15")


def test_holdout_min_delta_and_finalize():
    clean, operator, y = held_out_data()
    offsets = [1.0, 0.5, 0.499, 0.498, 0.4985]  # losses: squares, 1% below 0.25 is 0.2475
    policy = Holdout(operator, y, patience=10, min_delta=0.01)
    stop, best, _ = run_loop(policy, [0.0] * 5, [clean + c for c in offsets])
    assert (stop, best) == (None, 2)
    assert "the hold-out rule did not fire by iteration 5" in policy.reason
    assert "lowest hold-out loss at iteration 2" in policy.reason


def test_holdout_smoothing_averages_the_loss_and_outlasts_a_lucky_dip():
    clean, operator, y = held_out_data()
    # the hold-out loss falls until 20 and rises after, with one lucky dip at iteration 8
    offsets = [abs(t - 20) * 0.01 + 0.02 for t in range(1, 60)]
    offsets[7] = 0.0
    raw = Holdout(operator, y, patience=15)
    assert run_loop(raw, [0.0] * len(offsets), [clean + c for c in offsets])[:2] == (23, 8)
    smooth = Holdout(operator, y, patience=15, smoothing=0.5)
    stop, best, _ = run_loop(smooth, [0.0] * len(offsets), [clean + c for c in offsets])
    assert best == 21 and stop == 36  # one iteration of lag behind the true minimum
    assert "no new minimum of the averaged hold-out loss for 15 iterations" in smooth.reason
    expected = None
    for c in offsets[:stop]:
        loss = float(torch.mean(operator.A(torch.full_like(clean, c)) ** 2))
        expected = loss if expected is None else 0.5 * expected + 0.5 * loss
    assert smooth.smoothed_loss == pytest.approx(expected, rel=1e-4)
    assert parse_stop("holdout:smoothing=0.99") == [("holdout", {"smoothing": 0.99})]


@pytest.mark.parametrize("cls", [Holdout, Discrepancy])
def test_every_k_reads_the_multiples_of_k_as_k_iterations_of_averaging(cls):
    """A rule with ``every=3`` is the same rule with ``smoothing³`` fed iterations 3, 6, 9, …
    (patience still counted in iterations); the steps in between never reach ``_update``."""
    clean, operator, y = held_out_data() if cls is Holdout else discrepancy_data()
    offsets = [abs(t - 20) * 0.01 + 0.02 for t in range(1, 61)]
    extra = {"patience": 9} if cls is Holdout else {"sigma": 0.1}
    sparse = cls(operator, y, smoothing=0.8, every=3, **extra)
    dense = cls(operator, y, smoothing=0.8**3,
                **({"patience": 3} if cls is Holdout else extra))
    outputs = [clean + c for c in offsets]
    # None in between: what the loop passes where it computed no unperturbed output
    stop, best, _ = run_loop(sparse, [0.0] * 60,
                             [o if t % 3 == 0 else None for t, o in enumerate(outputs, 1)])
    dense_stop, dense_best, _ = run_loop(dense, [0.0] * 20, outputs[2::3])
    assert (stop, best) == (3 * dense_stop, 3 * dense_best)
    assert best % 3 == 0 and stop % 3 == 0
    smoothed = "smoothed_loss" if cls is Holdout else "smoothed_residual"
    assert getattr(sparse, smoothed) == pytest.approx(getattr(dense, smoothed), rel=1e-12)
    assert parse_stop(f"{cls.__name__.lower()}:every=4") == [(cls.__name__.lower(), {"every": 4})]
    with pytest.raises(ValueError, match="every must be an integer >= 1, got 0"):
        cls(operator, y, every=0, **extra)


def test_groups_read_outputs_at_the_common_divisor_of_their_members_every():
    """The loop computes the unperturbed output where the members that ask for it read it;
    the others read the output it keeps, there at every iteration."""
    _, operator, y = held_out_data()
    sigma = {"sigma": 0.1}
    assert FirstOf(Holdout(operator, y, every=4), Fixed(10), Patience()).every == 4
    assert FirstOf(Holdout(operator, y, every=4), Discrepancy(operator, y, every=6,
                                                              **sigma)).every == 2
    assert FirstOf(Holdout(operator, y, every=4), WMV()).every == 4
    assert FirstOf(Fixed(10), Patience()).every == 1
    assert Shadow({"a": Holdout(operator, y, every=8), "b": Fixed(3)}).every == 8
    assert Shadow({"a": Holdout(operator, y, every=8), "b": Minimal()}).every == 8
    nested = Shadow({"a": Discrepancy(operator, y, every=8, **sigma),
                     "b": FirstOf(Fixed(10), Patience())})
    assert nested.every == 8


def test_holdout_validation():
    _, operator, y = held_out_data()
    with pytest.raises(ValueError, match="patience must be an integer >= 1, got 0"):
        Holdout(operator, y, patience=0)
    with pytest.raises(ValueError, match="min_delta must satisfy 0 <= min_delta < 1, got -0.1"):
        Holdout(operator, y, min_delta=-0.1)
    for fraction in (0, 1, 1.5):
        with pytest.raises(ValueError, match="fraction must satisfy 0 < fraction < 1"):
            Holdout(operator, y, fraction=fraction)
    with pytest.raises(ValueError, match="smoothing must satisfy 0 <= smoothing < 1"):
        Holdout(operator, y, smoothing=1.0)


# --------------------------------------------------------------------------- FirstOf


def test_first_of_stops_with_the_first_to_fire():
    policy = FirstOf(Fixed(100), Patience(patience=3))
    assert policy.best_step == 0
    stop, best, _ = run_loop(policy, LOSSES, [constant(t) for t in range(1, 11)])
    assert (stop, best) == (8, 5)
    assert policy.fired is policy.policies[1]
    assert policy.reason == policy.policies[1].reason


@pytest.mark.parametrize(("order", "expected_best"), [(("fixed", "patience"), 8),
                                                      (("patience", "fixed"), 5)])
def test_first_of_simultaneous_fire_goes_by_order(order, expected_best):
    make = {"fixed": lambda: Fixed(8), "patience": lambda: Patience(patience=3)}
    policy = FirstOf(*(make[name]() for name in order))
    stop, best, _ = run_loop(policy, LOSSES, [constant(t) for t in range(1, 11)])
    assert (stop, best) == (8, expected_best)
    assert type(policy.fired) is RULES[order[0]]
    assert policy.reason == policy.policies[0].reason


def test_first_of_candidates_are_the_union_and_best_is_the_first_policy():
    clean, operator, y = held_out_data()
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
    assert "the patience rule did not fire by iteration 5" in patience.reason
    assert holdout.reason.endswith("at iteration 3")


def test_first_of_nested_and_validation():
    inner = FirstOf(Patience(patience=2), Fixed(50))
    policy = FirstOf(Fixed(60), inner)
    assert not policy.needs_unperturbed_output
    stop, best, _ = run_loop(policy, [1.0, 0.5, 0.7, 0.8, 0.9], [constant(0)] * 5)
    assert (stop, best) == (4, 2)
    assert policy.fired is inner and inner.fired is inner.policies[0]
    with pytest.raises(ValueError, match="FirstOf needs at least one stopping policy"):
        FirstOf()
    with pytest.raises(TypeError, match="object lacks update, best_step, reason"):
        FirstOf(Fixed(3), object())


def test_first_of_accepts_minimal_policies():
    policy = FirstOf(Minimal(last=4), Patience(patience=100))
    stop, best, _ = run_loop(policy, LOSSES, [constant(0)] * len(LOSSES))
    assert (stop, best) == (4, 4)
    assert policy.candidates == {4}
    assert policy.reason == "minimal stop at 4"


def test_members():
    fixed, patience = Fixed(3), Patience()
    assert list(members(FirstOf(fixed, patience))) == [fixed, patience]
    assert list(members(fixed)) == [fixed]


# --------------------------------------------------------------------------- Shadow


def test_shadow_never_stops_and_records_every_rule():
    losses = [5.0, 4.0, 3.0, 3.5, 3.6, 3.7, 3.8, 3.9]
    outputs = [constant(v) for v in [0.0, 1.0, 1.5, 3.0, 4.0, 5.0, 6.0, 7.0]]
    fixed, patience, wmv = Fixed(3), Patience(patience=2), WMV(window=2, patience=50)
    shadow = Shadow({"fixed": fixed, "patience": patience, "wmv": wmv, "minimal": Minimal(6)})
    assert not shadow.needs_unperturbed_output
    for step, (loss, output) in enumerate(zip(losses, outputs, strict=True), start=1):
        assert shadow.update(step, loss, output) is False
        assert shadow.best_step == step
        if step == 5:
            assert shadow.stopped == {"fixed": 3, "patience": 5}
            assert shadow.chosen == {"fixed": 3, "patience": 3}
    assert shadow.stopped == {"fixed": 3, "patience": 5, "minimal": 6}
    assert fixed.best_step == 3  # a rule that fired is not updated any more
    shadow.finalize(8)
    assert shadow.stopped == {"fixed": 3, "patience": 5, "minimal": 6, "wmv": 8}
    assert shadow.chosen == {"fixed": 3, "patience": 3, "minimal": 6, "wmv": 3}
    assert shadow.reasons["fixed"] == fixed.reason and "num_iter=3" in fixed.reason
    assert shadow.reasons["patience"].endswith("best at iteration 3")
    assert shadow.reasons["minimal"] == "minimal stop at 6"
    assert "the WMV rule did not fire by iteration 8" in shadow.reasons["wmv"]
    assert shadow.reason  # the shadow's own reason names no rule's choice


def test_shadow_needs_unperturbed_output_and_checks_members():
    _, operator, y = held_out_data()
    assert Shadow({"holdout": Holdout(operator, y), "fixed": Fixed(3)}).needs_unperturbed_output
    with pytest.raises(TypeError, match="lacks best_step, reason"):
        Shadow({"bad": type("Bad", (), {"update": lambda self, *a: False})()})


# --------------------------------------------------------------------------- common validation


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: Fixed(0), "num_iter must be an integer >= 1, got 0"),
        (lambda: Fixed(-5), "num_iter must be an integer >= 1, got -5"),
        (lambda: Patience(patience=0), "patience must be an integer >= 1, got 0"),
        (lambda: Patience(min_delta=1.0), "min_delta must satisfy 0 <= min_delta < 1, got 1.0"),
        (lambda: Patience(min_delta=-1e-3), "min_delta must satisfy 0 <= min_delta < 1"),
    ],
)
def test_range_validation(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_type_validation():
    assert Fixed(3000.0).num_iter == 3000 and type(Fixed(3000.0).num_iter) is int
    with pytest.raises(TypeError, match="num_iter must be an integer, got 2.5"):
        Fixed(2.5)
    with pytest.raises(TypeError, match="num_iter must be an integer, got True"):
        Fixed(True)
    with pytest.raises(TypeError, match="min_delta must be a number, got '0'"):
        Patience(min_delta="0")


def test_repr_lists_the_tunable_parameters():
    assert repr(WMV(window=7)) == "WMV(window=7, patience=1000, min_delta=0.0)"
    _, operator, y = held_out_data()
    assert repr(Holdout(operator, y, patience=5)) == (
        "Holdout(patience=5, min_delta=0.0, fraction=0.1, smoothing=0.0, every=1)")


# --------------------------------------------------------------------------- parse_stop


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("wmv:window=100,patience=1000", [("wmv", {"window": 100, "patience": 1000})]),
        ("fixed:3000", [("fixed", {"num_iter": 3000})]),
        ("fixed:num_iter=3000", [("fixed", {"num_iter": 3000})]),
        ("patience", [("patience", {})]),
        ("patience:200,min_delta=0.001", [("patience", {"patience": 200, "min_delta": 1e-3})]),
        ("holdout:fraction=0.1,patience=300",
         [("holdout", {"fraction": 0.1, "patience": 300})]),
        ("wmv+discrepancy", [("wmv", {}), ("discrepancy", {})]),
        (" WMV : Window = 50 + EMV:alpha=2e-1 ",
         [("wmv", {"window": 50}), ("emv", {"alpha": 0.2})]),
        ("fixed:1e3", [("fixed", {"num_iter": 1000})]),
        ("fixed:1e+3+discrepancy:tau=+0.6", [("fixed", {"num_iter": 1000}),
                                              ("discrepancy", {"tau": 0.6})]),  # "+" in numbers
        ("discrepancy:tau=2,smoothing=0", [("discrepancy", {"tau": 2, "smoothing": 0})]),
        ("oracle:patience=50", [("oracle", {"patience": 50})]),
        ("fixed:2000+discrepancy+holdout:200",
         [("fixed", {"num_iter": 2000}), ("discrepancy", {}), ("holdout", {"patience": 200})]),
    ],
)
def test_parse_stop_valid(spec, expected):
    assert parse_stop(spec) == expected


def test_parse_stop_number_types():
    (_, params), = parse_stop("patience:200,min_delta=0.001")
    assert type(params["patience"]) is int and type(params["min_delta"]) is float
    (_, params), = parse_stop("emv:alpha=2e-1,burn_in=3")
    assert params == {"alpha": 0.2, "burn_in": 3} and type(params["burn_in"]) is int
    (_, params), = parse_stop("fixed:1e3")
    assert params["num_iter"] == 1000
    assert Fixed(**params).num_iter == 1000  # "1e3" builds an integer budget


VALID_RULES = "valid rules: fixed, patience, wmv, emv, discrepancy, holdout, oracle"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("foo", "unknown stopping rule 'foo' in 'foo'; " + VALID_RULES),
        ("wmv+foo:x=1", "unknown stopping rule 'foo'.*" + VALID_RULES),
        ("", "unknown stopping rule ''.*" + VALID_RULES),
        ("wmv+", "unknown stopping rule ''"),
        ("wmv:windw=3", "'windw=3' of stopping rule 'wmv'.*its parameters: window, patience, "
                        "min_delta$"),
        ("holdout:frac=0.1", "its parameters: patience, min_delta, fraction, smoothing, every$"),
        ("discrepancy:sigma=0.1", "its parameters: tau, smoothing, every, margin$"),
        ("fixed:3000,4000", "'4000' of stopping rule 'fixed' is unknown"),
        ("wmv:window=3,window=4", "'window=4' of stopping rule 'wmv' is given twice"),
        ("patience:200,patience=3", "'patience=3' of stopping rule 'patience' is given twice"),
        ("wmv:window=abc", "parameter 'window' of stopping rule 'wmv' must be a number, got 'abc'"),
        ("emv:alpha=nan", "parameter 'alpha' of stopping rule 'emv' must be finite, got 'nan'"),
        ("wmv:window=inf", "must be finite, got 'inf'"),
        ("wmv:window=", "'window=' of stopping rule 'wmv' is unknown or without a value"),
        ("wmv:", "'' of stopping rule 'wmv' is unknown or without a value"),
        ("wmv:=3", "'=3' of stopping rule 'wmv' is unknown or without a value"),
        ("wmv:window=3,,patience=4", "'' of stopping rule 'wmv' is unknown or without a value"),
        # values out of the rule's range, checked by the rule itself before any data exist
        ("holdout:fraction=2", "stopping rule 'holdout': fraction must satisfy 0 < fraction < 1"),
        ("wmv:window=2.5", "stopping rule 'wmv': window must be an integer, got 2.5"),
        ("patience:0", "stopping rule 'patience': patience must be an integer >= 1, got 0"),
        ("emv:alpha=1", "stopping rule 'emv': alpha must satisfy 0 < alpha < 1"),
        ("discrepancy:tau=-1", "stopping rule 'discrepancy': tau must satisfy 0 < tau, got -1"),
        ("wmv+fixed", "stopping rule 'fixed' needs its num_iter"),
        ("holdout+fixed:9+holdout:fraction=0.2", "at most one holdout rule per spec, got 2 in"),
        ("Auto", "'auto' in 'Auto' is a spec of its own, written in lower case and alone"),
        ("auto+fixed:10", "'auto' in 'auto\\+fixed:10' is a spec of its own"),
    ],
)
def test_parse_stop_invalid(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_stop(spec)


def test_parse_stop_type_error():
    with pytest.raises(TypeError, match="a stopping spec must be a string, got int"):
        parse_stop(3000)


# --------------------------------------------------------------------------- make_policy


def test_make_policy_builds_the_named_rules():
    clean, operator, y = discrepancy_data()
    context = {"operator": operator, "y": y, "sigma": 0.1, "ground_truth": clean}
    policy, fit_op, fit_y = make_policy("wmv:window=7", **context)
    assert type(policy) is WMV and (policy.window, policy.patience) == (7, 1000)
    assert fit_op is operator and fit_y is y  # no hold-out: the data are fitted as given
    policy, _, _ = make_policy("fixed:1e3", **context)
    assert type(policy) is Fixed and policy.num_iter == 1000
    policy, _, _ = make_policy("discrepancy:tau=2", **context)
    assert type(policy) is Discrepancy
    assert policy.operator is operator and policy.level == pytest.approx(2 * 35 * 0.01)
    policy, _, _ = make_policy("oracle", **context)
    assert type(policy) is Oracle and policy.patience is None
    torch.testing.assert_close(policy.ground_truth, clean)
    policy, _, _ = make_policy("emv:alpha=0.5", **context)
    assert type(policy) is EMV and policy.burn_in == 20
    policy, _, _ = make_policy("FIXED:100 + patience:7 + emv", **context)
    assert type(policy) is FirstOf
    assert [type(p) for p in members(policy)] == [Fixed, Patience, EMV]
    assert policy.policies[1].patience == 7


def test_make_policy_returns_policy_objects_as_they_are():
    _, operator, y = discrepancy_data()
    for given in (Patience(patience=3), FirstOf(Fixed(3), WMV()), Minimal()):
        policy, fit_op, fit_y = make_policy(given, operator=operator, y=y, sigma=0.1)
        assert policy is given and fit_op is operator and fit_y is y


def test_make_policy_rejects_an_object_missing_reason():
    class NoReason:
        best_step = 0

        def update(self, step, loss, output):
            return False

    with pytest.raises(TypeError, match="NoReason lacks reason$"):
        make_policy(NoReason())


def test_make_policy_missing_context():
    clean, operator, y = discrepancy_data()
    with pytest.raises(ValueError, match="'discrepancy' needs the noise level: pass sigma="):
        make_policy("discrepancy", operator=operator, y=y)
    with pytest.raises(ValueError, match="'discrepancy' needs the forward operator"):
        make_policy("discrepancy", y=y, sigma=0.1)
    with pytest.raises(ValueError, match="'oracle' needs the clean image: pass ground_truth="):
        make_policy("oracle", operator=operator, y=y)
    with pytest.raises(ValueError, match="'holdout' needs the forward operator"):
        make_policy("holdout")
    with pytest.raises(ValueError, match="window must be an integer >= 2, got 0"):
        make_policy("wmv:window=0")


def test_holdout_split_is_disjoint_covers_the_data_and_fits_the_rest():
    operator = dp.Identity((40, 50))
    x = index_image(operator.image_shape)  # each pixel's value is its index + 1
    y = operator.A(x)
    policy, fit_op, fit_y = make_policy("holdout:fraction=0.2,patience=30", operator=operator,
                                        y=y, seed=0)
    assert type(policy) is Holdout and (policy.patience, policy.fraction) == (30, 0.2)
    assert fit_op is not operator
    torch.testing.assert_close(fit_y, fit_op.A(x))  # fit_y is what fit_op measures of x
    torch.testing.assert_close(policy.y, policy.operator.A(x))
    kept, held = values(fit_op.A(x)), values(policy.operator.A(x))
    assert len(kept) == fit_y.numel() and len(held) == policy.y.numel()
    assert not kept & held
    assert kept | held == set(range(1, 2001))
    assert abs(len(held) / 2000 - 0.2) < 0.05


def test_holdout_split_is_seeded():
    operator = dp.Identity((1, 10, 10))
    x = index_image(operator.image_shape)
    y = operator.A(x)

    def held(seed):
        return values(make_policy("holdout", operator=operator, y=y, seed=seed)[0].y)

    assert held(0) == held(0)
    assert held(0) != held(1)


def test_holdout_split_of_compressive_measurements():
    operator = dp.GaussianSensing(20, (5, 7), seed=0)
    x = torch.rand(1, 1, 5, 7, generator=torch.Generator().manual_seed(1))
    y = operator.A(x)
    policy, fit_op, fit_y = make_policy("holdout:fraction=0.3", operator=operator, y=y)
    torch.testing.assert_close(fit_y, fit_op.A(x))
    torch.testing.assert_close(policy.y, policy.operator.A(x))
    both = torch.cat([fit_y.reshape(-1), policy.y.reshape(-1)])
    torch.testing.assert_close(both.sort().values, y.reshape(-1).sort().values)


def test_holdout_split_of_a_mask_uses_only_observed_entries():
    operator = dp.Mask((1, 20, 10), keep=0.5, seed=0)
    x = index_image(operator.image_shape)
    y = operator.A(x)  # zeros at the unobserved pixels
    observed = values(x[operator.mask.expand_as(x)])
    assert len(observed) == operator.num_measurements == 100
    policy, fit_op, fit_y = make_policy("discrepancy+holdout:fraction=0.2", operator=operator,
                                        y=y, sigma=0.1, seed=3)
    discrepancy, holdout = members(policy)
    kept, held = values(fit_op.A(x)), values(holdout.operator.A(x))
    assert not kept & held and kept | held == observed  # no unobserved pixel in either part
    assert 0 not in kept | held
    torch.testing.assert_close(fit_y, fit_op.A(x))
    assert discrepancy.operator is fit_op
    assert discrepancy.level == pytest.approx(len(kept) * 0.1**2)  # only kept observed entries
    assert len(kept) < 100


def test_make_policy_holdout_errors():
    operator = dp.Identity(IMAGE)
    y = operator.A(torch.rand(SHAPE))
    with pytest.raises(ValueError, match="at most one holdout rule per spec, got 2"):
        make_policy("holdout+fixed:10+holdout:fraction=0.2", operator=operator, y=y)
    with pytest.raises(ValueError, match="fraction must satisfy 0 < fraction < 1, got 1.5"):
        make_policy("holdout:fraction=1.5", operator=operator, y=y)
    one_pixel = torch.zeros(3, 3, dtype=torch.bool)
    one_pixel[1, 2] = True
    mask = dp.Mask((3, 3), mask=one_pixel)
    y = mask.A(torch.rand(1, 1, 3, 3))
    for fraction in (0.1, 0.5, 0.9):
        with pytest.raises(ValueError, match="leaves no data on one side of the split of 1 "):
            make_policy(f"holdout:fraction={fraction}", operator=mask, y=y)
    y = operator.A(torch.rand(SHAPE))
    with pytest.raises(ValueError, match="holds out all of them, leaving none to fit"):
        make_policy("holdout:fraction=0.99999", operator=operator, y=y)
    with pytest.raises(ValueError, match="holds out none: a larger fraction, more data or a "):
        make_policy("holdout:fraction=0.00001", operator=operator, y=y)


def test_spec_errors_are_value_errors_that_say_what_to_pass():
    with pytest.raises(ValueError, match="'fixed' needs its num_iter"):
        make_policy("fixed")
    with pytest.raises(ValueError, match="window must be an integer, got 2.5"):
        make_policy("wmv:window=2.5")


def test_variance_rules_that_never_warm_up_say_so():
    policy = WMV(window=5)
    for step in (1, 2):
        policy.update(step, 0.0, torch.zeros(1, 1, 2, 2))
    policy.finalize(2)
    assert "never left its warm-up" in policy.reason and policy.best_step == 2
