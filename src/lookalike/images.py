"""Image sets (folders, lists, CSV labels) and robust decoding of one image to RGB."""

from __future__ import annotations

import contextlib
import csv
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError, InputError

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
    }
)
LIST_EXTENSIONS = frozenset({".txt", ".lst", ".list"})
DEFAULT_MAX_PIXELS = 100_000_000
_BACKGROUND = (255, 255, 255)


def is_image_file(path: str | Path) -> bool:
    """True when the file name has one of the supported image extensions."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def load_image(
    path: str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft_size: int | None = None
) -> Image.Image:
    """Decode one file to an upright 8-bit RGB image, or raise ImageError naming the problem.

    ``draft_size`` lets the JPEG decoder downscale by 1/2..1/8 while keeping at least that many
    pixels on each side, which makes big photos several times cheaper to decode.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except OSError as exc:
        raise ImageError(path, f"cannot read file ({exc.strerror})") from None
    if size == 0:
        raise ImageError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
            width, height = img.size
            if width * height > max_pixels:
                raise ImageError(path, f"{width}x{height} image is over the limit of {max_pixels:,} pixels")
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
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(path, f"truncated or corrupt image ({exc})") from None
    with contextlib.suppress(Exception):  # a broken EXIF block must not lose the picture itself
        img = ImageOps.exif_transpose(img)
    return to_rgb(img)


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
        return ImageSet([self.paths[i] for i in indices], self.root, labels, self.source)

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


def _relative_name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _from_folder(folder: Path) -> ImageSet:
    paths: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        base = Path(dirpath)
        paths.extend(base / f for f in sorted(filenames) if not f.startswith(".") and is_image_file(f))
    if not paths:
        raise InputError(f"{folder}: no image files found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    rel = [p.relative_to(folder) for p in paths]
    labels = [r.parts[0] for r in rel] if all(len(r.parts) > 1 for r in rel) else None
    return ImageSet(paths, folder, labels, str(folder))


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
    table = dict(_csv_pairs(csv_path))
    labels, missing = [], []
    for name, p in zip(image_set.names, image_set.paths, strict=True):
        label = table.get(name, table.get(p.name))
        if label is None:
            missing.append(name)
        labels.append(label or "")
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise InputError(f"{csv_path}: no label for {len(missing)} image(s): {shown}")
    return labels
