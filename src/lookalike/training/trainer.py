"""One training loop for every method: Adam, early stopping, LR plateau, checkpoints and resume.

Each epoch reseeds every random source from (seed, epoch), so a run resumed from its last
checkpoint computes exactly what the uninterrupted run would have.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from ..errors import InputError
from ..extract import _worker_init
from ..features.base import Preprocess
from .copyaug import CopyAugment, TwoViews
from .data import Augment, Split
from .models import TrainableModel
from .pairs import balanced_pairs, triplets

log = logging.getLogger("lookalike")


@dataclass
class TrainConfig:
    """How to optimise: explicit data, saved with every run."""

    epochs: int = 30
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 5
    min_delta: float = 1e-4
    restore_best: bool = True
    lr_factor: float = 0.5
    lr_patience: int = 2
    min_lr: float = 1e-6
    seed: int = 0
    pairs_per_epoch: int | None = None
    images_per_epoch: int | None = None  # views sampling: images drawn per epoch (None: all)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise InputError(
                f"epochs must be >= 1 and batch_size >= 2 (got {self.epochs}, {self.batch_size})"
            )
        if self.lr <= 0 or not 0 < self.lr_factor < 1:
            raise InputError(f"lr must be > 0 and lr_factor in (0, 1) (got {self.lr}, {self.lr_factor})")
        if self.images_per_epoch is not None and self.images_per_epoch < 1:
            raise InputError(f"images_per_epoch must be at least 1, got {self.images_per_epoch}")
        if self.patience < 1 or self.lr_patience < 0:
            raise InputError(
                f"patience must be >= 1 and lr_patience >= 0 (got {self.patience}, {self.lr_patience})"
            )


class EarlyStopping:
    """Stops after ``patience`` epochs without the monitored loss falling by more than ``min_delta``,
    remembering the best epoch and (optionally) its weights."""

    def __init__(self, patience: int, min_delta: float) -> None:
        self.patience, self.min_delta = patience, min_delta
        self.best = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0

    def step(self, value: float, epoch: int) -> bool:
        """Record one epoch's loss; True when it is a new best."""
        if value < self.best - self.min_delta:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], state["bad_epochs"]


@dataclass
class TrainState:
    """Everything that changes during training, i.e. what the last checkpoint must hold."""

    epoch: int = 0  # epochs completed
    history: list[dict[str, float]] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None
    stopped_early: bool = False


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch (epochs count from 1; 0 is model initialisation)."""
    return (seed * 1_000_003 + epoch * 7_919) % (2**63 - 1)


class Normalise(torch.nn.Module):
    """``FeatureNet``'s normalisation of 0..255 pixels, so training sees what search will."""

    def __init__(self, preprocess: Preprocess) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(preprocess.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(preprocess.std).view(1, 3, 1, 1) * 255.0)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean) / self.std


Batch = tuple[list[torch.Tensor], torch.Tensor]  # (index tensor per view, target)
EpochEnd = Callable[[TrainState, bool], None]  # (state after the epoch, improved?)


