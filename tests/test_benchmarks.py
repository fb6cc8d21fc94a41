"""Benchmark scripts: the baseline solvers are right, and every script's --quick mode runs."""

import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deepprior import (
    PROBLEMS,
    GaussianSensing,
    add_gaussian_noise,
    build_net,
    psnr,
    reconstruct,
    sample_image,
)

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def baselines():
    return _load("baselines")


def _blocks(size: int = 16) -> np.ndarray:
    """A piecewise-constant test image (TV's ideal case)."""
    image = np.full((size, size), 0.2, dtype=np.float32)
    image[3:10, 4:12] = 0.8
    image[11:15, 2:7] = 0.5
    return image


def _tv(u: torch.Tensor, baselines) -> float:
    gh, gw = baselines.grad(u)
    return float(torch.sqrt(gh**2 + gw**2).sum())


def test_div_is_minus_adjoint_of_grad(baselines):
    generator = torch.Generator().manual_seed(0)
    u = torch.randn(1, 1, 23, 17, generator=generator, dtype=torch.float64)
    ph, pw = (torch.randn(1, 1, 23, 17, generator=generator, dtype=torch.float64)
              for _ in range(2))
    gh, gw = baselines.grad(u)
    lhs = float((gh * ph + gw * pw).sum())
    rhs = -float((u * baselines.div(ph, pw)).sum())
    assert abs(lhs - rhs) < 1e-10 * abs(lhs)


def test_tv_prox_minimises_its_objective(baselines):
    generator = torch.Generator().manual_seed(1)
    v = torch.from_numpy(_blocks())[None, None] + 0.1 * torch.randn(
        1, 1, 16, 16, generator=generator
    )
    weight = 0.05
    u, _ = baselines.tv_prox(v.double(), weight, num_iter=300)

    def objective(x: torch.Tensor) -> float:
        return 0.5 * float(((x - v.double()) ** 2).sum()) + weight * _tv(x, baselines)

    best = objective(u)
    assert best < 0.8 * objective(v.double())
    for _ in range(5):
        nudged = u + 1e-3 * torch.randn(u.shape, generator=generator, dtype=torch.float64)
        assert best <= objective(nudged) + 1e-9


def test_least_squares_is_the_minimum_norm_solution(baselines):
    operator = GaussianSensing(40, (1, 9, 11), seed=0)
    x = torch.rand(1, 1, 9, 11, generator=torch.Generator().manual_seed(2))
    y = operator.A(x)
    result = baselines.least_squares(operator, y)
    expected = torch.linalg.pinv(operator.matrix.double()) @ y[0, 0].double()
    got = torch.from_numpy(result.image).double().flatten()
    assert torch.allclose(got, expected.clamp(0, 1), atol=1e-4)


def test_fista_recovers_a_piecewise_constant_image_from_few_measurements(baselines):
    clean = _blocks()
    operator = GaussianSensing(128, (1, 16, 16), seed=0)
    y = operator.A(torch.from_numpy(clean)[None, None])
    ls = baselines.least_squares(operator, y)
    tv, path = baselines.oracle_tune(
        baselines.fista_tv, clean, (1e-1, 1e-2, 1e-3), operator=operator, y=y, num_iter=300
    )
    wav, _ = baselines.oracle_tune(
        baselines.fista_wavelet, clean, (1e-1, 1e-2), operator=operator, y=y, num_iter=200,
        wavelet="haar",
    )
    assert psnr(clean, tv.image) > 35.0  # TV recovers blocks from m/n = 0.5 almost exactly
    assert psnr(clean, wav.image) > psnr(clean, ls.image) + 3.0
    assert [p["lambda"] for p in path] == [1e-1, 1e-2, 1e-3]  # warm-started, largest first
    assert tv.params["lambda"] in (1e-1, 1e-2, 1e-3)


