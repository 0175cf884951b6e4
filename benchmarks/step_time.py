"""Time one training step three ways on the embedded digits: pyro-vae's ELBOModule route,
Pyro's SVI with pyro.optim, and a hand-written PyTorch VAE with the same networks.

Run: OMP_NUM_THREADS=1 python benchmarks/step_time.py [--steps 300] [--repeats 5]
Prints milliseconds per step (median over repeats, routes interleaved) and ratios to PyTorch.
"""

from __future__ import annotations

import argparse
import statistics
import time

import pyro
import pyro.infer
import pyro.optim
import torch
import torch.nn.functional as F

from pyro_vae import ModelConfig, build_vae
from pyro_vae.data import dynamic_binarize, load_digits


def make_batches(steps: int, batch_size: int) -> list[torch.Tensor]:
    train = load_digits().train
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, train.shape[0], (steps, batch_size), generator=g)
    return [dynamic_binarize(train[i]) for i in idx]


def elbo_module_route(vae, batches):
    loss_fn = pyro.infer.Trace_ELBO()(vae.model, vae.guide)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    for x in batches:
        loss = loss_fn(x) / x.shape[0]
        opt.zero_grad()
        loss.backward()
        opt.step()


def svi_route(vae, batches):
    with pyro.settings.context(module_local_params=False):
        pyro.clear_param_store()

        # pyro.module registers the plain torch networks in the param store so SVI trains them.
        def model(x):
            pyro.module("vae", vae)
            vae.model(x)

        def guide(x):
            pyro.module("vae", vae)
            vae.guide(x)

        svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO())
        for x in batches:
            svi.step(x)


def torch_route(vae, batches):
    enc, dec = vae.encoder, vae.decoder
    opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=1e-3)
    d = vae.latent_dim
    for x in batches:
        h = enc(x)
        loc, scale = h[:, :d], F.softplus(h[:, d:]) + 1e-6
        z = loc + scale * torch.randn_like(loc)
        logits = dec(z).reshape(x.shape)
        log_px = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
        log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)
        log_qz = torch.distributions.Normal(loc, scale).log_prob(z).sum(1)
        loss = -(log_px + log_pz - log_qz).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


ROUTES = {"pyro-vae (ELBOModule)": elbo_module_route, "Pyro SVI": svi_route, "PyTorch": torch_route}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    batches = make_batches(args.steps, args.batch_size)
    config = ModelConfig(event_shape=(1, 8, 8), latent_dim=2)
    times: dict[str, list[float]] = {name: [] for name in ROUTES}
    for _ in range(args.repeats):
        for name, route in ROUTES.items():
            vae = build_vae(config)
            route(vae, batches[:20])  # warm-up
            start = time.perf_counter()
            route(vae, batches)
            times[name].append(1000 * (time.perf_counter() - start) / args.steps)
    base = statistics.median(times["PyTorch"])
    print(f"threads={torch.get_num_threads()} steps={args.steps} batch={args.batch_size}")
    print("| route | ms/step (median) | ratio to PyTorch |\n|---|---|---|")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.2f} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
