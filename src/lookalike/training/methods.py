"""The method table: each learned method's defaults, option types and network builder.

``METHODS[name]`` says what ``train(name, ...)`` accepts and builds; ``build_model`` rebuilds a
network from a checkpoint's saved options.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..errors import InputError
from ..features.base import Preprocess
from ..registry import Registry, coerce
from .copyaug import CopyAugment
from .data import Augment
from .models import (
    TrainableModel,
    build_autoencoder,
    build_cnn,
    build_finetune,
    build_selfsup,
    build_siamese,
    build_vae,
)

Builder = Callable[[dict[str, Any], int, bool], tuple[TrainableModel, Preprocess]]


@dataclass(frozen=True)
class MethodSpec:
    """One learned method: its defaults (model options, augmentation, optimiser) and its builder."""

    name: str
    description: str
    needs_labels: bool
    build: Builder
    options: dict[str, Any]
    augment: Augment | CopyAugment = field(default_factory=Augment)
    lr: float = 1e-3
    trunk_lr: float = 1e-4  # the rate when a pretrained trunk is trained (see default_lr)
    batch_size: int = 64
    epochs: int = 30
    uses_labels: bool = True  # False: class folders are ignored altogether (self-supervised)
    # named sets of option defaults (``-O recipe=NAME``); the user's own options still win
    recipes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.recipes:
            return
        unknown = sorted({k for values in self.recipes.values() for k in values} - self.known_options())
        if "recipe" not in self.options or unknown:  # a plug-in's method spec, checked when registered
            raise InputError(
                f"training method {self.name!r}: recipes need a 'recipe' default in options and may set "
                f"only its options{'; unknown: ' + ', '.join(unknown) if unknown else ''}"
            )

    def default_lr(self, options: dict[str, Any]) -> float:
        """The method's learning rate; a pretrained trunk that is being trained gets ``trunk_lr``
        (1e-4 for the supervised methods) so its ImageNet features are adapted rather than
        overwritten."""
        if options.get("trunk", "small") != "small" and not options.get("freeze_trunk"):
            return self.trunk_lr
        return self.lr

    def known_options(self) -> set[str]:
        """Every option name the method takes: its model options, its augmentation's fields and,
        where labels are used, ``max_per_class``."""
        label_options = {"max_per_class"} if self.uses_labels else set()
        return set(self.options) | {f.name for f in fields(self.augment)} | label_options

    def resolve(self, given: dict[str, Any]) -> tuple[dict[str, Any], Augment, int | None]:
        """(model options, augmentation, max_per_class) from the defaults and the user's options."""
        known = self.known_options()
        unknown = sorted(set(given) - known)
        if unknown:
            raise InputError(
                f"{self.name}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        if self.recipes:
            recipe = str(given.get("recipe", self.options["recipe"]))
            if recipe not in self.recipes:
                raise InputError(
                    f"{self.name}: unknown recipe {recipe!r}; choose one of {', '.join(self.recipes)}"
                )
            given = {**self.recipes[recipe], **given, "recipe": recipe}
        given = {k: coerce_option(k, v, self.name) for k, v in given.items()}
        opts = {**self.options, **{k: v for k, v in given.items() if k in self.options}}
        opts["image_size"] = _size_pair(opts["image_size"])
        aug = {k: given[k] for k in {f.name for f in fields(self.augment)} & set(given)}
        augment = replace(self.augment, **aug)
        return opts, augment, given.get("max_per_class")


# The type of every method option, so values given as text (``-O freeze_trunk=false``) mean what they say.
OPTION_TYPES: dict[str, Any] = {
    **dict.fromkeys(
        (
            "trunk",
            "trunk_weights",
            "pool",
            "head",
            "loss",
            "features",
            "backbone",
            "backbone_weights",
            "recipe",
        ),
        str,
    ),
    **dict.fromkeys(("freeze_trunk", "freeze_backbone", "batch_norm", "flip"), bool),
    **dict.fromkeys(
        (
            "hidden",
            "embed_dim",
            "pairs_per_epoch",
            "images_per_epoch",
            "latent_dim",
            "dense",
            "max_per_class",
            "train_blocks",
        ),
        int,
    ),
    **dict.fromkeys(("margin", "noise_std", "mask", "beta", "dropout", "crop", "jitter", "noise"), float),
    **dict.fromkeys(
        ("temperature", "koleo", "rotate", "grey", "blur", "jpeg", "text", "shapes", "paste"), float
    ),
    "channels": "ints",
    "image_size": "size",
}


def coerce_option(name: str, value: Any, method: str = "training") -> Any:
    """``value`` as the type option ``name`` takes (None stays None), or an InputError saying why
    not, in the format every registry uses."""
    kind = OPTION_TYPES.get(name, Any)
    if value is None or kind in (Any, "size"):
        return value
    if kind == "ints":
        try:
            items = value.split(",") if isinstance(value, str) else list(value)
            return [int(v) for v in items]
        except (TypeError, ValueError):
            raise InputError(
                f"training method {method!r}: option {name} must be whole numbers (16,32,64), got {value!r}"
            ) from None
    return coerce(f"training method {method!r}", name, value, kind)


def _size_pair(value: Any) -> tuple[int, int]:
    """An image size as (height, width) from an int or a pair."""
    if isinstance(value, int | float | str):
        value = (int(value), int(value))
    h, w = (int(v) for v in value)
    if not (min(h, w) >= 8 and max(h, w) <= 1024):
        raise InputError(f"image_size must be between 8 and 1024 pixels, got {h}x{w}")
    return h, w


# selfsup's recipes: "copies" (the defaults: the same picture edited, as SSCD and DISC21) and
# "classes" (the same kind of thing: milder crops, no copy edits, the pooled trunk searched), each
# measured in BENCHMARKS.md ("Self-supervised training").
SELFSUP_RECIPES: dict[str, dict[str, Any]] = {
    "copies": {},
    "classes": {
        "crop": 0.5,
        "rotate": 10.0,
        "jpeg": 0.0,
        "text": 0.0,
        "shapes": 0.0,
        "paste": 0.0,
        "features": "trunk",
    },
}

METHODS: dict[str, MethodSpec] = {
    "siamese": MethodSpec(
        "siamese",
        "twin network on balanced pairs (contrastive loss) or triplets; small CNN or pretrained trunk",
        True,
        build_siamese,
        {
            "trunk": "small",
            "trunk_weights": None,
            "freeze_trunk": False,
            "channels": [32, 64, 128],
            "pool": "avg",
            "head": "mlp",
            "hidden": 512,
            "embed_dim": 128,
            "loss": "contrastive",
            "margin": None,
            "pairs_per_epoch": None,
            "image_size": 64,
        },
        Augment(flip=True, crop=0.8, jitter=0.2),
    ),
    "autoencoder": MethodSpec(
        "autoencoder",
        "denoising convolutional autoencoder (Gaussian-noise layers); features: the encoder output",
        False,
        build_autoencoder,
        {
            "channels": [32, 64, 128],
            "noise_std": 0.3,
            "mask": 0.0,
            "latent_dim": None,
            "features": "flatten",
            "image_size": 64,
        },
    ),
    "vae": MethodSpec(
        "vae",
        "convolutional variational autoencoder; features: the latent mean",
        False,
        build_vae,
        {"channels": [32, 64, 128], "latent_dim": 64, "beta": 1.0, "image_size": 64},
    ),
    "cnn": MethodSpec(
        "cnn",
        "the study's CNN (Conv16/32/64, dense 1024, softmax); features: the 1024-d layer",
        True,
        build_cnn,
        {"channels": [16, 32, 64], "dense": 1024, "dropout": 0.0, "batch_norm": False, "image_size": 64},
        Augment(flip=True),
    ),
    "finetune": MethodSpec(
        "finetune",
        "pretrained backbone + dense embedding + softmax, fine-tuned; features: the embedding",
        True,
        build_finetune,
        {
            "backbone": "efficientnet-lite0",
            "backbone_weights": None,
            "freeze_backbone": False,
            "embed_dim": 256,
            "dropout": 0.2,
            "image_size": 224,
        },
        Augment(flip=True),
        lr=1e-4,
        batch_size=32,
        epochs=15,
    ),
    "selfsup": MethodSpec(
        "selfsup",
        "self-supervised on unlabelled images: two copy-like views per image, NT-Xent + KoLeo "
        "(as SSCD); pretrained trunk, last blocks trained, projection head",
        False,
        build_selfsup,
        {
            "recipe": "copies",
            "trunk": "efficientnet-lite0",
            "trunk_weights": None,
            "train_blocks": 3,
            "channels": [32, 64, 128],
            "pool": "auto",
            "head": "linear",
            "hidden": 1024,
            "embed_dim": 256,
            "temperature": 0.1,
            "koleo": 1.0,
            "features": "projection",
            "images_per_epoch": None,
            "image_size": 224,
        },
        CopyAugment(),
        lr=1e-3,
        trunk_lr=1e-3,  # measured against 1e-4 and 3e-4 on disc-copies (BENCHMARKS.md)
        batch_size=32,
        epochs=10,
        uses_labels=False,
        recipes=SELFSUP_RECIPES,
    ),
}


TRAINING_METHODS: Registry[tuple[TrainableModel, Preprocess]] = Registry("training method")
for _spec in METHODS.values():
    TRAINING_METHODS.register(_spec.name, _spec.build, description=_spec.description, spec=_spec)


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add a training method (its defaults and network builder) for ``train`` and ``lookalike train``;
    ``METHODS`` stays the table of the built-in ones."""
    TRAINING_METHODS.register(spec.name, spec.build, description=spec.description, spec=spec)
    return spec


def method_spec(name: str) -> MethodSpec:
    """The MethodSpec called ``name``, or the registry's InputError listing the methods."""
    return TRAINING_METHODS.get(name).info["spec"]


def build_model(
    method: str, options: dict[str, Any], n_classes: int, *, pretrained: bool
) -> tuple[TrainableModel, Preprocess]:
    """The network of ``method`` with resolved ``options``; ``pretrained=False`` skips loading
    ImageNet weights (a checkpoint's state dict replaces them)."""
    if method_spec(method).needs_labels and n_classes < 2:
        raise InputError(f"{method}: needs at least two classes, got {n_classes}")
    spec = method_spec(method)
    # options a checkpoint predates take their defaults, so older checkpoints still load
    opts = {**spec.options, **options}
    opts["image_size"] = _size_pair(opts["image_size"])
    return spec.build(opts, n_classes, pretrained)
