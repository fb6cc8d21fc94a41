"""``deepprior analyze``: fit once per normalisation and show, layer by layer, what happens inside.

For each chosen normalisation the command fits the network to the image (Adam through
:func:`deepprior.reconstruct`, the same seed and hence the same initial weights for every
normalisation) with :class:`deepprior.analysis.Diagnostics` as the callback, then writes

- ``analysis.json``: settings, per normalisation the loss/PSNR history, every monitor series and
  a summary;
- ``grad_norms.png`` (per-layer gradient norms, log scale), ``conditioning.png`` (per-layer
  condition numbers of the Gauss–Newton blocks), ``oscillation.png`` (cosine between adjacent
  gradients), ``effective_rank.png`` and ``loss.png``;

and prints a summary table with the comparisons the papers make (first-layer gradient norm and
median condition number with and without normalisation).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

import deepprior
from deepprior.analysis import Diagnostics

from .common import (
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    MAX_PIXELS,
    Debug,
    Device,
    Lr,
    MaxPixels,
    Net,
    Overwrite,
    Quiet,
    Seed,
    Width,
    check_device,
    check_lr,
    choices_enum,
    error_funnel,
    image_or_demo,
    sigma_from_cli,
)
from .outputs import all_or_none, check_outputs

NORMS = ("channel", "none", "batch")
AnalyzeNorm = choices_enum("AnalyzeNorm", (*NORMS, "all"))
ALL_NORMS = AnalyzeNorm("all")
#: Side length of the bundled camera image when no IMAGE is given.
DEMO_SIZE = 64
REPORT = "analysis.json"
PLOTS = {
    "grad_norms": "grad_norms.png",
    "conditioning": "conditioning.png",
    "oscillation": "oscillation.png",
    "effective_rank": "effective_rank.png",
    "loss": "loss.png",
}
LABELS = {"channel": "channel norm", "batch": "batch norm", "none": "no normalization"}


def analyze(
    image: Annotated[
        Path | None,
        typer.Argument(
            help="Image to fit (PNG, TIFF, JPEG, .npy). Default: the bundled camera image "
            "resized to --size."
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Folder for analysis.json and the plots (default: "
                     "IMAGE_analysis/ next to IMAGE, camera_analysis/ for the bundled image)."),
    ] = None,
    net: Net = "deep_decoder",
    norm: Annotated[
        AnalyzeNorm,
        typer.Option("--norm", help="A normalization, or all (one fit per normalization)."),
    ] = ALL_NORMS,
    iters: Annotated[int, typer.Option("--iters", min=1, help="Iterations per fit.")] = 1000,
    sigma: Annotated[
        float | None,
        typer.Option("--sigma", help="Add Gaussian noise of this std (0-255 units) and fit "
                     "the noisy image; PSNR is reported against the clean one."),
    ] = None,
    every: Annotated[
        int, typer.Option("--every", min=1, help="Record gradients and ranks every N steps.")
    ] = 10,
    curvature_every: Annotated[
        int | None,
        typer.Option("--curvature-every", min=0,
                     help="Curvature (Lanczos) every N steps; 0 turns it off. "
                     "Default: half of --iters (the start, middle and end)."),
    ] = None,
    curvature_iters: Annotated[
        int, typer.Option("--curvature-iters", min=2, max=200,
                          help="Lanczos steps per layer and evaluation.")
    ] = 20,
    size: Annotated[
        int, typer.Option("--size", min=8, help="Side of the bundled image when IMAGE is omitted.")
    ] = DEMO_SIZE,
    channels: Width = None,
    lr: Lr = None,
    seed: Seed = 0,
    device: Device = "auto",
    overwrite: Overwrite = False,
    quiet: Quiet = False,
    debug: Debug = False,
    max_pixels: MaxPixels = MAX_PIXELS,
) -> None:
    """Show per-layer gradient norms, conditioning, oscillation and rank during a fit.

    Exit codes: 0 done, 1 error, 2 the command line does not parse, 3 a fit diverged, 130
    Ctrl-C (the runs so far are written).
    """
    with error_funnel(debug):
        norms = _norms(norm)
        check_device(device)
        check_lr(lr)
        noise_sigma = sigma_from_cli(sigma, "--sigma")
        if output is None:
            output = Path("camera_analysis") if image is None else image.with_name(
                f"{image.stem}_analysis")
        if curvature_every is None:
            curvature_every = max(1, iters // 2)
        paths = _output_paths(output, overwrite, image, curvature=curvature_every > 0)
        clean, source = image_or_demo(image, size, max_pixels)
        observation = clean
        if noise_sigma is not None:
            observation = deepprior.add_gaussian_noise(clean, noise_sigma, seed=seed)
        settings = {
            "every": every,
            "curvature_every": curvature_every,
            "curvature_iters": curvature_iters,
            "curvature": "gauss_newton",
            "lanczos_start": "gradient",
        }
        for name in norms[1:]:  # the other runs' calls checked too before the first fit
            run_one(observation, clean, net=net, norm=name, iters=iters, lr=lr, seed=seed,
                    device=device, channels=channels, settings=settings, progress=False,
                    dry=True)
        runs: dict[str, dict[str, Any]] = {}
        for name in norms:
            headline = f"fitting {net}, norm={name}, {iters} iterations on {source}"
            runs[name] = run_one(  # the headline once the library has checked the call
                observation, clean, net=net, norm=name, iters=iters, lr=lr, seed=seed,
                device=device, channels=channels, settings=settings, progress=not quiet,
                on_start=None if quiet else lambda plan, line=headline: typer.echo(line),
            )
            if runs[name]["stop_reason"].startswith("interrupted"):
                break
        report = {
            "deepprior_version": deepprior.__version__,
            "command": "analyze",
            "input": source,
            "image_shape": list(clean.shape),
            "net": net,
            "iters": iters,
            "sigma_255": None if noise_sigma is None else noise_sigma * 255,
            "seed": seed,
            "settings": settings,
            "runs": runs,
            "comparison": compare(runs),
        }
        written = write_outputs(report, paths, overwrite=overwrite)
        stale = [output / name for name in PLOTS.values()  # an earlier run's plots that
                 if overwrite and output / name not in written  # this one has not made
                 and (output / name).is_file()]
        for path in stale:
            path.unlink()
        if not quiet:
            typer.echo(summary_table(report))
            typer.echo(f"wrote {', '.join(str(p) for p in written)}"
                       + (f"; removed an earlier run's {', '.join(p.name for p in stale)}"
                          if stale else ""))
        reasons = [run["stop_reason"] for run in runs.values()]
        if any(reason.startswith("interrupted") for reason in reasons):
            typer.echo(f"interrupted (Ctrl-C); wrote the {len(runs)} run(s) so far", err=True)
            raise typer.Exit(code=EXIT_INTERRUPTED)
        diverged = [name for name, run in runs.items()
                    if run["stop_reason"].startswith("diverged")]
        if diverged:
            typer.echo(f"warning: the fit with norm={', '.join(diverged)} diverged; its series "
                       "end at the divergence; try a smaller --lr", err=True)
            raise typer.Exit(code=EXIT_DIVERGED)


# --------------------------------------------------------------------------- running


def run_one(
    observation: np.ndarray,
    clean: np.ndarray,
    *,
    net: str,
    norm: str,
    iters: int,
    lr: float | None,
    seed: int,
    device: str,
    channels: int | None,
    settings: dict[str, Any],
    progress: bool,
    on_start: Callable[[dict[str, Any]], None] | None = None,
    dry: bool = False,
) -> dict[str, Any] | None:
    """One fit with the diagnostics attached (every series records the last iteration too);
    its results as a JSON-ready dict. ``dry``: the call checked (``deepprior.dry_run``), no
    fit, None."""
    curvature_every = settings["curvature_every"]
    diagnostics = Diagnostics(
        every=settings["every"],
        curvature_every=curvature_every,
        curvature_iters=settings["curvature_iters"],
        curvature=settings["curvature"],
        start=settings["lanczos_start"],
        seed=seed,
        last=iters,
    )
    result = (deepprior.dry_run if dry else deepprior.reconstruct)(
        observation,
        net=net,
        norm=norm,
        max_num_iter=iters,
        learning_rate=lr,
        stop=f"fixed:{iters}",
        ground_truth=clean,
        seed=seed,
        device=device,
        progress=progress,
        callback=diagnostics,
        net_options={"channels": channels} if channels else None,
        on_start=on_start,
    )
    if dry:
        return None
    loss = result.history["loss"]
    return {
        "final_loss": float(loss[-1]) if len(loss) else None,  # None: Ctrl-C before step 1
        "psnr": result.psnr,
        "num_steps": result.num_steps,
        "stop_reason": result.stop_reason,
        "elapsed_s": result.elapsed,
        "monitor_seconds": diagnostics.seconds,
        "device": result.device,
        "config": result.config,
        "history": {"loss": loss.tolist(), "psnr": result.history["psnr"].tolist()},
        "summary": diagnostics.summary(),
        "diagnostics": diagnostics.to_dict(),
    }


def compare(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each normalised run against the unnormalised one: gradient and conditioning ratios."""
    if "none" not in runs:
        return {}
    base = runs["none"]["summary"]
    comparison: dict[str, Any] = {}
    for name, run in runs.items():
        if name == "none":
            continue
        other = run["summary"]
        comparison[f"{name}_vs_none"] = {
            "first_layer_grad_norm_step1_ratio": _ratio(other.get("grad_norm_first"),
                                                        base.get("grad_norm_first")),
            "first_layer_grad_norm_median_ratio": _ratio(other.get("grad_norm_first_median"),
                                                         base.get("grad_norm_first_median")),
            "condition_median_initial_ratio": _ratio(base.get("condition_median_initial"),
                                                     other.get("condition_median_initial")),
            "condition_median_ratio": _ratio(base.get("condition_median"),
                                             other.get("condition_median")),
        }
    return comparison


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator; inf for x/0 with x > 0; None when unknown or both 0."""
    if numerator is None or denominator is None:
        return None
    if denominator == 0:
        return math.inf if numerator > 0 else None
    return numerator / denominator


def _norms(norm: AnalyzeNorm) -> tuple[str, ...]:
    return NORMS if norm.value == "all" else (norm.value,)


def _output_paths(folder: Path, overwrite: bool, image: Path | None, *,
                  curvature: bool = True) -> dict[str, Path]:
    """The report and plot paths in ``folder`` (the conditioning plot with ``curvature``),
    checked before any fit."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--output {folder} is a file; give a folder for the report and plots")
    paths = {"report": folder / REPORT, **{k: folder / v for k, v in PLOTS.items()
                                           if curvature or k != "conditioning"}}
    check_outputs(paths, overwrite=overwrite, inputs=[image] if image else [])
    return paths


