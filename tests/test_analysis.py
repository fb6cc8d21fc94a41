"""Diagnostics monitors: curvature eigenvalues against dense matrices, ranks, no side effects."""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from deepprior import GaussianSensing, Identity, reconstruct
from deepprior.analysis import (
    Conditioning,
    Diagnostics,
    EffectiveRank,
    GradientNorms,
    GradientOscillation,
    conv_layers,
    curvature_eigenvalues,
    effective_rank,
    lanczos,
    numerical_rank,
    weight_matrix,
)
from deepprior.fit import FitState
from deepprior.nets import build_net

TINY = {"channels": 2, "num_layers": 2}


def _tiny_problem(norm, seed=0):
    """A tiny conv generator in float64 and a target image: layers of 36, 36 and 2 weights."""
    net, z = build_net("conv_generator", (1, 7, 5), norm=norm, seed=seed, **TINY)
    net = net.double()
    z = z.double()
    g = torch.Generator().manual_seed(seed + 1)
    target = torch.rand(1, 1, 7, 5, generator=g, dtype=torch.float64)
    return net, z, target


def mse_loss(target):
    """The fit's loss against ``target`` (1, C, H, W), as a function of the output."""
    return lambda out: torch.mean((out - target) ** 2)


def _dense_block(net, z, target, name, kind):
    """The layer's Hessian block (torch.autograd.functional.hessian) or Gauss-Newton block."""
    weight = dict(net.named_parameters())[f"{name}.weight"]

    def output_of(w):
        return functional_call(net, {f"{name}.weight": w}, (z,))

    if kind == "hessian":
        def loss_of(w):
            return torch.mean((output_of(w) - target) ** 2)

        block = torch.autograd.functional.hessian(loss_of, weight.detach())
        return block.reshape(weight.numel(), weight.numel())
    jacobian = torch.autograd.functional.jacobian(output_of, weight.detach())
    jacobian = jacobian.reshape(-1, weight.numel())
    return 2.0 / target.numel() * jacobian.T @ jacobian


@pytest.mark.parametrize("norm", ["none", "channel"])
@pytest.mark.parametrize("kind", ["hessian", "gauss_newton"])
def test_extreme_eigenvalues_match_dense_eigendecomposition(norm, kind):
    net, z, target = _tiny_problem(norm)
    estimates = curvature_eigenvalues(
        net, z, mse_loss(target), kind=kind, num_steps=40, start="random", seed=3
    )
    assert list(estimates) == ["body.0.0", "body.1.0", "body.2.0"]
    for name, estimate in estimates.items():
        eigenvalues = torch.linalg.eigvalsh(_dense_block(net, z, target, name, kind))
        top, bottom = float(eigenvalues[-1]), float(eigenvalues[0])
        scale = max(abs(top), abs(bottom))
        assert estimate.lambda_max == pytest.approx(top, rel=0.01, abs=1e-9 * scale), name
        # within 1% of the value, or (for an eigenvalue that is 0 up to rounding) of the scale
        assert abs(estimate.lambda_min - bottom) <= 0.01 * max(abs(bottom), 1e-6 * scale), name


def test_curvature_products_run_in_full_float32_and_the_setting_is_restored():
    """cuDNN's TF32 (its default for convolutions on a GPU) keeps ~1e-3 of a product: too
    coarse for the condition numbers; the curvature products turn it off, and only they."""
    net, z, target = _tiny_problem("none")
    conv = torch.backends.cudnn.conv
    before = conv.fp32_precision
    seen = set()

    def loss_fn(out):
        seen.add(conv.fp32_precision)
        return mse_loss(target)(out)

    curvature_eigenvalues(net, z, loss_fn, num_steps=3.0)  # an integral float: the int 3
    assert seen == {"ieee"} and conv.fp32_precision == before


