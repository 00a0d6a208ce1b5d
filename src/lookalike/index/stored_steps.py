"""Post-processing fitted on an index's gallery and stored with it: whitening (PCA, or learned from
edited views of the gallery's images) and DBA.

An index keeps the model's raw vectors (so it can be refitted) and searches the processed ones.
The whitening is fitted once, when the index is built, and applied unchanged to images added
later and to every query; DBA (database-side augmentation) depends on each vector's neighbours,
so it is recomputed over the whole gallery whenever the index changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..steps import PCAWhitening, Postprocess


@dataclass
class IndexPostprocess(Postprocess):
    """The gallery-side steps stored with an index: whitening (``whiten``, ``whiten_dim``,
    ``whiten_shrinkage``, ``whiten_views``), then DBA with ``dba`` neighbours weighted by similarity^``alpha`` (0 =
    off). Query expansion needs the query, so it stays a search-time step."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.qe:
            raise InputError("query expansion (--qe) is a search-time step; it is not stored with an index")

    def describe(self) -> dict[str, Any]:
        """What is stored, as recorded in the manifest and in search outputs."""
        out: dict[str, Any] = {}
        if self.whiten:
            unfitted = {"dim": self.whiten_dim, "shrinkage": self.shrinkage}
            fitted = self.whitening.describe() if self.whitening else unfitted
            out["whiten"] = {**fitted, "requested_dim": self.whiten_dim}  # what --whiten-dim asked for
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
            whiten_dim=(whiten or {}).get("requested_dim", (whiten or {}).get("dim")),
            whiten_views=int((whiten or {}).get("views", 0)),
            dba=int(dba.get("k", 0)),
            alpha=float(dba.get("alpha", 3.0)),
        )
        if post.whiten:
            post.whitening = PCAWhitening.load(folder / f"whitening-{generation}.npz")
            post.whiten_shrinkage = post.whitening.shrinkage  # the fitted file's own, not a copy of it
        return post
