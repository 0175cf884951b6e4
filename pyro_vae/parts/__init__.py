"""Swappable parts of a VAE: priors, likelihoods, posterior families and networks.

Each kind has a registry ([`pyro_vae.parts.registry`][]): ``@register_prior("name")`` on a
class makes it buildable from Python, config files and the command line.

Each part is a ``PyroModule`` whose ``forward`` returns a ``pyro.distributions`` object (or, for
networks, a tensor); the model calls ``pyro.sample``, never the part.
"""

from pyro_vae.parts.likelihoods import (
    LIKELIHOODS,
    Bernoulli,
    ContinuousBernoulli,
    DiscretizedLogistic,
    HeteroscedasticNormal,
    Laplace,
    LearnedScaleNormal,
    Likelihood,
    NegativeBinomial,
    Normal,
    Poisson,
)
from pyro_vae.parts.nets import (
    ARCHS,
    ConvDecoder,
    ConvEncoder,
    ConvNets,
    MLPDecoder,
    MLPEncoder,
    MLPNets,
    Nets,
)
from pyro_vae.parts.posteriors import (
    IAF,
    POSTERIORS,
    DiagonalNormal,
    FlowPosteriorDistribution,
    FullRankNormal,
    LowRankNormal,
    Posterior,
)
from pyro_vae.parts.priors import (
    PRIORS,
    FlowPrior,
    GaussianMixture,
    LearnedNormal,
    Prior,
    StandardNormal,
    UniformMixture,
    VampPrior,
)
from pyro_vae.parts.registry import (
    REGISTRIES,
    Registry,
    import_plugins,
    register_arch,
    register_likelihood,
    register_posterior,
    register_prior,
)

__all__ = [
    "Registry",
    "REGISTRIES",
    "register_prior",
    "register_likelihood",
    "register_posterior",
    "register_arch",
    "import_plugins",
    "ARCHS",
    "Nets",
    "MLPNets",
    "ConvNets",
    "PRIORS",
    "POSTERIORS",
    "LIKELIHOODS",
    "Prior",
    "StandardNormal",
    "LearnedNormal",
    "GaussianMixture",
    "UniformMixture",
    "VampPrior",
    "FlowPrior",
    "Likelihood",
    "Bernoulli",
    "Normal",
    "LearnedScaleNormal",
    "HeteroscedasticNormal",
    "Laplace",
    "ContinuousBernoulli",
    "DiscretizedLogistic",
    "Poisson",
    "NegativeBinomial",
    "Posterior",
    "DiagonalNormal",
    "FullRankNormal",
    "LowRankNormal",
    "FlowPosteriorDistribution",
    "IAF",
    "MLPEncoder",
    "MLPDecoder",
    "ConvEncoder",
    "ConvDecoder",
]
