"""A tiny data set and a run directory trained on it, for the tests of resume and schedules."""

from __future__ import annotations

from pathlib import Path

import torch

from pyro_vae.data import DataSplits
from pyro_vae.models import ModelConfig
from pyro_vae.runs import train_run
from pyro_vae.train import TrainConfig


def tiny(seed: int = 0) -> tuple[DataSplits, ModelConfig]:
    """40 points of 5 uniform values (30 / 5 / 5) and a 5-6-2 VAE config."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(40, 5, generator=g)
    return DataSplits("tiny", x[:30], x[30:35], x[35:]), ModelConfig(
        event_shape=(5,), latent_dim=2, hidden=(6,)
    )


def tiny_run(tmp_path: Path, name: str, epochs: int, seed: int = 0, **train) -> Path:
    """``tmp_path / name``: a run of ``epochs`` epochs on :func:`tiny`, batch 8."""
    data, model = tiny()
    config = TrainConfig(epochs=epochs, batch_size=8, seed=seed, valid_num_samples=3, **train)
    train_run("tiny", model, config, tmp_path / name, num_samples=5, progress=False, data=data)
    return tmp_path / name
