"""reconstruct(): one corrupted observation in, the reconstruction out.

The only module that wires the pieces together: it adapts the operator, checks everything that
can be checked before a fit, resolves the defaults of the problem kind and network from
:data:`PROBLEMS`, builds the network and the stopping policy, runs :func:`deepprior.fit`
and packages the result as a :class:`Reconstruction`.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from . import nets
from .checks import (
    as_array,
    check_choice,
    check_float,
    check_image_array,
    check_image_shape,
    check_int,
    check_lr_decay,
)
from .fit import PRECISIONS, FitState, check_trainable, fit, resolve_device, short_repr
from .io import jsonable
from .metrics import psnr as _psnr
from .metrics import ssim as _ssim
from .metrics import total_variation
from .noise import estimate_noise_level
from .operators import (
    Identity,
    _call_forward,
    _module_device,
    _own_image_shape,
    as_operator,
    check_operator,
)
from .stopping import (
    HOLDOUT_FRACTION,
    Fixed,
    Holdout,
    doubts,
    holds_out,
    make_policy,
    members,
    parse_stop,
    split_measurements,
    squared_errors,
)

__all__ = [
    "DEFAULT_NETS",
    "PROBLEMS",
    "Defaults",
    "Reconstruction",
    "dry_run",
    "image_to_tensor",
    "problem_defaults",
    "reconstruct",
    "register_net",
    "simulate_measurements",
    "tensor_to_image",
]


@dataclass(frozen=True)
class Defaults:
    """Fitting defaults of one (problem kind, network) pair, and the evidence behind them.

    Attributes
    ----------
    max_num_iter, learning_rate
        Iteration budget and Adam step size.
    base_side : int or None
        The image side (√(H·W), in pixels) up to which ``max_num_iter`` and the discrepancy
        margins of the stops hold; beyond it the budget grows in proportion to the side and
        each ``margin`` shrinks in inverse proportion, which raises the level the residual
        must reach toward m·σ² (None: the same at every size).
    stop : str
        The rule behind ``stop="auto"`` when σ is not given.
    stop_with_sigma : str or None
        The rule behind ``stop="auto"`` when σ is given (None: the same as ``stop``).
    sigma_rule_min_measurements : int
        ``stop_with_sigma`` applies from this many measurements on; with fewer, ``stop`` does,
        σ given or not.
    reg_noise_std : float
        Std of the perturbation added to the input ``z`` at each iteration.
    ema : float or None
        Decay of the output average returned (None: the raw outputs).
    net_options : mapping
        Network options (e.g. ``{"channels": 128}``).
    regularizer : str or None
        The penalty behind ``regularizer=None`` (``"mix"``: fits without and with TV in turn,
        averaged; ``"auto"``: TV or none, chosen on held-out data; either only with
        ``stop="auto"`` and unless one fit is asked for with ``ensemble=1``).
    regularizer_with_sigma : str or None
        The penalty behind ``regularizer=None`` when σ is given, its weight derived from σ
        (``"tv"``: ``TV_WEIGHT_PER_SIGMA · σ ·`` the operator's scale); None: ``regularizer``.
    refit : bool
        When ``stop="auto"`` resolves to a rule that holds data out: fit all the data again,
        for the iterations the hold-out fit chose, and return the average of the two fits (the
        ``ensemble`` of ``reconstruct`` defaults to 2 there, or stays 1 after a choice of
        penalty on held-out data, whose chosen fit is the first of the two).
    lr_decay : (factor, every) or None
        The learning rate times ``factor`` every ``every`` iterations (None: constant).
    source : str
        Where the values come from (paper, or the benchmark that measured them).
    """

    max_num_iter: int = 3000
    learning_rate: float = 0.01
    stop: str = "patience"
    stop_with_sigma: str | None = None
    reg_noise_std: float = 0.0
    ema: float | None = None
    net_options: Mapping[str, Any] = field(default_factory=dict)
    refit: bool = False
    regularizer: str | None = None
    regularizer_with_sigma: str | None = None
    sigma_rule_min_measurements: int = 0
    lr_decay: tuple[float, int] | None = None
    base_side: int | None = None
    source: str = ""

    def _growth(self, image_shape: tuple[int, ...] | None) -> float:
        """How many times ``base_side`` the image's side is, at least 1."""
        if self.base_side is None or image_shape is None:
            return 1.0
        return max(1.0, math.sqrt(image_shape[-2] * image_shape[-1]) / self.base_side)

    def budget(self, image_shape: tuple[int, ...]) -> int:
        """The iteration budget for an image of ``image_shape`` (..., H, W)."""
        return round(self.max_num_iter * self._growth(image_shape))

    def auto_stop(self, sigma_known: bool, num_measurements: int | None = None,
                  image_shape: tuple[int, ...] | None = None) -> str:
        """The rule ``stop="auto"`` resolves to (``num_measurements``: None, as many as any;
        ``image_shape`` (..., H, W): None, the margins as written)."""
        few = num_measurements is not None and num_measurements < self.sigma_rule_min_measurements
        spec = self.stop_with_sigma if sigma_known and self.stop_with_sigma and not few \
            else self.stop
        growth = self._growth(image_shape)
        if growth == 1.0 or "margin" not in spec:
            return spec
        return "+".join(name + "".join(
            f"{',' if i else ':'}{key}={f'{value / growth:.4g}' if key == 'margin' else value}"
            for i, (key, value) in enumerate(params.items())) for name, params in parse_stop(spec))

    def auto_regularizer(self, sigma_known: bool) -> str | None:
        """The penalty ``regularizer=None`` resolves to."""
        return (self.regularizer_with_sigma if sigma_known else None) or self.regularizer

    def auto_ensemble(self, sigma_known: bool, num_measurements: int | None = None,
                      regularizer: str | None = None) -> int:
        """The fits of ``stop="auto"`` when no ``ensemble`` is given: 2 with the ``"mix"``
        penalty (``regularizer``: the one asked for; None: the default), or with ``refit``
        after a rule that holds data out."""
        if (regularizer or self.auto_regularizer(sigma_known)) == "mix":
            return 2
        return 2 if self.refit and holds_out(self.auto_stop(sigma_known, num_measurements)) \
            else 1


_DIP = {"reg_noise_std": 1 / 30, "ema": 0.99}
#: The Deep Image Prior's denoising stop: the residual of net(z) falls to 0.8·m·σ² or to
#: m·(σ − 0.01)², whichever comes first — τ = 0.8 up to σ ≈ 24/255 (chosen at 64²), 0.81 at
#: σ = 25/255, 0.90 at 50/255, where τ = 0.8 came 1.16 dB under the best iterate at 128²
#: (benchmarks/results/stopping_photos.md). Beyond 128² the margin shrinks in inverse
#: proportion to the side (``Defaults.base_side``): 0.005 at 256², levels 0.84 / 0.90 / 0.95 at
#: σ = 15 / 25 / 50 (benchmarks/results/stopping_large.md).
DIP_DENOISE_STOP = "discrepancy:tau=0.8,every=8+discrepancy:margin=0.01,every=8"
_STOPPING_MD = "benchmarks/results/stopping.md"
_OBSERVE_JSON = "benchmarks/results/observe_every.json"

#: The problem kinds and their defaults per network; ``"*"`` is the row for any other network
#: (a registered one, or a user's ``nn.Module``). The kind comes from the operator
#: (``operator.problem``: Identity → denoise, Mask → inpainting, Gaussian/fast sensing and wide
#: matrices → compressive_sensing, Downsample → super_resolution, Blur → deblurring, anything
#: else → generic) or from ``reconstruct(problem=...)``.
PROBLEMS: dict[str, dict[str, Defaults]] = {
    "denoise": {
        "deep_decoder": Defaults(
            3000, 0.01, "discrepancy", ema=0.99, net_options={"channels": 64},
            source="Heckel & Hand 2019 (Adam lr 0.01, 1,900-3,000 it., k = 64); discrepancy "
            f"rule with σ estimated: mean gap -0.07 dB to the best iterate, 12/12 fits within "
            f"1 dB with the 0.99 output average ({_STOPPING_MD})"),
        "dip": Defaults(
            3000, 0.01, DIP_DENOISE_STOP, **_DIP, regularizer="mix", net_options={"channels": 64},
            base_side=128,
            source="Ulyanov et al. 2018 (lr 0.01, 3,000 it., input noise 1/30, EMA 0.99; their "
            "128 channels per scale, here 64: the default call on the twelve 128² cases below "
            "+0.06 dB on average, -0.22 to +0.27, mean gap to BM3D 0.68 dB against 0.74, in "
            "1.11x the iterations at 0.38x the time per iteration, 0.29x at 256², "
            "benchmarks/results/mix.json widths, speed_variants_dip.json); their 3,000 "
            "iterations up to 128², where every fit of the twelve cases below stopped by its "
            "rule, beyond in proportion to the side: at 256² with 3,000, eight of the twelve "
            "fits of six cases (camera and astronaut, σ = 15 / 25 / 50) ran to the budget, "
            "mean gap to BM3D 1.02 dB; with 6,000, camera / astronaut σ = 15 32.79 / 33.31 dB "
            "against 32.42 / 32.01 (BM3D 33.10 / 34.07) in 1.6 / 2.1x the time, astronaut "
            "σ = 25 / 50 29.78 / 26.23 against 30.52 / 26.42 (their rule fires later than the "
            "best iterate), camera σ = 50 the same call, camera σ = 25 not re-run: +0.15 dB on "
            "average over five, mean gap 0.90 dB (defaults.json; rows dip~3000: the 3,000 "
            "budget); beyond 128² the stop's margin shrinks in inverse proportion to the "
            "side (0.005 at 256²): at 256² the best iterate came at 0.87-0.97 of m·σ̂², the "
            "stop 0.18 dB from it over five traced fits (camera σ = 25 / 50, astronaut σ = 15 "
            "/ 25 / 50; 0.55 with the margin of 128², which fired late on the colour image; "
            "benchmarks/results/stopping_large.md); the default call re-run with it at σ = 25 / "
            "50: camera 30.71 / 26.61, astronaut 30.45 / 26.86 (+0.17 dB on average, the camera "
            "σ = 50 -0.57), mean gap to BM3D 0.79 dB (defaults.json); "
            f"discrepancy τ = 0.8: 0.21 dB mean gap, 4/4 within 1 dB ({_STOPPING_MD}); read "
            "every 8th iteration, which saves the unperturbed forward pass on the other 7: the "
            "same fits, camera σ = 25 / 50 and astronaut σ = 15 at 128², +0.00 / +0.02 / +0.01 "
            f"dB against every iteration ({_OBSERVE_JSON}); from σ ≈ 24/255 on, the level "
            "m·(σ − 0.01)² first (τ = 0.90 at σ = 50): at 128², σ = 50, seven fits traced, "
            "0.12 dB from the best iterate at τ = 0.9 against 1.16 at 0.8; the default call "
            "re-run on twelve σ = 50 cases (camera and astronaut, two seeds; eight other "
            "photographs) +0.50 dB on average (-0.83 to +1.93, losing on textured gray "
            "images) in 72% of the iterations (benchmarks/results/stopping_photos.md, mix.json, "
            "defaults.json). Mix: this fit averaged with one "
            "with TV (0.5 σ̂, seed + 1, turned): camera and astronaut 128², σ = 15 / 25 / 50, "
            "two seeds, twelve cases, +0.18 to +1.00 dB over this fit alone, mean gap to BM3D "
            "0.83 dB against 1.37 (0.74 against 1.25 with the σ = 50 stop), for 2.3-3.0x its "
            "iterations, the TV fit stopped by its "
            "rule or at MIX_BUDGET x this fit's iterations (benchmarks/results/mix.json)"),
        "conv_decoder": Defaults(
            3000, 0.01, "holdout:fraction=0.1,patience=200",
            source=f"10% pixel hold-out: 0.62 dB mean gap, 5/6 within 1 dB ({_STOPPING_MD})"),
        "*": Defaults(
            3000, 0.01, "holdout:fraction=0.1,patience=200",
            source="the σ-free rule measured on the ConvDecoder"),
    },
    "compressive_sensing": {
        "deep_decoder": Defaults(
            3000, 0.005, net_options={"channels": 128},
            source="Heckel & Soltanolkotabi 2020 (Adam lr 0.005, run to convergence); patience: "
            f"0.04 dB mean gap on camera 64² m = 1000 ({_STOPPING_MD})"),
        "dip": Defaults(
            6000, 0.01, "holdout:fraction=0.1,patience=1000,smoothing=0.99,every=8",
            stop_with_sigma="discrepancy:tau=0.6,every=8", refit=True,
            regularizer="auto", regularizer_with_sigma="tv",
            sigma_rule_min_measurements=512, **_DIP,
            source="Ulyanov et al. 2018 settings; 6,000 iterations: camera 64², the best "
            "iterate is the last at 3,000, and 6,000 gain 1.4 / 2.6 dB at m/n = 0.25 / 0.5 "
            "noiseless and 1.0 dB at SNR 40 dB (benchmarks/results/cs.json). Without σ: 10% "
            "of the measurements held out, their loss averaged (0.99 on the past), patience "
            "1,000, read every 8th iteration (over ten fits, camera and astronaut 64² on two "
            "seeds, camera 128² m/n 0.25 SNR 20 dB and 0.1 noiseless, -0.01 to +0.11 dB from "
            "every iteration; the 128² call without a penalty 816 s against 1,065, the same image, "
            f"{_OBSERVE_JSON}), then a refit of all of them to the chosen iteration, the two fits "
            "averaged: camera 64², m/n = 0.25, seeds 0 / 1, SNR 20 dB 26.34 / 25.54, SNR 40 dB "
            "33.51 / 33.09 (oracle-tuned TV 25.82 / 25.76, 31.00 / 31.12; the raw hold-out "
            "loss 25.99 / 25.20, 33.44 / 32.29; the patience rule 22.94 / 23.03, 33.13 / "
            "33.14); m/n = 0.1 / 0.05, seed 0: noiseless 27.20 / 24.28 (TV 25.78 / 22.78, the "
            "raw loss 26.98 / 21.05), SNR 20 dB 23.96 / 22.45 (TV 23.28 / 21.52, raw 19.93 / "
            "21.09); astronaut (gray) 64², every m/n, noiseless and SNR 20 dB: +0.4 to +4.1 dB "
            "over TV (benchmarks/results/cs.json, seed1/, astronaut/); with σ given, discrepancy "
            "τ = 0.6: 0.15 / 0.04 dB from the best iterate at SNR 20 / 30 dB (τ = 1: 3.38 / "
            f"0.75 dB, the returned average lags net(z)) ({_STOPPING_MD}), read every 8th "
            "iteration (camera 128², m/n 0.25, SNR 20 dB: the iterate 2 iterations earlier, +0.00 "
            f"dB, {_OBSERVE_JSON}), and TV at λ = 0.5·σ·s: "
            "camera SNR 20 dB, m/n = 0.05 / 0.1 / 0.25 / 0.5 at 64² 21.43 / 23.71 / 27.03 / "
            "29.32 dB against 19.37 / 21.57 / 26.01 / 28.26 without TV, at 128² (0.05 / 0.1 / "
            "0.25) 23.26 / 25.60 / 28.11 against 22.05 / 24.42 / 26.82 (oracle-tuned TV 22.64 / "
            "24.69 / 26.89); SNR 40 dB, 64², 0.05 / 0.1 / 0.25: 24.24 / 27.29 / 33.39 against "
            "23.98 / 27.37 / 33.13 (cs.json; seed 1, 0.25: SNR 20 dB 27.14 against 26.18, SNR 40 "
            "dB 33.02 against 33.13, seed1/cs.json); below 512 measurements the discrepancy stop "
            "comes early, the σ-free rule (with TV at the σ weight) measured better: camera 64² "
            "m/n 0.05 / 0.1, SNR 20 dB 22.64 / 24.63 against 21.43 / 23.71, SNR 40 dB 24.57 / "
            "27.59 against 24.24 / 27.29; astronaut 64² SNR 20 dB 15.79 / 18.54 against 15.56 / "
            "18.20; from 819 on within -0.31 to +0.22 dB at 3.5-10x the time (cs.json, "
            "astronaut/). Without σ, TV or none chosen on the held-out measurements ('auto': "
            "none and the SNR 20 / 30 dB weights, then the refit): over the first thirteen 64² "
            "cases compared (camera at every m/n at SNR 20 dB, at 0.05 / 0.25 / 0.5 noiseless "
            "and at 0.1 at SNR 40 dB; the astronaut at m/n 0.1 / 0.25 and seed 1 at 0.05 / "
            "0.1 / 0.25, SNR 20 dB; benchmarks/RESULTS.md §2) never below the fit without a "
            "penalty on the same CPU, +0.47 dB on average (TV chosen in nine: +0.05 to +1.40; "
            "none in four, where it returns that fit), 1.1-3.3x its time; above oracle-tuned "
            "TV in all thirteen, and "
            "at camera 128² m/n 0.1 SNR 20 dB, where the fit without a penalty is 0.87 dB "
            "under it, 25.57 against 24.69 (cs.json, astronaut/, seed1/, recheck/); 128² m/n "
            "0.25 SNR 20 dB +0.49, a user's own files (64², noiseless, problems.json) -1.07, "
            "seed 1 m/n 0.25 noiseless 0 (none chosen), 64² SNR 40 dB camera m/n 0.25 / "
            "0.05 -0.67 / -0.12 and astronaut 0.1 / 0.05 -0.04 / -0.09 (TV chosen), camera "
            "m/n 0.5 0 (none), astronaut m/n 0.05 / 0.5 SNR 20 dB +0.28 / -0.07 (TV chosen), "
            "SNR 40 dB astronaut m/n 0.25 / 0.5 and seed 1 m/n 0.1 / 0.25 0 (none), astronaut "
            "m/n 0.25 noiseless -0.77 (TV chosen), astronaut 128² m/n 0.5 SNR 20 dB +0.45 "
            "(TV chosen), camera 64² m/n 0.1 noiseless seeds 0 / 1 +0.18 / -0.26 (TV chosen): "
            "+0.14 dB on average over the thirty-one compared; above "
            "oracle-tuned TV in all thirty-five run (those with near ties dropped; averaged "
            "in since: +0.06 dB over ten 64² cells, -0.33 to +0.31, near_ties/cs.json)"),
        "conv_decoder": Defaults(
            3000, 0.01, stop_with_sigma="discrepancy",
            source=f"Darestani & Heckel 2021 (lr 0.01); patience: 0.42 dB mean gap; with noise "
            f"and σ given, discrepancy 0.14 / 0.35 dB against patience 3.61 / 0.68 dB at SNR "
            f"20 / 30 dB ({_STOPPING_MD})"),
        "*": Defaults(3000, 0.01, stop_with_sigma="discrepancy",
                      source="run to convergence; with σ given, the discrepancy rule measured "
                      "on the ConvDecoder"),
    },
    "inpainting": {
        "deep_decoder": Defaults(
            3000, 0.01, "holdout:fraction=0.1,patience=300", "discrepancy", ema=0.99,
            net_options={"channels": 64},
            source="64², half of the pixels missing, σ = 0 and 25, camera and astronaut: "
            "hold-out of 10% of the observed pixels with the 0.99 output average 0.45 dB from "
            "the best iterate (patience 0.97 dB); with σ given, discrepancy -0.21 dB (2 fits) "
            f"({_STOPPING_MD})"),
        "dip": Defaults(
            3000, 0.01, "holdout:fraction=0.1,patience=200", "discrepancy", **_DIP,
            source="Ulyanov et al. 2018 settings; discrepancy 0.79 dB from the best iterate (1 "
            "noisy fit); without σ every rule measured on DIP is 3.6 dB or more behind (it peaks "
            "at iteration ~180): the hold-out rule measured on the other networks, not on DIP "
            f"({_STOPPING_MD})"),
        "*": Defaults(
            3000, 0.01, "holdout:fraction=0.1,patience=200", "discrepancy",
            source="ConvDecoder, as for the Deep Decoder: hold-out 0.41 dB (patience 3.0 dB); "
            f"discrepancy 0.43 dB with σ given ({_STOPPING_MD})"),
    },
    "super_resolution": {
        "*": Defaults(
            3000, 0.01, source="×2 and ×4 bicubic, noiseless, 64²: patience (run to "
            f"convergence) 0.06 dB (Deep Decoder) and 0.04 dB (ConvDecoder) from the best "
            f"iterate ({_STOPPING_MD})"),
    },
    "deblurring": {
        "*": Defaults(
            3000, 0.01, source="Gaussian 1.6 px and 9 px motion, σ = 0 and 5, 64²: patience "
            "0.07 dB (Deep Decoder, 5 fits) and 0.05 dB (ConvDecoder, 4 fits) from the best "
            f"iterate, better than the discrepancy rule with σ given ({_STOPPING_MD})"),
    },
    "generic": {
        "*": Defaults(
            3000, 0.01, "holdout:fraction=0.1,patience=200",
            source="a user's function (Gaussian blur, σ = 0 and 10, 64²): hold-out 0.04 dB "
            "(Deep Decoder) and 0.71 dB (ConvDecoder) from the best iterate, patience 0.36 / "
            f"0.95 dB; it needs no σ and no knowledge of the operator ({_STOPPING_MD})"),
    },
}


#: The network ``reconstruct`` uses when ``net`` is not given, per problem kind, from what
#: ``stop="auto"`` returns (benchmarks/results/defaults.json, cs.json, RESULTS.md §5): the Deep
#: Image Prior denoises better than the Deep Decoder (128², σ = 15-50, camera and astronaut, 2
#: seeds: +0.94 dB on average, -0.41 to +2.07) and recovers compressive measurements better
#: (camera 64², m/n = 0.05-0.5: +2.0 to +3.0 dB at 1,500 iterations each; at its own default
#: budget it beats oracle-tuned TV, RESULTS.md §2), at 9-24 times the time per fit on a CPU
#: (at 128 channels per scale; when denoising at its default 64, 0.29-0.38 times that per
#: iteration: about 3-8 times); for the other kinds the Deep Decoder, the one measured.
DEFAULT_NETS: dict[str, str] = {
    "denoise": "dip",
    "compressive_sensing": "dip",
    "inpainting": "deep_decoder",
    "super_resolution": "deep_decoder",
    "deblurring": "deep_decoder",
    "generic": "deep_decoder",
}


def problem_defaults(problem: str, net: str) -> Defaults:
    """The defaults :func:`reconstruct` uses for a problem kind and a network name."""
    rows = PROBLEMS[check_choice("problem", problem, tuple(PROBLEMS))]
    return rows.get(nets._ALIASES.get(net, net), rows["*"])


def register_net(
    name: str,
    factory: Callable[..., nn.Module],
    *,
    defaults: Defaults | Mapping[str, Defaults] | None = None,
    replace: bool = False,
) -> None:
    """Make a network usable by name everywhere (``reconstruct(net=name)``, the CLI).

    Parameters
    ----------
    name : str
        The name, an identifier.
    factory : callable
        ``factory(image_shape, norm=..., **options) -> nn.Module``, where ``image_shape`` is
        ``(C, H, W)`` and the module has an ``input_shape`` attribute (the shape of its fixed
        input ``z``, drawn uniform in [0, 0.1)); ``norm`` is passed only if it is accepted.
        Its weights are drawn inside a seeded ``fork_rng``.
    defaults : Defaults, or mapping of problem kind → Defaults, optional
        Fitting defaults; problems without a row use the kind's ``"*"`` row.
    replace : bool
        Replace an existing network of that name.

    Examples
    --------
    >>> from deepprior.nets import DeepDecoder
    >>> register_net("tiny_decoder", lambda shape, norm="channel": DeepDecoder(
    ...     shape, norm=norm, channels=8), replace=True)
    """
    rows = defaults if isinstance(defaults, Mapping) else dict.fromkeys(PROBLEMS, defaults)
    for problem, row in rows.items():  # all checked before anything is registered
        check_choice("problem", problem, tuple(PROBLEMS))
        if row is not None and not isinstance(row, Defaults):
            raise TypeError(f"defaults must be a Defaults or a mapping of problem kind to "
                            f"Defaults, got {type(row).__name__} for {problem!r}")
    nets.add_net(name, factory, replace=replace)
    for rows_of_problem in PROBLEMS.values():  # a replaced network's rows go with it
        rows_of_problem.pop(name, None)
    for problem, row in rows.items():
        if row is not None:
            PROBLEMS[problem][name] = row


@dataclass(frozen=True)
class Reconstruction:
    """Result of :func:`reconstruct`.

    Attributes
    ----------
    image : np.ndarray
        The reconstruction, float32 in [0, 1], (H, W) or (H, W, C).
    num_iter : int
        Iteration whose output is returned (1-based).
    num_steps : int
        Iterations run in total (over all members of an ensemble).
    stop_reason : str
        Why the fit stopped and which iterate was returned.
    history : dict[str, np.ndarray]
        ``"loss"`` per iteration, and ``"psnr"`` per iteration when ``ground_truth`` was given
        (an ensemble's first member's; with several members averaged, ``"member_loss"`` and
        ``"member_psnr"`` hold each one's as a row, NaN after its last step).
    psnr, ssim : float or None
        Against ``ground_truth``, when given.
    elapsed : float
        Seconds spent fitting.
    device : str
        Device the fit ran on.
    config : dict
        Every resolved setting (problem, network, options, learning rate, stopping rule, σ, …).
    members : np.ndarray or None
        With several fits averaged (an ensemble; a regularizer choice's refit and near ties),
        each one's image, ``(K, H, W)`` or ``(K, H, W, C)`` in the order of
        ``config["members"]``, not clipped: their mean, clipped to [0, 1], is ``image``. None
        for a single fit.
    """

    image: np.ndarray
    num_iter: int
    num_steps: int
    stop_reason: str
    history: dict[str, np.ndarray]
    psnr: float | None
    ssim: float | None
    elapsed: float
    device: str
    config: dict[str, Any]
    members: np.ndarray | None = None

    def __repr__(self) -> str:
        return short_repr(self)

    @property
    def spread(self) -> np.ndarray | None:
        """Per pixel, the standard deviation of the averaged fits' images (``members``), shaped
        like ``image``: where the fits disagree, the image is least certain. None for one fit."""
        return None if self.members is None else self.members.std(axis=0)


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W) or (H, W, C) array → (1, C, H, W) float32 tensor (values as they are)."""
    array = check_image_array("image", np.asarray(image, dtype=np.float32), peak=math.inf)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]


def tensor_to_image(tensor: torch.Tensor) -> np.ndarray:
    """(1, C, H, W) tensor → (H, W) for C = 1, else (H, W, C), float32 numpy on the CPU."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"expected a torch tensor (1, C, H, W), got {type(tensor).__name__}; "
                        "an image array is already what this returns")
    if tensor.ndim != 4 or tensor.shape[0] != 1:
        raise ValueError(f"expected one image as a (1, C, H, W) tensor, got shape "
                         f"{tuple(tensor.shape)}")
    array = tensor.detach().to("cpu", torch.float32).numpy()[0].transpose(1, 2, 0)
    return np.ascontiguousarray(array[:, :, 0] if array.shape[2] == 1 else array)


