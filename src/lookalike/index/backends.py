"""Vector index backends behind one protocol: exact (blocked matmul, NumPy or torch) and FAISS.

Every backend stores int64 ids chosen by the caller, answers ``search`` with (ids, scores) best
first (cosine similarity, or Euclidean distance), and saves to / loads from one file.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Protocol

import numpy as np

from ..cache import atomic_write
from ..errors import InputError
from ..search import METRICS, topk

AUTO_EXACT_LIMIT = 200_000  # above this many vectors, `auto` picks an approximate index


class VectorIndex(Protocol):
    """What every backend answers: add, search, remove, len, save (load is a classmethod)."""

    dim: int
    metric: str
    spec: str

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def remove(self, ids: np.ndarray) -> None: ...

    def __len__(self) -> int: ...

    def save(self, path: Path) -> None: ...


class ExactIndex:
    """Exact top-k by blocked matrix products; ties by insertion order. ``device='cuda'`` runs
    the products on the GPU with torch, then rescores the shortlist exactly on the CPU."""

    spec = "exact"

    def __init__(self, dim: int, metric: str = "cosine", device: str = "cpu") -> None:
        if metric not in METRICS:
            raise InputError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
        self.dim, self.metric, self.device = dim, metric, device
        self._vectors = np.zeros((0, dim), dtype=np.float32)
        self._ids = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._ids)

    def assign(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Take these arrays as the whole content, without copying (a memory map works)."""
        if vectors.shape != (len(ids), self.dim):
            raise InputError(f"expected vectors of shape ({len(ids)}, {self.dim}), got {vectors.shape}")
        self._vectors, self._ids = vectors, np.asarray(ids, dtype=np.int64)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        vectors = _check_vectors(vectors, self.dim)
        self._vectors = np.vstack([self._vectors, vectors])
        self._ids = np.concatenate([self._ids, np.asarray(ids, dtype=np.int64)])

    def remove(self, ids: np.ndarray) -> None:
        keep = ~np.isin(self._ids, np.asarray(ids, dtype=np.int64))
        self._vectors, self._ids = self._vectors[keep], self._ids[keep]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = _check_vectors(queries, self.dim)
        if len(self._ids) == 0:
            return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
        if self.device != "cpu":
            rows, scores = _torch_topk(queries, self._vectors, k, self.metric, self.device)
        else:
            rows, scores = topk(queries, self._vectors, k, self.metric)
        return self._ids[rows], scores

    def save(self, path: Path) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, vectors=self._vectors, ids=self._ids)
        atomic_write(path, lambda h: h.write(buffer.getvalue()))

    @classmethod
    def load(cls, path: Path, dim: int, metric: str, device: str = "cpu") -> ExactIndex:
        index = cls(dim, metric, device)
        with np.load(path, allow_pickle=False) as data:
            index.assign(data["vectors"], data["ids"])
        return index


def _torch_topk(
    queries: np.ndarray, gallery: np.ndarray, k: int, metric: str, device: str, block: int = 65_536
) -> tuple[np.ndarray, np.ndarray]:
    """GPU shortlist of 2k per query by blocked matmul, then the CPU's exact, tie-stable rescoring."""
    import torch

    from ..search import _best_k, _exact_scores

    k = min(k, len(gallery))
    pool = min(2 * k, len(gallery))
    q = torch.from_numpy(queries).to(device)
    cand_v, cand_i = [], []
    for g0 in range(0, len(gallery), block):
        g = torch.from_numpy(np.ascontiguousarray(gallery[g0 : g0 + block])).to(device)
        good = q @ g.T if metric == "cosine" else 2 * (q @ g.T) - (g * g).sum(1)[None, :]
        v, i = good.topk(min(pool, g.shape[0]), dim=1)
        cand_v.append(v)
        cand_i.append(i + g0)
    v, i = torch.cat(cand_v, 1), torch.cat(cand_i, 1)
    v, j = v.topk(pool, dim=1)
    rows = i.gather(1, j).cpu().numpy()
    exact, rows = _best_k(_exact_scores(queries, gallery, rows, metric), rows, k)
    return rows, (exact if metric == "cosine" else -exact).astype(np.float32)


