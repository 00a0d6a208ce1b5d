"""Whitening learned from edited views of the gallery (``--whiten-views``): the fit, its file, the
views, and the option through search, index build and dedup."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lookalike import ExtractOptions, ImageSet, InputError, pairs, search
from lookalike.config import SearchConfig
from lookalike.dedup import find_duplicates
from lookalike.features import Extractor, create_extractor
from lookalike.index import GalleryIndex, build_index
from lookalike.index.store import MANIFEST
from lookalike.index.stored_steps import IndexPostprocess
from lookalike.pairs import edited_views, view_rows
from lookalike.pipeline import Refinement
from lookalike.steps import LEARNED_SHRINKAGE, LearnedWhitening, PCAWhitening, Postprocess

OPTS = ExtractOptions(progress=False, use_cache=False, batch_size=8, num_workers=0, device="cpu")
SMALL = {"size": 8}  # 8 x 8 x 3 pixels: a 192-d covariance, quick to fit


def _pairs(seed: int = 0, n: int = 60, d: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Gallery vectors and two 'copies' of each that move along the first two axes, the gallery's
    widest: PCA whitening keeps them as signal, pairs show that copying changes them."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * np.r_[2.0, 2.0, np.ones(d - 2)]
    nuisance = np.zeros((n, 2, d))
    nuisance[..., :2] = rng.normal(size=(n, 2, 2)) * 1.5
    return x, x[:, None] + nuisance + rng.normal(size=(n, 2, d)) * 0.05


def test_learned_whitening_damps_what_copying_changes() -> None:
    x, views = _pairs()
    learned = LearnedWhitening(dim=6, views=2).fit(x, (np.arange(len(x)), views))
    pca = PCAWhitening(dim=6).fit(x)

    def agreement(white: PCAWhitening) -> float:
        a, b = white.transform(x), white.transform(views[:, 0])
        return float(np.mean(np.sum(a * b, axis=1)))

    assert learned.projection.shape == (12, 6)
    assert agreement(learned) > 0.97 and agreement(pca) < 0.9

    def found(white: PCAWhitening) -> float:  # copies whose nearest gallery vector is their image
        sims = white.transform(views[:, 1]) @ white.transform(x).T
        return float((sims.argmax(axis=1) == np.arange(len(x))).mean())

    assert found(learned) == 1.0 and found(pca) < 0.9


def test_learned_whitening_file_round_trip(tmp_path: Path) -> None:
    x, views = _pairs(1)
    learned = LearnedWhitening(dim=5, shrinkage=0.3, views=2).fit(x, (np.arange(len(x)), views))
    learned.save(tmp_path / "w.npz")
    back = PCAWhitening.load(tmp_path / "w.npz")
    assert isinstance(back, LearnedWhitening) and back.views == 2 and back.shrinkage == 0.3
    np.testing.assert_array_equal(back.transform(x), learned.transform(x))
    assert back.describe() == {"kind": "learned-whitening", "dim": 5, "shrinkage": 0.3, "views": 2}
    plain = PCAWhitening(dim=5).fit(x)
    plain.save(tmp_path / "p.npz")
    assert type(PCAWhitening.load(tmp_path / "p.npz")) is PCAWhitening


def test_learned_whitening_refuses_what_it_cannot_fit() -> None:
    x, views = _pairs(2)
    with pytest.raises(InputError, match="edited views"):
        LearnedWhitening(views=2).fit(x)
    with pytest.raises(InputError, match="equal their images"):
        LearnedWhitening(views=2).fit(x, (np.arange(len(x)), np.repeat(x[:, None], 2, axis=1)))
    with pytest.raises(InputError, match="--whiten-views needs --whiten"):
        Postprocess(whiten_views=2)
    with pytest.raises(InputError, match="between 0 .* and 8"):
        Postprocess(whiten=True, whiten_views=9)
    with pytest.raises(InputError, match="--whiten-views with --regions"):
        Refinement(whiten=True, whiten_views=2, regions=2)
    with pytest.raises(InputError, match="needs the gallery's images"):
        Postprocess(whiten=True, whiten_views=2).fit(x)
    steps = Postprocess(whiten=True, whiten_views=2)
    assert steps.shrinkage == LEARNED_SHRINKAGE and steps.describe()["whiten"]["views"] == 2
    assert "views" not in Postprocess(whiten=True).describe()["whiten"]  # PCA records as it always did


def test_edited_views_are_seeded_sampled_and_written_nowhere_of_the_users(
    photo_set: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    gallery = ImageSet.from_path(photo_set[1])
    before = sorted(p.relative_to(photo_set[1]) for p in photo_set[1].rglob("*"))
    extractor = create_extractor("pixels")
    rows, vectors = edited_views(extractor, gallery, 2, OPTS, max_images=6)
    again_rows, again = edited_views(extractor, gallery, 2, OPTS, max_images=6)
    assert len(gallery) == 15 and rows.tolist() == view_rows(15, 6).tolist() and len(rows) == 6
    assert vectors.shape == (6, 2, extractor.dim)
    np.testing.assert_array_equal(again_rows, rows)
    np.testing.assert_array_equal(again, vectors)  # the same gallery always gives the same views
    monkeypatch.setattr(pairs, "CHUNK", 4)  # made and described a few images at a time: the same
    chunked_rows, chunked = edited_views(extractor, gallery, 2, OPTS, max_images=6)
    np.testing.assert_array_equal(chunked_rows, rows)
    np.testing.assert_allclose(chunked, vectors, atol=1e-6)
    raw = np.stack([extractor_vector(extractor, gallery.paths[i]) for i in rows])
    assert not np.allclose(vectors[:, 0], raw)  # edited, not the images themselves
    assert sorted(p.relative_to(photo_set[1]) for p in photo_set[1].rglob("*")) == before
    # an image that can no longer be read lends no views; the others still do
    broken = tmp_path / "g"
    broken.mkdir()
    for i, path in enumerate(gallery.paths[:4]):
        (broken / f"{i}.jpg").write_bytes(path.read_bytes())
    images = ImageSet.from_path(broken)
    (broken / "1.jpg").write_bytes(b"not an image")
    monkeypatch.setattr(logging.getLogger("lookalike"), "propagate", True)  # (a CLI test may have cut it)
    with caplog.at_level("WARNING", logger="lookalike"):
        rows, vectors = edited_views(extractor, images, 1, OPTS)
    assert rows.tolist() == [0, 2, 3] and vectors.shape == (3, 1, extractor.dim)
    assert "1 of 4 gallery images could not be read again" in caplog.text


def test_views_are_cached_with_the_gallery_files_as_they_are(
    photo_set: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gallery = tmp_path / "g"
    gallery.mkdir()
    for i, path in enumerate(ImageSet.from_path(photo_set[1]).paths[:5]):
        (gallery / f"{i}.jpg").write_bytes(path.read_bytes())
    images = ImageSet.from_path(gallery)
    extractor = create_extractor("pixels", size=8)
    cached = ExtractOptions(progress=False, num_workers=0, device="cpu", cache_dir=tmp_path / "cache")
    drawn: list[int] = []
    real = pairs.edited_views

    def counting(*args, **kwargs):
        drawn.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pairs, "edited_views", counting)
    first = pairs.view_source(extractor, images, cached)(2)
    again = pairs.view_source(extractor, images, cached)(2)
    assert len(drawn) == 1  # the second search of the unchanged folder draws nothing
    np.testing.assert_array_equal(first[1], again[1])
    os.utime(gallery / "3.jpg", ns=(1, 1))  # a changed file: drawn again
    pairs.view_source(extractor, images, cached)(2)
    pairs.view_source(extractor, images, replace(cached, use_cache=False))(2)  # --no-cache: drawn
    assert len(drawn) == 3


def extractor_vector(extractor: Extractor, path: Path) -> np.ndarray:
    from lookalike.extract import embed

    return embed(extractor, ImageSet([path], path.parent), OPTS).features[0]


def test_search_with_whiten_views_matches_an_index_that_stores_it(
    photo_set: tuple[Path, Path], gallery: Path, tmp_path: Path
) -> None:
    tempfile_dir = Path(tempfile.gettempdir())
    scratch_before = sorted(tempfile_dir.glob("lookalike-views-*"))
    listing = sorted(p.relative_to(gallery) for p in gallery.rglob("*"))
    refine = Refinement(whiten=True, whiten_dim=8, whiten_views=2)
    from_folder = search(
        photo_set[0],
        gallery,
        model="pixels",
        model_options=SMALL,
        k=5,
        evaluate=True,
        options=OPTS,
        refinement=refine,
    )
    assert from_folder.refinement["whiten"] == {"dim": 8, "shrinkage": LEARNED_SHRINKAGE, "views": 2}
    assert from_folder.metrics.top_k[1] >= 0.6  # the copies are still found (pixels, 5 photos)
    pca = search(
        photo_set[0],
        gallery,
        model="pixels",
        model_options=SMALL,
        k=5,
        options=OPTS,
        refinement=Refinement(whiten=True, whiten_dim=8),
    )
    assert not np.allclose(np.asarray(pca.scores), np.asarray(from_folder.scores))  # it is another whitening

    target = tmp_path / "lw.index"
    post = IndexPostprocess(whiten=True, whiten_dim=8, whiten_views=2)
    build_index(
        gallery, target, model="pixels", model_options=SMALL, options=OPTS, postprocess=post, backend="flat"
    )
    index = GalleryIndex.open(target)
    assert isinstance(index.post.whitening, LearnedWhitening) and index.post.whiten_views == 2
    manifest = json.loads((target / MANIFEST).read_text())
    assert manifest["postprocess"]["whiten"]["views"] == 2
    assert sorted(tempfile_dir.glob("lookalike-views-*")) == scratch_before  # the views are gone
    assert sorted(p.relative_to(gallery) for p in gallery.rglob("*")) == listing  # and the gallery untouched
    from_index = search(photo_set[0], target, k=5, options=OPTS)
    assert from_index.to_json() == from_folder.to_json()
    np.testing.assert_allclose(from_index.scores, from_folder.scores, atol=1e-5)
    again = search(
        photo_set[0], target, k=5, options=OPTS, refinement=refine
    )  # the same step is not run twice
    assert again.to_json() == from_folder.to_json()
    with pytest.raises(InputError, match="learned from 2 views per image.*--whiten-views"):
        search(photo_set[0], target, options=OPTS, refinement=Refinement(whiten=True, whiten_dim=8))


def test_dedup_and_the_cli_take_whiten_views(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    config = SearchConfig.from_preset(
        None,
        model="pixels",
        model_options=SMALL,
        extract=OPTS,
        refinement={"whiten": True, "whiten_dim": 8, "whiten_views": 2},
    )
    result = find_duplicates(photo_set[1], config=config, threshold=0.5)
    assert result.settings["refinement"]["whiten"]["views"] == 2  # given: kept
    from lookalike.dedup.result import _without_search_only_steps

    as_dedup = _without_search_only_steps(SearchConfig.from_preset("copies")).refinement
    assert as_dedup.whiten and as_dedup.whiten_views == 0  # the preset's own: PCA, dedup's measured pick
    assert any(len(group.members) > 1 for group in result.groups)
    from typer.testing import CliRunner

    from lookalike.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["search", str(photo_set[0]), str(photo_set[1]), "--whiten-views", "2"])
    assert out.exit_code == 2 and "--whiten-views needs --whiten" in out.output
    out = runner.invoke(
        app, ["search", str(photo_set[0]), str(photo_set[1]), "--whiten", "--whiten-views", "9"]
    )
    assert out.exit_code == 2 and "--whiten-views" in out.output


def test_an_index_whitened_by_an_older_preset_keeps_its_whitening(
    photo_set: tuple[Path, Path], gallery: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lookalike.config import PRESETS
    from lookalike.dedup.pairs import default_threshold
    from lookalike.dedup.result import _changed_settings, _without_search_only_steps

    # an index built when the preset whitened by PCA; the preset now learns it from views
    target = tmp_path / "old.index"
    build_index(
        gallery, target, model="pixels", model_options=SMALL, options=OPTS, backend="flat",
        postprocess=IndexPostprocess(whiten=True, whiten_dim=8),
    )
    monkeypatch.setitem(PRESETS, "mine", {"refinement": {"whiten": True, "whiten_dim": 8, "whiten_views": 2}})
    preset = SearchConfig.from_preset("mine", extract=OPTS)
    assert preset.preset_whitening
    stored = search(photo_set[0], target, k=5, options=OPTS)
    assert search(photo_set[0], target, k=5, config=preset).to_json() == stored.to_json()
    given = SearchConfig.from_preset("mine", extract=OPTS, refinement={"whiten_views": 2})
    assert not given.preset_whitening  # a setting given by hand is meant: refused, not replaced
    with pytest.raises(InputError, match="already stores whiten"):
        search(photo_set[0], target, k=5, config=given)
    # a whitening no version of the preset stored (another shrinkage) is refused as before
    other = tmp_path / "other.index"
    build_index(
        gallery, other, model="pixels", model_options=SMALL, options=OPTS, backend="flat",
        postprocess=IndexPostprocess(whiten=True, whiten_dim=8, whiten_shrinkage=0.5),
    )
    with pytest.raises(InputError, match="already stores whiten"):
        search(photo_set[0], other, k=5, config=preset)
    # over an index of regions the preset's whitening is PCA (the views are whole images)
    regional = tmp_path / "regions.index"
    build_index(gallery, regional, model="pixels", model_options=SMALL, options=OPTS, regions=2)
    run = search(photo_set[0], regional, k=5, config=preset)
    assert run.refinement["whiten"] == {"dim": 8, "shrinkage": 10.0}
    with pytest.raises(InputError, match="--whiten-views with an index of regions.*--whiten-views 0"):
        search(photo_set[0], regional, k=5, config=given)
    augmented = tmp_path / "dba.index"  # stored DBA rows are no place to fit views of raw images on
    build_index(gallery, augmented, model="pixels", model_options=SMALL, options=OPTS, postprocess=IndexPostprocess(dba=2))
    with pytest.raises(InputError, match="which stores DBA: build the index with the whitening"):
        search(photo_set[0], augmented, k=5, config=preset)
    # dedup (whose preset whitens by PCA) says its default cut was measured with another whitening
    # than an index built by the search preset stores
    copies = _without_search_only_steps(SearchConfig.from_preset("copies"))  # as dedup runs it
    cut = default_threshold("cosine", "efficientnet-lite0", "copies")
    pca = {"postprocess": {"whiten": {"kind": "pca-whitening", "dim": 128, "shrinkage": 10.0, "requested_dim": 128}}}
    learned = {"postprocess": {"whiten": {"kind": "learned-whitening", "dim": 128, "shrinkage": 1.0,
                                          "requested_dim": 128, "views": 2}}}
    assert "whiten" in _changed_settings(copies, "efficientnet-lite0", cut, learned)
    assert _changed_settings(copies, "efficientnet-lite0", cut, pca) == []


def test_a_threshold_measured_with_the_other_whitening_is_refused_with_the_flags_to_match() -> None:
    from lookalike.calibrate import _check_steps

    pca, learned = {"whiten": {"dim": 128, "shrinkage": 10.0}}, {"whiten": {"dim": 128, "shrinkage": 1.0, "views": 2}}
    _check_steps("t.json", learned, learned)
    with pytest.raises(InputError, match=r"calibrate again with the same refinement \(--whiten-views 2, as this run"):
        _check_steps("t.json", pca, learned)
    # the copies preset calibrated by `calibrate`, used by dedup: both flags dedup's run needs
    searched = {**learned, "query_scales": True}
    with pytest.raises(InputError, match=r"\(--no-query-scales --whiten-views 0, as this run has them\)"):
        _check_steps("t.json", searched, pca)
    with pytest.raises(InputError, match=r"\(--whiten-views 0 --whiten-shrinkage 3, as"):
        _check_steps("t.json", learned, {"whiten": {"dim": 128, "shrinkage": 3.0}})
