"""The README's before/after pictures, made by deepprior itself.

    python benchmarks/figure_readme.py                    # results/before_after.png
    python benchmarks/figure_readme.py --problem inpaint  # results/inpainting.png

Each row: the observation | deepprior (automatic stop) | clean. Denoising: σ = 25/255, seed 0.
Inpainting: a text overlay removes 31% of the pixels (:func:`deepprior.text_mask`), noiseless.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import deepprior  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS, machine_info  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--images", nargs="+", default=["camera", "astronaut"])
    parser.add_argument("--net", default="deep_decoder")
    parser.add_argument("--problem", choices=("denoise", "inpaint"), default="denoise")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.out = args.out or RESULTS / ("before_after.png" if args.problem == "denoise"
                                      else "inpainting.png")

    rows = []
    for name in args.images:
        clean = deepprior.sample_image(name, size=args.size)
        if args.problem == "denoise":
            observed = deepprior.add_gaussian_noise(clean, 25 / 255, seed=0)
            result = deepprior.reconstruct(observed, net=args.net, stop="auto", seed=0)
        else:
            mask = deepprior.text_mask(clean.shape[:2])
            operator = deepprior.Mask(deepprior.image_to_tensor(clean).shape[1:], mask=mask)
            y, _ = deepprior.simulate_measurements(operator, clean, seed=0)
            observed = clean * (mask if clean.ndim == 2 else mask[:, :, None])
            result = deepprior.reconstruct(y, operator, net=args.net, stop="auto", seed=0)
        rows.append({
            "image": name,
            "noisy_psnr": deepprior.psnr(clean, observed),
            "psnr": deepprior.psnr(clean, result.image),
            "num_iter": result.num_iter,
            "num_steps": result.num_steps,
            "stop": result.config["stop_resolved"],
            "stop_reason": result.stop_reason,
            "elapsed_s": result.elapsed,
            "panels": (np.clip(observed, 0, 1), result.image, clean),
        })
        print(f"{name}: {rows[-1]['noisy_psnr']:.2f} -> {rows[-1]['psnr']:.2f} dB, "
              f"iteration {result.num_iter}/{result.num_steps}, {result.elapsed:.0f} s")

    fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.6 * len(rows)), dpi=100,
                             squeeze=False)
    for ax_row, row in zip(axes, rows, strict=True):
        titles = (f"{'noisy' if args.problem == 'denoise' else 'text removed'}  "
                  f"{row['noisy_psnr']:.2f} dB",
                  f"deepprior  {row['psnr']:.2f} dB", "clean")
        for ax, panel, title in zip(ax_row, row["panels"], titles, strict=True):
            ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None, vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.axis("off")
    what = "σ = 25/255" if args.problem == "denoise" else "inpainting, 31% of pixels missing"
    fig.suptitle(f"{args.net}, automatic stop, {what}, {args.size}×{args.size}", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out)
    summary = [{k: v for k, v in r.items() if k != "panels"} for r in rows]
    args.out.with_suffix(".json").write_text(
        json.dumps({"machine": machine_info(), "rows": summary}, indent=1) + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
