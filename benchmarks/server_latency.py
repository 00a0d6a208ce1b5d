"""The server's latency for one upload against a 1,000,000-vector index.

    python benchmarks/server_latency.py [--n 1000000] [--requests 300] [--warmup 20] [--ks 10 100]
                                        [--folder benchmarks/out/server-1m.index] [--port 8765]
                                        [--backend auto]   # e.g. milvus, for a Milvus-backed index

Builds once (and reuses afterwards) a saved index of ``n`` synthetic clustered unit vectors in the
dimension of the default model (efficientnet-lite0, 1,280), made through the public API: a
``GalleryIndex`` with the model's ``describe()``, the ``auto`` backend (IVF-SQ8 above 200,000
vectors), ``save()``. The server then loads the index's real model, as ``lookalike serve`` would.
It runs in a subprocess (``lookalike.server.serve``); after ``--warmup`` requests, ``--requests``
sequential ``POST /search`` uploads per k (one at a time; the ks take turns, request by request,
so load on the machine falls on all alike) of a ~500 px JPEG of scikit-image's astronaut, re-encoded
several ways (quality, chroma subsampling, crop, mirror) so no two consecutive uploads are the same
bytes. Reports median, p95 and p99 of the full HTTP round trip (httpx, one kept-alive connection)
and of the server's own ``seconds`` field (decode + embed + search), and how many cores the server,
this client and other jobs on the machine used meanwhile. Then, unless ``--no-profile``, the same
uploads in process through ``lookalike.server.Searcher``: decode, model and index search timed
apart, to tell where the time goes, and the whole path with FAISS on its default OpenMP threads
and on one.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from hostinfo import cpu_name
from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parent
DIM = 1280  # efficientnet-lite0
MODEL = "efficientnet-lite0"


def load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def threading_env() -> str:
    """The thread settings the server inherits (OpenMP: FAISS; torch and ONNX Runtime size their pools apart)."""
    keys = sorted(
        k for k in os.environ if k.startswith(("OMP_", "GOMP_", "KMP_")) or k.endswith("_NUM_THREADS")
    )
    return " ".join(f"{k}={os.environ[k]}" for k in keys)


class CpuShare:
    """Cores busy over a stretch of time: all of them (from /proc/stat), this process's and the
    server's (``pid``, when given), so the rest is what other jobs on the machine took; and the
    hypervisor's steal. Linux only."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid
        self.start = self._read()

    def _read(self) -> tuple[float, float, float, float, float]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + fields[4]
        steal = fields[7] if len(fields) > 7 else 0
        total = sum(fields[:8])
        server = self._process(self.pid) if self.pid is not None else 0
        return total - idle - steal, steal, self._process(os.getpid()), server, time.monotonic()

    @staticmethod
    def _process(pid: int) -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime, all threads

    def stop(self) -> dict[str, float]:
        end = self._read()
        tick = os.sysconf("SC_CLK_TCK")
        seconds = end[4] - self.start[4]
        busy, steal, client, server = ((end[i] - self.start[i]) / tick / seconds for i in range(4))
        others = max(0.0, busy - client - server)
        return {"cores busy": busy, "server": server, "client": client, "others": others, "steal": steal}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


# ------------------------------------------------------------------ the index


def clustered_into(out: np.ndarray, seed: int, clusters: int = 1000, chunk: int = 50_000) -> None:
    """Fill ``out`` (n, d) with unit vectors around ``clusters`` random centres, in chunks (float32
    throughout: a million 1,280-d float64 draws would be 10 GB)."""
    n, d = out.shape
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = centres[rng.integers(0, clusters, m)] + 0.3 * rng.standard_normal((m, d), dtype=np.float32)
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)


def backend_spec(backend: str, n: int) -> str:
    """The spec ``--backend`` resolves to for ``n`` vectors (what a built index's manifest records:
    ``auto`` becomes exact or a sized FAISS factory); a bad one exits with one line."""
    from lookalike.errors import InputError
    from lookalike.index import create_backend

    try:
        return create_backend(backend, DIM, "cosine", n).spec
    except InputError as exc:
        sys.exit(f"--backend {backend}: {exc}")


