"""Reading and writing image files: the only module of ``deepprior`` that touches them.

:func:`load_image` turns a PNG, TIFF, JPEG (or anything else Pillow reads) or a NumPy
``.npy`` file into a float32 array with values in [0, 1], of shape ``(H, W)`` for grayscale
or ``(H, W, 3)`` for colour. :func:`save_image` writes such an array back, atomically and
without overwriting unless asked to; :func:`write_atomic` applies the same rules to any other
output file. Bad input raises :class:`ImageError`, which names the file and says what is
wrong.

Two formats need more than Pillow's public API offers:

* Pillow reads 16-bit RGB(A) and grey+alpha PNGs with 8-bit precision. The PNG is therefore
  decoded a second time with a raw mode that yields the low bytes; together with the high
  bytes this restores every 16-bit sample exactly. Pillow cannot *write* 16-bit RGB PNGs, so
  a small encoder (Paeth filter, zlib) does that here.
* Pillow reads 16-bit RGB TIFFs with 8-bit precision and cannot write them; scikit-image's
  ``skimage.io`` (backed by tifffile) reads and writes those.
"""

from __future__ import annotations

import os
import pathlib
import secrets
import struct
import warnings
import zlib
from collections.abc import Callable
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["ImageError", "load_image", "save_image", "write_atomic"]

#: Suffixes :func:`save_image` understands, and the format each one selects.
SAVE_FORMATS: dict[str, str] = {
    ".png": "PNG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".npy": "NPY",
}

# Values this far outside [0, 1] are taken as rounding error and clipped without a warning.
_RANGE_TOLERANCE = 1e-6
_JPEG_QUALITY = 95
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_NPY_SIGNATURE = b"\x93NUMPY"
# Errors Pillow (and the libraries behind it) raise on corrupt or truncated data.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)
# Pillow raw modes of 16-bit PNGs that Pillow itself reduces to 8 bits.
_PNG16_RAWMODES = ("RGB;16B", "RGBA;16B", "LA;16B")
# Modes Pillow converts to RGB (no alpha) or to an alpha mode before reading.
_CONVERT_TO_RGB = ("CMYK", "YCbCr", "LAB", "HSV", "RGBX")
_CONVERT_WITH_ALPHA = {"PA": "RGBA", "RGBa": "RGBA", "La": "LA"}


class ImageError(ValueError):
    """An image file could not be read as an image usable by ``deepprior``.

    The message names the file, says what is wrong and, where possible, how to fix it.
    """


# --------------------------------------------------------------------------- loading


def load_image(path: str | os.PathLike[str], *, max_pixels: int = 64_000_000) -> np.ndarray:
    """Read an image file as a float32 array with values in [0, 1].

    Parameters
    ----------
    path : str or os.PathLike
        An image Pillow can read (PNG, TIFF, JPEG, BMP, ...; 8 or 16 bits per sample) or a
        NumPy ``.npy`` file holding a float array with values in [0, 1] of shape ``(H, W)``,
        ``(H, W, 1)`` or ``(H, W, 3)``.
    max_pixels : int, optional
        Largest accepted ``H * W``. Checked from the file header, before any pixel is
        decoded, so an oversized (or malicious) file costs no memory. (The one exception:
        TIFF kinds Pillow cannot open, such as float RGB, are checked after decoding.)

    Returns
    -------
    image : numpy.ndarray
        float32, shape ``(H, W)`` for grayscale or ``(H, W, 3)`` for colour, values in [0, 1].

    Raises
    ------
    ImageError
        If the file is missing, a directory, empty, truncated or corrupt, not an image, has a
        zero dimension or more than `max_pixels` pixels, or (``.npy``) has an unsupported
        dtype or shape, non-finite values or values outside [0, 1].
    TypeError, ValueError
        If `max_pixels` is not a positive integer.

    Warns
    -----
    UserWarning
        If an alpha channel is dropped, or only the first frame of a multi-frame file is read.

    Notes
    -----
    Integer samples are scaled by their full range: ``v / 255`` for 8 bits and ``v / 65535``
    for 16 bits, computed in float64, so 16-bit precision is kept. Bilevel ("1") images become
    0 and 1; palette images become RGB, or grayscale when every palette entry used is grey.
    The EXIF/TIFF orientation tag, if present, is applied, so the array is upright as image
    viewers show it. ``(H, W, 1)`` arrays come back as ``(H, W)``.

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = save_image(folder / "ramp.png", np.linspace(0, 1, 12).reshape(3, 4))
    >>> image = load_image(folder / "ramp.png")
    >>> image.shape, image.dtype, float(image.max())
    ((3, 4), dtype('float32'), 1.0)
    """
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int | np.integer):
        raise TypeError(
            f"max_pixels must be an integer, got {type(max_pixels).__name__} {max_pixels!r}"
        )
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels}")
    path = pathlib.Path(os.fspath(path))
    _check_is_readable_file(path)
    if path.suffix.lower() == ".npy":
        return _load_npy(path, int(max_pixels))
    pixels = _load_with_pillow(path, int(max_pixels))
    return _to_float_image(path, _drop_alpha(path, pixels))


