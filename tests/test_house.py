"""The seams under the features: id lookups of an index, numba's cache outside the sources."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lookalike
from lookalike.index import GalleryIndex, create_backend


def _index(ids: list[int]) -> GalleryIndex:
    items = [{"id": i, "path": f"img/{i}.jpg"} for i in ids]
    vectors = np.eye(len(ids), 4, dtype=np.float32)
    backend = create_backend("exact", 4, "cosine", len(ids))
    backend.add(vectors, np.array(ids, dtype=np.int64))
    return GalleryIndex(Path("."), Path("."), {"name": "x", "options": {}, "dim": 4}, "cosine", backend, vectors, items)


def test_rows_of_maps_backend_ids_to_item_rows() -> None:
    index = _index([0, 3, 7, 12])
    rows = index.rows_of(np.array([[12, 0, 5, -1], [3, 7, 99, 0]]))
    assert rows.tolist() == [[3, 0, -1, -1], [1, 2, -1, 0]]
    index.items = [index.items[2], index.items[0]]  # replaced (and out of id order): the lookup follows
    assert index.rows_of(np.array([[0, 7, 3]])).tolist() == [[1, 0, -1]]
    assert index.rows_of(np.zeros((2, 0), dtype=np.int64)).shape == (2, 0)


def test_numba_cache_is_written_outside_the_source_tree(tmp_path: Path) -> None:
    source = Path(lookalike.__file__).parent / "local"
    before = {p for p in source.rglob("*") if p.suffix in (".nbi", ".nbc")}
    code = (
        "import numpy as np\n"
        "from lookalike.local.surf import surf\n"
        "img = (np.random.default_rng(0).random((96, 96)) * 255).astype(np.uint8)\n"
        "surf(img)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["LOOKALIKE_CACHE"] = str(tmp_path)
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)
    assert any(p.suffix == ".nbi" for p in (tmp_path / "numba").rglob("*"))
    after = {p for p in source.rglob("*") if p.suffix in (".nbi", ".nbc")}
    assert after == before


def test_every_command_with_m_takes_local_methods(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    from lookalike.compare import compare
    from lookalike.errors import InputError
    from lookalike.extract import ExtractOptions
    from lookalike.methods import list_methods, resolve_method

    kinds = {m.name: m.kind for m in list_methods()}
    assert kinds["surf"] == kinds["orb"] == "local" and kinds["pixels"] == "global"
    table = compare(*photo_set, ["pixels", "orb"], options=ExtractOptions(progress=False, num_workers=0))
    assert [row.method for row in table.rows] == ["pixels", "orb"]
    assert all(0.0 <= row.mean_ap <= 1.0 for row in table.rows)
    with pytest.raises(InputError, match="local-feature method"):
        resolve_method("surf", {"pool": "gem"})
    with pytest.raises(InputError, match="unknown model 'nope'.*surf"):
        resolve_method("nope")


def test_presets_are_data_and_explicit_options_override_them() -> None:
    from lookalike.config import PRESETS, SearchConfig
    from lookalike.errors import InputError

    copies = SearchConfig.from_preset("copies")
    assert copies.model_options == {"pool": "gem", "multiscale": True}
    assert copies.refinement.whiten and copies.refinement.whiten_dim == 128 and copies.refinement.query_scales
    # the preset's query scales go with its multi-scale model and give way to query regions
    assert not SearchConfig.from_preset("copies", model_options={"multiscale": False}).refinement.query_scales
    regional = SearchConfig.from_preset("copies", refinement={"regions": 2, "query_regions": True}).refinement
    assert regional.query_regions and not regional.query_scales
    assert regional.whiten and not regional.whiten_views  # views are whole images: PCA over the regions
    assert copies.refinement.whiten_views == 2
    verified = SearchConfig.from_preset("copies", refinement={"rerank": "sift"}).refinement
    assert verified.rerank == "sift" and not verified.query_scales
    for off in (False, "false", "0", "off"):  # -O multiscale=false is text until the model reads it
        assert not SearchConfig.from_preset("copies", model_options={"multiscale": off}).refinement.query_scales
    with pytest.raises(InputError, match="option multiscale must be true or false, got 'banana'"):
        SearchConfig.from_preset("copies", model_options={"multiscale": "banana"})
    with pytest.raises(InputError, match="give one"):
        SearchConfig.from_preset("copies", refinement={"regions": 2, "query_regions": True, "query_scales": True})
    assert PRESETS["copies"]["measured"]  # each preset says what it was measured on
    mine = SearchConfig.from_preset(
        "copies", model_options={"pool": "mac"}, refinement={"whiten_dim": 64, "whiten_shrinkage": 0.1}
    )
    assert mine.model_options["pool"] == "mac" and mine.refinement.whiten_dim == 64
    assert mine.refinement.describe() == {"whiten": {"dim": 64, "shrinkage": 0.1, "views": 2}, "query_scales": True}
    off = SearchConfig.from_preset("copies", refinement={"whiten": False})
    assert not off.refinement.whiten and off.refinement.whiten_dim is None and not off.refinement.whiten_views
    stored = SearchConfig.from_preset("copies", refinement={"whiten_shrinkage": 0.3}).index_postprocess()
    assert (stored.whiten_dim, stored.whiten_shrinkage) == (128, 0.3)  # index build keeps it
    assert SearchConfig.from_preset(None).refinement.describe() == {}
    with pytest.raises(InputError, match="unknown preset 'fast'"):
        SearchConfig.from_preset("fast")
    shrunk = {"refinement": {"whiten": True, "whiten_dim": 64, "whiten_shrinkage": 0.1}}
    with pytest.MonkeyPatch.context() as mp:  # --no-whiten drops a preset's shrinkage with its dim
        mp.setitem(PRESETS, "shrunk", shrunk)
        plain = SearchConfig.from_preset("shrunk", refinement={"whiten": False}).refinement
        assert (plain.whiten, plain.whiten_dim, plain.whiten_shrinkage) == (False, None, None)
    with pytest.raises(InputError, match="search-time"):
        SearchConfig.from_preset(None, refinement={"qe": 2}).index_postprocess()


def test_preset_through_the_cli(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from lookalike.cli import app

    summary = tmp_path / "s.json"
    args = ["search", *map(str, photo_set), "--preset", "copies", "--pool", "avg", "--no-multiscale"]
    result = CliRunner().invoke(app, [*args, "--whiten-dim", "8", "--summary", str(summary), "-q", "-o", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    doc = json.loads(summary.read_text())
    assert doc["refinement"] == {"whiten": {"dim": 8, "shrinkage": 1.0, "views": 2}}
    assert doc["model"]["options"]["pool"] == "avg" and doc["model"]["options"]["multiscale"] is False
    listing = CliRunner().invoke(app, ["presets"])
    assert listing.exit_code == 0 and "copies" in listing.output and "whiten_dim=128" in listing.output


def test_padding_of_approximate_indexes_is_never_written() -> None:
    from lookalike.pipeline import SearchRun

    run = SearchRun(["q.jpg"], ["a", "b", "c"], np.array([[1, -1, -1]]), np.array([[0.9, -np.inf, -np.inf]]), "cosine", {})
    assert run.ranking() == {"q.jpg": ["b"]}
    assert run.to_json(scores=True) == {"q.jpg": [{"image": "b", "score": 0.9}]}


def test_options_that_cannot_apply_are_refused_not_ignored(
    photo_set: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from lookalike import pipeline
    from lookalike.errors import InputError
    from lookalike.pipeline import Refinement

    with pytest.raises(InputError, match="--whiten does not apply"):
        pipeline.search(*photo_set, model="surf", refinement=Refinement(whiten=True))
    with pytest.raises(InputError, match="--metric does not apply"):
        pipeline.search(*photo_set, model="orb", metric="euclidean")
    with pytest.raises(InputError, match="--alpha"):
        Refinement(qe=2, alpha=float("nan"))
    with pytest.raises(InputError, match="--query-scales, --score-norm do not apply"):
        pipeline.search(*photo_set, model="surf", refinement=Refinement(query_scales=True, score_norm=2))
    with pytest.raises(InputError, match="^--query-scales with --rerank sift: .* give one"):
        Refinement(query_scales=True, rerank="sift")
    from lookalike.config import SearchConfig
    from lookalike.dedup import find_duplicates

    with pytest.raises(InputError, match="^--rerank-top sets how deep --rerank re-orders"):
        SearchConfig.from_preset(None, refinement={"rerank_top": 50})
    assert SearchConfig.from_preset(None, refinement={"rerank": "sift", "rerank_top": 50}).refinement.rerank_top == 50

    for preset, steps, flags in (
        ("copies", {"query_scales": True}, "--query-scales"),  # given by hand, though the preset has it
        ("copies", {"score_norm": 3}, "--score-norm"),
        ("copies", {"regions": 2, "query_regions": True}, "--regions, --query-regions"),
        (None, {"query_scales": True, "score_norm": 2, "background": str(photo_set[1])}, "--query-scales, --score-norm, --background"),
    ):
        config = SearchConfig.from_preset(preset, refinement=steps)
        with pytest.raises(InputError, match=f"^{flags}: search-time option"):
            find_duplicates(photo_set[1], config=config)
    from typer.testing import CliRunner

    from lookalike.cli import app

    for flags in (["--query-regions"], ["--background", str(photo_set[0])]):  # no detour via their companions
        refused = CliRunner().invoke(app, ["dedup", str(photo_set[1]), *flags, "-q"])
        assert refused.exit_code == 2 and f"error: {flags[0]}: search-time option" in refused.output
    # the preset's own query scales are dropped, not refused: dedup --preset copies works
    found = find_duplicates(photo_set[1], config=SearchConfig.from_preset("copies", refinement={"whiten_dim": 4}))
    assert found.settings["refinement"] == {"whiten": {"dim": 4, "shrinkage": 10.0}}  # PCA: dedup's measured pick
    caplog.clear()
    find_duplicates(photo_set[1], config=SearchConfig.from_preset("copies"))  # the preset's own threshold
    assert "default threshold" not in caplog.text  # the preset as dedup runs it: no warning


def test_a_preset_serves_both_the_build_and_the_search(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lookalike.cli import app

    index = tmp_path / "p.index"
    common = ["--preset", "copies", "--whiten-dim", "4", "-q"]
    built = CliRunner().invoke(app, ["index", "build", str(photo_set[1]), "-o", str(index), *common])
    assert built.exit_code == 0, built.output
    plain = CliRunner().invoke(app, ["search", str(photo_set[0]), str(index), "-q", "-o", str(tmp_path / "a.json")])
    again = CliRunner().invoke(
        app, ["search", str(photo_set[0]), str(index), *common, "--no-query-scales", "-o", str(tmp_path / "b.json")]
    )
    assert plain.exit_code == 0 and again.exit_code == 0, again.output
    assert (tmp_path / "a.json").read_text() == (tmp_path / "b.json").read_text()  # stored steps not run twice
    scaled = CliRunner().invoke(
        app, ["search", str(photo_set[0]), str(index), *common, "--summary", str(tmp_path / "s.json")]
    )
    assert scaled.exit_code == 0, scaled.output
    steps = json.loads((tmp_path / "s.json").read_text())["refinement"]
    assert steps["query_scales"] is True and steps["index"]["whiten"]["dim"] == 4
    other = CliRunner().invoke(app, ["search", str(photo_set[0]), str(index), "--pool", "mac", "-q"])
    assert other.exit_code == 2 and "pool" in other.output


def test_one_labels_csv_never_lends_a_label_to_a_namesake(tmp_path: Path) -> None:
    from PIL import Image

    from lookalike.errors import InputError
    from lookalike.images import ImageSet

    for rel in ("query/x.png", "gallery/y.png", "gallery/sub/x.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / rel)
    (tmp_path / "labels.csv").write_text("query/x.png,cat\ngallery/y.png,dog\n")
    assert ImageSet.from_path(tmp_path / "query", labels_csv=tmp_path / "labels.csv").labels == ["cat"]
    with pytest.raises(InputError, match="no label for 1 image"):
        ImageSet.from_path(tmp_path / "gallery", labels_csv=tmp_path / "labels.csv")


def test_commands_called_from_python_take_their_declared_defaults(photo_set: tuple[Path, Path]) -> None:
    import inspect

    from lookalike.cli.search import evaluate

    params = inspect.signature(evaluate).parameters
    assert params["device"].default == "auto" and params["batch_size"].default is None
    evaluate(photo_set[0], photo_set[1], model="pixels", quiet=True)  # no KeyError for what is left out


def test_local_methods_are_an_index_verified_once_per_pair(
    photo_set: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`-m orb` searches a LocalFeatureIndex through the one search path: the same results and
    metrics as local_search, and evaluating verifies every (query, gallery) pair exactly once."""
    from lookalike.extract import ExtractOptions
    from lookalike.local import local_search
    from lookalike.local import verification as verify_module
    from lookalike.metrics import evaluate_rankings

    opts = ExtractOptions(progress=False, num_workers=0, use_cache=False)
    calls: list[int] = []
    real = verify_module.verify
    monkeypatch.setattr(verify_module, "verify", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    run = lookalike.evaluate(*photo_set, model="orb", k=3, options=opts)
    assert len(calls) == len(run.query_names) * len(run.gallery_names)
    direct = local_search(*photo_set, "orb", k=3, options=opts)
    assert run.indices.tolist() == direct.indices.tolist()
    assert run.scores.tolist() == direct.scores.tolist() and run.metric == "inliers"
    labels = [n.split("/")[0] for n in direct.query_names], [n.split("/")[0] for n in direct.gallery_names]
    expected = evaluate_rankings(direct.rankings(), *labels, direct.query_names)
    assert run.metrics.mean_ap == pytest.approx(expected.mean_ap) and run.metrics.top_k == expected.top_k
