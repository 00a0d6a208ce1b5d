"""The Milvus backend against Milvus Lite: same results as exact search through build, add, remove,
resume, the server and dedup; a crash between the Milvus write and the manifest switch; a wrong URI."""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("pymilvus", reason="the milvus backend needs pymilvus + milvus-lite (the milvus extra)")
pytest.importorskip("milvus_lite", reason="the milvus backend's tests run on Milvus Lite (the milvus extra)")

import httpx  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

import lookalike.index.milvus as milvus_module  # noqa: E402
from lookalike.cli import app  # noqa: E402
from lookalike.config import SearchConfig  # noqa: E402
from lookalike.dedup import find_duplicates  # noqa: E402
from lookalike.errors import InputError  # noqa: E402
from lookalike.extract import ExtractOptions  # noqa: E402
from lookalike.index import GalleryIndex, MilvusIndex, build_index, create_backend  # noqa: E402
from lookalike.index.milvus import parse_spec, with_uri  # noqa: E402
from lookalike.server import create_app  # noqa: E402

OPTS = ExtractOptions(progress=False, device="cpu", batch_size=4, num_workers=0)
BUILD = ["-m", "pixels", "--batch-size", "4", "--workers", "0", "-q"]
runner = CliRunner()


def cli(*args: str) -> tuple[int, str]:
    """Run the command in-process; an exception escaping it (a traceback for a user) fails the test."""
    result = runner.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real command in a subprocess (so a kill -9 kills only it), once this process has let go
    of every Milvus Lite database (one process at a time may hold one)."""
    gc.collect()
    return subprocess.run(
        [sys.executable, "-m", "lookalike.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=300,
    )


def ranked_names(index: GalleryIndex, queries: np.ndarray, k: int) -> tuple[list[list[str]], np.ndarray]:
    rows, scores = index.search(queries, k)
    return [[index.names[r] for r in row if r >= 0] for row in rows], scores


def same_as_exact(milvus: GalleryIndex, exact: GalleryIndex, k: int = 5) -> None:
    """Every stored vector, as a query, finds the same names with the same scores in both."""
    assert sorted(milvus.names) == sorted(exact.names)
    queries = np.asarray(exact.vectors)
    got, got_scores = ranked_names(milvus, queries, k)
    want, want_scores = ranked_names(exact, queries, k)
    assert got_scores == pytest.approx(want_scores, abs=1e-4)
    assert got == want


def test_specs_parse_and_refuse() -> None:
    assert parse_spec("milvus:ivf_sq8,nprobe=8") == ("IVF_SQ8", {"nprobe": "8"})
    assert with_uri("milvus", "http://db:19530") == "milvus:HNSW,uri=http://db:19530"
    backend = create_backend("milvus", 512, "cosine", 1_000_000)
    assert backend.spec == "milvus:HNSW" and backend.search_params == {"ef": 128}
    ivf = create_backend("milvus:IVF_SQ8", 512, "cosine", 1_000_000)
    assert ivf.build_params == {"nlist": 4000} and ivf.search_params == {"nprobe": 31}
    for bad in ("milvus:NOPE", "milvus:HNSW,ef=lots", "milvus:HNSW,colour=red", "milvus:HNSW,collection=a-b"):
        with pytest.raises(InputError):
            create_backend(bad, 8, "cosine", 10)
    with pytest.raises(InputError, match="--milvus-uri is for --backend milvus"):
        with_uri("exact", "http://db:19530")


@pytest.mark.parametrize(("spec", "metric"), [("milvus:FLAT", "cosine"), ("milvus:FLAT", "euclidean")])
def test_build_add_remove_match_exact_search(gallery: Path, tmp_path: Path, spec: str, metric: str) -> None:
    paths = {b: str(tmp_path / f"{b}.index") for b in (spec, "exact")}
    for backend, out in paths.items():
        code, output = cli(
            "index", "build", str(gallery), "-o", out, "--backend", backend, *BUILD, "--metric", metric
        )
        assert code == 0, output
    milvus, exact = GalleryIndex.open(paths[spec]), GalleryIndex.open(paths["exact"])
    assert milvus.backend.spec == spec and len(milvus) == 15 == len(milvus.backend)
    assert (tmp_path / f"{spec}.index" / "milvus.db").is_dir()  # Milvus Lite inside the index folder
    same_as_exact(milvus, exact)
    for out in paths.values():
        assert cli("index", "remove", out, "chelsea", "rocket/rocket_copy1.jpg")[0] == 0
    milvus, exact = GalleryIndex.open(paths[spec]), GalleryIndex.open(paths["exact"])
    assert len(milvus) == 11 == len(milvus.backend._stored_ids()) and not any(
        "chelsea" in n for n in milvus.names
    )
    same_as_exact(milvus, exact)
    for out in paths.values():
        assert cli("index", "add", out, str(gallery / "chelsea"), "-q")[0] == 0
    milvus, exact = GalleryIndex.open(paths[spec]), GalleryIndex.open(paths["exact"])
    assert len(milvus) == 14 == len(milvus.backend._stored_ids())
    same_as_exact(milvus, exact)
    assert milvus.recall_at(5) == 1.0


def test_dba_writes_a_fresh_collection_per_generation(gallery: Path, tmp_path: Path) -> None:
    """DBA changes every stored vector on each add: the new generation goes into its own collection,
    the one in force is kept until the switch and older ones are dropped."""
    paths = {b: str(tmp_path / f"{b.replace(':', '-')}.index") for b in ("milvus:FLAT", "exact")}
    for backend, out in paths.items():
        code, output = cli(
            "index", "build", str(gallery), "-o", out, "--backend", backend, "--dba", "2", *BUILD
        )
        assert code == 0, output
        for folder in ("chelsea", "rocket"):
            assert cli("index", "remove", out, folder)[0] == 0
        assert cli("index", "add", out, str(gallery / "chelsea"), "-q")[0] == 0
    milvus, exact = GalleryIndex.open(paths["milvus:FLAT"]), GalleryIndex.open(paths["exact"])
    assert len(milvus) == 12
    rows, scores = milvus.search(np.asarray(exact.search_vectors), 4)
    want_rows, want_scores = exact.search(np.asarray(exact.search_vectors), 4)
    assert scores == pytest.approx(want_scores, abs=1e-4)
    assert [[milvus.names[r] for r in row] for row in rows] == [
        [exact.names[r] for r in row] for row in want_rows
    ]
    collections = milvus.backend._client.list_collections()
    assert milvus.backend.collection in collections and len(collections) <= 2


def test_hnsw_default_finds_the_exact_neighbours(gallery: Path, tmp_path: Path) -> None:
    index, _ = build_index(gallery, tmp_path / "h.index", model="pixels", backend="milvus", options=OPTS)
    assert index.backend.spec == "milvus:HNSW"
    assert GalleryIndex.open(tmp_path / "h.index").recall_at(10) >= 0.95


LITE_TYPES = [t for t in milvus_module.INDEX_TYPES if t not in ("FLAT", "HNSW", *milvus_module.LITE_UNSUPPORTED)]


@pytest.mark.parametrize("index_type", LITE_TYPES)
def test_every_other_index_type_builds_reopens_and_searches_on_milvus_lite(
    gallery: Path, tmp_path: Path, index_type: str
) -> None:
    """The types Milvus Lite takes beyond FLAT and HNSW (IVF_FLAT, IVF_SQ8, AUTOINDEX) work: built,
    reopened from the folder, and every stored vector finds its own image first."""
    out = tmp_path / "t.index"
    build_index(gallery, out, model="pixels", backend=f"milvus:{index_type}", options=OPTS)
    gc.collect()  # let go of the build's Lite database before the index is opened again
    index = GalleryIndex.open(out)
    assert index.backend.spec == f"milvus:{index_type}" and len(index.backend) == len(index) == 15
    rows, scores = index.search(np.asarray(index.vectors), 3)
    assert (rows[:, 0] == np.arange(len(index))).all()
    assert scores[:, 0] == pytest.approx(1.0, abs=1e-2)  # cosine of a vector with itself (IVF_SQ8 rounds)


@pytest.mark.parametrize("index_type", milvus_module.LITE_UNSUPPORTED)
def test_types_milvus_lite_cannot_reopen_are_refused_before_extraction(
    gallery: Path, tmp_path: Path, index_type: str
) -> None:
    """Lite builds IVF_PQ and DISKANN collections but fails to load them again, so an index built
    with them would never open: the build is refused at once, in one line, and writes nothing."""
    out = tmp_path / "t.index"
    code, output = cli("index", "build", str(gallery), "-o", str(out), "--backend", f"milvus:{index_type}", *BUILD)
    assert code == 2 and f"milvus:{index_type} needs a Milvus server (--milvus-uri)" in output
    assert "IVF_SQ8" in output and not out.exists()
    server = MilvusIndex(f"milvus:{index_type},uri=http://db:19530", 512, "cosine", 1_000_000)
    assert server.index_type == index_type  # a server is asked, as the README says


def test_a_killed_build_resumes_into_milvus(gallery: Path, tmp_path: Path) -> None:
    """Killed after Milvus Lite was written in the new index folder but before its first manifest:
    the folder (with its milvus.db) is still recognised as lookalike's, and --resume completes it."""
    exact, _ = build_index(gallery, tmp_path / "e.index", model="pixels", options=OPTS)
    out = tmp_path / "k.index"
    args = ["index", "build", str(gallery), "-o", str(out), "--backend", "milvus:FLAT", *BUILD]
    killed = run_cli(*args, env={"LOOKALIKE_CRASH_AT": "save-files-written"})
    assert killed.returncode == -9, killed.stderr
    assert (out / "milvus.db").is_dir() and not (out / "lookalike-index.json").exists()
    code, output = cli(*args, "--resume")
    assert code == 0, output
    same_as_exact(GalleryIndex.open(out), exact)


