"""A small labelled copy-detection set made from real photos bundled with scikit-image.

Each photo becomes a class: the gallery holds several edited copies (crops, rotations, rescaling,
colour changes, JPEG recompression) and the query set one more, so a search has a known answer
and needs no download. Harder variants (as in the DISC21 copy-detection challenge) paste queries
into other photos under a caption and add a gallery of distractors cut from photos that no query
shows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

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
# photos that no query shows: the material of distractors and of composite backgrounds
DISTRACTOR_PHOTOS = (
    "grass",
    "gravel",
    "horse",
    "text",
    "cell",
    "colorwheel",
    "logo",
    "shepp_logan_phantom",
    "microaneurysms",
)
DISTRACTOR_LABEL = "distractors"


def sample_photo(name: str) -> Image.Image:
    """One of scikit-image's bundled photographs as an RGB Pillow image."""
    import skimage.data

    if name not in PHOTOS + DISTRACTOR_PHOTOS:
        raise InputError(f"unknown sample photo {name!r}; choose from {', '.join(PHOTOS + DISTRACTOR_PHOTOS)}")
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


def composite_copy(img: Image.Image, background: Image.Image, rng: np.random.Generator) -> Image.Image:
    """``img`` shrunk to 35-70% of the width of a crop of ``background`` and pasted into it, under a
    random caption: the copy fills only part of the picture, as in shared memes and screenshots."""
    bg = edited_copy(background, rng, 1.0).resize((384, 384), Image.Resampling.BILINEAR)
    scale = float(rng.uniform(0.35, 0.7))
    w = int(bg.width * scale)
    h = max(16, min(bg.height - 8, int(w * img.height / img.width)))
    fg = img.resize((w, h), Image.Resampling.BILINEAR)
    x0, y0 = int(rng.integers(0, bg.width - w + 1)), int(rng.integers(0, bg.height - h + 1))
    bg.paste(fg, (x0, y0))
    draw = ImageDraw.Draw(bg)
    words = "".join(chr(int(c)) for c in rng.integers(65, 91, int(rng.integers(6, 14))))
    ty = int(rng.integers(0, bg.height - 40))
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    draw.text((int(rng.integers(0, 120)), ty), words, fill=colour, font_size=int(rng.integers(22, 40)))
    return bg


def _distractor(rng: np.random.Generator, photos: list[Image.Image]) -> Image.Image:
    """A strongly edited crop of one distractor photo, half the time pasted into another."""
    first = photos[int(rng.integers(0, len(photos)))]
    if rng.random() < 0.5:
        return edited_copy(first, rng, 1.8)
    second = photos[int(rng.integers(0, len(photos)))]
    return composite_copy(edited_copy(first, rng, 1.0), second, rng)


def make_copy_detection_set(
    out_dir: str | Path,
    *,
    photos: tuple[str, ...] = PHOTOS,
    gallery_copies: int = 4,
    query_copies: int = 1,
    seed: int = 0,
    strength: float = 1.0,
    composite: float = 0.0,
    distractors: int = 0,
) -> tuple[Path, Path]:
    """Write ``out/query/<photo>/*.jpg`` and ``out/gallery/<photo>/*.jpg``; return both folders.

    ``strength`` scales the edits: 1 keeps at least 55% of the photo and turns it up to 15
    degrees; 1.8 keeps as little as 19% and turns up to 27 degrees (a hard set). ``composite`` is
    the share of queries pasted into another photo under a caption; ``distractors`` adds that many
    gallery images cut from other photos, in ``gallery/distractors/`` (a label no query has)."""
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    query_dir, gallery_dir = out / "query", out / "gallery"
    backgrounds = [sample_photo(name) for name in DISTRACTOR_PHOTOS] if composite or distractors else []
    for name in photos:
        img = sample_photo(name)
        for folder, count, prefix in (
            (gallery_dir, gallery_copies, "copy"),
            (query_dir, query_copies, "query"),
        ):
            (folder / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                quality = int(rng.integers(30, 95))
                copy = edited_copy(img, rng, strength)
                if folder is query_dir and composite and rng.random() < composite:
                    copy = composite_copy(copy, backgrounds[int(rng.integers(0, len(backgrounds)))], rng)
                copy.save(folder / name / f"{name}_{prefix}{i}.jpg", quality=quality)
    if distractors:
        (gallery_dir / DISTRACTOR_LABEL).mkdir(parents=True, exist_ok=True)
        for i in range(distractors):
            image = _distractor(rng, backgrounds)
            image.save(gallery_dir / DISTRACTOR_LABEL / f"distractor{i:04d}.jpg", quality=int(rng.integers(30, 95)))
    return query_dir, gallery_dir
