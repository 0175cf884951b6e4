"""ModelConfig refuses every wrong value with a ConfigError naming the key; nothing is built."""

from __future__ import annotations

import errno
import json
import math
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from refusals import whole

from pyro_vae.errors import ConfigError
from pyro_vae.models import ModelConfig
from pyro_vae.parts import ARCHS, LIKELIHOODS, POSTERIORS, PRIORS, StandardNormal

EVENT = (1, 8, 8)

# (id, keyword arguments of ModelConfig, fragment of the message)
BAD = [
    ("event-shape-text", {"event_shape": "abc"}, "event_shape must be a list of int"),
    ("event-shape-empty", {"event_shape": ()}, "event_shape needs at least one value"),
    ("event-shape-float", {"event_shape": (2.5,)}, "event_shape[0] must be int"),
    ("event-shape-negative", {"event_shape": (-2, -3)}, "event_shape must be at least 1"),
    ("latent-float", {"latent_dim": 2.0}, "latent_dim must be int, got 2.0"),
    ("latent-bool", {"latent_dim": True}, "latent_dim must be int, got true"),
    ("latent-negative", {"latent_dim": -1}, "latent_dim must be at least 1"),
    ("hidden-text", {"hidden": "256"}, 'hidden must be a list of int, got "256"'),
    ("hidden-empty", {"hidden": ()}, "hidden needs at least one value"),
    ("hidden-bool", {"hidden": (True,)}, "hidden[0] must be int"),
    ("hidden-huge", {"hidden": (10**6, 10**6)}, "would hold about"),
    ("prior-number", {"prior": 5}, "prior must be a registered name (string), got int"),
    ("prior-instance", {"prior": StandardNormal(2)}, "register your class with @register_prior"),
    ("prior-unknown", {"prior": "gaussian"}, "unknown prior 'gaussian'; choose one of"),
    ("options-list", {"prior_options": [1, 2]}, "prior_options must be a table"),
    ("option-unknown", {"prior": "mixture", "prior_options": {"k": 3}}, "has no option 'k'"),
    (
        "option-for-another-part",
        {"prior_options": {"n_components": 3}},
        "prior 'normal' has no option 'n_components'",
    ),
    ("scale-negative", {"likelihood": "normal", "likelihood_options": {"scale": -1.0}},
     "option scale must be greater than 0"),
    ("scale-text", {"likelihood": "normal", "likelihood_options": {"scale": "0.1"}},
     "option scale must be float"),
    ("scale-nan", {"likelihood": "normal", "likelihood_options": {"scale": math.nan}},
     "option scale must be a finite number"),
    ("steps-zero", {"posterior": "iaf", "posterior_options": {"steps": 0}},
     "option steps must be at least 1"),
    ("context-negative", {"posterior": "iaf", "posterior_options": {"context_dim": -1}},
     "option context_dim must be at least 0"),
    ("iaf-1d", {"posterior": "iaf", "latent_dim": 1}, "posterior 'iaf' needs latent_dim >= 2"),
    ("rank-above-latent", {"posterior": "low_rank", "posterior_options": {"rank": 1000}},
     "rank 1000 exceeds latent_dim 2"),
    ("channels-empty", {"arch": "conv", "arch_options": {"channels": []}},
     "option channels needs at least one value"),
    ("conv-on-vectors", {"arch": "conv", "event_shape": (10,)}, "arch 'conv' needs images"),
    ("mixture-components-zero", {"prior": "mixture", "prior_options": {"n_components": 0}},
     "option n_components must be at least 1"),
    ("flow-hidden-text", {"prior": "flow", "prior_options": {"hidden": "64"}},
     "option hidden must be a list of int"),
]  # fmt: skip


