"""The ``lookalike index`` commands: build, add, remove, info."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ..config import SearchConfig
from ..errors import NothingToProcessError
from ..extract import ExtractOptions
from ..images import ImageSet
from ..index import GalleryIndex, build_index
from ..index.milvus import with_uri
from ._app import err, friendly, index_app, out, shown
from .options import EXTRACTION, INDEX_CONFIG, GalleryArg, GalleryLabels, uses
from .output import print_skipped


@index_app.command("build")
@friendly
@uses(INDEX_CONFIG)
def index_build(
    gallery: GalleryArg,
    output: Annotated[Path, typer.Option("-o", "--output", help="Index folder to write.")],
    backend: Annotated[
        str,
        typer.Option(
            "--backend",
            help="auto, exact, flat, hnsw, hnswsq8, ivfpq, ivfsq8, faiss:<factory string>, milvus or milvus:<index type>.",
        ),
    ] = "auto",
    milvus_uri: Annotated[
        str | None,
        typer.Option(
            "--milvus-uri",
            help="With --backend milvus: a Milvus server, http://HOST:19530 (token in $LOOKALIKE_MILVUS_TOKEN); "
            "default a Milvus Lite database in the index folder.",
        ),
    ] = None,
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
    gallery_labels: GalleryLabels = None,
    *,
    config: SearchConfig,
) -> None:
    """Extract a gallery once and save it as an index that `search` can use.

    --whiten and --dba are fitted on the gallery here and stored with the index: searches apply
    them without refitting, and images added later get the same whitening."""
    index, emb = build_index(
        gallery,
        output,
        model=config.model_name,
        model_options=config.model_options,
        backend=with_uri(backend, milvus_uri),
        metric=config.metric or "cosine",
        options=config.extract,
        resume=resume,
        force=force,
        labels_csv=gallery_labels,
        ray_address=ray,
        postprocess=config.index_postprocess(),
        regions=config.refinement.regions,
    )
    if emb is None:
        err.print(f"{output}: the index is complete ({len(index)} images); nothing to resume")
        return
    print_skipped(emb.skipped)
    if config.extract.progress:
        resumed = f" ({emb.n_cached} recovered from the interrupted build)" if emb.n_cached else ""
        err.print(
            f"indexed {len(index)} images{resumed} with {index.model['name']} into {output} "
            f"[{index.backend.spec}, {index.disk_bytes() / 1e6:.1f} MB]"
        )


@index_app.command("add")
@friendly
@uses(EXTRACTION)
def index_add(
    index: Annotated[Path, typer.Argument(help="Index folder.")],
    images: Annotated[list[Path], typer.Argument(help="Images, folders or lists to add.")],
    *,
    extract: ExtractOptions,
) -> None:
    """Add images (new paths are added, changed files replaced, unchanged ones left alone)."""
    gallery = GalleryIndex.open(index)
    options = ExtractOptions(**{**extract.__dict__, "use_cache": False})
    readable, skipped = 0, 0
    for source in images:
        report = gallery.add_images(ImageSet.from_path(source), options)
        print_skipped(report.skipped)
        readable += len(report.added) + len(report.replaced) + len(report.unchanged)
        skipped += len(report.skipped)
        err.print(
            f"{shown(source)}: {len(report.added)} added, {len(report.replaced)} replaced, "
            f"{len(report.unchanged)} already present"
        )
    err.print(f"{shown(index)}: {len(gallery)} images")
    if readable == 0 and skipped:  # the same exit code as `search` and `index build` for this
        raise NothingToProcessError(
            f"none of the {skipped} image(s) given could be read; the index is unchanged"
        )


@index_app.command("remove")
@friendly
def index_remove(
    index: Annotated[Path, typer.Argument(help="Index folder.")],
    paths: Annotated[
        list[str], typer.Argument(help="Paths (relative to the gallery root, or absolute; folders too).")
    ],
    yes: Annotated[bool, typer.Option("--yes", help="Confirm removing more than half of the index.")] = False,
) -> None:
    """Remove images from an index by path (only paths inside the gallery root; the files
    themselves are never touched)."""
    gallery = GalleryIndex.open(index)
    removed, unmatched = gallery.remove_paths(paths, confirm=yes)
    for arg in unmatched:
        err.print(f"not in the index: {shown(arg)}")
    err.print(f"removed {len(removed)} image(s); {len(gallery)} left")


@index_app.command("info")
@friendly
def index_info(
    index: Annotated[Path, typer.Argument(help="Index folder.")],
    check_recall: Annotated[
        bool, typer.Option("--check-recall", help="Measure recall@10 against exact search.")
    ] = False,
) -> None:
    """Describe an index: model, metric, backend, size; optionally its recall@10."""
    gallery = GalleryIndex.open(index)
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
    table = Table(show_header=False)
    for name, value in rows:
        table.add_row(name, shown(value))
    out.print(table)
