"""lookalike dedup: groups on real photos, reference mode, the chain case, every action and its
undo (also after kill -9 half-way), trash, dry runs, decisions, outputs and one-line errors."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lookalike.cli import app
from lookalike.config import SearchConfig
from lookalike.dedup import (
    DEDUP_MODEL,
    DEFAULT_THRESHOLDS,
    Pairs,
    Threshold,
    apply,
    choose_kept,
    complete_linkage,
    empty_trash,
    find_duplicates,
    group_pairs,
    mark_different,
    plan_actions,
    read_journal,
    read_not_duplicates,
    search_pairs,
    trash_folder,
    undo,
)
from lookalike.dedup import actions as actions_module
from lookalike.dedup.pairs import resolve_threshold
from lookalike.dedup.result import dedup_default_model
from lookalike.errors import InputError
from lookalike.extract import ExtractOptions
from lookalike.index import GalleryIndex
from lookalike.samples import sample_photo

OPTS = ExtractOptions(progress=False, device="cpu", num_workers=0)
PIXELS = SearchConfig(model="pixels", extract=OPTS)
ORIGINALS = ("astronaut", "chelsea", "coffee")
OTHERS = ("rocket", "camera", "coins", "moon")
runner = CliRunner()


# ---------------------------------------------------------------- data and helpers


@pytest.fixture(scope="session")
def source_collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three photos, each with an exact copy, a half-size JPEG and a JPEG re-encoded at q40, plus
    four different photos: 16 small real images."""
    root = tmp_path_factory.mktemp("dedup-source") / "col"
    (root / "copies").mkdir(parents=True)
    for name in ORIGINALS:
        img = sample_photo(name).resize((128, 96))
        img.save(root / f"{name}.png")
        shutil.copyfile(root / f"{name}.png", root / "copies" / f"{name}_exact.png")
        img.resize((64, 48)).save(root / "copies" / f"{name}_small.jpg", quality=90)
        img.save(root / "copies" / f"{name}_q40.jpg", quality=40)
    for name in OTHERS:
        sample_photo(name).resize((128, 96)).save(root / f"{name}.jpg", quality=85)
    return root


