"""``pyro-vae sample RUN_DIR``: a grid of images decoded from the prior or the aggregate
posterior of a trained run."""

from __future__ import annotations

import argparse
from pathlib import Path

from pyro_vae.cli.arguments import DEVICE_HELP, seed


def add_parser(sub, track: bool = False) -> argparse.ArgumentParser:
    """The ``sample`` parser among ``sub``'s commands (``track`` changes nothing here)."""
    from pyro_vae.runs.pipeline import FIGURE_FORMATS

    sample = sub.add_parser(
        "sample",
        help="draw a grid of samples from a trained run",
        description="Decode z drawn from the prior, or from a Gaussian mixture fitted to the "
        "training data's codes (the aggregate posterior), into a grid of images.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sample.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    sample.add_argument("-n", "--num", type=int, default=64, help="number of samples")
    sample.add_argument("--source", choices=["prior", "aggregate"], default="prior")
    sample.add_argument("--output", type=Path, default=None, help="default RUN_DIR/samples-SOURCE")
    sample.add_argument("--format", choices=FIGURE_FORMATS, default=FIGURE_FORMATS[0])
    sample.add_argument("--seed", type=seed, default=0)
    sample.add_argument("--device", default="auto", help=DEVICE_HELP)
    return sample


def run(args: argparse.Namespace) -> int:
    """Draw the grid and say where it went."""
    from pyro_vae.analysis import figures
    from pyro_vae.analysis.plots import check_figure_path
    from pyro_vae.runs import check_size, load_run, load_run_data

    check_size(args.num, "-n (samples drawn)")
    out = check_figure_path(args.output or args.run_dir / f"samples-{args.source}.{args.format}")
    model, config = load_run(args.run_dir, device=args.device)
    data = load_run_data(config)
    path = figures.figure_samples(model, data, out, source=args.source, n=args.num, seed=args.seed)
    print(f"wrote {path}" if path else "data are not images; nothing drawn")
    return 0