def _check_is_readable_file(path: pathlib.Path) -> None:
    """Raise :class:`ImageError` unless `path` is an existing, non-empty regular file."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file; check the path and the working folder") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot access the file ({exc.strerror or exc})") from None
    if path.is_dir():
        raise ImageError(f"{path}: is a directory, not an image file")
    if info.st_size == 0:
        raise ImageError(f"{path}: the file is empty (0 bytes)")


def _check_dimensions(path: pathlib.Path, height: int, width: int, max_pixels: int) -> None:
    """Reject zero-sized images and images with more than `max_pixels` pixels."""
    if height == 0 or width == 0:
        raise ImageError(f"{path}: the image has a zero dimension (height {height}, width {width})")
    if height * width > max_pixels:
        raise ImageError(
            f"{path}: the image has {height * width:,} pixels ({height} x {width}), more than "
            f"max_pixels={max_pixels:,}; pass max_pixels={height * width} if you have the "
            "memory and time for it, or crop/resize the image"
        )


# .npy ----------------------------------------------------------------------------------


def _load_npy(path: pathlib.Path, max_pixels: int) -> np.ndarray:
    """Read a float ``.npy`` array, checking dtype, shape and size before the data."""
    with path.open("rb") as fh:
        signature = fh.read(len(_NPY_SIGNATURE))
    if signature != _NPY_SIGNATURE:
        raise ImageError(f"{path}: not a NumPy .npy file (it does not start with the .npy header)")
    try:
        # Memory-mapping reads only the header: shape and dtype are known before the data.
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if "pickled" in str(exc) or "Python objects" in str(exc):
            raise ImageError(
                f"{path}: unsupported .npy dtype object; save a float array with values in "
                "[0, 1] instead"
            ) from None
        raise ImageError(
            f"{path}: the .npy file could not be read, it looks truncated or corrupt ({exc})"
        ) from None
    except (OSError, EOFError) as exc:
        raise ImageError(
            f"{path}: the .npy file could not be read, it looks truncated or corrupt ({exc})"
        ) from None
    if mapped.dtype.kind != "f":
        hint = " (e.g. array / 255 for 8-bit data)" if mapped.dtype.kind in "uib" else ""
        raise ImageError(
            f"{path}: unsupported .npy dtype {mapped.dtype}; expected a float array with "
            f"values in [0, 1]: convert it to float{hint}"
        )
    shape = mapped.shape
    if not (len(shape) == 2 or (len(shape) == 3 and shape[2] in (1, 3))):
        raise ImageError(
            f"{path}: unsupported .npy shape {shape}; expected (H, W), (H, W, 1) or (H, W, 3) "
            "with the channels last"
        )
    _check_dimensions(path, shape[0], shape[1], max_pixels)
    image = np.array(mapped, dtype=np.float32)
    del mapped
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    return _check_float_values(path, image)


def _check_float_values(path: pathlib.Path, image: np.ndarray) -> np.ndarray:
    """Reject non-finite values and values outside [0, 1]; clip rounding-level excess."""
    finite = np.isfinite(image)
    if not finite.all():
        raise ImageError(
            f"{path}: the image holds {int(image.size - finite.sum())} non-finite values "
            "(NaN or infinity); replace them before loading"
        )
    low, high = float(image.min()), float(image.max())
    if low < -_RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
        raise ImageError(
            f"{path}: values lie in [{low:g}, {high:g}], outside [0, 1]; divide by 255 "
            "(8-bit) or 65535 (16-bit) or rescale to [0, 1]"
        )
    return np.clip(image, 0.0, 1.0, out=image)


# Pillow --------------------------------------------------------------------------------


def _load_with_pillow(path: pathlib.Path, max_pixels: int) -> np.ndarray:
    """Decode any format Pillow knows (channels last, alpha kept), upright.

    16-bit colour PNGs are decoded at full precision; 16-bit colour TIFFs go to scikit-image.
    """
    with warnings.catch_warnings():
        # The size is checked below against max_pixels; Pillow's own warning is redundant.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(path)
        except Image.DecompressionBombError as exc:
            raise ImageError(
                f"{path}: more pixels than Pillow accepts ({exc}); crop/resize the image, or "
                "raise PIL.Image.MAX_IMAGE_PIXELS if you trust the file"
            ) from None
        except UnidentifiedImageError:
            return _load_unidentified(path, max_pixels)
        except _DECODE_ERRORS as exc:
            raise ImageError(f"{path}: the image header could not be read ({exc})") from None
        with im:
            width, height = im.size
            _check_dimensions(path, height, width, max_pixels)
            try:
                frames = getattr(im, "n_frames", 1)
            except _DECODE_ERRORS:  # a damaged later frame; the first one may still decode
                frames = 1
            if frames > 1:
                warnings.warn(
                    f"{path}: the file holds {frames} frames; only the first one is read",
                    UserWarning,
                    stacklevel=3,
                )
            try:
                pixels = _pillow_pixels(path, im)
            except ImageError:
                raise
            except Image.DecompressionBombError as exc:
                raise ImageError(f"{path}: more pixels than Pillow accepts ({exc})") from None
            except _DECODE_ERRORS as exc:
                raise ImageError(
                    f"{path}: the image data could not be decoded, the file looks truncated "
                    f"or corrupt ({exc})"
                ) from None
            # After decoding: Pillow's PNG getexif() loads the image, which would end
            # the 16-bit decoding path in _pillow_pixels.
            orientation = _orientation(im)
    return _apply_orientation(pixels, orientation)


def _load_unidentified(path: pathlib.Path, max_pixels: int) -> np.ndarray:
    """Explain why Pillow rejected a file, or read a TIFF Pillow cannot (e.g. float RGB)."""
    with path.open("rb") as fh:
        head = fh.read(32)
    if head.startswith(_PNG_SIGNATURE) and len(head) >= 24 and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        if width == 0 or height == 0:
            raise ImageError(
                f"{path}: the image has a zero dimension (height {height}, width {width})"
            )
    if head.startswith(_TIFF_SIGNATURES):
        pixels = _read_with_skimage(path)
        _check_dimensions(path, pixels.shape[0], pixels.shape[1], max_pixels)
        return pixels
    raise ImageError(
        f"{path}: not a recognised image file; use PNG, TIFF, JPEG or a .npy array "
        "(the file may also be corrupt)"
    )


def _pillow_pixels(path: pathlib.Path, im: Image.Image) -> np.ndarray:
    """Decode an opened Pillow image into an integer or float array, channels last."""
    mode = im.mode
    rawmode = _png_rawmode(im)
    if rawmode in _PNG16_RAWMODES:
        return _read_png16(path, rawmode)
    if im.format == "TIFF" and mode not in ("1", "L", "P", "F") and not mode.startswith("I"):
        bits = im.tag_v2.get(258, (8,))
        bits = bits if isinstance(bits, tuple) else (bits,)
        if max(bits) > 8:
            return _read_with_skimage(path)
    if mode == "1":
        return np.asarray(im.convert("L"))
    if mode in ("P", "PA"):
        return _palette_pixels(im)
    if mode in _CONVERT_WITH_ALPHA:
        return np.asarray(im.convert(_CONVERT_WITH_ALPHA[mode]))
    if mode in _CONVERT_TO_RGB:
        return np.asarray(im.convert("RGB"))
    if mode in ("L", "LA", "RGB", "RGBA", "I", "F") or mode.startswith("I;16"):
        return np.asarray(im)
    try:
        return np.asarray(im.convert("RGB"))
    except ValueError:
        raise ImageError(
            f"{path}: unsupported image mode {mode!r}; convert the file to RGB or grayscale"
        ) from None


def _palette_pixels(im: Image.Image) -> np.ndarray:
    """Palette image as RGB(A), or as grayscale (L or LA) when every used colour is grey."""
    has_alpha = im.mode == "PA" or "transparency" in im.info
    pixels = np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
    colour = pixels[:, :, :3]
    if np.array_equal(colour[:, :, 0], colour[:, :, 1]) and np.array_equal(
        colour[:, :, 0], colour[:, :, 2]
    ):
        return pixels[:, :, [0, 3]] if has_alpha else pixels[:, :, 0]
    return pixels


def _png_rawmode(im: Image.Image) -> str | None:
    """The raw mode Pillow decodes a PNG with, or None for other formats."""
    if im.format != "PNG" or len(im.tile) != 1:
        return None
    args = im.tile[0][3]
    return args if isinstance(args, str) else None


def _decode_png_as(path: pathlib.Path, rawmode: str) -> np.ndarray:
    """Decode a PNG with a different Pillow raw mode of the same bits per pixel."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as im:
            tile = im.tile[0]
            if hasattr(tile, "_replace"):  # Pillow >= 11: a named tuple
                im.tile = [tile._replace(args=rawmode)]
            else:
                im.tile = [(tile[0], tile[1], tile[2], rawmode)]
            im.load()
            return np.asarray(im)


