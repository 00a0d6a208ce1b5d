"""The backend protocol: a registered outside backend, in-memory indexes, specs, old index folders."""

from __future__ import annotations

import inspect
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

import lookalike.index.backends as backends
import lookalike.index.store as store
from lookalike import ExtractOptions, ImageSet, InputError
from lookalike.cache import file_key
from lookalike.extract import embed
from lookalike.features import create_extractor
from lookalike.index import (
    ExactIndex,
    FaissIndex,
    GalleryIndex,
    VectorIndex,
    backend_file,
    build_index,
    create_backend,
    is_index,
    register_backend,
    resolve_backend,
)
from lookalike.index.store import file_sha1
from lookalike.index.stored_steps import IndexPostprocess
from lookalike.knn import topk
from lookalike.registry import Registry

OPTS = ExtractOptions(progress=False, use_cache=False, batch_size=4, num_workers=0)
PROTOCOL = ("create", "load", "save", "add", "remove", "clear", "fill", "search", "__len__")


@pytest.fixture()
def registry(monkeypatch: pytest.MonkeyPatch) -> Registry:
    """A private copy of the backend table, so what a test registers is gone after it."""
    monkeypatch.setattr(backends, "BACKENDS", backends.BACKENDS.copy())
    monkeypatch.setattr(backends, "ALIASES", dict(backends.ALIASES))
    return backends.BACKENDS


