"""``pyro-vae train``: its flags come from TrainConfig, ModelConfig, the part and model-kind
registries and the trackers, so a new one of these is a new flag or choice here unasked.

``train --resume RUN_DIR`` continues a run instead (see [`resume`][pyro_vae.cli.resume]).
"""

from __future__ import annotations

import argparse
import time
import typing
from pathlib import Path
from typing import Any

from pyro_vae.cli import resume
from pyro_vae.cli.arguments import DEVICE_HELP, Extend, hidden_sizes
from pyro_vae.cli.exits import usage
from pyro_vae.cli.options import choices, plain_type
from pyro_vae.cli.printing import print_run_results
from pyro_vae.cli.processes import join_processes
from pyro_vae.cli.train_options import (
    kind_option_flags,
    model_config_fields,
    run_options,
    train_config_fields,
    train_settings,
)

#: Help of the flags generated from config fields (a field not here: its name, spaced).
HELP = {
    "epochs": "passes over the training split",
    "batch_size": "data points per SVI step",
    "lr": "Adam learning rate",
    "lr_schedule": "learning-rate schedule by epoch (iwae: Burda et al.'s 3^i-epoch stages)",
    "adam_eps": "Adam's epsilon",
    "seed": "random seed (same seed, same run)",
    "objective": "training objective",
    "num_particles": "ELBO particles per step",
    "valid_num_samples": "importance samples K of the validation log-likelihood per epoch",
    "clip_grad": "clip the total gradient 2-norm of each step to this value",
    "beta": "KL weight (beta-VAE)",
    "warmup": "KL warm-up",
    "warmup_epochs": "warm-up length (cycle length if cyclical)",
    "free_bits": "KL floor per latent dimension, nats",
    "latent_dim": "dimension of z",
    "hidden": "encoder hidden sizes, e.g. 256,128 (decoder mirrors)",
    "prior": "p(z)",
    "likelihood": "p(x | z)",
    "posterior": "q(z | x)",
    "arch": "encoder/decoder nets",
    "fused": "compute the ELBO straight from the library's own parts (proven equal to "
    "Pyro's); --no-fused keeps Pyro's Trace_ELBO path",
    "precision": "32, or autocast the training steps to bf16/fp16 (scores stay float32)",
    "track": "log the run to these experiment trackers (several allowed; each needs its extra: "
    "pip install 'pyro-vae[tensorboard]')",
    "track_samples_every": "epochs between two grids of prior samples in TensorBoard (0: none)",
    "mlflow_uri": "MLflow tracking URI, e.g. sqlite:///runs/mlflow.db or http://host:5000 "
    "(default: mlruns/mlflow.db beside the run directory)",
}


def add_parser(sub, track: bool = False) -> argparse.ArgumentParser:
    """The ``train`` parser among ``sub``'s commands.

    With ``track``, no flag has a default: parsing then yields only the flags written on the
    command line (how config files and --resume know what was given).
    """
    train = sub.add_parser(
        "train",
        help="train a VAE and write a run directory",
        description="Train a VAE by SVI and write runs/<name>/ with checkpoint, metrics, "
        "figures and the test log-likelihood (importance sampling).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=argparse.SUPPRESS if track else None,
    )
    _add_arguments(train, track)
    return train


