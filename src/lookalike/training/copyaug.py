"""Copy-like augmentations for self-supervised training: two edited views of one unlabelled image.

The edits are those copies meet in the wild and the DISC21 benchmark simulates: small random
resized crops, flips, rotation, colour jitter, greyscale, blur, overlaid text and emoji-like shapes,
pasting into another image, low-quality JPEG re-encoding and Gaussian noise. They run per image in
the DataLoader workers (PIL), each view drawn from a generator seeded by (run seed, epoch, image),
so a run computes the same views whatever the number of workers, and a resumed run the same as an
uninterrupted one.
"""

from __future__ import annotations

import io
import math
import string
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

from ..errors import InputError

PROBABILITIES = ("grey", "blur", "jpeg", "text", "shapes", "paste")
JPEG_QUALITY = (10, 50)  # re-encoding quality, uniform in this range
PASTE_SCALE = (0.3, 0.7)  # side of the pasted view relative to the image it is pasted into


@dataclass(frozen=True)
class CopyAugment:
    """How each view of an image is edited. The defaults follow SSCD's recipe plus the DISC21 edits,
    with the share of pasted views set by the ablation in BENCHMARKS.md ("Self-supervised training").

    ``crop``: random resized crop keeping at least this share of the area (0 = the whole image);
    ``flip``: horizontal flip with probability 1/2; ``rotate``: turn by up to this many degrees;
    ``jitter``: brightness, contrast and saturation each scaled by up to 1 +- jitter (on 4 views in
    5); ``grey``, ``jpeg`` (quality 10-50), ``blur`` (radius 0.5-2 px at 224 px), ``text``, ``shapes`` (emoji-like) and ``paste``
    (the view shrunk to 30-70% and pasted into another training image): the probability of each
    edit; ``noise``: Gaussian noise with this standard deviation (1.0 = the full pixel range).
    """

    crop: float = 0.1
    flip: bool = True
    rotate: float = 15.0
    jitter: float = 0.4
    grey: float = 0.1
    blur: float = 0.2
    jpeg: float = 0.3
    text: float = 0.2
    shapes: float = 0.1
    paste: float = 0.5
    noise: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.crop < 1.0:
            raise InputError(f"crop must be in [0, 1): the smallest area share kept, got {self.crop}")
        if not 0.0 <= self.rotate <= 180.0:
            raise InputError(f"rotate must be between 0 and 180 degrees, got {self.rotate}")
        if not 0.0 <= self.jitter < 1.0:
            raise InputError(f"jitter must be in [0, 1), got {self.jitter}")
        for name in PROBABILITIES:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InputError(f"{name} is a probability and must be between 0 and 1, got {value}")
        if self.noise < 0.0:
            raise InputError(f"noise must be >= 0, got {self.noise}")

    def view(
        self, image: Image.Image, rng: np.random.Generator, other: Callable[[], Image.Image] | None = None
    ) -> Image.Image:
        """One edited view of ``image`` at its own size; ``other`` gives an image to paste into."""
        size = image.size
        out = self._crop(image, rng, size)
        if self.flip and rng.random() < 0.5:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if self.rotate > 0:
            out = out.rotate(
                float(rng.uniform(-self.rotate, self.rotate)), resample=Image.Resampling.BILINEAR
            )
        if self.jitter > 0 and rng.random() < 0.8:
            for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
                out = enhance(out).enhance(float(1.0 + rng.uniform(-self.jitter, self.jitter)))
        if rng.random() < self.grey:
            out = out.convert("L").convert("RGB")
        if rng.random() < self.blur:
            out = out.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0)) * max(1.0, size[0] / 224)))
        if rng.random() < self.text:
            out = overlay_text(out, rng)
        if rng.random() < self.shapes:
            out = overlay_shapes(out, rng)
        if other is not None and rng.random() < self.paste:
            out = paste_into(out, other(), rng)
        if rng.random() < self.jpeg:
            out = jpeg(out, int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1)))
        if self.noise > 0:
            pixels = np.asarray(out, dtype=np.float32)
            pixels = pixels + rng.normal(0.0, self.noise * 255.0, pixels.shape).astype(np.float32)
            out = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
        return out

    def _crop(self, image: Image.Image, rng: np.random.Generator, size: tuple[int, int]) -> Image.Image:
        """A random resized crop (area share in [crop, 1], aspect ratio 3/4..4/3) back at ``size``."""
        if self.crop <= 0:
            return image
        w, h = image.size
        area = float(rng.uniform(self.crop, 1.0)) * w * h
        ratio = math.exp(float(rng.uniform(math.log(3 / 4), math.log(4 / 3))))
        cw = min(w, max(1, round(math.sqrt(area * ratio))))
        ch = min(h, max(1, round(math.sqrt(area / ratio))))
        x = int(rng.integers(0, w - cw + 1))
        y = int(rng.integers(0, h - ch + 1))
        return image.resize(size, Image.Resampling.BILINEAR, box=(x, y, x + cw, y + ch))


