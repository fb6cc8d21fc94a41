"""The command line, through typer's CliRunner: exit codes, messages and files written.

Shared behaviour of every fitting command (options, output checks, units, errors, exit codes,
Ctrl-C, divergence, bit depth) is tested here, mostly on ``denoise``; the commands' own data
paths are in test_cli_cs.py and test_cli_inverse.py.
"""

import errno
import io
import json
import os
import tempfile
import types
import warnings

import numpy as np
import pytest
import tifffile
import torch
import typer
from cli_asserts import assert_one_line_error
from typer.testing import CliRunner

import deepprior
from deepprior import load_image, sample_image, save_image
from deepprior.io import image_bit_depth
from deepprior_cli.main import app

runner = CliRunner()
FAST = ["--iters", "15", "--stop", "fixed:15", "--channels", "8", "--quiet"]
FITTING_COMMANDS = ("denoise", "cs", "inpaint", "superres", "deblur")
SHARED = {"--net", "--norm", "--channels", "--iters", "--lr", "--lr-decay", "--stop", "--seed",
          "--device", "--output", "--overwrite", "--quiet", "--json", "--debug", "--max-pixels",
          "--clean", "--ensemble", "--threads", "--precision", "--regularizer",
          "--regularizer-weight"}




def files(folder):
    return sorted(p.name for p in folder.iterdir())




# --------------------------------------------------------------------------- help, options


def test_help_lists_commands_exit_codes_and_version():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in (*FITTING_COMMANDS, "analyze", "batch"):
        assert command in result.output
    assert "130" in result.output and "3 the fit diverged" in result.output
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("deepprior ")


@pytest.mark.parametrize("command", FITTING_COMMANDS)
def test_every_fitting_command_has_the_shared_options_examples_and_exit_codes(command):
    click_command = typer.main.get_command(app).commands[command]
    options = {name for param in click_command.params for name in param.opts}
    assert SHARED <= options
    refused = runner.invoke(app, [command, "--net", "nope"])
    assert refused.exit_code == 2
    assert all(f"'{name}'" in refused.output for name in deepprior.available_nets())
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert f"$ deepprior {command}" in result.output
    assert "Exit codes" in result.output


# --------------------------------------------------------------------------- denoise


def test_denoise_writes_three_outputs(clean_png, tmp_path):
    out = tmp_path / "res" / "out.png"
    result = runner.invoke(app, ["denoise", str(clean_png), "--add-noise", "25", "-o", str(out),
                                 *FAST])
    assert result.exit_code == 0, result.output
    assert load_image(out).shape == (40, 36)
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["num_steps"] == 15 and report["command"] == "denoise"
    assert report["status"] == "done" and report["exit_code"] == 0
    assert report["psnr"] is not None and report["noisy_psnr"] is not None
    assert report["sigma_255"] == pytest.approx(25) and report["sigma_estimated"] is False
    assert report["returned_iterate_loss"] == report["final_loss"]  # fixed: the last step
    assert (tmp_path / "res" / "out_curve.png").stat().st_size > 1000
    assert files(tmp_path / "res") == ["out.json", "out.png", "out_curve.png"]  # no temporaries


def test_the_report_gives_the_loss_of_the_iterate_it_returns(clean_png, tmp_path):
    """final_loss is the last step's: after a divergence, that of the step that diverged."""
    out = tmp_path / "out.png"
    result = runner.invoke(app, ["denoise", str(clean_png), "-o", str(out), "--lr", "1e6",
                                 "--net", "deep_decoder", "--channels", "4", "--iters", "50",
                                 "--stop", "fixed:50", "--quiet"])
    report = json.loads(out.with_suffix(".json").read_text())
    assert result.exit_code == 3 and report["num_iter"] < report["num_steps"], report
    assert report["returned_iterate_loss"] < report["final_loss"]


def test_the_output_keeps_the_inputs_colour_profile(tmp_path):
    from PIL import Image, ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    photo = (sample_image("astronaut", size=32) * 255).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.jpg", icc_profile=profile)
    out = tmp_path / "out.png"
    result = runner.invoke(app, ["denoise", str(tmp_path / "photo.jpg"), "-o", str(out), *FAST])
    assert result.exit_code == 0, result.output
    assert deepprior.image_icc_profile(out) == profile


def test_denoise_default_output_name_and_json(clean_png):
    result = runner.invoke(app, ["denoise", str(clean_png), "--json", *FAST])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["num_steps"] == 15 and report["output_bits"] == 8
    assert (clean_png.parent / "clean_denoised.png").exists()
    assert report["sigma_255"] > 0  # estimated, since neither --sigma nor --add-noise
    assert report["sigma_estimated"] is True


def test_clean_gives_psnr_for_an_already_noisy_image(clean_png, tmp_path):
    noisy = tmp_path / "noisy.png"
    save_image(noisy, np.clip(deepprior.add_gaussian_noise(load_image(clean_png), 0.1), 0, 1))
    out = tmp_path / "o.png"
    result = runner.invoke(app, ["denoise", str(noisy), "--clean", str(clean_png), "--stop",
                                 "oracle", "-o", str(out), *FAST[:2], *FAST[4:]])
    assert result.exit_code == 0, result.output
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["psnr"] is not None and report["noisy_psnr"] is not None
    assert report["clean"] == str(clean_png)


