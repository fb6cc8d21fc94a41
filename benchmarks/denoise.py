"""Denoising study: deepprior against BM3D, TV, wavelet and NL-means on the sample images.

Protocol
--------
Clean images are scikit-image's ``camera`` (gray) and ``astronaut`` (RGB), resized with
anti-aliasing by :func:`deepprior.sample_image`. Noise ``y = x + σ·n`` is drawn from seed 0
(:func:`deepprior.add_gaussian_noise`), σ ∈ {15, 25, 50}/255. The default protocol keeps ``y``
unclipped; the *clipped* protocol clips ``y`` to [0, 1] (what the Deep Image Prior code does,
which lowers the effective σ) and is run on a subset. PSNR (peak 1) and SSIM are computed on
outputs clipped to [0, 1].

Methods
-------
- BM3D with the true σ; TV (Chambolle) with its weight tuned against the clean image (an
  *oracle-tuned* upper bound); wavelet BayesShrink and NL-means with σ estimated — see
  ``baselines.py``.
- deepprior networks with ``stop="auto"`` and with the oracle stop. Both come from one fit: the
  fit runs a fixed budget with the automatic rule evaluated alongside without being allowed to
  stop it (``deepprior.Shadow``); the automatic rule's chosen iterate, the iteration at which it
  would have stopped, and the best-PSNR iterate of the budget (the oracle) are all recorded.
  When the automatic rule holds data out (it changes the fit), it is run as its own fit.

Usage::

    python benchmarks/denoise.py --only baselines          # BM3D, TV, wavelet, NL-means
    python benchmarks/denoise.py --only prior --resume     # the deepprior arms (slow)
    python benchmarks/denoise.py --only prior --resume --shard 0/2 &   # ... on two cores
    python benchmarks/denoise.py --only prior --resume --shard 1/2 &
    python benchmarks/denoise.py --report                  # markdown tables from the JSON
    python benchmarks/denoise.py --quick --out-dir /tmp/q  # smoke run (< 1 minute)

Every row is saved to ``denoise.json`` as soon as it is computed, so an interrupted run loses
at most one fit; ``--resume`` skips the rows already there. Processes started with ``--shard``
share the file safely (``harness.Store``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import baselines
import harness
import numpy as np
import torch

from deepprior import (
    Identity,
    Shadow,
    add_gaussian_noise,
    as_operator,
    estimate_sigma,
    image_to_tensor,
    make_policy,
    parse_stop,
    problem_defaults,
    psnr,
    psnr_tensor,
    reconstruct,
    sample_image,
    ssim,
    tensor_to_image,
)
from deepprior.stopping import holds_out

BASELINES = ("bm3d", "tv_oracle", "wavelet", "nlmeans")
LABELS = {
    "noisy": "noisy",
    "bm3d": "BM3D",
    "tv_oracle": "TV (oracle weight)",
    "wavelet": "wavelet BayesShrink",
    "nlmeans": "NL-means",
    "deep_decoder": "Deep Decoder",
    "conv_decoder": "ConvDecoder",
    "dip": "DIP",
}

# (image, size, σ in 0-255 units, clipped) — every baseline runs on each.
FULL_BASELINE_CASES = [
    (image, size, sigma, clip)
    for clip in (False, True)
    for image in ("camera", "astronaut")
    for size in (128, 256)
    for sigma in (15, 25, 50)
] + [("camera", 64, 25, False), ("camera", 64, 25, True)]

# (net, image, size, σ, clipped, iteration budget, net options) in priority order: a run cut
# short by the time budget loses the last rows first.
FULL_PRIOR_CASES: list[tuple[str, str, int, int, bool, int, dict[str, Any]]] = [
    ("deep_decoder", "camera", 128, 25, False, 3000, {}),
    ("deep_decoder", "astronaut", 128, 25, False, 3000, {}),
    ("conv_decoder", "camera", 64, 25, False, 3000, {}),
    ("dip", "camera", 64, 25, False, 3000, {}),
    ("deep_decoder", "camera", 128, 50, False, 3000, {}),
    ("deep_decoder", "camera", 128, 15, False, 3000, {}),
    ("deep_decoder", "camera", 128, 50, True, 3000, {}),
    ("conv_decoder", "camera", 128, 25, False, 3000, {}),
    ("deep_decoder", "astronaut", 128, 15, False, 3000, {}),
    ("deep_decoder", "astronaut", 128, 50, False, 3000, {}),
    ("deep_decoder", "camera", 256, 25, False, 3000, {}),
    ("deep_decoder", "astronaut", 256, 25, False, 3000, {}),
    ("dip", "camera", 128, 25, False, 3000, {}),
    ("conv_decoder", "astronaut", 128, 25, False, 3000, {}),
    ("deep_decoder", "camera", 256, 15, False, 3000, {}),
    ("conv_decoder", "camera", 256, 25, False, 3000, {}),
    ("deep_decoder", "camera", 256, 50, False, 3000, {}),
]

QUICK_BASELINE_CASES = [
    ("camera", 64, 25, False),
    ("camera", 64, 25, True),
    ("astronaut", 64, 25, False),
]
QUICK_PRIOR_CASES = [
    ("deep_decoder", "camera", 64, 25, False, 60, {"channels": 16}),
    ("deep_decoder", "astronaut", 64, 25, False, 30, {"channels": 16}),
    ("conv_decoder", "camera", 64, 25, False, 20, {"channels": 16}),
    ("dip", "camera", 64, 25, False, 8, {"channels": 16}),
]

CURVE_POINTS = 300


# --------------------------------------------------------------------------- deepprior arm


class _Keeper:
    """Fit callback: keeps the best-PSNR iterate and the iterates each shadowed rule may return.

    PSNR and SSIM are computed on outputs clipped to [0, 1], exactly like the baselines'.
    """

    def __init__(self, clean: torch.Tensor, shadow: Shadow) -> None:
        self.clean = clean
        self.shadow = shadow
        self.curve: list[float] = []
        self.best_psnr = -math.inf
        self.best_step = 0
        self.best_output: torch.Tensor | None = None
        self.kept: dict[str, dict[int, torch.Tensor]] = {label: {} for label in shadow.policies}
        self.fired_at: dict[str, int] = {}

    def __call__(self, state: Any) -> bool:
        output = state.output.detach().clamp(0, 1)
        value = float(psnr_tensor(self.clean.to(output.device), output))
        self.curve.append(value)
        if value > self.best_psnr:
            self.best_psnr, self.best_step = value, state.step
            self.best_output = output.clone()
        for label, policy in self.shadow.policies.items():
            if label in self.shadow.stopped and label not in self.fired_at:
                self.fired_at[label] = state.step
            store = self.kept[label]
            candidates = policy.candidates
            if state.step in candidates and state.step not in store:
                store[state.step] = output.clone()
            for step in [s for s in store if s not in candidates]:
                del store[step]
        return False


def auto_policy(problem: str, net: str, *, operator: Any, y: torch.Tensor,
                noisy: np.ndarray | None) -> tuple[str, Any | None]:
    """The rule behind ``stop="auto"``, built as ``reconstruct`` builds it, for a shadow run.

    Returns the rule's spec and the policy, or ``None`` in place of the policy when the rule
    holds data out (it changes the fit, so it gets its own fit) or needs σ that a benchmark
    user of this problem would not have.
    """
    spec = problem_defaults(problem, net).stop
    discrepancy = any(name == "discrepancy" for name, _ in parse_stop(spec))
    if holds_out(spec) or (discrepancy and noisy is None):
        return spec, None
    sigma = estimate_sigma(noisy) if discrepancy else None
    return spec, make_policy(spec, operator=operator, y=y, sigma=sigma)[0]


def _curve(values: Sequence[float]) -> dict[str, list[float]]:
    stride = max(1, math.ceil(len(values) / CURVE_POINTS))
    steps = list(range(stride, len(values) + 1, stride))
    return {"step": steps, "psnr": [round(values[s - 1], 3) for s in steps]}


def run_prior(
    observation: np.ndarray,
    clean: np.ndarray,
    *,
    net: str,
    max_num_iter: int,
    operator: Any = None,
    seed: int = 0,
    net_options: dict[str, Any] | None = None,
    sigma: float | None = None,
) -> dict[str, Any]:
    """Fit one deepprior network once; report the automatic stop, the oracle and the last iterate.

    Parameters
    ----------
    observation : np.ndarray
        Noisy image (operator None) or measurements.
    clean : np.ndarray
        Ground truth, to score every iterate.
    net : str
        Network name.
    max_num_iter : int
        The fixed budget of the shadow fit (the oracle is the best iterate within it).
    operator : optional
        Forward model (anything ``deepprior.as_operator`` takes); None for denoising.
    seed : int
        Seed of the network and input.
    net_options : dict or None
        Passed to ``reconstruct``.
    sigma : float or None
        The true noise std of the measurements. When given and the problem has a rule for a
        known σ (``Defaults.stop_with_sigma``), that rule is shadowed too (``*_auto_sigma``
        columns): the iterate ``reconstruct(..., sigma=σ)`` would stop at, from the same fit.
        The fit has no penalty: where σ also brings one
        (``Defaults.regularizer_with_sigma``: DIP in compressive sensing), it is that rule
        without the penalty (and DIP's denoising default averages this fit with one with TV,
        ``Defaults.regularizer``: ``"mix"``); and below
        ``Defaults.sigma_rule_min_measurements`` ``stop="auto"`` does not use that rule at all
        (the column still shows it).

    Returns
    -------
    dict
        A JSON-ready row: PSNR/SSIM of the automatic rule's iterate, of the oracle iterate and of
        the last iterate, the steps, the rule's reason, seconds per iteration and the
        time-to-result of the automatic rule.
    """
    gt = image_to_tensor(clean)
    if operator is None:
        fit_operator = Identity(tuple(gt.shape[1:]))
        y = image_to_tensor(observation)
    else:
        fit_operator = as_operator(operator, tuple(gt.shape[1:]))
        y = torch.from_numpy(np.ascontiguousarray(observation)).reshape(
            1, *fit_operator.measurement_shape
        )
    problem = fit_operator.problem
    spec, policy = auto_policy(
        problem, net, operator=fit_operator, y=y, noisy=observation if operator is None else None
    )
    rules = {"auto": policy} if policy is not None else {}
    sigma_spec = problem_defaults(problem, net).stop_with_sigma if sigma is not None else None
    if sigma_spec is not None:
        rules["auto_sigma"] = make_policy(sigma_spec, operator=fit_operator, y=y, sigma=sigma)[0]
    shadow = Shadow(rules)
    keeper = _Keeper(gt, shadow)
    cpu_start = time.process_time()
    result = reconstruct(
        observation, operator, net=net, max_num_iter=max_num_iter, stop=shadow,
        ground_truth=clean, seed=seed, net_options=net_options, callback=keeper,
    )
    cpu_seconds = time.process_time() - cpu_start
    per_iter = result.elapsed / max(result.num_steps, 1)
    row: dict[str, Any] = {
        "method": net,
        "num_parameters": result.config["num_parameters"],
        "net_options": result.config["net_options"],
        "learning_rate": result.config["learning_rate"],
        "max_num_iter": max_num_iter,
        "default_max_num_iter": problem_defaults(problem, net).budget(fit_operator.image_shape),
        "num_steps": result.num_steps,
        "seconds_per_iter": per_iter,
        "seconds_total": result.elapsed,
        "cpu_seconds_per_iter": cpu_seconds / max(result.num_steps, 1),
        "auto_rule": spec,
        "oracle_step": keeper.best_step,
        "psnr_oracle": keeper.best_psnr,
        "ssim_oracle": _ssim_of(clean, keeper.best_output),
        "psnr_final": result.psnr,
        "ssim_final": result.ssim,
        "curve": _curve(keeper.curve),
    }
    if policy is not None:
        chosen = shadow.chosen["auto"]
        image = keeper.kept["auto"].get(chosen)
        fired = "auto" in keeper.fired_at
        stop_step = keeper.fired_at.get("auto", result.num_steps)
        row.update(
            auto_mode="shadow",
            auto_step=chosen,
            auto_stop_step=stop_step,
            auto_fired=fired,
            auto_reason=shadow.reasons["auto"],
            psnr_auto=_psnr_of(clean, image),
            ssim_auto=_ssim_of(clean, image),
            auto_seconds=stop_step * per_iter,
        )
    if sigma_spec is not None:
        chosen = shadow.chosen["auto_sigma"]
        stop_step = keeper.fired_at.get("auto_sigma", result.num_steps)
        row.update(
            auto_sigma_rule=sigma_spec,
            auto_sigma_step=chosen,
            auto_sigma_stop_step=stop_step,
            auto_sigma_reason=shadow.reasons["auto_sigma"],
            psnr_auto_sigma=_psnr_of(clean, keeper.kept["auto_sigma"].get(chosen)),
            auto_sigma_seconds=stop_step * per_iter,
        )
    if policy is None:
        auto = reconstruct(
            observation, operator, net=net, max_num_iter=max_num_iter, stop="auto",
            ground_truth=clean, seed=seed, net_options=net_options,
        )
        row.update(
            auto_mode="separate fit",
            auto_rule=auto.config["stop_resolved"],
            auto_step=auto.num_iter,
            auto_stop_step=auto.num_steps,
            auto_fired=auto.num_steps < auto.config["max_num_iter"],
            auto_reason=auto.stop_reason,
            psnr_auto=auto.psnr,
            ssim_auto=auto.ssim,
            auto_seconds=auto.elapsed,
        )
    return row


def _psnr_of(clean: np.ndarray, output: torch.Tensor | None) -> float | None:
    return None if output is None else psnr(clean, tensor_to_image(output))


def _ssim_of(clean: np.ndarray, output: torch.Tensor | None) -> float | None:
    return None if output is None else ssim(clean, tensor_to_image(output))


# --------------------------------------------------------------------------- baselines


def run_baseline(method: str, noisy: np.ndarray, clean: np.ndarray, sigma: float) -> dict:
    """One baseline on one noisy image → a JSON-ready row."""
    if method == "bm3d":
        out = baselines.bm3d_denoise(noisy, sigma)
    elif method == "tv_oracle":
        out = baselines.tv_denoise_oracle(noisy, clean)
    elif method == "wavelet":
        out = baselines.wavelet_denoise(noisy)
    elif method == "nlmeans":
        out = baselines.nlmeans_denoise(noisy)
    else:
        raise ValueError(f"unknown baseline {method!r}; choose one of {', '.join(BASELINES)}")
    image = np.clip(out.image, 0, 1)
    return {
        "method": method,
        "psnr": psnr(clean, image),
        "ssim": ssim(clean, image),
        "seconds": out.seconds,
        "params": out.params,
    }


# --------------------------------------------------------------------------- the study


def make_case(image: str, size: int, sigma255: int, clip: bool, seed: int):
    """Clean and noisy image of one case."""
    clean = sample_image(image, size=size)
    noisy = add_gaussian_noise(clean, sigma255 / 255, seed=seed, clip=clip)
    return clean, noisy


def _key(row: dict[str, Any]) -> tuple:
    return (row["image"], row["size"], row["sigma255"], row["clip"], row["method"])


def run_study(args: argparse.Namespace, store: harness.Store) -> None:
    """Run the baseline rows, then the deepprior rows, skipping those already stored."""
    base_cases = QUICK_BASELINE_CASES if args.quick else FULL_BASELINE_CASES
    prior_cases = QUICK_PRIOR_CASES if args.quick else FULL_PRIOR_CASES
    shard, shards = args.shard
    if args.only in ("all", "baselines"):
        for image, size, sigma255, clip in base_cases[shard::shards]:
            clean, noisy = make_case(image, size, sigma255, clip, args.seed)
            for method in ("noisy", *BASELINES):
                row = {"image": image, "size": size, "sigma255": sigma255, "clip": clip,
                       "method": method}
                row["key"] = list(_key(row))
                if store.key(row) in store.done and not args.recompute:
                    continue
                if method == "noisy":
                    row.update(psnr=psnr(clean, noisy), ssim=ssim(clean, noisy), seconds=0.0)
                else:
                    row.update(run_baseline(method, noisy, clean, sigma255 / 255))
                store.add(row)
                _log(row)
    if args.only in ("all", "prior"):
        fits = 0
        for net, image, size, sigma255, clip, budget, options in prior_cases[shard::shards]:
            row = {"image": image, "size": size, "sigma255": sigma255, "clip": clip,
                   "method": net}
            row["key"] = list(_key(row))
            if store.key(row) in store.done and not args.recompute:
                continue
            if fits >= args.max_fits:
                print(f"--max-fits {args.max_fits} reached; stopping", flush=True)
                break
            fits += 1
            clean, noisy = make_case(image, size, sigma255, clip, args.seed)
            row.update(run_prior(noisy, clean, net=net, max_num_iter=budget, seed=args.seed,
                                 net_options=options or None))
            store.add(row)
            _log(row)


def _log(row: dict[str, Any]) -> None:
    if "psnr_oracle" in row:
        auto = "n/a" if row.get("psnr_auto") is None else f"{row['psnr_auto']:.2f} dB"
        text = (
            f"auto {auto} (it {row['auto_step']}, stop {row['auto_stop_step']}), "
            f"oracle {row['psnr_oracle']:.2f} dB (it {row['oracle_step']}), "
            f"final {row['psnr_final']:.2f} dB, {row['seconds_per_iter']:.3f} s/it"
        )
    else:
        text = f"{row['psnr']:.2f} dB, SSIM {row['ssim']:.3f}, {row['seconds']:.2f} s"
    clip = " clipped" if row["clip"] else ""
    print(
        f"{row['image']} {row['size']} σ={row['sigma255']}{clip} {row['method']}: {text}",
        flush=True,
    )


# --------------------------------------------------------------------------- report


def _fmt(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _cases(rows: list[dict[str, Any]], clip: bool) -> list[tuple]:
    return sorted(
        {(r["image"], r["size"], r["sigma255"]) for r in rows if r["clip"] == clip},
        key=lambda c: (c[0], c[1], c[2]),
    )


def _index(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    return {tuple(r["key"]): r for r in rows}


def quality_table(rows: list[dict[str, Any]], metric: str, clip: bool = False) -> str:
    """One line per (image, size, σ): every method's PSNR or SSIM (auto and oracle for nets)."""
    index = _index(rows)
    nets = [n for n in ("deep_decoder", "conv_decoder", "dip")
            if any(r["method"] == n for r in rows)]
    digits = 2 if metric == "psnr" else 3
    columns = ["image", "size", "σ", *(LABELS[m] for m in ("noisy", *BASELINES))]
    for net in nets:
        columns += [f"{LABELS[net]} auto", f"{LABELS[net]} oracle"]
    table = []
    for image, size, sigma in _cases(rows, clip):
        line = {"image": image, "size": f"{size}²", "σ": sigma}
        values = {}
        for method in ("noisy", *BASELINES):
            row = index.get((image, size, sigma, clip, method))
            values[LABELS[method]] = row[metric] if row else None
        for net in nets:
            row = index.get((image, size, sigma, clip, net))
            values[f"{LABELS[net]} auto"] = row.get(f"{metric}_auto") if row else None
            values[f"{LABELS[net]} oracle"] = row.get(f"{metric}_oracle") if row else None
        best = max((v for k, v in values.items() if v is not None and k != "noisy"
                    and "oracle" not in k), default=None)
        for label, value in values.items():
            text = _fmt(value, digits)
            line[label] = f"**{text}**" if value is not None and value == best else text
        table.append(line)
    return harness.markdown_table(table, columns)


