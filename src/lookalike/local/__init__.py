"""Local features: our own SURF, OpenCV SIFT/ORB, matching, RANSAC verification and re-ranking.

``local_search(query, gallery, "surf", k=10)`` ranks a gallery by verified inliers (through a
:class:`LocalFeatureIndex`, the index of a local method);
``rerank(query_set, gallery_set, indices, scores, "sift", top_n=20)`` re-orders the short list of
a global search; ``create_detector(name, **options)`` gives the detectors themselves.
"""

import os as _os

from numba.core import config as _numba_config

from ..cache import default_cache_dir as _default_cache_dir

# numba's compiled-function cache (cache=True) goes under lookalike's cache, not beside the sources,
# so an install in a read-only place works; numba reads CACHE_DIR when a function is decorated, so
# this holds even when numba was imported first. A NUMBA_CACHE_DIR the user set is kept.
if not _numba_config.CACHE_DIR:
    _numba_config.CACHE_DIR = _os.environ.setdefault("NUMBA_CACHE_DIR", str(_default_cache_dir() / "numba"))

from .detectors import (  # noqa: E402
    LOCAL_METHODS,
    Detector,
    OrbDetector,
    SiftDetector,
    SurfDetector,
    available_methods,
    create_detector,
)
from .extraction import FeatureSet, extract_features  # noqa: E402
from .index import LocalFeatureIndex, LocalResult, local_search, rank_by_verification  # noqa: E402
from .keypoints import Features, Keypoints  # noqa: E402
from .matching import MatchOptions, Verification, find_homography, match_descriptors, verify  # noqa: E402
from .surf import SurfOptions, surf, surf_describe, surf_detect  # noqa: E402
from .verification import rerank, verify_pairs  # noqa: E402

__all__ = [
    "LOCAL_METHODS",
    "Detector",
    "FeatureSet",
    "Features",
    "Keypoints",
    "LocalFeatureIndex",
    "LocalResult",
    "MatchOptions",
    "OrbDetector",
    "SiftDetector",
    "SurfDetector",
    "SurfOptions",
    "Verification",
    "available_methods",
    "create_detector",
    "extract_features",
    "find_homography",
    "local_search",
    "match_descriptors",
    "rank_by_verification",
    "rerank",
    "surf",
    "surf_describe",
    "surf_detect",
    "verify",
    "verify_pairs",
]
