"""The steps between features and ranking, scikit-learn style (``fit`` then ``transform``): PCA
whitening, database-side augmentation and alpha query expansion, one definition each; fitted at
search time (``pipeline.Refinement``) or stored with an index (``index.stored_steps``)."""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from .errors import InputError
from .fileio import atomic_write
from .knn import best_per_owner, topk

ViewSource = Callable[[int], tuple[np.ndarray, np.ndarray]]
"""Given N, the vectors of N edited views of gallery images: (rows, (len(rows), N, d))."""


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


log = logging.getLogger("lookalike")
BLOCK = 65_536  # rows converted to float64 at a time
DEFAULT_SHRINKAGE = 10.0  # --whiten without --whiten-shrinkage (BENCHMARKS.md has the measurements)
LEARNED_SHRINKAGE = 1.0  # --whiten-views without --whiten-shrinkage (BENCHMARKS.md, "Whitening learned")
MAX_VIEWS = 8  # edited views per gallery image for a learned whitening
LARGE_DBA = 200_000  # above this many vectors, DBA's exact k-NN over the gallery gets a warning


def _blocks(x: np.ndarray):
    """Consecutive row blocks of ``x`` as float64."""
    for start in range(0, len(x), BLOCK):
        yield np.asarray(x[start : start + BLOCK], dtype=np.float64)


def default_shrinkage(views: int = 0) -> float:
    """The default shrinkage of a whitening learned from ``views`` edited views (0: PCA's)."""
    return LEARNED_SHRINKAGE if views else DEFAULT_SHRINKAGE


def check_whiten_dim(whiten_dim: int | None, feature_dim: int) -> None:
    """Refuse a whitening dimension the features cannot give (one check, one message, for the
    search-time and the index-time whitening)."""
    if whiten_dim is not None and whiten_dim > feature_dim:
        raise InputError(
            f"--whiten-dim {whiten_dim} is larger than the feature dimension ({feature_dim}); "
            f"choose at most {feature_dim}"
        )


def check_shrinkage(shrinkage: float) -> None:
    """Refuse a shrinkage that is not a finite number of at least 0."""
    if isinstance(shrinkage, bool) or not (math.isfinite(float(shrinkage)) and float(shrinkage) >= 0):
        raise InputError(f"--whiten-shrinkage must be a finite number of at least 0, got {shrinkage}")


