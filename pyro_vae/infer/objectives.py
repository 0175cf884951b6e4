"""Training objectives for any model/guide pair: ELBO variants, IWAE, DReG, KL weight, free bits.

Every objective is a differentiable loss on a minibatch, ``objective.loss(model, guide, x,
kl_weight)``, summed over the batch (divide by the batch size for per-point figures), so it
slots into a plain torch optimizer over the modules' parameters. Alongside the loss it returns
a Monte Carlo estimate of the TRUE ELBO (beta = 1, no free bits), so whatever is optimized, the
bound that is reported is the real one.

The KL weight scales the log-densities of the latent site(s) (``"z"``) in the model AND the
guide, log p(x | z) + w (log p(z) - log q(z | x)); it is applied like ``poutine.scale``, but to
the latent sites only (:class:`LatentScale`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import pyro
import pyro.infer
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites
from torch.distributions import Distribution, Independent, kl_divergence

from pyro_vae.errors import ConfigError
from pyro_vae.infer.importance import particle_dim_of, site_term

#: Objective names accepted by :func:`make_objective` and ``pyro-vae train --objective``.
OBJECTIVES = {
    "elbo": "Trace_ELBO: E_q[log p(x,z) - log q(z|x)], Monte Carlo KL",
    "meanfield": "TraceMeanField_ELBO: analytic KL where it exists",
    "iwae": "IWAE-K bound log mean_k w_k (Burda et al. 2016)",
    "dreg": "IWAE-K bound with the doubly-reparameterized encoder gradient (Tucker et al. 2019)",
}

WARMUPS = ("none", "linear", "cyclical")


class LossValue(NamedTuple):
    """A minibatch loss (differentiable) and the true ELBO (float), both summed over the batch."""

    loss: torch.Tensor
    elbo: float


class LatentScale(Messenger):
    """``poutine.scale`` restricted to named sites: multiplies their log-density by ``scale``.

    Unlike ``poutine.scale`` it allows ``scale == 0`` (the start of a warm-up).
    """

    def __init__(self, scale: float, sites: Sequence[str] = ("z",)):
        super().__init__()
        self.scale = float(scale)
        self.sites = tuple(sites)

    def _process_message(self, msg) -> None:
        if msg["name"] in self.sites:
            msg["scale"] = self.scale * msg["scale"]


@dataclass
class KLSchedule:
    """KL weight as a function of training progress (epochs, fractional).

    ``none``: beta. ``linear``: beta * min(1, t / warmup_epochs) (Bowman et al. 2016).
    ``cyclical``: beta * min(1, 2 tau) with tau = (t mod warmup_epochs) / warmup_epochs, a
    linear ramp over the first half of each cycle of ``warmup_epochs`` epochs, then beta for
    the second half (Fu et al. 2019, "Cyclical Annealing Schedule", R = 0.5).
    """

    beta: float = 1.0
    warmup: str = "none"
    warmup_epochs: float = 0.0

    def __post_init__(self) -> None:
        if not (self.beta >= 0 and math.isfinite(self.beta)):
            raise ConfigError(f"beta must be a non-negative number, got {self.beta}")
        if self.warmup not in WARMUPS:
            raise ConfigError(f"unknown warm-up {self.warmup!r}; choose one of {list(WARMUPS)}")
        if self.warmup != "none" and not self.warmup_epochs > 0:
            raise ConfigError(
                f"warm-up {self.warmup!r} needs warmup_epochs > 0, got {self.warmup_epochs}; "
                "set --warmup-epochs"
            )

    def weight(self, progress: float) -> float:
        """KL weight after ``progress`` epochs of training."""
        if self.warmup == "linear":
            return self.beta * min(1.0, progress / self.warmup_epochs)
        if self.warmup == "cyclical":
            tau = (progress % self.warmup_epochs) / self.warmup_epochs
            return self.beta * min(1.0, 2.0 * tau)
        return self.beta


def _latent_names(guide_trace) -> list[str]:
    return [
        name
        for name, site in guide_trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"]
    ]


def _terms(model, guide, x, num_particles, particle_dim, data_plate, detach_guide=False):
    """Per-site log-density terms of the importance weights, each (K, batch).

    Returns (log_p, log_q, z, z_leaf, guide_trace, model_trace): dicts by site name of the
    model's and guide's log densities, the guide's reparameterized samples, and, when
    ``detach_guide``, the leaf tensors the model and guide were scored at (for DReG; else
    ``z_leaf is z``), then the two traces.
    """
    batch = x.shape[0]
    with pyro.plate("particles", num_particles, dim=particle_dim):
        guide_trace = poutine.trace(guide).get_trace(x)
    guide_trace = prune_subsample_sites(guide_trace)
    names = _latent_names(guide_trace)
    z = {n: guide_trace.nodes[n]["value"] for n in names}
    if detach_guide:
        z_leaf = {n: v.detach().requires_grad_() for n, v in z.items()}
        for n in names:
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
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    model_trace = prune_subsample_sites(model_trace)
    model_trace.compute_log_prob()

    def collect(trace):
        return {
            n: site_term(n, s, particle_dim, data_plate, num_particles, batch)
            for n, s in trace.nodes.items()
            if s["type"] == "sample"
        }

    return collect(model_trace), collect(guide_trace), z, z_leaf, guide_trace, model_trace


def detach_distribution(fn: Distribution) -> Distribution:
    """A copy of ``fn`` whose parameter tensors are detached: log_prob(z) keeps d/dz only.

    Works for distributions that hold their parameters as tensor attributes (Normal,
    MultivariateNormal, LowRankMultivariateNormal, ...) and wrappers around them (Independent,
    expanded distributions). Raises ConfigError when a parameter stays attached (e.g. a flow
    whose transforms are modules with parameters).
    """
    import copy

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


def _weighted(log_p, log_q, latent: Sequence[str], kl_weight: float) -> torch.Tensor:
    """log w = sum_sites log p - log q, with the latent sites' terms multiplied by kl_weight."""
    total = 0.0
    for n, t in log_p.items():
        total = total + (kl_weight * t if n in latent else t)
    for n, t in log_q.items():
        total = total - (kl_weight * t if n in latent else t)
    return total