@pytest.fixture
def col(source_collection: Path, tmp_path: Path) -> Path:
    """A private copy of the collection (actions change it)."""
    target = tmp_path / "col"
    shutil.copytree(source_collection, target)
    return target


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: files with their bytes, links with their targets, folders."""
    out: dict[str, tuple] = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_file():
            out[rel] = ("file", p.read_bytes())
        else:
            out[rel] = ("dir",)
    return out


def files_and_bytes(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def cli(*args: str) -> tuple[int, str]:
    """The command in-process; a traceback (an exception escaping) fails the test."""
    result = runner.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The real command in a subprocess, so a kill -9 kills only it."""
    return subprocess.run(
        [sys.executable, "-m", "lookalike.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        timeout=300,
    )


def groups_by_name(result) -> list[set[str]]:
    return [{result.items[m].name for m in g.members} for g in result.groups]


def expected_groups() -> list[set[str]]:
    return [
        {f"{n}.png", f"copies/{n}_exact.png", f"copies/{n}_small.jpg", f"copies/{n}_q40.jpg"}
        for n in ORIGINALS
    ]


# ---------------------------------------------------------------- finding groups


def test_groups_on_real_photos_with_the_default_model(col: Path) -> None:
    result = find_duplicates(col, config=SearchConfig(extract=OPTS))
    assert (
        result.threshold.source == f"default for {DEDUP_MODEL}"
        and result.settings["model"]["name"] == "pixels"
    )
    assert sorted(groups_by_name(result), key=sorted) == sorted(expected_groups(), key=sorted)
    for g in result.groups:  # kept: the full-size image (original or its byte-identical copy)
        assert result.items[g.kept].name.endswith((".png",)) and "small" not in result.items[g.kept].name
        assert len(g.pairs) == 6 and all(s >= result.threshold.value for _, _, s, _ in g.pairs)
    doc = result.to_json()
    assert doc["counts"] == {"images": 16, "reference_images": 0, "groups": 3, "duplicates": 9, "pairs": 18}
    assert all(p["group"] is not None for p in doc["pairs"])


def test_few_neighbours_still_give_whole_groups(col: Path) -> None:
    """With k=2 the kNN lists miss pairs inside a group of four; the component is completed with
    exact scores, so every group still holds all its pairs."""
    vectors, names = _pixel_vectors(col)
    knn = search_pairs(GalleryIndex.from_embeddings(vectors, names), vectors, 3, Threshold(0.85, "cosine"))
    assert len(knn) < 18  # what the lists alone give
    result = find_duplicates(col, config=PIXELS, k=2)
    assert sorted(groups_by_name(result), key=sorted) == sorted(expected_groups(), key=sorted)
    assert len(result.pairs) == 18 and all(len(g.pairs) == 6 for g in result.groups)


def _pixel_vectors(col: Path) -> tuple[np.ndarray, list[str]]:
    from lookalike import ImageSet, create_extractor, embed

    images = ImageSet.from_path(col)
    emb = embed(create_extractor("pixels"), images, OPTS)
    return emb.features, [images.names[i] for i in emb.indices]


def test_a_chain_of_weak_links_is_not_merged() -> None:
    # A~B and B~C above the threshold, A and C unrelated: through the index search and the grouping
    angles = np.radians([0.0, 40.0, 80.0, 200.0])
    vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    cut = Threshold(0.7, "cosine")
    index = GalleryIndex.from_embeddings(vectors, ["A", "B", "C", "D"])
    pairs = search_pairs(index, vectors, 4, cut)
    assert {(int(a), int(b)) for a, b in zip(pairs.a, pairs.b, strict=True)} == {(0, 1), (1, 2)}
    grouping = group_pairs(4, pairs)
    assert [g.tolist() for g in grouping.groups] in ([[0, 1]], [[1, 2]])
    assert sorted(grouping.pair_group.tolist()) == [-1, 0]  # the other link is kept, marked as split off
    # a longer chain over sparse pairs: links of falling strength, no shortcuts
    chain = Pairs(np.arange(6), np.arange(1, 7), np.array([0.99, 0.98, 0.97, 0.96, 0.95, 0.94], np.float32))
    assert [g.tolist() for g in complete_linkage(chain)] == [[0, 1], [2, 3], [4, 5]]
    # but a true clique merges whole, whatever order its pairs come in
    iu, ju = np.triu_indices(4, 1)
    clique = Pairs(
        iu.astype(np.int64), ju.astype(np.int64), np.linspace(0.9, 0.8, len(iu)).astype(np.float32)
    )
    assert [g.tolist() for g in complete_linkage(clique)] == [[0, 1, 2, 3]]


def test_grouping_recovers_planted_clusters_through_an_approximate_index() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(400, 32)).astype(np.float32)
    sizes = rng.integers(2, 6, size=len(centres))
    rows = [c + 0.05 * rng.normal(size=(s, 32)) for c, s in zip(centres, sizes, strict=True)]
    singles = rng.normal(size=(2_000, 32))
    vectors = np.vstack([*rows, singles]).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    truth = np.concatenate([np.full(s, i) for i, s in enumerate(sizes)] + [np.full(len(singles), -1)])
    index = GalleryIndex.from_embeddings(vectors, [str(i) for i in range(len(vectors))], backend="hnsw")
    grouping = group_pairs(len(vectors), search_pairs(index, vectors, 10, Threshold(0.9, "cosine")))
    found = sorted(tuple(g.tolist()) for g in grouping.groups)
    planted = sorted(tuple(np.flatnonzero(truth == i).tolist()) for i in range(len(centres)))
    assert found == planted


