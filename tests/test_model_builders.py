"""The conditional and hierarchical builders and kinds: every option reaches the nets, the
refusals are whole and sit exactly on their boundaries, and the programs' distributions match
their nets' forward passes computed by hand."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from refusals import whole
from torch import nn
from torch.nn.functional import softplus

from pyro_vae import ModelConfig
from pyro_vae.errors import ConfigError
from pyro_vae.infer.trace import particle_dim_of
from pyro_vae.models.conditional import (
    ConditionalKind,
    build_conditional,
    quadrant_mask,
)
from pyro_vae.models.hierarchical import (
    HierarchicalVAE,
    _mean_draw,
    build_hierarchical,
)
from pyro_vae.parts.likelihoods import Bernoulli
from pyro_vae.parts.posteriors import DiagonalNormal
from pyro_vae.parts.priors import StandardNormal

QUADRANT_MESSAGE = (
    "quadrant must be one of 0..3 (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right), "
    "got {!r}"
)


def layout(net: nn.Module) -> list[str]:
    """The layers of a sequential net in order: ``"Linear a->b"`` or the module's class name."""
    out = []
    for m in net.modules():
        if isinstance(m, nn.Linear):
            out.append(f"Linear {m.in_features}->{m.out_features}")
        elif not isinstance(m, nn.Sequential) and not list(m.children()):
            out.append(type(m).__name__)
    return out


# --- the conditional VAE ------------------------------------------------------------------


def test_every_cvae_net_has_the_config_widths_and_its_activation():
    """Data of 16 elements, 3 classes, latent 2, hidden (6, 5) and tanh: the encoder reads
    16 + 3 inputs, the decoder 2 + 3 and mirrors the widths, the learned prior's net reads the 3
    condition inputs; every hidden layer is tanh, as the arch option says."""
    config = ModelConfig(
        event_shape=(16,), latent_dim=2, hidden=(6, 5), arch_options={"activation": "tanh"}
    )
    cvae = build_conditional(config, "labels", num_classes=3, conditional_prior=True)
    assert layout(cvae.encoder) == ["Linear 19->6", "Tanh", "Linear 6->5", "Tanh", "Linear 5->4"]
    assert layout(cvae.decoder) == ["Linear 5->5", "Tanh", "Linear 5->6", "Tanh", "Linear 6->16"]
    assert layout(cvae.prior.net) == ["Linear 3->6", "Tanh", "Linear 6->5", "Tanh", "Linear 5->4"]


def test_a_quadrant_outside_0_to_3_is_refused_before_the_parts_are_checked():
    """build_conditional checks the quadrant with the other condition settings, first: a bad
    quadrant is reported even with a prior the cvae refuses (the VampPrior); with a good one the
    prior's refusal comes."""
    config = ModelConfig(event_shape=(16,), latent_dim=2, hidden=(4,), prior="vamp")
    with pytest.raises(ConfigError, match=whole(QUADRANT_MESSAGE.format(7))):
        build_conditional(config, "labels", num_classes=3, quadrant=7)
    with pytest.raises(
        ConfigError,
        match=whole(
            "prior VampPrior is built from the encoder, but the conditional VAE's encoder reads "
            "a condition besides x; choose another prior (e.g. 'normal')"
        ),
    ):
        build_conditional(config, "labels", num_classes=3, quadrant=3)


def test_the_bottom_right_quadrant_is_the_last_allowed_and_no_other_value_is_a_quadrant():
    """quadrant_mask(.., 3) is the bottom-right 2 x 2 block of a 4 x 4 image; 4, -1, True and
    1.5 are refused whole."""
    want = torch.zeros(4, 4, dtype=torch.bool)
    want[2:, 2:] = True
    assert torch.equal(quadrant_mask((4, 4), 3), want)
    want = torch.zeros(4, 4, dtype=torch.bool)
    want[:2, :2] = True
    assert torch.equal(quadrant_mask((4, 4), 0), want)
    for bad in (4, -1, True, 1.5):
        with pytest.raises(ConfigError, match=whole(QUADRANT_MESSAGE.format(bad))):
            quadrant_mask((4, 4), bad)


