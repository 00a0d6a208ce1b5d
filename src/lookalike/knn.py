"""The k-nearest-neighbour kernel: exact top-k in blocks, bounded memory, deterministic ties.

Scores are cosine similarities (higher is better) or Euclidean distances (lower is better). Ties
are always broken by the lower gallery index, so results never depend on the block size.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .errors import InputError

METRICS = ("cosine", "euclidean")
QUERY_BLOCK = 256
GALLERY_BLOCK = 16_384
RANK_BLOCK_ELEMENTS = 16_000_000
RESCORE_ELEMENTS = 4_000_000


def _check(queries: np.ndarray, gallery: np.ndarray, metric: str) -> None:
    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
        raise InputError(f"feature shapes do not match: queries {queries.shape}, gallery {gallery.shape}")


def _goodness(q: np.ndarray, g: np.ndarray, g_sq: np.ndarray, metric: str) -> np.ndarray:
    """Higher-is-better block scores: cosine, or ``2 q.g - |g|^2`` (= |q|^2 - distance^2)."""
    dots = q @ g.T
    return dots if metric == "cosine" else 2.0 * dots - g_sq[None, :]


def _best_k(values: np.ndarray, index: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k best (value desc, index asc) of ``values`` with global ``index`` (same shape)."""
    if values.shape[1] > k:
        part = np.argpartition(-values, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(values, part, axis=1).min(axis=1)
        crowded = np.flatnonzero((values >= kth[:, None]).sum(axis=1) > k)
        for r in crowded:  # ties straddle the cut: keep the lowest indices among equals
            cand = np.flatnonzero(values[r] >= kth[r])
            order = np.lexsort((index[r, cand], -values[r, cand]))[:k]
            part[r] = cand[order]
        values = np.take_along_axis(values, part, axis=1)
        index = np.take_along_axis(index, part, axis=1)
    order = np.lexsort((index, -values), axis=1)
    return np.take_along_axis(values, order, axis=1), np.take_along_axis(index, order, axis=1)


def _exact_scores(q: np.ndarray, gallery: np.ndarray, cand: np.ndarray, metric: str) -> np.ndarray:
    """Float64 scores of each query row against its candidate rows ``gallery[cand]``, computed
    the same way wherever a vector sits in a block, so duplicates score exactly alike.
    Works in slices of queries so the (n, c, d) gather stays a few megabytes."""
    out = np.empty(cand.shape, dtype=np.float64)
    step = max(1, RESCORE_ELEMENTS // max(1, cand.shape[1] * gallery.shape[1]))
    for s in range(0, len(q), step):
        q64 = q[s : s + step].astype(np.float64)[:, None, :]
        g64 = gallery[cand[s : s + step]].astype(np.float64)
        if metric == "cosine":
            out[s : s + step] = (q64 * g64).sum(axis=-1)
        else:
            out[s : s + step] = -np.sqrt(((q64 - g64) ** 2).sum(axis=-1))
    return out


def topk(
    queries: np.ndarray,
    gallery: np.ndarray,
    k: int,
    metric: str = "cosine",
    *,
    query_block: int = QUERY_BLOCK,
    gallery_block: int = GALLERY_BLOCK,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest gallery rows of each query: (indices, scores), each (n_queries, k').

    ``k' = min(k, len(gallery))``. Memory is bounded by ``query_block x gallery_block`` scores.
    A float32 pass keeps 2k candidates per query; they are rescored in float64 so that the
    order, ties included, does not depend on how BLAS split the blocks.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    gallery = np.ascontiguousarray(gallery, dtype=np.float32)
    _check(queries, gallery, metric)
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    k = min(k, len(gallery))
    pool = min(2 * k, len(gallery))
    n_q = len(queries)
    out_idx = np.zeros((n_q, k), dtype=np.int64)
    out_score = np.zeros((n_q, k), dtype=np.float32)
    if k == 0 or n_q == 0:
        return out_idx, out_score
    g_sq = np.einsum("ij,ij->i", gallery, gallery)
    for q0 in range(0, n_q, query_block):
        q = queries[q0 : q0 + query_block]
        best_v = np.full((len(q), 0), -np.inf, dtype=np.float32)
        best_i = np.zeros((len(q), 0), dtype=np.int64)
        for g0 in range(0, len(gallery), gallery_block):
            g1 = min(g0 + gallery_block, len(gallery))
            vals = _goodness(q, gallery[g0:g1], g_sq[g0:g1], metric)
            idx = np.broadcast_to(np.arange(g0, g1, dtype=np.int64), vals.shape)
            vals, idx = _best_k(vals, idx, pool)
            best_v, best_i = _best_k(np.hstack([best_v, vals]), np.hstack([best_i, idx]), pool)
        exact, best_i = _best_k(_exact_scores(q, gallery, best_i, metric), best_i, k)
        out_idx[q0 : q0 + len(q)] = best_i
        out_score[q0 : q0 + len(q)] = exact if metric == "cosine" else -exact
    return out_idx, out_score


def full_rankings(
    queries: np.ndarray,
    gallery: np.ndarray,
    metric: str = "cosine",
    *,
    max_elements: int = RANK_BLOCK_ELEMENTS,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first_query, order)`` blocks: each row of ``order`` ranks the whole gallery,
    best first, ties by lower index (the same order :func:`topk` gives). For mAP."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    gallery = np.ascontiguousarray(gallery, dtype=np.float32)
    _check(queries, gallery, metric)
    g_sq = np.einsum("ij,ij->i", gallery, gallery)
    rows = max(1, max_elements // max(1, len(gallery)))
    for q0 in range(0, len(queries), rows):
        good = _goodness(queries[q0 : q0 + rows], gallery, g_sq, metric)
        yield q0, np.argsort(-good, axis=1, kind="stable")


def rankings_with_head(
    rankings: Iterator[tuple[int, np.ndarray]], head: np.ndarray
) -> Iterator[tuple[int, np.ndarray]]:
    """Full rankings whose first entries are each query's ``head`` row (the short list a search
    wrote, re-ranked or not; -1 padding ignored), followed by the rest of the gallery in its
    ranked order. Evaluating these scores exactly the written lists, ties included."""
    head = np.asarray(head, dtype=np.int64)
    for q0, orders in rankings:
        out = np.empty_like(orders)
        for row, order in enumerate(orders):
            first = head[q0 + row]
            first = first[first >= 0]
            rest = order[~np.isin(order, first, assume_unique=True)]
            out[row, : len(first)] = first
            out[row, len(first) :] = rest
        yield q0, out


def best_per_owner(
    owners: np.ndarray, scores: np.ndarray, k: int, higher_is_better: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(n, k) owners and their best scores, best first (-1 pads): each row of ``owners`` /
    ``scores`` (n, m) lists candidates, an owner possibly several times (the regions of one image,
    or one image found by several views of a query); an owner counts once, at its best score."""
    out_rows = np.full((len(owners), k), -1, dtype=np.int64)
    out_scores = np.zeros((len(owners), k), dtype=np.float32)
    for i in range(len(owners)):
        valid = owners[i] >= 0
        own, sc = owners[i][valid], scores[i][valid]
        order = np.argsort(-sc if higher_is_better else sc, kind="stable")
        own, sc = own[order], sc[order]
        _, first = np.unique(own, return_index=True)
        first = np.sort(first)[:k]  # each owner's best, in rank order
        out_rows[i, : len(first)], out_scores[i, : len(first)] = own[first], sc[first]
    return out_rows, out_scores