def test_ensemble_averages_k_fits_and_the_report_lists_them(clean_png, tmp_path):
    out = tmp_path / "e.png"
    result = runner.invoke(app, ["denoise", str(clean_png), "--add-noise", "25", "--ensemble",
                                 "3", "-o", str(out), "--iters", "5", "--stop", "fixed:5",
                                 "--channels", "8"])
    assert result.exit_code == 0, result.output
    summary = next(line for line in result.stdout.splitlines() if line.startswith("PSNR"))
    assert summary.endswith("iteration 5, average of 3 fits")
    assert "time: " in result.stdout and " for 3 fits, 15 iterations in all " in result.stdout
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["config"]["ensemble"] == 3
    members = report["config"]["members"]
    assert [m["member"] for m in members] == [0, 1, 2]
    assert [m["quarter_turns"] for m in members] == [0, 1, 2]  # denoising: rotated copies
    assert all(m["num_iter"] == 5 and m["psnr"] is not None for m in members)
    assert report["stop_reason"].startswith("average of 3 fits")
    # how much the fits differ per pixel, beside the image they average to
    assert 0 < report["spread"]["mean"] < report["spread"]["max"] < 1
    one = runner.invoke(app, ["denoise", str(clean_png), "--add-noise", "25", "-o", str(out),
                              "--overwrite", "--iters", "5", "--stop", "fixed:5", "--channels",
                              "8", "--ensemble", "1", "--regularizer", "none"])
    assert one.exit_code == 0, one.output
    assert json.loads(out.with_suffix(".json").read_text())["spread"] is None  # one fit


def test_a_warning_is_shown_once_however_many_fits_repeat_it(clean_png, tmp_path):
    # 40×36 is below DIP's 64 px: each of the three fits' networks warns of the size
    result = runner.invoke(app, ["denoise", str(clean_png), "--add-noise", "25", "--ensemble",
                                 "3", "-o", str(tmp_path / "e.png"), *FAST])
    assert result.exit_code == 0, result.output
    assert result.stderr.count("warning: image size 40x36") == 1, result.stderr


def test_dips_default_denoising_mixes_a_fit_without_and_one_with_tv(clean_png, tmp_path):
    def run(*more):
        out = tmp_path / f"m{len(more)}.png"
        result = runner.invoke(app, ["denoise", str(clean_png), "--add-noise", "25", "-o",
                                     str(out), "--iters", "5", "--channels", "8", *more])
        assert result.exit_code == 0, result.output
        summary = next(line for line in result.stdout.splitlines() if line.startswith("PSNR"))
        return summary, json.loads(out.with_suffix(".json").read_text())["config"]

    summary, config = run()
    assert summary.endswith("average of 2 fits (without and with TV in turn)")
    assert config["regularizer"] == "mix" and config["regularizer_weight"] > 0
    assert [m["regularizer_weight"] for m in config["members"]] == [0.0,
                                                                   config["regularizer_weight"]]
    summary, config = run("--regularizer", "none")
    assert config["regularizer"] is None and "average" not in summary

@pytest.mark.parametrize(("args", "expected"), [
    (["--precision", "bf16"], {"precision": "bf16"}),
    (["--lr-decay", "0.5,5", "--lr", "0.02"],  # 15 iterations: the rate halved twice
     {"lr_decay": [0.5, 5], "final_learning_rate": pytest.approx(0.005)}),
])
def test_fitting_options_reach_the_fit_and_the_report(args, expected, clean_png, tmp_path):
    out = tmp_path / "b.png"
    result = runner.invoke(app, ["denoise", str(clean_png), "--add-noise", "25", *args,
                                 "-o", str(out), *FAST])
    assert result.exit_code == 0, result.output
    config = json.loads(out.with_suffix(".json").read_text())["config"]
    assert {key: config[key] for key in expected} == expected
    result = runner.invoke(app, ["denoise", str(clean_png), "--precision", "fp16", *FAST])
    assert result.exit_code == 2 and "fp16" in result.output


def test_regularizer_options_reach_the_fit_and_errors_are_one_line(clean_png, tmp_path):
    out = tmp_path / "tv.png"
    result = runner.invoke(app, ["denoise", str(clean_png), "--add-noise", "25", "--regularizer",
                                 "tv", "--regularizer-weight", "0.05", "-o", str(out), *FAST])
    assert result.exit_code == 0, result.output
    config = json.loads(out.with_suffix(".json").read_text())["config"]
    assert config["regularizer"] == "tv" and config["regularizer_weight"] == 0.05
    result = runner.invoke(app, ["denoise", str(clean_png), "--add-noise", "25", "--regularizer",
                                 "none", "-o", str(tmp_path / "none.png"), *FAST])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "none.json").read_text())["config"]
    assert config["regularizer"] is None and config["regularizer_weight"] is None
    result = runner.invoke(app, ["deblur", str(clean_png), "--simulate", "--kernel",
                                 "gaussian:1", "--regularizer", "tv", *FAST])
    assert_one_line_error(result, "--regularizer tv needs --regularizer-weight W for deblurring")
    result = runner.invoke(app, ["deblur", str(clean_png), "--simulate", "--kernel",
                                 "gaussian:1", "--regularizer", "auto", *FAST])
    assert_one_line_error(result, "--regularizer auto needs --regularizer-weight W for deblurring")


