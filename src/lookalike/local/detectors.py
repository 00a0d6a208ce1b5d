"""One detector interface over our SURF and OpenCV's SIFT, ORB (and AKAZE where the build has it).

``create_detector(name, **options)`` gives a frozen dataclass whose fields are its options, so a
detector can be described, hashed for the cache key and shared between threads as plain data.
``detect_and_describe(grey uint8) -> (Keypoints, descriptors)`` is the one method that matters.
"""

from __future__ import annotations

import hashlib
import json
import logging
import typing
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import cv2
import numpy as np
from PIL import Image

from ..errors import InputError
from ..registry import Registry
from .keypoints import Features, Keypoints
from .surf import SurfOptions, surf

# Bump when a change alters the keypoints or descriptors an unchanged detector gives (drops caches).
LOCAL_FEATURE_VERSION = 1

LOCAL_METHODS = ("surf", "sift", "orb")
DEFAULT_MAX_KEYPOINTS = 1000
SELECTIONS = ("strongest", "octaves", "grid")
GRID_CELLS = 4  # "grid" selection: a GRID_CELLS x GRID_CELLS grid over the image
DEFAULT_MAX_SIDE = 1024
ORB_ALL = 100_000  # ORB wants a number: "all" keypoints
MIN_SIDE = 8  # smaller images have no keypoints (OpenCV's pyramids fail on them)

log = logging.getLogger("lookalike")


@dataclass(frozen=True)
class Detector(ABC):
    """Keypoints and descriptors of a grey image; options are the dataclass fields.

    ``max_keypoints`` (None: all) are kept by ``selection``: the ``strongest``; or spread, taking the
    strongest of each scale octave (``octaves``) or of each cell of a 4 x 4 grid (``grid``) in
    turn, so a small copy, which only shares the coarse or local structure of a big image, still
    finds its points. ``max_side`` shrinks bigger images before detection (None: never), which
    bounds the time per image; ``min_side`` (0: never) enlarges smaller images (bicubic) until
    their shorter side has that many pixels, which finds more keypoints on small, blurred copies.
    ``binary`` detectors match by Hamming distance.
    """

    name: ClassVar[str] = ""
    binary: ClassVar[bool] = False
    max_keypoints: int | None = DEFAULT_MAX_KEYPOINTS
    max_side: int | None = DEFAULT_MAX_SIDE
    selection: str = "strongest"
    min_side: int = 0

    def __post_init__(self) -> None:
        if self.max_keypoints is not None and self.max_keypoints < 1:
            raise InputError(
                f"{self.name}: max_keypoints must be at least 1 (or None: all), got {self.max_keypoints}"
            )
        if self.max_side is not None and self.max_side < 16:
            raise InputError(f"{self.name}: max_side must be at least 16 (or None), got {self.max_side}")
        if self.min_side < 0 or (self.min_side and self.max_side is not None and self.min_side > self.max_side):
            raise InputError(f"{self.name}: min_side must be 0 (never) or at most max_side, got {self.min_side}")
        if self.selection not in SELECTIONS:
            raise InputError(f"{self.name}: selection must be one of {', '.join(SELECTIONS)}, got {self.selection!r}")

    @property
    def detect_limit(self) -> int:
        """How many keypoints the detector itself keeps (0: all): the budget when it keeps the
        strongest, else all of them, for :func:`select_keypoints` to choose from."""
        return (self.max_keypoints or 0) if self.selection == "strongest" else 0

    @abstractmethod
    def detect_and_describe(self, gray: np.ndarray) -> tuple[Keypoints, np.ndarray]:
        """Keypoints of a 2-d uint8 image and one descriptor row per keypoint."""

    def describe(self) -> dict[str, Any]:
        """Everything that determines the features: method, options, versions."""
        options = asdict(self)
        for added, default in (("selection", "strongest"), ("min_side", 0)):
            if options[added] == default:  # options added later leave old cache keys as they were
                del options[added]
        out: dict[str, Any] = {"name": self.name, "options": options, "version": LOCAL_FEATURE_VERSION}
        if self.name != "surf":
            out["opencv"] = cv2.__version__
        return out

    @property
    def key(self) -> str:
        """A short stable hash of :meth:`describe`, naming this detector's cache folder."""
        text = json.dumps(self.describe(), sort_keys=True)
        return f"{self.name}-{hashlib.sha1(text.encode()).hexdigest()[:12]}"

    def prepare(self, img: Image.Image) -> np.ndarray:
        """An RGB image as the uint8 grey array that is detected on (shrunk to ``max_side``, or
        enlarged to ``min_side``)."""
        grey = img.convert("L")
        if self.max_side is not None and max(grey.size) > self.max_side:
            ratio = self.max_side / max(grey.size)
            size = (max(1, round(grey.size[0] * ratio)), max(1, round(grey.size[1] * ratio)))
            grey = grey.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
        elif self.min_side and min(grey.size) < self.min_side:
            ratio = self.min_side / min(grey.size)
            if self.max_side is not None:
                ratio = min(ratio, self.max_side / max(grey.size))
            size = (max(1, round(grey.size[0] * ratio)), max(1, round(grey.size[1] * ratio)))
            grey = grey.resize(size, Image.Resampling.BICUBIC)
        return np.asarray(grey, dtype=np.uint8)

    def features(self, img: Image.Image) -> Features:
        """Keypoints and descriptors of an RGB image, in the coordinates of :meth:`prepare`'s array."""
        gray = self.prepare(img)
        kp, desc = self.detect_and_describe(gray)
        return Features(kp, desc, (gray.shape[1], gray.shape[0]))

    def _select(self, kp: Keypoints, desc: np.ndarray, shape: tuple[int, ...]) -> tuple[Keypoints, np.ndarray]:
        return select_keypoints(kp, desc, self.max_keypoints or 0, self.selection, (shape[1], shape[0]))


