"""Reading and writing image files: the only module of ``deepprior`` that touches them.

:func:`load_image` turns a PNG, TIFF, JPEG (or anything else Pillow reads) or a NumPy
``.npy`` file into a float32 array with values in [0, 1], of shape ``(H, W)`` for grayscale
or ``(H, W, 3)`` for colour. :func:`save_image` writes such an array back, atomically and
without overwriting unless asked to; :func:`write_atomic` applies the same rules to any other
output file. Bad input raises :class:`ImageError`, which names the file and says what is
wrong. :func:`image_bit_depth` tells how many bits per sample an image file stores (to write
results at the input's precision), and :func:`load_array` reads a user's matrix or measurement
vector from ``.npy``, ``.npz`` (dense, or ``scipy.sparse.save_npz``), MATLAB ``.mat`` or text.

Pillow's public API does the work, except for colour with more than 8 bits per sample, which
Pillow reduces to 8 bits (or, for float colour, cannot read at all):

* 16-bit and float colour TIFFs are read, and 16-bit colour TIFFs written, with ``tifffile``.
* 16-bit colour PNGs are read at 8-bit precision, with a warning; writing them is refused.
  Use ``.tif`` for 16-bit colour.
"""

from __future__ import annotations

import contextlib
import math
import os
import pathlib
import secrets
import struct
import threading
import warnings
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = [
    "ImageError",
    "image_bit_depth",
    "jsonable",
    "load_array",
    "load_image",
    "save_image",
    "write_atomic",
]

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
_PNG_COLOUR_KINDS = {2: "RGB", 4: "grey+alpha", 6: "RGBA"}  # IHDR colour types with >1 sample
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_NPY_SIGNATURE = b"\x93NUMPY"
_PPM_MAGIC = (b"P3", b"P6")  # colour Netpbm, plain and raw
_ZIP_SIGNATURE = b"PK"  # an .npz is a zip archive
# Errors Pillow (and the libraries behind it) raise on corrupt or truncated data.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)
# Premultiplied-alpha modes, converted to their plain-alpha counterparts.
_CONVERT_WITH_ALPHA = {"RGBa": "RGBA", "La": "LA"}
# Pillow's own pixel limit is a module global; see _open_with_pillow.
_PILLOW_LIMIT_LOCK = threading.Lock()


class ImageError(ValueError):
    """An image file could not be read as an image usable by ``deepprior``.

    The message names the file, says what is wrong and, where possible, how to fix it.
    """


# --------------------------------------------------------------------------- loading


def load_image(path: str | os.PathLike[str], *, max_pixels: int = 64_000_000,
               unclipped: bool = False) -> np.ndarray:
    """Read an image file as a float32 array with values in [0, 1].

    Parameters
    ----------
    path : str or os.PathLike
        An image Pillow can read (PNG, TIFF, JPEG, BMP, ...; 8 or 16 bits per sample, float
        TIFF) or a NumPy ``.npy`` file holding a float array with values in [0, 1] of shape
        ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)``.
    max_pixels : int, optional
        Largest accepted ``H * W``. Checked from the file header, before any pixel is
        decoded, so an oversized (or malicious) file costs no memory. It replaces Pillow's
        own limit (``PIL.Image.MAX_IMAGE_PIXELS``).
    unclipped : bool, optional
        Keep float samples (``.npy``, float TIFF) outside [0, 1] as they are, finite ones:
        a noisy observation simulated without clipping, which a reconstruction fits as
        given (clipping would bias its zero-mean noise). By default they are refused.

    Returns
    -------
    image : numpy.ndarray
        float32, shape ``(H, W)`` for grayscale or ``(H, W, 3)`` for colour, values in [0, 1]
        (float samples outside it kept with ``unclipped=True``).

    Raises
    ------
    ImageError
        If the file is missing, a directory, empty, truncated or corrupt, not an image, has a
        zero dimension or more than `max_pixels` pixels, or (``.npy``) has an unsupported
        dtype or shape, non-finite values or values outside [0, 1] (without ``unclipped``).
    TypeError, ValueError
        If `max_pixels` is not a positive integer.

    Warns
    -----
    UserWarning
        If an alpha channel is dropped, only the first frame of a multi-frame file is read,
        or a 16-bit colour PNG is read with 8-bit precision (Pillow's limit; convert such
        files to 16-bit TIFF to keep every bit).

    Notes
    -----
    Integer samples are scaled by their full range: ``v / 255`` for 8 bits and ``v / 65535``
    for 16 bits, computed in float64, so 16-bit precision is kept (a TIFF of signed samples
    by ``v / 127`` or ``v / 32767``, and refused when one is negative); a Netpbm file (PGM, PPM)
    of 9 to 16 bits by its maximum value, at full precision. 16-bit and float colour
    TIFFs are read with ``tifffile``, at full precision (CMYK made RGB, grey stored with 0 as
    white inverted). Bilevel ("1") images become 0 and 1;
    palette images become RGB, or grayscale when every palette entry used is grey. The
    EXIF/TIFF orientation tag, if present, is applied, so the array is upright as image
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
    path, limit = _readable(path, max_pixels)
    if not isinstance(unclipped, bool | np.bool_):
        raise TypeError(f"unclipped must be True or False, got {unclipped!r}")
    if path.suffix.lower() == ".npy":
        return _load_npy(path, limit, unclipped)
    return _to_float_image(path, _drop_alpha(path, _load_pixels(path, limit)), unclipped)


def load_samples(path: str | os.PathLike[str], *, max_pixels: int = 64_000_000) -> np.ndarray:
    """An image file's samples as stored, for a file that holds data rather than a picture
    (a blur kernel measured in photon counts, say): integers or floats, upright, channels
    last, an alpha channel dropped, neither scaled nor checked against [0, 1] as
    :func:`load_image` does."""
    path, limit = _readable(path, max_pixels)
    return _drop_alpha(path, _load_pixels(path, limit))


def _readable(path: str | os.PathLike[str], max_pixels: object) -> tuple[pathlib.Path, int]:
    """The path of an image file that exists and is not empty, and the pixel limit, checked."""
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int | np.integer):
        raise TypeError(
            f"max_pixels must be an integer, got {type(max_pixels).__name__} {max_pixels!r}"
        )
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels}")
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"path must be a file name (str or os.PathLike), got "
                        f"{type(path).__name__}")
    path = pathlib.Path(os.fspath(path))
    _check_is_readable_file(path)
    return path, int(max_pixels)


def _check_is_readable_file(path: pathlib.Path, kind: str = "an image file",
                            error: type[ValueError] = ImageError) -> None:
    """Raise `error` unless `path` is an existing, non-empty regular file (`kind`, in words)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise error(f"{path}: no such file; check the path and the working folder") from None
    except OSError as exc:
        raise error(f"{path}: cannot access the file ({exc.strerror or exc})") from None
    if path.is_dir():
        raise error(f"{path}: is a directory, not {kind}")
    if info.st_size == 0:
        raise error(f"{path}: the file is empty (0 bytes)")


