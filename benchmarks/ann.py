"""Index backends at scale: synthetic, clustered, normalised vectors (not uniform noise).

    python benchmarks/ann.py [--n 1000000] [--dim 512] [--queries 1000] [--backends exact ivfpq ivfsq8 hnsw]
    python benchmarks/ann.py --backends exact ivf2048sq8 ivf4096sq8 hnswsq8 --sweep   # search settings too
    python benchmarks/ann.py --backends exact auto milvus-hnsw milvus-ivfsq8   # Milvus Lite beside FAISS

For each backend: build time, memory (resident-set growth while building, and the serialised
index size), queries/s (1,000 queries searched as one batch, k=10) and recall@10 against exact
search. Milvus backends (``pip install -e ".[milvus]"``) write into a Milvus Lite database in a
temporary folder (its server runs in this process, so its memory counts); their build time includes
the upserts and waiting until Milvus has indexed every row, and they also report add and remove
throughput (``--updates`` vectors, each followed by a save as ``index add``/``remove`` do). Milvus Lite
3.2.2 drops the build parameters pymilvus 3.0.2 sends (M, efConstruction, nlist: it reads only a
JSON ``params`` pair) and builds with its own defaults; search parameters do reach it.
Data: 2,000 clusters on the unit sphere; within each, points spread along the cluster's own
16-dimensional subspace (norm ~1.4 around a unit centre) plus a little isotropic noise, since
features of views of one thing vary along few directions; queries come from the same
distribution but are not in the index.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from lookalike.index import create_backend

SPECS = {
    "exact": "exact",
    "ivfpq": "faiss:IVF1024,PQ64",
    "ivfsq8": "faiss:IVF1024,SQ8",
    "ivf2048sq8": "faiss:IVF2048,SQ8",
    "ivf4096sq8": "faiss:IVF4096,SQ8",
    "ivf4096pq": "faiss:IVF4096,PQ64",
    "hnsw": "faiss:HNSW32",
    "hnswsq8": "faiss:HNSW32,SQ8",
    "hnswfp16": "faiss:HNSW32,SQfp16",
    "auto": "ivfsq8",  # what `auto` picks above 200,000 vectors: IVF<4 sqrt(n)>,SQ8
    "milvus-hnsw": "milvus:HNSW",
    "milvus-ivfsq8": "milvus:IVF_SQ8",
    "milvus-flat": "milvus:FLAT",
}
# --sweep: the search-time settings tried on each built index (the first of each is not the default)
NPROBES = (4, 8, 16, 32, 64, 128)
EF_SEARCHES = (64, 128, 256, 512)


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def clustered(n: int, dim: int, rng: np.random.Generator, centres: np.ndarray, bases: np.ndarray) -> np.ndarray:
    """Points around random centres, spread mostly within each cluster's own low-dimensional
    subspace (as features of views of one thing vary along few directions), plus a little
    isotropic noise; then normalised."""
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 50_000):
        m = min(50_000, n - start)
        which = rng.integers(0, len(centres), m)
        local = rng.standard_normal((m, bases.shape[1]), dtype=np.float32)
        spread = np.einsum("mk,mkd->md", local, bases[which]) * 0.35
        noise = rng.standard_normal((m, dim), dtype=np.float32) * (0.15 / np.sqrt(dim))
        x = centres[which] + spread + noise
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--backends", nargs="+", default=["exact", "ivfpq", "ivfsq8", "hnswsq8"])
    parser.add_argument("--sweep", action="store_true", help="also search with each nprobe / efSearch")
    parser.add_argument("--updates", type=int, default=10_000, help="vectors added then removed (Milvus backends)")
    parser.add_argument(
        "--overlap", action="store_true", help="clusters that share one 64-d subspace (a harder set for IVF)"
    )
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((2000, args.dim)).astype(np.float32)
    bases = rng.standard_normal((2000, 16, args.dim)).astype(np.float32) / np.sqrt(args.dim)
    if args.overlap:  # centres and spreads share one 64-d subspace: clusters overlap, as in real features
        shared = np.linalg.qr(rng.standard_normal((args.dim, 64)))[0].T.astype(np.float32)  # (64, dim)
        centres = centres[:, :64] @ shared + 0.1 * centres / np.sqrt(args.dim) * 8
        bases = bases[:, :, :64] @ shared * np.sqrt(args.dim / 64) + 0.3 * bases
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    data = clustered(args.n, args.dim, rng, centres, bases)
    queries = clustered(args.queries, args.dim, rng, centres, bases)
    ids = np.arange(args.n, dtype=np.int64)
    truth = None
    rows, updates = [], []
    for name in args.backends:
        gc.collect()
        before = rss_mb()
        start = time.perf_counter()
        index = create_backend(SPECS[name], args.dim, "cosine", args.n)
        folder = None
        if name == "exact":
            index.fill(data, ids)  # the exact backend searches the vectors in place
        else:
            index.add(data, ids)
        if name.startswith("milvus"):
            folder = Path(tempfile.mkdtemp(prefix="ann-milvus-"))
            index.save(folder, 1)
            wait_indexed(index)
        build = time.perf_counter() - start
        grown = rss_mb() - before
        if folder is not None:
            size = sum(f.stat().st_size for f in (folder / "milvus.db").rglob("*") if f.is_file()) / 1e6
        else:
            size = data.nbytes / 1e6 if name == "exact" else len(faiss.serialize_index(index.index)) / 1e6
        for setting in settings(index, args.sweep):
            start = time.perf_counter()
            found, _ = index.search(queries, 10)
            qps = len(queries) / (time.perf_counter() - start)
            if truth is None:
                truth = found if name == "exact" else create_exact_truth(data, queries)
            recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth, strict=True)]))
            rows.append((name, SPECS[name], setting, build, max(grown, 0.0), size, qps, recall))
            print(
                f"{name} {setting}: build {build:.1f} s, +{grown:.0f} MB RSS, size {size:.0f} MB, "
                f"{qps:.0f} q/s, recall@10 {recall:.4f}",
                flush=True,
            )
        if folder is not None:
            updates.append((name, *update_rates(index, folder, args.updates, args.n, rng, centres, bases)))
            print(f"{name}: add {updates[-1][1]:.0f} vectors/s, remove {updates[-1][2]:.0f} vectors/s", flush=True)
            index.close()
            shutil.rmtree(folder, ignore_errors=True)
        del index
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores; {args.n:,} x {args.dim} vectors, {args.queries} queries, k=10")
    print("| backend | spec | search setting | build s | memory MB (RSS growth) | index size MB | queries/s | recall@10 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, spec, setting, build, grown, size, qps, recall in rows:
        print(f"| {name} | `{spec}` | {setting} | {build:.1f} | {grown:.0f} | {size:.0f} | {qps:.0f} | {recall:.4f} |")
    if updates:
        print(f"\n| backend | add vectors/s ({args.updates:,} + save) | remove vectors/s ({args.updates:,} + save) |")
        print("| --- | --- | --- |")
        for name, added, removed in updates:
            print(f"| {name} | {added:.0f} | {removed:.0f} |")


def wait_indexed(index, timeout: float = 3600.0) -> None:
    """Block until Milvus has built its index over every row (building may go on after a flush)."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        info = index._client.describe_index(index.collection, "vector")
        if int(info.get("pending_index_rows", 0)) == 0 and info.get("state", "Finished") == "Finished":
            return
        time.sleep(0.5)