def simulate_measurements(
    operator: Any,
    image: np.ndarray,
    *,
    sigma: float | None = None,
    snr_db: float | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """Simulate ``y = A x + e``: the one measurement simulator of the CLI and the benchmarks.

    Parameters
    ----------
    operator
        Anything :func:`deepprior.as_operator` accepts (its image shape is the image's).
    image : np.ndarray
        Clean image (H, W) or (H, W, C) in [0, 1].
    sigma : float, optional
        Std of the Gaussian noise ``e``, in measurement units (added only to the entries an
        operator marks as ``observed``: a :class:`~deepprior.Mask`'s missing pixels stay 0).
    snr_db : float, optional
        Or the measurement SNR ``‖A x‖² / ‖e‖²`` in dB: ``σ = rms(A x) · 10^(−SNR/20)``.
    seed : int
        Seed of the noise (``numpy.random.default_rng(seed)``).

    Returns
    -------
    y : np.ndarray
        float32, of the operator's ``measurement_shape``.
    sigma : float
        The noise std used (0 when neither ``sigma`` nor ``snr_db`` is given).
    """
    x = image_to_tensor(check_image_array("image", as_array("image", image, unit=True)))
    op = as_operator(operator, tuple(x.shape[1:]))
    if sigma is not None and snr_db is not None:
        raise ValueError("give sigma or snr_db, not both")
    with torch.no_grad():
        y = op.A(x.to(op.device)).cpu().numpy().astype(np.float64)
    observed = getattr(op, "observed", None)  # a Mask's unobserved entries carry no data
    observed = None if observed is None else observed.cpu().numpy()[None]
    if snr_db is not None:  # the rms of the entries that carry data (a Mask's holes are 0)
        power = np.mean(y**2) if observed is None else np.mean(y[observed]**2)
        sigma = math.sqrt(float(power)) * 10 ** (-check_float("snr_db", snr_db) / 20)
    sigma = 0.0 if sigma is None else check_float("sigma", sigma, low=0.0)
    if sigma > 0:
        noise = np.random.default_rng(check_int("seed", seed, minimum=0)).standard_normal(y.shape)
        y = y + sigma * (noise if observed is None else noise * observed)
    return y[0].astype(np.float32), sigma


def reconstruct(
    observation: np.ndarray | torch.Tensor,
    operator: Any = None,
    *,
    problem: str | None = None,
    net: str | nn.Module | None = None,
    net_input: torch.Tensor | None = None,
    norm: str = "channel",
    max_num_iter: int | None = None,
    learning_rate: float | None = None,
    lr_decay: tuple[float, int] | str | None = None,
    stop: str | Any = "auto",
    sigma: float | None = None,
    ground_truth: np.ndarray | None = None,
    image_shape: tuple[int, ...] | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = False,
    callback: Callable[[FitState], bool | None] | None = None,
    net_options: Mapping[str, Any] | None = None,
    ensemble: int | None = None,
    precision: str = "fp32",
    regularizer: str | Callable[[torch.Tensor], torch.Tensor] | None = None,
    regularizer_weight: float | Sequence[float] | None = None,
    on_start: Callable[[dict[str, Any]], None] | None = None,
) -> Reconstruction:
    """Reconstruct an image from one corrupted observation with an untrained network.

    Parameters
    ----------
    observation : np.ndarray or torch.Tensor
        Without ``operator``: the noisy image, (H, W) or (H, W, C) on the [0, 1] scale. With
        ``operator``: the measurements, in the operator's ``measurement_shape``, flat (1-D),
        or as an (H, W, C) image.
    operator : optional
        The forward model ``y = A x``: a deepprior operator, a matrix (numpy, torch,
        ``scipy.sparse``), an object with ``A`` (and optionally ``A_adjoint``; deepinv's
        ``LinearPhysics`` works), a pair ``(A, A_adjoint)`` or a function ``A`` — see
        :func:`deepprior.as_operator`. None means denoising.
    problem : str, optional
        The problem kind whose defaults to use (a key of :data:`PROBLEMS`); by default the
        operator's (``operator.problem``).
    net : str, nn.Module or None
        A registered network name (:func:`deepprior.available_nets`) or a module; a module
        needs ``net_input`` or an ``input_shape`` attribute (then ``z`` is drawn uniform in
        [0, 0.1) from ``seed``); every fit starts from a copy of it as given, and the module
        itself keeps its weights (:func:`deepprior.fit` trains a module in place). None: the
        problem kind's default, :data:`DEFAULT_NETS` (the Deep Image Prior for denoising and
        compressive sensing, the Deep Decoder otherwise).
    net_input : torch.Tensor, optional
        The fixed input of a module ``net``.
    norm : {"channel", "batch", "none"}
        Normalization after each hidden layer of a named network.
    max_num_iter, learning_rate : optional
        Iteration budget and Adam step size; None takes the defaults (the budget:
        ``Defaults.budget`` of the image's shape, which for DIP's denoising grows with the side
        beyond 128²).
    lr_decay : (factor, every), "none" or None
        Multiply the learning rate by ``factor`` (``0 < factor <= 1``) every ``every``
        iterations, e.g. ``(0.5, 1500)``; a decaying rate settles the fit where Adam at a
        constant rate keeps jittering. ``"none"``: a constant rate. None: the default
        (``Defaults.lr_decay``; a constant rate for every built-in row: ``(0.5, 1500)`` cost
        DIP's compressive-sensing default 0.41 dB on average over three camera 64² cases,
        benchmarks/RESULTS.md §2).
    stop : str or policy
        ``"auto"`` (the rule measured best for the problem kind and network, see the table;
        DIP's denoising stop comes nearer the noise level beyond 128², ``Defaults.base_side``),
        a spec such as ``"holdout:fraction=0.1,patience=200"`` or ``"discrepancy+fixed:2000"``
        (see :mod:`deepprior.stopping`), or a policy object with ``update(step, loss, output)``,
        ``best_step`` and ``reason``.
    sigma : float, optional
        Std of the noise on the observation: on the [0, 1] image scale for denoising, in
        measurement units otherwise. Used by the discrepancy rule; estimated from a noisy image
        when needed and not given. 0 (noiseless, as :func:`simulate_measurements` returns
        without noise) leaves nothing for a σ rule to stop at: ``"auto"`` then resolves as
        without σ (measurements only: when denoising, 0 is refused). A σ whose noise alone,
        ``m·σ²``, would exceed 4·‖y‖² is refused (a 0-255 value for data on the [0, 1] scale).
    ground_truth : np.ndarray, optional
        Clean image, to report PSNR/SSIM per iteration; never used to fit (except by
        ``stop="oracle"``).
    image_shape : (H, W) or (C, H, W), optional
        The image shape, for operators that do not carry it (functions, some matrices); taken
        from ``ground_truth`` when that is given.
    seed : int
        Seeds everything random: weights, input z, input perturbation, hold-out split. A
        module's own randomness (``net=`` with dropout) draws from torch's global generator:
        seed that with ``torch.manual_seed``.
    device : str
        ``"auto"`` (CUDA, else MPS, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
    progress : bool
        Show a progress bar.
    callback : callable, optional
        Called after each iteration of every fit with a :class:`deepprior.FitState`; True
        stops the call, as Ctrl-C does: the fit returns the iterate its rule selected, no
        further fit starts, and an ensemble member so stopped after the first is left out of
        the average. When denoising with an ensemble, member ``k``'s state is in its turned
        frame (the ``k``-th flip/rotation of the image). One with ``one_fit = True``
        (:class:`deepprior.analysis.Diagnostics`, a monitor) is refused for a call that makes
        several fits; one with ``check_net(net)`` is asked about the first fit's network before
        any fit (a monitor refuses a network without convolutions to watch).
    net_options : mapping, optional
        Options of a named network, e.g. ``{"channels": 128}``.
    ensemble : int or None
        Fit this many members and return the average of the iterates they select: member ``k``
        uses seed ``seed + k`` and, when denoising, the ``k``-th of the 8 flips/rotations of
        the image (mapped back). Each member runs the stopping rule on its own — except after
        a rule that holds data out (``holdout``): member 0 holds out and stops where its
        held-out loss says, and the other members fit *all* the data for exactly the
        iterations member 0 returned (early stopping, then retraining on the whole data to
        the same step). ``config["members"]`` lists their stops (and PSNR with
        ``ground_truth``); ``history`` and ``num_iter`` are the first member's (``history``
        adds every averaged member's loss, and PSNR, as the rows of ``"member_loss"`` and
        ``"member_psnr"``, NaN after a member's last step), ``num_steps`` and ``elapsed`` the
        sums. Costs ``ensemble`` fits. With several
        regularizer weights to choose from, the chosen weight's held-out fit (already paid
        for) is averaged in as one more member, member 0. None (default): 1, so that after
        such a choice (the Deep Image Prior's compressive sensing default without σ,
        ``"auto"``) the chosen held-out fit and one refit of all the data are averaged (with
        the held-out fits of near-tied weights, see ``regularizer_weight``); 2 where
        a single fit's automatic hold-out stop is followed by a refit (``Defaults.refit``: the
        Deep Image Prior in compressive sensing with ``regularizer="none"`` and no σ, or with
        σ below ``sigma_rule_min_measurements`` measurements); with ``"mix"`` one per weight
        (2: without and with TV; the Deep Image Prior's denoising default).
    precision : {"fp32", "bf16"}
        ``"bf16"``: the network runs in bfloat16 mixed precision (``torch.autocast``; weights,
        loss and the image stay float32) — faster where the hardware has bfloat16 units, see
        :func:`deepprior.fit`.
    regularizer : "tv", "auto", "mix", "none", callable or None
        An explicit penalty on the network output added to the loss, ``λ · R(x)``: ``"tv"``,
        the isotropic total variation per pixel (:func:`deepprior.total_variation`; DIP-TV,
        Liu et al. 2019), or a function of the image ``(1, C, H, W)`` returning a
        differentiable scalar (probed once before the fit). ``"auto"``: TV or none, whichever
        predicts held-out data better (below). ``"mix"``: the ensemble's members take the
        weights 0 (no penalty) and the TV weight(s) in turn — member 0 without, member 1 with
        TV, … — each stopped by its own rule (after a rule that holds data out, later members
        with a weight refit to that weight's first member's iterate; a member with TV runs at
        most ``MIX_BUDGET`` = 2 times the iterations of member 0, so that the pair costs at
        most 3 single fits), and their average is returned; ``ensemble`` defaults to the
        number of weights (2). ``"none"``: no penalty. None (default): the problem's default
        (``Defaults.regularizer``, ``Defaults.regularizer_with_sigma``): ``"mix"`` for the
        Deep Image Prior when denoising with ``stop="auto"`` and no ``ensemble`` or one of 2
        or more (benchmarks/RESULTS.md §5); for the Deep Image Prior in compressive sensing
        TV where σ is given, and without σ ``"auto"`` with ``stop="auto"`` unless
        ``ensemble=1`` (§2: +0.14 dB on average over the fit without a penalty on the same
        CPU in thirty-one cases, below it eight times, by 0.04-1.07 dB, seven of them without
        noise or at SNR 40 dB; 1.1-3.3x its time);
        else no penalty. TV helps
        piecewise-smooth images and costs a little on textured ones (DIP, 128², σ = 25:
        camera +1.44 / +0.69 dB, astronaut −0.32 / −0.26 dB; benchmarks/RESULTS.md §5);
        averaged with a fit without it, it helps both.
    regularizer_weight : float or sequence of floats, optional
        λ. For ``"tv"`` and ``"auto"`` when denoising it defaults to ``TV_WEIGHT_PER_SIGMA · σ``
        with σ the noise level (given, or estimated from the image): the weight follows the
        noise, no clean image involved (benchmarks/RESULTS.md §5 measured the factor). In
        compressive sensing ``TV_WEIGHT_PER_SIGMA · σ · s`` with ``s`` the operator's scale
        (n/m for the built-in sensing operators), and without σ the weights of the noise
        levels of ``TV_SNRS_DB`` (SNR 20 and 30 dB against the measurements' rms), chosen
        between on held-out measurements as below (RESULTS.md §2). Other problems need it
        given. A function's weight defaults to 1. **Several weights** (a
        sequence; ``"auto"`` adds 0, i.e. no penalty) are chosen between on held-out data, no
        clean image needed: a seeded 10% of the measurements (pixels, when denoising) is set
        aside — with a ``holdout`` stop, the share it holds out itself, so that every weight's
        fit sees the rest once — the network is fitted to the rest once per weight (same seed,
        same stopping rule), and the weight whose returned image predicts the held-out share
        best wins. Its
        fit becomes ensemble member 0, and ``ensemble`` more members fit all the data with that
        weight (member k: seed + k and, when denoising with a named network, the k-th
        flip/rotation; a module fits the image as it is); the image is
        their average. ``config["regularizer_choice"]`` lists each weight's held-out loss, stop
        and, for the losers, ``margin_z``: how many standard errors its held-out loss lies
        above the winner's (the mean of the per-entry differences over their standard error;
        None from a single held-out entry; fewer than :data:`MIN_CHOICE_HELDOUT` held out are
        warned of before the fits). A loser under :data:`NEAR_TIE_Z` (2) is a near tie, which
        the held-out data cannot tell from the winner: its held-out fit, already paid for, is
        averaged in as one more member, after the others (its row says ``averaged``; not after a
        stop the user made). ``config["members"]`` lists the members. Costs one fit
        per weight plus ``ensemble``; :func:`planned_fits` counts a call's fits before any runs.
    on_start : callable, optional
        Called once, after every check and before the first fit, with the plan: a dict of
        ``problem``, ``net`` (its name), ``net_options`` (the named network's, defaults
        included; empty for a module), ``fits`` (how many, as :func:`planned_fits`),
        ``max_num_iter`` (each fit's budget), ``stop`` (the spec ``"auto"`` resolved to),
        ``ensemble``, ``regularizer_weights`` (0 for no penalty; several: chosen between) and
        ``device``. A command line prints its headline here, so that an invalid call says only
        its error.

    Returns
    -------
    Reconstruction

    Raises
    ------
    ValueError, TypeError
        For invalid arguments, before any fitting: the operator is probed once (output shape
        against ``observation``, finiteness, adjointness), the stopping rule built and the
        network constructed before the first iteration.

    Notes
    -----
    Fits θ to minimise ``mean((A f_θ(z) − y)²)`` with Adam (Ulyanov et al. 2018; Heckel &
    Hand 2019; Heckel & Soltanolkotabi 2020) and returns the iterate the stopping rule selects.

    ===================  ============  =====  =====  ===================================  ==========
    problem              network       iters  lr     stop ("auto"; with σ given)          other
    ===================  ============  =====  =====  ===================================  ==========
    denoise              deep_decoder  3,000  0.01   discrepancy (σ estimated)            k=64, EMA
    denoise              dip           3,000  0.01   discrepancy:tau=0.8,every=8 +        k=64, EMA,
                                                     discrepancy:margin=0.01,every=8      mix
    denoise              other         3,000  0.01   holdout:fraction=0.1,patience=200
    compressive_sensing  deep_decoder  3,000  0.005  patience                             k=128
    compressive_sensing  dip           6,000  0.01   holdout:fraction=0.1,patience=1000,  EMA,
                                                     smoothing=0.99,every=8 + a refit;    refit;
                                                     discrepancy:tau=0.6,every=8          σ: TV
    compressive_sensing  other         3,000  0.01   patience; discrepancy
    inpainting           deep_decoder  3,000  0.01   holdout:fraction=0.1,patience=300;   k=64, EMA
                                                     discrepancy
    inpainting           other         3,000  0.01   holdout:fraction=0.1,patience=200;
                                                     discrepancy
    super_resolution     any           3,000  0.01   patience
    deblurring           any           3,000  0.01   patience
    generic              any           3,000  0.01   holdout:fraction=0.1,patience=200
    ===================  ============  =====  =====  ===================================  ==========

    The problem kind comes from the operator: ``Identity`` → denoise, ``GaussianSensing``,
    ``FastSensing`` and matrices with fewer rows than columns → compressive_sensing, ``Mask``
    → inpainting, ``Downsample`` → super_resolution, ``Blur`` → deblurring, anything else →
    generic. k: channels per layer (the Deep Image Prior's per scale; its own default, the
    paper's 128, where none is given). EMA: the returned output is the 0.99 average of the
    iterates (the Deep Image Prior perturbs its input by 1/30 too). Refit: after the hold-out
    stop, a second fit of all the data to the iteration it chose, averaged with it (with
    ``"auto"``'s choice the chosen held-out fit is that first member, so ``ensemble`` stays 1;
    without a choice it defaults to 2). σ: TV: with σ given, ``regularizer=None`` adds TV at
    its σ-derived weight (``"none"``: without).
    Mix: with ``stop="auto"`` (and not ``ensemble=1``), ``regularizer=None`` is ``"mix"``:
    the average of a fit without a penalty and one with TV (``"none"``: the first alone).

    ``PROBLEMS[problem][net].source`` says where each row comes from; σ for the discrepancy
    rule is estimated from the noisy image when not given (denoising only).

    Examples
    --------
    >>> import numpy as np
    >>> from deepprior import reconstruct
    >>> from deepprior.noise import add_gaussian_noise
    >>> clean = np.tile(np.linspace(0, 1, 32, dtype=np.float32), (32, 1))
    >>> noisy = add_gaussian_noise(clean, 25 / 255, seed=0)
    >>> result = reconstruct(noisy, max_num_iter=20, stop="fixed:20", net_options={"channels": 8})
    >>> result.image.shape, result.num_iter
    ((32, 32), 20)
    """
    seed = check_int("seed", seed, minimum=0)
    if seed >= 2**63:  # member k takes seed + k: a torch seed is below 2**64
        raise ValueError(f"seed must be below 2**63, got {seed}")
    check_choice("norm", norm, nets.NORMS)
    check_choice("precision", precision, PRECISIONS)
    torch_device = resolve_device(device)
    array = as_array("observation", observation, finite=False,  # NaN may mark a mask's holes
                     unit=operator is None)
    truth = None if ground_truth is None else image_to_tensor(check_image_array(
        "ground_truth", as_array("ground_truth", ground_truth, unit=True)))  # scored after
    op, y = _observation(array, operator, image_shape,
                         None if truth is None else tuple(truth.shape[1:]))
    check_operator(op, y, torch_device)
    description = op.describe()  # a user's describe() fails here, not after the fit,
    try:  # and what it says must go into a report
        json.dumps(jsonable(description))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{type(op).__name__}.describe() must return JSON-ready values "
                         f"(numbers, strings, lists, dicts) for the report: {exc}") from None
    if truth is not None and tuple(truth.shape[1:]) != op.image_shape:
        c, h, w = op.image_shape
        raise ValueError(f"ground_truth must have shape {(h, w) if c == 1 else (h, w, c)}, got "
                         f"{np.shape(ground_truth)}")
    problem = check_choice("problem", problem or op.problem, tuple(PROBLEMS))
    net = DEFAULT_NETS.get(problem, "deep_decoder") if net is None else net
    net_name = nets.canonical_name(net) if isinstance(net, str) else type(net).__name__
    defaults = problem_defaults(problem, net_name if isinstance(net, str) else "*")
    noiseless = False
    if sigma is not None:
        sigma = check_sigma("sigma", sigma, denoising=problem == "denoise")
        check_noise_level(sigma, op, y, problem)
        if sigma == 0 and problem == "denoise":
            raise ValueError("sigma=0 says the image holds no noise, so there is nothing to "
                             "denoise: pass the noise std, or leave sigma out to estimate it")
        noiseless = sigma == 0  # (simulate_measurements' σ without noise): no level for a rule
        sigma = None if noiseless else sigma  # to stop at; the σ-free defaults
    learning_rate = defaults.learning_rate if learning_rate is None else check_float(
        "learning_rate", learning_rate, low=0.0, low_open=True)
    lr_decay = defaults.lr_decay if lr_decay is None else check_lr_decay(lr_decay)

    given_sigma = sigma is not None
    spec = defaults.auto_stop(given_sigma, op.num_measurements, op.image_shape) \
        if stop == "auto" else stop
    if isinstance(spec, str) and sigma is None and any(
            name == "discrepancy" for name, _ in parse_stop(spec)):
        if noiseless:
            raise ValueError("the discrepancy rule stops at the noise level, and sigma=0 says "
                             "there is none: choose another stopping rule ('auto' takes the "
                             "one for an unknown σ)")
        if problem != "denoise":
            raise ValueError("the discrepancy rule needs the noise level: pass sigma=... (the std "
                             "of the measurement noise) or choose another stopping rule")
        sigma = estimate_noise_level(array)
    regularizer = _resolve_regularizer(regularizer, regularizer_weight, stop=stop,
                                       ensemble=ensemble, defaults=defaults,
                                       sigma_known=given_sigma)
    if sigma is None and problem == "denoise" and regularizer in ("tv", "auto", "mix") \
            and regularizer_weight is None:  # TV's weight follows σ: estimated, and reported
        sigma = estimate_noise_level(array)
    candidates = _penalties(regularizer, regularizer_weight, problem=problem, sigma=sigma,
                            op=op, y=y, device=torch_device)
    mix = isinstance(regularizer, str) and regularizer == "mix"
    ensemble = _resolve_ensemble(ensemble, stop=stop, candidates=len(candidates), mix=mix,
                                 defaults=defaults, sigma_known=given_sigma,
                                 num_measurements=op.num_measurements)
    if not isinstance(spec, str) and (ensemble > 1 or len(candidates) > 1):
        raise ValueError(f"{'an ensemble' if ensemble > 1 else 'choosing the regularizer weight'}"
                         " needs a stopping spec such as 'auto': a policy object serves one fit")
    if ensemble > 1 and not isinstance(net, str):
        raise ValueError("regularizer='mix' averages fits of several networks, each built from "
                         "its seed, and needs a network name" if mix else "an ensemble needs a "
                         "network name (each member is built from its seed)")
    options = {**defaults.net_options, **(net_options or {})} if isinstance(net, str) \
        else net_options
    if isinstance(net, str) and options.get("output_activation", "sigmoid") == "sigmoid" \
            and not isinstance(op, Identity):  # an image in [0, 1]: can A give y?
        ratio = _scale_ratio(op, y)
        if ratio > SCALE_WARNING:
            warnings.warn(f"the measurements are {ratio:.3g} times larger than any image in "
                          "[0, 1] can give through this operator (‖y‖ over ‖A‖·√n); the "
                          "networks' images are in [0, 1]: scale y (or the operator) so "
                          "that the image it measures lies in [0, 1], e.g. 8-bit data / 255",
                          stacklevel=2)
    policy = make_policy(spec, operator=op, y=y, sigma=sigma, ground_truth=truth, seed=seed)[0]
    if max_num_iter is None:  # "fixed:N" alone sets the budget
        max_num_iter = max([defaults.budget(op.image_shape),
                            *(p.num_iter for p in members(policy) if isinstance(p, Fixed))])
    max_num_iter = check_int("max_num_iter", max_num_iter, minimum=1)
    rules = list(members(policy))
    fixed = [p.num_iter for p in rules if isinstance(p, Fixed)]
    if fixed and len(fixed) == len(rules) and min(fixed) > max_num_iter:
        warnings.warn(f"stop={spec!r} runs {min(fixed)} iterations and max_num_iter="
                      f"{max_num_iter} allows {max_num_iter}: each fit stops at "
                      f"{max_num_iter}", stacklevel=2)
    perturbed_average = f"{net_name} returns (EMA {defaults.ema:g})" \
        if defaults.ema and defaults.reg_noise_std else None
    for text in dict.fromkeys(text for rule in rules for text in
                              doubts(rule, max_num_iter, perturbed_average=perturbed_average)):
        warnings.warn(text, stacklevel=2)

    choosing = len(candidates) > 1 and not mix
    planned = _fit_count(len(candidates), ensemble, mix)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, got {type(callback).__name__}")
    if planned > 1 and getattr(callback, "one_fit", False):
        why = (f"{len(candidates)} to choose a regularizer weight, then {ensemble} of all the "
               "data" if choosing else f"an ensemble of {ensemble}")
        raise ValueError(f"the callback {type(callback).__name__} records one fit, and this call "
                         f"makes {planned} ({why}): pass ensemble=1 and regularizer='none' (or "
                         "a single weight)")
    if choosing:  # each weight fitted without the held-out share:
        # a stop that holds data out compares the weights on its own share (member 0 splits
        # with this seed); any other stop fits what is left of a share set aside here
        own = next((p for p in members(policy) if isinstance(p, Holdout)), None)
        fit_op, fit_y, held_op, held_y = (op, y, own.operator, own.y) if own else \
            split_measurements(op, y, HOLDOUT_FRACTION, seed)
        if held_y.numel() < MIN_CHOICE_HELDOUT:
            warnings.warn(f"the {len(candidates)} regularizer weights are compared on "
                          f"{held_y.numel()} held-out measurements, too few to tell them apart "
                          f"(under {MIN_CHOICE_HELDOUT}): the choice is a guess; pass one weight "
                          "(regularizer='none', or 'tv' with regularizer_weight=...)",
                          stacklevel=2)
    # the first fit's network (member 0's seed, the image unturned), built before any fit
    first = [_network(net, net_input, op.image_shape, norm, seed, options)]
    if callable(getattr(callback, "check_net", None)):  # e.g. a monitor: layers to watch?
        callback.check_net(first[0][0])
    channels, height, width = op.image_shape
    # denoising, member k fits the k-th flip/rotation of the image; a module (net=...) makes
    # one image shape, so its members (a refit after a choice) fit the image as it is
    flips = problem == "denoise" and isinstance(op, Identity) and isinstance(net, str)
    if flips and planned > 1 and height != width:
        try:  # member 1 fits the image turned by 90° (see the ensemble's flips below)
            _network(net, None, (channels, width, height), norm, seed + 1, options)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"ensemble member 1 fits the image turned by 90° ({width}x{height}),"
                             f" and the network cannot: {exc}") from exc

    def member_data(k: int) -> tuple[Any, Any, torch.Tensor, torch.Tensor | None]:
        """Member k's turn (when denoising the k-th flip/rotation), operator, data, truth."""
        turn = _DIHEDRAL[k % 8] if flips else _DIHEDRAL[0]
        y_k = _turn(y, turn)
        return (turn, Identity(tuple(y_k.shape[1:])) if flips else op, y_k,
                None if truth is None else _turn(truth, turn))

    if mix and isinstance(spec, str) and holds_out(spec):  # the first member of each weight
        for k in range(1, min(len(candidates), ensemble)):  # stops by the spec, on a split of
            _, op_k, y_k, truth_k = member_data(k)  # its own seed: drawn now, not after a fit
            make_policy(spec, operator=op_k, y=y_k, sigma=sigma, seed=seed + k,
                        ground_truth=truth_k)
    if on_start is not None:
        on_start({"problem": problem, "net": net_name, "net_options": dict(options or {}),
                  "fits": planned, "max_num_iter": max_num_iter,
                  "stop": spec if isinstance(spec, str) else type(spec).__name__,
                  "ensemble": ensemble,
                  "regularizer_weights": [weight or 0.0 for _, weight in candidates],
                  "device": str(torch_device)})
    numbers = itertools.count(1)

    def fit_member(k: int, fit_op: Any, fit_y: torch.Tensor, truth_k: torch.Tensor | None,
                   penalty: Callable[[torch.Tensor], torch.Tensor] | None, member_spec: Any,
                   budget: int = max_num_iter, label: str = ""):
        """Fit member ``k`` (its seed) to ``fit_y = fit_op(x)`` in at most ``budget``
        iterations: the module and the FitResult. The progress bar names the fit (``label``
        says which) when there are several."""
        if progress and planned > 1:
            progress_label = f"fit {next(numbers)}/{planned}"
            progress_label += f" ({label})" if label else ""
        else:
            progress_label = progress
        module, z, _ = first.pop() if first else _network(net, net_input, fit_op.image_shape,
                                                          norm, seed + k, options)
        member_policy, fit_op, fit_y = make_policy(member_spec, operator=fit_op, y=fit_y,
                                                   sigma=sigma, ground_truth=truth_k,
                                                   seed=seed + k)
        return module, fit(
            module, z, fit_y, fit_op, policy=member_policy, max_num_iter=budget,
            learning_rate=learning_rate, lr_decay=lr_decay, reg_noise_std=defaults.reg_noise_std,
            ema=defaults.ema, ground_truth=truth_k, device=torch_device, seed=seed + k,
            progress=progress_label, callback=callback, precision=precision, penalty=penalty,
        )

    choice, trials, fits = [], [], []
    penalty, regularizer_weight = candidates[0]
    if choosing:
        errors = []  # the chosen one becomes member 0
        for candidate, weight in candidates:
            module, trial = fit_member(0, fit_op, fit_y, truth, candidate, spec,
                                       label=f"held out, λ={weight:.2g}")
            errors.append(squared_errors(held_op, held_y, trial.output.to(torch_device)))
            trials.append(trial)
            choice.append(_choice_row(weight, float(errors[-1].mean()), trial, truth))
            if trial.stop_reason.startswith(_CUT_SHORT):  # return what the user stopped
                break
        best = min(range(len(choice)), key=lambda i: choice[i]["holdout_loss"])
        choice[best]["chosen"] = True
        for row, e in zip(choice, errors, strict=True):
            row["margin_z"] = None if row["chosen"] else _paired_z(e - errors[best])
            row["averaged"] = row["chosen"]
        penalty, regularizer_weight = candidates[best]
        fits.append((_DIHEDRAL[0], trials[best], trials[best].output))
    ks = range(1, ensemble + 1) if fits else range(ensemble)
    interrupted = trials and trials[-1].stop_reason.startswith(_CUT_SHORT)
    # per weight, the iterate its first member returned; each member's weight
    stops = {regularizer_weight: fits[0][1].best_step} if fits and fits[0][1].best_step \
        else {}  # (a fit that accepted no iterate, 0, gives no refit its length)
    weights = [regularizer_weight] * len(fits)
    left_out: list[Any] = []  # members cut short after the first, not averaged
    for k in [] if interrupted else ks:  # member k: seed + k and, when denoising, the
        turn, op_k, y_k, truth_k = member_data(k)  # k-th flip/rotation
        if mix:  # the members take the weights in turn: none, then the penalty's
            penalty, regularizer_weight = candidates[k % len(candidates)]
        # after a fit that held data out, the others fit all of it, to the iterate it chose
        member_spec = f"fixed:{stops[regularizer_weight]}" if regularizer_weight in stops \
            and holds_out(spec) else spec
        budget = max_num_iter  # mix: a penalized member that stops by its own rule (not a
        if mix and regularizer_weight and member_spec is spec:  # refit) runs ≤ MIX_BUDGET × 0
            budget = min(max_num_iter, int(MIX_BUDGET * fits[0][1].num_steps))
        label = [f"λ={regularizer_weight:.2g}"] if len(candidates) > 1 else []
        if member_spec is not spec:
            label.append(f"refit to iteration {stops[regularizer_weight]}")
        member_penalty = penalty  # a user's penalty sees the image as it is, not turned
        if penalty is not None and callable(regularizer) and turn != _DIHEDRAL[0]:
            def member_penalty(out, penalty=penalty, turn=turn):
                return penalty(_turn(out, turn, inverse=True))
        module, result = fit_member(k, op_k, y_k, truth_k, member_penalty, member_spec,
                                    budget, ", ".join(label))
        if budget < max_num_iter and result.num_steps == budget:
            result = replace(result, stop_reason=f"{result.stop_reason} (the mix's budget: "
                             f"{MIX_BUDGET}× the {fits[0][1].num_steps} iterations of fit 1)")
        if fits and (result.stop_reason.startswith(_CUT_SHORT) or _untrained(result)):
            left_out.append(result)  # cut short after the first: averaged in, it would pull
        else:  # the image towards an untrained network (its stop still says what happened)
            if result.best_step:
                stops.setdefault(regularizer_weight, result.best_step)
            weights.append(regularizer_weight)
            fits.append((turn, result, _turn(result.output, turn, inverse=True)))
        if result.stop_reason.startswith(_CUT_SHORT):
            break
    result = fits[0][1]
    # every fit run: fits[0] is a trial after a choice
    runs = [*trials, *(r for _, r, _ in fits[1 if trials else 0:]), *left_out]
    cut_short = any(r.stop_reason.startswith(_CUT_SHORT) for r in runs)
    # a weight the held-out data cannot tell from the chosen one: its fit (already paid for)
    for row, trial in zip(choice, trials, strict=True):  # is averaged in as well
        if not cut_short and not row["chosen"] and row["margin_z"] is not None \
                and row["margin_z"] < NEAR_TIE_Z and not _untrained(trial):
            row["averaged"] = True
            weights.append(row["weight"])
            fits.append((_DIHEDRAL[0], trial, trial.output))
    outputs = torch.stack([out for _, _, out in fits])
    image = tensor_to_image(outputs.mean(0).clamp(0, 1))
    history = {"loss": result.loss}
    if len(fits) > 1:  # every averaged member's, one row each (NaN after its last step)
        history["member_loss"] = _rows([r.loss for _, r, _ in fits])
    scores: dict[str, float | None] = {"psnr": None, "ssim": None}
    if truth is not None:
        history["psnr"] = result.psnr
        if len(fits) > 1:
            history["member_psnr"] = _rows([r.psnr for _, r, _ in fits])
        clean = tensor_to_image(truth)
        scores = {"psnr": _psnr(clean, image),  # SSIM's 3×3 window needs 3 px per side
                  "ssim": _ssim(clean, image) if min(image.shape[:2]) >= 3 else None}
    config = {
        "problem": problem,
        "net": net_name,
        "norm": norm if isinstance(net, str) else None,
        "net_options": options,
        "num_parameters": sum(p.numel() for p in module.parameters()),
        "max_num_iter": max_num_iter,
        "learning_rate": learning_rate,
        "lr_decay": list(lr_decay) if lr_decay is not None else None,
        "reg_noise_std": defaults.reg_noise_std,
        "ema": defaults.ema,
        "stop": stop if isinstance(stop, str) else type(stop).__name__,
        "stop_resolved": spec if isinstance(spec, str) else None,
        "sigma": sigma,
        "sigma_estimated": sigma is not None and not given_sigma,
        "seed": seed,
        "operator": description,
        "num_restarts": result.num_restarts,
        "final_learning_rate": result.final_learning_rate,
        "ensemble": ensemble,
        "precision": precision,
        "regularizer": regularizer if regularizer is None or isinstance(regularizer, str)
        else getattr(regularizer, "__name__", type(regularizer).__name__),
        "regularizer_weight": regularizer_weight,
    }
    if mix:  # the penalty's weight(s); each member's in config["members"]
        penalized = [w for _, w in candidates[1:]]
        config["regularizer_weight"] = penalized[0] if len(penalized) == 1 else penalized
    if choice:
        config["regularizer_choice"] = choice
    if len(fits) > 1:
        config["members"] = _members(fits, truth, weights)
    reason = result.stop_reason if len(fits) == 1 else \
        f"average of {len(fits)} fits; the first: {result.stop_reason}"
    flagged = [(k, r.stop_reason.split(";")[0]) for k, r in enumerate(runs)
               if r.stop_reason.startswith((*_CUT_SHORT, "diverged"))]
    if flagged and not reason.startswith((*_CUT_SHORT, "diverged")):  # said first: the CLI
        k, what = flagged[0]  # reads its status (exit code) from the start of the reason
        reason = f"{what} (fit {k + 1} of {planned}); {reason}"
    return Reconstruction(
        image=image, num_iter=result.best_step,
        num_steps=sum(r.num_steps for r in runs),
        stop_reason=reason,
        history=history, elapsed=sum(r.elapsed for r in runs),
        device=str(torch_device), config=config, **scores,
        members=np.stack([tensor_to_image(out) for out in outputs]) if len(fits) > 1 else None,
    )


