"""Early stopping without the clean image: every rule measured against the oracle-best iterate.

For each network (Deep Decoder, Deep Image Prior, ConvDecoder), sample image (``camera``, gray;
``astronaut``, colour; resized with anti-aliasing to a CPU-sized square), noise level
σ ∈ {15, 25, 50}/255 and seed, the script runs **one long fit** with the ground truth tracked
and evaluates every stopping rule on it at once: rules do not change the trajectory, so each
rule's stop step, the iterate it returns and that iterate's PSNR can all be read off the same
run. Every rule is a real :mod:`deepprior.stopping` policy, fed exactly what the library feeds
it in a normal run (the returned candidate; the output from the unperturbed input for the rules
that ask for it when the network perturbs its input, i.e. the Deep Image Prior). A rule that
does not fire within the run's iteration budget returns its best iterate so far, exactly as
``reconstruct(max_num_iter=...)`` would.

Hold-out changes the training data, so it gets its own fits, through
``reconstruct(stop="holdout:fraction=f,patience=P")``; shorter patiences are evaluated on the
same fit from the same split. A "refit on all data" for ``t*`` iterations from the same seed is
the full-data run's iterate ``t*``, so its PSNR is read off the full run.

Also measured: the returned iterate averaged over time (an EMA of the outputs, as the Deep Image
Prior code does) for the networks that do not average by default — the rules are re-run on the
averaged outputs, which is exactly what a fit with ``ema=0.99`` would show them; and a small
compressive-sensing check (camera 64², Gaussian operator, m = 1000, noiseless and 30 dB SNR)
for the ``inverse`` defaults.

Reference: the *oracle* is the best iterate (highest PSNR against the clean image) of the
full-data run — what the library returns at each step. Gap = oracle PSNR − PSNR of the rule's
iterate (negative: better than every single iterate, possible with averaging).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/stopping.py           # the committed run
    OMP_NUM_THREADS=1 python benchmarks/stopping.py --resume  # continue an interrupted run
    python benchmarks/stopping.py --quick                     # smoke run, under a minute
    python benchmarks/stopping.py --report                    # tables + plot from the JSON
    python benchmarks/stopping.py --quick --report            # the same for the smoke run

The committed run took 85 minutes of wall clock on two shared CPU cores (one torch thread).

Writes ``stopping.json`` (every number, machine info; rewritten after every fit, so a partial
run is kept), ``stopping.md`` (tables, command, findings) and ``stopping.png`` in
``benchmarks/results`` (``--quick`` writes ``stopping_quick.*`` to a temporary folder).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepprior import (
    PROBLEMS,
    Blur,
    Downsample,
    FitState,
    GaussianSensing,
    Identity,
    Mask,
    add_gaussian_noise,
    as_operator,
    estimate_sigma,
    gaussian_kernel,
    image_to_tensor,
    jsonable,
    make_policy,
    motion_kernel,
    psnr_tensor,
    reconstruct,
    simulate_measurements,
)
from deepprior.stopping import Discrepancy, members, residual

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (  # noqa: E402
    RESULTS,
    clean_image,
    locked,
    machine_info,
    markdown_table,
    parse_shard,
    without_every,
)

#: Decay of the output average evaluated for the networks that do not average by default
#: (the Deep Image Prior's value).
EMA = 0.99
#: Subsampling of the stored PSNR curves.
CURVE_EVERY = 10

# --------------------------------------------------------------------------- the plan

#: One entry per fit: what to run. ``holdout`` lists (fraction, max patience) hold-out fits.
Run = dict[str, Any]


def _denoise(net: str, image: str, sigma: int, seed: int, num_iter: int, size: int,
             holdout: tuple[float, ...]) -> Run:
    return {"problem": "denoise", "net": net, "image": image, "sigma255": sigma, "seed": seed,
            "num_iter": num_iter, "size": size, "holdout": list(holdout)}


def _cs(net: str, snr: float | None, seed: int, num_iter: int, size: int, m: int,
        holdout: tuple[float, ...]) -> Run:
    return {"problem": "cs", "net": net, "image": "camera", "snr_db": snr, "seed": seed,
            "num_iter": num_iter, "size": size, "num_measurements": m, "holdout": list(holdout)}


def _inpaint(net: str, image: str, sigma: int, seed: int, num_iter: int, size: int,
             keep: float, holdout: tuple[float, ...]) -> Run:
    return {"problem": "inpainting", "net": net, "image": image, "sigma255": sigma, "seed": seed,
            "num_iter": num_iter, "size": size, "keep": keep, "holdout": list(holdout)}


def _generic(net: str, image: str, sigma: int, seed: int, num_iter: int, size: int,
             blur: float, holdout: tuple[float, ...]) -> Run:
    return {"problem": "generic", "net": net, "image": image, "sigma255": sigma, "seed": seed,
            "num_iter": num_iter, "size": size, "blur": blur, "holdout": list(holdout)}


def _superres(net: str, image: str, seed: int, num_iter: int, size: int, factor: int,
              holdout: tuple[float, ...]) -> Run:
    return {"problem": "superres", "net": net, "image": image, "sigma255": 0, "seed": seed,
            "num_iter": num_iter, "size": size, "factor": factor, "holdout": list(holdout)}


def _deblur(net: str, image: str, sigma: int, seed: int, num_iter: int, size: int,
            kernel: str, holdout: tuple[float, ...]) -> Run:
    return {"problem": "deblur", "net": net, "image": image, "sigma255": sigma, "seed": seed,
            "num_iter": num_iter, "size": size, "kernel": kernel, "holdout": list(holdout)}


def problems_plan() -> list[Run]:
    """The problem kinds added with the open engine: inpainting and a generic user operator.

    Inpainting: half of the pixels kept (seeded random mask), noiseless and σ = 25, camera and
    astronaut, Deep Decoder and ConvDecoder (3,000 / 1,500 iterations) with a 10% hold-out of
    the observed pixels, the Deep Image Prior on camera. Generic: a Gaussian blur (std 1.5 px)
    given as a plain function — what a user's own forward model looks like — noiseless and
    σ = 10, camera, Deep Decoder and ConvDecoder. Super-resolution ×2 and ×4 (bicubic
    kernel, noiseless) and deblurring (Gaussian std 1.6 px and 9 px motion at 30°, σ = 0 and
    5), camera (and astronaut for ×4 and the noisy Gaussian blur), with hold-out fits.
    Compressive sensing at SNR 20 dB (Deep Decoder, ConvDecoder) and the Deep Image Prior in
    compressive sensing (noiseless and 20 dB), camera 64², m = 1000.
    """
    plan: list[Run] = []
    for sigma in (0, 25):
        for image in ("camera", "astronaut"):
            plan.append(_inpaint("deep_decoder", image, sigma, 0, 3000, 64, 0.5, (0.1,)))
            plan.append(_inpaint("conv_decoder", image, sigma, 0, 1500, 64, 0.5, (0.1,)))
    for sigma in (0, 10):
        plan.append(_generic("deep_decoder", "camera", sigma, 0, 3000, 64, 1.5, (0.1,)))
        plan.append(_generic("conv_decoder", "camera", sigma, 0, 1500, 64, 1.5, (0.1,)))
    for sigma in (0, 25):
        plan.append(_inpaint("dip", "camera", sigma, 0, 1200, 64, 0.5, ()))
    for factor in (2, 4):
        plan.append(_superres("deep_decoder", "camera", 0, 3000, 64, factor, (0.1,)))
        plan.append(_superres("conv_decoder", "camera", 0, 1500, 64, factor, (0.1,)))
    plan.append(_superres("deep_decoder", "astronaut", 0, 3000, 64, 4, (0.1,)))
    for kernel in ("gaussian:1.6", "motion:9,30"):
        for sigma in (0, 5):
            plan.append(_deblur("deep_decoder", "camera", sigma, 0, 3000, 64, kernel, (0.1,)))
            plan.append(_deblur("conv_decoder", "camera", sigma, 0, 1500, 64, kernel, (0.1,)))
    plan.append(_deblur("deep_decoder", "astronaut", 5, 0, 3000, 64, "gaussian:1.6", (0.1,)))
    # compressive sensing with noise at SNR 20 dB, and the Deep Image Prior (the CS default)
    plan.append(_cs("deep_decoder", 20.0, 0, 1500, 64, 1000, ()))
    plan.append(_cs("conv_decoder", 20.0, 0, 1500, 64, 1000, ()))
    for snr in (None, 20.0, 30.0):
        plan.append(_cs("dip", snr, 0, 1500, 64, 1000, ()))
    return plan


def full_plan() -> list[Run]:
    """The committed run, most informative fits first (a partial run is still useful).

    Seed 0: ConvDecoder (1,500 iterations) and Deep Decoder (3,000) on both images at every σ
    with hold-out fits at 10% of the pixels (and 20% on camera at σ = 25); the Deep Image Prior
    (1,200 iterations, 0.2 s each) on camera at every σ and on astronaut at σ = 25, with a
    hold-out fit on camera at σ = 25. Then the compressive-sensing check, then a second seed.
    """
    plan: list[Run] = []

    def cheap(sigma: int, image: str, seed: int = 0) -> None:
        holdout = (0.1, 0.2) if (sigma, image, seed) == (25, "camera", 0) else (0.1,)
        plan.append(_denoise("conv_decoder", image, sigma, seed, 1500, 64, holdout))
        plan.append(_denoise("deep_decoder", image, sigma, seed, 3000, 64, holdout))

    def dip(sigma: int, image: str) -> None:
        holdout = (0.1,) if (sigma, image) == (25, "camera") else ()
        plan.append(_denoise("dip", image, sigma, 0, 1200, 64, holdout))

    cheap(25, "camera")
    dip(25, "camera")
    cheap(25, "astronaut")
    dip(50, "camera")
    cheap(50, "camera")
    cheap(50, "astronaut")
    dip(15, "camera")
    cheap(15, "camera")
    cheap(15, "astronaut")
    for net in ("deep_decoder", "conv_decoder"):
        for snr in (None, 30.0):
            plan.append(_cs(net, snr, 0, 1500, 64, 1000, (0.1,)))
    # short re-runs of the first Deep Image Prior fits (same seed, same trajectory) for the
    # rules added after them: the finer discrepancy grid, and WMV/EMV on net(z) at σ = 25
    for sigma, num_iter in ((25, 900), (50, 450), (15, 1000)):
        plan.append({**_denoise("dip", "camera", sigma, 0, num_iter, 64, ()), "tag": "grid"})
    dip(25, "astronaut")
    for sigma in (25, 15, 50):
        for image in ("camera", "astronaut"):
            holdout = (0.1,) if sigma == 25 else ()
            plan.append(_denoise("deep_decoder", image, sigma, 1, 3000, 64, holdout))
    return plan + problems_plan()


def photos_plan() -> list[Run]:
    """The Deep Image Prior's stop at 128², on photographs no rule was chosen on (``--photos``).

    Its τ = 0.8 (the level until this study) was chosen on camera 64² (σ = 15, 25, 50) and
    checked on astronaut 64²; at 128² its default call fell furthest behind BM3D at σ = 50
    on the colour photographs (``defaults.py --photos``). One long fit per case, every rule
    shadowing it: σ = 50 on five of the photographs (900 iterations; τ = 0.8 stopped at
    300–720) and on camera and astronaut for reference, then σ = 25 (1,500 iterations) on the
    three colour photographs, camera and astronaut, then σ = 15 (2,000) on camera and
    astronaut. Seed 0, the library's defaults for the network.
    """
    plan = [_denoise("dip", image, 50, 0, 900, 128, ())
            for image in ("chelsea", "rocket", "coffee", "clock", "moon", "camera", "astronaut")]
    plan += [_denoise("dip", image, 25, 0, 1500, 128, ())
             for image in ("chelsea", "rocket", "coffee", "camera", "astronaut")]
    plan += [_denoise("dip", image, 15, 0, 2000, 128, ()) for image in ("camera", "astronaut")]
    return plan


def large_plan() -> list[Run]:
    """The Deep Image Prior's stop at 256² (``--large``), where its default call ran on to
    6,000 iterations: the level chosen at 128² fired after the best iterate on the colour image.

    One long fit per case, seed 0, the library's defaults for the network (the fit without a
    penalty, the first of the default call's two): astronaut σ = 25 (5,000 iterations; its
    rule fired at 4,728) and σ = 50 (2,500), camera σ = 50 (1,500) and σ = 25 (3,000), then
    astronaut σ = 15 (6,000, the budget; its rule did not fire). The residual of net(z) is
    recorded, so any level can be read off afterwards.
    """
    return [_denoise("dip", image, sigma, 0, num_iter, 256, ())
            for image, sigma, num_iter in (("astronaut", 25, 5000), ("astronaut", 50, 2500),
                                           ("camera", 50, 1500), ("camera", 25, 3000),
                                           ("astronaut", 15, 6000))]


def quick_plan() -> list[Run]:
    """Smoke run: a few very short fits (the networks generate at least 64², so 64² it is)."""
    return [
        _denoise("deep_decoder", "camera", 25, 0, 100, 64, (0.1,)),
        _denoise("conv_decoder", "astronaut", 25, 0, 60, 64, ()),
        _denoise("dip", "camera", 25, 0, 15, 64, ()),
        _cs("deep_decoder", 30.0, 0, 50, 64, 1000, (0.2,)),
        _inpaint("conv_decoder", "camera", 25, 0, 40, 64, 0.5, (0.1,)),
        _generic("deep_decoder", "camera", 10, 0, 30, 64, 1.5, ()),
    ]


# --------------------------------------------------------------------------- the rules

#: Rule labels → spec (``None``: built by hand below). Evaluated on every full-data run.
DENOISE_RULES = (
    "wmv", "wmv:patience=300", "wmv:window=50,patience=500", "wmv:window=20,patience=300",
    "emv", "emv:patience=300", "emv:alpha=0.05,patience=500",
    "discrepancy", "discrepancy:tau=0.9", "discrepancy:tau=1.1", "discrepancy(σ̂)",
    "patience", "wmv+discrepancy(σ̂)", "emv+discrepancy(σ̂)",
)
#: A finer grid of the discrepancy level τ, with σ given and estimated (added to the
#: denoising fits run after the first ones showed that τ matters, and re-run on the Deep
#: Image Prior fits as short ``grid`` fits).
DISCREPANCY_GRID = (
    "discrepancy:tau=0.7", "discrepancy:tau=0.8", "discrepancy:tau=0.85",
    "discrepancy:tau=0.95", "discrepancy(σ̂):tau=0.7", "discrepancy(σ̂):tau=0.8",
    "discrepancy(σ̂):tau=0.85", "discrepancy(σ̂):tau=0.9", "discrepancy(σ̂):tau=0.95",
    "discrepancy(σ̂):tau=1.1",
)
CS_RULES = (
    "patience", "patience:200", "patience:1000", "patience:min_delta=0.001",
    "wmv", "wmv:patience=300", "wmv:window=50,patience=500", "emv", "discrepancy",
    # a τ grid, added for the Deep Image Prior (whose τ = 1 stop came far too early); its CS
    # fits were re-run for it, the other networks' CS fits predate it
    "discrepancy:tau=0.9", "discrepancy:tau=0.8", "discrepancy:tau=0.7", "discrepancy:tau=0.6",
    "discrepancy:tau=0.5",
)
#: Rules shown the output from the unperturbed input instead of the average the Deep Image Prior
#: returns (the library shows WMV and EMV the average).
UNPERTURBED_RULES = ("wmv", "wmv:patience=300", "wmv:window=50,patience=500", "emv",
                     "emv:patience=300")
#: Rules re-evaluated on the output average (only for networks that do not average already).
EMA_RULES = ("wmv", "wmv:patience=300", "wmv:window=50,patience=500", "emv", "discrepancy",
             "discrepancy(σ̂)")
#: Fixed iteration counts read off the curve.
FIXED = (250, 500, 1000, 1500, 2000, 3000)
#: Patiences of the hold-out rule evaluated on one hold-out fit (the largest drives the fit).
HOLDOUT_PATIENCE = (100, 200, 300)


def make_rule(label: str, *, operator: Any, y: torch.Tensor, sigma: float | None,
              sigma_hat: float | None) -> Any:
    """Build the policy a label names; ``(σ̂)`` means σ estimated from the observation.

    None when the label needs a noise level the fit does not have (a noiseless fit).
    """
    level = sigma_hat if "(σ̂)" in label else sigma
    if "discrepancy" in label and not level:
        return None
    return make_policy(label.replace("(σ̂)", ""), operator=operator, y=y, sigma=level)[0]


class OnUnperturbed:
    """Show a policy the output from the unperturbed input ``net(z)`` (not the average)."""

    needs_unperturbed_output = True

    def __init__(self, policy: Any) -> None:
        self.policy = policy

    def update(self, step: int, loss: float, output: torch.Tensor) -> bool:
        return self.policy.update(step, loss, output)

    def finalize(self, last_step: int) -> None:
        self.policy.finalize(last_step)

    @property
    def best_step(self) -> int:
        return self.policy.best_step

    @property
    def reason(self) -> str:
        return self.policy.reason


class RuleBank:
    """A fit callback that feeds every rule, records where each fires and what it returns.

    Parameters
    ----------
    rules : dict
        Label → policy, fed the candidate the loop returns (or, for policies that ask for it
        when ``perturbed``, the output from the unperturbed input ``net(z)``).
    ground_truth : torch.Tensor
        To record the PSNR of the side outputs.
    perturbed : bool
        Whether the fit perturbs the network input (then ``net(z)`` is computed once a step).
    ema_rules : dict
        Label → policy fed the average of the candidates (decay :data:`EMA`).
    data : (operator, y) or None
        To record the residual ‖y − A net(z)‖² of the output from the unperturbed input at
        every step (``perturbed`` fits), against which any discrepancy level can be read.
    """

    def __init__(self, rules: dict[str, Any], ground_truth: torch.Tensor, *, perturbed: bool,
                 ema_rules: dict[str, Any] | None = None,
                 data: tuple[Any, torch.Tensor] | None = None) -> None:
        self.rules = rules
        self.ema_rules = ema_rules or {}
        self.ground_truth = ground_truth
        self.perturbed = perturbed
        self.fired: dict[str, tuple[int, int]] = {}
        self.average: torch.Tensor | None = None
        self.data = data
        self.side: dict[str, list[float]] = {"ema": [], "unperturbed": [], "residual": []}
        self.last_step = 0

    def __call__(self, state: FitState) -> bool:
        step, output = state.step, state.output
        clean = None
        if self.perturbed:
            with torch.no_grad():
                clean = state.net(state.z)
        self.average = output.clone() if self.average is None else self.average.lerp(
            output, 1 - EMA)
        scalars = [psnr_tensor(self.ground_truth, self.average)]
        if clean is not None:
            scalars.append(psnr_tensor(self.ground_truth, clean))
        values = torch.stack(scalars).tolist()
        self._pad(step)
        self.side["ema"].append(values[0])
        if clean is not None:
            self.side["unperturbed"].append(values[1])
            if self.data is not None:
                self.side["residual"].append(residual(*self.data, clean))
        for prefix, rules, seen in (("", self.rules, output), ("ema|", self.ema_rules,
                                                                 self.average)):
            for label, rule in rules.items():
                key = prefix + label
                if key in self.fired:
                    continue
                wants = clean is not None and getattr(rule, "needs_unperturbed_output", False)
                if rule.update(step, state.loss, clean if wants else seen):
                    self.fired[key] = (step, rule.best_step)
        self.last_step = step
        return False

    def _pad(self, step: int) -> None:
        """Steps rolled back by the divergence guard skip the callback: repeat the last value."""
        for series in self.side.values():
            while series and len(series) < step - 1:
                series.append(series[-1])

    def outcome(self) -> dict[str, dict[str, Any]]:
        """Per rule: fired?, stop step, chosen step (rules that never fired are finalized)."""
        result = {}
        for prefix, rules in (("", self.rules), ("ema|", self.ema_rules)):
            for label, rule in rules.items():
                key = prefix + label
                if key in self.fired:
                    stop, chosen = self.fired[key]
                    result[key] = {"fired": True, "stop": stop, "chosen": chosen}
                else:
                    rule.finalize(self.last_step)
                    result[key] = {"fired": False, "stop": self.last_step,
                                   "chosen": rule.best_step, "reason": rule.reason}
        return result


# --------------------------------------------------------------------------- the fits


def gaussian_blur(image_shape: tuple[int, int, int], std: float) -> Any:
    """A Gaussian blur written as a user would: a plain function, zero padding, 9×9 kernel."""
    radius = 4
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(t**2) / (2 * std**2))
    kernel = torch.outer(kernel, kernel) / kernel.sum() ** 2
    weight = kernel.expand(image_shape[0], 1, *kernel.shape).contiguous()

    def blur(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.conv2d(x, weight.to(x), padding=radius, groups=x.shape[1])

    return as_operator(blur, image_shape)


def observation(run: Run) -> dict[str, Any]:
    """Clean image, observation, operator (None for denoising) and the noise level.

    Measurements come from :func:`deepprior.simulate_measurements` with the fit's seed
    (before the open engine, the CS noise was drawn from seed + 100: the noisy CS fits in the
    JSON predate that change).
    """
    clean = clean_image(run["image"], run["size"])
    shape = tuple(image_to_tensor(clean).shape[1:])
    if run["problem"] == "denoise":
        sigma = run["sigma255"] / 255
        noisy = add_gaussian_noise(clean, sigma, seed=run["seed"])
        return {"clean": clean, "y": noisy, "operator": None, "sigma": sigma,
                "sigma_hat": estimate_sigma(noisy), "rule_operator": Identity(shape),
                "rule_y": image_to_tensor(noisy)}
    noise: dict[str, float | None] = {"snr_db": run.get("snr_db")}
    if run["problem"] == "cs":
        op = GaussianSensing(run["num_measurements"], shape, seed=run["seed"])
    elif run["problem"] == "inpainting":
        op = Mask(shape, keep=run["keep"], seed=run["seed"])
        noise = {"sigma": run["sigma255"] / 255}
    elif run["problem"] == "superres":
        op = Downsample(run["factor"], shape)
    elif run["problem"] == "deblur":
        name, _, args = run["kernel"].partition(":")
        values = [float(v) for v in args.split(",")]
        op = Blur(gaussian_kernel(*values) if name == "gaussian" else motion_kernel(*values),
                  shape)
        noise = {"sigma": run["sigma255"] / 255}
    else:
        op = gaussian_blur(shape, run["blur"])
        noise = {"sigma": run["sigma255"] / 255}
    y, sigma = simulate_measurements(op, clean, seed=run["seed"], **noise)
    return {"clean": clean, "y": y, "operator": op, "sigma": sigma or None, "sigma_hat": None,
            "rule_operator": op, "rule_y": torch.from_numpy(y)[None]}


def _curve(values: np.ndarray | list[float]) -> list[float]:
    values = np.asarray(values, dtype=np.float64)
    return [round(float(v), 2) for v in values[CURVE_EVERY - 1::CURVE_EVERY]]


def full_fit(run: Run) -> dict[str, Any]:
    """One long fit on all the data with every rule shadowing it."""
    data = observation(run)
    labels = DENOISE_RULES + DISCREPANCY_GRID if run["problem"] == "denoise" else CS_RULES
    if run["problem"] == "denoise":  # the library's own rule, read at every iteration (the
        auto = auto_rules()[("denoise", run["net"])]  # report's row) and as `reconstruct`
        own = {auto_label(auto), auto.replace("discrepancy", "discrepancy(σ̂)")}  # reads it
        labels += tuple(sorted(own - set(labels)))
    if run.get("tag") == "grid":  # a short re-run for the finer discrepancy grid
        labels = ("discrepancy", "discrepancy:tau=0.9", "discrepancy(σ̂)", *DISCREPANCY_GRID)
    context = {"operator": data["rule_operator"], "y": data["rule_y"], "sigma": data["sigma"],
               "sigma_hat": data["sigma_hat"]}
    rules = {label: make_rule(label, **context) for label in labels}
    rules = {label: rule for label, rule in rules.items() if rule is not None}
    perturbed = run["net"] == "dip"
    grid_without_wmv = run.get("tag") == "grid" and run.get("sigma255") != 25
    if perturbed and not grid_without_wmv:
        for label in UNPERTURBED_RULES:
            rules[f"{label} on net(z)"] = OnUnperturbed(make_policy(label)[0])
    ema_rules = {}
    if not perturbed:
        ema_rules = {label: make_rule(label, **context) for label in EMA_RULES if label in labels
                     or label.startswith("discrepancy")}
        ema_rules = {label: rule for label, rule in ema_rules.items() if rule is not None}
    truth = image_to_tensor(data["clean"])
    bank = RuleBank(rules, truth, perturbed=perturbed, ema_rules=ema_rules,
                    data=(data["rule_operator"], data["rule_y"]) if perturbed else None)
    n = run["num_iter"]
    start = time.perf_counter()
    result = reconstruct(data["y"], data["operator"], net=run["net"], stop=f"fixed:{n}",
                         max_num_iter=n, ground_truth=data["clean"], seed=run["seed"],
                         callback=bank)
    wall = time.perf_counter() - start
    psnr = np.asarray(result.history["psnr"], dtype=np.float64)
    ema = np.asarray(bank.side["ema"], dtype=np.float64)
    record: dict[str, Any] = {
        "run": run, "kind": "full", "sigma": data["sigma"], "sigma_hat": data["sigma_hat"],
        "num_steps": result.num_steps, "seconds": wall, "seconds_per_iter": wall / n,
        "config": {k: result.config[k] for k in ("net_options", "num_parameters",
                                                  "learning_rate", "reg_noise_std", "ema")},
        "oracle": {"psnr": float(psnr.max()), "step": int(psnr.argmax()) + 1},
        "ema_oracle": {"psnr": float(ema.max()), "step": int(ema.argmax()) + 1},
        "final_psnr": float(psnr[-1]),
        "fixed": {str(k): float(psnr[k - 1]) for k in FIXED if k <= len(psnr)},
        "fixed_ema": {str(k): float(ema[k - 1]) for k in FIXED if k <= len(ema)},
        "rules": {},
        "psnr": [round(float(v), 2) for v in psnr],
        "curve": {"every": CURVE_EVERY, "ema": _curve(ema)},
    }
    if bank.side["unperturbed"]:
        raw = np.asarray(bank.side["unperturbed"], dtype=np.float64)
        record["unperturbed_oracle"] = {"psnr": float(raw.max()), "step": int(raw.argmax()) + 1}
        record["curve"]["unperturbed"] = _curve(raw)
    if bank.side["residual"]:  # per measurement, in units of σ̂² (or σ²): the level τ
        level = data["sigma_hat"] or data["sigma"]
        ratio = np.asarray(bank.side["residual"]) / (data["rule_y"].numel() * level**2)
        record["curve"]["residual_ratio"] = [round(float(v), 4)
                                             for v in ratio[CURVE_EVERY - 1::CURVE_EVERY]]
    for key, outcome in bank.outcome().items():
        series = ema if key.startswith("ema|") else psnr
        chosen = outcome["chosen"]
        outcome["psnr"] = float(series[chosen - 1]) if chosen >= 1 else float("nan")
        if not key.startswith("ema|"):
            outcome["psnr_ema"] = float(ema[chosen - 1]) if chosen >= 1 else float("nan")
        record["rules"][key] = outcome
    return record


class HoldoutBank:
    """Fit callback of a hold-out run: shorter patiences on the same split, same outputs.

    The split is drawn by :func:`deepprior.make_policy`, as in :func:`deepprior.reconstruct`;
    the run's own choice is compared with the replica of its rule to check that.
    """

    def __init__(self, operator: Any, y: torch.Tensor, fraction: float, seed: int,
                 truth: torch.Tensor, *, perturbed: bool, averaged: bool) -> None:
        def rule(patience: int) -> Any:  # make_policy draws the split reconstruct draws
            return make_policy(f"holdout:fraction={fraction},patience={patience}",
                               operator=operator, y=y, seed=seed)[0]

        self.rules = {p: rule(p) for p in HOLDOUT_PATIENCE}
        self.ema_rules = {p: rule(p) for p in HOLDOUT_PATIENCE} if averaged else {}
        self.perturbed = perturbed
        self.truth = truth
        self.average: torch.Tensor | None = None
        self.ema_psnr: list[float] = []
        self.fired: dict[str, tuple[int, int]] = {}
        self.last_step = 0

    def __call__(self, state: FitState) -> bool:
        output = state.output
        if self.perturbed:
            with torch.no_grad():
                output = state.net(state.z)
        self.average = state.output.clone() if self.average is None else self.average.lerp(
            state.output, 1 - EMA)
        while self.ema_psnr and len(self.ema_psnr) < state.step - 1:
            self.ema_psnr.append(self.ema_psnr[-1])
        self.ema_psnr.append(float(psnr_tensor(self.truth, self.average)))
        for prefix, rules, seen in (("", self.rules, output), ("ema|", self.ema_rules,
                                                                 self.average)):
            for patience, rule in rules.items():
                key = f"{prefix}{patience}"
                if key not in self.fired and rule.update(state.step, state.loss, seen):
                    self.fired[key] = (state.step, rule.best_step)
        self.last_step = state.step
        return False

    def outcome(self) -> dict[str, dict[str, Any]]:
        result = {}
        for prefix, rules in (("", self.rules), ("ema|", self.ema_rules)):
            for patience, rule in rules.items():
                key = f"{prefix}{patience}"
                stop, chosen = self.fired.get(key, (self.last_step, rule.best_step))
                result[key] = {"fired": key in self.fired, "stop": stop, "chosen": chosen}
        return result


def holdout_fit(run: Run, fraction: float, full: dict[str, Any]) -> dict[str, Any]:
    """One hold-out fit (its largest patience stops it); the others read off the same fit."""
    data = observation(run)
    operator = data["rule_operator"]
    truth = image_to_tensor(data["clean"])
    averaged = run["net"] != "dip"
    bank = HoldoutBank(operator, data["rule_y"], fraction, run["seed"], truth,
                       perturbed=run["net"] == "dip", averaged=averaged)
    n, patience = run["num_iter"], max(HOLDOUT_PATIENCE)
    start = time.perf_counter()
    result = reconstruct(data["y"], data["operator"], net=run["net"],
                         stop=f"holdout:fraction={fraction},patience={patience}",
                         max_num_iter=n, ground_truth=data["clean"], seed=run["seed"],
                         callback=bank)
    wall = time.perf_counter() - start
    psnr = np.asarray(result.history["psnr"], dtype=np.float64)
    ema = np.asarray(bank.ema_psnr, dtype=np.float64)
    full_psnr = full["curve_full"]
    outcome = bank.outcome()
    for key, item in outcome.items():
        chosen = item["chosen"]
        series = ema if key.startswith("ema|") else psnr
        item["psnr"] = float(series[chosen - 1])
        # a refit on all the data for `chosen` iterations from the same seed is the full
        # run's iterate `chosen` (same initialisation, same trajectory)
        item["refit_psnr"] = float(full_psnr[min(chosen, len(full_psnr)) - 1])
    replica = outcome[str(patience)]["chosen"]
    return {
        "run": run, "kind": "holdout", "fraction": fraction, "num_steps": result.num_steps,
        "seconds": wall, "seconds_per_iter": wall / max(result.num_steps, 1),
        "returned_step": result.num_iter, "returned_psnr": result.psnr,
        "replica_matches": replica == result.num_iter,
        "oracle": {"psnr": float(psnr.max()), "step": int(psnr.argmax()) + 1},
        "rules": outcome,
    }


# --------------------------------------------------------------------------- bookkeeping


def run_key(run: Run) -> str:
    parts = [run["problem"], run["net"], run["image"], str(run["size"])]
    if run["problem"] == "cs":
        parts += [f"m{run['num_measurements']}",
                  "noiseless" if run["snr_db"] is None else f"snr{run['snr_db']:g}"]
    else:
        parts += [f"keep{run['keep']:g}"] if run["problem"] == "inpainting" else []
        parts += [f"blur{run['blur']:g}"] if run["problem"] == "generic" else []
        parts += [f"x{run['factor']}"] if run["problem"] == "superres" else []
        parts += [run["kernel"]] if run["problem"] == "deblur" else []
        parts.append(f"s{run['sigma255']}")
    parts.append(f"seed{run['seed']}")
    if run.get("tag"):
        parts.append(run["tag"])
    return "/".join(parts)


def execute(plan: list[Run], path: Path, *, resume: bool, log: Callable[[str], None],
            shard: tuple[int, int] = (0, 1)) -> dict:
    """Run the plan (its fits ``K, K + N, …`` for ``shard = (K, N)``), saving after every fit.

    With ``resume`` every save merges into the fits already in ``path`` under a lock, so that
    N processes with ``--resume --shard K/N`` fill one file; without it the file is rewritten.
    """
    payload: dict[str, Any] = {"runs": {}, "holdout": {}}
    if resume and path.exists():
        previous = json.loads(path.read_text())
        payload["runs"] = previous.get("runs", {})
        payload["holdout"] = previous.get("holdout", {})
    payload["plan"] = plan
    started = time.perf_counter()
    k, n = shard
    for index, run in list(enumerate(plan, 1))[k::n]:
        key = run_key(run)
        full = payload["runs"].get(key)
        if full is None:
            full = full_fit(run)
            payload["runs"][key] = full
            log(f"[{index}/{len(plan)}] {key}: oracle {full['oracle']['psnr']:.2f} dB at "
                f"{full['oracle']['step']}, final {full['final_psnr']:.2f}, "
                f"{full['seconds']:.0f} s ({time.perf_counter() - started:.0f} s total)")
            payload = _save(path, payload, merge=resume)
        psnr_full = _full_psnr(run, full)
        for fraction in run["holdout"]:
            hkey = f"{key}/holdout{fraction:g}"
            if hkey in payload["holdout"]:
                continue
            item = holdout_fit(run, fraction, {"curve_full": psnr_full})
            payload["holdout"][hkey] = item
            log(f"    {hkey}: stopped at {item['num_steps']}, returned {item['returned_step']} "
                f"({item['returned_psnr']:.2f} dB), replica ok: {item['replica_matches']}, "
                f"{item['seconds']:.0f} s ({time.perf_counter() - started:.0f} s total)")
            payload = _save(path, payload, merge=resume)
    return _save(path, payload, merge=resume)


def _full_psnr(run: Run, full: dict[str, Any]) -> np.ndarray:
    """Per-iteration PSNR of the full-data run."""
    return np.asarray(full["psnr"], dtype=np.float64)


def _save(path: Path, payload: dict[str, Any], *, merge: bool) -> dict[str, Any]:
    """Write the payload (with ``merge``, joined with the fits another process saved since);
    ``complete`` when every fit of the plan is in it. Returns what was written."""
    with locked(path):
        if merge and path.exists():
            on_disk = json.loads(path.read_text())
            payload = {**payload, **{part: {**on_disk.get(part, {}), **payload[part]}
                                     for part in ("runs", "holdout")}}
        keys = [run_key(run) for run in payload["plan"]]
        complete = all(key in payload["runs"] for key in keys) and all(
            f"{key}/holdout{f:g}" in payload["holdout"]
            for key, run in zip(keys, payload["plan"], strict=True) for f in run["holdout"])
        body = {"machine": machine_info(), **payload, "complete": complete}
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(jsonable(body), indent=None, separators=(",", ":")))
        tmp.replace(path)
    return body


# --------------------------------------------------------------------------- the report

NET_NAMES = {"deep_decoder": "Deep Decoder", "dip": "Deep Image Prior", "conv_decoder":
             "ConvDecoder"}
FINDINGS_START, FINDINGS_END = "<!-- findings -->", "<!-- /findings -->"


def outcomes(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (fit, rule): gap to the oracle of the full-data fit, stop step, time."""
    rows: list[dict[str, Any]] = []
    for key, full in payload["runs"].items():
        if full["run"].get("tag"):
            continue
        run, oracle, spi = full["run"], full["oracle"]["psnr"], full["seconds_per_iter"]

        def add(label: str, psnr: float, stop: int, fired: bool = True, *, cost: int | None = None,
                run=run, key=key, oracle=oracle, spi=spi) -> None:
            rows.append({"problem": run["problem"], "net": run["net"], "run": key,
                         "label": label, "psnr": psnr, "gap": oracle - psnr, "stop": stop,
                         "fired": fired, "seconds": (cost if cost is not None else stop) * spi})

        n = run["num_iter"]
        add("oracle (best iterate)", oracle, full["oracle"]["step"])
        add(f"final iterate (fixed:{n})", full["final_psnr"], n)
        for count, psnr in full["fixed"].items():
            if int(count) < n:
                add(f"fixed:{count}", psnr, int(count))
        if run["net"] != "dip":
            add("oracle, EMA output", full["ema_oracle"]["psnr"], full["ema_oracle"]["step"])
            for count, psnr in full["fixed_ema"].items():
                add(f"fixed:{count}, EMA output", psnr, int(count))
        else:
            raw = full["unperturbed_oracle"]
            add("oracle without EMA (net(z))", raw["psnr"], raw["step"])
        for label, item in full["rules"].items():
            name = label[4:] + ", EMA output" if label.startswith("ema|") else label
            add(name, item["psnr"], item["stop"], item["fired"])
        grid = payload["runs"].get(key + "/grid")
        if grid is not None:  # same seed, same trajectory: the base fit's PSNR curve applies
            for label, item in grid["rules"].items():
                if label not in full["rules"] and item["fired"]:
                    add(label, full["psnr"][item["chosen"] - 1], item["stop"])
        for hkey, hold in payload["holdout"].items():
            if not hkey.startswith(key + "/"):
                continue
            fraction = hold["fraction"]
            for patience, item in hold["rules"].items():
                ema = patience.startswith("ema|")
                p = patience[4:] if ema else patience
                label = f"holdout:fraction={fraction:g},patience={p}"
                suffix = ", EMA output" if ema else ""
                add(label + suffix, item["psnr"], item["stop"], item["fired"])
                if not ema:
                    add(label + " + refit", item["refit_psnr"], item["stop"] + item["chosen"],
                        item["fired"])
            add(f"oracle of the holdout:fraction={fraction:g} fit", hold["oracle"]["psnr"],
                hold["oracle"]["step"])
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Per (problem, network, rule): mean/median/max gap, share within 1 dB, stop, time."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["problem"], row["net"], row["label"]), []).append(row)
    table = {}
    for key, items in groups.items():
        gaps = [r["gap"] for r in items]
        table[key] = {
            "n": len(items),
            "mean_gap": statistics.fmean(gaps),
            "median_gap": statistics.median(gaps),
            "max_gap": max(gaps),
            "within_1db": sum(g <= 1.0 for g in gaps) / len(gaps),
            "within_05db": sum(g <= 0.5 for g in gaps) / len(gaps),
            "mean_psnr": statistics.fmean(r["psnr"] for r in items),
            "mean_stop": statistics.fmean(r["stop"] for r in items),
            "fired": sum(r["fired"] for r in items) / len(items),
            "mean_seconds": statistics.fmean(r["seconds"] for r in items),
        }
    return table


