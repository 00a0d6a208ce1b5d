"""The search pipeline as one call: images -> features -> exact top-k -> results (+ metrics)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .cache import default_cache_dir
from .errors import InputError, NothingToProcessError
from .extract import Embeddings, ExtractOptions, Skipped, embed, resolve_device
from .features import Extractor
from .fileio import printable, write_json
from .images import ImageSet
from .index import GalleryIndex, is_index
from .knn import full_rankings, rankings_with_head
from .methods import LocalMethod, is_local_method, resolve_method
from .metrics import TOP_KS, RetrievalMetrics, evaluate_rankings
from .postprocess import Postprocess
from .rerank import RERANKERS, Reranker, RerankInputs

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
        if self.metrics is not None:
            out["metrics"] = self.metrics.as_dict()
        return out


def check_format(fmt: str, *, group: str | None = None, scores: bool = False) -> None:
    """Refuse a results format, group and scores combination that cannot be written."""
    if fmt not in FORMATS:
        raise InputError(f"--format: unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "challenge" and not group:
        raise InputError("--format challenge needs a group name: --group NAME")
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
) -> SearchRun:
    """Rank ``gallery`` for every image of ``query``; the CLI's ``search``.

    ``query`` is a folder, list or CSV file, single image or ImageSet; ``gallery`` the same or a
    saved index folder (then its model and metric are used). ``model`` defaults to
    efficientnet-lite0 and ``metric`` to cosine. With ``evaluate`` both sides must be labelled,
    and ``metrics`` is filled from full rankings; ``refinement`` adds whitening, DBA, QE and
    re-ranking. ``config`` (a :class:`lookalike.config.SearchConfig`) gives all of those at once.
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
    if isinstance(model, LocalMethod) or is_local_method(model):
        method = resolve_method(model, model_options)
        assert isinstance(method, LocalMethod)
        steps = (refinement or Refinement()).describe()
        if steps or metric is not None:
            given = ", ".join([*(f"--{s}" for s in steps), *(["--metric"] if metric is not None else [])])
            raise InputError(
                f"{method.name} ranks by RANSAC-verified matches, not by vectors: {given} do not apply to it"
            )
        return _local_search(q_set, gallery, method, k, evaluate, opts, gallery_labels)
    if not isinstance(gallery, ImageSet) and is_index(gallery):
        index = GalleryIndex.open(gallery, _index_device(opts))
        stored = index.model.get("options", {})
        differ = sorted(k for k, v in (model_options or {}).items() if v is not None and stored.get(k) != v)
        if differ:
            raise InputError(
                f"{gallery} is an index built with {_options_text(stored, differ)}: its model options are "
                f"fixed when it is built, so {', '.join(differ)} cannot change here"
            )
        side = _index_side(index, model, metric)
    else:
        g_set = _as_image_set(gallery, gallery_labels)
        extractor = _as_extractor(model or DEFAULT_MODEL, model_options)
        side = _GallerySide(extractor=extractor, metric=metric or "cosine", images=g_set)
    gallery_labelled = side.images.labelled if side.images is not None else side.index.labels is not None
    if evaluate and not (q_set.labelled and gallery_labelled):
        raise InputError(_NEEDS_LABELS)
    refine = side.reconcile(refinement or Refinement())
    refine.check(side.extractor.dim)
    t0 = time.perf_counter()
    q_emb = _embed_set(side.extractor, q_set, opts, "queries")
    side.embed(opts)
    t1 = time.perf_counter()
    q_features = side.index_queries(q_emb.features, refine)
    queries, gallery_vectors, changed = refine.apply(q_features, side.vectors)
    # every gallery is searched through the index interface: a saved index, the in-memory exact
    # index of a folder's vectors, or (when search-time steps changed the vectors) one of those
    searched = side.index if not changed else side.in_memory(gallery_vectors)
    reranker = refine.reranker(queries, gallery_vectors, q_set.subset(q_emb.indices), side.readable(), opts)
    # one short list serves the written results and the head of the evaluated rankings, so the
    # metrics describe exactly the lists that are written (ties and re-ranking included)
    shortlist = max(k, max(TOP_KS) if evaluate else 0, refine.rerank_top if reranker is not None else 0)
    head, head_scores = searched.search(queries, shortlist)
    if reranker is not None:
        head, head_scores = reranker.rerank(np.arange(len(queries)), head)
    indices, scores = head[:, :k], head_scores[:, :k]
    t2 = time.perf_counter()
    run = SearchRun(
        query_names=[q_set.names[i] for i in q_emb.indices],
        gallery_names=side.names,
        indices=indices,
        scores=scores,
        metric=side.metric if reranker is None else reranker.score_name,
        model=side.extractor.describe(),
        skipped={
            "query": _link_skips(q_set) + q_emb.skipped,
            "gallery": _link_skips(side.images) + side.skipped,
        },
        stats={
            "extracted": {"query": q_emb.n_extracted, "gallery": side.n_extracted},
            "from_cache": {"query": q_emb.n_cached, "gallery": side.n_cached},
            "extract_seconds": round(t1 - t0, 3),
            "search_seconds": round(t2 - t1, 4),
        },
        refinement=side.describe_refinement(refine),
    )
    if evaluate:
        rankings = rankings_with_head(full_rankings(queries, gallery_vectors, side.metric), head)
        run.metrics = evaluate_rankings(
            rankings, [q_set.labels[i] for i in q_emb.indices], side.labels, run.query_names
        )
    return run


