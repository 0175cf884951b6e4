"""The ELBO of the library's own VAE computed directly from its parts, without Pyro tracing.

``fused_elbo_loss(vae, x, ...)`` returns the same differentiable loss and true ELBO as Pyro's
``Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)`` (Monte Carlo KL) or
``TraceMeanField_ELBO`` (analytic KL where a closed form is registered), with the latent site's
terms weighted by ``kl_weight`` as [`pyro_vae.infer.objectives.LatentScale`][] does. It is an
implementation detail of training: the general Pyro path stays for every other model/guide pair, and
[`fused_unsupported`][pyro_vae.models.fused.fused_unsupported] says when this one does not apply.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pyro.distributions as dist
import torch
from torch.distributions import Distribution, Independent, Normal, kl_divergence

from pyro_vae.errors import ConfigError
from pyro_vae.models.mlp_bernoulli import MLPBernoulliLogProb, bernoulli_log_prob
from pyro_vae.models.vae import VAE
from pyro_vae.parts.likelihoods import LIKELIHOODS, Bernoulli
from pyro_vae.parts.posteriors import POSTERIORS
from pyro_vae.parts.priors import PRIORS

#: Objective names whose loss the fused path reproduces (see ``pyro_vae.infer.objectives``).
FUSED_OBJECTIVES = ("elbo", "meanfield")


def fused_unsupported(
    vae: object, objective: str = "elbo", num_particles: int = 1, free_bits: float = 0.0
) -> str | None:
    """Why the fused ELBO does not apply to this model and objective, or ``None`` when it does.

    It applies to a [`VAE`][pyro_vae.models.vae.VAE] itself (not a subclass, whose programs may
    differ) whose prior, likelihood and posterior are exactly the registry's classes (a user's part
    may call Pyro primitives the fused path would skip), with a reparameterized posterior, for the
    ``elbo`` and ``meanfield`` objectives without free bits, any number of particles.
    """
    if type(vae) is not VAE:
        return f"the model is a {type(vae).__name__}, not a pyro_vae VAE"
    parts = (
        ("prior", vae.prior, PRIORS),
        ("likelihood", vae.likelihood, LIKELIHOODS),
        ("posterior", vae.posterior, POSTERIORS),
    )
    for role, part, registry in parts:
        if type(part) not in registry.values():
            return f"the {role} {type(part).__name__} is not one of the library's own"
    if objective not in FUSED_OBJECTIVES:
        return f"the objective {objective!r} is not one of {list(FUSED_OBJECTIVES)}"
    if free_bits != 0.0:
        return "free bits use their own loss"
    if num_particles < 1:
        return f"num_particles must be at least 1, got {num_particles}"
    return None


@contextlib.contextmanager
def without_validation() -> Iterator[None]:
    """Distributions built inside skip argument validation (the same values; validation only
    raises on invalid ones); the previous default is restored on exit."""
    validate = Distribution._validate_args
    Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        Distribution.set_default_validate_args(validate)


class FusedELBO:
    """The fused ELBO of one VAE, with its parts looked up once (not at every step).

    ``FusedELBO(vae, analytic_kl, num_particles)(x, kl_weight)`` -> ``(loss, elbo)``, see
    [`fused_elbo_loss`][pyro_vae.models.fused.fused_elbo_loss]. The parts' ``forward`` is called
    directly: the values are those of the VAE's ``model``/``guide``, without
    ``PyroModule.__call__``'s per-call bookkeeping. Raises
    [`ConfigError`][pyro_vae.errors.ConfigError] (with the reason) where
    [`fused_unsupported`][pyro_vae.models.fused.fused_unsupported] refuses.
    """

    def __init__(self, vae: VAE, analytic_kl: bool = False, num_particles: int = 1):
        reason = fused_unsupported(vae, num_particles=num_particles)
        if reason is not None:
            raise ConfigError(f"the fused ELBO does not apply: {reason}; use the Pyro objective")
        self.encoder = vae.encoder
        self.decoder = vae.decoder
        self.prior = vae.prior
        self.likelihood = vae.likelihood
        self.posterior = vae.posterior
        self.event_shape = vae.event_shape
        self.num_outputs = vae.likelihood.num_params
        self.event_dims = len(vae.event_shape)
        self.analytic_kl = bool(analytic_kl)
        self.num_particles = int(num_particles)

    def __call__(
        self, x: torch.Tensor, kl_weight: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, elbo)`` on x: (batch, *event_shape); see
        [`fused_elbo_loss`][pyro_vae.models.fused.fused_elbo_loss].

        The parts' distributions are built without argument validation (the same values;
        validation only raises on invalid ones): the caller checked the data, and a
        non-finite network output gives a non-finite loss, which the training loop reports.
        """
        with without_validation():
            return self._elbo(x, kl_weight)

    def _elbo(self, x: torch.Tensor, kl_weight: float) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.num_particles
        qz = self.posterior.forward(self.encoder(x))
        batch = qz.batch_shape
        z = qz.rsample(torch.Size((k,)) if k > 1 else torch.Size())  # (K?, batch, latent_dim)
        # As VAE.decode: decoder outputs -> (*batch, *event_shape, num_params) -> p(x | z).
        lead = z.shape[:-1]
        out = self.decoder(z)
        if self.num_outputs == 1:  # the same layout without moving a dimension of size 1
            params = out.reshape(*lead, *self.event_shape, 1)
        else:
            params = out.reshape(*lead, self.num_outputs, *self.event_shape)
            params = params.movedim(len(lead), -1)
        # p(x | z) summed over the event as Independent.log_prob does, without building it
        log_px = self.likelihood.forward(params).log_prob(x)
        log_px = log_px.reshape(*log_px.shape[: log_px.dim() - self.event_dims], -1).sum(-1)
        pz = self.prior.forward()
        latent = None
        if self.analytic_kl:
            try:
                latent = -kl_divergence(qz, pz.expand(batch))  # (batch,)
            except NotImplementedError:
                latent = None
        if latent is None:
            latent = pz.log_prob(z) - qz.log_prob(z)  # (K?, batch)
        # (dividing by 1 and multiplying by 1.0 change no bit, so they are skipped)
        recon = log_px.sum()
        latent_sum = latent.sum()
        if k > 1:
            recon = recon / k
            if latent.dim() > len(batch):
                latent_sum = latent_sum / k
        unit = isinstance(kl_weight, int | float) and kl_weight == 1
        weighted = latent_sum if unit else kl_weight * latent_sum
        loss = -(recon + weighted)
        return loss, (recon + latent_sum).detach()


