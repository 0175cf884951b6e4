"""Training objectives for any model/guide pair: ELBO variants, IWAE, DReG, KL weight, free bits.

Every objective is a small class on one base, [`Objective`][pyro_vae.infer.objectives.Objective],
registered by name in ``OBJECTIVES``.
``objective.loss(model, guide, x, kl_weight, *args, **kwargs)`` is a differentiable loss on a
minibatch, summed over the batch (divide by the batch size for per-point figures), so it slots into
a plain torch optimizer over the modules' parameters. Alongside the loss the base reports a Monte
Carlo estimate of the TRUE ELBO (beta = 1, no free bits), so whatever is optimized, the bound that
is reported is the real one.

The KL weight scales the log-densities of the latent sites (every sample site that is not
observed, found from the traces, whatever its name) in the model AND the guide,
log p(x | z) + w (log p(z) - log q(z | x)); it is applied like ``poutine.scale``, but to the
latent sites only ([`LatentScale`][pyro_vae.infer.objectives.LatentScale]).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import pyro.infer
import torch
from pyro.poutine.messenger import Messenger
from torch.distributions import Distribution, Independent, kl_divergence

from pyro_vae.errors import ConfigError
from pyro_vae.infer.trace import (
    ParticleTerms,
    choose_strategy,
    common_scale,
    enumeration_nesting,
    is_unit_scale,
    latent_dependencies,
    particle_terms,
    site_parents,
    slice_data,
)

WARMUPS = ("none", "linear", "cyclical")


class LossValue(NamedTuple):
    """A minibatch loss (differentiable) and the true ELBO (float), both summed over the batch."""

    loss: torch.Tensor
    elbo: float


class LatentScale(Messenger):
    """``poutine.scale`` restricted to latent sites: multiplies their log-density by ``scale``.

    A latent site is a sample site that is not observed (read from the message, never from the
    site's name). Unlike ``poutine.scale`` it allows ``scale == 0`` (the start of a warm-up).
    """

    def __init__(self, scale: float):
        super().__init__()
        self.scale = float(scale)

    def _process_message(self, msg) -> None:
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = self.scale * msg["scale"]


class ScaleSeen(Messenger):
    """Records whether a handler inside the program scales any sample site (``scaled``):
    the loss then carries that factor, and the reported ELBO is computed without it."""

    def __init__(self):
        super().__init__()
        self.scaled = False

    def _process_message(self, msg) -> None:
        if msg["type"] == "sample" and not is_unit_scale(msg["scale"]):
            self.scaled = True


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


def importance_weighted_loss(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_particles: int,
    kl_weight: float = 1.0,
    *args,
    gradient: str = "iwae",
    data_plate: str = "data",
    particle_dim: int | None = None,
    strategy: str = "vectorized",
    **kwargs,
) -> LossValue:
    """Negative IWAE-K bound summed over the batch, with the IWAE or the DReG gradient.

    x: (batch, *event_shape); ``args``/``kwargs`` go to both programs after x; particles
    drawn by ``strategy`` ([`particle_terms`][pyro_vae.infer.trace.particle_terms]). The value is
    L_K(x) = E[log (1/K) sum_k w_k], w_k = p(x, z_k) / q(z_k | x), z_k ~ q(z | x) (Burda et al.
    2016); K = 1 is the ELBO. ``gradient="iwae"``: sum_k w~_k grad log w_k with normalized
    weights w~_k = w_k / sum_j w_j. ``gradient="dreg"`` (Tucker, Lawson, Gu & Maddison 2019,
    eq. 5):

        model (decoder) params theta:  sum_k w~_k  d log w_k / d theta          (IWAE)
        guide (encoder) params phi:    sum_k w~_k^2 (d log w_k / d z_k) (d z_k / d phi)

    where log w_k is scored with the guide's distribution parameters DETACHED, so the score-function
    term d log q / d phi (zero in expectation, but the source of the IWAE encoder gradient's
    variance) is dropped. How, generically: each latent site's distribution is copied with its
    parameter tensors detached ([`detach_distribution`][pyro_vae.infer.trace.detach_distribution]);
    log w_k is computed at leaf copies z'_k of z_k; the surrogate is sum_k w~_k log w_k(z') (theta
    only) plus sum_k <z_k, g_k> with g_k = d/dz'_k sum_j w~_j^2 log w_j (a fixed vector), which
    sends exactly the DReG term into phi through z_k. DReG needs reparameterized guide sites that
    are conditionally independent given x.
    """
    if gradient not in ("iwae", "dreg"):
        raise ConfigError(f"gradient must be 'iwae' or 'dreg', got {gradient!r}")
    dreg = gradient == "dreg"
    terms = particle_terms(
        model, guide, num_particles, x, *args,
        particle_dim=particle_dim, data_plate=data_plate, detach_guide=dreg, strategy=strategy,
        **kwargs,
    )  # fmt: skip
    scale = common_scale(terms.guide_trace, terms.model_trace, what=f"the {gradient} bound")
    lw = terms.log_weights(kl_weight)  # (K, batch)
    bound = torch.logsumexp(lw, 0) - math.log(num_particles)
    if not dreg:
        surrogate = bound.sum() + score_function_term(terms, lw)
        return LossValue(-scale * surrogate, _true_elbo(terms))
    for site in terms.latent:
        parents = site_parents(terms.guide_trace, terms.z, site)
        if parents:
            _refuse_dependent_guide(site, min(parents))
    w = torch.softmax(lw.detach(), 0)
    names = list(terms.z_leaf)
    grads = torch.autograd.grad(
        (w.pow(2) * lw).sum(), [terms.z_leaf[n] for n in names], retain_graph=True
    )
    surrogate = (w * lw).sum()
    for n, g in zip(names, grads, strict=True):
        surrogate = surrogate + (terms.z[n] * g.detach()).sum()
    loss = -(surrogate - surrogate.detach() + bound.detach().sum())
    return LossValue(scale * loss, _true_elbo(terms))


def score_function_term(terms: ParticleTerms, lw: torch.Tensor) -> torch.Tensor:
    """Zero-valued surrogate whose gradient is the score-function part of the IWAE gradient.

    lw: (K, batch) log weights (as optimized). Latent guide sites drawn without a pathwise
    gradient (discrete, or without ``rsample``; not enumerated) make the bound's gradient

        grad E_q[L] = E_q[grad L] + E_q[sum_k l_k grad log q(y_k | x)],   L = log mean_k w_k,

    and autograd through L gives only the first term. The learning signal is VIMCO's (Mnih &
    Rezende 2016): l_k = L - log mean(w_1 .. w_{k-1}, w^_k, w_{k+1} .. w_K) with w^_k the
    geometric mean of the other weights, a baseline that does not depend on y_k, so the
    estimate stays unbiased; with K = 1 there is no other particle and l_1 = L. Returns 0
    when every latent site is reparameterized or enumerated.
    """
    sampled = [
        n for n in terms.latent
        if n not in terms.enumerated and not terms.guide_trace.nodes[n]["fn"].has_rsample
    ]  # fmt: skip
    if not sampled:
        return lw.new_zeros(())
    if terms.enumerated:
        raise ConfigError(
            f"guide site {sampled[0]!r} is drawn without a pathwise gradient while "
            f"{terms.enumerated} are enumerated; the score-function term needs the drawn "
            f"site's log q apart, so mark {sampled[0]!r} infer={{'enumerate': 'parallel'}} too, "
            "or use --objective elbo (TraceEnum_ELBO)"
        )
    log_q = sum(terms.log_q[n] for n in sampled)  # (K, batch)
    k = lw.shape[0]
    lwd = lw.detach()
    bound = torch.logsumexp(lwd, 0) - math.log(k)
    if k == 1:
        signal = bound.expand_as(lwd)
    else:
        others = (lwd.sum(0, keepdim=True) - lwd) / (k - 1)  # mean of the other log weights
        leave_out = lwd.unsqueeze(0).repeat(k, 1, 1)  # (k, K, batch): row k has w_k replaced
        idx = torch.arange(k)
        leave_out[idx, idx] = others
        signal = bound - (torch.logsumexp(leave_out, 1) - math.log(k))
    term = (signal * log_q).sum()
    return term - term.detach()


def iwae_loss(model, guide, x, num_particles, kl_weight=1.0, *args, **kwargs) -> LossValue:
    """[`importance_weighted_loss`][pyro_vae.infer.objectives.importance_weighted_loss] with the
    IWAE gradient."""
    return importance_weighted_loss(model, guide, x, num_particles, kl_weight, *args, **kwargs)


def dreg_loss(model, guide, x, num_particles, kl_weight=1.0, *args, **kwargs) -> LossValue:
    """[`importance_weighted_loss`][pyro_vae.infer.objectives.importance_weighted_loss] with the
    doubly-reparameterized (DReG) gradient."""
    return importance_weighted_loss(
        model, guide, x, num_particles, kl_weight, *args, gradient="dreg", **kwargs
    )


def _true_elbo(terms: ParticleTerms) -> float:
    """The ELBO (beta = 1) summed over the batch: sum_n mean_k log w_nk."""
    return float(terms.log_weights(1.0).detach().mean(0).sum())


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
    *args,
    data_plate: str = "data",
    particle_dim: int | None = None,
    **kwargs,
) -> LossValue:
    """Negative ELBO with a KL floor per latent dimension ("free bits"), summed over the batch.

    x: (batch, *event_shape). With KL_d the batch-mean KL of latent dimension d of each latent site
    ([`per_dim_kl`][pyro_vae.infer.objectives.per_dim_kl]; latent sites found from the traces), the
    objective per batch is

        sum_n E_q[log p(x_n | z)] - batch * kl_weight * sum_d max(free_bits, KL_d)

    (Kingma et al. 2016, "Improved Variational Inference with Inverse Autoregressive Flow",
    with one group per latent dimension). One sample of z per data point, drawn without a
    particle dimension (one copy of the data), so programs that cannot carry a dimension left of
    their plates train with free bits as with the ELBO.
    """
    terms = particle_terms(
        model, guide, 1, x, *args, particle_dim=particle_dim, data_plate=data_plate,
        strategy="replicate", **kwargs,
    )  # fmt: skip
    batch = x.shape[0]
    penalty = 0.0
    for name in terms.latent:
        zq, zp = terms.guide_trace.nodes[name], terms.model_trace.nodes[name]
        kl = per_dim_kl(zq["fn"], zp["fn"], zq["value"])  # (1, batch, latent_dim)
        kl = kl.reshape(-1, kl.shape[-1]).mean(0)  # batch mean per dimension
        penalty = penalty + kl.clamp(min=free_bits).sum()
    recon = terms.log_weights(0.0)
    objective = recon.sum() - batch * kl_weight * penalty
    return LossValue(-objective, _true_elbo(terms))


class Objective:
    """A training objective: particles, KL schedule, free bits; subclasses supply one loss.

    ``loss(model, guide, x, kl_weight, *args, **kwargs)`` ->
    [`LossValue`][pyro_vae.infer.objectives.LossValue] (loss summed over the batch, and the true
    ELBO summed over the batch). The base owns the free-bits route and the true-ELBO report; a
    subclass implements [`objective_loss`][pyro_vae.infer.objectives.Objective.objective_loss].
    """

    name: ClassVar[str] = ""
    #: whether free bits (an ELBO floor per latent dimension) apply to this objective
    allows_free_bits: ClassVar[bool] = False

    def __init__(
        self,
        num_particles: int = 1,
        schedule: KLSchedule | None = None,
        free_bits: float = 0.0,
        data_plate: str = "data",
    ) -> None:
        if isinstance(num_particles, bool) or not isinstance(num_particles, int) or (
            num_particles < 1
        ):
            raise ConfigError(f"num_particles must be at least 1, got {num_particles}")
        if not (free_bits >= 0 and math.isfinite(free_bits)):
            raise ConfigError(f"free_bits must be a non-negative number, got {free_bits}")
        if free_bits > 0 and not self.allows_free_bits:
            raise ConfigError(
                f"free bits apply to the ELBO, not to {self.name!r}; use --objective elbo or "
                "--free-bits 0"
            )
        if free_bits > 0 and num_particles != 1:
            raise ConfigError("free bits use one particle; set --num-particles 1")
        self.num_particles = num_particles
        self.schedule = KLSchedule() if schedule is None else schedule
        self.free_bits = float(free_bits)
        self.data_plate = data_plate

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_particles={self.num_particles}, "
            f"schedule={self.schedule}, free_bits={self.free_bits})"
        )

    def kl_weight(self, progress: float) -> float:
        """The KL weight after ``progress`` epochs (see
        [`KLSchedule`][pyro_vae.infer.objectives.KLSchedule])."""
        return self.schedule.weight(progress)

    def loss(
        self,
        model: Callable,
        guide: Callable,
        x: torch.Tensor,
        kl_weight: float = 1.0,
        *args,
        **kwargs,
    ) -> LossValue:
        """Loss on the minibatch x: (batch, *event_shape), summed over the batch.

        ``args`` and ``kwargs`` are passed to model and guide after ``x``.
        """
        if self.free_bits > 0:
            self._check_pair(model, guide, (x, *args), kwargs)
            return free_bits_loss(
                model, guide, x, self.free_bits, kl_weight, *args,
                data_plate=self.data_plate, **kwargs,
            )
        return self.objective_loss(model, guide, (x, *args), kwargs, kl_weight)

    def objective_loss(
        self, model: Callable, guide: Callable, data: tuple, kwargs: dict, kl_weight: float
    ) -> LossValue:
        """The objective's own loss on ``data`` (x first), with latent terms times kl_weight."""
        raise NotImplementedError

    def check_programs(self, model: Callable, guide: Callable, data: tuple, kwargs: dict) -> None:
        """Refuse a model/guide pair this objective's assumptions do not hold for (a
        [`ConfigError`][pyro_vae.errors.ConfigError] naming the site and the fix); called once
        per pair. The base checks free bits: each site's KL per dimension is taken against p(site
        | parents) at the guide's draws of the parents, which the guide must draw before the
        site."""
        if self.free_bits > 0:
            _refuse_mean_field_conflict(model, guide, data, kwargs, "free bits")

    def _check_pair(self, model: Callable, guide: Callable, data: tuple, kwargs: dict) -> None:
        checked = self.__dict__.setdefault("_checked_pairs", set())
        if (model, guide) not in checked:
            self.check_programs(model, guide, slice_data(data, 0, 2), kwargs)
            checked.add((model, guide))

    def true_elbo(self, model: Callable, guide: Callable, data: tuple, kwargs: dict) -> float:
        """Monte Carlo ELBO (beta = 1) summed over the batch, with ``num_particles`` samples."""
        with torch.no_grad():
            terms = particle_terms(
                model, guide, self.num_particles, *data, data_plate=self.data_plate, **kwargs
            )
        return _true_elbo(terms)


