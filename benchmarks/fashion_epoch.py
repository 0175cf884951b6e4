"""Wall time of one full Fashion-MNIST training epoch: traced loop, library loop, PyTorch.

Reads the IDX files (``apt-get install -y dataset-fashion-mnist``) with
``pyro_vae.data.load_dataset("fashion-mnist")`` (50,000 training images), then times, interleaved,
one epoch of each route of ``step_time.py`` (same networks, Adam, batch size) and, alone, the
data work of an epoch (shuffle, gather, dynamic binarization) to show it is not the bottleneck.

Run: PYTHONPATH=. python benchmarks/fashion_epoch.py [--threads 1] [--batch-size 128]
         [--model pyro-mlp] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from step_time import MODELS, make_routes

from pyro_vae.data import load_dataset
from pyro_vae.data.binarize import dynamic_binarize


def data_epoch(train: torch.Tensor, batch_size: int) -> None:
    """The data work of one epoch alone: permutation, gather, binarization."""
    perm = torch.randperm(train.shape[0])
    for i in range(0, train.shape[0], batch_size):
        dynamic_binarize(train[perm[i : i + batch_size]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--model", default="pyro-mlp", choices=["pyro-mlp", "conv"])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    train = load_dataset("fashion-mnist").train
    load_s = time.perf_counter() - start
    routes = make_routes(MODELS[args.model], args.batch_size)
    for route in routes.values():
        route(train[: 2 * args.batch_size])
    times: dict[str, list[float]] = {name: [] for name in [*routes, "data only"]}
    for _ in range(args.repeats):
        for name, route in routes.items():
            start = time.perf_counter()
            route(train)
            times[name].append(time.perf_counter() - start)
        start = time.perf_counter()
        data_epoch(train, args.batch_size)
        times["data only"].append(time.perf_counter() - start)
    print(
        f"torch {torch.__version__}, threads={torch.get_num_threads()}, model {args.model}, "
        f"{train.shape[0]} images, batch {args.batch_size}, load {load_s:.1f} s, "
        f"median of {args.repeats}"
    )
    base = statistics.median(times["torch"])
    print("| route | epoch s | ratio to torch |\n|---|---|---|")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.1f} | {med / base:.2f}x |")


if __name__ == "__main__":
    main()