def update_rates(index, folder: Path, n: int, start_id: int, rng, centres, bases) -> tuple[float, float]:
    """(add, remove) vectors/s into a built Milvus backend, each batch followed by a save."""
    new = clustered(n, index.dim, rng, centres, bases)
    new_ids = np.arange(start_id, start_id + n, dtype=np.int64)
    start = time.perf_counter()
    index.add(new, new_ids)
    index.save(folder, 2)
    added = n / (time.perf_counter() - start)
    start = time.perf_counter()
    index.remove(new_ids)
    index.save(folder, 3)
    return added, n / (time.perf_counter() - start)


def settings(index, sweep: bool):
    """Set each search setting to try on ``index`` in turn, yielding its label ("default" first)."""
    faiss = __import__("faiss")
    yield "default" + _current(index, faiss)
    if not sweep or not hasattr(index, "factory"):
        return
    if "IVF" in index.factory:
        nlist = faiss.extract_index_ivf(index.index.index).nlist
        for nprobe in (p for p in NPROBES if p <= nlist):
            index.nprobe = nprobe
            yield f"nprobe {nprobe}"
    if "HNSW" in index.factory:
        for ef in EF_SEARCHES:
            index.ef_search = ef
            yield f"efSearch {ef}"


def _current(index, faiss) -> str:
    if not hasattr(index, "factory"):
        return ""
    inner = index.index.index
    if "IVF" in index.factory:
        return f" (nprobe {faiss.extract_index_ivf(inner).nprobe})"
    if "HNSW" in index.factory:
        return f" (efSearch {faiss.downcast_index(inner).hnsw.efSearch})"
    return ""


def create_exact_truth(data: np.ndarray, queries: np.ndarray) -> np.ndarray:
    exact = create_backend("exact", data.shape[1], "cosine", len(data))
    exact.fill(data, np.arange(len(data), dtype=np.int64))
    return exact.search(queries, 10)[0]


if __name__ == "__main__":
    main()
