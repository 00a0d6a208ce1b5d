"""A self-contained HTML report of a search: each query beside its ranked results.

Thumbnails are small JPEGs embedded once each as base64 (an image that appears in many result
lists is stored once and referenced by number); a little inline script renders one page of queries
at a time, so a report of thousands of queries opens instantly and works offline.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from .errors import ImageError, InputError
from .fileio import atomic_write, json_text, printable
from .images import ImageSet, load_image
from .index import GalleryIndex, is_index
from .metrics import TOP_KS, RetrievalMetrics
from .pipeline import SearchRun
from .steps import default_shrinkage

DEFAULT_THUMB_SIZE = 96
DEFAULT_PAGE_SIZE = 25
Labels = tuple[Mapping[str, str], Mapping[str, str]]
Results = Mapping[str, Sequence[Any]]


def thumbnail_jpeg(path: str | Path, size: int = DEFAULT_THUMB_SIZE, quality: int = 80) -> bytes:
    """A JPEG of the image shrunk to fit ``size`` x ``size``, decoded as the pipeline decodes it
    (EXIF orientation, any mode to RGB); raises ImageError when the file cannot be read."""
    if size < 8:
        raise InputError(f"thumbnail size must be at least 8 pixels, not {size}")
    img = load_image(path, draft_size=2 * size)
    img.thumbnail((size, size), reducing_gap=2.0)
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


@dataclass
class ImageSource:
    """The images of one side of a search, found by the names a result uses, with labels."""

    root: Path
    paths: dict[str, Path]
    labels: dict[str, str] | None
    _by_file_name: dict[str, Path | None] | None = None
    _name_by_path: dict[Path, str] | None = None

    @classmethod
    def open(
        cls, source: str | Path | ImageSet | GalleryIndex, labels_csv: str | Path | None = None
    ) -> ImageSource:
        """From an ImageSet, a saved index (its root and labels), or anything ``ImageSet.from_path``
        reads (folder, list, CSV, image); ``labels_csv`` adds path,label rows as in ``search``."""
        if not isinstance(source, ImageSet | GalleryIndex) and is_index(source):
            source = GalleryIndex.open(source, "cpu")
        if isinstance(source, GalleryIndex):
            names, labels = source.names, source.labels
            return cls(source.root, {n: source.root / n for n in names}, _label_map(names, labels))
        images = source if isinstance(source, ImageSet) else ImageSet.from_path(source, labels_csv=labels_csv)
        return cls(
            images.root,
            dict(zip(images.names, images.paths, strict=True)),
            _label_map(images.names, images.labels),
        )

    def path_of(self, name: str) -> Path | None:
        """The file a result name refers to: the set's own name, a path under the root, or a
        unique file name (the challenge format keeps only file names); None when not found."""
        if name in self.paths:
            return self.paths[name]
        candidate = self.root / name
        if candidate.is_file():
            return candidate
        if self._by_file_name is None:
            self._by_file_name = {}
            for path in self.paths.values():
                self._by_file_name[path.name] = None if path.name in self._by_file_name else path
        return self._by_file_name.get(Path(name).name)

    def label_of(self, name: str) -> str | None:
        """The label of a result name (also found by unique file name), or None."""
        if self.labels is None:
            return None
        if name in self.labels:
            return self.labels[name]
        path = self.path_of(name)
        if path is None:
            return None
        if self._name_by_path is None:
            self._name_by_path = {p: n for n, p in self.paths.items()}
        known = self._name_by_path.get(path)
        return None if known is None else self.labels.get(known)


def _label_map(names: Sequence[str], labels: Sequence[str] | None) -> dict[str, str] | None:
    return None if labels is None else dict(zip(names, labels, strict=True))


def _rows_from_run(run: SearchRun) -> list[tuple[str, list[tuple[str, float | None]]]]:
    rows = []
    for q, idx, sc in zip(run.query_names, run.indices, run.scores, strict=True):
        rows.append((q, [(run.gallery_names[j], float(s)) for j, s in zip(idx, sc, strict=True) if j >= 0]))
    return rows


def _rows_from_results(results: Results) -> list[tuple[str, list[tuple[str, float | None]]]]:
    """Rows from ``{query: [gallery, ...]}`` or ``{query: [{"image": ..., "score": ...}, ...]}``."""
    if not isinstance(results, Mapping):
        raise InputError("results must map each query to its list of gallery images")
    rows = []
    for q, items in results.items():
        if not isinstance(items, list | tuple):
            raise InputError(
                f"results for query {q!r}: expected a list of gallery images, got {type(items).__name__}"
            )
        row: list[tuple[str, float | None]] = []
        for item in items:
            if isinstance(item, str):
                row.append((item, None))
            elif isinstance(item, Mapping) and isinstance(item.get("image"), str):
                score = item.get("score")
                if score is not None and not isinstance(score, int | float):
                    raise InputError(f"results for query {q!r}: score {score!r} is not a number")
                row.append((item["image"], None if score is None else float(score)))
            else:
                raise InputError(
                    f"results for query {q!r}: each entry must be a gallery path or "
                    f'{{"image": path, "score": number}}, not {item!r}'
                )
        rows.append((str(q), row))
    return rows


def load_results(path: str | Path) -> dict[str, list[Any]]:
    """Read a results JSON file: the default format (with or without scores) or the challenge
    format ``{"groupname": ..., "images": {...}}``; raises InputError when it is neither."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: not a readable JSON file ({exc})") from None
    if isinstance(doc, dict) and isinstance(doc.get("images"), dict) and "groupname" in doc:
        doc = doc["images"]
    if not isinstance(doc, dict) or not doc:
        raise InputError(f"{path}: expected a JSON object mapping each query to its gallery results")
    return doc


