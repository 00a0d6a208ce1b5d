"""Candidate pairs from k-nearest-neighbour lists, thresholds, and the default threshold table.

Pairs are parallel arrays (``a``, ``b``, ``score``), never an n x n matrix: each image's k nearest
neighbours come from an index search (any backend), are cut at the threshold and deduplicated
(``a < b`` within one collection), all vectorised, so a million images cost O(n k) memory.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..metrics import is_higher_better

log = logging.getLogger("lookalike")

# Default thresholds per model (``model@preset`` for a preset; ``cosine+sift``: the cosine cut when
# pairs are also verified by ``--verify sift``). Calibrated for pair precision 0.99 on the labelled
# duplicate set ``mixed`` of benchmarks/dedup_sets.py at seed 1 (125 images: 24 originals, each with
# an exact, a resized/re-encoded and an edited copy, among 29 distractors that include other
# quadrants of the same photos): the cut with the highest pair recall at that precision over
# dedup's own pairs (k = 10), kept to 6 decimals rounded down, by ``python
# benchmarks/dedup_quality.py --calibrate-only`` (seed 0 evaluation of every set against
# imagededup's hashes: benchmarks/out/dedup-quality, BENCHMARKS.md). Recall on mixed-s1 at these
# cuts: pixels 0.69, efficientnet-lite0 0.26 (0.75 with sift), copies 0.40 (0.76), sscd 0.57
# (0.81), sscd-distilled 0.56 (0.81). With sift, pairs at or above the plain cut are kept
# unverified and verification decides the band below; its cut was calibrated over pairs from
# cosine 0.5 up and precision held down to that floor, so it is the lowest verified true pair
# there: a bound on how many pairs are verified as much as a precision cut. The local methods count
# RANSAC inliers (lookalike.local's own minimum for a verified match). `lookalike calibrate`
# writes measured values for other data.
DEFAULT_THRESHOLDS: dict[str, dict[str, float]] = {
    "pixels": {"cosine": 0.780875},
    "efficientnet-lite0": {"cosine": 0.931738, "cosine+sift": 0.552634},
    "efficientnet-lite0@copies": {"cosine": 0.886189, "cosine+sift": 0.501465},
    "sscd": {"cosine": 0.815696, "cosine+sift": 0.517675},
    "sscd-distilled": {"cosine": 0.843638, "cosine+sift": 0.535262},
    "surf": {"inliers": 10.0},
    "sift": {"inliers": 10.0},
    "orb": {"inliers": 10.0},
}
DEFAULT_K = 10
# The model of `lookalike dedup` without -m (a preset or model options choose the search default):
# at the thresholds above, pixels' pair F1 ties (at 1.000: exact, resized) or beats every imagededup
# hash on every set; efficientnet-lite0 lost to them on exact, resized, copies and mixed.
DEDUP_MODEL = "pixels"
# The in-memory index of a folder: exact up to AUTO_EXACT_LIMIT vectors, then an inverted file over
# 8-bit codes with fewer lists and probes than `auto` (IVF 4 sqrt(n), 1/128 probed): duplicates sit
# very close to each other, so a coarser quantiser and few probes still find them. Measured by
# benchmarks/dedup_scale.py on 1,000,000 clustered 64-d vectors (README, Dedup).
DEDUP_NLIST_PER_SQRT = 2  # lists = 2 sqrt(n): 2,000 for a million
DEDUP_NPROBE = 8


def default_backend(n_vectors: int) -> tuple[str, int | None]:
    """(backend spec, IVF probes or None) dedup uses for ``n_vectors`` in memory."""
    from ..index.backends import AUTO_EXACT_LIMIT

    if n_vectors <= AUTO_EXACT_LIMIT:
        return "exact", None
    nlist = int(DEDUP_NLIST_PER_SQRT * np.sqrt(n_vectors))
    return f"faiss:IVF{nlist},SQ8", min(nlist, DEDUP_NPROBE)


VERIFY_METHODS = ("sift", "surf")


@dataclass(frozen=True)
class Threshold:
    """A cut on one kind of score: a pair is a duplicate when its score is at least ``value``
    (cosine, inliers) or at most ``value`` (euclidean distances); ``source`` says where it came from."""

    value: float
    score: str
    source: str = "given"

    @property
    def higher_is_better(self) -> bool:
        return is_higher_better(self.score)

    def passes(self, scores: np.ndarray) -> np.ndarray:
        """Boolean mask of the scores that make a duplicate."""
        scores = np.asarray(scores)
        return scores >= self.value if self.higher_is_better else scores <= self.value

    def describe(self) -> dict[str, Any]:
        """The threshold as it is written into the results."""
        return {"value": self.value, "score": self.score, "source": self.source}


def default_key(model: str, preset: str | None = None) -> str:
    """The ``DEFAULT_THRESHOLDS`` row of a model, or of a model under a preset (``model@preset``)."""
    return model if preset in (None, "default") else f"{model}@{preset}"


def default_threshold(
    score: str, model: str, preset: str | None = None, verify: str | None = None
) -> Threshold | None:
    """The default cut for ``score`` with ``model`` (under ``preset``; with ``verify``, the cut
    measured with that verification: ``"cosine+sift"``, else the plain one), None when the table
    has none. A preset without a row of its own falls back to the model's row."""
    for key in dict.fromkeys([default_key(model, preset), model]):
        table = DEFAULT_THRESHOLDS.get(key, {})
        for kind in ([f"{score}+{verify}"] if verify else []) + [score]:
            if kind in table:
                return Threshold(
                    float(table[kind]), score, f"default for {key}" + (f" ({kind})" if "+" in kind else "")
                )
    return None