class Trainer:
    """Fits a TrainableModel on a train split, monitoring the loss on a validation split."""

    def __init__(
        self,
        model: TrainableModel,
        preprocess: Preprocess,
        train: Split,
        val: Split,
        config: TrainConfig,
        *,
        augment: Augment | CopyAugment | None = None,
        device: torch.device | None = None,
        progress: bool = True,
        workers: int = 0,
    ) -> None:
        self.model, self.train_split, self.val_split, self.config = model, train, val, config
        self.augment = augment or (CopyAugment() if model.sampling == "views" else Augment())
        if model.sampling == "views" and not isinstance(self.augment, CopyAugment):
            raise InputError("a model trained on views needs a CopyAugment (the edits that make its views)")
        self.workers = int(workers)
        self.device = device or torch.device("cpu")
        self.progress = progress
        self.normalise = Normalise(preprocess).to(self.device)
        self.model.to(self.device)
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer,
            mode="min",
            factor=config.lr_factor,
            patience=config.lr_patience,
            threshold=config.min_delta,
            threshold_mode="abs",
            min_lr=config.min_lr,
        )
        self.stopper = EarlyStopping(config.patience, config.min_delta)
        self.state = TrainState()

    # -- batches --------------------------------------------------------------------------------

    def batches(self, split: Split, g: torch.Generator, *, shuffle: bool) -> Iterator[Batch]:
        """Index batches for the model's sampling: images (or the images whose views are made),
        balanced pairs or triplets."""
        bs = self.config.batch_size
        if self.model.sampling in ("images", "views"):
            order = torch.randperm(len(split), generator=g) if shuffle else torch.arange(len(split))
            wanted = self.config.images_per_epoch if shuffle and self.model.sampling == "views" else None
            if wanted:
                rounds = -(-wanted // len(split))
                order = torch.cat(
                    [order, *(torch.randperm(len(split), generator=g) for _ in range(rounds - 1))]
                )
                order = order[:wanted]
            chunks = [order[i : i + bs] for i in range(0, len(order), bs)]
            return (([c], split.labels[c]) for c in _drop_singleton(chunks))
        if self.model.sampling == "pairs":
            n = self.config.pairs_per_epoch if shuffle else None
            first, second, same = balanced_pairs(split.labels, g, n)
            spans = _drop_singleton([slice(i, i + bs) for i in range(0, len(first), bs)], len(first))
            return (([first[s], second[s]], same[s]) for s in spans)
        anchor, positive, negative = triplets(
            split.labels, g, self.config.pairs_per_epoch if shuffle else None
        )
        spans = _drop_singleton([slice(i, i + bs) for i in range(0, len(anchor), bs)], len(anchor))
        return (([anchor[s], positive[s], negative[s]], torch.zeros(0)) for s in spans)

    def _loaded(
        self, split: Split, batches: list[Batch], g: torch.Generator | None, view_seed: int
    ) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
        """(normalised views, target) of each batch; a ``views`` model's two edited views of each
        image are made in DataLoader workers, seeded by ``view_seed`` and the image."""
        if self.model.sampling != "views":
            for batch in batches:
                yield self._views(split, batch, g), batch[1]
            return
        assert isinstance(self.augment, CopyAugment)
        order = [int(i) for batch in batches for i in batch[0][0]]
        spans, start = [], 0
        for batch in batches:
            spans.append(list(range(start, start + len(batch[0][0]))))
            start += len(batch[0][0])
        loader = torch.utils.data.DataLoader(
            TwoViews(split.store, self.augment, view_seed, order),
            batch_sampler=spans,
            num_workers=self.workers,
            worker_init_fn=_worker_init if self.workers else None,
        )
        for pixels, batch in zip(loader, batches, strict=True):
            pixels = pixels.to(self.device)
            yield [self.normalise(pixels[:, k].float()) for k in range(pixels.shape[1])], batch[1]

    def _views(self, split: Split, batch: Batch, g: torch.Generator | None) -> list[torch.Tensor]:
        views = []
        for idx in batch[0]:
            x = split.store.take(idx).to(self.device).float()
            if g is not None:
                x = self.augment(x, g)
            views.append(self.normalise(x))
        return views

    # -- one epoch ------------------------------------------------------------------------------

    def train_epoch(self, epoch: int) -> float:
        """One pass over freshly sampled training batches; the mean training loss."""
        seed = epoch_seed(self.config.seed, epoch)
        torch.manual_seed(seed)  # noise layers, dropout, the VAE's sampling
        g = torch.Generator().manual_seed(seed)  # shuffling, pairs, augmentation
        self.model.train()
        total, count = 0.0, 0
        batches = list(self.batches(self.train_split, g, shuffle=True))
        bar = tqdm(
            self._loaded(self.train_split, batches, g, seed),
            total=len(batches),
            desc=f"epoch {epoch}/{self.config.epochs}",
            unit="batch",
            file=sys.stderr,
            disable=not self.progress or not sys.stderr.isatty(),
            dynamic_ncols=True,
            leave=False,
        )
        for views, target in bar:
            loss = self.model.loss(views, target.to(self.device))
            if not torch.isfinite(loss):
                raise InputError(f"epoch {epoch}: the training loss became {loss.item()}; try a lower lr")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            n = views[0].shape[0]
            total, count = total + loss.item() * n, count + n
            bar.set_postfix(loss=f"{total / count:.4f}")
        bar.close()
        return total / max(count, 1)

    @torch.no_grad()
    def validate(self) -> float:
        """The mean loss on the validation split in eval mode: no augmentation and fixed pairs, or
        for a views model the same views of each image every epoch."""
        self.model.eval()
        g = torch.Generator().manual_seed(epoch_seed(self.config.seed, 0) + 1)
        total, count = 0.0, 0
        batches = list(self.batches(self.val_split, g, shuffle=False))
        for views, target in self._loaded(self.val_split, batches, None, epoch_seed(self.config.seed, 0) + 1):
            loss = self.model.loss(views, target.to(self.device))
            n = views[0].shape[0]
            total, count = total + loss.item() * n, count + n
        if count == 0:
            raise InputError(
                "the validation split produced no batch; give it more images (val_fraction or val_dir)"
            )
        return total / count

    # -- the loop -------------------------------------------------------------------------------

    def fit(self, on_epoch_end: EpochEnd | None = None) -> TrainState:
        """Train from ``self.state.epoch`` to ``config.epochs`` or early stopping, then restore
        the best weights (``restore_best``); ``on_epoch_end`` saves checkpoints."""
        state = self.state
        while state.epoch < self.config.epochs and not state.stopped_early:
            epoch = state.epoch + 1
            start = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            train_loss = self.train_epoch(epoch)
            val_loss = self.validate()
            if not math.isfinite(val_loss):
                raise InputError(f"epoch {epoch}: the validation loss became {val_loss}; try a lower lr")
            improved = self.stopper.step(val_loss, epoch)
            self.scheduler.step(val_loss)
            if improved:
                state.best_state = {
                    k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
                }
            state.epoch = epoch
            state.stopped_early = self.stopper.should_stop and epoch < self.config.epochs
            state.history.append(
                {
                    "epoch": epoch,
                    "train_loss": train_loss,
                    "val_loss": val_loss,
                    "lr": lr,
                    "seconds": round(time.perf_counter() - start, 3),
                    "best": int(improved),
                }
            )
            log.info(
                "epoch %d: train loss %.5f, val loss %.5f, lr %.2g%s",
                epoch,
                train_loss,
                val_loss,
                lr,
                " (best)" if improved else "",
            )
            if on_epoch_end is not None:
                on_epoch_end(state, improved)
        if self.config.restore_best and state.best_state is not None:
            self.model.load_state_dict(state.best_state)
        return state

    def resume_state(self) -> dict[str, Any]:
        """The resumable state (model, optimiser, scheduler, stopper, progress) as one dict."""
        return {
            "state_dict": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "stopper": self.stopper.state_dict(),
            "epoch": self.state.epoch,
            "history": self.state.history,
            "best_state_dict": self.state.best_state,
            "stopped_early": self.state.stopped_early,
            "train_config": asdict(self.config),
        }

    def load_resume_state(self, saved: dict[str, Any]) -> None:
        """Continue where :meth:`resume_state` was taken."""
        self.model.load_state_dict(saved["state_dict"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.stopper.load_state_dict(saved["stopper"])
        self.state = TrainState(
            epoch=int(saved["epoch"]),
            history=list(saved["history"]),
            best_state=saved["best_state_dict"],
            stopped_early=bool(saved["stopped_early"]),
        )


def _drop_singleton(chunks: list, total: int | None = None) -> list:
    """Leave out a trailing batch of one (batch norm cannot train on a single sample)."""
    if not chunks:
        return chunks
    last = chunks[-1]
    size = len(last) if total is None else min(last.stop, total) - last.start
    return chunks[:-1] if size < 2 and len(chunks) > 1 else chunks
