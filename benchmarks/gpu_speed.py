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

SIZES = (128, 256, 512)
NETS = ("deep_decoder", "dip", "conv_decoder")


def per_iteration(net: str, size: int, iters: int, every_step: bool,
                  precision: str = "fp32") -> float:
    image = deepprior.sample_image("camera", size=size)
    noisy = deepprior.add_gaussian_noise(image, 25 / 255, seed=0)
    callback = (lambda state: None) if every_step else None  # a callback syncs every step
    options = {"net": net, "stop": f"fixed:{iters}", "device": "cuda", "callback": callback,
               "precision": precision}
    deepprior.reconstruct(noisy, **{**options, "stop": "fixed:5"})  # warm-up (cuDNN, caches)
    torch.cuda.synchronize()
    result = deepprior.reconstruct(noisy, **options)
    return result.elapsed / result.num_steps


def fits_at_once(count: int, iters: int) -> dict[str, Any]:
    camera, astronaut = (deepprior.sample_image(n, size=256) for n in ("camera", "astronaut"))
    crops = [(f"c{i}", deepprior.add_gaussian_noise(img[r:r + 128, c:c + 128], 25 / 255, seed=i))
             for i, (img, r, c) in enumerate(
                 (img, r, c) for img in (camera, astronaut) for r in (0, 128) for c in (0, 128))]
    start = time.perf_counter()
    results = list(deepprior.reconstruct_many(crops, device="cuda", gpus_per_fit=1 / count,
                                              stop=f"fixed:{iters}"))
    seconds = time.perf_counter() - start
    return {"fits_at_once": count, "images": len(results), "seconds": seconds,
            "images_per_minute": 60 * len(results) / seconds,
            "failed": [r.name for r in results if not r.ok]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=harness.RESULTS)
    parser.add_argument("--quick", action="store_true", help="128² only, few iterations")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("error: no CUDA device; this study runs on a GPU")
    iters = 30 if args.quick else 200
    rows = []
    for net in NETS:
        for size in SIZES[:1] if args.quick else SIZES:
            batched = per_iteration(net, size, iters, every_step=False)
            synced = per_iteration(net, size, iters, every_step=True)
            bf16 = per_iteration(net, size, iters, every_step=False, precision="bf16")
            rows.append({"network": net, "size": size, "s/it (sync every 8)": batched,
                         "s/it (sync every step)": synced, "sync cost": synced / batched,
                         "s/it bf16": bf16, "bf16 speed-up": batched / bf16})
            print(rows[-1], flush=True)
    camera = deepprior.sample_image("camera", size=256)
    noisy = deepprior.add_gaussian_noise(camera, 25 / 255, seed=0)
    to_result = []
    for net, precision in [(n, p) for n in NETS[:2] for p in deepprior.PRECISIONS]:
        auto = deepprior.reconstruct(noisy, net=net, device="cuda", ground_truth=camera,
                                     precision=precision)
        to_result.append({"network": net, "precision": precision, "seconds": auto.elapsed,
                          "iterations": auto.num_steps, "psnr": auto.psnr,
                          "stop_reason": auto.stop_reason})
        print(to_result[-1], flush=True)
    k_fit_rows = [k_fits(net, size, k, 20 if args.quick else 50, "cuda", 2)
                  for net in NETS[:2] for size in SIZES[:1 if args.quick else 2]
                  for k in (1, 2, 4, 8)]
    at_once = [fits_at_once(k, 30 if args.quick else 300) for k in (1, 2, 4, 8)]
    for row in at_once:
        print(row, flush=True)
    path = harness.save_json("gpu_speed", {"per_iteration": rows, "time_to_result": to_result,
                                           "fits_at_once": at_once, "k_fits": k_fit_rows,
                                           "gpu": torch.cuda.get_device_name(0)})
    print(harness.markdown_table(rows, list(rows[0])))
    print(harness.markdown_table(k_fit_rows, list(k_fit_rows[0])))
    print(harness.markdown_table(at_once, ["fits_at_once", "images", "seconds",
                                           "images_per_minute"]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