def test_auto_regularizer_reports_its_choice(clean_png, tmp_path, monkeypatch):
    out = tmp_path / "auto.png"
    result = runner.invoke(app, ["denoise", str(clean_png), "--add-noise", "25", "--regularizer",
                                 "auto", "-o", str(out), *FAST[:-1]])  # not --quiet
    assert result.exit_code == 0, result.output
    config = json.loads(out.with_suffix(".json").read_text())["config"]
    choice = config["regularizer_choice"]
    assert config["regularizer"] == "auto" and [row["weight"] for row in choice][0] == 0.0
    assert sum(row["chosen"] for row in choice) == 1
    assert "regularizer: " in result.output and "the lowest held-out loss (none " in result.output
    assert "3 fits, 45 iterations in all" in result.output  # two candidates, one more
    assert len(config["members"]) == 2
    # every loser a near tie: its held-out fit averaged in, and still three fits run
    monkeypatch.setattr(deepprior.api, "NEAR_TIE_Z", float("inf"))
    result = runner.invoke(app, ["denoise", str(clean_png), "--add-noise", "25", "--regularizer",
                                 "auto", "-o", str(tmp_path / "tie.png"), *FAST[:-1]])
    assert result.exit_code == 0, result.output
    assert "so its fit is averaged in" in result.output and "average of 3 fits" in result.output
    assert "its fit averaged with a fit to all the data" in result.output
    assert "3 fits, 45 iterations in all" in result.output


def test_the_choice_line_flags_a_near_tie():
    from deepprior_cli.fitting import choice_line

    rows = [{"weight": 0.0, "holdout_loss": 0.005081, "chosen": True, "margin_z": None},
            {"weight": 0.03, "holdout_loss": 0.005091, "chosen": False, "margin_z": 0.4}]
    assert choice_line(rows).endswith("a near tie: λ = 0.03 is only 0.4 standard errors "
                                      "behind, so the choice is uncertain")
    rows[1]["averaged"] = True  # the library averaged the near tie's fit into the image
    assert choice_line(rows).endswith("a near tie: λ = 0.03 is only 0.4 standard errors "
                                      "behind, so its fit is averaged in")
    rows[1].update(margin_z=12.0, averaged=False)  # clearly behind: not averaged
    assert "near tie" not in choice_line(rows)
    rows[1]["margin_z"] = 0.0  # identical held-out losses: the nearest tie of all
    assert "only 0.0 standard errors" in choice_line(rows)
    rows[1]["margin_z"] = None  # a loser without a z: one held-out measurement
    assert choice_line(rows, refits=0).endswith("one held-out value decided it: the choice is "
                                                "uncertain")


@pytest.mark.parametrize(("precision", "bf16_units", "minutes", "hint"), [
    ("fp32", True, "9-18", True), ("fp32", False, "9-18", False), ("bf16", True, "6-12", False)])
def test_the_dip_cost_note_gives_minutes_and_the_bf16_hint(clean_png, monkeypatch, precision,
                                                          bf16_units, minutes, hint):
    import deepprior_cli.fitting as fitting

    width = (4 / 128) ** 1.5  # --channels 4: an iteration's time, against 128 channels
    slow = 18 * 60 / (2 * 40 * 36) / width  # the two CPUs measured: a range of minutes
    monkeypatch.setattr(fitting, "DIP_CPU_SECONDS_PER_PIXEL", (slow / 2, slow))
    monkeypatch.setattr(fitting, "cpu_has_bf16_units", lambda: bf16_units)
    result = runner.invoke(app, ["denoise", str(clean_png), "--add-noise", "25", "--net", "dip",
                                 "--iters", "2", "--stop", "fixed:2", "--channels", "4",
                                 "--device", "cpu", "--precision", precision,
                                 "-o", str(clean_png.with_name("d.png"))])
    assert result.exit_code == 0, result.output
    assert f"about {minutes} min on one CPU core" in result.stderr
    assert "--net deep_decoder returns less" in result.stderr  # no speed-up at 4 channels
    assert ("--precision bf16 is about 1.5x faster" in result.stderr) == hint


def test_threads_are_set_for_the_fit_and_restored(clean_png, tmp_path, monkeypatch):
    seen = []
    real = deepprior.reconstruct

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        torch.set_num_threads(1)  # two threads on two busy cores are slow
        try:
            return real(*args, **kwargs)
        finally:
            torch.set_num_threads(3)  # whatever the fit leaves, the command restores its own

    monkeypatch.setattr(deepprior, "reconstruct", spy)
    before = torch.get_num_threads()
    for threads in ("2", None):
        extra = ["--threads", threads] if threads else []
        result = runner.invoke(app, ["denoise", str(clean_png), "-o", str(tmp_path / "t.png"),
                                     "--overwrite", *extra, *FAST])
        assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == (before if threads else 3)
        torch.set_num_threads(before)
    assert seen == [2, before]  # without --threads, torch's setting is left alone


# --------------------------------------------------------------------------- outputs


def test_existing_output_is_not_overwritten(clean_png, tmp_path):
    out = tmp_path / "out.png"
    out.write_bytes(b"keep me")
    result = runner.invoke(app, ["denoise", str(clean_png), "-o", str(out), *FAST])
    assert_one_line_error(result, "already exists")
    assert "--overwrite" in result.stderr
    assert out.read_bytes() == b"keep me"
    assert not out.with_suffix(".json").exists()
    result = runner.invoke(app, ["denoise", str(clean_png), "-o", str(out), "--overwrite", *FAST])
    assert result.exit_code == 0, result.output
    assert load_image(out).shape == (40, 36)


def test_output_onto_the_input_is_refused_even_with_overwrite(clean_png):
    before = clean_png.read_bytes()
    result = runner.invoke(app, ["denoise", str(clean_png), "-o", str(clean_png), "--overwrite",
                                 *FAST])
    assert_one_line_error(result, "is the input file")
    assert clean_png.read_bytes() == before
    assert files(clean_png.parent) == ["clean.png"]


