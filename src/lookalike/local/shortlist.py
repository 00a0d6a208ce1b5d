"""Deep short lists verified affordably: features kept in memory, a match-count pre-filter, early exit.

``FeatureMemory`` holds the local features of one image set: each image is extracted (or read
from the on-disk :class:`~lookalike.local.cache.DescriptorCache`) at most once, however many
queries and calls ask for it. ``verify_short_lists`` matches each query against its candidates
in order; a pair with fewer good matches than ``MatchOptions.min_matches`` skips the robust fit,
and a query stops once ``early_exit`` candidates reached ``confident`` inliers. ``DescriptorVotes``
is a cheaper pre-filter still: one approximate k-NN search of a query's descriptors over all the
gallery's (FAISS) counts, per gallery image, the query descriptors that have one of its
descriptors among their nearest; pairs with too few votes are not even matched.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..extract import ExtractOptions, Skipped
from ..images import ImageSet
from .detectors import Detector
from .extraction import extract_features
from .keypoints import Features
from .matching import MatchOptions, verify
from .parallel import parallel_map, worker_count


@dataclass
class VerifyStats:
    """What verification cost: pairs looked at, pairs descriptor votes ruled out before matching
    (``screened``), pairs matched but kept from the robust fit by the match count
    (``prefiltered``), fits run, queries stopped early, and features extracted or read from the
    disk cache."""

    pairs: int = 0
    screened: int = 0
    prefiltered: int = 0
    fitted: int = 0
    early_exits: int = 0
    extracted: int = 0
    from_cache: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counts as plain data (for run summaries)."""
        return dict(self.__dict__)


@dataclass
class FeatureMemory:
    """Local features of ``images`` by ``detector``, extracted at most once per image and kept."""

    detector: Detector
    images: ImageSet
    options: ExtractOptions
    label: str = "images"
    stats: VerifyStats = field(default_factory=VerifyStats)
    skipped: list[Skipped] = field(default_factory=list)
    _features: dict[int, Features | None] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, indices: Sequence[int]) -> dict[int, Features | None]:
        """Features of the images at ``indices`` (None: unreadable), extracting only new ones."""
        wanted = sorted({int(i) for i in indices if i >= 0})
        with self._lock:
            missing = [i for i in wanted if i not in self._features]
            if missing:
                found = extract_features(self.detector, self.images, self.options, label=self.label, indices=missing)
                for i in missing:
                    self._features[i] = found.features[i]
                self.skipped.extend(found.skipped)
                self.stats.extracted += found.n_extracted
                self.stats.from_cache += found.n_cached
            return {i: self._features[i] for i in wanted}

    def known(self) -> dict[int, Features | None]:
        """Every image extracted so far (None: unreadable)."""
        with self._lock:
            return dict(self._features)


