"""``deepprior cs``: simulated measurements, saved measurements, and a user's own matrix and
measurements (``--matrix``/``--measurements-file``) with their errors."""

import json

import numpy as np
import pytest
import scipy.io
import scipy.sparse
from cli_asserts import assert_one_line_error
from typer.testing import CliRunner

from deepprior import GaussianSensing, load_image, sample_image, save_image
from deepprior_cli.main import app

runner = CliRunner()
FAST = ["--iters", "12", "--stop", "fixed:12", "--channels", "8", "--quiet"]
SIDE = 16  # a 16x16 image: n = 256 columns
M = 100




@pytest.fixture
def system(tmp_path):
    """A user's own problem: a 100 x 256 matrix, y = A x for a 16x16 image."""
    clean = sample_image("camera", size=SIDE)
    matrix = np.random.default_rng(1).standard_normal((M, SIDE * SIDE)) / np.sqrt(M)
    y = matrix @ clean.reshape(-1)
    save_image(tmp_path / "truth.png", clean)
    return matrix, y, clean


def invoke(*args):
    return runner.invoke(app, ["cs", *FAST, *map(str, args)])




# --------------------------------------------------------------------------- simulated


def test_cs_roundtrip_through_measurement_file(clean_png, tmp_path):
    y_file, out, out2 = tmp_path / "y.npz", tmp_path / "cs.png", tmp_path / "cs2.png"
    result = invoke(clean_png, "-m", 300, "--save-measurements", y_file, "-o", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["num_measurements"] == 300 and report["psnr"] is not None
    result = invoke("--measurements-file", y_file, "-o", out2)
    assert result.exit_code == 0, result.output
    assert json.loads(out2.with_suffix(".json").read_text())["psnr"] is None  # no ground truth
    # same seed, same data; float measurements are written with 16 bits, the 8-bit scene's
    # reconstruction with 8
    assert json.loads(out2.with_suffix(".json").read_text())["output_bits"] == 16
    np.testing.assert_allclose(load_image(out2), load_image(out), atol=0.5 / 255 + 1e-6)


@pytest.mark.parametrize("colour", [False, True])
def test_saved_gaussian_matrix_through_matrix_path_gives_the_same_image(tmp_path, colour):
    image = sample_image("astronaut" if colour else "camera", size=SIDE)
    save_image(tmp_path / "x.png", image)
    y_file = tmp_path / "y.npz"
    # the round trip is about the data path: the Deep Decoder keeps rounding differences small
    dd = ("--net", "deep_decoder")
    result = invoke(tmp_path / "x.png", "-m", M, "--operator", "gaussian", "--save-measurements",
                    y_file, "-o", tmp_path / "builtin.npy", "--noise", "30", *dd)
    assert result.exit_code == 0, result.output
    with np.load(y_file) as saved:
        assert saved["matrix"].shape == (M, SIDE * SIDE)
        operator = GaussianSensing(M, (3 if colour else 1, SIDE, SIDE), seed=0)
        np.testing.assert_array_equal(saved["matrix"], operator.matrix.numpy())
        sigma = float(saved["sigma"])
    result = invoke("--matrix", y_file, "--measurements-file", y_file, "-o", tmp_path / "m.npy",
                    *dd)
    assert result.exit_code == 0, result.output
    # the very same float32 products (colour: the matrix applied to each channel), and the
    # noise level saved with the measurements
    np.testing.assert_allclose(np.load(tmp_path / "m.npy"), np.load(tmp_path / "builtin.npy"),
                               atol=1e-5)
    assert json.loads((tmp_path / "m.json").read_text())["config"]["sigma"] == sigma > 0


def test_noise_at_0_db_snr_works(clean_png, tmp_path):
    out = tmp_path / "n.png"
    result = runner.invoke(app, ["cs", str(clean_png), "-m", "100", "--noise", "0", "--iters",
                                 "20", "--channels", "8", "-q", "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["measurement_snr_db"] == 0 and report["measurement_noise_sigma"] > 0


def test_fast_operator_and_noise_sigma_in_measurement_units(clean_png, tmp_path):
    out = tmp_path / "f.png"
    result = invoke(clean_png, "-m", 400, "--operator", "fast", "--noise-sigma", 3, "-o", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["config"]["operator"]["kind"] == "fast"
    assert report["measurement_noise_sigma"] == 3  # no 0-255 conversion, no cap


# --------------------------------------------------------------------------- your own data


def _write(folder, name, array, key=None):
    path = folder / name
    if name.endswith(".npy"):
        np.save(path, array)
    elif name.endswith(".txt"):
        np.savetxt(path, array)
    elif name.endswith(".mat"):
        scipy.io.savemat(path, {key or "A": array})
    elif scipy.sparse.issparse(array):
        scipy.sparse.save_npz(path, array)
    else:
        np.savez(path, **{key or "arr": array})
    return path


@pytest.mark.parametrize(
    ("matrix_file", "y_file", "sparse"),
    [("A.npy", "y.txt", False), ("A.mat", "y.mat", False), ("A.npz", "y.npy", True),
     ("A.mat", "y.npz", True)],
)
def test_own_matrix_and_measurements(system, tmp_path, matrix_file, y_file, sparse):
    matrix, y, _ = system
    stored = scipy.sparse.csr_matrix(matrix) if sparse else matrix
    a_path = _write(tmp_path, matrix_file, stored)
    y_path = _write(tmp_path, y_file, y[:, None] if y_file.endswith(".mat") else y, key="y")
    out = tmp_path / "own.png"
    result = invoke("--matrix", a_path, "--measurements-file", y_path, "--noise-sigma", 0.01,
                    "--clean", tmp_path / "truth.png", "-o", out, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["num_measurements"] == M and report["num_pixels"] == SIDE * SIDE
    assert report["measurement_noise_sigma"] == 0.01 and report["psnr"] is not None
    assert load_image(out).shape == (SIDE, SIDE)


def test_a_noise_sigma_on_another_scale_than_the_measurements_is_named_as_the_option(
        system, clean_png, tmp_path):
    """The library's check (m·σ² above 4·‖y‖²) named σ as ``sigma=50``: the CLI says
    ``--noise-sigma 50``, for a user's own files and for a --save-measurements file."""
    matrix, y, _ = system
    a_path, y_path = _write(tmp_path, "A.npy", matrix), _write(tmp_path, "y.npy", y)
    result = invoke("--matrix", a_path, "--measurements-file", y_path, "--noise-sigma", 50,
                    "-o", tmp_path / "own.png")
    assert result.exit_code == 1 and not (tmp_path / "own.png").exists()
    assert "error: --noise-sigma 50 puts the noise alone at m·σ² = 2.5e+05, above 4 times" \
        in result.stderr
    assert "--noise-sigma is the noise's std in the measurements' units (for data on the " \
        "[0, 1] scale and σ in 0-255 units, --noise-sigma 0.1961)" in result.stderr
    assert "sigma=" not in result.stderr
    saved = tmp_path / "y.npz"
    assert invoke(clean_png, "-m", 100, "--save-measurements", saved, "-o",
                  tmp_path / "sim.png").exit_code == 0
    with np.load(saved) as data:  # twice the largest σ taken: m·σ² = 8·‖y‖²
        sigma = float(np.sqrt(8 * np.square(data["y"]).sum() / data["y"].size))
    result = invoke("--measurements-file", saved, "--noise-sigma", sigma, "-o", tmp_path / "s.png")
    assert result.exit_code == 1 and not (tmp_path / "s.png").exists()
    assert f"error: --noise-sigma {sigma:g} puts the noise alone" in result.stderr
    assert "sigma=" not in result.stderr


def test_discrepancy_rule_on_own_measurements_uses_noise_sigma(system, tmp_path):
    matrix, y, _ = system
    noisy = y + 0.3 * np.random.default_rng(2).standard_normal(y.shape)
    a_path, y_path = _write(tmp_path, "A.npy", matrix), _write(tmp_path, "y.npy", noisy)
    out = tmp_path / "d.png"
    result = runner.invoke(app, ["cs", "--matrix", str(a_path), "--measurements-file",
                                 str(y_path), "--noise-sigma", "0.3", "--stop", "discrepancy",
                                 "--iters", "200", "--channels", "8", "-q", "-o", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["config"]["sigma"] == 0.3 and report["config"]["stop_resolved"] == "discrepancy"
    assert report["num_steps"] < 200  # the noise level was reached: the rule fired


def test_a_tv_penalty_on_own_measurements_takes_its_weight_from_sigma_or_held_out_data(
        system, tmp_path):
    matrix, y, _ = system
    a_path, y_path = _write(tmp_path, "A.npy", matrix), _write(tmp_path, "y.npy", y)
    args = ("--matrix", a_path, "--measurements-file", y_path, "--regularizer", "tv")
    result = invoke(*args, "--noise-sigma", "0.1", "-o", tmp_path / "s.png")
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "s.json").read_text())["config"]
    scale = SIDE * SIDE / M  # rows of squared norm n/m
    assert config["regularizer_weight"] == pytest.approx(0.5 * 0.1 * scale, rel=0.1)
    result = invoke(*args, "-o", tmp_path / "h.png")  # no σ: SNR 20 / 30 dB weights, a choice
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "h.json").read_text())["config"]
    assert len(config["regularizer_choice"]) == 2
    assert config["regularizer_weight"] in [row["weight"] for row in config["regularizer_choice"]]
    # DIP's default with σ given is TV at that weight; --regularizer none turns it off
    own = ("--matrix", a_path, "--measurements-file", y_path, "--noise-sigma", "0.1")
    for option, expected in (((), "tv"), (("--regularizer", "none"), None)):
        result = invoke(*own, *option, "-o", tmp_path / "d.png", "--overwrite")
        assert result.exit_code == 0, result.output
        config = json.loads((tmp_path / "d.json").read_text())["config"]
        assert config["net"] == "dip" and config["regularizer"] == expected


def test_dip_without_sigma_chooses_tv_or_none_and_the_cost_note_counts_every_fit(
        system, tmp_path, monkeypatch):
    import deepprior_cli.fitting as fitting

    # so that the note shows at --channels 4 (an iteration's time ~ (channels / 128)^1.5)
    monkeypatch.setattr(fitting, "DIP_CPU_SECONDS_PER_PIXEL", (1.0 / (4 / 128) ** 1.5,) * 2)
    matrix, y, _ = system
    a_path, y_path = _write(tmp_path, "A.npy", matrix), _write(tmp_path, "y.npy", y)
    result = runner.invoke(app, ["cs", "--matrix", a_path, "--measurements-file", y_path,
                                 "--iters", "4", "--channels", "4", "--device", "cpu",
                                 "-o", str(tmp_path / "c.png")])
    assert result.exit_code == 0, result.output
    # none and the two σ-free TV weights on the held-out split, then the refit
    assert "runs 4 fits of up to 4 iterations" in result.stderr
    config = json.loads((tmp_path / "c.json").read_text())["config"]
    assert config["regularizer"] == "auto" and len(config["regularizer_choice"]) == 3


def test_key_chooses_among_several_arrays(system, tmp_path):
    matrix, y, _ = system
    np.savez(tmp_path / "data.npz", first=y, second=y[::-1])
    a_path = _write(tmp_path, "A.npy", matrix)
    args = ("--matrix", a_path, "--measurements-file", tmp_path / "data.npz")
    result = invoke(*args, "-o", tmp_path / "o.png")
    assert_one_line_error(result, "several arrays ('first', 'second')")
    assert "--key" in result.stderr
    result = invoke(*args, "--key", "second", "-o", tmp_path / "o.png")
    assert result.exit_code == 0, result.output


def test_shape_for_non_square_images(tmp_path):
    clean = sample_image("camera", size=(12, 20))
    matrix = np.random.default_rng(0).standard_normal((80, 240))
    a_path = _write(tmp_path, "A.npy", matrix)
    y_path = _write(tmp_path, "y.npy", matrix @ clean.reshape(-1))
    out = tmp_path / "o.png"
    result = invoke("--matrix", a_path, "--measurements-file", y_path, "--shape", "12x20",
                    "-o", out)
    assert result.exit_code == 0, result.output
    assert load_image(out).shape == (12, 20)


def _bad_files(folder, matrix, y):
    """Files for the error cases, written once."""
    _write(folder, "A.npy", matrix)
    _write(folder, "y.npy", y)
    _write(folder, "y99.npy", y[:99])
    _write(folder, "A250.npy", matrix[:, :250])
    _write(folder, "A9.npy", matrix[:, :9])
    _write(folder, "Anan.npy", np.where(np.eye(M, SIDE * SIDE) > 0, np.nan, matrix))
    (folder / "bad.npz").write_bytes(b"PK\x03\x04 this is not a zip archive")
    (folder / "bad.mat").write_bytes(b"MATLAB 5.0 MAT-file" + b"\x00" * 100)
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116)
    (folder / "v73.mat").write_bytes(header + bytes(8) + b"\x00\x02IM" + bytes(400))
    (folder / "dir.npz").mkdir()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--matrix", "A.npy", "--measurements-file", "y99.npy"],
         "has 100 rows but the measurement file y99.npy holds 99"),
        (["--matrix", "A.npy", "--measurements-file", "y.npy", "--shape", "16x15"],
         "has 256 columns but --shape 16x15 has 240 pixels"),
        (["--matrix", "A250.npy", "--measurements-file", "y.npy"], "not a square image"),
        (["--matrix", "A9.npy", "--measurements-file", "y.npy"],  # as --shape 3x3 is refused
         "the image of the matrix's n = 9 columns is 3x3 pixels"),
        (["--matrix", "Anan.npy", "--measurements-file", "y.npy"], "non-finite"),
        (["--matrix", "bad.mat", "--measurements-file", "y.npy"], "not a readable MATLAB"),
        (["--matrix", "v73.mat", "--measurements-file", "y.npy"], "v7.3 (HDF5)"),
        (["--matrix", "bad.npz", "--measurements-file", "y.npy"], "not a readable .npz"),
        (["--measurements-file", "bad.npz"], "not a readable .npz"),
        (["--measurements-file", "dir.npz"], "is a directory"),
        (["--measurements-file", "y.npy"], "holds no operator description"),
        (["--matrix", "A.npy"], "describe given measurements"),
        (["--matrix", "A.npy", "--measurements-file", "y.npy", "--shape", "16"], "HxW"),
        (["--matrix", "A.npy", "--measurements-file", "y.npy", "--stop", "discrepancy"],
         "--stop discrepancy needs the noise level of the measurements: pass --noise-sigma"),
        (["--matrix", "A.npy", "--measurements-file", "y.npy", "--stop", "oracle"],
         "--stop oracle needs the clean image"),
        (["--measurements-file", "y.npy", "--noise", "20"], "--noise simulates noise"),
        (["{img}", "-m", "100", "--noise", "10", "--noise-sigma", "1"], "not both"),
        (["{img}", "-m", "100", "--noise-sigma", "0"], "--noise-sigma must be a noise std > 0"),
        (["{img}", "-m", "100", "--save-measurements", "y.txt"], "must end in .npz"),
        (["{img}", "-m", "100000"], "-m/--measurements must be in [1, 1440], the image's "
                                    "1440 pixels (40x36), got 100000"),
        (["{img}", "-m", "100", "--clean", "{img}"], "--clean is not needed"),
        (["{img}"], "--measurements M is required"),
    ],
)
def test_errors_are_one_line_and_write_nothing(system, clean_png, tmp_path, monkeypatch, args,
                                               message):
    matrix, y, _ = system
    _bad_files(tmp_path, matrix, y)
    monkeypatch.chdir(tmp_path)
    args = [a.replace("{img}", str(clean_png)) for a in args]
    before = set(tmp_path.iterdir())
    result = invoke(*args, "-o", "out.png")
    assert_one_line_error(result, message)
    assert set(tmp_path.iterdir()) == before


