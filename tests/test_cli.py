"""The command line, through typer's CliRunner: exit codes, messages and files written."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from deepprior import load_image, sample_image, save_image
from deepprior_cli.main import app

runner = CliRunner()
FAST = ["--iters", "15", "--stop", "fixed:15", "--channels", "8", "--quiet"]


@pytest.fixture
def clean_png(tmp_path):
    path = tmp_path / "clean.png"
    save_image(path, sample_image("camera", size=(40, 36)))
    return path


def test_help_lists_commands_and_version():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("denoise", "cs"):
        assert command in result.output
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("deepprior ")
    assert runner.invoke(app, ["denoise", "--help"]).exit_code == 0


def test_denoise_writes_three_outputs(clean_png, tmp_path):
    out = tmp_path / "res" / "out.png"
    result = runner.invoke(app, ["denoise", str(clean_png), "--add-noise", "25", "-o", str(out),
                                 *FAST])
    assert result.exit_code == 0, result.output
    assert load_image(out).shape == (40, 36)
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["num_steps"] == 15 and report["command"] == "denoise"
    assert report["psnr"] is not None and report["noisy_psnr"] is not None
    assert report["sigma_255"] == pytest.approx(25)
    assert (tmp_path / "res" / "out_curve.png").stat().st_size > 1000


def test_denoise_default_output_name_and_json(clean_png):
    result = runner.invoke(app, ["denoise", str(clean_png), "--json", *FAST])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["stop_reason"]
    assert (clean_png.parent / "clean_denoised.png").exists()
    assert report["sigma_255"] > 0  # estimated, since neither --sigma nor --add-noise


def test_existing_output_is_not_overwritten(clean_png, tmp_path):
    out = tmp_path / "out.png"
    out.write_bytes(b"keep me")
    result = runner.invoke(app, ["denoise", str(clean_png), "-o", str(out), *FAST])
    assert result.exit_code == 1
    assert "already exists" in result.stderr and "--overwrite" in result.stderr
    assert out.read_bytes() == b"keep me"
    assert not out.with_suffix(".json").exists()
    result = runner.invoke(app, ["denoise", str(clean_png), "-o", str(out), "--overwrite", *FAST])
    assert result.exit_code == 0, result.output
    assert load_image(out).shape == (40, 36)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["denoise", "missing.png"], "missing.png"),
        (["denoise", "{img}", "--sigma", "-3"], "--sigma must be >= 0"),
        (["denoise", "{img}", "--net", "unet"], "unknown network 'unet'"),
        (["denoise", "{img}", "--stop", "sometimes"], "sometimes"),
        (["cs", "{img}", "--measurements", "100000"], "num_measurements"),
        (["cs", "{img}"], "--measurements M is required"),
    ],
)
def test_errors_are_one_line_without_traceback(args, message, clean_png, tmp_path):
    args = [a.replace("{img}", str(clean_png)) for a in args]
    result = runner.invoke(app, [args[0], *FAST, "-o", str(tmp_path / "x.png"), *args[1:]])
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: ")
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.output
    assert not (tmp_path / "x.png").exists()


def test_typer_validation_exits_2(clean_png):
    result = runner.invoke(app, ["denoise", str(clean_png), "--iters", "0"])
    assert result.exit_code == 2


def test_sigma_scale_warning(clean_png, tmp_path):
    result = runner.invoke(app, ["denoise", str(clean_png), "--sigma", "0.1",
                                 "-o", str(tmp_path / "o.png"), *FAST])
    assert result.exit_code == 0
    assert "0-255 units" in result.stderr


def test_cs_roundtrip_through_measurement_file(clean_png, tmp_path):
    y_file = tmp_path / "y.npz"
    out = tmp_path / "cs.png"
    result = runner.invoke(app, ["cs", str(clean_png), "-m", "300", "--save-measurements",
                                 str(y_file), "-o", str(out), *FAST])
    assert result.exit_code == 0, result.output
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["num_measurements"] == 300 and report["psnr"] is not None
    first = load_image(out)

    out2 = tmp_path / "cs2.png"
    result = runner.invoke(app, ["cs", "--measurements-file", str(y_file), "-o", str(out2), *FAST])
    assert result.exit_code == 0, result.output
    report2 = json.loads(out2.with_suffix(".json").read_text())
    assert report2["psnr"] is None  # no ground truth with real measurements
    np.testing.assert_array_equal(load_image(out2), first)  # same seed, same data


def test_cs_fast_operator_and_noise(clean_png, tmp_path):
    out = tmp_path / "f.png"
    result = runner.invoke(app, ["cs", str(clean_png), "-m", "400", "--operator", "fast",
                                 "--noise", "30", "-o", str(out), *FAST])
    assert result.exit_code == 0, result.output
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["config"]["operator"]["kind"] != "gaussian"
    assert report["measurement_noise_sigma"] > 0


def test_debug_shows_traceback(tmp_path):
    result = runner.invoke(app, ["denoise", str(tmp_path / "nope.png"), "--debug"])
    assert result.exit_code != 0
    assert result.exception is not None
