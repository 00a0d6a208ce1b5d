"""Edited views of gallery images: the matching pairs a learned whitening (``--whiten-views``) is
fitted on, made from the gallery itself so no labels are needed.

Each view is drawn by the self-supervised trainer's own edits (:class:`CopyAugment` defaults:
crops, turns, colour, text, shapes, pasting into another gallery image, JPEG) from a generator
seeded by (seed, image, view), so the same gallery always gives the same whitening. Views are
written to a temporary folder of our own, described by the gallery's model with the feature cache
off, and removed; no file of the user's is written. A large gallery lends views from a seeded
sample of ``max_images`` images: a 1,280-d covariance needs a few thousand pairs, not millions.
Views are made and described :data:`CHUNK` images at a time, so disk use stays bounded.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from .cache import file_key
from .errors import ImageError, InputError
from .extract import ExtractOptions, embed
from .features.base import Extractor
from .fileio import atomic_write
from .images import ImageSet, load_image
from .steps import ViewSource

MAX_IMAGES = 1000  # gallery images that lend views (BENCHMARKS.md: fmnist, 9,000 images, sampled)
MAX_SIDE = 1024  # images are brought down to this long side before editing (the model sees 224-448)
CHUNK = 64  # gallery images whose views are on disk at once (PNG up to 1024 px: about 200 MB)
log = logging.getLogger("lookalike")


def view_rows(n: int, max_images: int = MAX_IMAGES, seed: int = 0) -> np.ndarray:
    """The gallery rows that lend views: all of them, or a seeded sample of ``max_images``."""
    if n <= max_images:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_images, replace=False))


def edited_views(
    extractor: Extractor,
    images: ImageSet,
    views: int,
    options: ExtractOptions | None = None,
    *,
    max_images: int = MAX_IMAGES,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, vectors): ``vectors[i, j]`` describes the j-th edited view of ``images.paths[rows[i]]``.
    An image that cannot be read again, or a view the model skips, drops that image's row."""
    rows = view_rows(len(images.paths), max_images, seed)
    if len(rows) < 2:
        raise InputError(
            f"--whiten-views: the gallery has {len(rows)} image(s); a learned whitening needs 2 or more"
        )
    from .training.copyaug import CopyAugment  # here: the training package imports the pipeline's

    augment = CopyAugment()
    opts = replace(options or ExtractOptions(), use_cache=False, strict=False)  # (the bar as asked)

    def read(i: int) -> Image.Image:  # big photos decode at a reduced scale (JPEG draft), then shrink
        image = load_image(images.paths[i], max_pixels=opts.max_pixels, draft_size=MAX_SIDE // 2)
        image.thumbnail((MAX_SIDE, MAX_SIDE))
        return image

    def draw(a: int, i: int, base: Image.Image, j: int) -> Image.Image:
        rng = np.random.default_rng([seed, i, j])

        def other() -> Image.Image:
            return read(int(rows[(a + 1 + int(rng.integers(len(rows) - 1))) % len(rows)]))

        try:
            return augment.view(base, rng, other)
        except ImageError:  # the image to paste into is unreadable now: this view without pasting
            return augment.view(base, np.random.default_rng([seed, i, j]))

    kept: list[int] = []
    vectors: list[np.ndarray] = []
    for start in range(0, len(rows), CHUNK):  # a chunk's views on disk at a time, not the whole set
        with tempfile.TemporaryDirectory(prefix="lookalike-views-") as scratch:
            files: list[Path] = []
            owners: list[int] = []
            for a in range(start, min(start + CHUNK, len(rows))):
                i = int(rows[a])
                try:
                    base = read(i)
                except ImageError:  # unreadable now (it was read for its vector before): no views
                    continue
                for j in range(views):
                    files.append(Path(scratch) / f"{i}_{j}.png")
                    draw(a, i, base, j).save(files[-1])
                    owners.append(i)
            if not files:
                continue
            last = min(start + CHUNK, len(rows))
            label = f"whitening views of images {start + 1}-{last} of {len(rows)}"
            found = embed(extractor, ImageSet(files, Path(scratch)), opts, label=label)
        rows_of = np.full((len(files), found.features.shape[1]), np.nan, dtype=np.float32)
        rows_of[found.indices] = found.features
        grouped = rows_of.reshape(-1, views, rows_of.shape[1])
        complete = ~np.isnan(grouped).any(axis=(1, 2))  # every view of the image was described
        kept += np.asarray(owners[::views])[complete].tolist()
        vectors.append(grouped[complete])
    if len(kept) < 2:
        raise InputError(
            f"--whiten-views: {len(kept)} of {len(rows)} gallery images could be read again to draw edited "
            f"views (moved or deleted since?), 2 are needed; give --whiten-views 0 for PCA whitening"
        )
    if len(kept) < len(rows):  # skipped, never silently: a batch run reports what it left out
        log.warning(
            "learned whitening: %d of %d gallery images could not be read again to draw edited views; "
            "learned from the other %d",
            len(rows) - len(kept),
            len(rows),
            len(kept),
        )
    return np.asarray(kept), np.concatenate(vectors)


def view_source(
    extractor: Extractor,
    images: ImageSet,
    options: ExtractOptions | None = None,
    *,
    max_images: int = MAX_IMAGES,
    seed: int = 0,
) -> ViewSource:
    """The :data:`~lookalike.steps.ViewSource` of a gallery whose ``images`` are in vector order:
    views are only drawn when a learned whitening is fitted, and their vectors are kept in the
    feature cache (``options.cache_dir``) under the model, the settings and every gallery file's
    identity (path, size, mtime), so searching an unchanged folder again draws none."""
    opts = options or ExtractOptions()

    def source(views: int) -> tuple[np.ndarray, np.ndarray]:
        path = None
        if opts.use_cache and opts.cache_dir is not None:
            key = _views_key(extractor, images, views, max_images, seed)
            path = Path(opts.cache_dir) / "views" / f"{key}.npz"
            try:
                with np.load(path, allow_pickle=False) as saved:
                    return saved["rows"], saved["vectors"]
            except (OSError, ValueError, KeyError):  # not there yet (or unreadable): draw them
                pass
        rows, vectors = edited_views(extractor, images, views, opts, max_images=max_images, seed=seed)
        if path is not None:
            buffer = io.BytesIO()
            np.savez(buffer, rows=rows, vectors=vectors)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(path, lambda h: h.write(buffer.getvalue()))
            except OSError as exc:  # a read-only cache costs the next search time, not this result
                log.warning("learned whitening: could not cache the views in %s (%s)", path.parent, exc)
        return rows, vectors

    return source


def _views_key(extractor: Extractor, images: ImageSet, views: int, max_images: int, seed: int) -> str:
    """What the views depend on: the model, how they are drawn, and each gallery file as it is now."""
    from .training.copyaug import CopyAugment

    settings = {
        "model": extractor.key,
        "views": views,
        "max_images": max_images,
        "seed": seed,
        "max_side": MAX_SIDE,
        "edits": repr(CopyAugment()),
        "files": [file_key(p) for p in images.paths],
    }
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]
