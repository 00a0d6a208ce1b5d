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
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

try:  # typer 0.2x vendors its own click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover - older typer on click itself
    from click.exceptions import ClickException, NoArgsIsHelpError

from . import pipeline
from .errors import (
    EXIT_INTERRUPTED,
    EXIT_NO_INPUT,
    EXIT_USAGE,
    ImageError,
    InputError,
    LookalikeError,
    NothingToProcessError,
)
from .extract import ExtractOptions
from .features import list_extractors
from .fileio import json_text, printable, write_json
from .images import DEFAULT_MAX_PIXELS, ImageSet
from .index import GalleryIndex, build_index
from .index.postprocess import IndexPostprocess
from .metrics import RetrievalMetrics
from .pipeline import Refinement

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False)


class _OneLineErrors(TyperGroup):
    """Every usage error (unknown option, bad value, out of range) as one ``error:`` line naming
    the option, with the exit code that usage errors have everywhere, instead of a boxed panel."""

    def main(self, args: Any = None, prog_name: str | None = None, *pos: Any, **kwargs: Any) -> Any:
        standalone = kwargs.pop("standalone_mode", True)
        try:
            code = super().main(args, prog_name, *pos, standalone_mode=False, **kwargs)
        except NoArgsIsHelpError as exc:
            out.print(exc.ctx.get_help() if exc.ctx else exc.format_message(), markup=False)
            code = EXIT_USAGE
        except ClickException as exc:
            if not standalone:
                raise
            where = f" (see `{exc.ctx.command_path} --help`)" if getattr(exc, "ctx", None) else ""
            err.print(f"[red]error:[/red] {escape(exc.format_message())}{escape(where)}")
            code = exc.exit_code
        except typer.Abort:
            if not standalone:
                raise
            err.print("[red]error:[/red] interrupted")
            code = EXIT_INTERRUPTED
        if not standalone:
            return code
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    help="Find, for every query image, the gallery images that show the same thing.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _shown(text: str) -> str:
    """A path or message as the console should show it: no rich markup, odd bytes as \\xNN."""
    return escape(printable(str(text)))


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the moment (test runners and notebooks swap it)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _setup_logging() -> None:
    logger = logging.getLogger("lookalike")
    if not logger.handlers:
        handler = _CurrentStderr()
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
            err.print(f"[red]error:[/red] {_shown(str(exc))}")
            raise typer.Exit(EXIT_NO_INPUT) from None
        except LookalikeError as exc:
            err.print(f"[red]error:[/red] {_shown(str(exc))}")
            raise typer.Exit(EXIT_USAGE) from None
        except KeyboardInterrupt:
            err.print("[red]error:[/red] interrupted; `--resume` continues an index build where it stopped")
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper


