"""Throughput, achieved arithmetic rate and peak memory of ``log_likelihood`` as K grows.

For each K, a fresh subprocess builds the model (Pyro's VAE example networks by default:
784-400-50, softplus, Bernoulli), runs ``pyro_vae.infer.log_likelihood`` with K importance
samples on ``--images`` random binary images, and reports:

- image-samples/s: images * K / seconds;
- GFLOP/s achieved: the decoder's FLOPs per sample times images * K, over the seconds. The
  FLOPs per sample are counted by forward hooks on the decoder's Linear / Conv layers during
  one call on a single z (2 * in * out per Linear row, 2 * C_in * C_out * k_h * k_w per conv
  output position, per transposed-conv input position); the hooks are removed before the
  timed call (a hooked decoder runs the plain path). The encoder's FLOPs (once per image and
  pass) are not counted;
- the same process's 1024 x 1024 float32 matmul GFLOP/s, and the achieved share of it. The
  machine may be shared, so ``--repeats`` calls are interleaved with spans of matmuls as
  long as a call (0.5 s to 30 s), and the fastest call is set against the fastest span:
  like is compared with like, a sustained rate with a sustained rate;
- peak memory: the growth of the process's maximum resident set (``ru_maxrss``) during the
  call, over a warm-up call with K = 10 (so the interpreter, torch and the model are not counted).

Routes: ``traced`` is ``log_likelihood(vae.model, vae.guide, x, route="traced")`` (Pyro traces
each chunk); ``fused`` is ``log_likelihood(vae.model, vae.guide, x)``, whose default route for the
library's own VAE is :class:`pyro_vae.models.fused.FusedLogWeights` (as ``pyro_vae.runs.score``).
Both use the default particle chunk
(:mod:`pyro_vae.infer.chunking`) unless ``--particle-chunk`` fixes it.

Run: python benchmarks/likelihood_throughput.py [--threads 1] [--images 200] [--repeats 3]
         [--ks 100,300,1000,3000,10000] [--model pyro-mlp|digits|conv]
         [--routes traced,fused] [--particle-chunk C]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time

import torch
from torch import nn

MODELS = {
    "pyro-mlp": dict(event_shape=(1, 28, 28), latent_dim=50, hidden=(400,)),
    "digits": dict(event_shape=(1, 8, 8), latent_dim=2),
    "conv": dict(event_shape=(1, 28, 28), latent_dim=16, arch="conv"),
}


def decoder_flops(decoder: nn.Module, latent_dim: int) -> float:
    """FLOPs of one decoder call on one z, counted by hooks that are removed afterwards."""
    counter = [0.0]

    def linear(m, inputs, out):
        counter[0] += 2.0 * m.in_features * out.numel()

    def conv(m, inputs, out):
        k = math.prod(m.kernel_size) * m.in_channels // m.groups
        counter[0] += 2.0 * k * out.numel()

    def conv_t(m, inputs, out):
        k = math.prod(m.kernel_size) * m.out_channels // m.groups
        counter[0] += 2.0 * k * inputs[0].numel()

    handles = []
    for m in decoder.modules():
        if isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear))
        elif isinstance(m, nn.ConvTranspose2d):
            handles.append(m.register_forward_hook(conv_t))
        elif isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv))
    with torch.no_grad():
        decoder(torch.zeros(1, latent_dim))
    for handle in handles:
        handle.remove()
    return counter[0]


def matmul_gflops(n: int = 1024, seconds: float = 0.5) -> float:
    """Float32 n x n matmul rate in GFLOP/s sustained over about ``seconds`` (at least 10
    products, after one to warm up)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    count, start = 0, time.perf_counter()
    while count < 10 or time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - start) / 1e9


def child(
    model: str, k: int, images: int, route: str, chunk: int | None, repeats: int
) -> dict:
    import pyro

    from pyro_vae.infer import log_likelihood
    from pyro_vae.models import ModelConfig, build_vae

    pyro.set_rng_seed(0)
    vae = build_vae(ModelConfig(**MODELS[model])).eval()
    x = torch.bernoulli(torch.rand(images, *vae.event_shape, generator=torch.Generator()))
    flops = decoder_flops(vae.decoder, vae.latent_dim) * images * k
    # "fused": log_likelihood's default route for the library's own VAE; "traced" forces tracing
    options = {"particle_chunk": chunk, "route": route}
    times, rates = [], []
    with torch.no_grad():
        log_likelihood(vae.model, vae.guide, x, num_samples=10, **options)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # the machine may be shared: calls interleaved with matmul spans as long as a call,
        # the best of each
        span = 0.5
        for _ in range(repeats):
            rates.append(matmul_gflops(seconds=span))
            start = time.perf_counter()
            log_likelihood(vae.model, vae.guide, x, num_samples=k, **options)
            times.append(time.perf_counter() - start)
            span = min(max(times[-1], 0.5), 30.0)
        rates.append(matmul_gflops(seconds=span))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds = min(times)
    return {
        "K": k,
        "seconds": seconds,
        "samples_per_s": images * k / seconds,
        "gflops": flops / seconds / 1e9,
        "matmul_gflops": max(rates),
        "peak_mib": (after - before) / 1024,  # ru_maxrss is in KiB on Linux
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ks", default="100,300,1000,3000,10000")
    parser.add_argument("--model", default="pyro-mlp", choices=sorted(MODELS))
    parser.add_argument("--routes", default="traced,fused")
    parser.add_argument("--particle-chunk", type=int, default=None)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child is not None:
        r = child(
            args.model, args.child, args.images, args.routes, args.particle_chunk, args.repeats
        )
        print(json.dumps(r))
        return
    print(
        f"torch {torch.__version__}, threads={args.threads}, model {args.model}, "
        f"{args.images} images, best of {args.repeats} calls"
    )
    print(
        "| route | K | s | image-samples/s | GFLOP/s | matmul GFLOP/s | share | peak MiB |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    runs = [(k, r) for k in (int(v) for v in args.ks.split(",")) for r in args.routes.split(",")]
    for k, route in runs:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            str(k),
            "--images",
            str(args.images),
            "--model",
            args.model,
            "--threads",
            str(args.threads),
            "--routes",
            route,
            "--repeats",
            str(args.repeats),
        ] + (["--particle-chunk", str(args.particle_chunk)] if args.particle_chunk else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        print(
            f"| {route} | {k} | {r['seconds']:.2f} | {r['samples_per_s']:,.0f} | "
            f"{r['gflops']:.1f} | "
            f"{r['matmul_gflops']:.1f} | {r['gflops'] / r['matmul_gflops']:.0%} | "
            f"{r['peak_mib']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
