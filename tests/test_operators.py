"""Tests for deepprior.operators: adjointness, shapes, determinism, scaling, speed, validation."""

import json
import math
import time

import numpy as np
import pytest
import scipy.fft
import scipy.linalg
import torch

from deepprior.operators import (
    FastSensing,
    GaussianSensing,
    Identity,
    LinearOperator,
    Mask,
    RestrictedOperator,
    adjointness_error,
    operator_from_description,
)

H, W = 23, 17  # odd sizes on purpose
N = H * W


def _random_keep(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator) < 0.7


def _explicit_mask(channels: int) -> np.ndarray:
    return np.random.default_rng(1).random((channels, H, W)) < 0.4


OPERATOR_FACTORIES = {
    "identity": lambda c: Identity((c, H, W)),
    "gaussian": lambda c: GaussianSensing(100, (c, H, W), seed=1),
    "fast-dct": lambda c: FastSensing(100, (c, H, W), seed=1),
    "fast-hadamard": lambda c: FastSensing(50, (c, 16, 8), seed=1, transform="hadamard"),
    "mask-random": lambda c: Mask((c, H, W), keep=0.3, seed=1),
    "mask-explicit": lambda c: Mask((c, H, W), mask=_explicit_mask(c)),
    "restricted-gaussian": lambda c: GaussianSensing(100, (c, H, W), seed=1).restrict(
        _random_keep((c, 100))
    ),
    "restricted-identity": lambda c: Identity((c, H, W)).restrict(_random_keep((c, H, W))),
}


def _image(shape: tuple[int, int, int], seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((1, *shape), generator=generator, dtype=dtype)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(OPERATOR_FACTORIES))
def test_adjointness_all_operators(name, channels):
    op = OPERATOR_FACTORIES[name](channels)
    assert adjointness_error(op, seed=0) < 1e-6
    assert adjointness_error(op, seed=7) < 1e-6
    # the check works on a copy: the operator keeps its float32 buffers
    for buffer in op.buffers():
        assert buffer.dtype in (torch.float32, torch.bool, torch.int64)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(OPERATOR_FACTORIES))
def test_shapes_and_dtypes(name, channels):
    op = OPERATOR_FACTORIES[name](channels)
    x = _image(op.image_shape)
    y = op.A(x)
    assert tuple(y.shape) == (1, *op.measurement_shape)
    # a Mask's y keeps the image shape but counts only the observed entries as measurements
    observed = int((op.A(torch.ones_like(x)) != 0).sum()) if isinstance(op, Mask) else y.numel()
    assert op.num_measurements == observed
    assert torch.equal(op(x), y)
    back = op.A_adjoint(y)
    assert tuple(back.shape) == (1, *op.image_shape)
    assert y.dtype == back.dtype == torch.float32
    # float64 inputs give float64 outputs, with or without converting the operator
    y64 = op.A(x.double())
    assert y64.dtype == torch.float64
    torch.testing.assert_close(y64, y.double(), atol=1e-5, rtol=1e-5)
    op64 = op.to(torch.float64)
    assert op64.A(x.double()).dtype == torch.float64
    assert op64.A_adjoint(y64).dtype == torch.float64
    assert op.device == torch.device("cpu")


def test_measurement_shapes():
    assert GaussianSensing(100, (3, H, W)).measurement_shape == (3, 100)
    assert FastSensing(100, (3, H, W)).measurement_shape == (3, 100)
    assert Mask((3, H, W), keep=0.5).measurement_shape == (3, H, W)
    assert Identity((2, H, W)).num_measurements == 2 * N
    restricted = Identity((1, H, W)).restrict(_random_keep((1, H, W)))
    assert isinstance(restricted, RestrictedOperator)
    assert restricted.measurement_shape == (int(_random_keep((1, H, W)).sum()),)


def test_colour_channels_share_the_same_matrix():
    for op in (GaussianSensing(60, (3, H, W), seed=2), FastSensing(60, (3, H, W), seed=2)):
        x = _image((1, H, W))
        y = op.A(x.expand(1, 3, H, W).contiguous())
        torch.testing.assert_close(y[0, 0], y[0, 1])
        torch.testing.assert_close(y[0, 0], y[0, 2])