@dataclass
class _Thumbs:
    """Thumbnails numbered in order of first use: each file is encoded once however often it appears."""

    size: int
    ids: dict[str, int]
    paths: list[Path | None]

    def id_of(self, path: Path | None, name: str) -> int:
        key = str(path.resolve()) if path is not None else f"missing:{name}"
        if key not in self.ids:
            self.ids[key] = len(self.paths)
            self.paths.append(path)
        return self.ids[key]

    def encode(self, progress: bool) -> list[str]:
        def one(path: Path | None) -> str:
            if path is None:
                return ""
            try:
                return base64.b64encode(thumbnail_jpeg(path, self.size)).decode("ascii")
            except ImageError:
                return ""

        quiet = not progress or not sys.stderr.isatty()
        workers = max(1, min(4, os.cpu_count() or 1))
        with ThreadPoolExecutor(workers) as pool:
            mapped = pool.map(one, self.paths)
            return list(tqdm(mapped, total=len(self.paths), desc="thumbnails", unit="img", disable=quiet))


def _metric_note(metric: str | None) -> str:
    if metric is None:
        return ""
    if metric == "cosine":
        return "scores: cosine similarity, higher is better"
    if metric == "euclidean":
        return "scores: euclidean distance, lower is better"
    return f"scores: {metric}"


def _figures_from_lists(
    queries: list[dict[str, Any]], gallery_counts: dict[str, int] | None
) -> dict[str, Any] | None:
    """Top-k and mAP from the listed results alone (when no full-ranking metrics are given)."""
    scored = [q for q in queries if q["status"] in ("ok", "fail")]
    if not scored:
        return None
    shortest = min(len(q["results"]) for q in scored)
    figures: list[list[Any]] = []
    for k in TOP_KS:
        if k <= shortest:
            hits = [q["rank"] is not None and q["rank"] <= k for q in scored]
            figures.append([f"top-{k}", float(np.mean(hits))])
    note = "from the listed results only"
    if gallery_counts is not None:
        aps = []
        for q in scored:
            hits = np.array([r[3] == 1 for r in q["results"]], dtype=bool)
            ranks = np.flatnonzero(hits) + 1
            n_rel = gallery_counts.get(q["label"], 0)
            aps.append(float(np.sum(np.arange(1, len(ranks) + 1) / ranks) / n_rel) if n_rel else 0.0)
        figures.append(["mAP", float(np.mean(aps))])
        note += "; mAP counts relevant images missing from the lists as not found (a lower bound)"
    return {"figures": figures, "queries": len(scored), "note": note}


def _figures_from_metrics(metrics: RetrievalMetrics) -> dict[str, Any]:
    """The header cards: top-k and mAP, then µAP and precision/recall at a threshold when the
    metrics hold them (read from their JSON form, where µAP is ``"uAP"``)."""
    figures: list[list[Any]] = [[f"top-{k}", v] for k, v in metrics.top_k.items()]
    figures.append(["mAP", metrics.mean_ap])
    doc = metrics.as_dict()
    note = "over full gallery rankings"
    if doc.get("uAP") is not None:
        figures.append(["µAP", doc["uAP"]])
        note += f"; µAP over the {doc.get('pairs')} listed pairs ranked together, {doc.get('positives')} positives"
    if doc.get("threshold") is not None:
        figures.append([f"precision @ {doc['threshold']:g}", doc["precision"]])
        figures.append([f"recall @ {doc['threshold']:g}", doc["recall"]])
    return {"figures": figures, "queries": metrics.n_queries, "note": note}