def test_the_cvae_kind_options_are_checked_when_the_config_is_made():
    """A ModelConfig of kind cvae refuses an unknown condition source and a quadrant of 4 with
    their whole messages; quadrants 0 and 3, the ends of the range, are accepted."""
    with pytest.raises(
        ConfigError,
        match=whole("unknown condition_on 'pixels'; choose one of ['labels', 'quadrant']"),
    ):
        ModelConfig(event_shape=(16,), kind="cvae", kind_options={"condition_on": "pixels"})
    with pytest.raises(ConfigError, match=whole("quadrant must be 0..3, got 4")):
        ModelConfig(
            event_shape=(16,), kind="cvae", kind_options={"condition_on": "quadrant", "quadrant": 4}
        )
    for quadrant in (0, 3):
        options = {"condition_on": "quadrant", "quadrant": quadrant}
        config = ModelConfig(event_shape=(16,), kind="cvae", kind_options=options)
        assert config.kind_options["quadrant"] == quadrant
        assert ConditionalKind.check_options({"quadrant": quadrant}) is None


def test_the_quadrant_kind_builds_its_quadrant_and_ignores_a_class_count():
    """ConditionalKind(condition_on="quadrant") shows Pyro's bottom-left quadrant by default;
    quadrant=0 shows the top-left, and a num_classes left over from a labels setting is not
    passed to a model whose condition is the image."""
    config = ModelConfig(event_shape=(4, 4), latent_dim=2, hidden=(3,))
    default = ConditionalKind(condition_on="quadrant").build(config)
    want = torch.zeros(4, 4, dtype=torch.bool)
    want[2:, :2] = True
    assert default.quadrant == 2 and torch.equal(default.visible, want)
    top_left = ConditionalKind(condition_on="quadrant", quadrant=0, num_classes=10).build(config)
    want = torch.zeros(4, 4, dtype=torch.bool)
    want[:2, :2] = True
    assert top_left.quadrant == 0 and torch.equal(top_left.visible, want)
    assert top_left.num_classes is None and top_left.condition_dim == 16


def test_the_visible_mask_is_rebuilt_from_the_options_not_loaded_from_a_state_dict():
    """A quadrant cvae's state dict has no "visible" entry: loading a top-left model's weights
    into a bottom-right model keeps the bottom-right mask."""
    config = ModelConfig(event_shape=(4, 4), latent_dim=2, hidden=(3,))
    top_left = build_conditional(config, "quadrant", quadrant=0)
    bottom_right = build_conditional(config, "quadrant", quadrant=3)
    assert "visible" not in top_left.state_dict()
    bottom_right.load_state_dict(top_left.state_dict())
    want = torch.zeros(4, 4, dtype=torch.bool)
    want[2:, 2:] = True
    assert torch.equal(bottom_right.visible, want)


def _hand_bernoulli_mean(cvae, z, c):
    """sigmoid of the decoder's logits at [z, c], computed layer by layer."""
    h = torch.cat([z, c], dim=-1)
    layers = list(cvae.decoder.net)
    for layer in layers:
        h = layer(h)
    return torch.sigmoid(h)


def test_one_float_condition_gives_n_draws_decoded_from_the_prior():
    """sample(4, y) with a single condition vector y (condition_dim 2) gives 4 data points, each
    E[x | z, c] = sigmoid(decoder([z, y])) at a draw z of N(0, I)."""
    config = ModelConfig(event_shape=(6,), latent_dim=3, hidden=(5,))
    pyro.set_rng_seed(0)
    cvae = build_conditional(config, "labels", condition_dim=2)
    y = torch.tensor([0.5, -1.0])
    pyro.set_rng_seed(1)
    x = cvae.sample(4, y)
    pyro.set_rng_seed(1)
    z = dist.Normal(torch.zeros(3), torch.ones(3)).sample((4,))
    with torch.no_grad():
        want = _hand_bernoulli_mean(cvae, z, y.expand(4, 2))
    assert x.shape == (4, 6)
    assert torch.allclose(x, want, atol=1e-6)


def test_encode_and_decode_read_a_double_condition_in_the_model_s_dtype():
    """A float32 cvae given float64 conditions: q(z | x, c) has the loc and softplus scale of the
    encoder at [x, c] and p(x | z, c) the Bernoulli mean of the decoder at [z, c], in float32."""
    config = ModelConfig(event_shape=(6,), latent_dim=3, hidden=(5,))
    pyro.set_rng_seed(0)
    cvae = build_conditional(config, "labels", condition_dim=2)
    x = torch.rand(4, 6)
    c = torch.randn(4, 2, dtype=torch.float64)
    z = torch.randn(4, 3)
    with torch.no_grad():
        qz = cvae.encode(x, c)
        px = cvae.decode(z, c)
        h = torch.cat([x, c.float()], dim=-1)
        for layer in cvae.encoder.net:
            h = layer(h)
        want_mean = _hand_bernoulli_mean(cvae, z, c.float())
    assert qz.mean.dtype == torch.float32 and px.mean.dtype == torch.float32
    assert torch.allclose(qz.mean, h[:, :3], atol=1e-6)
    assert torch.allclose(qz.stddev, softplus(h[:, 3:]) + 1e-6, atol=1e-6)
    assert torch.allclose(px.mean, want_mean, atol=1e-6)


