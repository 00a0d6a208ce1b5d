"""What ``GalleryIndex.search`` costs beyond the backend's own search, at a million items.

    python benchmarks/index_overhead.py [--n 1000000] [--dim 64] [--queries 2000] [--k 100]
                                        [--backend faiss:IVF1024,Flat]

One index of ``n`` clustered unit vectors behind ``faiss:IVF1024,Flat`` (or ``--backend``); the same
single-vector queries (as the server sends them, one per request) go to the backend directly and
through ``GalleryIndex.search`` (id -> item row mapping), taking turns, best of three each. The
dimension only changes the backend's share, not the overhead, so a small one keeps the run short.
Prints median and p95 per query of both, the difference of the medians and of the p95s, and the
percentiles of the per-query difference (each query's own backend time subtracted), with the
machine, its load average and the cores other jobs took while timing.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import faiss
import numpy as np
from hostinfo import cpu_name
from server_latency import CpuShare

from lookalike.index import GalleryIndex, create_backend


def clustered(n: int, d: int, seed: int) -> np.ndarray:
    """Unit vectors around 1,000 random centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, d)).astype(np.float32)
    x = centres[rng.integers(0, 1000, n)] + 0.3 * rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def interleaved(fns: list, queries: np.ndarray, repeats: int = 3) -> np.ndarray:
    """Seconds of each ``fn(q)`` per single query, best of ``repeats``, the functions taking turns
    on each query so that load on the machine falls on both alike."""
    out = np.full((len(fns), len(queries)), np.inf)
    for i, q in enumerate(queries):
        for _ in range(repeats):
            for j, fn in enumerate(fns):
                t = time.perf_counter()
                fn(q[None])
                out[j, i] = min(out[j, i], time.perf_counter() - t)
    return out


def load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--backend", default="faiss:IVF1024,Flat", help="any create_backend spec")
    args = parser.parse_args()
    load_start = load()
    vectors = clustered(args.n, args.dim, 0)
    queries = clustered(args.queries, args.dim, 1)
    backend = create_backend(args.backend, args.dim, "cosine", args.n)
    backend.add(vectors, np.arange(args.n, dtype=np.int64))
    items = [{"id": i, "path": f"img/{i:07d}.jpg"} for i in range(args.n)]
    model = {"name": "synthetic", "options": {}, "dim": args.dim}
    index = GalleryIndex(Path("."), Path("."), model, "cosine", backend, vectors, items)
    fns = [lambda q: backend.search(q, args.k), lambda q: index.search(q, args.k)]
    interleaved(fns, queries[:50])  # warm up both paths (and build the id lookup once)
    timed_start = load()
    share = CpuShare()
    raw, full = interleaved(fns, queries)
    cpu = share.stop()
    ms = 1e3
    diff = full - raw
    print(
        f"machine: {cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"numpy {np.__version__}, FAISS {faiss.__version__} ({faiss.omp_get_max_threads()} OpenMP threads); "
        f"1-minute load average {load_start:.2f} at the start, {timed_start:.2f} when timing began, "
        f"{load():.2f} at the end; while timing {cpu['cores busy']:.2f} cores busy, {cpu['client']:.2f} of them "
        f"this benchmark, {cpu['others']:.2f} other jobs, steal {cpu['steal']:.2f}"
    )
    print(
        f"n={args.n:,} dim={args.dim} k={args.k} backend={backend.spec} queries={args.queries} "
        "(one per call, best of 3, interleaved)"
    )
    print(
        f"backend search       median {np.median(raw) * ms:.3f} ms  p95 {np.percentile(raw, 95) * ms:.3f} ms"
    )
    print(
        f"GalleryIndex.search  median {np.median(full) * ms:.3f} ms  p95 {np.percentile(full, 95) * ms:.3f} ms"
    )
    print(
        f"overhead             median {(np.median(full) - np.median(raw)) * ms:.3f} ms  "
        f"p95 {(np.percentile(full, 95) - np.percentile(raw, 95)) * ms:.3f} ms  (difference of the percentiles)"
    )
    print(
        f"per-query overhead   median {np.median(diff) * ms:.3f} ms  p95 {np.percentile(diff, 95) * ms:.3f} ms  "
        f"p99 {np.percentile(diff, 99) * ms:.3f} ms  max {diff.max() * ms:.3f} ms"
    )


if __name__ == "__main__":
    main()