#: The study's problem names and the library's problem kinds.
KINDS = {"denoise": "denoise", "cs": "compressive_sensing", "inpainting": "inpainting",
         "generic": "generic", "superres": "super_resolution", "deblur": "deblurring"}


def auto_rules() -> dict[tuple[str, str], str]:
    """The library's current ``auto`` rule per (problem, network) (σ unknown)."""
    return {(problem, net): PROBLEMS[kind].get(net, PROBLEMS[kind]["*"]).stop
            for problem, kind in KINDS.items() for net in NET_NAMES}


def auto_label(spec: str, problem: str = "denoise") -> str:
    """The table label of an auto spec (σ is estimated when auto denoises), without its rules'
    ``every=k``: the rows measure the rule read at every iteration."""
    spec = without_every(spec)
    return spec.replace("discrepancy", "discrepancy(σ̂)") if problem == "denoise" else spec


#: The sections of the report after denoising: title and what to know about the columns.
OTHER_PROBLEMS = {
    "cs": ("Compressive sensing (camera, Gaussian operator)",
           "Same columns; `discrepancy` with the true noise level (30 dB fits only). The "
           "training-loss rules (`patience`) fired in one fit only: the loss was still "
           "decreasing at the 1,500-iteration budget, so `patience` here means the last "
           "(lowest-loss) iterate. The library's budget is 3,000 iterations; what happens "
           "between 1,500 and 3,000 was not measured."),
    "inpainting": ("Inpainting (half of the pixels kept at random)",
                   "Same columns; `discrepancy` with the true σ (noisy fits only; m counts the "
                   "observed pixels). Hold-out: 10% of the *observed* pixels."),
    "superres": ("Super-resolution (bicubic downsampling, noiseless)",
                 "Same columns. The image is the high-resolution one (64²); the network sees "
                 "the 32² or 16² low-resolution image. Hold-out: 10% of the low-resolution "
                 "pixels."),
    "deblur": ("Deblurring (circular blur, Gaussian std 1.6 px or 9 px motion at 30°)",
               "Same columns; `discrepancy` with the true σ (noisy fits only)."),
    "generic": ("A user's own operator (Gaussian blur std 1.5 px as a plain function)",
                "Same columns; `discrepancy` with the true σ (noisy fits only). The operator is "
                "a function, so the library knows nothing of it: this is the `generic` kind."),
}


