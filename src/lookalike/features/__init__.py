"""Feature extractors behind one registry: ``create_extractor(name, **options)``.

The ImageNet backbones are built by ``create_backbone`` (``backbones``), for the extractors and for
training alike; ``load_checkpoint_extractor`` (``checkpoint``) searches with a trained model's
``RUN_DIR/best.pt``. Nothing here imports ``lookalike.training`` until a checkpoint is loaded.
"""

from . import cnn, pixels  # noqa: F401  (registers the built-in extractors)
from .backbones import BACKBONES, Backbone, create_backbone
from .base import Extractor, FeatureNet, Preprocess
from .checkpoint import load_checkpoint_extractor
from .registry import ExtractorInfo, create_extractor, list_extractors, register

__all__ = [
    "BACKBONES",
    "Backbone",
    "Extractor",
    "ExtractorInfo",
    "FeatureNet",
    "Preprocess",
    "create_backbone",
    "create_extractor",
    "list_extractors",
    "load_checkpoint_extractor",
    "register",
]
