"""The README's Python examples, and the docstrings' examples, run as written and print what
they say they print."""

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, capsys):
    namespace: dict = {"__name__": "__main__"}  # as a script run with python
    exec(compile(BLOCKS[index], f"README.md python block {index}", "exec"), namespace)  # noqa: S102
    printed = capsys.readouterr().out
    if "fits" in namespace:  # fit_many's example: FitResults, and the iterations it prints
        fits = namespace["fits"]
        assert printed.strip() == str([f.num_steps for f in fits])
        for fit in fits:
            assert np.isfinite(fit.output).all() and 0 <= fit.output.min() <= fit.output.max() <= 1
        return
    if "result" not in namespace:  # an example without a fit: it prints what its comments say
        said = re.findall(r"^print\(.*\)\s+# (.+)$", BLOCKS[index], flags=re.M)
        assert said and printed.splitlines() == said
        return
    result = namespace["result"]
    assert result.image.ndim in (2, 3) and np.isfinite(result.image).all()
    assert 0.0 <= result.image.min() and result.image.max() <= 1.0
    assert 1 <= result.num_iter <= result.num_steps
    # "noisy dB -> result dB": the example shows an improvement; "<problem> <psnr> dB": the
    # problem kind the operator implies, and a PSNR that matches the result
    for before, after in re.findall(r"([\d.]+) dB -> ([\d.]+) dB", printed):
        assert float(after) > float(before) + 3
    for kind, value in re.findall(r"^(\w+) ([\d.]+) dB$", printed, flags=re.M):
        assert kind == result.config["problem"] and float(value) == pytest.approx(result.psnr,
                                                                                  abs=0.01)


# the modules whose docstrings hold examples (data's failed under numpy 2 unnoticed)
MODULES = ["analysis", "api", "batch", "data", "io", "metrics", "noise", "operators",
           "stopping", "nets", "nets.layers"]


@pytest.mark.parametrize("name", MODULES)
def test_the_docstrings_examples_give_what_they_show(name):
    import doctest
    import importlib

    module = importlib.import_module(f"deepprior.{name}")
    failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert attempted > 0 and failed == 0
