"""Metric-learning losses on embedding distances: contrastive (pairs) and triplet."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def euclidean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Euclidean distance, with a small floor so its gradient is finite at zero."""
    return (a - b).pow(2).sum(dim=1).clamp(min=1e-12).sqrt()


def contrastive_loss(
    a: torch.Tensor,
    b: torch.Tensor,
    same: torch.Tensor,
    *,
    margin: float = 1.0,
    distance: Distance = euclidean,
) -> torch.Tensor:
    """Hadsell et al. (2006): pull matching pairs together, push others at least ``margin`` apart.

    ``same`` is 1 for a matching pair and 0 otherwise; the result is the mean over pairs.
    """
    d = distance(a, b)
    same = same.to(d.dtype)
    return (same * d.pow(2) + (1.0 - same) * F.relu(margin - d).pow(2)).mean()


def triplet_loss(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    *,
    margin: float = 0.2,
    distance: Distance = euclidean,
) -> torch.Tensor:
    """Schroff et al. (2015): the anchor must be ``margin`` closer to the positive than the negative."""
    return F.relu(distance(anchor, positive) - distance(anchor, negative) + margin).mean()
