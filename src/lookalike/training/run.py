"""``train()``: one training run from a class folder to ``RUN_DIR/best.pt`` and its report files.

Beside the checkpoints a run writes ``config.json`` (everything needed to explain or repeat it),
``history.csv`` and ``loss.png``, and for the autoencoders ``reconstructions.png`` plus the encoder
and decoder weights as separate files.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import InputError
from ..extract import Skipped, resolve_device
from ..fileio import atomic_write
from ..local.parallel import cpu_count
from ..plots import figure, png_bytes
from .checkpoint import checkpoint_meta, feature_dim, read_checkpoint, save_checkpoint
from .data import TrainingData, load_training_data
from .methods import build_model, method_spec
from .models import ConvAutoencoder, ConvVAE, TrainableModel
from .trainer import TrainConfig, Trainer, TrainState

log = logging.getLogger("lookalike")

BEST, LAST = "best.pt", "last.pt"
CLASSIFIERS = ("cnn", "finetune")


@dataclass
class TrainResult:
    """What a run produced: its files, per-epoch history and how it ended."""

    run_dir: Path
    best: Path
    last: Path
    files: dict[str, Path]
    history: list[dict[str, float]]
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    stopped_early: bool
    seconds: float
    skipped: list[Skipped] = field(default_factory=list)


def train(
    method: str,
    train_dir: str | Path,
    out_dir: str | Path,
    *,
    val_dir: str | Path | None = None,
    val_fraction: float = 0.2,
    val_split: str = "images",
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    patience: int = 5,
    min_delta: float = 1e-4,
    lr_patience: int = 2,
    lr_factor: float = 0.5,
    weight_decay: float = 0.0,
    restore_best: bool = True,
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = None,
    **method_options: Any,
) -> TrainResult:
    """Train ``method`` (siamese, autoencoder, vae, cnn, finetune on class folders; selfsup on any
    folder of images, class folders ignored) on ``train_dir`` and write the run to ``out_dir``;
    ``RUN_DIR/best.pt`` then works as a model name.

    ``method_options`` are the method's model options (see ``METHODS[method].options``), its
    augmentation options (``flip``, ``crop``, ``jitter``, ``noise``; selfsup's ``CopyAugment`` has
    more), and ``max_per_class`` (train on a seeded subset of each class). ``None`` values mean the
    default. ``resume`` continues from ``last.pt``. ``workers``: DataLoader processes making
    selfsup's views (default: half the cores, 1 to 4).
    """
    spec = method_spec(method)
    if val_split == "classes" and method in CLASSIFIERS:
        raise InputError(
            f"{method} classifies into the training classes, so it cannot validate on held-out classes; "
            "use val_split='images'"
        )
    if val_split == "classes" and not spec.uses_labels:
        raise InputError(
            f"{method} ignores class folders, so it validates on held-out images; use val_split='images'"
        )
    options, augment, max_per_class = spec.resolve({k: v for k, v in method_options.items() if v is not None})
    config = TrainConfig(
        epochs=epochs or spec.epochs,
        batch_size=batch_size or spec.batch_size,
        lr=lr or spec.default_lr(options),
        weight_decay=weight_decay,
        patience=patience,
        min_delta=min_delta,
        restore_best=restore_best,
        lr_factor=lr_factor,
        lr_patience=lr_patience,
        seed=seed,
        pairs_per_epoch=options.get("pairs_per_epoch"),
        images_per_epoch=options.get("images_per_epoch"),
    )
    run_dir = Path(out_dir)
    saved = _previous_run(run_dir, resume=resume, overwrite=overwrite)
    torch_device = resolve_device(device)
    started = time.perf_counter()

    data = load_training_data(
        train_dir,
        val_dir=val_dir,
        val_fraction=val_fraction,
        size=options["image_size"],
        needs_labels=spec.needs_labels,
        seed=seed,
        max_per_class=max_per_class,
        min_val_per_class=2 if method == "siamese" or not spec.uses_labels else 1,
        val_split=val_split,
        use_labels=spec.uses_labels,
    )
    _check_val_classes(method, data, val_dir)
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # the same initial weights for the same seed
        model, preprocess = build_model(method, options, len(data.class_names), pretrained=True)
    meta = checkpoint_meta(method, options, data.class_names, preprocess, feature_dim(model, preprocess))
    settings = {
        "train_dir": str(Path(train_dir).resolve()),
        "val_dir": str(Path(val_dir).resolve()) if val_dir is not None else None,
        "val_fraction": None if val_dir is not None else val_fraction,
        "val_split": None if val_dir is not None else val_split,
        "max_per_class": max_per_class,
    }
    run_config = _run_config(method, options, augment, config, data, settings)
    run_config["preprocess"] = meta["preprocess"]
    run_config = json.loads(json.dumps(run_config, default=str))  # plain values only (weights_only loading)
    trainer = Trainer(
        model,
        preprocess,
        data.train,
        data.val,
        config,
        augment=augment,
        device=torch_device,
        progress=progress,
        workers=min(4, max(1, cpu_count() // 2)) if workers is None else workers,
    )
    if saved is not None:
        _check_same_run(saved, run_config, run_dir)
        trainer.load_resume_state(saved)
        log.info("resuming %s from epoch %d", run_dir, trainer.state.epoch)
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_json(run_dir / "config.json", run_config)

    def on_epoch_end(state: TrainState, improved: bool) -> None:
        extra = {"epoch": state.epoch, "run_config": run_config}
        if improved:
            best_state = state.best_state or model.state_dict()
            save_checkpoint(
                run_dir / BEST, meta, state_dict=best_state, val_loss=trainer.stopper.best, **extra
            )
        save_checkpoint(run_dir / LAST, meta, **trainer.resume_state(), run_config=run_config)
        _write_history(run_dir / "history.csv", state.history)

    state = trainer.fit(on_epoch_end)
    files = _write_reports(run_dir, model, trainer, state)
    return TrainResult(
        run_dir=run_dir,
        best=run_dir / BEST,
        last=run_dir / LAST,
        files=files,
        history=state.history,
        best_epoch=trainer.stopper.best_epoch,
        best_val_loss=trainer.stopper.best,
        epochs_run=state.epoch,
        stopped_early=state.stopped_early,
        seconds=time.perf_counter() - started,
        skipped=data.skipped,
    )


def _previous_run(run_dir: Path, *, resume: bool, overwrite: bool) -> dict[str, Any] | None:
    """The saved state to resume from, None to start afresh, or an error for a clash."""
    last = run_dir / LAST
    if not last.is_file():
        if resume:
            log.warning("%s: no last.pt to resume from; starting a new run", run_dir)
        return None
    if resume:
        return read_checkpoint(last)
    if not overwrite:
        raise InputError(
            f"{run_dir} already holds a training run; resume it (resume=True / --resume) or start "
            "again over it (overwrite=True / --overwrite), or choose another folder"
        )
    for name in (BEST, LAST):
        (run_dir / name).unlink(missing_ok=True)
    return None


def _check_val_classes(method: str, data: TrainingData, val_dir: str | Path | None) -> None:
    """Classifiers can only validate on the classes they learn."""
    if method in CLASSIFIERS and val_dir is not None:
        unknown = sorted(
            {
                data.val.names[i].split("/")[0]
                for i in range(len(data.val))
                if data.val.labels[i] >= len(data.class_names)
            }
        )
        if unknown:
            raise InputError(
                f"validation folder {val_dir}: class(es) {', '.join(unknown[:5])} are not among the "
                f"training classes; {method} classifies into the training classes, so its validation "
                "images must come from them"
            )


def _run_config(
    method: str,
    options: dict[str, Any],
    augment: Any,
    config: TrainConfig,
    data: TrainingData,
    settings: dict[str, Any],
) -> dict[str, Any]:
    """The run's config.json: method, options, augmentation, training settings, data and versions."""
    return {
        "method": method,
        "model_options": {k: list(v) if isinstance(v, tuple) else v for k, v in options.items()},
        "augment": asdict(augment),
        "train": asdict(config),
        "data": {
            **settings,
            "train_images": len(data.train),
            "val_images": len(data.val),
            "classes": data.class_names,
            "val_files": data.val.names,
            "skipped": [asdict(s) for s in data.skipped],
        },
        "versions": {
            "lookalike": __version__,
            "torch": str(torch.__version__),
            "python": platform.python_version(),
        },
    }


