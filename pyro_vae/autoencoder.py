"""A deterministic autoencoder baseline built from the same networks and likelihood as a VAE.

z = encoder(x) (a point, not a distribution) and the loss is the reconstruction negative
log-likelihood -log p(x | decoder(z)) under the VAE's likelihood: the ELBO without the
sampling of z and without the KL term. Nothing pulls the codes towards a prior, so the code
space has gaps between clusters and off them decodes poorly (the lecture's "limitations").
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyro.distributions as dist
import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import save_checkpoint
from .config import ModelConfig, build_likelihood
from .data import DataSplits, dynamic_binarize
from .errors import TrainingError
from .nets import MLPDecoder, MLPEncoder
from .train import FitResult, TrainConfig, check_fit, eval_data


class Autoencoder(nn.Module):
    """Encoder -> code z (latent_dim) -> decoder -> likelihood parameters.

    Same interface as the VAE where it makes sense: ``encode(x)`` returns a point mass
    ``Delta(z)`` (so ``.mean`` is the code), ``decode(z)`` returns p(x | z),
    ``reconstruct(x)`` returns E[x | z(x)].
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, likelihood, event_shape, latent_dim):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        self.event_shape = tuple(int(s) for s in event_shape)
        self.latent_dim = int(latent_dim)

    def encode(self, x: torch.Tensor) -> dist.TorchDistribution:
        """x: (*batch, *event_shape) -> Delta(z) with event_shape (latent_dim,)."""
        return dist.Delta(self.encoder(x), event_dim=1)

    def decode(self, z: torch.Tensor) -> dist.TorchDistribution:
        """z: (*batch, latent_dim) -> p(x | z) with event_shape ``event_shape``."""
        batch = z.shape[:-1]
        params = self.decoder(z).reshape(*batch, self.likelihood.num_params, *self.event_shape)
        return self.likelihood(params.movedim(len(batch), -1)).to_event(len(self.event_shape))

    def reconstruction_nll(self, x: torch.Tensor) -> torch.Tensor:
        """-log p(x | decoder(encoder(x))) per data point: x: (batch, *event_shape) -> (batch,)."""
        return -self.decode(self.encoder(x)).log_prob(x)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encoder(x)).mean


def build_autoencoder(config: ModelConfig) -> Autoencoder:
    """The VAE's networks with a code of ``latent_dim`` outputs instead of q(z|x)'s parameters."""
    likelihood = build_likelihood(config)
    n_out = likelihood.num_params * math.prod(config.event_shape)
    encoder = MLPEncoder(config.event_shape, config.latent_dim, config.hidden)
    decoder = MLPDecoder(config.latent_dim, n_out, tuple(reversed(config.hidden)))
    return Autoencoder(encoder, decoder, likelihood, config.event_shape, config.latent_dim)


@torch.no_grad()
def mean_reconstruction_nll(ae: Autoencoder, x: torch.Tensor, batch_size: int = 2048):
    """Mean and standard error of the reconstruction NLL (nats per data point) over x."""
    nll = torch.cat(
        [ae.reconstruction_nll(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    )
    return float(nll.mean()), float(nll.std() / math.sqrt(len(nll))) if len(nll) > 1 else 0.0


def fit_autoencoder(
    ae: Autoencoder,
    data: DataSplits,
    config: TrainConfig,
    run_dir: str | Path | None = None,
    model_config: ModelConfig | None = None,
    progress: bool = True,
) -> FitResult:
    """Minimize the mean reconstruction NLL with Adam, as :func:`pyro_vae.train.fit` does the
    negative ELBO (same batches, binarization and run files). Each history record has
    ``train_nll``, ``valid_nll`` and ``valid_nll_stderr`` in nats per data point.
    """
    check_fit(ae, data, config.batch_size)
    torch.manual_seed(config.seed)
    optimizer = torch.optim.Adam(ae.parameters(), lr=config.lr)
    valid = eval_data(ae, data.valid)
    run = Path(run_dir) if run_dir is not None else None
    if run is not None:
        run.mkdir(parents=True, exist_ok=True)
        (run / "metrics.jsonl").write_text("")
    history: list[dict[str, Any]] = []
    n = data.train.shape[0]
    start = time.perf_counter()
    bar = tqdm(range(1, config.epochs + 1), desc="train AE", unit="epoch", disable=not progress)
    for epoch in bar:
        ae.train()
        perm = torch.randperm(n)
        total, seen = 0.0, 0
        for step, i in enumerate(range(0, n, config.batch_size)):
            x = data.train[perm[i : i + config.batch_size]]
            if ae.likelihood.binarize:
                x = dynamic_binarize(x)
            loss = ae.reconstruction_nll(x).mean()
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"loss is {float(loss)} at epoch {epoch}, step {step}; lower the learning "
                    "rate or check the data scale"
                )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * x.shape[0]
            seen += x.shape[0]
        ae.eval()
        val, val_se = mean_reconstruction_nll(ae, valid)
        record = {
            "epoch": epoch,
            "train_nll": total / seen,
            "valid_nll": val,
            "valid_nll_stderr": val_se,
            "seconds": time.perf_counter() - start,
        }
        history.append(record)
        bar.set_postfix(train=f"{record['train_nll']:.2f}", valid=f"{val:.2f}")
        if run is not None:
            with open(run / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            save_checkpoint(
                run / "checkpoint.pt",
                {
                    "model_config": model_config.to_dict() if model_config else None,
                    "train_config": asdict(config),
                    "model_state": ae.state_dict(),
                    "optimizer_state": optimizer.state_dict(),
                    "epoch": epoch,
                    "torch_rng_state": torch.get_rng_state(),
                },
            )
    return FitResult(history, config.epochs, time.perf_counter() - start)