def test_oracle_tune_needs_a_grid(baselines):
    operator = GaussianSensing(10, (1, 4, 4), seed=0)
    with pytest.raises(ValueError, match="at least one value"):
        baselines.oracle_tune(baselines.fista_tv, np.zeros((4, 4)), (), operator=operator,
                              y=torch.zeros(1, 1, 10))


def test_tv_denoise_oracle_beats_the_noisy_image(baselines):
    clean = _blocks(32)
    noisy = clean + 0.1 * np.random.default_rng(0).standard_normal(clean.shape).astype(np.float32)
    result = baselines.tv_denoise_oracle(noisy, clean, weights=(0.02, 0.1, 0.3))
    assert psnr(clean, result.image) > psnr(clean, noisy) + 5.0
    assert result.params["weight"] in (0.02, 0.1, 0.3)
    with pytest.raises(ValueError, match="at least one TV weight"):
        baselines.tv_denoise_oracle(noisy, clean, weights=())


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True, text=True, timeout=240, env=env, check=False,
    )


@pytest.fixture
def study(harness, capsys, monkeypatch):
    """``study("cs.py", *args)`` runs a study's ``main`` in this process, as its command line
    would (a subprocess would import torch and the rest again): its exit code and stdout."""
    shared = importlib.import_module("harness")  # the studies' own import of it
    monkeypatch.setattr(shared, "RESULTS", shared.RESULTS)  # a study may point it elsewhere

    def run(script: str, *args: str) -> tuple[int, str]:
        module = _load(script.removesuffix(".py"))
        monkeypatch.setattr(sys, "argv", [str(BENCH / script), *args])  # the recorded command
        threads = torch.get_num_threads()
        capsys.readouterr()
        try:
            code = module.main(list(args))
        finally:
            torch.set_num_threads(threads)
        return code, capsys.readouterr().out

    return run


def _check_outputs(out: Path, name: str) -> dict:
    payload = json.loads((out / f"{name}.json").read_text())
    png = out / f"{name}.png"
    assert png.exists() and 1_000 < png.stat().st_size < 200_000
    return payload


def test_denoise_quick(tmp_path, study):
    pytest.importorskip("bm3d")
    assert study("denoise.py", "--quick", "--out-dir", str(tmp_path))[0] == 0
    payload = _check_outputs(tmp_path, "denoise")
    rows = {(r["image"], r["clip"], r["method"]): r for r in payload["rows"]}
    bm3d = rows[("camera", False, "bm3d")]
    assert bm3d["psnr"] > rows[("camera", False, "noisy")]["psnr"] + 5
    dd = rows[("camera", False, "deep_decoder")]
    assert dd["psnr_oracle"] >= dd["psnr_auto"] - 1e-6
    assert dd["psnr_oracle"] >= dd["psnr_final"] - 1e-6
    assert {"auto_rule", "auto_step", "auto_seconds", "curve"} <= set(dd)
    assert payload["runs"][0]["command"].endswith(f"--quick --out-dir {tmp_path}")
    code, report = study("denoise.py", "--report", "--out-dir", str(tmp_path))
    assert code == 0 and "BM3D" in report and "deepprior arms" in report


def test_cs_quick(tmp_path, study):
    code, stdout = study("cs.py", "--quick", "--out-dir", str(tmp_path))
    assert code == 0
    payload = _check_outputs(tmp_path, "cs")
    methods = {r["method"] for r in payload["rows"]}
    assert {"least_squares", "tv_fista", "wavelet_fista", "deep_decoder"} <= methods
    assert "TV (oracle λ)" in stdout
    rule, tv = (r for r in payload["rows"] if "stop" in r)  # a hold-out rule: its own fit
    assert rule["key"][-2:] == [rule["stop"], 2] and 0 < rule["num_iter"] <= 40
    first, second = rule["members"]  # the hold-out fit, then all the data to its iterate
    assert second["num_steps"] == first["num_iter"] == rule["num_iter"]
    assert rule["num_steps"] == first["num_steps"] + second["num_steps"]
    assert "Other σ-free rules" in stdout and rule["stop"] in stdout
    # with TV, no σ: two weights fitted to 90%, the held-out choice, a refit of all the data
    assert tv["options"] == {"regularizer": "tv"} and tv["key"][-1] == "regularizer=tv"
    tied = sum(c["averaged"] and not c["chosen"] for c in tv["regularizer_choice"])
    assert len(tv["regularizer_choice"]) == 2 and len(tv["members"]) == 2 + tied  # near ties'
    assert tv["regularizer_weight"] in [c["weight"] for c in tv["regularizer_choice"]]
    assert f"regularizer=tv + λ={tv['regularizer_weight']:.3g}" in stdout
    code, report = study("cs.py", "--report", "--out-dir", str(tmp_path))  # the rows read back
    assert code == 0 and f"regularizer=tv + λ={tv['regularizer_weight']:.3g}" in report
    assert "Held-out choices among penalty weights" in report and "one-SE rule changes" in report


