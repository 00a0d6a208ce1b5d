"""Re-rankers: they re-order each query's short list after the search. k-reciprocal re-ranking
works on neighbour lists from the blocked exact search (bounded memory, never a dense gallery x
gallery matrix); spatial verification matches local features and counts RANSAC inliers.

Every re-ranker answers one small protocol (:class:`Reranker`) and is chosen by name through
``RERANKERS``; its factory takes the search's :class:`RerankInputs` and its own options.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Protocol

import numpy as np
from scipy import sparse

from .errors import InputError
from .knn import topk
from .registry import Registry

if TYPE_CHECKING:
    from .extract import ExtractOptions
    from .images import ImageSet
    from .local.shortlist import DescriptorVotes


class Reranker(Protocol):
    """Re-orders candidate lists: ``rerank(query_rows, candidates) -> (indices, scores)``, best
    first; ``score_name`` says what the new scores are."""

    score_name: str

    def rerank(self, query_rows: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class RerankInputs:
    """What a search hands a re-ranker: the (processed) query and gallery vectors, the images in
    vector order (for pixel-level re-rankers), how to read them, and how deep to re-rank."""

    queries: np.ndarray
    gallery: np.ndarray
    query_set: ImageSet
    gallery_set: ImageSet
    options: ExtractOptions
    top: int


RERANKERS: Registry[Reranker] = Registry("re-ranking")


class KReciprocal:
    """k-reciprocal re-ranking (Zhong et al., CVPR 2017) of candidate lists.

    Candidates are re-ordered by ``(1 - lambda) * Jaccard distance of k-reciprocal sets +
    lambda * original distance``. The original distance is the squared Euclidean distance of the
    unit vectors, halved (orthogonal features sit at 1). Neighbour lists (k1 + 1 per image) come
    from the blocked exact search over queries and gallery together, once, so memory grows with
    (n_queries + n_gallery) x k1, never n^2; the sparse k-reciprocal vectors are built only for
    the queries, their candidates and the neighbours local expansion (k2) needs.
    """

    score_name = "k-reciprocal distance"

    def __init__(
        self, queries: np.ndarray, gallery: np.ndarray, k1: int = 20, k2: int = 6, lambda_value: float = 0.3
    ) -> None:
        if k1 < 1 or k2 < 1 or not 0.0 <= lambda_value <= 1.0:
            raise InputError(
                f"k-reciprocal needs k1, k2 >= 1 and 0 <= lambda <= 1 (got {k1}, {k2}, {lambda_value})"
            )
        self.k1, self.k2, self.lambda_value = k1, k2, lambda_value
        self.n_q = len(queries)
        self.everything = np.vstack([np.asarray(queries, np.float32), np.asarray(gallery, np.float32)])
        self.ranks, _ = topk(self.everything, self.everything, k1 + 1)
        self.half = int(np.around(k1 / 2.0))
        self._v: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._v_qe: dict[int, dict[int, float]] = {}

    def _distance(self, i: int, cols: np.ndarray) -> np.ndarray:
        return np.maximum(2.0 - 2.0 * (self.everything[cols] @ self.everything[i]), 0.0) / 2.0

    def _reciprocal(self, i: int, depth: int) -> np.ndarray:
        forward = self.ranks[i, : depth + 1]
        return forward[np.any(self.ranks[forward, : depth + 1] == i, axis=1)]

    def _v_row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Sparse k-reciprocal vector of image i: weights exp(-distance) over its expanded set."""
        if i not in self._v:
            core = self._reciprocal(i, self.k1)
            expansion = [core]
            for c in core:
                near = self._reciprocal(int(c), self.half)
                if len(np.intersect1d(near, core)) > 2.0 / 3.0 * len(near):
                    expansion.append(near)
            cols = np.unique(np.concatenate(expansion))
            weight = np.exp(-self._distance(i, cols))
            self._v[i] = (cols, weight / weight.sum())
        return self._v[i]

    def _v_qe_row(self, i: int) -> dict[int, float]:
        """Local query expansion: the mean of the k-reciprocal vectors of i's k2 nearest images."""
        if i not in self._v_qe:
            acc: dict[int, float] = {}
            for j in self.ranks[i, : self.k2]:
                cols, vals = self._v_row(int(j))
                for c, v in zip(cols.tolist(), vals.tolist(), strict=True):
                    acc[c] = acc.get(c, 0.0) + v / self.k2
            self._v_qe[i] = acc
        return self._v_qe[i]

    def _matrix(self, rows: list[int]) -> sparse.csr_matrix:
        data, indices, indptr = [], [], [0]
        for i in rows:
            acc = self._v_qe_row(i)
            keys = np.fromiter(acc, dtype=np.int64, count=len(acc))
            order = np.argsort(keys)
            indices.append(keys[order])
            data.append(np.fromiter(acc.values(), dtype=np.float64, count=len(acc))[order])
            indptr.append(indptr[-1] + len(acc))
        shape = (len(rows), len(self.everything))
        return sparse.csr_matrix(
            (np.concatenate(data), np.concatenate(indices), np.array(indptr)), shape=shape
        )

    def rerank(self, query_rows: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Re-order ``candidates`` (len(query_rows), N gallery indices) by the re-ranking distance;
        returns (indices, distances), best first, ties by lower gallery index."""
        candidates = np.asarray(candidates, dtype=np.int64)
        if candidates.size == 0:
            return candidates, np.zeros(candidates.shape, np.float32)
        n_cand = candidates.shape[1]
        q_rows = self._matrix([int(i) for i in query_rows for _ in range(n_cand)])
        c_rows = self._matrix([int(self.n_q + c) for c in candidates.ravel()])
        shared = np.asarray(q_rows.minimum(c_rows).sum(axis=1)).reshape(candidates.shape)
        jaccard = 1.0 - shared / (2.0 - shared)
        original = np.stack(
            [self._distance(int(i), self.n_q + row) for i, row in zip(query_rows, candidates, strict=True)]
        )
        final = (1.0 - self.lambda_value) * jaccard + self.lambda_value * original
        order = np.lexsort((candidates, final), axis=1)
        return np.take_along_axis(candidates, order, axis=1), np.take_along_axis(final, order, axis=1).astype(
            np.float32
        )


def k_reciprocal_rerank(
    queries: np.ndarray,
    gallery: np.ndarray,
    candidates: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """Re-order each query's gallery ``candidates`` by k-reciprocal re-ranking (see KReciprocal)."""
    reranker = KReciprocal(queries, gallery, k1, k2, lambda_value)
    return reranker.rerank(np.arange(len(queries)), candidates)


@RERANKERS.register("k-reciprocal", description="k-reciprocal re-ranking (Zhong et al. 2017) of the vectors")
def _k_reciprocal(inputs: RerankInputs, k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> KReciprocal:
    return KReciprocal(inputs.queries, inputs.gallery, k1, k2, lambda_value)


FUSIONS = ("gated", "weighted", "rank")
MAX_VOTE_DESCRIPTORS = 4_000_000  # the descriptor-vote index holds them as float32: 2 GB of 128-d SIFT


def fuse(
    global_scores: np.ndarray,
    inliers: np.ndarray,
    verified_depth: int,
    *,
    fusion: str = "gated",
    min_inliers: int = 10,
    weight: float = 1.0,
    saturation: float = 20.0,
) -> np.ndarray:
    """One score per candidate (higher is better) from its global score and verified inliers.

    ``global_scores`` (n_q, k) are similarities, best first along each row; ``inliers`` (n_q, k)
    count for the first ``verified_depth`` columns (later ones are unverified). v = inliers when at
    least ``min_inliers`` (fewer cannot tell a copy from chance), else 0. ``gated``: v + (1 + s) / 2
    with s the similarity clipped to [-1, 1], so every verified candidate ranks above every
    unverified one, by inliers, then by similarity. ``weighted``: s + weight * v / (v + saturation),
    a soft bonus that a clearly better global match can outweigh. ``rank``: v + 1 - r / k with r the
    0-based global rank (scores not needed: the fusion of :func:`lookalike.local.rerank`)."""
    if fusion not in FUSIONS:
        raise InputError(f"fusion must be one of {', '.join(FUSIONS)}, got {fusion!r}")
    global_scores = np.asarray(global_scores, dtype=np.float64)
    n_q, k = global_scores.shape
    v = np.zeros((n_q, k), dtype=np.float64)
    head = np.asarray(inliers, dtype=np.float64)[:, :verified_depth]
    v[:, : head.shape[1]] = np.where(head >= max(min_inliers, 1), head, 0.0)
    if fusion == "gated":
        return v + (1.0 + np.clip(global_scores, -1.0, 1.0)) / 2.0
    if fusion == "weighted":
        return global_scores + weight * v / (v + saturation)
    return v + 1.0 - np.arange(k, dtype=np.float64) / max(k, 1)


@dataclass
class SpatialVerification:
    """Re-ranking of a deep short list by local features (SURF, SIFT) and robust homography inliers.

    Detection: ``max_keypoints`` per image (None: all) chosen by ``selection``, ``threshold`` (SIFT's
    contrast threshold, SURF's Hessian threshold; None: the detector's default), images smaller
    than ``min_side`` enlarged (see :class:`lookalike.local.Detector`). Matching: Lowe's ``ratio``
    test (and the ``mutual`` check when on). Cost: with ``votes`` > 0 pairs are first screened by
    descriptor votes (:class:`lookalike.local.shortlist.DescriptorVotes`) and not even matched
    below ``votes``; pairs with fewer than ``min_matches`` matches are not fitted; a query stops
    once ``early_exit`` (0: never) candidates have ``confident`` inliers. Fitting: a homography by
    ``estimator`` (ransac, magsac) with ``ransac_threshold`` pixels; ``min_inliers`` make a pair
    verified. Features are extracted once per image: kept in memory across queries and calls,
    and in the on-disk local-feature cache. Scores fuse the global similarity (the dot product
    of the vectors, when given) and the inliers by ``fusion`` (see :func:`fuse`)."""

    query_set: ImageSet
    gallery_set: ImageSet
    method: str
    top: int
    options: ExtractOptions
    queries: np.ndarray | None = None
    gallery: np.ndarray | None = None
    # defaults measured on crop-copies and disc-copies (benchmarks/verify.py)
    max_keypoints: int | None = None
    selection: str = "strongest"
    threshold: float | None = None
    min_side: int = 0
    ratio: float = 0.75
    mutual: bool = False
    estimator: str = "magsac"
    ransac_threshold: float = 5.0
    min_inliers: int = 10
    min_matches: int = 10
    early_exit: int = 0
    confident: int = 30
    votes: int = 4
    fusion: str = "gated"
    weight: float = 1.0

    def __post_init__(self) -> None:
        from .local import MatchOptions
        from .local.detectors import DETECTORS
        from .local.shortlist import FeatureMemory, VerifyStats

        if self.top < 1 or self.min_inliers < 0 or self.early_exit < 0 or self.confident < 1 or self.votes < 0:
            raise InputError(
                f"spatial verification needs top >= 1, min_inliers, early_exit, votes >= 0 and confident >= 1 "
                f"(got {self.top}, {self.min_inliers}, {self.early_exit}, {self.votes}, {self.confident})"
            )
        if self.fusion not in FUSIONS:
            raise InputError(f"fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")
        threshold_option = {"sift": "contrast_threshold", "surf": "threshold"}.get(self.method, "threshold")
        # the detector class itself, not create_detector: there None means "the default", here "all"
        options = {"selection": self.selection, "min_side": self.min_side, threshold_option: self.threshold}
        self.detector = DETECTORS.get(self.method).factory(
            max_keypoints=self.max_keypoints, **{k: v for k, v in options.items() if v is not None}
        )
        self.match_options = MatchOptions(
            ratio=self.ratio,
            mutual=self.mutual,
            estimator=self.estimator,
            ransac_threshold=self.ransac_threshold,
            min_matches=max(4, min(self.min_matches, max(self.min_inliers, 4))),
        )
        opts = self.options
        if opts.use_cache and opts.cache_dir is None:
            from .cache import default_cache_dir

            opts = replace(opts, cache_dir=default_cache_dir())
        self.stats = VerifyStats()
        self._votes: DescriptorVotes | None = None
        self.gallery_features = FeatureMemory(self.detector, self.gallery_set, opts, "gallery", self.stats)
        self.query_features = FeatureMemory(self.detector, self.query_set, opts, "queries", self.stats)

    @property
    def score_name(self) -> str:
        return f"{self.method} inliers + {self.fusion} fusion"

    def describe(self) -> dict:
        """The settings, as plain data (for run summaries)."""
        return {
            "method": self.method,
            "top": self.top,
            "detector": self.detector.describe(),
            "matching": self.match_options.as_dict(),
            "min_inliers": self.min_inliers,
            "early_exit": self.early_exit,
            "confident": self.confident,
            "votes": self.votes,
            "fusion": self.fusion,
            "weight": self.weight,
        }

    def verify(self, query_rows: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Inliers (shaped like ``candidates``) of each row's first ``top`` candidates (gallery
        indices, -1: none) against the query; 0 for the rest and for pairs not fitted."""
        from .local.shortlist import verify_short_lists

        candidates = np.asarray(candidates, dtype=np.int64)
        rows = np.asarray(query_rows, dtype=np.int64)
        if candidates.ndim != 2 or len(candidates) != len(rows):
            raise InputError(f"candidates must be (n_queries, k), one row per query, got {candidates.shape}")
        depth = min(self.top, candidates.shape[1])
        inliers = np.zeros(candidates.shape, dtype=np.int32)
        if len(rows) and depth:
            q_feats = self.query_features.get(rows.tolist())
            g_feats = self.gallery_features.get(candidates[:, :depth].ravel().tolist())
            queries = [q_feats.get(int(i)) for i in rows]
            skip = None
            index = self._vote_index(g_feats) if self.votes else None
            if index is not None:
                skip = index.counts(queries, candidates[:, :depth]) < self.votes
            inliers[:, :depth], _ = verify_short_lists(
                queries,
                g_feats,
                candidates[:, :depth],
                self.detector.binary,
                self.match_options,
                early_exit=self.early_exit,
                confident=self.confident,
                workers=self.options.num_workers,
                progress=self.options.progress,
                stats=self.stats,
                desc=f"{self.method} verification",
                skip=skip,
            )
        return inliers

    def _vote_index(self, features: dict) -> DescriptorVotes | None:
        """The descriptor-vote index over the gallery images seen so far (rebuilt when new ones
        come); None above MAX_VOTE_DESCRIPTORS descriptors."""
        from .local.shortlist import DescriptorVotes

        wanted = {j for j, f in features.items() if f is not None and len(f)}
        if self._votes is None or not wanted <= self._votes.ids:
            known = self.gallery_features.known()
            if sum(len(f) for f in known.values() if f is not None) > MAX_VOTE_DESCRIPTORS:
                return None  # too big to hold in memory: every pair is matched instead
            self._votes = DescriptorVotes(known)
        return self._votes

    def rerank(self, query_rows: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Verify the first ``top`` candidates of each row and re-order the whole row by the
        fused score (see :func:`fuse`); returns (indices, scores), best first, -1 padding last."""
        candidates = np.asarray(candidates, dtype=np.int64)
        rows = np.asarray(query_rows, dtype=np.int64)
        inliers = self.verify(rows, candidates)
        return self.order(rows, candidates, inliers)

    def order(
        self, query_rows: np.ndarray, candidates: np.ndarray, inliers: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows of ``candidates`` sorted by the fusion of global scores and ``inliers``."""
        depth = min(self.top, candidates.shape[1])
        fused = fuse(
            self._global_scores(query_rows, candidates),
            inliers,
            depth,
            fusion=self.fusion,
            min_inliers=self.min_inliers,
            weight=self.weight,
        )
        fused[candidates < 0] = -2.0  # padding: below every real fused score, and finite
        order = np.argsort(-fused, axis=1, kind="stable")
        return np.take_along_axis(candidates, order, axis=1), np.take_along_axis(fused, order, axis=1).astype(
            np.float32
        )

    def _global_scores(self, rows: np.ndarray, candidates: np.ndarray) -> np.ndarray:
        """Dot products of the query and candidate vectors (cosine for unit vectors); without
        vectors, a stand-in that only keeps the given order."""
        k = candidates.shape[1]
        if self.queries is None or self.gallery is None:
            return np.broadcast_to(1.0 - np.arange(k) / max(k, 1), candidates.shape).copy()
        q = np.asarray(self.queries, dtype=np.float64)[rows]
        g = np.asarray(self.gallery, dtype=np.float64)[np.maximum(candidates, 0)]
        return np.einsum("qd,qkd->qk", q, g)


# per method, what the re-ranker's factory uses instead of the detector's default threshold
# (SIFT: a contrast threshold of 0.02 finds more points on small, recompressed copies)
METHOD_DEFAULTS: dict[str, dict] = {"sift": {"threshold": 0.02}}
SPATIAL_DEFAULTS = {f.name: f.default for f in fields(SpatialVerification) if f.name in (
    "max_keypoints", "selection", "threshold", "min_side", "ratio", "mutual", "estimator", "ransac_threshold", "min_inliers",
    "min_matches", "early_exit", "confident", "votes", "fusion", "weight")}


def _spatial(method: str) -> Callable[..., SpatialVerification]:
    """The registry factory of spatial verification with ``method`` keypoints (its defaults:
    ``SPATIAL_DEFAULTS`` and the method's ``METHOD_DEFAULTS``)."""
    d = {**SPATIAL_DEFAULTS, **METHOD_DEFAULTS.get(method, {})}

    def factory(
        inputs: RerankInputs,
        max_keypoints: int | None = d["max_keypoints"],
        selection: str = d["selection"],
        threshold: float | None = d["threshold"],
        min_side: int = d["min_side"],
        ratio: float = d["ratio"],
        mutual: bool = d["mutual"],
        estimator: str = d["estimator"],
        ransac_threshold: float = d["ransac_threshold"],
        min_inliers: int = d["min_inliers"],
        min_matches: int = d["min_matches"],
        early_exit: int = d["early_exit"],
        confident: int = d["confident"],
        votes: int = d["votes"],
        fusion: str = d["fusion"],
        weight: float = d["weight"],
    ) -> SpatialVerification:
        return SpatialVerification(
            inputs.query_set,
            inputs.gallery_set,
            method,
            inputs.top,
            inputs.options,
            inputs.queries,
            inputs.gallery,
            max_keypoints=max_keypoints,
            selection=selection,
            threshold=threshold,
            min_side=min_side,
            ratio=ratio,
            mutual=mutual,
            estimator=estimator,
            ransac_threshold=ransac_threshold,
            min_inliers=min_inliers,
            min_matches=min_matches,
            early_exit=early_exit,
            confident=confident,
            votes=votes,
            fusion=fusion,
            weight=weight,
        )

    factory.__doc__ = f"spatial verification of the short list with {method.upper()} keypoints and RANSAC"
    return factory


for _method in ("surf", "sift"):
    RERANKERS.register(_method, _spatial(_method))
