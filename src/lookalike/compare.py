"""Several methods on one labelled split: a table (Markdown, CSV) and a bar chart of their figures.

Each method runs through ``lookalike.evaluate`` on the same query and gallery sets, so every figure
in the table is exactly what ``lookalike evaluate`` prints for that method alone.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InputError
from .extract import ExtractOptions
from .features import Extractor
from .fileio import atomic_write
from .images import ImageSet
from .index import is_index
from .methods import LocalMethod, method_label, resolve_method
from .metrics import TOP_KS
from .pipeline import Refinement, evaluate, vector_step_flags
from .plots import figure, png_bytes

FIGURES = tuple(f"top-{k}" for k in TOP_KS) + ("mAP",)
# shown when the metrics hold them (µAP over the short lists; precision and recall at a threshold)
OPTIONAL_FIGURES = ("µAP", "precision", "recall")
CSV_NAMES = {"µAP": "uAP"}  # the metrics JSON's ASCII key

COMPARE_MARKER = ".lookalike-compare"  # in every folder compare writes: it may rewrite those
COMPARISON_FILES = ("comparison.md", "comparison.csv", "comparison.png")
TITLE = "# Method comparison"  # the first line of comparison.md


@dataclass
class MethodResult:
    """One method's figures on the split: top-k accuracy, mAP, queries counted, time taken, and
    µAP and precision/recall at ``threshold`` when its metrics hold them."""

    method: str
    model: dict[str, Any]
    top_k: dict[int, float]
    mean_ap: float
    n_queries: int
    excluded: int
    seconds: float
    micro_ap: float | None = None
    threshold: float | None = None
    precision: float | None = None
    recall: float | None = None

    def figures(self) -> dict[str, float]:
        """``{"top-1": ..., "top-3": ..., "top-10": ..., "mAP": ...}``, then ``"µAP"``,
        ``"precision"`` and ``"recall"`` for those the metrics hold."""
        out = {f"top-{k}": v for k, v in self.top_k.items()}
        out["mAP"] = self.mean_ap
        extra = {"µAP": self.micro_ap, "precision": self.precision, "recall": self.recall}
        out.update({name: v for name, v in extra.items() if v is not None})
        return out


@dataclass
class Comparison:
    """The comparison table, one row per method in the order given, and the files written."""

    query: str
    gallery: str
    metric: str
    rows: list[MethodResult]
    files: dict[str, Path] = field(default_factory=dict)

    def figure_names(self) -> list[str]:
        """The columns: top-1/3/10 and mAP, then µAP, precision, recall where any row has them."""
        present = {name for row in self.rows for name in row.figures()}
        return [*FIGURES, *(name for name in OPTIONAL_FIGURES if name in present)]

    def _cells(self, row: MethodResult, text: Any) -> list[str]:
        values = row.figures()
        return [text(values[name]) if name in values else "" for name in self.figure_names()]

    def to_markdown(self) -> str:
        """A Markdown page: the split, then one table row per method (figures to 4 decimals)."""
        head = ["method", "model", *self.figure_names(), "queries", "seconds"]
        about = "top-k: share of queries with a correct image among the first k; mAP over full rankings"
        if "µAP" in head:
            about += "; µAP over all pairs of the short lists ranked together by score (DISC21)"
        thresholds = sorted({row.threshold for row in self.rows if row.threshold is not None})
        if thresholds:
            about += f"; precision and recall of the pairs at score threshold {', '.join(f'{t:g}' for t in thresholds)}"
        lines = [
            TITLE,
            "",
            f"Queries `{self.query}`, gallery `{self.gallery}`, {self.metric} scores; {about}.",
            "",
            "| " + " | ".join(head) + " |",
            "| --- | --- | " + " | ".join("---:" for _ in head[2:]) + " |",
        ]
        for row in self.rows:
            cells = [_md(row.method), _md(row.model.get("name", ""))]
            cells += self._cells(row, lambda v: f"{v:.4f}")
            cells += [str(row.n_queries), f"{row.seconds:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
        excluded = {row.excluded for row in self.rows}
        if excluded != {0}:
            lines += [
                "",
                f"Queries whose label has no gallery image are left out ({', '.join(map(str, excluded))}).",
            ]
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        """CSV with full-precision figures, one row per method (µAP's column is ``uAP``)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        names = [CSV_NAMES.get(name, name) for name in self.figure_names()]
        writer.writerow(["method", "model", *names, "queries", "excluded", "seconds"])
        for row in self.rows:
            writer.writerow(
                [
                    row.method,
                    row.model.get("name", ""),
                    *self._cells(row, repr),
                    row.n_queries,
                    row.excluded,
                    round(row.seconds, 3),
                ]
            )
        return buffer.getvalue()


def _md(text: str) -> str:
    return str(text).replace("|", "\\|")


def _image_set(source: str | Path | ImageSet, labels_csv: str | Path | None, which: str) -> ImageSet:
    if isinstance(source, ImageSet):
        return source
    if is_index(source):
        raise InputError(
            f"{source} is a saved index: its model is fixed, so methods cannot be compared on it; "
            f"give the {which} images instead"
        )
    return ImageSet.from_path(source, labels_csv=labels_csv)


def compare(
    query: str | Path | ImageSet,
    gallery: str | Path | ImageSet,
    methods: Sequence[str | Extractor | LocalMethod],
    out_dir: str | Path | None = None,
    *,
    options: ExtractOptions | None = None,
    metric: str | None = None,
    query_labels: str | Path | None = None,
    gallery_labels: str | Path | None = None,
    refinement: Refinement | None = None,
    chart: bool = True,
) -> Comparison:
    """Evaluate each method (a model name, a checkpoint ``.pt`` path or an Extractor) on the same
    labelled split and, when ``out_dir`` is given, write ``comparison.md``, ``comparison.csv`` and
    ``comparison.png`` (top-1/3/10, mAP and, when known, µAP bars) there. Every model is built before any extraction
    starts, so an unknown name or missing checkpoint fails at once."""
    labels = [method_label(m) for m in methods]
    if not labels:
        raise InputError("compare needs at least one method (-m NAME or -m CHECKPOINT.pt)")
    duplicates = sorted({lab for lab in labels if labels.count(lab) > 1})
    if duplicates:
        raise InputError(f"methods given twice: {', '.join(duplicates)}")
    q_set = _image_set(query, query_labels, "query")
    g_set = _image_set(gallery, gallery_labels, "gallery")
    if out_dir is not None:
        folders = [s.root for s in (q_set, g_set) if s.source and Path(s.source).is_dir()]  # not a list
        check_comparison_folder(out_dir, folders)
    resolved = [resolve_method(m) for m in methods]  # global, local or checkpoint: all checked up front
    steps = vector_step_flags(refinement, metric)
    local_names = [lab for lab, m in zip(labels, resolved, strict=True) if isinstance(m, LocalMethod)]
    if steps and local_names:  # they rank by verified matches: vector steps would be dropped unseen
        verb = "applies" if len(steps) == 1 else "apply"
        rank = "ranks" if len(local_names) == 1 else "rank"
        raise InputError(
            f"{', '.join(steps)} {verb} to vector methods, and {', '.join(local_names)} {rank} by "
            "RANSAC-verified matches: compare those methods in a run of their own"
        )
    rows = []
    for label, method in zip(labels, resolved, strict=True):
        local = isinstance(method, LocalMethod)  # ranks by verified matches: no metric, no refinement
        run = evaluate(
            q_set,
            g_set,
            model=method,
            options=options,
            metric=None if local else metric,
            refinement=None if local else refinement,
        )
        assert run.metrics is not None
        seconds = float(run.stats.get("extract_seconds", 0.0)) + float(run.stats.get("search_seconds", 0.0))
        figures = run.metrics.as_dict()  # µAP ("uAP") and precision/recall at a threshold when present
        rows.append(
            MethodResult(
                method=label,
                model=run.model,
                top_k=dict(run.metrics.top_k),
                mean_ap=run.metrics.mean_ap,
                n_queries=run.metrics.n_queries,
                excluded=len(run.metrics.excluded),
                seconds=seconds,
                micro_ap=figures.get("uAP"),
                threshold=figures.get("threshold"),
                precision=figures.get("precision"),
                recall=figures.get("recall"),
            )
        )
    table = Comparison(str(q_set.source), str(g_set.source), metric or "cosine", rows)
    if out_dir is not None:
        write_comparison(table, out_dir, chart=chart)
    return table


def check_comparison_folder(out_dir: str | Path, searched: list[Path] | None = None) -> None:
    """Refuse, before any work, a file, a folder inside a ``searched`` one (the chart would be an
    image of the next search there) and one holding comparison files lookalike did not write
    (they would be overwritten): a folder compare wrote has its marker file."""
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"-o {out_dir}: is a file; compare writes a folder (table and chart)")
    for root in searched or []:
        if folder.resolve().is_relative_to(Path(root).resolve()):
            raise InputError(f"-o {out_dir}: lies inside {root}, a searched folder; write the comparison elsewhere")
    if folder.is_dir() and not _written_by_compare(folder):
        taken = [name for name in COMPARISON_FILES if (folder / name).exists()]
        if taken:
            raise InputError(
                f"-o {out_dir}: holds {', '.join(taken)}, not written by lookalike compare; "
                "choose a new folder"
            )


