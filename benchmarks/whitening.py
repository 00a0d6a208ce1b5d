"""A whitening for copy search, chosen on validation sets and then measured on the test sets.

    python benchmarks/whitening.py [--tmp DIR]
    python benchmarks/whitening.py --val-model RUN8/best.pt --val-sets disc-copies:8 \\
                                   --test-model RUN7/best.pt --test-sets disc-copies:7

Every PCA whitening of the grid (dimensions x shrinkage, :class:`lookalike.steps.PCAWhitening`
fitted on each set's gallery) is measured on the validation sets: copy sets built exactly as in
`benchmarks/copies.py` but with other seeds (crop-copies 1, 2, 3 and disc-copies 8, 9 by default).
The pick is the setting with the highest mean mAP over them (within 0.001 of it: the larger
shrinkage, then the larger dimension), fixed before the test sets (crop-copies seed 0, disc-copies
seed 7: the sets of every other table) are searched with it and with the `copies` preset's
setting (128-d, shrinkage 10). A model trained on one gallery (``lookalike train selfsup``) is
validated on the set it was trained on and tested with the model trained on the test gallery:
``--val-model`` / ``--test-model``. Figures: top-1 / mAP / µAP (top-10 lists pooled). Writes
benchmarks/out/whitening[-NAME].json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import lookalike
from lookalike import ExtractOptions, ImageSet, embed
from lookalike.config import PRESETS
from lookalike.metrics import evaluate_rankings
from lookalike.steps import DEFAULT_SHRINKAGE, PCAWhitening

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from copies import build  # noqa: E402  (the copy sets exactly as the copies benchmark builds them)

DIMS: tuple[int | None, ...] = (32, 48, 64, 96, 128, 192, 256, None)
SHRINKAGES = (0.0, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
_steps = PRESETS["copies"]["refinement"]
# the copies preset's dimension with PCA's shrinkage: its whitening until 2026-12-07 (since then it is
# learned from edited views, `benchmarks/learned_whitening.py`), the baseline of the scripts here
PRESET = (_steps.get("whiten_dim"), DEFAULT_SHRINKAGE)


def parse_set(text: str) -> tuple[str, int]:
    name, _, seed = text.partition(":")
    if name not in ("crop-copies", "disc-copies") or not seed.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r}: give crop-copies:SEED or disc-copies:SEED")
    return name, int(seed)


def features(model: str, name: str, seed: int, tmp: Path, opts: ExtractOptions) -> dict[str, Any]:
    """Raw query and gallery features of one set, with its labels."""
    query, gallery = build(name, tmp, seed)
    options = PRESETS["copies"]["model_options"] if model == "efficientnet-lite0" else {}
    extractor = lookalike.create_extractor(model, **options)
    q, g = ImageSet.from_path(query), ImageSet.from_path(gallery)
    return {"q": embed(extractor, q, opts).features, "g": embed(extractor, g, opts).features, "Q": q, "G": g}


def measure(data: dict[str, Any], dim: int | None, shrinkage: float) -> tuple[float, float, float]:
    """(top-1, mAP, µAP) with whitening (``dim``, ``shrinkage``) fitted on the set's gallery."""
    white = PCAWhitening(dim, shrinkage).fit(data["g"])
    return ranked_metrics(white.transform(data["q"]) @ white.transform(data["g"]).T, data["Q"], data["G"])


