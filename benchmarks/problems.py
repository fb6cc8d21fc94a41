"""Inpainting, super-resolution and deblurring: deepprior against what users would pick instead.

Protocol
--------
Clean images: scikit-image's ``camera`` (gray) and ``astronaut`` (RGB) resized with
anti-aliasing to 128² by :func:`deepprior.sample_image`. Observations come from
:func:`deepprior.simulate_measurements` (seed 0): noise σ in 0–255 units on the observed
entries. PSNR (peak 1) and SSIM on outputs clipped to [0, 1], over the whole image.

- **Inpainting** (:class:`deepprior.Mask`): 50% of the pixels removed at random
  (:func:`deepprior.random_mask`), noiseless and σ = 25; a text overlay
  (:func:`deepprior.text_mask`, 31% of the pixels). Baselines: scikit-image's biharmonic
  inpainting (``inpaint_biharmonic``) and TV inpainting (FISTA, λ oracle-tuned).
- **Super-resolution** (:class:`deepprior.Downsample`, bicubic kernel): ×2 and ×4, noiseless.
  Baselines: bicubic and Lanczos upsampling of the low-resolution image (Pillow), and
  TV-regularised super-resolution (FISTA through the same operator, λ oracle-tuned).
- **Deblurring** (:class:`deepprior.Blur`, circular): Gaussian std 1.6 px and 9 px motion at
  30°, σ = 0 and 5. Baselines: Wiener (``skimage.restoration.wiener``, FFT-based like the
  operator, balance oracle-tuned), Richardson–Lucy (through the same circular operator,
  iterations oracle-tuned) and TV deconvolution (FISTA, λ oracle-tuned).
- **Compressive sensing from a user's files**: a Gaussian matrix and its measurements saved to
  ``A.npy`` / ``y.npy`` and reconstructed with ``deepprior cs --matrix A.npy
  --measurements-file y.npy`` (the command line a user with their own sensing matrix runs),
  with the defaults and with the options of :data:`FILE_VARIANTS` (1.7 h of one core for the
  three).

"Oracle-tuned" baselines choose their parameter against the clean image: an upper bound on
what they can do, not something a user could run. deepprior runs once per case with its
automatic stop shadowed (``deepprior.Shadow``, as in denoise.py): the automatic rule's iterate
and the best iterate of the budget (oracle) come from the same fit.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/problems.py --resume      # everything (hours)
    python benchmarks/problems.py --report
    python benchmarks/problems.py --quick --out-dir /tmp/q
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import baselines
import harness
import numpy as np
import torch
from denoise import run_prior

from deepprior import (
    Blur,
    Downsample,
    GaussianSensing,
    Mask,
    gaussian_kernel,
    image_to_tensor,
    load_image,
    motion_kernel,
    psnr,
    random_mask,
    sample_image,
    simulate_measurements,
    ssim,
    text_mask,
)

#: (problem, image, size, setting, σ in 0-255 units) in priority order.
FULL_CASES: list[tuple[str, str, int, str, int]] = [
    ("inpainting", "camera", 128, "random:0.5", 0),
    ("superres", "camera", 128, "x4", 0),
    ("deblur", "camera", 128, "gaussian:1.6", 5),
    ("inpainting", "camera", 128, "text", 0),
    ("inpainting", "camera", 128, "random:0.5", 25),
    ("superres", "camera", 128, "x2", 0),
    ("deblur", "camera", 128, "motion:9,30", 5),
    ("deblur", "camera", 128, "gaussian:1.6", 0),
    ("deblur", "camera", 128, "motion:9,30", 0),
    ("inpainting", "astronaut", 128, "random:0.5", 0),
    ("superres", "astronaut", 128, "x4", 0),
]
QUICK_CASES = [
    ("inpainting", "camera", 64, "text", 0),
    ("superres", "camera", 64, "x2", 0),
    ("deblur", "camera", 64, "gaussian:1.6", 5),
]
BASELINES = {
    "inpainting": ("biharmonic", "tv_oracle"),
    "superres": ("bicubic", "lanczos", "tv_oracle"),
    "deblur": ("wiener_oracle", "richardson_lucy_oracle", "tv_oracle"),
}
LABELS = {
    "observed": "observation", "biharmonic": "biharmonic", "tv_oracle": "TV (oracle λ)",
    "bicubic": "bicubic", "lanczos": "Lanczos", "wiener_oracle": "Wiener (oracle balance)",
    "richardson_lucy_oracle": "Richardson–Lucy (oracle iterations)",
    "deep_decoder": "Deep Decoder", "conv_decoder": "ConvDecoder", "dip": "DIP",
}
LAMBDAS = tuple(float(10.0**e) for e in np.arange(-1.0, -5.5, -0.5))
QUICK_SOLVER = {"lambdas": (1e-2, 1e-3), "num_iter": 30}
#: Published numbers where the protocol is comparable (none is: different images and sizes).
PUBLISHED = ("Deep Image Prior paper (Ulyanov et al. 2018): ×4 super-resolution 29.90 dB on "
             "Set5 and 27.00 dB on Set14 (bicubic 28.43 / 26.05); inpainting of text and of "
             "50% missing pixels on their own images. Their protocol (image sets, sizes, "
             "kernels) differs from this study's, so the numbers are not comparable and are "
             "not put in the tables.")


def make_operator(problem: str, setting: str, shape: tuple[int, int, int]):
    """The forward model of one case."""
    if problem == "inpainting":
        mask = (text_mask(shape[1:]) if setting == "text"
                else random_mask(shape[1:], float(setting.split(":")[1]), seed=0))
        return Mask(shape, mask=mask)
    if problem == "superres":
        return Downsample(int(setting[1:]), shape)
    name, _, args = setting.partition(":")
    values = [float(v) for v in args.split(",")]
    kernel = gaussian_kernel(*values) if name == "gaussian" else motion_kernel(*values)
    return Blur(kernel, shape)


def make_case(problem: str, image: str, size: int, setting: str, sigma255: int, seed: int):
    """Clean image, operator, measurements (numpy, measurement shape) and noise σ."""
    clean = sample_image(image, size=size)
    operator = make_operator(problem, setting, tuple(image_to_tensor(clean).shape[1:]))
    y, sigma = simulate_measurements(operator, clean, sigma=sigma255 / 255 or None, seed=seed)
    return clean, operator, y, sigma


def _image(y: np.ndarray) -> np.ndarray:
    """Measurements of an image-shaped operator (C, H, W) → (H, W) or (H, W, C)."""
    return y[0] if y.shape[0] == 1 else y.transpose(1, 2, 0)


def run_baseline(method: str, problem: str, clean: np.ndarray, operator: Any, y: np.ndarray,
                 *, quick: bool) -> baselines.BaselineResult:
    """One classical method on one case."""
    start = time.perf_counter()
    solver = QUICK_SOLVER if quick else {"lambdas": LAMBDAS, "num_iter": 300}
    if method == "tv_oracle":
        result, path = baselines.oracle_tune(
            baselines.fista_tv, clean, solver["lambdas"], operator=operator,
            y=torch.from_numpy(y)[None], num_iter=solver["num_iter"])
        return result
    channel_axis = -1 if clean.ndim == 3 else None
    if method == "biharmonic":
        from skimage.restoration import inpaint_biharmonic

        missing = ~operator.mask[0, 0].numpy()
        image = inpaint_biharmonic(_image(y), missing, channel_axis=channel_axis)
        return baselines.BaselineResult(image, time.perf_counter() - start)
    if method in ("bicubic", "lanczos"):
        from PIL import Image

        low = _image(y)
        resample = Image.Resampling.BICUBIC if method == "bicubic" else Image.Resampling.LANCZOS
        planes = [low] if low.ndim == 2 else [low[:, :, c] for c in range(low.shape[2])]
        up = [np.asarray(Image.fromarray(p.astype(np.float32), mode="F").resize(
            clean.shape[1::-1], resample)) for p in planes]
        image = up[0] if low.ndim == 2 else np.stack(up, axis=-1)
        return baselines.BaselineResult(image, time.perf_counter() - start)
    kernel = operator.kernel.numpy()
    blurred = np.clip(_image(y), 0, 1)
    if method == "wiener_oracle":
        from skimage.restoration import wiener

        grid = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)
        return _best(clean, {b: _per_channel(lambda p, b=b: wiener(p, kernel, b), blurred)
                             for b in grid}, "balance", start)
    grid = (5, 10, 20, 50, 100, 200) if not quick else (5, 10)
    measured = torch.from_numpy(y)[None]
    outputs = {n: baselines.to_image(baselines.richardson_lucy(operator, measured, n))
               for n in grid}
    return _best(clean, outputs, "num_iter", start)


def _per_channel(restore, image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return restore(image)
    return np.stack([restore(image[:, :, c]) for c in range(image.shape[2])], axis=-1)


def _best(clean: np.ndarray, outputs: dict[Any, np.ndarray], name: str,
          start: float) -> baselines.BaselineResult:
    scores = {k: psnr(clean, np.clip(v, 0, 1)) for k, v in outputs.items()}
    best = max(scores, key=scores.get)
    return baselines.BaselineResult(outputs[best], time.perf_counter() - start,
                                    {name: best, "psnr_by_" + name: scores})


def _key(row: dict[str, Any]) -> list:
    return [row["problem"], row["image"], row["size"], row["setting"], row["sigma255"],
            row["method"]]


def run_study(args: argparse.Namespace, store: harness.Store) -> None:
    """Baselines, then the deepprior arms, then the user-matrix CS run."""
    cases = QUICK_CASES if args.quick else FULL_CASES
    shard, shards = args.shard
    for problem, image, size, setting, sigma255 in cases[shard::shards]:
        clean, operator, y, _ = make_case(problem, image, size, setting, sigma255, args.seed)
        methods = [*BASELINES[problem], *args.nets] if args.only == "all" else (
            BASELINES[problem] if args.only == "baselines" else args.nets)
        for method in methods:
            row = {"problem": problem, "image": image, "size": size, "setting": setting,
                   "sigma255": sigma255, "method": method}
            row["key"] = _key(row)
            if store.key(row) in store.done and not args.recompute:
                continue
            if method in LABELS and method in BASELINES[problem]:
                out = run_baseline(method, problem, clean, operator, y, quick=args.quick)
                image_out = np.clip(out.image, 0, 1)
                row.update(psnr=psnr(clean, image_out), ssim=ssim(clean, image_out),
                           seconds=out.seconds, params=out.params)
            else:
                budget = 60 if args.quick else args.budget
                options = {"channels": 16} if args.quick else None
                row.update(run_prior(y, clean, net=method, operator=operator,
                                     max_num_iter=budget, seed=args.seed, net_options=options))
            store.add(row)
            _log(row)
    if shard == 0 and args.only != "baselines":
        cs_from_files(args, store)


#: ``deepprior cs --matrix ...`` as run by a user, and with options beside it: the method label
#: of each row and the options added to the command.
FILE_VARIANTS = (("deepprior cs --matrix (default network)", ()),
                 ("deepprior cs --matrix --regularizer none", ("--regularizer", "none")),
                 # the default's no-penalty candidate lost here running all 6,000 iterations,
                 # still improving: does it win with twice the budget? (No: RESULTS.md §4.)
                 ("deepprior cs --matrix --iters 12000", ("--iters", "12000")))


def cs_from_files(args: argparse.Namespace, store: harness.Store) -> None:
    """``deepprior cs --matrix A.npy --measurements-file y.npy``: a user's own sensing files,
    with the defaults and with each of :data:`FILE_VARIANTS`' options."""
    size, m = (32, 300) if args.quick else (64, 1000)
    clean = sample_image("camera", size=size)
    operator = GaussianSensing(m, (size, size), seed=args.seed)
    y, _ = simulate_measurements(operator, clean, seed=args.seed)
    with tempfile.TemporaryDirectory() as folder:  # the files, written once for every variant
        a_path, y_path = Path(folder, "A.npy"), Path(folder, "y.npy")
        np.save(a_path, operator.matrix.numpy())
        np.save(y_path, y.reshape(-1))
        for method, extra in FILE_VARIANTS:
            row = {"problem": "cs", "image": "camera", "size": size,
                   "setting": f"m={m} from files", "sigma255": 0, "method": method}
            row["key"] = _key(row)
            if store.key(row) in store.done and not args.recompute:
                continue
            output = Path(folder, f"x{len(store.payload['rows'])}.png")
            options = dict(zip(extra[::2], extra[1::2], strict=True))
            if args.quick:  # a smoke run's budget and width replace a variant's own
                options |= {"--iters": "40", "--channels": "16"}
            command = ["deepprior", "cs", "--matrix", str(a_path), "--measurements-file",
                       str(y_path), "--shape", f"{size}x{size}",
                       *(word for option in options.items() for word in option)]
            run = [*command, "-o", str(output), "--quiet", "--seed", str(args.seed)]
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "deepprior", *run[1:]], check=True)
            seconds = time.perf_counter() - start
            report = json.loads(output.with_suffix(".json").read_text())
            config, image = report["config"], load_image(output)
            row.update(psnr=psnr(clean, image), ssim=ssim(clean, image), seconds=seconds,
                       net=config["net"], num_iter=report.get("num_iter"),
                       stop_reason=report.get("stop_reason"),
                       regularizer=config.get("regularizer"),
                       regularizer_weight=config.get("regularizer_weight"),
                       regularizer_choice=config.get("regularizer_choice"),
                       command=" ".join(command))
            store.add(row)
            _log(row)