def test_output_that_is_a_directory_is_refused(clean_png, tmp_path):
    folder = tmp_path / "folder.png"
    folder.mkdir()
    result = runner.invoke(app, ["denoise", str(clean_png), "-o", str(folder), "--overwrite",
                                 *FAST])
    assert_one_line_error(result, "is a directory")
    (tmp_path / "out.json").mkdir()  # the report's path
    result = runner.invoke(app, ["denoise", str(clean_png), "-o", str(tmp_path / "out.png"),
                                 "--overwrite", *FAST])
    assert_one_line_error(result, "out.json (the report output) is a directory")
    assert not (tmp_path / "out.png").exists()


def test_unwritable_folder_is_refused_before_the_fit(clean_png, tmp_path, monkeypatch):
    fitted = []
    monkeypatch.setattr(deepprior, "reconstruct", lambda *a, **k: fitted.append(1))
    readable = os.access
    monkeypatch.setattr(os, "access",  # tests run as root: nothing is read-only for real
                        lambda path, mode: not mode & os.W_OK and readable(path, mode))
    result = runner.invoke(app, ["denoise", str(clean_png), "-o",
                                 str(tmp_path / "new" / "o.png"), *FAST])
    assert_one_line_error(result, "permission denied")
    assert not fitted and not (tmp_path / "new").exists()


