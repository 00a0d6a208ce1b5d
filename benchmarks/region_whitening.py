"""Gallery regions under the copies preset: does fitting the whitening on whole images save them?

    python benchmarks/region_whitening.py [--tmp DIR] [--sets crop-copies:1 ...] [--score-only]

`--regions 3` helps small crops without whitening and hurts them with the copies preset (crop-copies
top-1 0.946 -> 0.893, "Copy detection on the hard sets"), where the whitening is fitted on all the
region vectors, most of them background. This benchmark tries the obvious remedy: fit the preset's
whitening (128-d, shrinkage 10) on the whole-image vectors only and apply it to every region. Each
gallery image is described as `--regions L` describes it (read at 448 px, each region resized to
224 px and run through the preset's multi-scale network), each query by the preset's query scales;
a gallery image scores its best (query view, region) pair. Variants: the preset (whole images),
regions 2 (5 per image) and 3 (14), whitening fitted on the whole images or on all region rows.
Sets and rule as `benchmarks/whitening.py`: validation draws crop-copies 1, 2, 3 and disc-copies
8, 9 (highest mean mAP wins), test draws crop-copies 0 and disc-copies 7. Features are cached in
DIR/region-features/ (about 9 minutes of one core per set); `--score-only` scores what is cached.
Prints a Markdown table (top-1 / mAP / µAP) and writes benchmarks/out/region-whitening.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import torch

from lookalike import ImageSet
from lookalike.extract import DecodedImages
from lookalike.features.regions import DEFAULT_UPSCALE, RegionNet, region_boxes
from lookalike.images import DEFAULT_MAX_PIXELS
from lookalike.steps import PCAWhitening

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from copies import build  # noqa: E402
from preprocess import QUERY_VIEWS, TEST, VAL, Variant, cached_features, features, preset_network  # noqa: E402
from whitening import PRESET, parse_set, ranked_metrics  # noqa: E402

VARIANTS = {  # label: (regions per gallery image, whitening fitted on "whole" images or "all" region rows)
    "copies preset (whole images)": (1, "whole"),
    "regions 2, whitening fitted on whole images": (5, "whole"),
    "regions 3, whitening fitted on whole images": (14, "whole"),
    "regions 2, whitening fitted on all regions": (5, "all"),
    "regions 3, whitening fitted on all regions": (14, "all"),
}
SIZE = 224


@torch.no_grad()
def extract(net: torch.nn.Module, Q: ImageSet, G: ImageSet) -> dict[str, np.ndarray]:
    """Query scale views (views, n, d), whole gallery vectors (n, d) and level-3 regions (n, 14 d)."""
    regions = RegionNet(net, (SIZE, SIZE), region_boxes(3)).eval()
    side = SIZE * DEFAULT_UPSCALE
    decoded = DecodedImages(G.paths, (side, side), DEFAULT_MAX_PIXELS)
    rows = []
    for s in range(0, len(G.paths), 16):
        batch = torch.stack([decoded[i][1].float() for i in range(s, min(s + 16, len(G.paths)))])
        rows.append(regions(batch).numpy())
    return {
        "qv": features(net, Q.paths, QUERY_VIEWS, per_scale=True),
        "gw": features(net, G.paths, Variant()),
        "gr": np.concatenate(rows),
    }


def similarities(f: dict[str, np.ndarray], regions: int, fit_on: str) -> np.ndarray:
    """(queries x gallery): each gallery image's best (query view, region) whitened cosine."""
    n, d = f["gw"].shape
    rows = f["gw"][:, None] if regions == 1 else f["gr"].reshape(n, -1, d)[:, :regions]
    white = PCAWhitening(*PRESET).fit(f["gw"] if fit_on == "whole" else rows.reshape(-1, d))
    g = white.transform(rows.reshape(-1, d)).reshape(n, regions, -1)
    return np.max([np.einsum("qd,nrd->qnr", white.transform(q), g).max(axis=2) for q in f["qv"]], axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tmp", type=Path, default=None, help="Keep the sets and the feature cache here.")
    parser.add_argument("--sets", nargs="+", type=parse_set, default=VAL + TEST)
    parser.add_argument("--score-only", action="store_true", help="Score the cached sets; extract nothing.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    net = preset_network()
    results: dict[str, dict[str, tuple]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.tmp or Path(scratch)
        cache = tmp / "region-features"
        cache.mkdir(parents=True, exist_ok=True)
        for name, seed in args.sets:
            key, path = f"{name}:{seed}", cache / f"{name}-{seed}.npz"
            if args.score_only and not path.exists():
                continue
            query, gallery = build(name, tmp, seed)
            Q, G = ImageSet.from_path(query), ImageSet.from_path(gallery)
            f = cached_features(path, Q, G, partial(extract, net, Q, G))
            for label, (regions, fit_on) in VARIANTS.items():
                results.setdefault(label, {})[key] = ranked_metrics(similarities(f, regions, fit_on), Q, G)
                print(label, key, "{:.3f} / {:.3f} / {:.3f}".format(*results[label][key]), flush=True)
    keys = [f"{n}:{s}" for n, s in args.sets if f"{n}:{s}" in next(iter(results.values()), {})]
    val = [k for k in keys if k in {f"{n}:{s}" for n, s in VAL}]
    score = {label: float(np.mean([cells[k][1] for k in val])) if val else None for label, cells in results.items()}
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    (out / "region-whitening.json").write_text(json.dumps({"results": results, "score": score}, indent=2))
    print("\n| variant |" + "".join(f" {k} |" for k in keys) + " mean validation mAP (rule) |")
    print("| --- |" + " --- |" * (len(keys) + 1))
    for label, cells in results.items():
        rule = "-" if score[label] is None else f"{score[label]:.3f}"
        print(f"| {label} |" + "".join(" {:.3f} / {:.3f} / {:.3f} |".format(*cells[k]) for k in keys) + f" {rule} |")


if __name__ == "__main__":
    main()
