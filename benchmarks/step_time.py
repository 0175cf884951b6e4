"""Step and epoch time of pyro-vae's training loop against a hand-written PyTorch VAE.

Routes, run interleaved in one process (traced, library, PyTorch, traced, library, ...):

- ``traced``: ``pyro_vae.train.train_epoch`` on Pyro's traced path (``--no-fused``: Pyro
  ``Trace_ELBO`` through the objective), with the loop's optimizer and fault checks;
- ``library``: ``pyro_vae.train.train_epoch`` as ``fit`` runs it by default: the fused ELBO
  (:class:`pyro_vae.models.fused.FusedELBO`), the loop's foreach Adam
  (:func:`pyro_vae.train.loop.make_optimizer`), finiteness of every step's loss and gradient
  norm checked in batches (:class:`pyro_vae.train.loop.StepChecks`);
- ``torch``: a hand-written PyTorch VAE with the SAME encoder and decoder modules (copies),
  Adam, and the reparameterized one-sample ELBO, on the same batches and binarization.

Models: ``pyro-mlp`` (Pyro's VAE example, 784-400-50, softplus, Bernoulli, 28x28), ``digits``
(the default model of ``pyro-vae train``: 8x8, MLP 256-128, latent 2), ``conv`` (the conv
net on 28x28, channels 32-64, latent 16) and ``mnist-200`` (the MNIST table's 784-200-200-50). Data
are random images of the model's shape (the arithmetic does not depend on the pixel values).

Run: PYTHONPATH=. python benchmarks/step_time.py [--threads 1] [--images 1024] [--repeats 5]
         [--batch-sizes 32,128,512] [--models pyro-mlp,digits,conv,mnist-200]
Prints, per model and batch size, the median ms/step of each route, the epoch time, and the
median of the per-pair ratios traced/torch and library/torch.
"""

from __future__ import annotations

import argparse
import copy
import math
import platform
import statistics
import time

import pyro
import torch
import torch.nn.functional as F

from pyro_vae.data.binarize import dynamic_binarize
from pyro_vae.infer.objectives import make_objective
from pyro_vae.models import ModelConfig, build_vae
from pyro_vae.models.fused import fused_unsupported
from pyro_vae.train import TrainConfig, train_epoch

try:
    from pyro_vae.train.loop import make_optimizer
except ImportError:  # versions before the loop chose its Adam: fit's plain Adam

    def make_optimizer(model, lr):
        return torch.optim.Adam(model.parameters(), lr=lr)
from pyro_vae.train.tasks import ELBOTask

MODELS = {
    "pyro-mlp": ModelConfig(event_shape=(1, 28, 28), latent_dim=50, hidden=(400,)),
    "digits": ModelConfig(event_shape=(1, 8, 8), latent_dim=2),
    "conv": ModelConfig(event_shape=(1, 28, 28), latent_dim=16, arch="conv"),
    # the MNIST table's networks (--hidden 200,200 --latent-dim 50), run at --batch-sizes 100
    "mnist-200": ModelConfig(event_shape=(1, 28, 28), latent_dim=50, hidden=(200, 200)),
}


def torch_epoch(enc, dec, opt, train, batch_size, latent_dim):
    """One epoch of a hand-written VAE: Bernoulli logits, diagonal normal q, N(0, I) prior."""
    n = train.shape[0]
    perm = torch.randperm(n)
    d = latent_dim
    for i in range(0, n, batch_size):
        x = dynamic_binarize(train[perm[i : i + batch_size]])
        h = enc(x)
        loc, scale = h[:, :d], F.softplus(h[:, d:]) + 1e-6
        z = loc + scale * torch.randn_like(loc)
        logits = dec(z).reshape(x.shape)
        log_px = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
        log_pz = (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).sum(1)
        log_qz = torch.distributions.Normal(loc, scale).log_prob(z).sum(1)
        loss = -(log_px + log_pz - log_qz).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def make_routes(config: ModelConfig, batch_size: int):
    """Fresh (model, optimizer) per route with identical initial networks; returns callables."""
    pyro.set_rng_seed(0)
    base = build_vae(config)
    assert fused_unsupported(base) is None
    train_config = TrainConfig(epochs=1, batch_size=batch_size)
    objective = make_objective("elbo")

    traced = copy.deepcopy(base)
    traced_task = ELBOTask(traced, objective, fused=False)
    traced_opt = make_optimizer(traced, 1e-3)
    lib = copy.deepcopy(base)
    lib_task = ELBOTask(lib, objective)
    assert lib_task.fused is not None
    lib_opt = make_optimizer(lib, 1e-3)
    enc, dec = copy.deepcopy(base.encoder), copy.deepcopy(base.decoder)
    torch_opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=1e-3)

    return {
        # the library's loop on Pyro's traced path (TrainConfig(fused=False), --no-fused)
        "traced": lambda t: train_epoch(traced_task, traced_opt, t, train_config, 1),
        # the library's loop as fit runs it by default
        "library": lambda t: train_epoch(lib_task, lib_opt, t, train_config, 1),
        "torch": lambda t: torch_epoch(enc, dec, torch_opt, t, batch_size, config.latent_dim),
    }


def bench(config: ModelConfig, batch_size: int, images: int, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    train = torch.rand((images, *config.event_shape), generator=g)
    routes = make_routes(config, batch_size)
    for route in routes.values():  # warm-up: allocator, lazy init, first-call costs
        route(train[: 2 * batch_size])
    times: dict[str, list[float]] = {name: [] for name in routes}
    for _ in range(repeats):
        for name, route in routes.items():
            start = time.perf_counter()
            route(train)
            times[name].append(time.perf_counter() - start)
    pairs = {
        name: statistics.median(a / b for a, b in zip(times[name], times["torch"], strict=True))
        for name in ("traced", "library")
    }
    return {"times": times, "ratios": pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=1024, help="images per timed epoch")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-sizes", default="32,128,512")
    parser.add_argument("--models", default=",".join(MODELS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, pyro {pyro.__version__}, {platform.processor() or 'cpu'}, "
        f"threads={torch.get_num_threads()}, {args.images} images/epoch, median of {args.repeats}"
    )
    print(
        "| model | batch | traced ms/step | library ms/step | torch ms/step | torch epoch s "
        "| traced/torch | library/torch |\n|---|---|---|---|---|---|---|---|"
    )
    for model in args.models.split(","):
        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            r = bench(MODELS[model], batch_size, args.images, args.repeats)
            med = {k: statistics.median(v) for k, v in r["times"].items()}
            steps = math.ceil(args.images / batch_size)
            ms = {k: 1000 * v / steps for k, v in med.items()}
            print(
                f"| {model} | {batch_size} | {ms['traced']:.2f} | {ms['library']:.2f} | "
                f"{ms['torch']:.2f} | {med['torch']:.3f} | {r['ratios']['traced']:.2f}x | "
                f"{r['ratios']['library']:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
