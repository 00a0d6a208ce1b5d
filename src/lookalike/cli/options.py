"""Option groups, declared once: each is a set of typer options and how they become one object.

``@uses(CONFIG)`` adds a group's options to a command and hands the command the object they build
(``config: SearchConfig``), so ``search``, ``evaluate``, ``compare``, ``index build`` and
``index add`` share the same declarations, defaults and checks.
"""

from __future__ import annotations

import ast
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer

from ..config import SearchConfig
from ..errors import InputError
from ..extract import ExtractOptions
from ..images import DEFAULT_MAX_PIXELS


def _opt(kind: Any, *names: str, **info: Any) -> Any:
    return Annotated[kind, typer.Option(*names, **info)]


MODEL = {
    "model": (
        _opt(
            str | None, "--model", "-m", help="Method (see `lookalike models`); default efficientnet-lite0 (dedup: pixels)."
        ),
        None,
    ),
    "weights": (_opt(Path | None, "--weights", help="Local weights file for the model."), None),
    "pool": (_opt(str | None, "--pool", help="CNN pooling: avg, gem, mac or spoc."), None),
    "multiscale": (
        _opt(bool | None, "--multiscale/--no-multiscale", help="CNN features at scales 1, 1/sqrt(2), 1/2."),
        None,
    ),
    "resize": (
        _opt(
            str | None,
            "--resize",
            help="CNN input: squash (to the model's size) or fit (aspect kept; small images enlarged only to a 128 px short side).",
        ),
        None,
    ),
    "model_option": (
        _opt(list[str] | None, "--model-option", "-O", help="Extra model option KEY=VALUE (repeatable)."),
        None,
    ),
    "metric": (_opt(str | None, "--metric", help="cosine (default) or euclidean."), None),
    "preset": (
        _opt(str | None, "--preset", help="Named settings (see `lookalike presets`), e.g. copies."),
        None,
    ),
}
EXTRACT = {
    "device": (_opt(str, "--device", help="auto, cpu or cuda."), "auto"),
    "runtime": (_opt(str, "--runtime", help="auto (ONNX Runtime on CPU), torch or onnx."), "auto"),
    "batch_size": (_opt(int | None, "--batch-size", min=1, help="Images per batch."), None),
    "workers": (
        _opt(int | None, "--workers", min=0, help="DataLoader worker processes (0: decode in-process)."),
        None,
    ),
    "max_pixels": (
        _opt(int, "--max-pixels", min=1, help="Skip images with more pixels than this."),
        DEFAULT_MAX_PIXELS,
    ),
    "strict": (_opt(bool, "--strict", help="Fail on the first unreadable image."), False),
    "quiet": (_opt(bool, "--quiet", "-q", help="No progress bars or notes."), False),
}
CACHE = {
    "no_cache": (_opt(bool, "--no-cache", help="Neither read nor write the feature cache."), False),
    "cache_dir": (_opt(Path | None, "--cache-dir", help="Feature cache folder."), None),
}
STORED_STEPS = {  # fitted on the gallery; with an index, stored in it
    "whiten": (
        _opt(bool | None, "--whiten/--no-whiten", help="Whiten features, fitted on the gallery (PCA; learned from edited views with --whiten-views)."),
        None,
    ),
    "whiten_dim": (_opt(int | None, "--whiten-dim", min=1, help="Keep this many whitened dimensions."), None),
    "whiten_shrinkage": (
        _opt(
            float | None,
            "--whiten-shrinkage",
            min=0.0,
            help="Whitening: add this many times the mean variance to each axis's variance (default 10; learned: 1).",
        ),
        None,
    ),
    "whiten_views": (
        _opt(
            int | None,
            "--whiten-views",
            min=0,
            max=8,
            help="Learn the whitening from N edited views of each gallery image (up to 1,000 images); 0 = PCA.",
        ),
        None,
    ),
    "dba": (
        _opt(int | None, "--dba", min=0, help="Database-side augmentation with K neighbours; 0 = off."),
        None,
    ),
    "alpha": (_opt(float | None, "--alpha", help="Similarity exponent of --qe and --dba (default 3)."), None),
}
SEARCH_STEPS = {  # query-side steps and re-ranking: search time only
    "qe": (
        _opt(int | None, "--qe", min=0, help="Alpha query expansion with K (counting the query); 0 = off."),
        None,
    ),
    "rerank": (
        _opt(str | None, "--rerank", help="Re-ranking: k-reciprocal, or spatial verification: surf, sift."),
        None,
    ),
    "rerank_top": (
        _opt(
            int | None, "--rerank-top", min=1, help="How many top results re-ranking re-orders (default 100)."
        ),
        None,
    ),
    "rerank_option": (
        _opt(
            list[str] | None,
            "--rerank-option",
            help="Re-ranker setting KEY=VALUE (repeatable), e.g. ratio=0.8, max_keypoints=2000, fusion=rank.",
        ),
        None,
    ),
    "score_norm": (
        _opt(
            int | None,
            "--score-norm",
            min=0,
            help="Subtract each query's similarity to its K-th background neighbour (SSCD); 0 = off.",
        ),
        None,
    ),
    "gallery_norm": (
        _opt(
            int | None,
            "--gallery-norm",
            min=0,
            help="Subtract each gallery image's mean similarity to its K nearest others (hubs); 0 = off.",
        ),
        None,
    ),
    "background": (
        _opt(Path | None, "--background", help="Unrelated images for --score-norm (default: the gallery)."),
        None,
    ),
    "regions": (
        _opt(
            int | None,
            "--regions",
            min=0,
            help="Describe gallery images by regions too: whole + grids up to LxL (2: 5, 3: 14 regions).",
        ),
        None,
    ),
    "query_regions": (
        _opt(bool | None, "--query-regions/--no-query-regions", help="Search by the queries' regions too."),
        None,
    ),
    "query_scales": (
        _opt(
            bool | None,
            "--query-scales/--no-query-scales",
            help="Also describe queries at each scale of a multi-scale model; results score their best.",
        ),
        None,
    ),
    "query_resize": (
        _opt(
            str | None,
            "--query-resize",
            help="How queries reach a CNN (squash, fit; see --resize); the gallery keeps its own.",
        ),
        None,
    ),
}
LABELS = {
    "query_labels": (_opt(Path | None, "--query-labels", help="path,label CSV for the queries."), None),
    "gallery_labels": (_opt(Path | None, "--gallery-labels", help="path,label CSV for the gallery."), None),
}


