"""Descriptor matching, the ratio and mutual tests, and homography verification."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lookalike.errors import InputError
from lookalike.local import (
    LOCAL_METHODS,
    Features,
    MatchOptions,
    SiftDetector,
    create_detector,
    match_descriptors,
    verify,
)
from lookalike.local.matching import find_homography, pairwise_distances, plausible_homography
from lookalike.samples import sample_photo


@pytest.fixture(scope="module")
def photo_pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The astronaut (grey) and a copy under a known homography: turned, shrunk, slanted, brighter."""
    img = np.asarray(sample_photo("astronaut").convert("L"))
    h, w = img.shape
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = np.float32([[60, 30], [430, 80], [470, 420], [20, 470]])
    H = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(img, H, (w, h), flags=cv2.INTER_LINEAR)
    warped = np.clip(warped * 1.1 + 10, 0, 255).astype(np.uint8)
    return img, warped, H


@pytest.mark.parametrize("method", LOCAL_METHODS)
def test_matching_a_photo_to_its_warped_copy_recovers_the_homography(photo_pair, method: str) -> None:
    img, warped, H = photo_pair
    detector = create_detector(method)
    a = Features(*detector.detect_and_describe(img), img.shape[::-1])
    b = Features(*detector.detect_and_describe(warped), warped.shape[::-1])
    result = verify(a, b, detector.binary)
    assert result.homography is not None and result.inliers >= 50
    assert result.inliers <= result.good == len(result.matches)
    h, w = img.shape
    corners = np.float32([[0, 0], [w, 0], [w, h], [0, h], [w / 2, h / 2]]).reshape(-1, 1, 2)
    err = np.linalg.norm(
        cv2.perspectiveTransform(corners, result.homography) - cv2.perspectiveTransform(corners, H), axis=2
    )
    assert err.max() < 4.0, err.ravel()


def test_pairwise_distances_are_euclidean_and_hamming() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(7, 16)).astype(np.float32), rng.normal(size=(5, 16)).astype(np.float32)
    want = np.linalg.norm(a[:, None] - b[None], axis=2)
    np.testing.assert_allclose(pairwise_distances(a, b), want, rtol=1e-4, atol=1e-4)
    p, q = rng.integers(0, 256, (6, 32), dtype=np.uint8), rng.integers(0, 256, (4, 32), dtype=np.uint8)
    bits = np.unpackbits(p[:, None] ^ q[None], axis=2).sum(axis=2)
    np.testing.assert_array_equal(pairwise_distances(p, q, binary=True), bits)
    with pytest.raises(InputError):
        pairwise_distances(a, b[:, :8])


def test_ratio_mutual_and_laplacian_sign_tests() -> None:
    rng = np.random.default_rng(1)
    b = rng.normal(size=(50, 64)).astype(np.float32)
    a = b[[3, 7, 11]] + 0.01 * rng.normal(size=(3, 64)).astype(np.float32)
    ambiguous = (b[20] + b[21]) / 2  # equally near two rows: fails the ratio test
    a = np.vstack([a, ambiguous, b[7] + 0.05])  # the last one loses row 7 to a closer query
    pairs = match_descriptors(a, b, ratio=0.8, mutual=False)
    assert [tuple(p) for p in pairs] == [(0, 3), (1, 7), (2, 11), (4, 7)]
    assert [tuple(p) for p in match_descriptors(a, b, ratio=0.8, mutual=True)] == [(0, 3), (1, 7), (2, 11)]
    assert len(match_descriptors(a, b, ratio=1.0)) == 5
    sign_a = np.array([1, -1, 1, 1, 1], dtype=np.int8)
    sign_b = np.ones(50, dtype=np.int8)
    signed = match_descriptors(a, b, ratio=0.8, mutual=True, sign_a=sign_a, sign_b=sign_b)
    assert (1, 7) not in [tuple(p) for p in signed] and (0, 3) in [tuple(p) for p in signed]
    one = match_descriptors(a[:1], b[3:4], ratio=0.8)  # a single candidate passes the ratio test
    assert one.tolist() == [[0, 0]]
    assert match_descriptors(a[:0], b).shape == (0, 2)


def test_homography_needs_four_points_and_rejects_flips() -> None:
    rng = np.random.default_rng(2)
    src = rng.uniform(0, 300, size=(40, 2))
    H, mask = find_homography(src[:3], src[:3])
    assert H is None and not mask.any()
    mirrored = src * [-1, 1] + [300, 0]
    H, mask = find_homography(src, mirrored)
    assert H is None and not mask.any()
    H, mask = find_homography(src, src * 0.5 + 7)
    assert H is not None and mask.all()
    assert plausible_homography(H, src) and not plausible_homography(np.diag([-1.0, 1.0, 1.0]), src)
    assert not plausible_homography(np.diag([1000.0, 1000.0, 1.0]), src)


