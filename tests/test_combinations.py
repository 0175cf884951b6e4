"""Parts together: every sensible prior x likelihood x posterior trains; known answers; config."""

from __future__ import annotations

import itertools
import json
import math

import pyro
import pytest
import torch
from torch import nn

from pyro_vae import VAE
from pyro_vae.errors import ConfigError
from pyro_vae.infer import log_likelihood
from pyro_vae.models import ModelConfig, build_vae, load_config_file, normalize_part_keys
from pyro_vae.parts import LIKELIHOODS, POSTERIORS, PRIORS, FullRankNormal, LearnedNormal, Normal

EVENT_SHAPE = (1, 3, 3)


def _data_for(likelihood: str, n: int = 12) -> torch.Tensor:
    """Tiny data in the likelihood's support."""
    g = torch.Generator().manual_seed(0)
    shape = (n, *EVENT_SHAPE)
    if likelihood in ("poisson", "negative_binomial"):
        return torch.poisson(torch.full(shape, 3.0), generator=g)
    if likelihood == "discretized_logistic":
        return torch.randint(0, 256, shape, generator=g).float() / 255
    if likelihood in ("bernoulli", "continuous_bernoulli"):
        return torch.rand(shape, generator=g)
    return torch.randn(shape, generator=g)


COMBOS = list(itertools.product(sorted(PRIORS), sorted(LIKELIHOODS), sorted(POSTERIORS)))


@pytest.mark.parametrize("prior,likelihood,posterior", COMBOS)
def test_combination_trains_and_scores(prior, likelihood, posterior):
    pyro.set_rng_seed(0)
    arch = "conv" if posterior == "diagonal" else "mlp"  # both nets see every prior/likelihood
    config = ModelConfig(
        event_shape=EVENT_SHAPE,
        latent_dim=2,
        hidden=(8,),
        prior=prior,
        likelihood=likelihood,
        posterior=posterior,
        arch=arch,
        prior_options={"mixture": {"n_components": 3}, "vamp": {"num_pseudo_inputs": 3}}.get(
            prior, {}
        ),
        posterior_options={"context_dim": 4} if posterior == "iaf" else {},
        arch_options={"channels": (4,)} if arch == "conv" else {},
    )
    vae = build_vae(config)
    x = _data_for(likelihood)
    vae.likelihood.check_data(x)
    loss_fn = pyro.infer.Trace_ELBO()(vae.model, vae.guide)
    if vae.likelihood.binarize:
        x = torch.bernoulli(x)
    loss_fn(x)
    optim = torch.optim.Adam(vae.parameters(), lr=1e-2)
    for _ in range(3):
        optim.zero_grad()
        loss = loss_fn(x)
        loss.backward()
        optim.step()
    assert math.isfinite(float(loss.detach()))
    ll = log_likelihood(vae.model, vae.guide, x, num_samples=4, batch_size=12)
    assert torch.isfinite(ll.per_example).all()
    assert ll.mean >= ll.elbo - 1e-4  # log mean exp >= mean log, per point


class _AffineEncoder(nn.Module):
    """x -> (A x + c, fixed raw Cholesky entries): the exact linear-Gaussian posterior."""

    def __init__(self, a: torch.Tensor, c: torch.Tensor, raw_tril: torch.Tensor):
        super().__init__()
        self.register_buffer("a", a)
        self.register_buffer("c", c)
        self.register_buffer("raw_tril", raw_tril)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        loc = x @ self.a.T + self.c
        return torch.cat([loc, self.raw_tril.expand(*loc.shape[:-1], -1)], -1)


