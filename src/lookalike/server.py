"""An HTTP API and web page over a saved gallery index (FastAPI; run with uvicorn).

``POST /search`` takes one uploaded image and returns the index's top-k as JSON; ``GET /`` is a
page where a person drops or picks an image and sees the ranked gallery; ``GET /gallery/{path}``
and ``GET /thumbnail/{path}`` serve the indexed files, and nothing else, from the index's root.
The extractor is built once at startup; uploads are decoded and resized exactly as the pipeline
decodes gallery images, and the model runs under a lock, so concurrent requests are safe.
At most ``max_decodes`` images are decoded at once (memory stays bounded); a few more requests wait
their turn, and the rest get 503 with Retry-After. Gallery names may hold any bytes the file system
allows (not UTF-8, newlines): JSON escapes them, URLs percent-encode the original bytes.
"""

import asyncio
import contextlib
import json
import logging
import math
import mimetypes
import os
import socket
import tempfile
import threading
import time
import warnings
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, unquote_to_bytes

import numpy as np
import torch
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from PIL import ExifTags, Image, ImageOps
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .cache import default_cache_dir
from .calibrate import threshold_value
from .config import SearchConfig
from .errors import ImageError, InputError
from .extract import DecodedImages, make_runner, resolve_device
from .features.base import Preprocess
from .images import ImageSet, to_rgb
from .index import GalleryIndex, is_index
from .metrics import accepts, is_higher_better
from .pipeline import GallerySide, gallery_side, score_name, short_lists
from .report import thumbnail_jpeg

log = logging.getLogger("lookalike")
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_THUMB_SIZE = 192
DEFAULT_QUEUE_TIMEOUT = 30.0
_CHUNK = 1 << 16
_THUMB_CACHE = 4096
_THUMB_WAITING = 256  # thumbnails of a result page arrive together: they queue apart from searches


def default_max_decodes() -> int:
    """Concurrent decodes by default: the CPU cores this process may use, between 1 and 4."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def sniff_image_type(head: bytes) -> str | None:
    """The image format the first bytes of a file announce (jpeg, png, gif, bmp, tiff, webp, pnm, avif, heif),
    or None when they are not one lookalike reads: the content decides, not the file name."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if (
        head[:2] == b"BM"
        and len(head) >= 18
        and int.from_bytes(head[14:18], "little") in (12, 40, 52, 56, 64, 108, 124)
    ):
        return "bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if len(head) >= 3 and head[:1] == b"P" and head[1:2] in b"123456" and head[2:3] in b" \t\r\n#":
        return "pnm"
    if head[4:8] == b"ftyp":  # ISO media: AVIF and HEIC/HEIF photos, by their brand
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "avif"
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"):
            return "heif"
    return None


class SearchResult(BaseModel):
    """One gallery image of a ranking."""

    rank: int = Field(description="1 for the best match")
    path: str = Field(
        description="Path relative to the gallery root, forward slashes; a byte of the file name that is "
        "not UTF-8 is a lone surrogate \\udcXX (Python's os.fsdecode), so json.loads gives the exact name"
    )
    score: float = Field(description="Cosine similarity (higher is better) or euclidean distance (lower)")
    label: str | None = Field(None, description="The image's label when the index is labelled")
    url: str = Field(description="The gallery file itself (the name's bytes, percent-encoded)")
    thumbnail_url: str = Field(description="A small JPEG of the gallery file")


class SearchResponse(BaseModel):
    """The top-k of one uploaded image."""

    query: str = Field(description="The uploaded file's name")
    model: str
    metric: str
    k: int
    seconds: float = Field(description="Decode, embed and search time")
    results: list[SearchResult]
    min_score: float | None = Field(None, description="The threshold the results passed, when one was given")


class CheckResponse(BaseModel):
    """Whether one uploaded image is a duplicate of indexed images, and of which."""

    query: str = Field(description="The uploaded file's name")
    duplicate: bool = Field(description="True when at least one indexed image scores past the threshold")
    min_score: float = Field(description="The threshold: a similarity to reach, or a distance not to exceed")
    model: str
    metric: str
    seconds: float = Field(description="Decode, embed and search time")
    matches: list[SearchResult] = Field(description="The indexed images past the threshold, best first")


class Health(BaseModel):
    """The server is up; what it serves."""

    status: str
    images: int
    model: str
    metric: str
    labelled: bool
    gallery_root_found: bool
    k: int
    max_upload_bytes: int
    refinement: dict[str, Any] = Field(
        default_factory=dict, description="Search-time steps, and those stored with the index (under index)"
    )
    min_score: float | None = Field(None, description="The threshold POST /check uses by default")


