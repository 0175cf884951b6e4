"""``pyro-vae train --resume RUN_DIR``: continue a run from its last completed epoch.

Every setting comes from the run's own config.json; only the options in ``RESUME_OPTIONS``
may be given beside it.
"""

from __future__ import annotations

import argparse

from pyro_vae.cli.exits import usage
from pyro_vae.cli.printing import print_run_results
from pyro_vae.cli.processes import join_processes

#: Options ``train --resume`` accepts; every other setting comes from the run's config.json.
RESUME_OPTIONS = {
    "resume", "epochs", "no_progress", "debug", "plugin", "device", "num_workers", "threads",
}  # fmt: skip


def run(args: argparse.Namespace) -> int:
    """Resume ``args.resume``; any train flag outside the resume options is refused."""
    from pyro_vae.runs.pipeline import resume_run

    conflicting = sorted(set(args.given) - RESUME_OPTIONS)
    if conflicting:
        flags = ", ".join("--" + name.replace("_", "-") for name in conflicting)
        raise usage(
            f"{flags} cannot be combined with --resume: the run's config.json fixes every "
            "setting (only --epochs, --no-progress, --plugin, --device, --num-workers and "
            "--threads are allowed); drop them"
        )
    epochs = args.epochs if "epochs" in args.given else None
    device = args.device if "device" in args.given else "auto"
    group = join_processes(device)
    results = resume_run(
        args.resume,
        epochs=epochs,
        progress=not args.no_progress,
        device=device,
        num_workers=args.num_workers if "num_workers" in args.given else 0,
    )
    if not group.is_main:
        return 0
    print(f"run directory: {args.resume} (resumed)")
    print_run_results(results)
    return 0
