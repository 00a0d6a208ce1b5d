"""Learned methods against the pretrained default and raw pixels on the `orl` and `fmnist` protocols.

    python benchmarks/datasets.py                      # once: lays out benchmarks/data/{orl,fmnist}
    nice -n 10 python benchmarks/training.py [--sets orl fmnist] [--methods pixels efficientnet-lite0 siamese ...]
    python benchmarks/training.py --report             # only rebuild the table from saved results

Each learned method trains on `<set>/train` (validation: a stratified 20% of it) with the settings in
CONFIGS, writes its run to benchmarks/out/training/runs/<set>-<method>/ and is then evaluated on
`<set>/query` against `<set>/gallery` through `lookalike.evaluate(..., model=RUN/best.pt)`. Results
go to benchmarks/out/training/<set>-<method>.json; the Markdown table to benchmarks/RESULTS-training.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
from pathlib import Path
from typing import Any

import torch
from hostinfo import cpu_name

import lookalike
from lookalike.training import train

HERE = Path(__file__).parent
BASELINES = ("pixels", "efficientnet-lite0")
NOTES = "### Notes"  # RESULTS-training.md keeps this section and what follows when it is regenerated
LEARNED = ("siamese", "autoencoder", "vae", "cnn", "finetune")

# Training settings per protocol and method: the keyword arguments of lookalike.training.train.
# From-scratch methods run on small inputs (fmnist's native 28 px; 64x56 faces for orl); finetune
# runs at a reduced input size, and on fmnist on a seeded subset of the training images.
CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "fmnist": {
        "siamese": {
            "image_size": 28,
            "epochs": 16,
            "batch_size": 128,
            "pairs_per_epoch": 48000,
            "margin": 1.0,
            "crop": 0.0,
            "jitter": 0.0,
        },
        "autoencoder": {"image_size": 28, "channels": [32, 64], "epochs": 15, "batch_size": 128},
        "vae": {"image_size": 28, "beta": 4.0, "epochs": 15, "batch_size": 128},
        "cnn": {"image_size": 28, "epochs": 20, "batch_size": 128},
        "finetune": {"image_size": 64, "epochs": 6, "batch_size": 64, "max_per_class": 600, "patience": 2},
    },
    "orl": {
        # a frozen ImageNet trunk with a zero-initialised residual head: training starts from the
        # pretrained metric and learns a correction from the 20 training people (triplets, gentle lr)
        "siamese": {
            "trunk": "efficientnet-lite0",
            "freeze_trunk": True,
            "head": "residual",
            "loss": "triplet",
            "margin": 0.1,
            "lr": 1e-4,
            "image_size": [160, 128],
            "epochs": 20,
            "batch_size": 32,
            "pairs_per_epoch": 480,
            "min_delta": 1e-5,
            "crop": 0.0,
            "jitter": 0.0,
        },
        "autoencoder": {"image_size": [64, 56], "epochs": 40, "batch_size": 16},
        "vae": {"image_size": [64, 56], "epochs": 40, "batch_size": 16},
        "cnn": {"image_size": [64, 56], "epochs": 40, "batch_size": 16},
        "finetune": {"image_size": [112, 96], "epochs": 15, "batch_size": 16},
    },
}


# What else was tried for the methods that fell short of the pixels baseline on fmnist: each a short
# run (5 epochs on a seeded 800-per-class subset) so the variants can be compared with one another.
_SHORT = {"image_size": 28, "epochs": 5, "batch_size": 128, "max_per_class": 800}
VARIANTS: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {
    "fmnist": {
        "autoencoder-flat": ("autoencoder", {**_SHORT}),
        "autoencoder-avg": ("autoencoder", {**_SHORT, "features": "avg"}),
        "autoencoder-lat64": ("autoencoder", {**_SHORT, "latent_dim": 64}),
        "autoencoder-s32": ("autoencoder", {**_SHORT, "image_size": 32}),
        "autoencoder-c2": ("autoencoder", {**_SHORT, "channels": [32, 64]}),
        "autoencoder-n1": ("autoencoder", {**_SHORT, "noise_std": 1.0}),
        "autoencoder-c2aug": ("autoencoder", {**_SHORT, "channels": [32, 64], "flip": True, "crop": 0.8}),
        "autoencoder-mask25": ("autoencoder", {**_SHORT, "channels": [32, 64], "mask": 0.25}),
        "autoencoder-mask50": ("autoencoder", {**_SHORT, "channels": [32, 64], "mask": 0.5}),
        "autoencoder-plain": ("autoencoder", {**_SHORT, "channels": [32, 64], "noise_std": 0.0}),
        "autoencoder-wide": ("autoencoder", {**_SHORT, "channels": [64, 128]}),
        "autoencoder-1block": ("autoencoder", {**_SHORT, "channels": [32]}),
        "autoencoder-lat256": ("autoencoder", {**_SHORT, "channels": [32, 64], "latent_dim": 256}),
        "vae-b1": ("vae", {**_SHORT, "beta": 1.0}),
        "vae-b01": ("vae", {**_SHORT, "beta": 0.1}),
        "vae-b001": ("vae", {**_SHORT, "beta": 0.01, "latent_dim": 128}),
        "vae-b4": ("vae", {**_SHORT, "beta": 4.0}),
        "vae-b8": ("vae", {**_SHORT, "beta": 8.0}),
        "vae-b16": ("vae", {**_SHORT, "beta": 16.0}),
        "vae-l16": ("vae", {**_SHORT, "latent_dim": 16}),
        "vae-s32": ("vae", {**_SHORT, "image_size": 32}),
        "vae-c2": ("vae", {**_SHORT, "channels": [32, 64]}),
    },
}


def evaluate(root: Path, model: str) -> dict[str, float]:
    """Top-1/3/10 and mAP of ``model`` (a name or a checkpoint path) on query vs gallery."""
    opts = lookalike.ExtractOptions(use_cache=False, progress=False)
    run = lookalike.evaluate(root / "query", root / "gallery", model=model, options=opts)
    m = run.metrics
    return {"top1": m.top_k[1], "top3": m.top_k[3], "top10": m.top_k[10], "mAP": m.mean_ap}


def run_one(
    data: Path, out: Path, protocol: str, name: str, method: str, config: dict[str, Any] | None
) -> dict[str, Any]:
    """Train (unless a baseline) and evaluate one run on one protocol; the result as a dict."""
    root = data / protocol
    row: dict[str, Any] = {"protocol": protocol, "method": method, "name": name}
    if method in BASELINES:
        row.update(evaluate(root, method), kind="pretrained" if method != "pixels" else "baseline")
        return row
    assert config is not None
    run_dir = out / "runs" / f"{protocol}-{name}"
    # resume=True: an interrupted benchmark continues where it stopped (with the same result as an
    # uninterrupted run); a finished run is only evaluated again. Training time is the sum of the
    # epochs' times, so it counts every epoch however many sittings the run took.
    result = train(method, root / "train", run_dir, resume=True, progress=False, seed=0, **config)
    row.update(evaluate(root, str(result.best)), kind="learned" if name == method else "variant")
    row.update(
        config=config,
        train_seconds=round(sum(h["seconds"] for h in result.history), 1),
        epochs_run=result.epochs_run,
        best_epoch=result.best_epoch,
        stopped_early=result.stopped_early,
        best_val_loss=result.best_val_loss,
        history=result.history,
        run_dir=str(run_dir),
    )
    curves = out / "curves"
    curves.mkdir(parents=True, exist_ok=True)
    shutil.copy(result.files["loss_curve"], curves / f"{protocol}-{name}-loss.png")
    if "reconstructions" in result.files:
        shutil.copy(result.files["reconstructions"], curves / f"{protocol}-{name}-reconstructions.png")
    return row


def machine() -> str:
    """A one-line description of where the figures were measured."""
    cpu = cpu_name()
    return (
        f"{cpu}, {os.cpu_count()} cores (shared with other jobs), torch {torch.__version__} with "
        f"{torch.get_num_threads()} intra-op thread(s), Python {platform.python_version()}"
    )


def _fmt_row(r: dict[str, Any], label: str) -> str:
    learned = r["kind"] in ("learned", "variant")
    time_s = f"{r['train_seconds'] / 60:.1f} min" if learned else "-"
    epochs = f"{r['epochs_run']} ({r['best_epoch']})" if learned else "-"
    stop = ("yes" if r["stopped_early"] else "no (epoch cap)") if learned else "-"
    return (
        f"| {r['protocol']} | {label} | {r['top1']:.3f} | {r['top3']:.3f} | {r['top10']:.3f} | "
        f"{r['mAP']:.3f} | {time_s} | {epochs} | {stop} |"
    )


def report(out: Path, command: str) -> str:
    """The Markdown results: main table, variants tried, per-epoch losses and settings."""
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    order = {m: i for i, m in enumerate((*BASELINES, *LEARNED))}
    rows.sort(key=lambda r: (r["protocol"], order.get(r["method"], 99), r.get("name", "")))
    main_rows = [r for r in rows if r["kind"] != "variant"]
    variants = [r for r in rows if r["kind"] == "variant"]
    header = [
        "| protocol | method | top-1 | top-3 | top-10 | mAP | training time | epochs run (best) | early stop |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines = [
        "## Learned methods (`benchmarks/training.py`)",
        "",
        f"Command: `{command}` (after `python benchmarks/datasets.py`). Runs resume from",
        "`benchmarks/out/training/runs/`, so a repeated command only re-evaluates finished runs.",
        "",
        f"Machine: {rows[0].get('machine', '') if rows else ''}",
        "",
        "Training time is the sum of the epochs' wall-clock times (training + validation pass).",
        "",
        *header,
        *(_fmt_row(r, r["method"] + ("" if r["kind"] == "learned" else " (no training)")) for r in main_rows),
    ]
    if variants:
        lines += ["", "### Variants tried (fmnist, 5 epochs on a seeded 800-per-class subset)", "", *header]
        lines += [_fmt_row(r, f"{r['name']}: `{_options(r)}`") for r in variants]
    lines += ["", "### Goals", "", *_goals(main_rows)]
    lines += ["", "### Loss per epoch (training / validation)", ""]
    for r in main_rows:
        if r["kind"] == "learned":
            losses = ", ".join(f"{h['train_loss']:.4g}/{h['val_loss']:.4g}" for h in r["history"])
            lines.append(f"- {r['protocol']} / {r['method']}: {losses}")
    lines += ["", "### Settings (keyword arguments of `lookalike.training.train` beyond the defaults)", ""]
    for r in main_rows:
        if r["kind"] == "learned":
            lines.append(f"- {r['protocol']} / {r['method']}: `{json.dumps(r['config'])}`")
    return "\n".join(lines) + "\n"


def _goals(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's goals, checked against the measured rows."""
    by = {(r["protocol"], r["method"]): r for r in rows}
    out = []
    fm = [r for r in rows if r["protocol"] == "fmnist" and r["kind"] == "learned"]
    if fm:
        best = max(fm, key=lambda r: r["mAP"])
        ok = "met" if best["mAP"] >= 0.85 else "NOT met"
        out.append(f"- fmnist, best learned mAP >= 0.85: {ok} ({best['method']}, {best['mAP']:.3f})")
        if ("fmnist", "pixels") in by:
            base = by[("fmnist", "pixels")]["mAP"]
            below = [f"{r['method']} {r['mAP']:.3f}" for r in fm if r["mAP"] <= base]
            verdict = "met" if not below else f"NOT met by {', '.join(below)}"
            out.append(f"- fmnist, every learned method beats pixels (mAP {base:.3f}): {verdict}")
    orl = [r for r in rows if r["protocol"] == "orl" and r["kind"] == "learned"]
    if orl and ("orl", "efficientnet-lite0") in by:
        best = max(orl, key=lambda r: r["mAP"])
        base = by[("orl", "efficientnet-lite0")]["mAP"]
        ok = "met" if best["mAP"] > base else "NOT met"
        out.append(
            f"- orl, best learned beats the pretrained extractor (mAP {base:.3f}): {ok} "
            f"({best['method']}, {best['mAP']:.3f})"
        )
    return out


