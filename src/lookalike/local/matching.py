"""Descriptor matching (brute force L2 / Hamming, kNN ratio test, mutual check) and RANSAC verification.

Distances come from one matrix product per image pair (binary descriptors as bit vectors), so
brute force is fast enough for a thousand keypoints a side. When both sides carry the sign of
the Laplacian (SURF), only equal signs are compared: two smaller products instead of one.
Verification fits a homography with OpenCV's USAC MAGSAC++ (or classic RANSAC) and counts its
inliers; pairs with fewer good matches than ``min_matches`` skip it (they could not pass anyway).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
from numba import njit

from ..errors import InputError
from .keypoints import Features

MIN_HOMOGRAPHY_MATCHES = 4
ESTIMATORS = {"magsac": cv2.USAC_MAGSAC, "ransac": cv2.RANSAC}


@dataclass(frozen=True)
class MatchOptions:
    """How two images are matched and verified.

    ``ratio``: Lowe's test, keep a match when nearest < ratio x second nearest (1: off);
    ``mutual``: keep only mutual nearest neighbours; ``ransac_threshold``: inlier reprojection
    error in pixels (of the gallery image as detected); ``max_scale``: a homography that scales
    areas by more than this factor (or flips the image) is rejected as degenerate;
    ``estimator``: ``magsac`` (USAC MAGSAC++) or ``ransac`` (OpenCV's classic RANSAC);
    ``min_matches``: the pre-filter, pairs with fewer good matches are not fitted at all (no
    homography, no inliers), which saves the robust fit on unrelated pairs.
    """

    ratio: float = 0.8
    mutual: bool = True
    ransac_threshold: float = 5.0
    ransac_confidence: float = 0.999
    ransac_max_iters: int = 2000
    max_scale: float = 100.0
    estimator: str = "magsac"
    min_matches: int = MIN_HOMOGRAPHY_MATCHES

    def __post_init__(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise InputError(f"estimator must be one of {', '.join(ESTIMATORS)}, got {self.estimator!r}")
        if self.min_matches < MIN_HOMOGRAPHY_MATCHES:
            raise InputError(f"min_matches must be at least {MIN_HOMOGRAPHY_MATCHES}, got {self.min_matches!r}")
        if not 0 < self.ratio <= 1:
            raise InputError(f"ratio must be in (0, 1], got {self.ratio!r}")
        if not self.ransac_threshold > 0:
            raise InputError(f"ransac_threshold must be > 0 pixels, got {self.ransac_threshold!r}")
        if not 0 < self.ransac_confidence < 1:
            raise InputError(f"ransac_confidence must be in (0, 1), got {self.ransac_confidence!r}")
        if self.ransac_max_iters < 1:
            raise InputError(f"ransac_max_iters must be at least 1, got {self.ransac_max_iters!r}")
        if not self.max_scale > 1:
            raise InputError(f"max_scale must be > 1, got {self.max_scale!r}")

    def as_dict(self) -> dict:
        """The options as plain data (for run summaries)."""
        return asdict(self)


@dataclass
class Verification:
    """The outcome of matching one image pair: ``good`` matches (query i, gallery j) after the
    ratio and mutual tests, the homography ``H`` (query -> gallery) and its ``inliers`` mask."""

    matches: np.ndarray
    inlier_mask: np.ndarray
    homography: np.ndarray | None

    @property
    def good(self) -> int:
        return len(self.matches)

    @property
    def inliers(self) -> int:
        return int(self.inlier_mask.sum())


def _bits(desc: np.ndarray) -> np.ndarray:
    return np.unpackbits(np.ascontiguousarray(desc, dtype=np.uint8), axis=1).astype(np.float32)


def pairwise_distances(a: np.ndarray, b: np.ndarray, binary: bool = False) -> np.ndarray:
    """(len(a), len(b)) float32 distances: Euclidean, or Hamming for packed uint8 descriptors."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise InputError(f"descriptor shapes do not match: {a.shape} and {b.shape}")
    if binary:
        a_bits, b_bits = _bits(a), _bits(b)
        dots = a_bits @ b_bits.T
        return a_bits.sum(axis=1)[:, None] + b_bits.sum(axis=1)[None, :] - 2.0 * dots
    a32, b32 = a.astype(np.float32, copy=False), b.astype(np.float32, copy=False)
    sq = (
        np.einsum("ij,ij->i", a32, a32)[:, None]
        + np.einsum("ij,ij->i", b32, b32)[None, :]
        - 2.0 * (a32 @ b32.T)
    )
    return np.sqrt(np.maximum(sq, 0.0))


@njit(cache=True, nogil=True)
def _nearest_two(
    dots: np.ndarray, a_sq: np.ndarray, b_sq: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """From dot products and squared norms: each row's nearest column and the two smallest
    ``|a|^2 + |b|^2 - 2 a.b`` values, and each column's nearest row (first on ties)."""
    n_a, n_b = dots.shape
    nearest = np.zeros(n_a, dtype=np.int64)
    d1 = np.full(n_a, np.inf)
    d2 = np.full(n_a, np.inf)
    col_best = np.full(n_b, np.inf)
    col_arg = np.zeros(n_b, dtype=np.int64)
    for i in range(n_a):
        best, second, arg = np.inf, np.inf, 0
        for j in range(n_b):
            d = max(a_sq[i] + b_sq[j] - 2.0 * dots[i, j], 0.0)
            if d < best:
                second, best, arg = best, d, j
            elif d < second:
                second = d
            if d < col_best[j]:
                col_best[j], col_arg[j] = d, i
        nearest[i], d1[i], d2[i] = arg, best, second
    return nearest, d1, d2, col_arg


def _match_block(
    a: np.ndarray, b: np.ndarray, binary: bool, ratio: float, mutual: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Matches (rows of a, rows of b) after the ratio and mutual tests."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if binary:
        a32, b32 = _bits(a), _bits(b)
    else:
        a32, b32 = a.astype(np.float32, copy=False), b.astype(np.float32, copy=False)
    a_sq = np.einsum("ij,ij->i", a32, a32).astype(np.float64)
    b_sq = np.einsum("ij,ij->i", b32, b32).astype(np.float64)
    nearest, d1, d2, col_arg = _nearest_two(a32 @ b32.T, a_sq, b_sq)
    rows = np.arange(len(a))
    # binary: the values are Hamming distances; otherwise squared Euclidean ones
    keep = (d1 < (ratio if binary else ratio * ratio) * d2) | (ratio >= 1)
    if mutual:
        keep &= col_arg[nearest] == rows
    return rows[keep], nearest[keep]


def match_descriptors(
    a: np.ndarray,
    b: np.ndarray,
    *,
    binary: bool = False,
    ratio: float = 0.8,
    mutual: bool = False,
    sign_a: np.ndarray | None = None,
    sign_b: np.ndarray | None = None,
) -> np.ndarray:
    """Brute-force matches from ``a`` to ``b``: an (m, 2) array of (row in a, row in b).

    Each row of ``a`` is matched to its nearest row of ``b`` (kNN with k = 2) and kept when it
    passes Lowe's ratio test and, with ``mutual``, when it is also that row's nearest. With
    Laplacian signs on both sides (all non-zero), rows of opposite sign are never compared.
    """
    if a.shape[1:] != b.shape[1:]:
        raise InputError(f"descriptor shapes do not match: {a.shape} and {b.shape}")
    signed = sign_a is not None and sign_b is not None and np.all(sign_a != 0) and np.all(sign_b != 0)
    if not signed:
        r, c = _match_block(a, b, binary, ratio, mutual)
        return np.stack([r, c], axis=1)
    out = []
    for s in (-1, 1):
        ia, ib = np.flatnonzero(sign_a == s), np.flatnonzero(sign_b == s)
        r, c = _match_block(a[ia], b[ib], binary, ratio, mutual)
        out.append(np.stack([ia[r], ib[c]], axis=1))
    pairs = np.concatenate(out)
    return pairs[np.argsort(pairs[:, 0], kind="stable")]


def find_homography(
    src: np.ndarray, dst: np.ndarray, options: MatchOptions | None = None
) -> tuple[np.ndarray | None, np.ndarray]:
    """Homography ``src -> dst`` by ``options.estimator`` and the inlier mask; (None, all False) when
    there are fewer than 4 points, no model is found, or it is degenerate (see ``max_scale``)."""
    opts = options or MatchOptions()
    none = np.zeros(len(src), dtype=bool)
    if len(src) < MIN_HOMOGRAPHY_MATCHES:
        return None, none
    try:
        H, mask = cv2.findHomography(
            np.asarray(src, dtype=np.float32).reshape(-1, 1, 2),
            np.asarray(dst, dtype=np.float32).reshape(-1, 1, 2),
            ESTIMATORS[opts.estimator],
            opts.ransac_threshold,
            maxIters=opts.ransac_max_iters,
            confidence=opts.ransac_confidence,
        )
    except cv2.error:
        return None, none
    if H is None or mask is None:
        return None, none
    inliers = mask.ravel().astype(bool)
    if not plausible_homography(H, np.asarray(src)[inliers], opts.max_scale):
        return None, none
    return H, inliers


def plausible_homography(H: np.ndarray, points: np.ndarray, max_scale: float = 100.0) -> bool:
    """False for a homography that, over the bounding box of ``points``, folds the plane (the
    horizon crosses it), flips it, or scales areas by more than ``max_scale`` either way."""
    if not np.all(np.isfinite(H)) or len(points) == 0:
        return False
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
    corners = np.array([[x0, y0, 1.0], [x1, y0, 1.0], [x1, y1, 1.0], [x0, y1, 1.0]])
    w = corners @ H[2]
    if np.any(w <= 0) if H[2, 2] > 0 else np.any(w >= 0):
        return False
    # the Jacobian determinant of a homography at (x, y) is det(H) / w^3
    area_scale = np.linalg.det(H) / w**3
    return bool(np.all(area_scale > 1.0 / max_scale) and np.all(area_scale < max_scale))


def verify(
    query: Features, gallery: Features, binary: bool, options: MatchOptions | None = None
) -> Verification:
    """Match ``query`` to ``gallery`` and verify the matches with a homography (not fitted when
    there are fewer than ``options.min_matches`` good matches)."""
    opts = options or MatchOptions()
    qk, gk = query.keypoints, gallery.keypoints
    pairs = match_descriptors(
        query.descriptors,
        gallery.descriptors,
        binary=binary,
        ratio=opts.ratio,
        mutual=opts.mutual,
        sign_a=qk.laplacian,
        sign_b=gk.laplacian,
    )
    if len(pairs) < opts.min_matches:
        return Verification(pairs, np.zeros(len(pairs), dtype=bool), None)
    H, mask = find_homography(qk.xy[pairs[:, 0]], gk.xy[pairs[:, 1]], opts)
    return Verification(pairs, mask, H)
