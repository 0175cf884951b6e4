"""Networks: conv encoder/decoder shapes for several image sizes; user modules plug in."""

from __future__ import annotations

import pyro
import pytest
import torch
from torch import nn

from pyro_vae import VAE
from pyro_vae.parts import (
    Bernoulli,
    ConvDecoder,
    ConvEncoder,
    DiagonalNormal,
    DiscretizedLogistic,
    MLPDecoder,
    StandardNormal,
)


@pytest.mark.parametrize(
    "event_shape", [(1, 28, 28), (3, 32, 32), (1, 8, 8), (2, 5, 7), (28, 28), (1, 1, 1)]
)
def test_conv_nets_shapes_with_leading_batch_dims(event_shape):
    enc = ConvEncoder(event_shape, 6, channels=(4, 8), hidden=16)
    dec = ConvDecoder(3, event_shape, num_params=2, channels=(8, 4), hidden=16)
    x = torch.rand(4, 2, *event_shape)
    assert enc(x).shape == (4, 2, 6)
    n = 2 * torch.Size(event_shape).numel()
    assert dec(torch.randn(5, 4, 2, 3)).shape == (5, 4, 2, n)
    assert dec(torch.randn(3)).shape == (n,)


def test_conv_decoder_layout_matches_vae_reshape():
    """Decoder output is (num_params, C, H, W) per point: param p of channel c at [p, c]."""
    dec = ConvDecoder(2, (3, 4, 4), num_params=2, channels=(4,), hidden=8)
    z = torch.randn(6, 2)
    maps = dec.out(dec.deconvs(dec.fc(z).reshape(-1, *dec.start)))  # (6, 2 * 3, 4, 4)
    out = dec(z).reshape(6, 2, 3, 4, 4)
    assert torch.equal(out[:, 1, 2], maps[:, 1 * 3 + 2])


class _UserEncoder(nn.Module):
    """A user's own encoder: anything mapping (*batch, 1, 6, 6) to (*batch, out)."""

    def __init__(self, out: int):
        super().__init__()
        self.lin = nn.Linear(36, out)

    def forward(self, x):
        return self.lin(x.flatten(-3))


def test_user_module_plugs_in_by_keyword_and_trains():
    pyro.set_rng_seed(0)
    posterior = DiagonalNormal(2)
    vae = VAE(
        prior=StandardNormal(2),
        likelihood=Bernoulli(),
        posterior=posterior,
        encoder=_UserEncoder(posterior.num_params),
        decoder=MLPDecoder(2, 36, hidden=(8,)),
        event_shape=(1, 6, 6),
    )
    x = torch.bernoulli(torch.full((8, 1, 6, 6), 0.3))
    loss_fn = pyro.infer.Trace_ELBO()(vae.model, vae.guide)
    loss_fn(x)
    optim = torch.optim.Adam(vae.parameters(), lr=1e-2)
    first = float(loss_fn(x).detach())
    for _ in range(15):
        optim.zero_grad()
        loss = loss_fn(x)
        loss.backward()
        optim.step()
    assert float(loss_fn(x).detach()) < first


def test_event_shape_defaults_to_the_encoders():
    enc = ConvEncoder((1, 8, 8), 4, channels=(4,), hidden=8)
    lik = DiscretizedLogistic()
    vae = VAE(
        encoder=enc,
        decoder=ConvDecoder(2, (1, 8, 8), lik.num_params, channels=(4,), hidden=8),
        prior=StandardNormal(2),
        likelihood=lik,
        posterior=DiagonalNormal(2),
    )
    assert vae.event_shape == (1, 8, 8)
    assert vae.decode(torch.zeros(3, 2)).event_shape == (1, 8, 8)


# --- hidden-layer activations -----------------------------------------------------------------


def test_gated_layer_computes_its_formula():
    from pyro_vae.parts.nets import GatedDense

    layer = GatedDense(3, 2)
    x = torch.randn(5, 3)
    h = x @ layer.h.weight.T + layer.h.bias
    g = 1 / (1 + torch.exp(-(x @ layer.g.weight.T + layer.g.bias)))
    torch.testing.assert_close(layer(x), h * g)


@pytest.mark.parametrize(
    "activation, kinds",
    [
        ("softplus", [nn.Linear, nn.Softplus, nn.Linear, nn.Softplus, nn.Linear]),
        ("tanh", [nn.Linear, nn.Tanh, nn.Linear, nn.Tanh, nn.Linear]),
        ("relu", [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]),
        ("gated", ["GatedDense", "GatedDense", nn.Linear]),
    ],
)
def test_mlp_arch_builds_the_named_hidden_layers(activation, kinds):
    from pyro_vae.models import ModelConfig, build_vae

    config = ModelConfig((7,), latent_dim=2, hidden=(5, 4), arch_options={"activation": activation})
    vae = build_vae(config)
    for net in (vae.encoder.net, vae.decoder.net):
        assert len(net) == len(kinds)
        got = [
            type(m) if isinstance(k, type) else type(m).__name__
            for m, k in zip(net, kinds, strict=True)
        ]
        assert got == kinds
    # widths: encoder 7 -> 5 -> 4 -> 2 * 2, decoder mirrors: 2 -> 4 -> 5 -> 7
    assert vae.encoder(torch.rand(3, 7)).shape == (3, 4)
    assert vae.decoder(torch.randn(6, 3, 2)).shape == (6, 3, 7)
    assert config.to_dict()["arch_options"] == {"activation": activation}


def test_tanh_nets_compute_tanh_layers():
    from pyro_vae.parts.nets import MLPEncoder

    enc = MLPEncoder((4,), 3, (5,), activation="tanh")
    first, last = enc.net[0], enc.net[2]
    x = torch.randn(2, 4)
    want = torch.tanh(x @ first.weight.T + first.bias) @ last.weight.T + last.bias
    torch.testing.assert_close(enc(x), want)


def test_unknown_activation_is_refused_with_the_choices():
    from pyro_vae.errors import ConfigError
    from pyro_vae.models import ModelConfig

    with pytest.raises(ConfigError, match="unknown activation 'swish'.*gated"):
        ModelConfig((7,), arch_options={"activation": "swish"})


def test_fused_elbo_equals_pyros_with_tanh_and_gated_nets():
    """The fused training loss stays proven-equal to Trace_ELBO on the new activations."""
    from pyro.infer import Trace_ELBO

    from pyro_vae.models import ModelConfig, build_vae
    from pyro_vae.models.fused import fused_elbo_loss

    for activation in ("tanh", "gated"):
        vae = build_vae(
            ModelConfig((6,), latent_dim=2, hidden=(5,), arch_options={"activation": activation})
        )
        x = torch.bernoulli(torch.rand(4, 6))
        pyro.set_rng_seed(3)
        want = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
        pyro.set_rng_seed(3)
        loss, _ = fused_elbo_loss(vae, x)
        torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-4)
