"""deepprior: recover an image from one corrupted observation with untrained neural networks.

Deep Decoder (Heckel & Hand 2019), Deep Image Prior (Ulyanov et al. 2018) and ConvDecoder
(Darestani & Heckel 2021), optional channel normalization (Dai & Heckel 2019), for denoising and
compressive sensing, with early-stopping rules that need no clean image.

>>> from deepprior import reconstruct, load_image, save_image   # doctest: +SKIP
"""

from importlib.metadata import PackageNotFoundError, version

from .api import DEFAULTS, Reconstruction, image_to_tensor, reconstruct, tensor_to_image
from .data import sample_image
from .io import ImageError, load_image, save_image, write_atomic
from .metrics import mse, psnr, ssim
from .nets import available_nets, build_net
from .noise import add_gaussian_noise, estimate_sigma
from .operators import (
    FastSensing,
    GaussianSensing,
    Identity,
    LinearOperator,
    Mask,
    adjointness_error,
    operator_from_description,
)

try:
    __version__ = version("deepprior")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0"

__all__ = [
    "DEFAULTS",
    "FastSensing",
    "GaussianSensing",
    "Identity",
    "ImageError",
    "LinearOperator",
    "Mask",
    "Reconstruction",
    "__version__",
    "add_gaussian_noise",
    "adjointness_error",
    "available_nets",
    "build_net",
    "estimate_sigma",
    "image_to_tensor",
    "load_image",
    "mse",
    "operator_from_description",
    "psnr",
    "reconstruct",
    "sample_image",
    "save_image",
    "ssim",
    "tensor_to_image",
    "write_atomic",
]
