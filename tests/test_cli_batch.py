"""``deepprior batch``: outputs and summary, failures, reruns, Ctrl-C, inputs, engines.

Six tiny noisy images (16x16 to 32x32, two in colour), 8 iterations of an 8-channel decoder.
What costs time is starting processes: the two-worker run (in a subprocess where ``import ray``
fails) and the Ray run happen once each, and the other runs fit in this process
(``--workers 1``).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

import deepprior
from deepprior import (
    GaussianSensing,
    add_gaussian_noise,
    item_seed,
    load_image,
    sample_image,
    save_image,
    simulate_measurements,
)
from deepprior_cli.batching import expand_inputs
from deepprior_cli.main import app

runner = CliRunner()
FAST = ["--iters", "8", "--stop", "fixed:8", "--channels", "8"]
SIZES = [(16, 16), (20, 24), (24, 20, 3), (32, 32), (28, 16), (16, 28, 3)]
NAMES = [f"img{i}" for i in range(len(SIZES))]



@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """photos/ (noisy) and clean/ (their clean images), named img0 ... img5."""
    root = tmp_path_factory.mktemp("batch")
    camera, astronaut = sample_image("camera", size=64), sample_image("astronaut", size=64)
    for i, size in enumerate(SIZES):
        clean = (astronaut if len(size) == 3 else camera)[8:8 + size[0], 4:4 + size[1]]
        save_image(root / "clean" / f"img{i}.png", clean)
        save_image(root / "photos" / f"img{i}.png",
                   np.clip(add_gaussian_noise(clean, 0.1, seed=i), 0, 1))
    return root


def batch(*args):
    return runner.invoke(app, ["batch", *map(str, args)])


def summary_of(folder):
    return json.loads((folder / "summary.json").read_text())


def statuses(folder):
    return {row["name"]: row["status"] for row in summary_of(folder)["items"]}


def outputs(folder, ext="png"):
    return sorted(p.name for p in folder.iterdir() if p.suffix == f".{ext}"
                  and not p.stem.endswith("_curve"))


def assert_same_images(first, second):
    for name in NAMES:
        np.testing.assert_array_equal(np.load(first / f"{name}.npy"),
                                      np.load(second / f"{name}.npy"))


# --------------------------------------------------------------------------- local workers


BLOCK_RAY = """
import sys
sys.modules["ray"] = None  # as if Ray were not installed: `import ray` raises ImportError
"""


@pytest.fixture(scope="module")
def two_workers(data, tmp_path_factory):
    """The batch on two worker processes, run where Ray cannot be imported (workers too)."""
    blocker = tmp_path_factory.mktemp("no_ray")
    (blocker / "sitecustomize.py").write_text(BLOCK_RAY)
    out = data / "two_workers"
    env = {**os.environ, "PYTHONPATH": str(blocker)}
    done = subprocess.run(
        [sys.executable, "-m", "deepprior", "batch", "denoise", data / "photos", "-o", out,
         "--clean", data / "clean", "--workers", "2", "--ext", "npy", *FAST],
        env=env, capture_output=True, text=True, timeout=300, check=False)
    return out, done


def test_two_workers_write_every_output_and_the_summary_without_ray(two_workers):
    out, done = two_workers
    assert done.returncode == 0, done.stderr
    assert outputs(out, "npy") == [f"{name}.npy" for name in NAMES]
    for name in NAMES:
        assert (out / f"{name}_curve.png").stat().st_size > 1000
        report = json.loads((out / f"{name}.json").read_text())
        assert report["command"] == "denoise" and report["num_steps"] == 8
        seconds = report["batch"].pop("seconds")  # reading the file and fitting
        assert 0 < seconds and report["batch"] == {"name": name, "seed": 0,
                                                   "item_seed": item_seed(0, name),
                                                   "threads": 1, "engine": "local"}
        assert report["config"]["seed"] == item_seed(0, name) and report["psnr"] is not None
    summary = summary_of(out)
    assert summary["done"] == summary["images"] == 6 and summary["failed"] == 0
    assert summary["engine"] == "local" and summary["workers"] == 2
    assert summary["images_per_minute"] > 0 and summary["exit_code"] == 0
    rows = summary["items"]
    assert [row["name"] for row in rows] == NAMES  # input order, not finishing order
    assert all(row["stop"] == "fixed" and row["psnr"] > 0 and row["num_iter"] == 8
               for row in rows)
    csv = (out / "summary.csv").read_text().splitlines()
    assert csv[0].startswith("name,status,num_iter") and len(csv) == 7
    assert all(",done,8,8,fixed," in line for line in csv[1:])
    assert "done img3: fixed, iteration 8, " in done.stdout and " dB, " in done.stdout
    assert "6 images: 6 done, 0 failed, 0 skipped" in done.stdout


@pytest.fixture(scope="module")
def one_worker(data):
    """The same batch in this process (``--workers 1``)."""
    out = data / "one_worker"
    args = ["denoise", data / "photos", "-o", out, "--clean", data / "clean", "--workers", "1",
            "--ext", "npy", *FAST]
    return out, args, batch(*args)


def test_one_worker_and_the_single_command_give_the_same_images(two_workers, one_worker, data,
                                                                tmp_path):
    out, _, result = one_worker
    assert result.exit_code == 0, result.output
    assert_same_images(two_workers[0], out)
    single = tmp_path / "single.npy"  # the single command at the item's seed repeats it
    result = runner.invoke(app, ["denoise", str(data / "photos" / "img2.png"), "-o", str(single),
                                 "--seed", str(item_seed(0, "img2")), "--threads", "1", "-q",
                                 *FAST])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.load(single), np.load(out / "img2.npy"))


def test_ray_gives_the_same_images(two_workers, data, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "ray"
    result = batch("denoise", data / "photos", "-o", out, "--clean", data / "clean",
                   "--ray", "local", "--workers", "2", "--ext", "npy", "-q", *FAST)
    assert result.exit_code == 0, result.output
    assert_same_images(two_workers[0], out)
    summary = summary_of(out)
    assert summary["engine"] == "ray" and summary["ray"] == "local" and summary["done"] == 6


# --------------------------------------------------------------------------- nothing lost


def test_a_corrupt_file_fails_alone_and_the_exit_code_says_so(data, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in NAMES[:5]:
        (photos / f"{name}.png").write_bytes((data / "photos" / f"{name}.png").read_bytes())
    (photos / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    out = tmp_path / "out"
    result = batch("denoise", photos, "-o", out, "--workers", "1", *FAST)
    assert result.exit_code == 1, result.output
    assert outputs(out) == sorted(f"{name}.png" for name in NAMES[:5])
    assert not (out / "broken.json").exists()
    summary = summary_of(out)
    assert (summary["done"], summary["failed"], summary["exit_code"]) == (5, 1, 1)
    (broken,) = [row for row in summary["items"] if row["status"] == "failed"]
    assert broken["name"] == "broken" and "broken.png" in broken["error"]
    assert "\n" not in broken["error"]
    assert "failed: broken: " in result.stderr
    assert "broken,failed," in (out / "summary.csv").read_text()


def test_a_rerun_skips_finished_images_and_force_redoes_them(one_worker, two_workers):
    out, args, _ = one_worker
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()
              if not p.name.startswith("summary")}
    first = {row["name"]: row for row in summary_of(out)["items"]}
    result = batch(*args)
    assert result.exit_code == 0, result.output
    assert "0 to fit" in result.stdout and "6 skipped" in result.stdout
    assert stamps == {name: (out / name).stat().st_mtime_ns for name in stamps}
    for row in summary_of(out)["items"]:  # skipped, with the numbers of its report
        assert row["status"] == "skipped"
        assert row["psnr"] == pytest.approx(first[row["name"]]["psnr"])
        assert row["num_iter"] == 8 and row["stop"] == "fixed"
        assert row["seconds"] == first[row["name"]]["seconds"]  # reading and fitting, as done
    result = batch(*args, "--force", "-q")
    assert result.exit_code == 0, result.output
    assert set(statuses(out).values()) == {"done"}
    assert all((out / name).stat().st_mtime_ns > stamp for name, stamp in stamps.items())
    assert_same_images(two_workers[0], out)


def test_a_rerun_skips_an_image_whose_report_is_not_a_report(tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir(), out.mkdir()
    image = deepprior.sample_image("camera", size=16)
    deepprior.save_image(photos / "x.png", image), deepprior.save_image(out / "x.png", image)
    (out / "x.json").write_text("[1, 2]")  # another program's JSON: a traceback before
    result = batch("denoise", photos, "-o", out, "--workers", "1", "-q", *FAST)
    assert result.exit_code == 0, result.output
    assert statuses(out) == {"x": "skipped"}


def interrupt_after(count, monkeypatch):
    """Ctrl-C while the batch waits for its next fit, once ``count`` images are finished."""
    real = deepprior.reconstruct_many

    def reconstruct_many(*args, **kwargs):
        results = real(*args, **kwargs)
        try:
            for _ in range(count):
                yield next(results)
            raise KeyboardInterrupt
        finally:
            results.close()

    monkeypatch.setattr(deepprior, "reconstruct_many", reconstruct_many)


def interrupt_writing(count, monkeypatch):
    """Ctrl-C while the image after the first ``count`` is being written."""
    from deepprior_cli.outputs import Outputs

    real, written = Outputs.write, []

    def write(self, *args, **kwargs):
        if len(written) == count:
            raise KeyboardInterrupt
        written.append(self.image)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Outputs, "write", write)


@pytest.mark.parametrize("interrupt", [interrupt_after, interrupt_writing])
def test_ctrl_c_keeps_the_finished_images_writes_the_summary_and_exits_130(
        data, tmp_path, monkeypatch, interrupt):
    interrupt(2, monkeypatch)
    out = tmp_path / "out"
    result = batch("denoise", data / "photos", "-o", out, "--workers", "1", *FAST)
    assert result.exit_code == 130, result.output
    assert outputs(out) == ["img0.png", "img1.png"]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []
    summary = summary_of(out)
    assert summary["status"] == "interrupted" and summary["exit_code"] == 130
    assert (summary["done"], summary["interrupted"]) == (2, 4)
    assert "interrupted (Ctrl-C): kept 2 finished images" in result.stderr
    monkeypatch.undo()  # the same command again does the rest
    result = batch("denoise", data / "photos", "-o", out, "--workers", "1", "-q", *FAST)
    assert result.exit_code == 0
    assert list(statuses(out).values()) == ["skipped"] * 2 + ["done"] * 4


# --------------------------------------------------------------------------- inputs


def test_inputs_from_folders_globs_and_lists(data, tmp_path, monkeypatch):
    monkeypatch.chdir(data)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"")
    save_image(tmp_path / "b.png", np.zeros((8, 8)))
    save_image(tmp_path / "a.tif", np.zeros((8, 8)))
    (tmp_path / "c.ppm").write_bytes(b"P6 1 1 65535 " + bytes(6))  # a raw converter's output
    assert [p.name for p in expand_inputs([str(tmp_path)])] == ["a.tif", "b.png", "c.ppm"]
    assert [p.name for p in expand_inputs(["photos/img[01].png", "photos/img0.png"])] == [
        "img0.png", "img1.png"]  # a file named twice counts once
    listing = tmp_path / "list.txt"
    listing.write_text("# my images\nphotos/img3.png\n\nphotos/img4*\n")
    assert [p.name for p in expand_inputs([f"@{listing}"])] == ["img3.png", "img4.png"]
    for spec, message in [("nope.png", "nope.png: no such file or folder"),
                          ("photos/*.jpg", "matches no input file"),
                          (f"@{tmp_path / 'missing.txt'}", "no such list file")]:
        with pytest.raises(ValueError, match=message):
            expand_inputs([spec])

    out = tmp_path / "out"  # through the command, with an ensemble of 2 fits per image
    result = batch("denoise", "photos/img[01].png", f"@{listing}", "-o", out, "--workers", "1",
                   "--ensemble", "2", "-q", *FAST)
    assert result.exit_code == 0, result.output
    assert list(statuses(out)) == ["img0", "img1", "img3", "img4"]
    report = json.loads((out / "img3.json").read_text())
    assert report["config"]["ensemble"] == 2 and len(report["config"]["members"]) == 2
    assert summary_of(out)["items"][0]["stop"] == "2 fits, first: fixed"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{photos}", "-o", "{file}"], "is a file; a batch writes into a folder"),
        (["{photos}", "-o", "{photos}"], "holds the input"),
        (["{photos}", "{tmp}/img0.png", "-o", "{out}"], "taken by several inputs"),
        (["{photos}", "-o", "{out}", "--clean", "{file}"], "--clean {file}: not a folder"),
        (["{photos}", "-o", "{out}", "--clean", "{clean}", "--add-noise", "25"],
         "--clean is not needed"),
        (["{photos}", "-o", "{out}", "--stop", "oracle"], "--clean DIR"),
        (["{photos}", "-o", "{out}", "--gpus-per-fit", "2"], "--gpus-per-fit is the share"),
        (["{photos}", "-o", "{out}", "--gpus-per-fit", "0.5", "--device", "cpu"],
         "--gpus-per-fit needs a CUDA device, and the fits would run on cpu"),
        (["{tmp}/nothing*.png", "-o", "{out}"], "matches no input file"),
        (["{photos}", "-o", "{out}", "--sigma", "0"], "--sigma must be a noise std"),
    ],
)
def test_errors_before_any_fit_are_one_line_and_write_nothing(data, tmp_path, args, message):
    (tmp_path / "file").write_text("")
    save_image(tmp_path / "img0.png", np.zeros((8, 8)))
    names = {"{photos}": data / "photos", "{clean}": data / "clean", "{file}": tmp_path / "file",
             "{out}": tmp_path / "out", "{tmp}": tmp_path}
    for key, value in names.items():
        args = [a.replace(key, str(value)) for a in args]
        message = message.replace(key, str(value))
    before = sorted(data.rglob("*"))
    result = batch("denoise", *FAST, *args)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "out").exists() and sorted(data.rglob("*")) == before


# --------------------------------------------------------------------------- every task


@pytest.fixture
def measurements(tmp_path):
    """Two measurement files of 16x16 images, and the matrix."""
    operator = GaussianSensing(100, (1, 16, 16), seed=3)
    matrix = operator.matrix.cpu().numpy()
    np.save(tmp_path / "A.npy", matrix)
    folder = tmp_path / "y"
    folder.mkdir()
    scenes = [sample_image("camera", size=16), sample_image("camera", size=32)[8:24, 8:24]]
    for i, image in enumerate(scenes):
        y, _ = simulate_measurements(operator, image, seed=i)
        np.save(folder / f"scene{i}.npy", y.reshape(-1))
    return tmp_path


@pytest.mark.parametrize(
    ("task", "args", "shape"),
    [
        ("inpaint", ["--missing", "0.3"], (24, 20)),
        ("inpaint", ["--mask", "{mask}"], (24, 20)),
        ("superres", ["--factor", "2", "--simulate", "--add-noise", "5"], (24, 20)),
        ("deblur", ["--kernel", "gaussian:1", "--simulate"], (24, 20)),
        ("cs", ["--matrix", "{matrix}"], (16, 16)),
    ],
)
def test_every_task_runs_in_a_batch(data, tmp_path, measurements, task, args, shape):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for i in range(2):
        save_image(inputs / f"in{i}.png", sample_image("camera", size=(24, 20)) * (0.5 + i / 4))
    mask = np.ones((24, 20))
    mask[4:10, 5:15] = 0
    save_image(tmp_path / "mask.png", mask)
    args = [a.replace("{mask}", str(tmp_path / "mask.png"))
            .replace("{matrix}", str(measurements / "A.npy")) for a in args]
    source = measurements / "y" if task == "cs" else inputs
    out = tmp_path / "out"
    result = batch(task, source, *args, "-o", out, "--workers", "1", "-q", *FAST)
    assert result.exit_code == 0, result.output
    rows = summary_of(out)["items"]
    assert [row["status"] for row in rows] == ["done", "done"]
    for row in rows:
        assert load_image(row["output"]).shape == shape
        assert json.loads((out / f"{row['name']}.json").read_text())["command"] == task
    if "--simulate" in args or "--missing" in args:
        assert all(row["psnr"] is not None for row in rows)


def test_a_batch_says_which_inputs_superres_crops(tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for i, size in enumerate([(24, 20), (24, 18)]):
        save_image(inputs / f"in{i}.png", sample_image("camera", size=size))
    out = tmp_path / "out"
    result = batch("superres", inputs, "--factor", "3", "--simulate", "-o", out, "--workers",
                   "1", *FAST)
    assert result.exit_code == 0, result.output
    assert (f"{inputs / 'in0.png'} is 24x20, not a multiple of --factor 3: cropped to 24x18"
            in result.output)
    assert "in1.png is" not in result.output
    assert load_image(out / "in0.png").shape == (24, 18)


def test_a_mask_of_the_wrong_size_fails_that_image_only(data, tmp_path):
    save_image(tmp_path / "mask.png", np.ones((16, 16)))
    out = tmp_path / "out"
    result = batch("inpaint", data / "photos" / "img0.png", data / "photos" / "img1.png",
                   "--mask", tmp_path / "mask.png", "-o", out, "--workers", "1", "-q", *FAST)
    assert result.exit_code == 1
    assert statuses(out) == {"img0": "done", "img1": "failed"}
    assert "is 16x16 but IMAGE is 20x24" in summary_of(out)["items"][1]["error"]


# --------------------------------------------------------------------------- options


def test_threads_are_the_threads_per_fit(data, tmp_path, monkeypatch):
    seen = {}
    real = deepprior.reconstruct_many

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(deepprior, "reconstruct_many", spy)
    result = batch("denoise", data / "photos" / "img0.png", "-o", tmp_path / "out", "--threads",
                   "2", "--workers", "1", "--json", *FAST, "--iters", "2", "--stop", "fixed:2")
    assert result.exit_code == 0, result.output
    assert seen["cpus_per_fit"] == 2 and seen["workers"] == 1
    summary = json.loads(result.stdout)
    assert summary["threads_per_fit"] == 2 and summary["done"] == 1


def test_help_of_every_task(data):
    for task in ("denoise", "inpaint", "superres", "deblur", "cs"):
        result = batch(task, "--help")
        assert result.exit_code == 0
        for option in ("--workers", "--ray", "--gpus-per-fit", "--force", "--threads",
                       "--ensemble", "--clean", "--output"):
            assert option in result.output
        assert "--overwrite" not in result.output
        assert "some inputs failed" in " ".join(result.output.split())
    assert "deepprior batch denoise photos/ -o out/" in batch("--help").output
    assert batch("denoise", data / "photos").exit_code == 2  # -o OUTDIR is required


def test_a_tv_penalty_without_its_weight_outside_denoising_fails_before_any_fit(data, tmp_path):
    result = batch("deblur", data / "photos", "-o", tmp_path / "out", "--kernel", "gaussian:1",
                   "--regularizer", "tv", *FAST)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and "--regularizer tv needs --regularizer-weight W" in lines[0]
    assert not (tmp_path / "out").exists()


def test_an_input_whose_image_would_be_another_inputs_plot_is_refused_before_any_fit(
        data, tmp_path):
    photos = tmp_path / "photos"
    for name in ("a", "a_curve"):  # a's plot is a_curve.png, the image of input a_curve
        save_image(photos / f"{name}.png", load_image(data / "photos" / "img0.png"))
    result = batch("denoise", photos, "-o", tmp_path / "out", "--workers", "1", *FAST)
    assert result.exit_code == 1 and "would both write" in result.stderr
    assert str(tmp_path / "out" / "a_curve.png") in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("folds", [False, True])
def test_names_that_differ_in_case_clash_only_where_the_file_system_folds_case(
        data, tmp_path, monkeypatch, folds):
    """On macOS or Windows (folding case), A.png and a.png would write one a.png: the second
    overwritten, or skipped as done on a rerun. Refused there before any fit, as is an input
    whose report would be the batch's summary.json."""
    from deepprior_cli.outputs import folds_case

    if folds_case(tmp_path):
        pytest.skip("this file system folds case: A.png and a.png cannot both exist")
    monkeypatch.setattr("deepprior_cli.batching.folds_case", lambda folder: folds)
    photos, out = tmp_path / "photos", tmp_path / "out"
    for name in ("A", "a"):
        save_image(photos / f"{name}.png", load_image(data / "photos" / "img0.png"))
    result = batch("denoise", photos, "-o", out, "--workers", "1", *FAST)
    if folds:
        assert result.exit_code == 1 and "output name(s) are taken by several inputs, e.g. " \
            f"{photos / 'A.png'}, {photos / 'a.png'} would all write" in result.stderr
        assert not out.exists()
    else:
        assert result.exit_code == 0 and statuses(out) == {"A": "done", "a": "done"}
    for name in ("summary", "Summary"):  # the batch's own summary.json
        (photos / "a.png").rename(photos / f"{name}.png")
        result = batch("denoise", photos / f"{name}.png", "-o", tmp_path / name,
                       "--workers", "1", *FAST)
        if folds or name == "summary":
            assert result.exit_code == 1 and f"the input {photos / name}.png would write " \
                f"{tmp_path / name / name}.json, the batch's summary" in result.stderr
            assert not (tmp_path / name).exists()
        else:
            assert result.exit_code == 0 and statuses(tmp_path / name) == {name: "done"}
        (photos / f"{name}.png").rename(photos / "a.png")


