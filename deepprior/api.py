"""reconstruct(): one corrupted observation in, the reconstruction out.

The only module that wires the pieces together: it validates the input, resolves the defaults
for the (problem, network) pair, builds the network and the stopping policy, runs
:func:`deepprior.fit.fit` and packages the result as a :class:`Reconstruction`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import stopping
from .fit import FitState, fit, resolve_device
from .metrics import psnr as _psnr
from .metrics import ssim as _ssim
from .nets import available_nets, build_net
from .noise import estimate_sigma
from .operators import Identity, LinearOperator

__all__ = ["DEFAULTS", "Reconstruction", "image_to_tensor", "reconstruct", "tensor_to_image"]

NORMS = ("channel", "batch", "none")


@dataclass(frozen=True)
class NetDefaults:
    """Fitting defaults for one (problem, network) pair."""

    max_num_iter: int
    learning_rate: float
    reg_noise_std: float = 0.0
    ema: float | None = None
    net_options: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""


#: Defaults per (problem, network). "denoise" is the identity operator; "inverse" is any other
#: operator (compressive sensing, inpainting).
DEFAULTS: dict[tuple[str, str], NetDefaults] = {
    ("denoise", "deep_decoder"): NetDefaults(
        3000, 0.01, ema=0.99, net_options={"channels": 64},
        source="Heckel & Hand 2019: Adam lr 0.01, 1,900-3,000 iterations; k=64. EMA 0.99 of the "
        "outputs: +0.45 dB over the best raw iterate (benchmarks/results/stopping.md)",
    ),
    ("denoise", "dip"): NetDefaults(
        3000, 0.01, reg_noise_std=1 / 30, ema=0.99,
        source="Ulyanov et al. 2018 (denoising): Adam lr 0.01, 3,000 it, input noise 1/30, "
        "EMA 0.99",
    ),
    ("denoise", "conv_decoder"): NetDefaults(
        3000, 0.01, source="Adam lr 0.01 as for the Deep Decoder; 3,000 iterations",
    ),
    ("denoise", "conv_generator"): NetDefaults(3000, 0.01, source="diagnostic network"),
    ("inverse", "deep_decoder"): NetDefaults(
        3000, 0.005, net_options={"channels": 128},
        source="Heckel & Soltanolkotabi 2020 (CS): Adam lr 0.005, run to convergence",
    ),
    ("inverse", "dip"): NetDefaults(
        3000, 0.01, reg_noise_std=1 / 30, ema=0.99, source="Ulyanov et al. 2018 settings",
    ),
    ("inverse", "conv_decoder"): NetDefaults(
        3000, 0.01, source="Darestani & Heckel 2021: Adam lr 0.01",
    ),
    ("inverse", "conv_generator"): NetDefaults(3000, 0.01, source="diagnostic network"),
}

#: The stopping rule behind ``stop="auto"`` per (problem, network), chosen from the measurements
#: in benchmarks/results/stopping.md (64² camera and astronaut, σ = 15, 25, 50; CS with m = 1000).
#: Denoising: the discrepancy principle (σ estimated from the image when not given; τ = 0.8 for
#: the Deep Image Prior, whose returned output average lags the output the residual is measured
#: on) and, for the ConvDecoder, a hold-out of 10% of the pixels, which does not depend on the
#: σ estimate. Compressive sensing: the training-loss plateau, i.e. run to convergence. The
#: diagnostic conv_generator was not measured; it follows the ConvDecoder.
AUTO_STOP: dict[tuple[str, str], str] = {
    ("denoise", "deep_decoder"): "discrepancy",
    ("denoise", "dip"): "discrepancy:tau=0.8",
    ("denoise", "conv_decoder"): "holdout:fraction=0.1,patience=200",
    ("denoise", "conv_generator"): "holdout:fraction=0.1,patience=200",
    ("inverse", "deep_decoder"): "patience",
    ("inverse", "dip"): "patience",
    ("inverse", "conv_decoder"): "patience",
    ("inverse", "conv_generator"): "patience",
}


@dataclass(frozen=True)
class Reconstruction:
    """Result of :func:`reconstruct`.

    Attributes
    ----------
    image : np.ndarray
        The reconstruction, float32 in [0, 1], (H, W) or (H, W, C) like the input.
    num_iter : int
        Iteration whose output is returned (1-based).
    num_steps : int
        Iterations run in total.
    stop_reason : str
        Why the fit stopped and which iterate was returned.
    history : dict[str, np.ndarray]
        ``"loss"`` per iteration, and ``"psnr"`` per iteration when ``ground_truth`` was given.
    psnr, ssim : float or None
        Against ``ground_truth``, when given.
    elapsed : float
        Seconds spent fitting.
    device : str
        Device the fit ran on.
    config : dict
        Every resolved setting (network, options, learning rate, stopping rule, σ, seed, …).
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


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W) or (H, W, C) array → (1, C, H, W) float32 tensor."""
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]


def tensor_to_image(tensor: torch.Tensor) -> np.ndarray:
    """(1, C, H, W) tensor → (H, W) for C = 1, else (H, W, C), float32 numpy on the CPU."""
    array = tensor.detach().to("cpu", torch.float32).numpy()[0].transpose(1, 2, 0)
    return np.ascontiguousarray(array[:, :, 0] if array.shape[2] == 1 else array)


def reconstruct(
    observation: np.ndarray | torch.Tensor,
    operator: LinearOperator | None = None,
    *,
    net: str = "deep_decoder",
    norm: str = "channel",
    max_num_iter: int | None = None,
    learning_rate: float | None = None,
    stop: str | object = "auto",
    sigma: float | None = None,
    ground_truth: np.ndarray | None = None,
    seed: int = 0,
    device: str = "auto",
    progress: bool = False,
    callback: Callable[[FitState], bool | None] | None = None,
    net_options: Mapping[str, Any] | None = None,
) -> Reconstruction:
    """Reconstruct an image from one corrupted observation with an untrained network.

    Parameters
    ----------
    observation : np.ndarray or torch.Tensor
        Without ``operator``: the noisy image, (H, W) or (H, W, C), values on the [0, 1] scale
        (noise may push them slightly outside). With ``operator``: the measurements, of shape
        ``operator.measurement_shape`` (a leading batch axis of 1 is accepted).
    operator : LinearOperator or None
        Forward model y = A x; None means denoising (the identity).
    net : {"deep_decoder", "dip", "conv_decoder", "conv_generator"}
        The untrained network.
    norm : {"channel", "batch", "none"}
        Normalization after each hidden layer.
    max_num_iter : int or None
        Hard limit on iterations; None takes the default of the (problem, network) pair.
    learning_rate : float or None
        Adam step size; None takes the default.
    stop : str or policy object
        Stopping rule: ``"auto"``, a spec such as ``"wmv:window=100,patience=1000"``,
        ``"fixed:3000"``, ``"holdout:fraction=0.1"``, ``"oracle"`` (needs ``ground_truth``;
        benchmarking only), several joined by ``"+"`` (first to fire), or a policy object.
    sigma : float or None
        Noise standard deviation on the [0, 1] scale, used by the discrepancy rule; estimated
        from a noisy image when needed and not given.
    ground_truth : np.ndarray or None
        Clean image, to report PSNR/SSIM and the PSNR of every iterate; never used to fit
        (except by the ``"oracle"`` rule).
    seed : int
        Seeds everything random: network weights, input z, input perturbation, hold-out split.
    device : str
        ``"auto"`` (CUDA, else MPS, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
    progress : bool
        Show a progress bar.
    callback : callable or None
        Called after each iteration with a :class:`deepprior.fit.FitState`; returning True stops.
    net_options : mapping or None
        Network options, e.g. ``{"channels": 128}`` for the Deep Decoder.

    Returns
    -------
    Reconstruction

    Raises
    ------
    ValueError, TypeError
        For invalid arguments, naming the argument, the value and the valid range.

    Notes
    -----
    Fits θ to minimise ``‖A f_θ(z) − y‖²`` with Adam (Ulyanov et al. 2018; Heckel & Hand 2019;
    Heckel & Soltanolkotabi 2020) and returns the iterate the stopping rule selects.

    ====================  ======  =====  =================================  =====================
    problem / network     iters   lr     stop ("auto")                      other
    ====================  ======  =====  =================================  =====================
    denoise deep_decoder  3,000   0.01   discrepancy                        k = 64, EMA 0.99
    denoise dip           3,000   0.01   discrepancy:tau=0.8                input noise 1/30,
                                                                            EMA 0.99
    denoise conv_decoder  3,000   0.01   holdout:fraction=0.1,patience=200
    inverse deep_decoder  3,000   0.005  patience                           k = 128
    inverse dip           3,000   0.01   patience                           input noise 1/30,
                                                                            EMA 0.99
    inverse conv_decoder  3,000   0.01   patience
    ====================  ======  =====  =================================  =====================

    ``discrepancy`` uses ``sigma`` when given, else the estimate from the noisy image. The auto
    rules were chosen by ``benchmarks/stopping.py`` (results in
    ``benchmarks/results/stopping.md``).

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
    problem = "denoise" if operator is None or isinstance(operator, Identity) else "inverse"
    _check_choice("net", net, available_nets())
    _check_choice("norm", norm, NORMS)
    defaults = DEFAULTS[(problem, net)]
    iterations_given = max_num_iter is not None
    max_num_iter = _check_int("max_num_iter", max_num_iter, defaults.max_num_iter, low=1)
    learning_rate = _check_learning_rate(learning_rate, defaults.learning_rate)
    seed = _check_int("seed", seed, 0, low=0)
    if sigma is not None:
        sigma = _check_sigma(sigma)

    y, image_shape, operator = _prepare_observation(observation, operator)
    gt_tensor = None
    if ground_truth is not None:
        gt_tensor = _prepare_ground_truth(ground_truth, image_shape)
    torch_device = resolve_device(device)

    specs = _resolve_stop(stop, problem, net)
    if isinstance(specs, list):
        fixed = [s for s in specs if s.name == "fixed"]
        if fixed and not iterations_given:  # "fixed:N" alone sets the iteration budget
            max_num_iter = max(max_num_iter, int(fixed[0].params["num_iter"]))
        if any(s.name == "discrepancy" for s in specs) and sigma is None:
            sigma = _estimate_sigma_for(observation, problem)
        policy, fit_operator, fit_y = _build_policy(
            specs, operator=operator, y=y, sigma=sigma, ground_truth=gt_tensor, seed=seed
        )
    else:
        policy, fit_operator, fit_y = specs, operator, y

    options = {**defaults.net_options, **(net_options or {})}
    module, z = build_net(net, image_shape, norm=norm, seed=seed, **options)
    result = fit(
        module, z, fit_y, fit_operator,
        policy=policy,
        max_num_iter=max_num_iter,
        learning_rate=learning_rate,
        reg_noise_std=defaults.reg_noise_std,
        ema=defaults.ema,
        ground_truth=gt_tensor,
        device=torch_device,
        seed=seed,
        progress=progress,
        callback=callback,
    )
    image = tensor_to_image(result.output.clamp(0, 1))
    history = {"loss": result.loss}
    psnr_value = ssim_value = None
    if ground_truth is not None:
        history["psnr"] = result.psnr
        clean = np.asarray(ground_truth, dtype=np.float32)
        psnr_value = _psnr(clean, image)
        ssim_value = _ssim(clean, image)
    config = {
        "problem": problem,
        "net": net,
        "norm": norm,
        "net_options": options,
        "num_parameters": sum(p.numel() for p in module.parameters()),
        "max_num_iter": max_num_iter,
        "learning_rate": learning_rate,
        "reg_noise_std": defaults.reg_noise_std,
        "ema": defaults.ema,
        "stop": stop if isinstance(stop, str) else type(stop).__name__,
        "stop_resolved": "+".join(s.name for s in specs) if isinstance(specs, list) else None,
        "sigma": sigma,
        "seed": seed,
        "operator": operator.describe(),
        "num_restarts": result.num_restarts,
        "final_learning_rate": result.final_learning_rate,
    }
    return Reconstruction(
        image=image,
        num_iter=result.best_step,
        num_steps=result.num_steps,
        stop_reason=result.stop_reason,
        history=history,
        psnr=psnr_value,
        ssim=ssim_value,
        elapsed=result.elapsed,
        device=str(torch_device),
        config=config,
    )


# --------------------------------------------------------------------------- validation


def _check_choice(name: str, value: object, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"{name} must be one of {', '.join(valid)}; got {value!r}")


def _check_int(name: str, value: object, default: int, *, low: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an integer >= {low}, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value}")
    return int(value)


def _check_learning_rate(value: float | None, default: float) -> float:
    if value is None:
        return default
    if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"learning_rate must be a finite number > 0 (e.g. 0.01), got {value!r}")
    return float(value)


