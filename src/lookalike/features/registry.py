"""The extractor registry: ``create_extractor(name, **options)`` and what is available offline.

Besides names (``resnet50``), a *family* answers every name under its prefix: ``timm:<model>``
builds any timm model. A family's factory takes the rest of the name first, then the options.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..registry import Registry, coerce_options
from .base import Extractor

EXTRACTORS: Registry[Extractor] = Registry("model")
FAMILIES: Registry[Extractor] = Registry("model family")


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


def register_family(
    prefix: str,
    description: str,
    factory: Callable[..., Extractor],
    weights_status: Callable[[], tuple[bool, str]] = lambda: (True, "no weights"),
) -> None:
    """Make every name ``prefix:<rest>`` an extractor: ``factory(rest, **options)`` builds it."""
    FAMILIES.register(prefix, factory, description=description, weights_status=weights_status)


def split_family(name: object) -> tuple[str, str] | None:
    """(prefix, rest) when ``name`` is ``prefix:rest`` for a registered family, else None."""
    if not isinstance(name, str) or ":" not in name:
        return None
    prefix, _, rest = name.partition(":")
    return (prefix, rest) if prefix in FAMILIES else None


def is_extractor_name(name: object) -> bool:
    """True when ``create_extractor`` builds ``name``: a registered name, a family's
    ``prefix:<rest>``, or a training checkpoint (``.pt``)."""
    if not isinstance(name, str):
        return False
    return name in EXTRACTORS or split_family(name) is not None or Path(name).suffix == ".pt"


def list_extractors() -> list[ExtractorInfo]:
    """Every registered extractor, in registration order."""
    return [
        ExtractorInfo(e.name, e.description, e.factory, e.info.get("weights_status", lambda: (True, "")))
        for e in EXTRACTORS
    ]


def create_extractor(name: str, **options: object) -> Extractor:
    """Build the extractor called ``name``; options are the factory's keyword arguments
    (for example ``weights=PATH``, text from ``-O`` is coerced); ``None`` means the default.
    A path ending in ``.pt`` is a checkpoint written by ``lookalike train``; ``prefix:<rest>`` is a
    family's model (``timm:resnet50``)."""
    if Path(name).suffix == ".pt":  # a checkpoint written by `lookalike train` (missing: a clear error)
        from .checkpoint import load_checkpoint_extractor

        return load_checkpoint_extractor(name, **{k: v for k, v in options.items() if v is not None})
    family = split_family(name)
    if family is not None:
        prefix, rest = family
        if not rest:
            raise InputError(f"model {name!r}: name the {prefix} model after the colon, e.g. {prefix}:resnet50")
        factory = FAMILIES.get(prefix).factory
        kwargs = coerce_options(f"model {name!r}", factory, options)
        try:
            return factory(rest, **kwargs)
        except (TypeError, ValueError) as exc:
            raise InputError(f"model {name!r}: bad option ({exc})") from None
    return EXTRACTORS.create(name, **options)
