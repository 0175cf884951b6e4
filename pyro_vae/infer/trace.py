"""The one trace helper: guide with K particles, model replayed, per-site terms (K, batch).

Every estimator and objective in [`pyro_vae.infer`][] weighs a model/guide pair the same way:

    log w_nk = sum_{sites s of the model} log p_s - sum_{sites s of the guide} log q_s,

with z_k ~ q(z | x) drawn as K particles in a plate on the left of every plate the programs use
(vectorized), the model replayed on the guide's values, and each site's log-probability summed over
every dimension except the particle dimension and the data plate's, so a minibatch is never weighed
jointly (as ``pyro.infer.importance.vectorized_importance_weights`` would). Roles (observed, latent,
enumerated) come from the traces, never from site names. Programs are checked against each other
first ([`check_program`][pyro_vae.infer.trace.check_program]): a program these estimators cannot
score is refused with the site and the fix.
"""

from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import pyro
import pyro.util
import torch
from pyro import poutine
from pyro.distributions import Delta, Independent
from pyro.distributions.torch_distribution import ExpandedDistribution
from pyro.distributions.util import scale_and_mask
from pyro.infer.autoguide import AutoGuide
from pyro.ops.contract import contract_to_tensor
from pyro.ops.rings import LogRing
from pyro.poutine.enum_messenger import EnumMessenger
from pyro.poutine.messenger import Messenger
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
        """Standard error of [`mean`][pyro_vae.infer.trace.PerExampleEstimate.mean] over data
        points ([`stderr`][pyro_vae.infer.trace.stderr])."""
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


def is_deterministic(site: dict) -> bool:
    """Whether a sample site was made by ``pyro.deterministic``: it records a value and has
    no density (a ``Delta`` masked out), so it is neither observed data nor a latent site."""
    return bool(site["infer"].get("_deterministic"))


def _sample_sites(trace) -> Iterator[tuple[str, dict]]:
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not is_deterministic(site):
            yield name, site


def is_unit_scale(scale) -> bool:
    """Whether a site's scale factor is 1 (a number, or a tensor of ones)."""
    if isinstance(scale, torch.Tensor):
        return bool((scale == 1).all())
    return scale == 1


def scaled_sites(*traces) -> dict[str, object]:
    """Site name -> the scale factor a handler put on it (``poutine.scale``, an annealing
    factor, a user's ``scale_factor``), for every sample site whose scale is not 1."""
    found: dict[str, object] = {}
    for trace in traces:
        for n, s in _sample_sites(trace):
            if not is_unit_scale(s["scale"]) and n not in found:
                found[n] = s["scale"]
    return found


def common_scale(*traces, what: str = "the IWAE bound") -> float:
    """The one scale factor shared by every sample site of ``traces`` (1.0 without handlers).

    Refuses (naming the sites and their factors) scales that differ between sites or from
    point to point: ``what`` (a log-mean of weights) can only carry a factor common to the
    whole program, such as the minibatch factor N / B, applied to the bound as a whole.
    """
    found: dict[str, float] = {}
    for trace in traces:
        for n, s in _sample_sites(trace):
            scale = s["scale"]
            if isinstance(scale, torch.Tensor):
                if scale.numel() != 1:
                    raise ConfigError(
                        f"site {n!r} carries a scale factor that varies from point to point "
                        f"(shape {tuple(scale.shape)}); {what} cannot weigh points differently, "
                        "so drop the poutine.scale handler (or weigh the per-point losses "
                        "yourself)"
                    )
                scale = float(scale)
            found.setdefault(n, float(scale))
    values = sorted(set(found.values()))
    if len(values) > 1:
        lo = next(n for n, v in found.items() if v == values[0])
        hi = next(n for n, v in found.items() if v == values[-1])
        raise ConfigError(
            f"site {lo!r} is scaled by {values[0]:g} and site {hi!r} by {values[-1]:g} "
            f"(poutine.scale, an annealing factor); {what} is the log of a mean of weights, so "
            "only a factor shared by every site (the minibatch factor N / B) can scale it; "
            "anneal with the objective's KL weight (--beta, --warmup) instead of the handler"
        )
    return values[0] if values else 1.0


