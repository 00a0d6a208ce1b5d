"""``lookalike train``: learn a feature model; its checkpoint works wherever a model name does."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated

import typer

from ..errors import InputError
from ._app import app, err, friendly, out, shown
from .options import BatchSize, Device, Quiet, key_values


@app.command("train")
@friendly
def train_command(
    method: Annotated[
        str, typer.Argument(help="siamese, autoencoder, vae, cnn, finetune, or selfsup (no labels needed).")
    ],
    train_dir: Annotated[
        Path, typer.Argument(help="Training images in class folders (selfsup: any folder; classes ignored).")
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Run folder (checkpoints, config, curves).")],
    val: Annotated[
        Path | None, typer.Option("--val", help="Validation class folders (else a split).")
    ] = None,
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", min=0.0, max=0.9, help="Stratified validation share.")
    ] = 0.2,
    epochs: Annotated[
        int | None, typer.Option("--epochs", min=1, help="Most epochs (early stopping may end sooner).")
    ] = None,
    batch_size: BatchSize = None,
    lr: Annotated[float | None, typer.Option("--lr", min=0.0, help="Adam learning rate.")] = None,
    patience: Annotated[int, typer.Option("--patience", min=0, help="Early-stopping patience (epochs).")] = 5,
    min_delta: Annotated[
        float, typer.Option("--min-delta", help="Smallest val-loss gain that counts.")
    ] = 1e-4,
    lr_patience: Annotated[
        int, typer.Option("--lr-patience", min=0, help="Epochs on a plateau before LR drops.")
    ] = 2,
    lr_factor: Annotated[
        float, typer.Option("--lr-factor", min=0.0, max=1.0, help="LR multiplier on a plateau.")
    ] = 0.5,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the run's last checkpoint.")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run folder.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Random seed.")] = 0,
    device: Device = "auto",
    loss: Annotated[str | None, typer.Option("--loss", help="siamese: contrastive or triplet.")] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-O", help="Method option KEY=VALUE (repeatable), e.g. image_size=64."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            "--workers", min=0, help="selfsup: processes making the views (default: half the cores)."
        ),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Train a feature model on class folders, or self-supervised on unlabelled images (selfsup);
    RUN_DIR/best.pt then works wherever a model name does."""
    from ..training import train

    if lr is not None and lr <= 0:
        raise InputError(f"--lr must be positive, got {lr}")
    if not 0 < lr_factor < 1:
        raise InputError(f"--lr-factor must be between 0 and 1 (exclusive), got {lr_factor}")
    method_options = {k: v for k, v in key_values(option, "--option").items() if v is not None}
    taken = sorted(set(method_options) & set(inspect.signature(train).parameters))
    if taken:
        flags = ", ".join(f"--{k.replace('_', '-')}" for k in taken)
        raise InputError(f"-O {', '.join(taken)}: these are options of the command itself; use {flags}")
    if loss is not None:
        method_options["loss"] = loss
    result = train(
        method,
        train_dir,
        output,
        val_dir=val,
        val_fraction=val_fraction,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        patience=patience,
        min_delta=min_delta,
        lr_patience=lr_patience,
        lr_factor=lr_factor,
        resume=resume,
        overwrite=overwrite,
        seed=seed,
        device=device,
        progress=not quiet,
        workers=workers,
        **method_options,
    )
    for s in result.skipped:
        err.print(f"skipped {shown(s.path)}: {shown(s.reason)}")
    ending = "stopped early" if result.stopped_early else "ran all epochs"
    err.print(
        f"{method}: {result.epochs_run} epochs ({ending}), best val loss {result.best_val_loss:.4f} at epoch "
        f"{result.best_epoch}, {result.seconds:.0f} s"
    )
    for name, path in result.files.items():
        err.print(f"  {name}: {path}")
    out.print(f"search with: lookalike search QUERY GALLERY -m {result.best}")