class Searcher:
    """The index, its extractor and runner, and the search-time steps of a :class:`SearchConfig`,
    loaded once; embeds an image file as the pipeline does and searches it through the same
    gallery side as ``lookalike search`` (stored steps, query expansion, re-ranking)."""

    def __init__(
        self,
        index_folder: str | Path,
        device: str = "auto",
        runtime: str = "auto",
        config: SearchConfig | None = None,
    ) -> None:
        config = config or SearchConfig()
        torch_device = resolve_device(device)
        if not is_index(index_folder):
            GalleryIndex.open(index_folder)  # says why the folder is not an index
        self.options = replace(config.extract, device=torch_device.type, runtime=runtime, progress=False)
        if self.options.use_cache and self.options.cache_dir is None:
            self.options = replace(self.options, cache_dir=default_cache_dir())
        side = gallery_side(
            index_folder,
            config.model,
            config.model_options,
            config.metric,
            config.refinement,
            None,
            self.options,
        )
        assert isinstance(side, GallerySide)
        self.refine = side.reconcile(config.refinement, config.preset_whitening)
        if self.refine.whiten or self.refine.dba:
            raise InputError(
                "serve: --whiten and --dba are fitted on the whole gallery; store them with the index "
                "(lookalike index build --whiten/--dba) instead of fitting them on every request"
            )
        if self.refine.rerank == "k-reciprocal":
            raise InputError(
                "serve: k-reciprocal re-ranking needs the neighbour lists of the whole gallery for every "
                "query; use it with `lookalike search`, or serve with --rerank sift/surf"
            )
        side.embed(self.options)
        side.searchable(self.refine)  # what is fitted on the gallery (--gallery-norm's offsets): once, now
        self.normaliser = side.normaliser(self.refine, self.options)
        self.side = side
        self.index = side.index
        self.extractor = side.extractor  # the index's model (an index of regions: its region extractor)
        self.query_extractor = side.query_extractor or side.extractor  # how an upload is described
        self.runner = make_runner(self.query_extractor, torch_device, runtime, default_cache_dir())
        self.names = self.index.names
        self.labels = self.index.labels
        self.root = self.index.root.resolve()
        probe = None  # what the scores are: the re-ranker's own, or normalised similarities
        if self.refine.rerank is not None:
            none, _ = side.prepare(np.zeros((0, self.query_extractor.dim), dtype=np.float32), self.refine)
            probe = side.reranker(self.refine, none, ImageSet([], self.root), self.options)
        self.score_name = score_name(self.index.metric, probe, self.normaliser, self.refine.gallery_norm)
        self.higher_is_better = is_higher_better(self.score_name)
        self._name_set = set(self.names)
        self._lock = threading.Lock()

    def describe(self) -> dict[str, Any]:
        """The search-time steps and those stored with the index (as a search run reports them)."""
        return self.side.describe_refinement(self.refine)

    def embed_file(self, path: Path, max_pixels: int) -> np.ndarray:
        """(1, d) features of one image file; raises ImageError when it cannot be decoded."""
        pre = self.query_extractor.preprocess
        pixels = decode_for_model(path, pre.size, max_pixels, pre.resize)
        with self._lock:
            return np.asarray(self.runner(pixels[None]), dtype=np.float32)

    def threshold(self, min_score: float | str | Path) -> float:
        """A score threshold from a number or a ``lookalike calibrate`` file, which must be for
        this server's kind of score, model and steps (one line saying why not)."""
        return threshold_value(
            min_score, score=self.score_name, model=self.extractor.describe(), refinement=self.describe()
        )

    def search_file(
        self, path: Path, k: int, max_pixels: int, min_score: float | None = None
    ) -> list[tuple[str, float, str | None]]:
        """(gallery name, score, label) of the top ``k`` for one image file, best first; with
        ``min_score`` only those at least that good (at most that distance)."""
        vector = self.embed_file(path, max_pixels)
        with self._lock:
            queries, searched = self.side.prepare(vector, self.refine)
            reranker = self.side.reranker(self.refine, queries, ImageSet([path], path.parent), self.options)
            rows, scores = short_lists(
                searched, queries, k, reranker, self.normaliser, self.refine.rerank_top
            )
        rows, scores = rows[0, :k], scores[0, :k]
        if min_score is not None:
            rows = np.where(accepts(scores, min_score, higher_is_better=self.higher_is_better), rows, -1)
        out = []
        for row, score in zip(rows, scores, strict=True):
            if row >= 0:
                out.append((self.names[row], float(score), None if self.labels is None else self.labels[row]))
        return out

    def gallery_file(self, name: str) -> Path:
        """The file of an indexed gallery image, only when it lies inside the index's root."""
        if name not in self._name_set:
            raise HTTPException(404, "not an image of this index")
        path = (self.root / name).resolve()
        if not path.is_relative_to(self.root):
            raise HTTPException(403, "outside the gallery root")
        if not path.is_file():
            raise HTTPException(404, "indexed, but the file is no longer there")
        return path


