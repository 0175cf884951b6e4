"""The ``pyro-vae`` command: parses, calls the library, prints. No numerics here."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pyro_vae.errors import PyroVAEError


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
    from pyro_vae.infer.objectives import OBJECTIVES
    from pyro_vae.parts.likelihoods import LIKELIHOODS

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
        "--dataset",
        default="digits",
        help="digits, mnist, fashion-mnist, kmnist, cifar10, a .npy/.npz path or an image folder",
    )
    _add_data_arguments(train)
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
    _add_part_arguments(train)
    train.add_argument(
        "--objective", choices=sorted(OBJECTIVES), default="elbo", help="training objective"
    )
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
    train.add_argument(
        "--model",
        choices=["vae", "ae"],
        default="vae",
        help="vae, or ae: the deterministic autoencoder baseline with the same networks",
    )
    train.add_argument("--format", choices=["png", "pdf"], default="png", help="figure format")

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
    subcommands = [train, ev, *_add_application_parsers(sub)]
    for command in subcommands:
        # SUPPRESS keeps a top-level --debug from being reset by the subcommand's default.
        command.add_argument(
            "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks"
        )
    return parser


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where image data sets are looked for and downloaded "
        "(default $PYRO_VAE_DATA_DIR or ~/.cache/pyro-vae/data; /usr/share/datasets is also "
        "searched)",
    )
    parser.add_argument(
        "--binarize",
        choices=["dynamic", "static", "none"],
        default=None,
        help="dynamic: fresh draw each batch; static: one seeded draw; none: gray values "
        "(default: what the likelihood needs)",
    )


FIGURE_KINDS = (
    "elbo",
    "samples",
    "reconstructions",
    "latent",
    "manifold",
    "interpolation",
    "attribute",
    "compare",
)


def _add_application_parsers(sub) -> list[argparse.ArgumentParser]:
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
    sample.add_argument("--format", choices=["png", "pdf"], default="png")
    sample.add_argument("--seed", type=int, default=0)

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
    plot.add_argument("--kind", choices=FIGURE_KINDS, required=True)
    plot.add_argument("--output", type=Path, default=None, help="default RUN_DIR/KIND.FORMAT")
    plot.add_argument("--format", choices=["png", "pdf"], default="png")
    plot.add_argument("--seed", type=int, default=0)
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
    return [sample, plot]


def _add_part_arguments(train: argparse.ArgumentParser) -> None:
    """--prior, --posterior, --arch, the parts' options and --config FILE."""
    from pyro_vae.models.config import ARCHS
    from pyro_vae.parts.posteriors import POSTERIORS
    from pyro_vae.parts.priors import PRIORS

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
        "--iaf-hidden", type=_hidden, default=(64,), help="IAF MADE hidden sizes, e.g. 320,320"
    )
    parts.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML or JSON file of the same options (keys like latent_dim, prior); "
        "flags given on the command line win",
    )


_PART_KEYS = (
    "prior", "posterior", "arch", "n_components", "num_pseudo_inputs", "flow_layers", "rank",
    "iaf_steps", "iaf_hidden",
)  # fmt: skip


def _apply_config_file(args: argparse.Namespace) -> dict:
    """Fill args from --config where the flag was left at its default; return model extras.

    Keys that are ModelConfig fields without a flag (e.g. iaf_context, channels) are returned.
    """
    import dataclasses

    from pyro_vae.errors import ConfigError
    from pyro_vae.models.config import ModelConfig, load_config_file

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
    from pyro_vae.models.config import ModelConfig
    from pyro_vae.runs import RunDir, load_run_data, train_run
    from pyro_vae.train.loop import TrainConfig

    if args.resume is not None:
        return _cmd_resume(args)
    overwrite = args.overwrite
    model_extras = _apply_config_file(args)
    if args.overwrite != overwrite:
        raise _usage(
            "a config file cannot set overwrite (it deletes a run directory); pass --overwrite "
            "on the command line"
        )
    data = load_run_data(
        {"dataset": args.dataset, "data_dir": args.data_dir, "binarize": args.binarize}
    )
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
        clip_grad=args.clip_grad,
        beta=args.beta,
        warmup=args.warmup,
        warmup_epochs=args.warmup_epochs,
        free_bits=args.free_bits,
    )
    if args.num_samples < 1:
        raise _usage(f"--num-samples must be at least 1, got {args.num_samples}")
    name = args.name or f"{data.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = RunDir.named(args.output_dir, name)
    results = train_run(
        args.dataset,
        model_config,
        train_config,
        run_dir,
        num_samples=args.num_samples,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        data=data,
        kind=args.model,
        data_dir=args.data_dir,
        binarize=args.binarize,
        fmt=args.format,
    )
    print(f"run directory: {run_dir}")
    _print_run_results(results)
    return 0