def test_the_curve_shows_every_averaged_fit(monkeypatch):
    """An average of fits (the default mix) plots each member's loss, PSNR and returned
    iterate; one fit of a mix (the other cut short) is the one without TV: "MSE" alone."""
    from matplotlib.figure import Figure

    from deepprior_cli.outputs import plot_fit

    figures = []
    monkeypatch.setattr(Figure, "savefig", lambda self, *a, **k: figures.append(self))
    clean = deepprior.sample_image("camera", size=16)
    noisy = deepprior.add_gaussian_noise(clean, 0.1, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 16x16 is cropped from the net's 64x64
        result = deepprior.reconstruct(
            noisy, net="deep_decoder", net_options={"channels": 8}, regularizer="mix",
            stop="fixed:6", max_num_iter=9, sigma=0.1, ground_truth=clean,
            seed=0)
    assert result.history["member_loss"].shape == (2, 6)
    plot_fit(result, io.BytesIO())
    loss_ax, spread_ax, _, psnr_ax = figures[-1].axes  # the fits' spread beside their curves
    assert spread_ax.get_title().startswith("spread of the 2 fits")
    np.testing.assert_array_equal(spread_ax.get_images()[0].get_array(), result.spread)
    assert loss_ax.get_ylabel() == "training loss (MSE + penalty where λ > 0)"
    assert "average of 2 fits" in loss_ax.get_title()
    labels = loss_ax.get_legend_handles_labels()[1]
    assert labels == ["fit 1", "returned (fit 1): 6", "fit 2, TV λ=0.05", "returned (fit 2): 6"]
    assert len(psnr_ax.get_lines()) == 3  # each member's PSNR and the average's level
    one = types.SimpleNamespace(history={"loss": np.array([1.0, 0.5])}, num_iter=2,
                                stop_reason="interrupted", psnr=None,
                                config={"net": "dip", "norm": "batch", "regularizer": "mix",
                                        "regularizer_weight": 0.2})
    plot_fit(one, io.BytesIO())
    assert figures[-1].axes[0].get_ylabel() == "training loss (MSE)"
    assert figures[-1].axes[0].get_title().endswith("INTERRUPTED")


def test_a_link_to_a_missing_folder_is_refused_before_the_fit(clean_png, tmp_path, monkeypatch):
    fitted = []
    monkeypatch.setattr(deepprior, "reconstruct", lambda *a, **k: fitted.append(1))
    (tmp_path / "out").symlink_to(tmp_path / "unmounted")  # before: "File exists" after the fit
    result = runner.invoke(app, ["denoise", str(clean_png), "-o",
                                 str(tmp_path / "out" / "o.png"), *FAST])
    assert_one_line_error(result, f"{tmp_path / 'out'} is a link to {tmp_path / 'unmounted'}, "
                                  "which does not exist")
    assert not fitted


def test_a_folder_whose_permissions_allow_writing_but_that_takes_no_file_is_refused_too(
        clean_png, tmp_path, monkeypatch):
    fitted = []
    monkeypatch.setattr(deepprior, "reconstruct", lambda *a, **k: fitted.append(1))

    def read_only(*args, **kwargs):  # e.g. a read-only mount or root on a squashed share
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    result = runner.invoke(app, ["denoise", str(clean_png), "-o", str(tmp_path / "o.png"), *FAST])
    assert_one_line_error(result, f"cannot write to the folder {tmp_path} (read-only file system)")
    assert not fitted and sorted(p.name for p in tmp_path.iterdir()) == [clean_png.name]


@pytest.mark.parametrize("failure", [OSError("disk full"), KeyboardInterrupt()])
def test_outputs_are_written_all_or_none(clean_png, tmp_path, monkeypatch, failure):
    def broken_plot(result, handle):
        handle.write(b"half a plot")
        raise failure

    monkeypatch.setattr("deepprior_cli.outputs.plot_fit", broken_plot)
    out = tmp_path / "sub" / "o.png"
    result = runner.invoke(app, ["denoise", str(clean_png), "-o", str(out), *FAST])
    if isinstance(failure, OSError):
        assert_one_line_error(result, "disk full")
    else:
        assert result.exit_code == 130 and "nothing was written" in result.stderr
    assert files(tmp_path) == ["clean.png"]  # no image, report, temporary or new folder


def test_overwrite_failure_restores_the_old_outputs(clean_png, tmp_path, monkeypatch):
    out = tmp_path / "o.png"
    for path in (out, tmp_path / "o.json", tmp_path / "o_curve.png"):
        path.write_bytes(b"old")
    real_replace = os.replace
    calls = []

    def replace(source, target):  # the third move into place fails
        if ".part" in str(source):
            calls.append(target)
            if len(calls) == 3:
                raise OSError("device went away")
        return real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    result = runner.invoke(app, ["denoise", str(clean_png), "-o", str(out), "--overwrite", *FAST])
    assert_one_line_error(result, "device went away")
    assert files(tmp_path) == ["clean.png", "o.json", "o.png", "o_curve.png"]
    assert all((tmp_path / name).read_bytes() == b"old"
               for name in ("o.json", "o.png", "o_curve.png"))


# --------------------------------------------------------------------------- errors, units


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{dir}/missing.png"], "missing.png: no such file"),
        (["{img}", "--sigma", "1000"], "--sigma must be a noise std in 0-255 units, > 0 and <= "
                                       "255 (e.g. --sigma 25), got 1000"),
        (["{img}", "--sigma", "0"], "--sigma must be a noise std in 0-255 units, > 0"),
        (["{img}", "--sigma", "-5"], "--sigma must be a noise std in 0-255 units, > 0"),
        (["{img}", "--add-noise", "300"], "--add-noise must be a noise std in 0-255 units"),
        (["{tiny}"], "is 1x1 pixels; deepprior reconstructs images of at least 4x4"),
        (["{img}", "--stop", "sometimes"], "sometimes"),
        (["{img}", "--stop", "oracle"], "--stop oracle needs the clean image"),
        (["{img}", "--lr", "0"], "--lr must be a number in (0, 1e+06]"),
        (["{img}", "--lr", "1e38"], "--lr must be a number in (0, 1e+06], got 1e+38"),
        (["{img}", "--lr-decay", "0.5"], "--lr-decay must be FACTOR,EVERY with 0 < FACTOR <= 1 "
                                         "and EVERY an integer >= 1 (e.g. 0.5,1500) or none"),
        (["{img}", "--lr-decay", "1.5,100"], "--lr-decay must be FACTOR,EVERY"),
        (["{img}", "--max-pixels", "100"], "--max-pixels 1440"),
        (["{img}", "--clean", "{tiny}"], "1x1 pixels"),
        (["{img}", "--clean", "{other}"], "--clean {other} is 20x20 but the reconstruction is "
                                          "40x36"),
        (["{img}", "--add-noise", "25", "--clean", "{img}"], "--clean is not needed"),
        (["{dir}"], "is a directory"),
    ],
)
def test_errors_are_one_line_without_traceback(args, message, clean_png, tmp_path):
    save_image(tmp_path / "tiny.png", np.zeros((1, 1)))
    save_image(tmp_path / "other.png", np.zeros((20, 20)))
    names = {"{img}": str(clean_png), "{tiny}": str(tmp_path / "tiny.png"),
             "{other}": str(tmp_path / "other.png"), "{dir}": str(tmp_path)}
    for key, value in names.items():
        args = [a.replace(key, value) for a in args]
        message = message.replace(key, value)
    result = runner.invoke(app, ["denoise", *FAST, "-o", str(tmp_path / "x.png"), *args])
    assert_one_line_error(result, message)
    if "--stop" in args and "oracle" in args:
        assert "--add-noise" in result.stderr and "--clean" in result.stderr
        assert "--simulate" in result.stderr
    assert "/255" not in result.stderr  # CLI units only, never the library's
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stop", "holdout:fraction=2"], "--stop holdout:fraction=2: stopping rule 'holdout': "
                                           "fraction must satisfy 0 < fraction < 1, got 2.0"),
        (["--stop", "fixed"], "stopping rule 'fixed' needs its num_iter"),
        (["--regularizer-weight", "0.1"], "--regularizer-weight needs the penalty it weighs: "
                                          "--regularizer tv, auto or mix (got default)"),
        (["--regularizer", "none", "--regularizer-weight", "0.1"], "(got none)"),
        (["--device", "cuda:99"], "--device cuda:99: "),
        (["--regularizer", "auto", "--regularizer-weight", "0"], "so W must be > 0"),
        (["--regularizer", "mix", "--ensemble", "1"], "--regularizer mix gives its fits no "
                                                      "penalty and each TV weight in turn: it "
                                                      "needs --ensemble 2 or more, got 1"),
    ],
)
def test_option_values_are_checked_before_the_headline_and_notes(args, message, tmp_path):
    """Not quiet, with the Deep Image Prior's time note due: the error comes first, alone."""
    result = runner.invoke(app, ["denoise", "--add-noise", "25", "--net", "dip",
                                 "-o", str(tmp_path / "x.png"), *args])
    assert_one_line_error(result, message)
    assert result.stdout == ""  # no headline
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["-m", "3"], "holdout fraction 0.1 leaves no data on one side of the split of 3 "
                  "measurements (0.1 × 3 rounds to 0: it holds out none"),
    (["-m", "100", "--stop", "holdout:fraction=0.999"], "holds out all of them"),
])
def test_an_error_only_the_library_can_find_comes_before_the_headline(args, message, tmp_path):
    """The hold-out split is drawn by the library: its error still comes alone, no headline."""
    result = runner.invoke(app, ["cs", *args, "-o", str(tmp_path / "x.png")])
    assert_one_line_error(result, message)
    assert result.stdout == ""
    assert not (tmp_path / "x.png").exists()


def test_typer_validation_exits_2(clean_png):
    assert runner.invoke(app, ["denoise", str(clean_png), "--iters", "0"]).exit_code == 2
    result = runner.invoke(app, ["denoise", str(clean_png), "--net", "unet"])
    assert result.exit_code == 2 and "unet" in result.output


