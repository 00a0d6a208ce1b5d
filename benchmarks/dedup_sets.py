"""Duplicate-detection sets with known groups, made from photos that ship in packages.

    python benchmarks/dedup_sets.py [--out benchmarks/data/dedup] [--seed 0] [--sets exact resized ...]

Every set is a folder ``OUT/<set>-s<seed>/`` holding ``query/`` and ``gallery/`` (flat folders of
images named ``img_NNNN``), ``labels.csv`` (``query/img_0003.jpg,g007``: one row per image, the
label of its group, or a label of its own for a distractor) and ``groups.json`` (the groups as
lists of paths relative to the set folder, plus the distractors). So one set serves three uses:
``lookalike calibrate|evaluate SET/query SET/gallery --query-labels SET/labels.csv --gallery-labels
SET/labels.csv`` (one file serves both sides; each group's
original is the query, its duplicates are in the gallery, and a third of the distractors are
queries with no match, as in DISC21), and dedup over the whole folder, scored against the groups.

Material: the quadrants (halves, or the whole photo, when it is small) of scikit-image's bundled
photographs and of scikit-learn's two sample photos (scikit-learn is required, so the sets are the
same in every environment), at most 320 px; stationary textures (grass, gravel, brick, the Hubble
deep field) give one tile, since their parts are statistically identical, and flat tiles (std <
18) are dropped. A distractor may be another quadrant of a group's photo: the two share no pixels,
so they count as different images, but they share colour, texture and camera, which makes them
harder negatives than unrelated photos (no set contains a crop that overlaps another image of a
different label: the near set keeps stereo_motorcycle's tiles out, since it uses that photo whole).
In ``near`` the frames and stereo views of one scene count as one group (duplicates). Sets:

  exact    original + 1-2 byte-identical copies, one of them re-saved losslessly as PNG
  resized  original + 1-2 copies scaled by 0.3-0.9 and re-encoded as JPEG at quality 30-90
  copies   original + 2 edited copies (lookalike.samples.edited_copy at strength 0.3, 0.6 or 1.0:
           crop, rotation, rescaling, flips, colour), JPEG 30-90
  mixed    original + one exact copy, one resized/re-encoded, one edited copy (strength 0.3-1.0):
           the set that default thresholds are calibrated on
  near     near-identical but different photos: consecutive frames (80% crops of a scene shifted
           by 10-20% of the width, and/or exposure x0.75-0.9 or x1.1-1.3), stereo pairs (a 3-6%
           horizontal shift plus a small perspective change), and scikit-image's real stereo pair
           (stereo_motorcycle left/right)
  faces    ORL: the same person in different photos (3 per person, 20 people) and 20 more people
           with one photo each; built only when benchmarks/data/orl exists
           (python benchmarks/datasets.py orl)
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from lookalike.fileio import write_json
from lookalike.samples import DISTRACTOR_PHOTOS, PHOTOS, edited_copy, sample_photo

HERE = Path(__file__).resolve().parent
MIN_TILE = 150
MAX_SIDE = 320
MIN_STD = 18.0
TEXTURES = {"grass", "gravel", "brick", "hubble_deep_field"}  # every part looks like every other
SETS = ("exact", "resized", "copies", "mixed", "near", "faces")
GROUPS = 24
DISTRACTORS = 60  # at most: the tiles left after the groups
# synthetic drawings or near-uniform images: no real photographic content to tile
SKIP_PHOTOS = {"horse", "colorwheel", "logo", "shepp_logan_phantom", "microaneurysms"}
REAL_STEREO = "stereo_motorcycle"  # its left view is one photo's tiles; the near set uses both views whole


@dataclass
class Item:
    """One image of a set: its pixels (or exact bytes), the label of its group, which side it is on."""

    label: str
    side: str  # "query" or "gallery"
    image: Image.Image | None = None
    data: bytes | None = None  # exact bytes (byte-identical copies)
    fmt: str = "JPEG"
    quality: int = 92
    kind: str = "original"


@dataclass
class DedupSet:
    """A set before it is written: its items and what it is."""

    name: str
    items: list[Item] = field(default_factory=list)
    about: str = ""


def _photos() -> list[tuple[str, Image.Image]]:
    """Every bundled photograph as RGB, and scikit-learn's two sample photos if it is installed."""
    out = [(n, sample_photo(n)) for n in (*PHOTOS, *DISTRACTOR_PHOTOS) if n not in SKIP_PHOTOS]
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:  # the sets would differ between environments: never build them without
        raise SystemExit(
            "dedup_sets needs scikit-learn for its two sample photos (china, flower), so that the sets are "
            "the same in every environment: pip install scikit-learn (imagededup installs it too)"
        ) from None
    sk = load_sample_images()
    out += [
        (Path(f).stem, Image.fromarray(img).convert("RGB"))
        for f, img in zip(sk.filenames, sk.images, strict=True)
    ]
    return out


