"""Swappable parts of a VAE: priors, likelihoods, posterior families and networks.

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
    ConvDecoder,
    ConvEncoder,
    MLPDecoder,
    MLPEncoder,
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

__all__ = [
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