def decode_for_model(path: Path, size: tuple[int, int], max_pixels: int, resize: str = "squash") -> torch.Tensor:
    """The (3, h, w) uint8 pixels ``DecodedImages`` gives for one file, at a lower memory peak: no
    extra full-size copy, and L/RGB images are reduced before the RGB conversion. ImageError if unreadable."""
    try:
        img = _open_within(path, max_pixels, max(size))
    except Exception:  # the pipeline's decoder names the problem exactly as `lookalike search` does
        img = None
    if img is None:
        _, pixels, reason = DecodedImages([path], size, max_pixels, resize)[0]
        if pixels is None:
            raise ImageError(path, reason)
        return pixels
    with contextlib.suppress(Exception):  # as load_image, minus its copy when nothing is to be turned
        if img.getexif().get(ExifTags.Base.Orientation, 1) in (2, 3, 4, 5, 6, 7, 8):
            img = ImageOps.exif_transpose(img)
    height, width = Preprocess(tuple(size), resize=resize).target(*img.size)
    img = _resized(img, (width, height)) if img.size != (width, height) else to_rgb(img)
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)


def _open_within(path: Path, max_pixels: int, draft_size: int) -> Image.Image | None:
    """The decoded first frame (JPEG at a reduced draft size), or None when over ``max_pixels``:
    then nothing is decoded."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        img = Image.open(path)
        if img.width * img.height > max_pixels:
            img.close()
            return None
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        if img.format == "JPEG":
            img.draft(img.mode, (draft_size, draft_size))
        img.load()
    return img


def _resized(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``to_rgb(img).resize(size, BILINEAR, reducing_gap=2.0)``, the same pixels; an L or RGB image is
    first reduced by the factor that resize would use, so the full-size RGB copy is never made."""
    w, h = img.size
    fx, fy = int(w / size[0] / 2.0) or 1, int(h / size[1] / 2.0) or 1
    if img.mode in ("L", "RGB") and (fx > 1 or fy > 1):
        small = to_rgb(img.reduce((fx, fy)))
        img.close()
        return small.resize(size, Image.Resampling.BILINEAR, box=(0, 0, w / fx, h / fy))
    return to_rgb(img).resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


class Busy(Exception):
    """No decode slot now: all are taken and the queue is full, or the wait timed out."""

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


class _Waiter:
    __slots__ = ("loop", "future", "kind", "granted")

    def __init__(self, loop: asyncio.AbstractEventLoop, kind: str) -> None:
        self.loop, self.future, self.kind, self.granted = loop, loop.create_future(), kind, False


def _wake(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class DecodeSlots:
    """At most ``slots`` holders at once; more wait, FIFO and async (no thread held), up to a cap per kind
    for ``timeout`` s, the rest are refused. Not bound to one event loop: TestClient and uvicorn may share it."""

    def __init__(self, slots: int, max_waiting: int, timeout: float) -> None:
        self.slots, self.max_waiting, self.timeout = slots, max_waiting, timeout
        self._lock = threading.Lock()
        self._active = 0
        self._queue: deque[_Waiter] = deque()
        self._waiting: dict[str, int] = {}
        self._mean_hold = 1.0  # seconds, a running estimate for Retry-After

    @property
    def active(self) -> int:
        return self._active

    def waiting(self, kind: str = "search") -> int:
        return self._waiting.get(kind, 0)

    def full(self, kind: str = "search", max_waiting: int | None = None) -> bool:
        """True when a new ``kind`` request would be refused now."""
        cap = self.max_waiting if max_waiting is None else max_waiting
        with self._lock:
            return self._active >= self.slots and self._waiting.get(kind, 0) >= cap

    def retry_after(self) -> int:
        """Seconds after which a refused request may well find a slot (1 to 60)."""
        ahead = self._active + len(self._queue)
        return max(1, min(60, math.ceil(self._mean_hold * ahead / self.slots)))

    @contextlib.asynccontextmanager
    async def hold(self, kind: str = "search", max_waiting: int | None = None) -> AsyncIterator[None]:
        """Hold a slot for the block; raises Busy when none comes (queue full, or waited ``timeout``)."""
        await self._acquire(kind, self.max_waiting if max_waiting is None else max_waiting)
        started = time.monotonic()
        try:
            yield
        finally:
            self._mean_hold = 0.8 * self._mean_hold + 0.2 * (time.monotonic() - started)
            self._release()

    async def _acquire(self, kind: str, cap: int) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._active < self.slots and not self._queue:
                self._active += 1
                return
            if self._waiting.get(kind, 0) >= cap:
                raise Busy(
                    "the server is busy: every decode slot is taken and the queue is full", self.retry_after()
                )
            waiter = _Waiter(loop, kind)
            self._queue.append(waiter)
            self._waiting[kind] = self._waiting.get(kind, 0) + 1
        try:
            await asyncio.wait_for(waiter.future, self.timeout)
        except BaseException as exc:
            with self._lock:
                granted = waiter.granted
                if not granted:
                    self._queue.remove(waiter)
                    self._waiting[kind] -= 1
            if granted:  # the slot came as the wait ended: pass it on
                self._release()
            if isinstance(exc, TimeoutError):
                raise Busy(
                    f"the server is busy: no decode slot came within {self.timeout:g} s", self.retry_after()
                ) from None
            raise

    def _release(self) -> None:
        with self._lock:
            while self._queue:
                waiter = self._queue.popleft()
                self._waiting[waiter.kind] -= 1
                try:
                    waiter.loop.call_soon_threadsafe(_wake, waiter.future)
                except RuntimeError:  # its event loop is closed: nobody waits there any more
                    continue
                waiter.granted = True  # the slot passes on: _active stays
                return
            self._active -= 1


def _busy(exc: Busy) -> HTTPException:
    return HTTPException(503, exc.reason, headers={"Retry-After": str(exc.retry_after)})


class _BusyGate:
    """Answers 503 to an upload at once, before its body is read, while ``slots`` would refuse it."""

    def __init__(self, app: ASGIApp, slots: DecodeSlots) -> None:
        self.app, self.slots = app, slots

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope.get("method") == "POST"
            and scope.get("path", "").endswith(("/search", "/check"))
            and self.slots.full()
        ):
            detail = "the server is busy: every decode slot is taken and the queue is full"
            body = json.dumps({"detail": detail}).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(self.slots.retry_after()).encode()),
                (b"connection", b"close"),
            ]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


