"""``resize=fit``: aspect-kept input sizes of their own, batched by size, the same on every path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lookalike import ExtractOptions, ImageSet, create_extractor, embed
from lookalike.errors import InputError
from lookalike.extract import DecodedImages, decode_on_device, merge_sizes, run_by_size
from lookalike.features.base import FIT_MIN_SIDE, Preprocess
from lookalike.features.regions import with_regions
from lookalike.samples import sample_photo
from lookalike.server import decode_for_model


def test_fit_targets() -> None:
    """Large images come down to a long side of 224 with their aspect; small ones are enlarged only
    to a short side of FIT_MIN_SIDE; nothing ever exceeds the long side; squash ignores the image."""
    fit = Preprocess((224, 224), resize="fit")
    assert fit.target(512, 512) == (224, 224)
    assert fit.target(640, 427) == (149, 224)  # (height, width)
    assert fit.target(90, 80) == (FIT_MIN_SIDE, 144)  # a small crop: 1.6x, not 2.5x
    assert fit.target(150, 200) == (200, 150)  # between the limits: as it is
    assert fit.target(1000, 100) == (22, 224)  # the long side wins over the short-side floor
    assert Preprocess((224, 224)).target(90, 80) == (224, 224)
    with pytest.raises(InputError, match="resize: unknown value 'crop'"):
        Preprocess((224, 224), resize="crop")


def test_fit_keys_leave_squash_keys_alone() -> None:
    """The default extractor's key is what it was before resize existed; fit gives another key."""
    plain = create_extractor("efficientnet-lite0")
    fitted = create_extractor("efficientnet-lite0", resize="fit")
    assert "resize" not in plain.describe()["preprocess"] and "resize" not in plain.options
    assert fitted.describe()["preprocess"]["resize"] == "fit" and fitted.options["resize"] == "fit"
    assert fitted.key != plain.key
    with pytest.raises(InputError, match="resize"):
        create_extractor("efficientnet-lite0", resize="stretch")


@pytest.fixture(scope="module")
def mixed_sizes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real photo crops of five different sizes and aspects, two of them small."""
    folder = tmp_path_factory.mktemp("sizes")
    photo = sample_photo("astronaut")
    for i, (box, size) in enumerate(
        [((0, 0, 512, 512), None), ((50, 80, 450, 380), None), ((100, 100, 300, 300), (90, 80)),
         ((0, 200, 512, 400), None), ((200, 0, 400, 256), (60, 100))]
    ):
        img = photo.crop(box)
        if size:
            img = img.resize(size, Image.Resampling.LANCZOS)
        img.save(folder / f"img{i}.jpg", quality=90)
    return folder


def test_decoded_sizes_follow_fit(mixed_sizes: Path) -> None:
    paths = sorted(mixed_sizes.glob("*.jpg"))
    shapes = [tuple(DecodedImages(paths, (224, 224), 10**9, "fit")[i][1].shape) for i in range(len(paths))]
    assert shapes == [(3, 224, 224), (3, 168, 224), (3, FIT_MIN_SIDE, 144), (3, 88, 224), (3, 213, 128)]
    # the server's lower-memory decoder gives the very same pixels
    for path in paths:
        expected = DecodedImages([path], (224, 224), 10**9, "fit")[0][1]
        assert torch.equal(decode_for_model(path, (224, 224), 10**9, "fit"), expected)


def test_fit_embeds_each_image_at_its_own_size(mixed_sizes: Path, tmp_path: Path) -> None:
    """Batched extraction (groups of equal size, in torch and in the dynamic-size ONNX graph) gives
    each image the features the network gives it alone, in the set's order."""
    images = ImageSet.from_path(mixed_sizes)
    extractor = create_extractor("efficientnet-lite0", pool="gem", multiscale=True, resize="fit")
    decoder = DecodedImages(images.paths, (224, 224), 10**9, "fit")
    with torch.no_grad():
        alone = np.concatenate([extractor.module(decoder[i][1][None].float()).numpy() for i in range(len(images))])
    for runtime in ("torch", "onnx"):
        opts = ExtractOptions(runtime=runtime, use_cache=False, cache_dir=tmp_path, progress=False, batch_size=4)
        found = embed(extractor, images, opts)
        assert list(found.indices) == list(range(len(images)))
        np.testing.assert_allclose(found.features, alone, atol=1e-4)
    # squash and fit differ where the aspect or the size differs
    squashed = embed(create_extractor("efficientnet-lite0", pool="gem", multiscale=True), images,
                     ExtractOptions(use_cache=False, progress=False))
    cos = np.sum(squashed.features * alone, axis=1)
    assert cos[0] > 0.999 and cos[2] < 0.99


