"""reconstruct(): end to end on tiny images, and every validation message."""

import math
import time
import warnings
from dataclasses import replace

import numpy as np
import pytest
import scipy.sparse
import torch

import deepprior
from deepprior import (
    GaussianSensing,
    Mask,
    Reconstruction,
    add_gaussian_noise,
    psnr,
    reconstruct,
    sample_image,
)
from deepprior.api import image_to_tensor, tensor_to_image
from deepprior.operators import Blur, Identity

SMALL = {"channels": 16}
DD = {"net": "deep_decoder"}  # the fast network; the defaults have tests of their own


@pytest.fixture(scope="module")
def camera64():
    return sample_image("camera", size=64)


def test_denoising_gains_more_than_3db(camera64):
    noisy = add_gaussian_noise(camera64, 25 / 255, seed=0)
    result = reconstruct(noisy, max_num_iter=400, stop="fixed:400", ground_truth=camera64,
                         net_options={"channels": 32}, **DD)
    assert result.image.shape == (64, 64) and result.image.dtype == np.float32
    assert result.psnr > psnr(camera64, noisy) + 3.0
    assert result.psnr == pytest.approx(psnr(camera64, result.image))
    assert len(result.history["loss"]) == 400 and len(result.history["psnr"]) == 400
    assert result.config["net"] == "deep_decoder" and result.device == "cpu"


def test_same_seed_same_output_and_colour_layout():
    clean = sample_image("astronaut", size=(33, 40))
    noisy = add_gaussian_noise(clean, 0.1, seed=2)
    run = [reconstruct(noisy, max_num_iter=10, stop="fixed:10", seed=4, net_options=SMALL, **DD)
           for _ in range(2)]
    assert run[0].image.shape == (33, 40, 3)
    np.testing.assert_array_equal(run[0].image, run[1].image)
    other = reconstruct(noisy, max_num_iter=10, stop="fixed:10", seed=5, net_options=SMALL, **DD)
    assert not np.array_equal(run[0].image, other.image)


def test_result_reports_the_resolved_configuration(camera64):
    result = reconstruct(camera64[:32, :32], max_num_iter=3, stop="fixed:3", net_options=SMALL,
                         **DD)
    assert isinstance(result, Reconstruction)
    config = result.config
    assert (config["problem"], config["net"], config["stop_resolved"]) == (
        "denoise", "deep_decoder", "fixed:3")
    assert config["net_options"]["channels"] == 16 and config["operator"]["kind"] == "identity"
    assert config["learning_rate"] == deepprior.problem_defaults("denoise",
                                                                 "deep_decoder").learning_rate
    assert (result.num_iter, result.num_steps, len(result.history["loss"])) == (3, 3, 3)


def test_lr_decay_steps_the_rate_each_member_follows(camera64):
    noisy = add_gaussian_noise(camera64[:32, :32], 0.1, seed=0)
    rates = []
    result = reconstruct(noisy, max_num_iter=10, stop="fixed:10", lr_decay=(0.5, 4),
                         ensemble=2, net_options=SMALL,
                         callback=lambda s: rates.append(s.optimizer.param_groups[0]["lr"]),
                         **DD)
    schedule = [0.01] * 4 + [0.005] * 4 + [0.0025] * 2  # the rate iteration t was taken with
    assert rates == pytest.approx(schedule * 2)  # both members
    assert result.config["lr_decay"] == [0.5, 4]
    constant = reconstruct(noisy, max_num_iter=3, stop="fixed:3", lr_decay="none",
                           net_options=SMALL, **DD)
    assert constant.config["lr_decay"] is None
    assert constant.config["final_learning_rate"] == 0.01


def test_compressive_sensing_beats_least_squares(camera64):
    x = camera64[::2, ::2].copy()  # 32x32, n = 1024
    op = GaussianSensing(400, (1, 32, 32), seed=0)
    y = op.A(image_to_tensor(x))[0]
    result = reconstruct(y, op, max_num_iter=300, stop="fixed:300", ground_truth=x, **DD)
    a = op.matrix.double().numpy()
    least_norm = np.linalg.lstsq(a, y.double().numpy().reshape(-1), rcond=None)[0]
    assert result.image.shape == (32, 32)
    assert result.psnr > psnr(x, np.clip(least_norm.reshape(32, 32), 0, 1)) + 2.0


def test_inpainting_with_a_mask(camera64):
    op = Mask((1, 64, 64), keep=0.5, seed=0)
    y = op.A(image_to_tensor(camera64))[0]
    result = reconstruct(y, op, max_num_iter=200, stop="fixed:200", ground_truth=camera64,
                         net_options={"channels": 32}, **DD)
    assert result.psnr > psnr(camera64, tensor_to_image(y[None])) + 3.0


def test_holdout_and_oracle_rules_run(camera64):
    noisy = add_gaussian_noise(camera64[:32, :32], 0.1, seed=0)
    held = reconstruct(noisy, max_num_iter=30, stop="holdout:fraction=0.2,patience=5",
                       net_options=SMALL, **DD)
    assert held.num_iter <= held.num_steps <= 30
    oracle = reconstruct(noisy, max_num_iter=30, stop="oracle", ground_truth=camera64[:32, :32],
                         net_options=SMALL, **DD)
    assert oracle.num_iter == int(np.argmax(oracle.history["psnr"])) + 1


def test_tensor_input_and_batch_axis(camera64):
    y = torch.from_numpy(camera64[:32, :32])
    result = reconstruct(y, max_num_iter=2, stop="fixed:2", net_options=SMALL, **DD)
    assert result.image.shape == (32, 32)
    half = reconstruct(y.to(torch.bfloat16), max_num_iter=2, stop="fixed:2",
                       net_options=SMALL, **DD)  # numpy has no bfloat16
    assert half.image.shape == (32, 32)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"net": "unet"}, ValueError, "unknown network 'unet'; use one of: deep_decoder"),
        ({"norm": "layer"}, ValueError, "norm must be one of channel, batch, none"),
        ({"max_num_iter": 0}, ValueError, "max_num_iter must be an integer >= 1"),
        ({"max_num_iter": 2.5}, TypeError, "max_num_iter must be an integer"),
        ({"learning_rate": -1.0}, ValueError, "learning_rate must satisfy 0 < learning_rate"),
        ({"lr_decay": (0.0, 100)}, ValueError, "lr_decay factor must satisfy 0 <"),
        ({"lr_decay": (0.5, 0)}, ValueError, "lr_decay every must be an integer >= 1"),
        ({"lr_decay": 0.5}, TypeError, r"lr_decay must be a pair \(factor, every\)"),
        ({"sigma": 25.0}, ValueError, "sigma=25/255"),
        ({"sigma": -0.1}, ValueError, "sigma must satisfy 0 <= sigma"),
        ({"seed": -1}, ValueError, "seed must be an integer >= 0"),
        ({"stop": "oracle"}, ValueError, r"needs the clean image: pass ground_truth=\.\.\."),
        ({"stop": 3}, TypeError, "a stopping policy needs update"),
        ({"ground_truth": np.zeros((5, 5))}, ValueError, r"must have shape \(16, 16\)"),
        # an 8-bit clean image: scored after the fit (a wrong PSNR; now an error there)
        ({"ground_truth": np.full((16, 16), 128, np.uint8)}, ValueError,
         r"ground_truth holds integers up to 128, .* divide 8-bit data by 255"),
    ],
)
def test_invalid_arguments(kwargs, error, match):
    image = np.full((16, 16), 0.5, dtype=np.float32)
    with pytest.raises(error, match=match):
        reconstruct(image, max_num_iter=kwargs.pop("max_num_iter", 2), **{**DD, **kwargs})


def test_invalid_observations():
    with pytest.raises(ValueError, match="divide 8-bit data by 255"):
        reconstruct(np.full((16, 16), 200.0), max_num_iter=1, **DD)
    with pytest.raises(ValueError, match="NaN or infinite"):
        reconstruct(np.full((16, 16), np.nan), max_num_iter=1, **DD)
    with pytest.raises(TypeError, match="numpy array or torch tensor"):
        reconstruct([[0.5, 0.5]], max_num_iter=1, **DD)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        reconstruct(np.zeros((16, 16, 5)), max_num_iter=1, **DD)
    op = GaussianSensing(50, (1, 16, 16), seed=0)
    with pytest.raises(ValueError, match=r"operator produces measurements of shape \(1, 50\)"):
        reconstruct(np.zeros(49, dtype=np.float32), op, max_num_iter=1, **DD)
    with pytest.raises(ValueError, match="pass sigma="):
        reconstruct(np.zeros((1, 50), dtype=np.float32), op, stop="discrepancy", max_num_iter=1,
                    **DD)


# --------------------------------------------------------------------------- the open engine


def _cs_problem():
    x = sample_image("camera", size=32)
    op = GaussianSensing(300, (1, 32, 32), seed=0)
    y = op.A(image_to_tensor(x))[0]  # (1, 300)
    return x, op, y, op.matrix.numpy()


class PlainMatrix:
    """A user's forward model: a plain class with A and A_adjoint over a numpy matrix."""

    def __init__(self, matrix):
        self.matrix = torch.from_numpy(matrix)

    def A(self, x):  # noqa: N802
        return x.reshape(1, -1) @ self.matrix.T

    def A_adjoint(self, y):  # noqa: N802
        return (y @ self.matrix).reshape(1, 1, 32, 32)


class OnlyForward(deepprior.LinearOperator):
    """A LinearOperator subclass with A only: no adjoint, no describe()."""

    def __init__(self, matrix):
        super().__init__((32, 32), (matrix.shape[0],))
        self.register_buffer("matrix", torch.from_numpy(matrix))

    def A(self, x):  # noqa: N802
        return x.reshape(1, -1) @ self.matrix.T


@pytest.mark.parametrize(
    "make",
    [
        lambda m: m,
        lambda m: torch.from_numpy(m),
        lambda m: scipy.sparse.csr_matrix(m),
        lambda m: PlainMatrix(m),
        lambda m: (lambda x: x.reshape(1, -1) @ torch.from_numpy(m).T),
        lambda m: OnlyForward(m),
    ],
    ids=["numpy", "torch", "scipy-sparse", "plain-class", "function", "subclass-no-describe"],
)
def test_any_forward_model_gives_the_built_in_result(make):
    x, op, y, matrix = _cs_problem()
    options = {"max_num_iter": 15, "stop": "fixed:15", "net_options": SMALL, "seed": 3}
    reference = reconstruct(y, op, **options, **DD)
    # a user's function or class is a "generic" problem unless told: say it is sensing
    result = reconstruct(y.reshape(-1), make(matrix), image_shape=(32, 32),
                         problem="compressive_sensing", **options, **DD)
    np.testing.assert_allclose(result.image, reference.image, atol=2e-4)


