"""The HTTP API: search answers as the pipeline does, each limit holds, concurrent requests agree."""

from __future__ import annotations

import asyncio
import io
import json
import os
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

import lookalike
from lookalike.errors import InputError
from lookalike.index import build_index
from lookalike.samples import make_copy_detection_set
from lookalike.server import create_app, running_server, sniff_image_type

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera")
LIMIT = 300_000


@dataclass
class Served:
    query: Path
    gallery: Path
    index: Path
    cache: Path
    client: TestClient


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """An efficientnet-lite0 index of real photos, plus a file beside them that is not indexed and
    an indexed symlink that leads out of the gallery root."""
    root = tmp_path_factory.mktemp("served")
    with pytest.MonkeyPatch.context() as mp:
        # one cache for the served modules of a session: the ONNX export of the model is made once
        cache = tmp_path_factory.getbasetemp() / "served-cache"
        mp.setenv("LOOKALIKE_CACHE", str(cache))
        query, gallery = make_copy_detection_set(root / "set", photos=PHOTOS, gallery_copies=3, seed=2)
        (gallery / "notes.txt").write_text("not for the web", encoding="utf-8")
        outside = root / "outside.jpg"
        Image.new("RGB", (64, 48), (250, 200, 0)).save(outside)
        (gallery / "linked").mkdir()
        (gallery / "linked" / "out.jpg").symlink_to(outside)
        build_index(
            gallery,
            root / "g.index",
            model="efficientnet-lite0",
            options=lookalike.ExtractOptions(progress=False),
        )
        app = create_app(root / "g.index", k=5, max_upload_bytes=LIMIT)
        with TestClient(app) as client:
            yield Served(query, gallery, root / "g.index", cache, client)


def upload(
    client: TestClient | httpx.Client,
    data: bytes,
    name: str = "q.jpg",
    mime: str = "image/jpeg",
    k: int | None = None,
) -> httpx.Response:
    params = {} if k is None else {"k": k}
    return client.post("/search", files={"file": (name, data, mime)}, params=params)


def test_health_and_openapi(served: Served) -> None:
    health = served.client.get("/health").json()
    assert health == {
        "status": "ok",
        "images": 16,
        "model": "efficientnet-lite0",
        "metric": "cosine",
        "labelled": True,
        "gallery_root_found": True,
        "k": 5,
        "max_upload_bytes": LIMIT,
        "refinement": {},
        "min_score": None,
    }
    spec = served.client.get("/openapi.json").json()
    assert {"/search", "/health", "/gallery/{path}", "/thumbnail/{path}"} <= set(spec["paths"])
    search = spec["paths"]["/search"]["post"]
    assert "multipart/form-data" in search["requestBody"]["content"]
    assert {"400", "413", "415"} <= set(search["responses"])
    docs = served.client.get("/docs")
    assert docs.status_code == 200 and "/docs-assets/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower()  # served from here: the docs work offline
    asset = served.client.get("/docs-assets/swagger-ui-bundle.js")
    assert asset.status_code == 200 and "javascript" in asset.headers["content-type"]
    assert not any(p.startswith("/docs") for p in spec["paths"])
    assert served.client.get("/docs-assets/index.html").status_code == 404  # only what /docs needs
    assert served.client.get("/docs-assets/..%2Fswagger-ui.css").status_code == 404
    page = served.client.get("/")
    assert page.status_code == 200 and 'type="file"' in page.text and "fetch(" in page.text


def test_search_answers_as_the_pipeline(served: Served) -> None:
    options = lookalike.ExtractOptions(progress=False, cache_dir=served.cache)
    run = lookalike.search(served.query, served.index, k=5, options=options)
    for q, row, scores in zip(run.query_names, run.indices, run.scores, strict=True):
        path = served.query / q
        response = upload(served.client, path.read_bytes(), name=path.name)
        assert response.status_code == 200, response.text
        body = response.json()
        assert [r["path"] for r in body["results"]] == [run.gallery_names[j] for j in row]
        assert [r["score"] for r in body["results"]] == pytest.approx(scores.tolist(), abs=1e-5)
        assert [r["rank"] for r in body["results"]] == [1, 2, 3, 4, 5]
        assert body["results"][0]["label"] == q.split("/")[0] and body["query"] == path.name
        first = body["results"][0]
        original = served.client.get(first["url"])
        assert (
            original.status_code == 200 and original.content == (served.gallery / first["path"]).read_bytes()
        )
        thumb = served.client.get(first["thumbnail_url"])
        assert thumb.headers["content-type"] == "image/jpeg"
        assert max(Image.open(io.BytesIO(thumb.content)).size) <= 192


