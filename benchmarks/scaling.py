"""Training throughput: one process vs several (torchrun, gloo on CPU), in memory vs streamed.

Prints a table of wall time per epoch and training images per second for

  1. ``pyro-vae train`` in one process, data in memory;
  2. ``torchrun --standalone --nproc_per_node=P -m pyro_vae train``, data in memory;
  3. one process with ``--stream`` (the training split read from a ``.npy`` file batch by batch).

Usage:

    python benchmarks/scaling.py --dataset fashion-mnist --epochs 2 --procs 2

Each run's "trained N epochs in S s" line is the fit loop's own clock (validation included);
images/s counts training images only. Run on an otherwise idle machine: the ratio between
rows is what carries over to other machines.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def run(cmd: list[str]) -> float:
    """Run a ``pyro-vae train`` command line; returns the training seconds it reports."""
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return float(re.search(r"trained \d+ epochs in ([\d.]+) s", proc.stdout).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()

    from pyro_vae.data import load_dataset

    data = load_dataset(args.dataset)
    n_train = data.train.shape[0]
    with tempfile.TemporaryDirectory() as tmp:
        # the same points as one .npy file, for the streamed row: uint8 pixels, as on disk
        arr = np.concatenate([data.train.numpy(), data.valid.numpy(), data.test.numpy()])
        path = Path(tmp) / f"{args.dataset}.npy"
        np.save(path, np.round(arr * 255).astype(np.uint8))
        common = [
            "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
            "--num-samples", "10", "--no-progress", "--device", "cpu", "--output-dir", tmp,
        ]  # fmt: skip
        py = [sys.executable, "-m"]
        n_file = len(arr) - 2 * round(0.1 * len(arr))  # the .npy file's 80/10/10 split
        rows = [
            ("1 process, in memory", [*py, "pyro_vae", "train", "--dataset", args.dataset]),
            (
                f"{args.procs} processes (torchrun, gloo), in memory",
                [*py, "torch.distributed.run", "--standalone",
                 f"--nproc_per_node={args.procs}", "-m", "pyro_vae", "train",
                 "--dataset", args.dataset],
            ),  # fmt: skip
            (".npy file, 1 process, in memory", [*py, "pyro_vae", "train", "--dataset", str(path)]),
            (
                ".npy file, 1 process, streamed",
                [*py, "pyro_vae", "train", "--dataset", str(path), "--stream"],
            ),
        ]
        print(f"{args.dataset}: {n_train} training images, {args.epochs} epochs, batch "
              f"{args.batch_size}, {time.strftime('%Y-%m-%d')}")  # fmt: skip
        print(f"{'setting':48s} {'s/epoch':>8s} {'images/s':>9s}")
        for i, (name, cmd) in enumerate(rows):
            seconds = run([*cmd, *common, "--name", f"r{i}"])
            per_epoch = seconds / args.epochs
            n = n_file if name.startswith(".npy") else n_train
            print(f"{name:48s} {per_epoch:8.2f} {n / per_epoch:9.0f}")


if __name__ == "__main__":
    main()