#: Rows of the short tables (the full tables list every rule evaluated).
KEY_LABELS = (
    "oracle (best iterate)", "final iterate", "fixed:1000", "patience", "wmv", "wmv:patience=300",
    "wmv on net(z)", "wmv:patience=300 on net(z)", "emv", "discrepancy", "discrepancy:tau=0.9",
    "discrepancy:tau=0.8",
    "discrepancy(σ̂)", "holdout:fraction=0.1,patience=300",
    "holdout:fraction=0.1,patience=300 + refit", "oracle, EMA output",
    "oracle without EMA (net(z))", "discrepancy, EMA output", "discrepancy(σ̂), EMA output",
    "wmv:patience=300, EMA output", "fixed:1000, EMA output",
)


def _table_rows(summary, problem: str, net: str, auto: str | None,
                short: bool = False) -> list[dict[str, Any]]:
    rows = []
    keys = sorted((k for k in summary if k[0] == problem and k[1] == net),
                  key=lambda k: summary[k]["mean_gap"])
    if short:
        keys = [k for k in keys if k[2] == auto or any(
            k[2] == label or (label == "final iterate" and k[2].startswith(label))
            for label in KEY_LABELS)]
    for key in keys:
        s = summary[key]
        label = key[2] + (" **(auto)**" if auto is not None and key[2] == auto else "")
        rows.append({
            "rule": label, "runs": s["n"], "mean gap dB": f"{s['mean_gap']:.2f}",
            "median": f"{s['median_gap']:.2f}", "worst": f"{s['max_gap']:.2f}",
            "≤1 dB": f"{100 * s['within_1db']:.0f}%", "PSNR": f"{s['mean_psnr']:.2f}",
            "stop it": f"{s['mean_stop']:.0f}", "fired": f"{100 * s['fired']:.0f}%",
            "time s": f"{s['mean_seconds']:.1f}",
        })
    return rows


