"""Two processes on this CPU (gloo): sharded evaluation gives one process's numbers."""

from __future__ import annotations

import socket

import distributed_workers as workers
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pyro_vae.infer import log_likelihood
from pyro_vae.infer.sharded import sharded_estimate

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sharded_log_likelihood_over_two_ranks_equals_one_process(tmp_path):
    out = str(tmp_path / "ll")
    mp.start_processes(
        workers.sharded_log_likelihood,
        args=(2, free_port(), out),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    vae, x = workers.small_vae()
    single = sharded_estimate(
        log_likelihood, vae.model, vae.guide, x, block_size=8, seed=5, num_samples=50
    )
    for rank in range(2):
        got = torch.load(f"{out}.rank{rank}", weights_only=True)
        torch.testing.assert_close(got["per_example"], single.per_example)
        torch.testing.assert_close(got["ess"], single.ess)
    # a different seed gives different draws: the comparison above is not vacuous
    other = sharded_estimate(
        log_likelihood, vae.model, vae.guide, x, block_size=8, seed=6, num_samples=50
    )
    assert not torch.equal(other.per_example, single.per_example)


def test_sharded_estimate_refuses_non_per_example_results():
    vae, x = workers.small_vae()
    with pytest.raises(Exception, match="keep_log_weights"):
        sharded_estimate(
            log_likelihood, vae.model, vae.guide, x, num_samples=5, keep_log_weights=True
        )


def test_ddp_steps_equal_one_process_on_the_union_of_the_batches(tmp_path):
    """Two ranks after 3 steps hold identical parameters, equal to one process that averages
    the two ranks' batch losses with each rank's own latent noise."""
    from pyro_vae.data import load_digits
    from pyro_vae.data.batches import epoch_batches, epoch_order
    from pyro_vae.infer import make_objective
    from pyro_vae.runtime import ProcessGroup
    from pyro_vae.train.parallel import rank_seed

    steps, batch, world = 3, 16, 2
    out = str(tmp_path / "ddp")
    mp.start_processes(
        workers.ddp_steps,
        args=(world, free_port(), out, steps, batch),
        nprocs=world,
        join=True,
        start_method="spawn",
    )
    ranks = [torch.load(f"{out}.rank{r}", weights_only=True) for r in range(world)]
    for key in ranks[0]:
        assert torch.equal(ranks[0][key], ranks[1][key]), key

    vae, _ = workers.small_vae()
    train = load_digits().train
    objective = make_objective("elbo")
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-2)
    batches, states = [], []
    for r in range(world):
        order = epoch_order(train.shape[0], 1, 0, ProcessGroup(r, world))
        batches.append(list(epoch_batches(train, batch, order))[:steps])
        torch.manual_seed(rank_seed(0, r))
        states.append(torch.get_rng_state())
    for step in range(steps):
        optimizer.zero_grad()
        for r in range(world):
            torch.set_rng_state(states[r])
            x = torch.bernoulli(batches[r][step])
            loss = objective.loss(vae.model, vae.guide, x).loss / (world * x.shape[0])
            loss.backward()
            states[r] = torch.get_rng_state()
        optimizer.step()
    moved = False
    for key, value in vae.state_dict().items():
        torch.testing.assert_close(ranks[0][key], value, rtol=1e-4, atol=1e-5)
        moved |= not torch.equal(value, workers.small_vae()[0].state_dict()[key])
    assert moved, "the steps changed no parameter: the comparison would be vacuous"


