"""Tests for deepprior.operators: the built-in operators, the adapter for the user's own
(matrices, callables, deepinv-like physics), and the probe run before a fit."""

import json
import math
import time

import numpy as np
import pytest
import scipy.fft
import scipy.linalg
import scipy.sparse
import torch

from deepprior.operators import (
    ADJOINT_TOLERANCE,
    LINEARITY_TOLERANCE,
    Blur,
    Downsample,
    FastSensing,
    FunctionOperator,
    GaussianSensing,
    Identity,
    LinearOperator,
    Mask,
    MatrixOperator,
    RestrictedOperator,
    adjointness_error,
    as_operator,
    check_operator,
    downsampling_kernel,
    gaussian_kernel,
    linearity_error,
    motion_kernel,
    operator_from_description,
    rebuildable,
)

H, W = 23, 17  # odd sizes on purpose
N = H * W
M_ROWS = 40  # rows of the user-supplied matrices


def _random_keep(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator) < 0.7


def _explicit_mask(channels: int) -> np.ndarray:
    return np.random.default_rng(1).random((channels, H, W)) < 0.4


def _image(shape: tuple[int, ...], seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((1, *shape), generator=generator, dtype=dtype)


def _matrix(cols: int, rows: int = M_ROWS, seed: int = 0, density: float = 1.0) -> np.ndarray:
    """A float64 numpy matrix (rows, cols); with density < 1 most entries are zero."""
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((rows, cols)) / math.sqrt(rows)
    return matrix * (rng.random((rows, cols)) < density)


# --------------------------------------------------------------- the user's operators, by kind


class NumpyWrapper:
    """A plain class around a numpy matrix: nothing but ``A`` and ``A_adjoint``."""

    def __init__(self, matrix: np.ndarray, image_shape: tuple[int, int, int]) -> None:
        self.matrix, self.shape = matrix, image_shape

    def A(self, x):  # noqa: N802
        return x.reshape(1, -1) @ torch.as_tensor(self.matrix, dtype=x.dtype).T

    def A_adjoint(self, y):  # noqa: N802
        return (y @ torch.as_tensor(self.matrix, dtype=y.dtype)).reshape(1, *self.shape)


class PhysicsLike(torch.nn.Module):
    """Stand-in with deepinv's ``LinearPhysics`` surface: an ``nn.Module`` with a buffer,
    ``img_size`` and ``A``/``A_adjoint`` on batched ``(B, C, H, W)`` tensors."""

    def __init__(self, matrix: np.ndarray, img_size: tuple[int, int, int]) -> None:
        super().__init__()
        self.img_size = img_size
        self.register_buffer("weights", torch.as_tensor(matrix, dtype=torch.float32))

    def A(self, x, **kwargs):  # noqa: N802
        return x.reshape(x.shape[0], -1) @ self.weights.to(x.dtype).T

    def A_adjoint(self, y, **kwargs):  # noqa: N802
        return (y @ self.weights.to(y.dtype)).reshape(y.shape[0], *self.img_size)

    def forward(self, x, **kwargs):
        return self.A(x)


class OnlyA(LinearOperator):
    """A subclass implementing only ``A``: autograd adjoint, default (custom) description."""

    weights: torch.Tensor

    def __init__(self, matrix: np.ndarray, image_shape) -> None:
        super().__init__(image_shape, (matrix.shape[0],))
        self.register_buffer("weights", torch.as_tensor(matrix, dtype=torch.float32))

    def A(self, x):  # noqa: N802
        return x.reshape(1, -1) @ self.weights.to(x.dtype).T


def _functions(matrix: np.ndarray, image_shape):
    """``(A, A_adjoint)`` closures over a torch copy of ``matrix``."""
    tensor = torch.from_numpy(matrix).float()

    def forward(x):
        return x.reshape(1, -1) @ tensor.to(x.dtype).T

    def adjoint(y):
        return (y @ tensor.to(y.dtype)).reshape(1, *image_shape)

    return forward, adjoint


def _user_operator(kind: str, c: int) -> LinearOperator:
    shape = (c, H, W)
    matrix = _matrix(c * N, seed=c)
    if kind == "matrix-dense":
        return as_operator(matrix, shape)
    if kind == "matrix-sparse":
        return as_operator(scipy.sparse.csr_matrix(_matrix(c * N, seed=c, density=0.3)), shape)
    if kind == "function-adjoint":
        return as_operator(_functions(matrix, shape), shape)
    if kind == "function-autograd":
        return as_operator(_functions(matrix, shape)[0], shape)
    if kind == "physics-like":
        return as_operator(PhysicsLike(matrix, shape))
    if kind == "only-a":
        return OnlyA(matrix, shape)
    raise AssertionError(kind)


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
    "restricted-fast": lambda c: FastSensing(60, (c, H, W), seed=1).restrict(
        _random_keep((c, 60))
    ),
    "downsample-bicubic": lambda c: Downsample(2, (c, 2 * H, 2 * W)),
    "downsample-box": lambda c: Downsample(3, (c, 3 * H, 3 * W), kernel="box"),
    "downsample-array": lambda c: Downsample(2, (c, 2 * H, 2 * W), kernel=np.ones((3, 3))),
    "blur-gaussian": lambda c: Blur(gaussian_kernel(1.2), (c, H, W)),
    "blur-motion-even": lambda c: Blur(motion_kernel(6, 30)[:, :6], (c, H, W)),
    "restricted-blur": lambda c: Blur(gaussian_kernel(1.0), (c, H, W)).restrict(
        _random_keep((c, H, W))),
    "restricted-matrix": lambda c: _user_operator("matrix-sparse", c).restrict(
        _random_keep((M_ROWS,))
    ),
    **{
        kind: (lambda c, kind=kind: _user_operator(kind, c))
        for kind in (
            "matrix-dense",
            "matrix-sparse",
            "function-adjoint",
            "function-autograd",
            "physics-like",
            "only-a",
        )
    },
}
ALL = pytest.mark.parametrize("name", sorted(OPERATOR_FACTORIES))
CHANNELS = pytest.mark.parametrize("channels", [1, 3])


# --------------------------------------------------------------------- every operator at once


