"""The deterministic autoencoder baseline: same networks as the VAE, trains, loss falls,
round-trips through a run directory."""

from __future__ import annotations

import torch

from pyro_vae.data import load_digits
from pyro_vae.models import Autoencoder, ModelConfig, build_autoencoder, build_vae
from pyro_vae.runs import load_run, train_run
from pyro_vae.train import TrainConfig, fit_autoencoder


def small_digits():
    data = load_digits()
    data.train, data.labels["train"] = data.train[:400], data.labels["train"][:400]
    return data


def test_same_networks_as_the_vae_except_the_code_head():
    config = ModelConfig(event_shape=(1, 8, 8), latent_dim=3, hidden=(32, 16))
    ae, vae = build_autoencoder(config), build_vae(config)
    ae_shapes = {k: v.shape for k, v in ae.state_dict().items()}
    vae_shapes = {k: v.shape for k, v in vae.state_dict().items() if k in ae_shapes}
    assert set(ae_shapes) <= set(vae.state_dict())
    last = "encoder.net.4"  # the head: latent_dim codes instead of q(z|x)'s 2 * latent_dim
    for k, shape in ae_shapes.items():
        if k.startswith(last):
            assert shape[0] == 3 and vae_shapes[k][0] == 6
        else:
            assert shape == vae_shapes[k], k


def test_reconstruction_nll_is_the_likelihood_at_the_decoder_output():
    torch.manual_seed(0)
    ae = build_autoencoder(ModelConfig(event_shape=(1, 2, 2), latent_dim=2, hidden=(4,)))
    x = torch.bernoulli(torch.full((5, 1, 2, 2), 0.5))
    logits = ae.decoder(ae.encoder(x)).reshape(5, 1, 2, 2)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, x, reduction="none"
    ).sum((1, 2, 3))
    torch.testing.assert_close(ae.reconstruction_nll(x), expected)
    torch.testing.assert_close(ae.encode(x).mean, ae.encoder(x))


def test_autoencoder_trains_and_its_reconstruction_error_falls():
    data = small_digits()
    config = ModelConfig(event_shape=data.event_shape, latent_dim=2, hidden=(64,))
    ae = build_autoencoder(config)
    result = fit_autoencoder(
        ae, data, TrainConfig(epochs=8, batch_size=32, lr=3e-3), progress=False
    )
    valid = [r["valid_nll"] for r in result.history]
    se = result.history[0]["valid_nll_stderr"]
    # the validation NLL falls by far more than its standard error
    assert valid[-1] < valid[0] - 5 * se
    assert result.history[-1]["train_nll"] < result.history[0]["train_nll"]


def test_autoencoder_run_directory_round_trip(tmp_path):
    data = small_digits()
    config = ModelConfig(event_shape=data.event_shape, latent_dim=2, hidden=(16,))
    results = train_run(
        "digits",
        config,
        TrainConfig(epochs=1, batch_size=64),
        tmp_path / "run",
        progress=False,
        data=data,
        kind="ae",
    )
    assert results["kind"] == "ae" and results["test_reconstruction_nll"] > 0
    model, run_config = load_run(tmp_path / "run")
    assert isinstance(model, Autoencoder) and run_config["kind"] == "ae"