def write_report(
    run_or_results: SearchRun | Results,
    query_root: str | Path | ImageSet,
    gallery_root: str | Path | ImageSet | GalleryIndex,
    out_html: str | Path,
    *,
    labels: Labels | Literal["auto"] | None = "auto",
    query_labels: str | Path | None = None,
    gallery_labels: str | Path | None = None,
    metrics: RetrievalMetrics | None = None,
    failures_first: bool = False,
    thumb_size: int = DEFAULT_THUMB_SIZE,
    k: int | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
    title: str | None = None,
    progress: bool = True,
) -> Path:
    """Write one self-contained HTML page showing every query beside its results, best first.

    ``run_or_results`` is a SearchRun or a ``{query: [gallery, ...]}`` mapping (optionally with
    scores). ``query_root``/``gallery_root`` are the sources searched (folder, list, CSV, image,
    ImageSet, or an index for the gallery); they locate the images and, with ``labels="auto"``,
    give their labels (class folders, CSV, ``query_labels``/``gallery_labels``). Pass
    ``labels=(query_map, gallery_map)`` to set them, or ``None`` for none. With labels, each result
    is marked correct or wrong and metrics head the page (``metrics`` or the run's own, else
    figures from the lists); ``failures_first`` opens the page with the failed queries on top.
    ``k`` shows only each query's first k results.
    """
    if k is not None and k < 1:
        raise InputError(f"k must be positive, not {k}")
    if page_size < 1:
        raise InputError(f"page size must be positive, not {page_size}")
    if isinstance(run_or_results, SearchRun):
        rows, metric = _rows_from_run(run_or_results), run_or_results.metric
        metrics = metrics or run_or_results.metrics
        model = _model_text(run_or_results.model, run_or_results.refinement)
    else:
        rows, metric, model = _rows_from_results(run_or_results), None, None
    if not rows:
        raise InputError("nothing to report: the results hold no queries")
    q_side = ImageSource.open(query_root, query_labels)
    g_side = ImageSource.open(gallery_root, gallery_labels)
    q_label, g_label, gallery_counts = _label_functions(labels, q_side, g_side)

    thumbs = _Thumbs(thumb_size, {}, [])
    queries = []
    for q, row in rows:
        row = row[:k] if k is not None else row
        ql = q_label(q) if q_label else None
        entry: dict[str, Any] = {"name": q, "img": thumbs.id_of(q_side.path_of(q), q), "label": ql}
        results = []
        for name, score in row:
            gl = g_label(name) if g_label else None
            correct = None if ql is None or gl is None else int(ql == gl)
            results.append([name, thumbs.id_of(g_side.path_of(name), name), score, correct])
        entry["results"] = results
        entry["rank"], entry["status"] = _status(q, ql, results, metrics, gallery_counts)
        queries.append(entry)

    if metrics is not None:
        header = _figures_from_metrics(metrics)
    else:
        header = _figures_from_lists(queries, gallery_counts) if q_label is not None else None
    if header is not None:
        header["failures"] = sum(q["status"] == "fail" for q in queries)
        header["excluded"] = sum(q["status"] == "excluded" for q in queries)
    data = {
        "title": title or "lookalike report",
        "subtitle": _subtitle(len(queries), model, metric),
        "metrics": header,
        "labelled": q_label is not None,
        "failures_first": bool(failures_first),
        "page_size": int(page_size),
        "thumb": int(thumb_size),
        "thumbs": thumbs.encode(progress),
        "queries": queries,
    }
    page = _PAGE.replace("__TITLE__", html.escape(printable(data["title"]))).replace("__DATA__", _script_json(data))
    out = Path(out_html)
    if out.is_dir():
        raise InputError(f"{out}: is a folder; give the report's file name (e.g. report.html)")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda h: h.write(page.encode("utf-8")))
    return out