def _written_by_compare(folder: Path) -> bool:
    """Whether compare wrote ``folder``: its marker, or (before the marker) the table's own title."""
    if (folder / COMPARE_MARKER).is_file():
        return True
    try:
        with (folder / "comparison.md").open(encoding="utf-8") as handle:
            return handle.readline().rstrip("\n") == TITLE
    except (OSError, UnicodeDecodeError):
        return False


def write_comparison(table: Comparison, out_dir: str | Path, *, chart: bool = True) -> dict[str, Path]:
    """Write the table as ``comparison.md`` and ``comparison.csv`` and, with ``chart``, the bar
    chart ``comparison.png`` into ``out_dir``; returns the paths (also kept in ``table.files``).
    Only rewrites comparison files of a folder it wrote before (:func:`check_comparison_folder`)."""
    folder = Path(out_dir)
    check_comparison_folder(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / COMPARE_MARKER).touch()
    files = {"markdown": folder / "comparison.md", "csv": folder / "comparison.csv"}
    md, text = table.to_markdown().encode("utf-8"), table.to_csv().encode("utf-8")
    atomic_write(files["markdown"], lambda h: h.write(md))
    atomic_write(files["csv"], lambda h: h.write(text))
    if chart:
        files["chart"] = folder / "comparison.png"
        png = bar_chart(table)
        atomic_write(files["chart"], lambda h: h.write(png))
    table.files = files
    return files


def bar_chart(table: Comparison) -> bytes:
    """PNG bytes of grouped bars: one group per figure (top-1/3/10, mAP, and µAP, precision,
    recall where known), one bar per method."""
    n = len(table.rows)
    if n == 0:
        raise InputError("nothing to chart: the comparison has no methods")
    names = table.figure_names()
    width = 0.8 / n
    fig = figure(figsize=(min(20.0, max(6.5, 3.0 + 0.5 * n * len(names))), 4.2), dpi=120)
    ax = fig.add_subplot()
    palette = [f"C{i}" for i in range(10)]  # matplotlib's default colour cycle
    for i, row in enumerate(table.rows):
        figures = row.figures()
        values = [figures.get(name, 0.0) for name in names]
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(names))]
        bars = ax.bar(xs, values, width * 0.92, label=row.method, color=palette[i % len(palette)])
        texts = [f"{figures[name]:.2f}" if name in figures else "" for name in names]
        ax.bar_label(bars, labels=texts, fontsize=7, padding=1)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("score")
    ax.set_title(f"{Path(table.query).name} vs {Path(table.gallery).name}: {table.rows[0].n_queries} queries")
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return png_bytes(fig)