# --------------------------------------------------------------------------- outputs


def write_outputs(
    report: dict[str, Any], paths: dict[str, Path], *, overwrite: bool
) -> list[Path]:
    """analysis.json and the plots, all or none; returns the paths written."""
    text = json.dumps(deepprior.jsonable(report, digits=4), separators=(",", ":"))
    plots: dict[str, Callable[[dict[str, Any]], Any]] = {
        "grad_norms": plot_grad_norms,
        "conditioning": plot_conditioning,
        "oscillation": plot_oscillation,
        "effective_rank": plot_effective_rank,
        "loss": plot_loss,
    }
    written = [paths["report"]]
    with all_or_none(overwrite=overwrite) as staging:
        staging.add_bytes(paths["report"], lambda f: f.write(text.encode()))
        for key, make in plots.items():
            figure = make(report) if key in paths else None
            if figure is None:
                continue
            staging.add_bytes(paths[key], lambda f, fig=figure: fig.savefig(f, format="png"))
            written.append(paths[key])
    return written


def _figure(report: dict[str, Any], *, sharey: bool = True):
    from matplotlib.figure import Figure

    runs = report["runs"]
    figure = Figure(figsize=(4.3 * len(runs) + 1.6, 3.5), dpi=90, layout="constrained")
    axes = figure.subplots(1, len(runs), sharey=sharey, squeeze=False)[0]
    return figure, axes


