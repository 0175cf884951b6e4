"""Process bodies for the two-process (gloo, CPU) tests: importable by spawned children."""

from __future__ import annotations

import os

import pyro
import torch
import torch.distributed as dist

from pyro_vae.runtime.distributed import close_group


def join(rank: int, world: int, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def small_vae():
    from pyro_vae import ModelConfig, build_vae
    from pyro_vae.data import eval_data, load_digits

    data = load_digits()
    pyro.set_rng_seed(0)
    vae = build_vae(ModelConfig(event_shape=data.event_shape, hidden=(32,)))
    return vae, eval_data(vae, data.test[:37])


def sharded_log_likelihood(rank: int, world: int, port: int, out: str) -> None:
    """Each rank computes its blocks; rank 0 saves the gathered per-example values."""
    from pyro_vae.infer import log_likelihood
    from pyro_vae.infer.sharded import sharded_estimate

    join(rank, world, port)
    try:
        vae, x = small_vae()
        result = sharded_estimate(
            log_likelihood, vae.model, vae.guide, x, block_size=8, seed=5, num_samples=50
        )
        torch.save(
            {"per_example": result.per_example, "ess": result.ess},
            f"{out}.rank{rank}",
        )
    finally:
        close_group()


def ddp_steps(rank: int, world: int, port: int, out: str, steps: int, batch: int) -> None:
    """``steps`` Adam steps of the ELBO under DDP; rank r saves its parameters."""
    from pyro_vae.data import load_digits
    from pyro_vae.data.batches import epoch_batches, epoch_order
    from pyro_vae.infer import make_objective
    from pyro_vae.runtime import current_group
    from pyro_vae.train.parallel import LossModule, rank_seed, replicate

    join(rank, world, port)
    try:
        vae, _ = small_vae()
        train = load_digits().train
        group = current_group()
        objective = make_objective("elbo")
        module = replicate(
            LossModule(vae, lambda x: objective.loss(vae.model, vae.guide, x).loss / x.shape[0]),
            group,
            torch.device("cpu"),
        )
        optimizer = torch.optim.Adam(vae.parameters(), lr=1e-2)
        order = epoch_order(train.shape[0], 1, 0, group)
        torch.manual_seed(rank_seed(0, rank))
        for _, x in zip(range(steps), epoch_batches(train, batch, order), strict=False):
            loss = module(torch.bernoulli(x))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        torch.save(vae.state_dict(), f"{out}.rank{rank}")
    finally:
        close_group()


def train_on_rank_data(rank: int, world: int, port: int, out: str) -> None:
    """``train_run`` where rank 1's training points differ from rank 0's (same shape); each
    rank saves the message it was refused with (or "trained")."""
    from pyro_vae import ModelConfig
    from pyro_vae.data import DataSplits, load_digits
    from pyro_vae.errors import PyroVAEError
    from pyro_vae.runs import train_run
    from pyro_vae.train import TrainConfig

    join(rank, world, port)
    try:
        data = load_digits()
        if rank == 1:
            data = DataSplits(data.name, data.train.flip(0), data.valid, data.test)
        config = ModelConfig(event_shape=data.event_shape, hidden=(8,))
        try:
            train_run(
                "digits", config, TrainConfig(epochs=1, batch_size=128), f"{out}/run",
                num_samples=2, progress=False, data=data,
            )  # fmt: skip
            message = "trained"
        except PyroVAEError as exc:
            message = f"{type(exc).__name__}: {exc}"
        with open(f"{out}/rank{rank}.txt", "w") as f:
            f.write(message)
    finally:
        close_group()


#: The two-process ``fit`` and its one-process twin (tests/test_distributed.py): 96 digits
#: (three steps of 2 x 16 points per epoch), an autoencoder with a fixed-scale Gaussian
#: likelihood, and an Adam whose epsilon is large enough for the step to depend on the
#: gradient's scale.
FIT_POINTS, FIT_RANK_BATCH, FIT_EPOCHS = 96, 16, 2
FIT_CONFIG = dict(epochs=FIT_EPOCHS, lr=0.05, adam_eps=1.0, seed=3)


def fit_digits():
    """The data and a freshly initialized autoencoder of the two-process ``fit`` test."""
    from pyro_vae import ModelConfig
    from pyro_vae.data import DataSplits, load_digits
    from pyro_vae.models.autoencoder import build_autoencoder

    digits = load_digits()
    data = DataSplits("digits", digits.train[:FIT_POINTS], digits.valid[:40], digits.test[:40])
    config = ModelConfig(
        event_shape=data.event_shape, latent_dim=2, hidden=(16,), likelihood="normal"
    )
    torch.manual_seed(0)
    return data, build_autoencoder(config)


def fit_two_ranks(rank: int, world: int, port: int, out: str) -> None:
    """``fit`` at batch size 16 per rank; rank r saves its parameters and history."""
    from pyro_vae.train import TrainConfig, fit

    join(rank, world, port)
    try:
        data, ae = fit_digits()
        if rank == 1:  # DDP starts every replica from rank 0's weights
            with torch.no_grad():
                for p in ae.parameters():
                    p.add_(1.0)
        config = TrainConfig(batch_size=FIT_RANK_BATCH, **FIT_CONFIG)
        result = fit(ae, data, config, progress=False)
        history = [{k: v for k, v in r.items() if k != "seconds"} for r in result.history]
        torch.save({"state": ae.state_dict(), "history": history}, f"{out}.rank{rank}")
    finally:
        close_group()