#: Stops the user made (Ctrl-C, a callback's True): no further fit starts, and a member so cut
#: short after the first is not averaged in.
_CUT_SHORT = ("interrupted", "stopped by the callback")


def _untrained(result: Any) -> bool:
    """A fit that diverged before accepting any iterate: its output is the untrained network's,
    and averaged in it would pull the image towards it."""
    return result.stop_reason.startswith("diverged") and result.best_step == 0


#: The named penalties of ``reconstruct(regularizer=...)``.
REGULARIZERS = {"tv": total_variation}
#: ``regularizer="tv"`` without a weight: λ = this · σ · s (σ in the units of the
#: measurements, on the [0, 1] intensity scale when denoising), with ``s`` the operator's scale
#: (:func:`_tv_scale`: 1 when denoising, n/m for the built-in sensing operators). Total
#: variation's own best weight grows in proportion to σ (scikit-image's TV denoiser, oracle
#: weight 0.72-0.81 σ at σ = 15-50, benchmarks/results/denoise.json). For DIP + TV, 64², σ = 25,
#: factors 0.25 / 0.5 / 1 against none: camera 28.40 / 28.83 / 28.64 vs 27.83 dB, astronaut
#: 27.08 / 27.06 / 26.28 vs 27.02; σ = 50 camera 24.35 / 24.37 vs 23.90 (``benchmarks/
#: defaults.py --calibration``, RESULTS.md §5). In compressive sensing (camera 128², m/n = 0.1,
#: SNR 20 dB, σ = 0.177, s = 10: this rule's λ = 0.89) DIP's hold-out fit with λ = 0.5 / 2
#: peaks at 24.86 / 25.06 dB against 24.12 without TV and 24.69 for oracle-tuned TV
#: (``benchmarks/holdout_trace.py --tv-weight``, RESULTS.md §2).
TV_WEIGHT_PER_SIGMA = 0.5
#: ``regularizer="mix"``: a member with the penalty stops by its rule or after this many times
#: the iterations member 0 (no penalty) ran, whichever comes first, so that the default pair
#: costs at most 3 single fits. TV's discrepancy stop comes late at σ = 50: camera 128², seeds
#: 0 / 1, the TV fit ran 2.5 / 2.7× the other's iterations and returned 25.63 / 25.00 dB; held
#: to 2× it returned 26.15 / 25.71 and the pair +0.18 / +0.34 dB (``benchmarks/mix.py
#: --budget``, RESULTS.md §5). 1.5× on the twelve 128² cases: +0.02 to +0.28 dB at σ = 50 (4 of
#: 4), −0.14 to +0.00 at σ = 15 / 25, mean gap to BM3D 0.82 against 0.84 — not adopted.
MIX_BUDGET = 2
#: Compressive sensing without σ: the measurement SNRs (dB, against the measurements' own rms)
#: whose noise levels give the candidate TV weights, chosen between on held-out measurements.
TV_SNRS_DB = (20.0, 30.0)
#: The problem kinds with an automatic TV weight (others need ``regularizer_weight``).
TV_WEIGHT_PROBLEMS = ("denoise", "compressive_sensing")