def ranked_metrics(sims: np.ndarray, Q: ImageSet, G: ImageSet) -> tuple[float, float, float]:
    """(top-1, mAP, µAP) of a (queries x gallery) similarity matrix."""
    order = np.argsort(-sims, axis=1, kind="stable")
    head = order[:, :10]
    m = evaluate_rankings(
        [(0, order)], Q.labels, G.labels, Q.names, head=head, head_scores=np.take_along_axis(sims, head, 1)
    )
    return m.top_k[1], m.mean_ap, float(m.micro_ap)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--val-model", default="efficientnet-lite0", help="Default: the preset's features.")
    parser.add_argument("--test-model", default=None, help="Default: --val-model.")
    parser.add_argument(
        "--val-sets",
        nargs="+",
        type=parse_set,
        default=[
            parse_set(s)
            for s in ("crop-copies:1", "crop-copies:2", "crop-copies:3", "disc-copies:8", "disc-copies:9")
        ],
    )
    parser.add_argument(
        "--test-sets",
        nargs="+",
        type=parse_set,
        default=[parse_set(s) for s in ("crop-copies:0", "disc-copies:7")],
    )
    parser.add_argument("--name", default="", help="Suffix of the results file.")
    parser.add_argument("--tmp", type=Path, default=None, help="Keep the sets and the feature cache here.")
    args = parser.parse_args()
    shared = set(args.val_sets) & set(args.test_sets)
    if shared:
        parser.error(
            f"{', '.join(f'{n}:{s}' for n, s in sorted(shared))} is both a validation and a test set"
        )
    test_model = args.test_model or args.val_model
    grid = [(d, s) for d in DIMS for s in SHRINKAGES]
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.tmp or Path(scratch)
        opts = ExtractOptions(progress=False, cache_dir=tmp / "cache")
        val: dict[str, dict[str, tuple]] = {}
        for name, seed in args.val_sets:
            data = features(args.val_model, name, seed, tmp, opts)
            for dim, shrinkage in grid:
                val.setdefault(f"{dim}/{shrinkage:g}", {})[f"{name}:{seed}"] = measure(data, dim, shrinkage)
            print(f"validated on {name}:{seed}", flush=True)
        score = {key: float(np.mean([c[1] for c in cells.values()])) for key, cells in val.items()}
        best = max(score.values())
        near = [(s, d if d is not None else 10**9, d) for d, s in grid if score[f"{d}/{s:g}"] >= best - 0.001]
        shrinkage, _, dim = max(near)
        pick = (dim, shrinkage)
        test: dict[str, dict[str, tuple]] = {}
        for name, seed in args.test_sets:
            data = features(test_model, name, seed, tmp, opts)
            for label, (dim, shrinkage) in (("pick", pick), ("copies preset", PRESET)):
                test.setdefault(label, {})[f"{name}:{seed}"] = measure(data, dim, shrinkage)
    out = HERE / "out"
    out.mkdir(exist_ok=True)
    doc = {
        "val_model": args.val_model,
        "test_model": test_model,
        "validation": val,
        "score": score,
        "pick": {"dim": pick[0], "shrinkage": pick[1]},
        "test": test,
    }
    (out / f"whitening{'-' + args.name if args.name else ''}.json").write_text(json.dumps(doc, indent=2))
    sets = [f"{n}:{s}" for n, s in args.val_sets]
    print("\n| dim / shrinkage | " + " | ".join(sets) + " | mean mAP |")
    print("| --- |" + " --- |" * (len(sets) + 1))
    for key, cells in val.items():
        row = " | ".join("{:.3f} / {:.3f} / {:.3f}".format(*cells[s]) for s in sets)
        print(f"| {key} | {row} | {score[key]:.3f} |")
    print(
        f"\npick: dim {pick[0]}, shrinkage {pick[1]:g} (validation mean mAP {score[f'{pick[0]}/{pick[1]:g}']:.3f})"
    )
    tests = [f"{n}:{s}" for n, s in args.test_sets]
    print("\n| whitening | " + " | ".join(tests) + " |")
    print("| --- |" + " --- |" * len(tests))
    for label, (dim, shrinkage) in (("pick", pick), ("copies preset", PRESET)):
        row = " | ".join("{:.3f} / {:.3f} / {:.3f}".format(*test[label][s]) for s in tests)
        print(f"| {label}: {dim or 'all'}-d, shrinkage {shrinkage:g} | {row} |")


if __name__ == "__main__":
    main()
