"""``deepprior batch TASK INPUTS... -o OUTDIR``: one fit per input, in parallel.

Each task (denoise, inpaint, superres, deblur, cs) takes the options of its single-image
command that apply to a whole batch, and builds every input with that command's own builder;
:func:`deepprior_cli.batching.run_batch` does the rest over :func:`deepprior.reconstruct_many`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from . import cs as cs_command
from . import denoise as denoise_command
from . import inpaint as inpaint_command
from . import restore
from .batching import MEASUREMENT_INPUTS, EngineOptions, run_batch
from .common import FitOptions, batch_fit_options, choices_enum, error_funnel, option_group

ENGINE_PANEL = "Engine and outputs (every batch task)"
ExtName = choices_enum("ExtName", ("png", "tif", "jpg", "npy"))

Inputs = Annotated[
    list[str],
    typer.Argument(metavar="INPUTS...", show_default=False, help="Files, folders (their files, "
                   "sorted by name), globs ('photos/*.png', expanded here when quoted) or "
                   "@list.txt (one path per line, relative to the current folder)."),
]
_ENGINE_OPTIONS: dict[str, Any] = {
    "workers": Annotated[int | None, typer.Option(
        "--workers", min=1, metavar="N", rich_help_panel=ENGINE_PANEL,
        help="Fits at once (default: one per CPU, or per GPU with --gpus-per-fit 1; 1: in this "
        "process). With --ray local, the size of the local cluster.")],
    "ray": Annotated[str | None, typer.Option(
        "--ray", metavar="ADDRESS", rich_help_panel=ENGINE_PANEL,
        help="Run each fit as a Ray task: 'local' starts a cluster on this machine for the "
        "batch, 'auto' joins the one 'ray start' runs here, HOST:PORT a remote one "
        "(needs Ray: pip install ray; and deepprior on every node).")],
    "gpus_per_fit": Annotated[float | None, typer.Option(
        "--gpus-per-fit", metavar="F", rich_help_panel=ENGINE_PANEL,
        help="The share of a GPU one fit takes, in (0, 1]: 0.25 runs four fits per GPU.")],
    "force": Annotated[bool, typer.Option(
        "--force", rich_help_panel=ENGINE_PANEL,
        help="Redo inputs whose outputs exist, replacing them (by default they are skipped).")],
    "ext": Annotated[ExtName, typer.Option(
        "--ext", rich_help_panel=ENGINE_PANEL,
        help="Format of the output images (16 bits in a TIFF or a grey PNG for 16-bit input).")],
}
engine_options = option_group(EngineOptions, "engine", _ENGINE_OPTIONS,
                              defaults={"ext": ExtName("png")})

BATCH_EXIT_CODES = (
    "Exit codes: 0 every input done (or skipped: its outputs exist); 1 an error before any fit "
    "(one line on stderr, nothing written), or some inputs failed (the others are done; "
    "summary.csv says why); 2 the command line does not parse; 3 some fits diverged (their "
    "outputs hold the last good iterate); 130 Ctrl-C (finished images and the summary so far are "
    "kept; the same command again does the rest)."
)


def batch_epilog(*examples: str) -> str:
    """Examples, what is written, the exit codes."""
    return "\n\n".join([
        "Examples:", *(f"  $ {example}" for example in examples),
        "Writes OUTDIR/NAME.EXT, NAME.json (report) and NAME_curve.png per input as its fit "
        "finishes, and OUTDIR/summary.csv and summary.json at the end. Each input is fitted "
        "with the seed deepprior.item_seed(SEED, NAME): the same on any engine and worker "
        "count; the single-image command with --seed at that value and the batch's --threads "
        "(1 by default) repeats it (float sums in another order on more threads).",
        BATCH_EXIT_CODES,
    ])


app = typer.Typer(
    name="batch",
    help="Reconstruct many images, one independent fit each, on local worker processes or a "
    "Ray cluster.",
    epilog=batch_epilog(
        "deepprior batch denoise photos/ -o out/",
        "deepprior batch denoise 'scans/*.tif' -o out/ --sigma 10 --workers 4",
        "deepprior batch denoise @todo.txt -o out/ --ray HEAD:6379 --gpus-per-fit 0.25",
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def batch_task(name: str, *examples: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register a batch task: the shared fitting options, the engine options, the epilog."""
    def register(command: Callable[..., None]) -> Callable[..., None]:
        wrapped = batch_fit_options(engine_options(command))
        app.command(name, epilog=batch_epilog(*examples))(wrapped)
        return wrapped

    return register


