"""Batch throughput: images per minute for many independent fits on one machine.

Every arm denoises the same noisy crops (128², camera and astronaut from
:func:`deepprior.sample_image`, σ = 25/255) with the Deep Decoder (``net="deep_decoder"``, its
defaults) and a fixed budget (``stop="fixed:N"``), each fit with one torch thread and the seed
``item_seed(0, name)``. The default network for denoising, DIP, takes about ten times as long
per fit, which makes the per-task overhead matter even less.

(a) **shell loop**: one ``python -c`` process per image, one after the other, as a user without
    :func:`deepprior.reconstruct_many` would script it (each pays for starting Python and
    importing torch);
(b) ``reconstruct_many``, local engine, 1 worker (in this process) and 2 worker processes;
(c) ``reconstruct_many``, Ray engine, on a local Ray cluster of 2 CPUs (its start-up and
    shut-down are timed apart, the batch is timed on the running cluster).

Images per minute count the whole batch (worker start-up included). All arms must return
bit-identical images; the table says so.

The **overhead per task** comes from many tiny fits (64², 1 iteration, 4 channels) through each
engine: with ``k`` the fits at once, ``t`` the seconds from the ``k``-th result to the last and
``n`` the results in between, a task holds a slot for ``t·k/n`` seconds, of which the fit itself
is the median of the results' ``seconds``; the rest is overhead (scheduling, sending the data,
collecting the result). Start-up is excluded: the workers start, and run their first, slower
fit, before the ``k``-th result.

The **memory per fit** (what sets the fits per GPU) is measured on the CPU as a proxy: in a
fresh process per case, the peak resident memory of a 5-iteration fit above that of the same
process after importing torch and deepprior and running one tiny fit.

Usage::

    python benchmarks/batch.py                  # 8 images, 300 iterations
    python benchmarks/batch.py --iters 1000     # another budget
    python benchmarks/batch.py --quick --out-dir /tmp/q   # 2 images, 20 iterations
    python benchmarks/batch.py --only memory    # only the memory per fit, into batch.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import harness
import numpy as np
import torch

from deepprior import add_gaussian_noise, item_seed, reconstruct_many, sample_image

SIGMA = 25 / 255
SIZE = 128
CORNERS = ((64, 64), (64, 320), (320, 64), (320, 320))  # crops of the 512² originals
TINY = {"net": "deep_decoder", "max_num_iter": 1, "stop": "fixed:1", "net_options": {"channels": 4}}

# One image per process: what a shell loop over files runs.
SHELL_FIT = """
import sys, numpy as np, torch
torch.set_num_threads(1)
from deepprior import reconstruct
iters = int(sys.argv[3])
result = reconstruct(np.load(sys.argv[1]), net="deep_decoder", max_num_iter=iters,
                     stop=f"fixed:{iters}", seed=int(sys.argv[4]), device="cpu")