# Options shared by the commands that extract features.
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model", "-m", help="Extractor name (see `lookalike models`); default efficientnet-lite0."
    ),
]
WeightsOpt = Annotated[Path | None, typer.Option("--weights", help="Local weights file for the model.")]
PoolOpt = Annotated[str | None, typer.Option("--pool", help="CNN pooling: avg, gem, mac or spoc.")]
MultiscaleOpt = Annotated[
    bool, typer.Option("--multiscale", help="CNN features at scales 1, 1/sqrt(2), 1/2, averaged.")
]
ModelOptionOpt = Annotated[
    list[str] | None,
    typer.Option("--model-option", "-O", help="Extra model option KEY=VALUE (repeatable)."),
]
MetricOpt = Annotated[str | None, typer.Option("--metric", help="cosine (default) or euclidean.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
RuntimeOpt = Annotated[str, typer.Option("--runtime", help="auto (ONNX Runtime on CPU), torch or onnx.")]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", min=1, help="Images per batch.")]
WorkersOpt = Annotated[
    int | None, typer.Option("--workers", min=0, help="DataLoader worker processes (0: decode in-process).")
]
MaxPixelsOpt = Annotated[
    int, typer.Option("--max-pixels", min=1, help="Skip images with more pixels than this.")
]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Fail on the first unreadable image.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or notes.")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Neither read nor write the feature cache.")]
CacheDirOpt = Annotated[Path | None, typer.Option("--cache-dir", help="Feature cache folder.")]
QLabelsOpt = Annotated[Path | None, typer.Option("--query-labels", help="path,label CSV for the queries.")]
GLabelsOpt = Annotated[Path | None, typer.Option("--gallery-labels", help="path,label CSV for the gallery.")]
WhitenOpt = Annotated[bool, typer.Option("--whiten", help="PCA-whiten features (fitted on the gallery).")]
WhitenDimOpt = Annotated[int | None, typer.Option("--whiten-dim", min=1, help="Keep this many whitened dimensions.")]
QeOpt = Annotated[
    int, typer.Option("--qe", min=0, help="Alpha query expansion with K (counting the query); 0 = off.")
]
DbaOpt = Annotated[int, typer.Option("--dba", min=0, help="Database-side augmentation with K neighbours; 0 = off.")]
AlphaOpt = Annotated[float, typer.Option("--alpha", help="Similarity exponent of --qe and --dba.")]
RerankOpt = Annotated[
    str | None,
    typer.Option("--rerank", help="Re-ranking: k-reciprocal, or spatial verification: surf, sift."),
]
RerankTopOpt = Annotated[int, typer.Option("--rerank-top", min=1, help="How many top results re-ranking re-orders.")]
QueryArg = Annotated[Path, typer.Argument(help="Query folder, image, .txt list or path,label .csv.")]
GalleryArg = Annotated[Path, typer.Argument(help="Gallery folder, image, .txt list or path,label .csv.")]


def _check_output_file(option: str, path: Path | None) -> None:
    """Refuse, before any work, an output file option that names a folder."""
    if path is not None and path.is_dir():
        raise InputError(f"{option} {path}: is a folder; give the name of a file to write")


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _model_options(
    weights: Path | None, pool: str | None, extra: list[str] | None, multiscale: bool = False
) -> dict[str, Any]:
    options: dict[str, Any] = {
        "weights": str(weights) if weights else None,
        "pool": pool,
        "multiscale": True if multiscale else None,
    }
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
            err.print(f"  {item['set']}: {_shown(item['path'])}: {_shown(item['reason'])}")
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
    model: str | None,
    weights: Path | None,
    pool: str | None,
    multiscale: bool,
    model_option: list[str] | None,
    metric: str | None,
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
    refinement: Refinement,
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
        model_options=_model_options(weights, pool, model_option, multiscale),
        k=k,
        metric=metric,
        evaluate=evaluate,
        options=options,
        query_labels=query_labels,
        gallery_labels=gallery_labels,
        refinement=refinement,
    )


def _write_metrics_json(path: Path, run: pipeline.SearchRun) -> None:
    assert run.metrics is not None
    doc = run.metrics.as_dict(per_query=True)
    doc["model"], doc["refinement"] = run.model, run.refinement
    doc["skipped"] = run.summary()["skipped"]
    write_json(path, doc)


