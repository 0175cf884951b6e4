"""The model modules' parts against known answers: the hierarchical kind's defaults and options
in the built modules, config files read and refused whole, codes and likelihood parameters
computed by hand from the networks' own weights."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pyro
import pyro.distributions as dist
import pytest
import torch
from refusals import whole
from torch import nn
from torch.nn.functional import softplus

from pyro_vae.errors import ConfigError, DataError
from pyro_vae.models import ModelConfig, build_model, build_vae, load_config_file
from pyro_vae.models.conditional import build_conditional, condition_size
from pyro_vae.models.config import MAX_CONFIG_DEPTH, nesting_depth, normalize_part_keys
from pyro_vae.models.fused import fused_elbo_loss
from pyro_vae.models.hierarchical import HierarchicalKind, build_hierarchical, normal_params
from pyro_vae.models.kinds import check_labels
from pyro_vae.models.mlp_bernoulli import _split
from pyro_vae.parts.posteriors import DiagonalNormal, FullRankNormal


def _activations(module: nn.Module) -> set[type]:
    """The kinds of activation module anywhere in ``module``."""
    kinds = (nn.Tanh, nn.ReLU, nn.Softplus)
    return {type(m) for m in module.modules() if isinstance(m, kinds)}


def _widths(net: nn.Module) -> list[tuple[int, int]]:
    """(in, out) of every affine layer of ``net``, in order."""
    return [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, nn.Linear)]


# --- the hierarchical kind ---------------------------------------------------------------------


def test_the_hvae_kind_made_with_no_arguments_builds_its_documented_defaults():
    """HierarchicalKind(): layers latent_dim and half of it (rounded up), bottom-up inference,
    tanh layers, diagonal-normal conditionals, the config's widths below and its last width
    above; and no options recorded."""
    kind = HierarchicalKind()
    assert kind.options() == {}
    config = ModelConfig(event_shape=(6,), latent_dim=5, hidden=(7, 4), likelihood="normal")
    model = kind.build(config)
    assert model.layers == (5, 3)
    assert model.inference == "bottom_up"
    assert model.activation == "tanh"
    assert model.hidden == ((7, 4), (4,))
    assert _activations(model) == {nn.Tanh}
    assert [type(p) for p in model.conditional_priors] == [DiagonalNormal]
    assert [type(p) for p in model.posteriors] == [DiagonalNormal, DiagonalNormal]
    # q(z1 | x): 6 -> 7 -> 4 -> (loc, scale) of 5; q(z2 | z1): 5 -> 4 -> 2 * 3
    assert [_widths(e) for e in model.encoders] == [[(6, 7), (7, 4), (4, 10)], [(5, 4), (4, 6)]]
    # p(z1 | z2): 3 -> 4 -> 2 * 5; p(x | z1): 5 -> 4 -> 7 -> 6
    assert [_widths(c) for c in model.conditionals] == [[(3, 4), (4, 10)]]
    assert _widths(model.decoder) == [(5, 4), (4, 7), (7, 6)]
    # half of a single unit is still one unit
    one = HierarchicalKind().build(ModelConfig(event_shape=(6,), latent_dim=1, hidden=(4,)))
    assert one.layers == (1, 1)


def test_every_option_given_to_the_hvae_kind_reaches_the_built_model():
    kind = HierarchicalKind(
        layers=(3, 2, 2),
        upper_hidden=(6, 5),
        inference="bottom_up",
        activation="relu",
        layer_posteriors=("full_rank", "diagonal", "full_rank"),
        conditional_prior="full_rank",
    )
    config = ModelConfig(event_shape=(4,), latent_dim=9, hidden=(8,), likelihood="normal")
    model = kind.build(config)
    assert model.layers == (3, 2, 2)
    assert model.hidden == ((8,), (6, 5), (6, 5))
    assert model.activation == "relu"
    assert _activations(model) == {nn.ReLU}
    assert [type(p) for p in model.posteriors] == [FullRankNormal, DiagonalNormal, FullRankNormal]
    assert [type(p) for p in model.conditional_priors] == [FullRankNormal, FullRankNormal]
    assert [p.latent_dim for p in model.conditional_priors] == [3, 2]


def test_the_builder_passes_the_activation_it_is_given_to_every_net():
    config = ModelConfig(event_shape=(4,), latent_dim=2, hidden=(5,), likelihood="normal")
    for activation, module in (("relu", nn.ReLU), ("softplus", nn.Softplus), ("tanh", nn.Tanh)):
        model = build_hierarchical(config, layers=(3, 2), activation=activation)
        assert model.activation == activation
        assert _activations(model) == {module}


def test_the_ladder_s_top_encoder_is_the_last_head_on_every_trunk_computed_by_hand():
    """q(z_L | x)'s parameters, which a VampPrior is bound to: x through all three trunks
    (affine then tanh), then the third head, here from the networks' weights."""
    torch.manual_seed(0)
    config = ModelConfig(event_shape=(2, 3), latent_dim=4, hidden=(5,), likelihood="normal")
    model = build_hierarchical(
        config, layers=(4, 3, 2), layer_hidden=((5,), (4,), (3,)), inference="ladder"
    )
    x = torch.randn(7, 2, 3)
    d = x.reshape(7, 6)
    for trunk in model.trunks:
        (linear,) = [m for m in trunk.modules() if isinstance(m, nn.Linear)]
        d = torch.tanh(d @ linear.weight.T + linear.bias)
    head = model.heads[2]
    want = d @ head.weight.T + head.bias
    got = model._top_encoder(x)
    assert got.shape == (7, 4)  # loc and scale of z3 (size 2)
    torch.testing.assert_close(got, want)