def _check_gray(gray: np.ndarray, name: str) -> np.ndarray:
    g = np.asarray(gray)
    if g.ndim != 2 or g.dtype != np.uint8:
        raise InputError(f"{name}: needs a 2-d uint8 grey image, got {g.dtype} array of shape {g.shape}")
    return np.ascontiguousarray(g)


@dataclass(frozen=True)
class SurfDetector(Detector):
    """Our SURF (see :mod:`lookalike.local.surf`); ``threshold`` is on 0..1 intensities."""

    name: ClassVar[str] = "surf"
    threshold: float = 1e-4
    octaves: int = 4
    layers: int = 4
    step: int = 1
    upright: bool = False
    extended: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.surf_options  # noqa: B018 - validates the SURF options now, not at the first image

    @property
    def surf_options(self) -> SurfOptions:
        return SurfOptions(
            threshold=self.threshold,
            octaves=self.octaves,
            layers=self.layers,
            step=self.step,
            upright=self.upright,
            extended=self.extended,
            max_keypoints=self.detect_limit or None,
        )

    def detect_and_describe(self, gray: np.ndarray) -> tuple[Keypoints, np.ndarray]:
        gray = _check_gray(gray, self.name)
        kp, desc = surf(gray, self.surf_options)  # already the strongest, in SURF's own order
        return (kp, desc) if self.selection == "strongest" else self._select(kp, desc, gray.shape)


def _from_cv(
    kps: typing.Sequence[cv2.KeyPoint], desc: np.ndarray | None, dim: int, dtype: type
) -> tuple[Keypoints, np.ndarray]:
    """OpenCV keypoints as :class:`Keypoints` (scale = size / 2) and descriptors (never None)."""
    if not kps or desc is None:
        return Keypoints.empty(), np.zeros((0, dim), dtype=dtype)
    xy = np.array([k.pt for k in kps], dtype=np.float32)
    size = np.array([k.size for k in kps], dtype=np.float32)
    angle = np.array([k.angle for k in kps], dtype=np.float32)
    response = np.array([k.response for k in kps], dtype=np.float32)
    angle = np.where(angle < 0, 0.0, angle % 360.0)
    return Keypoints(xy, size / 2.0, angle, response, np.zeros(len(kps), dtype=np.int8)), desc


@dataclass(frozen=True)
class SiftDetector(Detector):
    """OpenCV SIFT (Lowe 2004); keypoint scale is the Gaussian sigma (OpenCV size / 2)."""

    name: ClassVar[str] = "sift"
    contrast_threshold: float = 0.04
    edge_threshold: float = 10.0
    sigma: float = 1.6
    layers: int = 3

    def detect_and_describe(self, gray: np.ndarray) -> tuple[Keypoints, np.ndarray]:
        sift = cv2.SIFT_create(
            nfeatures=self.detect_limit,
            nOctaveLayers=self.layers,
            contrastThreshold=self.contrast_threshold,
            edgeThreshold=self.edge_threshold,
            sigma=self.sigma,
        )
        gray = _check_gray(gray, self.name)
        return self._select(*_run_opencv(sift, gray, 128, np.float32), gray.shape)


