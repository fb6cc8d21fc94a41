"""The Deep Image Prior's denoising default, member by member: a fit without and one with TV.

``reconstruct(noisy)`` (the Deep Image Prior, ``stop="auto"``) returns the average of two fits
(``regularizer="mix"``): member A, seed s, no penalty; member B, seed s + 1, the image turned
a quarter, TV at 0.5·σ̂ (σ̂ estimated from the image), each stopped by the discrepancy rule.
This script makes that call with the clean image, so that each member is scored too
(``config["members"]``): A alone (the single fit, the default before), B alone and A + B (the
default now). ``--members ABC`` also calls ``ensemble=2, regularizer="none"``, whose second
member C is B without TV: A + C, two fits without TV. PSNR against the clean image, the
iterations of each member (what the time is made of: every member costs the same per
iteration) and its time. B runs at most ``MIX_BUDGET`` (2) times A's iterations;
``--budget X`` measures that lever (0: no cap): the call is made with ``MIX_BUDGET = X`` and
its A, B and A + B are stored beside the case's row (which needs the default budget's row
first), under ``budgets``. ``--channels N`` does the same for DIP's width (channels per scale),
under ``widths``: fewer channels, less time per iteration. The case rows stored ran at 128
channels, the default then; the 64 beside them made it 64. A case run again after the
default's stopping rule or width changed keeps the row it replaces in the new one, under
``previous`` (rows name their rule, ``stop_rule``, and width, ``channels``; the rows from before
that have none: the rule before, 128 channels).

    OMP_NUM_THREADS=1 python benchmarks/mix.py --case camera:25:0 --members ABC
    OMP_NUM_THREADS=1 python benchmarks/mix.py --case astronaut:50:0
    OMP_NUM_THREADS=1 python benchmarks/mix.py --case camera:50:0 --budget 1.5
    OMP_NUM_THREADS=1 python benchmarks/mix.py --case camera:50:0 --channels 64
    python benchmarks/mix.py --report
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import harness

import deepprior.api
from deepprior import add_gaussian_noise, reconstruct, sample_image


def _member(row: dict[str, Any]) -> dict[str, Any]:
    """A member of ``config["members"]`` as a row entry."""
    return {"psnr": row["psnr"], "num_iter": row["num_iter"], "num_steps": row["num_steps"],
            "seconds": row["elapsed"], "stop_reason": row["stop_reason"]}


def run_case(case: str, members: str, size: int, **options: Any) -> dict[str, Any]:
    """One case: the default call (A, B, A + B) and, with C in ``members``, two fits without
    TV (C, A + C); ``options`` go to ``reconstruct`` (the tests' small budgets)."""
    image, _, sigma255, seed = _case_key(case, size)
    clean = sample_image(image, size=size)
    noisy = add_gaussian_noise(clean, sigma255 / 255, seed=seed)
    default = reconstruct(noisy, net="dip", seed=seed, ground_truth=clean, **options)
    a, b = default.config["members"]
    row: dict[str, Any] = {"key": [image, size, sigma255, seed],
                           "stop_rule": default.config["stop_resolved"],
                           "channels": default.config["net_options"].get("channels"),
                           "sigma_hat": default.config["sigma"], "A": _member(a),
                           "B": _member(b), "AB": default.psnr}
    if "C" in members:
        plain = reconstruct(noisy, net="dip", seed=seed, ground_truth=clean, ensemble=2,
                            regularizer="none", **options)
        row.update(C=_member(plain.config["members"][1]), AC=plain.psnr)
    for member in ("A", "B", "C"):
        if member in row:
            print(f"{case} {member}: {row[member]['psnr']:.2f} dB, it. "
                  f"{row[member]['num_iter']}, {row[member]['seconds']:.0f} s", flush=True)
    return row


def _case_key(case: str, size: int) -> tuple:
    """A row's key: (image, size, σ, seed)."""
    image, sigma255, seed = case.split(":")
    return image, size, int(sigma255), int(seed)


def _steps(member: dict[str, Any]) -> int:
    """The iterations a member ran (its cost; the returned iterate's where not stored)."""
    return member.get("num_steps", member["num_iter"])


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
             "iterations run, A + B over A |", "|---|---|---|---|---|---|---|---|"]
    gaps = []
    for row in sorted(payload["rows"], key=lambda r: r["key"]):
        image, size, sigma255, seed = row["key"]
        reference = bm3d.get(tuple(row["key"]))
        if reference is not None and "AB" in row:
            gaps.append((reference - row["A"]["psnr"], reference - row["AB"]))
        ratio = (_steps(row["A"]) + _steps(row["B"])) / _steps(row["A"])
        lines.append(f"| {image} {size}² σ = {sigma255}, seed {seed} | "
                     + ("—" if reference is None else f"{reference:.2f}") + " | "
                     + " | ".join(_cell(row.get(n)) for n in ("A", "B", "AB", "AC", "ABC"))
                     + f" | {ratio:.2f}× |")
    for field, title in (("budgets", f"B's budget, × A's iterations (default "
                                      f"{deepprior.api.MIX_BUDGET}; 0: none)"),
                         ("widths", "DIP's channels per scale (the rows above: 128)")):
        variants = [(row["key"], label, value, value["A"]["psnr"] != row["A"]["psnr"])
                    for row in payload["rows"] for label, value in row.get(field, {}).items()]
        if variants:
            lines.append(f"\n{title}:")
        for (image, size, sigma255, seed), label, value, other_a in sorted(variants):
            lines.append(f"- {image} {size}² σ = {sigma255}, seed {seed}, {field[:-1]} {label}: "
                         + (f"A {_cell(value['A'])}, " if other_a else "")
                         + f"B {_cell(value['B'])}, A + B {_cell(value['AB'])}"
                         + (f", {_seconds(value):.0f} s" if field == "widths" else ""))
    lines.extend(_widths(payload["rows"], bm3d))
    if gaps:
        single, mixed = (sum(g) / len(gaps) for g in zip(*gaps, strict=True))
        lines.append(f"\nMean gap to BM3D over {len(gaps)} cases: single fit {single:.2f} dB, "
                     f"A + B {mixed:.2f} dB.")
    return "\n".join(lines)


