"""A permanent corpus of bad and odd input files: one gallery folder where real photos sit beside
broken, hostile and unusual files, with the names a run must read, skip or ignore.

``build_corpus(root)`` writes everything under ``root`` (deterministically, from a fixed seed) and
returns a :class:`Corpus` that says what should happen to each file. Names are as lookalike reports
them: relative to the gallery, with forward slashes, and ``os.fsdecode``-d (a name that is not
valid UTF-8 keeps its bytes as lone surrogates, which is what ``json.loads`` gives back).
"""

from __future__ import annotations

import io
import os
import stat
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, features

from lookalike.samples import sample_photo

SEED = 20240611
#: the ``--max-pixels`` the corpus is meant to be run with: every good image is below it
MAX_PIXELS = 250_000
#: the decompression bomb's declared size: 900M pixels, over Pillow's and lookalike's default limits
BOMB_SIDE = 30_000
NON_UTF8_NAME = os.fsdecode(b"caf\xe9.jpg")


@dataclass
class Corpus:
    """Where the corpus lies and what a run over it should do with each gallery entry."""

    root: Path
    query: Path
    gallery: Path
    all_bad: Path
    max_pixels: int = MAX_PIXELS
    #: gallery names that must be read (each exactly once), with what is odd about them
    good: dict[str, str] = field(default_factory=dict)
    #: gallery names that must be skipped with a reason: name -> (what is wrong, words the reason may use)
    bad: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    #: gallery names that are not images at all and must be neither read nor reported
    ignored: dict[str, str] = field(default_factory=dict)
    #: folder links a walk must not follow (loops, duplicates), and must mention
    links: dict[str, str] = field(default_factory=dict)
    #: query file names (all clean)
    queries: list[str] = field(default_factory=list)
    #: names in ``all_bad`` (every one of them unreadable)
    all_bad_names: list[str] = field(default_factory=list)
    #: (query name, gallery name) of the upright photo and its EXIF-rotated (orientation 6) copy
    rotated_pair: tuple[str, str] = ("upright.jpg", "exif_rotated.jpg")
    #: kinds the corpus could not make here (no encoder), with why
    missing: dict[str, str] = field(default_factory=dict)
    #: good files of unusual modes -> (the upright RGB picture they must decode to, mean abs tolerance)
    expected: dict[str, tuple[np.ndarray, float]] = field(default_factory=dict)

    def kinds(self) -> int:
        """How many distinct entries (each one kind of input) the gallery holds."""
        return len(self.good) + len(self.bad) + len(self.ignored) + len(self.links)


def _small(name: str, width: int = 96) -> Image.Image:
    """A scikit-image photo resized to ``width`` pixels wide (aspect kept)."""
    img = sample_photo(name)
    height = max(1, round(img.height * width / img.width))
    return img.resize((width, height), Image.Resampling.LANCZOS)


def on_white(img: Image.Image) -> Image.Image:
    """``img`` composited on a white background, as RGB (how transparency is expected to decode)."""
    rgba = img.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")


