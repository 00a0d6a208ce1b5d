"""Retrieval metrics: top-k accuracy, mAP over full rankings, and, over the written short lists,
µAP (micro average precision, the DISC21 copy-detection metric) and precision/recall at a score
threshold.

µAP pools every ``(query, gallery image, score)`` prediction of all queries' short lists, sorts them
by score (best first) and computes one average precision whose denominator is the number of
ground-truth positive pairs (every same-label query-gallery pair), so a positive that no list holds
counts as missed. Tied scores are ordered negatives first (as DISC21's reference code does), so a
method cannot gain by giving many pairs the same score. A query with no same-label gallery image is
left out of top-k and mAP, but its predictions still count in µAP, as negatives: a method that
scores such pairs high loses precision, as it would in use. In JSON the figure is ``"uAP"``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError

TOP_KS = (1, 3, 10)
LOWER_IS_BETTER_SCORES = ("euclidean",)  # and any score whose name says it is a distance


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


def is_higher_better(score: str) -> bool:
    """Whether a larger score of this kind (``SearchRun.metric``) means a closer match: cosine,
    inliers and rank fusion do; euclidean and any other distance (k-reciprocal) do not."""
    return score not in LOWER_IS_BETTER_SCORES and "distance" not in score


def _pairs(
    scores: np.ndarray | Sequence[float], hits: np.ndarray | Sequence[bool], n_positives: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores as float64 and hits as bool, flattened and checked against each other."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    h = np.asarray(hits, dtype=bool).ravel()
    if s.shape != h.shape:
        raise InputError(f"{len(s)} scores but {len(h)} hit flags: give one flag per scored pair")
    if not np.all(np.isfinite(s)):
        raise InputError("scores must be finite numbers (found NaN or infinity)")
    n_positives = int(n_positives)
    if n_positives < int(h.sum()):
        raise InputError(f"{int(h.sum())} correct pairs listed but only {n_positives} positives in all")
    return s, h, n_positives


def _best_first(s: np.ndarray, h: np.ndarray, higher_is_better: bool) -> tuple[np.ndarray, np.ndarray]:
    """(scores, hits) best first; tied scores put negatives first, the pessimistic order."""
    goodness = s if higher_is_better else -s
    order = np.lexsort((h, -goodness))
    return s[order], h[order]


def micro_average_precision(
    scores: np.ndarray | Sequence[float],
    hits: np.ndarray | Sequence[bool],
    n_positives: int,
    *,
    higher_is_better: bool = True,
) -> float:
    """µAP: one AP over all scored pairs of all queries ranked together, divided by every
    ground-truth positive pair (``n_positives``), so positives no list holds count as missed;
    ties in score are ranked negatives first. 0 when there are no positives."""
    s, h, n_positives = _pairs(scores, hits, n_positives)
    if n_positives == 0:
        return 0.0
    _, h = _best_first(s, h, higher_is_better)
    tp = np.cumsum(h)
    precision_at_hits = tp[h] / (np.flatnonzero(h) + 1)
    return float(precision_at_hits.sum() / n_positives)


@dataclass(frozen=True)
class PrecisionRecallCurve:
    """Precision and recall when every pair scoring at least as well as each threshold is accepted:
    one point per distinct score, strictest first (``accepted`` counts the pairs taken)."""

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    accepted: np.ndarray
    n_positives: int
    n_pairs: int
    higher_is_better: bool = True

    def __len__(self) -> int:
        return len(self.thresholds)

    def best_for_precision(self, target: float) -> int | None:
        """Index of the point with the highest recall whose precision reaches ``target`` (the
        strictest such point when several share that recall), or None when none does."""
        _check_fraction(target, "target precision")
        ok = np.flatnonzero(self.precision >= target - 1e-12)
        if len(ok) == 0:
            return None
        return int(ok[np.argmax(self.recall[ok])])

    def rows(self, indices: Iterable[int] | None = None) -> list[list[float]]:
        """``[[threshold, precision, recall], ...]`` for the given points (all by default)."""
        chosen = range(len(self)) if indices is None else indices
        return [[float(self.thresholds[i]), float(self.precision[i]), float(self.recall[i])] for i in chosen]

    def thinned(self, max_points: int = 200, keep: Iterable[int] = ()) -> list[int]:
        """At most ``max_points`` point indices spread evenly along the curve, first and last
        included, plus those in ``keep`` (a chosen threshold)."""
        if max_points < 2:
            raise InputError(f"max_points must be at least 2, got {max_points}")
        keep = [int(i) for i in keep]
        n = len(self)
        if n <= max_points:
            return list(range(n))
        budget = max_points - len(keep)
        picked = set(np.linspace(0, n - 1, max(2, budget)).round().astype(int).tolist()) | set(keep)
        return sorted(picked)


def _check_fraction(value: float, what: str) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and 0.0 < value <= 1.0):
        raise InputError(f"{what} must be a number in (0, 1], got {value!r}")


def precision_recall_curve(
    scores: np.ndarray | Sequence[float],
    hits: np.ndarray | Sequence[bool],
    n_positives: int,
    *,
    higher_is_better: bool = True,
) -> PrecisionRecallCurve:
    """The precision/recall trade-off of a score threshold over scored pairs: recall is over all
    ``n_positives`` ground-truth pairs, so it stays below 1 when lists miss positives."""
    s, h, n_positives = _pairs(scores, hits, n_positives)
    s, h = _best_first(s, h, higher_is_better)
    if len(s) == 0:
        empty = np.zeros(0)
        return PrecisionRecallCurve(
            empty, empty, empty, empty.astype(np.int64), n_positives, 0, higher_is_better
        )
    ends = np.flatnonzero(np.append(s[1:] != s[:-1], True))  # last pair of each run of equal scores
    tp = np.cumsum(h)[ends]
    accepted = ends + 1
    recall = tp / n_positives if n_positives else np.zeros(len(ends))
    return PrecisionRecallCurve(
        s[ends], tp / accepted, recall, accepted, n_positives, len(s), higher_is_better
    )


def accepts(scores: np.ndarray | float, threshold: float, *, higher_is_better: bool = True) -> np.ndarray:
    """Which scores pass the threshold: at least it (similarities) or at most it (distances)."""
    s = np.asarray(scores, dtype=np.float64)
    return s >= threshold if higher_is_better else s <= threshold


def precision_recall_at(
    scores: np.ndarray | Sequence[float],
    hits: np.ndarray | Sequence[bool],
    n_positives: int,
    threshold: float,
    *,
    higher_is_better: bool = True,
) -> tuple[float, float]:
    """(precision, recall) when the pairs that pass ``threshold`` are accepted; precision is 1
    when none passes (nothing wrong was accepted), recall is over all ``n_positives``."""
    s, h, n_positives = _pairs(scores, hits, n_positives)
    if not math.isfinite(float(threshold)):
        raise InputError(f"threshold must be a finite number, got {threshold!r}")
    taken = accepts(s, float(threshold), higher_is_better=higher_is_better)
    tp, n = int(h[taken].sum()), int(taken.sum())
    return (tp / n if n else 1.0), (tp / n_positives if n_positives else 0.0)


def threshold_for_precision(
    scores: np.ndarray | Sequence[float],
    hits: np.ndarray | Sequence[bool],
    n_positives: int,
    target: float,
    *,
    higher_is_better: bool = True,
) -> float | None:
    """The score threshold with the highest recall whose precision reaches ``target`` (the
    score of the weakest pair it accepts), or None when no threshold reaches it."""
    curve = precision_recall_curve(scores, hits, n_positives, higher_is_better=higher_is_better)
    best = curve.best_for_precision(target)
    return None if best is None else float(curve.thresholds[best])


def scored_pairs(
    head: np.ndarray,
    head_scores: np.ndarray,
    query_labels: Sequence[str],
    gallery_labels: Sequence[str],
) -> tuple[np.ndarray, np.ndarray, int]:
    """(scores, hits, n_positives) of short lists: every listed ``(query row, gallery id)`` pair
    (-1 padding dropped) with its score and whether the labels agree, and the number of all
    same-label query-gallery pairs, listed or not."""
    head = np.asarray(head, dtype=np.int64)
    head_scores = np.asarray(head_scores, dtype=np.float64)
    if head.shape != head_scores.shape or head.ndim != 2:
        raise InputError(f"head {head.shape} and head_scores {head_scores.shape} must be matching 2-d arrays")
    if len(head) != len(query_labels):
        raise InputError(f"{len(head)} short lists for {len(query_labels)} queries")
    g_labels = np.asarray(gallery_labels, dtype=object)
    q_labels = np.asarray(query_labels, dtype=object)
    valid = head >= 0
    hits = np.zeros(head.shape, dtype=bool)
    hits[valid] = g_labels[head[valid]] == np.broadcast_to(q_labels[:, None], head.shape)[valid]
    counts = Counter(g_labels.tolist())
    n_positives = sum(counts.get(label, 0) for label in q_labels.tolist())
    return head_scores[valid], hits[valid], int(n_positives)


@dataclass
class RetrievalMetrics:
    """Summary and per-query figures of one query set against one gallery; ``micro_ap`` and the
    figures at a ``threshold`` are filled when the short lists' scores were given."""

    top_k: dict[int, float]
    mean_ap: float
    n_queries: int
    first_correct_rank: dict[str, int] = field(default_factory=dict)
    average_precision: dict[str, float] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)
    micro_ap: float | None = None
    n_pairs: int | None = None
    n_positives: int | None = None
    threshold: float | None = None
    precision: float | None = None
    recall: float | None = None

    def as_dict(self, per_query: bool = False) -> dict:
        """JSON-ready summary (µAP as ``"uAP"`` with ``"pairs"`` and ``"positives"``, and
        ``"threshold"``, ``"precision"``, ``"recall"`` when known); ``per_query`` adds each
        query's first correct rank and AP."""
        out: dict = {f"top{k}": v for k, v in self.top_k.items()}
        out.update({"mAP": self.mean_ap, "queries": self.n_queries, "excluded": self.excluded})
        if self.micro_ap is not None:
            out.update({"uAP": self.micro_ap, "pairs": self.n_pairs, "positives": self.n_positives})
        if self.threshold is not None:
            out.update({"threshold": self.threshold, "precision": self.precision, "recall": self.recall})
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
    *,
    head: np.ndarray | None = None,
    head_scores: np.ndarray | None = None,
    higher_is_better: bool = True,
    threshold: float | None = None,
) -> RetrievalMetrics:
    """Metrics from full gallery rankings (blocks of ``(first_query, order)`` rows).

    Queries whose label has no gallery image are listed in ``excluded`` and left out of top-k and
    mAP, so they cannot silently count as failures. With the written short lists (``head``: gallery
    ids, one row per query, -1 padding allowed; ``head_scores`` their scores, ``higher_is_better``
    their direction, see :func:`is_higher_better`) µAP is added, every query's predictions counted
    (an excluded query's as negatives), and with ``threshold`` the precision and recall there.
    """
    if (head is None) != (head_scores is None):
        raise InputError("give head and head_scores together: µAP needs the short lists and their scores")
    if threshold is not None and head is None:
        raise InputError("precision and recall at a threshold need the short lists' scores (head_scores=)")
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
    metrics = RetrievalMetrics(top_k, mean_ap, n, first, aps, excluded)
    if head is not None:
        scores, hits, n_pos = scored_pairs(head, head_scores, query_labels, gallery_labels.tolist())
        metrics.micro_ap = micro_average_precision(scores, hits, n_pos, higher_is_better=higher_is_better)
        metrics.n_pairs, metrics.n_positives = len(scores), n_pos
        if threshold is not None:
            metrics.threshold = float(threshold)
            metrics.precision, metrics.recall = precision_recall_at(
                scores, hits, n_pos, threshold, higher_is_better=higher_is_better
            )
    return metrics
