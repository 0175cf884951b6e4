"""log p(x | z) of Bernoulli pixels under an MLP decoder, in row tiles that stay in cache.

Importance sampling spends its time in the decoder: for each of K x B samples z, an MLP
``Linear -> Softplus -> ... -> Linear`` gives D logits l, scored as

    log p(x | z) = sum_j x_j l_j - softplus(l_j).

Run as plain torch operations over a chunk of thousands of rows, each elementwise step (bias copy,
softplus, product, sum) streams the chunk's tensors through memory, and together they cost as much
as the matrix products. [`MLPBernoulliLogProb`][pyro_vae.models.mlp_bernoulli.MLPBernoulliLogProb]
computes the same value (up to float rounding) with three changes:

- **Row tiles sized from the cache.** The rows are processed a tile at a time, in buffers
  that each thread keeps between calls, with as many rows as fit one core's L2 cache
  ([`pyro_vae.runtime.devices.cache_bytes`][]), so every elementwise step reads the cache.
  With several threads, each runs tiles of its own on its own core
  ([`pyro_vae.runtime.threads.one_thread_each`][]). The z of a tile are written into its
  buffer by a [`Latents`][pyro_vae.models.mlp_bernoulli.Latents]: copied from a tensor, or made
  there from normal draws with their latent terms (``pyro_vae.models.fused.NormalDraws``).
- **Biases inside the products.** Each layer's input carries a column of ones and its weight
  a row holding the bias, ``[h, 1] @ [W^T; b] = h W^T + b``: no bias copy. Buffer rows start
  on cache lines (``ROW_ALIGN``).
- **Fewer elementwise passes.** ``softplus(a) = log(1 + exp(a))`` runs in place as three
  passes (exp, add 1, log) on the hidden units; over the logits only the sum is needed, and
  the factors ``1 + e^l`` of pixel pairs are multiplied before the log
  (``_sum_softplus_``). The data term is folded into the last layer,
  ``sum_j x_j l_j = [h, 1] . ([W^T; b] x)``, a dot product over the H + 1 hidden units
  instead of over the D pixels.

``exp`` overflows for inputs above about 88 (float32), and a pixel pair's product where their logits
sum above about 88: such a row comes out non-finite and is computed again the plain way
([`bernoulli_log_prob`][pyro_vae.models.mlp_bernoulli.bernoulli_log_prob] on the decoder's output),
so the result is right for every input. The tiles do not use autograd (in-place steps): the caller
runs them under ``torch.no_grad``.
"""

from __future__ import annotations

import functools
import threading
from typing import Protocol

import torch
from torch import nn
from torch.nn.functional import softplus

from pyro_vae.parts.nets import MLPDecoder
from pyro_vae.runtime.devices import cache_bytes
from pyro_vae.runtime.threads import blocks, one_thread_each, parallel_threads

#: Share of one core's L2 cache that a tile's buffers (all layers' rows) fill: the whole of it
#: measured faster than half or a quarter (benchmarks/RESULTS.md).
CACHE_SHARE = 1.0
#: Fewest rows in a tile, whatever the cache: a matrix product needs rows to reach its rate.
MIN_TILE_ROWS = 64
#: Rows of the tile buffers start on multiples of this many numbers (64 bytes in float32, a
#: cache line), so products read and write aligned rows (measured faster, RESULTS.md).
ROW_ALIGN = 16