def test_reference_mode_pairs_new_images_with_the_library_only(tmp_path: Path) -> None:
    library, new = tmp_path / "library", tmp_path / "new"
    library.mkdir()
    new.mkdir()
    for name in ORIGINALS[:2]:
        img = sample_photo(name).resize((128, 96))
        img.save(library / f"{name}.png")
        img.save(library / f"{name}_twin.png")  # two identical library images: never paired
        img.save(new / f"{name}_new.jpg", quality=60)
    for name in OTHERS[:2]:
        sample_photo(name).resize((128, 96)).save(library / f"{name}.jpg")
    sample_photo("coffee").resize((128, 96)).save(new / "coffee_new.jpg")
    before = snapshot(library)
    result = find_duplicates(new, reference=library, config=PIXELS)
    sets = [
        (result.items[a].set, result.items[b].set)
        for a, b in zip(result.pairs.a, result.pairs.b, strict=True)
    ]
    assert sets and all(s == ("collection", "reference") for s in sets)
    assert len(result.groups) == 2  # coffee has no copy in the library
    for g in result.groups:
        names = {result.items[m].name for m in g.members}
        new_name = next(result.items[m].name for m in g.members if result.items[m].set == "collection")
        photo = new_name.removesuffix("_new.jpg")
        assert names == {new_name, f"{photo}.png", f"{photo}_twin.png"}
        assert result.items[g.kept].set == "reference"
    plan = plan_actions(result, "move", tmp_path / "dups")
    assert sorted(op.source.name for op in plan.operations) == ["astronaut_new.jpg", "chelsea_new.jpg"]
    apply(plan, tmp_path / "journal.jsonl")
    assert snapshot(library) == before  # library images are never touched
    assert sorted(p.name for p in new.iterdir()) == ["coffee_new.jpg"]


def test_a_saved_index_works_as_folder_and_as_library(col: Path, tmp_path: Path) -> None:
    code, output = cli("index", "build", str(col), "-o", str(tmp_path / "col.index"), "-m", "pixels", "-q")
    assert code == 0, output
    from_index = find_duplicates(tmp_path / "col.index", config=SearchConfig(extract=OPTS))
    assert sorted(groups_by_name(from_index), key=sorted) == sorted(expected_groups(), key=sorted)
    new = tmp_path / "new"
    new.mkdir()
    Image.open(col / "chelsea.png").save(new / "chelsea_again.jpg", quality=70)
    against = find_duplicates(new, reference=tmp_path / "col.index", config=SearchConfig(extract=OPTS))
    assert len(against.groups) == 1
    members = {against.items[m].name for m in against.groups[0].members}
    assert members == {"chelsea_again.jpg", *next(g for g in expected_groups() if "chelsea.png" in g)}


def test_thresholds_from_a_calibration_file(col: Path, tmp_path: Path) -> None:
    strict = tmp_path / "strict.json"
    strict.write_text(json.dumps({"threshold": 0.99999, "score": "cosine", "model": {"name": "pixels"}}))
    result = find_duplicates(col, config=PIXELS, threshold_file=strict)
    assert result.threshold.value == 0.99999 and "strict.json" in result.threshold.source
    assert sorted(groups_by_name(result), key=sorted) == sorted(
        ({f"{n}.png", f"copies/{n}_exact.png"} for n in ORIGINALS), key=sorted
    )
    other_kind = tmp_path / "inliers.json"
    other_kind.write_text(json.dumps({"threshold": 12, "score": "inliers"}))
    with pytest.raises(InputError, match="inliers"):
        find_duplicates(col, config=PIXELS, threshold_file=other_kind)


def test_spatial_verification_keeps_only_verified_pairs(col: Path) -> None:
    result = find_duplicates(col, config=PIXELS, verify="sift", min_inliers=10)
    assert result.pairs.inliers is not None and len(result.pairs)
    assert (result.pairs.inliers >= 10).all()
    for name in ORIGINALS:  # byte-identical copies always verify
        assert any({f"{name}.png", f"copies/{name}_exact.png"} <= g for g in groups_by_name(result))
    assert all(p.get("inliers", 0) >= 10 for p in result.to_json()["pairs"])


def test_verification_decides_only_below_the_unverified_default(col: Path) -> None:
    # below pixels' own default (calibrated without verification) pairs need inliers; at or above
    # it they are duplicates already and are kept unverified (inliers -1), as without --verify
    plain = find_duplicates(col, config=PIXELS)
    result = find_duplicates(col, config=PIXELS, threshold=0.2, verify="sift", min_inliers=10)
    confident = DEFAULT_THRESHOLDS["pixels"]["cosine"]
    assert result.settings["verify"]["accepted_unverified_from"] == confident
    inl, score = result.pairs.inliers, result.pairs.score
    assert ((score >= confident) == (inl == -1)).all() and (inl[score < confident] >= 10).all()
    names = [it.name for it in result.items]
    found = {(names[a], names[b]) for a, b in zip(result.pairs.a, result.pairs.b, strict=True)}
    assert {
        (plain.items[a].name, plain.items[b].name) for a, b in zip(plain.pairs.a, plain.pairs.b, strict=True)
    } <= found
    everything = find_duplicates(col, config=PIXELS, threshold=0.2)  # what verification had to judge
    assert len(found) < len(everything.pairs)  # it rejected some pairs below the default