@CHANNELS
@ALL
def test_adjointness_all_operators(name, channels):
    op = OPERATOR_FACTORIES[name](channels)
    assert adjointness_error(op, seed=0) < 1e-6
    assert adjointness_error(op, seed=7) < 1e-6
    assert adjointness_error(op, dtype=torch.float32) < 1e-4
    assert linearity_error(op) < 1e-5
    # the check casts per call: the operator keeps its float32 buffers
    for buffer in op.buffers():
        assert buffer.dtype in (torch.float32, torch.bool, torch.int64, torch.uint8)


@CHANNELS
@ALL
def test_shapes_and_dtypes(name, channels):
    op = OPERATOR_FACTORIES[name](channels)
    x = _image(op.image_shape)
    y = op.A(x)
    assert tuple(y.shape) == (1, *op.measurement_shape)
    # a Mask's y keeps the image shape but counts only the observed entries as measurements
    observed = int(op.observed.sum()) if isinstance(op, Mask) else y.numel()
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


@CHANNELS
@ALL
def test_gradients_flow_through_every_operator(name, channels):
    op = OPERATOR_FACTORIES[name](channels)
    x = _image(op.image_shape, dtype=torch.float64).requires_grad_(True)
    op.A(x).pow(2).sum().backward()
    # d/dx ||A x||^2 = 2 A^T A x
    expected = 2 * op.A_adjoint(op.A(x.detach()))
    torch.testing.assert_close(x.grad, expected)


@CHANNELS
@ALL
def test_check_operator_accepts_every_correct_operator(name, channels):
    op = OPERATOR_FACTORIES[name](channels)
    y = op.A(_image(op.image_shape)).detach()
    check_operator(op)
    check_operator(op, y)
    check_operator(op, y.flatten())  # only the entry count matters
    json.dumps(op.describe())


# ------------------------------------------------------------------------ built-in operators


def test_measurement_shapes():
    assert GaussianSensing(100, (3, H, W)).measurement_shape == (3, 100)
    assert FastSensing(100, (3, H, W)).measurement_shape == (3, 100)
    assert Mask((3, H, W), keep=0.5).measurement_shape == (3, H, W)
    assert Identity((2, H, W)).num_measurements == 2 * N
    restricted = Identity((1, H, W)).restrict(_random_keep((1, H, W)))
    assert isinstance(restricted, RestrictedOperator)
    assert restricted.measurement_shape == (int(_random_keep((1, H, W)).sum()),)


def test_image_shape_may_be_two_or_three_dimensional():
    assert Identity((H, W)).image_shape == (1, H, W)
    assert Identity((H, W)).measurement_shape == (1, H, W)
    assert GaussianSensing(10, (H, W)).measurement_shape == (1, 10)
    assert FastSensing(10, (H, W)).image_shape == (1, H, W)
    assert Mask((H, W), keep=0.5).image_shape == (1, H, W)
    assert MatrixOperator(np.ones((3, 12)), (3, 4)).image_shape == (1, 3, 4)
    assert MatrixOperator(np.ones((3, 12)), (3, 2, 2)).image_shape == (3, 2, 2)
    assert GaussianSensing(10.0, (H, W)).measurement_shape == (1, 10)  # integral float


def test_problem_kinds():
    assert Identity((H, W)).problem == "denoise"
    assert GaussianSensing.problem == FastSensing.problem == "compressive_sensing"
    assert Mask.problem == "inpainting"
    assert Downsample.problem == "super_resolution" and Blur.problem == "deblurring"
    assert LinearOperator.problem == "generic"
    assert OnlyA(np.ones((3, 16)), (4, 4)).problem == "generic"
    assert as_operator(lambda x: x, (4, 4)).problem == "generic"
    assert MatrixOperator(np.ones((3, 16))).problem == "compressive_sensing"
    assert MatrixOperator(np.eye(16)).problem == "generic"
    assert MatrixOperator(np.ones((20, 16)), (4, 4)).problem == "generic"


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
    ids=["gaussian", "fast-dct", "fast-hadamard", "mask"],
)
def test_determinism(factory):
    x = _image(factory(0).image_shape)
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
    check_operator(Mask((1, H, W), keep=0.5, seed=5))
    adjointness_error(GaussianSensing(50, (1, H, W), seed=5))
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
    x = torch.randn((200, *op.image_shape), generator=generator, dtype=torch.float64)
    ratios = [(op.A(xi[None]).norm() ** 2 / xi.norm() ** 2).item() for xi in x]
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


def test_mask_semantics_and_observed_entries():
    mask = np.zeros((H, W), dtype=bool)
    mask[::2, ::3] = True
    op = Mask((3, H, W), mask=mask)
    x = _image((3, H, W))
    y = op.A(x)
    expected = x * torch.from_numpy(mask)
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(op.A_adjoint(y), expected)
    # a 2-D mask is shared by every channel; observed has the measurement shape
    assert op.observed.shape == (3, H, W)
    assert op.observed.dtype == torch.bool
    assert torch.equal(op.observed, torch.from_numpy(mask).expand(3, H, W))
    assert op.num_measurements == 3 * int(mask.sum()) == int(op.observed.sum())
    assert y.numel() == 3 * N

    per_channel = _explicit_mask(3)
    op3 = Mask((3, H, W), mask=torch.from_numpy(per_channel))
    assert torch.equal(op3.observed, torch.from_numpy(per_channel))
    assert op3.num_measurements == int(per_channel.sum())

    random_op = Mask((1, H, W), keep=0.25, seed=0)
    assert random_op.num_measurements == round(0.25 * N) == int(random_op.observed.sum())
    assert Mask((1, H, W), keep=1.0).num_measurements == N
    assert Mask((1, H, W), keep=1e-9).num_measurements == 1
    # the unobserved entries of y are zero
    assert torch.all(random_op.A(x[:, :1])[0][~random_op.observed] == 0)


