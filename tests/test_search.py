"""Block-wise exact search against a brute-force reference, ties and metrics."""

from __future__ import annotations

import numpy as np
import pytest

from lookalike import InputError, topk
from lookalike.knn import full_rankings


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _reference(q: np.ndarray, g: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    q64, g64 = q.astype(np.float64), g.astype(np.float64)
    if metric == "cosine":
        score = q64 @ g64.T
        order = np.argsort(-score, axis=1, kind="stable")[:, :k]
    else:
        score = np.sqrt(((q64[:, None, :] - g64[None, :, :]) ** 2).sum(-1))
        order = np.argsort(score, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(score, order, axis=1)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize(("qb", "gb"), [(7, 13), (256, 16384), (1, 1000)])
def test_blocked_topk_equals_brute_force(metric: str, qb: int, gb: int) -> None:
    rng = np.random.default_rng(3)
    q, g = _unit(rng, 50, 16), _unit(rng, 301, 16)
    if metric == "euclidean":
        g *= rng.uniform(0.5, 2.0, size=(301, 1)).astype(np.float32)  # not normalised
    idx, score = topk(q, g, 12, metric, query_block=qb, gallery_block=gb)
    ref_idx, ref_score = _reference(q, g, 12, metric)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(score, ref_score, atol=1e-5)


def test_ties_break_by_lower_index_whatever_the_blocks() -> None:
    rng = np.random.default_rng(0)
    base = _unit(rng, 5, 8)
    gallery = np.repeat(base, 7, axis=0)[rng.permutation(35)]  # 7 exact copies of 5 vectors
    queries = base[:3]
    results = [
        topk(queries, gallery, 10, query_block=qb, gallery_block=gb)[0]
        for qb, gb in [(1, 3), (2, 5), (256, 16384)]
    ]
    for other in results[1:]:
        np.testing.assert_array_equal(results[0], other)
    for row, q in zip(results[0], queries, strict=True):
        copies = np.flatnonzero(np.isclose(gallery @ q, 1.0, atol=1e-5))
        assert row[:7].tolist() == sorted(copies.tolist())


def test_k_larger_than_gallery_and_bad_arguments() -> None:
    rng = np.random.default_rng(1)
    q, g = _unit(rng, 2, 4), _unit(rng, 3, 4)
    idx, _ = topk(q, g, 10)
    assert idx.shape == (2, 3)
    with pytest.raises(InputError, match="metric"):
        topk(q, g, 2, "manhattan")
    with pytest.raises(InputError, match="shapes"):
        topk(q, _unit(rng, 3, 5), 2)
    with pytest.raises(InputError, match="at least 1"):
        topk(q, g, 0)


def test_full_rankings_agree_with_topk() -> None:
    rng = np.random.default_rng(2)
    q, g = _unit(rng, 20, 8), _unit(rng, 90, 8)
    idx, _ = topk(q, g, 90)
    blocks = list(full_rankings(q, g, max_elements=200))
    assert len(blocks) > 1
    order = np.vstack([b for _, b in blocks])
    np.testing.assert_array_equal(order, idx)
