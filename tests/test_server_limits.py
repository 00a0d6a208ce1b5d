"""The server under load: decoding is bounded (memory stays flat), the rest wait or get 503 + Retry-After."""

from __future__ import annotations

import asyncio
import io
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import lookalike
from lookalike.errors import ImageError, InputError
from lookalike.extract import DecodedImages
from lookalike.index import build_index
from lookalike.server import Busy, DecodeSlots, create_app, decode_for_model, running_server

MEMORY_CAP = 1.5 * 2**30


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `pixels` index of six small noise images (fast to build and to query)."""
    root = tmp_path_factory.mktemp("limits")
    gallery = root / "gallery"
    gallery.mkdir()
    rng = np.random.default_rng(3)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(gallery / f"{i}.png")
    build_index(gallery, root / "g.index", model="pixels", options=lookalike.ExtractOptions(progress=False))
    return root / "g.index"


def _png(width: int = 7000, height: int = 7000) -> bytes:
    """A big RGB PNG of flat shapes: tens of pixels-megabytes that compress to a few hundred KB."""
    img = Image.new("RGB", (width, height), (30, 90, 160))
    draw = ImageDraw.Draw(img)
    for x in range(0, width, 700):
        draw.rectangle((x, 0, x + 300, height), fill=(220, 180, 40))
        draw.ellipse((x, x, x + 500, x + 500), fill=(10, 200, 90))
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


def _post(client: httpx.Client, data: bytes) -> httpx.Response:
    return client.post("/search", files={"file": ("q.png", data, "image/png")})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _peak_rss(pid: int) -> int:
    """VmHWM (peak resident memory) of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads VmHWM from /proc")
