"""The search pipeline as one call: images -> features -> exact top-k -> results (+ metrics)."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .cache import default_cache_dir
from .errors import InputError, NothingToProcessError
from .extract import Embeddings, ExtractOptions, Skipped, embed, resolve_device
from .features import Extractor
from .features.base import RESIZES
from .features.regions import region_boxes, with_regions
from .features.scale_views import view_count, with_scale_views
from .fileio import printable, write_json
from .images import ImageSet, loose_images_message
from .index import GalleryIndex, is_index
from .index.regions import RegionIndex
from .methods import LocalMethod, is_local_method, resolve_method
from .metrics import TOP_KS, RetrievalMetrics, accepts, evaluate_rankings, is_higher_better
from .pairs import view_source
from .rerank import RERANKERS, Reranker, RerankInputs
from .steps import GalleryNorm, Postprocess, ScoreNormalisation, ViewSource

if TYPE_CHECKING:
    from .config import SearchConfig

DEFAULT_MODEL = "efficientnet-lite0"
FORMATS = ("default", "challenge")


@dataclass
class SearchRun:
    """What one search produced: per query, gallery indices and scores best first, plus
    what was skipped, cache and timing figures, and metrics when the sets are labelled."""

    query_names: list[str]
    gallery_names: list[str]
    indices: np.ndarray
    scores: np.ndarray
    metric: str
    model: dict[str, Any]
    skipped: dict[str, list[Skipped]] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    metrics: RetrievalMetrics | None = None
    refinement: dict[str, Any] = field(default_factory=dict)
    min_score: float | None = None

    def ranking(self) -> dict[str, list[str]]:
        """``{query: [gallery images, best first]}`` with paths relative to their roots."""
        return {
            q: [self.gallery_names[j] for j in row if j >= 0]  # -1: an approximate index found fewer
            for q, row in zip(self.query_names, self.indices, strict=True)
        }

    def to_json(self, *, scores: bool = False, fmt: str = "default", group: str | None = None) -> dict:
        """The results document: ``default`` (optionally with scores) or the challenge format
        ``{"groupname": NAME, "images": {query file name: [gallery file names]}}``."""
        check_format(fmt, group=group, scores=scores)
        if fmt == "challenge":
            return {"groupname": group, "images": self._by_file_name()}
        if not scores:
            return self.ranking()
        return {
            q: [
                {"image": self.gallery_names[j], "score": round(float(s), 6)}
                for j, s in zip(row, srow, strict=True)
                if j >= 0
            ]
            for q, row, srow in zip(self.query_names, self.indices, self.scores, strict=True)
        }

    def _by_file_name(self) -> dict[str, list[str]]:
        """Results named by bare file names; two images of one side with the same file name
        would be indistinguishable there, so that is refused, naming both."""
        for side, names in (("queries", self.query_names), ("gallery images", self.gallery_names)):
            seen: dict[str, str] = {}
            for full in names:
                base = Path(full).name
                if base in seen:
                    raise InputError(
                        f"challenge format: {side} {printable(seen[base])} and {printable(full)} share the "
                        f"file name {printable(base)!r}, which is all that format names; rename one, or "
                        "use --format default (paths relative to the root)"
                    )
                seen[base] = full
        return {
            Path(q).name: [Path(self.gallery_names[j]).name for j in row if j >= 0]
            for q, row in zip(self.query_names, self.indices, strict=True)
        }

    def keep_at_least(self, min_score: float | str | Path) -> None:
        """Drop the results worse than ``min_score`` (a number, or a ``lookalike calibrate`` file,
        which must be for this run's score and model): they become -1, "no result", so a query's
        list may end early or be empty. Similarities pass at or above it, distances at or below."""
        from .calibrate import threshold_value

        threshold = threshold_value(
            min_score, score=self.metric, model=self.model, refinement=self.refinement
        )
        keep = accepts(self.scores, threshold, higher_is_better=is_higher_better(self.metric)) & (
            self.indices >= 0
        )
        self.indices = np.where(keep, self.indices, -1)
        self.min_score = threshold

    def write_json(self, path: str | Path, **kwargs: Any) -> None:
        """Write :meth:`to_json` to ``path`` atomically (UTF-8; see :func:`lookalike.fileio.json_text`
        for names that are not valid UTF-8)."""
        write_json(path, self.to_json(**kwargs))

    def summary(self) -> dict[str, Any]:
        """Counts, cache use, timings, skipped files and metrics: the run summary."""
        out: dict[str, Any] = {
            "model": self.model,
            "metric": self.metric,
            "refinement": self.refinement,
            "queries": len(self.query_names),
            "gallery": len(self.gallery_names),
            **self.stats,
            "skipped": [
                {"set": which, "path": s.path, "reason": s.reason}
                for which, items in self.skipped.items()
                for s in items
            ],
        }
        if self.min_score is not None:
            out["min_score"] = self.min_score
            out["matched_queries"] = (
                int(np.sum(np.any(self.indices >= 0, axis=1))) if self.indices.size else 0
            )
        if self.metrics is not None:
            out["metrics"] = self.metrics.as_dict()
        return out


def check_format(fmt: str, *, group: str | None = None, scores: bool = False) -> None:
    """Refuse a results format, group and scores combination that cannot be written."""
    if fmt not in FORMATS:
        raise InputError(f"--format: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "challenge" and not group:
        raise InputError("--format challenge needs a group name: --group NAME")
    if fmt != "challenge" and group is not None:
        raise InputError(f"--group names the group of --format challenge; the {fmt} format has none")
    if fmt == "challenge" and scores:
        raise InputError("--scores cannot be used with --format challenge, which lists file names only")


def _options_text(options: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{k}={options.get(k)!r}" for k in keys)


def _link_skips(images: ImageSet | None) -> list[Skipped]:
    """The symbolic links a folder walk did not follow (loops, folders already included)."""
    return [Skipped(path, reason) for path, reason in (images.skipped_links if images is not None else [])]


def _as_image_set(source: str | Path | ImageSet, labels_csv: str | Path | None) -> ImageSet:
    if isinstance(source, ImageSet):
        return source
    return ImageSet.from_path(source, labels_csv=labels_csv)


def _as_extractor(model: str | Extractor, model_options: dict[str, Any] | None) -> Extractor:
    method = resolve_method(model, model_options)
    assert isinstance(method, Extractor)
    return method


def _embed_set(extractor: Extractor, images: ImageSet, opts: ExtractOptions, label: str) -> Embeddings:
    result = embed(extractor, images, opts, label=label)
    if len(result.indices) == 0:
        raise NothingToProcessError(
            f"{label} {images.source}: none of the {len(images)} image(s) could be read"
        )
    return result


def search(
    query: str | Path | ImageSet,
    gallery: str | Path | ImageSet,
    *,
    model: str | Extractor | None = None,
    model_options: dict[str, Any] | None = None,
    k: int = 10,
    metric: str | None = None,
    evaluate: bool = False,
    options: ExtractOptions | None = None,
    query_labels: str | Path | None = None,
    gallery_labels: str | Path | None = None,
    refinement: Refinement | None = None,
    config: SearchConfig | None = None,
    min_score: float | str | Path | None = None,
) -> SearchRun:
    """Rank ``gallery`` for every image of ``query``; the CLI's ``search``.

    ``query`` is a folder, list or CSV file, single image or ImageSet; ``gallery`` the same or a
    saved index folder (then its model and metric are used). ``model`` defaults to
    efficientnet-lite0 and ``metric`` to cosine. With ``evaluate`` both sides must be labelled,
    and ``metrics`` is filled from full rankings; ``refinement`` adds whitening, DBA, QE and
    re-ranking. ``config`` (a :class:`lookalike.config.SearchConfig`) gives all of those at once.
    ``min_score`` (a number, or a threshold file written by ``lookalike calibrate``) keeps only the
    results at least that good (at most that distance), so a query may have none: "is this a copy
    of anything?". Metrics still describe the full short lists.
    """
    if config is not None:  # one object for every setting (the CLI's way); the keywords stay for the API
        if any(v is not None for v in (model, model_options, metric, options, refinement)):
            raise InputError("give either config= or model/model_options/metric/options/refinement, not both")
        model, model_options, metric = config.model, config.model_options, config.metric
        options, refinement = config.extract, config.refinement
    opts = options or ExtractOptions()
    if opts.use_cache and opts.cache_dir is None:
        opts = replace(opts, cache_dir=default_cache_dir())
    q_set = _as_image_set(query, query_labels)
    if min_score is not None:  # a bad number or threshold file fails now, not after the search
        from .calibrate import threshold_value

        threshold_value(min_score)
    side = gallery_side(gallery, model, model_options, metric, refinement, gallery_labels, opts)
    if evaluate and not (q_set.labelled and side.labelled):
        g_set = side.images if isinstance(side.images, ImageSet) else None
        raise InputError(loose_images_message("evaluation", q_set, g_set) or _NEEDS_LABELS)
    refine = side.reconcile(refinement or Refinement(), config is not None and config.preset_whitening)
    t0 = time.perf_counter()
    q_items, q_found = side.encode(q_set, opts, "queries")
    side.embed(opts)
    normaliser = side.normaliser(refine, opts)
    t1 = time.perf_counter()
    # one search path: every gallery is an index (a saved one, the in-memory exact index of a
    # folder's vectors, one over vectors that search-time steps changed, or a local method's
    # index of keypoints), searched through the same calls
    queries, searched = side.prepare(q_items, refine)
    reranker = side.reranker(refine, queries, q_set.subset(q_found.indices), opts)
    # one short list serves the written results and the head of the evaluated rankings, so the
    # metrics describe exactly the lists that are written (ties and re-ranking included)
    shortlist = max(k, max(TOP_KS) if evaluate else 0)
    if evaluate and searched.exhaustive:  # it ranks the whole gallery anyway: keep all of it
        shortlist = max(shortlist, len(searched))
    head, head_scores = short_lists(searched, queries, shortlist, reranker, normaliser, refine.rerank_top)
    indices, scores = head[:, :k], head_scores[:, :k]
    t2 = time.perf_counter()
    run = SearchRun(
        query_names=[q_set.names[i] for i in q_found.indices],
        gallery_names=searched.names,
        indices=indices,
        scores=scores,
        metric=score_name(searched.metric, reranker, normaliser, refine.gallery_norm),
        model=side.describe_model(),
        skipped={
            "query": _link_skips(q_set) + q_found.skipped,
            "gallery": _link_skips(side.images) + side.skipped,
        },
        stats={
            "extracted": {"query": q_found.n_extracted, "gallery": side.n_extracted},
            "from_cache": {"query": q_found.n_cached, "gallery": side.n_cached},
            "extract_seconds": round(t1 - t0, 3),
            "search_seconds": round(t2 - t1, 4),
        },
        refinement=side.describe_refinement(refine),
    )
    if min_score is not None:
        run.keep_at_least(min_score)
    if evaluate:  # µAP over the written lists (before --min-score), P/R at --min-score when given
        run.metrics = evaluate_rankings(
            searched.rankings(queries, head),
            [q_set.labels[i] for i in q_found.indices],
            searched.labels,
            run.query_names,
            head=indices,
            head_scores=scores,
            higher_is_better=is_higher_better(run.metric),
            threshold=run.min_score,
        )
    return run


def short_lists(
    searched: Any,
    queries: Any,
    depth: int,
    reranker: Reranker | None,
    normaliser: ScoreNormalisation | None,
    rerank_top: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(indices, scores) of each query's short list, best first: ``depth`` results (more where the
    re-ranker's ``rerank_top`` or the normalisation's k-th gallery score needs them), re-ranked,
    then normalised. The search and the server both rank through this."""
    if reranker is not None:
        depth = max(depth, rerank_top)
    if normaliser is not None and normaliser.background is None:
        depth = max(depth, normaliser.k)
    head, scores = searched.search(queries, depth)
    if reranker is not None:
        head, scores = reranker.rerank(np.arange(len(head)), head)
    if normaliser is not None:
        scores = scores - normaliser.bias(queries, scores)[:, None]
    return head, scores


def score_name(
    metric: str, reranker: Reranker | None, normaliser: ScoreNormalisation | None, gallery_norm: int = 0
) -> str:
    """What a run's scores are: the metric's, a re-ranker's own, or similarities minus a
    normalising offset (``--score-norm``'s, ``--gallery-norm``'s or both: the refinement says which)."""
    if reranker is not None:
        return reranker.score_name
    return f"normalised {metric}" if normaliser is not None or gallery_norm else metric


def gallery_side(
    gallery: str | Path | ImageSet,
    model: str | Extractor | LocalMethod | None,
    model_options: dict[str, Any] | None,
    metric: str | None,
    refinement: Refinement | None,
    gallery_labels: str | Path | None,
    opts: ExtractOptions,
) -> GallerySide | LocalSide:
    """The gallery of a search, by what ``model`` is and what ``gallery`` holds: a saved index, or
    images for a global extractor (vectors) or for a local method (keypoints). The model, its
    options and the metric are checked against a saved index here (the server uses it too)."""
    saved = not isinstance(gallery, ImageSet) and is_index(gallery)
    if isinstance(model, LocalMethod) or is_local_method(model):
        method = resolve_method(model, model_options)
        assert isinstance(method, LocalMethod)
        flags = vector_step_flags(refinement, metric)
        if flags:
            verb = "does" if len(flags) == 1 else "do"
            raise InputError(
                f"{method.name} ranks by RANSAC-verified matches, not by vectors: {', '.join(flags)} {verb} "
                "not apply to it"
            )
        if saved:
            raise InputError(f"{gallery} is an index of global features; local methods search image folders")
        return LocalSide(method, _as_image_set(gallery, gallery_labels))
    if saved:
        index = GalleryIndex.open(gallery, _index_device(opts))
        stored = index.model.get("options", {})
        differ = sorted(k for k, v in (model_options or {}).items() if v is not None and stored.get(k) != v)
        if differ:
            raise InputError(
                f"{gallery} is an index built with {_options_text(stored, differ)}: its model options are "
                f"fixed when it is built, so {', '.join(differ)} cannot change here"
            )
        return _index_side(index, model, metric, refinement)
    g_set = _as_image_set(gallery, gallery_labels)
    extractor = _as_extractor(model or DEFAULT_MODEL, model_options)
    levels = refinement.regions if refinement is not None else 0
    query = _query_extractor(extractor, refinement)
    if not levels:
        return GallerySide(
            extractor=extractor,
            metric=metric or "cosine",
            images=g_set,
            query_extractor=query,
            query_regions=view_count(query),
        )
    regional = with_regions(extractor, levels)
    if refinement.query_regions:
        query = regional
    return GallerySide(
        extractor=regional,
        metric=metric or "cosine",
        images=g_set,
        query_extractor=query,
        regions=len(region_boxes(levels)),
        query_regions=len(region_boxes(levels)) if refinement.query_regions else view_count(query),
    )


def vector_step_flags(refinement: Refinement | None, metric: str | None) -> list[str]:
    """The options given (``--whiten``, ``--query-scales``, ``--metric``...) that only vector
    methods use: what a local method has to refuse."""
    steps = [f"--{name.replace('_', '-')}" for name in (refinement or Refinement()).describe()]
    return steps + (["--metric"] if metric is not None else [])


def _query_extractor(whole: Extractor, refinement: Refinement | None) -> Extractor:
    """How queries are described against a gallery of ``whole`` images' vectors: as the gallery is,
    read another way (``--query-resize``), with the scale views of ``--query-scales``, or both."""
    query = whole
    if refinement is not None and refinement.query_resize not in (None, whole.preprocess.resize):
        query = _resized(whole, refinement.query_resize)
    if refinement is not None and refinement.query_scales:
        query = with_scale_views(query)
    return query


def _resized(extractor: Extractor, resize: str) -> Extractor:
    """``extractor``'s model (the same weights and options) reading images by ``resize``."""
    from .features import create_extractor

    options = {k: v for k, v in extractor.options.items() if k != "resize"}
    if resize != "squash":
        options["resize"] = resize
    try:
        return create_extractor(extractor.name, **options)
    except InputError as exc:
        raise InputError(f"--query-resize {resize}: {exc}") from None


_NO_REGION_VIEWS = "is not supported: the edited views are whole images, the gallery's rows are regions"
_NO_REGION_NORM = "is not supported: a region's neighbours are mostly its own image's other regions"


@dataclass
class Refinement(Postprocess):
    """Optional steps between features and ranking, in this order: PCA whitening fitted on the
    gallery (``whiten``, ``whiten_dim``, ``whiten_shrinkage``), database-side augmentation (``dba``
    = k), alpha query expansion (``qe`` = k; both weight neighbours by similarity^``alpha``) — the
    :class:`~lookalike.steps.Postprocess` steps, fitted at search time — then re-ranking of
    each query's top ``rerank_top`` by a registered re-ranker (``rerank``: k-reciprocal with
    ``k1``, ``k2``, ``lambda_value``, or spatial verification). Anything that changes vectors
    makes an index search exact. ``gallery_norm`` = k subtracts from every gallery image's cosine
    similarities its mean similarity to its k nearest other gallery images
    (:class:`~lookalike.steps.GalleryNorm`; it changes rankings). Last, ``score_norm`` = k
    subtracts from each query's cosine similarities its similarity to its k-th neighbour in
    ``background`` (a folder of unrelated images; default the gallery itself):
    :class:`~lookalike.steps.ScoreNormalisation`."""

    rerank: str | None = None
    rerank_top: int = 100
    rerank_options: dict[str, Any] = field(default_factory=dict)
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3
    score_norm: int = 0
    background: str | Path | None = None
    regions: int = 0
    query_regions: bool = False
    query_scales: bool = False
    query_resize: str | None = None
    gallery_norm: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rerank is not None:
            entry = RERANKERS.get(self.rerank)  # an unknown name fails here, before any work
            unknown = sorted(set(self.rerank_options) - set(entry.options()) - {"inputs"})
            if unknown:
                raise InputError(
                    f"--rerank-option: {self.rerank} has no option(s) {', '.join(unknown)}; "
                    f"it takes {', '.join(o for o in entry.options() if o != 'inputs')}"
                )
        elif self.rerank_options:
            raise InputError("--rerank-option sets the re-ranker's options: give --rerank too")
        if self.rerank_top < 1:
            raise InputError(f"--rerank-top must be at least 1, got {self.rerank_top}")
        if self.score_norm < 0:
            raise InputError(f"--score-norm must be 0 (off) or positive, got {self.score_norm}")
        if self.score_norm and self.rerank is not None:
            raise InputError(
                "--score-norm normalises similarities; a re-ranker's scores are its own: use one or the other"
            )
        if self.background is not None and not self.score_norm:
            raise InputError("--background is the reference set of --score-norm K: give --score-norm too")
        if self.regions:
            region_boxes(self.regions)  # checks the level
        if self.regions and self.whiten_views:
            raise InputError(f"--whiten-views with --regions {_NO_REGION_VIEWS}")
        if self.query_regions and not self.regions:
            raise InputError("--query-regions searches by the regions of --regions L: give --regions too")
        if self.regions and self.background is not None:
            raise InputError(
                "--background with --regions is not supported: --score-norm uses the gallery then"
            )
        if self.query_scales and self.query_regions:
            raise InputError(
                "--query-scales and --query-regions each describe a query by several vectors: give one"
            )
        if self.query_scales and self.rerank is not None:
            raise InputError(
                f"--query-scales with --rerank {self.rerank}: the re-ranker compares one vector per query "
                "and would undo the best-view scores: give one"
            )
        if self.gallery_norm < 0:
            raise InputError(f"--gallery-norm must be 0 (off) or positive, got {self.gallery_norm}")
        if self.gallery_norm and self.rerank is not None:
            raise InputError(
                f"--gallery-norm with --rerank {self.rerank}: the re-ranker scores plain vectors and would "
                "undo the gallery's offsets: give one"
            )
        if self.gallery_norm and self.regions:
            raise InputError(f"--gallery-norm with --regions {_NO_REGION_NORM}")
        if self.query_resize is not None and self.query_resize not in RESIZES:
            raise InputError(
                f"--query-resize: unknown value {self.query_resize!r}; choose one of {', '.join(RESIZES)}"
            )
        if self.query_resize is not None and self.query_regions:
            raise InputError(
                "--query-resize reads whole-image queries; --query-regions cuts regions as the gallery's are: give one"
            )

    def describe(self) -> dict[str, Any]:
        """The active steps and their parameters (empty when none is on)."""
        out = super().describe()
        if self.rerank:
            out["rerank"] = {
                "method": self.rerank,
                "top": self.rerank_top,
                "k1": self.k1,
                "k2": self.k2,
                "lambda": self.lambda_value,
            }
            if self.rerank_options:
                out["rerank"]["options"] = dict(self.rerank_options)
        if self.regions:
            out["regions"] = {
                "levels": self.regions,
                "count": len(region_boxes(self.regions)),
                "query": self.query_regions,
            }
        if self.query_scales:
            out["query_scales"] = True
        if self.query_resize is not None:
            out["query_resize"] = self.query_resize
        if self.gallery_norm:
            out["gallery_norm"] = {"k": self.gallery_norm}
        if self.score_norm:
            out["score_norm"] = {
                "k": self.score_norm,
                "background": None if self.background is None else str(self.background),
            }
        return out

    def fit_gallery(
        self, gallery: np.ndarray, views: ViewSource | None = None
    ) -> tuple[Postprocess | None, np.ndarray, bool]:
        """(steps, gallery, changed): a fresh copy of the vector steps fitted on this gallery (None
        when none is on; the object itself stays unfitted) and the gallery after them; ``views``
        gives the edited views a learned whitening (``whiten_views``) is fitted on."""
        gallery = np.asarray(gallery)
        if not (self.whiten or self.dba or self.qe):
            return None, gallery, False
        steps = self.settings_as(Postprocess).fit(gallery, views)
        changed = bool(self.whiten or self.dba)
        return steps, (steps.gallery(gallery) if changed else gallery), changed

    def apply(
        self, queries: np.ndarray, gallery: np.ndarray, views: ViewSource | None = None
    ) -> tuple[np.ndarray, np.ndarray, bool]:
        """(queries, gallery, changed): the vectors after whitening, DBA and QE, fitted here on
        this gallery (see :meth:`fit_gallery`)."""
        steps, processed, changed = self.fit_gallery(gallery, views)
        return (queries if steps is None else steps.queries(queries, processed)), processed, changed

    def reranker(
        self,
        queries: np.ndarray,
        gallery: np.ndarray,
        query_set: ImageSet,
        gallery_set: ImageSet,
        options: ExtractOptions,
    ) -> Reranker | None:
        """The re-ranking step, if any, from the re-ranker registry: it gets the vectors and the
        images in vector order (``query_set``/``gallery_set``), and those of this object's
        parameters (``k1``, ``k2``, ``lambda_value``) that its factory takes."""
        if self.rerank is None:
            return None
        entry = RERANKERS.get(self.rerank)
        params = {k: getattr(self, k) for k in ("k1", "k2", "lambda_value") if k in entry.options()}
        params.update(self.rerank_options)
        inputs = RerankInputs(queries, gallery, query_set, gallery_set, options, self.rerank_top)
        return RERANKERS.create(self.rerank, inputs, **params)


_NEEDS_LABELS = (
    "evaluation needs labels for queries and gallery: put images in class folders "
    "(query/<label>/x.jpg) or pass a path,label CSV (--query-labels / --gallery-labels)"
)


@dataclass
class GallerySide:
    """The gallery of a search by a global extractor: images to embed now, or a saved index that
    holds the vectors; either way searched as a :class:`GalleryIndex`."""

    extractor: Extractor
    metric: str
    images: ImageSet | None = None
    index: GalleryIndex | None = None
    skipped: list[Skipped] = field(default_factory=list)
    n_extracted: int = 0
    n_cached: int = 0
    kept: list[int] = field(default_factory=list)
    vectors: np.ndarray | None = None  # the vectors searched, after the search-time steps
    _searchable: tuple[Any, Postprocess | None] | None = field(default=None, repr=False)
    query_extractor: Extractor | None = None  # another view of the queries (whole image vs regions)
    regions: int = 1  # region vectors per gallery image (see features.regions)
    options: ExtractOptions | None = None  # how the gallery was read: its edited views are read alike
    query_regions: int = 1  # vectors per query: its regions or its scale views (features.scale_views)

    @property
    def labelled(self) -> bool:
        return self.images.labelled if self.images is not None else self.index.labels is not None

    def describe_model(self) -> dict[str, Any]:
        return self.extractor.describe()

    @functools.cached_property
    def readable(self) -> ImageSet:
        """The gallery images that have vectors, in vector order (for re-ranking by pixels); made
        once, since a server re-ranks against it on every request."""
        if self.images is None:
            assert self.index is not None
            return self.index.image_set()
        return self.images.subset(self.kept)

    def reconcile(self, refine: Refinement, preset_whitening: bool = False) -> Refinement:
        """The search-time steps left to run, checked against the model's dimension. Against a saved
        index a step it already stores with the same settings (a preset used for both build and
        search) is not run twice; one with other settings is refused, since it would be applied on
        top of the stored one, unless it is a preset's own whitening (``preset_whitening``, see
        :attr:`SearchConfig.preset_whitening`) and the stored one is what that preset stored, PCA or
        learned: it is used then. A preset's learned whitening over an index of regions is PCA."""
        refine.check(self.extractor.dim // self.regions)  # one region's dimension
        if refine.whiten_views and self.regions > 1:
            if not preset_whitening:
                raise InputError(
                    f"--whiten-views with an index of regions {_NO_REGION_VIEWS}: give --whiten-views 0 (PCA)"
                )
            refine = replace(refine, whiten_views=0)  # the preset's whitening over regions: PCA, as --regions
        if refine.gallery_norm:  # before anything is extracted (a folder's unreadable images count later)
            if self.metric != "cosine":
                raise InputError(f"--gallery-norm normalises cosine similarities, not {self.metric} scores")
            if self.regions > 1:
                raise InputError(f"--gallery-norm with an index of regions {_NO_REGION_NORM}")
            GalleryNorm(refine.gallery_norm).check_size(
                len(self.images if self.images is not None else self.index)
            )
        if self.images is not None or not self.index.post.active:
            return refine
        post = self.index.post
        changes: dict[str, Any] = {}
        if refine.whiten and post.whiten:
            stored = (post.whiten_dim, post.shrinkage, post.whiten_views)
            # a preset's own whitening gives way to the one an older version of it stored (PCA or
            # learned, at the preset's dimension and that kind's default shrinkage), nothing else
            older = preset_whitening and stored[:2] == (refine.whiten_dim, post.default_shrinkage)
            if not older and (refine.whiten_dim, refine.shrinkage, refine.whiten_views) != stored:
                learned = f", learned from {post.whiten_views} views per image" if post.whiten_views else ""
                raise InputError(
                    f"{self.index.folder} already stores whiten (to {post.whiten_dim or 'all'} dimensions, "
                    f"shrinkage {post.shrinkage:g}{learned}, fitted at build); drop --whiten from the search, "
                    "give the same --whiten-dim, --whiten-shrinkage and --whiten-views, or rebuild the index"
                )
            changes.update(whiten=False, whiten_dim=None, whiten_shrinkage=None, whiten_views=0)
        if refine.dba and post.dba:
            if (refine.dba, refine.alpha) != (post.dba, post.alpha):
                raise InputError(
                    f"{self.index.folder} already stores dba (k={post.dba}, alpha={post.alpha}, fitted at build); "
                    "drop --dba from the search or rebuild the index with the new settings"
                )
            changes["dba"] = 0
        left = replace(refine, **changes) if changes else refine
        if left.whiten_views and post.dba:  # the views are raw vectors; the stored rows are augmented
            raise InputError(
                f"--whiten-views at search time over {self.index.folder}, which stores DBA: build the "
                "index with the whitening (index build --whiten --whiten-views N --dba K) instead"
            )
        return left

    def describe_refinement(self, refine: Refinement) -> dict[str, Any]:
        """The search-time steps, plus those stored with the index (under ``index``); a
        ``--query-resize`` the gallery already reads images by is no step."""
        out = refine.describe()
        if out.get("query_resize") == self.extractor.preprocess.resize:
            del out["query_resize"]
        if self.images is None and self.index.post.active:
            out["index"] = self.index.post.describe()
        return out

    def encode(self, images: ImageSet, opts: ExtractOptions, label: str) -> tuple[np.ndarray, Embeddings]:
        """The query vectors (and which images gave them), from the cache or extracted."""
        found = _embed_set(self.query_extractor or self.extractor, images, opts, label)
        return found.features, found

    def embed(self, opts: ExtractOptions) -> None:
        """The gallery's index: the saved one, or a folder's vectors, extracted (or read from the
        cache) and held as an in-memory exact index, so both are searched the same way."""
        self.options = opts
        if self.index is not None:
            self.n_cached = len(self.index)
            return
        assert self.images is not None
        emb = _embed_set(self.extractor, self.images, opts, "gallery")
        self.kept = emb.indices.tolist()
        labels = None if self.images.labels is None else [self.images.labels[i] for i in emb.indices]
        self.index = GalleryIndex.from_embeddings(
            emb.features,
            [self.images.names[i] for i in emb.indices],
            labels,
            model=self.extractor,
            metric=self.metric,
            root=self.images.root,
        )
        self.skipped, self.n_extracted, self.n_cached = emb.skipped, emb.n_extracted, emb.n_cached

    def searchable(self, refine: Refinement) -> tuple[GalleryIndex | RegionIndex, Postprocess | None]:
        """(index to search, the search-time steps fitted on the gallery), made once per side: the
        saved or in-memory index itself, or, when whitening or DBA change the gallery vectors, an
        exact in-memory index over the changed ones; region vectors are searched as region rows
        and answered per image. A server pays this once, not on every request."""
        if self._searchable is None:
            index = self.index
            gallery = np.asarray(index.search_vectors)
            if self.regions > 1:
                gallery = gallery.reshape(-1, index.dim // self.regions)
            views = view_source(self.extractor, self.readable, self.options) if refine.whiten_views else None
            steps, self.vectors, changed = refine.fit_gallery(gallery, views)
            searched: GalleryIndex | RegionIndex = index
            if self.regions > 1:
                names = [name for name in index.names for _ in range(self.regions)]
                inner = GalleryIndex.from_embeddings(self.vectors, names, metric=self.metric)
                searched = RegionIndex(inner, self.regions, self.query_regions, index.names, index.labels)
            else:
                rows = self.vectors
                if refine.gallery_norm:  # the offsets ride in one more coordinate, searched exactly
                    rows = GalleryNorm.gallery_rows(rows, GalleryNorm(refine.gallery_norm).offsets(rows))
                if changed or refine.gallery_norm:
                    searched = GalleryIndex.from_embeddings(
                        rows, index.names, index.labels, metric=self.metric
                    )
                if self.query_regions > 1:  # scale views: a gallery image scores its best view's match
                    searched = RegionIndex(searched, 1, self.query_regions, index.names, index.labels)
            self._searchable = (searched, steps)
        return self._searchable

    def prepare(
        self, queries: np.ndarray, refine: Refinement
    ) -> tuple[np.ndarray, GalleryIndex | RegionIndex]:
        """(queries, index to search): the queries in the searched space (region rows; the index's
        stored whitening; the search-time whitening and query expansion) and :meth:`searchable`."""
        searched, steps = self.searchable(refine)
        queries = np.asarray(queries, dtype=np.float32)
        if self.regions > 1 or self.query_regions > 1:
            queries = queries.reshape(-1, self.index.dim // self.regions)
        if self.images is None and self.index.post.active:  # (an index of regions stores no steps)
            queries = self.index.post.queries(queries)
        if steps is not None:
            queries = steps.queries(queries, self.vectors)
        if refine.gallery_norm:
            queries = GalleryNorm.query_rows(queries)
        return queries, searched

    def normaliser(self, refine: Refinement, opts: ExtractOptions) -> ScoreNormalisation | None:
        """The score normalisation asked for, its background (if any) embedded with this model and
        brought into the searched space (the index's stored whitening, then the search-time one)."""
        if not refine.score_norm:
            return None
        if self.metric != "cosine":
            raise InputError(f"--score-norm normalises cosine similarities, not {self.metric} scores")
        if refine.background is None:
            if len(self.index) < refine.score_norm:
                raise InputError(
                    f"--score-norm {refine.score_norm}: the gallery has only {len(self.index)} images"
                )
            return ScoreNormalisation(refine.score_norm, views=self.query_regions)
        found = _embed_set(self.extractor, ImageSet.from_path(refine.background), opts, "background")
        background = found.features
        if self.images is None and self.index.post.active:
            background = self.index.post.queries(background)
        _, steps = self.searchable(refine)
        if steps is not None:
            background = steps.whitened(background)
        if refine.gallery_norm:  # compared with the queries' rows, without the gallery's offsets
            background = GalleryNorm.query_rows(background, gallery_side=False)
        return ScoreNormalisation(
            refine.score_norm,
            background=np.ascontiguousarray(background, np.float32),
            views=self.query_regions,
        )

    def reranker(
        self, refine: Refinement, queries: np.ndarray, query_set: ImageSet, opts: ExtractOptions
    ) -> Reranker | None:
        """The re-ranking step asked for, over the searched vectors and the readable images."""
        if refine.rerank is None:
            return None
        self.searchable(refine)  # the searched vectors
        gallery = self.vectors
        if self.regions > 1:  # the re-ranker compares whole images: their first region each
            gallery = gallery.reshape(-1, self.regions, gallery.shape[1])[:, 0]
            queries = queries.reshape(-1, self.query_regions, queries.shape[1])[:, 0]
        return refine.reranker(queries, gallery, query_set, self.readable, opts)


@dataclass
class LocalSide:
    """The gallery of a search by a local-feature method: its images' keypoints, searched as a
    :class:`~lookalike.local.LocalFeatureIndex` (no vectors, so no vector steps or re-ranking)."""

    method: LocalMethod
    images: ImageSet
    index: Any = None
    skipped: list[Skipped] = field(default_factory=list)
    n_extracted: int = 0
    n_cached: int = 0

    def __post_init__(self) -> None:
        from .local import create_detector

        self.detector = create_detector(self.method.name, **self.method.options)

    @property
    def labelled(self) -> bool:
        return self.images.labelled

    def describe_model(self) -> dict[str, Any]:
        return self.index.describe()

    def reconcile(self, refine: Refinement, preset_whitening: bool = False) -> Refinement:
        return refine  # vector steps were refused when the side was made

    def describe_refinement(self, refine: Refinement) -> dict[str, Any]:
        return {}

    def encode(self, images: ImageSet, opts: ExtractOptions, label: str) -> tuple[list[Any], Any]:
        """The keypoints of the readable images (and which they are), from the cache or extracted."""
        from .local.extraction import extract_features
        from .local.index import readable_or_fail

        found = extract_features(self.detector, images, opts, label=label)
        return [found.features[i] for i in readable_or_fail(found, images, label)], found

    def embed(self, opts: ExtractOptions) -> None:
        from .local import LocalFeatureIndex

        _, found = self.encode(self.images, opts, "gallery")
        self.index = LocalFeatureIndex.from_feature_set(
            self.detector,
            found,
            self.images.names,
            self.images.labels,
            workers=opts.num_workers,
            progress=opts.progress,
        )
        self.skipped, self.n_extracted, self.n_cached = found.skipped, found.n_extracted, found.n_cached

    def prepare(self, queries: list[Any], refine: Refinement) -> tuple[list[Any], Any]:
        return queries, self.index

    def reranker(self, refine: Refinement, queries: Any, query_set: ImageSet, opts: ExtractOptions) -> None:
        return None

    def normaliser(self, refine: Refinement, opts: ExtractOptions) -> None:
        return None


def _index_side(
    index: GalleryIndex, model: str | Extractor | None, metric: str | None, refinement: Refinement | None
) -> GallerySide:
    name = model.name if isinstance(model, Extractor) else model
    if name is not None and name != index.model["name"]:
        raise InputError(f"{index.folder} was built with model {index.model['name']!r}, not {name!r}")
    if metric is not None and metric != index.metric:
        raise InputError(f"{index.folder} was built for {index.metric} scores, not {metric}")
    levels = refinement.regions if refinement is not None else 0
    if levels and levels != index.regions:
        raise InputError(
            f"--regions {levels}: {index.folder} holds "
            + (f"regions of {index.regions} levels" if index.regions else "one vector per image")
            + "; regions are fixed when an index is built (lookalike index build --regions L)"
        )
    extractor = index.extractor()
    if not index.regions:
        query = _query_extractor(extractor, refinement)
        return GallerySide(
            extractor=extractor,
            metric=index.metric,
            index=index,
            query_extractor=query,
            query_regions=view_count(query),
        )
    regions = len(region_boxes(index.regions))
    by_regions = refinement is not None and refinement.query_regions
    whole = _as_extractor(
        index.model["name"], {k: v for k, v in index.model["options"].items() if "region" not in k}
    )
    query = extractor if by_regions else _query_extractor(whole, refinement)
    return GallerySide(
        extractor=extractor,
        metric=index.metric,
        index=index,
        query_extractor=query,
        regions=regions,
        query_regions=regions if by_regions else view_count(query),
    )


def _index_device(opts: ExtractOptions) -> str:
    return resolve_device(opts.device).type


def evaluate(query: str | Path | ImageSet, gallery: str | Path | ImageSet, **kwargs: Any) -> SearchRun:
    """``search`` with ``evaluate=True``: top-1/3/10 accuracy and mAP are in ``run.metrics``."""
    return search(query, gallery, evaluate=True, **kwargs)
