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

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

import pyro
import pyro.util
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.enum_messenger import EnumMessenger
from pyro.poutine.util import prune_subsample_sites

from pyro_vae.errors import ConfigError, DataError

#: Upper bound on particles x data points per pass: keeps memory bounded whatever K is.
DEFAULT_PARTICLE_BUDGET = 2**16
#: How particles are drawn: a particle plate left of every plate, or the data replicated K times
#: along the data plate (for programs that cannot carry a dimension on the left).
STRATEGIES = ("vectorized", "replicate")
#: Errors a program raises when it cannot run on the data or shapes it is given.
PROGRAM_ERRORS = (RuntimeError, ValueError, IndexError, TypeError)


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


def enumerated_sites(*traces) -> list[str]:
    """Names of the sample sites that were enumerated (``poutine.enum``) in any of ``traces``."""
    names: list[str] = []
    for trace in traces:
        for n, s in _sample_sites(trace):
            if s["infer"].get("_enumerate_dim") is not None and n not in names:
                names.append(n)
    return names


def _parallel_config(msg: dict) -> dict:
    """Sites marked ``infer={"enumerate": "sequential"}`` are summed in parallel too."""
    return {"enumerate": "parallel"} if msg["infer"].get("enumerate") == "sequential" else {}


def enumerating(program: Callable, first_available_dim: int | None = None) -> Callable:
    """``program`` with every site marked ``infer={"enumerate": ...}`` taking all its values
    at once (``poutine.enum``), from ``first_available_dim`` leftwards (``None``: after the
    dimensions already allocated, as for a model replayed on an enumerated guide)."""
    return EnumMessenger(first_available_dim=first_available_dim)(
        poutine.infer_config(program, _parallel_config)
    )


@contextlib.contextmanager
def kept_random_state() -> Iterator[None]:
    """Run the block, then put Pyro's random state (torch, NumPy, Python) back as it was: a
    probe or check pass leaves the caller's random stream unchanged."""
    state = pyro.util.get_rng_state()
    try:
        yield
    finally:
        pyro.util.set_rng_state(state)


def _particle_plate(num_particles: int | None, particle_dim: int | None):
    """The plate of vectorized particles at ``particle_dim``; none for ``num_particles=None``."""
    if num_particles is None:
        return contextlib.nullcontext()
    return pyro.plate("particles", num_particles, dim=particle_dim)


def trace_pair(
    model: Callable,
    guide: Callable,
    *args,
    num_particles: int | None = None,
    particle_dim: int | None = None,
    enumerate_sites: bool = False,
    **kwargs,
):
    """Trace the guide (with ``num_particles`` particles in a plate at ``particle_dim``) and
    replay the model on it; returns the pruned (guide_trace, model_trace), log-probs not yet
    computed. ``num_particles=None``: no particle plate.

    With ``enumerate_sites`` every site marked ``infer={"enumerate": ...}`` (in the guide, or
    in the model where the guide does not sample it) takes all its values at once
    (``poutine.enum``), in dimensions left of ``particle_dim``, as ``TraceEnum_ELBO`` lays
    them out.
    """
    if enumerate_sites:
        guide = enumerating(guide, -1 if particle_dim is None else particle_dim - 1)
        model = enumerating(model)
    with _particle_plate(num_particles, particle_dim):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
    return prune_subsample_sites(guide_trace), prune_subsample_sites(model_trace)


