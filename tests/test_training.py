"""Training: every method learns on real photos, checkpoints search like model names, the loop's
early stopping, LR plateau and resume behave, and bad training folders get clear messages."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import lookalike
from lookalike import ExtractOptions, ImageSet, InputError, create_extractor, embed
from lookalike.features.checkpoint import load_checkpoint_extractor, read_checkpoint, rebuild
from lookalike.training import TrainResult, train
from lookalike.training.trainer import Normalise

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
FAST = {"image_size": 32, "batch_size": 8, "progress": False}
METHOD_CASES = {
    "cnn": {},
    "autoencoder": {},
    "vae": {},
    "siamese": {},
    "siamese-triplet": {"loss": "triplet"},
    "siamese-pretrained": {
        "trunk": "efficientnet-lite0",
        "freeze_trunk": True,
        "head": "residual",
        "lr": 1e-3,
    },
    "finetune": {"embed_dim": 32},
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="session")
def photos(training_photos: tuple[Path, Path]) -> tuple[Path, Path]:
    """(query, train) class folders: 4 real photos, 1 query copy and 6 edited training copies each."""
    return training_photos


@pytest.fixture(scope="session")
def trained(photos: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, TrainResult]:
    """Each method trained for 4 epochs at 32x32 (once per session: later tests reuse the runs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("runs")
    runs = {}
    for case, options in METHOD_CASES.items():
        method = case.split("-")[0]
        runs[case] = train(method, photos[1], root / case, epochs=4, **FAST, **options)
    torch.set_num_threads(before)
    return runs


@pytest.mark.parametrize("case", list(METHOD_CASES))
def test_each_method_learns_and_writes_its_run(case: str, trained: dict[str, TrainResult]) -> None:
    result = trained[case]
    losses = [h["train_loss"] for h in result.history]
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    for name in ("best.pt", "last.pt", "config.json", "history.csv", "loss.png"):
        assert (result.run_dir / name).is_file(), name
    if case in ("autoencoder", "vae"):
        for name in ("reconstructions.png", "encoder.pt", "decoder.pt"):
            assert (result.run_dir / name).is_file(), name
        assert set(torch.load(result.run_dir / "encoder.pt", weights_only=True)).isdisjoint(
            torch.load(result.run_dir / "decoder.pt", weights_only=True)
        )
    with (result.run_dir / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["method"] == case.split("-")[0] and config["data"]["classes"] == sorted(PHOTOS)
    saved = read_checkpoint(result.best)
    assert saved["class_names"] == sorted(PHOTOS) and saved["preprocess"]["size"] == [32, 32]
    assert saved["epoch"] == result.best_epoch


@pytest.mark.parametrize("case", list(METHOD_CASES))
def test_checkpoint_round_trip_gives_identical_features(
    case: str, trained: dict[str, TrainResult], photos: tuple[Path, Path]
) -> None:
    result = trained[case]
    images = ImageSet.from_path(photos[0])
    eager = ExtractOptions(use_cache=False, progress=False, runtime="torch")
    first = embed(create_extractor(str(result.best)), images, eager).features
    second = embed(load_checkpoint_extractor(result.best), images, eager).features
    np.testing.assert_array_equal(first, second)
    # the same as the trained model itself, fed the same pixels
    model, preprocess = rebuild(read_checkpoint(result.best))
    saved = torch.load(result.best, weights_only=True)["state_dict"]
    model.load_state_dict(saved)
    from lookalike.extract import DecodedImages

    data = DecodedImages(images.paths, preprocess.size, 10**9)
    pixels = torch.stack([data[i][1] for i in range(len(images))]).float()
    with torch.no_grad():
        direct = torch.nn.functional.normalize(model.features()(Normalise(preprocess)(pixels)), dim=1).numpy()
    np.testing.assert_allclose(first, direct, atol=1e-5)
    # and the ONNX runtime computes the same features
    onnx = embed(
        create_extractor(str(result.best)),
        images,
        ExtractOptions(use_cache=False, progress=False, runtime="onnx"),
    )
    np.testing.assert_allclose(onnx.features, first, atol=1e-4)


def test_checkpoint_works_as_a_model_name(
    trained: dict[str, TrainResult], photos: tuple[Path, Path], tmp_path: Path
) -> None:
    best = trained["siamese"].best
    run = lookalike.evaluate(photos[0], photos[1], model=str(best), options=ExtractOptions(progress=False))
    assert run.metrics is not None and run.metrics.n_queries == len(PHOTOS)
    assert run.model["weights"]["method"] == "siamese"
    # the extractor's key follows the file's content
    copy = tmp_path / "best.pt"
    shutil.copy(best, copy)
    key = create_extractor(str(copy)).key
    shutil.copy(trained["siamese-triplet"].best, copy)
    assert create_extractor(str(copy)).key != key


def test_early_stopping_and_lr_plateau_fire_on_a_plateau(photos: tuple[Path, Path], tmp_path: Path) -> None:
    # min_delta far above any change the loss can make: every epoch after the first is a plateau
    result = train(
        "cnn",
        photos[1],
        tmp_path / "run",
        epochs=20,
        lr=1e-4,
        patience=3,
        lr_patience=1,
        min_delta=10.0,
        **FAST,
    )
    assert result.stopped_early and result.epochs_run == 4 and result.best_epoch == 1
    assert [h["lr"] for h in result.history] == pytest.approx([1e-4, 1e-4, 1e-4, 5e-5])
    # restore_best: the returned best.pt holds epoch 1's weights, and last.pt the state at epoch 4
    assert read_checkpoint(result.best)["epoch"] == 1
    assert read_checkpoint(result.last)["epoch"] == 4


def test_early_stopping_counts_patience() -> None:
    from lookalike.training import EarlyStopping

    stopper = EarlyStopping(patience=2, min_delta=0.01)
    fired = []
    for epoch, loss in enumerate([1.0, 0.5, 0.495, 0.6, 0.3, 0.3, 0.3], start=1):
        stopper.step(loss, epoch)
        fired.append(stopper.should_stop)
    assert fired == [False, False, False, True, False, False, True]
    assert stopper.best_epoch == 5


@pytest.mark.parametrize("method", ["siamese", "vae"])
def test_resume_continues_with_the_same_result(
    method: str, photos: tuple[Path, Path], tmp_path: Path
) -> None:
    whole = train(method, photos[1], tmp_path / "whole", epochs=4, **FAST)
    train(method, photos[1], tmp_path / "part", epochs=2, **FAST)  # "interrupted" after epoch 2
    resumed = train(method, photos[1], tmp_path / "part", epochs=4, resume=True, **FAST)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    for a, b in zip(whole.history, resumed.history, strict=True):
        assert (a["train_loss"], a["val_loss"], a["lr"]) == (b["train_loss"], b["val_loss"], b["lr"])
    for name in ("best.pt", "last.pt"):
        one = torch.load(tmp_path / "whole" / name, weights_only=True)["state_dict"]
        two = torch.load(tmp_path / "part" / name, weights_only=True)["state_dict"]
        assert all(torch.equal(one[k], two[k]) for k in one)


def test_resume_refuses_other_settings_and_runs_are_not_overwritten(
    photos: tuple[Path, Path], tmp_path: Path
) -> None:
    train("vae", photos[1], tmp_path / "run", epochs=1, **FAST)
    with pytest.raises(InputError, match="already holds a training run"):
        train("vae", photos[1], tmp_path / "run", epochs=1, **FAST)
    with pytest.raises(InputError, match="cannot resume"):
        train("vae", photos[1], tmp_path / "run", epochs=2, resume=True, beta=4.0, **FAST)
    with pytest.raises(InputError, match=r"training settings differ .*\(lr: 0\.001 then, 0\.002 now\)"):
        train("vae", photos[1], tmp_path / "run", epochs=2, resume=True, lr=2e-3, **FAST)
    again = train("vae", photos[1], tmp_path / "run", epochs=1, overwrite=True, **FAST)
    assert again.epochs_run == 1


# --------------------------------------------------------------------------- bad input


def _class_folders(root: Path, photos: tuple[Path, Path], classes: dict[str, int]) -> Path:
    """A training folder with ``classes[name]`` images copied from the photo set's class ``name``."""
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for src in sorted((photos[1] / name).iterdir())[:count]:
            shutil.copy(src, root / name / src.name)
    return root


def test_a_single_class_is_refused(photos: tuple[Path, Path], tmp_path: Path) -> None:
    folder = _class_folders(tmp_path / "data", photos, {"chelsea": 6})
    with pytest.raises(InputError, match="only the class 'chelsea'.*at least two class folders"):
        train("cnn", folder, tmp_path / "run", epochs=1, **FAST)


def test_a_class_with_one_image_is_named(photos: tuple[Path, Path], tmp_path: Path) -> None:
    folder = _class_folders(tmp_path / "data", photos, {"chelsea": 6, "coffee": 1})
    with pytest.raises(InputError, match="single readable image \\('coffee'\\)"):
        train("cnn", folder, tmp_path / "run", epochs=1, **FAST)


def test_images_outside_class_folders_are_refused_for_labelled_methods(
    photos: tuple[Path, Path], tmp_path: Path
) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for src in sorted(photos[1].rglob("*.jpg"))[:10]:
        shutil.copy(src, flat / src.name)
    with pytest.raises(InputError, match="class folder"):
        train("siamese", flat, tmp_path / "run", epochs=1, **FAST)
    result = train("autoencoder", flat, tmp_path / "ae", epochs=1, **FAST)  # needs no labels
    assert result.epochs_run == 1


def test_non_images_are_ignored_or_skipped_and_grey_mixes_with_colour(
    photos: tuple[Path, Path], tmp_path: Path
) -> None:
    from PIL import Image

    folder = _class_folders(tmp_path / "data", photos, {"chelsea": 6, "coffee": 6})
    (folder / "chelsea" / "notes.txt").write_text("not an image")
    (folder / "coffee" / "broken.jpg").write_bytes(b"\xff\xd8 this is no JPEG")
    for src in sorted((folder / "coffee").glob("*_copy*.jpg"))[:3]:
        Image.open(src).convert("L").save(src.with_suffix(".png"))  # grey images among colour ones
        src.unlink()
    result = train("cnn", folder, tmp_path / "run", epochs=1, **FAST)
    assert [s.path for s in result.skipped] == ["coffee/broken.jpg"]
    config = json.loads((result.run_dir / "config.json").read_text())
    assert config["data"]["train_images"] + config["data"]["val_images"] == 12


def test_unknown_method_options_and_classes_get_clear_messages(
    photos: tuple[Path, Path], tmp_path: Path
) -> None:
    with pytest.raises(InputError, match="unknown training method 'gan'"):
        train("gan", photos[1], tmp_path / "a")
    with pytest.raises(InputError, match="unknown option\\(s\\) colour"):
        train("cnn", photos[1], tmp_path / "b", colour=True)
    other = _class_folders(tmp_path / "val", photos, {"chelsea": 2})
    (other / "zebra").mkdir()
    shutil.copy(next((photos[1] / "coffee").iterdir()), other / "zebra" / "z.jpg")
    with pytest.raises(InputError, match="zebra are not among the training classes"):
        train("cnn", photos[1], tmp_path / "c", val_dir=other, epochs=1, **FAST)
    result = train("siamese", photos[1], tmp_path / "d", val_dir=other, epochs=1, **FAST)  # open set: fine
    assert result.epochs_run == 1


def test_a_foreign_pt_file_is_not_taken_for_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(InputError, match="not a checkpoint written by `lookalike train`"):
        create_extractor(str(path))


def test_open_set_validation_holds_out_whole_classes(photos: tuple[Path, Path], tmp_path: Path) -> None:
    result = train("siamese", photos[1], tmp_path / "run", epochs=1, val_split="classes", **FAST)
    config = json.loads((result.run_dir / "config.json").read_text())
    held_out = {name.split("/")[0] for name in config["data"]["val_files"]}
    assert len(held_out) == 2 and held_out.isdisjoint(config["data"]["classes"])
    assert config["data"]["train_images"] == 12 and config["data"]["val_images"] == 12
    with pytest.raises(InputError, match="cannot validate on held-out classes"):
        train("cnn", photos[1], tmp_path / "cnn", val_split="classes", **FAST)


def test_sets_too_big_for_memory_are_decoded_per_batch_with_the_same_result(
    photos: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lookalike.training import data

    in_memory = train("cnn", photos[1], tmp_path / "memory", epochs=2, **FAST)
    monkeypatch.setattr(data, "PRELOAD_LIMIT_BYTES", 0)
    from_disk = train("cnn", photos[1], tmp_path / "disk", epochs=2, **FAST)
    assert [h["train_loss"] for h in from_disk.history] == [h["train_loss"] for h in in_memory.history]