def test_restrict_selects_entries_and_scatters_back():
    base = GaussianSensing(40, (1, H, W), seed=0)
    keep = _random_keep((1, 40), seed=3)
    op = base.restrict(keep)
    assert op.num_measurements == int(keep.sum())
    x = _image((1, H, W))
    torch.testing.assert_close(op.A(x)[0], base.A(x)[0][keep])
    y = torch.randn(1, int(keep.sum()), generator=torch.Generator().manual_seed(1))
    full = torch.zeros(1, 1, 40)
    full[0][keep] = y[0]
    torch.testing.assert_close(op.A_adjoint(y), base.A_adjoint(full))
    # restricting twice works as well
    twice = op.restrict(torch.ones(op.measurement_shape, dtype=torch.bool))
    torch.testing.assert_close(twice.A(x), op.A(x))
    # and so does restricting a user's operator without a written adjoint
    user = as_operator(_functions(_matrix(N), (1, H, W))[0], (H, W)).restrict(
        _random_keep((M_ROWS,))
    )
    assert adjointness_error(user) < 1e-6


def test_the_held_out_part_of_a_split_follows_its_base_to_the_fits_device():
    """On a GPU the fit moves its part of a hold-out split to the device, and with it the base
    both parts share; the held-out part, which the rule and the choice of a TV weight apply to
    the fit's outputs, must follow. The meta device stands in for CUDA: like CUDA, it refuses
    an index_copy whose positions lie on another device."""
    from deepprior.stopping import split_measurements

    base = GaussianSensing(40, (1, H, W), seed=0)
    y = base.A(_image((1, H, W)))
    fit_op, _, held_op, _ = split_measurements(base, y, 0.25, seed=0)
    fit_op.to("meta")  # what the fit does with its operator
    assert base.matrix.device.type == "meta"
    x = torch.empty(1, 1, H, W, device="meta")
    assert held_op.A(x).shape == (1, held_op.num_measurements)
    adjoint = held_op.A_adjoint(torch.empty(1, held_op.num_measurements, device="meta"))
    assert adjoint.device.type == "meta" and held_op.indices.device.type == "meta"


# ------------------------------------------------------------------------------- descriptions


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
        Downsample(2, (3, 2 * H, 2 * W), kernel="gaussian"),
        Downsample(2, (1, 2 * H, 2 * W), kernel=np.ones((4, 4)) / 16),
        Blur(motion_kernel(5, 45), (3, H, W)),
    ],
    ids=["identity", "gaussian", "fast-dct", "fast-hadamard", "mask-keep", "mask-3d", "mask-2d",
         "downsample", "downsample-array", "blur"],
)
def test_describe_round_trip(op):
    assert rebuildable(op)
    desc = op.describe()
    desc_json = json.loads(json.dumps(desc))
    rebuilt = operator_from_description(desc_json)
    assert type(rebuilt) is type(op)
    assert rebuilt.describe() == desc
    x = _image(op.image_shape)
    assert torch.equal(rebuilt.A(x), op.A(x))


def test_describe_restricted_and_large_explicit_mask():
    base = FastSensing(30, (1, H, W), seed=2)
    restricted = base.restrict(_random_keep((1, 30)))
    desc = restricted.describe()
    assert desc["kind"] == "restricted"
    assert desc["base"] == base.describe()
    assert desc["num_kept"] == int(_random_keep((1, 30)).sum())
    json.dumps(desc)
    assert not rebuildable(restricted)
    with pytest.raises(ValueError, match="kind 'restricted' cannot be rebuilt"):
        operator_from_description(desc)

    big = Mask((1, 200, 200), mask=np.ones((200, 200), dtype=bool))
    big_desc = big.describe()
    assert big_desc["mask"] is None and big_desc["num_measurements"] == 40_000
    assert not rebuildable(big)
    with pytest.raises(ValueError, match="a large explicit mask is not stored"):
        operator_from_description(big_desc)


def test_describe_of_user_operators_is_custom_and_not_rebuildable():
    only_a = OnlyA(_matrix(12, rows=5), (3, 4))
    desc = only_a.describe()
    assert desc == {
        "kind": "custom",
        "type": "OnlyA",
        "image_shape": [1, 3, 4],
        "measurement_shape": [5],
    }
    assert not only_a.has_adjoint
    assert not rebuildable(only_a)
    with pytest.raises(ValueError, match="kind 'custom' cannot be rebuilt"):
        operator_from_description(desc)

    function = as_operator(lambda x: 2 * x, (3, 4))
    assert function.describe()["kind"] == "custom"
    assert function.describe()["type"] == "FunctionOperator"
    assert not rebuildable(function)

    matrix = as_operator(_matrix(12, rows=5), (3, 4))
    assert matrix.describe() == {"kind": "matrix", "image_shape": [1, 3, 4],
                                 "num_measurements": 5}
    assert not rebuildable(matrix)
    with pytest.raises(ValueError, match="kind 'matrix' cannot be rebuilt"):
        operator_from_description(matrix.describe())


@pytest.mark.parametrize(
    ("desc", "message"),
    [
        ({"kind": "warp", "image_shape": [1, 4, 4]}, "kind 'warp' cannot be rebuilt"),
        ({"image_shape": [1, 4, 4]}, "kind None cannot be rebuilt.*identity, gaussian"),
        ({"kind": "gaussian", "image_shape": [1, 4, 4]}, "missing the key 'num_measurements'"),
        ({"kind": "fast", "num_measurements": 3, "seed": 0}, "missing the key 'image_shape'"),
        ({"kind": "mask", "image_shape": [1, 4, 4]}, "a large explicit mask is not stored"),
    ],
)
def test_operator_from_description_errors(desc, message):
    with pytest.raises(ValueError, match=message):
        operator_from_description(desc)


def test_operator_from_description_type_error():
    with pytest.raises(TypeError, match="desc must be a dict"):
        operator_from_description([("kind", "identity")])


