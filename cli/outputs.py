"""What every command writes: the image, a JSON report and a plot of the fit, atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

import deepprior


class Outputs:
    """The three output paths of a run, checked before any fitting starts."""

    def __init__(self, image_path: Path, *, overwrite: bool):
        self.image = image_path
        self.report = image_path.with_suffix(".json")
        self.plot = image_path.with_name(image_path.stem + "_curve.png")
        self.overwrite = overwrite
        if image_path.suffix.lower() not in (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".npy"):
            raise ValueError(
                f"output {image_path} must end in .png, .tif, .tiff, .jpg, .jpeg or .npy"
            )
        if not overwrite:
            for path in (self.image, self.report, self.plot):
                if path.exists():
                    raise FileExistsError(f"{path} already exists; pass --overwrite to replace it")

    def write(self, image: np.ndarray, report: dict[str, Any], result) -> None:
        deepprior.save_image(self.image, image, overwrite=self.overwrite)
        text = json.dumps(deepprior.jsonable(report), indent=2)
        overwrite = self.overwrite
        deepprior.write_atomic(self.report, lambda f: f.write(text.encode()), overwrite=overwrite)
        deepprior.write_atomic(self.plot, lambda f: _plot(result, f), overwrite=overwrite)


def build_report(result, *, extra: dict[str, Any]) -> dict[str, Any]:
    """The JSON report of a run: configuration, stop, time and metrics."""
    report: dict[str, Any] = {
        "deepprior_version": deepprior.__version__,
        **extra,
        "num_iter": result.num_iter,
        "num_steps": result.num_steps,
        "stop_reason": result.stop_reason,
        "elapsed_s": round(result.elapsed, 3),
        "seconds_per_iter": round(result.elapsed / max(result.num_steps, 1), 5),
        "device": result.device,
        "final_loss": float(result.history["loss"][-1]) if len(result.history["loss"]) else None,
        "psnr": result.psnr,
        "ssim": result.ssim,
        "config": result.config,
    }
    return report


def _plot(result, handle) -> None:
    """Loss (and PSNR when known) against iteration, the returned iterate marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loss = result.history["loss"]
    steps = np.arange(1, len(loss) + 1)
    psnr = result.history.get("psnr")
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    ax.semilogy(steps, loss, color="tab:blue", lw=1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("training loss (MSE)", color="tab:blue")
    if result.num_iter > 0:
        ax.axvline(result.num_iter, color="k", ls="--", lw=1, label=f"returned: {result.num_iter}")
    if psnr is not None:
        twin = ax.twinx()
        twin.plot(steps, psnr, color="tab:red", lw=1)
        twin.set_ylabel("PSNR to ground truth (dB)", color="tab:red")
    ax.set_title(f"{result.config['net']} · norm={result.config['norm']}", fontsize=10)
    if result.num_iter > 0:
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(handle, format="png")
    plt.close(fig)
