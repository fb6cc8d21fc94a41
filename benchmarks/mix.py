"""The Deep Image Prior's denoising default, member by member: a fit without and one with TV.

``reconstruct(noisy)`` (the Deep Image Prior, ``stop="auto"``) returns the average of two fits
(``regularizer="mix"``): member A, seed s, no penalty; member B, seed s + 1, the image turned
a quarter, TV at 0.5·σ̂ (σ̂ estimated from the image), each stopped by the discrepancy rule.
This script fits the members one by one with ``reconstruct`` — the same fits, which
``tests/test_api.py::test_mix_averages_a_fit_without_and_one_with_tv_each_as_fitted_on_its_own``
pins — so that each member and each average can be scored: A alone (the single fit, the
default before), B alone, A + B (the default now) and, with member C (seed s + 1, turned, no
penalty), A + C (two fits without TV, ``ensemble=2, regularizer="none"``) and A + B + C.
PSNR against the clean image, the iterations of each member (what the time is made of: every
member costs the same per iteration) and its wall time.

    OMP_NUM_THREADS=1 python benchmarks/mix.py --case camera:25:0 --members ABC
    OMP_NUM_THREADS=1 python benchmarks/mix.py --case astronaut:50:0 --members AB
    python benchmarks/mix.py --report
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import harness
import numpy as np

from deepprior import add_gaussian_noise, estimate_sigma, psnr, reconstruct, sample_image
from deepprior.api import _DIHEDRAL, _turn, image_to_tensor, tensor_to_image

#: member → (seed offset, flip/rotation index, with TV)
MEMBERS = {"A": (0, 0, False), "B": (1, 1, True), "C": (1, 1, False)}
COMBOS = ("AB", "AC", "ABC")


def fit_member(noisy: np.ndarray, sigma: float, seed: int, member: str,
               **options: Any) -> tuple[Any, np.ndarray]:
    """One member's Reconstruction and its image (turned back); ``options`` go to
    ``reconstruct`` (the tests' small budgets)."""
    offset, k, tv = MEMBERS[member]
    turn = _DIHEDRAL[k]
    y = tensor_to_image(_turn(image_to_tensor(noisy), turn))
    penalty = {"regularizer": "tv", "regularizer_weight": 0.5 * sigma} if tv else \
        {"regularizer": "none"}
    result = reconstruct(y, net="dip", seed=seed + offset, sigma=sigma, **penalty, **options)
    return result, tensor_to_image(_turn(image_to_tensor(result.image), turn, inverse=True))


def run_case(case: str, members: str, size: int, **options: Any) -> dict[str, Any]:
    image, sigma255, seed = case.split(":")
    clean = sample_image(image, size=size)
    noisy = add_gaussian_noise(clean, int(sigma255) / 255, seed=int(seed))
    sigma = estimate_sigma(noisy)  # what reconstruct estimates, given to every member
    row: dict[str, Any] = {"key": [image, size, int(sigma255), int(seed)], "sigma_hat": sigma}
    images = {}
    for member in members:
        start = time.perf_counter()
        result, images[member] = fit_member(noisy, sigma, int(seed), member, **options)
        row[member] = {"psnr": psnr(clean, images[member]), "num_iter": result.num_iter,
                       "seconds": time.perf_counter() - start,
                       "stop_reason": result.stop_reason}
        print(f"{case} {member}: {row[member]['psnr']:.2f} dB, it. {result.num_iter}, "
              f"{row[member]['seconds']:.0f} s", flush=True)
    for combo in COMBOS:
        if set(combo) <= set(members):
            row[combo] = psnr(clean, np.mean([images[m] for m in combo], axis=0).clip(0, 1))
    return row


def _cell(value: Any) -> str:
    """A member's PSNR and iteration, or an average's PSNR."""
    if value is None:
        return "—"
    return f"{value['psnr']:.2f} (it. {value['num_iter']})" if isinstance(value, dict) \
        else f"{value:.2f}"


def report(payload: dict[str, Any], bm3d: dict[tuple, float] | None = None) -> str:
    """The table, with BM3D (true σ) and the mean gaps to it where ``bm3d`` has the case."""
    bm3d = _bm3d() if bm3d is None else bm3d
    lines = ["| case | BM3D | A (single fit) | B (TV) | A + B (default) | A + C | A + B + C | "
             "iterations A + B, × A |", "|---|---|---|---|---|---|---|---|"]
    gaps = []
    for row in sorted(payload["rows"], key=lambda r: r["key"]):
        image, size, sigma255, seed = row["key"]
        reference = bm3d.get(tuple(row["key"]))
        if reference is not None and "AB" in row:
            gaps.append((reference - row["A"]["psnr"], reference - row["AB"]))
        ratio = (row["A"]["num_iter"] + row["B"]["num_iter"]) / row["A"]["num_iter"]
        lines.append(f"| {image} {size}² σ = {sigma255}, seed {seed} | "
                     + ("—" if reference is None else f"{reference:.2f}") + " | "
                     + " | ".join(_cell(row.get(n)) for n in ("A", "B", "AB", "AC", "ABC"))
                     + f" | {ratio:.2f}× |")
    if gaps:
        single, mixed = (sum(g) / len(gaps) for g in zip(*gaps, strict=True))
        lines.append(f"\nMean gap to BM3D over {len(gaps)} cases: single fit {single:.2f} dB, "
                     f"A + B {mixed:.2f} dB.")
    return "\n".join(lines)


def _bm3d() -> dict[tuple, float]:
    """BM3D's PSNR per case from results/defaults.json (the same noisy images)."""
    path = harness.RESULTS / "defaults.json"
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    return {tuple(r["key"][:4]): r["psnr"] for r in rows if r["method"] == "bm3d"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", action="append", default=[], metavar="IMAGE:SIGMA:SEED",
                        help="e.g. camera:25:0 (σ in 0-255 units); repeatable")
    parser.add_argument("--members", default="AB", help="A, B, C: which members to fit (AB)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--report", action="store_true", help="print the stored table")
    parser.add_argument("--out-dir", type=Path, default=harness.RESULTS)
    args = parser.parse_args(argv)
    path = args.out_dir / "mix.json"
    if args.report:
        print(report(json.loads(path.read_text())))
        return 0
    if not args.case or not set(args.members) <= set(MEMBERS) or "A" not in args.members:
        parser.error("give --case IMAGE:SIGMA:SEED and --members with A (of A, B, C)")
    store = harness.Store(path, True, {"members": args.members, "size": args.size})
    for case in args.case:
        store.add(run_case(case, args.members, args.size))
    print(report(store.payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
