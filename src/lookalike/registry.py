"""One name-to-component registry for every kind lookalike lets users choose by name.

Extractors (``-m``), local-feature detectors, training methods, index backends and re-rankers are
each a :class:`Registry`: ``register`` a factory (a function or a class) under a name, ``create``
it from options that may arrive as text from the command line. Options are checked against the
factory's signature and coerced to its annotated types in one place, with one error format, so
a new component is one file plus one registration, from inside the package or outside it.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .errors import InputError

T = TypeVar("T")
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_NAMES = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered component: its name, how to build it, a line for listings, and anything
    else its kind needs (``info``, e.g. whether an extractor's weights are available offline)."""

    name: str
    factory: Callable[..., T]
    description: str = ""
    info: dict[str, Any] = field(default_factory=dict)

    def options(self) -> dict[str, tuple[Any, Any]]:
        """Option name -> (type hint, default) of the factory (its keyword parameters)."""
        return _options(self.factory)


class Registry(Generic[T]):
    """Components of one ``kind`` (the word used in messages, e.g. "model") by name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(
        self, name: str, factory: Callable[..., T] | None = None, *, description: str = "", **info: Any
    ) -> Any:
        """Register ``factory`` under ``name``; without ``factory``, a decorator that does so.
        Registering a name again replaces the entry (a plug-in may override a built-in)."""

        def decorate(target: Callable[..., T]) -> Callable[..., T]:
            doc = description or (inspect.getdoc(target) or "").split("\n")[0]
            self._entries[name] = Entry(name, target, doc, dict(info))
            return target

        return decorate if factory is None else decorate(factory)

    def copy(self) -> Registry[T]:
        """A registry of the same kind with the same entries (to register into privately)."""
        twin: Registry[T] = Registry(self.kind)
        twin._entries = dict(self._entries)
        return twin

    def unregister(self, name: str) -> None:
        """Forget ``name`` (for tests and plug-ins that clean up after themselves)."""
        self._entries.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(list(self._entries.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        """Registered names, in registration order."""
        return tuple(self._entries)

    def get(self, name: str) -> Entry[T]:
        """The entry called ``name``, or the one error every registry gives for an unknown name."""
        entry = self._entries.get(name)
        if entry is None:
            raise InputError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self._entries)}")
        return entry

    def create(self, name: str, /, *args: Any, **options: Any) -> T:
        """Build ``name`` from ``options`` (None means the default) after any positional inputs
        ``args`` the kind passes; each option is coerced to the type the factory declares, and a
        wrong name, type or value is one InputError."""
        entry = self.get(name)
        kwargs = coerce_options(f"{self.kind} {name!r}", entry.factory, options)
        try:
            return entry.factory(*args, **kwargs)
        except InputError:
            raise
        except (TypeError, ValueError) as exc:  # right types, impossible values
            raise InputError(f"{self.kind} {name!r}: bad option ({exc})") from None


def coerce_options(owner: str, factory: Callable[..., Any], options: dict[str, Any]) -> dict[str, Any]:
    """``options`` without None values, checked against ``factory``'s keyword parameters and
    coerced to their annotated types (or their defaults' types); ``owner`` names it in errors."""
    known = _options(factory)
    accepts_any = any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in _signature(factory).parameters.values()
    )
    given = {k.replace("-", "_"): v for k, v in options.items() if v is not None}
    unknown = sorted(k for k in given if k not in known)
    if unknown and not accepts_any:
        raise InputError(
            f"{owner}: unknown option(s) {', '.join(unknown)}; options are {', '.join(sorted(known)) or 'none'}"
        )
    return {k: coerce(owner, k, v, *known.get(k, (Any, None))) for k, v in given.items()}


def coerce(owner: str, key: str, value: Any, hint: Any, default: Any = None) -> Any:
    """``value`` as type ``hint`` (bool, int, float, str, or one of them or None; else the type
    of ``default``), accepting the text forms a command line gives."""
    kind = _plain_type(hint)
    if kind is None and default is not None and type(default) in _NAMES:
        kind = type(default)
    if kind is None or value is None:
        return value
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text not in _TRUE | _FALSE:
                raise ValueError(text)
            return text in _TRUE
        if kind is int:
            if isinstance(value, bool):
                raise ValueError(value)
            if isinstance(value, str):
                try:
                    return int(value.strip())  # exact, however large
                except ValueError:
                    value = float(value)  # "3.0" is 3; "3.5" is refused below
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError(value)
            number = float(value)
            if not math.isfinite(number):
                raise ValueError(value)
            return number
        return str(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError(f"{owner}: option {key} must be {_NAMES[kind]}, got {value!r}") from None


def _plain_type(hint: Any) -> type | None:
    """bool/int/float/str from a hint such as ``int``, ``int | None`` or ``Optional[float]``."""
    if hint in _NAMES:
        return hint
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and args[0] in _NAMES:
            return args[0]
    return None


def _signature(factory: Callable[..., Any]) -> inspect.Signature:
    return inspect.signature(factory)


def _options(factory: Callable[..., Any]) -> dict[str, tuple[Any, Any]]:
    """Keyword parameters of a function or dataclass: name -> (resolved type hint, default)."""
    is_class = isinstance(factory, type)
    target = factory if (not is_class or dataclasses.is_dataclass(factory)) else factory.__init__
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: no coercion, names still checked
        hints = {}
    if isinstance(factory, type) and dataclasses.is_dataclass(factory):
        return {
            f.name: (hints.get(f.name, Any), f.default if f.default is not dataclasses.MISSING else None)
            for f in dataclasses.fields(factory)
            if f.init
        }
    out = {}
    for name, p in _signature(factory).parameters.items():
        if p.kind in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL):
            continue
        default = None if p.default is inspect.Parameter.empty else p.default
        out[name] = (hints.get(name, Any), default)
    return out
