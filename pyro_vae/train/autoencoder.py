"""The autoencoder baseline's fit loop: minimize the reconstruction NLL with Adam."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from pyro_vae.data.binarize import dynamic_binarize, eval_data
from pyro_vae.data.splits import DataSplits
from pyro_vae.errors import TrainingError
from pyro_vae.models.autoencoder import Autoencoder, mean_reconstruction_nll
from pyro_vae.models.config import ModelConfig
from pyro_vae.train.checkpoint import save_checkpoint
from pyro_vae.train.loop import FitResult, TrainConfig, check_fit


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
