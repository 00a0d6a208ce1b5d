"""Integral images and the box-filter responses SURF is built from (Hessian, Haar wavelets).

Any axis-aligned box sum costs four look-ups in an integral image, whatever the box size: this
is what lets SURF grow its filters instead of shrinking the image. The kernels are compiled with
numba; ``box_sums`` and ``hessian_layer`` are also the reference the tests check by direct sums.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ..errors import InputError

# Weight of the Dxy term in det(H) ~ Dxx Dyy - (w Dxy)^2: Bay et al.'s 0.9 corrects the box
# approximation of the Gaussian second derivatives (ratio of their Frobenius norms at 9x9).
DXY_WEIGHT = 0.9


def integral_image(gray: np.ndarray) -> np.ndarray:
    """The (h+1, w+1) float64 table ``ii[y, x] = sum(gray[:y, :x])`` of a 2-d image.

    uint8 images are scaled to 0..1 first, so responses and thresholds do not depend on the
    integer type; a zero first row and column make every box sum the same four look-ups.
    """
    g = np.asarray(gray)
    if g.ndim != 2 or g.size == 0:
        raise InputError(f"integral_image needs a non-empty 2-d grey image, got shape {g.shape}")
    scale = 1.0 / 255.0 if g.dtype == np.uint8 else 1.0
    ii = np.zeros((g.shape[0] + 1, g.shape[1] + 1), dtype=np.float64)
    np.cumsum(g, axis=0, dtype=np.float64, out=ii[1:, 1:])
    np.cumsum(ii[1:, 1:], axis=1, out=ii[1:, 1:])
    if scale != 1.0:
        ii *= scale
    return ii


def box_sums(ii: np.ndarray, y0: np.ndarray, x0: np.ndarray, y1: np.ndarray, x1: np.ndarray) -> np.ndarray:
    """Sums over the half-open boxes ``[y0, y1) x [x0, x1)`` (arrays broadcast), clipped to the image."""
    h, w = ii.shape[0] - 1, ii.shape[1] - 1
    y0, y1 = np.clip(y0, 0, h), np.clip(y1, 0, h)
    x0, x1 = np.clip(x0, 0, w), np.clip(x1, 0, w)
    y1, x1 = np.maximum(y0, y1), np.maximum(x0, x1)
    return ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]


@njit(cache=True, nogil=True, inline="always")
def _box(ii: np.ndarray, y0: int, x0: int, y1: int, x1: int) -> float:
    """Sum over ``[y0, y1) x [x0, x1)``; the box must lie inside the image."""
    return ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]


@njit(cache=True, nogil=True)
def _hessian_layer(
    ii: np.ndarray, size: int, step: int, rows: int, cols: int
) -> tuple[np.ndarray, np.ndarray]:
    h, w = ii.shape[0] - 1, ii.shape[1] - 1
    lobe = size // 3
    b = (size - 1) // 2
    half = lobe // 2
    inv_area = 1.0 / (size * size)
    wxy = DXY_WEIGHT * DXY_WEIGHT
    det = np.zeros((rows, cols), dtype=np.float32)
    sign = np.zeros((rows, cols), dtype=np.int8)
    for r in range(rows):
        y = r * step
        if y - b < 0 or y + b >= h:
            continue
        for c in range(cols):
            x = c * step
            if x - b < 0 or x + b >= w:
                continue
            dxx = _box(ii, y - lobe + 1, x - b, y + lobe, x + b + 1) - 3.0 * _box(
                ii, y - lobe + 1, x - half, y + lobe, x - half + lobe
            )
            dyy = _box(ii, y - b, x - lobe + 1, y + b + 1, x + lobe) - 3.0 * _box(
                ii, y - half, x - lobe + 1, y - half + lobe, x + lobe
            )
            dxy = (
                _box(ii, y - lobe, x - lobe, y, x)
                + _box(ii, y + 1, x + 1, y + lobe + 1, x + lobe + 1)
                - _box(ii, y - lobe, x + 1, y, x + lobe + 1)
                - _box(ii, y + 1, x - lobe, y + lobe + 1, x)
            )
            dxx *= inv_area
            dyy *= inv_area
            dxy *= inv_area
            det[r, c] = dxx * dyy - wxy * dxy * dxy
            sign[r, c] = 1 if dxx + dyy >= 0 else -1
    return det, sign


def hessian_layer(ii: np.ndarray, size: int, step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Approximate det(Hessian) and the sign of the Laplacian for a ``size`` x ``size`` box filter.

    Returns two (rows, cols) arrays sampled every ``step`` pixels (row r is image row r*step).
    ``size`` is 9, 15, 21, ... (a multiple of 3 with an odd lobe); responses are normalised by
    the filter area; where the filter does not fit inside the image both are 0.
    """
    if size < 9 or size % 3 or (size // 3) % 2 == 0:
        raise InputError(f"box filter size must be 9, 15, 21, ... (3 x an odd lobe), got {size}")
    if step < 1:
        raise InputError(f"sampling step must be at least 1, got {step}")
    h, w = ii.shape[0] - 1, ii.shape[1] - 1
    return _hessian_layer(ii, int(size), int(step), (h - 1) // step + 1, (w - 1) // step + 1)


@njit(cache=True, nogil=True, inline="always")
def _ii_at(ii: np.ndarray, y: float, x: float) -> float:
    """The integral image at a fractional position (clipped to the image): bilinear interpolation
    is exact here, because the table is bilinear within each pixel of a piecewise-constant image."""
    h, w = ii.shape[0] - 1, ii.shape[1] - 1
    y = min(max(y, 0.0), float(h))
    x = min(max(x, 0.0), float(w))
    y0, x0 = min(int(y), h - 1), min(int(x), w - 1)
    fy, fx = y - y0, x - x0
    top = (1.0 - fx) * ii[y0, x0] + fx * ii[y0, x0 + 1]
    bottom = (1.0 - fx) * ii[y0 + 1, x0] + fx * ii[y0 + 1, x0 + 1]
    return (1.0 - fy) * top + fy * bottom


@njit(cache=True, nogil=True)
def haar_xy(ii: np.ndarray, y: float, x: float, size: float) -> tuple[float, float]:
    """Haar wavelet responses (right minus left, bottom minus top) of side ``size`` centred at
    (y, x), both in pixels and fractional (pixel centres at integers): a wavelet sampled on a
    rotated grid stays centred where it should be.

    Inside the image these are differences of exact box integrals. Near a border each half is
    averaged over its visible part and scaled back to its full area, so a brightness offset still
    cancels; a half entirely outside gives 0.
    """
    h, w = ii.shape[0] - 1, ii.shape[1] - 1
    half = 0.5 * size
    # integral-image coordinates: pixel i covers [i, i + 1) there
    y0, ym, y1 = y - half + 0.5, y + 0.5, y + half + 0.5
    x0, xm, x1 = x - half + 0.5, x + 0.5, x + half + 0.5
    if y0 >= 0.0 and x0 >= 0.0 and y1 <= h and x1 <= w:
        a00, a01, a02 = _ii_at(ii, y0, x0), _ii_at(ii, y0, xm), _ii_at(ii, y0, x1)
        a10, a12 = _ii_at(ii, ym, x0), _ii_at(ii, ym, x1)
        a20, a21, a22 = _ii_at(ii, y1, x0), _ii_at(ii, y1, xm), _ii_at(ii, y1, x1)
        right = a22 - a02 - a21 + a01
        left = a21 - a01 - a20 + a00
        bottom = a22 - a12 - a20 + a10
        top = a12 - a02 - a10 + a00
        return right - left, bottom - top
    full = half * size
    dx = _half_difference(ii, y0, xm, y1, x1, y0, x0, y1, xm, full)
    dy = _half_difference(ii, ym, x0, y1, x1, y0, x0, ym, x1, full)
    return dx, dy


@njit(cache=True, nogil=True, inline="always")
def _clipped_mean(ii: np.ndarray, y0: float, x0: float, y1: float, x1: float) -> float:
    """Mean over the part of the box inside the image, in integral-image coordinates (nan if none)."""
    h, w = ii.shape[0] - 1, ii.shape[1] - 1
    y0, y1 = min(max(y0, 0.0), float(h)), min(max(y1, 0.0), float(h))
    x0, x1 = min(max(x0, 0.0), float(w)), min(max(x1, 0.0), float(w))
    area = (y1 - y0) * (x1 - x0)
    if area <= 1e-9:
        return np.nan
    total = _ii_at(ii, y1, x1) - _ii_at(ii, y0, x1) - _ii_at(ii, y1, x0) + _ii_at(ii, y0, x0)
    return total / area


@njit(cache=True, nogil=True, inline="always")
def _half_difference(
    ii: np.ndarray,
    ay0: float,
    ax0: float,
    ay1: float,
    ax1: float,
    by0: float,
    bx0: float,
    by1: float,
    bx1: float,
    full: float,
) -> float:
    """(mean of box a - mean of box b) x ``full`` over their visible parts; 0 if either is unseen."""
    a = _clipped_mean(ii, ay0, ax0, ay1, ax1)
    b = _clipped_mean(ii, by0, bx0, by1, bx1)
    if np.isnan(a) or np.isnan(b):
        return 0.0
    return (a - b) * full