def _check_dimensions(path: pathlib.Path, height: int, width: int, max_pixels: int) -> None:
    """Reject zero-sized images and images with more than `max_pixels` pixels."""
    if height == 0 or width == 0:
        raise ImageError(f"{path}: the image has a zero dimension (height {height}, width {width})")
    pixels = height * width
    if pixels > max_pixels:
        raise ImageError(
            f"{path}: the image has {pixels:,} pixels ({height} x {width}), more than "
            f"max_pixels={max_pixels:,}; pass max_pixels={pixels} (CLI: --max-pixels "
            f"{pixels}) if you have the memory and time for it, or crop/resize the image"
        )


# .npy ----------------------------------------------------------------------------------


def _load_npy(path: pathlib.Path, max_pixels: int, unclipped: bool) -> np.ndarray:
    """Read a float ``.npy`` array, checking dtype, shape and size before the data."""
    with path.open("rb") as fh:
        if fh.read(len(_NPY_SIGNATURE)) != _NPY_SIGNATURE:
            raise ImageError(
                f"{path}: not a NumPy .npy file (it does not start with the .npy header)"
            )
    try:
        # Memory-mapping reads only the header: shape and dtype are known before the data.
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        if "pickled" in str(exc) or "Python objects" in str(exc):
            raise ImageError(
                f"{path}: unsupported .npy dtype object; save a float array with values in "
                "[0, 1] instead"
            ) from None
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
    if image.ndim == 3:
        image = image[:, :, 0] if image.shape[2] == 1 else image
    return _check_float_values(path, image, unclipped)


def _check_float_values(path: pathlib.Path, image: np.ndarray, unclipped: bool) -> np.ndarray:
    """Reject non-finite values and (unless ``unclipped``) values outside [0, 1]; clip
    rounding-level excess."""
    finite = np.isfinite(image)
    if not finite.all():
        raise ImageError(
            f"{path}: the image holds {int(image.size - finite.sum())} non-finite values "
            "(NaN or infinity); replace them before loading"
        )
    if unclipped:
        return image
    low, high = float(image.min()), float(image.max())
    if low < -_RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
        hint = ("a noisy image simulated without clipping: load_image(path, unclipped=True) "
                "keeps it as it is (deepprior.reconstruct fits it so), or clip it to [0, 1]"
                if -0.5 <= low and high <= 1.5 else
                "divide by 255 (8-bit) or 65535 (16-bit) or rescale to [0, 1]")
        raise ImageError(f"{path}: values lie in [{low:g}, {high:g}], outside [0, 1]; {hint}")
    return np.clip(image, 0.0, 1.0, out=image)


# Image files ---------------------------------------------------------------------------


