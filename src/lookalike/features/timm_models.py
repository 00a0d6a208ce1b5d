"""Any timm model as an extractor (``-m timm:<name>``) or a training trunk (``-O trunk=timm:<name>``).

Weights come through timm's own pretrained mechanism and the Hugging Face cache it downloads into;
offline, from a local file (``--weights FILE``), and ``-O weights=random`` gives an untrained net for
speed tests. The weights are looked up in the cache before anything touches the network, and an
unreachable hub is detected at once, so an offline machine gets one clear line instead of timm's
retries. Preprocessing (input size, mean, std, crop) is the model's own pretrained config, resolved
by timm; ``-O size=N`` changes the input size (ViTs resample their position embeddings). Features
are the pooled pre-logits (``forward_head(pre_logits=True)``), or a ``lookalike`` pooling (GeM, ...)
of a CNN's feature map when ``-O pool=...`` asks for one.
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from ..errors import InputError, WeightsUnavailableError
from .backbones import Backbone, fit_state_dict
from .base import MULTISCALE, Extractor, FeatureNet, Preprocess, file_identity
from .pooling import GlobalPool
from .registry import register, register_family

PREFIX = "timm"
# Short names for models worth knowing (each is checked against timm's pretrained list in a test).
ALIASES = {
    "dinov2": "vit_small_patch14_reg4_dinov2.lvd142m",
    "dinov2-b": "vit_base_patch14_reg4_dinov2.lvd142m",
    "clip-b16": "vit_base_patch16_clip_224.openai",
    "siglip-b16": "vit_base_patch16_siglip_224.webli",
}
HUB_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
)
PROBE_TIMEOUT_S = 3.0


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise InputError("timm models need timm: pip install timm") from None
    return timm


def resolve_name(name: str) -> str:
    """The timm model name (``architecture`` or ``architecture.tag``) an alias or name stands for."""
    name = name.removeprefix(f"{PREFIX}:")
    return ALIASES.get(name, name)


# --------------------------------------------------------------------------- where weights are


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache timm downloads into (``$HF_HUB_CACHE``, ``$HF_HOME/hub``, ...)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _cached_hub_file(repo: str, filenames: tuple[str, ...]) -> Path | None:
    """The first of ``filenames`` of hub repo ``repo`` (``id`` or ``id@revision``) already in the cache."""
    from huggingface_hub import try_to_load_from_cache

    repo_id, _, revision = repo.partition("@")
    for filename in filenames:
        found = try_to_load_from_cache(
            repo_id, filename, cache_dir=hub_cache_dir(), revision=revision or None
        )
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def _hub_filenames(cfg: dict[str, Any]) -> tuple[str, ...]:
    """The files timm would load for ``cfg``: its named file (default ``pytorch_model.bin``),
    safetensors first, as timm's ``load_state_dict_from_hf`` tries them."""
    name = cfg.get("hf_hub_filename") or "pytorch_model.bin"
    safe = {
        "pytorch_model.bin": "model.safetensors",
        "open_clip_pytorch_model.bin": "open_clip_model.safetensors",
    }
    alternative = safe.get(name) or (name[:-4] + ".safetensors" if name.endswith(".bin") else None)
    return tuple(f for f in (alternative, name) if f)


def cached_weights(cfg: dict[str, Any]) -> Path | None:
    """The pretrained weights file of a timm ``pretrained_cfg`` when it is on this machine: in the
    Hugging Face cache (timm's default source) or in torch's hub cache (timm's older URL source)."""
    if cfg.get("hf_hub_id"):
        found = _cached_hub_file(cfg["hf_hub_id"], _hub_filenames(cfg))
        if found is not None:
            return found
    url = cfg.get("url")
    if url:
        old = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
        if old.is_file():
            return old
    return None


def hub_unreachable() -> str | None:
    """Why the Hugging Face hub cannot be reached right now (offline mode, no route), or None.

    ``HF_HUB_OFFLINE`` is honoured; otherwise one short connection attempt to the endpoint decides
    (skipped behind a proxy, where only a real request can tell).
    """
    from huggingface_hub import constants

    offline = getattr(constants, "is_offline_mode", lambda: constants.HF_HUB_OFFLINE)()
    if offline or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes"):
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or 443
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        return f"{host} unreachable: {exc.strerror or exc}"
    return None


def weights_status(name: str) -> tuple[bool, str]:
    """Whether the pretrained weights of timm model ``name`` are cached here, and how to get them
    (the hub repo is ``timm/<name>``, timm's convention; timm itself is not imported)."""
    full = resolve_name(name)
    found = _cached_hub_file(f"timm/{full}", HUB_FILES) if "." in full else None
    if found is not None:
        return True, f"cached ({found.name} in the Hugging Face cache)"
    return False, "timm downloads and caches them on first use (online); offline: --weights FILE"