def _encoded(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    """``img`` saved to bytes in ``fmt``."""
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC."""
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def _png_bytes(width: int, height: int, idat: bytes, color_type: int = 0, bit_depth: int = 1) -> bytes:
    """A PNG file from its header fields and an already compressed IDAT payload."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def decompression_bomb(width: int = BOMB_SIDE, height: int | None = None) -> bytes:
    """A valid 1-bit PNG of black pixels (default 30000 x 30000: ~100 KB on disk, 900M pixels decoded)."""
    height = width if height is None else height
    row = b"\x00" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    block = row * 1000
    parts = [packer.compress(block) for _ in range(height // 1000)]
    parts.append(packer.compress(row * (height % 1000)))
    parts.append(packer.flush())
    return _png_bytes(width, height, b"".join(parts))


def _corrupt_exif_jpeg(img: Image.Image, rng: np.random.Generator) -> bytes:
    """A JPEG whose APP1 Exif block is a TIFF header pointing at an IFD far outside it, then noise."""
    junk = b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 0x7FFFFFF0) + rng.bytes(40)
    return _encoded(img, "JPEG", quality=90, exif=junk)


def _write_bytes_name(folder: Path, name: bytes, data: bytes) -> None:
    """Write ``data`` to a file whose name is given as raw bytes (it need not be valid UTF-8)."""
    with open(os.path.join(os.fsencode(folder), name), "wb") as handle:
        handle.write(data)


def _heic_bytes(img: Image.Image) -> bytes | None:
    """``img`` as HEIC via pillow-heif, or None when it is not installed or cannot encode."""
    try:
        import pillow_heif
    except ImportError:
        return None
    buffer = io.BytesIO()
    try:
        pillow_heif.from_pillow(img).save(buffer, quality=90)
    except Exception:  # an encoder-less build of libheif
        return None
    return buffer.getvalue()


def _avif_bytes(img: Image.Image) -> bytes | None:
    """``img`` as AVIF with Pillow's own codec, or None when this Pillow has none."""
    if not features.check("avif"):
        return None
    return _encoded(img, "AVIF", quality=90)


def _tiff16_rgb_bytes(img: Image.Image) -> bytes | None:
    """``img`` as a 16-bit-per-channel RGB TIFF (Pillow cannot write one; tifffile can), or None."""
    try:
        import tifffile
    except ImportError:
        return None
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.asarray(img).astype(np.uint16) * 257, photometric="rgb")
    return buffer.getvalue()


def _tiff16_big_endian_bytes(img: Image.Image) -> bytes | None:
    """``img`` (greyscale) as a big-endian 16-bit TIFF (Pillow mode I;16B), or None without tifffile."""
    try:
        import tifffile
    except ImportError:
        return None
    buffer = io.BytesIO()
    tifffile.imwrite(
        buffer, (np.asarray(img.convert("L")).astype(np.uint16) * 257).astype(">u2"), byteorder=">"
    )
    return buffer.getvalue()


def _build_gallery(corpus: Corpus, rng: np.random.Generator) -> None:
    """Fill ``corpus.gallery`` and record each entry's expected fate in ``corpus``."""
    g = corpus.gallery
    astronaut, chelsea, coffee = _small("astronaut"), _small("chelsea"), _small("coffee")
    camera, coins, moon = _small("camera", 80), _small("coins", 80), _small("moon", 64)
    clock, motorcycle, page = _small("clock", 72), _small("stereo_motorcycle", 88), _small("page", 90)
    brick, retina, hubble = _small("brick", 64), _small("retina", 70), _small("hubble_deep_field", 76)
    rocket = _small("rocket", 96)

    def good(
        name: str,
        what: str,
        data: bytes | Callable[[Path], None],
        expect: Image.Image | None = None,
        tolerance: float = 1.0,
    ) -> None:
        path = g / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            data(path)
        corpus.good[name] = what
        if expect is not None:
            corpus.expected[name] = (np.asarray(expect.convert("RGB")), tolerance)

    def bad(name: str, what: str, words: tuple[str, ...], data: bytes | Callable[[Path], None]) -> None:
        path = g / name
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            data(path)
        corpus.bad[name] = (what, words)

    # --- real photos, plain -----------------------------------------------------------------------
    good("photo_astronaut.jpg", "real photo, JPEG", _encoded(astronaut, "JPEG", quality=90))
    good("photo_chelsea.png", "real photo, PNG", _encoded(chelsea, "PNG"))
    good("photo_coffee.jpg", "real photo, JPEG", _encoded(coffee, "JPEG", quality=85))
    good("sub/deep.jpg", "real photo in a real sub-folder", _encoded(camera, "JPEG", quality=90))

    # --- unusual modes and formats that must decode -------------------------------------------------
    good("cmyk.jpg", "CMYK JPEG", _encoded(coins.convert("CMYK"), "JPEG", quality=90), coins, 8)
    grey16 = Image.fromarray(np.asarray(moon.convert("L")).astype(np.uint16) * 257)
    good("gray16.png", "16-bit greyscale PNG (I;16)", _encoded(grey16, "PNG"), moon.convert("L"))
    tiff16 = _tiff16_rgb_bytes(clock)
    if tiff16 is not None:
        good("rgb16.tif", "16-bit-per-channel RGB TIFF (tifffile)", tiff16, clock)
    else:
        corpus.missing["rgb16.tif"] = "tifffile is not installed (Pillow cannot write 16-bit RGB)"
    tiff16be = _tiff16_big_endian_bytes(retina)
    if tiff16be is not None:
        good("gray16be.tif", "big-endian 16-bit grey TIFF (I;16B, tifffile)", tiff16be, retina.convert("L"))
    else:
        corpus.missing["gray16be.tif"] = "tifffile is not installed"
    floats = Image.fromarray(np.asarray(brick.convert("L")).astype(np.float32) / 255.0)
    good("float32.tif", "32-bit float grey TIFF (F, 0..1)", _encoded(floats, "TIFF"), brick.convert("L"))
    good("bilevel.png", "1-bit PNG", _encoded(page.convert("1"), "PNG"), page.convert("1"), 0)
    palette = chelsea.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    see_through = np.asarray(palette.convert("RGB")).copy()
    see_through[np.asarray(palette) == 0] = 255  # index 0 is transparent: white shows through
    good(
        "palette_alpha.png",
        "palette PNG with a transparent index",
        _encoded(palette, "PNG", transparency=0),
        Image.fromarray(see_through),
    )
    alpha = Image.linear_gradient("L").resize(retina.size)
    la = Image.merge("LA", (retina.convert("L"), alpha))
    good("la.png", "grey + alpha PNG (LA)", _encoded(la, "PNG"), on_white(la))
    rgba = motorcycle.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    good("rgba.webp", "RGBA WebP", _encoded(rgba, "WEBP", quality=90), on_white(rgba), 8)
    frames = [hubble.rotate(10 * i) for i in range(4)]
    good(
        "animated.gif",
        "animated GIF, 4 frames (the first one counts)",
        _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0),
        frames[0],
        4,
    )
    pages = [coffee.rotate(90 * i, expand=True) for i in range(3)]
    good(
        "multipage.tif",
        "multi-page TIFF, 3 pages (the first one counts)",
        _encoded(pages[0], "TIFF", save_all=True, append_images=pages[1:]),
        pages[0],
    )
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored picture must be turned 90 degrees clockwise to show upright
    stored = rocket.transpose(Image.Transpose.ROTATE_90)  # 90 degrees anticlockwise
    good(
        corpus.rotated_pair[1],
        "JPEG with EXIF orientation 6",
        _encoded(stored, "JPEG", quality=95, exif=exif),
        rocket,
        6,
    )
    upside_down = astronaut.rotate(180)
    good(
        "corrupt_exif.jpg",
        "JPEG with a corrupt EXIF block",
        _corrupt_exif_jpeg(upside_down, rng),
        upside_down,
        8,
    )
    flipped = chelsea.rotate(180)
    good("jpeg_named.png", "a JPEG saved with a .png name", _encoded(flipped, "JPEG", quality=90), flipped, 6)
    dot = Image.new("RGB", (1, 1), (200, 40, 90))
    good("tiny_1x1.png", "1x1 image", _encoded(dot, "PNG"), dot, 0)
    thin = Image.fromarray(rng.integers(0, 256, (5000, 1, 3), dtype=np.uint8))
    good("thin_1x5000.png", "1 pixel wide, 5000 tall", _encoded(thin, "PNG"), thin, 0)
    heic = _heic_bytes(camera.rotate(90))
    if heic is not None:
        good("photo.heic", "HEIC (pillow-heif)", heic, camera.rotate(90), 5)
    else:
        corpus.missing["photo.heic"] = "pillow-heif is not installed or cannot encode"
    avif = _avif_bytes(coins.rotate(90))
    if avif is not None:
        good("photo.avif", "AVIF (Pillow's own codec)", avif, coins.rotate(90), 5)
    else:
        corpus.missing["photo.avif"] = "this Pillow has no AVIF codec"

    # --- awkward names --------------------------------------------------------------------------
    variants = iter(rng.permutation(360))

    def photo_variant() -> bytes:
        return _encoded(astronaut.rotate(float(next(variants))), "JPEG", quality=85)

    good("café ☕.jpg", "Unicode name (accent, emoji)", photo_variant())
    _write_bytes_name(g, os.fsencode(NON_UTF8_NAME), photo_variant())
    corpus.good[NON_UTF8_NAME] = "name that is not valid UTF-8 (Latin-1 e-acute byte)"
    good("new\nline.jpg", "name with a newline", photo_variant())
    good("-rf.jpg", "name starting with '-'", photo_variant())
    good("with space.jpg", "name with a space", photo_variant())
    good("100%.jpg", "name with '%'", photo_variant())
    good("#hash.jpg", "name with '#'", photo_variant())
    good("what?.jpg", "name with '?'", photo_variant())
    good("UPPER.JPG", "upper-case extension", photo_variant())
    good("unreadable.jpg", "mode 000 (root reads it anyway)", photo_variant())
    os.chmod(g / "unreadable.jpg", 0)
    if os.geteuid() != 0:  # only root can read a mode-000 file; anyone else must skip it
        del corpus.good["unreadable.jpg"]
        corpus.bad["unreadable.jpg"] = ("mode 000, not readable", ("permission", "cannot read"))

    # --- files that must be skipped with a reason ---------------------------------------------------
    jpeg = _encoded(chelsea, "JPEG", quality=90)
    png = _encoded(coffee, "PNG")
    bad("empty.jpg", "empty file", ("empty",), b"")
    bad("truncated.jpg", "JPEG cut in half", ("truncated", "corrupt"), jpeg[: len(jpeg) // 2])
    bad("truncated.png", "PNG cut in half", ("truncated", "corrupt"), png[: len(png) // 2])
    bad("text.jpg", "text file named .jpg", ("not an image",), b"just some notes, not a picture\n" * 4)
    bad("random.png", "random bytes named .png", ("not an image",), rng.bytes(4096))
    html = b"<!DOCTYPE html>\n<html><head><title>404</title></head><body>Not Found</body></html>\n"
    bad("html.gif", "HTML page named .gif", ("not an image",), html)
    bad("bomb.png", f"decompression bomb ({BOMB_SIDE}x{BOMB_SIDE})", ("limit", "bomb"), decompression_bomb())
    # 120M pixels: under Pillow's own error threshold (2 x 89M), so only lookalike's 100M default stops it
    bad("bomb_120mp.png", "12000x10000 PNG, ~20 KB on disk", ("limit",), decompression_bomb(12_000, 10_000))
    over = Image.linear_gradient("L").resize((501, 500)).convert("RGB")  # 250,500 pixels
    bad("over_limit.png", f"501x500: just over --max-pixels {MAX_PIXELS}", ("limit",), _encoded(over, "PNG"))
    bad(
        "zero_size.png",
        "PNG header declaring 0x0 pixels",
        ("not an image", "corrupt"),
        _png_bytes(0, 0, zlib.compress(b"")),
    )
    broken_avif = b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + rng.bytes(512)
    bad("broken.avif", "AVIF header followed by noise", ("corrupt", "not an image", "truncated"), broken_avif)
    bad("x.jpg", "dangling symbolic link", ("dangling",), lambda p: p.symlink_to("no_such_target.jpg"))
    bad("fifo.jpg", "named pipe (FIFO)", ("fifo", "pipe", "regular file"), lambda p: os.mkfifo(p))
    if os.path.exists("/dev/zero"):  # endless zeros: reading it to the end never ends
        bad(
            "devzero.jpg",
            "link to /dev/zero",
            ("device", "regular file"),
            lambda p: p.symlink_to("/dev/zero"),
        )
    else:
        corpus.missing["devzero.jpg"] = "no /dev/zero here"

    # --- entries that are not image files and must be ignored -------------------------------------
    (g / "dir.jpg").mkdir()
    corpus.ignored["dir.jpg"] = "an (empty) folder named like an image"
    (g / ".hidden.jpg").write_bytes(_encoded(coins, "JPEG"))
    corpus.ignored[".hidden.jpg"] = "hidden file (a valid JPEG)"
    (g / ".hidden_dir").mkdir()
    (g / ".hidden_dir" / "inside.jpg").write_bytes(_encoded(coins, "JPEG"))
    corpus.ignored[".hidden_dir/inside.jpg"] = "image inside a hidden folder"
    (g / "notes.txt").write_text("not an image extension\n", encoding="utf-8")
    corpus.ignored["notes.txt"] = "file without an image extension"

    # --- folder links: one followed, the rest loops or duplicates -----------------------------------
    shared = corpus.root / "shared"
    shared.mkdir()
    (shared / "shared.jpg").write_bytes(_encoded(clock.rotate(180), "JPEG", quality=90))
    (g / "linked_a").symlink_to(shared)
    corpus.good["linked_a/shared.jpg"] = "image in a folder outside the gallery, reached by a link"
    (g / "linked_b").symlink_to(os.path.relpath(shared, g))
    corpus.links["linked_b"] = "second link to the same folder as linked_a"
    (g / "loop").symlink_to(".")
    corpus.links["loop"] = "symlink loop: loop -> ."
    (g / "sub" / "up").symlink_to("..")
    corpus.links["sub/up"] = "link to its own ancestor (the gallery)"
    (g / "to_root").symlink_to(corpus.root)
    corpus.links["to_root"] = "link to an ancestor outside the gallery (the corpus root)"


def _build_query(corpus: Corpus) -> None:
    """A few clean query images, among them the upright original of the EXIF-rotated gallery file."""
    q = corpus.query
    q.mkdir(parents=True)
    _small("astronaut").crop((8, 8, 88, 88)).save(q / "astronaut_crop.jpg", quality=90)
    _small("chelsea").save(q / "chelsea.png")
    _small("rocket", 96).save(q / corpus.rotated_pair[0], quality=95)
    corpus.queries = sorted(p.name for p in q.iterdir())


def _build_all_bad(corpus: Corpus, rng: np.random.Generator) -> None:
    """A folder where no file can be read at all."""
    folder = corpus.all_bad
    folder.mkdir(parents=True)
    jpeg = _encoded(_small("coins"), "JPEG")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("hello\n", encoding="utf-8")
    (folder / "random.png").write_bytes(rng.bytes(2048))
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    (folder / "x.jpg").symlink_to("missing.jpg")
    os.mkfifo(folder / "fifo.jpg")
    corpus.all_bad_names = sorted(os.listdir(folder))


def build_corpus(root: Path) -> Corpus:
    """Write the query, gallery and all-bad folders under ``root`` (which must not exist or be empty)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    corpus = Corpus(root=root, query=root / "query", gallery=root / "gallery", all_bad=root / "all_bad")
    corpus.gallery.mkdir()
    _build_gallery(corpus, rng)
    _build_query(corpus)
    _build_all_bad(corpus, rng)
    return corpus


def is_fifo(path: Path) -> bool:
    """True when ``path`` is a named pipe (without opening it)."""
    return stat.S_ISFIFO(os.lstat(path).st_mode)
