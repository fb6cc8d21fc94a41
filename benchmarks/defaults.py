"""Which network by default: what a user gets from ``stop="auto"``, network against network.

For each case (sample image, size, σ, seed) every network runs once with the library's
defaults and the automatic stop — exactly ``reconstruct(noisy, net=NET, seed=SEED)`` — and the
PSNR/SSIM of the returned image and the time to result are recorded. BM3D (given the true σ)
is the reference. This is the evidence behind the default network of each problem kind: the
denoising study (denoise.py) measures the best iterate of a fixed budget, this one what the
default call returns, at the cost a user pays.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/defaults.py --resume          # the committed run
    OMP_NUM_THREADS=1 python benchmarks/defaults.py --resume --calibration --nets dip \
        --variants dip+tv=0.25 dip+tv=0.5 dip+tv=1                     # the TV factor, 64²
    OMP_NUM_THREADS=1 python benchmarks/defaults.py --resume --nets dip \
        --variants dip@bf16+auto --variant-sigmas 15 50 --shard 3/4    # auto at σ = 15, 50
    OMP_NUM_THREADS=1 python benchmarks/defaults.py --resume --large --nets deep_decoder \
        --variants dip@bf16 --shard 0/4                                # camera 256², σ = 25
    OMP_NUM_THREADS=1 python benchmarks/defaults.py --resume --large --nets dip~6000 \
        --variants --sigmas 15 --shard 0/2           # 256², a 6,000-iteration budget
    OMP_NUM_THREADS=1 python benchmarks/defaults.py --resume --recompute --large --nets dip \
        --variants --sigmas 25 --shard 1/2           # 256², the stop's margin at this size
    OMP_NUM_THREADS=1 python benchmarks/defaults.py --resume --photos --variants \
        --shard 0/2                                  # eight other photographs (and 1/2)
    OMP_NUM_THREADS=1 python benchmarks/defaults.py --resume --recompute --photos \
        --variants --nets dip --sigmas 50 --shard 0/2  # DIP re-run at σ = 50 after its
                                                       # stop changed (the old row kept in
                                                       # the new one, under "previous")
    python benchmarks/defaults.py --report
    python benchmarks/defaults.py --quick --out-dir /tmp/q
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import baselines
import harness

from deepprior import add_gaussian_noise, estimate_sigma, psnr, reconstruct, ssim

#: (image, size, σ in 0-255 units, seed), most informative first.
FULL_CASES = [
    ("camera", 128, 25, 0), ("astronaut", 128, 25, 0), ("camera", 128, 50, 0),
    ("camera", 128, 15, 0), ("camera", 128, 25, 1), ("astronaut", 128, 25, 1),
    ("camera", 128, 50, 1), ("camera", 128, 15, 1), ("astronaut", 128, 50, 0),
    ("astronaut", 128, 15, 0), ("astronaut", 128, 50, 1), ("astronaut", 128, 15, 1),
]
QUICK_CASES = [("camera", 64, 25, 0)]
#: ``--large``: 256² (a DIP fit at 128 channels took two hours of one core, camera σ = 25 in
#: bfloat16: 7,296 s, RESULTS.md §5; ``--variants`` with no names runs the networks alone).
LARGE_CASES = [("camera", 256, 25, 0), ("astronaut", 256, 25, 0), ("camera", 256, 15, 0),
               ("camera", 256, 50, 0), ("astronaut", 256, 50, 0), ("astronaut", 256, 15, 0)]
NETS = ("deep_decoder", "dip")
#: Variants ``NET[:K][/W][~N][@PRECISION][+tv[=C]|+auto[=C]|+mix|+none]`` run on the σ = 25 cases
#: (both images, both seeds): ensembles (``reconstruct(ensemble=K)``: K members on seeds and
#: flips, averaged; member 0 is the single fit, and each row lists its members), the
#: quality-per-second of averaging; ``/W``: W channels (``net_options={"channels": W}``), the
#: network's width; ``~N``: a budget of N iterations per fit (``max_num_iter=N``); bfloat16
#: mixed precision (``reconstruct(precision="bf16")``), its PSNR cost; and a TV penalty
#: (``regularizer="tv"``; ``=C``: weight C·σ̂ instead of the library's factor); ``+auto``: TV
#: or none chosen on held-out pixels, the winner's held-out fit averaged with a fit of all the
#: pixels (``regularizer="auto"``); ``+mix`` / ``+none`` the penalty named. The rows of ``dip``
#: and ``dip:2`` stored before DIP's default became ``"mix"`` are fits without a penalty
#: (``dip+none``, ``dip:2+none`` now).
VARIANTS = ("deep_decoder:4", "dip:2", "dip@bf16", "dip@bf16+auto")
#: The σ of the cases the variants run on (``--variant-sigmas``).
VARIANT_SIGMAS = (25,)
#: ``--calibration``: 64² cases, every variant on every case — where a factor is chosen
#: (the TV weight per σ) before it is confirmed at 128².
CALIBRATION_CASES = [("camera", 64, 25, 0), ("astronaut", 64, 25, 0), ("camera", 64, 50, 0),
                     ("camera", 64, 15, 0)]
#: ``--photos``: scikit-image photographs that no default was chosen on (``harness.PHOTOS``:
#: colour, gray, texture, line structure), 128², σ = 25 first, then 50 and 15; every network
#: and variant on each.
PHOTO_CASES = [(name, 128, sigma255, 0) for sigma255 in (25, 50, 15) for name in harness.PHOTOS]


def _key(row: dict[str, Any]) -> list:
    return [row["image"], row["size"], row["sigma255"], row["seed"], row["method"]]


def run_study(args: argparse.Namespace, store: harness.Store) -> None:
    cases = QUICK_CASES if args.quick else CALIBRATION_CASES if args.calibration \
        else LARGE_CASES if args.large else PHOTO_CASES if args.photos else FULL_CASES
    if args.sigmas:
        cases = [case for case in cases if case[2] in args.sigmas]
    shard, shards = args.shard
    for image, size, sigma255, seed in cases[shard::shards]:
        clean = harness.clean_image(image, size)
        noisy = add_gaussian_noise(clean, sigma255 / 255, seed=seed)
        variants = args.variants if sigma255 in args.variant_sigmas or cases != FULL_CASES \
            else []
        for method in ("bm3d", *args.nets, *variants):
            row = {"image": image, "size": size, "sigma255": sigma255, "seed": seed,
                   "method": method}
            row["key"] = _key(row)
            if store.key(row) in store.done and not args.recompute:
                continue
            if method == "bm3d":
                out = baselines.bm3d_denoise(noisy, sigma255 / 255)
                row.update(psnr=psnr(clean, out.image.clip(0, 1)),
                           ssim=ssim(clean, out.image.clip(0, 1)), seconds=out.seconds)
            else:
                options = {"max_num_iter": 40, "net_options": {"channels": 16}} \
                    if args.quick else {}
                name, _, regularizer = method.partition("+")
                regularizer, _, factor = regularizer.partition("=")
                name, _, precision = name.partition("@")
                name, _, budget = name.partition("~")
                name, _, width = name.partition("/")
                net, _, members = name.partition(":")
                if width:
                    options["net_options"] = {"channels": int(width)}
                if budget:
                    options["max_num_iter"] = int(budget)
                if factor:  # "+tv=C": weight C·σ̂, what the library's factor C would give
                    options["regularizer_weight"] = float(factor) * estimate_sigma(noisy)
                start = time.perf_counter()
                result = reconstruct(noisy, net=net, seed=seed, ground_truth=clean,
                                     ensemble=int(members) if members else None,
                                     precision=precision or "fp32",
                                     regularizer=regularizer or None, **options)
                row.update(psnr=result.psnr, ssim=result.ssim,
                           seconds=time.perf_counter() - start, num_iter=result.num_iter,
                           num_steps=result.num_steps, stop_reason=result.stop_reason,
                           stop_rule=result.config["stop_resolved"],
                           num_parameters=result.config["num_parameters"],
                           regularizer_weight=result.config["regularizer_weight"])
                for key in ("members", "regularizer_choice"):
                    if key in result.config:
                        row[key] = result.config[key]
            old = next((r for r in store.payload["rows"] if store.key(r) == store.key(row)), {})
            store.add(row, keep_replaced=old.get("stop_rule") != row.get("stop_rule"))
            print(f"{image} {size} σ={sigma255} seed {seed} {method}: {row['psnr']:.2f} dB, "
                  f"{row['seconds']:.0f} s", flush=True)


def report(payload: dict[str, Any]) -> str:
    """The sample images' table (every method), then the photographs' own (``_photos``)."""
    rows = [r for r in payload["rows"] if r["image"] not in harness.PHOTOS]
    cases = sorted({tuple(r["key"][:4]) for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    table, gains = [], []
    for case in cases:
        hit = {r["method"]: r for r in rows if tuple(r["key"][:4]) == case}
        line: dict[str, Any] = {"case": f"{case[0]} {case[1]}² σ={case[2]} seed {case[3]}"}
        for m in methods:
            if m in hit:
                r = hit[m]
                line[m] = (f"{r['psnr']:.2f} ({r['seconds']:.0f} s"
                           + (f", it {r['num_iter']})" if "num_iter" in r else ")"))
        if "dip" in hit and "deep_decoder" in hit:
            gains.append(hit["dip"]["psnr"] - hit["deep_decoder"]["psnr"])
            line["DIP − DD"] = f"{gains[-1]:+.2f}"
        table.append(line)
    text = harness.markdown_table(table, ["case", *methods, "DIP − DD"])
    if gains:
        mean = statistics.fmean(gains)
        text += (f"\n\nDIP − Deep Decoder over {len(gains)} cases: mean {mean:+.2f} dB, "
                 f"min {min(gains):+.2f}, max {max(gains):+.2f}.")
    return text + _photos(payload["rows"])


def _photos(rows: list[dict[str, Any]]) -> str:
    """The photographs no default was chosen on (``--photos``): each default call against
    BM3D, and DIP's single fit (the first member of its default call, the average of a fit
    without and one with TV)."""
    hits: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in rows:
        if r["image"] in harness.PHOTOS:
            hits.setdefault(tuple(r["key"][:4]), {})[r["method"]] = r
    table, gaps = [], {}
    for case, hit in sorted(hits.items(), key=lambda item: (item[0][2], item[0])):
        if not {"bm3d", "deep_decoder", "dip"} <= set(hit):
            continue
        bm3d, dd, dip = (hit[m]["psnr"] for m in ("bm3d", "deep_decoder", "dip"))
        single = hit["dip"]["members"][0]["psnr"] if "members" in hit["dip"] else dip
        gaps.setdefault(case[2], []).append((bm3d - dd, bm3d - single, bm3d - dip))
        table.append({"case": f"{case[0]} {case[1]}² σ={case[2]} seed {case[3]}", "BM3D": bm3d,
                      "Deep Decoder": f"{dd:.2f} ({hit['deep_decoder']['seconds']:.0f} s)",
                      "DIP single fit": single,
                      "DIP default": f"{dip:.2f} ({hit['dip']['seconds']:.0f} s)",
                      "default − BM3D": f"{dip - bm3d:+.2f}"})
    if not table:
        return ""
    lines = []
    for label, rows_ in [*((f"σ = {k}", v) for k, v in sorted(gaps.items())),
                         ("every σ", sum(gaps.values(), []))]:
        dd, single, dip = (statistics.fmean(g) for g in zip(*rows_, strict=True))
        lines.append(f"- {label}, {len(rows_)} case{'s' * (len(rows_) > 1)}: Deep Decoder "
                     f"{dd:.2f} dB, DIP single fit {single:.2f} dB, DIP default {dip:.2f} dB")
    return ("\n\nPhotographs no default was chosen on (`--photos`):\n\n"
            + harness.markdown_table(table, ["case", "BM3D", "Deep Decoder", "DIP single fit",
                                             "DIP default", "default − BM3D"])
            + "\n\nMean gap to BM3D:\n" + "\n".join(lines))


def plot(payload: dict[str, Any], path: Path) -> Path | None:
    """Quality per second: each fit's PSNR minus BM3D's on the same case against its time.

    One panel per image size, one colour per method, one marker per σ; up and to the left is
    better. BM3D's own time is not drawn (1–31 s, §1 of RESULTS.md).
    """
    from matplotlib.figure import Figure

    bm3d = {tuple(r["key"][:4]): r["psnr"] for r in payload["rows"] if r["method"] == "bm3d"}
    rows = [r for r in payload["rows"]
            if r["method"] != "bm3d" and tuple(r["key"][:4]) in bm3d and "seconds" in r]
    if not rows:
        return None
    sizes = sorted({r["size"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    markers = dict(zip(sorted({r["sigma255"] for r in rows}), "os^Dv", strict=False))
    fig = Figure(figsize=(4.2 * len(sizes), 3.4), dpi=72, layout="constrained")
    for i, size in enumerate(sizes):
        ax = fig.add_subplot(1, len(sizes), i + 1)
        for j, method in enumerate(methods):
            for sigma, marker in markers.items():
                sel = [r for r in rows if r["size"] == size and r["method"] == method
                       and r["sigma255"] == sigma]
                if sel:
                    ax.plot([r["seconds"] for r in sel],
                            [r["psnr"] - bm3d[tuple(r["key"][:4])] for r in sel],
                            ls="none", marker=marker, ms=5, color=f"C{j % 10}", alpha=0.8,
                            label=f"{method}, σ={sigma}")
        ax.axhline(0, color="k", lw=0.8, ls="--")
        ax.axhline(-1, color="0.5", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_title(f"{size}²: PSNR − BM3D (true σ)", fontsize=9)
        ax.set_xlabel("time to result (s, one core)", fontsize=8)
        ax.set_ylabel("dB", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=5, ncol=2)
    fig.savefig(path)
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.study_arguments(parser, name="defaults")
    parser.add_argument("--quick", action="store_true", help="smoke run")
    parser.add_argument("--nets", nargs="+", default=list(NETS), help="networks (DD and DIP)")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS),
                        help="NET[:K][/W][~N][@PRECISION][+tv[=C]|+auto[=C]] variants on the cases "
                        "of --variant-sigmas")
    parser.add_argument("--variant-sigmas", nargs="+", type=int, default=list(VARIANT_SIGMAS),
                        metavar="SIGMA", help="the σ (0-255) of the full cases the variants "
                        "run on")
    parser.add_argument("--calibration", action="store_true",
                        help="the 64² calibration cases, every variant on each")
    parser.add_argument("--large", action="store_true",
                        help="the 256² cases, every variant on each")
    parser.add_argument("--photos", action="store_true",
                        help="128² photographs no default was chosen on, every variant on each")
    parser.add_argument("--sigmas", nargs="+", type=int, metavar="SIGMA",
                        help="only the cases at these σ (0-255); all by default")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return harness.study_main(args, name="defaults", run=run_study, plot=plot, report=report,
                              config={"nets": args.nets})


if __name__ == "__main__":
    raise SystemExit(main())
