"""Global pooling of a CNN feature map (n, c, h, w) into one vector (n, c)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError

POOLINGS = ("avg", "gem", "mac", "spoc")


class GlobalPool(nn.Module):
    """Average, max (MAC), generalised-mean (GeM, power ``p``) or SPoC pooling.

    GeM with p = 1 is average pooling and tends to max pooling as p grows; p = 3 is the
    usual retrieval choice (Radenovic et al., 2018). SPoC (Babenko and Lempitsky, 2015) sums the
    map under a Gaussian centre prior, sigma a third of the distance from the centre to the
    nearest border, since the object of a photo tends to sit in its middle.
    """

    def __init__(self, kind: str = "avg", p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        if kind not in POOLINGS:
            raise InputError(f"unknown pooling {kind!r}; choose one of {', '.join(POOLINGS)}")
        if kind == "gem" and p <= 0:
            raise InputError(f"GeM power must be positive, got {p}")
        self.kind, self.p, self.eps = kind, float(p), eps

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        if self.kind == "avg":
            return fmap.mean(dim=(2, 3))
        if self.kind == "mac":
            return fmap.amax(dim=(2, 3))
        if self.kind == "spoc":
            return (fmap * _centre_prior(fmap.shape[2], fmap.shape[3], fmap)).sum(dim=(2, 3))
        return fmap.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


def _centre_prior(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
    """SPoC's Gaussian weights over an h x w map (1, 1, h, w), on ``like``'s device and dtype."""
    ys = torch.arange(h, device=like.device, dtype=like.dtype) - (h - 1) / 2
    xs = torch.arange(w, device=like.device, dtype=like.dtype) - (w - 1) / 2
    sigma = max(min(h, w) / 2, 0.5) / 3
    weights = torch.exp(-(ys[:, None] ** 2 + xs[None, :] ** 2) / (2 * sigma**2))
    return weights[None, None]