def by_sigma(rows: list[dict[str, Any]], payload: dict[str, Any]) -> str:
    """The auto rule's mean gap per network and noise level (denoising)."""
    autos = auto_rules()
    cells: dict[tuple[str, int], list[float]] = {}
    for row in rows:
        run = payload["runs"][row["run"]]["run"]
        if run["problem"] != "denoise":
            continue
        if row["label"] == auto_label(autos.get(("denoise", run["net"]), "")):
            cells.setdefault((run["net"], run["sigma255"]), []).append(row["gap"])
    lines = []
    for net in ("deep_decoder", "dip", "conv_decoder"):
        line: dict[str, Any] = {"network": NET_NAMES[net],
                                "auto": f"`{autos.get(('denoise', net), '')}`"}
        for sigma in (15, 25, 50):
            gaps = cells.get((net, sigma))
            line[f"σ={sigma}"] = "" if not gaps else (
                f"{statistics.fmean(gaps):.2f} (worst {max(gaps):.2f}, n={len(gaps)})")
        lines.append(line)
    return markdown_table(lines, ("network", "auto", "σ=15", "σ=25", "σ=50"))


COLUMNS = ("rule", "runs", "mean gap dB", "median", "worst", "≤1 dB", "PSNR", "stop it",
           "fired", "time s")


