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
import sys
from pathlib import Path
from typing import Any

import torch

import lookalike
from lookalike.training import train

HERE = Path(__file__).parent
BASELINES = ("pixels", "efficientnet-lite0")
LEARNED = ("siamese", "autoencoder", "vae", "cnn", "finetune")

# Training settings per protocol and method: the keyword arguments of lookalike.training.train.
# From-scratch methods run on small inputs (fmnist's native 28 px; 64x56 faces for orl); finetune
# runs at a reduced input size, and on fmnist on a seeded subset of the training images.
CONFIGS: dict[str, dict[str, dict[str, Any]]] = {
    "fmnist": {
        "siamese": {
            "image_size": 28,
            "epochs": 15,
            "batch_size": 128,
            "pairs_per_epoch": 48000,
            "crop": 0.0,
            "jitter": 0.0,
        },
        "autoencoder": {"image_size": 28, "epochs": 15, "batch_size": 128},
        "vae": {"image_size": 28, "epochs": 15, "batch_size": 128},
        "cnn": {"image_size": 28, "epochs": 15, "batch_size": 128},
        "finetune": {"image_size": 64, "epochs": 6, "batch_size": 64, "max_per_class": 600, "patience": 2},
    },
    "orl": {
        "siamese": {"trunk": "efficientnet-lite0", "image_size": [112, 96], "epochs": 20, "batch_size": 32},
        "autoencoder": {"image_size": [64, 56], "epochs": 40, "batch_size": 16},
        "vae": {"image_size": [64, 56], "epochs": 40, "batch_size": 16},
        "cnn": {"image_size": [64, 56], "epochs": 40, "batch_size": 16},
        "finetune": {"image_size": [112, 96], "epochs": 20, "batch_size": 16},
    },
}


def evaluate(root: Path, model: str) -> dict[str, float]:
    """Top-1/3/10 and mAP of ``model`` (a name or a checkpoint path) on query vs gallery."""
    opts = lookalike.ExtractOptions(use_cache=False, progress=False)
    run = lookalike.evaluate(root / "query", root / "gallery", model=model, options=opts)
    m = run.metrics
    return {"top1": m.top_k[1], "top3": m.top_k[3], "top10": m.top_k[10], "mAP": m.mean_ap}


def run_one(data: Path, out: Path, protocol: str, method: str) -> dict[str, Any]:
    """Train (unless a baseline) and evaluate one method on one protocol; the result as a dict."""
    root = data / protocol
    row: dict[str, Any] = {"protocol": protocol, "method": method}
    if method in BASELINES:
        row.update(evaluate(root, method), kind="pretrained" if method != "pixels" else "baseline")
        return row
    config = CONFIGS[protocol][method]
    run_dir = out / "runs" / f"{protocol}-{method}"
    # resume=True: an interrupted benchmark continues where it stopped (with the same result as an
    # uninterrupted run); a finished run is only evaluated again. Training time is the sum of the
    # epochs' times, so it counts every epoch however many sittings the run took.
    result = train(method, root / "train", run_dir, resume=True, progress=False, seed=0, **config)
    row.update(evaluate(root, str(result.best)), kind="learned")
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
    shutil.copy(result.files["loss_curve"], curves / f"{protocol}-{method}-loss.png")
    if "reconstructions" in result.files:
        shutil.copy(result.files["reconstructions"], curves / f"{protocol}-{method}-reconstructions.png")
    return row


def machine() -> str:
    """A one-line description of where the figures were measured."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores (shared with other jobs), torch {torch.__version__} with "
        f"{torch.get_num_threads()} intra-op thread(s), Python {platform.python_version()}"
    )


def report(out: Path, command: str) -> str:
    """The Markdown results table from every saved result under ``out``."""
    rows = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    order = {m: i for i, m in enumerate((*BASELINES, *LEARNED))}
    rows.sort(key=lambda r: (r["protocol"], order.get(r["method"], 99)))
    lines = [
        "## Learned methods (`benchmarks/training.py`)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {rows[0].get('machine', '') if rows else ''}",
        "",
        "| protocol | method | top-1 | top-3 | top-10 | mAP | training time | epochs run (best) | early stop |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        learned = r["kind"] == "learned"
        time_s = f"{r['train_seconds'] / 60:.1f} min" if learned else "-"
        epochs = f"{r['epochs_run']} ({r['best_epoch']})" if learned else "-"
        stop = ("yes" if r["stopped_early"] else "no (epoch cap)") if learned else "-"
        name = r["method"] + (" (no training)" if not learned else "")
        lines.append(
            f"| {r['protocol']} | {name} | {r['top1']:.3f} | {r['top3']:.3f} | {r['top10']:.3f} | "
            f"{r['mAP']:.3f} | {time_s} | {epochs} | {stop} |"
        )
    lines += ["", "Settings (keyword arguments of `lookalike.training.train`, beyond the defaults):", ""]
    for r in rows:
        if r["kind"] == "learned":
            lines.append(f"- {r['protocol']} / {r['method']}: `{json.dumps(r['config'])}`")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=HERE / "data")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "training")
    parser.add_argument("--sets", nargs="+", default=["orl", "fmnist"])
    parser.add_argument("--methods", nargs="+", default=[*BASELINES, *LEARNED])
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (1 is fastest on a busy 2-core box)"
    )
    parser.add_argument("--report", action="store_true", help="only rebuild the table from saved results")
    parser.add_argument("--results", type=Path, default=HERE / "RESULTS-training.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        for protocol in args.sets:
            for method in args.methods:
                row = run_one(args.data, args.out, protocol, method)
                row["machine"] = machine()
                (args.out / f"{protocol}-{method}.json").write_text(json.dumps(row, indent=2))
                print(
                    f"{protocol} {method}: mAP {row['mAP']:.3f} top-1 {row['top1']:.3f}"
                    + (f" ({row['train_seconds'] / 60:.1f} min)" if "train_seconds" in row else ""),
                    flush=True,
                )
    command = "nice -n 10 python benchmarks/training.py " + " ".join(sys.argv[1:])
    text = report(args.out, command.strip())
    args.results.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