def test_the_default_model_of_dedup_and_its_exceptions(col: Path) -> None:
    assert dedup_default_model(SearchConfig()) == DEDUP_MODEL == "pixels"
    # a preset or model options are CNN settings: then the search default
    assert dedup_default_model(SearchConfig.from_preset("copies")) == "efficientnet-lite0"
    assert dedup_default_model(SearchConfig(model_options={"pool": "gem"})) == "efficientnet-lite0"
    code, output = cli("dedup", str(col), "-q", "-o", str(col.parent / "d.json"))
    assert code == 0, output
    doc = json.loads((col.parent / "d.json").read_text())
    assert doc["settings"]["model"]["name"] == "pixels" and doc["counts"]["groups"] == 3


def test_a_calibration_file_without_a_model_means_its_model(col: Path, tmp_path: Path) -> None:
    # `lookalike calibrate` (efficientnet-lite0 by default) then `dedup --threshold-file`: that model,
    # not dedup's own default, which the file would be refused for
    from lookalike.methods import resolve_method

    described = resolve_method("efficientnet-lite0", {}).describe()
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"threshold": 0.9, "score": "cosine", "model": described}))
    result = find_duplicates(col, config=SearchConfig(extract=OPTS), threshold_file=path)
    assert result.settings["model"]["name"] == "efficientnet-lite0" and result.threshold.value == 0.9


def test_default_thresholds_per_preset_and_verification() -> None:
    table = DEFAULT_THRESHOLDS
    copies = resolve_threshold("cosine", "efficientnet-lite0", preset="copies")
    assert copies.value == table["efficientnet-lite0@copies"]["cosine"] and "@copies" in copies.source
    verified = resolve_threshold("cosine", "efficientnet-lite0", preset="copies", verify="sift")
    assert verified.value == table["efficientnet-lite0@copies"]["cosine+sift"] < copies.value
    plain = resolve_threshold("cosine", "efficientnet-lite0", preset="default")
    assert (
        plain.value == table["efficientnet-lite0"]["cosine"]
        and plain.source == "default for efficientnet-lite0"
    )
    # a verification or a preset without a row of its own falls back to the plain row
    assert resolve_threshold("cosine", "pixels", verify="surf").value == table["pixels"]["cosine"]
    assert resolve_threshold("cosine", "pixels", preset="copies").source == "default for pixels"
    with pytest.raises(InputError, match="no default duplicate threshold"):
        resolve_threshold("euclidean", "pixels")


def test_a_local_method_scores_pairs_by_inliers(col: Path) -> None:
    result = find_duplicates(col, config=SearchConfig(model="sift", extract=OPTS))
    assert result.settings["score"] == "inliers" and result.threshold.value == 10
    for name in ORIGINALS:
        assert any({f"{name}.png", f"copies/{name}_exact.png"} <= g for g in groups_by_name(result))
    assert not any(any(o in n for o in OTHERS for n in g) for g in groups_by_name(result))


def test_keep_rules(tmp_path: Path) -> None:
    img = sample_photo("camera")
    paths = [tmp_path / "b_big.png", tmp_path / "a_small.png", tmp_path / "c_mid.png"]
    img.resize((200, 200)).save(paths[0])
    img.resize((50, 50)).save(paths[1])
    img.resize((100, 100)).save(paths[2])
    for i, p in enumerate(paths):
        os.utime(p, (1_000_000 + i * 1000, 1_000_000 + i * 1000))
    names = [p.name for p in paths]
    assert choose_kept(paths, names, "largest") == 0
    assert choose_kept(paths, names, "oldest") == 0
    assert choose_kept(paths, names, "newest") == 2
    assert choose_kept(paths, names, "first") == 1
    with pytest.raises(InputError, match="unknown rule"):
        choose_kept(paths, names, "biggest")


