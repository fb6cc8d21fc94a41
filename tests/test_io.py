"""Tests for deepprior.io: image files in and out, bad input, atomic and safe writes."""

from __future__ import annotations

import os
import re
import stat
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps

from deepprior.io import (
    ImageError,
    image_bit_depth,
    image_icc_profile,
    load_array,
    load_image,
    save_image,
    write_atomic,
)

HEIGHT, WIDTH = 17, 23  # odd, unequal: catches transposed axes


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def quantised(image: np.ndarray, bits: int) -> np.ndarray:
    """What an ideal writer of `bits` bits per sample stores, back on the [0, 1] scale."""
    top = 2**bits - 1
    return np.rint(image * top) / top


# --- PNG files written byte by byte, independent of deepprior.io and Pillow ------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_png(path: Path, width: int, height: int, depth: int, colour_type: int, rows=b"") -> None:
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows))
        + _chunk(b"IEND", b"")
    )


def write_png16(path: Path, samples: np.ndarray, colour_type: int) -> None:
    """A 16-bit PNG (filter type 0 on every row) of uint16 `samples`, channels last."""
    height, width = samples.shape[:2]
    rows = samples.astype(">u2").reshape(height, -1)
    write_png(path, width, height, 16, colour_type, b"".join(b"\0" + r.tobytes() for r in rows))