def test_decode_scores_every_pixel_unless_asked_for_the_hidden_ones():
    """On the quadrant condition, decode(z, c).log_prob(x) sums the Bernoulli log-densities of
    all 16 pixels; with hidden_only=True, of the 12 outside the visible (bottom-left) quadrant."""
    config = ModelConfig(event_shape=(4, 4), latent_dim=2, hidden=(3,))
    pyro.set_rng_seed(0)
    cvae = build_conditional(config, "quadrant")
    x = (torch.rand(2, 4, 4) > 0.5).float()
    c = cvae.condition(x)
    z = torch.randn(2, 2)
    with torch.no_grad():
        p = _hand_bernoulli_mean(cvae, z, c).reshape(2, 4, 4)
        every = x * torch.log(p) + (1 - x) * torch.log1p(-p)
        hidden = torch.ones(4, 4, dtype=torch.bool)
        hidden[2:, :2] = False
        assert torch.allclose(cvae.decode(z, c).log_prob(x), every.sum((-2, -1)), atol=1e-5)
        assert torch.allclose(
            cvae.decode(z, c, hidden_only=True).log_prob(x),
            (every * hidden).sum((-2, -1)),
            atol=1e-5,
        )


# --- the hierarchical VAE -----------------------------------------------------------------


def test_every_hierarchical_net_has_its_level_s_widths_mirrored_for_generation():
    """Three layers (4, 3, 2) over 6 inputs with widths (7, 6), (5, 8), (9, 10) and relu: the
    encoders of level l use widths l in order, the conditional p(z_l | z_{l+1}) and the decoder
    their own level's widths reversed; the model keeps the widths it was given."""
    config = ModelConfig(event_shape=(6,), hidden=(7, 6))
    widths = ((7, 6), (5, 8), (9, 10))
    hvae = build_hierarchical(config, layers=(4, 3, 2), layer_hidden=widths, activation="relu")
    assert hvae.hidden == widths
    assert [layout(net) for net in hvae.encoders] == [
        ["Linear 6->7", "ReLU", "Linear 7->6", "ReLU", "Linear 6->8"],
        ["Linear 4->5", "ReLU", "Linear 5->8", "ReLU", "Linear 8->6"],
        ["Linear 3->9", "ReLU", "Linear 9->10", "ReLU", "Linear 10->4"],
    ]
    assert [layout(net) for net in hvae.conditionals] == [
        ["Linear 3->8", "ReLU", "Linear 8->5", "ReLU", "Linear 5->8"],
        ["Linear 2->10", "ReLU", "Linear 10->9", "ReLU", "Linear 9->6"],
    ]
    assert layout(hvae.decoder) == ["Linear 4->6", "ReLU", "Linear 6->7", "ReLU", "Linear 7->6"]


def test_a_top_prior_of_the_wrong_size_is_refused_naming_the_top_layer():
    parts = [DiagonalNormal(4), DiagonalNormal(3), DiagonalNormal(2)]
    with pytest.raises(
        ConfigError,
        match=whole(
            "the top prior has latent_dim 5 but z3 has size 2; build the prior with latent_dim=2"
        ),
    ):
        HierarchicalVAE(
            (6,), (4, 3, 2), ((), (), ()), Bernoulli(), StandardNormal(5), parts,
            [DiagonalNormal(4), DiagonalNormal(3)],
        )  # fmt: skip


@pytest.mark.parametrize(
    ("hidden", "shown"),
    [
        ([5, 3], "5"),
        (["", [3]], "''"),
        ([b"\x05", [3]], "b'\\x05'"),
        ([[2.5], [3]], "[2.5]"),
        ([[True], [3]], "[True]"),
        ([[0], [3]], "[0]"),
    ],
    ids=["a number", "text", "bytes", "a float", "a bool", "zero"],
)
def test_a_level_of_hidden_widths_that_is_not_a_list_of_positive_integers_is_refused_whole(
    hidden, shown
):
    """Numbers, strings and bytes are no lists of widths, 2.5 and True no widths, 0 too few."""
    config = ModelConfig(event_shape=(6,), hidden=(4,))
    with pytest.raises(
        ConfigError,
        match=whole(
            f"hidden widths must be lists of positive integers, got {shown} in hidden={hidden!r}"
        ),
    ):
        build_hierarchical(config, layers=(3, 2), layer_hidden=hidden)