def test_hessian_block_of_normalized_layer_is_indefinite_without_it_equals_gauss_newton():
    # without normalization the output is piecewise linear in one ReLU layer's weights, so that
    # layer's Hessian block is its Gauss-Newton block; channel norm makes it indefinite
    net, z, target = _tiny_problem("channel")
    estimates = curvature_eigenvalues(net, z, mse_loss(target), kind="hessian", num_steps=40,
                                      start="random")
    first = estimates["body.0.0"]
    assert first.lambda_min < 0 < first.lambda_max
    assert math.isnan(first.condition_number)
    net, z, target = _tiny_problem("none")
    hessian = _dense_block(net, z, target, "body.1.0", "hessian")
    gauss_newton = _dense_block(net, z, target, "body.1.0", "gauss_newton")
    torch.testing.assert_close(hessian, gauss_newton)


def test_gradient_start_sees_only_the_range_of_the_gauss_newton_block():
    # channel norm makes each output channel's weights scale-invariant: the block is singular,
    # but the gradient lies in its range, so Lanczos from the gradient never sees the null space
    net, z, target = _tiny_problem("channel")
    loss_fn = mse_loss(target)
    from_gradient = curvature_eigenvalues(net, z, loss_fn, num_steps=40, start="gradient")
    whole = curvature_eigenvalues(net, z, loss_fn, num_steps=40, start="random")
    block = _dense_block(net, z, target, "body.1.0", "gauss_newton")
    eigenvalues = torch.linalg.eigvalsh(block)
    positive = eigenvalues[eigenvalues > 1e-9 * eigenvalues[-1]]
    assert len(positive) < block.shape[0]  # singular
    estimate = from_gradient["body.1.0"]
    assert estimate.exhausted
    assert estimate.lambda_max == pytest.approx(float(eigenvalues[-1]), rel=0.01)
    assert estimate.lambda_min >= float(positive[0]) * 0.99
    assert math.isfinite(estimate.condition_number)
    assert whole["body.1.0"].lambda_min < 1e-9 * whole["body.1.0"].lambda_max
    assert math.isinf(whole["body.1.0"].condition_number)


def test_dead_network_has_zero_curvature_and_no_condition_number():
    net, z, target = _tiny_problem("none")
    with torch.no_grad():
        net.body[0][0].weight.copy_(-net.body[0][0].weight.abs())  # z >= 0: every ReLU is dead
    estimates = curvature_eigenvalues(net, z, mse_loss(target), num_steps=5)
    for estimate in estimates.values():
        assert estimate.lambda_max == 0.0 and math.isnan(estimate.condition_number)


def test_lanczos_on_a_known_spectrum():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(50, 50, generator=g, dtype=torch.float64))
    spectrum = torch.linspace(0.1, 10.0, 50, dtype=torch.float64)
    matrix = q @ torch.diag(spectrum) @ q.T
    start = torch.randn(50, generator=g, dtype=torch.float64)
    result = lanczos(lambda v: matrix @ v, start, 50)
    np.testing.assert_allclose(result.ritz_values, spectrum.numpy(), rtol=1e-8)
    assert result.weights.sum() == pytest.approx(1.0)
    few = lanczos(lambda v: matrix @ v, start, 12)
    assert few.num_steps == 12 and not few.exhausted
    assert 0.1 <= few.ritz_values[0] and few.ritz_values[-1] <= 10.0 + 1e-9
    assert few.ritz_values[-1] == pytest.approx(10.0, rel=0.02)


def test_lanczos_validates_its_input():
    with pytest.raises(ValueError, match="non-zero and finite"):
        lanczos(lambda v: v, torch.zeros(5), 3)
    with pytest.raises(ValueError, match="at most 200"):
        lanczos(lambda v: v, torch.ones(500), 201)
    with pytest.raises(ValueError, match="integer >= 1"):
        lanczos(lambda v: v, torch.ones(5), 0)
    with pytest.raises(TypeError, match="floating-point torch.Tensor"):
        lanczos(lambda v: v, torch.ones(5, dtype=torch.int64), 3)  # its products were cast
    assert lanczos(lambda v: v, torch.ones(5), np.int64(2)).num_steps == 1  # exhausted
    overflowed = lanczos(lambda v: v * math.inf, torch.ones(5), 3)  # no estimate, not exact
    assert math.isnan(overflowed.ritz_values[0]) and not overflowed.exhausted


