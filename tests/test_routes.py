"""log_likelihood's routes: the library's own VAE takes the fused log weights by default (equal
to the traced ones, same noise), anything else is traced, and the result says which ran."""

from __future__ import annotations

import pyro
import pytest
import torch
from pyro import poutine
from refusals import whole

from pyro_vae import VAE
from pyro_vae.errors import ConfigError, DataError
from pyro_vae.infer import log_likelihood
from pyro_vae.infer.importance import ROUTES, choose_route, register_route
from pyro_vae.models import ModelConfig, build_vae


def _vae(**options) -> VAE:
    pyro.set_rng_seed(0)
    vae = build_vae(ModelConfig(event_shape=(12,), latent_dim=3, hidden=(8,), **options))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # moved from the initial values, as training moves them
        for p in vae.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return vae


def _x(n: int = 10) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.bernoulli(torch.full((n, 12), 0.4), generator=g)


def _estimate(vae: VAE, x: torch.Tensor, **options):
    pyro.set_rng_seed(7)
    return log_likelihood(vae.model, vae.guide, x, num_samples=40, **options)


@pytest.mark.parametrize("threads", [1, pytest.param(2, marks=pytest.mark.several_threads)])
@pytest.mark.parametrize("prior", ["normal", "learned_normal", "mixture"])
def test_the_library_vae_takes_the_fused_route_and_equals_the_traced_one(prior, threads):
    vae, x = _vae(prior=prior), _x()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # with 2, the tiles (and their z) run on worker threads
    try:
        fast, traced = _estimate(vae, x), _estimate(vae, x, route="traced")
    finally:
        torch.set_num_threads(before)
    assert fast.route == "fused" and traced.route == "traced"
    torch.testing.assert_close(fast.per_example, traced.per_example, rtol=0, atol=1e-4)
    torch.testing.assert_close(fast.elbo_per_example, traced.elbo_per_example, rtol=0, atol=1e-4)
    torch.testing.assert_close(fast.ess, traced.ess, rtol=1e-4, atol=1e-4)


def test_a_handler_around_the_call_keeps_the_traced_route():
    vae, x = _vae(), _x()
    with poutine.scale(scale=1.0):
        assert _estimate(vae, x).route == "traced"
    with poutine.block():
        assert _estimate(vae, x).route == "traced"


def test_programs_other_than_the_vae_own_are_traced_and_fused_is_refused_with_the_reason():
    vae, x = _vae(), _x()

    class Custom(VAE):
        pass

    custom = Custom.__new__(Custom)
    custom.__dict__.update(vae.__dict__)
    assert _estimate(custom, x).route == "traced"
    with pytest.raises(
        ConfigError,
        match=whole(
            "route 'fused' does not apply: the model is a Custom, not a pyro_vae VAE; use "
            "route='traced'"
        ),
    ):
        _estimate(custom, x, route="fused")

    def model(x):
        vae.model(x)

    assert _estimate(vae, x, route="auto").route == "fused"
    with pytest.raises(
        ConfigError,
        match=whole(
            "route 'fused' does not apply: the programs are not one pyro_vae VAE's own model and "
            "guide; use route='traced'"
        ),
    ):
        log_likelihood(model, vae.guide, x, num_samples=4, route="fused")
    other = _vae()
    with pytest.raises(
        ConfigError,
        match=whole(
            "route 'fused' does not apply: the programs are not one pyro_vae VAE's own model and "
            "guide; use route='traced'"
        ),
    ):
        log_likelihood(vae.model, other.guide, x, num_samples=4, route="fused")
    with pytest.raises(
        ConfigError,
        match=whole(
            "route 'fused' does not apply: strategy 'replicate' was asked for; use route='traced'"
        ),
    ):
        log_likelihood(vae.model, vae.guide, x, num_samples=4, route="fused", strategy="replicate")
    assert _estimate(vae, x, strategy="replicate").route == "traced"


def test_a_given_log_weights_function_is_recorded_and_not_combined_with_a_route():
    vae, x = _vae(), _x()
    from pyro_vae.infer.trace import log_weights

    def given(x, k):
        return log_weights(vae.model, vae.guide, x, k)

    assert _estimate(vae, x, log_weights_fn=given).route == "given"
    with pytest.raises(
        ConfigError,
        match=whole("log_weights_fn given with route='traced'; give one or the other"),
    ):
        _estimate(vae, x, log_weights_fn=given, route="traced")


