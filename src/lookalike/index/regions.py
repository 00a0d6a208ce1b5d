"""Search by regions: each gallery image is several region vectors, and its score is the best
similarity between any query region and any of its regions (see :mod:`lookalike.features.regions`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..knn import best_per_owner, rankings_with_head


@dataclass
class RegionIndex:
    """An index of region vectors (``inner`` holds ``regions`` consecutive rows per image) searched
    by image: the score of a gallery image is the best similarity between any of the query's
    ``query_regions`` vectors and any of its regions. ``search`` asks the inner index for
    ``k x regions`` region neighbours per query region, which always holds the exact top ``k``
    images (an image can fill at most ``regions`` places above another), so any backend, FAISS
    included, serves it."""

    inner: Any  # a GalleryIndex (or any object with search(queries, k) -> (rows, scores))
    regions: int
    query_regions: int = 1
    names: list[str] | None = None
    labels: list[str] | None = None

    exhaustive = False

    @property
    def metric(self) -> str:
        return self.inner.metric

    def __len__(self) -> int:
        return len(self.inner) // self.regions

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Gallery image rows (n, k) and their best region-pair similarities, best first; -1 pads.
        ``queries`` holds ``query_regions`` consecutive rows per query image."""
        n_q = len(queries) // self.query_regions
        k = min(k, len(self))
        rows, scores = self.inner.search(np.asarray(queries, dtype=np.float32), k * self.regions)
        owners = np.where(rows >= 0, rows // self.regions, -1).reshape(n_q, -1)
        scores = np.asarray(scores, dtype=np.float32).reshape(n_q, -1)
        return best_per_owner(owners, scores, k, higher_is_better=self.metric != "euclidean")

    def rankings(self, queries: np.ndarray, head: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Full rankings by the best region pair (exact, blocked over queries), ``head`` first."""
        vectors = np.asarray(self.inner.search_vectors, dtype=np.float32)
        gallery = vectors.reshape(len(self), self.regions, -1)
        flat_q = np.asarray(queries, dtype=np.float32).reshape(-1, self.query_regions, gallery.shape[2])

        def blocks() -> Iterator[tuple[int, np.ndarray]]:
            # unit vectors: the best region pair has the highest dot product for both metrics
            for q0 in range(0, len(flat_q), 64):
                block = flat_q[q0 : q0 + 64]
                best = np.empty((len(block), len(gallery)), dtype=np.float32)
                for g0 in range(0, len(gallery), 1024):
                    part = gallery[g0 : g0 + 1024]
                    best[:, g0 : g0 + len(part)] = np.einsum("qsd,grd->qgsr", block, part).max(axis=(2, 3))
                yield q0, np.argsort(-best, axis=1, kind="stable")

        return rankings_with_head(blocks(), head)
