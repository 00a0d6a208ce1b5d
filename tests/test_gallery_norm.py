"""--gallery-norm K: each gallery image's similarities minus its mean similarity to its K nearest
other gallery images (hubs discounted), searched exactly through one more coordinate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from stored_search import folder_index_and_server_agree

import lookalike
from lookalike import ExtractOptions, ImageSet, InputError, create_extractor, embed
from lookalike.calibrate import _check_steps
from lookalike.config import SearchConfig
from lookalike.features.scale_views import with_scale_views
from lookalike.metrics import evaluate_rankings
from lookalike.pipeline import Refinement
from lookalike.steps import GalleryNorm, alpha_query_expansion, database_augmentation, l2_normalise

# a tiny timm CNN with random weights: the arithmetic, not the model's quality, is tested
MODEL, MODEL_OPTIONS = "timm:test_resnet", {"weights": "random", "pool": "gem", "multiscale": True}


def _opts(tmp_path: Path) -> ExtractOptions:
    return ExtractOptions(progress=False, num_workers=0, cache_dir=tmp_path / "cache")


def _brute_offsets(gallery: np.ndarray, k: int) -> np.ndarray:
    sims = gallery @ gallery.T
    np.fill_diagonal(sims, -np.inf)
    return -np.sort(-sims, axis=1)[:, :k].mean(axis=1)


def test_offsets_are_the_mean_of_the_k_nearest_others() -> None:
    rng = np.random.default_rng(0)
    gallery = l2_normalise(rng.normal(size=(30, 5)).astype(np.float32))
    gallery[7] = gallery[3]  # an exact duplicate counts as a neighbour, itself does not
    norm = GalleryNorm(4)
    offsets = norm.offsets(gallery)
    np.testing.assert_allclose(offsets, _brute_offsets(gallery, 4), atol=1e-6)
    assert offsets[3] > offsets[[i for i in range(30) if i not in (3, 7)]].mean()  # a near-copy pulls it up
    # the extra coordinate makes an inner product the normalised score
    queries = l2_normalise(rng.normal(size=(3, 5)).astype(np.float32))
    scores = GalleryNorm.query_rows(queries) @ GalleryNorm.gallery_rows(gallery, offsets).T
    np.testing.assert_allclose(scores, queries @ gallery.T - offsets[None], atol=1e-6)
    plain = GalleryNorm.query_rows(queries, gallery_side=False) @ GalleryNorm.gallery_rows(gallery, offsets).T
    np.testing.assert_allclose(plain, queries @ gallery.T, atol=1e-6)
    with pytest.raises(InputError, match="--gallery-norm 30: the gallery has only 30 images"):
        GalleryNorm(30).offsets(gallery)
    with pytest.raises(InputError, match="--gallery-norm must be"):
        Refinement(gallery_norm=-1)
    with pytest.raises(InputError, match="at least 1"):
        GalleryNorm(0)


def test_search_ranks_by_the_best_view_minus_the_gallery_offset(
    photo_set: tuple[Path, Path], tmp_path: Path
) -> None:
    """With query scales: the score is the best view's cosine minus the gallery image's offset, and
    the ranking over the whole gallery (mAP, µAP) is the one of that score."""
    query, gallery = photo_set
    opts = _opts(tmp_path)
    run = lookalike.evaluate(
        query, gallery, model=MODEL, model_options=MODEL_OPTIONS, options=opts,
        refinement=Refinement(query_scales=True, gallery_norm=3),
    )
    multiscale = create_extractor(MODEL, **MODEL_OPTIONS)
    q = embed(with_scale_views(multiscale), ImageSet.from_path(query), opts).features.reshape(-1, 4, multiscale.dim)
    g = embed(multiscale, ImageSet.from_path(gallery), opts).features
    expected_scores = np.einsum("qvd,gd->qgv", q, g).max(axis=2) - _brute_offsets(g, 3)[None]
    order = np.argsort(-expected_scores, axis=1, kind="stable")
    k = run.indices.shape[1]
    assert run.indices.tolist() == order[:, :k].tolist()
    np.testing.assert_allclose(run.scores, np.take_along_axis(expected_scores, order[:, :k], axis=1), atol=1e-5)
    assert run.refinement == {"query_scales": True, "gallery_norm": {"k": 3}}
    assert run.metric == "normalised cosine"
    q_set, g_set = ImageSet.from_path(query), ImageSet.from_path(gallery)
    brute = evaluate_rankings([(0, order)], q_set.labels, g_set.labels, q_set.names)
    assert run.metrics.mean_ap == pytest.approx(brute.mean_ap, abs=1e-9)
    ranked = lookalike.evaluate(
        query, gallery, model=MODEL, model_options=MODEL_OPTIONS, options=opts,
        refinement=Refinement(query_scales=True),
    )
    assert run.indices.tolist() != ranked.indices.tolist()  # unlike --score-norm, rankings move


def test_a_saved_index_the_server_and_score_norm(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    """Offsets are fitted on the vectors searched (an index's stored whitening applied), so a saved
    index and the server answer as the folder does; --score-norm's background is compared with the
    plain queries, then subtracted from the gallery-normalised scores."""
    query, gallery = photo_set
    opts = _opts(tmp_path)
    folder = folder_index_and_server_agree(
        query, gallery, MODEL, MODEL_OPTIONS, opts, tmp_path / "w.index", {"gallery_norm": 2}
    )

    background = sorted(ImageSet.from_path(gallery).paths)[:6]
    bg_folder = tmp_path / "background"
    bg_folder.mkdir()
    for path in background:
        (bg_folder / path.name).write_bytes(path.read_bytes())
    normed = lookalike.search(query, gallery, model=MODEL, model_options=MODEL_OPTIONS, k=5, options=opts,
                              refinement=Refinement(whiten=True, whiten_dim=8, gallery_norm=2, score_norm=2,
                                                    background=bg_folder))
    plain = lookalike.search(query, gallery, model=MODEL, model_options=MODEL_OPTIONS, k=5, options=opts,
                             refinement=Refinement(whiten=True, whiten_dim=8, score_norm=2, background=bg_folder))
    assert normed.indices.tolist() == folder.indices.tolist()  # score norm keeps the rankings
    # a server fits the offsets when it starts: a K the index cannot give fails there, in one line
    from lookalike.server import create_app

    with pytest.raises(InputError, match="--gallery-norm 500: the gallery has only"):
        create_app(tmp_path / "w.index", config=SearchConfig.from_preset(refinement={"gallery_norm": 500}, extract=opts))
    # the background's k-th similarity, subtracted, is the same with and without the gallery's offsets
    whitened = lookalike.search(query, gallery, model=MODEL, model_options=MODEL_OPTIONS, k=5, options=opts,
                                refinement=Refinement(whiten=True, whiten_dim=8))
    bias = (whitened.scores - plain.scores)[:, :1]
    np.testing.assert_allclose(folder.scores - normed.scores, np.repeat(bias, 5, axis=1), atol=1e-5)
    assert np.abs(bias).max() > 1e-3
    assert np.abs(whitened.scores - folder.scores).max() > 1e-3  # the offsets did change the scores


def test_offsets_are_taken_after_dba_and_queries_expanded_before(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    """With search-time DBA the offsets are those of the augmented gallery; query expansion uses the
    gallery's plain vectors, then the query gets its coordinate."""
    query, gallery = photo_set
    opts = _opts(tmp_path)
    run = lookalike.search(query, gallery, model=MODEL, model_options=MODEL_OPTIONS, k=8, options=opts,
                           refinement=Refinement(dba=2, qe=2, gallery_norm=2))
    multiscale = create_extractor(MODEL, **MODEL_OPTIONS)
    q = embed(multiscale, ImageSet.from_path(query), opts).features
    g = database_augmentation(embed(multiscale, ImageSet.from_path(gallery), opts).features, 2, 3.0)
    expected_scores = alpha_query_expansion(q, g, 2, 3.0) @ g.T - _brute_offsets(g, 2)[None]
    order = np.argsort(-expected_scores, axis=1, kind="stable")[:, :8]
    assert run.indices.tolist() == order.tolist()
    np.testing.assert_allclose(run.scores, np.take_along_axis(expected_scores, order, axis=1), atol=1e-5)


def test_refusals_presets_and_thresholds(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    query, gallery = photo_set
    with pytest.raises(InputError, match="--gallery-norm with --rerank sift"):
        Refinement(gallery_norm=3, rerank="sift")
    with pytest.raises(InputError, match="--gallery-norm with --regions"):
        Refinement(gallery_norm=3, regions=2)
    with pytest.raises(InputError, match="cosine similarities, not euclidean"):
        lookalike.search(query, gallery, model="pixels", model_options={"size": 8}, metric="euclidean",
                         options=_opts(tmp_path), refinement=Refinement(gallery_norm=3))
    with pytest.raises(InputError, match="--gallery-norm with --regions"):
        SearchConfig.from_preset("copies", refinement={"regions": 2, "gallery_norm": 5})
    # a threshold measured without it does not hold with it, nor with another K
    without = {"whiten": {"dim": 8, "shrinkage": 10.0}}
    with_k = {**without, "gallery_norm": {"k": 10}}
    _check_steps("t.json", with_k, with_k)
    with pytest.raises(InputError, match="gallery_norm: off there, k 10 here"):
        _check_steps("t.json", without, with_k)
    with pytest.raises(InputError, match="gallery_norm: k 10 there, k 5 here"):
        _check_steps("t.json", with_k, {**without, "gallery_norm": {"k": 5}})


def test_the_cli_and_dedup(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lookalike.cli import app

    query, gallery = photo_set
    summary = tmp_path / "s.json"
    result = CliRunner().invoke(app, [
        "search", str(query), str(gallery), "--gallery-norm", "3", "-q", "--summary", str(summary),
        "-o", str(tmp_path / "r.json"), "--cache-dir", str(tmp_path / "cache"),
    ])
    assert result.exit_code == 0, result.output
    assert json.loads(summary.read_text())["refinement"] == {"gallery_norm": {"k": 3}}
    too_many = CliRunner().invoke(app, ["search", str(query), str(gallery), "--gallery-norm", "500", "-q",
                                        "--cache-dir", str(tmp_path / "cache")])
    assert too_many.exit_code == 2 and "--gallery-norm 500: the gallery has only" in too_many.output
    assert "Traceback" not in too_many.output
    dedup = CliRunner().invoke(app, ["dedup", str(gallery), "--gallery-norm", "3", "-q"])
    assert dedup.exit_code == 2 and "--gallery-norm: search-time option(s) that dedup does not apply" in dedup.output
