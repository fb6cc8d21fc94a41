"""deepprior's command-line interface (installed as the package ``deepprior_cli``)."""