#: :func:`reconstruct` warns when ``‖y‖`` exceeds this many times the largest ``‖A x‖`` of an
#: image in [0, 1] (``‖A‖·√n``): only noise far above the signal gives that, or data on another
#: scale (0-255, photon counts), which an image in [0, 1] cannot fit.
SCALE_WARNING = 3.0


def check_sigma(label: str, value: Any, *, denoising: bool) -> float:
    """A noise std >= 0; when denoising, on the [0, 1] intensity scale (0-255 refused)."""
    value = check_float(label, value, low=0.0)
    if denoising and value > 1:
        raise ValueError(f"{label} must be on the [0, 1] intensity scale for denoising, got "
                         f"{value:g}; for {value:g} in 0-255 units pass {label.split()[0]}="
                         f"{value:g}/255")
    return value


def check_noise_level(sigma: float, op: Any, y: Any, problem: str, *,
                      option: str | None = None) -> None:
    """Refuse a σ whose noise alone, ``m·σ²``, exceeds 4·‖y‖² (``‖y‖² ≈ ‖A x‖² + m·σ²``): on
    another scale than ``y``; the discrepancy level would be met by a zero image at once, and a
    σ-given TV weight flatten it. Denoising's σ is bounded by :func:`check_sigma` instead.
    ``option`` names σ as a command line's option that gave it, in the measurements' units."""
    if problem == "denoise":
        return
    noise = sigma**2 * op.num_measurements
    energy = float(torch.as_tensor(y).double().square().sum())
    if noise > 4 * energy:
        named, scaled = ((f"{option} {sigma:g}", f"{option} {sigma / 255:.4g}") if option
                         else (f"sigma={sigma:g}", f"sigma={sigma:g}/255"))
        hint = (f" (for data on the [0, 1] scale and σ in 0-255 units, {scaled})"
                if sigma > 1 else "")  # below 1, no 0-255 value
        raise ValueError(f"{named} puts the noise alone at m·σ² = {noise:.4g}, above 4 times "
                         f"the measurements' ‖y‖² = {energy:.4g}: {option or 'sigma'} is the "
                         f"noise's std in the measurements' units{hint}")