def _read_png16(path: pathlib.Path, rawmode: str) -> np.ndarray:
    """Read a 16-bit RGB, RGBA or grey+alpha PNG without losing the low byte.

    Pillow's unpackers for ``RGB;16B`` keep the first (high) byte of each big-endian sample;
    the ``;16L`` unpackers keep the second byte, which for big-endian data is the low byte.
    Both consume the same bits per pixel, so PNG unfiltering is identical. A 16-bit grey+alpha
    pixel (4 bytes) decodes byte for byte with the 8-bit ``RGBA`` raw mode.
    """
    if rawmode == "LA;16B":
        raw = _decode_png_as(path, "RGBA").astype(np.uint16)
        grey = (raw[:, :, 0] << 8) | raw[:, :, 1]
        alpha = (raw[:, :, 2] << 8) | raw[:, :, 3]
        return np.stack([grey, alpha], axis=-1)
    high = _decode_png_as(path, rawmode).astype(np.uint16)
    low = _decode_png_as(path, rawmode.replace(";16B", ";16L")).astype(np.uint16)
    return (high << 8) | low


def _read_with_skimage(path: pathlib.Path) -> np.ndarray:
    """Read a TIFF Pillow cannot read at full precision, first page, channels last."""
    import skimage.io  # imported here: only needed for these rare files

    try:
        pixels = np.asarray(skimage.io.imread(path))
    except Exception as exc:  # tifffile raises many unrelated types
        raise ImageError(
            f"{path}: the TIFF file could not be decoded, it looks truncated, corrupt or of an "
            f"unsupported kind ({type(exc).__name__}: {exc})"
        ) from None
    if pixels.ndim == 4:  # several pages: keep the first
        warnings.warn(
            f"{path}: the file holds {pixels.shape[0]} pages; only the first one is read",
            UserWarning,
            stacklevel=5,
        )
        pixels = pixels[0]
    if pixels.ndim == 3 and pixels.shape[0] in (2, 3, 4) and pixels.shape[2] not in (2, 3, 4):
        pixels = np.moveaxis(pixels, 0, -1)  # planar layout (C, H, W) -> (H, W, C)
    return pixels


