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
    try:
        inspect.signature(info.factory).bind(**kwargs)
    except TypeError as exc:
        raise InputError(f"model {name!r}: {exc}") from None
    return info.factory(**kwargs)
