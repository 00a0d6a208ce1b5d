"""What every feature extractor is: preprocessing, output size and a torch module."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError

# Bump when a change alters the features an unchanged model gives, so cached vectors are dropped.
FEATURE_VERSION = 1


RESIZES = ("squash", "fit")
# "fit" enlarges a small image only as far as this short side, so that its half scale still gives
# the network a few cells of feature map (benchmarks/preprocess.py, BENCHMARKS.md)
FIT_MIN_SIDE = 128


@dataclass(frozen=True)
class Preprocess:
    """How an RGB image becomes model input: resized (``resize``) for ``size`` (height, width), then
    ``(pixel / 255 - mean) / std`` per channel.

    ``squash`` resizes every image to exactly ``size``. ``fit`` keeps the aspect: the long side is
    brought down to ``max(size)``, and a small image is enlarged only until its short side reaches
    ``FIT_MIN_SIDE`` (never beyond the long-side limit), so a small crop is not blown up to fill the
    frame while the photo it came from is shrunk. Images then differ in size, and are batched by size."""

    size: tuple[int, int]
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    resize: str = "squash"

    def __post_init__(self) -> None:
        if self.resize not in RESIZES:
            raise InputError(f"resize: unknown value {self.resize!r}; choose one of {', '.join(RESIZES)}")

    def target(self, width: int, height: int) -> tuple[int, int]:
        """The (height, width) an image of ``width`` x ``height`` pixels is resized to."""
        if self.resize == "squash":
            return self.size
        longest = max(self.size)
        factor = min(1.0, longest / max(width, height))
        if min(width, height) * factor < FIT_MIN_SIDE:
            factor = min(FIT_MIN_SIDE / min(width, height), longest / max(width, height))
        return max(1, round(height * factor)), max(1, round(width * factor))

    def describe(self) -> dict[str, Any]:
        """The settings, as saved with caches and indexes (``resize`` only when not the default
        squash, so that the keys of everything made before it existed stay valid)."""
        out = asdict(self)
        if self.resize == "squash":
            del out["resize"]
        else:
            out["fit_min_side"] = FIT_MIN_SIDE
        return out


MULTISCALE = (1.0, 2**-0.5, 0.5)


class FeatureNet(nn.Module):
    """Normalises 0..255 float pixels, runs ``body`` and L2-normalises its (n, d) output.

    With several ``scales`` the input is also resized by each factor, and the normalised
    descriptors of all scales are averaged and normalised again (multi-scale extraction, as in
    Radenovic et al.). One module per extractor, so the eager, CUDA and ONNX runtimes all compute
    the same thing.
    """

    def __init__(self, body: nn.Module, preprocess: Preprocess, scales: tuple[float, ...] = (1.0,)) -> None:
        super().__init__()
        self.body = body
        self.scales = tuple(float(s) for s in scales)
        mean = torch.tensor(preprocess.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(preprocess.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.body(x).float(), p=2.0, dim=1, eps=1e-12)

    def scale_descriptors(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        """The normalised (n, d) descriptor of 0..255 ``pixels`` at each of ``scales``, in order."""
        x = (pixels - self.mean) / self.std
        views = [self._embed(x)]
        for scale in self.scales[1:]:
            small = nn.functional.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
            views.append(self._embed(small))
        return views

    @staticmethod
    def combine(views: list[torch.Tensor]) -> torch.Tensor:
        """One descriptor from the per-scale ones: their normalised sum (the single one as it is)."""
        if len(views) == 1:
            return views[0]
        return nn.functional.normalize(torch.stack(views).sum(dim=0), p=2.0, dim=1, eps=1e-12)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.combine(self.scale_descriptors(pixels))


@dataclass(frozen=True)
class OnnxGraph:
    """A model that already is an ONNX graph (SSCD): ONNX Runtime runs the file at ``path`` as it is.

    Its input ``input`` takes (n, h, w, 3) uint8 RGB pixels (``layout`` "nhwc-uint8"; the graph
    normalises them itself) and its first output is the (n, d) feature matrix, L2-normalised.
    With ``regions`` (the (x0, y0, x1, y1) fractions of :func:`lookalike.features.regions.region_boxes`)
    the runner cuts every region from the image, resizes it to ``region_size`` (height, width) and
    runs the graph on each, giving (n, regions x d): the layout of a torch ``RegionNet``.
    """

    path: Path
    input: str = "image"
    layout: str = "nhwc-uint8"
    regions: tuple[tuple[float, float, float, float], ...] = ()
    region_size: tuple[int, int] | None = None


@dataclass
class Extractor:
    """A named feature model ready to embed images.

    ``options`` are the creation options (saved with caches and indexes so a result can be
    explained and reproduced); ``exportable`` says whether the ONNX CPU runtime may run it.
    An extractor is either a torch ``module`` (run eagerly, on CUDA or exported to ONNX) or a
    ready ONNX ``graph`` (``module`` None) that only ONNX Runtime runs.
    """

    name: str
    module: FeatureNet | None
    preprocess: Preprocess
    dim: int
    options: dict[str, Any] = field(default_factory=dict)
    exportable: bool = True
    identity: dict[str, Any] = field(default_factory=dict)
    graph: OnnxGraph | None = None

    def __post_init__(self) -> None:
        """One way to run it: a torch module or an ONNX graph, never neither or both."""
        if (self.module is None) == (self.graph is None):
            raise ValueError(f"extractor {self.name!r} needs exactly one of a torch module or an ONNX graph")

    def describe(self) -> dict[str, Any]:
        """Everything that determines the features: name, options, preprocessing, weights."""
        return {
            "name": self.name,
            "options": {k: _jsonable(v) for k, v in sorted(self.options.items())},
            "preprocess": self.preprocess.describe(),
            "dim": self.dim,
            "weights": self.identity,
            "feature_version": FEATURE_VERSION,
        }

    @property
    def key(self) -> str:
        """A short stable hash of :meth:`describe`, used to key caches and exported models."""
        text = json.dumps(self.describe(), sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:16]


def file_identity(path: str | Path) -> dict[str, Any]:
    """Name, size and content hash of a weights file: a changed file changes the key, while the
    same file installed elsewhere (another machine, a reinstall) keeps it."""
    p = Path(path)
    digest = hashlib.sha1()
    with p.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return {"file": p.name, "size": p.stat().st_size, "sha1": digest.hexdigest()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value