def test_k_parameter(served: Served) -> None:
    data = (served.query / "coffee" / "coffee_query0.jpg").read_bytes()
    assert len(upload(served.client, data, k=2).json()["results"]) == 2
    assert len(upload(served.client, data, k=50).json()["results"]) == 16  # the whole gallery
    assert upload(served.client, data, k=0).status_code == 422
    assert upload(served.client, data, k=101).status_code == 422


def test_upload_size_cap_413(served: Served) -> None:
    big = b"\xff\xd8\xff" + bytes(LIMIT)
    response = upload(served.client, big)
    assert response.status_code == 413 and "limit" in response.json()["detail"]


def test_size_cap_is_checked_while_the_body_streams(served: Served) -> None:
    """A chunked upload (no Content-Length) is counted as it arrives: the app answers 413 at the
    chunk that crosses the cap and never reads the rest."""
    chunk, chunks_read, sent = 10_000, 0, []
    preamble = (
        b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n\xff\xd8\xff"
    )

    async def receive() -> dict:
        nonlocal chunks_read
        chunks_read += 1
        body = preamble if chunks_read == 1 else b"x" * chunk
        return {"type": "http.request", "body": body, "more_body": chunks_read < 10_000}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/search",
        "raw_path": b"/search",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"multipart/form-data; boundary=xyz"), (b"host", b"test")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    asyncio.run(served.client.app(scope, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
    assert chunks_read == 1 + (LIMIT - len(preamble)) // chunk + 1, "stopped at the first chunk past the cap"


def test_only_images_415(served: Served) -> None:
    pdf = b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n"
    assert upload(served.client, b"hello", name="a.txt", mime="text/plain").status_code == 415
    # the header says image, the content does not
    response = upload(served.client, pdf, name="fake.jpg", mime="image/jpeg")
    assert response.status_code == 415 and "not an image" in response.json()["detail"]
    assert upload(served.client, pdf, name="x.bin", mime="application/octet-stream").status_code == 415
    # a real PNG sent as octet-stream is fine: the content decides
    buffer = io.BytesIO()
    Image.open(served.query / "rocket" / "rocket_query0.jpg").save(buffer, "PNG")
    response = upload(served.client, buffer.getvalue(), name="blob", mime="application/octet-stream")
    assert response.status_code == 200 and response.json()["results"][0]["label"] == "rocket"


def test_avif_and_heic_uploads_are_searched(served: Served) -> None:
    photo = Image.open(served.query / "rocket" / "rocket_query0.jpg")
    formats = ["AVIF"]
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
        formats.append("HEIF")
    except ImportError:
        pass
    for fmt in formats:
        buffer = io.BytesIO()
        photo.save(buffer, fmt)
        assert sniff_image_type(buffer.getvalue()[:32]) in ("avif", "heif")
        response = upload(served.client, buffer.getvalue(), name="photo", mime="application/octet-stream")
        assert response.status_code == 200, (fmt, response.text)
        assert response.json()["results"][0]["label"] == "rocket"


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression-bomb shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


def test_bad_images_400(served: Served) -> None:
    jpeg = (served.query / "chelsea" / "chelsea_query0.jpg").read_bytes()
    truncated = upload(served.client, jpeg[:1500])
    assert truncated.status_code == 400 and "truncated or corrupt" in truncated.json()["detail"]
    assert upload(served.client, b"").json()["detail"] == "the uploaded file is empty"
    huge = upload(served.client, _png_claiming(10_000, 8_000), name="huge.png", mime="image/png")
    assert huge.status_code == 400 and "over the limit" in huge.json()["detail"]
    assert served.client.post("/search", data={"note": "no file"}).status_code == 422


@pytest.mark.parametrize(
    "url",
    [
        "/gallery/..%2F..%2Fetc%2Fpasswd",
        "/gallery/%2Fetc%2Fpasswd",
        "/gallery/chelsea/..%2F..%2Fg.index%2Flookalike-index.json",
        "/gallery/notes.txt",
        "/gallery/chelsea/nothing.jpg",
        "/thumbnail/..%2F..%2Fetc%2Fpasswd",
    ],
)
def test_gallery_serves_only_indexed_files_under_the_root(served: Served, url: str) -> None:
    response = served.client.get(url)
    assert response.status_code == 404 and "root:x:" not in response.text


def test_symlink_out_of_the_root_is_refused(served: Served) -> None:
    assert served.client.get("/gallery/linked/out.jpg").status_code == 403
    assert served.client.get("/thumbnail/linked/out.jpg").status_code == 403
    assert served.client.get("/gallery/chelsea/chelsea_copy0.jpg").status_code == 200


def test_concurrent_requests_give_the_same_answers(served: Served) -> None:
    files = [served.query / p / f"{p}_query0.jpg" for p in PHOTOS]
    expected = {f.name: upload(served.client, f.read_bytes()).json()["results"] for f in files}
    app = served.client.app
    with running_server(app) as base, httpx.Client(base_url=base, timeout=60) as client:

        def one(path: Path) -> tuple[str, list]:
            response = upload(client, path.read_bytes(), name=path.name)
            assert response.status_code == 200, response.text
            return path.name, response.json()["results"]

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(one, files * 4))
    assert len(answers) == 20
    for name, results in answers:
        assert [r["path"] for r in results] == [r["path"] for r in expected[name]]
        assert [r["score"] for r in results] == pytest.approx([r["score"] for r in expected[name]], abs=1e-6)


def test_bad_settings_and_index(served: Served, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="k must be"):
        create_app(served.index, k=0)
    with pytest.raises(InputError, match="not a lookalike index"):
        create_app(tmp_path)


def test_sniff_image_type() -> None:
    assert sniff_image_type(b"\xff\xd8\xff\xe0") == "jpeg"
    assert sniff_image_type(b"GIF89a....") == "gif"
    assert sniff_image_type(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    assert sniff_image_type(b"P6\n32 32\n255\n") == "pnm"
    assert sniff_image_type(b"BM" + bytes(12) + (40).to_bytes(4, "little")) == "bmp"
    assert sniff_image_type(b"BMW cars are nice") is None
    assert sniff_image_type(b"<svg xmlns=") is None
    assert sniff_image_type(b"") is None


# file names as a file system may hold them: bytes that are not UTF-8, a newline, URL metacharacters
ODD_NAMES = [
    b"caf\xe9.png",
    b"new\nline.png",
    "ünï 100% #?.png".encode(),
    b"100%2F.png",
    b"d\xfcr/a b.png",
    b"plain.png",
]


@pytest.fixture(scope="module")
def odd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, TestClient]]:
    """A `pixels` index over noise images whose file names are the ODD_NAMES."""
    if os.name != "posix":
        pytest.skip("needs a file system that takes any bytes in names")
    root = tmp_path_factory.mktemp("odd")
    gallery = root / "gallery"
    rng = np.random.default_rng(5)
    for raw in ODD_NAMES:
        path = os.path.join(os.fsencode(gallery), raw)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as out:
            Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(out, "PNG")
    build_index(gallery, root / "g.index", model="pixels", options=lookalike.ExtractOptions(progress=False))
    with TestClient(create_app(root / "g.index", k=3)) as client:
        yield gallery, client