class PCAWhitening:
    """PCA whitening with optional dimension reduction, fitted on (gallery) features.

    ``transform`` centres, projects on the top ``dim`` principal axes, divides each by the square
    root of its variance plus ``shrinkage`` times the mean variance, and L2-normalises, so cosine
    similarity applies again. Fitted on a gallery of a few hundred or thousand images, full
    whitening (shrinkage near 0) at full dimension amplifies noise axes and hurts; the default of
    10 only tempers the dominant axes. Cut to a few dozen dimensions, where no noise axis is left,
    a small shrinkage is best for copies (BENCHMARKS.md has the measurements behind both).
    """

    def __init__(self, dim: int | None = None, shrinkage: float = DEFAULT_SHRINKAGE) -> None:
        if dim is not None and dim < 1:
            raise InputError(f"whitening dimension must be positive, got {dim}")
        check_shrinkage(shrinkage)
        self.dim, self.shrinkage = dim, float(shrinkage)
        self.mean: np.ndarray | None = None
        self.projection: np.ndarray | None = None

    def fit(self, x: np.ndarray) -> PCAWhitening:
        """Learn the mean and the whitening projection from the rows of ``x``."""
        x = np.asarray(x)
        if len(x) < 2:
            raise InputError(f"whitening needs at least 2 vectors to fit, got {len(x)}")
        check_whiten_dim(self.dim, x.shape[1])
        values, vectors = self._strongest_axes(x)
        values = values + self.shrinkage * values.mean()
        self.projection = vectors / np.sqrt(values)
        return self

    def _strongest_axes(self, x: np.ndarray, rotate: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Set ``self.mean`` from ``x``; return the variances and unit axes (columns) of the ``dim``
        strongest principal directions of ``x`` (after ``rotate``, d x d, when given), strongest
        first, at most as many as the rank. Identical vectors are refused."""
        # float64 sums over blocks: a million 512-d vectors never get a float64 copy of their own
        self.mean = sum(block.sum(axis=0) for block in _blocks(x)) / len(x)
        values, vectors = self._principal_axes(x, rotate)
        order = np.argsort(values)[::-1]
        # identical vectors leave at most rounding noise: nothing to whiten
        spread = float(values.max()) if len(values) else 0.0
        rank = int(np.sum(values > spread * 1e-10))
        centre = self.mean if rotate is None else self.mean @ rotate
        if spread <= 1e-12 * max(1.0, float(np.square(centre).sum())):
            raise InputError(f"whitening needs vectors that differ; all {len(x)} are the same")
        keep = min(self.dim or rank, rank)
        return values[order][:keep], vectors[:, order][:, :keep]

    def _principal_axes(self, x: np.ndarray, rotate: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues and unit eigenvectors (columns) of the covariance of ``x`` about ``self.mean``
        (mapped by ``rotate`` when given). With fewer vectors than dimensions (a small gallery of
        3,072-d pixels or region vectors), the same non-zero axes come from the n x n Gram matrix,
        far cheaper than the d x d one."""
        n, d = x.shape

        def centred(rows: np.ndarray) -> np.ndarray:
            out = np.asarray(rows, dtype=np.float64) - self.mean
            return out if rotate is None else out @ rotate

        if n <= d:
            c = centred(x)
            values, u = np.linalg.eigh(c @ c.T / (n - 1))
            keep = values > max(values.max(), 0.0) * 1e-10
            values = values[keep]
            return values, c.T @ u[:, keep] / np.sqrt(values * (n - 1))
        cov = np.zeros((d, d))
        for block in _blocks(x):
            c = centred(block)
            cov += c.T @ c
        return np.linalg.eigh(cov / (n - 1))

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Whitened, L2-normalised float32 rows."""
        if self.mean is None or self.projection is None:
            raise InputError("PCAWhitening.transform called before fit")
        x = np.asarray(x)
        out = np.empty((len(x), self.projection.shape[1]), dtype=np.float32)
        for start, block in zip(range(0, len(x), BLOCK), _blocks(x), strict=True):
            out[start : start + len(block)] = l2_normalise((block - self.mean) @ self.projection)
        return out

    def fit_transform(self, x: np.ndarray) -> np.ndarray:
        return self.fit(x).transform(x)

    def describe(self) -> dict[str, Any]:
        out_dim = None if self.projection is None else int(self.projection.shape[1])
        return {"kind": "pca-whitening", "dim": out_dim, "shrinkage": self.shrinkage}

    def _arrays(self) -> dict[str, Any]:
        return {"mean": self.mean, "projection": self.projection, "shrinkage": self.shrinkage}

    def save(self, path: str | Path) -> None:
        """Write the fitted parameters (npz) atomically."""
        if self.mean is None or self.projection is None:
            raise InputError("cannot save an unfitted whitening")
        buffer = io.BytesIO()
        np.savez(buffer, **self._arrays())
        atomic_write(Path(path), lambda h: h.write(buffer.getvalue()))

    @classmethod
    def load(cls, path: str | Path) -> PCAWhitening:
        """A fitted whitening from :meth:`save`'s file: this class, or :class:`LearnedWhitening`
        when the file records the views it was learned from."""
        with np.load(path, allow_pickle=False) as data:
            dim, shrinkage = int(data["projection"].shape[1]), float(data["shrinkage"])
            out = (
                LearnedWhitening(dim, shrinkage, int(data["views"]))
                if "views" in data
                else PCAWhitening(dim, shrinkage)
            )
            out.mean, out.projection = data["mean"], data["projection"]
        return out


class LearnedWhitening(PCAWhitening):
    """Whitening learned from matching pairs (Radenovic et al.'s Lw, TPAMI 2018): whiten by the
    covariance of the pairs' differences (what copying changes), then keep the ``dim`` strongest
    gallery directions in that space. The pairs are gallery images and ``views`` edited views of
    each (``lookalike.pairs``), so nothing is labelled. ``shrinkage`` adds that many times the mean
    variance of the differences to each axis (a few hundred pairs cannot fill a 1,280-d
    covariance). ``transform`` is PCA whitening's: centre, project, L2-normalise."""

    def __init__(self, dim: int | None = None, shrinkage: float = LEARNED_SHRINKAGE, views: int = 2) -> None:
        super().__init__(dim, shrinkage)
        if views < 1:
            raise InputError(f"--whiten-views must be at least 1 to learn a whitening, got {views}")
        self.views = int(views)

    def fit(self, x: np.ndarray, pairs: tuple[np.ndarray, np.ndarray] | None = None) -> LearnedWhitening:
        """Learn from the gallery ``x`` (n, d) and ``pairs`` = (rows, views): ``views[i, j]`` is
        the j-th edited view of ``x[rows[i]]``."""
        x = np.asarray(x)
        if pairs is None:
            raise InputError("learned whitening needs edited views of the gallery to fit (--whiten-views)")
        rows, views = pairs
        views = np.asarray(views, dtype=np.float64)
        if len(x) < 2 or not len(rows):
            raise InputError(f"whitening needs at least 2 vectors to fit, got {len(x)}")
        check_whiten_dim(self.dim, x.shape[1])
        d = x.shape[1]
        diffs = (np.asarray(x[rows], dtype=np.float64)[:, None] - views).reshape(-1, d)
        within = diffs.T @ diffs / len(diffs)
        scale = float(np.trace(within)) / d
        if scale <= 1e-20:
            raise InputError("learned whitening: the edited views equal their images; nothing to learn")
        within += self.shrinkage * scale * np.eye(d)
        values, vectors = np.linalg.eigh(within)
        values = np.maximum(values, values.max() * 1e-10)  # shrinkage 0 with fewer pairs than dimensions
        inv_sqrt = (vectors / np.sqrt(values)) @ vectors.T
        _, axes = self._strongest_axes(x, rotate=inv_sqrt)  # the gallery's, in the whitened space
        self.projection = inv_sqrt @ axes
        return self

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "kind": "learned-whitening", "views": self.views}

    def _arrays(self) -> dict[str, Any]:
        return {**super()._arrays(), "views": self.views}


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


P = TypeVar("P", bound="Postprocess")


@dataclass
class Postprocess:
    """Whitening, DBA and QE as one fit/transform chain, validated once: ``fit`` learns the
    whitening on the gallery's raw vectors; ``gallery`` gives the searchable gallery (whitened,
    then each vector augmented by its ``dba`` neighbours); ``queries`` gives queries in that space
    (whitened, then expanded by their ``qe`` nearest processed gallery vectors). Neighbours are
    weighted by similarity^``alpha``; ``whiten_shrinkage`` is :class:`PCAWhitening`'s (None: the
    default, :data:`DEFAULT_SHRINKAGE`; a value given only with ``whiten``). ``whiten_views`` = N
    learns the whitening from N edited views of each gallery image instead
    (:class:`LearnedWhitening`; its default shrinkage is :data:`LEARNED_SHRINKAGE`). The
    search-time steps (``Refinement``) and those stored with an index (``IndexPostprocess``) are
    both this class."""

    whiten: bool = False
    whiten_dim: int | None = None
    dba: int = 0
    qe: int = 0
    alpha: float = 3.0
    whiten_shrinkage: float | None = None
    whiten_views: int = 0
    whitening: PCAWhitening | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.dba < 0 or self.qe < 0:
            raise InputError(f"--qe and --dba must be 0 (off) or positive, got {self.qe} and {self.dba}")
        if self.whiten_dim is not None and not self.whiten:
            raise InputError("--whiten-dim needs --whiten")
        if self.whiten_dim is not None and self.whiten_dim < 1:
            raise InputError(f"--whiten-dim must be positive, got {self.whiten_dim}")
        if self.whiten_shrinkage is not None:
            check_shrinkage(self.whiten_shrinkage)
            if not self.whiten:
                raise InputError("--whiten-shrinkage needs --whiten")
            self.whiten_shrinkage = float(self.whiten_shrinkage)
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise InputError(f"--alpha must be a finite number of at least 0, got {self.alpha}")
        if isinstance(self.whiten_views, bool) or not isinstance(self.whiten_views, int):
            raise InputError(f"--whiten-views must be a whole number, got {self.whiten_views!r}")
        if not 0 <= self.whiten_views <= MAX_VIEWS:
            raise InputError(
                f"--whiten-views must be between 0 (PCA on the gallery) and {MAX_VIEWS}, got {self.whiten_views}"
            )
        if self.whiten_views and not self.whiten:
            raise InputError("--whiten-views needs --whiten")

    def settings_as(self, cls: type[P]) -> P:
        """A fresh, unfitted ``cls`` (this class or a subclass: the search-time steps, the steps an
        index stores) with this object's whitening, DBA and QE settings: one copy of the field list,
        so a new setting reaches both."""
        names = [f.name for f in fields(Postprocess) if f.init and f.name != "whitening"]
        return cls(**{name: getattr(self, name) for name in names})

    @property
    def shrinkage(self) -> float:
        """The whitening's shrinkage: the one given, else :attr:`default_shrinkage`."""
        return self.default_shrinkage if self.whiten_shrinkage is None else self.whiten_shrinkage

    @property
    def default_shrinkage(self) -> float:
        """The default shrinkage of this kind of whitening (learned from views, or PCA)."""
        return default_shrinkage(self.whiten_views)

    @property
    def active(self) -> bool:
        """True when any step changes vectors."""
        return self.whiten or self.dba > 0 or self.qe > 0

    def check(self, feature_dim: int) -> None:
        """Refuse options the model's features cannot satisfy, before anything is extracted."""
        if self.whiten:
            check_whiten_dim(self.whiten_dim, feature_dim)

    def fit(self, raw: np.ndarray, views: ViewSource | None = None) -> Postprocess:
        """Fit the whitening on the gallery's raw vectors (DBA and QE have nothing to fit); a
        learned whitening (``whiten_views``) also calls ``views`` for the edited views' vectors."""
        if self.whiten and self.whiten_views:
            if views is None:
                raise InputError("--whiten-views needs the gallery's images, not only its vectors")
            learned = LearnedWhitening(self.whiten_dim, self.shrinkage, self.whiten_views)
            self.whitening = learned.fit(np.asarray(raw), views(self.whiten_views))
        elif self.whiten:
            self.whitening = PCAWhitening(self.whiten_dim, self.shrinkage).fit(np.asarray(raw))
        return self

    def whitened(self, x: np.ndarray) -> np.ndarray:
        """``x`` in the whitened space (unchanged without whitening)."""
        if not self.whiten:
            return x
        if self.whitening is None:
            raise InputError("whitening used before it was fitted")
        return self.whitening.transform(x)

    def gallery(self, raw: np.ndarray, dim: int | None = None) -> np.ndarray:
        """The searchable vectors of the whole gallery (``dim`` columns when it is empty)."""
        raw = np.asarray(raw, dtype=np.float32)
        if not len(raw):
            out_dim = dim if dim is not None else self.output_dim(raw.shape[1])
            return np.zeros((0, out_dim), dtype=np.float32)
        x = self.whitened(raw)
        if self.dba:
            if len(x) > LARGE_DBA:
                log.warning(
                    "DBA over %d vectors: an exact k-NN of the whole gallery, this takes a while", len(x)
                )
            x = database_augmentation(x, min(self.dba, len(x)), self.alpha)
        return np.ascontiguousarray(x, dtype=np.float32)

    def queries(self, raw: np.ndarray, gallery: np.ndarray | None = None) -> np.ndarray:
        """Queries in the gallery's space; with ``gallery`` (the processed vectors) and ``qe``,
        also expanded by their nearest gallery vectors."""
        x = self.whitened(np.asarray(raw, dtype=np.float32))
        if self.qe and gallery is not None:
            x = alpha_query_expansion(x, gallery, self.qe, self.alpha)
        return x

    def output_dim(self, input_dim: int) -> int:
        """The dimension of processed vectors."""
        if self.whitening is not None and self.whitening.projection is not None:
            return int(self.whitening.projection.shape[1])
        return input_dim

    def describe(self) -> dict[str, Any]:
        """The active steps and their parameters (empty when none is on)."""
        out: dict[str, Any] = {}
        if self.whiten:
            out["whiten"] = {"dim": self.whiten_dim, "shrinkage": self.shrinkage}
            if self.whiten_views:  # absent for PCA, so settings recorded before it still compare equal
                out["whiten"]["views"] = self.whiten_views
        if self.dba:
            out["dba"] = {"k": self.dba, "alpha": self.alpha}
        if self.qe:
            out["qe"] = {"k": self.qe, "alpha": self.alpha}
        return out


@dataclass
class ScoreNormalisation:
    """Score normalisation as in SSCD (Pizzi et al., 2022): each query's similarities minus
    ``beta`` times its similarity to its ``k``-th nearest neighbour in a background set of
    unrelated images, so one threshold means the same for every query (a query that resembles
    everything is discounted, a distinctive one is not). The ranking of each query is unchanged;
    thresholds, µAP and dedup decisions change. Without ``background`` vectors the gallery itself
    is the background: its k-th score is already in the short list, so that costs nothing.
    ``views``: each query is that many consecutive rows (its scale views), scored by the best one,
    against the background as against the gallery."""

    k: int
    beta: float = 1.0
    background: np.ndarray | None = field(default=None, repr=False)
    views: int = 1

    def __post_init__(self) -> None:
        if self.k < 1:
            raise InputError(
                f"--score-norm must be at least 1 (the neighbour whose similarity is subtracted), got {self.k}"
            )
        if not (math.isfinite(self.beta) and self.beta >= 0):
            raise InputError(
                f"score normalisation beta must be a finite number of at least 0, got {self.beta}"
            )
        if self.background is not None and len(self.background) < self.k:
            raise InputError(
                f"--score-norm {self.k}: the background set has only {len(self.background)} readable images"
            )

    def bias(self, queries: np.ndarray, head_scores: np.ndarray) -> np.ndarray:
        """(n,) what to subtract from each query's similarities: beta x the k-th background
        similarity (from ``head_scores``, the gallery's own short list, when there is no background)."""
        if self.background is None:
            if head_scores.shape[1] < self.k:
                raise InputError(f"--score-norm {self.k}: the gallery has only {head_scores.shape[1]} images")
            kth = head_scores[:, self.k - 1]
        elif self.views == 1:
            _, sims = topk(np.asarray(queries, np.float32), self.background, self.k)
            kth = sims[:, self.k - 1]
        else:
            kth = self._kth_best_view(np.asarray(queries, np.float32))
        return self.beta * np.asarray(kth, dtype=np.float32)

    def _kth_best_view(self, queries: np.ndarray) -> np.ndarray:
        """(n,) the k-th background similarity when a background image scores its best match over
        each query's ``views`` rows: every one of the top k under that score is in some view's own
        top k, so those lists, each image at its best, hold it."""
        ids, sims = topk(queries, self.background, self.k)
        width = self.views * self.k
        _, best = best_per_owner(
            ids.reshape(-1, width), np.asarray(sims, np.float32).reshape(-1, width), self.k
        )
        return best[:, self.k - 1]


@dataclass(frozen=True)
class GalleryNorm:
    """Gallery-side normalisation against hubs: every gallery image's similarities minus its mean
    similarity to its ``k`` nearest other gallery images, the neighbourhood term of Jégou et al.'s
    contextual dissimilarity measure (CVPR 2007) and of CSLS (Conneau et al., 2018). An image that
    resembles much of the gallery (a plain texture, one of many near-copies) is discounted
    everywhere, so a distinctive true match is not buried under it. Unlike
    :class:`ScoreNormalisation` it changes rankings. It is exact with any inner-product index: the
    gallery's vectors get one more coordinate, minus their offset, and queries a 1 there
    (:meth:`gallery_rows`, :meth:`query_rows`)."""

    k: int

    def __post_init__(self) -> None:
        if self.k < 1:
            raise InputError(f"--gallery-norm K must be at least 1 (0 turns it off), got {self.k}")

    def offsets(self, gallery: np.ndarray) -> np.ndarray:
        """(n,) each gallery vector's mean similarity to its ``k`` nearest others (itself left out
        by position, so an exact duplicate still counts as a neighbour): an exact k-NN, so the
        scores do not depend on an index's backend."""
        gallery = np.asarray(gallery, np.float32)
        n = len(gallery)
        self.check_size(n)
        if n > LARGE_DBA:
            log.warning(
                "--gallery-norm over %d vectors: an exact k-NN of every gallery vector, this takes a while", n
            )
        idx, sims = topk(gallery, gallery, self.k + 1)
        own = idx == np.arange(n)[:, None]
        # drop each row's own entry; a row whose own entry lost a tie to duplicates drops its last
        drop = np.where(own.any(axis=1), own.argmax(axis=1), self.k)
        keep = np.ones(idx.shape, dtype=bool)
        keep[np.arange(n), drop] = False
        return sims[keep].reshape(n, self.k).astype(np.float64).mean(axis=1).astype(np.float32)

    def check_size(self, n: int) -> None:
        """Refuse a gallery of ``n`` images that has no ``k`` others for each image."""
        if n <= self.k:
            raise InputError(f"--gallery-norm {self.k}: the gallery has only {n} images; give a K below that")

    @staticmethod
    def gallery_rows(vectors: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """The gallery's searched rows: each vector with minus its offset appended."""
        vectors = np.asarray(vectors, np.float32)
        return np.ascontiguousarray(np.hstack([vectors, -np.asarray(offsets, np.float32)[:, None]]))

    @staticmethod
    def query_rows(queries: np.ndarray, gallery_side: bool = True) -> np.ndarray:
        """Query rows for :meth:`gallery_rows` (a 1 appended: the offset is subtracted), or, with
        ``gallery_side`` False, rows that leave plain similarities (a 0: a background set's)."""
        queries = np.asarray(queries, np.float32)
        extra = np.full((len(queries), 1), 1.0 if gallery_side else 0.0, np.float32)
        return np.ascontiguousarray(np.hstack([queries, extra]))