def test_deepinv_like_physics_works():
    x, _, y, matrix = _cs_problem()

    class Physics(torch.nn.Module):  # deepinv's LinearPhysics surface: (B, C, H, W) tensors
        def __init__(self):
            super().__init__()
            self.register_buffer("M", torch.from_numpy(matrix))

        def A(self, x):  # noqa: N802
            return x.reshape(x.shape[0], -1) @ self.M.T

        def A_adjoint(self, y):  # noqa: N802
            return (y @ self.M).reshape(y.shape[0], 1, 32, 32)

    result = reconstruct(y, Physics(), image_shape=(1, 32, 32), max_num_iter=5, stop="fixed:5",
                         ground_truth=x, net_options=SMALL, **DD)
    assert result.image.shape == (32, 32) and result.psnr is not None


def test_real_deepinv_physics_when_installed():
    dinv = pytest.importorskip("deepinv")
    x = sample_image("camera", size=32)
    physics = dinv.physics.CompressedSensing(m=200, img_size=(1, 32, 32), device="cpu")
    y = physics.A(image_to_tensor(x))
    result = reconstruct(y, physics, max_num_iter=3, stop="fixed:3", net_options=SMALL, **DD)
    assert result.image.shape == (32, 32)


@pytest.mark.parametrize(
    ("adjoint", "forward", "match"),
    [
        (lambda m: (lambda v: 1.1 * (v @ m).reshape(1, 1, 32, 32)), None, "not the adjoint of A"),
        (None, lambda m: (lambda x: (x.reshape(1, -1) @ m.T)[:, :250]), "observation has"),
    ],
)
def test_a_broken_operator_fails_at_once_naming_the_problem(adjoint, forward, match):
    _, _, y, matrix = _cs_problem()
    m = torch.from_numpy(matrix)
    forward = forward(m) if forward else (lambda x: x.reshape(1, -1) @ m.T)
    operator = (forward, adjoint(m)) if adjoint else forward
    start = time.perf_counter()
    with pytest.raises(ValueError, match=match):
        reconstruct(y, operator, image_shape=(32, 32), max_num_iter=10_000, **DD)
    assert time.perf_counter() - start < 1.0


class TinyNet(torch.nn.Module):
    """A user's own generator: a linear map of its input through a sigmoid."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(4, 1, 3, padding=1)

    def forward(self, z):
        return torch.sigmoid(self.conv(z))


class FirstLoss:
    """The smallest policy: update, best_step and reason; stops at step 4."""

    def __init__(self):
        self.best_step, self.reason = 0, ""

    def update(self, step, loss, output):
        self.best_step = step
        self.reason = f"seen {step}"
        return step >= 4


def test_user_module_and_three_member_policy_through_reconstruct():
    noisy = add_gaussian_noise(sample_image("camera", size=16), 0.1, seed=0)
    z = torch.rand(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    result = reconstruct(noisy, net=TinyNet(), net_input=z, stop=FirstLoss(), max_num_iter=50)
    assert (result.num_iter, result.num_steps, result.stop_reason) == (4, 4, "seen 4")
    assert result.config["net"] == "TinyNet" and result.config["num_parameters"] == 37
    with pytest.raises(ValueError, match="expected"):
        reconstruct(noisy[:8, :8], net=TinyNet(), net_input=z)
    with pytest.raises(ValueError, match="net_input"):
        reconstruct(noisy, net=TinyNet())


class PairNet(TinyNet):
    """A module returning a tuple (an image and an auxiliary output)."""

    def forward(self, z):
        return super().forward(z), z


def test_a_user_module_that_cannot_be_fitted_is_refused_by_the_dry_run(monkeypatch):
    """Before, a tuple output, a wrong input and a bad input_shape gave tracebacks from deep
    inside, and a frozen module or one without parameters passed the dry run and failed in the
    fit."""
    noisy = add_gaussian_noise(sample_image("camera", size=16), 0.1, seed=0)
    z = torch.rand(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(deepprior.api, "fit", lambda *a, **k: pytest.fail("a fit began"))
    frozen, bad_shape = TinyNet().requires_grad_(False), TinyNet()
    bad_shape.input_shape = None
    for net, net_input, message in [
            (PairNet(), z, r"net\(x\) must return a torch tensor, got tuple"),
            (TinyNet(), z[:, :3], r"net failed on its input of shape \(1, 3, 16, 16\)"),
            (frozen, z, r"no trainable parameters \(all are frozen"),
            (torch.nn.Sigmoid(), z[:, :1], r"no trainable parameters \(it has none\)")]:
        for call in (deepprior.dry_run, reconstruct):
            with pytest.raises(ValueError, match=message):
                call(noisy, net=net, net_input=net_input, stop="fixed:3")
    bad_shape.input_shape = (1, 4, 16.0, 16)
    with pytest.raises(ValueError, match=r"input_shape must be a tuple of positive ints.*16\.0"):
        deepprior.dry_run(noisy, net=bad_shape, stop="fixed:3")


def test_nan_in_a_masks_holes_is_no_data_and_an_identity_observation_is_an_image():
    x = sample_image("camera", size=16)
    mask = Mask((16, 16), keep=0.5, seed=0)
    known = mask.mask[0, 0].numpy()
    quick = {"net": "deep_decoder", "net_options": {"channels": 4}, "stop": "fixed:2"}
    holes = reconstruct(np.where(known, x, np.nan), mask, **quick)
    zeros = reconstruct(np.where(known, x, 0.0), mask, **quick)
    np.testing.assert_array_equal(holes.image, zeros.image)
    with pytest.raises(ValueError, match="NaN or infinite values where the operator measures"):
        reconstruct(np.where(known, np.nan, x), mask, **quick)  # NaN where it measures
    # an explicit Identity is denoising: the observation is checked as an image (before, 0-255
    # data was fitted without a word and a 3×3 image accepted)
    with pytest.raises(ValueError, match="observation values go up to"):
        reconstruct(255 * x, Identity((16, 16)), **quick)
    with pytest.raises(ValueError, match="at least 4x4"):
        reconstruct(x[:3, :3], Identity((3, 3)), **quick)
    pair = np.stack([x, 1 - x], axis=-1)  # any channel count the operator names: 2 here
    assert reconstruct(pair, Identity((2, 16, 16)), **quick).image.shape == (16, 16, 2)
    with pytest.raises(ValueError, match="contains NaN"):
        reconstruct(np.where(known, x, np.nan))  # no mask: NaN is refused


def test_a_user_module_starts_every_fit_as_given_and_keeps_its_weights():
    """Comparing TV weights fits the module once per weight, then refits: each fit starts
    from the module as the user gave it (on a GPU the copy also leaves the user's module where
    it was); before, each began from the last one's trained weights."""
    noisy = add_gaussian_noise(sample_image("camera", size=16), 0.1, seed=0)
    z = torch.rand(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    module = TinyNet()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    options = {"net": module, "net_input": z, "stop": "fixed:5", "regularizer": "tv",
               "regularizer_weight": [0.0, 0.05]}
    first, second = reconstruct(noisy, **options), reconstruct(noisy, **options)
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())
    assert len(first.config["regularizer_choice"]) == 2
    np.testing.assert_array_equal(first.image, second.image)


