"""Sampling for metric learning: balanced positive/negative pairs and triplets, fresh each epoch."""

from __future__ import annotations

import torch

from ..errors import InputError


def _positive_partner(labels: torch.Tensor, anchors: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """For each anchor, a random other image of its class (each anchor's class has >= 2 images)."""
    order = torch.argsort(labels, stable=True)
    sorted_labels = labels[order]
    classes, counts = torch.unique_consecutive(sorted_labels, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.searchsorted(classes, labels[anchors])
    start, count = starts[slot], counts[slot]
    rank = torch.empty(len(labels), dtype=torch.long)
    rank[order] = torch.arange(len(labels))
    own = rank[anchors] - start  # the anchor's place inside its class
    # draw among the count - 1 others, skipping the anchor itself
    pick = (torch.rand(len(anchors), generator=g) * (count - 1)).long().clamp(max=count - 2)
    pick = pick + (pick >= own).long()
    return order[start + pick]


def _negative_partner(labels: torch.Tensor, anchors: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """For each anchor, a random image of another class, drawn uniformly over those images."""
    n = len(labels)
    partner = torch.randint(0, n, (len(anchors),), generator=g)
    clash = labels[partner] == labels[anchors]
    while bool(clash.any()):  # rejection sampling: at least two classes exist, so this ends
        partner[clash] = torch.randint(0, n, (int(clash.sum()),), generator=g)
        clash = labels[partner] == labels[anchors]
    return partner


def _anchors(labels: torch.Tensor, count: int | None, g: torch.Generator) -> torch.Tensor:
    classes, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    if len(classes) < 2:
        raise InputError("pairs and triplets need images of at least two classes")
    usable = torch.nonzero(counts[inverse] >= 2).flatten()
    if len(usable) == 0:
        raise InputError("pairs and triplets need at least one class with two or more images")
    if count is None:
        return usable[torch.randperm(len(usable), generator=g)]
    return usable[torch.randint(0, len(usable), (count,), generator=g)]


def balanced_pairs(
    labels: torch.Tensor, g: torch.Generator, n_pairs: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(first, second, same): half matching pairs, half not, shuffled.

    Every image of a class with at least two images is the anchor of one matching and one
    non-matching pair (or ``n_pairs`` pairs in all, drawn at random), so each epoch sees new pairs.
    """
    anchors = _anchors(labels, None if n_pairs is None else max(1, n_pairs // 2), g)
    first = torch.cat([anchors, anchors])
    second = torch.cat([_positive_partner(labels, anchors, g), _negative_partner(labels, anchors, g)])
    same = torch.cat([torch.ones(len(anchors)), torch.zeros(len(anchors))])
    order = torch.randperm(len(first), generator=g)
    return first[order], second[order], same[order]


def triplets(
    labels: torch.Tensor, g: torch.Generator, n_triplets: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(anchor, positive, negative) indices: one triplet per usable anchor (or ``n_triplets``)."""
    anchors = _anchors(labels, n_triplets, g)
    return anchors, _positive_partner(labels, anchors, g), _negative_partner(labels, anchors, g)