def compute_log_density(trace) -> None:
    """Each sample site's log-density into ``site["log_prob"]``, masked but NOT scaled.

    A scale factor (``poutine.scale``: minibatch N/B, KL annealing) is a training device, not part
    of p(x): the estimators score the program as written without it (the sites are listed by
    [`scaled_sites`][pyro_vae.infer.trace.scaled_sites]), while a mask (``.mask(m)``,
    ``poutine.mask``: ragged sequences, missing values) removes a site's element from the program
    and is kept.
    """
    trace.compute_log_prob()
    for _, site in _sample_sites(trace):
        if not is_unit_scale(site["scale"]):
            site["log_prob"] = scale_and_mask(site["unscaled_log_prob"], mask=site["mask"])


def latent_sites(guide_trace, model_trace=None) -> list[str]:
    """Names of the latent sites: sample sites of the guide the model does not observe."""
    observed = set() if model_trace is None else set(observed_sites(model_trace))
    return [n for n, s in _sample_sites(guide_trace) if not s["is_observed"] and n not in observed]


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

    ``order``: the latent sites in the guide's order. ``guide_parents[s]``: the latent sites whose
    drawn values q(s | ...) depends on; ``model_parents[s]``: those p(s | ...) depends on (evaluated
    at the guide's draws). Found by differentiating each site's log-density with respect to the
    other sites' reparameterized draws, so a dependency on a site drawn without a pathwise gradient
    (a discrete label) is not seen; see
    [`mean_field_conflict`][pyro_vae.infer.trace.LatentDependencies.mean_field_conflict].
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


class _LeafDraws(Messenger):
    """Draw each continuous latent site as a leaf tensor that requires grad, whatever the
    guide's parameters are: d(log-density of a later site) / d(draw) then exists exactly when
    that site depends on the draw (a guide with fixed parameters shows its dependencies too)."""

    def _process_message(self, msg) -> None:
        if msg["type"] != "sample" or msg["is_observed"] or msg["value"] is not None:
            return
        if msg["infer"].get("enumerate") or msg["infer"].get("_deterministic"):
            return
        value = msg["fn"](*msg["args"], **msg["kwargs"])
        if value.is_floating_point() and not msg["fn"].support.is_discrete:
            value = value.detach().requires_grad_()
        msg["value"] = value


def site_parents(trace, values: dict[str, torch.Tensor], site: str) -> set[str]:
    """The sites among ``values`` (name -> drawn tensor) whose draw the log-density of
    ``trace``'s ``site`` (evaluated at its detached value) has a gradient with respect to."""
    others = [t for t in values if t != site and values[t].requires_grad]
    if not others:
        return set()
    lp = trace.nodes[site]["fn"].log_prob(trace.nodes[site]["value"].detach()).sum()
    if not lp.requires_grad:
        return set()
    grads = torch.autograd.grad(
        lp, [values[t] for t in others], allow_unused=True, retain_graph=True
    )
    return {t for t, g in zip(others, grads, strict=True) if g is not None}


def latent_dependencies(model: Callable, guide: Callable, *args, **kwargs) -> LatentDependencies:
    """[`LatentDependencies`][pyro_vae.infer.trace.LatentDependencies] of a model/guide pair, from
    one traced pass on ``args``.

    Continuous draws are made leaves (``_LeafDraws``), so the dependencies are found
    whether or not the guide has parameters. The pass runs with gradients on and leaves the
    caller's random stream unchanged.
    """
    with kept_random_state(), poutine.block(), torch.enable_grad():
        guide_trace, model_trace = trace_pair(model, _LeafDraws()(guide), *args, **kwargs)
        order = tuple(latent_sites(guide_trace, model_trace))
        values = {n: guide_trace.nodes[n]["value"] for n in order}
        guide_parents = {s: site_parents(guide_trace, values, s) for s in order}
        model_parents: dict[str, set[str]] = {}
        model_order = [n for n in model_trace.nodes if n in values]
        for i, s in enumerate(model_order):
            found = site_parents(model_trace, values, s)
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
    """What [`check_program`][pyro_vae.infer.trace.check_program] learned from the traces."""

    latent: list[str]
    particle_dim: int
    enumerated: tuple[str, ...] = ()
    #: sites whose log-density a handler scales; the estimators score them unscaled
    scaled: tuple[str, ...] = ()


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


#: Words of torch's messages about mixed dtypes (matmul, cat, linear layers).
_DTYPE_WORDS = ("dtype", "scalar type", "Double and Float", "Float and Double")


def program_failure(exc: BaseException, args: tuple, kwargs: dict) -> str:
    """The refusal for programs that raised ``exc`` on the probe batch ``args``: names a mixed
    dtype, or per-example keyword tensors (keywords are passed unchanged, not sliced), before
    falling back to advice about the data's shape."""
    first = _first_line(exc)
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if any(w in first for w in _DTYPE_WORDS):
        dtypes = sorted({str(t.dtype).replace("torch.", "") for t in tensors})
        return (
            f"the programs fail on data of dtype {', '.join(dtypes)} with a dtype error "
            f"({first}); convert the data to the model's dtype (x.float()) or the model to "
            "the data's (model.double())"
        )
    n = batch_size_of(args)
    keywords = [
        k for k, v in kwargs.items() if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] > n
    ]
    if keywords:
        k = keywords[0]
        return (
            f"the programs fail on a batch of {n} points ({first}) and keyword {k!r} is a tensor "
            f"of shape {tuple(kwargs[k].shape)}; keywords are passed unchanged to every batch, "
            f"so pass per-example tensors positionally after the data, "
            f"e.g. log_likelihood(model, guide, x, {k}), and they are sliced with it"
        )
    shapes = [tuple(t.shape) for t in tensors]
    return (
        f"the model cannot read data of shape {shapes} ({first}); pass data shaped "
        "(N, *event_shape) as in training"
    )


