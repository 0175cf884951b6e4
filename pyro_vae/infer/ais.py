"""Annealed importance sampling of log p(x) per data point, for any model/guide pair.

Contract as in [`pyro_vae.infer.importance`][]: every sample site inside the data plate, the
model observes at least one site, the guide samples the model's continuous latent sites.
Discrete sites the model marks for enumeration (and the guide leaves alone) are summed out of
the target exactly; other discrete sites are refused. Chains sit on the left of the data
plate, so all data points and chains run in one batched HMC.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import prune_subsample_sites

from pyro_vae.errors import ConfigError, DataError
from pyro_vae.infer.trace import (
    PerExampleEstimate,
    batch_size_of,
    check_program,
    choose_strategy,
    compute_log_density,
    enumerated_log_weight,
    enumerated_sites,
    enumerating,
    latent_sites,
    probe_data,
    site_term,
    site_terms,
    slice_data,
)

ADAPT = 0.5


@dataclass
class AISResult(PerExampleEstimate):
    """AIS log p(x) estimates, in nats.

    Attributes:
        per_example: (N,) log (1/C) sum_c w_nc over C independent chains.
        per_example_stderr: (N,) Monte Carlo standard error of each estimate (delta method,
            sd(w) / (sqrt(C) mean(w))).
        acceptance: (N,) mean HMC acceptance probability over chains and steps.
        num_steps: annealing steps T.
        num_chains: independent chains C.
        unscaled: the sites a handler scales (``poutine.scale``), scored without the scale:
            it is a training device, not part of p(x).
    """

    per_example: torch.Tensor
    per_example_stderr: torch.Tensor
    acceptance: torch.Tensor
    num_steps: int
    num_chains: int
    unscaled: tuple[str, ...] = ()

    @property
    def mc_stderr(self) -> float:
        """Monte Carlo standard error of [`mean`][pyro_vae.infer.trace.PerExampleEstimate.mean]
        alone: sqrt(sum_n se_n^2) / N."""
        n = self.per_example_stderr.numel()
        return float(self.per_example_stderr.pow(2).sum().sqrt() / n)

    def __str__(self) -> str:
        return (
            f"log p(x) ~ {self.mean:.3f} +- {self.stderr:.3f} nats (AIS, {self.num_steps} steps, "
            f"{self.num_chains} chains, acceptance {float(self.acceptance.mean()):.2f})"
        )


def sigmoid_schedule(num_steps: int, rad: float = 4.0) -> torch.Tensor:
    """Inverse temperatures 0 = beta_0 < ... < beta_T = 1, denser at both ends (Grosse et al.
    2015): beta_t proportional to sigmoid(rad * (2t/T - 1)), rescaled to [0, 1]."""
    if num_steps < 1:
        raise ConfigError(f"AIS needs at least one step, got {num_steps}")
    s = torch.sigmoid(rad * torch.linspace(-1.0, 1.0, num_steps + 1, dtype=torch.float64))
    return ((s - s[0]) / (s[-1] - s[0])).tolist()


class _Densities:
    """log f_0(z) (initial) and log p(x, z) (target) at z: dict of (C, batch, *event) tensors."""

    def __init__(self, model, init_fns, data, kwargs, chains, particle_dim, data_plate):
        self.model, self.init_fns, self.data, self.kwargs = model, init_fns, data, kwargs
        self.chains, self.particle_dim, self.data_plate = chains, particle_dim, data_plate
        self.batch = batch_size_of(data)

    def initial(self, z: dict) -> torch.Tensor:
        total = 0.0
        for name, site in self.init_fns.items():
            site = dict(site)
            site["log_prob"] = scale_and_mask(site["fn"].log_prob(z[name]), mask=site["mask"])
            total = total + self._term(name, site)
        return total

    def target(self, z: dict) -> torch.Tensor:
        """log p(x, z), (C, batch); sites the model marks for enumeration are summed out."""
        model = enumerating(self.model, self.particle_dim - 1)
        with pyro.plate("particles", self.chains, dim=self.particle_dim):
            trace = poutine.trace(poutine.condition(model, data=z)).get_trace(
                *self.data, **self.kwargs
            )
        trace = prune_subsample_sites(trace)
        compute_log_density(trace)
        enumerated = enumerated_sites(trace)
        if enumerated:
            return enumerated_log_weight(
                trace, None, enumerated, self.particle_dim, self.data_plate, self.chains,
                self.batch,
            )  # fmt: skip
        terms = site_terms(trace, self.particle_dim, self.data_plate, self.chains, self.batch)
        return sum(terms.values())

    def _term(self, name, site):
        return site_term(name, site, self.particle_dim, self.data_plate, self.chains, self.batch)


def _initial_sites(model, guide, data, kwargs, chains, particle_dim, init):
    """Samples and distributions of the initial distribution: q(z|x) (``guide``) or p(z)."""
    with pyro.plate("particles", chains, dim=particle_dim):
        program = guide if init == "guide" else model
        trace = prune_subsample_sites(poutine.trace(program).get_trace(*data, **kwargs))
    sites = {
        n: trace.nodes[n]
        for n in latent_sites(trace)
        if not (init == "prior" and trace.nodes[n]["infer"].get("enumerate"))
    }  # a site the model enumerates is summed out of the target, not annealed
    if not sites:
        raise DataError(f"the {init} has no latent sample sites to anneal")
    for name, site in sites.items():
        fn = site["fn"]
        if not fn.has_rsample or fn.support.is_discrete:
            raise ConfigError(
                f"AIS moves latent sites by HMC, but site {name!r} is discrete "
                f"({type(fn).__name__}); mark it infer={{'enumerate': 'parallel'}} in the model "
                "and leave it out of the guide (AIS then sums it out), or use log_likelihood"
            )
    return sites


def ais_log_likelihood(
    model: Callable,
    guide: Callable,
    *data,
    num_steps: int = 500,
    num_chains: int = 8,
    init: str = "guide",
    leapfrog_steps: int = 5,
    step_size: float = 0.05,
    target_accept: float = 0.65,
    batch_size: int | None = None,
    data_plate: str = "data",
    **kwargs,
) -> AISResult:
    """Annealed importance sampling estimate of log p(x) per data point.

    data: tensors each (N, ...), sliced together along dim 0 and passed positionally to model
    and guide (``kwargs`` unchanged). Geometric path from f_0(z) = q(z | x) (``init="guide"``) or
    f_0(z) = p(z) (``init="prior"``) to the joint p(x, z):

        log f_t(z) = (1 - beta_t) log f_0(z) + beta_t log p(x, z),   beta_t: sigmoid schedule
        log w = sum_{t=1}^T (beta_t - beta_{t-1}) [log p(x, z_{t-1}) - log f_0(z_{t-1})]

    with z_0 ~ f_0 and z_t from an HMC transition that leaves f_t invariant (``leapfrog_steps``
    leapfrog steps, identity mass, Metropolis correction). E[w] = p(x) (Neal 2001; Wu, Burda,
    Salakhutdinov & Grosse 2017 for decoder-based models), so log mean_c w_c over C chains is a
    stochastic lower bound that tightens as T grows. Each data point has one step size, shared
    by its chains and adapted after each transition, eps <- eps * exp(0.5 (a - target_accept))
    with a the chains' mean acceptance probability, as Wu et al. adapt theirs toward a target
    acceptance rate (a step size per chain, adapted from its own acceptance, biases the
    estimate).
    Estimates per point carry a delta-method standard error across the C chains. Sites a
    handler scales (``poutine.scale``) are scored without the scale, as in
    [`log_likelihood`][pyro_vae.infer.importance.log_likelihood]; a point-mass guide is refused.
    """
    if init not in ("guide", "prior"):
        raise ConfigError(f"AIS init must be 'guide' or 'prior', got {init!r}")
    if num_chains < 1:
        raise ConfigError(f"AIS needs at least one chain, got {num_chains}")
    n = batch_size_of(data)
    if n == 0:
        raise DataError("no data points to evaluate; pass a non-empty tensor")
    if batch_size is None:
        batch_size = min(n, 64)
    betas = sigmoid_schedule(num_steps)
    info = check_program(model, guide, *probe_data(model, data), data_plate=data_plate, **kwargs)
    particle_dim = info.particle_dim
    choose_strategy(
        model, guide, *probe_data(model, data), particle_dim=particle_dim,
        data_plate=data_plate, candidates=("vectorized",),
        fix="AIS runs its chains in a plate left of the data plate; use log_likelihood, which "
        "replicates the data instead", **kwargs,
    )  # fmt: skip
    if particle_dim != -2:
        raise ConfigError(
            "AIS supports programs whose only plate is the data plate (chains at dim -2); "
            "flatten the other plates into the event shape"
        )
    est, se, acc = [], [], []
    for start in range(0, n, batch_size):
        batch = slice_data(data, start, start + batch_size)
        e, s, a = _ais_batch(
            model, guide, batch, kwargs, betas, num_chains, init, leapfrog_steps, step_size,
            target_accept, particle_dim, data_plate,
        )  # fmt: skip
        est.append(e)
        se.append(s)
        acc.append(a)
    return AISResult(
        torch.cat(est), torch.cat(se), torch.cat(acc), num_steps, num_chains, info.scaled
    )


def _ais_batch(
    model, guide, data, kwargs, betas, chains, init, leapfrog_steps, step_size, target_accept,
    particle_dim, data_plate,
):  # fmt: skip
    with torch.no_grad():
        sites = _initial_sites(model, guide, data, kwargs, chains, particle_dim, init)
    init_fns = {
        n: {k: s[k] for k in ("fn", "scale", "mask", "cond_indep_stack")} for n, s in sites.items()
    }
    z = {n: s["value"].detach() for n, s in sites.items()}
    dens = _Densities(model, init_fns, data, kwargs, chains, particle_dim, data_plate)
    x = data[0]
    # every latent tensor is (C, batch, *event); per-(chain, point) quantities are (C, batch)
    shape = (chains, x.shape[0])
    eps = torch.full(shape, step_size, dtype=x.dtype, device=x.device)
    log_w = torch.zeros(shape, dtype=torch.float64, device=x.device)
    accept_sum = torch.zeros(shape, dtype=x.dtype, device=x.device)

    def bcast(v, like):
        return v.reshape(v.shape + (1,) * (like.dim() - v.dim()))

    def evaluate(z):
        """log f_0, log p(x, z) and their gradients in z."""
        zg = {k: v.detach().requires_grad_() for k, v in z.items()}
        with torch.enable_grad():
            log0, log1 = dens.initial(zg), dens.target(zg)
            g0 = torch.autograd.grad(log0.sum(), list(zg.values()), retain_graph=True)
            g1 = torch.autograd.grad(log1.sum(), list(zg.values()))
        keys = list(zg)
        return (
            log0.detach(),
            log1.detach(),
            dict(zip(keys, g0, strict=True)),
            dict(zip(keys, g1, strict=True)),
        )

    def mix(a, b, beta):
        return {k: (1 - beta) * a[k] + beta * b[k] for k in a}

    with torch.no_grad():
        log0, log1, g0, g1 = evaluate(z)
        for t in range(1, len(betas)):
            beta = betas[t]
            log_w += (beta - betas[t - 1]) * (log1 - log0).double()
            logf = (1 - beta) * log0 + beta * log1
            # one HMC transition leaving f_t invariant: leapfrog, then Metropolis correction
            p0 = {k: torch.randn_like(v) for k, v in z.items()}
            grad = mix(g0, g1, beta)
            p = {k: p0[k] + 0.5 * bcast(eps, v) * grad[k] for k, v in z.items()}
            zn = dict(z)
            for j in range(leapfrog_steps):
                zn = {k: zn[k] + bcast(eps, zn[k]) * p[k] for k in zn}
                n0, n1, ng0, ng1 = evaluate(zn)
                grad = mix(ng0, ng1, beta)
                half = 1.0 if j < leapfrog_steps - 1 else 0.5
                p = {k: p[k] + half * bcast(eps, p[k]) * grad[k] for k in p}
            nf = (1 - beta) * n0 + beta * n1
            kin0 = sum(_sq(v) for v in p0.values())
            kin1 = sum(_sq(v) for v in p.values())
            log_ratio = torch.nan_to_num((nf - 0.5 * kin1) - (logf - 0.5 * kin0), nan=-math.inf)
            prob = log_ratio.clamp(max=0).exp()
            accept = torch.rand_like(prob) < prob
            for k in z:
                keep = bcast(accept, z[k])
                z[k] = torch.where(keep, zn[k], z[k])
                g0[k] = torch.where(keep, ng0[k], g0[k])
                g1[k] = torch.where(keep, ng1[k], g1[k])
            log0 = torch.where(accept, n0, log0)
            log1 = torch.where(accept, n1, log1)
            accept_sum += prob
            # adapt each point's step size toward the target, from its chains' mean acceptance
            eps = eps * torch.exp(ADAPT * (prob.mean(0, keepdim=True) - target_accept))
    lse = torch.logsumexp(log_w, 0)
    est = lse - math.log(chains)
    # delta method: var(log mean w) ~ var(w) / (C mean(w)^2), computed stably in log space
    w_norm = torch.exp(log_w - lse)  # w / sum w, (C, batch)
    rel_var = (chains * w_norm - 1).pow(2).sum(0) / max(chains - 1, 1)
    se = (rel_var / chains).sqrt()
    acceptance = accept_sum / (len(betas) - 1)
    return est.to(x.dtype), se.to(x.dtype), acceptance.mean(0)


def _sq(v: torch.Tensor) -> torch.Tensor:
    """Squared norm over every dimension right of (chain, batch): (C, batch)."""
    return v.pow(2).reshape(v.shape[0], v.shape[1], -1).sum(-1)
