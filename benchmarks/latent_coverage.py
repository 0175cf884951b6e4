"""Latent-space coverage of trained runs: reconstruction NLL at the code, code spread, and the share
of empty cells in a grid over the codes' extent.

Usage: python benchmarks/latent_coverage.py RUN_DIR [RUN_DIR ...]

For each run: encode the test split (posterior means for a VAE, codes for an AE), project to
2-D (PCA beyond 2-D), cut the 5%..95% quantile box into a 15 x 15 grid, and count the cells that
hold no test code. Empty cells are where a decoded grid shows the empty regions of the latent
space (the lecture's "holes"; "gaps" in this package means inference gaps only).
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch

from pyro_vae.analysis import latent_space as ls
from pyro_vae.data import eval_data
from pyro_vae.runs import load_run, load_run_data


@torch.no_grad()
def coverage_stats(run_dir: str, grid: int = 15) -> dict[str, float]:
    model, config = load_run(run_dir)
    data = load_run_data(config)
    x = eval_data(model, data.test)
    codes = ls.latent_codes(model, x)
    nll = torch.cat(
        [
            -model.decode(codes[i : i + 2048]).log_prob(x[i : i + 2048])
            for i in range(0, len(x), 2048)
        ]
    )
    points, _ = ls.project_2d(codes)
    lo, hi = np.quantile(points, 0.05, axis=0), np.quantile(points, 0.95, axis=0)
    inside = np.all((points >= lo) & (points <= hi), axis=1)
    cells = np.floor((points[inside] - lo) / (hi - lo) * grid).clip(0, grid - 1).astype(int)
    occupied = len({(int(a), int(b)) for a, b in cells})
    return {
        "kind": config.get("kind", "vae"),
        "recon_nll": float(nll.mean()),
        "recon_nll_se": float(nll.std() / math.sqrt(len(nll))),
        "code_std": float(codes.std(0).mean()),
        "empty_cells": 1 - occupied / grid**2,
    }


if __name__ == "__main__":
    print("| run | kind | test recon NLL at code (nats) | mean code std | empty grid cells |")
    print("|---|---|---|---|---|")
    for run in sys.argv[1:]:
        s = coverage_stats(run)
        print(
            f"| {run} | {s['kind']} | {s['recon_nll']:.2f} +- {s['recon_nll_se']:.2f} | "
            f"{s['code_std']:.2f} | {100 * s['empty_cells']:.1f}% |"
        )
