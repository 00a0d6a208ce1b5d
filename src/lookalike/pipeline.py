"""The search pipeline as one call: images -> features -> exact top-k -> results (+ metrics)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .cache import atomic_write, default_cache_dir
from .errors import InputError, NothingToProcessError
from .extract import Embeddings, ExtractOptions, Skipped, embed
from .features import Extractor, create_extractor
from .images import ImageSet
from .metrics import RetrievalMetrics, evaluate_rankings
from .search import full_rankings, topk

DEFAULT_MODEL = "efficientnet-lite0"
FORMATS = ("default", "challenge")


@dataclass
class SearchRun:
    """What one search produced: per query, gallery indices and scores best first, plus
    what was skipped, cache and timing figures, and metrics when the sets are labelled."""

    query_names: list[str]
    gallery_names: list[str]
    indices: np.ndarray
    scores: np.ndarray
    metric: str
    model: dict[str, Any]
    skipped: dict[str, list[Skipped]] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    metrics: RetrievalMetrics | None = None

    def ranking(self) -> dict[str, list[str]]:
        """``{query: [gallery images, best first]}`` with paths relative to their roots."""
        return {
            q: [self.gallery_names[j] for j in row]
            for q, row in zip(self.query_names, self.indices, strict=True)
        }

    def to_json(self, *, scores: bool = False, fmt: str = "default", group: str | None = None) -> dict:
        """The results document: ``default`` (optionally with scores) or the challenge format
        ``{"groupname": NAME, "images": {query file name: [gallery file names]}}``."""
        if fmt not in FORMATS:
            raise InputError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
        if fmt == "challenge":
            if not group:
                raise InputError("the challenge format needs a group name (--group NAME)")
            return {"groupname": group, "images": self._by_file_name()}
        if not scores:
            return self.ranking()
        return {
            q: [
                {"image": self.gallery_names[j], "score": round(float(s), 6)}
                for j, s in zip(row, srow, strict=True)
            ]
            for q, row, srow in zip(self.query_names, self.indices, self.scores, strict=True)
        }

    def _by_file_name(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for q, row in zip(self.query_names, self.indices, strict=True):
            name = Path(q).name
            if name in out:
                raise InputError(f"challenge format: two queries share the file name {name!r}")
            out[name] = [Path(self.gallery_names[j]).name for j in row]
        return out

    def write_json(self, path: str | Path, **kwargs: Any) -> None:
        """Write :meth:`to_json` to ``path`` atomically (UTF-8, names kept as they are)."""
        text = json.dumps(self.to_json(**kwargs), indent=2, ensure_ascii=False).encode("utf-8")
        atomic_write(Path(path), lambda h: h.write(text))

    def summary(self) -> dict[str, Any]:
        """Counts, cache use, timings, skipped files and metrics: the run summary."""
        out: dict[str, Any] = {
            "model": self.model,
            "metric": self.metric,
            "queries": len(self.query_names),
            "gallery": len(self.gallery_names),
            **self.stats,
            "skipped": [
                {"set": which, "path": s.path, "reason": s.reason}
                for which, items in self.skipped.items()
                for s in items
            ],
        }
        if self.metrics is not None:
            out["metrics"] = self.metrics.as_dict()
        return out


def _as_image_set(source: str | Path | ImageSet, labels_csv: str | Path | None) -> ImageSet:
    if isinstance(source, ImageSet):
        return source
    return ImageSet.from_path(source, labels_csv=labels_csv)


def _as_extractor(model: str | Extractor, model_options: dict[str, Any] | None) -> Extractor:
    if isinstance(model, Extractor):
        return model
    return create_extractor(model, **(model_options or {}))


def _embed_set(extractor: Extractor, images: ImageSet, opts: ExtractOptions, label: str) -> Embeddings:
    result = embed(extractor, images, opts, label=label)
    if len(result.indices) == 0:
        raise NothingToProcessError(
            f"{label} {images.source}: none of the {len(images)} image(s) could be read"
        )
    return result


def search(
    query: str | Path | ImageSet,
    gallery: str | Path | ImageSet,
    *,
    model: str | Extractor = DEFAULT_MODEL,
    model_options: dict[str, Any] | None = None,
    k: int = 10,
    metric: str = "cosine",
    evaluate: bool = False,
    options: ExtractOptions | None = None,
    query_labels: str | Path | None = None,
    gallery_labels: str | Path | None = None,
) -> SearchRun:
    """Rank ``gallery`` for every image of ``query`` with ``model``; the CLI's ``search``.

    ``query``/``gallery`` are folders, list or CSV files, single images or ImageSets. With
    ``evaluate`` both must be labelled, and ``metrics`` is filled from full rankings.
    """
    opts = options or ExtractOptions()
    if opts.use_cache and opts.cache_dir is None:
        opts = replace(opts, cache_dir=default_cache_dir())
    q_set = _as_image_set(query, query_labels)
    g_set = _as_image_set(gallery, gallery_labels)
    if evaluate and not (q_set.labelled and g_set.labelled):
        raise InputError(
            "evaluation needs labels for queries and gallery: put images in class folders "
            "(query/<label>/x.jpg) or pass a path,label CSV (--query-labels / --gallery-labels)"
        )
    extractor = _as_extractor(model, model_options)
    t0 = time.perf_counter()
    q_emb = _embed_set(extractor, q_set, opts, "queries")
    g_emb = _embed_set(extractor, g_set, opts, "gallery")
    t1 = time.perf_counter()
    indices, scores = topk(q_emb.features, g_emb.features, k, metric)
    t2 = time.perf_counter()
    run = SearchRun(
        query_names=[q_set.names[i] for i in q_emb.indices],
        gallery_names=[g_set.names[i] for i in g_emb.indices],
        indices=indices,
        scores=scores,
        metric=metric,
        model=extractor.describe(),
        skipped={"query": q_emb.skipped, "gallery": g_emb.skipped},
        stats={
            "extracted": {"query": q_emb.n_extracted, "gallery": g_emb.n_extracted},
            "from_cache": {"query": q_emb.n_cached, "gallery": g_emb.n_cached},
            "extract_seconds": round(t1 - t0, 3),
            "search_seconds": round(t2 - t1, 4),
        },
    )
    if evaluate:
        run.metrics = evaluate_rankings(
            full_rankings(q_emb.features, g_emb.features, metric),
            [q_set.labels[i] for i in q_emb.indices],
            [g_set.labels[i] for i in g_emb.indices],
            run.query_names,
        )
    return run


def evaluate(query: str | Path | ImageSet, gallery: str | Path | ImageSet, **kwargs: Any) -> SearchRun:
    """``search`` with ``evaluate=True``: top-1/3/10 accuracy and mAP are in ``run.metrics``."""
    return search(query, gallery, evaluate=True, **kwargs)