class _PyroELBO(Objective):
    """ELBO through a Pyro ELBO's ``differentiable_loss`` (vectorized particles).

    Where the programs mark a site for enumeration (``infer={"enumerate": "parallel"}``, as
    ``config_enumerate`` does), Pyro's ``TraceEnum_ELBO`` computes the loss instead, summing
    those sites out exactly; decided once, from the traces of the first batch.
    """

    allows_free_bits: ClassVar[bool] = True
    pyro_elbo: ClassVar[type] = pyro.infer.Trace_ELBO

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # one Pyro ELBO per model/guide pair (it guesses the plate nesting once, on its first
        # call), so a pair that enumerates and one that does not never share one
        self._elbos: dict[tuple[Callable, Callable], tuple[object, bool]] = {}

    @property
    def enumerates(self) -> bool | None:
        """Whether the pair seen last sums a site out (``None`` before the first batch)."""
        return self._last_enumerates if self._elbos else None

    def _pyro_elbo_for(self, model, guide, data, kwargs):
        """The Pyro ELBO for these programs: TraceEnum_ELBO where a site is enumerated."""
        key = (model, guide)
        if key not in self._elbos:
            nesting = enumeration_nesting(model, guide, *data, **kwargs)
            particles = {
                "num_particles": self.num_particles,
                "vectorize_particles": self.num_particles > 1,
            }
            if nesting is None:
                elbo = self.pyro_elbo(**particles)
            else:
                elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=nesting, **particles)
            self._elbos[key] = (elbo, nesting is not None)
        elbo, self._last_enumerates = self._elbos[key]
        return elbo

    def objective_loss(self, model, guide, data, kwargs, kl_weight) -> LossValue:
        self._check_pair(model, guide, data, kwargs)
        elbo = self._pyro_elbo_for(model, guide, data, kwargs)
        if self.enumerates and kl_weight != 1.0:
            raise ConfigError(
                f"a KL weight of {kl_weight} (beta, warm-up) cannot scale the latent terms of "
                "programs with enumerated sites; train them with KL weight 1"
            )
        seen = ScaleSeen()
        if kl_weight == 1.0:
            loss = elbo.differentiable_loss(seen(model), seen(guide), *data, **kwargs)
            if not seen.scaled:
                return LossValue(loss, -float(loss.detach()))
        else:
            scaled_model = LatentScale(kl_weight)(seen(model))
            scaled_guide = LatentScale(kl_weight)(seen(guide))
            loss = elbo.differentiable_loss(scaled_model, scaled_guide, *data, **kwargs)
        # the reported ELBO is the program's own: no KL weight, no handler's scale factor
        return LossValue(loss, self.true_elbo(model, guide, data, kwargs))