class ToyIndex:
    """Brute force in NumPy, saved as ``backend-<g>.npz``: a backend written outside lookalike.

    It defines the protocol's members and nothing else (no base class), so the store calling
    anything more fails with AttributeError; ``calls`` records what was called."""

    spec = "toy"
    shares_vectors = False

    def __init__(self, dim: int, metric: str) -> None:
        self.dim, self.metric = dim, metric
        self.calls: list[str] = []
        self.clear()

    @classmethod
    def create(cls, spec: str, dim: int, metric: str, n_vectors: int, device: str = "cpu") -> ToyIndex:
        assert spec == "toy"
        return cls(dim, metric)

    @classmethod
    def load(cls, spec, folder, generation, dim, metric, vectors, ids, device="cpu") -> ToyIndex:
        index = cls(dim, metric)
        with np.load(backend_file(folder, generation, "npz")) as data:
            index.vectors, index.ids = data["vectors"], data["ids"]
        assert index.ids.tolist() == np.asarray(ids).tolist() and len(vectors) == len(ids)
        index.calls.append("load")
        return index

    def save(self, folder: Path, generation: int) -> list[Path]:
        self.calls.append("save")
        path = backend_file(folder, generation, "npz")
        with path.open("wb") as handle:
            np.savez(handle, vectors=self.vectors, ids=self.ids)
        return [path]

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self.calls.append("add")
        self.vectors = np.vstack([self.vectors, np.asarray(vectors, np.float32)])
        self.ids = np.concatenate([self.ids, np.asarray(ids, np.int64)])

    def remove(self, ids: np.ndarray) -> None:
        self.calls.append("remove")
        keep = ~np.isin(self.ids, ids)
        self.vectors, self.ids = self.vectors[keep], self.ids[keep]

    def clear(self) -> None:
        self.vectors, self.ids = np.zeros((0, self.dim), np.float32), np.zeros(0, np.int64)

    def fill(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self.calls.append("fill")
        self.clear()
        self.add(vectors, ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        rows, scores = _brute_force(queries, self.vectors, k, self.metric)
        return self.ids[rows], scores

    def __len__(self) -> int:
        return len(self.ids)


def _brute_force(
    queries: np.ndarray, gallery: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    q, g = np.asarray(queries, np.float64), np.asarray(gallery, np.float64)
    good = q @ g.T if metric == "cosine" else -np.sqrt(((q[:, None] - g[None]) ** 2).sum(-1))
    rows = np.argsort(-good, axis=1, kind="stable")[:, :k]
    return rows, np.take_along_axis(good, rows, 1).astype(np.float32)


def _assert_searches_like_brute_force(index: GalleryIndex) -> None:
    queries = np.asarray(index.search_vectors[::2])
    rows, _ = index.search(queries, 4)
    expected, _ = _brute_force(queries, index.search_vectors, 4, index.metric)
    np.testing.assert_array_equal(rows, expected)


# ------------------------------------------------------------------ a backend from outside
@pytest.mark.parametrize("dba", [0, 2])
def test_a_registered_outside_backend_builds_saves_reopens_adds_removes_and_searches(
    registry: dict, photo_set: tuple[Path, Path], gallery: Path, tmp_path: Path, dba: int
) -> None:
    register_backend("toy", ToyIndex)
    assert resolve_backend("toy", 10) == "toy" and isinstance(create_backend("toy", 4, "cosine", 0), ToyIndex)
    out = tmp_path / "toy.index"
    post = IndexPostprocess(dba=dba)
    built, _ = build_index(gallery, out, model="pixels", options=OPTS, backend="toy", postprocess=post)
    assert isinstance(built.backend, ToyIndex) and built.backend.calls == ["fill", "add", "save"]
    manifest = json.loads((out / "lookalike-index.json").read_text())
    assert manifest["backend"] == "toy" and (out / "backend-1.npz").is_file()
    assert not (out / "backend-1.bin").exists()

    index = GalleryIndex.open(out)
    assert isinstance(index.backend, ToyIndex) and index.backend.calls == ["load"] and len(index) == 15
    _assert_searches_like_brute_force(index)
    assert index.disk_bytes() >= (out / "backend-1.npz").stat().st_size

    new = gallery / "coffee" / "extra.jpg"
    shutil.copy(photo_set[0] / "coffee" / "coffee_query0.jpg", new)
    assert index.add_images(ImageSet.from_path(new), OPTS).added == ["coffee/extra.jpg"]
    assert sorted(p.name for p in out.glob("backend-*")) == ["backend-2.npz"]  # the old generation's went
    grown = GalleryIndex.open(out)
    assert len(grown) == 16 and len(grown.backend) == 16
    _assert_searches_like_brute_force(grown)
    rows, _ = grown.search(np.asarray(grown.search_vectors[-1:]), 1)
    assert grown.names[rows[0, 0]] == "coffee/extra.jpg"

    removed, _ = grown.remove_paths(["chelsea", "coffee/extra.jpg"])
    assert len(removed) == 4
    shrunk = GalleryIndex.open(out)
    assert len(shrunk) == len(shrunk.backend) == 12 and not any(
        n.startswith("chelsea/") for n in shrunk.names
    )
    _assert_searches_like_brute_force(shrunk)
    # DBA refills the backend (fill); a plain index adds and removes only what changed
    assert ("remove" in grown.backend.calls) == (dba == 0)
    files = ["lookalike-index.json", "items-3.json", "vectors-3.npy", "backend-3.npz"]
    assert sorted(p.name for p in out.iterdir()) == sorted(files + (["searchable-3.npy"] if dba else []))

    registry.unregister("toy")  # a process without the backend says which one is missing
    with pytest.raises(InputError, match="backend 'toy' is not available"):
        GalleryIndex.open(out)


def test_registration_rules_and_the_spec_table(registry: dict) -> None:
    register_backend("toy", ToyIndex, aliases={"toy2": "toy"})
    assert resolve_backend("toy2", 5) == "toy"
    listed = (
        "use auto, exact, toy, flat, hnsw, hnswsq8, ivfpq, ivfsq8, milvus, toy2, faiss:<factory string> "
        "or milvus:<index type>"
    )
    with pytest.raises(InputError, match=listed):
        resolve_backend("annoy", 5)
    for taken in ("auto", "flat", "toy2", "toy:x", ""):
        with pytest.raises(ValueError, match="reserved"):
            register_backend(taken, ToyIndex)
    with pytest.raises(ValueError, match="reserved"):
        register_backend("other", ToyIndex, aliases={"exact": "toy"})

    class BetterToy(ToyIndex):
        pass

    register_backend("toy", BetterToy)  # registering again replaces, as every lookalike registry does
    assert registry.get("toy").factory is BetterToy and registry.names().count("toy") == 1
    expected = {
        "exact": "exact",
        "flat": "faiss:Flat",
        "hnsw": "faiss:HNSW32",
        "hnswsq8": "faiss:HNSW32,SQ8",
        "ivfpq": "faiss:IVF{nlist},PQ{m}",
        "ivfsq8": "faiss:IVF{nlist},SQ8",
        "faiss:IVF8,Flat": "faiss:IVF8,Flat",
    }
    for spec, resolved in expected.items():
        assert resolve_backend(spec, 1000) == resolved
    assert resolve_backend("auto", backends.AUTO_EXACT_LIMIT) == "exact"
    assert resolve_backend("auto", backends.AUTO_EXACT_LIMIT + 1) == "faiss:IVF{nlist},SQ8"
    for bad in ("faiss", "faiss:", "exact:cuda", "toy:x"):
        with pytest.raises(InputError, match="unknown index backend"):
            resolve_backend(bad, 10)
    sized = create_backend("ivfpq", 64, "euclidean", 10_000)
    assert isinstance(sized, FaissIndex) and sized.spec == "faiss:IVF256,PQ64" and sized.metric == "euclidean"
    with pytest.raises(ValueError, match="backend files end in"):
        backend_file(Path("."), 1, "faiss")


def test_the_built_in_backends_implement_the_whole_protocol(tmp_path: Path) -> None:
    members = {name for name in vars(VectorIndex) if not name.startswith("_")} | {"__len__"}
    assert set(PROTOCOL) <= members
    vectors = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    ids = np.arange(100, 140)
    for spec in ("exact", "flat", "hnsw"):
        backend = create_backend(spec, 8, "euclidean", len(vectors))
        for name in PROTOCOL:
            assert callable(getattr(backend, name)), (spec, name)
        backend.fill(vectors, ids)
        backend.remove(ids[:10])
        backend.add(vectors[:5], ids[:5])
        assert len(backend) == 35
        files = backend.save(tmp_path, 3)
        assert files == ([] if spec == "exact" else [tmp_path / "backend-3.bin"])
        stored_ids = np.concatenate([ids[10:], ids[:5]])
        stored = np.vstack([vectors[10:], vectors[:5]])
        loaded = type(backend).load(backend.spec, tmp_path, 3, 8, "euclidean", stored, stored_ids)
        a, b = backend.search(vectors, 5), loaded.search(vectors, 5)
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_allclose(a[1], b[1], rtol=1e-5)
        backend.clear()
        assert len(backend) == 0 and backend.search(vectors[:2], 3)[0].shape == (2, 0)
        for path in files:
            path.unlink()
    assert ExactIndex.shares_vectors and not FaissIndex.shares_vectors


def test_the_store_names_no_backend() -> None:
    """No backend is special-cased outside its own file: the store only goes through the protocol."""
    source = inspect.getsource(store)
    for leak in (
        "ExactIndex",
        "FaissIndex",
        "isinstance(self.backend",
        '== "exact"',
        '!= "exact"',
        ".assign(",
    ):
        assert leak not in source, leak
    assert not hasattr(ExactIndex, "assign")


def test_a_backend_may_write_only_its_own_generation_files(registry: dict, tmp_path: Path) -> None:
    class StrayIndex(ToyIndex):
        spec = "stray"

        @classmethod
        def create(cls, spec, dim, metric, n_vectors, device="cpu"):
            return cls(dim, metric)

        def save(self, folder: Path, generation: int) -> list[Path]:
            path = folder / f"stray-{generation}.bin"
            path.write_bytes(b"x")
            return [path]

    register_backend("stray", StrayIndex)
    vectors = np.eye(3, 4, dtype=np.float32)
    index = GalleryIndex.from_embeddings(vectors, ["a", "b", "c"], backend="stray")
    with pytest.raises(ValueError, match="backends save only backend_file"):
        index.save(tmp_path / "s.index")
    assert not is_index(tmp_path / "s.index")  # the manifest never switched to a generation missing its data


# ------------------------------------------------------------------ in-memory indexes
def _gallery_with_ties(metric: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    base = rng.standard_normal((12, 16)).astype(np.float32)
    if metric == "cosine":
        base /= np.linalg.norm(base, axis=1, keepdims=True)
    gallery = np.vstack([base, base[[0, 0, 5, 7]], base[:3]])  # exact duplicates: tied scores
    queries = np.vstack([base[[0, 5, 7]], rng.standard_normal((4, 16)).astype(np.float32)])
    return gallery, queries


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_an_in_memory_index_searches_exactly_like_topk(metric: str) -> None:
    gallery, queries = _gallery_with_ties(metric)
    names = [f"img/{i}.jpg" for i in range(len(gallery))]
    index = GalleryIndex.from_embeddings(gallery, names, metric=metric)
    assert index.folder is None and len(index) == len(gallery) and index.labels is None
    assert isinstance(index.backend, ExactIndex) and index.backend._vectors is index.vectors  # no copy
    for k in (1, 5, len(gallery), 100):
        rows, scores = index.search(queries, k)
        want_rows, want_scores = topk(queries, gallery, k, metric)
        np.testing.assert_array_equal(rows, want_rows)
        np.testing.assert_array_equal(scores, want_scores)
    rows, scores = index.search(queries[:1], 8)
    assert np.sum(scores[0] == scores[0, 0]) >= 3 and rows[0, :3].tolist() == [0, 12, 13]  # ties by row
    # k beyond the gallery: every row once, no padding (ExactIndex returns min(k, n) columns)
    assert index.search(queries, 100)[0].shape == (len(queries), len(gallery))
    flat = GalleryIndex.from_embeddings(gallery, names, metric=metric, backend="flat")
    rows, scores = flat.search(queries, 100)
    assert rows.shape == (len(queries), len(gallery)) and (rows >= 0).all()
    np.testing.assert_array_equal(np.sort(rows, axis=1), np.tile(np.arange(len(gallery)), (len(queries), 1)))


def test_an_approximate_in_memory_index_pads_with_minus_one() -> None:
    data = np.random.default_rng(0).standard_normal((400, 8)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    index = GalleryIndex.from_embeddings(data, [str(i) for i in range(400)], backend="faiss:IVF8,Flat")
    index.backend.nprobe = 1  # one list of eight searched: fewer than k found
    rows, _ = index.search(data[:3], 400)
    assert rows.shape == (3, 400) and (rows == -1).any() and (rows[:, 0] == [0, 1, 2]).all()
    ids, _ = index.backend.search(data[:3], 400)
    np.testing.assert_array_equal(rows == -1, ids == -1)


def test_an_in_memory_index_is_saved_only_into_a_folder_given_for_it(gallery: Path, tmp_path: Path) -> None:
    extractor = create_extractor("pixels")
    images = ImageSet.from_path(gallery)
    emb = embed(extractor, images, OPTS)
    names = [images.names[i] for i in emb.indices]
    labels = [images.labels[i] for i in emb.indices]
    index = GalleryIndex.from_embeddings(emb.features, names, labels, model=extractor, root=gallery)
    assert index.extractor() is extractor and index.labels == labels and index.disk_bytes() == 0
    with pytest.raises(InputError, match="only in memory"):
        index.save()
    with pytest.raises(InputError, match="is inside the gallery"):
        index.save(gallery / "inside.index")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a lookalike index"):
        index.save(busy)
    assert index.folder is None and not (gallery / "inside.index").exists()
    out = tmp_path / "mem.index"
    index.save(out)
    assert index.folder == out and index.generation == 1
    assert sorted(p.name for p in out.iterdir()) == ["items-1.json", "lookalike-index.json", "vectors-1.npy"]
    with pytest.raises(InputError, match="it is written only there"):
        index.save(tmp_path / "elsewhere.index")
    reopened = GalleryIndex.open(out)
    assert reopened.names == names and reopened.labels == labels and reopened.root == gallery.resolve()
    queries = np.asarray(reopened.vectors[:4])
    np.testing.assert_array_equal(reopened.search(queries, 5)[0], index.search(queries, 5)[0])
    # and it behaves like a built index: adding the same images again changes nothing
    built, _ = build_index(gallery, tmp_path / "built.index", model="pixels", options=OPTS)
    np.testing.assert_array_equal(built.search(queries, 5)[0], reopened.search(queries, 5)[0])

    bare = GalleryIndex.from_embeddings(emb.features, names)
    with pytest.raises(InputError, match="without their model"):
        bare.add_images(images, OPTS)
    with pytest.raises(InputError, match="one per name"):
        GalleryIndex.from_embeddings(emb.features, names[:3])
    with pytest.raises(InputError, match="unknown metric"):
        GalleryIndex.from_embeddings(emb.features, names, metric="hamming")


# ------------------------------------------------------------------ folders written before the redesign
def _write_old_index(folder: Path, gallery: Path, backend: str) -> tuple[np.ndarray, list[dict]]:
    """An index folder exactly as the code before the backend protocol wrote one (generation 1):
    no backend file for ``exact``; for FAISS, FAISS's serialisation of an IndexIDMap2 in
    ``backend-1.bin``. Written with NumPy and FAISS directly, not with lookalike's index code."""
    extractor = create_extractor("pixels")
    images = ImageSet.from_path(gallery)
    emb = embed(extractor, images, OPTS)
    vectors = emb.features.astype(np.float32)
    items = []
    for row, i in enumerate(emb.indices):
        path = images.paths[i]
        item = {"id": row, "path": images.names[i], "key": file_key(path), "sha1": file_sha1(path)}
        items.append({**item, "label": images.labels[i]})
    folder.mkdir()
    np.save(folder / "vectors-1.npy", vectors)
    (folder / "items-1.json").write_text(json.dumps(items))
    if backend.startswith("faiss:"):
        import faiss

        inner = faiss.index_factory(
            vectors.shape[1], backend.removeprefix("faiss:"), faiss.METRIC_INNER_PRODUCT
        )
        index = faiss.IndexIDMap2(inner)
        index.add_with_ids(vectors, np.arange(len(vectors), dtype=np.int64))
        faiss.serialize_index(index).tofile(str(folder / "backend-1.bin"))
    manifest = {
        "format": "lookalike-index",
        "version": 1,
        "generation": 1,
        "model": extractor.describe(),
        "metric": "cosine",
        "backend": backend,
        "dim": vectors.shape[1],
        "search_dim": vectors.shape[1],
        "postprocess": {},
        "count": len(items),
        "root": str(gallery.resolve()),
        "created": time.time(),
        "updated": time.time(),
    }
    (folder / "lookalike-index.json").write_text(json.dumps(manifest, indent=2))
    return vectors, items


@pytest.mark.parametrize("backend", ["exact", "faiss:Flat"])
def test_an_index_written_before_the_protocol_opens_and_keeps_its_layout(
    backend: str, photo_set: tuple[Path, Path], gallery: Path, tmp_path: Path
) -> None:
    out = tmp_path / "old.index"
    vectors, items = _write_old_index(out, gallery, backend)
    before = json.loads((out / "lookalike-index.json").read_text())
    index = GalleryIndex.open(out)
    assert (
        index.backend.spec == backend
        and len(index.backend) == 15
        and index.names == [it["path"] for it in items]
    )
    rows, scores = index.search(vectors, 5)
    want_rows, want_scores = topk(vectors, vectors, 5, "cosine")
    np.testing.assert_array_equal(rows[:, 0], want_rows[:, 0])
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    if backend == "exact":
        np.testing.assert_array_equal(rows, want_rows)

    new = gallery / "coffee" / "extra.jpg"
    shutil.copy(photo_set[0] / "coffee" / "coffee_query0.jpg", new)
    index.add_images(ImageSet.from_path(new), OPTS)
    after = json.loads((out / "lookalike-index.json").read_text())
    assert set(after) == set(before) and after["backend"] == backend and after["generation"] == 2
    names = sorted(p.name for p in out.iterdir())
    backend_files = ["backend-2.bin"] if backend != "exact" else []
    assert names == sorted(["items-2.json", "lookalike-index.json", "vectors-2.npy", *backend_files])
    if backend != "exact":  # still FAISS's own serialisation, as older versions read it
        import faiss

        raw = faiss.deserialize_index(np.fromfile(out / "backend-2.bin", dtype=np.uint8))
        assert raw.ntotal == 16
    grown = GalleryIndex.open(out)
    rows, _ = grown.search(np.asarray(grown.vectors[-1:]), 1)
    assert grown.names[rows[0, 0]] == "coffee/extra.jpg" and len(grown.backend) == 16


def test_a_backend_that_disagrees_with_the_items_is_damage(gallery: Path, tmp_path: Path) -> None:
    out = tmp_path / "old.index"
    _write_old_index(out, gallery, "faiss:Flat")
    items = json.loads((out / "items-1.json").read_text())
    (out / "items-1.json").write_text(json.dumps(items[:-1]))
    np.save(out / "vectors-1.npy", np.load(out / "vectors-1.npy")[:-1])
    with pytest.raises(InputError, match="damaged.*holds 15 vectors for 14 items"):
        GalleryIndex.open(out)