@app.command()
@_friendly
def search(
    query: QueryArg,
    gallery: GalleryArg,
    k: Annotated[int, typer.Option("-k", "--top-k", min=1, help="Results per query.")] = 10,
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
    report: Annotated[
        Path | None, typer.Option("--report", help="Also write an HTML report of the results.")
    ] = None,
    failures_first: Annotated[
        bool, typer.Option("--failures-first", help="Report: failed queries on top.")
    ] = False,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    pool: PoolOpt = None,
    multiscale: MultiscaleOpt = False,
    model_option: ModelOptionOpt = None,
    metric: MetricOpt = None,
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
    whiten: WhitenOpt = False,
    whiten_dim: WhitenDimOpt = None,
    qe: QeOpt = 0,
    dba: DbaOpt = 0,
    alpha: AlphaOpt = 3.0,
    rerank: RerankOpt = None,
    rerank_top: RerankTopOpt = 100,
) -> None:
    r"""Rank the gallery for every query image and write {query: \[gallery images, best first]}."""
    pipeline.check_format(fmt, group=group, scores=scores)
    for option, path in (("-o", output), ("--json", metrics_json), ("--summary", summary), ("--report", report)):
        _check_output_file(option, path)
    evaluate = evaluate or metrics_json is not None
    run = _run(
        query,
        gallery,
        evaluate=evaluate,
        k=k,
        model=model,
        weights=weights,
        pool=pool,
        multiscale=multiscale,
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
        refinement=Refinement(
            whiten=whiten,
            whiten_dim=whiten_dim,
            dba=dba,
            qe=qe,
            alpha=alpha,
            rerank=rerank,
            rerank_top=rerank_top,
        ),
    )
    doc = run.to_json(scores=scores, fmt=fmt, group=group)
    if output is None:
        text = json_text(doc)
        out.print_json(text) if sys.stdout.isatty() else print(text)
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
        write_json(summary, run.summary())
    if report:
        from .report import write_report

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
@_friendly
def evaluate(
    query: QueryArg,
    gallery: GalleryArg,
    metrics_json: Annotated[
        Path | None, typer.Option("--json", help="Also write metrics and per-query ranks.")
    ] = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    pool: PoolOpt = None,
    multiscale: MultiscaleOpt = False,
    model_option: ModelOptionOpt = None,
    metric: MetricOpt = None,
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
    whiten: WhitenOpt = False,
    whiten_dim: WhitenDimOpt = None,
    qe: QeOpt = 0,
    dba: DbaOpt = 0,
    alpha: AlphaOpt = 3.0,
    rerank: RerankOpt = None,
    rerank_top: RerankTopOpt = 100,
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
        multiscale=multiscale,
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
        refinement=Refinement(
            whiten=whiten,
            whiten_dim=whiten_dim,
            dba=dba,
            qe=qe,
            alpha=alpha,
            rerank=rerank,
            rerank_top=rerank_top,
        ),
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
    model: ModelOpt = None,
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


index_app = typer.Typer(help="Saved gallery indexes: build, add, remove, info.", no_args_is_help=True)
app.add_typer(index_app, name="index")


@index_app.command("build")
@_friendly
def index_build(
    gallery: GalleryArg,
    output: Annotated[Path, typer.Option("-o", "--output", help="Index folder to write.")],
    backend: Annotated[
        str,
        typer.Option(
            "--backend", help="auto, exact, flat, hnsw, hnswsq8, ivfpq, ivfsq8 or faiss:<factory string>."
        ),
    ] = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted build.")] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Rebuild an existing index in place (the old one stays in force until the new one is complete).",
        ),
    ] = False,
    ray: Annotated[
        str | None,
        typer.Option("--ray", help="Extract on Ray: 'local', 'auto' (running cluster) or an address."),
    ] = None,
    model: ModelOpt = None,
    weights: WeightsOpt = None,
    pool: PoolOpt = None,
    multiscale: MultiscaleOpt = False,
    model_option: ModelOptionOpt = None,
    metric: MetricOpt = None,
    device: DeviceOpt = "auto",
    runtime: RuntimeOpt = "auto",
    batch_size: BatchOpt = None,
    workers: WorkersOpt = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    strict: StrictOpt = False,
    quiet: QuietOpt = False,
    gallery_labels: GLabelsOpt = None,
    whiten: WhitenOpt = False,
    whiten_dim: WhitenDimOpt = None,
    dba: DbaOpt = 0,
    alpha: AlphaOpt = 3.0,
) -> None:
    """Extract a gallery once and save it as an index that `search` can use.

    --whiten and --dba are fitted on the gallery here and stored with the index: searches apply
    them without refitting, and images added later get the same whitening."""
    options = ExtractOptions(
        device=device,
        runtime=runtime,
        batch_size=batch_size,
        num_workers=workers,
        max_pixels=max_pixels,
        strict=strict,
        progress=not quiet,
    )
    index, emb = build_index(
        gallery,
        output,
        model=model or pipeline.DEFAULT_MODEL,
        model_options=_model_options(weights, pool, model_option, multiscale),
        backend=backend,
        metric=metric or "cosine",
        options=options,
        resume=resume,
        force=force,
        labels_csv=gallery_labels,
        ray_address=ray,
        postprocess=IndexPostprocess(whiten=whiten, whiten_dim=whiten_dim, dba=dba, alpha=alpha),
    )
    if emb is None:
        err.print(f"{output}: the index is complete ({len(index)} images); nothing to resume")
        return
    for s in emb.skipped:
        err.print(f"skipped {_shown(s.path)}: {_shown(s.reason)}")
    if not quiet:
        resumed = f" ({emb.n_cached} recovered from the interrupted build)" if emb.n_cached else ""
        err.print(
            f"indexed {len(index)} images{resumed} with {index.model['name']} into {output} "
            f"[{index.backend.spec}, {index.disk_bytes() / 1e6:.1f} MB]"
        )


