"""The same runs on a CUDA device: skipped where torch sees no GPU.

Run them on a GPU machine with ``python -m pytest -q tests/test_cuda.py``.
"""

from __future__ import annotations

import pytest
import torch

from pyro_vae import ModelConfig, build_vae
from pyro_vae.data import eval_data, load_digits
from pyro_vae.infer import ais_log_likelihood, log_likelihood
from pyro_vae.runtime import resolve_device
from pyro_vae.train import TrainConfig, fit

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _trained(device: str, precision: str = "32"):
    data = load_digits()
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(event_shape=data.event_shape, hidden=(32,)))
    config = TrainConfig(epochs=2, valid_num_samples=3, precision=precision)
    result = fit(vae, data, config, progress=False, device=device)
    return vae, data, result


@pytest.mark.parametrize("precision", ["32", "bf16", "fp16"])
def test_training_on_cuda_gives_finite_float32_scores(precision):
    vae, data, result = _trained("cuda", precision)
    assert next(vae.parameters()).device.type == "cuda"
    assert all(torch.isfinite(torch.tensor(r["valid_elbo"])) for r in result.history)
    x = eval_data(vae, data.test[:20]).cuda()
    ll = log_likelihood(vae.model, vae.guide, x, num_samples=50)
    assert ll.per_example.dtype == torch.float32 and torch.isfinite(ll.per_example).all()
    ais = ais_log_likelihood(vae.model, vae.guide, x[:4], num_steps=20, num_chains=2)
    assert torch.isfinite(ais.per_example).all()


def test_cuda_and_cpu_estimates_agree():
    vae, data, _ = _trained("cuda")
    x = eval_data(vae, data.test[:50])
    on_gpu = log_likelihood(vae.model, vae.guide, x.cuda(), num_samples=2000).mean
    vae.cpu()
    on_cpu = log_likelihood(vae.model, vae.guide, x, num_samples=2000).mean
    assert abs(on_gpu - on_cpu) < 0.1


def test_auto_picks_the_gpu():
    assert resolve_device("auto").type == "cuda"
