"""Dedup quality: pair precision, recall and F1 of lookalike's dedup against imagededup's hashes.

    python benchmarks/dedup_quality.py [--data benchmarks/data/dedup] [--seed 0] [--calibration-seed 1]
        [--methods efficientnet-lite0 pixels copies sscd] [--precision 0.99] [--out benchmarks/out/dedup-quality]

Protocol, on the sets of ``benchmarks/dedup_sets.py`` (built here when missing):
1. Default thresholds: each lookalike method is calibrated (``lookalike.calibrate``, top-10 pairs,
   target precision ``--precision``) on the ``mixed`` set of the *calibration seed*: other random
   copies, crops and distractor choices than the evaluated sets (the tiles themselves are shared).
   Thresholds per set at that precision are calibrated too, for information.
2. On every set of the evaluation seed: dedup over the whole set folder (query/ and gallery/
   together) at the calibrated threshold; truth = every pair of images in one group. Reported:
   pair precision, recall, F1 of the duplicate pairs found (``result.pairs``), and F1 of the pairs
   inside the final groups (what an action would act on). For reference, the best F1 any
   threshold gives on the k-NN candidate pairs (an oracle) and the highest recall at precision >=
   0.99 on them; and, for comparison, P/R/F1 of the candidate pairs at the threshold
   ``lookalike.dedup.DEFAULT_THRESHOLDS`` holds today for the model (when it differs).
3. imagededup's perceptual hashes (PHash, DHash, WHash, AHash) on the same images in the same run:
   its default ``max_distance_threshold=10``, and its best-F1 threshold on the set (0..64, an
   oracle for fairness), with its recall at precision >= 0.99; all pairs are compared (brute force).
imagededup runs from its own environment when it is not importable here: ``--hash-python
/path/to/python`` (it installs with numpy 2: ``pip install imagededup`` pulls scikit-learn,
PyWavelets, joblib; torch was already installed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import dedup_sets  # noqa: E402

import lookalike  # noqa: E402
from lookalike.calibrate import calibrate  # noqa: E402
from lookalike.config import SearchConfig  # noqa: E402
from lookalike.extract import ExtractOptions  # noqa: E402
from lookalike.metrics import accepts, is_higher_better, precision_recall_curve  # noqa: E402

HASHES = ("PHash", "DHash", "WHash", "AHash")
HASH_DEFAULT = 10
K = 10

Pair = tuple[str, str]


def _pair(a: str, b: str) -> Pair:
    return (a, b) if a < b else (b, a)


def truth_pairs(folder: Path) -> set[Pair]:
    """Every pair of images that lie in one group."""
    doc = dedup_sets.load_groups(folder)
    return {_pair(a, b) for group in doc["groups"] for a, b in combinations(group, 2)}


@dataclass
class Scored:
    """Pair precision, recall and F1 of a set of predicted pairs against the truth."""

    precision: float
    recall: float
    f1: float
    found: int

    @classmethod
    def of(cls, predicted: set[Pair], truth: set[Pair]) -> Scored:
        tp = len(predicted & truth)
        p = tp / len(predicted) if predicted else 1.0
        r = tp / len(truth) if truth else 0.0
        return cls(p, r, 2 * p * r / (p + r) if p + r else 0.0, len(predicted))


def sweep(pairs: dict[Pair, float], truth: set[Pair], higher_is_better: bool) -> dict:
    """Best F1 over every threshold on scored candidate pairs, and the best recall at P >= 0.99."""
    names = list(pairs)
    scores = np.array([pairs[p] for p in names], dtype=np.float64)
    hits = np.array([p in truth for p in names], dtype=bool)
    curve = precision_recall_curve(scores, hits, len(truth), higher_is_better=higher_is_better)
    if not len(curve):
        return {"best_f1": 0.0, "best_threshold": None, "recall_at_p99": 0.0}
    f1 = np.where(
        curve.precision + curve.recall > 0,
        2 * curve.precision * curve.recall / (curve.precision + curve.recall + 1e-300),
        0,
    )
    best = int(np.argmax(f1))
    at = curve.best_for_precision(0.99)
    return {
        "best_f1": float(f1[best]),
        "best_threshold": float(curve.thresholds[best]),
        "best_precision": float(curve.precision[best]),
        "best_recall": float(curve.recall[best]),
        "recall_at_p99": 0.0 if at is None else float(curve.recall[at]),
    }


def config_for(method: str, cache: Path) -> SearchConfig:
    """The SearchConfig of a method name or of the ``copies`` preset."""
    extract = ExtractOptions(progress=False, cache_dir=cache, device="cpu")
    if method == "copies":
        return SearchConfig.from_preset("copies", extract=extract)
    return SearchConfig(model=method, extract=extract)


def candidate_pairs(folder: Path, config: SearchConfig, k: int = K) -> tuple[dict[Pair, float], str]:
    """k-NN candidate pairs of the folder against itself with their best score, self-pairs
    dropped (the same search dedup makes), and the score's kind."""
    run = lookalike.search(folder, folder, k=k + 1, config=config)
    higher = is_higher_better(run.metric)
    out: dict[Pair, float] = {}
    for q, row, srow in zip(run.query_names, run.indices, run.scores, strict=True):
        for j, s in zip(row, srow, strict=True):
            g = run.gallery_names[j] if j >= 0 else None
            if g is None or g == q:
                continue
            key = _pair(q, g)
            if key not in out or (s > out[key] if higher else s < out[key]):
                out[key] = float(s)
    return out, run.metric