def iwae_loss(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_particles: int,
    kl_weight: float = 1.0,
    *,
    latent_sites: Sequence[str] = ("z",),
    data_plate: str = "data",
    particle_dim: int | None = None,
) -> LossValue:
    """Negative IWAE-K bound summed over the batch, differentiable (reparameterized guide).

    x: (batch, *event_shape). L_K(x) = E[log (1/K) sum_k w_k], w_k = p(x, z_k) / q(z_k | x),
    z_k ~ q(z | x) (Burda et al. 2016). Its gradient is sum_k w~_k grad log w_k with
    normalized weights w~_k = w_k / sum_j w_j. K = 1 is the ELBO.
    """
    if particle_dim is None:
        particle_dim = particle_dim_of(model, guide, x)
    log_p, log_q, *_ = _terms(model, guide, x, num_particles, particle_dim, data_plate)
    lw = _weighted(log_p, log_q, latent_sites, kl_weight)
    bound = torch.logsumexp(lw, 0) - math.log(num_particles)
    true = _weighted(log_p, log_q, latent_sites, 1.0).detach().mean(0).sum()
    return LossValue(-bound.sum(), float(true))


def dreg_loss(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_particles: int,
    kl_weight: float = 1.0,
    *,
    latent_sites: Sequence[str] = ("z",),
    data_plate: str = "data",
    particle_dim: int | None = None,
) -> LossValue:
    """Negative IWAE-K bound with the doubly-reparameterized gradient (DReG) for the guide.

    x: (batch, *event_shape). The value is that of :func:`iwae_loss`; the gradients are
    (Tucker, Lawson, Gu & Maddison 2019, eq. 5):

        model (decoder) params theta:  sum_k w~_k  d log w_k / d theta          (IWAE)
        guide (encoder) params phi:    sum_k w~_k^2 (d log w_k / d z_k) (d z_k / d phi)

    where log w_k = log p(x, z_k) - log q(z_k | x) is scored with the guide's distribution
    parameters DETACHED, so the score-function term d log q / d phi (zero in expectation, but
    the source of the IWAE encoder gradient's variance) is dropped. How, generically: the
    guide is traced once (z_k = g(eps_k, phi)); each latent site's distribution is copied with
    its parameter tensors detached (:func:`detach_distribution`); log w_k is computed at leaf
    copies z'_k of z_k; then the surrogate is sum_k w~_k log w_k(z') (theta only, as z' and
    q's parameters are leaves) plus sum_k <z_k, g_k> with g_k = d/dz'_k sum_j w~_j^2 log w_j
    (a fixed vector), which sends exactly the DReG term into phi through z_k.
    Needs reparameterized guide sites that are conditionally independent given x.
    """
    if particle_dim is None:
        particle_dim = particle_dim_of(model, guide, x)
    log_p, log_q, z, z_leaf, *_ = _terms(
        model, guide, x, num_particles, particle_dim, data_plate, detach_guide=True
    )
    lw = _weighted(log_p, log_q, latent_sites, kl_weight)  # (K, batch)
    w = torch.softmax(lw.detach(), 0)
    names = list(z_leaf)
    grads = torch.autograd.grad(
        (w.pow(2) * lw).sum(), [z_leaf[n] for n in names], retain_graph=True
    )
    surrogate = (w * lw).sum()
    for n, g in zip(names, grads, strict=True):
        surrogate = surrogate + (z[n] * g.detach()).sum()
    bound = (torch.logsumexp(lw.detach(), 0) - math.log(num_particles)).sum()
    loss = -(surrogate - surrogate.detach() + bound)
    true = _weighted(log_p, log_q, latent_sites, 1.0).detach().mean(0).sum()
    return LossValue(loss, float(true))


