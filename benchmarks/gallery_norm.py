"""When --gallery-norm K helps and when it hurts: the copies preset's scores, each gallery image's
minus its mean similarity to its K nearest other (whitened) gallery images.

    python benchmarks/datasets.py wallpapers      # once
    python benchmarks/gallery_norm.py [--tmp DIR] [--ks 5 10 20 40] [--name SUFFIX]

The preset's features (efficientnet-lite0, GeM, scales 1, 1/sqrt 2, 1/2, whitening 128-d /
shrinkage 10 fitted on the gallery, query scales), scored as `benchmarks/preprocess.py` scores its
`+query-max+mean` variant, on three kinds of gallery:

- `sets`: the validation and test draws of crop-copies and disc-copies (validation 1, 2, 3 and
  8, 9; test 0 and 7). Their 400 distractors are edits of 9 photos, about 44 near-copies each,
  and each query's photo is in the gallery once or twice: the case gallery normalisation is for.
- `wallpapers`: the same draws with the 352 wallpaper quarters of `datasets.py wallpapers` as
  distractors instead (88 unrelated pictures): are the gains an artefact of clustered distractors?
- `dense`: disc-copies-like draws (seeds 7, 8) whose gallery holds 8 copies of each photo, with
  either kind of distractors: true matches that form a cluster themselves, the case it penalises.

Cells are top-1 / mAP / µAP; also printed, the mean offset (k=10) of the distractors and of the
other gallery images of each draw. Writes benchmarks/out/gallery-norm[-NAME].json and prints Markdown.
Class retrieval (orl, fmnist) goes through the pipeline: `benchmarks/refinement.py`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from lookalike import ImageSet
from lookalike.samples import make_copy_detection_set
from lookalike.steps import GalleryNorm, PCAWhitening

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from copies import build  # noqa: E402
from preprocess import QUERY_VIEWS, TEST, VAL, Variant, features, measure_query_max, preset_network  # noqa: E402
from whitening import PRESET  # noqa: E402

DENSE = (7, 8)


def dense_set(tmp: Path, seed: int) -> tuple[Path, Path]:
    """(query, gallery) of a disc-copies-like draw whose gallery holds 8 copies of each photo."""
    return make_copy_detection_set(
        tmp / f"dense-{seed}", gallery_copies=8, query_copies=4, seed=seed, strength=1.8, composite=0.7,
        distractors=400,
    )


def with_wallpapers(query: Path, gallery: Path, out: Path, wallpapers: Path) -> tuple[Path, Path]:
    """A copy of a set whose gallery distractors are the wallpaper quarters."""
    if not wallpapers.is_dir():
        raise SystemExit(f"{wallpapers}: run `python benchmarks/datasets.py wallpapers` first")
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(query, out / "query")
    shutil.copytree(gallery, out / "gallery", ignore=lambda d, names: ["distractors"] if Path(d) == gallery else [])
    shutil.copytree(wallpapers, out / "gallery" / "distractors")
    return out / "query", out / "gallery"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tmp", type=Path, default=None, help="Keep the sets here.")
    parser.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20, 40])
    parser.add_argument("--data", type=Path, default=HERE / "data", help="Where datasets.py put wallpapers/.")
    parser.add_argument("--name", default="", help="Suffix of the results file.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    net = preset_network()
    rows = {"copies preset": 0, **{f"+ gallery norm k={k}": k for k in args.ks}}
    results: dict[str, dict[str, dict[str, tuple]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.tmp or Path(scratch)
        draws = {f"{n}:{s}": build(n, tmp, s) for n, s in VAL + TEST}
        draws.update({f"dense:{seed}": dense_set(tmp, seed) for seed in DENSE})
        for kind in ("sets", "wallpapers"):
            for key, (query, gallery) in draws.items():
                if kind == "wallpapers":
                    query, gallery = with_wallpapers(
                        query, gallery, tmp / f"{key.replace(':', '-')}-wallpapers", args.data / "wallpapers"
                    )
                Q, G = ImageSet.from_path(query), ImageSet.from_path(gallery)
                data = {"q": features(net, Q.paths, QUERY_VIEWS, per_scale=True), "g": features(net, G.paths, Variant()),
                        "Q": Q, "G": G}
                offsets = GalleryNorm(10).offsets(PCAWhitening(*PRESET).fit(data["g"]).transform(data["g"]))
                distractor = np.array([label == "distractors" for label in G.labels])
                spread = {"distractors": float(offsets[distractor].mean()), "others": float(offsets[~distractor].mean())}
                results.setdefault(f"{kind} offsets k=10", {})[key] = spread
                print(kind, key, "mean offset k=10: distractors {distractors:.2f}, others {others:.2f}".format(**spread))
                for label, k in rows.items():
                    cell = measure_query_max(data, *PRESET, k)
                    results.setdefault(kind, {}).setdefault(label, {})[key] = cell
                    print(kind, key, label, "{:.3f} / {:.3f} / {:.3f}".format(*cell), flush=True)
    val_keys = [f"{n}:{s}" for n, s in VAL]
    shown = [f"{n}:{s}" for n, s in TEST] + [f"dense:{s}" for s in DENSE]
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    (out / f"gallery-norm{'-' + args.name if args.name else ''}.json").write_text(
        json.dumps({"whitening": {"dim": PRESET[0], "shrinkage": PRESET[1]}, "results": results}, indent=2)
    )
    for kind in ("sets", "wallpapers"):
        table = results[kind]
        print(f"\n{kind}\n\n| scores | mean val mAP |" + "".join(f" {k} |" for k in shown))
        print("| --- | --- |" + " --- |" * len(shown))
        for label, cells in table.items():
            val = np.mean([cells[k][1] for k in val_keys])
            print(f"| {label} | {val:.3f} |" + "".join(" {:.3f} / {:.3f} / {:.3f} |".format(*cells[k]) for k in shown))
        spread = results[f"{kind} offsets k=10"]
        print("\nmean offset (k=10) of distractors / of the other gallery images: " + ", ".join(
            f"{key} {s['distractors']:.2f} / {s['others']:.2f}" for key, s in spread.items()))


if __name__ == "__main__":
    main()