@batch_task("denoise", "deepprior batch denoise photos/ -o out/",
            "deepprior batch denoise 'clean/*.png' -o out/ --add-noise 25 --workers 2")
def batch_denoise(
    inputs: Inputs,
    sigma: denoise_command.Sigma = None,
    add_noise: denoise_command.AddNoise = None,
    *,
    options: FitOptions,
    engine: EngineOptions,
) -> None:
    """Denoise many photos (noisy images in; with --add-noise, clean ones)."""
    with error_funnel(options.debug):
        run_batch("denoise", denoise_command.prepare(sigma, add_noise, options), inputs,
                  options, engine)


@batch_task("inpaint", "deepprior batch inpaint damaged/ --mask known.png -o out/",
            "deepprior batch inpaint clean/ --missing 0.7 -o out/")
def batch_inpaint(
    inputs: Inputs,
    mask: inpaint_command.MaskOption = None,
    missing: inpaint_command.Missing = None,
    text: inpaint_command.TextFlag = False,
    noise_sigma: inpaint_command.NoiseSigma = None,
    add_noise: inpaint_command.AddNoise = None,
    *,
    options: FitOptions,
    engine: EngineOptions,
) -> None:
    """Inpaint many images with one --mask (or, as a demo, a random mask each)."""
    with error_funnel(options.debug):
        build = inpaint_command.prepare(mask, missing, text, noise_sigma, add_noise, options)
        run_batch("inpaint", build, inputs, options, engine, task_files=(mask,))


@batch_task("superres", "deepprior batch superres small/ --factor 4 -o big/",
            "deepprior batch superres photos/ --factor 2 --simulate -o out/")
def batch_superres(
    inputs: Inputs,
    factor: restore.Factor = 4,
    kernel: restore.Kernel = restore.BICUBIC,
    simulate: restore.SimulateFlag = False,
    noise_sigma: restore.NoiseSigma = None,
    add_noise: restore.AddNoise = None,
    *,
    options: FitOptions,
    engine: EngineOptions,
) -> None:
    """Super-resolve many images, each --factor times larger."""
    with error_funnel(options.debug):
        build = restore.prepare_superres(factor, kernel, simulate, noise_sigma, add_noise,
                                         options)
        run_batch("superres", build, inputs, options, engine)


@batch_task("deblur", "deepprior batch deblur blurry/ --kernel gaussian:2.0 -o sharp/",
            "deepprior batch deblur photos/ --kernel motion:15,30 --simulate -o out/")
def batch_deblur(
    inputs: Inputs,
    kernel: restore.BlurKernel = "gaussian:2.0",
    simulate: restore.SimulateFlag = False,
    noise_sigma: restore.NoiseSigma = None,
    add_noise: restore.AddNoise = None,
    *,
    options: FitOptions,
    engine: EngineOptions,
) -> None:
    """Deblur many images with one --kernel."""
    with error_funnel(options.debug):
        build = restore.prepare_deblur(kernel, simulate, noise_sigma, add_noise, options)
        run_batch("deblur", build, inputs, options, engine, task_files=(kernel,))


@batch_task("cs", "deepprior batch cs saved/ -o out/",
            "deepprior batch cs 'y/*.npy' --matrix A.npy --shape 64x48 -o out/")
def batch_cs(
    inputs: Annotated[
        list[str],
        typer.Argument(metavar="INPUTS...", show_default=False, help="Measurement files "
                       "(written by cs --save-measurements, or with --matrix your own y): "
                       "files, folders, globs or @list.txt."),
    ],
    matrix: cs_command.Matrix = None,
    shape: cs_command.Shape = None,
    key: cs_command.Key = None,
    matrix_key: cs_command.MatrixKey = None,
    noise_sigma: Annotated[
        float | None,
        typer.Option("--noise-sigma", help="Noise std of the measurements, in their own units "
                     "(feeds --stop discrepancy; default: the level saved in each file)."),
    ] = None,
    *,
    options: FitOptions,
    engine: EngineOptions,
) -> None:
    """Compressive sensing from many measurement files (one matrix, or each file's own)."""
    with error_funnel(options.debug):
        build = cs_command.prepare_measurements(matrix, shape, key, matrix_key, noise_sigma,
                                                options)
        run_batch("cs", build, inputs, options, engine, suffixes=MEASUREMENT_INPUTS,
                  task_files=(matrix,))