def dedup_pairs(
    folder: Path, config: SearchConfig, threshold: float, k: int = K
) -> tuple[set[Pair], set[Pair]]:
    """(duplicate pairs, pairs inside the final groups) of lookalike's dedup at ``threshold``;
    without ``lookalike.dedup`` yet, both are the thresholded k-NN candidate pairs."""
    try:
        from lookalike.dedup import find_duplicates
    except ImportError:
        pairs, metric = candidate_pairs(folder, config, k)
        kept = {
            p for p, s in pairs.items() if accepts(s, threshold, higher_is_better=is_higher_better(metric))
        }
        return kept, kept
    result = find_duplicates(folder, config=config, threshold=threshold, k=k)
    names = [item.name for item in result.items]
    direct = {_pair(names[a], names[b]) for a, b in zip(result.pairs.a, result.pairs.b, strict=True)}
    grouped = {_pair(names[a], names[b]) for g in result.groups for a, b in combinations(g.members, 2)}
    return direct, grouped


def dedup_default(config: SearchConfig) -> float | None:
    """The threshold ``lookalike.dedup`` uses today for this model's cosine scores, if it has one."""
    try:
        from lookalike.dedup import DEFAULT_THRESHOLDS
    except ImportError:
        return None
    value = DEFAULT_THRESHOLDS.get(config.model_name, {}).get(config.metric or "cosine")
    return None if value is None else float(value)