def _orientation(im: Image.Image) -> int:
    """The EXIF/TIFF orientation tag (1 to 8), 1 when absent or unreadable."""
    try:
        value = im.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block must not stop the pixels
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Turn the stored pixels upright as the orientation tag says (as viewers do).

    Tag values follow EXIF: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90
    clockwise, 7 transverse, 8 rotate 90 counter-clockwise (Pillow's ``exif_transpose``).
    """
    if orientation in (5, 7):
        pixels = np.swapaxes(pixels, 0, 1)
    if orientation == 2:
        pixels = pixels[:, ::-1]
    elif orientation in (3, 7):
        pixels = pixels[::-1, ::-1]
    elif orientation == 4:
        pixels = pixels[::-1]
    elif orientation == 6:
        pixels = np.rot90(pixels, -1)
    elif orientation == 8:
        pixels = np.rot90(pixels, 1)
    return np.ascontiguousarray(pixels)


def _drop_alpha(path: pathlib.Path, pixels: np.ndarray) -> np.ndarray:
    """Keep grey or RGB; drop an alpha channel with a warning; reject other layouts."""
    if pixels.ndim == 2:
        return pixels
    channels = pixels.shape[2] if pixels.ndim == 3 else -1
    if channels == 1:
        return pixels[:, :, 0]
    if channels == 3:
        return pixels
    if channels in (2, 4):
        kind = "grey+alpha" if channels == 2 else "RGBA"
        warnings.warn(
            f"{path}: {kind} image: the alpha channel was dropped (transparency is ignored; "
            "the stored colour values are used)",
            UserWarning,
            stacklevel=3,
        )
        return pixels[:, :, 0] if channels == 2 else pixels[:, :, :3]
    raise ImageError(f"{path}: unsupported pixel layout {pixels.shape}; expected grayscale or RGB")


def _to_float_image(path: pathlib.Path, pixels: np.ndarray) -> np.ndarray:
    """Scale integer samples by their full range (255 or 65535); check float samples."""
    if pixels.dtype == np.bool_:
        return pixels.astype(np.float32)
    if pixels.dtype == np.uint8:
        return (pixels / 255.0).astype(np.float32)
    if pixels.dtype.kind == "u" and pixels.dtype.itemsize == 2:
        return (pixels / 65535.0).astype(np.float32)
    if pixels.dtype.kind in "iu":  # Pillow mode "I" (32-bit) holding 16-bit data
        low, high = int(pixels.min()), int(pixels.max())
        if low < 0 or high > 65535:
            raise ImageError(
                f"{path}: {pixels.dtype} samples lie in [{low}, {high}]; only 8- and 16-bit "
                "data (0 to 65535) is supported: rescale the image to 16 bits"
            )
        return (pixels / 65535.0).astype(np.float32)
    if pixels.dtype.kind == "f":
        return _check_float_values(path, pixels.astype(np.float32))
    raise ImageError(f"{path}: unsupported sample type {pixels.dtype}")


# --------------------------------------------------------------------------- saving


def save_image(
    path: str | os.PathLike[str],
    image: np.ndarray,
    *,
    bits: int = 8,
    overwrite: bool = False,
) -> pathlib.Path:
    """Write a float image with values in [0, 1] to a file, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Destination; the format follows the suffix: ``.png``, ``.tif``/``.tiff``,
        ``.jpg``/``.jpeg`` or ``.npy``. Missing parent folders are created.
    image : numpy.ndarray
        Float array of shape ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` with values in [0, 1].
    bits : {8, 16}, optional
        Bits per sample for PNG and TIFF. JPEG supports 8 only; ``.npy`` ignores it and
        stores float32.
    overwrite : bool, optional
        Replace an existing file. By default an existing file is left untouched.

    Returns
    -------
    path : pathlib.Path
        The path written.

    Raises
    ------
    TypeError
        If `image` is not a float numpy array.
    ValueError
        If the suffix is not supported, `bits` is not 8 or 16 (or 16 for JPEG), the shape is
        not one listed above, or the image holds NaN or infinity.
    FileExistsError
        If `path` exists and `overwrite` is False.
    IsADirectoryError
        If `path` is a directory.

    Warns
    -----
    UserWarning
        If values lie outside [0, 1] by more than 1e-6; they are clipped to [0, 1].

    Notes
    -----
    Samples are quantised by rounding to nearest: ``q = round(x * (2**bits - 1))``, so
    ``load_image`` followed by ``save_image`` with the file's bit depth reproduces the file's
    samples exactly. The file is first written to a hidden temporary file in the destination
    folder and then moved into place with :func:`os.replace`; if anything fails, the temporary
    file is removed and no partial file is left behind.

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> save_image(folder / "out" / "grey.png", np.full((5, 7), 0.5), bits=16).name
    'grey.png'
    """
    path = pathlib.Path(os.fspath(path))
    file_format = SAVE_FORMATS.get(path.suffix.lower())
    if file_format is None:
        raise ValueError(
            f"cannot tell the image format of {str(path)!r} from its suffix "
            f"{path.suffix or '(none)'!r}; use one of {', '.join(SAVE_FORMATS)}"
        )
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits!r}")
    if file_format == "JPEG" and bits == 16:
        raise ValueError(
            f"JPEG stores 8 bits per sample only, got bits=16 for {str(path)!r}; use .png or "
            ".tif for 16 bits"
        )
    pixels = _prepare_for_saving(image)
    _check_destination(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, lambda target: _encode(target, pixels, file_format, bits))
    return path


def write_atomic(
    path: str | os.PathLike[str],
    write: Callable[[BinaryIO], object],
    *,
    overwrite: bool = False,
) -> pathlib.Path:
    """Write any file atomically, with the same safety rules as :func:`save_image`.

    For the other outputs of a run (a JSON report, a plot, saved measurements).

    Parameters
    ----------
    path : str or os.PathLike
        Destination. Missing parent folders are created.
    write : callable
        Called once with a binary file object open for writing; writes the content.
    overwrite : bool, optional
        Replace an existing file. By default an existing file is left untouched.

    Returns
    -------
    path : pathlib.Path
        The path written.

    Raises
    ------
    FileExistsError
        If `path` exists and `overwrite` is False.
    IsADirectoryError
        If `path` is a directory.

    Notes
    -----
    `write` fills a hidden temporary file in the destination folder, which is then moved
    onto `path` with :func:`os.replace`. Whatever `write` raises, the temporary file is
    removed and `path` is left as it was.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> write_atomic(folder / "report.json", lambda f: f.write(b"{}")).read_text()
    '{}'
    """
    path = pathlib.Path(os.fspath(path))
    _check_destination(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write_to(target: pathlib.Path) -> None:
        with target.open("wb") as handle:
            write(handle)

    _write_atomically(path, write_to)
    return path


def _check_destination(path: pathlib.Path, overwrite: bool) -> None:
    """Refuse a directory, and an existing file unless `overwrite` is true."""
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; give a file name inside it instead")
    if not overwrite and (path.exists() or path.is_symlink()):
        raise FileExistsError(
            f"{path} already exists; pass overwrite=True (--overwrite on the command line) to "
            "replace it, or choose another name"
        )


def _prepare_for_saving(image: np.ndarray) -> np.ndarray:
    """Validate an image for saving; return it as float64 (H, W) or (H, W, 3) in [0, 1]."""
    if not isinstance(image, np.ndarray):
        hint = " (convert a tensor with tensor_to_image first)" if hasattr(image, "dim") else ""
        raise TypeError(f"image must be a numpy array, got {type(image).__name__}{hint}")
    if image.dtype.kind != "f":
        hint = " (e.g. image / 255 for 8-bit data)" if image.dtype.kind in "uib" else ""
        raise TypeError(
            f"image must be a float array with values in [0, 1], got dtype {image.dtype}; "
            f"convert it to float{hint}"
        )
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3))):
        raise ValueError(f"image must have shape (H, W), (H, W, 1) or (H, W, 3), got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image has a zero dimension: shape {image.shape}")
    pixels = np.asarray(image, dtype=np.float64)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    finite = np.isfinite(pixels)
    if not finite.all():
        raise ValueError(
            f"image holds {int(pixels.size - finite.sum())} non-finite values (NaN or "
            "infinity); replace them (e.g. numpy.nan_to_num) before saving"
        )
    low, high = float(pixels.min()), float(pixels.max())
    if low < -_RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
        warnings.warn(
            f"image values lie in [{low:g}, {high:g}], outside [0, 1]; they were clipped to "
            "[0, 1] for saving",
            UserWarning,
            stacklevel=3,
        )
    return np.clip(pixels, 0.0, 1.0)


def _write_atomically(path: pathlib.Path, write: Callable[[pathlib.Path], None]) -> None:
    """Call ``write(temporary)`` in `path`'s folder, then move the result onto `path`."""
    temporary = _create_temporary(path)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _create_temporary(path: pathlib.Path) -> pathlib.Path:
    """Create an empty, hidden, uniquely named file next to `path` (same suffix).

    Created with ``os.open(..., 0o666)`` rather than :func:`tempfile.mkstemp` so that the
    final file gets the usual permissions (those allowed by the umask), not 0o600.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        candidate = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            os.close(os.open(candidate, flags, 0o666))
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"could not create a temporary file next to {path}")


def _encode(target: pathlib.Path, pixels: np.ndarray, file_format: str, bits: int) -> None:
    """Write `pixels` (float64 in [0, 1]) to `target` in the given format."""
    if file_format == "NPY":
        with target.open("wb") as fh:
            np.save(fh, pixels.astype(np.float32), allow_pickle=False)
        return
    dtype = np.uint8 if bits == 8 else np.uint16
    quantised = np.rint(pixels * float(2**bits - 1)).astype(dtype)
    if bits == 16 and quantised.ndim == 3:  # Pillow has no 16-bit RGB mode
        if file_format == "PNG":
            _write_png_rgb16(target, quantised)
        else:
            _write_tiff_rgb16(target, quantised)
        return
    options = {"quality": _JPEG_QUALITY} if file_format == "JPEG" else {}
    Image.fromarray(quantised).save(target, format=file_format, **options)


def _write_tiff_rgb16(target: pathlib.Path, pixels: np.ndarray) -> None:
    """Write a 16-bit RGB TIFF through scikit-image (tifffile); `target` ends in .tif(f)."""
    import skimage.io  # imported here: only needed for this case

    skimage.io.imsave(target, pixels, check_contrast=False)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 of type and data."""
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _write_png_rgb16(target: pathlib.Path, pixels: np.ndarray) -> None:
    """Write a (H, W, 3) uint16 array as a 16-bit RGB PNG (colour type 2, Paeth filter).

    PNG stores samples big-endian; each row is prefixed by its filter type (4 = Paeth), and
    the Paeth predictor of a byte is whichever of left ``a``, up ``b``, up-left ``c`` is
    closest to ``a + b - c`` (ties: a, then b). Filtering uses the unfiltered neighbours, so
    the whole image is filtered in one vectorised step.
    """
    height, width, channels = pixels.shape
    step = 2 * channels  # bytes per pixel
    rows = pixels.astype(">u2").view(np.uint8).reshape(height, width * step).astype(np.int16)
    left = np.zeros_like(rows)
    left[:, step:] = rows[:, :-step]
    up = np.zeros_like(rows)
    up[1:] = rows[:-1]
    up_left = np.zeros_like(rows)
    up_left[1:, step:] = rows[:-1, :-step]
    estimate = left + up - up_left
    dist_left, dist_up, dist_up_left = (np.abs(estimate - n) for n in (left, up, up_left))
    predictor = np.where(
        (dist_left <= dist_up) & (dist_left <= dist_up_left),
        left,
        np.where(dist_up <= dist_up_left, up, up_left),
    )
    filtered = ((rows - predictor) % 256).astype(np.uint8)
    scanlines = np.concatenate([np.full((height, 1), 4, np.uint8), filtered], axis=1)
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    with target.open("wb") as fh:
        fh.write(_PNG_SIGNATURE)
        fh.write(_png_chunk(b"IHDR", header))
        fh.write(_png_chunk(b"IDAT", zlib.compress(scanlines.tobytes(), 6)))
        fh.write(_png_chunk(b"IEND", b""))