def is_point_mass(fn) -> bool:
    """Whether ``fn`` is a point mass (``Delta``, also inside ``Independent`` or expanded)."""
    while isinstance(fn, Independent | ExpandedDistribution):
        fn = fn.base_dist
    return isinstance(fn, Delta)


def _refuse_autoguide(guide: Callable) -> None:
    owner = guide if isinstance(guide, AutoGuide) else getattr(guide, "__self__", None)
    if isinstance(owner, AutoGuide):
        raise ConfigError(
            f"the guide is Pyro's autoguide {type(owner).__name__}: it is not amortized (one "
            "set of parameters per latent site of the training batch, no q(z | x) for other "
            "data points, auxiliary sites the model does not have), so it cannot score data "
            "point by point; write an amortized guide, an encoder that maps x to the parameters "
            "of q(z | x) inside pyro.plate('data', ...) (as pyro_vae's VAE does)"
        )


def check_program(
    model: Callable,
    guide: Callable,
    *args,
    data_plate: str = "data",
    restore_rng: bool = False,
    allow_point_mass: bool = False,
    **kwargs,
) -> ProgramInfo:
    """Check model and guide against each other on a small batch before any number is made.

    args: tensors each (n, ...). Refuses (with the site and the fix): a latent site of the model
    that the guide neither samples nor marks for enumeration, a guide site the model does not have,
    no observed site, a site outside the data plate, a data plate whose size is not n or that
    subsamples (its log-probs would be rescaled by N / n), values broadcast against their
    distribution, and a site that reads an enumerated site outside a plate that one sits in. Also
    refused: a Pyro autoguide (not amortized), a ``pyro.deterministic`` site in place of an
    observation (no density), and, unless ``allow_point_mass``, a guide site that is a point
    mass (``Delta``, ``AutoDelta``: log p(x, z*) is not an estimate of log p(x)). Returns the
    latent sites, the particle dimension, the enumerated sites and the sites a handler scales
    ([`ProgramInfo`][pyro_vae.infer.trace.ProgramInfo]). ``restore_rng``: leave the random state
    as it was.
    """
    _refuse_autoguide(guide)
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
        raise DataError(program_failure(exc, args, kwargs)) from exc
    if not observed_sites(model_trace):
        for name, site in model_trace.nodes.items():
            if site["type"] == "sample" and is_deterministic(site):
                raise DataError(
                    f"the model observes no sample site: {name!r} is a pyro.deterministic "
                    "site, which records a value without a density, so there is no likelihood "
                    f"to score; observe the data through a distribution: pyro.sample({name!r}, "
                    "dist.Normal(f(z), sigma).to_event(1), obs=x)"
                )
        raise DataError(
            "the model observes no sample site; give the data to pyro.sample(..., obs=x) so "
            "there is a likelihood to score"
        )
    enumerated = enumerated_sites(enum_guide, enum_model)
    for name, site in _sample_sites(guide_trace):
        if not (allow_point_mass or site["is_observed"]) and is_point_mass(site["fn"]):
            raise ConfigError(
                f"guide site {name!r} is a point mass (a Delta, as a MAP guide or AutoDelta "
                "draws): every importance weight is p(x, z*) at that one "
                "point (ESS = K by construction), which is not an estimate of log p(x); give "
                f"{name!r} a density in the guide (e.g. dist.Normal(loc, scale)), or report "
                "log p(x, z*) as what it is, the joint density at the point estimate"
            )
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
    if enumerated:
        check_enumeration_plates(enum_guide, enum_model, enumerated)
    return ProgramInfo(
        latent_sites(guide_trace, model_trace),
        pdim,
        tuple(enumerated),
        tuple(scaled_sites(guide_trace, model_trace)),
    )


