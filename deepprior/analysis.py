"""Diagnostics of a fit, per layer and over iterations: what the papers say happens inside.

Monitors are callbacks for :func:`deepprior.reconstruct` / :func:`deepprior.fit`
(``callback=...``). Each one records, for every convolution weight of the network (a *layer*,
named by its module path, e.g. ``"body.0.0"``), one quantity every ``every`` iterations:

============================  ===============================================================
monitor                       what it records per layer
============================  ===============================================================
:class:`GradientNorms`        ‖∂L/∂W_l‖, the norm of the layer's weight gradient
:class:`GradientOscillation`  cos(g_t, g_{t-1}), cosine between adjacent steps' gradients
:class:`EffectiveRank`        entropy effective rank and numerical rank of the weight matrix
:class:`Conditioning`         extreme eigenvalues and condition number of the layer's block
                              of the curvature matrix (Gauss–Newton or Hessian), by Lanczos
============================  ===============================================================

:class:`Diagnostics` runs them all and collects the results (``to_dict()``, ``summary()``).
The functions underneath (:func:`lanczos`, :func:`curvature_eigenvalues`,
:func:`effective_rank`, :func:`numerical_rank`, :func:`weight_matrix`, :func:`conv_layers`)
are usable on their own.

Monitors only read: they add no parameters and no hooks, never write ``.grad`` (curvature
products use :func:`torch.autograd.grad`), leave the optimizer alone, draw their random
numbers from their own :class:`torch.Generator`, and restore the network's buffers (BatchNorm's
running statistics) after their extra forward passes — the fit returns bit-identical results
with and without them (on the CPU; on a GPU two fits of a network differ in the last bits
anyway, :func:`deepprior.reconstruct_many`'s notes say why). A monitor instance records one fit.

The papers behind the quantities: Dai & Heckel, "Channel Normalization in Convolutional Neural
Networks avoids Vanishing Gradients" (ICML workshop 2019) for gradient norms; Huang et al.,
"Layer-wise Conditioning Analysis in Exploring the Learning Dynamics of DNNs" (ECCV 2020) for
per-layer curvature blocks; Roy & Vetterli, "The effective rank: a measure of effective
dimensionality" (EUSIPCO 2007) for the effective rank.

Examples
--------
>>> import numpy as np
>>> from deepprior import reconstruct
>>> from deepprior.analysis import Diagnostics
>>> image = np.tile(np.linspace(0, 1, 16, dtype=np.float32), (16, 1))
>>> diagnostics = Diagnostics(every=5, curvature_every=10, curvature_iters=5)
>>> result = reconstruct(image, net="conv_generator", max_num_iter=10, stop="fixed:10",
...                      net_options={"channels": 4, "num_layers": 2}, callback=diagnostics)
>>> diagnostics.layers
['body.0.0', 'body.1.0', 'body.2.0']
>>> diagnostics.to_dict()["grad_norm"]["steps"]
[1, 5, 10]
"""

from __future__ import annotations

import contextlib
import math
import numbers
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .checks import check_choice, check_float, check_int
from .fit import FitState
from .io import jsonable

__all__ = [
    "CURVATURES",
    "MAX_LANCZOS_STEPS",
    "Conditioning",
    "CurvatureEstimate",
    "Diagnostics",
    "EffectiveRank",
    "GradientNorms",
    "GradientOscillation",
    "LanczosResult",
    "Monitor",
    "conv_layers",
    "curvature_eigenvalues",
    "effective_rank",
    "lanczos",
    "numerical_rank",
    "weight_matrix",
]

#: The curvature matrices whose per-layer blocks :class:`Conditioning` can analyse.
CURVATURES: tuple[str, ...] = ("gauss_newton", "hessian")
#: Where the Lanczos iteration starts: the layer's gradient, or a random vector.
STARTS: tuple[str, ...] = ("gradient", "random")
#: Upper limit on Lanczos steps per layer (each step costs one curvature-vector product).
MAX_LANCZOS_STEPS = 200
#: Relative size of a Lanczos residual below which the Krylov space counts as exhausted.
_BREAKDOWN = 1e-6

LossFn = Callable[[Tensor], Tensor]


# --------------------------------------------------------------------------- layers