def test_unknown_and_taken_route_names_are_refused():
    vae, x = _vae(), _x()
    with pytest.raises(
        ConfigError,
        match=whole("unknown route 'quick'; choose auto, traced or one of ['fused']"),
    ):
        _estimate(vae, x, route="quick")
    for name in ("auto", "traced", "given", "fused"):
        with pytest.raises(
            ConfigError, match=whole(f"route name {name!r} is taken; choose another")
        ):
            register_route(name, lambda *a: "never")
    assert list(ROUTES)[0] == "fused"
    assert choose_route("traced", vae.model, vae.guide, (x,), {})[0] == "traced"


def test_log_likelihood_call_refusals_are_checked_word_for_word():
    vae, x = _vae(), _x()
    with (
        poutine.scale(scale=1.0),
        pytest.raises(
            ConfigError,
            match=whole(
                "route 'fused' does not apply: a Pyro handler is active around the call; "
                "use route='traced'"
            ),
        ),
    ):
        _estimate(vae, x, route="fused")
    with pytest.raises(
        ConfigError, match=whole("num_samples given twice (positionally and as a keyword)")
    ):
        log_likelihood(vae.model, vae.guide, x, 5, num_samples=5)
    with pytest.raises(
        DataError,
        match=whole("no data given; call log_likelihood(model, guide, x, num_samples=K)"),
    ):
        log_likelihood(vae.model, vae.guide, num_samples=5)
    with pytest.raises(
        ConfigError,
        match=whole("unknown strategy 'serial'; choose auto or one of ('vectorized', 'replicate')"),
    ):
        _estimate(vae, x, strategy="serial")
    with pytest.raises(
        ConfigError,
        match=whole("log_weights_fn given with route='fused'; give one or the other"),
    ):
        _estimate(vae, x, route="fused", log_weights_fn=lambda *a: None)


def test_scoring_and_validation_take_the_fused_route_and_record_it(tmp_path):
    from pyro_vae.data import DataSplits
    from pyro_vae.runs.metrics import score, summary

    vae = _vae()
    x = _x(30)
    data = DataSplits("bits", x[:10], x[10:20], x[20:])
    result = score(vae, data, num_samples=20, seed=0)
    assert result.route == "fused" and summary(result)["route"] == "fused"


def test_a_route_asked_for_by_name_is_the_one_taken_even_where_an_earlier_one_applies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a second route registered after ``"fused"`` (which applies to the library's VAE),
    asking for the second runs it and records it, and a second route that does not apply is
    refused with its own reason; ``"auto"`` still takes the first that applies."""
    from pyro_vae.infer.trace import log_weights

    vae, x = _vae(), _x()
    ran = []

    def plain(model, guide, data, kwargs, data_plate, strategy):
        def fn(x, k):
            ran.append(k)
            return log_weights(model, guide, x, k)

        return fn

    monkeypatch.setitem(ROUTES, "plain", plain)
    monkeypatch.setitem(ROUTES, "never", lambda *a: "it recognizes no program")
    assert list(ROUTES) == ["fused", "plain", "never"]
    named = _estimate(vae, x, route="plain")
    assert named.route == "plain" and ran  # its function computed the weights
    given = _estimate(vae, x, log_weights_fn=plain(vae.model, vae.guide, (x,), {}, "data", "auto"))
    torch.testing.assert_close(named.per_example, given.per_example, rtol=0, atol=0)
    with pytest.raises(
        ConfigError,
        match=whole("route 'never' does not apply: it recognizes no program; use route='traced'"),
    ):
        _estimate(vae, x, route="never")
    assert _estimate(vae, x).route == "fused"


def test_choose_route_left_to_its_defaults_takes_the_fused_route_for_the_library_vae():
    """``choose_route`` called as a user calls it, without a strategy, takes the fused route
    (the fused provider declines any strategy but ``auto`` and ``vectorized``)."""
    vae, x = _vae(), _x()
    name, log_weights = choose_route("auto", vae.model, vae.guide, (x,), {})
    assert name == "fused" and callable(log_weights)


def test_the_fused_route_asked_for_with_extra_arguments_is_refused_with_the_reason_whole():
    vae, x = _vae(), _x()
    reason = "route 'fused' does not apply: the programs are given arguments beyond the data; "
    for data, kwargs in (((x, x), {}), ((x,), {"scale": 1.0})):
        with pytest.raises(ConfigError, match=whole(reason + "use route='traced'")):
            choose_route("fused", vae.model, vae.guide, data, kwargs)
