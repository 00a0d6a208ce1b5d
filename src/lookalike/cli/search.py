"""Commands that search and evaluate: search, evaluate, compare, report, demo, models, presets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from .. import pipeline
from ..config import SearchConfig, list_presets
from ..errors import InputError
from ..extract import ExtractOptions
from ..methods import list_methods
from ._app import app, err, friendly, out
from .options import COMPARE_CONFIG, CONFIG, GalleryArg, GalleryLabels, QueryArg, QueryLabels, Quiet, uses
from .output import (
    check_outputs,
    print_metrics,
    print_results,
    print_summary,
    write_metrics_json,
)


@app.command()
@friendly
@uses(CONFIG)
def search(
    query: QueryArg,
    gallery: GalleryArg,
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, help="Results per query.")] = 10,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Results JSON (stdout if omitted).")] = None,
    scores: Annotated[bool, typer.Option("--scores", help="Add each result's score.")] = False,
    fmt: Annotated[str, typer.Option("--format", help="default or challenge.")] = "default",
    group: Annotated[str | None, typer.Option("--group", help="Group name for --format challenge.")] = None,
    evaluate: Annotated[bool, typer.Option("--evaluate", help="Also print top-1/3/10 and mAP.")] = False,
    metrics_json: Annotated[Path | None, typer.Option("--json", help="With --evaluate: metrics JSON.")] = None,
    summary: Annotated[Path | None, typer.Option("--summary", help="Write the run summary as JSON.")] = None,
    report: Annotated[Path | None, typer.Option("--report", help="Also write an HTML report of the results.")] = None,
    failures_first: Annotated[bool, typer.Option("--failures-first", help="Report: failed queries on top.")] = False,
    min_score: Annotated[
        str | None,
        typer.Option(
            "--min-score",
            help="Keep only results at least this good: a score, or a threshold file from `lookalike calibrate`.",
        ),
    ] = None,
    query_labels: QueryLabels = None,
    gallery_labels: GalleryLabels = None,
    *,
    config: SearchConfig,
) -> None:
    r"""Rank the gallery for every query image and write {query: \[gallery images, best first]}."""
    pipeline.check_format(fmt, group=group, scores=scores)
    check_outputs(
        {"-o": output, "--json": metrics_json, "--summary": summary, "--report": report},
        [query, gallery, query_labels, gallery_labels, *([Path(min_score)] if min_score else [])],
    )
    quiet = not config.extract.progress
    run = pipeline.search(
        query,
        gallery,
        k=k,
        evaluate=evaluate or metrics_json is not None,
        query_labels=query_labels,
        gallery_labels=gallery_labels,
        config=config,
        min_score=min_score,
    )
    doc = run.to_json(scores=scores, fmt=fmt, group=group)
    if output is None:
        print_results(doc)
    else:
        run.write_json(output, scores=scores, fmt=fmt, group=group)
        if not quiet:
            err.print(f"wrote {len(doc if fmt == 'default' else doc['images'])} queries' results to {output}")
    print_summary(run, quiet)
    if run.min_score is not None and not quiet:
        matched = run.summary()["matched_queries"]
        err.print(f"{matched} of {len(run.query_names)} queries have a match at --min-score {run.min_score:g}")
    if run.metrics is not None:
        print_metrics(run.metrics, err)
        if metrics_json:
            write_metrics_json(metrics_json, run)
    if summary:
        from ..fileio import write_json

        write_json(summary, run.summary())
    if report:
        from ..report import write_report

        write_report(
            run,
            query,
            gallery,
            report,
            query_labels=query_labels,
            gallery_labels=gallery_labels,
            failures_first=failures_first,
            progress=not quiet,
        )
        if not quiet:
            err.print(f"report: {report}")


@app.command()
@friendly
@uses(CONFIG)
def evaluate(
    query: QueryArg,
    gallery: GalleryArg,
    metrics_json: Annotated[Path | None, typer.Option("--json", help="Also write metrics and per-query ranks.")] = None,
    query_labels: QueryLabels = None,
    gallery_labels: GalleryLabels = None,
    *,
    config: SearchConfig,
) -> None:
    """Print top-1/3/10 accuracy and mAP of a labelled query set against a labelled gallery."""
    check_outputs({"--json": metrics_json}, [query, gallery, query_labels, gallery_labels])
    run = pipeline.search(
        query, gallery, k=10, evaluate=True, query_labels=query_labels, gallery_labels=gallery_labels, config=config
    )
    print_summary(run, not config.extract.progress)
    assert run.metrics is not None
    print_metrics(run.metrics, out)
    if metrics_json:
        write_metrics_json(metrics_json, run)


@app.command("compare")
@friendly
@uses(COMPARE_CONFIG)
def compare_command(
    query: QueryArg,
    gallery: GalleryArg,
    models: Annotated[
        list[str], typer.Option("--model", "-m", help="A method name or checkpoint (repeat), see `lookalike models`.")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the table and chart.")] = Path(
        "comparison"
    ),
    no_chart: Annotated[bool, typer.Option("--no-chart", help="Skip the bar chart PNG.")] = False,
    query_labels: QueryLabels = None,
    gallery_labels: GalleryLabels = None,
    *,
    config: SearchConfig,
) -> None:
    """Evaluate several methods on one labelled split with the same settings: table and bar chart."""
    from ..compare import compare

    table = compare(
        query,
        gallery,
        models,
        output,
        options=config.extract,
        metric=config.metric,
        query_labels=query_labels,
        gallery_labels=gallery_labels,
        refinement=config.refinement,
        chart=not no_chart,
    )
    print((output / "comparison.md").read_text(encoding="utf-8"))
    for path in table.files.values():
        err.print(f"wrote {path}")


@app.command()
def models() -> None:
    """List every method -m accepts (CNN models, local features, checkpoints), weights offline or not."""
    table = Table()
    table.add_column("model", no_wrap=True)
    table.add_column("kind", no_wrap=True)
    table.add_column("offline", no_wrap=True)
    table.add_column("weights", ratio=1)
    table.add_column("description", ratio=2)
    for info in list_methods():
        table.add_row(info.name, info.kind, "yes" if info.offline else "no", info.weights, info.description)
    out.print(table)


@app.command()
def presets() -> None:
    """List the named settings --preset accepts: what each is for, what it sets, what it costs."""
    table = Table()
    table.add_column("preset", no_wrap=True)
    table.add_column("what it sets", ratio=1)
    table.add_column("measured", ratio=1)
    for name, preset in list_presets():
        settings = {**preset.get("model_options", {}), **preset.get("refinement", {})}
        if preset.get("model"):
            settings = {"model": preset["model"], **settings}
        what = ", ".join(f"{k}={v}" for k, v in settings.items())
        table.add_row(name, f"{preset['description']}" + (f" ({what})" if what else ""), preset.get("measured", ""))
    out.print(table)


@app.command()
@friendly
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Where to lay out the sample set.")] = Path("lookalike-demo"),
    model: Annotated[str | None, typer.Option("--model", "-m", help="Method (see `lookalike models`).")] = None,
    quiet: Quiet = False,
) -> None:
    """Search a sample set made from photos shipped with scikit-image; writes results.json."""
    from ..samples import make_copy_detection_set

    marker = out_dir / ".lookalike-demo"  # the demo rewrites only a folder it made itself
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not marker.is_file())):
        raise InputError(f"--out {out_dir}: exists and is not a lookalike demo folder; choose a new folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    marker.touch()
    query_dir, gallery_dir = make_copy_detection_set(out_dir)
    err.print(
        f"sample set: {query_dir} ({sum(1 for _ in query_dir.rglob('*.jpg'))} queries), "
        f"{gallery_dir} ({sum(1 for _ in gallery_dir.rglob('*.jpg'))} gallery images)"
    )
    config = SearchConfig(model=model, extract=ExtractOptions(progress=not quiet))
    run = pipeline.search(query_dir, gallery_dir, k=10, evaluate=True, config=config)
    results = out_dir / "results.json"
    run.write_json(results)
    print_summary(run, quiet)
    assert run.metrics is not None
    print_metrics(run.metrics, out)
    out.print(f"results: {results}")


@app.command("report")
@friendly
def report_command(
    results: Annotated[Path, typer.Argument(help="Results JSON written by `lookalike search`.")],
    query: Annotated[Path, typer.Option("--query", help="The query source that was searched.")],
    gallery: Annotated[Path, typer.Option("--gallery", help="The gallery source (folder, list or index).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="HTML file to write.")] = Path("report.html"),
    failures_first: Annotated[bool, typer.Option("--failures-first", help="Failed queries on top.")] = False,
    k: Annotated[int | None, typer.Option("-k", min=1, help="Show at most this many results per query.")] = None,
    thumb_size: Annotated[int, typer.Option("--thumb-size", min=16, max=1024, help="Thumbnail size in pixels.")] = 96,
    page_size: Annotated[int, typer.Option("--page-size", min=1, help="Queries per page.")] = 25,
    no_labels: Annotated[bool, typer.Option("--no-labels", help="Do not mark results right or wrong.")] = False,
    query_labels: QueryLabels = None,
    gallery_labels: GalleryLabels = None,
    title: Annotated[str | None, typer.Option("--title", help="Page title.")] = None,
    quiet: Quiet = False,
) -> None:
    """Write a self-contained HTML page: each query beside its ranked thumbnails."""
    from ..report import report_from_json

    check_outputs({"-o": output}, [results, query, gallery, query_labels, gallery_labels])

    report_from_json(
        results,
        query,
        gallery,
        output,
        labels=None if no_labels else "auto",
        query_labels=query_labels,
        gallery_labels=gallery_labels,
        failures_first=failures_first,
        k=k,
        thumb_size=thumb_size,
        page_size=page_size,
        title=title,
        progress=not quiet,
    )
    if not quiet:
        err.print(f"report: {output}")
