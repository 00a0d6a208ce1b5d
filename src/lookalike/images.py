"""Image sets (folders, lists, CSV labels) and robust decoding of one image to RGB."""

from __future__ import annotations

import contextlib
import csv
import errno
import functools
import logging
import os
import stat
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, InputError

log = logging.getLogger("lookalike")

HEIF_EXTENSIONS = frozenset({".heic", ".heif", ".hif"})
RAW_EXTENSIONS = frozenset({".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2", ".pef", ".srw"})
IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".png",
        ".bmp",
        ".gif",
        ".tif",
        ".tiff",
        ".webp",
        ".pgm",
        ".ppm",
        ".pbm",
        ".pnm",
        ".avif",
        *HEIF_EXTENSIONS,
        *RAW_EXTENSIONS,
    }
)
LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list"})
DEFAULT_MAX_PIXELS = 100_000_000
FORMATS_EXTRA = 'pip install "lookalike[formats]"'
_BACKGROUND = (255, 255, 255)
_HEIF_BRANDS = frozenset(
    {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}
)
_AVIF_BRANDS = frozenset({b"avif", b"avis"})


def is_image_file(path: str | Path) -> bool:
    """True when the file name has one of the supported image extensions."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def load_image(
    path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None
) -> Image.Image:
    """Decode one file to an upright 8-bit RGB image, or raise ImageError naming the problem.

    ``draft_size`` lets the JPEG decoder downscale by 1/2..1/8 (and the RAW developer by 1/2) while
    keeping at least that many pixels on each side, which makes big photos several times cheaper to decode.
    """
    path = Path(path)
    _check_file(path)
    if path.suffix.lower() in RAW_EXTENSIONS:
        return _load_raw(path, max_pixels, draft_size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bombs are checked below; broken EXIF is not the picture
            img = _open(path)
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(path, _over_limit(width, height, max_pixels))
            if getattr(img, "n_frames", 1) > 1:
                img.seek(0)
            if draft_size and img.format == "JPEG":
                img.draft(img.mode, (draft_size, draft_size))
            img.load()
    except ImageError:
        raise
    except Image.DecompressionBombError:
        raise ImageError(path, "image is over Pillow's decompression-bomb pixel limit") from None
    except UnidentifiedImageError:
        raise ImageError(path, "not an image (or a format Pillow cannot read)") from None
    except (OSError, SyntaxError, ValueError, EOFError, RuntimeError) as exc:
        raise ImageError(path, f"truncated or corrupt image ({_one_line(exc)})") from None
    with contextlib.suppress(Exception), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a broken EXIF block must not lose the picture, nor print noise
        img = ImageOps.exif_transpose(img)
    return to_rgb(img)


def image_pixels(path: str | Path) -> int | None:
    """Width times height read from the file's header only (nothing is decoded), or None when the
    header cannot be read; cheap enough to apply ``max_pixels`` to images whose features are cached."""
    path = Path(path)
    try:
        if path.suffix.lower() in RAW_EXTENSIONS:
            rawpy = _import_rawpy(path)
            with rawpy.imread(str(path)) as raw:
                width, height = _raw_dims(raw)
            return width * height
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with _open(path) as img:
                return img.width * img.height
    except Exception:  # any reason at all: the decoder will give the precise one
        return None


def _over_limit(width: int, height: int, max_pixels: int) -> str:
    return f"{width}x{height} image is over the limit of {max_pixels:,} pixels"


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line (LibRaw's come as bytes)."""
    args = exc.args
    text = args[0].decode(errors="replace") if len(args) == 1 and isinstance(args[0], bytes) else str(exc)
    return " ".join(text.split()) or type(exc).__name__