@pytest.mark.parametrize("num_samples", [1, 100])
def test_linear_gaussian_exact_log_likelihood_with_learned_normal_and_full_rank(num_samples):
    """p(z) = N(m, diag(v)), p(x|z) = N(Wz + b, s^2 I): log p(x) is exact for every K.

    p(x) = N(W m + b, W diag(v) W^T + s^2 I); q = the exact posterior N(mu(x), Lambda^-1),
    Lambda = diag(1/v) + W^T W / s^2, mu = Lambda^-1 (m / v + W^T (x - b) / s^2), so every
    importance weight equals p(x) and the estimate has zero variance.
    """
    torch.manual_seed(0)
    dt = torch.float64
    d, p, s = 2, 4, 0.5
    m = torch.tensor([0.5, -1.0], dtype=dt)
    v = torch.tensor([0.8, 1.5], dtype=dt) ** 2
    w = torch.randn(p, d, dtype=dt)
    b = torch.randn(p, dtype=dt)

    prior = LearnedNormal(d, loc=m.float(), scale=v.sqrt().float()).double()
    with torch.no_grad():  # exact values (the float32 init rounds)
        prior.loc.copy_(m)
        prior.raw_scale.copy_(torch.log(torch.expm1(v.sqrt() - 1e-4)))
    decoder = nn.Linear(d, p).double()
    with torch.no_grad():
        decoder.weight.copy_(w)
        decoder.bias.copy_(b)

    precision = torch.diag(1 / v) + w.T @ w / s**2
    cov = torch.linalg.inv(precision)
    tril = torch.linalg.cholesky(cov)
    a = cov @ w.T / s**2
    c = cov @ (m / v) - a @ b
    posterior = FullRankNormal(d)
    rows, cols = torch.tril_indices(d, d)
    raw = tril[rows, cols].clone()
    diag = rows == cols
    raw[diag] = torch.log(torch.expm1(raw[diag] - 1e-5))
    vae = VAE(
        prior=prior,
        likelihood=Normal(scale=s),
        posterior=posterior,
        encoder=_AffineEncoder(a, c, raw),
        decoder=decoder,
        event_shape=(p,),
    )
    x = torch.randn(6, p, dtype=dt) * 2
    marginal = torch.distributions.MultivariateNormal(
        w @ m + b, w @ torch.diag(v) @ w.T + s**2 * torch.eye(p, dtype=dt)
    )
    exact = marginal.log_prob(x)
    pyro.set_rng_seed(1)
    ll = log_likelihood(vae.model, vae.guide, x, num_samples=num_samples, batch_size=6)
    assert torch.allclose(ll.per_example, exact, atol=1e-4)


def test_config_round_trips_through_json():
    config = ModelConfig(
        event_shape=(1, 8, 8),
        latent_dim=4,
        prior="vamp",
        posterior="iaf",
        arch="conv",
        likelihood="continuous_bernoulli",
        prior_options={"num_pseudo_inputs": 7},
        posterior_options={"steps": 3},
        arch_options={"channels": (8, 16)},
    )
    again = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    vae = build_vae(again)
    assert vae.prior.pseudo_inputs.shape == (7, 1, 8, 8)
    assert len(vae.posterior.steps) == 3


def test_config_file_toml_and_json(tmp_path):
    toml = tmp_path / "model.toml"
    toml.write_text(
        'latent_dim = 3\n[prior]\nname = "mixture"\nn-components = 5\n'
        '[posterior]\nname = "low_rank"\nrank = 3\n'
    )
    js = tmp_path / "model.json"
    js.write_text(
        json.dumps(
            {
                "latent_dim": 3,
                "prior": {"name": "mixture", "n_components": 5},
                "posterior": {"name": "low_rank", "rank": 3},
            }
        )
    )
    assert load_config_file(toml) == load_config_file(js)
    config = ModelConfig(event_shape=(4,), **normalize_part_keys(load_config_file(toml)))
    vae = build_vae(config)
    assert vae.prior.n_components == 5 and vae.posterior.rank == 3


