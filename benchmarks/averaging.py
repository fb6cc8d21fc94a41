"""How `regularizer="auto"` should average its fits, and what the spread of the fits tells.

``reconstruct(y, A, regularizer="auto")`` (compressive sensing, σ unknown) fits every
regularizer weight on 90% of the measurements, chooses one on the other 10%, refits it on all
of them and averages that refit with the chosen held-out fit and with the held-out fit of
every near-tied weight (``api.NEAR_TIE_Z``). One call of that default per case, with the
clean image; its fits' images (``Reconstruction.members``) are then averaged in other ways:

- ``default``: what ``reconstruct`` returns (the chosen held-out fit, its refit, the ties);
- ``chosen_refit``: the chosen held-out fit and its refit (before near ties were averaged);
- ``refit``: the chosen weight's refit alone;
- ``refit_half``: the refit at half the weight, the held-out fits sharing the other half;
- ``refits``: every averaged weight refit to its held-out fit's iteration on all the
  measurements, those refits averaged (one more fit per near tie, run here; seed + 1 as the
  default's refit);
- ``refits_trials``: those refits and every averaged held-out fit.

The chosen weight is refit here as well, as a check that a refit made with ``stop="fixed:N"``
is the default's own (``refit_check``: the largest pixel difference). ``spread`` scores
``Reconstruction.spread`` (the fits' per-pixel standard deviation) as a map of the error:
its mean beside the RMSE, and its correlation with the absolute error over the pixels.
Cases are ``cs.py``'s ``RULE_CASES``, by index (``--shard K/200`` there), on camera or the
astronaut's luminance; a row's key names no seed, so each seed's rows go to their own
``--out-dir`` (as ``cs.py``'s).

    OMP_NUM_THREADS=1 python benchmarks/averaging.py --case camera:71 --case astronaut:34
    OMP_NUM_THREADS=1 python benchmarks/averaging.py --seed 1 --case camera:71 \
        --out-dir benchmarks/results/averaging/seed1
    python benchmarks/averaging.py --quick --case camera:71 --out-dir /tmp/averaging
    python benchmarks/averaging.py --report
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import cs
import harness
import numpy as np

from deepprior import psnr, reconstruct

VARIANTS = ("default", "chosen_refit", "refit", "refit_half", "refits", "refits_trials")


def _psnr(clean: np.ndarray, images: list[np.ndarray], weights: list[float] | None = None):
    """PSNR of the (weighted) mean of ``images``, clipped to [0, 1] as reconstruct clips."""
    mean = np.average(np.stack(images), axis=0, weights=weights)
    return psnr(clean, np.clip(mean, 0, 1))


def run_case(image: str, index: int, seed: int, quick: bool = False) -> dict[str, Any]:
    """The default's call on RULE_CASES[index] and the other averages of its fits (``quick``:
    a smoke run, 16² and 60 iterations of a narrow network)."""
    net, size, ratio, snr, stop, ensemble, *extra = cs.RULE_CASES[index]
    options = extra[0] if extra else {}
    if options.get("regularizer") != "auto" or ensemble != 1 or "sigma" in options:
        raise SystemExit(f"RULE_CASES[{index}] is not the σ-free default (regularizer='auto', "
                         f"one fit per weight): {cs.RULE_CASES[index]}")
    size = 16 if quick else size
    m = round(ratio * size * size)
    clean, operator, y, _ = cs.make_case(size, m, snr, seed, image)
    y = y[0].numpy()
    common = {"net": net, "seed": seed, "ground_truth": clean, "progress": False,
              **({"max_num_iter": 60, "net_options": cs.QUICK_NET_OPTIONS} if quick else {})}
    result = reconstruct(y, operator, stop=stop, **common, **options)
    choice = result.config["regularizer_choice"]
    members = result.config["members"]
    ties = [row for row in choice if row["averaged"] and not row["chosen"]]
    # members: the chosen held-out fit, its refit(s), then the near ties' held-out fits
    trials = [result.members[0], *result.members[len(members) - len(ties):]]
    refit_images = list(result.members[1:len(members) - len(ties)])
    refits = []
    for row in [next(r for r in choice if r["chosen"]), *ties]:
        weight = row["weight"]
        penalty = {"regularizer": "tv", "regularizer_weight": weight} if weight else \
            {"regularizer": "none"}
        fitted = reconstruct(y, operator, stop=f"fixed:{row['num_iter']}",
                             **{**common, "seed": seed + 1}, **penalty)
        refits.append({"weight": weight, "num_iter": row["num_iter"], "psnr": fitted.psnr,
                        "seconds": fitted.elapsed, "image": fitted.image})
    check = float(np.abs(np.clip(refit_images[0], 0, 1) - refits[0]["image"]).max())
    refit = refit_images[0]
    variants = {
        "default": result.psnr,
        "chosen_refit": _psnr(clean, [trials[0], refit]),
        "refit": _psnr(clean, [refit]),
        "refit_half": _psnr(clean, [refit, *trials], [len(trials), *[1] * len(trials)]),
        "refits": _psnr(clean, [r["image"] for r in refits]),
        "refits_trials": _psnr(clean, [*trials, *(r["image"] for r in refits)]),
    }
    error = np.abs(result.image - clean).ravel()
    spread = result.spread.ravel()
    return {
        "image": image, "case": index, "seed": seed, "size": size, "m": m,
        "ratio": m / size**2, "snr": snr,
        "key": [image, index, size, m, snr, stop, *cs._options_text(options)],
        "variants": variants, "seconds": result.elapsed,
        "extra_refit_seconds": sum(r["seconds"] for r in refits[1:]),
        "refit_check": check,
        "members": [{k: row.get(k) for k in ("regularizer_weight", "num_iter", "psnr")}
                    for row in members],
        "choice": [{k: row.get(k) for k in ("weight", "holdout_loss", "margin_z", "psnr",
                                           "num_iter", "chosen", "averaged")}
                   for row in choice],
        "refits": [{k: v for k, v in r.items() if k != "image"} for r in refits],
        "spread": {"mean": float(spread.mean()), "rmse": float(np.sqrt((error**2).mean())),
                   "correlation": float(np.corrcoef(spread, error)[0, 1])},
    }


def report(payload: dict[str, Any]) -> str:
    """One line per case, the averages' PSNR, and their mean difference to the default."""
    rows = payload["rows"]
    head = "| case | m/n | noise | ties | " + " | ".join(VARIANTS) + \
        " | spread mean / RMSE | corr(spread, error) |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        ties = sum(c["averaged"] and not c["chosen"] for c in row["choice"])
        cells = [f"{row['variants'][v]:.2f}" for v in VARIANTS]
        lines.append(f"| {row['image']} {row['size']}² | {row['ratio']:.2f} | "
                     f"{cs._snr_text(row['snr'])} | {ties} | " + " | ".join(cells) +
                     f" | {row['spread']['mean']:.3f} / {row['spread']['rmse']:.3f} | "
                     f"{row['spread']['correlation']:.2f} |")
    if rows:
        means = [np.mean([r["variants"][v] - r["variants"]["default"] for r in rows])
                 for v in VARIANTS]
        lines.append(f"| mean − default ({len(rows)}) | | | | " +
                     " | ".join(f"{d:+.2f}" for d in means) + " | | |")
        sides = [(sum(r["variants"][v] > r["variants"]["default"] + 0.005 for r in rows),
                  sum(r["variants"][v] < r["variants"]["default"] - 0.005 for r in rows))
                 for v in VARIANTS]
        lines.append("| above / below the default | | | | " +
                     " | ".join(f"{up} / {down}" for up, down in sides) + " | | |")
        checks = max(r["refit_check"] for r in rows)
        lines.append(f"\nlargest pixel difference between the default's refit and the "
                     f"same refit made alone: {checks:.2g}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", action="append", default=[], metavar="IMAGE:K",
                        help="camera or astronaut, and an index into cs.RULE_CASES (repeat)")
    parser.add_argument("--report", action="store_true", help="print the table and exit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: 16², 60 iterations")
    parser.add_argument("--out-dir", type=Path, default=harness.RESULTS / "averaging")
    args = parser.parse_args(argv)
    path = args.out_dir / "averaging.json"
    if not args.report:
        cases = []
        for text in args.case:
            image, _, index = text.partition(":")
            if image not in ("camera", "astronaut") or not index.isdigit() \
                    or int(index) >= len(cs.RULE_CASES):
                parser.error(f"--case must be camera:K or astronaut:K with K < "
                             f"{len(cs.RULE_CASES)}, got {text!r}")
            cases.append((image, int(index)))
        store = harness.Store(path, True, {"seed": args.seed, "quick": args.quick,
                                           "cases": args.case})
        for image, index in cases:
            store.add(run_case(image, index, args.seed, args.quick))
            print(f"{image}:{index} done", flush=True)
    if not path.exists():
        print(f"error: {path} does not exist; run some --case first", file=sys.stderr)
        return 1
    payload = json.loads(path.read_text())
    print(report(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