# --------------------------------------------------------------------------- ranks


def test_effective_rank_of_known_low_rank_matrices():
    g = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(12, 3, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(9, 3, generator=g, dtype=torch.float64))
    equal = u @ torch.diag(torch.tensor([2.0, 2.0, 2.0], dtype=torch.float64)) @ v.T
    assert effective_rank(equal) == pytest.approx(3.0, rel=1e-9)
    assert numerical_rank(equal) == 3
    s = np.array([3.0, 2.0, 1.0])
    unequal = (u.numpy() * s) @ v.numpy().T  # numpy input works too
    p = s / s.sum()
    assert effective_rank(unequal) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-9)
    assert numerical_rank(unequal, threshold=0.4) == 2
    assert effective_rank(torch.zeros(4, 5)) == 0.0 and numerical_rank(torch.zeros(4, 5)) == 0


def test_rank_functions_validate_their_input():
    with pytest.raises(ValueError, match="must be 2-D"):
        effective_rank(torch.ones(2, 3, 4))
    with pytest.raises(TypeError, match="torch.Tensor or numpy array"):
        effective_rank([[1.0, 2.0]])
    with pytest.raises(ValueError, match="NaN or infinite"):
        effective_rank(torch.tensor([[1.0, math.nan]]))
    with pytest.raises(ValueError, match="threshold must satisfy 0 < threshold < 1"):
        numerical_rank(torch.eye(3), threshold=1.5)


def test_weight_matrix_shapes():
    assert weight_matrix(nn.Conv2d(8, 8, 1, bias=False).weight).shape == (8, 8)
    assert weight_matrix(nn.Conv2d(4, 6, 3).weight).shape == (6, 36)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        weight_matrix(torch.ones(3))
    with pytest.raises(ValueError, match="no nn.Conv2d layer"):
        conv_layers(nn.Linear(2, 2))



def test_a_grouped_convolution_is_the_block_diagonal_matrix_of_its_groups():
    depthwise = nn.Conv2d(4, 4, 1, groups=4, bias=False)
    with torch.no_grad():
        depthwise.weight.copy_(torch.arange(1.0, 5.0).reshape(4, 1, 1, 1))
    matrix = weight_matrix(depthwise.weight, depthwise.groups)
    torch.testing.assert_close(matrix, torch.diag(torch.arange(1.0, 5.0)))  # was 4 x 1: rank 1
    assert numerical_rank(matrix) == 4
    assert weight_matrix(nn.Conv2d(4, 6, 3, groups=2).weight, 2).shape == (6, 36)
    monitor = EffectiveRank(every=1)
    monitor(_state(nn.Sequential(depthwise), 1, [torch.zeros(4, 1, 1, 1)]))
    assert monitor.numerical_ranks == [[4]]
    assert monitor.values[0][0] == pytest.approx(effective_rank(torch.diag(torch.arange(1.0,
                                                                                        5.0))))


# --------------------------------------------------------------------------- monitors


class _TwoConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 2, 1, bias=False)
        self.b = nn.Conv2d(2, 1, 1, bias=False)

    def forward(self, z):
        return self.b(self.a(z))


def _state(net, step, grads):
    for parameter, grad in zip(net.parameters(), grads, strict=True):
        parameter.grad = grad.clone()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    return FitState(step, net, torch.ones(1, 1, 2, 2), None, None, 0.5, torch.zeros(1, 1, 2, 2),
                    optimizer)


