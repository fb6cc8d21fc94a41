"""``python -m deepprior``: the command-line interface."""

from deepprior_cli.main import app

app(prog_name="deepprior")