def header_only_png(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims a size; its pixel data is missing."""
    write_png(path, width, height, 8, 0)


# --- round trips ----------------------------------------------------------------------


ROUND_TRIPS = [
    (suffix, bits, shape)
    for suffix in (".png", ".tif", ".tiff")
    for bits in (8, 16)
    for shape in ((HEIGHT, WIDTH), (HEIGHT, WIDTH, 3))
    if not (suffix == ".png" and bits == 16 and len(shape) == 3)  # refused, tested below
]


@pytest.mark.parametrize("suffix, bits, shape", ROUND_TRIPS)
def test_round_trip_png_tiff(tmp_path, rng, suffix, bits, shape):
    image = rng.random(shape)
    written = save_image(tmp_path / f"image{suffix}", image, bits=bits)
    assert written == tmp_path / f"image{suffix}"
    loaded = load_image(written)
    assert loaded.dtype == np.float32
    assert loaded.shape == shape
    # within float32 precision of the rounded value: 16-bit precision is kept
    np.testing.assert_allclose(loaded, quantised(image, bits), rtol=0, atol=1e-7)
    # saving what was loaded, at the file's depth, reproduces the file's samples exactly
    again = save_image(tmp_path / f"again{suffix}", loaded, bits=bits)
    np.testing.assert_array_equal(load_image(again), loaded)


def test_16_bit_rgb_tiff_keeps_all_samples(tmp_path, rng):
    samples = rng.integers(0, 65536, (HEIGHT, WIDTH, 3), dtype=np.uint16)
    path = save_image(tmp_path / "deep.tif", samples / 65535, bits=16)
    np.testing.assert_array_equal(tifffile.imread(path), samples)  # a plain 16-bit RGB TIFF
    loaded = load_image(path)
    np.testing.assert_array_equal(np.rint(loaded.astype(np.float64) * 65535), samples)


@pytest.mark.parametrize("overwrite", [False, True])
def test_16_bit_colour_png_write_is_refused_before_writing(tmp_path, rng, overwrite):
    target = tmp_path / "deep.png"
    if overwrite:
        target.write_bytes(b"old")
    with pytest.raises(ValueError, match=r"Pillow cannot write 16-bit colour PNG.*\.tif.*bits=8"):
        save_image(target, rng.random((HEIGHT, WIDTH, 3)), bits=16, overwrite=overwrite)
    assert [p.name for p in tmp_path.iterdir()] == (["deep.png"] if overwrite else [])
    if overwrite:
        assert target.read_bytes() == b"old"


def test_16_bit_grey_png_from_another_writer(tmp_path, rng):
    samples = rng.integers(0, 65536, (HEIGHT, WIDTH), dtype=np.uint16)
    write_png16(tmp_path / "other.png", samples, colour_type=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_image(tmp_path / "other.png")
    np.testing.assert_array_equal(np.rint(loaded.astype(np.float64) * 65535), samples)


@pytest.mark.parametrize(
    "colour_type, channels, kind", [(2, 3, "RGB"), (4, 2, "grey\\+alpha"), (6, 4, "RGBA")]
)
def test_16_bit_colour_png_is_read_at_8_bit_precision_with_warning(
    tmp_path, rng, colour_type, channels, kind
):
    samples = rng.integers(0, 65536, (HEIGHT, WIDTH, channels), dtype=np.uint16)
    write_png16(tmp_path / "deep.png", samples, colour_type)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_image(tmp_path / "deep.png")
    messages = [str(w.message) for w in caught]
    assert any(
        re.search(rf"deep\.png: 16-bit {kind} PNG: read with 8-bit precision.*16-bit TIFF", m)
        for m in messages
    ), messages
    assert any("alpha channel was dropped" in m for m in messages) == (channels in (2, 4))
    expected = samples[:, :, 0] if channels == 2 else samples[:, :, :3]
    assert loaded.shape == expected.shape
    # Pillow keeps the high byte of each sample
    np.testing.assert_array_equal(loaded, ((expected >> 8) / 255).astype(np.float32))


@pytest.mark.parametrize("dtype", ["<u2", ">u2"])
def test_16_bit_grey_written_by_pillow(tmp_path, rng, dtype):
    samples = rng.integers(0, 65536, (HEIGHT, WIDTH)).astype(dtype)
    for suffix in (".png", ".tif"):
        Image.fromarray(samples).save(tmp_path / f"grey16{suffix}")
        loaded = load_image(tmp_path / f"grey16{suffix}")
        np.testing.assert_array_equal(loaded, (samples / 65535).astype(np.float32))


@pytest.mark.parametrize("planar", [False, True])
def test_16_bit_rgb_tiff_written_by_tifffile(tmp_path, rng, planar):
    samples = rng.integers(0, 65536, (HEIGHT, WIDTH, 3), dtype=np.uint16)
    if planar:  # stored as (3, H, W)
        tifffile.imwrite(
            tmp_path / "rgb16.tif",
            np.moveaxis(samples, -1, 0),
            photometric="rgb",
            planarconfig="separate",
        )
    else:
        tifffile.imwrite(tmp_path / "rgb16.tif", samples, photometric="rgb")
    loaded = load_image(tmp_path / "rgb16.tif")
    np.testing.assert_array_equal(np.rint(loaded.astype(np.float64) * 65535), samples)


@pytest.mark.parametrize("channels", [2, 4])
def test_16_bit_tiff_with_alpha_keeps_precision_and_warns(tmp_path, rng, channels):
    samples = rng.integers(0, 65536, (HEIGHT, WIDTH, channels), dtype=np.uint16)
    photometric = "rgb" if channels == 4 else "minisblack"
    tifffile.imwrite(tmp_path / "a.tif", samples, photometric=photometric, extrasamples=[2])
    with pytest.warns(UserWarning, match="alpha channel was dropped"):
        loaded = load_image(tmp_path / "a.tif")
    expected = samples[:, :, 0] if channels == 2 else samples[:, :, :3]
    np.testing.assert_array_equal(np.rint(loaded.astype(np.float64) * 65535), expected)


@pytest.mark.parametrize(("dtype", "shape"), [(np.int8, (HEIGHT, WIDTH)),
                                             (np.int16, (HEIGHT, WIDTH)),
                                             (np.int16, (HEIGHT, WIDTH, 3))])
def test_signed_tiffs_scale_by_their_signed_range_and_refuse_negative_samples(
        tmp_path, rng, dtype, shape):
    full = np.iinfo(dtype).max  # Pillow read int8 as unsigned and int16 divided by 65535
    samples = rng.integers(0, full + 1, shape).astype(dtype)
    samples.flat[0] = full
    tifffile.imwrite(tmp_path / "signed.tif", samples,
                     photometric="rgb" if len(shape) == 3 else "minisblack")
    loaded = load_image(tmp_path / "signed.tif")
    np.testing.assert_array_equal(loaded, (samples / full).astype(np.float32))
    assert loaded.max() == 1.0
    samples.flat[1] = -5
    tifffile.imwrite(tmp_path / "negative.tif", samples,
                     photometric="rgb" if len(shape) == 3 else "minisblack")
    with pytest.raises(ImageError, match=rf"signed {8 * samples.itemsize}-bit samples "
                       rf"\({np.dtype(dtype).name}\) lie in \[-5, {full}\]"):
        load_image(tmp_path / "negative.tif")


def test_a_32_bit_integer_tiff_is_named_by_its_own_type(tmp_path):
    tifffile.imwrite(tmp_path / "wide.tif", np.array([[0, 4_000_000_000]], np.uint32))
    with pytest.raises(ImageError, match=r"uint32 samples lie in \[0, 4000000000\]"):
        load_image(tmp_path / "wide.tif")  # Pillow wrapped them: "int32 ... [-2144683801"
    tifffile.imwrite(tmp_path / "narrow.tif", np.array([[0, 65535]], np.uint32))
    np.testing.assert_array_equal(load_image(tmp_path / "narrow.tif"), [[0.0, 1.0]])


def test_float_rgb_tiff_pillow_cannot_open(tmp_path, rng):
    image = rng.random((HEIGHT, WIDTH, 3)).astype(np.float32)
    tifffile.imwrite(tmp_path / "float.tif", image, photometric="rgb")
    np.testing.assert_array_equal(load_image(tmp_path / "float.tif"), image)
    tifffile.imwrite(tmp_path / "bright.tif", image * 2, photometric="rgb")
    with pytest.raises(ImageError, match=r"bright\.tif.*outside \[0, 1\]"):
        load_image(tmp_path / "bright.tif")


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_tag_of_16_bit_rgb_tiff_is_applied(tmp_path, rng, orientation):
    samples = rng.integers(0, 65536, (HEIGHT, WIDTH, 3), dtype=np.uint16)
    tag = (274, "H", 1, orientation, True)
    tifffile.imwrite(tmp_path / "turned.tif", samples, photometric="rgb", extratags=[tag])
    # the same orientation on an 8-bit PNG goes through Pillow's path (tested below)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray((samples >> 8).astype(np.uint8)).save(tmp_path / "turned.png", exif=exif)
    deep = np.rint(load_image(tmp_path / "turned.tif").astype(np.float64) * 65535)
    shallow = np.rint(load_image(tmp_path / "turned.png").astype(np.float64) * 255)
    np.testing.assert_array_equal(deep.astype(np.uint16) >> 8, shallow)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
def test_grey_tiff_turned_by_its_orientation_tag(tmp_path, rng, dtype, compression, orientation):
    """Pillow 13 turns a TIFF upright as it loads it, and garbles an uncompressed one-band
    file turned by 90°; such files are read with tifffile."""
    samples = rng.integers(0, np.iinfo(dtype).max + 1, (HEIGHT, WIDTH), dtype=dtype)
    tifffile.imwrite(tmp_path / "turned.tif", samples, compression=compression,
                     extratags=[(274, "H", 1, orientation, True)])
    upright = {5: samples.T, 6: np.rot90(samples, -1), 7: samples[::-1, ::-1].T,
               8: np.rot90(samples, 1)}[orientation]
    loaded = load_image(tmp_path / "turned.tif").astype(np.float64) * np.iinfo(dtype).max
    np.testing.assert_array_equal(np.rint(loaded), upright)


@pytest.mark.parametrize("compression", [None, "group4"])
def test_a_bilevel_tiff_turned_by_90_degrees(tmp_path, rng, compression):
    """A fax: CCITT group 4 (which Pillow decodes, tifffile not without imagecodecs) or
    uncompressed with 0 as white (read by tifffile), turned upright either way."""
    bits = rng.random((HEIGHT, WIDTH)) < 0.5
    if compression:
        Image.fromarray(bits).save(tmp_path / "fax.tif", compression=compression,
                                   tiffinfo={274: 6})
    else:
        tifffile.imwrite(tmp_path / "fax.tif", ~bits, photometric="miniswhite",
                         extratags=[(274, "H", 1, 6, True)])
    np.testing.assert_array_equal(load_image(tmp_path / "fax.tif"), np.rot90(bits, -1))


def test_16_bit_tiffs_in_cmyk_and_with_0_as_white(tmp_path, rng):
    """The photometric tag of the TIFFs tifffile reads: CMYK ink to RGB light, grey 0 =
    white inverted (Pillow does both for 8 bits)."""
    ink = np.zeros((HEIGHT, WIDTH, 4), np.uint16)
    ink[:, :WIDTH // 2, 0] = 65535  # cyan on the left, black ink on the bottom rows
    ink[HEIGHT // 2:, :, 3] = 65535
    tifffile.imwrite(tmp_path / "cmyk.tif", ink, photometric="separated")
    rgb = load_image(tmp_path / "cmyk.tif")
    np.testing.assert_array_equal(rgb[0, 0], [0, 1, 1])
    np.testing.assert_array_equal(rgb[0, -1], [1, 1, 1])
    assert not rgb[HEIGHT // 2:].any()
    grey = rng.integers(0, 65536, (HEIGHT, WIDTH), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "white0.tif", grey, photometric="miniswhite")
    loaded = load_image(tmp_path / "white0.tif").astype(np.float64) * 65535
    np.testing.assert_array_equal(np.rint(loaded), 65535 - grey)
    tifffile.imwrite(tmp_path / "ink5.tif", np.zeros((HEIGHT, WIDTH, 5), np.uint16),
                     photometric="separated", extrasamples=[0])
    with pytest.raises(ImageError, match="CMYK with 5 channel"):
        load_image(tmp_path / "ink5.tif")


def test_multi_page_16_bit_rgb_tiff_reads_first_page_with_warning(tmp_path, rng):
    pages = rng.integers(0, 65536, (2, HEIGHT, WIDTH, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "pages.tif", pages, photometric="rgb")
    with pytest.warns(UserWarning, match="holds 2 frames; only the first one is read"):
        loaded = load_image(tmp_path / "pages.tif")
    np.testing.assert_array_equal(np.rint(loaded.astype(np.float64) * 65535), pages[0])


def test_float_grey_tiff_mode_f(tmp_path, rng):
    image = rng.random((HEIGHT, WIDTH)).astype(np.float32)
    Image.fromarray(image).save(tmp_path / "f.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "f.tif"), image)


def test_32_bit_integer_image_mode_i(tmp_path, rng):
    samples = rng.integers(0, 65536, (HEIGHT, WIDTH)).astype(np.int32)
    Image.fromarray(samples).save(tmp_path / "i.tif")
    with Image.open(tmp_path / "i.tif") as im:
        assert im.mode == "I"
    np.testing.assert_array_equal(load_image(tmp_path / "i.tif"), (samples / 65535).astype("f4"))
    Image.fromarray(samples + 70000).save(tmp_path / "big.tif")
    with pytest.raises(ImageError, match=r"big\.tif.*rescale the image to 16 bits"):
        load_image(tmp_path / "big.tif")


def test_palette_png_colour_becomes_rgb(tmp_path, rng):
    image = rng.random((HEIGHT, WIDTH, 3))
    Image.fromarray((image * 255).astype(np.uint8)).quantize(16).save(tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as im:
        assert im.mode == "P"
        expected = np.asarray(im.convert("RGB")) / 255
    loaded = load_image(tmp_path / "p.png")
    assert loaded.shape == (HEIGHT, WIDTH, 3)
    np.testing.assert_allclose(loaded, expected, atol=1e-7)


def test_palette_png_grey_becomes_grayscale(tmp_path, rng):
    samples = rng.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8)
    palette_image = Image.fromarray(samples).convert("P")  # the default grey palette
    palette_image.putpalette([v for g in range(256) for v in (g, g, g)])
    palette_image.save(tmp_path / "greyp.png")
    with Image.open(tmp_path / "greyp.png") as im:
        assert im.mode == "P"
        expected = np.asarray(im.convert("L")) / 255
    loaded = load_image(tmp_path / "greyp.png")
    assert loaded.shape == (HEIGHT, WIDTH)
    np.testing.assert_allclose(loaded, expected, atol=1e-7)


@pytest.mark.parametrize("grey", [False, True])
def test_palette_png_with_transparency_warns(tmp_path, rng, grey):
    samples = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    if grey:
        samples[:] = samples[:, :, :1]
    Image.fromarray(samples).quantize(8).save(tmp_path / "pt.png", transparency=0)
    with Image.open(tmp_path / "pt.png") as im:
        assert im.mode == "P" and "transparency" in im.info
        expected = np.asarray(im.convert("RGB")) / 255
    with pytest.warns(UserWarning, match="alpha channel was dropped"):
        loaded = load_image(tmp_path / "pt.png")
    if grey:
        expected = expected[:, :, 0]
    assert loaded.shape == expected.shape
    np.testing.assert_allclose(loaded, expected, atol=1e-7)


def test_rgba_drops_alpha_with_warning(tmp_path, rng):
    samples = rng.integers(0, 256, (HEIGHT, WIDTH, 4), dtype=np.uint8)
    Image.fromarray(samples).save(tmp_path / "rgba.png")
    with pytest.warns(UserWarning, match=r"rgba\.png: RGBA image: the alpha channel was dropped"):
        loaded = load_image(tmp_path / "rgba.png")
    np.testing.assert_allclose(loaded, samples[:, :, :3] / 255, atol=1e-7)


def test_la_drops_alpha_with_warning(tmp_path, rng):
    samples = rng.integers(0, 256, (HEIGHT, WIDTH, 2), dtype=np.uint8)
    Image.fromarray(samples, "LA").save(tmp_path / "la.png")
    with pytest.warns(UserWarning, match="grey\\+alpha image: the alpha channel was dropped"):
        loaded = load_image(tmp_path / "la.png")
    assert loaded.shape == (HEIGHT, WIDTH)
    np.testing.assert_allclose(loaded, samples[:, :, 0] / 255, atol=1e-7)


def test_bilevel_becomes_zero_and_one(tmp_path, rng):
    bits = rng.random((HEIGHT, WIDTH)) > 0.5
    Image.fromarray(bits).save(tmp_path / "bw.png")
    with Image.open(tmp_path / "bw.png") as im:
        assert im.mode == "1"
    np.testing.assert_array_equal(load_image(tmp_path / "bw.png"), bits.astype(np.float32))


@pytest.mark.parametrize("suffix", [".jpg", ".jpeg"])
def test_jpeg_round_trip_is_close(tmp_path, suffix):
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    smooth = np.stack([rows / HEIGHT, cols / WIDTH, (rows + cols) / (HEIGHT + WIDTH)], axis=-1)
    loaded = load_image(save_image(tmp_path / f"photo{suffix}", smooth))
    assert loaded.shape == smooth.shape
    assert np.abs(loaded - smooth).mean() < 0.01
    assert np.abs(loaded - smooth).max() < 0.06


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    Image.new("CMYK", (WIDTH, HEIGHT), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    loaded = load_image(tmp_path / "cmyk.jpg")
    assert loaded.shape == (HEIGHT, WIDTH, 3)
    np.testing.assert_allclose(loaded.mean(axis=(0, 1)), [1, 0, 0], atol=0.03)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_tag_is_applied_like_pillow(tmp_path, rng, orientation):
    samples = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(samples).save(tmp_path / "turned.png", exif=exif)
    with Image.open(tmp_path / "turned.png") as im:
        expected = np.asarray(ImageOps.exif_transpose(im)) / 255
    loaded = load_image(tmp_path / "turned.png")
    assert loaded.shape == expected.shape
    np.testing.assert_allclose(loaded, expected, atol=1e-7)


def test_multi_frame_tiff_reads_first_frame_with_warning(tmp_path, rng):
    frames = [rng.integers(0, 256, (HEIGHT, WIDTH), dtype=np.uint8) for _ in range(3)]
    first, *rest = (Image.fromarray(f) for f in frames)
    first.save(tmp_path / "stack.tif", save_all=True, append_images=rest)
    with pytest.warns(UserWarning, match="holds 3 frames; only the first one is read"):
        loaded = load_image(tmp_path / "stack.tif")
    np.testing.assert_allclose(loaded, frames[0] / 255, atol=1e-7)


@pytest.mark.parametrize("shape", [(HEIGHT, WIDTH), (HEIGHT, WIDTH, 3)])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_npy_round_trip(tmp_path, rng, shape, dtype):
    image = rng.random(shape).astype(dtype)
    np.save(tmp_path / "a.npy", image)
    loaded = load_image(tmp_path / "a.npy")
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, image.astype(np.float32))
    path = save_image(tmp_path / "b.npy", loaded, bits=16)  # bits is ignored for .npy
    stored = np.load(path)
    assert stored.dtype == np.float32
    np.testing.assert_array_equal(stored, loaded)


def test_npy_single_channel_becomes_2d(tmp_path, rng):
    image = rng.random((HEIGHT, WIDTH, 1))
    np.save(tmp_path / "c.npy", image)
    assert load_image(tmp_path / "c.npy").shape == (HEIGHT, WIDTH)
    assert np.load(save_image(tmp_path / "d.npy", image)).shape == (HEIGHT, WIDTH)


def test_npy_rounding_level_excess_is_clipped(tmp_path, rng):
    image = rng.random((HEIGHT, WIDTH))
    image[0, 0], image[0, 1] = 1 + 5e-7, -5e-7
    np.save(tmp_path / "e.npy", image)
    loaded = load_image(tmp_path / "e.npy")
    assert loaded.min() == 0.0 and loaded.max() == 1.0


def test_loads_str_path(tmp_path, rng):
    image = rng.random((HEIGHT, WIDTH))
    save_image(str(tmp_path / "s.png"), image)
    assert load_image(str(tmp_path / "s.png")).shape == (HEIGHT, WIDTH)


# --- bad input ------------------------------------------------------------------------


def test_image_error_is_a_value_error():
    assert issubclass(ImageError, ValueError)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match=r"nothing\.png: no such file"):
        load_image(tmp_path / "nothing.png")


def test_directory(tmp_path):
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ImageError, match=r"folder\.png: is a directory"):
        load_image(tmp_path / "folder.png")


@pytest.mark.parametrize("name", ["empty.png", "empty.npy", "empty.jpg"])
def test_empty_file(tmp_path, name):
    (tmp_path / name).touch()
    with pytest.raises(ImageError, match=rf"{name}: the file is empty \(0 bytes\)"):
        load_image(tmp_path / name)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_truncated_image(tmp_path, rng, suffix):
    samples = rng.integers(0, 256, (HEIGHT * 5, WIDTH * 5, 3), dtype=np.uint8)
    Image.fromarray(samples).save(tmp_path / f"full{suffix}")
    data = (tmp_path / f"full{suffix}").read_bytes()
    (tmp_path / f"cut{suffix}").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=rf"cut\{suffix}: .*truncated or corrupt"):
        load_image(tmp_path / f"cut{suffix}")


def test_truncated_16_bit_rgb_tiff(tmp_path, rng):
    path = save_image(tmp_path / "deep.tif", rng.random((HEIGHT * 5, WIDTH * 5, 3)), bits=16)
    data = path.read_bytes()
    (tmp_path / "cut.tif").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"cut\.tif: the TIFF file .*truncated, corrupt"):
        load_image(tmp_path / "cut.tif")


@pytest.mark.parametrize("name", ["notes.png", "notes.txt", "notes.jpg"])
def test_not_an_image(tmp_path, name):
    (tmp_path / name).write_text("these are not pixels\n")
    with pytest.raises(ImageError, match=rf"{name}: not a recognised image file"):
        load_image(tmp_path / name)


def test_zero_dimension_png(tmp_path):
    header_only_png(tmp_path / "flat.png", width=0, height=5)
    with pytest.raises(ImageError, match=r"flat\.png: the image has a zero dimension"):
        load_image(tmp_path / "flat.png")


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (0, 5, 3)])
def test_zero_dimension_npy(tmp_path, shape):
    np.save(tmp_path / "flat.npy", np.zeros(shape, np.float32))
    with pytest.raises(ImageError, match=r"flat\.npy: the image has a zero dimension"):
        load_image(tmp_path / "flat.npy")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_npy_non_finite(tmp_path, rng, bad):
    image = rng.random((HEIGHT, WIDTH))
    image[3, 4] = bad
    np.save(tmp_path / "nan.npy", image)
    with pytest.raises(ImageError, match=r"nan\.npy: the image holds 1 non-finite values"):
        load_image(tmp_path / "nan.npy")


@pytest.mark.parametrize("scale, offset", [(255.0, 0.0), (1.0, -0.8)])
def test_npy_outside_unit_range(tmp_path, rng, scale, offset):
    np.save(tmp_path / "big.npy", rng.random((HEIGHT, WIDTH)) * scale + offset)
    with pytest.raises(ImageError, match=r"big\.npy: .*divide by 255 \(8-bit\) or 65535"):
        load_image(tmp_path / "big.npy")


def test_a_noisy_npy_out_of_range_is_told_so(tmp_path, rng):
    from deepprior import add_gaussian_noise

    noisy = add_gaussian_noise(rng.random((HEIGHT, WIDTH)), 0.1)
    np.save(tmp_path / "noisy.npy", noisy)
    with pytest.raises(ImageError, match=r"a noisy image simulated without clipping: "
                                         r"load_image\(path, unclipped=True\) keeps it"):
        load_image(tmp_path / "noisy.npy")  # not "divide by 255"
    np.testing.assert_array_equal(load_image(tmp_path / "noisy.npy", unclipped=True), noisy)
    tifffile.imwrite(tmp_path / "noisy.tif", noisy)  # a float TIFF, the same
    np.testing.assert_array_equal(load_image(tmp_path / "noisy.tif", unclipped=True), noisy)
    noisy[0, 0] = np.nan
    np.save(tmp_path / "nan.npy", noisy)
    with pytest.raises(ImageError, match="non-finite"):
        load_image(tmp_path / "nan.npy", unclipped=True)
    with pytest.raises(TypeError, match="unclipped must be True or False"):
        load_image(tmp_path / "noisy.npy", unclipped="yes")


@pytest.mark.parametrize("dtype", [np.uint8, np.int64, np.bool_, np.complex64])
def test_npy_unsupported_dtype(tmp_path, dtype):
    np.save(tmp_path / "int.npy", np.zeros((HEIGHT, WIDTH), dtype))
    with pytest.raises(ImageError, match=r"int\.npy: unsupported \.npy dtype"):
        load_image(tmp_path / "int.npy")


def test_npy_object_dtype(tmp_path):
    np.save(tmp_path / "obj.npy", np.array([[1, None]], dtype=object), allow_pickle=True)
    with pytest.raises(ImageError, match=r"obj\.npy: unsupported \.npy dtype object"):
        load_image(tmp_path / "obj.npy")


@pytest.mark.parametrize("shape", [(WIDTH,), (HEIGHT, WIDTH, 2), (HEIGHT, WIDTH, 4), (2, 3, 4, 3)])
def test_npy_unsupported_shape(tmp_path, shape):
    np.save(tmp_path / "shape.npy", np.zeros(shape, np.float32))
    with pytest.raises(ImageError, match=r"shape\.npy: unsupported \.npy shape"):
        load_image(tmp_path / "shape.npy")


def test_npy_truncated(tmp_path, rng):
    np.save(tmp_path / "full.npy", rng.random((HEIGHT, WIDTH)))
    data = (tmp_path / "full.npy").read_bytes()
    for size in (len(data) // 2, 40):  # data cut short; header cut short
        (tmp_path / "cut.npy").write_bytes(data[:size])
        with pytest.raises(ImageError, match=r"cut\.npy: .*truncated or corrupt"):
            load_image(tmp_path / "cut.npy")


def test_npy_that_is_not_numpy(tmp_path):
    (tmp_path / "text.npy").write_text("hello")
    with pytest.raises(ImageError, match=r"text\.npy: not a NumPy \.npy file"):
        load_image(tmp_path / "text.npy")


def test_max_pixels(tmp_path, rng):
    path = save_image(tmp_path / "small.png", rng.random((HEIGHT, WIDTH)))
    np.save(tmp_path / "small.npy", rng.random((HEIGHT, WIDTH)))
    pixels = HEIGHT * WIDTH
    for target in (path, tmp_path / "small.npy"):
        assert load_image(target, max_pixels=pixels).shape == (HEIGHT, WIDTH)
        with pytest.raises(ImageError, match=rf"{pixels} pixels .*max_pixels={pixels - 1}"):
            load_image(target, max_pixels=pixels - 1)
        with pytest.raises(
            ImageError, match=rf"pass max_pixels={pixels} \(CLI: --max-pixels {pixels}\) .*crop"
        ):
            load_image(target, max_pixels=pixels - 1)


def test_max_pixels_checked_before_decoding(tmp_path, monkeypatch):
    # 10,000 x 10,000 claimed by the header: above Pillow's warning threshold, below its
    # error threshold; no pixel data exists, so only a header check can give this message.
    header_only_png(tmp_path / "huge.png", width=10_000, height=10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not leak
        with pytest.raises(ImageError, match=r"100,000,000 pixels .*max_pixels=64,000,000"):
            load_image(tmp_path / "huge.png")


def test_max_pixels_of_16_bit_rgb_tiff_checked_before_decoding(tmp_path, rng, monkeypatch):
    samples = rng.integers(0, 65536, (HEIGHT, WIDTH, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "deep.tif", samples, photometric="rgb")
    tifffile.imwrite(tmp_path / "float.tif", samples / 65535, photometric="rgb")

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded before the size check")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", no_decoding)
    for name in ("deep.tif", "float.tif"):
        with pytest.raises(ImageError, match=rf"{name}: the image has {HEIGHT * WIDTH} pixels"):
            load_image(tmp_path / name, max_pixels=HEIGHT * WIDTH - 1)


def test_max_pixels_replaces_pillow_limit(tmp_path):
    # 30,000 x 30,000 is above Pillow's own error threshold; max_pixels alone decides, and
    # its message gives the exact number to pass.
    header_only_png(tmp_path / "bomb.png", width=30_000, height=30_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(
            ImageError,
            match=r"bomb\.png: the image has 900,000,000 pixels .*"
            r"pass max_pixels=900000000 \(CLI: --max-pixels 900000000\)",
        ):
            load_image(tmp_path / "bomb.png")


def test_pillow_limit_is_lifted_by_max_pixels_and_restored(tmp_path, rng, monkeypatch):
    path = save_image(tmp_path / "small.jpg", rng.random((HEIGHT, WIDTH, 3)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # Pillow would refuse 17 x 23
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(path).shape == (HEIGHT, WIDTH, 3)
    assert Image.MAX_IMAGE_PIXELS == 10
    (tmp_path / "text.png").write_text("not an image")
    with pytest.raises(ImageError, match="not a recognised image file"):
        load_image(tmp_path / "text.png")
    assert Image.MAX_IMAGE_PIXELS == 10


def test_max_pixels_also_lifts_pillows_limit_where_it_decodes_a_tiff(tmp_path):
    # a header-only 8-bit TIFF of 15,000 x 12,000: Pillow checks its limit again at load()
    width, height = 15_000, 12_000
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
            (273, 4, 200), (277, 3, 1), (278, 4, height), (279, 4, width * height)]
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHII", tag, kind, 1, value) if kind == 4 else
        struct.pack("<HHIHH", tag, kind, 1, value, 0) for tag, kind, value in tags)
    data = b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)
    (tmp_path / "big.tif").write_bytes(data.ljust(200, b"\x00") + bytes(1000))
    with pytest.raises(ImageError, match="looks truncated or corrupt"):  # not Pillow's
        load_image(tmp_path / "big.tif", max_pixels=200_000_000)  # DecompressionBombError


@pytest.mark.parametrize(
    "value, error, message",
    [
        (0, ValueError, "positive"),
        (-5, ValueError, "positive"),
        ("10", TypeError, "integer"),
        (True, TypeError, "integer"),
        (1.5e6, TypeError, "integer"),
    ],
)
def test_max_pixels_validated(tmp_path, value, error, message):
    with pytest.raises(error, match=f"max_pixels must be .*{message}"):
        load_image(tmp_path / "any.png", max_pixels=value)


# --- saving ---------------------------------------------------------------------------


def test_save_rounds_instead_of_truncating(tmp_path):
    image = np.array([[0.6 / 255, 254.6 / 255, 0.4 / 255, 127.5001 / 255]])
    path = save_image(tmp_path / "r.png", image)
    with Image.open(path) as im:
        np.testing.assert_array_equal(np.asarray(im), [[1, 255, 0, 128]])
    path16 = save_image(tmp_path / "r16.png", np.array([[0.6 / 65535, 65534.6 / 65535]]), bits=16)
    with Image.open(path16) as im:
        np.testing.assert_array_equal(np.asarray(im), [[1, 65535]])


def test_save_single_channel_writes_grayscale(tmp_path, rng):
    path = save_image(tmp_path / "g.png", rng.random((HEIGHT, WIDTH, 1)))
    with Image.open(path) as im:
        assert im.mode == "L"


@pytest.mark.parametrize("name", ["out.bmp", "out.gif", "out", "out.png.bak"])
def test_save_unknown_suffix(tmp_path, rng, name):
    with pytest.raises(ValueError, match=r"use one of \.png, \.tif, \.tiff, \.jpg, \.jpeg, \.npy"):
        save_image(tmp_path / name, rng.random((HEIGHT, WIDTH)))
    assert list(tmp_path.iterdir()) == []


def test_save_suffix_is_case_insensitive(tmp_path, rng):
    path = save_image(tmp_path / "UPPER.PNG", rng.random((HEIGHT, WIDTH)))
    with Image.open(path) as im:
        assert im.format == "PNG"


@pytest.mark.parametrize("bits", [1, 12, 32, 8.0, True])
def test_save_bits_must_be_8_or_16(tmp_path, rng, bits):
    with pytest.raises(ValueError, match="bits must be 8 or 16"):
        save_image(tmp_path / "b.png", rng.random((HEIGHT, WIDTH)), bits=bits)


def test_save_jpeg_refuses_16_bits(tmp_path, rng):
    with pytest.raises(ValueError, match=r"JPEG stores 8 bits .*use \.png or \.tif"):
        save_image(tmp_path / "b.jpg", rng.random((HEIGHT, WIDTH)), bits=16)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_save_non_finite(tmp_path, rng, bad):
    image = rng.random((HEIGHT, WIDTH))
    image[1, 1] = bad
    with pytest.raises(ValueError, match="image holds 1 non-finite values"):
        save_image(tmp_path / "n.png", image)
    assert list(tmp_path.iterdir()) == []


def test_save_clips_out_of_range_with_warning(tmp_path, rng):
    image = rng.random((HEIGHT, WIDTH))
    image[0, 0], image[0, 1] = 1.5, -0.25
    with pytest.warns(UserWarning, match=r"values lie in \[-0\.25, 1\.5\].*clipped"):
        path = save_image(tmp_path / "c.png", image)
    loaded = load_image(path)
    assert loaded[0, 0] == 1.0 and loaded[0, 1] == 0.0


def test_save_rounding_level_excess_is_silent(tmp_path, rng):
    image = rng.random((HEIGHT, WIDTH))
    image[0, 0], image[0, 1] = 1 + 1e-7, -1e-7
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = save_image(tmp_path / "s.npy", image)
    stored = np.load(path)
    assert stored.min() == 0.0 and stored.max() == 1.0


@pytest.mark.parametrize("image", [[[0.5, 0.5]], np.zeros((3, 4), np.uint8), np.ones((3, 4), bool)])
def test_save_rejects_non_float_arrays(tmp_path, image):
    with pytest.raises(TypeError, match="image must be a"):
        save_image(tmp_path / "t.png", image)


@pytest.mark.parametrize("shape", [(WIDTH,), (HEIGHT, WIDTH, 2), (HEIGHT, WIDTH, 4), (1, 3, 4, 5)])
def test_save_rejects_shapes(tmp_path, shape):
    with pytest.raises(ValueError, match=r"image must have shape \(H, W\), \(H, W, 1\)"):
        save_image(tmp_path / "t.png", np.zeros(shape))


def test_save_rejects_zero_dimension(tmp_path):
    with pytest.raises(ValueError, match="image has a zero dimension"):
        save_image(tmp_path / "t.png", np.zeros((0, 4)))


def test_save_creates_parent_folders(tmp_path, rng):
    target = tmp_path / "a" / "b" / "c" / "out.png"
    assert save_image(target, rng.random((HEIGHT, WIDTH))) == target
    assert target.is_file()


def test_save_refuses_to_overwrite(tmp_path, rng):
    target = tmp_path / "out.png"
    save_image(target, rng.random((HEIGHT, WIDTH)))
    before = target.read_bytes()
    with pytest.raises(FileExistsError, match=r"out\.png already exists; pass overwrite=True"):
        save_image(target, rng.random((HEIGHT, WIDTH)))
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_save_overwrite_replaces(tmp_path):
    target = tmp_path / "out.png"
    save_image(target, np.zeros((HEIGHT, WIDTH)))
    save_image(target, np.ones((HEIGHT, WIDTH)), overwrite=True)
    np.testing.assert_array_equal(load_image(target), np.ones((HEIGHT, WIDTH)))
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_save_onto_directory(tmp_path, rng):
    (tmp_path / "out.png").mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        save_image(tmp_path / "out.png", rng.random((HEIGHT, WIDTH)), overwrite=True)


def test_save_under_a_file_and_load_without_a_path_say_what_is_wrong(tmp_path, rng):
    (tmp_path / "out.png").write_bytes(b"x")  # before: FileExistsError from mkdir
    for target in ("out.png/x.png", "out.png/a/b/x.png"):
        with pytest.raises(NotADirectoryError, match=r"out\.png is a file, not a folder"):
            save_image(tmp_path / target, rng.random((HEIGHT, WIDTH)))
    with pytest.raises(TypeError, match="path must be a file name .*got NoneType"):
        load_image(None)


def _failing_pillow_save(self, fp, *args, **kwargs):
    Path(fp).write_bytes(b"\x89PNG half of a file")
    raise OSError("No space left on device")


@pytest.mark.parametrize("overwrite", [False, True])
def test_save_failure_leaves_nothing_behind(tmp_path, rng, monkeypatch, overwrite):
    target = tmp_path / "out.png"
    if overwrite:
        save_image(target, np.zeros((HEIGHT, WIDTH)))
    before = sorted(p.name for p in tmp_path.iterdir())
    old = target.read_bytes() if overwrite else None
    monkeypatch.setattr(Image.Image, "save", _failing_pillow_save)
    with pytest.raises(OSError, match="No space left"):
        save_image(target, rng.random((HEIGHT, WIDTH)), overwrite=overwrite)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary file left
    if overwrite:
        assert target.read_bytes() == old


def test_save_interrupted_leaves_nothing_behind(tmp_path, rng, monkeypatch):
    def interrupted(file, *args, **kwargs):  # the 16-bit RGB TIFF writer, stopped half-way
        Path(file).write_bytes(b"II*\x00 half of a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(tifffile, "imwrite", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_image(tmp_path / "deep.tif", rng.random((HEIGHT, WIDTH, 3)), bits=16)
    assert list(tmp_path.iterdir()) == []


def test_save_npy_failure_leaves_nothing_behind(tmp_path, rng, monkeypatch):
    def half_save(file, arr, **kwargs):
        file.write(b"\x93NUMPY half")
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", half_save)
    with pytest.raises(OSError, match="disk full"):
        save_image(tmp_path / "a.npy", rng.random((HEIGHT, WIDTH)))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_saved_file_gets_usual_permissions(tmp_path, rng):
    umask = os.umask(0o022)
    os.umask(umask)
    path = save_image(tmp_path / "p.png", rng.random((HEIGHT, WIDTH)))
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


# --- write_atomic: the same rules for the other outputs of a run ----------------------


def test_write_atomic_writes_and_creates_folders(tmp_path):
    target = tmp_path / "run" / "report.json"
    assert write_atomic(target, lambda f: f.write(b'{"psnr": 30.1}')) == target
    assert target.read_bytes() == b'{"psnr": 30.1}'


def test_write_atomic_refuses_to_overwrite(tmp_path):
    target = tmp_path / "report.json"
    target.write_bytes(b"old")
    with pytest.raises(FileExistsError, match=r"report\.json already exists; pass overwrite=True"):
        write_atomic(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"old"
    write_atomic(target, lambda f: f.write(b"new"), overwrite=True)
    assert target.read_bytes() == b"new"


def test_write_atomic_failure_leaves_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_bytes(b"old")

    def half_write(handle):
        handle.write(b'{"unfinished": ')
        raise RuntimeError("plotting failed")

    with pytest.raises(RuntimeError, match="plotting failed"):
        write_atomic(target, half_write, overwrite=True)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_write_atomic_onto_directory(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a directory"):
        write_atomic(tmp_path, lambda f: f.write(b""), overwrite=True)


# --- image_bit_depth ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "bits", "expected"),
    [("grey.png", 8, 8), ("grey16.png", 16, 16), ("grey16.tif", 16, 16), ("rgb.jpg", 8, 8),
     ("rgb16.tif", 16, 16), ("float.npy", 8, 32)],
)
def test_image_bit_depth_of_written_files(tmp_path, rng, name, bits, expected):
    image = rng.random((HEIGHT, WIDTH, 3) if "rgb" in name else (HEIGHT, WIDTH))
    path = save_image(tmp_path / name, image, bits=bits)
    assert image_bit_depth(path) == expected


def test_image_bit_depth_of_float_tiffs_and_colour_16_bit_png(tmp_path, rng):
    tifffile.imwrite(tmp_path / "grey.tif", rng.random((HEIGHT, WIDTH), dtype=np.float32))
    tifffile.imwrite(tmp_path / "rgb.tif", rng.random((HEIGHT, WIDTH, 3), dtype=np.float32),
                     photometric="rgb")
    write_png16(tmp_path / "rgb16.png", (rng.random((HEIGHT, WIDTH, 3)) * 65535).astype(">u2"), 2)
    assert image_bit_depth(tmp_path / "grey.tif") == 32
    assert image_bit_depth(tmp_path / "rgb.tif") == 32  # Pillow cannot open it: tifffile reads
    assert image_bit_depth(tmp_path / "rgb16.png") == 16  # the file's depth, read at 8 bits


def test_image_bit_depth_errors(tmp_path):
    with pytest.raises(ImageError, match="is a directory"):
        image_bit_depth(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ImageError, match="not a recognised image"):
        image_bit_depth(tmp_path / "notes.txt")


# --- load_array --------------------------------------------------------------------------


def test_load_array_formats(tmp_path):
    import scipy.io
    import scipy.sparse

    matrix = np.arange(12, dtype=np.float64).reshape(3, 4)
    np.save(tmp_path / "a.npy", matrix)
    np.savetxt(tmp_path / "y.txt", matrix[0])
    np.savetxt(tmp_path / "y.csv", matrix[:, :1], delimiter=",")
    np.savez(tmp_path / "one.npz", anything=matrix)
    scipy.io.savemat(tmp_path / "a.mat", {"Phi": matrix})
    sparse = scipy.sparse.random(5, 7, density=0.4, format="csr", random_state=0)
    scipy.sparse.save_npz(tmp_path / "s.npz", sparse)
    scipy.io.savemat(tmp_path / "s.mat", {"S": sparse})
    np.testing.assert_array_equal(load_array(tmp_path / "a.npy"), matrix)
    np.testing.assert_array_equal(load_array(tmp_path / "y.txt"), matrix[0])
    np.testing.assert_array_equal(load_array(tmp_path / "y.csv").ravel(), matrix[:, 0])
    # the separator is read from the data, not the suffix: commas in a .txt, spaces in a .csv
    np.savetxt(tmp_path / "comma.txt", matrix, delimiter=",", header="A, 3 x 4")
    np.savetxt(tmp_path / "space.csv", matrix)
    np.testing.assert_array_equal(load_array(tmp_path / "comma.txt"), matrix)
    np.testing.assert_array_equal(load_array(tmp_path / "space.csv"), matrix)
    np.testing.assert_array_equal(load_array(tmp_path / "one.npz"), matrix)
    np.testing.assert_array_equal(load_array(tmp_path / "a.mat"), matrix)
    for name in ("s.npz", "s.mat"):
        loaded = load_array(tmp_path / name)
        assert scipy.sparse.issparse(loaded)
        np.testing.assert_array_equal(loaded.toarray(), sparse.toarray())


def test_load_array_picks_by_key_then_conventional_name(tmp_path):
    import scipy.io

    np.savez(tmp_path / "two.npz", A=np.eye(2), y=np.ones(2), operator="text", sigma=0.5)
    scipy.io.savemat(tmp_path / "two.mat", {"b": np.eye(2), "c": np.ones(2)})
    np.testing.assert_array_equal(load_array(tmp_path / "two.npz", names=("y",)), np.ones(2))
    np.testing.assert_array_equal(load_array(tmp_path / "two.npz", names=("A", "matrix")),
                                  np.eye(2))
    np.testing.assert_array_equal(load_array(tmp_path / "two.mat", key="b"), np.eye(2))
    with pytest.raises(ValueError, match=r"several arrays \('b', 'c'\).*key=NAME"):
        load_array(tmp_path / "two.mat", names=("A",))
    with pytest.raises(ValueError, match="no array named 'x'; it holds 'b', 'c'"):
        load_array(tmp_path / "two.mat", key="x")



def test_load_array_reads_past_objects_names_its_pick_and_knows_a_renamed_file(tmp_path):
    import shutil

    np.savez(tmp_path / "meta.npz", y=np.ones(3), info={"sigma": 0.1})  # a dict: objects
    np.testing.assert_array_equal(load_array(tmp_path / "meta.npz"), np.ones(3))
    with pytest.raises(ValueError, match=r"meta.npz\['info'\]: holds Python objects"):
        load_array(tmp_path / "meta.npz", key="info")
    np.save(tmp_path / "objects.npy", np.array([1, None], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="objects.npy: holds Python objects"):
        load_array(tmp_path / "objects.npy")
    np.savez(tmp_path / "complex.npz", A=np.eye(3), y=np.ones(3) + 1j)  # A was taken as y
    with pytest.raises(ValueError, match=r"complex.npz\['y'\]: holds complex"):
        load_array(tmp_path / "complex.npz", names=("y", "measurements"))
    np.save(tmp_path / "y.npy", np.arange(3.0))
    shutil.copy(tmp_path / "y.npy", tmp_path / "renamed.npz")
    np.testing.assert_array_equal(load_array(tmp_path / "renamed.npz"), np.arange(3.0))
    (tmp_path / "table.npy").write_text("1,2,3\n")  # read as a pickle: "Python objects"
    with pytest.raises(ValueError, match="table.npy: not a NumPy .npy file"):
        load_array(tmp_path / "table.npy")
    (tmp_path / "excel.csv").write_text("\ufeff1,2,3\n4,5,6\n", encoding="utf-8")
    np.testing.assert_array_equal(load_array(tmp_path / "excel.csv"), [[1, 2, 3], [4, 5, 6]])


def test_load_array_errors(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    (tmp_path / "bad.mat").write_bytes(b"garbage" * 30)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116)
    (tmp_path / "v73.mat").write_bytes(header + bytes(8) + b"\x00\x02IM" + bytes(400))
    (tmp_path / "words.txt").write_text("one two\n")
    (tmp_path / "empty.npy").write_bytes(b"")
    np.save(tmp_path / "nan.npy", np.array([1.0, np.nan]))
    np.save(tmp_path / "complex.npy", np.array([1j]))
    np.save(tmp_path / "a.png.npy", np.ones(2))
    cases = {
        "bad.npz": "not a readable .npz file",
        "bad.mat": "not a readable MATLAB .mat file",
        "v73.mat": "MATLAB v7.3 \\(HDF5\\).*'-v7'",
        "words.txt": "not a table of numbers",
        "empty.npy": "empty",
        "nan.npy": "1 non-finite values",
        "complex.npy": "holds complex",
        "missing.npy": "no such file",
        ".": "is a directory",
    }
    for name, message in cases.items():
        with pytest.raises(ValueError, match=message):
            load_array(tmp_path / name)
    (tmp_path / "a.json").write_text("[1]")
    with pytest.raises(ValueError, match="unsupported file type '.json'"):
        load_array(tmp_path / "a.json")


@pytest.mark.parametrize("suffix, bits", [(".png", 8), (".jpg", 8), (".tif", 8), (".tif", 16)])
def test_a_colour_profile_is_read_and_written(tmp_path, rng, suffix, bits):
    """A photo in another colour space than sRGB keeps its profile through a run."""
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    colour = rng.random((HEIGHT, WIDTH, 3))
    Image.fromarray((colour * 255).astype(np.uint8)).save(tmp_path / "in.png",
                                                          icc_profile=profile)
    assert image_icc_profile(tmp_path / "in.png") == profile
    out = save_image(tmp_path / f"out{suffix}", colour, bits=bits, icc_profile=profile)
    assert image_icc_profile(out) == profile
    grey = save_image(tmp_path / f"grey{suffix}", colour[:, :, 0], icc_profile=profile)
    assert image_icc_profile(grey) is None  # an RGB profile does not describe a grey image
    plain = save_image(tmp_path / "plain.png", colour)
    assert image_icc_profile(plain) is None and image_icc_profile(tmp_path / "none.npy") is None


def test_a_float_colour_tiffs_profile_is_read(tmp_path, rng):
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    colour = rng.random((HEIGHT, WIDTH, 3)).astype(np.float32)  # Pillow cannot open it
    tifffile.imwrite(tmp_path / "float.tif", colour, photometric="rgb", iccprofile=profile)
    assert image_icc_profile(tmp_path / "float.tif") == profile  # None before: dropped
    tifffile.imwrite(tmp_path / "plain.tif", colour, photometric="rgb")
    assert image_icc_profile(tmp_path / "plain.tif") is None


@pytest.mark.parametrize("maxval", [65535, 4095])
def test_deep_colour_ppm_is_read_at_full_precision(tmp_path, rng, maxval):
    """Pillow reduces a colour PPM of more than 8 bits (dcraw's 16-bit output) to 8 bits."""
    samples = rng.integers(0, maxval + 1, size=(5, 7, 3))
    raw, plain = tmp_path / "raw.ppm", tmp_path / "plain.ppm"
    raw.write_bytes(b"P6\n# a comment\n7 5\n%d\n" % maxval + samples.astype(">u2").tobytes())
    plain.write_text(f"P3\n7 5 {maxval}\n" + " ".join(map(str, samples.ravel())) + "\n")
    for path in (raw, plain):
        image = load_image(path)
        assert image.shape == (5, 7, 3) and image_bit_depth(path) == 16
        # within half a 16-bit step of v / maxval: 8 bits would be off by up to 1/510
        np.testing.assert_allclose(image, samples / maxval, atol=0.5 / 65535 + 1e-7)


def test_deep_ppm_truncated_or_over_its_maximum_is_refused(tmp_path):
    path = tmp_path / "cut.ppm"
    path.write_bytes(b"P6\n2 2\n65535\n" + b"\x01" * 23)
    with pytest.raises(ImageError, match=r"cut\.ppm: the image data stops after 11 of 12"):
        load_image(path)
    path.write_bytes(b"P6\n2 2\n1000\n" + np.full(12, 1001, ">u2").tobytes())
    with pytest.raises(ImageError, match="a sample of 1001 exceeds the file's maximum value, 1000"):
        load_image(path)