# ----------------------------------------------------------------------- constructor checks


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (lambda: GaussianSensing(0, (1, H, W)), ValueError, "num_measurements.*>= 1, got 0"),
        (lambda: GaussianSensing(N + 1, (1, H, W)), ValueError, r"in \[1, 391\].*got 392"),
        (lambda: FastSensing(0, (1, H, W)), ValueError, "num_measurements.*>= 1, got 0"),
        (lambda: FastSensing(N + 1, (3, H, W)), ValueError, r"in \[1, 391\]"),
        (lambda: GaussianSensing(10.5, (1, H, W)), TypeError, "num_measurements must be an int"),
        (lambda: GaussianSensing(True, (1, H, W)), TypeError, r"got True \(bool\)"),
        (
            lambda: GaussianSensing(16_384, (1, 256, 256)),
            ValueError,
            r"4295\.0 MB.*FastSensing.*--operator fast",
        ),
        (lambda: GaussianSensing(10, (1, H, W), max_bytes=0), ValueError, "max_bytes.*got 0"),
        (lambda: GaussianSensing(10, (1, H, W), seed=-1), ValueError, r"seed must be.*got -1"),
        (lambda: FastSensing(10, (1, H, W), seed=-1), ValueError, r"seed must be.*got -1"),
        (lambda: Mask((1, H, W), keep=0.5, seed=-1), ValueError, r"seed must be.*got -1"),
        (
            lambda: Identity((1, 2, 3, 4)),
            ValueError,
            r"image_shape must be \(H, W\) or \(C, H, W\), got \(1, 2, 3, 4\)",
        ),
        (lambda: Identity((0, H, W)), ValueError, "image_shape entries.*>= 1, got 0"),
        (lambda: Identity("1x23x17"), TypeError, "image_shape must be"),
        (lambda: Identity((1, 2.5, 3)), TypeError, "image_shape entries must be an integer"),
        (
            lambda: FastSensing(10, (1, H, W), transform="fft"),
            ValueError,
            "transform must be one of dct, hadamard; got 'fft'",
        ),
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
        (lambda: Mask((1, H, W), keep=0.0), ValueError, "keep must satisfy 0 < keep <= 1, got 0.0"),
        (lambda: Mask((1, H, W), keep=1.5), ValueError, "keep must satisfy 0 < keep <= 1, got 1.5"),
        (lambda: Mask((1, H, W), keep="half"), TypeError, "keep must be a number"),
        (
            lambda: Mask((1, H, W), mask=np.ones((H, W))),
            TypeError,
            r"mask must be boolean \(pass mask > 0\), got dtype torch.float64",
        ),
        (
            lambda: Mask((1, H, W), mask=[[True]]),
            ValueError,
            r"mask must have shape \(H, W\) = \(23, 17\) or \(C, H, W\) = \(1, 23, 17\), got \(1",
        ),
        (lambda: Mask((3, H, W), mask=np.ones((2, H, W), bool)), ValueError, r"got \(2, 23, 17"),
        (lambda: Mask((1, H, W), mask=np.zeros((H, W), bool)), ValueError, "keeps no pixel"),
        (
            lambda: Identity((1, H, W)).restrict(torch.ones(1, H, W + 1, dtype=torch.bool)),
            ValueError,
            r"boolean array of the measurement shape \(1, 23, 17\), got torch.bool \(1, 23, 18\)",
        ),
        (
            lambda: Identity((1, H, W)).restrict(torch.ones(1, H, W)),
            ValueError,
            r"boolean array .*got torch.float32",
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


# ------------------------------------------------------------------------------- as_operator

EQUIVALENTS = {
    "numpy-wrapper": (lambda m, s: NumpyWrapper(m, s), FunctionOperator, True, True),
    "numpy": (lambda m, s: m, MatrixOperator, True, True),
    "numpy-big-endian": (lambda m, s: m.astype(">f8"), MatrixOperator, True, True),  # a .mat
    "torch": (lambda m, s: torch.from_numpy(m), MatrixOperator, True, True),
    "scipy-csr": (lambda m, s: scipy.sparse.csr_matrix(m), MatrixOperator, True, True),
    "pair": (_functions, FunctionOperator, True, True),
    "function": (lambda m, s: _functions(m, s)[0], FunctionOperator, False, True),
    "physics-like": (lambda m, s: PhysicsLike(m, s), FunctionOperator, True, False),
    "only-a": (lambda m, s: OnlyA(m, s), OnlyA, False, False),
}


@pytest.mark.parametrize("kind", list(EQUIVALENTS))
def test_as_operator_gives_the_matrix_operator_for_every_kind(kind):
    shape = (3, 5, 7)  # colour, odd, not square: the matrix's columns run over vec(C, H, W)
    matrix = _matrix(math.prod(shape), rows=11, seed=4, density=0.6)
    reference = MatrixOperator(matrix, shape)
    make, expected_type, has_adjoint, needs_shape = EQUIVALENTS[kind]
    obj = make(matrix, shape)
    op = as_operator(obj, shape if needs_shape else None)
    assert type(op) is expected_type
    assert op.has_adjoint is has_adjoint
    assert op.image_shape == shape
    assert op.measurement_shape == (11,)
    x = _image(shape, seed=1)
    y = torch.randn(1, 11, generator=torch.Generator().manual_seed(2))
    # vec in C order over (C, H, W)
    expected = torch.from_numpy(matrix @ x.double().numpy().ravel()).float()[None]
    torch.testing.assert_close(reference.A(x), expected)
    torch.testing.assert_close(op.A(x), reference.A(x))
    torch.testing.assert_close(op.A_adjoint(y), reference.A_adjoint(y))
    check_operator(op, y)
    assert as_operator(op) is op  # a deepprior operator passes through
    assert as_operator(op, shape) is op


def test_derived_adjoint_is_the_matrix_transpose():
    matrix = _matrix(3 * 4 * 6, rows=9, seed=5)
    op = as_operator(_functions(matrix, (3, 4, 6))[0], (3, 4, 6))
    assert isinstance(op, FunctionOperator) and not op.has_adjoint
    y = torch.randn(1, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(
        op.A_adjoint(y), torch.from_numpy(matrix.T @ y[0].numpy()).reshape(1, 3, 4, 6)
    )


def test_function_may_drop_the_batch_axis():
    matrix = _matrix(12, rows=5)
    tensor = torch.from_numpy(matrix).float()

    def forward(x):
        return tensor.to(x.dtype) @ x.flatten()  # (m,), no batch axis

    def adjoint(y):
        assert y.shape == (5,)  # called with the shape A returns
        return (tensor.to(y.dtype).T @ y).reshape(1, 1, 3, 4)

    op = as_operator((forward, adjoint), (3, 4))
    assert op.measurement_shape == (5,)
    x = _image((1, 3, 4))
    assert op.A(x).shape == (1, 5)
    torch.testing.assert_close(op.A(x), MatrixOperator(matrix, (3, 4)).A(x))
    assert op.A_adjoint(op.A(x)).shape == (1, 1, 3, 4)
    check_operator(op)


def test_physics_like_module_moves_with_to():
    physics = PhysicsLike(_matrix(12, rows=5), (1, 3, 4))
    op = as_operator(physics)
    assert op.image_shape == (1, 3, 4)  # read off img_size
    assert op.device == torch.device("cpu")
    assert dict(op.named_buffers())["owner.weights"] is physics.weights
    op.to(torch.float64)
    assert physics.weights.dtype == torch.float64
    x = _image((1, 3, 4), dtype=torch.float64)
    assert op.A(x).dtype == torch.float64
    check_operator(op)


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
    restricted = Identity((1, H, W)).restrict(_random_keep((1, H, W))).to(torch.float64)
    assert restricted.indices.dtype == torch.int64
    for matrix in (_matrix(N), scipy.sparse.csr_matrix(_matrix(N, density=0.2))):
        user = MatrixOperator(matrix, (H, W))
        reference = user.A(x)
        user.to(torch.float64)
        assert user.matrix.dtype == torch.float64
        assert user.matrix.is_sparse is scipy.sparse.issparse(matrix)
        torch.testing.assert_close(user.A(x), reference)
        assert adjointness_error(user) < 1e-12  # exact in float64 once converted


def test_image_shape_inference():
    op = as_operator(np.ones((3, 16)))
    assert (op.image_shape, op.measurement_shape) == ((1, 4, 4), (3,))
    assert as_operator(torch.ones(5, 49)).image_shape == (1, 7, 7)
    assert as_operator(scipy.sparse.eye(25, format="csr")).image_shape == (1, 5, 5)
    assert as_operator(np.ones((3, 15)), (3, 5)).image_shape == (1, 3, 5)
    assert as_operator(np.ones((3, 16)), (1, 2, 8)).image_shape == (1, 2, 8)
    assert as_operator(Identity((4, 5)), (4, 5)).image_shape == (1, 4, 5)
    # an object's own image_shape (or deepinv's img_size) is used when none is passed
    wrapper = NumpyWrapper(np.ones((2, 12)), (1, 3, 4))
    wrapper.image_shape = (3, 4)
    assert as_operator(wrapper).image_shape == (1, 3, 4)


@pytest.mark.parametrize(
    ("build", "error", "message"),
    [
        (
            lambda: as_operator(np.ones((3, 15))),
            ValueError,
            r"n = 15 columns, which is not a square image; pass image_shape",
        ),
        (
            lambda: as_operator(np.ones((3, 16)), (3, 5)),
            ValueError,
            r"16 columns but image_shape \(1, 3, 5\) has C·H·W = 15",
        ),
        (
            lambda: as_operator(scipy.sparse.eye(16, format="csr"), (3, 3, 3)),
            ValueError,
            "16 columns but image_shape",
        ),
        (lambda: as_operator(np.ones(16)), ValueError, r"must be 2-D \(m, n\), got \(16,\)"),
        (
            lambda: as_operator(np.full((2, 4), np.nan)),
            ValueError,
            "finite real numbers",
        ),
        (
            lambda: as_operator(Identity((4, 5)), (5, 4)),
            ValueError,
            r"image_shape \(1, 5, 4\) does not match the operator's \(1, 4, 5\)",
        ),
        (
            lambda: as_operator("A x"),
            TypeError,
            r"deepprior operator, a matrix \(numpy, torch or scipy.sparse\), an object with a "
            r"method A\(x\).*pair \(A, A_adjoint\) of functions or a function A; got str",
        ),
        (lambda: as_operator([[1.0, 0.0]]), TypeError, "got list"),
        (lambda: as_operator(lambda x: x), ValueError, "image shape .* unknown: pass image_shape"),
        (
            lambda: as_operator((lambda x: x, lambda y: y)),
            ValueError,
            "image shape of tuple operator is unknown",
        ),
        (
            lambda: as_operator(NumpyWrapper(np.ones((2, 12)), (1, 3, 4))),
            ValueError,
            "image shape of NumpyWrapper operator is unknown",
        ),
        (
            lambda: as_operator(NumpyWrapper(np.ones((2, 12)), (1, 3, 4)), (4, 4)),
            ValueError,
            r"A failed on a random image of shape \(1, 1, 4, 4\) \(float32\): RuntimeError",
        ),
        (
            lambda: as_operator(_raise, (4, 4)),
            ValueError,
            r"A failed on a random image .*: KeyError: 'no such operator'",
        ),
        (
            lambda: as_operator(lambda x: x.numpy(), (4, 4)),
            ValueError,
            "A\\(x\\) must return a torch tensor, got ndarray",
        ),
    ],
)
def test_as_operator_errors(build, error, message):
    with pytest.raises(error, match=message):
        build()


def _raise(x):
    raise KeyError("no such operator")


# ----------------------------------------------------------------------------- check_operator


def _timed_check(op, y=None):
    start = time.perf_counter()
    try:
        check_operator(op, y)
    finally:
        assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(("forward", "error"), [
    (lambda x: x[..., ::2, ::2] ** 2, "not linear"),  # a square
    (lambda x: torch.fft.fft2(x).abs(), "not linear"),  # a modulus (phase retrieval)
    (lambda x: x[..., ::2, ::2] + 0.1, r"not linear.*pass y − b"),  # an offset
])
def test_check_operator_refuses_a_forward_model_that_is_not_linear(forward, error):
    op = as_operator(forward, (1, H, W))
    assert linearity_error(op) > 1e-2
    with pytest.raises(ValueError, match=error):
        _timed_check(op)


def test_check_operator_accepts_a_linear_operator_computed_in_bfloat16():
    """Its rounding (about 3e-3) is not a nonlinearity."""
    low = torch.from_numpy(_matrix(N, seed=3)).to(torch.bfloat16)
    op = as_operator(lambda x: (x.reshape(1, -1).to(low.dtype) @ low.T).float(), (1, H, W))
    assert ADJOINT_TOLERANCE < linearity_error(op) < LINEARITY_TOLERANCE
    _timed_check(op)


def test_check_operator_measures_a_wrong_adjoint():
    matrix = _matrix(3 * N, seed=3)
    forward, adjoint = _functions(matrix, (3, H, W))
    op = as_operator((forward, lambda y: 1.1 * adjoint(y)), (3, H, W))
    # ⟨Ax, v⟩ vs 1.1 ⟨Ax, v⟩: relative error 0.1 / 1.1
    assert adjointness_error(op) == pytest.approx(0.1 / 1.1)
    with pytest.raises(ValueError, match=r"not the adjoint of A.*relative 0\.0909 \(tolerance"):
        _timed_check(op)

    mask = Mask((3, H, W), keep=0.5, seed=0)
    identity_adjoint = as_operator((mask.A, lambda y: y), (3, H, W))
    measured = adjointness_error(identity_adjoint, dtype=torch.float32)
    assert measured > ADJOINT_TOLERANCE
    with pytest.raises(ValueError, match=rf"differ by a relative {measured:.3g} "):
        _timed_check(identity_adjoint)

    class WrongAdjoint(Identity):
        def A_adjoint(self, y):  # noqa: N802
            return 2 * y

    assert adjointness_error(WrongAdjoint((1, H, W))) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="WrongAdjoint.A_adjoint is not the adjoint"):
        _timed_check(WrongAdjoint((1, H, W)))


class WrongShape(LinearOperator):
    def __init__(self) -> None:
        super().__init__((3, 4), (5,))

    def A(self, x):  # noqa: N802
        return x.reshape(1, -1)[:, :6]


@pytest.mark.parametrize(
    ("op", "message"),
    [
        (WrongShape(), r"WrongShape.A\(x\) returned shape \(1, 6\), expected \(1, 5\)"),
        (
            FunctionOperator(lambda x: x * float("nan"), image_shape=(3, 4)),
            r"FunctionOperator.A\(x\) returned NaN or infinite values",
        ),
        (
            FunctionOperator(lambda x: x / x.min().clamp(max=0), image_shape=(3, 4)),
            "NaN or infinite",
        ),
        (
            FunctionOperator(lambda x: (10 * x).long(), image_shape=(3, 4)),
            r"A\(x\) must return a floating-point tensor",
        ),
    ],
    ids=["shape", "nan", "inf", "integer"],
)
def test_check_operator_names_a_broken_forward(op, message):
    with pytest.raises(ValueError, match=message):
        _timed_check(op)


def test_check_operator_compares_the_observation_entry_count():
    op = GaussianSensing(30, (3, H, W), seed=0)
    check_operator(op, torch.zeros(90))
    with pytest.raises(
        ValueError, match=r"observation has 91 entries \(shape \(1, 91\)\) but the operator "
        r"produces 90 measurements \(shape \(3, 30\)\)"
    ):
        check_operator(op, torch.zeros(1, 91))
    mask = Mask((1, H, W), keep=0.5)
    check_operator(mask, torch.zeros(1, 1, H, W))  # a Mask's y has the image's shape
    with pytest.raises(ValueError, match="observation has 195 entries"):
        check_operator(mask, torch.zeros(195))  # not just the observed entries


# -------------------------------------------------------------------------------- real deepinv


def test_real_deepinv_physics():
    dinv = pytest.importorskip("deepinv")
    physics = dinv.physics.CompressedSensing(
        m=20, img_size=(1, 5, 7), rng=torch.Generator().manual_seed(0)
    )
    op = as_operator(physics)
    assert isinstance(op, FunctionOperator) and op.has_adjoint
    assert op.image_shape == (1, 5, 7)
    assert op.measurement_shape == (20,)
    check_operator(op)
    assert adjointness_error(op, dtype=torch.float32) < 1e-5
    # the same A x as the MatrixOperator of its matrix, read off the basis images
    basis = torch.eye(35).reshape(35, 1, 5, 7)
    with torch.no_grad():
        matrix = physics.A(basis).T
    reference = MatrixOperator(matrix, (1, 5, 7))
    x = _image((1, 5, 7)).requires_grad_(True)
    torch.testing.assert_close(op.A(x), reference.A(x))
    y = torch.randn(1, 20, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(op.A_adjoint(y), reference.A_adjoint(y))
    op.A(x).pow(2).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_complex_and_non_numeric_matrices_are_refused():
    with pytest.raises(TypeError, match="real numbers, got dtype complex128"):
        as_operator(np.ones((2, 4)) * 1j)
    with pytest.raises(TypeError, match="real numbers"):
        as_operator(np.array([["a", "b"]]))
    with pytest.raises(TypeError, match="real numbers"):
        as_operator(scipy.sparse.csr_matrix(np.ones((2, 4)) * 1j))


def test_a_forward_model_autograd_cannot_see_through_is_refused_before_the_fit():
    matrix = np.random.default_rng(0).standard_normal((40, 64))

    def numpy_forward(x):
        return torch.from_numpy(matrix @ x.detach().numpy().ravel()).float()[None]

    with pytest.raises(ValueError, match="not differentiable by torch autograd"):
        check_operator(as_operator(numpy_forward, (8, 8)))


def test_a_forward_whose_size_changes_after_the_probe_is_a_value_error():
    calls = []

    def unstable(x):
        calls.append(1)
        return x.reshape(1, -1)[:, : 3 if len(calls) == 1 else 4]

    with pytest.raises(ValueError, match=r"returned shapes \(1, 3\) and \(1, 4\) for two images"):
        as_operator(unstable, (2, 2))
    calls.clear()

    def late(x):  # stable for the constructor's two probes, then another size
        calls.append(1)
        return x.reshape(1, -1)[:, : 3 if len(calls) <= 2 else 4]

    with pytest.raises(ValueError, match="A failed on a random image"):
        check_operator(as_operator(late, (2, 2)))


def test_described_mask_must_be_zero_one():
    with pytest.raises(ValueError, match="only 0/1"):
        operator_from_description({"kind": "mask", "image_shape": [1, 2, 2],
                                   "mask": [[0, 2], [1, 1]]})


def test_downsample_averages_blocks_and_keeps_constants():
    x = torch.arange(64.0).reshape(1, 1, 8, 8)
    box = Downsample(2, (8, 8), kernel="box").A(x)
    assert torch.allclose(box[0, 0, 0, 0], x[0, 0, :2, :2].mean())
    for kind in ("bicubic", "gaussian", "box"):
        assert float(downsampling_kernel(4, kind).sum()) == pytest.approx(1.0, abs=1e-6)
        ones = Downsample(4, (3, 16, 12), kernel=kind).A(torch.ones(1, 3, 16, 12))
        assert torch.allclose(ones, torch.ones_like(ones), atol=1e-6)
    # imresize's bicubic weights for a factor of 2
    row = downsampling_kernel(2).sum(1)
    np.testing.assert_allclose(row * 2, [-0.0234375, -0.0703125, 0.2265625, 0.8671875,
                                         0.8671875, 0.2265625, -0.0703125, -0.0234375])


def test_blur_is_a_centred_circular_convolution():
    kernel = gaussian_kernel(1.0)
    op = Blur(kernel, (16, 16))
    impulse = torch.zeros(1, 1, 16, 16)
    impulse[0, 0, 5, 7] = 1
    out = op.A(impulse)[0, 0]
    np.testing.assert_allclose(out[2:9, 4:11].numpy(), kernel, atol=1e-6)  # centred on (5, 7)
    corner = torch.zeros(1, 1, 16, 16)
    corner[0, 0, 0, 0] = 1
    assert float(op.A(corner)[0, 0, -1, -1]) > 0  # wraps around: circular boundary
    assert float(op.A(torch.ones(1, 1, 16, 16)).mean()) == pytest.approx(1.0)


def test_kernels():
    assert gaussian_kernel(1.0).shape == (7, 7) and gaussian_kernel(0.5, size=5).shape == (5, 5)
    line = motion_kernel(9, 90)
    assert float(line.sum()) == pytest.approx(1.0)
    assert np.allclose(line.sum(0)[line.shape[1] // 2], 1.0)  # vertical: one column


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Downsample(3, (16, 16)), "not divisible by the factor 3"),
        (lambda: Downsample(2, (1, 8)), "1x8 is smaller than the factor 2"),  # not "crop to 0x8"
        (lambda: as_operator(Identity((3, 8, 6)), (8, 3, 6)),  # a (C, H, W) array as image
         r"\(8, 3, 6\) does not match the operator's \(3, 8, 6\) \(an image is \(H, W, C\)"),
        (lambda: Downsample(2, (16, 16), kernel="lanczos"), "kernel must be one of"),
        (lambda: Downsample(4, (4, 4)), "too large for a 4x4 image"),
        (lambda: Blur(np.ones((9, 9)), (8, 8)), "larger than the image"),
        (lambda: Blur(np.zeros((3, 3)), (8, 8)), "sums to 0"),
        (lambda: Blur(np.ones(3), (8, 8)), "finite 2-D array"),
    ],
)
def test_downsample_and_blur_validation(build, message):
    with pytest.raises(ValueError, match=message):
        build()


# --- the user's matrices, functions and shapes -----------------------------------------------


def test_a_matrix_of_h_w_columns_is_applied_to_each_channel():
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(M_ROWS, N)).astype(np.float32)
    x = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(1))
    expected = np.stack([matrix @ x[0, c].reshape(-1).numpy() for c in range(3)])
    for given in (matrix, scipy.sparse.csr_matrix(matrix)):
        op = as_operator(given, (3, H, W))
        assert op.measurement_shape == (3, M_ROWS) and op.num_measurements == 3 * M_ROWS
        np.testing.assert_allclose(op.A(x)[0].numpy(), expected, rtol=1e-4, atol=1e-4)
        assert adjointness_error(op) < 1e-6 and op.problem == "compressive_sensing"
        assert op.describe()["per_channel"] is True
    with pytest.raises(ValueError, match=r"or H·W = 391, to apply the matrix to each channel"):
        as_operator(matrix[:, :-1], (3, H, W))


