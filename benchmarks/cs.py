"""Compressive-sensing study: deepprior against least squares, TV and wavelet-ℓ1 by FISTA.

Protocol
--------
``camera`` (gray; ``--image astronaut``: the astronaut's luminance) at 64² with a dense Gaussian
operator (:class:`deepprior.GaussianSensing`, entries N(0, 1/m)) and at 128² with the structured
operator (:class:`deepprior.FastSensing`: random signs, orthonormal DCT, random rows),
m/n ∈ {0.05, 0.1, 0.25, 0.5}, operator seed 0.
Measurements are noiseless or carry Gaussian noise at a measurement SNR of 40 or 20 dB
(``‖Ax‖² / ‖e‖²``, noise seed 0). PSNR (peak 1) and SSIM on outputs clipped to [0, 1].
A reference check re-runs TV at m = 500 / 1000 / 2000 on camera 64², where REFERENCES §5 gives
26.6 / 31.1 / 38.4 dB.

Methods
-------
- Minimum-norm least squares ``Aᵀ(AAᵀ)⁻¹y`` (conjugate gradients).
- TV-regularised and wavelet-ℓ1 reconstruction by FISTA, λ on a grid 10⁰ … 10⁻⁵·⁵ (half
  decades, 100 FISTA iterations per λ, warm-started from the next larger λ), the λ with the
  best PSNR against the clean image kept: **oracle-tuned**, an upper bound for these methods.
- deepprior networks for a fixed budget of iterations; reported: the last iterate, the
  best-PSNR iterate of the run (oracle) and the iterate the automatic rule (``stop="auto"``,
  evaluated alongside the same fit) would have returned; with noisy measurements also the
  iterate of the network's rule for a known σ (the stop of ``reconstruct(..., sigma=σ)``, the
  true noise std), from the same fit — DIP's σ-given default also adds TV, which changes the
  fit: the rule cases below run it.

Usage::

    python benchmarks/cs.py --only baselines
    python benchmarks/cs.py --only prior --resume
    python benchmarks/cs.py --only prior --resume --shard 1/2   # with 0/2 alongside: two cores
    python benchmarks/cs.py --report
    python benchmarks/cs.py --quick --out-dir /tmp/q
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import baselines
import harness
import numpy as np
import torch
from denoise import LABELS, run_prior

from deepprior import (
    FastSensing,
    GaussianSensing,
    LinearOperator,
    api,
    problem_defaults,
    psnr,
    reconstruct,
    sample_image,
    simulate_measurements,
    ssim,
)

BASELINES = ("least_squares", "tv_fista", "wavelet_fista")
CS_LABELS = {
    **LABELS,
    "least_squares": "least squares (min. norm)",
    "tv_fista": "TV (oracle λ)",
    "wavelet_fista": "wavelet-ℓ1 (oracle λ)",
}
RATIOS = (0.05, 0.1, 0.25, 0.5)
SNRS: tuple[float | None, ...] = (None, 40.0, 20.0)
#: Noise levels off the σ-free default's TV candidates (``api.TV_SNRS_DB``: weights computed for
#: SNR 20 and 30 dB by the formula that adds this study's noise), at 64²: does the choice hold
#: where no candidate is the true σ's weight?
OFF_GRID_SNRS: tuple[float, ...] = (25.0, 15.0)
#: every level, noiseless first, then from the least noise to the most: tables' and panels' order
ALL_SNRS = (None, *sorted((s for s in (*SNRS, *OFF_GRID_SNRS) if s is not None), reverse=True))
LAMBDAS = tuple(float(10.0**e) for e in np.arange(0.0, -6.0, -0.5))
FISTA_ITER = 100
#: the best λ of the half-decade grid refined to 1/8 of a step towards each neighbour: the grid
#: alone left TV up to 0.62 dB under its optimum at SNR 20 dB (camera 128², m/n 0.5)
REFINE = 8
REFERENCE_TV = {500: 26.6, 1000: 31.1, 2000: 38.4}

# (size, m, SNR) for the baselines: every ratio and noise level at both sizes, plus the
# reference check.
FULL_BASELINE_CASES = [
    (size, round(ratio * size * size), snr)
    for size in (64, 128)
    for snr in SNRS
    for ratio in RATIOS
] + [(64, m, None) for m in REFERENCE_TV] + [
    (64, round(ratio * 64 * 64), snr) for snr in OFF_GRID_SNRS for ratio in RATIOS]

# (net, size, ratio, SNR, budget) in priority order.
FULL_PRIOR_CASES: list[tuple[str, int, float, float | None, int]] = [
    *(("deep_decoder", 64, r, None, 1500) for r in RATIOS),
    ("conv_decoder", 64, 0.25, None, 1500),
    ("deep_decoder", 64, 0.25, 20.0, 1500),
    ("deep_decoder", 64, 0.25, 40.0, 1500),
    ("conv_decoder", 64, 0.1, None, 1500),
    ("deep_decoder", 128, 0.25, None, 1000),
    ("conv_decoder", 128, 0.25, None, 1000),
    ("dip", 64, 0.25, None, 3000),
    *(("deep_decoder", 64, r, 20.0, 1500) for r in (0.05, 0.1, 0.5)),
    *(("deep_decoder", 64, r, 40.0, 1500) for r in (0.05, 0.1, 0.5)),
    *(("conv_decoder", 64, r, None, 1500) for r in (0.05, 0.5)),
    ("deep_decoder", 128, 0.1, None, 1000),
    ("conv_decoder", 128, 0.1, None, 1000),
    # The Deep Image Prior, the default network, with its default budget of 3,000 iterations.
    *(("dip", 64, r, None, 3000) for r in (0.05, 0.1, 0.5)),
    *(("dip", 64, 0.25, snr, 3000) for snr in (20.0, 40.0)),
    # Does the default budget reach the plateau? DIP at twice the budget (rows keyed with it).
    *(("dip", 64, r, None, 6000) for r in (0.5, 0.25)),
    *(("dip", 64, 0.25, snr, 6000) for snr in (20.0, 40.0)),
]
#: Budgets that are not a network's standard row in the tables above (their key carries it).
EXTRA_BUDGETS = {("dip", 6000)}
#: Other σ-free stopping rules, each a fit of its own — a hold-out rule fits other data than the
#: shadowed run — at the network's default budget: (net, size, ratio, SNR, stop, K), what
#: ``reconstruct(y, A, stop=STOP, ensemble=K)`` (``deepprior cs --stop STOP --ensemble K``)
#: returns. Keyed with the stop (and K when K > 1). With a hold-out stop and K = 2, member 0 is
#: the hold-out fit (what K = 1 returns) and member 1 a fit of all the measurements to its
#: iteration; the row lists both members' PSNR. An optional seventh entry adds reconstruct
#: options (keyed too): ``{"regularizer": "tv"}``, and ``"sigma": "given"`` for the simulated
#: noise std (DIP then fits with TV by default: ``"regularizer": "none"`` for the fit without);
#: with several TV weights to choose from, K counts the refits after the choice;
#: ``"tv_snrs_db"``: the noise levels of the σ-free TV candidates in place of
#: ``api.TV_SNRS_DB`` (the default it would be, measured before it is made one).
#: DIP's σ-given rule, named: ``stop="auto"`` resolves to it from 512 measurements on, and to
#: the σ-free rule below (the σ-given rows at fewer measurements were measured with this one)
SIGMA_RULE = "discrepancy:tau=0.6"
RULE_CASES: list[tuple[Any, ...]] = [
    *(("dip", 64, 0.25, snr, "holdout:fraction=0.1,patience=200", 1)
      for snr in (20.0, 40.0, None)),
    # patience 200 stops the noiseless fit at iteration 1,745, where the full fit is still
    # rising (33.30 dB at 6,000): a longer patience, and the refit of all the measurements
    *(("dip", 64, 0.25, snr, "holdout:fraction=0.1,patience=1000", 2)
      for snr in (20.0, None, 40.0)),
    # the same rule (the default before the smoothed one below) at the other ratios
    *(("dip", 64, r, snr, "holdout:fraction=0.1,patience=1000", 2)
      for snr in (None, 20.0) for r in (0.5, 0.1, 0.05)),
    # the hold-out loss smoothed (an exponential average, 0.99 on the past): the raw loss
    # stopped SNR 20 early (357 / 286 against the best iterate at 530 / 445) and let patience
    # run out at SNR 40, seed 1, while the fit still improved
    *(("dip", 64, 0.25, snr, "holdout:fraction=0.1,patience=1000,smoothing=0.99", 2)
      for snr in (20.0, None, 40.0)),
    *(("dip", 64, r, snr, "holdout:fraction=0.1,patience=1000,smoothing=0.99", 2)
      for snr in (None, 20.0) for r in (0.1, 0.05)),
    *(("dip", 64, 0.5, snr, "holdout:fraction=0.1,patience=1000,smoothing=0.99", 2)
      for snr in (20.0, None)),
    # SNR 40 dB at the other ratios
    *(("dip", 64, r, 40.0, "holdout:fraction=0.1,patience=1000,smoothing=0.99", 2)
      for r in (0.05, 0.1, 0.5)),
    # 128² (the structured operator): SNR 20 dB stops early, the noiseless fit runs 6,000
    *(("dip", 128, 0.25, snr, "holdout:fraction=0.1,patience=1000,smoothing=0.99", 2)
      for snr in (20.0, None)),
    # ... and at the other ratios (the noiseless fits at 0.05 / 0.1 stopped at 64² by 1,741)
    *(("dip", 128, r, snr, "holdout:fraction=0.1,patience=1000,smoothing=0.99", 2)
      for snr in (20.0, None) for r in (0.1, 0.05, 0.5)),
    # DIP + TV (reconstruct's regularizer="tv", its weight from σ or, without σ, chosen on
    # held-out measurements): the 128² m/n 0.1 SNR 20 dB case the default misses
    ("dip", 128, 0.1, 20.0, "holdout:fraction=0.1,patience=1000,smoothing=0.99", 1,
     {"regularizer": "tv"}),
    ("dip", 128, 0.1, 20.0, SIGMA_RULE, 1, {"regularizer": "tv", "sigma": "given"}),
    # ... and TV or none chosen on held-out measurements where the default is far above TV
    *(("dip", 64, 0.25, snr, "holdout:fraction=0.1,patience=1000,smoothing=0.99", 1,
       {"regularizer": "auto"}) for snr in (None, 20.0)),
    # DIP's σ-given default without TV on the 128² miss, beside its TV row
    ("dip", 128, 0.1, 20.0, SIGMA_RULE, 1, {"regularizer": "none", "sigma": "given"}),
    # the σ-given TV weight at the other 128² SNR 20 dB ratios run, each beside its no-TV fit
    *(("dip", 128, r, 20.0, SIGMA_RULE, 1, options) for r in (0.25, 0.05)
      for options in ({"regularizer": "tv", "sigma": "given"},
                      {"regularizer": "none", "sigma": "given"})),
    # ... and at 64², every ratio, SNR 20 / 40 dB: the evidence for a σ-given default
    *(("dip", 64, r, snr, SIGMA_RULE, 1, options) for snr in (20.0, 40.0)
      for r in (0.05, 0.1, 0.25, 0.5)
      for options in ({"regularizer": "tv", "sigma": "given"},
                      {"regularizer": "none", "sigma": "given"})),
    # σ given, the discrepancy rule stopped DIP at 64² m/n 0.05 / 0.1 SNR 20 dB 3 / 2.4 dB
    # below the σ-free hold-out rule: the hold-out rule and its refit, with the σ-given TV weight
    *(("dip", 64, r, snr, "holdout:fraction=0.1,patience=1000,smoothing=0.99", 2,
       {"regularizer": "tv", "sigma": "given"}) for snr in (20.0, 40.0)
      for r in (0.05, 0.1, 0.25, 0.5)),
    # ... and at 128² m/n 0.05 (819 measurements, where the discrepancy rule is ahead of the
    # σ-free default; at 0.1 the σ-free TV row above chose λ 0.90, the σ-given weight is 0.89)
    ("dip", 128, 0.05, 20.0, "holdout:fraction=0.1,patience=1000,smoothing=0.99", 2,
     {"regularizer": "tv", "sigma": "given"}),
    # the σ-free default at 128², SNR 40 dB (the noisy target's other level)
    *(("dip", 128, r, 40.0, "holdout:fraction=0.1,patience=1000,smoothing=0.99", 2)
      for r in (0.25, 0.1, 0.05, 0.5)),
    # TV or none chosen on held-out measurements (σ-free) at the other 64² ratios and noise
    # levels: does the choice ever cost where TV does not help?
    *(("dip", 64, r, snr, "holdout:fraction=0.1,patience=1000,smoothing=0.99", 1,
       {"regularizer": "auto"})
      for r, snr in ((0.1, 20.0), (0.05, 20.0), (0.1, 40.0), (0.05, None), (0.5, 20.0))),
    # the default with a decaying learning rate (halved every 1,500 iterations) where its
    # hold-out stop ran (nearly) the whole budget: does a settled Adam reach more?
    *(("dip", 64, r, snr, "holdout:fraction=0.1,patience=1000,smoothing=0.99", 2,
       {"lr_decay": (0.5, 1500)}) for r, snr in ((0.25, None), (0.5, None), (0.25, 40.0))),
    # TV or none chosen (as in 70-74) at m/n 0.5 noiseless, where the most measurements and no
    # noise leave TV the least to gain (the default 0.48 dB above oracle TV, its least at 64²)
    ("dip", 64, 0.5, None, "holdout:fraction=0.1,patience=1000,smoothing=0.99", 1,
     {"regularizer": "auto"}),
    # ... and on the 128² case the σ-free default misses (m/n 0.1, SNR 20 dB; "tv" above: +0.84)
    ("dip", 128, 0.1, 20.0, "holdout:fraction=0.1,patience=1000,smoothing=0.99", 1,
     {"regularizer": "auto"}),
    # ... and at the other 128² SNR 20 dB ratios, where the no-penalty rule is above TV: does
    # the choice hold at 128² where TV has less to give?
    *(("dip", 128, r, 20.0, "holdout:fraction=0.1,patience=1000,smoothing=0.99", 1,
       {"regularizer": "auto"}) for r in (0.25, 0.05, 0.5)),
    # ... and at 64² SNR 40 dB at the ratios not run above (0.1 is case 72): the σ-free
    # default on the whole 64² noisy grid of the target
    *(("dip", 64, r, 40.0, "holdout:fraction=0.1,patience=1000,smoothing=0.99", 1,
       {"regularizer": "auto"}) for r in (0.05, 0.25, 0.5)),
    # ... and at 64² m/n 0.1 noiseless, the last 64² cell without it: a small held-out residual
    # (camera 0.1 SNR 40 dB: 6.4×10⁻³) where TV may be chosen tests the residual rule (§2)
    ("dip", 64, 0.1, None, "holdout:fraction=0.1,patience=1000,smoothing=0.99", 1,
     {"regularizer": "auto"}),
    # off the TV candidates' noise levels (OFF_GRID_SNRS), each cell: the no-penalty rule and
    # its refit, then the σ-free default (TV or none chosen) beside it
    *(("dip", 64, r, snr, "holdout:fraction=0.1,patience=1000,smoothing=0.99", *fits)
      for snr in OFF_GRID_SNRS for r in (0.25, 0.1, 0.5, 0.05)
      for fits in ((2,), (1, {"regularizer": "auto"}))),
    # SNR 15 dB put the right TV weight at 1.8× the larger candidate's: the σ-free default with
    # a third candidate, SNR 15 dB's weight ("tv_snrs_db" stands in for api.TV_SNRS_DB)
    *(("dip", 64, r, 15.0, "holdout:fraction=0.1,patience=1000,smoothing=0.99", 1,
       {"regularizer": "auto", "tv_snrs_db": (15.0, 20.0, 30.0)})
      for r in (0.25, 0.1, 0.5, 0.05)),
    # ... and at SNR 20 dB, where the SNR-20 candidate is the true σ's weight: does the third
    # one, 1.8× it, cost by winning a choice it should lose?
    *(("dip", 64, r, 20.0, "holdout:fraction=0.1,patience=1000,smoothing=0.99", 1,
       {"regularizer": "auto", "tv_snrs_db": (15.0, 20.0, 30.0)})
      for r in (0.25, 0.1, 0.5, 0.05)),
    # SNR 15 dB m/n 0.05 (204 measurements): the choice ranked no penalty first on 21 held-out
    # measurements although the TV fits were 1.3 dB better; twice the held-out share (the 20%
    # of Yaman et al.) for the stop and the choice, at SNR 15 and 20 dB
    *(("dip", 64, 0.05, snr, "holdout:fraction=0.2,patience=1000,smoothing=0.99", 1,
       {"regularizer": "auto"}) for snr in (15.0, 20.0)),
    # ... and without noise and at SNR 40 dB, where no penalty wins and every measurement counts
    *(("dip", 64, 0.05, snr, "holdout:fraction=0.2,patience=1000,smoothing=0.99", 1,
       {"regularizer": "auto"}) for snr in (None, 40.0)),
]
QUICK_RULE_CASES = [("deep_decoder", 64, 0.25, 20.0, "holdout:fraction=0.1,patience=5", 2),
                    ("deep_decoder", 64, 0.25, 20.0, "holdout:fraction=0.1,patience=5", 1,
                     {"regularizer": "tv"})]

QUICK_BASELINE_CASES = [(64, 410, None), (64, 1024, 20.0), (128, 1638, None)]
QUICK_PRIOR_CASES = [("deep_decoder", 64, 0.25, None, 40), ("conv_decoder", 128, 0.1, None, 10)]
QUICK_NET_OPTIONS = {"channels": 16}
QUICK_SOLVER = {"lambdas": (1e-2, 1e-4), "num_iter": 20}


def make_operator(size: int, m: int, seed: int) -> LinearOperator:
    """Gaussian sensing at 64² and below, the fast structured operator above."""
    if size <= 64:
        return GaussianSensing(m, (1, size, size), seed=seed)
    return FastSensing(m, (1, size, size), seed=seed)


def clean_image(name: str, size: int) -> np.ndarray:
    """A sample image at size², gray: ``astronaut`` as its luminance (scikit-image's rgb2gray)."""
    image = sample_image(name, size=size)
    if image.ndim == 3:
        from skimage.color import rgb2gray

        image = rgb2gray(image).astype(np.float32)
    return image


def make_case(size: int, m: int, snr: float | None, seed: int, image: str = "camera"):
    """Clean image, operator, measurements y (tensor (1, 1, m)) and the noise level."""
    clean = clean_image(image, size)
    operator = make_operator(size, m, seed)
    y, noise_std = simulate_measurements(operator, clean, snr_db=snr, seed=seed)
    return clean, operator, torch.from_numpy(y)[None], noise_std


def run_baseline(
    method: str,
    operator: LinearOperator,
    y: torch.Tensor,
    clean: np.ndarray,
    *,
    lambdas: tuple[float, ...] = LAMBDAS,
    num_iter: int = FISTA_ITER,
) -> dict[str, Any]:
    """One baseline → a JSON-ready row (PSNR, SSIM, seconds, λ path)."""
    lipschitz = baselines.operator_norm_squared(operator)
    path = None
    if method == "least_squares":
        out = baselines.least_squares(operator, y)
    elif method == "tv_fista":
        out, path = baselines.oracle_tune(
            baselines.fista_tv, clean, lambdas, operator=operator, y=y,
            num_iter=num_iter, lipschitz=lipschitz, refine=REFINE,
        )
    elif method == "wavelet_fista":
        out, path = baselines.oracle_tune(
            baselines.fista_wavelet, clean, lambdas, operator=operator, y=y,
            num_iter=num_iter, lipschitz=lipschitz, refine=REFINE,
        )
    else:
        raise ValueError(f"unknown baseline {method!r}; choose one of {', '.join(BASELINES)}")
    row = {"method": method, "psnr": psnr(clean, out.image), "ssim": ssim(clean, out.image),
           "seconds": out.seconds, "params": out.params}
    if path is not None:
        row["lambda_path"] = path
    return row


def _case_row(size: int, m: int, snr: float | None, method: str,
              budget: int | None = None) -> dict[str, Any]:
    row = {"size": size, "m": m, "ratio": m / (size * size), "snr": snr, "method": method,
           "operator": "gaussian" if size <= 64 else "fast"}
    row["key"] = [size, m, snr, method] + ([budget] if (method, budget) in EXTRA_BUDGETS else [])
    return row


def _options_text(options: dict[str, Any]) -> list[str]:
    """A rule case's reconstruct options as ``"k=v"`` strings, sorted: its key and its label."""
    return [f"{k}={v}" for k, v in sorted(options.items())]


def run_study(args: argparse.Namespace, store: harness.Store) -> None:
    """Baseline rows, then deepprior rows, skipping those already stored."""
    base_cases = QUICK_BASELINE_CASES if args.quick else FULL_BASELINE_CASES
    prior_cases = QUICK_PRIOR_CASES if args.quick else FULL_PRIOR_CASES
    solver = QUICK_SOLVER if args.quick else {"lambdas": LAMBDAS, "num_iter": FISTA_ITER}
    shard, shards = args.shard
    if args.only in ("all", "baselines"):
        for size, m, snr in base_cases[shard::shards]:
            clean, operator, y, _ = make_case(size, m, snr, args.seed, args.image)
            for method in BASELINES:
                row = _case_row(size, m, snr, method)
                if store.key(row) in store.done and not args.recompute:
                    continue
                row.update(run_baseline(method, operator, y, clean, **solver))
                store.add(row)
                _log(row)
    if args.only in ("all", "prior"):
        fits = 0
        for net, size, ratio, snr, budget in prior_cases[shard::shards]:
            m = round(ratio * size * size)
            row = _case_row(size, m, snr, net, budget)
            if store.key(row) in store.done and not args.recompute:
                continue
            if fits >= args.max_fits:
                print(f"--max-fits {args.max_fits} reached; stopping", flush=True)
                break
            fits += 1
            clean, operator, y, noise_std = make_case(size, m, snr, args.seed, args.image)
            options = QUICK_NET_OPTIONS if args.quick else None
            row.update(run_prior(y[0].numpy(), clean, net=net, operator=operator,
                                 max_num_iter=budget, seed=args.seed, net_options=options,
                                 sigma=noise_std if snr is not None else None))
            store.add(row)
            _log(row)
        for net, size, ratio, snr, stop, ensemble, *extra in (
                QUICK_RULE_CASES if args.quick else RULE_CASES)[shard::shards]:
            options = extra[0] if extra else {}
            m = round(ratio * size * size)
            row = {**_case_row(size, m, snr, net), "stop": stop, "ensemble": ensemble,
                   **({"options": options} if options else {})}
            row["key"] = [size, m, snr, net, stop, *([ensemble] if ensemble > 1 else []),
                          *_options_text(options)]
            if store.key(row) in store.done and not args.recompute:
                continue
            clean, operator, y, noise_std = make_case(size, m, snr, args.seed, args.image)
            quick = {"max_num_iter": 40, "net_options": QUICK_NET_OPTIONS} if args.quick else {}
            kwargs = {**options, "sigma": noise_std} if "sigma" in options else dict(options)
            levels = tuple(kwargs.pop("tv_snrs_db", api.TV_SNRS_DB))
            with mock.patch.object(api, "TV_SNRS_DB", levels):
                result = reconstruct(y[0].numpy(), operator, net=net, stop=stop,
                                     seed=args.seed, ground_truth=clean, ensemble=ensemble,
                                     **kwargs, **quick)
            row.update(psnr=result.psnr, ssim=result.ssim, num_iter=result.num_iter,
                       num_steps=result.num_steps, seconds=result.elapsed,
                       stop_reason=result.stop_reason,
                       members=result.config.get("members"),
                       regularizer_weight=result.config["regularizer_weight"],
                       regularizer_choice=result.config.get("regularizer_choice"))
            store.add(row)
            _log(row)


def _snr_text(snr: float | None) -> str:
    return "noiseless" if snr is None else f"SNR {snr:g} dB"


def _log(row: dict[str, Any]) -> None:
    if "psnr_oracle" in row:
        text = (f"last {row['psnr_final']:.2f} dB, oracle {row['psnr_oracle']:.2f} dB "
                f"(it {row['oracle_step']}), auto {row['psnr_auto']:.2f} dB "
                f"(it {row['auto_step']}), {row['seconds_per_iter']:.3f} s/it")
    else:
        text = f"{row['psnr']:.2f} dB, {row['seconds']:.2f} s {row.get('params', '')}"
    print(f"{row['size']}² m={row['m']} {_snr_text(row['snr'])} {row['method']}: {text}",
          flush=True)


# --------------------------------------------------------------------------- report


def _fmt(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def quality_table(rows: list[dict[str, Any]], size: int, snr: float | None) -> str:
    """PSNR per m for one size and noise level: baselines, then each net's last/best iterate."""
    index = {tuple(r["key"]): r for r in rows}
    nets = [n for n in ("deep_decoder", "conv_decoder", "dip")
            if any(r["method"] == n and r["size"] == size and "psnr_oracle" in r for r in rows)]
    columns = ["m/n", "m", *(CS_LABELS[b] for b in BASELINES)]
    for net in nets:
        columns += [f"{LABELS[net]} last", f"{LABELS[net]} auto", f"{LABELS[net]} best it."]
    table = []
    ms = sorted({r["m"] for r in rows if r["size"] == size and r["snr"] == snr
                 and r["m"] not in REFERENCE_TV})
    for m in ms:
        line = {"m/n": f"{m / size**2:.3g}", "m": m}
        for b in BASELINES:
            row = index.get((size, m, snr, b))
            line[CS_LABELS[b]] = _fmt(row["psnr"]) if row else ""
        for net in nets:
            row = index.get((size, m, snr, net))
            line[f"{LABELS[net]} last"] = _fmt(row["psnr_final"]) if row else ""
            line[f"{LABELS[net]} auto"] = _fmt(row["psnr_auto"]) if row else ""
            line[f"{LABELS[net]} best it."] = (
                f"{row['psnr_oracle']:.2f} ({row['oracle_step']})" if row else ""
            )
        table.append(line)
    return harness.markdown_table(table, columns)


def reference_table(rows: list[dict[str, Any]]) -> str:
    """TV and wavelet-ℓ1 at m = 500 / 1000 / 2000 on camera 64², beside REFERENCES §5."""
    index = {tuple(r["key"]): r for r in rows}
    table = []
    for m, ref in REFERENCE_TV.items():
        tv = index.get((64, m, None, "tv_fista"))
        wav = index.get((64, m, None, "wavelet_fista"))
        table.append({
            "m": m, "TV here": _fmt(tv["psnr"]) if tv else "", "TV REFERENCES §5": ref,
            "λ (TV)": f"{tv['params']['lambda']:.1e}" if tv else "",
            "wavelet-ℓ1 here": _fmt(wav["psnr"]) if wav else "",
        })
    return harness.markdown_table(table, ["m", "TV here", "TV REFERENCES §5", "λ (TV)",
                                          "wavelet-ℓ1 here"])


def prior_table(rows: list[dict[str, Any]]) -> str:
    """The deepprior rows in detail."""
    columns = ["net", "size", "operator", "m/n", "noise", "params", "budget", "PSNR last",
               "best it.", "PSNR best", "auto rule", "auto it.", "PSNR auto",
               "σ given: rule, it., PSNR", "s/it", "CPU s/it", "fit time"]
    table = []
    for r in sorted((r for r in rows if "psnr_oracle" in r),
                    key=lambda r: (r["method"], r["size"], r["snr"] or 0, r["m"],
                                   r["max_num_iter"])):
        table.append({
            "net": LABELS[r["method"]], "size": f"{r['size']}²", "operator": r["operator"],
            "m/n": f"{r['ratio']:.3g}", "noise": _snr_text(r["snr"]),
            "params": f"{r['num_parameters']:,}", "budget": f"{r['max_num_iter']:,}",
            "PSNR last": _fmt(r["psnr_final"]), "best it.": r["oracle_step"],
            "PSNR best": _fmt(r["psnr_oracle"]), "auto rule": r["auto_rule"],
            "auto it.": r["auto_step"], "PSNR auto": _fmt(r["psnr_auto"]),
            "σ given: rule, it., PSNR": (
                f"{r['auto_sigma_rule']}, {r['auto_sigma_step']}, {r['psnr_auto_sigma']:.2f}"
                if "psnr_auto_sigma" in r else ""),
            "s/it": _fmt(r["seconds_per_iter"], 3),
            "CPU s/it": _fmt(r.get("cpu_seconds_per_iter"), 3),
            "fit time": f"{r['seconds_total']:.0f} s",
        })
    return harness.markdown_table(table, columns)


def rule_table(rows: list[dict[str, Any]]) -> str:
    """The RULE_CASES rows beside oracle-tuned TV and the default rule's iterate."""
    index = {tuple(r["key"]): r for r in rows}
    table = []
    for r in (r for r in rows if "stop" in r):
        tv = index.get((r["size"], r["m"], r["snr"], "tv_fista"))
        auto = [d for d in rows if d["method"] == r["method"] and d["size"] == r["size"]
                and d["m"] == r["m"] and d["snr"] == r["snr"] and "psnr_auto" in d]
        default = max(auto, key=lambda d: d["max_num_iter"]) if auto else None
        members = r.get("members") or []
        table.append({
            "net": LABELS[r["method"]], "size": f"{r['size']}²", "m/n": f"{r['ratio']:.3g}",
            "noise": _snr_text(r["snr"]),
            "stop": " + ".join([r["stop"], *_options_text(r.get("options", {}))]
                               + ([f"λ={r['regularizer_weight']:.3g}"]
                                  if r.get("regularizer_weight") is not None else [])),
            "fits": len(members) or 1,
            "PSNR": _fmt(r["psnr"]),
            "members' PSNR": " / ".join(_fmt(k["psnr"]) for k in members),
            "returned it.": r["num_iter"], "steps": r["num_steps"],
            "time": f"{r['seconds']:.0f} s", "TV (oracle λ)": _fmt(tv["psnr"]) if tv else "",
            "one fit, its `auto` rule (budget)": (
                f"{default['psnr_auto']:.2f} ({default['auto_rule']}, "
                f"{default['max_num_iter']:,})" if default else ""),
        })
    return harness.markdown_table(table, ["net", "size", "m/n", "noise", "stop", "fits", "PSNR",
                                          "members' PSNR", "returned it.", "steps", "time",
                                          "TV (oracle λ)", "one fit, its `auto` rule (budget)"])


def one_se_pick(choice: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The weight the one-standard-error rule of cross-validation would choose (Breiman et al.
    1984; Hastie, Tibshirani & Friedman, §7.10): the largest whose held-out loss lies within one
    paired standard error of the lowest (``margin_z`` < 1). None for rows from before
    ``margin_z`` was recorded."""
    if any(c.get("margin_z") is None and not c["chosen"] for c in choice):
        return None
    return max((c for c in choice if c["chosen"] or c["margin_z"] < 1.0),
               key=lambda c: c["weight"])


def choice_table(rows: list[dict[str, Any]]) -> str:
    """Each held-out choice among weights beside the one-SE rule's pick, with the held-out fits'
    PSNR (each weight's fit without the held-out share: the returned image averages the chosen
    one with a refit, so a changed pick changes the result by about, not exactly, the Δ)."""
    table, deltas = [], []
    for r in rows:
        choice = r.get("regularizer_choice")
        pick = one_se_pick(choice) if choice else None
        if pick is None:
            continue
        chosen = next(c for c in choice if c["chosen"])
        delta = pick["psnr"] - chosen["psnr"] if pick is not chosen else 0.0
        deltas.append(delta)
        table.append({
            "size": f"{r['size']}²", "m/n": f"{r['ratio']:.2g}", "noise": _snr_text(r["snr"]),
            "options": " + ".join(_options_text(r.get("options", {}))),
            "lowest loss: λ (PSNR)": f"{chosen['weight']:.3g} ({chosen['psnr']:.2f})",
            "one-SE rule: λ (PSNR)": "same" if pick is chosen else
            f"{pick['weight']:.3g} ({pick['psnr']:.2f}, z {pick['margin_z']:.2f})",
            "Δ": f"{delta:+.2f}",
        })
    if not table:
        return ""
    changed = [d for d in deltas if d]
    summary = (f"\nThe one-SE rule changes {len(changed)} of {len(deltas)} choices"
               + (f": Δ {min(changed):+.2f} to {max(changed):+.2f}, mean {np.mean(changed):+.2f}"
                  f" dB (over all {len(deltas)}: {np.mean(deltas):+.2f})" if changed else ""))
    return harness.markdown_table(table, list(table[0])) + summary


def baseline_detail(rows: list[dict[str, Any]]) -> str:
    """λ chosen and seconds of one solve for the oracle-tuned baselines."""
    columns = ["size", "m/n", "noise", "TV λ", "TV s", "wavelet λ", "wavelet s", "LS s"]
    index = {tuple(r["key"]): r for r in rows}
    table = []
    for size, m, snr in sorted({(r["size"], r["m"], r["snr"] or 0) for r in rows
                                if r["method"] in BASELINES and r["m"] not in REFERENCE_TV}):
        snr_value = snr or None
        tv = index.get((size, m, snr_value, "tv_fista"))
        wav = index.get((size, m, snr_value, "wavelet_fista"))
        ls = index.get((size, m, snr_value, "least_squares"))

        def lam(row):
            if not row:
                return ""
            edge = " (edge)" if row["params"].get("lambda_at_grid_edge") else ""
            return f"{row['params']['lambda']:.1e}{edge}"

        table.append({
            "size": f"{size}²", "m/n": f"{m / size**2:.3g}", "noise": _snr_text(snr_value),
            "TV λ": lam(tv), "TV s": _fmt(tv["seconds"]) if tv else "",
            "wavelet λ": lam(wav), "wavelet s": _fmt(wav["seconds"]) if wav else "",
            "LS s": _fmt(ls["seconds"], 3) if ls else "",
        })
    return harness.markdown_table(table, columns)


def _image(payload: dict[str, Any]) -> str:
    """The study's image (``--image``, recorded with each run): the tables' and plot's title."""
    return payload["runs"][-1]["config"].get("image", "camera") if payload["runs"] else "camera"


def report(payload: dict[str, Any]) -> str:
    """All markdown tables of the study."""
    rows = payload["rows"]
    runs = payload["runs"]
    image = _image(payload)
    parts = [
        "Machine: " + harness.machine_line(runs[-1]),
        "Commands: " + "; ".join(f"`{r['command']}` ({r['date']})" for r in runs),
    ]
    for size in sorted({r["size"] for r in rows}):
        op = "Gaussian" if size <= 64 else "fast (DCT)"
        for snr in ALL_SNRS:
            if not any(r["size"] == size and r["snr"] == snr for r in rows):
                continue
            parts += [f"\n{image} {size}², {op} operator, {_snr_text(snr)} — PSNR (dB); "
                      "'best it.' = oracle iterate (iteration):\n",
                      quality_table(rows, size, snr)]
    if image == "camera" and any(r["m"] in REFERENCE_TV and r["size"] == 64 for r in rows):
        parts += ["\nReference check (camera 64², Gaussian, noiseless):\n", reference_table(rows)]
    if any("stop" in r for r in rows):
        parts += ["\nOther σ-free rules, each its own fit (`reconstruct(y, A, stop=...)`):\n",
                  rule_table(rows)]
    choices = choice_table(rows)
    if choices:
        parts += ["\nHeld-out choices among penalty weights: the lowest held-out loss (what "
                  "`reconstruct` chooses) against the one-standard-error rule (the largest "
                  "weight within one paired standard error of it); PSNR of each weight's "
                  "held-out fit:\n", choices]
    parts += ["\ndeepprior rows:\n", prior_table(rows),
              "\nOracle-tuned baselines: chosen λ (\"edge\" = at the end of the grid) and seconds "
              "of one solve at that λ:\n", baseline_detail(rows)]
    return "\n".join(parts)


def plot(payload: dict[str, Any], path: Path) -> Path | None:
    """PSNR against m/n: one panel per (size, noise level), one line per method.

    Least squares (5-9 dB) is left out to keep the scale readable; it is in the tables.
    """
    from matplotlib.figure import Figure

    image = _image(payload)
    rows = [r for r in payload["rows"]
            if (r["m"] not in REFERENCE_TV or r["size"] != 64) and len(r["key"]) == 4]
    dip = problem_defaults("compressive_sensing", "dip")  # what stop="auto" runs without σ
    rule = harness.without_every(dip.auto_stop(False))
    # the σ-free rule without a penalty (hold-out, refit), and the default: TV or none chosen
    default_rows = {label: [r for r in payload["rows"] if r["method"] == "dip"
                            and harness.without_every(r.get("stop", "")) == rule
                            and (r.get("options") or {}) == options
                            and r.get("ensemble") == ensemble]
                    for label, options, ensemble in (
                        ("DIP σ-free, no penalty (hold-out + refit)", {}, 2),
                        ("DIP σ-free default (TV or none chosen)", {"regularizer": "auto"}, 1))}
    sizes = sorted({r["size"] for r in rows})
    levels = [snr for snr in ALL_SNRS if any(r["snr"] == snr for r in rows)]
    if not rows:
        return None
    fig = Figure(figsize=(3.4 * len(levels), 3.0 * len(sizes)), dpi=72, layout="constrained")
    styles = {"tv_fista": ("C2", "-", "o"),
              "wavelet_fista": ("C4", "-", "v"), "deep_decoder": ("C0", "-", "D"),
              "conv_decoder": ("C1", "-", "P"), "dip": ("C3", "-", "X")}
    for i, size in enumerate(sizes):
        for j, snr in enumerate(levels):
            if not any(r["size"] == size and r["snr"] == snr for r in rows):
                continue  # a level run at one size only (OFF_GRID_SNRS): no empty panel
            ax = fig.add_subplot(len(sizes), len(levels), i * len(levels) + j + 1)
            for method, (color, ls, marker) in styles.items():
                sel = sorted((r for r in rows if r["size"] == size and r["snr"] == snr
                              and r["method"] == method), key=lambda r: r["ratio"])
                if not sel:
                    continue
                x = [r["ratio"] for r in sel]
                if "psnr_oracle" in sel[0]:
                    ax.plot(x, [r["psnr_final"] for r in sel], color=color, ls=ls,
                            marker=marker, ms=4, label=f"{LABELS[method]} (last)")
                    ax.plot(x, [r["psnr_oracle"] for r in sel], color=color, ls=":",
                            marker=marker, ms=3, mfc="none", label=f"{LABELS[method]} (best it.)")
                else:
                    ax.plot(x, [r["psnr"] for r in sel], color=color, ls=ls, marker=marker,
                            ms=4, label=CS_LABELS[method])
            for (label, chosen), color in zip(default_rows.items(), ("k", "m"), strict=True):
                sel = sorted((r for r in chosen if r["size"] == size and r["snr"] == snr),
                             key=lambda r: r["ratio"])
                if sel:
                    ax.plot([r["ratio"] for r in sel], [r["psnr"] for r in sel], color=color,
                            ls="--", marker="*", ms=6, label=label)
            ax.set_xscale("log")
            ax.minorticks_off()
            ax.set_xticks(list(RATIOS), [f"{r:g}" for r in RATIOS])
            ax.set_title(f"{image} {size}², {_snr_text(snr)}", fontsize=8)
            ax.set_xlabel("m/n", fontsize=7)
            ax.set_ylabel("PSNR (dB)", fontsize=7)
            ax.tick_params(labelsize=7)
    legend: dict[str, Any] = {}  # every panel's lines, once each, in the first panel
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    fig.axes[0].legend(list(legend.values()), list(legend), fontsize=6)
    fig.savefig(path)
    return path


# --------------------------------------------------------------------------- entry point


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 cases, few steps")
    parser.add_argument("--image", choices=("camera", "astronaut"), default="camera",
                        help="the clean image, gray (astronaut: its luminance); keep each image's "
                             "rows apart with --out-dir (camera)")
    harness.study_arguments(parser, name="cs")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return harness.study_main(
        args, name="cs", run=run_study, plot=plot, report=report,
        config={"lambdas": LAMBDAS, "fista_iter_per_lambda": FISTA_ITER, "refine": REFINE,
                "image": args.image},
    )


if __name__ == "__main__":
    sys.exit(main())
