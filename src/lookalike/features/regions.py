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
searches such vectors by the best-matching pair of regions. A ready ONNX graph (SSCD) gets the same
regions from the graph runner of :mod:`lookalike.extract` (:func:`cut_region` on the uint8 pixels,
one graph run per region), so both kinds give the same (images x regions) layout.
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


def cut_region(
    pixels: torch.Tensor, box: tuple[float, float, float, float], size: tuple[int, int]
) -> torch.Tensor:
    """The ``box`` of float pixels (n, 3, H, W) resized to ``size`` (plain bilinear, exportable)."""
    height, width = int(pixels.shape[-2]), int(pixels.shape[-1])  # fixed for an extractor
    top, bottom = round(box[1] * height), round(box[3] * height)
    left, right = round(box[0] * width), round(box[2] * width)
    crop = pixels[..., top:bottom, left:right]
    if (bottom - top, right - left) == tuple(size):
        return crop  # bilinear at the same size is the identity
    # plain bilinear: antialiased resizing does not export to ONNX
    return nn.functional.interpolate(crop, size=tuple(size), mode="bilinear", align_corners=False)


def cut_regions_uint8(
    pixels: torch.Tensor, boxes: list[tuple[float, float, float, float]], size: tuple[int, int]
) -> list[torch.Tensor]:
    """Every box of a uint8 batch (n, 3, H, W) as a uint8 batch (n, 3, h, w), for ready graphs."""
    x = pixels.float()
    return [cut_region(x, box, size).round().clamp(0, 255).to(torch.uint8) for box in boxes]


class RegionNet(nn.Module):
    """0..255 pixels (n, 3, H, W) -> (n, regions x d): each region cut, resized to ``size`` and
    described by ``body`` (a :class:`~lookalike.features.base.FeatureNet`, which normalises)."""

    def __init__(
        self, body: nn.Module, size: tuple[int, int], boxes: list[tuple[float, float, float, float]]
    ):
        super().__init__()
        self.body, self.size, self.boxes = body, tuple(size), list(boxes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.body(cut_region(pixels, box, self.size)) for box in self.boxes], dim=1)


def with_regions(extractor: Extractor, levels: int, upscale: int = DEFAULT_UPSCALE) -> Extractor:
    """The extractor giving ``len(region_boxes(levels))`` region vectors per image (see the module):
    a torch extractor gets a :class:`RegionNet`, a ready ONNX graph (SSCD) the graph's ``regions``."""
    if isinstance(upscale, bool) or not isinstance(upscale, int) or upscale < 1:
        raise InputError(f"region upscale must be a whole number of at least 1, got {upscale!r}")
    if extractor.options.get("regions"):
        raise InputError(f"--regions: {extractor.name} already gives region vectors")
    boxes = region_boxes(levels)
    height, width = extractor.preprocess.size
    size = (height * upscale, width * upscale)
    changes: dict = {}
    if extractor.graph is not None:
        changes["graph"] = replace(extractor.graph, regions=tuple(boxes), region_size=(height, width))
    else:
        changes["module"] = RegionNet(extractor.module, (height, width), boxes)
        if extractor.preprocess.resize != "squash":  # the ONNX trace would fix the boxes of one size
            changes["exportable"] = False
    pre = extractor.preprocess
    return replace(
        extractor,
        preprocess=Preprocess(size, pre.mean, pre.std, pre.resize),
        dim=extractor.dim * len(boxes),
        options={**extractor.options, "regions": levels, "region_upscale": upscale},
        **changes,
    )


def rebuild_extractor(name: str, options: dict) -> Extractor:
    """The extractor ``name`` with ``options`` as :attr:`Extractor.options` holds them (a saved
    index, a Ray worker): the region options set by :func:`with_regions` and the query views of
    :func:`~lookalike.features.scale_views.with_scale_views` are not the model's own, so the plain
    model is built and wrapped again (options without ``region_upscale``, as a plug-in or a
    hand-made manifest may give, get the default)."""
    from . import create_extractor
    from .scale_views import OPTION, with_scale_views

    options = dict(options)
    levels, upscale = options.pop("regions", 0), options.pop("region_upscale", None)
    views = options.pop(OPTION, 0)
    extractor = create_extractor(name, **options)
    if views:
        extractor = with_scale_views(extractor)
    return with_regions(extractor, levels, DEFAULT_UPSCALE if upscale is None else upscale) if levels else extractor


def region_count(levels: int) -> int:
    """How many regions ``levels`` gives (1, 5, 14, 30)."""
    return len(region_boxes(levels))