def test_gradient_norms_and_oscillation_on_given_gradients():
    net = _TwoConvs()
    norms = GradientNorms(every=2)
    oscillation = GradientOscillation(every=2)
    g_a, g_b = torch.tensor([3.0, 4.0]).reshape(2, 1, 1, 1), torch.tensor([1.0, 0.0]).reshape(
        1, 2, 1, 1)
    for step, sign_b in [(1, 1.0), (2, -1.0), (3, 1.0), (4, 1.0)]:
        state = _state(net, step, [g_a * step, g_b * sign_b])
        assert norms(state) is False and oscillation(state) is False
    assert norms.layers == ["a", "b"]
    assert norms.steps == [1, 2, 4]
    assert norms.values == [[5.0, 1.0], [10.0, 1.0], [20.0, 1.0]]
    assert oscillation.steps == [2, 4]  # step 1 has no predecessor
    assert oscillation.values == [pytest.approx([1.0, -1.0]), pytest.approx([1.0, 1.0])]


def test_monitor_records_one_fit_only():
    norms = GradientNorms(every=1)
    norms(_state(_TwoConvs(), 1, [torch.ones(2, 1, 1, 1), torch.ones(1, 2, 1, 1)]))
    with pytest.raises(ValueError, match="already recorded a fit .*create a new one"):
        norms(_state(_TwoConvs(), 2, [torch.ones(2, 1, 1, 1), torch.ones(1, 2, 1, 1)]))


def test_a_second_fit_of_the_same_network_is_refused_before_anything_is_recorded():
    image = np.random.default_rng(0).random((9, 7)).astype(np.float32)
    net, z = build_net("conv_generator", (1, 9, 7), seed=0, **TINY)
    options = {"net": net, "net_input": z, "stop": "fixed:6", "ensemble": 1,
               "regularizer": "none", "device": "cpu"}
    diagnostics = Diagnostics(every=3)
    reconstruct(image, callback=diagnostics, **options)
    before = diagnostics.to_dict()
    with pytest.raises(ValueError, match=r"this Diagnostics already recorded a fit \(to "
                                         r"iteration 6\)"):
        reconstruct(image, callback=diagnostics, **options)  # the same net: steps appended
    after = diagnostics.to_dict()
    before.pop("seconds"), after.pop("seconds")
    assert after == before  # the first fit's record, untouched