# ---------------------------------------------------------------- actions and undo


@pytest.mark.parametrize("action", ["move", "copy", "symlink", "hardlink", "delete"])
def test_every_action_then_undo_restores_bytes_and_paths(col: Path, tmp_path: Path, action: str) -> None:
    before, to, journal = snapshot(col), tmp_path / "dups", tmp_path / "run.jsonl"
    args = ["dedup", str(col), "-m", "pixels", "-q", "--action", action, "--journal", str(journal)]
    code, output = cli(*args, *([] if action == "delete" else ["--to", str(to)]))
    assert code == 0, output
    base = trash_folder(journal) if action == "delete" else to
    state = read_journal(journal)
    assert len(state.ops) == 9 and all(op.done for op in state.ops)
    for op in state.ops:
        assert op.target.is_relative_to(base)
        if action in ("move", "delete"):
            assert not op.source.exists() and op.target.read_bytes() and op.target.is_file()
        elif action == "symlink":
            assert op.target.is_symlink() and Path(os.readlink(op.target)) == op.source
        elif action == "hardlink":
            assert os.path.samefile(op.source, op.target)
        else:
            assert op.target.read_bytes() == op.source.read_bytes() and not os.path.samefile(
                op.source, op.target
            )
    kept = [name for name in before if name.endswith(".png") and "/" not in name]
    assert all((col / name).exists() for name in kept)
    code, output = cli("dedup", "--undo", str(journal))
    assert code == 0 and "restored 9 file(s)" in output, output
    assert snapshot(col) == before
    assert not [p for p in base.rglob("*") if not p.is_dir()]  # nothing left behind


@pytest.mark.parametrize("point", ["dedup-action:2", "dedup-action:3"])
def test_killed_half_way_then_undo_restores_the_tree(col: Path, tmp_path: Path, point: str) -> None:
    before, to, journal = snapshot(col), tmp_path / "dups", tmp_path / "run.jsonl"
    killed = run_cli(
        "dedup",
        str(col),
        "-m",
        "pixels",
        "-q",
        "--action",
        "move",
        "--to",
        str(to),
        "--journal",
        str(journal),
        env={"LOOKALIKE_CRASH_AT": point},
    )
    assert killed.returncode == -9, killed.stderr
    assert snapshot(col) != before or point == "dedup-action:2"  # the run got somewhere
    state = read_journal(journal)
    assert len(state.ops) == 9 and not all(op.done for op in state.ops)
    code, output = cli("dedup", "--undo", str(journal))
    assert code == 0, output
    assert snapshot(col) == before
    assert not [p for p in to.rglob("*") if p.is_file()]


