"""Diagnostics of importance-sampled estimates, and one data point's posterior for ArviZ."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import torch

from pyro_vae.errors import ConfigError, DataError
from pyro_vae.infer.trace import (
    batch_size_of,
    check_program,
    choose_strategy,
    particle_dim_of,
    particle_terms,
)

#: Above this PSIS shape the importance-sampling estimate is unreliable (Vehtari et al. 2024).
KHAT_UNRELIABLE = 0.7


def _arviz():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


def psis_khat(log_weights: torch.Tensor) -> torch.Tensor:
    """Pareto-smoothed importance sampling shape k-hat per data point.

    log_weights: (K, N), as ``log_likelihood(..., keep_log_weights=True).log_weights`` ->
    (N,). k-hat estimates the tail index of the weight distribution by fitting a generalized
    Pareto distribution to its largest weights (``arviz.psislw``; Vehtari, Simpson, Gelman,
    Yao & Gabry 2024). k < 0.5: finite variance; k > 0.7: the estimate is unreliable.
    Points whose log weights are all equal (to 1e-4; zero variance) get k = -inf.
    """
    az = _arviz()
    lw = log_weights.detach().double().T.contiguous().numpy()  # arviz: samples last
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, k = az.psislw(lw)
    k = torch.as_tensor(np.asarray(k), dtype=log_weights.dtype)
    # equal weights (the exact posterior as proposal) have no tail: the GPD fit degenerates
    spread = log_weights.max(0).values - log_weights.min(0).values
    return torch.where(spread < 1e-4, torch.full_like(k, -math.inf), k)


def khat_summary(khat: torch.Tensor) -> dict[str, float]:
    """Fraction of points over 0.5 and over ``KHAT_UNRELIABLE``, and the largest k-hat."""
    return {
        "frac_over_0.5": float((khat > 0.5).float().mean()),
        "frac_over_0.7": float((khat > KHAT_UNRELIABLE).float().mean()),
        "max": float(khat.max()),
    }


@torch.no_grad()
def posterior_inference_data(
    model: Callable,
    guide: Callable,
    *data,
    num_samples: int = 1000,
    site: str | None = None,
    seed: int | None = None,
    data_plate: str = "data",
    **kwargs,
):
    """q(z | x) samples and importance-resampled samples for ONE data point, as InferenceData.

    data: tensors each (1, ...), e.g. x: (1, *event_shape); ``kwargs`` go to both programs.
    ``site``: the latent site to report (default: the only latent site; required when the
    guide has several). Groups: ``posterior`` holds the importance-resampled draws
    (sampling-importance-resampling: z_k ~ q, resampled with probabilities w_k / sum_j w_j,
    w_k = p(x, z_k) / q(z_k | x); closer to p(z | x) than q as K grows), the raw draws from
    q(z | x) are in group ``variational`` and the log weights in ``sample_stats``
    (``log_weight``, one chain). ``arviz.summary(idata)`` summarizes the resampled posterior;
    ``arviz.summary(idata, group="variational")`` q.
    """
    import pyro
    import xarray as xr

    az = _arviz()
    if batch_size_of(data) != 1:
        raise DataError(
            f"expected one data point, got a batch of {batch_size_of(data)}; pass x[i : i + 1]"
        )
    info = check_program(model, guide, *data, data_plate=data_plate, restore_rng=True, **kwargs)
    latent = info.latent
    if info.enumerated:
        raise ConfigError(
            f"sites {list(info.enumerated)} are enumerated, so the guide's draws of the other "
            "sites come one per enumerated value; summarize a program without enumeration, or "
            "score it with log_likelihood"
        )
    if site is None:
        if len(latent) != 1:
            raise ConfigError(
                f"the guide has latent sites {latent}; choose one with site=..."
            )
        site = latent[0]
    elif site not in latent:
        raise ConfigError(f"{site!r} is not a latent site of the guide; choose one of {latent}")
    if seed is not None:
        pyro.set_rng_seed(seed)
    pdim = particle_dim_of(model, guide, *data, **kwargs)
    strategy = choose_strategy(
        model, guide, *data, particle_dim=pdim, data_plate=data_plate, **kwargs
    )
    terms = particle_terms(
        model, guide, num_samples, *data, particle_dim=pdim, data_plate=data_plate,
        strategy=strategy, **kwargs,
    )  # fmt: skip
    z = terms.z[site].reshape(num_samples, -1)  # (K, latent_dim)
    lw = terms.log_weights()[:, 0]
    idx = torch.multinomial(torch.softmax(lw, 0), num_samples, replacement=True)
    dims = {site: [f"{site}_dim"]}
    idata = az.from_dict(
        posterior={site: z[idx].numpy()[None]},
        sample_stats={"log_weight": lw.numpy()[None]},
        dims=dims,
    )
    variational = xr.Dataset(
        {site: (("chain", "draw", f"{site}_dim"), z.numpy()[None])},
        coords={"chain": [0], "draw": np.arange(num_samples)},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        idata.add_groups(variational=variational)
    return idata