def test_user_module_and_policy_through_make_policy_and_fit():
    noisy = add_gaussian_noise(sample_image("camera", size=16), 0.1, seed=0)
    y = image_to_tensor(noisy)
    policy, op, fit_y = deepprior.make_policy(FirstLoss(), operator=deepprior.Identity((16, 16)),
                                              y=y)
    z = torch.rand(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    result = deepprior.fit(TinyNet(), z, fit_y, op, policy=policy, max_num_iter=50)
    assert (result.best_step, result.num_steps) == (4, 4)


def test_register_net_makes_a_network_usable_by_name(registry):
    from deepprior.nets import DeepDecoder

    deepprior.register_net(
        "tiny_test_decoder",
        lambda shape, norm="channel": DeepDecoder(shape, norm=norm, channels=4),
        defaults=deepprior.Defaults(7, 0.02, "fixed:7"), replace=True)
    assert "tiny_test_decoder" in deepprior.available_nets()
    result = reconstruct(np.full((64, 64), 0.5, np.float32), net="tiny_test_decoder")
    assert result.num_steps == 7 and result.config["learning_rate"] == 0.02
    with pytest.raises(ValueError, match="exists already"):
        deepprior.register_net("tiny_test_decoder", DeepDecoder)
    # wrong defaults are refused with nothing registered (the name was taken before)
    row = deepprior.Defaults(7, 0.02, "fixed:7")
    for defaults, error, message in [({"denoise_typo": row}, ValueError, "problem must be one"),
                                     (5, TypeError, "defaults must be a Defaults"),
                                     ({"denoise": {"max_num_iter": 10}}, TypeError, "got dict")]:
        with pytest.raises(error, match=message):
            deepprior.register_net("tiny_test_other", DeepDecoder, defaults=defaults)
        assert "tiny_test_other" not in deepprior.available_nets()


def test_problem_kind_comes_from_the_operator_or_the_argument():
    x = sample_image("camera", size=32)
    mask = Mask((32, 32), keep=0.5, seed=0)
    y = mask.A(image_to_tensor(x))[0]
    result = reconstruct(y, mask, max_num_iter=2, net_options=SMALL, **DD)
    assert result.config["problem"] == "inpainting"
    assert result.config["stop_resolved"] == deepprior.problem_defaults(
        "inpainting", "deep_decoder").stop
    generic = reconstruct(y, mask, problem="generic", max_num_iter=2, net_options=SMALL, **DD)
    assert generic.config["problem"] == "generic"
    with pytest.raises(ValueError, match="problem must be one of"):
        reconstruct(y, mask, problem="segmentation", max_num_iter=2, **DD)


def test_measurement_noise_sigma_is_in_measurement_units():
    x, op, _, _ = _cs_problem()
    y, sigma = deepprior.simulate_measurements(op, x, sigma=1.5, seed=0)
    assert sigma == 1.5 and y.shape == (1, 300)
    result = reconstruct(y, op, sigma=1.5, stop="discrepancy", max_num_iter=3, net_options=SMALL,
                         **DD)
    assert result.config["sigma"] == 1.5
    _, from_snr = deepprior.simulate_measurements(op, x, snr_db=20, seed=0)
    clean, _ = deepprior.simulate_measurements(op, x)
    assert from_snr == pytest.approx(np.sqrt(np.mean(clean**2)) / 10)


def test_ensemble_averages_members_fitted_on_flips_and_seeds():
    clean = sample_image("astronaut", size=(24, 32))  # not square: rotations swap the sides
    noisy = add_gaussian_noise(clean, 0.1, seed=0)
    options = {"max_num_iter": 6, "stop": "fixed:6", "net_options": {"channels": 8}}
    single = reconstruct(noisy, ground_truth=clean, **options, **DD)
    result = reconstruct(noisy, ground_truth=clean, ensemble=3, **options, **DD)
    members = result.config["members"]
    assert [(m["quarter_turns"], m["mirrored"]) for m in members] == [
        (0, False), (1, False), (2, False)]
    assert members[0]["psnr"] == pytest.approx(single.psnr, abs=1e-4)  # member 0 is the fit
    assert result.image.shape == (24, 32, 3)
    others = [reconstruct(deepprior.tensor_to_image(torch.rot90(image_to_tensor(noisy), k,
                                                                 dims=(-2, -1))),
                          seed=k, **options, **DD).image for k in (1, 2)]
    back = [deepprior.tensor_to_image(torch.rot90(image_to_tensor(o), -k, dims=(-2, -1)))
            for k, o in zip((1, 2), others, strict=True)]
    np.testing.assert_allclose(result.image, np.mean([single.image, *back], axis=0), atol=1e-5)
    # each member's image as it was averaged (turned back); their spread per pixel
    assert result.members.shape == (3, 24, 32, 3) and single.members is None is single.spread
    np.testing.assert_allclose(np.clip(result.members[0], 0, 1), single.image, atol=1e-6)
    np.testing.assert_allclose(np.clip(result.members[1:], 0, 1), back, atol=1e-6)
    np.testing.assert_allclose(np.clip(result.members.mean(0), 0, 1), result.image, atol=1e-6)
    np.testing.assert_allclose(result.spread, np.std(result.members, axis=0), atol=1e-7)
    assert [psnr(clean, np.clip(m, 0, 1)) for m in result.members] == pytest.approx(
        [m["psnr"] for m in members], abs=1e-4)
    with pytest.raises(ValueError, match="ensemble needs a stopping spec"):
        reconstruct(noisy, ensemble=2, stop=FirstLoss(), **DD)


def test_after_a_held_out_stop_the_other_members_refit_all_the_data_to_its_iterate():
    x, op, y, _ = _cs_problem()
    y = y + 0.05 * torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
    options = {"max_num_iter": 40, "net_options": SMALL, **DD}
    stop = "holdout:fraction=0.2,patience=3"
    single = reconstruct(y[0], op, ground_truth=x, stop=stop, **options)
    assert single.num_iter < 40  # the hold-out rule fired, so member 0 chose an iterate
    result = reconstruct(y[0], op, ground_truth=x, stop=stop, ensemble=2, **options)
    first, second = result.config["members"]
    assert first["psnr"] == pytest.approx(single.psnr, abs=1e-4)  # member 0: the held-out fit
    assert second["num_iter"] == second["num_steps"] == single.num_iter
    # member 1: seed + 1, all 300 measurements, exactly member 0's number of iterations
    refit = reconstruct(y[0], op, ground_truth=x, stop=f"fixed:{single.num_iter}", seed=1,
                        **options)
    assert second["psnr"] == pytest.approx(refit.psnr, abs=1e-4)
    np.testing.assert_allclose(result.image, (single.image + refit.image) / 2, atol=1e-5)
    assert result.num_steps == single.num_steps + single.num_iter
    # each averaged member's loss and PSNR, a row each, NaN after the shorter refit's end
    rows = result.history["member_loss"]
    assert rows.shape == (2, single.num_steps)
    np.testing.assert_array_equal(rows[0], result.history["loss"])
    assert np.isfinite(rows[1, :single.num_iter]).all()
    assert np.isnan(rows[1, single.num_iter:]).all()
    np.testing.assert_array_equal(result.history["member_psnr"][0], result.history["psnr"])
    assert "member_loss" not in single.history


def _register_tiny_cs_net(name: str, defaults: deepprior.Defaults) -> None:
    """A Deep Decoder of width 8 under ``name``, with its compressive-sensing defaults."""
    from deepprior.nets import DeepDecoder

    deepprior.register_net(
        name, lambda shape, norm="channel": DeepDecoder(shape, norm=norm, channels=8),
        defaults={"compressive_sensing": defaults}, replace=True)


def test_a_row_with_refit_fits_twice_only_after_its_automatic_hold_out_stop(registry):
    x, op, y, _ = _cs_problem()
    _register_tiny_cs_net("tiny_refit_decoder", deepprior.Defaults(
        30, 0.01, "holdout:fraction=0.2,patience=3", stop_with_sigma="fixed:30", refit=True))
    net = {"net": "tiny_refit_decoder"}

    def fits(**options):
        result = reconstruct(y[0], op, **net, **options)
        return len(result.config.get("members", [None])), result.config["ensemble"]

    assert deepprior.problem_defaults("compressive_sensing", net["net"]).auto_ensemble(False) == 2
    assert fits() == (2, 2)  # the hold-out fit, then all the measurements to its iterate
    assert fits(ensemble=1) == (1, 1)  # asked for one fit: the hold-out fit alone
    assert fits(sigma=0.1) == (1, 1)  # with σ the automatic rule holds nothing out
    assert fits(stop="holdout:fraction=0.2,patience=3") == (1, 1)  # a rule the user chose
    dip = deepprior.problem_defaults("denoise", "dip")
    assert dip.auto_ensemble(False, regularizer="none") == 1  # DIP without its mix: one fit


@pytest.mark.parametrize(("minimum", "expected"), [(300, (1, 1)), (301, (2, 2))])
def test_with_few_measurements_the_sigma_free_rule_serves_a_given_sigma(registry, minimum,
                                                                        expected):
    x, op, y, _ = _cs_problem()  # 300 measurements
    _register_tiny_cs_net("tiny_few_decoder", deepprior.Defaults(
        30, 0.01, "holdout:fraction=0.2,patience=3", stop_with_sigma="fixed:30", refit=True,
        sigma_rule_min_measurements=minimum))
    result = reconstruct(y[0], op, net="tiny_few_decoder", sigma=0.1)
    assert (len(result.config.get("members", [None])), result.config["ensemble"]) == expected
    assert result.config["stop_resolved"] == ("fixed:30" if minimum == 300 else
                                              "holdout:fraction=0.2,patience=3")


def test_dip_with_sigma_stops_by_discrepancy_from_512_measurements_on():
    dip = deepprior.problem_defaults("compressive_sensing", "dip")
    assert dip.auto_stop(True, 512) == dip.auto_stop(True) == "discrepancy:tau=0.6,every=8"
    assert dip.auto_stop(True, 511) == dip.auto_stop(False, 511) == dip.stop
    assert (dip.auto_ensemble(True, 511), dip.auto_ensemble(True, 512)) == (2, 1)


def test_dip_without_sigma_chooses_tv_or_none_on_held_out_measurements_by_default():
    x, op, y, _ = _cs_problem()
    tiny = {"net": "dip", "max_num_iter": 6, "net_options": {"channels": 4}}

    def call(**options):  # the members, less the near-tied weights' held-out fits
        config = reconstruct(y[0], op, **tiny, **options).config
        choice = config.get("regularizer_choice") or []
        tied = sum(row["averaged"] and not row["chosen"] for row in choice)
        return (config["regularizer"], len(choice), len(config.get("members") or [None]) - tied)

    assert deepprior.problem_defaults("compressive_sensing", "dip").auto_regularizer(False) \
        == "auto"
    # none and the SNR 20 / 30 dB weights, each fitted without the held-out share; the
    # chosen one is member 0, then a refit of all the measurements
    assert call() == ("auto", 1 + len(deepprior.api.TV_SNRS_DB), 2)
    assert call(sigma=0.05)[0] == "tv"  # σ given: TV at its weight, no choice
    assert call(ensemble=1) == (None, 0, 1)  # one fit asked for: no choice, no penalty
    assert call(stop="fixed:6") == (None, 0, 1)  # a rule of the user's: one fit
    assert call(regularizer="none")[:2] == (None, 0)


@pytest.mark.parametrize("problem, options", [
    ("compressive_sensing", {}),  # σ-free: none and the two TV weights, then the refit
    ("compressive_sensing", {"sigma": 0.05}),
    ("compressive_sensing", {"ensemble": 1}),
    ("compressive_sensing", {"stop": "fixed:4"}),
    ("compressive_sensing", {"regularizer": "none"}),
    ("compressive_sensing", {"regularizer": "tv", "regularizer_weight": [0.01, 0.02]}),
    ("compressive_sensing", {"regularizer": "auto", "regularizer_weight": 0.01, "ensemble": 2}),
    ("compressive_sensing", {"regularizer": "mix", "regularizer_weight": [0.01, 0.02]}),
    ("compressive_sensing", {"net": "deep_decoder"}),
    ("denoise", {}),  # σ estimated: the mix of a fit without and one with TV
    ("denoise", {"sigma": 0.1, "regularizer": "auto"}),
    ("denoise", {"ensemble": 3, "regularizer": "none"}),
])
def test_planned_fits_counts_the_fits_reconstruct_runs(problem, options, monkeypatch):
    x, op, y, _ = _cs_problem()
    observation, op = (y[0], op) if problem == "compressive_sensing" else (
        add_gaussian_noise(sample_image("camera", size=16), 0.1, seed=0), None)
    counted = []  # each fit's progress bar: True, or its label when there are several
    real_fit = deepprior.api.fit
    monkeypatch.setattr(deepprior.api, "fit",
                        lambda *a, **k: counted.append(k["progress"]) or real_fit(*a, **k))
    options = {"net": "dip", "net_options": {"channels": 4}, "max_num_iter": 4, **options}
    plans = []  # on_start's plan, and how many fits had begun when it came
    reconstruct(observation, op, progress=True, on_start=lambda plan: plans.append(
        (plan, len(counted))), **options)
    asked = {k: v for k, v in options.items() if k not in ("net_options", "max_num_iter",
                                                           "sigma")}
    planned = deepprior.planned_fits(
        problem, sigma_known="sigma" in options,
        num_measurements=None if op is None else op.num_measurements, **asked)
    assert planned == len(counted)
    [(plan, begun)] = plans
    assert begun == 0 and plan["fits"] == planned and plan["net"] == options["net"]
    assert plan["max_num_iter"] == 4 and plan["device"] == "cpu"
    assert [label if label is True else label.split(" (")[0] for label in counted] == (
        [True] if planned == 1 else [f"fit {i}/{planned}" for i in range(1, planned + 1)])


def test_on_start_comes_after_every_check_and_before_any_fit(monkeypatch):
    """An invalid call raises before on_start: a split with nothing held out, a module whose
    output is not the image; a valid one reports the resolved plan once."""
    x, op, y, _ = _cs_problem()
    started = []
    monkeypatch.setattr(deepprior.api, "fit", lambda *a, **k: pytest.fail("a fit began"))
    with pytest.raises(ValueError, match="holds out all of them"):
        reconstruct(y[0], op, net="dip", stop="holdout:fraction=0.99999",
                    on_start=started.append)
    module = deepprior.build_net("deep_decoder", (1, 8, 8), channels=4)[0]
    with pytest.raises(ValueError, match=r"net\(net_input\) has shape \(1, 1, 8, 8\)"):
        reconstruct(y[0], op, net=module, stop="fixed:3", on_start=started.append)
    with pytest.raises(TypeError, match="callback must be callable"):  # was checked in fit
        reconstruct(y[0], op, net="dip", stop="fixed:3", callback="print",
                    on_start=started.append)
    module, z = deepprior.build_net("deep_decoder", op.image_shape, channels=4)
    with pytest.raises(ValueError, match="net_input holds NaN"):  # was a "diverged" fit
        reconstruct(y[0], op, net=module, net_input=z * torch.nan, stop="fixed:3",
                    on_start=started.append)
    assert started == []

    class Started(Exception):
        pass

    def stop_here(plan):
        started.append(plan)
        raise Started

    with pytest.raises(Started):
        reconstruct(y[0], op, net="dip", stop="auto", on_start=stop_here)
    assert started == [{"problem": "compressive_sensing", "net": "dip", "net_options": {},
                        "fits": 4, "max_num_iter": 6000, "ensemble": 1,
                        "stop": deepprior.problem_defaults("compressive_sensing",
                                                           "dip").auto_stop(False, 300),
                        "regularizer_weights": started[0]["regularizer_weights"],
                        "device": "cpu"}]
    assert len(started[0]["regularizer_weights"]) == 3  # none and the two TV weights
    assert started[0]["regularizer_weights"][0] == 0


def test_planned_fits_takes_the_problems_default_network_and_a_0d_weight(monkeypatch):
    """It assumed the Deep Decoder (reconstruct: DIP for denoising and CS) and counted 1 where
    the default denoising call makes 2; a 0-d array weight (read from a file) crashed both."""
    monkeypatch.setattr(deepprior.api, "fit", lambda *a, **k: pytest.fail("a fit began"))
    noisy = add_gaussian_noise(sample_image("camera", size=16), 0.1, seed=0)
    assert deepprior.planned_fits("denoise") == deepprior.dry_run(noisy)["fits"] == 2
    assert deepprior.dry_run(noisy)["net_options"] == {"channels": 64}  # the default's width
    _, op, y, _ = _cs_problem()
    assert deepprior.planned_fits("compressive_sensing", num_measurements=op.num_measurements) \
        == deepprior.dry_run(y[0], op)["fits"]
    with pytest.raises(ValueError, match="unknown network 'no_such_net'"):
        deepprior.planned_fits("denoise", "no_such_net")
    weight = np.array(0.05)
    assert deepprior.planned_fits("denoise", "deep_decoder", regularizer="tv",
                                  regularizer_weight=weight) == 1
    assert deepprior.dry_run(noisy, net="deep_decoder", regularizer="tv",
                             regularizer_weight=weight)["regularizer_weights"] == [0.05]


def test_dips_denoising_budget_grows_with_the_images_side(monkeypatch):
    """At 256² the 3,000-iteration budget ended most fits before their rule fired: DIP's
    denoising budget grows in proportion to the side beyond 128² (a user's budget still wins)."""
    monkeypatch.setattr(deepprior.api, "fit", lambda *a, **k: pytest.fail("a fit began"))
    defaults = deepprior.problem_defaults("denoise", "dip")
    assert defaults.budget((3, 128, 128)) == defaults.budget((64, 64)) == 3000
    assert defaults.budget((256, 256)) == 6000 and defaults.budget((3, 128, 512)) == 6000
    assert deepprior.problem_defaults("denoise", "deep_decoder").budget((256, 256)) == 3000
    noisy = np.random.default_rng(0).random((256, 192))
    assert deepprior.dry_run(noisy)["max_num_iter"] == round(3000 * math.sqrt(256 * 192) / 128)
    assert deepprior.dry_run(noisy, max_num_iter=100)["max_num_iter"] == 100
    assert deepprior.dry_run(noisy, net="deep_decoder")["max_num_iter"] == 3000


def test_dips_denoising_margin_shrinks_as_the_images_side_grows():
    """At 256² the best iterate came at a residual nearer m·σ² than at 128² (0.87-0.97 of
    m·σ̂²): beyond 128² the stop's margin shrinks in inverse proportion to the side, the rest
    of the spec as written; up to 128², and for rules without a margin, nothing changes."""
    defaults = deepprior.problem_defaults("denoise", "dip")
    written = defaults.auto_stop(False)
    assert defaults.auto_stop(False, None, (3, 128, 128)) == written
    assert defaults.auto_stop(False, None, (64, 64)) == written
    assert defaults.auto_stop(False, None, (256, 256)) == written.replace(
        "margin=0.01,", "margin=0.005,")
    assert defaults.auto_stop(False, None, (3, 128, 512)) == defaults.auto_stop(
        False, None, (256, 256))
    before = {k: v for k, v in deepprior.parse_stop(written)[1][1].items() if k != "margin"}
    after = deepprior.parse_stop(defaults.auto_stop(False, None, (256, 192)))
    assert after[0] == deepprior.parse_stop(written)[0]
    assert after[1][1] == {**before, "margin": pytest.approx(0.01 * 128 / math.sqrt(256 * 192),
                                                             rel=1e-3)}
    noisy = add_gaussian_noise(np.full((256, 256), 0.5), 0.1, seed=0)
    assert "margin=0.005," in deepprior.dry_run(noisy)["stop"]
    cs = deepprior.problem_defaults("compressive_sensing", "dip")
    assert cs.auto_stop(True, 5000, (512, 512)) == cs.auto_stop(True, 5000)
    with_patience = replace(defaults, stop="patience+discrepancy:margin=0.01+wmv:window=12345")
    assert with_patience.auto_stop(False, None, (512, 512)) == \
        "patience+discrepancy:margin=0.0025+wmv:window=12345"


def test_a_budget_beyond_where_the_fits_stop_changes_nothing():
    """What lets a 256² call that stopped before 3,000 iterations stand for the 6,000 budget:
    the mix's two fits, each stopped by its count, are the same to the bit."""
    noisy = add_gaussian_noise(sample_image("camera", size=16), 0.1, seed=0)
    short, long = (reconstruct(noisy, net="dip", stop="fixed:5", max_num_iter=budget,
                               net_options={"channels": 4}, regularizer="mix", seed=2)
                   for budget in (12, 24))
    assert np.array_equal(short.image, long.image) and short.num_steps == long.num_steps


def test_refusals_name_what_the_call_asked_for(monkeypatch):
    """The one-fit callback's refusal advised "a stop other than 'auto'" whatever made the
    fits several; a mix with a module spoke of an ensemble; a fixed stop beyond the budget was
    cut without a word."""
    monkeypatch.setattr(deepprior.api, "fit", lambda *a, **k: pytest.fail("a fit began"))
    noisy = add_gaussian_noise(sample_image("camera", size=16), 0.1, seed=0)

    class OneFit:
        one_fit = True

        def __call__(self, state):
            pass

    quick = {"net": "deep_decoder", "net_options": {"channels": 4}, "stop": "fixed:3"}
    with pytest.raises(ValueError, match=r"makes 4 \(3 to choose a regularizer weight, "
                                         r"then 1 of all the data\)"):
        reconstruct(noisy, callback=OneFit(), regularizer="auto",
                    regularizer_weight=[0.01, 0.02], **{**quick, "stop": "holdout"})
    with pytest.raises(ValueError, match=r"makes 2 \(an ensemble of 2\): pass ensemble=1"):
        reconstruct(noisy, callback=OneFit(), ensemble=2, regularizer="none", **quick)
    module = deepprior.build_net("deep_decoder", (1, 16, 16), channels=4)[0]
    with pytest.raises(ValueError, match="regularizer='mix' averages fits of several networks"):
        reconstruct(noisy, net=module, regularizer="mix", regularizer_weight=0.05,
                    stop="fixed:3")
    with pytest.warns(UserWarning, match=r"stop='fixed:50' runs 50 iterations and "
                                         r"max_num_iter=12 allows 12"), pytest.raises(
            pytest.fail.Exception):
        reconstruct(noisy, **{**quick, "stop": "fixed:50"}, max_num_iter=12)


def test_planned_fits_refuses_a_mix_with_fewer_members_than_weights():
    assert deepprior.planned_fits("compressive_sensing", regularizer="mix") == 3  # 0 and two
    for weights, needed in ((None, 3), ([0.01, 0.02, 0.03], 4)):
        with pytest.raises(ValueError, match=f"needs ensemble >= {needed}, got 2"):
            deepprior.planned_fits("compressive_sensing", regularizer="mix", ensemble=2,
                                   regularizer_weight=weights)


def test_the_progress_bars_of_several_fits_say_which_fit_each_is(monkeypatch, capsys):
    x, op, y, _ = _cs_problem()
    labels = []
    real_fit = deepprior.api.fit
    monkeypatch.setattr(deepprior.api, "fit",
                        lambda *a, **k: labels.append(k["progress"]) or real_fit(*a, **k))
    result = reconstruct(y[0], op, net="dip", net_options={"channels": 4}, max_num_iter=6,
                         progress=True)
    weights = [row["weight"] for row in result.config["regularizer_choice"]]
    chosen = result.config["regularizer_weight"]
    assert labels == [*(f"fit {i}/4 (held out, λ={w:.2g})" for i, w in enumerate(weights, 1)),
                      f"fit 4/4 (λ={chosen:.2g}, refit to iteration {result.num_iter})"]
    assert "fit 4/4 (λ=" in capsys.readouterr().err  # tqdm draws the label
    labels.clear()
    reconstruct(y[0], op, net="dip", net_options={"channels": 4}, max_num_iter=6)
    assert labels == [False] * 4  # no bar unless asked


def test_a_rows_default_penalty_applies_when_sigma_is_given(registry):
    x, op, y, _ = _cs_problem()
    _register_tiny_cs_net("tiny_tv_decoder",
                          deepprior.Defaults(5, 0.01, "fixed:5", regularizer_with_sigma="tv"))

    def penalty(**options):
        config = reconstruct(y[0], op, net="tiny_tv_decoder", **options).config
        return config["regularizer"], config["regularizer_weight"]

    assert penalty() == (None, None)  # without σ: no weight to derive, no penalty
    name, weight = penalty(sigma=0.05)
    assert name == "tv" and weight == pytest.approx(
        deepprior.api.TV_WEIGHT_PER_SIGMA * 0.05 * deepprior.api._tv_scale(op))
    assert penalty(sigma=0.05, regularizer="none") == (None, None)
    assert penalty(sigma=0.05, regularizer="tv", regularizer_weight=0.3) == ("tv", 0.3)
    with pytest.raises(ValueError, match="regularizer_weight needs a regularizer"):
        penalty(sigma=0.05, regularizer_weight=0.3)  # a weight alone: say which penalty
    with pytest.raises(ValueError, match="regularizer must be one of"):
        penalty(regularizer="tikhonov")


@pytest.mark.parametrize(("make", "expected"), [
    (lambda x: (add_gaussian_noise(x, 0.1, seed=0), None), "dip"),
    (lambda x: (GaussianSensing(300, (32, 32)).A(image_to_tensor(x))[0],
                GaussianSensing(300, (32, 32))), "dip"),
    (lambda x: (Mask((32, 32), keep=0.5).A(image_to_tensor(x))[0], Mask((32, 32), keep=0.5)),
     "deep_decoder"),
])
def test_the_default_network_is_the_problem_kinds(make, expected):
    observation, operator = make(sample_image("camera", size=32))
    result = reconstruct(observation, operator, max_num_iter=1, stop="fixed:1",
                         net_options={"channels": 4})
    assert result.config["net"] == expected == deepprior.DEFAULT_NETS[result.config["problem"]]


def test_a_tv_penalty_weighted_by_the_noise_level_smooths_the_output():
    clean = sample_image("camera", size=32)
    noisy = add_gaussian_noise(clean, 0.1, seed=0)
    options = {"max_num_iter": 100, "stop": "fixed:100", "net_options": {"channels": 16}, **DD}
    plain = reconstruct(noisy, **options)
    auto = reconstruct(noisy, regularizer="tv", sigma=0.1, **options)
    assert auto.config["regularizer"] == "tv"
    assert auto.config["regularizer_weight"] == pytest.approx(
        deepprior.api.TV_WEIGHT_PER_SIGMA * 0.1)
    heavy = reconstruct(noisy, regularizer="tv", regularizer_weight=1.0, **options)
    tv = {name: float(deepprior.total_variation(image_to_tensor(r.image)))
          for name, r in (("plain", plain), ("heavy", heavy))}
    assert tv["heavy"] < 0.8 * tv["plain"]  # measured: 0.019 against 0.028


def test_a_users_regularizer_function_and_every_refusal():
    clean = sample_image("camera", size=32)
    noisy = add_gaussian_noise(clean, 0.1, seed=0)
    options = {"max_num_iter": 3, "stop": "fixed:3", "net_options": {"channels": 4}, **DD}

    def l1(image):
        return image.abs().mean()

    result = reconstruct(noisy, regularizer=l1, regularizer_weight=0.5, **options)
    assert result.config["regularizer"] == "l1" and result.config["regularizer_weight"] == 0.5
    with pytest.raises(ValueError, match="regularizer must be one of auto, mix, none, tv"):
        reconstruct(noisy, regularizer="l2", **options)
    with pytest.raises(TypeError, match="'tv', 'auto', 'mix', 'none', a function or None"):
        reconstruct(noisy, regularizer=3, **options)
    with pytest.raises(ValueError, match="regularizer_weight needs a regularizer"):
        reconstruct(noisy, regularizer_weight=0.1, **options)
    with pytest.raises(ValueError, match="of one element. that depends on the image"):
        reconstruct(noisy, regularizer=lambda image: torch.tensor(1.0), **options)
    with pytest.raises(ValueError, match=r"function failed on a grey image of shape "
                       r"\(1, 1, 32, 32\): RuntimeError: "):  # the user's own error, named
        reconstruct(noisy, regularizer=lambda image: image @ torch.ones(3), **options)
    with pytest.raises(ValueError, match="regularizer_weight must satisfy 0 <="):
        reconstruct(noisy, regularizer="tv", regularizer_weight=-1.0, **options)
    op = GaussianSensing(300, (32, 32))
    y = op.A(image_to_tensor(clean))[0]
    cs = reconstruct(y, op, regularizer="tv", regularizer_weight=1e-3, **options)
    assert cs.config["regularizer_weight"] == 1e-3
    blur = Blur(np.ones((3, 3)) / 9, (32, 32))
    blurred = blur.A(image_to_tensor(clean))[0]
    for name in ("tv", "auto", "mix"):  # no measured weight rule for deblurring
        with pytest.raises(ValueError, match="needs regularizer_weight=... for deblurring"):
            reconstruct(blurred, blur, regularizer=name, **options)
    with pytest.raises(ValueError, match="give distinct weights"):
        reconstruct(noisy, regularizer="auto", regularizer_weight=[0.0, 0.1], **options)
    with pytest.raises(ValueError, match="give distinct weights"):
        reconstruct(noisy, regularizer="tv", regularizer_weight=[], **options)
    with pytest.raises(ValueError, match="choosing the regularizer weight needs a stopping spec"):
        reconstruct(noisy, regularizer="auto", stop=deepprior.stopping.Fixed(3),
                    **{k: v for k, v in options.items() if k != "stop"})


def test_the_tv_weight_follows_the_noise_level_and_the_operators_scale():
    clean = image_to_tensor(sample_image("camera", size=32))
    # the scale: 1 for denoising, n/m for sensing rows of squared norm n/m (4 random probes)
    assert deepprior.api._tv_scale(Identity((1, 32, 32))) == 1.0
    op = GaussianSensing(300, (32, 32))
    assert deepprior.api._tv_scale(op) == pytest.approx(1024 / 300, rel=0.05)
    y = op.A(clean)[0]
    options = {"max_num_iter": 3, "stop": "fixed:3", "net_options": {"channels": 4}, **DD}
    given = reconstruct(y, op, regularizer="tv", sigma=0.05, **options)
    assert given.config["regularizer_weight"] == pytest.approx(
        deepprior.api.TV_WEIGHT_PER_SIGMA * 0.05 * deepprior.api._tv_scale(op))
    assert "regularizer_choice" not in given.config
    # without σ: one weight per noise level of TV_SNRS_DB, chosen on held-out measurements;
    # "auto" adds none
    rms = float(y.double().square().mean().sqrt())
    expected = [deepprior.api.TV_WEIGHT_PER_SIGMA * rms * 10 ** (-snr / 20)
                * deepprior.api._tv_scale(op) for snr in deepprior.api.TV_SNRS_DB]
    for name, weights in (("tv", expected), ("auto", [0.0, *expected])):
        result = reconstruct(y, op, regularizer=name, **options)
        choice = result.config["regularizer_choice"]
        assert [row["weight"] for row in choice] == pytest.approx(weights)
        assert sum(row["chosen"] for row in choice) == 1
        assert result.config["regularizer_weight"] in [row["weight"] for row in choice]
        assert result.num_steps == 3 * (len(weights) + 1)  # one refit of all the measurements


def test_the_margin_of_a_held_out_choice_is_a_paired_z_score():
    noise = torch.from_numpy(np.random.default_rng(0).standard_normal(400))
    assert abs(deepprior.api._paired_z(noise - noise.mean())) < 1e-9  # no mean difference
    # a shift of 0.1 standard deviations over 400 entries: 0.1 · √400 = 2 standard errors
    z = deepprior.api._paired_z(noise - noise.mean() + 0.1 * noise.std())
    assert z == pytest.approx(2.0)
    assert deepprior.api._paired_z(torch.zeros(5)) == 0.0  # identical fits: a tie


def test_a_holdout_stop_lends_its_own_share_to_the_regularizer_choice():
    clean = sample_image("camera", size=32)
    op = GaussianSensing(300, (32, 32))
    y = op.A(image_to_tensor(clean))[0]
    options = {"max_num_iter": 40, "stop": "holdout:fraction=0.2,patience=5",
               "net_options": {"channels": 8}, "ground_truth": clean, **DD}
    chosen = reconstruct(y, op, regularizer="auto", regularizer_weight=1e-3, **options)
    plain = reconstruct(y, op, ensemble=2, **options)
    # no penalty fits exactly what the plain hold-out fit (member 0) fits: 80% of the
    # measurements, not 80% of an 80% share set aside first
    none, member = chosen.config["regularizer_choice"][0], plain.config["members"][0]
    assert none["weight"] == 0.0
    assert none["psnr"] == member["psnr"] and none["num_iter"] == member["num_iter"]
    assert none["stop_reason"] == member["stop_reason"]


def test_mix_averages_a_fit_without_and_one_with_tv_each_as_fitted_on_its_own():
    clean = sample_image("camera", size=(24, 32))
    noisy = add_gaussian_noise(clean, 0.1, seed=0)
    options = {"max_num_iter": 8, "stop": "fixed:8", "net_options": {"channels": 8}, **DD}
    result = reconstruct(noisy, regularizer="mix", sigma=0.1, ground_truth=clean, **options)
    weight = deepprior.api.TV_WEIGHT_PER_SIGMA * 0.1
    members = result.config["members"]
    assert result.config["ensemble"] == 2 and result.config["regularizer"] == "mix"
    assert result.config["regularizer_weight"] == pytest.approx(weight)
    assert [m["regularizer_weight"] for m in members] == pytest.approx([0.0, weight])
    # member 0: the fit without a penalty; member 1: seed 1, the first rotation, with TV
    plain = reconstruct(noisy, sigma=0.1, **options)
    turned = deepprior.tensor_to_image(torch.rot90(image_to_tensor(noisy), 1, dims=(-2, -1)))
    tv = reconstruct(turned, regularizer="tv", sigma=0.1, seed=1, **options)
    back = deepprior.tensor_to_image(torch.rot90(image_to_tensor(tv.image), -1, dims=(-2, -1)))
    np.testing.assert_allclose(result.image, (plain.image + back) / 2, atol=1e-6)
    # four members take the weights in turn
    four = reconstruct(noisy, regularizer="mix", sigma=0.1, ensemble=4, **options)
    assert [m["regularizer_weight"] for m in four.config["members"]] == pytest.approx(
        [0.0, weight, 0.0, weight])
    with pytest.raises(ValueError, match="needs ensemble >= 2, got 1"):
        reconstruct(noisy, regularizer="mix", ensemble=1, **options)
    with pytest.raises(ValueError, match="an ensemble needs a stopping spec"):
        reconstruct(noisy, regularizer="mix", stop=deepprior.stopping.Fixed(3),
                    **{k: v for k, v in options.items() if k != "stop"})


def test_a_mixed_member_with_tv_runs_at_most_twice_the_iterations_of_the_first():
    noisy = add_gaussian_noise(sample_image("camera", size=32), 0.1, seed=0)
    # TV at λ = 1 keeps member 1 off the noise level that member 0 reaches at iteration t
    result = reconstruct(noisy, regularizer="mix", regularizer_weight=1.0, sigma=0.1,
                         stop="discrepancy:tau=1.5", max_num_iter=400,
                         net_options={"channels": 16}, **DD)
    first, penalized = result.config["members"]
    assert first["stop_reason"].startswith("residual")
    assert penalized["num_steps"] == deepprior.api.MIX_BUDGET * first["num_steps"] < 400
    assert penalized["stop_reason"].endswith(
        f"(the mix's budget: 2× the {first['num_steps']} iterations of fit 1)")
    assert result.num_steps == 3 * first["num_steps"]


def test_an_ensemble_says_first_when_a_member_diverged_or_was_interrupted():
    noisy = add_gaussian_noise(sample_image("camera", size=32), 0.1, seed=0)
    options = {"max_num_iter": 40, "stop": "fixed:40", "net_options": {"channels": 4},
               "ensemble": 2, **DD}
    diverged = reconstruct(noisy, **{**options, "net": "dip", "net_options": {"channels": 8}},
                           learning_rate=1e6)
    assert diverged.stop_reason.startswith("diverged") and "average of 2 fits" in \
        diverged.stop_reason
    calls = []

    def stop_in_member_1(state):
        calls.append(state.step)
        if len(calls) == 45:  # iteration 5 of the second fit
            raise KeyboardInterrupt

    stopped = reconstruct(noisy, callback=stop_in_member_1, **options)
    assert stopped.stop_reason.startswith("interrupted at iteration 5 (fit 2 of 2); reached "
                                          "num_iter=40")  # the cut fit is left out

def test_after_a_held_out_stop_mixed_members_refit_to_their_own_weights_iterate():
    x, op, y, _ = _cs_problem()
    y = y + 0.05 * torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
    result = reconstruct(y[0], op, regularizer="mix", regularizer_weight=0.3, ensemble=4,
                         stop="holdout:fraction=0.2,patience=3", max_num_iter=40,
                         net_options=SMALL, **DD)
    members = result.config["members"]
    assert [m["regularizer_weight"] for m in members] == [0.0, 0.3, 0.0, 0.3]
    # members 0 and 1 stop by the hold-out rule; 2 and 3 fit all the data to their iterate
    for first, refit in ((members[0], members[2]), (members[1], members[3])):
        assert refit["num_iter"] == refit["num_steps"] == first["num_iter"]
        assert refit["stop_reason"].startswith("reached num_iter")


def test_dips_denoising_default_mixes_two_fits_of_the_automatic_stop():
    dip = deepprior.problem_defaults("denoise", "dip")
    assert dip.auto_regularizer(False) == dip.auto_regularizer(True) == "mix"
    assert dip.auto_ensemble(False) == dip.auto_ensemble(True) == 2
    noisy = add_gaussian_noise(sample_image("camera", size=32), 0.1, seed=0)
    options = {"max_num_iter": 3, "net_options": {"channels": 4}}

    def penalty(**more):
        config = reconstruct(noisy, **options, **more).config
        return config["regularizer"], config["ensemble"], len(config.get("members", [None]))

    assert penalty() == penalty(sigma=0.1) == ("mix", 2, 2)
    assert penalty(ensemble=3) == ("mix", 3, 3)
    # one fit asked for, a rule or a penalty chosen: the default mix does not apply
    assert penalty(ensemble=1) == penalty(stop="fixed:3") == penalty(regularizer="none") \
        == (None, 1, 1)
    assert penalty(regularizer="tv")[:2] == ("tv", 1)

def test_auto_regularizer_averages_the_held_out_winner_with_a_fit_to_all_pixels():
    clean = sample_image("camera", size=32)
    noisy = add_gaussian_noise(clean, 0.1, seed=0)
    options = {"max_num_iter": 60, "stop": "fixed:60", "net_options": {"channels": 16}, **DD}
    # TV at λ = 1 flattens the image: it cannot predict the held-out pixels, no penalty can
    result = reconstruct(noisy, regularizer="auto", regularizer_weight=1.0, ground_truth=clean,
                         **options)
    choice = result.config["regularizer_choice"]
    assert [row["weight"] for row in choice] == [0.0, 1.0]
    assert [row["chosen"] for row in choice] == [True, False]
    assert choice[0]["holdout_loss"] < choice[1]["holdout_loss"]
    assert choice[0]["psnr"] > choice[1]["psnr"]
    # and clearly so: many standard errors of the per-pixel differences (the winner has none)
    assert choice[0]["margin_z"] is None and choice[1]["margin_z"] > 5
    assert result.config["regularizer_weight"] == 0.0 and result.num_steps == 3 * 60
    # the chosen weight's held-out fit is member 0; member 1 fits all the pixels with that
    # weight, exactly as member 1 of an ensemble without a regularizer
    members = result.config["members"]
    assert len(members) == 2 and members[0]["psnr"] == choice[0]["psnr"]
    plain = reconstruct(noisy, ground_truth=clean, ensemble=2, **options)
    assert members[1] == {**plain.config["members"][1], "elapsed": members[1]["elapsed"],
                          "regularizer_weight": 0.0}  # the plain one has no penalty: None
    assert members[1]["psnr"] > choice[0]["psnr"]  # all the pixels: a better fit
    # a denoising default: the candidates are none and TV at TV_WEIGHT_PER_SIGMA · σ
    default = reconstruct(noisy, regularizer="auto", sigma=0.1, ensemble=2, **options)
    weights = [row["weight"] for row in default.config["regularizer_choice"]]
    assert weights == pytest.approx([0.0, deepprior.api.TV_WEIGHT_PER_SIGMA * 0.1])
    members = default.config["members"]
    assert len(members) == 3 and default.num_steps == 4 * 60  # two candidates, two more
    assert default.config["regularizer_weight"] in weights


def test_results_print_as_one_short_line():
    """A notebook that shows a result (or a callback that prints its state) gets shapes and
    the outcome, not pages of numbers."""
    from deepprior.fit import FitResult

    config = {"problem": "denoising", "net": "dip", "stop": "auto", "seed": 0}
    result = Reconstruction(image=np.zeros((256, 256, 3), np.float32), num_iter=700,
                            num_steps=900, stop_reason="discrepancy fired",
                            history={"loss": np.zeros(900), "psnr": np.zeros(900)},
                            psnr=28.43187, ssim=None, elapsed=61.25, device="cpu", config=config)
    text = repr(result)
    assert text == (
        "Reconstruction(image=float32(256, 256, 3), num_iter=700, num_steps=900, "
        "stop_reason='discrepancy fired', history={'loss': float64(900,), 'psnr': "
        "float64(900,)}, psnr=28.43, ssim=None, elapsed=61.25, device='cpu', "
        "config={'problem': 'denoising', 'net': 'dip', …}, members=None)")
    fitted = FitResult(output=torch.zeros(1, 3, 64, 64), best_step=5, num_steps=9,
                       stop_reason="x", loss=np.zeros(9, np.float32), psnr=None, elapsed=0.5,
                       num_restarts=0, final_learning_rate=0.01)
    assert repr(fitted) == (
        "FitResult(output=float32(1, 3, 64, 64), best_step=5, num_steps=9, stop_reason='x', "
        "loss=float32(9,), psnr=None, elapsed=0.5, num_restarts=0, final_learning_rate=0.01)")
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1), torch.nn.ReLU())  # a multi-line repr
    state = deepprior.FitState(step=3, net=net, z=torch.zeros(1, 1, 4, 4), y=torch.zeros(1, 16),
                               operator=None, loss=0.25, output=torch.zeros(1, 1, 4, 4),
                               optimizer=torch.optim.Adam(net.parameters()))
    assert repr(state) == (
        "FitState(step=3, net=<Sequential>, z=float32(1, 1, 4, 4), y=float32(1, 16), "
        "operator=None, loss=0.25, output=float32(1, 1, 4, 4), optimizer=<Adam>)")