def _scale_ratio(op: Any, y: torch.Tensor) -> float:
    """``‖y‖ / (‖A‖·√n)``: ``‖A‖`` by eight power iterations from the constant image (the top
    direction of masks and blurs; for sensing matrices within a few tens of percent), or from a
    random one where ``A`` maps the constant image to 0 (a gradient, a high-pass filter)."""
    starts = (torch.ones((1, *op.image_shape)),
              torch.randn((1, *op.image_shape), generator=torch.Generator().manual_seed(0)))
    u = next((d for d in (_top_direction(op, s.to(op.device)) for s in starts) if d is not None),
             None)  # the random start only where the constant one is mapped to 0
    if u is None:  # A is 0 on both starts
        return 0.0 if float(y.norm()) == 0 else math.inf
    gain = float(op.A(u).detach().norm())
    return float(y.double().norm()) / (gain * math.sqrt(math.prod(op.image_shape)))


def _top_direction(op: Any, u: torch.Tensor) -> torch.Tensor | None:
    """``u`` after eight power iterations of ``AᵀA``, normalised; None where it is mapped to 0."""
    for _ in range(8):
        v = op.A_adjoint(op.A(u)).detach()
        size = float(v.norm())
        if size == 0:
            return None
        u = v / size
    return u


def _tv_scale(op: Any) -> float:
    """``n·√q / m`` with ``q = ‖A‖_F² / n`` (the mean gain of ``A`` on a random image; 4
    Gaussian probes), ``n`` the pixels and ``m`` the measurements: 1 for ``Identity``, n/m for the
    built-in sensing operators (rows of squared norm n/m). λ·TV then matches the noise the
    least-squares term sees per pixel: a TV problem ``½‖Ax − y‖² + Λ·TV`` whose best Λ grows
    like σ·‖A‖_F/√m·√(m/n) is, in the fit's per-measurement loss, λ = 2Λ·n/m ∝ σ·s."""
    # a seed of its own: probes drawn like a seed-0 sensing matrix would correlate with its rows
    probes = torch.randn((4, 1, *op.image_shape), generator=torch.Generator().manual_seed(7919))
    with torch.no_grad():  # one image at a time: an operator need not take a batch
        gain = sum(float(op.A(u.to(op.device)).cpu().double().square().sum()) for u in probes) \
            / float(probes.double().square().sum())
    n = math.prod(op.image_shape)
    return n * math.sqrt(gain) / op.num_measurements