class DescriptorVotes:
    """Per (query, gallery image): how many of the query's descriptors have a descriptor of that
    image among their ``neighbours`` nearest (at most an eighth of the number of images) in the
    whole gallery (an inverted-file FAISS index
    over every gallery descriptor with sqrt(n) / 2 lists, probing 2 to 4 of them: about 12 ms per
    query over 425,000 SIFT descriptors on one core; exact below 20,000 descriptors). Approximate
    neighbours are enough for a pre-filter: a copy shares many descriptors, a stranger few."""

    def __init__(self, features: dict[int, Features | None], neighbours: int = 10, seed: int = 0) -> None:
        import faiss

        ids = [j for j, f in sorted(features.items()) if f is not None and len(f)]
        self.ids = frozenset(ids)
        # each descriptor votes for at most an eighth of the images, or votes say nothing in small galleries
        self.neighbours = int(min(neighbours, max(1, len(ids) // 8)))
        dim = next((features[j].descriptors.shape[1] for j in ids), 128)
        desc = (
            np.ascontiguousarray(np.concatenate([features[j].descriptors for j in ids]), dtype=np.float32)
            if ids
            else np.zeros((0, dim), dtype=np.float32)
        )
        self.owner = np.repeat(np.array(ids, dtype=np.int64), [len(features[j]) for j in ids])
        self.size = (max(ids) + 1) if ids else 0
        if len(desc) < 20_000:
            self.index = faiss.IndexFlatL2(dim)
        else:
            nlist = int(min(1024, np.sqrt(len(desc)) / 2))
            self.index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, nlist)
            sample = np.random.default_rng(seed).choice(len(desc), min(len(desc), 40 * nlist), replace=False)
            self.index.train(desc[np.sort(sample)])
            self.index.nprobe = max(2, nlist // 256)
        self.index.add(desc)

    def counts(self, queries: Sequence[Features | None], candidates: np.ndarray) -> np.ndarray:
        """Votes shaped like ``candidates`` (gallery indices, -1: none): 0 for images not indexed."""
        out = np.zeros(candidates.shape, dtype=np.int32)
        k = min(self.neighbours, self.index.ntotal)
        for q, query in enumerate(queries):
            if query is None or not len(query) or k == 0:
                continue
            _, nearest = self.index.search(np.ascontiguousarray(query.descriptors, dtype=np.float32), k)
            rows, cols = np.nonzero(nearest >= 0)
            pairs = np.unique(np.stack([rows, self.owner[nearest[rows, cols]]], axis=1), axis=0)
            votes = np.bincount(pairs[:, 1], minlength=self.size)
            cand = candidates[q]
            ok = (cand >= 0) & (cand < self.size)
            out[q, ok] = votes[cand[ok]]
        return out


def verify_short_lists(
    queries: Sequence[Features | None],
    gallery: dict[int, Features | None],
    candidates: np.ndarray,
    binary: bool,
    match_options: MatchOptions,
    *,
    early_exit: int = 0,
    confident: int = 30,
    workers: int | None = None,
    progress: bool = False,
    stats: VerifyStats | None = None,
    desc: str = "verifying",
    skip: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(inliers, good matches), both shaped like ``candidates`` (n_queries, n): query q against
    ``gallery[candidates[q, n]]``, in list order; 0 where either side has no features, j is -1,
    the pre-filter skipped the fit, or the query stopped early (after ``early_exit`` > 0
    candidates with at least ``confident`` inliers). ``skip`` (shaped like ``candidates``) marks
    pairs a cheaper pre-filter ruled out: not matched, counted as screened. One task per
    query, on every core."""
    candidates = np.asarray(candidates, dtype=np.int64)
    inliers = np.zeros(candidates.shape, dtype=np.int32)
    good = np.zeros(candidates.shape, dtype=np.int32)
    counts = stats if stats is not None else VerifyStats()
    lock = threading.Lock()

    def run(q: int) -> None:
        pairs = screened = prefiltered = fitted = 0
        sure, n = 0, -1
        query = queries[q]
        for n, j in enumerate(candidates[q]):
            g = gallery.get(int(j)) if j >= 0 else None
            if query is None or g is None or not len(g) or not len(query):
                continue
            pairs += 1
            if skip is not None and skip[q, n]:
                screened += 1
                continue
            result = verify(query, g, binary, match_options)
            if result.homography is None and result.good < match_options.min_matches:
                prefiltered += 1
            else:
                fitted += 1
            inliers[q, n], good[q, n] = result.inliers, result.good
            sure += result.inliers >= confident
            if early_exit and sure >= early_exit:
                break
        with lock:
            counts.pairs += pairs
            counts.screened += screened
            counts.prefiltered += prefiltered
            counts.fitted += fitted
            counts.early_exits += bool(early_exit and sure >= early_exit and n < candidates.shape[1] - 1)

    parallel_map(
        run,
        list(range(len(candidates))),
        workers=worker_count(workers, len(candidates)),
        desc=desc,
        unit="query",
        progress=progress,
    )
    return inliers, good
