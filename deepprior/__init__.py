"""deepprior: recover an image from one corrupted observation with untrained neural networks.

Deep Decoder (Heckel & Hand 2019), Deep Image Prior (Ulyanov et al. 2018) and ConvDecoder
(Darestani & Heckel 2021), optional channel normalization (Dai & Heckel 2019), for denoising,
compressive sensing, inpainting and any linear inverse problem, with early-stopping rules that
need no clean image.

>>> from deepprior import reconstruct, load_image, save_image   # doctest: +SKIP
"""

from importlib.metadata import PackageNotFoundError, version

from .api import (
    DEFAULT_NETS,
    PROBLEMS,
    Defaults,
    Reconstruction,
    dry_run,
    image_to_tensor,
    planned_fits,
    problem_defaults,
    reconstruct,
    register_net,
    simulate_measurements,
    tensor_to_image,
)
from .batch import BatchResult, item_seed, reconstruct_many
from .data import random_mask, sample_image, text_mask
from .fit import PRECISIONS, FitResult, FitState, fit, fit_many, resolve_device
from .io import (
    ImageError,
    image_bit_depth,
    image_icc_profile,
    jsonable,
    load_array,
    load_image,
    save_image,
    write_atomic,
)
from .metrics import mse, psnr, psnr_tensor, ssim, total_variation
from .nets import NORMS, available_nets, build_net
from .noise import add_gaussian_noise, estimate_sigma
from .operators import (
    Blur,
    Downsample,
    FastSensing,
    FunctionOperator,
    GaussianSensing,
    Identity,
    LinearOperator,
    Mask,
    MatrixOperator,
    adjointness_error,
    as_operator,
    check_operator,
    downsampling_kernel,
    gaussian_kernel,
    linearity_error,
    motion_kernel,
    operator_from_description,
)
from .stopping import FirstOf, Shadow, make_policy, parse_stop

try:
    __version__ = version("deepprior")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.2.0"

__all__ = [
    "DEFAULT_NETS",
    "NORMS",
    "PRECISIONS",
    "PROBLEMS",
    "BatchResult",
    "Blur",
    "Defaults",
    "Downsample",
    "FastSensing",
    "FirstOf",
    "FitResult",
    "FitState",
    "FunctionOperator",
    "GaussianSensing",
    "Identity",
    "ImageError",
    "LinearOperator",
    "Mask",
    "MatrixOperator",
    "Reconstruction",
    "Shadow",
    "__version__",
    "add_gaussian_noise",
    "adjointness_error",
    "linearity_error",
    "as_operator",
    "available_nets",
    "build_net",
    "check_operator",
    "downsampling_kernel",
    "dry_run",
    "estimate_sigma",
    "fit",
    "fit_many",
    "gaussian_kernel",
    "image_bit_depth",
    "image_icc_profile",
    "image_to_tensor",
    "item_seed",
    "jsonable",
    "load_array",
    "load_image",
    "make_policy",
    "motion_kernel",
    "mse",
    "operator_from_description",
    "parse_stop",
    "planned_fits",
    "problem_defaults",
    "psnr",
    "psnr_tensor",
    "random_mask",
    "reconstruct",
    "reconstruct_many",
    "register_net",
    "resolve_device",
    "sample_image",
    "save_image",
    "simulate_measurements",
    "ssim",
    "tensor_to_image",
    "text_mask",
    "total_variation",
    "write_atomic",
]
