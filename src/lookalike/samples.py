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


# ---------------------------------------------------------------- small rotated crops (crop-copies)

CROP_AREA = (0.20, 0.35)
CROP_MAX_ANGLE = 30.0
CROP_SCALE = 0.35
CROP_QUALITY = 15
CROP_MANIFEST = "crop-copies.json"


def _rotated_box_fits(w: int, h: int, cx: float, cy: float, cw: int, ch: int, angle: float) -> bool:
    """True when a cw x ch box centred at (cx, cy), turned by ``angle`` degrees, lies inside w x h."""
    t = np.deg2rad(-angle)  # Image.rotate turns counter-clockwise on screen (y down)
    corners = np.array([[-cw, -ch], [cw, -ch], [cw, ch], [-cw, ch]], dtype=np.float64) / 2.0
    rot = np.array([[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]])
    pts = corners @ rot.T + [cx, cy]
    return bool(np.all(pts >= 0) and np.all(pts[:, 0] <= w) and np.all(pts[:, 1] <= h))


def crop_copy(
    img: Image.Image,
    rng: np.random.Generator,
    *,
    area: tuple[float, float] = CROP_AREA,
    max_angle: float = CROP_MAX_ANGLE,
    scale: float = CROP_SCALE,
    jitter: float = 1.0,
) -> tuple[Image.Image, dict]:
    """A small, turned, shrunk and recoloured crop of ``img`` and how it was made.

    The crop covers ``area`` (a range of fractions) of the photo, is turned by up to ``max_angle``
    degrees about its centre (cut from the turned photo, so it has no blank corners), rescaled by
    ``scale`` and recoloured (brightness, contrast, saturation and hue; ``jitter`` scales them).
    The parameters (box centre and size in photo pixels, angle in degrees counter-clockwise as
    ``Image.rotate`` turns, colour factors) say exactly which part of the photo the copy shows."""
    if not 0 < area[0] <= area[1] <= 1 or not 0 < scale <= 1 or max_angle < 0:
        raise InputError(f"crop_copy: bad area {area}, scale {scale} or max_angle {max_angle}")
    w, h = img.size
    for _ in range(100):
        fraction = float(rng.uniform(*area))
        aspect = float(rng.uniform(0.75, 1.33))
        cw = int(round(w * np.sqrt(fraction * aspect)))
        ch = int(round(h * np.sqrt(fraction / aspect)))
        angle = float(rng.uniform(-max_angle, max_angle))
        cx, cy = float(rng.uniform(cw / 2, w - cw / 2)), float(rng.uniform(ch / 2, h - ch / 2))
        inside = area[0] <= cw * ch / (w * h) <= area[1]  # after rounding to whole pixels
        if inside and cw <= w and ch <= h and _rotated_box_fits(w, h, cx, cy, cw, ch, angle):
            break
    else:  # a very narrow photo: an upright crop of the photo's shape at the centre always fits
        fraction = (area[0] + area[1]) / 2
        angle, cx, cy = 0.0, w / 2.0, h / 2.0
        cw, ch = max(1, round(w * np.sqrt(fraction))), max(1, round(h * np.sqrt(fraction)))
    # output pixel (u, v) of the cw x ch crop shows photo point centre + R(-angle) (u - cw/2, v - ch/2):
    # the crop of the photo turned by Image.rotate(angle, center=centre)
    t = np.deg2rad(-angle)
    a, b = np.cos(t), np.sin(t)
    ox, oy = -cw / 2.0, -ch / 2.0
    coeffs = (a, b, cx + a * ox + b * oy, -b, a, cy - b * ox + a * oy)
    out = img.transform((cw, ch), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BICUBIC)
    size = (max(16, round(cw * scale)), max(16, round(ch * scale)))
    out = out.resize(size, Image.Resampling.LANCZOS)
    colour = {
        "brightness": float(rng.uniform(1 - 0.4 * jitter, 1 + 0.4 * jitter)),
        "contrast": float(rng.uniform(1 - 0.4 * jitter, 1 + 0.4 * jitter)),
        "saturation": float(rng.uniform(1 - 0.7 * jitter, 1 + 0.7 * jitter)),
        "hue": float(rng.uniform(-0.1 * jitter, 0.1 * jitter)),
    }
    out = ImageEnhance.Brightness(out).enhance(colour["brightness"])
    out = ImageEnhance.Contrast(out).enhance(colour["contrast"])
    out = ImageEnhance.Color(out).enhance(max(0.0, colour["saturation"]))
    hsv = np.asarray(out.convert("HSV")).copy()
    hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + round(colour["hue"] * 256)) % 256).astype(np.uint8)
    out = Image.fromarray(hsv, "HSV").convert("RGB")
    params = {
        "photo_size": [w, h],
        "centre": [cx, cy],
        "crop_size": [cw, ch],
        "area": cw * ch / (w * h),
        "angle": angle,
        "scale": scale,
        "size": list(size),
        **colour,
    }
    return out, params


def make_crop_copy_set(
    out_dir: str | Path,
    *,
    photos: tuple[str, ...] = PHOTOS,
    query_copies: int = 4,
    seed: int = 0,
    distractors: int = 400,
    area: tuple[float, float] = CROP_AREA,
    max_angle: float = CROP_MAX_ANGLE,
    scale: float = CROP_SCALE,
    quality: int = CROP_QUALITY,
    jitter: float = 1.0,
) -> tuple[Path, Path]:
    """The ``crop-copies`` set: copies people actually meet, small crops of photos.

    Each query is a crop of 20-35% of a photo's area, turned up to 30 degrees, rescaled to 0.35,
    strongly recoloured and saved at JPEG quality 15 (see :func:`crop_copy`); the gallery holds
    each photo once as it is (JPEG quality 90) and once lightly edited, plus ``distractors``
    images cut from photos no query shows, in ``gallery/distractors/``. How every query was made
    is written to ``out/crop-copies.json``. Returns (query folder, gallery folder)."""
    if query_copies < 1 or distractors < 0 or not 1 <= quality <= 95:
        raise InputError(f"make_crop_copy_set: bad query_copies {query_copies}, distractors "
                         f"{distractors} or quality {quality}")
    from .fileio import write_json

    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    query_dir, gallery_dir = out / "query", out / "gallery"
    manifest: dict[str, dict] = {}
    for name in photos:
        img = sample_photo(name)
        for folder in (query_dir, gallery_dir):
            (folder / name).mkdir(parents=True, exist_ok=True)
        img.save(gallery_dir / name / f"{name}_original.jpg", quality=90)
        edited_copy(img, rng, 1.0).save(gallery_dir / name / f"{name}_copy.jpg", quality=int(rng.integers(50, 95)))
        for i in range(query_copies):
            copy, params = crop_copy(img, rng, area=area, max_angle=max_angle, scale=scale, jitter=jitter)
            rel = f"query/{name}/{name}_crop{i}.jpg"
            copy.save(out / rel, quality=quality)
            manifest[rel] = {"photo": name, "quality": quality, **params}
    if distractors:
        backgrounds = [sample_photo(n) for n in DISTRACTOR_PHOTOS]
        (gallery_dir / DISTRACTOR_LABEL).mkdir(parents=True, exist_ok=True)
        for i in range(distractors):
            image = _distractor(rng, backgrounds)
            image.save(gallery_dir / DISTRACTOR_LABEL / f"distractor{i:04d}.jpg", quality=int(rng.integers(30, 95)))
    write_json(out / CROP_MANIFEST, manifest)
    return query_dir, gallery_dir