def _add_arguments(train: argparse.ArgumentParser, track: bool) -> None:
    """Every ``train`` flag, generated from the library's configs and registries.

    With ``track``, no defaults are set, so the parsed namespace holds only the flags given.
    """
    from pyro_vae.models.config import LEGACY_OPTIONS, PART_KINDS
    from pyro_vae.models.kinds import MODELS
    from pyro_vae.parts.registry import REGISTRIES
    from pyro_vae.runs.pipeline import FIGURE_FORMATS

    defaults: dict[str, Any] = {}
    run_defaults = run_options()
    data = train.add_argument_group("data")
    data.add_argument(
        "--dataset",
        help="digits, mnist, fashion-mnist, kmnist, cifar10, a .npy/.npz path or an image folder",
    )
    _add_data_arguments(data)
    training = train.add_argument_group("training (TrainConfig)")
    for dest, (hint, default) in train_config_fields().items():
        flag, helptext = "--" + dest.replace("_", "-"), HELP.get(dest, dest.replace("_", " "))
        if hint is bool:
            training.add_argument(flag, action=argparse.BooleanOptionalAction, help=helptext)
        elif typing.get_origin(hint) is tuple:  # several values: --track a b, --track a --track b
            training.add_argument(
                flag, nargs="+", action=Extend, choices=choices(dest), help=helptext
            )
        else:
            training.add_argument(flag, type=plain_type(hint), choices=choices(dest), help=helptext)
        defaults[dest] = default
    model = train.add_argument_group("model (ModelConfig)")
    for dest, (hint, default) in model_config_fields().items():
        names = choices(dest)
        model.add_argument(
            "--" + dest.replace("_", "-"),
            type=hidden_sizes if dest == "hidden" else plain_type(hint),
            choices=names,
            metavar="NAME" if names else None,
            help=f"{HELP.get(dest)}: {', '.join(sorted(REGISTRIES[dest]))}"
            if names
            else HELP.get(dest),
        )
        defaults[dest] = default
    for kind in PART_KINDS:
        model.add_argument(
            f"--{kind}-opt",
            action="append",
            metavar="KEY=VALUE",
            help=f"an option of the {kind} (repeat for more); `pyro-vae parts` lists them",
        )
    for key, (kind, applies_to, option) in LEGACY_OPTIONS.items():
        model.add_argument(
            "--" + key.replace("_", "-"),
            metavar="VALUE",
            help=f"same as --{kind}-opt {option}=VALUE (for {kind} {'/'.join(applies_to)})",
        )
    model.add_argument(
        "--model",
        choices=MODELS.names(),
        metavar="NAME",
        help=f"model kind: {', '.join(sorted(MODELS))} (`pyro-vae parts` lists their options)",
    )
    model.add_argument(
        "--model-opt",
        action="append",
        metavar="KEY=VALUE",
        help="an option of the model kind (repeat for more); `pyro-vae parts` lists them",
    )
    for dest, owners in kind_option_flags().items():
        model.add_argument(
            "--" + dest.replace("_", "-"),
            metavar="VALUE",
            help=f"same as --model-opt {dest}=VALUE (model {'/'.join(owners)})",
        )
    hardware = train.add_argument_group("devices and data loading")
    hardware.add_argument("--device", help=DEVICE_HELP)
    hardware.add_argument(
        "--num-workers", type=int, help="reader processes for a streamed training split"
    )
    hardware.add_argument(
        "--stream",
        action="store_true",
        help="read the training split from disk batch by batch (a .npy file, a folder of .npy "
        "shards or of images) instead of loading it whole",
    )
    out = train.add_argument_group("run directory")
    out.add_argument("--num-samples", type=int, help="importance samples K of the test score")
    out.add_argument("--output-dir", type=Path, help="parent of the run directory")
    out.add_argument("--name", help="run name (one path component); <dataset>-<time> if omitted")
    out.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    out.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    out.add_argument("--format", choices=list(FIGURE_FORMATS), help="figure format")
    out.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue RUN_DIR from its last completed epoch with its own config.json "
        "(--epochs may extend it)",
    )
    out.add_argument(
        "--config",
        type=Path,
        help="TOML or JSON file of these options (keys like latent_dim, epochs, a [prior] "
        "table with name and options, plugins = [modules]); flags given here win",
    )
    defaults.update({dest: default for dest, (_, default) in run_defaults.items()})
    defaults.update({"overwrite": False, "resume": None, "config": None})
    if not track:
        train.set_defaults(**defaults)


def _add_data_arguments(parser) -> None:
    """Where the data are read from and how they are binarized."""
    parser.add_argument(
        "--data-dir",
        type=Path,
        help="where image data sets are looked for and downloaded "
        "(default $PYRO_VAE_DATA_DIR or ~/.cache/pyro-vae/data; /usr/share/datasets is also "
        "searched)",
    )
    parser.add_argument(
        "--binarize",
        choices=choices("binarize"),
        help="dynamic: fresh draw each batch; static: one seeded draw; none: gray values "
        "(default: what the likelihood needs)",
    )


def run(args: argparse.Namespace) -> int:
    """Train a run directory from the settings (or resume one, with ``--resume``)."""
    from pyro_vae.models.config import PART_KINDS, ModelConfig
    from pyro_vae.runs import RunDir, load_run_data, train_run
    from pyro_vae.train.loop import TrainConfig

    if args.resume is not None:
        return resume.run(args)
    s = train_settings(args, args.given)
    data_dir = Path(s["data_dir"]) if s["data_dir"] is not None else None
    group = join_processes(s["device"])
    data = load_run_data(
        {
            "dataset": s["dataset"],
            "data_dir": data_dir,
            "binarize": s["binarize"],
            "stream": s["stream"],
        }
    )
    model_keys = [*model_config_fields(), *(f"{kind}_options" for kind in PART_KINDS)]
    model_config = ModelConfig(
        event_shape=data.event_shape,
        kind=s["model"],
        kind_options=s["model_options"],
        **{key: s[key] for key in model_keys},
    )
    train_config = TrainConfig(**{key: s[key] for key in train_config_fields()})
    if s["num_samples"] < 1:
        raise usage(f"--num-samples must be at least 1, got {s['num_samples']}")
    # every process of a torchrun job writes to (rank 0 to) the run rank 0 named
    name = group.broadcast_text(s["name"] or f"{data.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    run_dir = RunDir.named(s["output_dir"], name)
    results = train_run(
        s["dataset"],
        model_config,
        train_config,
        run_dir,
        num_samples=s["num_samples"],
        overwrite=args.overwrite,
        progress=not s["no_progress"],
        data=data,
        data_dir=data_dir,
        binarize=s["binarize"],
        fmt=s["format"],
        device=s["device"],
        num_workers=s["num_workers"],
        stream=s["stream"],
    )
    if not group.is_main:
        return 0
    print(f"run directory: {run_dir}")
    print_run_results(results)
    return 0
