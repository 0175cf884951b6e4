"""A hierarchical VAE: L >= 2 stochastic layers z_L -> ... -> z_1 -> x as two Pyro programs.

``model(x)``: z_L ~ p(z_L), z_l ~ p(z_l | z_{l+1}) for l = L-1..1, x ~ p(x | z_1); sites
``"zL"``, ..., ``"z1"`` and ``"x"``, all inside ``pyro.plate("data", batch, dim=-1)``. The
guide is bottom-up (Burda et al. 2016) or a ladder (Sønderby et al. 2016); every distribution
comes from a swappable part (a prior for z_L, posterior families for the conditionals and the
guide, a likelihood for x), so the same registries build this model as the one-layer VAE.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import nn

from pyro_vae.errors import ConfigError
from pyro_vae.models.kinds import ModelKind, check_choice, register_model
from pyro_vae.models.vae import local_params
from pyro_vae.parts.likelihoods import Likelihood
from pyro_vae.parts.nets import ACTIVATIONS, hidden_layers
from pyro_vae.parts.options import Sizes
from pyro_vae.parts.posteriors import DiagonalNormal, Posterior
from pyro_vae.parts.priors import Prior
from pyro_vae.parts.registry import LIKELIHOODS, POSTERIORS, PRIORS

if TYPE_CHECKING:  # a model-kind registry in config may come to import this module
    from pyro_vae.models.config import ModelConfig


#: How the guide is structured (see
#: [`HierarchicalVAE`][pyro_vae.models.hierarchical.HierarchicalVAE]).
INFERENCES = ("bottom_up", "ladder")

#: Burda, Grosse & Salakhutdinov (2016), "Importance Weighted Autoencoders", sec. 5: the MNIST
#: architecture with two stochastic layers of 100 and 50 units, two deterministic tanh layers
#: of 200 units between x and z1 and two of 100 units between z1 and z2, the generative nets
#: mirroring them (784-200-200-100 / 100-100-50 and 50-100-100-100 / 100-200-200-784).
#: ``build_hierarchical(config, **IWAE_TWO_LAYER)`` with ModelConfig's defaults (prior
#: "normal", likelihood "bernoulli", posterior "diagonal") completes it; the Gaussian layers'
#: scales are softplus here, exp there. Checked against the authors' released code
#: (github.com/yburda/iwae: ``experiments.py`` sets latent units [100, 50], q hidden
#: [[200, 200], [100, 100]], p hidden [[100, 100], [200, 200]]; ``iwae.py`` makes every hidden
#: layer linear-then-tanh); the stored copies of the paper gave its abstract, not sec. 5.
IWAE_TWO_LAYER: dict[str, Any] = {
    "layers": (100, 50),
    "layer_hidden": ((200, 200), (100, 100)),
    "activation": "tanh",
    "inference": "bottom_up",
}


def mlp(in_features: int, hidden: Sequence[int], out_features: int, activation: str) -> nn.Module:
    """Affine layers with ``activation`` between them: (*batch, in) -> (*batch, out).

    ``hidden=()`` is one affine map (a linear-Gaussian layer when the family is Gaussian).
    """
    body = trunk(in_features, hidden, activation)
    return nn.Sequential(body, nn.Linear(width_of(in_features, hidden), out_features))


def trunk(in_features: int, hidden: Sequence[int], activation: str) -> nn.Sequential:
    """Hidden layers only (affine then ``activation``): (*batch, in) -> (*batch, hidden[-1]).

    With ``hidden=()`` the identity, so the width stays ``in_features``.
    """
    return nn.Sequential(*hidden_layers(in_features, hidden, activation))


def width_of(in_features: int, hidden: Sequence[int]) -> int:
    """The width a [`trunk`][pyro_vae.models.hierarchical.trunk] outputs."""
    return int(hidden[-1]) if len(hidden) else int(in_features)


def normal_params(d: dist.TorchDistribution) -> tuple[torch.Tensor, torch.Tensor]:
    """(loc, scale) of a diagonal normal ``Normal(loc, scale).to_event(1)``: each (*batch, D)."""
    base = d.base_dist if isinstance(d, dist.Independent) else d
    if not isinstance(base, dist.Normal):
        raise ConfigError(
            f"the ladder merge needs a diagonal normal, got {type(d).__name__}; use the "
            "'diagonal' family"
        )
    return base.loc, base.scale


def precision_weighted(
    loc_a: torch.Tensor, scale_a: torch.Tensor, loc_b: torch.Tensor, scale_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Precision-weighted merge of two diagonal normals: each (*batch, D), broadcast.

    sigma^2 = 1 / (sigma_a^-2 + sigma_b^-2),  mu = (mu_a sigma_a^-2 + mu_b sigma_b^-2) sigma^2:
    the normalized product N(mu_a, sigma_a^2) N(mu_b, sigma_b^2). Sønderby et al. (2016),
    "Ladder Variational Autoencoders", eqs. 17-21.
    """
    prec_a, prec_b = scale_a.pow(-2), scale_b.pow(-2)
    var = 1.0 / (prec_a + prec_b)
    return (loc_a * prec_a + loc_b * prec_b) * var, var.sqrt()