class _AsciiJSON(JSONResponse):
    """JSON with every non-ASCII character escaped, so names holding lone surrogates (bytes that are
    not UTF-8, from os.fsdecode) serialise as \\udcXX instead of failing."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class _AnyPath(PathConvertor):
    """Like ``{name:path}``, but newlines match too (a file name may hold one)."""

    regex = r"(?s:.*)"


register_url_convertor("lookalike_path", _AnyPath())


def _exact_name(request: Request, prefix: str, decoded: str) -> str:
    """The path after ``prefix`` exactly as the client sent it, from the raw (percent-encoded) path:
    Starlette decodes escapes as UTF-8 with replacement characters, which loses bytes that are not UTF-8."""
    raw = request.scope.get("raw_path")
    if not raw:
        return decoded
    full = unquote_to_bytes(raw.split(b"?", 1)[0])
    root = (request.scope.get("root_path") or "").encode("utf-8", "surrogateescape")
    head = prefix.encode()
    if root and full.startswith(root) and full[len(root) :].startswith(head):
        full = full[len(root) :]
    if full.startswith(head):
        return os.fsdecode(full[len(head) :])
    return decoded


def _printable(text: str) -> str:
    """``text`` with lone surrogates (undecodable file-name bytes) as U+FFFD, for HTML and titles."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class _ThumbCache:
    """A thread-safe LRU of thumbnail bytes by (path, mtime, size)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize, self._data, self._lock = maxsize, OrderedDict(), threading.Lock()

    def get(self, key: tuple) -> bytes | None:
        with self._lock:
            data = self._data.get(key)
            if data is not None:
                self._data.move_to_end(key)
            return data

    def put(self, key: tuple, data: bytes) -> None:
        with self._lock:
            self._data[key] = data
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)


class _BodyLimit:
    """Answers 413 as soon as a request body is known to pass ``max_bytes``: at once from its
    Content-Length, or while it streams in (chunked uploads), before the rest is read."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await _send_413(send, self.max_bytes)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, _too_large(self.max_bytes))
            return message

        await self.app(scope, limited, send)


def _too_large(max_bytes: int) -> str:
    return f"upload too large: the limit is {max_bytes:,} bytes"


