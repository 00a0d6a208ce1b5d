"""Searching with a trained model: a ``lookalike train`` checkpoint read back as an Extractor.

A checkpoint is a plain ``torch.save`` dict (loadable with ``weights_only=True``): the method, its
resolved options, the number and names of the classes, the preprocessing and the state dict, so
the network can be rebuilt without the training data or any pretrained weights. The trainer
writes it (``training.checkpoint``); this module reads it. Rebuilding the network needs the
method table, which lives with training: it is imported when a checkpoint is loaded, never when
``lookalike.features`` is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError, WeightsUnavailableError
from .base import Extractor, FeatureNet, Preprocess, file_identity

FORMAT = "lookalike-train"
FORMAT_VERSION = 1


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


def rebuild(data: dict[str, Any]) -> tuple[nn.Module, Preprocess]:
    """The trained network of a checkpoint (a ``training.models.TrainableModel``), with its
    weights, in eval mode."""
    from ..training.methods import build_model  # the method table; imported only to load a checkpoint

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
