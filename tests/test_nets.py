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
