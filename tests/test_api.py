"""reconstruct(): end to end on tiny images, and every validation message."""

import dataclasses

import numpy as np
import pytest
import torch

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

SMALL = {"channels": 16}


@pytest.fixture(scope="module")
def camera64():
    return sample_image("camera", size=64)


def test_denoising_gains_more_than_3db(camera64):
    noisy = add_gaussian_noise(camera64, 25 / 255, seed=0)
    result = reconstruct(noisy, max_num_iter=400, stop="fixed:400", ground_truth=camera64,
                         net_options={"channels": 32})
    assert result.image.shape == (64, 64) and result.image.dtype == np.float32
    assert result.psnr > psnr(camera64, noisy) + 3.0
    assert result.psnr == pytest.approx(psnr(camera64, result.image))
    assert len(result.history["loss"]) == 400 and len(result.history["psnr"]) == 400
    assert result.config["net"] == "deep_decoder" and result.device == "cpu"


def test_same_seed_same_output_and_colour_layout():
    clean = sample_image("astronaut", size=(33, 40))
    noisy = add_gaussian_noise(clean, 0.1, seed=2)
    run = [reconstruct(noisy, max_num_iter=10, stop="fixed:10", seed=4, net_options=SMALL)
           for _ in range(2)]
    assert run[0].image.shape == (33, 40, 3)
    np.testing.assert_array_equal(run[0].image, run[1].image)
    other = reconstruct(noisy, max_num_iter=10, stop="fixed:10", seed=5, net_options=SMALL)
    assert not np.array_equal(run[0].image, other.image)


def test_result_is_frozen(camera64):
    result = reconstruct(camera64[:32, :32], max_num_iter=3, stop="fixed:3", net_options=SMALL)
    assert isinstance(result, Reconstruction)
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.num_iter = 5


def test_compressive_sensing_beats_least_squares(camera64):
    x = camera64[::2, ::2].copy()  # 32x32, n = 1024
    op = GaussianSensing(400, (1, 32, 32), seed=0)
    y = op.A(image_to_tensor(x))[0]
    result = reconstruct(y, op, max_num_iter=300, stop="fixed:300", ground_truth=x)
    a = op.matrix.double().numpy()
    least_norm = np.linalg.lstsq(a, y.double().numpy().reshape(-1), rcond=None)[0]
    assert result.image.shape == (32, 32)
    assert result.psnr > psnr(x, np.clip(least_norm.reshape(32, 32), 0, 1)) + 2.0


def test_inpainting_with_a_mask(camera64):
    op = Mask((1, 64, 64), keep=0.5, seed=0)
    y = op.A(image_to_tensor(camera64))[0]
    result = reconstruct(y, op, max_num_iter=200, stop="fixed:200", ground_truth=camera64,
                         net_options={"channels": 32})
    assert result.psnr > psnr(camera64, tensor_to_image(y[None])) + 3.0


def test_holdout_and_oracle_rules_run(camera64):
    noisy = add_gaussian_noise(camera64[:32, :32], 0.1, seed=0)
    held = reconstruct(noisy, max_num_iter=30, stop="holdout:fraction=0.2,patience=5",
                       net_options=SMALL)
    assert held.num_iter <= held.num_steps <= 30
    oracle = reconstruct(noisy, max_num_iter=30, stop="oracle", ground_truth=camera64[:32, :32],
                         net_options=SMALL)
    assert oracle.num_iter == int(np.argmax(oracle.history["psnr"])) + 1


def test_tensor_input_and_batch_axis(camera64):
    y = torch.from_numpy(camera64[:32, :32])
    result = reconstruct(y, max_num_iter=2, stop="fixed:2", net_options=SMALL)
    assert result.image.shape == (32, 32)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"net": "unet"}, ValueError, "net must be one of deep_decoder"),
        ({"norm": "layer"}, ValueError, "norm must be one of channel, batch, none"),
        ({"max_num_iter": 0}, ValueError, "max_num_iter must be an integer >= 1"),
        ({"max_num_iter": 2.5}, TypeError, "max_num_iter must be an integer"),
        ({"learning_rate": -1.0}, ValueError, "learning_rate must be a finite number > 0"),
        ({"sigma": 25.0}, ValueError, "sigma=25.0/255"),
        ({"sigma": -0.1}, ValueError, "sigma must be a finite number >= 0"),
        ({"seed": -1}, ValueError, "seed must be an integer >= 0"),
        ({"stop": "oracle"}, ValueError, "needs ground_truth"),
        ({"stop": 3}, TypeError, "stop must be a rule"),
        ({"ground_truth": np.zeros((5, 5))}, ValueError, r"must have shape \(16, 16\)"),
    ],
)
def test_invalid_arguments(kwargs, error, match):
    image = np.full((16, 16), 0.5, dtype=np.float32)
    with pytest.raises(error, match=match):
        reconstruct(image, max_num_iter=kwargs.pop("max_num_iter", 2), **kwargs)


def test_invalid_observations():
    with pytest.raises(ValueError, match="divide 8-bit data by 255"):
        reconstruct(np.full((16, 16), 200.0), max_num_iter=1)
    with pytest.raises(ValueError, match="NaN or infinite"):
        reconstruct(np.full((16, 16), np.nan), max_num_iter=1)
    with pytest.raises(TypeError, match="numpy array or torch tensor"):
        reconstruct([[0.5, 0.5]], max_num_iter=1)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        reconstruct(np.zeros((16, 16, 5)), max_num_iter=1)
    op = GaussianSensing(50, (1, 16, 16), seed=0)
    with pytest.raises(ValueError, match=r"operator produces measurements of shape \(1, 50\)"):
        reconstruct(np.zeros(49, dtype=np.float32), op, max_num_iter=1)
    with pytest.raises(ValueError, match="pass sigma="):
        reconstruct(np.zeros((1, 50), dtype=np.float32), op, stop="discrepancy", max_num_iter=1)