def test_sigma_scale_warning(clean_png, tmp_path):
    result = runner.invoke(app, ["denoise", str(clean_png), "--sigma", "0.1",
                                 "-o", str(tmp_path / "o.png"), *FAST])
    assert result.exit_code == 0
    assert "0-255 units" in result.stderr and "--sigma 25.5" in result.stderr


def test_debug_shows_traceback(tmp_path):
    result = runner.invoke(app, ["denoise", str(tmp_path / "nope.png"), "--debug"])
    assert result.exit_code != 0
    assert result.exception is not None


# --------------------------------------------------------------------------- never lose a fit


def interrupt_at(step, monkeypatch):
    """Make deepprior.reconstruct see Ctrl-C at iteration ``step`` (as the loop would)."""
    real = deepprior.reconstruct

    def callback(state):
        if state.step == step:
            raise KeyboardInterrupt

    monkeypatch.setattr(deepprior, "reconstruct",
                        lambda *a, **k: real(*a, **{**k, "callback": callback}))


def test_ctrl_c_during_the_fit_writes_the_best_iterate_and_exits_130(clean_png, tmp_path,
                                                                      monkeypatch):
    interrupt_at(4, monkeypatch)
    out = tmp_path / "o.png"
    result = runner.invoke(app, ["denoise", str(clean_png), "--add-noise", "25", "-o", str(out),
                                 *FAST])
    assert result.exit_code == 130
    assert "interrupted" in result.stderr and "best iterate so far" in result.stderr
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["status"] == "interrupted" and report["exit_code"] == 130
    assert report["num_steps"] == 4 and 1 <= report["num_iter"] <= 4
    assert report["stop_reason"].startswith("interrupted")
    assert load_image(out).shape == (40, 36)


def test_ctrl_c_before_the_first_iterate_writes_nothing(clean_png, tmp_path, monkeypatch):
    stopped = types.SimpleNamespace(num_iter=0, num_steps=1, stop_reason="interrupted at "
                                    "iteration 1; no iterate yet")
    monkeypatch.setattr(deepprior, "reconstruct", lambda *a, **k: stopped)
    result = runner.invoke(app, ["denoise", str(clean_png), "-o", str(tmp_path / "o.png"), *FAST])
    assert result.exit_code == 130
    assert "no iteration was accepted, nothing was written" in result.stderr
    assert files(tmp_path) == ["clean.png"]


def test_ctrl_c_during_start_up_exits_130_with_one_line(clean_png, tmp_path, monkeypatch):
    def interrupted_load(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(deepprior, "load_image", interrupted_load)
    result = runner.invoke(app, ["denoise", str(clean_png), "-o", str(tmp_path / "o.png")])
    assert result.exit_code == 130
    assert result.stderr.strip() == "interrupted (Ctrl-C); nothing was written"
    assert files(tmp_path) == ["clean.png"]


def test_diverged_fit_warns_even_when_quiet_and_exits_3(clean_png, tmp_path):
    out = tmp_path / "o.png"
    result = runner.invoke(app, ["denoise", str(clean_png), "--lr", "1e6", "--iters", "60",
                                 "--channels", "8", "-q", "-o", str(out)])
    assert result.exit_code == 3, result.output
    assert result.stdout == ""
    assert "warning: the fit diverged" in result.stderr and "--lr" in result.stderr
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["status"] == "diverged" and report["exit_code"] == 3
    assert report["stop_reason"].startswith("diverged")
    assert report["num_iter"] < report["num_steps"]  # the last good iterate, not the last one


# --------------------------------------------------------------------------- bit depth


def test_16_bit_grey_input_gives_16_bit_png(tmp_path):
    source = save_image(tmp_path / "deep.png", sample_image("camera", size=16), bits=16)
    out = tmp_path / "o.png"
    result = runner.invoke(app, ["denoise", str(source), "-o", str(out), *FAST])
    assert result.exit_code == 0, result.output
    assert image_bit_depth(out) == 16
    assert json.loads(out.with_suffix(".json").read_text())["output_bits"] == 16


def test_16_bit_colour_input_png_output_says_what_it_did(tmp_path):
    colour = sample_image("astronaut", size=16)
    source = tmp_path / "deep.tif"
    tifffile.imwrite(source, np.rint(colour * 65535).astype(np.uint16), photometric="rgb")
    out = tmp_path / "o.png"
    result = runner.invoke(app, ["denoise", str(source), "-o", str(out), *FAST[:-1]])
    assert result.exit_code == 0, result.output
    assert "input is 16-bit; wrote an 8-bit colour PNG (o.png); use -o o.tif" in result.stderr
    assert image_bit_depth(out) == 8
    result = runner.invoke(app, ["denoise", str(source), "-o", str(tmp_path / "t.tif"), *FAST])
    assert result.exit_code == 0, result.output
    assert image_bit_depth(tmp_path / "t.tif") == 16


def test_a_registered_network_is_usable_from_the_command_line(registry, clean_png, tmp_path):
    from deepprior.nets import DeepDecoder

    deepprior.register_net("tiny_cli_decoder",
                           lambda shape, norm="channel": DeepDecoder(shape, norm=norm, channels=4))
    out = tmp_path / "o.png"
    result = runner.invoke(app, ["denoise", str(clean_png), "--net", "tiny_cli_decoder",
                                 "--add-noise", "25", "--iters", "3", "-q", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.with_suffix(".json").read_text())["config"]["net"] == "tiny_cli_decoder"


def test_network_plugins_come_from_entry_points(registry, monkeypatch):
    import importlib.metadata

    import deepprior_cli.common as common
    from deepprior.nets import DeepDecoder

    class Entry:
        name, value = "plugin_decoder", "package.module:factory"

        def load(self):
            return DeepDecoder

    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [Entry()])
    common._load_plugins()
    assert "plugin_decoder" in deepprior.available_nets()


def test_a_plugin_neither_replaces_a_built_in_network_nor_breaks_a_command(
        registry, monkeypatch, capsys):
    import importlib.metadata

    import deepprior_cli.common as common
    from deepprior.nets import DeepDecoder

    class Entry:
        def __init__(self, name, load):
            self.name, self.value, self.load = name, f"package:{name}", load

    def broken():
        raise ImportError("no module named 'package'")

    built_in = deepprior.nets.build_net("deep_decoder", (1, 8, 8))[0]
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group: [
        Entry("deep_decoder", lambda: DeepDecoder), Entry("skip", lambda: DeepDecoder),
        Entry("broken", broken)])
    common._load_plugins()
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "warning: network plugin 'deep_decoder' (package:deep_decoder) was not loaded: a "
        "built-in network has that name",
        "warning: network plugin 'skip' (package:skip) was not loaded: a built-in network has "
        "that name",
        "warning: network plugin 'broken' (package:broken) was not loaded: no module named "
        "'package'"]
    again = deepprior.nets.build_net("deep_decoder", (1, 8, 8))[0]
    assert type(again) is type(built_in) and "broken" not in deepprior.available_nets()