def _layer_lines(ax, steps, values, layers: list[str], *, log: bool, iters: int) -> None:
    """One line per layer (viridis in the order of deepprior.analysis.conv_layers); a note
    when nothing can be drawn."""
    from matplotlib import colormaps

    ax.set_xlim(0, iters * 1.02)
    array = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)
    drawable = array[np.isfinite(array) & ((array > 0) if log else True)]
    if drawable.size == 0:
        ax.text(0.5, 0.5, "nothing to draw: no finite values\n(e.g. all gradients are zero)",
                transform=ax.transAxes, ha="center", va="center", fontsize=8)
        return
    colors = colormaps["viridis"](np.linspace(0, 0.9, len(layers)))
    for j, name in enumerate(layers):
        show = len(layers) <= 10 or j in (0, len(layers) - 1)
        label = f"{j + 1}: {name}" if show else None
        series = array[:, j]
        if log:
            series = np.where(series > 0, series, np.nan)
        ax.plot(steps, series, color=colors[j], lw=1.1, label=label,
                marker="o", ms=3 if len(steps) <= 12 else 1.5)
    if log:
        ax.set_yscale("log")


def _legend(axes) -> None:
    """One legend for the layers, right of the last panel (if any panel drew a line)."""
    for ax in axes:
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            axes[-1].legend(handles, labels, fontsize=7, loc="center left",
                            bbox_to_anchor=(1.0, 0.5))
            return