def _check_odd_names(client: TestClient | httpx.Client, gallery: Path) -> None:
    for raw in ODD_NAMES:
        name = os.fsdecode(raw)
        data = (gallery / name).read_bytes()
        response = upload(client, data, name="q.png", mime="image/png")
        assert response.status_code == 200, response.text
        assert response.content.isascii()  # lone surrogates go out as \udcXX escapes
        first = response.json()["results"][0]
        assert first["path"] == name and first["score"] == pytest.approx(1.0)
        assert "\n" not in first["url"] and " " not in first["url"]
        original = client.get(first["url"])
        assert original.status_code == 200 and original.content == data, (name, first["url"])
        thumb = client.get(first["thumbnail_url"])
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"


def test_odd_file_names_are_searched_and_served(odd: tuple[Path, TestClient]) -> None:
    gallery, client = odd
    _check_odd_names(client, gallery)
    body = upload(client, (gallery / os.fsdecode(b"caf\xe9.png")).read_bytes(), mime="image/png").content
    assert b'"path":"caf\\udce9.png"' in body and b"/gallery/caf%E9.png" in body
    assert json.loads(body)["results"][0]["path"] == "caf\udce9.png"  # json.loads gives the exact name


def test_odd_file_names_through_uvicorn(odd: tuple[Path, TestClient]) -> None:
    """The same over a real server: uvicorn builds the scope (raw path, decoding) its own way."""
    gallery, client = odd
    with running_server(client.app) as base, httpx.Client(base_url=base, timeout=60) as live:
        _check_odd_names(live, gallery)
        assert live.get("/gallery/plain.png%0A").status_code == 404
        assert live.get("/gallery/caf%C3%A9.png").status_code == 404  # UTF-8 é: another name


@pytest.mark.parametrize(
    "url",
    [
        "/gallery/plain.png%0A",  # a trailing newline is part of the name, not dropped
        "/gallery/new%0Aline.png%0A",
        "/gallery/caf%E9.png%00",
        "/gallery/caf%C3%A9.png",  # the UTF-8 spelling of café is not the Latin-1 file
        "/thumbnail/caf%FF.png",
        "/gallery/d%FCr/..%2F..%2F..%2Fetc%2Fpasswd",
        "/gallery/%0A..%2F..%2Fetc%2Fpasswd",
    ],
)
def test_odd_names_serve_only_indexed_files(odd: tuple[Path, TestClient], url: str) -> None:
    response = odd[1].get(url)
    assert response.status_code == 404 and "root:x:" not in response.text


