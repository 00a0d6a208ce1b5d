"""Checkpoint files of trained models, and the Extractor that searches with one.

A checkpoint is a plain ``torch.save`` dict (loadable with ``weights_only=True``): the method, its
resolved options, the number and names of the classes, the preprocessing and the state dict, so
the network can be rebuilt without the training data or any pretrained weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..cache import atomic_write
from ..errors import InputError, WeightsUnavailableError
from ..features.base import FEATURE_VERSION, Extractor, FeatureNet, Preprocess, file_identity
from .methods import build_model
from .models import TrainableModel

FORMAT = "lookalike-train"
FORMAT_VERSION = 1


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


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by ``lookalike train``, or raise a message saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint file not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsUnavailableError(f"{path}: not a readable PyTorch checkpoint ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise InputError(
            f"{path}: not a checkpoint written by `lookalike train` (for a plain weights file use "
            "a model name with --weights FILE)"
        )
    if int(data.get("format_version", 0)) > FORMAT_VERSION:
        raise InputError(f"{path}: written by a newer lookalike (checkpoint format {data['format_version']})")
    return data


def rebuild(data: dict[str, Any]) -> tuple[TrainableModel, Preprocess]:
    """The trained network of a checkpoint, with its weights, in eval mode."""
    model, _ = build_model(data["method"], data["model_options"], int(data["n_classes"]), pretrained=False)
    model.load_state_dict(data["state_dict"])
    pre = data["preprocess"]
    preprocess = Preprocess(tuple(pre["size"]), tuple(pre["mean"]), tuple(pre["std"]))
    return model.eval(), preprocess


def load_checkpoint_extractor(path: str | Path, **options: Any) -> Extractor:
    """An Extractor computing a trained model's features from ``RUN_DIR/best.pt``.

    Its name is the checkpoint's absolute path (so indexes and workers can rebuild it through
    ``create_extractor``), and its key follows the file's content.
    """
    if options:
        raise InputError(
            f"{path}: a trained checkpoint takes no model options (got {', '.join(sorted(options))})"
        )
    data = read_checkpoint(path)
    path = Path(path).resolve()
    model, preprocess = rebuild(data)
    module = FeatureNet(model.features(), preprocess).eval()
    identity = {**file_identity(path), "method": data["method"], "epoch": data.get("epoch")}
    return Extractor(
        str(path), module, preprocess, int(data["feature_dim"]), {}, exportable=True, identity=identity
    )


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
