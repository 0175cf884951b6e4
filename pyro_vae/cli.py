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
    _add_part_arguments(train)
    train.add_argument("--objective", choices=sorted(OBJECTIVES), default="elbo")
    train.add_argument("--num-particles", type=int, default=1, help="ELBO particles per step")
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
    return parser


def _add_part_arguments(train: argparse.ArgumentParser) -> None:
    """--prior, --posterior, --arch, the parts' options and --config FILE."""
    from .config import ARCHS
    from .posteriors import POSTERIORS
    from .priors import PRIORS

    parts = train.add_argument_group("model parts")
    parts.add_argument("--prior", choices=sorted(PRIORS), default="normal")
    parts.add_argument("--posterior", choices=sorted(POSTERIORS), default="diagonal")
    parts.add_argument("--arch", choices=list(ARCHS), default="mlp", help="encoder/decoder nets")
    parts.add_argument("--n-components", type=int, default=10, help="mixture prior components")
    parts.add_argument("--num-pseudo-inputs", type=int, default=50, help="VampPrior pseudo-inputs")
    parts.add_argument("--flow-layers", type=int, default=2, help="flow prior layers")
    parts.add_argument("--rank", type=int, default=2, help="low_rank posterior rank")
    parts.add_argument("--iaf-steps", type=int, default=2, help="IAF posterior steps")
    parts.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML or JSON file of the same options (keys like latent_dim, prior); "
        "flags given on the command line win",
    )


_PART_KEYS = (
    "prior", "posterior", "arch", "n_components", "num_pseudo_inputs", "flow_layers", "rank",
    "iaf_steps",
)  # fmt: skip


def _apply_config_file(args: argparse.Namespace) -> dict:
    """Fill args from --config where the flag was left at its default; return model extras.

    Keys that are ModelConfig fields without a flag (e.g. iaf_context, channels) are returned.
    """
    import dataclasses

    from .config import ModelConfig, load_config_file
    from .errors import ConfigError

    if args.config is None:
        return {}
    defaults = build_parser().parse_args(["train"])
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)} - {"event_shape"}
    extras = {}
    for key, value in load_config_file(args.config).items():
        if key in vars(defaults) and key not in ("command", "config"):
            if getattr(args, key) == getattr(defaults, key):
                setattr(args, key, tuple(value) if isinstance(value, list) else value)
        elif key in model_fields:
            extras[key] = value
        else:
            raise ConfigError(
                f"unknown key {key!r} in config file {args.config}; use option names such as "
                "latent_dim, prior, posterior, likelihood, epochs"
            )
    return extras


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import ModelConfig
    from .data import load_dataset
    from .runs import train_run
    from .train import TrainConfig

    model_extras = _apply_config_file(args)
    data = load_dataset(args.dataset)
    model_config = ModelConfig(
        event_shape=data.event_shape,
        latent_dim=args.latent_dim,
        hidden=args.hidden,
        likelihood=args.likelihood,
        likelihood_scale=args.likelihood_scale,
        **{key: getattr(args, key) for key in _PART_KEYS},
        **model_extras,
    )
    train_config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        objective=args.objective,
        num_particles=args.num_particles,
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
