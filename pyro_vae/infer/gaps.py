"""Inference gaps (Cremer, Li & Duvenaud 2018): where the nats between log p(x) and the ELBO go.

    log p(x) - ELBO_amortized = [log p(x) - ELBO_local]        (approximation gap)
                              + [ELBO_local - ELBO_amortized]  (amortization gap)

ELBO_local is the best ELBO of the SAME posterior family with per-example parameters found by
optimization (no encoder), so the first gap is the family's fault and the second the encoder's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import torch
from torch.distributions import Distribution

from pyro_vae.errors import ConfigError
from pyro_vae.infer.importance import log_likelihood
from pyro_vae.infer.trace import (
    check_program,
    chunk_sizes,
    log_weights,
    probe_data,
    stderr,
)


@dataclass
class InferenceGaps:
    """Per-example figures, in nats, each (N,).

    Attributes:
        log_px: best estimate of log p(x): per point, the importance-sampled estimate with
            the proposal (amortized or local posterior) of higher ELBO, or AIS where higher.
        elbo_amortized: ELBO with q(z | x) from the guide.
        elbo_local: ELBO with the per-example optimized posterior.
    """

    log_px: torch.Tensor
    elbo_amortized: torch.Tensor
    elbo_local: torch.Tensor

    @property
    def approximation_gap(self) -> torch.Tensor:
        """(N,) log p(x) - ELBO_local."""
        return self.log_px - self.elbo_local

    @property
    def amortization_gap(self) -> torch.Tensor:
        """(N,) ELBO_local - ELBO_amortized."""
        return self.elbo_local - self.elbo_amortized

    def summary(self) -> dict[str, tuple[float, float]]:
        """name -> (mean over data points, standard error)."""
        rows = {
            "log p(x)": self.log_px,
            "ELBO (amortized)": self.elbo_amortized,
            "ELBO (local)": self.elbo_local,
            "approximation gap": self.approximation_gap,
            "amortization gap": self.amortization_gap,
        }
        return {k: (float(v.mean()), stderr(v)) for k, v in rows.items()}


def local_guide(
    family: Callable[[torch.Tensor], Distribution],
    params: torch.Tensor,
    site: str = "z",
    data_plate: str = "data",
) -> Callable[..., None]:
    """A guide with free per-example parameters: z_n ~ family(params_n) in the data plate.

    params: (batch, num_params); the guide must be called on data with the same batch (any
    further positional or keyword arguments are accepted and ignored).
    """

    def guide(x: torch.Tensor, *args, **kwargs) -> None:
        with pyro.plate(data_plate, x.shape[0], dim=-1):
            pyro.sample(site, family(params))

    return guide


def optimize_local(
    model: Callable,
    family: Callable[[torch.Tensor], Distribution],
    x: torch.Tensor,
    init_params: torch.Tensor,
    num_steps: int = 500,
    num_particles: int = 16,
    lr: float = 1e-2,
    *,
    site: str = "z",
    data_plate: str = "data",
) -> torch.Tensor:
    """Per-example posterior parameters maximizing the ELBO, by Adam from ``init_params``.

    x: (batch, *event_shape), init_params: (batch, num_params) -> (batch, num_params).
    Maximizes sum_n E_{q(z; params_n)}[log p(x_n, z) - log q(z; params_n)] with reparameterized
    gradients (``num_particles`` samples per step, learning rate decayed linearly to lr/10);
    the examples do not interact, so one
    optimizer over the (batch, num_params) tensor optimizes each independently.
    """
    params = init_params.detach().clone().requires_grad_()
    opt = torch.optim.Adam([params], lr=lr)
    # decay the step linearly to lr/10, so the noisy gradient settles at the optimum
    sched = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.1, total_iters=num_steps)
    guide = local_guide(family, params, site, data_plate)
    for _ in range(num_steps):
        loss = -log_weights(model, guide, x, num_particles, data_plate=data_plate).mean(0).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return params.detach()


def inference_gaps(
    model: Callable,
    guide: Callable,
    data: torch.Tensor,
    family: Callable[[torch.Tensor], Distribution],
    init_params: Callable[[torch.Tensor], torch.Tensor],
    *,
    num_samples: int = 1000,
    elbo_samples: int = 1000,
    num_steps: int = 500,
    num_particles: int = 16,
    lr: float = 1e-2,
    batch_size: int = 100,
    ais_per_example: torch.Tensor | None = None,
    data_plate: str = "data",
) -> InferenceGaps:
    """Approximation and amortization gaps per data point for any model/guide pair.

    data: (N, *event_shape). ``family(params)`` is the guide's posterior family (params:
    (batch, num_params) -> distribution with event (latent_dim,)) and ``init_params(x)`` the
    starting parameters, normally the encoder's output (the amortized solution). ELBOs are
    estimated with ``elbo_samples`` samples per point; log p(x) by importance sampling with
    ``num_samples`` samples from the proposal of higher ELBO (the smaller KL to p(z | x)), or
    ``ais_per_example`` where that is higher. For a VAE: ``vae_inference_gaps``. The local
    guide replaces ONE latent site: a guide with several latent sites is refused.
    """
    latent = check_program(
        model, guide, *probe_data(model, (data,)), data_plate=data_plate, restore_rng=True
    ).latent
    if len(latent) != 1:
        raise ConfigError(
            f"inference gaps optimize one local posterior per data point, but the guide has "
            f"latent sites {latent}; score a model with one latent site"
        )
    site = latent[0]
    amortized = log_likelihood(
        model, guide, data, num_samples=max(num_samples, elbo_samples), data_plate=data_plate
    )
    log_px, elbo_local = [], []
    pdim = check_program(model, guide, data[:1], data_plate=data_plate).particle_dim
    for start in range(0, data.shape[0], batch_size):
        x = data[start : start + batch_size]
        with torch.no_grad():
            init = init_params(x)
        params = optimize_local(
            model, family, x, init, num_steps, num_particles, lr, site=site, data_plate=data_plate
        )
        with torch.no_grad():
            guide_n = local_guide(family, params, site, data_plate)
            lw = torch.cat([
                log_weights(model, guide_n, x, k, particle_dim=pdim, data_plate=data_plate)
                for k in chunk_sizes(max(num_samples, elbo_samples), 256)
            ])
        elbo_local.append(lw.mean(0))
        log_px.append(torch.logsumexp(lw, 0) - math.log(lw.shape[0]))
    # the proposal with the higher ELBO is the closer one (KL(q || p) = log p(x) - ELBO), so
    # its estimate is the more reliable; a plain max would pick up upward noise of the other
    elbo_local_t = torch.cat(elbo_local)
    best = torch.where(
        elbo_local_t > amortized.elbo_per_example, torch.cat(log_px), amortized.per_example
    )
    if ais_per_example is not None:
        best = torch.maximum(best, ais_per_example)
    return InferenceGaps(best, amortized.elbo_per_example, elbo_local_t)


def vae_inference_gaps(vae, data: torch.Tensor, **kwargs) -> InferenceGaps:
    """:func:`inference_gaps` for a VAE: family ``vae.posterior``, start at ``vae.encoder(x)``."""
    return inference_gaps(vae.model, vae.guide, data, vae.posterior, vae.encoder, **kwargs)
