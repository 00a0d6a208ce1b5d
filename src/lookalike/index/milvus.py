"""A Milvus index backend: the vectors live in Milvus (Milvus Lite inside the index folder, or a server).

Specs: ``milvus`` (HNSW), ``milvus:<INDEX_TYPE>`` with ``FLAT``, ``HNSW``, ``IVF_FLAT``, ``IVF_SQ8``,
``IVF_PQ``, ``DISKANN`` or ``AUTOINDEX`` (what the server offers; Milvus Lite refuses ``IVF_PQ``
and ``DISKANN``, which it builds but cannot load again), followed by ``,key=value``
options: ``uri=http://HOST:19530`` for a server or cluster (default: a Milvus Lite database
``milvus.db`` in the index folder), ``collection=NAME`` (the base name of its collections on a
server; default ``lookalike_<hash of the index folder>``) and build or search parameters (``M``,
``efConstruction``, ``ef``, ``nlist``, ``nprobe``, ``m``, ``search_list``). The token comes from
``$LOOKALIKE_MILVUS_TOKEN`` and is never written anywhere. Cosine is Milvus's inner product on the
(normalised) vectors, euclidean its L2 (reported as distances, not their squares).

Build parameters are sent as pymilvus documents them (``add_index(..., params={...})``, which
pymilvus 3.0.2 sends as separate key/value pairs): a Milvus server builds with them. Milvus Lite
3.2.2 reads only a JSON ``params`` pair and builds with its own defaults (``LITE_BUILD_DEFAULTS``:
HNSW M 16, efConstruction 200; IVF 128 lists per segment of about 66,000 rows), so with Lite the
spec records no sized ``nlist``/``m``, ``backend-<g>.json`` records Lite's defaults as
``built_with``, and the first Lite collection with build parameters logs a one-time warning. Search
parameters (``ef``, ``nprobe``, ``search_list``) reach both.

Consistency with the index's generations (the manifest names generation g; items carry stable ids):

- Changes are kept in memory and written to Milvus by ``save(folder, g)``, just before the store
  switches the manifest. ``add``/``remove`` are upserts and deletes by id into the collection in
  use; a build, a ``--force`` rebuild or a ``fill`` (DBA recomputed) writes a fresh collection
  ``<base>_g<g>``, so the generation in force keeps answering until the manifest switches.
- A streaming build (``stream_into``: ``index build --ray``) writes its ``add``s into that fresh
  collection as they come, every ``STREAM_ROWS`` rows, instead of keeping them until the save; the
  save then writes the rest and completes the collection like any other.
- The collection carries a property ``lookalike.generation``: ``writing`` while a save writes, then
  the generation it completed. ``backend-<g>.json`` names the collection of generation g.
- ``load(g)`` checks the property: anything but ``g`` means a save was interrupted or never
  switched the manifest, and the collection is repaired from the index's own vectors (ids the
  manifest no longer lists are deleted, every listed vector upserted, which is idempotent), so a
  crash between the Milvus write and the manifest switch leaves the old items; a collection that
  is gone is written again the same way. Loading writes nothing otherwise.
- A save drops this index's collections other than the one it writes and the one in force, so at
  most two exist. Results are filtered to the ids this process's generation knows (a server
  replica on an older generation never sees ids it cannot name).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
import warnings
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..fileio import atomic_write
from .backends import (
    ALIASES,
    BACKENDS,
    VectorIndex,
    _check_metric,
    _check_vectors,
    backend_file,
    register_backend,
)

TOKEN_ENV = "LOOKALIKE_MILVUS_TOKEN"
LITE_DB = "milvus.db"  # Milvus Lite's database (a folder) inside the index folder
STATE = "lookalike.generation"  # collection property: the generation its content completes, or WRITING
WRITING = "writing"
INDEX_TYPES = ("FLAT", "HNSW", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "DISKANN", "AUTOINDEX")
# Milvus Lite 3.2.2 accepts these index definitions but fails to build them when the collection is
# loaded ("reserved for a future phase", "unknown index_type"): an index built with them would open
# nowhere, so lookalike refuses them on Lite (Lite's own server behind --milvus-uri cannot be told apart)
LITE_UNSUPPORTED = ("IVF_PQ", "DISKANN")
DEFAULT_INDEX = "HNSW"
BUILD_KEYS = {"M", "efConstruction", "nlist", "m", "nbits"}
SEARCH_KEYS = {"ef", "nprobe", "search_list"}
CONNECTION_KEYS = {"uri", "collection"}
BATCH = 2_000  # vectors per insert / queries per search request (well under gRPC's message limit)
TIMEOUT_S = 10.0
STREAM_ROWS = 10_000  # a streaming build writes through once this many added rows are pending
MAX_K = 16_384  # Milvus's largest top-k
# what Milvus Lite 3.2.2 builds with whatever build parameters pymilvus sends (see the module)
LITE_BUILD_DEFAULTS: dict[str, dict[str, int]] = {
    "HNSW": {"M": 16, "efConstruction": 200},
    "AUTOINDEX": {"M": 16, "efConstruction": 200},  # Lite's AUTOINDEX is its HNSW
    "IVF_FLAT": {"nlist": 128},  # per segment, and at most its rows
    "IVF_SQ8": {"nlist": 128},
}
log = logging.getLogger("lookalike")
_lite_warned = False  # the one-time warning that Milvus Lite ignores the build parameters


def _milvus():
    try:
        import pymilvus
    except ImportError:
        raise InputError(
            'the milvus backend needs pymilvus and milvus-lite: pip install "lookalike[milvus]"'
        ) from None
    for name in ("pymilvus", "milvus_lite"):  # their errors become one InputError here
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return pymilvus


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """(index type, options) of ``milvus[:TYPE][,key=value...]``; bad parts raise InputError."""
    name, _, argument = spec.partition(":")
    if name != "milvus":
        raise InputError(f"not a milvus backend spec: {spec!r}")
    parts = [p.strip() for p in argument.split(",")] if argument else []
    index_type = DEFAULT_INDEX
    if parts and "=" not in parts[0]:
        index_type = parts.pop(0).upper()
    if index_type not in INDEX_TYPES:
        raise InputError(f"milvus index type {index_type!r} is unknown; use one of {', '.join(INDEX_TYPES)}")
    options: dict[str, str] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq or not value or key not in BUILD_KEYS | SEARCH_KEYS | CONNECTION_KEYS:
            known = ", ".join(sorted(BUILD_KEYS | SEARCH_KEYS | CONNECTION_KEYS))
            raise InputError(f"milvus backend option {part!r}: use key=value with key one of {known}")
        if key not in CONNECTION_KEYS and not value.isdigit():
            raise InputError(f"milvus backend option {part!r}: the value must be a whole number")
        options[key] = value
    if "collection" in options and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,200}", options["collection"]):
        raise InputError(f"milvus collection name {options['collection']!r}: letters, digits and _ only")
    return index_type, options


def format_spec(index_type: str, options: dict[str, str]) -> str:
    """The spec string for an index type and options (the inverse of :func:`parse_spec`)."""
    return ",".join([f"milvus:{index_type}", *(f"{k}={v}" for k, v in options.items())])


def with_uri(spec: str, uri: str | None) -> str:
    """``spec`` with ``uri=...`` set: what ``--milvus-uri`` does to ``--backend milvus[:...]``."""
    if uri is None:
        return spec
    if spec != "milvus" and not spec.startswith("milvus:"):
        raise InputError(f"--milvus-uri is for --backend milvus (or milvus:<index type>), not {spec!r}")
    if not re.match(r"^(https?|tcp|grpc)://[^\s,]+$", uri):
        raise InputError(f"--milvus-uri {uri!r}: expected http://HOST:PORT (or https://...)")
    index_type, options = parse_spec(ALIASES.get(spec, spec))
    options["uri"] = uri
    return format_spec(index_type, options)


def _build_params(index_type: str, options: dict[str, str], dim: int, n_vectors: int) -> dict[str, int]:
    """Build parameters sized like the FAISS defaults: IVF with 4 sqrt(n) lists (at least 39 vectors
    each), PQ with dim/8-byte codes, HNSW with 32 links and 200 candidates while building."""
    given = {k: int(v) for k, v in options.items() if k in BUILD_KEYS}
    if index_type == "HNSW":
        return {"M": 32, "efConstruction": 200, **given}
    if index_type.startswith("IVF"):
        nlist = int(max(1, min(65_536, 4 * np.sqrt(max(n_vectors, 1)))))
        params = {"nlist": max(1, min(nlist, n_vectors // 39))}
        if index_type == "IVF_PQ":
            params.update(m=next(m for m in (64, 48, 32, 16, 8, 4, 2, 1) if dim % m == 0), nbits=8)
        return {**params, **given}
    return given


def _search_params(index_type: str, options: dict[str, str], build: dict[str, int]) -> dict[str, int]:
    """Search parameters as FAISS's: HNSW explores 128 candidates, IVF probes 1/128 of its lists
    (at least 16), DiskANN keeps a list of 100."""
    given = {k: int(v) for k, v in options.items() if k in SEARCH_KEYS}
    if index_type == "HNSW":
        return {"ef": 128, **given}
    if index_type.startswith("IVF"):
        nlist = build["nlist"]
        return {"nprobe": min(nlist, max(16, nlist // 128)), **given}
    if index_type == "DISKANN":
        return {"search_list": 100, **given}
    return given


class MilvusIndex(VectorIndex):
    """Vectors in a Milvus collection, keyed by the index's item ids (see the module's docstring)."""

    shares_vectors = False
    folder_names = (LITE_DB,)  # what it keeps in an index folder besides backend-<g>.* files

    def __init__(self, spec: str, dim: int, metric: str, n_vectors: int = 0) -> None:
        _check_metric(metric)
        self.index_type, self.options = parse_spec(spec)
        self.dim, self.metric = dim, metric
        self.build_params = _build_params(self.index_type, self.options, dim, n_vectors)
        self.search_params = _search_params(self.index_type, self.options, self.build_params)
        self.uri = self.options.get("uri")
        if self.uri is None and self.index_type in LITE_UNSUPPORTED:
            lite = ", ".join(t for t in INDEX_TYPES if t not in LITE_UNSUPPORTED)
            raise InputError(
                f"milvus:{self.index_type} needs a Milvus server (--milvus-uri): Milvus Lite cannot load "
                f"such a collection again; with Lite use one of {lite}"
            )
        # the sized nlist/m go into the spec only where they take effect (not with Milvus Lite)
        sized = {} if self.uri is None else {k: str(v) for k, v in self.build_params.items() if k in ("nlist", "m")}
        self.spec = format_spec(self.index_type, {**self.options, **sized})
        self._client: Any = None
        self._where: str | None = None  # what the client is connected to (for messages)
        self.collection: str | None = None  # the collection in use (None: none yet)
        self._base: str | None = self.options.get("collection")
        self._ids = np.zeros(0, dtype=np.int64)  # sorted: the ids this generation holds
        self._streaming = False  # adds go straight into the collection (a streaming build)
        self._stream_target: tuple[Path, int] | None = None  # (folder, generation) not written to yet
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []  # (ids, vectors) to upsert at the next write
        self._deleted: set[int] = set()
        self._fresh = True  # the next write starts a new collection (created, cleared or filled)
        self._version = 0  # counts changes, so a scratch collection knows when it is out of date
        self._scratch: tuple[Any, str, int] | None = None  # (client, collection, version) before a save
        self._finalizers: list[weakref.finalize] = []

    # ------------------------------------------------------------------ protocol
    @classmethod
    def create(cls, spec: str, dim: int, metric: str, n_vectors: int, device: str = "cpu") -> MilvusIndex:
        """A new empty backend; a server ``uri=`` is contacted now, so a wrong one fails before extraction."""
        index = cls(spec, dim, metric, n_vectors)
        _milvus()
        if index.uri is not None:
            index._connect()
        return index

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
    ) -> MilvusIndex:
        """Open generation ``generation``'s collection, repairing it from ``vectors`` when a save
        was interrupted (the collection's state is not ``generation``) or it is missing."""
        index = cls(spec, dim, metric, len(ids))
        saved = json.loads(backend_file(folder, generation, "json").read_text(encoding="utf-8"))
        index.build_params, index.search_params = saved["build_params"], saved["search_params"]
        index._base, index.collection = saved["base"], saved["collection"]
        index._connect(folder)
        index._ids = np.sort(np.asarray(ids, dtype=np.int64))
        index._fresh = False
        client = index._client
        exists = client.has_collection(index.collection)
        if exists:  # a collection another process wrote starts released
            index._call(client.load_collection, index.collection)
        state = index._state() if exists else None
        if state != str(generation):
            repaired = "written again" if not exists else f"repaired (its state was {state!r})"
            warnings.warn(
                f"{folder}: the Milvus collection {index.collection} of generation {generation} is {repaired} "
                "from the index's vectors (an interrupted save)",
                stacklevel=2,
            )
            if exists:
                index._set_state(WRITING)
                index._deleted = set(np.setdiff1d(index._stored_ids(), index._ids).tolist())
            index._pending = [(np.asarray(ids, dtype=np.int64), vectors)]
            index._fresh = not exists
            index._write(index.collection)
            index._set_state(str(generation))
        return index

    def save(self, folder: Path, generation: int) -> list[Path]:
        """Write the pending changes into Milvus (a fresh collection after a build or fill), mark it
        complete for ``generation`` and name it in ``backend-<g>.json``."""
        folder = Path(folder)
        self._connect(folder)
        if self._base is None:
            self._base = "lookalike" if self.uri is None else _base_name(folder)
        self._write(f"{self._base}_g{generation}")
        self._set_state(str(generation))
        self._streaming, self._stream_target = False, None  # later adds wait for the next save again
        keep = {self.collection, *_named_collections(folder)}  # the generation in force keeps its own
        for name in self._client.list_collections():
            if name.startswith(self._base + "_g") and name not in keep:
                self._call(self._client.drop_collection, name)
        doc = {
            "uri": self.uri or LITE_DB,
            "base": self._base,
            "collection": self.collection,
            "index_type": self.index_type,
            "build_params": self.build_params,  # as sent
            "built_with": self._built_with(),  # what the engine uses (Milvus Lite: its own defaults)
            "search_params": self.search_params,
            "count": len(self._ids),
        }
        path = backend_file(folder, generation, "json")
        text = json.dumps(doc, indent=2).encode("utf-8")
        atomic_write(path, lambda h: h.write(text))
        return [path]

    def stream_into(self, folder: Path, generation: int) -> bool:
        """Send later ``add``s, every ``STREAM_ROWS`` rows, straight into a fresh collection for
        ``generation`` (made by the first such write and marked as being written; what an interrupted
        stream left under its name is dropped), so a build need not hold its vectors;
        ``save(folder, generation)`` completes it. The generation in force keeps its own collection
        meanwhile, and a crash leaves the fresh one to the next save's cleanup."""
        self._fresh, self._streaming = True, True
        self._stream_target = (Path(folder), generation)  # the collection is made by the first write
        return True

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def _ids(self) -> np.ndarray:
        """The sorted ids this generation holds (ids added since the last read merged in now)."""
        if self._id_chunks:
            self._sorted_ids = np.union1d(self._sorted_ids, np.concatenate(self._id_chunks))
            self._id_chunks = []
        return self._sorted_ids

    @_ids.setter
    def _ids(self, ids: np.ndarray) -> None:
        self._sorted_ids, self._id_chunks = ids, []

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        vectors = _check_vectors(vectors, self.dim)
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) != len(vectors):
            raise InputError(f"{len(ids)} ids for {len(vectors)} vectors")
        self._pending.append((ids, vectors))
        self._deleted.difference_update(ids.tolist())
        self._id_chunks.append(ids)  # merged into the sorted ids when next read: adds stay O(batch)
        self._version += 1
        if self._streaming and sum(len(i) for i, _ in self._pending) >= STREAM_ROWS:
            self._write_through()

    def remove(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        known = ids[np.isin(ids, self._ids)]
        if not len(known):
            return
        self._pending = [(i[~np.isin(i, known)], v[~np.isin(i, known)]) for i, v in self._pending]
        self._deleted.update(known.tolist())
        self._ids = np.setdiff1d(self._ids, known)
        self._version += 1

    def clear(self) -> None:
        self._ids = np.zeros(0, dtype=np.int64)
        self._pending, self._deleted = [], set()
        self._fresh, self._streaming, self._stream_target = True, False, None
        self._version += 1

    def fill(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self.clear()
        if len(ids):
            self.add(vectors, ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = _check_vectors(queries, self.dim)
        if k > MAX_K:
            raise InputError(f"the milvus backend returns at most {MAX_K} neighbours per query, not k={k}")
        k = min(k, len(self))
        if k == 0:
            return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
        client, collection = self._searchable()
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        worst = -np.inf if self.metric == "cosine" else np.inf
        scores = np.full((len(queries), k), worst, dtype=np.float32)
        params = {"metric_type": self._milvus_metric(), "params": self.search_params}
        for q0 in range(0, len(queries), BATCH):
            hits = self._call(
                client.search,
                collection,
                data=queries[q0 : q0 + BATCH].tolist(),
                limit=k,
                anns_field="vector",
                search_params=params,
                output_fields=["id"],
            )
            for row, found in enumerate(hits, start=q0):
                got = np.fromiter((h["id"] for h in found), dtype=np.int64, count=len(found))
                dist = np.fromiter((h["distance"] for h in found), dtype=np.float32, count=len(found))
                ok = np.isin(got, self._ids)  # ids another process wrote that this generation cannot name
                got, dist = got[ok][:k], dist[ok][:k]
                ids[row, : len(got)], scores[row, : len(got)] = got, dist
        if self.metric == "euclidean":
            scores = np.sqrt(np.maximum(scores, 0.0))
        return ids, scores

    # ------------------------------------------------------------------ Milvus
    def _milvus_metric(self) -> str:
        return "IP" if self.metric == "cosine" else "L2"

    def _open(self, where: str, cleanup: Path | None = None) -> Any:
        """A client for a server URI or a Milvus Lite database path; closed (and a Lite database
        released, then ``cleanup`` removed) when this backend goes or :meth:`close` is called."""
        pymilvus = _milvus()
        lite = self.uri is None
        try:
            client = pymilvus.MilvusClient(uri=where, token=os.environ.get(TOKEN_ENV, ""), timeout=TIMEOUT_S)
        except Exception as exc:  # pymilvus raises MilvusException, or gRPC/OS errors beneath it
            reason = str(getattr(exc, "message", "") or exc).splitlines()[0][:200]
            hint = (
                " (Milvus Lite lets one process at a time use a database: is a `lookalike serve` or another "
                "command using this index? Several processes need a Milvus server: --milvus-uri)"
                if lite
                else ""
            )
            raise InputError(f"cannot reach Milvus at {where}: {reason}{hint}") from None
        if lite:
            _LITE_USERS[os.path.abspath(where)] = _LITE_USERS.get(os.path.abspath(where), 0) + 1
        self._finalizers.append(
            weakref.finalize(self, _close_client, client, where if lite else None, cleanup)
        )
        return client

    def close(self) -> None:
        """Close this backend's Milvus connections now (a Milvus Lite database becomes free for
        other processes once no backend in this one uses it)."""
        for finalizer in reversed(self._finalizers):
            finalizer()
        self._finalizers, self._client, self._where, self._scratch = [], None, None, None

    def _connect(self, folder: Path | None = None) -> None:
        """Connect to the server ``uri``, or to the Milvus Lite database in ``folder``."""
        where = (
            self.uri
            if self.uri is not None
            else (str(Path(folder) / LITE_DB) if folder is not None else None)
        )
        if where is None or where == self._where:
            return
        self._client, self._where = self._open(where), where

    def _searchable(self) -> tuple[Any, str]:
        """(client, collection) holding the current content. A saved backend's unsaved changes go
        into its collection (marked as being written, so a later load repairs it if no save
        follows); content never saved goes into a scratch collection, in a temporary Milvus Lite
        database or on the server, dropped when this object goes."""
        if self.collection is not None and not self._fresh:
            if self._pending or self._deleted:
                self._write(self.collection)
            return self._client, self.collection
        if self._scratch is None or self._scratch[2] != self._version:
            if self._scratch is None:
                name = f"lookalike_scratch_{uuid.uuid4().hex[:12]}"
                if self.uri is None:  # a temporary Lite database, removed with its folder
                    folder = Path(tempfile.mkdtemp(prefix="lookalike-milvus-"))
                    client = self._open(str(folder / LITE_DB), cleanup=folder)
                else:
                    self._connect()
                    client = self._client
                    self._finalizers.append(weakref.finalize(self, _drop_quietly, client, name))
            else:
                client, name, _ = self._scratch
            self._fill_collection(client, name)
            self._scratch = (client, name, self._version)
        return self._scratch[0], self._scratch[1]

    def _fill_collection(self, client: Any, name: str) -> None:
        """A new collection ``name`` (dropping what an interrupted write left) with the pending content."""
        if client.has_collection(name):
            client.drop_collection(name)
        self._create_collection(client, name)
        for ids, vectors in self._pending:
            self._upsert_rows(client, name, ids, vectors)
        self._call(client.flush, name)

    def _write(self, fresh_name: str) -> None:
        """Apply the pending changes: into a new collection ``fresh_name`` when the content was
        replaced, else as deletes and upserts by id into the collection in use; marked as being
        written until the caller sets the generation it completes."""
        if self._fresh or self.collection is None:
            self.collection = fresh_name
            self._fill_collection(self._client, fresh_name)
            self._set_state(WRITING)
        else:
            self._set_state(WRITING)
            deleted = np.fromiter(self._deleted, dtype=np.int64, count=len(self._deleted))
            for r0 in range(0, len(deleted), BATCH):
                self._call(self._client.delete, self.collection, ids=deleted[r0 : r0 + BATCH].tolist())
            for ids, vectors in self._pending:
                self._upsert_rows(self._client, self.collection, ids, vectors)
            self._call(self._client.flush, self.collection)
        self._pending, self._deleted = [], set()
        self._fresh = False

    def _write_through(self) -> None:
        """Upsert the pending rows into the collection being streamed into (flushed by the save);
        the first call makes that collection."""
        if self._stream_target is not None:
            folder, generation = self._stream_target
            self._connect(folder)
            if self._base is None:
                self._base = "lookalike" if self.uri is None else _base_name(folder)
            self._write(f"{self._base}_g{generation}")  # a fresh collection with the pending rows
            self._stream_target = None
            return
        for ids, vectors in self._pending:
            self._upsert_rows(self._client, self.collection, ids, vectors)
        self._pending = []

    def _built_with(self) -> dict[str, int]:
        """The build parameters the engine uses: Milvus Lite's own defaults, a server's what is sent."""
        if self.uri is None:
            return dict(LITE_BUILD_DEFAULTS.get(self.index_type, {}))
        return dict(self.build_params)

    def _warn_lite_defaults(self) -> None:
        """Once per process: with Milvus Lite, the build parameters asked for are not the ones used."""
        global _lite_warned
        if self.uri is not None or _lite_warned or not self.build_params:
            return
        _lite_warned = True
        sent = ", ".join(f"{k} {v}" for k, v in self.build_params.items())
        used = ", ".join(f"{k} {v}" for k, v in self._built_with().items()) or "its defaults"
        log.warning(
            "Milvus Lite builds %s with its own defaults (%s), not %s: it does not read build parameters "
            "as pymilvus sends them; search parameters do apply, and a Milvus server (--milvus-uri) uses them",
            self.index_type,
            used,
            sent,
        )

    def _create_collection(self, client: Any, name: str) -> None:
        pymilvus = _milvus()
        self._warn_lite_defaults()
        schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", pymilvus.DataType.INT64, is_primary=True)
        schema.add_field("vector", pymilvus.DataType.FLOAT_VECTOR, dim=self.dim)
        index_params = client.prepare_index_params()
        index_params.add_index(
            field_name="vector",
            index_type=self.index_type,
            metric_type=self._milvus_metric(),
            params=self.build_params,
        )
        self._call(client.create_collection, name, schema=schema, index_params=index_params)

    def _upsert_rows(self, client: Any, name: str, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Upsert in batches: writing an id again replaces its vector, so repeating a write is harmless."""
        for r0 in range(0, len(ids), BATCH):
            block = np.ascontiguousarray(vectors[r0 : r0 + BATCH], dtype=np.float32)
            rows = [
                {"id": int(i), "vector": v} for i, v in zip(ids[r0 : r0 + BATCH].tolist(), block, strict=True)
            ]
            self._call(client.upsert, name, rows)

    def _stored_ids(self) -> np.ndarray:
        """Every id the collection holds (a scan of ids only)."""
        found: list[int] = []
        iterator = self._call(
            self._client.query_iterator, self.collection, batch_size=10_000, filter="", output_fields=["id"]
        )
        while batch := iterator.next():
            found.extend(int(row["id"]) for row in batch)
        iterator.close()
        return np.array(sorted(found), dtype=np.int64)

    def _state(self) -> str | None:
        properties = self._call(self._client.describe_collection, self.collection).get("properties") or {}
        return properties.get(STATE)

    def _set_state(self, state: str) -> None:
        self._call(self._client.alter_collection_properties, self.collection, properties={STATE: state})

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        """A Milvus call whose failure becomes one InputError naming the database or server."""
        try:
            return method(*args, **kwargs)
        except InputError:
            raise
        except Exception as exc:
            reason = str(getattr(exc, "message", "") or exc).splitlines()[0][:300]
            name = getattr(method, "__name__", "call")
            raise InputError(
                f"Milvus at {self._where or 'a scratch database'}: {name} failed: {reason}"
            ) from None


def _base_name(folder: Path) -> str:
    """A server collection base name that two index folders never share."""
    digest = hashlib.sha1(os.path.realpath(folder).encode("utf-8", "surrogateescape")).hexdigest()[:12]
    return f"lookalike_{digest}"


def _named_collections(folder: Path) -> set[str]:
    """The collections that the generations saved in ``folder`` (``backend-<g>.json``) name."""
    names = set()
    for path in Path(folder).glob("backend-*.json"):
        with contextlib.suppress(OSError, ValueError, AttributeError):
            names.add(json.loads(path.read_text(encoding="utf-8")).get("collection"))
    return names


_LITE_USERS: dict[str, int] = {}  # Milvus Lite database -> clients of this process using it


def _close_client(client: Any, lite_path: str | None, cleanup: Path | None) -> None:
    """Close a client; the last one of a Milvus Lite database stops its in-process server, which
    holds the database's lock, so that another process can open it."""
    with contextlib.suppress(Exception):
        client.close()
    if lite_path is not None:
        path = os.path.abspath(lite_path)
        _LITE_USERS[path] = _LITE_USERS.get(path, 1) - 1
        if _LITE_USERS[path] <= 0:
            del _LITE_USERS[path]
            with contextlib.suppress(Exception):
                from milvus_lite.server_manager import server_manager_instance

                server_manager_instance.release_server(path)
    if cleanup is not None:
        shutil.rmtree(cleanup, ignore_errors=True)


def _drop_quietly(client: Any, name: str) -> None:
    with contextlib.suppress(Exception):  # best effort, maybe at interpreter exit
        client.drop_collection(name)


if "milvus" not in BACKENDS:
    # the bare name is a short name for the default index type (registered before the backend name
    # itself, which is what lets `milvus` and `milvus:<type>` share a word)
    register_backend("milvus", MilvusIndex, argument="index type", aliases={"milvus": "milvus:HNSW"})
