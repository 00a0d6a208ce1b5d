"""Learned features: train a method on class folders (or, with ``selfsup``, on unlabelled images),
then search with ``RUN_DIR/best.pt``.

``train(method, train_dir, out_dir, ...)`` runs one of ``METHODS`` (siamese, autoencoder, vae, cnn,
finetune, selfsup) through the one ``Trainer`` loop; ``load_checkpoint_extractor`` turns its checkpoint
into an ``Extractor`` (``create_extractor("RUN_DIR/best.pt")`` does the same).
"""

from .checkpoint import load_checkpoint_extractor, read_checkpoint
from .copyaug import CopyAugment
from .data import Augment
from .methods import METHODS, MethodSpec
from .run import TrainResult, train
from .trainer import EarlyStopping, TrainConfig, Trainer

__all__ = [
    "METHODS",
    "Augment",
    "CopyAugment",
    "EarlyStopping",
    "MethodSpec",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "load_checkpoint_extractor",
    "read_checkpoint",
    "train",
]