def _seconds(value: dict[str, Any]) -> float:
    """The time of a call's two fits."""
    return value["A"]["seconds"] + value["B"]["seconds"]


def _widths(rows: list[dict[str, Any]], bm3d: dict[tuple, float]) -> list[str]:
    """Per width run, over its cases: its A + B against the case rows', the mean gap of each to
    BM3D where known, and the time of the width's calls against the rows' calls."""
    lines = []
    for width in sorted({w for r in rows for w in r.get("widths", {})}, key=int):
        pairs = [(r, r["widths"][width]) for r in rows if width in r.get("widths", {})]
        gain = statistics.fmean(v["AB"] - r["AB"] for r, v in pairs)
        known = [(bm3d[tuple(r["key"])] - r["AB"], bm3d[tuple(r["key"])] - v["AB"])
                 for r, v in pairs if tuple(r["key"]) in bm3d]
        line = (f"\n{width} channels over {len(pairs)} case{'s' * (len(pairs) > 1)}: A + B "
                f"{gain:+.2f} dB against the case rows' on average ("
                f"{min(v['AB'] - r['AB'] for r, v in pairs):+.2f} to "
                f"{max(v['AB'] - r['AB'] for r, v in pairs):+.2f}), "
                f"{sum(_seconds(v) for _, v in pairs):.0f} s against "
                f"{sum(_seconds(r) for r, _ in pairs):.0f} s for theirs (other runs)")
        if known:
            theirs, narrow = (statistics.fmean(g) for g in zip(*known, strict=True))
            line += (f"; mean gap to BM3D over {len(known)}: {narrow:.2f} dB against "
                     f"{theirs:.2f}")
        lines.append(line + ".")
    return lines


def _bm3d() -> dict[tuple, float]:
    """BM3D's PSNR per case from results/defaults.json (the same noisy images)."""
    path = harness.RESULTS / "defaults.json"
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    return {tuple(r["key"][:4]): r["psnr"] for r in rows if r["method"] == "bm3d"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", action="append", default=[], metavar="IMAGE:SIGMA:SEED",
                        help="e.g. camera:25:0 (σ in 0-255 units); repeatable")
    parser.add_argument("--members", choices=("AB", "ABC"), default="AB",
                        help="ABC: also two fits without TV (A + C)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--budget", type=float, metavar="X",
                        help="B's budget, × A's iterations (0: none); stored beside the "
                        "default's row")
    parser.add_argument("--channels", type=int, metavar="N",
                        help="DIP's channels per scale (the library's 64); stored beside the "
                        "default's row")
    parser.add_argument("--report", action="store_true", help="print the stored table")
    parser.add_argument("--out-dir", type=Path, default=harness.RESULTS)
    args = parser.parse_args(argv)
    path = args.out_dir / "mix.json"
    if args.report:
        print(report(json.loads(path.read_text())))
        return 0
    if not args.case:
        parser.error("give --case IMAGE:SIGMA:SEED")
    store = harness.Store(path, True, {"members": args.members, "size": args.size,
                                       "budget": args.budget})
    stored = {tuple(r["key"]): r for r in store.payload["rows"]}
    keys = [_case_key(case, args.size) for case in args.case]
    if args.budget is not None and args.channels is not None:
        parser.error("give --budget or --channels, not both")
    if args.channels is not None and args.channels < 1:
        parser.error(f"--channels must be at least 1, got {args.channels}")
    variant = args.budget is not None or args.channels is not None
    if variant and (missing := [k for k in keys if k not in stored]):
        parser.error(f"--budget and --channels need the default's row first: {missing} not "
                     f"in {path}")
    for case, key in zip(args.case, keys, strict=True):
        if not variant:  # re-run after the stop rule changed: the old row is kept
            row = run_case(case, args.members, args.size)  # in the new one, as "previous"
            old = stored.get(key, {})
            store.add(row, keep_replaced=(old.get("stop_rule"), old.get("channels", 128))
                      != (row["stop_rule"], row["channels"]))
            continue
        if args.channels is not None:
            row = run_case(case, "AB", args.size, net_options={"channels": args.channels})
            field, label = "widths", str(args.channels)
        else:
            default = deepprior.api.MIX_BUDGET
            deepprior.api.MIX_BUDGET = args.budget or 3000  # 0: no cap (the budget of the fit)
            try:
                row = run_case(case, "AB", args.size)
            finally:
                deepprior.api.MIX_BUDGET = default
            field, label = "budgets", f"{args.budget:g}"
        store.add({**stored[key], field: {**stored[key].get(field, {}),
                                          label: {name: row[name] for name in ("A", "B", "AB")}}})
    print(report(store.payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
