"""The crop-copies set and the deep verified short list: pre-filter, feature memory, fusion."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike import ExtractOptions, ImageSet
from lookalike.errors import InputError
from lookalike.local import matching
from lookalike.rerank import RERANKERS, RerankInputs, SpatialVerification, fuse
from lookalike.samples import CROP_MANIFEST, crop_copy, make_crop_copy_set, sample_photo

QUIET = ExtractOptions(progress=False, use_cache=False, num_workers=0)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_crop_copy_set_is_deterministic_and_follows_the_spec(tmp_path: Path) -> None:
    photos = ("astronaut", "coins")
    q_dir, g_dir = make_crop_copy_set(tmp_path / "a", photos=photos, query_copies=3, seed=3, distractors=4)
    make_crop_copy_set(tmp_path / "b", photos=photos, query_copies=3, seed=3, distractors=4)
    make_crop_copy_set(tmp_path / "c", photos=photos, query_copies=3, seed=4, distractors=4)
    a, b, c = (_files(tmp_path / x) for x in "abc")
    assert a == b and len(a) == 6 + 4 + 4 + 1  # queries, gallery (original + copy), distractors, manifest
    assert all(a[name] != c[name] for name in a if name.startswith("query/"))
    assert q_dir == tmp_path / "a" / "query" and ImageSet.from_path(g_dir).labels.count("distractors") == 4
    manifest = json.loads((tmp_path / "a" / CROP_MANIFEST).read_text())
    assert sorted(manifest) == sorted(n for n in a if n.startswith("query/"))
    reference = Image.new("RGB", (64, 64), (90, 120, 30))
    reference.save(tmp_path / "q15.jpg", quality=15)
    with Image.open(tmp_path / "q15.jpg") as ref:
        q15 = ref.quantization
    for rel, p in manifest.items():
        assert 0.20 <= p["area"] <= 0.35 and abs(p["angle"]) <= 30 and p["scale"] == 0.35
        cw, ch = p["crop_size"]
        assert p["area"] == pytest.approx(cw * ch / (p["photo_size"][0] * p["photo_size"][1]))
        with Image.open(tmp_path / "a" / rel) as img:
            assert img.size == (round(cw * 0.35), round(ch * 0.35)) and img.quantization == q15
            query = np.asarray(img.convert("L"), dtype=np.float64)
        # the copy shows what the manifest says: the photo turned about the centre, cropped, shrunk
        cx, cy = p["centre"]
        turned = sample_photo(p["photo"]).rotate(p["angle"], Image.Resampling.BICUBIC, center=(cx, cy))
        x0, y0 = round(cx - cw / 2), round(cy - ch / 2)
        expect = turned.crop((x0, y0, x0 + cw, y0 + ch)).resize(img.size, Image.Resampling.LANCZOS)
        corr = np.corrcoef(query.ravel(), np.asarray(expect.convert("L"), dtype=np.float64).ravel())[0, 1]
        assert corr > 0.8, (rel, corr)


def test_crop_copies_cover_the_whole_range_of_edits() -> None:
    rng = np.random.default_rng(0)
    img = sample_photo("chelsea")
    params = [crop_copy(img, rng)[1] for _ in range(60)]
    areas, angles = np.array([p["area"] for p in params]), np.array([p["angle"] for p in params])
    assert areas.min() >= 0.2 and areas.max() <= 0.35 and areas.max() - areas.min() > 0.1
    assert np.abs(angles).max() <= 30 and angles.min() < -20 and angles.max() > 20
    assert min(p["brightness"] for p in params) < 0.7 and max(p["saturation"] for p in params) > 1.4
    with pytest.raises(InputError):
        crop_copy(img, rng, area=(0.5, 0.2))


# ---------------------------------------------------------------- deep verification


@pytest.fixture(scope="module")
def crop_gallery(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A turned crop of the astronaut (query) and a gallery: the astronaut among 7 other photos."""
    root = tmp_path_factory.mktemp("crop-gallery")
    (root / "query" / "astronaut").mkdir(parents=True)
    crop, _ = crop_copy(sample_photo("astronaut"), np.random.default_rng(5), area=(0.3, 0.3), scale=0.5)
    crop.save(root / "query" / "astronaut" / "crop.jpg", quality=40)
    for name in ("astronaut", "coffee", "chelsea", "rocket", "camera", "brick", "clock", "moon"):
        (root / "gallery" / name).mkdir(parents=True)
        sample_photo(name).save(root / "gallery" / name / f"{name}.jpg", quality=85)
    return root / "query", root / "gallery"