def test_normal_params_reads_a_normal_with_or_without_independent_and_refuses_others():
    loc, scale = torch.tensor([0.5, -1.0]), torch.tensor([2.0, 0.25])
    for d in (dist.Normal(loc, scale), dist.Normal(loc, scale).to_event(1)):
        got_loc, got_scale = normal_params(d)
        assert torch.equal(got_loc, loc) and torch.equal(got_scale, scale)
    mvn = dist.MultivariateNormal(loc, torch.diag(scale**2))
    message = (
        "the ladder merge needs a diagonal normal, got MultivariateNormal; use the 'diagonal' "
        "family"
    )
    with pytest.raises(ConfigError, match=whole(message)):
        normal_params(mvn)


# --- config files ------------------------------------------------------------------------------


def _nest(depth: int):
    """A table of ``depth`` levels of tables and lists (depth >= 1)."""
    if depth == 1:
        return {"a": 1}
    value: list | dict = [1]
    for i in range(depth - 2):
        value = {"b": value} if i % 2 else [value]
    return {"a": value}


def test_nesting_depth_counts_tables_and_lists_and_a_scalar_is_zero():
    assert nesting_depth(3) == 0
    assert nesting_depth("text") == 0
    assert nesting_depth({}) == 1
    assert nesting_depth([]) == 1
    assert nesting_depth({"a": 1, "b": "c"}) == 1
    assert nesting_depth({"a": [1, 2]}) == 2
    assert nesting_depth([[1], [[2]], 3]) == 3
    assert nesting_depth({"prior": {"name": "vamp", "hidden": [8, 4]}, "latent_dim": 2}) == 3
    for depth in range(1, 12):
        assert nesting_depth(_nest(depth)) == depth


def test_a_config_file_nested_exactly_to_the_limit_is_read_and_one_level_more_is_refused(
    tmp_path,
):
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps(_nest(MAX_CONFIG_DEPTH)))
    assert MAX_CONFIG_DEPTH == 8
    assert load_config_file(ok) == _nest(MAX_CONFIG_DEPTH)
    deep = tmp_path / "deep.json"
    deep.write_text(json.dumps(_nest(MAX_CONFIG_DEPTH + 1)))
    message = (
        f"config file {str(deep)!r} nests tables or lists more than 8 deep; options are at most "
        "a table of tables of lists: flatten it"
    )
    with pytest.raises(ConfigError, match=whole(message)):
        load_config_file(deep)


