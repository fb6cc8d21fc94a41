"""Shared test settings: one torch thread, Ray workers at normal priority, and registrations
undone after a test."""

import copy
import os

import pytest
import torch

import deepprior

# Ray starts its workers at niceness 15: on a busy machine a worker then waits behind every
# other process (`import torch` in one took 50 s beside two fits), and a Ray test takes minutes.
# The local clusters the tests start (and the CLI subprocesses, which inherit this) run the
# workers at the test's own priority.
os.environ.setdefault("RAY_worker_niceness", "0")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny fits run fastest on one thread, and a busy machine does not slow them down by
    an order of magnitude (two threads spin against other processes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _saved_registry():
    nets, problems = dict(deepprior.nets._NETS), copy.deepcopy(deepprior.api.PROBLEMS)
    yield
    deepprior.nets._NETS.clear()
    deepprior.nets._NETS.update(nets)
    deepprior.api.PROBLEMS.clear()
    deepprior.api.PROBLEMS.update(problems)


@pytest.fixture
def registry():
    """Networks registered by the test (``register_net``) are removed after it."""
    yield from _saved_registry()


@pytest.fixture(scope="module")
def module_registry():
    """Networks registered by the module's tests are removed after the module."""
    yield from _saved_registry()


@pytest.fixture
def clean_png(tmp_path):
    """A small clean photograph (camera, 40×36) saved as PNG."""
    path = tmp_path / "clean.png"
    deepprior.save_image(path, deepprior.sample_image("camera", size=(40, 36)))
    return path
