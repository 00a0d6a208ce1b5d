"""Dedup quality: pair precision, recall and F1 of ``lookalike dedup`` against imagededup's hashes.

    python benchmarks/dedup_quality.py [--data benchmarks/data/dedup] [--seed 0] [--calibration-seed 1]
        [--methods pixels efficientnet-lite0 efficientnet-lite0+sift copies copies+sift sscd ...]
        [--precision 0.99] [--out benchmarks/out/dedup-quality]

Every lookalike row is ``lookalike.dedup.find_duplicates`` over a whole set folder (query/ and
gallery/ together, k = 10), its ``pairs`` and ``groups`` scored against the set's known groups
(``benchmarks/dedup_sets.py``; built here when missing). A method is a model name, ``copies`` (the
preset), and ``+sift`` adds ``--verify sift`` (10 inliers). Protocol:

1. Calibration, on the ``mixed`` set of the *calibration seed* (other random copies, crops and
   distractor choices than the evaluated sets; the tiles themselves are shared): dedup at a floor
   threshold (every pair for a set this small, whose components dedup completes with exact scores;
   cosine >= 0.5 with ``+sift``, where every pair above the floor is verified) gives every pair's
   score; the threshold is the one with the highest pair recall whose precision reaches
   ``--precision`` (``lookalike.metrics.precision_recall_curve``). These are the values
   ``lookalike.dedup.DEFAULT_THRESHOLDS`` holds; the report flags any that differ.
2. Evaluation, on every set of the evaluation seed: dedup at its *default* threshold (no
   ``threshold`` given). Reported: P/R/F1 of ``result.pairs``, F1 of the pairs inside the final
   groups (what an action acts on), and, from the floor run on the same set, the best F1 of any
   threshold (an oracle) and the best recall at precision >= 0.99.
3. imagededup's perceptual hashes (PHash, DHash, WHash, AHash) on the same images in the same run:
   at its default ``max_distance_threshold=10``, and its best-F1 Hamming threshold on the set
   (0..64, an oracle), with its recall at precision >= 0.99; all pairs compared (brute force).
imagededup is imported in a child process (``--hash-python`` for another environment).
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

from lookalike.config import SearchConfig  # noqa: E402
from lookalike.dedup import DEDUP_MODEL, find_duplicates  # noqa: E402
from lookalike.dedup.pairs import default_key, default_threshold  # noqa: E402
from lookalike.extract import ExtractOptions  # noqa: E402
from lookalike.fileio import atomic_write, write_json  # noqa: E402
from lookalike.metrics import precision_recall_curve  # noqa: E402

HASHES = ("PHash", "DHash", "WHash", "AHash")
HASH_DEFAULT = 10
K = 10
VERIFY_FLOOR = 0.5  # cosine floor of the calibration and oracle runs with verification
METHODS = [
    "pixels",
    "efficientnet-lite0",
    "efficientnet-lite0+sift",
    "copies",
    "copies+sift",
    "sscd",
    "sscd+sift",
    "sscd-distilled",
    "sscd-distilled+sift",
]

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


@dataclass(frozen=True)
class Method:
    """A lookalike variant: its search configuration and optional verification."""

    name: str
    config: SearchConfig
    verify: str | None

    @classmethod
    def parse(cls, name: str, cache: Path) -> Method:
        base, _, verify = name.partition("+")
        extract = ExtractOptions(progress=False, cache_dir=cache, device="cpu")
        if base == "copies":
            config = SearchConfig.from_preset("copies", extract=extract)
        elif base.startswith("copies-views"):  # the preset with a whitening learned from N views
            views = int(base.removeprefix("copies-views"))
            config = SearchConfig.from_preset("copies", extract=extract, refinement={"whiten_views": views})
        else:
            config = SearchConfig(model=base, extract=extract)
        return cls(name, config, verify or None)

    @property
    def key(self) -> str:
        """Its row and column in DEFAULT_THRESHOLDS."""
        score = self.config.metric or (
            "inliers" if self.config.model_name in ("sift", "surf", "orb") else "cosine"
        )
        kind = f"{score}+{self.verify}" if self.verify else score
        return f"{default_key(self.config.model_name, self.config.preset)}[{kind}]"

    def floor(self) -> float:
        return VERIFY_FLOOR if self.verify else -1.0

    def default(self) -> float | None:
        found = default_threshold("cosine", self.config.model_name, self.config.preset, self.verify)
        return None if found is None or (self.verify and "+" not in found.source) else found.value

    def run(self, folder: Path, threshold: float | None) -> tuple[dict[Pair, float], set[Pair], float]:
        """(duplicate pairs with scores, pairs inside groups, seconds) of dedup over ``folder``."""
        t0 = time.perf_counter()
        result = find_duplicates(folder, config=self.config, threshold=threshold, k=K, verify=self.verify)
        seconds = time.perf_counter() - t0
        names = [item.name for item in result.items]
        pairs = result.pairs
        found = {
            _pair(names[a], names[b]): float(s)
            for a, b, s in zip(pairs.a.tolist(), pairs.b.tolist(), pairs.score.tolist(), strict=True)
        }
        grouped = {_pair(names[a], names[b]) for g in result.groups for a, b in combinations(g.members, 2)}
        return found, grouped, seconds


def sweep(pairs: dict[Pair, float], truth: set[Pair], higher_is_better: bool, target: float = 0.99) -> dict:
    """Best F1 over every threshold on scored pairs, and the best recall (and its threshold) at
    precision >= ``target``."""
    scores = np.array(list(pairs.values()), dtype=np.float64)
    hits = np.array([p in truth for p in pairs], dtype=bool)
    curve = precision_recall_curve(scores, hits, len(truth), higher_is_better=higher_is_better)
    if not len(curve):
        return {"best_f1": 0.0, "best_threshold": None, "recall_at_p99": 0.0, "threshold_at_p99": None}
    p, r = curve.precision, curve.recall
    f1 = np.where(p + r > 0, 2 * p * r / np.maximum(p + r, 1e-300), 0.0)
    best = int(np.argmax(f1))
    at = curve.best_for_precision(target)
    return {
        "best_f1": float(f1[best]),
        "best_threshold": float(curve.thresholds[best]),
        "recall_at_p99": 0.0 if at is None else float(r[at]),
        "threshold_at_p99": None if at is None else float(curve.thresholds[at]),
        "precision_at_p99": None if at is None else float(p[at]),
    }


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
        pairs = [[a, b, int(d)] for a, v in dup.items() for b, d in v if a < b]
        out[folder][name] = {"images": len(enc), "pairs": pairs}
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


def calibrate_method(method: Method, folder: Path, target: float) -> dict:
    """The threshold with the best recall at precision >= ``target`` over dedup's pairs of
    ``folder`` at the method's floor."""
    truth = truth_pairs(folder)
    pairs, _, seconds = method.run(folder, method.floor())
    found = sweep(pairs, truth, higher_is_better=True, target=target)
    default = method.default()
    at_default = None if default is None else Scored.of({p for p, v in pairs.items() if v >= default}, truth)
    below = [
        v for v in pairs.values() if found["threshold_at_p99"] is not None and v < found["threshold_at_p99"]
    ]
    return {
        "next_below": max(below) if below else None,  # the best pair the threshold leaves out
        "default_precision": None if at_default is None else at_default.precision,
        "default_recall": None if at_default is None else at_default.recall,
        "key": method.key,
        "threshold": found["threshold_at_p99"],
        "precision": found["precision_at_p99"],
        "recall": found["recall_at_p99"],
        "default": method.default(),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE / "data" / "dedup")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibration-seed", type=int, default=1)
    parser.add_argument("--methods", nargs="*", default=METHODS)
    parser.add_argument("--sets", nargs="*", default=list(dedup_sets.SETS), choices=dedup_sets.SETS)
    parser.add_argument("--precision", type=float, default=0.99)
    parser.add_argument("--calibrate-only", action="store_true", help="Print the thresholds and stop.")
    parser.add_argument("--no-hashes", action="store_true", help="Leave imagededup out.")
    parser.add_argument("--hash-python", default=None, help="Python of an environment with imagededup.")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "dedup-quality")
    args = parser.parse_args()
    if args.seed == args.calibration_seed:
        raise SystemExit("--seed and --calibration-seed must differ: thresholds are measured on other sets")
    args.out.mkdir(parents=True, exist_ok=True)
    cache = args.out / "cache"
    methods = [Method.parse(m, cache) for m in args.methods]

    def folder(name: str, seed: int) -> Path:
        path = args.data / f"{name}-s{seed}"
        if not (path / "groups.json").is_file():
            dedup_sets.build(args.data, (name,), seed)
        return path

    report: dict = {
        "precision_target": args.precision,
        "k": K,
        "seed": args.seed,
        "calibration_seed": args.calibration_seed,
        "calibration": {},
        "sets": {},
    }
    cal_folder = folder("mixed", args.calibration_seed)
    for method in methods:
        report["calibration"][method.name] = calibrate_method(method, cal_folder, args.precision)
        print(
            f"calibrate {method.name} on {cal_folder.name}: {report['calibration'][method.name]}", flush=True
        )
    if args.calibrate_only:
        return
    sets = [s for s in args.sets if s != "faces" or (HERE / "data" / "orl").is_dir()]
    folders = {name: folder(name, args.seed) for name in sets}
    for name, path in folders.items():
        truth = truth_pairs(path)
        rows = {}
        for method in methods:
            if method.default() is None:
                print(f"{name}: {method.name}: no default threshold ({method.key}); skipped", flush=True)
                continue
            direct, grouped, seconds = method.run(path, None)
            every, _, _ = method.run(path, method.floor())
            rows[method.name] = {
                "threshold": method.default(),
                **vars(Scored.of(set(direct), truth)),
                "group_f1": Scored.of(grouped, truth).f1,
                **sweep(every, truth, higher_is_better=True),
                "seconds": round(seconds, 1),
            }
            print(f"{name}: {method.name}: {rows[method.name]}", flush=True)
        report["sets"][name] = {
            "images": dedup_sets.load_groups(path)["images"],
            "truth_pairs": len(truth),
            "rows": rows,
        }
    if not args.no_hashes:
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
    write_json(args.out / "results.json", report)
    text = markdown(report)
    atomic_write(args.out / "results.md", lambda h: h.write(text.encode("utf-8")))
    print(text)