def test_torch_matrices_of_any_layout_and_precision():
    rng = np.random.default_rng(0)
    matrix = torch.from_numpy(rng.normal(size=(M_ROWS, N)).astype(np.float32))
    x = torch.rand(1, 1, H, W, generator=torch.Generator().manual_seed(1))
    for given, tolerance in ((matrix.to_sparse(), 1e-5), (matrix.to_sparse_csr(), 1e-5),
                             (matrix.bfloat16(), 0.1), (matrix.half(), 0.05)):
        op = as_operator(given, (H, W))
        torch.testing.assert_close(op.A(x), x.reshape(1, -1) @ matrix.T, rtol=tolerance,
                                   atol=tolerance)
    with pytest.raises(TypeError, match="must hold real numbers, got dtype torch.complex64"):
        as_operator(matrix.to(torch.complex64), (H, W))
    with pytest.raises(ValueError, match=r"must be 2-D \(m, n\), got \(5,\)"):
        as_operator(scipy.sparse.coo_array(np.ones(5)), (1, 5))


def test_an_image_shape_given_as_h_w_c_is_refused():
    with pytest.raises(ValueError, match=r"image_shape \(16, 12, 3\) looks like \(H, W, C\); "
                                         r"deepprior's operators take \(C, H, W\): pass "
                                         r"\(3, 16, 12\)"):
        as_operator(np.ones((10, 576)), (16, 12, 3))
    assert as_operator(np.ones((10, 576)), (3, 16, 12)).image_shape == (3, 16, 12)


