"""Shared fixtures: real photos from scikit-image, laid out as small labelled sets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from lookalike.samples import make_copy_detection_set

SMALL_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera")
TRAINING_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own feature cache, so nothing leaks between tests or to ~/.cache."""
    monkeypatch.setenv("LOOKALIKE_CACHE", str(tmp_path_factory.mktemp("cache")))
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(scope="session")
def photo_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(query, gallery) folders: 5 real photos, 1 edited query copy and 3 gallery copies each."""
    root = tmp_path_factory.mktemp("photos")
    return make_copy_detection_set(root, photos=SMALL_PHOTOS, gallery_copies=3, seed=1)


@pytest.fixture(scope="session")
def training_photos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(query, train) class folders: 4 real photos, 1 query copy and 6 edited training copies each."""
    root = tmp_path_factory.mktemp("train-photos")
    return make_copy_detection_set(root, photos=TRAINING_PHOTOS, gallery_copies=6, seed=2)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread: small models train faster and exactly reproducibly on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
