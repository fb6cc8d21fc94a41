"""Speed study: seconds per iteration of each network against what the machine can do.

For each network (denoising defaults: Deep Decoder k = 64, DIP skip net, ConvDecoder), image
size and gray/colour, the script measures

- **seconds per iteration** of ``reconstruct`` (forward, loss, backward, Adam step, the stopping
  rule's bookkeeping — what a user pays), the median over timed iterations after warm-up, both
  as CPU time of the process (``time.process_time``) and as wall time. On a machine shared with
  other jobs the wall time includes the time slices they take; the CPU time does not, so the
  roofline uses the CPU time (a single-threaded run keeps one core busy: CPU time ≈ the wall
  time the same run would take on an idle core);
- **FLOPs per iteration**: forward + backward of one training step counted by
  :class:`torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix products; the
  element-wise work of activations, normalisation, upsampling and Adam is not counted);
- **bytes moved per iteration**, an estimate: every ATen operator of forward, backward and the
  Adam step is assumed to read each input tensor and write each output tensor once from main
  memory (view operators excluded). Real traffic is lower where operands stay in cache and
  higher where a kernel streams an operand several times;
- the **machine's ceilings**, measured in the same run with the same thread count and the same
  CPU-time clock: a large float32 matrix product (GFLOP/s) and a large copy (GB/s, read +
  write);
- the **fraction of the roofline**: the time the iteration would need at the ceilings,
  ``max(FLOPs / peak, bytes / bandwidth)``, divided by the measured time;
- **where the time goes**: the share of the ATen operators' CPU time by kind (convolution,
  normalisation, upsampling, activation, other), from :mod:`torch.profiler`.

The report also gives the time-to-result with the automatic stop, from the denoising study's
``denoise.json`` when it exists.

Usage::

    python benchmarks/speed.py                # DD 128²-512², ConvDecoder and DIP 128²-256²
    python benchmarks/speed.py --threads 2    # the same with 2 threads → speed_2threads.json
    python benchmarks/speed.py --report       # markdown tables from speed.json
    python benchmarks/speed.py --quick --out-dir /tmp/q
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import harness
import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from deepprior import add_gaussian_noise, build_net, problem_defaults, reconstruct, sample_image

LABELS = {"deep_decoder": "Deep Decoder", "conv_decoder": "ConvDecoder", "dip": "DIP"}

# (net, size, channels, timed iterations)
FULL_CASES = [
    ("deep_decoder", 128, 1, 10), ("deep_decoder", 128, 3, 10),
    ("deep_decoder", 256, 1, 5), ("deep_decoder", 256, 3, 5),
    ("deep_decoder", 512, 1, 3), ("deep_decoder", 512, 3, 3),
    ("conv_decoder", 128, 1, 5), ("conv_decoder", 128, 3, 5),
    ("conv_decoder", 256, 1, 3),
    ("dip", 128, 1, 3), ("dip", 128, 3, 3),
    ("dip", 256, 1, 2),
]
QUICK_CASES = [("deep_decoder", 64, 1, 3), ("conv_decoder", 64, 3, 2), ("dip", 64, 1, 2)]
WARMUP = 2
PROFILE_STEPS = 2
# Kinds of work, by words in the ATen operator's name (first match wins; the rest is "other").
OP_GROUPS = {
    "convolution": ("conv",),
    "normalisation": ("norm",),
    "upsampling": ("upsample",),
    "activation": ("threshold", "clamp", "relu", "leaky", "sigmoid"),
}


# --------------------------------------------------------------------------- ceilings


def matmul_ceiling(n: int = 2048, repeats: int = 5, clock=time.process_time) -> float:
    """Best GFLOP/s of an n×n float32 matrix product (2n³ FLOPs)."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator)
    b = torch.randn(n, n, generator=generator)
    out = torch.empty(n, n)
    torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        torch.mm(a, b, out=out)
        best = min(best, clock() - start)
    return 2 * n**3 / best / 1e9


