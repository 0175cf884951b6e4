"""Sharded estimates block by block: each block drawn under its documented seed, gathered into
the same per-point result on any rank layout."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from refusals import whole

from pyro_vae.errors import ConfigError
from pyro_vae.infer.sharded import block_seed, sharded_estimate
from pyro_vae.runtime.distributed import ProcessGroup


@dataclasses.dataclass
class Draws:
    """A result with a field that is not a tensor first, then per-point tensors of one and two
    dims."""

    label: str
    values: torch.Tensor
    rows: torch.Tensor


def draws(model, guide, x):
    """Per point: a uniform draw, and the point's row plus a normal draw (both from torch's
    global stream, as an estimator's samples are)."""
    n, on = x.shape[0], x.device
    return Draws("draws", torch.rand(n, device=on), x + torch.randn(n, 2, device=on))


def block_draws(x: torch.Tensor, seed: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What one block of points ``x`` draws under the documented seed of block ``block``."""
    torch.manual_seed(block_seed(seed, block))
    return torch.rand(x.shape[0]), x + torch.randn(x.shape[0], 2)


def expected(x: torch.Tensor, sizes: list[int], seed: int, blocks=None):
    """The per-point result of blocks of ``sizes`` points, block b under block_seed(seed, b);
    blocks outside ``blocks`` (a rank's share) are zeros."""
    values, rows, lo = torch.zeros(x.shape[0]), torch.zeros(x.shape[0], 2), 0
    for b, size in enumerate(sizes):
        if blocks is None or b in blocks:
            values[lo : lo + size], rows[lo : lo + size] = block_draws(x[lo : lo + size], seed, b)
        lo += size
    return values, rows


def test_block_seeds_are_the_documented_seed_sequence_words():
    """Block b under run seed s: the first 64-bit word of SeedSequence([s, b]), halved to fit
    torch's seeds (below 2^63)."""
    assert [block_seed(0, b) for b in range(3)] == [
        7896617691693857887,
        2918264622725855778,
        8597659618385908031,
    ]
    assert block_seed(7, 2) == 9139555415570476218
    word = np.random.SeedSequence([7, 2]).generate_state(1, np.uint64)[0]
    assert block_seed(7, 2) == int(word) // 2 < 2**63


def test_blocks_of_64_points_under_run_seed_0_by_default():
    """130 points with no block_size and no seed: blocks of 64, 64 and 2 points, block b drawn
    under block_seed(0, b); every per-point field gathered in data order, the other fields
    taken as they are."""
    x = torch.arange(260.0).reshape(130, 2)
    seen = []

    def recorded(model, guide, x):
        seen.append(x.shape[0])
        return draws(model, guide, x)

    r = sharded_estimate(recorded, None, None, x)
    assert seen == [64, 64, 2]
    values, rows = expected(x, [64, 64, 2], seed=0)
    assert r.label == "draws"
    assert torch.equal(r.values, values)
    assert torch.equal(r.rows, rows)


def test_blocks_of_one_point_each_get_their_own_seed():
    x = torch.arange(6.0).reshape(3, 2)
    r = sharded_estimate(draws, None, None, x, block_size=1, seed=5)
    values, rows = expected(x, [1, 1, 1], seed=5)
    assert torch.equal(r.values, values) and torch.equal(r.rows, rows)
    with pytest.raises(ConfigError, match=whole("block_size must be at least 1, got 0")):
        sharded_estimate(draws, None, None, x, block_size=0)


def test_each_rank_computes_every_other_block_and_the_ranks_add_up_to_one_process():
    """5 points in blocks of 2 over two ranks: rank 0 computes blocks 0 and 2, rank 1 block 1,
    each under the block's own seed with zeros elsewhere; the two add up to the one-process
    result."""
    x = torch.arange(10.0).reshape(5, 2)
    ranks = [
        sharded_estimate(draws, None, None, x, block_size=2, seed=3, group=ProcessGroup(r, 2))
        for r in range(2)
    ]
    for r, blocks in enumerate([{0, 2}, {1}]):
        values, rows = expected(x, [2, 2, 1], seed=3, blocks=blocks)
        assert torch.equal(ranks[r].values, values) and torch.equal(ranks[r].rows, rows)
    one = sharded_estimate(draws, None, None, x, block_size=2, seed=3)
    assert torch.equal(ranks[0].values + ranks[1].values, one.values)
    assert torch.equal(ranks[0].rows + ranks[1].rows, one.rows)


def test_a_rank_without_a_block_runs_the_first_block_on_the_device():
    """Rank 1 of 2 over one block learns the result's shapes from the first block moved to
    ``device`` (the meta device here), as the ranks with blocks do."""
    seen = []

    def recorded(model, guide, x):
        seen.append(x.device.type)
        return draws(model, guide, x)

    x = torch.arange(6.0).reshape(3, 2)
    r = sharded_estimate(
        recorded, None, None, x, block_size=4, group=ProcessGroup(1, 2), device="meta"
    )
    assert seen == ["meta"]
    assert r.values.is_meta and r.values.shape == (3,) and r.rows.shape == (3, 2)