def test_a_move_across_devices_is_copied_verified_and_undone(
    col: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_link = os.link

    def no_cross_device_links(src, dst, *args, **kwargs):  # what link(2) says across file systems
        if ".lookalike-partial" not in str(src):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real_link(src, dst, *args, **kwargs)

    before = snapshot(col)
    result = find_duplicates(col, config=PIXELS)
    monkeypatch.setattr(actions_module.os, "link", no_cross_device_links)
    apply(plan_actions(result, "move", tmp_path / "dups"), tmp_path / "j.jsonl")
    state = read_journal(tmp_path / "j.jsonl")
    assert all(not op.source.exists() and op.target.is_file() for op in state.ops)
    assert not list((tmp_path / "dups").rglob("*.lookalike-partial"))
    report = undo(tmp_path / "j.jsonl")
    assert len(report.restored) == 9 and not report.refused
    assert snapshot(col) == before


def test_a_real_second_file_system_when_there_is_one(col: Path, tmp_path: Path) -> None:
    other = Path("/dev/shm")
    if not (other.is_dir() and os.access(other, os.W_OK) and other.stat().st_dev != tmp_path.stat().st_dev):
        pytest.skip("no second writable file system here")
    to = other / f"lookalike-dedup-test-{os.getpid()}"
    try:
        before = snapshot(col)
        result = find_duplicates(col, config=PIXELS)
        apply(plan_actions(result, "move", to), tmp_path / "j.jsonl")
        assert files_and_bytes(to)[0] == 9
        assert not undo(tmp_path / "j.jsonl").refused
        assert snapshot(col) == before
    finally:
        shutil.rmtree(to, ignore_errors=True)


def test_delete_goes_to_the_trash_until_empty_trash(col: Path, tmp_path: Path) -> None:
    journal = tmp_path / "del.jsonl"
    n_before, _ = files_and_bytes(col)
    code, output = cli(
        "dedup", str(col), "-m", "pixels", "-q", "--action", "delete", "--journal", str(journal)
    )
    assert code == 0, output
    trash = trash_folder(journal)
    assert files_and_bytes(col)[0] == n_before - 9 and files_and_bytes(trash)[0] == 9
    code, output = cli("dedup", "--empty-trash", str(journal))
    assert code == 0 and "removed 9 file(s)" in output
    assert not trash.exists()
    code, output = cli("dedup", "--undo", str(journal))  # gone for good: refused, with the reason
    assert code == 2 and output.count("removed for good by --empty-trash") == 9
    with pytest.raises(InputError, match="only delete runs have a trash"):
        move_journal = tmp_path / "move.jsonl"
        apply(plan_actions(find_duplicates(col, config=PIXELS), "move", tmp_path / "d"), move_journal)
        empty_trash(move_journal)


def test_undo_refuses_changed_files_and_occupied_paths_and_restores_the_rest(
    col: Path, tmp_path: Path
) -> None:
    before = snapshot(col)
    result = find_duplicates(col, config=PIXELS)
    apply(plan_actions(result, "move", tmp_path / "dups"), tmp_path / "j.jsonl")
    ops = read_journal(tmp_path / "j.jsonl").ops
    with open(ops[0].target, "ab") as handle:  # edited since the run
        handle.write(b"edited")
    ops[1].source.write_bytes(b"a new file where the old one was")
    report = undo(tmp_path / "j.jsonl")
    assert len(report.restored) == 7
    reasons = dict(report.refused)
    assert "sha256 differs" in reasons[ops[0].source] and "occupied" in reasons[ops[1].source]
    after = snapshot(col)
    for name, entry in before.items():
        if col / name not in (ops[0].source, ops[1].source):
            assert after[name] == entry
    assert ops[0].target.exists() and ops[1].target.exists()  # the refused ones stay where they are


def test_a_taken_name_at_the_destination_is_never_overwritten(col: Path, tmp_path: Path) -> None:
    to = tmp_path / "dups"
    (to / "copies").mkdir(parents=True)
    (to / "copies" / "chelsea_q40.jpg").write_bytes(b"someone else's file")
    before = snapshot(col)
    code, output = cli(
        "dedup",
        str(col),
        "-m",
        "pixels",
        "-q",
        "--action",
        "move",
        "--to",
        str(to),
        "--journal",
        str(tmp_path / "j.jsonl"),
    )
    assert code == 0 and "name taken" in output
    assert (to / "copies" / "chelsea_q40.jpg").read_bytes() == b"someone else's file"
    assert (to / "copies" / "chelsea_q40~1.jpg").read_bytes() == before["copies/chelsea_q40.jpg"][1]
    assert not undo(tmp_path / "j.jsonl").refused
    assert snapshot(col) == before
    assert (to / "copies" / "chelsea_q40.jpg").read_bytes() == b"someone else's file"


def test_a_dry_run_changes_nothing(col: Path, tmp_path: Path) -> None:
    before = files_and_bytes(col), snapshot(col)
    code, output = cli(
        "dedup", str(col), "-m", "pixels", "--action", "move", "--to", str(tmp_path / "d"), "--dry-run"
    )
    assert code == 0 and output.count("would move") == 9 and "nothing changed" in output
    code, output = cli("dedup", str(col), "-m", "pixels")
    assert code == 0 and output.count("duplicate ") == 9 and "dry run" in output
    assert (files_and_bytes(col), snapshot(col)) == before
    assert not (tmp_path / "d").exists() and not list(tmp_path.glob("*.jsonl"))


# ---------------------------------------------------------------- decisions and outputs


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_pairs_marked_different_are_left_out(col: Path, tmp_path: Path, suffix: str) -> None:
    decisions = tmp_path / f"different{suffix}"
    a, b = col / "astronaut.png", col / "copies" / "astronaut_small.jpg"
    code, output = cli("dedup", "--mark-different", str(a), str(b), "--not-duplicates", str(decisions))
    assert code == 0, output
    assert len(read_not_duplicates(decisions)) == 1
    assert not mark_different(decisions, b, a)  # the same pair, either order: recorded once
    result = find_duplicates(col, config=PIXELS, not_duplicates=decisions)
    names = {
        (result.items[x].name, result.items[y].name)
        for x, y in zip(result.pairs.a, result.pairs.b, strict=True)
    }
    assert ("astronaut.png", "copies/astronaut_small.jpg") not in names
    assert not any({"astronaut.png", "copies/astronaut_small.jpg"} <= g for g in groups_by_name(result))
    # by content: the byte-identical copy of astronaut.png is "different" from the small one too
    assert not any(
        {"copies/astronaut_exact.png", "copies/astronaut_small.jpg"} <= g for g in groups_by_name(result)
    )
    assert result.settings["not_duplicates"]["excluded"] == 2
    astronaut = [g for g in groups_by_name(result) if any("astronaut" in n for n in g)]
    assert len(astronaut) == 2 and set().union(*astronaut) == expected_groups()[0]  # split, nothing lost


def test_json_csv_and_html_are_written_and_never_over_an_input(col: Path, tmp_path: Path) -> None:
    out, table, page = tmp_path / "d.json", tmp_path / "d.csv", tmp_path / "d.html"
    code, output = cli(
        "dedup", str(col), "-m", "pixels", "-q", "-o", str(out), "--csv", str(table), "--report", str(page)
    )
    assert code == 0, output
    doc = json.loads(out.read_text())
    assert doc["format"] == "lookalike-dedup" and doc["counts"]["groups"] == 3
    default = DEFAULT_THRESHOLDS["pixels"]["cosine"]
    assert doc["settings"]["threshold"] == {
        "value": default,
        "score": "cosine",
        "source": "default for pixels",
    }
    assert all(sum(m["kept"] for m in g["members"]) == 1 and g["kept"] for g in doc["groups"])
    rows = table.read_text().splitlines()
    assert rows[0].startswith("group,image,set,kept") and len(rows) == 1 + 12
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and html.count("data:image/jpeg;base64,") == 1
    assert '"groups":[[' in html and html.count("/9j/") >= 12  # twelve embedded JPEG thumbnails
    before = snapshot(col)
    code, output = cli("dedup", str(col), "-m", "pixels", "-q", "-o", str(col / "astronaut.png"))
    assert code == 2 and "error:" in output and snapshot(col) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{missing}"], "no such file or folder"),
        (["{col}", "--action", "move"], "needs --to DIR"),
        (["{col}", "--keep", "biggest"], "unknown rule"),
        (["{col}", "--action", "move", "--to", "{col}/dups"], "inside"),
        (["{col}", "--action", "shred", "--to", "{tmp}/d"], "unknown action"),
        (["{col}", "--to", "{tmp}/d"], "goes with --action"),
        (["{col}", "--verify", "orb"], "--verify"),
        (["{col}", "--threshold", "0.5", "--threshold-file", "{tmp}/t.json"], "not both"),
        (["{col}", "--rerank", "k-reciprocal"], "--verify"),
        (["--undo", "{col}/astronaut.png"], "not a lookalike dedup journal"),
        (["--mark-different", "{col}/astronaut.png", "{col}/camera.jpg"], "needs --not-duplicates"),
        (["{col}", "--undo", "{tmp}/j.jsonl"], "works on its own"),
        (["{col}", "-m", "resnet50", "-O", "weights=random"], "no default duplicate threshold"),
        ([], "give FOLDER"),
    ],
)
def test_bad_input_is_one_error_line(col: Path, tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "t.json").write_text(json.dumps({"threshold": 0.5, "score": "cosine"}))
    filled = [a.format(col=col, tmp=tmp_path, missing=tmp_path / "nowhere") for a in args]
    before = snapshot(col)
    code, output = cli("dedup", *filled, "-q")
    assert code == 2, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], output
    assert snapshot(col) == before


