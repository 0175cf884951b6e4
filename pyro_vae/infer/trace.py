"""The one trace helper: guide with K particles, model replayed, per-site terms (K, batch).

Every estimator and objective in :mod:`pyro_vae.infer` weighs a model/guide pair the same way:

    log w_nk = sum_{sites s of the model} log p_s - sum_{sites s of the guide} log q_s,

with z_k ~ q(z | x) drawn as K particles in a plate on the left of every plate the programs use
(vectorized), the model replayed on the guide's values, and each site's log-probability summed
over every dimension except the particle dimension and the data plate's, so a minibatch is never
weighed jointly (as ``pyro.infer.importance.vectorized_importance_weights`` would). Roles
(observed, latent, enumerated) come from the traces, never from site names. Programs are
checked against each other first (:func:`check_program`): a program these estimators cannot
score is refused with the site and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

import pyro
import pyro.util
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import prune_subsample_sites

from pyro_vae.errors import ConfigError, DataError

#: Upper bound on particles x data points per pass: keeps memory bounded whatever K is.
DEFAULT_PARTICLE_BUDGET = 2**16


def stderr(values: torch.Tensor) -> float:
    """Standard error of the mean of ``values``: std / sqrt(n).

    values: (n,). With one value there is no spread to estimate: returns ``nan`` (not 0), so a
    report shows "nan" instead of a falsely exact figure.
    """
    n = values.numel()
    return float(values.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")


class PerExampleEstimate:
    """Mixin for results holding ``per_example``: (N,) estimates in nats."""

    per_example: torch.Tensor

    @property
    def mean(self) -> float:
        """Mean log p(x) per data point, nats."""
        return float(self.per_example.mean())

    @property
    def stderr(self) -> float:
        """Standard error of :attr:`mean` over data points (:func:`stderr`)."""
        return stderr(self.per_example)


def batch_size_of(data: tuple) -> int:
    """The number of data points N shared by every positional tensor (dim 0).

    data: tensors each (N, ...). Refuses tensors of different lengths: they would be sliced
    out of step.
    """
    sizes = {tuple(t.shape[:1]) for t in data if isinstance(t, torch.Tensor)}
    if not sizes:
        raise DataError("no data tensor given; pass the data as (model, guide, x, ...)")
    if len(sizes) > 1 or () in sizes:
        shapes = [tuple(t.shape) for t in data if isinstance(t, torch.Tensor)]
        raise DataError(
            f"positional data tensors have different lengths along dim 0 {shapes}; every "
            "positional tensor is sliced with the data points, pass extra inputs as keywords"
        )
    return next(iter(sizes))[0]


def slice_data(data: tuple, start: int, stop: int) -> tuple:
    """Every positional tensor sliced together along dim 0; other values passed unchanged."""
    return tuple(t[start:stop] if isinstance(t, torch.Tensor) else t for t in data)


def _sample_sites(trace) -> Iterator[tuple[str, dict]]:
    for name, site in trace.nodes.items():
        if site["type"] == "sample":
            yield name, site


def latent_sites(guide_trace, model_trace=None) -> list[str]:
    """Names of the latent sites: sample sites of the guide the model does not observe."""
    observed = set() if model_trace is None else set(observed_sites(model_trace))
    return [
        n
        for n, s in _sample_sites(guide_trace)
        if not s["is_observed"] and n not in observed
    ]


def observed_sites(model_trace) -> list[str]:
    """Names of the model's observed sample sites."""
    return [n for n, s in _sample_sites(model_trace) if s["is_observed"]]


def trace_pair(
    model: Callable,
    guide: Callable,
    *args,
    num_particles: int | None = None,
    particle_dim: int | None = None,
    **kwargs,
):
    """Trace the guide (with ``num_particles`` particles in a plate at ``particle_dim``) and
    replay the model on it; returns the pruned (guide_trace, model_trace), log-probs not yet
    computed. ``num_particles=None``: no particle plate."""
    if num_particles is None:
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
    else:
        with pyro.plate("particles", num_particles, dim=particle_dim):
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                *args, **kwargs
            )
    return prune_subsample_sites(guide_trace), prune_subsample_sites(model_trace)


def particle_dim_of(model: Callable, guide: Callable, *args, **kwargs) -> int:
    """The first free dimension left of every plate used by the model and guide."""
    with poutine.block():
        guide_trace, model_trace = trace_pair(model, guide, *args, **kwargs)
    return plate_particle_dim(guide_trace, model_trace)


def plate_particle_dim(guide_trace, model_trace) -> int:
    """The first free dimension left of every plate in the two traces."""
    nesting = 0
    for trace in (guide_trace, model_trace):
        for _, site in _sample_sites(trace):
            for frame in site["cond_indep_stack"]:
                if frame.vectorized and frame.dim is not None:
                    nesting = max(nesting, -frame.dim)
    return -(nesting + 1)