def test_flat_keys_of_old_configs_migrate_into_part_options():
    old = {
        "event_shape": [1, 8, 8], "latent_dim": 2, "hidden": [16], "prior": "mixture",
        "likelihood": "normal_learned", "likelihood_scale": 0.2, "posterior": "iaf",
        "arch": "conv", "extra": {}, "n_components": 4, "num_pseudo_inputs": 50,
        "flow_layers": 2, "rank": 2, "iaf_steps": 3, "iaf_context": 5, "iaf_hidden": [8],
        "channels": [4, 8],
    }  # fmt: skip
    config = ModelConfig.from_dict(old)
    assert config.likelihood == "learned_normal"  # the old name is an alias
    assert config.prior_options == {"n_components": 4, "init_scale": 0.5}
    assert config.likelihood_options == {"scale": 0.2}
    assert config.posterior_options == {"steps": 3, "context_dim": 5, "hidden": (8,)}
    assert config.arch_options == {"channels": (4, 8)}
    vae = build_vae(config)
    assert vae.prior.n_components == 4 and len(vae.posterior.steps) == 3
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="arch 'conv' needs images"):
        ModelConfig(event_shape=(10,), arch="conv")
    with pytest.raises(ConfigError, match="unknown prior 'nope'"):
        ModelConfig(event_shape=(10,), prior="nope")
    bad = tmp_path / "bad.toml"
    bad.write_text("prior = \n")
    with pytest.raises(ConfigError) as info:
        load_config_file(bad)
    # the reason in the middle is tomllib's own
    assert str(info.value) == (
        f"config file {bad} is not valid: Invalid value (at line 1, column 9); fix its syntax"
    )


def test_cli_train_with_parts_then_evaluate(tmp_path, capsys):
    from pyro_vae.cli import main

    cfg = tmp_path / "parts.toml"
    cfg.write_text('prior = "vamp"\nnum_pseudo_inputs = 5\nlatent_dim = 3\n')
    rc = main(
        [
            "train",
            "--config",
            str(cfg),
            "--posterior",
            "iaf",
            "--arch",
            "conv",
            "--likelihood",
            "continuous_bernoulli",
            "--epochs",
            "1",
            "--num-samples",
            "3",
            "--output-dir",
            str(tmp_path),
            "--name",
            "r",
            "--no-progress",
            "--hidden",
            "16",
            "--posterior-opt",
            "hidden=8,8",
        ]
    )
    assert rc == 0
    run_config = json.loads((tmp_path / "r" / "config.json").read_text())
    model = run_config["model"]
    assert (model["prior"], model["posterior"], model["arch"]) == ("vamp", "iaf", "conv")
    assert model["prior_options"]["num_pseudo_inputs"] == 5 and model["latent_dim"] == 3
    assert model["posterior_options"]["hidden"] == [8, 8]
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "r"), "--num-samples", "3"]) == 0
    assert "test log-likelihood" in capsys.readouterr().out


def test_cli_refuses_wrong_likelihood_for_data(tmp_path, capsys):
    from pyro_vae.cli import main

    rc = main(
        [
            "train",
            "--likelihood",
            "poisson",
            "--epochs",
            "1",
            "--output-dir",
            str(tmp_path),
            "--no-progress",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "Poisson likelihood needs non-negative integer counts" in err


def test_iaf_hidden_reaches_every_step_and_round_trips():
    config = ModelConfig(
        event_shape=(4,),
        latent_dim=3,
        posterior="iaf",
        posterior_options={"steps": 2, "hidden": (5, 7)},
    )
    again = ModelConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config and again.posterior_options["hidden"] == (5, 7)
    vae = build_vae(again)
    for step in vae.posterior.steps:
        # MADE layers: (context + latent) -> 5 -> 7 -> 2 * latent outputs
        shapes = [tuple(layer.weight.shape) for layer in step.nn.layers]
        assert shapes == [(5, 3 + 16), (7, 5), (6, 7)]
    with pytest.raises(ConfigError, match="posterior 'iaf' option hidden must be at least 1"):
        ModelConfig(
            event_shape=(4,), latent_dim=3, posterior="iaf", posterior_options={"hidden": (0,)}
        )
