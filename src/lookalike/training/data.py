"""Training data: class folders decoded once, a stratified seeded validation split, augmentation.

Images go through the same decoding and resizing as extraction (``extract.DecodedImages``), so a model
sees at training time exactly the pixels it will see when it is searched with.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch.nn import functional as F
from torch.utils.data import DataLoader

from ..errors import ImageError, InputError
from ..extract import DecodedImages, Skipped, _worker_init
from ..images import DEFAULT_MAX_PIXELS, ImageSet

log = logging.getLogger("lookalike")

VAL_SPLITS = ("images", "classes")
# Decoded training images are kept in memory up to this size; above it they are decoded per batch.
PRELOAD_LIMIT_BYTES = 6 * 1024**3


@dataclass(frozen=True)
class Augment:
    """Random changes applied to each training image, on 0..255 float pixels.

    ``flip``: horizontal flip with probability 1/2; ``crop``: random resized crop keeping at least
    this fraction of the area (0 = off); ``jitter``: brightness, contrast and saturation each scaled
    by up to 1 +- jitter; ``noise``: Gaussian noise with this standard deviation (1.0 = full range).
    """

    flip: bool = False
    crop: float = 0.0
    jitter: float = 0.0
    noise: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.crop < 1.0:
            raise InputError(f"crop must be in [0, 1): the smallest area fraction kept, got {self.crop}")
        if not 0.0 <= self.jitter < 1.0:
            raise InputError(f"jitter must be in [0, 1), got {self.jitter}")
        if self.noise < 0.0:
            raise InputError(f"noise must be >= 0, got {self.noise}")

    @property
    def active(self) -> bool:
        return self.flip or self.crop > 0 or self.jitter > 0 or self.noise > 0

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment a float batch (n, 3, h, w) of 0..255 pixels; randomness comes from ``generator``."""
        if not self.active:
            return x
        n = x.shape[0]
        if self.flip or self.crop > 0:
            x = self._geometry(x, generator)
        if self.jitter > 0:
            x = self._colour(x, generator)
        if self.noise > 0:
            noise = torch.randn(x.shape, generator=generator).to(x.device)
            x = (x + noise * (self.noise * 255.0)).clamp(0.0, 255.0)
        assert x.shape[0] == n
        return x

    def _geometry(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n = x.shape[0]
        sx = torch.ones(n)
        sy = torch.ones(n)
        tx = torch.zeros(n)
        ty = torch.zeros(n)
        if self.crop > 0:
            area = self.crop + (1.0 - self.crop) * torch.rand(n, generator=g)
            log_ratio = (torch.rand(n, generator=g) * 2 - 1) * math.log(4 / 3)
            ratio = log_ratio.exp()
            sx = (area * ratio).sqrt().clamp(max=1.0)
            sy = (area / ratio).sqrt().clamp(max=1.0)
            tx = (torch.rand(n, generator=g) * 2 - 1) * (1 - sx)
            ty = (torch.rand(n, generator=g) * 2 - 1) * (1 - sy)
        if self.flip:
            sx = torch.where(torch.rand(n, generator=g) < 0.5, -sx, sx)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = sx, tx, sy, ty
        grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _colour(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n = x.shape[0]

        def factor() -> torch.Tensor:
            return (1.0 + (torch.rand(n, generator=g) * 2 - 1) * self.jitter).view(n, 1, 1, 1).to(x.device)

        x = x * factor()
        grey = x.mean(dim=1, keepdim=True)
        x = (x - grey.mean(dim=(2, 3), keepdim=True)) * factor() + grey.mean(dim=(2, 3), keepdim=True)
        grey = x.mean(dim=1, keepdim=True)
        x = grey + (x - grey) * factor()
        return x.clamp(0.0, 255.0)


class ImageStore:
    """Decoded training images by index: ``take(indices)`` gives a uint8 batch (n, 3, h, w)."""

    def __len__(self) -> int:
        raise NotImplementedError

    def take(self, indices: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def image(self, index: int) -> torch.Tensor:
        """One image (3, h, w) uint8; safe in a DataLoader worker (no thread pool)."""
        return self.take(torch.tensor([index]))[0]


class MemoryStore(ImageStore):
    """All images decoded once into one uint8 tensor: the fast path for sets that fit in memory."""

    def __init__(self, pixels: torch.Tensor) -> None:
        self.pixels = pixels

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def take(self, indices: torch.Tensor) -> torch.Tensor:
        return self.pixels[indices]

    def image(self, index: int) -> torch.Tensor:
        return self.pixels[index]


class DiskStore(ImageStore):
    """Images decoded per batch in a thread pool: for sets too large to keep decoded in memory."""

    def __init__(self, paths: list[Path], size: tuple[int, int], max_pixels: int) -> None:
        self.decoder = DecodedImages(paths, size, max_pixels)
        self.pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1))

    def __len__(self) -> int:
        return len(self.decoder)

    def take(self, indices: torch.Tensor) -> torch.Tensor:
        items = list(self.pool.map(self.decoder.__getitem__, indices.tolist()))
        for i, tensor, reason in items:
            if tensor is None:
                raise ImageError(self.decoder.paths[i], f"{reason} (found while training)")
        return torch.stack([t for _, t, _ in items])

    def image(self, index: int) -> torch.Tensor:
        _, tensor, reason = self.decoder[index]
        if tensor is None:
            raise ImageError(self.decoder.paths[index], f"{reason} (found while training)")
        return tensor


@dataclass
class Split:
    """One side of the data (train or validation): images, integer labels and their file names."""

    store: ImageStore
    labels: torch.Tensor
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class TrainingData:
    """What a run trains and validates on, with the class names and the files left out."""

    train: Split
    val: Split
    class_names: list[str]
    skipped: list[Skipped] = field(default_factory=list)


def stratified_split(
    labels: list[str], fraction: float, seed: int, *, min_per_class: int = 1
) -> tuple[list[int], list[int]]:
    """Indices (train, val): per class, a seeded random ``fraction`` of the images goes to val.

    Each class gives val at least ``min_per_class`` images and keeps as many for training; a class
    too small for both stays in training (pairs need two validation images of a class to match).
    """
    if not 0.0 < fraction < 1.0:
        raise InputError(f"val_fraction must be between 0 and 1 (exclusive), got {fraction}")
    g = torch.Generator().manual_seed(seed)
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    train, val = [], []
    for label in sorted(by_class):
        members = by_class[label]
        order = [members[j] for j in torch.randperm(len(members), generator=g).tolist()]
        n = len(members)
        n_val = (
            min(max(min_per_class, round(n * fraction)), n - min_per_class) if n >= 2 * min_per_class else 0
        )
        val.extend(order[:n_val])
        train.extend(order[n_val:])
    return sorted(train), sorted(val)


def class_split(
    labels: list[str], fraction: float, seed: int, folder: str | Path
) -> tuple[list[int], list[int]]:
    """Indices (train, val) holding out a seeded ``fraction`` of the classes (at least two, and at
    least two left to train on): validation on classes never trained on, as open-set search is."""
    classes = sorted(set(labels))
    if len(classes) < 4:
        raise InputError(
            f"training folder {folder}: holding out whole classes for validation needs at least 4 "
            f"class folders (found {len(classes)})"
        )
    if not 0.0 < fraction < 1.0:
        raise InputError(f"val_fraction must be between 0 and 1 (exclusive), got {fraction}")
    order = torch.randperm(len(classes), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(max(2, round(len(classes) * fraction)), len(classes) - 2)
    held_out = {classes[j] for j in order[:n_val]}
    val = [i for i, label in enumerate(labels) if label in held_out]
    return [i for i, label in enumerate(labels) if label not in held_out], val


def discover(folder: str | Path, *, needs_labels: bool, what: str) -> ImageSet:
    """The image files under ``folder``; with ``needs_labels`` they must lie in class folders."""
    path = Path(folder)
    if not path.is_dir():
        raise InputError(f"{what} {path}: not a folder (expected {path}/<class>/<image files>)")
    images = ImageSet.from_path(path)
    if needs_labels and not images.labelled:
        raise InputError(
            f"{what} {path}: put every image in a class folder ({path}/<class>/x.jpg); "
            "the class names are the labels"
        )
    return images


def decode_all(
    images: ImageSet, size: tuple[int, int], *, max_pixels: int = DEFAULT_MAX_PIXELS, what: str = "images"
) -> tuple[ImageSet, ImageStore, list[Skipped]]:
    """Decode every image at ``size``, leaving out unreadable ones with a warning.

    Returns the readable images, a store of their pixels (in memory when they fit under
    ``PRELOAD_LIMIT_BYTES``, else decoded per batch) and the skipped files.
    """
    n_bytes = len(images) * 3 * size[0] * size[1]
    if n_bytes > PRELOAD_LIMIT_BYTES:
        return _check_headers(images, size, max_pixels, what)
    dataset = DecodedImages(images.paths, size, max_pixels)
    workers = min(4, os.cpu_count() or 1) if len(images) >= 512 else 0
    loader = DataLoader(
        dataset,
        batch_size=256,
        num_workers=workers,
        collate_fn=_as_list,
        worker_init_fn=_worker_init if workers else None,
    )
    pixels = torch.empty((len(images), 3, *size), dtype=torch.uint8)
    ok = torch.zeros(len(images), dtype=torch.bool)
    skipped: list[Skipped] = []
    for items in loader:
        for i, tensor, reason in items:
            if tensor is None:
                skipped.append(_skip(images, i, reason))
            else:
                pixels[i], ok[i] = tensor, True
    keep = torch.nonzero(ok).flatten()
    if len(keep) == 0:
        raise InputError(f"{what} {images.source}: none of the {len(images)} image file(s) could be read")
    return images.subset(keep.tolist()), MemoryStore(pixels[keep].contiguous()), skipped


def _as_list(items: list) -> list:
    """Keep a loader batch as the list of (index, tensor or None, reason) items."""
    return items


def _check_headers(
    images: ImageSet, size: tuple[int, int], max_pixels: int, what: str
) -> tuple[ImageSet, ImageStore, list[Skipped]]:
    keep, skipped = [], []
    for i, path in enumerate(images.paths):
        try:
            with Image.open(path) as img:
                img.size  # noqa: B018  (reading the header is the check)
            keep.append(i)
        except Exception as exc:
            skipped.append(_skip(images, i, f"not a readable image ({exc})"))
    if not keep:
        raise InputError(f"{what} {images.source}: none of the {len(images)} image file(s) could be read")
    kept = images.subset(keep)
    log.info("%s: %d images do not fit in memory at %s; decoding them per batch", what, len(kept), size)
    return kept, DiskStore(kept.paths, size, max_pixels), skipped


def _skip(images: ImageSet, i: int, reason: str) -> Skipped:
    log.warning("skipped %s: %s", images.paths[i], reason)
    return Skipped(images.names[i], reason)


def limit_per_class(images: ImageSet, limit: int | None, seed: int) -> ImageSet:
    """At most ``limit`` images of each class (a seeded random choice), to train on a subset."""
    if limit is None or images.labels is None:
        return images
    if limit < 2:
        raise InputError(f"max_per_class must be at least 2, got {limit}")
    g = torch.Generator().manual_seed(seed + 7919)
    by_class: dict[str, list[int]] = {}
    for i, label in enumerate(images.labels):
        by_class.setdefault(label, []).append(i)
    keep: list[int] = []
    for label in sorted(by_class):
        members = by_class[label]
        order = torch.randperm(len(members), generator=g)[:limit].tolist()
        keep.extend(members[j] for j in order)
    return images.subset(sorted(keep))


def load_training_data(
    train_dir: str | Path,
    *,
    val_dir: str | Path | None,
    val_fraction: float,
    size: tuple[int, int],
    needs_labels: bool,
    seed: int,
    max_per_class: int | None = None,
    min_val_per_class: int = 1,
    val_split: str = "images",
    use_labels: bool = True,
) -> TrainingData:
    """Discover, check, split and decode the training (and validation) images.

    With ``needs_labels`` the images must lie in class folders, with at least two classes; when
    the validation images are split off, every class needs at least two readable images.
    ``val_split="classes"`` holds out whole classes instead (open-set validation, for metric learning).
    ``use_labels=False`` ignores class folders altogether (self-supervised methods): a seeded random
    share of all the images is held out.
    """
    if val_split not in VAL_SPLITS:
        raise InputError(f"val_split must be one of {', '.join(VAL_SPLITS)}, got {val_split!r}")
    images = limit_per_class(
        _labels_used(discover(train_dir, needs_labels=needs_labels, what="training folder"), use_labels),
        max_per_class,
        seed,
    )
    if needs_labels:
        _check_classes(images, train_dir)
    kept, store, skipped = decode_all(images, size, what="training folder")
    labels = kept.labels or ["all"] * len(kept)
    class_names = sorted(set(labels)) if kept.labelled else []
    if needs_labels:
        _check_classes(kept, train_dir)
    if val_dir is None and val_split == "classes":
        train_idx, val_idx = class_split(labels if kept.labelled else [], val_fraction, seed, train_dir)
        class_names = sorted({labels[i] for i in train_idx})
        train = _split_of(kept, store, train_idx, class_names)
        val = _split_of(kept, store, val_idx, class_names, open_set=True)
    elif val_dir is None:
        if needs_labels:
            _check_class_sizes(labels, train_dir)
        elif len(kept) < 2 * min_val_per_class:
            raise InputError(
                f"training folder {train_dir}: {len(kept)} readable image(s); at least "
                f"{2 * min_val_per_class} are needed ({min_val_per_class} to train on and as many to validate on)"
            )
        # Unsupervised methods stratify by class when they can, else split at random.
        strata = labels if min(Counter(labels).values()) >= 2 else ["all"] * len(kept)
        train_idx, val_idx = stratified_split(strata, val_fraction, seed, min_per_class=min_val_per_class)
        if not val_idx:
            raise InputError(
                f"training folder {train_dir}: no class has enough images to split off validation pairs "
                f"(needs {2 * min_val_per_class} in a class); add images or pass a validation folder"
            )
        train = _split_of(kept, store, train_idx, class_names)
        val = _split_of(kept, store, val_idx, class_names)
    else:
        train = _split_of(kept, store, list(range(len(kept))), class_names)
        val_images = _labels_used(
            discover(val_dir, needs_labels=needs_labels, what="validation folder"), use_labels
        )
        val_kept, val_store, val_skipped = decode_all(val_images, size, what="validation folder")
        skipped += val_skipped
        val = _split_of(val_kept, val_store, list(range(len(val_kept))), class_names, open_set=True)
    return TrainingData(train, val, class_names, skipped)


def _labels_used(images: ImageSet, use_labels: bool) -> ImageSet:
    """``images`` as they are, or without their class-folder labels."""
    if not use_labels:
        images.labels = None
    return images


def _check_classes(images: ImageSet, folder: str | Path) -> None:
    classes = sorted(set(images.labels or []))
    if len(classes) < 2:
        found = f"only the class {classes[0]!r}" if classes else "no class"
        raise InputError(
            f"training folder {folder}: {found} found; this method learns from labels, so it needs at "
            "least two class folders (<folder>/<class>/x.jpg)"
        )


def _check_class_sizes(labels: list[str], folder: str | Path) -> None:
    counts = Counter(labels)
    small = sorted(c for c, n in counts.items() if n < 2)
    if small:
        shown = ", ".join(repr(c) for c in small[:5]) + (" ..." if len(small) > 5 else "")
        raise InputError(
            f"training folder {folder}: {len(small)} class(es) have a single readable image ({shown}); "
            "a stratified validation split needs at least two per class. Add images, remove those "
            "folders, or pass a separate validation folder (val_dir / --val)"
        )


def _split_of(
    images: ImageSet, store: ImageStore, indices: list[int], class_names: list[str], *, open_set: bool = False
) -> Split:
    """The images at ``indices`` as a Split; labels are class ids, or -1 for classes not trained on."""
    ids = {name: i for i, name in enumerate(class_names)}
    labels = images.labels or [""] * len(images)
    if open_set:
        # Validation classes need not be training classes (open-set metric learning): number the new
        # ones after the known ones so pairs still know who matches whom.
        extra = sorted({lab for lab in labels if lab not in ids})
        ids = {**ids, **{lab: len(class_names) + k for k, lab in enumerate(extra)}}
    index = torch.tensor(indices, dtype=torch.long)
    sub_store = (
        store if len(indices) == len(store) and indices == list(range(len(store))) else _Subset(store, index)
    )
    return Split(
        sub_store, torch.tensor([ids.get(labels[i], -1) for i in indices]), [images.names[i] for i in indices]
    )


class _Subset(ImageStore):
    """A view of some of another store's images."""

    def __init__(self, base: ImageStore, index: torch.Tensor) -> None:
        self.base, self.index = base, index

    def __len__(self) -> int:
        return len(self.index)

    def take(self, indices: torch.Tensor) -> torch.Tensor:
        return self.base.take(self.index[indices])

    def image(self, index: int) -> torch.Tensor:
        return self.base.image(int(self.index[index]))