#: How a program draws one latent site: (site name, distribution) -> value.
Draw = Callable[[str, dist.TorchDistribution], torch.Tensor]


def _pyro_draw(name: str, d: dist.TorchDistribution) -> torch.Tensor:
    return pyro.sample(name, d)


def _mean_draw(name: str, d: dist.TorchDistribution) -> torch.Tensor:
    return d.mean


def _random_draw(name: str, d: dist.TorchDistribution) -> torch.Tensor:
    return d.sample()


class HierarchicalVAE(PyroModule):
    """A VAE with L >= 2 stochastic layers z_L -> ... -> z_1 -> x, built from swappable parts.

    ``model(x)``: z_L ~ p(z_L) (``top_prior``), z_l ~ p(z_l | z_{l+1}) =
    ``conditional_priors[l-1](net(z_{l+1}))`` for l = L-1..1, x ~ p(x | z_1) (``likelihood`` on a
    decoder net, sized as [`pyro_vae.VAE.decode`][pyro_vae.models.vae.VAE.decode] does).
    ``guide(x)``, by ``inference``:

    - ``"bottom_up"``: q(z_1 | x) q(z_2 | z_1) ... q(z_L | z_{L-1}), each
      ``posteriors[l-1](net(z_{l-1}))`` (z_0 = x). Burda et al. (2016), "Importance Weighted
      Autoencoders", sec. 5.
    - ``"ladder"``: a deterministic pass d_1 = MLP(x), d_l = MLP(d_{l-1}) with heads (mu^_l,
      sigma^_l); q(z_L | x) = N(mu^_L, sigma^_L^2); then for l = L-1..1 the model's own p(z_l |
      z_{l+1}) = N(mu_p, sigma_p^2) (the SAME network, at the guide's z_{l+1}) merged with (mu^_l,
      sigma^_l) by precision
      ([`precision_weighted`][pyro_vae.models.hierarchical.precision_weighted]). Sønderby et al.
      (2016), "Ladder Variational Autoencoders", eqs. 17-21. Needs diagonal-normal families.

    Sites are named ``"z1"`` (next to the data) ... ``"zL"`` and ``"x"``, all inside
    ``pyro.plate("data", batch, dim=-1)``; particles go on the left. There is no ``prior``
    attribute: p(z_1) has no closed form, and code that decodes draws of ``model.prior()`` must
    not be handed z_L; use [`sample`][pyro_vae.models.hierarchical.HierarchicalVAE.sample].

    Args:
        event_shape: shape of one data point, e.g. ``(784,)`` or ``(1, 28, 28)``.
        layers: sizes of z_1, ..., z_L (L >= 2).
        hidden: hidden widths per level, ``hidden[0]`` for the x <-> z_1 nets and
            ``hidden[l]`` for the z_l <-> z_{l+1} nets; the generative nets use them reversed.
            ``()`` makes a net one affine map.
        likelihood: p(x | decoder(z_1)), element-wise; its ``num_params`` sizes the head.
        top_prior: p(z_L), ``latent_dim == layers[-1]``. One with ``bind`` (the VampPrior) is
            bound to q(z_L | x), which only the ladder has as a function of x.
        posteriors: L families, ``posteriors[l].latent_dim == layers[l]``.
        conditional_priors: L - 1 families for p(z_l | z_{l+1}), l = 1..L-1.
        inference: ``"bottom_up"`` or ``"ladder"``.
        activation: ``"tanh"``, ``"softplus"``, ``"relu"`` or ``"gated"``
            (``pyro_vae.parts.nets.ACTIVATIONS``).
    """

    def __init__(
        self,
        event_shape: Sequence[int],
        layers: Sequence[int],
        hidden: Sequence[Sequence[int]],
        likelihood: Likelihood,
        top_prior: Prior,
        posteriors: Sequence[Posterior],
        conditional_priors: Sequence[Posterior],
        inference: str = "bottom_up",
        activation: str = "tanh",
    ):
        with local_params():
            super().__init__()  # the shared module context holds a local parameter state
        sizes = check_layers(layers)
        widths = check_hidden(hidden, len(sizes))
        check_choice(inference, "inference", INFERENCES)
        check_choice(activation, "activation", tuple(ACTIVATIONS))
        n = len(sizes)
        _check_dims("posteriors", posteriors, sizes)
        _check_dims("conditional_priors", conditional_priors, sizes[:-1])
        if top_prior.latent_dim != sizes[-1]:
            raise ConfigError(
                f"the top prior has latent_dim {top_prior.latent_dim} but z{n} has size "
                f"{sizes[-1]}; build the prior with latent_dim={sizes[-1]}"
            )
        if inference == "ladder":
            roles = {"posteriors": posteriors, "conditional_priors": conditional_priors}
            for role, parts in roles.items():
                for i, part in enumerate(parts):
                    if not isinstance(part, DiagonalNormal):
                        raise ConfigError(
                            f"inference 'ladder' merges diagonal normals, but {role}[{i}] is "
                            f"{type(part).__name__}; use the 'diagonal' family for every layer "
                            "or inference 'bottom_up'"
                        )
        if callable(getattr(top_prior, "bind", None)) and inference != "ladder":
            raise ConfigError(
                f"prior {type(top_prior).__name__} is bound to q(z{n} | x), which inference "
                "'bottom_up' reaches only through samples of the layers below; use inference "
                "'ladder' or another prior (e.g. 'normal', 'mixture', 'flow')"
            )
        self.event_shape = tuple(int(s) for s in event_shape)
        self._layers = sizes
        self.hidden = widths
        self.inference = inference
        self.activation = activation
        self.likelihood = likelihood
        self.top_prior = top_prior
        # A Pyro list, so the parts join this module's parameter context as attributes do.
        self.posteriors = PyroModule[nn.ModuleList](posteriors)
        self.conditional_priors = PyroModule[nn.ModuleList](conditional_priors)
        data_dim = math.prod(self.event_shape)
        inputs = (data_dim, *sizes[:-1])
        if inference == "bottom_up":
            self.encoders = nn.ModuleList(
                mlp(inputs[i], widths[i], posteriors[i].num_params, activation) for i in range(n)
            )
        else:
            trunks, heads, width = [], [], data_dim
            for i in range(n):
                trunks.append(trunk(width, widths[i], activation))
                width = width_of(width, widths[i])
                heads.append(nn.Linear(width, posteriors[i].num_params))
            self.trunks = nn.ModuleList(trunks)
            self.heads = nn.ModuleList(heads)
        # conditionals[i] maps z_{i+2} to the parameters of p(z_{i+1} | z_{i+2}).
        self.conditionals = nn.ModuleList(
            mlp(sizes[i + 1], widths[i + 1][::-1], conditional_priors[i].num_params, activation)
            for i in range(n - 1)
        )
        self.decoder = mlp(sizes[0], widths[0][::-1], likelihood.num_params * data_dim, activation)
        bind = getattr(top_prior, "bind", None)
        if callable(bind):
            bind(self._top_encoder, posteriors[-1])

    @property
    def layers(self) -> tuple[int, ...]:
        """Sizes of z_1, ..., z_L."""
        return self._layers

    @property
    def latent_dim(self) -> int:
        """Size of z_1, the code next to the data (what latent-space figures show)."""
        return self._layers[0]

    @property
    def latent_sites(self) -> tuple[str, ...]:
        """Site names ``("z1", ..., "zL")``, z1 next to the data."""
        return tuple(f"z{i + 1}" for i in range(len(self._layers)))

    def num_data_elements(self) -> int:
        """prod(event_shape): the number of likelihood terms per data point."""
        return math.prod(self.event_shape)

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        """x: (*batch, *event_shape) -> (*batch, prod(event_shape))."""
        return x.reshape(*x.shape[: x.dim() - len(self.event_shape)], -1)

    def _top_encoder(self, x: torch.Tensor) -> torch.Tensor:
        """Parameters of q(z_L | x) from the ladder's bottom-up pass: (*batch, num_params)."""
        d = self._flat(x)
        for net in self.trunks:
            d = net(d)
        return self.heads[-1](d)

    def conditional(self, level: int, z_above: torch.Tensor) -> dist.TorchDistribution:
        """p(z_level | z_{level+1}) for 1 <= level < L; z_above: (*batch, layers[level])."""
        i = level - 1
        return self.conditional_priors[i](self.conditionals[i](z_above))

    def decode(self, z1: torch.Tensor) -> dist.TorchDistribution:
        """p(x | z_1) for z1: (*batch, layers[0]); batch shape ``batch``, event ``event_shape``."""
        batch = z1.shape[:-1]
        k = self.likelihood.num_params
        params = self.decoder(z1).reshape(*batch, k, *self.event_shape)
        params = params.movedim(len(batch), -1)
        return self.likelihood(params).to_event(len(self.event_shape))

    def _generate(self, draw: Draw) -> torch.Tensor:
        """Ancestral pass z_L -> ... -> z_1 drawing each site with ``draw``; returns z_1."""
        n = len(self._layers)
        z = draw(f"z{n}", self.top_prior())
        for level in range(n - 1, 0, -1):
            z = draw(f"z{level}", self.conditional(level, z))
        return z

    def _infer(self, x: torch.Tensor, draw: Draw) -> dict[str, dist.TorchDistribution]:
        """The guide's pass drawing each site with ``draw``: site name -> its q distribution."""
        n = len(self._layers)
        out: dict[str, dist.TorchDistribution] = {}
        if self.inference == "bottom_up":
            below = self._flat(x)
            for i in range(n):
                q = self.posteriors[i](self.encoders[i](below))
                out[f"z{i + 1}"] = q
                below = draw(f"z{i + 1}", q)
            return out
        hats, d = [], self._flat(x)
        for i in range(n):
            d = self.trunks[i](d)
            hats.append(normal_params(self.posteriors[i](self.heads[i](d))))
        q = dist.Normal(*hats[-1]).to_event(1)
        out[f"z{n}"] = q
        z = draw(f"z{n}", q)
        for level in range(n - 1, 0, -1):
            loc_p, scale_p = normal_params(self.conditional(level, z))
            loc, scale = precision_weighted(*hats[level - 1], loc_p, scale_p)
            q = dist.Normal(loc, scale).to_event(1)
            out[f"z{level}"] = q
            z = draw(f"z{level}", q)
        return out

    @local_params()
    def model(self, x: torch.Tensor) -> None:
        """p(z_L) prod_l p(z_l | z_{l+1}) p(x | z_1) for x: (batch, *event_shape)."""
        with pyro.plate("data", x.shape[-len(self.event_shape) - 1], dim=-1):
            z1 = self._generate(_pyro_draw)
            pyro.sample("x", self.decode(z1), obs=x)

    @local_params()
    def guide(self, x: torch.Tensor) -> None:
        """q(z_1, ..., z_L | x) for x: (batch, *event_shape), bottom-up or ladder."""
        with pyro.plate("data", x.shape[-len(self.event_shape) - 1], dim=-1):
            self._infer(x, _pyro_draw)

    def encode(self, x: torch.Tensor) -> dist.TorchDistribution:
        """q(z_1 | x) for x: (*batch, *event_shape); batch ``batch``, event (layers[0],).

        Ladder: q(z_1 | x, z_2) with z_L, ..., z_2 set to their top-down means (a point code).
        """
        if self.inference == "bottom_up":
            return self.posteriors[0](self.encoders[0](self._flat(x)))
        return self._infer(x, _mean_draw)["z1"]

    @torch.no_grad()
    def sample(self, n: int, mean: bool = True) -> torch.Tensor:
        """Draw ``n`` data points ancestrally from p(z_L) ... p(x | z_1): (n, *event_shape).

        With ``mean=True`` return E[x | z_1] (the usual picture for Bernoulli pixels).
        """
        z = self.top_prior().sample((n,))
        for level in range(len(self._layers) - 1, 0, -1):
            z = self.conditional(level, z).sample()
        px = self.decode(z)
        return px.mean if mean else px.sample()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, mean: bool = True) -> torch.Tensor:
        """Encode then decode: x: (batch, *event_shape) -> E[x | z_1]: (batch, *event_shape).

        ``mean``: z_1 from the guide's pass through the posterior means (deterministic); else
        one draw of the whole guide.
        """
        qz1 = self._infer(x, _mean_draw if mean else _random_draw)["z1"]
        return self.decode(qz1.mean if mean else qz1.sample()).mean