def _default_tv_weights(name: str, problem: str, op: Any, y: torch.Tensor,
                        sigma: float | None) -> list[float]:
    """``regularizer="tv"``'s weights when none is given: ``TV_WEIGHT_PER_SIGMA · σ ·``
    :func:`_tv_scale`, with σ given or (denoising, by :func:`reconstruct`) estimated; in
    compressive sensing without σ one weight per noise level of :data:`TV_SNRS_DB` (a held-out
    choice)."""
    if problem not in TV_WEIGHT_PROBLEMS:
        raise ValueError(f"regularizer='{name}' needs regularizer_weight=... for "
                         f"{problem}: its automatic weight is measured on denoising and "
                         "compressive sensing")
    if sigma is not None:
        sigmas = [sigma]
    else:  # compressive sensing without σ
        rms = float(y.double().square().mean().sqrt())
        sigmas = [rms * 10 ** (-snr / 20) for snr in TV_SNRS_DB]
    scale = _tv_scale(op)
    return [TV_WEIGHT_PER_SIGMA * s * scale for s in sigmas]


def _resolve_regularizer(regularizer: Any, weight: Any, *, stop: Any, ensemble: int | None,
                         defaults: Defaults, sigma_known: bool) -> Any:
    """The penalty asked for (``"none"``: None) or, where none is, the measured default —
    whose ``"mix"`` / ``"auto"`` are several fits of ``stop="auto"``, so not with another
    rule or ``ensemble=1``."""
    if isinstance(regularizer, str) and regularizer == "none":
        return None
    if regularizer is None and weight is None:
        regularizer = defaults.auto_regularizer(sigma_known)
        if regularizer in ("mix", "auto") and (not isinstance(stop, str) or stop != "auto"
                                               or ensemble == 1):
            return None
    return regularizer


