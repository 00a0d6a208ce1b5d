"""Dedup at scale: a million synthetic clustered vectors through an approximate index.

Plants clusters of 2-5 near copies (a unit centre plus Gaussian noise) among random singletons,
then runs exactly the dedup path of ``lookalike dedup``: an in-memory :class:`GalleryIndex`
(``--backend dedup``, the default: what ``lookalike dedup`` builds for a folder of that size,
``lookalike.dedup.default_backend``; or any spec, e.g. ``auto``, ``ivfsq8``, ``hnsw``), ``search_pairs`` (k neighbours per vector, in blocks,
cut at the threshold), and ``group_pairs`` (components, cliques, complete linkage, with exact
completion of non-clique components). Reports wall time per phase, peak memory (max RSS) and
how many planted clusters came back exactly.

    OMP_NUM_THREADS=1 python benchmarks/dedup_scale.py --n 200000
    OMP_NUM_THREADS=2 python benchmarks/dedup_scale.py --n 1000000 --json out/dedup-1m.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np

from lookalike.dedup import Threshold, group_pairs, in_memory_index, pairs_among, search_pairs


def peak_gb() -> float:
    """Peak resident memory of this process so far (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def synthetic(
    n: int, dim: int, clustered_share: float, noise: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(vectors (n, dim) L2-normalised float32, cluster of each row or -1), rows shuffled."""
    rng = np.random.default_rng(seed)
    sizes = []
    while sum(sizes) < clustered_share * n:
        sizes.append(int(rng.integers(2, 6)))
    sizes = np.array(sizes)
    n_clustered = int(sizes.sum())
    truth = np.concatenate([np.repeat(np.arange(len(sizes)), sizes), np.full(n - n_clustered, -1)])
    vectors = np.empty((n, dim), dtype=np.float32)
    centres = rng.normal(size=(len(sizes), dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors[:n_clustered] = centres[truth[:n_clustered]] + noise * rng.normal(size=(n_clustered, dim))
    vectors[n_clustered:] = rng.normal(size=(n - n_clustered, dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    order = rng.permutation(n)
    return vectors[order], truth[order]


def main() -> None:
    """Run one scale measurement and print (and optionally write) its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument(
        "--backend",
        default="dedup",
        help="dedup (lookalike dedup's choice), auto, exact, hnsw, ivfsq8, faiss:<factory>",
    )
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threshold", type=float, default=0.85)
    parser.add_argument("--clustered", type=float, default=0.2, help="share of vectors in planted clusters")
    parser.add_argument("--noise", type=float, default=0.03)
    parser.add_argument("--nprobe", type=int, default=None, help="IVF lists probed (default: the backend's)")
    parser.add_argument(
        "--ef-search", type=int, default=None, help="HNSW candidates (default: the backend's)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    times: dict[str, float] = {}
    t = time.perf_counter()
    vectors, truth = synthetic(args.n, args.dim, args.clustered, args.noise, args.seed)
    times["generate_s"] = time.perf_counter() - t

    t = time.perf_counter()
    names = [f"v{i}" for i in range(args.n)]
    index = in_memory_index(vectors, names, None if args.backend == "dedup" else args.backend)
    times["index_build_s"] = time.perf_counter() - t
    if args.nprobe is not None:
        index.backend.nprobe = args.nprobe
    if args.ef_search is not None:
        index.backend.ef_search = args.ef_search

    cut = Threshold(args.threshold, "cosine")
    t = time.perf_counter()
    pairs = search_pairs(index, vectors, args.k + 1, cut)
    times["search_pairs_s"] = time.perf_counter() - t

    t = time.perf_counter()
    grouping = group_pairs(args.n, pairs, complete=lambda m: pairs_among(m, vectors, vectors, cut))
    times["grouping_s"] = time.perf_counter() - t

    planted = {}
    for row in np.flatnonzero(truth >= 0):
        planted.setdefault(int(truth[row]), []).append(int(row))
    planted_sets = {tuple(sorted(v)) for v in planted.values()}
    found_sets = {tuple(g.tolist()) for g in grouping.groups}
    exact = len(planted_sets & found_sets)
    figures = {
        "n": args.n,
        "dim": args.dim,
        "backend": index.backend.spec,
        "k": args.k,
        "nprobe": getattr(index.backend, "nprobe", None) if args.nprobe is None else args.nprobe,
        "ef_search": args.ef_search,
        "threshold": args.threshold,
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "pairs": len(pairs),
        "groups_found": len(grouping.groups),
        "clusters_planted": len(planted_sets),
        "clusters_recovered_exactly": exact,
        "recovered_share": round(exact / max(1, len(planted_sets)), 4),
        "spurious_groups": len(found_sets - planted_sets),
        **{k: round(v, 2) for k, v in times.items()},
        "total_s": round(sum(times.values()), 2),
        "peak_rss_gb": round(peak_gb(), 3),
    }
    print(json.dumps(figures, indent=2))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