def per_run_table(payload: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """Oracle, final iterate and the auto rule's gap for every fit."""
    autos = auto_rules()
    by = {(r["run"], r["label"]): r for r in rows}
    lines = []
    for key, full in payload["runs"].items():
        run = full["run"]
        if run.get("tag"):
            continue
        problem = run["problem"]
        auto = auto_label(autos.get((problem, run["net"]), ""))
        hit = by.get((key, auto))
        lines.append({
            "fit": key, "oracle dB": f"{full['oracle']['psnr']:.2f}",
            "at it": full["oracle"]["step"], "final dB": f"{full['final_psnr']:.2f}",
            "auto": auto, "auto dB": "" if hit is None else f"{hit['psnr']:.2f}",
            "auto gap": "" if hit is None else f"{hit['gap']:.2f}",
            "auto stop": "" if hit is None else hit["stop"],
            "s/it": f"{full['seconds_per_iter']:.3f}",
        })
    return markdown_table(lines, ("fit", "oracle dB", "at it", "final dB", "auto", "auto dB",
                                  "auto gap", "auto stop", "s/it"))


def write_report(payload: dict[str, Any], md_path: Path, png_path: Path) -> None:
    """stopping.md (tables, command, findings kept from the previous file) and the plot."""
    rows = outcomes(payload)
    summary = summarize(rows)
    autos = auto_rules()
    machine = payload.get("machine", machine_info())
    findings = "(findings to be written from the numbers below)"
    if md_path.exists():
        text = md_path.read_text()
        if FINDINGS_START in text and FINDINGS_END in text:
            findings = text.split(FINDINGS_START, 1)[1].split(FINDINGS_END, 1)[0].strip()
    nets = [n for n in ("deep_decoder", "dip", "conv_decoder")
            if any(k[:2] == ("denoise", n) for k in summary)]
    parts = [
        "# Early stopping without the clean image — measured",
        "",
        f"Command: `OMP_NUM_THREADS=1 python benchmarks/stopping.py"
        f"{' --' + md_path.stem.split('_')[1] if '_' in md_path.stem else ''}` "
        f"({'complete' if payload.get('complete') else 'PARTIAL'} run; last invocation "
        f"`{machine['command']}`).  ",
        f"Machine: {machine['processor']}, {machine['cpu_count']} cores, "
        f"{machine['torch_threads']} torch thread, torch {machine['torch']}, {machine['date']}.",
        "",
        _setup_text(payload),
        "",
        "## Findings",
        "",
        FINDINGS_START,
        findings,
        FINDINGS_END,
        "",
        "## Denoising: every rule against the oracle-best iterate",
        "",
        "Gap = PSNR of the oracle-best iterate of the full-data fit − PSNR of the iterate the "
        "rule returns (dB; lower is better, negative beats every single iterate). `≤1 dB`: share "
        "of fits within 1 dB. `stop it`: iteration at which the rule stops (a rule that does not "
        "fire stops at the budget and returns its best iterate so far; `fired` says how often it "
        "fired). `time s`: stop iteration × measured seconds per iteration of that fit (one "
        "thread; shadowing overhead included). `EMA output`: the rule run on the 0.99-average of "
        "the outputs and returning it (what `ema=0.99` does; the Deep Image Prior always "
        "averages; a hold-out fit stops when its rule on the raw outputs fires, which cuts the "
        "averaged variants short: their `fired` column says how often they fired first). "
        "`+ refit`: the hold-out stop, then a refit on all pixels for the chosen number of "
        "iterations (time counts both). `on net(z)`: the rule shown the output from the "
        "unperturbed input instead of the average the Deep Image Prior returns (not what the "
        "library does today; see the findings). `discrepancy(σ̂)`: σ estimated from the noisy "
        "image, as `reconstruct` does when no `sigma` is given; plain `discrepancy`: σ given.",
        "",
    ]
    for net in nets:
        auto = auto_label(autos.get(("denoise", net), ""))
        parts += [f"### {NET_NAMES[net]} (auto = `{autos.get(('denoise', net))}`)", "",
                  markdown_table(_table_rows(summary, "denoise", net, auto, True), COLUMNS), "",
                  "<details><summary>every rule evaluated</summary>", "",
                  markdown_table(_table_rows(summary, "denoise", net, auto), COLUMNS), "",
                  "</details>", ""]
    parts += ["### The auto rule's mean gap per noise level (dB)", "", by_sigma(rows, payload),
              ""]
    levels = level_table(payload)
    if levels:
        parts += ["### The discrepancy level, read off the residual of net(z)", "",
                  "`ratio at best`: the residual ‖y − A net(z)‖² / (m·σ̂²) at the best iterate "
                  "(σ̂ estimated, as the default; `σ̂/σ` shows its error). `gap at τ`: best PSNR "
                  "− PSNR of the iterate where the residual, read every "
                  f"{CURVE_EVERY} iterations and smoothed as the rule smooths it, first falls to "
                  "τ·m·σ̂² (`—`: it did not by the end of the fit; the gap of the last iterate). "
                  "`default τ`: the level of the library's stop now, at the fit's size.",
                  "", levels, ""]
    for problem, (title, text) in OTHER_PROBLEMS.items():
        other = [n for n in NET_NAMES if any(k[:2] == (problem, n) for k in summary)]
        if other:
            parts += [f"## {title}", "", text, ""]
        for net in other:
            auto = auto_label(autos.get((problem, net), ""), problem)
            parts += [f"### {NET_NAMES[net]} (auto = `{autos.get((problem, net))}`)", "",
                      markdown_table(_table_rows(summary, problem, net, auto), COLUMNS), ""]
    parts += ["## Every fit", "", per_run_table(payload, rows), "",
              f"![PSNR against iteration with each rule's stop]({png_path.name})", ""]
    md_path.write_text("\n".join(parts))
    plot(payload, rows, summary, png_path)


#: Levels τ of the residual (in units of m·σ̂²) read off the recorded residual curves.
LEVELS = (0.8, 0.85, 0.88, 0.9, 0.92, 0.95)
#: The discrepancy rule's average of the residual: its weight on the past per iteration.
SMOOTHING = inspect.signature(Discrepancy).parameters["smoothing"].default


def default_level(run: Run, sigma_hat: float) -> float:
    """The level of the library's stop now, for the fit's image, as a fraction of m·σ̂²: the
    highest of its discrepancy rules' levels (the first to be reached)."""
    data = observation(run)
    spec = PROBLEMS["denoise"][run["net"]].auto_stop(False, None, data["rule_y"].shape)
    rules = members(make_policy(spec, operator=data["rule_operator"], y=data["rule_y"],
                                sigma=sigma_hat)[0])
    return max(rule.level for rule in rules) / (data["rule_y"].numel() * sigma_hat**2)


def level_table(payload: dict[str, Any]) -> str:
    """Per fit with a recorded residual: where the best iterate lies, and each level's gap."""
    rows = []
    for full in payload["runs"].values():
        ratios = full.get("curve", {}).get("residual_ratio")
        if full.get("kind") != "full" or not ratios:
            continue
        run, psnr = full["run"], np.asarray(full["psnr"])
        best, best_psnr = full["oracle"]["step"], full["oracle"]["psnr"]
        every = full["curve"]["every"]
        steps = np.arange(1, len(ratios) + 1) * every
        weight = SMOOTHING**every  # the rule's average of the residual, per reading
        smoothed, value = [], None
        for ratio in ratios:
            value = ratio if value is None else weight * value + (1 - weight) * ratio
            smoothed.append(value)
        at_best = ratios[min(max(round(best / every) - 1, 0), len(ratios) - 1)]
        row = {"fit": f"{run['image']} {run['size']}², σ = {run['sigma255']}",
               "σ̂/σ": f"{full['sigma_hat'] / full['sigma']:.3f}",
               "best it": best, "best PSNR": f"{best_psnr:.2f}",
               "ratio at best": f"{at_best:.3f}"}
        default = default_level(run, full["sigma_hat"])
        row["default τ"] = f"{default:.3f}"
        for tau in (default, *LEVELS):
            hit = next((int(step) for step, v in zip(steps, smoothed, strict=True) if v <= tau),
                       None)
            gap = best_psnr - psnr[(hit or len(psnr)) - 1]
            column = "gap at default" if tau is default else f"gap at τ = {tau:g}"
            row[column] = f"{gap:.2f} ({hit})" if hit else f"— {gap:.2f}"
        rows.append(row)
    return markdown_table(rows, list(rows[0])) if rows else ""


def _setup_text(payload: dict[str, Any]) -> str:
    fits = [f for f in payload["runs"].values() if not f["run"].get("tag")]
    lines = ["## What was run", ""]
    for net in ("conv_decoder", "deep_decoder", "dip"):
        mine = [f for f in fits if f["run"]["net"] == net and f["run"]["problem"] == "denoise"]
        if not mine:
            continue
        config, run = mine[0]["config"], mine[0]["run"]
        combos = sorted({(f["run"]["image"], f["run"]["sigma255"], f["run"]["seed"])
                         for f in mine}, key=lambda c: (c[2], c[0], c[1]))
        listed = ", ".join(f"{image} σ={sigma} seed {seed}" for image, sigma, seed in combos)
        holdouts = sorted({h["fraction"] for h in payload["holdout"].values()
                           if h["run"]["net"] == net and h["run"]["problem"] == "denoise"})
        nhold = sum(1 for h in payload["holdout"].values()
                    if h["run"]["net"] == net and h["run"]["problem"] == "denoise")
        spi = statistics.fmean(f["seconds_per_iter"] for f in mine)
        lines.append(
            f"- **{NET_NAMES[net]}** ({config['num_parameters']:,} parameters; library defaults: "
            f"lr {config['learning_rate']}, input noise {config['reg_noise_std']:.3g}, output "
            f"EMA {config['ema']}): {len(mine)} fits of "
            f"{' / '.join(f'{n:,}' for n in sorted({f['run']['num_iter'] for f in mine}))} "
            f"iterations on "
            f"{run['size']}² images — {listed}; "
            + (f"{nhold} hold-out fits (fractions {', '.join(f'{x:g}' for x in holdouts)}); "
               if nhold else "") + f"{spi:.3f} s per iteration (wall clock, shadowing included).")
    grid = [f["run"] for f in payload["runs"].values() if f["run"].get("tag") == "grid"]
    if grid:
        lines.append(
            f"- {len(grid)} short re-runs of the first Deep Image Prior fits (camera, σ = "
            f"{', '.join(str(r['sigma255']) for r in grid)}; same seed, so the same trajectory — "
            "checked: same oracle and same stops for the rules both runs share) for the rules "
            "added after them: the finer τ grid of the discrepancy rule and WMV/EMV on net(z).")
    for problem, what in (("inpainting", "half of the pixels kept (seeded random mask)"),
                          ("superres", "bicubic downsampling ×2 and ×4 of the 64² image"),
                          ("deblur", "circular blur, Gaussian std 1.6 px and 9 px motion at 30°"),
                          ("generic", "Gaussian blur (std 1.5 px, 9×9, zero padding) given as a "
                           "plain function")):
        mine = [f for f in fits if f["run"]["problem"] == problem]
        if mine:
            combos = sorted({(f["run"]["net"], f["run"]["image"], f["run"]["sigma255"])
                             for f in mine})
            listed = ", ".join(f"{NET_NAMES[n]} {i} σ={s}" for n, i, s in combos)
            lines.append(f"- **{problem}**: {what}, 64², noise σ in 0-255 units — {listed}; "
                         "the library's defaults for the kind; hold-out fits at 10% of the "
                         "observed entries.")
    cs = [f["run"] for f in fits if f["run"]["problem"] == "cs"]
    if cs:
        lines.append(
            f"- **Compressive sensing**: camera {cs[0]['size']}², Gaussian operator, "
            f"m = {cs[0]['num_measurements']} (n = {cs[0]['size'] ** 2}), noiseless and 30 dB "
            f"SNR, Deep Decoder and ConvDecoder with the `inverse` defaults, "
            f"{cs[0]['num_iter']} iterations, seed 0; hold-out at 10% of the measurements.")
    lines.append("- Noise: additive Gaussian, not clipped, drawn from the fit's seed; images "
                 "resized with anti-aliasing (`deepprior.sample_image`; scikit-image's other "
                 "photographs cut to their central square first, `harness.clean_image`). The "
                 "machine's two cores "
                 "were shared with other jobs during the run, so wall-clock seconds overstate "
                 "the cost; the stop iteration is the machine-independent measure.")
    return "\n".join(lines)


def plot(payload: dict[str, Any], rows, summary, path: Path) -> None:
    """PSNR against iteration with the stops marked, and mean gaps: camera 64², σ = 25, one fit
    per network; a run without those shows its fits (``--large``) or its σ = 50 ones
    (``--photos``)."""
    from matplotlib.figure import Figure

    autos = auto_rules()
    picks = []
    for net in ("deep_decoder", "dip", "conv_decoder"):
        for key, full in payload["runs"].items():
            r = full["run"]
            if (r["net"], r["problem"], r["image"], r["seed"], r["size"], r["sigma255"]) == (
                    net, "denoise", "camera", 0, 64, 25) and not r.get("tag"):
                picks.append((key, full))
    fits = [(key, full) for key, full in payload["runs"].items()
            if full["run"]["problem"] == "denoise" and not full["run"].get("tag")]
    picks = picks or (fits if len(fits) <= 5 else
                      [(key, full) for key, full in fits if full["run"]["sigma255"] == 50])
    if not picks:
        return
    fig = Figure(figsize=(12, 3.6 * ((len(picks) + 2) // 2)))
    by = {(r["run"], r["label"]): r for r in rows}
    marks = [("oracle (best iterate)", "k"), ("wmv", "tab:blue"), ("discrepancy(σ̂)", "tab:red"),
             ("holdout:fraction=0.1,patience=300", "tab:green"),
             ("discrepancy(σ̂):tau=0.8", "tab:olive"), ("discrepancy(σ̂):tau=0.9", "tab:brown")]
    for index, (key, full) in enumerate(picks, 1):
        ax = fig.add_subplot((len(picks) + 2) // 2, 2, index)
        psnr = np.asarray(full["psnr"])
        ax.plot(np.arange(1, len(psnr) + 1), psnr, lw=0.5, color="0.55", label="iterate")
        every = full["curve"]["every"]
        other = "unperturbed" if full["run"]["net"] == "dip" else "ema"
        if other in full["curve"]:
            steps = np.arange(1, len(full["curve"][other]) + 1) * every
            ax.plot(steps, full["curve"][other], lw=1.0, color="tab:orange",
                    label="net(z), no EMA" if other == "unperturbed" else "EMA 0.99 of outputs")
        auto = auto_label(autos.get(("denoise", full["run"]["net"]), ""))
        for label, colour in [*marks, (auto, "tab:purple")]:
            hit = by.get((key, label))
            if hit is None or (label == auto and colour != "tab:purple"):
                continue
            ax.axvline(hit["stop"], color=colour, ls=":", lw=1)
            ax.plot([hit["stop"]], [hit["psnr"]], "o", color=colour, ms=4,
                    label=f"{'auto: ' if label == auto else ''}{label}: {hit['psnr']:.2f} dB "
                          f"(stop {hit['stop']})")
        run = full["run"]
        ax.set_title(f"{NET_NAMES[run['net']]}: {run['image']} {run['size']}², "
                     f"σ={run['sigma255']}, seed {run['seed']}", fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.set_ylabel("PSNR (dB)", fontsize=8)
        ax.tick_params(labelsize=7)
        low = np.percentile(psnr, 2)
        ax.set_ylim(low - 0.5, psnr.max() + 0.6)
        ax.legend(fontsize=6, loc="lower right")
    ax = fig.add_subplot((len(picks) + 2) // 2, 2, len(picks) + 1)
    labels = ["wmv", "emv", "discrepancy", "discrepancy(σ̂)", "holdout:fraction=0.1,patience=300",
              "auto", "final iterate"]
    nets = [n for n in ("deep_decoder", "dip", "conv_decoder")
            if any(k[:2] == ("denoise", n) for k in summary)]
    width = 0.8 / max(len(nets), 1)
    for j, net in enumerate(nets):
        values = []
        for label in labels:
            if label == "final iterate":
                hits = [v for k, v in summary.items() if k[:2] == ("denoise", net)
                        and k[2].startswith("final iterate")]
            elif label == "auto":
                key = ("denoise", net, auto_label(autos.get(("denoise", net), "")))
                hits = [summary[key]] if key in summary else []
            else:
                hits = [summary[("denoise", net, label)]] if ("denoise", net, label) in summary \
                    else []
            values.append(hits[0]["mean_gap"] if hits else np.nan)
        ax.bar(np.arange(len(labels)) + j * width, values, width, label=NET_NAMES[net])
    ax.set_xticks(np.arange(len(labels)) + width * (len(nets) - 1) / 2)
    ax.set_xticklabels([lab.replace("holdout:fraction=0.1,patience=300", "holdout 10%")
                        .replace("discrepancy", "discr.") for lab in labels], fontsize=7)
    ax.set_ylabel("mean gap to oracle (dB)", fontsize=8)
    ax.set_title("denoising, all fits: mean gap per rule", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=72)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (< 1 min), *_quick files")
    parser.add_argument("--photos", action="store_true",
                        help="the Deep Image Prior at 128² on photographs (photos_plan), "
                             "stopping_photos.* files")
    parser.add_argument("--large", action="store_true",
                        help="the Deep Image Prior at 256² (large_plan), stopping_large.* files")
    parser.add_argument("--resume", action="store_true", help="keep the fits already in the JSON")
    parser.add_argument("--shard", type=parse_shard, default=(0, 1), metavar="K/N",
                        help="run only the fits K, K+N, ... of the plan (0/1); N processes "
                             "with --resume and K = 0..N-1 share one JSON file safely")
    parser.add_argument("--report", action="store_true", help="only rebuild the .md and .png")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="benchmarks/results (a temporary folder with --quick)")
    args = parser.parse_args(argv)
    if args.out_dir is None:
        args.out_dir = Path(tempfile.gettempdir()) / "deepprior_stopping_quick" if args.quick \
            else RESULTS
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = "stopping_quick" if args.quick else "stopping_photos" if args.photos \
        else "stopping_large" if args.large else "stopping"
    json_path = args.out_dir / f"{stem}.json"
    if args.report:
        payload = json.loads(json_path.read_text())
    else:
        plan = quick_plan() if args.quick else photos_plan() if args.photos \
            else large_plan() if args.large else full_plan()
        payload = execute(plan, json_path, resume=args.resume, shard=args.shard,
                          log=lambda line: print(line, flush=True))
    write_report(payload, args.out_dir / f"{stem}.md", args.out_dir / f"{stem}.png")
    print(f"wrote {json_path} and {stem}.md / {stem}.png in {args.out_dir}")


if __name__ == "__main__":
    main()