@index_app.command("add")
@_friendly
def index_add(
    index: Annotated[Path, typer.Argument(help="Index folder.")],
    images: Annotated[list[Path], typer.Argument(help="Images, folders or lists to add.")],
    device: DeviceOpt = "auto",
    runtime: RuntimeOpt = "auto",
    batch_size: BatchOpt = None,
    workers: WorkersOpt = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    quiet: QuietOpt = False,
    strict: StrictOpt = False,
) -> None:
    """Add images (new paths are added, changed files replaced, unchanged ones left alone)."""
    options = ExtractOptions(
        device=device,
        runtime=runtime,
        batch_size=batch_size,
        num_workers=workers,
        max_pixels=max_pixels,
        strict=strict,
        progress=not quiet,
        use_cache=False,
    )
    gallery = GalleryIndex.open(index)
    for source in images:
        report = gallery.add_images(ImageSet.from_path(source), options)
        for s in report.skipped:
            err.print(f"skipped {_shown(s.path)}: {_shown(s.reason)}")
        err.print(
            f"{source}: {len(report.added)} added, {len(report.replaced)} replaced, "
            f"{len(report.unchanged)} already present"
        )
    err.print(f"{index}: {len(gallery)} images")


@index_app.command("remove")
@_friendly
def index_remove(
    index: Annotated[Path, typer.Argument(help="Index folder.")],
    paths: Annotated[
        list[str], typer.Argument(help="Paths (relative to the gallery root, or absolute; folders too).")
    ],
    yes: Annotated[
        bool, typer.Option("--yes", help="Confirm removing more than half of the index.")
    ] = False,
) -> None:
    """Remove images from an index by path (only paths inside the gallery root; the files
    themselves are never touched)."""
    gallery = GalleryIndex.open(index)
    removed, unmatched = gallery.remove_paths(paths, confirm=yes)
    for arg in unmatched:
        err.print(f"not in the index: {_shown(arg)}")
    err.print(f"removed {len(removed)} image(s); {len(gallery)} left")


@index_app.command("info")
@_friendly
def index_info(
    index: Annotated[Path, typer.Argument(help="Index folder.")],
    check_recall: Annotated[
        bool, typer.Option("--check-recall", help="Measure recall@10 against exact search.")
    ] = False,
) -> None:
    """Describe an index: model, metric, backend, size; optionally its recall@10."""
    gallery = GalleryIndex.open(index)
    table = Table(show_header=False)
    rows = [
        ("images", str(len(gallery))),
        ("model", gallery.model["name"]),
        ("options", json.dumps(gallery.model["options"])),
        ("dim", str(gallery.dim)),
        ("metric", gallery.metric),
        ("backend", gallery.backend.spec),
        ("post-processing", json.dumps(gallery.post.describe()) if gallery.post.active else "none"),
        ("root", str(gallery.root)),
        ("labelled", "yes" if gallery.labels is not None else "no"),
        ("size on disk", f"{gallery.disk_bytes() / 1e6:.1f} MB"),
        ("generation", str(gallery.generation)),
    ]
    if check_recall:
        rows.append(("recall@10 vs exact", f"{gallery.recall_at(10):.4f}"))
    for name, value in rows:
        table.add_row(name, value)
    out.print(table)