def _log(row: dict[str, Any]) -> None:
    if "psnr_oracle" in row:
        auto = "n/a" if row.get("psnr_auto") is None else f"{row['psnr_auto']:.2f} dB"
        text = (f"auto {auto} (it {row['auto_step']}), oracle {row['psnr_oracle']:.2f} dB "
                f"(it {row['oracle_step']}), {row['seconds_per_iter']:.3f} s/it")
    else:
        text = f"{row['psnr']:.2f} dB, SSIM {row['ssim']:.3f}, {row['seconds']:.2f} s"
    print(f"{row['problem']} {row['image']} {row['size']} {row['setting']} "
          f"σ={row['sigma255']} {row['method']}: {text}", flush=True)


# --------------------------------------------------------------------------- report


def _cases(rows: list[dict[str, Any]]) -> list[tuple]:
    seen: list[tuple] = []
    for r in rows:
        case = (r["problem"], r["image"], r["size"], r["setting"], r["sigma255"])
        if case not in seen:
            seen.append(case)
    return seen


def report(payload: dict[str, Any]) -> str:
    """One markdown table per problem: PSNR (SSIM) per method; deepprior auto / oracle."""
    rows = payload["rows"]
    parts = []
    for problem in ("inpainting", "superres", "deblur", "cs"):
        cases = [c for c in _cases(rows) if c[0] == problem]
        if not cases:
            continue
        methods = [m for m in dict.fromkeys(r["method"] for r in rows if r["problem"] == problem)]
        lines = []
        for case in cases:
            line: dict[str, Any] = {"case": f"{case[1]} {case[2]}² {case[3]}, σ={case[4]}"}
            for method in methods:
                hit = next((r for r in rows if (r["problem"], r["image"], r["size"],
                            r["setting"], r["sigma255"], r["method"]) == (*case, method)), None)
                if hit is None:
                    line[LABELS.get(method, method)] = ""
                elif "psnr_oracle" in hit:
                    line[LABELS.get(method, method)] = (
                        f"{_fmt(hit.get('psnr_auto'))} / {_fmt(hit['psnr_oracle'])}")
                else:
                    line[LABELS.get(method, method)] = f"{hit['psnr']:.2f} ({hit['ssim']:.3f})"
            lines.append(line)
        columns = ["case", *(LABELS.get(m, m) for m in methods)]
        parts += [f"### {problem}", "", harness.markdown_table(lines, columns), ""]
    return "\n".join(parts)


