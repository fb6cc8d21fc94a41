import numpy as np
import pytest
import torch

from deepprior.metrics import mse, psnr, psnr_tensor, ssim


def test_psnr_known_value_and_identity():
    a = np.zeros((5, 7), dtype=np.float32)
    assert psnr(a, a + 0.1) == pytest.approx(20.0)
    assert psnr(a, a) == float("inf")
    assert mse(a, a + 0.5) == pytest.approx(0.25)


def test_psnr_tensor_matches_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.random((2, 3, 9, 11))
    expected = psnr(a, b)
    got = psnr_tensor(torch.from_numpy(a), torch.from_numpy(b)).item()
    assert got == pytest.approx(expected, rel=1e-9)


def test_ssim_gray_and_colour():
    rng = np.random.default_rng(1)
    a = rng.random((23, 17))
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, rng.random((23, 17))) < 0.2
    c = rng.random((23, 17, 3))
    assert ssim(c, c) == pytest.approx(1.0)


def test_shape_mismatch_and_tiny_images():
    with pytest.raises(ValueError, match="same shape"):
        psnr(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="at least 3x3"):
        ssim(np.zeros((2, 2)), np.zeros((2, 2)))