def test_the_case_probe_finds_what_the_file_system_does(tmp_path):
    from deepprior_cli.outputs import folds_case

    (tmp_path / "Probe").write_text("x")
    assert folds_case(tmp_path / "missing" / "folder") == (tmp_path / "PROBE").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["Probe"]  # the probe file is gone


@pytest.mark.parametrize("budget", [[], ["--iters", "2", "--stop", "fixed:2"]])
def test_a_fit_with_no_accepted_iteration_writes_nothing_and_a_rerun_redoes_it(data, tmp_path,
                                                                               budget):
    """Also when the budget runs out before the divergence guard gives up (status "done"):
    before, that wrote the untrained network's image and called it done."""
    out = tmp_path / "out"
    args = ["denoise", data / "photos" / "img0.png", "-o", out, "--workers", "1", "--net",
            "deep_decoder", "--regularizer", "tv", *FAST, *budget]
    result = batch(*args, "--regularizer-weight", "1e300")  # diverges at once
    assert result.exit_code == 1, result.output
    (row,) = summary_of(out)["items"]
    assert row["status"] == "failed" and "before any iteration was accepted" in row["error"]
    assert sorted(p.name for p in out.iterdir()) == ["summary.csv", "summary.json"]
    result = batch(*args, "--regularizer-weight", "0.01")
    assert result.exit_code == 0 and statuses(out) == {"img0": "done"}


