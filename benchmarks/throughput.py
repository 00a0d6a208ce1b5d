"""CPU extraction throughput: lookalike's pipeline against a study-style loop, same model and images.

    python benchmarks/throughput.py [--images 256] [--model efficientnet-lite0]

The study-style loop opens each JPEG with PIL, resizes it, and runs the eager PyTorch model on one
image at a time (torch.no_grad). lookalike runs its default path (DataLoader workers, reduced-size
JPEG decoding, batches, ONNX Runtime on CPU) and its eager-PyTorch path (--runtime torch). The
images are 640x480 JPEGs made from scikit-image photos. Both see cold files (no feature cache).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import lookalike
from lookalike import ExtractOptions, ImageSet
from lookalike.samples import PHOTOS, edited_copy, sample_photo


def make_photos(folder: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    sources = [sample_photo(name) for name in PHOTOS]
    paths = []
    for i in range(count):
        img = edited_copy(sources[i % len(sources)], rng).resize((640, 480), Image.Resampling.BILINEAR)
        path = folder / f"photo{i:04d}.jpg"
        img.save(path, quality=90)
        paths.append(path)
    return paths


def study_loop(extractor: lookalike.Extractor, paths: list[Path]) -> np.ndarray:
    """One image at a time, as the study did it."""
    module = extractor.module.eval()
    height, width = extractor.preprocess.size
    out = []
    with torch.no_grad():
        for path in paths:
            img = Image.open(path).convert("RGB").resize((width, height))
            x = torch.from_numpy(np.array(img)).permute(2, 0, 1)[None].float()
            out.append(module(x)[0].numpy())
    return np.stack(out)


def timed(fn, *args) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--model", default="efficientnet-lite0")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        paths = make_photos(folder, args.images)
        images = ImageSet.from_path(folder)
        extractor = lookalike.create_extractor(args.model)
        study_loop(extractor, paths[:4])  # warm-up, as for the others
        t_study, ref = timed(study_loop, extractor, paths)
        rates = {"study-style loop (PIL, eager, 1 image at a time)": t_study}
        for runtime in ("torch", "auto"):
            opts = ExtractOptions(
                runtime=runtime, use_cache=False, progress=False, cache_dir=Path(tmp) / "cache"
            )
            lookalike.embed(extractor, images.subset(range(8)), opts)  # warm-up / ONNX export
            t, emb = timed(lookalike.embed, extractor, images, opts)
            name = (
                "lookalike, eager PyTorch batches"
                if runtime == "torch"
                else "lookalike default (ONNX Runtime)"
            )
            rates[name] = t
            cos = float(np.min(np.sum(emb.features * ref, axis=1)))
            print(f"{name}: min cosine to the study loop's features {cos:.4f}")
    print(
        f"\nmachine: {platform.machine()}, {torch.get_num_threads()} threads, {args.images} 640x480 JPEGs, {args.model}"
    )
    print("| pipeline | images/s | ms/image | speed-up vs study loop |")
    print("| --- | --- | --- | --- |")
    for name, seconds in rates.items():
        print(
            f"| {name} | {args.images / seconds:.1f} | {1000 * seconds / args.images:.1f} | {t_study / seconds:.2f}x |"
        )


if __name__ == "__main__":
    main()
