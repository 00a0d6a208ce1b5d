"""Learned post-processing of global features, scikit-learn style: ``fit`` then ``transform``."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from .cache import atomic_write
from .errors import InputError


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


BLOCK = 65_536  # rows converted to float64 at a time


def _blocks(x: np.ndarray):
    """Consecutive row blocks of ``x`` as float64."""
    for start in range(0, len(x), BLOCK):
        yield np.asarray(x[start : start + BLOCK], dtype=np.float64)


def check_whiten_dim(whiten_dim: int | None, feature_dim: int) -> None:
    """Refuse a whitening dimension the features cannot give (one check, one message, for the
    search-time and the index-time whitening)."""
    if whiten_dim is not None and whiten_dim > feature_dim:
        raise InputError(
            f"--whiten-dim {whiten_dim} is larger than the feature dimension ({feature_dim}); "
            f"choose at most {feature_dim}"
        )


class PCAWhitening:
    """PCA whitening with optional dimension reduction, fitted on (gallery) features.

    ``transform`` centres, projects on the top ``dim`` principal axes, divides each by the square
    root of its variance plus ``shrinkage`` times the mean variance, and L2-normalises, so cosine
    similarity applies again. Fitted on a gallery of a few hundred or thousand images, full
    whitening (shrinkage near 0) amplifies noise axes and hurts; the default of 10 only tempers
    the dominant axes (BENCHMARKS.md has the measurements behind it).
    """

    def __init__(self, dim: int | None = None, shrinkage: float = 10.0) -> None:
        if dim is not None and dim < 1:
            raise InputError(f"whitening dimension must be positive, got {dim}")
        self.dim, self.shrinkage = dim, float(shrinkage)
        self.mean: np.ndarray | None = None
        self.projection: np.ndarray | None = None

    def fit(self, x: np.ndarray) -> PCAWhitening:
        """Learn the mean and the whitening projection from the rows of ``x``."""
        x = np.asarray(x)
        if len(x) < 2:
            raise InputError(f"whitening needs at least 2 vectors to fit, got {len(x)}")
        check_whiten_dim(self.dim, x.shape[1])
        # float64 sums over blocks: a million 512-d vectors never get a float64 copy of their own
        self.mean = sum(block.sum(axis=0) for block in _blocks(x)) / len(x)
        cov = np.zeros((x.shape[1], x.shape[1]))
        for block in _blocks(x):
            centred = block - self.mean
            cov += centred.T @ centred
        cov /= len(x) - 1
        values, vectors = np.linalg.eigh(cov)
        order = np.argsort(values)[::-1]
        rank = int(np.sum(values > values.max() * 1e-10))
        keep = min(self.dim or rank, rank)
        values, vectors = values[order][:keep], vectors[:, order][:, :keep]
        values = values + self.shrinkage * values.mean()
        self.projection = vectors / np.sqrt(values)
        return self

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

    def save(self, path: str | Path) -> None:
        """Write the fitted parameters (npz) atomically."""
        if self.mean is None or self.projection is None:
            raise InputError("cannot save an unfitted whitening")
        buffer = io.BytesIO()
        np.savez(buffer, mean=self.mean, projection=self.projection, shrinkage=self.shrinkage)
        atomic_write(Path(path), lambda h: h.write(buffer.getvalue()))

    @classmethod
    def load(cls, path: str | Path) -> PCAWhitening:
        with np.load(path, allow_pickle=False) as data:
            out = cls(int(data["projection"].shape[1]), float(data["shrinkage"]))
            out.mean, out.projection = data["mean"], data["projection"]
        return out
