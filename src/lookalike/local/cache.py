"""On-disk cache of local features: one .npz per image and detector, keyed by file identity.

Keypoints and descriptors vary in count per image, so each image gets its own small file under
``<cache>/local/<detector key>/``; files are written atomically, so concurrent or interrupted
runs never leave a half-written entry, and a damaged one only costs a re-extraction.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..fileio import atomic_write
from .detectors import Detector
from .keypoints import Features


class DescriptorCache:
    """Features of one detector's images: ``get(file_key)`` and ``put(file_key, features)``."""

    def __init__(self, root: str | Path, detector: Detector) -> None:
        self.folder = Path(root) / "local" / detector.key
        self.description = detector.describe()

    def _path(self, key: str) -> Path:
        digest = hashlib.sha1(key.encode()).hexdigest()
        return self.folder / digest[:2] / f"{digest}.npz"

    def get(self, key: str) -> Features | None:
        """The cached features of a file key (see :func:`lookalike.cache.file_key`), or None."""
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["key"]) != key:
                    return None
                return Features.from_arrays(data)
        except Exception:  # a foreign or damaged file only costs a re-extraction
            return None

    def put(self, key: str, features: Features) -> None:
        """Write one image's features (atomically)."""
        arrays = {**features.to_arrays(), "key": np.array(key)}
        try:
            atomic_write(self._path(key), lambda h: np.savez(h, **arrays))
            meta = self.folder / "detector.json"
            if not meta.exists():
                text = json.dumps(self.description, indent=2).encode()
                atomic_write(meta, lambda h: h.write(text))
        except OSError as exc:
            raise InputError(f"local feature cache {self.folder}: cannot write ({exc})") from None
