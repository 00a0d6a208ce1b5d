"""The HTML report: every query and its results in order, marks, metrics, thumbnails made once."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pytest
from PIL import Image

import lookalike
from lookalike.errors import InputError
from lookalike.report import load_results, report_from_json, thumbnail_jpeg, write_report


def report_data(path: Path) -> dict:
    """The data block a report page renders from."""
    text = path.read_text(encoding="utf-8")
    match = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S)
    assert match, "no data block in the report"
    return json.loads(match.group(1))


@pytest.fixture(scope="module")
def pixels_run(photo_set: tuple[Path, Path]) -> lookalike.SearchRun:
    query, gallery = photo_set
    return lookalike.evaluate(
        query, gallery, model="pixels", options=lookalike.ExtractOptions(use_cache=False)
    )


def test_report_holds_every_query_and_its_results_in_order(
    pixels_run: lookalike.SearchRun, photo_set: tuple[Path, Path], tmp_path: Path
) -> None:
    query, gallery = photo_set
    out = write_report(pixels_run, query, gallery, tmp_path / "report.html", progress=False)
    html = out.read_text(encoding="utf-8")
    data = report_data(out)
    ranking = pixels_run.ranking()
    assert [q["name"] for q in data["queries"]] == list(ranking)
    for q, row, scores in zip(data["queries"], pixels_run.indices, pixels_run.scores, strict=True):
        assert [r[0] for r in q["results"]] == ranking[q["name"]]
        assert [r[2] for r in q["results"]] == pytest.approx([float(s) for s in scores])
        assert len(q["results"]) == len(row) == 10
        # labels from the class folders: each result marked right or wrong
        assert [r[3] for r in q["results"]] == [
            int(n.split("/")[0] == q["label"]) for n in ranking[q["name"]]
        ]
        assert q["label"] == q["name"].split("/")[0]
    # full-ranking metrics at the top, exactly the run's
    figures = dict(data["metrics"]["figures"])
    assert figures == {
        "top-1": pixels_run.metrics.top_k[1],
        "top-3": pixels_run.metrics.top_k[3],
        "top-10": pixels_run.metrics.top_k[10],
        "mAP": pixels_run.metrics.mean_ap,
        "µAP": pixels_run.metrics.micro_ap,
    }
    # self-contained: no external fetches
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "http://" not in html and "https://" not in html


def test_thumbnails_are_small_and_each_made_once(
    pixels_run: lookalike.SearchRun, photo_set: tuple[Path, Path], tmp_path: Path
) -> None:
    query, gallery = photo_set
    out = write_report(pixels_run, query, gallery, tmp_path / "r.html", thumb_size=64, progress=False)
    data = report_data(out)
    # 5 queries + 15 gallery images, though the gallery ones appear 50 times in the lists
    assert len(data["thumbs"]) == 20
    used = [q["img"] for q in data["queries"]] + [r[1] for q in data["queries"] for r in q["results"]]
    assert sorted(set(used)) == list(range(20))
    for encoded in data["thumbs"]:
        img = Image.open(io.BytesIO(base64.b64decode(encoded)))
        assert img.format == "JPEG" and max(img.size) == 64
    # the same gallery image has the same thumbnail id wherever it appears
    ids: dict[str, int] = {}
    for q in data["queries"]:
        for name, tid, *_ in q["results"]:
            assert ids.setdefault(name, tid) == tid


def test_failures_are_marked_and_ranked(
    pixels_run: lookalike.SearchRun, photo_set: tuple[Path, Path], tmp_path: Path
) -> None:
    query, gallery = photo_set
    data = report_data(
        write_report(pixels_run, query, gallery, tmp_path / "r.html", failures_first=True, progress=False)
    )
    assert data["failures_first"] is True
    first = pixels_run.metrics.first_correct_rank
    for q in data["queries"]:
        assert q["rank"] == first[q["name"]]
        assert q["status"] == ("ok" if first[q["name"]] == 1 else "fail")
    failed = [q["name"] for q in data["queries"] if q["status"] == "fail"]
    assert failed, "the pixels baseline is expected to miss at least one query of this set"
    assert data["metrics"]["failures"] == len(failed)


def test_report_from_results_json_in_every_format(
    pixels_run: lookalike.SearchRun, photo_set: tuple[Path, Path], tmp_path: Path
) -> None:
    query, gallery = photo_set
    ranking = pixels_run.ranking()
    for name, kwargs in (("plain", {}), ("scores", {"scores": True})):
        results = tmp_path / f"{name}.json"
        pixels_run.write_json(results, **kwargs)
        data = report_data(
            report_from_json(results, query, gallery, tmp_path / f"{name}.html", progress=False)
        )
        assert {q["name"]: [r[0] for r in q["results"]] for q in data["queries"]} == ranking
        assert all(t for t in data["thumbs"]), "every image was found and encoded"
        # labels come from the class folders; figures from the lists agree with full rankings on top-k
        figures = dict(data["metrics"]["figures"])
        assert figures["top-1"] == pixels_run.metrics.top_k[1]
        assert figures["top-10"] == pixels_run.metrics.top_k[10]
        assert figures["mAP"] <= pixels_run.metrics.mean_ap + 1e-12
        scored = [r[2] for q in data["queries"] for r in q["results"]]
        assert all(s is None for s in scored) if name == "plain" else all(s is not None for s in scored)
    # the challenge format keeps file names only: images and labels are found by file name
    challenge = tmp_path / "challenge.json"
    pixels_run.write_json(challenge, fmt="challenge", group="team")
    data = report_data(report_from_json(challenge, query, gallery, tmp_path / "c.html", progress=False))
    assert all(t for t in data["thumbs"])
    assert [q["label"] for q in data["queries"]] == [q.split("/")[0] for q in ranking]
    marks = [[int(n.split("/")[0] == q.split("/")[0]) for n in row] for q, row in ranking.items()]
    assert [[r[3] for r in q["results"]] for q in data["queries"]] == marks


def test_options_k_labels_and_title(
    pixels_run: lookalike.SearchRun, photo_set: tuple[Path, Path], tmp_path: Path
) -> None:
    query, gallery = photo_set
    data = report_data(
        write_report(
            pixels_run,
            query,
            gallery,
            tmp_path / "r.html",
            k=3,
            labels=None,
            title="<b>x</b>",
            progress=False,
        )
    )
    assert all(len(q["results"]) == 3 for q in data["queries"])
    assert all(q["status"] is None and all(r[3] is None for r in q["results"]) for q in data["queries"])
    assert data["labelled"] is False
    assert "<title>&lt;b&gt;x&lt;/b&gt;</title>" in (tmp_path / "r.html").read_text(encoding="utf-8")
    # labels given explicitly; a query whose label no gallery image has is "excluded", not a failure
    q_labels = {q: q.split("/")[0] for q in pixels_run.query_names}
    q_labels[pixels_run.query_names[0]] = "nowhere"
    g_labels = {g: g.split("/")[0] for g in pixels_run.gallery_names}
    results = {q: pixels_run.ranking()[q] for q in pixels_run.query_names}
    data = report_data(
        write_report(
            results, query, gallery, tmp_path / "e.html", labels=(q_labels, g_labels), progress=False
        )
    )
    assert data["queries"][0]["status"] == "excluded"
    assert data["metrics"]["excluded"] == 1 and data["metrics"]["queries"] == len(results) - 1


def test_missing_images_and_bad_inputs(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    query, gallery = photo_set
    results = {"chelsea/chelsea_query0.jpg": ["chelsea/chelsea_copy0.jpg", "nope/missing.jpg"]}
    data = report_data(write_report(results, query, gallery, tmp_path / "r.html", progress=False))
    assert data["thumbs"][data["queries"][0]["results"][1][1]] == ""  # drawn as "not found"
    bad = tmp_path / "bad.json"
    for text, message in (
        ("{", "not a readable JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"q.jpg": "g.jpg"}', "expected a list"),
        ('{"q.jpg": [{"score": 1}]}', "each entry must be"),
        ('{"q.jpg": [{"image": "g.jpg", "score": "high"}]}', "not a number"),
    ):
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(InputError, match=message):
            report_from_json(bad, query, gallery, tmp_path / "x.html", progress=False)
    with pytest.raises(InputError, match="no such file"):
        load_results(tmp_path / "absent.json")
    with pytest.raises(InputError, match="nothing to report"):
        write_report({}, query, gallery, tmp_path / "x.html")
    with pytest.raises(InputError, match="is a folder"):
        write_report(results, query, gallery, tmp_path, progress=False)


def test_thumbnail_follows_exif_orientation(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: the upright image is 20 wide, 40 high
    img.save(tmp_path / "r.jpg", exif=exif)
    thumb = Image.open(io.BytesIO(thumbnail_jpeg(tmp_path / "r.jpg", 16)))
    assert thumb.size == (8, 16)


def test_subtitle_names_the_options_that_shaped_the_ranking(
    photo_set: tuple[Path, Path], tmp_path: Path
) -> None:
    from lookalike.pipeline import Refinement

    query, gallery = photo_set
    run = lookalike.evaluate(
        query,
        gallery,
        model="pixels",
        options=lookalike.ExtractOptions(use_cache=False),
        refinement=Refinement(
            whiten=True, whiten_dim=4, whiten_shrinkage=0.3, dba=2, rerank="k-reciprocal", rerank_top=12
        ),
    )
    data = report_data(write_report(run, query, gallery, tmp_path / "r.html", progress=False))
    assert "model pixels (whiten 4-d shrinkage 0.3, dba 2, rerank k-reciprocal top 12)" in data["subtitle"]


def test_the_method_line_names_every_step_of_a_run() -> None:
    from lookalike.report import _model_text

    # the copies preset's run: query scales (a flag) once made the report fail with a traceback
    model = {"name": "efficientnet-lite0", "options": {"pool": "gem", "multiscale": True}}
    steps = {
        "whiten": {"dim": 128, "shrinkage": 1.0, "views": 2},
        "query_scales": True,
        "query_resize": "fit",
        "regions": {"levels": 2, "count": 5, "query": True},
        "gallery_norm": {"k": 3},
        "score_norm": {"k": 10, "background": None},
    }
    assert _model_text(model, steps) == (
        "efficientnet-lite0 (pool gem, multiscale, whiten 128-d learned from 2 views, query scales, "
        "query resize fit, regions 2 and query regions, gallery norm 3, score norm 10)"
    )
    stored = {"index": {"whiten": {"kind": "pca-whitening", "dim": 64, "shrinkage": 0.1, "requested_dim": 64}}}
    assert _model_text({"name": "m"}, {**stored, "qe": {"k": 3, "alpha": 3.0}}) == (
        "m (index whiten 64-d shrinkage 0.1, qe 3)"
    )
