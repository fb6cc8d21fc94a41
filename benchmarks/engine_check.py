"""Does an engine change move a result? The defaults' fits, run by two checkouts, compared.

Runs a few fits that go through the engine's main paths — the Deep Decoder's denoising default,
the Deep Image Prior's (two fits averaged, two discrepancy rules read every 8th iteration), and
its compressive-sensing default without σ (TV or none chosen on held-out measurements, then a
refit) — with shortened budgets, plus the weights ``build_net`` draws for every network. Each
run records a hash of every image and of the weights, the stops and the seconds per iteration
(one thread), for the deepprior it imports; ``--compare`` sets two such files side by side.
Identical hashes mean no quality number of the benchmarks can move on this machine.

Usage::

    OMP_NUM_THREADS=1 PYTHONPATH=/path/to/old/checkout python benchmarks/engine_check.py --name old
    OMP_NUM_THREADS=1 python benchmarks/engine_check.py --name new
    python benchmarks/engine_check.py --compare old new
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import harness
import numpy as np
import torch

import deepprior


def _digest(*arrays: Any) -> str:
    sha = hashlib.sha256()
    for array in arrays:
        sha.update(np.ascontiguousarray(array).tobytes())
    return sha.hexdigest()[:16]


def cases(quick: bool) -> tuple[dict[str, dict[str, Any]], np.ndarray]:
    """The fits (name → reconstruct's arguments; quick: 32², 6 iterations, small networks)
    and the clean image they are scored against."""
    size = 32 if quick else 64
    camera = deepprior.sample_image("camera", size=size)
    noisy = deepprior.add_gaussian_noise(camera, 25 / 255, seed=0)
    op = deepprior.GaussianSensing(round(0.1 * size * size), (size, size), seed=0)
    y, _ = deepprior.simulate_measurements(op, camera, snr_db=20, seed=0)
    small = {"net_options": {"channels": 8}} if quick else {}
    return {
        "deep_decoder denoise (default)": {"observation": noisy, "net": "deep_decoder",
                                           "max_num_iter": 6 if quick else None, **small},
        "dip denoise (default: mix)": {"observation": noisy, "net": "dip",
                                       "max_num_iter": 6 if quick else 120, **small},
        "dip cs without σ (default: auto)": {"observation": y, "operator": op, "net": "dip",
                                             "max_num_iter": 6 if quick else 100, **small},
    }, camera


def run(quick: bool) -> dict[str, Any]:
    torch.set_num_threads(1)
    rows: dict[str, Any] = {}
    for name in deepprior.available_nets():
        net, z = deepprior.build_net(name, (1, 64, 64), seed=3)
        rows[f"build_net {name}"] = {"hash": _digest(z, *(p.detach() for p in net.parameters()))}
    plan, clean = cases(quick)
    for name, options in plan.items():
        options = dict(options)
        observation = options.pop("observation")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # small sizes: the networks pad and say so
            result = deepprior.reconstruct(observation, ground_truth=clean, seed=0, device="cpu",
                                           **options)
        rows[name] = {"hash": _digest(result.image), "psnr": result.psnr,
                      "num_iter": result.num_iter, "num_steps": result.num_steps,
                      "s_per_iter": result.elapsed / result.num_steps}
    return rows


def _source_commit() -> str | None:
    """The commit of the deepprior this process imports (which may be another checkout)."""
    folder = Path(deepprior.__file__).resolve().parent
    try:
        return subprocess.run(["git", "-C", str(folder), "rev-parse", "--short=12", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def compare(first: dict[str, Any], second: dict[str, Any]) -> str:
    """A table: each case's hash equal or not, the stops, and the time ratio."""
    rows = []
    for name, a in first["rows"].items():
        b = second["rows"].get(name, {})
        row = {"case": name, "same result": "bit-identical" if a["hash"] == b.get("hash")
               else "DIFFERENT"}
        if "psnr" in a:
            row.update({"PSNR": f"{a['psnr']:.2f} / {b.get('psnr', float('nan')):.2f}",
                        "stop": f"{a['num_iter']} / {b.get('num_iter')}",
                        "s/it ratio": f"{b['s_per_iter'] / a['s_per_iter']:.2f}"
                        if "s_per_iter" in b else ""})
        rows.append(row)
    columns = ["case", "same result", "PSNR", "stop", "s/it ratio"]
    head = (f"{first['source_commit']} against {second['source_commit']} "
            f"(second / first for the time)")
    return head + "\n\n" + harness.markdown_table(rows, columns)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", help="run the fits; write results/engine_check_NAME.json")
    parser.add_argument("--compare", nargs=2, metavar=("FIRST", "SECOND"),
                        help="print two runs side by side")
    parser.add_argument("--quick", action="store_true", help="32², 6 iterations, small nets")
    parser.add_argument("--out-dir", type=Path, default=harness.RESULTS)
    args = parser.parse_args(argv)
    if args.compare:
        first, second = (json.loads((args.out_dir / f"engine_check_{n}.json").read_text())
                         for n in args.compare)
        print(compare(first, second))
        return 0
    if not args.name:
        parser.error("give --name NAME to run the fits, or --compare FIRST SECOND")
    payload = {"machine": harness.machine_info(), "source_commit": _source_commit(),
               "quick": args.quick, "rows": run(args.quick)}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    path = args.out_dir / f"engine_check_{args.name}.json"
    path.write_text(json.dumps(deepprior.jsonable(payload), indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