def test_server_takes_a_search_config(served: Served) -> None:
    """create_app(config=...) searches as `lookalike search` with the same SearchConfig does:
    query expansion and spatial re-ranking on every request, the re-ranker's scores named; a model
    or metric other than the index's, or gallery-fitted steps, are refused at start."""
    from lookalike.config import SearchConfig

    config = SearchConfig.from_preset(
        refinement={"qe": 2, "rerank": "sift", "rerank_top": 6},
        extract=lookalike.ExtractOptions(progress=False, num_workers=0, cache_dir=served.cache),
    )
    query = sorted(served.query.rglob("*.jpg"))[0]
    expected = lookalike.search(query, served.index, k=4, config=config)
    with TestClient(create_app(served.index, k=4, config=config)) as client:
        health = client.get("/health").json()
        assert (
            health["refinement"]["qe"] == {"k": 2, "alpha": 3.0}
            and health["refinement"]["rerank"]["method"] == "sift"
        )
        answer = upload(client, query.read_bytes()).json()
    assert [r["path"] for r in answer["results"]] == expected.ranking()[expected.query_names[0]]
    assert [r["score"] for r in answer["results"]] == pytest.approx(expected.scores[0].tolist(), abs=1e-4)
    assert answer["metric"] == expected.metric != "cosine"
    for bad, message in (
        ({"model": "pixels"}, "built with model 'efficientnet-lite0', not 'pixels'"),
        ({"metric": "euclidean"}, "built for cosine scores"),
        ({"refinement": {"dba": 2}}, "store them with the index"),
    ):
        with pytest.raises(InputError, match=message):
            create_app(served.index, config=SearchConfig.from_preset(**bad))


def test_min_score_and_check(served: Served, tmp_path: Path) -> None:
    """POST /search?min_score keeps only the results that pass; POST /check answers "is this a copy
    of something indexed, and of what" with the server's threshold (a number or a calibrate file)
    or the request's; a file for another score or model is refused at start."""
    query = sorted(served.query.rglob("*.jpg"))[0]
    full = upload(served.client, query.read_bytes(), k=5).json()["results"]
    cut = (full[0]["score"] + full[-1]["score"]) / 2
    passed = served.client.post(
        "/search", files={"file": ("q.jpg", query.read_bytes(), "image/jpeg")}, params={"min_score": cut, "k": 5}
    ).json()
    assert [r["path"] for r in passed["results"]] == [r["path"] for r in full if r["score"] >= cut]
    assert 0 < len(passed["results"]) < len(full) and passed["min_score"] == cut
    assert served.client.post("/check", files={"file": ("q.jpg", query.read_bytes(), "image/jpeg")}).status_code == 400
    model = lookalike.index.GalleryIndex.open(served.index).model
    threshold = tmp_path / "t.json"
    threshold.write_text(json.dumps({"threshold": cut, "score": "cosine", "model": model}), encoding="utf-8")
    with TestClient(create_app(served.index, k=5, min_score=threshold)) as client:
        assert client.get("/health").json()["min_score"] == cut
        answer = client.post("/check", files={"file": ("q.jpg", query.read_bytes(), "image/jpeg")}).json()
        assert answer["duplicate"] is True and answer["min_score"] == cut
        assert [m["path"] for m in answer["matches"]] == [r["path"] for r in passed["results"]]
        strict = client.post(
            "/check", files={"file": ("q.jpg", query.read_bytes(), "image/jpeg")}, params={"min_score": 1.01}
        ).json()
        assert strict["duplicate"] is False and strict["matches"] == []
    threshold.write_text(json.dumps({"threshold": cut, "score": "euclidean", "model": model}), encoding="utf-8")
    with pytest.raises(InputError, match="euclidean scores"):
        create_app(served.index, min_score=threshold)


def test_server_normalises_scores_as_search_does(served: Served) -> None:
    from lookalike.config import SearchConfig

    config = SearchConfig.from_preset(
        refinement={"score_norm": 3}, extract=lookalike.ExtractOptions(progress=False, cache_dir=served.cache)
    )
    query = sorted(served.query.rglob("*.jpg"))[1]
    expected = lookalike.search(query, served.index, k=4, config=config)
    with TestClient(create_app(served.index, k=4, config=config)) as client:
        answer = upload(client, query.read_bytes()).json()
    assert answer["metric"] == expected.metric == "normalised cosine"
    assert [r["path"] for r in answer["results"]] == expected.ranking()[expected.query_names[0]]
    assert [r["score"] for r in answer["results"]] == pytest.approx(expected.scores[0].tolist(), abs=1e-4)
