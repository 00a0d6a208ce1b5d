"""Extractors: registry, the EfficientNet-Lite0 port on real photos, ResNet50 weight loading."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from lookalike import (
    ExtractOptions,
    ImageSet,
    InputError,
    WeightsUnavailableError,
    create_extractor,
    embed,
    list_extractors,
)
from lookalike.extract import DecodedImages
from lookalike.samples import sample_photo

# ImageNet class ids (torchvision's order)
CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {504, 967, 968}  # coffee mug, espresso, cup
MOTORBIKES = {665, 670}  # moped, motor scooter


def _batch(names: list[str], extractor, tmp_path: Path) -> torch.Tensor:
    paths = []
    for name in names:
        sample_photo(name).save(tmp_path / f"{name}.png")
        paths.append(tmp_path / f"{name}.png")
    data = DecodedImages(paths, extractor.preprocess.size, 10**9)
    return torch.stack([data[i][1] for i in range(len(paths))]).float()


def test_efficientnet_lite0_port_classifies_real_photos(tmp_path: Path) -> None:
    extractor = create_extractor("efficientnet-lite0")
    pixels = _batch(["chelsea", "coffee", "stereo_motorcycle"], extractor, tmp_path)
    net = extractor.module.body.trunk.net
    with torch.inference_mode():
        logits = net((pixels - extractor.module.mean) / extractor.module.std)
    top1 = logits.argmax(1).tolist()
    assert top1[0] in CATS and top1[1] in COFFEE and top1[2] in MOTORBIKES
    assert extractor.dim == 1280


def test_features_are_normalised_float32(photo_set: tuple[Path, Path]) -> None:
    images = ImageSet.from_path(photo_set[0])
    for name in ("pixels", "efficientnet-lite0"):
        emb = embed(create_extractor(name), images, ExtractOptions(progress=False, use_cache=False))
        assert emb.features.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(emb.features, axis=1), 1.0, atol=1e-5)


def test_onnx_runtime_matches_eager(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    images = ImageSet.from_path(photo_set[0])
    extractor = create_extractor("efficientnet-lite0")
    eager = embed(extractor, images, ExtractOptions(runtime="torch", use_cache=False, progress=False))
    onnx = embed(
        extractor,
        images,
        ExtractOptions(runtime="onnx", use_cache=False, cache_dir=tmp_path, progress=False),
    )
    assert list((tmp_path / "onnx").glob("*.onnx"))
    np.testing.assert_allclose(onnx.features, eager.features, atol=1e-4)


def test_pixels_options() -> None:
    grey = create_extractor("pixels", size=8, grey=True)
    assert grey.dim == 64 and create_extractor("pixels").dim == 32 * 32 * 3
    with pytest.raises(InputError, match="size"):
        create_extractor("pixels", size=2)


def test_registry_errors_and_listing() -> None:
    names = [info.name for info in list_extractors()]
    assert {"resnet50", "efficientnet-lite0", "pixels"} <= set(names)
    with pytest.raises(InputError, match="unknown model 'vgg'"):
        create_extractor("vgg")
    with pytest.raises(InputError, match="unknown option\\(s\\) depth"):
        create_extractor("pixels", depth=3)


def _resnet_features(weights: str, photo_set: tuple[Path, Path]) -> np.ndarray:
    images = ImageSet.from_path(photo_set[0]).subset([0, 1, 2])
    opts = ExtractOptions(runtime="torch", use_cache=False, progress=False)
    return embed(create_extractor("resnet50", weights=weights), images, opts).features


def test_resnet50_local_checkpoint_round_trip(tmp_path: Path, photo_set: tuple[Path, Path]) -> None:
    torch.manual_seed(1)
    model = torchvision.models.resnet50()
    plain = tmp_path / "resnet50.pth"
    torch.save(model.state_dict(), plain)
    wrapped = tmp_path / "checkpoint.pt"  # DataParallel-style keys inside a checkpoint dict
    torch.save(
        {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
        wrapped,
    )
    first = _resnet_features(str(plain), photo_set)
    again = _resnet_features(str(wrapped), photo_set)
    assert first.shape == (3, 2048)
    np.testing.assert_allclose(first, again, atol=1e-6)
    # the features really come from the file: a different init gives different vectors
    torch.manual_seed(2)
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "other.pth")
    other = _resnet_features(str(tmp_path / "other.pth"), photo_set)
    assert np.abs(other - first).max() > 1e-3


def test_resnet50_bad_weights_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(WeightsUnavailableError, match="do not fit"):
        create_extractor("resnet50", weights=str(bad))
    with pytest.raises(WeightsUnavailableError, match="not found"):
        create_extractor("resnet50", weights=str(tmp_path / "missing.pth"))


def test_resnet50_offline_error_names_both_ways(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError) as info:
        create_extractor("resnet50")
    message = str(info.value)
    assert "--weights" in message and "internet" in message and str(tmp_path / "hub") in message
    status = {i.name: i.weights_status() for i in list_extractors()}
    assert status["resnet50"][0] is False and status["efficientnet-lite0"][0] is True
    cached = tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert dict((i.name, i.weights_status()) for i in list_extractors())["resnet50"][0] is True
