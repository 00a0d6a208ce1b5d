"""`lookalike calibrate` on a tiny labelled set of real photos and edited copies (raw-pixel model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import lookalike
from lookalike.calibrate import calibrate, load_threshold
from lookalike.cli import app
from lookalike.config import SearchConfig
from lookalike.errors import InputError
from lookalike.images import ImageSet

PIXELS = SearchConfig(model="pixels")


def _invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def _one_error_line(result) -> str:  # noqa: ANN001
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.stderr and len(lines) >= 1
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


def _labels(root: Path, names: list[str]) -> dict[str, str]:
    return {n: n.split("/")[0] for n in names}


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_threshold_reaches_the_target_on_the_searched_pairs(
    photo_set: tuple[Path, Path], metric: str
) -> None:
    query, gallery = photo_set
    config = SearchConfig(model="pixels", metric=metric)
    cal = calibrate(query, gallery, 0.99, config=config, k=5)
    assert cal.reached and cal.score == metric and cal.model["name"] == "pixels"
    assert cal.curve.n_pairs == 5 * 5 and cal.curve.n_positives == 5 * 3  # 5 queries, 3 copies each
    # recount independently from the search's own scored lists
    run = lookalike.search(query, gallery, k=5, config=config)
    q_lab, g_lab = _labels(query, run.query_names), _labels(gallery, run.gallery_names)
    hits = np.array(
        [
            [q_lab[q] == g_lab[run.gallery_names[j]] for j in row]
            for q, row in zip(run.query_names, run.indices, strict=True)
        ]
    )
    taken = run.scores >= cal.threshold if metric == "cosine" else run.scores <= cal.threshold
    assert taken.sum() >= 1
    assert hits[taken].mean() == pytest.approx(cal.precision) and cal.precision >= 0.99
    assert hits[taken].sum() / 15 == pytest.approx(cal.recall)
    # the next looser score would have let precision fall below the target, or added no recall
    others = run.scores[~taken]
    if others.size:
        nxt = others.max() if metric == "cosine" else others.min()
        looser = run.scores >= nxt if metric == "cosine" else run.scores <= nxt
        assert hits[looser].mean() < 0.99 or hits[looser].sum() == hits[taken].sum()


def test_cli_writes_a_loadable_file_and_plot(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    query, gallery = photo_set
    out, plot = tmp_path / "threshold.json", tmp_path / "curve.png"
    result = _invoke("calibrate", query, gallery, "-m", "pixels", "-k", "5", "-o", out, "--plot", plot, "-q")
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    assert set(doc) >= {
        "threshold",
        "score",
        "model",
        "target_precision",
        "precision",
        "recall",
        "pairs",
        "positives",
    }
    assert doc["score"] == "cosine" and doc["target_precision"] == 0.99 and doc["precision"] >= 0.99
    assert doc["pairs"] == 25 and doc["positives"] == 15 and 2 <= len(doc["curve"]) <= 200
    assert [doc["threshold"], doc["precision"], doc["recall"]] in doc["curve"]
    assert "threshold" in result.stdout and "recall" in result.stdout  # the curve table is printed
    assert plot.read_bytes().startswith(b"\x89PNG")
    loaded = load_threshold(out, score="cosine", model="pixels")
    assert float(loaded) == doc["threshold"] and loaded.higher_is_better
    assert loaded.accepts(np.array([doc["threshold"], doc["threshold"] - 1e-3])).tolist() == [True, False]
    # a rerun replaces its own threshold file
    again = _invoke(
        "calibrate", query, gallery, "-m", "pixels", "-k", "5", "-o", out, "--precision", "0.5", "-q"
    )
    assert again.exit_code == 0 and json.loads(out.read_text())["target_precision"] == 0.5


def test_loader_refuses_another_score_kind_or_model(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    query, gallery = photo_set
    out = calibrate(query, gallery, 0.9, config=PIXELS, k=3).write(tmp_path / "t.json")
    with pytest.raises(
        InputError, match="threshold for cosine scores, but this search scores by euclidean"
    ) as info:
        load_threshold(out, score="euclidean")
    assert "\n" not in str(info.value)
    with pytest.raises(InputError, match="model 'pixels', not 'efficientnet-lite0'"):
        load_threshold(out, score="cosine", model="efficientnet-lite0")
    with pytest.raises(InputError, match="options"):
        load_threshold(out, model={"name": "pixels", "options": {"grey": True, "size": 16}})
    for text in ("not json", json.dumps({"threshold": "high", "score": "cosine"}), json.dumps([1, 2])):
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(InputError, match="bad.json"):
            load_threshold(tmp_path / "bad.json")
    with pytest.raises(InputError, match="no such threshold file"):
        load_threshold(tmp_path / "missing.json")


def test_unreachable_precision_exits_1_and_writes_nothing(
    photo_set: tuple[Path, Path], tmp_path: Path
) -> None:
    query, gallery = photo_set
    # every gallery copy labelled as the next photo: the best-scoring pairs are all "wrong"
    photos = sorted(p.name for p in gallery.iterdir())
    shifted = {a: b for a, b in zip(photos, photos[1:] + photos[:1], strict=True)}
    labels = tmp_path / "gallery-labels.csv"
    rows = [
        f"{p.relative_to(gallery).as_posix()},{shifted[p.parent.name]}"
        for p in sorted(gallery.rglob("*.jpg"))
    ]
    labels.write_text("\n".join(rows) + "\n")
    cal = calibrate(query, gallery, 0.99, config=PIXELS, k=5, gallery_labels=labels)
    assert not cal.reached and cal.threshold is None and cal.best_precision < 0.99
    with pytest.raises(InputError, match="not reachable"):
        cal.write(tmp_path / "never.json")
    out, plot = tmp_path / "t.json", tmp_path / "t.png"
    args = ["calibrate", query, gallery, "-m", "pixels", "-k", "5", "--gallery-labels", labels]
    result = _invoke(*args, "-o", out, "--plot", plot, "-q")
    assert result.exit_code == 1
    assert "precision 0.99 is not reachable" in _one_error_line(result)
    assert not out.exists() and not plot.exists()
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_bad_options_are_one_line_errors(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    query, gallery = photo_set
    base = ["calibrate", query, gallery, "-m", "pixels", "-q"]
    assert "--precision" in _one_error_line(_invoke(*base, "--precision", "1.5", "-o", tmp_path / "a.json"))
    assert "--precision" in _one_error_line(_invoke(*base, "--precision", "0", "-o", tmp_path / "a.json"))
    # an unlabelled query list
    listing = tmp_path / "queries.txt"
    listing.write_text("\n".join(str(p) for p in sorted(query.rglob("*.jpg"))) + "\n")
    unlabelled = _invoke("calibrate", listing, gallery, "-m", "pixels", "-q", "-o", tmp_path / "b.json")
    assert unlabelled.exit_code == 2 and "needs labels" in _one_error_line(unlabelled)
    # an existing file that is not a threshold file is never overwritten
    precious = tmp_path / "notes.json"
    precious.write_text('{"mine": 1}')
    refused = _invoke(*base, "-o", precious)
    assert refused.exit_code == 2 and "not a threshold file" in _one_error_line(refused)
    assert precious.read_text() == '{"mine": 1}'
    # an output that is an input
    labels = tmp_path / "labels.csv"
    labels.write_text("x.jpg,a\n")
    clash = _invoke(*base, "--gallery-labels", labels, "-o", labels)
    assert clash.exit_code == 2 and "input" in _one_error_line(clash)
    with pytest.raises(InputError, match="-k"):
        calibrate(query, gallery, config=PIXELS, k=0)
    with pytest.raises(InputError, match="labels"):
        calibrate(ImageSet.from_path(listing), gallery, config=PIXELS)


def test_a_saved_index_calibrates_like_its_folder(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    query, gallery = photo_set
    built = _invoke("index", "build", gallery, "-o", tmp_path / "idx", "-m", "pixels", "-q")
    assert built.exit_code == 0, built.output
    from_index = calibrate(query, tmp_path / "idx", 0.99, k=5)
    from_folder = calibrate(query, gallery, 0.99, config=PIXELS, k=5)
    assert from_index.score == "cosine" and from_index.model["name"] == "pixels"
    assert (from_index.threshold, from_index.recall) == (from_folder.threshold, from_folder.recall)
    with pytest.raises(InputError, match="index"):
        calibrate(query, tmp_path / "idx", k=5, gallery_labels=tmp_path / "labels.csv")


def test_a_threshold_is_for_the_steps_it_was_measured_with(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    """A file records the refinement it was measured with; a search, a server or a dedup whose
    score-changing steps differ refuse it in one line, and whitening stored in an index counts the
    same as whitening fitted at search time. Files without the record (older ones) still load."""
    from fastapi.testclient import TestClient

    from lookalike.dedup import find_duplicates
    from lookalike.pipeline import Refinement
    from lookalike.server import create_app

    query, gallery = photo_set
    white = SearchConfig(model="pixels", refinement=Refinement(whiten=True, whiten_dim=8))
    out = calibrate(query, gallery, 0.9, config=white, k=3).write(tmp_path / "w.json")
    doc = json.loads(out.read_text())
    assert doc["refinement"] == {"whiten": {"dim": 8, "shrinkage": 10.0}}
    kept = lookalike.search(query, gallery, k=3, config=white, min_score=out)  # the same steps: accepted
    assert kept.min_score == doc["threshold"]
    with pytest.raises(InputError, match=r"w\.json: a threshold measured with other steps \(whiten") as info:
        lookalike.search(query, gallery, k=3, config=PIXELS, min_score=out)
    assert "\n" not in str(info.value)
    scaled = SearchConfig(model="pixels", refinement=Refinement(whiten=True, whiten_dim=8, qe=2))
    with pytest.raises(InputError, match="qe"):
        lookalike.search(query, gallery, k=3, config=scaled, min_score=out)
    built = _invoke("index", "build", gallery, "-o", tmp_path / "idx", "-m", "pixels", "--whiten", "--whiten-dim", "8", "-q")
    assert built.exit_code == 0, built.output
    lookalike.search(query, tmp_path / "idx", k=3, min_score=out)  # stored whitening: the same steps
    with TestClient(create_app(tmp_path / "idx", min_score=out)):
        pass
    find_duplicates(tmp_path / "idx", threshold_file=out)
    with pytest.raises(InputError, match="other steps"):
        find_duplicates(gallery, config=PIXELS, threshold_file=out)
    (tmp_path / "scaled.json").write_text(json.dumps({**doc, "refinement": {**doc["refinement"], "query_scales": True}}))
    with pytest.raises(InputError, match=r"query_scales: on there, off here\).*\(--no-query-scales, as this run has them\)"):
        load_threshold(tmp_path / "scaled.json", refinement={"index": {"whiten": {"dim": 8, "requested_dim": 8, "shrinkage": 10.0}}})
    normed = {**doc, "refinement": {"score_norm": {"k": 2, "background": "elsewhere/"}}}
    (tmp_path / "normed.json").write_text(json.dumps(normed))
    with pytest.raises(InputError, match="score_norm: k 2, background True there, k 2, background False here"):
        load_threshold(tmp_path / "normed.json", refinement={"score_norm": {"k": 2, "background": None}})
    # an index of regions is searched by them with or without --regions: one threshold serves both
    regional = SearchConfig(model="pixels", refinement=Refinement(regions=2))
    by_regions = calibrate(query, gallery, 0.5, config=regional, k=3).write(tmp_path / "r.json")
    built = _invoke("index", "build", gallery, "-o", tmp_path / "ridx", "-m", "pixels", "--regions", "2", "-q")
    assert built.exit_code == 0, built.output
    lookalike.search(query, tmp_path / "ridx", k=3, min_score=by_regions)
    lookalike.search(query, tmp_path / "ridx", k=3, refinement=Refinement(regions=2), min_score=by_regions)
    with pytest.raises(InputError, match="region_upscale.*calibrate with the same options"):  # the model's options
        lookalike.search(query, gallery, k=3, config=PIXELS, min_score=by_regions)
    for bad in ([1, 2], None, {"whiten": True}, {"index": {"dba": 3}}, {"query_scales": "false"}):
        (tmp_path / "bad.json").write_text(json.dumps({**doc, "refinement": bad}))
        with pytest.raises(InputError, match=r'bad\.json: "refinement" ') as info:
            lookalike.search(query, gallery, k=3, config=white, min_score=tmp_path / "bad.json")
        assert "\n" not in str(info.value)
    del doc["refinement"]  # a file from before steps were recorded: taken as it is
    (tmp_path / "old.json").write_text(json.dumps(doc))
    lookalike.search(query, gallery, k=3, config=PIXELS, min_score=tmp_path / "old.json")