def _check_same_run(saved: dict[str, Any], current: dict[str, Any], run_dir: Path) -> None:
    """A resumed run must train the same thing on the same data as the saved one (options added
    to lookalike after the run was saved count as their defaults)."""
    before = saved.get("run_config", {})
    if before.get("method") != current["method"]:
        raise InputError(
            f"{run_dir}: cannot resume: it trains {before.get('method')!r}, not {current['method']!r}"
        )
    defaults = json.loads(json.dumps(method_spec(current["method"]).options))
    saved_train = {**asdict(TrainConfig()), **before.get("train", {})}  # settings added since: defaults
    train_now = {k: v for k, v in current["train"].items() if k != "epochs"}
    for key, old, now in (
        ("model_options", {**defaults, **before.get("model_options", {})}, current["model_options"]),
        ("augment", before.get("augment", {}), current["augment"]),
        ("training settings", {k: v for k, v in saved_train.items() if k != "epochs"}, train_now),
    ):
        changed = sorted(k for k in set(old) | set(now) if old.get(k) != now.get(k))
        if changed:  # name each setting, so a default changed since the run can be given back (--lr 1e-4)
            detail = ", ".join(f"{k}: {old.get(k)!r} then, {now.get(k)!r} now" for k in changed)
            raise InputError(
                f"{run_dir}: cannot resume: {key} differ from the saved run's ({detail}); "
                "give the saved values to continue it"
            )
    if before.get("data", {}).get("val_files") != current["data"]["val_files"]:
        raise InputError(
            f"{run_dir}: cannot resume: the training or validation images are not the same as before"
        )


