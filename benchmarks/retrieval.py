"""Retrieval quality and speed of the pretrained extractors on the `orl` and `fmnist` protocols.

    python benchmarks/datasets.py            # once: lays out benchmarks/data/{orl,fmnist}
    python benchmarks/retrieval.py [--sets orl fmnist] [--models pixels efficientnet-lite0 resnet50]

Prints a Markdown table (top-1/3/10, mAP, extraction ms per image, search time) and writes
benchmarks/out/retrieval.json. resnet50 runs with random weights (hub downloads fail offline), so
its accuracy means nothing: its row is there for speed only.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

import lookalike
from lookalike import ExtractOptions

HERE = Path(__file__).parent
MODEL_OPTIONS = {"resnet50": {"weights": "random"}}


def run_one(data: Path, protocol: str, model: str, options: ExtractOptions) -> dict:
    root = data / protocol
    run = lookalike.evaluate(
        root / "query", root / "gallery", model=model, model_options=MODEL_OPTIONS.get(model), options=options
    )
    n_images = len(run.query_names) + len(run.gallery_names)
    m = run.metrics
    return {
        "protocol": protocol,
        "model": model + (" (random weights: speed only)" if model in MODEL_OPTIONS else ""),
        "top1": m.top_k[1],
        "top3": m.top_k[3],
        "top10": m.top_k[10],
        "mAP": m.mean_ap,
        "extract_ms_per_image": 1000 * run.stats["extract_seconds"] / n_images,
        "search_s": run.stats["search_seconds"],
        "images": n_images,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=HERE / "data")
    parser.add_argument("--sets", nargs="+", default=["orl", "fmnist"])
    parser.add_argument("--models", nargs="+", default=["pixels", "efficientnet-lite0", "resnet50"])
    args = parser.parse_args()
    options = ExtractOptions(use_cache=False, progress=False)
    rows = [run_one(args.data, s, m, options) for s in args.sets for m in args.models]
    print(
        f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print("| protocol | model | top-1 | top-3 | top-10 | mAP | extract ms/img | search s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['protocol']} | {r['model']} | {r['top1']:.3f} | {r['top3']:.3f} | {r['top10']:.3f} | "
            f"{r['mAP']:.3f} | {r['extract_ms_per_image']:.2f} | {r['search_s']:.3f} |"
        )
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    (out / "retrieval.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
