"""Training lowers the negative ELBO; run directories round-trip; the CLI trains and evaluates."""

import json

import pytest
import torch

from pyro_vae import ModelConfig, build_vae
from pyro_vae.cli import main
from pyro_vae.data import eval_data, load_digits
from pyro_vae.infer import log_likelihood
from pyro_vae.runs import load_run, train_run
from pyro_vae.train import TrainConfig, fit


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_training_lowers_validation_negative_elbo(digits):
    vae = build_vae(ModelConfig(event_shape=digits.event_shape, latent_dim=4, hidden=(64, 32)))
    valid = eval_data(vae, digits.valid)
    before = log_likelihood(vae.model, vae.guide, valid, num_samples=10)
    result = fit(vae, digits, TrainConfig(epochs=5, batch_size=64, lr=3e-3, seed=0), progress=False)
    after = log_likelihood(vae.model, vae.guide, valid, num_samples=10)
    gain = after.elbo - before.elbo
    assert len(result.history) == 5
    # An untrained decoder sits near -44 nats; five epochs gain well over ten.
    assert gain > 10.0
    assert gain > 10 * (before.elbo_stderr**2 + after.elbo_stderr**2) ** 0.5
    assert result.history[-1]["valid_elbo"] > result.history[0]["valid_elbo"]


def test_run_directory_round_trip(digits, tmp_path):
    config = ModelConfig(event_shape=digits.event_shape, latent_dim=2, hidden=(16,))
    results = train_run(
        "digits",
        config,
        TrainConfig(epochs=2),
        tmp_path / "run",
        num_samples=20,
        progress=False,
        data=digits,
    )
    run = tmp_path / "run"
    for name in (
        "config.json",
        "checkpoint.pt",
        "metrics.jsonl",
        "results.json",
        "elbo.png",
        "samples.png",
        "reconstructions.png",
    ):
        assert (run / name).stat().st_size > 0, name
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert json.loads((run / "results.json").read_text()) == results

    vae, saved = load_run(run)
    vae2, _ = load_run(run)
    assert saved["model"] == config.to_dict()
    x = eval_data(vae, digits.test[:8])
    z = torch.randn(5, 2)
    assert torch.equal(vae.encode(x).mean, vae2.encode(x).mean)
    assert torch.equal(vae.decode(z).mean, vae2.decode(z).mean)
    # The trained weights, not a fresh initialization, were loaded.
    fresh = build_vae(config)
    assert not torch.equal(fresh.decode(z).mean, vae.decode(z).mean)


def test_cli_train_then_evaluate(tmp_path, capsys):
    args = [
        "train",
        "--epochs",
        "2",
        "--hidden",
        "16",
        "--num-samples",
        "10",
        "--no-progress",
        "--output-dir",
        str(tmp_path),
        "--name",
        "tiny",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "test log-likelihood" in out and "+-" in out
    assert main(["evaluate", str(tmp_path / "tiny"), "--num-samples", "10"]) == 0
    out = capsys.readouterr().out
    assert "test ELBO" in out and "K=10" in out
    # Refuses to overwrite without --overwrite.
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        (b"not a numpy file", "cannot read"),
        ("nan", "NaN"),
        ("range", "Bernoulli likelihood needs values in [0, 1]; data range"),
    ],
)
def test_cli_bad_data_is_one_line(tmp_path, capsys, content, message):
    path = tmp_path / "data.npy"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "nan":
        x = torch.rand(30, 4).numpy()
        x[3, 1] = float("nan")
        import numpy as np

        np.save(path, x)
    elif content == "range":
        import numpy as np

        np.save(path, 5 * torch.rand(30, 4).numpy())
    code = main(
        [
            "train",
            "--dataset",
            str(path),
            "--epochs",
            "1",
            "--output-dir",
            str(tmp_path),
            "--no-progress",
            "--batch-size",
            "8",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