def test_measurements_shaped_like_an_image_are_taken_in_deepprior_s_image_layout():
    """(H, W, C), the layout of images here, for an operator whose measurements are (C, H, W)
    (a mask, a blur): taken as that image, not reinterpreted entry by entry; a shape that is
    neither is refused."""
    x = sample_image("astronaut", size=16)
    op = deepprior.Mask((3, 16, 16), keep=0.5, seed=0)
    y_chw = op.A(image_to_tensor(x))
    _, y = deepprior.api._observation(tensor_to_image(y_chw), op, None)
    assert torch.equal(y, y_chw)
    with pytest.raises(ValueError, match=r"observation has shape \(16, 3, 16\) but the "
                                         r"operator's measurements have shape \(3, 16, 16\)"):
        deepprior.api._observation(np.zeros((16, 3, 16), np.float32), op, None)
    flat = y_chw.numpy().reshape(-1)  # flat, in the operator's order: as it is
    assert torch.equal(deepprior.api._observation(flat, op, None)[1], y_chw)


def test_what_a_mask_s_holes_hold_in_a_user_s_data_is_not_fitted_or_counted():
    """A damaged photo whose holes are white: the discrepancy rule measures the observed
    pixels only (the holes counted into the residual kept it from ever firing)."""
    x = sample_image("camera", size=16)
    op = deepprior.Mask((1, 16, 16), keep=0.5, seed=0)
    holes = ~op.mask[0, 0].numpy()
    white = np.where(holes, 1.0, x).astype(np.float32)
    _, y = deepprior.api._observation(white, op, None)
    assert torch.equal(y, op.A(image_to_tensor(x)))