def test_a_two_process_fit_equals_one_process_fit_on_the_union_of_the_batches(
    tmp_path, monkeypatch
):
    """``fit`` in two processes at batch size b per rank ends where ``fit`` in one process at
    batch size 2b ends, with the same history (train and validation NLL per point).

    Each step of the two ranks takes interleaved halves of one global batch (the
    ``DistributedSampler`` rule of ``epoch_order``: the permutation of seed + epoch, every
    second index from the rank), so the union of a step's two batches is that permutation's
    next 2b points; the one-process run is given the same permutation as its epoch order.
    The model is the autoencoder with a fixed-scale Gaussian likelihood: a VAE's latent noise
    (and a Bernoulli likelihood's binarization) is drawn per rank from the rank's own seed,
    so no one-process run draws the same numbers; without draws the two runs compute the
    same sums in a different order, equal to float32 rounding. Adam's epsilon is set to 1
    (the gradients are of order 1): with the default 1e-8 its step is nearly independent of
    the gradient's scale, and a step loss divided by the number of processes would go
    unseen in the parameters. Rank 1 starts from other weights, which DDP replaces by rank
    0's. The history catches epoch metrics summed over the processes but divided by one
    process's points (twice the loss).
    """
    from pyro_vae.train import TrainConfig, fit, loop

    out = str(tmp_path / "fit")
    mp.start_processes(
        workers.fit_two_ranks, args=(2, free_port(), out), nprocs=2, join=True,
        start_method="spawn",
    )  # fmt: skip
    ranks = [torch.load(f"{out}.rank{r}", weights_only=True) for r in range(2)]

    config = TrainConfig(batch_size=2 * workers.FIT_RANK_BATCH, **workers.FIT_CONFIG)
    seen = []

    def union_order(n, epoch, seed, group):
        assert not group.distributed
        seen.append(epoch)
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))

    monkeypatch.setattr(loop, "epoch_order", union_order)
    data, ae = workers.fit_digits()
    initial = {k: v.clone() for k, v in ae.state_dict().items()}
    result = fit(ae, data, config, progress=False)
    assert seen == list(range(1, workers.FIT_EPOCHS + 1))
    history = [{k: v for k, v in r.items() if k != "seconds"} for r in result.history]

    for rank in ranks:
        assert [r.keys() for r in rank["history"]] == [r.keys() for r in history]
        for got, want in zip(rank["history"], history, strict=True):
            for key in want:
                assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
        for key, value in ae.state_dict().items():
            torch.testing.assert_close(rank["state"][key], value, rtol=1e-4, atol=1e-5)
    for key, value in initial.items():  # the steps moved the weights: not a vacuous match
        assert (ae.state_dict()[key] - value).abs().max() > 1e-3, key


def test_a_dataset_or_a_loader_gives_the_tensors_numbers():
    from torch.utils.data import DataLoader, TensorDataset

    vae, x = workers.small_vae()
    kw = dict(block_size=8, seed=2, num_samples=20)
    tensors = sharded_estimate(log_likelihood, vae.model, vae.guide, x, **kw)
    dataset = sharded_estimate(log_likelihood, vae.model, vae.guide, TensorDataset(x), **kw)
    loader = sharded_estimate(
        log_likelihood, vae.model, vae.guide, DataLoader(TensorDataset(x), batch_size=8), **kw
    )
    torch.testing.assert_close(dataset.per_example, tensors.per_example)
    torch.testing.assert_close(loader.per_example, tensors.per_example)


def test_ranks_whose_data_differ_are_refused_before_the_first_step(tmp_path):
    mp.start_processes(
        workers.train_on_rank_data,
        args=(2, free_port(), str(tmp_path)),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    for rank in range(2):
        message = (tmp_path / f"rank{rank}.txt").read_text()
        assert message.startswith("DataError: rank 1 of 2 holds train data that differ from "
                                  "rank 0's"), message  # fmt: skip
        assert "\n" not in message
    assert not (tmp_path / "run").exists(), "refused before the run directory is made"


def test_leave_group_leaves_a_callers_group_and_close_group_closes_it(tmp_path):
    """``leave_group`` destroys only a group ``init_from_environment`` joined; ``close_group``
    destroys whichever group is current (after its barrier and collection), and is a no-op with
    none."""
    from pyro_vae.runtime import close_group, leave_group

    close_group()  # no group: nothing to do
    store = f"file://{tmp_path / 'store'}"
    dist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
    try:
        leave_group()
        assert dist.is_initialized()
        close_group()
        assert not dist.is_initialized()
        close_group(wait=False)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