def probe_data(model: Callable, data: tuple) -> tuple:
    """The small batch the programs are checked on: 2 points, or 1 for a model bound to an
    object that declares its ``event_shape`` (a VAE: the data's shape is checked directly)."""
    owner = getattr(model, "__self__", None)
    return slice_data(data, 0, 1 if getattr(owner, "event_shape", None) is not None else 2)


def data_plate_frame(
    name: str, site: dict, data_plate: str, needs: str = "per-example weights need"
):
    """The frame of plate ``data_plate`` in ``site``'s plate stack, or a
    [`DataError`][pyro_vae.errors.DataError] naming the site, the plate and what needs it
    (``needs``, e.g. "per-example weights need")."""
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
    """One sample site's log-density ``site["log_prob"]`` (masked, unscaled) as (particles, batch).

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


def _negated(t: torch.Tensor) -> torch.Tensor:
    """-t for a packed tensor (``pyro.ops.packed``), keeping its dimension names."""
    out = -t
    out._pyro_dims = t._pyro_dims
    return out


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

    With y the enumerated sites (every value at once, ``poutine.enum``) and z the sampled
    ones, drawn after y where the guide conditions on it:

        log w = log sum_y p(x, y, z_y) / q(z_y | x, y),

    so E[w] = sum_y p(x, y) = p(x): an unbiased weight, whatever q(y | x) is (its log-density
    is left out; the sum replaces sampling y). The sum is the sum-product contraction Pyro's
    ``TraceEnum_ELBO`` runs (``pyro.ops.contract.contract_to_tensor`` in the log ring, tensor
    variable elimination), so enumerated sites in a ``pyro.markov`` chain (an HMM, whose
    enumeration dimensions are recycled along the chain) are summed by the forward algorithm,
    not as independent factors; plates other than the particles' and the data plate are
    product-reduced. ``guide_trace=None``: the model's log p(x, z) with y summed out (no
    proposal terms). Log-densities are read from ``site["log_prob"]``
    ([`compute_log_density`][pyro_vae.infer.trace.compute_log_density]: masked, not scaled).
    """
    traces = [model_trace] if guide_trace is None else [guide_trace, model_trace]
    plate_to_symbol = _pack(traces)
    owners = _enumeration_owners(traces, enumerated)
    tree: OrderedDict = OrderedDict()
    for trace, sign in zip(traces, [-1, 1] if guide_trace is not None else [1], strict=True):
        for n, s in _sample_sites(trace):
            if sign < 0 and n in enumerated:
                continue  # a guide site summed out: q(y | x) is not part of the weight
            data_plate_frame(n, s, data_plate)
            _check_inside_plates(n, s, owners)
            ordinal = frozenset(
                plate_to_symbol[f.name] for f in s["cond_indep_stack"] if f.vectorized
            )
            term = s["packed"]["log_prob"]
            tree.setdefault(ordinal, []).append(term if sign > 0 else _negated(term))
    plates = set(plate_to_symbol.values())
    sum_dims = {d for terms in tree.values() for t in terms for d in t._pyro_dims} - plates
    kept = [plate_to_symbol[p] for p in ("particles", data_plate) if p in plate_to_symbol]
    present = {d for terms in tree.values() for t in terms for d in t._pyro_dims}
    target = frozenset(d for d in kept if d in present)  # size-1 plates are not packed
    total = contract_to_tensor(tree, sum_dims, target_ordinal=target, ring=LogRing())
    sizes = dict(zip(total._pyro_dims, total.shape, strict=True))
    total = total.permute([total._pyro_dims.index(d) for d in kept if d in sizes])
    shape = [sizes.get(d, 1) for d in kept]
    if "particles" not in plate_to_symbol:  # replicated particles: no particle plate
        shape = [1, *shape]
    return total.reshape(shape).expand(num_particles, batch)


