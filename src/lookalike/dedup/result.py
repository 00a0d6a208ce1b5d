"""``find_duplicates``: near-duplicate groups within a collection, or against a reference library.

One search pipeline serves it: the collection (or library) becomes a :class:`GalleryIndex` (a
folder's vectors in memory, or a saved index), its own vectors (or the new images') are searched
through the index's interface for k neighbours each, pairs are cut at the threshold, pairs a person
marked as different are dropped, the rest are optionally verified by local features, and groups
are formed by complete linkage (see :mod:`lookalike.dedup.groups`). Local-feature methods
(``-m surf|sift|orb``) take their pairs from ``lookalike.search`` itself, scored by inliers.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..cache import default_cache_dir
from ..config import PRESETS, SearchConfig
from ..errors import InputError, NothingToProcessError
from ..extract import ExtractOptions, embed, resolve_device
from ..features import Extractor
from ..features.registry import EXTRACTORS
from ..fileio import atomic_write, printable, write_json
from ..images import ImageSet
from ..index import GalleryIndex, is_index
from ..index.store import MANIFEST
from ..methods import is_local_method, resolve_method
from ..pairs import view_source
from ..pipeline import DEFAULT_MODEL, GallerySide, Refinement
from .actions import is_inside
from .decisions import read_not_duplicates
from .groups import Grouping, group_pairs
from .keep import check_keep_rule, choose_kept, file_sha256
from .pairs import (
    DEDUP_MODEL,
    DEFAULT_K,
    VERIFY_METHODS,
    Pairs,
    Threshold,
    default_backend,
    default_key,
    default_threshold,
    pairs_among,
    resolve_threshold,
    search_pairs,
)

FORMAT = "lookalike-dedup"
log = logging.getLogger("lookalike")
COLLECTION, REFERENCE = "collection", "reference"


@dataclass
class Item:
    """One image: its name relative to its set's root, its path, and its set."""

    name: str
    path: Path
    set: str = COLLECTION


@dataclass
class Group:
    """Images that are all duplicates of each other (in reference mode: a new image and its
    library matches); ``kept`` is the one to keep, ``pairs`` (a, b, score, inliers or None)."""

    id: int
    members: list[int]
    kept: int
    pairs: list[tuple[int, int, float, int | None]]


