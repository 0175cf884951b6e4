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