def _pack(traces: list) -> dict[str, str]:
    """Pack the traces' log-densities (``Trace.pack_tensors``) with one plate-to-symbol map
    across them; the map."""
    plate_to_symbol: dict[str, str] = {}
    for trace in traces:
        trace.pack_tensors(plate_to_symbol)
        plate_to_symbol = trace.plate_to_symbol
    return plate_to_symbol


def _enumeration_owners(traces: list, enumerated: list[str]) -> dict[str, tuple[str, set[str]]]:
    """Each enumerated site's enumeration dimension (its symbol in the packed traces): the
    site's name and the names of the plates it sits in."""
    owners: dict[str, tuple[str, set[str]]] = {}
    for trace in traces:
        for name in enumerated:
            site = trace.nodes.get(name)
            dim = None if site is None else site["infer"].get("_enumerate_dim")
            if dim is None:
                continue
            symbol = site["infer"]["_dim_to_symbol"][dim]
            owners[symbol] = (name, {f.name for f in site["cond_indep_stack"] if f.vectorized})
    return owners


def check_enumeration_plates(guide_trace, model_trace, enumerated: Sequence[str]) -> None:
    """Refuse (``DataError``, naming both sites and the plate) a site of enumerated traces
    that reads an enumerated site outside a plate that one sits in (``_check_inside_plates``).
    The traces' log-densities are computed and packed."""
    traces = [guide_trace, model_trace]
    for trace in traces:
        compute_log_density(trace)
    _pack(traces)
    owners = _enumeration_owners(traces, list(enumerated))
    for trace in traces:
        for name, site in _sample_sites(trace):
            _check_inside_plates(name, site, owners)


def _check_inside_plates(name: str, site: dict, owners: dict[str, tuple[str, set[str]]]) -> None:
    """Refuse a site that reads an enumerated site outside a plate that one sits in.

    Enumeration gives the enumerated site one dimension for all elements of its plates, so a
    site outside such a plate that reads it sees every element take the same value at once:
    a different program from the one sampled (e.g. ``x ~ N(mu[c].sum(-1), 1)`` after ``c`` in
    a plate of features). Pyro's ``TraceEnum_ELBO`` scores that other program silently.
    """
    plates = {f.name for f in site["cond_indep_stack"] if f.vectorized}
    for symbol in site["packed"]["log_prob"]._pyro_dims:
        owner = owners.get(symbol)
        if owner is None or owner[0] == name:
            continue
        outside = sorted(owner[1] - plates)
        if outside:
            raise DataError(
                f"site {name!r} reads the enumerated site {owner[0]!r} outside its plate "
                f"{outside[0]!r}, where enumeration gives every element of the plate one value; "
                f"sum {owner[0]!r} out inside the model (e.g. dist.MixtureSameFamily) or mark "
                f"it infer={{'enumerate': None}} to sample it"
            )


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
        log_p: model site name -> (K, batch) log-density (observed and latent). With enumerated
            sites, one entry (their names joined by ``+``): the whole log weight with them summed
            out ([`enumerated_log_weight`][pyro_vae.infer.trace.enumerated_log_weight]), and
            ``log_q`` is empty.
        log_q: guide site name -> (K, batch) log-density.
        latent: names of the latent sites (found from the traces).
        z: latent name -> the guide's sample; z_leaf: the leaf it was scored at (DReG), else z.
            Vectorized: (K, ..., batch, *event); replicated: (K * batch, ..., *event), copy k
            of point b at k * batch + b.
        enumerated: names of the sites summed out exactly.
        strategy: ``"vectorized"`` or ``"replicate"`` (``STRATEGIES``).
        scales: site -> the scale factor a handler put on it, for sites whose scale is not 1
            ([`scaled_sites`][pyro_vae.infer.trace.scaled_sites]); the terms are unscaled
            ([`compute_log_density`][pyro_vae.infer.trace.compute_log_density]).
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
    scales: dict[str, object] = field(default_factory=dict)

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
        t.repeat(copies, *([1] * (t.dim() - 1))) if isinstance(t, torch.Tensor) else t for t in args
    )


