"""Re-rankers: they re-order each query's short list after the search. k-reciprocal re-ranking
works on neighbour lists from the blocked exact search (bounded memory, never a dense gallery x
gallery matrix); spatial verification matches local features and counts RANSAC inliers.

Every re-ranker answers one small protocol (:class:`Reranker`) and is chosen by name through
``RERANKERS``; its factory takes the search's :class:`RerankInputs` and its own options.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
from scipy import sparse

from .errors import InputError
from .knn import topk
from .registry import Registry

if TYPE_CHECKING:
    from .extract import ExtractOptions
    from .images import ImageSet


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


@dataclass
class SpatialVerification:
    """Re-ranking of a short list by local features (SURF, SIFT, ORB) and RANSAC inliers; see
    :func:`lookalike.local.rerank` for how verified inliers and the global rank are fused."""

    query_set: ImageSet
    gallery_set: ImageSet
    method: str
    top: int
    options: ExtractOptions

    @property
    def score_name(self) -> str:
        return f"{self.method} inliers + rank fusion"

    def rerank(self, query_rows: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from .local import rerank

        queries = self.query_set.subset([int(i) for i in query_rows])
        zeros = np.zeros(candidates.shape, dtype=np.float32)
        return rerank(queries, self.gallery_set, candidates, zeros, self.method, self.top, self.options)


def _spatial(method: str) -> Callable[[RerankInputs], SpatialVerification]:
    """The registry factory of spatial verification with ``method`` keypoints."""

    def factory(inputs: RerankInputs) -> SpatialVerification:
        return SpatialVerification(inputs.query_set, inputs.gallery_set, method, inputs.top, inputs.options)

    factory.__doc__ = f"spatial verification of the short list with {method.upper()} keypoints and RANSAC"
    return factory


for _method in ("surf", "sift"):
    RERANKERS.register(_method, _spatial(_method))