def _check_sigma(sigma: float) -> float:
    if not isinstance(sigma, int | float) or not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite number >= 0 on the [0, 1] scale, got {sigma!r}")
    if sigma > 1:
        raise ValueError(
            f"sigma must be on the [0, 1] intensity scale, got {sigma}; "
            f"for a value in 0-255 units pass sigma={sigma}/255"
        )
    return float(sigma)


def _as_array(name: str, value: object) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(value).__name__}")
    if value.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers, got dtype {value.dtype}")
    array = value.astype(np.float32, copy=False)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values; fill or remove them first")
    return array


def _prepare_observation(
    observation: object, operator: LinearOperator | None
) -> tuple[torch.Tensor, tuple[int, int, int], LinearOperator]:
    array = _as_array("observation", observation)
    if operator is None:
        if array.ndim == 3 and array.shape[2] not in (1, 3):
            raise ValueError(
                f"observation must be an image (H, W) or (H, W, C) with C = 1 or 3, got shape "
                f"{array.shape}; for measurements pass the operator as well"
            )
        if array.ndim not in (2, 3):
            raise ValueError(
                f"observation must be an image (H, W) or (H, W, C), got shape {array.shape}; "
                "for measurements pass the operator as well"
            )
        if array.max() > 2.0:
            raise ValueError(
                f"observation values go up to {array.max():.4g}; images must be on the [0, 1] "
                "scale: divide 8-bit data by 255 (16-bit by 65535)"
            )
        y = image_to_tensor(array)
        shape = tuple(y.shape[1:])
        return y, shape, Identity(shape)
    if not isinstance(operator, LinearOperator):
        raise TypeError(
            f"operator must be a deepprior LinearOperator, got {type(operator).__name__}"
        )
    expected = tuple(operator.measurement_shape)
    if array.size != int(np.prod(expected)) or array.shape not in (expected, (1, *expected)):
        raise ValueError(
            f"observation has shape {array.shape} but the operator produces measurements of "
            f"shape {expected}"
        )
    y = torch.from_numpy(np.ascontiguousarray(array)).reshape(1, *expected)
    return y, tuple(operator.image_shape), operator