def test_data_on_another_scale_than_an_image_in_0_1_is_warned_of():
    x = sample_image("camera", size=16)
    op = deepprior.GaussianSensing(100, (1, 16, 16), seed=0)
    y = op.A(image_to_tensor(x))[0].numpy()
    quick = {"net": "deep_decoder", "net_options": {"channels": 4}, "max_num_iter": 2,
             "stop": "fixed:2"}
    with pytest.warns(UserWarning, match=r"the measurements are [\d.]+ times larger than any "
                                         r"image in \[0, 1\] can give through this operator"):
        reconstruct(255 * y, op, **quick)
    ratio = deepprior.api._scale_ratio(op, torch.from_numpy(y))
    assert ratio < 1 < deepprior.api._scale_ratio(op, torch.from_numpy(255 * y)) / 50
    with warnings.catch_warnings():  # the image's own scale: no warning
        warnings.filterwarnings("error", message="the measurements are")
        reconstruct(y, op, **quick)
        module = deepprior.build_net("deep_decoder", (1, 16, 16), channels=4)[0]
        reconstruct(255 * y, op, net=module, max_num_iter=2, stop="fixed:2")  # any range


def test_an_operator_blind_to_the_constant_image_is_not_taken_for_another_scale():
    # finite differences map a flat image to 0: the gain comes from a random start instead
    x = image_to_tensor(sample_image("camera", size=16))

    def gradient(v):
        return torch.cat([(v[..., :, 1:] - v[..., :, :-1]).flatten(1),
                          (v[..., 1:, :] - v[..., :-1, :]).flatten(1)], 1)

    operator = deepprior.as_operator(gradient, (1, 16, 16))
    y = gradient(x)
    assert deepprior.api._scale_ratio(operator, y) < 1
    assert deepprior.api._scale_ratio(operator, 255 * y) > 10
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="the measurements are")
        deepprior.dry_run(y[0].numpy(), gradient, image_shape=(16, 16), net="deep_decoder")