class ProgramInfo(NamedTuple):
    """What :func:`check_program` learned from the traces."""

    latent: list[str]
    particle_dim: int


def check_program(
    model: Callable,
    guide: Callable,
    *args,
    data_plate: str = "data",
    restore_rng: bool = False,
    **kwargs,
) -> ProgramInfo:
    """Check model and guide against each other on a small batch before any number is made.

    args: tensors each (n, ...). Refuses (with the site and the fix): a latent site of the
    model that the guide does not sample, a guide site the model does not have, no observed
    site, a site outside the data plate, a data plate whose size is not n or that subsamples
    (its log-probs would be rescaled by N / n), and values broadcast against their
    distribution. Returns the latent sites and the particle dimension (:class:`ProgramInfo`),
    from the one pair of traces. ``restore_rng``: leave the random state as it was.
    """
    n = batch_size_of(args)
    rng = pyro.util.get_rng_state()
    try:
        with poutine.block():
            guide_trace, model_trace = trace_pair(model, guide, *args, **kwargs)
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
        raise DataError(
            f"the model cannot read data of shape {shapes} ({first}); pass data shaped "
            "(N, *event_shape) as in training"
        ) from exc
    finally:
        if restore_rng:
            pyro.util.set_rng_state(rng)
    if not observed_sites(model_trace):
        raise DataError(
            "the model observes no sample site; give the data to pyro.sample(..., obs=x) so "
            "there is a likelihood to score"
        )
    model_latent = {nm for nm, s in _sample_sites(model_trace) if not s["is_observed"]}
    guide_latent = {nm for nm, s in _sample_sites(guide_trace) if not s["is_observed"]}
    for name in sorted(model_latent - guide_latent):
        raise DataError(
            f"latent site {name!r} of the model is not sampled by the guide, so its "
            "log-density would be counted without a proposal; sample it in the guide or sum "
            "it out inside the model"
        )
    for name in sorted(guide_latent - set(model_trace.nodes)):
        raise DataError(
            f"guide site {name!r} does not appear in the model; name the guide's sample sites "
            "as the model's latent sites"
        )
    for trace in (guide_trace, model_trace):
        for name, site in _sample_sites(trace):
            frames = {f.name: f for f in site["cond_indep_stack"]}
            if data_plate not in frames:
                raise DataError(
                    f"sample site {name!r} is outside plate {data_plate!r}; per-example "
                    f"weights need every sample site inside the data plate (or pass "
                    f"data_plate= the name of your data plate)"
                )
            frame = frames[data_plate]
            if frame.size != n or (frame.full_size is not None and frame.full_size != n):
                raise DataError(
                    f"plate {data_plate!r} at site {name!r} has size "
                    f"{frame.full_size or frame.size} (subsample {frame.size}) but the batch has "
                    f"{n} points; subsample scaling would rescale log p by N / n, so size the "
                    f"plate to the batch: pyro.plate({data_plate!r}, x.shape[0])"
                )
            expected = tuple(site["fn"].batch_shape + site["fn"].event_shape)
            got = tuple(site["value"].shape)
            if got != expected:
                raise DataError(
                    f"data is broadcast at site {name!r} (values {got}, distribution "
                    f"{expected}); pass data shaped (N, *event_shape) as in training"
                )
    return ProgramInfo(
        latent_sites(guide_trace, model_trace), plate_particle_dim(guide_trace, model_trace)
    )


def probe_data(model: Callable, data: tuple) -> tuple:
    """The small batch the programs are checked on: 2 points, or 1 for a model bound to an
    object that declares its ``event_shape`` (a VAE: the data's shape is checked directly)."""
    owner = getattr(model, "__self__", None)
    return slice_data(data, 0, 1 if getattr(owner, "event_shape", None) is not None else 2)


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


def site_terms(
    trace, particle_dim: int, data_plate: str, num_particles: int, batch: int
) -> dict[str, torch.Tensor]:
    """Every sample site's log-probability as (particles, batch), by site name."""
    return {
        n: site_term(n, s, particle_dim, data_plate, num_particles, batch)
        for n, s in _sample_sites(trace)
    }


