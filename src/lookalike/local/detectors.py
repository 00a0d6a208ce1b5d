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
DEFAULT_MAX_SIDE = 1024
MIN_SIDE = 8  # smaller images have no keypoints (OpenCV's pyramids fail on them)

log = logging.getLogger("lookalike")


@dataclass(frozen=True)
class Detector(ABC):
    """Keypoints and descriptors of a grey image; options are the dataclass fields.

    ``max_keypoints`` keeps the strongest; ``max_side`` shrinks bigger images before detection
    (None: never), which bounds the time per image. ``binary`` detectors match by Hamming distance.
    """

    name: ClassVar[str] = ""
    binary: ClassVar[bool] = False
    max_keypoints: int = DEFAULT_MAX_KEYPOINTS
    max_side: int | None = DEFAULT_MAX_SIDE

    def __post_init__(self) -> None:
        if self.max_keypoints < 1:
            raise InputError(f"{self.name}: max_keypoints must be at least 1, got {self.max_keypoints}")
        if self.max_side is not None and self.max_side < 16:
            raise InputError(f"{self.name}: max_side must be at least 16 (or None), got {self.max_side}")

    @abstractmethod
    def detect_and_describe(self, gray: np.ndarray) -> tuple[Keypoints, np.ndarray]:
        """Keypoints of a 2-d uint8 image and one descriptor row per keypoint."""

    def describe(self) -> dict[str, Any]:
        """Everything that determines the features: method, options, versions."""
        out: dict[str, Any] = {"name": self.name, "options": asdict(self), "version": LOCAL_FEATURE_VERSION}
        if self.name != "surf":
            out["opencv"] = cv2.__version__
        return out

    @property
    def key(self) -> str:
        """A short stable hash of :meth:`describe`, naming this detector's cache folder."""
        text = json.dumps(self.describe(), sort_keys=True)
        return f"{self.name}-{hashlib.sha1(text.encode()).hexdigest()[:12]}"

    def prepare(self, img: Image.Image) -> np.ndarray:
        """An RGB image as the uint8 grey array that is detected on (shrunk to ``max_side``)."""
        grey = img.convert("L")
        if self.max_side is not None and max(grey.size) > self.max_side:
            ratio = self.max_side / max(grey.size)
            size = (max(1, round(grey.size[0] * ratio)), max(1, round(grey.size[1] * ratio)))
            grey = grey.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
        return np.asarray(grey, dtype=np.uint8)

    def features(self, img: Image.Image) -> Features:
        """Keypoints and descriptors of an RGB image, in the coordinates of :meth:`prepare`'s array."""
        gray = self.prepare(img)
        kp, desc = self.detect_and_describe(gray)
        return Features(kp, desc, (gray.shape[1], gray.shape[0]))


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
            max_keypoints=self.max_keypoints,
        )

    def detect_and_describe(self, gray: np.ndarray) -> tuple[Keypoints, np.ndarray]:
        return surf(_check_gray(gray, self.name), self.surf_options)


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
            nfeatures=self.max_keypoints,
            nOctaveLayers=self.layers,
            contrastThreshold=self.contrast_threshold,
            edgeThreshold=self.edge_threshold,
            sigma=self.sigma,
        )
        return _run_opencv(sift, _check_gray(gray, self.name), 128, np.float32, self.max_keypoints)


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
            nfeatures=self.max_keypoints,
            scaleFactor=self.scale_factor,
            nlevels=self.levels,
            edgeThreshold=self.edge_threshold,
            patchSize=self.patch_size,
            fastThreshold=self.fast_threshold,
        )
        return _run_opencv(orb, _check_gray(gray, self.name), 32, np.uint8, self.max_keypoints)


@dataclass(frozen=True)
class AkazeDetector(Detector):
    """OpenCV AKAZE (Alcantarilla et al. 2013): nonlinear scale space; binary MLDB descriptors."""

    name: ClassVar[str] = "akaze"
    binary: ClassVar[bool] = True
    threshold: float = 0.001

    def detect_and_describe(self, gray: np.ndarray) -> tuple[Keypoints, np.ndarray]:
        akaze = cv2.AKAZE_create(threshold=self.threshold)  # type: ignore[attr-defined]
        return _run_opencv(akaze, _check_gray(gray, self.name), 61, np.uint8, self.max_keypoints)


def _run_opencv(
    algorithm: cv2.Feature2D, gray: np.ndarray, dim: int, dtype: type, n: int
) -> tuple[Keypoints, np.ndarray]:
    """Detect and describe with an OpenCV Feature2D; an image too small for it has no keypoints."""
    if min(gray.shape) < MIN_SIDE:
        return _from_cv((), None, dim, dtype)
    try:
        kps, desc = algorithm.detectAndCompute(gray, None)
    except cv2.error as exc:  # one odd image must not stop a search; it simply matches nothing
        log.warning("OpenCV could not process a %dx%d image: %s", gray.shape[1], gray.shape[0], exc)
        return _from_cv((), None, dim, dtype)
    kp, desc = _from_cv(kps, desc, dim, dtype)
    return _strongest(kp, desc, n)


def _strongest(kp: Keypoints, desc: np.ndarray, n: int) -> tuple[Keypoints, np.ndarray]:
    """The ``n`` strongest keypoints, strongest first (ties by position, so the order is stable)."""
    order = np.lexsort((kp.xy[:, 0], kp.xy[:, 1], -kp.response))[:n]
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