@app.command("train")
@_friendly
def train_command(
    method: Annotated[str, typer.Argument(help="siamese, autoencoder, vae, cnn or finetune.")],
    train_dir: Annotated[Path, typer.Argument(help="Training images in class folders.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Run folder (checkpoints, config, curves).")],
    val: Annotated[
        Path | None, typer.Option("--val", help="Validation class folders (else a split).")
    ] = None,
    val_fraction: Annotated[float, typer.Option("--val-fraction", min=0.0, max=0.9, help="Stratified validation share.")] = 0.2,
    epochs: Annotated[
        int | None, typer.Option("--epochs", min=1, help="Most epochs (early stopping may end sooner).")
    ] = None,
    batch_size: BatchOpt = None,
    lr: Annotated[float | None, typer.Option("--lr", min=0.0, help="Adam learning rate.")] = None,
    patience: Annotated[int, typer.Option("--patience", min=0, help="Early-stopping patience (epochs).")] = 5,
    min_delta: Annotated[
        float, typer.Option("--min-delta", help="Smallest val-loss gain that counts.")
    ] = 1e-4,
    lr_patience: Annotated[
        int, typer.Option("--lr-patience", min=0, help="Epochs on a plateau before LR drops.")
    ] = 2,
    lr_factor: Annotated[float, typer.Option("--lr-factor", min=0.0, max=1.0, help="LR multiplier on a plateau.")] = 0.5,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the run's last checkpoint.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run folder.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    device: DeviceOpt = "auto",
    loss: Annotated[str | None, typer.Option("--loss", help="siamese: contrastive or triplet.")] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-O", help="Method option KEY=VALUE (repeatable), e.g. image_size=64."),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Train a feature model on class folders; RUN_DIR/best.pt then works wherever a model name does."""
    from .training import train

    if lr is not None and lr <= 0:
        raise InputError(f"--lr must be positive, got {lr}")
    if not 0 < lr_factor < 1:
        raise InputError(f"--lr-factor must be between 0 and 1 (exclusive), got {lr_factor}")
    method_options = {k: v for k, v in _model_options(None, None, option).items() if v is not None}
    if loss is not None:
        method_options["loss"] = loss
    result = train(
        method,
        train_dir,
        output,
        val_dir=val,
        val_fraction=val_fraction,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        patience=patience,
        min_delta=min_delta,
        lr_patience=lr_patience,
        lr_factor=lr_factor,
        resume=resume,
        overwrite=overwrite,
        seed=seed,
        device=device,
        progress=not quiet,
        **method_options,
    )
    for s in result.skipped:
        err.print(f"skipped {_shown(s.path)}: {_shown(s.reason)}")
    ending = "stopped early" if result.stopped_early else "ran all epochs"
    err.print(
        f"{method}: {result.epochs_run} epochs ({ending}), best val loss {result.best_val_loss:.4f} at epoch "
        f"{result.best_epoch}, {result.seconds:.0f} s"
    )
    for name, path in result.files.items():
        err.print(f"  {name}: {path}")
    out.print(f"search with: lookalike search QUERY GALLERY -m {result.best}")


@app.command("report")
@_friendly
def report_command(
    results: Annotated[Path, typer.Argument(help="Results JSON written by `lookalike search`.")],
    query: Annotated[Path, typer.Option("--query", help="The query source that was searched.")],
    gallery: Annotated[Path, typer.Option("--gallery", help="The gallery source (folder, list or index).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="HTML file to write.")] = Path("report.html"),
    failures_first: Annotated[bool, typer.Option("--failures-first", help="Failed queries on top.")] = False,
    k: Annotated[int | None, typer.Option("-k", min=1, help="Show at most this many results per query.")] = None,
    thumb_size: Annotated[int, typer.Option("--thumb-size", min=16, max=1024, help="Thumbnail size in pixels.")] = 96,
    page_size: Annotated[int, typer.Option("--page-size", min=1, help="Queries per page.")] = 25,
    no_labels: Annotated[
        bool, typer.Option("--no-labels", help="Do not mark results right or wrong.")
    ] = False,
    query_labels: QLabelsOpt = None,
    gallery_labels: GLabelsOpt = None,
    title: Annotated[str | None, typer.Option("--title", help="Page title.")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Write a self-contained HTML page: each query beside its ranked thumbnails."""
    from .report import report_from_json

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


@app.command("compare")
@_friendly
def compare_command(
    query: QueryArg,
    gallery: GalleryArg,
    models: Annotated[list[str], typer.Option("--model", "-m", help="A model name or checkpoint (repeat).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Folder for the table and chart.")] = Path(
        "comparison"
    ),
    no_chart: Annotated[bool, typer.Option("--no-chart", help="Skip the bar chart PNG.")] = False,
    metric: MetricOpt = None,
    device: DeviceOpt = "auto",
    runtime: RuntimeOpt = "auto",
    batch_size: BatchOpt = None,
    workers: WorkersOpt = None,
    quiet: QuietOpt = False,
    no_cache: NoCacheOpt = False,
    cache_dir: CacheDirOpt = None,
    query_labels: QLabelsOpt = None,
    gallery_labels: GLabelsOpt = None,
) -> None:
    """Evaluate several methods on the same labelled split: Markdown and CSV table, bar chart."""
    from .compare import compare

    if output.exists() and not output.is_dir():
        raise InputError(f"-o {output}: is a file; compare writes a folder (table and chart)")

    options = ExtractOptions(
        device=device,
        runtime=runtime,
        batch_size=batch_size,
        num_workers=workers,
        progress=not quiet,
        cache_dir=cache_dir,
        use_cache=not no_cache,
    )
    table = compare(
        query,
        gallery,
        models,
        output,
        options=options,
        metric=metric,
        query_labels=query_labels,
        gallery_labels=gallery_labels,
        chart=not no_chart,
    )
    print((output / "comparison.md").read_text(encoding="utf-8"))
    for path in table.files.values():
        err.print(f"wrote {path}")


@app.command("serve")
@_friendly
def serve_command(
    index: Annotated[Path, typer.Argument(help="Index folder to serve.")],
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 8000,
    k: Annotated[int, typer.Option("-k", min=1, help="Default results per search.")] = 10,
    max_k: Annotated[int, typer.Option("--max-k", min=1, help="Most results a request may ask for.")] = 100,
    max_upload_mb: Annotated[
        float, typer.Option("--max-upload-mb", min=0.001, help="Upload size cap (413 past it).")
    ] = 20.0,
    max_pixels: Annotated[int, typer.Option("--max-pixels", min=1, help="Largest image accepted.")] = 50_000_000,
    device: DeviceOpt = "auto",
    runtime: RuntimeOpt = "auto",
    title: Annotated[str | None, typer.Option("--title", help="Page title.")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
    max_decodes: Annotated[
        int | None,
        typer.Option("--max-decodes", min=1, help="Uploads decoded at once (default: the cores, at most 4)."),
    ] = None,
    max_waiting: Annotated[
        int | None,
        typer.Option("--max-waiting", min=0, help="Searches that may wait for a slot (default 4 x max-decodes)."),
    ] = None,
    queue_timeout: Annotated[
        float,
        typer.Option("--queue-timeout", min=0.001, help="Seconds a search waits for a slot before 503."),
    ] = 30.0,
) -> None:
    """Serve an index over HTTP: POST /search, a search page at /, /health and /docs."""
    import uvicorn

    levels = ("critical", "error", "warning", "info", "debug", "trace")
    if log_level.lower() not in levels:
        raise InputError(f"--log-level: unknown level {log_level!r}; choose one of {', '.join(levels)}")
    log_level = log_level.lower()

    from .server import create_app

    app_ = create_app(
        index,
        k=k,
        max_k=max_k,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        max_pixels=max_pixels,
        device=device,
        runtime=runtime,
        title=title,
        max_decodes=max_decodes,
        max_waiting=max_waiting,
        queue_timeout=queue_timeout,
    )
    err.print(f"serving {index} on http://{host}:{port}/ (API docs at /docs)")
    uvicorn.run(app_, host=host, port=port, log_level=log_level)


if __name__ == "__main__":  # pragma: no cover
    app()