def test_one_se_rule_takes_the_largest_weight_within_one_standard_error():
    cs = _load("cs")
    choice = [{"weight": 0.0, "chosen": True, "margin_z": None, "psnr": 20.0},
              {"weight": 2.5, "chosen": False, "margin_z": 0.85, "psnr": 21.3},
              {"weight": 0.8, "chosen": False, "margin_z": 0.5, "psnr": 20.5},
              {"weight": 9.0, "chosen": False, "margin_z": 1.2, "psnr": 19.0}]
    assert cs.one_se_pick(choice)["weight"] == 2.5  # 9.0 lies 1.2 standard errors above
    assert cs.one_se_pick(choice[:1] + choice[3:])["weight"] == 0.0  # none within: the lowest
    assert cs.one_se_pick([{**c, "margin_z": None} for c in choice]) is None  # older rows
    row = {"size": 64, "ratio": 0.05, "snr": 15.0, "options": {"regularizer": "auto"},
           "regularizer_choice": choice}
    table = cs.choice_table([row, {**row, "regularizer_choice": choice[:1] + choice[3:]}])
    assert "2.5 (21.30, z 0.85)" in table and "+1.30" in table
    assert "changes 1 of 2 choices: Δ +1.30 to +1.30, mean +1.30 dB (over all 2: +0.65)" in table


def test_clean_images_are_square_crops_in_range(harness):
    np.testing.assert_array_equal(harness.clean_image("camera", 16),
                                  sample_image("camera", size=16))
    for name in harness.PHOTOS:  # the photographs of defaults.py --photos, no download
        image = harness.clean_image(name, 16)
        assert image.shape[:2] == (16, 16) and image.ndim in (2, 3), name
        assert image.dtype == np.float32 and 0 <= image.min() < image.max() <= 1, name


def test_stopping_shards_fill_one_file_and_photos_are_observed(tmp_path, harness, monkeypatch):
    stopping = _load("stopping")
    plan = stopping.photos_plan()
    assert {run["net"] for run in plan} == {"dip"} and {run["size"] for run in plan} == {128}
    run = {**plan[0], "size": 16}  # a photograph, observed as defaults.py --photos sees it
    data = stopping.observation(run)
    np.testing.assert_array_equal(data["clean"], harness.clean_image(run["image"], 16))
    assert data["y"].shape == data["clean"].shape and abs(data["sigma"] - 50 / 255) < 1e-12
    fitted = []
    monkeypatch.setattr(stopping, "full_fit", lambda run: fitted.append(run["image"]) or {
        "run": run, "oracle": {"psnr": 30.0, "step": 5}, "final_psnr": 29.0, "seconds": 1.0,
        "psnr": [29.0, 30.0]})
    path = tmp_path / "stopping_photos.json"
    plan = plan[:3]
    first = stopping.execute(plan, path, resume=True, shard=(1, 2), log=lambda line: None)
    assert fitted == [plan[1]["image"]] and not first["complete"]
    both = stopping.execute(plan, path, resume=True, shard=(0, 2), log=lambda line: None)
    assert fitted == [plan[i]["image"] for i in (1, 0, 2)]  # each fit once, by its shard
    on_disk = json.loads(path.read_text())
    assert both["complete"] and on_disk["complete"]
    assert set(on_disk["runs"]) == {stopping.run_key(run) for run in plan}
    stopping.execute(plan, path, resume=True, log=lambda line: None)  # all there: no fit
    assert len(fitted) == 3
    stopping.execute(plan[:1], path, resume=False, log=lambda line: None)  # a fresh file
    assert len(fitted) == 4 and len(json.loads(path.read_text())["runs"]) == 1