def tiles(max_side: int = MAX_SIDE) -> list[tuple[str, Image.Image]]:
    """Up to four non-overlapping tiles of every photo (quadrants; halves or the whole photo when
    it is small), one for a stationary texture (its tiles would be statistically identical),
    scaled to at most ``max_side`` pixels; flat tiles dropped."""
    out = []
    for name, img in _photos():
        w, h = img.size
        nx = 1 if name in TEXTURES or w < 2 * MIN_TILE else 2
        ny = 1 if name in TEXTURES or h < 2 * MIN_TILE else 2
        tw, th = w // nx, h // ny
        for j in range(ny):
            for i in range(nx):
                tile = img.crop((i * tw, j * th, (i + 1) * tw, (j + 1) * th))
                scale = min(1.0, max_side / max(tile.size))
                if scale < 1.0:
                    size = (round(tile.width * scale), round(tile.height * scale))
                    tile = tile.resize(size, Image.Resampling.LANCZOS)
                if float(np.asarray(tile.convert("L"), dtype=np.float32).std()) >= MIN_STD:
                    out.append((f"{name}-{j}-{i}", tile))
    return out


def _jpeg_bytes(img: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def _resized(img: Image.Image, rng: np.random.Generator) -> Item:
    scale = float(rng.uniform(0.3, 0.9))
    w, h = img.size
    small = img.resize((max(16, round(w * scale)), max(16, round(h * scale))), Image.Resampling.BICUBIC)
    return Item("", "gallery", small, quality=int(rng.integers(30, 91)), kind=f"resized x{scale:.2f}")


def _edited(img: Image.Image, rng: np.random.Generator, strength: float) -> Item:
    copy = edited_copy(img, rng, strength)
    return Item("", "gallery", copy, quality=int(rng.integers(30, 91)), kind=f"edited {strength:g}")


def _exact(original: Item, png: bool) -> Item:
    if png:  # the decoded pixels of the original, saved losslessly: same pixels, other bytes
        pixels = Image.open(io.BytesIO(original.data)).convert("RGB")
        return Item("", "gallery", pixels, fmt="PNG", kind="exact (PNG)")
    return Item("", "gallery", data=original.data, kind="exact (bytes)")


def _exposure(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    factor = float(rng.uniform(0.75, 0.9) if rng.random() < 0.5 else rng.uniform(1.1, 1.3))
    return ImageEnhance.Brightness(img).enhance(factor)


def _frames(scene: Image.Image, rng: np.random.Generator) -> list[tuple[Image.Image, str]]:
    """Two consecutive frames of a scene: 80% crops shifted by 10-20% of the width, and/or an
    exposure change."""
    w, h = scene.size
    fw, fh = int(w * 0.8), int(h * 0.8)
    shift = int(round(fw * rng.uniform(0.10, 0.20)))
    y0 = int(rng.integers(0, h - fh + 1))
    how = rng.choice(["shift", "exposure", "both"])
    x0 = 0 if how != "exposure" else int(rng.integers(0, w - fw + 1))
    first = scene.crop((x0, y0, x0 + fw, y0 + fh))
    x1 = min(w - fw, x0 + shift) if how != "exposure" else x0
    dy = int(rng.integers(-3, 4))
    y1 = int(np.clip(y0 + dy, 0, h - fh))
    second = scene.crop((x1, y1, x1 + fw, y1 + fh))
    if how != "shift":
        second = _exposure(second, rng)
    return [(first, "frame"), (second, f"frame ({how})")]


def _perspective(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A small perspective change: each corner moved by up to 4% of the size, borders trimmed."""
    w, h = img.size
    src = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float64)
    dst = src + rng.uniform(-0.04, 0.04, size=(4, 2)) * [w, h]
    rows = []
    for (x, y), (u, v) in zip(dst, src, strict=True):  # map output corners (dst) to input (src)
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    coeffs = np.linalg.solve(np.array(rows), src.ravel())
    warped = img.transform((w, h), Image.Transform.PERSPECTIVE, tuple(coeffs), Image.Resampling.BICUBIC)
    mx, my = int(w * 0.045), int(h * 0.045)  # cut the wedges the warp leaves empty
    return warped.crop((mx, my, w - mx, h - my)).resize((w, h), Image.Resampling.BICUBIC)


def _stereo(scene: Image.Image, rng: np.random.Generator) -> list[tuple[Image.Image, str]]:
    """A stereo pair: 90% crops 3-6% of the width apart, the second seen in a slightly different
    perspective."""
    w, h = scene.size
    fw, fh = int(w * 0.9), int(h * 0.9)
    shift = int(round(fw * rng.uniform(0.03, 0.06)))
    y0 = (h - fh) // 2
    left = scene.crop((0, y0, fw, y0 + fh))
    right = _perspective(scene.crop((shift, y0, shift + fw, y0 + fh)), rng)
    return [(left, "stereo left"), (right, "stereo right")]


def _with_jpeg(item: Item) -> Item:
    if item.data is None and item.fmt == "JPEG":
        item.data = _jpeg_bytes(item.image, item.quality)
    return item


def _group_set(
    name: str,
    units: list[tuple[str, Image.Image]],
    rng: np.random.Generator,
    make: Callable[[Item, Image.Image, np.random.Generator], list[Item]],
    about: str,
) -> DedupSet:
    """GROUPS originals, each with the duplicates ``make`` gives, among DISTRACTORS tiles."""
    order = rng.permutation(len(units))
    chosen = [units[i] for i in order[:GROUPS]]
    others = [units[i] for i in order[GROUPS : GROUPS + DISTRACTORS]]
    out = DedupSet(name, about=about)
    for g, (_, img) in enumerate(chosen):
        original = _with_jpeg(Item(f"g{g:03d}", "query", img, quality=92))
        out.items.append(original)
        for dup in make(original, img, rng):
            dup.label = original.label
            out.items.append(_with_jpeg(dup))
    _add_distractors(out, [img for _, img in others], rng)
    return out


def _add_distractors(out: DedupSet, images: list[Image.Image], rng: np.random.Generator) -> None:
    """Distractors, each its own label; a third of them are queries that have no match."""
    for d, img in enumerate(images):
        side = "query" if d % 3 == 0 else "gallery"
        out.items.append(
            _with_jpeg(Item(f"d{d:03d}", side, img, quality=int(rng.integers(60, 96)), kind="distractor"))
        )


def build_exact(units: list, rng: np.random.Generator) -> DedupSet:
    """Byte-identical copies and lossless re-saves."""

    def make(original: Item, img: Image.Image, rng: np.random.Generator) -> list[Item]:
        n = int(rng.integers(1, 3))
        return [_exact(original, png=(i == 1)) for i in range(n)]

    return _group_set("exact", units, rng, make, "byte-identical copies and lossless PNG re-saves")


def build_resized(units: list, rng: np.random.Generator) -> DedupSet:
    """Copies scaled by 0.3-0.9 and re-encoded as JPEG 30-90."""

    def make(original: Item, img: Image.Image, rng: np.random.Generator) -> list[Item]:
        return [_resized(img, rng) for _ in range(int(rng.integers(1, 3)))]

    return _group_set("resized", units, rng, make, "scaled 0.3-0.9, JPEG quality 30-90")


def build_copies(units: list, rng: np.random.Generator) -> DedupSet:
    """Two edited copies of each original at strength 0.3, 0.6 or 1.0."""

    def make(original: Item, img: Image.Image, rng: np.random.Generator) -> list[Item]:
        return [_edited(img, rng, float(rng.choice([0.3, 0.6, 1.0]))) for _ in range(2)]

    return _group_set(
        "copies", units, rng, make, "edited copies (crop, rotation, scale, flip, colour) at 0.3/0.6/1.0"
    )


def build_mixed(units: list, rng: np.random.Generator) -> DedupSet:
    """One exact copy, one resized and re-encoded, one edited copy per original."""

    def make(original: Item, img: Image.Image, rng: np.random.Generator) -> list[Item]:
        return [
            _exact(original, png=bool(rng.random() < 0.5)),
            _resized(img, rng),
            _edited(img, rng, float(rng.uniform(0.3, 1.0))),
        ]

    return _group_set(
        "mixed", units, rng, make, "one exact, one resized/re-encoded, one edited copy per original"
    )


def build_near(units: list, rng: np.random.Generator) -> DedupSet:
    """Consecutive frames and stereo pairs of one scene, plus the real stereo_motorcycle pair (its
    tiles are left out of the scenes and distractors: they are parts of that pair's photos)."""
    units = [u for u in units if not u[0].startswith(f"{REAL_STEREO}-")]
    order = rng.permutation(len(units))
    scenes = [units[i][1] for i in order[:GROUPS]]
    others = [units[i][1] for i in order[GROUPS : GROUPS + DISTRACTORS]]
    out = DedupSet("near", about="consecutive frames (shift 10-20% / exposure) and stereo pairs of one scene")
    for g, scene in enumerate(scenes):
        frames = _frames(scene, rng) if g % 3 != 2 else _stereo(scene, rng)
        for f, (img, kind) in enumerate(frames):
            side = "query" if f == 0 else "gallery"
            out.items.append(
                _with_jpeg(Item(f"g{g:03d}", side, img, quality=int(rng.integers(80, 96)), kind=kind))
            )
    import skimage.data

    left, right, _ = skimage.data.stereo_motorcycle()
    for f, arr in enumerate((left, right)):
        img = Image.fromarray(arr).convert("RGB").resize((370, 250), Image.Resampling.BICUBIC)
        side = "query" if f == 0 else "gallery"
        out.items.append(_with_jpeg(Item(f"g{len(scenes):03d}", side, img, quality=90, kind="real stereo")))
    _add_distractors(out, others, rng)
    return out


def build_faces(rng: np.random.Generator, orl: Path) -> DedupSet | None:
    """ORL: 3 photos of each of 20 people (one the query), and 20 other people once each."""
    people = sorted(p for split in ("train", "query", "gallery") for p in (orl / split).glob("s*"))
    by_person: dict[str, list[Path]] = {}
    for folder in people:
        by_person.setdefault(folder.name, []).extend(sorted(folder.glob("*.pgm")))
    names = sorted(by_person, key=lambda s: int(s[1:]))
    if len(names) < 40:
        return None
    order = rng.permutation(len(names))
    out = DedupSet("faces", about="ORL: the same person in different photos")
    for g, i in enumerate(order[:20]):
        photos = rng.choice(by_person[names[i]], size=3, replace=False)
        for f, path in enumerate(photos):
            img = Image.open(path).convert("RGB")
            out.items.append(Item(f"g{g:03d}", "query" if f == 0 else "gallery", img, fmt="PNG", kind="face"))
    for d, i in enumerate(order[20:40]):
        img = Image.open(rng.choice(by_person[names[i]])).convert("RGB")
        out.items.append(
            Item(f"d{d:03d}", "query" if d % 3 == 0 else "gallery", img, fmt="PNG", kind="distractor")
        )
    return out


def write_set(dset: DedupSet, folder: Path, rng: np.random.Generator) -> dict:
    """Write the images (shuffled names), labels.csv and groups.json; returns the groups doc."""
    if folder.exists():
        if not (folder / "groups.json").is_file():
            raise SystemExit(f"{folder}: exists and is not a set this script wrote; choose another --out")
        shutil.rmtree(folder)
    for side in ("query", "gallery"):
        (folder / side).mkdir(parents=True)
    rows, groups, kinds = [], {}, {}
    for n, i in enumerate(rng.permutation(len(dset.items))):
        item = dset.items[i]
        ext = "png" if item.fmt == "PNG" and item.data is None else "jpg"
        rel = f"{item.side}/img_{n:04d}.{ext}"
        path = folder / rel
        if item.data is not None:
            path.write_bytes(item.data)
        else:
            item.image.save(path, item.fmt, **({"quality": item.quality} if item.fmt == "JPEG" else {}))
        rows.append((rel, item.label))
        groups.setdefault(item.label, []).append(rel)
        kinds[rel] = item.kind
    rows.sort()
    with (folder / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)
    doc = {
        "set": dset.name,
        "about": dset.about,
        "images": len(rows),
        "groups": [sorted(v) for k, v in sorted(groups.items()) if k.startswith("g")],
        "distractors": sorted(v[0] for k, v in groups.items() if k.startswith("d")),
        "kinds": dict(sorted(kinds.items())),
    }
    doc["positive_pairs"] = sum(len(g) * (len(g) - 1) // 2 for g in doc["groups"])
    write_json(folder / "groups.json", doc)
    return doc


def build(out: Path, sets: tuple[str, ...] = SETS, seed: int = 0, orl: Path | None = None) -> dict[str, Path]:
    """Build the named sets under ``out`` (``<set>-s<seed>``); returns their folders."""
    units = tiles()
    orl = orl or HERE / "data" / "orl"
    builders = {
        "exact": build_exact,
        "resized": build_resized,
        "copies": build_copies,
        "mixed": build_mixed,
        "near": build_near,
    }
    made = {}
    for i, name in enumerate(sets):
        rng = np.random.default_rng([seed, i])
        if name == "faces":
            dset = build_faces(rng, orl) if orl.is_dir() else None
            if dset is None:
                print(f"faces: skipped ({orl} not found; python benchmarks/datasets.py orl)", file=sys.stderr)
                continue
        else:
            dset = builders[name](units, rng)
        folder = out / f"{name}-s{seed}"
        doc = write_set(dset, folder, rng)
        print(
            f"{name}: {doc['images']} images, {len(doc['groups'])} groups, {doc['positive_pairs']} duplicate pairs, "
            f"{len(doc['distractors'])} distractors -> {folder}"
        )
        made[name] = folder
    return made


def load_groups(folder: Path) -> dict:
    """The groups document of a set folder."""
    return json.loads((Path(folder) / "groups.json").read_text(encoding="utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "data" / "dedup")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sets", nargs="*", default=list(SETS), choices=SETS)
    args = parser.parse_args()
    print(f"{len(tiles())} tiles available")
    build(args.out, tuple(args.sets), args.seed)


if __name__ == "__main__":
    main()
