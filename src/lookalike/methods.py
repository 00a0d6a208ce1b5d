"""What ``-m`` names: a feature extractor, a local-feature method or a training checkpoint.

Every command that takes ``-m`` resolves it here, so they all accept the same names and
``lookalike models`` lists exactly those. Local-feature methods (SURF, SIFT, ORB, AKAZE) match
images directly instead of producing one vector per image; the OpenCV-based registry behind them
is imported only when such a name is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import InputError
from .features import Extractor, create_extractor
from .features.registry import EXTRACTORS, FAMILIES, is_extractor_name, list_extractors
from .registry import Registry

# options the CLI passes to every model (None when unset) that a local method has no use for
_GLOBAL_ONLY = ("weights", "pool", "multiscale")


@dataclass(frozen=True)
class LocalMethod:
    """A local-feature method chosen by ``-m``: keypoints, descriptor matching and RANSAC
    verification over the images (see :func:`lookalike.local.local_search`)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodInfo:
    """One row of ``lookalike models``."""

    name: str
    kind: str  # "global", "local" or "checkpoint"
    offline: bool
    weights: str
    description: str


def _detectors() -> Registry:
    """The local-feature registry, imported late (it brings OpenCV and numba)."""
    from .local.detectors import DETECTORS

    return DETECTORS


def is_local_method(name: object) -> bool:
    """True when ``name`` is a registered local-feature method (and not an extractor)."""
    return isinstance(name, str) and not is_extractor_name(name) and name in _detectors()


def resolve_method(
    name: str | Extractor | LocalMethod, options: dict[str, Any] | None = None
) -> Extractor | LocalMethod:
    """The extractor or local method ``name`` stands for, built with ``options`` (text from
    ``-O`` is coerced); an unknown name lists every name ``-m`` accepts."""
    if isinstance(name, Extractor | LocalMethod):
        return name
    options = dict(options or {})
    if is_extractor_name(name):
        return create_extractor(name, **options)
    if is_local_method(name):
        given = {k: v for k, v in options.items() if v is not None}
        stray = sorted(k for k in _GLOBAL_ONLY if k in given)
        if stray:
            raise InputError(f"{name} is a local-feature method: {', '.join(stray)} apply to CNN models only")
        _detectors().create(name, **given)  # checks the options now, before any image is read
        return LocalMethod(name, given)
    families = [f"{prefix}:<model>" for prefix in FAMILIES.names()]
    known = ", ".join([*EXTRACTORS.names(), *families, *_detectors().names()])
    raise InputError(f"unknown model {name!r}; choose one of {known}, or a checkpoint RUN_DIR/best.pt")


def _cached_timm_rows() -> list[MethodInfo]:
    """A row for each timm model whose pretrained weights are in the Hugging Face cache."""
    from .features.timm_models import cached_timm_models

    return [
        MethodInfo(f"timm:{name}", "global", True, "cached in the Hugging Face cache", f"timm {name}")
        for name in cached_timm_models()
    ]


def method_label(method: str | Extractor | LocalMethod) -> str:
    """The name a method is shown by."""
    return method.name if isinstance(method, Extractor | LocalMethod) else str(method)


def list_methods() -> list[MethodInfo]:
    """Every name ``-m`` accepts: extractors, local-feature methods, and the checkpoint form."""
    rows = []
    for info in list_extractors():
        ok, note = info.weights_status()
        rows.append(MethodInfo(info.name, "global", ok, note, info.description))
    for family in FAMILIES:
        ok, note = family.info["weights_status"]()
        rows.append(MethodInfo(f"{family.name}:<model>", "global", ok, note, family.description))
    rows += _cached_timm_rows()
    for entry in _detectors():
        doc = entry.description or f"{entry.name} keypoints"
        rows.append(MethodInfo(entry.name, "local", True, "no weights", f"{doc}; matched and RANSAC-verified"))
    rows.append(
        MethodInfo(
            "RUN_DIR/best.pt", "checkpoint", True, "the file itself", "a model trained by `lookalike train`"
        )
    )
    return rows