class LatentDependencies(NamedTuple):
    """Which latent sites each site's distribution depends on, in the model and the guide.

    ``order``: the latent sites in the guide's order. ``guide_parents[s]``: the latent sites
    whose drawn values q(s | ...) depends on; ``model_parents[s]``: those p(s | ...) depends
    on (evaluated at the guide's draws). Found by differentiating each site's log-density with
    respect to the other sites' reparameterized draws, so a dependency on a site drawn without
    a pathwise gradient (a discrete label) is not seen; see :meth:`mean_field_conflict`.
    """

    order: tuple[str, ...]
    guide_parents: dict[str, set[str]]
    model_parents: dict[str, set[str]]

    def mean_field_conflict(self) -> tuple[str, str] | None:
        """``(site, parent)`` where p(site | parent) is scored at a parent the guide draws
        AFTER ``site`` (from it), or ``None``.

        An analytic KL(q(site | ...) || p(site | parent)) at the guide's draw of ``parent`` is
        then not E_q[log q - log p]: the draw of ``parent`` depends on that of ``site``
        (a bottom-up guide of a top-down model). Besides the differentiated dependencies, a
        model site drawn before ``site`` that is not reparameterized counts as a parent.
        """
        position = {name: i for i, name in enumerate(self.order)}
        for site in self.order:
            parents = self.model_parents.get(site, set())
            for parent in sorted(parents):
                if position.get(parent, -1) > position[site]:
                    return site, parent
        return None

    def dependent_guide_site(self) -> tuple[str, str] | None:
        """``(site, parent)`` where q(site | ...) depends on the draw of another latent
        ``parent``, or ``None`` when the guide's sites are conditionally independent given
        the data."""
        for site in self.order:
            for parent in sorted(self.guide_parents.get(site, set())):
                return site, parent
        return None


def latent_dependencies(model: Callable, guide: Callable, *args, **kwargs) -> LatentDependencies:
    """:class:`LatentDependencies` of a model/guide pair, from one traced pass on ``args``.

    The pass runs with gradients on and leaves the caller's random stream unchanged.
    """
    with kept_random_state(), poutine.block(), torch.enable_grad():
        guide_trace, model_trace = trace_pair(model, guide, *args, **kwargs)
    order = tuple(latent_sites(guide_trace, model_trace))
    values = {n: guide_trace.nodes[n]["value"] for n in order}

    def parents(fn, site: str) -> set[str]:
        others = [t for t in order if t != site and values[t].requires_grad]
        if not others:
            return set()
        lp = fn.log_prob(values[site].detach()).sum()
        if not lp.requires_grad:
            return set()
        grads = torch.autograd.grad(
            lp, [values[t] for t in others], allow_unused=True, retain_graph=True
        )
        return {t for t, g in zip(others, grads, strict=True) if g is not None}

    guide_parents = {s: parents(guide_trace.nodes[s]["fn"], s) for s in order}
    model_parents: dict[str, set[str]] = {}
    model_order = [n for n in model_trace.nodes if n in values]
    for i, s in enumerate(model_order):
        found = parents(model_trace.nodes[s]["fn"], s)
        # an earlier model site without a pathwise gradient may be a parent: count it
        found |= {t for t in model_order[:i] if not values[t].requires_grad}
        model_parents[s] = found
    return LatentDependencies(order, guide_parents, model_parents)


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
    enumerated: tuple[str, ...] = ()


def _marked_for_enumeration(*traces) -> bool:
    """Whether any unobserved sample site carries ``infer={"enumerate": ...}``."""
    return any(
        s["infer"].get("enumerate") and not s["is_observed"]
        for trace in traces
        for _, s in _sample_sites(trace)
    )