@dataclass
class DedupResult:
    """What ``find_duplicates`` found: the items, the groups, every duplicate pair (``pairs``, with
    ``pair_group``: the group each lies in, -1 when the linkage split it), and the settings."""

    items: list[Item]
    groups: list[Group]
    pairs: Pairs
    pair_group: np.ndarray
    threshold: Threshold
    settings: dict[str, Any]
    roots: dict[str, Path | None]
    skipped: list[dict[str, str]] = field(default_factory=list)

    @property
    def mode(self) -> str:
        return REFERENCE if self.roots.get(REFERENCE) is not None else COLLECTION

    def duplicates(self) -> list[Item]:
        """The collection images that are not kept: what an action would act on."""
        return [
            self.items[m]
            for g in self.groups
            for m in g.members
            if m != g.kept and self.items[m].set == COLLECTION
        ]

    def _pair_doc(self, a: int, b: int, score: float, inliers: int | None) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "a": self.items[a].name,
            "b": self.items[b].name,
            "score": round(float(score), 6),
        }
        if inliers is not None:
            doc["inliers"] = int(inliers)
        return doc

    def to_json(self) -> dict[str, Any]:
        """The results document (``-o dedup.json``): settings, counts, groups with their members,
        pairs and kept image, and every duplicate pair with its group (null when split off)."""
        groups = []
        for g in self.groups:
            to_kept = {(a if b == g.kept else b): s for a, b, s, _ in g.pairs if g.kept in (a, b)}
            groups.append(
                {
                    "id": g.id,
                    "kept": self.items[g.kept].name,
                    "members": [
                        {
                            "image": self.items[m].name,
                            "set": self.items[m].set,
                            "kept": m == g.kept,
                            "score_to_kept": None if m not in to_kept else round(float(to_kept[m]), 6),
                        }
                        for m in g.members
                    ],
                    "pairs": [self._pair_doc(*p) for p in g.pairs],
                }
            )
        inl = self.pairs.inliers
        pairs = []
        for i in range(len(self.pairs)):
            doc = self._pair_doc(
                int(self.pairs.a[i]),
                int(self.pairs.b[i]),
                float(self.pairs.score[i]),
                None if inl is None or inl[i] < 0 else int(inl[i]),
            )
            doc["group"] = None if self.pair_group[i] < 0 else int(self.pair_group[i])
            pairs.append(doc)
        return {
            "format": FORMAT,
            "version": 1,
            "mode": self.mode,
            "roots": {k: None if v is None else str(v) for k, v in self.roots.items()},
            "settings": self.settings,
            "counts": {
                "images": sum(it.set == COLLECTION for it in self.items),
                "reference_images": sum(it.set == REFERENCE for it in self.items),
                "groups": len(self.groups),
                "duplicates": len(self.duplicates()),
                "pairs": len(self.pairs),
            },
            "groups": groups,
            "pairs": pairs,
            "skipped": self.skipped,
        }

    def write_json(self, path: str | Path) -> None:
        """Write :meth:`to_json` atomically."""
        write_json(path, self.to_json())

    def csv_text(self) -> str:
        """One row per group member: group, image, set, kept, score to the kept image, path."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["group", "image", "set", "kept", "score_to_kept", "path"])
        for g in self.doc_groups():
            for member in g["members"]:
                item = self.items[member["id"]]
                score = member["score_to_kept"]
                writer.writerow(
                    [
                        g["id"],
                        item.name,
                        item.set,
                        int(member["kept"]),
                        "" if score is None else score,
                        str(item.path),
                    ]
                )
        return buffer.getvalue()

    def doc_groups(self) -> list[dict[str, Any]]:
        """Groups with item ids (for the CSV and the HTML page)."""
        out = []
        for g in self.groups:
            to_kept = {(a if b == g.kept else b): s for a, b, s, _ in g.pairs if g.kept in (a, b)}
            members = [
                {
                    "id": m,
                    "kept": m == g.kept,
                    "score_to_kept": None if m not in to_kept else round(float(to_kept[m]), 6),
                }
                for m in g.members
            ]
            out.append({"id": g.id, "kept": g.kept, "members": members})
        return out

    def write_csv(self, path: str | Path) -> None:
        """Write :meth:`csv_text` atomically (UTF-8; odd bytes in names as escapes)."""
        data = self.csv_text().encode("utf-8", "backslashreplace")
        atomic_write(Path(path), lambda h: h.write(data))


# ----------------------------------------------------------------------------------- finding


@dataclass
class _Found:
    """Candidate pairs and what made them, before grouping."""

    items: list[Item]
    pairs: Pairs
    score: str
    model: dict[str, Any]
    skipped: list[dict[str, str]]
    settings: dict[str, Any]
    vectors: tuple[np.ndarray, np.ndarray] | None = None  # (queries, gallery) rows in item order
    roots: dict[str, Path | None] = field(default_factory=dict)


def find_duplicates(
    collection: str | Path,
    reference: str | Path | None = None,
    *,
    config: SearchConfig | None = None,
    threshold: float | None = None,
    threshold_file: str | Path | None = None,
    k: int = DEFAULT_K,
    verify: str | None = None,
    min_inliers: int = 10,
    keep: str = "largest",
    not_duplicates: str | Path | None = None,
    backend: str | None = None,
) -> DedupResult:
    """Groups of near-duplicates in ``collection`` (a folder, list, CSV or saved index), or with
    ``reference`` (same kinds) for each image of ``collection`` its duplicates in the library,
    never comparing the library with itself. ``config`` (a :class:`SearchConfig`: model, preset,
    refinement, extraction) chooses the method; ``threshold`` / ``threshold_file`` the cut (default:
    ``DEFAULT_THRESHOLDS``); ``k`` neighbours per image are candidates; ``verify`` (sift, surf)
    checks each pair by local features, needing ``min_inliers``; ``keep`` picks each group's kept
    image (reference images are always the kept ones in reference mode); ``not_duplicates`` is a
    decisions file (see :mod:`lookalike.dedup.decisions`); ``backend`` an index backend for a folder."""
    config = config or SearchConfig()
    check_keep_rule(keep)
    if k < 1:
        raise InputError(f"-k must be at least 1, got {k}")
    if verify is not None and verify not in VERIFY_METHODS:
        raise InputError(f"--verify: unknown method {verify!r}; choose one of {', '.join(VERIFY_METHODS)}")
    if min_inliers < 1:
        raise InputError(f"--min-inliers must be at least 1, got {min_inliers}")
    if config.refinement.rerank:
        raise InputError(
            "--rerank re-orders search results; dedup verifies pairs with --verify sift|surf instead"
        )
    config = _without_search_only_steps(config)
    for option, path in (("FOLDER", collection), ("--reference", reference)):
        if path is not None and not Path(path).exists():
            raise InputError(f"{option} {path}: no such file or folder")
    if reference is not None:
        _check_apart(collection, reference)
    decisions = read_not_duplicates(not_duplicates) if not_duplicates is not None else set()
    opts = config.extract
    if opts.use_cache and opts.cache_dir is None:
        opts = replace(opts, cache_dir=default_cache_dir())
    local = is_local_method(config.model)
    if local and backend is not None:
        raise InputError(f"--backend: {config.model} matches local features; it searches no vector index")
    manifest = _manifest(reference or collection)
    stored_model, stored_metric = _stored_model(manifest)
    model_name = config.model or stored_model or _file_model(threshold_file) or dedup_default_model(config)
    if config.model is None and stored_model is None:
        config = replace(config, model=model_name)
    score = "inliers" if local else (config.metric or stored_metric or "cosine")
    steps = None if local else _dedup_steps(config, manifest)
    cut = resolve_threshold(
        score, model_name, threshold, threshold_file, preset=config.preset, verify=verify, refinement=steps
    )
    changed = _changed_settings(config, model_name, cut, manifest)
    if cut.source.startswith("default") and changed and not local:
        preset_row = config.preset and cut.source.startswith(f"default for {default_key(model_name, config.preset)}")
        log.warning(
            "the default threshold %g was measured with %s, not with %s; "
            "check the groups, or measure one (lookalike calibrate, --threshold-file)",
            cut.value,
            f"{model_name} under --preset {config.preset} (as dedup runs it)"
            if preset_row
            else f"{model_name}'s default settings",
            ", ".join(changed),
        )
    if local:
        found = _local_pairs(collection, reference, config, k, cut)
    else:
        found = _vector_pairs(collection, reference, config, opts, k, cut, backend)
    if reference is not None:
        _check_disjoint(found.items, collection, reference)
    hashes = _Hashes(found.items)
    confident = None if changed else _confident_cut(verify, score, model_name, config, cut, local)
    check = _PairCheck(cut, decisions, hashes, verify, min_inliers, found.items, opts, confident)
    pairs = check(found.pairs)
    if reference is None:
        complete = None
        if found.vectors is not None:
            complete = _completer(found.vectors, found.score, cut, check)
        grouping = group_pairs(len(found.items), pairs, cut.higher_is_better, complete=complete)
    else:
        grouping = _reference_groups(pairs)
    groups = _finish_groups(grouping, found.items, keep)
    settings = {
        **found.settings,
        "model": found.model,
        "score": found.score,
        "threshold": cut.describe(),
        "k": k,
        "verify": None
        if verify is None
        else {
            "method": verify,
            "min_inliers": min_inliers,
            "accepted_unverified_from": None if confident is None else confident.value,
        },
        "keep": keep,
        "grouping": "per new image: its library matches" if reference is not None else "complete linkage",
        "not_duplicates": None
        if not_duplicates is None
        else {"file": str(not_duplicates), "pairs": len(decisions), "excluded": check.excluded},
        "preset": config.preset,
    }
    roots = {COLLECTION: found.roots[COLLECTION], REFERENCE: found.roots.get(REFERENCE)}
    return DedupResult(
        found.items, groups, grouping.pairs, grouping.pair_group, cut, settings, roots, found.skipped
    )


def dedup_default_model(config: SearchConfig) -> str:
    """The model dedup uses when none is named: ``DEDUP_MODEL`` (pixels, which beat every
    perceptual hash on every labelled duplicate set at its calibrated threshold, where the search
    default lost on resized copies), or the search default when a preset or model options are
    given (they are CNN settings)."""
    if config.preset not in (None, "default") or any(v is not None for v in config.model_options.values()):
        return DEFAULT_MODEL
    return DEDUP_MODEL


def _file_model(threshold_file: str | Path | None) -> str | None:
    """The model a ``lookalike calibrate`` file was measured with (so that ``--threshold-file``
    without ``-m`` means that model), None when it names none or cannot be read (it is then
    read, and refused in one line, by :func:`~lookalike.dedup.pairs.read_threshold_file`)."""
    if threshold_file is None:
        return None
    try:
        model = json.loads(Path(threshold_file).read_text(encoding="utf-8")).get("model")
    except (OSError, ValueError, AttributeError):
        return None
    name = model.get("name") if isinstance(model, dict) else model
    return name if isinstance(name, str) else None


def _confident_cut(
    verify: str | None, score: str, model: str, config: SearchConfig, cut: Threshold, local: bool
) -> Threshold | None:
    """With ``verify`` and the settings the defaults were measured with: the model's default cut
    *without* verification (calibrated for the same precision), when it is stricter than ``cut``. Pairs that reach it are duplicates at that
    precision already and are not verified: local features cannot confirm every true copy (a
    smooth or tiny image has too few keypoints, even against itself); verification decides the
    band between ``cut`` and this one. None without verification or without such a default."""
    if verify is None or local:
        return None
    plain = default_threshold(score, model, config.preset, None)
    if plain is None:
        return None
    stricter = plain.value > cut.value if cut.higher_is_better else plain.value < cut.value
    return plain if stricter else None


def _changed_settings(
    config: SearchConfig, model: str, cut: Threshold, manifest: dict[str, Any] | None = None
) -> list[str]:
    """The settings that differ from those the default threshold ``cut`` was measured with: the
    model's defaults, or a preset's settings when the cut is the preset's own row; with a saved
    index's ``manifest``, also the model options and steps it was built with."""
    base = SearchConfig()
    if cut.source.startswith(f"default for {default_key(model, config.preset)}") and config.preset:
        base = _without_search_only_steps(SearchConfig.from_preset(config.preset))  # as dedup runs it
    options = [k for k, v in config.model_options.items() if v is not None and base.model_options.get(k) != v]
    ours, theirs = config.refinement.describe(), base.refinement.describe()
    changed = options + [k for k in ours if ours[k] != theirs.get(k)] + [k for k in theirs if k not in ours]
    stored = (manifest or {}).get("model") or {}
    if stored.get("name") == model and model in EXTRACTORS:
        defaults = {k: default for k, (_, default) in EXTRACTORS.get(model).options().items() if k != "weights"}
        built = stored.get("options") or {}
        changed += [k for k in defaults if k in built and built[k] != base.model_options.get(k, defaults[k])]
    steps = (manifest or {}).get("postprocess") or {}
    changed += [k for k in steps if k not in theirs]  # whitening or DBA stored with the index
    stored_white, their_white = steps.get("whiten"), theirs.get("whiten")
    if isinstance(stored_white, dict) and their_white and _whitening(stored_white) != _whitening(their_white):
        changed.append("whiten")  # the index's own whitening (a preset's yields to it), not the cut's
    return list(dict.fromkeys(changed))


