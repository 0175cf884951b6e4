"""Particle chunks of importance sampling are sized from bytes, and do not change estimates."""

from __future__ import annotations

import pyro
import pytest
import torch

from pyro_vae.infer import log_likelihood
from pyro_vae.infer.chunking import (
    ALIGN,
    MEMORY_BYTES,
    bytes_per_sample,
    particle_chunk,
    sized_particle_chunk,
)
from pyro_vae.models import ModelConfig, build_vae


def _vae(event=(1, 4, 4), hidden=(8,)):
    pyro.set_rng_seed(0)
    return build_vae(ModelConfig(event_shape=event, latent_dim=2, hidden=hidden)).eval()


def test_particle_chunk_fills_the_pass_bytes_within_its_bounds():
    # 1 KiB per sample, 32 MiB per pass: 32768 rows, 512 particles for 64 points
    assert particle_chunk(1024, 64, 10**6, pass_bytes=32 * 2**20) == 512
    assert particle_chunk(1024, 64, 100, pass_bytes=32 * 2**20) == 100  # at most K
    # huge samples: at least min_rows, unless the memory bound says fewer
    assert particle_chunk(10**6, 4, 10**6, min_rows=512, memory_bytes=10**12) == 128
    assert particle_chunk(10**6, 4, 10**6, min_rows=512, memory_bytes=10**8) == 16
    assert particle_chunk(10**9, 4, 10**6) == 1  # never fewer than one particle
    assert particle_chunk(1, 8, 10**6, max_rows=256) == 256 // 8
    # rounded down to a multiple of ALIGN once it reaches it
    assert particle_chunk(1024, 100, 10**6, pass_bytes=100 * 1024 * 37) == 32
    assert particle_chunk(1024, 100, 10**6, pass_bytes=100 * 1024 * 9) == 9
    rows = MEMORY_BYTES / 4096
    assert particle_chunk(4096, 1, 10**9, pass_bytes=10**12) * 1 <= rows


def test_bytes_per_sample_grows_with_the_output_and_leaves_the_random_stream():
    small, large = _vae((1, 4, 4)), _vae((1, 16, 16))
    from pyro_vae.infer.trace import log_weights

    x_small = torch.ones(1, 1, 4, 4)
    x_large = torch.ones(1, 1, 16, 16)

    def traced(vae, x):
        return lambda k: log_weights(vae.model, vae.guide, x, k, particle_dim=-2)

    torch.manual_seed(5)
    state = torch.get_rng_state()
    b_small = bytes_per_sample(traced(small, x_small), 1)
    b_large = bytes_per_sample(traced(large, x_large), 1)
    assert torch.equal(torch.get_rng_state(), state)
    # the decoder's output (and its log-density terms) dominate: 16 times the pixels
    assert 4 * 16 * 4 <= b_small < b_large
    assert b_large > 4 * b_small


def test_bytes_per_sample_counts_new_memory_once_and_not_per_call_costs():
    # views, in-place steps and out= arguments make no memory
    def viewing(k):
        a = torch.zeros(k, 100)  # 400 bytes per particle
        a.exp_().add_(1)
        torch.mul(a, 2, out=a)
        return a.view(-1).reshape(k, 100)[:, :50].t()

    assert bytes_per_sample(viewing, 1) == 400
    # what a pass makes once (here 1 MB), or only on its first call, is not charged per sample
    made = []

    def fixed_cost(k):
        if not made:
            made.append(torch.zeros(10**6))
        return torch.zeros(10**5).sum() + torch.zeros(k, 10)

    assert bytes_per_sample(fixed_cost, 1) == 80  # zeros(k, 10) and the sum: 2 x 40 bytes
    # a pass whose memory does not grow with its particles, or grows by less than a byte a
    # sample, is charged one byte per sample (the floor that keeps chunks finite)
    assert bytes_per_sample(lambda k: torch.zeros(3), 1) == 1.0
    assert bytes_per_sample(lambda k: torch.zeros(k, dtype=torch.uint8), 4) == 1.0


def test_bytes_per_sample_grows_from_the_smaller_probe_run_whichever_comes_first():
    """The probe runs k = 2, 4, 2; the growth is taken from the smaller of the two k = 2 runs.
    A pass that makes an extra 1 MB on its last call (a cache filled late) is charged
    (1600 - 800) bytes over 2 particles of 1 point, 400 per sample, as one that makes it on
    its first call is (the test above); 4 points divide the figure by 4."""
    calls = []

    def late_cost(k):
        calls.append(k)
        if len(calls) % 3 == 0:
            torch.zeros(250_000)  # 1 MB on the third call only
        return torch.zeros(k, 100)  # 400 bytes per particle

    assert bytes_per_sample(late_cost, 1) == 400
    assert calls == [2, 4, 2]
    assert bytes_per_sample(late_cost, 4) == 100


def test_the_fused_probe_allows_at_least_the_traced_chunk():
    from pyro_vae.models.fused import fused_log_weights

    vae = _vae((1, 8, 8))
    x = torch.ones(1, 1, 8, 8)
    common = dict(particle_dim=-2, data_plate="data")
    traced = sized_particle_chunk(vae.model, vae.guide, (x,), 64, 10**6, **common)
    fused = sized_particle_chunk(
        vae.model, vae.guide, (x,), 64, 10**6, fused_log_weights(vae), **common
    )
    assert traced % ALIGN == 0 and fused % ALIGN == 0
    # the fused pass makes fewer intermediate tensors (closed-form Bernoulli log-density)
    assert fused >= traced


@pytest.mark.parametrize("chunk", [16, 48, 160])
def test_chunks_of_whole_alignments_draw_the_same_numbers_as_one_pass(chunk):
    vae = _vae()
    x = torch.bernoulli(torch.rand(10, 1, 4, 4, generator=torch.Generator().manual_seed(1)))
    results = []
    for c in (chunk, 500):
        pyro.set_rng_seed(2)
        results.append(log_likelihood(vae.model, vae.guide, x, num_samples=500,
                                      batch_size=4, particle_chunk=c))  # fmt: skip
    # only the order of the running sums differs
    torch.testing.assert_close(results[0].per_example, results[1].per_example)
    torch.testing.assert_close(results[0].elbo_per_example, results[1].elbo_per_example)


def test_default_chunk_is_sized_and_bounded_by_the_particle_budget(log_weight_rows):
    rows = log_weight_rows
    vae = _vae((1, 16, 16))
    x = torch.ones(8, 1, 16, 16)
    # the traced route (the fused one needs less memory per sample: one pass here)
    log_likelihood(vae.model, vae.guide, x, num_samples=3000, batch_size=8, route="traced")
    assert max(rows) < 3000 and max(rows) % ALIGN == 0  # sized, in several passes
    rows.clear()
    log_likelihood(vae.model, vae.guide, x, num_samples=3000, batch_size=8, particle_budget=64,
                   route="traced")  # fmt: skip
    assert max(rows) == 64 // 8
