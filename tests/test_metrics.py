import numpy as np
import pytest
import torch

from deepprior.metrics import mse, psnr, psnr_tensor, ssim, total_variation


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


def test_total_variation_counts_edges_and_stays_differentiable_on_flat_images():
    flat = torch.full((1, 1, 8, 8), 0.3, requires_grad=True)
    value = total_variation(flat)
    assert float(value.detach()) == pytest.approx(1e-4)  # sqrt(ε) per pixel
    value.backward()
    assert torch.isfinite(flat.grad).all() and float(flat.grad.abs().max()) == 0.0
    step = torch.zeros(1, 1, 8, 8)
    step[..., 4:] = 1.0  # one vertical edge of height 1 along 8 rows: 8 of 64 pixels
    assert float(total_variation(step)) == pytest.approx(8 / 64, abs=1e-3)
    assert float(total_variation(step.transpose(-1, -2))) == pytest.approx(8 / 64, abs=1e-3)


def test_an_8_bit_reference_needs_its_data_range():
    rng = np.random.default_rng(2)
    clean = (rng.random((16, 16)) * 255).round()
    noisy = clean + rng.normal(0, 25, clean.shape)
    for measure in (psnr, ssim):  # psnr gave -27.7 dB with the default data_range=1
        with pytest.raises(ValueError, match=r"up to 2\d\d, beyond the \[0, 1\] scale: "
                                             r"pass data_range=255"):
            measure(clean.astype(np.uint8), noisy)
    assert psnr(clean, noisy, data_range=255) == pytest.approx(20.2, abs=0.5)
    assert psnr(clean / 255, np.full((16, 16), 7.0)) < 0  # a reconstruction may overshoot
    with pytest.raises(ValueError, match="data_range"):
        psnr(clean / 255, noisy / 255, data_range=0)
    with pytest.raises(ValueError, match=r"reference and image are empty \(shape \(0, 0\)\)"):
        psnr(np.zeros((0, 0)), np.zeros((0, 0)))  # was NaN, with numpy's empty-slice warnings


def test_ssim_refuses_a_channels_first_array_and_psnr_tensor_a_shape_mismatch():
    rng = np.random.default_rng(3)
    a, b = rng.random((2, 3, 16, 16))  # (C, H, W): ssim would compare along the wrong axes
    with pytest.raises(ValueError, match=r"looks like \(C, H, W\)"):
        ssim(a, b)
    with pytest.raises(ValueError, match=r"\(H, W\) or \(H, W, C\)"):
        ssim(a[None], b[None])
    assert psnr(a, b) == pytest.approx(psnr(a.transpose(1, 2, 0), b.transpose(1, 2, 0)))
    with pytest.raises(ValueError, match="same shape"):
        psnr_tensor(torch.rand(1, 1, 8, 8), torch.rand(1, 3, 8, 8))
