"""A linear-Gaussian model (probabilistic PCA) with exact log p(x) and exact posterior.

p(z) = N(0, I_L), p(x | z) = N(W z + b, s^2 I_D)  =>  p(x) = N(b, W W^T + s^2 I_D),
p(z | x) = N(S W^T (x - b) / s^2, S) with S = (I + W^T W / s^2)^-1.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch


class LinearGaussian:
    """Model and guides written as plain Pyro programs that follow the contract."""

    def __init__(self, latent_dim: int = 2, data_dim: int = 5, scale: float = 0.5, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.W = torch.randn(data_dim, latent_dim, generator=g, dtype=torch.float64)
        self.b = torch.randn(data_dim, generator=g, dtype=torch.float64)
        self.s = scale
        self.L, self.D = latent_dim, data_dim
        eye = torch.eye(latent_dim, dtype=torch.float64)
        self.post_cov = torch.linalg.inv(eye + self.W.T @ self.W / self.s**2)
        self.post_tril = torch.linalg.cholesky(self.post_cov)

    def model(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0], dim=-1):
            prior = dist.Normal(torch.zeros(self.L, dtype=x.dtype), 1.0).to_event(1)
            z = pyro.sample("z", prior)
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.s).to_event(1), obs=x)

    def posterior_mean(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b) @ self.W @ self.post_cov / self.s**2

    def exact_guide(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample(
                "z", dist.MultivariateNormal(self.posterior_mean(x), scale_tril=self.post_tril)
            )

    def wrong_guide_dist(self, x: torch.Tensor) -> dist.Normal:
        """A mean-field guide, shifted and too narrow: a strictly worse q."""
        sd = self.post_cov.diagonal().sqrt()
        return dist.Normal(self.posterior_mean(x) + 0.5 * sd, 0.7 * sd)

    def wrong_guide(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", self.wrong_guide_dist(x).to_event(1))

    def exact_log_px(self, x: torch.Tensor) -> torch.Tensor:
        cov = self.W @ self.W.T + self.s**2 * torch.eye(self.D, dtype=torch.float64)
        return dist.MultivariateNormal(self.b, covariance_matrix=cov).log_prob(x)

    def wrong_guide_elbo(self, x: torch.Tensor) -> torch.Tensor:
        """Closed form ELBO = log p(x) - KL(q(z|x) || p(z|x)), per data point."""
        q = self.wrong_guide_dist(x)
        q_mvn = dist.MultivariateNormal(q.loc, scale_tril=torch.diag_embed(q.scale))
        p_mvn = dist.MultivariateNormal(self.posterior_mean(x), scale_tril=self.post_tril)
        return self.exact_log_px(x) - torch.distributions.kl_divergence(q_mvn, p_mvn)

    def sample_data(self, n: int, seed: int = 1) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.L, generator=g, dtype=torch.float64)
        eps = torch.randn(n, self.D, generator=g, dtype=torch.float64)
        return z @ self.W.T + self.b + self.s * eps