async def _send_413(send: Send, max_bytes: int) -> None:
    body = json.dumps({"detail": _too_large(max_bytes)}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send(
        {"type": "http.response.start", "status": 413, "headers": headers + [(b"connection", b"close")]}
    )
    await send({"type": "http.response.body", "body": body})


DOCS_ASSETS = "/docs-assets"
# the three Swagger UI files /docs needs, and their media types
DOCS_FILES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


def _swagger_assets() -> Path | None:
    """The Swagger UI files of the swagger-ui-bundle-v2 package, or None (then FastAPI's /docs,
    which loads them from a CDN). Swagger UI 5 or later only: FastAPI's OpenAPI 3.1 schema is blank
    in version 4 (the older swagger-ui-bundle package installs into the same module)."""
    try:
        import swagger_ui_bundle

        folder = Path(str(swagger_ui_bundle.swagger_ui_path))
    except (ImportError, AttributeError):
        folder = None
    if folder is not None:
        major = folder.name.removeprefix("swagger-ui-").split(".")[0]
        if major.isdigit() and int(major) >= 5 and all((folder / f).is_file() for f in DOCS_FILES):
            return folder
    log.warning(
        "Swagger UI 5 files not found (pip install swagger-ui-bundle-v2): /docs will load them from a CDN"
    )
    return None


def _self_hosted_docs(app: FastAPI, assets: Path) -> None:
    """``/docs`` with Swagger UI's JavaScript and CSS served from here, so the page works offline
    (FastAPI's default fetches them from a CDN); only the files it needs are served."""
    from fastapi.openapi.docs import get_swagger_ui_html

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        base = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{base}{app.openapi_url}",
            title=f"{app.title} API",
            swagger_js_url=f"{base}{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{base}{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{base}{DOCS_ASSETS}/favicon-32x32.png",
        )

    @app.get(DOCS_ASSETS + "/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> FileResponse:
        if name not in DOCS_FILES:
            raise HTTPException(404, "not found")
        headers = {"Cache-Control": "public, max-age=86400"}
        return FileResponse(assets / name, media_type=DOCS_FILES[name], headers=headers)


def create_app(
    index_folder: str | Path,
    *,
    k: int = 10,
    max_k: int = 100,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    device: str | None = None,
    runtime: str | None = None,
    thumb_size: int = DEFAULT_THUMB_SIZE,
    title: str | None = None,
    max_decodes: int | None = None,
    max_waiting: int | None = None,
    queue_timeout: float = DEFAULT_QUEUE_TIMEOUT,
    config: SearchConfig | None = None,
    min_score: float | str | Path | None = None,
) -> FastAPI:
    """The FastAPI app over the index at ``index_folder``: ``POST /search``, ``GET /``,
    ``GET /health``, ``GET /gallery/{path}``, ``GET /thumbnail/{path}`` and the OpenAPI docs.
    ``k`` is the default number of results (a request may ask up to ``max_k``); request bodies
    over ``max_upload_bytes`` get 413; images over ``max_pixels`` pixels get 400. At most
    ``max_decodes`` images (default: ``default_max_decodes()``) are decoded at once; up to
    ``max_waiting`` more searches (default 4 x max_decodes) wait up to ``queue_timeout`` seconds;
    the others get 503 with Retry-After. ``config`` (a :class:`SearchConfig`, as ``lookalike search``
    takes it) gives the model and metric to check against the index, the search-time steps (query
    expansion, re-ranking) and how images are read; ``device`` and ``runtime`` override its own.
    ``min_score`` (a number or a ``lookalike calibrate`` file) is the threshold ``POST /check`` uses
    when a request names none."""
    if not 1 <= k <= max_k:
        raise InputError(f"k must be between 1 and max_k ({max_k}), not {k}")
    if max_upload_bytes < 1024:
        raise InputError(f"max_upload_bytes must be at least 1024, not {max_upload_bytes}")
    max_decodes = default_max_decodes() if max_decodes is None else max_decodes
    max_waiting = 4 * max_decodes if max_waiting is None else max_waiting
    if max_decodes < 1:
        raise InputError(f"max_decodes must be at least 1, not {max_decodes}")
    if max_waiting < 0:
        raise InputError(f"max_waiting must be 0 or more, not {max_waiting}")
    if not queue_timeout > 0:
        raise InputError(f"queue_timeout must be over 0 seconds, not {queue_timeout}")
    extract = (config or SearchConfig()).extract
    searcher = Searcher(index_folder, device or extract.device, runtime or extract.runtime, config)
    default_threshold = None if min_score is None else searcher.threshold(min_score)
    slots = DecodeSlots(max_decodes, max_waiting, queue_timeout)
    name = _printable(title or f"lookalike · {Path(index_folder).name}")
    assets = _swagger_assets()
    app = FastAPI(
        title="lookalike",
        summary=f"Image search over {len(searcher.names)} gallery images ({searcher.extractor.name})",
        version=_version(),
        docs_url=None if assets else "/docs",
        redoc_url=None,  # one docs page, the one that works offline
    )
    if assets:
        _self_hosted_docs(app, assets)
    app.add_middleware(_BodyLimit, max_bytes=max_upload_bytes)
    app.add_middleware(_BusyGate, slots=slots)
    app.state.searcher = searcher
    app.state.decode_slots = slots
    thumbnails = _ThumbCache(_THUMB_CACHE)

    def urls(request: Request, gallery_name: str) -> tuple[str, str]:
        base = request.scope.get("root_path", "")
        quoted = quote(os.fsencode(gallery_name))  # the name's bytes: str quoting fails on surrogates
        return f"{base}/gallery/{quoted}", f"{base}/thumbnail/{quoted}"

    busy = {
        "description": "Busy: every decode slot is taken and the queue is full, or the wait timed out "
        "(see Retry-After)"
    }

    @app.post(
        "/search",
        response_model=SearchResponse,
        response_class=_AsciiJSON,
        responses={
            400: {"description": "An image type, but the file cannot be decoded"},
            413: {"description": f"Request body over {max_upload_bytes:,} bytes"},
            415: {"description": "Not an image (JPEG, PNG, GIF, BMP, TIFF, WebP, PNM, AVIF, HEIC)"},
            503: busy,
        },
    )
    async def search(
        request: Request,
        file: Annotated[UploadFile, File(description="The query image")],
        k_: Annotated[int, Query(alias="k", ge=1, le=max_k, description="Results to return")] = k,
        min_score: Annotated[
            float | None,
            Query(description="Only results at least this good (a similarity; at most this, for a distance)"),
        ] = None,
    ) -> Response:
        """Rank the gallery for one uploaded image: its top-k, best first (with ``min_score``, only
        those that pass, maybe none)."""
        started = time.perf_counter()
        threshold = None if min_score is None else _request_threshold(min_score)
        hits = await ranked(file, k_, threshold)
        answer = SearchResponse(
            query=file.filename or "upload",
            model=searcher.extractor.name,
            metric=searcher.score_name,
            k=k_,
            seconds=round(time.perf_counter() - started, 4),
            results=results_of(request, hits),
            min_score=threshold,
        )
        return _AsciiJSON(answer.model_dump(mode="json"))

    @app.post(
        "/check",
        response_model=CheckResponse,
        response_class=_AsciiJSON,
        responses={
            400: {"description": "The file cannot be decoded, or no threshold (start with --min-score)"},
            413: {"description": f"Request body over {max_upload_bytes:,} bytes"},
            415: {"description": "Not an image"},
            503: busy,
        },
    )
    async def check(
        request: Request,
        file: Annotated[UploadFile, File(description="The image to check")],
        min_score: Annotated[
            float | None, Query(description="The threshold (default: the server's --min-score)")
        ] = None,
        k_: Annotated[int, Query(alias="k", ge=1, le=max_k, description="Most matches to list")] = k,
    ) -> Response:
        """Is this upload a duplicate (or copy) of something in the index, and of what: the indexed
        images that score past the threshold, best first."""
        started = time.perf_counter()
        if min_score is None and default_threshold is None:
            raise HTTPException(
                400,
                "no threshold: pass min_score, or start the server with --min-score (a score or a calibrate file)",
            )
        threshold = default_threshold if min_score is None else _request_threshold(min_score)
        hits = await ranked(file, k_, threshold)
        answer = CheckResponse(
            query=file.filename or "upload",
            duplicate=bool(hits),
            min_score=threshold,
            model=searcher.extractor.name,
            metric=searcher.score_name,
            seconds=round(time.perf_counter() - started, 4),
            matches=results_of(request, hits),
        )
        return _AsciiJSON(answer.model_dump(mode="json"))

    async def ranked(
        file: UploadFile, k_: int, threshold: float | None
    ) -> list[tuple[str, float, str | None]]:
        """The upload saved to a private temporary file, checked, decoded and searched in a slot."""
        declared = (file.content_type or "").split(";")[0].strip().lower()
        if declared and not (declared.startswith("image/") or declared == "application/octet-stream"):
            raise HTTPException(415, f"expected an image upload, not {declared}")
        with tempfile.TemporaryDirectory(prefix="lookalike-upload-") as tmp:
            path = Path(tmp) / "upload"
            head = await _save_upload(file, path)
            if not head:
                raise HTTPException(400, "the uploaded file is empty")
            if sniff_image_type(head) is None:
                raise HTTPException(
                    415, "not an image lookalike can read (JPEG, PNG, GIF, BMP, TIFF, WebP, PNM, AVIF, HEIC)"
                )
            args = (path, k_, max_pixels) if threshold is None else (path, k_, max_pixels, threshold)
            try:
                async with slots.hold():
                    return await run_in_threadpool(searcher.search_file, *args)
            except Busy as exc:
                raise _busy(exc) from None
            except ImageError as exc:
                raise HTTPException(400, f"cannot read the image: {exc.reason}") from None

    def results_of(request: Request, hits: list[tuple[str, float, str | None]]) -> list[SearchResult]:
        results = []
        for rank, (gallery_name, score, label) in enumerate(hits, start=1):
            url, thumb = urls(request, gallery_name)
            results.append(
                SearchResult(
                    rank=rank, path=gallery_name, score=score, label=label, url=url, thumbnail_url=thumb
                )
            )
        return results

    def _request_threshold(value: float) -> float:
        try:
            return searcher.threshold(value)
        except InputError as exc:
            raise HTTPException(400, str(exc)) from None

    @app.get("/health", response_model=Health)
    def health() -> Health:
        """Liveness and what the server holds."""
        return Health(
            status="ok",
            images=len(searcher.names),
            model=searcher.extractor.name,
            metric=searcher.score_name,
            labelled=searcher.labels is not None,
            gallery_root_found=searcher.root.is_dir(),
            k=k,
            max_upload_bytes=max_upload_bytes,
            refinement=searcher.describe(),
            min_score=default_threshold,
        )

    @app.get("/gallery/{path:lookalike_path}", response_class=FileResponse, responses={403: {}, 404: {}})
    def gallery(request: Request, path: str) -> FileResponse:
        """An indexed gallery file as it is on disk."""
        file = searcher.gallery_file(_exact_name(request, "/gallery/", path))
        media = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        return FileResponse(file, media_type=media, headers={"X-Content-Type-Options": "nosniff"})

    def _file_and_stat(name: str) -> tuple[Path, os.stat_result]:
        file = searcher.gallery_file(name)
        return file, file.stat()

    @app.get("/thumbnail/{path:lookalike_path}", responses={403: {}, 404: {}, 415: {}, 503: busy})
    async def thumb(request: Request, path: str) -> Response:
        """A small JPEG of an indexed gallery file (made once, then kept in memory)."""
        file, stat = await run_in_threadpool(_file_and_stat, _exact_name(request, "/thumbnail/", path))
        key = (file, stat.st_mtime_ns, stat.st_size)
        data = thumbnails.get(key)
        if data is None:
            try:
                async with slots.hold("thumbnail", max(_THUMB_WAITING, max_waiting)):
                    data = await run_in_threadpool(thumbnail_jpeg, file, thumb_size)
            except Busy as exc:
                raise _busy(exc) from None
            except ImageError as exc:
                raise HTTPException(415, f"cannot make a thumbnail: {exc.reason}") from None
            thumbnails.put(key, data)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    page = _PAGE.replace("__TITLE__", _html(name)).replace(
        "__CONFIG__",
        json.dumps(
            {
                "title": name,
                "images": len(searcher.names),
                "model": searcher.extractor.name,
                "metric": searcher.index.metric,
                "k": k,
                "max_upload_bytes": max_upload_bytes,
            }
        ).replace("<", "\\u003c"),
    )

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home() -> HTMLResponse:
        """The search page."""
        return HTMLResponse(page)

    return app


async def _save_upload(upload: UploadFile, path: Path) -> bytes:
    """Copy an upload to ``path`` in chunks; returns its first bytes (empty for an empty file)."""
    head = b""
    with path.open("wb") as out:
        while chunk := await upload.read(_CHUNK):
            if len(head) < 32:
                head += chunk[: 32 - len(head)]
            out.write(chunk)
    return head


def _html(text: str) -> str:
    import html

    return html.escape(text)


def _version() -> str:
    from . import __version__

    return __version__


def serve(
    index_folder: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    log_level: str = "info",
    **app_options: Any,
) -> None:
    """Serve ``create_app(index_folder, **app_options)`` with uvicorn until interrupted (one
    process: the model is loaded once and requests share it)."""
    import uvicorn

    uvicorn.run(create_app(index_folder, **app_options), host=host, port=port, log_level=log_level)


@contextlib.contextmanager
def running_server(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run ``app`` with uvicorn in a background thread and yield its base URL (``port=0`` picks a
    free port); stops it on exit. For tests, notebooks and embedding."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        bound_host, bound_port = sock.getsockname()[:2]
        yield f"http://{bound_host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


_PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222; background: #f6f7f9; }
header { background: #1f2933; color: #fff; padding: 14px 24px; }
header h1 { margin: 0; font-size: 20px; font-weight: 600; }
header .sub { color: #cbd2d9; font-size: 13px; }
main { padding: 18px 24px 40px; max-width: 1280px; }
#drop { border: 2px dashed #9aa5b1; border-radius: 10px; background: #fff; padding: 22px; display: flex; gap: 22px; align-items: center; cursor: pointer; transition: background .15s, border-color .15s; }
#drop.over { background: #e6f0ff; border-color: #3563e9; }
#drop .hint b { font-size: 17px; }
#drop .hint div { color: #616e7c; font-size: 13px; margin-top: 4px; }
#preview { width: 150px; height: 150px; border-radius: 6px; background: #eef0f3; display: flex; align-items: center; justify-content: center; overflow: hidden; flex: 0 0 auto; color: #9aa5b1; font-size: 12px; }
#preview img { max-width: 100%; max-height: 100%; }
#status { margin: 14px 0 6px; min-height: 22px; color: #52606d; }
#status.error { color: #b71c1c; font-weight: 600; }
#results { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr)); gap: 14px; }
.result { background: #fff; border-radius: 8px; box-shadow: 0 1px 3px rgba(0,0,0,.12); overflow: hidden; }
.result a { display: flex; align-items: center; justify-content: center; height: 190px; background: #eef0f3; }
.result img { max-width: 100%; max-height: 190px; display: block; }
.result .meta { padding: 6px 10px 8px; font-size: 12px; }
.result .rank { font-weight: 700; font-size: 14px; }
.result .score { float: right; color: #3e4c59; font-variant-numeric: tabular-nums; }
.result .path { color: #52606d; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.result.first { outline: 3px solid #3563e9; }
input[type=file] { display: none; }
</style>
</head>
<body>
<header><h1 id="title"></h1><div class="sub" id="sub"></div></header>
<main>
  <label id="drop" for="file">
    <div id="preview">no image yet</div>
    <div class="hint"><b>Drop an image here, or click to choose one</b>
      <div id="limits"></div></div>
  </label>
  <input type="file" id="file" accept="image/*">
  <div id="status" role="status" aria-live="polite"></div>
  <div id="results"></div>
</main>
<script type="application/json" id="config">__CONFIG__</script>
<script>
(function () {
  "use strict";
  var C = JSON.parse(document.getElementById("config").textContent);
  var drop = document.getElementById("drop"), input = document.getElementById("file");
  var status = document.getElementById("status"), box = document.getElementById("results");
  var preview = document.getElementById("preview"), lastUrl = null;
  document.getElementById("title").textContent = C.title;
  document.getElementById("sub").textContent = C.images + " gallery images \u00b7 model " + C.model +
    " \u00b7 " + (C.metric === "cosine" ? "cosine similarity (higher is better)" : C.metric + " distance (lower is better)");
  document.getElementById("limits").textContent = "JPEG, PNG, GIF, BMP, TIFF or WebP, up to " +
    (C.max_upload_bytes / 1048576).toFixed(1) + " MB; shows the top " + C.k + ".";
  function el(tag, cls, text) { var e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; }
  function say(text, isError) { status.textContent = text; status.className = isError ? "error" : ""; }
  function show(file) {
    if (lastUrl) URL.revokeObjectURL(lastUrl);
    lastUrl = URL.createObjectURL(file);
    var img = el("img"); img.alt = file.name; img.src = lastUrl;
    img.onerror = function () { preview.replaceChildren(el("span", null, file.name)); };
    preview.replaceChildren(img);
  }
  function render(data) {
    var frag = document.createDocumentFragment();
    data.results.forEach(function (r) {
      var card = el("div", "result" + (r.rank === 1 ? " first" : ""));
      card.dataset.rank = r.rank; card.dataset.path = r.path;
      var a = el("a"); a.href = r.url; a.target = "_blank"; a.rel = "noopener";
      var img = el("img"); img.alt = r.path; img.loading = "lazy"; img.src = r.thumbnail_url; a.appendChild(img);
      card.appendChild(a);
      var meta = el("div", "meta");
      meta.appendChild(el("span", "rank", "#" + r.rank));
      meta.appendChild(el("span", "score", r.score.toFixed(4)));
      var p = el("div", "path", r.path); p.title = r.path; meta.appendChild(p);
      if (r.label !== null && r.label !== undefined) meta.appendChild(el("div", "label", "label: " + r.label));
      card.appendChild(meta); frag.appendChild(card);
    });
    box.replaceChildren(frag);
    say(data.results.length + " results for " + data.query + " in " + data.seconds.toFixed(2) + " s");
    document.body.dataset.state = "done";
  }
  function search(file) {
    if (!file) return;
    show(file);
    box.replaceChildren();
    if (file.size > C.max_upload_bytes) { say(file.name + " is too large (limit " + C.max_upload_bytes + " bytes)", true); document.body.dataset.state = "error"; return; }
    say("searching\u2026"); document.body.dataset.state = "busy";
    var form = new FormData(); form.append("file", file, file.name);
    fetch("search?k=" + C.k, { method: "POST", body: form }).then(function (resp) {
      return resp.json().catch(function () { return { detail: resp.statusText }; }).then(function (body) {
        if (!resp.ok) throw new Error(typeof body.detail === "string" ? body.detail : "error " + resp.status);
        render(body);
      });
    }).catch(function (e) { say("Search failed: " + e.message, true); document.body.dataset.state = "error"; });
  }
  input.addEventListener("change", function () { search(input.files[0]); input.value = ""; });
  ["dragenter", "dragover"].forEach(function (t) { drop.addEventListener(t, function (e) { e.preventDefault(); drop.classList.add("over"); }); });
  ["dragleave", "drop"].forEach(function (t) { drop.addEventListener(t, function (e) { e.preventDefault(); drop.classList.remove("over"); }); });
  drop.addEventListener("drop", function (e) { if (e.dataTransfer && e.dataTransfer.files.length) search(e.dataTransfer.files[0]); });
  window.addEventListener("dragover", function (e) { e.preventDefault(); });
  window.addEventListener("drop", function (e) { e.preventDefault(); });
})();
</script>
</body>
</html>
"""