def _load_pixels(path: pathlib.Path, max_pixels: int) -> np.ndarray:
    """Decode an image file into an array (channels last, alpha kept), upright."""
    with path.open("rb") as fh:
        head = fh.read(33)  # PNG: signature, then the IHDR chunk
    colour_type = None
    if head.startswith(_PNG_SIGNATURE) and head[12:16] == b"IHDR" and len(head) >= 26:
        width, height, depth, colour_type = struct.unpack(">IIBB", head[16:26])
        _check_dimensions(path, height, width, max_pixels)
        if depth == 16 and colour_type in _PNG_COLOUR_KINDS:
            warnings.warn(
                f"{path}: 16-bit {_PNG_COLOUR_KINDS[colour_type]} PNG: read with 8-bit "
                "precision (Pillow reduces 16-bit colour PNGs to 8 bits); convert it to a "
                "16-bit TIFF (.tif) to load it at full precision",
                UserWarning,
                stacklevel=3,
            )
    if head[:2] in _PPM_MAGIC and (ppm := _deep_ppm(path)) is not None:
        return _read_deep_ppm(path, *ppm, max_pixels)
    try:
        im = _open_with_pillow(path)
    except UnidentifiedImageError:
        if head.startswith(_TIFF_SIGNATURES):  # e.g. float RGB
            return _read_tiff(path, max_pixels)
        raise ImageError(
            f"{path}: not a recognised image file; use PNG, TIFF, JPEG or a .npy array "
            "(the file may also be corrupt)"
        ) from None
    except _DECODE_ERRORS as exc:
        raise ImageError(f"{path}: the image header could not be read ({exc})") from None
    with im:
        _check_dimensions(path, im.height, im.width, max_pixels)
        if im.format == "TIFF" and _tifffile_reads(im):
            return _read_tiff(path, max_pixels)
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
            with _pillow_limit_lifted():
                im.load()
        except _DECODE_ERRORS as exc:
            raise ImageError(
                f"{path}: the image data could not be decoded, the file looks truncated or "
                f"corrupt ({exc})"
            ) from None
        pixels = _pillow_pixels(path, im)
        if colour_type == 4 and pixels.shape[-1] == 4:  # Pillow: 16-bit grey+alpha PNG as RGBA
            pixels = pixels[:, :, [0, 3]]
        return _apply_orientation(pixels, _orientation(im))


def _deep_ppm(path: pathlib.Path) -> tuple[bytes, int, int, int, int] | None:
    """A PPM of more than 8 bits per sample (maxval > 255; dcraw's ``-4``/``-6`` output, say),
    which Pillow reduces to 8 bits: its kind (``P3`` plain, ``P6`` raw), width, height, maxval
    and the offset of its samples. ``None`` for any other file, or a header Pillow should judge.
    """
    with path.open("rb") as fh:
        data = fh.read(1 << 16)  # the header: its pixels are read once their number is checked
    tokens, pos = [], 2
    while len(tokens) < 3 and pos < len(data):
        char = data[pos:pos + 1]
        if char == b"#":  # a comment, to the end of its line
            ends = [i for i in (data.find(b"\n", pos), data.find(b"\r", pos)) if i >= 0]
            pos = min(ends, default=len(data)) + 1
        elif char.isspace():
            pos += 1
        else:
            start = pos
            while pos < len(data) and data[pos:pos + 1].isdigit():
                pos += 1
            if pos == start:
                return None
            tokens.append(int(data[start:pos]))
    if len(tokens) < 3 or not 255 < tokens[2] < 65536 or pos >= len(data):
        return None
    width, height, maxval = tokens
    return data[:2], width, height, maxval, pos + 1  # one whitespace ends the header


