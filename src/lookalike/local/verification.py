"""Spatial verification of image pairs: many pairs on every core, and re-ranking a global short list.

``verify_pairs`` matches each query against its candidates (ratio and mutual tests, MAGSAC++
homography) and counts inliers; ``rerank`` re-orders the top N of any global ranking by it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ..cache import default_cache_dir
from ..errors import InputError
from ..extract import ExtractOptions
from ..images import ImageSet
from .detectors import Detector, create_detector
from .extraction import extract_features
from .keypoints import Features
from .matching import MatchOptions, verify
from .parallel import parallel_map, worker_count

DEFAULT_MIN_INLIERS = 10


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
