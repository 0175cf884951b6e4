"""The tracing helpers' answers read whole: the refusal for programs that fail on the probe
batch (the exception's first line, the data's dtypes, the keywords named), the latent-dependency
maps and their conflicts, and the registry of log-weight routes.

The running example is z ~ N(0, 1), x | z ~ N(z, 1): p(x) = N(0, 2) and p(z | x) =
N(x / 2, 1/2).
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from assumption_programs import X, exact_guide, exact_log_px
from assumption_programs import plain_model as model
from pyro import poutine
from refusals import whole

from pyro_vae.errors import ConfigError, DataError
from pyro_vae.infer import importance, log_likelihood
from pyro_vae.infer.trace import LatentDependencies, latent_dependencies


def failing_model(error: Exception):
    """The running model, raising ``error`` once it has drawn z."""

    def raising_model(x, *rest, **kwargs):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            raise error

    return raising_model


# --- programs that fail on the probe batch ----------------------------------------------------


def test_a_failure_without_a_message_is_named_by_its_type_and_a_long_one_is_cut_at_160():
    with pytest.raises(
        DataError,
        match=whole(
            "the model cannot read data of shape [(2, 1)] (TypeError); pass data shaped "
            "(N, *event_shape) as in training"
        ),
    ):
        log_likelihood(failing_model(TypeError()), exact_guide, X, num_samples=4)
    sentence = "the decoder reads 6 features of every point but was given 1 of them; "
    long = ValueError(3 * sentence + "\nsecond line")
    assert len(sentence) == 69
    with pytest.raises(
        DataError,
        match=whole(
            "the model cannot read data of shape [(2, 1)] (the decoder reads 6 features of every "
            "point but was given 1 of them; the decoder reads 6 features of every point but was "
            "given 1 of them; the decoder reads 6 fe); pass data shaped (N, *event_shape) as in "
            "training"
        ),
    ):
        log_likelihood(failing_model(long), exact_guide, X, num_samples=4)


def test_a_dtype_failure_names_every_dtype_of_the_data():
    net = torch.nn.Linear(1, 1)

    def labelled_model(x, y):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(net(z) + y[:, None], 1.0).to_event(1), obs=x)

    def labelled_guide(x, y):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x / 2, math.sqrt(0.5)).to_event(1))

    labels = torch.arange(5)
    with pytest.raises(
        DataError,
        match=whole(
            "the programs fail on data of dtype float64, int64 with a dtype error (mat1 and mat2 "
            "must have the same dtype, but got Double and Float); convert the data to the "
            "model's dtype (x.float()) or the model to the data's (model.double())"
        ),
    ):
        log_likelihood(labelled_model, labelled_guide, X.double(), labels, num_samples=4)


def test_only_keyword_tensors_longer_than_the_probe_batch_are_named_in_a_failure():
    """The probe batch has 2 points: a number, a 0-dim tensor and a tensor of 2 entries are
    not per-example data the batch could have been sliced from; a tensor of 5 entries is."""
    error = ValueError("mat1 and mat2 shapes cannot be multiplied (2x1 and 6x8)")
    quiet = {"temperature": 2.0, "offset": torch.tensor(0.5), "pair": torch.zeros(2)}
    with pytest.raises(
        DataError,
        match=whole(
            "the model cannot read data of shape [(2, 1)] (mat1 and mat2 shapes cannot be "
            "multiplied (2x1 and 6x8)); pass data shaped (N, *event_shape) as in training"
        ),
    ):
        log_likelihood(failing_model(error), exact_guide, X, num_samples=4, **quiet)
    with pytest.raises(
        DataError,
        match=whole(
            "the programs fail on a batch of 2 points (mat1 and mat2 shapes cannot be multiplied "
            "(2x1 and 6x8)) and keyword 'weights' is a tensor of shape (5, 3); keywords are "
            "passed unchanged to every batch, so pass per-example tensors positionally after "
            "the data, e.g. log_likelihood(model, guide, x, weights), and they are sliced with it"
        ),
    ):
        log_likelihood(
            failing_model(error), exact_guide, X, num_samples=4, **quiet, weights=torch.ones(5, 3)
        )


# --- latent dependencies ---------------------------------------------------------------------


def test_an_auxiliary_guide_site_has_guide_parents_only_and_no_mean_field_conflict():
    """The guide draws u (a site the model does not have) and then z from it: q(z | u) is a
    dependent guide site, and u has no model density, so no model map entry and no conflict."""

    def auxiliary_guide(x):
        with pyro.plate("data", x.shape[0]):
            u = pyro.sample("u", dist.Normal(torch.zeros(1), 1.0).to_event(1))
            pyro.sample("z", dist.Normal(x / 2 + u, math.sqrt(0.5)).to_event(1))

    deps = latent_dependencies(model, auxiliary_guide, X)
    assert deps == (("u", "z"), {"u": set(), "z": {"u"}}, {"z": set()})
    assert deps.mean_field_conflict() is None
    assert deps.dependent_guide_site() == ("z", "u")


def test_dependency_maps_given_by_hand_read_a_missing_entry_as_no_parent():
    """Sites left out of a map have no parents there; a model parent the guide does not draw
    (summed out in the model) is drawn before every guide site; a site is not its own conflict."""
    sparse = LatentDependencies(("z1", "z2"), {}, {})
    assert sparse.dependent_guide_site() is None and sparse.mean_field_conflict() is None
    outside = LatentDependencies(("z1", "z2"), {"z2": {"z1"}}, {"z1": {"y"}, "z2": {"y", "z1"}})
    assert outside.mean_field_conflict() is None
    assert outside.dependent_guide_site() == ("z2", "z1")
    itself = LatentDependencies(("z1", "z2"), {}, {"z1": {"z1"}, "z2": {"z2"}})
    assert itself.mean_field_conflict() is None
    top_down = LatentDependencies(("z1", "z2"), {}, {"z1": {"y", "z2"}})
    assert top_down.mean_field_conflict() == ("z1", "z2")


# --- the registry of routes ------------------------------------------------------------------


def test_a_registered_route_is_taken_by_name_and_by_auto_and_its_name_is_then_taken(monkeypatch):
    monkeypatch.setattr(importance, "ROUTES", dict(importance.ROUTES))
    calls = []

    def exact_route(model_, guide_, data, kwargs, data_plate, strategy):
        """Every log weight of the exact-posterior guide is log p(x) itself."""
        calls.append((model_, guide_, data, kwargs, data_plate, strategy))
        if guide_ is not exact_guide:
            return "it knows only the exact posterior"
        return lambda x, k: exact_log_px(x).expand(k, -1)

    def refuse(*provider_args):
        return "it never applies"

    importance.register_route("exact", exact_route)
    importance.register_route("never", refuse)
    assert list(importance.ROUTES) == ["fused", "exact", "never"]
    r = log_likelihood(model, exact_guide, X, num_samples=4, route="exact")
    assert calls == [(model, exact_guide, (X,), {}, "data", "auto")]
    assert r.route == "exact" and r.num_samples == 4
    torch.testing.assert_close(r.per_example, exact_log_px(X))
    torch.testing.assert_close(r.elbo_per_example, exact_log_px(X))
    torch.testing.assert_close(r.ess, torch.full((5,), 4.0))
    assert log_likelihood(model, exact_guide, X, num_samples=4).route == "exact"
    with pytest.raises(
        ConfigError,
        match=whole("route 'never' does not apply: it never applies; use route='traced'"),
    ):
        log_likelihood(model, exact_guide, X, num_samples=4, route="never")
    with pytest.raises(ConfigError, match=whole("route name 'exact' is taken; choose another")):
        importance.register_route("exact", refuse)
    assert importance.ROUTES["exact"] is exact_route
    with pytest.raises(
        ConfigError,
        match=whole(
            "unknown route 'quick'; choose auto, traced or one of ['exact', 'fused', 'never']"
        ),
    ):
        log_likelihood(model, exact_guide, X, num_samples=4, route="quick")


def test_the_particle_dim_is_the_first_free_dim_left_of_every_plate():
    """-1 for programs without plates; one left of the outermost vectorized plate of either
    program otherwise."""
    from pyro_vae.infer.trace import plate_particle_dim

    def traced(*dims):
        def program():
            stack = [pyro.plate(f"p{d}", 2, dim=d) for d in dims]
            for plate in stack:
                plate.__enter__()
            pyro.sample("z", dist.Normal(0.0, 1.0))
            for plate in reversed(stack):
                plate.__exit__(None, None, None)

        return poutine.trace(program).get_trace()

    assert plate_particle_dim(traced(), traced()) == -1
    assert plate_particle_dim(traced(-1), traced()) == -2
    assert plate_particle_dim(traced(), traced(-1, -3)) == -4
