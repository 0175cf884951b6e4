"""The ``pyro-vae`` command: parses, calls the library, prints. No numerics here."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import PyroVAEError


def _hidden(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"hidden sizes must be integers like 256,128, got {text!r}"
        ) from exc
    if not sizes or any(s < 1 for s in sizes):
        raise argparse.ArgumentTypeError(f"hidden sizes must be positive integers, got {text!r}")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    from .likelihoods import LIKELIHOODS
    from .objectives import OBJECTIVES

    parser = argparse.ArgumentParser(
        prog="pyro-vae",
        description="Variational autoencoders as two Pyro programs: train, evaluate, plot.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train",
        help="train a VAE and write a run directory",
        description="Train a VAE by SVI and write runs/<name>/ with checkpoint, metrics, "
        "figures and the test log-likelihood (importance sampling).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    train.add_argument(
        "--dataset", default="digits", help="built-in name (digits) or a .npy/.npz path"
    )
    train.add_argument("--epochs", type=int, default=300)
    train.add_argument("--batch-size", type=int, default=64)
    train.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    train.add_argument("--latent-dim", type=int, default=2)
    train.add_argument(
        "--hidden",
        type=_hidden,
        default=(256, 128),
        help="encoder hidden sizes, e.g. 256,128 (decoder mirrors)",
    )
    train.add_argument("--likelihood", choices=sorted(LIKELIHOODS), default="bernoulli")
    train.add_argument(
        "--likelihood-scale", type=float, default=0.1, help="scale of the normal likelihood"
    )
    train.add_argument("--objective", choices=sorted(OBJECTIVES), default="elbo")
    train.add_argument("--num-particles", type=int, default=1, help="ELBO particles per step")
    train.add_argument("--beta", type=float, default=1.0, help="KL weight (beta-VAE)")
    train.add_argument(
        "--warmup", choices=["none", "linear", "cyclical"], default="none", help="KL warm-up"
    )
    train.add_argument(
        "--warmup-epochs", type=float, default=0.0, help="warm-up length (cycle length if cyclical)"
    )
    train.add_argument(
        "--free-bits", type=float, default=0.0, help="KL floor per latent dimension, nats"
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--num-samples",
        type=int,
        default=1000,
        help="importance samples K for the test log-likelihood",
    )
    train.add_argument("--output-dir", type=Path, default=Path("runs"))
    train.add_argument("--name", default=None, help="run name (default: <dataset>-<time>)")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    ev = sub.add_parser(
        "evaluate",
        help="score a trained run on its test split",
        description="Load RUN_DIR's checkpoint and print the test ELBO and the importance-"
        "sampled log-likelihood, each with its standard error.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ev.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    ev.add_argument("--num-samples", type=int, default=1000, help="importance samples K")
    ev.add_argument("--batch-size", type=int, default=None, help="data points per pass")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument(
        "--method",
        choices=["is", "ais", "gaps"],
        default=None,
        help="print a table: ELBO, IWAE-k, IS with PSIS k-hat; 'ais' adds AIS, 'gaps' the "
        "approximation and amortization gaps (on the first --num-points test points)",
    )
    ev.add_argument("--num-points", type=int, default=100, help="test points for AIS and gaps")
    ev.add_argument("--ais-steps", type=int, default=500, help="AIS annealing steps")
    ev.add_argument("--gap-steps", type=int, default=500, help="local optimization steps")
    return parser


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import ModelConfig
    from .data import load_dataset
    from .runs import train_run
    from .train import TrainConfig

    data = load_dataset(args.dataset)
    model_config = ModelConfig(
        event_shape=data.event_shape,
        latent_dim=args.latent_dim,
        hidden=args.hidden,
        likelihood=args.likelihood,
        likelihood_scale=args.likelihood_scale,
    )
    train_config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        objective=args.objective,
        num_particles=args.num_particles,
        beta=args.beta,
        warmup=args.warmup,
        warmup_epochs=args.warmup_epochs,
        free_bits=args.free_bits,
    )
    if args.num_samples < 1:
        raise _usage(f"--num-samples must be at least 1, got {args.num_samples}")
    name = args.name or f"{data.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = args.output_dir / name
    results = train_run(
        args.dataset,
        model_config,
        train_config,
        run_dir,
        num_samples=args.num_samples,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        data=data,
    )
    print(f"run directory: {run_dir}")
    print(f"trained {results['epochs']} epochs in {results['train_seconds']:.1f} s")
    _print_scores(results)
    return 0


def _print_scores(r: dict) -> None:
    n = r["num_test_points"]
    elbo, elbo_se = r["test_elbo"], r["test_elbo_stderr"]
    ll, ll_se = r["test_log_likelihood"], r["test_log_likelihood_stderr"]
    print(f"test ELBO:           {elbo:9.3f} +- {elbo_se:.3f} nats per data point (n={n})")
    print(
        f"test log-likelihood: {ll:9.3f} +- {ll_se:.3f} nats per data point "
        f"(importance sampling, K={r['num_samples']}, mean ESS {r['mean_ess']:.1f})"
    )


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import pyro

    from .data import load_dataset
    from .runs import load_run, score, summary

    if args.num_samples < 1:
        raise _usage(f"--num-samples must be at least 1, got {args.num_samples}")
    if args.batch_size is not None and args.batch_size < 1:
        raise _usage(f"--batch-size must be at least 1, got {args.batch_size}")
    vae, config = load_run(args.run_dir)
    data = load_dataset(config["dataset"])
    pyro.set_rng_seed(args.seed)
    if args.method is not None:
        return _print_inference_report(args, vae, data)
    result = score(vae, data, num_samples=args.num_samples, batch_size=args.batch_size)
    print(f"run directory: {args.run_dir}")
    _print_scores(summary(result))
    return 0


def _print_inference_report(args: argparse.Namespace, vae, data) -> int:
    from .inference_report import inference_report
    from .train import eval_data

    if args.num_points < 1:
        raise _usage(f"--num-points must be at least 1, got {args.num_points}")
    report = inference_report(
        vae.model,
        vae.guide,
        eval_data(vae, data.test),
        args.method,
        num_samples=args.num_samples,
        num_points=args.num_points,
        ais_steps=args.ais_steps,
        gap_steps=args.gap_steps,
        family=vae.posterior,
        init_params=vae.encoder,
        batch_size=args.batch_size,
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


def _usage(message: str) -> PyroVAEError:
    from .errors import ConfigError

    return ConfigError(message)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    commands = {"train": _cmd_train, "evaluate": _cmd_evaluate}
    try:
        return commands[args.command](args)
    except PyroVAEError as exc:
        if args.debug:
            raise
        print(f"pyro-vae: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pyro-vae: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
