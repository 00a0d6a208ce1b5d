"""`index build`, `index add` and `index remove` in images/s against a Milvus-backed index, beside exact.

    python benchmarks/milvus.py [--gallery benchmarks/data/fmnist/gallery] [--add benchmarks/data/fmnist/query]
                                [--model pixels] [--backends exact milvus milvus:IVF_SQ8] [--limit 0]

For each backend, in one run and through the public API (what the commands do): build an index of
``--gallery`` (extraction included), add the images of ``--add`` (``GalleryIndex.add_images``: embed,
hash, write, save a generation) and remove them again (``remove_paths``, save). The extraction of
the added images alone (``lookalike.extract.embed``) is timed too, so that the index's own share of
an add is the difference. Milvus backends write into a Milvus Lite database inside the index folder,
in a temporary folder removed afterwards. ``pixels`` keeps the model cheap so that the index's part
shows; a real model's extraction would dominate every figure.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from hostinfo import cpu_name

from lookalike import ExtractOptions, ImageSet
from lookalike.extract import embed
from lookalike.features import create_extractor
from lookalike.index import GalleryIndex, build_index

HERE = Path(__file__).resolve().parent


def timed(fn):  # noqa: ANN001, ANN201 - a benchmark helper
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    """Run the benchmark and print one table row per backend."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gallery", type=Path, default=HERE / "data" / "fmnist" / "gallery")
    parser.add_argument("--add", type=Path, default=HERE / "data" / "fmnist" / "query")
    parser.add_argument("--model", default="pixels")
    parser.add_argument("--backends", nargs="+", default=["exact", "milvus", "milvus:IVF_SQ8"])
    parser.add_argument("--limit", type=int, default=0, help="use only the first N gallery images (0: all)")
    args = parser.parse_args()
    opts = ExtractOptions(progress=False, device="cpu", use_cache=False)
    gallery = ImageSet.from_path(args.gallery)
    if args.limit:
        gallery = gallery.subset(range(min(args.limit, len(gallery))))
    added = ImageSet.from_path(args.add)
    extractor = create_extractor(args.model)
    embed(extractor, added.subset(range(min(64, len(added)))), opts, label="images")  # warm up first
    _, extract_s = timed(lambda: embed(extractor, added, opts, label="images"))
    rows = []
    for spec in args.backends:
        gc.collect()
        work = Path(tempfile.mkdtemp(prefix="bench-milvus-"))
        try:
            _, build_s = timed(
                lambda spec=spec, work=work: build_index(
                    gallery, work / "g.index", model=args.model, backend=spec, options=opts
                )
            )
            index = GalleryIndex.open(work / "g.index")
            report, add_s = timed(lambda index=index: index.add_images(added, opts))
            n_added = len(report.added) + len(report.replaced)
            names = report.added + report.replaced
            (removed, _), remove_s = timed(
                lambda index=index, names=names: index.remove_paths(names, confirm=True)
            )
            rows.append(
                (spec, index.backend.spec, len(gallery), build_s, n_added, add_s, len(removed), remove_s)
            )
            print(
                f"{spec}: build {len(gallery) / build_s:.0f} img/s, add {n_added / add_s:.0f} img/s, "
                f"remove {len(removed) / remove_s:.0f} img/s",
                flush=True,
            )
            close = getattr(index.backend, "close", None)
            if close is not None:
                close()
            del index
        finally:
            gc.collect()
            shutil.rmtree(work, ignore_errors=True)
    print(
        f"\ncommand: python {' '.join(sys.argv)}\nmachine: {cpu_name()}, {os.cpu_count()} cores, "
        f"{platform.platform()}; 1-minute load average {os.getloadavg()[0]:.1f} at the end"
    )
    print(
        f"model {args.model}; gallery {len(gallery):,} images ({args.gallery}); added then removed "
        f"{len(added):,} images ({args.add}); extracting those alone: {len(added) / extract_s:.0f} img/s"
    )
    print("| backend | spec | build img/s | add img/s (embed + save) | remove img/s (+ save) |")
    print("| --- | --- | --- | --- | --- |")
    for spec, resolved, n, build_s, n_added, add_s, n_removed, remove_s in rows:
        print(
            f"| {spec} | `{resolved}` | {n / build_s:,.0f} | {n_added / add_s:,.0f} | {n_removed / remove_s:,.0f} |"
        )


if __name__ == "__main__":
    main()
