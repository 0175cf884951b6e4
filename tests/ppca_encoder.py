"""Linear-Gaussian model (probabilistic PCA) with a trainable linear encoder as guide.

p(z) = N(0, I_L), p(x | z) = N(W z + b, s^2 I_D)  =>  p(x) = N(b, W W^T + s^2 I),
p(z | x) = N(S W^T (x - b) / s^2, S), S = (I + W^T W / s^2)^-1.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn


class LinearGaussian(nn.Module):
    """Model/guide pair following the contract (sites "z", "x"; plate "data" at dim -1).

    The guide is a linear encoder: q(z | x) = N(A x + c, diag(softplus(r)^2)) or, with
    ``full=True`` and ``exact()``, the exact posterior.
    """

    def __init__(self, D=4, L=2, s=0.5, seed=0, orthogonal=False):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(D, L, generator=g)
        if orthogonal:  # orthogonal columns: the exact posterior is diagonal
            q, _ = torch.linalg.qr(W)
            W = q * torch.tensor([1.5, 0.7])[:L]
        self.W = nn.Parameter(W)
        self.b = nn.Parameter(torch.randn(D, generator=g))
        self.s = s
        self.L, self.D = L, D
        self.enc = nn.Linear(D, 2 * L)
        with torch.no_grad():
            self.enc.weight.copy_(0.3 * torch.randn(2 * L, D, generator=g))
            self.enc.bias.zero_()

    def set_encoder_to_posterior(self, noise=0.0, seed=2):
        """Encoder weights of the exact posterior (needs ``orthogonal=True``), plus noise."""
        g = torch.Generator().manual_seed(seed)
        W, b = self.W.detach(), self.b.detach()
        S = torch.linalg.inv(torch.eye(self.L) + W.T @ W / self.s**2)
        A = (W @ S / self.s**2).T  # loc = A (x - b)
        raw = torch.log(torch.expm1(S.diagonal().sqrt()))  # softplus^-1 of the posterior sd
        with torch.no_grad():
            self.enc.weight.zero_()
            self.enc.weight[: self.L] = A
            self.enc.bias[: self.L] = -A @ b
            self.enc.bias[self.L :] = raw
            self.enc.weight.add_(noise * torch.randn(self.enc.weight.shape, generator=g))
            self.enc.bias.add_(noise * torch.randn(self.enc.bias.shape, generator=g))

    def model(self, x):
        with pyro.plate("data", x.shape[0], dim=-1):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.L), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.s).to_event(1), obs=x)

    def family(self, params):
        loc, raw = params.split(self.L, -1)
        return dist.Normal(loc, nn.functional.softplus(raw) + 1e-6).to_event(1)

    def guide(self, x):
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", self.family(self.enc(x)))

    def posterior(self, x):
        """Exact p(z | x): loc (N, L), covariance (L, L)."""
        W = self.W.detach()
        S = torch.linalg.inv(torch.eye(self.L) + W.T @ W / self.s**2)
        return (x - self.b.detach()) @ W @ S / self.s**2, S

    def exact_guide(self, scale=1.0, shift=0.0):
        def guide(x):
            m, S = self.posterior(x)
            with pyro.plate("data", x.shape[0], dim=-1):
                pyro.sample("z", dist.MultivariateNormal(m + shift, scale**2 * S))

        return guide

    def log_px(self, x):
        W = self.W.detach()
        cov = W @ W.T + self.s**2 * torch.eye(self.D)
        return dist.MultivariateNormal(self.b.detach(), cov).log_prob(x)

    def sample_x(self, n, seed=1):
        torch.manual_seed(seed)
        W = self.W.detach()
        cov = W @ W.T + self.s**2 * torch.eye(self.D)
        return dist.MultivariateNormal(self.b.detach(), cov).sample((n,))
