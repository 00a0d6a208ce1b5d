"""Self-supervised training (``selfsup``): copy-like views made in DataLoader workers, NT-Xent + KoLeo,
a partly frozen pretrained trunk, and a checkpoint that searches like any model name."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from typer.testing import CliRunner

from lookalike import InputError, create_extractor
from lookalike.cli import app
from lookalike.features.checkpoint import read_checkpoint
from lookalike.training import train
from lookalike.training.copyaug import CopyAugment, TwoViews, paste_into
from lookalike.training.data import MemoryStore
from lookalike.training.losses import koleo, nt_xent
from lookalike.training.methods import build_model, method_spec
from lookalike.training.models import freeze_early, trunk_blocks

SMALL_OPTIONS = {"trunk": "small", "channels": [8, 16], "image_size": 32, "embed_dim": 16}
SMALL = {**SMALL_OPTIONS, "channels": "8,16", "batch_size": 8}
pytestmark = pytest.mark.usefixtures("one_thread")


def _photo(name: str = "astronaut", size: int = 64) -> Image.Image:
    from skimage import data

    pixels = getattr(data, name)()
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    return Image.fromarray(pixels[..., :3]).resize((size, size))


def _store(
    names: tuple[str, ...] = ("astronaut", "chelsea", "coffee", "rocket"), size: int = 48
) -> MemoryStore:
    arrays = [torch.from_numpy(np.array(_photo(n, size))).permute(2, 0, 1) for n in names]
    return MemoryStore(torch.stack(arrays).contiguous())


# --------------------------------------------------------------------------- the views


def test_views_are_seeded_per_image_and_edit_the_image() -> None:
    store = _store()
    views = TwoViews(store, CopyAugment(), seed=5)
    first, again = views[2], TwoViews(store, CopyAugment(), seed=5)[2]
    assert first.shape == (2, 3, 48, 48) and first.dtype == torch.uint8
    assert torch.equal(first, again)  # the same (seed, image): the same views, in any worker
    assert not torch.equal(first[0], first[1])  # two different edits of one image
    assert not torch.equal(first, TwoViews(store, CopyAugment(), seed=6)[2])
    original = store.image(2)
    assert not torch.equal(first[0], original)


@pytest.mark.parametrize("edit", ["text", "shapes", "jpeg", "blur", "grey"])
def test_each_edit_changes_pixels(edit: str) -> None:
    off = {name: 0.0 for name in ("grey", "blur", "jpeg", "text", "shapes", "paste")}
    plain = CopyAugment(crop=0.0, flip=False, rotate=0.0, jitter=0.0, **off)
    edited = CopyAugment(crop=0.0, flip=False, rotate=0.0, jitter=0.0, **{**off, edit: 1.0})
    image = _photo("chelsea")
    same = plain.view(image, np.random.default_rng(0))
    assert np.array_equal(np.asarray(same), np.asarray(image))  # every edit off: the image itself
    changed = np.asarray(edited.view(image, np.random.default_rng(0)), dtype=np.int16)
    assert np.abs(changed - np.asarray(image, dtype=np.int16)).mean() > 0.3


def test_paste_puts_the_view_inside_another_image() -> None:
    view, background = _photo("astronaut", 64), _photo("coffee", 64)
    out = np.asarray(paste_into(view, background, np.random.default_rng(1)), dtype=np.int16)
    back = np.asarray(background, dtype=np.int16)
    unchanged = (np.abs(out - back).sum(axis=2) == 0).mean()
    assert 0.4 < unchanged < 0.95  # a 30-70% side copy of the view covers 9-49% of the background


def test_bad_augmentation_options_are_refused() -> None:
    with pytest.raises(InputError, match="text is a probability"):
        CopyAugment(text=1.5)
    with pytest.raises(InputError, match="crop must be in"):
        CopyAugment(crop=1.0)
    with pytest.raises(InputError, match="rotate"):
        CopyAugment(rotate=-1)


# --------------------------------------------------------------------------- losses and freezing


def test_nt_xent_and_koleo_prefer_what_they_should() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(16, 8, generator=g), dim=1)
    noisy = torch.nn.functional.normalize(a + 0.05 * torch.randn(16, 8, generator=g), dim=1)
    shuffled = noisy[torch.randperm(16, generator=g)]
    assert nt_xent(a, noisy, temperature=0.1) < 0.1 < nt_xent(a, shuffled, temperature=0.1)
    clumped = torch.nn.functional.normalize(torch.ones(16, 8) + 0.01 * torch.randn(16, 8, generator=g), dim=1)
    assert koleo(a, noisy) < koleo(clumped, clumped)  # spread descriptors: a lower KoLeo loss
    assert torch.isfinite(koleo(clumped, clumped))
    assert koleo(a[:1], noisy[:1]) == 0  # one image: no other to be near


def test_freeze_early_trains_only_the_last_blocks() -> None:
    model, _ = build_model("selfsup", {"train_blocks": 3, "image_size": 64}, 0, pretrained=False)
    trainable = {n for n, p in model.trunk.named_parameters() if p.requires_grad}
    blocks = {n.split("._blocks.")[1].split(".")[0] for n in trainable if "._blocks." in n}
    assert blocks == {"13", "14", "15"}  # EfficientNet-Lite0 has 16 MBConv blocks
    assert any("_conv_head" in n for n in trainable) and not any("_conv_stem" in n for n in trainable)
    assert all(p.requires_grad for p in model.head.parameters())
    model.train()
    stem_bn = model.trunk.trunk.net._bn0
    assert not stem_bn.training and model.trunk.trunk.net._bn1.training  # frozen batch norm stays in eval
    resnet = torch.nn.Sequential(*list(torchvision.models.resnet18().children())[:-2])
    freeze_early(resnet, 2)  # layer4's two basic blocks, downsampling included
    trainable = {n for n, p in resnet.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in resnet.named_parameters() if n.startswith("7.")}
    freeze_early(resnet, 1)
    assert {n for n, p in resnet.named_parameters() if p.requires_grad} == {
        n for n, _ in resnet.named_parameters() if n.startswith("7.1.")
    }
    assert trunk_blocks(resnet) == [f"{layer}.{b}" for layer in (4, 5, 6, 7) for b in (0, 1)]
    assert freeze_early(resnet, -1) == sum(p.numel() for p in resnet.parameters())
    assert freeze_early(resnet, 0) == 0
    small, _ = build_model("selfsup", {**SMALL_OPTIONS, "train_blocks": 1}, 0, pretrained=False)
    assert all(p.requires_grad for p in small.trunk.parameters())  # from scratch: the whole trunk learns


def test_a_frozen_trunk_searched_by_its_own_features_is_refused() -> None:
    with pytest.raises(InputError, match="train_blocks=0"):
        build_model("selfsup", {"train_blocks": 0, "features": "trunk", "image_size": 64}, 0, pretrained=False)
    head_only, _ = build_model("selfsup", {"train_blocks": 0, "image_size": 64}, 0, pretrained=False)
    assert not any(p.requires_grad for p in head_only.trunk.parameters())  # the projection alone learns


# --------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def run(training_photos: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> object:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("selfsup") / "run"
    return train(
        "selfsup",
        training_photos[1],
        out,
        epochs=4,
        progress=False,
        workers=0,
        lr=3e-3,
        images_per_epoch=64,
        paste=0.2,  # a tiny net from scratch learns the easier task within 4 epochs
        **SMALL,
    )


def test_selfsup_trains_on_unlabelled_images_and_searches(
    run: object, training_photos: tuple[Path, Path]
) -> None:
    config = json.loads((run.run_dir / "config.json").read_text())
    assert config["method"] == "selfsup" and config["data"]["classes"] == []  # class folders ignored
    assert config["augment"]["paste"] == 0.2 and config["augment"]["text"] == CopyAugment().text
    losses = [h["train_loss"] for h in run.history]
    val = [h["val_loss"] for h in run.history]
    assert len(losses) == 4 and losses[-1] < losses[0] and val[-1] < val[0] - 0.3, (losses, val)
    for name in ("best.pt", "last.pt", "history.csv", "loss.png"):
        assert (run.run_dir / name).is_file()
    extractor = create_extractor(str(run.best))
    saved = read_checkpoint(run.best)
    assert saved["method"] == "selfsup" and extractor.dim == saved["feature_dim"] == 16
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    assert extractor.module(x).shape == (1, 16)


def test_views_in_workers_equal_views_in_the_main_process(
    training_photos: tuple[Path, Path], tmp_path: Path
) -> None:
    kwargs = {"epochs": 1, "progress": False, "images_per_epoch": 16, **SMALL}
    here = train("selfsup", training_photos[1], tmp_path / "w0", workers=0, **kwargs)
    forked = train("selfsup", training_photos[1], tmp_path / "w1", workers=1, **kwargs)
    assert here.history[0]["train_loss"] == pytest.approx(forked.history[0]["train_loss"], rel=1e-5)
    assert here.history[0]["val_loss"] == pytest.approx(forked.history[0]["val_loss"], rel=1e-5)
    config = json.loads((tmp_path / "w0" / "config.json").read_text())
    assert config["train"]["images_per_epoch"] == 16


def test_resumed_run_equals_uninterrupted(training_photos: tuple[Path, Path], tmp_path: Path) -> None:
    kwargs = {"progress": False, "workers": 0, "images_per_epoch": 16, **SMALL}
    whole = train("selfsup", training_photos[1], tmp_path / "whole", epochs=2, **kwargs)
    train("selfsup", training_photos[1], tmp_path / "part", epochs=1, **kwargs)
    resumed = train("selfsup", training_photos[1], tmp_path / "part", epochs=2, resume=True, **kwargs)
    assert [h["train_loss"] for h in resumed.history] == pytest.approx(
        [h["train_loss"] for h in whole.history]
    )


def test_selfsup_refuses_label_options(training_photos: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown option.*max_per_class"):
        train("selfsup", training_photos[1], tmp_path / "r", max_per_class=3, **SMALL)
    with pytest.raises(InputError, match="ignores class folders"):
        train("selfsup", training_photos[1], tmp_path / "r", val_split="classes", **SMALL)
    with pytest.raises(InputError, match="images_per_epoch must be at least 1"):
        train("selfsup", training_photos[1], tmp_path / "r", images_per_epoch=0, **SMALL)


def test_a_recipe_sets_defaults_that_options_override(
    training_photos: tuple[Path, Path], tmp_path: Path
) -> None:
    """`-O recipe=classes`: milder crops, no copy edits, the pooled trunk searched; an option given
    beside it still wins, and an unknown recipe is one line naming the known ones."""
    kwargs = {**SMALL, "embed_dim": 12, "epochs": 1, "progress": False, "workers": 0, "images_per_epoch": 8}
    run = train("selfsup", training_photos[1], tmp_path / "classes", recipe="classes", paste=0.3, **kwargs)
    config = json.loads((run.run_dir / "config.json").read_text())
    assert config["model_options"]["recipe"] == "classes" and config["model_options"]["features"] == "trunk"
    assert (config["augment"]["crop"], config["augment"]["text"], config["augment"]["paste"]) == (0.5, 0.0, 0.3)
    assert read_checkpoint(run.best)["feature_dim"] == 16 == create_extractor(str(run.best)).dim  # not 12
    with pytest.raises(InputError, match="unknown recipe 'faces'; choose one of copies, classes"):
        train("selfsup", training_photos[1], tmp_path / "bad", recipe="faces", **kwargs)
    with pytest.raises(InputError, match="unknown: bogus"):  # a plug-in's recipe is checked up front
        replace(method_spec("selfsup"), recipes={"mine": {"bogus": 1}})


def test_a_pretrained_trunk_trains_at_selfsup_own_rate() -> None:
    """selfsup trains a pretrained trunk at 1e-3 (measured against 1e-4 and 3e-4), the supervised
    methods at 1e-4 (their ImageNet features adapted, not overwritten)."""
    selfsup, siamese = method_spec("selfsup"), method_spec("siamese")
    assert selfsup.default_lr({"trunk": "efficientnet-lite0"}) == 1e-3
    assert siamese.default_lr({"trunk": "efficientnet-lite0"}) == 1e-4
    assert siamese.default_lr({"trunk": "efficientnet-lite0", "freeze_trunk": True}) == siamese.lr


def test_too_few_images_is_one_clear_line(tmp_path: Path) -> None:
    folder = tmp_path / "three"
    folder.mkdir()
    for k, name in enumerate(("astronaut", "chelsea", "coffee")):
        _photo(name, 40).save(folder / f"{k}.png")
    with pytest.raises(InputError, match=r"3 readable image\(s\); at least 4 are needed"):
        train("selfsup", folder, tmp_path / "run", **SMALL)


def test_cli_trains_selfsup_and_says_how_to_search(
    training_photos: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "cli-run"
    args = ["train", "selfsup", str(training_photos[1]), "-o", str(out), "--epochs", "1", "--workers", "0"]
    options = ["-O", "trunk=small", "-O", "channels=8,16", "-O", "image_size=32", "-O", "images_per_epoch=16"]
    result = CliRunner().invoke(app, [*args, *options, "-O", "text=0.5", "--batch-size", "8", "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"-m {out / 'best.pt'}" in result.output.replace("\n", "")
    assert json.loads((out / "config.json").read_text())["augment"]["text"] == 0.5
    bad = CliRunner().invoke(app, [*args[:-2], *options, "-O", "koleo=-1", "--overwrite"])
    assert bad.exit_code != 0 and "koleo" in bad.output and "Traceback" not in bad.output


def test_a_trunk_without_repeated_blocks_needs_train_blocks_all() -> None:
    pytest.importorskip("timm")
    options = {"image_size": 32, "trunk": "timm:test_resnet", "trunk_weights": "random"}
    with pytest.raises(InputError, match="train_blocks=-1"):
        build_model("selfsup", {**options, "train_blocks": 1}, 0, pretrained=True)
    model, _ = build_model("selfsup", {**options, "train_blocks": -1}, 0, pretrained=True)
    assert all(p.requires_grad for p in model.trunk.parameters())


@pytest.mark.parametrize("name", ["timm:test_convnext", "timm:test_vit"])
def test_timm_trunks_train_selfsup(name: str, training_photos: tuple[Path, Path], tmp_path: Path) -> None:
    pytest.importorskip("timm")
    result = train(
        "selfsup",
        training_photos[1],
        tmp_path / "run",
        epochs=1,
        image_size=32,
        batch_size=8,
        images_per_epoch=16,
        progress=False,
        workers=0,
        trunk=name,
        trunk_weights="random",
        train_blocks=1,
    )
    model, _ = build_model("selfsup", read_checkpoint(result.best)["model_options"], 0, pretrained=False)
    trainable = [n for n, p in model.trunk.named_parameters() if p.requires_grad]
    frozen = [n for n, p in model.trunk.named_parameters() if not p.requires_grad]
    assert trainable and frozen  # the last block (and what follows it) learns, the rest is frozen
    extractor = create_extractor(str(result.best))
    assert extractor.module(torch.zeros(2, 3, 32, 32)).shape == (2, extractor.dim)
