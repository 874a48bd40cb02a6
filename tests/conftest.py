"""Shared fixtures: a clean Pyro param store, fixed seeds and validation on for every test."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pyro
import pytest
import torch

# the benchmark's hand-written reference loop lives in the scripts folder, not in the package
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


@pytest.fixture(autouse=True)
def _clean_pyro_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    with pyro.validation_enabled(True):
        yield
    pyro.clear_param_store()


@pytest.fixture(autouse=True)
def _quiet_jit_warnings():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.trace.*", category=FutureWarning)
        yield


@pytest.fixture
def one_thread():
    """One torch thread for the test: tiny networks gain nothing from a second one, and on a busy
    machine its spinning made training tests ~20x slower (``pytestmark`` of a module uses it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def mnist():
    """The real MNIST tensors, or a skip when no offline source or cache exists."""
    from ppl_vae.data import DatasetNotFoundError, load_dataset

    try:
        return load_dataset("mnist", download=False, verbose=False)
    except DatasetNotFoundError as e:  # pragma: no cover - depends on the machine
        pytest.skip(f"MNIST unavailable: {e}")


def pytest_configure(config):
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
