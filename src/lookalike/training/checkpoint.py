"""Writing the checkpoint files of trained models.

A checkpoint is a plain ``torch.save`` dict (loadable with ``weights_only=True``): the method, its
resolved options, the number and names of the classes, the preprocessing and the state dict, so
the network can be rebuilt without the training data or any pretrained weights. Reading one back
(``read_checkpoint``, ``rebuild``, ``load_checkpoint_extractor``) lives with the features, in
``lookalike.features.checkpoint``; those names are re-exported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..features.base import FEATURE_VERSION, Preprocess
from ..features.checkpoint import FORMAT, FORMAT_VERSION, load_checkpoint_extractor, read_checkpoint, rebuild
from ..fileio import atomic_write
from .models import TrainableModel

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "checkpoint_meta",
    "feature_dim",
    "load_checkpoint_extractor",
    "read_checkpoint",
    "rebuild",
    "save_checkpoint",
]


def checkpoint_meta(
    method: str, options: dict[str, Any], class_names: list[str], preprocess: Preprocess, feature_dim: int
) -> dict[str, Any]:
    """The part of every checkpoint that says how to rebuild and use the model."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "method": method,
        "model_options": _plain(options),
        "n_classes": len(class_names),
        "class_names": list(class_names),
        "preprocess": {
            "size": list(preprocess.size),
            "mean": list(preprocess.mean),
            "std": list(preprocess.std),
        },
        "feature_dim": int(feature_dim),
        "feature_version": FEATURE_VERSION,
        "lookalike_version": __version__,
    }


def save_checkpoint(path: Path, meta: dict[str, Any], **content: Any) -> None:
    """Write ``meta`` plus ``content`` (state dicts, history...) to ``path`` atomically."""
    payload = {**meta, **content}
    atomic_write(path, lambda handle: torch.save(payload, handle))


def feature_dim(model: TrainableModel, preprocess: Preprocess) -> int:
    """The length of the model's feature vector, measured on one blank image."""
    body = model.features()
    was_training = model.training
    model.eval()
    with torch.no_grad():
        dim = int(body(torch.zeros(1, 3, *preprocess.size)).shape[1])
    model.train(was_training)
    return dim


def _plain(value: Any) -> Any:
    """Options as plain JSON-like values (tuples become lists), as ``weights_only`` loading needs."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