def test_defaults_report_of_the_photographs(harness):
    defaults = _load("defaults")
    rows = []
    for image, sigma255, psnrs in (("coffee", 25, (31.0, 29.0, 30.0, 30.5)),
                                    ("brick", 25, (30.0, 26.0, 28.0, 28.5)),
                                    ("brick", 50, (26.0, 23.0, 24.0, 25.0))):
        bm3d, dd, single, mix = psnrs
        for method, value in (("bm3d", bm3d), ("deep_decoder", dd), ("dip", mix)):
            row = {"image": image, "size": 128, "sigma255": sigma255, "seed": 0,
                   "method": method, "psnr": value, "seconds": 1.0}
            if method == "dip":
                row["members"] = [{"psnr": single}, {"psnr": single - 0.2}]
            rows.append({**row, "key": defaults._key(row)})
    rows.append({**rows[0], "image": "camera", "key": ["camera", 128, 25, 0, "bm3d"]})
    text = defaults.report({"rows": rows})
    assert "| brick 128² σ=50 seed 0 | 26.00 | 23.00 (1 s) | 24.00 | 25.00 (1 s) | -1.00 |" \
        in text
    assert "- σ = 25, 2 cases: Deep Decoder 3.00 dB, DIP single fit 1.50 dB, DIP default " \
        "1.00 dB" in text
    assert "- every σ, 3 cases: Deep Decoder 3.00 dB, DIP single fit 1.67 dB" in text
    assert "camera 128² σ=25" not in text.split("Photographs")[1]


def test_defaults_quick(tmp_path, study):
    pytest.importorskip("bm3d")
    code, _ = study("defaults.py", "--quick", "--nets", "deep_decoder", "--variants",
                    "deep_decoder/8", "--out-dir", str(tmp_path))
    assert code == 0
    payload = _check_outputs(tmp_path, "defaults")  # the plot: each fit's gap to BM3D
    rows = {r["method"]: r for r in payload["rows"]}
    assert set(rows) == {"bm3d", "deep_decoder", "deep_decoder/8"}
    narrow = build_net("deep_decoder", (1, 64, 64), channels=8)[0]  # "/8": 8 channels
    assert rows["deep_decoder/8"]["num_parameters"] == sum(p.numel() for p in narrow.parameters())
    assert rows["deep_decoder"]["num_iter"] <= 40 and rows["deep_decoder"]["seconds"] > 0
    code, report = study("defaults.py", "--report", "--out-dir", str(tmp_path))
    assert code == 0 and f"{rows['deep_decoder']['psnr']:.2f}" in report
    for sigma in ("50", "25"):  # no case at σ = 50; the σ = 25 one re-run
        code, again = study("defaults.py", "--quick", "--resume", "--recompute", "--sigmas",
                            sigma, "--nets", "deep_decoder", "--variants", "--out-dir",
                            str(tmp_path))
        assert code == 0 and ("seed 0 deep_decoder:" in again) == (sigma == "25")
    rerun = {r["method"]: r for r in json.loads((tmp_path / "defaults.json").read_text())["rows"]}
    assert rerun["deep_decoder"]["seconds"] != rows["deep_decoder"]["seconds"]
    assert "previous" not in rerun["deep_decoder"]  # kept only when the stop rule changed