def _prepare_ground_truth(ground_truth: object, image_shape: tuple[int, int, int]) -> torch.Tensor:
    array = _as_array("ground_truth", ground_truth)
    tensor = image_to_tensor(array) if array.ndim in (2, 3) else None
    if tensor is None or tuple(tensor.shape[1:]) != tuple(image_shape):
        c, h, w = image_shape
        expected = (h, w) if c == 1 else (h, w, c)
        raise ValueError(f"ground_truth must have shape {expected}, got {array.shape}")
    return tensor


def _estimate_sigma_for(observation: object, problem: str) -> float:
    if problem != "denoise":
        raise ValueError(
            "the discrepancy rule needs the noise level: pass sigma=... (the standard deviation "
            "of the measurement noise) or choose another stopping rule"
        )
    return estimate_sigma(_as_array("observation", observation))


# --------------------------------------------------------------------------- stopping


def _resolve_stop(stop: object, problem: str, net: str):
    """A list of PolicySpec for a string rule, or the policy object itself."""
    if isinstance(stop, str):
        spec = AUTO_STOP[(problem, net)] if stop == "auto" else stop
        return stopping.parse_policy(spec)
    if isinstance(stop, stopping.StoppingPolicy):
        return stop
    raise TypeError(
        f"stop must be a rule such as 'auto', 'wmv' or 'fixed:3000', or a stopping policy "
        f"object; got {type(stop).__name__}"
    )