def _aligned(width: int) -> int:
    """``width`` rounded up to a multiple of ``ROW_ALIGN``."""
    return -(-width // ROW_ALIGN) * ROW_ALIGN


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """sum_j log Bernoulli(x_j; sigmoid(l_j)) = sum_j x_j l_j - softplus(l_j), per row.

    logits: (..., batch, D); x: (batch, D) in [0, 1] -> (..., batch). The same value as
    ``Bernoulli(logits=l).to_event(...).log_prob(x)`` (``-binary_cross_entropy_with_logits``)
    up to float rounding, in two passes over the logits instead of about six.
    """
    return torch.linalg.vecdot(logits, x) - softplus(logits).sum(-1)


def _layers(decoder: nn.Module) -> list[nn.Linear] | None:
    """The Linear layers of an [`MLPDecoder`][pyro_vae.parts.nets.MLPDecoder] built as
    ``(Linear, Softplus)* Linear`` with the default softplus (beta 1) and no hooks, else
    ``None``."""
    if type(decoder) is not MLPDecoder or type(decoder.net) is not nn.Sequential:
        return None
    modules = list(decoder.net)
    linears = modules[::2]
    activations = modules[1::2]
    if len(modules) % 2 != 1 or any(type(m) is not nn.Linear for m in linears):
        return None
    if any(type(m) is not nn.Softplus or m.beta != 1 for m in activations):
        return None
    if any(m.bias is None for m in linears):
        return None
    hooks = nn.modules.module
    if hooks._global_forward_hooks or hooks._global_forward_pre_hooks:
        return None  # a hook must see every call
    for m in (decoder, decoder.net, *modules):
        if m._forward_hooks or m._forward_pre_hooks:
            return None
    return linears


class MLPBernoulliLogProb:
    """``MLPBernoulliLogProb.of(decoder)(z, x)`` -> (k, batch): log p(x_n | z_kn), summed over
    the D pixels, for z: (k, batch, latent_dim) and x: (batch, D) in [0, 1].

    The same value as ``bernoulli_log_prob(decoder(z), x)`` up to float rounding; see the module
    docstring for how. Built by [`of`][pyro_vae.models.mlp_bernoulli.MLPBernoulliLogProb.of], which
    returns ``None`` for any decoder other than a plain
    [`MLPDecoder`][pyro_vae.parts.nets.MLPDecoder].
    """

    def __init__(self, decoder: MLPDecoder, layers: list[nn.Linear]):
        self.decoder = decoder
        self.layers = layers
        widths = [layers[0].in_features] + [m.out_features for m in layers]
        #: numbers in one row of a tile: each layer's input with its column of ones (aligned,
        #: ``ROW_ALIGN``), the logits
        self.row_size = sum(_aligned(w + 1) for w in widths[:-1]) + widths[-1]
        self._key: tuple = ()
        self._weights: list[torch.Tensor] = []

    def usable(self) -> bool:
        """Whether the decoder is still a plain MLP without hooks (checked at each call)."""
        return _layers(self.decoder) == self.layers

    def augmented_weights(self) -> list[torch.Tensor]:
        """``[W^T; b]`` per layer, (in + 1, out), contiguous (a product reads its rows in
        order), made again only when a parameter changed: another tensor (the key holds the
        tensors, so none is freed and its address reused) or a write to it (its version
        counter)."""
        params = [p for m in self.layers for p in (m.weight, m.bias)]
        versions = [p._version for p in params]
        fresh = len(self._key) == len(params) and all(
            a is b and v == w for (a, v), b, w in zip(self._key, params, versions, strict=True)
        )
        if not fresh:
            key = tuple(zip(params, versions, strict=True))
            self._weights = [
                torch.cat([m.weight.detach().t(), m.bias.detach()[None]]).contiguous()
                for m in self.layers
            ]
            self._key = key
        return self._weights

    @classmethod
    def of(cls, decoder: nn.Module) -> MLPBernoulliLogProb | None:
        """The tiled log-density of ``decoder``, or ``None`` where it is not a plain MLP."""
        layers = _layers(decoder)
        return None if layers is None else cls(decoder, layers)  # type: ignore[arg-type]

    def tile_rows(
        self, device: torch.device, dtype: torch.dtype = torch.float32, threads: int | None = None
    ) -> int:
        """Rows per tile: ``CACHE_SHARE`` of the L2 cache of the ``threads`` cores that run a
        tile (torch's count where ``None``: its threads split a tile's rows) over a row's bytes,
        at least ``MIN_TILE_ROWS``; on other devices one tile holds every row (0: no limit)."""
        if device.type != "cpu":
            return 0
        row_bytes = self.row_size * torch.empty((), dtype=dtype).element_size()
        cache = cache_bytes(2) * (threads or torch.get_num_threads())
        return max(MIN_TILE_ROWS, int(CACHE_SHARE * cache / row_bytes))

    def __call__(self, z: torch.Tensor | Latents, x: torch.Tensor) -> torch.Tensor:
        """(k, batch) log p(x_n | z_kn) for z: (k, batch, latent_dim), a tensor or
        [`Latents`][pyro_vae.models.mlp_bernoulli.Latents] that write each tile's rows, and
        x: (batch, D) in [0, 1]."""
        if isinstance(z, torch.Tensor):
            z = GivenLatents(z)
        k, batch, _ = z.shape
        if torch.is_grad_enabled():
            raise RuntimeError("MLPBernoulliLogProb runs in place: call it under torch.no_grad")
        x = x.reshape(batch, -1).to(z.dtype)
        weights = self.augmented_weights()
        data_term = x @ weights[-1].t()  # (batch, H + 1): [W, b] x
        out = torch.empty(k, batch, dtype=z.dtype, device=z.device)
        workers = parallel_threads() if z.device.type == "cpu" else 1
        if workers > 1:
            # each core runs tiles of its own, sized to its own cache
            rows = self.tile_rows(z.device, z.dtype, threads=1)
            workers = min(workers, -(-k * batch // rows))
        if workers > 1:
            tasks = [
                functools.partial(_run_tiles, z, part, weights, data_term, out, rows)
                for part in _split(k, batch, workers)
            ]
            one_thread_each(tasks)
        else:
            whole = (slice(0, k), slice(0, batch))
            _run_tiles(z, whole, weights, data_term, out, self.tile_rows(z.device, z.dtype))
        return self._mend(out, z, x)

    def _mend(self, out: torch.Tensor, z: Latents, x: torch.Tensor) -> torch.Tensor:
        """Rows where exp overflowed (non-finite), computed again with the plain softplus."""
        bad = ~torch.isfinite(out)
        if bool(bad.any()):
            index = bad.nonzero(as_tuple=True)
            logits = self.decoder(z.rows(index))
            out[index] = bernoulli_log_prob(logits, x[index[1]])
        return out


class Latents(Protocol):
    """The z of a (k, batch) grid of samples, handed to the tiles a block at a time.

    ``write(particles, points, into)`` writes z[particles, points] into ``into``
    (p, s, latent_dim), a view of a tile's buffer; ``rows((i, b))`` returns z[i, b] for index
    tensors i, b (the rows to compute again). The blocks written are disjoint, and may be
    written from several threads at once.
    """

    shape: torch.Size  # (k, batch, latent_dim)
    dtype: torch.dtype
    device: torch.device

    def write(self, particles: slice, points: slice, into: torch.Tensor) -> None: ...

    def rows(self, index: tuple[torch.Tensor, ...]) -> torch.Tensor: ...


class GivenLatents:
    """[`Latents`][pyro_vae.models.mlp_bernoulli.Latents] of a tensor z: (k, batch, latent_dim)."""

    def __init__(self, z: torch.Tensor):
        self.z = z
        self.shape, self.dtype, self.device = z.shape, z.dtype, z.device

    def write(self, particles: slice, points: slice, into: torch.Tensor) -> None:
        into.copy_(self.z[particles, points])

    def rows(self, index: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return self.z[index]


def _split(k: int, batch: int, parts: int) -> list[tuple[slice, slice]]:
    """(particles, points) slices of a (k, batch) grid in ``parts`` contiguous blocks of
    particles, or of points where there are fewer particles than parts."""
    if k >= parts:
        return [(b, slice(None)) for b in blocks(k, parts)]
    return [(slice(None), b) for b in blocks(batch, parts)]


def _run_tiles(
    z: Latents,
    part: tuple[slice, slice],
    weights: list[torch.Tensor],
    data_term: torch.Tensor,
    out: torch.Tensor,
    rows: int,
) -> None:
    """Write log p(x | z) into ``out[part]`` for the (particles, points) block ``part`` of the
    (k, batch) grid, a tile of at most ``rows`` rows at a time (every row where 0), in buffers of
    this thread's own; data_term: (batch, H + 1)."""
    first, last, _ = part[0].indices(z.shape[0])
    start, stop, _ = part[1].indices(z.shape[1])
    k, batch = last - first, stop - start
    rows = rows or k * batch
    per_tile = max(1, rows // batch)  # particles per tile; or one, and a slice of the batch
    span = batch if per_tile > 1 or rows >= batch else rows
    # a whole tile's memory (at least per_tile * span rows) even for fewer rows, the same for
    # every call with the same tile size: kept by the thread between calls
    buffers = _TileBuffers.for_thread(weights, rows, z.dtype, z.device)
    particles = min(k, per_tile)
    tiles: dict[tuple[int, int], _Tile] = {}
    for i in range(first, last, particles):
        p = min(particles, last - i)
        for b in range(start, stop, span):
            s = min(span, stop - b)
            tile = tiles.get((p, s)) or tiles.setdefault((p, s), _Tile(buffers, p, s))
            z.write(slice(i, i + p), slice(b, b + s), tile.latent)
            out[i : i + p, b : b + s] = tile(weights, data_term[b : b + s])


#: Each thread's last tile buffers, by their layout (see ``_TileBuffers.for_thread``).
_thread_buffers = threading.local()


class _TileBuffers:
    """One tile's memory: each layer's input with a last column of ones, ``(rows, in + 1)``
    (rows ``ROW_ALIGN``-aligned), and the logits, ``(rows, D)``."""

    @classmethod
    def for_thread(
        cls, weights: list[torch.Tensor], rows: int, dtype: torch.dtype, device: torch.device
    ) -> _TileBuffers:
        """This thread's buffers of that layout, kept from its last call when it had the same
        (a tile writes every number it reads except the columns of ones, which stay ones):
        no fresh pages to fault in at every pass. One set per thread is kept, on the CPU only
        (elsewhere a tile holds every row of a pass, too much to keep)."""
        if device.type != "cpu":
            return cls(weights, rows, dtype, device)
        key = (tuple(w.shape for w in weights), rows, dtype)
        kept = getattr(_thread_buffers, "kept", None)
        if kept is None or kept[0] != key:
            kept = (key, cls(weights, rows, dtype, device))
            _thread_buffers.kept = kept
        return kept[1]

    def __init__(
        self, weights: list[torch.Tensor], rows: int, dtype: torch.dtype, device: torch.device
    ):
        self.inputs = []
        for w in weights:
            width = w.shape[0]
            buf = torch.empty(rows, _aligned(width), dtype=dtype, device=device)
            buf = buf[:, :width]
            buf[:, -1] = 1
            self.inputs.append(buf)
        self.logits = torch.empty(rows, weights[-1].shape[1], dtype=dtype, device=device)


class _Tile:
    """Views of ``_TileBuffers`` for ``p`` particles of ``s`` data points (n = p s
    rows), made once per tile shape; calling it runs the tile on the z written into
    ``latent`` (p, s, latent_dim): (p, s) log p(x | z)."""

    def __init__(self, buffers: _TileBuffers, p: int, s: int):
        n = p * s
        inputs = [buf[:n] for buf in buffers.inputs]
        self.shape = (p, s)
        self.latent = inputs[0][:, :-1].unflatten(0, (p, s))
        self.layers = [(src, dst[:, :-1]) for src, dst in zip(inputs[:-1], inputs[1:], strict=True)]
        self.hidden = inputs[-1]
        self.hidden_by_point = inputs[-1].unflatten(0, (p, s))
        self.logits = buffers.logits[:n]

    def __call__(self, weights: list[torch.Tensor], data_term: torch.Tensor) -> torch.Tensor:
        for w, (src, dst) in zip(weights[:-1], self.layers, strict=True):
            torch.mm(src, w, out=dst).exp_().add_(1).log_()  # softplus
        logits = torch.mm(self.hidden, weights[-1], out=self.logits)
        xl = torch.linalg.vecdot(self.hidden_by_point, data_term)  # sum_j x_j l_j: (p, s)
        return xl - _sum_softplus_(logits).view(self.shape)


def _sum_softplus_(logits: torch.Tensor) -> torch.Tensor:
    """sum_j softplus(l_j) per row of logits (n, D), overwriting them: (n,).

    sum_j log(1 + e^l_j), with the factors of the two halves of each row multiplied in pairs
    first, log((1 + e^a)(1 + e^b)) = log(1 + e^a) + log(1 + e^b), so half as many logs. A
    product overflows only where a + b > 88 (float32); that row comes out infinite, and the
    caller computes it again.
    """
    terms = logits.exp_().add_(1)
    size = terms.shape[-1]
    half = size // 2
    if half == 0:
        return terms.log_().sum(-1)
    pairs = terms[:, :half].mul_(terms[:, half : 2 * half])
    total = pairs.log_().sum(-1)
    if size % 2:  # the odd one out
        total += terms[:, -1].log()
    return total
