"""The ``calibrate`` command: the score threshold that reaches a target precision on a labelled split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..calibrate import THRESHOLD_KEYS, Calibration, calibrate
from ..config import SearchConfig
from ..errors import EXIT_NO_INPUT, InputError
from ..fileio import atomic_write
from ..metrics import is_higher_better
from ._app import app, err, friendly, out, shown
from .options import CONFIG, GalleryArg, GalleryLabels, QueryArg, QueryLabels, uses
from .output import check_outputs


def _check_threshold_target(path: Path) -> None:
    """An existing ``-o`` file is replaced only when it is itself a threshold file."""
    if not path.is_file():
        return
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        doc = None
    if not (isinstance(doc, dict) and all(key in doc for key in THRESHOLD_KEYS)):
        raise InputError(f"-o {path}: exists and is not a threshold file; choose another name")


def _print_curve(cal: Calibration) -> None:
    """The precision/recall curve as a small table, the chosen threshold marked."""
    direction = "higher is better" if is_higher_better(cal.score) else "lower is better"
    table = Table(
        title=f"{cal.score} ({direction}): {cal.curve.n_pairs} pairs, {cal.curve.n_positives} positives"
    )
    for name in ("threshold", "precision", "recall", "pairs accepted"):
        table.add_column(name, justify="right")
    table.add_column("")
    for t, p, r, n, chosen in cal.table():
        table.add_row(
            f"{t:.6g}",
            f"{p:.4f}",
            f"{r:.4f}",
            str(n),
            f"<- precision {cal.target_precision:g}" if chosen else "",
        )
    out.print(table)


@app.command("calibrate")
@friendly
@uses(CONFIG)
def calibrate_command(
    query: QueryArg,
    gallery: GalleryArg,
    precision: Annotated[
        float,
        typer.Option("--precision", help="Target precision of the pairs the threshold accepts, in (0, 1]."),
    ] = 0.99,
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, help="Short-list length: pairs per query.")] = 10,
    output: Annotated[Path, typer.Option("-o", "--output", help="Threshold file (JSON) to write.")] = Path(
        "threshold.json"
    ),
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Also draw the precision/recall curve (PNG).")
    ] = None,
    query_labels: QueryLabels = None,
    gallery_labels: GalleryLabels = None,
    *,
    config: SearchConfig,
) -> None:
    """Find the score threshold that keeps precision at --precision on a labelled split; write it."""
    if not (0.0 < precision <= 1.0):
        raise InputError(f"--precision must be in (0, 1], got {precision}")
    check_outputs({"-o": output, "--plot": plot}, [query, gallery, query_labels, gallery_labels])
    _check_threshold_target(output)
    cal = calibrate(
        query,
        gallery,
        precision,
        config=config,
        k=k,
        query_labels=query_labels,
        gallery_labels=gallery_labels,
    )
    skipped = [s for items in cal.skipped.values() for s in items]
    if skipped:
        err.print(f"skipped {len(skipped)} unreadable image(s)")
    _print_curve(cal)
    if not cal.reached:
        err.print(f"[red]error:[/red] {shown(cal.unreachable_message())}")
        raise typer.Exit(EXIT_NO_INPUT)
    cal.write(output)
    out.print(
        f"threshold {cal.threshold:.6g} ({cal.score}): precision {cal.precision:.4f}, recall {cal.recall:.4f} "
        f"on {cal.curve.n_pairs} pairs; wrote {shown(output)}",
        soft_wrap=True,
    )
    if plot is not None:
        png = cal.plot_png()
        atomic_write(plot, lambda h: h.write(png))
        out.print(f"plot: {shown(plot)}", soft_wrap=True)