def per_dim_kl(q: Distribution, p: Distribution, z: torch.Tensor) -> torch.Tensor:
    """KL(q || p) per latent dimension: (*batch, latent_dim).

    Analytic (``kl_divergence`` of the base distributions) when both are ``Independent`` over
    one dimension with a registered closed form (e.g. diagonal normal vs. standard normal);
    otherwise the one-sample Monte Carlo estimate log q_d(z_d) - log p_d(z_d) at the guide's
    sample z, which needs both to factorize over dimensions (``Independent``).
    """
    qb, pb = _factors(q), _factors(p)
    try:
        return kl_divergence(qb, pb).expand(z.shape)
    except NotImplementedError:
        return qb.log_prob(z) - pb.log_prob(z)


def _factors(d: Distribution) -> Distribution:
    if isinstance(d, Independent) and d.reinterpreted_batch_ndims == 1:
        return d.base_dist
    raise ConfigError(
        f"free bits need per-dimension KL, but {type(d).__name__} does not factorize over latent "
        "dimensions; use a diagonal posterior and prior, or --free-bits 0"
    )


def free_bits_loss(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    free_bits: float,
    kl_weight: float = 1.0,
    *,
    latent_site: str = "z",
    data_plate: str = "data",
    particle_dim: int | None = None,
) -> LossValue:
    """Negative ELBO with a KL floor per latent dimension ("free bits"), summed over the batch.

    x: (batch, *event_shape). With KL_d the batch-mean KL of latent dimension d
    (:func:`per_dim_kl`), the objective per batch is

        sum_n E_q[log p(x_n | z)] - batch * kl_weight * sum_d max(free_bits, KL_d)

    (Kingma et al. 2016, "Improved Variational Inference with Inverse Autoregressive Flow",
    with one group per latent dimension). One sample of z per data point.
    """
    if particle_dim is None:
        particle_dim = particle_dim_of(model, guide, x)
    log_p, log_q, _, _, guide_trace, model_trace = _terms(
        model, guide, x, 1, particle_dim, data_plate
    )
    zq = guide_trace.nodes[latent_site]
    zp = model_trace.nodes[latent_site]
    kl = per_dim_kl(zq["fn"], zp["fn"], zq["value"])  # (1, batch, latent_dim)
    kl = kl.reshape(-1, kl.shape[-1]).mean(0)  # batch mean per dimension
    recon = sum(t for n, t in log_p.items() if n != latent_site) - sum(
        t for n, t in log_q.items() if n != latent_site
    )
    batch = x.shape[0]
    objective = recon.sum() - batch * kl_weight * kl.clamp(min=free_bits).sum()
    true = _weighted(log_p, log_q, (latent_site,), 1.0).detach().mean(0).sum()
    return LossValue(-objective, float(true))


