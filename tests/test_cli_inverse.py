"""``deepprior inpaint``, ``superres`` and ``deblur``: data paths, demos, reports, errors."""

import json

import numpy as np
import pytest
import tifffile
from cli_asserts import assert_one_line_error
from typer.testing import CliRunner

from deepprior import load_image, sample_image, save_image
from deepprior_cli.main import app

runner = CliRunner()
FAST = ["--iters", "10", "--stop", "fixed:10", "--channels", "8", "--quiet"]



@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    save_image(path, sample_image("camera", size=(24, 20)))
    return path


def run(command, *args):
    """``deepprior COMMAND`` with the fast settings (later options override them)."""
    return runner.invoke(app, [command, *FAST, *map(str, args)])


def report_of(out):
    return json.loads(out.with_suffix(".json").read_text())




# --------------------------------------------------------------------------- inpaint


def test_inpaint_with_a_16_bit_grey_level_mask(photo, tmp_path):
    mask = np.ones((24, 20))
    mask[5:15, 4:12] = 0
    mask[0, :3] = 0.3  # grey: below 0.5, so missing
    save_image(tmp_path / "mask.png", mask, bits=16)
    out = tmp_path / "in.png"
    result = runner.invoke(app, ["inpaint", str(photo), "--mask", str(tmp_path / "mask.png"),
                                 "-o", str(out), "--clean", str(photo), *FAST[:-1]])
    assert result.exit_code == 0, result.output
    assert "3 grey pixels; thresholded at 0.5" in result.stderr
    report = report_of(out)
    assert report["known_pixels"] == 24 * 20 - 80 - 3 and report["psnr"] is not None
    assert load_image(out).shape == (24, 20)


def test_inpaint_with_an_8_bit_npy_mask_and_the_values_it_refuses(photo, tmp_path):
    keep = np.full((24, 20), 255, np.uint8)
    keep[5:15, 4:12] = 0
    np.save(tmp_path / "mask.npy", keep)  # as an image library would write it: 0 / 255
    out = tmp_path / "in.png"
    result = run("inpaint", photo, "--mask", tmp_path / "mask.npy", "-o", out)
    assert result.exit_code == 0, result.output
    assert report_of(out)["known_pixels"] == 24 * 20 - 80
    np.save(tmp_path / "signed.npy", keep.astype(np.int16))
    assert_one_line_error(run("inpaint", photo, "--mask", tmp_path / "signed.npy"),
                          "booleans or uint8 / uint16 image values, got int16 values in [0, 255]")


def test_a_mask_whose_holes_are_transparent_reads_its_alpha_channel(photo, tmp_path):
    """An editor's eraser leaves the colour white and the alpha 0: it read as all known, and
    the fit ran on nothing to inpaint."""
    from PIL import Image

    rgba = np.full((24, 20, 4), 255, np.uint8)
    rgba[5:15, 4:12, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "erased.png")
    out = tmp_path / "in.png"
    result = runner.invoke(app, ["inpaint", str(photo), "--mask", str(tmp_path / "erased.png"),
                                 "-o", str(out), *FAST[:-1]])
    assert result.exit_code == 0, result.output
    assert "erased.png has transparent pixels: they count as missing" in result.stderr
    assert "alpha channel was dropped" not in result.stderr
    assert report_of(out)["known_pixels"] == 24 * 20 - 80
    rgba[0, :5, :3] = 0  # black and opaque: missing as well
    Image.fromarray(rgba).save(tmp_path / "both.png")
    result = runner.invoke(app, ["inpaint", str(photo), "--mask", str(tmp_path / "both.png"),
                                 "-o", str(tmp_path / "both_out.png"), *FAST[:-1]])
    assert report_of(tmp_path / "both_out.png")["known_pixels"] == 24 * 20 - 80 - 5
    rgba[...] = 255  # opaque and white: every pixel known, said
    Image.fromarray(rgba).save(tmp_path / "white.png")
    result = runner.invoke(app, ["inpaint", str(photo), "--mask", str(tmp_path / "white.png"),
                                 "-o", str(tmp_path / "w.png"), *FAST[:-1]])
    assert "white.png marks every pixel as known: nothing to inpaint" in result.stderr


def test_a_jpeg_output_beyond_its_largest_side_is_refused_before_the_fit(tmp_path):
    wide = tmp_path / "wide.png"
    save_image(wide, np.full((4, 16500), 0.5))
    result = run("superres", wide, "--factor", "4", "--net", "deep_decoder", "-o",
                 tmp_path / "big.jpg")
    assert_one_line_error(result, "big.jpg: a JPEG holds at most 65,500 pixels a side, and the "
                                  "result is 16x66000; write a .png or .tif")


