import os
import sys
from pathlib import Path

import pyro
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

# Training and scoring keep torch's thread count fixed in the tests (the CLI's subprocesses
# inherit it): bitwise comparisons of runs (resume, one against several processes) must not
# depend on how busy the machine is. tests/test_threads.py tests the adaptive count itself.
os.environ.setdefault("PYRO_VAE_THREADS", str(torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    """Under mutation testing (benchmarks/mutation.md) tests marked ``several_threads`` are
    skipped: mutmut runs the suite once, then forks a process per mutant, and GNU OpenMP's
    thread team does not survive a fork (the child waits forever at its first parallel step
    with more than one thread). Their one-thread cases still run."""
    if "MUTANT_UNDER_TEST" not in os.environ:
        return
    skip = pytest.mark.skip(reason="several torch threads in a forked mutation-testing process")
    for item in items:
        if "several_threads" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield


@pytest.fixture
def log_weight_rows(monkeypatch):
    """The particle counts (first dimension) of every log-weight pass that ``log_likelihood``
    runs while the test does, in order, traced or by a faster route."""
    import pyro_vae.infer.importance as importance

    rows = []

    def recorded(fn):
        def recording(*args, **kwargs):
            lw = fn(*args, **kwargs)
            rows.append(lw.shape[0])
            return lw

        return recording

    choose_route = importance.choose_route

    def recording_route(*args, **kwargs):
        name, fn = choose_route(*args, **kwargs)
        return name, None if fn is None else recorded(fn)

    monkeypatch.setattr(importance, "log_weights", recorded(importance.log_weights))
    monkeypatch.setattr(importance, "choose_route", recording_route)
    return rows
