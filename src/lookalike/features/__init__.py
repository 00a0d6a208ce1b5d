"""Feature extractors behind one registry: ``create_extractor(name, **options)``."""

from . import cnn, pixels  # noqa: F401  (registers the built-in extractors)
from .base import Extractor, FeatureNet, Preprocess
from .registry import ExtractorInfo, create_extractor, list_extractors, register

__all__ = [
    "Extractor",
    "ExtractorInfo",
    "FeatureNet",
    "Preprocess",
    "create_extractor",
    "list_extractors",
    "register",
]