def _colour(rng: np.random.Generator) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(0, 256, 3))  # type: ignore[return-value]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        return ImageFont.load_default()


def overlay_text(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Random words in a random colour and size somewhere on the image (a caption or a watermark)."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    w, h = out.size
    letters = string.ascii_letters + string.digits
    words = [
        "".join(letters[i] for i in rng.integers(0, len(letters), int(rng.integers(3, 9))))
        for _ in range(int(rng.integers(1, 4)))
    ]
    font = _font(max(8, int(h * rng.uniform(0.06, 0.18))))
    draw.text(
        (int(rng.integers(0, max(1, w // 2))), int(rng.integers(0, max(1, h - 10)))),
        " ".join(words),
        fill=_colour(rng),
        font=font,
    )
    return out


def overlay_shapes(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One to three emoji-like shapes: a face (disc, eyes, mouth), a disc or a star-ish polygon."""
    out = image.copy()
    draw = ImageDraw.Draw(out)
    w, h = out.size
    for _ in range(int(rng.integers(1, 4))):
        r = max(3, int(min(w, h) * rng.uniform(0.05, 0.2)))
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        box = (cx - r, cy - r, cx + r, cy + r)
        kind = int(rng.integers(0, 3))
        if kind == 0:
            draw.ellipse(box, fill=(250, 210, 40))
            e = max(1, r // 5)
            for ex in (cx - r // 3, cx + r // 3):
                draw.ellipse((ex - e, cy - r // 3 - e, ex + e, cy - r // 3 + e), fill=(30, 30, 30))
            draw.arc(
                (cx - r // 2, cy - r // 4, cx + r // 2, cy + r // 2),
                20,
                160,
                fill=(30, 30, 30),
                width=max(1, r // 8),
            )
        elif kind == 1:
            draw.ellipse(box, fill=_colour(rng))
        else:
            points = [
                (
                    cx + (r if k % 2 == 0 else r // 2) * math.cos(k * math.pi / 5),
                    cy + (r if k % 2 == 0 else r // 2) * math.sin(k * math.pi / 5),
                )
                for k in range(10)
            ]
            draw.polygon(points, fill=_colour(rng))
    return out


def paste_into(image: Image.Image, background: Image.Image, rng: np.random.Generator) -> Image.Image:
    """``image`` shrunk to 30-70% of the side and pasted at a random place into ``background``
    (resized to ``image``'s size): the copy inside another photo."""
    w, h = image.size
    canvas = background.convert("RGB").resize((w, h), Image.Resampling.BILINEAR)
    scale = float(rng.uniform(*PASTE_SCALE))
    pw, ph = max(1, round(w * scale)), max(1, round(h * scale))
    x, y = int(rng.integers(0, w - pw + 1)), int(rng.integers(0, h - ph + 1))
    canvas.paste(image.resize((pw, ph), Image.Resampling.BILINEAR), (x, y))
    return canvas


def jpeg(image: Image.Image, quality: int) -> Image.Image:
    """``image`` re-encoded as JPEG at ``quality`` and decoded again."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def to_pil(pixels: torch.Tensor) -> Image.Image:
    """A (3, h, w) uint8 tensor as an RGB PIL image."""
    return Image.fromarray(pixels.permute(1, 2, 0).contiguous().numpy())


def to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a (3, h, w) uint8 tensor."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)


class TwoViews(torch.utils.data.Dataset):
    """Item ``p``: two edited views of training image ``order[p]`` as a (2, 3, h, w) uint8 tensor.

    ``order`` is the epoch's sequence of image indices (None: every image once, in order). The views
    depend on (``seed``, p) only (the trainer passes the epoch's seed), not on the worker that makes
    them, and an image drawn twice in an epoch gets different views. ``paste`` takes the other
    image from the same store (never the image itself).
    """

    def __init__(
        self, store: object, augment: CopyAugment, seed: int, order: list[int] | None = None
    ) -> None:
        self.store, self.augment, self.seed = store, augment, int(seed)
        self.order = order

    def __len__(self) -> int:
        return len(self.order) if self.order is not None else len(self.store)  # type: ignore[arg-type]

    def __getitem__(self, position: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, int(position)])
        i = self.order[position] if self.order is not None else int(position)
        base = to_pil(self.store.image(i))  # type: ignore[attr-defined]
        n = len(self.store)  # type: ignore[arg-type]

        def other() -> Image.Image:
            j = (i + 1 + int(rng.integers(n - 1))) % n if n > 1 else i
            return to_pil(self.store.image(j))  # type: ignore[attr-defined]

        return torch.stack([to_tensor(self.augment.view(base, rng, other)) for _ in range(2)])