def test_dashes_in_keys_become_underscores_and_part_tables_keep_their_options(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text(
        'latent-dim = 3\nhidden = [8, 4]\n\n[prior]\nname = "mixture"\nn-components = 4\n\n'
        "[prior-options]\ninit-scale = 0.5\n"
    )
    values = load_config_file(toml)
    assert values == {
        "latent_dim": 3,
        "hidden": [8, 4],
        "prior": {"name": "mixture", "n_components": 4},
        "prior_options": {"init_scale": 0.5},
    }
    assert normalize_part_keys(values) == {
        "latent_dim": 3,
        "hidden": [8, 4],
        "prior": "mixture",
        "prior_options": {"init_scale": 0.5, "n_components": 4},
    }
    js = tmp_path / "run.json"
    js.write_text('{"latent-dim": 3, "kind-options": {"num-classes": 4}}')
    assert load_config_file(js) == {"latent_dim": 3, "kind_options": {"num_classes": 4}}


def test_a_config_file_that_is_not_text_is_refused_with_the_decoder_s_reason(tmp_path):
    path = tmp_path / "binary.json"
    path.write_bytes(b'{"latent_dim": 2}\xff\xfe')
    try:
        path.read_text()
    except UnicodeDecodeError as exc:
        reason = str(exc)
    else:  # pragma: no cover - every text encoding Python reads files with refuses 0xff 0xfe
        pytest.fail("the bytes decoded")
    assert reason  # e.g. "'utf-8' codec can't decode byte 0xff in position 17: invalid ..."
    message = f"cannot read config file {path}: {reason}; check the path"
    with pytest.raises(ConfigError, match=whole(message)):
        load_config_file(path)


# --- labels and conditions ---------------------------------------------------------------------


def test_check_labels_counts_two_classes_and_calls_unnamed_data_the_data():
    y = torch.tensor([1, 0, 1])
    data = SimpleNamespace(name="pairs", labels={"train": y, "valid": y[:2], "test": y[2:]})
    assert check_labels(data, "cvae") == 2
    message = (
        "model 'm2' needs labels, but 'the data' has none for the test split(s); use a data set "
        "with labels (digits, mnist, fashion-mnist, an .npz with y_train/y_valid/y_test) or "
        "another --model"
    )
    with pytest.raises(DataError, match=whole(message)):
        check_labels(SimpleNamespace(labels={"train": y, "valid": y}), "m2")


def test_a_condition_of_one_float_has_size_one():
    assert condition_size("labels", (4,), condition_dim=1) == 1
    assert condition_size("labels", (4,), condition_dim=3) == 3


def test_quadrant_samples_read_images_of_another_dtype_in_the_model_s_dtype():
    """Binary images given as bool, bytes or float64 give the samples of the same images in
    float32: their visible quadrant is read as numbers, the hidden pixels as -1."""
    torch.manual_seed(0)
    config = ModelConfig(event_shape=(1, 4, 4), latent_dim=2, hidden=(6,))
    cvae = build_conditional(config, "quadrant")
    images = torch.rand(2, 1, 4, 4) > 0.5
    pyro.set_rng_seed(3)
    want = cvae.sample(3, images.float())
    for dtype in (torch.bool, torch.uint8, torch.float64):
        pyro.set_rng_seed(3)
        got = cvae.sample(3, images.to(dtype))
        assert got.dtype == torch.float32 and got.shape == (3, 2, 1, 4, 4)
        assert torch.equal(got, want), dtype


def test_labels_drawn_for_samples_are_on_the_model_s_device_whatever_the_default_device():
    """Under another default device (here "meta") a CPU model draws its labels, and so its
    samples, on the CPU: the same samples as without it."""
    torch.manual_seed(0)
    config = ModelConfig(event_shape=(3,), latent_dim=2, hidden=(4,))
    cvae = build_conditional(config, "labels", num_classes=3)
    pyro.set_rng_seed(5)
    want = cvae.sample(4)
    pyro.set_rng_seed(5)
    with torch.device("meta"):
        got = cvae.sample(4)
    assert got.device == torch.device("cpu")
    assert torch.equal(got, want)


# --- the autoencoder ---------------------------------------------------------------------------


def test_autoencoder_codes_and_likelihood_parameters_are_the_networks_forward_by_hand():
    """Event (2, 3), a two-parameter likelihood (Laplace), one softplus layer of 5 each way:
    the code is the encoder's first latent_dim outputs, a point mass over a vector; decode
    lays out the decoder's outputs as [all locations, all raw scales] for every batch shape."""
    torch.manual_seed(0)
    config = ModelConfig(event_shape=(2, 3), latent_dim=2, hidden=(5,), likelihood="laplace")
    ae = build_model(ModelConfig(**{**config.to_dict(), "kind": "ae"}))
    enc = [m for m in ae.encoder.modules() if isinstance(m, nn.Linear)]
    dec = [m for m in ae.decoder.modules() if isinstance(m, nn.Linear)]

    def by_hand(v, layers):
        h = softplus(v @ layers[0].weight.T + layers[0].bias)
        return h @ layers[1].weight.T + layers[1].bias

    x = torch.randn(4, 2, 3)
    code = ae.encode(x)
    assert isinstance(code, dist.Delta)
    assert code.batch_shape == (4,) and code.event_shape == (2,)
    torch.testing.assert_close(code.mean, by_hand(x.reshape(4, 6), enc)[:, :2])
    assert code.log_prob(code.mean).shape == (4,)

    for batch in ((), (4,), (3, 4)):
        z = torch.randn(*batch, 2)
        px = ae.decode(z)
        assert px.batch_shape == batch and px.event_shape == (2, 3)
        out = by_hand(z, dec)
        torch.testing.assert_close(px.base_dist.loc, out[..., :6].reshape(*batch, 2, 3))
        scale = softplus(out[..., 6:]).reshape(*batch, 2, 3) + 1e-3
        torch.testing.assert_close(px.base_dist.scale, scale)


# --- the fused ELBO and the Bernoulli tiles ----------------------------------------------------


def test_the_fused_elbo_of_two_particles_is_their_mean_computed_by_hand():
    """loss = -(1/K) sum_k sum_n [log p(x_n | z_kn) + log p(z_kn) - log q(z_kn | x_n)] for K = 2,
    with the same two draws of z as the fused loss makes."""
    torch.manual_seed(0)
    config = ModelConfig(event_shape=(3,), latent_dim=2, hidden=(4,), likelihood="normal")
    vae = build_vae(config)
    x = torch.randn(5, 3)
    pyro.set_rng_seed(7)
    loss, elbo = fused_elbo_loss(vae, x, num_particles=2)
    pyro.set_rng_seed(7)
    with torch.no_grad():
        qz = vae.posterior(vae.encoder(x))
        z = qz.rsample((2,))
        terms = vae.decode(z).log_prob(x) + vae.prior().log_prob(z) - qz.log_prob(z)
    assert terms.shape == (2, 5)
    torch.testing.assert_close(loss.detach(), -terms.sum() / 2)
    torch.testing.assert_close(elbo, terms.sum() / 2)
    assert math.isfinite(float(loss.detach()))


def test_the_bernoulli_tiles_split_particles_among_workers_unless_there_are_fewer_than_workers():
    one = [(slice(i, i + 1), slice(None)) for i in range(4)]
    assert _split(4, 10, 4) == one
    assert _split(6, 10, 4) == [(slice(i, i + 2), slice(None)) for i in (0, 2, 4)]
    assert _split(3, 10, 4) == [(slice(None), slice(i, i + 3)) for i in (0, 3, 6, 9)]