def markdown(report: dict) -> str:
    """The tables: calibrated thresholds, then one table per set, then the goals."""
    lines = [
        f"Thresholds at pair precision >= {report['precision_target']} on mixed-s{report['calibration_seed']} "
        f"(dedup's pairs, k = {report['k']}); evaluated on seed {report['seed']} at the defaults:",
        "",
        "| method | DEFAULT_THRESHOLDS key | calibrated | P | R | default now |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for m, c in report["calibration"].items():
        cal = "unreachable" if c["threshold"] is None else f"{c['threshold']:.4f}"
        pr = "-" if c["threshold"] is None else f"{c['precision']:.3f} | {c['recall']:.3f}"
        if c["threshold"] is None:
            pr = "- | -"
        now = "none" if c["default"] is None else f"{c['default']:.4g}"
        if (
            c["default"] is not None
            and c["threshold"] is not None
            and abs(c["default"] - c["threshold"]) > 1e-6
        ):
            now += " (differs)"
        lines.append(f"| {m} | `{c['key']}` | {cal} | {pr} | {now} |")
    for name, doc in report["sets"].items():
        lines += ["", f"**{name}** ({doc['images']} images, {doc['truth_pairs']} duplicate pairs)", ""]
        lines += [
            "| method | threshold | P | R | F1 | group F1 | oracle F1 (threshold) | R at P>=0.99 | s |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for m, r in doc["rows"].items():
            group = f"{r['group_f1']:.3f}" if "group_f1" in r else "-"
            oracle = (
                "-" if r.get("best_threshold") is None else f"{r['best_f1']:.3f} ({r['best_threshold']:.4g})"
            )
            lines.append(
                f"| {m} | {r['threshold']:.4g} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | "
                f"{group} | {oracle} | {r['recall_at_p99']:.3f} | {r.get('seconds', '-')} |"
            )
    lines += ["", f"`lookalike dedup` without -m uses {DEDUP_MODEL}.", "", *goals(report)]
    return "\n".join(lines) + "\n"


def rows_f1(report: dict, name: str, method: str) -> float:
    """The F1 of ``method`` on set ``name``."""
    return float(report["sets"][name]["rows"][method]["f1"])


def goals(report: dict) -> list[str]:
    """Issue 14's goals per method: F1 above every hash (at imagededup's default) on every set, and
    recall >= 0.95 at precision >= 0.99 on the exact and resized sets (at the default)."""
    out = ["Goals (hashes at imagededup's default threshold):", ""]
    methods = list(report["calibration"])
    for m in methods:
        margins, misses = [], []
        for name, doc in report["sets"].items():
            rows = doc["rows"]
            if m not in rows:
                continue
            hashes = [rows[h]["f1"] for h in HASHES if h in rows]
            if hashes:
                margin = rows[m]["f1"] - max(hashes)
                margins.append(f"{name} {margin:+.3f}")
            if name in ("exact", "resized"):
                r = rows[m]
                if not (r["precision"] >= 0.99 and r["recall"] >= 0.95):
                    misses.append(f"{name} P {r['precision']:.3f} R {r['recall']:.3f}")
        if margins:
            beats = all(
                float(x.split()[1]) > 0
                or (float(x.split()[1]) == 0 and rows_f1(report, x.split()[0], m) == 1.0)
                for x in margins
            )
            out.append(
                f"- {m}: F1 minus best hash: {', '.join(margins)} "
                f"({'beats every hash (or ties at F1 1.000)' if beats else 'does not beat every hash'}); "
                f"exact/resized R>=0.95 at P>=0.99: {'met' if not misses else 'missed: ' + '; '.join(misses)}"
            )
    return out


if __name__ == "__main__":
    main()
