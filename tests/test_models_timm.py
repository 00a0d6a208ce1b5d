"""timm models: ``-m timm:<name>`` and the aliases, weights from a file, the cache or nowhere
(a fast one-line error offline), the model's own preprocessing, ONNX equal to torch, GeM on CNN
maps, every -m command, and a timm trunk trained and searched with."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lookalike import ExtractOptions, ImageSet, InputError, create_extractor, embed
from lookalike.cli import app
from lookalike.errors import WeightsUnavailableError
from lookalike.features import create_backbone
from lookalike.features.timm_models import ALIASES, weights_status
from lookalike.methods import list_methods, resolve_method
from lookalike.training import train

timm = pytest.importorskip("timm")
pytestmark = pytest.mark.usefixtures("one_thread")
EAGER = ExtractOptions(use_cache=False, progress=False, runtime="torch")
runner = CliRunner()


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No test may reach the network or see the user's Hugging Face cache: an empty one, offline."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _saved_model(name: str, path: Path, seed: int, **kwargs: object) -> torch.nn.Module:
    """A randomly initialised timm model (seeded), its state dict written to ``path``."""
    torch.manual_seed(seed)
    net = timm.create_model(name, pretrained=False, **kwargs).eval()
    torch.save(net.state_dict(), path)
    return net


def _direct_features(net: torch.nn.Module, extractor, pixels: torch.Tensor) -> np.ndarray:
    """What the extractor should compute, written out with timm alone: normalise with the model's
    pretrained config, centre-crop crop_pct, pooled pre-logits, L2."""
    cfg = timm.data.resolve_model_data_config(net)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    x = (pixels / 255.0 - mean) / std
    h, w = cfg["input_size"][1:]
    top, left = (x.shape[2] - h) // 2, (x.shape[3] - w) // 2
    x = x[:, :, top : top + h, left : left + w]
    with torch.no_grad():
        out = net.forward_head(net.forward_features(x), pre_logits=True)
    return torch.nn.functional.normalize(out, dim=1).numpy()


def test_aliases_are_timm_models_with_pretrained_weights() -> None:
    pretrained = set(timm.list_models(pretrained=True))
    for alias, full in ALIASES.items():
        assert full in pretrained, alias
    rows = {row.name: row for row in list_methods()}
    assert {"dinov2", "clip-b16", "siglip-b16", "timm:<model>"} <= set(rows)
    assert rows["dinov2"].offline is False and "--weights FILE" in rows["dinov2"].weights


def test_weights_file_gives_the_saved_models_features(tmp_path: Path) -> None:
    """A random model saved and reloaded through --weights (classifier included) computes
    exactly what timm computes with it, preprocessing from its pretrained config."""
    net = _saved_model("test_resnet", tmp_path / "w.pth", seed=3)
    extractor = create_extractor("timm:test_resnet", weights=str(tmp_path / "w.pth"))
    cfg = timm.data.resolve_model_data_config(net)
    assert extractor.preprocess.mean == pytest.approx(cfg["mean"]) and extractor.dim == net.num_features
    assert extractor.preprocess.size == (int(160 / cfg["crop_pct"]),) * 2  # resized, then the centre kept
    pixels = torch.randint(0, 256, (3, 3, *extractor.preprocess.size)).float()
    with torch.no_grad():
        ours = extractor.module(pixels).numpy()
    np.testing.assert_allclose(ours, _direct_features(net, extractor, pixels), atol=1e-5)
    # the same file through timm's checkpoint_path (saved without the classifier) agrees too
    headless = _saved_model("test_resnet", tmp_path / "h.pth", seed=3, num_classes=0)
    via_timm = timm.create_model("test_resnet", num_classes=0, checkpoint_path=str(tmp_path / "h.pth")).eval()
    np.testing.assert_allclose(
        _direct_features(via_timm, extractor, pixels),
        _direct_features(headless, extractor, pixels),
        atol=1e-6,
    )
    reloaded = create_extractor("timm:test_resnet", weights=str(tmp_path / "h.pth"))
    with torch.no_grad():
        np.testing.assert_allclose(
            reloaded.module(pixels).numpy(), _direct_features(via_timm, extractor, pixels), atol=1e-5
        )
    # the key follows the weights file; random weights are reproducible
    assert extractor.key != create_extractor("timm:test_resnet", weights=str(tmp_path / "h.pth")).key
    a = create_extractor("timm:test_resnet", weights="random").module(pixels)
    b = create_extractor("timm:test_resnet", weights="random").module(pixels)
    assert torch.equal(a, b) and not torch.allclose(a, torch.from_numpy(ours))


def test_weights_that_do_not_fit_are_one_line(tmp_path: Path) -> None:
    _saved_model("test_vit", tmp_path / "vit.pth", seed=0)
    with pytest.raises(WeightsUnavailableError, match="do not fit") as err:
        create_extractor("timm:test_resnet", weights=str(tmp_path / "vit.pth"))
    assert "\n" not in str(err.value)
    with pytest.raises(WeightsUnavailableError, match="not found"):
        create_extractor("timm:test_resnet", weights=str(tmp_path / "missing.pth"))


def test_offline_without_cached_weights_fails_fast_naming_both_ways() -> None:
    started = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as err:
        create_extractor("timm:resnet18")
    assert time.monotonic() - started < 5
    message = str(err.value)
    assert "\n" not in message and "online" in message and "--weights FILE" in message
    assert "resnet18.a1_in1k" in message and "HF_HUB_OFFLINE" in message
    result = _invoke("models")
    assert result.exit_code == 0 and "timm:<model>" in result.output


def test_offline_probe_catches_an_unreachable_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without HF_HUB_OFFLINE, an endpoint that cannot be reached is found at once too."""
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")  # nothing listens on the discard port
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    started = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="unreachable"):
        create_extractor("timm:test_resnet")
    assert time.monotonic() - started < 5


