"""The committed ``deepprior analyze`` plots: Deep Decoder and the 6-layer conv generator.

Runs the ``deepprior analyze`` command as a user would (a subprocess, one thread) on the
bundled camera image at 64×64 (fitting the clean image with Adam, the settings of
:func:`deepprior.reconstruct`):

- ``deep_decoder`` and ``conv_generator`` with ``--norm all`` (learning rate 0.01);
  the curvature every 200 iterations (six evaluations; more than the command's default of
  three, which keeps the analysis cheaper than the fit);
- ``conv_generator`` with ``--norm none --lr 0.001``, to tell a net whose ReLUs all die from
  one whose gradients are merely small.

Each run's outputs are copied into ``--out-dir`` as ``analysis_<run>.json`` (with the command
and the machine added) and ``analysis_<run>_<plot>.png``. The findings are written up in
``results/analysis.md``.

Usage::

    python benchmarks/analysis.py                  # 1,000 iterations per fit (about 10 min)
    python benchmarks/analysis.py --iters 200      # a quicker look

The command of each run is printed and stored in its JSON; it can be run on its own, e.g.
``deepprior analyze --net deep_decoder --norm all --iters 1000 -o OUTDIR``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import machine_info

#: (run name, arguments of ``deepprior analyze``, plots to keep; None keeps all).
RUNS: tuple[tuple[str, list[str], tuple[str, ...] | None], ...] = (
    ("deep_decoder", ["--net", "deep_decoder", "--norm", "all", "--curvature-every", "200"],
     None),
    ("conv_generator", ["--net", "conv_generator", "--norm", "all", "--curvature-every", "200"],
     None),
    ("conv_generator_none_lr0.001",
     ["--net", "conv_generator", "--norm", "none", "--lr", "0.001", "--curvature-every", "200"],
     ("grad_norms", "loss")),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=1000, help="iterations per fit (1000)")
    parser.add_argument("--size", type=int, default=64, help="camera image side (64)")
    parser.add_argument("--seed", type=int, default=0, help="seed (0)")
    names = [name for name, _, _ in RUNS]
    parser.add_argument("--runs", nargs="+", default=names, choices=names,
                        help="runs to make (all)")
    parser.add_argument(
        "--out-dir", type=Path, default=Path(__file__).resolve().parent / "results",
        help="where analysis_*.json and analysis_*.png go (benchmarks/results)",
    )
    return parser.parse_args(argv)


def run(arguments: list[str], args: argparse.Namespace, folder: Path) -> list[str]:
    """Run ``deepprior analyze`` with ``arguments`` into ``folder`` on one thread; print its
    summary table; return all its arguments."""
    cli_args = ["analyze", *arguments, "--iters", str(args.iters), "--size", str(args.size),
                "--seed", str(args.seed), "--device", "cpu", "-o", str(folder), "--overwrite"]
    print("$ deepprior " + shlex.join(cli_args), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "deepprior", *cli_args], env=env, check=True,
                          capture_output=True, text=True)
    print(done.stdout.split("fitting")[-1].split("\n", 1)[-1], flush=True)
    return cli_args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, arguments, keep in RUNS:
        if name not in args.runs:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / name
            start = time.perf_counter()
            cli_args = run(arguments, args, folder)
            seconds = time.perf_counter() - start
            report = json.loads((folder / "analysis.json").read_text())
            report["benchmark"] = {
                "script": shlex.join(["python", "benchmarks/analysis.py", *sys.argv[1:]]),
                "command": "deepprior " + shlex.join(cli_args[:-3]) + " -o OUTDIR",
                "torch_threads": 1,
                "seconds": round(seconds, 1),
                "machine": machine_info(),
            }
            target = args.out_dir / f"analysis_{name}.json"
            target.write_text(json.dumps(report, separators=(",", ":")) + "\n")
            written = [target]
            for plot in sorted(folder.glob("*.png")):
                if keep is None or plot.stem in keep:
                    copy = args.out_dir / f"analysis_{name}_{plot.stem}.png"
                    shutil.copyfile(plot, copy)
                    written.append(copy)
            print(f"{name}: {seconds:.0f} s; wrote {', '.join(str(p) for p in written)}\n",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
