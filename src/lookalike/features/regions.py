"""Region descriptors: the whole image plus a grid of overlapping crops, one vector each.

A small copy (a crop of a fifth of a photo) or a photo pasted into another one is far from the
whole-image descriptor of either; it is close to the descriptor of the matching region. With
``levels=L`` an image gets the whole view plus, at level l = 2..L, an l x l grid of crops each
2/(l+1) of the side (neighbours overlap by half), so L=2 gives 5 regions and L=3 gives 14.

:func:`with_regions` wraps any torch extractor: the image is read at ``upscale`` times the model's
input size, every region is cut from it and resized to the model's size, so a crop is described
from real pixels instead of an enlarged thumbnail. The wrapped extractor gives one row of
``regions x d`` values per image (each region L2-normalised), so caching, batching, the ONNX
runtime and the index store handle it unchanged; :class:`lookalike.index.regions.RegionIndex`
searches such vectors by the best-matching pair of regions.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..errors import InputError
from .base import Extractor, Preprocess

MAX_LEVELS = 4
DEFAULT_UPSCALE = 2


def region_boxes(levels: int) -> list[tuple[float, float, float, float]]:
    """(x0, y0, x1, y1) fractions of the image for every region, the whole image first."""
    if not 1 <= levels <= MAX_LEVELS:
        raise InputError(f"--regions must be between 1 (whole image only) and {MAX_LEVELS}, got {levels}")
    boxes = [(0.0, 0.0, 1.0, 1.0)]
    for level in range(2, levels + 1):
        side = 2.0 / (level + 1)
        step = side / 2.0
        for row in range(level):
            for col in range(level):
                boxes.append((col * step, row * step, col * step + side, row * step + side))
    return boxes


class RegionNet(nn.Module):
    """0..255 pixels (n, 3, H, W) -> (n, regions x d): each region cut, resized to ``size`` and
    described by ``body`` (a :class:`~lookalike.features.base.FeatureNet`, which normalises)."""

    def __init__(
        self, body: nn.Module, size: tuple[int, int], boxes: list[tuple[float, float, float, float]]
    ):
        super().__init__()
        self.body, self.size, self.boxes = body, tuple(size), list(boxes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        height, width = int(pixels.shape[-2]), int(pixels.shape[-1])  # fixed for an extractor
        parts = []
        for x0, y0, x1, y1 in self.boxes:
            crop = pixels[..., round(y0 * height) : round(y1 * height), round(x0 * width) : round(x1 * width)]
            # plain bilinear: antialiased resizing does not export to ONNX
            crop = nn.functional.interpolate(crop, size=self.size, mode="bilinear", align_corners=False)
            parts.append(self.body(crop))
        return torch.cat(parts, dim=1)


def with_regions(extractor: Extractor, levels: int, upscale: int = DEFAULT_UPSCALE) -> Extractor:
    """The extractor giving ``len(region_boxes(levels))`` region vectors per image (see the module)."""
    if extractor.module is None or getattr(extractor, "graph", None) is not None:
        raise InputError(
            f"--regions: {extractor.name} runs as a ready ONNX graph; regions need a torch model"
        )
    if upscale < 1:
        raise InputError(f"region upscale must be at least 1, got {upscale}")
    boxes = region_boxes(levels)
    height, width = extractor.preprocess.size
    size = (height * upscale, width * upscale)
    return replace(
        extractor,
        module=RegionNet(extractor.module, (height, width), boxes),
        preprocess=Preprocess(size, extractor.preprocess.mean, extractor.preprocess.std),
        dim=extractor.dim * len(boxes),
        options={**extractor.options, "regions": levels, "region_upscale": upscale},
    )


def region_count(levels: int) -> int:
    """How many regions ``levels`` gives (1, 5, 14, 30)."""
    return len(region_boxes(levels))