def existing(folder: Path, n: int, backend: str = "auto") -> dict | None:
    """The manifest of a finished index of ``n`` efficientnet-lite0 vectors in ``folder`` made with
    ``backend`` (compared as resolved specs, so ``--backend milvus`` never reuses a FAISS index),
    else None."""
    try:
        manifest = json.loads((folder / "lookalike-index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = (
        manifest.get("count") == n
        and manifest.get("dim") == DIM
        and manifest.get("model", {}).get("name") == MODEL
        and manifest.get("backend") == backend_spec(backend, n)
    )
    return manifest if ok else None


def build(folder: Path, n: int, backend: str = "auto") -> dict:
    """Build and save the index (vectors generated into a temporary .npy memory map beside it, so
    their 5 GB sit in the page cache rather than in this process) with ``backend``."""
    from lookalike.features import create_extractor
    from lookalike.index import GalleryIndex, create_backend

    folder.mkdir(parents=True, exist_ok=True)
    scratch = folder.parent / (folder.name + ".vectors.npy")
    timings = {}
    t = time.perf_counter()
    vectors = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.float32, shape=(n, DIM))
    clustered_into(vectors, seed=0)
    vectors.flush()
    timings["generate s"] = time.perf_counter() - t
    t = time.perf_counter()
    backend = create_backend(backend, DIM, "cosine", n)
    backend.add(vectors, np.arange(n, dtype=np.int64))  # trains on a seeded sample first
    timings["train + add s"] = time.perf_counter() - t
    items = [{"id": i, "path": f"img/{i:07d}.jpg", "key": None, "sha1": None} for i in range(n)]
    model = create_extractor(MODEL).describe()
    index = GalleryIndex(folder, folder.resolve() / "gallery", model, "cosine", backend, vectors, items)
    t = time.perf_counter()
    index.save()
    timings["save s"] = time.perf_counter() - t
    del index, vectors
    scratch.unlink()
    timings["builder peak RSS GB"] = peak_rss_gb()
    print("built", folder, backend.spec, ", ".join(f"{k} {v:.1f}" for k, v in timings.items()), flush=True)
    return existing(folder, n, backend.spec)


# ------------------------------------------------------------------ the uploads