class TraceELBO(_PyroELBO):
    """Trace_ELBO: E_q[log p(x,z) - log q(z|x)], Monte Carlo KL (Pyro's ``Trace_ELBO``)."""

    name: ClassVar[str] = "elbo"
    pyro_elbo: ClassVar[type] = pyro.infer.Trace_ELBO


class MeanFieldELBO(_PyroELBO):
    """TraceMeanField_ELBO: analytic KL where it exists (Pyro's ``TraceMeanField_ELBO``)."""

    name: ClassVar[str] = "meanfield"
    pyro_elbo: ClassVar[type] = pyro.infer.TraceMeanField_ELBO

    def check_programs(self, model, guide, data, kwargs) -> None:
        """The analytic KL of each site is taken against p(site | parents) at the guide's
        draws of the parents: refuse a guide that draws a parent after the site."""
        super().check_programs(model, guide, data, kwargs)
        _refuse_mean_field_conflict(model, guide, data, kwargs, "meanfield's analytic KL")


class IWAE(Objective):
    """IWAE-K bound log mean_k w_k (Burda et al. 2016), see
    [`importance_weighted_loss`][pyro_vae.infer.objectives.importance_weighted_loss]."""

    name: ClassVar[str] = "iwae"
    gradient: ClassVar[str] = "iwae"
    #: how particles are drawn, chosen on the first batch
    #: ([`choose_strategy`][pyro_vae.infer.trace.choose_strategy])
    strategy: str | None = None

    def objective_loss(self, model, guide, data, kwargs, kl_weight) -> LossValue:
        self._check_pair(model, guide, data, kwargs)
        if self.strategy is None:
            probe = slice_data(data, 0, 2)
            self.strategy = choose_strategy(
                model, guide, *probe, data_plate=self.data_plate, **kwargs
            )
        return importance_weighted_loss(
            model, guide, data[0], self.num_particles, kl_weight, *data[1:],
            gradient=self.gradient, data_plate=self.data_plate, strategy=self.strategy,
            **kwargs,
        )  # fmt: skip