def check_layers(layers: Any) -> tuple[int, ...]:
    """Sizes of z_1..z_L as ints: at least two, each a positive integer."""
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise ConfigError(f"layers must be a list of latent sizes like [100, 50], got {layers!r}")
    if len(layers) < 2:
        raise ConfigError(
            f"a hierarchical VAE needs at least 2 stochastic layers, got layers={list(layers)}; "
            "use build_vae for one"
        )
    for size in layers:
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
            raise ConfigError(f"layer sizes must be positive integers, got layers={list(layers)}")
    return tuple(int(s) for s in layers)


def check_hidden(hidden: Any, num_layers: int) -> tuple[tuple[int, ...], ...]:
    """Hidden widths per level as int tuples: one sequence (possibly empty) per layer."""
    if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
        raise ConfigError(
            f"hidden must hold one list of widths per layer, like [[200, 200], [100, 100]], got "
            f"{hidden!r}"
        )
    if len(hidden) != num_layers:
        raise ConfigError(
            f"hidden has {len(hidden)} lists of widths but there are {num_layers} layers; give "
            "one per layer (hidden[0] for the x <-> z1 nets)"
        )
    out = []
    for widths in hidden:
        ok = isinstance(widths, Sequence) and not isinstance(widths, (str, bytes))
        bad = ok and [
            w for w in widths if isinstance(w, bool) or not isinstance(w, numbers.Integral)
        ]
        if not ok or bad or any(w < 1 for w in widths):
            raise ConfigError(
                f"hidden widths must be lists of positive integers, got {widths!r} in "
                f"hidden={hidden!r}"
            )
        out.append(tuple(int(w) for w in widths))
    return tuple(out)


