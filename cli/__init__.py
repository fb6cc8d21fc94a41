"""deepprior's command-line interface (installed as the package ``deepprior_cli``).

Importing deepprior (and torch behind it) takes seconds; Ctrl-C meanwhile ends the command with
one line and exit code 130, like Ctrl-C anywhere else before a fit.
"""

try:
    import typer  # noqa: F401

    import deepprior  # noqa: F401
except KeyboardInterrupt:
    import sys

    sys.stderr.write("interrupted (Ctrl-C) while starting; nothing was done\n")
    raise SystemExit(130) from None
