"""Retrieval by local features: rank a gallery by verified matches, or re-rank a global short list.

``local_search`` extracts (or loads from the cache) every image's keypoints and descriptors,
matches each query against each gallery image, fits a homography by MAGSAC++ and ranks the
gallery by RANSAC inliers (ties by good matches, then gallery order). ``rerank`` re-orders the
top N of any global ranking by the same spatial verification. Both use every core and show
progress; unreadable images are skipped and reported, as in the global pipeline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..cache import default_cache_dir, file_key
from ..errors import ImageError, InputError, NothingToProcessError
from ..extract import ExtractOptions, Skipped
from ..images import ImageSet, load_image
from .cache import DescriptorCache
from .detectors import Detector, create_detector
from .keypoints import Features
from .matching import MatchOptions, verify
from .parallel import parallel_map, worker_count

log = logging.getLogger("lookalike")

DEFAULT_MIN_INLIERS = 10


# ---------------------------------------------------------------- features of an image set


@dataclass
class FeatureSet:
    """Local features of an image set: ``features[i]`` for ``images.paths[i]``, None when unreadable
    (or not asked for)."""

    features: list[Features | None]
    skipped: list[Skipped] = field(default_factory=list)
    n_cached: int = 0
    n_extracted: int = 0

    @property
    def readable(self) -> np.ndarray:
        """Indices of the images that have features."""
        return np.array([i for i, f in enumerate(self.features) if f is not None], dtype=np.int64)


def _extract_one(detector: Detector, path: Path, max_pixels: int) -> tuple[Features | None, str]:
    try:
        img = load_image(path, max_pixels=max_pixels, draft_size=detector.max_side)
    except ImageError as exc:
        return None, exc.reason
    return detector.features(img), ""


def extract_features(
    detector: Detector,
    images: ImageSet,
    options: ExtractOptions | None = None,
    *,
    label: str = "images",
    indices: Sequence[int] | None = None,
) -> FeatureSet:
    """Keypoints and descriptors of ``images`` (only ``indices`` when given), from the cache when
    there, else extracted on every core and cached. Unreadable files are logged and listed in
    ``skipped`` (or raise ImageError under ``options.strict``)."""
    opts = options or ExtractOptions()
    wanted = range(len(images)) if indices is None else sorted(set(int(i) for i in indices))
    cache = (
        DescriptorCache(opts.cache_dir, detector) if opts.use_cache and opts.cache_dir is not None else None
    )
    out = FeatureSet([None] * len(images))
    keys: dict[int, str | None] = {}
    todo = []
    for i in wanted:
        keys[i] = file_key(images.paths[i])
        cached = cache.get(keys[i]) if cache is not None and keys[i] else None
        if cached is not None:
            out.features[i] = cached
            out.n_cached += 1
        else:
            todo.append(i)

    def store(j: int, result: tuple[Features | None, str]) -> None:
        i = todo[j]
        feats, reason = result
        if feats is None:
            if opts.strict:
                raise ImageError(images.paths[i], reason)
            log.warning("skipped %s: %s", images.paths[i], reason)
            out.skipped.append(Skipped(images.names[i], reason))
            return
        out.features[i] = feats
        out.n_extracted += 1
        key = keys[i]
        if cache is not None and key:
            cache.put(key, feats)

    if todo:
        parallel_map(
            lambda i: _extract_one(detector, images.paths[i], opts.max_pixels),
            todo,
            workers=worker_count(opts.num_workers, len(todo)),
            desc=f"{detector.name} {label}",
            unit="img",
            progress=opts.progress,
            on_result=store,
        )
    return out


# ---------------------------------------------------------------- matching many pairs


PAIRS_PER_TASK = 64


def verify_pairs(
    queries: Sequence[Features],
    gallery: Sequence[Features | None],
    candidates: Sequence[np.ndarray],
    binary: bool,
    match_options: MatchOptions,
    *,
    workers: int | None,
    progress: bool,
    desc: str = "matching",
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """For each query q, (inliers, good matches) against ``gallery[j]`` for j in ``candidates[q]``
    (0 and 0 where the gallery image has no features, or j is -1: no result). The pairs are cut into tasks of at most
    PAIRS_PER_TASK, so one query against a big gallery still uses every core."""
    inliers = [np.zeros(len(c), dtype=np.int32) for c in candidates]
    good = [np.zeros(len(c), dtype=np.int32) for c in candidates]
    tasks = [(q, start) for q, c in enumerate(candidates) for start in range(0, len(c), PAIRS_PER_TASK)]

    def run(task: tuple[int, int]) -> None:
        q, start = task
        for n in range(start, min(start + PAIRS_PER_TASK, len(candidates[q]))):
            j = candidates[q][n]
            g = gallery[j] if j >= 0 else None
            if g is not None and len(g) and len(queries[q]):
                result = verify(queries[q], g, binary, match_options)
                inliers[q][n], good[q][n] = result.inliers, result.good

    parallel_map(
        run,
        tasks,
        workers=worker_count(workers, len(tasks)),
        desc=desc,
        unit="pair",
        progress=progress,
        size_of=lambda task: min(PAIRS_PER_TASK, len(candidates[task[0]]) - task[1]),
    )
    return inliers, good


# ---------------------------------------------------------------- local search


@dataclass
class LocalResult:
    """A local-feature search: per readable query, gallery positions and scores best first.

    ``indices`` (n_queries, k) index ``gallery_names`` (the readable gallery images, in gallery
    order), ``scores`` are their RANSAC inlier counts and ``good`` their good-match counts.
    ``inliers`` and ``good_matches`` hold every (query, gallery) pair, for full rankings.
    ``query_indices`` / ``gallery_indices`` say which images of the input sets were readable.
    """

    query_names: list[str]
    gallery_names: list[str]
    indices: np.ndarray
    scores: np.ndarray
    good: np.ndarray
    inliers: np.ndarray
    good_matches: np.ndarray
    query_indices: np.ndarray
    gallery_indices: np.ndarray
    query_skipped: list[Skipped] = field(default_factory=list)
    gallery_skipped: list[Skipped] = field(default_factory=list)
    method: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def skipped(self) -> list[Skipped]:
        """Every unreadable image, queries first."""
        return self.query_skipped + self.gallery_skipped

    def order(self) -> np.ndarray:
        """The whole gallery ranked for each query: (n_queries, n_gallery) positions, best first."""
        return rank_by_verification(self.inliers, self.good_matches)

    def rankings(self) -> Iterator[tuple[int, np.ndarray]]:
        """Full rankings in the ``(first_query, order)`` blocks ``metrics.evaluate_rankings`` takes."""
        yield 0, self.order()


def rank_by_verification(inliers: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Per row, column positions by inliers (desc), then good matches (desc), then position (asc)."""
    inliers, good = np.atleast_2d(inliers), np.atleast_2d(good)
    position = np.broadcast_to(np.arange(inliers.shape[1]), inliers.shape)
    return np.lexsort((position, -good.astype(np.int64), -inliers.astype(np.int64)), axis=1)