@pytest.fixture(scope="module")
def cached(tmp_path_factory: pytest.TempPathFactory) -> ExtractOptions:
    """Options with a local-feature cache shared by this module's tests (each image detected once)."""
    return ExtractOptions(progress=False, cache_dir=tmp_path_factory.mktemp("features"), num_workers=0)


def _inputs(
    q_set: ImageSet, g_set: ImageSet, top: int, options: ExtractOptions = QUIET
) -> tuple[RerankInputs, np.ndarray]:
    """Unit vectors whose similarity to the query puts the true copy (the astronaut) last and the
    other photos before it in gallery order: a global score that misses the crop entirely."""
    true = g_set.labels.index("astronaut")
    sims = np.linspace(0.9, 0.2, len(g_set))
    sims = np.insert(np.delete(sims, -1), true, 0.1)[: len(g_set)]
    gallery = np.stack([sims, np.sqrt(1 - sims**2)], axis=1)
    queries = np.array([[1.0, 0.0]])
    order = np.argsort(-(queries @ gallery.T), axis=1, kind="stable")
    return RerankInputs(queries, gallery, q_set, g_set, options, top), order


def test_deep_verification_puts_a_small_turned_crop_first(
    crop_gallery: tuple[Path, Path], cached: ExtractOptions
) -> None:
    q_set, g_set = ImageSet.from_path(crop_gallery[0]), ImageSet.from_path(crop_gallery[1])
    true = g_set.labels.index("astronaut")
    inputs, order = _inputs(q_set, g_set, len(g_set), cached)
    global_rank = int(np.flatnonzero(order[0] == true)[0])
    assert global_rank == len(g_set) - 1  # the global score alone ranks it last
    shallow = RERANKERS.create("sift", replace(inputs, top=global_rank))
    deep = RERANKERS.create("sift", inputs)
    assert isinstance(deep, SpatialVerification)
    s_idx, _ = shallow.rerank(np.arange(1), order)
    assert s_idx[0, 0] != true  # a list that stops before it cannot promote it
    d_idx, d_scores = deep.rerank(np.arange(1), order)
    assert d_idx[0, 0] == true and sorted(d_idx[0].tolist()) == sorted(order[0].tolist())
    assert d_scores[0, 0] >= 1 + deep.min_inliers  # verified, far above the unverified (below 1)
    assert np.all(d_scores[0, 1:] <= 1.0) and np.all(np.diff(d_scores[0]) <= 0)
    rest = [j for j in order[0] if j != true]
    assert d_idx[0, 1:].tolist() == rest  # the unverified keep their global order