def test_a_network_the_monitors_cannot_watch_is_refused_before_the_fit(monkeypatch):
    """It was refused at iteration 1, after the plan and the progress bar."""
    import deepprior.api

    monkeypatch.setattr(deepprior.api, "fit", lambda *a, **k: pytest.fail("a fit began"))
    net = nn.Sequential(nn.Linear(8, 16), nn.Unflatten(1, (1, 4, 4)), nn.Sigmoid())
    image = np.random.default_rng(0).random((4, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="no nn.Conv2d layer"):
        deepprior.api.dry_run(image, net=net, net_input=torch.rand(1, 8), stop="fixed:3",
                              callback=Diagnostics(), regularizer="none", ensemble=1)


@pytest.mark.parametrize("wrap", [nn.utils.parametrizations.weight_norm,
                                  nn.utils.parametrizations.spectral_norm])
def test_a_reparametrised_convolution_is_refused_by_name(wrap):
    net = nn.Sequential(nn.Conv2d(1, 2, 1), wrap(nn.Conv2d(2, 1, 1)))  # its gradient norm
    with pytest.raises(ValueError, match="layer '1' has a reparametrised weight"):  # read 0
        conv_layers(net)
    with pytest.raises(TypeError, match="net must be a torch.nn.Module"):
        conv_layers("body.0")


def test_a_measurement_cut_short_leaves_no_step_without_its_values():
    class Interrupted(GradientNorms):
        def measure(self, state):
            raise KeyboardInterrupt

    monitor = Interrupted(every=1)
    with pytest.raises(KeyboardInterrupt):
        monitor(_state(_TwoConvs(), 1, [torch.ones(2, 1, 1, 1), torch.ones(1, 2, 1, 1)]))
    assert monitor.steps == [] and monitor.values == []


class _Partly(nn.Module):
    """A frozen first layer, an unused one, then a trained one; dropout in between."""

    def __init__(self):
        super().__init__()
        self.frozen = nn.Conv2d(1, 2, 1, bias=False).requires_grad_(False)
        self.unused = nn.Conv2d(2, 2, 1, bias=False)
        self.last = nn.Conv2d(2, 1, 1, bias=False)
        self.drop = nn.Dropout(0.2)

    def forward(self, z):
        return torch.sigmoid(self.last(self.drop(torch.relu(self.frozen(z)))))


def test_curvature_of_a_frozen_or_unused_layer_is_nan_and_dropout_draws_are_its_own():
    torch.manual_seed(0)
    net = _Partly()
    z = torch.rand(1, 1, 6, 5, generator=torch.Generator().manual_seed(1))
    target = torch.rand(1, 1, 6, 5, generator=torch.Generator().manual_seed(2))
    rng = torch.get_rng_state()
    for kind in ("gauss_newton", "hessian"):  # both raised torch's "not used in the graph"
        estimates = curvature_eigenvalues(net, z, mse_loss(target), kind=kind, num_steps=4)
        assert math.isnan(estimates["frozen"].lambda_max)
        assert math.isnan(estimates["unused"].condition_number)
        assert estimates["last"].lambda_max > 0
    assert torch.equal(torch.get_rng_state(), rng)  # the extra forward's dropout: forked
    assert curvature_eigenvalues(net, z, mse_loss(target), layers="last", num_steps=2).keys() \
        == {"last"}  # one layer by its name


def test_callback_leaves_grads_buffers_and_rng_alone():
    net, z = build_net("conv_generator", (1, 9, 7), norm="batch", seed=0, **TINY)
    target = torch.rand(1, 1, 9, 7, generator=torch.Generator().manual_seed(0))
    output = net(z)
    loss = torch.mean((output - target) ** 2)
    loss.backward()
    grads = [p.grad.clone() for p in net.parameters()]
    state_before = {k: v.clone() for k, v in net.state_dict().items()}
    rng_before = torch.get_rng_state()
    num_parameters = sum(p.numel() for p in net.parameters())
    diagnostics = Diagnostics(every=1, curvature_every=1, curvature_iters=5)
    optimizer = torch.optim.Adam(net.parameters())
    diagnostics(FitState(1, net, z, target, Identity((1, 9, 7)), loss.item(), output.detach(),
                         optimizer))
    assert all(torch.equal(p.grad, g) for p, g in zip(net.parameters(), grads, strict=True))
    after = net.state_dict()
    assert all(torch.equal(after[k], v) for k, v in state_before.items())  # BN running stats
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert sum(p.numel() for p in net.parameters()) == num_parameters
    assert not optimizer.state
    assert not any(m._forward_hooks or m._backward_hooks for m in net.modules())


@pytest.mark.parametrize("norm", ["batch", "none"])
def test_fit_is_bit_identical_with_and_without_monitors(norm):
    g = torch.Generator().manual_seed(5)
    image = torch.rand(11, 9, generator=g).numpy()
    options = {"net": "conv_generator", "norm": norm, "max_num_iter": 8, "stop": "fixed:8",
               "net_options": TINY, "device": "cpu", "seed": 2}
    diagnostics = Diagnostics(every=1, curvature_every=3, curvature_iters=4)
    with_monitors = reconstruct(image, callback=diagnostics, **options)
    without = reconstruct(image, **options)
    assert np.array_equal(with_monitors.image, without.image)
    assert np.array_equal(with_monitors.history["loss"], without.history["loss"])
    assert with_monitors.config["num_parameters"] == without.config["num_parameters"]
    data = diagnostics.to_dict()
    json.dumps(data, allow_nan=False)  # JSON-ready
    assert data["loss"]["steps"] == list(range(1, 9))
    assert data["condition_number"]["steps"] == [1, 3, 6]
    assert len(data["grad_norm"]["values"]) == 8 and len(data["grad_norm"]["values"][0]) == 3
    assert data["grad_cosine"]["steps"] == list(range(2, 9))
    assert data["effective_rank"]["matrix_shapes"] == [[2, 18], [2, 18], [1, 2]]
    summary = diagnostics.summary()
    assert summary["grad_norm_first"] == data["grad_norm"]["values"][0][0]
    assert summary["condition_median_initial"] is not None
    assert diagnostics.layers == ["body.0.0", "body.1.0", "body.2.0"]


def test_fit_state_loss_is_the_fit_loss():
    image = np.random.default_rng(0).random((5, 4)).astype(np.float32)
    operator = GaussianSensing(7, (1, 5, 4), seed=0)
    y = torch.arange(7, dtype=torch.float32).reshape(1, 1, 7)
    out = torch.from_numpy(image)[None, None]
    state = FitState(1, None, None, y, operator, 0.0, out, None)
    expected = torch.mean((operator.A(out) - y) ** 2)
    assert float(state.loss_fn(out)) == pytest.approx(float(expected))


def test_constructor_validation_messages():
    with pytest.raises(ValueError, match="every must be an integer >= 1"):
        Diagnostics(every=0)
    with pytest.raises(TypeError, match="every must be an integer"):
        GradientNorms(every=2.5)
    with pytest.raises(ValueError, match="curvature must be one of"):
        Diagnostics(curvature="fisher")
    with pytest.raises(ValueError, match="at most 200"):
        Conditioning(num_steps=500)
    with pytest.raises(ValueError, match="start must be one of"):
        Conditioning(start="ones")
    with pytest.raises(ValueError, match="threshold must satisfy"):
        EffectiveRank(threshold=0)
    net, z, target = _tiny_problem("none")
    with pytest.raises(ValueError, match="unknown layer 'body.9'"):
        curvature_eigenvalues(net, z, mse_loss(target), ["body.9"])
    with pytest.raises(ValueError, match="must return a scalar"):
        curvature_eigenvalues(net, z, lambda out: out, num_steps=3)


def test_a_monitor_is_refused_before_any_fit_for_a_call_of_several(monkeypatch):
    """DIP's denoising default averages two fits: the monitor records one network, so the
    second fit would have failed it after the whole first one."""
    import deepprior

    noisy = deepprior.add_gaussian_noise(deepprior.sample_image("camera", size=16), 0.1, seed=0)
    monkeypatch.setattr(deepprior.api, "fit", lambda *a, **k: pytest.fail("a fit began"))
    for callback in (Diagnostics(every=5), GradientNorms(every=5)):
        with pytest.raises(ValueError, match=f"the callback {type(callback).__name__} records "
                                             "one fit, and this call makes 2"):
            deepprior.reconstruct(noisy, net="dip", callback=callback)


def test_an_empty_layer_list_is_refused_by_name():
    net, z, target = _tiny_problem("none")
    with pytest.raises(ValueError, match="layers is empty"):
        curvature_eigenvalues(net, z, mse_loss(target), layers=[])


def test_diagnostics_checks_curvature_every_by_its_name():
    with pytest.raises(TypeError, match="curvature_every must be an integer"):
        Diagnostics(curvature_every=2.5)
    with pytest.raises(ValueError, match="last must be"):
        Diagnostics(last=0)


def test_curvature_runs_on_a_pytorch_without_the_cudnn_precision_setting(monkeypatch):
    """torch.backends.cudnn.conv.fp32_precision is PyTorch 2.9's; before it, allow_tf32 (the
    package takes torch 2.2 on): the context raised AttributeError there."""
    from deepprior import analysis

    cudnn = torch.backends.cudnn
    monkeypatch.delattr(type(cudnn), "conv")
    monkeypatch.setattr(cudnn, "allow_tf32", True)
    with analysis._full_float32_convolutions():
        assert cudnn.allow_tf32 is False
    assert cudnn.allow_tf32 is True
