"""``deepprior analyze`` through typer's CliRunner: files written, summary, error paths."""

import json

import pytest
from cli_asserts import assert_one_line_error
from typer.testing import CliRunner

from deepprior import sample_image, save_image
from deepprior_cli.main import app

runner = CliRunner()
TINY = ["--net", "conv_generator", "--channels", "3", "--iters", "6", "--every", "2",
        "--curvature-every", "3", "--curvature-iters", "4"]
FILES = ["analysis.json", "grad_norms.png", "conditioning.png", "oscillation.png",
         "effective_rank.png", "loss.png"]



@pytest.fixture
def image_png(tmp_path):
    path = tmp_path / "img.png"
    save_image(path, sample_image("camera", size=(23, 17)))
    return path


def test_all_norms_write_report_plots_and_summary(image_png, tmp_path):
    out = tmp_path / "analysis"
    result = runner.invoke(app, ["analyze", str(image_png), "--norm", "all", "-o", str(out),
                                 "--sigma", "25", *TINY])
    assert result.exit_code == 0, result.output
    for name in FILES:
        assert (out / name).stat().st_size > (1000 if name.endswith(".png") else 100), name
    report = json.loads((out / "analysis.json").read_text())
    assert list(report["runs"]) == ["channel", "none", "batch"]
    assert report["sigma_255"] == pytest.approx(25) and report["image_shape"] == [23, 17]
    run = report["runs"]["channel"]
    assert run["num_steps"] == 6 and len(run["history"]["loss"]) == 6
    diagnostics = run["diagnostics"]
    assert diagnostics["layers"] == ["body.0.0", "body.1.0", "body.2.0", "body.3.0",
                                     "body.4.0", "body.5.0", "body.6.0"]
    assert diagnostics["grad_norm"]["steps"] == [1, 2, 4, 6]
    assert diagnostics["condition_number"]["steps"] == [1, 3, 6]
    assert set(report["comparison"]) == {"channel_vs_none", "batch_vs_none"}
    # same seed, same initial weights: BatchNorm on one image in train mode is channel norm
    assert (report["runs"]["batch"]["summary"]["grad_norm_first"]
            == pytest.approx(run["summary"]["grad_norm_first"], rel=1e-5))
    for norm in ("channel", "none", "batch"):
        assert f"\n{norm} " in result.stdout
    assert "first-layer gradient norm at iteration 1: none" in result.stdout
    assert "orders of magnitude" in result.stdout


def test_default_image_one_norm_without_curvature(tmp_path):
    out = tmp_path / "res"
    args = ["analyze", "--size", "16", "--norm", "none", "--curvature-every", "0", "-o",
            str(out), "--quiet", *TINY[:8]]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    report = json.loads((out / "analysis.json").read_text())
    assert list(report["runs"]) == ["none"] and report["comparison"] == {}
    assert report["input"] == "sample image camera resized to 16x16"
    assert "condition_number" not in report["runs"]["none"]["diagnostics"]
    assert not (out / "conditioning.png").exists()


def test_existing_outputs_are_kept_without_overwrite(image_png, tmp_path):
    out = tmp_path / "res"
    out.mkdir()
    (out / "analysis.json").write_text("keep")
    args = ["analyze", str(image_png), "--norm", "channel", "-o", str(out), "--quiet",
            *TINY[:4], "--iters", "2", "--curvature-every", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "already exists" in result.stderr and "--overwrite" in result.stderr
    assert (out / "analysis.json").read_text() == "keep"
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
    assert json.loads((out / "analysis.json").read_text())["command"] == "analyze"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--sigma", "-3"], "--sigma must be a noise std in 0-255 units, > 0"),
        (["{missing}"], "missing.png"),
        (["--device", "cuda:99"], "--device cuda:99: "),  # before the first fit's headline
        (["--lr", "-1"], "--lr must be a number in (0, 1e+06], got -1"),
        (["--lr", "nan"], "--lr must be a number in (0, 1e+06], got nan"),
    ],
)
def test_errors_are_one_line(extra, message, tmp_path):
    extra = [e.replace("{missing}", str(tmp_path / "missing.png")) for e in extra]
    result = runner.invoke(app, ["analyze", "-o", str(tmp_path / "o"), *extra])
    assert_one_line_error(result, message)
    assert result.stdout == ""


