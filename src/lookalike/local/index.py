"""The gallery index of a local-feature method: keypoints and descriptors searched by verification.

A local method (SURF, SIFT, ORB) has no vector per image, so its gallery is a list of
:class:`~lookalike.local.keypoints.Features`, and a search verifies every query against every
gallery image (MAGSAC++ homography inliers). :class:`LocalFeatureIndex` answers the same calls the
pipeline makes of a :class:`~lookalike.index.GalleryIndex` (``search``, ``rankings``, ``names``,
``labels``, ``metric``), so a local method is one more kind of index behind one search path.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import InputError, NothingToProcessError
from ..extract import ExtractOptions, Skipped
from ..images import ImageSet
from .detectors import Detector
from .extraction import FeatureSet, extract_features
from .keypoints import Features
from .matching import MatchOptions
from .verification import _resolve, verify_pairs


def rank_by_verification(inliers: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Per row, column positions by inliers (desc), then good matches (desc), then position (asc)."""
    inliers, good = np.atleast_2d(inliers), np.atleast_2d(good)
    position = np.broadcast_to(np.arange(inliers.shape[1]), inliers.shape)
    return np.lexsort((position, -good.astype(np.int64), -inliers.astype(np.int64)), axis=1)


@dataclass
class Verified:
    """Every (query, gallery) pair of one search verified: RANSAC inliers and good matches, (n_q, n_g)."""

    inliers: np.ndarray
    good: np.ndarray

    def order(self) -> np.ndarray:
        """The whole gallery ranked for each query, best first."""
        return rank_by_verification(self.inliers, self.good)


@dataclass
class LocalFeatureIndex:
    """Local features of the readable gallery images (``features[i]`` is ``names[i]``), searched by
    verifying each query against every image: score = inliers, ties by good matches, then order.

    ``exhaustive``: a search verifies the whole gallery whatever ``k`` is, so the full ranking an
    evaluation needs costs nothing more than the short list."""

    detector: Detector
    features: list[Features]
    names: list[str]
    labels: list[str] | None = None
    match_options: MatchOptions = field(default_factory=MatchOptions)
    workers: int | None = None
    progress: bool = False

    metric: ClassVar[str] = "inliers"
    exhaustive: ClassVar[bool] = True

    @classmethod
    def from_feature_set(
        cls,
        detector: Detector,
        found: FeatureSet,
        names: Sequence[str],
        labels: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> LocalFeatureIndex:
        """The index of the images of ``found`` that have features (``names``/``labels`` are those of
        the whole image set, in its order)."""
        keep = found.readable
        return cls(
            detector,
            [found.features[i] for i in keep],
            [names[i] for i in keep],
            None if labels is None else [labels[i] for i in keep],
            **kwargs,
        )

    def __len__(self) -> int:
        return len(self.features)

    def describe(self) -> dict[str, Any]:
        """The method, its options and the matching settings (a run's ``model``)."""
        return {**self.detector.describe(), "matching": self.match_options.as_dict()}

    def verify(self, queries: Sequence[Features]) -> Verified:
        """Every query verified against every gallery image, on every core."""
        everything = np.arange(len(self.features))
        inl_rows, good_rows = verify_pairs(
            queries,
            self.features,
            [everything] * len(queries),
            self.detector.binary,
            self.match_options,
            workers=self.workers,
            progress=self.progress,
            desc=f"{self.detector.name} matching",
        )
        shape = (len(queries), len(self.features))
        if not queries:
            return Verified(np.zeros(shape, np.int32), np.zeros(shape, np.int32))
        return Verified(np.stack(inl_rows), np.stack(good_rows))

    def search(self, queries: Sequence[Features], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Gallery positions (n, min(k, len)) and inlier counts of each query, best first."""
        return self.top(self.verify(queries), k)

    def top(self, verified: Verified, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``k`` of the rankings of a :meth:`verify` result, with their inliers as scores."""
        order = verified.order()[:, : min(k, len(self.features))]
        return order, np.take_along_axis(verified.inliers, order, axis=1).astype(np.float32)

    def rankings(self, queries: Sequence[Features], head: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Full rankings for the metrics, in ``(first_query, order)`` blocks: ``head`` itself when it
        ranks the whole gallery (the search was exhaustive), else a fresh full search."""
        yield 0, head if head.shape[1] == len(self.features) else self.search(queries, len(self.features))[0]


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
        return Verified(self.inliers, self.good_matches).order()

    def rankings(self) -> Iterator[tuple[int, np.ndarray]]:
        """Full rankings in the ``(first_query, order)`` blocks ``metrics.evaluate_rankings`` takes."""
        yield 0, self.order()


def readable_or_fail(found: FeatureSet, images: ImageSet, label: str) -> np.ndarray:
    """Indices of the images of ``images`` that have features; none at all is an error."""
    if len(found.readable) == 0:
        raise NothingToProcessError(
            f"{label} {images.source}: none of the {len(images)} image(s) could be read"
        )
    return found.readable


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
    ``options.cache_dir`` unless ``options.use_cache`` is off. (``lookalike.search`` with a local
    ``model`` runs the same :class:`LocalFeatureIndex`.)
    """
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    detector, opts = _resolve(method, method_options, options)
    q_set = query if isinstance(query, ImageSet) else ImageSet.from_path(query)
    g_set = gallery if isinstance(gallery, ImageSet) else ImageSet.from_path(gallery)
    t0 = time.perf_counter()
    q_feats = extract_features(detector, q_set, opts, label="queries")
    g_feats = extract_features(detector, g_set, opts, label="gallery")
    q_idx = readable_or_fail(q_feats, q_set, "queries")
    g_idx = readable_or_fail(g_feats, g_set, "gallery")
    index = LocalFeatureIndex.from_feature_set(
        detector,
        g_feats,
        g_set.names,
        match_options=match_options or MatchOptions(),
        workers=opts.num_workers,
        progress=opts.progress,
    )
    t1 = time.perf_counter()
    verified = index.verify([q_feats.features[i] for i in q_idx])
    t2 = time.perf_counter()
    order, scores = index.top(verified, k)
    return LocalResult(
        query_names=[q_set.names[i] for i in q_idx],
        gallery_names=index.names,
        indices=order,
        scores=scores,
        good=np.take_along_axis(verified.good, order, axis=1),
        inliers=verified.inliers,
        good_matches=verified.good,
        query_indices=q_idx,
        gallery_indices=g_idx,
        query_skipped=q_feats.skipped,
        gallery_skipped=g_feats.skipped,
        method=index.describe(),
        stats={
            "extracted": {"query": q_feats.n_extracted, "gallery": g_feats.n_extracted},
            "from_cache": {"query": q_feats.n_cached, "gallery": g_feats.n_cached},
            "extract_seconds": round(t1 - t0, 3),
            "match_seconds": round(t2 - t1, 3),
            "pairs": int(verified.inliers.size),
        },
    )