def uploads(count: int = 12) -> list[bytes]:
    """``count`` JPEGs of the astronaut at ~500 px: qualities, subsampling, crops and mirrors differ."""
    from lookalike.samples import sample_photo

    photo = sample_photo("astronaut")  # 512 x 512
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        img = photo
        if i % 3:
            dx, dy = rng.integers(0, 24, 2)
            img = img.crop((dx, dy, 512 - (23 - dx), 512 - (23 - dy)))
        if i % 2:
            img = ImageOps.mirror(img)
        img = img.resize((500, 500), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=(95, 85, 75, 65)[i % 4], subsampling=(0, 2)[(i // 4) % 2])
        out.append(buf.getvalue())
    return out


def percentiles(values: list[float]) -> tuple[float, float, float]:
    a = np.asarray(values) * 1e3
    return float(np.median(a)), float(np.percentile(a, 95)), float(np.percentile(a, 99))


def serve_and_measure(folder: Path, port: int, ks: list[int], requests: int, warmup: int, jpegs: list[bytes]):
    import httpx

    code = f"from lookalike.server import serve; serve({str(folder)!r}, port={port}, log_level='warning')"
    with tempfile.TemporaryFile() as log:
        t = time.perf_counter()
        server = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(base_url=base, timeout=60.0) as client:
                deadline = time.monotonic() + 600
                while True:
                    if server.poll() is not None:
                        log.seek(0)
                        raise RuntimeError(
                            f"the server exited ({server.returncode}):\n{log.read().decode(errors='replace')}"
                        )
                    try:
                        health = client.get("/health")
                        if health.status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    if time.monotonic() > deadline:
                        raise RuntimeError("the server did not answer /health within 600 s")
                    time.sleep(0.25)
                startup = time.perf_counter() - t
                print(f"server up in {startup:.1f} s: {health.json()}", flush=True)

                def post(i: int, k: int) -> tuple[float, float, int]:
                    body = jpegs[i % len(jpegs)]
                    t0 = time.perf_counter()
                    resp = client.post(
                        "/search",
                        params={"k": k},
                        files={"file": (f"q{i % len(jpegs)}.jpg", body, "image/jpeg")},
                    )
                    wall = time.perf_counter() - t0
                    resp.raise_for_status()
                    doc = resp.json()
                    return wall, float(doc["seconds"]), len(doc["results"])

                for i in range(warmup):
                    post(i, ks[i % len(ks)])
                timed_load = load()
                share = CpuShare(server.pid)
                walls = {k: [] for k in ks}
                own = {k: [] for k in ks}
                counts = {k: set() for k in ks}
                for i in range(requests):
                    for k in ks:
                        wall, seconds, got = post(i, k)
                        walls[k].append(wall)
                        own[k].append(seconds)
                        counts[k].add(got)
                cpu = share.stop()
                rss = _rss_gb(server.pid)
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    return startup, timed_load, walls, own, counts, rss, cpu


def _rss_gb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1e6
    except OSError:
        pass
    return float("nan")


def profile(
    folder: Path, ks: list[int], jpegs: list[bytes], requests: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, dict[str, float]]]:
    """The server's request path in process, its steps timed apart (the same calls as
    ``Searcher.search_file``: decode_for_model, the runner, index.query, the name lookup); the
    search once more on its own (not right after the model, whose thread pool is still awake);
    then the whole path with FAISS's OpenMP threads as the server has them and with one, in
    alternating blocks, with the CPU time each request costs."""
    import faiss

    from lookalike.server import Searcher, decode_for_model

    t = time.perf_counter()
    searcher = Searcher(folder)
    print(f"Searcher loaded in process in {time.perf_counter() - t:.1f} s", flush=True)
    size = searcher.extractor.preprocess.size
    steps: dict[str, list[float]] = {"write upload": [], "decode + resize": [], "model": []}
    steps.update({f"index search k={k}": [] for k in ks})
    steps.update({f"names k={k}": [] for k in ks})
    vectors = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upload"
        for i in range(warmup + requests):
            t0 = time.perf_counter()
            path.write_bytes(jpegs[i % len(jpegs)])
            t1 = time.perf_counter()
            pixels = decode_for_model(path, size, 50_000_000)
            t2 = time.perf_counter()
            vector = np.asarray(searcher.runner(pixels[None]), dtype=np.float32)
            t3 = time.perf_counter()
            timed = i >= warmup
            if timed:
                steps["write upload"].append(t1 - t0)
                steps["decode + resize"].append(t2 - t1)
                steps["model"].append(t3 - t2)
            if i < len(jpegs):
                vectors.append(vector)
            for k in ks:
                t4 = time.perf_counter()
                rows, scores = searcher.index.query(vector, k)
                t5 = time.perf_counter()
                _ = [(searcher.names[r], float(s)) for r, s in zip(rows[0], scores[0], strict=True) if r >= 0]
                t6 = time.perf_counter()
                if timed:
                    steps[f"index search k={k}"].append(t5 - t4)
                    steps[f"names k={k}"].append(t6 - t5)
        for k in ks:
            alone = steps.setdefault(f"index search k={k}, on its own", [])
            for i in range(warmup + requests):
                t4 = time.perf_counter()
                searcher.index.query(vectors[i % len(vectors)], k)
                if i >= warmup:
                    alone.append(time.perf_counter() - t4)

        def whole(i: int) -> None:
            path.write_bytes(jpegs[i % len(jpegs)])
            pixels = decode_for_model(path, size, 50_000_000)
            searcher.index.query(np.asarray(searcher.runner(pixels[None]), dtype=np.float32), ks[0])

        default_threads = faiss.omp_get_max_threads()
        variants = {
            f"FAISS {default_threads} OpenMP threads (as the server)": default_threads,
            "FAISS 1 OpenMP thread": 1,
        }
        runs: dict[str, list[float]] = {name: [] for name in variants}
        cpu_s = dict.fromkeys(variants, 0.0)
        block = 50
        for b in range(0, requests, block):
            for name, threads in variants.items():
                faiss.omp_set_num_threads(threads)
                for i in range(5):
                    whole(i)
                c0 = _cpu_seconds()
                for i in range(b, min(b + block, requests)):
                    t0 = time.perf_counter()
                    whole(i)
                    runs[name].append(time.perf_counter() - t0)
                    time.sleep(0.004)  # the request's HTTP side, during which the pools idle
                cpu_s[name] += _cpu_seconds() - c0
        faiss.omp_set_num_threads(default_threads)
    summary = {}
    for name, values in runs.items():
        med, p95, p99 = percentiles(values)
        summary[name] = {
            "median": med,
            "p95": p95,
            "p99": p99,
            "cpu ms/request": cpu_s[name] / len(values) * 1e3,
        }
    return steps, summary


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--folder", type=Path, default=HERE / "out" / "server-1m.index")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--requests", type=int, default=300, help="timed uploads per k")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--ks", type=int, nargs="+", default=[10, 100], help="10 is the server's default")
    parser.add_argument("--no-profile", action="store_true", help="skip the in-process step timing")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--backend", default="auto", help="index backend of a new --folder, e.g. milvus (Milvus Lite inside it)"
    )
    args = parser.parse_args()
    folder = args.folder
    manifest = existing(folder, args.n, args.backend)
    if manifest is None:
        if folder.exists() and any(folder.iterdir()):
            sys.exit(
                f"{folder}: holds something other than a {args.n:,}-vector {MODEL} index with backend "
                f"{backend_spec(args.backend, args.n)}; remove it or pass --folder"
            )
        manifest = build(folder, args.n, args.backend)
    else:
        print(
            f"reusing {folder} ({manifest['count']:,} x {manifest['dim']}, {manifest['backend']})", flush=True
        )
    jpegs = uploads()
    load_start = load()
    startup, timed_load, walls, own, counts, rss, cpu = serve_and_measure(
        folder, args.port, args.ks, args.requests, args.warmup, jpegs
    )
    load_end = load()
    import faiss
    import onnxruntime
    import torch

    print(
        f"machine: {cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"onnxruntime {onnxruntime.__version__}, torch {torch.__version__}, FAISS {faiss.__version__}; "
        f"1-minute load average {load_start:.2f} at the start, {timed_load:.2f} when timing began, "
        f"{load_end:.2f} at the end; environment: {threading_env() or 'no OMP_* / *_NUM_THREADS set'}"
    )
    print(
        f"index: {manifest['count']:,} x {manifest['dim']} ({manifest['backend']}); uploads: {len(jpegs)} JPEGs "
        f"of {min(map(len, jpegs)) // 1024}-{max(map(len, jpegs)) // 1024} KiB; server start-up {startup:.1f} s, "
        f"RSS {rss:.2f} GB; {args.requests} timed requests per k after {args.warmup} warm-ups"
    )
    print(
        f"while timed: {cpu['cores busy']:.2f} of {os.cpu_count()} cores busy: server {cpu['server']:.2f}, "
        f"client {cpu['client']:.2f}, other jobs {cpu['others']:.2f}; steal {cpu['steal']:.2f}"
    )
    figures = {
        "machine": cpu_name(),
        "load": [load_start, timed_load, load_end],
        "env": threading_env(),
        "cpu": cpu,
        "rows": [],
    }
    print("| k | round trip median ms | p95 ms | p99 ms | server `seconds` median ms | p95 ms | p99 ms |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for k in args.ks:
        w, s = percentiles(walls[k]), percentiles(own[k])
        figures["rows"].append({"k": k, "round_trip_ms": w, "server_ms": s, "results": sorted(counts[k])})
        print(f"| {k} | {w[0]:.1f} | {w[1]:.1f} | {w[2]:.1f} | {s[0]:.1f} | {s[1]:.1f} | {s[2]:.1f} |")
    worst = max(percentiles(walls[k])[1] for k in args.ks)
    print(f"goal p95 < 60 ms: {'met' if worst < 60 else 'NOT met'} (worst p95 {worst:.1f} ms)", flush=True)
    if not args.no_profile:
        steps, whole = profile(folder, args.ks, jpegs, args.requests, args.warmup)
        print("| step (in process) | median ms | p95 ms | p99 ms |")
        print("| --- | --- | --- | --- |")
        figures["steps"] = {}
        for name, values in steps.items():
            p = percentiles(values)
            figures["steps"][name] = p
            print(f"| {name} | {p[0]:.2f} | {p[1]:.2f} | {p[2]:.2f} |")
        print(
            f"| decode + model + search k={args.ks[0]} (in process) | median ms | p95 ms | p99 ms | CPU ms / request |"
        )
        print("| --- | --- | --- | --- | --- |")
        figures["whole path"] = whole
        for name, w in whole.items():
            print(
                f"| {name} | {w['median']:.2f} | {w['p95']:.2f} | {w['p99']:.2f} | {w['cpu ms/request']:.1f} |"
            )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