def test_pairs_lists_and_what_as_operator_cannot_take():
    import scipy.sparse.linalg

    for pair in ((lambda x: 2 * x, None), [lambda x: 2 * x, lambda y: 2 * y]):
        op = as_operator(pair, (4, 5))
        assert op.measurement_shape == (1, 4, 5) and op.has_adjoint == (pair[1] is not None)
    with pytest.raises(TypeError, match="a MatrixLinearOperator works on numpy vectors and the "
                                        "fit needs torch tensors"):
        as_operator(scipy.sparse.linalg.aslinearoperator(np.ones((3, 16))), (4, 4))


def test_a_failing_adjoint_is_named_like_a_failing_a():
    op = as_operator((lambda x: 2 * x, lambda y: torch.zeros(10)), (4, 5))
    with pytest.raises(ValueError, match=r"FunctionOperator.A_adjoint failed on random "
                                         r"measurements of shape \(1, 1, 4, 5\): RuntimeError"):
        check_operator(op)
    op = as_operator((lambda x: 2 * x, lambda y: y.numpy()), (4, 5))
    with pytest.raises(ValueError, match="A_adjoint failed .*: AttributeError"):
        check_operator(op)


def test_the_snr_of_a_masked_image_counts_the_pixels_that_carry_data():
    from deepprior import sample_image, simulate_measurements

    image = sample_image("camera", size=32)
    op = Mask((32, 32), keep=0.25, seed=0)
    clean, _ = simulate_measurements(op, image)
    noisy, sigma = simulate_measurements(op, image, snr_db=20, seed=1)
    error = noisy.astype(np.float64) - clean
    snr = 10 * np.log10((clean.astype(np.float64) ** 2).sum() / (error**2).sum())
    assert snr == pytest.approx(20, abs=0.5)  # it was 25.7: the holes' zeros lowered the rms
    assert np.all(noisy[~op.observed.numpy()] == 0)