def test_a_crash_between_the_milvus_write_and_the_manifest_keeps_the_old_items(
    gallery: Path, tmp_path: Path
) -> None:
    out = tmp_path / "c.index"
    build_index(gallery / "astronaut", out, model="pixels", backend="milvus:FLAT", options=OPTS)
    old = GalleryIndex.open(out)
    old_names, old_vectors = sorted(old.names), np.asarray(old.vectors).copy()
    del old
    for command in (
        ["add", str(out), str(gallery / "chelsea"), "-q"],
        ["remove", str(out), "astronaut_copy1.jpg"],
    ):
        killed = run_cli("index", *command, env={"LOOKALIKE_CRASH_AT": "save-files-written"})
        assert killed.returncode == -9, killed.stderr
        with pytest.warns(UserWarning, match="repaired"):  # Milvus held the unswitched generation's items
            index = GalleryIndex.open(out)
        assert sorted(index.names) == old_names and len(index.backend) == 3
        assert sorted(index.backend._stored_ids().tolist()) == sorted(it["id"] for it in index.items)
        rows, scores = index.search(old_vectors, 3)
        assert (rows >= 0).all() and scores[:, 0] == pytest.approx(1.0, abs=1e-5)  # each finds itself
        del index
    assert cli("index", "add", str(out), str(gallery / "chelsea"), "-q")[0] == 0
    index = GalleryIndex.open(out)  # opens without a repair now
    assert len(index) == 6 and len(index.backend._stored_ids()) == 6
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("backend-")) == [
        f"backend-{index.generation}.json"
    ]
    assert json.loads((out / f"backend-{index.generation}.json").read_text())["uri"] == "milvus.db"