def _check_dims(role: str, parts: Sequence[Posterior], sizes: Sequence[int]) -> None:
    if len(parts) != len(sizes):
        raise ConfigError(
            f"{role} has {len(parts)} families but {len(sizes)} are needed (sizes {list(sizes)})"
        )
    for i, (part, size) in enumerate(zip(parts, sizes, strict=True)):
        if part.latent_dim != size:
            raise ConfigError(
                f"{role}[{i}] has latent_dim {part.latent_dim} but its layer has size {size}; "
                f"build it with latent_dim={size}"
            )


def build_hierarchical(
    config: ModelConfig,
    layers: Sequence[int],
    layer_hidden: Sequence[Sequence[int]] | None = None,
    inference: str = "bottom_up",
    activation: str = "tanh",
    posteriors: Sequence[str] | None = None,
    conditional_prior: str = "diagonal",
) -> HierarchicalVAE:
    """Build a [`HierarchicalVAE`][pyro_vae.models.hierarchical.HierarchicalVAE] from a
    [`ModelConfig`][pyro_vae.models.config.ModelConfig] and the layer sizes.

    From ``config``: ``event_shape``, the likelihood (with its options), the prior (with its
    options) as p(z_L), built with ``latent_dim = layers[-1]``, and the posterior family as the
    default of every layer (its options go to every layer that uses it). ``config.latent_dim``
    is not read: ``layers`` sets the sizes. ``config.arch`` must be ``"mlp"``.

    ``layer_hidden=None``: ``config.hidden`` for the x <-> z_1 nets and one hidden layer of
    ``config.hidden[-1]`` units for each z_l <-> z_{l+1} net (the narrowest width next to the
    latents). ``posteriors``: one family name per layer (default ``config.posterior`` for all).
    ``conditional_prior``: the family of every p(z_l | z_{l+1}), built with default options.
    ``IWAE_TWO_LAYER`` holds Burda et al. (2016)'s two-layer settings.
    """
    sizes = check_layers(layers)
    n = len(sizes)
    check_choice(inference, "inference", INFERENCES)
    check_choice(activation, "activation", tuple(ACTIVATIONS))
    if config.arch != "mlp":
        raise ConfigError(
            f"a hierarchical VAE builds MLP networks, but arch is {config.arch!r}; set arch 'mlp'"
        )
    if layer_hidden is None:
        layer_hidden = (config.hidden, *[(config.hidden[-1],)] * (n - 1))
    widths = check_hidden(layer_hidden, n)
    if posteriors is None:
        posteriors = (config.posterior,) * n
    if isinstance(posteriors, str) or len(posteriors) != n:
        raise ConfigError(f"posteriors must name one family per layer ({n}), got {posteriors!r}")
    names = [POSTERIORS.canonical(p) for p in posteriors]
    conditional = POSTERIORS.canonical(conditional_prior)
    if inference == "ladder":
        labelled = [(f"posteriors[{i}]", p) for i, p in enumerate(names)]
        for label, name in [*labelled, ("conditional_prior", conditional)]:
            if name != "diagonal":
                raise ConfigError(
                    f"inference 'ladder' merges diagonal normals, but {label} is {name!r}; "
                    "set it to 'diagonal' or use inference 'bottom_up'"
                )
    prior = PRIORS.build(
        config.prior, config.prior_options,
        latent_dim=sizes[-1], event_shape=config.event_shape, hidden=config.hidden,
    )  # fmt: skip
    if callable(getattr(prior, "bind", None)) and inference != "ladder":
        raise ConfigError(
            f"prior {config.prior!r} needs q(z{n} | x) as a function of x, which inference "
            "'bottom_up' reaches only through samples of the layers below; use inference "
            "'ladder' or another prior (e.g. 'normal', 'mixture', 'flow')"
        )
    likelihood = LIKELIHOODS.build(config.likelihood, config.likelihood_options)

    def family(name: str, size: int) -> Posterior:
        options = config.posterior_options if name == config.posterior else {}
        return POSTERIORS.build(name, options, latent_dim=size)

    return HierarchicalVAE(
        config.event_shape,
        sizes,
        widths,
        likelihood,
        prior,
        [family(name, size) for name, size in zip(names, sizes, strict=True)],
        [POSTERIORS.build(conditional, {}, latent_dim=size) for size in sizes[:-1]],
        inference=inference,
        activation=activation,
    )


