"""Global pooling of a CNN feature map (n, c, h, w) into one vector (n, c)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError

POOLINGS = ("avg", "gem", "mac")


class GlobalPool(nn.Module):
    """Average (SPoC), max (MAC) or generalised-mean (GeM, power ``p``) pooling.

    GeM with p = 1 is average pooling and tends to max pooling as p grows; p = 3 is the
    usual retrieval choice (Radenovic et al., 2018).
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
        return fmap.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)