def test_sixteen_big_uploads_stay_within_memory(index: Path, tmp_path: Path) -> None:
    """16 concurrent uploads of a 7000x7000 PNG (49 M pixels, within the default limit) used to take the
    server to several GB; with two decode slots it stays well under 1.5 GB, and each request gets 200
    or 503 with Retry-After. max_decodes is pinned so the bound does not depend on this machine's cores."""
    png = _png()
    port = _free_port()
    code = (
        "from lookalike.server import serve; "
        f"serve({str(index)!r}, port={port}, log_level='warning', max_decodes=2)"
    )
    log = (tmp_path / "server.log").open("w+")
    server = subprocess.Popen([sys.executable, "-c", code], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, f"the server exited: {(tmp_path / 'server.log').read_text()}"
            assert time.monotonic() < deadline, "the server did not start"
            try:
                if httpx.get(base + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        idle = _peak_rss(server.pid)
        with httpx.Client(base_url=base, timeout=120) as client, ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda _: _post(client, png), range(16)))
        peak = _peak_rss(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    codes = sorted(r.status_code for r in answers)
    assert set(codes) <= {200, 503}, codes
    assert codes.count(200) >= 10, codes  # 2 decoding + 8 waiting (4 per slot) get through
    for r in answers:
        if r.status_code == 503:
            assert int(r.headers["Retry-After"]) >= 1 and "busy" in r.json()["detail"]
        else:
            assert len(r.json()["results"]) == 6
    assert peak < MEMORY_CAP, f"peak {peak / 2**20:.0f} MiB (idle {idle / 2**20:.0f} MiB)"


class _Blocked:
    """Replaces the searcher's search_file: each call signals that it started, then waits for ``go``."""

    def __init__(self, search_file: Callable[..., list]) -> None:
        self.search_file, self.started, self.go = search_file, threading.Semaphore(0), threading.Event()

    def __call__(self, *args: object) -> list:
        self.started.release()
        assert self.go.wait(60), "never released"
        return self.search_file(*args)


@pytest.fixture
def query() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


Served = tuple[httpx.Client, _Blocked, DecodeSlots]


@pytest.fixture
def blocked_server(index: Path, request: pytest.FixtureRequest) -> Iterator[Served]:
    """A live server over ``index`` (create_app settings from the indirect parameter) whose embedding
    blocks until the test says go, so which request holds the one slot is decided, not timed."""
    app = create_app(index, **request.param)
    blocked = _Blocked(app.state.searcher.search_file)
    app.state.searcher.search_file = blocked
    with running_server(app) as base, httpx.Client(base_url=base, timeout=60) as client:
        try:
            yield client, blocked, app.state.decode_slots
        finally:
            blocked.go.set()


def _in_thread(
    pool: ThreadPoolExecutor, client: httpx.Client, data: bytes, blocked: _Blocked
) -> Future[httpx.Response]:
    """Start an upload and return once it holds the decode slot (its embedding has begun)."""
    future = pool.submit(_post, client, data)
    assert blocked.started.acquire(timeout=30), "the first request never started"
    return future


@pytest.mark.parametrize("blocked_server", [{"max_decodes": 1, "max_waiting": 0}], indirect=True)
def test_no_queue_gives_503_with_retry_after(blocked_server: Served, query: bytes) -> None:
    client, blocked, slots = blocked_server
    with ThreadPoolExecutor(2) as pool:
        first = _in_thread(pool, client, query, blocked)
        refused = _post(client, query)
        assert refused.status_code == 503
        assert int(refused.headers["Retry-After"]) >= 1
        assert "busy" in refused.json()["detail"]
        assert slots.active == 1
        blocked.go.set()
        assert first.result().status_code == 200
    assert _post(client, query).status_code == 200  # the slot is free again
    assert slots.active == 0


@pytest.mark.parametrize(
    "blocked_server", [{"max_decodes": 1, "max_waiting": 1, "queue_timeout": 0.2}], indirect=True
)
def test_queue_timeout_gives_503(blocked_server: Served, query: bytes) -> None:
    client, blocked, slots = blocked_server
    with ThreadPoolExecutor(2) as pool:
        first = _in_thread(pool, client, query, blocked)
        late = _post(client, query)  # waits 0.2 s for the held slot, then gives up
        assert late.status_code == 503 and "0.2 s" in late.json()["detail"]
        assert int(late.headers["Retry-After"]) >= 1
        assert slots.waiting() == 0, "the timed-out waiter left the queue"
        blocked.go.set()
        assert first.result().status_code == 200
    assert slots.active == 0


@pytest.mark.parametrize(
    "blocked_server", [{"max_decodes": 1, "max_waiting": 2, "queue_timeout": 60}], indirect=True
)
def test_waiting_requests_get_the_slot_in_turn(blocked_server: Served, query: bytes) -> None:
    client, blocked, slots = blocked_server
    with ThreadPoolExecutor(4) as pool:
        first = _in_thread(pool, client, query, blocked)
        queued = [pool.submit(_post, client, query) for _ in range(2)]
        deadline = time.monotonic() + 30
        while slots.waiting() < 2:
            assert time.monotonic() < deadline, "the two requests never queued"
            time.sleep(0.01)
        refused = _post(client, query)  # slot held, queue full
        assert refused.status_code == 503 and "Retry-After" in refused.headers
        blocked.go.set()
        assert [f.result().status_code for f in [first, *queued]] == [200, 200, 200]
    assert slots.active == 0 and slots.waiting() == 0


def test_bad_limit_settings(index: Path) -> None:
    with pytest.raises(InputError, match="max_decodes"):
        create_app(index, max_decodes=0)
    with pytest.raises(InputError, match="max_waiting"):
        create_app(index, max_waiting=-1)
    with pytest.raises(InputError, match="queue_timeout"):
        create_app(index, queue_timeout=0)


def test_decode_slots_fifo_caps_and_timeouts() -> None:
    """The limiter alone: FIFO hand-over, a waiting cap per kind, timed-out and cancelled waiters leave
    no trace, and a slot held on one event loop is handed to a waiter on another."""

    async def scenario() -> list[str]:
        slots = DecodeSlots(1, 2, timeout=5)
        order: list[str] = []
        gate = asyncio.Event()

        async def user(name: str, kind: str = "search") -> None:
            async with slots.hold(kind):
                order.append(name)
                await gate.wait()

        first = asyncio.create_task(user("a"))
        await asyncio.sleep(0)
        waiters = [asyncio.create_task(user(n)) for n in ("b", "c")]
        await asyncio.sleep(0)
        assert slots.active == 1 and slots.waiting() == 2
        with pytest.raises(Busy, match="queue is full"):
            await user("refused")
        other = asyncio.create_task(user("thumb", "thumbnail"))  # another kind: its own cap
        await asyncio.sleep(0)
        assert slots.waiting("thumbnail") == 1
        cancelled = asyncio.create_task(user("x", "thumbnail"))
        await asyncio.sleep(0)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert slots.waiting("thumbnail") == 1
        gate.set()
        await asyncio.gather(first, *waiters, other)
        assert slots.active == 0 and slots.waiting() == 0 and slots.waiting("thumbnail") == 0
        short = DecodeSlots(1, 1, timeout=0.05)
        async with short.hold():
            with pytest.raises(Busy, match="within 0.05 s") as caught:
                await user_of(short)
            assert caught.value.retry_after >= 1 and short.waiting() == 0
        assert short.active == 0
        return order

    async def user_of(slots: DecodeSlots) -> None:
        async with slots.hold():
            pass

    assert asyncio.run(scenario()) == ["a", "b", "c", "thumb"]

    # across event loops: a holder on one thread, a waiter on another
    slots = DecodeSlots(1, 1, timeout=10)
    held, release, got = threading.Event(), threading.Event(), []

    async def holder() -> None:
        async with slots.hold():
            held.set()
            await asyncio.get_running_loop().run_in_executor(None, release.wait)

    async def waiter() -> None:
        async with slots.hold():
            got.append("waiter")

    thread = threading.Thread(target=asyncio.run, args=(holder(),))
    thread.start()
    assert held.wait(10)
    other = threading.Thread(target=asyncio.run, args=(waiter(),))
    other.start()
    deadline = time.monotonic() + 10
    while slots.waiting() < 1:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    release.set()
    thread.join(10)
    other.join(10)
    assert got == ["waiter"] and slots.active == 0


@pytest.mark.parametrize(
    ("mode", "size", "orientation"),
    [
        ("RGB", (1900, 1300), None),
        ("L", (2500, 700), None),
        ("RGB", (1200, 2000), 6),
        ("RGBA", (1000, 900), None),
        ("P", (900, 1000), None),
        ("RGB", (40, 30), None),
    ],
)
def test_low_memory_decode_gives_the_pipelines_pixels(
    tmp_path: Path, mode: str, size: tuple[int, int], orientation: int | None
) -> None:
    """The server's decoder (reduce before the RGB conversion) yields exactly DecodedImages' pixels."""
    rng = np.random.default_rng(sum(size))
    channels = {"RGB": 3, "RGBA": 4}.get(mode)
    shape = (size[1], size[0]) if channels is None else (size[1], size[0], channels)
    img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
    img = img.convert(mode) if mode != img.mode else img
    path = tmp_path / "img.png"
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation
        img.save(path, exif=exif)
    else:
        img.save(path)
    for target in [(224, 224), (32, 32), (300, 200)]:
        _, expected, reason = DecodedImages([path], target, 50_000_000)[0]
        assert expected is not None, reason
        got = decode_for_model(path, target, 50_000_000)
        assert got.dtype == torch.uint8 and torch.equal(got, expected), (mode, size, target)


def test_low_memory_decode_reports_the_pipelines_errors(tmp_path: Path) -> None:
    big = tmp_path / "big.png"
    Image.new("L", (3000, 2000)).save(big)
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(big.read_bytes()[:200])
    for path, message in [(big, "over the limit"), (truncated, "truncated or corrupt")]:
        with pytest.raises(ImageError, match=message):
            decode_for_model(path, (32, 32), 1_000_000 if path == big else 50_000_000)
