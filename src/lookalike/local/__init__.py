"""Local features: our own SURF, OpenCV SIFT/ORB, matching, RANSAC verification and re-ranking.

``local_search(query, gallery, "surf", k=10)`` ranks a gallery by verified inliers;
``rerank(query_set, gallery_set, indices, scores, "sift", top_n=20)`` re-orders the short list of
a global search; ``create_detector(name, **options)`` gives the detectors themselves.
"""

from .detectors import (
    LOCAL_METHODS,
    Detector,
    OrbDetector,
    SiftDetector,
    SurfDetector,
    available_methods,
    create_detector,
)
from .keypoints import Features, Keypoints
from .matching import MatchOptions, Verification, find_homography, match_descriptors, verify
from .search import FeatureSet, LocalResult, extract_features, local_search, rank_by_verification, rerank
from .surf import SurfOptions, surf, surf_describe, surf_detect

__all__ = [
    "LOCAL_METHODS",
    "Detector",
    "FeatureSet",
    "Features",
    "Keypoints",
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
]
