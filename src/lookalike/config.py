"""One configuration for a search: method, extraction, post-processing and re-ranking, and presets.

A :class:`SearchConfig` is what the CLI's option groups build, what ``lookalike.search`` and
``compare``, ``index build``/``add`` and the server take, so every entry point means the same by
the same option. Presets are data (as hloc's ``confs``): a name, what it is for, and the settings
it changes; options given explicitly override them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .errors import InputError
from .extract import ExtractOptions
from .index.stored_steps import IndexPostprocess
from .pipeline import DEFAULT_MODEL, Refinement
from .registry import coerce

PRESETS: dict[str, dict[str, Any]] = {
    "default": {
        "description": "the default model with average pooling; nothing fitted at search time",
        "measured": "BENCHMARKS.md: the default rows of every table",
    },
    "copies": {
        "description": "copy detection: GeM pooling, multi-scale features, whitening to 128-d learned "
        "from two edited views of each gallery image (up to 1,000 images); queries also described "
        "at each scale, scored by their best view",
        "measured": "BENCHMARKS.md: crop-copies top-1 0.964 vs 0.679 by default (mAP 0.970 vs 0.645), "
        "disc-copies mAP 0.727 vs 0.340 (µAP 0.650 vs 0.098); picked on validation sets (mean mAP "
        "0.876 vs 0.793 with PCA whitening on the gallery, the preset before 2026-12-07), where small "
        "crops gain nothing at rank 1 (0.923 vs 0.929) and composites and galleries holding several "
        "copies of a photo gain most (mAP +0.16 to +0.24). Class retrieval loses (orl mAP 0.863, "
        "fmnist 0.450; the default: 0.897, 0.562), and so does dedup recall at precision 0.99 on "
        "near-duplicate frames, so dedup whitens by PCA. Costs three forward passes per image, two "
        "edited views per gallery image (at most 2,000 more images described: once per index "
        "build, once per folder while its files and the feature cache stay), the whitening fit "
        "and four query vectors searched instead of one",
        "model_options": {"pool": "gem", "multiscale": True},
        "refinement": {"whiten": True, "whiten_dim": 128, "whiten_views": 2, "query_scales": True},
    },
}


WHITENING = ("whiten", "whiten_dim", "whiten_shrinkage", "whiten_views")


def list_presets() -> list[tuple[str, dict[str, Any]]]:
    """(name, preset) for every preset, in a stable order."""
    return list(PRESETS.items())


@dataclass
class SearchConfig:
    """Everything that decides a ranking: which method (``model`` with ``model_options``, and the
    ``metric``), how images are read (``extract``), what is fitted and re-ranked (``refinement``)."""

    model: str | None = None
    model_options: dict[str, Any] = field(default_factory=dict)
    metric: str | None = None
    extract: ExtractOptions = field(default_factory=ExtractOptions)
    refinement: Refinement = field(default_factory=Refinement)
    preset: str | None = None
    given_steps: frozenset[str] = frozenset()  # the refinement fields given on top of the preset

    @classmethod
    def from_preset(
        cls,
        preset: str | None = None,
        *,
        model: str | None = None,
        model_options: dict[str, Any] | None = None,
        metric: str | None = None,
        extract: ExtractOptions | None = None,
        refinement: dict[str, Any] | None = None,
    ) -> SearchConfig:
        """The preset's settings (``default`` when None) overridden by every option given (not
        None); ``refinement`` is a dict of :class:`Refinement` fields."""
        if preset is not None and preset not in PRESETS:
            raise InputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)} (lookalike presets)")
        base = PRESETS[preset or "default"]
        options = {**base.get("model_options", {}), **{k: v for k, v in (model_options or {}).items() if v is not None}}
        given = {k: v for k, v in (refinement or {}).items() if v is not None}
        refine = {**base.get("refinement", {}), **given}
        if given.get("whiten") is False:  # --no-whiten drops the preset's whitening settings too
            for key in WHITENING[1:]:
                if key not in given:
                    refine.pop(key, None)
        # the preset's query scales need its multi-scale model and give way to query regions and to
        # re-ranking (which compares one vector per query); its query resize gives way to query regions
        name = model or base.get("model") or DEFAULT_MODEL
        multiscale = coerce(f"model {name!r}", "multiscale", options.get("multiscale", False), bool)
        if "query_scales" not in given and (not multiscale or given.get("query_regions") or given.get("rerank")):
            refine.pop("query_scales", None)
        if "query_resize" not in given and given.get("query_regions"):
            refine.pop("query_resize", None)
        # its learned whitening gives way to gallery regions (the views are whole images): PCA then
        if "whiten_views" not in given and given.get("regions"):
            refine.pop("whiten_views", None)
        if "rerank_top" in given and refine.get("rerank") is None:
            raise InputError("--rerank-top sets how deep --rerank re-orders the results: give --rerank too")
        known = {f.name for f in fields(Refinement) if f.init}
        unknown = sorted(set(refine) - known)
        if unknown:
            raise InputError(f"unknown refinement option(s) {', '.join(unknown)}")
        return cls(
            model=model or base.get("model"),
            model_options=options,
            metric=metric or base.get("metric"),
            extract=extract or ExtractOptions(),
            refinement=Refinement(**refine),
            preset=preset,
            given_steps=frozenset(given),
        )

    @property
    def preset_whitening(self) -> bool:
        """True when the whitening is the preset's own, none of its settings given: against an
        index that stores a whitening (fitted at build, perhaps by an older preset) it yields to it."""
        preset = PRESETS.get(self.preset or "default", {}).get("refinement", {})
        return bool(preset.get("whiten")) and not self.given_steps & set(WHITENING)

    @property
    def model_name(self) -> str:
        """The method's name, the default model when none was chosen."""
        return self.model or DEFAULT_MODEL

    def index_postprocess(self) -> IndexPostprocess:
        """The gallery-side steps (whitening, DBA) to fit and store with an index; query expansion
        and re-ranking are search-time steps and are refused here."""
        r = self.refinement
        if r.qe or r.rerank:
            raise InputError("--qe and --rerank are search-time steps; give them to `search`, not to `index build`")
        return r.settings_as(IndexPostprocess)  # qe is 0 here: refused above