def _check_file(path: Path) -> None:
    """Raise ImageError for a missing, dangling, unreadable or empty file before any decoder runs."""
    try:
        info = path.stat()
        size = info.st_size
    except FileNotFoundError:
        if not path.is_symlink():
            raise ImageError(path, "file not found") from None
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        raise ImageError(path, f"dangling symbolic link (to {target}, which does not exist)") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageError(path, "symbolic link loop (the link leads back to itself)") from None
        raise ImageError(path, f"cannot read file ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):  # never opened: reading a named pipe would block for ever
        kind = (
            "a named pipe (FIFO)" if stat.S_ISFIFO(info.st_mode)
            else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
            else "a socket" if stat.S_ISSOCK(info.st_mode)
            else "a folder" if stat.S_ISDIR(info.st_mode)
            else "not a plain file"
        )
        raise ImageError(path, f"not a regular file: {kind}")
    if size == 0:
        raise ImageError(path, "empty file (0 bytes)")


def _open(path: Path) -> Image.Image:
    """``Image.open`` (header only) after registering the optional opener the file's name or, when
    Pillow does not know the file, its ``ftyp`` header asks for (a HEIC saved as ``.jpg``)."""
    suffix = path.suffix.lower()
    kind = "AVIF" if suffix == ".avif" else suffix[1:].upper() if suffix in HEIF_EXTENSIONS else None
    if kind is not None:
        _enable(kind, path)
    try:
        return Image.open(path)
    except UnidentifiedImageError:
        sniffed = _sniff_isobmff(path)
        if sniffed is None or sniffed == kind or not _enable(sniffed, path):
            raise
        return Image.open(path)


def _sniff_isobmff(path: Path) -> str | None:
    """``HEIC`` or ``AVIF`` when the file starts with an ISO-BMFF ``ftyp`` box naming such a brand."""
    try:
        with path.open("rb") as handle:
            head = handle.read(64)
    except OSError:
        return None
    if head[4:8] != b"ftyp":
        return None
    box = head[8 : min(len(head), int.from_bytes(head[:4], "big"))]
    brands = {box[i : i + 4] for i in range(0, len(box) - 3, 4)}
    if brands & _AVIF_BRANDS:
        return "AVIF"
    return "HEIC" if brands & _HEIF_BRANDS else None


def _enable(kind: str, path: Path) -> bool:
    """Make Pillow able to open ``kind`` (HEIC/HEIF/HIF or AVIF); True when that took a new opener.
    Raises ImageError naming the missing package, so batch runs skip the file and say why."""
    if kind == "AVIF":
        if _pillow_has_avif():
            return False
        heif = _heif_module()
        register = getattr(heif, "register_avif_opener", None) if heif is not None else None
        if register is None:
            raise ImageError(
                path,
                "AVIF needs a Pillow built with AVIF (pip install -U pillow) or a pillow-heif with AVIF support",
            )
        return _register_once("avif", register)
    heif = _heif_module()
    if heif is None:
        raise ImageError(path, f"{kind} needs pillow-heif: {FORMATS_EXTRA}")
    return _register_once("heif", heif.register_heif_opener)


_REGISTERED: set[str] = set()


def _register_once(name: str, register: Callable[[], object]) -> bool:
    if name in _REGISTERED:
        return False
    register()
    _REGISTERED.add(name)
    return True


def _heif_module() -> Any:
    """pillow_heif, or None without it (imported on first use, never at import of lookalike)."""
    try:
        import pillow_heif
    except ImportError:
        return None
    return pillow_heif


@functools.cache
def _pillow_has_avif() -> bool:
    from PIL import features

    return bool(features.check("avif"))


def _import_rawpy(path: Path) -> Any:
    try:
        import rawpy
    except ImportError:
        raise ImageError(path, f"{path.suffix[1:].upper()} RAW needs rawpy: {FORMATS_EXTRA}") from None
    return rawpy


def _raw_dims(raw: Any) -> tuple[int, int]:
    """(width, height) of the developed picture, as displayed (LibRaw applies the camera's rotation)."""
    sizes = raw.sizes
    width, height = sizes.width or sizes.raw_width, sizes.height or sizes.raw_height
    return (height, width) if sizes.flip in (5, 6) else (width, height)


def _load_raw(path: Path, max_pixels: int, draft_size: int | None) -> Image.Image:
    """Develop a camera RAW with LibRaw (camera white balance, 8-bit sRGB), checking the pixel count
    from the header before demosaicing; half-size demosaicing when ``draft_size`` allows it."""
    rawpy = _import_rawpy(path)
    try:
        with rawpy.imread(str(path)) as raw:
            width, height = _raw_dims(raw)
            if width * height > max_pixels:
                raise ImageError(path, _over_limit(width, height, max_pixels))
            half = bool(draft_size) and min(width, height) >= 2 * draft_size
            rgb = raw.postprocess(use_camera_wb=True, half_size=half, output_bps=8)
    except ImageError:
        raise
    except rawpy.LibRawFileUnsupportedError:
        raise ImageError(
            path, "not a RAW file LibRaw can read (unsupported camera or corrupt file)"
        ) from None
    except (rawpy.LibRawError, OSError, ValueError, RuntimeError, MemoryError) as exc:
        raise ImageError(path, f"truncated or corrupt RAW file ({_one_line(exc)})") from None
    arr = np.ascontiguousarray(rgb)
    if arr.ndim == 2:
        return Image.fromarray(arr.astype(np.uint8), "L").convert("RGB")
    return Image.fromarray(arr[..., :3].astype(np.uint8), "RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB: 16-bit and float scaled, transparency on white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(img)), "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Map a single-channel integer or float array onto 0..255 by its type's natural range."""
    if arr.dtype.kind == "f":
        top = 1.0 if float(np.nanmax(arr, initial=0.0)) <= 1.0 else 255.0
        return np.clip(np.nan_to_num(arr) * (255.0 / top), 0, 255).round().astype(np.uint8)
    if arr.dtype.kind == "i":  # signed samples: below zero is black, not a wrap-around
        arr = np.maximum(arr, 0)
    peak = int(arr.max(initial=0))
    if peak <= 255:
        return arr.astype(np.uint8)
    top = 65535 if peak <= 65535 else peak
    return np.clip(arr.astype(np.float64) * (255.0 / top), 0, 255).round().astype(np.uint8)


@dataclass
class ImageSet:
    """An ordered list of image files with the folder they are named against and optional labels."""

    paths: list[Path]
    root: Path
    labels: list[str] | None = None
    source: str = ""
    _names: list[str] = field(default_factory=list, repr=False)
    #: symbolic links to folders a folder walk did not follow, as (name under root, reason)
    skipped_links: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.paths = [Path(p) for p in self.paths]
        self.root = Path(self.root)
        if self.labels is not None and len(self.labels) != len(self.paths):
            raise InputError(f"{self.source}: {len(self.labels)} labels for {len(self.paths)} images")
        self._names = [_relative_name(p, self.root) for p in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def names(self) -> list[str]:
        """Each image's path relative to the set's root, with forward slashes."""
        return self._names

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def subset(self, indices: Sequence[int]) -> ImageSet:
        """The images at ``indices``, same root and labels."""
        labels = None if self.labels is None else [self.labels[i] for i in indices]
        return ImageSet(
            [self.paths[i] for i in indices], self.root, labels, self.source, skipped_links=self.skipped_links
        )

    @classmethod
    def from_path(cls, source: str | Path, labels_csv: str | Path | None = None) -> ImageSet:
        """Build a set from a folder (recursive), a text file of paths, a CSV, or one image.

        Labels come from class folders (``root/<label>/x.jpg``) when every image lies in one,
        from a ``path,label`` CSV source, or from ``labels_csv``; otherwise the set is unlabelled.
        """
        src = Path(source)
        if not src.exists():
            raise InputError(f"{src}: no such file or folder")
        if src.is_dir():
            image_set = _from_folder(src)
        elif src.suffix.lower() == ".csv":
            image_set = _from_csv(src)
        elif src.suffix.lower() in LIST_EXTENSIONS:
            image_set = _from_list(src)
        elif is_image_file(src):
            image_set = cls([src], src.parent, None, str(src))
        else:
            raise InputError(
                f"{src}: not a folder, an image ({', '.join(sorted(IMAGE_EXTENSIONS))}), "
                "a .txt list of paths or a path,label .csv"
            )
        if labels_csv is not None:
            image_set.labels = _labels_from_csv(image_set, Path(labels_csv))
        return image_set


def loose_images_message(what: str, *sets: ImageSet | None) -> str | None:
    """Why a folder set has no labels when it is images outside its class folders that keep it
    unlabelled (a stray file at the root): ``what`` needs labels, and which images stand in the way."""
    for image_set in sets:
        if image_set is None or image_set.labels is not None or not Path(image_set.source or "-").is_dir():
            continue  # a list or CSV never takes labels from folders
        loose = [name for name in image_set.names if "/" not in name]
        if loose and len(loose) < len(image_set):
            from .fileio import printable

            return (
                f"{what} needs labels: {image_set.source} has {len(loose)} image(s) outside its class "
                f"folders (such as {printable(loose[0])}); move them into a class folder or elsewhere, "
                "or pass a path,label CSV"
            )
    return None


def _relative_name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _from_folder(folder: Path) -> ImageSet:
    paths, skipped_links = _walk_images(folder)
    if not paths:
        raise InputError(f"{folder}: no image files found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    rel = [p.relative_to(folder) for p in paths]
    labels = [r.parts[0] for r in rel] if all(len(r.parts) > 1 for r in rel) else None
    return ImageSet(paths, folder, labels, str(folder), skipped_links=skipped_links)


def _walk_images(folder: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files under ``folder`` in sorted top-down order, entering every real folder at most once.

    Real sub-folders are walked first, then symbolic links to folders (in name order), each only when
    its target (st_dev, st_ino) has not been walked yet, so loops and duplicate links cannot multiply
    the set. Returns the paths and the links left out as (name under ``folder``, reason), each logged.
    """
    seen: dict[tuple[int, int], str] = {}
    root_id = _dir_id(folder)
    if root_id is not None:
        seen[root_id] = "."
    files: list[Path] = []
    links: list[Path] = []
    skipped: list[tuple[str, str]] = []

    def name(p: Path) -> str:
        return p.relative_to(folder).as_posix()

    def walk(top: Path) -> None:
        for dirpath, dirnames, filenames in os.walk(top):
            base = Path(dirpath)
            keep = []
            for d in sorted(dirnames):
                if d.startswith("."):
                    continue
                sub = base / d
                if sub.is_symlink():
                    links.append(sub)
                    continue
                ident = _dir_id(sub)
                if ident in seen:  # the same folder mounted twice (bind mount): walk it once
                    skipped.append((name(sub), f"already included via {seen[ident]}"))
                    continue
                if ident is not None:
                    seen[ident] = name(sub)
                keep.append(d)
            dirnames[:] = keep
            files.extend(base / f for f in sorted(filenames) if not f.startswith(".") and is_image_file(f))

    walk(folder)
    while links:  # the first link in walk order next, whatever the walks before it added
        link = min(links, key=lambda p: _walk_order(p.relative_to(folder).parts, is_file=False))
        links.remove(link)
        reason = _link_problem(link, seen)
        if reason is not None:
            skipped.append((name(link), reason))
            continue
        ident = _dir_id(link)
        if ident is not None:
            seen[ident] = name(link)
        walk(link)
    for link_name, reason in skipped:
        log.warning("not following %s: %s", folder / link_name, reason)
    files.sort(key=lambda p: _walk_order(p.relative_to(folder).parts, is_file=True))
    return files, skipped


def _dir_id(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the folder ``path`` leads to, following links; None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _link_problem(link: Path, seen: dict[tuple[int, int], str]) -> str | None:
    """Why the folder link ``link`` must not be walked, or None when its target is new."""
    ident = _dir_id(link)
    if ident is None:
        return "cannot read the folder it points to"
    target = os.path.realpath(link)
    here = os.path.realpath(link.parent)
    if here == target or here.startswith(target.rstrip(os.sep) + os.sep):
        return f"symlink loop (points to {target}, a folder that contains it)"
    if ident in seen:
        return f"already included via {seen[ident]}"
    return None


def _walk_order(parts: tuple[str, ...], *, is_file: bool) -> tuple[tuple[int, str], ...]:
    """Sort key that reproduces os.walk's top-down order: a folder's files, then its sub-folders by name."""
    if not is_file:
        return tuple((1, part) for part in parts)
    return (*((1, part) for part in parts[:-1]), (0, parts[-1]))


def _read_rows(path: Path) -> list[list[str]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return [row for row in csv.reader(handle) if row and any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None


def _csv_pairs(path: Path) -> list[tuple[str, str]]:
    rows = _read_rows(path)
    if rows and rows[0][0].strip().lower() in ("path", "file", "filename", "image"):
        rows = rows[1:]
    pairs = []
    for number, row in enumerate(rows, start=1):
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise InputError(f"{path}: row {number} is not 'path,label': {row!r}")
        pairs.append((row[0].strip(), row[1].strip()))
    if not pairs:
        raise InputError(f"{path}: no 'path,label' rows")
    return pairs


def _from_csv(path: Path) -> ImageSet:
    pairs = _csv_pairs(path)
    root = path.parent
    return ImageSet([root / p for p, _ in pairs], root, [lab for _, lab in pairs], str(path))


def _from_list(path: Path) -> ImageSet:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None
    entries = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not entries:
        raise InputError(f"{path}: the list names no images")
    root = path.parent
    return ImageSet([root / e for e in entries], root, None, str(path))


def _labels_from_csv(image_set: ImageSet, csv_path: Path) -> list[str]:
    """Label every image of ``image_set`` from a ``path,label`` CSV whose paths may be relative to the
    CSV's own folder (one file for ``query/`` and ``gallery/``), to the set's root, or bare file names.

    Tried in that order; a bare name only counts when it is unique in the CSV. Rows that name no image
    of this set (the other side's) are ignored; an image with no row is an error.
    """
    pairs = _csv_pairs(csv_path)
    base = os.path.abspath(csv_path.parent)
    by_path: dict[str, str] = {}
    by_name: dict[str, str] = {}
    for entry, label in pairs:
        by_path[os.path.normpath(os.path.join(base, entry))] = label
        by_name[PurePosixPath(entry).as_posix()] = label
    by_resolved: dict[str, str] | None = None
    by_file: dict[str, str | None] | None = None
    labels, missing = [], []
    for name, p in zip(image_set.names, image_set.paths, strict=True):
        label = by_path.get(os.path.normpath(os.path.abspath(p)))
        if label is None:
            if by_resolved is None:  # symbolic links on either side: compare real paths, built once
                by_resolved = {os.path.realpath(k): v for k, v in by_path.items()}
            label = by_resolved.get(os.path.realpath(p))
        if label is None:
            label = by_name.get(name)
        if label is None:
            if by_file is None:  # bare names, only from rows that name no existing file (the other side's
                by_file = {}  # rows do, and must not label a namesake on this side)
                for entry, row_label in pairs:
                    if not os.path.exists(os.path.join(base, entry)):
                        file_name = PurePosixPath(entry).name
                        by_file[file_name] = None if file_name in by_file else row_label
            label = by_file.get(p.name)
        if label is None:
            missing.append(name)
        labels.append(label or "")
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise InputError(f"{csv_path}: no label for {len(missing)} image(s): {shown}")
    return labels
