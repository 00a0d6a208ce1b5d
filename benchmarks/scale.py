"""`fmnist-scale`: a 69,000-image gallery as a saved index against a plain folder search.

    python benchmarks/datasets.py fmnist        # once
    python benchmarks/scale.py [--model pixels] [--backend exact]

Builds `lookalike index build` over gallery-scale.csv (the 9,000 test gallery images plus the
60,000 training images), then searches the 1,000 queries against the index and against the same
gallery given as images (features from the cache, so only the search differs). Reports build
time, size on disk, search time, and whether the two result lists are identical.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from pathlib import Path

import lookalike
from lookalike import ExtractOptions
from lookalike.index import build_index

HERE = Path(__file__).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=HERE / "data" / "fmnist")
    parser.add_argument("--model", default="pixels")
    parser.add_argument("--backend", default="exact")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        opts = ExtractOptions(progress=False, cache_dir=Path(tmp) / "cache")
        gallery = args.data / "gallery-scale.csv"
        start = time.perf_counter()
        index, _ = build_index(gallery, Path(tmp) / "scale.index", model=args.model, backend=args.backend, options=opts)
        build = time.perf_counter() - start
        size = index.disk_bytes() / 1e6
        start = time.perf_counter()
        with_index = lookalike.evaluate(args.data / "query", Path(tmp) / "scale.index", k=10, options=opts)
        t_index = time.perf_counter() - start
        lookalike.search(args.data / "query", gallery, model=args.model, k=10, options=opts)  # fill the cache
        start = time.perf_counter()
        plain = lookalike.evaluate(args.data / "query", gallery, model=args.model, k=10, options=opts)
        t_plain = time.perf_counter() - start
        same = with_index.to_json(scores=True) == plain.to_json(scores=True)
        shutil.rmtree(Path(tmp) / "scale.index")
    print(f"machine: {platform.machine()}; {len(index):,} gallery images, 1,000 queries, model {args.model}, backend {args.backend}")
    print("| build s | size on disk MB | search + evaluate s (index) | search + evaluate s (images, cached features) | identical results | mAP |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(f"| {build:.1f} | {size:.1f} | {t_index:.2f} | {t_plain:.2f} | {'yes' if same else 'NO'} | {with_index.metrics.mean_ap:.3f} |")


if __name__ == "__main__":
    main()