def test_gaussian_matches_explicit_matrix():
    op = GaussianSensing(50, (1, H, W), seed=3)
    x = _image((1, H, W))
    torch.testing.assert_close(op.A(x)[0, 0], op.matrix @ x.flatten())
    assert op.matrix.shape == (50, N)
    # entries N(0, 1/m): empirical variance close to 1/m
    assert op.matrix.var().item() * 50 == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize(
    "factory",
    [
        lambda seed: GaussianSensing(80, (1, H, W), seed=seed),
        lambda seed: FastSensing(80, (1, H, W), seed=seed),
        lambda seed: FastSensing(80, (1, 16, 8), seed=seed, transform="hadamard"),
        lambda seed: Mask((1, H, W), keep=0.5, seed=seed),
    ],
)
def test_determinism(factory):
    x = _image((1, *factory(0).image_shape[1:]))
    first, again, other = factory(0), factory(0), factory(1)
    assert torch.equal(first.A(x), again.A(x))
    assert not torch.equal(first.A(x), other.A(x))


def test_operator_build_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    GaussianSensing(50, (1, H, W), seed=5)
    FastSensing(50, (1, H, W), seed=5)
    Mask((1, H, W), keep=0.5, seed=5)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("shape", [(1, H, W), (3, H, W), (1, 1, 7), (2, 8, 8)])