def _write_json(path: Path, content: dict[str, Any]) -> None:
    text = json.dumps(content, indent=2, default=str).encode()
    atomic_write(path, lambda h: h.write(text))


def _write_history(path: Path, history: list[dict[str, float]]) -> None:
    buffer = io.StringIO()
    fields = ["epoch", "train_loss", "val_loss", "lr", "seconds", "best"]
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(history)
    data = buffer.getvalue().encode()
    atomic_write(path, lambda h: h.write(data))


def _write_reports(
    run_dir: Path, model: TrainableModel, trainer: Trainer, state: TrainState
) -> dict[str, Path]:
    """The loss curve, and for autoencoders the reconstructions and separate encoder/decoder files."""
    files = {"config": run_dir / "config.json", "history": run_dir / "history.csv"}
    _write_history(files["history"], state.history)
    files["loss_curve"] = plot_loss_curve(state.history, run_dir / "loss.png", title=f"{run_dir.name}")
    if isinstance(model, ConvAutoencoder | ConvVAE):
        files["reconstructions"] = plot_reconstructions(model, trainer, run_dir / "reconstructions.png")
        for part in ("encoder", "decoder"):
            target = run_dir / f"{part}.pt"
            weights = {k: v.detach().cpu() for k, v in getattr(model, part).state_dict().items()}
            atomic_write(target, lambda h, w=weights: torch.save(w, h))
            files[part] = target
    return files


def plot_loss_curve(history: list[dict[str, float]], path: Path, *, title: str = "") -> Path:
    """Training and validation loss per epoch (log scale when they span a wide range), best marked."""
    fig = figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="training")
    ax.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation")
    best = [h for h in history if h["best"]]
    if best:
        ax.axvline(best[-1]["epoch"], color="grey", linestyle=":", label=f"best (epoch {best[-1]['epoch']})")
    values = [h[k] for h in history for k in ("train_loss", "val_loss") if h[k] > 0]
    if values and max(values) / min(values) > 20:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    png = png_bytes(fig)
    atomic_write(path, lambda h: h.write(png))
    return path


@torch.no_grad()
def plot_reconstructions(
    model: ConvAutoencoder | ConvVAE, trainer: Trainer, path: Path, count: int = 8
) -> Path:
    """Validation images (top row) above the model's reconstructions (bottom row)."""
    model.eval()
    split = trainer.val_split
    idx = torch.arange(min(count, len(split)))
    x = trainer.normalise(split.store.take(idx).to(trainer.device).float())
    recon = model.reconstruct(x)
    mean, std = trainer.normalise.mean, trainer.normalise.std
    rows = [(x * std + mean), (recon * std + mean)]
    fig = figure(figsize=(1.4 * len(idx), 3), dpi=100)
    axes = fig.subplots(2, len(idx), squeeze=False)
    for r, (images, label) in enumerate(zip(rows, ("input", "reconstruction"), strict=True)):
        for c in range(len(idx)):
            img = images[c].clamp(0, 255).byte().permute(1, 2, 0).cpu().numpy()
            axes[r][c].imshow(img)
            axes[r][c].axis("off")
        axes[r][0].set_title(label, fontsize=8, loc="left")
    png = png_bytes(fig)
    atomic_write(path, lambda h: h.write(png))
    return path
