"""Copy detection on the hard sets: every option alone and combined, with the time per query.

    python benchmarks/copies.py [--sets crop-copies disc-copies] [--rows NAME ...]
                                [--selfsup CHECKPOINT [--selfsup-set SET]]

`crop-copies` (``lookalike.samples.make_crop_copy_set``, seed 0: queries are 20-35% area crops,
turned up to 30 degrees, scaled to 0.35, recoloured, JPEG quality 15, among 400 distractors) and
`disc-copies` (``make_copy_detection_set(strength=1.8, composite=0.7, distractors=400)``, seed 7, as
in `benchmarks/refinement.py`). Each row is one configuration searched with ``lookalike.evaluate``;
figures are top-1, mAP and µAP (pairs of the top-10 lists pooled over all queries), the search
time per query (k-NN, regions, verification: everything after the features) and the extraction
time per image of the configuration's features (measured where its features were not cached yet;
a region configuration extracts every region). Writes benchmarks/out/copies.json and prints a
Markdown table. ``--selfsup`` runs the rows of a `lookalike train selfsup` checkpoint (trained on
the set's own gallery, as `benchmarks/selfsup.py` does) alone and with each search-time option,
instead of the default rows (``--rows`` picks among both), into benchmarks/out/copies-selfsup.json;
``--selfsup-set`` names the one set it was trained for (a gallery-trained model is searched only
on its own set).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import lookalike
from lookalike import ExtractOptions
from lookalike.config import PRESETS, SearchConfig
from lookalike.samples import make_copy_detection_set, make_crop_copy_set

HERE = Path(__file__).parent

COPIES = ("efficientnet-lite0", PRESETS["copies"]["model_options"])
# the copies preset's whitening until 2026-12-07 (PCA on the gallery, shrinkage 10). Rows named
# "copies preset ..." below were measured when this was the whole preset; on 2026-12-06 it gained
# query scales, on 2026-12-07 a whitening learned from two edited views of each gallery image
# ("copies preset + query scales + learned whitening" is the preset as it is now)
COPIES_STEPS = {"whiten": True, "whiten_dim": 128}
LEARNED = {"whiten_views": 2}
assert PRESETS["copies"]["refinement"] == {**COPIES_STEPS, **LEARNED, "query_scales": True}, "the copies preset changed"
# the pick of benchmarks/whitening.py on validation sets: ranks copies better, costs dedup and classes
VALIDATED_STEPS = {"whiten": True, "whiten_dim": 64, "whiten_shrinkage": 0.1}
# its pick for a selfsup model trained on disc-copies seed 8
SELFSUP_STEPS = {"whiten": True, "whiten_dim": 128, "whiten_shrinkage": 0.3}
# what is measured on top of each whitening of the preset's features
ON_TOP: dict[str, dict] = {
    "score norm k=10": {"score_norm": 10},
    "regions 3": {"regions": 3},
    "regions 3 + query regions": {"regions": 3, "query_regions": True},
    "sift, top 100": {"rerank": "sift", "rerank_top": 100},
    "sift, top 300": {"rerank": "sift", "rerank_top": 300},
}
# name -> (model, model options, refinement)
ROWS: dict[str, tuple[str, dict, dict]] = {
    "efficientnet-lite0 (default)": ("efficientnet-lite0", {}, {}),
    "GeM + multi-scale + whitening 128": COPIES + (COPIES_STEPS,),  # the copies preset
    # the copies preset with aspect-kept inputs (--resize fit: small crops are not blown up)
    "copies preset + resize fit": (COPIES[0], {**COPIES[1], "resize": "fit"}, COPIES_STEPS),
    # queries described at each scale too (--query-scales): a gallery image scores its best view
    "copies preset + query scales": COPIES + ({**COPIES_STEPS, "query_scales": True},),
    "copies preset + query scales + learned whitening": COPIES + ({**COPIES_STEPS, **LEARNED, "query_scales": True},),
    "copies preset + query scales + score norm k=10": COPIES
    + ({**COPIES_STEPS, "query_scales": True, "score_norm": 10},),
    # queries fitted (not blown up), the gallery squashed as for dedup
    "copies preset + query scales + query fit": COPIES
    + ({**COPIES_STEPS, "query_scales": True, "query_resize": "fit"},),
    "copies preset + query scales + query fit + score norm k=10": COPIES
    + ({**COPIES_STEPS, "query_scales": True, "query_resize": "fit", "score_norm": 10},),
    "copies preset + query fit": COPIES + ({**COPIES_STEPS, "query_resize": "fit"},),
    # each gallery image's scores minus its mean similarity to its 10 nearest others (--gallery-norm)
    "copies preset + query scales + gallery norm k=10": COPIES
    + ({**COPIES_STEPS, "query_scales": True, "gallery_norm": 10},),
    "copies preset + query scales + gallery norm k=10 + score norm k=10": COPIES
    + ({**COPIES_STEPS, "query_scales": True, "gallery_norm": 10, "score_norm": 10},),
    "gallery norm k=10": ("efficientnet-lite0", {}, {"gallery_norm": 10}),
    "copies preset + resize fit + query scales": (
        COPIES[0],
        {**COPIES[1], "resize": "fit"},
        {**COPIES_STEPS, "query_scales": True},
    ),
    "copies preset + resize fit + query scales + score norm k=10": (
        COPIES[0],
        {**COPIES[1], "resize": "fit"},
        {**COPIES_STEPS, "query_scales": True, "score_norm": 10},
    ),
    "GeM + multi-scale + whitening 64, shrinkage 0.1": COPIES + (VALIDATED_STEPS,),
    "regions 2": ("efficientnet-lite0", {}, {"regions": 2}),
    "regions 3": ("efficientnet-lite0", {}, {"regions": 3}),
    "regions 3 + query regions": ("efficientnet-lite0", {}, {"regions": 3, "query_regions": True}),
    "sift verification, top 100": ("efficientnet-lite0", {}, {"rerank": "sift", "rerank_top": 100}),
    "regions 3 + sift, top 100": (
        "efficientnet-lite0",
        {},
        {"regions": 3, "rerank": "sift", "rerank_top": 100},
    ),
    "score norm k=10": ("efficientnet-lite0", {}, {"score_norm": 10}),
    "regions 3 + score norm k=10": ("efficientnet-lite0", {}, {"regions": 3, "score_norm": 10}),
    **{
        f"{name} + {extra}": COPIES + ({**steps, **more},)
        for name, steps in (("copies preset", COPIES_STEPS), ("whitening 64, shrinkage 0.1", VALIDATED_STEPS))
        for extra, more in ON_TOP.items()
    },
    "sscd 224": ("sscd", {"size": 224}, {}),
    "sscd 224 + whitening 128": ("sscd", {"size": 224}, COPIES_STEPS),
    "sscd 224 + whitening 64, shrinkage 0.1": ("sscd", {"size": 224}, VALIDATED_STEPS),
    "sscd-distilled 224 + whitening 128": ("sscd-distilled", {"size": 224}, COPIES_STEPS),
    "sscd-distilled 224 + whitening 64, shrinkage 0.1": ("sscd-distilled", {"size": 224}, VALIDATED_STEPS),
    "sscd 224 + sift, top 100": ("sscd", {"size": 224}, {"rerank": "sift", "rerank_top": 100}),
    "sscd 224 + score norm k=10": ("sscd", {"size": 224}, {"score_norm": 10}),
    "sscd-distilled 224": ("sscd-distilled", {"size": 224}, {}),
    "sscd-distilled 224 + sift, top 100": (
        "sscd-distilled",
        {"size": 224},
        {"rerank": "sift", "rerank_top": 100},
    ),
    # region descriptors on the ready SSCD graph (one graph run per region)
    "sscd-distilled 224 + regions 3": ("sscd-distilled", {"size": 224}, {"regions": 3}),
    "sscd-distilled 224 + regions 3 + query regions": (
        "sscd-distilled",
        {"size": 224},
        {"regions": 3, "query_regions": True},
    ),
    "sscd-distilled 224 + regions 3 + score norm k=10": (
        "sscd-distilled",
        {"size": 224},
        {"regions": 3, "score_norm": 10},
    ),
}


SELFSUP_ROWS: dict[str, dict] = {
    "": {},
    " + score norm k=10": {"score_norm": 10},
    " + whitening 128": COPIES_STEPS,
    " + whitening 128 + score norm k=10": {**COPIES_STEPS, "score_norm": 10},
    " + whitening, all dimensions": {"whiten": True},
    " + whitening 64, shrinkage 0.1": VALIDATED_STEPS,
    " + whitening 128, shrinkage 0.3": SELFSUP_STEPS,
    " + whitening 128, shrinkage 0.3 + score norm k=10": {**SELFSUP_STEPS, "score_norm": 10},
    " + regions 3 + query regions": {"regions": 3, "query_regions": True},
    " + sift, top 100": {"rerank": "sift", "rerank_top": 100},
}


SEEDS = {"crop-copies": 0, "disc-copies": 7}  # the test sets of every table; other seeds validate


def build(name: str, tmp: Path, seed: int | None = None) -> tuple[Path, Path]:
    """(query, gallery) of a copy set; ``seed`` other than the set's own builds a validation set."""
    if name not in SEEDS:
        raise SystemExit(f"unknown set {name}")
    seed = SEEDS[name] if seed is None else seed
    suffix = "" if seed == SEEDS[name] else f"-seed{seed}"
    if name == "crop-copies":
        return make_crop_copy_set(tmp / f"crop{suffix}", seed=seed)
    return make_copy_detection_set(
        tmp / f"disc{suffix}",
        gallery_copies=2,
        query_copies=4,
        seed=seed,
        strength=1.8,
        composite=0.7,
        distractors=400,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sets", nargs="+", default=["crop-copies", "disc-copies"])
    parser.add_argument(
        "--rows", nargs="+", default=None, help="Default: every row (with --selfsup: its own rows)."
    )
    parser.add_argument("--tmp", type=Path, default=None, help="Keep the sets and the cache here.")
    parser.add_argument(
        "--name", default=None, help="Write benchmarks/out/copies-NAME.json (a partial run keeps the full one's file)."
    )
    parser.add_argument("--selfsup", type=Path, default=None, help="A selfsup checkpoint: add its rows.")
    parser.add_argument(
        "--selfsup-set", choices=["crop-copies", "disc-copies"], help="The set the checkpoint was trained on."
    )
    args = parser.parse_args()
    if args.selfsup_set and args.selfsup is None:
        parser.error("--selfsup-set names the set of --selfsup CHECKPOINT: give --selfsup too")
    if args.selfsup is None:
        args.rows = args.rows or list(ROWS)
    else:
        args.sets = [args.selfsup_set] if args.selfsup_set else args.sets
        own = {f"selfsup{suffix}": (str(args.selfsup), {}, steps) for suffix, steps in SELFSUP_ROWS.items()}
        ROWS.update(own)
        args.rows = args.rows or []
        if not any(r in own for r in args.rows):  # --rows "selfsup + ..." picks some of them
            args.rows += list(own)
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows: {', '.join(unknown)}")
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.tmp or Path(scratch)
        options = ExtractOptions(progress=False, cache_dir=tmp / "cache")
        for set_name in args.sets:
            query, gallery = build(set_name, tmp)
            for row in args.rows:
                model, model_options, refinement = ROWS[row]
                config = SearchConfig.from_preset(
                    model=model, model_options=model_options, extract=options, refinement=refinement
                )
                run = lookalike.evaluate(query, gallery, config=config)
                m = run.metrics
                extracted = sum(run.stats["extracted"].values())
                cell = {
                    "top1": m.top_k[1],
                    "mAP": m.mean_ap,
                    "uAP": m.micro_ap,
                    "search_ms_per_query": 1000 * run.stats["search_seconds"] / len(run.query_names),
                    "extract_ms_per_image": 1000 * run.stats["extract_seconds"] / extracted
                    if extracted
                    else None,
                }
                results.setdefault(row, {})[set_name] = cell
                extract = f"{cell['extract_ms_per_image']:.0f}" if extracted else "cached"
                print(
                    f"{set_name:12s} {row:38s} top-1 {cell['top1']:.3f} mAP {cell['mAP']:.3f} µAP {cell['uAP']:.3f} "
                    f"search {cell['search_ms_per_query']:.1f} ms/query, extract {extract} ms/image",
                    flush=True,
                )
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    name = "copies-selfsup.json" if args.selfsup else "copies.json"  # keep the full run's results
    if args.name:
        name = f"copies-{args.name}.json"
    (out / name).write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(
        "\n| configuration | " + " | ".join(f"{s} top-1 | mAP | µAP | search ms/q" for s in args.sets) + " |"
    )
    print("| --- |" + " --- | --- | --- | --- |" * len(args.sets))
    for row in args.rows:
        cells = []
        for s in args.sets:
            c = results[row][s]
            cells += [
                f"{c['top1']:.3f}",
                f"{c['mAP']:.3f}",
                f"{c['uAP']:.3f}",
                f"{c['search_ms_per_query']:.1f}",
            ]
        print(f"| {row} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