def test_speed_quick(tmp_path, study):
    assert study("speed.py", "--quick", "--out-dir", str(tmp_path))[0] == 0
    payload = _check_outputs(tmp_path, "speed")
    assert payload["ceilings"]["matmul_gflops"] > 0
    for row in payload["rows"]:
        assert row["flops"] > 0 and row["bytes"] > 0 and row["seconds_per_iter"] > 0
        assert 0 < row["roofline_fraction"] < float("inf")
    code, two = study("speed.py", "--quick", "--threads", "2", "--out-dir", str(tmp_path))
    assert code == 0 and "2 threads against 1" in two
    assert json.loads((tmp_path / "speed_2threads.json").read_text())["threads"] == 2
    assert json.loads((tmp_path / "speed.json").read_text())["threads"] == 1  # kept


@pytest.fixture(scope="module")
def harness():
    sys.path.insert(0, str(BENCH))  # the study scripts import it as a top-level module
    try:
        yield _load("harness")
    finally:
        sys.path.remove(str(BENCH))


def test_the_gpu_study_runs_on_the_cpu_and_writes_where_it_is_told(tmp_path, study):
    """gpu_speed.py's code, checked before a GPU's time is spent on it (``--smoke``: 32²,
    2 iterations; the numbers mean nothing)."""
    assert study("gpu_speed.py", "--smoke", "--device", "cpu", "--out-dir", str(tmp_path))[0] == 0
    payload = json.loads((tmp_path / "gpu_speed_smoke.json").read_text())
    nets = ["deep_decoder", "dip", "conv_decoder"]
    assert [row["network"] for row in payload["per_iteration"]] == nets
    assert [(row["network"], row["precision"]) for row in payload["time_to_result"]] == [
        (net, p) for net in nets[:2] for p in ("fp32", "bf16")]
    assert [row["K"] for row in payload["k_fits"]] == [2, 2]
    assert payload["fits_at_once"][0]["images"] == 8 and not payload["fits_at_once"][0]["failed"]
    with pytest.raises(SystemExit, match="--smoke checks the script on cpu"):
        study("gpu_speed.py", "--device", "cpu", "--out-dir", str(tmp_path))


def test_library_loop_against_a_plain_loop(tmp_path, harness, monkeypatch):
    variants = _load("speed_variants")
    monkeypatch.setattr(variants.harness, "RESULTS", tmp_path)
    args = variants.argparse.Namespace(sizes=[64], nets=["deep_decoder"], steps=3, threads=1)
    assert variants.vs_plain_loop(args) == 0
    rows = json.loads((tmp_path / "speed_vs_plain_loop_1thread.json").read_text())["rows"]
    assert [row["rule"] for row in rows] == ["discrepancy", "fixed:num_iter=13"]
    for row in rows:  # whole 8-iteration cycles of both loops timed, warm-up left out
        assert row["iterations timed"] == 8
        assert row["library ms/it"] > 0 and row["plain loop ms/it"] > 0


def test_k_fits_in_turn_and_at_once(tmp_path, harness, monkeypatch):
    variants = _load("speed_variants")
    monkeypatch.setattr(variants.harness, "RESULTS", tmp_path)
    monkeypatch.setattr(variants, "k_fits", lambda net, size, k, steps, device, repeats: {
        "net": net, "size": size, "K": k, "steps": steps, "device": device})
    assert variants.main(["--k-fits", "--nets", "dip", "--sizes", "64", "--steps", "4"]) == 0
    rows = json.loads((tmp_path / "speed_k_fits_1thread.json").read_text())["rows"]
    assert [(r["net"], r["size"], r["K"], r["steps"]) for r in rows] == [
        ("dip", 64, k, 4) for k in (1, 2, 4, 8)]


def test_speed_variants_time_dips_widths_side_by_side(tmp_path, harness, monkeypatch):
    variants = _load("speed_variants")
    monkeypatch.setattr(variants.harness, "RESULTS", tmp_path)
    assert variants.main(["--nets", "dip", "--sizes", "64", "--steps", "1", "--repeats", "1",
                          "--name", "widths"]) == 0
    rows = {r["variant"]: r for r in json.loads((tmp_path / "widths.json").read_text())["rows"]}
    assert list(rows) == ["baseline", "bf16 autocast", "upsampling adjoint", "64 channels",
                          "32 channels"]
    assert rows["baseline"]["vs baseline"] == 1 and rows["32 channels"]["s/step"] > 0


