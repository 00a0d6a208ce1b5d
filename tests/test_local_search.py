"""Searching and re-ranking by local features: ranking, skipped files, the descriptor cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from lookalike.errors import ImageError, InputError, NothingToProcessError
from lookalike.extract import ExtractOptions
from lookalike.images import ImageSet
from lookalike.local import LOCAL_METHODS, local_search, rank_by_verification, rerank
from lookalike.samples import sample_photo

PHOTOS = ("astronaut", "coffee", "chelsea", "camera")


def _edit(img: Image.Image, crop: float, angle: float, scale: float, light: float) -> Image.Image:
    w, h = img.size
    dx, dy = round(w * (1 - crop) / 2), round(h * (1 - crop) / 3)
    out = img.crop((dx, dy, w - dx, h - 2 * dy)).rotate(
        angle, Image.Resampling.BILINEAR, fillcolor=(128, 128, 128)
    )
    out = out.resize((round(out.width * scale), round(out.height * scale)), Image.Resampling.BILINEAR)
    return ImageEnhance.Brightness(out).enhance(light)


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(query, gallery) folders: per photo one query and two gallery copies, all edited differently."""
    root = tmp_path_factory.mktemp("local-copies")
    for name in PHOTOS:
        img = sample_photo(name)
        img = img.resize((320, round(320 * img.height / img.width)), Image.Resampling.LANCZOS)
        for folder, file, edit in (
            ("query", "q.jpg", (0.85, 20, 0.9, 1.1)),
            ("gallery", "g0.jpg", (0.75, -10, 1.0, 0.8)),
            ("gallery", "g1.jpg", (0.95, 5, 0.7, 1.2)),
        ):
            (root / folder / name).mkdir(parents=True, exist_ok=True)
            _edit(img, *edit).save(root / folder / name / file, quality=75)
    return root / "query", root / "gallery"


QUIET = ExtractOptions(progress=False, use_cache=False)


@pytest.mark.parametrize("method", LOCAL_METHODS)
def test_local_search_ranks_the_true_copies_first(copies: tuple[Path, Path], method: str) -> None:
    q_set, g_set = ImageSet.from_path(copies[0]), ImageSet.from_path(copies[1])
    res = local_search(q_set, g_set, method, k=3, options=QUIET)
    assert res.indices.shape == (4, 3) and res.query_names == q_set.names and res.gallery_names == g_set.names
    for qi, row in enumerate(res.indices):
        labels = [g_set.labels[j] for j in row[:2]]
        assert labels == [q_set.labels[qi]] * 2, (method, q_set.names[qi], labels, res.scores[qi])
    assert np.all(np.diff(res.scores, axis=1) <= 0)
    assert res.scores[:, 0].min() >= 15 and res.scores[:, 2].max() < 15
    np.testing.assert_array_equal(res.order()[:, :3], res.indices)
    assert res.skipped == [] and res.stats["extracted"] == {"query": 4, "gallery": 8}


def test_rank_by_verification_breaks_ties_by_good_matches_then_position() -> None:
    inliers = np.array([[5, 9, 5, 0, 5]])
    good = np.array([[7, 10, 8, 3, 7]])
    assert rank_by_verification(inliers, good).tolist() == [[1, 2, 0, 4, 3]]


def test_threads_give_the_same_answer_as_one(copies: tuple[Path, Path]) -> None:
    one = local_search(
        copies[0],
        copies[1],
        "orb",
        k=8,
        options=ExtractOptions(progress=False, use_cache=False, num_workers=0),
    )
    two = local_search(
        copies[0],
        copies[1],
        "orb",
        k=8,
        options=ExtractOptions(progress=False, use_cache=False, num_workers=2),
    )
    np.testing.assert_array_equal(one.inliers, two.inliers)
    np.testing.assert_array_equal(one.indices, two.indices)


def test_bad_images_are_skipped_not_fatal(copies: tuple[Path, Path], tmp_path: Path) -> None:
    gallery = ImageSet.from_path(copies[1])
    empty, broken = tmp_path / "empty.jpg", tmp_path / "broken.png"
    empty.write_bytes(b"")
    broken.write_bytes((copies[1] / "coffee" / "g0.jpg").read_bytes()[:300])
    mixed = ImageSet([empty, *gallery.paths, broken], tmp_path.parent)
    res = local_search(copies[0], mixed, "surf", k=2, options=QUIET)
    skipped = {Path(s.path).name: s.reason for s in res.gallery_skipped}
    assert set(skipped) == {"empty.jpg", "broken.png"} and "empty" in skipped["empty.jpg"]
    assert res.gallery_indices.tolist() == list(range(1, len(gallery) + 1))
    assert len(res.gallery_names) == len(gallery) and res.skipped == res.gallery_skipped
    assert res.indices.max() < len(gallery)
    with pytest.raises(ImageError, match="empty"):
        local_search(
            copies[0], mixed, "surf", options=ExtractOptions(progress=False, use_cache=False, strict=True)
        )
    with pytest.raises(NothingToProcessError):
        local_search(ImageSet([empty], tmp_path), mixed, "surf", options=QUIET)