def _title(report: dict[str, Any]) -> str:
    sigma = report["sigma_255"]
    noise = "clean" if sigma is None else f"sigma={sigma:g}"
    return f"{report['net']} on {report['input']} ({noise}), Adam, {report['iters']} iterations"


def plot_grad_norms(report: dict[str, Any]):
    """Per-layer gradient norms against the step, one panel per normalisation, log scale."""
    figure, axes = _figure(report)
    for ax, (name, run) in zip(axes, report["runs"].items(), strict=True):
        series = run["diagnostics"]["grad_norm"]
        _layer_lines(ax, series["steps"], series["values"], series["layers"], log=True,
                    iters=report["iters"])
        ax.set(xlabel="iteration", title=LABELS[name])
        values = [v for row in series["values"] for v in row]
        zeros = sum(v == 0 for v in values)
        if zeros:
            ax.text(0.02, 0.02, f"{zeros} of {len(values)} values are exactly 0 (not drawn)",
                    transform=ax.transAxes, fontsize=7)
    axes[0].set_ylabel("weight-gradient norm")
    _legend(axes)
    figure.suptitle(_title(report), fontsize=9)
    return figure


def plot_conditioning(report: dict[str, Any]):
    """Per-layer condition numbers of the Gauss–Newton blocks; None when curvature was off."""
    if report["settings"]["curvature_every"] == 0:
        return None
    figure, axes = _figure(report)
    for ax, (name, run) in zip(axes, report["runs"].items(), strict=True):
        series = run["diagnostics"].get("condition_number")
        if series is None:
            continue
        _layer_lines(ax, series["steps"], series["values"], series["layers"], log=True,
                    iters=report["iters"])
        singular = sum(v is None for row in series["values"] for v in row)
        if singular:
            ax.text(0.02, 0.02, f"{singular} singular or undefined (not drawn)",
                    transform=ax.transAxes, fontsize=7)
        ax.set(xlabel="iteration", title=LABELS[name])
    settings = report["settings"]
    axes[0].set_ylabel(f"condition number ({settings['curvature_iters']} Lanczos steps)")
    _legend(axes)
    figure.suptitle(_title(report) + "\nGauss-Newton block per layer, Lanczos from the gradient "
                    "(lower bound)", fontsize=9)
    return figure


def plot_oscillation(report: dict[str, Any]):
    """Cosine between the gradients of adjacent iterations, per layer."""
    figure, axes = _figure(report)
    for ax, (name, run) in zip(axes, report["runs"].items(), strict=True):
        series = run["diagnostics"]["grad_cosine"]
        _layer_lines(ax, series["steps"], series["values"], series["layers"], log=False,
                    iters=report["iters"])
        ax.axhline(0, color="k", lw=0.6)
        ax.set(xlabel="iteration", title=LABELS[name], ylim=(-1.05, 1.05))
    axes[0].set_ylabel("cos(g_t, g_t-1)")
    _legend(axes)
    figure.suptitle(_title(report), fontsize=9)
    return figure


def plot_effective_rank(report: dict[str, Any]):
    """Entropy effective rank of each weight matrix against the step."""
    figure, axes = _figure(report)
    for ax, (name, run) in zip(axes, report["runs"].items(), strict=True):
        series = run["diagnostics"]["effective_rank"]
        _layer_lines(ax, series["steps"], series["values"], series["layers"], log=False,
                    iters=report["iters"])
        ax.set(xlabel="iteration", title=LABELS[name])
    axes[0].set_ylabel("effective rank (Roy & Vetterli)")
    _legend(axes)
    figure.suptitle(_title(report), fontsize=9)
    return figure


