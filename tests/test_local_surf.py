"""Our SURF: integral image, box filters, detection, orientation and descriptors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from lookalike.errors import InputError
from lookalike.local import SurfOptions, create_detector, surf, surf_describe, surf_detect
from lookalike.local.integral import box_sums, haar_xy, hessian_layer, integral_image
from lookalike.local.surf import filter_sizes
from lookalike.samples import sample_photo


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return np.asarray(sample_photo("astronaut").convert("L"))


def test_integral_image_and_box_sums_match_direct_sums() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(37, 53), dtype=np.uint8)
    ii = integral_image(img)
    assert ii.shape == (38, 54)
    ref = img.astype(np.float64) / 255.0
    for y, x in rng.integers(0, [38, 54], size=(50, 2)):
        assert ii[y, x] == pytest.approx(ref[:y, :x].sum(), abs=1e-9)
    y0, x0 = rng.integers(-5, 40, size=(2, 100))
    y1, x1 = y0 + rng.integers(0, 20, 100), x0 + rng.integers(0, 20, 100)
    got = box_sums(ii, y0, x0, y1, x1)
    want = [
        ref[max(a, 0) : max(c, 0), max(b, 0) : max(d, 0)].sum()
        for a, b, c, d in zip(y0, x0, y1, x1, strict=True)
    ]
    np.testing.assert_allclose(got, want, atol=1e-9)


def _box_kernels(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bay et al.'s box filters drawn as explicit size x size kernels (Dxx, Dyy, Dxy)."""
    lobe = size // 3
    dyy = np.zeros((size, size))
    c0 = (size - (2 * lobe - 1)) // 2
    for k, w in enumerate((1, -2, 1)):
        dyy[k * lobe : (k + 1) * lobe, c0 : c0 + 2 * lobe - 1] = w
    dxy = np.zeros((size, size))
    b = size // 2
    tl, br = slice(b - lobe, b), slice(b + 1, b + lobe + 1)
    dxy[tl, tl], dxy[br, br], dxy[tl, br], dxy[br, tl] = 1, 1, -1, -1
    return dyy.T.copy(), dyy, dxy


@pytest.mark.parametrize("size", [9, 15, 27])
def test_hessian_layer_matches_explicit_box_filters(size: int) -> None:
    rng = np.random.default_rng(size)
    img = rng.integers(0, 256, size=(60, 70), dtype=np.uint8)
    step = 2
    det, sign = hessian_layer(integral_image(img), size, step)
    assert det.shape == ((60 - 1) // step + 1, (70 - 1) // step + 1)
    kxx, kyy, kxy = _box_kernels(size)
    ref, b = img / 255.0, size // 2
    for r, c in rng.integers(0, det.shape, size=(40, 2)):
        y, x = r * step, c * step
        if y - b < 0 or x - b < 0 or y + b >= 60 or x + b >= 70:
            assert det[r, c] == 0
            continue
        patch = ref[y - b : y + b + 1, x - b : x + b + 1]
        dxx, dyy, dxy = ((patch * k).sum() / size**2 for k in (kxx, kyy, kxy))
        assert det[r, c] == pytest.approx(dxx * dyy - 0.81 * dxy**2, rel=1e-4, abs=1e-9)
        assert sign[r, c] == (1 if dxx + dyy >= 0 else -1)


def test_haar_wavelets_are_exact_box_integrals_at_fractional_positions() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 200, size=(30, 40), dtype=np.uint8)
    ii, ref = integral_image(img), img / 255.0
    # centred on a pixel corner, the halves are whole pixels: x 16..19 | 20..23, y 11..14 | 15..18
    dx, dy = haar_xy(ii, 14.5, 19.5, 8.0)
    assert dx == pytest.approx(ref[11:19, 20:24].sum() - ref[11:19, 16:20].sum())
    assert dy == pytest.approx(ref[15:19, 16:24].sum() - ref[11:15, 16:24].sum())
    # anywhere else the boxes cut pixels: compare with the image blown up 4x (exact for box sums)
    big = np.kron(ref, np.ones((4, 4))) / 16.0
    y, x, size = 12.25, 20.75, 6.5
    ys = lambda a, b: slice(round((a + 0.5) * 4), round((b + 0.5) * 4))  # noqa: E731
    right = big[ys(y - size / 2, y + size / 2), ys(x, x + size / 2)].sum()
    left = big[ys(y - size / 2, y + size / 2), ys(x - size / 2, x)].sum()
    assert haar_xy(ii, y, x, size)[0] == pytest.approx(right - left)
    brighter = integral_image(img + np.uint8(40))
    for y, x in ((1.0, 1.0), (29.0, 39.0), (0.0, 20.0), (15.0, 38.3)):  # boxes cut by the border
        np.testing.assert_allclose(haar_xy(brighter, y, x, 8.0), haar_xy(ii, y, x, 8.0), atol=1e-9)


def test_filter_sizes_follow_the_paper() -> None:
    assert filter_sizes(0, 4) == [9, 15, 21, 27]
    assert filter_sizes(1, 4) == [15, 27, 39, 51]
    assert filter_sizes(2, 4) == [27, 51, 75, 99]


