"""The ``lookalike`` command: parses options, calls the Python API, prints. No logic here."""

from __future__ import annotations

import ast
import json
import logging
import sys
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from . import pipeline
from .errors import ImageError, LookalikeError, NothingToProcessError
from .extract import ExtractOptions
from .features import list_extractors
from .images import DEFAULT_MAX_PIXELS
from .metrics import RetrievalMetrics

app = typer.Typer(
    help="Find, for every query image, the gallery images that show the same thing.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False)


def _setup_logging() -> None:
    logger = logging.getLogger("lookalike")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("warning: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False


def _friendly(func: Any) -> Any:
    """Turn LookalikeErrors into one line on stderr and a non-zero exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _setup_logging()
        try:
            return func(*args, **kwargs)
        except (NothingToProcessError, ImageError) as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from None
        except LookalikeError as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None

    return wrapper


# Options shared by the commands that extract features.
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Extractor name (see `lookalike models`).")]
WeightsOpt = Annotated[Path | None, typer.Option("--weights", help="Local weights file for the model.")]
PoolOpt = Annotated[str | None, typer.Option("--pool", help="CNN pooling: avg, gem or mac.")]
ModelOptionOpt = Annotated[
    list[str] | None,
    typer.Option("--model-option", "-O", help="Extra model option KEY=VALUE (repeatable)."),
]
MetricOpt = Annotated[str, typer.Option("--metric", help="cosine (default) or euclidean.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
RuntimeOpt = Annotated[str, typer.Option("--runtime", help="auto (ONNX Runtime on CPU), torch or onnx.")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", help="Images per batch.")]
WorkersOpt = Annotated[int | None, typer.Option("--workers", help="DataLoader worker processes.")]
MaxPixelsOpt = Annotated[int, typer.Option("--max-pixels", help="Skip images with more pixels than this.")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Fail on the first unreadable image.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or notes.")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the feature cache.")]
CacheDirOpt = Annotated[Path | None, typer.Option("--cache-dir", help="Feature cache folder.")]
QLabelsOpt = Annotated[Path | None, typer.Option("--query-labels", help="path,label CSV for the queries.")]
GLabelsOpt = Annotated[Path | None, typer.Option("--gallery-labels", help="path,label CSV for the gallery.")]
QueryArg = Annotated[Path, typer.Argument(help="Query folder, image, .txt list or path,label .csv.")]
GalleryArg = Annotated[Path, typer.Argument(help="Gallery folder, image, .txt list or path,label .csv.")]


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _model_options(weights: Path | None, pool: str | None, extra: list[str] | None) -> dict[str, Any]:
    options: dict[str, Any] = {"weights": str(weights) if weights else None, "pool": pool}
    for item in extra or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--model-option")
        options[key.strip().replace("-", "_")] = _parse_value(value.strip())
    return options


def _print_metrics(metrics: RetrievalMetrics, console: Console) -> None:
    table = Table(title=f"{metrics.n_queries} queries")
    for k in metrics.top_k:
        table.add_column(f"top-{k}", justify="right")
    table.add_column("mAP", justify="right")
    table.add_row(*(f"{v:.3f}" for v in metrics.top_k.values()), f"{metrics.mean_ap:.3f}")
    console.print(table)
    if metrics.excluded:
        shown = ", ".join(metrics.excluded[:5]) + (" ..." if len(metrics.excluded) > 5 else "")
        console.print(f"left out {len(metrics.excluded)} query(s) whose label has no gallery image: {shown}")


def _print_summary(run: pipeline.SearchRun, quiet: bool) -> None:
    skipped = run.summary()["skipped"]
    if skipped:
        err.print(f"skipped {len(skipped)} unreadable image(s):")
        for item in skipped:
            err.print(f"  {item['set']}: {item['path']}: {item['reason']}")
    if quiet:
        return
    ext, hit = run.stats["extracted"], run.stats["from_cache"]
    for which in ("query", "gallery"):
        note = "nothing new extracted" if ext[which] == 0 else f"{ext[which]} extracted"
        err.print(f"{which}: {ext[which] + hit[which]} images, {hit[which]} from cache, {note}")
    err.print(f"extraction {run.stats['extract_seconds']:.2f} s, search {run.stats['search_seconds']:.3f} s")


def _run(
    query: Path,
    gallery: Path,
    *,
    evaluate: bool,
    k: int,
    model: str,
    weights: Path | None,
    pool: str | None,
    model_option: list[str] | None,
    metric: str,
    device: str,
    runtime: str,
    batch_size: int | None,
    workers: int | None,
    max_pixels: int,
    strict: bool,
    quiet: bool,
    no_cache: bool,
    cache_dir: Path | None,
    query_labels: Path | None,
    gallery_labels: Path | None,
) -> pipeline.SearchRun:
    options = ExtractOptions(
        device=device,
        runtime=runtime,
        batch_size=batch_size,
        num_workers=workers,
        max_pixels=max_pixels,
        strict=strict,
        progress=not quiet,
        cache_dir=cache_dir,
        use_cache=not no_cache,
    )
    return pipeline.search(
        query,
        gallery,
        model=model,
        model_options=_model_options(weights, pool, model_option),
        k=k,
        metric=metric,
        evaluate=evaluate,
        options=options,
        query_labels=query_labels,
        gallery_labels=gallery_labels,
    )


def _write_metrics_json(path: Path, run: pipeline.SearchRun) -> None:
    assert run.metrics is not None
    doc = run.metrics.as_dict(per_query=True)
    doc["skipped"] = run.summary()["skipped"]
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False), encoding="utf-8")


@app.command()
@_friendly
def search(
    query: QueryArg,
    gallery: GalleryArg,
    k: Annotated[int, typer.Option("-k", "--top-k", help="Results per query.")] = 10,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Results JSON (stdout if omitted).")
    ] = None,
    scores: Annotated[bool, typer.Option("--scores", help="Add each result's score.")] = False,
    fmt: Annotated[str, typer.Option("--format", help="default or challenge.")] = "default",
    group: Annotated[str | None, typer.Option("--group", help="Group name for --format challenge.")] = None,
    evaluate: Annotated[bool, typer.Option("--evaluate", help="Also print top-1/3/10 and mAP.")] = False,
    metrics_json: Annotated[
        Path | None, typer.Option("--json", help="With --evaluate: metrics JSON.")
    ] = None,
    summary: Annotated[Path | None, typer.Option("--summary", help="Write the run summary as JSON.")] = None,
    model: ModelOpt = pipeline.DEFAULT_MODEL,
    weights: WeightsOpt = None,
    pool: PoolOpt = None,
    model_option: ModelOptionOpt = None,
    metric: MetricOpt = "cosine",
    device: DeviceOpt = "auto",
    runtime: RuntimeOpt = "auto",
    batch_size: BatchOpt = None,
    workers: WorkersOpt = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    strict: StrictOpt = False,
    quiet: QuietOpt = False,
    no_cache: NoCacheOpt = False,
    cache_dir: CacheDirOpt = None,
    query_labels: QLabelsOpt = None,
    gallery_labels: GLabelsOpt = None,
) -> None:
    """Rank the gallery for every query image and write {query: [gallery images, best first]}."""
    if fmt == "challenge" and not group:
        raise typer.BadParameter("--format challenge needs --group NAME", param_hint="--group")
    evaluate = evaluate or metrics_json is not None
    run = _run(
        query,
        gallery,
        evaluate=evaluate,
        k=k,
        model=model,
        weights=weights,
        pool=pool,
        model_option=model_option,
        metric=metric,
        device=device,
        runtime=runtime,
        batch_size=batch_size,
        workers=workers,
        max_pixels=max_pixels,
        strict=strict,
        quiet=quiet,
        no_cache=no_cache,
        cache_dir=cache_dir,
        query_labels=query_labels,
        gallery_labels=gallery_labels,
    )
    doc = run.to_json(scores=scores, fmt=fmt, group=group)
    if output is None:
        out.print_json(data=doc) if sys.stdout.isatty() else print(
            json.dumps(doc, indent=2, ensure_ascii=False)
        )
    else:
        run.write_json(output, scores=scores, fmt=fmt, group=group)
        if not quiet:
            err.print(f"wrote {len(doc if fmt == 'default' else doc['images'])} queries' results to {output}")
    _print_summary(run, quiet)
    if run.metrics is not None:
        _print_metrics(run.metrics, err)
        if metrics_json:
            _write_metrics_json(metrics_json, run)
    if summary:
        summary.write_text(json.dumps(run.summary(), indent=2, ensure_ascii=False), encoding="utf-8")


@app.command()
@_friendly
def evaluate(
    query: QueryArg,
    gallery: GalleryArg,
    metrics_json: Annotated[
        Path | None, typer.Option("--json", help="Also write metrics and per-query ranks.")
    ] = None,
    model: ModelOpt = pipeline.DEFAULT_MODEL,
    weights: WeightsOpt = None,
    pool: PoolOpt = None,
    model_option: ModelOptionOpt = None,
    metric: MetricOpt = "cosine",
    device: DeviceOpt = "auto",
    runtime: RuntimeOpt = "auto",
    batch_size: BatchOpt = None,
    workers: WorkersOpt = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    strict: StrictOpt = False,
    quiet: QuietOpt = False,
    no_cache: NoCacheOpt = False,
    cache_dir: CacheDirOpt = None,
    query_labels: QLabelsOpt = None,
    gallery_labels: GLabelsOpt = None,
) -> None:
    """Print top-1/3/10 accuracy and mAP of a labelled query set against a labelled gallery."""
    run = _run(
        query,
        gallery,
        evaluate=True,
        k=10,
        model=model,
        weights=weights,
        pool=pool,
        model_option=model_option,
        metric=metric,
        device=device,
        runtime=runtime,
        batch_size=batch_size,
        workers=workers,
        max_pixels=max_pixels,
        strict=strict,
        quiet=quiet,
        no_cache=no_cache,
        cache_dir=cache_dir,
        query_labels=query_labels,
        gallery_labels=gallery_labels,
    )
    _print_summary(run, quiet)
    assert run.metrics is not None
    _print_metrics(run.metrics, out)
    if metrics_json:
        _write_metrics_json(metrics_json, run)


@app.command()
def models() -> None:
    """List the feature extractors and whether each one's weights are available offline."""
    table = Table()
    table.add_column("model")
    table.add_column("offline")
    table.add_column("weights")
    table.add_column("description")
    for info in list_extractors():
        ok, note = info.weights_status()
        table.add_row(info.name, "yes" if ok else "no", note, info.description)
    out.print(table)


@app.command()
@_friendly
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Where to lay out the sample set.")] = Path(
        "lookalike-demo"
    ),
    model: ModelOpt = pipeline.DEFAULT_MODEL,
    quiet: QuietOpt = False,
) -> None:
    """Search a sample set made from photos shipped with scikit-image; writes results.json."""
    from .samples import make_copy_detection_set

    query_dir, gallery_dir = make_copy_detection_set(out_dir)
    err.print(
        f"sample set: {query_dir} ({sum(1 for _ in query_dir.rglob('*.jpg'))} queries), "
        f"{gallery_dir} ({sum(1 for _ in gallery_dir.rglob('*.jpg'))} gallery images)"
    )
    run = pipeline.search(
        query_dir,
        gallery_dir,
        model=model,
        k=10,
        evaluate=True,
        options=ExtractOptions(progress=not quiet),
    )
    results = out_dir / "results.json"
    run.write_json(results)
    _print_summary(run, quiet)
    assert run.metrics is not None
    _print_metrics(run.metrics, out)
    out.print(f"results: {results}")


if __name__ == "__main__":  # pragma: no cover
    app()
