"""Score a hand-written Pyro model/guide pair (not a VAE) with the IS estimator.

Probabilistic PCA has an exact log p(x); with the exact posterior as guide the estimate is exact
for every K, with a cruder guide it is a lower bound that rises with K.

Run: python examples/score_any_model.py
"""

import pyro
import pyro.distributions as dist
import torch

from pyro_vae.infer import log_likelihood

torch.manual_seed(0)
W, b, s = torch.randn(5, 2), torch.randn(5), 0.5


def model(x):
    with pyro.plate("data", x.shape[0], dim=-1):
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T + b, s).to_event(1), obs=x)


def guide(x):
    with pyro.plate("data", x.shape[0], dim=-1):
        pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 2), 1.0).to_event(1))


x = torch.randn(100, 2) @ W.T + b + s * torch.randn(100, 5)
exact = dist.MultivariateNormal(b, W @ W.T + s**2 * torch.eye(5)).log_prob(x).mean()
for k in (1, 10, 100, 1000):
    r = log_likelihood(model, guide, x, num_samples=k)
    print(f"K={k:5d}: {r.mean:8.3f} +- {r.stderr:.3f}   (exact {exact:.3f})")