def test_arguments_of_the_other_kind_of_network_are_refused_before_any_fit(monkeypatch):
    image = sample_image("camera", size=16)
    monkeypatch.setattr(deepprior.api, "fit", lambda *a, **k: pytest.fail("a fit began"))
    module, z = deepprior.build_net("deep_decoder", (1, 16, 16), channels=4)
    cases = [({"net": module, "net_input": z, "norm": "bogus"}, "norm must be one of"),
             ({"net": "deep_decoder", "net_input": z}, "net_input is the fixed input of a "
                                                      "module net=..."),
             ({"net": "deep_decoder", "net_options": {"norm": "batch"}}, "pass norm=... to "
                                                                         "reconstruct"),
             ({"net": "deep_decoder", "seed": 2**64 - 1}, "seed must be below 2\\*\\*63")]
    for options, message in cases:
        with pytest.raises(ValueError, match=message):
            reconstruct(image, stop="fixed:2", **options)


def test_an_ensemble_member_on_the_turned_image_is_checked_before_any_fit(monkeypatch):
    """Denoising, member 1 fits the image turned by 90°: a network that cannot take that
    shape fails before the first fit, not after it."""
    noisy = add_gaussian_noise(sample_image("camera", size=(16, 40)), 0.1, seed=0)
    monkeypatch.setattr(deepprior.api, "fit", lambda *a, **k: pytest.fail("a fit began"))
    with pytest.raises(ValueError, match=r"ensemble member 1 fits the image turned by 90° "
                                         r"\(40x16\), and the network cannot: input_size 4x20"):
        reconstruct(noisy, net="conv_decoder", ensemble=2, stop="fixed:3",
                    net_options={"input_size": (4, 20), "channels": 4})


