"""Pooling, multi-scale, whitening, query expansion, DBA and k-reciprocal re-ranking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lookalike import ExtractOptions, ImageSet, create_extractor, embed, search
from lookalike.features.pooling import GlobalPool
from lookalike.pipeline import Refinement
from lookalike.rerank import k_reciprocal_rerank
from lookalike.steps import PCAWhitening, alpha_query_expansion, database_augmentation, l2_normalise


def test_gem_with_p_one_is_average_pooling_and_large_p_approaches_max() -> None:
    fmap = torch.rand(2, 5, 4, 3) + 0.01
    torch.testing.assert_close(GlobalPool("gem", p=1.0)(fmap), GlobalPool("avg")(fmap))
    torch.testing.assert_close(GlobalPool("gem", p=200.0)(fmap), GlobalPool("mac")(fmap), rtol=0.05, atol=0.0)
    assert (GlobalPool("gem", p=3.0)(fmap) >= GlobalPool("avg")(fmap) - 1e-6).all()


def test_spoc_weights_the_centre_of_the_map() -> None:
    centre, corner = torch.zeros(1, 1, 7, 7), torch.zeros(1, 1, 7, 7)
    centre[..., 3, 3], corner[..., 0, 0] = 1.0, 1.0
    assert GlobalPool("spoc")(centre).item() == pytest.approx(1.0)
    assert GlobalPool("spoc")(corner).item() < 0.05
    uniform = torch.ones(2, 3, 5, 5)
    torch.testing.assert_close(GlobalPool("spoc")(uniform)[0], GlobalPool("spoc")(uniform)[1])


def test_whitening_decorrelates_and_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    mixing = rng.normal(size=(6, 6))
    x = rng.normal(size=(2000, 6)) @ mixing + 3.0  # strongly correlated, off-centre
    w = PCAWhitening(shrinkage=0.0).fit(x)
    z = (x - w.mean) @ w.projection
    np.testing.assert_allclose(np.cov(z, rowvar=False), np.eye(6), atol=1e-6)
    out = w.transform(x)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    reduced = PCAWhitening(dim=3).fit(x)
    assert reduced.transform(x).shape == (2000, 3)
    reduced.save(tmp_path / "w.npz")
    np.testing.assert_allclose(PCAWhitening.load(tmp_path / "w.npz").transform(x), reduced.transform(x))


def test_whitening_of_fewer_vectors_than_dimensions_uses_the_same_axes() -> None:
    from lookalike.errors import InputError

    rng = np.random.default_rng(4)
    x = rng.normal(size=(40, 300)) @ rng.normal(size=(300, 300)) + 2.0  # n < d: the Gram-matrix path
    queries = rng.normal(size=(6, 300))
    values, vectors = np.linalg.eigh(np.cov(x, rowvar=False))  # the d x d covariance, by hand
    order = np.argsort(values)[::-1][:39]  # rank n - 1
    for dim, shrinkage in ((None, 0.0), (10, 10.0)):
        w = PCAWhitening(dim, shrinkage).fit(x)
        kept = order[: dim or 39]
        projection = vectors[:, kept] / np.sqrt(values[kept] + shrinkage * values[kept].mean())
        assert w.projection.shape == projection.shape
        by_hand = l2_normalise((queries - x.mean(0)) @ projection) @ l2_normalise((x - x.mean(0)) @ projection).T
        np.testing.assert_allclose(w.transform(queries) @ w.transform(x).T, by_hand, atol=1e-5)
    for same in (np.ones((5, 10)), np.full((5, 10), 0.1), np.full((5, 3), 0.1, dtype=np.float32)):
        with pytest.raises(InputError, match="all 5 are the same"):  # float64 rounding of 0.1 included
            PCAWhitening().fit(same)


def test_whitening_shrinkage_tempers_each_axis_and_is_checked() -> None:
    from lookalike.errors import InputError
    from lookalike.steps import Postprocess

    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 5)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2]) + 1.0  # axis-aligned variances
    for shrinkage in (0.1, 1.0, 10.0):
        w = PCAWhitening(shrinkage=shrinkage).fit(x)
        variances = np.sort(np.var(x, axis=0, ddof=1))[::-1]
        kept = np.var((x - w.mean) @ w.projection, axis=0, ddof=1)
        # each axis keeps variance v / (v + shrinkage * mean v): near 1 for small shrinkage, ~v/s for large
        np.testing.assert_allclose(kept, variances / (variances + shrinkage * variances.mean()), rtol=0.02)
    steps = Postprocess(whiten=True, whiten_dim=3, whiten_shrinkage=np.float32(0.5)).fit(x)
    assert steps.whitening is not None and steps.whitening.shrinkage == 0.5
    assert steps.describe() == {"whiten": {"dim": 3, "shrinkage": 0.5}}
    assert type(steps.describe()["whiten"]["shrinkage"]) is float  # JSON-safe whatever the caller gave
    assert Postprocess(whiten=True).describe() == {"whiten": {"dim": None, "shrinkage": 10.0}}
    for alone in (1.0, 10.0):  # even the default's value, given without --whiten, is refused
        with pytest.raises(InputError, match="--whiten-shrinkage needs --whiten"):
            Postprocess(whiten_shrinkage=alone)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(InputError, match="--whiten-shrinkage must be a finite number"):
            Postprocess(whiten=True, whiten_shrinkage=bad)
        with pytest.raises(InputError, match="--whiten-shrinkage"):
            PCAWhitening(shrinkage=bad)


def test_alpha_qe_identity_cases_and_by_hand() -> None:
    rng = np.random.default_rng(1)
    q, g = l2_normalise(rng.normal(size=(4, 8))), l2_normalise(rng.normal(size=(30, 8)))
    np.testing.assert_allclose(alpha_query_expansion(q, g, k=1, alpha=0.0), q, atol=1e-6)
    top = np.argmax(q @ g.T, axis=1)
    np.testing.assert_allclose(
        alpha_query_expansion(q, g, k=2, alpha=0.0), l2_normalise(q + g[top]), atol=1e-6
    )


def test_dba_identity_and_pull_together() -> None:
    rng = np.random.default_rng(2)
    g = l2_normalise(rng.normal(size=(20, 8)))
    np.testing.assert_allclose(database_augmentation(g, 1), g, atol=1e-6)
    pair = l2_normalise(np.vstack([g, g[0] + 0.3 * g[1]]))
    augmented = database_augmentation(pair, 2, alpha=1.0)
    assert augmented[0] @ augmented[-1] > pair[0] @ pair[-1]


def _at(degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    return np.array([np.cos(t), np.sin(t), 0.0], dtype=np.float32)


def test_k_reciprocal_on_a_hand_made_example() -> None:
    """Unit vectors on a circle. The query (21.9 deg) is nearest to a stray image (25 deg) whose
    own 4 nearest neighbours are all of group B (26.5..28.5 deg), so they are not reciprocal;
    group A's first image (18.5 deg) has the query among its 4 nearest, so A wins after re-ranking."""
    a_group = [_at(d) for d in (18.5, 17.5, 16.5, 15.5, 14.5)]
    b_group = [_at(d) for d in (26.5, 27.0, 27.5, 28.0, 28.5)]
    gallery = np.stack([_at(25.0), *a_group, *b_group])  # index 0 is the stray, 1..5 are A
    query = _at(21.9)[None]
    before = np.argsort(-(query @ gallery.T), kind="stable")
    assert before[0, 0] == 0  # the stray ranks first on raw similarity
    order, dist = k_reciprocal_rerank(query, gallery, before, k1=4, k2=1, lambda_value=0.3)
    assert sorted(order[0].tolist()) == list(range(len(gallery)))  # a permutation of the candidates
    assert order[0, :4].tolist() == [1, 2, 3, 4] and order[0, 4] == 0
    assert np.all(np.diff(dist[0]) >= 0)
    again, _ = k_reciprocal_rerank(query, gallery, before, k1=4, k2=1, lambda_value=0.3)
    np.testing.assert_array_equal(order, again)
    lam_one, _ = k_reciprocal_rerank(query, gallery, before, k1=4, k2=1, lambda_value=1.0)
    np.testing.assert_array_equal(lam_one, before)  # lambda = 1: the original distance alone