def _resolve_ensemble(ensemble: int | None, *, stop: Any, candidates: int, mix: bool,
                      defaults: Defaults, sigma_known: bool,
                      num_measurements: int | None) -> int:
    """The members fitted after any held-out choice among ``candidates`` weights: those asked
    for; with ``"mix"`` one per candidate; a single candidate with ``stop="auto"``, the
    default's (a refit after a rule that holds data out); else 1 (a choice refits on its own)."""
    if ensemble is None:
        refits = isinstance(stop, str) and stop == "auto" and candidates == 1
        ensemble = candidates if mix else defaults.auto_ensemble(
            sigma_known, num_measurements, regularizer="none") if refits else 1
    ensemble = check_int("ensemble", ensemble, minimum=1)
    if mix and ensemble < candidates:
        raise ValueError(f"regularizer='mix' gives its members, in turn, no penalty and each "
                         f"of its {candidates - 1} TV weight(s): it needs ensemble >= "
                         f"{candidates}, got {ensemble}")
    return ensemble


class _Planned(Exception):
    """Raised from :func:`dry_run`'s ``on_start`` with the plan: every check has passed."""

    def __init__(self, plan: dict[str, Any]) -> None:
        super().__init__("a dry run stops before the first fit")
        self.plan = plan


def dry_run(observation: np.ndarray | torch.Tensor, operator: Any = None,
            **options: Any) -> dict[str, Any]:
    """Check a :func:`reconstruct` call without fitting: every check it makes before its first
    fit, then the plan it would run.

    Takes :func:`reconstruct`'s arguments (but ``on_start``) and raises what it would raise
    before fitting: a bad option, an operator that does not match the data, a network that
    cannot produce the image, an ensemble too small for its weights, ... Files and networks
    are only built, never fitted, so it costs a fraction of a second where the call may cost
    hours. Its warnings are the call's.

    Returns
    -------
    plan : dict
        What ``on_start`` would receive: ``problem``, ``net``, ``net_options``, ``fits``,
        ``max_num_iter``, ``stop``, ``ensemble``, ``regularizer_weights`` and ``device``.

    Examples
    --------
    >>> import numpy as np
    >>> from deepprior import Mask, dry_run
    >>> holes = Mask((64, 64), keep=0.5)
    >>> plan = dry_run(np.zeros((64, 64)), holes, net="dip", device="cpu")
    >>> plan["problem"], plan["fits"], plan["max_num_iter"], plan["stop"]
    ('inpainting', 1, 3000, 'holdout:fraction=0.1,patience=200')
    """
    if options.pop("on_start", None) is not None:
        raise TypeError("dry_run() takes no on_start: it returns the plan on_start would get")

    def planned(plan: dict[str, Any]) -> None:
        raise _Planned(plan)

    try:
        reconstruct(observation, operator, on_start=planned, **options)
    except _Planned as stopped:
        return stopped.plan
    raise RuntimeError("reconstruct returned without announcing its plan")  # pragma: no cover


def planned_fits(problem: str, net: str | None = None, *, sigma_known: bool = False,
                 num_measurements: int | None = None, stop: Any = "auto",
                 ensemble: int | None = None, regularizer: Any = None,
                 regularizer_weight: Any = None) -> int:
    """How many fits :func:`reconstruct` makes with these arguments, known before any runs (its
    cost): one per candidate weight when several are compared on held-out data, then the
    ensemble's members. ``net``: a registered name, by default the problem's
    (:data:`DEFAULT_NETS`), as :func:`reconstruct`'s. ``num_measurements``: None for as many as
    any rule needs."""
    net = DEFAULT_NETS.get(problem, "deep_decoder") if net is None else nets.canonical_name(net)
    defaults = problem_defaults(problem, net)
    regularizer = _resolve_regularizer(regularizer, regularizer_weight, stop=stop,
                                       ensemble=ensemble, defaults=defaults,
                                       sigma_known=sigma_known)
    named = regularizer if isinstance(regularizer, str) else None
    if regularizer is None:
        candidates = 1
    elif regularizer_weight is not None:
        candidates = len(_as_weights(regularizer_weight))
    else:  # :func:`_default_tv_weights`: one per level of TV_SNRS_DB in CS without σ
        candidates = 1 if named is None or sigma_known or problem != "compressive_sensing" \
            else len(TV_SNRS_DB)
    candidates += named in ("auto", "mix")  # ... and the fit without a penalty
    mix = named == "mix"
    ensemble = _resolve_ensemble(ensemble, stop=stop, candidates=candidates, mix=mix,
                                 defaults=defaults, sigma_known=sigma_known,
                                 num_measurements=num_measurements)
    return _fit_count(candidates, ensemble, mix)


def _fit_count(candidates: int, ensemble: int, mix: bool) -> int:
    """The fits of :func:`reconstruct`: one per candidate weight when several are compared on
    held-out data (not with ``"mix"``, whose members take the weights in turn), then the
    ensemble's members."""
    return ensemble + (candidates if candidates > 1 and not mix else 0)