def test_pre_filter_skips_the_fit_on_unrelated_pairs(
    crop_gallery: tuple[Path, Path], cached: ExtractOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    q_set, g_set = ImageSet.from_path(crop_gallery[0]), ImageSet.from_path(crop_gallery[1])
    inputs, order = _inputs(q_set, g_set, len(g_set), cached)
    calls: list[int] = []
    real = matching.find_homography

    def counted(src: np.ndarray, dst: np.ndarray, options: matching.MatchOptions | None = None) -> tuple:
        calls.append(len(src))
        return real(src, dst, options)

    monkeypatch.setattr(matching, "find_homography", counted)
    # a loose ratio test, so unrelated pairs keep a few chance matches (3 to 17 here)
    loose = {"ratio": 0.85, "min_inliers": 20, "votes": 0}  # every pair matched: only the match count filters
    filtered = RERANKERS.create("sift", inputs, min_matches=20, **loose)
    inliers = filtered.verify(np.arange(1), order)
    stats = filtered.stats
    assert stats.pairs == len(g_set) and stats.fitted == len(calls) and stats.prefiltered == len(g_set) - len(calls)
    assert stats.prefiltered >= 4 and min(calls) >= 20  # only pairs with enough matches are fitted
    true_column = int(np.flatnonzero(order[0] == g_set.labels.index("astronaut"))[0])
    assert inliers[0, true_column] >= 20
    calls.clear()
    unfiltered = RERANKERS.create("sift", inputs, min_matches=4, **loose)
    again = unfiltered.verify(np.arange(1), order)
    assert len(calls) > stats.fitted and unfiltered.stats.prefiltered < stats.prefiltered
    # lossless: a pair with fewer matches than min_inliers cannot reach min_inliers inliers anyway
    np.testing.assert_array_equal(np.where(again >= 20, again, 0), np.where(inliers >= 20, inliers, 0))


def test_features_are_computed_once_per_image(crop_gallery: tuple[Path, Path], tmp_path: Path) -> None:
    q_dir, g_dir = crop_gallery
    g_set = ImageSet.from_path(g_dir)
    queries = ImageSet([q_dir / "astronaut" / "crop.jpg", g_set.paths[-1]], q_dir.parent)
    cached = ExtractOptions(progress=False, cache_dir=tmp_path / "cache", num_workers=0)
    inputs = RerankInputs(np.zeros((2, 1)), np.zeros((len(g_set), 1)), queries, g_set, cached, 4)
    sv = RERANKERS.create("sift", inputs)
    sv.rerank(np.array([0]), np.array([[0, 1, 2, 3]]))
    assert (sv.stats.extracted, sv.stats.from_cache) == (5, 0)  # 1 query + 4 gallery images
    sv.rerank(np.array([1]), np.array([[2, 3, 4, 5]]))  # another query, two gallery images seen already
    assert (sv.stats.extracted, sv.stats.from_cache) == (5 + 1 + 2, 0)
    first = sv.verify(np.array([0, 1]), np.array([[0, 1, 2, 3], [2, 3, 4, 5]]))
    assert sv.stats.extracted == 8  # nothing new: every image is in memory
    fresh = RERANKERS.create("sift", inputs)  # a new search: the disk cache answers
    again = fresh.verify(np.array([0, 1]), np.array([[0, 1, 2, 3], [2, 3, 4, 5]]))
    assert (fresh.stats.extracted, fresh.stats.from_cache) == (0, 8)
    np.testing.assert_array_equal(first, again)


def test_fusions_order_verified_pairs_as_documented() -> None:
    sims = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]])
    inliers = np.array([[3, 0, 40, 12, 90]])  # the last is beyond the verified depth
    gated = fuse(sims, inliers, 4, fusion="gated", min_inliers=10)
    assert np.argsort(-gated[0], kind="stable").tolist() == [2, 3, 0, 1, 4]
    weighted = fuse(sims, inliers, 4, fusion="weighted", min_inliers=10, weight=0.5)
    np.testing.assert_allclose(weighted[0], [0.9, 0.8, 0.7 + 0.5 * 40 / 60, 0.6 + 0.5 * 12 / 32, 0.5])
    rank = fuse(sims, inliers, 4, fusion="rank", min_inliers=10)
    np.testing.assert_allclose(rank[0], [1.0, 0.8, 40.6, 12.4, 0.2])
    with pytest.raises(InputError, match="fusion"):
        fuse(sims, inliers, 4, fusion="max")


def test_spatial_options_are_registry_options_checked_early(crop_gallery: tuple[Path, Path]) -> None:
    q_set, g_set = ImageSet.from_path(crop_gallery[0]), ImageSet.from_path(crop_gallery[1])
    inputs = RerankInputs(np.zeros((1, 1)), np.zeros((len(g_set), 1)), q_set, g_set, QUIET, 5)
    options = RERANKERS.get("surf").options()
    assert {"max_keypoints", "selection", "ratio", "mutual", "estimator", "min_inliers", "fusion"} <= set(options)
    sv = RERANKERS.create("sift", inputs, max_keypoints="2000", mutual="true", ratio="0.8")
    assert sv.detector.max_keypoints == 2000 and sv.match_options.mutual and sv.match_options.ratio == 0.8
    for bad in ({"fusion": "max"}, {"selection": "random"}, {"estimator": "lmeds"}, {"ratio": 1.5},
                {"min_inliers": -1}, {"max_keypoints": -3}):
        with pytest.raises(InputError):
            RERANKERS.create("sift", inputs, **bad)


