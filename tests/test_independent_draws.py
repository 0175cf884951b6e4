"""Blocks of a sharded estimate and ranks of a run draw independent noise.

Seeded comparisons (two ranks against one process) pass when both sides share a bug that
reuses one block's or one rank's draws; these tests look at the draws themselves.
"""

from __future__ import annotations

import dataclasses

import pyro
import pyro.distributions as dist
import pytest
import torch
from refusals import whole

from pyro_vae.errors import ConfigError
from pyro_vae.infer import log_likelihood
from pyro_vae.infer.sharded import block_seed, sharded_estimate
from pyro_vae.train.parallel import rank_seed


def model(x):
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(1), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def wide_guide(x):  # not the posterior N(x / 2, 1/2): every estimate is random
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(x / 2, 1.5).to_event(1))


def test_blocks_of_one_point_repeated_get_independent_estimates():
    block, blocks, k = 3, 4, 3
    x = torch.full((block * blocks, 1), 0.7)
    r = sharded_estimate(log_likelihood, model, wide_guide, x, block_size=block, seed=3,
                         num_samples=k)  # fmt: skip
    per_block = r.per_example.reshape(blocks, block)
    # one block's draws reused: every block would hold the same four numbers
    for b in range(1, blocks):
        assert not torch.allclose(per_block[b], per_block[0])


def test_block_and_rank_seeds_are_distinct():
    seeds = {block_seed(5, b) for b in range(1000)}
    assert len(seeds) == 1000
    assert block_seed(5, 0) != block_seed(6, 0)
    ranks = [rank_seed(7, r) for r in range(16)]
    assert len(set(ranks)) == 16
    # the noise each rank draws differs
    draws = []
    for s in ranks[:2]:
        torch.manual_seed(s)
        draws.append(torch.randn(8))
    assert not torch.allclose(draws[0], draws[1])


def test_sharded_estimates_move_blocks_to_the_device_and_refuse_results_that_are_not_per_point():
    """Each block reaches the estimator on ``device`` (the meta device here) and where it was
    without one; a field that is not per-example is refused naming the block's point count
    (3, the second block of 4 + 3), whole message."""

    @dataclasses.dataclass
    class Scores:
        values: torch.Tensor

    seen = []

    def per_point(model, guide, x):
        seen.append(x.device.type)
        return Scores(torch.zeros(x.shape[0], device=x.device))

    x = torch.arange(7.0).unsqueeze(1)
    assert sharded_estimate(per_point, None, None, x, block_size=4).values.shape == (7,)
    assert sharded_estimate(per_point, None, None, x, block_size=4, device="meta").values.is_meta
    assert seen == ["cpu", "cpu", "meta", "meta"]

    def total_of_short_blocks(model, guide, x):
        return Scores(x[:, 0] if x.shape[0] == 4 else x.sum())

    with pytest.raises(ConfigError) as info:
        sharded_estimate(total_of_short_blocks, None, None, x, block_size=4)
    assert str(info.value) == (
        "Scores.values has shape () for 3 points, not per-example; sharded evaluation gathers "
        "per-example results only"
    )


def _per_point(model, guide, *inputs):
    return inputs[0][:, 0]


