"""Importance-sampled log-likelihood for any model/guide pair that follows the contract.

Contract: the model observes site ``"x"`` and every sample site of model and guide lies
inside ``pyro.plate(data_plate, ...)``; vectorized particles are added on the left, so the
per-example log weights keep the data dimension until after the logsumexp over particles.
Further estimators on the same contract: ``ais`` (annealed importance sampling), ``gaps``
(approximation and amortization gaps), ``diagnostics`` (PSIS k-hat, posterior InferenceData).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import prune_subsample_sites

from pyro_vae.errors import DataError
from pyro_vae.validation import check_evaluation_inputs

#: Upper bound on particles x data points per pass: keeps memory bounded whatever K is.
DEFAULT_PARTICLE_BUDGET = 2**16


@dataclass
class LogLikelihood:
    """Per-example importance-sampling results, in nats.

    Attributes:
        per_example: (N,) log p(x_n) estimates, logsumexp_k log w_nk - log K.
        elbo_per_example: (N,) ELBO estimates, mean_k log w_nk.
        ess: (N,) effective sample sizes, (sum_k w_nk)^2 / sum_k w_nk^2, in [1, K].
        num_samples: K, the number of importance samples per data point.
        log_weights: (K, N) log weights when requested, else ``None``.
    """

    per_example: torch.Tensor
    elbo_per_example: torch.Tensor
    ess: torch.Tensor
    num_samples: int
    log_weights: torch.Tensor | None = None

    @property
    def mean(self) -> float:
        """Mean log p(x) per data point, nats."""
        return float(self.per_example.mean())

    @property
    def stderr(self) -> float:
        """Standard error of :attr:`mean` over data points."""
        return _stderr(self.per_example)

    @property
    def elbo(self) -> float:
        """Mean ELBO per data point, nats."""
        return float(self.elbo_per_example.mean())

    @property
    def elbo_stderr(self) -> float:
        return _stderr(self.elbo_per_example)

    def __str__(self) -> str:
        return (
            f"log p(x) ~ {self.mean:.3f} +- {self.stderr:.3f} nats (IS, K={self.num_samples}); "
            f"ELBO {self.elbo:.3f} +- {self.elbo_stderr:.3f}"
        )


def _stderr(values: torch.Tensor) -> float:
    n = values.numel()
    return float(values.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")


def _particle_dim(model: Callable, guide: Callable, x: torch.Tensor, *args, **kwargs) -> int:
    """The first free dimension left of every plate used by the model and guide."""
    nesting = 0
    with poutine.block():
        guide_trace = poutine.trace(guide).get_trace(x, *args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            x, *args, **kwargs
        )
    for trace in (guide_trace, model_trace):
        for site in prune_subsample_sites(trace).nodes.values():
            if site["type"] == "sample":
                for frame in site["cond_indep_stack"]:
                    if frame.vectorized and frame.dim is not None:
                        nesting = max(nesting, -frame.dim)
    return -(nesting + 1)


def site_term(
    name: str, site: dict, particle_dim: int, data_plate: str, num_particles: int, batch: int
) -> torch.Tensor:
    """One sample site's (scaled) log-probability ``site["log_prob"]`` as (particles, batch).

    Every dimension except the particle dimension and the data plate's is summed out.
    """
    frames = {f.name: f for f in site["cond_indep_stack"]}
    if data_plate not in frames:
        raise DataError(
            f"sample site {name!r} is outside plate {data_plate!r}; per-example weights "
            f"need every sample site inside the data plate"
        )
    n_dims = -particle_dim
    data_dim = frames[data_plate].dim
    lp = site["log_prob"]
    lp = lp.reshape((1,) * (n_dims - lp.dim()) + tuple(lp.shape))
    keep = {0, n_dims + data_dim}
    others = [d for d in range(n_dims) if d not in keep]
    if others:
        lp = lp.sum(others, keepdim=True)
    lp = lp.reshape(lp.shape[0], lp.shape[n_dims + data_dim])
    return lp.expand(num_particles, batch)


def _site_terms(trace, particle_dim: int, data_plate: str, num_particles: int, batch: int):
    """Sum each sample site's log-probability to shape (particles, batch)."""
    total: torch.Tensor | None = None
    for name, site in trace.nodes.items():
        if site["type"] != "sample":
            continue
        lp = site_term(name, site, particle_dim, data_plate, num_particles, batch)
        total = lp if total is None else total + lp
    if total is None:
        raise DataError("the program has no sample sites; nothing to weigh")
    return total


