"""The extractor registry: ``create_extractor(name, **options)`` and what is available offline."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from .base import Extractor


@dataclass(frozen=True)
class ExtractorInfo:
    """One registered extractor: how to build it and whether its weights are here already."""

    name: str
    description: str
    factory: Callable[..., Extractor]
    weights_status: Callable[[], tuple[bool, str]]


_REGISTRY: dict[str, ExtractorInfo] = {}


def register(
    name: str, description: str, weights_status: Callable[[], tuple[bool, str]]
) -> Callable[[Callable[..., Extractor]], Callable[..., Extractor]]:
    """Class-free registration decorator for an extractor factory."""

    def decorate(factory: Callable[..., Extractor]) -> Callable[..., Extractor]:
        _REGISTRY[name] = ExtractorInfo(name, description, factory, weights_status)
        return factory

    return decorate


def list_extractors() -> list[ExtractorInfo]:
    """Every registered extractor, in registration order."""
    return list(_REGISTRY.values())


def create_extractor(name: str, **options: object) -> Extractor:
    """Build the extractor called ``name``; options are the factory's keyword arguments
    (for example ``weights=PATH``); ``None`` values mean the factory's default."""
    if Path(name).suffix == ".pt":  # a checkpoint written by `lookalike train` (missing: a clear error)
        from ..training.checkpoint import load_checkpoint_extractor

        return load_checkpoint_extractor(name, **{k: v for k, v in options.items() if v is not None})
    info = _REGISTRY.get(name)
    if info is None:
        known = ", ".join(sorted(_REGISTRY))
        raise InputError(f"unknown model {name!r}; known models: {known}")
    kwargs = {k: v for k, v in options.items() if v is not None}
    signature = inspect.signature(info.factory)
    try:
        signature.bind(**kwargs)
    except TypeError as exc:
        raise InputError(f"model {name!r}: {exc}") from None
    kwargs = {k: _coerce(name, k, v, signature.parameters[k].default) for k, v in kwargs.items()}
    try:
        return info.factory(**kwargs)
    except (TypeError, ValueError) as exc:  # an option of the right type but an impossible value
        raise InputError(f"model {name!r}: bad option ({exc})") from None


def _coerce(model: str, key: str, value: object, default: object) -> object:
    """``value`` as the type of the factory's default (options often arrive as text from the
    command line), or a one-line error naming the option."""
    if default is inspect.Parameter.empty or default is None or isinstance(value, type(default)):
        return value
    kind = type(default)
    try:
        if kind is bool:
            text = str(value).strip().lower()
            if text not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text in ("true", "1", "yes")
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        if kind in (int, float):
            return kind(value)
    except (TypeError, ValueError):
        names = {bool: "true or false", int: "a whole number", float: "a number"}
        raise InputError(
            f"model {model!r}: option {key} must be {names[kind]}, got {value!r} (-O {key}=VALUE)"
        ) from None
    return value
