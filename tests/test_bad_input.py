"""The bad-input corpus (tests/badinput.py) through the CLI and the Python API: every good file is read
once, every bad one is skipped with a reason, loops and odd names break nothing, --strict fails cleanly.

The CLI runs in subprocesses under a timeout, so a FIFO that blocks a reader fails the test instead of
hanging the suite. Tests run as root here, where a mode-000 file is readable: the corpus then counts it
as good (as root, lookalike simply reads it), and as bad for anyone else.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from badinput import BOMB_SIDE, NON_UTF8_NAME, Corpus, build_corpus, is_fifo
from PIL import Image
from typer.testing import CliRunner

from lookalike import ExtractOptions, load_image
from lookalike.cli import app
from lookalike.fileio import printable
from lookalike.index import GalleryIndex
from lookalike.pipeline import search

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX symlinks, FIFOs and byte file names")

TIMEOUT = 120  # seconds for one CLI run: far more than it needs, far less than a hung suite
BIG_K = "1000"


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """The bad-input corpus, built once per session."""
    return build_corpus(tmp_path_factory.mktemp("badinput"))


@dataclass
class Ran:
    """One finished CLI run: exit code and both streams (stderr decoded keeping odd bytes)."""

    args: list[str]
    code: int
    stdout: str
    stderr: str

    def errors(self) -> list[str]:
        """The ``error:`` lines of stderr."""
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]

    def __str__(self) -> str:
        return f"lookalike {' '.join(self.args[3:])} -> {self.code}\n--- stderr ---\n{self.stderr[-4000:]}"


def _cli(cache: Path, *arg_lists: list[object]) -> list[Ran]:
    """Run ``lookalike ARGS`` for each list, all at once, each under TIMEOUT; kill and fail on a hang."""
    env = {**os.environ, "LOOKALIKE_CACHE": str(cache), "COLUMNS": "200"}
    procs = []
    for args in arg_lists:
        argv = [sys.executable, "-m", "lookalike.cli", *map(os.fspath, args)]  # type: ignore[arg-type]
        procs.append((argv, subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)))
    runs = []
    for argv, proc in procs:
        try:
            out, err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for _, other in procs:
                other.kill()
            pytest.fail(f"timed out after {TIMEOUT} s (a FIFO read?): {' '.join(argv[3:])}")
        runs.append(
            Ran(
                argv,
                proc.returncode,
                out.decode("utf-8", "surrogateescape"),
                err.decode("utf-8", "surrogateescape"),
            )
        )
    return runs


def _in_process(*args: object) -> Ran:
    """Run ``lookalike ARGS`` in this process (no interpreter start) under TIMEOUT; an uncaught
    exception shows up as a traceback on the returned stderr, as it would in a real run."""
    argv = [os.fspath(a) for a in args]  # type: ignore[arg-type]
    with _alarm(TIMEOUT):
        result = CliRunner().invoke(app, argv)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "Traceback (most recent call last):\n" + "".join(
            traceback.format_exception(result.exception)
        )
    return Ran(["python", "-m", "lookalike.cli", *argv], result.exit_code, result.stdout, stderr)


def _no_traceback(run: Ran) -> None:
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout, str(run)


def _read_json(path: Path) -> object:
    return json.loads(path.read_bytes().decode("utf-8"))


def _gallery_skips(summary: dict) -> dict[str, str]:
    return {s["path"]: s["reason"] for s in summary["skipped"] if s["set"] == "gallery"}


@contextlib.contextmanager
def _alarm(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging forever) when the block runs longer than ``seconds``."""

    def ring(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s: a blocking read (FIFO?)")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# --- the corpus itself ----------------------------------------------------------------------------


def test_corpus_is_what_it_claims(corpus: Corpus) -> None:
    assert corpus.kinds() >= 30, corpus.kinds()
    assert is_fifo(corpus.gallery / "fifo.jpg")
    assert os.path.islink(corpus.gallery / "x.jpg") and not os.path.exists(corpus.gallery / "x.jpg")
    assert os.path.samefile(corpus.gallery / "loop", corpus.gallery)
    assert b"caf\xe9.jpg" in os.listdir(os.fsencode(corpus.gallery))
    bomb = corpus.gallery / "bomb.png"
    assert bomb.stat().st_size < 200_000
    with open(bomb, "rb") as handle:  # the header declares the size; nothing is decoded
        head = handle.read(24)
    assert int.from_bytes(head[16:20], "big") == int.from_bytes(head[20:24], "big") == BOMB_SIDE
    with Image.open(corpus.gallery / "over_limit.png") as img:
        assert corpus.max_pixels < img.width * img.height < corpus.max_pixels * 1.01
    assert set(corpus.good).isdisjoint(corpus.bad) and set(corpus.good).isdisjoint(corpus.ignored)


def test_optional_kinds_could_be_made(corpus: Corpus) -> None:
    if corpus.missing:  # HEIC, AVIF and 16-bit RGB TIFF need encoders this machine may lack
        pytest.skip(f"kinds this machine could not make: {corpus.missing}")


# --- search over the corpus -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def searched(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> tuple[Ran, dict, dict]:
    """One ``lookalike search`` over the corpus with full-length result lists and scores."""
    out = tmp_path_factory.mktemp("search")
    results, summary = out / "results.json", out / "summary.json"
    limit = ["--max-pixels", str(corpus.max_pixels)]
    outputs = ["-o", results, "--summary", summary]
    (run,) = _cli(
        out / "cache",
        ["search", corpus.query, corpus.gallery, "-m", "pixels", "-k", BIG_K, "--scores", *limit, *outputs],
    )
    # no assertion here: test_search_exits_cleanly reports a failed run, the others then fail on empty data
    doc = _read_json(results) if results.exists() else {}
    info = _read_json(summary) if summary.exists() else {"skipped": [], "gallery": 0, "queries": 0}
    return run, doc, info  # type: ignore[return-value]


def test_search_exits_cleanly(searched: tuple[Ran, dict, dict]) -> None:
    run, _, _ = searched
    assert run.code == 0, str(run)
    _no_traceback(run)
    assert not run.errors(), str(run)


def test_cli_output_has_no_raw_python_warnings(searched: tuple[Ran, dict, dict]) -> None:
    run, _, _ = searched
    raw = re.findall(r"^.*\.py:\d+: \w*Warning: .*$", run.stderr, flags=re.MULTILINE)
    assert not raw, f"Python warnings leak onto stderr (the CLI's own lines are 'warning: ...'): {raw}"


def test_search_reads_every_good_file_exactly_once(corpus: Corpus, searched: tuple[Ran, dict, dict]) -> None:
    _, results, summary = searched
    assert sorted(results) == corpus.queries
    good = set(corpus.good)
    for query, hits in results.items():
        names = [hit["image"] for hit in hits]
        assert names, f"{query}: no results"
        duplicates = sorted({n for n in names if names.count(n) > 1})
        assert not duplicates, f"{query}: listed more than once (a link walked twice?): {duplicates}"
        assert not good - set(names), (
            f"{query}: good files missing from the results: {sorted(good - set(names))}"
        )
        assert not set(names) - good, f"{query}: unexpected gallery names: {sorted(set(names) - good)}"
    assert summary["gallery"] == len(good)
    assert summary["queries"] == len(corpus.queries)


def test_search_skips_every_bad_file_with_a_reason(corpus: Corpus, searched: tuple[Ran, dict, dict]) -> None:
    _, _, summary = searched
    skips = _gallery_skips(summary)
    assert not [s for s in summary["skipped"] if s["set"] != "gallery"], "a clean query was skipped"
    missing = sorted(set(corpus.bad) - set(skips))
    assert not missing, f"bad files neither read nor listed under 'skipped': {missing}"
    assert all(isinstance(r, str) and r.strip() for r in skips.values()), skips
    wrongly = sorted(set(skips) & (set(corpus.good) | set(corpus.ignored)))
    assert not wrongly, f"listed as skipped but should be read or ignored: {wrongly}"
    # a skipped folder link may be listed too, but nothing else
    unknown = sorted(set(skips) - set(corpus.bad) - set(corpus.links))
    assert not unknown, f"unexpected skipped entries: {unknown}"


def test_skip_reasons_say_what_is_wrong(corpus: Corpus, searched: tuple[Ran, dict, dict]) -> None:
    skips = _gallery_skips(searched[2])
    vague = {
        name: (skips[name], words)
        for name, (_, words) in corpus.bad.items()
        if name in skips and not any(w.lower() in skips[name].lower() for w in words)
    }
    assert not vague, f"reasons that do not name the problem (reason, expected one of): {vague}"


def test_search_reports_the_links_it_did_not_follow(corpus: Corpus, searched: tuple[Ran, dict, dict]) -> None:
    run, _, _ = searched
    unmentioned = [link for link in corpus.links if str(corpus.gallery / link) not in run.stderr]
    assert not unmentioned, f"links left out without a word on stderr: {unmentioned}\n{run}"
    # a bad file is named on stderr too, not only in the summary
    silent = [name for name in corpus.bad if "\n" not in name and name not in run.stderr]
    assert not silent, f"skipped without a word on stderr: {silent}"


def test_exif_orientation_is_applied(corpus: Corpus, searched: tuple[Ran, dict, dict]) -> None:
    _, results, _ = searched
    upright, rotated = corpus.rotated_pair
    best = results[upright][0]
    assert best["image"] == rotated, results[upright][:3]
    assert best["score"] > 0.95, best
    # the decoder itself turns the picture upright
    stored = corpus.gallery / rotated
    with Image.open(stored) as img:
        assert img.size[::-1] == load_image(stored).size
    a = np.asarray(load_image(stored), dtype=float)
    b = np.asarray(load_image(corpus.query / upright), dtype=float)
    assert a.shape == b.shape and np.abs(a - b).mean() < 6, np.abs(a - b).mean()


def test_unusual_modes_decode_to_the_right_pixels(corpus: Corpus) -> None:
    wrong = {}
    for name, (expected, tolerance) in corpus.expected.items():
        with _alarm(30):
            got = np.asarray(load_image(corpus.gallery / name))
        if got.shape != expected.shape:
            wrong[name] = f"size {got.shape} instead of {expected.shape}"
            continue
        error = float(np.abs(got.astype(float) - expected).mean())
        if error > tolerance:
            wrong[name] = f"mean abs error {error:.1f} > {tolerance}"
    assert len(corpus.expected) >= 12
    assert not wrong, wrong


def test_odd_names_round_trip_through_json(corpus: Corpus, searched: tuple[Ran, dict, dict]) -> None:
    _, results, _ = searched
    names = {hit["image"] for hit in next(iter(results.values()))}
    for odd in (
        NON_UTF8_NAME,
        "café ☕.jpg",
        "new\nline.jpg",
        "-rf.jpg",
        "100%.jpg",
        "#hash.jpg",
        "what?.jpg",
    ):
        assert odd in names, f"{printable(odd)!r} not in the results"
        assert os.path.exists(os.fsencode(corpus.gallery) + b"/" + os.fsencode(odd))


# --- index build over the corpus ------------------------------------------------------------------


@pytest.fixture(scope="module")
def indexed(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> tuple[Ran, Path]:
    """``lookalike index build`` of the corpus gallery."""
    out = tmp_path_factory.mktemp("index")
    index = out / "idx"
    (run,) = _cli(
        out / "cache",
        [
            "index",
            "build",
            corpus.gallery,
            "-o",
            index,
            "-m",
            "pixels",
            "--max-pixels",
            str(corpus.max_pixels),
        ],
    )
    return run, index


def test_index_build_holds_exactly_the_readable_images(
    corpus: Corpus, indexed: tuple[Ran, Path], tmp_path: Path
) -> None:
    run, index = indexed
    assert run.code == 0, str(run)
    _no_traceback(run)
    assert not run.errors(), str(run)
    silent = [name for name in corpus.bad if "\n" not in name and name not in run.stderr]
    assert not silent, f"skipped without a word on stderr: {silent}"
    names = GalleryIndex.open(index).names
    assert len(names) == len(set(names)), "an image is in the index twice"
    good = set(corpus.good)
    assert not good - set(names), f"missing from the index: {sorted(good - set(names))}"
    assert not set(names) - good, f"in the index but should not be: {sorted(set(names) - good)}"
    # reading the finished index meets no bad file, so these two run in-process (saves two interpreter starts)
    info = _in_process("index", "info", index)
    assert info.code == 0, str(info)
    _no_traceback(info)
    count = re.search(r"images\W+(\d+)", info.stdout)
    assert count and int(count.group(1)) == len(good), info.stdout
    found = _in_process("search", corpus.query, index, "-k", BIG_K, "-q", "-o", tmp_path / "r.json")
    assert found.code == 0, str(found)
    _no_traceback(found)
    results = _read_json(tmp_path / "r.json")
    assert isinstance(results, dict) and sorted(results) == corpus.queries
    for query, hits in results.items():
        assert sorted(hits) == sorted(good), f"{query}: {sorted(set(hits) ^ good)}"


# --- --strict -------------------------------------------------------------------------------------


def test_strict_fails_on_one_line_and_leaves_nothing(corpus: Corpus, tmp_path: Path) -> None:
    index = tmp_path / "idx"
    results = tmp_path / "r.json"
    common = ["-m", "pixels", "--strict", "--max-pixels", str(corpus.max_pixels)]
    found, built = _cli(
        tmp_path / "cache",
        ["search", corpus.query, corpus.gallery, *common, "-o", results],
        ["index", "build", corpus.gallery, "-o", index, *common],
    )
    for run in (found, built):
        assert run.code == 1, str(run)
        _no_traceback(run)
        errors = run.errors()
        assert len(errors) == 1, str(run)
        named = [name for name in corpus.bad if str(corpus.gallery / name) in errors[0]]
        assert named, f"the error names no bad file: {errors[0]}"
    assert not results.exists(), "--strict failed but wrote results"
    assert not index.exists(), f"--strict build failed but left {sorted(p.name for p in index.iterdir())}"


# --- a gallery with nothing readable --------------------------------------------------------------


def test_all_bad_gallery_fails_alike_in_search_and_index_build(corpus: Corpus, tmp_path: Path) -> None:
    index = tmp_path / "idx"
    # in-process (under the same timeout) to save two interpreter starts; --strict above runs for real
    found = _in_process("search", corpus.query, corpus.all_bad, "-m", "pixels", "-o", tmp_path / "r.json")
    built = _in_process("index", "build", corpus.all_bad, "-o", index, "-m", "pixels")
    assert found.code == built.code == 1, f"{found}\n{built}"
    for run in (found, built):
        _no_traceback(run)
        assert len(run.errors()) == 1, str(run)
    assert not (tmp_path / "r.json").exists()
    assert not index.exists(), "a failed build left its output folder behind"


# --- the Python API -------------------------------------------------------------------------------


@pytest.mark.parametrize("max_pixels", ["small", "default"])
def test_api_search_reports_the_bad_files(corpus: Corpus, max_pixels: str) -> None:
    options = ExtractOptions(progress=False, num_workers=0)
    good, bad = set(corpus.good), set(corpus.bad)
    if max_pixels == "small":
        options = ExtractOptions(progress=False, num_workers=0, max_pixels=corpus.max_pixels)
    else:  # under the default limit the slightly large image is fine; the 900M-pixel bomb is not
        good, bad = good | {"over_limit.png"}, bad - {"over_limit.png"}
    with _alarm(TIMEOUT):
        run = search(corpus.query, corpus.gallery, model="pixels", k=int(BIG_K), options=options)
    skips = _gallery_skips(run.summary())
    assert not bad - set(skips), f"not reported as skipped: {sorted(bad - set(skips))}"
    assert all(r.strip() for r in skips.values())
    assert {"bomb.png", "bomb_120mp.png"} <= set(skips)
    assert sorted(run.gallery_names) == sorted(good), sorted(set(run.gallery_names) ^ good)
    assert sorted(run.query_names) == corpus.queries
    assert all(len(row) == len(good) for row in run.ranking().values())
    # again with the cache warm: the same answer, the good files from the cache, the bad ones skipped again
    with _alarm(TIMEOUT):
        again = search(corpus.query, corpus.gallery, model="pixels", k=int(BIG_K), options=options)
    assert again.ranking() == run.ranking()
    assert _gallery_skips(again.summary()) == skips
    assert again.stats["from_cache"]["gallery"] == len(good)
