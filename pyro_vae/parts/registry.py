"""Registries of parts by name: one per kind (prior, likelihood, posterior, arch).

Registering a class is all it takes for it to be buildable from Python, a config file and
the command line::

    @register_prior("student_t")
    class StudentTPrior(Prior):
        def __init__(self, latent_dim: int, df: float = 3.0): ...

Its options are its constructor's keyword parameters, minus the sizes the builder passes
itself (``Registry.shared``, e.g. ``latent_dim`` and ``event_shape`` for priors); their
annotations type-check every value ([`pyro_vae.parts.options`][]). A class may define
``check_options(cls, options, **shared)`` to refuse combinations its annotations cannot
express (e.g. a rank above ``latent_dim``) before anything is built.

A run's ``config.json`` records each part by name and, for parts registered outside pyro_vae, the
module that registered it; loading a run never imports that module
([`import_plugins`][pyro_vae.parts.registry.import_plugins] is called only for modules the user
names).
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pyro_vae.errors import ConfigError
from pyro_vae.parts.options import Option, coerce, is_json, signature_options


@dataclass(frozen=True)
class Entry:
    """A registered part: its name, factory (usually a class), module and options."""

    name: str
    factory: Callable[..., Any]
    module: str
    options: Mapping[str, Option]

    @property
    def is_plugin(self) -> bool:
        """True when registered outside pyro_vae: a run records the module to import."""
        return not (self.module == "pyro_vae" or self.module.startswith("pyro_vae."))


class Registry(Mapping[str, Callable[..., Any]]):
    """Names -> part factories of one kind; a read-only mapping of the canonical names.

    ``shared`` are the sizes the builder passes itself; a factory takes those of them it
    names in its signature.
    """

    def __init__(self, kind: str, shared: Sequence[str]):
        self.kind = kind
        self.shared = tuple(shared)
        self._entries: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}

    # Mapping interface: canonical names only.
    def __getitem__(self, name: str) -> Callable[..., Any]:
        return self.entry(name).factory

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._aliases

    def register(
        self,
        name: str,
        factory: Callable[..., Any] | None = None,
        *,
        aliases: Sequence[str] = (),
        replace: bool = False,
    ) -> Any:
        """Register ``factory`` as ``name``; used as ``@register(name)`` or ``register(name, cls)``.

        ``aliases`` are older names accepted when reading configs. Registering a taken name raises
        [`ConfigError`][pyro_vae.errors.ConfigError] unless ``replace`` (or the same factory
        registers again, as on a module reload).
        """
        if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise ConfigError(
                f"{self.kind} name {name!r} must be lowercase letters, digits and _ "
                "(like 'student_t'); rename it"
            )
        if factory is None:
            return lambda f: self.register(name, f, aliases=aliases, replace=replace)
        if not callable(factory):
            raise ConfigError(f"{self.kind} {name!r} must be a class or function, got {factory!r}")
        old = self._entries.get(name) or self._entries.get(self._aliases.get(name, ""))
        if old is not None and not replace and _qualname(old.factory) != _qualname(factory):
            raise ConfigError(
                f"{self.kind} {name!r} is already registered by {old.module}; choose another "
                "name or pass replace=True"
            )
        options = signature_options(factory, self.shared)
        self._entries[name] = Entry(name, factory, factory.__module__, options)
        for alias in aliases:
            self._aliases[alias] = name
        return factory

    def unregister(self, name: str) -> None:
        """Remove ``name`` and its aliases (e.g. after a test, or to re-register in a notebook)."""
        name = self.canonical(name)
        del self._entries[name]
        for alias in [a for a, target in self._aliases.items() if target == name]:
            del self._aliases[alias]

    def canonical(self, name: Any, plugin: str | None = None) -> str:
        """The registered name ``name`` stands for (aliases resolve); else
        [`ConfigError`][pyro_vae.errors.ConfigError].

        ``plugin``, the module a run recorded for the part, makes the message say how to
        load it.
        """
        if not isinstance(name, str):
            shown = name.__name__ if inspect.isclass(name) else type(name).__name__
            raise ConfigError(
                f"{self.kind} must be a registered name (string), got {shown}; choose one of "
                f"{sorted(self)} or register your class with @register_{self.kind}(\"name\")"
            )
        if name in self._entries:
            return name
        if name in self._aliases:
            return self._aliases[name]
        if plugin:
            raise ConfigError(
                f"{self.kind} {name!r} comes from module {plugin!r}, which is not imported; "
                f"pass --plugin {plugin} if you trust it (or import it in Python first)"
            )
        raise ConfigError(f"unknown {self.kind} {name!r}; choose one of {sorted(self)}")

    def entry(self, name: str) -> Entry:
        return self._entries[self.canonical(name)]

    def names(self) -> list[str]:
        """Canonical names, then aliases: what a config or the command line may say."""
        return sorted(self._entries) + sorted(self._aliases)

    def check_options(self, name: str, options: Any, **shared: Any) -> dict[str, Any]:
        """Type-checked options of part ``name``, defaults filled in; else
        [`ConfigError`][pyro_vae.errors.ConfigError].

        ``shared`` sizes are handed to the class's ``check_options`` hook, if it has one.
        """
        entry = self.entry(name)
        where = f"{self.kind} {entry.name!r}"
        if options is None:
            options = {}
        if not isinstance(options, Mapping):
            raise ConfigError(
                f"{self.kind}_options must be a table of option names, got {options!r}; "
                f"write it like {{\"{next(iter(entry.options), 'option')}\": value}}"
            )
        unknown = sorted(set(options) - set(entry.options))
        if unknown:
            known = ", ".join(o.describe() for o in entry.options.values()) or "none"
            raise ConfigError(
                f"{where} has no option {unknown[0]!r}; its options are: {known}"
            )
        checked: dict[str, Any] = {}
        for key, option in entry.options.items():
            if key in options:
                checked[key] = coerce(options[key], option.hint, f"{where} option {key}")
            elif option.required:
                raise ConfigError(
                    f"{where} needs option {key!r} ({option.describe()}); set it with "
                    f"--{self.kind}-opt {key}=VALUE or in the config's [{self.kind}] table"
                )
            elif is_json(option.default):
                checked[key] = option.default
            # A default that JSON cannot record (e.g. a tensor) is left to the constructor.
        hook = getattr(entry.factory, "check_options", None)
        if callable(hook):
            sizes = {k: v for k, v in shared.items() if k in self.shared}
            try:
                hook(dict(checked), **_accepted(hook, sizes))
            except ValueError as exc:  # ConfigError passes through as it is
                if isinstance(exc, ConfigError):
                    raise
                raise ConfigError(f"{where}: {_first_line(exc)}; change its options") from exc
        return checked

    def build(self, name: str, options: Mapping[str, Any] | None = None, **shared: Any) -> Any:
        """The part ``name`` built with its (checked) ``options`` and the ``shared`` sizes."""
        entry = self.entry(name)
        checked = self.check_options(name, options, **shared)
        sizes = {k: v for k, v in shared.items() if k in self.shared}
        try:
            return entry.factory(**_accepted(entry.factory, sizes), **checked)
        except (ValueError, TypeError, RuntimeError) as exc:
            raise ConfigError(
                f"{self.kind} {entry.name!r} cannot be built with options {checked}: "
                f"{_first_line(exc)}; change its options"
            ) from exc


def _accepted(func: Callable[..., Any], sizes: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``sizes`` that ``func`` (a class: its constructor) takes by name."""
    target = func.__init__ if inspect.isclass(func) else func
    params = inspect.signature(target).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return dict(sizes)
    return {k: v for k, v in sizes.items() if k in params}


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0]


