"""Apple's MPS, which has no float64: the checks and sums that run in float64 elsewhere (skipped
where there is no MPS)."""

import numpy as np
import pytest
import torch

import deepprior
from deepprior.analysis import lanczos

pytestmark = pytest.mark.skipif(
    not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
    reason="needs Apple's MPS")


def test_an_operator_a_fit_moved_to_mps_serves_a_second_fit():
    """The first fit moves the operator to MPS in place; the second call checks its adjoint
    and scales TV's weight with it there."""
    camera = deepprior.sample_image("camera", size=32)
    op = deepprior.GaussianSensing(300, (32, 32), seed=0)
    y, _ = deepprior.simulate_measurements(op, camera, snr_db=30, seed=0)
    for _ in range(2):
        result = deepprior.reconstruct(y, op, net="deep_decoder", stop="fixed:3",
                                       regularizer="tv", device="mps",
                                       net_options={"channels": 8})
        assert result.device.startswith("mps") and np.isfinite(result.image).all()
    assert deepprior.adjointness_error(op) < 1e-3


def test_lanczos_on_mps_finds_the_extreme_eigenvalues():
    diagonal = torch.linspace(1, 10, 20, device="mps")
    result = lanczos(lambda v: diagonal * v, torch.ones(20, device="mps"), 20)
    assert result.ritz_values[0] == pytest.approx(1, rel=1e-4)
    assert result.ritz_values[-1] == pytest.approx(10, rel=1e-4)
