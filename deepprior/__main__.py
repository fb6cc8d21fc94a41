"""``python -m deepprior``: runs the installed ``deepprior`` command (the library never imports
the command-line package; the command is looked up as the console script it is installed as)."""

from importlib.metadata import entry_points

(command,) = entry_points(group="console_scripts", name="deepprior")
command.load()(prog_name="deepprior")
