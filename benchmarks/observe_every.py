"""The Deep Image Prior's default stop reading the unperturbed output every k-th iteration only.

DIP perturbs its input at every iteration; its default rules (the discrepancy principle when
denoising, hold-out measurements in compressive sensing) read the output from the
*unperturbed* input, which costs the loop one more forward pass per iteration (a quarter of a
default fit). A rule with ``every=k`` reads only iterations k, 2k, … (weighing the past by
``smoothing``ᵏ): the fit does not change, only where the rule can stop. One fit per case runs
the default rule for k = 1, 2, 4, 8, 16 side by side (:class:`deepprior.stopping.Shadow`; the
fit stops once all have fired) and records, per k, where it stopped, the iterate it returns and
that iterate's PSNR: exactly what ``reconstruct`` with that rule would return. k = 1 is how
the defaults were measured in results/defaults.json and cs.json; after this study DIP's
default rules read every 8th iteration. ``--time`` times what that saves: the default call
(``stop="auto"``) against the same call with its rule reading every iteration, alternating.

    OMP_NUM_THREADS=1 python benchmarks/observe_every.py --case denoise:camera:128:25
    OMP_NUM_THREADS=1 python benchmarks/observe_every.py --case cs:camera:64:0.25:20
    OMP_NUM_THREADS=1 python benchmarks/observe_every.py --time --case cs:camera:64:0.25:20
    python benchmarks/observe_every.py --report     # the table of results/observe_every.json
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import cs  # noqa: E402
import harness  # noqa: E402

from deepprior import add_gaussian_noise, estimate_sigma, reconstruct, sample_image  # noqa: E402
from deepprior.api import image_to_tensor, problem_defaults  # noqa: E402
from deepprior.operators import Identity  # noqa: E402
from deepprior.stopping import Shadow, make_policy  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results" / "observe_every.json"
EVERY = (1, 2, 4, 8, 16)


def _case(text: str) -> dict[str, Any]:
    """``denoise:IMAGE:SIZE:SIGMA255`` or ``cs:IMAGE:SIZE:RATIO:SNR`` (SNR 0: noiseless;
    ``cs:…:SNR:sigma``: σ given to the fit, its default stop and TV weight)."""
    kind, image, size, *rest = text.split(":")
    if kind == "denoise" and len(rest) == 1:
        return {"problem": "denoise", "image": image, "size": int(size), "sigma255": int(rest[0])}
    if kind == "cs" and (len(rest) == 2 or rest[2:] == ["sigma"]) and float(rest[1]):
        return {"problem": "compressive_sensing", "image": image, "size": int(size),
                "ratio": float(rest[0]), "snr": float(rest[1]), "sigma_given": len(rest) == 3}
    if kind == "cs" and len(rest) == 2:
        return {"problem": "compressive_sensing", "image": image, "size": int(size),
                "ratio": float(rest[0]), "snr": None, "sigma_given": False}
    raise argparse.ArgumentTypeError(f"not a case: {text!r} (denoise:camera:128:25, "
                                     "cs:camera:64:0.25:20 or cs:camera:128:0.25:20:sigma)")


def run_case(case: dict[str, Any], seed: int = 0, max_num_iter: int | None = None
             ) -> dict[str, Any]:
    """One DIP fit with the default rule for every k of EVERY beside it (``max_num_iter``: a
    shorter budget than the default's, for a quick check; a rule that has not fired by then
    returns its best iterate so far)."""
    clean, data, operator, sigma = _observation(case, seed)
    if case["problem"] == "denoise":
        y = image_to_tensor(data)
        operator, sigma = Identity(tuple(y.shape[1:])), estimate_sigma(data)
    else:
        y = torch.from_numpy(data)[None]
    spec = problem_defaults(case["problem"], "dip").auto_stop(
        case.get("sigma_given", False), operator.num_measurements)
    spec = harness.without_every(spec)  # the default's own k, replaced by each k below
    rules, fit_operator, fit_y = {}, operator, y
    for k in EVERY:  # the same seed draws the same hold-out split for every k
        rules[k], fit_operator, fit_y = make_policy(f"{spec},every={k}", operator=operator, y=y,
                                                    sigma=sigma, seed=seed)
    shadow = Shadow({str(k): rule for k, rule in rules.items()})
    observation = data if case["problem"] == "denoise" else fit_y[0].numpy()
    start = time.perf_counter()
    given = {"sigma": sigma} if case.get("sigma_given") else {}  # and its default TV weight
    result = reconstruct(observation, None if case["problem"] == "denoise" else fit_operator,
                         problem=case["problem"], net="dip", seed=seed, stop=shadow,
                         ground_truth=clean, max_num_iter=max_num_iter, **given,
                         callback=lambda state: len(shadow.stopped) == len(rules))
    seconds = time.perf_counter() - start
    psnr = np.asarray(result.history["psnr"], dtype=np.float64)
    shadow.finalize(result.num_steps)  # a rule that did not fire: its best iterate so far
    rows = [{"every": k, "stopped": shadow.stopped[str(k)], "chosen": shadow.chosen[str(k)],
             "psnr": float(psnr[shadow.chosen[str(k)] - 1])} for k in EVERY]
    for row in rows:
        row["delta"] = row["psnr"] - rows[0]["psnr"]
    config = {k: result.config[k] for k in ("problem", "max_num_iter", "learning_rate",
                                            "reg_noise_std", "ema", "regularizer_weight")}
    return {**case, "seed": seed, "stop": spec, "config": config, "num_steps": result.num_steps,
            "seconds": seconds, "best_psnr": float(psnr.max()),
            "best_step": int(psnr.argmax()) + 1, "rules": rows}


def time_case(case: dict[str, Any], seed: int = 0, repeats: int = 2,
              max_num_iter: int | None = None) -> dict[str, Any]:
    """The default call, ``reconstruct`` with ``stop="auto"`` as a user makes it, against the
    same call with its rule reading every iteration (``every=1``, the rest of the spec and the
    ensemble the same), alternating ``repeats`` times: time, PSNR, iterations
    (``max_num_iter``: a shorter budget, for a quick check)."""
    clean, observation, operator, sigma = _observation(case, seed)
    m = None if operator is None else operator.num_measurements
    defaults = problem_defaults(case["problem"], "dip")
    spec = defaults.auto_stop(sigma is not None, m)
    given = {"sigma": sigma} if sigma is not None else {}
    penalty = defaults.auto_regularizer(sigma is not None) or "none"
    # the same spec, penalty, members and refit, reading each iteration ("auto" chooses its
    # penalty, then makes one refit, as the default does with no ensemble given)
    every1 = {"stop": f"{harness.without_every(spec)},every=1", "regularizer": penalty,
              **({} if penalty == "auto" else
                 {"ensemble": defaults.auto_ensemble(sigma is not None, m)})}
    calls = {"default": {"stop": "auto"}, "every=1": every1}
    timings = []
    for _ in range(repeats):
        for name, options in calls.items():
            start = time.perf_counter()
            result = reconstruct(observation, operator, problem=case["problem"], net="dip",
                                 seed=seed, ground_truth=clean, max_num_iter=max_num_iter,
                                 **given, **options)
            timings.append({"call": name, "stop": result.config["stop_resolved"],
                            "ensemble": len(result.config.get("members", [])) or 1,
                            "seconds": time.perf_counter() - start, "psnr": result.psnr,
                            "num_iter": result.num_iter, "num_steps": result.num_steps,
                            "members": [{k: m[k] for k in ("num_iter", "num_steps", "elapsed")}
                                        for m in result.config.get("members", [])]})
            print(json.dumps({k: timings[-1][k] for k in ("call", "seconds", "psnr",
                                                          "num_steps")}), flush=True)
    return {**case, "seed": seed, "timings": timings}


def _observation(case: dict[str, Any], seed: int):
    """Clean image, what ``reconstruct`` is given (noisy image or measurements), the operator
    (None when denoising) and σ (given to the fit only for ``sigma_given`` cases)."""
    size = case["size"]
    if case["problem"] == "denoise":
        clean = sample_image(case["image"], size=size)
        noisy = add_gaussian_noise(clean, case["sigma255"] / 255, seed=seed)
        return clean, noisy, None, None
    m = round(case["ratio"] * size * size)
    clean, operator, y, noise_std = cs.make_case(size, m, case["snr"], seed, case["image"])
    return clean, y[0].numpy(), operator, noise_std if case["sigma_given"] else None


def report(payload: dict[str, Any]) -> str:
    lines = ["| case | k = 1 stopped at | " + " | ".join(f"k = {k}" for k in EVERY) + " |",
             "|---|---|" + "---|" * len(EVERY)] if payload["runs"] else []
    for run in payload["runs"]:
        name = _name(run)
        first = run["rules"][0]
        cells = [f"{r['psnr']:.2f} ({round(r['delta'], 2) + 0:+.2f}) at {r['chosen']}"
                 for r in run["rules"]]
        lines.append(f"| {name}, seed {run['seed']} | {first['stopped']} | "
                     + " | ".join(cells) + " |")
    if payload.get("timings"):
        lines += ["", "| case | call | stop | fits | PSNR | iterations (steps) | s |",
                  "|---|---|---|---|---|---|---|"]
    for timed in payload.get("timings", []):
        for t in timed["timings"]:
            lines.append(f"| {_name(timed)}, seed {timed['seed']} | {t['call']} | {t['stop']} "
                         f"| {t['ensemble']} | {t['psnr']:.2f} | {t['num_iter']} "
                         f"({t['num_steps']}) | {t['seconds']:.0f} |")
    return "\n".join(lines)


def _name(run: dict[str, Any]) -> str:
    return (f"denoise {run['image']} {run['size']}² σ {run['sigma255']}"
            if run["problem"] == "denoise" else
            f"CS {run['image']} {run['size']}² m/n {run['ratio']} "
            f"{'SNR ' + format(run['snr'], 'g') if run['snr'] else 'noiseless'}"
            f"{', σ given' if run.get('sigma_given') else ''}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=_case, action="append", default=[],
                        help="denoise:IMAGE:SIZE:SIGMA255 or cs:IMAGE:SIZE:RATIO:SNR (repeatable)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iters", type=int, default=None,
                        help="a shorter budget than the default's (a quick check)")
    parser.add_argument("--out", type=pathlib.Path, default=RESULTS)
    parser.add_argument("--time", action="store_true",
                        help="instead: time the default call against the same with every=1, "
                        "alternating --repeats times")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--report", action="store_true", help="print the stored table")
    args = parser.parse_args(argv)
    payload = json.loads(args.out.read_text()) if args.out.exists() else {"runs": []}
    store = "timings" if args.time else "runs"
    for case in args.case:
        run = time_case(case, args.seed, args.repeats, args.iters) if args.time \
            else run_case(case, args.seed, args.iters)
        payload[store] = [r for r in payload.get(store, [])  # a case run again replaces its row
                          if {k: r.get(k) for k in (*case, "seed")} != {**case, "seed": args.seed}]
        payload[store].append(run)
        args.out.write_text(json.dumps(payload, indent=1) + "\n")
        if not args.time:  # time_case prints each call as it ends
            print(json.dumps({k: run[k] for k in ("num_steps", "seconds", "best_psnr")}),
                  flush=True)
    if payload["runs"] or payload.get("timings"):
        print(report(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
