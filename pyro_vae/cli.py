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
    train.add_argument("--epochs", type=int, default=300, help="passes over the training split")
    train.add_argument("--batch-size", type=int, default=64, help="data points per SVI step")
    train.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    train.add_argument("--latent-dim", type=int, default=2, help="dimension of z")
    train.add_argument(
        "--hidden",
        type=_hidden,
        default=(256, 128),
        help="encoder hidden sizes, e.g. 256,128 (decoder mirrors)",
    )
    train.add_argument(
        "--likelihood", choices=sorted(LIKELIHOODS), default="bernoulli", help="p(x | z)"
    )
    train.add_argument(
        "--likelihood-scale", type=float, default=0.1, help="scale of the normal likelihood"
    )
    train.add_argument(
        "--objective", choices=sorted(OBJECTIVES), default="elbo", help="training objective"
    )
    train.add_argument("--num-particles", type=int, default=1, help="ELBO particles per step")
    train.add_argument("--seed", type=int, default=0, help="random seed (same seed, same run)")
    train.add_argument(
        "--num-samples",
        type=int,
        default=1000,
        help="importance samples K for the test log-likelihood",
    )
    train.add_argument(
        "--output-dir", type=Path, default=Path("runs"), help="parent of the run directory"
    )
    train.add_argument("--name", default=None, help="run name; <dataset>-<time> when omitted")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.add_argument(
        "--clip-grad",
        type=float,
        default=None,
        metavar="NORM",
        help="clip the total gradient 2-norm of each step to NORM",
    )
    train.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="continue RUN_DIR from its last completed epoch with its own config.json "
        "(--epochs may extend it)",
    )

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
    ev.add_argument("--seed", type=int, default=0, help="random seed of the estimator")
    for command in (train, ev):
        # SUPPRESS keeps a top-level --debug from being reset by the subcommand's default.
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
        )
    return parser


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import ModelConfig
    from .data import load_dataset
    from .runs import train_run
    from .train import TrainConfig

    if args.resume is not None:
        return _cmd_resume(args)
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
        clip_grad=args.clip_grad,
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


#: Options ``train --resume`` accepts; every other setting comes from the run's config.json.
RESUME_OPTIONS = {"resume", "epochs", "no_progress", "debug"}


def _cmd_resume(args: argparse.Namespace) -> int:
    from .runs import resume_run

    conflicting = sorted(set(args.given) - RESUME_OPTIONS)
    if conflicting:
        flags = ", ".join("--" + name.replace("_", "-") for name in conflicting)
        raise _usage(
            f"{flags} cannot be combined with --resume: the run's config.json fixes every "
            "setting (only --epochs and --no-progress are allowed); drop them"
        )
    epochs = args.epochs if "epochs" in args.given else None
    results = resume_run(args.resume, epochs=epochs, progress=not args.no_progress)
    print(f"run directory: {args.resume} (resumed)")
    print(f"trained {results['epochs']} epochs in {results['train_seconds']:.1f} s")
    _print_scores(results)
    return 0


def _given_options(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """Destinations of the options written on the command line (not left at their defaults)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                for a in sub._actions:
                    a.default = argparse.SUPPRESS
        elif action.dest != "help":
            action.default = argparse.SUPPRESS
    given, _ = parser.parse_known_args(argv)
    return set(vars(given)) - {"command"}


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
    result = score(vae, data, num_samples=args.num_samples, batch_size=args.batch_size)
    print(f"run directory: {args.run_dir}")
    _print_scores(summary(result))
    return 0


def _usage(message: str) -> PyroVAEError:
    from .errors import ConfigError

    return ConfigError(message)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.given = _given_options(build_parser(), argv)
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
    except (OSError, RuntimeError, ValueError) as exc:
        # Not raised on purpose (full disk, a torch failure): still one line, exit 1.
        if args.debug:
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        print(
            f"pyro-vae: error: {type(exc).__name__}: {first} (rerun with --debug for the "
            "traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
