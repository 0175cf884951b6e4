"""Blocks of a sharded estimate and ranks of a run draw independent noise.

Seeded comparisons (two ranks against one process) pass when both sides share a bug that
reuses one block's or one rank's draws; these tests look at the draws themselves.
"""

from __future__ import annotations

import dataclasses
import re

import pyro
import pyro.distributions as dist
import pytest
import torch

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


@dataclasses.dataclass
class _Seen:
    """A stand-in estimate: one value per data point."""

    value: torch.Tensor


def test_sharded_blocks_reach_the_estimator_on_the_device_asked_and_unmoved_without_one():
    seen = []

    def estimator(model, guide, x):
        seen.append(x.device.type)
        return _Seen(torch.zeros(x.shape[0]))  # the gather runs on the CPU either way

    x = torch.randn(5, 1)
    sharded_estimate(estimator, model, wide_guide, x, block_size=2, device="meta")
    sharded_estimate(estimator, model, wide_guide, x, block_size=2)
    assert seen == ["meta"] * 3 + ["cpu"] * 3


def test_a_result_that_is_not_per_example_is_refused_naming_the_block_s_point_count():
    def estimator(model, guide, x):
        # per example in the first block (points 0 and 1), not in the second (points 2 and 3)
        return _Seen(torch.zeros(x.shape[0] if x[0, 0] == 0 else 1))

    x = torch.arange(5.0)[:, None]
    message = (
        "_Seen.value has shape (1,) for 2 points, not per-example; sharded evaluation gathers "
        "per-example results only"
    )
    with pytest.raises(ConfigError, match="^" + re.escape(message) + "$"):
        sharded_estimate(estimator, model, wide_guide, x, block_size=2)