def _label_functions(
    labels: Labels | Literal["auto"] | None, q_side: ImageSource, g_side: ImageSource
) -> tuple[Callable[[str], str | None] | None, Callable[[str], str | None] | None, dict[str, int] | None]:
    """(query label of a name, gallery label of a name, gallery images per label), all None
    when the report has no labels."""
    if labels is None:
        return None, None, None
    if labels == "auto":
        if q_side.labels is None or g_side.labels is None:
            return None, None, None
        return q_side.label_of, g_side.label_of, dict(Counter(g_side.labels.values()))
    if not (isinstance(labels, tuple | list) and len(labels) == 2):
        raise InputError('labels must be "auto", None, or a pair of mappings (query labels, gallery labels)')
    q_map, g_map = labels
    return q_map.get, g_map.get, dict(Counter(g_map.values()))


def _status(
    query: str,
    label: str | None,
    results: list[list[Any]],
    metrics: RetrievalMetrics | None,
    gallery_counts: dict[str, int] | None,
) -> tuple[int | None, str | None]:
    """(first correct rank, status): ok (top-1 right), fail, excluded (no gallery image has the
    label), or None without labels. The rank comes from full rankings when metrics hold it."""
    if label is None:
        return None, None
    if metrics is not None and query in metrics.excluded:
        return None, "excluded"
    if gallery_counts is not None and gallery_counts.get(label, 0) == 0:
        return None, "excluded"
    rank = metrics.first_correct_rank.get(query) if metrics is not None else None
    if rank is None:
        rank = next((i + 1 for i, r in enumerate(results) if r[3] == 1), None)
    return rank, "ok" if rank == 1 else "fail"


def _model_text(model: dict[str, Any], refinement: dict[str, Any]) -> str | None:
    """The model's name with the options and refinements that shaped the ranking, in the order
    they apply, e.g. ``efficientnet-lite0 (pool gem, multiscale, index whiten 128-d, qe 3)``."""
    name = model.get("name")
    if not name:
        return None
    options = model.get("options") or {}
    parts = []
    if options.get("pool") not in (None, "avg"):
        parts.append(f"pool {options['pool']}")
    if options.get("multiscale"):
        parts.append("multiscale")
    steps = {f"index {k}": v for k, v in (refinement.get("index") or {}).items()}  # applied first
    steps.update({k: v for k, v in refinement.items() if k != "index"})
    for key, value in steps.items():
        label = key.replace("_", " ")
        if key.endswith("whiten"):
            dim, shrinkage = (value or {}).get("dim"), (value or {}).get("shrinkage")
            views = (value or {}).get("views")
            text = f"{label} {dim}-d" if dim else label
            text += f" learned from {views} views" if views else ""
            parts.append(text if shrinkage in (None, default_shrinkage(views or 0)) else f"{text} shrinkage {shrinkage:g}")
        elif key.endswith("rerank"):
            parts.append(f"rerank {value.get('method')} top {value.get('top')}")
        elif key.endswith("regions") and isinstance(value, dict):
            parts.append(f"regions {value.get('levels')}" + (" and query regions" if value.get("query") else ""))
        elif isinstance(value, dict):
            parts.append(f"{label} {value.get('k')}")
        elif value is True:  # query scales
            parts.append(label)
        elif value:  # query resize
            parts.append(f"{label} {value}")
    return f"{name} ({', '.join(parts)})" if parts else name


def _subtitle(n: int, model: str | None, metric: str | None) -> str:
    parts = [f"{n} quer{'y' if n == 1 else 'ies'}"]
    if model:
        parts.append(f"model {model}")
    note = _metric_note(metric)
    if note:
        parts.append(note)
    return " · ".join(parts)


def _script_json(data: dict[str, Any]) -> str:
    """JSON safe inside a <script> element: no '</' or '<!--' can end or confuse it."""
    text = json_text(data, indent=None, compact=True)  # names that are not UTF-8: \udcXX escapes
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def report_from_json(
    results_json: str | Path,
    query_root: str | Path | ImageSet,
    gallery_root: str | Path | ImageSet | GalleryIndex,
    out_html: str | Path,
    **kwargs: Any,
) -> Path:
    """``write_report`` for a results file written by ``lookalike search`` (any of its formats);
    labels come from class folders or CSV sources when both sides have them."""
    return write_report(load_results(results_json), query_root, gallery_root, out_html, **kwargs)


_PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
:root { --ok: #1b8a3a; --bad: #c62828; --muted: #666; --line: #e3e3e3; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222; background: #fafafa; }
header { background: #1f2933; color: #fff; padding: 14px 20px; }
header h1 { margin: 0; font-size: 20px; font-weight: 600; }
header .sub { color: #cbd2d9; margin-top: 2px; }
#metrics { display: flex; flex-wrap: wrap; gap: 10px; margin-top: 10px; }
.card { background: #323f4b; border-radius: 6px; padding: 6px 12px; min-width: 84px; }
.card b { display: block; font-size: 20px; }
.card span { color: #cbd2d9; font-size: 12px; }
.note { color: #9aa5b1; font-size: 12px; margin-top: 6px; }
.controls { display: flex; flex-wrap: wrap; align-items: center; gap: 14px; padding: 10px 20px; background: #fff; border-bottom: 1px solid var(--line); position: sticky; top: 0; z-index: 2; }
.controls input[type=search] { padding: 4px 8px; width: 220px; }
.controls button { padding: 3px 10px; }
#rows { padding: 8px 14px 30px; }
.row { display: flex; gap: 12px; align-items: flex-start; padding: 10px 0; border-bottom: 1px solid var(--line); }
.query { flex: 0 0 auto; width: calc(var(--t) + 36px); }
.query .name { font-weight: 600; white-space: normal; word-break: break-all; }
.results { display: flex; flex-wrap: nowrap; gap: 6px; flex: 1 1 auto; min-width: 0; overflow-x: auto; padding-bottom: 4px; }
.cell { width: calc(var(--t) + 8px); font-size: 11px; color: var(--muted); flex: 0 0 auto; }
.frame { position: relative; width: calc(var(--t) + 8px); height: calc(var(--t) + 8px); border: 3px solid #d0d0d0; border-radius: 4px; background: #eee; display: flex; align-items: center; justify-content: center; overflow: hidden; }
.query .frame { border-color: #3e4c59; }
.frame img { max-width: 100%; max-height: 100%; display: block; }
.frame .missing { font-size: 11px; color: #999; }
.cell.ok .frame { border-color: var(--ok); }
.cell.bad .frame { border-color: #e8a0a0; }
.badge { position: absolute; top: 0; left: 0; font-size: 11px; padding: 0 4px; background: rgba(0,0,0,.65); color: #fff; border-bottom-right-radius: 4px; }
.cell.ok .badge { background: var(--ok); }
.cell.bad .badge { background: var(--bad); }
.nm { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.sc { color: #222; }
.status { display: inline-block; font-size: 11px; padding: 0 6px; border-radius: 8px; color: #fff; margin-top: 4px; }
.status.ok { background: var(--ok); } .status.fail { background: var(--bad); } .status.excluded { background: #888; }
.empty { padding: 30px; color: var(--muted); }
</style>
</head>
<body>
<header>
  <h1 id="title"></h1>
  <div class="sub" id="subtitle"></div>
  <div id="metrics"></div>
  <div class="note" id="note"></div>
</header>
<div class="controls">
  <label id="order-box"><input type="checkbox" id="failures-first"> failures first</label>
  <label id="only-box"><input type="checkbox" id="failures-only"> failures only</label>
  <input type="search" id="filter" placeholder="filter queries by name">
  <span><button id="prev">&larr; prev</button> <span id="page"></span> <button id="next">next &rarr;</button></span>
  <span id="shown"></span>
</div>
<div id="rows"></div>
<noscript><p class="empty">This report draws its pages with JavaScript; please enable it.</p></noscript>
<script type="application/json" id="report-data">__DATA__</script>
<script>
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("report-data").textContent);
  var urls = [];
  function url(id) {  // each thumbnail becomes one data URL, shared by every place it appears
    if (urls[id] === undefined) urls[id] = D.thumbs[id] ? "data:image/jpeg;base64," + D.thumbs[id] : "";
    return urls[id];
  }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  }
  function frame(id, badge, tip) {
    var f = el("div", "frame");
    var u = url(id);
    if (u) { var img = el("img"); img.alt = tip; img.src = u; f.appendChild(img); }
    else f.appendChild(el("span", "missing", "not found"));
    if (badge) f.appendChild(el("span", "badge", badge));
    f.title = tip;
    return f;
  }
  function fmt(x) { return x === null || x === undefined ? "" : (Math.abs(x) >= 1000 ? x.toFixed(0) : x.toFixed(4)); }
  document.documentElement.style.setProperty("--t", D.thumb + "px");
  document.getElementById("title").textContent = D.title;
  document.getElementById("subtitle").textContent = D.subtitle;
  if (D.metrics) {
    var box = document.getElementById("metrics");
    D.metrics.figures.forEach(function (f) {
      var c = el("div", "card"); c.appendChild(el("b", null, f[1].toFixed(3))); c.appendChild(el("span", null, f[0]));
      c.dataset.metric = f[0]; box.appendChild(c);
    });
    [["queries", D.metrics.queries], ["failures", D.metrics.failures], ["no match in gallery", D.metrics.excluded]].forEach(function (f) {
      var c = el("div", "card"); c.appendChild(el("b", null, String(f[1]))); c.appendChild(el("span", null, f[0])); box.appendChild(c);
    });
    document.getElementById("note").textContent = D.metrics.note;
  }
  var ff = document.getElementById("failures-first"), only = document.getElementById("failures-only");
  var filter = document.getElementById("filter");
  ff.checked = D.failures_first;
  if (!D.labelled) { document.getElementById("order-box").style.display = "none"; document.getElementById("only-box").style.display = "none"; }
  var page = 0, order = [];
  function badness(q) { return q.status === "fail" ? (q.rank === null ? 1e9 : q.rank) : -1; }
  function recompute() {
    var idx = [], text = filter.value.toLowerCase();
    for (var i = 0; i < D.queries.length; i++) {
      var q = D.queries[i];
      if (only.checked && q.status !== "fail") continue;
      if (text && q.name.toLowerCase().indexOf(text) < 0) continue;
      idx.push(i);
    }
    if (ff.checked) idx.sort(function (a, b) { return (badness(D.queries[b]) - badness(D.queries[a])) || (a - b); });
    order = idx; page = 0; render();
  }
  function row(q) {
    var r = el("div", "row"); r.dataset.query = q.name;
    var qc = el("div", "query");
    qc.appendChild(frame(q.img, null, q.name));
    qc.appendChild(el("div", "nm name", q.name)).title = q.name;
    if (q.label !== null) qc.appendChild(el("div", "nm", "label: " + q.label));
    if (q.status) {
      var text = q.status === "ok" ? "top-1 correct" : q.status === "excluded" ? "no match in gallery" : (q.rank === null ? "no correct result listed" : "first correct: #" + q.rank);
      qc.appendChild(el("span", "status " + q.status, text));
    }
    r.appendChild(qc);
    var rs = el("div", "results");
    q.results.forEach(function (res, n) {
      var cls = res[3] === 1 ? "cell ok" : res[3] === 0 ? "cell bad" : "cell";
      var c = el("div", cls); c.dataset.path = res[0];
      var mark = res[3] === 1 ? " \u2713" : res[3] === 0 ? " \u2717" : "";
      c.appendChild(frame(res[1], "#" + (n + 1) + mark, res[0] + (res[2] !== null ? "  score " + fmt(res[2]) : "")));
      if (res[2] !== null) c.appendChild(el("div", "sc", fmt(res[2])));
      c.appendChild(el("div", "nm", res[0])).title = res[0];
      rs.appendChild(c);
    });
    r.appendChild(rs);
    return r;
  }
  function render() {
    var pages = Math.max(1, Math.ceil(order.length / D.page_size));
    page = Math.min(Math.max(page, 0), pages - 1);
    var box = document.getElementById("rows"), frag = document.createDocumentFragment();
    var start = page * D.page_size, stop = Math.min(order.length, start + D.page_size);
    for (var i = start; i < stop; i++) frag.appendChild(row(D.queries[order[i]]));
    if (!order.length) frag.appendChild(el("div", "empty", "No query matches."));
    box.replaceChildren(frag);
    document.getElementById("page").textContent = "page " + (page + 1) + " of " + pages;
    document.getElementById("shown").textContent = order.length ? ("queries " + (start + 1) + "\u2013" + stop + " of " + order.length) : "";
    document.getElementById("prev").disabled = page === 0;
    document.getElementById("next").disabled = page >= pages - 1;
    document.body.dataset.page = String(page + 1);
  }
  document.getElementById("prev").onclick = function () { page--; render(); window.scrollTo(0, 0); };
  document.getElementById("next").onclick = function () { page++; render(); window.scrollTo(0, 0); };
  ff.onchange = recompute; only.onchange = recompute; filter.oninput = recompute;
  recompute();
})();
</script>
</body>
</html>
"""
