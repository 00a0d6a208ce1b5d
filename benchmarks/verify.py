"""Spatial verification of a deep short list: keypoint budgets, selection, matching and fusion.

    python benchmarks/verify.py [--sets crop-copies disc-copies] [--rows NAME ...] [--work DIR]

The global ranking is efficientnet-lite0's (the default), computed once per set; each row then
verifies each query's top N (N = 20, 100, 300) with one setting of the spatial re-ranker
(`lookalike.rerank.SpatialVerification`) and reports top-1 and mAP of the re-ranked lists (the
rest of the gallery in its global order). Local features of every image are extracted once per
detector setting (cached on disk under --work) and are not part of the timing; "ms/q" is the
CPU time of verification per query at the deepest N (one thread, so the figure holds on a
loaded machine), beside the global baseline of the same run (CPU time of the query's embedding
and search, all threads). Settings that differ only in N, min_inliers or fusion reuse one verification at N = 300
(verifying a pair does not depend on N); their timing is the row they come from.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from lookalike import ExtractOptions, ImageSet, create_extractor, embed
from lookalike.knn import full_rankings, rankings_with_head, topk
from lookalike.local.shortlist import VerifyStats
from lookalike.metrics import evaluate_rankings
from lookalike.rerank import METHOD_DEFAULTS, SPATIAL_DEFAULTS, SpatialVerification
from lookalike.samples import make_copy_detection_set, make_crop_copy_set

HERE = Path(__file__).parent
DEPTHS = (20, 100, 300)
OLD = {  # the matcher before this benchmark: 1000 strongest, ratio 0.8 + mutual, MAGSAC 5 px, 10 inliers
    "max_keypoints": 1000, "selection": "strongest", "ratio": 0.8, "mutual": True,
    "estimator": "magsac", "ransac_threshold": 5.0, "min_inliers": 10, "min_matches": 4, "fusion": "rank",
    "threshold": None, "votes": 0, "early_exit": 0,
}
PLAIN = {**OLD, "max_keypoints": None, "ratio": 0.75, "mutual": False, "estimator": "ransac", "min_matches": 10,
         "fusion": "gated"}  # the issue's "plain SIFT": all keypoints, ratio 0.75, RANSAC
LOW = {**PLAIN, "threshold": 0.02, "min_matches": 5}  # SIFT contrast threshold 0.02 (OpenCV: 0.04)

# (label, method, settings). Rows that differ only in POST_HOC settings share one verification at
# N = 300 (min_matches 5 verifies exactly what any min_inliers >= 5 needs) and its timing.
ROWS: list[tuple[str, str, dict]] = [
    ("old: 1000 strongest, 0.8 + mutual, MAGSAC 5, 10 inl, rank fusion", "sift", OLD),
    ("old + gated fusion", "sift", {**OLD, "fusion": "gated"}),
    ("1000 strongest, 0.75, RANSAC 5, 10 inl", "sift", {**PLAIN, "max_keypoints": 1000}),
    ("1000 spread over octaves, 0.75, RANSAC 5", "sift", {**PLAIN, "max_keypoints": 1000, "selection": "octaves"}),
    ("plain: all keypoints, 0.75, RANSAC 5, 10 inl", "sift", PLAIN),
    ("plain, ratio 0.8", "sift", {**PLAIN, "ratio": 0.8}),
    ("plain + mutual check", "sift", {**PLAIN, "mutual": True}),
    ("plain, MAGSAC 5", "sift", {**PLAIN, "estimator": "magsac"}),
    ("plain, no pre-filter (min_matches 4)", "sift", {**PLAIN, "min_matches": 4}),
    ("plain, contrast 0.02, 10 inl", "sift", {**LOW, "min_inliers": 10}),
    ("plain, contrast 0.02, 8 inl", "sift", {**LOW, "min_inliers": 8}),
    ("plain, contrast 0.02, 6 inl", "sift", {**LOW, "min_inliers": 6}),
    ("plain, contrast 0.02, 5 inl", "sift", {**LOW, "min_inliers": 5}),
    ("plain, contrast 0.02, 8 inl, weighted w=0.5", "sift", {**LOW, "min_inliers": 8, "fusion": "weighted", "weight": 0.5}),
    ("plain, contrast 0.02, 8 inl, weighted w=1", "sift", {**LOW, "min_inliers": 8, "fusion": "weighted", "weight": 1.0}),
    ("plain, contrast 0.02, 8 inl, rank fusion", "sift", {**LOW, "min_inliers": 8, "fusion": "rank"}),
    ("plain, contrast 0.02, small images to 256 px, 8 inl", "sift", {**LOW, "min_inliers": 8, "min_side": 256}),
    ("plain, contrast 0.02, 8 inl, pre-filter 8", "sift", {**LOW, "min_inliers": 8, "min_matches": 8}),
    ("plain, contrast 0.02, 8 inl, pre-filter 8, early exit (1 with 30 inl)", "sift",
     {**LOW, "min_inliers": 8, "min_matches": 8, "early_exit": 1}),
    ("plain, contrast 0.02, 8 inl, pre-filter 8, votes 4", "sift", {**LOW, "min_inliers": 8, "min_matches": 8, "votes": 4}),
    ("plain, contrast 0.02, 8 inl, pre-filter 8, votes 4, early exit", "sift",
     {**LOW, "min_inliers": 8, "min_matches": 8, "votes": 4, "early_exit": 1}),
    ("1000 strongest, contrast 0.02, 8 inl, pre-filter 8, votes 4", "sift",
     {**LOW, "max_keypoints": 1000, "min_inliers": 8, "min_matches": 8, "votes": 4}),
    ("plain, contrast 0.02, 8 inl, MAGSAC, pre-filter 8, votes 4", "sift",
     {**LOW, "min_inliers": 8, "min_matches": 8, "votes": 4, "estimator": "magsac"}),
    ("defaults of the re-ranker (sift)", "sift", {**SPATIAL_DEFAULTS, **METHOD_DEFAULTS["sift"]}),
    ("defaults but RANSAC (sift)", "sift", {**SPATIAL_DEFAULTS, **METHOD_DEFAULTS["sift"], "estimator": "ransac"}),
    ("surf old: 1000 strongest, 0.8 + mutual, MAGSAC 5", "surf", OLD),
    ("surf all keypoints, 0.75, RANSAC 5, 8 inl", "surf", {**PLAIN, "min_inliers": 8, "min_matches": 8}),
    ("surf all keypoints, 0.75, RANSAC 5, 8 inl, votes 4", "surf",
     {**PLAIN, "min_inliers": 8, "min_matches": 8, "votes": 4}),
    ("defaults of the re-ranker (surf)", "surf", {**SPATIAL_DEFAULTS, **METHOD_DEFAULTS.get("surf", {})}),
]
# settings that change only how verified inliers are used, not the verification itself
POST_HOC = ("min_inliers", "fusion", "weight")


def build(name: str, root: Path) -> tuple[Path, Path]:
    """The query and gallery folders of a benchmark set (built once under ``root``)."""
    folder = root / name
    if not (folder / "gallery").is_dir():
        if name == "crop-copies":
            make_crop_copy_set(folder, seed=7, distractors=400)
        elif name == "disc-copies":
            make_copy_detection_set(
                folder, gallery_copies=2, query_copies=4, seed=7, strength=1.8, composite=0.7, distractors=400
            )
        else:
            raise SystemExit(f"unknown set {name!r}")
    return folder / "query", folder / "gallery"


def metrics(head: np.ndarray, queries: np.ndarray, gallery: np.ndarray, q_set: ImageSet, g_set: ImageSet) -> tuple:
    """(top-1, mAP) of rankings that start with ``head`` and continue in the global order."""
    run = evaluate_rankings(
        rankings_with_head(full_rankings(queries, gallery), head), q_set.labels, g_set.labels, q_set.names
    )
    return run.top_k[1], run.mean_ap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=["crop-copies", "disc-copies"])
    parser.add_argument("--rows", nargs="*", help="only rows whose label contains one of these")
    parser.add_argument("--work", type=Path, help="where sets and caches are kept (default: a temporary folder)")
    args = parser.parse_args()
    rows = [r for r in ROWS if not args.rows or any(s in r[0] for s in args.rows)]
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        options = ExtractOptions(progress=False, cache_dir=work / "cache", num_workers=1)
        results: dict = {}
        for name in args.sets:
            q_dir, g_dir = build(name, work / "sets")
            q_set, g_set = ImageSet.from_path(q_dir), ImageSet.from_path(g_dir)
            model = create_extractor("efficientnet-lite0")
            gallery = embed(model, g_set, options).features
            t0 = time.process_time()  # a query's global cost: its embedding (not cached) and the search
            queries = embed(model, q_set, replace(options, use_cache=False)).features
            candidates, _ = topk(queries, gallery, max(DEPTHS))
            global_ms = 1000 * (time.process_time() - t0) / len(q_set)
            base = metrics(candidates, queries, gallery, q_set, g_set)
            print(f"{name}: {len(q_set)} queries, {len(g_set)} gallery; global top-1 {base[0]:.3f} mAP {base[1]:.3f} "
                  f"({global_ms:.1f} ms/q: query embedding + search)", flush=True)
            results[name] = {"global": {"top1": base[0], "mAP": base[1], "ms_per_query": global_ms}, "rows": {}}
            verified: dict[str, tuple[np.ndarray, dict, float]] = {}
            memories: dict[str, tuple] = {}
            for label, method, settings in rows:
                sv = SpatialVerification(
                    q_set, g_set, method, max(DEPTHS), options, queries, gallery, **settings
                )
                key = sv.detector.key
                if key in memories:  # features once per detector setting, shared by its rows
                    sv.query_features, sv.gallery_features, extract_s, votes_index = memories[key]
                else:
                    t = time.perf_counter()
                    sv.query_features.get(range(len(q_set)))
                    sv.gallery_features.get(range(len(g_set)))
                    extract_s = time.perf_counter() - t
                    votes_index = None
                    memories[key] = (sv.query_features, sv.gallery_features, extract_s, votes_index)
                build_s = 0.0
                if settings.get("votes"):  # built once per gallery and detector, kept across queries
                    if votes_index is None:
                        t = time.thread_time()
                        votes_index = sv._vote_index(sv.gallery_features.get(range(len(g_set))))
                        build_s = time.thread_time() - t
                        memories[key] = (*memories[key][:3], votes_index)
                    sv._votes = votes_index
                vkey = json.dumps([method, {k: v for k, v in settings.items() if k not in POST_HOC}], sort_keys=True)
                if vkey not in verified:
                    sv.stats = VerifyStats()
                    t = time.thread_time()  # one thread does all the work: its CPU time, robust to load
                    inliers = sv.verify(np.arange(len(q_set)), candidates)
                    ms = 1000 * (time.thread_time() - t) / len(q_set)
                    verified[vkey] = (inliers, sv.stats.as_dict(), ms)
                inliers, stats, ms = verified[vkey]
                cells = {}
                for depth in DEPTHS:
                    cut = replace_top(sv, depth)
                    head, _ = cut.order(np.arange(len(q_set)), candidates, np.where(
                        np.arange(candidates.shape[1]) < depth, inliers, 0))
                    cells[depth] = metrics(head, queries, gallery, q_set, g_set)
                results[name]["rows"][label] = {
                    "settings": settings, "method": method, "ms_per_query_at_300": ms, "stats": stats,
                    "features_per_image_ms": 1000 * extract_s / (len(q_set) + len(g_set)),
                    "vote_index_build_s": build_s,
                    **{f"top{d}": {"top1": t1_, "mAP": m} for d, (t1_, m) in cells.items()},
                }
                text = "  ".join(f"N={d} {t1_:.3f}/{m:.3f}" for d, (t1_, m) in cells.items())
                extra = f"  vote index {build_s:.1f} s" if build_s else ""
                print(f"  {label:58s} {text}  {ms:7.1f} ms/q  fitted {stats['fitted']}/{stats['pairs']}{extra}",
                      flush=True)
        print_table(results, args.sets, rows)
        (HERE / "out").mkdir(exist_ok=True)
        (HERE / "out" / "verify.json").write_text(json.dumps(results, indent=2))


def replace_top(sv: SpatialVerification, depth: int) -> SpatialVerification:
    """The same re-ranker ordering only its first ``depth`` candidates (features and stats shared)."""
    out = replace(sv, top=depth)
    out.query_features, out.gallery_features, out.stats = sv.query_features, sv.gallery_features, sv.stats
    return out


def print_table(results: dict, sets: list[str], rows: list) -> None:
    """The markdown table: top-1 / mAP at each N and ms per query at N = 300, per set."""
    head = " | ".join(f"{s} N={d} top-1 / mAP" for s in sets for d in DEPTHS)
    print(f"\n| setting | {head} | " + " | ".join(f"{s} ms/q (300)" for s in sets) + " |")
    print("| --- |" + " --- |" * (len(sets) * len(DEPTHS) + len(sets)))
    base = " | ".join(
        f"{results[s]['global']['top1']:.3f} / {results[s]['global']['mAP']:.3f}" for s in sets for _ in DEPTHS
    )
    print(f"| global only (efficientnet-lite0) | {base} | "
          + " | ".join(f"{results[s]['global']['ms_per_query']:.1f}" for s in sets) + " |")
    for label, _, _ in rows:
        cells = " | ".join(
            f"{results[s]['rows'][label][f'top{d}']['top1']:.3f} / {results[s]['rows'][label][f'top{d}']['mAP']:.3f}"
            for s in sets for d in DEPTHS
        )
        ms = " | ".join(f"{results[s]['rows'][label]['ms_per_query_at_300']:.0f}" for s in sets)
        print(f"| {label} | {cells} | {ms} |")


if __name__ == "__main__":
    main()