def enumeration_nesting(model: Callable, guide: Callable, *args, **kwargs) -> int | None:
    """The plate nesting of the programs if any site is marked for enumeration, else None.

    One trace of guide and model on ``args`` (a batch), hidden from enclosing handlers; the
    random state is left as it was. ``TraceEnum_ELBO(max_plate_nesting=...)`` takes the result.
    """
    with kept_random_state(), poutine.block():
        guide_trace, model_trace = trace_pair(model, guide, *args, **kwargs)
    if not _marked_for_enumeration(guide_trace, model_trace):
        return None
    return -plate_particle_dim(guide_trace, model_trace) - 1


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]


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
    model that the guide neither samples nor marks for enumeration, a guide site the model
    does not have, no observed site, a site outside the data plate, a data plate whose size
    is not n or that subsamples (its log-probs would be rescaled by N / n), values broadcast
    against their distribution, and an enumerated site inside a plate other than the data
    plate. Returns the latent sites, the particle dimension and the enumerated sites
    (:class:`ProgramInfo`). ``restore_rng``: leave the random state as it was.
    """
    n = batch_size_of(args)
    try:
        with kept_random_state() if restore_rng else contextlib.nullcontext(), poutine.block():
            guide_trace, model_trace = trace_pair(model, guide, *args, **kwargs)
            pdim = plate_particle_dim(guide_trace, model_trace)
            enum_guide, enum_model = guide_trace, model_trace
            if _marked_for_enumeration(guide_trace, model_trace):
                with kept_random_state():  # the second pass leaves the stream alone
                    enum_guide, enum_model = trace_pair(
                        model, guide, *args, particle_dim=pdim, enumerate_sites=True, **kwargs
                    )
    except PROGRAM_ERRORS as exc:
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        shapes = [tuple(a.shape) for a in tensors]
        dtypes = sorted({str(a.dtype) for a in tensors if a.is_floating_point()})
        if "dtype" in str(exc) and dtypes:  # float64 data for a float32 model, or the reverse
            raise DataError(
                f"the model cannot read data of dtype {', '.join(dtypes)} ({_first_line(exc)}); "
                "convert the data to the model's dtype (x.float() for float32)"
            ) from exc
        raise DataError(
            f"the model cannot read data of shape {shapes} ({_first_line(exc)}); pass data "
            "shaped (N, *event_shape) as in training"
        ) from exc
    if not observed_sites(model_trace):
        raise DataError(
            "the model observes no sample site; give the data to pyro.sample(..., obs=x) so "
            "there is a likelihood to score"
        )
    enumerated = enumerated_sites(enum_guide, enum_model)
    model_latent = {nm for nm, s in _sample_sites(model_trace) if not s["is_observed"]}
    guide_latent = {nm for nm, s in _sample_sites(guide_trace) if not s["is_observed"]}
    for name in sorted(model_latent - guide_latent - set(enumerated)):
        raise DataError(
            f"latent site {name!r} of the model is not sampled by the guide, so its "
            "log-density would be counted without a proposal; sample it in the guide, mark it "
            "infer={'enumerate': 'parallel'} to sum it out exactly, or sum it out inside the "
            "model"
        )
    for name in sorted(guide_latent - set(model_trace.nodes)):
        raise DataError(
            f"guide site {name!r} does not appear in the model; name the guide's sample sites "
            "as the model's latent sites"
        )
    for trace in (guide_trace, model_trace):
        for name, site in _sample_sites(trace):
            frame = data_plate_frame(name, site, data_plate)
            if frame.size == -1:  # pyro.plate(name) without a size: it takes the site's
                shape = site["fn"].batch_shape
                size = shape[frame.dim] if len(shape) >= -frame.dim else 1
                if size != n:
                    raise DataError(
                        f"plate {data_plate!r} has no size and site {name!r} has {size} "
                        f"entries along it, but the batch has {n} points; size the plate: "
                        f"pyro.plate({data_plate!r}, x.shape[0])"
                    )
            elif frame.size != n or (frame.full_size is not None and frame.full_size != n):
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
    for trace in (enum_guide, enum_model):
        for name in enumerated:
            if name not in trace.nodes:
                continue
            inner = [
                f.name
                for f in trace.nodes[name]["cond_indep_stack"]
                if f.vectorized and f.name != data_plate
            ]
            if inner:
                raise DataError(
                    f"site {name!r} is enumerated inside plate {inner[0]!r}; summing it out "
                    f"per element of that plate is not supported, so mark it "
                    f"infer={{'enumerate': None}} to sample it, or sum it out inside the model "
                    f"(e.g. dist.MixtureSameFamily)"
                )
    return ProgramInfo(latent_sites(guide_trace, model_trace), pdim, tuple(enumerated))


def probe_data(model: Callable, data: tuple) -> tuple:
    """The small batch the programs are checked on: 2 points, or 1 for a model bound to an
    object that declares its ``event_shape`` (a VAE: the data's shape is checked directly)."""
    owner = getattr(model, "__self__", None)
    return slice_data(data, 0, 1 if getattr(owner, "event_shape", None) is not None else 2)


def data_plate_frame(
    name: str, site: dict, data_plate: str, needs: str = "per-example weights need"
):
    """The frame of plate ``data_plate`` in ``site``'s plate stack, or a :class:`DataError`
    naming the site, the plate and what needs it (``needs``, e.g. "per-example weights
    need")."""
    for frame in site["cond_indep_stack"]:
        if frame.name == data_plate:
            return frame
    raise DataError(
        f"sample site {name!r} is outside plate {data_plate!r}; {needs} every sample site "
        "inside the data plate (or pass data_plate= the name of your data plate)"
    )


def _site_log_prob(
    name: str, site: dict, particle_dim: int, data_plate: str, num_enum: int = 0
) -> torch.Tensor:
    """A site's ``log_prob`` reduced to (*enum, particles or 1, batch or 1).

    Every plate dimension except the particle dimension and the data plate's is summed out;
    ``num_enum`` enumeration dimensions (left of the particle dimension) are kept.
    """
    data_frame = data_plate_frame(name, site, data_plate)
    n_dims = num_enum - particle_dim
    lp = site["log_prob"]
    if lp.dim() > n_dims:
        raise DataError(
            f"site {name!r} has log-density dimensions {tuple(lp.shape)} left of every plate "
            "and enumeration; declare batch dimensions with pyro.plate or .to_event()"
        )
    lp = lp.reshape((1,) * (n_dims - lp.dim()) + tuple(lp.shape))
    p_idx = num_enum
    data_idx = n_dims + data_frame.dim
    inner = [d for d in range(p_idx + 1, n_dims) if d != data_idx]
    if inner:
        lp = lp.sum(inner, keepdim=True)
    return lp.reshape(tuple(lp.shape[: p_idx + 1]) + (lp.shape[data_idx],))


def site_term(
    name: str, site: dict, particle_dim: int, data_plate: str, num_particles: int, batch: int
) -> torch.Tensor:
    """One sample site's (scaled) log-probability ``site["log_prob"]`` as (particles, batch).

    Every dimension except the particle dimension and the data plate's is summed out.
    """
    return _site_log_prob(name, site, particle_dim, data_plate).expand(num_particles, batch)


def site_terms(
    trace, particle_dim: int, data_plate: str, num_particles: int, batch: int
) -> dict[str, torch.Tensor]:
    """Every sample site's log-probability as (particles, batch), by site name."""
    return {
        n: site_term(n, s, particle_dim, data_plate, num_particles, batch)
        for n, s in _sample_sites(trace)
    }


def enumerated_log_weight(
    model_trace,
    guide_trace: object | None,
    enumerated: list[str],
    particle_dim: int,
    data_plate: str,
    num_particles: int,
    batch: int,
) -> torch.Tensor:
    """log w with the enumerated sites summed out exactly: (particles, batch).

    With y the enumerated sites (every value at once, in dimensions left of the particles)
    and z the sampled ones, drawn after y where the guide conditions on it:

        log w = logsumexp_y [log p(x, y, z_y) - log q(z_y | x, y)],

    so E[w] = sum_y p(x, y) = p(x): an unbiased weight, whatever q(y | x) is (its log-density
    is left out; the sum replaces sampling y). Plates inside the data plate are summed for
    each y before the logsumexp, which is exact since y is one value per data point.
    ``guide_trace=None``: the model's log p(x, z) with y summed out (no proposal terms).
    """
    model_sites = list(_sample_sites(model_trace))
    guide_sites = (
        []
        if guide_trace is None
        else [(n, s) for n, s in _sample_sites(guide_trace) if n not in enumerated]
    )
    num_enum = max(
        [0] + [s["log_prob"].dim() + particle_dim for _, s in model_sites + guide_sites]
    )
    total = 0.0
    for n, s in model_sites:
        total = total + _site_log_prob(n, s, particle_dim, data_plate, num_enum)
    for n, s in guide_sites:
        total = total - _site_log_prob(n, s, particle_dim, data_plate, num_enum)
    if num_enum:
        total = torch.logsumexp(total, list(range(num_enum)))
    return total.expand(num_particles, batch)


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
        log_p: model site name -> (K, batch) log-density (observed and latent). With
            enumerated sites, one entry (their names joined by ``+``): the whole log weight
            with them summed out (:func:`enumerated_log_weight`), and ``log_q`` is empty.
        log_q: guide site name -> (K, batch) log-density.
        latent: names of the latent sites (found from the traces).
        z: latent name -> the guide's sample; z_leaf: the leaf it was scored at (DReG), else z.
            Vectorized: (K, ..., batch, *event); replicated: (K * batch, ..., *event), copy k
            of point b at k * batch + b.
        enumerated: names of the sites summed out exactly.
        strategy: ``"vectorized"`` or ``"replicate"`` (:data:`STRATEGIES`).
    """

    log_p: dict[str, torch.Tensor]
    log_q: dict[str, torch.Tensor]
    latent: list[str]
    z: dict[str, torch.Tensor]
    z_leaf: dict[str, torch.Tensor]
    guide_trace: object
    model_trace: object
    enumerated: list[str] = field(default_factory=list)
    strategy: str = "vectorized"

    def log_weights(self, kl_weight: float = 1.0) -> torch.Tensor:
        """(K, batch) log w = sum log p - sum log q, latent terms times ``kl_weight``."""
        if self.enumerated and kl_weight != 1.0:
            raise ConfigError(
                f"a KL weight of {kl_weight} cannot scale latent terms once the enumerated "
                f"sites {self.enumerated} are summed out; use KL weight 1 (no warm-up, beta or "
                "free bits) or Pyro's TraceEnum_ELBO"
            )
        total = 0.0
        for n, t in self.log_p.items():
            total = total + (kl_weight * t if n in self.latent else t)
        for n, t in self.log_q.items():
            total = total - (kl_weight * t if n in self.latent else t)
        return total


def replicate_data(args: tuple, copies: int) -> tuple:
    """Every positional tensor tiled ``copies`` times along dim 0: (copies * batch, ...).

    Copy k of data point b sits at row k * batch + b, so a (copies * batch,) per-row result
    reshapes to (copies, batch). Other values are passed unchanged.
    """
    return tuple(
        t.repeat(copies, *([1] * (t.dim() - 1))) if isinstance(t, torch.Tensor) else t
        for t in args
    )


def particle_terms(
    model: Callable,
    guide: Callable,
    num_particles: int,
    *args,
    particle_dim: int | None = None,
    data_plate: str = "data",
    detach_guide: bool = False,
    strategy: str = "vectorized",
    **kwargs,
) -> ParticleTerms:
    """Trace the guide with K particles, replay the model, per-site terms (K, batch).

    args: tensors each (batch, ...), passed to both programs with ``kwargs``. ``strategy``
    ``"vectorized"``: the K particles are a plate at ``particle_dim``, left of every plate;
    ``"replicate"``: each data point is repeated K times along the data plate
    (:func:`replicate_data`), for programs that cannot carry a dimension on the left; the
    terms are the same in distribution either way. Sites marked for enumeration are summed
    out exactly (:func:`enumerated_log_weight`). With ``detach_guide`` each latent site is
    scored with its distribution's parameters detached, at a leaf copy of the sample (for
    DReG). Gradients flow through reparameterized sites.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown particle strategy {strategy!r}; choose one of {STRATEGIES}")
    if particle_dim is None:
        particle_dim = particle_dim_of(model, guide, *args, **kwargs)
    batch = batch_size_of(args)
    plate_size, rows = num_particles, batch
    if strategy == "replicate":
        args, plate_size, rows = replicate_data(args, num_particles), None, batch * num_particles
    guide_run = enumerating(guide, particle_dim - 1)
    with _particle_plate(plate_size, particle_dim):
        guide_trace = prune_subsample_sites(poutine.trace(guide_run).get_trace(*args, **kwargs))
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
    model_run = enumerating(model)
    with _particle_plate(plate_size, particle_dim):
        model_trace = poutine.trace(poutine.replay(model_run, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
    model_trace = prune_subsample_sites(model_trace)
    model_trace.compute_log_prob()
    n_part = num_particles if plate_size is not None else 1
    enumerated = enumerated_sites(guide_trace, model_trace)
    if enumerated:
        if detach_guide:
            raise ConfigError(
                f"DReG needs every latent site reparameterized, but {enumerated} are "
                "enumerated; use --objective iwae"
            )
        log_p = {
            "+".join(enumerated): enumerated_log_weight(
                model_trace, guide_trace, enumerated, particle_dim, data_plate, n_part, rows
            )
        }
        log_q: dict[str, torch.Tensor] = {}
    else:
        log_p = site_terms(model_trace, particle_dim, data_plate, n_part, rows)
        log_q = site_terms(guide_trace, particle_dim, data_plate, n_part, rows)
    if not log_p:
        raise DataError("the model has no sample sites; nothing to weigh")
    if strategy == "replicate":
        log_p = {n: t.reshape(num_particles, batch) for n, t in log_p.items()}
        log_q = {n: t.reshape(num_particles, batch) for n, t in log_q.items()}
    return ParticleTerms(
        log_p, log_q, latent, z, z_leaf, guide_trace, model_trace, enumerated, strategy
    )


def log_weights(
    model: Callable,
    guide: Callable,
    x: torch.Tensor,
    num_particles: int,
    *args,
    particle_dim: int | None = None,
    data_plate: str = "data",
    strategy: str = "vectorized",
    **kwargs,
) -> torch.Tensor:
    """Per-example importance log weights log p(x_n, z_nk) - log q(z_nk | x_n).

    x: (batch, *event_shape), further positional args (batch, ...) -> (num_particles, batch).
    Enumerated sites are summed out (:func:`enumerated_log_weight`). Gradients flow
    (reparameterized sites), so this also serves objectives.
    """
    return particle_terms(
        model, guide, num_particles, x, *args,
        particle_dim=particle_dim, data_plate=data_plate, strategy=strategy, **kwargs,
    ).log_weights()


def choose_strategy(
    model: Callable,
    guide: Callable,
    *args,
    particle_dim: int | None = None,
    data_plate: str = "data",
    candidates: tuple[str, ...] = STRATEGIES,
    fix: str | None = None,
    **kwargs,
) -> str:
    """The first of ``candidates`` under which the programs run with 2 particles on ``args``
    (a small batch) and give (2, batch) weights: by default ``"vectorized"``, else
    ``"replicate"``. Refuses, naming each failure, when none does. The random state is left
    as it was. ``particle_dim`` (default: from the plates, :func:`particle_dim_of`);
    ``fix``: the advice the refusal ends with (default: what to change)."""
    failures = []
    with kept_random_state():
        if particle_dim is None:
            particle_dim = particle_dim_of(model, guide, *args, **kwargs)
        for strategy in candidates:
            try:
                with poutine.block():
                    lw = log_weights(
                        model, guide, args[0], 2, *args[1:], particle_dim=particle_dim,
                        data_plate=data_plate, strategy=strategy, **kwargs,
                    )  # fmt: skip
            except PROGRAM_ERRORS as exc:
                failures.append(f"{strategy}: {_first_line(exc)}")
                continue
            if tuple(lw.shape) == (2, batch_size_of(args)):
                return strategy
            failures.append(f"{strategy}: weights of shape {tuple(lw.shape)}")
    fix = fix or (
        "write the model so that every sample site is inside the data plate and batch "
        "dimensions broadcast"
        if tuple(candidates) == STRATEGIES
        else "use strategy='auto'"
    )
    raise DataError(
        f"the programs cannot draw particles {' or '.join(candidates)} "
        f"({'; '.join(failures)}); {fix}"
    )


def chunk_sizes(num_samples: int, chunk: int) -> Iterator[int]:
    """Particle counts of successive chunks: ``chunk`` each, the last one what is left."""
    for k0 in range(0, num_samples, chunk):
        yield min(chunk, num_samples - k0)