def test_dct_is_orthonormal_dct2(shape):
    n = shape[1] * shape[2]
    op = FastSensing(n, shape, seed=4).to(torch.float64)
    assert op.scale == 1.0
    x = torch.randn((1, *shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = op.A(x)
    # with m = n the operator is orthogonal: norms kept, adjoint is the inverse
    torch.testing.assert_close(y.norm(), x.norm())
    torch.testing.assert_close(op.A_adjoint(y), x)
    # and equals scipy's orthonormal DCT-II of the sign-flipped image
    reference = scipy.fft.dctn((x * op.signs).numpy(), axes=(-2, -1), norm="ortho")
    torch.testing.assert_close(y, torch.from_numpy(reference).reshape(1, shape[0], n))


def test_hadamard_matches_sylvester_matrix():
    op = FastSensing(128, (1, 16, 8), seed=4, transform="hadamard").to(torch.float64)
    x = torch.randn((1, 1, 16, 8), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    hadamard = torch.from_numpy(scipy.linalg.hadamard(128) / math.sqrt(128))
    expected = hadamard @ (x * op.signs).flatten()
    torch.testing.assert_close(op.A(x).flatten(), expected)


@pytest.mark.parametrize(
    "op",
    [
        GaussianSensing(150, (1, H, W), seed=0),
        FastSensing(150, (1, H, W), seed=0),
        FastSensing(32, (1, 16, 8), seed=0, transform="hadamard"),
    ],
    ids=["gaussian", "fast-dct", "fast-hadamard"],
)
def test_expected_gram_is_identity(op):
    # E||A x||^2 = ||x||^2 over random directions x when E[A^T A] = I
    op = op.to(torch.float64)
    generator = torch.Generator().manual_seed(0)
    ratios = []
    for _ in range(200):
        x = torch.randn((1, *op.image_shape), generator=generator, dtype=torch.float64)
        ratios.append((op.A(x).norm() ** 2 / x.norm() ** 2).item())
    assert np.mean(ratios) == pytest.approx(1.0, abs=0.1)


def test_fast_sensing_large_image_is_fast_and_small():
    n = 512 * 512
    x = torch.rand(1, 1, 512, 512, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    op = FastSensing(n // 4, (1, 512, 512), seed=0)
    y = op.A(x)
    back = op.A_adjoint(y)
    elapsed = time.perf_counter() - start
    assert y.shape == (1, 1, n // 4)
    assert back.shape == x.shape
    assert elapsed < 1.0
    assert sum(b.nbytes for b in op.buffers()) < 50 * 2**20


def test_mask_semantics():
    mask = np.zeros((H, W), dtype=bool)
    mask[::2, ::3] = True
    op = Mask((3, H, W), mask=mask)
    x = _image((3, H, W))
    y = op.A(x)
    expected = x * torch.from_numpy(mask)
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(op.A_adjoint(y), expected)
    assert op.num_measurements == 3 * int(mask.sum())
    assert y.numel() == 3 * N

    random_op = Mask((1, H, W), keep=0.25, seed=0)
    assert random_op.num_measurements == round(0.25 * N)
    assert Mask((1, H, W), keep=1.0).num_measurements == N
    assert Mask((1, H, W), keep=1e-9).num_measurements == 1


def test_restrict_selects_entries_and_scatters_back():
    base = GaussianSensing(40, (1, H, W), seed=0)
    keep = _random_keep((1, 40), seed=3)
    op = base.restrict(keep)
    x = _image((1, H, W))
    torch.testing.assert_close(op.A(x)[0], base.A(x)[0][keep])
    y = torch.randn(1, int(keep.sum()), generator=torch.Generator().manual_seed(1))
    full = torch.zeros(1, 1, 40)
    full[0][keep] = y[0]
    torch.testing.assert_close(op.A_adjoint(y), base.A_adjoint(full))
    # restricting twice works as well
    twice = op.restrict(torch.ones(op.measurement_shape, dtype=torch.bool))
    torch.testing.assert_close(twice.A(x), op.A(x))


@pytest.mark.parametrize(
    "op",
    [
        Identity((3, H, W)),
        GaussianSensing(70, (3, H, W), seed=9),
        FastSensing(70, (3, H, W), seed=9),
        FastSensing(70, (1, 16, 8), seed=9, transform="hadamard"),
        Mask((3, H, W), keep=0.4, seed=9),
        Mask((3, H, W), mask=_explicit_mask(3)),
        Mask((1, H, W), mask=_explicit_mask(1)[0]),
    ],
    ids=["identity", "gaussian", "fast-dct", "fast-hadamard", "mask-keep", "mask-3d", "mask-2d"],
)
def test_describe_round_trip(op):
    desc = op.describe()
    desc_json = json.loads(json.dumps(desc))
    rebuilt = operator_from_description(desc_json)
    assert type(rebuilt) is type(op)
    assert rebuilt.describe() == desc
    x = _image(op.image_shape)
    assert torch.equal(rebuilt.A(x), op.A(x))


def test_describe_restricted_and_large_explicit_mask():
    base = FastSensing(30, (1, H, W), seed=2)
    desc = base.restrict(_random_keep((1, 30))).describe()
    assert desc["kind"] == "restricted"
    assert desc["base"] == base.describe()
    assert desc["num_kept"] == int(_random_keep((1, 30)).sum())
    json.dumps(desc)
    with pytest.raises(ValueError, match="cannot be rebuilt"):
        operator_from_description(desc)

    big = Mask((1, 200, 200), mask=np.ones((200, 200), dtype=bool))
    big_desc = big.describe()
    assert big_desc["mask"] is None and big_desc["num_measurements"] == 40_000
    with pytest.raises(ValueError, match="no stored mask"):
        operator_from_description(big_desc)


@pytest.mark.parametrize(
    ("desc", "message"),
    [
        ({"kind": "blur", "image_shape": [1, 4, 4]}, "unknown operator kind 'blur'"),
        ({"image_shape": [1, 4, 4]}, "unknown operator kind None"),
        ({"kind": "gaussian", "image_shape": [1, 4, 4]}, r"missing key\(s\) \['num_me"),
        ({"kind": "mask", "image_shape": [1, 4, 4]}, "exactly one of 'keep'"),
        ({"kind": "mask", "image_shape": [1, 2, 2], "mask": [[0, 2], [1, 1]]}, "only 0/1"),
    ],
)
def test_operator_from_description_errors(desc, message):
    with pytest.raises(ValueError, match=message):
        operator_from_description(desc)


def test_operator_from_description_type_error():
    with pytest.raises(TypeError, match="desc must be a dict"):
        operator_from_description([("kind", "identity")])


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: GaussianSensing(0, (1, H, W)), ValueError, r"in \[1, 391\].*got 0"),
        (lambda: GaussianSensing(N + 1, (1, H, W)), ValueError, r"in \[1, 391\].*got 392"),
        (lambda: FastSensing(0, (1, H, W)), ValueError, r"in \[1, 391\]"),
        (lambda: FastSensing(N + 1, (3, H, W)), ValueError, r"in \[1, 391\]"),
        (lambda: GaussianSensing(10.0, (1, H, W)), TypeError, "num_measurements must be an int"),
        (lambda: GaussianSensing(True, (1, H, W)), TypeError, "got the bool"),
        (
            lambda: GaussianSensing(16_384, (1, 256, 256)),
            ValueError,
            r"4295\.0 MB.*FastSensing.*--operator fast",
        ),
        (lambda: GaussianSensing(10, (1, H, W), max_bytes=0), ValueError, "max_bytes"),
        (lambda: GaussianSensing(10, (1, H, W), seed=-1), ValueError, r"seed must be.*got -1"),
        (lambda: Identity((H, W)), ValueError, r"three entries \(C, H, W\), got 2"),
        (lambda: Identity((0, H, W)), ValueError, r"must all be >= 1, got \(0, 23, 17\)"),
        (lambda: Identity("1x23x17"), TypeError, "image_shape must be a sequence"),
        (lambda: Identity((1, 2.5, 3)), TypeError, "image_shape entries must be an integer"),
        (lambda: FastSensing(10, (1, H, W), transform="fft"), ValueError, r"\['dct', 'hada"),
        (
            lambda: FastSensing(10, (1, H, W), transform="hadamard"),
            ValueError,
            r"power of two.*23\*17 = 391.*transform='dct'",
        ),
        (lambda: Mask((1, H, W)), ValueError, "exactly one of keep"),
        (
            lambda: Mask((1, H, W), keep=0.5, mask=np.ones((H, W), bool)),
            ValueError,
            "exactly one of keep",
        ),
        (lambda: Mask((1, H, W), keep=0.0), ValueError, r"keep must be in \(0, 1\], got 0.0"),
        (lambda: Mask((1, H, W), keep=1.5), ValueError, r"keep must be in \(0, 1\], got 1.5"),
        (lambda: Mask((1, H, W), keep="half"), TypeError, "keep must be a number"),
        (lambda: Mask((1, H, W), mask=np.ones((H, W))), TypeError, "boolean array.*float64"),
        (lambda: Mask((1, H, W), mask=[[True]]), TypeError, "got list"),
        (lambda: Mask((3, H, W), mask=np.ones((2, H, W), bool)), ValueError, r"got \(2, 23, 17"),
        (lambda: Mask((1, H, W), mask=np.zeros((H, W), bool)), ValueError, "keeps no pixel"),
        (
            lambda: Identity((1, H, W)).restrict(torch.ones(1, H, W + 1, dtype=torch.bool)),
            ValueError,
            r"keep must have the measurement shape \(1, 23, 17\)",
        ),
        (
            lambda: Identity((1, H, W)).restrict(torch.ones(1, H, W)),
            TypeError,
            "keep must be a boolean tensor",
        ),
        (
            lambda: Identity((1, H, W)).restrict(torch.zeros(1, H, W, dtype=torch.bool)),
            ValueError,
            "selects no measurement",
        ),
    ],
)
def test_constructor_validation(build, error, message):
    with pytest.raises(error, match=message):
        build()


@pytest.mark.parametrize("name", sorted(OPERATOR_FACTORIES))
def test_wrong_input_shape_names_expected_shape(name):
    op = OPERATOR_FACTORIES[name](1)
    with pytest.raises(ValueError, match=r"expects x of shape \(1, 1, "):
        op.A(torch.zeros(1, 1, 5, 5))
    with pytest.raises(ValueError, match=r"expects y of shape \(1, "):
        op.A_adjoint(torch.zeros(2, 3))
    with pytest.raises(TypeError, match="floating-point x"):
        op.A(torch.zeros((1, *op.image_shape), dtype=torch.int64))
    with pytest.raises(TypeError, match="expects a torch.Tensor x"):
        op.A(np.zeros((1, *op.image_shape)))


def test_adjointness_error_detects_a_wrong_adjoint_and_validates():
    class BadAdjoint(Identity):
        def _A_adjoint(self, y):  # noqa: N802
            return 2 * y

    assert adjointness_error(BadAdjoint((1, H, W))) == pytest.approx(1.0)
    with pytest.raises(TypeError, match="op must be a LinearOperator"):
        adjointness_error(torch.nn.Identity())
    with pytest.raises(TypeError, match="floating torch.dtype"):
        adjointness_error(Identity((1, H, W)), dtype=torch.int32)


def test_to_float64_moves_buffers_and_keeps_integer_ones():
    op = FastSensing(50, (1, H, W), seed=0)
    x = _image((1, H, W), dtype=torch.float64)
    reference = op.A(x)
    op.to(torch.float64)
    assert op.signs.dtype == torch.float64
    assert op.indices.dtype == torch.int64
    torch.testing.assert_close(op.A(x), reference)
    gaussian = GaussianSensing(50, (1, H, W)).to(torch.float64)
    assert gaussian.matrix.dtype == torch.float64
    assert isinstance(gaussian, LinearOperator)
    mask = Mask((1, H, W), keep=0.5).to(torch.float64)
    assert mask.mask.dtype == torch.bool


def test_gradients_flow_through_the_operators():
    for op in (GaussianSensing(30, (1, H, W)), FastSensing(30, (1, H, W))):
        x = _image((1, H, W)).requires_grad_(True)
        y = op.A(x)
        y.pow(2).sum().backward()
        # d/dx ||A x||^2 = 2 A^T A x
        torch.testing.assert_close(x.grad, 2 * op.A_adjoint(op.A(x.detach())))