def test_a_name_that_is_not_utf8_still_gets_its_summary(data, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    odd = os.fsdecode(b"\xffx.png")  # bytes no encoding decodes: a surrogate in the name
    (photos / odd).write_bytes((data / "photos" / "img0.png").read_bytes())
    out = tmp_path / "out"
    result = batch("denoise", photos, "-o", out, "--workers", "1", *FAST)
    assert result.exit_code == 0, result.output
    assert (out / "summary.csv").read_bytes().splitlines()[1].startswith(b"\xffx,done,")


def test_the_error_for_an_existing_output_names_the_batchs_option(data, tmp_path):
    out = tmp_path / "out"
    args = ["denoise", data / "photos" / "img0.png", "-o", out, "--workers", "1", *FAST]
    assert batch(*args).exit_code == 0
    result = batch(*args, "--ext", "tif")  # img0.tif is new, its report img0.json is not
    assert statuses(out) == {"img0": "failed"}
    error = summary_of(out)["items"][0]["error"]
    assert "pass --force to replace it" in error and "--overwrite" not in error
    assert result.exit_code == 1


def test_measurement_files_with_their_own_noise_levels_keep_them(tmp_path):
    """Files saved with different levels (one noiseless): each is fitted with its own."""
    operator = GaussianSensing(100, (1, 16, 16), seed=3)
    folder = tmp_path / "y"
    folder.mkdir()
    for name, sigma in (("noisy", 0.05), ("clean", None)):
        y, _ = simulate_measurements(operator, sample_image("camera", size=16), sigma=sigma)
        np.savez(folder / f"{name}.npz", y=y, operator=json.dumps(operator.describe()),
                 sigma=np.nan if sigma is None else sigma)
    out = tmp_path / "out"
    result = batch("cs", folder, "-o", out, "--workers", "1", "-q", *FAST)
    assert result.exit_code == 0, result.output  # before: refused, "different noise levels"
    noisy, clean = (json.loads((out / f"{name}.json").read_text())["config"]["sigma"]
                    for name in ("noisy", "clean"))
    assert noisy == pytest.approx(0.05) and clean is None
    # --stop discrepancy: the file without a saved σ fails alone, the other is fitted
    result = batch("cs", folder, "-o", tmp_path / "disc", "--workers", "1", "-q",
                   *FAST[:2], "--stop", "discrepancy", *FAST[4:])
    assert statuses(tmp_path / "disc") == {"noisy": "done", "clean": "failed"}, result.output
    assert "clean.npz holds no noise level" in summary_of(tmp_path / "disc")["items"][0]["error"]


def test_the_tasks_own_file_in_the_inputs_folder_is_not_an_input(data, tmp_path, monkeypatch):
    folder = tmp_path / "damaged"
    folder.mkdir()
    for name in ("img0", "img1"):
        (folder / f"{name}.png").write_bytes((data / "photos" / f"{name}.png").read_bytes())
    save_image(folder / "mask.png", np.ones((16, 16)))
    out = tmp_path / "out"
    result = batch("inpaint", folder, "--mask", folder / "mask.png", "-o", out, "--workers", "1",
                   "-q", *FAST)
    assert sorted(statuses(out)) == ["img0", "img1"], result.output  # before: mask, inpainted
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed: one line, before inputs
    result = batch("denoise", tmp_path / "missing", "-o", out, "--ray", "local")
    assert result.exit_code == 1 and "--ray needs Ray" in result.output


def test_a_remote_cluster_takes_device_cuda_that_this_machine_lacks(data, tmp_path, monkeypatch):
    pytest.importorskip("ray")  # --ray checks that Ray is installed
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    seen = {}

    def spy(items, **kwargs):  # the cluster is not there: record what would be sent, fit none
        seen.update(kwargs)
        return iter(())

    monkeypatch.setattr(deepprior, "reconstruct_many", spy)
    photo = data / "photos" / "img0.png"
    result = batch("denoise", photo, "-o", tmp_path / "out", "--ray", "10.0.0.1:6379",
                   "--device", "cuda", "-q", *FAST)
    assert seen["engine"] == "ray" and seen["address"] == "10.0.0.1:6379", result.output
    assert seen["device"] == "cuda"  # before: "--device cuda: CUDA is not available here"
    for ray, expected in (("local", "CUDA is not available here"),  # a cluster on this machine
                          ("10.0.0.1:6379", "with --ray it is auto, cpu or cuda")):
        result = batch("denoise", photo, "-o", tmp_path / "no", "--ray", ray, "--device",
                       "cuda:1" if ray != "local" else "cuda", "-q", *FAST)
        assert result.exit_code == 1 and expected in result.output, result.output


def test_an_input_too_small_for_the_network_fails_alone(data, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "img0.png").write_bytes((data / "photos" / "img0.png").read_bytes())
    save_image(folder / "small.png", sample_image("camera", size=6))
    out = tmp_path / "out"
    result = batch("denoise", folder, "-o", out, "--workers", "1", "-q", *FAST, "--net",
                   "conv_decoder")
    assert statuses(out) == {"img0": "done", "small": "failed"}, result.output
    error = {row["name"]: row["error"] for row in summary_of(out)["items"]}["small"]
    assert "--net conv_decoder reconstructs images of at least 8x8" in error


@pytest.mark.parametrize(("ext", "said"), [("jpg", "which .jpg never keeps: written with 8"),
                                           ("png", "which .png keeps for grey images only")])
def test_the_note_on_16_bit_inputs_follows_the_output_format(tmp_path, ext, said):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    save_image(inputs / "colour.tif", sample_image("astronaut", size=16), bits=16)
    out = tmp_path / "out"
    result = batch("denoise", inputs, "-o", out, "--workers", "1", "--ext", ext, *FAST)
    assert result.exit_code == 0, result.output
    assert f"1 inputs have more than 8 bits per sample, {said}" in result.output
