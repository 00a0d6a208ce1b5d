"""Shared fixtures: real photos from scikit-image, laid out as small labelled sets."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from lookalike.samples import make_copy_detection_set

SMALL_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera")
TRAINING_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own feature cache, so nothing leaks between tests or to ~/.cache."""
    monkeypatch.setenv("LOOKALIKE_CACHE", str(tmp_path_factory.mktemp("cache")))
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def photo_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(query, gallery) folders: 5 real photos, 1 edited query copy and 3 gallery copies each."""
    root = tmp_path_factory.mktemp("photos")
    return make_copy_detection_set(root, photos=SMALL_PHOTOS, gallery_copies=3, seed=1)


@pytest.fixture()
def gallery(photo_set: tuple[Path, Path], tmp_path: Path) -> Path:
    """A private copy of the sample gallery, for tests that index it or change it."""
    folder = tmp_path / "gallery"
    shutil.copytree(photo_set[1], folder)
    return folder


@pytest.fixture(scope="session")
def training_photos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(query, train) class folders: 4 real photos, 1 query copy and 6 edited training copies each."""
    root = tmp_path_factory.mktemp("train-photos")
    return make_copy_detection_set(root, photos=TRAINING_PHOTOS, gallery_copies=6, seed=2)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: small models train faster and exactly reproducibly on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.fixture()
def milvus_server(tmp_path: Path) -> Iterator[str]:
    """A Milvus server for the test: Milvus Lite's own gRPC server in its own process (one process
    owns the database and serves every client, as a Milvus server or cluster does)."""
    pytest.importorskip(
        "milvus_lite", reason="the Milvus server of the tests is Milvus Lite's (the milvus extra)"
    )
    port = _free_port()
    log = tmp_path / "milvus-server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(tmp_path / "milvus-data")]
            + ["--host", "127.0.0.1", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while not _listening(port):
            assert process.poll() is None and time.monotonic() < deadline, (
                "the Milvus Lite server did not start: " + log.read_text(errors="replace")[-2000:]
            )
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)