def particle_dim_of(model: Callable, guide: Callable, x: torch.Tensor) -> int:
    """The first free dimension left of every plate used by ``model`` and ``guide``."""
    return _particle_dim(model, guide, x)


def log_weights(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_particles: int,
    *args,
    particle_dim: int | None = None,
    data_plate: str = "data",
    **kwargs,
) -> torch.Tensor:
    """Per-example importance log weights log p(x_n, z_nk) - log q(z_nk | x_n).

    x: (batch, *event_shape) -> (num_particles, batch). The guide is traced once with all
    particles vectorized in a plate left of the data plate, and the model replayed on it.
    Gradients flow (reparameterized sites), so this also serves objectives.
    """
    if particle_dim is None:
        particle_dim = _particle_dim(model, guide, x, *args, **kwargs)
    batch = x.shape[0]
    with pyro.plate("particles", num_particles, dim=particle_dim):
        guide_trace = poutine.trace(guide).get_trace(x, *args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            x, *args, **kwargs
        )
    guide_trace = prune_subsample_sites(guide_trace)
    model_trace = prune_subsample_sites(model_trace)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    log_p = _site_terms(model_trace, particle_dim, data_plate, num_particles, batch)
    log_q = _site_terms(guide_trace, particle_dim, data_plate, num_particles, batch)
    return log_p - log_q


@torch.no_grad()
def log_likelihood(
    model: Callable,
    guide: Callable,
    data: torch.Tensor,
    num_samples: int = 1000,
    batch_size: int | None = None,
    particle_chunk: int | None = None,
    *,
    data_plate: str = "data",
    keep_log_weights: bool = False,
) -> LogLikelihood:
    """Importance-sampled estimate of log p(x) per data point.

    data: (N, *event_shape). With z_k ~ q(z | x), k = 1..K:

        log p(x) ~ logsumexp_k [log p(x, z_k) - log q(z_k | x)] - log K

    a stochastic lower bound whose expectation rises to log p(x) as K grows (Burda et al.
    2016, "Importance Weighted Autoencoders"). Data are processed ``batch_size`` points at a
    time and particles in chunks of at most ``particle_chunk``, so memory is bounded by
    ``batch_size * particle_chunk`` samples whatever K is; by default K = 1000 fits in one
    chunk, so the guide (encoder) runs once per data point.
    """
    check_evaluation_inputs(model, guide, data, num_samples, batch_size, particle_chunk)
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    n = data.shape[0]
    if n == 0:
        raise DataError("no data points to evaluate; pass a non-empty tensor")
    if batch_size is None:
        batch_size = min(n, 64)
    if particle_chunk is None:
        particle_chunk = max(1, DEFAULT_PARTICLE_BUDGET // batch_size)
    particle_chunk = min(particle_chunk, num_samples)
    particle_dim = _particle_dim(model, guide, data[:1])
    per_example, elbos, ess, all_weights = [], [], [], []
    for start in range(0, n, batch_size):
        x = data[start : start + batch_size]
        chunks = []
        for k0 in range(0, num_samples, particle_chunk):
            k = min(particle_chunk, num_samples - k0)
            chunks.append(
                log_weights(model, guide, x, k, particle_dim=particle_dim, data_plate=data_plate)
            )
        lw = torch.cat(chunks, 0)  # (K, batch)
        lse = torch.logsumexp(lw, 0)
        per_example.append(lse - math.log(num_samples))
        elbos.append(lw.mean(0))
        ess.append(torch.exp(2 * lse - torch.logsumexp(2 * lw, 0)))
        if keep_log_weights:
            all_weights.append(lw)
    return LogLikelihood(
        per_example=torch.cat(per_example),
        elbo_per_example=torch.cat(elbos),
        ess=torch.cat(ess),
        num_samples=num_samples,
        log_weights=torch.cat(all_weights, 1) if keep_log_weights else None,
    )
