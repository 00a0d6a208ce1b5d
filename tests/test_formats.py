"""HEIC/HEIF, AVIF and camera RAW decoding, the messages without the ``formats`` extra, and the pixel
limit applied to images whose features come from the cache."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from lookalike import ExtractOptions, ImageError, ImageSet, create_extractor, embed, load_image
from lookalike import images as images_module
from lookalike.cache import FeatureCache
from lookalike.extract import start_from_cache
from lookalike.images import IMAGE_EXTENSIONS, image_pixels
from lookalike.pipeline import search

RED, BLUE = (255, 0, 0), (0, 0, 255)
EXTRA = 'pip install "lookalike[formats]"'


def _two_tone(width: int = 40, height: int = 20) -> Image.Image:
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:, : width // 2] = RED
    arr[:, width // 2 :] = BLUE
    return Image.fromarray(arr)


def _red_left_blue_right(img: Image.Image) -> None:
    arr = np.asarray(img).astype(int)
    h, w = arr.shape[:2]
    left, right = arr[h // 2, 2], arr[h // 2, w - 3]
    assert img.mode == "RGB"
    assert left[0] > 200 and left[2] < 120 and right[2] > 200 and right[0] < 60, (left, right)


def _write_heic(path: Path, img: Image.Image) -> None:
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.from_pillow(img).save(path, quality=95)  # writes without registering any Pillow opener


def test_new_extensions_are_image_files() -> None:
    for suffix in (".heic", ".heif", ".hif", ".avif", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf"):
        assert suffix in IMAGE_EXTENSIONS
    for suffix in (".orf", ".rw2", ".pef", ".srw"):
        assert suffix in IMAGE_EXTENSIONS


# --- HEIC / HEIF ----------------------------------------------------------------------------------


def test_heic_decodes_and_is_found_in_folders(tmp_path: Path) -> None:
    _write_heic(tmp_path / "photo.heic", _two_tone())
    _write_heic(tmp_path / "other.HEIF", _two_tone(24, 24))
    img = load_image(tmp_path / "photo.heic")
    assert img.size == (40, 20)
    _red_left_blue_right(img)
    assert image_pixels(tmp_path / "photo.heic") == 800
    images = ImageSet.from_path(tmp_path)
    assert images.names == ["other.HEIF", "photo.heic"]
    assert [load_image(p).size for p in images.paths] == [(24, 24), (40, 20)]


def test_heic_saved_as_jpg_is_recognised_by_its_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_heic(tmp_path / "renamed.jpg", _two_tone())
    # forget any HEIF opener registered by earlier tests, so the header sniffing has to do it
    Image.init()  # load every built-in plugin first: Pillow does that once, into whichever list is current
    monkeypatch.setattr(Image, "ID", [i for i in Image.ID if i != "HEIF"])
    if "HEIF" in Image.OPEN:
        monkeypatch.delitem(Image.OPEN, "HEIF")
    monkeypatch.setattr(images_module, "_REGISTERED", set())
    _red_left_blue_right(load_image(tmp_path / "renamed.jpg"))


def test_heic_without_pillow_heif_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_heic(tmp_path / "photo.heic", _two_tone())
    _two_tone().save(tmp_path / "plain.png")
    monkeypatch.setitem(sys.modules, "pillow_heif", None)  # `import pillow_heif` now fails
    with pytest.raises(ImageError) as info:
        load_image(tmp_path / "photo.heic")
    assert info.value.reason == f"HEIC needs pillow-heif: {EXTRA}"
    assert image_pixels(tmp_path / "photo.heic") is None
    images = ImageSet.from_path(tmp_path)
    emb = embed(create_extractor("pixels", size=8), images, ExtractOptions(use_cache=False, progress=False))
    assert [(s.path, s.reason) for s in emb.skipped] == [("photo.heic", f"HEIC needs pillow-heif: {EXTRA}")]
    assert len(emb.indices) == 1


def test_corrupt_heic_is_a_one_line_image_error(tmp_path: Path) -> None:
    _write_heic(tmp_path / "good.heic", _two_tone())
    data = (tmp_path / "good.heic").read_bytes()
    (tmp_path / "cut.heic").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as info:
        load_image(tmp_path / "cut.heic")
    assert "\n" not in str(info.value)


# --- AVIF -----------------------------------------------------------------------------------------


def test_avif_decodes_with_pillow(tmp_path: Path) -> None:
    if not features.check("avif"):
        pytest.skip("this Pillow has no AVIF codec")
    _two_tone().save(tmp_path / "photo.avif", quality=95)
    img = load_image(tmp_path / "photo.avif")
    assert img.size == (40, 20)
    _red_left_blue_right(img)
    images = ImageSet.from_path(tmp_path)
    assert images.names == ["photo.avif"] and image_pixels(images.paths[0]) == 800


def test_avif_without_any_codec_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "photo.avif").write_bytes(
        b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + b"\x00" * 64
    )
    monkeypatch.setattr(images_module, "_pillow_has_avif", lambda: False)
    monkeypatch.setitem(sys.modules, "pillow_heif", None)
    with pytest.raises(ImageError, match=r"AVIF needs a Pillow built with AVIF"):
        load_image(tmp_path / "photo.avif")


# --- camera RAW -----------------------------------------------------------------------------------

# DNG tags (TIFF/EP and DNG 1.4): enough for LibRaw to develop the file
_DNG_TAGS = [
    (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
    (50707, "B", 4, (1, 1, 0, 0), True),  # DNGBackwardVersion
    (50708, "s", 0, "Lookalike Test Camera", True),  # UniqueCameraModel
    (50721, "2i", 9, (1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1), True),  # ColorMatrix1 = I
    (50778, "H", 1, 21, True),  # CalibrationIlluminant1: D65
    (50728, "2I", 3, (1, 1, 1, 1, 1, 1), True),  # AsShotNeutral: camera white balance is neutral
    (50714, "H", 1, 0, True),  # BlackLevel
    (50717, "I", 1, 65535, True),  # WhiteLevel
]


def _scene(height: int, width: int) -> np.ndarray:
    rgb = np.full((height, width, 3), 3000, np.uint16)
    rgb[:, : width // 2, 0] = 60000
    rgb[:, width // 2 :, 2] = 60000
    return rgb


def _write_linear_dng(path: Path, height: int = 32, width: int = 48) -> None:
    """A demosaiced (LinearRaw, photometric 34892) 16-bit DNG: red left half, blue right half."""
    tifffile = pytest.importorskip("tifffile")
    tifffile.imwrite(
        path, _scene(height, width), photometric=34892, planarconfig=1, subfiletype=0, extratags=_DNG_TAGS
    )


def _write_bayer_dng(path: Path, height: int = 32, width: int = 48) -> None:
    """A sensor (CFA, photometric 32803) DNG with an RGGB Bayer mosaic of the same scene."""
    tifffile = pytest.importorskip("tifffile")
    rgb = _scene(height, width)
    mosaic = np.empty((height, width), np.uint16)
    mosaic[0::2, 0::2] = rgb[0::2, 0::2, 0]
    mosaic[0::2, 1::2] = rgb[0::2, 1::2, 1]
    mosaic[1::2, 0::2] = rgb[1::2, 0::2, 1]
    mosaic[1::2, 1::2] = rgb[1::2, 1::2, 2]
    cfa = [
        (33421, "H", 2, (2, 2), True),  # CFARepeatPatternDim
        (33422, "B", 4, (0, 1, 1, 2), True),  # CFAPattern: R G / G B
        (50710, "B", 3, (0, 1, 2), True),  # CFAPlaneColor
        (50711, "H", 1, 1, True),  # CFALayout: rectangular
    ]
    tifffile.imwrite(path, mosaic, photometric=32803, subfiletype=0, extratags=cfa + _DNG_TAGS)


def test_linear_dng_develops_to_rgb(tmp_path: Path) -> None:
    pytest.importorskip("rawpy")
    _write_linear_dng(tmp_path / "shot.dng")
    img = load_image(tmp_path / "shot.dng")
    assert img.size == (48, 32)
    _red_left_blue_right(img)
    assert image_pixels(tmp_path / "shot.dng") == 48 * 32
    images = ImageSet.from_path(tmp_path)
    assert images.names == ["shot.dng"] and load_image(images.paths[0]).size == (48, 32)


def test_bayer_dng_half_size_when_the_draft_allows(tmp_path: Path) -> None:
    pytest.importorskip("rawpy")
    _write_bayer_dng(tmp_path / "sensor.DNG")
    full = load_image(tmp_path / "sensor.DNG")
    assert full.size == (48, 32)
    _red_left_blue_right(full)
    half = load_image(tmp_path / "sensor.DNG", draft_size=16)  # 16 <= 32 / 2: half-size demosaicing
    assert half.size == (24, 16)
    _red_left_blue_right(half)
    assert load_image(tmp_path / "sensor.DNG", draft_size=17).size == (48, 32)


def test_raw_pixel_limit_is_checked_before_developing(tmp_path: Path) -> None:
    pytest.importorskip("rawpy")
    _write_bayer_dng(tmp_path / "sensor.dng")
    with pytest.raises(ImageError) as info:
        load_image(tmp_path / "sensor.dng", max_pixels=1000)
    assert info.value.reason == "48x32 image is over the limit of 1,000 pixels"


def test_corrupt_raw_is_a_one_line_image_error(tmp_path: Path) -> None:
    pytest.importorskip("rawpy")
    (tmp_path / "noise.nef").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    with pytest.raises(ImageError, match="not a RAW file LibRaw can read") as info:
        load_image(tmp_path / "noise.nef")
    assert "\n" not in str(info.value)
    _write_bayer_dng(tmp_path / "whole.dng")
    data = (tmp_path / "whole.dng").read_bytes()
    (tmp_path / "cut.dng").write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match="corrupt RAW") as info:
        load_image(tmp_path / "cut.dng")
    assert "\n" not in str(info.value) and "b'" not in str(info.value)


def test_raw_without_rawpy_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "shot.cr3").write_bytes(b"\x00" * 64)
    monkeypatch.setitem(sys.modules, "rawpy", None)
    with pytest.raises(ImageError) as info:
        load_image(tmp_path / "shot.cr3")
    assert info.value.reason == f"CR3 RAW needs rawpy: {EXTRA}"
    assert image_pixels(tmp_path / "shot.cr3") is None


# --- --max-pixels holds for cached images -------------------------------------------------------------


def _small_search_set(root: Path) -> tuple[Path, Path]:
    query, gallery = root / "query", root / "gallery"
    for folder, names in ((query, ["q0.png", "q1.png"]), (gallery, ["g0.png", "g1.png", "g2.png"])):
        folder.mkdir(parents=True)
        for n, name in enumerate(names):
            Image.new("RGB", (32, 32), (40 * n, 100, 200 - 40 * n)).save(folder / name)
    Image.new("RGB", (64, 64), (250, 250, 0)).save(gallery / "big.png")  # 4,096 pixels
    return query, gallery


def test_cached_image_over_a_lower_pixel_limit_is_skipped(tmp_path: Path) -> None:
    query, gallery = _small_search_set(tmp_path)
    base = {"cache_dir": tmp_path / "cache", "progress": False, "runtime": "torch"}
    first = search(query, gallery, model="pixels", k=2, options=ExtractOptions(**base))
    assert first.skipped["gallery"] == [] and len(first.gallery_names) == 4
    again = search(query, gallery, model="pixels", k=2, options=ExtractOptions(**base, max_pixels=2000))
    assert [(s.path, s.reason) for s in again.skipped["gallery"]] == [
        ("big.png", "64x64 image is over the limit of 2,000 pixels")
    ]
    with pytest.raises(ImageError) as info:
        load_image(gallery / "big.png", max_pixels=2000)
    assert again.skipped["gallery"][0].reason == info.value.reason  # the very text the decoder gives
    assert "big.png" not in again.gallery_names
    assert again.stats["from_cache"] == {"query": 2, "gallery": 3}
    assert again.stats["extracted"] == {"query": 0, "gallery": 0}
    with pytest.raises(ImageError, match="over the limit"):
        search(query, gallery, model="pixels", options=ExtractOptions(**base, max_pixels=2000, strict=True))


def test_start_from_cache_reads_headers_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, gallery = _small_search_set(tmp_path)
    images = ImageSet.from_path(gallery)
    extractor = create_extractor("pixels", size=8)
    cache = FeatureCache(tmp_path / "cache", extractor.key, extractor.describe())
    embed(extractor, images, ExtractOptions(progress=False, runtime="torch"), cache=cache)

    def no_decoding(self: Image.Image) -> None:
        raise AssertionError("start_from_cache decoded pixels")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_decoding)
    _, done, _ = start_from_cache(extractor, images, cache, max_pixels=2000)
    assert dict(zip(images.names, done.tolist(), strict=True)) == {
        "big.png": False,
        "g0.png": True,
        "g1.png": True,
        "g2.png": True,
    }
    assert start_from_cache(extractor, images, cache, max_pixels=None)[1].all()
