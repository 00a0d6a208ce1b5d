"""Extraction: the feature cache, bad-file policy and worker processes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from lookalike import ExtractOptions, ImageError, ImageSet, create_extractor, embed


def test_cache_hit_then_only_changed_files(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    gallery = tmp_path / "gallery"
    shutil.copytree(photo_set[1], gallery)
    images = ImageSet.from_path(gallery)
    extractor = create_extractor("efficientnet-lite0")
    opts = ExtractOptions(cache_dir=tmp_path / "cache", progress=False)
    first = embed(extractor, images, opts)
    assert (first.n_extracted, first.n_cached) == (len(images), 0)
    second = embed(extractor, images, opts)
    assert (second.n_extracted, second.n_cached) == (0, len(images))
    np.testing.assert_array_equal(first.features, second.features)
    stat = images.paths[0].stat()
    os.utime(images.paths[0], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    third = embed(extractor, images, opts)
    assert (third.n_extracted, third.n_cached) == (1, len(images) - 1)
    other = embed(create_extractor("pixels"), images, opts)  # another model has its own entries
    assert other.n_extracted == len(images)


def _with_bad_files(photo_set: tuple[Path, Path], tmp_path: Path) -> Path:
    folder = tmp_path / "mixed"
    shutil.copytree(photo_set[0], folder)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "fake.png").write_text("hello")
    return folder


def test_bad_files_are_skipped_and_reported(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    images = ImageSet.from_path(_with_bad_files(photo_set, tmp_path))
    emb = embed(create_extractor("pixels"), images, ExtractOptions(use_cache=False, progress=False))
    assert len(emb.indices) == len(images) - 2
    reasons = {s.path: s.reason for s in emb.skipped}
    assert reasons.keys() == {"empty.jpg", "fake.png"}
    assert "empty" in reasons["empty.jpg"] and "not an image" in reasons["fake.png"]
    with pytest.raises(ImageError, match="empty.jpg"):
        embed(
            create_extractor("pixels"),
            images,
            ExtractOptions(use_cache=False, progress=False, strict=True),
        )


def test_worker_processes_give_the_same_features(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    images = ImageSet.from_path(_with_bad_files(photo_set, tmp_path))
    extractor = create_extractor("pixels", size=16)
    inline = embed(
        extractor,
        images,
        ExtractOptions(use_cache=False, progress=False, num_workers=0, batch_size=4),
    )
    workers = embed(
        extractor,
        images,
        ExtractOptions(use_cache=False, progress=False, num_workers=2, batch_size=4),
    )
    np.testing.assert_array_equal(inline.indices, workers.indices)
    np.testing.assert_allclose(inline.features, workers.features)
    assert len(workers.skipped) == 2


def test_device_jpeg_decoding_matches_the_pil_path(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    """The GPU fast path's decoder (torchvision decode_jpeg + antialiased resize), run on the CPU."""
    from PIL import Image

    folder = tmp_path / "mixed"
    shutil.copytree(photo_set[0], folder)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(folder / "coffee" / "coffee_query0.jpg").save(folder / "rotated.jpg", exif=exif, quality=95)
    Image.open(folder / "rocket" / "rocket_query0.jpg").save(folder / "rocket.png")  # not a JPEG: CPU path
    good = (folder / "chelsea" / "chelsea_query0.jpg").read_bytes()
    (folder / "cut.jpg").write_bytes(good[: len(good) // 3])  # a JPEG header, then nothing
    images = ImageSet.from_path(folder)
    extractor = create_extractor("efficientnet-lite0")
    base = ExtractOptions(use_cache=False, progress=False, runtime="torch", batch_size=4)
    pil = embed(extractor, images, base)
    device = embed(extractor, images, ExtractOptions(**{**base.__dict__, "decode": "device"}))
    np.testing.assert_array_equal(pil.indices, device.indices)
    assert [s.path for s in device.skipped] == ["cut.jpg"]
    cosines = np.sum(pil.features * device.features, axis=1)
    assert cosines.min() > 0.97, cosines