np.save(sys.argv[2], result.image)
print(result.elapsed)
"""


def crops(count: int) -> dict[str, np.ndarray]:
    """``count`` noisy 128² crops, alternating camera (gray) and astronaut (colour)."""
    images = {}
    for index in range(count):
        name = ("camera", "astronaut")[index % 2]
        top, left = CORNERS[(index // 2) % len(CORNERS)]
        clean = sample_image(name)[top:top + SIZE, left:left + SIZE]
        images[f"{name}{index // 2}"] = add_gaussian_noise(clean, SIGMA, seed=index)
    return images

# Peak resident memory of one fit above the imported library's.
MEMORY_FIT = """
import resource, sys, numpy as np, torch
torch.set_num_threads(1)
from deepprior import add_gaussian_noise, reconstruct, sample_image
def peak(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
reconstruct(np.full((16, 16), 0.5, np.float32), net=sys.argv[1], max_num_iter=1, stop="fixed:1")
before = peak()
noisy = add_gaussian_noise(sample_image("camera", size=int(sys.argv[2])), 0.1, seed=0)
reconstruct(noisy, net=sys.argv[1], max_num_iter=5, stop="fixed:5", device="cpu")
print(before, peak())
"""
MEMORY_CASES = (("deep_decoder", 128), ("deep_decoder", 256), ("dip", 128), ("dip", 256))


def memory(cases=MEMORY_CASES) -> list[dict[str, Any]]:
    """Peak memory of one CPU fit per (network, size), each in a fresh process."""
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for net, size in cases:
        done = subprocess.run([sys.executable, "-c", MEMORY_FIT, net, str(size)],
                              capture_output=True, text=True, env=env, check=True)
        before, peak = map(float, done.stdout.split()[-2:])
        rows.append({"net": net, "size": size, "library_mib": before,
                     "fit_mib": peak - before})
    return rows


def fit_options(iters: int) -> dict[str, Any]:
    return {"net": "deep_decoder", "max_num_iter": iters, "stop": f"fixed:{iters}",
            "device": "cpu"}


def shell_loop(images: dict[str, np.ndarray], iters: int) -> tuple[dict[str, Any], dict]:
    """(a): one Python process per image, sequentially."""
    outputs, fit_seconds = {}, []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        for name, image in images.items():
            source, target = Path(folder, f"{name}.npy"), Path(folder, f"{name}.out.npy")
            np.save(source, image)
            done = subprocess.run(
                [sys.executable, "-c", SHELL_FIT, str(source), str(target), str(iters),
                 str(item_seed(0, name))],
                capture_output=True, text=True, env=env, check=True)
            fit_seconds.append(float(done.stdout.split()[-1]))
            outputs[name] = np.load(target)
        wall = time.perf_counter() - start
    row = {"arm": "shell loop, one process per image", "fits_at_once": 1, "seconds": wall,
           "fit_seconds": statistics.mean(fit_seconds)}
    return row, outputs


def batch(images: dict[str, np.ndarray], iters: int, label: str, **engine: Any):
    """(b), (c): one reconstruct_many call."""
    start = time.perf_counter()
    results = list(reconstruct_many(list(images.items()), **fit_options(iters), **engine))
    wall = time.perf_counter() - start
    failed = [r.name for r in results if not r.ok]
    if failed:
        raise RuntimeError(f"{label}: items failed: {[r.error for r in results if not r.ok]}")
    row = {"arm": label, "fits_at_once": engine.get("workers", 2), "seconds": wall,
           "fit_seconds": statistics.mean(r.result.elapsed for r in results)}
    return row, {r.name: r.result.image for r in results}


def overhead(tasks: int, label: str, at_once: int, **engine: Any) -> dict[str, Any]:
    """Seconds a slot spends per tiny task beyond the fit, after start-up."""
    tiny = [(f"tiny{i}", np.full((64, 64), 0.5, np.float32)) for i in range(tasks)]
    arrivals, seconds = [], []
    for result in reconstruct_many(tiny, device="cpu", **TINY, **engine):
        arrivals.append(time.perf_counter())
        seconds.append(result.seconds)
    warm = arrivals[at_once - 1:]  # after each worker's first, slower fit
    per_task = 1000 * (warm[-1] - warm[0]) * at_once / (len(warm) - 1)
    fit = 1000 * statistics.median(seconds)  # robust to each worker's slower first fit
    return {"engine": label, "tasks": tasks, "fits_at_once": at_once,
            "slot_ms_per_task": per_task, "fit_ms": fit, "overhead_ms_per_task": per_task - fit}


def ray_arms(images, iters, tasks):
    """(c) and the Ray overhead, on a local 2-CPU cluster started here and timed apart."""
    if importlib.util.find_spec("ray") is None:
        return None, None, None, {"ray": 'not installed (pip install "deepprior[ray]")'}
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)
    startup = time.perf_counter() - start
    try:
        row, outputs = batch(images, iters, "reconstruct_many, Ray, 2 CPUs", engine="ray",
                             workers=2)
        cost = overhead(tasks, "Ray (2 CPUs)", 2, engine="ray", workers=2)
    finally:
        start = time.perf_counter()
        ray.shutdown()
        shutdown = time.perf_counter() - start
    row["note"] = f"cluster start {startup:.1f} s, stop {shutdown:.1f} s (not included)"
    return row, outputs, cost, {"ray_start_seconds": startup, "ray_stop_seconds": shutdown}


def run(args: argparse.Namespace) -> dict[str, Any]:
    count, iters = (2, 20) if args.quick else (args.images, args.iters)
    tasks = 10 if args.quick else args.tasks
    torch.set_num_threads(1)
    images = crops(count)
    rows, outputs = [], {}
    for label, call in [
        ("shell", lambda: shell_loop(images, iters)),
        ("local1", lambda: batch(images, iters, "reconstruct_many, 1 worker (in process)",
                                 workers=1)),
        ("local2", lambda: batch(images, iters, "reconstruct_many, 2 worker processes",
                                 workers=2)),
    ]:
        print(f"... {label}", file=sys.stderr, flush=True)
        row, outputs[label] = call()
        rows.append(row)
    costs = [overhead(tasks, "in process (1 worker)", 1, workers=1),
             overhead(tasks, "local, 2 worker processes", 2, workers=2)]
    print("... ray", file=sys.stderr, flush=True)
    ray_row, ray_outputs, ray_cost, ray_info = ray_arms(images, iters, tasks)
    if ray_row is not None:
        rows.append(ray_row)
        outputs["ray"] = ray_outputs
        costs.append(ray_cost)
    print("... memory", file=sys.stderr, flush=True)
    mem = memory((("deep_decoder", 64),) if args.quick else MEMORY_CASES)
    for row, label in zip(rows, outputs, strict=True):
        row["images_per_minute"] = 60 * count / row["seconds"]
        row["max_abs_diff_to_shell_loop"] = max(
            float(np.max(np.abs(outputs[label][name] - outputs["shell"][name])))
            for name in images)
        same = all(np.array_equal(outputs[label][name], outputs["shell"][name])
                   for name in images)
        row["identical_to_shell_loop"] = "yes" if same else "no"
    return {"config": {"images": count, "size": SIZE, "sigma": SIGMA, "iters": iters,
                       "net": "deep_decoder (defaults)", "torch_threads_per_fit": 1,
                       "overhead_tasks": tasks, "quick": args.quick, **ray_info},
            "rows": rows, "overhead": costs, "memory": mem}


def report(payload: dict[str, Any]) -> str:
    config = payload["config"]
    lines = [f"{config['images']} images {config['size']}², {config['iters']} iterations, "
             f"one torch thread per fit", ""]
    lines.append(harness.markdown_table(payload["rows"], [
        "arm", "fits_at_once", "seconds", "images_per_minute", "fit_seconds",
        "identical_to_shell_loop", "note"]))
    lines += ["", "Overhead per task (tiny fits, after start-up):", ""]
    lines.append(harness.markdown_table(payload["overhead"], [
        "engine", "tasks", "fits_at_once", "slot_ms_per_task", "fit_ms",
        "overhead_ms_per_task"]))
    if payload.get("memory"):
        lines += ["", "Memory per fit (CPU, peak resident above the imported library, MiB):",
                  ""]
        lines.append(harness.markdown_table(payload["memory"],
                                            ["net", "size", "library_mib", "fit_mib"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=300, help="iterations per fit (300)")
    parser.add_argument("--images", type=int, default=8, help="number of crops (8)")
    parser.add_argument("--tasks", type=int, default=100,
                        help="tiny tasks for the overhead per task (100)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 images, 20 iterations, 10 tiny tasks")
    parser.add_argument("--out-dir", type=Path, default=harness.RESULTS,
                        help="where batch.json and batch.md go (benchmarks/results)")
    parser.add_argument("--only", choices=("all", "memory"), default="all",
                        help="'memory': measure only the memory per fit and replace it in "
                             "the existing batch.json")
    args = parser.parse_args(argv)
    if args.only == "memory":
        payload = json.loads((args.out_dir / "batch.json").read_text())  # keeps its machine
        payload["memory"] = memory()
        payload["memory_machine"] = harness.machine_info()
    else:
        payload = run(args)
    harness.RESULTS = args.out_dir  # save_json writes into harness.RESULTS
    path = harness.save_json("batch", payload)
    table = report(json.loads(path.read_text()))
    (args.out_dir / "batch.md").write_text(table + "\n")
    print(table)
    print(f"\nwrote {path} and {args.out_dir / 'batch.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