def _check_drawn_per_particle(name: str, site: dict, particle_dim: int, k: int) -> None:
    """Refuse a guide site whose draw has no particle dimension of size ``k``: a distribution
    that is not a Pyro distribution (a plain ``torch.distributions`` object) is not broadcast by
    the particle plate, so every particle would share one draw, and the K weights would look
    independent (ESS = K) while being one. The vectorized strategy fails on it
    ([`choose_strategy`][pyro_vae.infer.trace.choose_strategy] then replicates the data)."""
    if site["infer"].get("_enumerate_dim") is not None:
        return  # enumerated: every value, not draws
    fn = site["fn"]
    batch = site["value"].shape[: site["value"].dim() - len(getattr(fn, "event_shape", ()))]
    if len(batch) < -particle_dim or batch[particle_dim] != k:
        raise DataError(
            f"guide site {name!r} draws one value for all {k} particles: "
            f"{type(fn).__name__} is not a pyro.distributions class"
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
    ([`replicate_data`][pyro_vae.infer.trace.replicate_data]), for programs that cannot carry a
    dimension on the left; the terms are the same in distribution either way. Sites marked for
    enumeration are summed out exactly
    ([`enumerated_log_weight`][pyro_vae.infer.trace.enumerated_log_weight]). With ``detach_guide``
    each latent site is scored with its distribution's parameters detached, at a leaf copy of the
    sample (for DReG). Gradients flow through reparameterized sites.
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
    if plate_size is not None and num_particles > 1:
        for n in latent:
            _check_drawn_per_particle(n, guide_trace.nodes[n], particle_dim, num_particles)
    z = {n: guide_trace.nodes[n]["value"] for n in latent}
    if detach_guide:
        for n in latent:
            site = guide_trace.nodes[n]
            how = (
                "enumerated" if site["infer"].get("_enumerate_dim") is not None
                else None if site["fn"].has_rsample
                else f"a {type(site['fn']).__name__} without rsample (discrete or not "
                "reparameterizable)"
            )  # fmt: skip
            if how is not None:
                raise ConfigError(
                    f"dreg needs every latent guide site reparameterized, but site {n!r} is "
                    f"{how}; use --objective iwae (it adds score-function terms for such sites) "
                    "or --objective elbo"
                )
        z_leaf = {n: v.detach().requires_grad_() for n, v in z.items()}
        for n in latent:
            site = guide_trace.nodes[n]
            fn = detach_distribution(site["fn"])
            site["value"] = z_leaf[n]
            site["log_prob"] = scale_and_mask(fn.log_prob(z_leaf[n]), mask=site["mask"])
    else:
        z_leaf = z
        compute_log_density(guide_trace)
    model_run = enumerating(model)
    with _particle_plate(plate_size, particle_dim):
        model_trace = poutine.trace(poutine.replay(model_run, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
    model_trace = prune_subsample_sites(model_trace)
    compute_log_density(model_trace)
    n_part = num_particles if plate_size is not None else 1
    enumerated = enumerated_sites(guide_trace, model_trace)
    if enumerated:
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
        log_p,
        log_q,
        latent,
        z,
        z_leaf,
        guide_trace,
        model_trace,
        enumerated,
        strategy,
        scaled_sites(guide_trace, model_trace),
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
    Enumerated sites are summed out
    ([`enumerated_log_weight`][pyro_vae.infer.trace.enumerated_log_weight]). Gradients flow
    (reparameterized sites), so this also serves objectives.
    """
    return particle_terms(
        model,
        guide,
        num_particles,
        x,
        *args,
        particle_dim=particle_dim,
        data_plate=data_plate,
        strategy=strategy,
        **kwargs,
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
    """The first of ``candidates`` under which the programs run with 2 particles on ``args`` (a
    small batch) and give (2, batch) weights: by default ``"vectorized"``, else ``"replicate"``.
    Refuses, naming each failure, when none does. The random state is left as it was.
    ``particle_dim`` (default: from the plates,
    [`particle_dim_of`][pyro_vae.infer.trace.particle_dim_of]);
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