def _resolve(
    method: str | Detector, method_options: dict[str, Any] | None, options: ExtractOptions | None
) -> tuple[Detector, ExtractOptions]:
    detector = method if isinstance(method, Detector) else create_detector(method, **(method_options or {}))
    if isinstance(method, Detector) and any(v is not None for v in (method_options or {}).values()):
        raise InputError("pass method options either in the Detector or in method_options, not both")
    opts = options or ExtractOptions()
    if opts.use_cache and opts.cache_dir is None:
        opts = replace(opts, cache_dir=default_cache_dir())
    return detector, opts


def _as_image_set(source: str | Path | ImageSet) -> ImageSet:
    return source if isinstance(source, ImageSet) else ImageSet.from_path(source)


def local_search(
    query: str | Path | ImageSet,
    gallery: str | Path | ImageSet,
    method: str | Detector = "surf",
    k: int = 10,
    options: ExtractOptions | None = None,
    *,
    method_options: dict[str, Any] | None = None,
    match_options: MatchOptions | None = None,
) -> LocalResult:
    """Rank ``gallery`` for every readable image of ``query`` by spatially verified local matches.

    ``method`` is surf, sift, orb (akaze where OpenCV has it) or a :class:`Detector`;
    ``method_options`` are its options (for example ``{"threshold": 2e-4, "upright": True}``).
    Score = RANSAC (MAGSAC++) homography inliers; ties are broken by good matches (ratio and
    mutual tests), then by gallery order. Gallery and query features are cached under
    ``options.cache_dir`` unless ``options.use_cache`` is off.
    """
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    detector, opts = _resolve(method, method_options, options)
    match_opts = match_options or MatchOptions()
    q_set, g_set = _as_image_set(query), _as_image_set(gallery)
    t0 = time.perf_counter()
    q_feats = extract_features(detector, q_set, opts, label="queries")
    g_feats = extract_features(detector, g_set, opts, label="gallery")
    q_idx, g_idx = q_feats.readable, g_feats.readable
    for name, idx, images in (("queries", q_idx, q_set), ("gallery", g_idx, g_set)):
        if len(idx) == 0:
            raise NothingToProcessError(
                f"{name} {images.source}: none of the {len(images)} image(s) could be read"
            )
    t1 = time.perf_counter()
    queries = [q_feats.features[i] for i in q_idx]
    gallery_feats = [g_feats.features[j] for j in g_idx]
    everything = np.arange(len(g_idx))
    inl_rows, good_rows = verify_pairs(
        queries,
        gallery_feats,
        [everything] * len(queries),
        detector.binary,
        match_opts,
        workers=opts.num_workers,
        progress=opts.progress,
        desc=f"{detector.name} matching",
    )
    inliers, good = np.stack(inl_rows), np.stack(good_rows)
    t2 = time.perf_counter()
    order = rank_by_verification(inliers, good)[:, : min(k, len(g_idx))]
    top_inliers = np.take_along_axis(inliers, order, axis=1)
    return LocalResult(
        query_names=[q_set.names[i] for i in q_idx],
        gallery_names=[g_set.names[j] for j in g_idx],
        indices=order,
        scores=top_inliers.astype(np.float32),
        good=np.take_along_axis(good, order, axis=1),
        inliers=inliers,
        good_matches=good,
        query_indices=q_idx,
        gallery_indices=g_idx,
        query_skipped=q_feats.skipped,
        gallery_skipped=g_feats.skipped,
        method={**detector.describe(), "matching": match_opts.as_dict()},
        stats={
            "extracted": {"query": q_feats.n_extracted, "gallery": g_feats.n_extracted},
            "from_cache": {"query": q_feats.n_cached, "gallery": g_feats.n_cached},
            "extract_seconds": round(t1 - t0, 3),
            "match_seconds": round(t2 - t1, 3),
            "pairs": int(inliers.size),
        },
    )