def resolve_threshold(
    score: str,
    model: str,
    value: float | None = None,
    threshold_file: str | Path | None = None,
    *,
    preset: str | None = None,
    verify: str | None = None,
    refinement: dict[str, Any] | None = None,
) -> Threshold:
    """The threshold for a search whose scores are ``score`` with ``model``: ``value`` if given,
    else the one in ``threshold_file`` (written by ``lookalike calibrate``; refused when its score
    kind, model or score-changing steps, ``refinement``, differ), else ``DEFAULT_THRESHOLDS`` (see :func:`default_threshold`); a one-line
    InputError when there is none."""
    if value is not None and threshold_file is not None:
        raise InputError("give --threshold or --threshold-file, not both")
    if value is not None:
        if not np.isfinite(value):
            raise InputError(f"--threshold must be a finite number, got {value}")
        return Threshold(float(value), score, "--threshold")
    if threshold_file is not None:
        return read_threshold_file(threshold_file, score, model, refinement)
    found = default_threshold(score, model, preset, verify)
    if found is None:
        raise InputError(
            f"no default duplicate threshold for {model} with {score} scores; give --threshold S "
            "or --threshold-file F (lookalike calibrate writes one)"
        )
    return found


def read_threshold_file(
    path: str | Path, score: str, model: str | dict[str, Any], refinement: dict[str, Any] | None = None
) -> Threshold:
    """The threshold of a file written by ``lookalike calibrate`` (read by
    :func:`lookalike.calibrate.load_threshold`, which refuses a file measured on another kind of
    score, another model or other score-changing steps, in one line)."""
    from ..calibrate import load_threshold

    try:  # a bare {"threshold", "score"} file names no model: then there is none to compare
        names_model = "model" in json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        names_model = True  # load_threshold says what is wrong with it
    loaded = load_threshold(path, score=score, model=model if names_model else None, refinement=refinement)
    return Threshold(float(loaded.value), loaded.score, f"--threshold-file {path}")


@dataclass
class Pairs:
    """Duplicate candidates as parallel arrays: item ``a[i]`` and item ``b[i]`` scored ``score[i]``;
    ``inliers[i]`` after spatial verification (-1 where not verified)."""

    a: np.ndarray
    b: np.ndarray
    score: np.ndarray
    inliers: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.a)

    def take(self, mask: np.ndarray) -> Pairs:
        """The pairs where ``mask`` is True (a boolean mask or indices)."""
        inl = None if self.inliers is None else self.inliers[mask]
        return Pairs(self.a[mask], self.b[mask], self.score[mask], inl)

    @classmethod
    def empty(cls) -> Pairs:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))