def test_server_and_dedup_answer_as_with_exact(
    gallery: Path, tmp_path: Path, photo_set: tuple[Path, Path]
) -> None:
    for copy in ("chelsea/chelsea_copy0.jpg", "rocket/rocket_copy2.jpg"):  # two exact duplicates
        shutil.copyfile(gallery / copy, gallery / copy.replace(".jpg", "_again.jpg"))
    build_index(gallery, tmp_path / "m.index", model="pixels", backend="milvus:FLAT", options=OPTS)
    build_index(gallery, tmp_path / "e.index", model="pixels", options=OPTS)
    query = sorted(photo_set[0].rglob("*.jpg"))[0].read_bytes()
    answers = []
    for name in ("m.index", "e.index"):
        with TestClient(create_app(tmp_path / name, k=5)) as client:
            response = client.post("/search", files={"file": ("q.jpg", query, "image/jpeg")})
            assert response.status_code == 200, response.text
            answers.append([(r["path"], round(r["score"], 4)) for r in response.json()["results"]])
    assert answers[0] == answers[1] and len(answers[0]) == 5
    config = SearchConfig(extract=OPTS)
    groups = [
        sorted(sorted(result.items[m].name for m in g.members) for g in result.groups)
        for result in (
            find_duplicates(tmp_path / n, config=config, threshold=0.999) for n in ("m.index", "e.index")
        )
    ]
    assert (
        groups[0]
        == groups[1]
        == [
            ["chelsea/chelsea_copy0.jpg", "chelsea/chelsea_copy0_again.jpg"],
            ["rocket/rocket_copy2.jpg", "rocket/rocket_copy2_again.jpg"],
        ]
    )
    code, output = cli(
        "dedup", str(tmp_path / "m.index"), "--threshold", "0.999", "-q", "-o", str(tmp_path / "d.json")
    )
    assert code == 0, output
    written = json.loads((tmp_path / "d.json").read_text())
    assert written["settings"]["backend"].startswith("milvus") and len(written["groups"]) == 2


