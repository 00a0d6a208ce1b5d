"""A saved gallery index: a folder with vectors, items (paths, labels, hashes), model and backend.

Layout (generation g counts saves; the manifest is written last and atomically, so a crash at any
moment leaves the previous complete generation in force)::

    my.index/lookalike-index.json   manifest: format, version, generation, model, metric, backend
    my.index/items-<g>.json         one entry per vector: path (relative to root), file key, sha1, label
    my.index/vectors-<g>.npy        (n, d) float32, row i belongs to items[i]
    my.index/backend-<g>.bin        the FAISS index (none for the exact backend: it uses vectors)
    my.index/searchable-<g>.npy     with --whiten/--dba: the processed vectors the backend searches
    my.index/whitening-<g>.npz      with --whiten: the PCA whitening fitted on the gallery
    my.index/partial/               vectors of a build in progress (resumable), removed when done
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..cache import FeatureCache, atomic_write, file_key
from ..errors import InputError
from ..extract import Embeddings, ExtractOptions, Skipped, embed
from ..features import Extractor, create_extractor
from ..images import ImageSet
from ..search import topk
from .backends import ExactIndex, VectorIndex, create_backend, load_backend
from .postprocess import IndexPostprocess

MANIFEST = "lookalike-index.json"
FORMAT = "lookalike-index"
FORMAT_VERSION = 2  # 2: post-processing (whitening, DBA) stored with the index


def file_sha1(path: Path) -> str:
    """Content hash of a file, so re-adding the same image is recognised whatever its mtime."""
    digest = hashlib.sha1()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def is_index(path: str | Path) -> bool:
    """True when ``path`` is a folder holding a lookalike index manifest."""
    return (Path(path) / MANIFEST).is_file()


@dataclass
class GalleryIndex:
    """Vectors of a gallery with their items, the model that made them, and a search backend."""

    folder: Path
    root: Path
    model: dict[str, Any]
    metric: str
    backend: VectorIndex
    vectors: np.ndarray
    items: list[dict[str, Any]]
    generation: int = 0
    created: float = field(default_factory=time.time)
    post: IndexPostprocess = field(default_factory=IndexPostprocess)
    searchable: np.ndarray | None = None  # the processed vectors, when ``post`` is active

    # ------------------------------------------------------------------ reading
    @classmethod
    def open(cls, folder: str | Path, device: str = "cpu") -> GalleryIndex:
        """Load a saved index, or raise InputError saying why ``folder`` is not one."""
        folder = Path(folder)
        manifest_path = folder / MANIFEST
        if not folder.is_dir():
            raise InputError(f"{folder}: not an index folder")
        if not manifest_path.is_file():
            hint = (
                " (an interrupted build: run `lookalike index build ... --resume`)"
                if (folder / "partial").is_dir()
                else ""
            )
            raise InputError(f"{folder}: not a lookalike index (no {MANIFEST}){hint}")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{manifest_path}: unreadable index manifest ({exc})") from None
        if manifest.get("format") != FORMAT:
            raise InputError(f"{folder}: {MANIFEST} is not a lookalike index manifest")
        if manifest.get("version", 0) > FORMAT_VERSION:
            raise InputError(f"{folder}: index format {manifest['version']} is newer than this lookalike")
        g = manifest["generation"]
        try:
            vectors = np.load(folder / f"vectors-{g}.npy", mmap_mode="r", allow_pickle=False)
            items = json.loads((folder / f"items-{g}.json").read_text(encoding="utf-8"))
            ids = np.array([it["id"] for it in items], dtype=np.int64)
            if vectors.shape != (len(items), manifest["dim"]):
                raise ValueError(
                    f"vectors {vectors.shape} do not match {len(items)} items of dim {manifest['dim']}"
                )
            post = IndexPostprocess.from_manifest(manifest.get("postprocess"), folder, g)
            searchable = (
                np.load(folder / f"searchable-{g}.npy", mmap_mode="r", allow_pickle=False) if post.active else None
            )
            if searchable is not None and len(searchable) != len(items):
                raise ValueError(f"{len(searchable)} processed vectors for {len(items)} items")
            search_dim = manifest.get("search_dim", manifest["dim"])
            if manifest["backend"] == "exact":
                backend = ExactIndex(search_dim, manifest["metric"], device)
                backend.assign(vectors if searchable is None else searchable, ids)
            else:
                path = folder / f"backend-{g}.bin"
                backend = load_backend(manifest["backend"], path, search_dim, manifest["metric"])
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise InputError(f"{folder}: index files are damaged or missing ({exc})") from None
        return cls(
            folder,
            Path(manifest["root"]),
            manifest["model"],
            manifest["metric"],
            backend,
            vectors,
            items,
            g,
            manifest.get("created", 0.0),
            post,
            searchable,
        )

    def __len__(self) -> int:
        return len(self.items)

    @property
    def dim(self) -> int:
        return int(self.model["dim"])

    @property
    def names(self) -> list[str]:
        return [it["path"] for it in self.items]

    @property
    def labels(self) -> list[str] | None:
        labels = [it.get("label") for it in self.items]
        return None if any(lab is None for lab in labels) else labels

    @property
    def search_vectors(self) -> np.ndarray:
        """The vectors the backend searches: whitened / augmented when the index has ``post``."""
        return self.vectors if self.searchable is None else self.searchable

    def extractor(self) -> Extractor:
        """Rebuild the extractor that made the vectors, from the saved name and options."""
        extractor = create_extractor(self.model["name"], **self.model["options"])
        if extractor.key != _model_key(self.model):
            raise InputError(
                f"{self.folder}: the model {self.model['name']!r} here no longer gives the features "
                "this index was built with (weights or version changed); rebuild the index"
            )
        return extractor

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows of ``items`` (n, k) and scores for each query vector (already in the index's
        space: see ``query`` for raw features), best first."""
        ids, scores = self.backend.search(queries, k)
        row_of = {int(it["id"]): r for r, it in enumerate(self.items)}
        rows = np.vectorize(lambda i: row_of.get(int(i), -1), otypes=[np.int64])(ids) if ids.size else ids
        return rows, scores

    def query(self, features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``search`` for the model's raw query features: the stored whitening is applied first."""
        return self.search(self.post.queries(np.asarray(features, dtype=np.float32)), k)

    def recall_at(self, k: int = 10, n_queries: int = 1000, seed: int = 0) -> float:
        """Recall@k of the backend against exact search, with stored vectors as queries."""
        if len(self) == 0:
            return 1.0
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(len(self), size=min(n_queries, len(self)), replace=False))
        queries = np.asarray(self.search_vectors[sample])
        exact, _ = topk(queries, np.asarray(self.search_vectors), k, self.metric)
        approx, _ = self.search(queries, k)
        hits = sum(len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx, exact, strict=True))
        return hits / exact.size

    def disk_bytes(self) -> int:
        g = self.generation
        files = [
            self.folder / MANIFEST,
            self.folder / f"vectors-{g}.npy",
            self.folder / f"items-{g}.json",
            self.folder / f"backend-{g}.bin",
            self.folder / f"searchable-{g}.npy",
            self.folder / f"whitening-{g}.npz",
        ]
        return sum(p.stat().st_size for p in files if p.is_file())

    # ------------------------------------------------------------------ writing
    def save(self) -> None:
        """Write a new generation atomically, then drop the previous one."""
        old, g = self.generation, self.generation + 1
        vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        buffer = io.BytesIO()
        np.save(buffer, vectors)
        atomic_write(self.folder / f"vectors-{g}.npy", lambda h: h.write(buffer.getvalue()))
        items = json.dumps(self.items, ensure_ascii=False).encode("utf-8")
        atomic_write(self.folder / f"items-{g}.json", lambda h: h.write(items))
        if self.backend.spec != "exact":
            self.backend.save(self.folder / f"backend-{g}.bin")
        if self.searchable is not None:
            buffer = io.BytesIO()
            np.save(buffer, np.ascontiguousarray(self.searchable, dtype=np.float32))
            atomic_write(self.folder / f"searchable-{g}.npy", lambda h: h.write(buffer.getvalue()))
        self.post.save(self.folder, g)
        manifest = {
            "format": FORMAT,
            "version": 2 if self.post.active else 1,  # plain indexes stay readable by older versions
            "generation": g,
            "model": self.model,
            "metric": self.metric,
            "backend": self.backend.spec,
            "dim": self.dim,
            "search_dim": int(self.search_vectors.shape[1]),
            "postprocess": self.post.describe(),
            "count": len(self.items),
            "root": str(self.root),
            "created": self.created,
            "updated": time.time(),
        }
        text = json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8")
        atomic_write(self.folder / MANIFEST, lambda h: h.write(text))
        self.generation = g
        for stem in ("vectors-{}.npy", "items-{}.json", "backend-{}.bin", "searchable-{}.npy", "whitening-{}.npz"):
            (self.folder / stem.format(old)).unlink(missing_ok=True)

    def add_images(self, images: ImageSet, options: ExtractOptions | None = None) -> AddReport:
        """Embed and add images; same path and content: nothing changes; same path, new content:
        the vector is replaced. Saves a new generation when anything changed."""
        report = AddReport()
        extractor = self.extractor()
        by_name = {it["path"]: r for r, it in enumerate(self.items)}
        names = [_name_in_root(p, self.root) for p in images.paths]
        todo, hashes = [], {}
        for i, (name, path) in enumerate(zip(names, images.paths, strict=True)):
            row = by_name.get(name)
            if row is not None and path.is_file():
                digest = file_sha1(path)
                if digest == self.items[row].get("sha1"):
                    report.unchanged.append(name)
                    continue
                hashes[i] = digest
            todo.append(i)
        if not todo:
            return report
        subset = images.subset(todo)
        emb = embed(extractor, subset, options, label="images")
        report.skipped = emb.skipped
        replaced_ids = []
        new_rows, new_items = [], []
        next_id = max((int(it["id"]) for it in self.items), default=-1) + 1
        for j, vec in zip(emb.indices, emb.features, strict=True):
            i = todo[j]
            name, path = names[i], images.paths[i]
            item = {
                "id": next_id,
                "path": name,
                "key": file_key(path),
                "sha1": hashes.get(i) or file_sha1(path),
            }
            label = images.labels[i] if images.labels is not None else self._folder_label(name)
            if label is not None:
                item["label"] = label
            next_id += 1
            if name in by_name:
                old = self.items[by_name[name]]
                replaced_ids.append(int(old["id"]))
                item.setdefault("label", old.get("label"))
                if item["label"] is None:
                    del item["label"]
                report.replaced.append(name)
            else:
                report.added.append(name)
            new_rows.append(vec)
            new_items.append(item)
        if replaced_ids:
            self._drop_ids(replaced_ids, refresh=not new_items)
        if new_items:
            self._append(np.stack(new_rows), new_items)
            self.save()
        return report

    def remove_paths(self, paths: list[str | Path]) -> tuple[list[str], list[str]]:
        """Remove items by path (relative to the root or absolute; a folder removes all under it).
        Returns (removed names, arguments that matched nothing); saves when anything was removed."""
        removed_ids, removed, unmatched = set(), [], []
        for arg in paths:
            target = (
                _name_in_root(Path(arg), self.root)
                if Path(arg).is_absolute() or Path(arg).exists()
                else str(arg)
            )
            target = target.rstrip("/")
            if target in ("", "."):  # the index's root itself: everything
                hits = list(self.items)
            else:
                hits = [it for it in self.items if it["path"] == target or it["path"].startswith(target + "/")]
            if not hits:
                unmatched.append(str(arg))
            for it in hits:
                if int(it["id"]) not in removed_ids:
                    removed_ids.add(int(it["id"]))
                    removed.append(it["path"])
        if removed_ids:
            self._drop_ids(sorted(removed_ids))
            self.save()
        return removed, unmatched

    def _folder_label(self, name: str) -> str | None:
        """A labelled index names new images' labels by their class folder under the root."""
        parts = name.split("/")
        return parts[0] if self.labels is not None and len(parts) > 1 and not name.startswith("/") else None

    def _append(self, vectors: np.ndarray, items: list[dict[str, Any]]) -> None:
        ids = np.array([it["id"] for it in items], dtype=np.int64)
        self.vectors = np.vstack([np.asarray(self.vectors), vectors.astype(np.float32)])
        self.items = self.items + items
        if self.post.dba:  # neighbours change: augment the whole gallery again
            self._reprocess()
            return
        added = vectors.astype(np.float32)
        if self.searchable is not None:
            added = self.post.gallery(added)
            self.searchable = np.vstack([np.asarray(self.searchable), added])
        if isinstance(self.backend, ExactIndex):
            self.backend.assign(self.search_vectors, self._ids())
        else:
            self.backend.add(added, ids)

    def _drop_ids(self, ids: list[int], refresh: bool = True) -> None:
        """Drop items by id; ``refresh=False`` leaves a DBA index's processed vectors to the
        ``_append`` that follows (a replace), so DBA is recomputed once, not twice."""
        drop = set(ids)
        keep = np.array([int(it["id"]) not in drop for it in self.items], dtype=bool)
        self.vectors = np.asarray(self.vectors)[keep]
        self.items = [it for it, k in zip(self.items, keep, strict=True) if k]
        if self.post.dba:
            if refresh:
                self._reprocess()
            return
        if self.searchable is not None:
            self.searchable = np.asarray(self.searchable)[keep]
        if isinstance(self.backend, ExactIndex):
            self.backend.assign(self.search_vectors, self._ids())
        else:
            self.backend.remove(np.array(ids, dtype=np.int64))

    def _reprocess(self) -> None:
        """Recompute the processed vectors (frozen whitening, fresh DBA) and refill the backend,
        which keeps its training (IVF lists, codebooks), so a gallery that shrank still fits."""
        self.searchable = self.post.gallery(np.asarray(self.vectors), dim=self.backend.dim)
        if isinstance(self.backend, ExactIndex):
            self.backend.assign(self.searchable, self._ids())
            return
        self.backend.clear()
        if len(self.items):
            self.backend.add(self.searchable, self._ids())

    def _ids(self) -> np.ndarray:
        return np.array([it["id"] for it in self.items], dtype=np.int64)


