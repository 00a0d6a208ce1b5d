"""Query-side reading: --query-scales (a multi-scale model's queries described at each scale too,
scored by their best view) and --query-resize (queries read another way than the gallery)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from stored_search import folder_index_and_server_agree

import lookalike
from lookalike import ExtractOptions, ImageSet, InputError, create_extractor, embed
from lookalike.config import SearchConfig
from lookalike.features.regions import rebuild_extractor
from lookalike.features.scale_views import OPTION, view_count, with_scale_views
from lookalike.pipeline import Refinement
from lookalike.steps import ScoreNormalisation, l2_normalise

# a tiny timm CNN with random weights: the views' arithmetic, not the model's quality, is tested
MODEL, MODEL_OPTIONS = "timm:test_resnet", {"weights": "random", "pool": "gem", "multiscale": True}


@pytest.fixture(scope="module")
def multiscale():
    return create_extractor(MODEL, **MODEL_OPTIONS)


def _opts(tmp_path: Path, **more) -> ExtractOptions:
    return ExtractOptions(progress=False, num_workers=0, cache_dir=tmp_path / "cache", **more)


def test_views_are_the_mean_then_each_scale_from_the_same_passes(multiscale, tmp_path: Path) -> None:
    views = with_scale_views(multiscale)
    assert view_count(views) == 4 and view_count(multiscale) == 1 and views.dim == 4 * multiscale.dim
    assert views.key != multiscale.key and views.options[OPTION] == 4
    assert rebuild_extractor(views.name, views.options).key == views.key  # a saved index, a Ray worker
    torch.manual_seed(0)
    pixels = torch.rand(2, 3, 96, 128) * 255
    net = multiscale.module
    with torch.no_grad():
        out = views.module(pixels).reshape(2, 4, -1)
        x = (pixels - net.mean) / net.std
        for i, scale in enumerate((1.0, 2**-0.5, 0.5)):
            small = x if scale == 1.0 else torch.nn.functional.interpolate(x, scale_factor=scale, mode="bilinear")
            alone = torch.nn.functional.normalize(net.body(small), dim=1)
            torch.testing.assert_close(out[:, 1 + i], alone, atol=1e-5, rtol=0)
        torch.testing.assert_close(out[:, 0], net(pixels), atol=1e-6, rtol=0)  # the gallery's descriptor


def test_views_run_alike_in_torch_and_onnx(multiscale, photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    views = with_scale_views(multiscale)
    images = ImageSet.from_path(photo_set[0])
    found = {
        runtime: embed(views, images, _opts(tmp_path, runtime=runtime, use_cache=False)).features
        for runtime in ("torch", "onnx")
    }
    assert found["torch"].shape == (len(images), views.dim)
    np.testing.assert_allclose(found["onnx"], found["torch"], atol=1e-4)
    plain = embed(multiscale, images, _opts(tmp_path, use_cache=False)).features
    np.testing.assert_allclose(found["torch"][:, : multiscale.dim], plain, atol=1e-5)


def test_a_model_without_scales_is_refused(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    for extractor in (create_extractor("efficientnet-lite0"), create_extractor("pixels", size=8)):
        with pytest.raises(InputError, match="-O multiscale=true"):
            with_scale_views(extractor)
    with pytest.raises(InputError, match="multi-scale"):
        lookalike.search(*photo_set, model="pixels", options=_opts(tmp_path), refinement=Refinement(query_scales=True))
    with pytest.raises(InputError, match="give one"):
        Refinement(regions=2, query_regions=True, query_scales=True)


def test_a_gallery_image_scores_the_best_view(multiscale, photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    """Without fitted steps the score is the plain max over the query's views of the cosine, and the
    ranking is the one of that score over the whole gallery (µAP and mAP come from it)."""
    query, gallery = photo_set
    opts = _opts(tmp_path)
    run = lookalike.evaluate(
        query, gallery, model=MODEL, model_options=MODEL_OPTIONS,
        options=opts, refinement=Refinement(query_scales=True),
    )
    q = embed(with_scale_views(multiscale), ImageSet.from_path(query), opts).features.reshape(-1, 4, multiscale.dim)
    g = embed(multiscale, ImageSet.from_path(gallery), opts).features
    best = np.einsum("qvd,gd->qgv", q, g).max(axis=2)
    expected = np.argsort(-best, axis=1, kind="stable")
    k = run.indices.shape[1]
    assert run.indices.tolist() == expected[:, :k].tolist()
    np.testing.assert_allclose(run.scores, np.take_along_axis(best, expected[:, :k], axis=1), atol=1e-5)
    assert run.refinement == {"query_scales": True}
    plain = lookalike.evaluate(
        query, gallery, model=MODEL, model_options=MODEL_OPTIONS, options=opts
    )
    assert (run.scores[:, 0] >= plain.scores[:, 0] - 1e-5).all()  # the mean view is one of the views
    assert (run.scores[:, 0] > plain.scores[:, 0] + 1e-3).any()


def test_an_index_with_stored_whitening_and_the_server_search_as_the_folder(
    photo_set: tuple[Path, Path], tmp_path: Path
) -> None:
    """The views are whitened as the gallery was (at search time, or by an index's stored fit), and
    `lookalike search` on a folder, on a saved index and the server's /search agree."""
    query, gallery = photo_set
    opts = _opts(tmp_path)
    folder = folder_index_and_server_agree(
        query, gallery, MODEL, MODEL_OPTIONS, opts, tmp_path / "w.index", {"query_scales": True}
    )
    plain = lookalike.search(query, tmp_path / "w.index", k=5, options=opts)
    assert np.abs(plain.scores - folder.scores).max() > 1e-3  # the views did change the scores


def test_kth_background_score_under_best_view_scoring() -> None:
    rng = np.random.default_rng(0)
    background = l2_normalise(rng.normal(size=(40, 6)).astype(np.float32))
    queries = l2_normalise(rng.normal(size=(5 * 3, 6)).astype(np.float32))
    norm = ScoreNormalisation(4, background=background, views=3)
    best = np.einsum("qvd,bd->qbv", queries.reshape(5, 3, 6), background).max(axis=2)
    expected = -np.sort(-best, axis=1)[:, 3]
    np.testing.assert_allclose(norm.bias(queries, np.zeros((5, 0))), expected, atol=1e-6)


def test_query_scales_with_score_norm_and_the_cli(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lookalike.cli import app

    query, gallery = photo_set
    summary = tmp_path / "s.json"
    args = ["search", str(query), str(gallery), "--preset", "copies", "--whiten-dim", "8", "--query-scales",
            "--score-norm", "3", "--background", str(gallery), "-q", "--summary", str(summary),
            "-o", str(tmp_path / "r.json"), "--cache-dir", str(tmp_path / "cache")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(summary.read_text())
    assert doc["refinement"]["query_scales"] is True and doc["refinement"]["score_norm"]["k"] == 3
    refused = CliRunner().invoke(app, [*args[:5], "--no-multiscale", "--query-scales", "-q"])
    assert refused.exit_code == 2 and "multiscale" in refused.output and "Traceback" not in refused.output
    # compare's -m names bare models, none of them multi-scale: it does not offer the option
    compare = CliRunner().invoke(app, ["compare", str(query), str(gallery), "-m", "pixels", "--query-scales"])
    assert compare.exit_code == 2 and "No such option" in compare.output
    # a vector step beside a local method would be dropped for it unseen: refused
    mixed = CliRunner().invoke(app, ["compare", str(query), str(gallery), "-m", "pixels", "-m", "sift", "--whiten",
                                     "-o", str(tmp_path / "cmp")])
    assert mixed.exit_code == 2 and "--whiten applies to vector methods, and sift ranks" in mixed.output
    assert not (tmp_path / "cmp").exists()


def test_query_resize_reads_only_the_queries_another_way(
    multiscale, photo_set: tuple[Path, Path], tmp_path: Path
) -> None:
    """--query-resize fit: the gallery's vectors stay squashed (the same cache, the same index),
    the queries are read with their aspect kept; with --query-scales too, their views are of the
    fitted pixels. The same from a saved index; a model without resize, query regions, an unknown
    value and dedup refuse it in one line; a resize the gallery already has is no step."""
    from lookalike.dedup import find_duplicates
    from lookalike.index import build_index

    query, gallery = photo_set
    opts = _opts(tmp_path)
    fitted = create_extractor(MODEL, **MODEL_OPTIONS, resize="fit")
    g = embed(multiscale, ImageSet.from_path(gallery), opts).features
    for refine, q_extractor in (
        (Refinement(query_resize="fit"), fitted),
        (Refinement(query_resize="fit", query_scales=True), with_scale_views(fitted)),
    ):
        run = lookalike.search(query, gallery, model=MODEL, model_options=MODEL_OPTIONS, k=4, options=opts,
                               refinement=refine)
        views = view_count(q_extractor)
        q = embed(q_extractor, ImageSet.from_path(query), opts).features.reshape(-1, views, multiscale.dim)
        best = np.einsum("qvd,gd->qgv", q, g).max(axis=2)
        expected = np.argsort(-best, axis=1, kind="stable")[:, :4]
        assert run.indices.tolist() == expected.tolist()
        np.testing.assert_allclose(run.scores, np.take_along_axis(best, expected, axis=1), atol=1e-5)
        assert run.refinement["query_resize"] == "fit"
    plain = lookalike.search(query, gallery, model=MODEL, model_options=MODEL_OPTIONS, k=4, options=opts)
    assert np.abs(plain.scores - run.scores).max() > 1e-3
    build_index(gallery, tmp_path / "s.index", model=MODEL, model_options=MODEL_OPTIONS, options=opts)
    saved = lookalike.search(query, tmp_path / "s.index", k=4, options=opts, refinement=refine)
    assert saved.indices.tolist() == run.indices.tolist()
    np.testing.assert_allclose(saved.scores, run.scores, atol=1e-5)
    same = lookalike.search(query, gallery, model=MODEL, model_options={**MODEL_OPTIONS, "resize": "fit"}, k=4,
                            options=opts, refinement=Refinement(query_resize="fit"))
    assert "query_resize" not in same.refinement  # the gallery is read that way already
    with pytest.raises(InputError, match="^--query-resize fit: model 'pixels': unknown option"):
        lookalike.search(query, gallery, model="pixels", options=opts, refinement=Refinement(query_resize="fit"))
    with pytest.raises(InputError, match="give one"):
        Refinement(regions=2, query_regions=True, query_resize="fit")
    with pytest.raises(InputError, match="--query-resize: unknown value 'crop'"):
        Refinement(query_resize="crop")
    with pytest.raises(InputError, match="^--query-resize: search-time"):
        find_duplicates(gallery, config=SearchConfig(model="pixels", refinement=Refinement(query_resize="fit")))
