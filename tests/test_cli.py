"""The command line end to end on real photos."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lookalike.cli import app

runner = CliRunner()


def _invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_search_writes_ranked_json_and_uses_the_cache(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    query, gallery = photo_set
    out = tmp_path / "results.json"
    result = _invoke("search", query, gallery, "-k", "3", "-o", out, "--evaluate")
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert sorted(doc) == sorted(p.relative_to(query).as_posix() for p in query.rglob("*.jpg"))
    for ranked in doc.values():
        assert len(ranked) == 3 and all("/" in g and "\\" not in g for g in ranked)
        assert (gallery / ranked[0]).is_file()
    correct = sum(ranked[0].split("/")[0] == q.split("/")[0] for q, ranked in doc.items())
    assert correct >= 4
    assert "top-1" in result.output and "mAP" in result.output
    again = _invoke("search", query, gallery, "-o", out)
    assert "gallery: 15 images, 15 from cache, nothing new extracted" in again.output


def test_scores_and_challenge_format(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    query, gallery = photo_set
    out = tmp_path / "scores.json"
    assert _invoke("search", query, gallery, "-k", "2", "-o", out, "--scores", "-q").exit_code == 0
    doc = json.loads(out.read_text())
    first = next(iter(doc.values()))
    assert set(first[0]) == {"image", "score"} and first[0]["score"] >= first[1]["score"]
    out2 = tmp_path / "challenge.json"
    result = _invoke("search", query, gallery, "-o", out2, "--format", "challenge", "--group", "team", "-q")
    assert result.exit_code == 0, result.output
    challenge = json.loads(out2.read_text())
    assert challenge["groupname"] == "team"
    assert set(challenge["images"]) == {p.name for p in query.rglob("*.jpg")}
    assert all("/" not in g for ranked in challenge["images"].values() for g in ranked)
    assert _invoke("search", query, gallery, "--format", "challenge").exit_code == 2
    result = _invoke("search", query, gallery, "-o", tmp_path / "g.json", "--group", "team")  # default format
    assert result.exit_code == 2 and "--group names the group of --format challenge" in result.output
    assert not (tmp_path / "g.json").exists()


def test_evaluate_with_per_query_json(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    query, gallery = photo_set
    report = tmp_path / "metrics.json"
    result = _invoke("evaluate", query, gallery, "-m", "pixels", "--json", report)
    assert result.exit_code == 0, result.output
    doc = json.loads(report.read_text())
    assert {"top1", "top3", "top10", "mAP", "per_query"} <= doc.keys()
    assert all(1 <= v["first_correct_rank"] <= 15 for v in doc["per_query"].values())


def test_evaluate_needs_labels(tmp_path: Path, photo_set: tuple[Path, Path]) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in photo_set[0].rglob("*.jpg"):
        shutil.copy(p, flat / f"{p.parent.name}.jpg")
    result = _invoke("evaluate", flat, photo_set[1])
    assert result.exit_code == 2 and "labels" in result.output


def test_bad_files_skipped_strict_and_nothing_to_do(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    query, gallery = photo_set
    mixed = tmp_path / "gallery"
    shutil.copytree(gallery, mixed)
    (mixed / "chelsea" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    result = _invoke(
        "search",
        query,
        mixed,
        "-m",
        "pixels",
        "-o",
        tmp_path / "r.json",
        "--summary",
        tmp_path / "s.json",
    )
    assert result.exit_code == 0
    assert "chelsea/broken.jpg" in result.output
    summary = json.loads((tmp_path / "s.json").read_text())
    assert [s["path"] for s in summary["skipped"]] == ["chelsea/broken.jpg"]
    strict = _invoke("search", query, mixed, "-m", "pixels", "--strict", "-o", tmp_path / "r2.json")
    assert strict.exit_code == 1 and "broken.jpg" in strict.output
    empty = tmp_path / "bad_queries"
    empty.mkdir()
    (empty / "a.jpg").write_bytes(b"")
    nothing = _invoke("search", empty, mixed, "-m", "pixels")
    assert nothing.exit_code == 1 and "none of the 1 image(s) could be read" in nothing.output


def test_models_lists_offline_status() -> None:
    result = _invoke("models")
    assert result.exit_code == 0
    for name in ("resnet50", "efficientnet-lite0", "pixels"):
        assert name in result.output


@pytest.mark.parametrize(
    "args", [["search", "/nonexistent", "/nonexistent"], ["search", ".", ".", "-m", "nope"]]
)
def test_usage_errors_are_one_line(args: list[str]) -> None:
    result = _invoke(*args)
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_demo_runs_offline(tmp_path: Path) -> None:
    result = _invoke("demo", "--out", tmp_path / "demo", "-q")
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert len(doc) == 14 and all(len(v) == 10 for v in doc.values())
    assert "mAP" in result.output


def test_report_and_compare_commands(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    query, gallery = photo_set
    results, page = tmp_path / "r.json", tmp_path / "report.html"
    result = _invoke("search", query, gallery, "-m", "pixels", "-o", results, "--report", page, "-q")
    assert result.exit_code == 0, result.output
    html = page.read_text()
    assert all(p.relative_to(query).as_posix() in html for p in query.rglob("*.jpg"))
    again = _invoke(
        "report", results, "--query", query, "--gallery", gallery, "-o", tmp_path / "r2.html", "-q"
    )
    assert again.exit_code == 0 and (tmp_path / "r2.html").stat().st_size > 1000
    table = _invoke(
        "compare", query, gallery, "-m", "pixels", "-m", "efficientnet-lite0", "-o", tmp_path / "cmp", "-q"
    )
    assert table.exit_code == 0, table.output
    csv_text = (tmp_path / "cmp" / "comparison.csv").read_text()
    evaluated = _invoke("evaluate", query, gallery, "-m", "pixels", "--json", tmp_path / "m.json", "-q")
    assert evaluated.exit_code == 0
    pixels_map = json.loads((tmp_path / "m.json").read_text())["mAP"]
    rows = {r["method"]: r for r in csv.DictReader(io.StringIO(csv_text))}
    assert float(rows["pixels"]["mAP"]) == pytest.approx(pixels_map)
    assert (tmp_path / "cmp" / "comparison.png").is_file()


def test_local_methods_and_spatial_rerank(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    from lookalike import local
    from lookalike.methods import is_local_method

    assert set(local.LOCAL_METHODS) <= set(local.available_methods())
    assert all(is_local_method(m) for m in local.available_methods())  # one registry: -m takes them all
    query, gallery = photo_set
    surf = _invoke("evaluate", query, gallery, "-m", "surf", "--json", tmp_path / "surf.json", "-q")
    assert surf.exit_code == 0, surf.output
    assert json.loads((tmp_path / "surf.json").read_text())["top1"] >= 0.8
    out = tmp_path / "reranked.json"
    reranked = _invoke(
        "search",
        query,
        gallery,
        "-m",
        "pixels",
        "--rerank",
        "sift",
        "--rerank-top",
        "5",
        "-k",
        "3",
        "-o",
        out,
        "--evaluate",
    )
    assert reranked.exit_code == 0, reranked.output
    plain = tmp_path / "plain.json"
    assert _invoke("search", query, gallery, "-m", "pixels", "-k", "3", "-o", plain, "-q").exit_code == 0

    def correct(path: Path) -> int:
        doc = json.loads(path.read_text())
        return sum(ranked[0].split("/")[0] == q.split("/")[0] for q, ranked in doc.items())

    assert correct(out) >= correct(plain) and correct(out) >= 4


def test_train_then_search_with_the_checkpoint(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    query, gallery = photo_set
    run = tmp_path / "run"
    result = _invoke(
        "train",
        "cnn",
        gallery,
        "-o",
        run,
        "--epochs",
        "2",
        "-O",
        "image_size=32",
        "--val-fraction",
        "0.34",
        "-q",
    )
    assert result.exit_code == 0, result.output
    assert {"best.pt", "config.json", "history.csv", "loss.png"} <= {p.name for p in run.iterdir()}
    out = tmp_path / "r.json"
    searched = _invoke("search", query, gallery, "-m", run / "best.pt", "-k", "3", "-o", out, "-q")
    assert searched.exit_code == 0, searched.output
    assert len(json.loads(out.read_text())) == 5
    assert _invoke("train", "gan", gallery, "-o", tmp_path / "x", "-q").exit_code == 2


def test_index_build_stores_whitening_and_search_applies_it(
    photo_set: tuple[Path, Path], tmp_path: Path
) -> None:
    query, gallery = photo_set
    target = tmp_path / "w.index"
    built = _invoke(
        "index",
        "build",
        gallery,
        "-o",
        target,
        "-m",
        "pixels",
        "--whiten",
        "--whiten-dim",
        "6",
        "--dba",
        "2",
        "-q",
    )
    assert built.exit_code == 0, built.output
    info = _invoke("index", "info", target)
    assert "pca-whitening" in info.output and '"dba"' in info.output
    out = tmp_path / "summary.json"
    found = _invoke("evaluate", query, target, "--json", out, "-q")
    assert found.exit_code == 0, found.output
    assert json.loads(out.read_text())["refinement"]["index"]["whiten"]["dim"] == 6
    twice = runner.invoke(app, ["search", str(query), str(target), "--whiten"])
    assert twice.exit_code != 0 and "already stores whiten" in twice.output


def test_search_min_score_keeps_only_passing_matches(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    """--min-score S (or a calibrate file) returns only results scoring S or more, maybe none, and
    the summary counts the queries that matched; a file for another model is refused in one line."""
    query, gallery = photo_set
    full, cut = tmp_path / "full.json", tmp_path / "cut.json"
    assert _invoke("search", query, gallery, "-k", "4", "--scores", "-o", full, "-q").exit_code == 0
    ranked = json.loads(full.read_text())
    scores = sorted(r["score"] for rows in ranked.values() for r in rows)
    m = len(scores) // 2
    s = round((scores[m - 1] + scores[m]) / 2, 6)  # between two scores, clear of the JSON's rounding
    assert scores[m] - scores[m - 1] > 1e-5
    summary = tmp_path / "summary.json"
    result = _invoke(
        "search", query, gallery, "-k", "4", "--scores", "--min-score", s, "-o", cut, "--summary", summary
    )
    assert result.exit_code == 0, result.output
    kept = json.loads(cut.read_text())
    assert kept == {q: [r for r in rows if r["score"] >= s] for q, rows in ranked.items()}
    matched = sum(bool(rows) for rows in kept.values())
    assert json.loads(summary.read_text())["matched_queries"] == matched
    assert f"{matched} of {len(kept)} queries have a match" in result.output
    nothing = _invoke("search", query, gallery, "--min-score", "1.5", "-o", cut, "-q")
    assert nothing.exit_code == 0 and all(rows == [] for rows in json.loads(cut.read_text()).values())
    threshold = tmp_path / "t.json"
    threshold.write_text(json.dumps({"threshold": s, "score": "cosine", "model": {"name": "pixels"}}))
    wrong = _invoke("search", query, gallery, "--min-score", threshold, "-o", cut, "-q")
    assert wrong.exit_code == 2 and wrong.output.count("\n") == 1 and "model 'pixels'" in wrong.output


def test_rerank_options_reach_the_re_ranker(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    """--rerank-option KEY=VALUE sets the spatial re-ranker's settings (coerced, recorded in the
    summary); an unknown key or one without --rerank is a one-line error."""
    query, gallery = photo_set
    summary = tmp_path / "summary.json"
    args = (
        "search",
        query,
        gallery,
        "-m",
        "pixels",
        "-k",
        "3",
        "--rerank",
        "sift",
        "--rerank-top",
        "3",
        "-q",
    )
    done = _invoke(
        *args, "--rerank-option", "max_keypoints=300", "--rerank-option", "fusion=rank", "--summary", summary
    )
    assert done.exit_code == 0, done.output
    rerank = json.loads(summary.read_text())["refinement"]["rerank"]
    assert rerank["options"] == {"max_keypoints": 300, "fusion": "rank"}
    assert json.loads(summary.read_text())["metric"] == "sift inliers + rank fusion"
    bad = _invoke(*args, "--rerank-option", "nope=1")
    assert bad.exit_code == 2 and bad.output.count("\n") == 1 and "has no option(s) nope" in bad.output
    alone = _invoke("search", query, gallery, "--rerank-option", "ratio=0.8", "-q")
    assert alone.exit_code == 2 and "give --rerank too" in alone.output
    wrong = _invoke(*args, "--rerank-option", "max_keypoints=many")
    assert wrong.exit_code == 2 and wrong.output.count("\n") == 1 and "max_keypoints" in wrong.output