def test_a_module_refit_after_a_choice_fits_the_image_as_it_is():
    """A module makes one image shape: denoising with several TV weights, the refit of the
    chosen one fits the unturned image (it was turned by 90°, and a non-square image refused
    with advice that could not help)."""
    noisy = add_gaussian_noise(sample_image("camera", size=(16, 24)), 0.1, seed=0)
    z = torch.rand(1, 4, 16, 24, generator=torch.Generator().manual_seed(0))
    result = reconstruct(noisy, net=TinyNet(), net_input=z, sigma=0.1, regularizer="tv",
                         regularizer_weight=[0.01, 0.1], stop="fixed:3")
    choice, members = result.config["regularizer_choice"], result.config["members"]
    tied = sum(row["averaged"] and not row["chosen"] for row in choice)  # held-out fits
    assert result.image.shape == (16, 24) and len(members) == 2 + tied and len(choice) == 2
    assert members[1]["quarter_turns"] == 0 and not members[1]["mirrored"]  # the refit


def test_a_later_member_cut_short_is_left_out_of_the_average():
    """Ctrl-C in the second fit of an ensemble: the image is the first fit's, not an average
    with a network that has barely started; the reason says the run was interrupted."""
    noisy = add_gaussian_noise(sample_image("camera", size=16), 0.1, seed=0)
    calls = []

    def interrupt_in_the_second_fit(state):
        calls.append(state.step)
        if len(calls) == 5:  # the first fit ran 4 iterations
            raise KeyboardInterrupt

    options = {"net": "deep_decoder", "net_options": {"channels": 4}, "max_num_iter": 4,
               "stop": "fixed:4", "regularizer": "none"}
    cut = reconstruct(noisy, ensemble=3, callback=interrupt_in_the_second_fit, **options)
    alone = reconstruct(noisy, ensemble=1, **options)
    np.testing.assert_array_equal(cut.image, alone.image)
    assert cut.stop_reason.startswith("interrupted at iteration 1 (fit 2 of 3)")  # planned
    assert "members" not in cut.config and cut.num_steps == 5


def test_sigma_zero_means_noiseless_and_a_sigma_on_another_scale_is_refused():
    clean = sample_image("camera", size=16)
    op = GaussianSensing(128, (16, 16), seed=0)
    y, sigma = deepprior.simulate_measurements(op, clean)  # noiseless: σ = 0
    assert sigma == 0
    result = reconstruct(y, op, sigma=sigma, max_num_iter=4, net_options=SMALL, **DD)
    assert result.config["stop"] == reconstruct(y, op, max_num_iter=1, net_options=SMALL,
                                                **DD).config["stop"]  # as without σ
    with pytest.raises(ValueError, match="the discrepancy rule stops at the noise level, and "
                                         "sigma=0 says there is none"):
        reconstruct(y, op, sigma=0, stop="discrepancy", max_num_iter=1, **DD)
    mask = Mask((16, 16), keep=0.5, seed=0)
    noisy, _ = deepprior.simulate_measurements(mask, clean, sigma=25 / 255, seed=0)
    with pytest.raises(ValueError, match=r"sigma=25 puts the noise alone at m·σ² = .* above 4 "
                                         r"times the measurements' ‖y‖².*sigma=25/255"):
        reconstruct(noisy, mask, sigma=25, max_num_iter=1, **DD)  # stopped at iteration 1
    with pytest.raises(ValueError, match=r"sigma=0.9 puts the noise alone .* measurements' "
                                         r"units$"):  # no "/255" for a value below 1
        reconstruct(noisy * 0.1, mask, sigma=0.9, max_num_iter=1, **DD)


def test_a_mix_whose_second_member_holds_out_checks_its_split_before_the_first_fit():
    image = np.random.default_rng(0).random((4, 4)).astype(np.float32)
    seen = []
    with pytest.raises(ValueError, match="leaves no data on one side of the split"):
        reconstruct(image, stop="holdout:fraction=0.01", regularizer="mix", seed=4,
                    max_num_iter=5, callback=lambda state: seen.append(state.step),
                    net_options=SMALL, **DD)
    assert seen == []  # member 1's split (seed 5) was drawn after member 0's whole fit


def test_a_split_holds_out_as_many_measurements_at_every_seed():
    """round(fraction · m) of the observed entries: a draw per entry held out 0-2 of 5
    measurements (and so failed at some seeds), 3-5 of 20 a mask's pixels."""
    op = GaussianSensing(5, (16, 16), seed=0)
    y = op.A(torch.rand(1, 1, 16, 16))
    mask = Mask((8, 8), keep=20 / 64, seed=0)
    for seed in range(8):
        *_, held_op, held_y = deepprior.stopping.split_measurements(op, y, 0.2, seed)
        assert held_y.numel() == held_op.num_measurements == 1
        *_, held_op, held_y = deepprior.stopping.split_measurements(
            mask, mask.A(torch.rand(1, 1, 8, 8)), 0.1, seed)
        assert held_y.numel() == held_op.num_measurements == 2  # of the 20 observed pixels
    with pytest.raises(ValueError, match=r"split of 5 measurements \(0.05 × 5 rounds to 0: it "
                                         r"holds out none"):
        deepprior.stopping.split_measurements(op, y, 0.05, 0)


def test_an_operators_description_must_be_json_ready_before_the_fit():
    class Described(GaussianSensing):
        def describe(self):
            return {**super().describe(), "note": (word for word in "lazy")}

    op = Described(20, (8, 8), seed=0)
    y = op.A(torch.rand(1, 1, 8, 8)).numpy()
    with pytest.raises(ValueError, match=r"Described.describe\(\) must return JSON-ready"):
        reconstruct(y, op, max_num_iter=1, **DD)
    from deepprior.io import jsonable

    assert jsonable({"t": torch.tensor([1.5, float("nan")])}) == {"t": [1.5, None]}


def test_no_refit_is_built_from_a_fit_that_accepted_no_iterate():
    image = sample_image("camera", size=24)
    nan_at_the_output = lambda x: torch.sqrt(1e-6 - (x - 0.5).abs().max())  # noqa: E731
    result = reconstruct(image, stop="holdout", ensemble=2, regularizer=nan_at_the_output,
                         regularizer_weight=1.0, max_num_iter=6, net_options=SMALL, **DD)
    assert result.stop_reason.startswith("diverged")  # "fixed:0" failed after the first fit


def test_dry_run_checks_the_call_and_returns_its_plan_without_fitting():
    y = np.random.default_rng(0).random((16, 16)).astype(np.float32)
    seen: list[dict] = []
    calls = []
    options = dict(net="dip", max_num_iter=2, stop="fixed:2", device="cpu",
                   net_options={"channels": 4, "num_scales": 2}, ensemble=2)
    plan = deepprior.dry_run(y, callback=lambda state: calls.append(state.step), **options)
    assert calls == []  # nothing fitted
    deepprior.reconstruct(y, on_start=seen.append, **options)
    assert plan == seen[0] and plan["fits"] == 2 and plan["problem"] == "denoise"
    assert plan["net_options"] == {"channels": 4, "num_scales": 2}  # the call's, as resolved
    with pytest.raises(ValueError, match="max_num_iter"):  # what reconstruct raises, before it
        deepprior.dry_run(y, max_num_iter=0)
    with pytest.raises(TypeError, match="no on_start"):
        deepprior.dry_run(y, on_start=print)