def conv_layers(net: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The layers the monitors watch: every ``nn.Conv2d`` weight, named by module path.

    Parameters
    ----------
    net : nn.Module
        The network.

    Returns
    -------
    list of (str, nn.Parameter)
        ``(module path, weight)`` in the order of ``net.named_modules()``: for the Deep
        Decoder and the ConvDecoder the order of the forward pass (first layer first, output
        last); for the Deep Image Prior the encoder, the skips, the decoder blocks from the
        finest scale to the coarsest, then the output (its forward pass runs the decoder from
        the coarsest).

    Raises
    ------
    ValueError
        If the network has no ``nn.Conv2d`` layer, or one whose weight is reparametrised
        (``weight_norm``, ``spectral_norm``: no parameter, no gradient to read).
    TypeError
        If ``net`` is not a module.
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
    layers = [
        (name, module.weight)
        for name, module in net.named_modules()
        if isinstance(module, nn.Conv2d)
    ]
    if not layers:
        raise ValueError(
            f"the network {type(net).__name__} has no nn.Conv2d layer for the monitors to watch"
        )
    for name, weight in layers:  # weight_norm / spectral_norm: a weight recomputed at each
        if not isinstance(weight, nn.Parameter):  # forward pass, whose gradient is not kept
            raise ValueError(f"layer {name!r} has a reparametrised weight (weight_norm, "
                             "spectral_norm): the monitors read a layer's weight and its "
                             "gradient, and it has neither as a parameter; analyse the network "
                             "without the reparametrisation")
    return layers


def weight_matrix(weight: Tensor, groups: int = 1) -> Tensor:
    """A convolution weight as a matrix: ``(out, in, kh, kw)`` → ``(out, in·kh·kw)``.

    A 1×1 convolution ``k → k`` becomes the ``k × k`` matrix it applies at every pixel; a 3×3
    one becomes the matrix acting on 3×3 patches (as in ``torch.nn.functional.unfold``). A
    convolution of ``groups`` > 1 (its weight ``(out, in/groups, kh, kw)``) becomes the
    block-diagonal matrix of its groups, ``(out, in·kh·kw)``: a depthwise 1×1 convolution, the
    diagonal matrix of its weights.

    Raises
    ------
    TypeError
        If ``weight`` is not a tensor.
    ValueError
        If it has fewer than 2 dimensions.
    """
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.ndim < 2:
        raise ValueError(
            f"weight must have at least 2 dimensions (out, in, ...), got shape "
            f"{tuple(weight.shape)}"
        )
    groups = check_int("groups", groups, minimum=1)
    if weight.shape[0] % groups:
        raise ValueError(f"groups={groups} does not divide the {weight.shape[0]} output "
                         "channels of the weight")
    matrix = weight.detach().reshape(weight.shape[0], -1)
    return matrix if groups == 1 else torch.block_diag(*matrix.chunk(groups))


# --------------------------------------------------------------------------- effective rank


def _singular_values(matrix: Tensor | np.ndarray) -> Tensor:
    if isinstance(matrix, np.ndarray):
        matrix = torch.from_numpy(matrix)
    if not isinstance(matrix, Tensor):
        raise TypeError(
            f"matrix must be a torch.Tensor or numpy array, got {type(matrix).__name__}"
        )
    if matrix.ndim != 2:
        raise ValueError(
            f"matrix must be 2-D, got shape {tuple(matrix.shape)}; for a convolution weight "
            "use weight_matrix(weight)"
        )
    if not bool(torch.isfinite(matrix).all()):
        raise ValueError("matrix contains NaN or infinite values")
    return torch.linalg.svdvals(matrix.detach().to("cpu", torch.float64))


def effective_rank(matrix: Tensor | np.ndarray) -> float:
    r"""Entropy-based effective rank of a matrix (Roy & Vetterli 2007).

    Parameters
    ----------
    matrix : torch.Tensor or np.ndarray
        A 2-D matrix (see :func:`weight_matrix` for convolution weights).

    Returns
    -------
    float
        Between 1 and ``min(matrix.shape)`` (0 for the zero matrix).

    Raises
    ------
    TypeError, ValueError
        If ``matrix`` is not a finite 2-D tensor or array.

    Notes
    -----
    With singular values :math:`\sigma_i` and :math:`p_i = \sigma_i / \sum_j \sigma_j`,

    .. math:: \operatorname{erank} = \exp\Big(-\sum_i p_i \log p_i\Big).

    A matrix with :math:`r` equal non-zero singular values has effective rank exactly
    :math:`r`; unequal ones give less. Roy & Vetterli, "The effective rank: a measure of
    effective dimensionality", EUSIPCO 2007.

    Examples
    --------
    >>> import torch
    >>> round(effective_rank(torch.diag(torch.tensor([2.0, 2.0, 0.0]))), 6)
    2.0
    """
    s = _singular_values(matrix)
    total = float(s.sum())
    if total == 0.0:
        return 0.0
    p = s[s > 0] / total
    return float(torch.exp(-(p * torch.log(p)).sum()))


def numerical_rank(matrix: Tensor | np.ndarray, threshold: float = 0.01) -> int:
    """Number of singular values above ``threshold`` times the largest.

    Parameters
    ----------
    matrix : torch.Tensor or np.ndarray
        A 2-D matrix.
    threshold : float
        Relative threshold in (0, 1), by default 0.01.

    Returns
    -------
    int

    Raises
    ------
    TypeError, ValueError
        If ``matrix`` is not a finite 2-D tensor or array, or ``threshold`` is not in (0, 1).

    Examples
    --------
    >>> import torch
    >>> numerical_rank(torch.diag(torch.tensor([1.0, 0.5, 1e-4])))
    2
    """
    check_float("threshold", threshold, low=0, high=1, low_open=True, high_open=True)
    s = _singular_values(matrix)
    if s.numel() == 0 or float(s[0]) == 0.0:
        return 0
    return int((s > threshold * s[0]).sum())


# --------------------------------------------------------------------------- Lanczos


@dataclass(frozen=True)
class LanczosResult:
    """Ritz values of a symmetric operator from :func:`lanczos`.

    Attributes
    ----------
    ritz_values : np.ndarray
        Eigenvalues of the tridiagonal Lanczos matrix, ascending (float64).
    weights : np.ndarray
        Squared first components of its eigenvectors: the weight of each Ritz value in the
        start vector (they sum to 1).
    num_steps : int
        Lanczos steps taken (curvature-vector products).
    exhausted : bool
        True when the Krylov space became invariant before the step limit: the Ritz values are
        then exact eigenvalues of the operator restricted to that space.
    """

    ritz_values: np.ndarray
    weights: np.ndarray
    num_steps: int
    exhausted: bool


def lanczos(matvec: Callable[[Tensor], Tensor], start: Tensor, num_steps: int) -> LanczosResult:
    r"""Lanczos iteration with full reorthogonalisation on a symmetric linear operator.

    Parameters
    ----------
    matvec : callable
        ``v ↦ M v`` for a symmetric ``M``, on flat tensors of the length of ``start``.
    start : torch.Tensor
        Non-zero start vector (flattened; its norm does not matter).
    num_steps : int
        Maximum number of steps ``m`` (at most the dimension; at most
        :data:`MAX_LANCZOS_STEPS`).

    Returns
    -------
    LanczosResult

    Raises
    ------
    ValueError
        If ``start`` is zero or not finite, or ``num_steps`` is out of range.

    Notes
    -----
    Builds an orthonormal basis :math:`V_m` of the Krylov space
    :math:`\mathcal K_m(M, v_1) = \operatorname{span}\{v_1, Mv_1, \dots, M^{m-1}v_1\}` and the
    tridiagonal :math:`T_m = V_m^\top M V_m`; its eigenvalues (Ritz values) approximate the
    eigenvalues of :math:`M`, the extreme ones first. For a symmetric :math:`M` restricted to the
    Krylov space, :math:`\lambda_{\min} \le \theta_{\min} \le \theta_{\max} \le \lambda_{\max}`:
    the largest Ritz value converges in a few steps, the smallest converges slowly when the
    bottom of the spectrum is crowded (and approaches 0 for a singular block). Vectors are kept
    in float64 and reorthogonalised twice against all previous ones, so no spurious copies of
    converged Ritz values appear. Golub & Van Loan, *Matrix Computations*, §10.1.
    """
    if not isinstance(start, Tensor) or not start.is_floating_point():
        raise TypeError(f"start must be a floating-point torch.Tensor (the products are formed "
                        f"in its dtype), got {getattr(start, 'dtype', type(start).__name__)}")
    dimension = start.numel()
    limit = min(MAX_LANCZOS_STEPS, dimension)
    if isinstance(num_steps, bool) or not isinstance(num_steps, numbers.Integral) or \
            num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    num_steps = int(num_steps)
    if num_steps > MAX_LANCZOS_STEPS:
        raise ValueError(f"num_steps must be at most {MAX_LANCZOS_STEPS}, got {num_steps}")
    num_steps = min(num_steps, limit)
    # float64 where the vectors are, on the CPU for Apple's MPS, which has no float64
    home = torch.device("cpu") if start.device.type == "mps" else start.device
    v = start.detach().reshape(-1).to(home, torch.float64)
    norm = float(v.norm())
    if not math.isfinite(norm) or norm == 0.0:
        raise ValueError("the Lanczos start vector must be non-zero and finite")
    basis = [v / norm]
    alphas: list[float] = []
    betas: list[float] = []
    exhausted = False
    for j in range(num_steps):
        w = matvec(basis[j].to(start.device, start.dtype)).detach().reshape(-1).to(
            home, torch.float64)
        if not bool(torch.isfinite(w).all()):  # an overflowed product: no estimate at all
            return LanczosResult(np.array([math.nan]), np.array([1.0]), j + 1, False)
        alphas.append(float(w @ basis[j]))
        q = torch.stack(basis)
        for _ in range(2):  # full reorthogonalisation, twice ("twice is enough")
            w = w - q.T @ (q @ w)
        beta = float(w.norm())
        scale = max(max(abs(a) for a in alphas), max(betas, default=0.0))
        if beta <= _BREAKDOWN * scale or not math.isfinite(beta):
            exhausted = True
            break
        if j + 1 == num_steps:
            break
        betas.append(beta)
        basis.append(w / beta)
    t = np.diag(np.asarray(alphas))
    off = np.asarray(betas[: len(alphas) - 1])
    t += np.diag(off, 1) + np.diag(off, -1)
    values, vectors = np.linalg.eigh(t)
    return LanczosResult(values, vectors[0] ** 2, len(alphas), exhausted)


# --------------------------------------------------------------------------- curvature


@dataclass(frozen=True)
class CurvatureEstimate:
    """Extreme eigenvalues of one layer's curvature block, from :func:`curvature_eigenvalues`.

    Attributes
    ----------
    lambda_max : float
        Largest Ritz value (a lower bound on the block's largest eigenvalue; converges fast).
    lambda_min : float
        Smallest Ritz value (an upper bound on the smallest eigenvalue in the Krylov space;
        approximate unless ``exhausted``).
    condition_number : float
        ``lambda_max / lambda_min``; ``inf`` when ``|lambda_min| <= 10·eps·lambda_max`` (below
        the precision of the products in the weights' dtype: numerically singular); ``nan`` when
        ``lambda_min`` is negative beyond that (an indefinite Hessian block has no condition
        number in the optimisation sense) or the block is zero (no curvature at all, e.g. every
        ReLU of the network is dead). From Ritz values it is a lower bound on the condition
        number of the block restricted to the Krylov space.
    num_steps : int
        Lanczos steps taken.
    exhausted : bool
        The Krylov space became invariant: the values are exact for that subspace.
    ritz_values : np.ndarray
        All Ritz values, ascending.
    """

    lambda_max: float
    lambda_min: float
    condition_number: float
    num_steps: int
    exhausted: bool
    ritz_values: np.ndarray


def _condition_number(lambda_max: float, lambda_min: float, kind: str, dtype: torch.dtype) -> float:
    """λ_max/λ_min; inf below the precision of the products (10·eps·λ_max), nan if indefinite."""
    if not lambda_max > 0:  # a zero block (no curvature at all) or a negative definite one
        return math.nan
    floor = 10 * torch.finfo(dtype).eps * lambda_max
    if lambda_min > floor:
        return lambda_max / lambda_min
    if kind == "hessian" and lambda_min < -floor:
        return math.nan
    return math.inf


@contextlib.contextmanager
def _full_float32_convolutions() -> Iterator[None]:
    """cuDNN's convolutions in full float32 for the curvature products: its default, TF32,
    keeps about 1e-3 of a product, and :func:`_condition_number`'s floor assumes float32."""
    conv = getattr(torch.backends.cudnn, "conv", None)  # its fp32_precision: PyTorch 2.9 on
    owner, name, full = (conv, "fp32_precision", "ieee") if conv is not None else (
        torch.backends.cudnn, "allow_tf32", False)  # older PyTorch (the floor is 2.2)
    saved = getattr(owner, name)
    setattr(owner, name, full)
    try:
        yield
    finally:
        setattr(owner, name, saved)


def _save_buffers(net: nn.Module) -> list[tuple[Tensor, Tensor]]:
    return [(b, b.detach().clone()) for b in net.buffers()]


def _restore_buffers(saved: list[tuple[Tensor, Tensor]]) -> None:
    with torch.no_grad():
        for buffer, copy in saved:
            buffer.copy_(copy)


class _Curvature:
    """Products with each layer's curvature block, sharing one forward pass of the network.

    Gauss–Newton: ``G_l v = J_lᵀ (∇²_out L) J_l v`` with ``J_l = ∂out/∂W_l``; ``J_l v`` comes from
    the double-backward trick (differentiate ``J_lᵀ u`` with respect to ``u``). Hessian:
    ``H_ll v = ∂(∇_{W_l} L · v)/∂W_l``. Only :func:`torch.autograd.grad` is used, so ``.grad`` of
    the parameters is never written.
    """

    def __init__(self, net: nn.Module, z: Tensor, loss_fn: LossFn, weights: Sequence[Tensor],
                 kind: str) -> None:
        self.kind = kind
        self.weights = list(weights)
        self.out = net(z)
        loss = loss_fn(self.out)
        if loss.ndim != 0:
            raise ValueError(f"loss_fn must return a scalar, got shape {tuple(loss.shape)}")
        trainable = [w for w in self.weights if w.requires_grad]  # a frozen layer: no block
        found = iter(torch.autograd.grad(
            loss, trainable, retain_graph=True, create_graph=kind == "hessian",
            allow_unused=True,
        ) if trainable else ())
        grads = [next(found) if w.requires_grad else None for w in self.weights]
        self.grads = [g if g is not None else torch.zeros_like(w)
                      for g, w in zip(grads, self.weights, strict=True)]
        self.used = [g is not None for g in grads]  # in the loss's graph, and trained
        if kind == "gauss_newton":
            self._dummy = torch.zeros_like(self.out, requires_grad=True)
            detached = self.out.detach().requires_grad_(True)
            out_grad = torch.autograd.grad(loss_fn(detached), detached, create_graph=True)[0]
            self._out_point, self._out_grad = detached, out_grad

    def _output_hessian(self, u: Tensor) -> Tensor:
        if not self._out_grad.requires_grad:  # loss linear in the output
            return torch.zeros_like(u)
        return torch.autograd.grad(self._out_grad, self._out_point, u, retain_graph=True)[0]

    def matvec(self, index: int) -> Callable[[Tensor], Tensor]:
        """``v ↦ M_ll v`` (flat) for layer ``index``."""
        weight = self.weights[index]
        if self.kind == "hessian":
            grad = self.grads[index]

            def hessian_product(v: Tensor) -> Tensor:
                if not grad.requires_grad:  # a loss linear in this layer: no curvature
                    return torch.zeros_like(v)
                (hv,) = torch.autograd.grad(grad, weight, v.view_as(weight), retain_graph=True)
                return hv.reshape(-1)

            return hessian_product
        (transposed,) = torch.autograd.grad(
            self.out, weight, self._dummy, create_graph=True, retain_graph=True
        )

        def gauss_newton_product(v: Tensor) -> Tensor:
            (jv,) = torch.autograd.grad(transposed, self._dummy, v.view_as(weight),
                                        retain_graph=True)
            (gv,) = torch.autograd.grad(self.out, weight, self._output_hessian(jv),
                                        retain_graph=True)
            return gv.reshape(-1)

        return gauss_newton_product


def _estimate(matvec: Callable[[Tensor], Tensor], start: Tensor, num_steps: int,
              kind: str) -> CurvatureEstimate:
    result = lanczos(matvec, start, num_steps)
    lambda_max = float(result.ritz_values[-1])
    lambda_min = float(result.ritz_values[0])
    return CurvatureEstimate(
        lambda_max=lambda_max,
        lambda_min=lambda_min,
        condition_number=_condition_number(lambda_max, lambda_min, kind, start.dtype),
        num_steps=result.num_steps,
        exhausted=result.exhausted,
        ritz_values=result.ritz_values,
    )


def _start_vector(gradient: Tensor, start: str, generator: torch.Generator) -> Tensor:
    if start == "gradient" and bool(gradient.abs().sum() > 0):
        return gradient.detach().reshape(-1).clone()
    noise = torch.randn(gradient.numel(), generator=generator, dtype=torch.float64)
    return noise.to(gradient.dtype).to(gradient.device)  # cast on the CPU: MPS has no float64


def curvature_eigenvalues(
    net: nn.Module,
    z: Tensor,
    loss_fn: LossFn,
    layers: Sequence[str] | None = None,
    *,
    kind: str = "gauss_newton",
    num_steps: int = 20,
    start: str = "gradient",
    seed: int = 0,
) -> dict[str, CurvatureEstimate]:
    r"""Extreme eigenvalues of each layer's block of the curvature matrix, by Lanczos.

    Parameters
    ----------
    net : nn.Module
        The network; it is evaluated as it is (train mode stays train mode) and its buffers are
        restored afterwards.
    z : torch.Tensor
        Its input.
    loss_fn : callable
        ``out ↦ scalar loss``, e.g. :func:`torch.nn.functional.mse_loss` against the
        observation; twice differentiable.
    layers : sequence of str or None
        Module paths of the ``nn.Conv2d`` layers to analyse (see :func:`conv_layers`); None
        analyses all.
    kind : {"gauss_newton", "hessian"}
        The curvature matrix: the Gauss–Newton matrix (positive semi-definite; for the MSE loss
        the Fisher information of a Gaussian likelihood) or the Hessian.
    num_steps : int
        Lanczos steps per layer, 2 to :data:`MAX_LANCZOS_STEPS` (capped at the layer's number of
        weights); each costs one curvature-vector product (about two backward passes).
    start : {"gradient", "random"}
        Start vector of the Lanczos iteration: the layer's current gradient, or a Gaussian
        vector from a generator seeded with ``seed``. See Notes.
    seed : int
        Seed of the random start vectors (also used when a gradient is exactly zero).

    Returns
    -------
    dict of str to CurvatureEstimate
        Per layer, in network order; NaN values (no Lanczos step) for a layer that is frozen
        (``requires_grad=False``) or not in the output's graph: it has no block to analyse.

    Raises
    ------
    ValueError
        For an unknown ``kind`` or ``start``, an unknown layer name, ``num_steps`` out of range,
        or a ``loss_fn`` that does not return a scalar.

    Notes
    -----
    For the loss :math:`L(\theta) = \ell(f_\theta(z))` and layer weights :math:`W_l`
    (flattened, :math:`n_l` entries) the blocks are

    .. math::

        G_{ll} = J_l^\top \nabla^2_f \ell \, J_l, \quad J_l = \partial f / \partial W_l,
        \qquad H_{ll} = \partial^2 L / \partial W_l^2 ,

    and for :math:`\ell(f) = \operatorname{mean}((Af - y)^2)` over :math:`N` measurements,
    :math:`\nabla^2_f \ell = (2/N) A^\top A`. Only products with the blocks are formed
    (no :math:`n_l \times n_l` matrix). Huang et al., "Layer-wise Conditioning Analysis in
    Exploring the Learning Dynamics of DNNs", ECCV 2020.

    The smallest eigenvalue of a large block is approximate: ``lambda_min`` is a Ritz value
    after ``num_steps`` steps and bounds the true smallest eigenvalue from above, so the
    reported condition number is a lower bound that grows with ``num_steps``; compare runs at
    equal ``num_steps``. Many blocks here are exactly singular — a layer followed by ReLU and
    channel/batch normalisation is scale-invariant per output channel, and a layer with more
    weights than measurements has a rank-deficient :math:`J_l` — so the condition number of the
    whole block is infinite. Starting at the gradient (default) restricts the analysis to the
    Krylov space of the gradient, the directions the optimiser actually moves in: for the
    Gauss–Newton block the gradient :math:`J_l^\top \nabla_f \ell` lies in the range of
    :math:`G_{ll}`, so the null space is excluded and ``lambda_min`` estimates the smallest
    eigenvalue *that the gradient excites*. ``start="random"`` analyses the whole block (its
    ``lambda_min`` then approaches 0 for a singular block).
    """
    check_choice("kind", kind, CURVATURES)
    check_choice("start", start, STARTS)
    num_steps = _check_steps(num_steps)
    seed = check_int("seed", seed, minimum=0)
    all_layers = conv_layers(net)
    if isinstance(layers, str):  # one layer's name
        layers = [layers]
    if layers is None:
        chosen = all_layers
    else:
        known = dict(all_layers)
        unknown = [name for name in layers if name not in known]
        if unknown:
            raise ValueError(
                f"unknown layer {', '.join(map(repr, unknown))}; the convolution layers are: "
                f"{', '.join(name for name, _ in all_layers)}"
            )
        chosen = [(name, known[name]) for name in layers]
        if not chosen:
            raise ValueError("layers is empty: name at least one convolution layer, or pass "
                             "None for all")
    generator = torch.Generator().manual_seed(seed)
    saved = _save_buffers(net)
    # the extra forward pass draws a user network's dropout from the global generators:
    # forked, so that the fit's own draws, and the caller's state, stay as they were
    gpus = [z.device.index if z.device.index is not None else torch.cuda.current_device()] \
        if z.device.type == "cuda" else []
    try:
        with torch.enable_grad(), _full_float32_convolutions(), \
                torch.random.fork_rng(devices=gpus):
            curvature = _Curvature(net, z, loss_fn, [w for _, w in chosen], kind)
            estimates = {}
            for index, (name, _) in enumerate(chosen):
                if not curvature.used[index]:  # frozen, or not in the output's graph
                    estimates[name] = CurvatureEstimate(math.nan, math.nan, math.nan, 0, False,
                                                        np.array([math.nan]))
                    continue
                vector = _start_vector(curvature.grads[index], start, generator)
                estimates[name] = _estimate(curvature.matvec(index), vector, num_steps, kind)
            del curvature
    finally:
        _restore_buffers(saved)
    return estimates


# --------------------------------------------------------------------------- monitors


class Monitor:
    """Base of the monitors: a fit callback that records per-layer values every ``every`` steps.

    Subclasses implement :meth:`measure`, returning one value per layer. Values are recorded at
    step 1, at every multiple of ``every`` and at ``last`` (the fit's final iteration, when it
    is known); calling the monitor returns False (never stops the fit). A monitor records one
    fit (``one_fit``: :func:`deepprior.reconstruct` refuses it for a call of several).

    Parameters
    ----------
    every : int
        Recording interval in iterations (>= 1).
    last : int or None
        Also record at this iteration (the budget of a fit of fixed length).

    Attributes
    ----------
    layers : list of str
        Module paths of the watched layers (filled at the first call).
    steps : list of int
        Iterations at which values were recorded.
    values : list of list of float
        One list per recorded step, one value per layer.
    seconds : float
        Time spent in the monitor.
    """

    name = "monitor"
    one_fit = True

    def __init__(self, *, every: int = 10, last: int | None = None) -> None:
        self.every = check_int("every", every, minimum=1)
        self.last = None if last is None else check_int("last", last, minimum=1)
        self.layers: list[str] = []
        self.steps: list[int] = []
        self.values: list[list[float]] = []
        self.seconds = 0.0
        self._net: nn.Module | None = None
        self._weights: list[nn.Parameter] = []
        self._groups: list[int] = []  # each layer's convolution groups
        self._step = 0  # the last iteration seen

    def due(self, step: int) -> bool:
        """True at the steps where values are recorded: 1, the multiples of ``every``, last."""
        return step == 1 or step % self.every == 0 or step == self.last

    def check_net(self, net: nn.Module, *, owner: str | None = None) -> None:
        """Refuse, before a fit (:func:`deepprior.reconstruct` asks), a network without
        layers to watch, or a fit after the one recorded."""
        conv_layers(net)
        if self._net is not None:
            self._refuse_another_fit(owner)

    def _refuse_another_fit(self, owner: str | None) -> None:
        raise ValueError(f"this {owner or type(self).__name__} already recorded a fit (to "
                         f"iteration {self._step}); create a new one for each fit")

    def bind(self, net: nn.Module, step: int | None = None, *, owner: str | None = None) -> None:
        """Attach to ``net`` at the first call; a monitor records one fit only (another
        network, or a step that is not after the last one seen, is another fit). ``owner``:
        the name the refusal gives (a :class:`Diagnostics` holding the monitor)."""
        if self._net is None:
            layers = conv_layers(net)
            self._net = net
            self.layers = [name for name, _ in layers]
            self._weights = [w for _, w in layers]
            modules = dict(net.named_modules())
            self._groups = [modules[name].groups for name in self.layers]
        elif net is not self._net or (step is not None and step <= self._step):
            self._refuse_another_fit(owner)
        if step is not None:
            self._step = step

    def __call__(self, state: FitState) -> bool:
        self.bind(state.net, state.step)
        self.observe_timed(state)
        return False

    def observe_timed(self, state: FitState) -> None:
        """:meth:`observe`, its time added to :attr:`seconds` (also when cut short)."""
        start = time.perf_counter()
        try:
            self.observe(state)
        finally:
            self.seconds += time.perf_counter() - start

    def observe(self, state: FitState) -> None:
        """Record when the step is due (subclasses may look at other steps too): measured
        first, so that a measurement cut short (Ctrl-C) leaves no step without its values."""
        if self.due(state.step):
            values = self.measure(state)
            self.steps.append(state.step)
            self.values.append(values)

    def measure(self, state: FitState) -> list[float]:
        """One value per layer at this step."""
        raise NotImplementedError

    def _gradients(self) -> list[Tensor]:
        return [w.grad.detach() if w.grad is not None else torch.zeros_like(w)
                for w in self._weights]

    def to_dict(self) -> dict[str, Any]:
        """The series, JSON-ready (plain floats; NaN and infinity as None)."""
        return {
            "layers": list(self.layers),
            "every": self.every,
            "steps": list(self.steps),
            "values": jsonable(self.values),
            "seconds": round(self.seconds, 4),
        }


class GradientNorms(Monitor):
    r"""Norm of each layer's weight gradient, :math:`\lVert \partial L / \partial W_l \rVert_F`.

    Notes
    -----
    Without normalisation the gradients of the early layers of a deep convolutional generator
    fitted to one image vanish (Dai & Heckel 2019: about 1e-7 for a 6-layer 3×3 net); channel
    normalisation keeps them of order one. The norms are those of the loss the fit minimises,
    read after its backward pass.
    """

    name = "grad_norm"

    def measure(self, state: FitState) -> list[float]:
        norms = torch.stack([g.norm() for g in self._gradients()])
        return [float(v) for v in norms.cpu().tolist()]  # one host read for all layers


class GradientOscillation(Monitor):
    r"""Cosine between the gradients of adjacent iterations, per layer.

    At each recorded step :math:`t` (every ``every`` steps; not step 1, which has no
    predecessor) the monitor stores :math:`\cos(g_t, g_{t-1})` with :math:`g_{t-1}` kept from
    the previous iteration. Values near −1 mean the iterates zig-zag across a valley (step size
    too large for the curvature along some direction); near +1, steady descent. NaN when one of
    the gradients is zero.
    """

    name = "grad_cosine"

    def __init__(self, *, every: int = 10, last: int | None = None) -> None:
        super().__init__(every=every, last=last)
        self._previous: tuple[int, list[Tensor]] | None = None

    def observe(self, state: FitState) -> None:
        step = state.step
        if step > 1 and self.due(step) and self._previous and self._previous[0] == step - 1:
            current = self._gradients()
            cosines = []
            for now, before in zip(current, self._previous[1], strict=True):
                denominator = now.norm() * before.norm()
                cosines.append(torch.where(denominator > 0, (now * before).sum() / denominator,
                                           torch.full_like(denominator, math.nan)))
            self.steps.append(step)
            self.values.append([float(v) for v in torch.stack(cosines).cpu().tolist()])
        if self.due(step + 1):
            self._previous = (step, [g.clone() for g in self._gradients()])
        else:
            self._previous = None


class EffectiveRank(Monitor):
    """Effective rank (Roy & Vetterli 2007) and numerical rank of each weight matrix.

    Weights are reshaped by :func:`weight_matrix` (1×1 convolutions as ``k × k`` matrices,
    3×3 ones as ``out × 9·in``). ``values`` holds the entropy effective rank;
    ``numerical_ranks`` the number of singular values above ``threshold`` times the largest.

    Parameters
    ----------
    every : int
        Recording interval.
    threshold : float
        Relative threshold of the numerical rank, in (0, 1); by default 0.01.
    """

    name = "effective_rank"

    def __init__(self, *, every: int = 10, threshold: float = 0.01,
                 last: int | None = None) -> None:
        super().__init__(every=every, last=last)
        self.threshold = check_float("threshold", threshold, low=0, high=1, low_open=True,
                                     high_open=True)
        self.numerical_ranks: list[list[int]] = []

    def measure(self, state: FitState) -> list[float]:
        matrices = [weight_matrix(w, g) for w, g in zip(self._weights, self._groups,
                                                         strict=True)]
        ranks = [numerical_rank(m, self.threshold) for m in matrices]
        values = [effective_rank(m) for m in matrices]
        self.numerical_ranks.append(ranks)
        return values

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["threshold"] = self.threshold
        data["numerical_rank"] = [list(r) for r in self.numerical_ranks]
        data["matrix_shapes"] = [list(weight_matrix(w, g).shape)
                                 for w, g in zip(self._weights, self._groups, strict=True)]
        return data


class Conditioning(Monitor):
    """Extreme eigenvalues and condition number of each layer's curvature block.

    Runs :func:`curvature_eigenvalues` at step 1 and every ``every`` steps (it costs about
    ``2 · num_steps`` backward passes per layer, so keep ``every`` large). ``values`` holds the
    condition numbers; ``lambda_max``, ``lambda_min`` and ``lanczos_steps`` the rest.

    Parameters
    ----------
    every : int
        Interval in iterations, by default 100.
    num_steps : int
        Lanczos steps per layer (2 to :data:`MAX_LANCZOS_STEPS`), by default 20.
    kind : {"gauss_newton", "hessian"}
        The curvature matrix, by default the Gauss–Newton one.
    start : {"gradient", "random"}
        Lanczos start vector, by default the layer's gradient (see :func:`curvature_eigenvalues`).
    seed : int
        Seed of random start vectors.

    Notes
    -----
    The curvature is that of the fit's own loss (``FitState.loss_fn``), evaluated at the
    unperturbed input ``z`` (the Deep Image Prior's per-iteration input noise is not applied) in
    the network's current mode.
    """

    name = "condition_number"

    def __init__(
        self,
        *,
        every: int = 100,
        num_steps: int = 20,
        kind: str = "gauss_newton",
        start: str = "gradient",
        seed: int = 0,
        last: int | None = None,
    ) -> None:
        super().__init__(every=every, last=last)
        self.num_steps = _check_steps(num_steps)
        self.kind = check_choice("kind", kind, CURVATURES)
        self.start = check_choice("start", start, STARTS)
        self.seed = check_int("seed", seed, minimum=0)
        self.lambda_max: list[list[float]] = []
        self.lambda_min: list[list[float]] = []
        self.lanczos_steps: list[list[int]] = []

    def measure(self, state: FitState) -> list[float]:
        estimates = curvature_eigenvalues(
            state.net, state.z, state.loss_fn, kind=self.kind, num_steps=self.num_steps,
            start=self.start, seed=self.seed + state.step,
        )
        ordered = [estimates[name] for name in self.layers]
        self.lambda_max.append([e.lambda_max for e in ordered])
        self.lambda_min.append([e.lambda_min for e in ordered])
        self.lanczos_steps.append([e.num_steps for e in ordered])
        return [e.condition_number for e in ordered]

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data.update(
            kind=self.kind,
            start=self.start,
            num_steps=self.num_steps,
            lambda_max=jsonable(self.lambda_max),
            lambda_min=jsonable(self.lambda_min),
            lanczos_steps=[list(s) for s in self.lanczos_steps],
        )
        return data


class Diagnostics:
    """All monitors in one fit callback: gradient norms, oscillation, effective rank, curvature.

    Parameters
    ----------
    every : int
        Interval of the cheap monitors (gradient norms, oscillation, ranks, loss), by default 10.
    curvature_every : int
        Interval of the curvature analysis, by default 0 (off: it costs about
        ``2 · curvature_iters`` backward passes per layer).
    curvature_iters : int
        Lanczos steps per layer, by default 20 (at most :data:`MAX_LANCZOS_STEPS`).
    curvature : {"gauss_newton", "hessian"}
        The curvature matrix, by default Gauss–Newton.
    start : {"gradient", "random"}
        Lanczos start vector, by default the layer's gradient.
    rank_threshold : float
        Relative threshold of the numerical rank, by default 0.01.
    seed : int
        Seed of the random Lanczos start vectors.
    last : int or None
        The fit's final iteration, when it is known (a fixed budget): every series records it
        too, so that its last value is the end of the fit.

    Raises
    ------
    ValueError, TypeError
        For intervals that are not positive integers, or an unknown ``curvature`` / ``start``.

    Examples
    --------
    >>> from deepprior.analysis import Diagnostics
    >>> Diagnostics(every=5).monitors.keys()
    dict_keys(['grad_norm', 'grad_cosine', 'effective_rank'])
    """

    one_fit = True  # its monitors record one network's fit

    def __init__(
        self,
        *,
        every: int = 10,
        curvature_every: int = 0,
        curvature_iters: int = 20,
        curvature: str = "gauss_newton",
        start: str = "gradient",
        rank_threshold: float = 0.01,
        seed: int = 0,
        last: int | None = None,
    ) -> None:
        self.every = check_int("every", every, minimum=1)
        curvature_every = check_int("curvature_every", curvature_every, minimum=0)
        self.monitors: dict[str, Monitor] = {
            "grad_norm": GradientNorms(every=every, last=last),
            "grad_cosine": GradientOscillation(every=every, last=last),
            "effective_rank": EffectiveRank(every=every, threshold=rank_threshold, last=last),
        }
        conditioning = Conditioning(
            every=max(1, curvature_every), num_steps=curvature_iters,
            kind=check_choice("curvature", curvature, CURVATURES), start=start, seed=seed,
            last=last)
        if curvature_every > 0:
            self.monitors["condition_number"] = conditioning
        self.last = conditioning.last
        self.loss_steps: list[int] = []
        self.losses: list[float] = []
        self.seconds = 0.0

    @property
    def layers(self) -> list[str]:
        """Module paths of the watched layers (empty before the first call)."""
        return list(self.monitors["grad_norm"].layers)

    def check_net(self, net: nn.Module) -> None:
        """Refuse, before a fit, a network the monitors cannot watch, or a second fit."""
        for monitor in self.monitors.values():
            monitor.check_net(net, owner="Diagnostics")

    def __call__(self, state: FitState) -> bool:
        start = time.perf_counter()
        try:
            for monitor in self.monitors.values():  # another fit is refused before anything
                monitor.bind(state.net, state.step, owner="Diagnostics")  # of it is recorded
            if state.step in (1, self.last) or state.step % self.every == 0:
                self.loss_steps.append(state.step)
                self.losses.append(float(state.loss))
            for monitor in self.monitors.values():
                monitor.observe_timed(state)
        finally:
            self.seconds += time.perf_counter() - start
        return False

    def to_dict(self) -> dict[str, Any]:
        """Every series, JSON-ready: ``{"layers", "loss", <monitor name>: monitor.to_dict()}``."""
        data: dict[str, Any] = {
            "layers": self.layers,
            "seconds": round(self.seconds, 4),
            "loss": {"steps": list(self.loss_steps), "values": jsonable(self.losses)},
        }
        for name, monitor in self.monitors.items():
            data[name] = monitor.to_dict()
        return data

    def summary(self) -> dict[str, Any]:
        """Headline numbers of the run (None where nothing was recorded).

        Returns
        -------
        dict
            ``grad_norm_first`` / ``grad_norm_last``: first and output layer gradient norms at
            step 1; ``grad_norm_first_median`` / ``grad_norm_last_median``: their medians over
            the run; ``grad_ratio_median``: median over steps of first / last;
            ``cosine_median``: median over steps and layers of the adjacent-step cosine;
            ``condition_median_initial`` / ``condition_median_final``: median over layers of the
            condition number at the first and last curvature step (``inf`` when most blocks are
            singular); ``condition_median``: median over layers and steps;
            ``effective_rank_first``: of the first layer at the last recorded step;
            ``effective_rank_median``: median over the layers whose matrix has more than one row
            and column (an output layer to a grayscale image has rank 1 by shape);
            ``monitor_seconds``.
        """
        norms = self.monitors["grad_norm"].values
        result: dict[str, Any] = {"layers": len(self.layers), "monitor_seconds": self.seconds}
        if norms:
            first = [row[0] for row in norms]
            last = [row[-1] for row in norms]
            ratios = [a / b for a, b in zip(first, last, strict=True) if b > 0]
            result.update(
                grad_norm_first=first[0],
                grad_norm_last=last[0],
                grad_norm_first_median=statistics.median(first),
                grad_norm_last_median=statistics.median(last),
                grad_ratio_median=statistics.median(ratios) if ratios else None,
            )
        cosines = [v for row in self.monitors["grad_cosine"].values for v in row
                   if math.isfinite(v)]
        result["cosine_median"] = statistics.median(cosines) if cosines else None
        conditioning = self.monitors.get("condition_number")
        if conditioning is not None and conditioning.values:
            rows = conditioning.values
            result.update(
                condition_median_initial=_nan_median(rows[0]),
                condition_median_final=_nan_median(rows[-1]),
                condition_median=_nan_median([v for row in rows for v in row]),
            )
        rank_monitor = self.monitors["effective_rank"]
        if rank_monitor.values:
            final = rank_monitor.values[-1]
            shapes = [weight_matrix(w, g).shape for w, g in zip(
                rank_monitor._weights, rank_monitor._groups, strict=True)]
            wide = [v for v, shape in zip(final, shapes, strict=True) if min(shape) > 1]
            result.update(
                effective_rank_first=final[0],
                effective_rank_median=statistics.median(wide) if wide else None,
            )
        return result


# --------------------------------------------------------------------------- helpers


def _nan_median(values: Sequence[float]) -> float | None:
    kept = [v for v in values if not math.isnan(v)]
    return statistics.median(kept) if kept else None


def _check_steps(num_steps: object) -> int:
    steps = check_int("curvature_iters (Lanczos steps)", num_steps, minimum=2)
    if steps > MAX_LANCZOS_STEPS:
        raise ValueError(
            f"curvature_iters (Lanczos steps) must be at most {MAX_LANCZOS_STEPS}, got {steps}; "
            "the extreme eigenvalues converge in tens of steps"
        )
    return steps
