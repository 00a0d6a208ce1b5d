"""A small labelled copy-detection set made from real photos bundled with scikit-image.

Each photo becomes a class: the gallery holds several edited copies (crops, rotations, rescaling,
colour changes, JPEG recompression) and the query set one more, so a search has a known answer
and needs no download.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from .errors import InputError

PHOTOS = (
    "astronaut",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "clock",
    "retina",
    "stereo_motorcycle",
    "brick",
    "page",
)


def sample_photo(name: str) -> Image.Image:
    """One of scikit-image's bundled photographs as an RGB Pillow image."""
    import skimage.data

    if name not in PHOTOS:
        raise InputError(f"unknown sample photo {name!r}; choose from {', '.join(PHOTOS)}")
    data = getattr(skimage.data, name)()
    if isinstance(data, tuple):  # stereo_motorcycle gives (left, right, disparity)
        data = data[0]
    return Image.fromarray(np.asarray(data)).convert("RGB")


def edited_copy(img: Image.Image, rng: np.random.Generator, strength: float = 1.0) -> Image.Image:
    """A random but plausible edit of ``img``: crop, rotate, rescale, flip, colour and contrast."""
    w, h = img.size
    area = rng.uniform(1.0 - 0.45 * strength, 1.0)
    aspect = rng.uniform(0.8, 1.25)
    cw = int(min(w, round(w * np.sqrt(area * aspect))))
    ch = int(min(h, round(h * np.sqrt(area / aspect))))
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = img.crop((x0, y0, x0 + cw, y0 + ch))
    angle = float(rng.uniform(-15, 15) * strength)
    out = out.rotate(angle, resample=Image.Resampling.BILINEAR, expand=False, fillcolor=(128, 128, 128))
    scale = float(rng.uniform(0.5, 1.2))
    out = out.resize((max(16, int(cw * scale)), max(16, int(ch * scale))), Image.Resampling.BILINEAR)
    if rng.random() < 0.3:
        out = ImageOps.mirror(out)
    out = ImageEnhance.Brightness(out).enhance(float(rng.uniform(1 - 0.3 * strength, 1 + 0.3 * strength)))
    return ImageEnhance.Contrast(out).enhance(float(rng.uniform(1 - 0.3 * strength, 1 + 0.3 * strength)))


def make_copy_detection_set(
    out_dir: str | Path,
    *,
    photos: tuple[str, ...] = PHOTOS,
    gallery_copies: int = 4,
    query_copies: int = 1,
    seed: int = 0,
    strength: float = 1.0,
) -> tuple[Path, Path]:
    """Write ``out/query/<photo>/*.jpg`` and ``out/gallery/<photo>/*.jpg``; return both folders.

    ``strength`` scales the edits: 1 keeps at least 55% of the photo and turns it up to 15
    degrees; 1.8 keeps as little as 19% and turns up to 27 degrees (a hard set)."""
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    query_dir, gallery_dir = out / "query", out / "gallery"
    for name in photos:
        img = sample_photo(name)
        for folder, count, prefix in (
            (gallery_dir, gallery_copies, "copy"),
            (query_dir, query_copies, "query"),
        ):
            (folder / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                quality = int(rng.integers(30, 95))
                edited_copy(img, rng, strength).save(folder / name / f"{name}_{prefix}{i}.jpg", quality=quality)
    return query_dir, gallery_dir