def test_an_unreachable_server_is_one_error_naming_the_uri(gallery: Path, tmp_path: Path) -> None:
    out = tmp_path / "u.index"
    code, output = cli(
        "index",
        "build",
        str(gallery),
        "-o",
        str(out),
        *BUILD,
        "--backend",
        "milvus",
        "--milvus-uri",
        "http://127.0.0.1:9",
    )
    assert code == 2 and "error:" in output and "http://127.0.0.1:9" in output
    assert len(output.strip().splitlines()) == 1 and not out.exists()
    code, output = cli("index", "build", str(gallery), "-o", str(out), *BUILD, "--milvus-uri", "http://x:1")
    assert code == 2 and "--milvus-uri is for --backend milvus" in output


def test_an_index_only_in_memory_searches_a_scratch_database() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((50, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    names = [f"{i}.jpg" for i in range(50)]
    index = GalleryIndex.from_embeddings(vectors, names, backend="milvus:FLAT")
    exact = GalleryIndex.from_embeddings(vectors, names)
    assert isinstance(index.backend, MilvusIndex)
    same_as_exact(index, exact)
    index.backend.remove(np.arange(10))
    ids, _ = index.backend.search(vectors[:10], 3)
    assert len(index.backend) == 40 and (ids >= 10).all()


def test_milvus_lite_says_once_and_records_that_it_builds_with_its_own_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Milvus Lite does not read the build parameters pymilvus sends: the spec gets no sized nlist,
    ``backend-<g>.json`` records Lite's defaults as what was built, and one warning says so; a
    server spec keeps the sized parameters it builds with."""
    server = MilvusIndex("milvus:IVF_SQ8,uri=http://db:19530", 512, "cosine", 1_000_000)
    assert server.spec == "milvus:IVF_SQ8,uri=http://db:19530,nlist=4000"
    assert server._built_with() == server.build_params == {"nlist": 4000}
    lite = MilvusIndex("milvus:IVF_SQ8", 512, "cosine", 1_000_000)
    assert lite.spec == "milvus:IVF_SQ8" and lite.search_params == {"nprobe": 31}
    monkeypatch.setattr(milvus_module, "_lite_warned", False)
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("lookalike").addHandler(handler)
    try:
        vectors = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        index = GalleryIndex.from_embeddings(vectors, [f"{i}.jpg" for i in range(40)], backend="milvus:HNSW,M=8")
        assert index.search(vectors[:2], 1)[0][:, 0].tolist() == [0, 1]  # a scratch collection
        index.save(tmp_path / "h.index")  # the index folder's own collection: no second warning
    finally:
        logging.getLogger("lookalike").removeHandler(handler)
    assert len(messages) == 1, messages
    assert "Milvus Lite builds HNSW with its own defaults (M 16, efConstruction 200), not M 8" in messages[0]
    saved = json.loads((tmp_path / "h.index" / "backend-1.json").read_text())
    assert saved["build_params"]["M"] == 8 and saved["built_with"] == {"M": 16, "efConstruction": 200}
    assert json.loads((tmp_path / "h.index" / "lookalike-index.json").read_text())["backend"] == "milvus:HNSW,M=8"


def test_a_second_process_on_a_milvus_lite_database_is_one_line_naming_it(
    gallery: Path, tmp_path: Path, photo_set: tuple[Path, Path]
) -> None:
    """Milvus Lite holds an exclusive lock on its database while a process uses it: a second
    process gets one error line naming the database and pointing at a Milvus server."""
    out = tmp_path / "l.index"
    build_index(gallery, out, model="pixels", backend="milvus:FLAT", options=OPTS)
    held = GalleryIndex.open(out)  # this process, as a running `lookalike serve` would
    query = sorted(photo_set[0].rglob("*.jpg"))[0]
    second = run_cli("search", str(query), str(out), "-q")
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and str(out / "milvus.db") in lines[0] and "--milvus-uri" in lines[0], lines
    assert len(held.search(np.asarray(held.vectors[:1]), 1)[0]) == 1  # the first one is unaffected


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, process: subprocess.Popen, log: Path, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, (
            f"{process.args} exited with {process.returncode}: {log.read_text(errors='replace')[-2000:]}"
        )
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"{url} did not answer in {seconds:.0f} s: {log.read_text(errors='replace')[-2000:]}")


def test_two_serve_replicas_against_one_milvus_server_answer_alike(
    gallery: Path, tmp_path: Path, photo_set: tuple[Path, Path], milvus_server: str
) -> None:
    """Two `lookalike serve` processes over one index folder whose vectors are on a Milvus server
    (what a load balancer spreads requests over) give the same answers, those of an exact index."""
    out = tmp_path / "s.index"
    code, output = cli(
        "index", "build", str(gallery), "-o", str(out), *BUILD, "--backend", "milvus", "--milvus-uri", milvus_server
    )
    assert code == 0, output
    assert json.loads((out / "lookalike-index.json").read_text())["backend"] == f"milvus:HNSW,uri={milvus_server}"
    build_index(gallery, tmp_path / "e.index", model="pixels", options=OPTS)
    query = sorted(photo_set[0].rglob("*.jpg"))[0].read_bytes()
    with TestClient(create_app(tmp_path / "e.index", k=5)) as client:
        response = client.post("/search", files={"file": ("q.jpg", query, "image/jpeg")})
        want = [(r["path"], round(r["score"], 4)) for r in response.json()["results"]]
    gc.collect()
    ports = [_free_port(), _free_port()]
    logs = [tmp_path / f"serve-{port}.log" for port in ports]
    replicas = []
    for port, log in zip(ports, logs, strict=True):
        with log.open("wb") as stderr:  # the child keeps its own handle
            replicas.append(
                subprocess.Popen(
                    [sys.executable, "-m", "lookalike.cli", "serve", str(out), "--port", str(port), "-k", "5"]
                    + ["--log-level", "warning"],
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                )
            )
    try:
        answers = []
        for port, process, log in zip(ports, replicas, logs, strict=True):
            _wait_for(f"http://127.0.0.1:{port}/health", process, log)
        for _ in range(2):  # alternately, as a load balancer would send them
            for port, log in zip(ports, logs, strict=True):
                response = httpx.post(
                    f"http://127.0.0.1:{port}/search", files={"file": ("q.jpg", query, "image/jpeg")}, timeout=60
                )
                assert response.status_code == 200, (response.text, log.read_text(errors="replace")[-2000:])
                answers.append([(r["path"], round(r["score"], 4)) for r in response.json()["results"]])
    finally:
        for process in replicas:
            process.terminate()
            process.wait(timeout=30)
    assert all(answer == want for answer in answers) and len(want) == 5, (answers, want)
