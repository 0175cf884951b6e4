"""Objectives and inference gaps on Fashion-MNIST (binarized), CPU-sized.

Trains the same small MLP VAE with Trace_ELBO, IWAE-5, IWAE-5 + DReG and Trace_ELBO with a
linear KL warm-up, all for the same number of epochs, then reports on test points the
ELBO, log p(x) by importance sampling (K=1000), PSIS k-hat, AIS on a subset, and the
approximation / amortization gaps on that subset.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/inference_fashion_mnist.py \
        --out benchmarks/inference_fashion_mnist.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import struct
import time
from pathlib import Path

import numpy as np
import pyro
import torch

from pyro_vae.data import DataSplits, static_binarize
from pyro_vae.infer import ais_log_likelihood, log_likelihood, psis_khat, vae_inference_gaps
from pyro_vae.models import ModelConfig, build_vae
from pyro_vae.train import TrainConfig, fit

ROOT = Path("/usr/share/datasets/fashion-mnist")


def read_idx_images(path: Path) -> torch.Tensor:
    """Images from a gzipped IDX3 file as float32 in [0, 1]: (N, 1, 28, 28)."""
    with gzip.open(path, "rb") as f:
        magic, n, rows, cols = struct.unpack(">IIII", f.read(16))
        if magic != 2051:
            raise ValueError(f"{path} is not an IDX3 image file (magic {magic})")
        array = np.frombuffer(f.read(), dtype=np.uint8).reshape(n, 1, rows, cols)
    return torch.from_numpy(array.astype(np.float32) / 255.0)


RUNS = {
    "Trace_ELBO": dict(objective="elbo"),
    "IWAE-5": dict(objective="iwae", num_particles=5),
    "IWAE-5 + DReG": dict(objective="dreg", num_particles=5),
    "Trace_ELBO + linear warm-up": dict(objective="elbo", warmup="linear", warmup_epochs=5),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=10000)
    parser.add_argument("--test", type=int, default=500)
    parser.add_argument("--subset", type=int, default=50, help="test points for AIS and gaps")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--ais-steps", type=int, default=200)
    parser.add_argument("--gap-steps", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/inference_fashion_mnist.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    train = read_idx_images(ROOT / "train-images-idx3-ubyte.gz")
    test = read_idx_images(ROOT / "t10k-images-idx3-ubyte.gz")
    g = torch.Generator().manual_seed(0)
    train = train[torch.randperm(train.shape[0], generator=g)[: args.train + 1000]]
    data = DataSplits("fashion-mnist", train[: args.train], train[args.train :], test[: args.test])
    x_test = static_binarize(data.test)
    results = {
        "machine": f"{platform.machine()} CPU, 1 thread",
        "date": time.strftime("%Y-%m-%d"),
        "args": {k: str(v) for k, v in vars(args).items()},
        "runs": {},
    }
    for name, opts in RUNS.items():
        pyro.set_rng_seed(0)
        config = ModelConfig(event_shape=(1, 28, 28), latent_dim=args.latent_dim, hidden=(256,))
        vae = build_vae(config)
        t0 = time.perf_counter()
        history = fit(
            vae, data, TrainConfig(epochs=args.epochs, batch_size=100, seed=0, **opts),
            progress=False,
        ).history  # fmt: skip
        train_s = time.perf_counter() - t0
        vae.eval()
        pyro.set_rng_seed(1)
        t0 = time.perf_counter()
        ll = log_likelihood(vae.model, vae.guide, x_test, num_samples=1000, keep_log_weights=True)
        k = psis_khat(ll.log_weights)
        iwae5 = log_likelihood(vae.model, vae.guide, x_test, num_samples=5)
        sub = x_test[: args.subset]
        ais = ais_log_likelihood(vae.model, vae.guide, sub, num_steps=args.ais_steps, num_chains=8)
        gaps = vae_inference_gaps(
            vae, sub, num_steps=args.gap_steps, ais_per_example=ais.per_example
        )
        eval_s = time.perf_counter() - t0
        row = {
            "train_seconds": train_s,
            "eval_seconds": eval_s,
            "final_train_elbo": history[-1]["train_elbo"],
            "test_elbo": [ll.elbo, ll.elbo_stderr],
            "test_iwae5": [iwae5.mean, iwae5.stderr],
            "test_is1000": [ll.mean, ll.stderr],
            "khat_frac_over_0.7": float((k > 0.7).float().mean()),
            "subset_is1000": [
                float(ll.per_example[: args.subset].mean()),
                float(ll.per_example[: args.subset].std() / args.subset**0.5),
            ],
            "subset_ais": [ais.mean, ais.stderr, ais.mc_stderr],
            "ais_acceptance": float(ais.acceptance.mean()),
            "gaps": gaps.summary(),
        }
        results["runs"][name] = row
        print(name, json.dumps(row), flush=True)
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