def _whitening(settings: dict[str, Any]) -> tuple[Any, Any, int]:
    """(dimension asked for, shrinkage, views) of a whitening as a manifest or a run records it."""
    return settings.get("requested_dim", settings.get("dim")), settings.get("shrinkage"), settings.get("views", 0)


def _dedup_steps(config: SearchConfig, manifest: dict[str, Any]) -> dict[str, Any]:
    """The steps dedup's scores go through, as a run reports them: ``config``'s (search-only ones
    already left out) and those a saved index stores (under ``index``, from its ``manifest``), for
    checking a threshold file against them."""
    out = config.refinement.describe()
    stored = manifest.get("postprocess")
    if isinstance(stored, dict) and stored:
        out["index"] = stored
    return out


def _manifest(source: str | Path) -> dict[str, Any]:
    """The manifest of a saved index; empty for a folder (or a manifest that cannot be read:
    GalleryIndex.open says what is wrong with it)."""
    if not is_index(source):
        return {}
    try:
        manifest = json.loads((Path(source) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _stored_model(manifest: dict[str, Any]) -> tuple[str | None, str | None]:
    """(model name, metric) a saved index was built with, (None, None) for a folder."""
    try:
        return manifest["model"].get("name"), manifest.get("metric")
    except (KeyError, AttributeError):
        return None, None


def _check_model(index: GalleryIndex, model: str | None, options: dict[str, Any], metric: str | None) -> None:
    """Refuse a saved index built with another model, other model options or another metric."""
    if model is not None and model != index.model.get("name"):
        raise InputError(f"{index.folder} was built with model {index.model.get('name')!r}, not {model!r}")
    stored = index.model.get("options", {})
    differ = sorted(k for k, v in options.items() if v is not None and stored.get(k) != v)
    if differ:
        raise InputError(
            f"{index.folder} is an index built with other model options ({', '.join(differ)}: "
            f"{', '.join(repr(stored.get(k)) for k in differ)}); they are fixed when it is built"
        )
    if metric is not None and metric != index.metric:
        raise InputError(f"{index.folder} was built for {index.metric} scores, not {metric}")


def _load(
    source: str | Path,
    which: str,
    config: SearchConfig,
    opts: ExtractOptions,
    backend: str | None,
    extractor: Extractor | None = None,
) -> tuple[GalleryIndex, list[Item], list[dict[str, str]], Path]:
    """(index, items, skipped, root) of one side: a saved index as it is, or a folder (list, CSV)
    embedded with the model (``extractor`` when given) into an in-memory index of ``backend``."""
    if is_index(source):
        if backend is not None:
            raise InputError("--backend: a saved index is searched with the backend it was built with")
        index = GalleryIndex.open(source, resolve_device(opts.device).type)
        if index.regions:
            raise InputError(
                f"{source}: an index of region vectors (built with --regions {index.regions}); dedup "
                "compares whole images: give the folder, or an index built without --regions"
            )
        if extractor is not None:  # new images as an index: they must share the library's model
            ours = extractor.describe()
            _check_model(index, ours["name"], ours["options"], None)
        else:
            _check_model(index, config.model, config.model_options, config.metric)
        return index, [Item(n, index.root / n, which) for n in index.names], [], index.root
    images = ImageSet.from_path(source)
    extractor = extractor or resolve_method(config.model or DEFAULT_MODEL, config.model_options)
    emb = embed(extractor, images, opts, label=which)
    if len(emb.indices) == 0:
        raise NothingToProcessError(f"{source}: none of the {len(images)} image(s) could be read")
    names = [images.names[i] for i in emb.indices]
    index = in_memory_index(
        emb.features, names, backend, model=extractor, metric=config.metric or "cosine", root=images.root
    )
    items = [Item(images.names[i], images.paths[i], which) for i in emb.indices]
    skipped = [{"set": which, "path": n, "reason": r} for n, r in images.skipped_links]
    skipped += [{"set": which, "path": s.path, "reason": s.reason} for s in emb.skipped]
    return index, items, skipped, images.root


def in_memory_index(
    vectors: np.ndarray, names: list[str], backend: str | None, **kwargs: Any
) -> GalleryIndex:
    """An in-memory index of ``vectors`` for dedup: ``backend`` when given, else
    :func:`~lookalike.dedup.pairs.default_backend` (exact, or a coarse IVF with few probes)."""
    spec, nprobe = (backend, None) if backend is not None else default_backend(len(vectors))
    index = GalleryIndex.from_embeddings(vectors, names, backend=spec, **kwargs)
    if nprobe is not None:
        index.backend.nprobe = nprobe
    return index


# query-side steps of a search that dedup, which compares each image's one vector with the
# others', has no use for: refused when given, dropped when only a preset holds them
SEARCH_ONLY_STEPS = {
    "regions": "--regions",
    "query_regions": "--query-regions",
    "query_scales": "--query-scales",
    "query_resize": "--query-resize",
    "score_norm": "--score-norm",
    "background": "--background",
    "gallery_norm": "--gallery-norm",
}


def refuse_search_only(flags: list[str]) -> None:
    """One line refusing the search-only options ``flags`` (as ``--score-norm``) given to dedup."""
    if flags:
        raise InputError(
            f"{', '.join(flags)}: search-time option(s) that dedup does not apply (it compares each "
            "image's one vector with the others'): drop them"
        )


def _without_search_only_steps(config: SearchConfig) -> SearchConfig:
    """``config`` as dedup runs it: without the search-only steps its preset holds (a one-line
    error for those the user gave: dedup would otherwise ignore them silently), and with PCA
    whitening for the preset's learned one unless ``--whiten-views`` was given: at pair precision
    0.99 PCA finds more duplicates (BENCHMARKS.md, "Whitening learned from pairs")."""
    preset = PRESETS[config.preset or "default"].get("refinement", {})
    refine = config.refinement
    on = [name for name in SEARCH_ONLY_STEPS if getattr(refine, name)]
    given = [
        SEARCH_ONLY_STEPS[name]
        for name in on
        if name in config.given_steps or getattr(refine, name) != preset.get(name)
    ]
    refuse_search_only(given)
    defaults = Refinement()
    changes = {name: getattr(defaults, name) for name in on}
    if refine.whiten_views and preset.get("whiten_views") and "whiten_views" not in config.given_steps:
        changes["whiten_views"] = 0
    return replace(config, refinement=replace(refine, **changes)) if changes else config


def _search_time_steps(config: SearchConfig, index: GalleryIndex) -> Refinement:
    """The steps left to run at search time, as a search reconciles them
    (:meth:`lookalike.pipeline.GallerySide.reconcile`): a step an index stores with the same
    settings is not run twice, one with other settings is refused (a preset's own whitening
    yields to the stored one)."""
    refine = config.refinement
    if not index.post.active:
        refine.check(index.dim)
        return refine
    side = GallerySide(extractor=index.extractor(), metric=index.metric, index=index)
    return side.reconcile(refine, config.preset_whitening)


_OVERLAP = (
    "a library image would be its own duplicate, and acting on the new one would move or delete "
    "the library's file; give new images that lie outside the library"
)


def _check_apart(collection: str | Path, reference: str | Path) -> None:
    """Refuse, before anything is extracted, folders of which one holds the other."""
    a, b = Path(collection), Path(reference)
    folders = a.is_dir() and b.is_dir() and not is_index(a) and not is_index(b)
    if folders and (is_inside(a, b) or is_inside(b, a)):
        raise InputError(f"FOLDER {collection} and --reference {reference} overlap: {_OVERLAP}")


def _entry(path: Path) -> str:
    """The directory entry a path names, whatever folder links lead to it (a hard or symbolic link
    of a library file is another entry: acting on it leaves the library's file in place)."""
    path = Path(path).absolute()
    return os.path.join(os.path.realpath(path.parent), path.name)


def _check_disjoint(items: list[Item], collection: str | Path, reference: str | Path) -> None:
    """Refuse new images that are files of the library (an index of it, a list naming them) or
    that a library entry links to (the library's image would go with the new one)."""
    library = {_entry(it.path) for it in items if it.set == REFERENCE}
    library |= {os.path.realpath(it.path) for it in items if it.set == REFERENCE}
    shared = [it.path for it in items if it.set == COLLECTION and _entry(it.path) in library]
    if shared:
        raise InputError(
            f"FOLDER {collection} and --reference {reference} share {len(shared)} image(s) "
            f"(such as {printable(str(shared[0]))}): {_OVERLAP}"
        )


def _vector_pairs(
    collection: str | Path,
    reference: str | Path | None,
    config: SearchConfig,
    opts: ExtractOptions,
    k: int,
    cut: Threshold,
    backend: str | None,
) -> _Found:
    """Pairs from the index search of the collection's vectors (or the new images') against the
    collection (or the library), after the search-time steps of ``config.refinement``."""
    library_side = REFERENCE if reference is not None else COLLECTION
    library, lib_items, skipped, lib_root = _load(
        reference or collection, library_side, config, opts, backend
    )
    refine = _search_time_steps(config, library)
    if reference is None:
        items, raw, roots = lib_items, np.asarray(library.vectors), {COLLECTION: Path(lib_root).absolute()}
    else:
        new, new_items, new_skipped, new_root = _load(
            collection, COLLECTION, config, opts, None, library.extractor()
        )
        items, raw = new_items + lib_items, np.asarray(new.vectors)
        skipped = new_skipped + skipped
        roots = {COLLECTION: Path(new_root).absolute(), REFERENCE: Path(lib_root).absolute()}
    queries = library.post.queries(raw) if library.post.active else raw
    views = None
    if refine.whiten_views:  # a learned whitening is fitted on edited views of the library's images
        views = view_source(library.extractor(), library.image_set(), opts)
    queries, gallery, changed = refine.apply(queries, library.search_vectors, views)
    searched = library
    if changed:
        searched = in_memory_index(gallery, library.names, backend, metric=library.metric)
    if reference is None:
        pairs = search_pairs(searched, queries, k + 1, cut, symmetric=True)
        vectors = (np.asarray(queries), np.asarray(gallery))
    else:
        ids = np.arange(len(lib_items), dtype=np.int64) + len(new_items)
        pairs = search_pairs(searched, queries, k, cut, gallery_ids=ids, symmetric=False)
        vectors = None
    refinement = refine.describe()
    if library.post.active:
        refinement["index"] = library.post.describe()
    settings = {
        "metric": library.metric,
        "backend": searched.backend.spec,
        "nprobe": getattr(searched.backend, "nprobe", None),
        "refinement": refinement,
    }
    return _Found(items, pairs, library.metric, library.model, skipped, settings, vectors, roots)


def _local_pairs(
    collection: str | Path, reference: str | Path | None, config: SearchConfig, k: int, cut: Threshold
) -> _Found:
    """Pairs from a local-feature search of the collection against itself (or the library)."""
    from ..pipeline import search

    for source in (collection, reference):
        if source is not None and is_index(source):
            raise InputError(f"{source} is an index of global features; local methods compare image folders")
    q_set = ImageSet.from_path(collection)
    g_set = q_set if reference is None else ImageSet.from_path(reference)
    run = search(q_set, g_set, k=k + (1 if reference is None else 0), config=config)
    path_of = dict(zip(q_set.names, q_set.paths, strict=True))
    g_path_of = dict(zip(g_set.names, g_set.paths, strict=True))
    if reference is None:
        items = [Item(n, path_of[n]) for n in run.gallery_names]
        id_of = {n: i for i, n in enumerate(run.gallery_names)}
        q_ids = np.array([id_of[n] for n in run.query_names], dtype=np.int64)
        pairs = _local_knn(run, cut, q_ids, None, True)
    else:
        items = [Item(n, path_of[n]) for n in run.query_names]
        items += [Item(n, g_path_of[n], REFERENCE) for n in run.gallery_names]
        g_ids = np.arange(len(run.gallery_names), dtype=np.int64) + len(run.query_names)
        pairs = _local_knn(run, cut, None, g_ids, False)
    skipped = [
        {
            "set": REFERENCE if which == "gallery" and reference is not None else COLLECTION,
            "path": s.path,
            "reason": s.reason,
        }
        for which, rows in run.skipped.items()
        for s in rows
        if not (reference is None and which == "query")  # one collection: reported once
    ]
    roots = {
        COLLECTION: q_set.root.absolute(),
        REFERENCE: None if reference is None else g_set.root.absolute(),
    }
    return _Found(
        items, pairs, "inliers", run.model, skipped, {"metric": "inliers", "backend": None}, None, roots
    )


def _local_knn(
    run: Any, cut: Threshold, q_ids: np.ndarray | None, g_ids: np.ndarray | None, sym: bool
) -> Pairs:
    from .pairs import knn_pairs

    return knn_pairs(run.indices, run.scores, cut, query_ids=q_ids, gallery_ids=g_ids, symmetric=sym)


# ----------------------------------------------------------------------------------- filters


class _Hashes:
    """SHA-256 of items, computed only for the items that are asked for, once each."""

    def __init__(self, items: list[Item]) -> None:
        self.items, self._done = items, {}

    def __call__(self, i: int) -> str | None:
        if i not in self._done:
            try:
                self._done[i] = file_sha256(self.items[i].path)
            except OSError:
                self._done[i] = None
        return self._done[i]


class _PairCheck:
    """Drops pairs marked as different (by content hash) and, with ``verify``, pairs that local
    features do not confirm with at least ``min_inliers`` RANSAC inliers (their counts are kept);
    pairs that reach ``confident`` are kept unverified (inliers -1)."""

    def __init__(
        self,
        cut: Threshold,
        decisions: set[tuple[str, str]],
        hashes: _Hashes,
        verify: str | None,
        min_inliers: int,
        items: list[Item],
        opts: ExtractOptions,
        confident: Threshold | None = None,
    ) -> None:
        self.cut, self.decisions, self.hashes, self.confident = cut, decisions, hashes, confident
        self.verify, self.min_inliers, self.items, self.opts = verify, min_inliers, items, opts
        self._excluded: set[tuple[int, int]] = set()
        self._features: dict[int, Any] = {}

    def __call__(self, pairs: Pairs) -> Pairs:
        if self.decisions and len(pairs):
            keep = np.array([self._allowed(int(a), int(b)) for a, b in zip(pairs.a, pairs.b, strict=True)])
            self._excluded.update(zip(pairs.a[~keep].tolist(), pairs.b[~keep].tolist(), strict=True))
            pairs = pairs.take(keep)
        if self.verify is not None and len(pairs):
            sure = (
                np.zeros(len(pairs), bool) if self.confident is None else self.confident.passes(pairs.score)
            )
            inliers = np.full(len(pairs), -1, dtype=np.int32)
            if not sure.all():
                inliers[~sure] = self._inliers(pairs.take(~sure))
            pairs = Pairs(pairs.a, pairs.b, pairs.score, inliers).take(sure | (inliers >= self.min_inliers))
        return pairs

    @property
    def excluded(self) -> int:
        """How many distinct pairs the decisions file left out."""
        return len(self._excluded)

    def _allowed(self, a: int, b: int) -> bool:
        ha, hb = self.hashes(a), self.hashes(b)
        if ha is None or hb is None:
            return True
        return ((ha, hb) if ha <= hb else (hb, ha)) not in self.decisions

    def _inliers(self, pairs: Pairs) -> np.ndarray:
        """RANSAC inliers of each pair, by the re-ranker's machinery (cached local features)."""
        from ..local import MatchOptions, create_detector, extract_features, verify_pairs

        detector = create_detector(self.verify)
        needed = [
            int(i) for i in np.unique(np.concatenate([pairs.a, pairs.b])) if int(i) not in self._features
        ]
        if needed:
            images = ImageSet([self.items[i].path for i in needed], Path("/"))
            feats = extract_features(detector, images, self.opts, label="verification")
            self._features.update(zip(needed, feats.features, strict=True))
        firsts, starts = np.unique(pairs.a, return_index=True)
        order = np.argsort(pairs.a, kind="stable")
        rows = np.split(order, np.searchsorted(pairs.a[order], firsts)[1:])
        everything = sorted({int(i) for i in np.concatenate([pairs.a, pairs.b])})
        pos = {i: n for n, i in enumerate(everything)}
        gallery = [self._features[i] for i in everything]
        usable = [n for n, a in enumerate(firsts.tolist()) if self._features[a] is not None]
        inl_rows, _ = verify_pairs(
            [self._features[int(firsts[n])] for n in usable],
            gallery,
            [np.array([pos[int(b)] for b in pairs.b[rows[n]]], dtype=np.int64) for n in usable],
            detector.binary,
            MatchOptions(),
            workers=self.opts.num_workers,
            progress=self.opts.progress,
            desc=f"{self.verify} verification",
        )
        inliers = np.zeros(len(pairs), dtype=np.int32)
        for n, values in zip(usable, inl_rows, strict=True):
            inliers[rows[n]] = values
        return inliers


def _completer(vectors: tuple[np.ndarray, np.ndarray], score: str, cut: Threshold, check: _PairCheck) -> Any:
    """All duplicate pairs among a component's members from their exact scores (what the kNN
    lists may have missed), through the same filters as the candidates."""
    queries, gallery = vectors
    return lambda members: check(pairs_among(members, queries, gallery, cut, euclidean=score == "euclidean"))


def _reference_groups(pairs: Pairs) -> Grouping:
    """Reference mode: one group per new image (``a``) that has library matches (``b``)."""
    if len(pairs) == 0:
        return Grouping([], pairs, np.zeros(0, np.int64))
    firsts, starts = np.unique(pairs.a, return_index=True)  # pairs are sorted by (a, b)
    groups = [
        np.concatenate([[a], pairs.b[s:e]])
        for a, s, e in zip(firsts, starts, [*starts[1:], len(pairs)], strict=True)
    ]
    return Grouping(groups, pairs, np.searchsorted(firsts, pairs.a).astype(np.int64))


def _finish_groups(grouping: Grouping, items: list[Item], keep: str) -> list[Group]:
    """Groups with their kept image (by ``keep``; in reference mode among the library images)
    and their pairs."""
    order = np.argsort(grouping.pair_group, kind="stable")
    pg = grouping.pair_group[order]
    inl = grouping.pairs.inliers
    out = []
    for g, members in enumerate(grouping.groups):
        lo, hi = np.searchsorted(pg, g), np.searchsorted(pg, g, side="right")
        rows = order[lo:hi]
        pairs = [
            (
                int(grouping.pairs.a[r]),
                int(grouping.pairs.b[r]),
                float(grouping.pairs.score[r]),
                None if inl is None or inl[r] < 0 else int(inl[r]),
            )
            for r in rows
        ]
        members = [int(m) for m in members]
        candidates = [m for m in members if items[m].set == REFERENCE] or members
        kept = candidates[
            choose_kept([items[m].path for m in candidates], [items[m].name for m in candidates], keep)
        ]
        out.append(Group(g, members, kept, pairs))
    return out