class DReG(IWAE):
    """IWAE-K bound with the doubly-reparameterized encoder gradient (Tucker et al. 2019)."""

    name: ClassVar[str] = "dreg"
    gradient: ClassVar[str] = "dreg"

    def check_programs(self, model, guide, data, kwargs) -> None:
        """DReG's encoder gradient (Tucker et al. 2019) holds for guide sites that are
        conditionally independent given x: refuse a guide site that depends on another's draw (a
        bottom-up or ladder hierarchy).
        [`importance_weighted_loss`][pyro_vae.infer.objectives.importance_weighted_loss] refuses
        it too, for callers that use the function directly."""
        super().check_programs(model, guide, data, kwargs)
        dependent = latent_dependencies(model, guide, *data, **kwargs).dependent_guide_site()
        if dependent is not None:
            _refuse_dependent_guide(*dependent)


def _refuse_dependent_guide(site: str, parent: str) -> None:
    raise ConfigError(
        f"dreg assumes the guide's latent sites are conditionally independent given the data, "
        f"but q({site} | ...) depends on the draw of {parent!r}, so its encoder gradient would "
        "be biased; use --objective iwae for this model"
    )


#: Objective name -> class, accepted by [`make_objective`][pyro_vae.infer.objectives.make_objective]
#: and ``pyro-vae train --objective``.
OBJECTIVES: dict[str, type[Objective]] = {
    cls.name: cls for cls in (TraceELBO, MeanFieldELBO, IWAE, DReG)
}


