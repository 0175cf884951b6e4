"""The deterministic autoencoder baseline: same networks as the VAE, trains, loss falls,
round-trips through a run directory."""

from __future__ import annotations

import pytest
import torch
from refusals import whole

from pyro_vae.data import load_digits
from pyro_vae.models import Autoencoder, ModelConfig, build_autoencoder, build_vae
from pyro_vae.runs import load_run, train_run
from pyro_vae.train import TrainConfig, fit_autoencoder


def small_digits():
    data = load_digits()
    data.train, data.labels["train"] = data.train[:400], data.labels["train"][:400]
    return data


def test_same_networks_as_the_vae_and_the_code_is_the_location_head():
    config = ModelConfig(event_shape=(1, 8, 8), latent_dim=3, hidden=(32, 16))
    ae, vae = build_autoencoder(config), build_vae(config)
    ae_shapes = {k: v.shape for k, v in ae.state_dict().items()}
    vae_shapes = {k: v.shape for k, v in vae.state_dict().items() if k in ae_shapes}
    assert ae_shapes == vae_shapes  # the very networks build_vae builds
    x = torch.rand(5, 1, 8, 8)
    torch.testing.assert_close(ae.encode(x).mean, ae.encoder(x)[:, :3])


def test_conv_arch_builds_convolutional_autoencoder():
    from pyro_vae.parts.nets import ConvDecoder, ConvEncoder

    config = ModelConfig(event_shape=(1, 8, 8), latent_dim=2, hidden=(16,), arch="conv")
    ae = build_autoencoder(config)
    assert isinstance(ae.encoder, ConvEncoder) and isinstance(ae.decoder, ConvDecoder)
    assert ae.reconstruction_nll(torch.bernoulli(torch.rand(3, 1, 8, 8))).shape == (3,)


def test_reconstruction_nll_is_the_likelihood_at_the_decoder_output():
    torch.manual_seed(0)
    ae = build_autoencoder(ModelConfig(event_shape=(1, 2, 2), latent_dim=2, hidden=(4,)))
    x = torch.bernoulli(torch.full((5, 1, 2, 2), 0.5))
    logits = ae.decoder(ae.code(x)).reshape(5, 1, 2, 2)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, x, reduction="none"
    ).sum((1, 2, 3))
    torch.testing.assert_close(ae.reconstruction_nll(x), expected)
    torch.testing.assert_close(ae.encode(x).mean, ae.encoder(x)[:, :2])


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


def test_autoencoder_checkpoint_has_the_vae_keys_and_resumes_exactly(tmp_path):
    from pyro_vae.runs import RunDir, resume_run
    from pyro_vae.train import load_checkpoint

    data = small_digits()
    config = ModelConfig(event_shape=data.event_shape, latent_dim=2, hidden=(16,))
    train = TrainConfig(epochs=3, batch_size=64)
    full = train_run(
        "digits", config, train, tmp_path / "full", progress=False, data=data, kind="ae"
    )
    vae_run = train_run(
        "digits",
        config,
        TrainConfig(epochs=1, batch_size=64),
        tmp_path / "vae",
        progress=False,
        data=data,
    )
    assert vae_run["epochs"] == 1
    ae_keys = set(load_checkpoint(RunDir(tmp_path / "full").file(RunDir.CHECKPOINT)))
    vae_keys = set(load_checkpoint(RunDir(tmp_path / "vae").file(RunDir.CHECKPOINT)))
    assert ae_keys == vae_keys
    short = TrainConfig(epochs=2, batch_size=64)
    train_run("digits", config, short, tmp_path / "part", progress=False, data=data, kind="ae")
    resumed = resume_run(tmp_path / "part", epochs=3, progress=False, data=data)
    assert resumed["test_reconstruction_nll"] == full["test_reconstruction_nll"]
    assert resumed["final_valid_nll"] == full["final_valid_nll"]


def test_autoencoder_gets_gradient_clipping_and_fault_checks():
    from pyro_vae.errors import TrainingError

    data = small_digits()
    config = ModelConfig(event_shape=data.event_shape, latent_dim=2, hidden=(16,))
    ae = build_autoencoder(config)
    with torch.no_grad():
        ae.decoder.net[-1].bias.fill_(float("nan"))
    with pytest.raises(
        TrainingError,
        match=whole(
            "training loss is nan at epoch 1, step 0; lower --lr, pass --clip-grad (e.g. 10), or "
            "check the data scale"
        ),
    ):
        fit_autoencoder(ae, data, TrainConfig(epochs=1, batch_size=64), progress=False)


def test_cli_resumes_an_autoencoder_run(tmp_path, capsys):
    from pyro_vae.cli import main

    common = ["--no-progress", "--hidden", "16", "--batch-size", "256"]
    args = ["train", "--model", "ae", "--epochs", "1", "--output-dir", str(tmp_path), "--name", "a"]
    assert main([*args, *common, "--num-samples", "2"]) == 0
    assert main(["train", "--resume", str(tmp_path / "a"), "--epochs", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "(resumed)" in out and "trained 2 epochs" in out and "reconstruction NLL" in out


def test_fit_autoencoder_draws_its_progress_bar_by_default_and_none_when_told_not_to(capsys):
    """``progress=False`` reaches the fit loop: nothing is printed; by default the bar of 2
    epochs is drawn on stderr, ending at 2/2."""
    import re

    from pyro_vae.data import DataSplits

    config = ModelConfig(event_shape=(6,), latent_dim=2, hidden=(8,))
    x = torch.rand(30, 6, generator=torch.Generator().manual_seed(0))
    data = DataSplits("tiny", x[:20], x[20:25], x[25:])
    fit_autoencoder(build_autoencoder(config), data, TrainConfig(epochs=2, batch_size=10),
                    progress=False)  # fmt: skip
    assert capsys.readouterr() == ("", "")
    fit_autoencoder(build_autoencoder(config), data, TrainConfig(epochs=2, batch_size=10))
    counts = [int(n) for n in re.findall(r"\| *(-?\d+)/2 \[", capsys.readouterr().err)]
    assert counts and counts[0] == 0 and counts[-1] == 2, counts