def prior_table(rows: list[dict[str, Any]], seed: int = 0) -> str:
    """The deepprior arms in detail: where the automatic rule stopped and what it returned.

    σ̂ is the noise level the discrepancy rule works with, estimated from the noisy image
    (:func:`deepprior.estimate_sigma`), recomputed here from the seeded case.
    """
    index = _index(rows)
    columns = ["net", "image", "size", "σ", "σ̂", "clip", "params", "budget", "auto rule",
               "auto stopped at", "auto iterate", "PSNR auto", "oracle iterate", "PSNR oracle",
               "gap", "PSNR last", "BM3D", "NL-means", "TV (oracle weight)", "s/it", "CPU s/it",
               "time-to-result (auto, wall)", "fit time (budget, wall)"]
    table = []
    for r in rows:
        if "psnr_oracle" not in r:
            continue
        fired = r["auto_stop_step"] if r.get("auto_fired") else f"not by {r['auto_stop_step']}"
        gap = (None if r.get("psnr_auto") is None else r["psnr_oracle"] - r["psnr_auto"])
        table.append({
            "net": LABELS[r["method"]], "image": r["image"], "size": f"{r['size']}²",
            "σ": r["sigma255"],
            "σ̂": _fmt(255 * estimate_sigma(make_case(*r["key"][:4], seed)[1]), 1),
            "clip": "yes" if r["clip"] else "no", "params": f"{r['num_parameters']:,}",
            "budget": f"{r['max_num_iter']:,}"
            + ("" if r["max_num_iter"] >= r["default_max_num_iter"] else " (reduced)"),
            "auto rule": r["auto_rule"], "auto stopped at": fired,
            "auto iterate": r["auto_step"], "PSNR auto": _fmt(r.get("psnr_auto")),
            "oracle iterate": r["oracle_step"], "PSNR oracle": _fmt(r["psnr_oracle"]),
            "gap": _fmt(gap), "PSNR last": _fmt(r["psnr_final"]),
            **{LABELS[m]: _fmt(index[(*r["key"][:4], m)]["psnr"])
               if (*r["key"][:4], m) in index else "" for m in ("bm3d", "nlmeans", "tv_oracle")},
            "s/it": _fmt(r["seconds_per_iter"], 3),
            "CPU s/it": _fmt(r.get("cpu_seconds_per_iter"), 3),
            "time-to-result (auto, wall)": f"{r['auto_seconds']:.0f} s",
            "fit time (budget, wall)": f"{r['seconds_total']:.0f} s",
        })
    return harness.markdown_table(table, columns)