def test_an_even_gaussian_kernel_and_masks_that_mark_nothing_are_refused_or_avoided():
    from deepprior import random_mask, text_mask

    with pytest.raises(ValueError, match="size must be odd"):
        gaussian_kernel(1.0, size=4)
    assert random_mask((10, 10), 0.996).sum() == 1  # 99.6 rounds to 100: one pixel stays
    assert (~text_mask((200, 5))).any()  # a narrow image gets letters it can hold



def test_sample_image_and_mask_arguments_are_checked():
    from deepprior import random_mask, sample_image, text_mask

    assert sample_image("camera", size=np.int64(12)).shape == (12, 12)
    for size in ("16", (16.5, 16), True):  # gave a type error from inside, or a 1x1 image
        with pytest.raises(TypeError, match=r"size must be a positive int or \(height, width"):
            sample_image("camera", size=size)
    with pytest.raises(ValueError, match=r"\(height, width\), got \(8, 8, 3\): pass "
                                         r"image.shape\[:2\]"):
        random_mask((8, 8, 3), 0.5)  # a colour image's shape
    with pytest.raises(ValueError, match="lines must be an integer >= 0"):
        text_mask((64, 64), lines=-1)
    with pytest.raises(ValueError, match="text must be a non-empty string"):
        text_mask((64, 64), text=" ")
    for call in (lambda: random_mask(4, 0.5), lambda: text_mask(64)):  # said "positive int"
        with pytest.raises(TypeError, match=r"^shape must be \(height, width\), got (4|64)$"):
            call()
    with pytest.raises(TypeError, match=r"got 64.5$"):  # what was passed, not (64.5, 64.5)
        sample_image("camera", size=64.5)
    with pytest.raises(ValueError, match="seed must be an integer >= 0, got -1"):
        random_mask((8, 8), 0.5, seed=-1)
    with pytest.raises(TypeError, match="seed must be an integer"):
        random_mask((8, 8), 0.5, seed=None)  # a different mask at every call