@pytest.mark.parametrize("kwargs, fragment", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_model_config_refuses(kwargs, fragment):
    with pytest.raises(ConfigError) as info:
        ModelConfig(**{"event_shape": EVENT, **kwargs})
    assert fragment in str(info.value)
    assert len(str(info.value).splitlines()) == 1


# (id, dict given to from_dict, the whole message)
BAD_DICTS = [
    (
        "not-a-table",
        [1, 2],
        "a model config must be a table of keys, got list",
    ),
    (
        "no-event-shape",
        {"latent_dim": 2},
        "model config lacks 'event_shape'; restore the run's config.json",
    ),
    (
        "unknown-key",
        {"event_shape": [4], "colour": "red"},
        "unknown model config key 'colour'; known keys are ['arch', 'arch_options', 'event_shape', "
        "'hidden', 'kind', 'kind_options', 'latent_dim', 'likelihood', 'likelihood_options', "
        "'posterior', 'posterior_options', 'prior', 'prior_options']",
    ),
    (
        "plugins-list",
        {"event_shape": [4], "plugins": ["x"]},
        "model config 'plugins' must be a table, got ['x']",
    ),
    (
        "unimported-plugin",
        {"event_shape": [4], "prior": "t", "plugins": {"prior": "their_mod"}},
        "prior 't' comes from module 'their_mod', which is not imported; pass --plugin their_mod "
        "if you trust it (or import it in Python first)",
    ),
    (
        "table-without-name",
        {"event_shape": [4], "prior": {"n_components": 3}},
        "the [prior] table needs a name, e.g. name = 'normal'",
    ),
    (
        "part-from-other-module",
        {"event_shape": [4], "prior": "mixture", "plugins": {"prior": "m"}},
        "prior 'mixture' was saved from module 'm' but is registered here by "
        "'pyro_vae.parts.priors'; import m instead (--plugin m)",
    ),
]


@pytest.mark.parametrize("d, message", [b[1:] for b in BAD_DICTS], ids=[b[0] for b in BAD_DICTS])
def test_from_dict_refuses(d, message):
    with pytest.raises(ConfigError, match=whole(message)):
        ModelConfig.from_dict(d)


def test_old_flat_keys_for_other_parts_are_dropped_from_run_configs():
    # Old runs recorded every part's option whatever the part; only the chosen part's are kept.
    old = {"event_shape": [4], "prior": "normal", "n_components": 10, "rank": 2, "extra": {}}
    config = ModelConfig.from_dict(old)
    assert config.prior_options == {} and config.posterior_options == {}


def test_a_part_table_is_merged_with_the_options_given_beside_it():
    from pyro_vae.models import normalize_part_keys

    values = {
        "prior": {"name": "mixture", "n_components": 3},
        "prior_options": {"n_components": 7, "init_scale": 0.5},
    }
    # the table's own keys win over the options table's
    assert normalize_part_keys(values) == {
        "prior": "mixture",
        "prior_options": {"n_components": 3, "init_scale": 0.5},
    }
    with pytest.raises(ConfigError) as info:
        normalize_part_keys({"prior": {"name": "mixture"}, "prior_options": [1, 2]})
    assert str(info.value) == "prior_options must be a table, got [1, 2]"


def test_an_unreadable_config_file_is_refused_with_the_system_s_reason(tmp_path):
    from pyro_vae.models import load_config_file

    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    reason = os.strerror(errno.ENOENT)  # "No such file or directory"
    assert str(info.value) == f"cannot read config file {path}: {reason}; check the path"


def test_a_toml_config_file_before_python_3_11_is_refused_with_the_json_advice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Python 3.10 (no ``tomllib``) a valid TOML file is refused with the whole advice to
    write it as JSON, not reported as a syntax error; its JSON twin is read."""
    from pyro_vae.models import config, load_config_file

    monkeypatch.setattr(config, "sys", SimpleNamespace(version_info=(3, 10, 14)))
    monkeypatch.setitem(sys.modules, "tomllib", None)  # `import tomllib` fails, as on 3.10
    path = tmp_path / "run.toml"
    path.write_text('prior = "mixture"\n')
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    assert str(info.value) == f"TOML config {path} needs Python >= 3.11; write it as JSON instead"
    twin = tmp_path / "run.json"
    twin.write_text('{"prior": "mixture"}')
    assert load_config_file(twin) == {"prior": "mixture"}


def test_defaults_are_filled_so_equal_models_compare_equal():
    a = ModelConfig(event_shape=EVENT, prior="mixture")
    b = ModelConfig(event_shape=list(EVENT), prior="mixture", prior_options={"n_components": 10})
    assert a == b
    assert json.loads(json.dumps(a.to_dict())) == b.to_dict()


@settings(max_examples=30, deadline=None)
@given(
    latent=st.integers(2, 4),
    hidden=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    prior=st.sampled_from(sorted(PRIORS)),
    likelihood=st.sampled_from(LIKELIHOODS.names()),
    posterior=st.sampled_from(sorted(POSTERIORS)),
    arch=st.sampled_from(sorted(ARCHS)),
)
def test_every_valid_config_round_trips_through_json(
    latent, hidden, prior, likelihood, posterior, arch
):
    config = ModelConfig(
        event_shape=EVENT,
        latent_dim=latent,
        hidden=hidden,
        prior=prior,
        likelihood=likelihood,
        posterior=posterior,
        arch=arch,
    )
    assert config.likelihood in LIKELIHOODS  # aliases become the canonical name
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    "values, message",
    [
        (
            {"prior": "normal", "n_components": 3},
            "n_components is an option of prior 'mixture', not 'normal'; remove it or set "
            "prior = 'mixture'",
        ),
        (
            {"likelihood": "bernoulli", "likelihood_scale": 0.1},
            "likelihood_scale is an option of likelihood 'normal' or 'learned_normal', not "
            "'bernoulli'; remove it or set likelihood = 'normal'",
        ),
    ],
)
def test_a_flat_key_for_another_part_is_refused_in_a_user_s_file(values, message):
    from pyro_vae.models import normalize_part_keys

    with pytest.raises(ConfigError, match=whole(message)):
        normalize_part_keys(values)


def test_a_config_file_that_is_not_a_table_is_refused_whole(tmp_path):
    from pyro_vae.models import load_config_file

    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    assert str(info.value) == f"config file {path} must hold a table of options, got list"


def test_a_part_registered_by_a_plugin_module_is_recorded_with_that_module():
    """A prior whose class lives in module ``their_parts`` is listed as ``{"prior":
    "their_parts"}`` (what a run records to import again); the built-in parts are not."""

    class TheirPrior(StandardNormal):
        __module__ = "their_parts"

    PRIORS.register("their_prior", TheirPrior)
    try:
        config = ModelConfig(event_shape=EVENT, prior="their_prior")
        assert config.plugins() == {"prior": "their_parts"}
        assert config.to_dict()["plugins"] == {"prior": "their_parts"}
    finally:
        PRIORS.unregister("their_prior")
    assert ModelConfig(event_shape=EVENT).plugins() == {}
