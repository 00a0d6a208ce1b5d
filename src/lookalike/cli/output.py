"""What the commands print and write besides their main output: summaries, metrics, JSON files."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ..errors import InputError
from ..extract import Skipped
from ..fileio import json_text, write_json
from ..metrics import RetrievalMetrics
from ..pipeline import SearchRun
from ._app import err, out, shown


def check_output_file(option: str, path: Path | None) -> None:
    """Refuse, before any work, an output file option that names a folder."""
    if path is not None and path.is_dir():
        raise InputError(f"{option} {path}: is a folder; give the name of a file to write")


def print_metrics(metrics: RetrievalMetrics, console: Console) -> None:
    """The top-k and mAP table, and the queries left out for want of a gallery image."""
    table = Table(title=f"{metrics.n_queries} queries")
    for k in metrics.top_k:
        table.add_column(f"top-{k}", justify="right")
    table.add_column("mAP", justify="right")
    table.add_row(*(f"{v:.3f}" for v in metrics.top_k.values()), f"{metrics.mean_ap:.3f}")
    console.print(table)
    if metrics.excluded:
        shown_names = ", ".join(shown(n) for n in metrics.excluded[:5]) + (" ..." if len(metrics.excluded) > 5 else "")
        console.print(f"left out {len(metrics.excluded)} query(s) whose label has no gallery image: {shown_names}")


def print_skipped(skipped: list[Skipped]) -> None:
    """One line per image left out of a run."""
    for s in skipped:
        err.print(f"skipped {shown(s.path)}: {shown(s.reason)}")


def print_summary(run: SearchRun, quiet: bool) -> None:
    """Skipped files (always), then counts, cache use and timings (unless quiet)."""
    skipped = run.summary()["skipped"]
    if skipped:
        err.print(f"skipped {len(skipped)} unreadable image(s):")
        for item in skipped:
            err.print(f"  {item['set']}: {shown(item['path'])}: {shown(item['reason'])}")
    if quiet:
        return
    ext, hit = run.stats["extracted"], run.stats["from_cache"]
    for which in ("query", "gallery"):
        note = "nothing new extracted" if ext[which] == 0 else f"{ext[which]} extracted"
        err.print(f"{which}: {ext[which] + hit[which]} images, {hit[which]} from cache, {note}")
    err.print(f"extraction {run.stats['extract_seconds']:.2f} s, search {run.stats['search_seconds']:.3f} s")


def write_metrics_json(path: Path, run: SearchRun) -> None:
    """Metrics with per-query ranks, the model, the refinement and what was skipped."""
    assert run.metrics is not None
    doc = run.metrics.as_dict(per_query=True)
    doc["model"], doc["refinement"] = run.model, run.refinement
    doc["skipped"] = run.summary()["skipped"]
    write_json(path, doc)


def print_results(doc: Any) -> None:
    """Results JSON on stdout (coloured on a terminal)."""
    text = json_text(doc)
    out.print_json(text) if sys.stdout.isatty() else print(text)
