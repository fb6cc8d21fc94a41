"""Trace of the hold-out stop in one compressive-sensing fit: held-out loss and PSNR per iteration.

Fits the Deep Image Prior's hold-out member (no refit) for the whole budget with a patience that
never fires, recording after every iteration the training loss, the raw hold-out loss and the
PSNR, then prints where the PSNR peaks and where hold-out rules with
other patience / smoothing would have stopped on the same trajectory. One core, ~37 min at 128².

    OMP_NUM_THREADS=1 python benchmarks/holdout_trace.py --size 128 --ratio 0.1 --snr 20 \
        --fraction 0.1        # → results/holdout_trace_camera_128_0.1_snr20_f0.1.json
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import cs  # noqa: E402

import deepprior.stopping as stopping  # noqa: E402
from deepprior import reconstruct  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results"
EVERY = 20  # iterations between stored points


def rule_replay(raw: np.ndarray, psnr: np.ndarray, smoothing: float, patience: int) -> dict:
    """Where the library's hold-out rule with this smoothing and patience would stop on the
    recorded trajectory, and the PSNR of the iterate it would return (its own averaging and
    minimum bookkeeping, replayed)."""
    minimum, averaged, stop = stopping._Minimum(patience), None, None
    for step, value in enumerate(raw, start=1):
        averaged = stopping._smoothed(averaged, value, smoothing)
        minimum.update(step, averaged)
        if minimum.exhausted(step):
            stop = step
            break
    return {"smoothing": smoothing, "patience": patience, "best_iter": minimum.step,
            "psnr": float(psnr[minimum.step - 1]), "stopped_at": stop}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--snr", type=float, default=20.0, help="dB; 0 for noiseless")
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--iters", type=int, default=6000)
    parser.add_argument("--image", default="camera")
    parser.add_argument("--tv-weight", type=float, default=0.0,
                        help="fit DIP + this weight · TV (reconstruct's regularizer='tv'); "
                             "0: no penalty")
    parser.add_argument("--out-dir", type=pathlib.Path, default=RESULTS)
    args = parser.parse_args()
    snr = args.snr or None
    m = round(args.ratio * args.size ** 2)
    clean, operator, y, _ = cs.make_case(args.size, m, snr, 0, args.image)
    trace: list[tuple[float, float]] = []
    update = stopping.Holdout._update

    def recording(self, step, loss, output):  # the policy's own numbers, as it sees them
        fired = update(self, step, loss, output)
        trace.append((loss, self.last_loss))
        return fired

    stopping.Holdout._update = recording
    result = reconstruct(y[0].numpy(), operator, net="dip", ensemble=1, seed=0,
                         stop=f"holdout:fraction={args.fraction},patience={10 * args.iters},"
                              "smoothing=0.99",
                         max_num_iter=args.iters, ground_truth=clean,
                         regularizer="tv" if args.tv_weight else None,
                         regularizer_weight=args.tv_weight or None)
    psnr = result.history["psnr"]
    train, raw = np.array(trace).T
    replays = [rule_replay(raw, psnr, s, p) for s in (0.0, 0.99, 0.999) for p in (300, 1000)]
    out = {"image": args.image, "size": args.size, "m": m, "snr": snr, "fraction": args.fraction,
           "tv_weight": args.tv_weight,
           "seconds": result.elapsed, "best_psnr": float(psnr.max()),
           "best_psnr_iter": int(psnr.argmax()) + 1, "rules": replays,
           "every": EVERY, "psnr": psnr[EVERY - 1::EVERY].round(3).tolist(),
           "train_loss": train[EVERY - 1::EVERY].round(6).tolist(),
           "holdout_loss": raw[EVERY - 1::EVERY].round(6).tolist()}
    snr_tag = f"snr{snr:g}" if snr else "noiseless"
    path = args.out_dir / (f"holdout_trace_{args.image}_{args.size}_{args.ratio:g}_{snr_tag}"
                      f"_f{args.fraction:g}{f'_tv{args.tv_weight:g}' if args.tv_weight else ''}"
                      ".json")
    path.write_text(json.dumps(out, indent=1))
    print(f"best PSNR {out['best_psnr']:.2f} dB at iteration {out['best_psnr_iter']}; "
          f"last {psnr[-1]:.2f}")
    for r in replays:
        print(f"  smoothing {r['smoothing']}, patience {r['patience']}: iteration "
              f"{r['best_iter']}, {r['psnr']:.2f} dB, stopped at {r['stopped_at']}")
    print(path)


if __name__ == "__main__":
    main()