# ---------------------------------------------------------------- re-ranking a global short list


def rerank(
    query_set: ImageSet,
    gallery_set: ImageSet,
    indices: np.ndarray,
    scores: np.ndarray,
    method: str | Detector = "surf",
    top_n: int = 10,
    options: ExtractOptions | None = None,
    *,
    method_options: dict[str, Any] | None = None,
    match_options: MatchOptions | None = None,
    min_inliers: int = DEFAULT_MIN_INLIERS,
) -> tuple[np.ndarray, np.ndarray]:
    """Re-order the first ``top_n`` results of a global ranking by spatial verification.

    Row i of ``indices`` (n_queries, k) ranks ``gallery_set.paths`` for ``query_set.paths[i]``,
    best first, as any global search returns it; -1 marks "no result" padding and is never
    verified. ``scores`` is only checked for shape: the fusion uses ranks, so it works for
    similarities and distances alike.

    Score fusion: each of the first N = min(top_n, k) candidates is matched to the query and
    verified (MAGSAC++ homography); with v = its inlier count when v >= ``min_inliers``, else 0
    (too few inliers to tell a true match from chance), and r its 0-based rank in the global
    list of k, the new score is ``v + (1 - r / k)``. So verified candidates come first, by
    inliers; ties and unverified candidates keep their global order; results after the first N
    get v = 0 and stay where they were, below every verified one. Returns (new indices, new
    scores), rows sorted by the new score; a query or gallery image that cannot be read is left
    unverified (v = 0) and logged.
    """
    indices = np.asarray(indices)
    if indices.ndim != 2 or np.shape(scores) != indices.shape:
        raise InputError(
            f"indices and scores must be (n_queries, k) arrays of one shape, got {indices.shape} and {np.shape(scores)}"
        )
    if len(indices) != len(query_set):
        raise InputError(f"{len(indices)} rows of results for {len(query_set)} query images")
    if indices.size and (indices.min() < -1 or indices.max() >= len(gallery_set)):
        raise InputError(f"gallery indices must be in 0..{len(gallery_set) - 1} (or -1: no result)")
    if top_n < 1:
        raise InputError(f"top_n must be at least 1, got {top_n}")
    if min_inliers < 0:
        raise InputError(f"min_inliers must be 0 or more, got {min_inliers}")
    n_q, k = indices.shape
    n = min(top_n, k)
    rank_term = 1.0 - np.arange(k, dtype=np.float64) / max(k, 1)
    fused = np.broadcast_to(rank_term, (n_q, k)).copy()
    if n_q and n:
        detector, opts = _resolve(method, method_options, options)
        match_opts = match_options or MatchOptions()
        q_feats = extract_features(detector, query_set, opts, label="queries")
        g_feats = extract_features(
            detector,
            gallery_set,
            opts,
            label="gallery",
            indices=[j for j in indices[:, :n].ravel() if j >= 0],
        )
        rows = [i for i in range(n_q) if q_feats.features[i] is not None]
        inl_rows, _ = verify_pairs(
            [q_feats.features[i] for i in rows],
            g_feats.features,
            [indices[i, :n] for i in rows],
            detector.binary,
            match_opts,
            workers=opts.num_workers,
            progress=opts.progress,
            desc=f"{detector.name} re-ranking",
        )
        for i, inl in zip(rows, inl_rows, strict=True):
            fused[i, :n] += np.where(inl >= min_inliers, inl, 0)
    order = np.argsort(-fused, axis=1, kind="stable")
    return np.take_along_axis(indices, order, axis=1), np.take_along_axis(fused, order, axis=1)
