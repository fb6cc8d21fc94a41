"""GPU speed study: seconds per iteration on CUDA, the cost of a host sync per iteration, and
how many fits one GPU runs at once. Part of ``benchmarks/gpu_check.sh``; needs a CUDA device.

- **seconds per iteration** of ``reconstruct`` (fixed budget, after a warm-up fit) for the Deep
  Decoder, DIP and ConvDecoder at 128², 256² and 512², with the losses read to the host once per
  8 iterations (the default on a GPU) and every iteration (what a callback forces), and with
  ``precision="bf16"``;
- **time to result** of the Deep Decoder and DIP on camera 256², σ = 25, automatic stop, in
  float32 and bfloat16 (with the PSNR of each);
- **K fits in one step**: K = 1, 2, 4, 8 fits of the Deep Decoder and DIP at 128² and 256²,
  in turn with ``fit`` and at once with ``fit_many`` (``speed_variants.k_fits``);
- **fits at once**: images per minute of :func:`deepprior.reconstruct_many` on 8 crops at 128²
  with 1, 2, 4 and 8 fits sharing the GPU (``gpus_per_fit`` = 1, 1/2, 1/4, 1/8).

Usage::

    python benchmarks/gpu_speed.py [--out-dir DIR] [--quick]
    python benchmarks/gpu_speed.py --smoke --device cpu --out-dir /tmp/g   # the script runs
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import harness
import torch
from speed_variants import k_fits

import deepprior

NETS = ("deep_decoder", "dip", "conv_decoder")
#: What each mode runs: per-iteration sizes and iterations, the time-to-result image size and
#: budget (None: the automatic stop's own), the K-fit sizes, steps and K, and the fits-at-once
#: crop size, iterations and counts. "smoke" only checks that the script runs, on any device.
PLANS: dict[str, dict[str, Any]] = {
    "full": {"sizes": (128, 256, 512), "iters": 200, "ttr_size": 256, "ttr_budget": None,
             "k_sizes": (128, 256), "k_steps": 50, "ks": (1, 2, 4, 8), "crop": 128,
             "crop_iters": 300, "counts": (1, 2, 4, 8)},
    "quick": {"sizes": (128,), "iters": 30, "ttr_size": 256, "ttr_budget": None,
              "k_sizes": (128,), "k_steps": 20, "ks": (1, 2, 4, 8), "crop": 128,
              "crop_iters": 30, "counts": (1, 2, 4, 8)},
    "smoke": {"sizes": (32,), "iters": 2, "ttr_size": 32, "ttr_budget": 2, "k_sizes": (32,),
              "k_steps": 2, "ks": (2,), "crop": 16, "crop_iters": 2, "counts": (1,)},
}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def per_iteration(net: str, size: int, iters: int, every_step: bool, device: str,
                  precision: str = "fp32") -> float:
    image = deepprior.sample_image("camera", size=size)
    noisy = deepprior.add_gaussian_noise(image, 25 / 255, seed=0)
    callback = (lambda state: None) if every_step else None  # a callback syncs every step
    options = {"net": net, "stop": f"fixed:{iters}", "device": device, "callback": callback,
               "precision": precision}
    deepprior.reconstruct(noisy, **{**options, "stop": f"fixed:{min(iters, 5)}"})  # warm-up
    _sync(device)
    result = deepprior.reconstruct(noisy, **options)
    return result.elapsed / result.num_steps


def fits_at_once(count: int, iters: int, crop: int, device: str) -> dict[str, Any]:
    """Eight crops of camera and the astronaut, ``count`` fits sharing the device."""
    camera, astronaut = (deepprior.sample_image(n, size=2 * crop) for n in ("camera", "astronaut"))
    crops = [(f"c{i}", deepprior.add_gaussian_noise(img[r:r + crop, c:c + crop], 25 / 255,
                                                    seed=i))
             for i, (img, r, c) in enumerate(
                 (img, r, c) for img in (camera, astronaut) for r in (0, crop) for c in (0, crop))]
    share = {"gpus_per_fit": 1 / count} if device.startswith("cuda") else {"workers": count}
    start = time.perf_counter()
    results = list(deepprior.reconstruct_many(crops, device=device, stop=f"fixed:{iters}",
                                              **share))
    seconds = time.perf_counter() - start
    return {"fits_at_once": count, "images": len(results), "seconds": seconds,
            "images_per_minute": 60 * len(results) / seconds,
            "failed": [r.name for r in results if not r.ok]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=harness.RESULTS)
    parser.add_argument("--quick", action="store_true", help="128² only, few iterations")
    parser.add_argument("--smoke", action="store_true",
                        help="check that the script runs (any --device): 32², 2 iterations")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N; cpu: --smoke")
    args = parser.parse_args(argv)
    device = args.device
    if not args.smoke and not device.startswith("cuda"):
        raise SystemExit("error: this study times a CUDA device; --smoke checks the script on "
                         f"{device}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device; this study runs on a GPU")
    plan = PLANS["smoke" if args.smoke else "quick" if args.quick else "full"]
    rows = []
    for net in NETS:
        for size in plan["sizes"]:
            batched = per_iteration(net, size, plan["iters"], False, device)
            synced = per_iteration(net, size, plan["iters"], True, device)
            bf16 = per_iteration(net, size, plan["iters"], False, device, precision="bf16")
            rows.append({"network": net, "size": size, "s/it (sync every 8)": batched,
                         "s/it (sync every step)": synced, "sync cost": synced / batched,
                         "s/it bf16": bf16, "bf16 speed-up": batched / bf16})
            print(rows[-1], flush=True)
    camera = deepprior.sample_image("camera", size=plan["ttr_size"])
    noisy = deepprior.add_gaussian_noise(camera, 25 / 255, seed=0)
    to_result = []
    for net, precision in [(n, p) for n in NETS[:2] for p in deepprior.PRECISIONS]:
        auto = deepprior.reconstruct(noisy, net=net, device=device, ground_truth=camera,
                                     precision=precision, max_num_iter=plan["ttr_budget"])
        to_result.append({"network": net, "precision": precision, "seconds": auto.elapsed,
                          "iterations": auto.num_steps, "psnr": auto.psnr,
                          "stop_reason": auto.stop_reason})
        print(to_result[-1], flush=True)
    k_fit_rows = [k_fits(net, size, k, plan["k_steps"], device, 2)
                  for net in NETS[:2] for size in plan["k_sizes"] for k in plan["ks"]]
    at_once = [fits_at_once(k, plan["crop_iters"], plan["crop"], device)
               for k in plan["counts"]]
    for row in at_once:
        print(row, flush=True)
    harness.RESULTS = args.out_dir  # save_json writes into harness.RESULTS
    name = "gpu_speed_smoke" if args.smoke else "gpu_speed"
    path = harness.save_json(name, {
        "per_iteration": rows, "time_to_result": to_result, "fits_at_once": at_once,
        "k_fits": k_fit_rows, "device": device,
        "gpu": torch.cuda.get_device_name(device) if device.startswith("cuda") else None})
    print(harness.markdown_table(rows, list(rows[0])))
    print(harness.markdown_table(k_fit_rows, list(k_fit_rows[0])))
    print(harness.markdown_table(at_once, ["fits_at_once", "images", "seconds",
                                           "images_per_minute"]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
