"""Query scale views: a multi-scale model's query described at each of its scales alone as well.

A multi-scale extractor (``-O multiscale=true``, the copies preset) averages the descriptors of an
image at scales 1, 1/sqrt 2 and 1/2. That suits a gallery photo, but a small crop of it matches the
photo best at one scale, and the average blurs that match with the other two. With
:func:`with_scale_views` a query gets ``1 + len(scales)`` vectors from the same forward passes: the
usual average first, then each scale's own descriptor. Searched through
:class:`lookalike.index.regions.RegionIndex` (one region per gallery image, these views per
query), a gallery image scores the best of them (``--query-scales``, part of the copies preset;
chosen on validation sets in benchmarks/preprocess.py, see BENCHMARKS.md "Query scales").
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from ..errors import InputError
from .base import Extractor, FeatureNet

OPTION = "query_scale_views"


class ScaleViews(nn.Module):
    """0..255 pixels (n, 3, H, W) -> (n, (1 + scales) x d): the normalised mean over ``net``'s scales
    (what ``net`` itself gives), then each scale's normalised descriptor."""

    def __init__(self, net: FeatureNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        views = self.net.scale_descriptors(pixels)
        return torch.cat([self.net.combine(views), *views], dim=1)


def view_count(extractor: Extractor) -> int:
    """How many vectors per image ``extractor`` gives as a query with scale views (1 without)."""
    return int(extractor.options.get(OPTION, 1))


def with_scale_views(extractor: Extractor) -> Extractor:
    """The query-side extractor of ``--query-scales``: the mean view then one view per scale (see
    the module); refused, in one line, for a model that is not multi-scale."""
    module = extractor.module
    if not isinstance(module, FeatureNet):
        raise InputError(
            f"--query-scales describes queries at each scale of a multi-scale model, and {extractor.name} "
            "has no scales to describe them by (multi-scale CNNs have: efficientnet-lite0, resnet50, timm CNNs)"
        )
    if len(module.scales) < 2:
        raise InputError(
            f"--query-scales describes queries at each scale of a multi-scale model, and {extractor.name} "
            "is not one here (efficientnet-lite0, resnet50 and timm CNNs take -O multiscale=true; "
            "--preset copies sets it)"
        )
    views = 1 + len(module.scales)
    return replace(
        extractor,
        module=ScaleViews(module).eval(),
        dim=extractor.dim * views,
        options={**extractor.options, OPTION: views},
    )
