"""Folder walks that meet symbolic links and odd names, and one labels.csv for query and gallery."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from lookalike import ExtractOptions, ImageError, ImageSet, InputError, create_extractor, embed, load_image
from lookalike.cli import app

needs_symlinks = pytest.mark.skipif(not hasattr(os, "symlink") or os.name == "nt", reason="POSIX symlinks")


def _images(root: Path, names: list[str], colour: tuple[int, int, int] = (200, 30, 30)) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), colour).save(root / name)


# --- symbolic links -------------------------------------------------------------------------------


class _Records(logging.Handler):
    """Collects records on the ``lookalike`` logger itself (the CLI turns its propagation off)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@needs_symlinks
def test_loop_to_itself_is_walked_once_and_reported(tmp_path: Path) -> None:
    gallery = tmp_path / "gallery"
    _images(gallery, ["a.png", "sub/b.png"])
    (gallery / "loop").symlink_to(".")
    (gallery / "sub" / "back").symlink_to("..")
    logger, handler = logging.getLogger("lookalike"), _Records()
    logger.addHandler(handler)
    try:
        images = ImageSet.from_path(gallery)
    finally:
        logger.removeHandler(handler)
    assert images.names == ["a.png", "sub/b.png"]
    reasons = dict(images.skipped_links)
    assert reasons.keys() == {"loop", "sub/back"}
    assert all(r.startswith("symlink loop") for r in reasons.values())
    logged = " ".join(r.getMessage() for r in handler.records)
    assert str(gallery / "loop") in logged and str(gallery / "sub" / "back") in logged


@needs_symlinks
def test_link_to_an_ancestor_outside_the_gallery_is_a_loop(tmp_path: Path) -> None:
    gallery = tmp_path / "photos" / "gallery"
    _images(gallery, ["a.png"])
    _images(tmp_path / "photos", ["outside.png"])
    (gallery / "up").symlink_to(tmp_path / "photos")
    images = ImageSet.from_path(gallery)
    assert images.names == ["a.png"]
    assert images.skipped_links[0][0] == "up" and "symlink loop" in images.skipped_links[0][1]