def test_widths_and_layers_of_one_unit_are_allowed():
    config = ModelConfig(event_shape=(6,), hidden=(4,))
    hvae = build_hierarchical(config, layers=(1, 1), layer_hidden=([1], [1]))
    assert hvae.layers == (1, 1) and hvae.hidden == ((1,), (1,))
    assert layout(hvae.decoder) == ["Linear 1->1", "Tanh", "Linear 1->6"]


@pytest.mark.parametrize("layers", [[True, 2], [1.5, 2], [0, 2]], ids=repr)
def test_a_layer_size_that_is_not_a_positive_integer_is_refused_whole(layers):
    config = ModelConfig(event_shape=(6,), hidden=(4,))
    with pytest.raises(
        ConfigError,
        match=whole(f"layer sizes must be positive integers, got layers={layers!r}"),
    ):
        build_hierarchical(config, layers=layers)


def _three_layer_ladder():
    config = ModelConfig(
        event_shape=(6,), hidden=(5,), prior="vamp", prior_options={"num_pseudo_inputs": 3}
    )
    pyro.set_rng_seed(0)
    return build_hierarchical(config, layers=(4, 3, 2), inference="ladder")


def _diagonal(params: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return params[..., :size], softplus(params[..., size:]) + 1e-6


def test_the_ladder_vamp_prior_mixes_the_top_layer_s_posterior_at_its_pseudo_inputs():
    """Layers (4, 3, 2): p(z3) = (1/3) sum_k N(z3; mu_k, sigma_k^2) with (mu_k, sigma_k) the
    top head of the bottom-up pass at pseudo-input u_k."""
    hvae = _three_layer_ladder()
    z = torch.randn(5, 2)
    with torch.no_grad():
        d = hvae.top_prior.pseudo_inputs
        for net in hvae.trunks:
            d = net(d)
        loc, scale = _diagonal(hvae.heads[-1](d), 2)
        parts = dist.Normal(loc, scale).log_prob(z[:, None, :]).sum(-1)
        want = torch.logsumexp(parts, dim=-1) - math.log(3)
        got = hvae.top_prior().log_prob(z)
    assert torch.allclose(got, want, atol=1e-5)


def test_the_ladder_pass_gives_each_layer_its_merged_normal():
    """The guide's pass at the means: q(z3 | x) is the top head; q(z2) and q(z1) merge their
    heads with p(z_l | z_{l+1}) by precision, mu = (mu_a / s_a^2 + mu_b / s_b^2) s^2."""
    hvae = _three_layer_ladder()
    x = torch.rand(2, 6)
    with torch.no_grad():
        out = hvae._infer(x, _mean_draw)
        hats, d = [], x
        for i, size in enumerate((4, 3, 2)):
            d = hvae.trunks[i](d)
            hats.append(_diagonal(hvae.heads[i](d), size))
        want = {"z3": hats[2]}
        z = hats[2][0]
        for level, size in ((2, 3), (1, 4)):
            loc_p, scale_p = _diagonal(hvae.conditionals[level - 1](z), size)
            loc_q, scale_q = hats[level - 1]
            var = 1 / (scale_q**-2 + scale_p**-2)
            want[f"z{level}"] = ((loc_q * scale_q**-2 + loc_p * scale_p**-2) * var, var.sqrt())
            z = want[f"z{level}"][0]
    assert list(out) == ["z3", "z2", "z1"]
    for site, (loc, scale) in want.items():
        assert torch.allclose(out[site].mean, loc, atol=1e-5), site
        assert torch.allclose(out[site].stddev, scale, atol=1e-5), site


# --- tracing ------------------------------------------------------------------------------


def test_the_particle_dimension_sees_plates_opened_by_keyword_arguments():
    """A model and guide that open a second plate at dim -2 when called with nested=True: the
    first free dimension is -3 with nested=True and -2 without."""

    def program(x, *, nested=False):
        with pyro.plate("data", x.shape[0], dim=-1):
            pyro.sample("z", dist.Normal(0.0, 1.0))
            if nested:
                with pyro.plate("inner", 2, dim=-2):
                    pyro.sample("w", dist.Normal(0.0, 1.0))

    def model(x, *, nested=False):
        program(x, nested=nested)
        with pyro.plate("obs", x.shape[0], dim=-1):
            pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)

    x = torch.zeros(3)
    assert particle_dim_of(model, program, x, nested=True) == -3
    assert particle_dim_of(model, program, x) == -2