def clip_table(rows: list[dict[str, Any]]) -> str:
    """PSNR under the unclipped (default) and clipped protocols, side by side."""
    index = _index(rows)
    methods = [m for m in ("noisy", *BASELINES, "deep_decoder", "conv_decoder", "dip")
               if any(r["method"] == m and r["clip"] for r in rows)]
    columns = ["image", "size", "σ"]
    for m in methods:
        columns += [f"{LABELS[m]} unclipped", f"{LABELS[m]} clipped"]
    table = []
    for image, size, sigma in _cases(rows, True):
        line = {"image": image, "size": f"{size}²", "σ": sigma}
        for m in methods:
            for clip, name in ((False, "unclipped"), (True, "clipped")):
                row = index.get((image, size, sigma, clip, m))
                if row is not None and "psnr_oracle" in row:
                    cell = f"{_fmt(row['psnr_auto'])} / {_fmt(row['psnr_oracle'])}"
                else:
                    cell = "" if row is None else _fmt(row["psnr"])
                line[f"{LABELS[m]} {name}"] = cell
        table.append(line)
    return harness.markdown_table(table, columns)


def time_table(rows: list[dict[str, Any]]) -> str:
    """Median seconds per image of each baseline, by size and colour."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        if r["method"] in BASELINES and not r["clip"]:
            groups.setdefault((r["size"], r["image"], r["method"]), []).append(r["seconds"])
    columns = ["size", "image", *(LABELS[m] for m in BASELINES)]
    table = []
    for size, image in sorted({(k[0], k[1]) for k in groups}):
        line = {"size": f"{size}²", "image": image}
        for m in BASELINES:
            values = groups.get((size, image, m))
            line[LABELS[m]] = "" if not values else f"{np.median(values):.3f} s"
        table.append(line)
    return harness.markdown_table(table, columns)


def report(payload: dict[str, Any]) -> str:
    """All the markdown tables of the study."""
    rows = payload["rows"]
    runs = payload["runs"]
    parts = [
        "Machine: " + harness.machine_line(runs[-1]),
        "Commands: " + "; ".join(f"`{r['command']}` ({r['date']})" for r in runs),
        "\nPSNR (dB), unclipped protocol (default). Bold: the best entry excluding the oracle "
        "stops (the TV weight is oracle-tuned all the same); empty: not run:\n",
        quality_table(rows, "psnr"),
        "\nSSIM, unclipped protocol:\n",
        quality_table(rows, "ssim"),
        "\ndeepprior arms:\n",
        prior_table(rows, runs[-1]["config"]["seed"]),
    ]
    if any(r["clip"] for r in rows):
        parts += ["\nClipped protocol (y clipped to [0, 1]) against the default, PSNR (dB); "
                  "deepprior cells: automatic stop / oracle stop:\n", clip_table(rows)]
    parts += ["\nBaseline wall time per image (median over σ, unclipped):\n", time_table(rows)]
    return "\n".join(parts)


def plot(payload: dict[str, Any], path: Path) -> Path | None:
    """PSNR against the iteration for every deepprior row, with BM3D and TV as lines."""
    from matplotlib.figure import Figure

    rows = [r for r in payload["rows"] if "curve" in r]
    if not rows:
        return None
    index = _index(payload["rows"])
    cols = min(4, len(rows))
    nrows = math.ceil(len(rows) / cols)
    fig = Figure(figsize=(3.2 * cols, 2.5 * nrows), dpi=72, layout="constrained")
    for i, r in enumerate(rows):
        ax = fig.add_subplot(nrows, cols, i + 1)
        ax.plot(r["curve"]["step"], r["curve"]["psnr"], lw=1, color="C0", label=LABELS[r["method"]])
        for method, color in (("bm3d", "C3"), ("tv_oracle", "C2")):
            base = index.get((r["image"], r["size"], r["sigma255"], r["clip"], method))
            if base:
                ax.axhline(base["psnr"], ls="--", lw=1, color=color, label=LABELS[method])
        if r.get("psnr_auto") is not None:
            ax.plot([r["auto_step"]], [r["psnr_auto"]], "o", ms=4, color="k", label="auto stop")
        ax.plot([r["oracle_step"]], [r["psnr_oracle"]], "^", ms=4, color="C1", label="oracle")
        clip = ", clipped" if r["clip"] else ""
        ax.set_title(f"{LABELS[r['method']]}, {r['image']} {r['size']}², σ={r['sigma255']}{clip}",
                     fontsize=8)
        ax.set_xlabel("iteration", fontsize=7)
        ax.set_ylabel("PSNR (dB)", fontsize=7)
        ax.tick_params(labelsize=7)
        if i == 0:
            ax.legend(fontsize=6)
    fig.savefig(path)
    return path


# --------------------------------------------------------------------------- entry point


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 64² images, few steps")
    harness.study_arguments(parser, name="denoise")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return harness.study_main(parse_args(argv), name="denoise", run=run_study, plot=plot,
                              report=report)


if __name__ == "__main__":
    sys.exit(main())
