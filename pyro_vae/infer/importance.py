"""Importance-sampled log-likelihood for any model/guide pair that follows the contract.

Contract: the model observes at least one site and every sample site of model and guide lies
inside ``pyro.plate(data_plate, ...)`` (roles are read from the traces, not from names);
particles are added on the left where the programs allow, else each data point is replicated
along the data plate, so the per-example log weights keep the data dimension until after the
logsumexp over particles. Sites marked for enumeration are summed out exactly.
Further estimators on the same contract: ``ais`` (annealed importance sampling), ``gaps``
(approximation and amortization gaps), ``diagnostics`` (PSIS k-hat, posterior InferenceData).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from pyro.poutine.runtime import _PYRO_STACK

from pyro_vae.errors import ConfigError, DataError
from pyro_vae.infer.chunking import sized_particle_chunk
from pyro_vae.infer.trace import (
    DEFAULT_PARTICLE_BUDGET,
    STRATEGIES,
    PerExampleEstimate,
    batch_size_of,
    check_program,
    choose_strategy,
    chunk_sizes,
    log_weights,
    probe_data,
    slice_data,
    stderr,
)
from pyro_vae.runtime.threads import poll as poll_threads
from pyro_vae.validation import check_positive_int, check_tensor

__all__ = [
    "DEFAULT_PARTICLE_BUDGET",
    "ROUTES",
    "LogLikelihood",
    "choose_route",
    "log_likelihood",
    "log_weights",
    "register_route",
]

#: ``provider(model, guide, data, kwargs, data_plate, strategy)`` -> a ``log_weights_fn(x, k,
#: *rest)`` giving (k, batch) log weights equal to [`log_weights`][pyro_vae.infer.trace.log_weights]
#: for these programs, or a string saying why it does not apply.
RouteProvider = Callable[..., "Callable[..., torch.Tensor] | str"]

#: Faster routes to the traced log weights, for programs their provider recognizes (e.g.
#: ``"fused"``, the library's own VAE computed from its parts,
#: [`fused_route`][pyro_vae.models.fused.fused_route], registered by ``pyro_vae`` itself).
#: ``log_likelihood(route="auto")`` takes the first that applies.
ROUTES: dict[str, RouteProvider] = {}


def register_route(name: str, provider: RouteProvider) -> None:
    """Add a route to ``ROUTES`` (a layer above ``infer`` that
    knows its programs)."""
    if name in ("auto", "traced", "given") or name in ROUTES:
        raise ConfigError(f"route name {name!r} is taken; choose another")
    ROUTES[name] = provider


def choose_route(
    route: str,
    model: Callable,
    guide: Callable,
    data: tuple,
    kwargs: dict,
    data_plate: str = "data",
    strategy: str = "auto",
) -> tuple[str, Callable[..., torch.Tensor] | None]:
    """The route's name and its log-weights function (``None``: trace the programs).

    ``route``: ``"auto"`` (the first of ``ROUTES`` that applies,
    else ``"traced"``), ``"traced"``, or a name in ``ROUTES``
    (refused with the provider's reason where it does not apply). No route but tracing is taken
    inside a Pyro handler (``poutine.scale``, ``condition``...): the handler would not see the
    sites.
    """
    if route == "traced":
        return "traced", None
    if route != "auto" and route not in ROUTES:
        raise ConfigError(
            f"unknown route {route!r}; choose auto, traced or one of {sorted(ROUTES)}"
        )
    if poutine_stack():
        if route != "auto":
            raise ConfigError(
                f"route {route!r} does not apply: a Pyro handler is active around the call; "
                "use route='traced'"
            )
        return "traced", None
    candidates = ROUTES if route == "auto" else {route: ROUTES[route]}
    for name, provider in candidates.items():
        found = provider(model, guide, data, kwargs, data_plate, strategy)
        if callable(found):
            return name, found
        if route != "auto":
            raise ConfigError(f"route {name!r} does not apply: {found}; use route='traced'")
    return "traced", None


@dataclass
class LogLikelihood(PerExampleEstimate):
    """Per-example importance-sampling results, in nats.

    Attributes:
        per_example: (N,) log p(x_n) estimates, logsumexp_k log w_nk - log K.
        elbo_per_example: (N,) ELBO estimates, mean_k log w_nk.
        ess: (N,) effective sample sizes, (sum_k w_nk)^2 / sum_k w_nk^2, in [1, K].
        num_samples: K, the number of importance samples per data point.
        log_weights: (K, N) log weights when requested, else ``None``.
        strategy: how particles were drawn: ``"vectorized"`` (a particle plate left of every
            plate) or ``"replicate"`` (each point repeated K times along the data plate).
        enumerated: the sites summed out exactly (marked ``infer={"enumerate": ...}``).
        unscaled: the sites a handler scales (``poutine.scale``: a minibatch factor N / B, KL
            annealing): a scale is a training device, not part of p(x), so they were scored
            without it ([`compute_log_density`][pyro_vae.infer.trace.compute_log_density]).
        route: how the log weights were computed: ``"traced"`` (the programs traced), a name
            in ``ROUTES`` (e.g. ``"fused"``), or ``"given"``
            (the caller's ``log_weights_fn``).
    """

    per_example: torch.Tensor
    elbo_per_example: torch.Tensor
    ess: torch.Tensor
    num_samples: int
    log_weights: torch.Tensor | None = None
    strategy: str = "vectorized"
    enumerated: tuple[str, ...] = ()
    unscaled: tuple[str, ...] = ()
    route: str = "traced"

    @property
    def elbo(self) -> float:
        """Mean ELBO per data point, nats."""
        return float(self.elbo_per_example.mean())

    @property
    def elbo_stderr(self) -> float:
        """Standard error of [`elbo`][pyro_vae.infer.importance.LogLikelihood.elbo] over data
        points."""
        return stderr(self.elbo_per_example)

    def __str__(self) -> str:
        note = f"; sites {list(self.unscaled)} scored without their scale" if self.unscaled else ""
        return (
            f"log p(x) ~ {self.mean:.3f} +- {self.stderr:.3f} nats (IS, K={self.num_samples}); "
            f"ELBO {self.elbo:.3f} +- {self.elbo_stderr:.3f}{note}"
        )


class StreamingMoments:
    """Per-example reductions of log weights that arrive chunk by chunk over particles.

    Keeps, per data point, the running logsumexp of log w and of 2 log w and the running sum
    of log w, so memory is (batch,) whatever K is. ``update(lw)`` with lw: (k, batch).
    """

    def __init__(self, batch: int, dtype: torch.dtype = torch.float32):
        self.lse = torch.full((batch,), -math.inf, dtype=dtype)
        self.lse2 = torch.full((batch,), -math.inf, dtype=dtype)
        self.total = torch.zeros(batch, dtype=dtype)
        self.count = 0

    def update(self, lw: torch.Tensor) -> None:
        """Fold a chunk of log weights lw: (k, batch) into the running reductions."""
        lw = lw.detach().to(self.total.device)
        self.lse = torch.logaddexp(self.lse, torch.logsumexp(lw, 0))
        self.lse2 = torch.logaddexp(self.lse2, torch.logsumexp(2 * lw, 0))
        self.total = self.total + lw.sum(0)
        self.count += lw.shape[0]

    def log_mean_weight(self) -> torch.Tensor:
        """(batch,) logsumexp_k log w_k - log K."""
        return self.lse - math.log(self.count)

    def mean_log_weight(self) -> torch.Tensor:
        """(batch,) mean_k log w_k (the ELBO estimate)."""
        return self.total / self.count

    def ess(self) -> torch.Tensor:
        """(batch,) (sum_k w_k)^2 / sum_k w_k^2."""
        return torch.exp(2 * self.lse - self.lse2)


def poutine_stack() -> bool:
    """Whether a Pyro handler is active (``poutine.scale``, ``condition``, a trace...)."""
    return bool(_PYRO_STACK)


def _legacy_num_samples(data: tuple, num_samples: int | None) -> tuple[tuple, int]:
    """Accept the old positional call log_likelihood(model, guide, data, K)."""
    if len(data) >= 2 and isinstance(data[-1], int) and not isinstance(data[-1], bool):
        if num_samples is not None:
            raise ConfigError("num_samples given twice (positionally and as a keyword)")
        return data[:-1], data[-1]
    return data, 1000 if num_samples is None else num_samples


@torch.no_grad()
def log_likelihood(
    model: Callable,
    guide: Callable,
    *data,
    num_samples: int | None = None,
    batch_size: int | None = None,
    particle_chunk: int | None = None,
    data_plate: str = "data",
    keep_log_weights: bool = False,
    particle_budget: int = DEFAULT_PARTICLE_BUDGET,
    strategy: str = "auto",
    log_weights_fn: Callable[..., torch.Tensor] | None = None,
    route: str = "auto",
    **kwargs,
) -> LogLikelihood:
    """Importance-sampled estimate of log p(x) per data point.

    data: tensors each (N, ...), e.g. x: (N, *event_shape) then labels (N,); they are sliced
    together along dim 0 and passed positionally to model and guide, ``kwargs`` unchanged.
    With z_k ~ q(z | x), k = 1..K (``num_samples``, default 1000):

        log p(x) ~ logsumexp_k [log p(x, z_k) - log q(z_k | x)] - log K

    a stochastic lower bound whose expectation rises to log p(x) as K grows (Burda et al. 2016,
    "Importance Weighted Autoencoders"). Data are processed ``batch_size`` points at a time and
    particles in chunks of at most ``particle_chunk`` (default: sized from the bytes of a probe
    pass, [`pyro_vae.infer.chunking`][], at most ``particle_budget`` samples per pass); each chunk
    is folded into running reductions
    ([`StreamingMoments`][pyro_vae.infer.importance.StreamingMoments]), so memory is flat in K
    unless ``keep_log_weights`` asks for the (K, N) weights. Model and guide are checked against
    each other first ([`check_program`][pyro_vae.infer.trace.check_program]).

    Particles (``strategy``): ``"vectorized"`` draws them in a plate left of every plate;
    ``"replicate"`` repeats each data point K times along the data plate, for programs that
    cannot carry a dimension on the left (``.view(-1, D)``, ``torch.bmm``, masks built from
    the batch shape); ``"auto"`` (default) tries the first on a small batch and falls back to
    the second; the result says which ran. A handler's scale factor (``poutine.scale``: a
    minibatch factor N / B, KL annealing) is not part of p(x): scaled sites are scored without
    it and listed in the result's ``unscaled``; masks are kept. Sites marked
    ``infer={"enumerate": "parallel"}`` (in the guide, or in the model where the guide does not
    sample them) take every value at once and are summed out exactly (in a ``pyro.markov``
    chain by the forward algorithm): log w = log sum_y p(x, y, z) / q(z | x, y).

    Route (``route``, recorded in the result): ``"auto"`` (default) computes the log weights
    by a registered faster route where one applies
    (``ROUTES``: for the library's own VAE, ``"fused"``,
    [`pyro_vae.models.fused.FusedLogWeights`][], from its parts without tracing, proven equal
    to the traced weights), else by tracing; ``"traced"`` always traces.
    ``log_weights_fn(x, k, *rest)`` -> (k, batch), when given, computes each chunk's log
    weights in place of either (a caller's fast path for a model it knows; it must equal
    [`log_weights`][pyro_vae.infer.trace.log_weights]), route ``"given"``.
    """
    data, num_samples = _legacy_num_samples(data, num_samples)
    check_positive_int(num_samples, "num_samples")
    check_positive_int(batch_size, "batch_size", allow_none=True)
    check_positive_int(particle_chunk, "particle_chunk", allow_none=True)
    check_positive_int(particle_budget, "particle_budget")
    if not data:
        raise DataError("no data given; call log_likelihood(model, guide, x, num_samples=K)")
    owner = getattr(model, "__self__", None)
    check_tensor(data[0], "data", getattr(owner, "event_shape", None))
    n = batch_size_of(data)
    if strategy not in ("auto", *STRATEGIES):
        raise ConfigError(f"unknown strategy {strategy!r}; choose auto or one of {STRATEGIES}")
    if log_weights_fn is not None and route not in ("auto", "given"):
        raise ConfigError(f"log_weights_fn given with route={route!r}; give one or the other")
    route, log_weights_fn = (
        ("given", log_weights_fn) if log_weights_fn is not None
        else choose_route(route, model, guide, data, kwargs, data_plate, strategy)
    )  # fmt: skip
    probe = probe_data(model, data)
    info = check_program(model, guide, *probe, data_plate=data_plate, **kwargs)
    particle_dim = info.particle_dim
    strategy = choose_strategy(
        model, guide, *probe, particle_dim=particle_dim, data_plate=data_plate,
        candidates=STRATEGIES if strategy == "auto" else (strategy,), **kwargs,
    )  # fmt: skip
    if batch_size is None:
        batch_size = min(n, 64)
    if particle_chunk is None:  # sized from the bytes of a probe pass (infer.chunking)
        particle_chunk = sized_particle_chunk(
            model, guide, probe, min(batch_size, n), num_samples, log_weights_fn,
            particle_budget, particle_dim=particle_dim, data_plate=data_plate, strategy=strategy,
            **kwargs,
        )  # fmt: skip
    particle_chunk = min(particle_chunk, num_samples)
    per_example, elbos, ess, all_weights = [], [], [], []
    for start in range(0, n, batch_size):
        batch = slice_data(data, start, start + batch_size)
        moments = StreamingMoments(batch_size_of(batch), data[0].dtype)
        kept = []
        for k in chunk_sizes(num_samples, particle_chunk):
            lw = log_weights(
                model, guide, batch[0], k, *batch[1:],
                particle_dim=particle_dim, data_plate=data_plate, strategy=strategy, **kwargs,
            ) if log_weights_fn is None else log_weights_fn(batch[0], k, *batch[1:])
            moments.update(lw)
            poll_threads()
            if keep_log_weights:
                kept.append(lw)
        per_example.append(moments.log_mean_weight())
        elbos.append(moments.mean_log_weight())
        ess.append(moments.ess())
        if keep_log_weights:
            all_weights.append(torch.cat(kept, 0))
    return LogLikelihood(
        per_example=torch.cat(per_example),
        elbo_per_example=torch.cat(elbos),
        ess=torch.cat(ess),
        num_samples=num_samples,
        log_weights=torch.cat(all_weights, 1) if keep_log_weights else None,
        strategy=strategy,
        enumerated=info.enumerated,
        unscaled=info.scaled,
        route=route,
    )