def test_user_forward_models_of_other_kinds():
    """An old-style autograd.Function, float32 buffers, a complex output, a numpy image_shape."""

    class Project(torch.autograd.Function):  # forward(ctx, x), as hand-written projectors are
        @staticmethod
        def forward(ctx, x):
            return x[..., ::2, :] * 2

        @staticmethod
        def backward(ctx, grad):
            out = grad.new_zeros((*grad.shape[:-2], grad.shape[-2] * 2, grad.shape[-1]))
            out[..., ::2, :] = 2 * grad
            return out

    op = as_operator(Project.apply, image_shape=(8, 6))
    check_operator(op)
    v = torch.rand((1, *op.measurement_shape), dtype=torch.float64)
    expected = torch.zeros((1, 1, 8, 6), dtype=torch.float64)
    expected[..., ::2, :] = 2 * v.reshape(1, 1, 4, 6)
    torch.testing.assert_close(op.A_adjoint(v), expected)  # torch.func refused this Function
    weights = torch.rand(4, 6)  # float32, as a user's module holds
    blur = as_operator(lambda x: x[..., ::2, :] * weights, image_shape=(8, 6))
    assert adjointness_error(blur) < 1e-6  # float64 failed on the float32 buffer: float32 then
    with pytest.raises(ValueError, match=r"A\(x\) returns complex values .*view_as_real"):
        as_operator(lambda x: torch.fft.fft2(x, norm="ortho"), image_shape=(8, 6))

    class Physics:
        def A(self, x):  # noqa: N802
            return x[..., ::2]

    assert as_operator(Physics(), image_shape=np.array([4, 4])).measurement_shape == (1, 4, 2)


def test_a_mask_written_as_a_function_counts_only_its_pixels():
    """x * M as a function counted every pixel as a measurement: the discrepancy level was
    2× too high at half the pixels kept, and a hold-out split held out empty pixels."""
    from deepprior import reconstruct

    mask = Mask((1, 16, 16), keep=0.5, seed=3)
    keep = mask.mask.clone()
    function = as_operator(lambda x: x * keep.to(x.device), image_shape=(16, 16))
    assert function.num_measurements == mask.num_measurements == int(keep.sum())
    assert torch.equal(function.observed, mask.observed)
    y = mask.A(torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0)))[0]
    options = dict(net="deep_decoder", net_options={"channels": 4}, max_num_iter=6,
                   device="cpu", stop="holdout:fraction=0.2,patience=2", ensemble=1,
                   problem="inpainting")
    ours, theirs = (reconstruct(y.numpy(), op, **options) for op in (mask, function))
    np.testing.assert_allclose(ours.image, theirs.image, atol=1e-6)
    assert as_operator(lambda x: x[..., ::2, :], image_shape=(4, 4)).observed is None