def test_run_by_size_keeps_order() -> None:
    tensors = [torch.full((3, 4 + i % 2, 4), float(i)) for i in range(5)]
    out = run_by_size(lambda x: x.mean(dim=(1, 2, 3))[:, None].numpy(), tensors, 1)
    np.testing.assert_allclose(out[:, 0], np.arange(5.0))


def test_parts_of_one_size_reach_the_runner_together() -> None:
    """CPU-decoded, device-decoded and fallback parts of a batch that share a size become one tensor
    (one runner call), their ids in the order of their rows."""
    parts = [
        ([0, 2], torch.full((2, 3, 4, 4), 0)),
        ([1], torch.full((1, 3, 5, 4), 1)),
        ([3, 5], torch.full((2, 3, 4, 4), 3)),
        ([4], torch.full((1, 3, 4, 4), 4)),
    ]
    merged = merge_sizes(parts)
    assert [(ids, tuple(x.shape)) for ids, x in merged] == [([0, 2, 3, 5, 4], (5, 3, 4, 4)), ([1], (1, 3, 5, 4))]
    assert merged[0][1][:, 0, 0, 0].tolist() == [0, 0, 3, 3, 4]


def test_device_decoder_fits(mixed_sizes: Path) -> None:
    """The device decoder (here on the CPU) resizes each JPEG to its own fitted size, by size groups."""
    paths = sorted(mixed_sizes.glob("*.jpg"))
    blobs = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths]
    groups, failed = decode_on_device(blobs, Preprocess((224, 224), resize="fit"), torch.device("cpu"))
    assert not failed
    shapes = {pos: tuple(pixels.shape[1:]) for positions, pixels in groups for pos in positions}
    cpu = [tuple(DecodedImages(paths, (224, 224), 10**9, "fit")[i][1].shape) for i in range(len(paths))]
    assert [shapes[i] for i in range(len(paths))] == cpu


def test_regions_of_a_fitted_extractor_run_in_torch() -> None:
    """Region boxes are cut at the image's own size, which an ONNX trace would freeze: such an
    extractor is not exported, and it reads images at twice the fitted size."""
    regional = with_regions(create_extractor("efficientnet-lite0", resize="fit"), 2)
    assert not regional.exportable
    assert regional.preprocess.resize == "fit" and regional.preprocess.size == (448, 448)
    assert with_regions(create_extractor("efficientnet-lite0"), 2).exportable


def test_timm_cnn_fits_and_a_token_grid_is_refused() -> None:
    """A timm CNN takes fit (the whole image, no centre crop); a ViT's fixed token grid cannot."""
    fitted = create_extractor("timm:test_resnet", weights="random", resize="fit")
    assert fitted.preprocess.resize == "fit" and fitted.options["resize"] == "fit"
    with torch.no_grad():
        out = fitted.module(torch.rand(1, 3, 96, 150) * 255)
    assert out.shape == (1, fitted.dim)
    with pytest.raises(InputError, match="resize=fit needs a CNN"):
        create_extractor("timm:test_vit", weights="random", resize="fit")


def test_resize_through_the_cli(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from lookalike.cli import app

    summary = tmp_path / "s.json"
    args = ["search", *map(str, photo_set), "-q", "-o", str(tmp_path / "r")]
    result = CliRunner().invoke(app, [*args, "--resize", "fit", "--summary", str(summary)])
    assert result.exit_code == 0, result.output
    assert json.loads(summary.read_text())["model"]["options"]["resize"] == "fit"
    bad = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "bad"), "--resize", "crop"])
    assert bad.exit_code == 2 and "resize: unknown value 'crop'" in bad.output
    assert "Traceback" not in bad.output and not (tmp_path / "bad").exists()