def test_descriptor_votes_point_at_the_image_that_shares_descriptors() -> None:
    from lookalike.local import Features, Keypoints
    from lookalike.local.shortlist import DescriptorVotes

    rng = np.random.default_rng(4)

    def image(desc: np.ndarray) -> Features:
        n = len(desc)
        kp = Keypoints(rng.uniform(0, 99, (n, 2)), np.ones(n), np.zeros(n), np.ones(n), np.zeros(n))
        return Features(kp, desc.astype(np.float32), (100, 100))

    for per_image in (40, 500):  # exact search below 20,000 descriptors, an inverted file above
        gallery = {j: image(rng.normal(size=(per_image, 32))) for j in range(50)}
        gallery[50] = None  # unreadable
        votes = DescriptorVotes(gallery)
        assert type(votes.index).__name__ == ("IndexFlatL2" if per_image == 40 else "IndexIVFFlat")
        copy = gallery[7].descriptors[:30] + 0.05 * rng.normal(size=(30, 32)).astype(np.float32)
        counts = votes.counts([image(copy), None], np.array([[3, 7, 50, -1], [7, 3, 1, 2]]))
        assert counts[0, 1] >= 25 and counts[0, 0] <= 10 and counts[0, 2:].tolist() == [0, 0]
        assert counts[1].tolist() == [0, 0, 0, 0]  # a query without features votes for nothing


def test_vote_pre_filter_skips_matching_and_keeps_the_copy(
    crop_gallery: tuple[Path, Path], cached: ExtractOptions
) -> None:
    q_set, g_set = ImageSet.from_path(crop_gallery[0]), ImageSet.from_path(crop_gallery[1])
    inputs, order = _inputs(q_set, g_set, len(g_set), cached)
    from lookalike.local.shortlist import DescriptorVotes

    plain = RERANKERS.create("sift", inputs, votes=0)
    a = plain.verify(np.arange(1), order)
    counts = DescriptorVotes(plain.gallery_features.get(range(len(g_set)))).counts(
        [plain.query_features.get([0])[0]], order
    )[0]
    true_column = int(np.flatnonzero(order[0] == g_set.labels.index("astronaut"))[0])
    assert counts[true_column] == counts.max() > 2 * np.sort(counts)[-2]  # the copy has by far the most votes
    voted = RERANKERS.create("sift", inputs, votes=int(np.sort(counts)[-2]) + 1)
    b = voted.verify(np.arange(1), order)
    assert voted.stats.pairs == plain.stats.pairs == len(g_set) and plain.stats.screened == 0
    assert voted.stats.screened == len(g_set) - 1  # the others are not even matched
    assert b[0, true_column] == a[0, true_column] >= 8
    np.testing.assert_array_equal(plain.rerank(np.arange(1), order)[0], voted.rerank(np.arange(1), order)[0])


def test_early_exit_and_the_vote_index_size_limit(
    crop_gallery: tuple[Path, Path], cached: ExtractOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lookalike.rerank as rerank_module

    q_set, g_set = ImageSet.from_path(crop_gallery[0]), ImageSet.from_path(crop_gallery[1])
    inputs, order = _inputs(q_set, g_set, len(g_set), cached)
    true = g_set.labels.index("astronaut")
    first = np.array([[true, *[j for j in order[0] if j != true]]])  # the copy first: nothing else to verify
    stopping = RERANKERS.create("sift", inputs, early_exit=1, confident=20, votes=0)
    inliers = stopping.verify(np.arange(1), first)
    assert inliers[0, 0] >= 20 and not inliers[0, 1:].any()
    assert stopping.stats.early_exits == 1 and stopping.stats.pairs == 1
    assert stopping.rerank(np.arange(1), first)[0][0, 0] == true
    monkeypatch.setattr(rerank_module, "MAX_VOTE_DESCRIPTORS", 10)  # too many to index: no screening
    unscreened = RERANKERS.create("sift", inputs, votes=1000)
    assert unscreened.verify(np.arange(1), first)[0, 0] == inliers[0, 0] and unscreened.stats.screened == 0