def test_k_fits_times_both_ways_on_the_same_fits(harness):
    variants = _load("speed_variants")
    row = variants.k_fits("deep_decoder", 64, 2, 3, "cpu", 1)
    assert (row["K"], row["steps"], row["device"]) == (2, 3, "cpu")
    assert row["in turn s"] > 0 and row["at once s"] > 0
    assert row["at once / one fit"] == pytest.approx(2 * row["at once / in turn"], abs=0.02)


def test_store_keeps_the_rows_of_concurrent_writers(tmp_path, harness):
    path = tmp_path / "study.json"
    first = harness.Store(path, resume=True, config={"shard": "0/2"})
    second = harness.Store(path, resume=True, config={"shard": "1/2"})
    first.add({"key": ["a"], "psnr": 1.0})
    second.add({"key": ["b"], "psnr": 2.0})
    first.add({"key": ["a"], "psnr": 3.0})  # replaces its own row, keeps the other's
    payload = json.loads(path.read_text())
    assert sorted((r["key"][0], r["psnr"]) for r in payload["rows"]) == [("a", 3.0), ("b", 2.0)]
    assert [run["config"]["shard"] for run in payload["runs"]] == ["0/2", "1/2"]
    first.add({"key": ["a"], "psnr": 4.0}, keep_replaced=True)  # a re-run after a change
    first.add({"key": ["a"], "psnr": 5.0}, keep_replaced=True)  # keeps the row it replaces
    row = next(r for r in json.loads(path.read_text())["rows"] if r["key"] == ["a"])
    stamp = row.pop("run")  # where it was measured: the run's date, CPU and commit
    assert stamp == {k: first.run[k] for k in harness.STAMP}
    assert stamp["processor"] == harness.machine_info()["processor"]
    assert row == {"key": ["a"], "psnr": 5.0, "previous": {"psnr": 4.0, "run": stamp}}
    fresh = harness.Store(path, resume=False, config={})
    assert fresh.payload["rows"] == [] and json.loads(path.read_text())["rows"] == []


@pytest.mark.parametrize("text", ["2/2", "1", "a/b", "-1/2"])
def test_shard_must_be_k_of_n(text, harness):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="--shard"):
        harness.parse_shard(text)
    assert harness.parse_shard("1/3") == (1, 3)


def test_holdout_trace_replays_a_rule_on_a_recorded_trajectory(harness):
    trace = _load("holdout_trace")
    raw = np.array([5.0, 4.0, 3.0, 3.5, 2.9, 3.1, 3.2, 3.3, 3.4, 3.5])
    psnr = np.arange(10.0, 20.0)
    # raw loss: minimum 2.9 at iteration 5, no new one for 3 iterations → stops at iteration 8
    assert trace.rule_replay(raw, psnr, 0.0, 3) == {
        "smoothing": 0.0, "patience": 3, "best_iter": 5, "psnr": 14.0, "stopped_at": 8}
    # averaged with weight 0.5 on the past: 5, 4.5, 3.75, 3.625, 3.2625, 3.18, 3.19, ...
    replay = trace.rule_replay(raw, psnr, 0.5, 2)
    assert (replay["best_iter"], replay["stopped_at"]) == (6, 8)
    assert trace.rule_replay(raw, psnr, 0.0, 100)["stopped_at"] is None


