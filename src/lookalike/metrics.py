"""Retrieval metrics: top-k accuracy (any correct match in the first k) and mAP over full rankings."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

TOP_KS = (1, 3, 10)


def average_precision(hits: np.ndarray) -> float:
    """AP of one ranking, given a boolean array that is True where the ranked item is relevant.

    Mean, over the relevant items, of the precision at each one's rank; 0 when none is relevant.
    """
    hits = np.asarray(hits, dtype=bool)
    n_rel = int(hits.sum())
    if n_rel == 0:
        return 0.0
    ranks = np.flatnonzero(hits) + 1
    return float(np.mean(np.arange(1, n_rel + 1) / ranks))


@dataclass
class RetrievalMetrics:
    """Summary and per-query figures of one query set against one gallery."""

    top_k: dict[int, float]
    mean_ap: float
    n_queries: int
    first_correct_rank: dict[str, int] = field(default_factory=dict)
    average_precision: dict[str, float] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)

    def as_dict(self, per_query: bool = False) -> dict:
        """JSON-ready summary; ``per_query`` adds each query's first correct rank and AP."""
        out: dict = {f"top{k}": v for k, v in self.top_k.items()}
        out.update({"mAP": self.mean_ap, "queries": self.n_queries, "excluded": self.excluded})
        if per_query:
            out["per_query"] = {
                name: {"first_correct_rank": rank, "ap": self.average_precision[name]}
                for name, rank in self.first_correct_rank.items()
            }
        return out


def evaluate_rankings(
    rankings: Iterable[tuple[int, np.ndarray]],
    query_labels: Sequence[str],
    gallery_labels: Sequence[str],
    query_names: Sequence[str],
    ks: Sequence[int] = TOP_KS,
) -> RetrievalMetrics:
    """Metrics from full gallery rankings (blocks of ``(first_query, order)`` rows).

    Queries whose label has no gallery image are listed in ``excluded`` and left out of every
    figure, so they cannot silently count as failures.
    """
    gallery_labels = np.asarray(gallery_labels, dtype=object)
    present = set(gallery_labels.tolist())
    first: dict[str, int] = {}
    aps: dict[str, float] = {}
    excluded: list[str] = []
    for q0, orders in rankings:
        for row, order in enumerate(orders):
            qi = q0 + row
            if query_labels[qi] not in present:
                excluded.append(query_names[qi])
                continue
            hits = gallery_labels[order] == query_labels[qi]
            first[query_names[qi]] = int(np.argmax(hits)) + 1
            aps[query_names[qi]] = average_precision(hits)
    n = len(first)
    ranks = np.array(list(first.values()), dtype=np.int64)
    top_k = {k: (float(np.mean(ranks <= k)) if n else 0.0) for k in ks}
    mean_ap = float(np.mean(list(aps.values()))) if n else 0.0
    return RetrievalMetrics(top_k, mean_ap, n, first, aps, excluded)