def _cache_weights(cache: Path, seed: int) -> torch.nn.Module:
    """A random test_resnet written where timm's download would put it (the HF cache layout)."""
    from safetensors.torch import save_file

    repo = cache / "models--timm--test_resnet.r160_in1k"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    torch.manual_seed(seed)
    net = timm.create_model("test_resnet", pretrained=False).eval()
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(snapshot / "model.safetensors"))
    return net


def test_weights_in_the_hugging_face_cache_load_offline(_offline_hub: Path) -> None:
    """Weights timm would download, already in the HF cache, are used with no network and
    listed by `lookalike models`."""
    assert weights_status("test_resnet.r160_in1k")[0] is False
    net = _cache_weights(_offline_hub, seed=5)
    extractor = create_extractor("timm:test_resnet")
    assert extractor.identity["timm"] == "test_resnet.r160_in1k"
    pixels = torch.randint(0, 256, (2, 3, *extractor.preprocess.size)).float()
    with torch.no_grad():
        np.testing.assert_allclose(
            extractor.module(pixels).numpy(), _direct_features(net, extractor, pixels), atol=1e-5
        )
    assert weights_status("test_resnet.r160_in1k")[0] is True
    rows = {row.name: row for row in list_methods()}
    assert rows["timm:test_resnet.r160_in1k"].offline is True