def _blob(sigma: float, centre: tuple[float, float], shape: tuple[int, int] = (200, 220)) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    g = np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * sigma**2))
    return (40 + 180 * g).round().astype(np.uint8)


def test_detector_finds_gaussian_blobs_at_their_centre_and_scale() -> None:
    ratios = []
    for sigma, centre in ((3.0, (101.3, 95.6)), (5.0, (90.7, 110.2)), (8.0, (120.0, 99.5))):
        kp = surf_detect(_blob(sigma, centre))
        best = int(np.argmax(kp.response))
        assert np.hypot(*(kp.xy[best] - centre)) < 0.5
        assert kp.laplacian[best] == -1  # a bright blob
        ratios.append(kp.scale[best] / sigma)
    # SURF reports s = 1.2 L / 9 (Bay et al.); for a Gaussian blob that is a fixed ~0.72 sigma
    assert np.ptp(ratios) < 0.1 * np.mean(ratios)
    assert 0.6 < np.mean(ratios) < 0.85
    dark = surf_detect(255 - _blob(5.0, (90.7, 110.2)))
    assert dark.laplacian[int(np.argmax(dark.response))] == 1


def _angle_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs((a - b + 180.0) % 360.0 - 180.0)


@pytest.mark.parametrize("degrees", [90, 30])
def test_keypoint_orientations_turn_with_the_image(astronaut: np.ndarray, degrees: float) -> None:
    img = astronaut[100:400, 100:400]
    h, w = img.shape
    M = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), degrees, 1.0)
    turned = cv2.warpAffine(img, M, (w, h), flags=cv2.INTER_LINEAR)
    opts = SurfOptions(max_keypoints=300)
    a, b = surf_detect(img, opts), surf_detect(turned, opts)
    mapped = a.xy @ M[:, :2].T + M[:, 2]
    dist = np.linalg.norm(mapped[:, None] - b.xy[None], axis=2)
    j = dist.argmin(axis=1)
    same = (dist[np.arange(len(a)), j] < 1.0) & (np.abs(np.log(b.scale[j] / a.scale)) < 0.2)
    assert same.sum() >= 40
    # a direction (cos t, sin t) maps through the rotation's linear part
    t = np.radians(a.angle[same])
    v = np.stack([np.cos(t), np.sin(t)], axis=1) @ M[:, :2].T
    expected = np.degrees(np.arctan2(v[:, 1], v[:, 0])) % 360
    err = _angle_diff(expected, b.angle[j[same]])
    assert np.median(err) < 6.0
    assert np.mean(err < 20.0) > 0.8


def test_descriptors_do_not_change_with_brightness(astronaut: np.ndarray) -> None:
    kp = surf_detect(astronaut, SurfOptions(max_keypoints=200))
    darker = (astronaut * 0.7 + 30).round().astype(np.uint8)
    a, b = surf_describe(astronaut, kp), surf_describe(darker, kp)
    cos = (a * b).sum(axis=1)
    assert np.median(cos) > 0.995 and cos.min() > 0.95
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert (
        np.median(_angle_diff(surf_detect(darker, SurfOptions(max_keypoints=200)).angle[:50], kp.angle[:50]))
        < 2
    )


def test_options_upright_extended_and_max_keypoints(astronaut: np.ndarray) -> None:
    small = astronaut[::2, ::2].copy()
    kp, desc = surf(small, SurfOptions(upright=True, extended=True, max_keypoints=50))
    assert len(kp) == 50 and desc.shape == (50, 128) and desc.dtype == np.float32
    assert np.all(kp.angle == 0) and np.all(np.diff(kp.response) <= 0)
    kp2, desc2 = surf(small, SurfOptions(threshold=1e-3))
    assert desc2.shape == (len(kp2), 64) and 0 < len(kp2) < len(surf(small)[0])
    assert len(surf(np.zeros((40, 40), dtype=np.uint8))[0]) == 0


@pytest.mark.parametrize(
    "options",
    [{"threshold": -1.0}, {"octaves": 0}, {"layers": 2}, {"step": 3}, {"max_keypoints": 0}],
)
def test_bad_surf_options_are_input_errors(options: dict) -> None:
    with pytest.raises(InputError):
        SurfOptions(**options)
    with pytest.raises(InputError):
        create_detector("surf", **options)


def test_detector_factory_checks_names_options_and_types() -> None:
    with pytest.raises(InputError, match="unknown local-feature method"):
        create_detector("harris")
    with pytest.raises(InputError, match="unknown option\\(s\\) tresh"):
        create_detector("surf", tresh=1.0)
    with pytest.raises(InputError, match="max_keypoints must be a whole number"):
        create_detector("sift", max_keypoints="many")
    assert create_detector("surf", threshold=1, weights=None).threshold == 1.0
    with pytest.raises(InputError, match="grey"):
        surf(np.zeros((10, 10, 3), dtype=np.uint8))
