"""The networks of the five learned methods, each with its loss and the feature body it is searched with.

Every model takes normalised pixels (``FeatureNet`` does the normalising at search time; the trainer
does it the same way while training) and answers three questions: ``loss(views, target)`` for the
trainer, ``features()`` for the extractor, and ``sampling`` (plain images, pairs or triplets).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import InputError
from ..features.backbones import create_backbone
from ..features.base import Preprocess
from ..features.pooling import GlobalPool
from ..features.timm_models import ALIASES as TIMM_ALIASES
from .losses import contrastive_loss, koleo, nt_xent, triplet_loss

# Networks trained from scratch see pixels scaled to -1..1.
SCRATCH_MEAN = (0.5, 0.5, 0.5)
SCRATCH_STD = (0.5, 0.5, 0.5)
DEFAULT_MARGINS = {"contrastive": 1.0, "triplet": 0.2}


class TrainableModel(nn.Module):
    """What the trainer needs of a method's network."""

    # "images" (with class ids), "pairs" (with same/different), "triplets", or "views" (two edited
    # views of each image, made in the DataLoader workers: self-supervised methods)
    sampling = "images"

    def loss(self, views: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """The training objective for one batch; ``views`` are normalised image batches."""
        raise NotImplementedError

    def features(self) -> nn.Module:
        """The module mapping normalised pixels to the (n, d) search features."""
        raise NotImplementedError


# --------------------------------------------------------------------------- building blocks


def conv_block(c_in: int, c_out: int, *, batch_norm: bool) -> nn.Sequential:
    """3x3 convolution (same padding), optional batch norm, ReLU, 2x2 max pooling."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
    return nn.Sequential(*layers)


def _out_shape(module: nn.Module, size: tuple[int, int]) -> torch.Size:
    """The output shape (without batch) of ``module`` on one zero image of ``size``."""
    was_training = module.training
    module.eval()
    with torch.no_grad():
        shape = module(torch.zeros(1, 3, *size)).shape[1:]
    module.train(was_training)
    return shape


def _check_size(size: tuple[int, int], blocks: int) -> None:
    if min(size) < 2**blocks:
        raise InputError(
            f"image_size {size[0]}x{size[1]} is too small for {blocks} pooling blocks (>= {2**blocks})"
        )


class GaussianNoise(nn.Module):
    """Adds N(0, std^2) noise while training (Keras' GaussianNoise layer); the identity otherwise."""

    def __init__(self, std: float) -> None:
        super().__init__()
        self.std = float(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.std > 0:
            return x + torch.randn_like(x) * self.std
        return x


class MaskNoise(nn.Module):
    """While training, sets each pixel (all channels of it) to 0 with probability ``p``: on the
    -1..1 scale of networks trained from scratch that is mid-grey, a masking corruption in the
    manner of stacked denoising autoencoders (Vincent et al., 2010, who mask to black); the
    identity otherwise."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise InputError(f"mask must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.p > 0:
            keep = torch.rand(x.shape[0], 1, *x.shape[2:], device=x.device) >= self.p
            return x * keep.to(x.dtype)
        return x


class SmallCNN(nn.Module):
    """A from-scratch trunk: Conv-BN-ReLU-MaxPool blocks, then global average pooling or flattening."""

    def __init__(self, channels: Sequence[int], size: tuple[int, int], pool: str) -> None:
        super().__init__()
        _check_size(size, len(channels))
        chans = [3, *channels]
        self.blocks = nn.Sequential(
            *(conv_block(a, b, batch_norm=True) for a, b in zip(chans, chans[1:], strict=False))
        )
        self.pool: nn.Module = nn.Flatten() if pool == "flatten" else nn.Sequential(GlobalPool(pool))
        self.out_dim = int(torch.tensor(_out_shape(nn.Sequential(self.blocks, self.pool), size)).prod())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.blocks(x))


def pretrained_backbone(
    name: str,
    *,
    pretrained: bool,
    weights: str | None,
    size: tuple[int, int] | None = None,
    pool: str | None = None,
) -> tuple[nn.Module, int, Preprocess]:
    """A pretrained trunk (``features.backbones``: efficientnet-lite0, resnet50 or ``timm:<model>``)
    with its own pooling (global average for the CNNs, a timm model's pre-logits), its output size
    and its own normalisation; ``weights`` replaces the default pretrained weights.

    ``pretrained=False`` builds the bare architecture (a checkpoint's weights are loaded over it);
    ``size`` is the training image size, which a timm transformer is resized to; ``pool`` replaces
    the trunk's own pooling (``gem``, ``avg``, ...) where it has a feature map; ``auto`` is GeM
    there and the model's own pooling on a transformer's tokens.
    """
    options: dict[str, Any] = {}
    if name == "efficientnet-lite0":
        options["classifier"] = False  # the ImageNet classifier of EfficientNet-Lite0 is not used
    elif (name.startswith("timm:") or name in TIMM_ALIASES) and size is not None:
        options["size"] = tuple(size)  # a timm transformer's position embeddings follow the image size
    backbone = create_backbone(name, pretrained=(weights or True) if pretrained else False, **options)
    if pool == "auto":  # GeM where the trunk gives a feature map, else the model's own pooling
        pool = "gem" if getattr(backbone, "map_channels", backbone.channels) else None
    dim = backbone.channels if pool is None else getattr(backbone, "map_channels", 0) or backbone.channels
    return backbone.pooled(pool), dim, backbone.preprocess


def _set_frozen(module: nn.Module, frozen: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(not frozen)


# --------------------------------------------------------------------------- siamese


class ResidualHead(nn.Module):
    """``x + W x`` with ``W`` starting at zero: training begins from the trunk's own metric and
    learns a correction to it, which keeps a pretrained trunk's generality on small data sets."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.linear(x)


class SiameseNet(TrainableModel):
    """A twin network: one shared trunk + head applied to every image of a pair (or triplet);
    embeddings are L2-normalised, so distances match the cosine search.

    Heads: ``mlp`` (dense, batch norm, ReLU, dense: the study's) or ``residual`` (see ResidualHead).
    """

    def __init__(self, trunk: nn.Module, trunk_dim: int, opts: dict[str, Any]) -> None:
        super().__init__()
        self.trunk = trunk
        if opts["head"] == "residual":
            self.head: nn.Module = ResidualHead(trunk_dim)
        elif opts["head"] == "mlp":
            self.head = nn.Sequential(
                nn.Linear(trunk_dim, opts["hidden"]),
                nn.BatchNorm1d(opts["hidden"]),
                nn.ReLU(inplace=True),
                nn.Linear(opts["hidden"], opts["embed_dim"]),
            )
        else:
            raise InputError(f"siamese: head must be 'mlp' or 'residual', got {opts['head']!r}")
        self.loss_name = opts["loss"]
        # on unit vectors: contrastive pushes non-matches 1.0 apart, triplet wants a 0.2 gap
        self.margin = float(opts["margin"] if opts["margin"] is not None else DEFAULT_MARGINS[self.loss_name])
        self.frozen_trunk = bool(opts["freeze_trunk"])
        _set_frozen(self.trunk, self.frozen_trunk)
        self.sampling = "triplets" if self.loss_name == "triplet" else "pairs"

    def train(self, mode: bool = True) -> SiameseNet:
        super().train(mode)
        if self.frozen_trunk:
            self.trunk.eval()  # a frozen trunk keeps its batch-norm statistics too
        return self

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.trunk(x)), dim=1)

    def loss(self, views: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        # one pass over all views, so batch norm sees the whole batch
        parts = self.embed(torch.cat(list(views))).split([v.shape[0] for v in views])
        if self.loss_name == "triplet":
            return triplet_loss(*parts, margin=self.margin)
        return contrastive_loss(parts[0], parts[1], target, margin=self.margin)

    def features(self) -> nn.Module:
        return nn.Sequential(self.trunk, self.head)


def build_siamese(
    opts: dict[str, Any], n_classes: int, pretrained: bool
) -> tuple[TrainableModel, Preprocess]:
    size = opts["image_size"]
    if opts["loss"] not in ("contrastive", "triplet"):
        raise InputError(f"siamese: loss must be 'contrastive' or 'triplet', got {opts['loss']!r}")
    if opts["trunk"] == "small":
        trunk = SmallCNN(opts["channels"], size, opts["pool"])
        dim, preprocess = trunk.out_dim, Preprocess(size, SCRATCH_MEAN, SCRATCH_STD)
    else:
        trunk, dim, own = pretrained_backbone(
            opts["trunk"], pretrained=pretrained, weights=opts["trunk_weights"], size=size
        )
        preprocess = Preprocess(size, own.mean, own.std)
    return SiameseNet(trunk, dim, opts), preprocess


# --------------------------------------------------------------------------- autoencoder


def _decoder_blocks(channels: Sequence[int]) -> list[nn.Module]:
    """Transposed convolutions doubling the size back up, then a 3x3 conv to RGB and tanh."""
    layers: list[nn.Module] = []
    rev = list(channels)[::-1]
    for c_in, c_out in zip(rev, [*rev[1:], rev[-1]], strict=True):
        layers += [
            nn.ConvTranspose2d(c_in, c_out, 3, stride=2, padding=1, output_padding=1),
            nn.ReLU(inplace=True),
        ]
    layers += [nn.Conv2d(rev[-1], 3, 3, padding=1), nn.Tanh()]
    return layers


class Resize(nn.Module):
    """Bilinear resize to a fixed size, so the decoder's output matches any input size."""

    def __init__(self, size: tuple[int, int]) -> None:
        super().__init__()
        self.size = tuple(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == self.size:
            return x
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)


class ConvAutoencoder(TrainableModel):
    """The study's denoising autoencoder: (GaussianNoise, Conv, ReLU, MaxPool) blocks, an optional
    dense bottleneck, and a transposed-convolution decoder; MSE loss on the clean image. ``mask``
    adds masking corruption of the input (a share of pixels set to mid-grey while training).

    Features: the encoder output (after its last pooling, or the bottleneck), flattened, or
    globally average-pooled with ``features="avg"``.
    """

    def __init__(self, opts: dict[str, Any]) -> None:
        super().__init__()
        size, channels, std = opts["image_size"], list(opts["channels"]), float(opts["noise_std"])
        _check_size(size, len(channels))
        self.mask = MaskNoise(float(opts.get("mask", 0.0)))  # no weights: older checkpoints still load
        layers: list[nn.Module] = []
        for c_in, c_out in zip([3, *channels], channels, strict=False):
            layers += [
                GaussianNoise(std),
                nn.Conv2d(c_in, c_out, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
        self.conv = nn.Sequential(*layers)
        shape = _out_shape(self.conv, size)
        self.latent_dim = int(opts["latent_dim"] or 0)
        self.feature_mode = opts["features"]
        if self.feature_mode not in ("flatten", "avg"):
            raise InputError(f"autoencoder: features must be 'flatten' or 'avg', got {self.feature_mode!r}")
        bottleneck: list[nn.Module] = []
        unbottleneck: list[nn.Module] = []
        if self.latent_dim:
            flat = int(torch.tensor(shape).prod())
            bottleneck = [nn.Flatten(), nn.Linear(flat, self.latent_dim)]
            unbottleneck = [
                nn.Linear(self.latent_dim, flat),
                nn.ReLU(inplace=True),
                nn.Unflatten(1, tuple(shape)),
            ]
        self.encoder = nn.Sequential(self.conv, *bottleneck)
        self.decoder = nn.Sequential(*unbottleneck, *_decoder_blocks(channels), Resize(size))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(self.mask(x)))

    def loss(self, views: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        x = views[0]
        return F.mse_loss(self.reconstruct(x), x)

    def features(self) -> nn.Module:
        if self.latent_dim:
            return self.encoder
        pool = GlobalPool("avg") if self.feature_mode == "avg" else nn.Flatten()
        return nn.Sequential(self.encoder, pool)


def build_autoencoder(
    opts: dict[str, Any], n_classes: int, pretrained: bool
) -> tuple[TrainableModel, Preprocess]:
    return ConvAutoencoder(opts), Preprocess(opts["image_size"], SCRATCH_MEAN, SCRATCH_STD)


# --------------------------------------------------------------------------- VAE


class MeanEncoder(nn.Module):
    """The VAE encoder's deterministic half: image -> latent mean (the search features)."""

    def __init__(self, conv: nn.Module, mu: nn.Module) -> None:
        super().__init__()
        self.conv, self.mu = conv, mu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mu(self.conv(x))


class ConvVAE(TrainableModel):
    """A convolutional VAE: encoder -> (mu, log variance), reparametrised sample, transposed-conv
    decoder; loss = per-pixel squared error + beta * KL / pixels. Features: the latent mean."""

    def __init__(self, opts: dict[str, Any]) -> None:
        super().__init__()
        size, channels, latent = opts["image_size"], list(opts["channels"]), int(opts["latent_dim"])
        _check_size(size, len(channels))
        blocks = [conv_block(a, b, batch_norm=True) for a, b in zip([3, *channels], channels, strict=False)]
        self.conv = nn.Sequential(*blocks, nn.Flatten())
        shape = _out_shape(nn.Sequential(*blocks), size)
        flat = int(torch.tensor(shape).prod())
        self.mu = nn.Linear(flat, latent)
        self.logvar = nn.Linear(flat, latent)
        self.decoder = nn.Sequential(
            nn.Linear(latent, flat),
            nn.ReLU(inplace=True),
            nn.Unflatten(1, tuple(shape)),
            *_decoder_blocks(channels),
            Resize(size),
        )
        self.beta = float(opts["beta"])
        self.encoder = MeanEncoder(self.conv, self.mu)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.conv(x)
        return self.mu(h), self.logvar(h).clamp(-10.0, 10.0)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encode(x)[0])

    def loss(self, views: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        x = views[0]
        mu, logvar = self.encode(x)
        # the reparametrisation trick: z = mu + sigma * eps (the mean itself when evaluating)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        recon = F.mse_loss(self.decoder(z), x, reduction="sum") / x.shape[0]
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum() / x.shape[0]
        return (recon + self.beta * kl) / x[0].numel()

    def features(self) -> nn.Module:
        return self.encoder


def build_vae(opts: dict[str, Any], n_classes: int, pretrained: bool) -> tuple[TrainableModel, Preprocess]:
    return ConvVAE(opts), Preprocess(opts["image_size"], SCRATCH_MEAN, SCRATCH_STD)


# --------------------------------------------------------------------------- study CNN


class StudyCNN(TrainableModel):
    """The study's classifier: Conv16/Conv32/Conv64 (+ReLU, MaxPool), flatten (its size follows the
    input size), dense 1024 + ReLU, dense n_classes; cross-entropy. Features: the 1024-d layer."""

    def __init__(self, opts: dict[str, Any], n_classes: int) -> None:
        super().__init__()
        size, channels = opts["image_size"], list(opts["channels"])
        _check_size(size, len(channels))
        chans = [3, *channels]
        blocks = nn.Sequential(
            *(
                conv_block(a, b, batch_norm=bool(opts["batch_norm"]))
                for a, b in zip(chans, chans[1:], strict=False)
            )
        )
        flat = int(torch.tensor(_out_shape(blocks, size)).prod())
        self.body = nn.Sequential(blocks, nn.Flatten(), nn.Linear(flat, opts["dense"]), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(float(opts["dropout"]))
        self.classifier = nn.Linear(opts["dense"], n_classes)

    def loss(self, views: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.classifier(self.dropout(self.body(views[0]))), target)

    def features(self) -> nn.Module:
        return self.body


def build_cnn(opts: dict[str, Any], n_classes: int, pretrained: bool) -> tuple[TrainableModel, Preprocess]:
    return StudyCNN(opts, n_classes), Preprocess(opts["image_size"], SCRATCH_MEAN, SCRATCH_STD)


# --------------------------------------------------------------------------- fine-tuning


class FinetuneNet(TrainableModel):
    """A pretrained backbone, a dense embedding layer (+ batch norm) and a softmax classifier over
    the training classes; cross-entropy. Features: the embedding (before its ReLU)."""

    def __init__(self, backbone: nn.Module, backbone_dim: int, opts: dict[str, Any], n_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.embedding = nn.Sequential(
            nn.Linear(backbone_dim, opts["embed_dim"]), nn.BatchNorm1d(opts["embed_dim"])
        )
        self.classifier = nn.Sequential(
            nn.ReLU(), nn.Dropout(float(opts["dropout"])), nn.Linear(opts["embed_dim"], n_classes)
        )
        self.frozen_backbone = bool(opts["freeze_backbone"])
        _set_frozen(self.backbone, self.frozen_backbone)

    def train(self, mode: bool = True) -> FinetuneNet:
        super().train(mode)
        if self.frozen_backbone:
            self.backbone.eval()
        return self

    def loss(self, views: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.classifier(self.embedding(self.backbone(views[0]))), target)

    def features(self) -> nn.Module:
        return nn.Sequential(self.backbone, self.embedding)


def build_finetune(
    opts: dict[str, Any], n_classes: int, pretrained: bool
) -> tuple[TrainableModel, Preprocess]:
    backbone, dim, own = pretrained_backbone(
        opts["backbone"], pretrained=pretrained, weights=opts["backbone_weights"], size=opts["image_size"]
    )
    return FinetuneNet(backbone, dim, opts, n_classes), Preprocess(opts["image_size"], own.mean, own.std)


# --------------------------------------------------------------------------- self-supervised


def _has_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def trunk_blocks(module: nn.Module) -> list[str]:
    """The names of a trunk's repeated blocks in forward order: the children of every Sequential or
    ModuleList whose parameterised children are all of one type (EfficientNet's MBConv ``_blocks``,
    ResNet's bottlenecks, a ViT's ``blocks``, the blocks of each timm stage), the innermost where
    such containers nest."""
    groups: list[list[str]] = []
    for name, m in module.named_modules():
        if isinstance(m, nn.Sequential | nn.ModuleList):
            kids = [(f"{name}.{k}" if name else k, c) for k, c in m.named_children() if _has_parameters(c)]
            if len(kids) >= 2 and len({type(c) for _, c in kids}) == 1:
                groups.append([k for k, _ in kids])
    containers = {k.rsplit(".", 1)[0] if "." in k else "" for group in groups for k in group}
    blocks = [k for group in groups for k in group if not any(c.startswith(k + ".") for c in containers)]
    order = {name: i for i, (name, _) in enumerate(module.named_parameters())}
    first = {b: min(i for n, i in order.items() if n.startswith(b + ".")) for b in blocks}
    return sorted(blocks, key=first.__getitem__)


def freeze_early(module: nn.Module, train_blocks: int) -> int:
    """Freeze every parameter of ``module`` before its last ``train_blocks`` blocks (see
    :func:`trunk_blocks`; what follows them, a final norm or head, stays trainable); -1 trains
    everything, 0 nothing. Returns the number of trainable parameters."""
    params = list(module.named_parameters())
    blocks = trunk_blocks(module)
    if not blocks and train_blocks > 0:
        raise InputError(
            f"found no repeated blocks in this trunk to train the last {train_blocks} of; pass "
            "train_blocks=-1 to train it whole"
        )
    if train_blocks < 0 or train_blocks >= len(blocks):
        start = 0
    elif train_blocks == 0:
        start = len(params)
    else:
        first = blocks[-train_blocks] + "."
        start = next(i for i, (name, _) in enumerate(params) if name.startswith(first))
    for i, (_, p) in enumerate(params):
        p.requires_grad_(i >= start)
    return sum(p.numel() for _, p in params[start:])


class SelfSupNet(TrainableModel):
    """A trunk and a projection head trained on two edited views of each unlabelled image: NT-Xent
    (InfoNCE) between the views, plus ``koleo`` times the KoLeo regulariser, as SSCD trains.

    Only the last ``train_blocks`` blocks of a pretrained trunk learn (frozen batch norms keep their
    statistics); a ``small`` trunk, trained from scratch, learns whole. Features: the projection
    (``features=projection``, the default: better on both copy sets) or the pooled trunk (``trunk``).
    """

    sampling = "views"

    def __init__(self, trunk: nn.Module, trunk_dim: int, opts: dict[str, Any]) -> None:
        super().__init__()
        self.trunk = trunk
        embed = int(opts["embed_dim"])
        if opts["head"] == "linear":
            self.head: nn.Module = nn.Linear(trunk_dim, embed)
        elif opts["head"] == "mlp":
            hidden = int(opts["hidden"])
            self.head = nn.Sequential(
                nn.Linear(trunk_dim, hidden),
                nn.BatchNorm1d(hidden),
                nn.ReLU(inplace=True),
                nn.Linear(hidden, embed),
            )
        else:
            raise InputError(f"selfsup: head must be 'linear' or 'mlp', got {opts['head']!r}")
        self.temperature = float(opts["temperature"])
        self.koleo_weight = float(opts["koleo"])
        if self.temperature <= 0:
            raise InputError(f"selfsup: temperature must be positive, got {self.temperature}")
        if self.koleo_weight < 0:
            raise InputError(
                f"selfsup: koleo (the regulariser's weight) must be >= 0, got {self.koleo_weight}"
            )
        self.feature_mode = opts["features"]
        if self.feature_mode not in ("trunk", "projection"):
            raise InputError(f"selfsup: features must be 'trunk' or 'projection', got {self.feature_mode!r}")
        # a trunk trained from scratch learns whole: freezing random weights would keep noise
        blocks = -1 if opts["trunk"] == "small" else int(opts["train_blocks"])
        trainable = freeze_early(self.trunk, blocks)
        if trainable == 0 and self.feature_mode == "trunk":
            raise InputError(
                "selfsup: with train_blocks=0 the trunk does not learn, so its features would not change; "
                "train some blocks (train_blocks=3) or search with the projection (features=projection)"
            )

    def train(self, mode: bool = True) -> SelfSupNet:
        super().train(mode)
        for m in self.trunk.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(
                p.requires_grad for p in m.parameters()
            ):
                m.eval()  # a frozen layer keeps its batch-norm statistics too
        return self

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.trunk(x)), dim=1)

    def loss(self, views: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        first, second = self.embed(torch.cat(list(views))).split([v.shape[0] for v in views])
        value = nt_xent(first, second, temperature=self.temperature)
        if self.koleo_weight > 0:
            value = value + self.koleo_weight * koleo(first, second)
        return value

    def features(self) -> nn.Module:
        return self.trunk if self.feature_mode == "trunk" else nn.Sequential(self.trunk, self.head)


def build_selfsup(
    opts: dict[str, Any], n_classes: int, pretrained: bool
) -> tuple[TrainableModel, Preprocess]:
    size = opts["image_size"]
    if opts["trunk"] == "small":
        trunk = SmallCNN(opts["channels"], size, "gem" if opts["pool"] == "auto" else opts["pool"])
        return SelfSupNet(trunk, trunk.out_dim, opts), Preprocess(size, SCRATCH_MEAN, SCRATCH_STD)
    trunk, dim, own = pretrained_backbone(
        opts["trunk"], pretrained=pretrained, weights=opts["trunk_weights"], size=size, pool=opts["pool"]
    )
    return SelfSupNet(trunk, dim, opts), Preprocess(size, own.mean, own.std)