@dataclass
class Objective:
    """A training objective by name, with particles, KL schedule and free bits.

    ``loss(model, guide, x, kl_weight)`` -> :class:`LossValue` (loss summed over the batch and
    the true ELBO summed over the batch). ``elbo``/``meanfield`` use Pyro's ``Trace_ELBO`` /
    ``TraceMeanField_ELBO`` ``differentiable_loss`` (vectorized particles) with the latent
    site scaled by :class:`LatentScale`; ``iwae``/``dreg`` use :func:`iwae_loss` /
    :func:`dreg_loss`; a positive ``free_bits`` uses :func:`free_bits_loss` (ELBO only).
    """

    name: str = "elbo"
    num_particles: int = 1
    schedule: KLSchedule | None = None
    free_bits: float = 0.0
    latent_sites: tuple[str, ...] = ("z",)

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVES:
            raise ConfigError(
                f"unknown objective {self.name!r}; choose one of {sorted(OBJECTIVES)}"
            )
        if self.num_particles < 1:
            raise ConfigError(f"num_particles must be at least 1, got {self.num_particles}")
        if not (self.free_bits >= 0 and math.isfinite(self.free_bits)):
            raise ConfigError(f"free_bits must be a non-negative number, got {self.free_bits}")
        if self.free_bits > 0 and self.name not in ("elbo", "meanfield"):
            raise ConfigError(
                f"free bits apply to the ELBO, not to {self.name!r}; use --objective elbo or "
                "--free-bits 0"
            )
        if self.free_bits > 0 and self.num_particles != 1:
            raise ConfigError("free bits use one particle; set --num-particles 1")
        if self.schedule is None:
            self.schedule = KLSchedule()
        self._pyro_elbo = None
        if self.name in ("elbo", "meanfield"):
            cls = pyro.infer.Trace_ELBO if self.name == "elbo" else pyro.infer.TraceMeanField_ELBO
            self._pyro_elbo = cls(
                num_particles=self.num_particles, vectorize_particles=self.num_particles > 1
            )

    def kl_weight(self, progress: float) -> float:
        """The KL weight after ``progress`` epochs (see :class:`KLSchedule`)."""
        return self.schedule.weight(progress)

    def loss(
        self, model: Callable, guide: Callable, x: torch.Tensor, kl_weight: float = 1.0
    ) -> LossValue:
        """Loss on the minibatch x: (batch, *event_shape), summed over the batch."""
        if self.free_bits > 0:
            return free_bits_loss(
                model, guide, x, self.free_bits, kl_weight, latent_site=self.latent_sites[0]
            )
        if self.name == "iwae":
            return iwae_loss(
                model, guide, x, self.num_particles, kl_weight, latent_sites=self.latent_sites
            )
        if self.name == "dreg":
            return dreg_loss(
                model, guide, x, self.num_particles, kl_weight, latent_sites=self.latent_sites
            )
        if kl_weight == 1.0:
            loss = self._pyro_elbo.differentiable_loss(model, guide, x)
            return LossValue(loss, -float(loss.detach()))
        scaled_model = LatentScale(kl_weight, self.latent_sites)(model)
        scaled_guide = LatentScale(kl_weight, self.latent_sites)(guide)
        loss = self._pyro_elbo.differentiable_loss(scaled_model, scaled_guide, x)
        with torch.no_grad():
            true = iwae_loss(
                model, guide, x, self.num_particles, latent_sites=self.latent_sites
            ).elbo
        return LossValue(loss, true)


def make_objective(
    name: str = "elbo",
    num_particles: int = 1,
    *,
    beta: float = 1.0,
    warmup: str = "none",
    warmup_epochs: float = 0.0,
    free_bits: float = 0.0,
) -> Objective:
    """An :class:`Objective` by name (see :data:`OBJECTIVES`) with its KL schedule.

    ELBO(x) = E_q[log p(x, z) - log q(z | x)] <= log p(x); every loss is its negative (or that
    of the IWAE bound), summed over the minibatch.
    """
    return Objective(
        name=name,
        num_particles=num_particles,
        schedule=KLSchedule(beta=beta, warmup=warmup, warmup_epochs=warmup_epochs),
        free_bits=free_bits,
    )
