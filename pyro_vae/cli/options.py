"""Options read from the library's configs and registries: choices, argparse types, dataclass
fields and ``KEY=VALUE`` words typed by a registry entry's options.

A command builds its flags from these, so a new part, model kind, objective or tracker is a
new choice (and its options new words) without a change to any parser.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Collection, Sequence
from typing import Any


def choices(hint_name: str) -> Sequence[str] | None:
    """The names an option takes, from the registry or table that holds them (or ``None``)."""
    from pyro_vae.data.binarize import BINARIZE_MODES
    from pyro_vae.infer.objectives import OBJECTIVES, WARMUPS
    from pyro_vae.parts.registry import REGISTRIES
    from pyro_vae.runs.tracking import TRACKERS
    from pyro_vae.train.parallel import PRECISIONS
    from pyro_vae.train.schedules import LR_SCHEDULES

    if hint_name in REGISTRIES:
        return REGISTRIES[hint_name].names()
    return {
        "objective": sorted(OBJECTIVES),
        "warmup": list(WARMUPS),
        "binarize": list(BINARIZE_MODES),
        "precision": list(PRECISIONS),
        "lr_schedule": sorted(LR_SCHEDULES),
        "track": sorted(TRACKERS),
    }.get(hint_name)


def plain_type(hint: Any) -> Callable[[str], Any]:
    """The argparse ``type`` for a field annotation: int, float or str (``X | None`` -> X)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    base = args[0]
    while typing.get_origin(base) is typing.Annotated:
        base = typing.get_args(base)[0]
    return base if base in (int, float, str) else str


def config_fields(cls: type, skip: Collection[str] = ()) -> dict[str, tuple[Any, Any]]:
    """A config dataclass's fields but ``skip``: name -> (annotation, default)."""
    hints = typing.get_type_hints(cls)
    return {
        f.name: (hints[f.name], _field_default(f))
        for f in dataclasses.fields(cls)
        if f.name not in skip
    }


def _field_default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def option_words(flag: str, owner: str, entry, words: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` words of ``flag`` parsed by the option types of a registry ``entry``
    (a part or a model kind, named ``owner`` in messages)."""
    from pyro_vae.errors import ConfigError
    from pyro_vae.parts.options import parse_text

    options: dict[str, Any] = {}
    for word in words:
        key, sep, text = word.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"{flag} takes KEY=VALUE, got {word!r}")
        if key not in entry.options:
            known = ", ".join(o.describe() for o in entry.options.values()) or "none"
            raise ConfigError(f"{owner} has no option {key!r}; its options are: {known}")
        options[key] = parse_text(text, entry.options[key].hint)
    return options
