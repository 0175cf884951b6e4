"""A Student-t prior for pyro-vae: the module that the "Write your own prior" page registers.

Importing it registers the prior as ``student_t``; ``pyro-vae ... --plugin student_t_prior``
imports it for the command line (the folder holding it must be on ``PYTHONPATH``).
"""

import pyro.distributions as dist
import torch

from pyro_vae.parts import Prior, register_prior


@register_prior("student_t")
class StudentTPrior(Prior):
    """p(z) = prod_i StudentT(z_i; df, 0, 1): heavier tails than N(0, I).

    z: (*batch, latent_dim). ``df`` is an option: ``prior_options={"df": 3.0}`` in Python,
    ``--prior-opt df=3`` on the command line, ``df = 3.0`` in a config file's ``[prior]`` table.
    """

    def __init__(self, latent_dim: int, df: float = 4.0):
        super().__init__(latent_dim)
        self.df = df
        # Constants are buffers, not plain tensors: they move with vae.to(device) and are
        # saved in the checkpoint, but are not trained.
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self) -> dist.TorchDistribution:
        """The distribution over z; its ``log_prob`` is exact and normalized."""
        return dist.StudentT(self.df, self.loc, self.scale).to_event(1)