def test_a_matrix_with_as_many_rows_as_pixels_is_said_not_to_be_compressive(tmp_path):
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((80, 64)) / 8
    clean = sample_image("camera", size=8)
    a_path = _write(tmp_path, "A.npy", matrix)
    y_path = _write(tmp_path, "y.npy", matrix @ clean.reshape(-1))
    result = runner.invoke(app, ["cs", "--iters", "3", "--channels", "4", "--matrix",
                                 str(a_path), "--measurements-file", str(y_path),
                                 "-o", str(tmp_path / "t.png")])
    assert result.exit_code == 0, result.output
    assert "has 80 rows for 64 pixels, not fewer: this is not compressive sensing" in \
        result.stderr
    assert "with deep_decoder" in result.stdout


def test_your_own_npz_with_an_operator_entry_and_a_colour_bound_said_per_channel(tmp_path):
    """np.savez(f, operator=A, y=y): its "operator" (a matrix, not a saved description) made
    the σ lookup fail; -m on a colour image was bounded by H*W*3 while each channel takes
    at most H*W."""
    rng = np.random.default_rng(2)
    matrix = rng.standard_normal((M, SIDE * SIDE)) / np.sqrt(M)
    np.savez(tmp_path / "op.npz", operator=matrix,
             y=matrix @ sample_image("camera", size=SIDE).reshape(-1))
    out = tmp_path / "own.png"
    result = runner.invoke(app, ["cs", "--matrix", str(tmp_path / "op.npz"), "--matrix-key",
                                 "operator", "--measurements-file", str(tmp_path / "op.npz"),
                                 "-o", str(out), *FAST])
    assert result.exit_code == 0, result.output
    assert json.loads(out.with_suffix(".json").read_text())["output_bits"] == 16
    save_image(tmp_path / "colour.png", sample_image("astronaut", size=SIDE))
    assert_one_line_error(
        runner.invoke(app, ["cs", str(tmp_path / "colour.png"), "-m", "500", *FAST]),
        "-m/--measurements must be in [1, 256], the image's 256 pixels (16x16, measured per "
        "channel), got 500")