def _print_run_results(results: dict) -> None:
    print(f"trained {results['epochs']} epochs in {results['train_seconds']:.1f} s")
    if results.get("kind") == "ae":
        print(
            f"test reconstruction NLL: {results['test_reconstruction_nll']:9.3f} +- "
            f"{results['test_reconstruction_nll_stderr']:.3f} nats per data point "
            f"(n={results['num_test_points']})"
        )
    else:
        _print_scores(results)


#: Options ``train --resume`` accepts; every other setting comes from the run's config.json.
RESUME_OPTIONS = {"resume", "epochs", "no_progress", "debug"}


def _cmd_resume(args: argparse.Namespace) -> int:
    from pyro_vae.runs.pipeline import resume_run

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
    _print_run_results(results)
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

    from pyro_vae.runs import check_size, load_run, load_run_data, score, summary

    check_size(args.num_samples, "--num-samples (importance samples per point)")
    if args.batch_size is not None and args.batch_size < 1:
        raise _usage(f"--batch-size must be at least 1, got {args.batch_size}")
    vae, config = load_run(args.run_dir)
    if config.get("kind") == "ae":
        raise _usage(
            f"{str(args.run_dir)!r} is an autoencoder run: it has no likelihood p(x) to score; "
            "its test reconstruction NLL is in results.json"
        )
    data = load_run_data(config)
    pyro.set_rng_seed(args.seed)
    if args.method is not None:
        return _print_inference_report(args, vae, data)
    result = score(vae, data, num_samples=args.num_samples, batch_size=args.batch_size)
    print(f"run directory: {args.run_dir}")
    _print_scores(summary(result))
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from pyro_vae.analysis import figures
    from pyro_vae.runs import check_size, load_run, load_run_data

    check_size(args.num, "-n (samples drawn)")
    model, config = load_run(args.run_dir)
    data = load_run_data(config)
    out = args.output or args.run_dir / f"samples-{args.source}.{args.format}"
    path = figures.figure_samples(model, data, out, source=args.source, n=args.num, seed=args.seed)
    print(f"wrote {path}" if path else "data are not images; nothing drawn")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    import torch

    from pyro_vae.analysis import figures, plots
    from pyro_vae.runs import RunDir, check_size, load_run, load_run_data

    if args.kind == "interpolation":
        check_size(args.steps, "--steps (interpolation steps)")
    model, config = load_run(args.run_dir)
    out = args.output or args.run_dir / f"{args.kind}.{args.format}"
    torch.manual_seed(args.seed)
    if args.kind == "elbo":
        history = RunDir(args.run_dir).read_metrics()
        if config.get("kind") == "ae":
            path = plots.plot_reconstruction_nll(history, out)
        else:
            path = plots.plot_elbo(history, out, title=f"ELBO on {config['dataset']}")
        print(f"wrote {path}")
        return 0
    data = load_run_data(config)
    if args.kind == "samples":
        path = figures.figure_samples(model, data, out, source=args.source, seed=args.seed)
    elif args.kind == "reconstructions":
        path = figures.figure_reconstructions(model, data, out)
    elif args.kind == "latent":
        path = figures.figure_latent(model, data, out)
    elif args.kind == "manifold":
        path = figures.figure_manifold(model, data, out)
    elif args.kind == "interpolation":
        if args.steps < 2:
            raise _usage(f"--steps must be at least 2, got {args.steps}")
        pair = tuple(args.pair) if args.pair else None
        path = figures.figure_interpolation(model, data, out, steps=args.steps, pair=pair)
    elif args.kind == "attribute":
        if args.positive is None or args.negative is None:
            raise _usage("--kind attribute needs --positive LABEL and --negative LABEL")
        path = figures.figure_attribute(
            model, data, out, args.positive, args.negative, strengths=args.strengths
        )
    else:  # compare
        if args.against is None:
            raise _usage("--kind compare needs --against OTHER_RUN_DIR (e.g. an --model ae run)")
        other, other_config = load_run(args.against)
        if other_config["dataset"] != config["dataset"]:
            raise _usage(
                f"runs were trained on different data ({config['dataset']!r} and "
                f"{other_config['dataset']!r}); compare runs on the same data set"
            )
        name = "autoencoder" if config.get("kind") == "ae" else "VAE"
        other_name = "autoencoder" if other_config.get("kind") == "ae" else "VAE"
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


def _print_inference_report(args: argparse.Namespace, vae, data) -> int:
    from pyro_vae.data.binarize import eval_data
    from pyro_vae.infer.report import inference_report

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
    from pyro_vae.errors import ConfigError

    return ConfigError(message)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.given = _given_options(build_parser(), argv)
    commands = {
        "train": _cmd_train,
        "evaluate": _cmd_evaluate,
        "sample": _cmd_sample,
        "plot": _cmd_plot,
    }
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