#: Named architectures of the hierarchical VAE: ``--preset iwae`` is Burda et al. (2016)'s
#: two-stochastic-layer MNIST model (784-200-200-100 / 100-100-50, tanh).
HVAE_PRESETS: dict[str, dict[str, Any]] = {"iwae": IWAE_TWO_LAYER}


@register_model("hvae")
class HierarchicalKind(ModelKind):
    """Hierarchical VAE z_L -> ... -> z_1 -> x (sites ``z1``..``zL``).

    ``layers``: latent sizes from z_1 up (default: latent_dim and half of it); the nets
    between x and z_1 have the config's ``hidden`` widths, those between z_l and z_{l+1}
    ``upper_hidden`` (default: the last ``hidden`` width). ``inference``: ``bottom_up``
    (Burda et al. 2016) or ``ladder`` (Sonderby et al. 2016). ``layer_posteriors``: a family
    per layer (default: the config's posterior); ``conditional_prior``: the family of
    p(z_l | z_{l+1}). ``preset`` names a fixed architecture (``HVAE_PRESETS``).
    """

    figures: ClassVar[tuple[str, ...]] = (
        "elbo",
        "samples",
        "reconstructions",
        "latent",
        "kl_per_dim",
    )
    label: ClassVar[str] = "hierarchical VAE"

    def __init__(
        self,
        layers: Sizes | None = None,
        upper_hidden: Sizes | None = None,
        inference: str = "bottom_up",
        activation: str = "tanh",
        layer_posteriors: tuple[str, ...] | None = None,
        conditional_prior: str = "diagonal",
        preset: str | None = None,
    ):
        self.layers, self.upper_hidden = layers, upper_hidden
        self.inference, self.activation = inference, activation
        self.layer_posteriors, self.conditional_prior = layer_posteriors, conditional_prior
        self.preset = preset

    @classmethod
    def check_options(cls, options: dict) -> None:
        check_choice(options.get("inference", "bottom_up"), "inference", INFERENCES)
        preset = options.get("preset")
        if preset is not None:
            check_choice(preset, "preset", list(HVAE_PRESETS))
            fixed = [k for k in ("layers", "upper_hidden") if options.get(k) is not None]
            if fixed:
                raise ConfigError(
                    f"preset {preset!r} fixes the architecture; drop {fixed[0]} or the preset"
                )
        layers = options.get("layers")
        if layers is not None and len(layers) < 2:
            raise ConfigError(
                f"a hierarchical VAE needs at least 2 layers, got layers={list(layers)}; "
                "use --model vae for one"
            )

    def build(self, config: ModelConfig) -> nn.Module:
        if self.preset is not None:
            settings = dict(HVAE_PRESETS[self.preset])
        else:
            layers = self.layers or (config.latent_dim, max(1, math.ceil(config.latent_dim / 2)))
            upper = self.upper_hidden or (config.hidden[-1],)
            settings = {
                "layers": layers,
                "layer_hidden": (config.hidden, *([upper] * (len(layers) - 1))),
                "activation": self.activation,
            }
        settings["inference"] = self.inference
        return build_hierarchical(
            config,
            posteriors=self.layer_posteriors,
            conditional_prior=self.conditional_prior,
            **settings,
        )


__all__ = [
    "ACTIVATIONS",
    "INFERENCES",
    "IWAE_TWO_LAYER",
    "HierarchicalVAE",
    "build_hierarchical",
    "mlp",
    "normal_params",
    "precision_weighted",
    "trunk",
]