@pytest.mark.parametrize(("args", "message"), [
    (["--lr", "0"], "--lr must be a number in (0, 1e+06]"),  # after an estimated σ's note
    (["--regularizer-weight", "inf", "--regularizer", "tv"], "--regularizer-weight must be a "
                                                             "finite number >= 0, got inf"),
    (["-o", "{folder}"], "(the image output) is a directory; give a file name, e.g. -o "),
    (["-o", ".png"], "must be a file name ending in"),
    (["--sigma", "10", "--add-noise", "25"], "--add-noise sets the noise level it adds; --sigma "
                                             "is for an image already noisy: give one"),
])
def test_an_error_comes_alone_even_where_the_input_has_notes(clean_png, tmp_path, args,
                                                             message):
    """Without --sigma the noise level is estimated, and its note waits for the headline."""
    args = [a.replace("{folder}", str(tmp_path)) for a in args]
    result = runner.invoke(app, ["denoise", str(clean_png), *args])
    assert_one_line_error(result, message)
    assert result.stdout == "" and "note:" not in result.stderr


def test_a_noisy_float_image_is_fitted_as_it_is_and_a_clean_one_stays_in_range(tmp_path):
    """Noise simulated without clipping leaves [0, 1]: the observation is taken as it is (it
    was refused, with advice to clip, which biases the noise); the clean image is checked."""
    clean = deepprior.sample_image("camera", size=(40, 36))
    noisy = deepprior.add_gaussian_noise(clean, 0.1, seed=0)
    assert noisy.min() < 0 < 1 < noisy.max()
    np.save(tmp_path / "noisy.npy", noisy)
    np.save(tmp_path / "clean.npy", noisy)  # a "clean" image out of range
    out = tmp_path / "o.png"
    result = runner.invoke(app, ["denoise", str(tmp_path / "noisy.npy"), "--sigma", "25.5",
                                 "-o", str(out), *FAST])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["denoise", str(tmp_path / "noisy.npy"), "--clean",
                                 str(tmp_path / "clean.npy"), "-o", str(tmp_path / "p.png"),
                                 *FAST])
    assert_one_line_error(result, "clean.npy: values lie in")
    result = runner.invoke(app, ["denoise", str(tmp_path / "noisy.npy"), "--add-noise", "5",
                                 "-o", str(tmp_path / "q.png"), *FAST])  # IMAGE is the clean one
    assert_one_line_error(result, "noisy.npy: values lie in")


def test_an_image_below_conv_decoder_s_grid_is_refused_with_what_the_cli_can_do(tmp_path):
    """6x6 with --net conv_decoder: the library's advice was input_size=..., no CLI option."""
    save_image(tmp_path / "small.png", deepprior.sample_image("camera", size=6))
    result = runner.invoke(app, ["denoise", str(tmp_path / "small.png"), "--net", "conv_decoder",
                                 "-o", str(tmp_path / "o.png"), *FAST])
    assert_one_line_error(result, "the image is 6x6 pixels; --net conv_decoder reconstructs "
                                  "images of at least 8x8 (--net dip or deep_decoder from 4x4)")


def test_the_demo_refuses_a_sigma_it_does_not_have():
    """The demo adds σ = 25 itself: a --sigma of 15 was taken as the level, silently."""
    result = runner.invoke(app, ["denoise", "--sigma", "15", *FAST])
    assert_one_line_error(result, "the demo adds noise of std 25 and knows it: --sigma is for "
                                  "an IMAGE already noisy")


