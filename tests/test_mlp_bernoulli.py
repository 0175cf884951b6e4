"""The tiled Bernoulli log-density of an MLP decoder equals the plain one, for every input."""

from __future__ import annotations

import warnings

import pyro
import pytest
import torch
from refusals import whole
from torch import nn
from torch.distributions import Independent, Normal

from pyro_vae.models import ModelConfig, build_vae, fused, mlp_bernoulli
from pyro_vae.models.fused import FusedLogWeights, NormalDraws
from pyro_vae.models.mlp_bernoulli import MLPBernoulliLogProb, bernoulli_log_prob
from pyro_vae.parts.nets import ConvDecoder, MLPDecoder


def _reference(decoder: nn.Module, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return bernoulli_log_prob(decoder(z), x)


def _decoder(latent=3, out=20, hidden=(16, 8), seed=0) -> MLPDecoder:
    torch.manual_seed(seed)
    return MLPDecoder(latent, out, hidden)


@pytest.fixture
def small_tiles(monkeypatch):
    """A 4 KiB "cache" in all (the tile is split among torch's threads): tiles of
    MIN_TILE_ROWS (64) rows, so most calls span several tiles."""
    threads = torch.get_num_threads()
    monkeypatch.setattr(mlp_bernoulli, "cache_bytes", lambda level=2: 4096 // threads)


@pytest.fixture(
    params=[1, *(pytest.param(n, marks=pytest.mark.several_threads) for n in (2, 3))],
    ids=lambda n: f"{n}threads",
)
def threads(request, monkeypatch):
    """torch's count set to 1, 2 or 3 for the test (above 1, the tiles run on worker threads,
    one per core, each with tiles sized to one core's cache), and 64-row tiles as in
    ``small_tiles``."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    monkeypatch.setattr(mlp_bernoulli, "cache_bytes", lambda level=2: 4096)
    calls = []
    run = mlp_bernoulli.one_thread_each
    monkeypatch.setattr(mlp_bernoulli, "one_thread_each", lambda t: calls.append(len(t)) or run(t))
    yield request.param, calls
    torch.set_num_threads(before)


@pytest.mark.parametrize("hidden", [(), (16,), (16, 8), (32, 16, 8)])
@pytest.mark.parametrize("k,batch", [(1, 1), (13, 10), (3, 100), (64, 1), (5, 64), (2, 150)])
@pytest.mark.parametrize("pixels", [20, 21, 1])
def test_tiles_equal_the_plain_log_density(threads, hidden, k, batch, pixels):
    count, parallel = threads
    decoder = _decoder(out=pixels, hidden=hidden)
    tiled = MLPBernoulliLogProb.of(decoder)
    assert tiled is not None and tiled.tile_rows(torch.device("cpu"), threads=1) == 64
    z = 3 * torch.randn(k, batch, 3)
    x = torch.rand(batch, pixels)  # continuous targets in [0, 1] as well as binary ones
    x[: batch // 2] = x[: batch // 2].round()
    with torch.no_grad():
        got = tiled(z, x)
        ref = _reference(decoder, z, x)
    assert got.shape == (k, batch)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)
    # more than one 64-row tile: each of the threads runs its own
    tiles = -(-k * batch // 64)
    assert parallel == ([min(count, tiles, max(k, batch))] if count > 1 and tiles > 1 else [])


def test_default_tiles_fill_the_l2_cache():
    decoder = _decoder(latent=50, out=784, hidden=(400,))
    tiled = MLPBernoulliLogProb.of(decoder)
    assert tiled.row_size == 64 + 416 + 784  # inputs with their ones, aligned; the logits
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):  # each thread's core holds its share of a tile
            torch.set_num_threads(threads)
            cache = mlp_bernoulli.CACHE_SHARE * mlp_bernoulli.cache_bytes(2) * threads
            for dtype, size in ((torch.float32, 4), (torch.float64, 8)):
                rows = tiled.tile_rows(torch.device("cpu"), dtype)
                wanted = max(mlp_bernoulli.MIN_TILE_ROWS, int(cache / (size * tiled.row_size)))
                assert rows == wanted
    finally:
        torch.set_num_threads(before)
    assert tiled.tile_rows(torch.device("meta")) == 0  # other devices: one tile


@pytest.mark.parametrize("where", ["hidden", "logits", "pair"])
def test_rows_where_exp_overflows_are_computed_again(threads, where):
    decoder = _decoder(hidden=(16,))
    with torch.no_grad():
        layer = decoder.net[0] if where == "hidden" else decoder.net[2]
        layer.bias[0] = 200.0  # exp(200) overflows float32; softplus(200) = 200
        if where == "pair":  # e^50 is finite, but the product of pixels 0 and 10 is not
            layer.bias[0] = layer.bias[10] = 50.0
    tiled = MLPBernoulliLogProb.of(decoder)
    z = torch.randn(7, 10, 3)
    x = torch.rand(10, 20).round()
    with torch.no_grad():
        got = tiled(z, x)
        ref = _reference(decoder, z, x)
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("overflow", [False, True])
@pytest.mark.parametrize("k,batch", [(1, 1), (13, 10), (3, 100), (2, 150)])
def test_normal_draws_written_tile_by_tile_equal_the_whole_draws(threads, k, batch, overflow):
    count, parallel = threads
    decoder = _decoder(hidden=(16,))
    if overflow:  # every row's exp overflows: computed again from the draws' rows
        with torch.no_grad():
            decoder.net[2].bias[0] = 200.0
    g = torch.Generator().manual_seed(3)
    # a posterior per point and a prior moved off N(0, I), as a learned prior moves
    loc, scale = torch.randn(batch, 3, generator=g), torch.rand(batch, 3, generator=g) + 0.5
    q = Independent(Normal(loc, scale), 1)
    p = Independent(Normal(torch.randn(3, generator=g), torch.rand(3, generator=g) + 0.5), 1)
    x = torch.rand(batch, 20).round()
    with torch.no_grad():
        torch.manual_seed(4)
        draws = NormalDraws.of(p, q, k)
        got = MLPBernoulliLogProb.of(decoder)(draws, x)
        torch.manual_seed(4)
        z, latent = fused._latent_terms(p, q, k)
        ref = _reference(decoder, z, x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-3 if overflow else 1e-4)
    # the latent terms of every block, against torch's own densities at the same draws
    torch.testing.assert_close(draws.latent, latent, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(draws.latent, p.log_prob(z) - q.log_prob(z), rtol=1e-5, atol=1e-4)
    tiles = -(-k * batch // 64)
    assert parallel == ([min(count, tiles, max(k, batch))] if count > 1 and tiles > 1 else [])


@pytest.mark.parametrize("k,batch", [(7, 5), (37, 5), (200, 3)])
def test_normal_draws_are_the_posterior_rsample_draws_at_any_thread_count(threads, k, batch):
    """The fused draws are bit for bit the numbers of the posterior's ``rsample`` (one
    ``normal_`` over all particles), at 1 to 3 threads, and their rows are its z."""
    g = torch.Generator().manual_seed(3)
    loc, scale = torch.randn(batch, 3, generator=g), torch.rand(batch, 3, generator=g) + 0.5
    q = Independent(Normal(loc, scale), 1)
    p = Independent(Normal(torch.zeros(3), torch.ones(3)), 1)
    decoder, x = _decoder(hidden=(16,)), torch.rand(batch, 20).round()
    with torch.no_grad():
        torch.manual_seed(9)
        draws = NormalDraws.of(p, q, k)
        got = MLPBernoulliLogProb.of(decoder)(draws, x)
        torch.manual_seed(9)
        one_call = torch.empty(k, batch, 3).normal_()
        torch.manual_seed(9)
        z = q.rsample((k,))
    assert torch.equal(draws.eps, one_call)
    torch.testing.assert_close(got, _reference(decoder, z, x), rtol=1e-5, atol=1e-4)
    index = (torch.tensor([0, k - 1, k // 2]), torch.tensor([batch - 1, 0, batch // 2]))
    torch.testing.assert_close(draws.rows(index), z[index], rtol=0, atol=1e-6)
    assert NormalDraws.of(p, Normal(torch.zeros(5, 3), 1.0), 7) is None  # not Independent


def test_a_non_finite_input_stays_non_finite():
    decoder = _decoder()
    z = torch.randn(4, 5, 3)
    z[1, 2, 0] = float("nan")
    x = torch.rand(5, 20).round()
    with torch.no_grad():
        got = MLPBernoulliLogProb.of(decoder)(z, x)
    assert torch.isnan(got[1, 2])
    assert torch.isfinite(got).sum() == got.numel() - 1


def test_new_parameters_are_used_at_the_next_call():
    decoder = _decoder()
    tiled = MLPBernoulliLogProb.of(decoder)
    z, x = torch.randn(4, 5, 3), torch.rand(5, 20).round()
    with torch.no_grad():
        before = tiled(z, x)
        decoder.net[-1].bias.add_(1.0)  # an in-place write, as an optimizer step makes
        after = tiled(z, x)
        torch.testing.assert_close(after, _reference(decoder, z, x), rtol=1e-5, atol=1e-4)
        assert not torch.allclose(before, after)
        decoder.load_state_dict(_decoder(seed=1).state_dict())
        torch.testing.assert_close(tiled(z, x), _reference(decoder, z, x), rtol=1e-5, atol=1e-4)
        decoder.net[0].weight = nn.Parameter(torch.zeros_like(decoder.net[0].weight))
        torch.testing.assert_close(tiled(z, x), _reference(decoder, z, x), rtol=1e-5, atol=1e-4)


def test_other_decoders_and_hooked_ones_take_the_plain_path():
    assert MLPBernoulliLogProb.of(ConvDecoder(2, (1, 8, 8))) is None
    relu = _decoder()
    relu.net[1] = nn.ReLU()
    assert MLPBernoulliLogProb.of(relu) is None
    steep = _decoder()
    steep.net[1] = nn.Softplus(beta=2.0)
    assert MLPBernoulliLogProb.of(steep) is None
    decoder = _decoder()
    tiled = MLPBernoulliLogProb.of(decoder)
    assert tiled.usable()
    handle = decoder.net[0].register_forward_hook(lambda *a: None)
    assert not tiled.usable() and MLPBernoulliLogProb.of(decoder) is None
    handle.remove()
    assert tiled.usable()


def test_autograd_is_refused():
    decoder = _decoder()
    with pytest.raises(
        RuntimeError,
        match=whole("MLPBernoulliLogProb runs in place: call it under torch.no_grad"),
    ):
        MLPBernoulliLogProb.of(decoder)(torch.randn(2, 3, 3), torch.rand(3, 20))


def test_fused_log_weights_use_the_tiles_and_equal_the_plain_path():
    pyro.set_rng_seed(0)
    vae = build_vae(ModelConfig(event_shape=(1, 6, 6), latent_dim=3, hidden=(16,))).eval()
    x = torch.rand(9, 1, 6, 6).round()
    fused = FusedLogWeights(vae)
    assert fused.tiled is not None
    calls = []
    with torch.no_grad():
        torch.manual_seed(2)
        tiled = fused(x, 7)
        # a hook registered now sees every decoder call: the plain path runs
        handle = vae.decoder.register_forward_hook(lambda *a: calls.append(1))
        torch.manual_seed(2)
        plain = fused(x, 7)
        handle.remove()
    assert calls == [1]
    torch.testing.assert_close(tiled, plain, rtol=1e-5, atol=1e-4)
    # with autograd the plain path runs, and gradients reach the decoder
    torch.manual_seed(2)
    with_grad = fused(x, 7)
    with_grad.sum().backward()
    torch.testing.assert_close(with_grad.detach(), plain, rtol=1e-5, atol=1e-4)
    assert vae.decoder.net[0].weight.grad is not None


def test_float64_tiles_equal_the_plain_log_density(small_tiles):
    decoder = _decoder().double()
    z, x = torch.randn(9, 11, 3, dtype=torch.float64), torch.rand(11, 20, dtype=torch.float64)
    with torch.no_grad():
        got = MLPBernoulliLogProb.of(decoder)(z, x)
        ref = _reference(decoder, z, x)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-10)


def test_each_thread_keeps_its_tile_buffers_between_calls_and_results_stay_exact(small_tiles):
    decoder = _decoder(hidden=(16, 8))
    tiled = MLPBernoulliLogProb.of(decoder)
    built = []
    make = mlp_bernoulli._TileBuffers.__init__

    def counting(self, *args):
        built.append(self)
        make(self, *args)

    mlp_bernoulli._TileBuffers.__init__ = counting
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # every tile on this thread (with more, each worker keeps its own)
    try:
        with torch.no_grad():
            for k, batch in [(13, 10), (2, 3), (13, 10), (64, 1)]:  # tiles of every size
                z, x = 3 * torch.randn(k, batch, 3), torch.rand(batch, 20).round()
                got = tiled(z, x)
                torch.testing.assert_close(got, _reference(decoder, z, x), rtol=1e-5, atol=1e-4)
    finally:
        mlp_bernoulli._TileBuffers.__init__ = make
        torch.set_num_threads(before)
    # one tile's rows (64) for every call: made once on this thread at most
    assert len(built) <= 1


def test_augmented_weights_are_w_transposed_over_b_and_made_again_only_after_a_change():
    """Per layer [W^T; b], (in + 1, out); a second call with the parameters untouched returns
    the same tensors, and an in-place write to a bias makes them again with the new value."""
    decoder = _decoder(hidden=(16,))
    tiled = MLPBernoulliLogProb.of(decoder)
    first = tiled.augmented_weights()
    for w, layer in zip(first, [decoder.net[0], decoder.net[2]], strict=True):
        assert torch.equal(w, torch.cat([layer.weight.detach().t(), layer.bias.detach()[None]]))
    assert [tuple(w.shape) for w in first] == [(4, 16), (17, 20)]
    assert tiled.augmented_weights() is first
    with torch.no_grad():
        decoder.net[2].bias[3] = 7.0
    again = tiled.augmented_weights()
    assert again is not first and again[1][-1, 3] == 7.0
    assert tiled.augmented_weights() is again


@pytest.mark.parametrize("k, batch", [(13, 10), (1, 130)], ids=["particles", "points"])
def test_cpu_tiles_are_shared_among_the_workers_that_parallel_threads_allows(
    monkeypatch, k: int, batch: int
):
    """On the CPU the tiles go to as many workers as ``parallel_threads`` allows (here 2, with
    the workers' tasks run in turn on this thread, at one torch thread): 130 rows are three
    64-row tiles, split between two workers (by particles, or by points where there is one
    particle), with the plain log-density's values."""
    monkeypatch.setattr(mlp_bernoulli, "parallel_threads", lambda: 2)
    monkeypatch.setattr(mlp_bernoulli, "cache_bytes", lambda level=2: 4096)  # 64-row tiles
    calls = []

    def in_turn(tasks):
        calls.append(len(tasks))
        return [task() for task in tasks]

    monkeypatch.setattr(mlp_bernoulli, "one_thread_each", in_turn)
    decoder = _decoder(hidden=(16,))
    torch.manual_seed(0)
    z, x = torch.randn(k, batch, 3), torch.rand(batch, 20).round()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            got = MLPBernoulliLogProb.of(decoder)(z, x)
            ref = _reference(decoder, z, x)
    finally:
        torch.set_num_threads(before)
    assert calls == [2]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)


def test_a_tile_s_buffers_hold_its_rows_and_its_logits_are_written_in_place(small_tiles):
    """Each layer's input (with its column of ones) and the logits have the tile's rows, so the
    last product writes into the kept buffer: a tiled call resizes no output (no warning)."""
    decoder = _decoder(hidden=(16,))
    tiled = MLPBernoulliLogProb.of(decoder)
    weights = tiled.augmented_weights()
    buffers = mlp_bernoulli._TileBuffers(weights, 64, torch.float32, torch.device("cpu"))
    assert [tuple(b.shape) for b in buffers.inputs] == [(64, 4), (64, 17)]
    assert [b.stride() for b in buffers.inputs] == [(16, 1), (32, 1)]  # rows aligned
    assert all(bool((b[:, -1] == 1).all()) for b in buffers.inputs)
    assert tuple(buffers.logits.shape) == (64, 20)
    z, x = torch.randn(13, 10, 3), torch.rand(10, 20).round()
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("error")
            got = tiled(z, x)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(got, _reference(decoder, z, x), rtol=1e-5, atol=1e-4)


def test_each_worker_s_tiles_fill_one_core_s_cache_not_all_the_threads(monkeypatch) -> None:
    """With torch at 2 threads, a worker's tiles are sized to one core's cache (a "cache" of
    64 float32 rows), not the two cores' (128 rows): 100 rows are two tiles, one for each of 2
    workers, and the buffers a worker keeps hold 64 rows. torch's count is reported as 2 while
    the workers' tasks run in turn on this thread at one real thread (as in the test above)."""
    decoder = _decoder(hidden=(16,))
    tiled = MLPBernoulliLogProb.of(decoder)
    one_core = 64 * tiled.row_size * 4  # bytes of 64 float32 rows
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(mlp_bernoulli, "parallel_threads", lambda: 2)
    monkeypatch.setattr(mlp_bernoulli, "cache_bytes", lambda level=2: one_core)
    calls = []

    def in_turn(tasks):
        calls.append(len(tasks))
        return [task() for task in tasks]

    monkeypatch.setattr(mlp_bernoulli, "one_thread_each", in_turn)
    assert tiled.tile_rows(torch.device("cpu"), threads=1) == 64
    assert tiled.tile_rows(torch.device("cpu")) == 128  # a tile split among both threads
    torch.manual_seed(0)
    z, x = torch.randn(10, 10, 3), torch.rand(10, 20).round()
    with torch.no_grad():
        got = tiled(z, x)
        ref = _reference(decoder, z, x)
    assert calls == [2]
    kept = mlp_bernoulli._thread_buffers.kept[1]
    assert [b.shape[0] for b in kept.inputs] == [64, 64] and kept.logits.shape[0] == 64
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-4)


def test_float64_tiles_on_one_thread_are_sized_by_float64_rows(monkeypatch) -> None:
    """At one worker, a "cache" of 100 float64 rows (200 float32 rows) gives float64 latents
    100-row tiles: 150 rows run as two tiles in kept buffers of 100 rows, with the plain
    log-density's values."""
    decoder = _decoder(hidden=(16,)).double()
    tiled = MLPBernoulliLogProb.of(decoder)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    monkeypatch.setattr(mlp_bernoulli, "parallel_threads", lambda: 1)
    monkeypatch.setattr(mlp_bernoulli, "cache_bytes", lambda level=2: 100 * tiled.row_size * 8)
    assert tiled.tile_rows(torch.device("cpu"), torch.float64) == 100
    torch.manual_seed(0)
    z = torch.randn(15, 10, 3, dtype=torch.float64)
    x = torch.rand(10, 20, dtype=torch.float64).round()
    with torch.no_grad():
        got = tiled(z, x)
        ref = _reference(decoder, z, x)
    kept = mlp_bernoulli._thread_buffers.kept[1]
    assert [b.shape[0] for b in kept.inputs] == [100, 100] and kept.logits.shape[0] == 100
    assert kept.logits.dtype == torch.float64
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-10)