def knn_pairs(
    neighbours: np.ndarray,
    scores: np.ndarray,
    threshold: Threshold,
    *,
    query_ids: np.ndarray | None = None,
    gallery_ids: np.ndarray | None = None,
    symmetric: bool = True,
) -> Pairs:
    """Pairs from neighbour lists: row i of ``neighbours`` (n, k) lists the gallery rows nearest to
    query i with ``scores``; -1 is padding. ``query_ids``/``gallery_ids`` map rows to item ids.
    ``symmetric`` (queries and gallery are one collection): self matches dropped, each pair once
    as ``a < b`` with its best score. Otherwise ``a`` is the query item and ``b`` the gallery item."""
    neighbours = np.asarray(neighbours, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float32)
    n, k = neighbours.shape
    q_ids = np.arange(n, dtype=np.int64) if query_ids is None else np.asarray(query_ids, np.int64)
    g_map = None if gallery_ids is None else np.asarray(gallery_ids, np.int64)
    q = np.repeat(q_ids, k)
    g_rows, s = neighbours.ravel(), scores.ravel()
    keep = (g_rows >= 0) & threshold.passes(s)
    q, g_rows, s = q[keep], g_rows[keep], s[keep]
    g = g_rows if g_map is None else g_map[g_rows]
    if symmetric:
        not_self = q != g
        q, g, s = q[not_self], g[not_self], s[not_self]
        q, g = np.minimum(q, g), np.maximum(q, g)
    return unique_pairs(Pairs(q, g, s), threshold.higher_is_better)


def unique_pairs(pairs: Pairs, higher_is_better: bool = True) -> Pairs:
    """Each (a, b) once, with its best score, sorted by (a, b)."""
    if len(pairs) == 0:
        return pairs
    goodness = -pairs.score if higher_is_better else pairs.score
    order = np.lexsort((goodness, pairs.b, pairs.a))
    a, b = pairs.a[order], pairs.b[order]
    first = np.ones(len(a), dtype=bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    return pairs.take(order[first])


def search_pairs(
    index: Any,
    queries: np.ndarray,
    k: int,
    threshold: Threshold,
    *,
    query_ids: np.ndarray | None = None,
    gallery_ids: np.ndarray | None = None,
    symmetric: bool = True,
    block: int = 65_536,
) -> Pairs:
    """Candidate pairs from ``index.search`` (a :class:`~lookalike.index.GalleryIndex` or any backend
    with ``search(queries, k) -> (rows, scores)``), queried in blocks so memory stays O(block x k)
    however many queries there are; only pairs that pass ``threshold`` are kept."""
    if k < 1:
        raise InputError(f"-k must be at least 1, got {k}")
    queries = np.asarray(queries)
    q_ids = np.arange(len(queries), dtype=np.int64) if query_ids is None else np.asarray(query_ids, np.int64)
    parts = []
    for start in range(0, len(queries), block):
        rows, scores = index.search(np.ascontiguousarray(queries[start : start + block], dtype=np.float32), k)
        parts.append(
            knn_pairs(
                rows,
                scores,
                threshold,
                query_ids=q_ids[start : start + block],
                gallery_ids=gallery_ids,
                symmetric=symmetric,
            )
        )
    if not parts:
        return Pairs.empty()
    merged = Pairs(
        np.concatenate([p.a for p in parts]),
        np.concatenate([p.b for p in parts]),
        np.concatenate([p.score for p in parts]),
    )
    return unique_pairs(merged, threshold.higher_is_better)


def pairs_among(
    members: np.ndarray,
    queries: np.ndarray,
    gallery: np.ndarray,
    threshold: Threshold,
    *,
    euclidean: bool = False,
) -> Pairs:
    """Every pair of ``members`` (item rows of ``queries``/``gallery``) that passes ``threshold``,
    from exact scores (the best of both directions): how a small component is completed where
    the kNN lists missed pairs. Costs len(members)^2, so it is only for components, never all."""
    members = np.asarray(members, dtype=np.int64)
    q, g = np.asarray(queries)[members].astype(np.float64), np.asarray(gallery)[members].astype(np.float64)
    if euclidean:
        s = np.sqrt(np.maximum((q * q).sum(1)[:, None] + (g * g).sum(1)[None, :] - 2 * q @ g.T, 0.0))
        s = np.minimum(s, s.T)
    else:
        s = q @ g.T
        s = np.maximum(s, s.T)
    iu, ju = np.triu_indices(len(members), 1)
    values = s[iu, ju].astype(np.float32)
    keep = threshold.passes(values)
    return unique_pairs(Pairs(members[iu[keep]], members[ju[keep]], values[keep]), threshold.higher_is_better)