def _fmt(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.2f}"


def plot(payload: dict[str, Any], path: Path) -> Path | None:
    """Bar chart: best classical baseline vs deepprior's automatic stop, per case."""
    from matplotlib.figure import Figure

    rows = payload["rows"]
    cases = [c for c in _cases(rows) if c[0] != "cs"]
    if not cases:
        return None
    best, auto = [], []
    for case in cases:
        mine = [r for r in rows if (r["problem"], r["image"], r["size"], r["setting"],
                                    r["sigma255"]) == case]
        classical = [r["psnr"] for r in mine if "psnr" in r and "psnr_oracle" not in r]
        prior = [r.get("psnr_auto") for r in mine if "psnr_oracle" in r]
        best.append(max(classical) if classical else np.nan)
        auto.append(prior[0] if prior and prior[0] is not None else np.nan)
    fig = Figure(figsize=(10, 3.6))
    ax = fig.add_subplot()
    x = np.arange(len(cases))
    ax.bar(x - 0.2, best, 0.4, label="best classical (oracle-tuned where marked)")
    ax.bar(x + 0.2, auto, 0.4, label="deepprior, automatic stop")
    ax.set_xticks(x)
    ax.set_xticklabels([f"{c[0]}\n{c[1]} {c[3]} σ={c[4]}" for c in cases], fontsize=6)
    ax.set_ylabel("PSNR (dB)")
    low = np.nanmin([*best, *auto])
    ax.set_ylim(low - 3, np.nanmax([*best, *auto]) + 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    harness.study_arguments(parser, name="problems")
    parser.add_argument("--quick", action="store_true", help="smoke run (< 2 minutes)")
    parser.add_argument("--nets", nargs="+", default=["deep_decoder"],
                        help="deepprior networks to run (deep_decoder)")
    parser.add_argument("--budget", type=int, default=3000,
                        help="iteration budget of each deepprior fit (3000)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return harness.study_main(args, name="problems", run=run_study, plot=plot, report=report,
                              config={"nets": args.nets, "budget": args.budget})


if __name__ == "__main__":
    raise SystemExit(main())
