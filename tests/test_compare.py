"""Method comparison: the table's figures are exactly `evaluate`'s; Markdown, CSV and chart written."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from PIL import Image

import lookalike
from lookalike.compare import CSV_NAMES, FIGURES, compare
from lookalike.errors import InputError
from lookalike.index import build_index

METHODS = ["pixels", "efficientnet-lite0"]


def test_compare_figures_equal_evaluate(
    photo_set: tuple[Path, Path], tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    query, gallery = photo_set
    # no feature cache: every run extracts; the exported ONNX model is shared with the server tests
    options = lookalike.ExtractOptions(
        use_cache=False, cache_dir=tmp_path_factory.getbasetemp() / "served-cache", progress=False
    )
    table = compare(query, gallery, METHODS, tmp_path / "cmp", options=options)
    assert [row.method for row in table.rows] == METHODS
    with (tmp_path / "cmp" / "comparison.csv").open(newline="", encoding="utf-8") as handle:
        written = list(csv.DictReader(handle))
    md = (tmp_path / "cmp" / "comparison.md").read_text(encoding="utf-8")
    for row, line in zip(table.rows, written, strict=True):
        alone = lookalike.evaluate(query, gallery, model=row.method, options=options).metrics
        assert alone is not None
        expected = {f"top-{k}": v for k, v in alone.top_k.items()} | {
            "mAP": alone.mean_ap,
            "µAP": alone.micro_ap,
        }
        assert row.figures() == expected
        assert {f: float(line[CSV_NAMES.get(f, f)]) for f in (*FIGURES, "µAP")} == expected
        assert line["method"] == row.method and int(line["queries"]) == alone.n_queries == 5
        assert (
            f"| {row.method} | {row.model['name']} | " + " | ".join(f"{v:.4f}" for v in expected.values())
            in md
        )
    # the methods really differ on this set, so the table is not one run copied
    assert table.rows[0].figures() != table.rows[1].figures()
    chart = Image.open(tmp_path / "cmp" / "comparison.png")
    assert chart.format == "PNG" and chart.size[0] >= 600
    assert set(table.files) == {"markdown", "csv", "chart"}


def test_compare_checks_its_inputs(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    query, gallery = photo_set
    with pytest.raises(InputError, match="at least one method"):
        compare(query, gallery, [])
    with pytest.raises(InputError, match="given twice"):
        compare(query, gallery, ["pixels", "pixels"])
    with pytest.raises(InputError, match="unknown model"):
        compare(query, gallery, ["pixels", "no-such-model"], tmp_path / "x")
    assert not (tmp_path / "x").exists(), "a bad method fails before anything runs or is written"
    index, _ = build_index(gallery, tmp_path / "g.index", model="pixels")
    with pytest.raises(InputError, match="saved index"):
        compare(query, index.folder, ["pixels"])
    unlabelled = tmp_path / "flat"
    unlabelled.mkdir()
    Image.new("RGB", (32, 32), (10, 20, 30)).save(unlabelled / "a.jpg")
    with pytest.raises(InputError, match="labels"):
        compare(unlabelled, gallery, ["pixels"])


def test_compare_never_overwrites_files_it_did_not_write(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    query, gallery = photo_set
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "comparison.md").write_text("the user's notes\n", encoding="utf-8")
    with pytest.raises(InputError, match=r"holds comparison\.md, not written by lookalike compare"):
        compare(query, gallery, ["pixels"], theirs)
    assert (theirs / "comparison.md").read_text(encoding="utf-8") == "the user's notes\n"
    assert sorted(p.name for p in theirs.iterdir()) == ["comparison.md"]
    with pytest.raises(InputError, match="lies inside .* a searched folder"):
        compare(query, gallery, ["pixels"], gallery / "cmp")
    assert not (gallery / "cmp").exists(), "the chart would be a gallery image of the next search"
    ours = tmp_path / "ours"
    compare(query, gallery, ["pixels"], ours)
    (ours / "comparison.csv").write_text("stale\n", encoding="utf-8")
    table = compare(query, gallery, ["pixels"], ours, chart=False)  # its own folder: rewritten
    assert (ours / "comparison.csv").read_text(encoding="utf-8").startswith("method,")
    assert set(table.files) == {"markdown", "csv"}
    (ours / ".lookalike-compare").unlink()  # a folder written before the marker: known by its table
    compare(query, gallery, ["pixels"], ours, chart=False)
