"""``pyro-vae evaluate RUN_DIR``: score a trained run on its test split.

The defaults of ``--num-samples`` and ``--batch-size`` are those of
[`score`][pyro_vae.runs.metrics.score]; the ``--method`` choices are the reports of
``pyro_vae.infer.report.METHODS``.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

from pyro_vae.cli.arguments import DEVICE_HELP, seed
from pyro_vae.cli.exits import usage
from pyro_vae.cli.printing import print_metric_lines
from pyro_vae.cli.processes import join_processes


def add_parser(sub, track: bool = False) -> argparse.ArgumentParser:
    """The ``evaluate`` parser among ``sub``'s commands (``track`` changes nothing here)."""
    from pyro_vae.infer.report import METHODS
    from pyro_vae.runs.metrics import score

    ev = sub.add_parser(
        "evaluate",
        help="score a trained run on its test split",
        description="Load RUN_DIR's checkpoint and print the test ELBO and the importance-"
        "sampled log-likelihood, each with its standard error.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    scoring = inspect.signature(score).parameters
    ev.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    ev.add_argument(
        "--num-samples",
        type=int,
        default=scoring["num_samples"].default,
        help="importance samples K",
    )
    ev.add_argument(
        "--batch-size",
        type=int,
        default=scoring["batch_size"].default,
        help="data points per pass",
    )
    ev.add_argument("--seed", type=seed, default=0, help="random seed of the estimator")
    ev.add_argument("--device", default="auto", help=DEVICE_HELP)
    ev.add_argument(
        "--method",
        choices=list(METHODS),
        default=None,
        help="print a table: ELBO, IWAE-k, IS with PSIS k-hat; 'ais' adds AIS, 'gaps' the "
        "approximation and amortization gaps (on the first --num-points test points)",
    )
    ev.add_argument("--num-points", type=int, default=100, help="test points for AIS and gaps")
    ev.add_argument("--ais-steps", type=int, default=500, help="AIS annealing steps")
    ev.add_argument("--gap-steps", type=int, default=500, help="local optimization steps")
    return ev


def run(args: argparse.Namespace) -> int:
    """Print the run's test metrics, or with ``--method`` a table of estimators."""
    import pyro

    from pyro_vae.models.kinds import kind_of
    from pyro_vae.runs import check_size, load_run, load_run_data
    from pyro_vae.runs.metrics import ScoreOptions, metric_lines, test_metrics

    check_size(args.num_samples, "--num-samples (importance samples per point)")
    if args.batch_size is not None and args.batch_size < 1:
        raise usage(f"--batch-size must be at least 1, got {args.batch_size}")
    group = join_processes(args.device)
    model, config = load_run(args.run_dir, device=args.device)
    kind = kind_of(model)
    data = load_run_data(config)
    pyro.set_rng_seed(args.seed)
    if args.method is not None:
        if not kind.scores_likelihood:
            raise usage(
                f"{str(args.run_dir)!r} is a {kind.label} run: it has no likelihood p(x) for "
                f"--method {args.method}; drop --method for its test metrics"
            )
        return _print_inference_report(args, model, data)
    options = ScoreOptions(args.num_samples, args.batch_size, args.seed)
    results = test_metrics(model, data, options)
    if not group.is_main:
        return 0
    print(f"run directory: {args.run_dir}")
    print_metric_lines(metric_lines(kind, results))
    return 0


def _print_inference_report(args: argparse.Namespace, vae, data) -> int:
    """The ``--method`` table on the first ``--num-points`` test points."""
    from pyro_vae.data.binarize import eval_data
    from pyro_vae.infer.report import inference_report
    from pyro_vae.models.kinds import kind_of
    from pyro_vae.runs.metrics import test_args

    if args.num_points < 1:
        raise usage(f"--num-points must be at least 1, got {args.num_points}")
    kind = kind_of(vae)
    parts = kind.gap_parts(vae)
    if args.method == "gaps" and parts is None:
        raise usage(
            f"the inference gaps need one posterior family per site fed by one encoder, which "
            f"a {kind.label} does not have; use --method ais"
        )
    family, encoder = parts or (None, None)
    report = inference_report(
        vae.model,
        vae.guide,
        eval_data(vae, data.test),
        args.method,
        num_samples=args.num_samples,
        num_points=args.num_points,
        ais_steps=args.ais_steps,
        gap_steps=args.gap_steps,
        family=family,
        init_params=encoder,
        batch_size=args.batch_size,
        args=test_args(vae, data),
    )
    print(f"run directory: {args.run_dir}")
    print(report.table())
    if report.unreliable:
        print(
            "warning: PSIS k-hat > 0.7 for some points: their importance-sampled estimate is "
            "unreliable; compare with --method ais",
            file=sys.stderr,
        )
    return 0