def test_multiscale_features(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    images = ImageSet.from_path(photo_set[0])
    single = create_extractor("efficientnet-lite0")
    multi = create_extractor("efficientnet-lite0", multiscale=True, pool="gem")
    assert multi.key != single.key and multi.module.scales == (1.0, 2**-0.5, 0.5)
    opts = ExtractOptions(use_cache=False, progress=False, runtime="torch")
    a, b = embed(single, images, opts).features, embed(multi, images, opts).features
    cos = np.sum(a * b, axis=1)
    assert np.all(cos > 0.6) and np.all(cos < 0.9999)
    onnx = embed(
        multi, images, ExtractOptions(use_cache=False, progress=False, runtime="onnx", cache_dir=tmp_path)
    )
    np.testing.assert_allclose(onnx.features, b, atol=1e-4)


def test_refinement_in_the_pipeline(photo_set: tuple[Path, Path]) -> None:
    opts = ExtractOptions(progress=False)
    plain = search(*photo_set, model="pixels", k=5, evaluate=True, options=opts)
    refined = search(
        *photo_set,
        model="pixels",
        k=5,
        evaluate=True,
        options=opts,
        refinement=Refinement(whiten=True, whiten_dim=8, dba=2, qe=2, rerank="k-reciprocal", rerank_top=10),
    )
    assert set(refined.refinement) == {"whiten", "dba", "qe", "rerank"}
    assert refined.summary()["refinement"]["rerank"]["top"] == 10 and plain.refinement == {}
    assert refined.metric == "k-reciprocal distance" and np.all(np.diff(refined.scores, axis=1) >= 0)
    first = refined.metrics.first_correct_rank
    for q, row in zip(refined.query_names, refined.indices, strict=True):  # search and evaluation agree
        top = refined.gallery_names[row[0]].split("/")[0]
        assert (first[q] == 1) == (top == q.split("/")[0])
    with pytest.raises(Exception, match="unknown re-ranking"):
        Refinement(rerank="magic")