def _options(r: dict[str, Any]) -> str:
    """A variant's own options: its config without the settings every variant shares."""
    opts = {k: v for k, v in r["config"].items() if k not in ("epochs", "batch_size", "max_per_class")}
    if opts.get("image_size") == 28:
        del opts["image_size"]
    return json.dumps(opts)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=HERE / "data")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "training")
    parser.add_argument("--sets", nargs="+", default=["orl", "fmnist"])
    parser.add_argument("--methods", nargs="+", default=[*BASELINES, *LEARNED])
    parser.add_argument("--variants", action="store_true", help="also run the VARIANTS of each set")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1 is fastest on a busy 2-core box)"
    )
    parser.add_argument("--report", action="store_true", help="only rebuild the table from saved results")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS-training.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for protocol in args.sets if not args.report else []:
        jobs += [(protocol, m, m, CONFIGS[protocol].get(m)) for m in args.methods]
        if args.variants:
            jobs += [
                (protocol, name, method, cfg) for name, (method, cfg) in VARIANTS.get(protocol, {}).items()
            ]
    for protocol, name, method, config in jobs:
        row = run_one(args.data, args.out, protocol, name, method, config)
        row["machine"] = machine()
        (args.out / f"{protocol}-{name}.json").write_text(json.dumps(row, indent=2))
        print(
            f"{protocol} {name}: mAP {row['mAP']:.3f} top-1 {row['top1']:.3f}"
            + (f" ({row['train_seconds'] / 60:.1f} min)" if "train_seconds" in row else ""),
            flush=True,
        )
    text = report(args.out, "nice -n 10 python benchmarks/training.py --variants")
    if args.results.is_file():  # keep the hand-written notes below the generated part
        previous = args.results.read_text()
        if NOTES in previous:
            text += "\n" + previous[previous.index(NOTES) :]
    args.results.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