class _Pairs(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {"x": torch.zeros(2)}  # a dict: not a tensor or a tuple of tensors


X4 = torch.zeros(4, 2)

SHARDED_REFUSALS = [
    (
        "log weights kept",
        lambda: sharded_estimate(_per_point, None, None, X4, keep_log_weights=True),
        "sharded evaluation gathers per-example results only; drop keep_log_weights or run in one "
        "process",
    ),
    (
        "no block",
        lambda: sharded_estimate(_per_point, None, None, X4, block_size=0),
        "block_size must be at least 1, got 0",
    ),
    (
        "data as a list",
        lambda: sharded_estimate(_per_point, None, None, [[0.0, 1.0]]),
        "pass the data as tensors (N, ...), one torch Dataset or one DataLoader after the guide",
    ),
    (
        "tensors of different lengths",
        lambda: sharded_estimate(_per_point, None, None, X4, torch.zeros(3)),
        "data tensors have different numbers of points [4, 3]; slice them to the same N",
    ),
    (
        "dataset items that are not tensors",
        lambda: sharded_estimate(
            _per_point, None, None, torch.utils.data.DataLoader(_Pairs(), batch_size=2)
        ),
        "dataset items must be tensors or tuples of tensors (x, labels, ...); convert them in the "
        "dataset's __getitem__ or the loader's collate_fn",
    ),
]


@pytest.mark.parametrize(
    "call, message", [c[1:] for c in SHARDED_REFUSALS], ids=[c[0] for c in SHARDED_REFUSALS]
)
def test_sharded_refusals_are_checked_whole(call, message):
    with pytest.raises(ConfigError, match=whole(message)):
        call()


@dataclasses.dataclass
class _Sums:
    values: torch.Tensor


def test_one_dataset_is_read_block_by_block_and_gives_the_tensors_result():
    """One torch Dataset of (x, y) items (not tensors) is read ``block_size`` items at a time,
    collated into (x, y) blocks of 3, 3 and 1 points, and gathered into the same per-point
    result as the tensors x and y passed together."""
    x = torch.arange(14.0).reshape(7, 2)
    y = torch.arange(7) % 3
    seen = []

    def row_sums(model, guide, xs, ys):
        seen.append((xs.shape[0], tuple(ys.tolist())))
        return _Sums(xs.sum(-1) + ys)

    from_dataset = sharded_estimate(
        row_sums, None, None, torch.utils.data.TensorDataset(x, y), block_size=3
    )
    assert seen == [(3, (0, 1, 2)), (3, (0, 1, 2)), (1, (0,))]
    from_tensors = sharded_estimate(row_sums, None, None, x, y, block_size=3)
    expected = torch.tensor([1.0, 6.0, 11.0, 13.0, 18.0, 23.0, 25.0])
    assert torch.equal(from_dataset.values, expected)
    assert torch.equal(from_tensors.values, expected)


class _Rows(torch.utils.data.Dataset):
    """Items that are single tensors (one row each), not tuples."""

    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def test_a_dataset_or_loader_of_single_tensors_gives_the_tensors_result():
    """A Dataset whose items are single tensors, and a DataLoader whose batches are single
    tensors, reach the estimator as one (block, 2) input each, gathered into the same result
    as the tensor x."""
    x = torch.arange(14.0).reshape(7, 2)
    seen = []

    def row_sums(model, guide, xs):
        seen.append(tuple(xs.shape))
        return _Sums(xs.sum(-1))

    expected = torch.tensor([1.0, 5.0, 9.0, 13.0, 17.0, 21.0, 25.0])
    from_dataset = sharded_estimate(row_sums, None, None, _Rows(x), block_size=3)
    assert seen == [(3, 2), (3, 2), (1, 2)]
    assert torch.equal(from_dataset.values, expected)
    seen.clear()
    loader = torch.utils.data.DataLoader(x, batch_size=4)
    from_loader = sharded_estimate(row_sums, None, None, loader)
    assert seen == [(4, 2), (3, 2)]
    assert torch.equal(from_loader.values, expected)
    assert torch.equal(sharded_estimate(row_sums, None, None, x, block_size=3).values, expected)


def test_a_rank_without_a_block_learns_the_result_s_shapes_from_the_programs():
    """Rank 1 of 2 over a single block computes none of it: it runs the estimator on the first
    block only to learn the result's form, contributing zeros of the plain estimate's shapes
    (the sum over ranks is the plain estimate), with its other fields."""
    from pyro_vae.runtime.distributed import ProcessGroup

    x = torch.full((3, 1), 0.7)
    options = {"block_size": 4, "seed": 3, "num_samples": 3}
    plain = sharded_estimate(log_likelihood, model, wide_guide, x, **options)
    idle = sharded_estimate(
        log_likelihood, model, wide_guide, x, group=ProcessGroup(rank=1, world_size=2), **options
    )
    for field in dataclasses.fields(plain):
        mine, full = getattr(idle, field.name), getattr(plain, field.name)
        if isinstance(full, torch.Tensor):
            assert mine.shape == full.shape and mine.dtype == full.dtype
            assert not mine.any()
        else:
            assert mine == full
    assert plain.per_example.shape == (3,) and bool(plain.per_example.ne(0).all())


def test_every_gpu_that_holds_a_block_has_its_random_state_kept():
    """The devices whose random state a block's draws fork (and so leave as they were for the
    caller): each CUDA device holding one of the inputs, by index, once, in order; CPU inputs
    add none. Stand-ins carry the devices (this machine need not have two GPUs)."""
    from types import SimpleNamespace

    from pyro_vae.infer.sharded import _cuda_devices

    def on(device: torch.device) -> SimpleNamespace:
        return SimpleNamespace(device=device)

    cuda = [torch.device("cuda", i) for i in range(3)]
    inputs = (on(cuda[2]), on(torch.device("cpu")), on(cuda[1]), on(cuda[2]))
    assert _cuda_devices(inputs) == [1, 2]
    assert _cuda_devices((on(cuda[0]), on(cuda[1]))) == [0, 1]
    assert _cuda_devices((on(torch.device("cpu")),)) == []


def test_data_without_points_is_refused_before_any_estimate():
    """Zero points, as tensors, a Dataset or a DataLoader, on one process or on a rank of two:
    the whole refusal, and the estimator never runs (an empty result has nothing to gather)."""
    from pyro_vae.errors import DataError
    from pyro_vae.runtime.distributed import ProcessGroup

    calls = []

    def counted(model, guide, *inputs):
        calls.append(inputs)
        return _Sums(inputs[0].sum(-1))

    empty = torch.zeros(0, 2)
    message = "no data points to evaluate; pass a non-empty tensor, Dataset or DataLoader"
    for data, group in [
        ((empty,), None),
        ((empty, torch.zeros(0)), None),
        ((_Rows(empty),), None),
        ((torch.utils.data.DataLoader(empty, batch_size=2),), None),
        ((empty,), ProcessGroup(rank=1, world_size=2)),
    ]:
        with pytest.raises(DataError, match=whole(message)):
            sharded_estimate(counted, None, None, *data, block_size=3, group=group)
    assert calls == []


def test_a_block_seeds_the_cpu_and_the_gpus_that_hold_it_and_no_other(monkeypatch):
    """A block on CPU data seeds the CPU generator only: no CUDA generator is reseeded, since
    the block's fork saved none (``torch.manual_seed`` would reseed every GPU and leave the
    caller's CUDA draws changed). A block on CUDA devices 2 and 0 seeds those two, each with the
    block's seed (stand-ins carry the devices and record the calls: this machine need not have
    a GPU). Draws from the CPU generator follow the block seed exactly."""
    import dataclasses
    from types import SimpleNamespace

    from pyro_vae.infer import sharded

    calls = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda s: calls.append(("all", s)))
    monkeypatch.setattr(torch.cuda, "manual_seed", lambda s: calls.append(("current", s)))

    class OnDevice:
        def __init__(self, index):
            self.index = index

        def __enter__(self):
            calls.append(("device", self.index))

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "device", OnDevice)

    @dataclasses.dataclass
    class Draws:
        values: torch.Tensor

    def first_draw(model, guide, x):
        return Draws(torch.rand(x.shape[0]))

    forked = []
    fork_rng = torch.random.fork_rng

    def recording_fork(devices=None, **kwargs):
        forked.append(devices)
        return fork_rng(devices=devices, **kwargs)

    monkeypatch.setattr(torch.random, "fork_rng", recording_fork)
    estimate = sharded.sharded_estimate(first_draw, None, None, torch.zeros(5), block_size=2)
    assert calls == [] and forked == [[], [], []]  # no GPU's state touched, none forked
    assert estimate.values[4] == torch.rand(1, generator=torch.Generator().manual_seed(
        sharded.block_seed(0, 2)))[0]
    sharded._seed_block(1234, (torch.zeros(2), torch.ones(3)))
    assert calls == []
    assert torch.equal(torch.rand(4), torch.rand(4, generator=torch.Generator().manual_seed(1234)))

    def on(device: torch.device) -> SimpleNamespace:
        return SimpleNamespace(device=device)

    gpus = (on(torch.device("cuda", 2)), on(torch.device("cpu")), on(torch.device("cuda", 0)))
    sharded._seed_block(99, gpus)
    assert calls == [("device", 0), ("current", 99), ("device", 2), ("current", 99)]

    seeds = []
    monkeypatch.setattr(torch, "mps", SimpleNamespace(manual_seed=seeds.append), raising=False)
    sharded._seed_block(7, (on(torch.device("mps")),))
    assert seeds == [7]
