"""Feature extractors behind one registry: ``create_extractor(name, **options)``.

The ImageNet backbones are built by ``create_backbone`` (``backbones``), for the extractors and for
training alike; ``load_checkpoint_extractor`` (``checkpoint``) searches with a trained model's
``RUN_DIR/best.pt``; ``timm:<name>`` is any timm model (``timm_models``) and ``sscd`` a ready
ONNX graph (``sscd``). Nothing here imports ``lookalike.training`` until a checkpoint is loaded.
"""

from . import cnn, pixels, sscd, timm_models  # noqa: F401  (registers the built-in extractors)
from .backbones import BACKBONES, Backbone, create_backbone
from .base import Extractor, FeatureNet, OnnxGraph, Preprocess
from .checkpoint import load_checkpoint_extractor
from .registry import (
    ExtractorInfo,
    create_extractor,
    is_extractor_name,
    list_extractors,
    register,
    register_family,
)

__all__ = [
    "BACKBONES",
    "Backbone",
    "Extractor",
    "ExtractorInfo",
    "FeatureNet",
    "OnnxGraph",
    "Preprocess",
    "create_backbone",
    "create_extractor",
    "is_extractor_name",
    "list_extractors",
    "load_checkpoint_extractor",
    "register",
    "register_family",
]