@pytest.mark.parametrize(
    ("args", "missing"),
    [(["--missing", "0.3"], 0.3), ([], 0.5), (["--text"], None)],
)
def test_inpaint_demo_masks(photo, tmp_path, args, missing):
    out = tmp_path / "d.png"
    result = run("inpaint", photo, *args, "--noise-sigma", "10", "-o", out)
    assert result.exit_code == 0, result.output
    report = report_of(out)
    assert report["psnr"] is not None and report["noise_sigma_255"] == pytest.approx(10)
    if missing is not None:
        assert report["missing_fraction"] == pytest.approx(missing, abs=0.01)
    else:
        assert report["mask"] == "text overlay" and 0.05 < report["missing_fraction"] < 0.6


def test_inpaint_json_and_quiet(photo, tmp_path):
    result = runner.invoke(app, ["inpaint", str(photo), "--json", *FAST[:-1],
                                 "-o", str(tmp_path / "j.png")])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["command"] == "inpaint"
    result = run("inpaint", photo, "-o", tmp_path / "q.png")
    assert result.exit_code == 0 and result.stdout == ""


# --------------------------------------------------------------------------- superres


def test_superres_makes_the_image_factor_times_larger(photo, tmp_path):
    out = tmp_path / "big.png"
    result = runner.invoke(app, ["superres", str(photo), "--factor", "2", "--kernel", "box",
                                 "--json", "-o", str(out), *FAST[:-1]])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["low_resolution_shape"] == [24, 20] and report["psnr"] is None
    assert load_image(out).shape == (48, 40)


def test_superres_simulate_crops_to_a_multiple_of_the_factor(tmp_path):
    source = tmp_path / "hr.png"
    save_image(source, sample_image("astronaut", size=(26, 23)))
    out = tmp_path / "sr.png"
    result = runner.invoke(app, ["superres", str(source), "--factor", "3", "--simulate",
                                 "--add-noise", "5", "-o", str(out), *FAST[:-1]])
    assert result.exit_code == 0, result.output
    assert f"{source} is 26x23, not a multiple of --factor 3: cropped to 24x21" in result.stderr
    report = report_of(out)
    assert report["psnr"] is not None and report["low_resolution_shape"] == [8, 7]
    assert load_image(out).shape == (24, 21, 3)


# --------------------------------------------------------------------------- deblur


@pytest.mark.parametrize("kernel", ["gaussian:1.5", "motion:5,30", "psf.npy", "psf.png",
                                    "psf.tif"])
def test_deblur_kernels(photo, tmp_path, kernel):
    psf = np.zeros((5, 5))
    psf[2, :] = 1  # a horizontal motion; sums to 5, normalised with a note
    np.save(tmp_path / "psf.npy", psf)
    save_image(tmp_path / "psf.png", psf / 1.0 / psf.max())
    tifffile.imwrite(tmp_path / "psf.tif", (300 * psf).astype(np.float32))  # photon counts
    if kernel.startswith("psf"):
        kernel = str(tmp_path / kernel)
    out = tmp_path / "sharp.png"
    result = runner.invoke(app, ["deblur", str(photo), "--kernel", kernel, "--simulate",
                                 "--add-noise", "2", "-o", str(out), *FAST[:-1]])
    assert result.exit_code == 0, result.output
    report = report_of(out)
    assert report["psnr"] is not None and report["boundary"] == "circular"
    if kernel.endswith(("psf.npy", "psf.tif")):
        assert report["kernel_shape"] == [1, 5]  # its zero rows trimmed
        assert "normalised to sum 1" in result.stderr


def test_deblur_of_a_blurred_image_with_known_noise(photo, tmp_path):
    out = tmp_path / "d.png"
    result = run("deblur", photo, "--kernel", "gaussian:1", "--noise-sigma", "3",
                 "--stop", "discrepancy+fixed:10", "-o", out)
    assert result.exit_code == 0, result.output
    report = report_of(out)
    assert report["psnr"] is None and report["config"]["sigma"] == pytest.approx(3 / 255)


