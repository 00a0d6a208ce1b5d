"""Keypoints and their descriptors: what every local-feature detector returns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Keypoints:
    """``n`` keypoints of one image, as parallel arrays.

    ``xy`` (n, 2) float32 in pixels, x right and y down, pixel centres at integers; ``scale`` the
    detection scale as a Gaussian sigma in pixels; ``angle`` the orientation in degrees in
    [0, 360) (0 when the detector is upright); ``response`` the detector strength; ``laplacian``
    the sign of the Laplacian: +1 for a dark blob on a brighter ground, -1 for a bright blob, 0
    when the detector does not give one (only features of equal sign can match).
    """

    xy: np.ndarray
    scale: np.ndarray
    angle: np.ndarray
    response: np.ndarray
    laplacian: np.ndarray

    def __post_init__(self) -> None:
        self.xy = np.asarray(self.xy, dtype=np.float32).reshape(-1, 2)
        n = len(self.xy)
        self.scale = np.asarray(self.scale, dtype=np.float32).reshape(n)
        self.angle = np.asarray(self.angle, dtype=np.float32).reshape(n)
        self.response = np.asarray(self.response, dtype=np.float32).reshape(n)
        self.laplacian = np.asarray(self.laplacian, dtype=np.int8).reshape(n)

    def __len__(self) -> int:
        return len(self.xy)

    @classmethod
    def empty(cls) -> Keypoints:
        """No keypoints."""
        z = np.zeros(0, dtype=np.float32)
        return cls(np.zeros((0, 2), dtype=np.float32), z, z, z, np.zeros(0, dtype=np.int8))

    def subset(self, index: np.ndarray) -> Keypoints:
        """The keypoints at ``index`` (an index array or boolean mask), in that order."""
        return Keypoints(
            self.xy[index], self.scale[index], self.angle[index], self.response[index], self.laplacian[index]
        )


@dataclass
class Features:
    """Keypoints and descriptors (row i describes keypoint i) of one image of ``image_size`` (w, h)."""

    keypoints: Keypoints
    descriptors: np.ndarray
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.keypoints)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for ``np.savez``; :meth:`from_arrays` reverses it."""
        kp = self.keypoints
        return {
            "xy": kp.xy,
            "scale": kp.scale,
            "angle": kp.angle,
            "response": kp.response,
            "laplacian": kp.laplacian,
            "descriptors": self.descriptors,
            "image_size": np.asarray(self.image_size, dtype=np.int64),
        }

    @classmethod
    def from_arrays(cls, data: dict[str, np.ndarray] | np.lib.npyio.NpzFile) -> Features:
        """Rebuild features saved with :meth:`to_arrays`."""
        kp = Keypoints(data["xy"], data["scale"], data["angle"], data["response"], data["laplacian"])
        w, h = (int(v) for v in data["image_size"])
        return cls(kp, np.asarray(data["descriptors"]), (w, h))