@needs_symlinks
def test_two_links_to_one_folder_include_it_once(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    _images(shared, ["x.png", "deep/y.png"])
    gallery = tmp_path / "gallery"
    _images(gallery, ["cats/c.png"])
    (gallery / "link1").symlink_to(shared)
    (gallery / "link2").symlink_to(shared)
    (gallery / "cats" / "again").symlink_to(shared / "deep")  # a sub-folder of what link1 brings in
    images = ImageSet.from_path(gallery)  # links are followed in name order: cats/again comes first
    assert images.names == ["cats/c.png", "cats/again/y.png", "link1/x.png"]
    assert dict(images.skipped_links) == {
        "link1/deep": "already included via cats/again",
        "link2": "already included via link1",
    }
    assert images.labels == ["cats", "cats", "link1"]


@needs_symlinks
def test_real_folder_wins_over_a_link_that_sorts_first(tmp_path: Path) -> None:
    gallery = tmp_path / "gallery"
    _images(gallery, ["z_real/a.png"])
    (gallery / "a_link").symlink_to("z_real")
    images = ImageSet.from_path(gallery)
    assert images.names == ["z_real/a.png"]
    assert images.skipped_links == [("a_link", "already included via z_real")]


@needs_symlinks
def test_order_without_links_is_unchanged(tmp_path: Path) -> None:
    names = ["b.png", "a/z.png", "a/b/c.png", "a/a.png", "ab.png", "c/d.png"]
    _images(tmp_path, names)
    images = ImageSet.from_path(tmp_path)
    expected = []
    for dirpath, dirnames, filenames in os.walk(tmp_path):
        dirnames.sort()
        expected += [(Path(dirpath) / f).relative_to(tmp_path).as_posix() for f in sorted(filenames)]
    assert images.names == expected and images.skipped_links == []


@needs_symlinks
def test_dangling_link_to_an_image_is_skipped_with_its_reason(tmp_path: Path) -> None:
    _images(tmp_path, ["ok.png"])
    (tmp_path / "gone.png").symlink_to(tmp_path / "deleted.png")
    (tmp_path / "self.png").symlink_to("self.png")
    images = ImageSet.from_path(tmp_path)
    assert images.names == ["gone.png", "ok.png", "self.png"]
    with pytest.raises(ImageError, match="dangling symbolic link"):
        load_image(tmp_path / "gone.png")
    emb = embed(create_extractor("pixels", size=8), images, ExtractOptions(use_cache=False, progress=False))
    reasons = {s.path: s.reason for s in emb.skipped}
    assert reasons.keys() == {"gone.png", "self.png"}
    assert reasons["gone.png"].startswith("dangling symbolic link") and "deleted.png" in reasons["gone.png"]
    assert "loop" in reasons["self.png"]


def test_names_that_are_not_utf8_keep_working(tmp_path: Path) -> None:
    folder = os.fsencode(tmp_path) + b"/caf\xe9"
    try:
        os.mkdir(folder)
        Image.new("RGB", (8, 8), (1, 2, 3)).save(os.fsdecode(folder + b"/\xff\xfeimg.png"))
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses names that are not UTF-8")
    _images(tmp_path, ["plain/ok.png"])
    images = ImageSet.from_path(tmp_path)
    assert images.names == ["caf\udce9/\udcff\udcfeimg.png", "plain/ok.png"]
    assert images.labels == ["caf\udce9", "plain"]
    assert all(p.is_file() for p in images.paths)
    assert load_image(images.paths[0]).getpixel((0, 0)) == (1, 2, 3)
    assert images.subset([0]).names == ["caf\udce9/\udcff\udcfeimg.png"]
    emb = embed(create_extractor("pixels", size=8), images, ExtractOptions(use_cache=False, progress=False))
    assert emb.skipped == [] and len(emb.indices) == 2


# --- one labels.csv beside query/ and gallery/ -------------------------------------------------------


def _labelled_pair(root: Path) -> Path:
    """query/ and gallery/ with the same file names on both sides, and one labels.csv for both."""
    _images(root / "query", ["q1.png", "dup.png"], (250, 0, 0))
    _images(root / "gallery", ["g1.png", "g2.png", "dup.png"], (0, 0, 250))
    csv = root / "labels.csv"
    csv.write_text(
        "path,label\n"
        "query/q1.png,cat\nquery/dup.png,dog\n"
        "gallery/g1.png,cat\n./gallery/g2.png,dog\ngallery/dup.png,cat\n"
    )
    return csv


def test_one_csv_labels_both_sides(tmp_path: Path) -> None:
    csv = _labelled_pair(tmp_path)
    query = ImageSet.from_path(tmp_path / "query", labels_csv=csv)
    gallery = ImageSet.from_path(tmp_path / "gallery", labels_csv=csv)
    assert dict(zip(query.names, query.labels, strict=True)) == {"dup.png": "dog", "q1.png": "cat"}
    assert dict(zip(gallery.names, gallery.labels, strict=True)) == {
        "dup.png": "cat",
        "g1.png": "cat",
        "g2.png": "dog",
    }


def test_csv_path_beats_root_name_and_missing_images_still_fail(tmp_path: Path) -> None:
    _images(tmp_path / "query", ["a.png", "b.png"])
    csv = tmp_path / "labels.csv"
    csv.write_text("a.png,dog\nquery/a.png,cat\nquery/b.png,cat\n")  # a.png names tmp/a.png: not this one
    assert ImageSet.from_path(tmp_path / "query", labels_csv=csv).labels == ["cat", "cat"]
    csv.write_text("query/a.png,cat\ngallery/zzz.png,cat\n")
    with pytest.raises(InputError, match=r"no label for 1 image\(s\): b.png"):
        ImageSet.from_path(tmp_path / "query", labels_csv=csv)


def test_bare_file_names_count_only_when_unique(tmp_path: Path) -> None:
    _images(tmp_path / "set", ["x/a.png", "y/b.png"])
    csv = tmp_path / "elsewhere" / "names.csv"
    csv.parent.mkdir()
    csv.write_text("a.png,one\nb.png,two\n")
    assert ImageSet.from_path(tmp_path / "set", labels_csv=csv).labels == ["one", "two"]
    csv.write_text("a.png,one\nb.png,two\nother/b.png,three\n")
    with pytest.raises(InputError, match=r"no label for 1 image\(s\): y/b.png"):
        ImageSet.from_path(tmp_path / "set", labels_csv=csv)


@needs_symlinks
def test_csv_paths_match_through_a_symlinked_root(tmp_path: Path) -> None:
    csv = _labelled_pair(tmp_path / "data")
    (tmp_path / "alias").symlink_to(tmp_path / "data")
    gallery = ImageSet.from_path(tmp_path / "alias" / "gallery", labels_csv=csv)
    assert gallery.labels == ["cat", "cat", "dog"]


def test_cli_evaluate_with_one_labels_csv(tmp_path: Path) -> None:
    csv = _labelled_pair(tmp_path)
    out = tmp_path / "metrics.json"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(tmp_path / "query"),
            str(tmp_path / "gallery"),
            "-m",
            "pixels",
            "--runtime",
            "torch",
            "--no-cache",
            "--query-labels",
            str(csv),
            "--gallery-labels",
            str(csv),
            "--json",
            str(out),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "no label" not in result.output and out.is_file()


def test_a_stray_file_beside_the_class_folders_is_named_when_labels_are_needed(tmp_path: Path) -> None:
    import lookalike
    from lookalike.calibrate import calibrate

    _images(tmp_path / "query", ["a/q1.png", "b/q2.png"])
    _images(tmp_path / "gallery", ["a/g1.png", "b/g2.png", "stray.png"], colour=(30, 200, 30))
    (tmp_path / "gallery" / "empty.jpg").write_bytes(b"")  # unreadable, and outside the class folders too
    opts = ExtractOptions(progress=False, use_cache=False)
    expected = r"gallery has 2 image\(s\) outside its class folders \(such as empty\.jpg\)"
    with pytest.raises(InputError, match="evaluation needs labels: .*" + expected):
        lookalike.evaluate(tmp_path / "query", tmp_path / "gallery", model="pixels", options=opts)
    with pytest.raises(InputError, match="calibrate needs labels: .*" + expected):
        calibrate(tmp_path / "query", tmp_path / "gallery")
    (tmp_path / "gallery" / "stray.png").unlink()
    (tmp_path / "gallery" / "empty.jpg").unlink()
    run = lookalike.evaluate(tmp_path / "query", tmp_path / "gallery", model="pixels", options=opts)
    assert run.metrics is not None and run.metrics.n_queries == 2
    _images(tmp_path, ["loose.png"])
    listed = tmp_path / "gallery.txt"  # a list never takes labels from folders: nothing to move
    listed.write_text("gallery/a/g1.png\ngallery/b/g2.png\nloose.png\n", encoding="utf-8")
    with pytest.raises(InputError, match="put images in class folders"):
        lookalike.evaluate(tmp_path / "query", listed, model="pixels", options=opts)
    flat = tmp_path / "flat"  # nothing in class folders: the general message, no file to name
    _images(flat, ["x.png", "y.png"])
    with pytest.raises(InputError, match="put images in class folders"):
        lookalike.evaluate(tmp_path / "query", flat, model="pixels", options=opts)
