"""Metric-learning losses: contrastive (pairs), triplet, and for self-supervised views NT-Xent and KoLeo."""

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


def nt_xent(first: torch.Tensor, second: torch.Tensor, *, temperature: float = 0.1) -> torch.Tensor:
    """InfoNCE over two views (SimCLR's NT-Xent): each of the 2n unit embeddings must pick its other
    view among the other 2n - 1 by cosine similarity / ``temperature``; the mean cross-entropy."""
    n = first.shape[0]
    z = torch.cat([first, second])
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def koleo(first: torch.Tensor, second: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """The Kozachenko-Leonenko entropy regulariser of SSCD (Sablayrolles et al., 2019): minus the
    mean log distance from each embedding to its nearest one of another image (the other view of
    the same image does not count), which spreads the descriptors over the sphere."""
    n = first.shape[0]
    if n < 2:  # no other image to be near: nothing to spread
        return first.new_zeros(())
    z = torch.cat([first, second])
    dist = torch.cdist(z, z)
    same = torch.arange(2 * n, device=z.device) % n
    dist = dist.masked_fill(same[:, None] == same[None, :], float("inf"))
    return -torch.log(dist.min(dim=1).values + eps).mean()