def copy_ceiling(num_bytes: int = 256 * 2**20, repeats: int = 5, clock=time.process_time) -> float:
    """Best GB/s of a large float32 copy, counting the read and the write."""
    src = torch.ones(num_bytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        start = clock()
        dst.copy_(src)
        best = min(best, clock() - start)
    return 2 * num_bytes / best / 1e9


# --------------------------------------------------------------------------- counting


class BytesCounter(TorchDispatchMode):
    """Sum of the sizes of every ATen operator's tensor inputs and outputs (views excluded)."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes = 0
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not getattr(func, "is_view", False):
            self.ops += 1
            for t in tree_leaves((args, kwargs, out)):
                if isinstance(t, torch.Tensor):
                    self.bytes += t.numel() * t.element_size()
        return out


def _training_step(net: torch.nn.Module, z: torch.Tensor, y: torch.Tensor, optimizer) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss = torch.mean((net(z) - y) ** 2)
    loss.backward()
    optimizer.step()


def count_step(net_name: str, image: np.ndarray) -> dict[str, float]:
    """FLOPs (forward + backward) and estimated bytes (forward + backward + Adam) of one step."""
    shape = (1, *image.shape) if image.ndim == 2 else (image.shape[2], *image.shape[:2])
    options = dict(problem_defaults("denoise", net_name).net_options)
    net, z = build_net(net_name, shape, seed=0, **options)
    y = torch.from_numpy(np.ascontiguousarray(np.atleast_3d(image).transpose(2, 0, 1)))[None]
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    _training_step(net, z, y, optimizer)  # Adam's state exists from here on
    flops = FlopCounterMode(display=False)
    with flops:
        optimizer.zero_grad(set_to_none=True)
        torch.mean((net(z) - y) ** 2).backward()
    counter = BytesCounter()
    with counter:
        _training_step(net, z, y, optimizer)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(PROFILE_STEPS):
            _training_step(net, z, y, optimizer)
    return {
        "flops": float(flops.get_total_flops()),
        "bytes": float(counter.bytes),
        "aten_ops": counter.ops,
        "num_parameters": sum(p.numel() for p in net.parameters()),
        "time_shares": time_shares(prof.key_averages()),
        "top_ops": top_ops(prof.key_averages()),
    }


def top_ops(events: Any, count: int = 6) -> list[tuple[str, float]]:
    """The ATen operators with the largest self CPU time, with their share."""
    aten = [e for e in events if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in aten) or 1.0
    ranked = sorted(aten, key=lambda e: -e.self_cpu_time_total)[:count]
    return [(e.key, e.self_cpu_time_total / total) for e in ranked]


def time_shares(events: Any) -> dict[str, float]:
    """Share of the self CPU time of the ATen operators, grouped by kind of work."""
    shares = dict.fromkeys(OP_GROUPS, 0.0)
    shares["other"] = 0.0
    for event in events:
        if not event.key.startswith("aten::"):
            continue
        group = next((g for g, words in OP_GROUPS.items()
                      if any(w in event.key for w in words)), "other")
        shares[group] += event.self_cpu_time_total
    total = sum(shares.values()) or 1.0
    return {group: value / total for group, value in shares.items()}


def time_iterations(net_name: str, image: np.ndarray, timed: int) -> dict[str, Any]:
    """Median CPU and wall seconds per iteration of ``reconstruct`` after ``WARMUP`` iterations."""
    noisy = add_gaussian_noise(image, 25 / 255, seed=0)
    stamps: list[float] = []
    cpu_stamps: list[float] = []

    def callback(state: Any) -> None:
        stamps.append(time.perf_counter())
        cpu_stamps.append(time.process_time())

    total = WARMUP + timed
    start = time.perf_counter()
    reconstruct(noisy, net=net_name, max_num_iter=total, stop=f"fixed:{total}", seed=0,
                device="cpu", callback=callback)
    wall = time.perf_counter() - start
    steps = np.diff(stamps[WARMUP - 1:])
    cpu_steps = np.diff(cpu_stamps[WARMUP - 1:])
    return {"seconds_per_iter": float(statistics.median(cpu_steps)),
            "wall_seconds_per_iter": float(statistics.median(steps)),
            "seconds_per_iter_min": float(np.min(cpu_steps)), "timed_iterations": len(steps),
            "wall_seconds": wall}


# --------------------------------------------------------------------------- the study


def run_study(
    cases: list[tuple[str, int, int, int]], *, quick: bool, threads: int = 1
) -> dict[str, Any]:
    """Ceilings first, then every case; prints a line per case.

    With one thread every time is CPU time (robust against other jobs on the machine); with
    more, CPU time adds up over the threads, so the ceilings and the roofline use wall time.
    """
    clock = time.process_time if threads == 1 else time.perf_counter
    peak = matmul_ceiling(512 if quick else 2048, clock=clock)
    bandwidth = copy_ceiling((16 if quick else 256) * 2**20, clock=clock)
    print(f"ceilings: matmul {peak:.1f} GFLOP/s, copy {bandwidth:.1f} GB/s", flush=True)
    rows = []
    for net_name, size, channels, timed in cases:
        image = sample_image("camera" if channels == 1 else "astronaut", size=size)
        counts = count_step(net_name, image)
        timing = time_iterations(net_name, image, timed)
        t = timing["seconds_per_iter" if threads == 1 else "wall_seconds_per_iter"]
        bound = max(counts["flops"] / (peak * 1e9), counts["bytes"] / (bandwidth * 1e9))
        row = {
            "net": net_name, "size": size, "channels": channels, **counts, **timing,
            "gflops_achieved": counts["flops"] / t / 1e9,
            "gbytes_per_s": counts["bytes"] / t / 1e9,
            "intensity": counts["flops"] / counts["bytes"],
            "roofline_seconds": bound,
            "roofline_fraction": bound / t,
            "bound_by": "compute" if counts["flops"] / (peak * 1e9) >= counts["bytes"]
            / (bandwidth * 1e9) else "memory",
        }
        rows.append(row)
        print(f"{net_name} {size}² C={channels}: {timing['seconds_per_iter']:.4f} CPU s/it "
              f"({timing['wall_seconds_per_iter']:.4f} wall), {row['gflops_achieved']:.1f} "
              f"GFLOP/s, {row['gbytes_per_s']:.1f} GB/s, {100 * row['roofline_fraction']:.0f}% "
              f"of roofline ({row['bound_by']}-bound)", flush=True)
    return {"ceilings": {"matmul_gflops": peak, "copy_gbytes_per_s": bandwidth,
                         "matmul_n": 512 if quick else 2048}, "rows": rows}


# --------------------------------------------------------------------------- report


def speed_table(payload: dict[str, Any]) -> str:
    """Seconds, FLOPs, bytes and the fraction of the roofline per case."""
    columns = ["net", "size", "C", "params", "CPU s/it", "wall s/it", "GFLOP/it",
               "GB/it (est.)", "FLOP/B", "GFLOP/s", "GB/s", "roofline bound", "% of roofline"]
    table = []
    for r in payload["rows"]:
        table.append({
            "net": LABELS[r["net"]], "size": f"{r['size']}²", "C": r["channels"],
            "params": f"{r['num_parameters']:,}", "CPU s/it": f"{r['seconds_per_iter']:.4f}",
            "wall s/it": f"{r['wall_seconds_per_iter']:.4f}",
            "GFLOP/it": f"{r['flops'] / 1e9:.2f}", "GB/it (est.)": f"{r['bytes'] / 1e9:.2f}",
            "FLOP/B": f"{r['intensity']:.1f}", "GFLOP/s": f"{r['gflops_achieved']:.1f}",
            "GB/s": f"{r['gbytes_per_s']:.1f}", "roofline bound": r["bound_by"],
            "% of roofline": f"{100 * r['roofline_fraction']:.0f}%",
        })
    return harness.markdown_table(table, columns)


def shares_table(payload: dict[str, Any]) -> str:
    """Where the time goes: share of ATen self CPU time by kind of operator (torch.profiler)."""
    columns = ["net", "size", "C", *OP_GROUPS, "other", "largest operators"]
    table = []
    for r in payload["rows"]:
        if "time_shares" not in r:
            continue
        line = {"net": LABELS[r["net"]], "size": f"{r['size']}²", "C": r["channels"]}
        line.update({k: f"{100 * v:.0f}%" for k, v in r["time_shares"].items()})
        line["largest operators"] = ", ".join(
            f"`{name.removeprefix('aten::')}` {100 * share:.0f}%"
            for name, share in r.get("top_ops", [])[:3]
        )
        table.append(line)
    return harness.markdown_table(table, columns)


def time_to_result_table(denoise_payload: dict[str, Any]) -> str:
    """From the denoising study: when the automatic rule stopped and how long that took."""
    columns = ["net", "image", "size", "σ", "auto rule", "stopped at", "CPU s/it",
               "time-to-result (auto, CPU)", "wall s/it", "full budget", "PSNR auto",
               "PSNR oracle"]
    table = []
    for r in denoise_payload["rows"]:
        if "psnr_oracle" not in r:
            continue
        fired = r["auto_stop_step"] if r.get("auto_fired") else f"{r['auto_stop_step']} (limit)"
        table.append({
            "net": LABELS[r["method"]], "image": r["image"], "size": f"{r['size']}²",
            "σ": f"{r['sigma255']}{' (clipped)' if r['clip'] else ''}",
            "auto rule": r["auto_rule"], "stopped at": fired,
            "CPU s/it": _cpu(r, 1, 3),
            "time-to-result (auto, CPU)": _cpu(r, r["auto_stop_step"], 0, " s"),
            "wall s/it": f"{r['seconds_per_iter']:.3f}",
            "full budget": f"{r['max_num_iter']:,} it, {r['seconds_total']:.0f} s",
            "PSNR auto": "" if r.get("psnr_auto") is None else f"{r['psnr_auto']:.2f}",
            "PSNR oracle": f"{r['psnr_oracle']:.2f}",
        })
    return harness.markdown_table(table, columns)


def _cpu(row: dict[str, Any], steps: int, digits: int, unit: str = "") -> str:
    value = row.get("cpu_seconds_per_iter")
    return "" if value is None else f"{value * steps:.{digits}f}{unit}"


def scaling_table(payload: dict[str, Any], one_thread: dict[str, Any]) -> str:
    """Wall seconds per iteration with this run's threads against the one-thread run."""
    threads = payload["threads"]
    single = {(r["net"], r["size"], r["channels"]): r for r in one_thread["rows"]}
    columns = ["net", "size", "C", "wall s/it, 1 thread", f"wall s/it, {threads} threads",
               "speed-up"]
    table = []
    for r in payload["rows"]:
        base = single.get((r["net"], r["size"], r["channels"]))
        if base is None:
            continue
        table.append({
            "net": LABELS[r["net"]], "size": f"{r['size']}²", "C": r["channels"],
            "wall s/it, 1 thread": f"{base['wall_seconds_per_iter']:.4f}",
            f"wall s/it, {threads} threads": f"{r['wall_seconds_per_iter']:.4f}",
            "speed-up": f"{base['wall_seconds_per_iter'] / r['wall_seconds_per_iter']:.2f}×",
        })
    return harness.markdown_table(table, columns)


def report(
    payload: dict[str, Any],
    denoise_payload: dict[str, Any] | None = None,
    one_thread: dict[str, Any] | None = None,
) -> str:
    """All markdown tables of the study (``one_thread``: the 1-thread run, to compare with)."""
    run = payload["machine"]
    c = payload["ceilings"]
    threads = payload["threads"]
    clock = "CPU time" if threads == 1 else "wall time"
    parts = [
        "Machine: " + harness.machine_line(run),
        f"Command: `{run['command']}`",
        f"\nCeilings measured in the same run ({threads} thread{'s' * (threads > 1)}, "
        f"{clock}): float32 matrix product {c['matmul_n']}² → **{c['matmul_gflops']:.1f} "
        f"GFLOP/s**; copy → **{c['copy_gbytes_per_s']:.1f} GB/s** (read + write). Roofline "
        f"figures use {'CPU' if threads == 1 else 'wall'} seconds.\n",
        speed_table(payload),
        "\nWhere the time goes (share of the ATen operators' self CPU time over "
        f"{PROFILE_STEPS} training steps, torch.profiler; \"other\" includes the loss, Adam "
        "and copies):\n",
        shares_table(payload),
    ]
    if one_thread is not None and threads != 1:
        parts += [f"\n{threads} threads against 1 (wall time per iteration):\n",
                  scaling_table(payload, one_thread)]
    if denoise_payload is not None and threads == 1:
        parts += ["\nTime-to-result with the automatic stop (denoising study, same machine, "
                  "1 thread):\n", time_to_result_table(denoise_payload)]
    return "\n".join(parts)


def plot(payload: dict[str, Any], path: Path) -> Path:
    """Roofline: achieved GFLOP/s against arithmetic intensity, with the measured ceilings."""
    from matplotlib.figure import Figure

    c = payload["ceilings"]
    fig = Figure(figsize=(6, 4), dpi=80, layout="constrained")
    ax = fig.add_subplot()
    rows = payload["rows"]
    xs = np.geomspace(0.05, max(200.0, max(r["intensity"] for r in rows) * 2), 100)
    ax.plot(xs, np.minimum(c["matmul_gflops"], xs * c["copy_gbytes_per_s"]), "k-", lw=1,
            label="roofline (measured)")
    markers = {"deep_decoder": "o", "conv_decoder": "s", "dip": "^"}
    for i, r in enumerate(rows):
        ax.plot(r["intensity"], r["gflops_achieved"], markers[r["net"]],
                color=f"C{i % 10}", ms=6, mfc="none" if r["channels"] == 1 else None,
                label=f"{LABELS[r['net']]} {r['size']}² C={r['channels']}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte, estimated)")
    ax.set_ylabel("GFLOP/s")
    ax.legend(fontsize=5.5, ncol=2)
    fig.savefig(path)
    return path


# --------------------------------------------------------------------------- entry point


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 64², 2-3 iterations")
    parser.add_argument("--report", action="store_true",
                        help="print the tables from speed.json, redraw the plot, exit")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1); with N > 1 the results go to speed_Nthreads.*")
    parser.add_argument("--out-dir", type=Path, default=harness.RESULTS,
                        help="where speed.json and speed.png go (benchmarks/results)")
    return parser.parse_args(argv)


def _denoise_payload(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / "denoise.json"
    return json.loads(path.read_text()) if path.exists() else None


def _stem(threads: int) -> str:
    return "speed" if threads == 1 else f"speed_{threads}threads"


def _report(payload: dict[str, Any], out_dir: Path) -> str:
    one_thread = out_dir / "speed.json"
    return report(payload, _denoise_payload(out_dir),
                  json.loads(one_thread.read_text()) if one_thread.exists() else None)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stem = _stem(args.threads)
    path = args.out_dir / f"{stem}.json"
    if args.report:
        if not path.exists():
            print(f"error: {path} does not exist; run the study first", file=sys.stderr)
            return 1
        payload = json.loads(path.read_text())
        plot(payload, args.out_dir / f"{stem}.png")
        print(_report(payload, args.out_dir))
        return 0
    torch.set_num_threads(args.threads)
    study = run_study(QUICK_CASES if args.quick else FULL_CASES, quick=args.quick,
                      threads=args.threads)
    payload = {"machine": harness.machine_info(), "threads": args.threads,
               "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), **study}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")
    plot(payload, args.out_dir / f"{stem}.png")
    print(_report(payload, args.out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