def test_options_together_a_users_penalty_a_stopping_callback_and_shapes():
    """An ensemble member fitting the turned image gave a user's penalty the turned output
    (a crash on a non-square image, the wrong pixels on a square one); a callback's True
    stopped one fit and the next ones ran an iteration each and were averaged in; a
    one-element penalty, σ = 0 for denoising, a ground truth or image_shape of the wrong
    shape were refused or told about wrongly."""
    noisy = np.random.default_rng(0).random((16, 24)).astype(np.float32)
    reference = torch.from_numpy(noisy)[None, None]
    seen = []

    def near(x):  # depends on where each pixel is
        seen.append(tuple(x.shape))
        return ((x - reference.to(x.device)) ** 2).mean(dim=(1, 2, 3))  # shape (1,)

    options = dict(net="deep_decoder", net_options={"channels": 4}, max_num_iter=3,
                   stop="fixed:3", device="cpu")
    result = deepprior.reconstruct(noisy, regularizer=near, ensemble=2, **options)
    assert len(result.config["members"]) == 2 and set(seen) == {(1, 1, 16, 24)}
    steps = []
    result = deepprior.reconstruct(noisy, ensemble=3, callback=lambda s: steps.append(s.step)
                                   or s.step >= 2, **options)
    assert steps == [1, 2] and "members" not in result.config  # no further fit started
    assert result.stop_reason.startswith("stopped by the callback")
    with pytest.raises(ValueError, match="sigma=0 says the image holds no noise"):
        deepprior.dry_run(noisy, sigma=0, **options)
    with pytest.raises(ValueError, match=r"image_shape \(1, 8, 8\) does not match the image to "
                                         r"denoise, \(1, 16, 24\)"):
        deepprior.dry_run(noisy, image_shape=(8, 8), **options)
    mask = deepprior.Mask((16, 24), keep=0.5)
    with pytest.raises(ValueError, match=r"ground_truth must have shape \(16, 24\), got \(8, 8\)"):
        deepprior.dry_run(noisy, mask, ground_truth=noisy[:8, :8], **options)
    plan = deepprior.dry_run(noisy, mask, regularizer="none", **options)
    assert plan["regularizer_weights"] == [0.0]


@pytest.mark.parametrize(("stop", "sigma", "message"), [
    ("wmv", None, r"the WMV rule reads its first value at iteration 100, after max_num_iter=2"),
    ("holdout:every=5", None, "the hold-out rule reads its first value at iteration 5"),
    ("discrepancy", 0.4, r"noise level τ·m·σ² = 163.8 is met by a constant image \(its "
                         r"residual [\d.]+\): the fit stops at its first reading"),
    ("discrepancy:margin=0.2", 0.1, r"margin 0.2 is not below σ = 0.1"),
    ("discrepancy", None, r"σ = 1e-06: the data look noiseless"),  # σ estimated: the floor
])
def test_a_rule_that_cannot_stop_the_fit_is_said_before_it(stop, sigma, message):
    image = sample_image("camera", size=32)
    observed = image if sigma is not None or stop != "discrepancy" else np.full_like(image, 0.5)
    if sigma is not None:
        observed = add_gaussian_noise(image, 0.1, seed=0)
    steps = []
    with pytest.warns(UserWarning, match=message):
        reconstruct(observed, stop=stop, sigma=sigma, max_num_iter=2, net_options=SMALL,
                    callback=lambda state: steps.append(state.step), **DD)
    assert steps  # a warning, not a refusal
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the right σ: no doubt
        warnings.filterwarnings("ignore", message="image size")  # 32x32: cropped from 64x64
        reconstruct(add_gaussian_noise(image, 0.1, seed=0), stop="discrepancy", sigma=0.1,
                    max_num_iter=2, net_options={"channels": 8}, net="deep_decoder")


def test_a_variance_rule_on_the_averaged_dip_output_is_said_to_not_fire():
    noisy = add_gaussian_noise(sample_image("camera", size=32), 0.1, seed=0)
    with pytest.warns(UserWarning, match="WMV and EMV read the output average dip returns"):
        reconstruct(noisy, net="dip", stop="emv:burn_in=1", max_num_iter=1, regularizer="none",
                    net_options={"channels": 4})


def test_image_tensor_conversions_refuse_what_they_would_misread():
    """A (C, H, W) array became (1, H, C, W); a batch of two lost its second image."""
    with pytest.raises(ValueError, match=r"looks like \(C, H, W\)"):
        image_to_tensor(np.zeros((3, 16, 16)))
    with pytest.raises(ValueError, match=r"must be \(H, W\) or \(H, W, C\), got shape \(5,\)"):
        image_to_tensor(np.zeros(5))
    for shape in ((3, 4, 4), (2, 3, 4, 4)):
        with pytest.raises(ValueError, match=r"one image as a \(1, C, H, W\) tensor"):
            tensor_to_image(torch.zeros(shape))
    image = np.random.default_rng(0).random((4, 6, 3)).astype(np.float32) * 3  # any values
    np.testing.assert_array_equal(tensor_to_image(image_to_tensor(image)), image)


def test_the_sigma_behind_an_automatic_tv_weight_is_reported():
    """regularizer='tv' without a weight takes λ from σ estimated when denoising: the report
    said sigma None under a stop that needs no σ."""
    noisy = add_gaussian_noise(sample_image("camera", size=32), 25 / 255, seed=0)
    options = {"net_options": {"channels": 8}, "max_num_iter": 2, "stop": "fixed:2", **DD}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 32x32: cropped from the net's 64x64
        estimated = reconstruct(noisy, regularizer="tv", **options).config
        given = reconstruct(noisy, regularizer="tv", sigma=0.1, **options).config
        plain = reconstruct(noisy, **options).config
    assert estimated["sigma"] == pytest.approx(deepprior.estimate_sigma(noisy))
    assert estimated["sigma_estimated"] and not given["sigma_estimated"]
    assert estimated["regularizer_weight"] == pytest.approx(
        given["regularizer_weight"] * estimated["sigma"] / 0.1)
    assert plain["sigma"] is None and not plain["sigma_estimated"]


def test_a_near_tied_weight_has_its_held_out_fit_averaged_in_at_no_extra_fit(monkeypatch):
    clean = sample_image("camera", size=32)
    noisy = add_gaussian_noise(clean, 0.1, seed=0)
    options = {"max_num_iter": 40, "stop": "fixed:40", "net_options": {"channels": 16},
               "regularizer": "tv", "ground_truth": clean, **DD}
    # two tiny weights fit alike (a near tie); λ = 1 flattens the image (clearly worse)
    weights = [1e-7, 2e-7, 1.0]
    result = reconstruct(noisy, regularizer_weight=weights, **options)
    choice = result.config["regularizer_choice"]
    chosen = next(i for i, row in enumerate(choice) if row["chosen"])
    tied = 1 - chosen
    assert chosen in (0, 1) and choice[tied]["margin_z"] < deepprior.api.NEAR_TIE_Z
    assert choice[2]["margin_z"] > 5 and not choice[2]["averaged"]
    assert choice[chosen]["averaged"] and choice[tied]["averaged"]
    # the chosen one's held-out fit, its refit to all the pixels, then the tied one's fit
    members = result.config["members"]
    assert [m["regularizer_weight"] for m in members] == [weights[chosen]] * 2 + [weights[tied]]
    assert members[2]["psnr"] == choice[tied]["psnr"] and members[2]["num_iter"] == 40
    assert result.history["member_loss"].shape[0] == 3
    assert result.num_steps == 4 * 40 and result.stop_reason.startswith("average of 3 fits")
    # without averaging near ties: the same fits, two members, another image
    monkeypatch.setattr(deepprior.api, "NEAR_TIE_Z", 0.0)
    alone = reconstruct(noisy, regularizer_weight=weights, **options)
    assert len(alone.config["members"]) == 2 and alone.num_steps == result.num_steps
    assert [row["averaged"] for row in alone.config["regularizer_choice"]] == \
        [i == chosen for i in range(3)]
    def timeless(rows):
        return [{k: v for k, v in row.items() if k != "elapsed"} for row in rows]
    assert timeless(alone.config["members"]) == timeless(members[:2])
    assert not np.array_equal(alone.image, result.image)
    np.testing.assert_array_equal(alone.members, result.members[:2])  # the tie's image: third
    assert psnr(clean, np.clip(result.members[2], 0, 1)) == pytest.approx(members[2]["psnr"],
                                                                          abs=1e-4)
    # a stop the user made (Ctrl-C in the refit): the chosen fit alone, no near tie averaged
    monkeypatch.setattr(deepprior.api, "NEAR_TIE_Z", 2.0)
    calls = []

    def interrupt_in_the_refit(state):
        calls.append(state.step)
        if len(calls) == 3 * 40 + 5:
            raise KeyboardInterrupt

    cut = reconstruct(noisy, regularizer_weight=weights, callback=interrupt_in_the_refit,
                      **options)
    assert cut.stop_reason.startswith("interrupted") and "members" not in cut.config
    assert cut.members is None is cut.spread
    assert [row["averaged"] for row in cut.config["regularizer_choice"]] == \
        [i == chosen for i in range(3)]


def test_a_choice_on_too_few_held_out_measurements_is_warned_of_and_an_empty_weight_list_refused():
    clean = sample_image("camera", size=16)
    op = GaussianSensing(8, (16, 16), seed=0)
    y, _ = deepprior.simulate_measurements(op, clean, sigma=0.05, seed=0)
    with pytest.warns(UserWarning, match=r"the 3 regularizer weights are compared on 1 held-out"):
        result = reconstruct(y, op, max_num_iter=3, net_options={"channels": 4})
    assert [row["margin_z"] for row in result.config["regularizer_choice"]] == [None] * 3
    for name in ("auto", "mix"):  # 0 alone was one fit without a penalty
        with pytest.raises(ValueError, match=f"regularizer='{name}' needs at least one TV"):
            reconstruct(clean, regularizer=name, regularizer_weight=[], max_num_iter=1, **DD)


def test_the_fit_result_type_is_exported_and_simulate_measurements_checks_the_image_scale():
    assert deepprior.FitResult is deepprior.fit_many.__globals__["FitResult"]
    assert "FitResult" in deepprior.__all__
    with pytest.raises(ValueError, match=r"image values go up to 255, beyond the \[0, 1\]"):
        deepprior.simulate_measurements(GaussianSensing(20, (8, 8)), np.full((8, 8), 255.0))
    with pytest.raises(TypeError, match="expected a torch tensor"):
        tensor_to_image(np.zeros((1, 1, 4, 4)))
