"""Re-ranking of global-feature results: alpha query expansion, database-side augmentation and
k-reciprocal re-ranking. All work on top-k neighbour lists from the blocked exact search, so
memory stays bounded: never a dense gallery x gallery matrix."""

from __future__ import annotations

import numpy as np
from scipy import sparse

from .errors import InputError
from .postprocess import l2_normalise
from .search import topk

CHUNK = 4096  # rows per step when gathering (rows, k, d) neighbour blocks


def _weighted_neighbour_mean(
    vectors: np.ndarray, base: np.ndarray, idx: np.ndarray, sims: np.ndarray, alpha: float
) -> np.ndarray:
    """``normalise(vectors + sum_j max(s_j, 0)^alpha * base[idx_j])`` in chunks of rows."""
    out = np.empty_like(vectors, dtype=np.float32)
    weights = np.clip(sims, 0.0, None) ** alpha
    for s in range(0, len(vectors), CHUNK):
        gathered = base[idx[s : s + CHUNK]]
        out[s : s + CHUNK] = vectors[s : s + CHUNK] + np.einsum(
            "nk,nkd->nd", weights[s : s + CHUNK], gathered
        )
    return l2_normalise(out)


def alpha_query_expansion(queries: np.ndarray, gallery: np.ndarray, k: int, alpha: float = 3.0) -> np.ndarray:
    """alpha-QE (Radenovic et al., 2018): each query becomes the normalised sum of itself and its
    top results, weighted by similarity^alpha. ``k`` counts the query itself, as DBA counts the
    image itself, so k = 1 leaves queries unchanged."""
    if k < 1:
        raise InputError(f"query expansion k must be at least 1, got {k}")
    if k == 1:
        idx = np.zeros((len(queries), 0), dtype=np.int64)
        sims = np.zeros((len(queries), 0), dtype=np.float32)
    else:
        idx, sims = topk(queries, gallery, k - 1)
    return _weighted_neighbour_mean(np.asarray(queries, np.float32), gallery, idx, sims, alpha)


def database_augmentation(gallery: np.ndarray, k: int, alpha: float = 3.0) -> np.ndarray:
    """DBA: each gallery vector becomes the similarity^alpha-weighted mean of its k nearest
    gallery vectors (itself first), which pulls views of the same thing together."""
    if k < 1:
        raise InputError(f"DBA k must be at least 1, got {k}")
    gallery = np.asarray(gallery, np.float32)
    if k == 1:
        return l2_normalise(gallery)
    idx, sims = topk(gallery, gallery, k)
    return _weighted_neighbour_mean(np.zeros_like(gallery), gallery, idx, sims, alpha)


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