def test_deblur_kernels_as_users_save_them(tmp_path):
    """A motion blur as long as the image is wide but not tall (its zero rows trimmed), a grey
    PSF saved as RGB, an .npz holding the kernel beside other arrays."""
    wide = tmp_path / "wide.png"
    save_image(wide, sample_image("camera", size=(12, 32)))
    result = run("deblur", wide, "--kernel", "motion:15,0", "-o", tmp_path / "m.png")
    assert result.exit_code == 0, result.output
    assert report_of(tmp_path / "m.png")["kernel_shape"] == [1, 15]
    save_image(tmp_path / "psf.png", np.repeat(np.eye(3)[:, :, None] / 2, 3, axis=2))
    np.savez(tmp_path / "k.npz", psf=np.eye(3), meta=np.arange(3.0))
    for kernel in ("psf.png", "k.npz"):
        result = run("deblur", wide, "--kernel", tmp_path / kernel, "-o", tmp_path / "k.png",
                     "--overwrite")
        assert result.exit_code == 0, result.output
        assert report_of(tmp_path / "k.png")["kernel_shape"] == [3, 3]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["inpaint", "{img}", "--mask", "{small}"], "is 10x10 but IMAGE is 24x20"),
        (["inpaint", "{img}", "--mask", "{black}"], "marks no pixel as known"),
        (["inpaint", "{img}", "--mask", "{small}", "--missing", "0.2"], "do not apply"),
        (["inpaint", "{img}", "--missing", "1.5"], "between 0 and 1"),
        (["inpaint", "{img}", "--missing", "0.2", "--text"], "not both"),
        (["inpaint", "{img}", "--mask", "{black}", "--add-noise", "5"], "--add-noise adds noise"),
        (["inpaint", "{img}", "--noise-sigma", "0"], "--noise-sigma must be a noise std in 0-255"),
        (["superres", "{img}", "--factor", "2", "--clean", "{img}"],
         "--clean {img} is 24x20 but the reconstruction is 48x40"),
        (["superres", "{small}", "--factor", "16", "--simulate"],
         "cropped to a multiple of --factor 16 is 0x0 pixels"),
        (["superres", "{img}", "--add-noise", "3"],
         "adds noise to a simulated observation (--simulate)"),
        (["superres", "{img}", "--simulate", "--clean", "{img}"], "--clean is not needed"),
        (["superres", "{img}", "--stop", "oracle"], "--stop oracle needs the clean image"),
        (["deblur", "{img}", "--kernel", "motion:41,0"], "is 1x41, larger than the image (24x20)"),
        (["deblur", "{img}", "--kernel", "{big}"], "is 40x3, larger than the image (24x20)"),
        (["deblur", "{img}", "--kernel", "{two}"], "holds several arrays ('a', 'b') and none is "
                                                   "named 'kernel' or 'psf'; choose one with a "
                                                   "file holding the kernel alone"),
        (["inpaint", "--mask", "{small}"], "--mask needs IMAGE, the damaged photo"),
        (["deblur", "{img}", "--kernel", "gaussian:-1"], "expected gaussian:STD"),
        (["deblur", "{img}", "--kernel", "motion:x"], "expected motion:LENGTH,ANGLE"),
        (["deblur", "{img}", "--kernel", "nothing.png"], "not gaussian:STD, motion:LENGTH,ANGLE"),
        (["deblur", "{img}", "--kernel", "{rgb}"], "a blur kernel is grayscale"),
        (["deblur", "{img}", "--kernel", "{black}"], "the kernel sums to 0"),
        (["deblur", "{img}", "--stop", "discrepancy"], "pass --noise-sigma"),
    ],
)
def test_errors_are_one_line_and_write_nothing(photo, tmp_path, monkeypatch, args, message):
    save_image(tmp_path / "small.png", np.ones((10, 10)))
    save_image(tmp_path / "black.png", np.zeros((24, 20)))
    save_image(tmp_path / "rgb.png", np.stack([np.ones((3, 3)), np.zeros((3, 3)),
                                               np.ones((3, 3))], axis=2))
    np.save(tmp_path / "big.npy", np.ones((40, 3)))  # its note (sums to 120) would come first
    np.savez(tmp_path / "two.npz", a=np.ones((3, 3)), b=np.ones((3, 3)))
    monkeypatch.chdir(tmp_path)
    names = {"{img}": str(photo), "{small}": "small.png", "{black}": "black.png",
             "{rgb}": "rgb.png", "{big}": "big.npy", "{two}": "two.npz"}
    for key, value in names.items():
        args = [a.replace(key, value) for a in args]
        message = message.replace(key, value)
    before = set(tmp_path.iterdir())
    result = run(*args, "-o", "out.png")
    assert_one_line_error(result, message)
    assert set(tmp_path.iterdir()) == before


@pytest.mark.parametrize(
    ("command", "output"),
    [("inpaint", "camera_inpainted.png"), ("superres", "camera_x4.png"),
     ("deblur", "camera_deblurred.png")],
)
def test_demo_without_image(tmp_path, monkeypatch, command, output):
    monkeypatch.chdir(tmp_path)
    result = run(command, "--iters", "3", "--stop", "fixed:3", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["input"].startswith("sample image camera") and report["psnr"] is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [output, output.replace(".png", ".json"), output.replace(".png", "_curve.png")])