@pytest.mark.parametrize(
    "options",
    [{"ratio": 0.0}, {"ratio": 1.5}, {"ransac_threshold": 0}, {"ransac_max_iters": 0}, {"max_scale": 1}],
)
def test_bad_match_options_are_input_errors(options: dict) -> None:
    with pytest.raises(InputError):
        MatchOptions(**options)


@pytest.mark.parametrize("method", LOCAL_METHODS)
@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (3, 400), (64, 64)])
def test_tiny_and_flat_images_have_no_keypoints_and_match_nothing(
    method: str, shape: tuple[int, int]
) -> None:
    detector = create_detector(method)
    kp, desc = detector.detect_and_describe(np.full(shape, 90, dtype=np.uint8))
    assert len(kp) == 0 and desc.shape[0] == 0
    empty = Features(kp, desc, shape[::-1])
    assert verify(empty, empty, detector.binary).inliers == 0


def test_keypoint_selection_spreads_the_budget_over_octaves_and_cells() -> None:
    from lookalike.local import Keypoints
    from lookalike.local.detectors import select_keypoints

    rng = np.random.default_rng(3)
    n = 400
    scale = np.where(np.arange(n) < 300, 1.2, 9.0)  # three quarters at fine scale, and the strongest
    response = np.where(scale < 2, 1.0, 0.1) + 0.01 * rng.random(n)
    xy = np.where(np.arange(n)[:, None] < 360, rng.uniform(0, 50, (n, 2)), rng.uniform(50, 100, (n, 2)))
    kp = Keypoints(xy, scale, np.zeros(n), response, np.zeros(n))
    desc = np.arange(n, dtype=np.float32)[:, None]
    strongest, d = select_keypoints(kp, desc, 100, "strongest")
    assert np.all(strongest.scale < 2) and np.all(np.diff(strongest.response) <= 0)
    np.testing.assert_array_equal(d[:, 0], np.argsort(-response, kind="stable")[:100])  # rows follow keypoints
    octaves, _ = select_keypoints(kp, desc, 100, "octaves")
    assert np.sum(octaves.scale > 2) == 50  # the coarse octave gets its share
    grid, _ = select_keypoints(kp, desc, 32, "grid", (100, 100))
    cells = {(int(x // 25), int(y // 25)) for x, y in grid.xy}
    assert len(grid) == 32 and len(cells) >= 6  # not only the crowded corner
    everything, _ = select_keypoints(kp, desc, 0, "octaves")
    assert len(everything) == n


def test_detector_options_all_keypoints_selection_and_small_images(photo_pair) -> None:
    img = photo_pair[0]
    limited = create_detector("sift").detect_and_describe(img)[0]
    everything = SiftDetector(max_keypoints=None).detect_and_describe(img)[0]  # None: all
    spread = create_detector("sift", selection="octaves").detect_and_describe(img)[0]
    assert len(limited) == len(spread) == 1000 < len(everything)
    assert np.median(spread.scale) > np.median(limited.scale)  # coarser points kept
    assert create_detector("sift", min_side=256).prepare(sample_photo("page").resize((60, 30))).shape == (256, 512)
    assert create_detector("sift").key == create_detector("sift", selection="strongest", min_side=0).key
    with pytest.raises(InputError):
        create_detector("sift", selection="random")
    with pytest.raises(InputError):
        create_detector("sift", min_side=4096)


def test_estimators_and_the_match_count_pre_filter(photo_pair) -> None:
    img, warped, _ = photo_pair
    detector = create_detector("sift")
    a = Features(*detector.detect_and_describe(img), img.shape[::-1])
    b = Features(*detector.detect_and_describe(warped), warped.shape[::-1])
    for estimator in ("ransac", "magsac"):
        result = verify(a, b, False, MatchOptions(estimator=estimator, ratio=0.75, mutual=False))
        assert result.homography is not None and result.inliers >= 50
    strict = verify(a, b, False, MatchOptions(min_matches=10_000))
    assert strict.homography is None and strict.inliers == 0 and strict.good > 50  # matched, not fitted
    for bad in ({"estimator": "lmeds"}, {"min_matches": 3}):
        with pytest.raises(InputError):
            MatchOptions(**bad)
