"""The honest baseline: downsampled raw pixels, mean-centred, as a feature vector."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from .base import Extractor, FeatureNet, Preprocess
from .registry import register


class CentredPixels(nn.Module):
    """Flattens the (optionally grey) image and subtracts each vector's mean, so that cosine
    similarity becomes the Pearson correlation of the two thumbnails."""

    def __init__(self, grey: bool) -> None:
        super().__init__()
        self.grey = grey

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grey:
            x = x.mean(dim=1, keepdim=True)
        flat = x.flatten(1)
        return flat - flat.mean(dim=1, keepdim=True)


@register(
    "pixels",
    "raw pixels resized to size x size (the baseline); no weights",
    lambda: (True, "no weights"),
)
def pixels(size: int = 32, grey: bool = False) -> Extractor:
    """Pixels of the image resized to ``size`` x ``size``; ``grey`` averages the channels."""
    if not 4 <= int(size) <= 512:
        raise InputError(f"pixels: size must be between 4 and 512, got {size}")
    size = int(size)
    preprocess = Preprocess((size, size))
    module = FeatureNet(CentredPixels(grey), preprocess).eval()
    dim = size * size * (1 if grey else 3)
    return Extractor("pixels", module, preprocess, dim, {"size": size, "grey": grey}, exportable=False)