def test_a_library_that_holds_the_new_images_is_refused_before_anything_moves(col: Path, tmp_path: Path) -> None:
    before = snapshot(col)
    for new in (col, col / "copies"):  # the same folder, or one inside the library
        with pytest.raises(InputError, match="overlap: a library image would be its own duplicate"):
            find_duplicates(new, reference=col, config=PIXELS)
    code, output = cli("dedup", str(col), "--reference", str(col), "-m", "pixels", "--action", "move",
                       "--to", str(tmp_path / "d"))
    assert code == 2 and output.count("\n") == 1 and "overlap" in output
    code, _ = cli("index", "build", str(col), "-o", str(tmp_path / "col.index"), "-m", "pixels", "-q")
    assert code == 0
    # an index names the library's files: the same files given as new images are found by path
    for new in (col / "copies", tmp_path / "col.index"):
        with pytest.raises(InputError, match=r"share \d+ image\(s\) \(such as .*col"):
            find_duplicates(new, reference=tmp_path / "col.index", config=SearchConfig(extract=OPTS))
    # a hard link of a library file is another entry: moving it leaves the library's file in place
    new = tmp_path / "new"
    new.mkdir()
    os.link(col / "astronaut.png", new / "astronaut.png")
    result = find_duplicates(new, reference=col, config=PIXELS)
    assert [it.name for it in result.duplicates()] == ["astronaut.png"]
    assert snapshot(col) == before
    # a library entry that links to a new image: trashing the new file would empty the link
    linked_new, linked_lib = tmp_path / "ln-new", tmp_path / "ln-lib"
    linked_new.mkdir()
    shutil.copytree(col, linked_lib)
    shutil.copyfile(col / "coffee.png", linked_new / "coffee.png")
    os.symlink(linked_new / "coffee.png", linked_lib / "coffee_link.png")
    with pytest.raises(InputError, match=r"share 1 image\(s\) \(such as .*coffee\.png\)"):
        find_duplicates(linked_new, reference=linked_lib, config=PIXELS)
    code, output = cli("dedup", str(new), "--reference", str(col), "-m", "pixels", "--rerank-top", "5")
    assert code == 2 and "--rerank-top: dedup re-orders no search results" in output