@dataclass(frozen=True)
class OrbDetector(Detector):
    """OpenCV ORB (Rublee et al. 2011): FAST corners, rotated BRIEF; binary 32-byte descriptors.

    Keypoint scale is half the patch size at its pyramid level.
    """

    name: ClassVar[str] = "orb"
    binary: ClassVar[bool] = True
    scale_factor: float = 1.2
    levels: int = 8
    edge_threshold: int = 31
    patch_size: int = 31
    fast_threshold: int = 20

    def detect_and_describe(self, gray: np.ndarray) -> tuple[Keypoints, np.ndarray]:
        orb = cv2.ORB_create(
            nfeatures=self.detect_limit or ORB_ALL,
            scaleFactor=self.scale_factor,
            nlevels=self.levels,
            edgeThreshold=self.edge_threshold,
            patchSize=self.patch_size,
            fastThreshold=self.fast_threshold,
        )
        gray = _check_gray(gray, self.name)
        return self._select(*_run_opencv(orb, gray, 32, np.uint8), gray.shape)


@dataclass(frozen=True)
class AkazeDetector(Detector):
    """OpenCV AKAZE (Alcantarilla et al. 2013): nonlinear scale space; binary MLDB descriptors."""

    name: ClassVar[str] = "akaze"
    binary: ClassVar[bool] = True
    threshold: float = 0.001

    def detect_and_describe(self, gray: np.ndarray) -> tuple[Keypoints, np.ndarray]:
        akaze = cv2.AKAZE_create(threshold=self.threshold)  # type: ignore[attr-defined]
        gray = _check_gray(gray, self.name)
        return self._select(*_run_opencv(akaze, gray, 61, np.uint8), gray.shape)


def _run_opencv(algorithm: cv2.Feature2D, gray: np.ndarray, dim: int, dtype: type) -> tuple[Keypoints, np.ndarray]:
    """Detect and describe with an OpenCV Feature2D; an image too small for it has no keypoints."""
    if min(gray.shape) < MIN_SIDE:
        return _from_cv((), None, dim, dtype)
    try:
        kps, desc = algorithm.detectAndCompute(gray, None)
    except cv2.error as exc:  # one odd image must not stop a search; it simply matches nothing
        log.warning("OpenCV could not process a %dx%d image: %s", gray.shape[1], gray.shape[0], exc)
        return _from_cv((), None, dim, dtype)
    return _from_cv(kps, desc, dim, dtype)


def select_keypoints(
    kp: Keypoints, desc: np.ndarray, n: int, selection: str = "strongest", size: tuple[int, int] = (0, 0)
) -> tuple[Keypoints, np.ndarray]:
    """At most ``n`` keypoints (0: all), in a stable order (ties by position).

    ``strongest``: by response. ``octaves``: the strongest of every scale octave, then the second
    strongest of each, and so on, so every scale keeps a share (an octave with few keypoints
    leaves its share to the others). ``grid``: the same over the cells of a 4 x 4 grid over an
    image of ``size`` (w, h)."""
    strongest = np.lexsort((kp.xy[:, 0], kp.xy[:, 1], -kp.response))
    if selection == "strongest" or len(kp) <= n or n == 0:
        order = strongest[: n or None]
        return kp.subset(order), desc[order]
    if selection == "octaves":
        group = np.floor(np.log2(np.maximum(kp.scale, 1e-3))).astype(np.int64)
    else:
        w, h = max(size[0], 1), max(size[1], 1)
        gx = np.clip((kp.xy[:, 0] * GRID_CELLS // w).astype(np.int64), 0, GRID_CELLS - 1)
        gy = np.clip((kp.xy[:, 1] * GRID_CELLS // h).astype(np.int64), 0, GRID_CELLS - 1)
        group = gy * GRID_CELLS + gx
    # rank of each keypoint among the keypoints of its group, strongest first
    grouped = strongest[np.argsort(group[strongest], kind="stable")]
    starts = np.searchsorted(group[grouped], group[grouped], side="left")
    rank = np.empty(len(kp), dtype=np.int64)
    rank[grouped] = np.arange(len(kp)) - starts
    position = np.empty(len(kp), dtype=np.int64)
    position[strongest] = np.arange(len(kp))
    order = np.lexsort((position, rank))[:n]
    return kp.subset(order), desc[order]


DETECTORS: Registry[Detector] = Registry("local-feature method")
DETECTORS.register("surf", SurfDetector)
DETECTORS.register("sift", SiftDetector)
DETECTORS.register("orb", OrbDetector)
if hasattr(cv2, "AKAZE_create"):
    DETECTORS.register("akaze", AkazeDetector)


def available_methods() -> tuple[str, ...]:
    """The local-feature methods this installation offers: surf, sift, orb (+ akaze when OpenCV has it)."""
    return DETECTORS.names()


def create_detector(name: str, **options: Any) -> Detector:
    """The detector called ``name`` with ``options`` (its dataclass fields; None means default)."""
    return DETECTORS.create(name, **options)
