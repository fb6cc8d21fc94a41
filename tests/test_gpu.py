"""The CUDA path: the same fits as on the CPU, on a GPU (skipped where there is none).

Run by ``benchmarks/gpu_check.sh`` on a machine with a GPU.
"""

import copy

import numpy as np
import pytest
import torch

import deepprior

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
SMALL = {"channels": 16}


@pytest.fixture(scope="module")
def camera():
    return deepprior.sample_image("camera", size=64)


@pytest.mark.parametrize("net", ["deep_decoder", "dip", "conv_decoder"])
def test_denoising_on_cuda_matches_the_cpu(camera, net):
    noisy = deepprior.add_gaussian_noise(camera, 0.1, seed=0)
    runs = {device: deepprior.reconstruct(noisy, net=net, stop="fixed:30", device=device,
                                          ground_truth=camera, net_options=SMALL)
            for device in ("cpu", "cuda")}
    assert runs["cuda"].device.startswith("cuda")
    assert runs["cuda"].num_iter == runs["cpu"].num_iter == 30
    assert abs(runs["cuda"].psnr - runs["cpu"].psnr) < 0.2  # float order differs, not the fit


@pytest.mark.parametrize("operator", ["gaussian", "fast", "matrix", "function"])
def test_every_kind_of_operator_runs_on_cuda(camera, operator):
    built = deepprior.GaussianSensing(800, (64, 64), seed=0)
    y, _ = deepprior.simulate_measurements(built, camera, seed=0)
    matrix = built.matrix
    model = {
        "gaussian": built,
        "fast": deepprior.FastSensing(800, (64, 64), seed=0),
        "matrix": matrix.numpy(),
        "function": torch.nn.Module(),
    }[operator]
    if operator == "function":  # a user's physics module with a buffer: moved with the fit
        model.register_buffer("M", matrix.clone())
        model.A = lambda x: x.reshape(1, -1) @ model.M.T
    if operator == "fast":
        y, _ = deepprior.simulate_measurements(model, camera, seed=0)
    result = deepprior.reconstruct(y, model, image_shape=(64, 64), stop="patience:50",
                                   max_num_iter=100, device="cuda", net_options=SMALL,
                                   problem="compressive_sensing")
    assert np.isfinite(result.image).all() and result.device.startswith("cuda")


def test_bf16_on_cuda_fits_like_fp32(camera):
    noisy = deepprior.add_gaussian_noise(camera, 0.1, seed=0)
    runs = {p: deepprior.reconstruct(noisy, net="dip", stop="fixed:100", device="cuda",
                                     ground_truth=camera, net_options=SMALL, precision=p)
            for p in ("fp32", "bf16")}
    assert runs["bf16"].image.dtype == np.float32
    assert abs(runs["bf16"].psnr - runs["fp32"].psnr) < 0.5


class SmoothImage(torch.nn.Module):
    """``sigmoid(B θ Bᵀ)``, B a fixed 64×8 linear interpolation: a smooth image fitted through
    matrix products alone, so that two CUDA fits of it are equal to the bit. Not so a
    network's: CUDA sums the gradients of bilinear upsampling and reflection padding with
    atomics, in no fixed order, and a fit amplifies the last bits that changes."""

    input_shape = (1, 1, 1, 1)

    def __init__(self, size=64, knots=8):
        super().__init__()
        grid = torch.linspace(0, knots - 1, size)
        self.register_buffer("basis", (1 - (grid[:, None] - torch.arange(knots)).abs()).clamp(0))
        self.theta = torch.nn.Parameter(torch.zeros(knots, knots))

    def forward(self, z):
        image = self.basis @ self.theta @ self.basis.T + 0 * z.mean()
        return torch.sigmoid(image)[None, None]


def late_and_every(noisy, device):
    """The hold-out rule reading the loop's outputs late (as on a GPU) and every iteration."""
    options = {"stop": "holdout:patience=20", "max_num_iter": 400, "device": device,
               "learning_rate": 0.3}
    late = deepprior.reconstruct(noisy, net=SmoothImage(), **options)  # sync_every=8 on a GPU
    every = deepprior.reconstruct(noisy, net=SmoothImage(), callback=lambda state: None,
                                  **options)  # a callback: one read per iteration
    return late, every


def test_stopping_rules_read_late_on_cuda_return_the_same_iterate(camera):
    late, every = late_and_every(deepprior.add_gaussian_noise(camera, 0.1, seed=0), "cuda")
    assert late.num_steps < 400  # the rule stopped the fit
    assert late.num_iter == every.num_iter and late.num_steps == every.num_steps
    np.testing.assert_array_equal(late.image, every.image)