def test_a_saved_file_without_a_matrix_given_as_the_matrix_is_refused(tmp_path):
    """A --save-measurements file of the fast operator holds y and the operator's recipe:
    --matrix took y for the matrix ("has 1 rows but ... holds 150 measurements")."""
    saved = tmp_path / "fast.npz"
    result = runner.invoke(app, ["cs", "--operator", "fast", "-m", "150", "--save-measurements",
                                 str(saved), "-o", str(tmp_path / "a.png"), *FAST])
    assert result.exit_code == 0, result.output
    assert_one_line_error(
        runner.invoke(app, ["cs", "--matrix", str(saved), "--measurements-file", str(saved),
                            "-o", str(tmp_path / "b.png"), *FAST]),
        f"--matrix {saved} was written by --save-measurements: it describes its operator and "
        f"holds no matrix; pass it alone, --measurements-file {saved}")


def test_a_one_channel_shape_against_measurements_of_three_channels_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((M, SIDE * SIDE)) / np.sqrt(M)
    colour = sample_image("astronaut", size=SIDE)
    np.save(tmp_path / "A.npy", matrix)
    np.save(tmp_path / "y.npy", np.stack([matrix @ colour[..., c].reshape(-1) for c in range(3)]))
    assert_one_line_error(
        runner.invoke(app, ["cs", "--matrix", str(tmp_path / "A.npy"), "--measurements-file",
                            str(tmp_path / "y.npy"), "--shape", f"{SIDE}x{SIDE}x1", *FAST]),
        f"y of shape (3, m) measures a colour image channel by channel, and --shape "
        f"{SIDE}x{SIDE}x1 says 1 channel(s)")