@pytest.mark.parametrize("name", ["test_resnet", "test_vit"])
def test_onnx_runtime_gives_the_torch_features(name: str, photo_set: tuple[Path, Path]) -> None:
    images = ImageSet.from_path(photo_set[0])
    extractor = create_extractor(f"timm:{name}", weights="random")
    eager = embed(extractor, images, EAGER).features
    onnx = embed(extractor, images, ExtractOptions(use_cache=False, progress=False, runtime="onnx")).features
    assert eager.shape == (len(images), extractor.dim)
    np.testing.assert_allclose(np.linalg.norm(eager, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(onnx, eager, atol=1e-4)


def test_size_option_resizes_the_input_and_changes_the_key() -> None:
    default = create_extractor("timm:test_vit", weights="random", crop_pct=1.0)
    small = create_extractor("timm:test_vit", weights="random", crop_pct=1.0, size="64")
    assert default.preprocess.size == (160, 160) and small.preprocess.size == (64, 64)
    assert default.key != small.key and small.options["size"] == 64
    out = small.module(torch.randint(0, 256, (2, 3, 64, 64)).float())
    assert out.shape == (2, small.dim)
    # DINOv2's own config says 518 px; -O size=224 makes it usable on a CPU
    dino = create_extractor("dinov2", weights="random", size=224)
    assert dino.identity["model"] == ALIASES["dinov2"] and dino.preprocess.size == (224, 224)


def test_gem_pooling_on_cnn_maps_and_refused_on_tokens() -> None:
    avg = create_extractor("timm:test_resnet", weights="random")
    gem = create_extractor("timm:test_resnet", weights="random", pool="gem", gem_p="4")
    pixels = torch.randint(0, 256, (2, 3, *avg.preprocess.size)).float()
    with torch.no_grad():
        a, g = avg.module(pixels), gem.module(pixels)
    assert a.shape == g.shape and not torch.allclose(a, g) and avg.key != gem.key
    multi = create_extractor("timm:test_resnet", weights="random", pool="gem", multiscale=True)
    with torch.no_grad():
        m = multi.module(pixels)
    assert m.shape == g.shape and not torch.allclose(m, g)  # the centre crop follows each scale
    with pytest.raises(InputError, match="tokens"):
        create_extractor("timm:test_vit", weights="random", pool="gem")
    with pytest.raises(InputError, match="multiscale"):
        create_extractor("timm:test_vit", weights="random", multiscale=True)
    with pytest.raises(InputError, match="no model"):
        create_extractor("timm:not_a_model_at_all")
    with pytest.raises(InputError, match="unknown option"):
        create_extractor("timm:test_resnet", weights="random", colour=True)


def test_every_model_command_takes_timm_names(
    photo_set: tuple[Path, Path], tmp_path: Path, _offline_hub: Path
) -> None:
    query, gallery = photo_set
    model = ["-m", "timm:test_resnet", "-O", "weights=random", "-q"]
    out = tmp_path / "r.json"
    assert _invoke("search", query, gallery, *model, "-o", out).exit_code == 0
    ranked = json.loads(out.read_text())
    assert len(ranked) == len(ImageSet.from_path(query))
    result = _invoke("evaluate", query, gallery, *model, "--json", tmp_path / "m.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "m.json").read_text())
    built = _invoke("index", "build", gallery, "-o", tmp_path / "my.index", *model)
    assert built.exit_code == 0, built.output
    assert _invoke("search", query, tmp_path / "my.index", "-o", tmp_path / "i.json", "-q").exit_code == 0
    assert json.loads((tmp_path / "i.json").read_text()) == ranked
    # compare takes no -O: offline, it needs the pretrained weights in the cache, then works
    args = ("compare", query, gallery, "-m", "pixels", "-m", "timm:test_resnet", "-o", tmp_path / "c", "-q")
    refused = _invoke(*args)
    assert refused.exit_code != 0 and refused.output.strip().startswith("error:")
    assert len(refused.output.strip().splitlines()) == 1
    _cache_weights(_offline_hub, seed=1)
    compared = _invoke(*args)
    assert compared.exit_code == 0, compared.output
    assert "timm:test_resnet" in (tmp_path / "c" / "comparison.md").read_text()
    assert resolve_method("timm:test_vit", {"weights": "random", "pool": None}).name == "timm:test_vit"


def test_timm_trunk_trains_and_its_checkpoint_searches(
    training_photos: tuple[Path, Path], tmp_path: Path
) -> None:
    query, train_dir = training_photos
    result = train(
        "siamese",
        train_dir,
        tmp_path / "run",
        epochs=2,
        image_size=32,
        batch_size=8,
        progress=False,
        trunk="timm:test_resnet",
        trunk_weights="random",
        head="residual",
    )
    images = ImageSet.from_path(query)
    extractor = create_extractor(str(result.best))
    features = embed(extractor, images, EAGER).features
    assert features.shape == (len(images), 96)
    onnx = embed(extractor, images, ExtractOptions(use_cache=False, progress=False, runtime="onnx")).features
    np.testing.assert_allclose(onnx, features, atol=1e-4)
    # a transformer trunk follows the training image size; SSCD cannot be a trunk
    vit = create_backbone("timm:test_vit", pretrained="random", size=(32, 32))
    assert vit.preprocess.size == (32, 32) and vit.pooled()(torch.zeros(1, 3, 32, 32)).shape == (
        1,
        vit.channels,
    )
    with pytest.raises(InputError, match="cannot be fine-tuned"):
        create_backbone("sscd")
