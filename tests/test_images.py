"""Image discovery, labels and decoding of every supported format and of bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lookalike import ImageError, ImageSet, InputError, load_image

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _two_tone(width: int = 40, height: int = 20) -> Image.Image:
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:, : width // 2] = RED
    arr[:, width // 2 :] = BLUE
    return Image.fromarray(arr)


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".bmp", ".tif", ".webp", ".ppm", ".gif"])
def test_colour_formats_decode_to_rgb(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"img{suffix}"
    _two_tone().save(path)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (40, 20)
    left, right = np.asarray(img)[10, 5].astype(int), np.asarray(img)[10, 35].astype(int)
    assert left[0] > 200 and left[2] < 60 and right[2] > 200 and right[0] < 60


def test_pgm_grey_becomes_rgb(tmp_path: Path) -> None:
    path = tmp_path / "grey.pgm"
    Image.fromarray(np.full((6, 8), 77, np.uint8)).save(path)
    arr = np.asarray(load_image(path))
    assert arr.shape == (6, 8, 3) and (arr == 77).all()


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display turned 90 degrees clockwise
    _two_tone().save(path, exif=exif, quality=95)
    img = load_image(path)
    assert img.size == (20, 40)
    arr = np.asarray(img).astype(int)
    assert arr[5, 10, 0] > 200 and arr[35, 10, 2] > 200  # red on top, blue below


def test_gif_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (8, 8), RED), Image.new("RGB", (8, 8), BLUE)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100)
    arr = np.asarray(load_image(path)).astype(int)
    assert arr[4, 4, 0] > 200 and arr[4, 4, 2] < 60


def test_rgba_and_palette_transparency_on_white(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    rgba.save(tmp_path / "rgba.png")
    arr = np.asarray(load_image(tmp_path / "rgba.png"))
    assert tuple(arr[0, 0]) == RED and tuple(arr[3, 3]) == (255, 255, 255)
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.save(tmp_path / "pal.png", transparency=0)
    assert tuple(np.asarray(load_image(tmp_path / "pal.png"))[0, 0]) == (0, 255, 0)
    pal.putpixel((1, 1), 0)
    pal.save(tmp_path / "pal2.png", transparency=0)
    assert tuple(np.asarray(load_image(tmp_path / "pal2.png"))[1, 1]) == (255, 255, 255)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, quality=95)
    r, g, b = np.asarray(load_image(path))[4, 4].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_sixteen_bit_grey_scaled_not_clipped(tmp_path: Path) -> None:
    arr = np.array([[0, 32768, 65535, 1000]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    out = np.asarray(load_image(path))[0, :, 0].astype(int)
    assert out.tolist() == [0, 128, 255, 4]


def test_names_with_spaces_and_non_ascii(tmp_path: Path) -> None:
    folder = tmp_path / "galería"
    folder.mkdir()
    path = folder / "café au lait ü.png"
    _two_tone().save(path)
    images = ImageSet.from_path(folder)
    assert images.names == ["café au lait ü.png"]
    assert load_image(images.paths[0]).size == (40, 20)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.jpg", b"", "empty file"),
        ("text.png", b"this is not an image at all", "not an image"),
    ],
)
def test_bad_files_name_the_problem(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageError, match=reason) as info:
        load_image(path)
    assert info.value.path == str(path)


def test_truncated_jpeg(tmp_path: Path) -> None:
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(good)
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ImageError, match="truncated"):
        load_image(bad)


def test_pixel_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (30, 30)).save(path)
    with pytest.raises(ImageError, match="over the limit"):
        load_image(path, max_pixels=500)
    assert load_image(path, max_pixels=900).size == (30, 30)


def test_missing_file_in_list(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="file not found"):
        load_image(tmp_path / "nowhere.jpg")


def _tree(root: Path, files: list[str]) -> None:
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(root / f)


def test_labels_from_class_folders(tmp_path: Path) -> None:
    _tree(tmp_path, ["cat/b.png", "cat/a.png", "dog/sub/c.png"])
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / ".hidden" / "x.png")
    images = ImageSet.from_path(tmp_path)
    assert images.names == ["cat/a.png", "cat/b.png", "dog/sub/c.png"]
    assert images.labels == ["cat", "cat", "dog"]


def test_flat_folder_is_unlabelled(tmp_path: Path) -> None:
    _tree(tmp_path, ["a.png", "b.png"])
    assert ImageSet.from_path(tmp_path).labels is None


def test_labels_from_csv(tmp_path: Path) -> None:
    _tree(tmp_path / "imgs", ["a.png", "b.png"])
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\na.png,x\nb.png,y\n")
    images = ImageSet.from_path(tmp_path / "imgs", labels_csv=csv)
    assert images.labels == ["x", "y"]
    csv.write_text("a.png,x\n")
    with pytest.raises(InputError, match="no label for 1 image"):
        ImageSet.from_path(tmp_path / "imgs", labels_csv=csv)


def test_csv_as_source_and_list_file(tmp_path: Path) -> None:
    _tree(tmp_path, ["p/a.png", "p/b.png"])
    (tmp_path / "set.csv").write_text("p/a.png,one\np/b.png,two\n")
    images = ImageSet.from_path(tmp_path / "set.csv")
    assert images.names == ["p/a.png", "p/b.png"] and images.labels == ["one", "two"]
    (tmp_path / "list.txt").write_text("# comment\np/b.png\n\np/a.png\n")
    listed = ImageSet.from_path(tmp_path / "list.txt")
    assert listed.names == ["p/b.png", "p/a.png"] and listed.labels is None


def test_single_file_and_bad_sources(tmp_path: Path) -> None:
    _tree(tmp_path, ["one.png"])
    assert ImageSet.from_path(tmp_path / "one.png").names == ["one.png"]
    with pytest.raises(InputError, match="no such file"):
        ImageSet.from_path(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        ImageSet.from_path(tmp_path / "empty")
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(InputError, match="not a folder"):
        ImageSet.from_path(tmp_path / "model.onnx")