def _qualname(factory: Callable[..., Any]) -> str:
    return f"{factory.__module__}.{getattr(factory, '__qualname__', repr(factory))}"


#: Priors p(z): built with ``latent_dim`` and, if they take it, ``event_shape``.
PRIORS = Registry("prior", shared=("latent_dim", "event_shape"))
#: Likelihoods p(x | z): sized by nothing (they declare ``num_params``).
LIKELIHOODS = Registry("likelihood", shared=())
#: Posterior families q(z | x): built with ``latent_dim``.
POSTERIORS = Registry("posterior", shared=("latent_dim",))
#: Encoder/decoder pairs (``arch``): built with the data's and latent's sizes and ``hidden``.
ARCHS = Registry("arch", shared=("event_shape", "latent_dim", "hidden"))

#: Every kind of part, by the ModelConfig field that names it.
REGISTRIES: dict[str, Registry] = {
    "prior": PRIORS,
    "likelihood": LIKELIHOODS,
    "posterior": POSTERIORS,
    "arch": ARCHS,
}

register_prior = PRIORS.register
register_likelihood = LIKELIHOODS.register
register_posterior = POSTERIORS.register
register_arch = ARCHS.register

_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def import_plugins(modules: Sequence[str], where: str = "--plugin") -> list[str]:
    """Import the modules the user names (their parts register themselves on import).

    Only ever called for modules the user gave (``--plugin``, a config file's ``plugins``):
    never for a module a run directory names. Returns the module names imported.
    """
    if isinstance(modules, str) or not isinstance(modules, Sequence):
        raise ConfigError(f"{where} must be a list of module names, got {modules!r}")
    imported = []
    for name in modules:
        if not isinstance(name, str) or not _MODULE_NAME.fullmatch(name):
            raise ConfigError(
                f"{where}: {name!r} is not a module name; give an importable dotted name like "
                "my_priors (not a file path)"
            )
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(
                f"{where}: cannot import module {name!r} ({exc}); put it on PYTHONPATH or "
                "install it"
            ) from exc
        except Exception as exc:  # the plugin's own code failed: name it and its error
            reason = (str(exc).strip().splitlines() or [""])[0][:300]
            raise ConfigError(
                f"{where}: module {name!r} failed while importing or registering its parts "
                f"({type(exc).__name__}: {reason}); fix the module or drop it"
            ) from exc
        imported.append(name)
    return imported
