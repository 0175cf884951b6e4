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
from pyro import poutine
from pyro.distributions import MaskedDistribution
from pyro.distributions.torch_distribution import ExpandedDistribution
from torch.distributions import Distribution, Independent

from pyro_vae.errors import ConfigError
from pyro_vae.infer.importance import log_likelihood
from pyro_vae.infer.trace import (
    batch_size_of,
    check_program,
    chunk_sizes,
    kept_random_state,
    log_weights,
    probe_data,
    slice_data,
    stderr,
    trace_pair,
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


Family = Callable[[torch.Tensor], Distribution]
#: A posterior family per latent site (or one, for a guide with one latent site).
Families = Family | dict[str, Family]
#: Initial local parameters per latent site: callable(*data) -> (batch, num_params).
InitParams = Callable[..., torch.Tensor] | dict[str, Callable[..., torch.Tensor]]


def local_guide(
    families: dict[str, Callable[[torch.Tensor], Distribution]],
    params: dict[str, torch.Tensor],
    data_plate: str = "data",
    plate_dim: int = -1,
    masks: dict[str, torch.Tensor | None] | None = None,
) -> Callable[..., None]:
    """A guide with free per-example parameters: z_{s,n} ~ families[s](params[s]_n) for each
    latent site s, in the data plate (at ``plate_dim``), independently across sites.

    params: site -> (batch, num_params_s); the guide must be called on data with the same
    batch, or that batch replicated (its first positional tensor; further arguments are
    accepted and ignored).
    masks: site -> the mask the amortized guide puts on that site for this batch (broadcast to
    (batch,); ``None``: unmasked), so a masked-out element (a ragged sequence's padding) is left out
    of log q as the amortized guide leaves it out
    ([`guide_masks`][pyro_vae.infer.gaps.guide_masks]).
    """
    masks = masks or {}

    def guide(x: torch.Tensor, *args, **kwargs) -> None:
        with pyro.plate(data_plate, x.shape[0], dim=plate_dim):
            for site, family in families.items():
                fn = family(_tiled(params[site], x.shape[0]))
                if masks.get(site) is not None:
                    fn = fn.mask(_tiled(masks[site], x.shape[0]))
                pyro.sample(site, fn)

    return guide


def _tiled(t, rows: int):
    """``t`` (batch, ...) tiled along dim 0 to ``rows`` = copies * batch rows, as the data are
    for replicated particles ([`replicate_data`][pyro_vae.infer.trace.replicate_data]); else
    unchanged."""
    if not isinstance(t, torch.Tensor) or t.dim() == 0 or t.shape[0] in (1, rows):
        return t
    return t.repeat(rows // t.shape[0], *([1] * (t.dim() - 1)))


def site_mask(name: str, site: dict) -> torch.Tensor | None:
    """The mask of a traced sample site over its batch shape, or None: the handler's mask
    (``poutine.mask``) and every ``.mask(m)`` inside its distribution, combined.

    A ``.mask`` applied inside ``.to_event`` must be constant over the event dimensions (the
    whole draw kept or dropped); one that drops part of an event is refused, since a local
    posterior family has no way to drop part of its draw.
    """
    masks = [] if site["mask"] is None else [torch.as_tensor(site["mask"])]
    fn, inner = site["fn"], 0
    while isinstance(fn, Independent | ExpandedDistribution | MaskedDistribution):
        if isinstance(fn, Independent):
            inner += fn.reinterpreted_batch_ndims
        if isinstance(fn, MaskedDistribution):
            m = torch.as_tensor(fn._mask).expand(fn.batch_shape)
            if inner:
                dims = tuple(range(m.dim() - inner, m.dim()))
                if not torch.equal(m.all(dims), m.any(dims)):
                    raise ConfigError(
                        f"guide site {name!r} masks part of its event (.mask inside "
                        ".to_event); the local posterior keeps or drops whole draws, so mask "
                        "whole data points (a mask of the batch shape)"
                    )
                m = m.all(dims)
            masks.append(m)
        fn = fn.base_dist
    if not masks:
        return None
    out = masks[0]
    for m in masks[1:]:
        out = out & m
    return out


def guide_masks(guide: Callable, latent: list[str], data: tuple, **kwargs) -> dict:
    """site -> the mask ``guide`` puts on each latent site on ``data`` (one batch), or None
    ([`site_mask`][pyro_vae.infer.gaps.site_mask]). One traced pass, hidden from enclosing handlers;
    the random state is left as it was.
    """
    with kept_random_state(), poutine.block():
        trace = poutine.trace(guide).get_trace(*data, **kwargs)
    return {s: site_mask(s, trace.nodes[s]) for s in latent}


def optimize_local(
    model: Callable,
    families: dict[str, Callable[[torch.Tensor], Distribution]],
    data: tuple,
    init_params: dict[str, torch.Tensor],
    num_steps: int = 500,
    num_particles: int = 16,
    lr: float = 1e-2,
    *,
    data_plate: str = "data",
    plate_dim: int = -1,
    masks: dict[str, torch.Tensor | None] | None = None,
    particle_dim: int | None = None,
    strategy: str = "vectorized",
    **kwargs,
) -> dict[str, torch.Tensor]:
    """Per-example posterior parameters maximizing the ELBO, by Adam from ``init_params``.

    data: tensors each (batch, ...), the model's positional inputs (``kwargs`` unchanged);
    init_params: site -> (batch, num_params_s) -> the optimized parameters, same shapes. Maximizes
    sum_n E_{q(z; params_n)}[log p(x_n, z) - log q(z; params_n)] with reparameterized gradients
    (``num_particles`` samples per step, learning rate decayed linearly to lr/10); the examples do
    not interact, so one optimizer over the (batch, num_params) tensors optimizes each
    independently. ``masks``: the amortized guide's masks per site
    ([`local_guide`][pyro_vae.infer.gaps.local_guide]); ``strategy``: how particles are drawn (as
    chosen for the amortized guide by [`log_likelihood`][pyro_vae.infer.importance.log_likelihood]).
    """
    params = {s: p.detach().clone().requires_grad_() for s, p in init_params.items()}
    opt = torch.optim.Adam(list(params.values()), lr=lr)
    # decay the step linearly to lr/10, so the noisy gradient settles at the optimum
    sched = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.1, total_iters=num_steps)
    guide = local_guide(families, params, data_plate, plate_dim, masks)
    for _ in range(num_steps):
        lw = log_weights(
            model, guide, data[0], num_particles, *data[1:], particle_dim=particle_dim,
            data_plate=data_plate, strategy=strategy, **kwargs,
        )  # fmt: skip
        loss = -lw.mean(0).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return {s: p.detach() for s, p in params.items()}


def _legacy_positional(data: tuple, family, init_params) -> tuple[tuple, object, object]:
    """Accept the old call inference_gaps(model, guide, x, family, init_params)."""
    if family is None and init_params is None and len(data) >= 3:
        if callable(data[-2]) and callable(data[-1]) and not isinstance(data[-1], torch.Tensor):
            return data[:-2], data[-2], data[-1]
    return data, family, init_params


def _per_site(value, latent: list[str], what: str) -> dict:
    """A per-site dict from ``value`` (a dict, or one callable for a single latent site)."""
    if isinstance(value, dict):
        missing = [s for s in latent if s not in value]
        extra = [s for s in value if s not in latent]
        if missing or extra:
            raise ConfigError(
                f"{what} must name exactly the guide's latent sites {latent} (missing "
                f"{missing}, unknown {extra})"
            )
        return {s: value[s] for s in latent}
    if value is None or len(latent) != 1:
        raise ConfigError(
            f"inference gaps need one {what} per latent site; the guide has latent sites "
            f"{latent}, so pass {what}={{site: ...}} for each"
        )
    return {latent[0]: value}


def _local_layout(model, guide, data, data_plate, kwargs) -> tuple[list[str], int, int]:
    """(latent sites in the guide's order, the data plate's dim, the particle dim); refuses
    latent sites in plates besides the data plate, latent sites in the data plate at different
    dims (the local guide has one), and enumerated sites (no local family)."""
    info = check_program(
        model, guide, *probe_data(model, data), data_plate=data_plate, restore_rng=True, **kwargs
    )
    if info.enumerated:
        raise ConfigError(
            f"inference gaps optimize a continuous local posterior per data point, but sites "
            f"{list(info.enumerated)} are enumerated; score such a model with log_likelihood"
        )
    with kept_random_state(), poutine.block():
        guide_trace, _ = trace_pair(model, guide, *probe_data(model, data), **kwargs)
    dims: dict[int, str] = {}  # the data plate's dim -> the first latent site there
    for site in info.latent:
        frames = [f for f in guide_trace.nodes[site]["cond_indep_stack"] if f.vectorized]
        others = [f.name for f in frames if f.name != data_plate]
        if others:
            raise ConfigError(
                f"latent site {site!r} is inside plate {others[0]!r} as well as "
                f"{data_plate!r}; the local posterior is per data point only, so move that "
                "plate into the site's event shape (.to_event)"
            )
        for f in frames:
            dims.setdefault(f.dim, site)
    if len(dims) > 1:
        (d1, s1), (d2, s2) = list(dims.items())[:2]
        raise ConfigError(
            f"latent sites {s1!r} and {s2!r} sit in plate {data_plate!r} at dims {d1} and {d2}; "
            "the local posterior draws every latent site in the data plate at one dim, so give "
            f"plate {data_plate!r} the same dim at every latent site"
        )
    return info.latent, next(iter(dims), -1), info.particle_dim


def inference_gaps(
    model: Callable,
    guide: Callable,
    *data,
    family: Families | None = None,
    init_params: InitParams | None = None,
    num_samples: int = 1000,
    elbo_samples: int = 1000,
    num_steps: int = 500,
    num_particles: int = 16,
    lr: float = 1e-2,
    batch_size: int = 100,
    ais_per_example: torch.Tensor | None = None,
    data_plate: str = "data",
    **kwargs,
) -> InferenceGaps:
    """Approximation and amortization gaps per data point for any model/guide pair.

    data: tensors each (N, ...), sliced together along dim 0 and passed positionally to model and
    guide (``kwargs`` unchanged), as for
    [`log_likelihood`][pyro_vae.infer.importance.log_likelihood]. ``family`` is the guide's
    posterior family per latent site (site -> params (batch, num_params) -> distribution; one
    callable for a guide with one latent site) and ``init_params`` the starting parameters per site
    (site -> callable(*data) -> (batch, num_params)), normally the encoder's output (the amortized
    solution). The local guide draws each latent site from its own family with free per-example
    parameters, independently across sites. ELBOs are estimated with ``elbo_samples`` samples per
    point; log p(x) by importance sampling with ``num_samples`` samples from the proposal of higher
    ELBO (the smaller KL to p(z | x)), or ``ais_per_example`` where that is higher. For a VAE:
    ``vae_inference_gaps``. Refused: a site without a family, enumerated sites, latent sites in
    plates besides the data plate, latent sites in the data plate at different dims. Masks the
    guide puts on its sites (``.mask(m)``) are carried into the local guide; a handler's scale
    factor is left out, as in [`log_likelihood`][pyro_vae.infer.importance.log_likelihood].
    """
    data, family, init_params = _legacy_positional(data, family, init_params)
    n = batch_size_of(data)
    latent, plate_dim, pdim = _local_layout(model, guide, data, data_plate, kwargs)
    families = _per_site(family, latent, "family")
    inits = _per_site(init_params, latent, "init_params")
    amortized = log_likelihood(
        model, guide, *data, num_samples=max(num_samples, elbo_samples), data_plate=data_plate,
        **kwargs,
    )  # fmt: skip
    log_px, elbo_local = [], []
    for start in range(0, n, batch_size):
        batch = slice_data(data, start, start + batch_size)
        with torch.no_grad():
            init = {s: f(*batch) for s, f in inits.items()}
        masks = guide_masks(guide, latent, batch, **kwargs)
        params = optimize_local(
            model, families, batch, init, num_steps, num_particles, lr,
            data_plate=data_plate, plate_dim=plate_dim, masks=masks, particle_dim=pdim,
            strategy=amortized.strategy, **kwargs,
        )  # fmt: skip
        with torch.no_grad():
            guide_n = local_guide(families, params, data_plate, plate_dim, masks)
            lw = torch.cat([
                log_weights(
                    model, guide_n, batch[0], k, *batch[1:], particle_dim=pdim,
                    data_plate=data_plate, strategy=amortized.strategy, **kwargs,
                )
                for k in chunk_sizes(max(num_samples, elbo_samples), 256)
            ])  # fmt: skip
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
    """[`inference_gaps`][pyro_vae.infer.gaps.inference_gaps] for a VAE: family
    ``vae.posterior``, start at ``vae.encoder(x)``."""
    return inference_gaps(
        vae.model, vae.guide, data, family=vae.posterior, init_params=vae.encoder, **kwargs
    )
