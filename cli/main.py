"""The ``deepprior`` command: thin commands over the public deepprior API.

Every command funnels known errors to one line ``error: …`` on stderr with exit code 1
(``--debug`` shows the traceback); typer's own validation exits with 2; a diverged fit exits
with 3 and Ctrl-C with 130 (see :data:`deepprior_cli.common.EXIT_CODES`). ``deepprior batch
TASK`` runs one fit per input; it exits 1 when an input failed (the others are done).
"""

from __future__ import annotations

import io
import sys
from typing import Annotated

import typer

import deepprior

from .analyze import analyze
from .batch import app as batch_app
from .common import EXIT_CODES
from .cs import EPILOG as CS_EPILOG
from .cs import cs
from .denoise import EPILOG as DENOISE_EPILOG
from .denoise import denoise
from .inpaint import EPILOG as INPAINT_EPILOG
from .inpaint import inpaint
from .restore import DEBLUR_EPILOG, SUPERRES_EPILOG, deblur, superres

app = typer.Typer(
    name="deepprior",
    help="Recover an image from one corrupted observation with an untrained neural network.",
    epilog="Noise stds of images are in 0-255 units; measurement noise of cs in the "
    f"measurements' own units (or an SNR in dB).\n\n{EXIT_CODES}",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"deepprior {deepprior.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Recover an image from one corrupted observation with an untrained neural network."""
    for stream in (sys.stdout, sys.stderr):  # a file name no encoding decodes (its bytes are
        if isinstance(stream, io.TextIOWrapper):  # kept as surrogates) prints as \udcff escapes
            stream.reconfigure(errors="backslashreplace")


app.command(epilog=DENOISE_EPILOG)(denoise)
app.command(epilog=CS_EPILOG)(cs)
app.command(epilog=INPAINT_EPILOG)(inpaint)
app.command(epilog=SUPERRES_EPILOG)(superres)
app.command(epilog=DEBLUR_EPILOG)(deblur)
app.command()(analyze)
app.add_typer(batch_app, name="batch")