def fused_elbo_loss(
    vae: VAE,
    x: torch.Tensor,
    kl_weight: float = 1.0,
    analytic_kl: bool = False,
    num_particles: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Negative (KL-weighted) ELBO summed over the batch, and the true ELBO, without tracing.

    x: (batch, *event_shape). With z_k ~ q(z | x) reparameterized, k = 1..K (the same draws,
    from the same generator calls, as Pyro's vectorized particles):

        loss = -(1/K) sum_k sum_n [log p(x_n | z_kn) + w (log p(z_kn) - log q(z_kn | x_n))]

    With ``analytic_kl`` the bracket's second term is -w KL(q(z | x_n) || p(z)) where
    ``kl_divergence`` has a closed form (diagonal normal posterior and a normal prior), else the
    Monte Carlo term above, exactly as ``TraceMeanField_ELBO`` chooses. Returns
    ``(loss, elbo)``: ``loss`` a differentiable scalar, ``elbo`` the same estimate with w = 1,
    detached (a 0-dim tensor, so no device sync is forced; Kingma & Welling 2014, eq. 3 and 7).
    A training loop builds [`FusedELBO`][pyro_vae.models.fused.FusedELBO] once instead.
    """
    return FusedELBO(vae, analytic_kl, num_particles)(x, kl_weight)


class FusedLogWeights:
    """Importance log weights of the library's own VAE computed from its parts, no tracing.

    ``FusedLogWeights(vae)(x, k)`` -> (k, batch): log w_kn = log p(z_kn) + log p(x_n | z_kn)
    - log q(z_kn | x_n) with z_kn ~ q(z | x_n): the random draws (the same generator call)
    and the values of ``pyro_vae.infer.trace.log_weights(vae.model, vae.guide, x, k)``, up to float
    rounding where Bernoulli pixels are scored in closed form
    ([`bernoulli_log_prob`][pyro_vae.models.mlp_bernoulli.bernoulli_log_prob]). The encoder runs
    once, the k samples go through the decoder as one batch (under a plain MLP decoder and
    ``torch.no_grad``, in cache-sized
    tiles: [`pyro_vae.models.mlp_bernoulli.MLPBernoulliLogProb`][]), and each density is evaluated
    once. Pass it as ``log_likelihood(..., log_weights_fn=...)``; the general traced path stays for
    every model that [`fused_unsupported`][pyro_vae.models.fused.fused_unsupported] refuses.
    """

    def __init__(self, vae: VAE):
        reason = fused_unsupported(vae)
        if reason is not None:
            raise ConfigError(
                f"the fused log weights do not apply: {reason}; use the traced estimator"
            )
        self.vae = vae
        self.event_shape = vae.event_shape
        self.num_outputs = vae.likelihood.num_params
        #: Bernoulli pixels: the log-density in closed form
        #: ([`bernoulli_log_prob`][pyro_vae.models.mlp_bernoulli.bernoulli_log_prob])
        self.bernoulli = type(vae.likelihood) is Bernoulli and self.num_outputs == 1
        self.tiled = MLPBernoulliLogProb.of(vae.decoder) if self.bernoulli else None

    def __call__(self, x: torch.Tensor, num_particles: int) -> torch.Tensor:
        """(num_particles, batch) log weights of x: (batch, *event_shape)."""
        with without_validation():
            return self._log_weights(x, num_particles)

    def _log_weights(self, x: torch.Tensor, k: int) -> torch.Tensor:
        vae = self.vae
        qz = vae.posterior.forward(vae.encoder(x))
        pz = vae.prior.forward()
        # a plain MLP decoder without autograd: in cache-sized tiles (checked at each call,
        # so a hook registered since is seen)
        tiled = self.tiled
        if tiled is not None and not torch.is_grad_enabled() and tiled.usable():
            draws = NormalDraws.of(pz, qz, k)
            if draws is not None:  # z and the latent terms made tile by tile, in cache
                return tiled(draws, x.flatten(1)) + draws.latent
            z, latent = _latent_terms(pz, qz, k)  # (k, batch, latent_dim), (k, batch)
            return tiled(z, x.flatten(1)) + latent
        z, latent = _latent_terms(pz, qz, k)
        if self.bernoulli:
            out = vae.decoder(z)
            log_px = bernoulli_log_prob(out.reshape(*z.shape[:-1], -1), x.flatten(1))
        else:
            out = vae.decoder(z)
            params = out.reshape(*z.shape[:-1], self.num_outputs, *self.event_shape)
            px = vae.likelihood.forward(params.movedim(2, -1)).to_event(len(self.event_shape))
            log_px = px.log_prob(x)
        return log_px + latent


def _diagonal_normal(d: Distribution) -> Normal | None:
    """The Normal of ``d = Independent(Normal(loc, scale), 1)``, else ``None``."""
    if type(d) in (Independent, dist.Independent) and d.reinterpreted_batch_ndims == 1:
        base = d.base_dist
        if type(base) in (Normal, dist.Normal):
            return base
    return None


def _latent_terms(pz: Distribution, qz: Distribution, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` draws z ~ q(z | x) and log p(z) - log q(z | x): (k, batch, latent_dim), (k, batch).

    The draws are ``qz.rsample((k,))``'s. Where both are diagonal normals, z = mu + sigma
    eps with eps ~ N(0, I) drawn as ``rsample`` draws it, and with u = (z - m) / s,

        log p(z) - log q(z | x) = sum_j (eps_j^2 - u_j^2) / 2 + log sigma_j - log s_j,

    a few passes over the draws instead of about twenty (the same value up to rounding).
    """
    q, p = _diagonal_normal(qz), _diagonal_normal(pz)
    if q is None or p is None:
        z = qz.rsample(torch.Size((k,)))
        # the traced path's order: the model's site, then the guide's
        return z, pz.log_prob(z) - qz.log_prob(z)
    eps = _normal_draws(q, k)
    z = eps * q.scale + q.loc  # as Normal.rsample
    u = (z - p.loc) / p.scale
    square_gap = torch.linalg.vecdot(eps, eps) - torch.linalg.vecdot(u, u)
    return z, 0.5 * square_gap + _log_scale_ratio(q, p)


def _log_scale_ratio(q: Normal, p: Normal) -> torch.Tensor:
    """sum_j log sigma_j - log s_j, the posterior's scales over the prior's: (batch,)."""
    return q.scale.log().sum(-1) - p.scale.log().sum(-1)


def _normal_draws(q: Normal, k: int) -> torch.Tensor:
    """eps ~ N(0, I): (k, *batch_shape), from the same generator call as ``q.rsample((k,))``."""
    return torch.empty((k, *q.batch_shape), dtype=q.loc.dtype, device=q.loc.device).normal_()


class NormalDraws:
    """The z ~ q(z | x) of ``k`` particles of a diagonal normal posterior and prior, made a
    block at a time where the decoder's tiles read them
    ([`Latents`][pyro_vae.models.mlp_bernoulli.Latents]), with their latent terms.

    eps: (k, batch, latent_dim) ~ N(0, I) is drawn whole at the start, as ``qz.rsample((k,))``
    draws it (so an estimate does not depend on the tiling or the thread count). Each block
    written is z = mu + sigma eps, and ``latent`` (k, batch) gets its
    log p(z) - log q(z | x) as ``_latent_terms`` computes it, while the block is in cache.
    """

    def __init__(self, q: Normal, p: Normal, k: int):
        self.loc, self.scale, self.prior = q.loc, q.scale, p
        self.eps = _normal_draws(q, k)
        self.shape, self.dtype, self.device = self.eps.shape, self.eps.dtype, self.eps.device
        #: log sigma - log s summed over the latent dimensions: (batch,)
        self.log_ratio = _log_scale_ratio(q, p)
        #: log p(z) - log q(z | x) of the blocks written so far: (k, batch)
        self.latent = torch.empty(self.eps.shape[:-1], dtype=self.dtype, device=self.device)

    @classmethod
    def of(cls, pz: Distribution, qz: Distribution, k: int) -> NormalDraws | None:
        """The draws where both distributions are diagonal normals, else ``None``."""
        q, p = _diagonal_normal(qz), _diagonal_normal(pz)
        return None if q is None or p is None else cls(q, p, k)

    def write(self, particles: slice, points: slice, into: torch.Tensor) -> None:
        """z of the block into ``into`` (p, s, latent_dim), its latent terms into ``latent``:
        ``_latent_terms``' arithmetic, in place (a shared out-of-place helper measured 4% slower
        on the whole scoring call, benchmarks/RESULTS.md)."""
        eps = self.eps[particles, points]
        torch.mul(eps, self.scale[points], out=into)
        into += self.loc[points]
        u = into - self.prior.loc
        u /= self.prior.scale
        square_gap = torch.linalg.vecdot(eps, eps)
        square_gap -= torch.linalg.vecdot(u, u)
        torch.add(self.log_ratio[points], square_gap, alpha=0.5,
                  out=self.latent[particles, points])  # fmt: skip

    def rows(self, index: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """z at the (particle, point) index tensors ``index``: (n, latent_dim)."""
        points = index[1]
        return self.eps[index] * self.scale[points] + self.loc[points]


def fused_log_weights(vae: object) -> FusedLogWeights | None:
    """[`FusedLogWeights`][pyro_vae.models.fused.FusedLogWeights] of ``vae`` where
    [`fused_unsupported`][pyro_vae.models.fused.fused_unsupported] allows it, else ``None`` (the
    estimator then traces the model and guide)."""
    return FusedLogWeights(vae) if fused_unsupported(vae) is None else None


def fused_route(
    model: object,
    guide: object,
    data: tuple,
    kwargs: dict,
    data_plate: str = "data",
    strategy: str = "auto",
) -> Callable[..., torch.Tensor] | str:
    """The ``"fused"`` route of [`log_likelihood`][pyro_vae.infer.importance.log_likelihood]: for a
    [`VAE`][pyro_vae.models.vae.VAE]'s own ``model`` and ``guide`` (the bound methods themselves,
    not wrapped in a handler) on its data alone, the
    [`FusedLogWeights`][pyro_vae.models.fused.FusedLogWeights] of the VAE; else why not."""
    vae = getattr(model, "__self__", None)
    own = (
        getattr(model, "__func__", None) is VAE.model
        and getattr(guide, "__self__", None) is vae
        and getattr(guide, "__func__", None) is VAE.guide
    )
    if not own:
        return "the programs are not one pyro_vae VAE's own model and guide"
    reason = fused_unsupported(vae)
    if reason is not None:
        return reason
    if len(data) != 1 or kwargs:
        return "the programs are given arguments beyond the data"
    if data_plate != "data":
        return f"the data plate is {data_plate!r}, not the VAE's 'data'"
    if strategy not in ("auto", "vectorized"):
        return f"strategy {strategy!r} was asked for"
    return FusedLogWeights(vae)
