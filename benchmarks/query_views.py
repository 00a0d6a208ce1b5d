"""What --query-scales and --gallery-norm cost at search time on a large gallery: four vectors per
query searched through the best-of-views merge, against one; and the gallery normalisation's
offsets (a k-NN of every gallery vector among the others, once per gallery) and its search.

    python benchmarks/query_views.py [--gallery 100000] [--queries 10000] [--dim 128]

Random unit vectors (the k-NN cost depends on sizes, not on content) in an exact index, searched
for the top 10: once with one vector per query, once with four rows per query as plain rows, and
once through ``RegionIndex`` (one region per gallery image, four views per query), which adds the
merge of each query's views. Then the offsets of ``--gallery-norm 10`` (an exact k-NN of every
gallery vector, what a search pays once per gallery), and a search of the gallery's rows with the
offset coordinate. Prints seconds for each.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lookalike.index import GalleryIndex
from lookalike.index.regions import RegionIndex
from lookalike.steps import GalleryNorm, l2_normalise

VIEWS = 4  # the average and three scales


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gallery", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=128)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    gallery = l2_normalise(rng.normal(size=(args.gallery, args.dim)).astype(np.float32))
    views = l2_normalise(rng.normal(size=(args.queries * VIEWS, args.dim)).astype(np.float32))
    names = [str(i) for i in range(args.gallery)]
    index = GalleryIndex.from_embeddings(gallery, names)
    timed = {}
    for label, searched, queries in (
        ("one vector per query", index, views[::VIEWS]),
        (f"{VIEWS} rows per query, no merge", index, views),
        (f"{VIEWS} views per query (RegionIndex)", RegionIndex(index, 1, VIEWS, names), views),
    ):
        start = time.perf_counter()
        searched.search(queries, 10)
        timed[label] = time.perf_counter() - start
        print(f"{label}: {timed[label]:.2f} s for {args.queries} queries", flush=True)
    start = time.perf_counter()
    offsets = GalleryNorm(10).offsets(gallery)
    timed["gallery norm offsets, k=10"] = time.perf_counter() - start
    print(f"gallery norm offsets, k=10: {timed['gallery norm offsets, k=10']:.2f} s for {args.gallery} vectors")
    normed = GalleryIndex.from_embeddings(GalleryNorm.gallery_rows(gallery, offsets), names)
    start = time.perf_counter()
    normed.search(GalleryNorm.query_rows(views[::VIEWS]), 10)
    timed["one vector per query, gallery norm"] = time.perf_counter() - start
    print(f"one vector per query, gallery norm: {timed['one vector per query, gallery norm']:.2f} s", flush=True)
    base = timed["one vector per query"]
    print(" ".join(f"{label}: {seconds / base:.1f}x" for label, seconds in timed.items()))


if __name__ == "__main__":
    main()