def cached_timm_models() -> list[str]:
    """timm models (``name.tag``) whose weights are in the Hugging Face cache."""
    root = hub_cache_dir()
    if not root.is_dir():
        return []
    names = [p.name.removeprefix("models--timm--") for p in root.glob("models--timm--*") if p.is_dir()]
    return sorted(n for n in names if weights_status(n)[0])


def _unavailable(label: str, full: str, why: str) -> WeightsUnavailableError:
    return WeightsUnavailableError(
        f"{label}: pretrained weights of {full} are not in the Hugging Face cache ({hub_cache_dir()}) "
        f"and cannot be downloaded ({why}). Either run once online (timm downloads and caches them), "
        "or pass a local weights file: --weights FILE (-O weights=FILE; for training -O trunk_weights=FILE "
        "or backbone_weights=FILE), a timm state dict such as the model's model.safetensors; "
        "-O weights=random for speed tests."
    )


# --------------------------------------------------------------------------- building a model


@dataclass
class TimmModel:
    """A timm network without its classifier, with where its weights came from and its
    preprocessing: ``size`` the network input, ``crop_pct`` the share of the resized image kept."""

    name: str
    net: nn.Module
    identity: dict[str, Any]
    description: str
    size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float
    interpolation: str


def build_model(
    name: str, weights: bool | str = True, size: int | tuple[int, int] | None = None, *, label: str = ""
) -> TimmModel:
    """The timm model ``name`` (alias, ``arch`` or ``arch.tag``) with ``num_classes=0``.

    ``weights``: True (pretrained, from the cache or downloaded by timm), a local file (a state
    dict or checkpoint, classifier keys ignored), ``random`` (untrained, seed 0: for speed tests)
    or False (an untrained net from the global RNG, for a checkpoint's weights to replace).
    ``size`` (pixels, or (height, width)) resizes the input (ViTs resample their position
    embeddings to it).
    """
    timm = _timm()
    full = resolve_name(name)
    label = label or f"{PREFIX}:{name}"
    if not timm.is_model(full):
        raise InputError(
            f'{label}: timm has no model {full!r} (list them with python -c "import timm; '
            f"print(timm.list_models('*resnet*', pretrained=True))\")"
        )
    if "." in full:
        try:
            timm.models.get_pretrained_cfg(full, allow_unregistered=False)
        except RuntimeError as exc:  # an unknown tag
            raise InputError(f"{label}: {exc}") from None
    try:
        net, identity, description = _with_weights(timm, full, weights, label)
    except (WeightsUnavailableError, InputError):
        raise
    except Exception as exc:  # timm's own loading errors, as one line
        raise WeightsUnavailableError(f"{label}: cannot load weights ({type(exc).__name__}: {exc})") from None
    data = timm.data.resolve_model_data_config(net)
    default = (int(data["input_size"][1]), int(data["input_size"][2]))
    target = (
        default if size is None else (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    )
    if not 16 <= min(target) <= max(target) <= 2048:
        raise InputError(f"{label}: size must be between 16 and 2048 pixels, got {size}")
    if target != default and hasattr(net, "set_input_size"):
        try:
            net.set_input_size(img_size=target)
        except Exception as exc:
            raise InputError(f"{label}: cannot run at size {size} ({exc})") from None
    mean = tuple(float(v) for v in data["mean"])
    std = tuple(float(v) for v in data["std"])
    crop = float(data.get("crop_pct") or 1.0)
    return TimmModel(
        full, net.eval(), identity, description, target, mean, std, crop, str(data["interpolation"])
    )


def _with_weights(timm: Any, full: str, weights: bool | str, label: str) -> tuple[nn.Module, dict, str]:
    if weights is False:
        return (
            timm.create_model(full, pretrained=False, num_classes=0),
            {"pretrained": False},
            f"{full}, untrained",
        )
    if weights == "random":
        with torch.random.fork_rng():
            torch.manual_seed(0)
            net = timm.create_model(full, pretrained=False, num_classes=0)
        return net, {"random": True, "seed": 0}, f"{full}, random weights (seed 0)"
    if isinstance(weights, str | Path) and str(weights) not in ("", "True", "true", "pretrained"):
        path = Path(weights)
        if not path.is_file():
            raise WeightsUnavailableError(f"{label}: weights file {path} not found")
        net = timm.create_model(full, pretrained=False, num_classes=0)
        _load_file(timm, net, path)
        return net, file_identity(path), f"{full}, weights from {path.name}"
    cfg = timm.models.get_pretrained_cfg(full)
    if cfg is None:
        raise InputError(f"{label}: timm has no pretrained weights for {full}; pass --weights FILE")
    cfg = cfg.to_dict()
    tag = full if "." in full else f"{full}.{cfg.get('tag') or ''}".rstrip(".")
    identity = {"timm": tag, "source": cfg.get("hf_hub_id") or cfg.get("url") or ""}
    cached = cached_weights(cfg)
    if cached is not None:  # timm's loader (its key filters included) on the cached file, no network
        net = timm.create_model(
            full, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(cached)}
        )
        return net, identity, f"{tag}, pretrained ({cached.name}, cached)"
    why = hub_unreachable()
    if why:
        raise _unavailable(label, tag, why)
    try:
        net = timm.create_model(full, pretrained=True, num_classes=0)
    except Exception as exc:
        raise _unavailable(
            label, tag, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    return net, identity, f"{tag}, pretrained (downloaded)"


def _load_file(timm: Any, net: nn.Module, path: Path) -> None:
    """A local weights file (timm or torch state dict, safetensors, or a checkpoint holding one)
    into ``net``; the classifier's keys are dropped, anything else that does not fit is an error."""
    try:
        state = timm.models.load_state_dict(str(path), weights_only=True)
    except Exception as exc:
        raise WeightsUnavailableError(
            f"{path}: not a readable weights file ({type(exc).__name__}: {exc})"
        ) from None
    classifier = net.pretrained_cfg.get("classifier") or "fc"
    heads = tuple(f"{c}." for c in ((classifier,) if isinstance(classifier, str) else classifier))
    fit_state_dict(net, {k: v for k, v in state.items() if not k.startswith(heads)}, path)


# --------------------------------------------------------------------------- modules


class TimmTrunk(nn.Module):
    """A timm network's ``forward_features``: (n, c, h, w) for CNNs (NHWC outputs are permuted),
    (n, tokens, d) for transformers."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.nhwc = getattr(net, "output_fmt", "NCHW") == "NHWC"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net.forward_features(x)
        return out.permute(0, 3, 1, 2) if self.nhwc and out.ndim == 4 else out


class TimmPooled(nn.Module):
    """Normalised pixels -> (n, d): an optional centre crop, the trunk, then the model's own head
    pooling (pre-logits) or a ``GlobalPool`` of the feature map.

    ``crop`` is (kept, full) sizes: of a ``full``-sized input the centre ``kept`` is used (timm's
    crop_pct); a smaller input (multi-scale) keeps the same share.
    """

    def __init__(self, trunk: TimmTrunk, pool: GlobalPool | None) -> None:
        super().__init__()
        self.trunk, self.pool = trunk, pool
        self.crop: tuple[tuple[int, int], tuple[int, int]] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.crop is not None:
            (kh, kw), (fh, fw) = self.crop
            h, w = int(x.shape[2]), int(x.shape[3])
            ch, cw = (kh, kw) if (h, w) == (fh, fw) else (round(kh * h / fh), round(kw * w / fw))
            top, left = (h - ch) // 2, (w - cw) // 2
            x = x[:, :, top : top + ch, left : left + cw]
        fmap = self.trunk(x)
        if self.pool is None:
            return self.trunk.net.forward_head(fmap, pre_logits=True)
        return self.pool(fmap)


@dataclass
class TimmBackbone(Backbone):
    """A timm trunk as a :class:`Backbone`; ``pooled()`` without a pooling is the model's own head.

    ``channels`` is the width of that head's output; ``map_channels`` the feature map's, 0 for a
    transformer (its tokens take only its own pooling).
    """

    map_channels: int = 0

    def pooled(self, pool: str | None = None, gem_p: float = 3.0) -> nn.Module:
        """The trunk with the model's pre-logits pooling (``pool`` None) or ``GlobalPool`` over a
        CNN's feature map."""
        assert isinstance(self.trunk, TimmTrunk)
        if pool is None:
            return TimmPooled(self.trunk, None)
        if not self.map_channels:
            raise InputError(
                f"{self.name}: pool={pool} needs a CNN feature map and this model gives tokens; leave pool "
                "unset (the model's own pooling)"
            )
        return TimmPooled(self.trunk, GlobalPool(pool, gem_p))


def _backbone(model: TimmModel, label: str) -> TimmBackbone:
    """The Backbone of a built model; one forward pass on a blank image finds its output widths
    (and that it runs at its input size at all)."""
    trunk = TimmTrunk(model.net)
    try:
        with torch.no_grad():
            fmap = trunk(torch.zeros(1, 3, *model.size))
            head = model.net.forward_head(fmap, pre_logits=True)
    except Exception as exc:
        raise InputError(f"{label}: cannot run at {model.size[0]}x{model.size[1]} ({exc})") from None
    map_channels = int(fmap.shape[1]) if fmap.ndim == 4 else 0
    preprocess = Preprocess(model.size, model.mean, model.std)
    return TimmBackbone(
        label, trunk, int(head.shape[1]), preprocess, model.description, model.identity, map_channels
    )


def timm_backbone(
    name: str, pretrained: bool | str = True, size: int | tuple[int, int] | None = None
) -> TimmBackbone:
    """``create_backbone("timm:<name>")``: the trunk (feature map or tokens), its width, its
    own normalisation at ``size`` (default: the model's)."""
    label = f"{PREFIX}:{name}"
    return _backbone(build_model(name, pretrained, size, label=label), label)


# --------------------------------------------------------------------------- extractors


def timm_extractor(
    name: str,
    weights: str | None = None,
    size: int | None = None,
    pool: str | None = None,
    gem_p: float = 3.0,
    multiscale: bool = False,
    crop_pct: float | None = None,
    resize: str = "squash",
    *,
    label: str | None = None,
) -> Extractor:
    """A timm model's pooled pre-logits (or ``pool`` of its feature map), L2-normalised.

    ``weights``: None (pretrained: cached, or downloaded by timm), a local file, or ``random``;
    ``size``: input size (default the model's); ``crop_pct``: the share kept by the centre crop
    (default the model's; 1 keeps the whole image); ``resize``: ``squash`` or ``fit`` (CNNs only:
    aspect kept, the whole image, no centre crop; see ``Preprocess``).
    """
    label = label or f"{PREFIX}:{name}"
    if crop_pct is not None and not 0.1 <= crop_pct <= 1.0:
        raise InputError(f"{label}: crop_pct must be between 0.1 and 1, got {crop_pct}")
    model = build_model(name, weights or True, size, label=label)
    backbone = _backbone(model, label)
    if multiscale and not backbone.map_channels:
        raise InputError(f"{label}: multiscale needs a CNN; this model has a fixed token grid")
    if resize != "squash" and not backbone.map_channels:
        raise InputError(f"{label}: resize={resize} needs a CNN; this model has a fixed token grid")
    body = backbone.pooled(pool, gem_p)
    assert isinstance(body, TimmPooled)
    # as timm's eval transform: resize to size / crop_pct, keep the centre (the loader resizes the
    # whole image to a square, where timm keeps the aspect ratio); fit keeps the whole image
    crop = model.crop_pct if crop_pct is None else float(crop_pct)
    scaled = (math.floor(model.size[0] / crop), math.floor(model.size[1] / crop))
    if resize != "squash":
        crop, scaled = 1.0, model.size
    if scaled != model.size:
        body.crop = (model.size, scaled)
    preprocess = Preprocess(scaled, model.mean, model.std, resize)
    module = FeatureNet(body, preprocess, MULTISCALE if multiscale else (1.0,)).eval()
    dim = backbone.map_channels if pool is not None else backbone.channels
    options = {
        "weights": weights,
        "size": size,
        "pool": pool,
        "gem_p": gem_p,
        "multiscale": multiscale,
        "crop_pct": crop_pct,
    }
    if resize != "squash":  # recorded only when given, so existing keys stay as they were
        options["resize"] = resize
    identity = {**model.identity, "model": model.name, "crop_pct": crop, "interpolation": model.interpolation}
    return Extractor(label, module, preprocess, dim, options, identity=identity)


register_family(
    PREFIX,
    "any timm model (timm.list_models()): pooled pre-logits; -O size=N, -O pool=gem (CNNs), "
    "-O weights=FILE|random",
    timm_extractor,
    lambda: (
        False,
        "timm downloads and caches pretrained weights on first use (online); offline: --weights FILE",
    ),
)


def _register_alias(alias: str, full: str) -> None:
    def factory(
        weights: str | None = None,
        size: int | None = None,
        pool: str | None = None,
        gem_p: float = 3.0,
        multiscale: bool = False,
        crop_pct: float | None = None,
    ) -> Extractor:
        return timm_extractor(full, weights, size, pool, gem_p, multiscale, crop_pct, label=alias)

    factory.__doc__ = f"timm {full} (alias {alias})."
    register(alias, f"timm {full}: pooled pre-logits; -O size=224 for speed", lambda: weights_status(full))(
        factory
    )


for _alias, _full in ALIASES.items():
    _register_alias(_alias, _full)