def test_descriptor_cache_is_hit_on_the_second_run(copies: tuple[Path, Path], tmp_path: Path) -> None:
    options = ExtractOptions(progress=False, cache_dir=tmp_path / "cache")
    first = local_search(copies[0], copies[1], "sift", k=3, options=options)
    assert first.stats["from_cache"] == {"query": 0, "gallery": 0}
    files = list((tmp_path / "cache" / "local").rglob("*.npz"))
    assert len(files) == 12 and list((tmp_path / "cache" / "local").glob("sift-*/detector.json"))
    second = local_search(copies[0], copies[1], "sift", k=3, options=options)
    assert second.stats["from_cache"] == {"query": 4, "gallery": 8}
    assert second.stats["extracted"] == {"query": 0, "gallery": 0}
    np.testing.assert_array_equal(first.inliers, second.inliers)
    touched = copies[1] / "camera" / "g0.jpg"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    third = local_search(copies[0], copies[1], "sift", k=3, options=options)
    assert third.stats["extracted"] == {"query": 0, "gallery": 1}
    other = local_search(
        copies[0], copies[1], "sift", k=3, options=options, method_options={"max_keypoints": 500}
    )
    assert other.stats["from_cache"] == {"query": 0, "gallery": 0}


def test_rerank_moves_a_verified_match_up(copies: tuple[Path, Path]) -> None:
    q_set, g_set = ImageSet.from_path(copies[0]), ImageSet.from_path(copies[1])
    qi = q_set.labels.index("chelsea")
    true = [j for j, lab in enumerate(g_set.labels) if lab == "chelsea"]
    others = [j for j, lab in enumerate(g_set.labels) if lab != "chelsea"]
    # a poor global ranking: the two true copies at ranks 3 and 6
    row = [others[0], others[1], others[2], true[0], others[3], others[4], true[1], others[5]]
    indices = np.array([row])
    scores = np.linspace(0.9, 0.2, len(row))[None]
    query = q_set.subset([qi])
    new_idx, new_scores = rerank(query, g_set, indices, scores, "surf", top_n=5, options=QUIET)
    assert new_idx[0, 0] == true[0]
    assert new_idx[0].tolist()[1:5] == others[:4]  # the unverified keep their order
    assert new_idx[0, 6] == true[1]  # beyond the top 5: untouched
    assert np.all(np.diff(new_scores[0]) < 0) and new_scores[0, 0] > 10
    assert sorted(new_idx[0].tolist()) == sorted(row)
    wide_idx, _ = rerank(query, g_set, indices, scores, "surf", top_n=8, options=QUIET)
    assert sorted(wide_idx[0, :2].tolist()) == sorted(true)
    padded = np.array([[others[0], true[1], -1, -1]])  # an index that found fewer than k
    pad_idx, _ = rerank(query, g_set, padded, np.zeros(padded.shape), "surf", top_n=4, options=QUIET)
    assert pad_idx.tolist() == [[true[1], others[0], -1, -1]]


def test_rerank_checks_its_inputs(copies: tuple[Path, Path]) -> None:
    q_set, g_set = ImageSet.from_path(copies[0]), ImageSet.from_path(copies[1])
    indices, scores = np.zeros((4, 3), dtype=int), np.zeros((4, 3))
    with pytest.raises(InputError, match="rows"):
        rerank(q_set.subset([0]), g_set, indices, scores, "surf", 2, QUIET)
    with pytest.raises(InputError, match="shape"):
        rerank(q_set, g_set, indices, scores[:, :2], "surf", 2, QUIET)
    with pytest.raises(InputError, match="gallery indices"):
        rerank(q_set, g_set, indices + 99, scores, "surf", 2, QUIET)
    with pytest.raises(InputError, match="top_n"):
        rerank(q_set, g_set, indices, scores, "surf", 0, QUIET)
    with pytest.raises(InputError, match="unknown local-feature method"):
        rerank(q_set, g_set, indices, scores, "brisk", 2, QUIET)


def test_local_search_rejects_bad_options(copies: tuple[Path, Path]) -> None:
    with pytest.raises(InputError, match="k must be"):
        local_search(copies[0], copies[1], "surf", k=0, options=QUIET)
    with pytest.raises(InputError, match="unknown option"):
        local_search(copies[0], copies[1], "orb", options=QUIET, method_options={"nfeatures": 10})
    with pytest.raises(InputError, match="num_workers"):
        local_search(
            copies[0],
            copies[1],
            "orb",
            options=ExtractOptions(progress=False, use_cache=False, num_workers=-1),
        )


def test_detectors_shrink_big_images_and_key_their_options() -> None:
    from lookalike.local import create_detector

    img = Image.new("RGB", (400, 300), (10, 200, 30))
    assert create_detector("surf", max_side=100).prepare(img).shape == (75, 100)
    assert create_detector("orb", max_side=None).prepare(img).shape == (300, 400)
    keys = {create_detector(m, **o).key for m in LOCAL_METHODS for o in ({}, {"max_keypoints": 50})}
    assert len(keys) == 6 and all(k.split("-")[0] in LOCAL_METHODS for k in keys)
    assert create_detector("sift").describe()["options"]["max_keypoints"] == 1000
