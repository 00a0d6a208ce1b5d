"""The extractor registry: ``create_extractor(name, **options)`` and what is available offline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..registry import Registry
from .base import Extractor

EXTRACTORS: Registry[Extractor] = Registry("model")


@dataclass(frozen=True)
class ExtractorInfo:
    """One registered extractor: how to build it and whether its weights are here already."""

    name: str
    description: str
    factory: Callable[..., Extractor]
    weights_status: Callable[[], tuple[bool, str]]


def register(
    name: str, description: str, weights_status: Callable[[], tuple[bool, str]] = lambda: (True, "no weights")
) -> Callable[[Callable[..., Extractor]], Callable[..., Extractor]]:
    """Registration decorator for an extractor factory (a function returning an Extractor)."""
    return EXTRACTORS.register(name, description=description, weights_status=weights_status)


def list_extractors() -> list[ExtractorInfo]:
    """Every registered extractor, in registration order."""
    return [
        ExtractorInfo(e.name, e.description, e.factory, e.info.get("weights_status", lambda: (True, "")))
        for e in EXTRACTORS
    ]


def create_extractor(name: str, **options: object) -> Extractor:
    """Build the extractor called ``name``; options are the factory's keyword arguments
    (for example ``weights=PATH``, text from ``-O`` is coerced); ``None`` means the default.
    A path ending in ``.pt`` is a checkpoint written by ``lookalike train``."""
    if Path(name).suffix == ".pt":  # a checkpoint written by `lookalike train` (missing: a clear error)
        from .checkpoint import load_checkpoint_extractor

        return load_checkpoint_extractor(name, **{k: v for k, v in options.items() if v is not None})
    return EXTRACTORS.create(name, **options)
