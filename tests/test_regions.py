"""Region descriptors and search by the best pair of regions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import lookalike
from lookalike import ExtractOptions, ImageSet, InputError, create_extractor, embed
from lookalike.features.regions import rebuild_extractor, region_boxes, with_regions
from lookalike.index import GalleryIndex
from lookalike.index.regions import RegionIndex
from lookalike.pipeline import Refinement
from lookalike.samples import sample_photo
from lookalike.steps import l2_normalise

OPTS = ExtractOptions(progress=False, num_workers=0, use_cache=False)


def test_region_boxes_cover_the_image_with_overlapping_grids() -> None:
    assert [len(region_boxes(level)) for level in (1, 2, 3)] == [1, 5, 14]
    boxes = np.array(region_boxes(3))
    assert boxes[0].tolist() == [0, 0, 1, 1] and boxes.min() >= 0 and boxes.max() <= 1 + 1e-9
    level3 = boxes[5:]
    assert np.allclose(level3[:, 2] - level3[:, 0], 0.5) and np.isclose(level3[1, 0], 0.25)  # half overlaps
    with pytest.raises(InputError, match="between 1"):
        region_boxes(9)


def test_with_regions_describes_each_region_from_full_resolution_pixels() -> None:
    base = create_extractor("pixels", size=16)
    regional = with_regions(base, 2)
    assert regional.dim == 5 * base.dim and regional.preprocess.size == (32, 32) and regional.key != base.key
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32)).astype(np.float32))
    out = regional.module(pixels).reshape(2, 5, base.dim)
    assert torch.allclose(out.norm(dim=2), torch.ones(2, 5), atol=1e-5)
    top_left = base.module(
        torch.nn.functional.interpolate(
            pixels[..., :21, :21], size=(16, 16), mode="bilinear", align_corners=False
        )
    )
    assert torch.allclose(out[:, 1], top_left, atol=1e-5)


@pytest.mark.parametrize("query_regions", [1, 3])
def test_region_index_is_the_exact_best_region_pair(query_regions: int) -> None:
    rng = np.random.default_rng(query_regions)
    n, regions, dim = 40, 4, 8
    gallery = l2_normalise(rng.normal(size=(n * regions, dim)))
    queries = l2_normalise(rng.normal(size=(5 * query_regions, dim)))
    inner = GalleryIndex.from_embeddings(gallery, [f"g{i // regions}" for i in range(n * regions)])
    index = RegionIndex(inner, regions, query_regions, [f"g{i}" for i in range(n)])
    best = (queries.reshape(5, query_regions, 1, 1, dim) * gallery.reshape(1, 1, n, regions, dim)).sum(-1)
    best = best.max(axis=(1, 3))
    rows, scores = index.search(queries, 7)
    expected = np.argsort(-best, axis=1, kind="stable")[:, :7]
    assert rows.tolist() == expected.tolist()
    assert scores == pytest.approx(np.take_along_axis(best, expected, axis=1), abs=1e-5)
    ((_, full),) = index.rankings(queries, rows)
    assert full[:, :7].tolist() == rows.tolist() and sorted(full[0].tolist()) == list(range(n))
    rows, _ = index.search(queries, 100)
    assert rows.shape == (5, n) and (rows >= 0).all()


def test_regions_find_a_small_crop_better_than_the_whole_image(tmp_path: Path) -> None:
    """A quarter crop of a photo is closer to that photo's best region than to its whole view."""
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        sample_photo(name).save(gallery / f"{name}.jpg", quality=90)
    photo = sample_photo("coffee")
    w, h = photo.size
    query = tmp_path / "query"
    query.mkdir()
    photo.crop((w // 2, h // 2, w, h)).save(query / "crop.jpg", quality=70)
    plain = lookalike.search(query, gallery, k=4, options=OPTS)
    regional = lookalike.search(query, gallery, k=4, options=OPTS, refinement=Refinement(regions=2))
    assert regional.ranking()["crop.jpg"][0] == "coffee.jpg"
    score = dict(zip(regional.ranking()["crop.jpg"], regional.scores[0], strict=True))["coffee.jpg"]
    before = dict(zip(plain.ranking()["crop.jpg"], plain.scores[0], strict=True))["coffee.jpg"]
    assert score > before + 0.05 and regional.refinement["regions"] == {
        "levels": 2,
        "count": 5,
        "query": False,
    }
    both = lookalike.search(
        query, gallery, k=4, options=OPTS, refinement=Refinement(regions=2, query_regions=True)
    )
    assert both.ranking()["crop.jpg"][0] == "coffee.jpg" and both.scores[0, 0] >= regional.scores[0, 0] - 1e-4
    with pytest.raises(InputError, match="give --regions too"):
        Refinement(query_regions=True)
    with pytest.raises(InputError, match="not apply"):
        lookalike.search(query, gallery, model="orb", options=OPTS, refinement=Refinement(regions=2))
    extractor = create_extractor("pixels", size=8)
    GalleryIndex.from_embeddings(
        embed(extractor, ImageSet.from_path(gallery), OPTS).features, ["a", "b", "c", "d"], model=extractor
    ).save(tmp_path / "g.index")
    with pytest.raises(InputError, match="holds one vector per image"):
        lookalike.search(query, tmp_path / "g.index", options=OPTS, refinement=Refinement(regions=2))


def test_saved_region_options_rebuild_the_same_extractor() -> None:
    """A saved index's model options give back the extractor that made its vectors; options
    without ``region_upscale`` get the default upscale instead of failing."""
    made = with_regions(create_extractor("pixels"), 2)
    assert rebuild_extractor("pixels", made.options).key == made.key
    assert rebuild_extractor("pixels", {"regions": 2}).key == made.key
    assert rebuild_extractor("pixels", {"regions": 2, "region_upscale": 3}).key != made.key
    assert rebuild_extractor("pixels", {}).key == create_extractor("pixels").key


def test_an_index_of_regions_searches_as_the_folder_does(tmp_path: Path) -> None:
    """`index build --regions 2` stores region vectors; searching it (and serving it) gives the
    folder search's results, an index without regions refuses --regions, and approximate backends
    or stored whitening are refused for regions."""
    from fastapi.testclient import TestClient

    from lookalike.index import build_index
    from lookalike.server import create_app

    gallery, query = tmp_path / "gallery", tmp_path / "query"
    gallery.mkdir(), query.mkdir()
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        sample_photo(name).save(gallery / f"{name}.jpg", quality=90)
    photo = sample_photo("rocket")
    w, h = photo.size
    photo.crop((0, 0, w // 2, h // 2)).save(query / "crop.jpg", quality=70)
    opts = ExtractOptions(progress=False, num_workers=0, cache_dir=tmp_path / "cache")
    index, _ = build_index(gallery, tmp_path / "r.index", model="pixels", regions=2, options=opts)
    assert index.regions == 2 and index.dim == 5 * 32 * 32 * 3
    for query_regions in (False, True):
        refine = Refinement(regions=2, query_regions=query_regions)
        folder = lookalike.search(query, gallery, model="pixels", k=3, options=opts, refinement=refine)
        saved = lookalike.search(query, tmp_path / "r.index", k=3, options=opts, refinement=refine)
        assert saved.indices.tolist() == folder.indices.tolist()
        assert saved.scores == pytest.approx(folder.scores, abs=1e-5)
    plain = lookalike.search(query, tmp_path / "r.index", k=3, options=opts)  # stored regions are used
    whole = lookalike.search(
        query, gallery, model="pixels", k=3, options=opts, refinement=Refinement(regions=2)
    )
    assert plain.indices.tolist() == whole.indices.tolist()
    with TestClient(create_app(tmp_path / "r.index", k=3)) as client:
        answer = client.post(
            "/search", files={"file": ("q.jpg", (query / "crop.jpg").read_bytes(), "image/jpeg")}
        ).json()
    assert [r["path"] for r in answer["results"]] == whole.ranking()["crop.jpg"]
    build_index(gallery, tmp_path / "p.index", model="pixels", options=opts)
    with pytest.raises(InputError, match="one vector per image"):
        lookalike.search(query, tmp_path / "p.index", options=opts, refinement=Refinement(regions=2))
    with pytest.raises(InputError, match="searched exactly"):
        build_index(gallery, tmp_path / "x.index", model="pixels", regions=2, backend="hnsw", options=opts)
    from lookalike.index.stored_steps import IndexPostprocess

    with pytest.raises(InputError, match="not supported"):
        build_index(
            gallery,
            tmp_path / "y.index",
            model="pixels",
            regions=2,
            postprocess=IndexPostprocess(whiten=True),
        )