def test_holdout_trace_quick_run(tmp_path):
    result = _run("holdout_trace.py", "--size", "32", "--ratio", "0.25", "--iters", "6",
                  "--out-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    payload = json.loads(next(tmp_path.glob("holdout_trace_*.json")).read_text())
    assert payload["m"] == 256 and len(payload["rules"]) == 6
    assert 1 <= payload["best_psnr_iter"] <= 6


def test_observe_every_quick_run(harness, monkeypatch):
    observe = _load("observe_every")
    monkeypatch.setattr(observe, "EVERY", (1, 2, 4))
    run = observe.run_case(observe._case("cs:camera:32:0.25:20"), seed=0, max_num_iter=8)
    assert run["stop"] == "holdout:fraction=0.1,patience=1000,smoothing=0.99"
    assert run["config"]["problem"] == "compressive_sensing" and run["num_steps"] == 8
    assert [r["every"] for r in run["rules"]] == [1, 2, 4]
    for rule in run["rules"]:  # each k returns an iterate it read: a multiple of k
        assert 1 <= rule["chosen"] <= 8 and rule["chosen"] % rule["every"] == 0
    assert run["rules"][0]["delta"] == 0
    assert "| CS camera 32² m/n 0.25 SNR 20, seed 0 |" in observe.report({"runs": [run]})
    with pytest.raises(observe.argparse.ArgumentTypeError, match="not a case"):
        observe._case("cs:camera:32:0.25:0:sigma")  # σ given needs noise
    assert observe._case("denoise:astronaut:64:15") == {
        "problem": "denoise", "image": "astronaut", "size": 64, "sigma255": 15}


def test_observe_every_times_the_default_against_every_iteration(harness):
    observe = _load("observe_every")
    timed = observe.time_case(observe._case("cs:camera:32:0.25:20"), seed=0, repeats=1,
                              max_num_iter=9)
    default, every1 = timed["timings"]
    assert (default["call"], every1["call"]) == ("default", "every=1")
    assert default["stop"].endswith(",every=8") and every1["stop"].endswith(",every=1")
    assert harness.without_every(default["stop"]) == harness.without_every(every1["stop"])
    # the hold-out fit and its refit, then any near-tied weight's held-out fit (9 steps each)
    assert default["ensemble"] == every1["ensemble"] >= 2
    assert [m["num_steps"] for m in default["members"][2:]] == [9] * (default["ensemble"] - 2)
    # the hold-out fit read iteration 8 only, and its refit ran to the iterate it chose
    assert default["members"][0]["num_steps"] == 9 and default["num_iter"] == 8
    assert default["members"][1]["num_steps"] == 8
    table = observe.report({"runs": [], "timings": [timed]})
    assert "| CS camera 32² m/n 0.25 SNR 20, seed 0 | every=1 |" in table


def test_mix_members_add_up_to_the_default_call(harness, tmp_path):
    mix = _load("mix")
    options = {"max_num_iter": 6, "net_options": {"channels": 8}}
    row = mix.run_case("camera:25:0", "ABC", 32, **options)
    assert row["key"] == ["camera", 32, 25, 0] and row["B"]["num_iter"] <= 6
    assert row["stop_rule"] == PROBLEMS["denoise"]["dip"].stop and row["channels"] == 8
    clean = sample_image("camera", size=32)
    default = reconstruct(add_gaussian_noise(clean, 25 / 255, seed=0), ground_truth=clean,
                          **options)
    assert default.config["regularizer"] == "mix"
    assert row["AB"] == pytest.approx(default.psnr, abs=1e-6)  # the same two fits
    assert row["A"]["psnr"] == pytest.approx(default.config["members"][0]["psnr"], abs=1e-6)
    assert row["C"]["num_iter"] <= 6 and row["AC"] != row["AB"]  # C: B's fit without TV
    assert row["B"]["num_steps"] == default.config["members"][1]["num_steps"]  # its cost
    row["budgets"] = {"0": {"A": row["A"], "B": {**row["B"], "psnr": 27.0, "num_iter": 9},
                            "AB": 28.0}}
    table = mix.report({"rows": [row]}, bm3d={("camera", 32, 25, 0): 30.0})
    assert "| camera 32² σ = 25, seed 0 | 30.00 |" in table
    assert "- camera 32² σ = 25, seed 0, budget 0: B 27.00 (it. 9), A + B 28.00" in table
    with pytest.raises(SystemExit):  # another budget needs the default's row: checked first
        mix.main(["--case", "camera:25:0", "--budget", "1.5", "--out-dir", str(tmp_path)])
    with pytest.raises(SystemExit):  # so does another width; and one variant at a time
        mix.main(["--case", "camera:25:0", "--channels", "64", "--out-dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        mix.main(["--case", "camera:25:0", "--channels", "64", "--budget", "1",
                  "--out-dir", str(tmp_path)])
    narrow = {"A": row["A"], "B": {**row["B"], "seconds": 1.0}, "AB": row["AB"] + 0.5}
    seconds = row["A"]["seconds"] + 1.0
    table = mix.report({"rows": [{**row, "widths": {"64": narrow}}]},
                       bm3d={("camera", 32, 25, 0): 30.0})
    assert (f"- camera 32² σ = 25, seed 0, width 64: B {row['B']['psnr']:.2f} (it. "
            f"{row['B']['num_iter']}), A + B {row['AB'] + 0.5:.2f}, {seconds:.0f} s") in table
    assert (f"64 channels over 1 case: A + B +0.50 dB against the case rows' on average (+0.50 "
            f"to +0.50), {seconds:.0f} s against ") in table
    assert f"mean gap to BM3D over 1: {29.5 - row['AB']:.2f} dB against {30 - row['AB']:.2f}" \
        in table
    assert f"single fit {30 - row['A']['psnr']:.2f} dB, A + B {30 - row['AB']:.2f} dB" in table


def test_engine_check_compares_two_runs_bit_for_bit(tmp_path, study):
    assert study("engine_check.py", "--quick", "--name", "a", "--out-dir", str(tmp_path))[0] == 0
    payload = json.loads((tmp_path / "engine_check_a.json").read_text())
    rows = payload["rows"]
    assert len(rows) == 7 and all(len(row["hash"]) == 16 for row in rows.values())
    rows["dip denoise (default: mix)"]["hash"] = "0" * 16  # another engine's image
    (tmp_path / "engine_check_b.json").write_text(json.dumps(payload))
    code, table = study("engine_check.py", "--compare", "a", "b", "--out-dir", str(tmp_path))
    assert code == 0 and table.count("bit-identical") == 6 and table.count("DIFFERENT") == 1


def test_averaging_scores_other_averages_of_the_defaults_own_fits(tmp_path, study):
    code, table = study("averaging.py", "--quick", "--case", "astronaut:34", "--out-dir",
                        str(tmp_path))
    assert code == 0
    [row] = json.loads((tmp_path / "averaging.json").read_text())["rows"]
    variants, choice, refits = row["variants"], row["choice"], row["refits"]
    ties = [c for c in choice if c["averaged"] and not c["chosen"]]
    assert len(row["members"]) == 2 + len(ties) and len(refits) == 1 + len(ties)
    # the chosen weight refit alone is the default's refit, pixel for pixel
    assert row["refit_check"] == 0 and row["seed"] == 0
    assert variants["refit"] == pytest.approx(refits[0]["psnr"], abs=1e-4)
    # the near ties' fits are what the default adds to the chosen fit and its refit
    assert (variants["default"] == pytest.approx(variants["chosen_refit"], abs=1e-6)) \
        == (not ties)
    assert [r["num_iter"] for r in refits] == [c["num_iter"] for c in choice if c["averaged"]]
    assert -1 <= row["spread"]["correlation"] <= 1 and row["spread"]["mean"] > 0
    assert "| astronaut 16² | 0.25 | noiseless |" in table and "mean − default (1)" in table
    assert "| above / below the default | | | | 0 / 0 |" in table
    assert study("averaging.py", "--report", "--out-dir", str(tmp_path / "none"))[0] == 1
    for wrong in ("camera:0", "moon:34", "camera:x"):  # not the σ-free default; no such case
        with pytest.raises(SystemExit):
            study("averaging.py", "--quick", "--case", wrong, "--out-dir", str(tmp_path))