def _panel(options: dict[str, tuple[Any, Any]], title: str) -> None:
    """Show a group's options under one heading of ``--help``."""
    for kind, _default in options.values():
        for info in getattr(kind, "__metadata__", ()):
            info.rich_help_panel = title


for _options, _title in (
    (MODEL, "Model"),
    (EXTRACT, "Reading images"),
    (CACHE, "Reading images"),
    (STORED_STEPS, "Refinement"),
    (SEARCH_STEPS, "Refinement"),
    (LABELS, "Labels"),
):
    _panel(_options, _title)


@dataclass(frozen=True)
class Group:
    """Options declared once (``name -> (annotated type, default)``) and the object they build;
    the command receives it as the keyword ``name``."""

    name: str
    options: dict[str, tuple[Any, Any]]
    build: Callable[..., Any]


def parse_value(text: str) -> Any:
    """A ``KEY=VALUE`` value as a Python literal when it is one (3, 0.5, True, (1, 2)), else text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def key_values(items: list[str] | None, option: str = "--model-option") -> dict[str, Any]:
    """``["k=v", ...]`` as a dict, or a one-line error naming the option."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"{option}: expected KEY=VALUE, got {item!r}")
        out[key.strip().replace("-", "_")] = parse_value(value.strip())
    return out


def extract_options(values: dict[str, Any]) -> ExtractOptions:
    """ExtractOptions from the EXTRACT (and, where present, CACHE) group's values; a group that
    declares only some of them (the server's) gets the defaults for the rest."""
    return ExtractOptions(
        device=values["device"],
        runtime=values["runtime"],
        batch_size=values.get("batch_size"),
        num_workers=values.get("workers"),
        max_pixels=values.get("max_pixels", DEFAULT_MAX_PIXELS),
        strict=values.get("strict", False),
        progress=not values.get("quiet", False),
        cache_dir=values.get("cache_dir"),
        use_cache=not values.get("no_cache", False),
    )


