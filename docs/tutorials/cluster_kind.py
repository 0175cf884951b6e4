"""A model kind of one's own, registered from a plugin module: a VAE whose prior is a mixture
of Gaussians over an enumerated cluster label (the tutorial "A model kind of your own").

    c ~ Cat(1/C),  z | c ~ N(mu_c, I),  x | z ~ p(x | decoder(z));  guide: z ~ q(z | x)

The model sums c out exactly (``infer={"enumerate": "parallel"}``), so the ELBO objective runs
Pyro's TraceEnum_ELBO and the importance-sampled log-likelihood sums c inside each weight;
``pyro-vae train --plugin cluster_kind --model cluster_vae --clusters 10`` trains it.
"""

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from pyro_vae.models import ModelKind, build_likelihood, build_nets, register_model
from pyro_vae.models.vae import local_params
from pyro_vae.parts.options import PositiveInt


class ClusterVAE(PyroModule):
    """The model and guide programs; ``encode``/``decode``/``sample``/``reconstruct`` serve
    the figures, ``likelihood`` and ``event_shape`` the training loop."""

    def __init__(self, event_shape, latent_dim, clusters, encoder, decoder, likelihood):
        with local_params():
            super().__init__()
        self.event_shape, self.latent_dim, self.clusters = tuple(event_shape), latent_dim, clusters
        self.encoder, self.decoder, self.likelihood = encoder, decoder, likelihood
        self.locs = nn.Parameter(2.0 * torch.randn(clusters, latent_dim))

    def encode(self, x):
        loc, raw = self.encoder(x).chunk(2, dim=-1)
        return dist.Normal(loc, nn.functional.softplus(raw) + 1e-4).to_event(1)

    def decode(self, z):
        batch = z.shape[:-1]
        params = self.decoder(z).reshape(*batch, self.likelihood.num_params, *self.event_shape)
        return self.likelihood(params.movedim(len(batch), -1)).to_event(len(self.event_shape))

    @local_params()
    def model(self, x):
        with pyro.plate("data", x.shape[0], dim=-1):
            logits = torch.zeros(self.clusters, device=x.device)
            c = pyro.sample("c", dist.Categorical(logits=logits), infer={"enumerate": "parallel"})
            z = pyro.sample("z", dist.Normal(self.locs[c], 1.0).to_event(1))
            pyro.sample("x", self.decode(z), obs=x)

    @local_params()
    def guide(self, x):
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", self.encode(x))

    @torch.no_grad()
    def sample(self, n, mean=True):
        c = torch.randint(self.clusters, (n,))
        px = self.decode(self.locs[c] + torch.randn(n, self.latent_dim))
        return px.mean if mean else px.sample()

    @torch.no_grad()
    def reconstruct(self, x, mean=True):
        q = self.encode(x)
        return self.decode(q.mean if mean else q.sample()).mean


@register_model("cluster_vae")
class ClusterKind(ModelKind):
    """The registry entry: the kind's options are its constructor's keywords (``--clusters``),
    ``build`` makes the module from the run's ModelConfig, and the class attributes name the
    training task, the figures and the metrics."""

    task = "elbo"
    figures = ("elbo", "samples", "reconstructions", "latent", "interpolation")
    # KL per dimension is undefined here (p(z) is a mixture over c): no latent_usage
    metrics = ("log_likelihood",)
    label = "cluster VAE"

    def __init__(self, clusters: PositiveInt = 10):
        self.clusters = clusters

    def build(self, config):
        nets, likelihood = build_nets(config), build_likelihood(config)
        return ClusterVAE(
            config.event_shape, config.latent_dim, self.clusters,
            nets.encoder(2 * config.latent_dim), nets.decoder(likelihood.num_params), likelihood,
        )  # fmt: skip