class FaissIndex:
    """A FAISS index described by a factory string ("Flat", "IVF1024,PQ64", "HNSW32", ...).

    Cosine uses inner product on the (normalised) vectors; euclidean uses L2 and reports
    distances. Ids live in an IndexIDMap2; HNSW, which cannot delete, is rebuilt on remove from
    the vectors it still holds. Untrained indexes train on the first vectors they are given.
    """

    def __init__(self, dim: int, metric: str = "cosine", factory: str = "Flat") -> None:
        faiss = _faiss()
        if metric not in METRICS:
            raise InputError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
        self.dim, self.metric, self.factory = dim, metric, factory
        self.spec = f"faiss:{factory}"
        self._faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
        try:
            self.index = faiss.IndexIDMap2(faiss.index_factory(dim, factory, self._faiss_metric))
        except RuntimeError as exc:
            raise InputError(f"FAISS cannot build {factory!r}: {str(exc).splitlines()[-1]}") from None
        self.nprobe: int | None = None
        self.ef_search: int | None = None
        self._default_search_params()

    def _default_search_params(self) -> None:
        """Search settings that FAISS serialises with the index: IVF probes 1/128 of its lists
        (at least 16: 31 of the 4,000 that `auto` gives a million vectors), HNSW explores 128
        candidates. From the sweep in BENCHMARKS.md, where recall@10 stays at 0.997 from 4 probes
        up while queries/s halve with each doubling."""
        faiss = _faiss()
        inner = self.index.index
        if "IVF" in self.factory:
            ivf = faiss.extract_index_ivf(inner)
            ivf.nprobe = min(ivf.nlist, max(16, ivf.nlist // 128))
        if "HNSW" in self.factory:
            faiss.downcast_index(inner).hnsw.efSearch = 128

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        vectors = _check_vectors(vectors, self.dim)
        if not self.index.is_trained:
            try:
                self.index.train(self._training_sample(vectors))
            except RuntimeError as exc:
                reason = str(exc).splitlines()[-1].split("failed: ")[-1]
                raise InputError(
                    f"FAISS {self.factory!r} cannot train on {len(vectors)} vectors ({reason}); "
                    "use the exact or flat backend for small galleries, or fewer IVF lists / PQ bits"
                ) from None
        self.index.add_with_ids(vectors, np.asarray(ids, dtype=np.int64))

    def _training_sample(self, vectors: np.ndarray) -> np.ndarray:
        """At most 64 vectors per IVF list, and never fewer than 65,536 (what PQ and SQ codebooks
        need), as a seeded sample: k-means on a million 512-d vectors costs minutes more and
        places the lists no better than on a quarter of a million."""
        if "IVF" not in self.factory:
            return vectors
        limit = max(64 * _faiss().extract_index_ivf(self.index.index).nlist, 65_536)
        if len(vectors) <= limit:
            return vectors
        rows = np.sort(np.random.default_rng(0).choice(len(vectors), size=limit, replace=False))
        return vectors[rows]

    def remove(self, ids: np.ndarray) -> None:
        faiss = _faiss()
        ids = np.asarray(ids, dtype=np.int64)
        if "HNSW" not in self.factory:
            self.index.remove_ids(faiss.IDSelectorArray(ids))
            return
        all_ids = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        keep = all_ids[~np.isin(all_ids, ids)]
        vectors = np.stack([self.index.reconstruct(int(i)) for i in keep]) if len(keep) else None
        fresh = FaissIndex(self.dim, self.metric, self.factory)
        if vectors is not None:
            fresh.add(vectors, keep)
        self.index = fresh.index

    def clear(self) -> None:
        """Drop every vector but keep what was trained (IVF lists, codebooks, search settings)."""
        self.index.reset()

    def _tune(self) -> None:
        faiss = _faiss()
        if self.nprobe is not None and "IVF" in self.factory:
            faiss.extract_index_ivf(self.index.index).nprobe = self.nprobe
        if self.ef_search is not None and "HNSW" in self.factory:
            faiss.downcast_index(self.index.index).hnsw.efSearch = self.ef_search

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = _check_vectors(queries, self.dim)
        self._tune()
        k = min(k, len(self))
        if k == 0:
            return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
        scores, ids = self.index.search(queries, k)
        if self.metric == "euclidean":
            scores = np.sqrt(np.maximum(scores, 0.0))
        return ids.astype(np.int64), scores.astype(np.float32)

    def save(self, path: Path) -> None:
        data = _faiss().serialize_index(self.index).tobytes()
        atomic_write(path, lambda h: h.write(data))

    @classmethod
    def load(cls, path: Path, dim: int, metric: str, factory: str) -> FaissIndex:
        faiss = _faiss()
        index = cls.__new__(cls)
        index.dim, index.metric, index.factory, index.spec = dim, metric, factory, f"faiss:{factory}"
        index._faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
        index.index = faiss.deserialize_index(np.fromfile(path, dtype=np.uint8))
        index.nprobe = index.ef_search = None
        return index


def _faiss():
    try:
        import faiss
    except ImportError:
        raise InputError("FAISS backends need faiss: pip install faiss-cpu (or faiss-gpu)") from None
    return faiss


def _check_vectors(vectors: np.ndarray, dim: int) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise InputError(f"expected vectors of shape (n, {dim}), got {vectors.shape}")
    return vectors


def resolve_backend(spec: str, n_vectors: int) -> str:
    """Turn ``auto`` / short names into a backend spec: ``exact`` or ``faiss:<factory>``."""
    named = {
        "flat": "faiss:Flat",
        "hnsw": "faiss:HNSW32",
        "hnswsq8": "faiss:HNSW32,SQ8",
        "ivfpq": "faiss:IVF{nlist},PQ{m}",
        "ivfsq8": "faiss:IVF{nlist},SQ8",
    }
    if spec == "auto":  # IVF over 8-bit codes: recall 0.997 at 3,700 q/s for 1M x 512 in BENCHMARKS.md
        spec = "exact" if n_vectors <= AUTO_EXACT_LIMIT else "ivfsq8"
    spec = named.get(spec, spec)
    if spec == "exact" or spec.startswith("faiss:"):
        return spec
    raise InputError(
        f"unknown index backend {spec!r}; use auto, exact, {', '.join(named)} or faiss:<factory string>"
    )


def create_backend(spec: str, dim: int, metric: str, n_vectors: int, device: str = "cpu") -> VectorIndex:
    """A new empty backend for ``spec`` (see :func:`resolve_backend`), sized for ``n_vectors``."""
    spec = resolve_backend(spec, n_vectors)
    if spec == "exact":
        return ExactIndex(dim, metric, device)
    factory = spec.removeprefix("faiss:")
    if "{nlist}" in factory or "{m}" in factory:
        nlist = int(max(1, min(65_536, 4 * np.sqrt(max(n_vectors, 1)))))
        nlist = min(nlist, max(1, n_vectors // 39))
        m = next(m for m in (64, 48, 32, 16, 8, 4, 2, 1) if dim % m == 0)
        factory = factory.format(nlist=nlist, m=m)
    return FaissIndex(dim, metric, factory)


def load_backend(spec: str, path: Path, dim: int, metric: str, device: str = "cpu") -> VectorIndex:
    """Load a backend saved by ``save``."""
    if spec == "exact":
        return ExactIndex.load(path, dim, metric, device)
    return FaissIndex.load(path, dim, metric, spec.removeprefix("faiss:"))
