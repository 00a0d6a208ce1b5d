"""Vector index backends behind one protocol: exact (blocked matmul, NumPy or torch) and FAISS.

Every backend stores int64 ids chosen by the caller and answers ``search`` with (ids, scores)
best first (cosine similarity, or Euclidean distance). A backend is one class implementing
:class:`VectorIndex` plus one :func:`register_backend` call; specs (``exact``, ``faiss:HNSW32``,
the short names and ``auto``) are resolved through that table. A saved index keeps the spec in
its manifest and whatever files the backend's ``save`` wrote (none for ``exact``, which
searches the index's own vectors; ``backend-<g>.bin`` for FAISS).
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import InputError
from ..fileio import atomic_write
from ..knn import METRICS, topk
from ..registry import Entry, Registry

AUTO_EXACT_LIMIT = 200_000  # above this many vectors, `auto` picks an approximate index
BACKEND_FILE_SUFFIXES = ("bin", "npy", "npz", "json")  # the names an index folder's cleanup knows


def backend_file(folder: Path, generation: int, suffix: str = "bin") -> Path:
    """Where a backend saves its data for ``generation``: ``backend-<g>.<suffix>``. Backends write
    only such files, so the index replaces and cleans them up with the rest of a generation."""
    if suffix not in BACKEND_FILE_SUFFIXES:
        raise ValueError(f"backend files end in {', '.join(BACKEND_FILE_SUFFIXES)}, not {suffix!r}")
    return Path(folder) / f"backend-{generation}.{suffix}"


class VectorIndex(Protocol):
    """What every backend implements; the index store calls nothing else.

    ``spec`` is the resolved spec written to the manifest (``load`` gets it back); ``dim`` and
    ``metric`` are what it was created for. ``shares_vectors`` is True for a backend that searches
    the arrays it is filled with in place, keeping no copy of its own (``exact``): the store then
    refills it with the index's vectors after each change instead of adding or removing.
    Subclassing this protocol explicitly inherits ``shares_vectors = False`` and ``fill`` as
    ``clear`` + ``add``.
    """

    spec: str
    dim: int
    metric: str
    shares_vectors: bool = False

    @classmethod
    def create(cls, spec: str, dim: int, metric: str, n_vectors: int, device: str = "cpu") -> VectorIndex:
        """A new empty backend for a resolved ``spec``, sized for about ``n_vectors``."""
        ...

    @classmethod
    def load(
        cls,
        spec: str,
        folder: Path,
        generation: int,
        dim: int,
        metric: str,
        vectors: np.ndarray,
        ids: np.ndarray,
        device: str = "cpu",
    ) -> VectorIndex:
        """The backend ``save(folder, generation)`` wrote. ``vectors`` (a read-only memory map) and
        ``ids`` are what the index stores for that generation, in its order."""
        ...

    def save(self, folder: Path, generation: int) -> list[Path]:
        """Write this backend's data for ``generation`` into ``folder`` (as :func:`backend_file`
        names, each atomically) and return the files written: ``[]`` when it needs none."""
        ...

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add (n, dim) vectors under new ids (an untrained index trains on them first)."""
        ...

    def remove(self, ids: np.ndarray) -> None:
        """Drop the vectors with these ids; unknown ids are ignored."""
        ...

    def clear(self) -> None:
        """Drop every vector, keeping what was trained (IVF lists, codebooks, search settings)."""
        ...

    def fill(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Make ``vectors`` under ``ids`` the whole content (what ``clear`` then ``add`` does)."""
        self.clear()
        if len(ids):
            self.add(vectors, ids)

    def stream_into(self, folder: Path, generation: int) -> bool:
        """Optional: make later ``add`` calls write generation ``generation``'s data in ``folder`` as
        they arrive (``save(folder, generation)`` completes it; the generation in force is untouched
        until then) and return True, so a streaming build never holds every vector. False, the
        default: the backend takes its content whole (FAISS trains on it, exact searches in place)."""
        return False

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores), each (n_queries, k') with k' = min(k, len), best first; an approximate
        index pads with id -1 where it found fewer."""
        ...

    def __len__(self) -> int: ...


# ---------------------------------------------------------------------------------- registry
BACKENDS: Registry[VectorIndex] = Registry("index backend")  # name -> the class; info: argument
ALIASES: dict[str, str] = {}  # short name -> spec, e.g. "hnsw" -> "faiss:HNSW32"


def _usage(entry: Entry) -> str:
    argument = entry.info.get("argument")
    return entry.name if argument is None else f"{entry.name}:<{argument}>"


def register_backend(
    name: str, cls: type[VectorIndex], *, argument: str | None = None, aliases: dict[str, str] | None = None
) -> type[VectorIndex]:
    """Make ``cls`` the backend for specs ``name`` (or ``name:<argument>`` when ``argument``
    describes what follows the colon, e.g. a FAISS factory string); ``aliases`` maps short names to
    full specs. Returns ``cls``. Registering a name again replaces it (a plug-in may override a
    built-in, as in every lookalike registry); a backend name and a short name never coincide."""
    for new, taken in [(name, set(ALIASES)), *((alias, set(BACKENDS.names())) for alias in aliases or {})]:
        if not new or ":" in new or new == "auto" or new in taken:
            raise ValueError(
                f"backend name {new!r} is reserved, a short name of another kind, or not a plain name"
            )
    BACKENDS.register(name, cls, argument=argument)
    for alias, spec in (aliases or {}).items():
        ALIASES[alias] = spec
    return cls


def _registration(spec: str) -> Entry | None:
    name, colon, argument = spec.partition(":")
    if name not in BACKENDS:
        return None
    entry = BACKENDS.get(name)
    takes_argument = entry.info.get("argument") is not None
    if takes_argument != (colon != "") or (colon and not argument):
        return None
    return entry


def _known_specs() -> str:
    bare = [_usage(e) for e in BACKENDS if e.info.get("argument") is None]
    with_argument = [_usage(e) for e in BACKENDS if e.info.get("argument") is not None]
    names = ["auto", *bare, *ALIASES, *with_argument]
    return f"{', '.join(names[:-1])} or {names[-1]}"


def resolve_backend(spec: str, n_vectors: int) -> str:
    """Turn ``auto`` / short names into a registered backend spec, e.g. ``exact`` or ``faiss:<factory>``."""
    resolved = spec
    if resolved == "auto":  # IVF over 8-bit codes: recall 0.997 at 3,700 q/s for 1M x 512 in BENCHMARKS.md
        resolved = "exact" if n_vectors <= AUTO_EXACT_LIMIT else "ivfsq8"
    resolved = ALIASES.get(resolved, resolved)
    if _registration(resolved) is None:
        raise InputError(f"unknown index backend {spec!r}; use {_known_specs()}")
    return resolved


def create_backend(spec: str, dim: int, metric: str, n_vectors: int, device: str = "cpu") -> VectorIndex:
    """A new empty backend for ``spec`` (see :func:`resolve_backend`), sized for ``n_vectors``."""
    resolved = resolve_backend(spec, n_vectors)
    return _registration(resolved).factory.create(resolved, dim, metric, n_vectors, device)


def load_backend(
    spec: str,
    folder: Path,
    generation: int,
    dim: int,
    metric: str,
    vectors: np.ndarray,
    ids: np.ndarray,
    device: str = "cpu",
) -> VectorIndex:
    """Load the backend that ``save(folder, generation)`` wrote for a manifest's ``spec``."""
    entry = _registration(spec)
    if entry is None:
        raise InputError(
            f"index backend {spec!r} is not available here (registered: {', '.join(BACKENDS.names())}); "
            "import the plug-in that provides it (e.g. name it in $LOOKALIKE_PLUGINS)"
        )
    return entry.factory.load(spec, Path(folder), generation, dim, metric, vectors, ids, device)


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise InputError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")


def _check_vectors(vectors: np.ndarray, dim: int) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise InputError(f"expected vectors of shape (n, {dim}), got {vectors.shape}")
    return vectors


def _empty_result(n_queries: int) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((n_queries, 0), np.int64), np.zeros((n_queries, 0), np.float32)


# ------------------------------------------------------------------------------------- exact
class ExactIndex(VectorIndex):
    """Exact top-k by blocked matrix products; ties by insertion order. ``device='cuda'`` runs
    the products on the GPU with torch, then rescores the shortlist exactly on the CPU.

    It searches the arrays it is filled with in place (a memory map works) and so saves nothing:
    a saved index's vectors are its data, handed back to ``load``."""

    spec = "exact"
    shares_vectors = True

    def __init__(self, dim: int, metric: str = "cosine", device: str = "cpu") -> None:
        _check_metric(metric)
        self.dim, self.metric, self.device = dim, metric, device
        self.clear()

    @classmethod
    def create(cls, spec: str, dim: int, metric: str, n_vectors: int, device: str = "cpu") -> ExactIndex:
        return cls(dim, metric, device)

    @classmethod
    def load(
        cls,
        spec: str,
        folder: Path,
        generation: int,
        dim: int,
        metric: str,
        vectors: np.ndarray,
        ids: np.ndarray,
        device: str = "cpu",
    ) -> ExactIndex:
        index = cls(dim, metric, device)
        index.fill(vectors, ids)
        return index

    def save(self, folder: Path, generation: int) -> list[Path]:
        return []

    def __len__(self) -> int:
        return len(self._ids)

    def fill(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Take these arrays as the whole content, without copying (a memory map works)."""
        if vectors.shape != (len(ids), self.dim):
            raise InputError(f"expected vectors of shape ({len(ids)}, {self.dim}), got {vectors.shape}")
        self._vectors, self._ids = vectors, np.asarray(ids, dtype=np.int64)

    def clear(self) -> None:
        self._vectors = np.zeros((0, self.dim), dtype=np.float32)
        self._ids = np.zeros(0, dtype=np.int64)

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
            return _empty_result(len(queries))
        if self.device != "cpu":
            rows, scores = _torch_topk(queries, self._vectors, k, self.metric, self.device)
        else:
            rows, scores = topk(queries, self._vectors, k, self.metric)
        return self._ids[rows], scores


def _torch_topk(
    queries: np.ndarray, gallery: np.ndarray, k: int, metric: str, device: str, block: int = 65_536
) -> tuple[np.ndarray, np.ndarray]:
    """GPU shortlist of 2k per query by blocked matmul, then the CPU's exact, tie-stable rescoring."""
    import torch

    from ..knn import _best_k, _exact_scores

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


# ------------------------------------------------------------------------------------- FAISS
class FaissIndex(VectorIndex):
    """A FAISS index described by a factory string ("Flat", "IVF1024,PQ64", "HNSW32", ...).

    Cosine uses inner product on the (normalised) vectors; euclidean uses L2 and reports
    distances. Ids live in an IndexIDMap2; HNSW, which cannot delete, is rebuilt on remove from
    the vectors it still holds. Untrained indexes train on the first vectors they are given.
    Saved as ``backend-<g>.bin`` (FAISS's own serialisation); ``fill`` is ``clear`` + ``add``.
    """

    shares_vectors = False

    def __init__(self, dim: int, metric: str = "cosine", factory: str = "Flat") -> None:
        faiss = _faiss()
        _check_metric(metric)
        self._setup(dim, metric, factory)
        try:
            self.index = faiss.IndexIDMap2(faiss.index_factory(dim, factory, self._faiss_metric))
        except RuntimeError as exc:
            raise InputError(f"FAISS cannot build {factory!r}: {str(exc).splitlines()[-1]}") from None
        self._default_search_params()

    def _setup(self, dim: int, metric: str, factory: str) -> None:
        self.dim, self.metric, self.factory = dim, metric, factory
        self.spec = f"faiss:{factory}"
        self._faiss_metric = _faiss().METRIC_INNER_PRODUCT if metric == "cosine" else _faiss().METRIC_L2
        self.nprobe: int | None = None
        self.ef_search: int | None = None

    @classmethod
    def create(cls, spec: str, dim: int, metric: str, n_vectors: int, device: str = "cpu") -> FaissIndex:
        """``faiss:<factory>``; ``{nlist}`` and ``{m}`` in the factory are sized for ``n_vectors``."""
        factory = spec.removeprefix("faiss:")
        if "{nlist}" in factory or "{m}" in factory:
            nlist = int(max(1, min(65_536, 4 * np.sqrt(max(n_vectors, 1)))))
            nlist = min(nlist, max(1, n_vectors // 39))
            m = next(m for m in (64, 48, 32, 16, 8, 4, 2, 1) if dim % m == 0)
            factory = factory.format(nlist=nlist, m=m)
        return cls(dim, metric, factory)

    @classmethod
    def load(
        cls,
        spec: str,
        folder: Path,
        generation: int,
        dim: int,
        metric: str,
        vectors: np.ndarray,
        ids: np.ndarray,
        device: str = "cpu",
    ) -> FaissIndex:
        index = cls.__new__(cls)
        index._setup(dim, metric, spec.removeprefix("faiss:"))
        data = np.fromfile(backend_file(folder, generation), dtype=np.uint8)
        index.index = _faiss().deserialize_index(data)
        return index

    def save(self, folder: Path, generation: int) -> list[Path]:
        path = backend_file(folder, generation)
        data = _faiss().serialize_index(self.index).tobytes()
        atomic_write(path, lambda h: h.write(data))
        return [path]

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
            return _empty_result(len(queries))
        scores, ids = self.index.search(queries, k)
        if self.metric == "euclidean":
            scores = np.sqrt(np.maximum(scores, 0.0))
        return ids.astype(np.int64), scores.astype(np.float32)


def _faiss():
    try:
        import faiss
    except ImportError:
        raise InputError("FAISS backends need faiss: pip install faiss-cpu (or faiss-gpu)") from None
    return faiss


register_backend("exact", ExactIndex)
register_backend(
    "faiss",
    FaissIndex,
    argument="factory string",
    aliases={
        "flat": "faiss:Flat",
        "hnsw": "faiss:HNSW32",
        "hnswsq8": "faiss:HNSW32,SQ8",
        "ivfpq": "faiss:IVF{nlist},PQ{m}",
        "ivfsq8": "faiss:IVF{nlist},SQ8",
    },
)
