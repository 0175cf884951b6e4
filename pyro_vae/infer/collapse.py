"""Posterior-collapse diagnostics: KL per latent dimension, active units, I(x; z) under q.

Works on any model/guide pair that follows the contract (every sample site inside
``pyro.plate(data_plate, N, dim=-1)``, particles on the left). Roles come from the traces: the
latent sites are the guide's sample sites the model does not observe, and a site is discrete
when its distribution's support is. Each continuous latent site is one layer (``z`` of a VAE;
``z1``, ``z2``, ... of a hierarchical one), and each element of its value (event dimensions,
and plates other than the data plate) is one latent unit. Discrete sites (a sampled or
enumerated label) are skipped and listed with the reason; a program with no continuous latent
site is refused.

Three figures per unit or layer, all in nats where they are information:

- KL per dimension, KL_d = E_x E_q[log q_d(z_d | ...) - log p_d(z_d | parents)];
- active units (Burda, Grosse & Salakhutdinov 2016, "Importance Weighted Autoencoders",
  sec. 5.2): unit u is active when A_u = Cov_x(E_{q(z|x)}[z_u]) > threshold (0.01);
- the mutual information I(x; z) between the data and all continuous latents jointly, under
  the encoder's joint q(x, z) = p_data(x) q(z | x) (Hoffman & Johnson 2016, "ELBO surgery";
  the estimator of He, Spokoyny, Neubig & Berg-Kirkpatrick 2019, "Lagging Inference Networks
  and Posterior Collapse in Variational Autoencoders", sec. 4).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyro.infer
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import ExpandedDistribution
from torch.distributions import Distribution, Independent, kl_divergence

from pyro_vae.errors import DataError
from pyro_vae.infer.trace import (
    DEFAULT_PARTICLE_BUDGET,
    PROGRAM_ERRORS,
    batch_size_of,
    check_program,
    choose_strategy,
    compute_log_density,
    data_plate_frame,
    enumerated_log_weight,
    is_point_mass,
    kept_random_state,
    probe_data,
    replicate_data,
    slice_data,
    stderr,
    trace_pair,
)
from pyro_vae.validation import check_finite_config, check_positive_int, check_tensor

__all__ = ["MI_POINTS", "LatentUsage", "SiteUsage", "latent_usage"]

#: Most data points M in the aggregate posterior of the mutual-information estimate: the
#: pairwise pass costs M^2 guide densities, and the estimate can never exceed log M.
MI_POINTS = 1000
#: Advice printed with a collapse warning: the library's two remedies, as command-line flags.
COLLAPSE_ADVICE = (
    "try KL warm-up (--warmup linear --warmup-epochs 50) or free bits (--free-bits 0.5)"
)


@dataclass
class SiteUsage:
    """One continuous latent site (a layer): KL and activity of each of its ``U`` units.

    Attributes:
        kl_per_dim: (U,) data-average KL per unit, nats; ``None`` when q or p does not
            factorize over the units (full-rank normal, flow, mixture prior): see ``reason``.
            Where the guide draws a model parent after the site (z1 of a bottom-up guide),
            E_q[log q_u - log p_u] is the site's share of the ELBO's KL(q(z | x) || p(z))
            and can be negative; the sum over sites is the KL and is not.
        kl: the site's total KL per data point, nats (the sum of ``kl_per_dim`` when given).
        kl_stderr: standard error of ``kl`` over data points.
        mean_variance: (U,) Cov_x(E_q[z_u | x]), the variance over data points of each unit's
            posterior mean.
        active: (U,) bool, ``mean_variance > threshold``.
        reason: why ``kl_per_dim`` is ``None`` (else ``None``).
        kl_method: ``"analytic"`` (torch's closed form per particle), ``"monte carlo"``
            (log q - log p at the guide's samples) or ``"undefined"`` (a point mass).
        mean_method: ``"mean"`` (the guide distribution's ``.mean``, averaged over particles)
            or ``"samples"`` (the samples averaged: ``.mean`` is not available).
    """

    kl_per_dim: torch.Tensor | None
    kl: float
    mean_variance: torch.Tensor
    active: torch.Tensor
    reason: str | None = None
    kl_stderr: float = float("nan")
    kl_method: str = "analytic"
    mean_method: str = "mean"

    @property
    def active_units(self) -> int:
        """Number of active units of this site."""
        return int(self.active.sum())

    @property
    def num_units(self) -> int:
        """Number of units U of this site."""
        return int(self.active.numel())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures of this site (non-finite numbers as ``None``)."""
        return {
            "kl": _json_float(self.kl),
            "kl_stderr": _json_float(self.kl_stderr),
            "kl_per_dim": None if self.kl_per_dim is None else _json_list(self.kl_per_dim),
            "mean_variance": _json_list(self.mean_variance),
            "active": [bool(a) for a in self.active.tolist()],
            "active_units": self.active_units,
            "num_units": self.num_units,
            "reason": self.reason,
            "kl_method": self.kl_method,
            "mean_method": self.mean_method,
        }


@dataclass
class LatentUsage:
    """What the latents of a model/guide pair carry: per-site
    [`SiteUsage`][pyro_vae.infer.collapse.SiteUsage], I(x; z).

    Attributes:
        sites: continuous latent site name -> [`SiteUsage`][pyro_vae.infer.collapse.SiteUsage], in
            the guide's order.
        mutual_information: I(x; z) under q for all continuous sites jointly, nats; ``nan``
            when it cannot be estimated (see ``mi_reason``).
        num_points: N, the data points the KL and active units are averaged over.
        skipped: latent site name -> why it is not reported (discrete sites).
        threshold: the active-unit threshold on Cov_x(E_q[z_u | x]).
        num_samples: K, guide particles per data point.
        mi_points: M, the data points of the aggregate posterior in the I(x; z) estimate.
        mi_reason: why ``mutual_information`` is ``nan`` (else ``None``).
    """

    sites: dict[str, SiteUsage]
    mutual_information: float
    num_points: int
    skipped: dict[str, str] = field(default_factory=dict)
    threshold: float = 0.01
    num_samples: int = 64
    mi_points: int = 0
    mi_reason: str | None = None

    @property
    def active_units(self) -> int:
        """Active units over all sites."""
        return sum(s.active_units for s in self.sites.values())

    @property
    def num_units(self) -> int:
        """Units over all sites."""
        return sum(s.num_units for s in self.sites.values())

    @property
    def kl(self) -> float:
        """Total KL per data point over all sites, nats."""
        return sum(s.kl for s in self.sites.values())

    @property
    def collapsed(self) -> bool:
        """Whether more than half of all units are inactive."""
        return 2 * (self.num_units - self.active_units) > self.num_units

    def warning(self) -> str | None:
        """One line naming the collapse and the remedies when
        [`collapsed`][pyro_vae.infer.collapse.LatentUsage.collapsed], else ``None``."""
        if not self.collapsed:
            return None
        per_site = ", ".join(
            f"{n}: {s.active_units}/{s.num_units}" for n, s in self.sites.items()
        )
        return (
            f"posterior collapse: {self.active_units} of {self.num_units} latent units active "
            f"({per_site}); the decoder ignores the inactive ones; {COLLAPSE_ADVICE}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: totals, then per site
        ([`SiteUsage.to_dict`][pyro_vae.infer.collapse.SiteUsage.to_dict])."""
        return {
            "num_points": self.num_points,
            "num_samples": self.num_samples,
            "threshold": self.threshold,
            "active_units": self.active_units,
            "num_units": self.num_units,
            "collapsed": self.collapsed,
            "kl": _json_float(self.kl),
            "mutual_information": _json_float(self.mutual_information),
            "mi_points": self.mi_points,
            "mi_reason": self.mi_reason,
            "sites": {n: s.to_dict() for n, s in self.sites.items()},
            "skipped": dict(self.skipped),
        }

    def to_json(self) -> str:
        """[`to_dict`][pyro_vae.infer.collapse.LatentUsage.to_dict] as a JSON string."""
        return json.dumps(self.to_dict(), indent=2)

    def __str__(self) -> str:
        lines = [
            f"latent usage over {self.num_points} points (K={self.num_samples}): "
            f"{self.active_units} of {self.num_units} units active "
            f"(Cov_x E_q[z] > {self.threshold:g}), KL {self.kl:.3f} nats, "
            f"I(x; z) {self.mutual_information:.3f} nats (M={self.mi_points})",
            f"  {'site':<12} {'active':>9} {'KL (nats)':>10}  KL per dim",
        ]
        for name, s in self.sites.items():
            if s.kl_per_dim is None:
                per_dim = f"- ({s.reason})"
            else:
                shown = ", ".join(f"{v:.2f}" for v in s.kl_per_dim[:8].tolist())
                per_dim = shown + (", ..." if s.num_units > 8 else "")
            active = f"{s.active_units}/{s.num_units}"
            lines.append(f"  {name:<12} {active:>9} {s.kl:>10.3f}  {per_dim}")
            if s.mean_method == "samples":
                lines.append(
                    f"  {'':<12} E_q[z | x] from samples (no .mean): Cov_x includes "
                    f"Var_q(z_u) / {self.num_samples} of noise"
                )
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped.items()]
        if self.mi_reason is not None:
            lines.append(f"  I(x; z) not estimated: {self.mi_reason}")
        return "\n".join(lines)


def _json_float(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def _json_list(t: torch.Tensor) -> list[float | None]:
    return [_json_float(v) for v in t.double().tolist()]


def _no_model(*args, **kwargs) -> None:
    """A model without sites: replayed on a guide trace, it makes ``trace_pair`` trace the
    guide alone (only the guide's densities are needed, and decoding every pair is not)."""


def _is_discrete(fn: Distribution) -> bool:
    try:
        return bool(getattr(fn.support, "is_discrete", False))
    except NotImplementedError:
        return bool(getattr(fn, "has_enumerate_support", False))


def _unwrapped(d: Distribution) -> Distribution:
    """``d`` without its ``Independent`` and expansion wrappers (batch and event shapes of the
    result broadcast against ``d``'s)."""
    while isinstance(d, Independent | ExpandedDistribution):
        d = d.base_dist
    return d


def _elementwise(d: Distribution) -> Distribution | None:
    """The scalar factor distribution of ``d`` (every event dimension independent), or None."""
    base = _unwrapped(d)
    return base if base.event_shape == torch.Size() else None


def _data_dim(site: dict, data_plate: str) -> int:
    return data_plate_frame(site["name"], site, data_plate, "latent usage needs").dim


def _units(
    t: torch.Tensor, batch_ndim: int, particle_dim: int, data_dim: int, name: str
) -> torch.Tensor:
    """(*batch, *rest) -> (particles, data points, units): rest and other plates flattened.

    ``particle_dim`` and ``data_dim`` count from the right of the ``batch_ndim`` batch dims.
    """
    p_axis, d_axis = batch_ndim + particle_dim, batch_ndim + data_dim
    if p_axis != 0:
        raise DataError(
            f"site {name!r} has batch dimensions {tuple(t.shape[:batch_ndim])} left of the "
            "particles; declare batch dimensions with pyro.plate or .to_event()"
        )
    t = t.movedim((p_axis, d_axis), (0, 1))
    return t.reshape(t.shape[0], t.shape[1], -1)


class _Moments:
    """Running per-unit mean and variance over data points (Chan et al. parallel update)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> None:
        """Fold x: (n, U) into the running moments."""
        x = x.detach().double()
        n, mean = x.shape[0], x.mean(0)
        m2 = ((x - mean) ** 2).sum(0)
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + m2 + delta**2 * self.count * n / total
        self.count = total

    def variance(self) -> torch.Tensor:
        """(U,) variance over the points seen (divided by their number)."""
        assert self.m2 is not None
        return self.m2 / self.count


class _SiteAccumulator:
    """Per-site sums over batches: KL per unit, per-point KL, posterior-mean moments."""

    def __init__(self) -> None:
        self.kl_sum: torch.Tensor | None = None
        self.per_point: list[torch.Tensor] = []
        self.means = _Moments()
        self.reason: str | None = None
        self.kl_method = "analytic"
        self.mean_method = "mean"


def _posterior_mean(fn: Distribution, z: torch.Tensor) -> tuple[torch.Tensor, str]:
    """E_q[z | ...] at each particle, as z's shape; the sample itself where ``.mean`` fails."""
    try:
        mean = fn.mean
    except (NotImplementedError, AttributeError, RuntimeError):
        return z, "samples"
    if not bool(torch.isfinite(mean).all()):
        return z, "samples"
    return torch.broadcast_to(mean, z.shape), "mean"


def _site_kl(
    q: Distribution,
    p: Distribution,
    z: torch.Tensor,
    closed_form_ok: bool,
    acc: _SiteAccumulator,
) -> torch.Tensor:
    """KL terms of one site at one traced batch: (*batch, *event) per unit where q and p
    factorize, else (*batch) for the whole site; records the method and reason on ``acc``."""
    qb, pb = _elementwise(q), _elementwise(p)
    batch_shape = z.shape[: z.dim() - q.event_dim]
    if is_point_mass(q):
        acc.kl_method, acc.reason = "undefined", "q is a point mass: KL to a density is infinite"
        return torch.full(batch_shape, math.inf, dtype=z.dtype)
    if qb is None or pb is None or q.event_shape != p.event_shape:
        which = type(_unwrapped(q if qb is None else p)).__name__
        side = "q" if qb is None else "p"
        acc.reason = f"{side} is {which}, which does not factorize over dimensions"
        if closed_form_ok:
            try:
                return kl_divergence(q, p).expand(batch_shape)
            except NotImplementedError:
                pass
        acc.kl_method = "monte carlo"
        return (q.log_prob(z) - p.log_prob(z)).expand(batch_shape)
    if closed_form_ok:
        try:
            return kl_divergence(qb, pb).expand(z.shape)
        except NotImplementedError:
            pass
    acc.kl_method = "monte carlo"
    return qb.log_prob(z) - pb.log_prob(z)


def _closed_form_ok(name: str, guide_order: list[str], model_order: list[str]) -> bool:
    """Whether KL(q(z_s | guide's past) || p(z_s | model's past)) at the guide's sample is
    unbiased for E_q[log q - log p]: only when every latent site the model draws before s
    (its possible parents) is drawn before s by the guide too; otherwise a parent sampled
    after s depends on z_s, and the closed form would average over the wrong z_s."""
    model_before = set(model_order[: model_order.index(name)]) & set(guide_order)
    return model_before <= set(guide_order[: guide_order.index(name)])


def _refuse_model_only_parents(
    model: Callable,
    guide: Callable,
    probe: tuple,
    continuous: list[str],
    guide_latent: list[str],
    enumerated: tuple[str, ...],
    particle_dim: int,
    **kwargs,
) -> None:
    """Refuse a continuous site whose prior depends on a site the model sums out alone:
    without q(y | x) its KL (and its posterior's meaning) is not defined."""
    model_only = [n for n in enumerated if n not in guide_latent]
    if not model_only:
        return
    with kept_random_state(), poutine.block():
        _, model_trace = trace_pair(
            model, guide, *probe, particle_dim=particle_dim, enumerate_sites=True, **kwargs
        )
    for name in continuous:
        shape = model_trace.nodes[name]["fn"].batch_shape
        for parent in model_only:
            dim = model_trace.nodes[parent]["infer"].get("_enumerate_dim")
            if dim is not None and len(shape) >= -dim and shape[dim] > 1:
                raise DataError(
                    f"latent site {name!r} has a prior that depends on {parent!r}, which the "
                    f"model sums out and the guide does not sample, so q({parent} | x) and the "
                    f"KL of {name!r} are not defined; sample {parent!r} in the guide"
                )


@torch.no_grad()
def latent_usage(
    model: Callable,
    guide: Callable,
    *data,
    num_samples: int = 64,
    batch_size: int | None = None,
    threshold: float = 0.01,
    data_plate: str = "data",
    mi_points: int = MI_POINTS,
    **kwargs,
) -> LatentUsage:
    """KL per latent dimension, active units and I(x; z) of a model/guide pair.

    data: tensors each (N, ...), e.g. x: (N, *event_shape) then labels (N,), sliced together along
    dim 0 and passed positionally to model and guide, ``kwargs`` unchanged. K = ``num_samples``
    guide particles per point are drawn in a plate left of every plate, ``batch_size`` points per
    pass (default: K x batch at most ``DEFAULT_PARTICLE_BUDGET``). Per continuous latent site s with
    units u ([`SiteUsage`][pyro_vae.infer.collapse.SiteUsage], results in
    [`LatentUsage`][pyro_vae.infer.collapse.LatentUsage]):

        KL_u = (1 / N K) sum_n sum_k [log q_u(z_u^nk | ...) - log p_u(z_u^nk | parents^nk)]

    where q and p factorize over units (``Independent`` of scalar factors); each term is
    torch's closed form ``kl_divergence`` of the factor pair at the particle's parents where
    one is registered and is unbiased (every latent site the model draws before s is drawn
    before s by the guide too: a top-down guide for a top-down model), else the Monte Carlo
    difference at the sample (e.g. z1 of a bottom-up guide, whose model parent z2 is drawn
    from q(z2 | z1)). A site that does not factorize gets its total KL only (closed form
    where registered, else Monte Carlo) and the reason. Active units (Burda et al. 2016,
    sec. 5.2):

        A_u = Var_n( (1 / K) sum_k E_q[z_u | parents^nk] ) > threshold

    with E_q the guide distribution's ``.mean`` at the site (exact where the site has no
    sampled parents in the guide), the samples only where ``.mean`` is not available (a flow):
    their average adds Var_q(z_u) / K to A_u, so K must then be well above 1 / threshold.
    Mutual information between x and all continuous latents z jointly under q (He et al.
    2019, sec. 4), over M = min(N, ``mi_points``) points x_m (evenly spaced through the
    data), one z_n ~ q(z | x_n) each:

        I(x; z) ~ (1 / M) sum_n [log q(z_n | x_n) - logsumexp_m log q(z_n | x_m) + log M]

    where the aggregate posterior q(z) is the mixture of the M posteriors. Every pair (n, m)
    is scored by running the guide on the M points conditioned on z_n, placed on the particle
    dimension (z: (C, 1, D), the data plate broadcasts to (C, M)), C of them per pass, or,
    for a guide that cannot broadcast so (a flow conditioned on the data batch), with the M
    points tiled C times along the data plate; discrete guide sites with finite support are
    summed out exactly inside q(z | x_m). The estimate is biased by the finite M (it never
    exceeds log M, and falls short where I approaches it), so compare values at the same M;
    ``nan`` with ``mi_reason`` when the guide cannot be scored either way.

    Discrete latent sites are sampled from the guide (also those it marks for enumeration)
    and listed in ``skipped``. Refused (``DataError``, naming the site): no continuous latent
    site; a continuous site whose prior depends on a site the model sums out and the guide
    does not sample. Programs are checked against each other first (``check_program``).
    """
    check_positive_int(num_samples, "num_samples")
    check_positive_int(batch_size, "batch_size", allow_none=True)
    check_positive_int(mi_points, "mi_points")
    check_finite_config(threshold, "threshold", positive=False)
    if not data:
        raise DataError("no data given; call latent_usage(model, guide, x)")
    check_tensor(data[0], "data", getattr(getattr(model, "__self__", None), "event_shape", None))
    n = batch_size_of(data)
    probe = probe_data(model, data)
    info = check_program(
        model, guide, *probe, data_plate=data_plate, allow_point_mass=True, **kwargs
    )
    pdim = info.particle_dim
    choose_strategy(
        model, guide, *probe, particle_dim=pdim, data_plate=data_plate,
        candidates=("vectorized",),
        fix="latent usage needs particles on the left: write the programs so batch dimensions "
        "broadcast (no .view(-1, D) or masks built from the batch shape)",
        **kwargs,
    )  # fmt: skip
    with kept_random_state(), poutine.block():
        guide_trace, model_trace = trace_pair(
            model, guide, *probe, num_particles=1, particle_dim=pdim, **kwargs
        )
    guide_order = info.latent
    model_order = [
        nm for nm, s in model_trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]
    ]
    skipped: dict[str, str] = {}
    continuous: list[str] = []
    for name in guide_order:
        fn = guide_trace.nodes[name]["fn"]
        if _is_discrete(fn):
            how = ", sampled from the guide" if name in info.enumerated else ""
            skipped[name] = (
                f"discrete ({type(_unwrapped(fn)).__name__}{how}): KL per dimension, active "
                "units and I(x; z) are reported for continuous latents"
            )
        else:
            continuous.append(name)
    for name in info.enumerated:
        if name not in guide_order:
            skipped[name] = "discrete, summed out in the model; the guide does not sample it"
    if not continuous:
        listed = "; ".join(f"{nm!r} is {why}" for nm, why in skipped.items())
        raise DataError(
            f"the guide has no continuous latent site ({listed or 'no latent site at all'}); "
            "latent usage measures continuous latents"
        )
    _refuse_model_only_parents(
        model, guide, probe, continuous, guide_order, info.enumerated, pdim, **kwargs
    )
    if batch_size is None:
        batch_size = max(1, min(n, DEFAULT_PARTICLE_BUDGET // num_samples))
    closed_ok = {s: _closed_form_ok(s, guide_order, model_order) for s in continuous}
    accs = {s: _SiteAccumulator() for s in continuous}
    for start in range(0, n, batch_size):
        batch = slice_data(data, start, start + batch_size)
        guide_trace, model_trace = trace_pair(
            model, guide, *batch, num_particles=num_samples, particle_dim=pdim, **kwargs
        )
        for name in continuous:
            _fold_site(
                name, guide_trace.nodes[name], model_trace.nodes[name], pdim, data_plate,
                closed_ok[name], accs[name],
            )  # fmt: skip
    sites = {name: _site_usage(accs[name], n, num_samples, threshold) for name in continuous}
    ref = slice_data(data, 0, n)
    if n > mi_points:  # evenly spaced, so sorted data still gives a spread of points
        idx = torch.linspace(0, n - 1, mi_points).round().long()
        ref = tuple(t[idx] if isinstance(t, torch.Tensor) else t for t in data)
    mi, mi_reason = _mutual_information(guide, ref, continuous, pdim, data_plate, **kwargs)
    return LatentUsage(
        sites=sites,
        mutual_information=mi,
        num_points=n,
        skipped=skipped,
        threshold=float(threshold),
        num_samples=num_samples,
        mi_points=batch_size_of(ref),
        mi_reason=mi_reason,
    )


def _fold_site(
    name: str,
    q_site: dict,
    p_site: dict,
    particle_dim: int,
    data_plate: str,
    closed_form_ok: bool,
    acc: _SiteAccumulator,
) -> None:
    """Add one traced batch of site ``name`` to its accumulator."""
    z, q, p = q_site["value"], q_site["fn"], p_site["fn"]
    batch_ndim = z.dim() - q.event_dim
    data_dim = _data_dim(q_site, data_plate)
    kl = _site_kl(q, p, z, closed_form_ok, acc)
    kl = _units(kl, batch_ndim, particle_dim, data_dim, name)  # (K, n, units or plates)
    if acc.reason is None:
        acc.kl_sum = kl.sum((0, 1)) if acc.kl_sum is None else acc.kl_sum + kl.sum((0, 1))
    acc.per_point.append(kl.sum(-1).mean(0).double())
    mean, acc.mean_method = _posterior_mean(q, z)
    acc.means.update(_units(mean, batch_ndim, particle_dim, data_dim, name).mean(0))


def _site_usage(acc: _SiteAccumulator, n: int, k: int, threshold: float) -> SiteUsage:
    per_point = torch.cat(acc.per_point)
    variance = acc.means.variance()
    kl_per_dim = None
    if acc.reason is None and acc.kl_sum is not None:
        kl_per_dim = acc.kl_sum.double() / (n * k)
    return SiteUsage(
        kl_per_dim=kl_per_dim,
        kl=float(per_point.mean()),
        kl_stderr=stderr(per_point),
        mean_variance=variance,
        active=variance > threshold,
        reason=acc.reason,
        kl_method=acc.kl_method,
        mean_method=acc.mean_method,
    )


def _mutual_information(
    guide: Callable,
    ref: tuple,
    continuous: list[str],
    particle_dim: int,
    data_plate: str,
    **kwargs,
) -> tuple[float, str | None]:
    """He et al. (2019) estimate of I(x; z) on the M points ``ref``; (nan, why) if it cannot."""
    m = batch_size_of(ref)
    guide_trace, _ = trace_pair(
        _no_model, guide, *ref, num_particles=1, particle_dim=particle_dim, **kwargs
    )
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or name in continuous:
            continue
        if not getattr(site["fn"], "has_enumerate_support", False):
            return math.nan, (
                f"discrete site {name!r} ({type(_unwrapped(site['fn'])).__name__}) has no finite "
                "support to sum q(z | x) over"
            )
    drawn = {}  # name -> (z: (1, ..., M, *event), its data axis)
    for name in continuous:
        site = guide_trace.nodes[name]
        z = site["value"]
        drawn[name] = (z, z.dim() - site["fn"].event_dim + _data_dim(site, data_plate))
    chunk = max(1, DEFAULT_PARTICLE_BUDGET // m)
    failures = []
    for strategy in ("vectorized", "replicate"):
        try:
            terms = [
                _pair_terms(
                    guide, ref, drawn, c0, min(chunk, m - c0), strategy, particle_dim,
                    data_plate, **kwargs,
                )  # fmt: skip
                for c0 in range(0, m, chunk)
            ]
        except (*PROGRAM_ERRORS, DataError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            failures.append(f"{strategy}: {first}")
            continue
        return float(torch.cat(terms).mean()), None
    return math.nan, (
        f"the guide cannot be scored at the latent values of other points ({'; '.join(failures)})"
    )


def _pair_terms(
    guide: Callable,
    ref: tuple,
    drawn: dict[str, tuple[torch.Tensor, int]],
    c0: int,
    c: int,
    strategy: str,
    particle_dim: int,
    data_plate: str,
    **kwargs,
) -> torch.Tensor:
    """log q(z_n | x_n) - logsumexp_m log q(z_n | x_m) + log M for n = c0 .. c0 + c - 1: (c,).

    ``"vectorized"``: z_n on the particle dimension, the guide run once on the M points, so
    the data plate broadcasts the pairs to (c, M). ``"replicate"``: the M points tiled c times
    along the data plate (row k M + m pairs z_{c0+k} with x_m), for guides that cannot take a
    latent value with a dimension on the left (a flow whose context is the data batch).
    """
    m = batch_size_of(ref)
    if strategy == "vectorized":
        # z_n onto the particle dimension, a 1 on the data dimension
        values = {n: z.transpose(0, d)[c0 : c0 + c] for n, (z, d) in drawn.items()}
        data, plate = ref, c
    else:
        values = {
            n: z[0].narrow(d - 1, c0, c).repeat_interleave(m, dim=d - 1)
            for n, (z, d) in drawn.items()
        }
        data, plate = replicate_data(ref, c), None
    conditioned = pyro.infer.config_enumerate(poutine.condition(guide, data=values))
    trace, _ = trace_pair(
        _no_model, conditioned, *data, num_particles=plate, particle_dim=particle_dim,
        enumerate_sites=True, **kwargs,
    )  # fmt: skip
    compute_log_density(trace)
    rows, cols = (c, m) if plate is not None else (1, c * m)
    # the trace holds only guide sites: their log q summed, discrete ones summed out
    log_q = enumerated_log_weight(trace, None, [], particle_dim, data_plate, rows, cols)
    log_q = log_q.reshape(c, m).double()  # log q(z_n | x_m)
    diag = log_q[torch.arange(c), torch.arange(c0, c0 + c)]
    return diag - torch.logsumexp(log_q, 1) + math.log(m)
