"""Gain or loss of each retrieval refinement on `orl`, `fmnist` and a copy-detection set.

    python benchmarks/datasets.py                # once
    python benchmarks/refinement.py [--sets orl fmnist copies hard-copies disc-copies crop-copies]
                                    [--rows LABEL ...]

Every row is efficientnet-lite0 (the pretrained default) with one option changed, then the
combinations; figures are mAP and top-1 (queries against the gallery, labels from folders).
The copy-detection sets are built from scikit-image photos by `lookalike.samples` (14 photos,
8 edited gallery copies and 3 edited queries each; `hard-copies` with edits of strength 1.8:
crops down to 19% of the photo, turns up to 27 degrees; `disc-copies`, a DISC21-like set: 14 photos x
2 gallery copies plus 400 distractors cut from 9 other photos, 4 queries per photo at strength 1.8,
70% of them pasted into another photo under a caption; `crop-copies`, copies people actually meet:
4 queries per photo, each a 20-35% crop turned up to 30 degrees, rescaled to 0.35, strongly
recoloured and saved at JPEG quality 15, against each photo and one edited copy among 400
distractors, `make_crop_copy_set(seed=7)`). Features are cached between rows.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import lookalike
from lookalike import ExtractOptions
from lookalike.pipeline import Refinement
from lookalike.samples import make_copy_detection_set, make_crop_copy_set

HERE = Path(__file__).parent

ROWS: list[tuple[str, dict, Refinement]] = [
    ("baseline (avg pooling)", {}, Refinement()),
    ("GeM pooling (p=3)", {"pool": "gem"}, Refinement()),
    ("SPoC pooling (centre prior)", {"pool": "spoc"}, Refinement()),
    ("MAC pooling", {"pool": "mac"}, Refinement()),
    ("multi-scale (1, 1/sqrt2, 1/2)", {"multiscale": True}, Refinement()),
    ("PCA whitening (shrinkage 10)", {}, Refinement(whiten=True)),
    ("PCA whitening to 128-d", {}, Refinement(whiten=True, whiten_dim=128)),
    ("alpha-QE (k=3, alpha=3)", {}, Refinement(qe=3)),
    ("DBA (k=3, alpha=3)", {}, Refinement(dba=3)),
    ("k-reciprocal (k1=20, k2=6, top 100)", {}, Refinement(rerank="k-reciprocal")),
    ("GeM + multi-scale + whitening 128-d", {"pool": "gem", "multiscale": True}, Refinement(whiten=True, whiten_dim=128)),
    ("GeM + multi-scale + DBA + QE", {"pool": "gem", "multiscale": True}, Refinement(dba=3, qe=3)),
    ("GeM + multi-scale + k-reciprocal", {"pool": "gem", "multiscale": True}, Refinement(rerank="k-reciprocal")),
    ("GeM + DBA + QE + k-reciprocal", {"pool": "gem"}, Refinement(dba=3, qe=3, rerank="k-reciprocal")),
    (
        "GeM + multi-scale + whitening 128-d + query scales",
        {"pool": "gem", "multiscale": True},
        Refinement(whiten=True, whiten_dim=128, query_scales=True),
    ),
    (
        "GeM + multi-scale + whitening 128-d + query scales + query fit",
        {"pool": "gem", "multiscale": True},
        Refinement(whiten=True, whiten_dim=128, query_scales=True, query_resize="fit"),
    ),
    ("gallery norm (k=10)", {}, Refinement(gallery_norm=10)),
    (
        "GeM + multi-scale + whitening 128-d + query scales + gallery norm k=10",
        {"pool": "gem", "multiscale": True},
        Refinement(whiten=True, whiten_dim=128, query_scales=True, gallery_norm=10),
    ),
    (
        "GeM + multi-scale + whitening 64-d, shrinkage 0.1",
        {"pool": "gem", "multiscale": True},
        Refinement(whiten=True, whiten_dim=64, whiten_shrinkage=0.1),
    ),
]


def folders(name: str, data: Path, tmp: Path) -> tuple[Path, Path]:
    if name == "copies":
        return make_copy_detection_set(tmp / "copy", gallery_copies=8, query_copies=3, seed=7)
    if name == "hard-copies":
        return make_copy_detection_set(tmp / "hard", gallery_copies=8, query_copies=3, seed=7, strength=1.8)
    if name == "disc-copies":
        return make_copy_detection_set(
            tmp / "disc", gallery_copies=2, query_copies=4, seed=7, strength=1.8, composite=0.7, distractors=400
        )
    if name == "crop-copies":
        return make_crop_copy_set(tmp / "crop", seed=7, distractors=400)
    return data / name / "query", data / name / "gallery"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=HERE / "data")
    parser.add_argument("--sets", nargs="+", default=["orl", "fmnist", "copies", "hard-copies", "disc-copies"])
    parser.add_argument("--rows", nargs="+", default=None, help="Labels of the rows to run (default all; the baseline always).")
    parser.add_argument("--name", default=None, help="Write out/refinement-NAME.json (a partial run keeps the full file).")
    args = parser.parse_args()
    rows = [r for r in ROWS if r is ROWS[0] or args.rows is None or r[0] in args.rows]
    unknown = set(args.rows or ()) - {r[0] for r in ROWS}
    if unknown:
        raise SystemExit(f"unknown rows: {', '.join(sorted(unknown))}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        options = ExtractOptions(progress=False, cache_dir=Path(tmp) / "cache")
        for name in args.sets:
            query, gallery = folders(name, args.data, Path(tmp))
            for label, model_options, refinement in rows:
                run = lookalike.evaluate(
                    query, gallery, model="efficientnet-lite0", model_options=model_options,
                    options=options, refinement=refinement,
                )
                results.setdefault(label, {})[name] = (run.metrics.mean_ap, run.metrics.top_k[1])
                print(f"{name:9s} {label:40s} mAP {run.metrics.mean_ap:.3f} top-1 {run.metrics.top_k[1]:.3f}", flush=True)
    print("\n| option | " + " | ".join(f"{s} mAP | {s} top-1" for s in args.sets) + " |")
    print("| --- |" + " --- | --- |" * len(args.sets))
    base = results[ROWS[0][0]]
    for label, _, _ in rows:
        cells = []
        for s in args.sets:
            m, t = results[label][s]
            delta = m - base[s][0]
            cells.append(f"{m:.3f} ({delta:+.3f}) | {t:.3f}")
        print(f"| {label} | " + " | ".join(cells) + " |")
    (HERE / "out").mkdir(exist_ok=True)
    out = f"refinement-{args.name}.json" if args.name else "refinement.json"
    (HERE / "out" / out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
