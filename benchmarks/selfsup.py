"""Self-supervised training (`lookalike train selfsup`) on each set's own images, without labels.

    python benchmarks/selfsup.py [--sets crop-copies disc-copies orl fmnist] [--name NAME]
                                 [--epochs N] [-O KEY=VALUE ...] [--tmp DIR] [--set-seed N]

`crop-copies` and `disc-copies` (built as in `benchmarks/copies.py`): training on the gallery's
images only (distractors included; no labels, no query image). `orl`: the training people s1..s20
(labels ignored); `fmnist`: the 60,000 training images (labels ignored), `images_per_epoch` of them
drawn per epoch at 96 px, 2% of them held out. Each trained checkpoint is then searched (query vs gallery) beside, in the same run,
the untrained trunk (efficientnet-lite0 as the default extracts it, and with GeM pooling as selfsup's
features are pooled), SSCD and raw pixels: top-1, mAP and µAP, each checkpoint searched both with
its pooled trunk and with its projection (the same weights). Training time per epoch and images/s
(both views counted once per image) come from the run's history. Runs resume from
benchmarks/out/selfsup/runs/ (a finished run is only evaluated again); results go to
benchmarks/out/selfsup/<name>.json and a Markdown table on stdout. ``--set-seed N`` trains on
another draw of a copy set (the run in ``runs/<set>-seedN-<name>``, results in
``<name>-seedN.json``): the validation model of `benchmarks/whitening.py`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

import lookalike
from lookalike import ExtractOptions
from lookalike.training import train
from lookalike.training.checkpoint import feature_dim, read_checkpoint, rebuild

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from copies import build  # noqa: E402  (the copy sets exactly as the copies benchmark builds them)

BASELINES: dict[str, tuple[str, dict[str, Any]]] = {
    "untrained trunk (efficientnet-lite0, default)": ("efficientnet-lite0", {}),
    "untrained trunk, GeM (as selfsup pools)": ("efficientnet-lite0", {"pool": "gem"}),
    "sscd 224": ("sscd", {"size": 224}),
    "pixels": ("pixels", {}),
}
# Per set: training options that differ from selfsup's defaults (sizes the 2-core box can train).
SET_OPTIONS: dict[str, dict[str, Any]] = {
    "crop-copies": {},
    "disc-copies": {},
    "orl": {},
    "fmnist": {"image_size": 96, "images_per_epoch": 3000, "val_fraction": 0.02},
}


def folders(name: str, data: Path, tmp: Path, seed: int | None = None) -> tuple[Path, Path, Path]:
    """(train, query, gallery) of a set: the copy sets train on their own gallery (``seed``: another
    draw of a copy set, for validation)."""
    if name in ("crop-copies", "disc-copies"):
        query, gallery = build(name, tmp, seed)
        return gallery, query, gallery
    root = data / name
    if not (root / "train").is_dir():
        raise SystemExit(f"{root}: missing; run `python benchmarks/datasets.py {name}` first")
    return root / "train", root / "query", root / "gallery"


def scores(query: Path, gallery: Path, model: str, options: dict[str, Any], cache: Path) -> dict[str, float]:
    """Top-1, mAP and µAP of one model (a name or a checkpoint path) on query vs gallery."""
    run = lookalike.evaluate(
        query,
        gallery,
        model=model,
        model_options=options,
        options=ExtractOptions(progress=False, cache_dir=cache),
    )
    m = run.metrics
    return {"top1": m.top_k[1], "mAP": m.mean_ap, "uAP": m.micro_ap}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sets", nargs="+", default=["crop-copies", "disc-copies", "orl", "fmnist"])
    parser.add_argument("--name", default="default", help="Names the runs and the results file.")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("-O", "--option", action="append", default=[], help="selfsup option KEY=VALUE.")
    parser.add_argument("--baselines", nargs="*", default=list(BASELINES))
    parser.add_argument("--data", type=Path, default=HERE / "data")
    parser.add_argument("--tmp", type=Path, default=None, help="Keep the built sets and the cache here.")
    parser.add_argument(
        "--set-seed", type=int, default=None, help="Build the copy sets with this seed (a validation draw)."
    )
    args = parser.parse_args()
    if args.set_seed is not None and not set(args.sets) <= {"crop-copies", "disc-copies"}:
        parser.error("--set-seed draws the copy sets again: give only crop-copies / disc-copies")
    seeded = "" if args.set_seed is None else f"-seed{args.set_seed}"
    given = dict(item.split("=", 1) for item in args.option)
    out = HERE / "out" / "selfsup"
    results: dict[str, Any] = {"name": args.name, "options": given, "sets": {}}
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.tmp or Path(scratch)
        for set_name in args.sets:
            train_dir, query, gallery = folders(set_name, args.data, tmp, args.set_seed)
            options = {**SET_OPTIONS[set_name], **given}
            rows: dict[str, Any] = {}
            for label in args.baselines:
                model, model_options = BASELINES[label]
                rows[label] = scores(query, gallery, model, model_options, tmp / "cache")
                print(f"{set_name:12s} {label:48s} {_cells(rows[label])}", flush=True)
            run = train(
                "selfsup",
                train_dir,
                out / "runs" / f"{set_name}{seeded}-{args.name}",
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                resume=True,
                progress=False,
                seed=0,
                **options,
            )
            per_epoch = sum(h["seconds"] for h in run.history) / max(len(run.history), 1)
            images = int(options.get("images_per_epoch") or 0) or _train_images(run.run_dir)
            label = f"selfsup {args.name}"
            other = "trunk" if run_features(run.best) == "projection" else "projection"
            rows[f"{label}, features={other}"] = scores(
                query, gallery, str(with_features(run.best, other)), {}, tmp / "cache"
            )
            print(
                f"{set_name:12s} {label + ', features=' + other:48s} {_cells(rows[label + ', features=' + other])}"
            )
            rows[f"{label}, features={run_features(run.best)}"] = {
                **scores(query, gallery, str(run.best), {}, tmp / "cache"),
                "epochs_run": run.epochs_run,
                "best_epoch": run.best_epoch,
                "seconds_per_epoch": round(per_epoch, 1),
                "images_per_second": round(images / per_epoch, 2) if per_epoch else None,  # val included
                "history": run.history,
            }
            row = rows[f"{label}, features={run_features(run.best)}"]
            print(
                f"{set_name:12s} {label:48s} {_cells(row)}  ({run.epochs_run} epochs, best "
                f"{run.best_epoch}, {per_epoch:.0f} s/epoch, {row['images_per_second']} images/s)",
                flush=True,
            )
            results["sets"][set_name] = {"options": options, "rows": rows}
            out.mkdir(parents=True, exist_ok=True)
            (out / f"{args.name}{seeded}.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    print("\n| set | model | top-1 | mAP | µAP |\n| --- | --- | --- | --- | --- |")
    for set_name, entry in results["sets"].items():
        for label, row in entry["rows"].items():
            print(f"| {set_name} | {label} | {row['top1']:.3f} | {row['mAP']:.3f} | {row['uAP']:.3f} |")


def run_features(checkpoint: Path) -> str:
    """Which features a selfsup checkpoint searches with (trunk or projection)."""
    return read_checkpoint(checkpoint)["model_options"]["features"]


def with_features(checkpoint: Path, features: str) -> Path:
    """A copy of a selfsup checkpoint that searches with ``features`` instead (the same weights):
    both feature choices measured from one training run."""
    data = read_checkpoint(checkpoint)
    data["model_options"]["features"] = features
    model, preprocess = rebuild(data)
    data["feature_dim"] = feature_dim(model, preprocess)
    target = checkpoint.with_name(f"{checkpoint.stem}-{features}.pt")
    torch.save(data, target)
    return target


def _cells(row: dict[str, float]) -> str:
    return f"top-1 {row['top1']:.3f}  mAP {row['mAP']:.3f}  µAP {row['uAP']:.3f}"


def _train_images(run_dir: Path) -> int:
    config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    return int(config["data"]["train_images"])


if __name__ == "__main__":
    main()
