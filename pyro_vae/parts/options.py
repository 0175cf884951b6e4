"""Typed options of a part: read from a constructor's signature, checked value by value.

A part's options are its constructor's keyword parameters. Their annotations say what a
value may be (``int``, ``float``, ``bool``, ``str``, ``tuple[int, ...]``, unions, ``None``);
``Annotated[int, AtLeast(1)]`` adds a range. Values from Python, JSON or TOML are checked
strictly (``"256"`` is not an int); text from the command line is parsed first
([`parse_text`][pyro_vae.parts.options.parse_text]).
"""

from __future__ import annotations

import inspect
import json
import math
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pyro_vae.errors import ConfigError

#: Marks an option without a default: the caller must give it.
REQUIRED = inspect.Parameter.empty


@dataclass(frozen=True)
class AtLeast:
    """Range of a number: ``value >= low`` (``Annotated[int, AtLeast(1)]``)."""

    low: float

    def check(self, value: Any, where: str) -> None:
        items = value if isinstance(value, tuple) else (value,)
        if any(v < self.low for v in items):
            raise ConfigError(f"{where} must be at least {self.low:g}, got {_show(value)}")


@dataclass(frozen=True)
class Above:
    """Range of a number: ``value > low`` (``Annotated[float, Above(0)]``)."""

    low: float

    def check(self, value: Any, where: str) -> None:
        items = value if isinstance(value, tuple) else (value,)
        if any(not v > self.low for v in items):
            raise ConfigError(f"{where} must be greater than {self.low:g}, got {_show(value)}")


@dataclass(frozen=True)
class NonEmpty:
    """A sequence with at least one item."""

    def check(self, value: Any, where: str) -> None:
        if len(value) == 0:
            raise ConfigError(f"{where} needs at least one value, got []")


PositiveInt = Annotated[int, AtLeast(1)]
NonNegativeInt = Annotated[int, AtLeast(0)]
PositiveFloat = Annotated[float, Above(0)]
#: Layer sizes such as hidden widths or channels: one or more positive integers.
Sizes = Annotated[tuple[int, ...], NonEmpty(), AtLeast(1)]


@dataclass(frozen=True)
class Option:
    """One settable option of a part: its name, type annotation and default."""

    name: str
    hint: Any
    default: Any = REQUIRED

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def describe(self) -> str:
        """``name: type = default`` for help texts and error messages."""
        text = f"{self.name}: {describe_hint(self.hint)}"
        return text if self.required else f"{text} = {_show(self.default)}"


def signature_options(factory: Callable, shared: Sequence[str]) -> dict[str, Option]:
    """The keyword options of ``factory`` (a class or function), minus the ``shared`` sizes.

    Hints come from the annotations (resolved, ``Annotated`` kept); an unannotated
    parameter takes its default's type, or any JSON value without a default.
    """
    target = factory.__init__ if inspect.isclass(factory) else factory
    if getattr(target, "__module__", "").split(".")[0] in ("torch", "pyro", "builtins"):
        return {}  # the framework's own constructor (e.g. PyroModule's name): no part options
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:  # unresolvable annotations: fall back to the defaults' types
        hints = {}
    options: dict[str, Option] = {}
    params = list(inspect.signature(target).parameters.values())
    if inspect.isclass(factory):
        params = params[1:]  # self
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY) or p.name in shared:
            continue
        hint = hints.get(p.name, type(p.default) if p.default is not REQUIRED else Any)
        options[p.name] = Option(p.name, hint, p.default)
    return options


def coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` checked against ``hint``; sequences become tuples. Raises
    [`ConfigError`][pyro_vae.errors.ConfigError].

    ``where`` names the option in messages, e.g. ``"prior 'vamp' option num_pseudo_inputs"``.
    """
    base, checks = _unwrap(hint)
    out = _coerce_base(value, base, where)
    for check in checks:
        check.check(out, where)
    return out


def parse_text(text: str, hint: Any) -> Any:
    """A command-line word as the value ``hint`` expects: ``"64,64"`` for sizes, ``"0.5"``.

    The result still goes through [`coerce`][pyro_vae.parts.options.coerce].
    """
    base, _ = _unwrap(hint)
    if base is str or (_is_union(base) and str in typing.get_args(base)):
        return text
    if _is_union(base):  # e.g. ``Sizes | None``: "null" is None, else the other arm's syntax
        arms = [a for a in typing.get_args(base) if a is not type(None)]
        if text.strip() == "null" or len(arms) != 1:
            return _json_word(text)
        return parse_text(text, arms[0])
    if _sequence_item(base) is not None:
        return [_json_word(t.strip()) for t in text.split(",") if t.strip()]
    return _json_word(text)


def describe_hint(hint: Any) -> str:
    """A short readable type: ``int >= 1``, ``tuple[int, ...]``, ``float | None``."""
    base, checks = _unwrap(hint)
    if _is_union(base):
        text = " | ".join(describe_hint(a) for a in typing.get_args(base))
    elif base is type(None):
        text = "None"
    elif isinstance(base, type) and typing.get_origin(base) is None:
        text = base.__name__
    else:
        text = str(base).replace("typing.", "")
    for check in checks:
        if isinstance(check, AtLeast):
            text += f" >= {check.low:g}"
        elif isinstance(check, Above):
            text += f" > {check.low:g}"
    return text


def _json_word(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _unwrap(hint: Any) -> tuple[Any, list]:
    checks: list = []
    while typing.get_origin(hint) is Annotated:
        args = typing.get_args(hint)
        hint = args[0]
        checks += [m for m in args[1:] if hasattr(m, "check")]
    return hint, checks


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _sequence_item(hint: Any) -> Any | None:
    """The item type of ``tuple[T, ...]``, ``list[T]`` or ``Sequence[T]``; else None."""
    origin = typing.get_origin(hint)
    if origin in (tuple, list, Sequence, typing.Sequence):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return args[0] if args else Any
    return None


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return json.dumps(list(value))
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _coerce_base(value: Any, base: Any, where: str) -> Any:
    if base is Any:
        return _json_value(value, where)
    if _is_union(base):
        for arm in typing.get_args(base):
            try:
                return coerce(value, arm, where)
            except ConfigError:
                continue
        raise ConfigError(
            f"{where} must be {describe_hint(base)}, got {_show(value)}; give a value of that type"
        )
    if base is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where} must be null, got {_show(value)}")
    item = _sequence_item(base)
    if item is not None:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(
                f"{where} must be a list of {describe_hint(item)}, got {_show(value)}; "
                "write it like [64, 64] (64,64 on the command line)"
            )
        return tuple(coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(value):
                return float(value)
            raise ConfigError(f"{where} must be a finite number, got {value}")
    elif base is str:
        if isinstance(value, str):
            return value
    elif isinstance(base, type) and base.__module__.startswith("torch"):
        # A tensor option (e.g. a starting mean) is given as a number or a list of numbers.
        return _numbers(value, where)
    else:
        return _json_value(value, where)
    raise ConfigError(
        f"{where} must be {describe_hint(base)}, got {_show(value)} "
        f"({type(value).__name__}); give a value of that type"
    )


def is_json(value: Any) -> bool:
    """True if ``value`` can be written to config.json as it is (tuples as lists)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _numbers(value: Any, where: str) -> Any:
    if hasattr(value, "tolist") and callable(value.tolist):  # a tensor or array
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return tuple(coerce(v, float, f"{where}[{i}]") for i, v in enumerate(value))
    return coerce(value, float, where)


def _json_value(value: Any, where: str) -> Any:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{where} must be a JSON value (number, string, bool, list), got "
            f"{type(value).__name__}; options are saved in config.json"
        ) from exc
    return tuple(value) if isinstance(value, list) else value
