"""Swap one part at a time on Fashion-MNIST and score each model by importance sampling.

Same MLP networks everywhere; rows differ in one part: prior (standard / VampPrior /
mixture), posterior (diagonal / IAF) or likelihood (Bernoulli on binarized pixels /
continuous Bernoulli on the grey levels). Prints a Markdown table of the test log-likelihood
(IS, K samples, +- standard error over test points), epochs and wall time.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/parts_fashion_mnist.py \
        --train 10000 --test 1000 --epochs 20 --latent-dim 16
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np
import pyro
import torch

from pyro_vae.data import dynamic_binarize, static_binarize
from pyro_vae.infer import log_likelihood
from pyro_vae.models import ModelConfig, build_vae

ROOT = Path("/usr/share/datasets/fashion-mnist")

#: (label, prior, posterior, likelihood)
ROWS = [
    ("standard prior, diagonal q, Bernoulli", "normal", "diagonal", "bernoulli"),
    ("VampPrior (K=50), diagonal q, Bernoulli", "vamp", "diagonal", "bernoulli"),
    ("mixture prior (10), diagonal q, Bernoulli", "mixture", "diagonal", "bernoulli"),
    ("standard prior, IAF q (2 steps), Bernoulli", "normal", "iaf", "bernoulli"),
    (
        "standard prior, diagonal q, continuous Bernoulli",
        "normal",
        "diagonal",
        "continuous_bernoulli",
    ),
]


def read_idx_images(path: Path) -> torch.Tensor:
    """IDX3 ubyte images (gzipped) -> float tensor (n, 1, rows, cols) in [0, 1]."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic, n, rows, cols = np.frombuffer(raw[:16], dtype=">i4")
    if magic != 2051:
        raise ValueError(f"{path} is not an IDX3 image file (magic {magic})")
    pixels = np.frombuffer(raw[16:], dtype=np.uint8).reshape(n, 1, rows, cols)
    return torch.from_numpy(pixels.astype(np.float32) / 255.0)


def run_row(args, prior, posterior, likelihood, train_x, test_x):
    pyro.set_rng_seed(args.seed)
    config = ModelConfig(
        event_shape=tuple(train_x.shape[1:]),
        latent_dim=args.latent_dim,
        hidden=(512, 256),
        prior=prior,
        posterior=posterior,
        likelihood=likelihood,
    )
    vae = build_vae(config)
    vae.likelihood.check_data(test_x)
    loss_fn = pyro.infer.Trace_ELBO()(vae.model, vae.guide)
    loss_fn(train_x[:2])  # initialize lazy parameters
    optim = torch.optim.Adam(vae.parameters(), lr=args.lr)
    start = time.perf_counter()
    n = train_x.shape[0]
    for epoch in range(args.epochs):
        perm = torch.randperm(n)
        total = 0.0
        for i in range(0, n, args.batch_size):
            x = train_x[perm[i : i + args.batch_size]]
            if vae.likelihood.binarize:
                x = dynamic_binarize(x)
            loss = loss_fn(x) / x.shape[0]
            optim.zero_grad()
            loss.backward()
            optim.step()
            total += float(loss) * x.shape[0]
        print(f"  epoch {epoch + 1}: train -ELBO {total / n:.2f}", flush=True)
    train_s = time.perf_counter() - start
    x_eval = static_binarize(test_x) if vae.likelihood.binarize else test_x
    with torch.no_grad():
        ll = log_likelihood(
            vae.model, vae.guide, x_eval, num_samples=args.num_samples, batch_size=50
        )
    wall = time.perf_counter() - start
    return ll, train_s, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=10000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--latent-dim", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", default="", help="comma-separated row numbers (default all)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train_x = read_idx_images(ROOT / "train-images-idx3-ubyte.gz")[: args.train]
    test_x = read_idx_images(ROOT / "t10k-images-idx3-ubyte.gz")[: args.test]
    rows = ROWS if not args.rows else [ROWS[int(i)] for i in args.rows.split(",")]
    lines = [
        f"| model | test log p(x), IS K={args.num_samples} (nats) | test ELBO | epochs | "
        "train s | wall s | vs. row 1 (paired) |",
        "|---|---|---|---|---|---|---|",
    ]
    baseline = {}
    for label, prior, posterior, likelihood in rows:
        print(label, flush=True)
        ll, train_s, wall = run_row(args, prior, posterior, likelihood, train_x, test_x)
        # Same test points in every row: the paired difference has a much smaller stderr.
        base = baseline.setdefault(likelihood == "bernoulli", ll.per_example)
        diff = ll.per_example - base
        paired = (
            "n/a (other data)"
            if likelihood != "bernoulli"
            else f"{float(diff.mean()):+.2f} +- {float(diff.std() / diff.numel() ** 0.5):.2f}"
        )
        line = (
            f"| {label} | {ll.mean:.2f} +- {ll.stderr:.2f} | {ll.elbo:.2f} +- "
            f"{ll.elbo_stderr:.2f} | {args.epochs} | {train_s:.0f} | {wall:.0f} | {paired} |"
        )
        print(line, flush=True)
        lines.append(line)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