def test_a_norm_not_among_the_choices_is_a_usage_error(tmp_path):
    """Exit 2, as every command's --norm (it was exit 1 here)."""
    result = runner.invoke(app, ["analyze", "-o", str(tmp_path / "o"), "--norm", "layer"])
    assert result.exit_code == 2 and "'layer' is not one of" in result.output
    assert not (tmp_path / "o").exists()


def test_default_output_folder_next_to_the_image(image_png):
    args = ["analyze", str(image_png), "--norm", "channel", "--quiet", *TINY[:4], "--iters",
            "2", "--curvature-every", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((image_png.parent / "img_analysis" / "analysis.json").read_text())


@pytest.mark.parametrize(
    ("output", "message"),
    [("{img}", "is a file"), ("{ro}", "permission denied")],
)
def test_outputs_checked_before_fitting(image_png, tmp_path, monkeypatch, output, message):
    import os

    readable = os.access
    monkeypatch.setattr(os, "access",
                        lambda path, mode: not mode & os.W_OK and readable(path, mode))
    output = output.replace("{img}", str(image_png)).replace("{ro}", str(tmp_path / "ro"))
    result = runner.invoke(app, ["analyze", str(image_png), "-o", output, *TINY[:4]])
    assert result.exit_code == 1 and message in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.png"]


def test_net_choices_are_validated_by_typer():
    assert "analyze" in runner.invoke(app, ["--help"]).output
    assert runner.invoke(app, ["analyze", "--net", "unet"]).exit_code == 2


def test_every_series_ends_at_the_last_iteration(tmp_path):
    out = tmp_path / "res"
    result = runner.invoke(app, ["analyze", "--size", "16", "--norm", "none", "-o", str(out),
                                 "--quiet", *TINY[:4], "--iters", "5", "--every", "2",
                                 "--curvature-every", "3", "--curvature-iters", "4"])
    assert result.exit_code == 0, result.output
    diagnostics = json.loads((out / "analysis.json").read_text())["runs"]["none"]["diagnostics"]
    assert diagnostics["loss"]["steps"] == [1, 2, 4, 5]
    assert diagnostics["grad_norm"]["steps"] == diagnostics["effective_rank"]["steps"] == [
        1, 2, 4, 5]
    assert diagnostics["grad_cosine"]["steps"] == [2, 4, 5]
    assert diagnostics["condition_number"]["steps"] == [1, 3, 5]


def test_without_curvature_an_earlier_conditioning_plot_is_not_in_the_way(tmp_path):
    """Not refused without --overwrite (this run does not write it); removed with it, so that
    the folder holds one run's results."""
    out = tmp_path / "res"
    out.mkdir()
    (out / "conditioning.png").write_bytes(b"an earlier run's")
    args = ["analyze", "--size", "16", "--norm", "none", "-o", str(out), *TINY[:4], "--iters",
            "2", "--curvature-every", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "conditioning.png").read_bytes() == b"an earlier run's"
    result = runner.invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert "; removed an earlier run's conditioning.png" in result.stdout
    assert not (out / "conditioning.png").exists()


def test_ctrl_c_before_a_fit_s_first_iteration_keeps_the_runs_before_it(tmp_path, monkeypatch):
    import importlib

    member = importlib.import_module("deepprior.fit")._Member
    calls = []
    real_loss = member.loss

    def loss(member, out):  # Ctrl-C in the first iteration of the second fit
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_loss(member, out)

    monkeypatch.setattr(member, "loss", loss)
    out = tmp_path / "res"
    result = runner.invoke(app, ["analyze", "--size", "16", "--norm", "all", "-o", str(out),
                                 *TINY[:4], "--iters", "2", "--curvature-every", "0"])
    assert result.exit_code == 130, result.output
    report = json.loads((out / "analysis.json").read_text())
    assert list(report["runs"]) == ["channel", "none"]
    assert report["runs"]["none"]["final_loss"] is None
    assert report["runs"]["channel"]["num_steps"] == 2


def test_every_norms_call_is_checked_before_the_first_fit(image_png, tmp_path, registry):
    import deepprior
    from deepprior.nets import DeepDecoder

    deepprior.register_net("fixed_norm", lambda shape, channels=4: DeepDecoder(
        shape, channels=channels))  # no norm option: only --norm channel can run
    result = runner.invoke(app, ["analyze", str(image_png), "--net", "fixed_norm", "--iters",
                                 "2", "-o", str(tmp_path / "a")])  # --norm all, the default
    assert_one_line_error(result, "network 'fixed_norm' has no norm option")
    assert result.stdout == "" and not (tmp_path / "a").exists()  # no fit ran first