def test_outputs_behind_a_missing_folder_and_long_names_and_a_constant_image(tmp_path,
                                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_image(tmp_path / "black.png", np.zeros((16, 16)))
    long_name = "a" * 230 + ".png"  # the temporary names must not add to the limit
    for output, written in (("new/../out/z.png", "out/z.png"), (long_name, long_name)):
        result = runner.invoke(app, ["denoise", "black.png", "-o", output, *FAST])
        assert result.exit_code == 0, result.output
        assert (tmp_path / written).exists()
    assert not (tmp_path / "new").exists()
    result = runner.invoke(app, ["denoise", "black.png", "-o", "b.png", *FAST[:-1]])
    assert "note: the image looks noiseless (its estimated noise level is 0)" in result.stderr
    assert "Mean of empty slice" not in result.stderr and "nan" not in result.stderr


def test_an_image_whose_estimated_noise_is_beyond_the_scale_is_refused_before_the_fit(
        tmp_path, monkeypatch):
    """A checkerboard of single pixels reads as noise of std 1.48: the fit would stop at its
    first iteration (the library's message named sigma=..., and batch fitted it)."""
    fitted = []
    monkeypatch.setattr(deepprior, "reconstruct", lambda *a, **k: fitted.append(1))
    save_image(tmp_path / "checker.png", np.indices((16, 16)).sum(0) % 2 * 1.0)
    result = runner.invoke(app, ["denoise", str(tmp_path / "checker.png"), "-o",
                                 str(tmp_path / "o.png"), *FAST])
    assert_one_line_error(result, "the noise level estimated from the image, 1.48 (378 in "
                                  "0-255 units), is above 0.5")
    assert result.stderr.rstrip().endswith("pass --sigma N if it is noise")
    assert not fitted
    runner.invoke(app, ["denoise", str(tmp_path / "checker.png"), "--sigma", "10", "-o",
                        str(tmp_path / "o.png"), *FAST])
    assert fitted  # with the level given, it is fitted


def test_the_time_note_follows_a_fixed_stop(tmp_path):
    args = ["denoise", "--net", "dip", "--channels", "4", "-o", str(tmp_path / "o.png")]
    result = runner.invoke(app, [*args, "--stop", "fixed:2"])
    assert result.exit_code == 0, result.output
    assert "note: the Deep Image Prior runs" not in result.stderr


def test_out_of_memory_is_one_line(monkeypatch, tmp_path, clean_png):
    def allocate(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
                           "allocate memory: you tried to allocate 40000000000 bytes.")

    monkeypatch.setattr(deepprior, "reconstruct", allocate)
    result = runner.invoke(app, ["denoise", str(clean_png), "-o", str(tmp_path / "o.png"),
                                 *FAST])
    assert_one_line_error(result, "out of memory ([enforce fail at alloc_cpu.cpp:117] "
                                  "DefaultCPUAllocator: can't allocate memory")


def test_the_choice_line_counts_the_refits():
    from deepprior_cli.fitting import choice_line

    choice = [{"weight": 0, "holdout_loss": 1.0, "chosen": True, "margin_z": None},
              {"weight": 0.1, "holdout_loss": 2.0, "chosen": False, "margin_z": 5.0}]
    assert choice_line(choice).endswith("its fit averaged with a fit to all the data")
    assert choice_line(choice, 2).endswith("its fit averaged with 2 fits to all the data")


def test_ctrl_c_during_the_choice_does_not_claim_a_choice_or_an_average(clean_png, tmp_path,
                                                                        monkeypatch):
    interrupt_at(4, monkeypatch)  # in the first weight's fit: no other weight, no refit
    result = runner.invoke(app, ["denoise", str(clean_png), "--add-noise", "25", "--regularizer",
                                 "auto", "-o", str(tmp_path / "o.png"), *FAST[:-1]])
    assert result.exit_code == 130, result.output
    line = next(t for t in result.stdout.splitlines() if t.startswith("regularizer:"))
    assert line.startswith("regularizer: none, the lowest held-out loss of the 1 weight(s) "
                           "fitted before the stop (none ")
    assert "averaged" not in line  # before: "its fit averaged with a fit to all the data"


def test_a_fit_whose_loss_was_never_finite_writes_nothing(clean_png, tmp_path):
    """Fewer iterations than the guard's restarts: the budget ends before it gives up."""
    out = tmp_path / "o.png"
    result = runner.invoke(app, ["denoise", str(clean_png), "--sigma", "10", "--regularizer",
                                 "tv", "--regularizer-weight", "1e308", "--iters", "3",
                                 "--channels", "4", "-q", "-o", str(out)])
    assert result.exit_code == 3, result.output
    assert "the fit diverged (no finite loss in 3 iterations); no iteration was accepted, " \
        "nothing was written" in result.stderr
    assert not out.exists()


def test_overwriting_an_output_whose_name_is_near_the_file_systems_limit(tmp_path):
    from deepprior_cli.outputs import Staging

    target = tmp_path / ("x" * 240 + ".png")  # 244 characters: a backup named after it
    target.write_bytes(b"old")  # whole ran past 255 and failed after the fit
    staging = Staging(overwrite=True)
    staging.add(target, lambda temporary: temporary.write_bytes(b"new"))
    assert staging.commit() == [target]
    assert target.read_bytes() == b"new" and sorted(tmp_path.iterdir()) == [target]


def test_library_messages_name_the_options_that_set_their_arguments(clean_png, tmp_path):
    """The library's warnings and errors named max_num_iter=, stop='...', regularizer=...;
    the command line says --iters, --stop, --regularizer."""
    from deepprior_cli.common import cli_words

    result = runner.invoke(app, ["denoise", str(clean_png), "--net", "deep_decoder",
                                 "--channels", "8", "--iters", "3", "--stop", "fixed:5", "-o",
                                 str(tmp_path / "o.png")])
    assert result.exit_code == 0, result.output
    assert "warning: --stop fixed:5 runs 5 iterations and --iters 3 allows 3" in result.stderr
    assert cli_words("pass ensemble=1 and regularizer='none', or sigma=2, got "
                     "regularizer_weight=[]; pass sigma=...") == (
        "pass --ensemble 1 and --regularizer none, or sigma=2, got --regularizer-weight []; "
        "pass the noise level (--sigma, or --noise-sigma)")