def _config(**values: Any) -> SearchConfig:
    model_options = {
        "weights": str(values["weights"]) if values.get("weights") else None,
        "pool": values.get("pool"),
        "multiscale": values.get("multiscale"),
        "resize": values.get("resize"),
        **key_values(values.get("model_option")),
    }
    steps = {name: values.get(name) for name in (*STORED_STEPS, *SEARCH_STEPS) if name != "rerank_option"}
    steps["rerank_options"] = key_values(values.get("rerank_option"), "--rerank-option") or None
    return SearchConfig.from_preset(
        values.get("preset"),
        model=values.get("model"),
        model_options=model_options,
        metric=values.get("metric"),
        extract=extract_options(values),
        refinement=steps,
    )


CONFIG = Group("config", {**MODEL, **EXTRACT, **CACHE, **STORED_STEPS, **SEARCH_STEPS}, _config)


def _dedup_config(**values: Any) -> SearchConfig:
    """``_config`` for dedup, which refuses the search-only options given to it before their own
    checks run (those would ask for their companions, which dedup refuses too)."""
    from ..dedup.result import SEARCH_ONLY_STEPS, refuse_search_only

    refuse_search_only([flag for name, flag in SEARCH_ONLY_STEPS.items() if values.get(name)])
    if values.get("rerank_top") is not None and not values.get("rerank"):  # (find_duplicates refuses --rerank)
        raise InputError("--rerank-top: dedup re-orders no search results; it verifies pairs with --verify sift|surf")
    return _config(**values)


DEDUP_CONFIG = Group("config", CONFIG.options, _dedup_config)
# compare names its methods itself (-m repeated, each with its own defaults): the rest of a search
# (--query-scales needs a multi-scale model, which compare's bare -m names cannot give)
COMPARE_CONFIG = Group(
    "config",
    {k: v for k, v in CONFIG.options.items() if (k not in MODEL or k == "metric") and k != "query_scales"},
    _config,
)
# what an index stores: the model, how images are read, the gallery-fitted steps and the regions
INDEX_CONFIG = Group("config", {**MODEL, **EXTRACT, **STORED_STEPS, "regions": SEARCH_STEPS["regions"]}, _config)
# a server searches one index: the model and metric are checked against it, stored steps must match
# it, query-side steps and re-ranking run on every request
SERVE_CONFIG = Group(
    "config",
    {**MODEL, **{k: EXTRACT[k] for k in ("device", "runtime")}, **CACHE, **STORED_STEPS, **SEARCH_STEPS},
    _config,
)
EXTRACTION = Group("extract", EXTRACT, lambda **v: extract_options(v))


def uses(*groups: Group) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command the options of ``groups``; it receives each group's object instead."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(func, include_extras=True)
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in inspect.signature(func).parameters.values()
            if p.name not in {g.name for g in groups}
        ]
        added = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind, default=default)
            for g in groups
            for name, (kind, default) in g.options.items()
        ]
        ordered = own + added
        names = [p.name for p in ordered]
        clashes = sorted({n for n in names if names.count(n) > 1})
        if clashes:  # a programming error: two groups (or a group and the command) share a name
            raise TypeError(f"{func.__name__}: option names declared twice: {', '.join(clashes)}")

        @wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for g in groups:  # called from Python, an option left out takes its declared default
                values = {name: kwargs.pop(name, default) for name, (_, default) in g.options.items()}
                kwargs[g.name] = g.build(**values)
            return func(*args, **kwargs)

        wrapper.__signature__ = inspect.Signature(ordered)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in ordered}
        return wrapper

    return decorate


QueryArg = Annotated[Path, typer.Argument(help="Query folder, image, .txt list or path,label .csv.")]
GalleryArg = Annotated[Path, typer.Argument(help="Gallery folder, image, .txt list or path,label .csv.")]
QueryLabels = LABELS["query_labels"][0]
GalleryLabels = LABELS["gallery_labels"][0]
Quiet = EXTRACT["quiet"][0]
Device = EXTRACT["device"][0]
Runtime = EXTRACT["runtime"][0]
BatchSize = EXTRACT["batch_size"][0]
