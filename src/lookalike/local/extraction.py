"""Local features of an image set: each image's keypoints and descriptors, cached, on every core.

Unreadable images are skipped and reported, as in the global pipeline (or raise under ``strict``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..cache import file_key
from ..errors import ImageError
from ..extract import ExtractOptions, Skipped
from ..images import ImageSet, load_image
from .cache import DescriptorCache
from .detectors import Detector
from .keypoints import Features
from .parallel import parallel_map, worker_count

log = logging.getLogger("lookalike")


@dataclass
class FeatureSet:
    """Local features of an image set: ``features[i]`` for ``images.paths[i]``, None when unreadable
    (or not asked for)."""

    features: list[Features | None]
    skipped: list[Skipped] = field(default_factory=list)
    n_cached: int = 0
    n_extracted: int = 0

    @property
    def readable(self) -> np.ndarray:
        """Indices of the images that have features."""
        return np.array([i for i, f in enumerate(self.features) if f is not None], dtype=np.int64)

    @property
    def indices(self) -> np.ndarray:
        """The readable images, as :class:`~lookalike.extract.Embeddings` names them."""
        return self.readable


def _extract_one(detector: Detector, path: Path, max_pixels: int) -> tuple[Features | None, str]:
    try:
        img = load_image(path, max_pixels=max_pixels, draft_size=detector.max_side)
    except ImageError as exc:
        return None, exc.reason
    return detector.features(img), ""


def extract_features(
    detector: Detector,
    images: ImageSet,
    options: ExtractOptions | None = None,
    *,
    label: str = "images",
    indices: Sequence[int] | None = None,
) -> FeatureSet:
    """Keypoints and descriptors of ``images`` (only ``indices`` when given), from the cache when
    there, else extracted on every core and cached. Unreadable files are logged and listed in
    ``skipped`` (or raise ImageError under ``options.strict``)."""
    opts = options or ExtractOptions()
    wanted = range(len(images)) if indices is None else sorted(set(int(i) for i in indices))
    cache = (
        DescriptorCache(opts.cache_dir, detector) if opts.use_cache and opts.cache_dir is not None else None
    )
    out = FeatureSet([None] * len(images))
    keys: dict[int, str | None] = {}
    todo = []
    for i in wanted:
        keys[i] = file_key(images.paths[i])
        cached = cache.get(keys[i]) if cache is not None and keys[i] else None
        if cached is not None:
            out.features[i] = cached
            out.n_cached += 1
        else:
            todo.append(i)

    def store(j: int, result: tuple[Features | None, str]) -> None:
        i = todo[j]
        feats, reason = result
        if feats is None:
            if opts.strict:
                raise ImageError(images.paths[i], reason)
            log.warning("skipped %s: %s", images.paths[i], reason)
            out.skipped.append(Skipped(images.names[i], reason))
            return
        out.features[i] = feats
        out.n_extracted += 1
        key = keys[i]
        if cache is not None and key:
            cache.put(key, feats)

    if todo:
        parallel_map(
            lambda i: _extract_one(detector, images.paths[i], opts.max_pixels),
            todo,
            workers=worker_count(opts.num_workers, len(todo)),
            desc=f"{detector.name} {label}",
            unit="img",
            progress=opts.progress,
            on_result=store,
        )
    return out