def detach_distribution(fn):
    """A copy of ``fn`` whose parameter tensors are detached: log_prob(z) keeps d/dz only.

    Works for distributions that hold their parameters as tensor attributes (Normal,
    MultivariateNormal, LowRankMultivariateNormal, ...) and wrappers around them (Independent,
    expanded distributions). Raises ConfigError when a parameter stays attached (e.g. a flow
    whose transforms are modules with parameters).
    """
    import copy

    from torch.distributions import Distribution

    new = copy.copy(fn)
    for key, value in list(vars(fn).items()):
        if isinstance(value, torch.Tensor) and value.requires_grad:
            setattr(new, key, value.detach())
        elif isinstance(value, Distribution):
            setattr(new, key, detach_distribution(value))
    if new.log_prob(new.sample().detach()).requires_grad:
        raise ConfigError(
            f"cannot detach the parameters of {type(fn).__name__} for DReG; use a guide whose "
            "distribution holds its parameters as tensors, or --objective iwae"
        )
    return new


@dataclass
class ParticleTerms:
    """Per-site log-density terms of one traced batch, each (K, batch), and the traces.

    Attributes:
        log_p: model site name -> (K, batch) log-density (observed and latent).
        log_q: guide site name -> (K, batch) log-density.
        latent: names of the latent sites (found from the traces).
        z: latent name -> the guide's sample; z_leaf: the leaf it was scored at (DReG), else z.
    """

    log_p: dict[str, torch.Tensor]
    log_q: dict[str, torch.Tensor]
    latent: list[str]
    z: dict[str, torch.Tensor]
    z_leaf: dict[str, torch.Tensor]
    guide_trace: object
    model_trace: object

    def log_weights(self, kl_weight: float = 1.0) -> torch.Tensor:
        """(K, batch) log w = sum log p - sum log q, latent terms times ``kl_weight``."""
        total = 0.0
        for n, t in self.log_p.items():
            total = total + (kl_weight * t if n in self.latent else t)
        for n, t in self.log_q.items():
            total = total - (kl_weight * t if n in self.latent else t)
        return total


def particle_terms(
    model: Callable,
    guide: Callable,
    num_particles: int,
    *args,
    particle_dim: int | None = None,
    data_plate: str = "data",
    detach_guide: bool = False,
    **kwargs,
) -> ParticleTerms:
    """Trace the guide with K vectorized particles, replay the model, per-site terms (K, batch).

    args: tensors each (batch, ...), passed to both programs with ``kwargs``. With
    ``detach_guide`` each latent site is scored with its distribution's parameters detached,
    at a leaf copy of the sample (for DReG). Gradients flow through reparameterized sites.
    """
    if particle_dim is None:
        particle_dim = particle_dim_of(model, guide, *args, **kwargs)
    batch = batch_size_of(args)
    with pyro.plate("particles", num_particles, dim=particle_dim):
        guide_trace = prune_subsample_sites(poutine.trace(guide).get_trace(*args, **kwargs))
    latent = [n for n, s in _sample_sites(guide_trace) if not s["is_observed"]]
    z = {n: guide_trace.nodes[n]["value"] for n in latent}
    if detach_guide:
        z_leaf = {n: v.detach().requires_grad_() for n, v in z.items()}
        for n in latent:
            site = guide_trace.nodes[n]
            if not site["fn"].has_rsample:
                raise ConfigError(
                    f"DReG needs a reparameterized guide but site {n!r} has no rsample; "
                    "use --objective iwae"
                )
            fn = detach_distribution(site["fn"])
            site["value"] = z_leaf[n]
            site["log_prob"] = scale_and_mask(fn.log_prob(z_leaf[n]), site["scale"], site["mask"])
    else:
        z_leaf = z
        guide_trace.compute_log_prob()
    with pyro.plate("particles", num_particles, dim=particle_dim):
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
    model_trace = prune_subsample_sites(model_trace)
    model_trace.compute_log_prob()
    log_p = site_terms(model_trace, particle_dim, data_plate, num_particles, batch)
    log_q = site_terms(guide_trace, particle_dim, data_plate, num_particles, batch)
    if not log_p:
        raise DataError("the model has no sample sites; nothing to weigh")
    return ParticleTerms(log_p, log_q, latent, z, z_leaf, guide_trace, model_trace)


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

    x: (batch, *event_shape), further positional args (batch, ...) -> (num_particles, batch).
    Gradients flow (reparameterized sites), so this also serves objectives.
    """
    return particle_terms(
        model, guide, num_particles, x, *args,
        particle_dim=particle_dim, data_plate=data_plate, **kwargs,
    ).log_weights()


def chunk_sizes(num_samples: int, chunk: int) -> Iterator[int]:
    """Particle counts of successive chunks: ``chunk`` each, the last one what is left."""
    for k0 in range(0, num_samples, chunk):
        yield min(chunk, num_samples - k0)


def default_particle_chunk(batch: int, budget: int = DEFAULT_PARTICLE_BUDGET) -> int:
    """Particles per pass so that particles x batch stays within ``budget`` samples."""
    return max(1, budget // max(1, batch))