def test_delete_takes_no_destination_and_its_trash_is_always_beside_the_journal(col: Path, tmp_path: Path) -> None:
    before = snapshot(col)
    code, output = cli("dedup", str(col), "-m", "pixels", "--action", "delete", "--to", str(tmp_path / "t"))
    assert code == 2 and "--action delete moves duplicates into the trash beside the journal" in output
    with pytest.raises(InputError, match="--action delete moves duplicates into the trash"):
        plan_actions(find_duplicates(col, config=PIXELS), "delete", tmp_path / "t")
    assert snapshot(col) == before and not (tmp_path / "t").exists()


def test_dedup_refuses_an_index_of_regions(col: Path, tmp_path: Path) -> None:
    code, output = cli("index", "build", str(col), "-o", str(tmp_path / "reg.index"), "--regions", "2", "-q")
    assert code == 0, output
    code, output = cli("dedup", str(tmp_path / "reg.index"))
    assert code == 2 and "an index of region vectors (built with --regions 2)" in output


def test_an_index_built_with_other_settings_warns_that_the_default_threshold_was_not_measured_for_it(
    col: Path, tmp_path: Path
) -> None:
    code, output = cli("index", "build", str(col), "-o", str(tmp_path / "c.index"), "--preset", "copies", "-q")
    assert code == 0, output
    code, output = cli("dedup", str(tmp_path / "c.index"))
    assert code == 0 and "default settings, not with pool, multiscale, whiten" in output
    # the search preset's learned whitening is stored; dedup's preset cut was measured with PCA
    code, output = cli("dedup", str(tmp_path / "c.index"), "--preset", "copies")
    assert code == 0 and "under --preset copies (as dedup runs it), not with whiten" in output
    code, output = cli(
        "index", "build", str(col), "-o", str(tmp_path / "p.index"), "--preset", "copies", "--whiten-views", "0", "-q"
    )
    assert code == 0, output
    code, output = cli("dedup", str(tmp_path / "p.index"), "--preset", "copies")  # what it was measured with
    assert code == 0 and "was measured with" not in output