def _build_policy(specs, *, operator, y, sigma, ground_truth, seed):
    """Build the policies named in ``specs``; a hold-out rule also splits the data."""
    fit_operator, fit_y = operator, y
    policies = []
    for spec in specs:
        context: dict[str, Any] = {}
        if spec.name == "oracle":
            if ground_truth is None:
                raise ValueError("stop='oracle' needs ground_truth=... (the clean image)")
            context["ground_truth"] = ground_truth
        elif spec.name == "discrepancy":
            context.update(operator=operator, y=y, sigma=sigma)
        elif spec.name == "holdout":
            fraction = float(spec.params.get("fraction", stopping.HOLDOUT_FRACTION))
            fit_operator, fit_y, val_operator, val_y = _split(operator, y, fraction, seed)
            context.update(operator=val_operator, y=val_y)
        policies.append(stopping.build_policy(spec, **context))
    policy = policies[0] if len(policies) == 1 else stopping.FirstOf(*policies)
    return policy, fit_operator, fit_y


def _split(operator: LinearOperator, y: torch.Tensor, fraction: float, seed: int):
    """Hold out a random ``fraction`` of the measurements (pixels for denoising)."""
    if not 0 < fraction < 1:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    generator = torch.Generator().manual_seed(seed + 1)
    shape = tuple(operator.measurement_shape)
    held = torch.rand(shape, generator=generator) < fraction
    if held.all() or not held.any():
        raise ValueError(
            f"holdout fraction {fraction} leaves no data on one side of the split of "
            f"{held.numel()} measurements"
        )
    keep = ~held
    flat = y.reshape(1, *shape)
    return (
        operator.restrict(keep), flat[0][keep][None],
        operator.restrict(held), flat[0][held][None],
    )