def _refuse_mean_field_conflict(
    model: Callable, guide: Callable, data: tuple, kwargs: dict, what: str
) -> None:
    """Refuse a pair whose guide draws a model parent of a latent site after that site
    ([`mean_field_conflict`][pyro_vae.infer.trace.LatentDependencies.mean_field_conflict])."""
    conflict = latent_dependencies(model, guide, *data, **kwargs).mean_field_conflict()
    if conflict is not None:
        site, parent = conflict
        raise ConfigError(
            f"{what} of site {site!r} is taken against p({site} | {parent}) at the guide's "
            f"draw of {parent!r}, which the guide makes after {site!r} (from it), so it would "
            f"be biased; use --objective elbo without free bits, or a guide that draws "
            f"{parent!r} first (a top-down guide, e.g. --inference ladder)"
        )


def make_objective(
    name: str = "elbo",
    num_particles: int = 1,
    *,
    beta: float = 1.0,
    warmup: str = "none",
    warmup_epochs: float = 0.0,
    free_bits: float = 0.0,
    data_plate: str = "data",
) -> Objective:
    """An [`Objective`][pyro_vae.infer.objectives.Objective] by name (see ``OBJECTIVES``) with its
    KL schedule.

    ELBO(x) = E_q[log p(x, z) - log q(z | x)] <= log p(x); every loss is its negative (or that
    of the IWAE bound), summed over the minibatch.
    """
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}")
    return OBJECTIVES[name](
        num_particles=num_particles,
        schedule=KLSchedule(beta=beta, warmup=warmup, warmup_epochs=warmup_epochs),
        free_bits=free_bits,
        data_plate=data_plate,
    )
