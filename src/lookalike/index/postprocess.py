"""Post-processing fitted on an index's gallery and stored with it: PCA whitening and DBA.

An index keeps the model's raw vectors (so it can be refitted) and searches the processed ones.
The whitening is fitted once, when the index is built, and applied unchanged to images added
later and to every query; DBA (database-side augmentation) depends on each vector's neighbours,
so it is recomputed over the whole gallery whenever the index changes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..postprocess import PCAWhitening, check_whiten_dim
from ..rerank import database_augmentation

log = logging.getLogger("lookalike")
LARGE_DBA = 200_000  # above this many vectors, DBA's exact k-NN over the gallery gets a warning


@dataclass
class IndexPostprocess:
    """The gallery-side steps of an index, in order: whitening (``whiten``, ``whiten_dim``),
    then DBA with ``dba`` neighbours weighted by similarity^``alpha`` (0 = off)."""

    whiten: bool = False
    whiten_dim: int | None = None
    dba: int = 0
    alpha: float = 3.0
    whitening: PCAWhitening | None = None

    def __post_init__(self) -> None:
        if self.dba < 0:
            raise InputError(f"DBA k must be 0 (off) or positive, got {self.dba}")
        if self.whiten_dim is not None and not self.whiten:
            raise InputError("--whiten-dim needs --whiten")
        if self.whiten_dim is not None and self.whiten_dim < 1:
            raise InputError(f"whitening dimension must be positive, got {self.whiten_dim}")

    def check(self, feature_dim: int) -> None:
        """Refuse options the model's features cannot satisfy, before anything is extracted."""
        check_whiten_dim(self.whiten_dim, feature_dim)

    @property
    def active(self) -> bool:
        return self.whiten or self.dba > 0

    def fit(self, raw: np.ndarray) -> IndexPostprocess:
        """Fit the whitening on the gallery's raw vectors (DBA has nothing to fit)."""
        if self.whiten:
            self.whitening = PCAWhitening(self.whiten_dim).fit(np.asarray(raw))
        return self

    def queries(self, x: np.ndarray) -> np.ndarray:
        """Query vectors in the index's space (whitened when the gallery is; DBA is gallery-only)."""
        if not self.whiten:
            return x
        if self.whitening is None:
            raise InputError("index whitening used before it was fitted")
        return self.whitening.transform(x)

    def gallery(self, raw: np.ndarray, dim: int | None = None) -> np.ndarray:
        """The searchable vectors of the whole gallery (``dim`` columns when it is empty)."""
        raw = np.asarray(raw, dtype=np.float32)
        if not len(raw):
            out_dim = dim if dim is not None else self.output_dim(raw.shape[1])
            return np.zeros((0, out_dim), dtype=np.float32)
        x = self.queries(raw)
        if self.dba:
            if len(x) > LARGE_DBA:
                log.warning("DBA over %d vectors: an exact k-NN of the whole gallery, this takes a while", len(x))
            x = database_augmentation(x, min(self.dba, len(x)), self.alpha)
        return np.ascontiguousarray(x, dtype=np.float32)

    def output_dim(self, input_dim: int) -> int:
        """The dimension of processed vectors."""
        if self.whitening is not None and self.whitening.projection is not None:
            return int(self.whitening.projection.shape[1])
        return input_dim

    def describe(self) -> dict[str, Any]:
        """What is stored, as recorded in the manifest and in search outputs."""
        out: dict[str, Any] = {}
        if self.whiten:
            out["whiten"] = self.whitening.describe() if self.whitening else {"dim": self.whiten_dim}
        if self.dba:
            out["dba"] = {"k": self.dba, "alpha": self.alpha}
        return out

    def save(self, folder: Path, generation: int) -> None:
        if self.whitening is not None:
            self.whitening.save(folder / f"whitening-{generation}.npz")

    @classmethod
    def from_manifest(cls, entry: dict[str, Any] | None, folder: Path, generation: int) -> IndexPostprocess:
        """Rebuild the steps a manifest records (``entry`` is its ``postprocess`` field)."""
        entry = entry or {}
        whiten = entry.get("whiten")
        dba = entry.get("dba") or {}
        post = cls(
            whiten=whiten is not None,
            whiten_dim=(whiten or {}).get("dim"),
            dba=int(dba.get("k", 0)),
            alpha=float(dba.get("alpha", 3.0)),
        )
        if post.whiten:
            post.whitening = PCAWhitening.load(folder / f"whitening-{generation}.npz")
        return post
