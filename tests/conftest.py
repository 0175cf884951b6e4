import sys
from pathlib import Path

import pyro
import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _fresh_pyro_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield


@pytest.fixture
def log_weight_rows(monkeypatch):
    """The particle counts (first dimension) of every traced log-weight pass that
    ``log_likelihood`` runs while the test does, in order."""
    import pyro_vae.infer.importance as importance

    rows = []
    original = importance.log_weights

    def recording(*args, **kwargs):
        lw = original(*args, **kwargs)
        rows.append(lw.shape[0])
        return lw

    monkeypatch.setattr(importance, "log_weights", recording)
    return rows