@dataclass
class AddReport:
    """What ``add_images`` did with each image."""

    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def _model_key(model: dict[str, Any]) -> str:
    text = json.dumps(model, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _name_in_root(path: Path, root: Path) -> str:
    resolved = path.resolve()
    try:
        return resolved.relative_to(root.resolve()).as_posix()
    except ValueError:
        return resolved.as_posix()


def build_index(
    gallery: str | Path | ImageSet,
    out: str | Path,
    *,
    model: str | Extractor = "efficientnet-lite0",
    model_options: dict[str, Any] | None = None,
    backend: str = "auto",
    metric: str = "cosine",
    options: ExtractOptions | None = None,
    resume: bool = False,
    force: bool = False,
    labels_csv: str | Path | None = None,
    ray_address: str | None = None,
    postprocess: IndexPostprocess | None = None,
) -> tuple[GalleryIndex, Embeddings]:
    """Extract a gallery and save it as an index folder at ``out``.

    Vectors are flushed to ``out/partial`` after every batch; if the build is interrupted
    (Ctrl-C, kill -9), ``resume=True`` continues it, losing at most the batch in flight.
    ``ray_address`` ("auto", "local" or a cluster address) runs extraction on Ray.
    ``postprocess`` (whitening, DBA) is fitted on the gallery and stored with the index.
    """
    out = Path(out)
    images = gallery if isinstance(gallery, ImageSet) else ImageSet.from_path(gallery, labels_csv=labels_csv)
    partial = out / "partial"
    if is_index(out) and not force:
        raise InputError(
            f"{out}: an index exists already; use `lookalike index add`, or --force to rebuild it"
        )
    if partial.is_dir() and not (resume or force):
        raise InputError(
            f"{out}: holds an interrupted build; pass --resume to continue it or --force to start over"
        )
    if force and out.exists():
        if not (is_index(out) or partial.is_dir()):
            raise InputError(f"{out}: exists and is not a lookalike index; refusing to delete it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    extractor = model if isinstance(model, Extractor) else create_extractor(model, **(model_options or {}))
    cache = FeatureCache(partial, extractor.key, extractor.describe(), flush_seconds=0.0, max_shards=None)
    opts = options or ExtractOptions()
    if ray_address is not None:
        from ..distributed import ray_embed

        emb = ray_embed(extractor, images, opts, address=ray_address, cache=cache)
    else:
        emb = embed(extractor, images, opts, label="gallery", cache=cache)
    if len(emb.indices) == 0:
        raise InputError(
            f"{images.source}: none of the {len(images)} image(s) could be read; no index written"
        )
    items = []
    for row, i in enumerate(emb.indices):
        path = images.paths[i]
        item = {"id": row, "path": images.names[i], "key": file_key(path), "sha1": file_sha1(path)}
        if images.labels is not None:
            item["label"] = images.labels[i]
        items.append(item)
    vectors = emb.features
    post = postprocess or IndexPostprocess()
    searchable = post.fit(vectors).gallery(vectors) if post.active else None
    search_vectors = vectors if searchable is None else searchable
    index_backend = create_backend(backend, search_vectors.shape[1], metric, len(vectors))
    ids = np.arange(len(vectors), dtype=np.int64)
    if isinstance(index_backend, ExactIndex):
        index_backend.assign(search_vectors, ids)
    else:
        index_backend.add(search_vectors, ids)
    index = GalleryIndex(
        out, images.root.resolve(), extractor.describe(), metric, index_backend, vectors, items,
        post=post, searchable=searchable,
    )
    index.save()
    shutil.rmtree(partial, ignore_errors=True)
    return index, emb
