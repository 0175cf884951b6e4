"""The library's own model kinds, registered by name ([`pyro_vae.models.kinds`][]).

``vae``: one latent layer, p(z) p(x|z) and q(z|x). ``ae``: the deterministic autoencoder
baseline with the same networks and likelihood. ``cvae``: conditional on labels or on one
quadrant of an image. ``hvae``: L >= 2 stochastic layers, bottom-up or ladder inference.
``m2``: semi-supervised with the label summed out where it is not observed.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from pyro_vae.models.autoencoder import build_autoencoder
from pyro_vae.models.config import ModelConfig, build_vae
from pyro_vae.models.kinds import ModelKind, register_model


@register_model("vae")
class VAEKind(ModelKind):
    """The VAE: z ~ p(z), x ~ p(x | z); guide z ~ q(z | x) ([`VAE`][pyro_vae.models.vae.VAE])."""

    def build(self, config: ModelConfig) -> nn.Module:
        return build_vae(config)

    def gap_parts(self, model: nn.Module) -> tuple[Any, Any]:
        return model.posterior, model.encoder


@register_model("ae")
class AutoencoderKind(ModelKind):
    """The deterministic autoencoder baseline: reconstruction NLL, no prior, no p(x)."""

    task: ClassVar[str] = "reconstruction"
    figures: ClassVar[tuple[str, ...]] = (
        "loss",
        "samples",
        "reconstructions",
        "latent",
        "interpolation",
    )
    metrics: ClassVar[tuple[str, ...]] = ("reconstruction_nll",)
    final_metric: ClassVar[str] = "valid_nll"
    label: ClassVar[str] = "autoencoder"
    scores_likelihood: ClassVar[bool] = False

    def build(self, config: ModelConfig) -> nn.Module:
        return build_autoencoder(config)


__all__: list[Any] = ["AutoencoderKind", "VAEKind"]
