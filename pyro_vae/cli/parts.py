"""``pyro-vae parts``: every registered model kind and part by name, with its options."""

from __future__ import annotations

import argparse


def add_parser(sub, track: bool = False) -> argparse.ArgumentParser:
    """The ``parts`` parser among ``sub``'s commands (``track`` changes nothing here)."""
    return sub.add_parser(
        "parts",
        help="list the registered parts and their options",
        description="Every prior, likelihood, posterior and arch by name, with its options "
        "(set them with --KIND-opt KEY=VALUE or a [KIND] table in a config file).",
    )


def run(args: argparse.Namespace) -> int:
    """Print the model kinds, then each part registry, with their options and origins."""
    from pyro_vae.models.kinds import MODELS
    from pyro_vae.parts.registry import REGISTRIES

    print("models (--model NAME --model-opt KEY=VALUE):")
    for name in MODELS:
        entry = MODELS.entry(name)
        options = ", ".join(o.describe() for o in entry.options.values()) or "no options"
        origin = f"  [{entry.module}]" if entry.is_plugin else ""
        print(f"  {name:24s} {options}{origin}")
    for kind, registry in REGISTRIES.items():
        print(f"{kind}s (--{kind} NAME --{kind}-opt KEY=VALUE):")
        for name in registry:
            entry = registry.entry(name)
            options = ", ".join(o.describe() for o in entry.options.values()) or "no options"
            origin = f"  [{entry.module}]" if entry.is_plugin else ""
            print(f"  {name:24s} {options}{origin}")
    return 0
