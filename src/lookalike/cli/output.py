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
from ..images import is_image_file
from ..index import is_index
from ..metrics import RetrievalMetrics
from ..pipeline import SearchRun
from ._app import err, out, shown


def check_outputs(outputs: dict[str, Path | None], inputs: list[Path | None]) -> None:
    """Refuse, before any work, outputs that cannot or must not be written: a folder, an input file
    (query or gallery list, label CSV), an existing image, anything inside an index folder, or one
    file named by two options."""
    seen: dict[Path, str] = {}
    given = [p.resolve() for p in inputs if p is not None]
    indexes = [p for p in given if is_index(p)]
    for option, path in outputs.items():
        if path is None:
            continue
        if path.is_dir():
            raise InputError(f"{option} {path}: is a folder; give the name of a file to write")
        target = path.resolve()
        if target in given:
            raise InputError(f"{option} {path}: is an input of this run; choose another file name")
        if path.exists() and is_image_file(path):
            raise InputError(f"{option} {path}: is an image; lookalike would overwrite it: choose another name")
        if any(target.is_relative_to(folder) for folder in indexes):
            raise InputError(f"{option} {path}: lies inside the index being searched; write it elsewhere")
        if target in seen:
            raise InputError(f"{option} and {seen[target]} name the same file {path}")
        seen[target] = option


def print_metrics(metrics: RetrievalMetrics, console: Console) -> None:
    """The top-k, mAP and µAP table (precision and recall at the threshold when one was given),
    and the queries left out for want of a gallery image."""
    table = Table(title=f"{metrics.n_queries} queries")
    for k in metrics.top_k:
        table.add_column(f"top-{k}", justify="right")
    table.add_column("mAP", justify="right")
    cells = [*(f"{v:.3f}" for v in metrics.top_k.values()), f"{metrics.mean_ap:.3f}"]
    if metrics.micro_ap is not None:
        table.add_column("µAP", justify="right")
        cells.append(f"{metrics.micro_ap:.3f}")
    if metrics.threshold is not None:
        table.add_column(f"P @ {metrics.threshold:g}", justify="right")
        table.add_column(f"R @ {metrics.threshold:g}", justify="right")
        cells += [f"{metrics.precision:.3f}", f"{metrics.recall:.3f}"]
    table.add_row(*cells)
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