@dataclass
class Refinement(Postprocess):
    """Optional steps between features and ranking, in this order: PCA whitening fitted on the
    gallery (``whiten``, ``whiten_dim``), database-side augmentation (``dba`` = k), alpha query
    expansion (``qe`` = k; both weight neighbours by similarity^``alpha``) — the
    :class:`~lookalike.postprocess.Postprocess` steps, fitted at search time — then re-ranking of
    each query's top ``rerank_top`` by a registered re-ranker (``rerank``: k-reciprocal with
    ``k1``, ``k2``, ``lambda_value``, or spatial verification). Anything that changes vectors
    makes an index search exact."""

    rerank: str | None = None
    rerank_top: int = 100
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rerank is not None:
            RERANKERS.get(self.rerank)  # an unknown name fails here, before any work
        if self.rerank_top < 1:
            raise InputError(f"--rerank-top must be at least 1, got {self.rerank_top}")

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
        return out

    def apply(self, queries: np.ndarray, gallery: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """(queries, gallery, changed): the vectors after whitening, DBA and QE, fitted here on
        this gallery (a fresh copy of the steps, so the object itself stays unfitted)."""
        if not (self.whiten or self.dba or self.qe):
            return queries, np.asarray(gallery), False
        steps = Postprocess(self.whiten, self.whiten_dim, self.dba, self.qe, self.alpha).fit(gallery)
        processed = steps.gallery(gallery) if (self.whiten or self.dba) else np.asarray(gallery)
        return steps.queries(queries, processed), processed, bool(self.whiten or self.dba)

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
        inputs = RerankInputs(queries, gallery, query_set, gallery_set, options, self.rerank_top)
        return RERANKERS.create(self.rerank, inputs, **params)


def _local_search(
    q_set: ImageSet,
    gallery: str | Path | ImageSet,
    method: LocalMethod,
    k: int,
    evaluate: bool,
    opts: ExtractOptions,
    gallery_labels: str | Path | None,
) -> SearchRun:
    """``search`` with a local-feature method: the gallery ranked by RANSAC-verified matches."""
    from .local import local_search

    if not isinstance(gallery, ImageSet) and is_index(gallery):
        raise InputError(f"{gallery} is an index of global features; local methods search image folders")
    g_set = _as_image_set(gallery, gallery_labels)
    if evaluate and not (q_set.labelled and g_set.labelled):
        raise InputError(_NEEDS_LABELS)
    res = local_search(q_set, g_set, method.name, k, opts, method_options=method.options)
    run = SearchRun(
        query_names=res.query_names,
        gallery_names=res.gallery_names,
        indices=res.indices,
        scores=res.scores,
        metric="inliers",
        model=res.method,
        skipped={
            "query": _link_skips(q_set) + res.query_skipped,
            "gallery": _link_skips(g_set) + res.gallery_skipped,
        },
        stats={**res.stats, "search_seconds": res.stats["match_seconds"]},
    )
    if evaluate:
        run.metrics = evaluate_rankings(
            res.rankings(),
            [q_set.labels[i] for i in res.query_indices],
            [g_set.labels[i] for i in res.gallery_indices],
            run.query_names,
        )
    return run


_NEEDS_LABELS = (
    "evaluation needs labels for queries and gallery: put images in class folders "
    "(query/<label>/x.jpg) or pass a path,label CSV (--query-labels / --gallery-labels)"
)


@dataclass
class _GallerySide:
    """The gallery of a search: images to embed now, or a saved index that holds the vectors."""

    extractor: Extractor
    metric: str
    images: ImageSet | None = None
    index: GalleryIndex | None = None
    vectors: np.ndarray | None = None
    names: list[str] = field(default_factory=list)
    labels: list[str] | None = None
    skipped: list[Skipped] = field(default_factory=list)
    n_extracted: int = 0
    n_cached: int = 0
    kept: list[int] = field(default_factory=list)

    def readable(self) -> ImageSet:
        """The gallery images that have vectors, in vector order (for re-ranking by pixels)."""
        if self.images is None:
            assert self.index is not None
            root = self.index.root
            return ImageSet([root / n for n in self.names], root, self.labels, str(self.index.folder))
        assert self.images is not None
        return self.images.subset(self.kept)

    def reconcile(self, refine: Refinement) -> Refinement:
        """The search-time steps left to run against a saved index: a step the index already stores
        with the same settings (a preset used for both build and search) is not run twice; one
        with other settings is refused, since it would be applied on top of the stored one."""
        if self.images is not None or not self.index.post.active:
            return refine
        post = self.index.post
        changes: dict[str, Any] = {}
        if refine.whiten and post.whiten:
            if refine.whiten_dim != post.whiten_dim:
                raise InputError(
                    f"{self.index.folder} already stores whiten (to {post.whiten_dim or 'all'} dimensions, fitted "
                    f"at build); drop --whiten from the search, give the same --whiten-dim, or rebuild the index"
                )
            changes.update(whiten=False, whiten_dim=None)
        if refine.dba and post.dba:
            if (refine.dba, refine.alpha) != (post.dba, post.alpha):
                raise InputError(
                    f"{self.index.folder} already stores dba (k={post.dba}, alpha={post.alpha}, fitted at build); "
                    "drop --dba from the search or rebuild the index with the new settings"
                )
            changes["dba"] = 0
        return replace(refine, **changes) if changes else refine

    def index_queries(self, queries: np.ndarray, refine: Refinement) -> np.ndarray:
        """Queries in the index's space (its stored whitening applied)."""
        if self.images is not None or not self.index.post.active:
            return queries
        return self.index.post.queries(queries)

    def describe_refinement(self, refine: Refinement) -> dict[str, Any]:
        """The search-time steps, plus those stored with the index (under ``index``)."""
        out = refine.describe()
        if self.images is None and self.index.post.active:
            out["index"] = self.index.post.describe()
        return out

    def embed(self, opts: ExtractOptions) -> None:
        """The gallery's vectors: those of the saved index, or a folder's, extracted (or read from
        the cache) and held as an in-memory exact index, so both are searched the same way."""
        if self.index is None:
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
        else:
            self.n_cached = len(self.index)
        self.vectors, self.names, self.labels = self.index.search_vectors, self.index.names, self.index.labels

    def in_memory(self, vectors: np.ndarray) -> GalleryIndex:
        """An exact in-memory index over processed vectors (search-time whitening or DBA)."""
        return GalleryIndex.from_embeddings(vectors, self.names, self.labels, metric=self.metric)


def _index_side(index: GalleryIndex, model: str | Extractor | None, metric: str | None) -> _GallerySide:
    name = model.name if isinstance(model, Extractor) else model
    if name is not None and name != index.model["name"]:
        raise InputError(f"{index.folder} was built with model {index.model['name']!r}, not {name!r}")
    if metric is not None and metric != index.metric:
        raise InputError(f"{index.folder} was built for {index.metric} scores, not {metric}")
    return _GallerySide(extractor=index.extractor(), metric=index.metric, index=index)


def _index_device(opts: ExtractOptions) -> str:
    return resolve_device(opts.device).type


def evaluate(query: str | Path | ImageSet, gallery: str | Path | ImageSet, **kwargs: Any) -> SearchRun:
    """``search`` with ``evaluate=True``: top-1/3/10 accuracy and mAP are in ``run.metrics``."""
    return search(query, gallery, evaluate=True, **kwargs)
