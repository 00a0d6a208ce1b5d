"""A user's files are never lost: index outputs, --force rebuilds, removals, kill -9 at any moment."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from lookalike.cli import app
from lookalike.errors import InputError
from lookalike.extract import ExtractOptions
from lookalike.images import ImageSet
from lookalike.index import GalleryIndex, build_index
from lookalike.index.store import GENERATION_FILES, MANIFEST
from lookalike.knn import full_rankings, rankings_with_head, topk
from lookalike.metrics import evaluate_rankings

OPTS = ExtractOptions(progress=False, device="cpu", batch_size=4, num_workers=0)
runner = CliRunner()


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes: what the user owns, to compare before and after."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def gallery(photo_set: tuple[Path, Path], tmp_path: Path) -> Path:
    """A private copy of the sample gallery (15 photos in 5 class folders)."""
    target = tmp_path / "photos"
    shutil.copytree(photo_set[1], target)
    return target


def cli(*args: str) -> tuple[int, str]:
    """Run the command in-process; an exception escaping it (a traceback for a user) fails the test."""
    result = runner.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real command in a subprocess (so a kill -9 kills only it)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "lookalike.cli", *args], capture_output=True, text=True, env=full_env, timeout=300
    )


# ---------------------------------------------------------------- nothing is deleted or overwritten
def test_an_index_is_never_written_into_the_gallery(gallery: Path) -> None:
    before = snapshot(gallery)
    for target in (gallery, gallery / "astronaut", gallery / "new-sub"):
        for extra in ([], ["--force"], ["--resume"]):
            code, output = cli("index", "build", str(gallery), "-o", str(target), "-m", "pixels", "-q", *extra)
            assert code == 2 and "gallery" in output and "error:" in output
    assert snapshot(gallery) == before
    assert not (gallery / "new-sub").exists()


def test_force_never_deletes_a_foreign_folder(gallery: Path, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    (docs / "holiday").mkdir(parents=True)
    (docs / "thesis.tex").write_text("\\chapter{Four years of work}")
    shutil.copy(next(gallery.rglob("*.jpg")), docs / "holiday" / "beach.jpg")
    before = snapshot(docs)
    code, output = cli("index", "build", str(gallery), "-o", str(docs), "-m", "pixels", "--force", "-q")
    assert code == 2 and "not a lookalike index" in output
    assert snapshot(docs) == before
    # an existing file as -o is refused too, and stays as it was
    note = tmp_path / "notes.txt"
    note.write_text("keep me")
    code, output = cli("index", "build", str(gallery), "-o", str(note), "-m", "pixels", "--force", "-q")
    assert code == 2 and "is a file" in output and note.read_text() == "keep me"


def test_an_empty_folder_and_an_index_are_valid_outputs(gallery: Path, tmp_path: Path) -> None:
    empty = tmp_path / "made-by-user"
    empty.mkdir()
    build_index(gallery, empty, model="pixels", options=OPTS)
    assert len(GalleryIndex.open(empty)) == 15
    # a file the user put into the index folder survives rebuilds
    (empty / "README.txt").write_text("my notes")
    build_index(gallery, empty, model="pixels", options=OPTS, force=True)
    assert (empty / "README.txt").read_text() == "my notes"


def test_a_failed_force_rebuild_leaves_the_old_index_working(gallery: Path, tmp_path: Path) -> None:
    out = tmp_path / "my.index"
    build_index(gallery, out, model="pixels", options=OPTS)
    before = snapshot(out)
    old = GalleryIndex.open(out)
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(3):
        (broken / f"b{i}.jpg").write_bytes(b"not a jpeg at all")
    code, output = cli("index", "build", str(broken), "-o", str(out), "-m", "pixels", "--force", "-q")
    assert code == 1 and "could be read" in output and "unchanged" in output
    assert snapshot(out) == before
    again = GalleryIndex.open(out)
    assert again.names == old.names and again.generation == old.generation


def test_force_rebuilds_as_the_next_generation(gallery: Path, tmp_path: Path) -> None:
    out = tmp_path / "my.index"
    first, _ = build_index(gallery, out, model="pixels", options=OPTS)
    second, _ = build_index(gallery / "chelsea", out, model="pixels", options=OPTS, force=True)
    assert second.generation == first.generation + 1 and len(GalleryIndex.open(out)) == 3
    left = {p.name for p in out.iterdir()}
    assert left == {MANIFEST, f"vectors-{second.generation}.npy", f"items-{second.generation}.json"}


def test_a_failed_strict_build_leaves_no_folder(gallery: Path, tmp_path: Path) -> None:
    (gallery / "astronaut" / "aaa-broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    out = tmp_path / "strict.index"
    code, output = cli("index", "build", str(gallery), "-o", str(out), "-m", "pixels", "--strict", "-q")
    assert code == 1 and "aaa-broken.jpg" in output
    assert not out.exists()


def test_nothing_readable_is_the_same_exit_code_everywhere(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"nope")
    code_search, out_search = cli("search", str(bad), str(bad), "-m", "pixels", "-q")
    code_build, out_build = cli("index", "build", str(bad), "-o", str(tmp_path / "i"), "-m", "pixels", "-q")
    assert code_search == code_build == 1
    assert "could be read" in out_search and "could be read" in out_build
    assert not (tmp_path / "i").exists()


# ---------------------------------------------------------------- index remove
def test_remove_refuses_paths_outside_the_root_and_mass_removal(gallery: Path, tmp_path: Path) -> None:
    out = tmp_path / "my.index"
    build_index(gallery, out, model="pixels", options=OPTS)
    photos_before = snapshot(gallery)
    for bad in ("/", "", "   ", str(tmp_path), "../elsewhere", str(gallery.parent / "other")):
        code, output = cli("index", "remove", str(out), bad)
        assert code == 2 and "error:" in output, (bad, output)
    assert len(GalleryIndex.open(out)) == 15
    code, output = cli("index", "remove", str(out), str(gallery) + "/")  # "$DIR/" with DIR = the root
    assert code == 2 and "--yes" in output and len(GalleryIndex.open(out)) == 15
    code, output = cli("index", "remove", str(out), "astronaut", "camera")  # 6 of 15: fine
    assert code == 0 and len(GalleryIndex.open(out)) == 9
    code, output = cli("index", "remove", str(out), str(gallery), "--yes")
    assert code == 0 and len(GalleryIndex.open(out)) == 0
    assert snapshot(gallery) == photos_before  # the images themselves are never touched
    with pytest.raises(InputError, match="outside the gallery root"):
        GalleryIndex.open(out).remove_paths(["/etc/passwd"])


# ---------------------------------------------------------------- kill -9 at any moment
def _leftovers(out: Path) -> list[str]:
    """Files a finished index folder should not hold: temporaries, other generations, partial/."""
    manifest = json.loads((out / MANIFEST).read_text())
    g = manifest["generation"]
    wanted = {MANIFEST} | {stem.format(g) for stem in GENERATION_FILES}
    return sorted(p.name for p in out.iterdir() if p.name not in wanted)


BUILD_POINTS = ["atomic-write:1", "cache-flush:2", "save-files-written", "save-manifest-switched", "build-saved"]


@pytest.mark.parametrize("point", BUILD_POINTS)
def test_kill_during_build_then_resume(gallery: Path, tmp_path: Path, point: str) -> None:
    out = tmp_path / "k.index"
    args = ["index", "build", str(gallery), "-o", str(out), "-m", "pixels", "--batch-size", "4", "--workers", "0"]
    killed = run_cli(*args, "-q", env={"LOOKALIKE_CRASH_AT": point})
    assert killed.returncode == -9, killed.stderr
    resumed = run_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr and "error" not in resumed.stderr
    index = GalleryIndex.open(out)
    assert sorted(index.names) == sorted(ImageSet.from_path(gallery).names)
    assert _leftovers(out) == []
    clean, _ = build_index(gallery, tmp_path / "clean.index", model="pixels", options=OPTS)
    order = {n: i for i, n in enumerate(clean.names)}
    rows = [order[n] for n in index.names]
    np.testing.assert_allclose(np.asarray(index.vectors), np.asarray(clean.vectors)[rows], atol=1e-6)


@pytest.mark.parametrize("point", ["save-files-written", "save-manifest-switched"])
def test_kill_during_add_keeps_a_working_index(gallery: Path, tmp_path: Path, point: str) -> None:
    out = tmp_path / "a.index"
    build_index(gallery / "astronaut", out, model="pixels", options=OPTS)
    killed = run_cli("index", "add", str(out), str(gallery / "chelsea"), "-q", env={"LOOKALIKE_CRASH_AT": point})
    assert killed.returncode == -9, killed.stderr
    index = GalleryIndex.open(out)  # old or new, but whole
    assert len(index) in (3, 6)
    done = run_cli("index", "add", str(out), str(gallery / "chelsea"), str(gallery / "coffee"), "-q")
    assert done.returncode == 0, done.stderr
    assert len(GalleryIndex.open(out)) == 9
    assert _leftovers(out) == []


@pytest.mark.parametrize("point", ["cache-flush:1", "save-files-written", "save-manifest-switched", "build-saved"])
def test_kill_during_force_rebuild(gallery: Path, tmp_path: Path, point: str) -> None:
    out = tmp_path / "f.index"
    build_index(gallery / "astronaut", out, model="pixels", options=OPTS)
    args = ["index", "build", str(gallery), "-o", str(out), "-m", "pixels", "--batch-size", "4", "--workers", "0"]
    killed = run_cli(*args, "--force", "-q", env={"LOOKALIKE_CRASH_AT": point})
    assert killed.returncode == -9, killed.stderr
    assert len(GalleryIndex.open(out)) in (3, 15)  # the old index until the switch, then the new one
    resumed = run_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert "Traceback" not in resumed.stderr
    assert len(GalleryIndex.open(out)) == 15
    assert _leftovers(out) == []


def test_resume_of_a_complete_index_says_so(gallery: Path, tmp_path: Path) -> None:
    out = tmp_path / "done.index"
    build_index(gallery, out, model="pixels", options=OPTS)
    code, output = cli("index", "build", str(gallery), "-o", str(out), "-m", "pixels", "--resume")
    assert code == 0 and "complete" in output


# ---------------------------------------------------------------- metrics agree with written results
def test_evaluation_ranks_ties_as_the_written_list() -> None:
    # float32 sums g1 and g2 to the same score (a tie: g1 first); float64, as the written list
    # rescores, puts g2 first. The metric must follow the written list.
    queries = np.array([[1.0, 1.0]], dtype=np.float32)
    gallery = np.array([[1.0, 0.0], [1 - 2**-24, 2**-23], [0.0, -1.0]], dtype=np.float32)
    head, _ = topk(queries, gallery, 3)
    assert head[0].tolist()[0] == 1
    labels, q_labels = ["a", "b", "c"], ["a"]
    old = evaluate_rankings(full_rankings(queries, gallery), q_labels, labels, ["q"])
    new = evaluate_rankings(rankings_with_head(full_rankings(queries, gallery), head), q_labels, labels, ["q"])
    assert old.first_correct_rank["q"] == 1  # what the float32 ranking alone claimed
    assert new.first_correct_rank["q"] == 2  # what the written list shows


def test_evaluate_matches_the_written_lists_with_duplicate_images(gallery: Path, tmp_path: Path) -> None:
    # the same file under two labels: exact ties; per-query ranks must come from the written lists
    dup = gallery / "zz-dup"
    dup.mkdir()
    for p in sorted((gallery / "chelsea").iterdir()):
        shutil.copy(p, dup / p.name)
    from lookalike import pipeline

    queries = ImageSet.from_path(gallery / "chelsea")
    queries.labels = ["chelsea"] * len(queries)
    run = pipeline.search(queries, gallery, model="pixels", k=10, evaluate=True, options=OPTS)
    assert run.metrics is not None
    labels = {n: n.split("/")[0] for n in run.gallery_names}
    for q, row in zip(run.query_names, run.indices, strict=True):
        written = [labels[run.gallery_names[j]] for j in row]
        expected = written.index("chelsea") + 1
        assert run.metrics.first_correct_rank[q] == expected


# ---------------------------------------------------------------- output formats and help
def test_challenge_format_refuses_ambiguous_file_names(gallery: Path, tmp_path: Path) -> None:
    code, output = cli("search", str(gallery / "chelsea"), str(gallery), "-m", "pixels", "-q",
                       "--format", "challenge", "--group", "g")
    assert code == 0  # names are unique in the sample gallery
    shutil.copy(next((gallery / "coffee").iterdir()), gallery / "camera" / next((gallery / "coffee").iterdir()).name)
    code, output = cli("search", str(gallery / "chelsea"), str(gallery), "-m", "pixels", "-q",
                       "--format", "challenge", "--group", "g")
    assert code == 2 and "share the file name" in output
    code, output = cli("search", str(gallery / "chelsea"), str(gallery), "-m", "pixels", "-q",
                       "--format", "challenge", "--group", "g", "--scores")
    assert code == 2 and "--scores" in output


def test_search_help_shows_the_whole_first_line() -> None:
    code, output = cli("search", "--help")
    assert code == 0
    assert "[gallery images, best first]" in " ".join(output.split())


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["search", "Q", "G", "-O", "size=abc", "-m", "pixels"], "size"),
        (["search", "Q", "G", "--batch-size", "0"], "--batch-size"),
        (["search", "Q", "G", "--workers", "-1"], "--workers"),
        (["search", "Q", "G", "--device", "tpu"], "--device"),
        (["search", "Q", "G", "--runtime", "tvm"], "--runtime"),
        (["search", "Q", "G", "-k", "0"], "-k"),
        (["search", "Q", "G", "--max-pixels", "0"], "--max-pixels"),
        (["search", "Q", "G", "--whiten-dim", "8"], "--whiten-dim"),
        (["search", "Q", "G", "-m", "pixels", "--whiten", "--whiten-dim", "99999"], "--whiten-dim"),
        (["search", "Q", "G", "--whiten", "--whiten-shrinkage", "-1"], "--whiten-shrinkage"),
        (["search", "Q", "G", "-m", "pixels", "--whiten-shrinkage", "1"], "--whiten-shrinkage needs --whiten"),
        (["search", "Q", "G", "-o", "DIR"], "-o"),
        (["search", "Q", "G", "--rerank", "magic"], "re-ranking"),
        (["index", "build", "G", "-o", "OUT", "--batch-size", "0"], "--batch-size"),
        (["index", "add", "OUT", "G", "--workers", "-3"], "--workers"),
        (["serve", "OUT", "--port", "70000"], "--port"),
        (["serve", "OUT", "--log-level", "loud"], "--log-level"),
        (["report", "R", "--query", "Q", "--gallery", "G", "--thumb-size", "0"], "--thumb-size"),
        (["train", "siamese", "G", "-o", "OUT", "--lr", "-1"], "--lr"),
    ],
)
def test_bad_options_are_one_line_errors(gallery: Path, tmp_path: Path, args: list[str], needle: str) -> None:
    out = tmp_path / "idx"
    if any(a == "OUT" for a in args) and args[0] in ("index", "serve") and args[1] != "build":
        build_index(gallery / "chelsea", out, model="pixels", options=OPTS)
    (tmp_path / "DIR").mkdir()
    (tmp_path / "R").write_text("{}")
    names = {"Q": str(gallery / "chelsea"), "G": str(gallery), "OUT": str(out), "DIR": str(tmp_path / "DIR"),
             "R": str(tmp_path / "R")}
    code, output = cli(*[names.get(a, a) for a in args])
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert code == 2, output
    assert lines[-1].startswith("error:") and needle in lines[-1], output
    assert len([ln for ln in lines if ln.startswith("error:")]) == 1


def test_api_options_are_checked_up_front() -> None:
    with pytest.raises(InputError, match="--batch-size"):
        ExtractOptions(batch_size=0)
    with pytest.raises(InputError, match="--device"):
        ExtractOptions(device="tpu")


# ---------------------------------------------------------------- found by review: each a way to lose data
def test_a_partial_folder_the_user_made_is_never_deleted(gallery: Path, tmp_path: Path) -> None:
    out = tmp_path / "my.index"
    build_index(gallery, out, model="pixels", options=OPTS)
    (out / "partial").mkdir()
    (out / "partial" / "holiday.jpg").write_bytes(b"my photo")
    for extra in ([], ["--force"], ["--resume"]):
        code, output = cli("index", "build", str(gallery), "-o", str(out), "-m", "pixels", "-q", *extra)
        assert code == 2 and "did not make" in output
    assert (out / "partial" / "holiday.jpg").read_bytes() == b"my photo"
    # a folder shaped like an old build's, holding the user's files, is not taken for one either
    lookalike_shaped = tmp_path / "out" / "partial" / "features"
    lookalike_shaped.mkdir(parents=True)
    (lookalike_shaped / "x.png").write_bytes(b"mine")
    code, _ = cli("index", "build", str(gallery), "-o", str(tmp_path / "out"), "-m", "pixels", "--force", "-q")
    assert code == 2 and (lookalike_shaped / "x.png").read_bytes() == b"mine"


def test_a_gallery_reached_through_a_link_into_the_output_is_refused(gallery: Path, tmp_path: Path) -> None:
    out = tmp_path / "my.index"
    build_index(gallery / "chelsea", out, model="pixels", options=OPTS)
    (out / "partial").mkdir()
    shutil.copytree(gallery / "coffee", out / "partial" / "photos")
    (tmp_path / "glink").symlink_to(out / "partial" / "photos")
    before = snapshot(out / "partial")
    code, _ = cli("index", "build", str(tmp_path / "glink"), "-o", str(out), "-m", "pixels", "--force", "-q")
    assert code == 2 and snapshot(out / "partial") == before


def test_a_resume_that_reads_nothing_keeps_the_saved_progress(gallery: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.index"
    args = ["index", "build", str(gallery), "-o", str(out), "-m", "pixels", "--batch-size", "2", "--workers", "0"]
    assert run_cli(*args, "-q", env={"LOOKALIKE_CRASH_AT": "cache-flush:2"}).returncode == -9
    shards = sorted(p.name for p in out.rglob("shard-*.npz"))
    assert len(shards) == 2
    failed = run_cli(*args, "--resume", "--max-pixels", "1", "-q")
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert sorted(p.name for p in out.rglob("shard-*.npz")) == shards  # still resumable
    assert run_cli(*args, "--resume", "-q").returncode == 0 and len(GalleryIndex.open(out)) == 15


def test_search_outputs_never_overwrite_what_it_reads(gallery: Path, tmp_path: Path) -> None:
    image = next((gallery / "coffee").iterdir())
    before = image.read_bytes()
    code, output = cli("search", str(gallery / "chelsea"), str(gallery), "-m", "pixels", "-q", "-o", str(image))
    assert code == 2 and "is an image" in output and image.read_bytes() == before
    out = tmp_path / "my.index"
    build_index(gallery, out, model="pixels", options=OPTS)
    manifest = (out / MANIFEST).read_bytes()
    code, output = cli("search", str(gallery / "chelsea"), str(out), "-q", "-o", str(out / MANIFEST))
    assert code == 2 and "inside the index" in output and (out / MANIFEST).read_bytes() == manifest
    code, output = cli("search", str(gallery / "chelsea"), str(out), "-q", "-o", str(tmp_path / "a"),
                       "--report", str(tmp_path / "a"))
    assert code == 2 and "same file" in output


def test_errors_from_the_file_system_are_one_line(gallery: Path, tmp_path: Path) -> None:
    code, output = cli("search", str(gallery / "chelsea"), str(gallery), "-m", "pixels", "-q",
                       "-o", "/proc/lookalike-results.json")
    assert code == 2 and output.strip().splitlines()[-1].startswith("error:")


def test_backend_and_metric_are_checked_before_extraction(gallery: Path, tmp_path: Path) -> None:
    for extra in (["--backend", "nosuch"], ["--metric", "euclid"], ["--backend", "faiss:Garbage"]):
        code, output = cli("index", "build", str(gallery), "-o", str(tmp_path / "b"), "-m", "pixels", "-q", *extra)
        assert code == 2 and not (tmp_path / "b").exists(), output


def test_remove_takes_a_folder_added_from_outside_the_root(gallery: Path, tmp_path: Path) -> None:
    out = tmp_path / "my.index"
    build_index(gallery, out, model="pixels", options=OPTS)
    extra = tmp_path / "extra"
    shutil.copytree(gallery / "coffee", extra)
    index = GalleryIndex.open(out)
    index.add_images(ImageSet.from_path(extra), OPTS)
    assert len(index) == 18
    removed, _ = GalleryIndex.open(out).remove_paths([str(extra)])
    assert len(removed) == 3 and len(GalleryIndex.open(out)) == 15


def test_index_add_with_nothing_readable_exits_1(gallery: Path, tmp_path: Path) -> None:
    out = tmp_path / "my.index"
    build_index(gallery, out, model="pixels", options=OPTS)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.jpg").write_bytes(b"no")
    code, output = cli("index", "add", str(out), str(bad), "-q")
    assert code == 1 and "could be read" in output and len(GalleryIndex.open(out)) == 15


def test_demo_never_writes_into_a_folder_it_did_not_make(tmp_path: Path) -> None:
    mine = tmp_path / "Pictures"
    (mine / "astronaut").mkdir(parents=True)
    (mine / "astronaut" / "astronaut_query0.jpg").write_bytes(b"my own photo")
    before = snapshot(mine)
    code, output = cli("demo", "--out", str(mine), "-q")
    assert code == 2 and "not a lookalike demo folder" in output
    assert snapshot(mine) == before


def test_sigterm_unwinds_like_ctrl_c_and_leaves_no_temporary_folder(tmp_path: Path) -> None:
    import signal
    import tempfile
    import time

    import typer

    from lookalike.cli._app import friendly
    from lookalike.errors import EXIT_INTERRUPTED

    @friendly
    def work() -> None:
        with tempfile.TemporaryDirectory(prefix="lookalike-views-", dir=tmp_path):
            os.kill(os.getpid(), signal.SIGTERM)  # `kill`, `timeout`, a stopped container
            time.sleep(10)

    earlier = signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as in a fresh `lookalike` process
    try:
        with pytest.raises(typer.Exit) as stopped:
            work()
        assert stopped.value.exit_code == EXIT_INTERRUPTED
        assert list(tmp_path.iterdir()) == []  # the views' folder went on the way out
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is the command's only
    finally:
        signal.signal(signal.SIGTERM, earlier)