def _penalties(regularizer: Any, weight: Any, *, problem: str, sigma: float | None,
               op: Any, y: torch.Tensor, device: torch.device) -> list[tuple[Any, Any]]:
    """The candidate ``(penalty(output) or None, λ)`` pairs: one, or several to choose from
    (or, with ``"mix"``, for the ensemble's members to take in turn). A function is probed
    once on ``device``, where the fit will call it.

    ``regularizer="auto"`` and ``"mix"``: TV or nothing, i.e. the weights 0 and
    ``regularizer_weight`` (one or several; by default :func:`_default_tv_weights`). A
    sequence of weights with ``"tv"`` or a function: each weight is a candidate. Weight 0 fits
    without a penalty.
    """
    if regularizer is None:
        if weight is not None:
            raise ValueError("regularizer_weight needs a regularizer, e.g. regularizer='tv'")
        return [(None, None)]
    if isinstance(regularizer, str):
        name = check_choice("regularizer", regularizer, ("auto", "mix", "none", *REGULARIZERS))
        function = REGULARIZERS["tv" if name in ("auto", "mix") else name]
        if weight is None:
            weight = _default_tv_weights(name, problem, op, y, sigma)
    elif callable(regularizer):
        name, function, weight = None, regularizer, 1.0 if weight is None else weight
        probe = torch.full((1, *op.image_shape), 0.5, device=device, requires_grad=True)
        try:
            value = function(probe)
        except Exception as exc:  # the user's code: say where it failed, whatever it raised
            raise ValueError(f"the regularizer function failed on a grey image of shape "
                             f"{tuple(probe.shape)}: {type(exc).__name__}: {exc}") from exc
        if not (isinstance(value, torch.Tensor) and value.numel() == 1 and value.requires_grad
                and bool(torch.isfinite(value).all())):
            raise ValueError("a regularizer function must return a finite number (a tensor of "
                             "one element) that depends on the image; on a grey image of shape "
                             f"{tuple(probe.shape)} it returned {value!r}")
    else:
        raise TypeError(f"regularizer must be 'tv', 'auto', 'mix', 'none', a function or None, "
                        f"got {regularizer!r}")
    adds_none = name in ("auto", "mix")
    if adds_none and not _as_weights(weight):  # 0 alone: no choice, no TV fit
        raise ValueError(f"regularizer='{name}' needs at least one TV weight, got "
                         f"regularizer_weight={weight!r}")
    weights = [check_float("regularizer_weight", w, low=0.0)
               for w in ((0.0,) if adds_none else ()) + _as_weights(weight)]
    if not weights or len(set(weights)) < len(weights):
        raise ValueError(f"regularizer_weight: give distinct weights, got "
                         f"{weight!r}{f' ({name} adds 0)' if adds_none else ''}")

    def penalty(w: float) -> Callable[[torch.Tensor], torch.Tensor] | None:
        return None if w == 0 else lambda output: w * function(output)

    return [(penalty(w), w) for w in weights]


def _as_weights(weight: Any) -> tuple[Any, ...]:
    """``regularizer_weight`` as a tuple: several from a list, tuple or 1-D array; one from a
    number or a 0-d array (read from a file, say)."""
    if isinstance(weight, list | tuple):
        return tuple(weight)
    if isinstance(weight, np.ndarray | torch.Tensor):
        return tuple(weight.tolist()) if weight.ndim else (weight.item(),)
    return (weight,)


def _output_psnr(truth: torch.Tensor, output: torch.Tensor) -> float:
    """PSNR of one fit's output (clipped to [0, 1]) against the clean image."""
    return _psnr(tensor_to_image(truth), tensor_to_image(output.clamp(0, 1)))


def _choice_row(weight: float, loss: float, result: Any, truth: torch.Tensor | None):
    """One candidate weight of a held-out choice: its held-out loss, stop and (truth) PSNR."""
    row = {"weight": weight, "holdout_loss": loss, "chosen": False, "num_iter": result.best_step,
           "num_steps": result.num_steps, "stop_reason": result.stop_reason,
           "elapsed": result.elapsed}
    if truth is not None:
        row["psnr"] = _output_psnr(truth, result.output)
    return row


#: :func:`reconstruct` warns when a choice among regularizer weights rests on fewer held-out
#: measurements than this.
MIN_CHOICE_HELDOUT = 10
#: A weight whose held-out loss lies fewer paired standard errors than this above the chosen
#: one's (``margin_z``) is a near tie: the held-out data cannot tell the two apart, and
#: :func:`reconstruct` averages its held-out fit into the image instead of dropping it.
NEAR_TIE_Z = 2.0


def _paired_z(differences: torch.Tensor) -> float | None:
    """Mean over standard error of per-entry loss differences: how clearly one fit is worse
    (None from one entry, which has no standard error)."""
    n = differences.numel()
    if n < 2:
        return None
    spread = float(differences.std()) / math.sqrt(n)
    mean = float(differences.mean())
    return mean / spread if spread > 0 else math.copysign(math.inf, mean) if mean else 0.0


#: The eight flips/rotations of an image: (quarter turns, mirror first).
_DIHEDRAL = [(turns, mirror) for mirror in (False, True) for turns in range(4)]


def _turn(x: torch.Tensor, turn: tuple[int, bool], inverse: bool = False) -> torch.Tensor:
    """Rotate/mirror a (1, C, H, W) tensor (or undo it)."""
    turns, mirror = turn
    if not inverse:
        x = x.flip(-1) if mirror else x
        return torch.rot90(x, turns, dims=(-2, -1))
    x = torch.rot90(x, -turns, dims=(-2, -1))
    return x.flip(-1) if mirror else x


def _rows(series: list[np.ndarray]) -> np.ndarray:
    """Series of different lengths as the rows of one float array, NaN after each one's end."""
    rows = np.full((len(series), max(len(x) for x in series)), np.nan)
    for row, x in zip(rows, series, strict=True):
        row[:len(x)] = x
    return rows


def _members(fits: list, truth: torch.Tensor | None,
             weights: list[float | None]) -> list[dict[str, Any]]:
    """Per ensemble member: its flip, penalty weight, returned iterate, stop and (with the
    truth) PSNR."""
    rows = []
    for k, ((turn, result, output), weight) in enumerate(zip(fits, weights, strict=True)):
        row = {"member": k, "quarter_turns": turn[0], "mirrored": turn[1],
               "regularizer_weight": weight,
               "num_iter": result.best_step, "num_steps": result.num_steps,
               "stop_reason": result.stop_reason, "elapsed": result.elapsed}
        if truth is not None:
            row["psnr"] = _output_psnr(truth, output)
        rows.append(row)
    return rows


def _observation(array: np.ndarray, operator: Any, image_shape: Any,
                 truth_shape: tuple[int, ...] | None = None):
    """The adapted operator and the observation as a tensor ``(1, *measurement_shape)``;
    ``truth_shape`` (the ground truth's (C, H, W)) stands in for ``image_shape`` where the
    operator has no shape of its own (a function, a matrix)."""
    if operator is None:
        array = as_array("observation", array)
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3)):
            raise ValueError(
                f"observation must be an image (H, W) or (H, W, C) with C = 1 or 3, got shape "
                f"{array.shape}; for measurements pass the operator as well")
        if min(array.shape[:2]) < 4:
            raise ValueError(f"the image is {array.shape[0]}x{array.shape[1]} pixels; "
                             "deepprior needs at least 4x4")
        check_image_array("observation", array)
        y = image_to_tensor(array)
        if image_shape is not None and check_image_shape(image_shape) != tuple(y.shape[1:]):
            raise ValueError(f"image_shape {check_image_shape(image_shape)} does not match the "
                             f"image to denoise, {tuple(y.shape[1:])} as (C, H, W): leave "
                             "image_shape out when denoising")
        return Identity(tuple(y.shape[1:])), y
    op = as_operator(operator, truth_shape if image_shape is None and _own_image_shape(
        operator) is None else image_shape)
    shape = op.measurement_shape
    if array.size != math.prod(shape):
        raise ValueError(
            f"observation has shape {array.shape} ({array.size} entries) but the operator "
            f"produces measurements of shape {shape}")
    if len(shape) == 3 and array.shape == (*shape[1:], shape[0]) != shape:  # an (H, W, C)
        array = np.moveaxis(array, -1, 0)  # image, deepprior's layout, of (C, H, W) measurements
    elif sum(d > 1 for d in shape) > 1 and [d for d in array.shape if d > 1] != [
            d for d in shape if d > 1] and array.ndim > 1:  # not flat, and not in that shape
        raise ValueError(f"observation has shape {array.shape} but the operator's measurements "
                         f"have shape {shape}: pass them in that shape, flat, or as an "
                         f"(H, W, C) image")
    y = torch.from_numpy(np.ascontiguousarray(array)).reshape(1, *shape)
    observed = getattr(op, "observed", None)  # a mask's holes carry no data: zero there, as
    if observed is not None:  # A(x) is (what a user's file holds there, NaN too, would stay
        y = torch.where(observed.to(y.device, torch.bool), y, 0.0)  # in the loss)
    if not bool(torch.isfinite(y).all()):
        raise ValueError("observation contains NaN or infinite values"
                         f"{' where the operator measures' if observed is not None else ''}; "
                         "fill or remove them first")
    if isinstance(op, Identity):  # an image to denoise, as without an operator: [0, 1], ≥ 4×4
        height, width = y.shape[-2:]  # (any channel count: the operator says it)
        if min(height, width) < 4:
            raise ValueError(f"the image is {height}x{width} pixels; deepprior needs at least "
                             "4x4")
        check_image_array("observation", y.numpy(), layout=False)
    return op, y


def _network(net: Any, net_input: Any, image_shape: tuple[int, int, int], norm: str, seed: int,
             options: Mapping[str, Any] | None):
    """The module, its fixed input and the options used."""
    if isinstance(net, str):
        if net_input is not None:
            raise ValueError("net_input is the fixed input of a module net=...; a named "
                             "network draws its own from the seed")
        if "norm" in (options or {}):
            raise ValueError("pass norm=... to reconstruct, not in net_options")
        module, z = nets.build_net(net, image_shape, norm=norm, seed=seed, **(options or {}))
        return module, z, dict(options or {})
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a network name or an nn.Module, got {type(net).__name__}")
    if options:
        raise ValueError("net_options apply to named networks; configure your module directly")
    check_trainable(net)
    if net_input is None:
        shape = getattr(net, "input_shape", None)
        if shape is None:
            raise ValueError("pass net_input=z (the module's fixed input) or give the module an "
                             "input_shape attribute")
        if not (isinstance(shape, tuple | list | torch.Size) and shape
                and all(isinstance(d, int) and d > 0 for d in shape)):
            raise ValueError("net.input_shape must be a tuple of positive ints such as "
                             f"(1, 32, 16, 16), got {shape!r}")
        generator = torch.Generator().manual_seed(seed)
        net_input = nets.INPUT_SCALE * torch.rand(tuple(shape), generator=generator)
    if not isinstance(net_input, torch.Tensor) or not net_input.is_floating_point():
        raise TypeError("net_input must be a floating-point torch.Tensor")
    if not bool(torch.isfinite(net_input).all()):
        raise ValueError("net_input holds NaN or infinite values")
    module = copy.deepcopy(net)  # every fit starts from the module as given; the user's stays so
    with torch.no_grad():
        out = _call_forward(module, net_input.to(_module_device(module)), "net",
                            what="its input")
    if tuple(out.shape) != (1, *image_shape):
        raise ValueError(f"net(net_input) has shape {tuple(out.shape)}, expected "
                         f"{(1, *image_shape)} (the image the operator takes)")
    return module, net_input, {}