def hash_pairs(folders: list[Path], python: str | None) -> dict[str, dict[str, dict[Pair, int]]]:
    """{set folder: {hash: {pair: hamming distance}}} for every pair, from imagededup (run in
    ``python`` when given: its own environment)."""
    code = r"""
import json, sys, logging
logging.disable(logging.CRITICAL)
from imagededup import methods
out = {}
for folder in sys.argv[2:]:
    out[folder] = {}
    for name in sys.argv[1].split(","):
        h = getattr(methods, name)(verbose=False)
        enc = h.encode_images(image_dir=folder, recursive=True, num_enc_workers=0)
        dup = h.find_duplicates(encoding_map=enc, max_distance_threshold=64, scores=True, num_dist_workers=1)
        out[folder][name] = {"images": len(enc), "pairs": [[a, b, int(d)] for a, v in dup.items() for b, d in v if a < b]}
print(json.dumps(out))
"""
    cmd = [python or sys.executable, "-c", code, ",".join(HASHES), *map(str, folders)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"imagededup failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    raw = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        folder: {name: {_pair(a, b): d for a, b, d in doc["pairs"]} for name, doc in hashes.items()}
        for folder, hashes in raw.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE / "data" / "dedup")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibration-seed", type=int, default=1)
    parser.add_argument("--methods", nargs="*", default=["efficientnet-lite0", "pixels", "copies"])
    parser.add_argument("--sets", nargs="*", default=list(dedup_sets.SETS))
    parser.add_argument("--precision", type=float, default=0.99)
    parser.add_argument("--hash-python", default=None, help="Python of an environment with imagededup.")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "dedup-quality")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "cache"

    def folder(name: str, seed: int) -> Path:
        path = args.data / f"{name}-s{seed}"
        if not (path / "groups.json").is_file():
            dedup_sets.build(args.data, (name,), seed)
        return path

    sets = [s for s in args.sets if s != "faces" or (dedup_sets.HERE / "data" / "orl").is_dir()]
    report: dict = {"precision_target": args.precision, "k": K, "calibration": {}, "sets": {}}
    # 1. thresholds, calibrated on the calibration seed
    for method in args.methods:
        config = config_for(method, cache)
        per_set = {}
        for name in ["mixed", *[s for s in sets if s != "mixed"]]:
            t0 = time.perf_counter()
            where = folder(name, args.calibration_seed)
            labels = where / "labels.csv"
            cal = calibrate(
                where / "query",
                where / "gallery",
                args.precision,
                config=config,
                k=K,
                query_labels=labels,
                gallery_labels=labels,
            )
            per_set[name] = {
                "threshold": cal.threshold,
                "precision": cal.precision,
                "recall": cal.recall,
                "score": cal.score,
                "best_precision": cal.best_precision,
                "seconds": round(time.perf_counter() - t0, 1),
            }
            print(f"calibrate {method} on {name}-s{args.calibration_seed}: {per_set[name]}", flush=True)
        report["calibration"][method] = per_set
    # 2. dedup at the calibrated (mixed-set) threshold on the evaluation seed
    folders = {name: folder(name, args.seed) for name in sets}
    for name, path in folders.items():
        truth = truth_pairs(path)
        rows = {}
        for method in args.methods:
            config = config_for(method, cache)
            t = report["calibration"][method]["mixed"]["threshold"]
            t0 = time.perf_counter()
            direct, grouped = dedup_pairs(path, config, t)
            seconds = time.perf_counter() - t0
            cands, metric = candidate_pairs(path, config)
            rows[method] = {
                "threshold": t,
                **vars(Scored.of(direct, truth)),
                "group_f1": Scored.of(grouped, truth).f1,
                **sweep(cands, truth, is_higher_better(metric)),
                "seconds": round(seconds, 1),
            }
            print(f"{name}: {method}: {rows[method]}", flush=True)
            current = dedup_default(config)
            if current is not None and current != t:  # what dedup does today without a threshold
                higher = is_higher_better(metric)
                taken = {p for p, s in cands.items() if accepts(s, current, higher_is_better=higher)}
                rows[f"{method} at dedup's default"] = {"threshold": current, **vars(Scored.of(taken, truth))}
        report["sets"][name] = {
            "images": dedup_sets.load_groups(path)["images"],
            "truth_pairs": len(truth),
            "rows": rows,
        }
    # 3. imagededup's hashes on the same folders
    t0 = time.perf_counter()
    hashed = hash_pairs(list(folders.values()), args.hash_python)
    report["hash_seconds"] = round(time.perf_counter() - t0, 1)
    for name, path in folders.items():
        truth = truth_pairs(path)
        for hname, pairs in hashed[str(path)].items():
            at_default = {p for p, d in pairs.items() if d <= HASH_DEFAULT}
            report["sets"][name]["rows"][hname] = {
                "threshold": HASH_DEFAULT,
                **vars(Scored.of(at_default, truth)),
                **sweep({p: float(d) for p, d in pairs.items()}, truth, higher_is_better=False),
            }
    (args.out / "results.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(markdown(report))
    (args.out / "results.md").write_text(markdown(report), encoding="utf-8")


def markdown(report: dict) -> str:
    """The tables: calibrated thresholds, then one table per set."""
    lines = [
        f"Thresholds at precision >= {report['precision_target']} (calibration seed), top-{report['k']} pairs:",
        "",
    ]
    methods = list(report["calibration"])
    names = list(next(iter(report["calibration"].values())))
    lines += ["| method | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    for m in methods:
        cells = []
        for n in names:
            c = report["calibration"][m][n]
            cells.append(
                "unreachable" if c["threshold"] is None else f"{c['threshold']:.4f} (R {c['recall']:.3f})"
            )
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    for name, doc in report["sets"].items():
        lines += ["", f"**{name}** ({doc['images']} images, {doc['truth_pairs']} duplicate pairs)", ""]
        lines += [
            "| method | threshold | P | R | F1 | group F1 | oracle F1 (threshold) | R at P>=0.99 |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for m, r in doc["rows"].items():
            group = f"{r['group_f1']:.3f}" if "group_f1" in r else "-"
            oracle = (
                "-" if r.get("best_threshold") is None else f"{r['best_f1']:.3f} ({r['best_threshold']:.4g})"
            )
            at99 = f"{r['recall_at_p99']:.3f}" if "recall_at_p99" in r else "-"
            lines.append(
                f"| {m} | {r['threshold']:.4g} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | "
                f"{group} | {oracle} | {at99} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