def _read_deep_ppm(path: pathlib.Path, kind: bytes, width: int, height: int, maxval: int,
                   offset: int, max_pixels: int) -> np.ndarray:
    """The samples of a PPM :func:`_deep_ppm` found, scaled to 16 bits (as Pillow scales a
    grey PGM of more than 8 bits), ``(H, W, 3)`` uint16."""
    _check_dimensions(path, height, width, max_pixels)
    count = width * height * 3
    with path.open("rb") as fh:
        fh.seek(offset)
        data = fh.read(2 * count) if kind == b"P6" else fh.read()
    if kind == b"P6":
        samples = np.frombuffer(data[:len(data) // 2 * 2], dtype=">u2")
    else:
        try:
            samples = np.array(data.split()[:count], dtype=np.int64)
        except ValueError:
            raise ImageError(f"{path}: a plain PPM holding something other than numbers") from None
    if samples.size < count:
        raise ImageError(f"{path}: the image data stops after {samples.size} of {count} "
                         "samples, the file looks truncated")
    if samples.max() > maxval:
        raise ImageError(f"{path}: a sample of {samples.max()} exceeds the file's maximum "
                         f"value, {maxval}; the file looks corrupt")
    scaled = np.rint(samples.astype(np.float64) * (65535 / maxval)).astype(np.uint16)
    return scaled.reshape(height, width, 3)


@contextlib.contextmanager
def _pillow_limit_lifted() -> Iterator[None]:
    """Pillow's own pixel limit lifted, which it checks when it opens a file and again when it
    decodes some (TIFF, GIF): `max_pixels` is checked instead.

    ``PIL.Image.MAX_IMAGE_PIXELS`` is a module global; it is restored at once, under a lock.
    """
    with _PILLOW_LIMIT_LOCK:
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def _open_with_pillow(path: pathlib.Path) -> Image.Image:
    """``Image.open`` with Pillow's own pixel limit lifted (see :func:`_pillow_limit_lifted`)."""
    with _pillow_limit_lifted():
        return Image.open(path)


def _pillow_pixels(path: pathlib.Path, im: Image.Image) -> np.ndarray:
    """A loaded Pillow image as an integer or float array, channels last."""
    mode = im.mode
    if mode == "1":
        return np.asarray(im.convert("L"))
    if mode in ("P", "PA"):
        return _palette_pixels(im)
    if mode in _CONVERT_WITH_ALPHA:
        return np.asarray(im.convert(_CONVERT_WITH_ALPHA[mode]))
    if mode in ("L", "LA", "RGB", "RGBA", "I", "F") or mode.startswith("I;16"):
        return np.asarray(im)
    try:  # CMYK, YCbCr, LAB, ...
        return np.asarray(im.convert("RGB"))
    except ValueError:
        raise ImageError(
            f"{path}: unsupported image mode {mode!r}; convert the file to RGB or grayscale"
        ) from None


def _palette_pixels(im: Image.Image) -> np.ndarray:
    """Palette image as RGB(A), or as grayscale (L or LA) when every used colour is grey."""
    has_alpha = im.mode == "PA" or "transparency" in im.info
    pixels = np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
    red, green, blue = pixels[:, :, 0], pixels[:, :, 1], pixels[:, :, 2]
    if np.array_equal(red, green) and np.array_equal(red, blue):
        return pixels[:, :, [0, 3]] if has_alpha else red
    return pixels


_MINISWHITE, _SEPARATED = 0, 5  # TIFF PhotometricInterpretation: grey with 0 white; ink


def _tifffile_reads(im: Image.Image) -> bool:
    """Whether a TIFF Pillow opened is read with tifffile instead: colour of more than 8 bits
    (Pillow keeps 8), 16-bit grey with 0 as white (Pillow leaves it a negative), signed
    samples (Pillow reads signed 8-bit as unsigned and widens signed 16-bit to 32 bits), 32-bit
    integers (refused, by their own type's name), and one
    uncompressed band to be turned by 90° (Pillow, from version 13 on, garbles it)."""
    bits, photometric = np.max(im.tag_v2.get(258, 8)), im.tag_v2.get(262)  # BitsPerSample
    bands, uncompressed = len(im.getbands()), im.tag_v2.get(259, 1) == 1  # Compression
    formats = np.atleast_1d(im.tag_v2.get(339, 1))  # SampleFormat: 2 signed, 3 float
    wide = bits > 16 and 3 not in formats  # 32-bit integers: Pillow wraps uint32 to int32
    return 2 in formats or wide or (bits > 8 and (bands > 1 or photometric == 0)) or (
        bands == 1 and uncompressed and _orientation(im) in (5, 6, 7, 8))


def _read_tiff(path: pathlib.Path, max_pixels: int) -> np.ndarray:
    """Read the first page of a TIFF at full precision with tifffile, channels last, upright;
    0-is-white grey inverted, CMYK made RGB."""
    import tifffile  # imported here: only 16-bit and float colour TIFFs need it

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            _check_dimensions(path, page.imagelength, page.imagewidth, max_pixels)
            frames = len(tif.pages)
            pixels = page.asarray()
            if page.axes.startswith("S"):  # planar layout (C, H, W)
                pixels = np.moveaxis(pixels, 0, -1)
            orientation = page.tags.valueof(274, 1)
            photometric = int(page.photometric)
    except ImageError:
        raise
    except Exception as exc:  # tifffile raises many unrelated types
        raise ImageError(
            f"{path}: the TIFF file could not be decoded, it looks truncated, corrupt or of an "
            f"unsupported kind ({type(exc).__name__}: {exc})"
        ) from None
    if frames > 1:
        warnings.warn(
            f"{path}: the file holds {frames} frames; only the first one is read",
            UserWarning,
            stacklevel=4,
        )
    kind = {_MINISWHITE: "grey with 0 as white", _SEPARATED: "CMYK"}.get(photometric)
    if photometric == _MINISWHITE and pixels.dtype == np.bool_:  # bilevel (a fax): 0 is white
        return _apply_orientation(~pixels, orientation)
    if kind and (pixels.dtype.kind not in "iu" or (photometric == _SEPARATED and (
            pixels.ndim != 3 or pixels.shape[2] != 4))):
        raise ImageError(f"{path}: a {pixels.dtype} TIFF in {kind} with "
                         f"{pixels.shape[2] if pixels.ndim == 3 else 1} channel(s) is not "
                         "supported; convert it to grey or RGB")
    if photometric == _MINISWHITE:
        pixels = np.iinfo(pixels.dtype).max - pixels
    elif photometric == _SEPARATED:  # ink: C, M, Y, K; the light left: (1 − C)(1 − K), ...
        full = float(np.iinfo(pixels.dtype).max)
        ink = pixels.astype(np.float64) / full
        pixels = np.rint((1 - ink[:, :, :3]) * (1 - ink[:, :, 3:]) * full).astype(pixels.dtype)
    return _apply_orientation(pixels, orientation)


def _orientation(im: Image.Image) -> object:
    """The EXIF/TIFF orientation tag, 1 when absent or unreadable."""
    try:
        return im.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block must not stop the pixels
        return 1


def _apply_orientation(pixels: np.ndarray, orientation: object) -> np.ndarray:
    """Turn the stored pixels upright as the orientation tag says (as viewers do).

    Tag values follow EXIF: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90
    clockwise, 7 transverse, 8 rotate 90 counter-clockwise (Pillow's ``exif_transpose``).
    Other values leave the pixels as stored.
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
    channels = 0 if pixels.ndim == 2 else pixels.shape[2] if pixels.ndim == 3 else -1
    if channels in (0, 3):
        return pixels
    if channels == 1:
        return pixels[:, :, 0]
    if channels in (2, 4):
        warnings.warn(
            f"{path}: {'grey+alpha' if channels == 2 else 'RGBA'} image: the alpha channel was "
            "dropped (transparency is ignored; the stored colour values are used)",
            UserWarning,
            stacklevel=3,
        )
        return pixels[:, :, 0] if channels == 2 else pixels[:, :, :3]
    raise ImageError(f"{path}: unsupported pixel layout {pixels.shape}; expected grayscale or RGB")


def _to_float_image(path: pathlib.Path, pixels: np.ndarray, unclipped: bool) -> np.ndarray:
    """Scale integer samples by their full range (255 or 65535; signed 8 / 16-bit samples,
    none negative, by 127 / 32767); check float samples."""
    if pixels.dtype == np.bool_:
        return pixels.astype(np.float32)
    if pixels.dtype == np.uint8:
        return (pixels / 255.0).astype(np.float32)
    if pixels.dtype in (np.int8, np.int16):  # a TIFF of signed samples (read by tifffile)
        low, high, full = int(pixels.min()), int(pixels.max()), np.iinfo(pixels.dtype).max
        if low < 0:
            raise ImageError(
                f"{path}: signed {8 * pixels.itemsize}-bit samples ({pixels.dtype}) lie in "
                f"[{low}, {high}]; negative values have no place on the [0, 1] scale: save the "
                "image as float32 in [0, 1] (.npy or a float TIFF) or as unsigned 16-bit"
            )
        return (pixels / float(full)).astype(np.float32)
    if pixels.dtype.kind in "iu":  # 16-bit, or Pillow mode "I" (32-bit) holding 16-bit data
        low, high = int(pixels.min()), int(pixels.max())
        if low < 0 or high > 65535:
            raise ImageError(
                f"{path}: {pixels.dtype} samples lie in [{low}, {high}]; only 8- and 16-bit "
                "data (0 to 65535) is supported: rescale the image to 16 bits"
            )
        return (pixels / 65535.0).astype(np.float32)
    if pixels.dtype.kind == "f":
        return _check_float_values(path, pixels.astype(np.float32), unclipped)
    raise ImageError(f"{path}: unsupported sample type {pixels.dtype}")


# --------------------------------------------------------------------------- headers, arrays


def image_bit_depth(path: str | os.PathLike[str]) -> int:
    """Bits per sample an image file stores: 8 (or fewer), 16, or 32 for floating point.

    Reads only the header. Useful to write a result with the precision of its input
    (``save_image(..., bits=16)`` when this returns 16 or 32).

    Parameters
    ----------
    path : str or os.PathLike
        A file :func:`load_image` reads.

    Returns
    -------
    bits : {8, 16, 32}
        8 for 1- to 8-bit samples, 16 for 16-bit integer samples, 32 for floating-point
        samples (float TIFF, float ``.npy``).

    Raises
    ------
    ImageError
        If the file is missing, a directory, empty, or not a recognised image.

    Notes
    -----
    This is the file's depth, not the precision :func:`load_image` keeps: a 16-bit colour PNG
    reports 16 although it is read at 8-bit precision (Pillow's limit).

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> image_bit_depth(save_image(folder / "deep.png", np.zeros((3, 4)), bits=16))
    16
    """
    path = pathlib.Path(os.fspath(path))
    _check_is_readable_file(path)
    with path.open("rb") as fh:
        head = fh.read(33)
    if head.startswith(_NPY_SIGNATURE):
        try:
            dtype = np.load(path, mmap_mode="r", allow_pickle=False).dtype
        except (ValueError, OSError, EOFError) as exc:
            raise ImageError(f"{path}: the .npy header could not be read ({exc})") from None
        return 32 if dtype.kind == "f" else min(32, max(8, 8 * dtype.itemsize))
    if head.startswith(_PNG_SIGNATURE) and head[12:16] == b"IHDR" and len(head) >= 26:
        return 16 if head[24] == 16 else 8
    if head[:2] in _PPM_MAGIC and _deep_ppm(path) is not None:
        return 16
    try:
        im = _open_with_pillow(path)
    except UnidentifiedImageError:
        if head.startswith(_TIFF_SIGNATURES):
            return _tiff_bit_depth(path)
        raise ImageError(f"{path}: not a recognised image file") from None
    except _DECODE_ERRORS as exc:
        raise ImageError(f"{path}: the image header could not be read ({exc})") from None
    with im:
        if im.mode == "F":
            return 32
        if im.mode.startswith("I;16"):
            return 16
        if im.format == "TIFF":
            formats = np.atleast_1d(im.tag_v2.get(339, 1))  # SampleFormat: 3 = IEEE float
            bits = int(np.max(im.tag_v2.get(258, 8)))  # BitsPerSample
            return 32 if 3 in formats else 16 if bits > 8 else 8
        return 16 if im.mode == "I" else 8


def _tiff_bit_depth(path: pathlib.Path) -> int:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            floating = page.sampleformat == 3
            bits = page.bitspersample
    except Exception as exc:  # tifffile raises many unrelated types
        raise ImageError(f"{path}: the TIFF header could not be read ({exc})") from None
    return 32 if floating else 16 if bits > 8 else 8


#: Suffixes :func:`load_array` reads.
ARRAY_SUFFIXES = (".npy", ".npz", ".mat", ".txt", ".csv")
# Keys of a file written by scipy.sparse.save_npz.
_SPARSE_NPZ_KEYS = {"format", "shape", "data"}


def load_array(
    path: str | os.PathLike[str],
    *,
    key: str | None = None,
    names: tuple[str, ...] = (),
    choose: str = "key=NAME",
):
    """Read a numeric array (a sensing matrix, a measurement vector) from a user's file.

    Parameters
    ----------
    path : str or os.PathLike
        ``.npy`` (``numpy.save``), ``.npz`` (``numpy.savez`` of arrays, or one sparse matrix
        written by ``scipy.sparse.save_npz``), ``.mat`` (MATLAB v4 to v7, read with
        :func:`scipy.io.loadmat`; v7.3 is HDF5 and refused), ``.txt`` or ``.csv``
        (:func:`numpy.loadtxt`; whitespace- or comma-separated).
    key : str, optional
        The array to take from a container (``.npz``, ``.mat``) holding several.
    names : tuple of str
        Conventional names tried in order when ``key`` is None (e.g. ``("A", "matrix")`` or
        ``("y", "measurements")``): an array so named is taken, and checked, first; else the
        container's only numeric array.
    choose : str
        How the error for a container of several arrays, none of ``names``, tells to choose
        one (a command line names its own option).

    Returns
    -------
    array : numpy.ndarray or scipy.sparse matrix
        As stored (dtype bool, integer or float); sparse matrices stay sparse.

    Raises
    ------
    ValueError
        Naming the file and what is wrong: missing, a directory, empty, unsupported suffix,
        corrupt, MATLAB v7.3, no numeric array, an ambiguous or unknown ``key``, a complex,
        object or text dtype, or non-finite entries (NaN or infinity).

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> np.savez(folder / "data.npz", A=np.eye(3), y=np.ones(3))
    >>> load_array(folder / "data.npz", names=("y", "measurements")).tolist()
    [1.0, 1.0, 1.0]
    """
    path = pathlib.Path(os.fspath(path))
    _check_is_readable_file(path, "a data file", ValueError)
    suffix = path.suffix.lower()
    if suffix not in ARRAY_SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {suffix or '(no suffix)'!r}; use "
                         f"{', '.join(ARRAY_SUFFIXES)}")
    if suffix in (".npy", ".npz"):  # the file's first bytes say which (a renamed file)
        with path.open("rb") as fh:
            head = fh.read(len(_NPY_SIGNATURE))
        if not head.startswith((_NPY_SIGNATURE, _ZIP_SIGNATURE)):
            raise ValueError(f"{path}: not a NumPy {suffix} file (it starts with neither "
                             "numpy's .npy header nor a zip archive's); save arrays with "
                             "numpy.save / numpy.savez")
        array, name = (_load_npy_array(path), None) if head.startswith(_NPY_SIGNATURE) else \
            _load_npz_array(path, key, names, choose)
    elif suffix == ".mat":
        array, name = _load_mat_array(path, key, names, choose)
    else:
        array, name = _load_text_array(path), None
    return _check_numeric(path, array, name)


def _holds_objects(exc: Exception) -> bool:
    """Whether numpy refused an array of Python objects (its wording differs by version)."""
    return any(text in str(exc) for text in ("pickled", "Python objects", "Object arrays"))


def _load_npy_array(path: pathlib.Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError, OSError, EOFError, UnpicklingError...
        if _holds_objects(exc):
            raise ValueError(f"{path}: holds Python objects (dtype object); save a numeric "
                             "array instead") from None
        raise ValueError(f"{path}: not a readable .npy file, it looks truncated or corrupt "
                         f"({type(exc).__name__}: {exc})") from None


def _load_npz_array(path: pathlib.Path, key: str | None, names: tuple[str, ...],
                    choose: str):
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as data:
            files = list(data.files)
            if _SPARSE_NPZ_KEYS <= set(files) and key is None:
                import scipy.sparse

                return scipy.sparse.load_npz(path), None
            arrays = {}
            for name in files:  # one of Python objects (a dict saved beside y) is no array
                try:  # to read, and stays in the list: another is read, or it is named
                    arrays[name] = data[name]
                except ValueError as exc:
                    if not _holds_objects(exc):
                        raise
                    arrays[name] = np.empty(0, dtype=object)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError, zlib.error) as exc:
        raise ValueError(f"{path}: not a readable .npz file, it looks truncated or corrupt "
                         f"({type(exc).__name__}: {exc})") from None
    return _pick(path, arrays, key, names, choose)


def _load_mat_array(path: pathlib.Path, key: str | None, names: tuple[str, ...],
                    choose: str):
    import scipy.io

    with path.open("rb") as fh:
        head = fh.read(128)
    if head.startswith(b"MATLAB 7.3") or head.startswith(b"\x89HDF"):
        raise ValueError(
            f"{path}: a MATLAB v7.3 (HDF5) file, which scipy cannot read; save it as v7 "
            "(in MATLAB: save(file, 'A', '-v7')) or as .npy"
        )
    try:
        contents = scipy.io.loadmat(path)
    except NotImplementedError:  # scipy's own v7.3 detection
        raise ValueError(
            f"{path}: a MATLAB v7.3 (HDF5) file, which scipy cannot read; save it as v7 "
            "(in MATLAB: save(file, 'A', '-v7')) or as .npy"
        ) from None
    except Exception as exc:  # scipy.io raises ValueError, OSError, TypeError, ...
        raise ValueError(f"{path}: not a readable MATLAB .mat file, it looks truncated or "
                         f"corrupt ({type(exc).__name__}: {exc})") from None
    arrays = {name: value for name, value in contents.items() if not name.startswith("__")}
    return _pick(path, arrays, key, names, choose)


def _load_text_array(path: pathlib.Path) -> np.ndarray:
    """Numbers separated by commas (a comma on the first line with data says so, whatever the
    suffix) or by white space."""
    try:
        with open(path, encoding="utf-8-sig") as handle:  # (a spreadsheet's byte-order mark)
            first = next((line for line in handle if line.strip()
                          and not line.lstrip().startswith("#")), "")
        return np.loadtxt(path, delimiter="," if "," in first else None, ndmin=1,
                          encoding="utf-8-sig")
    except Exception as exc:  # ValueError for text that is not numbers, UnicodeDecodeError...
        raise ValueError(f"{path}: not a table of numbers ({type(exc).__name__}: "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''})"
                         ) from None


def _is_numeric(value: object) -> bool:
    import scipy.sparse

    if scipy.sparse.issparse(value):
        return True
    return isinstance(value, np.ndarray) and value.dtype.kind in "biuf" and value.ndim >= 1


def _pick(path: pathlib.Path, arrays: dict, key: str | None, names: tuple[str, ...],
          choose: str):
    """The array named ``key``; else the first of ``names`` there; else the only numeric one
    (or the only one)."""
    if key is not None:
        if key not in arrays:
            raise ValueError(f"{path}: no array named {key!r}; it holds "
                             f"{', '.join(map(repr, arrays)) or 'nothing'}")
        return arrays[key], key
    for name in names:  # named by convention: this one, numeric or not (its check says)
        if name in arrays:
            return arrays[name], name
    numeric = [name for name, value in arrays.items() if _is_numeric(value)]
    if len(numeric) == 1 or len(arrays) == 1:
        name = numeric[0] if numeric else next(iter(arrays))
        return arrays[name], name
    if not numeric:
        raise ValueError(f"{path}: holds no numeric array (found "
                         f"{', '.join(map(repr, arrays)) or 'nothing'})")
    raise ValueError(f"{path}: holds several arrays ({', '.join(map(repr, numeric))}) and none "
                     f"is named {' or '.join(map(repr, names)) or 'by convention'}; choose one "
                     f"with {choose}")


def _check_numeric(path: pathlib.Path, array, name: str | None):
    import scipy.sparse

    where = f"{path}" if name is None else f"{path}[{name!r}]"
    if scipy.sparse.issparse(array):
        values = array.data
    else:
        values = array = np.asarray(array)
    if values.dtype.kind not in "biuf":
        kind = {"c": "complex", "O": "Python objects", "U": "text", "S": "bytes"}.get(
            values.dtype.kind, str(values.dtype))
        raise ValueError(f"{where}: holds {kind} (dtype {values.dtype}); real numbers are "
                         "needed")
    if array.ndim == 0 or 0 in array.shape:
        raise ValueError(f"{where}: empty or scalar (shape {array.shape}); an array is needed")
    finite = np.isfinite(values)
    if not finite.all():
        raise ValueError(f"{where}: holds {int(values.size - finite.sum())} non-finite values "
                         "(NaN or infinity)")
    return array


# --------------------------------------------------------------------------- saving


def save_image(
    path: str | os.PathLike[str],
    image: np.ndarray,
    *,
    bits: int = 8,
    overwrite: bool = False,
    icc_profile: bytes | None = None,
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
        Bits per sample for PNG and TIFF. JPEG supports 8 only, and 16-bit colour needs
        ``.tif``/``.tiff`` (Pillow cannot write 16-bit colour PNG). ``.npy`` ignores it and
        stores float32.
    overwrite : bool, optional
        Replace an existing file. By default an existing file is left untouched.
    icc_profile : bytes, optional
        A colour profile to embed (PNG, TIFF, JPEG), e.g. the input's, from
        :func:`image_icc_profile`, so that viewers show the pixels in the input's colour
        space. Left out where its colour space (RGB or grey) is not the image's.

    Returns
    -------
    path : pathlib.Path
        The path written.

    Raises
    ------
    TypeError
        If `image` is not a float numpy array.
    ValueError
        If the suffix is not supported, `bits` is not 8 or 16, 16 bits are asked for a JPEG
        or a colour PNG, the shape is not one listed above, or the image holds NaN or
        infinity. Nothing is written then.
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
    samples exactly. 16-bit colour TIFFs are written with ``tifffile``, everything else with
    Pillow. The file is first written to a hidden temporary file in the destination folder
    and then moved into place with :func:`os.replace`; if anything fails, the temporary file
    is removed and no partial file is left behind.

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
    if file_format == "PNG" and bits == 16 and pixels.ndim == 3:
        raise ValueError(
            f"Pillow cannot write 16-bit colour PNG ({str(path)!r}); use .tif for 16-bit "
            "colour, or bits=8"
        )
    _check_destination(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    if icc_profile is not None and _profile_space(icc_profile) != ("RGB" if pixels.ndim == 3
                                                                  else "GRAY"):
        icc_profile = None
    _write_atomically(path, lambda target: _encode(target, pixels, file_format, bits,
                                                   icc_profile))
    return path


def image_icc_profile(path: str | os.PathLike[str]) -> bytes | None:
    """The colour profile an image file embeds (ICC), for :func:`save_image` to write an
    output in its input's colour space. Reads only the header. None when the file has none,
    its colour space is neither RGB nor grey, or Pillow cannot open it."""
    path = pathlib.Path(os.fspath(path))
    try:
        with _open_with_pillow(path) as im:
            profile = im.info.get("icc_profile")
    except (UnidentifiedImageError, *_DECODE_ERRORS):  # not an image Pillow opens: a float
        profile = _tiff_icc_profile(path)  # colour TIFF has its profile in a tag all the same
    return bytes(profile) if profile and _profile_space(profile) else None


def _tiff_icc_profile(path: pathlib.Path) -> bytes | None:
    """The InterColorProfile tag (34675) of a TIFF's first page, read with tifffile."""
    try:
        with path.open("rb") as fh:
            if not fh.read(4).startswith(_TIFF_SIGNATURES):
                return None
    except OSError:  # missing or unreadable: no profile
        return None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            tag = tif.pages[0].tags.get(34675)
            return None if tag is None else bytes(tag.value)
    except Exception:  # a damaged TIFF: no profile, as where Pillow fails
        return None


def _profile_space(profile: bytes) -> str | None:
    """An ICC profile's data colour space (bytes 16-19 of its header), "RGB" or "GRAY"."""
    space = bytes(profile[16:20]).decode("ascii", "replace").strip()
    return space if space in ("RGB", "GRAY") else None


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
    """Refuse a directory, an existing file unless `overwrite` is true, and a path under a
    file (``out.png/x.png``)."""
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; give a file name inside it instead")
    above = next((p for p in path.parents if p.exists() or p.is_symlink()), None)
    if above is not None and not above.is_dir():
        raise NotADirectoryError(f"{path}: {above} is a file, not a folder; choose another "
                                 "path")
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
        candidate = path.with_name(f".{path.stem[:32]}.{secrets.token_hex(4)}.tmp{path.suffix}")
        try:
            os.close(os.open(candidate, flags, 0o666))
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"could not create a temporary file next to {path}")


def _encode(target: pathlib.Path, pixels: np.ndarray, file_format: str, bits: int,
            icc_profile: bytes | None = None) -> None:
    """Write `pixels` (float64 in [0, 1]) to `target` in the given format."""
    if file_format == "NPY":
        with target.open("wb") as fh:
            np.save(fh, pixels.astype(np.float32), allow_pickle=False)
        return
    quantised = np.rint(pixels * float(2**bits - 1)).astype(np.uint8 if bits == 8 else np.uint16)
    if bits == 16 and quantised.ndim == 3:  # a TIFF (save_image refuses other formats)
        import tifffile  # imported here: only 16-bit colour needs it (Pillow has no such mode)

        tifffile.imwrite(target, quantised, photometric="rgb", iccprofile=icc_profile)
    else:
        options = {"quality": _JPEG_QUALITY} if file_format == "JPEG" else {}
        if icc_profile is not None:
            options["icc_profile"] = icc_profile
        Image.fromarray(quantised).save(target, format=file_format, **options)


def jsonable(value: object, *, digits: int | None = None) -> object:
    """``value`` with plain JSON types only: the one converter behind every report.

    numpy scalars and arrays, torch tensors, tuples and paths become numbers, lists and
    strings; non-finite floats become None (JSON has no NaN); floats are rounded to ``digits``
    significant digits when given.

    Examples
    --------
    >>> jsonable({"a": np.float32(0.5), "b": (1, float("nan")), "c": np.arange(2)})
    {'a': 0.5, 'b': [1, None], 'c': [0, 1]}
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v, digits=digits) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        value = value.tolist()
    elif callable(getattr(value, "detach", None)) and callable(getattr(value, "tolist", None)):
        value = value.detach().cpu().tolist()  # a torch tensor
    if isinstance(value, list | tuple):
        return [jsonable(v, digits=digits) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return float(f"{value:.{digits}g}") if digits else value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value
