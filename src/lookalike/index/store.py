"""A saved gallery index: a folder with vectors, items (paths, labels, hashes), model and backend.

Layout (generation g counts saves; the manifest is written last and atomically, so a crash at any
moment leaves the previous complete generation in force)::

    my.index/lookalike-index.json   manifest: format, version, generation, model, metric, backend
    my.index/items-<g>.json         one entry per vector: path (relative to root), file key, sha1, label
    my.index/vectors-<g>.npy        (n, d) float32, row i belongs to items[i]
    my.index/backend-<g>.bin        what the backend saves (FAISS: its index; exact: nothing, it uses vectors)
    my.index/searchable-<g>.npy     with --whiten/--dba: the processed vectors the backend searches
    my.index/whitening-<g>.npz      with --whiten: the PCA whitening fitted on the gallery
    my.index/partial/               vectors of a build in progress (resumable), removed when done
    my.index/partial/build.json     what that build is: a new index, or the rebuild of generation g

An index is only ever written into a new (or empty) folder or into a folder that is already a
lookalike index; never into the gallery. ``--force`` rebuilds in place as the next generation, so
the old index keeps working until the new one is complete, and only lookalike's own files are
ever removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..cache import FeatureCache, file_key
from ..errors import InputError, NothingToProcessError
from ..extract import Embeddings, ExtractOptions, Skipped, embed
from ..features import Extractor
from ..features.regions import rebuild_extractor, with_regions
from ..fileio import TMP_SUFFIX, atomic_write, crashpoint, is_temporary_of, json_text, temporary_target
from ..images import ImageSet
from ..knn import full_rankings, rankings_with_head, topk
from ..methods import resolve_method
from ..pairs import view_source
from .backends import BACKENDS, VectorIndex, create_backend, load_backend
from .stored_steps import IndexPostprocess

MANIFEST = "lookalike-index.json"
FORMAT = "lookalike-index"
FORMAT_VERSION = 2  # 2: post-processing (whitening, DBA) stored with the index
BUILD_MARKER = "build.json"
BUILD_FORMAT = "lookalike-index-build"
GENERATION_FILES = (
    "vectors-{}.npy",
    "items-{}.json",
    "backend-{}.bin",
    "searchable-{}.npy",
    "whitening-{}.npz",
)
_GENERATION_FILE = re.compile(r"^(vectors|items|backend|searchable|whitening)-(\d+)\.(npy|json|bin|npz)$")
REMOVE_SHARE = 0.5  # removing more than this share of an index needs confirmation


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
    """Vectors of a gallery with their items, the model that made them, and a search backend.

    ``folder`` is where it is saved; None for an index built in memory by :meth:`from_embeddings`
    until ``save(folder)`` gives it one."""

    folder: Path | None
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

    exhaustive: ClassVar[bool] = False  # a search ranks only its short list (see LocalFeatureIndex)

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
                np.load(folder / f"searchable-{g}.npy", mmap_mode="r", allow_pickle=False)
                if post.active
                else None
            )
            if searchable is not None and len(searchable) != len(items):
                raise ValueError(f"{len(searchable)} processed vectors for {len(items)} items")
            search_dim = manifest.get("search_dim", manifest["dim"])
            stored = vectors if searchable is None else searchable
            backend = load_backend(
                manifest["backend"], folder, g, search_dim, manifest["metric"], stored, ids, device
            )
            if len(backend) != len(items):
                raise ValueError(
                    f"the {manifest['backend']} backend holds {len(backend)} vectors for {len(items)} items"
                )
        except InputError as exc:  # e.g. a backend that is not registered in this process
            raise InputError(f"{folder}: {exc}") from None
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

    @classmethod
    def from_embeddings(
        cls,
        vectors: np.ndarray,
        names: list[str],
        labels: list[str] | None = None,
        *,
        model: Extractor | dict[str, Any] | None = None,
        metric: str = "cosine",
        root: str | Path | None = None,
        backend: str = "exact",
        device: str = "cpu",
    ) -> GalleryIndex:
        """An index held in memory, without a folder: ``vectors[i]`` is the image ``names[i]``
        (relative to ``root``, the gallery folder, when there is one), with ``labels[i]``.

        ``model`` is the extractor that made the vectors, or its ``describe()``; without one the
        index can be searched but not added to. The backend is filled with ``vectors`` (the exact
        one searches them in place); ``save(folder)`` writes it as a regular index."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(names):
            raise InputError(
                f"expected {len(names)} vectors, one per name, got an array of shape {vectors.shape}"
            )
        if labels is not None and len(labels) != len(names):
            raise InputError(f"{len(labels)} labels for {len(names)} images")
        dim = vectors.shape[1]
        if isinstance(model, Extractor):
            described = model.describe()
        else:
            described = dict(model) if model is not None else {"name": None, "options": {}}
        described.setdefault("dim", dim)
        if described["dim"] != dim:
            raise InputError(f"the model gives {described['dim']}-d features, the vectors are {dim}-d")
        items = [{"id": i, "path": str(name)} for i, name in enumerate(names)]
        if labels is not None:
            for item, label in zip(items, labels, strict=True):
                item["label"] = label
        search_backend = create_backend(backend, dim, metric, len(vectors), device)
        search_backend.fill(vectors, np.arange(len(vectors), dtype=np.int64))
        gallery = Path(root).resolve() if root is not None else None
        index = cls(None, gallery or Path("."), described, metric, search_backend, vectors, items)
        index._gallery = gallery
        if isinstance(model, Extractor):
            index._extractor = model
        return index

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

    def image_set(self) -> ImageSet:
        """Its images as they are named under its root now, in vector order (for what reads the
        pixels again: re-ranking, a learned whitening's views)."""
        source = str(self.folder if self.folder is not None else self.root)
        return ImageSet([self.root / n for n in self.names], self.root, self.labels, source)

    @property
    def search_vectors(self) -> np.ndarray:
        """The vectors the backend searches: whitened / augmented when the index has ``post``."""
        return self.vectors if self.searchable is None else self.searchable

    def extractor(self) -> Extractor:
        """Rebuild the extractor that made the vectors, from the saved name and options (an index
        made in memory from an extractor's vectors returns that extractor)."""
        given = getattr(self, "_extractor", None)
        if given is not None:
            return given
        if self.model.get("name") is None:
            raise InputError("this index was made from vectors without their model: it cannot embed images")
        extractor = rebuild_extractor(self.model["name"], self.model["options"])  # regions wrapped again
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
        return self.rows_of(ids), scores

    @property
    def regions(self) -> int:
        """The region levels its vectors hold (0: one vector per image)."""
        return int(self.model.get("options", {}).get("regions", 0))

    def rankings(self, queries: np.ndarray, head: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """Full exact rankings of the searched vectors for the metrics, in ``(first_query, order)``
        blocks, with ``head`` (the short list a search returned, maybe re-ranked) as their start."""
        return rankings_with_head(full_rankings(queries, self.search_vectors, self.metric), head)

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ``items`` for backend ids (-1 for none) by binary search over the sorted ids:
        O(log n) per result, nothing rebuilt per call (the server pays this on every request)."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size == 0 or len(self.items) == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        sorted_ids, order = self._id_lookup()
        pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
        rows = order[pos] if order is not None else pos
        return np.where(sorted_ids[pos] == ids, rows, -1).astype(np.int64)

    def _id_lookup(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(sorted item ids, their rows or None when items are already in id order), kept until
        ``items`` is replaced. Ids only grow as items are added, so the order is the usual case."""
        cached = getattr(self, "_ids_cache", None)
        if cached is None or cached[0] is not self.items:
            ids = self._ids()
            if len(ids) < 2 or bool(np.all(ids[1:] > ids[:-1])):
                cached = (self.items, ids, None)
            else:
                order = np.argsort(ids, kind="stable")
                cached = (self.items, ids[order], order)
            self._ids_cache = cached
        return cached[1], cached[2]

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
        """Bytes of the generation in force on disk (0 for an index that is only in memory)."""
        if self.folder is None:
            return 0
        g = self.generation
        files = [self.folder / MANIFEST, *(self.folder / stem.format(g) for stem in GENERATION_FILES)]
        files += [p for p in self.folder.glob(f"backend-{g}.*") if p not in files]  # a backend's own suffix
        return sum(p.stat().st_size for p in files if p.is_file())

    # ------------------------------------------------------------------ writing
    def _settle_in(self, folder: Path) -> None:
        """Give an in-memory index the folder ``save(folder)`` names: a new or empty one, never in
        its gallery (the checks of :func:`check_index_output`). A saved index stays where it is."""
        if self.folder is not None:
            if os.path.realpath(folder) != os.path.realpath(self.folder):
                raise InputError(f"{folder}: this index is saved in {self.folder}; it is written only there")
            return
        gallery = getattr(self, "_gallery", None)
        check_index_output(folder, ImageSet([], self.root, None, str(gallery) if gallery is not None else ""))
        if folder.is_dir() and any(folder.iterdir()):
            raise InputError(
                f"{folder}: not empty; an index made in memory is saved only into a new or empty folder"
            )
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder

    def save(self, folder: str | Path | None = None) -> None:
        """Write a new generation atomically, then drop the previous one. An index made in memory
        (:meth:`from_embeddings`) is saved only when ``folder`` names a new or empty folder for it,
        which it then lives in."""
        if folder is not None:
            self._settle_in(Path(folder))
        if self.folder is None:
            raise InputError(
                "this index is only in memory (GalleryIndex.from_embeddings): "
                "give save() a new or empty folder to write it to"
            )
        old, g = self.generation, self.generation + 1
        vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        # straight into the temporary file: no in-memory copies of a gallery's vectors
        atomic_write(self.folder / f"vectors-{g}.npy", lambda h: np.save(h, vectors))
        items = json_text(self.items, indent=None).encode("utf-8")
        atomic_write(self.folder / f"items-{g}.json", lambda h: h.write(items))
        _check_backend_files(self.backend, self.folder, g, self.backend.save(self.folder, g))
        if self.searchable is not None:
            searchable = np.ascontiguousarray(self.searchable, dtype=np.float32)
            atomic_write(self.folder / f"searchable-{g}.npy", lambda h: np.save(h, searchable))
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
        text = json_text(manifest).encode("utf-8")
        crashpoint("save-files-written")
        atomic_write(self.folder / MANIFEST, lambda h: h.write(text))
        crashpoint("save-manifest-switched")
        self.generation = g
        for stem in GENERATION_FILES:
            (self.folder / stem.format(old)).unlink(missing_ok=True)
        clean_leftovers(self.folder, g)

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

    def remove_paths(
        self, paths: list[str | Path], *, confirm: bool = False, max_share: float = REMOVE_SHARE
    ) -> tuple[list[str], list[str]]:
        """Remove items by path (relative to the root or absolute; a folder removes all under it).
        Returns (removed names, arguments that matched nothing); saves when anything was removed.

        Every argument is checked before anything changes: an empty path or one outside the
        gallery root is refused, and so is removing more than ``max_share`` of the index unless
        ``confirm`` (the CLI's ``--yes``)."""
        targets = [self._removal_target(arg) for arg in paths]
        removed_ids, removed, unmatched = set(), [], []
        for arg, target in zip(paths, targets, strict=True):
            if target == "":  # the index's root itself: everything
                hits = list(self.items)
            else:
                hits = [
                    it for it in self.items if it["path"] == target or it["path"].startswith(target + "/")
                ]
            if not hits:
                unmatched.append(str(arg))
            for it in hits:
                if int(it["id"]) not in removed_ids:
                    removed_ids.add(int(it["id"]))
                    removed.append(it["path"])
        if removed_ids and not confirm and len(removed_ids) > max_share * len(self.items):
            raise InputError(
                f"{self.folder}: this would remove {len(removed_ids)} of {len(self.items)} images "
                f"(more than {max_share:.0%}); check the paths, or pass --yes (confirm=True) to do it"
            )
        if removed_ids:
            self._drop_ids(sorted(removed_ids))
            self.save()
        return removed, unmatched

    def _removal_target(self, arg: str | Path) -> str:
        """The item path (or folder prefix, "" for the root) that ``arg`` names; an empty argument
        or one outside the gallery root is an error, so a typo can never select everything."""
        text = os.fspath(arg)
        if not text.strip():
            raise InputError("index remove: an empty path names nothing; give paths inside the gallery root")
        names = {it["path"] for it in self.items}
        if text in names:  # an item's own name, as the index lists it (absolute names included)
            return text
        path = Path(text)
        if path.is_absolute() or path.exists():
            resolved = path.resolve()
            root = self.root.resolve()
            absolute = resolved.as_posix()  # images added from outside the root are named absolutely
            if not resolved.is_relative_to(root) and any(n.startswith(absolute + "/") for n in names):
                return absolute
            if not resolved.is_relative_to(root):
                raise InputError(
                    f"index remove: {text} is outside the gallery root {root}; give paths inside it"
                )
            rel = resolved.relative_to(root).as_posix()
            return "" if rel == "." else rel
        rel = posixpath.normpath(text.replace(os.sep, "/"))
        if rel == ".." or rel.startswith("../"):
            raise InputError(f"index remove: {text} is outside the gallery root {self.root}")
        return "" if rel == "." else rel

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
        if self.backend.shares_vectors:  # it searches the index's own arrays: hand it the grown ones
            self.backend.fill(self.search_vectors, self._ids())
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
        if self.backend.shares_vectors:
            self.backend.fill(self.search_vectors, self._ids())
        else:
            self.backend.remove(np.array(ids, dtype=np.int64))

    def _reprocess(self) -> None:
        """Recompute the processed vectors (frozen whitening, fresh DBA) and refill the backend,
        which keeps its training (IVF lists, codebooks), so a gallery that shrank still fits."""
        self.searchable = self.post.gallery(np.asarray(self.vectors), dim=self.backend.dim)
        self.backend.fill(self.searchable, self._ids())

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


def _check_backend_files(backend: VectorIndex, folder: Path, generation: int, written: list[Path]) -> None:
    """A backend saves only ``backend-<g>.<suffix>`` files of this generation (what
    :func:`~lookalike.index.backends.backend_file` names), so that switching generations and
    :func:`clean_leftovers` replace and remove them like the index's own; checked before the
    manifest switches, so a backend that breaks the rule leaves the previous generation in force."""
    for path in written:
        match = _GENERATION_FILE.match(Path(path).name)
        ours = match is not None and match.group(1) == "backend" and int(match.group(2)) == generation
        if Path(path).parent != folder or not ours:
            raise ValueError(
                f"backend {backend.spec!r} wrote {path}; backends save only backend_file(folder, {generation}) names"
            )


def clean_leftovers(folder: Path, generation: int) -> list[Path]:
    """Remove what a killed writer left in an index folder: temporary files of atomic writes and
    generation files other than ``generation`` (the manifest's). Only lookalike's own file
    names are touched; returns what was removed."""
    removed = []
    for entry in os.scandir(folder):
        if not entry.is_file(follow_symlinks=False):
            continue
        match = _GENERATION_FILE.match(entry.name)
        stale = match is not None and int(match.group(2)) != generation
        target = temporary_target(entry.name)
        temporary = target is not None and (target == MANIFEST or _GENERATION_FILE.match(target) is not None)
        if stale or temporary:
            Path(entry.path).unlink(missing_ok=True)
            removed.append(Path(entry.path))
    return removed


def _is_own_name(name: str) -> bool:
    """True for the names lookalike writes in an index folder (and their temporaries)."""
    target = temporary_target(name) or name
    backend_names = {n for entry in BACKENDS for n in getattr(entry.factory, "folder_names", ())}
    return target in (MANIFEST, "partial", *backend_names) or _GENERATION_FILE.match(target) is not None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _generation(folder: Path) -> int | None:
    """The generation in force in ``folder``, or None when it holds no valid manifest."""
    manifest = _read_json(folder / MANIFEST)
    if manifest is None or manifest.get("format") != FORMAT:
        return None
    return int(manifest.get("generation", 0))


def _is_own_partial(partial: Path) -> bool:
    """True when ``partial`` is lookalike's build folder: it carries our marker, or it has exactly
    the layout of an older build (``features/<key>/`` holding only shards and extractor.json)."""
    if not partial.is_dir() or partial.is_symlink():
        return False
    marker = _read_json(partial / BUILD_MARKER)
    if marker is not None:
        return marker.get("format") == BUILD_FORMAT
    entries = list(partial.iterdir())
    if any(p.name != "features" and not is_temporary_of(p.name, BUILD_MARKER) for p in entries):
        return False
    features = partial / "features"
    if not features.exists():  # killed while writing the marker itself: only its temporary is there
        return bool(entries) and all(p.is_file() and not p.is_symlink() for p in entries)
    if not features.is_dir() or features.is_symlink():
        return False
    found = False
    for key in features.iterdir():
        if not key.is_dir() or key.is_symlink():
            return False
        for f in key.iterdir():
            if not (_LEGACY_CACHE_FILE.match(f.name) and f.is_file()):
                return False
            found = found or f.name == "extractor.json"
    return found


_LEGACY_CACHE_FILE = re.compile(
    r"^(shard-\d+-[0-9a-f]{8}\.npz|extractor\.json|\.(shard-|extractor\.json).*\.tmp)$"
)


def _has_shards(partial: Path) -> bool:
    return any(partial.glob("features/*/shard-*.npz"))


def check_index_output(out: Path, images: ImageSet) -> None:
    """Refuse an index folder that could hold or hide the user's files: the gallery itself or a
    folder inside it, a file, or an existing folder that is neither empty nor a lookalike index.
    ``force`` never lifts these checks."""
    target = Path(os.path.realpath(out))
    if images.source and Path(images.source).is_dir():
        gallery = Path(os.path.realpath(images.source))
        if target == gallery or target.is_relative_to(gallery):
            where = "is the gallery" if target == gallery else f"is inside the gallery {gallery}"
            raise InputError(
                f"{out}: {where}; an index must not be written among your images: choose a folder "
                f"outside it, e.g. -o {gallery.parent / (gallery.name + '.index')}"
            )
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: is a file; an index is a folder: choose a new folder name")
    if out.is_dir():
        partial = out / "partial"
        entries = [p.name for p in out.iterdir()]
        ours = _generation(out) is not None or (
            _is_own_partial(partial) and all(_is_own_name(name) for name in entries)
        )
        if entries and not ours:
            raise InputError(
                f"{out}: the folder exists and is not a lookalike index ({len(entries)} item(s) in it); "
                "lookalike writes an index only into a new or empty folder or over an index: choose another -o"
            )
    prefix = str(target) + os.sep
    real_dirs: dict[str, str] = {}  # each image's folder resolved once (links into -o count too)

    def lies_inside(path: Path) -> bool:
        folder = os.path.dirname(os.path.abspath(path))
        if folder not in real_dirs:
            real_dirs[folder] = os.path.realpath(folder) + os.sep
        return (folder + os.sep).startswith(prefix) or real_dirs[folder].startswith(prefix)

    inside = next((p for p in images.paths if lies_inside(p)), None)
    if inside is not None:
        raise InputError(
            f"{out}: holds gallery image {inside}; write the index to a folder outside the gallery"
        )


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
    regions: int = 0,
) -> tuple[GalleryIndex, Embeddings | None]:
    """Extract a gallery and save it as an index folder at ``out``.

    ``out`` must be new, empty or an index already (see :func:`check_index_output`). Vectors are
    flushed to ``out/partial`` after every batch; if the build is interrupted (Ctrl-C, kill -9),
    ``resume=True`` continues it, losing at most the batch in flight. ``force=True`` rebuilds an
    existing index in place as its next generation: until the new one is complete the old one
    stays in force, and a failed rebuild leaves it untouched. When ``resume`` finds the index
    already complete it returns it with ``None`` for the embeddings.
    ``ray_address`` ("auto", "local" or a cluster address) runs extraction on Ray.
    ``postprocess`` (whitening, DBA) is fitted on the gallery and stored with the index.
    ``regions`` = L stores every image's region vectors (see :mod:`lookalike.features.regions`),
    searched exactly by the best region pair.
    """
    out = Path(out)
    images = gallery if isinstance(gallery, ImageSet) else ImageSet.from_path(gallery, labels_csv=labels_csv)
    check_index_output(out, images)
    partial = out / "partial"
    current = _generation(out) if out.is_dir() else None
    if partial.exists() and not _is_own_partial(partial):
        raise InputError(
            f"{partial}: a folder lookalike did not make sits where an index keeps its build in progress; "
            "move it elsewhere (nothing was changed)"
        )
    marker = _read_json(partial / BUILD_MARKER) if partial.is_dir() else None
    in_progress = partial.is_dir() and (
        current is None or (marker is not None and marker.get("replaces") == current)
    )
    if in_progress and not (resume or force):
        what = "a rebuild of this index" if current is not None else "an interrupted build"
        raise InputError(f"{out}: holds {what}; pass --resume to continue it or --force to start over")
    extractor = resolve_method(model, model_options)
    if not isinstance(extractor, Extractor):
        raise InputError(
            f"{extractor.name} is a local-feature method: it compares the images themselves and has no "
            f"vectors to index; search the gallery folder with `lookalike search QUERY GALLERY -m {extractor.name}`"
        )
    post = postprocess or IndexPostprocess()
    if regions:
        if post.active:
            raise InputError(
                "--regions with --whiten or --dba in an index is not supported; fit them at search time"
            )
        if backend not in ("auto", "exact"):
            raise InputError(
                f"--regions: an index of regions is searched exactly (--backend exact), not {backend}"
            )
        backend = "exact"
        extractor = with_regions(extractor, regions)
    post.check(extractor.dim)
    # the backend spec and metric are checked now, not after the whole gallery has been extracted
    create_backend(backend, post.whiten_dim or extractor.dim, metric, len(images))
    if current is not None and partial.is_dir() and not in_progress:
        shutil.rmtree(partial, ignore_errors=True)  # our finished build's leftovers
    if current is not None:
        clean_leftovers(out, current)
    if current is not None and not in_progress and not force:
        if resume:
            return GalleryIndex.open(out), None
        raise InputError(
            f"{out}: an index exists already; use `lookalike index add`, or --force to rebuild it"
        )
    if force and in_progress and not resume:
        shutil.rmtree(partial)
    created = not out.exists()
    had_shards = _has_shards(partial)
    out.mkdir(parents=True, exist_ok=True)
    if not (partial / BUILD_MARKER).is_file():
        doc = {"format": BUILD_FORMAT, "replaces": current, "source": images.source, "started": time.time()}
        atomic_write(partial / BUILD_MARKER, lambda h: h.write(json_text(doc).encode("utf-8")))
    try:
        index, emb = _build(images, out, extractor, backend, metric, options, ray_address, post, current)
    except BaseException as exc:
        # nothing this run could resume from, and nothing an earlier run saved: leave no trace
        if not had_shards and (not _has_shards(partial) or isinstance(exc, NothingToProcessError)):
            shutil.rmtree(partial, ignore_errors=True)
            if created and not any(out.iterdir()):
                out.rmdir()
        raise
    crashpoint("build-saved")
    shutil.rmtree(partial, ignore_errors=True)
    return index, emb


def _build(
    images: ImageSet,
    out: Path,
    extractor: Extractor,
    backend: str,
    metric: str,
    options: ExtractOptions | None,
    ray_address: str | None,
    post: IndexPostprocess,
    replaces: int | None,
) -> tuple[GalleryIndex, Embeddings]:
    """Extract (resuming from ``out/partial``), fit the post-processing, fill the backend and save
    the index as the generation after ``replaces`` (the first one for a new index)."""
    for leftover in (out / "partial").glob("features/*/.*" + TMP_SUFFIX):  # a killed flush's temporaries
        leftover.unlink(missing_ok=True)
    if ray_address is not None and not post.active:  # fitting whitening or DBA needs every vector
        streamed = _build_streaming(images, out, extractor, backend, metric, options, ray_address, replaces)
        if streamed is not None:
            return streamed
    cache = FeatureCache(
        out / "partial", extractor.key, extractor.describe(), flush_seconds=0.0, max_shards=None
    )
    opts = options or ExtractOptions()
    if ray_address is not None:
        from ..distributed import ray_embed

        emb = ray_embed(extractor, images, opts, address=ray_address, cache=cache)
    else:
        emb = embed(extractor, images, opts, label="gallery", cache=cache)
    if len(emb.indices) == 0:
        raise _nothing_read(images, replaces)
    vectors = emb.features
    views = view_source(extractor, images.subset(emb.indices.tolist()), opts) if post.whiten_views else None
    searchable = post.fit(vectors, views).gallery(vectors) if post.active else None
    search_vectors = vectors if searchable is None else searchable
    ids = np.arange(len(vectors), dtype=np.int64)
    index_backend = create_backend(backend, search_vectors.shape[1], metric, len(vectors))
    index_backend.fill(search_vectors, ids)
    index = _save_built(
        out, images, extractor, metric, index_backend, vectors, emb.indices, ids, replaces, post, searchable
    )
    return index, emb


def _nothing_read(images: ImageSet, replaces: int | None) -> NothingToProcessError:
    """The error of a build that could read none of its images, saying what became of the index."""
    kept = "; the existing index is unchanged" if replaces is not None else "; no index written"
    return NothingToProcessError(f"{images.source}: none of the {len(images)} image(s) could be read{kept}")


def _save_built(
    out: Path,
    images: ImageSet,
    extractor: Extractor,
    metric: str,
    backend: VectorIndex,
    vectors: np.ndarray,
    indices: np.ndarray,
    ids: np.ndarray,
    replaces: int | None,
    post: IndexPostprocess | None = None,
    searchable: np.ndarray | None = None,
) -> GalleryIndex:
    """Save a built index as the generation after ``replaces``: item ``ids[j]`` is the image
    ``images.paths[indices[j]]``, whose vector is ``vectors[j]`` (``backend`` holds them already)."""
    items = []
    for item_id, i in zip(np.asarray(ids).tolist(), np.asarray(indices).tolist(), strict=True):
        path = images.paths[i]
        item = {"id": item_id, "path": images.names[i], "key": file_key(path), "sha1": file_sha1(path)}
        if images.labels is not None:
            item["label"] = images.labels[i]
        items.append(item)
    index = GalleryIndex(
        out,
        images.root.resolve(),
        extractor.describe(),
        metric,
        backend,
        vectors,
        items,
        generation=replaces or 0,
        post=post if post is not None else IndexPostprocess(),
        searchable=searchable,
    )
    index.save()
    return index


STREAM_VECTORS = "stream-vectors.npy"  # in partial/: the vectors of a streaming build, on disk only


def _build_streaming(
    images: ImageSet,
    out: Path,
    extractor: Extractor,
    backend: str,
    metric: str,
    options: ExtractOptions | None,
    ray_address: str,
    replaces: int | None,
) -> tuple[GalleryIndex, Embeddings] | None:
    """Extract on Ray and hand each batch of vectors to the backend as it arrives, for a backend
    that takes its content that way (``stream_into``); None for one that does not (the caller then
    builds as usual). The driver keeps the vectors only on disk: the resumable shards and one
    memory map (``partial/stream-vectors.npy``, compacted in place when images were skipped) that
    the save copies into ``vectors-<g>.npy``; the manifest switches last, as for every build."""
    from ..distributed import StreamingCache, ray_stream

    generation = (replaces or 0) + 1
    index_backend = create_backend(backend, extractor.dim, metric, len(images))
    stream_into = getattr(index_backend, "stream_into", None)  # optional in the protocol
    if stream_into is None or not stream_into(out, generation):
        return None
    partial = out / "partial"
    cache = StreamingCache(partial, extractor.key, extractor.describe())
    rows = np.lib.format.open_memmap(
        partial / STREAM_VECTORS, mode="w+", dtype=np.float32, shape=(len(images), extractor.dim)
    )
    done = np.zeros(len(images), dtype=bool)
    stream = ray_stream(extractor, images, options, address=ray_address, cache=cache)
    for batch in stream:
        rows[batch.indices] = batch.features
        done[batch.indices] = True
        index_backend.add(batch.features, batch.indices.astype(np.int64))  # ids: the images' rows
        crashpoint("stream-batch")
    indices = np.flatnonzero(done)
    if len(indices) == 0:
        raise _nothing_read(images, replaces)
    vectors = rows if len(indices) == len(images) else _compact_rows(rows, indices)
    index = _save_built(out, images, extractor, metric, index_backend, vectors, indices, indices, replaces)
    index.vectors = np.load(out / f"vectors-{index.generation}.npy", mmap_mode="r", allow_pickle=False)
    del rows, vectors  # partial/ (and the memory maps into it) goes once the build returns
    return index, Embeddings(index.vectors, indices, stream.skipped, stream.n_cached, stream.n_extracted)


def _compact_rows(rows: np.ndarray, indices: np.ndarray, block: int = 65_536) -> np.ndarray:
    """``rows[indices]`` (``indices`` ascending) moved to the front of ``rows`` in place, a block at
    a time, and returned as a view of those first rows: no second file on disk. Safe in place since
    ``indices[j] >= j``: a block reads only rows at or after its own start, which no earlier block
    has written."""
    for start in range(0, len(indices), block):
        part = indices[start : start + block]
        rows[start : start + len(part)] = rows[part]  # the read is a copy first
    return rows[: len(indices)]
