"""A real browser (headless Chromium, Debian's package, driven by Playwright) on the search page
served by uvicorn and on HTML reports: uploads find their match first; big reports stay quick."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import lookalike
from lookalike.index import build_index
from lookalike.report import report_from_json, write_report
from lookalike.samples import make_copy_detection_set
from lookalike.server import create_app, running_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium package to run the browser tests")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    tab.errors = []
    tab.on("pageerror", lambda exc: tab.errors.append(str(exc)))
    yield tab
    context.close()


@pytest.fixture(scope="module")
def site(browser: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(base URL, query folder): uvicorn on a free 127.0.0.1 port serving an index of real photos."""
    root = tmp_path_factory.mktemp("site")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOOKALIKE_CACHE", str(tmp_path_factory.getbasetemp() / "served-cache"))
        query, gallery = make_copy_detection_set(root / "set", photos=PHOTOS, gallery_copies=3, seed=3)
        build_index(
            gallery,
            root / "g.index",
            model="efficientnet-lite0",
            options=lookalike.ExtractOptions(progress=False),
        )
        with running_server(create_app(root / "g.index", k=8)) as base:
            yield base, query


def wait_done(tab: Any) -> str:
    tab.wait_for_selector("body[data-state=done], body[data-state=error]", timeout=60_000)
    return tab.get_attribute("body", "data-state")


def test_upload_in_the_page_ranks_the_match_first(page: Any, site: tuple[str, Path], tmp_path: Path) -> None:
    base, query = site
    page.goto(base + "/")
    assert "gallery images" in page.inner_text("#sub")
    page.set_input_files("#file", str(query / "chelsea" / "chelsea_query0.jpg"))
    assert wait_done(page) == "done", page.inner_text("#status")
    cards = page.locator(".result")
    assert cards.count() == 8
    ranked = [cards.nth(i).get_attribute("data-path") for i in range(cards.count())]
    assert ranked[0].startswith("chelsea/")
    assert all(p.startswith("chelsea/") for p in ranked[:3])
    assert [cards.nth(i).get_attribute("data-rank") for i in range(3)] == ["1", "2", "3"]
    # the thumbnails really load from the server, and the query shows as a preview
    page.wait_for_function(
        "() => [...document.querySelectorAll('.result img')].slice(0, 3).every(i => i.complete && i.naturalWidth > 0)"
    )
    assert page.evaluate("document.querySelector('#preview img').naturalWidth") > 0
    shot = tmp_path / "search-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert Image.open(shot).size[0] >= 1280
    assert page.errors == []


def test_drop_an_image_and_see_errors(page: Any, site: tuple[str, Path]) -> None:
    base, query = site
    page.goto(base + "/")
    data = base64.b64encode((query / "rocket" / "rocket_query0.jpg").read_bytes()).decode()
    page.evaluate(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "dropped.jpg", {type: "image/jpeg"}));
            document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
        }""",
        data,
    )
    assert wait_done(page) == "done"
    assert page.locator(".result").first.get_attribute("data-path").startswith("rocket/")
    assert "dropped.jpg" in page.inner_text("#status")
    # a text file is refused by the server (415) and the page says why
    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}])
    assert wait_done(page) == "error"
    assert "expected an image upload" in page.inner_text("#status")
    assert page.locator(".result").count() == 0
    assert page.errors == []


def test_api_docs_render_offline(page: Any, site: tuple[str, Path]) -> None:
    base, _ = site
    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(base) else None)
    page.goto(base + "/docs")
    page.wait_for_selector(".opblock-summary-path[data-path='/search']", timeout=30_000)
    assert outside == [] and page.errors == []


def test_report_page_marks_results_and_puts_failures_first(
    page: Any, photo_set: tuple[Path, Path], tmp_path: Path
) -> None:
    query, gallery = photo_set
    run = lookalike.evaluate(
        query, gallery, model="pixels", options=lookalike.ExtractOptions(use_cache=False)
    )
    assert run.metrics is not None
    out = write_report(run, query, gallery, tmp_path / "report.html", failures_first=True, progress=False)
    page.goto(out.as_uri())
    rows = page.locator(".row")
    assert rows.count() == 5
    failed = [q for q, r in run.metrics.first_correct_rank.items() if r > 1]
    worst_first = sorted(failed, key=lambda q: -run.metrics.first_correct_rank[q])
    assert [rows.nth(i).get_attribute("data-query") for i in range(len(failed))] == worst_first
    ranking = run.ranking()
    correct = sum(n.split("/")[0] == q.split("/")[0] for q, row in ranking.items() for n in row)
    assert page.locator(".cell.ok").count() == correct
    assert page.locator(".cell.bad").count() == 50 - correct
    assert page.locator(".card[data-metric='top-1'] b").inner_text() == f"{run.metrics.top_k[1]:.3f}"
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    # in-page controls: only the failures; then the searched order again
    page.check("#failures-only")
    assert rows.count() == len(failed)
    page.uncheck("#failures-only")
    page.uncheck("#failures-first")
    assert [rows.nth(i).get_attribute("data-query") for i in range(5)] == list(ranking)
    assert page.errors == []


def test_report_of_1000_queries_opens_quickly_and_pages(
    page: Any, photo_set: tuple[Path, Path], tmp_path: Path
) -> None:
    _, gallery = photo_set
    gallery_names = sorted(p.relative_to(gallery).as_posix() for p in gallery.rglob("*.jpg"))
    rng = np.random.default_rng(0)
    query = tmp_path / "query"
    results: dict[str, list[dict[str, Any]]] = {}
    for i in range(1000):
        label = PHOTOS[i % len(PHOTOS)]
        name = f"{label}/q{i:04d}.jpg"
        (query / label).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (24, 24), tuple(int(c) for c in rng.integers(0, 256, 3))).save(query / name)
        order = rng.permutation(len(gallery_names))[:10]
        results[name] = [
            {"image": gallery_names[j], "score": round(1 - n / 10, 3)} for n, j in enumerate(order)
        ]
    results_json = tmp_path / "results.json"
    results_json.write_text(json.dumps(results), encoding="utf-8")
    out = report_from_json(
        results_json, query, gallery, tmp_path / "big.html", failures_first=True, progress=False
    )
    started = time.perf_counter()
    page.goto(out.as_uri())
    page.wait_for_selector(".row")
    opened = time.perf_counter() - started
    assert opened < 10, f"the report took {opened:.1f} s to show its first page"
    assert page.locator(".row").count() == 25, "only one page of queries is in the document"
    assert page.locator(".row img").count() <= 25 * 11
    assert "of 1000" in page.inner_text("#shown")
    first_page = page.locator(".row").first.get_attribute("data-query")
    page.click("#next")
    assert page.get_attribute("body", "data-page") == "2"
    assert page.locator(".row").first.get_attribute("data-query") != first_page
    page.fill("#filter", "q0999")
    assert page.locator(".row").count() == 1
    assert page.errors == []