def plot_loss(report: dict[str, Any]):
    """Training loss and PSNR against the iteration, all normalisations together."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9.5, 3.4), dpi=90, layout="constrained")
    loss_ax, psnr_ax = figure.subplots(1, 2)
    styles = {"channel": ("tab:blue", "-"), "none": ("tab:orange", "-"),
              "batch": ("tab:green", "--")}
    for name, run in report["runs"].items():
        history = run["history"]
        steps = np.arange(1, len(history["loss"]) + 1)
        color, style = styles[name]
        loss_ax.semilogy(steps, history["loss"], lw=1, color=color, ls=style, label=LABELS[name])
        psnr_ax.plot(steps, history["psnr"], lw=1, color=color, ls=style, label=LABELS[name])
    loss_ax.set(xlabel="iteration", ylabel="training loss (MSE)")
    target = "clean image" if report["sigma_255"] is None else "clean image (fit to noisy)"
    psnr_ax.set(xlabel="iteration", ylabel=f"PSNR to the {target} (dB)")
    loss_ax.legend(fontsize=8)
    figure.suptitle(_title(report), fontsize=9)
    return figure


# --------------------------------------------------------------------------- summary


def _fmt(value: float | None, spec: str = ".2e") -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return format(value, spec)


def summary_table(report: dict[str, Any]) -> str:
    """The per-normalisation table and the with/without comparisons, as printed."""
    header = (
        f"{'norm':<8} {'loss':>9} {'PSNR':>6} {'|g1| it1':>9} {'|gL| it1':>9} "
        f"{'|g1| med':>9} {'g1/gL':>7} {'cond it1':>9} {'cond end':>9} {'cos':>6} "
        f"{'erank':>6} {'time s':>7} {'mon s':>6}"
    )
    lines = [header]
    for name, run in report["runs"].items():
        s = run["summary"]
        lines.append(
            f"{name:<8} {_fmt(run['final_loss']):>9} {_fmt(run['psnr'], '.2f'):>6} "
            f"{_fmt(s.get('grad_norm_first')):>9} {_fmt(s.get('grad_norm_last')):>9} "
            f"{_fmt(s.get('grad_norm_first_median')):>9} "
            f"{_fmt(s.get('grad_ratio_median'), '.3g'):>7} "
            f"{_fmt(s.get('condition_median_initial'), '.2e'):>9} "
            f"{_fmt(s.get('condition_median_final'), '.2e'):>9} "
            f"{_fmt(s.get('cosine_median'), '.2f'):>6} "
            f"{_fmt(s.get('effective_rank_median'), '.1f'):>6} "
            f"{run['elapsed_s']:>7.1f} {run['monitor_seconds']:>6.1f}"
        )
    lines.append(
        "|g1|, |gL|: first and output layer weight-gradient norms (it1: iteration 1, med: median "
        "over the run); cond: median over layers of the Gauss-Newton block condition number "
        "(Lanczos, lower bound); cos: median cosine of adjacent gradients; erank: median "
        "effective rank of the weight matrices at the end; time: of the fit, monitors (mon) "
        "included."
    )
    lines.extend(_comparison_lines(report))
    return "\n".join(lines)


def _comparison_lines(report: dict[str, Any]) -> list[str]:
    runs = report["runs"]
    if "none" not in runs or len(runs) < 2:
        return []
    base = runs["none"]["summary"]
    lines = []
    for name, run in runs.items():
        if name == "none":
            continue
        s = run["summary"]
        lines.append(
            f"first-layer gradient norm at iteration 1: none {_fmt(base.get('grad_norm_first'))}"
            f" vs {name} {_fmt(s.get('grad_norm_first'))} "
            f"({_orders(base.get('grad_norm_first'), s.get('grad_norm_first'))}); "
            f"median over the run: none {_fmt(base.get('grad_norm_first_median'))} vs {name} "
            f"{_fmt(s.get('grad_norm_first_median'))}"
        )
        lines.append(
            f"median per-layer condition number at iteration 1: none "
            f"{_fmt(base.get('condition_median_initial'))} vs {name} "
            f"{_fmt(s.get('condition_median_initial'))}; over the run: none "
            f"{_fmt(base.get('condition_median'))} vs {name} {_fmt(s.get('condition_median'))}"
        )
    return lines


def _orders(without: float | None, with_norm: float | None) -> str:
    if without is None or with_norm is None or with_norm <= 0:
        return "not comparable"
    if without <= 0:
        return "zero without normalization"
    orders = math.log10(with_norm / without)
    direction = "lower" if orders > 0 else "higher"
    return f"{abs(orders):.1f} orders of magnitude {direction} without normalization"