def test_ensemble_and_many_fits_on_one_gpu(camera):
    noisy = deepprior.add_gaussian_noise(camera, 0.1, seed=0)
    ensemble = deepprior.reconstruct(noisy, ensemble=2, stop="fixed:10", device="cuda",
                                     net_options=SMALL)
    assert len(ensemble.config["members"]) == 2
    items = [(f"crop{i}", noisy[16 * i:16 * i + 32, :32]) for i in range(3)]
    results = list(deepprior.reconstruct_many(items, device="cuda", gpus_per_fit=0.5,
                                              stop="fixed:10", net_options=SMALL))
    assert sorted(r.name for r in results) == ["crop0", "crop1", "crop2"]
    assert all(r.ok and r.result.device.startswith("cuda") for r in results)


@pytest.mark.parametrize(("net", "options"), [
    ("deep_decoder", {"channels": 8, "num_layers": 4}),
    ("dip", {"channels": 8, "skip_channels": 2, "num_scales": 3, "input_channels": 4}),
])
def test_k_fits_at_once_on_cuda_match_the_fits_in_turn(camera, net, options):
    size, k = 64, 3
    noisy = [torch.from_numpy(deepprior.add_gaussian_noise(camera, 0.1, seed=s))[None, None]
             for s in range(k)]
    op = deepprior.Identity((1, size, size))
    built = [deepprior.build_net(net, (1, size, size), seed=s, **options) for s in range(k)]
    policies = [deepprior.stopping.Fixed(n) for n in (8, 5, 3)]
    alone = [deepprior.fit(copy.deepcopy(m), z, y, op, policy=deepprior.stopping.Fixed(n),
                           max_num_iter=n, device="cuda", seed=s, ema=0.9)
             for s, ((m, z), y, n) in enumerate(zip(built, noisy, (8, 5, 3), strict=True))]
    together = deepprior.fit_many([m for m, _ in built], [z for _, z in built], noisy, [op] * k,
                                  policies=policies, max_num_iter=[8, 5, 3], device="cuda",
                                  ema=0.9)
    for a, b in zip(together, alone, strict=True):
        assert a.num_steps == b.num_steps and a.output.device.type == "cpu"
        np.testing.assert_allclose(a.loss[0], b.loss[0], rtol=1e-3)  # the same weights
        # a few iterations, averaged (DIP's EMA): a fit amplifies the order of float
        # operations, which batching (and TF32) changes
        torch.testing.assert_close(a.output, b.output, rtol=0, atol=1e-2)


def test_a_users_penalty_holding_cuda_tensors_is_probed_on_cuda(camera):
    noisy = deepprior.add_gaussian_noise(camera, 0.1, seed=0)
    weights = torch.linspace(0.5, 1.5, 64, device="cuda")  # the penalty's own CUDA tensor

    def penalty(image):
        return (weights[:, None] * image[0, 0].diff(dim=-1).abs()).mean()

    result = deepprior.reconstruct(noisy, net="deep_decoder", stop="fixed:5", device="cuda",
                                   regularizer=penalty, regularizer_weight=0.01,
                                   net_options=SMALL)
    assert np.isfinite(result.image).all()


def test_a_users_function_holding_cpu_tensors_is_refused_before_the_fit_on_cuda(camera):
    matrix = torch.randn(800, 64 * 64) / 800 ** 0.5  # held by the callable, not a buffer
    y = (matrix @ torch.as_tensor(camera).reshape(-1)).numpy()
    with pytest.raises(ValueError, match=r"A failed on an image on cuda.*M\.to\(x\.device\)"):
        deepprior.reconstruct(y, lambda x: x.reshape(1, -1) @ matrix.T, image_shape=(64, 64),
                              device="cuda", problem="compressive_sensing", stop="fixed:5")
    follows = deepprior.reconstruct(y, lambda x: x.reshape(1, -1) @ matrix.to(x.device).T,
                                    image_shape=(64, 64), device="cuda", stop="fixed:5",
                                    problem="compressive_sensing", net_options=SMALL)
    assert follows.device.startswith("cuda")


def test_a_held_out_part_reports_its_bases_device_before_its_first_call():
    base = deepprior.GaussianSensing(100, (16, 16), seed=0).to("cuda")
    keep = torch.zeros(1, 100, dtype=torch.bool)
    keep[0, :10] = True
    assert deepprior.operators.RestrictedOperator(base, keep).device.type == "cuda"
