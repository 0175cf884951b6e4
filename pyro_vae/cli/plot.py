"""``pyro-vae plot RUN_DIR --kind KIND``: one figure of a trained run.

The kinds are the figures registered in ``pyro_vae.analysis.run_figures.FIGURES`` (a model
kind draws those it lists), then ``attribute`` and ``compare``.
"""

from __future__ import annotations

import argparse
import types
from pathlib import Path

from pyro_vae.cli.arguments import DEVICE_HELP, seed
from pyro_vae.cli.exits import usage


def figure_kinds() -> list[str]:
    """``plot --kind`` choices: every registered figure, then attribute and compare."""
    from pyro_vae.analysis.run_figures import FIGURES

    return [*FIGURES, "attribute", "compare"]


def add_parser(sub, track: bool = False) -> argparse.ArgumentParser:
    """The ``plot`` parser among ``sub``'s commands (``track`` changes nothing here)."""
    from pyro_vae.runs.pipeline import FIGURE_FORMATS

    plot = sub.add_parser(
        "plot",
        help="draw one figure of a trained run",
        description="elbo: training curves; samples; reconstructions; latent: test codes by "
        "label (PCA beyond 2-D); manifold: decoded prior-quantile grid (2-D latents); "
        "interpolation: linear and spherical; attribute: mean code of --positive minus "
        "--negative added to inputs; compare: this run beside --against RUN (e.g. an AE).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    plot.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    plot.add_argument("--kind", choices=figure_kinds(), required=True)
    plot.add_argument("--output", type=Path, default=None, help="default RUN_DIR/KIND.FORMAT")
    plot.add_argument("--format", choices=FIGURE_FORMATS, default=FIGURE_FORMATS[0])
    plot.add_argument("--seed", type=seed, default=0)
    plot.add_argument("--device", default="auto", help=DEVICE_HELP)
    plot.add_argument("--source", choices=["prior", "aggregate"], default="prior")
    plot.add_argument("--steps", type=int, default=10, help="interpolation steps")
    plot.add_argument(
        "--pair", type=int, nargs=2, default=None, metavar=("I", "J"), help="test indices"
    )
    plot.add_argument("--positive", type=int, default=None, help="attribute: label to add")
    plot.add_argument("--negative", type=int, default=None, help="attribute: label to remove")
    plot.add_argument(
        "--strengths",
        type=lambda t: [float(v) for v in t.split(",")],
        default=[-2.0, -1.0, 0.0, 1.0, 2.0],
        help="attribute strengths, comma-separated",
    )
    plot.add_argument("--against", type=Path, default=None, help="compare: the other run dir")
    return plot


def run(args: argparse.Namespace) -> int:
    """Draw the figure ``--kind`` names and say where it went."""
    import torch

    from pyro_vae.analysis import figures
    from pyro_vae.analysis.plots import check_figure_path
    from pyro_vae.analysis.run_figures import draw
    from pyro_vae.models.kinds import kind_of
    from pyro_vae.runs import RunDir, check_size, load_run, load_run_data

    if args.kind == "interpolation":
        check_size(args.steps, "--steps (interpolation steps)")
    out = check_figure_path(args.output or args.run_dir / f"{args.kind}.{args.format}")
    model, config = load_run(args.run_dir, device=args.device)
    kind = kind_of(model)
    torch.manual_seed(args.seed)
    figure = args.kind
    if figure in ("elbo", "loss"):  # the training curve the run's kind draws
        figure = next((f for f in kind.figures if f in ("elbo", "loss")), figure)
        history = RunDir(args.run_dir).read_metrics()
        named = types.SimpleNamespace(name=config["dataset"])
        path = draw(figure, model, named, out, history=history, seed=args.seed)
        print(f"wrote {path}")
        return 0
    data = load_run_data(config)
    if args.kind == "samples":
        path = figures.figure_samples(model, data, out, source=args.source, seed=args.seed)
    elif args.kind == "interpolation":
        if args.steps < 2:
            raise usage(f"--steps must be at least 2, got {args.steps}")
        pair = tuple(args.pair) if args.pair else None
        path = figures.figure_interpolation(model, data, out, steps=args.steps, pair=pair)
    elif args.kind == "attribute":
        if args.positive is None or args.negative is None:
            raise usage("--kind attribute needs --positive LABEL and --negative LABEL")
        path = figures.figure_attribute(
            model, data, out, args.positive, args.negative, strengths=args.strengths
        )
    elif args.kind != "compare":
        if args.kind not in kind.figures:
            raise usage(
                f"figure {args.kind!r} does not fit a {kind.label} run; its figures are "
                f"{', '.join(kind.figures)} (and attribute, compare)"
            )
        path = draw(args.kind, model, data, out, seed=args.seed)
    else:
        if args.against is None:
            raise usage("--kind compare needs --against OTHER_RUN_DIR (e.g. an --model ae run)")
        other, other_config = load_run(args.against)
        if other_config["dataset"] != config["dataset"]:
            raise usage(
                f"runs were trained on different data ({config['dataset']!r} and "
                f"{other_config['dataset']!r}); compare runs on the same data set"
            )
        name, other_name = kind.label, kind_of(other).label
        if name == other_name:
            name, other_name = (
                f"{name} ({args.run_dir.name})",
                f"{other_name} ({args.against.name})",
            )
        models = (
            {other_name: other, name: model}
            if other_name.startswith("auto")
            else {
                name: model,
                other_name: other,
            }
        )
        path = figures.figure_comparison(models, data, out)
    print(f"wrote {path}" if path else "data are not images; nothing drawn")
    return 0
